use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    PublicKeyData, SanType, SerialNumber, date_time_ymd,
};
use rcgen::{DistinguishedName, string::Ia5String};
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use super::*;
use crate::certs::{SignFuture, SignRequest, SignedCertificate};
use crate::tls::{ClientTls, peer_identity, server_config};

fn id(sa: &str) -> SpiffeId {
    format!("spiffe://cluster.local/ns/default/sa/{sa}")
        .parse()
        .unwrap()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Issue,
    /// The CA is unavailable: retryable.
    Fail,
    /// The CA refuses the identity: not retryable.
    Refuse,
}

/// A real CA: a self-signed P-256 root that signs the CSR's key for the lifetime the
/// request asks for, with exactly one URI SAN, the identity.
struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    root_pem: String,
    mode: Mutex<Mode>,
    backdate: Mutex<Duration>,
    calls: AtomicUsize,
    /// The public key of every certificate issued.
    keys: Mutex<Vec<Vec<u8>>>,
}

impl TestCa {
    fn new() -> Arc<Self> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "test root");
        params.not_before = date_time_ymd(2020, 1, 1);
        params.not_after = date_time_ymd(2100, 1, 1);
        let root = params.self_signed(&key).unwrap();
        Arc::new(Self {
            root_pem: root.pem(),
            issuer: Issuer::new(params, key),
            mode: Mutex::new(Mode::Issue),
            backdate: Mutex::new(Duration::ZERO),
            calls: AtomicUsize::new(0),
            keys: Mutex::default(),
        })
    }

    fn set(&self, mode: Mode) {
        *self.mode.lock() = mode;
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn issue(&self, request: &SignRequest) -> Result<SignedCertificate, SignError> {
        let csr = CertificateSigningRequestParams::from_pem(&request.csr_pem).unwrap();
        assert_eq!(
            csr.params.subject_alt_names,
            vec![SanType::URI(
                Ia5String::try_from(request.identity.as_str()).unwrap()
            )],
            "the CSR must ask for exactly the identity"
        );
        let ttl = request.ttl.expect("each test asks for a short lifetime");
        // Whole seconds, as X.509 times are: the lifetime is then exactly `ttl`.
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = csr.params.subject_alt_names.clone();
        let issued = date_time_ymd(1970, 1, 1) + Duration::from_secs(now.as_secs());
        // A CA may start validity in the past, for peers whose clocks lag.
        params.not_before = issued - *self.backdate.lock();
        params.not_after = issued + ttl;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(SerialNumber::from(self.calls() as u64));
        let signing = CertificateSigningRequestParams {
            params,
            public_key: csr.public_key,
        };
        let cert = signing.signed_by(&self.issuer).unwrap();
        self.keys
            .lock()
            .push(signing.public_key.der_bytes().to_vec());
        Ok(SignedCertificate {
            chain_pem: vec![cert.pem()],
            trust_roots_pem: vec![self.root_pem.clone()],
        })
    }
}

impl Signer for TestCa {
    fn sign(&self, request: SignRequest) -> SignFuture<'_> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::SeqCst);
            match *self.mode.lock() {
                Mode::Issue => self.issue(&request),
                Mode::Fail => Err(SignError {
                    message: "CA unavailable".to_owned(),
                    retryable: true,
                }),
                Mode::Refuse => Err(SignError {
                    message: "identity is not scheduled on this node".to_owned(),
                    retryable: false,
                }),
            }
        })
    }
}

fn manager(ca: &Arc<TestCa>, ttl: Duration) -> CertManager {
    CertManager::new(
        ca.clone(),
        CertManagerOptions {
            ttl: Some(ttl),
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            ..CertManagerOptions::default()
        },
    )
}

/// Waits (a bounded time) for a state that satisfies `f`.
async fn wait_for(
    rx: &mut watch::Receiver<CertState>,
    within: Duration,
    what: &str,
    f: impl FnMut(&CertState) -> bool,
) -> CertState {
    tokio::time::timeout(within, rx.wait_for(f))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .unwrap()
        .clone()
}

