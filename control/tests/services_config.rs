//! The file source's model of services: workload ports, readiness and weight; Nodes and
//! the locality they give workloads; traffic distribution; named target ports; and
//! EndpointSlices for services without a selector. Each bad field is an error naming the
//! file, the document and the field path.

use weft_control::config::{Diagnostic, ResourceSet, compile, parse_str};
use weft_proto::discovery::v1::{self as pb, ResourceType, resource::Kind as PbKind};

fn load(text: &str) -> (ResourceSet, Vec<Diagnostic>) {
    let mut diagnostics = Vec::new();
    let docs = parse_str("test.yaml".as_ref(), text, &mut diagnostics);
    let set = compile(&docs, &mut diagnostics);
    (set, diagnostics)
}

/// Loads `text`, which must have no diagnostic at all.
#[track_caller]
fn clean(text: &str) -> ResourceSet {
    let (set, diagnostics) = load(text);
    let rendered: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    assert!(rendered.is_empty(), "{rendered:#?}");
    set
}

/// Asserts an error of document `doc` at `path` containing `message`.
#[track_caller]
fn assert_error(text: &str, doc: usize, path: &str, message: &str) {
    assert_diagnostic(text, true, doc, path, message);
}

#[track_caller]
fn assert_warning(text: &str, doc: usize, path: &str, message: &str) {
    assert_diagnostic(text, false, doc, path, message);
}

#[track_caller]
fn assert_diagnostic(text: &str, error: bool, doc: usize, path: &str, message: &str) {
    let (_, diagnostics) = load(text);
    let rendered: Vec<String> = diagnostics.iter().map(ToString::to_string).collect();
    let prefix = format!(
        "{}test.yaml: document {doc} (0-based)",
        if error { "" } else { "warning: " }
    );
    let found = diagnostics.iter().any(|d| {
        d.is_error() == error
            && d.path == path
            && d.message.contains(message)
            && d.to_string().starts_with(&prefix)
    });
    assert!(
        found,
        "expected {prefix} {path}: {message:?}, got {rendered:#?}"
    );
}

fn workload(set: &ResourceSet, uid: &str) -> pb::Workload {
    match set.get(ResourceType::Workload, uid).map(|r| r.kind.clone()) {
        Some(Some(PbKind::Workload(w))) => w,
        other => panic!("no workload {uid}: {other:?}"),
    }
}

fn service(set: &ResourceSet, key: &str) -> pb::Service {
    match set.get(ResourceType::Service, key).map(|r| r.kind.clone()) {
        Some(Some(PbKind::Service(s))) => s,
        other => panic!("no service {key}: {other:?}"),
    }
}

fn wl(name: &str, node: &str, ip: &str, extra: &str) -> String {
    format!(
        "apiVersion: weft.dev/v1alpha1\nkind: Workload\nmetadata: {{name: {name}, namespace: default, labels: {{app: web}}}}\nspec: {{node: {node}, ips: [\"{ip}\"]{extra}}}\n"
    )
}

const NODES: &str = "apiVersion: v1\nkind: Node\nmetadata:\n  name: node-1\n  labels: {topology.kubernetes.io/region: eu, topology.kubernetes.io/zone: eu-1a}\n---\napiVersion: v1\nkind: Node\nmetadata:\n  name: node-2\n  labels: {topology.kubernetes.io/region: eu, topology.kubernetes.io/zone: eu-1b}\n";

// === Workload fields ===

#[test]
fn workload_ports_readiness_and_weight_reach_the_resource() {
    let set = clean(&wl(
        "web-1",
        "node-1",
        "10.78.1.11",
        ", ports: {http: 8080, grpc-web: 9090}, ready: false, weight: 3",
    ));
    let w = workload(&set, "default/web-1");
    assert_eq!(
        w.ports
            .iter()
            .map(|(k, v)| (k.as_str(), *v))
            .collect::<Vec<_>>(),
        [("grpc-web", 9090), ("http", 8080)]
    );
    assert_eq!(w.status(), pb::WorkloadStatus::NotReady);
    assert_eq!(w.weight, 3);

    // Defaults: ready, weight 1, no ports.
    let set = clean(&wl("web-1", "node-1", "10.78.1.11", ""));
    let w = workload(&set, "default/web-1");
    assert_eq!(w.status(), pb::WorkloadStatus::Ready);
    assert_eq!(w.weight, 1);
    assert!(w.ports.is_empty());
}

