//! The edge gateway's configuration: Gateway API `Gateway`, `HTTPRoute`, `GRPCRoute` and
//! TLS `Secret`s as Kubernetes users write them, and Weft's `Backend`, `ApiPolicy`,
//! `Consumer` and `Plan`, compiled into the resources the gateway receives. Every mistake
//! is reported with its file, document index and field path.

use weft_control::config::{Diagnostic, ResourceSet, compile, load_paths, parse_str};
use weft_proto::discovery::v1::{
    self as pb, ResourceType, resource::Kind as PbKind, route_filter::Filter,
};

const EDGE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/edge");

fn check(text: &str) -> (ResourceSet, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let docs = parse_str("test.yaml".as_ref(), text, &mut diagnostics);
    let set = compile(&docs, &mut diagnostics);
    (set, diagnostics)
}

fn rendered(diagnostics: &[Diagnostic]) -> Vec<String> {
    diagnostics.iter().map(ToString::to_string).collect()
}

/// Asserts that document `doc` of `text` has an error at `path` whose message contains
/// `message`.
#[track_caller]
fn assert_error(text: &str, doc: usize, path: &str, message: &str) {
    let (_, diagnostics) = check(text);
    let prefix = format!("test.yaml: document {doc} (0-based)");
    let found = diagnostics.iter().any(|d| {
        d.is_error()
            && d.path == path
            && d.message.contains(message)
            && d.to_string().starts_with(&prefix)
    });
    assert!(
        found,
        "expected an error in document {doc} at {path}: {message:?}, got {:#?}",
        rendered(&diagnostics)
    );
}

/// As [`assert_error`], for a warning (the configuration is accepted).
#[track_caller]
fn assert_warning(text: &str, doc: usize, path: &str, message: &str) -> ResourceSet {
    let (set, diagnostics) = check(text);
    let errors: Vec<_> = diagnostics.iter().filter(|d| d.is_error()).collect();
    assert!(errors.is_empty(), "{:#?}", rendered(&diagnostics));
    let prefix = format!("warning: test.yaml: document {doc} (0-based)");
    let found = diagnostics.iter().any(|d| {
        !d.is_error()
            && d.path == path
            && d.message.contains(message)
            && d.to_string().starts_with(&prefix)
    });
    assert!(
        found,
        "expected a warning in document {doc} at {path}: {message:?}, got {:#?}",
        rendered(&diagnostics)
    );
    set
}

fn listener(set: &ResourceSet, name: &str) -> pb::Listener {
    match set
        .get(ResourceType::Listener, name)
        .map(|r| r.kind.clone())
    {
        Some(Some(PbKind::Listener(l))) => l,
        other => panic!("no listener {name}: {other:?}"),
    }
}

fn api_route(set: &ResourceSet, name: &str) -> pb::ApiRoute {
    match set
        .get(ResourceType::ApiRoute, name)
        .map(|r| r.kind.clone())
    {
        Some(Some(PbKind::ApiRoute(r))) => r,
        other => panic!("no ApiRoute {name}: {other:?}"),
    }
}

fn edge_text() -> String {
    std::fs::read_to_string(format!("{EDGE_DIR}/edge.yaml")).expect("fixture")
}

/// A PEM certificate and key from the fixture's Secret.
fn cert_and_key() -> (String, String) {
    let (set, _) = check(&edge_text());
    let cert = listener(&set, "demo/edge/https").certificates[0].clone();
    (cert.cert_pem, cert.key_pem)
}

fn indent(pem: &str) -> String {
    pem.lines().map(|l| format!("    {l}\n")).collect()
}

fn tls_secret(name: &str, cert: &str, key: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: demo}}\n\
         type: kubernetes.io/tls\nstringData:\n  tls.crt: |\n{}  tls.key: |\n{}",
        indent(cert),
        indent(key)
    )
}

const GATEWAY: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: demo}
spec:
  gatewayClassName: weft
  listeners:
  - {name: http, port: 8080, protocol: HTTP}
";

const PLAN: &str = "apiVersion: weft.dev/v1alpha1
kind: Plan
metadata: {name: gold, namespace: demo}
spec: {limits: {perSecond: 5}}
";

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: demo, namespace: demo}
spec:
  parentRefs: [{name: edge}]
  rules: [{backendRefs: [{name: echo, port: 8000}]}]
";

fn docs(parts: &[&str]) -> String {
    parts.join("---\n")
}

// === The whole fixture ===

