//! The agent's Prometheus metrics: Istio's TCP metric names and labels, so existing dashboards
//! work, plus Weft's own under `weft_`.

use std::sync::Arc;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        counter::ConstCounter,
        counter::Counter,
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::{Registry, Unit},
};
use weft_link::{
    certs::{CertPhase, CertStatus},
    identity::TrustDomain,
};

use crate::{capture::Capture, identity::Identities, state::Workload};
use weft_mesh::policy::DenialKind;

// The agent's trust domain (`--trust-domain`) when none is configured.
pub use weft_link::identity::DEFAULT_TRUST_DOMAIN;

/// The value of a label whose end of the connection the mesh does not name, as Istio's.
pub const UNKNOWN: &str = "unknown";

/// Labels of Istio's `istio_tcp_*` metrics (the subset that a node proxy can know).
///
/// Every value comes from the mesh's configuration (workloads, identities proved by a mesh
/// certificate) or is a constant, never from what a peer chose: no address or port, which
/// anyone outside the mesh could vary to create a series per connection (a port scan of a
/// pod would otherwise add one per port).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub reporter: &'static str,
    pub source_workload: String,
    pub source_workload_namespace: String,
    pub source_principal: String,
    pub source_app: String,
    pub destination_workload: String,
    pub destination_workload_namespace: String,
    pub destination_principal: String,
    pub destination_app: String,
    /// The service's host name (`<service>.<namespace>.svc.cluster.local`, as Istio's) when
    /// the client dialled a service VIP; otherwise `<workload>.<namespace>` of a known
    /// destination, `unknown` for one outside the mesh.
    pub destination_service: String,
    pub request_protocol: &'static str,
    /// Envoy's response flags: `-` for none, `UF` for an upstream connection failure,
    /// `NR` for no route (no original destination).
    pub response_flags: &'static str,
    pub connection_security_policy: &'static str,
}

impl TcpLabels {
    /// Labels of a connection from `src` to `dst`; either is `unknown` when the workload list
    /// does not name it (a destination outside the mesh, or a pod not yet listed). Principals
    /// are in the mesh's `trust_domain`.
    pub fn outbound(
        trust_domain: &TrustDomain,
        src: Option<&Workload>,
        dst: Option<&Workload>,
    ) -> Self {
        let (source_workload, source_workload_namespace, source_principal, source_app) =
            identity_labels(trust_domain, src);
        let (
            destination_workload,
            destination_workload_namespace,
            destination_principal,
            destination_app,
        ) = identity_labels(trust_domain, dst);
        TcpLabels {
            reporter: "source",
            source_workload,
            source_workload_namespace,
            source_principal,
            source_app,
            destination_workload,
            destination_workload_namespace,
            destination_principal,
            destination_app,
            destination_service: dst.map_or_else(
                || UNKNOWN.to_string(),
                |w| format!("{}.{}", w.name, w.namespace),
            ),
            request_protocol: "tcp",
            response_flags: "-",
            // HBONE sets "mutual_tls".
            connection_security_policy: "none",
        }
    }
}

impl TcpLabels {
    /// Labels of a connection arriving at `dst` (Istio's `reporter="destination"`).
    /// `src_principal` is the identity the peer proved; `None` for plaintext.
    pub fn inbound(
        trust_domain: &TrustDomain,
        src: Option<&Workload>,
        src_principal: Option<&str>,
        dst: Option<&Workload>,
        security: &'static str,
    ) -> Self {
        let mut labels = Self::outbound(trust_domain, src, dst);
        labels.reporter = "destination";
        labels.source_principal = src_principal.unwrap_or(UNKNOWN).to_string();
        labels.connection_security_policy = security;
        labels
    }
}

/// Why the agent refused a connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DenialLabels {
    pub reason: &'static str,
}

impl DenialLabels {
    /// An authorization policy denied it.
    pub const AUTHORIZATION: DenialLabels = DenialLabels {
        reason: "authorization_policy",
    };
    /// Plaintext to a workload whose PeerAuthentication is STRICT.
    pub const STRICT_MTLS: DenialLabels = DenialLabels {
        reason: "peer_authentication_strict",
    };
    /// A connection or CONNECT to one of the agent's own ports (15001, 15006, 15008, admin,
    /// metrics, readiness).
    pub const AGENT_PORT: DenialLabels = DenialLabels {
        reason: "agent_port",
    };
    /// An HBONE connection beyond the limit per peer identity.
    pub const CONNECTIONS_PER_IDENTITY: DenialLabels = DenialLabels {
        reason: "hbone_connections_per_identity",
    };
    /// A service VIP on a port the service does not declare.
    pub const SERVICE_PORT_UNKNOWN: DenialLabels = DenialLabels {
        reason: "service_port_unknown",
    };
    /// A service VIP whose service has no endpoint to send it to.
    pub const SERVICE_NO_ENDPOINTS: DenialLabels = DenialLabels {
        reason: "service_no_endpoints",
    };
}

