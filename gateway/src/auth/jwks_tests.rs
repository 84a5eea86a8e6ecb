//! JWKS from a real HTTPS server on 127.0.0.1 (test CA) and from a file: fetching,
//! rotation, and servers that hang or serve garbage.

use std::time::{Duration, Instant};

use super::{
    AuthError, AuthMetrics, AuthPolicy, Authenticated, Authenticator, FetchLimits, JwksRegistry,
    Rejection, test_support::*,
};
use weft_proto::discovery::v1 as pb;

/// Short bounds so the hanging server costs a second, not five.
fn limits() -> FetchLimits {
    FetchLimits {
        connect_timeout: Duration::from_millis(800),
        total_timeout: Duration::from_millis(800),
        retry_after_error: Duration::from_millis(200),
        ..FetchLimits::default()
    }
}

struct Setup {
    policy: AuthPolicy,
    auth: Authenticator,
    metrics: AuthMetrics,
    registry: JwksRegistry,
}

fn setup(prov: pb::JwtProvider, limits: FetchLimits) -> Setup {
    let policy = AuthPolicy::try_from(&policy(false, vec![prov])).unwrap();
    let metrics = AuthMetrics::default();
    let registry = JwksRegistry::with_limits(metrics.clone(), limits);
    let consumers = [consumer("alice", &[], &["alice"], "demo/gold")];
    let auth = Authenticator::new(&consumers, [&policy], &registry).unwrap();
    Setup {
        policy,
        auth,
        metrics,
        registry,
    }
}

fn https_provider(server: &JwksServer) -> pb::JwtProvider {
    let mut p = provider("idp");
    p.jwks_uri = server.uri();
    p.jwks_ca_pem = server.ca_pem.clone();
    p
}

async fn run(s: &Setup, token: &str) -> Result<Authenticated, AuthError> {
    let mut p = parts("/demo/x", &[("authorization", &bearer(token))]);
    s.auth.authenticate(&s.policy, &mut p, client()).await
}

fn reason(r: Result<Authenticated, AuthError>) -> Rejection {
    match r {
        Err(AuthError::Invalid { reason, .. }) => reason,
        other => panic!("expected a refused credential, got {other:?}"),
    }
}

#[tokio::test]
async fn keys_fetched_over_https_verify_every_algorithm() {
    let (rsa, ec, ed) = (TestKey::rsa("r"), TestKey::p256("e"), TestKey::ed25519("d"));
    let server = JwksServer::start(Serve::Json(jwks(&[&rsa, &ec, &ed]))).await;
    let s = setup(https_provider(&server), limits());
    for key in [&rsa, &ec, &ed] {
        let ok = run(&s, &key.token(&claims("alice"))).await.unwrap();
        assert_eq!(&*ok.consumer.unwrap().name, "alice");
    }
    let other = TestKey::ed25519("d");
    assert_eq!(
        reason(run(&s, &other.token(&claims("alice"))).await),
        Rejection::BadSignature
    );
    // One fetch served all of them.
    assert_eq!(server.connections(), 1);
    assert_eq!(s.metrics.jwks_fetch_errors("idp"), 0);
}

#[tokio::test]
async fn a_rotated_key_is_fetched_once_for_its_unknown_kid() {
    let (old, new) = (TestKey::p256("old"), TestKey::p256("new"));
    let server = JwksServer::start(Serve::Json(jwks(&[&old]))).await;
    let s = setup(https_provider(&server), limits());
    run(&s, &old.token(&claims("alice"))).await.unwrap();
    assert_eq!(server.connections(), 1);

    // The issuer rotates: only the new key is published.
    server.set(Serve::Json(jwks(&[&new])));
    run(&s, &new.token(&claims("alice"))).await.unwrap();
    assert_eq!(
        server.connections(),
        2,
        "the unknown kid fetched the set again"
    );
    assert_eq!(
        reason(run(&s, &old.token(&claims("alice"))).await),
        Rejection::UnknownKey,
        "the retired key is gone"
    );
    // Made-up kids do not fetch again within the interval.
    let forged = TestKey::p256("random-kid");
    for _ in 0..5 {
        assert_eq!(
            reason(run(&s, &forged.token(&claims("alice"))).await),
            Rejection::UnknownKey
        );
    }
    assert_eq!(server.connections(), 2);
}

#[tokio::test]
async fn a_hanging_jwks_url_is_bounded_and_keeps_the_old_keys() {
    let key = TestKey::rsa("k");
    let server = JwksServer::start(Serve::Hang).await;
    let s = setup(https_provider(&server), limits());
    // First fetch: requests wait for it, but only as long as the fetch bound.
    let started = Instant::now();
    assert_eq!(
        reason(run(&s, &key.token(&claims("alice"))).await),
        Rejection::KeysUnavailable
    );
    let waited = started.elapsed();
    assert!(waited < Duration::from_millis(2000), "waited {waited:?}");
    // After the failed first fetch, requests are answered at once.
    let started = Instant::now();
    assert_eq!(
        reason(run(&s, &key.token(&claims("alice"))).await),
        Rejection::KeysUnavailable
    );
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(s.metrics.jwks_fetch_errors("idp") >= 1);

    // Now serve keys; the retry picks them up.
    server.set(Serve::Json(jwks(&[&key])));
    let deadline = Instant::now() + Duration::from_secs(10);
    while run(&s, &key.token(&claims("alice"))).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "keys never fetched after the hang"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The server hangs again at the next refresh; held keys keep working.
    server.set(Serve::Hang);
    let errors = s.metrics.jwks_fetch_errors("idp");
    let rotated = TestKey::rsa("unknown");
    let started = Instant::now();
    assert_eq!(
        reason(run(&s, &rotated.token(&claims("alice"))).await),
        Rejection::UnknownKey
    );
    assert!(started.elapsed() < Duration::from_millis(2000));
    assert_eq!(s.metrics.jwks_fetch_errors("idp"), errors + 1);
    run(&s, &key.token(&claims("alice"))).await.unwrap();
}