#[test]
fn every_kind_compiles_into_the_gateway_resources() {
    let loaded = load_paths(&[EDGE_DIR.into()]);
    assert!(
        loaded.diagnostics.is_empty(),
        "{:#?}",
        rendered(&loaded.diagnostics)
    );
    let set = &loaded.resources;

    // One Listener per listener, certificates resolved from the Secret.
    let http = listener(set, "demo/edge/http");
    assert_eq!(
        (
            http.port,
            http.protocol(),
            http.hostname.as_str(),
            http.gateway.as_str()
        ),
        (8080, pb::ListenerProtocol::Http, "*.example.com", "edge")
    );
    let https = listener(set, "demo/edge/https");
    assert_eq!(https.protocol(), pb::ListenerProtocol::Https);
    assert_eq!(https.certificates.len(), 1);
    assert_eq!(https.certificates[0].name, "demo/edge-cert");
    assert!(https.certificates[0].cert_pem.contains("BEGIN CERTIFICATE"));
    assert!(https.certificates[0].key_pem.contains("PRIVATE KEY"));
    assert_eq!(set.count(ResourceType::Listener), 2);

    // The HTTPRoute: an ApiRoute with its policy, filters and a Backend resolved.
    assert_eq!(
        set.count(ResourceType::Route),
        0,
        "no Service parent, no mesh Route"
    );
    let demo = api_route(set, "demo/demo");
    assert_eq!(demo.kind(), pb::ApiRouteKind::Http);
    assert_eq!(demo.created_at_unix_ms, 1_714_564_800_000);
    assert_eq!(demo.route_hostnames, ["api.example.com"]);
    assert_eq!(
        demo.parents,
        [pb::ParentRef {
            kind: "Gateway".into(),
            name: "edge".into(),
            namespace: "demo".into(),
            port: 0,
            section_name: "http".into(),
        }]
    );
    let policy = demo.policy.clone().expect("the route's own policy");
    assert_eq!(policy.name, "demo/demo-api");
    assert_eq!(policy.api, "demo");
    assert_eq!(policy.plans, ["demo/gold"]);
    assert_eq!(policy.required_scopes, ["read"]);
    assert_eq!(policy.limit_scope(), pb::LimitScope::Route);
    assert_eq!(
        policy.anonymous_limits.as_ref().map(|l| l.per_second),
        Some(10)
    );
    let key = policy.api_key.clone().expect("api keys");
    assert_eq!(
        (key.headers, key.query_params),
        (vec!["x-api-key".to_string()], vec!["apikey".to_string()])
    );
    let idp = &policy.jwt.as_ref().expect("jwt").providers[0];
    assert_eq!(
        (idp.issuer.as_str(), idp.jwks_refresh_ms, idp.clock_skew_ms),
        ("https://idp.example", 300_000, 30_000)
    );
    assert_eq!(idp.jwks_inline, r#"{"keys": []}"#);
    assert_eq!(idp.claim_to_headers[0].header, "x-user");

    let rule = &demo.rules[0];
    assert_eq!(rule.request_timeout_ms, 10_000);
    let filters: Vec<_> = rule
        .filters
        .iter()
        .filter_map(|f| f.filter.clone())
        .collect();
    match &filters[..] {
        [
            Filter::UrlRewrite(rewrite),
            Filter::RequestHeaderModifier(headers),
            Filter::RequestMirror(mirror),
        ] => {
            let path = rewrite.path.clone().expect("a path rewrite");
            assert_eq!(
                (path.r#type(), path.value.as_str()),
                (pb::PathModifierType::Prefix, "/")
            );
            assert_eq!(headers.set[0].name, "x-env", "names are lower-cased");
            assert_eq!(headers.remove, ["x-debug"]);
            assert_eq!(mirror.percent, 34, "1/3 rounded up");
            assert_eq!(mirror.backend.as_ref().map(|b| b.port), Some(8000));
        }
        other => panic!("{other:?}"),
    }
    let outside = &rule.backends[1];
    assert_eq!(
        (
            outside.kind.as_str(),
            outside.url.as_str(),
            outside.port,
            outside.weight
        ),
        ("Backend", "https://outside.example.net:9443", 0, 10)
    );
    assert!(outside.ca_pem.contains("BEGIN CERTIFICATE"));
    assert!(matches!(
        outside.filters[0].filter,
        Some(Filter::ResponseHeaderModifier(_))
    ));
    match demo.rules[1].filters[0].filter.clone() {
        Some(Filter::RequestRedirect(r)) => {
            assert_eq!(
                (
                    r.scheme.as_str(),
                    r.hostname.as_str(),
                    r.port,
                    r.status_code
                ),
                ("https", "api.example.com", 8443, 301)
            );
            assert_eq!(r.path.map(|p| p.value), Some("/new".to_string()));
        }
        other => panic!("{other:?}"),
    }

    // The GRPCRoute: method matches as path matches, the Gateway's policy.
    let greeter = api_route(set, "demo/grpc/greeter");
    assert_eq!(greeter.kind(), pb::ApiRouteKind::Grpc);
    assert_eq!(
        greeter.policy.as_ref().map(|p| p.name.as_str()),
        Some("demo/edge-default"),
        "no policy of its own: its Gateway's"
    );
    let paths: Vec<(pb::MatchType, String)> = greeter
        .rules
        .iter()
        .flat_map(|r| r.matches.iter())
        .map(|m| {
            let p = m.path.clone().expect("a path");
            (p.r#type(), p.value)
        })
        .collect();
    assert_eq!(
        paths,
        [
            (pb::MatchType::Exact, "/helloworld.Greeter/SayHello".into()),
            (pb::MatchType::PathPrefix, "/helloworld.Greeter".into()),
            (pb::MatchType::RegularExpression, "^/[^/]+/Check$".into()),
            (
                pb::MatchType::RegularExpression,
                r"^/(?:grpc\.health\..*)/[^/]+$".into()
            ),
        ]
    );
    assert_eq!(greeter.rules[0].backends[0].port, 50051);

    // Consumers and plans.
    match set
        .get(ResourceType::Consumer, "demo/alice")
        .and_then(|r| r.kind.clone())
    {
        Some(PbKind::Consumer(c)) => assert_eq!(c.plan, "demo/gold"),
        other => panic!("{other:?}"),
    }
    match set
        .get(ResourceType::Plan, "demo/gold")
        .and_then(|r| r.kind.clone())
    {
        Some(PbKind::Plan(p)) => {
            let l = p.limits.expect("limits");
            assert_eq!((l.per_second, l.per_minute, l.per_month), (5, 100, 100_000));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn base64_data_and_string_data_secrets_give_the_same_certificate() {
    let text = edge_text().replace("name: edge-cert}]", "name: edge-cert-b64}]");
    let (set, diagnostics) = check(&text);
    assert!(diagnostics.is_empty(), "{:#?}", rendered(&diagnostics));
    let (cert, key) = cert_and_key();
    let c = &listener(&set, "demo/edge/https").certificates[0];
    assert_eq!(c.name, "demo/edge-cert-b64");
    assert_eq!(
        (c.cert_pem.trim(), c.key_pem.trim()),
        (cert.trim(), key.trim())
    );
}

// === Attachment ===

#[test]
fn a_route_with_service_and_gateway_parents_is_both_a_mesh_route_and_an_api_route() {
    let route = ROUTE.replace(
        "parentRefs: [{name: edge}]",
        "parentRefs: [{name: edge}, {kind: Service, group: \"\", name: echo, port: 8000}]",
    );
    let (set, diagnostics) = check(&docs(&[GATEWAY, &route]));
    assert!(
        diagnostics.iter().all(|d| !d.is_error()),
        "{:#?}",
        rendered(&diagnostics)
    );
    let api = api_route(&set, "demo/demo");
    assert_eq!(api.parents.len(), 1, "only the weft Gateway: {api:?}");
    assert!(api.policy.is_none());
    match set
        .get(ResourceType::Route, "demo/demo")
        .and_then(|r| r.kind.clone())
    {
        Some(PbKind::Route(r)) => assert!(r.parents.iter().any(|p| p.kind == "Service")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn another_class_is_skipped_with_a_warning_and_its_routes_are_not_attached() {
    let gw = GATEWAY.replace("gatewayClassName: weft", "gatewayClassName: istio");
    let set = assert_warning(
        &docs(&[&gw, ROUTE]),
        0,
        "spec.gatewayClassName",
        "is not \"weft\"",
    );
    assert_eq!(set.count(ResourceType::Listener), 0);
    assert_eq!(set.count(ResourceType::ApiRoute), 0);
}

#[test]
fn a_parent_gateway_or_listener_that_does_not_exist_is_a_warning() {
    let set = assert_warning(ROUTE, 0, "spec.parentRefs[0].name", "no Gateway demo/edge");
    assert_eq!(set.count(ResourceType::ApiRoute), 0);
    let route = ROUTE.replace("{name: edge}", "{name: edge, sectionName: https}");
    let set = assert_warning(
        &docs(&[GATEWAY, &route]),
        1,
        "spec.parentRefs[0].sectionName",
        "has no listener \"https\"",
    );
    assert_eq!(set.count(ResourceType::ApiRoute), 0);
    let route = ROUTE.replace("{name: edge}", "{name: edge, port: 9999}");
    assert_warning(
        &docs(&[GATEWAY, &route]),
        1,
        "spec.parentRefs[0].port",
        "no listener on port 9999",
    );
}

#[test]
fn a_route_attaches_only_where_its_hostnames_meet_the_listener_hostname() {
    let gw = GATEWAY.replace(
        "protocol: HTTP}",
        "protocol: HTTP, hostname: \"*.example.com\"}",
    );
    let route = ROUTE.replace("  rules:", "  hostnames: [api.example.org]\n  rules:");
    let set = assert_warning(
        &docs(&[&gw, &route]),
        1,
        "spec.hostnames",
        "no hostname of the route matches",
    );
    assert_eq!(set.count(ResourceType::ApiRoute), 0);
    let route = ROUTE.replace(
        "  rules:",
        "  hostnames: [api.example.org, api.example.com]\n  rules:",
    );
    let (set, d) = check(&docs(&[&gw, &route]));
    assert!(d.iter().all(|d| !d.is_error()), "{:#?}", rendered(&d));
    assert_eq!(set.count(ResourceType::ApiRoute), 1);
}

#[test]
fn listeners_admit_routes_of_their_own_namespace_unless_all_are_allowed() {
    let route = ROUTE
        .replace("namespace: demo}", "namespace: other}")
        .replace("{name: edge}", "{name: edge, namespace: demo}");
    assert_warning(
        &docs(&[GATEWAY, &route]),
        1,
        "spec.parentRefs[0]",
        "do not allow HTTPRoutes from namespace \"other\"",
    );
    let gw = GATEWAY.replace(
        "protocol: HTTP}",
        "protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}",
    );
    let (set, diagnostics) = check(&docs(&[&gw, &route]));
    assert!(
        diagnostics.iter().all(|d| !d.is_error()),
        "{:#?}",
        rendered(&diagnostics)
    );
    assert_eq!(api_route(&set, "other/demo").parents[0].namespace, "demo");
}

#[test]
fn the_older_of_two_policies_on_one_route_wins_and_the_other_is_warned() {
    let policy = |name: &str, created: &str| {
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: ApiPolicy\nmetadata: {{name: {name}, \
             namespace: demo, creationTimestamp: \"{created}\"}}\nspec:\n  targetRefs: \
             [{{kind: HTTPRoute, name: demo}}]\n  apiKey: {{}}\n"
        )
    };
    let newer = policy("a-newer", "2024-06-01T00:00:00Z");
    let older = policy("b-older", "2024-01-01T00:00:00Z");
    let set = assert_warning(
        &docs(&[GATEWAY, ROUTE, &newer, &older]),
        2,
        "spec.targetRefs[0]",
        "already targeted by ApiPolicy demo/b-older",
    );
    let route = api_route(&set, "demo/demo");
    let policy = route.policy.expect("a policy");
    assert_eq!(policy.name, "demo/b-older");
    let key = policy.api_key.expect("apiKey: {} means the defaults");
    assert_eq!(
        (key.headers, key.query_params),
        (vec!["x-api-key".to_string()], vec!["apikey".to_string()])
    );
    // Without creation times, the first by name wins.
    let set = assert_warning(
        &docs(&[GATEWAY, ROUTE, &policy_named("b"), &policy_named("a")]),
        2,
        "spec.targetRefs[0]",
        "already targeted by ApiPolicy demo/a",
    );
    assert_eq!(
        api_route(&set, "demo/demo").policy.map(|p| p.name),
        Some("demo/a".into())
    );
}

fn policy_named(name: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: ApiPolicy\nmetadata: {{name: {name}, namespace: \
         demo}}\nspec:\n  targetRefs: [{{kind: HTTPRoute, name: demo}}]\n  apiKey: {{}}\n"
    )
}

#[test]
fn a_policy_target_that_does_not_exist_is_a_warning() {
    let policy = policy_named("p").replace("name: demo}", "name: nope}");
    assert_warning(
        &docs(&[GATEWAY, ROUTE, &policy]),
        2,
        "spec.targetRefs[0]",
        "no HTTPRoute demo/nope is defined",
    );
}

// === Gateway errors ===

#[test]
fn gateway_listener_errors() {
    let gw = |listeners: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: edge, \
             namespace: demo}}\nspec:\n  gatewayClassName: weft\n  listeners:\n{listeners}"
        )
    };
    let cases = [
        (
            "  - {name: a, port: 80, protocol: HTTP}\n  - {name: a, port: 81, protocol: HTTP}\n",
            "spec.listeners[1].name",
            "already defined at spec.listeners[0]",
        ),
        (
            "  - {name: a, port: 0, protocol: HTTP}\n",
            "spec.listeners[0].port",
            "1-65535",
        ),
        (
            "  - {name: a, port: 80, protocol: TCP}\n",
            "spec.listeners[0].protocol",
            "HTTP or HTTPS",
        ),
        (
            "  - {name: a, port: 80, protocol: HTTP, hostname: \"a.*.com\"}\n",
            "spec.listeners[0].hostname",
            "RFC 1123",
        ),
        (
            "  - {name: a, port: 80, protocol: HTTP, hostname: 10.0.0.1}\n",
            "spec.listeners[0].hostname",
            "not an IP address",
        ),
        (
            "  - {name: a, port: 443, protocol: HTTPS}\n",
            "spec.listeners[0].tls",
            "required for HTTPS",
        ),
        (
            "  - {name: a, port: 80, protocol: HTTP, tls: {certificateRefs: [{name: c}]}}\n",
            "spec.listeners[0].tls",
            "only allowed for HTTPS",
        ),
        (
            "  - {name: a, port: 443, protocol: HTTPS, tls: {mode: Passthrough, certificateRefs: [{name: c}]}}\n",
            "spec.listeners[0].tls.mode",
            "must be Terminate",
        ),
        (
            "  - {name: a, port: 443, protocol: HTTPS, tls: {certificateRefs: []}}\n",
            "spec.listeners[0].tls.certificateRefs",
            "at least one Secret",
        ),
        (
            "  - {name: a, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: c, namespace: other}]}}\n",
            "spec.listeners[0].tls.certificateRefs[0].namespace",
            "ReferenceGrant is not supported",
        ),
        (
            "  - {name: a, port: 443, protocol: HTTPS, tls: {certificateRefs: [{kind: ConfigMap, name: c}]}}\n",
            "spec.listeners[0].tls.certificateRefs[0].kind",
            "must be a Secret",
        ),
        (
            "  - {name: a, port: 80, protocol: HTTP}\n  - {name: b, port: 80, protocol: HTTPS, tls: {certificateRefs: [{name: c}]}}\n",
            "spec.listeners[1].protocol",
            "must agree on the protocol",
        ),
        (
            "  - {name: a, port: 80, protocol: HTTP, hostname: x.example.com}\n  - {name: b, port: 80, protocol: HTTP, hostname: x.example.com}\n",
            "spec.listeners[1].hostname",
            "already served by listener demo/edge/a",
        ),
        (
            "  - {name: a, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector}}}\n",
            "spec.listeners[0].allowedRoutes.namespaces.from",
            "Selector is not supported",
        ),
    ];
    for (listeners, path, message) in cases {
        assert_error(&gw(listeners), 0, path, message);
    }
    // Two listeners on one port with different host names are fine.
    let (_, d) = check(&gw(
        "  - {name: a, port: 80, protocol: HTTP, hostname: a.example.com}\n  - {name: b, port: 80, protocol: HTTP, hostname: b.example.com}\n",
    ));
    assert!(d.is_empty(), "{:#?}", rendered(&d));
    // A conflict across two weft Gateways, which one gateway process serves.
    let other = GATEWAY.replace("name: edge,", "name: edge2,");
    assert_error(
        &docs(&[GATEWAY, &other]),
        1,
        "spec.listeners[0].hostname",
        "already served by listener demo/edge/http",
    );
}

#[test]
fn listener_certificates_come_from_valid_tls_secrets() {
    let (cert, key) = cert_and_key();
    let gw = "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: edge, \
              namespace: demo}\nspec:\n  gatewayClassName: weft\n  listeners:\n  - {name: https, \
              port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: cert}]}}\n";
    // A missing Secret leaves the listener out, with a warning.
    let set = assert_warning(
        gw,
        0,
        "spec.listeners[0].tls.certificateRefs[0].name",
        "no Secret demo/cert is defined",
    );
    assert_eq!(set.count(ResourceType::Listener), 0);
    // A Secret of another type.
    let opaque = "apiVersion: v1\nkind: Secret\nmetadata: {name: cert, namespace: demo}\ntype: \
                  Opaque\nstringData: {password: x}\n";
    assert_error(
        &docs(&[gw, opaque]),
        0,
        "spec.listeners[0].tls.certificateRefs[0].name",
        "is of type \"Opaque\"",
    );
    // Broken certificates and keys, named by field.
    let cases = [
        (tls_secret("cert", "not a pem", &key), "stringData.tls.crt", "no PEM certificate"),
        (tls_secret("cert", &cert, "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----"), "stringData.tls.key", "not a usable private key"),
        (tls_secret("cert", &cert, &cert), "stringData.tls.key", "no PEM private key"),
        (
            tls_secret("cert", &cert, include_str!("edge/other-key.pem")),
            "stringData.tls.key",
            "does not belong to the certificate",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: cert, namespace: demo}\ntype: kubernetes.io/tls\ndata: {tls.crt: \"!!notbase64\", tls.key: \"\"}\n".to_string(),
            "data.tls.crt",
            "is not base64",
        ),
        (
            "apiVersion: v1\nkind: Secret\nmetadata: {name: cert, namespace: demo}\ntype: kubernetes.io/tls\nstringData: {tls.crt: x}\n".to_string(),
            "data.tls.key",
            "required in a kubernetes.io/tls Secret",
        ),
    ];
    for (secret, path, message) in cases {
        assert_error(&docs(&[&secret, gw]), 0, path, message);
        // And the Gateway that names it says so.
        assert_error(
            &docs(&[&secret, gw]),
            1,
            "spec.listeners[0].tls.certificateRefs[0].name",
            "is invalid",
        );
    }
}

// === Route errors ===

#[test]
fn http_route_filter_errors() {
    let route = |rule: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: demo, \
             namespace: demo}}\nspec:\n  parentRefs: [{{name: edge}}]\n  rules:\n{rule}"
        )
    };
    let cases = [
        (
            "  - filters:\n    - {type: URLRewrite, urlRewrite: {hostname: a.example.com}}\n    - {type: RequestRedirect, requestRedirect: {scheme: https}}\n",
            "spec.rules[0].filters",
            "RequestRedirect and URLRewrite cannot be used together",
        ),
        (
            "  - filters:\n    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: b}]}}\n    - {type: RequestHeaderModifier, requestHeaderModifier: {remove: [c]}}\n",
            "spec.rules[0].filters[1].type",
            "may appear once per rule",
        ),
        (
            "  - filters:\n    - {type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: \"bad header\", value: b}]}}\n",
            "spec.rules[0].filters[0].requestHeaderModifier.set[0].name",
            "must be an HTTP header name",
        ),
        (
            "  - filters:\n    - {type: ResponseHeaderModifier, responseHeaderModifier: {add: [{name: A, value: b}, {name: a, value: c}]}}\n",
            "spec.rules[0].filters[0].responseHeaderModifier.add[1].name",
            "already named at add[0]",
        ),
        (
            "  - filters:\n    - {type: RequestHeaderModifier, requestHeaderModifier: {}}\n",
            "spec.rules[0].filters[0].requestHeaderModifier",
            "at least one header",
        ),
        (
            "  - matches: [{path: {type: Exact, value: /a}}]\n    filters:\n    - {type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}\n",
            "spec.rules[0].filters[0].urlRewrite.path.type",
            "PathPrefix",
        ),
        (
            "  - filters:\n    - {type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath}}}\n",
            "spec.rules[0].filters[0].urlRewrite.path.replaceFullPath",
            "required",
        ),
        (
            "  - filters:\n    - {type: RequestRedirect, requestRedirect: {statusCode: 305}}\n",
            "spec.rules[0].filters[0].requestRedirect.statusCode",
            "301, 302, 303, 307 or 308",
        ),
        (
            "  - filters:\n    - {type: RequestRedirect, requestRedirect: {scheme: ftp}}\n",
            "spec.rules[0].filters[0].requestRedirect.scheme",
            "http or https",
        ),
        (
            "  - filters:\n    - {type: RequestMirror, requestMirror: {backendRef: {name: echo, port: 80}, percent: 0}}\n",
            "spec.rules[0].filters[0].requestMirror.percent",
            "must be 1-100",
        ),
        (
            "  - filters:\n    - {type: RequestMirror, requestMirror: {backendRef: {name: echo, port: 80}, percent: 5, fraction: {numerator: 1}}}\n",
            "spec.rules[0].filters[0].requestMirror",
            "not both",
        ),
        (
            "  - filters:\n    - {type: RequestMirror, requestMirror: {backendRef: {name: echo}}}\n",
            "spec.rules[0].filters[0].requestMirror.backendRef.port",
            "required for a Service",
        ),
        (
            "  - filters:\n    - {type: RequestMirror, requestHeaderModifier: {remove: [a]}}\n",
            "spec.rules[0].filters[0]",
            "needs requestMirror set",
        ),
        (
            "  - filters:\n    - {type: ExtensionRef, extensionRef: {group: x, kind: y, name: z}}\n",
            "spec.rules[0].filters[0].type",
            "must be one of",
        ),
        (
            "  - backendRefs:\n    - name: echo\n      port: 80\n      filters: [{type: RequestRedirect, requestRedirect: {scheme: https}}]\n",
            "spec.rules[0].backendRefs[0].filters[0].type",
            "belongs on the rule",
        ),
        (
            "  - backendRefs: [{group: weft.dev, kind: Backend, name: nope}]\n",
            "spec.rules[0].backendRefs[0].name",
            "no Backend \"nope\"",
        ),
        (
            "  - backendRefs: [{group: weft.dev, kind: Backend, name: b, namespace: other}]\n",
            "spec.rules[0].backendRefs[0].namespace",
            "ReferenceGrant",
        ),
        (
            "  - backendRefs: [{group: example.com, kind: Bucket, name: b}]\n",
            "spec.rules[0].backendRefs[0].kind",
            "Services (group \"\") or Backends",
        ),
    ];
    for (rule, path, message) in cases {
        assert_error(&route(rule), 0, path, message);
    }
}

#[test]
fn grpc_route_errors() {
    let route = |rule: &str| {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: g, \
             namespace: demo}}\nspec:\n  parentRefs: [{{name: edge}}]\n  rules:\n{rule}"
        )
    };
    let cases = [
        (
            "  - matches: [{method: {}}]\n",
            "spec.rules[0].matches[0].method",
            "service, method or both",
        ),
        (
            "  - matches: [{method: {service: \"not a service\"}}]\n",
            "spec.rules[0].matches[0].method.service",
            "gRPC service name",
        ),
        (
            "  - matches: [{method: {service: a.B, method: \"Say/Hello\"}}]\n",
            "spec.rules[0].matches[0].method.method",
            "gRPC method name",
        ),
        (
            "  - filters: [{type: URLRewrite, urlRewrite: {hostname: a.example.com}}]\n",
            "spec.rules[0].filters[0].type",
            "must be one of RequestHeaderModifier, ResponseHeaderModifier, RequestMirror",
        ),
    ];
    for (rule, path, message) in cases {
        assert_error(&route(rule), 0, path, message);
    }
}

