//! The client-facing ports: one socket per port of the Listener resources, whatever number
//! of listeners share it. HTTP ports serve HTTP/1.1 and h2c (prior knowledge); HTTPS ports
//! terminate TLS 1.2/1.3 with ALPN `h2` and `http/1.1`, presenting the certificate the
//! client's SNI names (see [`SniResolver`]).
//!
//! Reload diffs ports: a new port is bound, a removed one stops accepting and asks its
//! connections to finish gracefully (HTTP/1.1 closes after the current response, HTTP/2 sends
//! `GOAWAY`), so nothing in flight is dropped. Certificates are swapped in place. Everything
//! else (routes, consumers) a request reads from the snapshot of the moment it arrives.

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use hyper::service::service_fn;
use parking_lot::Mutex;
use rustls::server::{ClientHello, ResolvesServerCert};
use tokio::{net::TcpListener, sync::watch};
use tracing::{Instrument as _, debug, debug_span, info, warn};
use weft_http::{phase::Session, server::HttpServer};

use crate::{
    proxy::Proxy,
    snapshot::{Protocol, Snapshot, SniCerts},
};

/// After `accept` fails (e.g. EMFILE), wait before the next try instead of spinning.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Picks an HTTPS port's certificate by SNI from the certificates in force.
#[derive(Debug)]
pub struct SniResolver {
    certs: ArcSwap<SniCerts>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.certs.load().resolve(hello.server_name())
    }
}

fn tls_config(resolver: Arc<SniResolver>) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Counts open client connections, for the drain.
#[derive(Debug, Default)]
pub struct Connections {
    open: AtomicUsize,
    changed: tokio::sync::Notify,
}

struct ConnGuard(Arc<Connections>);

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

impl Connections {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    fn enter(self: &Arc<Self>) -> ConnGuard {
        self.open.fetch_add(1, Ordering::AcqRel);
        ConnGuard(self.clone())
    }

    /// Waits until no connection is open; false if `deadline` passed first.
    pub async fn wait_idle(&self, deadline: Duration) -> bool {
        tokio::time::timeout(deadline, async {
            loop {
                let notified = self.changed.notified();
                if self.open() == 0 {
                    return;
                }
                notified.await;
            }
        })
        .await
        .is_ok()
    }
}

struct Running {
    protocol: Protocol,
    resolver: Option<Arc<SniResolver>>,
    stop: watch::Sender<bool>,
}

/// The ports in service.
pub struct Listeners {
    bind_ip: IpAddr,
    server: Arc<HttpServer>,
    proxy: Arc<Proxy>,
    running: Mutex<BTreeMap<u16, Running>>,
    pub connections: Arc<Connections>,
    tls_handshake_timeout: Duration,
}

/// A port that could not be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (listeners {}): {source}", listeners.join(", "))]
pub struct BindError {
    pub addr: SocketAddr,
    /// The listeners (`namespace/gateway/name`) on that port.
    pub listeners: Vec<String>,
    #[source]
    pub source: std::io::Error,
}

/// Sockets bound for a configuration not yet in force.
#[derive(Debug)]
pub struct Prepared {
    bound: Vec<(u16, TcpListener)>,
}

impl Listeners {
    pub fn new(bind_ip: IpAddr, server: Arc<HttpServer>, proxy: Arc<Proxy>) -> Self {
        let tls_handshake_timeout = server.limits().header_read_timeout;
        Listeners {
            bind_ip,
            server,
            proxy,
            running: Mutex::new(BTreeMap::new()),
            connections: Arc::new(Connections::default()),
            tls_handshake_timeout,
        }
    }

    /// Binds the ports of `snap` that are not served yet, all or none: a port that cannot be
    /// bound refuses the whole configuration (as Envoy refuses a listener update it cannot
    /// bind), so what is in force is always what is served.
    pub fn prepare(&self, snap: &Snapshot) -> Result<Prepared, BindError> {
        let running = self.running.lock();
        let mut bound = Vec::new();
        for (port, conf) in &snap.ports {
            if running
                .get(port)
                .is_some_and(|r| r.protocol == conf.protocol)
            {
                continue;
            }
            // A port changing protocol is served by its old socket until commit; bind the
            // new one only when the old is gone.
            if running.contains_key(port) {
                continue;
            }
            let addr = SocketAddr::new(self.bind_ip, *port);
            let listener = bind(addr).map_err(|source| BindError {
                addr,
                listeners: conf.listeners.iter().map(|l| l.key.clone()).collect(),
                source,
            })?;
            bound.push((*port, listener));
        }
        Ok(Prepared { bound })
    }

