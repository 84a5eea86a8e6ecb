//! Workloads (`weft.dev/v1alpha1 Workload`) and services (`v1 Service`).

use std::collections::BTreeMap;

use serde::Deserialize;
use weft_proto::discovery::v1 as pb;

use super::{
    document::{IntOrString, Meta, PortProtocol},
    validate::{self, Checker},
};

/// The service account of workloads that name none, as in Kubernetes.
const DEFAULT_SERVICE_ACCOUNT: &str = "default";

/// `spec` of a Workload: a pod (or VM) in standalone mode, where no Kubernetes API says
/// which pods exist.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// Defaults to `default`.
    pub service_account: Option<String>,
    /// Required: the node whose agent captures the workload.
    pub node: Option<String>,
    /// Required, non-empty.
    #[serde(default)]
    pub ips: Vec<String>,
    /// `HBONE` (default) or `TCP`.
    pub protocol: Option<TunnelProtocol>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub enum TunnelProtocol {
    #[serde(rename = "HBONE")]
    Hbone,
    #[serde(rename = "TCP")]
    Tcp,
}

pub fn workload(meta: &Meta, spec: &WorkloadSpec, c: &mut Checker<'_>) -> pb::Workload {
    let service_account = spec
        .service_account
        .as_deref()
        .unwrap_or(DEFAULT_SERVICE_ACCOUNT);
    c.check(
        "spec.serviceAccount",
        validate::dns_subdomain(service_account),
    );
    let node = match spec.node.as_deref() {
        None => {
            c.error(
                "spec.node",
                "required: the node whose agent serves this workload",
            );
            ""
        }
        Some(node) => c
            .check("spec.node", validate::dns_subdomain(node))
            .unwrap_or(""),
    };
    if spec.ips.is_empty() {
        c.error("spec.ips", "must list at least one IP address");
    }
    let mut ips = Vec::new();
    for (i, text) in spec.ips.iter().enumerate() {
        if let Some(ip) = c.check(format!("spec.ips[{i}]"), validate::ip(text)) {
            if ips.contains(&ip) {
                c.error(format!("spec.ips[{i}]"), format!("{ip} is listed twice"));
            }
            ips.push(ip);
        }
    }
    pb::Workload {
        // Kubernetes gives every pod a uid; in files it is optional, and namespace/name is
        // just as unique and stable.
        uid: meta.uid.clone().unwrap_or_else(|| meta.key()),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        service_account: service_account.to_string(),
        node: node.to_string(),
        ips: ips.iter().map(ToString::to_string).collect(),
        labels: meta.labels.clone().into_iter().collect(),
        protocol: match spec.protocol {
            None | Some(TunnelProtocol::Hbone) => pb::TunnelProtocol::Hbone,
            Some(TunnelProtocol::Tcp) => pb::TunnelProtocol::Tcp,
        }
        .into(),
        ..Default::default()
    }
}

/// `spec` of a Kubernetes Service (the fields Weft uses, plus common ones it ignores).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Exact-match labels of the workloads behind the service; absent selects none.
    pub selector: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub ports: Vec<ServicePortSpec>,
    /// A VIP, or `None` for a headless service.
    #[serde(rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    /// Every VIP (dual stack); its first entry must equal `clusterIP` when both are given.
    #[serde(rename = "clusterIPs", default)]
    pub cluster_ips: Vec<String>,
    /// Accepted for compatibility; only ClusterIP semantics exist in the mesh.
    #[serde(rename = "type")]
    pub service_type: Option<String>,
    // Ignored, but common in exported Services.
    #[serde(default)]
    pub ip_families: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub ip_family_policy: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub session_affinity: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub internal_traffic_policy: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePortSpec {
    pub name: Option<String>,
    pub port: i64,
    pub target_port: Option<IntOrString>,
    pub protocol: Option<PortProtocol>,
    pub app_protocol: Option<String>,
    /// Ignored: node ports are outside the mesh.
    #[serde(default)]
    pub node_port: Option<serde::de::IgnoredAny>,
}

/// Converts a Service; `workload_uids` is filled in later, when every workload is known.
pub fn service(meta: &Meta, spec: &ServiceSpec, c: &mut Checker<'_>) -> pb::Service {
    c.check("metadata.name", validate::dns_label(&meta.name));
    let selector = spec.selector.clone().unwrap_or_default();
    c.labels("spec.selector", &selector);
    if let Some(t) = spec.service_type.as_deref()
        && t != "ClusterIP"
    {
        c.warning(
            "spec.type",
            format!("{t} is treated as ClusterIP inside the mesh"),
        );
    }

    let mut vips = Vec::new();
    let headless = spec.cluster_ip.as_deref() == Some("None");
    if let Some(ip) = spec
        .cluster_ip
        .as_deref()
        .filter(|ip| *ip != "None" && !ip.is_empty())
        && let Some(ip) = c.check("spec.clusterIP", validate::ip(ip))
    {
        vips.push(ip);
    }
    for (i, text) in spec.cluster_ips.iter().enumerate() {
        if headless && text == "None" {
            continue;
        }
        if let Some(ip) = c.check(format!("spec.clusterIPs[{i}]"), validate::ip(text)) {
            if i == 0 && !vips.is_empty() && vips[0] != ip {
                c.error(
                    "spec.clusterIPs[0]",
                    format!("must equal spec.clusterIP ({}), got {ip}", vips[0]),
                );
            }
            if !vips.contains(&ip) {
                vips.push(ip);
            }
        }
    }

    let mut ports = Vec::new();
    let mut names = BTreeMap::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let at = format!("spec.ports[{i}]");
        let port = c
            .check(format!("{at}.port"), validate::port(p.port))
            .unwrap_or(0);
        let target_port = match &p.target_port {
            None => port,
            Some(t) => c
                .check(format!("{at}.targetPort"), validate::numeric_port(t))
                .unwrap_or(0),
        };
        if let Some(name) = &p.name {
            c.check(format!("{at}.name"), validate::dns_label(name));
            if let Some(first) = names.insert(name.clone(), i) {
                c.error(
                    format!("{at}.name"),
                    format!("{name:?} is already used by spec.ports[{first}]"),
                );
            }
        } else if spec.ports.len() > 1 {
            c.error(
                format!("{at}.name"),
                "required when a service has more than one port",
            );
        }
        ports.push(pb::ServicePort {
            port,
            target_port,
            protocol: validate::protocol(p.protocol).into(),
            name: p.name.clone().unwrap_or_default(),
            app_protocol: p.app_protocol.clone().unwrap_or_default(),
            target_port_name: String::new(),
        });
    }

    pb::Service {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        vips: vips.iter().map(ToString::to_string).collect(),
        ports,
        selector: selector.into_iter().collect(),
        workload_uids: Vec::new(),
        traffic_distribution: pb::TrafficDistribution::Any.into(),
    }
}

/// Whether a service's exact-match selector picks `w`. An empty selector picks nothing, as
/// a Kubernetes Service without selector has no automatic endpoints.
pub fn selects(service: &pb::Service, w: &pb::Workload) -> bool {
    !service.selector.is_empty()
        && service.namespace == w.namespace
        && service
            .selector
            .iter()
            .all(|(k, v)| w.labels.get(k) == Some(v))
}
