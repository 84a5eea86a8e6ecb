//! API keys: where they are read, how they are stripped, who they map to.

use http::{StatusCode, header};

use super::{
    AuthConfigError, AuthError, AuthMethod, AuthMetrics, AuthPolicy, Authenticator, JwksRegistry,
    Rejection, test_support::*,
};
use weft_proto::discovery::v1 as pb;

fn setup(edit: impl FnOnce(&mut pb::ApiPolicy)) -> (AuthPolicy, Authenticator) {
    let mut p = policy(true, vec![]);
    edit(&mut p);
    let policy = AuthPolicy::try_from(&p).unwrap();
    let consumers = [
        consumer("alice", &["alice-key", "alice-2"], &[], "demo/gold"),
        consumer("bob", &["bob-key"], &[], "demo/free"),
        consumer("carol", &["carol-key"], &[], ""),
        pb::Consumer {
            namespace: "other".into(),
            ..consumer("eve", &["eve-key"], &[], "other/gold")
        },
    ];
    let registry = JwksRegistry::new(AuthMetrics::default());
    let auth = Authenticator::new(&consumers, [&policy], &registry).unwrap();
    (policy, auth)
}

fn challenges(e: &AuthError) -> Vec<String> {
    e.challenges()
        .iter()
        .map(|v| v.to_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_key_in_the_header_maps_to_its_consumer_and_is_stripped() {
    let (policy, auth) = setup(|_| {});
    let mut p = parts(
        "/demo/x?q=1",
        &[("x-api-key", "alice-2"), ("x-other", "kept")],
    );
    let ok = auth.authenticate(&policy, &mut p, client()).await.unwrap();
    assert_eq!(ok.method, AuthMethod::ApiKey);
    assert_eq!(ok.consumer.unwrap().to_string(), "demo/alice");
    assert!(p.headers.get("x-api-key").is_none());
    assert_eq!(p.headers["x-other"], "kept");
    assert_eq!(p.uri, "/demo/x?q=1");
}

#[tokio::test]
async fn a_key_in_the_query_is_removed_keeping_the_other_parameters_in_order() {
    let (policy, auth) = setup(|_| {});
    for (uri, want) in [
        (
            "/demo/x?a=1&apikey=bob-key&b=2&apikey=zzz&c",
            "/demo/x?a=1&b=2&c",
        ),
        ("/demo/x?apikey=bob-key", "/demo/x"),
        ("/demo/x?api%6Bey=bob%2Dkey&z=%2F", "/demo/x?z=%2F"),
        (
            "http://api.example.com/demo/x?apikey=bob-key&k=v",
            "http://api.example.com/demo/x?k=v",
        ),
    ] {
        let mut p = parts(uri, &[]);
        let ok = auth.authenticate(&policy, &mut p, client()).await.unwrap();
        assert_eq!(&*ok.consumer.unwrap().name, "bob", "{uri}");
        assert_eq!(p.uri.to_string(), want, "{uri}");
    }
}

#[tokio::test]
async fn the_header_wins_and_every_copy_is_stripped() {
    let (policy, auth) = setup(|_| {});
    let mut p = parts(
        "/x?apikey=bob-key",
        &[("x-api-key", "alice-key"), ("x-api-key", "bob-key")],
    );
    let ok = auth.authenticate(&policy, &mut p, client()).await.unwrap();
    assert_eq!(&*ok.consumer.unwrap().name, "alice");
    assert!(p.headers.get("x-api-key").is_none());
    assert_eq!(p.uri, "/x");
}

#[tokio::test]
async fn configured_places_replace_the_defaults() {
    let (policy, auth) = setup(|p| {
        p.api_key = Some(pb::ApiKeyAuth {
            headers: vec!["x-key".into()],
            query_params: vec!["key".into()],
        })
    });
    let mut p = parts("/x", &[("x-api-key", "alice-key")]);
    let e = auth
        .authenticate(&policy, &mut p, client())
        .await
        .unwrap_err();
    assert_eq!(challenges(&e), ["ApiKey realm=\"weft\", header=\"x-key\""]);
    let mut p = parts("/x?key=alice-key", &[]);
    auth.authenticate(&policy, &mut p, client()).await.unwrap();
    let mut p = parts("/x", &[("x-key", "alice-key")]);
    auth.authenticate(&policy, &mut p, client()).await.unwrap();
}

#[tokio::test]
async fn unknown_missing_and_malformed_keys_get_401() {
    let (policy, auth) = setup(|_| {});
    let long = "k".repeat(super::MAX_API_KEY_BYTES + 1);
    for (headers, uri, want) in [
        (
            vec![("x-api-key", "nope")],
            "/x",
            Some(Rejection::UnknownApiKey),
        ),
        (vec![], "/x?apikey=nope", Some(Rejection::UnknownApiKey)),
        // A key of another namespace does not open this namespace's API.
        (
            vec![("x-api-key", "eve-key")],
            "/x",
            Some(Rejection::UnknownApiKey),
        ),
        (
            vec![("x-api-key", long.as_str())],
            "/x",
            Some(Rejection::Malformed),
        ),
        (vec![], "/x?apikey=", Some(Rejection::Malformed)),
        (vec![], "/x?apikey=%zz", Some(Rejection::Malformed)),
        (vec![], "/x?other=alice-key", None),
        (vec![], "/x", None),
    ] {
        let mut p = parts(uri, &headers);
        let e = auth
            .authenticate(&policy, &mut p, client())
            .await
            .unwrap_err();
        assert_eq!(e.status(), StatusCode::UNAUTHORIZED, "{uri} {headers:?}");
        match (want, &e) {
            (Some(want), AuthError::Invalid { reason, method, .. }) => {
                assert_eq!((*reason, *method), (want, AuthMethod::ApiKey));
                assert_eq!(
                    challenges(&e),
                    [format!(
                        "ApiKey realm=\"weft\", header=\"x-api-key\", error=\"invalid_token\", error_description=\"{want}\""
                    )]
                );
            }
            (None, AuthError::Missing { .. }) => {
                assert_eq!(
                    challenges(&e),
                    ["ApiKey realm=\"weft\", header=\"x-api-key\""]
                );
            }
            (want, e) => panic!("{uri}: wanted {want:?}, got {e:?}"),
        }
        assert!(p.headers.get("x-api-key").is_none());
        assert!(!p.uri.to_string().contains("apikey"), "{}", p.uri);
    }
}

#[tokio::test]
async fn a_consumer_not_on_the_policys_plans_gets_403() {
    let (policy, auth) = setup(|p| p.plans = vec!["demo/gold".into(), "demo/silver".into()]);
    let mut p = parts("/x", &[("x-api-key", "alice-key")]);
    auth.authenticate(&policy, &mut p, client()).await.unwrap();
    for key in ["bob-key", "carol-key"] {
        let mut p = parts("/x", &[("x-api-key", key)]);
        let e = auth
            .authenticate(&policy, &mut p, client())
            .await
            .unwrap_err();
        assert!(matches!(e, AuthError::NotOnPlan { .. }), "{key}: {e:?}");
        let response = e.into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(response.headers().get(header::WWW_AUTHENTICATE).is_none());
    }
}

#[tokio::test]
async fn plans_may_be_named_without_their_namespace() {
    let (policy, auth) = setup(|p| p.plans = vec!["gold".into()]);
    let mut p = parts("/x", &[("x-api-key", "alice-key")]);
    auth.authenticate(&policy, &mut p, client()).await.unwrap();
    let bare = pb::Consumer {
        plan: "gold".into(),
        ..consumer("dave", &["dave-key"], &[], "")
    };
    let auth = Authenticator::new(
        &[bare],
        [&policy],
        &JwksRegistry::new(AuthMetrics::default()),
    )
    .unwrap();
    let mut p = parts("/x", &[("x-api-key", "dave-key")]);
    let ok = auth.authenticate(&policy, &mut p, client()).await.unwrap();
    assert_eq!(ok.consumer.unwrap().plan.as_deref(), Some("demo/gold"));
}

#[test]
fn the_authenticator_can_be_shared_and_its_futures_spawned() {
    fn shared<T: Send + Sync + 'static>() {}
    fn send<T: Send>(_: &T) {}
    shared::<Authenticator>();
    shared::<AuthPolicy>();
    shared::<AuthError>();
    let (policy, auth) = setup(|_| {});
    let mut p = parts("/x", &[]);
    let future = auth.authenticate(&policy, &mut p, client());
    send(&future);
}

#[tokio::test]
async fn a_key_carries_no_scopes() {
    let (policy, auth) = setup(|p| p.required_scopes = vec!["read".into()]);
    let mut p = parts("/x", &[("x-api-key", "alice-key")]);
    let e = auth
        .authenticate(&policy, &mut p, client())
        .await
        .unwrap_err();
    assert!(matches!(e, AuthError::InsufficientScope { .. }), "{e:?}");
}

#[tokio::test]
async fn anonymous_callers_pass_where_allowed_but_bad_keys_do_not() {
    let (policy, auth) = setup(|p| {
        p.allow_anonymous = true;
        p.plans = vec!["demo/gold".into()];
    });
    let mut p = parts("/x", &[]);
    let ok = auth.authenticate(&policy, &mut p, client()).await.unwrap();
    assert_eq!((ok.method, ok.consumer), (AuthMethod::Anonymous, None));
    let mut p = parts("/x", &[("x-api-key", "nope")]);
    assert!(auth.authenticate(&policy, &mut p, client()).await.is_err());
}

#[tokio::test]
async fn both_methods_are_challenged_when_both_are_accepted() {
    let key = TestKey::p256("k");
    let mut prov = provider("idp");
    prov.jwks_inline = jwks(&[&key]);
    let policy = AuthPolicy::try_from(&policy(true, vec![prov])).unwrap();
    let consumers = [consumer("alice", &["alice-key"], &["alice"], "")];
    let auth = Authenticator::new(
        &consumers,
        [&policy],
        &JwksRegistry::new(AuthMetrics::default()),
    )
    .unwrap();
    let mut p = parts("/x", &[]);
    let e = auth
        .authenticate(&policy, &mut p, client())
        .await
        .unwrap_err();
    assert_eq!(
        challenges(&e),
        [
            "Bearer realm=\"weft\"",
            "ApiKey realm=\"weft\", header=\"x-api-key\""
        ]
    );
    // A refused credential's error goes on its own scheme's challenge.
    let mut p = parts("/x", &[("x-api-key", "nope")]);
    let e = auth
        .authenticate(&policy, &mut p, client())
        .await
        .unwrap_err();
    assert_eq!(
        challenges(&e),
        [
            "Bearer realm=\"weft\"",
            "ApiKey realm=\"weft\", header=\"x-api-key\", error=\"invalid_token\", error_description=\"the API key is not known\""
        ]
    );
    let mut p = parts("/x", &[("authorization", "Bearer x.y.z")]);
    let e = auth
        .authenticate(&policy, &mut p, client())
        .await
        .unwrap_err();
    assert_eq!(
        challenges(&e),
        [
            "Bearer realm=\"weft\", error=\"invalid_token\", error_description=\"the credential is malformed\"",
            "ApiKey realm=\"weft\", header=\"x-api-key\""
        ]
    );
    // Either credential works.
    let mut p = parts("/x", &[("x-api-key", "alice-key")]);
    assert_eq!(
        auth.authenticate(&policy, &mut p, client())
            .await
            .unwrap()
            .method,
        AuthMethod::ApiKey
    );
    let mut p = parts(
        "/x",
        &[("authorization", &bearer(&key.token(&claims("alice"))))],
    );
    assert_eq!(
        auth.authenticate(&policy, &mut p, client())
            .await
            .unwrap()
            .method,
        AuthMethod::Jwt
    );
}

#[test]
fn bad_configuration_is_refused_with_what_and_where() {
    let bad_hash = pb::Consumer {
        api_key_sha256: vec!["abc".into()],
        ..consumer("alice", &[], &[], "")
    };
    let e = super::Consumers::new([&bad_hash]).unwrap_err();
    assert!(matches!(e, AuthConfigError::KeyHash { .. }), "{e}");
    assert!(e.to_string().contains("demo/alice"), "{e}");
    let a = consumer("alice", &["same"], &[], "");
    let b = consumer("bob", &["same"], &[], "");
    let e = super::Consumers::new([&a, &b]).unwrap_err();
    assert!(matches!(e, AuthConfigError::DuplicateKey { .. }), "{e}");

    let mut p = policy(true, vec![]);
    p.name = "no-namespace".into();
    assert!(matches!(
        AuthPolicy::try_from(&p),
        Err(AuthConfigError::PolicyName { .. })
    ));
    let mut p = policy(true, vec![]);
    p.api_key = Some(pb::ApiKeyAuth {
        headers: vec!["bad header".into()],
        query_params: vec![],
    });
    assert!(
        AuthPolicy::try_from(&p)
            .unwrap_err()
            .to_string()
            .contains("bad header")
    );
    for edit in [
        (|p: &mut pb::JwtProvider| p.issuer.clear()) as fn(&mut pb::JwtProvider),
        |p| p.jwks_uri = "http://plain.example/jwks".into(),
        |p| {
            p.jwks_uri = "https://a.example/jwks".into();
            p.jwks_file = "/etc/jwks.json".into();
        },
        |p| p.jwks_inline = "{\"keys\": []}".into(),
        |p| {
            p.jwks_uri = "https://a.example/jwks".into();
            p.jwks_ca_pem = "not pem".into();
        },
    ] {
        let mut prov = provider("idp");
        edit(&mut prov);
        let e = AuthPolicy::try_from(&policy(false, vec![prov])).unwrap_err();
        assert!(e.to_string().contains("idp"), "{e}");
    }
}
