//! One Kubernetes object into one [`ParsedDocument`], the shape the file source produces,
//! so that both transports share validation and compilation.
//!
//! Core kinds (Pod, Service, NetworkPolicy) arrive as k8s-openapi types; the API server has
//! validated them, so only what Weft adds (IPs it must parse, named ports it must resolve)
//! can fail here. Other kinds arrive as `DynamicObject`s whose `spec` is decoded into the
//! YAML model's types, which reject unknown fields: an Istio or Gateway API field Weft does
//! not implement (`when`, `sessionPersistence`, ...) rejects the object with that field's path rather
//! than being silently ignored, exactly as in a file.

use base64::Engine as _;
use k8s_openapi::{
    api::{
        core::v1::{Pod, Secret, Service},
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::{apis::meta::v1::ObjectMeta as KubeMeta, util::intstr},
};
use kube::core::DynamicObject;
use serde::de::DeserializeOwned;

use crate::config::{
    Diagnostic, Origin,
    document::{Body, IntOrString, Kind, ObjectMeta, ParsedDocument, PortProtocol, SecretSpec},
    mesh::{ServicePortSpec, ServiceSpec, WorkloadSpec},
    validate::DEFAULT_NAMESPACE,
};

/// What became of one object.
#[derive(Debug)]
pub enum Translation {
    /// The object is part of the configuration, as this document.
    Document(Box<ParsedDocument>),
    /// The object is deliberately not part of the mesh; the reason is for the debug log.
    Skipped(String),
    /// The object is invalid; the rest of the configuration does not depend on it.
    Rejected(Diagnostic),
}

/// The origin diagnostics name an object by: kind, namespace and name.
pub fn origin(kind: &str, meta: &KubeMeta) -> Origin {
    Origin::Kubernetes {
        kind: kind.to_string(),
        namespace: meta
            .namespace
            .clone()
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string()),
        name: meta.name.clone().unwrap_or_else(|| "<unnamed>".to_string()),
    }
}

/// The fields of `metadata` the model uses; the rest (owner references, managed fields,
/// finalizers, ...) is the API server's business.
fn object_meta(meta: &KubeMeta) -> ObjectMeta {
    ObjectMeta {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        labels: meta.labels.clone().unwrap_or_default(),
        annotations: meta.annotations.clone().unwrap_or_default(),
        uid: meta.uid.clone(),
        creation_timestamp: meta.creation_timestamp.as_ref().map(|t| t.0.to_string()),
        ..ObjectMeta::default()
    }
}

fn document(origin: Origin, kind: Kind, meta: &KubeMeta, body: Body) -> Translation {
    Translation::Document(Box::new(ParsedDocument {
        origin,
        kind,
        meta: object_meta(meta),
        body,
    }))
}

// === Pod ===

/// A pod as a `Workload`: uid, service account, node, IPs and labels.
pub fn pod(pod: &Pod) -> Translation {
    let origin = origin("Pod", &pod.metadata);
    let spec = pod.spec.clone().unwrap_or_default();
    let status = pod.status.clone().unwrap_or_default();
    if spec.host_network == Some(true) {
        // Its sockets are the node's: there is no pod network namespace to capture in, and
        // its IP is the node's, which many such pods share.
        return Translation::Skipped("uses the node's network (hostNetwork)".to_string());
    }
    if let Some(phase @ ("Succeeded" | "Failed")) = status.phase.as_deref() {
        // The kubelet has released its IP, which may already belong to a new pod.
        return Translation::Skipped(format!("has finished (phase {phase})"));
    }
    let mut ips: Vec<String> = status
        .pod_ips
        .unwrap_or_default()
        .into_iter()
        .map(|p| p.ip)
        .filter(|ip| !ip.is_empty())
        .collect();
    if ips.is_empty()
        && let Some(ip) = status.pod_ip.filter(|ip| !ip.is_empty())
    {
        ips.push(ip);
    }
    if ips.is_empty() {
        // Nothing can reach it yet; the watch sees the status update that adds the IP.
        return Translation::Skipped("has no IP yet".to_string());
    }
    // Named TCP container ports, for services' named target ports. A name Weft cannot use
    // is left out rather than rejecting the pod (the API server already validated it).
    let ports = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| Some((p.name.clone()?, i64::from(p.container_port))))
        .collect();
    // Ready only once the kubelet says so: a pod without the condition yet (just
    // scheduled) is not ready, as for kube-proxy.
    let ready = status
        .conditions
        .iter()
        .flatten()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    let body = WorkloadSpec {
        // `serviceAccount` is the deprecated alias the API server still fills in.
        service_account: spec.service_account_name.or(spec.service_account),
        node: spec.node_name,
        ips,
        protocol: None,
        ports,
        ready: Some(ready),
        weight: None,
    };
    document(origin, Kind::Workload, &pod.metadata, Body::Workload(body))
}