    /// Brings the ports in line with `snap`: serves the ports `prepared` bound, stops removed
    /// ones (and ones whose protocol changed, which are bound again), swaps certificates.
    /// Must run inside the data-path runtime.
    pub fn commit(&self, snap: &Snapshot, prepared: Prepared) {
        let mut running = self.running.lock();
        let gone: Vec<u16> = running
            .iter()
            .filter(|(port, r)| {
                snap.ports
                    .get(port)
                    .is_none_or(|p| p.protocol != r.protocol)
            })
            .map(|(port, _)| *port)
            .collect();
        for port in &gone {
            if let Some(r) = running.remove(port) {
                info!(port, "listener port removed; finishing its connections");
                let _ = r.stop.send(true);
            }
        }
        let mut bound: BTreeMap<u16, TcpListener> = prepared.bound.into_iter().collect();
        for (port, conf) in &snap.ports {
            if let Some(r) = running.get(port) {
                if let (Some(resolver), Some(certs)) = (&r.resolver, &conf.certs) {
                    resolver.certs.store(certs.clone());
                }
                continue;
            }
            let addr = SocketAddr::new(self.bind_ip, *port);
            let listener = match bound.remove(port) {
                Some(l) => l,
                // Its protocol changed: the old socket is closed now.
                None => match bind(addr) {
                    Ok(l) => l,
                    Err(e) => {
                        warn!(%addr, error = %e, "cannot listen");
                        continue;
                    }
                },
            };
            let resolver = conf.certs.as_ref().map(|c| {
                Arc::new(SniResolver {
                    certs: ArcSwap::new(c.clone()),
                })
            });
            let tls = match &resolver {
                Some(r) => match tls_config(r.clone()) {
                    Ok(c) => Some(tokio_rustls::TlsAcceptor::from(c)),
                    Err(e) => {
                        warn!(%addr, error = %e, "cannot build the TLS settings");
                        continue;
                    }
                },
                None => None,
            };
            let (stop, stopped) = watch::channel(false);
            info!(%addr, protocol = conf.protocol.as_str(), "listening");
            tokio::spawn(accept_loop(
                listener,
                tls,
                self.server.clone(),
                self.proxy.clone(),
                self.connections.clone(),
                stopped,
                self.tls_handshake_timeout,
            ));
            running.insert(
                *port,
                Running {
                    protocol: conf.protocol,
                    resolver,
                    stop,
                },
            );
        }
    }

    /// Stops accepting on every port and asks every connection to finish.
    pub fn stop_all(&self) {
        for (_, r) in std::mem::take(&mut *self.running.lock()) {
            let _ = r.stop.send(true);
        }
    }

    /// The ports being served.
    pub fn ports(&self) -> Vec<u16> {
        self.running.lock().keys().copied().collect()
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    // A restarted gateway rebinds at once, while the old one's connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    server: Arc<HttpServer>,
    proxy: Arc<Proxy>,
    connections: Arc<Connections>,
    stop: watch::Receiver<bool>,
    handshake_timeout: Duration,
) {
    let local_port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    loop {
        let (stream, remote) = tokio::select! {
            () = stopped(stop.clone()) => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(err) => {
                    warn!(%err, port = local_port, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let guard = connections.enter();
        let session = Arc::new(Session {
            remote,
            local_port,
            tls: tls.is_some(),
        });
        let (server, proxy, stop, tls) = (server.clone(), proxy.clone(), stop.clone(), tls.clone());
        let span = debug_span!("conn", %remote, port = local_port);
        tokio::spawn(
            async move {
                let _guard = guard;
                let service = {
                    let session = session.clone();
                    service_fn(move |req| {
                        let (proxy, session) = (proxy.clone(), session.clone());
                        async move { Ok::<_, Infallible>(proxy.handle(req, &session).await) }
                    })
                };
                match tls {
                    None => server.serve(stream, service, stopped(stop)).await,
                    Some(acceptor) => {
                        let handshake =
                            tokio::time::timeout(handshake_timeout, acceptor.accept(stream));
                        match handshake.await {
                            Ok(Ok(tls_stream)) => {
                                server.serve(tls_stream, service, stopped(stop)).await
                            }
                            Ok(Err(e)) => debug!(error = %e, "TLS handshake failed"),
                            Err(_) => debug!("TLS handshake timed out"),
                        }
                    }
                }
            }
            .instrument(span),
        );
    }
}