#[test]
fn bad_workload_fields_name_their_path() {
    let bad = |extra: &str| format!("{}---\n{}", NODES, wl("b", "node-1", "10.0.0.2", extra));
    assert_error(&bad(", weight: 0"), 2, "spec.weight", "must be 1-1000000");
    assert_error(
        &bad(", weight: 5000000000"),
        2,
        "spec.weight",
        "must be 1-1000000",
    );
    assert_error(&bad(", weight: -1"), 2, "spec.weight", "got -1");
    assert_error(&bad(", ready: maybe"), 2, "spec.ready", "");
    assert_error(
        &bad(", ports: {http: 70000}"),
        2,
        "spec.ports.http",
        "must be 1-65535, got 70000",
    );
    assert_error(
        &bad(", ports: {http: 0}"),
        2,
        "spec.ports.http",
        "must be 1-65535",
    );
    for name in [
        "HTTP",
        "a-very-long-port-name",
        "8080",
        "-http",
        "http-",
        "grpc--web",
        "http_2",
    ] {
        assert_error(
            &bad(&format!(", ports: {{\"{name}\": 80}}")),
            2,
            &format!("spec.ports.{name}"),
            "is not a port name",
        );
    }
}

// === Nodes ===

#[test]
fn workloads_take_the_locality_of_their_node() {
    let text = format!(
        "{NODES}---\n{}---\n{}---\n{}",
        wl("web-1", "node-1", "10.0.0.1", ""),
        wl("web-2", "node-2", "10.0.0.2", ""),
        wl("web-3", "node-9", "10.0.0.3", ""),
    );
    let set = clean(&text);
    let locality = |uid| workload(&set, uid).locality.unwrap_or_default();
    assert_eq!(
        locality("default/web-1"),
        pb::Locality {
            region: "eu".into(),
            zone: "eu-1a".into()
        }
    );
    assert_eq!(locality("default/web-2").zone, "eu-1b");
    // A node without a document: nothing known.
    assert_eq!(locality("default/web-3"), pb::Locality::default());
}

#[test]
fn bad_nodes_are_errors() {
    assert_error(
        &format!("{NODES}---\napiVersion: v1\nkind: Node\nmetadata: {{name: node-1}}\n"),
        2,
        "metadata.name",
        "Node node-1 is already defined in test.yaml: document 0 (0-based)",
    );
    assert_error(
        "apiVersion: v1\nkind: Node\nmetadata: {name: Node_1}\n",
        0,
        "metadata.name",
        "RFC 1123 subdomain",
    );
    assert_error(
        "apiVersion: v1\nkind: Node\nmetadata: {name: node-1, namespace: default}\n",
        0,
        "metadata.namespace",
        "a Node belongs to no namespace",
    );
    assert_error(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n, labels: {topology.kubernetes.io/zone: \"eu 1\"}}\n",
        0,
        "metadata.labels.topology.kubernetes.io/zone",
        "label value \"eu 1\" is invalid",
    );
    assert_error(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n}\nsepc: {}\n",
        0,
        "sepc",
        "unknown field",
    );
    assert_warning(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n, labels: {topology.kubernetes.io/zone: z}}\n",
        0,
        "metadata.labels.topology.kubernetes.io/zone",
        "a zone without topology.kubernetes.io/region",
    );
    // An exported node (spec, status) loads.
    clean(
        "apiVersion: v1\nkind: Node\nmetadata: {name: n, resourceVersion: \"7\"}\nspec: {podCIDR: 10.244.0.0/24}\nstatus: {phase: Running}\n",
    );
}

