//! A complete, validated configuration as wire resources, and the per-type differences
//! between two of them.

use std::{collections::BTreeMap, sync::Arc};

use weft_proto::discovery::v1::{self as pb, ResourceType, resource::Kind};

/// Every resource of a configuration, by type and `Resource.name`.
///
/// Resources are shared (`Arc`) between versions and subscribers: a reload that changes one
/// service allocates one new resource, not a new copy of everything.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ResourceSet {
    types: BTreeMap<ResourceType, BTreeMap<String, Arc<pb::Resource>>>,
}

/// What changed in one resource type between two configurations.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    /// Resources that are new or differ, sorted by name.
    pub upserted: Vec<Arc<pb::Resource>>,
    /// Names of resources that disappeared, sorted.
    pub removed: Vec<String>,
}

/// Every resource type a client can ask for, in a fixed order.
pub const ALL_TYPES: [ResourceType; 8] = [
    ResourceType::Workload,
    ResourceType::Service,
    ResourceType::Policy,
    ResourceType::Route,
    ResourceType::Listener,
    ResourceType::ApiRoute,
    ResourceType::Consumer,
    ResourceType::Plan,
];

/// The type of a resource, from the kind it carries.
pub fn resource_type(resource: &pb::Resource) -> ResourceType {
    match &resource.kind {
        None => ResourceType::Unspecified,
        Some(Kind::Workload(_)) => ResourceType::Workload,
        Some(Kind::Service(_)) => ResourceType::Service,
        Some(Kind::Policy(_)) => ResourceType::Policy,
        Some(Kind::Route(_)) => ResourceType::Route,
        Some(Kind::Listener(_)) => ResourceType::Listener,
        Some(Kind::ApiRoute(_)) => ResourceType::ApiRoute,
        Some(Kind::Consumer(_)) => ResourceType::Consumer,
        Some(Kind::Plan(_)) => ResourceType::Plan,
    }
}

impl ResourceSet {
    /// Adds or replaces a resource; returns the one it replaced.
    pub fn insert(&mut self, resource: pb::Resource) -> Option<Arc<pb::Resource>> {
        let ty = resource_type(&resource);
        self.types
            .entry(ty)
            .or_default()
            .insert(resource.name.clone(), Arc::new(resource))
    }

    /// The resources of one type, sorted by name.
    pub fn of_type(&self, ty: ResourceType) -> impl Iterator<Item = &Arc<pb::Resource>> {
        self.types.get(&ty).into_iter().flat_map(|m| m.values())
    }

    pub fn get(&self, ty: ResourceType, name: &str) -> Option<&Arc<pb::Resource>> {
        self.types.get(&ty).and_then(|m| m.get(name))
    }

    /// How many resources of `ty` there are.
    pub fn count(&self, ty: ResourceType) -> usize {
        self.types.get(&ty).map_or(0, BTreeMap::len)
    }

    /// How many resources there are in all.
    pub fn len(&self) -> usize {
        self.types.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The changes that turn `self` into `new`, for the types that changed only.
    pub fn diff(&self, new: &ResourceSet) -> BTreeMap<ResourceType, Delta> {
        let empty = BTreeMap::new();
        let mut out = BTreeMap::new();
        for ty in ALL_TYPES {
            let old_map = self.types.get(&ty).unwrap_or(&empty);
            let new_map = new.types.get(&ty).unwrap_or(&empty);
            let mut delta = Delta::default();
            for (name, r) in new_map {
                match old_map.get(name) {
                    Some(old) if Arc::ptr_eq(old, r) || old == r => {}
                    _ => delta.upserted.push(r.clone()),
                }
            }
            delta.removed = old_map
                .keys()
                .filter(|name| !new_map.contains_key(*name))
                .cloned()
                .collect();
            if !delta.upserted.is_empty() || !delta.removed.is_empty() {
                out.insert(ty, delta);
            }
        }
        out
    }
}