// === weft.dev kinds ===

#[test]
fn backend_errors() {
    let backend = |spec: &str| {
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: Backend\nmetadata: {{name: b, namespace: \
             demo}}\nspec: {spec}\n"
        )
    };
    let cases = [
        (
            "{url: \"ftp://a.example.com\"}",
            "spec.url",
            "http:// or https://",
        ),
        (
            "{url: \"https://a.example.com/path\"}",
            "spec.url",
            "no path",
        ),
        (
            "{url: \"https://a.example.com:70000\"}",
            "spec.url",
            "1-65535",
        ),
        ("{url: \"https://\"}", "spec.url", "no host"),
        (
            "{url: \"https://a.example.com\", caCertificate: nope}",
            "spec.caCertificate",
            "no PEM certificate",
        ),
    ];
    for (spec, path, message) in cases {
        assert_error(&backend(spec), 0, path, message);
    }
    // The port defaults from the scheme.
    let route = ROUTE.replace(
        "{name: echo, port: 8000}",
        "{group: weft.dev, kind: Backend, name: b}",
    );
    let (set, d) = check(&docs(&[
        GATEWAY,
        &route,
        &backend("{url: \"http://10.0.0.9\"}"),
    ]));
    assert!(d.is_empty(), "{:#?}", rendered(&d));
    assert_eq!(
        api_route(&set, "demo/demo").rules[0].backends[0].url,
        "http://10.0.0.9:80"
    );
}

