//! The Weft agent protocol: the `.proto` definitions of discovery and identity (in
//! `proto/weft/`) and the tonic/prost code generated from them, and nothing else.
//!
//! - [`discovery::v1`]: the `Discovery` service (`Subscribe`, `Status`, `ConfigDump`) and
//!   every resource kind it distributes;
//! - [`identity::v1`]: the `Certificates` service (`Sign`).
//!
//! Conversions to domain types live with the code that uses them, never here.

/// Configuration distribution.
pub mod discovery {
    /// Version 1 of `weft.discovery`.
    pub mod v1 {
        // Generated code: its doc comments come from the .proto files and its enums from
        // oneofs, neither of which we shape for clippy.
        #![allow(clippy::doc_lazy_continuation, clippy::large_enum_variant)]
        tonic::include_proto!("weft.discovery.v1");
    }
}

/// Certificate issuance.
pub mod identity {
    /// Version 1 of `weft.identity`.
    pub mod v1 {
        // Generated code; see `discovery::v1`.
        #![allow(clippy::doc_lazy_continuation)]
        tonic::include_proto!("weft.identity.v1");
    }
}

/// The encoded `FileDescriptorSet` of every Weft `.proto` file (with comments), for tools
/// that render messages as canonical protobuf JSON (e.g. with `prost-reflect`).
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/weft_descriptor.bin"));

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::discovery::v1::{self as pb, ResourceType};

    #[test]
    fn responses_round_trip_and_enum_names_are_stable() {
        let response = pb::DiscoveryResponse {
            resource_type: ResourceType::Workload.into(),
            version: 7,
            snapshot: false,
            resources: vec![pb::Resource {
                name: "uid-1".into(),
                kind: Some(pb::resource::Kind::Workload(pb::Workload {
                    uid: "uid-1".into(),
                    ips: vec!["10.0.0.1".into()],
                    labels: [("app".to_string(), "web".to_string())].into(),
                    ..Default::default()
                })),
            }],
            removed: vec!["uid-0".into()],
            nonce: "1-1".into(),
        };
        let decoded = pb::DiscoveryResponse::decode(response.encode_to_vec().as_slice()).unwrap();
        assert_eq!(decoded, response);
        // Operators and scripts see these names (weftctl -o json); they must not change.
        assert_eq!(
            ResourceType::ApiRoute.as_str_name(),
            "RESOURCE_TYPE_API_ROUTE"
        );
    }

    #[test]
    fn the_descriptor_set_describes_both_services() {
        // Protobuf stores names verbatim, so they can be found in the encoded bytes.
        let set = String::from_utf8_lossy(super::FILE_DESCRIPTOR_SET);
        assert!(set.contains("weft.discovery.v1"));
        assert!(set.contains("Certificates"));
    }
}