// === Services ===

fn svc(annotations: &str, extra: &str, ports: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Service\nmetadata: {{name: web, namespace: default{annotations}}}\nspec: {{selector: {{app: web}}, clusterIPs: [10.96.0.10], ports: {ports}{extra}}}\n"
    )
}

const ANNOTATION: &str = "networking.istio.io/traffic-distribution";

#[test]
fn traffic_distribution_from_the_field_or_the_annotation() {
    let port = "[{port: 80}]";
    let td = |text: &str| service(&clean(text), "default/web").traffic_distribution();
    assert_eq!(td(&svc("", "", port)), pb::TrafficDistribution::Any);
    assert_eq!(
        td(&svc("", ", trafficDistribution: PreferClose", port)),
        pb::TrafficDistribution::PreferClose
    );
    let annotated = |v: &str| format!(", annotations: {{{ANNOTATION}: {v}}}");
    assert_eq!(
        td(&svc(&annotated("PreferClose"), "", port)),
        pb::TrafficDistribution::PreferClose
    );
    assert_eq!(
        td(&svc(&annotated("Any"), "", port)),
        pb::TrafficDistribution::Any
    );
    // Both agree: no warning.
    assert_eq!(
        td(&svc(
            &annotated("PreferClose"),
            ", trafficDistribution: PreferClose",
            port
        )),
        pb::TrafficDistribution::PreferClose
    );
    // Both disagree: the field wins, with a warning on the annotation.
    let both = svc(
        &annotated("Any"),
        ", trafficDistribution: PreferClose",
        port,
    );
    let (set, _) = load(&both);
    assert_eq!(
        service(&set, "default/web").traffic_distribution(),
        pb::TrafficDistribution::PreferClose
    );
    assert_warning(
        &both,
        0,
        &format!("metadata.annotations.{ANNOTATION}"),
        "TRAFFIC_DISTRIBUTION_ANY is overridden by spec.trafficDistribution",
    );
    assert_error(
        &svc("", ", trafficDistribution: PreferSameZone", port),
        0,
        "spec.trafficDistribution",
        "must be PreferClose (or left out for any endpoint), got \"PreferSameZone\"",
    );
    assert_error(
        &svc(&annotated("Closest"), "", port),
        0,
        &format!("metadata.annotations.{ANNOTATION}"),
        "must be PreferClose or Any, got \"Closest\"",
    );
}

#[test]
fn named_target_ports_are_resolved_per_endpoint() {
    let set = clean(&svc(
        "",
        "",
        "[{name: http, port: 80, targetPort: http}, {name: admin, port: 81, targetPort: \"9000\"}]",
    ));
    let s = service(&set, "default/web");
    assert_eq!(s.ports[0].target_port, 0);
    assert_eq!(s.ports[0].target_port_name, "http");
    assert_eq!(s.ports[1].target_port, 9000);
    assert_eq!(s.ports[1].target_port_name, "");
    for bad in ["HTTP", "web-http-port-too-long", "-x"] {
        assert_error(
            &svc("", "", &format!("[{{port: 80, targetPort: \"{bad}\"}}]")),
            0,
            "spec.ports[0].targetPort",
            "is not a port name",
        );
    }
}

#[test]
fn two_services_claiming_one_vip_name_both_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), svc("", "", "[{port: 80}]")).unwrap();
    std::fs::write(
        dir.path().join("b.yaml"),
        svc("", "", "[{port: 80}]").replace("name: web", "name: api"),
    )
    .unwrap();
    let loaded = weft_control::config::load_paths(&[dir.path().to_path_buf()]);
    let errors: Vec<String> = loaded.errors().map(ToString::to_string).collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("b.yaml: document 0 (0-based)"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("spec.clusterIPs[0]"), "{}", errors[0]);
    assert!(
        errors[0].contains("10.96.0.10 is already the VIP of service default/web"),
        "{}",
        errors[0]
    );
    assert!(errors[0].contains("a.yaml"), "{}", errors[0]);
}

