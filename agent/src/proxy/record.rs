//! The record of one connection, as ztunnel's connection result: every path (outbound,
//! same-node delivery, HBONE inbound, plaintext inbound) counts and logs a connection through
//! it, so the `istio_tcp_*` series and the access log mean the same on each.

use std::{io, net::SocketAddr, sync::Arc, time::Instant};

use prometheus_client::metrics::counter::Counter;
use tracing::{field, info};

use super::copy::Transferred;
use crate::{
    metrics::{Metrics, TcpLabels},
    state::WorkloadUid,
};

/// A connection's labels and counters: opened and active from [`open`](Self::open) until the
/// record is dropped, bytes as they move, and closed once, with Envoy's response flags.
pub struct ConnectionRecord {
    metrics: Arc<Metrics>,
    labels: TcpLabels,
    started: Instant,
    /// Counted in `weft_active_connections`, so dropping the record takes it out.
    active: bool,
}

/// Which listener relayed a connection, and what its access-log line names.
pub enum Side<'a> {
    /// Captured leaving `pod` for `dst_workload` (when the workload list names it), an
    /// endpoint of `dst_service` when the pod dialled a service VIP.
    Outbound {
        pod: &'a WorkloadUid,
        dst_workload: Option<&'a str>,
        dst_service: Option<&'a str>,
    },
    /// Steered in plaintext to `pod`.
    InboundPlaintext { pod: &'a WorkloadUid },
}

/// The access-log line of a relayed connection.
pub struct AccessLog<'a> {
    pub side: Side<'a>,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub moved: Transferred,
    pub result: io::Result<()>,
}

impl ConnectionRecord {
    /// A connection with `labels` that began at `started`; nothing is counted yet.
    pub fn new(metrics: Arc<Metrics>, labels: TcpLabels, started: Instant) -> Self {
        ConnectionRecord {
            metrics,
            labels,
            started,
            active: false,
        }
    }

    /// Counts the connection opened, and active until the record is dropped.
    pub fn open(&mut self) {
        if self.active {
            return;
        }
        self.metrics.opened.get_or_create(&self.labels).inc();
        self.metrics.active_connections.inc();
        self.active = true;
    }

    /// The connection's byte counters, client to destination and back, to count into as
    /// bytes move (so a long-lived connection shows before it closes).
    pub fn byte_counters(&self) -> (Counter, Counter) {
        (
            self.metrics
                .received_bytes
                .get_or_create(&self.labels)
                .clone(),
            self.metrics.sent_bytes.get_or_create(&self.labels).clone(),
        )
    }

    /// Ends a connection that was never relayed: counted closed with Envoy's response
    /// `flags` (`UAEX` denied by policy, `UF` no upstream). Its refusal is logged where it
    /// was decided.
    pub fn fail(mut self, flags: &'static str) {
        self.labels.response_flags = flags;
        self.metrics.closed.get_or_create(&self.labels).inc();
    }

    /// Ends a tunnel whose bytes are reported when it closes (HBONE inbound): counted closed
    /// with them.
    pub fn close_with_bytes(self, received: u64, sent: u64) {
        let (received_bytes, sent_bytes) = self.byte_counters();
        self.metrics.closed.get_or_create(&self.labels).inc();
        received_bytes.inc_by(received);
        sent_bytes.inc_by(sent);
    }

    /// Ends a relayed connection: counted closed, and logged in one line.
    pub fn close(self, log: AccessLog<'_>) {
        self.metrics.closed.get_or_create(&self.labels).inc();
        let AccessLog {
            side,
            src,
            dst,
            moved,
            result,
        } = log;
        let (src_pod, dst_pod, dst_workload, dst_service, security, message) = match side {
            Side::Outbound {
                pod,
                dst_workload,
                dst_service,
            } => (
                Some(pod),
                None,
                dst_workload,
                dst_service,
                Some(self.labels.connection_security_policy),
                if result.is_ok() {
                    "connection complete"
                } else {
                    "connection ended with an error"
                },
            ),
            Side::InboundPlaintext { pod } => (
                None,
                Some(pod),
                None,
                None,
                None,
                "inbound plaintext connection complete",
            ),
        };
        info!(
            src.pod = src_pod.map(field::display),
            dst.pod = dst_pod.map(field::display),
            src.addr = %src,
            dst.addr = %dst,
            dst.workload = dst_workload,
            dst.service = dst_service,
            bytes_sent = moved.sent,
            bytes_received = moved.received,
            duration_ms = self.started.elapsed().as_millis() as u64,
            security,
            error = result.err().map(field::display),
            "{message}"
        );
    }
}

impl Drop for ConnectionRecord {
    fn drop(&mut self) {
        if self.active {
            self.metrics.active_connections.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;

    fn record(metrics: &Arc<Metrics>) -> ConnectionRecord {
        let labels = TcpLabels::outbound(&Default::default(), None, None);
        ConnectionRecord::new(metrics.clone(), labels, Instant::now())
    }

    fn closed(metrics: &Metrics, flags: &'static str) -> u64 {
        let mut labels = TcpLabels::outbound(&Default::default(), None, None);
        labels.response_flags = flags;
        metrics.closed.get_or_create(&labels).get()
    }

    #[test]
    fn a_connection_is_active_from_open_until_its_record_is_gone() {
        let metrics = Arc::new(Metrics::new(&mut Registry::default()));
        let mut relayed = record(&metrics);
        relayed.open();
        relayed.open();
        assert_eq!(metrics.active_connections.get(), 1);
        relayed.close(AccessLog {
            side: Side::InboundPlaintext {
                pod: &WorkloadUid("pod".into()),
            },
            src: ([10, 0, 0, 1], 40000).into(),
            dst: ([10, 0, 0, 2], 80).into(),
            moved: Transferred::default(),
            result: Ok(()),
        });
        assert_eq!(metrics.active_connections.get(), 0);
        assert_eq!(closed(&metrics, "-"), 1);

        // Refused before it was opened: closed with its flags, never active.
        record(&metrics).fail("UAEX");
        assert_eq!(metrics.active_connections.get(), 0);
        assert_eq!(closed(&metrics, "UAEX"), 1);

        let opened = TcpLabels::outbound(&Default::default(), None, None);
        assert_eq!(metrics.opened.get_or_create(&opened).get(), 1);
    }

    #[test]
    fn a_tunnel_reported_at_its_close_counts_its_bytes() {
        let metrics = Arc::new(Metrics::new(&mut Registry::default()));
        record(&metrics).close_with_bytes(7, 11);
        let labels = TcpLabels::outbound(&Default::default(), None, None);
        assert_eq!(metrics.received_bytes.get_or_create(&labels).get(), 7);
        assert_eq!(metrics.sent_bytes.get_or_create(&labels).get(), 11);
        assert_eq!(closed(&metrics, "-"), 1);
    }
}