/// The `weft_connections_denied_total` reason of a refusal at admission, for every path.
impl From<DenialKind> for DenialLabels {
    fn from(kind: DenialKind) -> Self {
        match kind {
            DenialKind::PeerAuthStrict => Self::STRICT_MTLS,
            DenialKind::Authorization | DenialKind::SourceMismatch => Self::AUTHORIZATION,
        }
    }
}

/// The service of a load-balancing event: its host name, which only the mesh's
/// configuration names (bounded by the number of services).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabels {
    pub service: String,
}

/// Workload, namespace, principal and app of one end of a connection.
fn identity_labels(
    trust_domain: &TrustDomain,
    w: Option<&Workload>,
) -> (String, String, String, String) {
    match w {
        Some(w) => (
            w.name.clone(),
            w.namespace.clone(),
            w.principal(trust_domain.as_str()),
            w.app().to_string(),
        ),
        None => {
            let unknown = || UNKNOWN.to_string();
            (unknown(), unknown(), unknown(), unknown())
        }
    }
}

pub struct Metrics {
    pub opened: Family<TcpLabels, Counter>,
    pub closed: Family<TcpLabels, Counter>,
    /// Bytes from the destination back to the client (Istio: "sent during response").
    pub sent_bytes: Family<TcpLabels, Counter>,
    /// Bytes from the client to the destination (Istio: "received during request").
    pub received_bytes: Family<TcpLabels, Counter>,
    /// Captured connections the agent could not route (no original destination found).
    pub no_orig_dst: Counter,
    pub active_connections: Gauge,
    pub enrolled_pods: Gauge,
    /// Enrolled pods whose capture programs are attached now. It falls to 0 when the agent
    /// releases capture to drain: from then on those pods' new connections bypass the mesh.
    pub captured_pods: Gauge,
    /// Connections refused by policy, by reason.
    pub denials: Family<DenialLabels, Counter>,
    /// The open-files limit (RLIMIT_NOFILE) the agent runs with, after raising it at start.
    pub open_files_limit: Gauge,
    /// Service endpoints ejected by passive health checking, by service.
    pub service_ejections: Family<ServiceLabels, Counter>,
    /// Service connections sent to another endpoint after a failed connect, by service.
    pub service_retries: Family<ServiceLabels, Counter>,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            opened: Family::default(),
            closed: Family::default(),
            sent_bytes: Family::default(),
            received_bytes: Family::default(),
            no_orig_dst: Counter::default(),
            active_connections: Gauge::default(),
            enrolled_pods: Gauge::default(),
            captured_pods: Gauge::default(),
            denials: Family::default(),
            open_files_limit: Gauge::default(),
            service_ejections: Family::default(),
            service_retries: Family::default(),
        };
        let istio = registry.sub_registry_with_prefix("istio");
        istio.register(
            "tcp_connections_opened",
            "Total TCP connections opened",
            m.opened.clone(),
        );
        istio.register(
            "tcp_connections_closed",
            "Total TCP connections closed",
            m.closed.clone(),
        );
        istio.register_with_unit(
            "tcp_sent",
            "Total bytes sent in response to TCP connections",
            Unit::Bytes,
            m.sent_bytes.clone(),
        );
        istio.register_with_unit(
            "tcp_received",
            "Total bytes received from TCP connections",
            Unit::Bytes,
            m.received_bytes.clone(),
        );
        let weft = registry.sub_registry_with_prefix("weft");
        weft.register(
            "outbound_no_original_destination",
            "Captured connections refused because the kernel recorded no original destination",
            m.no_orig_dst.clone(),
        );
        weft.register(
            "active_connections",
            "Connections the agent is proxying now",
            m.active_connections.clone(),
        );
        weft.register(
            "enrolled_pods",
            "Pods enrolled on this node, captured or not",
            m.enrolled_pods.clone(),
        );
        weft.register(
            "captured_pods",
            "Enrolled pods whose traffic the kernel programs steer to the agent now; \
             below weft_enrolled_pods, the others' connections bypass the mesh",
            m.captured_pods.clone(),
        );
        weft.register(
            "open_files_limit",
            "The open-files limit (RLIMIT_NOFILE soft limit) the agent runs with; every \
             connection it proxies takes two",
            m.open_files_limit.clone(),
        );
        weft.register(
            "connections_denied",
            "Connections refused by authorization policy, STRICT peer authentication, the \
             HBONE connection limit per identity, because they were for one of the agent's \
             own ports, or for a service VIP with no such port or no endpoints",
            m.denials.clone(),
        );
        weft.register(
            "service_endpoint_ejections",
            "Service endpoints ejected for a back-off after consecutive failed connects",
            m.service_ejections.clone(),
        );
        weft.register(
            "service_connect_retries",
            "Connections to a service sent to another endpoint after a failed connect",
            m.service_retries.clone(),
        );
        m
    }
}

/// Reads the kernel's per-CPU verdict counters at scrape time.
#[derive(Clone)]
pub struct VerdictCollector(pub Arc<Capture>);