#[tokio::test]
async fn garbage_from_the_jwks_url_keeps_the_old_keys_and_is_counted() {
    let key = TestKey::ed25519("k");
    let server = JwksServer::start(Serve::Json(jwks(&[&key]))).await;
    let mut prov = https_provider(&server);
    prov.jwks_refresh_ms = 1000; // the shortest refresh accepted
    let s = setup(prov, limits());
    run(&s, &key.token(&claims("alice"))).await.unwrap();
    for bad in [
        Serve::Garbage,
        Serve::Json(r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}"#.into()),
        Serve::Json(format!("{{\"keys\": [\"{}\"]}}", "x".repeat(300 * 1024))),
    ] {
        let before = s.metrics.jwks_fetch_errors("idp");
        server.set(bad);
        let deadline = Instant::now() + Duration::from_secs(10);
        while s.metrics.jwks_fetch_errors("idp") == before {
            assert!(Instant::now() < deadline, "no refresh failed");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        run(&s, &key.token(&claims("alice"))).await.unwrap();
    }
}

#[tokio::test]
async fn a_jwks_server_outside_the_trust_anchors_is_refused() {
    let key = TestKey::p256("k");
    let server = JwksServer::start(Serve::Json(jwks(&[&key]))).await;
    let mut prov = https_provider(&server);
    prov.jwks_ca_pem.clear();
    let s = setup(prov, limits());
    assert_eq!(
        reason(run(&s, &key.token(&claims("alice"))).await),
        Rejection::KeysUnavailable
    );
    assert!(s.metrics.jwks_fetch_errors("idp") >= 1);
}

#[tokio::test]
async fn a_jwks_file_is_read_again_with_each_configuration_version() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("jwks.json");
    let (first, second) = (TestKey::rsa("1"), TestKey::p256("2"));
    std::fs::write(&path, jwks(&[&first])).unwrap();
    let mut prov = provider("file-idp");
    prov.jwks_file = path.display().to_string();
    let policy = AuthPolicy::try_from(&policy(false, vec![prov])).unwrap();
    let metrics = AuthMetrics::default();
    let registry = JwksRegistry::with_limits(metrics.clone(), limits());
    let v1 = Authenticator::new(&[], [&policy], &registry).unwrap();
    let mut p = parts(
        "/x",
        &[("authorization", &bearer(&first.token(&claims("a"))))],
    );
    v1.authenticate(&policy, &mut p, client()).await.unwrap();

    std::fs::write(&path, jwks(&[&second])).unwrap();
    let v2 = Authenticator::new(&[], [&policy], &registry).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let mut p = parts(
            "/x",
            &[("authorization", &bearer(&second.token(&claims("a"))))],
        );
        if v2.authenticate(&policy, &mut p, client()).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the new file was not read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A file that turns bad keeps the keys read before.
    std::fs::write(&path, "{not json").unwrap();
    let before = metrics.jwks_fetch_errors("file-idp");
    let _v3 = Authenticator::new(&[], [&policy], &registry).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while metrics.jwks_fetch_errors("file-idp") == before {
        assert!(Instant::now() < deadline, "the bad file was not read");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut p = parts(
        "/x",
        &[("authorization", &bearer(&second.token(&claims("a"))))],
    );
    v2.authenticate(&policy, &mut p, client()).await.unwrap();
}

#[tokio::test]
async fn a_shut_downregistry_fetches_no_more_but_keeps_its_keys() {
    let key = TestKey::p256("k");
    let server = JwksServer::start(Serve::Json(jwks(&[&key]))).await;
    let s = setup(https_provider(&server), limits());
    run(&s, &key.token(&claims("alice"))).await.unwrap();
    s.registry.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let unknown = TestKey::p256("new");
    assert_eq!(
        reason(run(&s, &unknown.token(&claims("alice"))).await),
        Rejection::UnknownKey
    );
    assert_eq!(server.connections(), 1);
    run(&s, &key.token(&claims("alice"))).await.unwrap();
}

#[test]
fn a_key_set_keeps_signature_keys_of_known_kinds_up_to_the_bound() {
    use super::KeySet;
    let ec = TestKey::p256("e");
    let mut enc = ec.jwk();
    enc["use"] = "enc".into();
    enc["kid"] = "enc".into();
    let mut wrong_alg = ec.jwk();
    wrong_alg["alg"] = "RS256".into();
    let doc = serde_json::json!({"keys": [
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac"},
        {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
        {"kty": "weird"},
        "not an object",
        enc,
        wrong_alg,
        ec.jwk(),
    ]});
    let set = KeySet::parse(doc.to_string().as_bytes()).unwrap();
    let kids: Vec<_> = set.keys.iter().map(|k| k.kid.clone()).collect();
    assert_eq!(kids, [Some("e".to_string())]);

    let many: Vec<_> = (0..super::jwks::MAX_KEYS + 10)
        .map(|i| {
            let mut k = ec.jwk();
            k["kid"] = i.to_string().into();
            k
        })
        .collect();
    let set = KeySet::parse(serde_json::json!({ "keys": many }).to_string().as_bytes()).unwrap();
    assert_eq!(set.keys.len(), super::jwks::MAX_KEYS);

    for bad in [
        "",
        "[]",
        "{}",
        "{\"keys\": []}",
        "{\"keys\": [{\"kty\": \"oct\", \"k\": \"AA\"}]}",
    ] {
        assert!(KeySet::parse(bad.as_bytes()).is_err(), "{bad}");
    }
}
