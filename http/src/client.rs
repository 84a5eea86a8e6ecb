//! Forwarding a request upstream, over one of three transports:
//!
//! - plain TCP (`http://` backends), pooled by hyper's client, HTTP/1.1 or, for gRPC,
//!   HTTP/2 with prior knowledge;
//! - TLS (`https://` backends): the system's roots plus the backend's own `ca_pem`, ALPN
//!   `h2` and `http/1.1`, one pooled client per distinct trust set;
//! - an HBONE tunnel (mesh services): one `CONNECT` stream per request over `weft-link`'s
//!   pooled, multiplexed mutual-TLS connections to the endpoint pod's port 15008, dialled
//!   with the caller's own certificate and requiring the endpoint's identity. Each tunnel
//!   carries one HTTP exchange; the TLS connection under it is what is reused.

use std::{collections::HashMap, net::SocketAddr, sync::Arc, sync::OnceLock, time::Duration};

use http::{Request, Response, Uri, uri::Scheme};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use parking_lot::Mutex;
use tracing::{debug, warn};
use weft_link::{
    hbone::{ConnectRequest, HboneClient},
    identity::SpiffeId,
    tls::ClientTls,
};

use crate::server::{Body, BoxError};

/// Idle pooled connections to a backend are closed after this long (below the usual 60-75 s
/// keep-alive of servers, so the gateway closes first and never writes into a closing
/// socket).
pub const DEFAULT_POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(50);
/// TCP connect limit towards backends (Envoy's cluster `connect_timeout` default is 5 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Distinct trust sets (backend `ca_pem`s) with a client each; more are built per request.
const MAX_TLS_CLIENTS: usize = 256;

/// Where one request goes.
#[derive(Debug, Clone)]
pub enum Target {
    /// An `http://` or `https://` backend outside the mesh.
    Url {
        scheme: Scheme,
        authority: http::uri::Authority,
        /// Extra trust anchors (PEM) for `https://`.
        ca_pem: Option<Arc<str>>,
    },
    /// A mesh endpoint through HBONE.
    Hbone {
        /// The endpoint's HBONE address, `pod_ip:15008`.
        dst: SocketAddr,
        /// `pod_ip:target_port`, sent as the tunnel's `:authority`.
        authority: SocketAddr,
        /// The identity the endpoint must prove.
        expected: SpiffeId,
    },
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Url {
                scheme, authority, ..
            } => write!(f, "{scheme}://{authority}"),
            Target::Hbone { authority, .. } => write!(f, "hbone://{authority}"),
        }
    }
}

/// Which HTTP version to speak upstream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamProtocol {
    /// HTTP/1.1 (or h2 when TLS ALPN picks it).
    Http1,
    /// HTTP/2 only (gRPC): prior knowledge in plain text.
    Http2,
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The connection (or tunnel) could not be opened: `502` (or `503` for a mesh endpoint
    /// without tunnel credentials).
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    /// The request was sent, or sending it failed after connecting.
    #[error("request to {target} failed: {reason}")]
    Request {
        target: String,
        reason: String,
        #[source]
        source: Option<BoxError>,
    },
    /// The gateway has no certificate yet, so it cannot open tunnels into the mesh.
    #[error("no mesh certificate yet; cannot open an HBONE tunnel to {target}")]
    NoCertificate { target: String },
    #[error("invalid upstream URI for {target}: {reason}")]
    Uri { target: String, reason: String },
}

impl ClientError {
    /// Whether the request certainly did not reach the backend (safe to retry).
    pub fn is_connect(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. } | ClientError::NoCertificate { .. }
        )
    }
}

/// The caller's mesh client credentials for HBONE, read at each tunnel.
pub type MeshTls = Arc<dyn Fn() -> Option<ClientTls> + Send + Sync>;

/// Sends requests upstream. Clones share pools.
#[derive(Clone)]
pub struct UpstreamClient {
    inner: Arc<Inner>,
}

