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

use crate::workload::{ConvertError, Workload, WorkloadStore, WorkloadUid, addresses, required};

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
}

/// One port of a service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServicePort {
    /// The port clients dial on a VIP.
    pub port: u16,
    /// The port on the workload.
    pub target_port: u16,
}

impl Service {
    /// Its host name, Istio's `destination_service`: `<name>.<namespace>.svc.cluster.local`.
    pub fn hostname(&self) -> String {
        format!("{}.{}.svc.{SERVICE_DOMAIN}", self.name, self.namespace)
    }

    /// The target port behind `port`, if the service declares it.
    /// One of the endpoints known to `workloads` for which `address` gives an address, the
    /// `pick`-th modulo their number (the caller chooses how picks spread). They are
    /// counted, then walked again to the pick, so choosing allocates nothing.
    pub fn pick_endpoint<'w>(
        &self,
        workloads: &'w WorkloadStore,
        address: impl Fn(&Workload) -> Option<IpAddr>,
        pick: impl FnOnce() -> usize,
    ) -> Option<(&'w Arc<Workload>, IpAddr)> {
        let endpoints = || {
            self.endpoints
                .iter()
                .filter_map(|uid| workloads.by_uid(uid))
                .filter_map(|w| address(w).map(|ip| (w, ip)))
        };
        let count = endpoints().count();
        if count == 0 {
            return None;
        }
        endpoints().nth(pick() % count)
    }

    pub fn target_port(&self, port: u16) -> Option<u16> {
        self.ports
            .iter()
            .find(|p| p.port == port)
            .map(|p| p.target_port)
    }
}

/// Where a connection to a VIP goes.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub service: Arc<Service>,
    pub endpoint: Arc<Workload>,
    /// The endpoint's address (of the VIP's family when it has one) and target port.
    pub addr: SocketAddr,
}

/// Why a connection to a VIP goes nowhere.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Unresolved {
    #[error("service {} does not declare port {port}", service.hostname())]
    UnknownPort { service: Arc<Service>, port: u16 },
    #[error("service {} has no endpoints", service.hostname())]
    NoEndpoints { service: Arc<Service> },
}

impl Unresolved {
    pub fn service(&self) -> &Arc<Service> {
        match self {
            Unresolved::UnknownPort { service, .. } | Unresolved::NoEndpoints { service } => {
                service
            }
        }
    }
}

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

    /// Resolves a connection to `dst`: `None` when `dst` is no VIP (the connection goes to
    /// `dst` itself), else one endpoint of the service known to `workloads`, the
    /// `pick`-th modulo their number (the caller chooses how picks spread).
    pub fn resolve(
        &self,
        dst: SocketAddr,
        workloads: &WorkloadStore,
        pick: impl FnOnce() -> usize,
    ) -> Option<Result<Resolved, Unresolved>> {
        let service = self.by_vip(dst.ip())?;
        let Some(target_port) = service.target_port(dst.port()) else {
            return Some(Err(Unresolved::UnknownPort {
                service: service.clone(),
                port: dst.port(),
            }));
        };
        let family_v4 = dst.ip().to_canonical().is_ipv4();
        // Endpoints with an address of the VIP's family: a v6 VIP is not answered from v4.
        let family = |w: &Workload| w.ips.iter().find(|ip| ip.is_ipv4() == family_v4).copied();
        let Some((endpoint, ip)) = service.pick_endpoint(workloads, family, pick) else {
            return Some(Err(Unresolved::NoEndpoints {
                service: service.clone(),
            }));
        };
        Some(Ok(Resolved {
            service: service.clone(),
            endpoint: endpoint.clone(),
            addr: SocketAddr::new(ip, target_port),
        }))
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
            let target = if p.target_port == 0 {
                number
            } else {
                port("ports.target_port", p.target_port)?
            };
            ports.push(ServicePort {
                port: number,
                target_port: target,
            });
        }
        Ok(Service {
            name: required("name", s.name)?,
            namespace: required("namespace", s.namespace)?,
            vips,
            ports,
            endpoints: s.workload_uids.into_iter().map(WorkloadUid).collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::TunnelProtocol;

    fn workload(uid: &str, ips: &[&str]) -> Workload {
        Workload {
            uid: WorkloadUid(uid.into()),
            name: uid.into(),
            namespace: "default".into(),
            service_account: "default".into(),
            node: "node-1".into(),
            ips: ips.iter().map(|ip| ip.parse().unwrap()).collect(),
            labels: Default::default(),
            protocol: TunnelProtocol::Hbone,
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
            workload("a", &["10.0.0.1", "fd00::1"]),
            workload("b", &["10.0.0.2"]),
        ])
    }

    #[test]
    fn a_v4_vip_port_resolves_to_an_endpoint_on_its_target_port() {
        let idx = index(resource(&["10.96.0.10"], &[(80, 8080)], &["a", "b"]));
        let s = store();
        let mut seen = Vec::new();
        for pick in 0..2 {
            let r = idx
                .resolve("10.96.0.10:80".parse().unwrap(), &s, || pick)
                .unwrap()
                .unwrap();
            assert_eq!(r.service.hostname(), "web.default.svc.cluster.local");
            assert_eq!(r.addr.port(), 8080);
            assert_eq!(Some(r.addr.ip()), r.endpoint.ips.first().copied());
            seen.push(r.endpoint.name.clone());
        }
        seen.sort();
        assert_eq!(seen, ["a", "b"], "picks spread over every endpoint");
        // The mapped form of a v4 VIP is the same VIP.
        assert!(
            idx.resolve("[::ffff:10.96.0.10]:80".parse().unwrap(), &s, || 0)
                .is_some()
        );
    }

    #[test]
    fn a_v6_vip_resolves_to_v6_endpoint_addresses_only() {
        let idx = index(resource(
            &["10.96.0.10", "fd00:96::10"],
            &[(80, 0)],
            &["a", "b"],
        ));
        let s = store();
        for pick in 0..4 {
            let r = idx
                .resolve("[fd00:96::10]:80".parse().unwrap(), &s, || pick)
                .unwrap()
                .unwrap();
            assert_eq!(r.endpoint.name, "a", "b has no IPv6 address");
            assert_eq!(
                r.addr,
                "[fd00::1]:80".parse().unwrap(),
                "target port = port"
            );
        }
    }

    #[test]
    fn an_undeclared_port_or_no_endpoint_is_unresolved() {
        let s = store();
        let idx = index(resource(&["10.96.0.10"], &[(80, 8080)], &["a"]));
        assert!(matches!(
            idx.resolve("10.96.0.10:81".parse().unwrap(), &s, || 0),
            Some(Err(Unresolved::UnknownPort { port: 81, .. }))
        ));
        let empty = index(resource(&["10.96.0.10"], &[(80, 8080)], &["gone"]));
        assert!(matches!(
            empty.resolve("10.96.0.10:80".parse().unwrap(), &s, || 0),
            Some(Err(Unresolved::NoEndpoints { .. }))
        ));
        // Not a VIP: the destination is itself.
        assert!(
            idx.resolve("10.0.0.1:80".parse().unwrap(), &s, || 0)
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
