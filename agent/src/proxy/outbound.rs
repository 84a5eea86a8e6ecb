//! The outbound listener (`127.0.0.1:15001` and `[::1]:15001` inside each enrolled pod's
//! network namespace). connect4/connect6 send the pod's outbound TCP connections here; the
//! original destination comes from the tuple map that sockops filled, and the agent connects
//! to it from inside the same pod namespace, so the packets leave with the pod's own address.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tracing::{Instrument, debug, field, info, info_span, warn};
use weft_ebpf_common::{OUTBOUND_PORT, TupleKey};

use super::{ProxyContext, copy};
use crate::{
    drain::DrainWatcher,
    inpod::{Netns, NetnsError, agent_socket, netns_cookie},
    metrics::TcpLabels,
    state::WorkloadUid,
};

/// Pending connections per listener; a burst of new connections beyond this gets SYN-retries.
const LISTEN_BACKLOG: i32 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error(
        "cannot listen on {addr} inside {netns}: {source} (is the pod's loopback interface up?)"
    )]
    Bind {
        addr: SocketAddr,
        netns: String,
        #[source]
        source: io::Error,
    },
}

/// A pod as the data path sees it. Its metadata (name, labels, service account) is looked up
/// by uid per connection, so a pod is captured even before the workload list names it, and
/// label changes apply to the next connection.
pub struct Pod {
    pub uid: WorkloadUid,
    pub netns: Netns,
}

/// One bound outbound listener inside a pod.
pub struct OutboundListener {
    pod: Arc<Pod>,
    listener: TcpListener,
    netns_cookie: u64,
}

impl OutboundListener {
    /// Binds the IPv4 listener and, when the pod has IPv6 loopback, the IPv6 one.
    pub fn bind_all(pod: &Arc<Pod>, home: &Netns) -> Result<Vec<Self>, ListenerError> {
        let v4 = OutboundListener::bind(pod, home, (Ipv4Addr::LOCALHOST, OUTBOUND_PORT).into())?;
        let mut listeners = vec![v4];
        match OutboundListener::bind(pod, home, (Ipv6Addr::LOCALHOST, OUTBOUND_PORT).into()) {
            Ok(v6) => listeners.push(v6),
            Err(err) => warn!(pod = %pod.uid, %err, "no IPv6 capture listener"),
        }
        Ok(listeners)
    }

