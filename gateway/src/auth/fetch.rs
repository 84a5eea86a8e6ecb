//! Reading a JWKS document from a file or an HTTPS URL, bounded in time and size.

use std::{
    path::PathBuf,
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::Bytes;
use http::{Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls_pki_types::{CertificateDer, ServerName};
use tokio::{io::AsyncReadExt, net::TcpStream};

use super::{
    jwks::{FetchLimits, JwksError},
    policy::JwksSource,
};

/// Why a fetch gave no key set. Messages name the source and the likely cause.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("reading {path}: {source}")]
    File {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} is larger than {max} bytes")]
    TooLarge { what: String, max: usize },
    #[error("connecting to {authority} timed out after {after:?} (is the host reachable?)")]
    ConnectTimeout { authority: String, after: Duration },
    #[error("connecting to {authority}: {source}")]
    Connect {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "TLS with {authority}: {source} (is its certificate signed by a system root or the provider's caCertificate?)"
    )]
    Tls {
        authority: String,
        #[source]
        source: std::io::Error,
    },
    #[error("HTTP with {authority}: {source}")]
    Http {
        authority: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{uri} answered {status}")]
    Status { uri: Uri, status: StatusCode },
    #[error("fetching {uri} took longer than {after:?}")]
    Timeout { uri: Uri, after: Duration },
    #[error("{0}")]
    Setup(String),
    #[error("{source}")]
    Jwks {
        #[source]
        source: JwksError,
    },
}

/// Where a provider's JWKS is read from.
pub(crate) enum Fetcher {
    File(PathBuf),
    Https(HttpsFetcher),
}

impl std::fmt::Display for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fetcher::File(p) => write!(f, "{}", p.display()),
            Fetcher::Https(h) => write!(f, "{}", h.uri),
        }
    }
}

impl Fetcher {
    pub(crate) fn new(source: &JwksSource) -> Result<Self, FetchError> {
        match source {
            JwksSource::File(path) => Ok(Fetcher::File(path.clone())),
            JwksSource::Https { uri, extra_roots } => {
                Ok(Fetcher::Https(HttpsFetcher::new(uri, extra_roots)?))
            }
            JwksSource::Inline(_) => {
                Err(FetchError::Setup("inline keys are not fetched".to_string()))
            }
        }
    }

    pub(crate) async fn fetch(&self, limits: &FetchLimits) -> Result<Bytes, FetchError> {
        match self {
            Fetcher::File(path) => read_file(path, limits.max_body).await,
            Fetcher::Https(h) => {
                let uri = h.uri.clone();
                tokio::time::timeout(limits.total_timeout, h.fetch(limits))
                    .await
                    .map_err(|_| FetchError::Timeout {
                        uri,
                        after: limits.total_timeout,
                    })?
            }
        }
    }
}

async fn read_file(path: &PathBuf, max: usize) -> Result<Bytes, FetchError> {
    let io = |source| FetchError::File {
        path: path.clone(),
        source,
    };
    let file = tokio::fs::File::open(path).await.map_err(io)?;
    let mut buf = Vec::new();
    file.take(max as u64 + 1)
        .read_to_end(&mut buf)
        .await
        .map_err(io)?;
    if buf.len() > max {
        return Err(FetchError::TooLarge {
            what: path.display().to_string(),
            max,
        });
    }
    Ok(buf.into())
}

/// A JWKS URL: one HTTP/1.1 GET over a fresh TLS connection per fetch (fetches are minutes
/// apart, so a pool would only hold idle sockets).
pub(crate) struct HttpsFetcher {
    uri: Uri,
    host: String,
    port: u16,
    authority: String,
    path: String,
    server_name: ServerName<'static>,
    tls: tokio_rustls::TlsConnector,
}

/// The system's trust anchors, read once per process.
fn system_roots() -> &'static [CertificateDer<'static>] {
    static ROOTS: OnceLock<Vec<CertificateDer<'static>>> = OnceLock::new();
    ROOTS.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for error in &found.errors {
            tracing::warn!(%error, "reading the system trust anchors for JWKS fetches");
        }
        found.certs
    })
}

impl HttpsFetcher {
    fn new(uri: &Uri, extra_roots: &[CertificateDer<'static>]) -> Result<Self, FetchError> {
        let setup = |what: String| FetchError::Setup(format!("jwks uri {uri}: {what}"));
        let host = uri
            .host()
            .ok_or_else(|| setup("no host".into()))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(443);
        let server_name =
            ServerName::try_from(host.clone()).map_err(|e| setup(format!("host name: {e}")))?;
        let mut roots = RootCertStore::empty();
        // System roots that rustls cannot parse are skipped, as browsers do.
        let _ = roots.add_parsable_certificates(system_roots().iter().cloned());
        for cert in extra_roots {
            roots
                .add(cert.clone())
                .map_err(|e| setup(format!("caCertificate: {e}")))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| setup(format!("TLS: {e}")))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let authority = uri
            .authority()
            .map(|a| a.as_str().to_string())
            .unwrap_or_else(|| host.clone());
        let path = uri
            .path_and_query()
            .map(|pq| pq.as_str().to_string())
            .unwrap_or_else(|| "/".into());
        Ok(HttpsFetcher {
            uri: uri.clone(),
            host,
            port,
            authority,
            path,
            server_name,
            tls: tokio_rustls::TlsConnector::from(Arc::new(config)),
        })
    }

    async fn fetch(&self, limits: &FetchLimits) -> Result<Bytes, FetchError> {
        let authority = || self.authority.clone();
        let tcp = tokio::time::timeout(
            limits.connect_timeout,
            TcpStream::connect((self.host.as_str(), self.port)),
        )
        .await
        .map_err(|_| FetchError::ConnectTimeout {
            authority: authority(),
            after: limits.connect_timeout,
        })?
        .map_err(|source| FetchError::Connect {
            authority: authority(),
            source,
        })?;
        let _ = tcp.set_nodelay(true);
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|source| FetchError::Tls {
                authority: authority(),
                source,
            })?;
        let http = |source| FetchError::Http {
            authority: authority(),
            source,
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(http)?;
        // The connection is driven beside the request and dropped with it.
        let driver = AbortOnDrop(tokio::spawn(connection));
        let request = Request::get(self.path.as_str())
            .header(header::HOST, self.authority.as_str())
            .header(header::ACCEPT, "application/jwk-set+json, application/json")
            .header(header::USER_AGENT, "weft-gateway")
            .body(Empty::<Bytes>::new())
            .map_err(|e| FetchError::Setup(format!("request to {}: {e}", self.uri)))?;
        let response = sender.send_request(request).await.map_err(http)?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status {
                uri: self.uri.clone(),
                status: response.status(),
            });
        }
        let too_large = || FetchError::TooLarge {
            what: format!("the JWKS at {}", self.uri),
            max: limits.max_body,
        };
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limits.max_body as u64) {
            return Err(too_large());
        }
        let body = Limited::new(response.into_body(), limits.max_body)
            .collect()
            .await
            .map_err(|e| match e.downcast::<hyper::Error>() {
                Ok(e) => http(*e),
                Err(_) => too_large(),
            })?
            .to_bytes();
        drop(driver);
        Ok(body)
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}
