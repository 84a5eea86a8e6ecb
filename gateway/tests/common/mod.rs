//! Helpers of the gateway's in-process tests: real backends on loopback, the real binary,
//! curl and h2load as clients.

#![allow(dead_code, clippy::unwrap_used)]

use std::{
    convert::Infallible,
    net::{SocketAddr, TcpListener as StdListener},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, atomic::AtomicUsize, atomic::Ordering},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::{Request, Response, body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo};

/// A port free right now on loopback (bound and released).
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Requests of `/slow` in progress now, and the most at once (every backend of the process).
pub static SLOW_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);
pub static SLOW_MAX_IN_FLIGHT: AtomicUsize = AtomicUsize::new(0);

/// An HTTP backend answering every request with a JSON echo of what it received.
pub struct Backend {
    pub addr: SocketAddr,
    pub requests: Arc<AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

async fn echo(
    name: &'static str,
    req: Request<Incoming>,
    count: Arc<AtomicUsize>,
) -> Response<Full<Bytes>> {
    count.fetch_add(1, Ordering::Relaxed);
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    if path.starts_with("/slow") {
        let now = SLOW_IN_FLIGHT.fetch_add(1, Ordering::SeqCst) + 1;
        SLOW_MAX_IN_FLIGHT.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        SLOW_IN_FLIGHT.fetch_sub(1, Ordering::SeqCst);
    }
    if path.starts_with("/status/") {
        let code: u16 = path.trim_start_matches("/status/").parse().unwrap_or(500);
        let mut r = Response::new(Full::new(Bytes::from_static(b"status\n")));
        *r.status_mut() = hyper::StatusCode::from_u16(code).unwrap();
        return r;
    }
    let headers: serde_json::Map<String, serde_json::Value> = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                serde_json::Value::String(v.to_str().unwrap_or("").into()),
            )
        })
        .collect();
    let method = req.method().to_string();
    let version = format!("{:?}", req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    let out = serde_json::json!({
        "backend": name, "path": path, "method": method, "version": version,
        "headers": headers, "body_bytes": body,
    });
    let mut r = Response::new(Full::new(Bytes::from(out.to_string())));
    r.headers_mut().insert("x-backend", name.parse().unwrap());
    r
}

