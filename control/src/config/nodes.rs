//! Nodes (`v1 Node`): where workloads run. Only a node's name and its topology labels
//! matter; a Node becomes no resource of its own, it gives the workloads on it their
//! locality, for services that prefer close endpoints.

use std::collections::{BTreeMap, btree_map::Entry};

use serde::Deserialize;
use weft_proto::discovery::v1::{self as pb, ResourceType, resource::Kind as PbKind};

use super::{
    Origin, ResourceSet,
    document::{Meta, ObjectMeta},
    validate::Checker,
};

/// The node labels a workload's locality comes from.
pub const REGION_LABEL: &str = "topology.kubernetes.io/region";
/// See [`REGION_LABEL`].
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";

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
