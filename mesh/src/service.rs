//! Services of the mesh as the agent knows them: virtual IPs and ports in front of a set of
//! workloads, and the index a captured connection's destination is looked up in (VIP and
//! port -> service -> endpoint).
//!
//! Services arrive from the control plane as protobuf resources and are converted here (and
//! nowhere else). The control plane has already resolved named target ports to numbers and
//! selectors (or EndpointSlice members) to workload uids, so the agent evaluates neither.
//! A headless service has no VIP and is not in the index: its clients dial the workloads'
//! own addresses.

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use weft_proto::discovery::v1 as pb;

use crate::workload::{
    ConvertError, Locality, Workload, WorkloadStore, WorkloadUid, addresses, required,
};

/// The DNS domain of services, as Kubernetes' default (`<name>.<namespace>.svc.<domain>`).
pub const SERVICE_DOMAIN: &str = "cluster.local";

/// A service: VIPs and ports in front of workloads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    /// Empty for a headless service.
    pub vips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// The workloads behind it, as the control plane computed them.
    pub endpoints: Vec<WorkloadUid>,
    /// Which endpoints clients prefer.
    pub traffic_distribution: TrafficDistribution,
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// The port clients dial on a VIP.
    pub port: u16,
    /// The port on each endpoint.
    pub target: TargetPort,
}

/// Where a service port lands on an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u16),
    /// The endpoint's port of this name (`Workload::ports`); an endpoint without one is not
    /// an endpoint of the port.
    Named(String),
}

impl TargetPort {
    /// The port on `w`, if it has one.
    pub fn on(&self, w: &Workload) -> Option<u16> {
        match self {
            TargetPort::Number(n) => Some(*n),
            TargetPort::Named(name) => w.ports.get(name).copied(),
        }
    }
}

/// Which of a service's endpoints a client prefers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum TrafficDistribution {
    /// Any ready endpoint.
    #[default]
    Any,
    /// The closest ready endpoints: on the client's node, else its zone, else its region,
    /// else any.
    PreferClose,
}

/// How close an endpoint is to a client; the order is the order of preference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Closeness {
    Node,
    Zone,
    Region,
    Any,
}

impl Closeness {
    /// How close `w` is to a client on `node` at `locality`.
    pub fn of(w: &Workload, node: &str, locality: &Locality) -> Closeness {
        if !node.is_empty() && w.node == node {
            Closeness::Node
        } else if w.locality.same_zone(locality) {
            Closeness::Zone
        } else if w.locality.same_region(locality) {
            Closeness::Region
        } else {
            Closeness::Any
        }
    }
}

/// The client of a service connection, for locality: the node it runs on and where that is.
#[derive(Debug, Clone, Copy)]
pub struct Client<'a> {
    pub node: &'a str,
    pub locality: &'a Locality,
}

/// One place a connection to a service port may go: a ready workload, its address of the
/// VIP's family, and the port's target on it.
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub workload: Arc<Workload>,
    pub addr: SocketAddr,
}

impl Service {
    /// Its host name, Istio's `destination_service`: `<name>.<namespace>.svc.cluster.local`.
    pub fn hostname(&self) -> String {
        format!("{}.{}.svc.{SERVICE_DOMAIN}", self.name, self.namespace)
    }

    /// The port clients dial as `port`, if the service declares it.
    pub fn port(&self, port: u16) -> Option<&ServicePort> {
        self.ports.iter().find(|p| p.port == port)
    }

    /// The endpoints a connection to `port` may go to: ready workloads known to
    /// `workloads` with an address of the family (`v4`) and the target port. When the
    /// service prefers close endpoints, only those of the closest tier that has any.
    pub fn endpoints_of(
        &self,
        port: &ServicePort,
        v4: bool,
        workloads: &WorkloadStore,
        client: &Client<'_>,
    ) -> Vec<Endpoint> {
        let mut best = Closeness::Any;
        let mut out: Vec<(Closeness, Endpoint)> = Vec::new();
        for w in self
            .endpoints
            .iter()
            .filter_map(|uid| workloads.by_uid(uid))
        {
            if !w.ready {
                continue;
            }
            let Some(ip) = w.ips.iter().find(|ip| ip.is_ipv4() == v4).copied() else {
                continue;
            };
            let Some(target) = port.target.on(w) else {
                continue;
            };
            let closeness = match self.traffic_distribution {
                TrafficDistribution::Any => Closeness::Any,
                TrafficDistribution::PreferClose => Closeness::of(w, client.node, client.locality),
            };
            best = best.min(closeness);
            out.push((
                closeness,
                Endpoint {
                    workload: w.clone(),
                    addr: SocketAddr::new(ip, target),
                },
            ));
        }
        out.into_iter()
            .filter(|(c, _)| *c == best)
            .map(|(_, e)| e)
            .collect()
    }
}