struct Inner {
    http1: Client<HttpConnector, Body>,
    http2: Client<HttpConnector, Body>,
    tls: Mutex<HashMap<Option<Arc<str>>, TlsClient>>,
    hbone: HboneClient,
    mesh_tls: MeshTls,
    connect_timeout: Duration,
}

type TlsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Body>;

impl std::fmt::Debug for UpstreamClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamClient").finish_non_exhaustive()
    }
}

fn connector(connect_timeout: Duration) -> HttpConnector {
    let mut c = HttpConnector::new();
    c.set_nodelay(true);
    c.set_connect_timeout(Some(connect_timeout));
    c.enforce_http(false);
    c
}

impl UpstreamClient {
    pub fn new(hbone: HboneClient, mesh_tls: MeshTls, connect_timeout: Duration) -> Self {
        let builder = || {
            let mut b = Client::builder(TokioExecutor::new());
            b.timer(TokioTimer::new())
                .pool_timer(TokioTimer::new())
                .pool_idle_timeout(DEFAULT_POOL_IDLE_TIMEOUT);
            b
        };
        let http1 = builder().build(connector(connect_timeout));
        let http2 = builder().http2_only(true).build(connector(connect_timeout));
        UpstreamClient {
            inner: Arc::new(Inner {
                http1,
                http2,
                tls: Mutex::new(HashMap::new()),
                hbone,
                mesh_tls,
                connect_timeout,
            }),
        }
    }

    /// Sends `req` (its URI's path and query are kept; scheme and authority come from
    /// `target`) and returns the response head, the body still streaming.
    pub async fn send(
        &self,
        target: &Target,
        protocol: UpstreamProtocol,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, ClientError> {
        match target {
            Target::Url {
                scheme,
                authority,
                ca_pem,
            } => {
                let path = req
                    .uri()
                    .path_and_query()
                    .map_or("/", |p| p.as_str())
                    .to_string();
                let uri = Uri::builder()
                    .scheme(scheme.clone())
                    .authority(authority.clone())
                    .path_and_query(path)
                    .build()
                    .map_err(|e| ClientError::Uri {
                        target: target.to_string(),
                        reason: e.to_string(),
                    })?;
                *req.uri_mut() = uri;
                // The client side's version says nothing about the backend's: hyper's pool
                // speaks HTTP/1.1 unless ALPN (or gRPC's prior knowledge) says h2.
                *req.version_mut() = match protocol {
                    UpstreamProtocol::Http2 => http::Version::HTTP_2,
                    UpstreamProtocol::Http1 => http::Version::HTTP_11,
                };
                let result = if *scheme == Scheme::HTTPS {
                    self.tls_client(ca_pem)?.request(req).await
                } else if protocol == UpstreamProtocol::Http2 {
                    self.inner.http2.request(req).await
                } else {
                    self.inner.http1.request(req).await
                };
                result.map_err(|e| legacy_error(target, e))
            }
            Target::Hbone {
                dst,
                authority,
                expected,
            } => {
                self.send_hbone(target, *dst, *authority, expected, protocol, req)
                    .await
            }
        }
    }

    async fn send_hbone(
        &self,
        target: &Target,
        dst: SocketAddr,
        authority: SocketAddr,
        expected: &SpiffeId,
        protocol: UpstreamProtocol,
        mut req: Request<Body>,
    ) -> Result<Response<Incoming>, ClientError> {
        let connect_err = |reason: String| ClientError::Connect {
            target: target.to_string(),
            reason,
        };
        let tls = (self.inner.mesh_tls)().ok_or_else(|| ClientError::NoCertificate {
            target: target.to_string(),
        })?;
        let mut connect = ConnectRequest::new(dst, expected.clone(), authority);
        connect.baggage = req.headers().get("baggage").cloned();
        let stream = tokio::time::timeout(
            self.inner.connect_timeout,
            self.inner.hbone.connect(&tls, connect),
        )
        .await
        .map_err(|_| connect_err(format!("no tunnel within {:?}", self.inner.connect_timeout)))?
        .map_err(|e| connect_err(weft_link::error_chain(&e)))?;
        // Origin-form on the wire for HTTP/1.1; HTTP/2 takes scheme and authority.
        let path = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        let request_err = |e: hyper::Error| ClientError::Request {
            target: target.to_string(),
            reason: e.to_string(),
            source: Some(Box::new(e)),
        };
        let io = TokioIo::new(stream);
        *req.version_mut() = match protocol {
            UpstreamProtocol::Http2 => http::Version::HTTP_2,
            UpstreamProtocol::Http1 => http::Version::HTTP_11,
        };
        match protocol {
            UpstreamProtocol::Http1 => {
                *req.uri_mut() =
                    path.parse()
                        .map_err(|e: http::uri::InvalidUri| ClientError::Uri {
                            target: target.to_string(),
                            reason: e.to_string(),
                        })?;
                let (mut send, conn) = hyper::client::conn::http1::handshake(io)
                    .await
                    .map_err(|e| connect_err(e.to_string()))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(error = %e, "upstream connection in tunnel ended");
                    }
                });
                send.send_request(req).await.map_err(request_err)
            }
            UpstreamProtocol::Http2 => {
                *req.uri_mut() = Uri::builder()
                    .scheme(Scheme::HTTP)
                    .authority(authority.to_string())
                    .path_and_query(path)
                    .build()
                    .map_err(|e| ClientError::Uri {
                        target: target.to_string(),
                        reason: e.to_string(),
                    })?;
                let (mut send, conn) =
                    hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                        .await
                        .map_err(|e| connect_err(e.to_string()))?;
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        debug!(error = %e, "upstream connection in tunnel ended");
                    }
                });
                send.send_request(req).await.map_err(request_err)
            }
        }
    }

    fn tls_client(&self, ca_pem: &Option<Arc<str>>) -> Result<TlsClient, ClientError> {
        let mut clients = self.inner.tls.lock();
        if let Some(c) = clients.get(ca_pem) {
            return Ok(c.clone());
        }
        let config = tls_config(ca_pem.as_deref()).map_err(|reason| ClientError::Connect {
            target: "https backend".into(),
            reason,
        })?;
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(config)
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(connector(self.inner.connect_timeout));
        let mut b = Client::builder(TokioExecutor::new());
        b.timer(TokioTimer::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(DEFAULT_POOL_IDLE_TIMEOUT);
        let client = b.build(https);
        if clients.len() < MAX_TLS_CLIENTS {
            clients.insert(ca_pem.clone(), client.clone());
        }
        Ok(client)
    }
}

