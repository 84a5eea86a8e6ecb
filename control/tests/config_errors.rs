//! Every kind of mistake an operator can make in a configuration document is reported with
//! its file, its document's 0-based index and the field path.

use weft_control::config::{Diagnostic, compile, load_paths, parse_str};

const WORKLOAD: &str = "apiVersion: weft.dev/v1alpha1\nkind: Workload\nmetadata: {name: a, namespace: shop, labels: {app: a}}\nspec: {node: node-1, ips: [10.0.0.1]}\n";

fn check(text: &str) -> Vec<Diagnostic> {
    let mut diagnostics = Vec::new();
    let docs = parse_str("test.yaml".as_ref(), text, &mut diagnostics);
    compile(&docs, &mut diagnostics);
    diagnostics
}

/// Asserts that `text` (appended after one valid workload, so the bad document is
/// document 1) yields an error at `path` whose message contains `message`.
#[track_caller]
fn assert_error(text: &str, path: &str, message: &str) {
    let full = format!("{WORKLOAD}---\n{text}");
    let diagnostics = check(&full);
    let rendered: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    let found = diagnostics.iter().any(|d| {
        d.is_error()
            && d.path == path
            && d.message.contains(message)
            && d.to_string().starts_with("test.yaml: document 1 (0-based)")
    });
    assert!(found, "expected {path}: {message:?}, got {rendered:#?}");
}

#[test]
fn valid_documents_have_no_diagnostics() {
    let loaded = load_paths(&["tests/fixtures".into()]);
    let rendered: Vec<String> = loaded.diagnostics.iter().map(ToString::to_string).collect();
    assert!(rendered.is_empty(), "{rendered:#?}");
    assert_eq!(loaded.documents, 8);
}

#[test]
fn bad_yaml_syntax() {
    let d = check(&format!("{WORKLOAD}---\nkind: [unclosed\n"));
    assert!(d[0].is_error());
    assert_eq!(d[0].line, Some(6), "{}", d[0]);
    assert!(
        d[0].to_string()
            .starts_with("test.yaml: document 1 (0-based), line 6"),
        "{}",
        d[0]
    );
}

#[test]
fn missing_api_version() {
    assert_error(
        "kind: Workload\nmetadata: {name: b}\nspec: {}\n",
        "apiVersion",
        "required",
    );
}

#[test]
fn missing_kind() {
    assert_error(
        "apiVersion: v1\nmetadata: {name: b}\nspec: {}\n",
        "kind",
        "required",
    );
}

#[test]
fn missing_metadata_name() {
    assert_error(
        "apiVersion: v1\nkind: Service\nmetadata: {namespace: shop}\nspec: {ports: [{port: 80}]}\n",
        "metadata.name",
        "required",
    );
}

#[test]
fn missing_spec() {
    assert_error(
        "apiVersion: v1\nkind: Service\nmetadata: {name: b}\n",
        "spec",
        "required",
    );
}

#[test]
fn port_out_of_range() {
    assert_error(
        "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec:\n  ports:\n  - {name: a, port: 80}\n  - {name: b, port: 70000}\n",
        "spec.ports[1].port",
        "must be 1-65535, got 70000",
    );
}

#[test]
fn bad_ip() {
    assert_error(
        "apiVersion: weft.dev/v1alpha1\nkind: Workload\nmetadata: {name: b}\nspec: {node: n, ips: [10.0.0.300]}\n",
        "spec.ips[0]",
        "not an IPv4 or IPv6 address",
    );
}

#[test]
fn bad_cidr() {
    assert_error(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b}\nspec:\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/33}}]\n",
        "spec.ingress[0].from[0].ipBlock.cidr",
        "is not a CIDR",
    );
}

#[test]
fn cidr_with_host_bits() {
    assert_error(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b}\nspec:\n  rules:\n  - from: [{source: {ipBlocks: [10.1.2.3/8]}}]\n",
        "spec.rules[0].from[0].source.ipBlocks[0]",
        "host bits set; did you mean 10.0.0.0/8",
    );
}

#[test]
fn duplicate_name_in_a_file() {
    assert_error(
        "apiVersion: weft.dev/v1alpha1\nkind: Workload\nmetadata: {name: a, namespace: shop}\nspec: {node: n, ips: [10.0.0.2]}\n",
        "metadata.name",
        "already defined in test.yaml: document 0 (0-based)",
    );
}