/// Why a connection to a VIP goes nowhere.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unresolved {
    #[error("service {} does not declare port {port}", service.hostname())]
    UnknownPort { service: Arc<Service>, port: u16 },
    #[error("service {} has no ready endpoint for port {port}", service.hostname())]
    NoEndpoints { service: Arc<Service>, port: u16 },
}

impl Unresolved {
    pub fn service(&self) -> &Arc<Service> {
        match self {
            Unresolved::UnknownPort { service, .. } | Unresolved::NoEndpoints { service, .. } => {
                service
            }
        }
    }
}

/// A VIP's service and the endpoints a connection to it may go to, or why none.
pub type Resolution = Result<(Arc<Service>, Vec<Endpoint>), Unresolved>;

/// Every service with a VIP, indexed by VIP.
#[derive(Debug, Default)]
pub struct ServiceIndex {
    by_vip: HashMap<IpAddr, Arc<Service>>,
}

impl ServiceIndex {
    pub fn from_arcs(services: impl IntoIterator<Item = Arc<Service>>) -> Self {
        let mut index = ServiceIndex::default();
        for s in services {
            for vip in &s.vips {
                index.by_vip.insert(vip.to_canonical(), s.clone());
            }
        }
        index
    }

    /// The service owning `vip`, if any.
    pub fn by_vip(&self, vip: IpAddr) -> Option<&Arc<Service>> {
        self.by_vip.get(&vip.to_canonical())
    }

    /// Every (VIP, service) pair.
    pub fn iter(&self) -> impl Iterator<Item = (&IpAddr, &Arc<Service>)> {
        self.by_vip.iter()
    }

    /// The endpoints a connection to `dst` may go to (see [`Service::endpoints_of`]):
    /// `None` when `dst` is no VIP (the connection goes to `dst` itself), an error when the
    /// service has no such port or no endpoint for it.
    pub fn endpoints(
        &self,
        dst: SocketAddr,
        workloads: &WorkloadStore,
        client: &Client<'_>,
    ) -> Option<Resolution> {
        let service = self.by_vip(dst.ip())?;
        let Some(port) = service.port(dst.port()) else {
            return Some(Err(Unresolved::UnknownPort {
                service: service.clone(),
                port: dst.port(),
            }));
        };
        let v4 = dst.ip().to_canonical().is_ipv4();
        let endpoints = service.endpoints_of(port, v4, workloads, client);
        if endpoints.is_empty() {
            return Some(Err(Unresolved::NoEndpoints {
                service: service.clone(),
                port: dst.port(),
            }));
        }
        Some(Ok((service.clone(), endpoints)))
    }
}

fn port(field: &'static str, value: u32) -> Result<u16, ConvertError> {
    match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ConvertError::Field {
            field,
            problem: format!("{value} is not a port (1-65535)"),
        }),
    }
}

impl TryFrom<pb::Resource> for Service {
    type Error = ConvertError;