fn leaf(state: &CertState) -> CertificateDer<'static> {
    state.certificate.as_ref().unwrap().chain()[0].clone()
}

/// A real TLS 1.3 handshake over a pipe; returns the leaf the server presented and the
/// identity the server authenticated.
async fn handshake(
    server: Arc<ServerConfig>,
    client: Arc<ClientConfig>,
) -> (CertificateDer<'static>, SpiffeId) {
    let (client_io, server_io) = tokio::io::duplex(64 * 1024);
    let name = ServerName::try_from("weft.invalid").unwrap();
    let (server, client) = tokio::join!(
        TlsAcceptor::from(server).accept(server_io),
        TlsConnector::from(client).connect(name, client_io),
    );
    let (server, client) = (server.unwrap(), client.unwrap());
    let presented = client.get_ref().1.peer_certificates().unwrap()[0].clone();
    (presented, peer_identity(server.get_ref().1).unwrap())
}

#[tokio::test]
async fn first_certificate_verifies_in_a_real_handshake() {
    let ca = TestCa::new();
    let manager = manager(&ca, Duration::from_secs(60));
    let server = manager.watch(id("server"));
    let client = manager.watch(id("client"));
    assert_eq!(server.status().phase, CertPhase::Pending { error: None });

    let within = Duration::from_secs(5);
    let (server_cert, bundle) = tokio::time::timeout(within, server.ready())
        .await
        .unwrap()
        .unwrap();
    let (client_cert, client_bundle) = tokio::time::timeout(within, client.ready())
        .await
        .unwrap()
        .unwrap();
    let state = server.state();
    assert_eq!(state.phase(), CertPhase::Valid);
    let cert = state.certificate.clone().unwrap();
    assert_eq!(cert.identity(), &id("server"));
    assert!(Arc::ptr_eq(&server_cert, state.resolver.as_ref().unwrap()));
    // The lifetime asked for, renewal at half of it.
    let not_before = state.not_before.unwrap();
    assert_eq!(cert.not_after(), not_before + Duration::from_secs(60));
    assert_eq!(
        state.next_renewal,
        Some(not_before + Duration::from_secs(30))
    );

    let server_config = server_config(server_cert, bundle, None).unwrap();
    let client_config = ClientTls::new(client_cert, client_bundle)
        .config_for(&[id("server")])
        .unwrap();
    let (presented, client_id) = handshake(server_config, client_config).await;
    assert_eq!(presented, leaf(&state));
    assert_eq!(client_id, id("client"));

    let statuses = manager.statuses();
    assert_eq!(
        statuses.iter().map(|s| &s.identity).collect::<Vec<_>>(),
        [&id("client"), &id("server")]
    );
    assert_eq!(statuses[1].phase, CertPhase::Valid);
    assert_eq!(statuses[1].not_after, Some(cert.not_after()));
    assert_eq!(ca.calls(), 2);
}

#[tokio::test]
async fn a_backdated_certificate_is_renewed_at_half_of_its_remaining_life() {
    let ca = TestCa::new();
    *ca.backdate.lock() = Duration::from_secs(300);
    let manager = manager(&ca, Duration::from_secs(4));
    let certs = manager.watch(id("server"));
    certs.ready().await.unwrap();
    let state = certs.state();
    let not_after = state.certificate.as_ref().unwrap().not_after();
    // Half of the 4 s from issue, not half of the 304 s since not_before (long past).
    assert_eq!(state.next_renewal, Some(not_after - Duration::from_secs(2)));
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(ca.calls(), 1, "renewed before half-life");
}

