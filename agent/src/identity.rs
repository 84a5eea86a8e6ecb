//! The identities of this node's workloads and their certificates.
//!
//! The agent asks the CA for a certificate for every identity that a workload scheduled on
//! this node runs as, as soon as the workload list names it (the CA refuses any other), and
//! lets go of identities whose last workload left. The certificate manager renews each at
//! half-life; TLS configs hold a rotating resolver, so new connections present the new
//! certificate at once and established ones keep theirs.

use std::{collections::HashMap, sync::Arc, time::Duration};

use parking_lot::Mutex;
use tracing::info;
use weft_link::{
    certs::{CertManager, CertStatus, IdentityCerts},
    identity::SpiffeId,
    tls::{CertResolver, ClientTls, TrustBundle},
};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("no certificate for {identity} within {waited:?}: {reason}")]
    NotIssued {
        identity: SpiffeId,
        waited: Duration,
        reason: String,
    },
}

struct Local {
    certs: IdentityCerts,
    client: Option<ClientTls>,
}

/// Certificates of local identities, shared by the data path and the admin API.
pub struct Identities {
    manager: CertManager,
    /// The mesh root every peer certificate must chain to.
    bundle: Arc<TrustBundle>,
    local: Mutex<HashMap<SpiffeId, Local>>,
}

impl Identities {
    pub fn new(manager: CertManager, bundle: Arc<TrustBundle>) -> Self {
        Identities {
            manager,
            bundle,
            local: Mutex::new(HashMap::new()),
        }
    }

    pub fn bundle(&self) -> Arc<TrustBundle> {
        self.bundle.clone()
    }

    /// Keeps certificates for exactly `wanted`: starts the new ones, drops the rest.
    pub fn sync(&self, wanted: impl IntoIterator<Item = SpiffeId>) {
        let wanted: std::collections::HashSet<SpiffeId> = wanted.into_iter().collect();
        let mut local = self.local.lock();
        local.retain(|id, _| {
            let keep = wanted.contains(id);
            if !keep {
                info!(identity = %id, "no workload of this node runs as this identity any more; releasing its certificate");
            }
            keep
        });
        for id in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = local.entry(id) {
                info!(identity = %slot.key(), "requesting a certificate");
                let certs = self.manager.watch(slot.key().clone());
                slot.insert(Local {
                    certs,
                    client: None,
                });
            }
        }
    }

    /// The rotating certificate of a local identity, once one was issued.
    pub fn resolver(&self, id: &SpiffeId) -> Option<Arc<CertResolver>> {
        self.local.lock().get(id)?.certs.resolver()
    }

    /// A client TLS config for `id`, waiting up to `wait` for its first certificate.
    pub async fn client_tls(
        &self,
        id: &SpiffeId,
        wait: Duration,
    ) -> Result<ClientTls, IdentityError> {
        let certs = {
            let mut local = self.local.lock();
            let entry = local.entry(id.clone()).or_insert_with(|| Local {
                certs: self.manager.watch(id.clone()),
                client: None,
            });
            if let Some(client) = &entry.client {
                return Ok(client.clone());
            }
            entry.certs.clone()
        };
        let not_issued = |reason: String| IdentityError::NotIssued {
            identity: id.clone(),
            waited: wait,
            reason,
        };
        let resolver = match tokio::time::timeout(wait, certs.ready()).await {
            Ok(Ok((resolver, _bundle))) => resolver,
            Ok(Err(err)) => return Err(not_issued(err.to_string())),
            Err(_) => {
                let reason = certs
                    .state()
                    .last_error
                    .unwrap_or_else(|| "the CA has not answered".to_string());
                return Err(not_issued(reason));
            }
        };
        let client = ClientTls::new(resolver, self.bundle.clone());
        if let Some(entry) = self.local.lock().get_mut(id) {
            entry.client = Some(client.clone());
        }
        Ok(client)
    }

    /// Local identities with no certificate to present yet, each with the CA's last answer:
    /// until they have one, inbound HBONE handshakes to their pods fail, so the node is not
    /// ready. Sorted, for a stable readiness text.
    pub fn without_certificate(&self) -> Vec<(SpiffeId, String)> {
        let mut pending: Vec<(SpiffeId, String)> = self
            .local
            .lock()
            .iter()
            .filter(|(_, local)| local.certs.resolver().is_none())
            .map(|(id, local)| {
                let reason = local
                    .certs
                    .state()
                    .last_error
                    .unwrap_or_else(|| "the CA has not answered yet".to_string());
                (id.clone(), reason)
            })
            .collect();
        pending.sort();
        pending
    }

    /// Every certificate's state, for the admin API.
    pub fn statuses(&self) -> Vec<CertStatus> {
        self.manager.statuses()
    }
}