#[test]
fn duplicate_name_across_files_of_a_directory() {
    let dir = tempfile::tempdir().unwrap();
    let service =
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec: {ports: [{port: 80}]}\n";
    std::fs::write(dir.path().join("a.yaml"), service).unwrap();
    std::fs::write(dir.path().join("b.yml"), service).unwrap();
    let loaded = load_paths(&[dir.path().to_path_buf()]);
    let errors: Vec<String> = loaded.errors().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("b.yml: document 0 (0-based)"),
        "{}",
        errors[0]
    );
    assert!(
        errors[0].contains("Service default/web is already defined in"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("a.yaml"), "{}", errors[0]);
}

#[test]
fn selector_of_the_wrong_type() {
    assert_error(
        "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {selector: [app, web], ports: [{port: 80}]}\n",
        "spec.selector",
        "",
    );
}

#[test]
fn route_backend_of_the_wrong_kind() {
    assert_error(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{kind: Service, group: \"\", name: web}]\n  rules:\n  - backendRefs: [{kind: Workload, name: a, port: 80}]\n",
        "spec.rules[0].backendRefs[0].kind",
        "backends must be Services",
    );
}

#[test]
fn unknown_field_in_spec() {
    assert_error(
        "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: [{port: 80}], selektor: {app: a}}\n",
        "spec.selektor",
        "unknown field `selektor`, expected one of selector, ports",
    );
}

#[test]
fn wrong_type_for_a_field() {
    assert_error(
        "apiVersion: weft.dev/v1alpha1\nkind: Workload\nmetadata: {name: b}\nspec: {node: n, ips: 10.0.0.5}\n",
        "spec.ips",
        "",
    );
}

#[test]
fn negative_weight() {
    assert_error(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{kind: Service, group: \"\", name: web}]\n  rules:\n  - backendRefs: [{name: web, port: 80, weight: -5}]\n",
        "spec.rules[0].backendRefs[0].weight",
        "must be 0-1000000, got -5",
    );
}

#[test]
fn bad_action() {
    assert_error(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec: {action: PERMIT}\n",
        "spec.action",
        "unknown variant `PERMIT`",
    );
}

#[test]
fn bad_mode() {
    assert_error(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {mtls: {mode: STRIKT}}\n",
        "spec.mtls.mode",
        "unknown variant `STRIKT`",
    );
}

#[test]
fn unsupported_mode() {
    assert_error(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p}\nspec: {mtls: {mode: DISABLE}}\n",
        "spec.mtls.mode",
        "DISABLE is not supported",
    );
}

#[test]
fn empty_ips() {
    assert_error(
        "apiVersion: weft.dev/v1alpha1\nkind: Workload\nmetadata: {name: b}\nspec: {node: n, ips: []}\n",
        "spec.ips",
        "at least one IP",
    );
}

#[test]
fn bad_label_key() {
    assert_error(
        "apiVersion: weft.dev/v1alpha1\nkind: Workload\nmetadata: {name: b, labels: {\"-app\": x}}\nspec: {node: n, ips: [10.0.0.9]}\n",
        "metadata.labels.-app",
        "label key \"-app\" is invalid",
    );
}

#[test]
fn bad_label_value_in_a_selector() {
    assert_error(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b}\nspec: {podSelector: {matchLabels: {app: \"a b\"}}}\n",
        "spec.podSelector.matchLabels.app",
        "label value \"a b\" is invalid",
    );
}

#[test]
fn invalid_namespace_name() {
    assert_error(
        "apiVersion: v1\nkind: Service\nmetadata: {name: b, namespace: Shop_1}\nspec: {ports: [{port: 80}]}\n",
        "metadata.namespace",
        "RFC 1123 label",
    );
}

#[test]
fn duplicate_workload_ip() {
    assert_error(
        "apiVersion: weft.dev/v1alpha1\nkind: Workload\nmetadata: {name: b, namespace: shop}\nspec: {node: n, ips: [10.0.0.1]}\n",
        "spec.ips[0]",
        "10.0.0.1 is already used by workload shop/a",
    );
}

#[test]
fn non_mapping_document() {
    assert_error("- just\n- a list\n", "", "must be a mapping");
}

#[test]
fn bad_service_account_name() {
    assert_error(
        "apiVersion: weft.dev/v1alpha1\nkind: Workload\nmetadata: {name: b}\nspec: {serviceAccount: My_SA, node: n, ips: [10.0.0.7]}\n",
        "spec.serviceAccount",
        "RFC 1123 subdomain",
    );
}

#[test]
fn missing_node() {
    assert_error(
        "apiVersion: weft.dev/v1alpha1\nkind: Workload\nmetadata: {name: b}\nspec: {ips: [10.0.0.7]}\n",
        "spec.node",
        "required",
    );
}

#[test]
fn bad_duration() {
    assert_error(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r}\nspec:\n  parentRefs: [{kind: Service, group: \"\", name: web}]\n  rules:\n  - timeouts: {request: 10 seconds}\n",
        "spec.rules[0].timeouts.request",
        "is not a duration",
    );
}

/// A named target port is resolved per endpoint; a name Kubernetes would refuse is an error.
#[test]
fn named_target_port() {
    let d = check(&format!(
        "{WORKLOAD}---\napiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec: {{ports: [{{port: 80, targetPort: http}}]}}\n"
    ));
    assert!(d.is_empty(), "{d:?}");
    assert_error(
        "apiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {ports: [{port: 80, targetPort: Http_1}]}\n",
        "spec.ports[0].targetPort",
        "\"Http_1\" is not a port name",
    );
}

#[test]
fn except_outside_its_cidr() {
    assert_error(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b}\nspec:\n  ingress:\n  - from: [{ipBlock: {cidr: 10.0.0.0/8, except: [192.168.0.0/16]}}]\n",
        "spec.ingress[0].from[0].ipBlock.except[0]",
        "is not inside 10.0.0.0/8",
    );
}

#[test]
fn principal_with_scheme() {
    assert_error(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\nspec:\n  rules:\n  - from: [{source: {principals: [\"spiffe://cluster.local/ns/a/sa/b\"]}}]\n",
        "spec.rules[0].from[0].source.principals[0]",
        "without the spiffe:// scheme",
    );
}

#[test]
fn unknown_kinds_are_skipped_with_a_warning() {
    let d = check(&format!(
        "{WORKLOAD}---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: x}}\nspec: {{}}\n"
    ));
    assert_eq!(d.len(), 1);
    assert!(!d[0].is_error());
    assert_eq!(
        d[0].to_string(),
        "warning: test.yaml: document 1 (0-based) (Deployment): unknown kind \"Deployment\" of apiVersion \"apps/v1\", skipped"
    );
}

#[test]
fn every_error_of_a_file_is_reported_at_once() {
    let text = format!(
        "{WORKLOAD}---\nkind: X\n---\napiVersion: v1\nkind: Service\nmetadata: {{name: b}}\nspec: {{ports: [{{port: 0}}]}}\n"
    );
    let errors: Vec<String> = check(&text)
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect();
    assert_eq!(errors.len(), 2, "{errors:#?}");
    assert!(errors[0].contains("document 1 (0-based)"));
    assert!(errors[1].contains("document 2 (0-based)"));
}

/// Weft enforces NetworkPolicy ingress only; an egress part would be accepted and ignored,
/// so the document is refused (its ingress part with it) until egress is enforced.
#[test]
fn network_policy_egress_is_refused_not_ignored() {
    assert_error(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b}\nspec:\n  ingress:\n  - from: [{podSelector: {}}]\n  egress:\n  - to: [{ipBlock: {cidr: 10.0.0.0/8}}]\n",
        "spec.egress",
        "egress is not enforced yet",
    );
    assert_error(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: b}\nspec:\n  policyTypes: [Ingress, Egress]\n",
        "spec.policyTypes[1]",
        "egress is not enforced yet",
    );
    // The whole document is rejected: no Policy resource comes out of it, ingress included.
    let text = format!(
        "{WORKLOAD}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: b, namespace: shop}}\nspec:\n  ingress:\n  - from: [{{podSelector: {{}}}}]\n  egress: []\n"
    );
    let diagnostics = check(&text);
    assert!(diagnostics.iter().any(|d| d.is_error()), "{diagnostics:?}");
}

/// `namespaces` and `notNamespaces` take patterns as principals do (Istio): `*`, a prefix
/// followed by `*`, `*` followed by a suffix, or a name.
#[test]
fn authorization_namespace_patterns_are_accepted_and_checked() {
    let policy = |namespaces: &str| {
        format!(
            "{WORKLOAD}---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: b, namespace: shop}}\nspec:\n  rules:\n  - from: [{{source: {{namespaces: {namespaces}}}}}]\n"
        )
    };
    for ok in ["[\"*\"]", "[\"team-*\"]", "[\"*-prod\"]", "[shop]"] {
        let d = check(&policy(ok));
        assert!(!d.iter().any(|d| d.is_error()), "{ok}: {d:?}");
    }
    assert_error(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b}\nspec:\n  rules:\n  - from: [{source: {namespaces: [\"te*am\"]}}]\n",
        "spec.rules[0].from[0].source.namespaces[0]",
        "'*' only at the start or the end",
    );
    assert_error(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: b}\nspec:\n  rules:\n  - from: [{source: {notNamespaces: [\"Team-*\"]}}]\n",
        "spec.rules[0].from[0].source.notNamespaces[0]",
        "lower-case",
    );
}