/// The Pod field a diagnostic of its `Workload` document is about.
pub fn pod_path(path: &str) -> String {
    if let Some(rest) = path.strip_prefix("spec.ips[")
        && let Some((index, tail)) = rest.split_once(']')
    {
        return format!("status.podIPs[{index}].ip{tail}");
    }
    match path {
        "spec.ips" => "status.podIPs".to_string(),
        "spec.serviceAccount" => "spec.serviceAccountName".to_string(),
        "spec.node" => "spec.nodeName".to_string(),
        p if p.starts_with("spec.ports.") => "spec.containers[].ports".to_string(),
        other => other.to_string(),
    }
}

// === Service ===

/// A Service. A named target port stays a name, resolved per endpoint against each pod's
/// container ports, as kube-proxy does.
pub fn service(svc: &Service) -> Translation {
    let origin = origin("Service", &svc.metadata);
    let Some(spec) = svc.spec.clone() else {
        return Translation::Rejected(Diagnostic::error(origin, "spec", "required"));
    };
    if spec.type_.as_deref() == Some("ExternalName") {
        return Translation::Skipped("is an ExternalName service, a DNS alias".to_string());
    }
    let mut ports = Vec::new();
    for (i, p) in spec.ports.unwrap_or_default().into_iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        let protocol = match p.protocol.as_deref() {
            None | Some("TCP") => PortProtocol::Tcp,
            Some("UDP") => PortProtocol::Udp,
            Some("SCTP") => PortProtocol::Sctp,
            Some(other) => {
                return Translation::Rejected(Diagnostic::error(
                    origin,
                    format!("{at}.protocol"),
                    format!("must be TCP, UDP or SCTP, got {other:?}"),
                ));
            }
        };
        let target_port = match p.target_port {
            None => None,
            Some(intstr::IntOrString::Int(n)) => Some(IntOrString::Int(n.into())),
            Some(intstr::IntOrString::String(name)) => Some(IntOrString::String(name)),
        };
        ports.push(ServicePortSpec {
            name: p.name,
            port: p.port.into(),
            target_port,
            protocol: Some(protocol),
            app_protocol: p.app_protocol,
            node_port: None,
        });
    }
    let body = ServiceSpec {
        selector: spec.selector,
        ports,
        cluster_ip: spec.cluster_ip,
        cluster_ips: spec.cluster_ips.unwrap_or_default(),
        // NodePort and LoadBalancer services have a cluster IP like any other, and inside
        // the mesh that is all there is; the file source's warning about the type would be
        // noise for every such service of a cluster.
        service_type: None,
        traffic_distribution: spec.traffic_distribution,
        ip_families: None,
        ip_family_policy: None,
        session_affinity: None,
        internal_traffic_policy: None,
    };
    document(origin, Kind::Service, &svc.metadata, Body::Service(body))
}

// === NetworkPolicy ===

/// A NetworkPolicy's egress part is not enforced. The file source refuses such a document,
/// keeping the last good configuration; here the object is already in the cluster, and
/// skipping it whole would leave the pods it isolates for ingress open. So the ingress part
/// is applied and the egress part is dropped with a warning saying so.
pub fn network_policy(np: &NetworkPolicy, warnings: &mut Vec<Diagnostic>) -> Translation {
    let origin = origin("NetworkPolicy", &np.metadata);
    let mut spec = np.spec.clone();
    if let Some(spec) = spec.as_mut() {
        let types_egress = spec
            .policy_types
            .as_ref()
            .is_some_and(|t| t.iter().any(|t| t == "Egress"));
        if spec.egress.is_some() || types_egress {
            warnings.push(Diagnostic::warning(
                origin.clone(),
                "spec.egress",
                "egress is not enforced: only this policy's ingress part is applied",
            ));
            // Without policyTypes, Kubernetes infers Egress from the egress rules: fix the
            // ingress part's meaning before they go.
            let types = spec
                .policy_types
                .get_or_insert_with(|| vec!["Ingress".into()]);
            types.retain(|t| t != "Egress");
            spec.egress = None;
        }
    }
    let value = match serde_json::to_value(&spec) {
        Ok(v) => v,
        Err(e) => {
            return Translation::Rejected(Diagnostic::error(
                origin,
                "spec",
                format!("cannot be read: {e}"),
            ));
        }
    };
    typed(
        origin,
        Kind::NetworkPolicy,
        &np.metadata,
        &value,
        Body::NetworkPolicy,
    )
}