impl std::fmt::Debug for VerdictCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("VerdictCollector")
    }
}

/// The workload certificates this node holds, read from the certificate manager at scrape
/// time: how many are in each phase, and when each expires, for alerts such as "a
/// certificate expires within the hour" or "a certificate is expired".
pub struct CertificateCollector(pub Arc<Identities>);

impl std::fmt::Debug for CertificateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CertificateCollector")
    }
}

impl Collector for CertificateCollector {
    fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        encode_certificates(&self.0.statuses(), encoder)
    }
}

fn encode_certificates(
    statuses: &[CertStatus],
    mut encoder: DescriptorEncoder,
) -> Result<(), std::fmt::Error> {
    let mut family = encoder.encode_descriptor(
        "weft_certificates",
        "Workload certificates this node holds, by phase",
        None,
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for phase in CertPhase::NAMES {
        let count = statuses
            .iter()
            .filter(|s| s.phase.as_str() == phase)
            .count();
        let labels = [("phase", phase)];
        ConstGauge::new(i64::try_from(count).unwrap_or(i64::MAX))
            .encode(family.encode_family(&labels)?)?;
    }
    let mut family = encoder.encode_descriptor(
        "weft_certificate_expiration_timestamp",
        "When each workload certificate expires, in seconds since the Unix epoch",
        Some(&Unit::Seconds),
        prometheus_client::metrics::MetricType::Gauge,
    )?;
    for status in statuses {
        let Some(not_after) = status.not_after else {
            continue;
        };
        let secs = not_after
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        let identity = status.identity.to_string();
        let labels = [("identity", identity.as_str())];
        ConstGauge::new(secs).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for VerdictCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let mut family = encoder.encode_descriptor(
            "weft_ebpf_verdicts",
            "Decisions of the kernel capture programs, by verdict",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (verdict, count) in self.0.verdict_counts() {
            let labels = [("verdict", verdict.name())];
            ConstCounter::new(count).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, UNIX_EPOCH};

    use prometheus_client::encoding::text::encode;
    use weft_link::identity::SpiffeId;

    use super::*;

    #[derive(Debug)]
    struct Fixed(Vec<CertStatus>);

    impl Collector for Fixed {
        fn encode(&self, encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
            encode_certificates(&self.0, encoder)
        }
    }

    fn status(identity: &str, not_after: Option<u64>, phase: CertPhase) -> CertStatus {
        CertStatus {
            identity: identity.parse::<SpiffeId>().unwrap(),
            not_before: None,
            not_after: not_after.map(|s| UNIX_EPOCH + Duration::from_secs(s)),
            next_renewal: None,
            phase,
        }
    }

    #[test]
    fn principals_are_in_the_configured_trust_domain() {
        let td: TrustDomain = "example.org".parse().unwrap();
        let src = weft_mesh::testing::workload("a", "shop", "client", "a", "10.0.0.1");
        let dst = weft_mesh::testing::workload("b", "bank", "server", "b", "10.0.0.2");
        let out = TcpLabels::outbound(&td, Some(&src), Some(&dst));
        assert_eq!(
            out.source_principal,
            "spiffe://example.org/ns/shop/sa/client"
        );
        assert_eq!(
            out.destination_principal,
            "spiffe://example.org/ns/bank/sa/server"
        );
        let inbound = TcpLabels::inbound(&td, Some(&src), None, Some(&dst), "none");
        assert_eq!(
            inbound.destination_principal,
            "spiffe://example.org/ns/bank/sa/server"
        );
    }

    #[test]
    fn certificates_are_counted_by_phase_with_each_expiry() {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(vec![
            status(
                "spiffe://cluster.local/ns/a/sa/x",
                Some(1_800_000_000),
                CertPhase::Valid,
            ),
            status(
                "spiffe://cluster.local/ns/b/sa/y",
                Some(1_700_000_000),
                CertPhase::Expired { error: None },
            ),
            status(
                "spiffe://cluster.local/ns/c/sa/z",
                None,
                CertPhase::Pending { error: None },
            ),
        ])));
        let mut text = String::new();
        encode(&mut text, &registry).unwrap();
        for line in [
            "weft_certificates{phase=\"valid\"} 1",
            "weft_certificates{phase=\"expired\"} 1",
            "weft_certificates{phase=\"pending\"} 1",
            "weft_certificates{phase=\"renewing\"} 0",
            "weft_certificates{phase=\"retrying\"} 0",
            "weft_certificate_expiration_timestamp_seconds{identity=\"spiffe://cluster.local/ns/a/sa/x\"} 1800000000",
            "weft_certificate_expiration_timestamp_seconds{identity=\"spiffe://cluster.local/ns/b/sa/y\"} 1700000000",
        ] {
            assert!(text.contains(line), "missing {line:?} in:\n{text}");
        }
        assert!(
            !text.contains("ns/c/sa/z"),
            "a pending identity has no expiry yet:\n{text}"
        );
    }
}
