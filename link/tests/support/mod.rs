//! Test PKI, HBONE servers and upstreams for the in-process tests.

#![allow(dead_code, reason = "each test binary uses a different part")]
#![expect(clippy::unwrap_used, reason = "a failing helper fails the test")]

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::StatusCode;
use parking_lot::Mutex;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, date_time_ymd,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use weft_link::hbone::{
    ConnectHandler, HboneClient, HboneServer, InboundConnect, PlainSocketFactory, Refusal,
    ServerOptions, SocketFactory, TunnelSummary,
};
use weft_link::identity::{SpiffeId, TrustDomain};
use weft_link::tls::{
    CertResolver, Certificate, ClientTls, PeerPolicy, TrustBundle, server_config,
};

pub fn id(sa: &str) -> SpiffeId {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
        .parse()
        .unwrap()
}

// === PKI ===

/// A root CA that issues X.509-SVIDs: ECDSA P-256, exactly one URI SAN.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

/// Validity of a leaf, as years (valid from Jan 1 of the first to Jan 1 of the second).
pub const VALID: (i32, i32) = (2020, 2100);
pub const EXPIRED: (i32, i32) = (2020, 2021);

impl Ca {
    pub fn new(name: &str) -> Self {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, name);
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2100, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn bundle(&self) -> Arc<TrustBundle> {
        Arc::new(TrustBundle::from_pem(TrustDomain::default(), self.pem.as_bytes()).unwrap())
    }

    /// PEM chain and key for `uri` (one URI SAN, whatever the string is).
    pub fn issue_pem(&self, uri: &str, (from, to): (i32, i32)) -> (String, String) {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = vec![SanType::URI(uri.try_into().unwrap())];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = date_time_ymd(from, 1, 1);
        params.not_after = date_time_ymd(to, 1, 1);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    pub fn issue(&self, id: &SpiffeId, validity: (i32, i32)) -> Certificate {
        let (chain, key) = self.issue_pem(id.as_str(), validity);
        Certificate::from_pem(chain.as_bytes(), key.as_bytes()).unwrap()
    }

    pub fn client_tls(&self, id: &SpiffeId, validity: (i32, i32)) -> ClientTls {
        ClientTls::new(
            Arc::new(CertResolver::new(self.issue(id, validity))),
            self.bundle(),
        )
    }
}

// === upstreams ===

/// An echo server; half-closes its side after the client's EOF.
pub async fn echo_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = stream.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    addr
}

/// Reads to EOF, then answers with the number of bytes read and closes: passes only if the
/// client's half-close arrives as a FIN while the way back stays open.
pub async fn count_then_reply_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = Vec::new();
                stream.read_to_end(&mut buf).await.unwrap();
                stream
                    .write_all(format!("got {}", buf.len()).as_bytes())
                    .await
                    .unwrap();
                stream.shutdown().await.unwrap();
            });
        }
    });
    addr
}

/// An address where nothing listens.
pub async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

// === HBONE ===

/// Connects straight to the authority, as the agent does inside the pod's namespace.
#[derive(Default)]
pub struct DirectHandler {
    /// Service accounts refused with 401, as ztunnel refuses a policy denial.
    pub deny: Vec<String>,
    pub summaries: Mutex<Vec<TunnelSummary>>,
    pub requests: Mutex<Vec<InboundConnect>>,
}

impl ConnectHandler for DirectHandler {
    type Upstream = TcpStream;

    async fn connect(&self, req: InboundConnect) -> Result<TcpStream, Refusal> {
        self.requests.lock().push(req.clone());
        if self.deny.iter().any(|sa| sa == req.peer.service_account()) {
            return Err(Refusal::new(
                StatusCode::UNAUTHORIZED,
                "denied by test policy",
            ));
        }
        TcpStream::connect(req.authority)
            .await
            .map_err(|e| Refusal::new(StatusCode::SERVICE_UNAVAILABLE, e.to_string()))
    }

    fn on_close(&self, summary: &TunnelSummary) {
        self.summaries.lock().push(TunnelSummary {
            peer: summary.peer.clone(),
            remote: summary.remote,
            authority: summary.authority,
            bytes_from_peer: summary.bytes_from_peer,
            bytes_to_peer: summary.bytes_to_peer,
            duration: summary.duration,
            error: None,
        });
    }
}

/// Refuses the listed service accounts during the handshake.
#[derive(Debug)]
pub struct DenyList(pub Vec<String>);

impl PeerPolicy for DenyList {
    fn admit(&self, peer: &SpiffeId) -> Result<(), String> {
        match self.0.iter().any(|sa| sa == peer.service_account()) {
            true => Err(format!("{} is on the deny list", peer.service_account())),
            false => Ok(()),
        }
    }
}

pub struct Server {
    pub addr: SocketAddr,
    pub cert: Arc<CertResolver>,
    pub handler: Arc<DirectHandler>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Server {
    pub async fn start(ca: &Ca, id: &SpiffeId) -> Self {
        Self::start_with(
            ca,
            ca.issue(id, VALID),
            DirectHandler::default(),
            None,
            ServerOptions::default(),
        )
        .await
    }

    pub async fn start_with(
        ca: &Ca,
        cert: Certificate,
        handler: DirectHandler,
        policy: Option<Arc<dyn PeerPolicy>>,
        options: ServerOptions,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::start_on(listener, ca, cert, handler, policy, options)
    }

    pub fn start_on(
        listener: TcpListener,
        ca: &Ca,
        cert: Certificate,
        handler: DirectHandler,
        policy: Option<Arc<dyn PeerPolicy>>,
        options: ServerOptions,
    ) -> Self {
        let cert = Arc::new(CertResolver::new(cert));
        let tls = server_config(cert.clone(), ca.bundle(), policy).unwrap();
        let handler = Arc::new(handler);
        let server = HboneServer::new(listener, tls, handler.clone()).with_options(options);
        let addr = server.local_addr().unwrap();
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(server.run(async {
            let _ = rx.await;
        }));
        Self {
            addr,
            cert,
            handler,
            shutdown: Some(tx),
            task,
        }
    }

    /// Shuts the server down and waits for its drain to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        (&mut self.task).await.unwrap();
    }
}

/// Plain sockets, counting how many were dialled.
#[derive(Debug, Default)]
pub struct CountingSockets(pub AtomicUsize);

impl CountingSockets {
    pub fn dialled(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

impl SocketFactory for CountingSockets {
    fn new_tcp(&self, dst: SocketAddr) -> io::Result<TcpSocket> {
        self.0.fetch_add(1, Ordering::SeqCst);
        PlainSocketFactory.new_tcp(dst)
    }
}

pub fn client(sockets: &Arc<CountingSockets>) -> HboneClient {
    HboneClient::new(sockets.clone(), Default::default())
}