#[test]
fn api_policy_errors() {
    let policy = |spec: &str| {
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: ApiPolicy\nmetadata: {{name: p, namespace: \
             demo}}\nspec:\n  targetRefs: [{{kind: HTTPRoute, name: demo}}]\n{spec}"
        )
    };
    let provider = |jwks: &str| {
        format!(
            "  jwt: {{providers: [{{name: idp, issuer: https://idp.example, jwks: {jwks}}}]}}\n"
        )
    };
    let cases = [
        ("  plans: []\n".to_string(), "spec", "apiKey or jwt"),
        ("  jwt: {providers: [{name: idp, jwks: {file: /etc/jwks.json}}]}\n".into(), "spec.jwt.providers[0].issuer", "required"),
        ("  jwt: {providers: []}\n".into(), "spec.jwt.providers", "at least one provider"),
        (provider("{file: /a, uri: \"https://x\"}"), "spec.jwt.providers[0].jwks", "exactly one of uri, file or inline, got 2"),
        (provider("{}"), "spec.jwt.providers[0].jwks", "got 0"),
        (provider("{uri: \"http://idp.example/jwks\"}"), "spec.jwt.providers[0].jwks.uri", "https://"),
        (provider("{inline: \"not json\"}"), "spec.jwt.providers[0].jwks.inline", "is not JSON"),
        (provider("{inline: '{\"k\": 1}'}"), "spec.jwt.providers[0].jwks.inline", "\"keys\" array"),
        (provider("{file: relative.json}"), "spec.jwt.providers[0].jwks.file", "absolute path"),
        (provider("{file: /a, caCertificate: x}"), "spec.jwt.providers[0].jwks.caCertificate", "only meaningful with uri"),
        (
            "  jwt: {providers: [{name: idp, issuer: i, jwks: {file: /a}, refresh: 5 minutes}]}\n".into(),
            "spec.jwt.providers[0].refresh",
            "is not a duration",
        ),
        (
            "  jwt: {providers: [{name: idp, issuer: i, jwks: {file: /a}, claimToHeaders: [{claim: sub, header: \"x user\"}]}]}\n".into(),
            "spec.jwt.providers[0].claimToHeaders[0].header",
            "HTTP header name",
        ),
        ("  apiKey: {}\n  plans: [silver]\n".into(), "spec.plans[0]", "no Plan \"silver\""),
        ("  apiKey: {}\n  requiredScopes: [read]\n".into(), "spec.requiredScopes", "only allowed together with jwt"),
        ("  apiKey: {headers: [\"a b\"]}\n".into(), "spec.apiKey.headers[0]", "HTTP header name"),
        ("  apiKey: {}\n  anonymousLimits: {perSecond: -1}\n".into(), "spec.anonymousLimits.perSecond", "must not be negative"),
        ("  allowAnonymous: true\n  limitScope: Everything\n".into(), "spec.limitScope", "unknown variant"),
    ];
    for (spec, path, message) in cases {
        assert_error(&docs(&[GATEWAY, ROUTE, &policy(&spec)]), 2, path, message);
    }
    let bad_target = "apiVersion: weft.dev/v1alpha1\nkind: ApiPolicy\nmetadata: {name: p, \
                      namespace: demo}\nspec:\n  targetRefs: [{kind: Service, name: demo}]\n  \
                      allowAnonymous: true\n";
    assert_error(
        bad_target,
        0,
        "spec.targetRefs[0]",
        "HTTPRoute, GRPCRoute or Gateway",
    );
}

