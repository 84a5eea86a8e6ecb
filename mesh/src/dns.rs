//! Names of services, as Kubernetes' DNS gives them: `<name>.<namespace>.svc.cluster.local`
//! has the service's VIPs, or, for a headless service, its ready endpoints' own addresses.
//! Names are matched without regard to ASCII case, as DNS does.
//!
//! Only fully qualified names are looked up: a pod's resolver walks its search list
//! (`<ns>.svc.cluster.local svc.cluster.local cluster.local`) itself.

use std::{collections::HashMap, net::IpAddr, sync::Arc};

use crate::{service::SERVICE_DOMAIN, workload::WorkloadStore};

use crate::service::Service;

/// What a name is to the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup<'a> {
    /// Not under the cluster domain: someone else's name.
    Outside,
    /// A service.
    Service(&'a Arc<Service>),
    /// Exists but carries no address: the domain itself, `svc.<domain>`, or the
    /// `<namespace>.svc.<domain>` of a namespace with services.
    Empty,
    /// Under the cluster domain, but no such name.
    NoSuchName,
}

/// Every service by name and namespace (lowercase).
#[derive(Debug, Default)]
pub struct ServiceNames {
    by_name: HashMap<(String, String), Arc<Service>>,
    namespaces: HashMap<String, usize>,
}

impl ServiceNames {
    pub fn from_arcs(services: impl IntoIterator<Item = Arc<Service>>) -> Self {
        let mut names = ServiceNames::default();
        for s in services {
            let key = (
                s.name.to_ascii_lowercase(),
                s.namespace.to_ascii_lowercase(),
            );
            *names.namespaces.entry(key.1.clone()).or_default() += 1;
            names.by_name.insert(key, s);
        }
        names
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    /// What `name` (dotted, with or without the final dot) is.
    pub fn lookup(&self, name: &str) -> Lookup<'_> {
        let name = name.strip_suffix('.').unwrap_or(name).to_ascii_lowercase();
        let Some(inside) = strip_label_suffix(&name, SERVICE_DOMAIN) else {
            return Lookup::Outside;
        };
        let Some(rest) = inside else {
            return Lookup::Empty;
        };
        let Some(svc) = strip_label_suffix(rest, "svc") else {
            return Lookup::NoSuchName;
        };
        let Some(svc) = svc else {
            return Lookup::Empty;
        };
        match svc.split_once('.') {
            None if self.namespaces.contains_key(svc) => Lookup::Empty,
            None => Lookup::NoSuchName,
            Some((service, namespace)) => self
                .by_name
                .get(&(service.to_owned(), namespace.to_owned()))
                .map_or(Lookup::NoSuchName, Lookup::Service),
        }
    }
}

/// `name` without the trailing labels `suffix`: `None` when it does not end with them,
/// `Some(None)` when it is exactly `suffix`, `Some(Some(rest))` otherwise.
fn strip_label_suffix<'n>(name: &'n str, suffix: &str) -> Option<Option<&'n str>> {
    if name == suffix {
        return Some(None);
    }
    let rest = name.strip_suffix(suffix)?.strip_suffix('.')?;
    (!rest.is_empty()).then_some(Some(rest))
}

/// The addresses `service`'s name has for one family (`v4`): its VIPs, or for a headless
/// service the addresses of its ready endpoints known to `workloads`, in a stable order.
pub fn addresses(service: &Service, v4: bool, workloads: &WorkloadStore) -> Vec<IpAddr> {
    let mut out: Vec<IpAddr> = if service.vips.is_empty() {
        service
            .endpoints
            .iter()
            .filter_map(|uid| workloads.by_uid(uid))
            .filter(|w| w.ready)
            .flat_map(|w| w.ips.iter().copied())
            .collect()
    } else {
        service.vips.clone()
    };
    out.retain(|ip| ip.to_canonical().is_ipv4() == v4);
    out.iter_mut().for_each(|ip| *ip = ip.to_canonical());
    out.sort_unstable();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        service::TrafficDistribution,
        workload::{Workload, WorkloadUid},
    };

    fn service(name: &str, ns: &str, vips: &[&str], endpoints: &[&str]) -> Arc<Service> {
        Arc::new(Service {
            name: name.into(),
            namespace: ns.into(),
            vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
            ports: Vec::new(),
            endpoints: endpoints.iter().map(|e| WorkloadUid((*e).into())).collect(),
            traffic_distribution: TrafficDistribution::Any,
        })
    }

    fn workload(uid: &str, ips: &[&str], ready: bool) -> Workload {
        Workload {
            uid: WorkloadUid(uid.into()),
            name: uid.into(),
            namespace: "default".into(),
            ips: ips.iter().map(|v| v.parse().unwrap()).collect(),
            ready,
            ..Workload::default()
        }
    }

    #[test]
    fn service_names_resolve_in_any_case_and_others_do_not() {
        let web = service("web", "default", &["10.96.0.10", "fd00:96::10"], &[]);
        let names = ServiceNames::from_arcs([web.clone()]);
        for name in [
            "web.default.svc.cluster.local",
            "web.default.svc.cluster.local.",
            "WEB.Default.SVC.cluster.LOCAL",
        ] {
            assert_eq!(names.lookup(name), Lookup::Service(&web), "{name}");
        }
        for name in [
            "api.default.svc.cluster.local",
            "web.other.svc.cluster.local",
            "web.default.svc.cluster.local.default.svc.cluster.local",
            "x.web.default.svc.cluster.local",
            "web.cluster.local",
            "other.svc.cluster.local",
        ] {
            assert_eq!(names.lookup(name), Lookup::NoSuchName, "{name}");
        }
        for name in [
            "cluster.local",
            "svc.cluster.local.",
            "default.svc.cluster.local",
        ] {
            assert_eq!(names.lookup(name), Lookup::Empty, "{name}");
        }
        for name in [
            "example.com",
            "web",
            "notcluster.local",
            "cluster.local.example.com",
            ".",
            "",
        ] {
            assert_eq!(names.lookup(name), Lookup::Outside, "{name:?}");
        }
    }

    #[test]
    fn vips_by_family_and_headless_services_by_ready_endpoint() {
        let store = WorkloadStore::new(vec![
            workload("a", &["10.78.1.11", "fd78:1::11"], true),
            workload("b", &["10.78.1.12"], true),
            workload("c", &["10.78.1.13", "fd78:1::13"], false),
        ]);
        let web = service("web", "default", &["10.96.0.10", "fd00:96::10"], &["a"]);
        assert_eq!(
            addresses(&web, true, &store),
            vec!["10.96.0.10".parse::<IpAddr>().unwrap()]
        );
        assert_eq!(
            addresses(&web, false, &store),
            vec!["fd00:96::10".parse::<IpAddr>().unwrap()]
        );
        let headless = service("db", "default", &[], &["b", "a", "c", "gone"]);
        let v4: Vec<String> = addresses(&headless, true, &store)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(v4, ["10.78.1.11", "10.78.1.12"]);
        let v6: Vec<String> = addresses(&headless, false, &store)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(v6, ["fd78:1::11"]);
        let v4_only = service("v4", "default", &["10.96.0.12"], &[]);
        assert!(addresses(&v4_only, false, &store).is_empty());
    }
}