impl Backend {
    /// A plain HTTP/1.1 + h2c backend named `name`.
    pub async fn start(name: &'static str) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let count = count.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let count = count.clone();
                        async move { Ok::<_, Infallible>(echo(name, req, count).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Backend {
            addr,
            requests,
            _task: task,
        }
    }

    /// An HTTPS backend presenting `cert_pem`/`key_pem`.
    pub async fn start_tls(name: &'static str, cert_pem: &str, key_pem: &str) -> Backend {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(cert_pem.as_bytes())
                .map(|c| c.unwrap())
                .collect();
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let count = requests.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (count, acceptor) = (count.clone(), acceptor.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(stream).await else {
                        return;
                    };
                    let svc = service_fn(move |req| {
                        let count = count.clone();
                        async move { Ok::<_, Infallible>(echo(name, req, count).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        });
        Backend {
            addr,
            requests,
            _task: task,
        }
    }
}

/// A self-signed certificate for `names` (PEM cert, PEM key).
pub fn self_signed(names: &[&str]) -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// The gateway binary, killed on drop.
pub struct Gateway {
    pub child: Child,
    pub admin: SocketAddr,
    pub readiness: SocketAddr,
    pub metrics: SocketAddr,
    pub log: PathBuf,
    _logdir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    /// Starts `weft-gateway` with `args` plus its own admin, metrics and readiness ports,
    /// listening on 127.0.0.1.
    pub fn spawn(args: &[&str]) -> Gateway {
        let (admin, readiness, metrics) = (free_port(), free_port(), free_port());
        let logdir = tempfile::tempdir().unwrap();
        let log = logdir.path().join("gateway.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_weft-gateway"))
            .args(args)
            .args(["--listen-addr", "127.0.0.1"])
            .args(["--admin-addr", &format!("127.0.0.1:{admin}")])
            .args(["--readiness-addr", &format!("127.0.0.1:{readiness}")])
            .args(["--metrics-addr", &format!("127.0.0.1:{metrics}")])
            .env("RUST_LOG", "info,weft_gateway=debug")
            .stdout(Stdio::from(out))
            .stderr(Stdio::from(err))
            .spawn()
            .expect("weft-gateway starts");
        Gateway {
            child,
            admin: ([127, 0, 0, 1], admin).into(),
            readiness: ([127, 0, 0, 1], readiness).into(),
            metrics: ([127, 0, 0, 1], metrics).into(),
            log,
            _logdir: logdir,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/healthz/ready` answers 200.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (status, _) = curl(&[&format!("http://{}/healthz/ready", self.readiness)]);
            if status == 200 {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "gateway not ready; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The admin `/config` document.
    pub fn config(&self) -> serde_json::Value {
        let (_, body) = curl(&[&format!("http://{}/config", self.admin)]);
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
    }

    /// Waits until the configuration generation is at least `n`.
    pub fn wait_generation(&self, n: u64) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.config()["snapshot"]["generation"]
                .as_u64()
                .unwrap_or(0)
                >= n
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "generation {n} never came; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Runs curl; returns (HTTP status, body); status 0 when no response came.
pub fn curl(args: &[&str]) -> (u16, String) {
    let (status, _, body) = curl_version(args);
    (status, body)
}

/// Runs curl; returns (HTTP status, HTTP version, body).
pub fn curl_version(args: &[&str]) -> (u16, String, String) {
    let out = Command::new("curl")
        .args([
            "-s",
            "-S",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{http_version}",
        ])
        .args(args)
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", &text));
    let (code, version) = tail.split_once(' ').unwrap_or((tail, ""));
    (
        code.trim().parse().unwrap_or(0),
        version.trim().to_string(),
        body.to_string(),
    )
}

/// Writes `text` to `dir/name` atomically (write aside, rename over).
pub fn write(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// A Gateway document with one HTTP listener on `port` and, if given, an HTTPS one.
pub fn gateway_doc(http_port: u16, https: Option<(u16, &[&str])>) -> String {
    let mut doc = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: edge, namespace: demo}}\nspec:\n  gatewayClassName: weft\n  listeners:\n  - {{name: http, port: {http_port}, protocol: HTTP}}\n"
    );
    if let Some((port, secrets)) = https {
        let refs: Vec<String> = secrets
            .iter()
            .map(|s| format!("{{kind: Secret, name: {s}}}"))
            .collect();
        doc.push_str(&format!(
            "  - name: https\n    port: {port}\n    protocol: HTTPS\n    tls: {{mode: Terminate, certificateRefs: [{}]}}\n",
            refs.join(", ")
        ));
    }
    doc
}

/// A TLS Secret document.
pub fn secret_doc(name: &str, cert: &str, key: &str) -> String {
    let indent = |s: &str| s.lines().map(|l| format!("    {l}\n")).collect::<String>();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: demo}}\ntype: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert),
        indent(key)
    )
}

/// A Backend document for `url`.
pub fn backend_doc(name: &str, url: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: Backend\nmetadata: {{name: {name}, namespace: demo}}\nspec: {{url: \"{url}\"}}\n"
    )
}

/// An HTTPRoute on the `edge` Gateway sending `prefix` to the Backend `backend`.
pub fn route_doc(name: &str, prefix: &str, backend: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  parentRefs: [{{name: edge}}]\n  rules:\n  - matches: [{{path: {{type: PathPrefix, value: {prefix}}}}}]\n    backendRefs: [{{group: weft.dev, kind: Backend, name: {backend}}}]\n"
    )
}

/// A configuration directory with an HTTP listener on a free port (returned), backend `one`
/// at `backend`, and a route sending everything to it.
pub fn one_route_dir(backend: std::net::SocketAddr) -> (tempfile::TempDir, u16) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let port = free_port();
    write(dir.path(), "gateway.yaml", &gateway_doc(port, None));
    write(
        dir.path(),
        "backend.yaml",
        &backend_doc("one", &format!("http://{backend}")),
    );
    write(dir.path(), "route.yaml", &route_doc("one", "/", "one"));
    (dir, port)
}