// === Secret ===

/// A TLS Secret, as the certificate source of a `weft` Gateway's listener. Its data is
/// already decoded by the client; it is handed on base64-encoded, as in a file.
pub fn secret(secret: &Secret) -> Translation {
    let origin = origin("Secret", &secret.metadata);
    let data = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| {
            (
                k.clone(),
                base64::engine::general_purpose::STANDARD.encode(&v.0),
            )
        })
        .collect();
    let body = SecretSpec {
        secret_type: secret.type_.clone(),
        data,
        string_data: secret.string_data.clone().unwrap_or_default(),
    };
    document(origin, Kind::Secret, &secret.metadata, Body::Secret(body))
}

// === Other kinds ===

/// Any kind, from an object of its `apiVersion` and `kind` watched without a Rust type:
/// the Istio and Gateway API kinds and Weft's own.
pub fn dynamic(kind: Kind, obj: &DynamicObject) -> Translation {
    let kind_name = obj.types.as_ref().map_or(kind.name(), |t| t.kind.as_str());
    let origin = origin(kind_name, &obj.metadata);
    let null = serde_json::Value::Null;
    let spec = obj.data.get("spec").unwrap_or(&null);
    let meta = &obj.metadata;
    match kind {
        Kind::Workload => typed(origin, kind, meta, spec, Body::Workload),
        Kind::Service => typed(origin, kind, meta, spec, Body::Service),
        Kind::NetworkPolicy => typed(origin, kind, meta, spec, Body::NetworkPolicy),
        Kind::AuthorizationPolicy => typed(origin, kind, meta, spec, Body::AuthorizationPolicy),
        Kind::PeerAuthentication => typed(origin, kind, meta, spec, Body::PeerAuthentication),
        Kind::HttpRoute => typed(origin, kind, meta, spec, Body::HttpRoute),
        Kind::GrpcRoute => typed(origin, kind, meta, spec, Body::GrpcRoute),
        Kind::Gateway => typed(origin, kind, meta, spec, Body::Gateway),
        Kind::Backend => typed(origin, kind, meta, spec, Body::Backend),
        Kind::ApiPolicy => typed(origin, kind, meta, spec, Body::ApiPolicy),
        // Secrets, Nodes and EndpointSlices are watched with their Rust types.
        Kind::Secret | Kind::Node | Kind::EndpointSlice => {
            Translation::Rejected(Diagnostic::error(
                origin,
                "",
                format!(
                    "a {} is read with its Rust type, not as a dynamic object",
                    kind.name()
                ),
            ))
        }
        Kind::Consumer => typed(origin, kind, meta, spec, Body::Consumer),
        Kind::Plan => typed(origin, kind, meta, spec, Body::Plan),
    }
}

/// Decodes `spec` into its kind's model type, naming the field of any error.
fn typed<S: DeserializeOwned>(
    origin: Origin,
    kind: Kind,
    meta: &KubeMeta,
    spec: &serde_json::Value,
    wrap: fn(S) -> Body,
) -> Translation {
    if spec.is_null() {
        return Translation::Rejected(Diagnostic::error(origin, "spec", "required"));
    }
    match serde_path_to_error::deserialize::<_, S>(spec) {
        Ok(body) => document(origin, kind, meta, wrap(body)),
        Err(e) => {
            // serde_path_to_error writes "." for the root.
            let path = match e.path().to_string() {
                p if p == "." => "spec".to_string(),
                p => format!("spec.{p}"),
            };
            Translation::Rejected(Diagnostic::error(origin, path, e.into_inner().to_string()))
        }
    }
}