// === EndpointSlices ===

const EXT: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: ext, namespace: default}\nspec: {clusterIPs: [10.96.0.20], ports: [{name: http, port: 80, targetPort: 9999}]}\n";

fn slice(name: &str, address_type: &str, endpoints: &str, ports: &str) -> String {
    format!(
        "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {{name: {name}, namespace: default, labels: {{kubernetes.io/service-name: ext}}}}\naddressType: {address_type}\nendpoints:\n{endpoints}ports: {ports}\n"
    )
}

#[test]
fn endpoint_slices_make_members_and_workloads_of_other_addresses() {
    let text = format!(
        "{NODES}---\n{}---\n{EXT}---\n{}",
        wl("vm-1", "node-2", "10.78.1.40", ", ports: {http: 8443}"),
        slice(
            "ext-1",
            "IPv4",
            "- addresses: [10.78.1.50]\n  conditions: {ready: true}\n  nodeName: node-1\n  zone: eu-1c\n- addresses: [10.78.1.51]\n  conditions: {ready: false}\n- addresses: [10.78.1.40]\n",
            "[{name: http, port: 8080}]"
        ),
    );
    let (set, diagnostics) = load(&text);
    // vm-1 says http is 8443, the slice 8080: that is an error naming the workload.
    let errors: Vec<String> = diagnostics
        .iter()
        .filter(|d| d.is_error())
        .map(ToString::to_string)
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert!(
        errors[0].contains("endpoints[2].addresses[0]")
            && errors[0].contains("workload default/vm-1, whose port \"http\" is 8443, not 8080"),
        "{}",
        errors[0]
    );
    drop(set);

    let text = text.replace("ports: {http: 8443}", "labels: {}");
    let set = clean(&text.replace(", labels: {}", ""));
    let s = service(&set, "default/ext");
    assert_eq!(
        s.workload_uids,
        [
            "default/vm-1",
            "endpointslice/default/ext-1/10.78.1.50",
            "endpointslice/default/ext-1/10.78.1.51",
        ]
    );
    // The slices say where the port lands: the service's targetPort is not used.
    assert_eq!(s.ports[0].target_port, 0);
    assert_eq!(s.ports[0].target_port_name, "http");

    let e = workload(&set, "endpointslice/default/ext-1/10.78.1.50");
    assert_eq!(e.name, "ext-1-0");
    assert_eq!(e.namespace, "default");
    assert_eq!(e.service_account, "default");
    assert_eq!(e.protocol(), pb::TunnelProtocol::Tcp);
    assert_eq!(e.ips, ["10.78.1.50"]);
    assert_eq!(e.node, "node-1");
    assert_eq!(e.status(), pb::WorkloadStatus::Ready);
    assert_eq!(e.ports.get("http"), Some(&8080));
    // Zone from the endpoint, region from its node.
    assert_eq!(
        e.locality.clone().unwrap_or_default(),
        pb::Locality {
            region: "eu".into(),
            zone: "eu-1c".into()
        }
    );
    let not_ready = workload(&set, "endpointslice/default/ext-1/10.78.1.51");
    assert_eq!(not_ready.name, "ext-1-1");
    assert_eq!(not_ready.status(), pb::WorkloadStatus::NotReady);
    assert_eq!(not_ready.locality, None);
    // The member workload got the slice's port, its own fields untouched.
    let vm = workload(&set, "default/vm-1");
    assert_eq!(vm.ports.get("http"), Some(&8080));
    assert_eq!(vm.protocol(), pb::TunnelProtocol::Hbone);
    assert_eq!(vm.locality.unwrap_or_default().zone, "eu-1b");
}

