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
    /// Named ports (name -> number), which services' named `targetPort`s resolve to.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub ports: std::collections::BTreeMap<String, i32>,
    /// Whether services send it new connections; defaults to true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// Its share of a service's new connections relative to the other endpoints
    /// (1-1000000); defaults to 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TunnelProtocol {
    #[serde(rename = "HBONE")]
    Hbone,
    #[serde(rename = "TCP")]
    Tcp,
}

/// A plain HTTP or HTTPS backend outside the mesh, for `backendRefs` of group `weft.dev`.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "Backend",
    doc = "A plain HTTP or HTTPS backend outside the mesh that Weft gateway routes send to.",
    namespaced,
    category = "weft",
    printcolumn(name = "URL", type_ = "string", json_path = ".spec.url")
)]
#[serde(rename_all = "camelCase")]
pub struct BackendSpec {
    /// `http://host[:port]` or `https://host[:port]`, without a path.
    pub url: String,
    /// Extra trust anchors (PEM) for an `https://` url, on top of the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
}

/// How callers of the routes (or Gateway) it targets authenticate, and how they are
/// metered.
#[derive(CustomResource, Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[kube(
    group = "weft.dev",
    version = "v1alpha1",
    kind = "ApiPolicy",
    doc = "Authentication, plans and limits of the HTTPRoutes, GRPCRoutes or Gateway it targets.",
    namespaced,
    category = "weft",
    printcolumn(name = "API", type_ = "string", json_path = ".spec.api")
)]
#[serde(rename_all = "camelCase")]
pub struct ApiPolicySpec {
    /// HTTPRoutes, GRPCRoutes or Gateways of the policy's namespace.
    #[schemars(length(min = 1))]
    pub target_refs: Vec<PolicyTargetRef>,
    /// The API's name for analytics and per-API limits; the policy's name by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<String>,
    /// API keys are accepted; `{}` looks in the `x-api-key` header and `apikey` parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_key: Option<ApiKeyAuth>,
    /// JWT bearer tokens are accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtAuth>,
    /// Requests without a credential pass as anonymous.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_anonymous: bool,
    /// Scopes a JWT must carry, all of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub required_scopes: Vec<String>,
    /// Plans (of this namespace) a consumer must subscribe to one of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plans: Vec<String>,
    /// `Route` (default) or `API`: whether plan limits count per route or per API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_scope: Option<LimitScope>,
    /// Limits on anonymous requests, per client address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous_limits: Option<Limits>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct PolicyTargetRef {
    /// `gateway.networking.k8s.io` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `HTTPRoute`, `GRPCRoute` or `Gateway`.
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ApiKeyAuth {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub query_params: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct JwtAuth {
    #[schemars(length(min = 1))]
    pub providers: Vec<JwtProvider>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JwtProvider {
    pub name: String,
    /// The `iss` the tokens carry.
    pub issuer: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub audiences: Vec<String>,
    pub jwks: Jwks,
    /// How long a fetched JWKS is used, e.g. `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh: Option<String>,
    /// Allowed clock skew, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_skew: Option<String>,
    /// The claim that names the consumer; `sub` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_claim: Option<String>,
    /// The claim holding scopes; `scope` by default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope_claim: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub claim_to_headers: Vec<ClaimToHeader>,
}

/// Exactly one of `uri`, `file` or `inline`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Jwks {
    /// An `https://` URL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// A file on the gateway's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// The JWKS document itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inline: Option<String>,
    /// Extra trust anchors (PEM) for `uri`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_certificate: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
pub struct ClaimToHeader {
    pub claim: String,
    pub header: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum LimitScope {
    Route,
    #[serde(rename = "API")]
    Api,
}

/// Requests per window; 0 or absent means no limit for that window.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub per_second: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub per_minute: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub per_hour: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub per_day: Option<i64>,
    /// Per calendar month (UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub per_month: Option<i64>,
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
    printcolumn(
        name = "Per second",
        type_ = "integer",
        json_path = ".spec.limits.perSecond"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct PlanSpec {
    pub limits: Limits,
}

/// Every CRD of the `weft.dev` group, with the file name it is kept under in `deploy/crds/`.
pub fn crds() -> Vec<(&'static str, CustomResourceDefinition)> {
    vec![
        ("workloads.weft.dev.yaml", Workload::crd()),
        ("backends.weft.dev.yaml", Backend::crd()),
        ("apipolicies.weft.dev.yaml", ApiPolicy::crd()),
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
