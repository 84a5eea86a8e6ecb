//! A ready-made conversion seam: the domain view of one resource type, kept up to date from
//! [`Update`]s with the all-or-nothing rule the protocol needs.

use std::{collections::BTreeMap, fmt::Display, sync::Arc};

use parking_lot::RwLock;
use weft_proto::discovery::v1 as pb;

use super::{Rejection, Update};

/// An immutable view of every object of a [`TypedStore`], by `Resource.name`.
pub type Objects<T> = Arc<BTreeMap<String, Arc<T>>>;

/// Domain objects of one type by `Resource.name`, converted with `T: TryFrom<Resource>`.
///
/// [`TypedStore::apply`] converts every resource of an update first, without holding the
/// lock; only if all convert does it take the write lock once and apply the whole update.
/// A resource that fails to convert rejects the update (naming that resource), and readers
/// keep seeing the previous state. Clones share the same map.
#[derive(Debug)]
pub struct TypedStore<T> {
    map: Arc<RwLock<Objects<T>>>,
}

impl<T> Clone for TypedStore<T> {
    fn clone(&self) -> Self {
        TypedStore {
            map: self.map.clone(),
        }
    }
}

impl<T> Default for TypedStore<T> {
    fn default() -> Self {
        TypedStore {
            map: Arc::new(RwLock::new(Arc::new(BTreeMap::new()))),
        }
    }
}

impl<T> TypedStore<T>
where
    T: TryFrom<pb::Resource>,
    T::Error: Display,
{
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one update: a snapshot replaces everything, a delta upserts and removes.
    pub fn apply(&self, update: Update) -> Result<(), Rejection> {
        let mut converted = Vec::with_capacity(update.resources.len());
        for resource in update.resources {
            let name = resource.name.clone();
            match T::try_from(resource) {
                Ok(value) => converted.push((name, Arc::new(value))),
                Err(e) => return Err(Rejection::new(name, e.to_string())),
            }
        }
        let mut guard = self.map.write();
        // Readers hold the previous map; copy-on-write keeps their view consistent.
        let mut next = if update.snapshot {
            BTreeMap::new()
        } else {
            (**guard).clone()
        };
        for name in &update.removed {
            next.remove(name);
        }
        next.extend(converted);
        *guard = Arc::new(next);
        Ok(())
    }

    /// One object by name.
    pub fn get(&self, name: &str) -> Option<Arc<T>> {
        self.map.read().get(name).cloned()
    }

    /// A consistent view of every object, cheap to take (no copy).
    pub fn snapshot(&self) -> Objects<T> {
        self.map.read().clone()
    }

    pub fn len(&self) -> usize {
        self.map.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use weft_proto::discovery::v1::{ResourceType, resource::Kind};

    use super::*;

    /// A toy domain type: a workload with exactly one IP.
    #[derive(Debug, PartialEq)]
    struct OneIp(std::net::IpAddr);

    impl TryFrom<pb::Resource> for OneIp {
        type Error = String;
        fn try_from(r: pb::Resource) -> Result<Self, String> {
            match r.kind {
                Some(Kind::Workload(w)) if w.ips.len() == 1 => w.ips[0]
                    .parse()
                    .map(OneIp)
                    .map_err(|_| format!("bad IP {}", w.ips[0])),
                _ => Err("not a workload with one IP".into()),
            }
        }
    }

    fn workload(name: &str, ip: &str) -> pb::Resource {
        pb::Resource {
            name: name.into(),
            kind: Some(Kind::Workload(pb::Workload {
                ips: vec![ip.into()],
                ..Default::default()
            })),
        }
    }

    fn update(snapshot: bool, resources: Vec<pb::Resource>, removed: &[&str]) -> Update {
        Update {
            resource_type: ResourceType::Workload,
            version: 1,
            snapshot,
            resources,
            removed: removed.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn applies_snapshots_and_deltas_all_or_nothing() {
        let store = TypedStore::<OneIp>::new();
        store
            .apply(update(
                true,
                vec![workload("a", "10.0.0.1"), workload("b", "10.0.0.2")],
                &[],
            ))
            .unwrap();
        let before = store.snapshot();
        store
            .apply(update(false, vec![workload("c", "10.0.0.3")], &["a"]))
            .unwrap();
        assert_eq!(store.len(), 2);
        assert!(store.get("a").is_none());
        assert_eq!(before.len(), 2, "an earlier view is unaffected");

        let err = store
            .apply(update(
                false,
                vec![workload("d", "10.0.0.4"), workload("e", "bogus")],
                &["b"],
            ))
            .unwrap_err();
        assert_eq!(err, Rejection::new("e", "bad IP bogus"));
        assert!(
            store.get("d").is_none() && store.get("b").is_some(),
            "nothing applied"
        );

        store
            .apply(update(true, vec![workload("z", "10.0.0.9")], &[]))
            .unwrap();
        assert_eq!(store.len(), 1);
    }
}
