//! The `weft.identity.v1.Certificates` service: the mesh CA signs workload certificates, for
//! the identities scheduled on the caller's node only (ARCHITECTURE.md §4), so that one
//! compromised node cannot obtain the identities of the rest of the mesh.
//!
//! The caller's node comes from its TLS client certificate (a node credential, see
//! [`crate::node`]), which the TLS layer has already verified against the mesh root. The
//! edge gateway's credential obtains exactly one identity, the gateway's own
//! (`spiffe://<td>/ns/weft-system/sa/weft-gateway`), so that it can open HBONE tunnels into
//! the mesh as itself; nothing else.

use std::{sync::Arc, time::Duration};

use tonic::{Request, Response, Status};
use tracing::{error, info, warn};
use weft_link::identity::{SpiffeId, TrustDomain};
use weft_proto::identity::v1::{self as pb, certificates_server::Certificates};

use super::store::Store;
use crate::{
    ca::{CertificateAuthority, Csr, rfc3339},
    metrics::SignLabels,
    node::{NodeName, NotANode, node_of_peer},
    principal::{Principal, gateway_spiffe_id},
};

/// The lifetime of a workload certificate whose request names none (`ttl_seconds` 0), as the
/// protocol documents it; `--cert-ttl` may shorten it.
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 3600);

/// The `weft.identity.v1.Certificates` service.
#[derive(Clone)]
pub struct CertificateService {
    ca: Arc<CertificateAuthority>,
    store: Arc<Store>,
    trust_domain: TrustDomain,
    max_ttl: Duration,
}

impl CertificateService {
    /// Signs for identities of `trust_domain`, for at most `max_ttl`.
    pub fn new(
        ca: Arc<CertificateAuthority>,
        store: Arc<Store>,
        trust_domain: TrustDomain,
        max_ttl: Duration,
    ) -> Self {
        CertificateService {
            ca,
            store,
            trust_domain,
            max_ttl,
        }
    }

    /// The requested identity, which must be a workload of this trust domain.
    fn identity(&self, requested: &str) -> Result<SpiffeId, Status> {
        let identity: SpiffeId = requested
            .parse()
            .map_err(|e| Status::invalid_argument(format!("identity: {e}")))?;
        if identity.trust_domain() != &self.trust_domain {
            return Err(Status::invalid_argument(format!(
                "identity: {identity} is outside trust domain {td}; this CA signs only \
                 spiffe://{td}/ns/<namespace>/sa/<service-account>",
                td = self.trust_domain
            )));
        }
        Ok(identity)
    }

    /// The requested lifetime (or the default), capped by `--cert-ttl`.
    fn lifetime(&self, ttl_seconds: u32) -> Duration {
        let requested = match ttl_seconds {
            0 => DEFAULT_WORKLOAD_TTL,
            secs => Duration::from_secs(u64::from(secs)),
        };
        requested.min(self.max_ttl)
    }
}

/// The node a request comes from, or why it cannot be trusted to ask.
pub(super) fn caller_node<T>(
    request: &Request<T>,
    trust_domain: &TrustDomain,
) -> Result<NodeName, NotANode> {
    let certs = request.peer_certs();
    let leaf = certs.as_ref().and_then(|c| c.first()).map(|c| c.as_ref());
    node_of_peer(leaf, trust_domain)
}

/// Why a request was not signed, for the log, the caller and the metrics.
struct Refusal {
    result: &'static str,
    status: Status,
}

impl Refusal {
    fn new(result: &'static str, status: Status) -> Self {
        Refusal { result, status }
    }
}

#[tonic::async_trait]
impl Certificates for CertificateService {
    async fn sign(
        &self,
        request: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        let outcome = self.sign_request(request);
        let result = match &outcome {
            Ok(_) => "issued",
            Err(refusal) => refusal.result,
        };
        self.store
            .metrics()
            .certificate_requests
            .get_or_create(&SignLabels { result })
            .inc();
        outcome.map(Response::new).map_err(|refusal| refusal.status)
    }
}

