//! Nodes (`v1 Node`) and EndpointSlices (`discovery.k8s.io/v1 EndpointSlice`): where
//! workloads run, and the members of services without a selector.
//!
//! Neither becomes a resource of its own. A Node gives the workloads on it their locality;
//! an EndpointSlice gives its service members: the workloads whose address it lists, and,
//! for any other address, a workload of its own with `protocol: TCP` (a destination outside
//! the mesh, as Istio treats ServiceEntry endpoints).
//!
//! Ports follow Kubernetes' rule for services without a selector: the slices, not the
//! service's `targetPort`, say where a connection lands. A service port takes the slice port
//! of the same name, which every endpoint of the slice gets as a named port
//! (`Workload.ports`), and the service port's target becomes that name. An unnamed slice
//! port is the port of a service with a single port: its target is that port's name when it
//! has one, else the slice's number itself, on which every slice of the service must agree.

use std::{
    collections::{BTreeMap, btree_map::Entry},
    net::IpAddr,
};

use serde::Deserialize;
use weft_proto::discovery::v1::{self as pb, ResourceType, resource::Kind as PbKind};

use super::{
    Diagnostic, Origin, ResourceSet,
    document::{Kind, Meta, ObjectMeta, PortProtocol},
    validate::{self, Checker},
};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The node labels a workload's locality comes from.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
/// The service account of the workloads a slice creates: they are outside the mesh and
/// have no identity of their own.
const SLICE_SERVICE_ACCOUNT: &str = "default";
/// Kubernetes' own bounds (`EndpointSlice` validation): endpoints and ports per slice,
/// addresses per endpoint.
const MAX_ENDPOINTS: usize = 1000;
const MAX_PORTS: usize = 100;
const MAX_ADDRESSES: usize = 100;

// === Documents ===

/// A `v1` Node document: only its name and its topology labels matter.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NodeDocument {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// Ignored (pod CIDRs, taints, provider id ...), accepted so exported nodes load.
    #[serde(default)]
    pub spec: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub status: Option<serde::de::IgnoredAny>,
}

/// A Node's body: nothing beyond its metadata.
#[derive(Debug, Clone, Default)]
pub struct NodeSpec {}

/// A `discovery.k8s.io/v1` EndpointSlice document: no `spec`, its fields sit at the top.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSliceDocument {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub address_type: Option<String>,
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    #[serde(default)]
    pub ports: Vec<EndpointPortSpec>,
}

impl EndpointSliceDocument {
    pub fn into_spec(self) -> EndpointSliceSpec {
        EndpointSliceSpec {
            address_type: self.address_type,
            endpoints: self.endpoints,
            ports: self.ports,
        }
    }
}

