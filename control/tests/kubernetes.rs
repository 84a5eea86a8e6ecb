//! The Kubernetes source's translation, from objects as `kubectl get -o json` prints them
//! (tests/fixtures/kubernetes/) to the resources agents receive. No API server runs here:
//! these tests start where the kube client hands over decoded objects.

use std::{path::Path, sync::Arc};

use k8s_openapi::{
    api::{
        core::v1::{Pod, Secret, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::Time,
};
use kube::core::DynamicObject;
use serde::de::DeserializeOwned;
use weft_control::config::{
    Loaded, ResourceSet, compile,
    document::Kind,
    kubernetes::{
        Objects, assemble, crd,
        translate::{self, Translation},
    },
    parse_str,
};
use weft_proto::discovery::v1::{self as pb, ResourceType, resource::Kind as PbKind};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kubernetes");

fn text(name: &str) -> String {
    std::fs::read_to_string(Path::new(FIXTURES).join(name)).expect("fixture exists")
}

/// The objects of a fixture: a `List` (as `kubectl get pods -o json` prints) or one object.
fn objects<T: DeserializeOwned>(name: &str) -> Vec<Arc<T>> {
    let value: serde_json::Value = serde_json::from_str(&text(name)).expect("fixture is JSON");
    let items = match value.get("items") {
        Some(serde_json::Value::Array(items)) => items.clone(),
        _ => vec![value],
    };
    items
        .into_iter()
        .map(|v| Arc::new(serde_json::from_value(v).expect("fixture decodes")))
        .collect()
}

fn cluster() -> Objects {
    Objects {
        pods: objects::<Pod>("pods.json"),
        services: objects::<Service>("services.json"),
        endpoint_slices: objects::<EndpointSlice>("endpointslice.json"),
        network_policies: objects::<NetworkPolicy>("networkpolicy.json"),
        secrets: objects::<Secret>("secrets.json"),
        dynamic: vec![
            (
                Kind::AuthorizationPolicy,
                objects("authorizationpolicy.json"),
            ),
            (Kind::PeerAuthentication, objects("peerauthentication.json")),
            (Kind::HttpRoute, objects("httproute.json")),
            (Kind::Workload, objects("workload-vm.json")),
        ],
    }
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

fn policy(set: &ResourceSet, name: &str) -> pb::Policy {
    match set.get(ResourceType::Policy, name).map(|r| r.kind.clone()) {
        Some(Some(PbKind::Policy(p))) => p,
        other => panic!("no policy {name}: {other:?}"),
    }
}

fn messages(loaded: &Loaded) -> Vec<String> {
    loaded.diagnostics.iter().map(ToString::to_string).collect()
}

#[test]
fn pods_become_workloads_unless_they_have_no_ip_use_the_host_network_or_finished() {
    let pods = objects::<Pod>("pods.json");
    let outcome: Vec<(String, &str)> = pods
        .iter()
        .map(|p| {
            let name = p.metadata.name.clone().unwrap();
            match translate::pod(p) {
                Translation::Document(_) => (name, "document"),
                Translation::Skipped(_) => (name, "skipped"),
                Translation::Rejected(d) => panic!("{d}"),
            }
        })
        .collect();
    let outcome: Vec<(&str, &str)> = outcome.iter().map(|(n, o)| (n.as_str(), *o)).collect();
    assert_eq!(
        outcome,
        [
            ("web-7d4b9c8f6-x2x9k", "document"),
            ("web-7d4b9c8f6-pq8lm", "skipped"), // pending, no IP
            ("kube-proxy-7xq2v", "skipped"),    // hostNetwork
            ("api-5c9f7b6d8-h7rtw", "document"),
            ("db-migrate-k4n2c", "skipped"), // Succeeded
        ]
    );

    let loaded = assemble(&cluster());
    let web = workload(&loaded.resources, "5f1c2a9e-8b0d-4c6e-a3f4-2d9e7b1c6a01");
    assert_eq!(web.name, "web-7d4b9c8f6-x2x9k");
    assert_eq!(web.namespace, "shop");
    assert_eq!(web.service_account, "web");
    assert_eq!(web.node, "node-a");
    assert_eq!(web.ips, ["10.244.1.17"]);
    assert_eq!(web.labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(web.protocol(), pb::TunnelProtocol::Hbone);

    // Dual stack: both families, in the kubelet's order.
    let api = workload(&loaded.resources, "c2e94f70-6d1b-4f8a-b5c3-91e07d4a8f56");
    assert_eq!(api.ips, ["10.244.2.9", "fd00:10:244:2::9"]);
    assert_eq!(api.node, "node-b");
    // Two pods and the VM.
    assert_eq!(loaded.resources.count(ResourceType::Workload), 3);
}

#[test]
fn services_keep_named_ports_and_select_pods() {
    let loaded = assemble(&cluster());
    let web = service(&loaded.resources, "shop/web");
    assert_eq!(web.vips, ["10.96.120.15"]);
    assert_eq!(web.ports.len(), 1);
    // targetPort "http" is resolved per endpoint: the web pod's container port 8080.
    assert_eq!(
        (
            web.ports[0].port,
            web.ports[0].target_port,
            web.ports[0].target_port_name.as_str()
        ),
        (80, 0, "http")
    );
    let pod = workload(&loaded.resources, "5f1c2a9e-8b0d-4c6e-a3f4-2d9e7b1c6a01");
    let ports: Vec<(&str, u32)> = pod.ports.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    assert_eq!(ports, [("http", 8080), ("metrics", 9090)]);
    assert_eq!(web.workload_uids, ["5f1c2a9e-8b0d-4c6e-a3f4-2d9e7b1c6a01"]);

    let headless = service(&loaded.resources, "shop/api-headless");
    assert!(headless.vips.is_empty());
    assert_eq!(headless.ports[0].app_protocol, "kubernetes.io/h2c");
    assert_eq!(
        headless.workload_uids,
        ["c2e94f70-6d1b-4f8a-b5c3-91e07d4a8f56"]
    );

    // Dual-stack LoadBalancer: both VIPs; "admin" names no container port of today's pods,
    // which only means no endpoint of that port until a pod has one.
    let api = service(&loaded.resources, "shop/api");
    assert_eq!(api.vips, ["10.96.44.201", "fd00:10:96::2c9"]);
    let ports: Vec<(u32, u32, &str)> = api
        .ports
        .iter()
        .map(|p| (p.port, p.target_port, p.target_port_name.as_str()))
        .collect();
    assert_eq!(ports, [(7000, 0, "grpc"), (9901, 0, "admin")]);
    let msgs = messages(&loaded);
    assert!(
        !msgs.iter().any(|m| m.contains("Service shop/api")),
        "{msgs:#?}"
    );

    // ExternalName services are DNS aliases, not part of the mesh.
    assert!(
        loaded
            .resources
            .get(ResourceType::Service, "shop/payments-provider")
            .is_none()
    );
}

#[test]
fn endpoint_slices_put_a_vm_behind_a_service_without_selector() {
    let loaded = assemble(&cluster());
    let vm = workload(&loaded.resources, "d1e2f3a4-b5c6-4d7e-8f90-a1b2c3d4e5f6");
    assert_eq!(
        (
            vm.name.as_str(),
            vm.node.as_str(),
            vm.service_account.as_str()
        ),
        ("db-vm-1", "vm-gw-1", "legacy-db")
    );
    assert_eq!(vm.protocol(), pb::TunnelProtocol::Tcp);
    let db = service(&loaded.resources, "shop/legacy-db");
    // The ready endpoint is the VM; the not-ready one (192.168.50.11) is no workload anyway.
    assert_eq!(db.workload_uids, [vm.uid]);
}

#[test]
fn policies_and_routes_translate_like_their_files() {
    let loaded = assemble(&cluster());
    assert!(!loaded.has_errors());

    let np = policy(
        &loaded.resources,
        "networkpolicy/shop/web-from-frontend/ingress",
    );
    assert_eq!(np.source(), pb::PolicySource::NetworkPolicy);
    assert_eq!(np.rules.len(), 1);
    assert_eq!(np.rules[0].from.len(), 3);
    assert_eq!(np.rules[0].from[2].ip_blocks[0].cidr, "10.0.0.0/8");
    let ports: Vec<(u32, u32)> = np.rules[0].to[0]
        .ports
        .iter()
        .map(|p| (p.port, p.end_port))
        .collect();
    assert_eq!(ports, [(8080, 0), (9090, 9100)]);

    let ap = policy(
        &loaded.resources,
        "authorizationpolicy/shop/web-allow-frontend",
    );
    assert_eq!(ap.action(), pb::PolicyAction::Allow);
    assert_eq!(
        ap.rules[0].from[0].principals,
        ["cluster.local/ns/shop/sa/frontend"]
    );
    assert_eq!(ap.rules[0].to[0].methods, ["GET", "POST"]);

    let pa = policy(
        &loaded.resources,
        "peerauthentication/shop/strict-except-metrics",
    );
    assert_eq!(pa.mode(), pb::PeerAuthMode::Strict);
    assert_eq!(
        pa.port_modes.get(&9090).copied(),
        Some(i32::from(pb::PeerAuthMode::Permissive))
    );

    let route = match loaded
        .resources
        .get(ResourceType::Route, "shop/web-canary")
        .and_then(|r| r.kind.clone())
    {
        Some(PbKind::Route(r)) => r,
        other => panic!("{other:?}"),
    };
    let weights: Vec<(&str, u32)> = route.rules[0]
        .backends
        .iter()
        .map(|b| (b.name.as_str(), b.weight))
        .collect();
    assert_eq!(weights, [("web", 90), ("api", 10)]);
    assert_eq!(route.rules[0].request_timeout_ms, 10_000);

    // The same objects read as files (JSON is YAML) give the same resources: both
    // transports share one model.
    for (name, ty) in [
        ("networkpolicy.json", ResourceType::Policy),
        ("authorizationpolicy.json", ResourceType::Policy),
        ("peerauthentication.json", ResourceType::Policy),
        ("workload-vm.json", ResourceType::Workload),
    ] {
        let mut diagnostics = Vec::new();
        let docs = parse_str(Path::new(name), &text(name), &mut diagnostics);
        let from_file = compile(&docs, &mut diagnostics);
        assert!(diagnostics.is_empty(), "{name}: {diagnostics:?}");
        for r in from_file.of_type(ty) {
            assert_eq!(
                loaded.resources.get(ty, &r.name),
                Some(r),
                "{name}: {}",
                r.name
            );
        }
    }
}

#[test]
fn a_bad_object_is_skipped_alone_with_its_kind_name_and_field_path() {
    let mut objects = cluster();
    objects.dynamic.push((
        Kind::AuthorizationPolicy,
        self::objects("authorizationpolicy-unsupported.json"),
    ));
    // A pod that claims the VM's address, created after it: the VM keeps the address.
    let mut clash = (*objects.pods[0]).clone();
    clash.metadata.name = Some("zz-clash".into());
    clash.metadata.creation_timestamp = Some(Time("2026-03-02T12:00:00Z".parse().unwrap()));
    clash.metadata.uid = Some("0f0f0f0f-0000-4000-8000-000000000001".into());
    let status = clash.status.as_mut().unwrap();
    status.pod_ip = Some("192.168.50.10".into());
    status.pod_ips.as_mut().unwrap()[0].ip = "192.168.50.10".into();
    objects.pods.push(Arc::new(clash));

    let loaded = assemble(&objects);
    // Nothing is an error: the configuration is served without the bad objects.
    assert!(!loaded.has_errors());
    let msgs = messages(&loaded);
    assert!(
        msgs.iter().any(|m| m.starts_with(
            "warning: AuthorizationPolicy shop/api-require-jwt: spec.rules[0].from[0].source.\
             notRequestPrincipals: unknown field `notRequestPrincipals`"
        ) && m.ends_with("; the object is skipped")),
        "{msgs:#?}"
    );
    assert!(
        msgs.iter().any(|m| m.starts_with(
            "warning: Pod shop/zz-clash: status.podIPs[0].ip: 192.168.50.10 is already used by \
             workload shop/db-vm-1"
        )),
        "{msgs:#?}"
    );
    assert!(
        loaded
            .resources
            .get(
                ResourceType::Policy,
                "authorizationpolicy/shop/api-require-jwt"
            )
            .is_none()
    );
    assert!(
        loaded
            .resources
            .get(
                ResourceType::Workload,
                "0f0f0f0f-0000-4000-8000-000000000001"
            )
            .is_none()
    );
    // Everything else is in force.
    let good = assemble(&cluster());
    assert_eq!(loaded.resources, good.resources);
}

#[test]
fn the_workload_custom_resource_decodes_into_its_rust_type() {
    let vm = &objects::<crd::Workload>("workload-vm.json")[0];
    assert_eq!(vm.spec.node, "vm-gw-1");
    assert_eq!(vm.spec.ips, ["192.168.50.10"]);
    assert_eq!(vm.spec.service_account.as_deref(), Some("legacy-db"));
    assert_eq!(vm.spec.protocol, Some(crd::TunnelProtocol::Tcp));
    // And the same object, watched as a DynamicObject, translates.
    let dynamic = &objects::<DynamicObject>("workload-vm.json")[0];
    assert!(matches!(
        translate::dynamic(Kind::Workload, dynamic),
        Translation::Document(_)
    ));
}

#[test]
fn a_network_policy_with_egress_keeps_its_ingress_part_and_says_egress_is_not_enforced() {
    let good = assemble(&cluster());
    let ingress = policy(
        &good.resources,
        "networkpolicy/shop/web-from-frontend/ingress",
    );
    let egress_rule = serde_json::json!([{ "to": [{ "ipBlock": { "cidr": "10.9.0.0/16" } }] }]);

    // With policyTypes [Ingress, Egress], and with no policyTypes at all (Kubernetes then
    // infers Ingress and, from the egress rules, Egress).
    for types in [Some(serde_json::json!(["Ingress", "Egress"])), None] {
        let mut value: serde_json::Value =
            serde_json::from_str(&text("networkpolicy.json")).unwrap();
        let spec = value["spec"].as_object_mut().unwrap();
        spec.insert("egress".into(), egress_rule.clone());
        match &types {
            Some(t) => spec.insert("policyTypes".into(), t.clone()),
            None => spec.remove("policyTypes"),
        };
        let mut objects = cluster();
        objects.network_policies = vec![Arc::new(serde_json::from_value(value).unwrap())];

        let loaded = assemble(&objects);
        assert!(!loaded.has_errors(), "{:#?}", messages(&loaded));
        // Skipping the object would leave the pods it isolates open to every source.
        assert_eq!(
            policy(
                &loaded.resources,
                "networkpolicy/shop/web-from-frontend/ingress"
            ),
            ingress,
            "policyTypes {types:?}"
        );
        assert!(
            loaded
                .resources
                .get(
                    ResourceType::Policy,
                    "networkpolicy/shop/web-from-frontend/egress"
                )
                .is_none()
        );
        let msgs = messages(&loaded);
        assert!(
            msgs.iter().any(|m| m.starts_with(
                "warning: NetworkPolicy shop/web-from-frontend: spec.egress: egress is not \
                 enforced: only this policy's ingress part is applied"
            )),
            "{msgs:#?}"
        );
    }

    // Egress only: nothing to apply, and no pod isolated for ingress by it.
    let mut value: serde_json::Value = serde_json::from_str(&text("networkpolicy.json")).unwrap();
    let spec = value["spec"].as_object_mut().unwrap();
    spec.remove("ingress");
    spec.insert("egress".into(), egress_rule);
    spec.insert("policyTypes".into(), serde_json::json!(["Egress"]));
    let mut objects = cluster();
    objects.network_policies = vec![Arc::new(serde_json::from_value(value).unwrap())];
    let loaded = assemble(&objects);
    assert!(!loaded.has_errors(), "{:#?}", messages(&loaded));
    assert!(
        loaded
            .resources
            .get(
                ResourceType::Policy,
                "networkpolicy/shop/web-from-frontend/ingress"
            )
            .is_none()
    );
}

/// The edge gateway's objects (edge.json), grouped by kind as the watches deliver them.
fn edge_objects() -> Vec<(Kind, Vec<Arc<DynamicObject>>)> {
    let mut groups: Vec<(Kind, Vec<Arc<DynamicObject>>)> = Vec::new();
    for obj in objects::<DynamicObject>("edge.json") {
        let types = obj.types.clone().expect("apiVersion and kind");
        let kind = Kind::from_api(&types.api_version, &types.kind).expect("a known kind");
        match groups.iter_mut().find(|(k, _)| *k == kind) {
            Some((_, list)) => list.push(obj),
            None => groups.push((kind, vec![obj])),
        }
    }
    groups
}

#[test]
fn gateway_api_and_weft_edge_objects_become_gateway_resources() {
    let mut objects = cluster();
    objects.dynamic.extend(edge_objects());
    let loaded = assemble(&objects);
    let messages = messages(&loaded);
    assert!(!loaded.has_errors(), "{messages:#?}");
    // The TLS Secret no weft Gateway names is not read: its broken content goes unreported.
    assert!(
        messages.iter().all(|m| !m.contains("unrelated")),
        "{messages:#?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("warning: Gateway demo/istio-gw") && m.contains("\"istio\"")),
        "{messages:#?}"
    );

    let set = &loaded.resources;
    let https = match set
        .get(ResourceType::Listener, "demo/edge/https")
        .and_then(|r| r.kind.clone())
    {
        Some(PbKind::Listener(l)) => l,
        other => panic!("{other:?}"),
    };
    assert_eq!(https.certificates.len(), 1);
    assert_eq!(https.certificates[0].name, "demo/edge-cert");
    assert!(https.certificates[0].cert_pem.contains("BEGIN CERTIFICATE"));
    assert!(set.get(ResourceType::Listener, "demo/edge/http").is_some());
    assert_eq!(
        set.count(ResourceType::Listener),
        2,
        "the istio Gateway is not ours"
    );

    let route = match set
        .get(ResourceType::ApiRoute, "demo/demo")
        .and_then(|r| r.kind.clone())
    {
        Some(PbKind::ApiRoute(r)) => r,
        other => panic!("{other:?}"),
    };
    assert_eq!(route.parents[0].section_name, "https");
    assert_eq!(route.created_at_unix_ms, 1_772_444_400_000);
    assert_eq!(
        route.policy.as_ref().map(|p| p.plans.clone()),
        Some(vec!["demo/gold".to_string()])
    );
    assert_eq!(route.rules[0].backends[1].url, "https://10.0.0.9:9443");
    assert!(
        set.get(ResourceType::ApiRoute, "demo/grpc/greeter")
            .is_some()
    );
    assert!(set.get(ResourceType::Consumer, "demo/alice").is_some());
    assert!(set.get(ResourceType::Plan, "demo/gold").is_some());

    // The same objects read as a file give the same gateway resources.
    // A List's items are the documents of a file; the referenced Secret joins them.
    let mut diagnostics = Vec::new();
    let docs = {
        let list: serde_json::Value = serde_json::from_str(&text("edge.json")).expect("JSON");
        let secrets: serde_json::Value = serde_json::from_str(&text("secrets.json")).expect("JSON");
        let items: Vec<String> = list["items"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(secrets["items"].as_array().into_iter().flatten().take(1))
            .map(|v| serde_json::to_string(v).expect("JSON"))
            .collect();
        parse_str(
            Path::new("edge.yaml"),
            &items.join("\n---\n"),
            &mut diagnostics,
        )
    };
    let from_file = compile(&docs, &mut diagnostics);
    assert!(diagnostics.iter().all(|d| !d.is_error()), "{diagnostics:?}");
    for ty in [
        ResourceType::Listener,
        ResourceType::ApiRoute,
        ResourceType::Consumer,
        ResourceType::Plan,
    ] {
        let a: Vec<_> = from_file.of_type(ty).collect();
        let b: Vec<_> = set.of_type(ty).collect();
        assert_eq!(a, b, "{ty:?}");
    }
}

#[test]
fn a_route_whose_policy_is_invalid_is_skipped_with_it_not_served_without_it() {
    let mut objects = cluster();
    let mut edge = edge_objects();
    for (kind, list) in &mut edge {
        if *kind == Kind::ApiPolicy {
            let mut policy = (*list[0]).clone();
            // A plan that does not exist.
            policy.data["spec"]["plans"] = serde_json::json!(["platinum"]);
            list[0] = Arc::new(policy);
        }
    }
    objects.dynamic.extend(edge);
    let loaded = assemble(&objects);
    let messages = messages(&loaded);
    assert!(!loaded.has_errors(), "{messages:#?}");
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("warning: ApiPolicy demo/demo-api")
                && m.contains("spec.plans[0]")
                && m.ends_with("the object is skipped")),
        "{messages:#?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("warning: HTTPRoute demo/demo")
                && m.contains("its ApiPolicy demo/demo-api is invalid")),
        "{messages:#?}"
    );
    assert!(
        loaded
            .resources
            .get(ResourceType::ApiRoute, "demo/demo")
            .is_none(),
        "the route is not served without its policy"
    );
    // The rest is served.
    assert!(
        loaded
            .resources
            .get(ResourceType::ApiRoute, "demo/grpc/greeter")
            .is_some()
    );
}

#[test]
fn a_route_whose_policy_cannot_be_read_is_skipped_not_served_without_it() {
    let mut objects = cluster();
    let mut edge = edge_objects();
    for (kind, list) in &mut edge {
        if *kind == Kind::ApiPolicy {
            let mut policy = (*list[0]).clone();
            policy.data["spec"]["apiKeys"] = serde_json::json!({});
            list[0] = Arc::new(policy);
        }
    }
    objects.dynamic.extend(edge);
    let loaded = assemble(&objects);
    let messages = messages(&loaded);
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("warning: ApiPolicy demo/demo-api") && m.contains("apiKeys")),
        "{messages:#?}"
    );
    assert!(
        messages
            .iter()
            .any(|m| m.starts_with("warning: HTTPRoute demo/demo")
                && m.contains("cannot be read")
                && m.ends_with("the object is skipped")),
        "{messages:#?}"
    );
    assert!(
        loaded
            .resources
            .get(ResourceType::ApiRoute, "demo/demo")
            .is_none()
    );
    assert!(
        loaded
            .resources
            .get(ResourceType::ApiRoute, "demo/grpc/greeter")
            .is_some()
    );
}
