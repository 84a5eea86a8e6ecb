//! The CRDs of deploy/crds/ are what the Rust types generate, and the types agree with the
//! YAML model the file source reads.
//!
//! Regenerate after changing a type: `WEFT_UPDATE_CRDS=1 cargo test -p weft-control --test
//! kubernetes_crds`.

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrBool,
};
use kube::core::DynamicObject;
use serde_json::{Value, json};
use weft_control::config::{
    document::Kind,
    kubernetes::{
        crd,
        translate::{self, Translation},
    },
};

fn crd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds")
}

#[test]
fn checked_in_crds_match_the_types() {
    let dir = crd_dir();
    let update = std::env::var_os("WEFT_UPDATE_CRDS").is_some();
    if update {
        std::fs::create_dir_all(&dir).unwrap();
    }
    let mut stale = Vec::new();
    for (file, crd) in crd::crds() {
        let want = crd::crd_yaml(&crd).unwrap();
        let path = dir.join(file);
        if update {
            std::fs::write(&path, &want).unwrap();
            continue;
        }
        let have = std::fs::read_to_string(&path).unwrap_or_default();
        if have != want {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "deploy/crds/ differs from the Rust types for {stale:?}; run \
         WEFT_UPDATE_CRDS=1 cargo test -p weft-control --test kubernetes_crds"
    );
}

#[test]
fn checked_in_crds_parse_back() {
    for (file, generated) in crd::crds() {
        let text = std::fs::read_to_string(crd_dir().join(file)).unwrap();
        let parsed: CustomResourceDefinition = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(parsed, generated, "{file}");
    }
}

/// A CA certificate (any valid PEM certificate does).
const CA: &str = include_str!("edge/ca.pem");

/// A spec with every field set, for each kind, as an operator would write it.
fn full_specs() -> Vec<(Kind, &'static str, Value)> {
    vec![
        (
            Kind::Workload,
            "workloads.weft.dev",
            json!({"serviceAccount": "db", "node": "vm-1", "ips": ["192.0.2.7", "2001:db8::7"],
                   "protocol": "TCP", "ports": {"http": 8080}, "ready": false, "weight": 2}),
        ),
        (
            Kind::Backend,
            "backends.weft.dev",
            json!({"url": "https://10.0.0.9:9443", "caCertificate": CA}),
        ),
        (
            Kind::ApiPolicy,
            "apipolicies.weft.dev",
            json!({"targetRefs": [{"group": "gateway.networking.k8s.io", "kind": "HTTPRoute", "name": "demo"}],
                   "api": "demo",
                   "apiKey": {"headers": ["x-api-key"], "queryParams": ["apikey"]},
                   "jwt": {"providers": [{"name": "idp", "issuer": "https://idp.example",
                       "audiences": ["demo"],
                       "jwks": {"uri": "https://idp.example/jwks", "caCertificate": CA},
                       "refresh": "5m", "clockSkew": "30s", "consumerClaim": "sub",
                       "scopeClaim": "scope",
                       "claimToHeaders": [{"claim": "sub", "header": "x-user"}]}]},
                   "allowAnonymous": true, "requiredScopes": ["read"], "plans": ["gold"],
                   "limitScope": "API",
                   "anonymousLimits": {"perSecond": 1, "perMinute": 2, "perHour": 3, "perDay": 4, "perMonth": 5}}),
        ),
        (
            Kind::Consumer,
            "consumers.weft.dev",
            json!({"apiKeySha256": ["9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"],
                   "jwtSubjects": ["acme"], "plan": "gold"}),
        ),
        (
            Kind::Plan,
            "plans.weft.dev",
            json!({"limits": {"perSecond": 1, "perMinute": 2, "perHour": 3, "perDay": 4, "perMonth": 5}}),
        ),
    ]
}

fn object(kind: Kind, spec: &Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "weft.dev/v1alpha1", "kind": kind.name(),
        "metadata": {"name": "full", "namespace": "shop", "uid": "u-1"},
        "spec": spec,
    }))
    .expect("a DynamicObject")
}

#[test]
fn every_field_the_yaml_model_reads_is_in_the_crd_schema() {
    let crds = crd::crds();
    for (kind, crd_name, spec) in full_specs() {
        // The file source's model takes the whole spec (it rejects unknown fields).
        match translate::dynamic(kind, &object(kind, &spec)) {
            Translation::Document(_) => {}
            other => panic!("{crd_name}: {other:?}"),
        }
        // And the API server would keep every field: a field missing from a structural
        // schema is silently pruned.
        let (_, crd) = crds
            .iter()
            .find(|(_, c)| c.metadata.name.as_deref() == Some(crd_name))
            .unwrap();
        let schema = crd.spec.versions[0]
            .schema
            .as_ref()
            .and_then(|s| s.open_api_v3_schema.as_ref())
            .and_then(|s| s.properties.as_ref())
            .and_then(|p| p.get("spec"))
            .unwrap();
        assert_fields_in_schema(crd_name, "spec", &spec, schema);
    }
}

fn assert_fields_in_schema(crd: &str, at: &str, value: &Value, schema: &JSONSchemaProps) {
    match value {
        Value::Object(map) => {
            // A map (`ports: {http: 8080}`): every value has the same schema.
            if let Some(JSONSchemaPropsOrBool::Schema(values)) = &schema.additional_properties {
                for (key, v) in map {
                    assert_fields_in_schema(crd, &format!("{at}.{key}"), v, values);
                }
                return;
            }
            for (key, v) in map {
                let field = schema
                    .properties
                    .as_ref()
                    .and_then(|p| p.get(key))
                    .unwrap_or_else(|| panic!("{crd}: {at}.{key} is not in the schema"));
                assert_fields_in_schema(crd, &format!("{at}.{key}"), v, field);
            }
        }
        Value::Array(items) => {
            let Some(item_schema) = schema.items.as_ref() else {
                panic!("{crd}: {at} has no item schema");
            };
            let item_schema: JSONSchemaProps =
                serde_json::from_value(serde_json::to_value(item_schema).expect("encodes"))
                    .expect("an item schema");
            for v in items {
                assert_fields_in_schema(crd, &format!("{at}[]"), v, &item_schema);
            }
        }
        _ => {}
    }
}

#[test]
fn the_crd_types_take_what_the_yaml_model_takes() {
    for (kind, crd_name, spec) in full_specs() {
        let obj = json!({"apiVersion": "weft.dev/v1alpha1", "kind": kind.name(),
                         "metadata": {"name": "full", "namespace": "shop"}, "spec": spec});
        // Decoding and encoding again must give back every field.
        let round = match kind {
            Kind::Workload => roundtrip::<crd::Workload>(&obj),
            Kind::Backend => roundtrip::<crd::Backend>(&obj),
            Kind::ApiPolicy => roundtrip::<crd::ApiPolicy>(&obj),
            Kind::Consumer => roundtrip::<crd::Consumer>(&obj),
            Kind::Plan => roundtrip::<crd::Plan>(&obj),
            other => panic!("{other:?}"),
        };
        assert_eq!(round["spec"], obj["spec"], "{crd_name}");
    }
}

fn roundtrip<T: serde::de::DeserializeOwned + serde::Serialize>(v: &Value) -> Value {
    let typed: T = serde_json::from_value(v.clone()).expect("decodes");
    serde_json::to_value(typed).expect("encodes")
}
