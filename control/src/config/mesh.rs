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
    /// Named ports (name -> number), which services' named `targetPort`s resolve to.
    #[serde(default)]
    pub ports: BTreeMap<String, i64>,
    /// Whether services send it new connections; defaults to true.
    pub ready: Option<bool>,
    /// Its share of a service's new connections relative to the other endpoints; 1 if
    /// left out.
    pub weight: Option<i64>,
}

/// The largest `spec.weight`: weights are relative, and a larger one is a typo rather than
/// a meaningful share (the bound Gateway API sets for backend weights).
pub const MAX_WEIGHT: i64 = 1_000_000;

/// The annotation Istio reads a service's traffic distribution from.
pub const TRAFFIC_DISTRIBUTION_ANNOTATION: &str = "networking.istio.io/traffic-distribution";

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
    let mut ports = BTreeMap::new();
    for (name, number) in &spec.ports {
        let at = format!("spec.ports.{name}");
        let name = c.check(&at, validate::port_name(name));
        let number = c.check(&at, validate::port(*number));
        if let (Some(name), Some(number)) = (name, number) {
            ports.insert(name.to_string(), number);
        }
    }
    let weight = match spec.weight {
        None => 1,
        Some(w) if (1..=MAX_WEIGHT).contains(&w) => w as u32,
        Some(w) => {
            c.error(
                "spec.weight",
                format!(
                    "must be 1-{MAX_WEIGHT} (a share relative to the service's other \
                     endpoints; 1 is the default), got {w}"
                ),
            );
            1
        }
    };
    let status = if spec.ready.unwrap_or(true) {
        pb::WorkloadStatus::Ready
    } else {
        pb::WorkloadStatus::NotReady
    };
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
        status: status.into(),
        ports: ports.into_iter().collect(),
        // Filled in from the workload's Node document once every document is known.
        locality: None,
        weight,
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
    /// `PreferClose`: clients prefer endpoints close to them (Kubernetes 1.31).
    pub traffic_distribution: Option<String>,
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
        let (target_port, target_port_name) = match &p.target_port {
            None => (port, String::new()),
            Some(t) => match c.check(format!("{at}.targetPort"), validate::target_port(t)) {
                Some(validate::TargetPort::Number(n)) => (n, String::new()),
                // Resolved per endpoint, against each workload's named ports.
                Some(validate::TargetPort::Named(name)) => (0, name),
                None => (0, String::new()),
            },
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
            target_port_name,
        });
    }
    let traffic_distribution = traffic_distribution(meta, spec, c);

    pb::Service {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        vips: vips.iter().map(ToString::to_string).collect(),
        ports,
        selector: selector.into_iter().collect(),
        workload_uids: Vec::new(),
        traffic_distribution: traffic_distribution.into(),
    }
}

/// `spec.trafficDistribution` (Kubernetes' form) or the Istio annotation; the field wins
/// when both are set, as Istio does.
fn traffic_distribution(
    meta: &Meta,
    spec: &ServiceSpec,
    c: &mut Checker<'_>,
) -> pb::TrafficDistribution {
    let field = spec.traffic_distribution.as_deref().and_then(|v| {
        c.check(
            "spec.trafficDistribution",
            match v {
                "PreferClose" => Ok(pb::TrafficDistribution::PreferClose),
                other => Err(format!(
                    "must be PreferClose (or left out for any endpoint), got {other:?}"
                )),
            },
        )
    });
    let annotation = meta
        .annotations
        .get(TRAFFIC_DISTRIBUTION_ANNOTATION)
        .and_then(|v| {
            c.check(
                format!("metadata.annotations.{TRAFFIC_DISTRIBUTION_ANNOTATION}"),
                match v.as_str() {
                    "PreferClose" => Ok(pb::TrafficDistribution::PreferClose),
                    "Any" => Ok(pb::TrafficDistribution::Any),
                    other => Err(format!("must be PreferClose or Any, got {other:?}")),
                },
            )
        });
    match (field, annotation) {
        (Some(f), Some(a)) => {
            if f != a {
                c.warning(
                    format!("metadata.annotations.{TRAFFIC_DISTRIBUTION_ANNOTATION}"),
                    format!(
                        "{} is overridden by spec.trafficDistribution ({})",
                        a.as_str_name(),
                        f.as_str_name()
                    ),
                );
            }
            f
        }
        (Some(d), None) | (None, Some(d)) => d,
        (None, None) => pb::TrafficDistribution::Any,
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
