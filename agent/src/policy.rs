//! Applies policy updates from the control plane to the index the data path reads. The
//! policy model and its evaluation live in `weft_mesh::policy`.

use std::sync::Arc;

use arc_swap::ArcSwap;
use tracing::{info, warn};
use weft_link::control::{Rejection, TypedStore, Update};
pub use weft_mesh::policy::*;

/// Applies policy updates: converts all, then swaps the index the data path reads.
pub struct PolicyHandler {
    store: TypedStore<Policy>,
    index: Arc<ArcSwap<PolicyIndex>>,
    /// Istio's root namespace (`--root-namespace`).
    root_namespace: String,
}

impl PolicyHandler {
    pub fn new(index: Arc<ArcSwap<PolicyIndex>>, root_namespace: String) -> Self {
        PolicyHandler {
            store: TypedStore::new(),
            index,
            root_namespace,
        }
    }

    pub fn apply(&mut self, update: Update) -> Result<(), Rejection> {
        let version = update.version;
        if let Err(rejection) = self.store.apply(update) {
            warn!(version, resource = %rejection.resource_name, reason = %rejection.reason, "rejecting policy update");
            return Err(rejection);
        }
        let index = PolicyIndex::new(&self.store.snapshot(), &self.root_namespace);
        info!(version, policies = index.len(), "policies updated");
        self.index.store(Arc::new(index));
        Ok(())
    }
}
