//! JWT verification through `Authenticator::authenticate`, with keys inline in the policy
//! (the HTTPS and file sources are in `jwks_tests`).

use http::{StatusCode, header};
use serde_json::{Value, json};

use super::{
    AuthError, AuthMethod, AuthMetrics, AuthPolicy, Authenticator, JwksRegistry, Rejection,
    test_support::*,
};
use weft_proto::discovery::v1 as pb;

struct Fixture {
    rsa: TestKey,
    ec: TestKey,
    ed: TestKey,
    policy: AuthPolicy,
    auth: Authenticator,
}

fn fixture_with(edit: impl FnOnce(&mut pb::ApiPolicy)) -> Fixture {
    let (rsa, ec, ed) = (
        TestKey::rsa("r1"),
        TestKey::p256("e1"),
        TestKey::ed25519("d1"),
    );
    let mut p = provider("idp");
    p.jwks_inline = jwks(&[&rsa, &ec, &ed]);
    p.claim_to_headers.push(pb::ClaimToHeader {
        claim: "tier".into(),
        header: "x-tier".into(),
    });
    let mut pb_policy = policy(false, vec![p]);
    edit(&mut pb_policy);
    let policy = AuthPolicy::try_from(&pb_policy).unwrap();
    let consumers = [consumer("alice", &[], &["alice"], "demo/gold")];
    let registry = JwksRegistry::new(AuthMetrics::default());
    let auth = Authenticator::new(&consumers, [&policy], &registry).unwrap();
    Fixture {
        rsa,
        ec,
        ed,
        policy,
        auth,
    }
}

fn fixture() -> Fixture {
    fixture_with(|_| {})
}

async fn run(f: &Fixture, token: &str) -> Result<super::Authenticated, AuthError> {
    let mut parts = parts("/demo/x", &[("authorization", &bearer(token))]);
    f.auth.authenticate(&f.policy, &mut parts, client()).await
}

fn challenge(e: &AuthError) -> Vec<String> {
    e.challenges()
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn valid_tokens_of_each_algorithm_pass_and_map_to_consumer_and_headers() {
    let f = fixture();
    for key in [&f.rsa, &f.ec, &f.ed] {
        let mut c = claims("alice");
        c["tier"] = json!(3);
        let token = key.token(&c);
        let mut parts = parts(
            "/demo/x",
            &[
                ("authorization", &bearer(&token)),
                // A client's own copy of a claim header never reaches the upstream.
                ("x-user", "mallory"),
            ],
        );
        let ok = f
            .auth
            .authenticate(&f.policy, &mut parts, client())
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", key.alg()));
        assert_eq!(ok.method, AuthMethod::Jwt);
        let consumer = ok.consumer.as_ref().expect("alice is a consumer");
        assert_eq!(&*consumer.name, "alice");
        assert_eq!(consumer.plan.as_deref(), Some("demo/gold"));
        assert_eq!(ok.subject.as_deref(), Some("alice"));
        assert!(
            parts.headers.get(header::AUTHORIZATION).is_none(),
            "token stripped"
        );
        assert!(parts.headers.get("x-user").is_none(), "client copy removed");
        let headers: Vec<(String, String)> = ok
            .claim_headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            headers,
            [
                ("x-user".into(), "alice".into()),
                ("x-tier".into(), "3".into())
            ]
        );
        ok.apply_headers(&mut parts.headers);
        assert_eq!(parts.headers["x-user"], "alice");
    }
}

#[tokio::test]
async fn a_subject_without_consumer_passes_without_consumer() {
    let f = fixture();
    let ok = run(&f, &f.ec.token(&claims("bob"))).await.unwrap();
    assert_eq!(ok.consumer, None);
    assert_eq!(ok.subject.as_deref(), Some("bob"));
}