#[tokio::test]
async fn renews_at_half_life_with_a_new_key_through_the_same_resolver() {
    let ca = TestCa::new();
    let manager = manager(&ca, Duration::from_secs(4));
    let server = manager.watch(id("server"));
    let client = manager.watch(id("client"));
    let (resolver, bundle) = server.ready().await.unwrap();
    let (client_cert, client_bundle) = client.ready().await.unwrap();
    // Built once, before the renewal.
    let server_config = server_config(resolver.clone(), bundle, None).unwrap();
    let client_tls = ClientTls::new(client_cert, client_bundle);
    let first = server.state();
    // Half of the issued lifetime, which is the 4 s asked for.
    let not_before = first.not_before.unwrap();
    let renew_at = not_before + Duration::from_secs(2);
    assert_eq!(first.next_renewal, Some(renew_at));
    let (presented, _) = handshake(
        server_config.clone(),
        client_tls.config_for(&[id("server")]).unwrap(),
    )
    .await;
    assert_eq!(presented, leaf(&first));

    let mut rx = server.subscribe();
    let second = wait_for(&mut rx, Duration::from_secs(5), "the renewal", |s| {
        s.certificate.is_some() && s.not_before != first.not_before
    })
    .await;
    let renewed_at = SystemTime::now();
    assert!(renewed_at >= renew_at, "renewed before the half-life");
    assert!(
        renewed_at < renew_at + Duration::from_secs(1),
        "renewed {:?} after the half-life",
        renewed_at.duration_since(renew_at).unwrap()
    );
    assert_eq!(second.phase(), CertPhase::Valid);
    assert_ne!(leaf(&second), leaf(&first));
    assert!(Arc::ptr_eq(second.resolver.as_ref().unwrap(), &resolver));
    // Two for the server (so far), one for the client, all different.
    let keys = ca.keys.lock().clone();
    assert!(keys.len() >= 3);
    for (i, key) in keys.iter().enumerate() {
        assert!(!keys[..i].contains(key), "a key was used twice");
    }

    let (presented, _) = handshake(
        server_config,
        client_tls.config_for(&[id("server")]).unwrap(),
    )
    .await;
    assert_eq!(
        presented,
        leaf(&second),
        "the next handshake uses the new cert"
    );
}

#[tokio::test]
async fn failing_ca_keeps_the_certificate_until_expiry_then_recovers() {
    let ca = TestCa::new();
    let manager = manager(&ca, Duration::from_secs(3));
    let certs = manager.watch(id("server"));
    let (resolver, _) = certs.ready().await.unwrap();
    let first = certs.state();
    let not_after = first.certificate.as_ref().unwrap().not_after();
    ca.set(Mode::Fail);

    let mut rx = certs.subscribe();
    let failing = wait_for(&mut rx, Duration::from_secs(4), "a failure", |s| {
        s.last_error.is_some()
    })
    .await;
    assert!(SystemTime::now() < not_after);
    assert_eq!(leaf(&failing), leaf(&first), "the old certificate is kept");
    assert!(matches!(
        failing.phase(),
        CertPhase::RetryingAfterError { error } if error.contains("CA unavailable")
    ));

    let expired = wait_for(&mut rx, Duration::from_secs(4), "the expiry", |s| {
        s.certificate.is_none()
    })
    .await;
    assert!(SystemTime::now() >= not_after, "expired early");
    assert_eq!(expired.expired_at, Some(not_after));
    assert!(matches!(
        expired.phase(),
        CertPhase::Expired { error: Some(_) }
    ));
    let status = manager.statuses().pop().unwrap();
    assert_eq!(status.phase.as_str(), "expired");
    assert_eq!(status.not_after, Some(not_after));
    let failures = ca.calls() - 1;
    assert!(failures >= 3, "retried only {failures} times");
    // Retrying goes on after the expiry.
    let before = ca.calls();
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(ca.calls() > before, "stopped retrying after the expiry");

    ca.set(Mode::Issue);
    let recovered = wait_for(&mut rx, Duration::from_secs(2), "the recovery", |s| {
        s.certificate.is_some()
    })
    .await;
    assert_eq!(recovered.phase(), CertPhase::Valid);
    assert_eq!(recovered.expired_at, None);
    assert!(Arc::ptr_eq(recovered.resolver.as_ref().unwrap(), &resolver));
    assert_eq!(resolver.current().chain()[0], leaf(&recovered));
}

