//! Who may talk to the control plane. Every discovery call (Subscribe, Status, ConfigDump)
//! and every Sign call needs a client certificate from the mesh root, which TLS has already
//! verified; its single URI SAN says who the caller is:
//!
//! | credential | URI SAN                                             | issued by                          |
//! |------------|-----------------------------------------------------|------------------------------------|
//! | node       | `spiffe://<td>/node/<node>`                         | `weft-control node-credential`     |
//! | operator   | `spiffe://<td>/operator/<name>`                     | `weft-control operator-credential` |
//! | gateway    | `spiffe://<td>/ns/weft-system/sa/weft-gateway`      | `weft-control gateway-credential`, or the CA for a gateway pod |
//!
//! A node credential subscribes only as an agent of its own node; an operator credential
//! (what `weftctl` presents, as `istioctl` presents a cluster-admin's) may read everything
//! but API-key hashes; the gateway's identity is a workload identity, as an Istio ingress
//! gateway's is its service account's, and it alone receives API-key hashes. Any other
//! certificate of the mesh (a workload's) is no credential here.

use std::{fmt, str::FromStr, sync::Arc};

use weft_link::identity::TrustDomain;

use crate::node::{NodeName, dns_name_problem};

/// File names `weft-control operator-credential` writes into `--out-dir`.
pub const OPERATOR_CERT_FILE: &str = "operator-cert.pem";
pub const OPERATOR_KEY_FILE: &str = "operator-key.pem";
/// File names `weft-control gateway-credential` writes into `--out-dir`.
pub const GATEWAY_CERT_FILE: &str = "gateway-cert.pem";
pub const GATEWAY_KEY_FILE: &str = "gateway-key.pem";
/// The gateway's namespace and service account: its workload identity is its credential.
pub use weft_link::identity::{GATEWAY_NAMESPACE, GATEWAY_SERVICE_ACCOUNT};

/// An operator's name that is not a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "operator name {name:?} is invalid: {reason}; operator names are DNS names such as alice \
     or ci.example"
)]
pub struct OperatorNameError {
    pub name: String,
    pub reason: &'static str,
}

// === impl OperatorName ===

/// The name in an operator credential, a lowercase RFC 1123 DNS name like a node's.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OperatorName(Arc<str>);

impl OperatorName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for OperatorName {
    type Err = OperatorNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match dns_name_problem(s) {
            Some(reason) => Err(OperatorNameError {
                name: s.to_owned(),
                reason,
            }),
            None => Ok(OperatorName(Arc::from(s))),
        }
    }
}

impl fmt::Display for OperatorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for OperatorName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "OperatorName({})", self.0)
    }
}

/// `spiffe://<trust-domain>/operator/<name>`.
pub fn operator_spiffe_id(trust_domain: &TrustDomain, name: &OperatorName) -> String {
    format!("spiffe://{trust_domain}/operator/{name}")
}

/// `spiffe://<trust-domain>/ns/weft-system/sa/weft-gateway`.
pub fn gateway_spiffe_id(trust_domain: &TrustDomain) -> String {
    format!("spiffe://{trust_domain}/ns/{GATEWAY_NAMESPACE}/sa/{GATEWAY_SERVICE_ACCOUNT}")
}

// === impl Principal ===

/// An authenticated caller of the control plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A node's agent.
    Node(NodeName),
    /// An operator (weftctl).
    Operator(OperatorName),
    /// The edge gateway.
    Gateway,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Node(n) => write!(f, "node {n}"),
            Principal::Operator(o) => write!(f, "operator {o}"),
            Principal::Gateway => f.write_str("the gateway"),
        }
    }
}

/// Why a client is not authenticated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unauthenticated {
    #[error("the client presented no certificate")]
    NoCertificate,
    #[error("the client certificate cannot be read: {reason}")]
    Malformed { reason: String },
    #[error("the client certificate has {count} URI SANs; a credential has exactly one")]
    UriSanCount { count: usize },
    #[error(
        "the client certificate is for {uri:?}, which is no node, operator or gateway \
         credential of trust domain {trust_domain}"
    )]
    Unknown { uri: String, trust_domain: String },
    #[error("the client certificate names an invalid node: {0}")]
    Node(#[from] crate::node::NodeNameError),
    #[error("the client certificate names an invalid operator: {0}")]
    Operator(#[from] OperatorNameError),
}

impl Principal {
    /// Who a verified client certificate (DER, the leaf) names. TLS has already checked the
    /// chain against the mesh root; this reads the identity it carries.
    pub fn of_peer(
        leaf: Option<&[u8]>,
        trust_domain: &TrustDomain,
    ) -> Result<Self, Unauthenticated> {
        let der = leaf.ok_or(Unauthenticated::NoCertificate)?;
        let (uri, _) = weft_link::tls::single_uri_san(der).map_err(|e| match e {
            weft_link::tls::VerifyError::UriSanCount { count } => {
                Unauthenticated::UriSanCount { count }
            }
            other => Unauthenticated::Malformed {
                reason: other.to_string(),
            },
        })?;
        let base = format!("spiffe://{trust_domain}/");
        let path = uri.strip_prefix(&base);
        if let Some(node) = path.and_then(|p| p.strip_prefix("node/")) {
            return Ok(Principal::Node(node.parse()?));
        }
        if let Some(name) = path.and_then(|p| p.strip_prefix("operator/")) {
            return Ok(Principal::Operator(name.parse()?));
        }
        if uri == gateway_spiffe_id(trust_domain) {
            return Ok(Principal::Gateway);
        }
        Err(Unauthenticated::Unknown {
            uri,
            trust_domain: trust_domain.to_string(),
        })
    }

    /// Whether this caller may see API-key hashes: the gateway, which checks keys, only.
    pub fn sees_api_key_hashes(&self) -> bool {
        matches!(self, Principal::Gateway)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::ca::CertificateAuthority;

    fn der(pem: &str) -> Vec<u8> {
        x509_parser::pem::parse_x509_pem(pem.as_bytes())
            .unwrap()
            .1
            .contents
    }

    #[test]
    fn reads_each_credential_and_refuses_other_certificates() {
        let ca = CertificateAuthority::generate().unwrap();
        let td = TrustDomain::default();
        let ttl = Duration::from_secs(60);
        let issue = |id: &str| der(&ca.issue_client_credential(id, "x", ttl).unwrap().0.cert_pem);
        let of = |id: &str| Principal::of_peer(Some(&issue(id)), &td);
        assert_eq!(
            of("spiffe://cluster.local/node/node-1"),
            Ok(Principal::Node("node-1".parse().unwrap()))
        );
        assert_eq!(
            of("spiffe://cluster.local/operator/alice"),
            Ok(Principal::Operator("alice".parse().unwrap()))
        );
        assert_eq!(of(&gateway_spiffe_id(&td)), Ok(Principal::Gateway));
        for other in [
            "spiffe://cluster.local/ns/shop/sa/web",
            "spiffe://cluster.local/ns/weft-system/sa/other",
            "spiffe://example.org/operator/alice",
            "spiffe://example.org/node/node-1",
        ] {
            assert!(
                matches!(of(other), Err(Unauthenticated::Unknown { .. })),
                "{other}"
            );
        }
        assert!(matches!(
            of("spiffe://cluster.local/operator/Alice"),
            Err(Unauthenticated::Operator(_))
        ));
        assert_eq!(
            Principal::of_peer(None, &td),
            Err(Unauthenticated::NoCertificate)
        );
    }
}
