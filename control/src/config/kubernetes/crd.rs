//! Weft's own kinds (`weft.dev/v1alpha1`) as Kubernetes custom resources, and the CRD YAML
//! generated from them into `deploy/crds/`.
//!
//! The field names are those the YAML source accepts (`mesh.rs`, `gateway.rs`), so that a
//! document moves between standalone mode and a cluster unchanged. The two sets of types
//! are kept apart on purpose: the YAML model rejects unknown fields and carries no schema,
//! while these carry the schema the API server validates with. Tests push fully populated
//! values through both so that neither can gain a field the other lacks.
//!
//! The source reads these kinds as `DynamicObject`s, not as these types (see
//! `watch.rs`): one object that fails to decode must be skipped alone, and a typed watcher
//! would fail its whole list instead.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A workload outside Kubernetes' pod list, typically a VM, that joins the mesh.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "Workload",
    doc = "A workload that is not a pod of this cluster, typically a VM, joining the mesh.",
    namespaced,
    shortname = "wwl",
    category = "weft",
    printcolumn(name = "Node", type_ = "string", json_path = ".spec.node")
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSpec {
    /// The workload's service account, part of its SPIFFE identity; defaults to `default`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// The node whose agent captures the workload.
    pub node: String,
    /// The workload's IP addresses (one per family).
    #[schemars(length(min = 1))]
    pub ips: Vec<String>,
    /// How peers reach it: `HBONE` (mutual TLS tunnel, default) or plain `TCP`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<TunnelProtocol>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TunnelProtocol {
    #[serde(rename = "HBONE")]
    Hbone,
    #[serde(rename = "TCP")]
    Tcp,
}

/// An edge gateway listener.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "Listener",
    doc = "A port the Weft edge gateway accepts requests on.",
    namespaced,
    category = "weft",
    printcolumn(name = "Port", type_ = "integer", json_path = ".spec.port")
)]
#[serde(rename_all = "camelCase")]
pub struct ListenerSpec {
    #[schemars(range(min = 1, max = 65535))]
    pub port: i64,
    pub protocol: ListenerProtocol,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Required for `HTTPS`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ListenerProtocol {
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "HTTPS")]
    Https,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// Path of the certificate chain (PEM) on the gateway.
    pub cert_file: String,
    /// Path of the private key (PEM) on the gateway.
    pub key_file: String,
}

/// An API published at the edge gateway.
#[derive(CustomResource, Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "ApiRoute",
    doc = "An API the Weft edge gateway publishes, and the Service behind it.",
    namespaced,
    category = "weft",
    printcolumn(name = "Path", type_ = "string", json_path = ".spec.pathPrefix")
)]
#[serde(rename_all = "camelCase")]
pub struct ApiRouteSpec {
    /// Listener names; empty means every listener.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hostnames: Vec<String>,
    pub path_prefix: String,
    /// Upper-case HTTP methods; empty means every method.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    pub backend: ApiBackend,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<ApiAuth>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plans: Vec<String>,
    /// A Gateway API duration, e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ApiBackend {
    /// A Service name.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[schemars(range(min = 1, max = 65535))]
    pub port: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ApiAuth {
    None,
    ApiKey,
    Jwt,
}

/// A client of the edge gateway, identified by API keys or JWT subjects.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "Consumer",
    doc = "A client of the Weft edge gateway, identified by API keys or JWT subjects.",
    namespaced,
    category = "weft",
    printcolumn(name = "Plan", type_ = "string", json_path = ".spec.plan")
)]
#[serde(rename_all = "camelCase")]
pub struct ConsumerSpec {
    /// Hex SHA-256 of each API key; plaintext keys never go into configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub api_key_sha256: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub jwt_subjects: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<String>,
}

/// Rate limits and quotas a consumer subscribes to.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "Plan",
    doc = "Rate limits and quotas that Weft edge gateway consumers subscribe to.",
    namespaced,
    category = "weft",
    printcolumn(name = "RPS", type_ = "integer", json_path = ".spec.requestsPerSecond")
)]
#[serde(rename_all = "camelCase")]
pub struct PlanSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4294967295_i64))]
    pub requests_per_second: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 4294967295_i64))]
    pub burst: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub monthly_quota: Option<i64>,
}

/// Every CRD of the `weft.dev` group, with the file name it is kept under in `deploy/crds/`.
pub fn crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("workloads.weft.dev.yaml", Workload::crd()),
        ("listeners.weft.dev.yaml", Listener::crd()),
        ("apiroutes.weft.dev.yaml", ApiRoute::crd()),
        ("consumers.weft.dev.yaml", Consumer::crd()),
        ("plans.weft.dev.yaml", Plan::crd()),
    ]
}

/// Renders one CRD as the YAML kept in `deploy/crds/`.
pub fn crd_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_saphyr::ser::Error> {
    let body = serde_saphyr::to_string(crd)?;
    Ok(format!(
        "# Generated from control/src/config/kubernetes/crd.rs; do not edit.\n\
         # Regenerate: WEFT_UPDATE_CRDS=1 cargo test -p weft-control --test kubernetes_crds\n\
         {body}"
    ))
}