#[test]
fn an_unnamed_slice_port_is_the_port_of_a_single_port_service() {
    let unnamed = EXT.replace("{name: http, port: 80, targetPort: 9999}", "{port: 80}");
    let text = format!(
        "{unnamed}---\n{}---\n{}",
        slice(
            "ext-1",
            "IPv4",
            "- addresses: [10.0.0.50]\n",
            "[{port: 8080}]"
        ),
        slice(
            "ext-2",
            "IPv6",
            "- addresses: [\"fd00::50\"]\n",
            "[{port: 8080, protocol: TCP}]"
        ),
    );
    let set = clean(&text);
    let s = service(&set, "default/ext");
    assert_eq!(
        (s.ports[0].target_port, s.ports[0].target_port_name.as_str()),
        (8080, "")
    );
    assert_eq!(s.workload_uids.len(), 2);
    // Slices that disagree on the unnamed port.
    assert_error(
        &text.replace("[{port: 8080, protocol: TCP}]", "[{port: 9090}]"),
        2,
        "ports[0].port",
        "the unnamed port of Service default/ext is 9090 here but 8080 in test.yaml: document 1",
    );
    // A service with a named single port: the endpoints get the port under its name.
    let set = clean(&format!(
        "{EXT}---\n{}",
        slice(
            "ext-1",
            "IPv4",
            "- addresses: [10.0.0.50]\n",
            "[{port: 8080}]"
        )
    ));
    assert_eq!(
        service(&set, "default/ext").ports[0].target_port_name,
        "http"
    );
    assert_eq!(
        workload(&set, "endpointslice/default/ext-1/10.0.0.50")
            .ports
            .get("http"),
        Some(&8080)
    );
}

#[test]
fn a_service_with_a_selector_ignores_slices() {
    let text = format!(
        "{}---\n{}---\n{}",
        wl("web-1", "node-1", "10.0.0.1", ""),
        EXT.replace("spec: {", "spec: {selector: {app: web}, "),
        slice(
            "ext-1",
            "IPv4",
            "- addresses: [10.0.0.50]\n",
            "[{name: http, port: 8080}]"
        ),
    );
    let (set, _) = load(&text);
    let s = service(&set, "default/ext");
    assert_eq!(s.workload_uids, ["default/web-1"]);
    assert_eq!(s.ports[0].target_port, 9999);
    assert!(
        set.get(
            ResourceType::Workload,
            "endpointslice/default/ext-1/10.0.0.50"
        )
        .is_none()
    );
    assert_warning(
        &text,
        2,
        "metadata.labels.kubernetes.io/service-name",
        "Service default/ext has a selector, which picks its members: the slice is ignored",
    );
}