fn hs256(secret: &[u8], claims: &Value) -> String {
    let message = format!(
        "{}.{}",
        b64(json!({"alg": "HS256", "typ": "JWT"}).to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, message.as_bytes());
    format!("{message}.{}", b64(tag.as_ref()))
}

#[tokio::test]
async fn bad_tokens_get_401_with_the_reason_and_a_bearer_challenge() {
    let f = fixture();
    let now = now();
    let good = f.rsa.token(&claims("alice"));
    let other = TestKey::rsa("r1"); // same kid, different key
    let mut expired = claims("alice");
    expired["exp"] = json!(now - 3600);
    let mut early = claims("alice");
    early["nbf"] = json!(now + 3600);
    let mut wrong_aud = claims("alice");
    wrong_aud["aud"] = json!(["other", "another"]);
    let mut no_aud = claims("alice");
    no_aud.as_object_mut().unwrap().remove("aud");
    let mut no_exp = claims("alice");
    no_exp.as_object_mut().unwrap().remove("exp");
    let mut wrong_iss = claims("alice");
    wrong_iss["iss"] = json!("https://evil.example");
    let mut big = claims("alice");
    big["pad"] = json!("x".repeat(9 * 1024));
    let (h, p, s) = {
        let mut it = good.split('.');
        (it.next().unwrap(), it.next().unwrap(), it.next().unwrap())
    };
    let none = format!(
        "{}.{p}.",
        b64(json!({"alg": "none", "typ": "JWT"}).to_string().as_bytes())
    );
    let none_signed = format!(
        "{}.{p}.{s}",
        b64(json!({"alg": "none", "kid": "r1"}).to_string().as_bytes())
    );
    // The public key used as an HMAC secret: the classic key-confusion forgery.
    let hs = hs256(&f.rsa.public_bytes(), &claims("alice"));
    let hs_jwk_n = hs256(
        f.rsa.jwk()["n"].as_str().unwrap().as_bytes(),
        &claims("alice"),
    );
    // ES256 header naming the RSA key.
    let confused = f
        .rsa
        .token_with_header(&json!({"alg": "ES256", "kid": "r1"}), &claims("alice"));
    let crit = f.rsa.token_with_header(
        &json!({"alg": "RS256", "kid": "r1", "crit": ["exp"]}),
        &claims("alice"),
    );
    let tampered = format!("{h}.{}.{s}", b64(claims("mallory").to_string().as_bytes()));
    let cases: Vec<(&str, String, Rejection)> = vec![
        ("not a jwt", "abc".into(), Rejection::Malformed),
        ("two segments", "a.b".into(), Rejection::Malformed),
        ("four segments", format!("{good}.x"), Rejection::Malformed),
        (
            "bad characters",
            format!("{h}.{p}.{s}=="),
            Rejection::Malformed,
        ),
        (
            "header not json",
            format!("{}.{p}.{s}", b64(b"{nope")),
            Rejection::Malformed,
        ),
        ("empty header", format!(".{p}.{s}"), Rejection::Malformed),
        ("expired", f.rsa.token(&expired), Rejection::Expired),
        ("not yet valid", f.rsa.token(&early), Rejection::NotYetValid),
        (
            "wrong signature",
            other.token(&claims("alice")),
            Rejection::BadSignature,
        ),
        ("tampered payload", tampered, Rejection::BadSignature),
        (
            "wrong audience",
            f.ec.token(&wrong_aud),
            Rejection::WrongAudience,
        ),
        (
            "no audience",
            f.ec.token(&no_aud),
            Rejection::MissingClaim("aud"),
        ),
        (
            "no exp",
            f.ed.token(&no_exp),
            Rejection::MissingClaim("exp"),
        ),
        (
            "wrong issuer",
            f.ed.token(&wrong_iss),
            Rejection::UnknownIssuer,
        ),
        ("alg none", none, Rejection::UnsupportedAlgorithm),
        (
            "alg none with a signature",
            none_signed,
            Rejection::UnsupportedAlgorithm,
        ),
        (
            "HS256 with the public key",
            hs,
            Rejection::UnsupportedAlgorithm,
        ),
        (
            "HS256 with the JWK modulus",
            hs_jwk_n,
            Rejection::UnsupportedAlgorithm,
        ),
        ("alg not of the key", confused, Rejection::AlgorithmMismatch),
        ("crit header", crit, Rejection::UnsupportedAlgorithm),
        ("oversized", f.rsa.token(&big), Rejection::TooLarge),
    ];
    for (name, token, want) in cases {
        let e = run(&f, &token).await.expect_err(name);
        match &e {
            AuthError::Invalid { reason, method, .. } => {
                assert_eq!((*reason, *method), (want, AuthMethod::Jwt), "{name}");
            }
            other => panic!("{name}: {other:?}"),
        }
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED, "{name}");
        assert_eq!(
            challenge(&e),
            [format!(
                "Bearer realm=\"weft\", error=\"invalid_token\", error_description=\"{want}\""
            )],
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_token_names_an_unknown_kid_or_none() {
    let f = fixture();
    let unknown = f
        .rsa
        .token_with_header(&json!({"alg": "RS256", "kid": "nope"}), &claims("alice"));
    match run(&f, &unknown).await {
        Err(AuthError::Invalid { reason, .. }) => assert_eq!(reason, Rejection::UnknownKey),
        other => panic!("{other:?}"),
    }
    // Without kid every key of the algorithm's kind is tried.
    for key in [&f.rsa, &f.ec, &f.ed] {
        let token = key.token_with_header(&json!({"alg": key.alg()}), &claims("alice"));
        run(&f, &token).await.unwrap();
    }
}

#[tokio::test]
async fn missing_token_gets_a_plain_challenge_and_other_schemes_stay() {
    let f = fixture();
    let mut p = parts("/demo/x", &[("authorization", "Basic dXNlcjpwdw==")]);
    let e = f
        .auth
        .authenticate(&f.policy, &mut p, client())
        .await
        .unwrap_err();
    assert!(matches!(e, AuthError::Missing { .. }));
    assert_eq!(challenge(&e), ["Bearer realm=\"weft\""]);
    assert!(
        p.headers.get(header::AUTHORIZATION).is_some(),
        "not ours to strip"
    );
    let e = run(&f, "").await.unwrap_err();
    assert!(
        matches!(
            e,
            AuthError::Invalid {
                reason: Rejection::Malformed,
                ..
            }
        ),
        "{e:?}"
    );
}

#[tokio::test]
async fn clock_skew_is_allowed_on_both_sides() {
    let f = fixture_with(|p| {
        p.jwt.as_mut().unwrap().providers[0].clock_skew_ms = 60_000;
    });
    let now = now();
    let mut c = claims("alice");
    c["exp"] = json!(now - 20);
    c["nbf"] = json!(now + 20);
    run(&f, &f.ec.token(&c)).await.unwrap();
    c["exp"] = json!(now - 120);
    assert!(matches!(
        run(&f, &f.ec.token(&c)).await,
        Err(AuthError::Invalid {
            reason: Rejection::Expired,
            ..
        })
    ));
}

#[tokio::test]
async fn required_scopes_answer_403_with_the_scopes() {
    let f = fixture_with(|p| p.required_scopes = vec!["read".into(), "write".into()]);
    let mut c = claims("alice");
    c["scope"] = json!("read");
    let e = run(&f, &f.rsa.token(&c)).await.unwrap_err();
    assert_eq!(e.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        challenge(&e),
        ["Bearer realm=\"weft\", error=\"insufficient_scope\", scope=\"read write\""]
    );
    c["scope"] = json!("write admin read");
    let ok = run(&f, &f.rsa.token(&c)).await.unwrap();
    assert_eq!(ok.scopes, ["write", "admin", "read"]);
    // Arrays too, from a configured claim.
    let f = fixture_with(|p| {
        p.required_scopes = vec!["read".into()];
        p.jwt.as_mut().unwrap().providers[0].scope_claim = "scp".into();
    });
    let mut c = claims("alice");
    c["scp"] = json!(["read", 7]);
    assert_eq!(run(&f, &f.ed.token(&c)).await.unwrap().scopes, ["read"]);
    // Scopes past the bound are ignored, so a required one there is missing.
    let mut many: Vec<String> = (0..super::jwt::MAX_SCOPES)
        .map(|i| format!("s{i}"))
        .collect();
    many.push("read".into());
    c["scp"] = json!(many);
    let e = run(&f, &f.ed.token(&c)).await.unwrap_err();
    assert!(matches!(e, AuthError::InsufficientScope { .. }), "{e:?}");
    // Anonymous callers are asked for a token, not forbidden.
    let f = fixture_with(|p| {
        p.required_scopes = vec!["read".into()];
        p.allow_anonymous = true;
    });
    let mut p = parts("/demo/x", &[]);
    let e = f
        .auth
        .authenticate(&f.policy, &mut p, client())
        .await
        .unwrap_err();
    assert_eq!(e.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn claim_headers_take_scalars_with_valid_values_only() {
    let f = fixture();
    for (value, want) in [
        (json!("gold"), Some("gold")),
        (json!(true), Some("true")),
        (json!(2.5), Some("2.5")),
        (json!({"nested": 1}), None),
        (json!(["a"]), None),
        (json!("line\nbreak"), None),
    ] {
        let mut c = claims("alice");
        c["tier"] = value.clone();
        let ok = run(&f, &f.rsa.token(&c)).await.unwrap();
        let got = ok
            .claim_headers
            .iter()
            .find(|(k, _)| k == "x-tier")
            .map(|(_, v)| v.to_str().unwrap().to_string());
        assert_eq!(got.as_deref(), want, "{value}");
    }
}

#[tokio::test]
async fn the_response_is_json_with_challenges() {
    let f = fixture();
    let e = run(&f, "abc").await.unwrap_err();
    let response = e.into_response();
    assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(response.headers()[header::CONTENT_TYPE], "application/json");
    assert_eq!(
        response
            .headers()
            .get_all(header::WWW_AUTHENTICATE)
            .iter()
            .count(),
        1
    );
    let body: Value = serde_json::from_slice(response.body()).unwrap();
    assert_eq!(body["error"], "invalid_token");
    assert_eq!(body["error_description"], "the credential is malformed");
}

#[tokio::test]
async fn random_tokens_are_refused_without_panicking() {
    use aws_lc_rs::rand::{SecureRandom, SystemRandom};
    let f = fixture();
    let rng = SystemRandom::new();
    let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_.";
    let good = f.rsa.token(&claims("alice"));
    let headers = [
        json!({"alg": "RS256", "kid": 5}),
        json!({"alg": ["RS256"]}),
        json!({"kid": "r1"}),
        json!([]),
        json!({"alg": "RS256", "kid": "r1", "jku": "https://evil.example/jwks"}),
    ];
    for i in 0..600 {
        let mut bytes = [0u8; 700];
        rng.fill(&mut bytes).unwrap();
        let len = (bytes[0] as usize * 3 + bytes[1] as usize) % 690;
        let token: String = match i % 3 {
            0 => bytes[2..2 + len]
                .iter()
                .map(|b| alphabet[*b as usize % alphabet.len()] as char)
                .collect(),
            // A real token with a byte changed somewhere.
            1 => {
                let mut t = good.clone().into_bytes();
                let at = len % t.len();
                t[at] = alphabet[bytes[2] as usize % alphabet.len()];
                String::from_utf8(t).unwrap()
            }
            // Well-formed segments around odd headers and payloads.
            _ => {
                let header = &headers[i % headers.len()];
                let payload: String = bytes[2..2 + len % 64]
                    .iter()
                    .map(|b| format!("{b}"))
                    .collect();
                format!(
                    "{}.{}.{}",
                    b64(header.to_string().as_bytes()),
                    b64(payload.as_bytes()),
                    b64(&bytes[100..164])
                )
            }
        };
        if token == good {
            continue;
        }
        let e = run(&f, &token).await.expect_err(&token);
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED, "{token}");
    }
}
