//! The agent's side of the discovery protocol: workloads and services arrive from the control
//! plane as protobuf resources, are converted (by `weft_mesh::workload` and
//! `weft_mesh::service`) off-lock, and the resulting [`WorkloadStore`] or [`ServiceIndex`]
//! replaces the old one in a single swap. A resource that does
//! not convert rejects the whole version with a NACK naming it; the agent keeps serving its
//! last good state, as it does while the control plane is unreachable.

use std::{collections::BTreeMap, sync::Arc};

use arc_swap::ArcSwap;
use tracing::{info, warn};
use weft_link::control::{Rejection, Update};
use weft_mesh::{
    dns::ServiceNames,
    service::{Service, ServiceIndex},
    workload::ConvertError,
};
use weft_proto::discovery::v1 as pb;

use crate::state::{Workload, WorkloadStore};

/// Applies workload updates to the store the data path reads.
pub struct WorkloadHandler {
    /// Converted workloads by resource name; the data path never sees this map.
    by_name: BTreeMap<String, Arc<Workload>>,
    store: Arc<ArcSwap<WorkloadStore>>,
}

impl WorkloadHandler {
    pub fn new(store: Arc<ArcSwap<WorkloadStore>>) -> Self {
        WorkloadHandler {
            by_name: BTreeMap::new(),
            store,
        }
    }

    /// Converts every resource first; applies the version only if all convert.
    pub fn apply(&mut self, update: Update) -> Result<(), Rejection> {
        let (version, snapshot) = (update.version, update.snapshot);
        let next = converge(
            &self.by_name,
            update,
            pb::ResourceType::Workload,
            "workload",
        )?;
        self.store
            .store(Arc::new(WorkloadStore::from_arcs(next.values().cloned())));
        info!(
            version,
            snapshot,
            workloads = next.len(),
            "workloads updated"
        );
        self.by_name = next;
        Ok(())
    }
}

/// Applies service updates to the VIP index the outbound path reads.
pub struct ServiceHandler {
    /// Converted services by resource name; the data path never sees this map.
    by_name: BTreeMap<String, Arc<Service>>,
    index: Arc<ArcSwap<ServiceIndex>>,
    /// Services by name, for the pods' DNS proxy.
    names: Option<Arc<ArcSwap<ServiceNames>>>,
}

impl ServiceHandler {
    pub fn new(index: Arc<ArcSwap<ServiceIndex>>) -> Self {
        ServiceHandler {
            by_name: BTreeMap::new(),
            index,
            names: None,
        }
    }

    /// The same, also keeping `names` (the DNS proxy's table) in step.
    /// The index it keeps, for readers that follow it.
    pub fn index(&self) -> Arc<ArcSwap<ServiceIndex>> {
        self.index.clone()
    }

    pub fn with_names(mut self, names: Arc<ArcSwap<ServiceNames>>) -> Self {
        self.names = Some(names);
        self
    }

    /// Converts every resource first; applies the version only if all convert.
    pub fn apply(&mut self, update: Update) -> Result<(), Rejection> {
        let (version, snapshot) = (update.version, update.snapshot);
        let next = converge(&self.by_name, update, pb::ResourceType::Service, "service")?;
        self.index
            .store(Arc::new(ServiceIndex::from_arcs(next.values().cloned())));
        if let Some(names) = &self.names {
            names.store(Arc::new(ServiceNames::from_arcs(next.values().cloned())));
        }
        info!(version, snapshot, services = next.len(), "services updated");
        self.by_name = next;
        Ok(())
    }
}

/// The resources by name after `update`, every one converted; the first that does not
/// convert rejects the whole version, and `current` stays as it was.
fn converge<T>(
    current: &BTreeMap<String, Arc<T>>,
    update: Update,
    expected: pb::ResourceType,
    what: &'static str,
) -> Result<BTreeMap<String, Arc<T>>, Rejection>
where
    T: TryFrom<pb::Resource, Error = ConvertError>,
{
    if update.resource_type != expected {
        // Each handler gets its own type only; anything else is the server's mistake.
        return Err(Rejection::new(
            "",
            format!("unexpected resource type {:?}", update.resource_type),
        ));
    }
    let mut converted = Vec::with_capacity(update.resources.len());
    for resource in update.resources {
        let name = resource.name.clone();
        match T::try_from(resource) {
            Ok(v) => converted.push((name, Arc::new(v))),
            Err(err) => {
                warn!(version = update.version, resource = %name, %err, "rejecting {what} update");
                return Err(Rejection::new(name, err.to_string()));
            }
        }
    }
    let mut next = if update.snapshot {
        BTreeMap::new()
    } else {
        current.clone()
    };
    for name in &update.removed {
        next.remove(name);
    }
    next.extend(converted);
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resource(uid: &str, ip: &str, app: &str) -> pb::Resource {
        pb::Resource {
            name: uid.into(),
            kind: Some(pb::resource::Kind::Workload(pb::Workload {
                uid: uid.into(),
                name: uid.into(),
                namespace: "default".into(),
                service_account: "default".into(),
                node: "node-1".into(),
                ips: vec![ip.into()],
                labels: [("app".to_string(), app.to_string())].into(),
                ..Default::default()
            })),
        }
    }

    fn update(
        version: u64,
        snapshot: bool,
        resources: Vec<pb::Resource>,
        removed: &[&str],
    ) -> Update {
        Update {
            resource_type: pb::ResourceType::Workload,
            version,
            snapshot,
            resources,
            removed: removed.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn snapshot_then_deltas_update_the_store() {
        let store = Arc::new(ArcSwap::from_pointee(WorkloadStore::default()));
        let mut h = WorkloadHandler::new(store.clone());
        h.apply(update(
            1,
            true,
            vec![
                resource("a", "10.0.0.1", "a"),
                resource("b", "10.0.0.2", "b"),
            ],
            &[],
        ))
        .unwrap();
        assert_eq!(
            store
                .load()
                .by_ip("10.0.0.2".parse().unwrap())
                .unwrap()
                .name,
            "b"
        );
        h.apply(update(
            2,
            false,
            vec![resource("a", "10.0.0.1", "a-v2")],
            &["b"],
        ))
        .unwrap();
        let s = store.load();
        assert_eq!(s.by_ip("10.0.0.1".parse().unwrap()).unwrap().app(), "a-v2");
        assert!(s.by_ip("10.0.0.2".parse().unwrap()).is_none());
        // A new snapshot replaces everything.
        h.apply(update(3, true, vec![resource("c", "10.0.0.3", "c")], &[]))
            .unwrap();
        assert!(store.load().by_ip("10.0.0.1".parse().unwrap()).is_none());
    }

    #[test]
    fn a_bad_resource_rejects_the_version_and_keeps_the_last_good_state() {
        let store = Arc::new(ArcSwap::from_pointee(WorkloadStore::default()));
        let mut h = WorkloadHandler::new(store.clone());
        h.apply(update(1, true, vec![resource("a", "10.0.0.1", "a")], &[]))
            .unwrap();
        let rejection = h
            .apply(update(
                2,
                false,
                vec![
                    resource("b", "10.0.0.2", "b"),
                    resource("bad", "10.0.0.999", "x"),
                ],
                &[],
            ))
            .unwrap_err();
        assert_eq!(rejection.resource_name, "bad");
        assert!(rejection.reason.contains("ips"), "{}", rejection.reason);
        let s = store.load();
        assert!(
            s.by_ip("10.0.0.2".parse().unwrap()).is_none(),
            "nothing of version 2 applied"
        );
        assert!(s.by_ip("10.0.0.1".parse().unwrap()).is_some());
    }
}