    fn bind(pod: &Arc<Pod>, home: &Netns, addr: SocketAddr) -> Result<Self, ListenerError> {
        let bind_err = |source| ListenerError::Bind {
            addr,
            netns: pod.netns.path().display().to_string(),
            source,
        };
        let socket = pod
            .netns
            .run(home, || -> io::Result<socket2::Socket> {
                let socket = agent_socket(&addr)?;
                socket.set_reuse_address(true)?;
                if addr.is_ipv6() {
                    socket.set_only_v6(true)?;
                }
                socket.bind(&addr.into())?;
                socket.listen(LISTEN_BACKLOG)?;
                Ok(socket)
            })?
            .map_err(bind_err)?;
        let netns_cookie = netns_cookie(&socket).map_err(bind_err)?;
        let listener = TcpListener::from_std(socket.into()).map_err(bind_err)?;
        Ok(OutboundListener {
            pod: pod.clone(),
            listener,
            netns_cookie,
        })
    }

    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.local_addr().ok()
    }

    pub fn netns_cookie(&self) -> u64 {
        self.netns_cookie
    }

    /// Accepts until the drain starts or the task is dropped (the pod left).
    pub async fn run(self, ctx: Arc<ProxyContext>, mut drain: DrainWatcher) {
        let pod = self.pod.clone();
        loop {
            let accepted = tokio::select! {
                accepted = self.listener.accept() => accepted,
                _ = drain.signalled() => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let conn = Connection {
                        ctx: ctx.clone(),
                        pod: pod.clone(),
                        key: TupleKey::for_peer(self.netns_cookie, peer),
                        _drain: drain.clone(),
                    };
                    let span = info_span!(
                        "outbound",
                        src.pod = %pod.uid,
                        src.addr = %peer,
                        dst.addr = field::Empty,
                        dst.workload = field::Empty,
                    );
                    tokio::spawn(conn.serve(stream).instrument(span));
                }
                Err(err) => {
                    // EMFILE and friends: back off briefly rather than spin.
                    warn!(pod = %pod.uid, %err, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
        debug!(pod = %pod.uid, "outbound listener closed");
    }
}

struct Connection {
    ctx: Arc<ProxyContext>,
    pod: Arc<Pod>,
    key: TupleKey,
    _drain: DrainWatcher,
}

impl Connection {
    async fn serve(self, mut client: TcpStream) {
        let started = Instant::now();
        let metrics = &self.ctx.metrics;
        let Some(orig) = self.ctx.capture.take_orig_dst(&self.key) else {
            metrics.no_orig_dst.inc();
            warn!(
                "no original destination recorded for this connection; refusing it (the \
                 kernel's tuple map may have overflowed, or something in the pod dialled the \
                 capture port directly)"
            );
            return;
        };
        let dst = orig.socket_addr();
        let (src_workload, dst_workload) = {
            let workloads = self.ctx.workloads.load();
            (
                workloads.by_uid(&self.pod.uid).cloned(),
                workloads.by_ip(dst.ip()).cloned(),
            )
        };
        let span = tracing::Span::current();
        span.record("dst.addr", field::display(dst));
        if let Some(w) = &dst_workload {
            span.record("dst.workload", field::display(&w.name));
        }
        let mut labels = TcpLabels::outbound(
            src_workload.as_deref(),
            dst_workload.as_deref(),
            dst.to_string(),
        );
        metrics.opened.get_or_create(&labels).inc();
        metrics.active_connections.inc();
        let _active = scopeguard(|| {
            metrics.active_connections.dec();
        });

        let mut upstream = match self.connect(dst).await {
            Ok(upstream) => upstream,
            Err(err) => {
                labels.response_flags = "UF";
                metrics.closed.get_or_create(&labels).inc();
                let hint = match err.kind() {
                    io::ErrorKind::ConnectionRefused => "nothing listens on that port",
                    io::ErrorKind::TimedOut => {
                        "no answer: is the destination up and routable from the pod?"
                    }
                    _ => "the destination is unreachable from the pod",
                };
                warn!(error = %err, hint, "connecting to the original destination failed");
                return;
            }
        };
        let received = metrics.received_bytes.get_or_create(&labels).clone();
        let sent = metrics.sent_bytes.get_or_create(&labels).clone();
        let (moved, result) =
            copy::bidirectional(&mut client, &mut upstream, &received, &sent).await;
        metrics.closed.get_or_create(&labels).inc();
        let duration_ms = started.elapsed().as_millis() as u64;
        match result {
            Ok(()) => info!(
                bytes_sent = moved.sent,
                bytes_received = moved.received,
                duration_ms,
                "connection complete"
            ),
            Err(err) => info!(
                bytes_sent = moved.sent,
                bytes_received = moved.received,
                duration_ms,
                error = %err,
                "connection ended with an error"
            ),
        }
    }

    /// Connects to `dst` from inside the source pod's network namespace.
    async fn connect(&self, dst: SocketAddr) -> io::Result<TcpStream> {
        let socket = self
            .pod
            .netns
            .run(&self.ctx.home, || agent_socket(&dst))
            .map_err(io::Error::other)??;
        let socket = TcpSocket::from_std_stream(socket.into());
        tokio::time::timeout(self.ctx.connect_timeout, socket.connect(dst))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
    }
}

/// Runs `f` when dropped (on every exit path of a connection).
fn scopeguard<F: FnOnce()>(f: F) -> impl Drop {
    struct Guard<F: FnOnce()>(Option<F>);
    impl<F: FnOnce()> Drop for Guard<F> {
        fn drop(&mut self) {
            if let Some(f) = self.0.take() {
                f();
            }
        }
    }
    Guard(Some(f))
}