#[test]
fn consumer_and_plan_errors() {
    let consumer = |name: &str, spec: &str| {
        format!(
            "apiVersion: weft.dev/v1alpha1\nkind: Consumer\nmetadata: {{name: {name}, \
             namespace: demo}}\nspec: {spec}\n"
        )
    };
    let hash = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
    assert_error(
        &consumer("a", "{apiKeySha256: [secret-key]}"),
        0,
        "spec.apiKeySha256[0]",
        "64 hex digits",
    );
    assert_error(
        &consumer("a", "{plan: gold}"),
        0,
        "spec.plan",
        "no Plan \"gold\"",
    );
    let (_, d) = check(&docs(&[PLAN, &consumer("a", "{plan: gold}")]));
    assert!(d.is_empty(), "{:#?}", rendered(&d));
    assert_error(
        &docs(&[
            &consumer("a", &format!("{{apiKeySha256: [{hash}]}}")),
            &consumer("b", &format!("{{apiKeySha256: [{}]}}", hash.to_uppercase())),
        ]),
        1,
        "spec.apiKeySha256[0]",
        "already identifies consumer demo/a",
    );
    assert_error(
        &PLAN.replace("perSecond: 5", "perSecond: 5, perMonth: -3"),
        0,
        "spec.limits.perMonth",
        "must not be negative",
    );
    assert_error(
        &PLAN.replace("{limits: {perSecond: 5}}", "{}"),
        0,
        "spec.limits",
        "required",
    );
    // The old shape is refused by name.
    assert_error(
        &PLAN.replace("{limits: {perSecond: 5}}", "{requestsPerSecond: 5}"),
        0,
        "spec.requestsPerSecond",
        "unknown field `requestsPerSecond`",
    );
}