/// The fields of an EndpointSlice.
#[derive(Debug, Clone, Default)]
pub struct EndpointSliceSpec {
    /// `IPv4`, `IPv6` or `FQDN` (not supported: the slice is skipped with a warning).
    pub address_type: Option<String>,
    pub endpoints: Vec<EndpointSpec>,
    pub ports: Vec<EndpointPortSpec>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSpec {
    #[serde(default)]
    pub addresses: Vec<String>,
    #[serde(default)]
    pub conditions: EndpointConditions,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    // Ignored: DNS names and hints of other consumers.
    #[serde(default)]
    pub hostname: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub target_ref: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub hints: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub deprecated_topology: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointConditions {
    /// Absent means ready, as Kubernetes reads it.
    pub ready: Option<bool>,
    #[serde(default)]
    pub serving: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub terminating: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointPortSpec {
    pub name: Option<String>,
    pub port: Option<i64>,
    pub protocol: Option<PortProtocol>,
    pub app_protocol: Option<String>,
}

// === Nodes ===

/// The locality of one node, and where it was defined.
#[derive(Debug, Default)]
pub struct Nodes {
    nodes: BTreeMap<String, (pb::Locality, Origin)>,
}

impl Nodes {
    /// Validates a Node document and records its locality.
    pub fn add(&mut self, meta: &Meta, raw: &ObjectMeta, origin: &Origin, c: &mut Checker<'_>) {
        if raw.namespace.is_some() {
            c.error(
                "metadata.namespace",
                "a Node belongs to no namespace: leave metadata.namespace out",
            );
        }
        let region = meta.labels.get(REGION_LABEL).cloned().unwrap_or_default();
        let zone = meta.labels.get(ZONE_LABEL).cloned().unwrap_or_default();
        if region.is_empty() && !zone.is_empty() {
            c.warning(
                format!("metadata.labels.{ZONE_LABEL}"),
                format!(
                    "a zone without {REGION_LABEL} is never close to anything: zones are \
                     compared within a region"
                ),
            );
        }
        match self.nodes.entry(meta.name.clone()) {
            Entry::Occupied(e) => c.error(
                "metadata.name",
                format!("Node {} is already defined in {}", meta.name, e.get().1),
            ),
            Entry::Vacant(e) => {
                e.insert((pb::Locality { region, zone }, origin.clone()));
            }
        }
    }

    /// Gives every workload on a known node that node's locality; a zone the workload
    /// already has (from its EndpointSlice) is kept.
    pub fn apply(&self, set: &mut ResourceSet) {
        if self.nodes.is_empty() {
            return;
        }
        let changed: Vec<pb::Resource> = set
            .of_type(ResourceType::Workload)
            .filter_map(|r| {
                let Some(PbKind::Workload(w)) = &r.kind else {
                    return None;
                };
                let (node, _) = self.nodes.get(&w.node)?;
                let mut r = (**r).clone();
                if let Some(PbKind::Workload(w)) = &mut r.kind {
                    let l = w.locality.get_or_insert_with(Default::default);
                    if l.zone.is_empty() {
                        l.zone = node.zone.clone();
                    }
                    l.region = node.region.clone();
                }
                Some(r)
            })
            .collect();
        for r in changed {
            set.insert(r);
        }
    }
}

// === EndpointSlices ===

/// An EndpointSlice whose fields are valid, waiting for every workload and service.
#[derive(Debug)]
pub struct Slice {
    origin: Origin,
    name: String,
    namespace: String,
    /// `namespace/name` of its service.
    service: String,
    endpoints: Vec<SliceEndpoint>,
    /// Its TCP ports: name ("" when unnamed), number, and index in `ports`.
    ports: Vec<(String, u32, usize)>,
}

#[derive(Debug)]
struct SliceEndpoint {
    index: usize,
    addresses: Vec<IpAddr>,
    ready: bool,
    node: String,
    zone: String,
}

/// Validates an EndpointSlice's fields; `None` when it has nothing to contribute (an FQDN
/// slice, skipped with a warning) or is invalid.
pub fn endpoint_slice(
    meta: &Meta,
    spec: &EndpointSliceSpec,
    origin: &Origin,
    c: &mut Checker<'_>,
) -> Option<Slice> {
    let service = match meta.labels.get(SERVICE_NAME_LABEL) {
        Some(s) => c
            .check(
                format!("metadata.labels.{SERVICE_NAME_LABEL}"),
                validate::dns_label(s),
            )
            .map(|s| format!("{}/{s}", meta.namespace)),
        None => {
            c.error(
                "metadata.labels",
                format!("the label {SERVICE_NAME_LABEL} must name the slice's Service"),
            );
            None
        }
    };
    let v4 = match spec.address_type.as_deref() {
        Some("IPv4") => true,
        Some("IPv6") => false,
        Some("FQDN") => {
            c.warning(
                "addressType",
                "FQDN endpoints are not supported: the slice is ignored",
            );
            return None;
        }
        Some(other) => {
            c.error(
                "addressType",
                format!("must be IPv4, IPv6 or FQDN, got {other:?}"),
            );
            return None;
        }
        None => {
            c.error("addressType", "required: IPv4 or IPv6");
            return None;
        }
    };
    if spec.endpoints.len() > MAX_ENDPOINTS {
        c.error(
            "endpoints",
            format!(
                "at most {MAX_ENDPOINTS} endpoints per slice, got {}: split it",
                spec.endpoints.len()
            ),
        );
        return None;
    }
    if spec.ports.len() > MAX_PORTS {
        c.error(
            "ports",
            format!("at most {MAX_PORTS} ports, got {}", spec.ports.len()),
        );
        return None;
    }
    let mut ok = service.is_some();
    let mut ports = Vec::new();
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, p) in spec.ports.iter().enumerate() {
        let at = format!("ports[{i}]");
        let name = p.name.as_deref().unwrap_or("");
        if !name.is_empty()
            && c.check(format!("{at}.name"), validate::dns_label(name))
                .is_none()
        {
            ok = false;
        }
        if let Some(first) = names.insert(name, i) {
            c.error(
                format!("{at}.name"),
                format!("{name:?} is already the name of ports[{first}]"),
            );
            ok = false;
        }
        let number = match p.port {
            Some(n) => c.check(format!("{at}.port"), validate::port(n)),
            None => {
                c.error(
                    format!("{at}.port"),
                    "required (a slice port without number means every port, which the mesh \
                     does not support)",
                );
                None
            }
        };
        let Some(number) = number else {
            ok = false;
            continue;
        };
        // Only TCP is captured; the others are Kubernetes' business.
        if matches!(p.protocol.unwrap_or_default(), PortProtocol::Tcp) {
            ports.push((name.to_string(), number, i));
        }
    }
    let mut endpoints = Vec::with_capacity(spec.endpoints.len());
    for (i, e) in spec.endpoints.iter().enumerate() {
        let at = format!("endpoints[{i}]");
        if e.addresses.is_empty() || e.addresses.len() > MAX_ADDRESSES {
            c.error(
                format!("{at}.addresses"),
                format!(
                    "must list 1-{MAX_ADDRESSES} addresses, got {}",
                    e.addresses.len()
                ),
            );
            ok = false;
        }
        let mut addresses = Vec::new();
        for (j, text) in e.addresses.iter().enumerate() {
            let path = format!("{at}.addresses[{j}]");
            match c.check(&path, validate::ip(text)) {
                Some(ip) if ip.is_ipv4() != v4 => {
                    c.error(
                        path,
                        format!(
                            "{ip} is not an {} address, as addressType says",
                            if v4 { "IPv4" } else { "IPv6" }
                        ),
                    );
                    ok = false;
                }
                Some(ip) if addresses.contains(&ip) => {
                    c.error(path, format!("{ip} is listed twice"));
                    ok = false;
                }
                Some(ip) => addresses.push(ip),
                None => ok = false,
            }
        }
        let node = match e.node_name.as_deref() {
            None => String::new(),
            Some(n) => match c.check(format!("{at}.nodeName"), validate::dns_subdomain(n)) {
                Some(n) => n.to_string(),
                None => {
                    ok = false;
                    String::new()
                }
            },
        };
        let zone = e.zone.clone().unwrap_or_default();
        if c.check(format!("{at}.zone"), validate::label_value(&zone))
            .is_none()
        {
            ok = false;
        }
        endpoints.push(SliceEndpoint {
            index: i,
            addresses,
            ready: e.conditions.ready.unwrap_or(true),
            node,
            zone,
        });
    }
    Some(Slice {
        origin: origin.clone(),
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        service: service?,
        endpoints,
        ports,
    })
    .filter(|_| ok)
}

/// Where a service port of a service without selector lands, as its slices say.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Named(String),
    Number(u32),
}

/// Makes the slices' endpoints members of their services (see the module documentation),
/// creating a workload for every address that is no workload's.
pub fn apply(slices: &[Slice], set: &mut ResourceSet, diagnostics: &mut Vec<Diagnostic>) {
    if slices.is_empty() {
        return;
    }
    // Every address already taken, by the workload that has it.
    let mut by_ip: BTreeMap<IpAddr, String> = BTreeMap::new();
    for r in set.of_type(ResourceType::Workload) {
        if let Some(PbKind::Workload(w)) = &r.kind {
            for ip in &w.ips {
                if let Ok(ip) = ip.parse::<IpAddr>() {
                    by_ip.insert(ip.to_canonical(), w.uid.clone());
                }
            }
        }
    }
    // Workloads this pass changes or creates, by uid; written back at the end.
    let mut workloads: BTreeMap<String, pb::Workload> = BTreeMap::new();
    // Per service: members, and each port's target with the slice that decided it.
    let mut members: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut targets: BTreeMap<(String, usize), (Target, Origin)> = BTreeMap::new();

    for slice in slices {
        let mut c = Checker::new(&slice.origin, Kind::EndpointSlice, diagnostics);
        let label = format!("metadata.labels.{SERVICE_NAME_LABEL}");
        let Some(PbKind::Service(service)) = set
            .get(ResourceType::Service, &slice.service)
            .and_then(|r| r.kind.as_ref())
        else {
            c.warning(
                label,
                format!(
                    "no Service {} is defined: the slice is ignored",
                    slice.service
                ),
            );
            continue;
        };
        if !service.selector.is_empty() {
            c.warning(
                label,
                format!(
                    "Service {} has a selector, which picks its members: the slice is ignored",
                    slice.service
                ),
            );
            continue;
        }
        // Which service port each slice port serves, and the named port endpoints get.
        let mut endpoint_ports: BTreeMap<String, u32> = BTreeMap::new();
        for (name, number, i) in &slice.ports {
            let at = format!("ports[{i}]");
            let index = if name.is_empty() {
                if service.ports.len() != 1 {
                    c.error(
                        format!("{at}.name"),
                        format!(
                            "an unnamed port only fits a service with one port, and {} has {}: \
                             name it after one of them",
                            slice.service,
                            service.ports.len()
                        ),
                    );
                    continue;
                }
                0
            } else {
                match service.ports.iter().position(|p| &p.name == name) {
                    Some(index) => index,
                    None => {
                        c.warning(
                            format!("{at}.name"),
                            format!(
                                "Service {} has no port named {name:?}: the port is ignored",
                                slice.service
                            ),
                        );
                        continue;
                    }
                }
            };
            let service_port = &service.ports[index].name;
            let target = if service_port.is_empty() {
                Target::Number(*number)
            } else {
                endpoint_ports.insert(service_port.clone(), *number);
                Target::Named(service_port.clone())
            };
            match targets.entry((slice.service.clone(), index)) {
                Entry::Vacant(e) => {
                    e.insert((target, slice.origin.clone()));
                }
                Entry::Occupied(e) if e.get().0 != target => c.error(
                    format!("{at}.port"),
                    format!(
                        "the unnamed port of Service {} is {number} here but {} in {}: the \
                         slices of a service must agree (or name the port)",
                        slice.service,
                        match &e.get().0 {
                            Target::Number(n) => n.to_string(),
                            Target::Named(n) => format!("named {n:?}"),
                        },
                        e.get().1
                    ),
                ),
                Entry::Occupied(_) => {}
            }
        }

        let service_members = members.entry(slice.service.clone()).or_default();
        let mut n = 0usize;
        for e in &slice.endpoints {
            for (j, ip) in e.addresses.iter().enumerate() {
                let at = format!("endpoints[{}].addresses[{j}]", e.index);
                let position = n;
                n += 1;
                let uid = match by_ip.get(ip) {
                    Some(uid) => {
                        // A workload the slice names keeps its own readiness for other
                        // services; this service takes it only while the slice says ready.
                        if !e.ready {
                            continue;
                        }
                        uid.clone()
                    }
                    None => {
                        let uid = format!("endpointslice/{}/{}/{ip}", slice.namespace, slice.name);
                        workloads
                            .insert(uid.clone(), slice_workload(slice, e, *ip, &uid, position));
                        by_ip.insert(*ip, uid.clone());
                        uid
                    }
                };
                if !endpoint_ports.is_empty() {
                    let w = match workloads.entry(uid.clone()) {
                        Entry::Occupied(o) => o.into_mut(),
                        Entry::Vacant(v) => {
                            match set
                                .get(ResourceType::Workload, &uid)
                                .and_then(|r| r.kind.as_ref())
                            {
                                Some(PbKind::Workload(w)) => v.insert(w.clone()),
                                _ => continue,
                            }
                        }
                    };
                    for (name, number) in &endpoint_ports {
                        match w.ports.entry(name.clone()) {
                            Entry::Vacant(v) => {
                                v.insert(*number);
                            }
                            Entry::Occupied(o) if o.get() != number => {
                                c.error(
                                    &at,
                                    format!(
                                        "{ip} is workload {}/{}, whose port {name:?} is {}, \
                                         not {number} as this slice says",
                                        w.namespace,
                                        w.name,
                                        o.get()
                                    ),
                                );
                            }
                            Entry::Occupied(_) => {}
                        }
                    }
                }
                service_members.push(uid);
            }
        }
    }

    for (_, w) in workloads {
        set.insert(pb::Resource {
            name: w.uid.clone(),
            kind: Some(PbKind::Workload(w)),
        });
    }
    let mut services: Vec<pb::Resource> = Vec::new();
    for (key, mut uids) in members {
        let Some(r) = set.get(ResourceType::Service, &key) else {
            continue;
        };
        let mut r = (**r).clone();
        if let Some(PbKind::Service(s)) = &mut r.kind {
            uids.sort();
            uids.dedup();
            s.workload_uids = uids;
            for (index, p) in s.ports.iter_mut().enumerate() {
                match targets.get(&(key.clone(), index)).map(|t| &t.0) {
                    Some(Target::Named(name)) => {
                        p.target_port = 0;
                        p.target_port_name = name.clone();
                    }
                    Some(Target::Number(n)) => {
                        p.target_port = *n;
                        p.target_port_name.clear();
                    }
                    None => {}
                }
            }
        }
        services.push(r);
    }
    for r in services {
        set.insert(r);
    }
}

/// The workload of an address outside the mesh: reached over plain TCP, named after its
/// slice and its position in it.
fn slice_workload(
    slice: &Slice,
    e: &SliceEndpoint,
    ip: IpAddr,
    uid: &str,
    position: usize,
) -> pb::Workload {
    pb::Workload {
        uid: uid.to_string(),
        name: format!("{}-{position}", slice.name),
        namespace: slice.namespace.clone(),
        service_account: SLICE_SERVICE_ACCOUNT.to_string(),
        node: e.node.clone(),
        ips: vec![ip.to_string()],
        labels: Default::default(),
        protocol: pb::TunnelProtocol::Tcp.into(),
        status: if e.ready {
            pb::WorkloadStatus::Ready
        } else {
            pb::WorkloadStatus::NotReady
        }
        .into(),
        ports: Default::default(),
        locality: (!e.zone.is_empty()).then(|| pb::Locality {
            region: String::new(),
            zone: e.zone.clone(),
        }),
        weight: 1,
    }
}