#[tokio::test]
async fn refused_identity_stays_pending_and_is_retried() {
    let ca = TestCa::new();
    ca.set(Mode::Refuse);
    let manager = manager(&ca, Duration::from_secs(60));
    let certs = manager.watch(id("server"));
    let mut rx = certs.subscribe();
    let refused = wait_for(&mut rx, Duration::from_secs(2), "the refusal", |s| {
        s.last_error.is_some()
    })
    .await;
    assert!(matches!(
        refused.phase(),
        CertPhase::Pending { error: Some(error) } if error.contains("not scheduled on this node")
    ));
    assert!(certs.resolver().is_none());
    let ready = tokio::time::timeout(Duration::from_millis(100), certs.ready()).await;
    assert!(ready.is_err(), "ready without a certificate");

    ca.set(Mode::Issue);
    tokio::time::timeout(Duration::from_secs(2), certs.ready())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(certs.status().phase, CertPhase::Valid);
}

#[tokio::test]
async fn handles_share_one_task_which_stops_with_the_last() {
    let ca = TestCa::new();
    let manager = manager(&ca, Duration::from_secs(2));
    let a = manager.watch(id("server"));
    let b = manager.watch(id("server"));
    let c = a.clone();
    let (resolver, _) = a.ready().await.unwrap();
    b.ready().await.unwrap();
    assert!(Arc::ptr_eq(&c.resolver().unwrap(), &resolver));
    assert_eq!(ca.calls(), 1);

    let first = a.state();
    let mut rx = b.subscribe();
    wait_for(&mut rx, Duration::from_secs(3), "the renewal", |s| {
        s.certificate.is_some() && s.not_before != first.not_before
    })
    .await;
    assert_eq!(ca.calls(), 2, "one request per renewal, not per handle");

    drop((a, b, c));
    assert!(manager.statuses().is_empty(), "the identity is forgotten");
    let stopped = tokio::time::timeout(Duration::from_secs(1), rx.changed()).await;
    assert!(stopped.unwrap().is_err(), "the task has stopped");
    // Past the next renewal point: nobody asks.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(ca.calls(), 2);

    // A later watch starts afresh.
    let again = manager.watch(id("server"));
    let (new_resolver, _) = again.ready().await.unwrap();
    assert!(!Arc::ptr_eq(&new_resolver, &resolver));
    assert_eq!(ca.calls(), 3);
}

#[test]
fn a_watch_from_another_runtime_replaces_a_task_that_died_with_its_runtime() {
    let ca = TestCa::new();
    let manager = manager(&ca, Duration::from_secs(60));
    let runtime = || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    };
    let first = runtime();
    let old = first.block_on(async {
        let certs = manager.watch(id("server"));
        certs.ready().await.unwrap();
        certs
    });
    drop(first);

    let second = runtime();
    let new = second.block_on(async {
        let err = old.ready().await.unwrap_err();
        assert!(matches!(err, CertError::Stopped { .. }), "{err}");
        let certs = manager.watch(id("server"));
        tokio::time::timeout(Duration::from_secs(2), certs.ready())
            .await
            .unwrap()
            .unwrap();
        certs
    });
    assert_eq!(ca.calls(), 2);
    // Dropping the dead handle leaves the new task's registration alone.
    drop(old);
    assert_eq!(manager.statuses().len(), 1);
    second.block_on(async {
        let again = manager.watch(id("server"));
        assert!(Arc::ptr_eq(
            &again.resolver().unwrap(),
            &new.resolver().unwrap()
        ));
    });
    assert_eq!(ca.calls(), 2);
    drop(new);
    assert_eq!(
        manager.statuses().len(),
        0,
        "the identity is forgotten with its last handle"
    );
}

#[test]
fn phase_names_list_every_phase() {
    let phases = [
        CertPhase::Pending { error: None },
        CertPhase::Valid,
        CertPhase::Renewing,
        CertPhase::RetryingAfterError {
            error: String::new(),
        },
        CertPhase::Expired { error: None },
    ];
    let names: Vec<&str> = phases.iter().map(CertPhase::as_str).collect();
    assert_eq!(names, CertPhase::NAMES);
}