#[test]
fn the_removed_listener_and_api_route_kinds_say_what_to_write_instead() {
    assert_error(
        "apiVersion: weft.dev/v1alpha1\nkind: Listener\nmetadata: {name: l}\nspec: {port: 80}\n",
        0,
        "kind",
        "write a Gateway",
    );
    assert_error(
        "apiVersion: weft.dev/v1alpha1\nkind: ApiRoute\nmetadata: {name: r}\nspec: {}\n",
        0,
        "kind",
        "write an HTTPRoute",
    );
}

#[test]
fn a_malformed_creation_timestamp_is_an_error() {
    assert_error(
        &ROUTE.replace(
            "namespace: demo}",
            "namespace: demo, creationTimestamp: yesterday}",
        ),
        0,
        "metadata.creationTimestamp",
        "RFC 3339",
    );
}

#[test]
fn only_weft_gateways_are_listed_as_parents_and_grpc_routes_ignore_service_parents() {
    let istio = GATEWAY
        .replace("name: edge,", "name: istio-gw,")
        .replace("gatewayClassName: weft", "gatewayClassName: istio")
        .replace("port: 8080", "port: 80");
    let route = ROUTE.replace("[{name: edge}]", "[{name: edge}, {name: istio-gw}]");
    let (set, d) = check(&docs(&[GATEWAY, &istio, &route]));
    assert!(d.iter().all(|d| !d.is_error()), "{:#?}", rendered(&d));
    let parents: Vec<String> = api_route(&set, "demo/demo")
        .parents
        .iter()
        .map(|p| p.name.clone())
        .collect();
    assert_eq!(parents, ["edge"]);

    let grpc = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g, \
                namespace: demo}\nspec:\n  parentRefs: [{name: edge}, {kind: Service, group: \
                \"\", name: greeter}]\n  rules: [{backendRefs: [{name: greeter, port: 50051}]}]\n";
    let set = assert_warning(
        &docs(&[GATEWAY, grpc]),
        1,
        "spec.parentRefs[1].kind",
        "GRPCRoute attaches to weft Gateways only",
    );
    assert_eq!(api_route(&set, "demo/grpc/g").parents.len(), 1);
    assert_eq!(set.count(ResourceType::Route), 0);
}

#[test]
fn secrets_of_other_types_are_not_certificate_sources_and_are_left_alone() {
    let opaque = "apiVersion: v1\nkind: Secret\nmetadata: {name: db, namespace: demo}\ntype: \
                  Opaque\ndata: {password: not-even-base64}\n";
    let (set, d) = check(opaque);
    assert!(d.is_empty(), "{:#?}", rendered(&d));
    assert!(set.is_empty());
}