impl CertificateService {
    fn sign_request(&self, request: Request<pb::SignRequest>) -> Result<pb::SignResponse, Refusal> {
        let peer = request
            .remote_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        let leaf = request
            .peer_certs()
            .and_then(|c| c.first().map(|c| c.as_ref().to_vec()));
        if let Ok(Principal::Gateway) = Principal::of_peer(leaf.as_deref(), &self.trust_domain) {
            return self.sign_for_gateway(request.into_inner(), &peer);
        }
        let node = caller_node(&request, &self.trust_domain).map_err(|e| {
            warn!(%peer, reason = %e, "refused a certificate request without a node credential");
            Refusal::new(
                "unauthenticated",
                Status::unauthenticated(format!(
                    "Sign needs a node credential (or the gateway credential, for the \
                     gateway's own identity): {e}; issue one with `weft-control \
                     node-credential --node <node>` and give it to the agent with \
                     --node-cert/--node-key"
                )),
            )
        })?;
        let request = request.into_inner();
        let identity = self
            .identity(&request.identity)
            .map_err(|status| Refusal::new("invalid", status))?;
        let csr = Csr::from_pem(&request.csr_pem).map_err(|e| {
            Refusal::new("invalid", Status::invalid_argument(format!("csr_pem: {e}")))
        })?;
        if !self.store.identity_on_node(
            node.as_str(),
            identity.namespace(),
            identity.service_account(),
        ) {
            warn!(
                %node,
                %identity,
                %peer,
                "refused a certificate: no workload with this identity is scheduled on the node"
            );
            return Err(Refusal::new(
                "denied",
                Status::permission_denied(format!(
                    "node {node} may not obtain a certificate for {identity}: no workload of \
                     namespace {} with service account {} is scheduled on node {node}",
                    identity.namespace(),
                    identity.service_account()
                )),
            ));
        }
        let lifetime = self.lifetime(request.ttl_seconds);
        let issued = self
            .ca
            .sign_workload(&csr, &identity, lifetime)
            .map_err(|e| {
                error!(%node, %identity, error = %e, "signing a workload certificate failed");
                Refusal::new(
                    "failed",
                    Status::internal(format!(
                        "signing the certificate for {identity} failed: {e}"
                    )),
                )
            })?;
        info!(
            %node,
            %identity,
            not_after = %rfc3339(issued.not_after),
            "issued a workload certificate"
        );
        Ok(pb::SignResponse {
            cert_chain_pem: vec![issued.cert_pem],
            trust_roots_pem: vec![self.ca.root_pem().to_string()],
        })
    }
}

impl CertificateService {
    /// A request with the gateway credential: the gateway's own identity only.
    fn sign_for_gateway(
        &self,
        request: pb::SignRequest,
        peer: &str,
    ) -> Result<pb::SignResponse, Refusal> {
        let identity = self
            .identity(&request.identity)
            .map_err(|status| Refusal::new("invalid", status))?;
        let gateway = gateway_spiffe_id(&self.trust_domain);
        if identity.as_str() != gateway {
            warn!(%identity, %peer, "refused a certificate: the gateway credential asked for another identity");
            return Err(Refusal::new(
                "denied",
                Status::permission_denied(format!(
                    "the gateway credential may obtain a certificate for {gateway} only, not \
                     {identity}"
                )),
            ));
        }
        let csr = Csr::from_pem(&request.csr_pem).map_err(|e| {
            Refusal::new("invalid", Status::invalid_argument(format!("csr_pem: {e}")))
        })?;
        let lifetime = self.lifetime(request.ttl_seconds);
        let issued = self
            .ca
            .sign_workload(&csr, &identity, lifetime)
            .map_err(|e| {
                error!(%identity, error = %e, "signing the gateway certificate failed");
                Refusal::new(
                    "failed",
                    Status::internal(format!(
                        "signing the certificate for {identity} failed: {e}"
                    )),
                )
            })?;
        info!(
            %identity,
            not_after = %rfc3339(issued.not_after),
            "issued the gateway's certificate"
        );
        Ok(pb::SignResponse {
            cert_chain_pem: vec![issued.cert_pem],
            trust_roots_pem: vec![self.ca.root_pem().to_string()],
        })
    }
}