#[test]
fn bad_endpoint_slices_name_their_field() {
    let ok_endpoints = "- addresses: [10.0.0.50]\n";
    let ok_ports = "[{name: http, port: 8080}]";
    let bad = |address_type: &str, endpoints: &str, ports: &str| {
        format!(
            "{EXT}---\n{}",
            slice("ext-1", address_type, endpoints, ports)
        )
    };
    assert_error(
        &bad("IPv5", ok_endpoints, ok_ports),
        1,
        "addressType",
        "must be IPv4, IPv6 or FQDN, got \"IPv5\"",
    );
    assert_warning(
        &bad("FQDN", "- addresses: [db.example.com]\n", ok_ports),
        1,
        "addressType",
        "FQDN endpoints are not supported",
    );
    assert_error(
        &bad("IPv4", "- addresses: [\"fd00::1\"]\n", ok_ports),
        1,
        "endpoints[0].addresses[0]",
        "fd00::1 is not an IPv4 address, as addressType says",
    );
    assert_error(
        &bad("IPv4", "- addresses: [10.0.0.300]\n", ok_ports),
        1,
        "endpoints[0].addresses[0]",
        "not an IPv4 or IPv6 address",
    );
    assert_error(
        &bad("IPv4", "- addresses: []\n", ok_ports),
        1,
        "endpoints[0].addresses",
        "must list 1-100 addresses, got 0",
    );
    assert_error(
        &bad(
            "IPv4",
            "- addresses: [10.0.0.50]\n  conditions: {ready: yes please}\n",
            ok_ports,
        ),
        1,
        "endpoints[0].conditions.ready",
        "",
    );
    assert_error(
        &bad(
            "IPv4",
            "- addresses: [10.0.0.50]\n  nodeName: Node_1\n",
            ok_ports,
        ),
        1,
        "endpoints[0].nodeName",
        "RFC 1123 subdomain",
    );
    assert_error(
        &bad(
            "IPv4",
            "- addresses: [10.0.0.50]\n  adresses: []\n",
            ok_ports,
        ),
        1,
        "endpoints[0].adresses",
        "unknown field",
    );
    assert_error(
        &bad("IPv4", ok_endpoints, "[{name: http, port: 0}]"),
        1,
        "ports[0].port",
        "must be 1-65535, got 0",
    );
    assert_error(
        &bad("IPv4", ok_endpoints, "[{name: http}]"),
        1,
        "ports[0].port",
        "required",
    );
    assert_error(
        &bad(
            "IPv4",
            ok_endpoints,
            "[{name: http, port: 80}, {name: http, port: 81}]",
        ),
        1,
        "ports[1].name",
        "\"http\" is already the name of ports[0]",
    );
    assert_error(
        &bad("IPv4", ok_endpoints, "[{name: HTTP, port: 80}]"),
        1,
        "ports[0].name",
        "RFC 1123 label",
    );
    // An unnamed port, for a service of two ports.
    let two = EXT.replace(
        "[{name: http, port: 80, targetPort: 9999}]",
        "[{name: http, port: 80}, {name: admin, port: 81}]",
    );
    assert_error(
        &format!(
            "{two}---\n{}",
            slice("ext-1", "IPv4", ok_endpoints, "[{port: 80}]")
        ),
        1,
        "ports[0].name",
        "an unnamed port only fits a service with one port, and default/ext has 2",
    );
    // No service label, or a service that does not exist.
    assert_error(
        &format!(
            "{EXT}---\n{}",
            slice("ext-1", "IPv4", ok_endpoints, ok_ports)
        )
        .replace("labels: {kubernetes.io/service-name: ext}", "labels: {}"),
        1,
        "metadata.labels",
        "the label kubernetes.io/service-name must name the slice's Service",
    );
    assert_warning(
        &format!(
            "{EXT}---\n{}",
            slice("ext-1", "IPv4", ok_endpoints, ok_ports)
                .replace("service-name: ext", "service-name: nope")
        ),
        1,
        "metadata.labels.kubernetes.io/service-name",
        "no Service default/nope is defined: the slice is ignored",
    );
    assert_warning(
        &bad("IPv4", ok_endpoints, "[{name: grpc, port: 80}]"),
        1,
        "ports[0].name",
        "Service default/ext has no port named \"grpc\"",
    );
    // Past Kubernetes' bound on endpoints per slice.
    let many: String = (0..1001)
        .map(|i| format!("- addresses: [10.1.{}.{}]\n", i / 250, i % 250 + 1))
        .collect();
    assert_error(
        &bad("IPv4", &many, ok_ports),
        1,
        "endpoints",
        "at most 1000 endpoints per slice, got 1001",
    );
}

#[test]
fn an_address_in_two_slices_is_one_workload() {
    let other = EXT
        .replace("name: ext,", "name: ext2,")
        .replace("10.96.0.20", "10.96.0.21");
    let text = format!(
        "{EXT}---\n{other}---\n{}---\n{}",
        slice(
            "ext-1",
            "IPv4",
            "- addresses: [10.0.0.50]\n",
            "[{name: http, port: 8080}]"
        ),
        slice(
            "ext2-1",
            "IPv4",
            "- addresses: [10.0.0.50]\n",
            "[{name: http, port: 8080}]"
        )
        .replace("service-name: ext", "service-name: ext2"),
    );
    let set = clean(&text);
    let uid = "endpointslice/default/ext-1/10.0.0.50";
    assert_eq!(service(&set, "default/ext").workload_uids, [uid]);
    assert_eq!(service(&set, "default/ext2").workload_uids, [uid]);
    assert_eq!(set.count(ResourceType::Workload), 1);
}