/// The system's trust anchors, loaded once.
fn native_roots() -> &'static [rustls::pki_types::CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<rustls::pki_types::CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let loaded = rustls_native_certs::load_native_certs();
        if !loaded.errors.is_empty() {
            warn!(errors = ?loaded.errors, "some system trust anchors could not be read");
        }
        loaded.certs
    })
}

/// A TLS client configuration trusting the system roots and `ca_pem`.
pub fn tls_config(ca_pem: Option<&str>) -> Result<rustls::ClientConfig, String> {
    let mut roots = rustls::RootCertStore::empty();
    let (_, _) = roots.add_parsable_certificates(native_roots().iter().cloned());
    if let Some(pem) = ca_pem {
        let mut added = 0;
        for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(pem.as_bytes()) {
            let cert: rustls::pki_types::CertificateDer<'static> =
                cert.map_err(|e| format!("caCertificate is not PEM: {e}"))?;
            roots.add(cert).map_err(|e| format!("caCertificate: {e}"))?;
            added += 1;
        }
        if added == 0 {
            return Err("caCertificate holds no certificate".into());
        }
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

fn legacy_error(target: &Target, e: hyper_util::client::legacy::Error) -> ClientError {
    if e.is_connect() {
        let mut reason = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            reason = format!("{reason}: {s}");
            src = s.source();
        }
        ClientError::Connect {
            target: target.to_string(),
            reason,
        }
    } else {
        ClientError::Request {
            target: target.to_string(),
            reason: e.to_string(),
            source: Some(Box::new(e)),
        }
    }
}