    fn try_from(resource: pb::Resource) -> Result<Self, Self::Error> {
        let Some(pb::resource::Kind::Service(s)) = resource.kind else {
            return Err(ConvertError::WrongKind);
        };
        let vips = addresses("vips", &s.vips)?;
        let mut ports = Vec::with_capacity(s.ports.len());
        for p in &s.ports {
            // Only TCP is captured; other protocols' ports never reach the agent.
            if !matches!(
                pb::Protocol::try_from(p.protocol),
                Ok(pb::Protocol::Tcp | pb::Protocol::Unspecified)
            ) {
                continue;
            }
            let number = port("ports.port", p.port)?;
            let target = if !p.target_port_name.is_empty() {
                TargetPort::Named(p.target_port_name.clone())
            } else if p.target_port == 0 {
                TargetPort::Number(number)
            } else {
                TargetPort::Number(port("ports.target_port", p.target_port)?)
            };
            ports.push(ServicePort {
                port: number,
                target,
            });
        }
        Ok(Service {
            name: required("name", s.name)?,
            namespace: required("namespace", s.namespace)?,
            vips,
            ports,
            endpoints: s.workload_uids.into_iter().map(WorkloadUid).collect(),
            traffic_distribution: match pb::TrafficDistribution::try_from(s.traffic_distribution) {
                Ok(pb::TrafficDistribution::Any) => TrafficDistribution::Any,
                Ok(pb::TrafficDistribution::PreferClose) => TrafficDistribution::PreferClose,
                Err(_) => {
                    return Err(ConvertError::Field {
                        field: "traffic_distribution",
                        problem: format!("unknown traffic distribution {}", s.traffic_distribution),
                    });
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::TunnelProtocol;

    fn workload(uid: &str, node: &str, zone: &str, ips: &[&str]) -> Workload {
        Workload {
            uid: WorkloadUid(uid.into()),
            name: uid.into(),
            namespace: "default".into(),
            service_account: "default".into(),
            node: node.into(),
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            protocol: TunnelProtocol::Hbone,
            locality: Locality {
                region: "eu".into(),
                zone: zone.into(),
            },
            ..Workload::default()
        }
    }

    fn resource(vips: &[&str], ports: &[(u32, u32)], uids: &[&str]) -> pb::Resource {
        pb::Resource {
            name: "default/web".into(),
            kind: Some(pb::resource::Kind::Service(pb::Service {
                name: "web".into(),
                namespace: "default".into(),
                vips: vips.iter().map(|s| s.to_string()).collect(),
                ports: ports
                    .iter()
                    .map(|&(port, target_port)| pb::ServicePort {
                        port,
                        target_port,
                        ..Default::default()
                    })
                    .collect(),
                workload_uids: uids.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })),
        }
    }

    fn index(r: pb::Resource) -> ServiceIndex {
        ServiceIndex::from_arcs([Arc::new(Service::try_from(r).unwrap())])
    }

    fn store() -> WorkloadStore {
        WorkloadStore::new(vec![
            workload("a", "node-1", "z1", &["10.0.0.1", "fd00::1"]),
            workload("b", "node-2", "z1", &["10.0.0.2"]),
            workload("c", "node-3", "z2", &["10.0.0.3"]),
        ])
    }

    const CLIENT: Client<'static> = Client {
        node: "node-9",
        locality: &Locality {
            region: String::new(),
            zone: String::new(),
        },
    };

    fn names(endpoints: &[Endpoint]) -> Vec<String> {
        let mut names: Vec<String> = endpoints.iter().map(|e| e.workload.name.clone()).collect();
        names.sort();
        names
    }

    fn endpoints(idx: &ServiceIndex, dst: &str, s: &WorkloadStore) -> Vec<Endpoint> {
        idx.endpoints(dst.parse().unwrap(), s, &CLIENT)
            .unwrap()
            .unwrap()
            .1
    }

    #[test]
    fn a_v4_vip_port_has_every_endpoint_on_its_target_port() {
        let idx = index(resource(&["10.96.0.10"], &[(80, 8080)], &["a", "b"]));
        let s = store();
        let e = endpoints(&idx, "10.96.0.10:80", &s);
        assert_eq!(names(&e), ["a", "b"]);
        assert!(e.iter().all(|e| e.addr.port() == 8080));
        assert!(e.iter().all(|e| e.workload.ips[0] == e.addr.ip()));
        // The mapped form of a v4 VIP is the same VIP.
        assert_eq!(endpoints(&idx, "[::ffff:10.96.0.10]:80", &s).len(), 2);
    }

    #[test]
    fn a_v6_vip_has_v6_endpoint_addresses_only() {
        let idx = index(resource(
            &["10.96.0.10", "fd00:96::10"],
            &[(80, 0)],
            &["a", "b"],
        ));
        let e = endpoints(&idx, "[fd00:96::10]:80", &store());
        assert_eq!(names(&e), ["a"], "b has no IPv6 address");
        assert_eq!(
            e[0].addr,
            "[fd00::1]:80".parse().unwrap(),
            "target port = port"
        );
    }

    #[test]
    fn not_ready_workloads_are_no_endpoints() {
        let idx = index(resource(&["10.96.0.10"], &[(80, 80)], &["a", "b"]));
        let mut b = workload("b", "node-2", "z1", &["10.0.0.2"]);
        b.ready = false;
        let s = WorkloadStore::new(vec![workload("a", "node-1", "z1", &["10.0.0.1"]), b]);
        assert_eq!(names(&endpoints(&idx, "10.96.0.10:80", &s)), ["a"]);
    }

    #[test]
    fn a_named_target_port_resolves_per_endpoint() {
        let mut r = resource(&["10.96.0.10"], &[(80, 0)], &["a", "b", "c"]);
        if let Some(pb::resource::Kind::Service(svc)) = &mut r.kind {
            svc.ports[0].target_port_name = "http".into();
        }
        let idx = index(r);
        let mut a = workload("a", "node-1", "z1", &["10.0.0.1"]);
        a.ports.insert("http".into(), 8080);
        let mut b = workload("b", "node-2", "z1", &["10.0.0.2"]);
        b.ports.insert("http".into(), 9090);
        let s = WorkloadStore::new(vec![a, b, workload("c", "node-3", "z2", &["10.0.0.3"])]);
        let mut got: Vec<SocketAddr> = endpoints(&idx, "10.96.0.10:80", &s)
            .iter()
            .map(|e| e.addr)
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                "10.0.0.1:8080".parse().unwrap(),
                "10.0.0.2:9090".parse().unwrap()
            ],
            "c has no port named http"
        );
    }

    #[test]
    fn prefer_close_takes_the_closest_tier_that_has_endpoints() {
        let mut r = resource(&["10.96.0.10"], &[(80, 80)], &["a", "b", "c"]);
        if let Some(pb::resource::Kind::Service(svc)) = &mut r.kind {
            svc.traffic_distribution = pb::TrafficDistribution::PreferClose.into();
        }
        let idx = index(r);
        let s = store();
        let z1 = Locality {
            region: "eu".into(),
            zone: "z1".into(),
        };
        let z2 = Locality {
            region: "eu".into(),
            zone: "z2".into(),
        };
        let at = |node: &str, locality: &Locality| {
            let client = Client { node, locality };
            let (_, e) = idx
                .endpoints("10.96.0.10:80".parse().unwrap(), &s, &client)
                .unwrap()
                .unwrap();
            names(&e)
        };
        assert_eq!(at("node-1", &z1), ["a"], "same node first");
        assert_eq!(at("node-9", &z1), ["a", "b"], "then same zone");
        assert_eq!(at("node-9", &z2), ["c"]);
        let far = Locality {
            region: "us".into(),
            zone: "z1".into(),
        };
        assert_eq!(at("node-9", &far), ["a", "b", "c"], "then anything");
    }

    #[test]
    fn an_undeclared_port_or_no_endpoint_is_unresolved() {
        let s = store();
        let idx = index(resource(&["10.96.0.10"], &[(80, 8080)], &["a"]));
        assert!(matches!(
            idx.endpoints("10.96.0.10:81".parse().unwrap(), &s, &CLIENT),
            Some(Err(Unresolved::UnknownPort { port: 81, .. }))
        ));
        let empty = index(resource(&["10.96.0.10"], &[(80, 8080)], &["gone"]));
        assert!(matches!(
            empty.endpoints("10.96.0.10:80".parse().unwrap(), &s, &CLIENT),
            Some(Err(Unresolved::NoEndpoints { .. }))
        ));
        // Not a VIP: the destination is itself.
        assert!(
            idx.endpoints("10.0.0.1:80".parse().unwrap(), &s, &CLIENT)
                .is_none()
        );
    }

    #[test]
    fn a_headless_service_is_not_indexed_and_bad_ports_are_rejected() {
        let idx = index(resource(&[], &[(80, 80)], &["a"]));
        assert!(idx.by_vip.is_empty());
        let err = Service::try_from(resource(&["10.96.0.10"], &[(70000, 80)], &[])).unwrap_err();
        assert!(err.to_string().contains("ports.port"), "{err}");
        let err = Service::try_from(resource(&["nope"], &[(80, 80)], &[])).unwrap_err();
        assert!(err.to_string().contains("vips"), "{err}");
    }
}
