//! The typed shape of every document kind the control plane understands, as serde structs.
//!
//! Structs deny unknown fields so that a misspelt field (`sepc`, `matchLabel`) is an error
//! with its path instead of being silently ignored — silently ignoring a policy field can
//! open traffic the operator meant to close. Fields that Kubernetes tooling adds to
//! exported objects (`status`, `metadata.resourceVersion`, ...) are accepted and ignored.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::Origin;

pub use super::endpoints::{EndpointSliceDocument, EndpointSliceSpec, NodeDocument, NodeSpec};
pub use super::gateway::{
    ApiPolicySpec, BackendSpec, ConsumerSpec, GatewaySpec, PlanSpec, SecretSpec,
};
pub use super::mesh::{ServiceSpec, WorkloadSpec};
pub use super::policy::{AuthorizationPolicySpec, NetworkPolicySpec, PeerAuthenticationSpec};
pub use super::route::{GrpcRouteSpec, HttpRouteSpec};

/// The API group of Weft's own kinds.
pub const WEFT_API_VERSION: &str = "weft.dev/v1alpha1";
/// The API version of Kubernetes' EndpointSlices.
pub const DISCOVERY_API_VERSION: &str = "discovery.k8s.io/v1";
/// The Gateway API version Weft reads.
pub const GATEWAY_API_VERSION: &str = "gateway.networking.k8s.io/v1";

/// Every supported `(apiVersion, kind)` pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Workload,
    Service,
    NetworkPolicy,
    AuthorizationPolicy,
    PeerAuthentication,
    HttpRoute,
    GrpcRoute,
    Gateway,
    Secret,
    Backend,
    ApiPolicy,
    Consumer,
    Plan,
    Node,
    EndpointSlice,
}

impl Kind {
    /// The kind for a document's `apiVersion` and `kind`, or `None` if unsupported.
    pub fn from_api(api_version: &str, kind: &str) -> Option<Kind> {
        Some(match (api_version, kind) {
            (WEFT_API_VERSION, "Workload") => Kind::Workload,
            // A Weft Service has exactly the shape of a Kubernetes one, so that files can
            // move between standalone mode and a cluster unchanged.
            ("v1" | WEFT_API_VERSION, "Service") => Kind::Service,
            ("networking.k8s.io/v1", "NetworkPolicy") => Kind::NetworkPolicy,
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "AuthorizationPolicy") => {
                Kind::AuthorizationPolicy
            }
            ("security.istio.io/v1" | "security.istio.io/v1beta1", "PeerAuthentication") => {
                Kind::PeerAuthentication
            }
            (GATEWAY_API_VERSION, "HTTPRoute") => Kind::HttpRoute,
            (GATEWAY_API_VERSION, "GRPCRoute") => Kind::GrpcRoute,
            (GATEWAY_API_VERSION, "Gateway") => Kind::Gateway,
            ("v1", "Secret") => Kind::Secret,
            (WEFT_API_VERSION, "Backend") => Kind::Backend,
            (WEFT_API_VERSION, "ApiPolicy") => Kind::ApiPolicy,
            (WEFT_API_VERSION, "Consumer") => Kind::Consumer,
            (WEFT_API_VERSION, "Plan") => Kind::Plan,
            ("v1", "Node") => Kind::Node,
            (DISCOVERY_API_VERSION, "EndpointSlice") => Kind::EndpointSlice,
            _ => return None,
        })
    }

    /// The `kind` as written in documents.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Workload => "Workload",
            Kind::Service => "Service",
            Kind::NetworkPolicy => "NetworkPolicy",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
            Kind::HttpRoute => "HTTPRoute",
            Kind::GrpcRoute => "GRPCRoute",
            Kind::Gateway => "Gateway",
            Kind::Secret => "Secret",
            Kind::Backend => "Backend",
            Kind::ApiPolicy => "ApiPolicy",
            Kind::Consumer => "Consumer",
            Kind::Plan => "Plan",
            Kind::Node => "Node",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }

    /// The expected `apiVersion`, for messages.
    pub fn api_version(self) -> &'static str {
        match self {
            Kind::Service | Kind::Secret | Kind::Node => "v1",
            Kind::EndpointSlice => DISCOVERY_API_VERSION,
            Kind::NetworkPolicy => "networking.k8s.io/v1",
            Kind::AuthorizationPolicy | Kind::PeerAuthentication => "security.istio.io/v1",
            Kind::HttpRoute | Kind::GrpcRoute | Kind::Gateway => GATEWAY_API_VERSION,
            Kind::Workload | Kind::Backend | Kind::ApiPolicy | Kind::Consumer | Kind::Plan => {
                WEFT_API_VERSION
            }
        }
    }
}

/// What to write instead of a kind Weft no longer reads, for the error that refuses it.
pub fn replaced_kind(api_version: &str, kind: &str) -> Option<&'static str> {
    match (api_version, kind) {
        (WEFT_API_VERSION, "Listener") => Some(
            "the weft.dev Listener kind is gone: write a Gateway (gateway.networking.k8s.io/v1) \
             with gatewayClassName: weft and one entry of spec.listeners per port",
        ),
        (WEFT_API_VERSION, "ApiRoute") => Some(
            "the weft.dev ApiRoute kind is gone: write an HTTPRoute whose parentRefs name a \
             weft Gateway, and an ApiPolicy (weft.dev/v1alpha1) whose targetRefs name the route \
             for authentication, plans and limits",
        ),
        _ => None,
    }
}

/// `metadata`, as in Kubernetes' `ObjectMeta` (the fields Weft uses, plus the ones exported
/// objects carry, which are ignored).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    pub uid: Option<String>,
    // Ignored: set by the API server on exported objects.
    #[serde(default)]
    pub resource_version: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    pub generation: Option<serde::de::IgnoredAny>,
    /// RFC 3339; orders routes and policies as Gateway API asks (oldest first).
    #[serde(default)]
    pub creation_timestamp: Option<String>,
    #[serde(default)]
    pub managed_fields: Option<serde::de::IgnoredAny>,
}

/// The envelope every document shares.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Document<S> {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<S>,
    /// Ignored: status is written by controllers, never configuration.
    #[serde(default)]
    pub status: Option<serde::de::IgnoredAny>,
}

/// A `v1` Secret document: no `spec`, its content sits at the top.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SecretDocument {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(rename = "type")]
    pub secret_type: Option<String>,
    #[serde(default)]
    pub data: BTreeMap<String, String>,
    #[serde(default)]
    pub string_data: BTreeMap<String, String>,
    #[serde(default)]
    pub immutable: Option<bool>,
}

impl SecretDocument {
    pub fn into_spec(self) -> SecretSpec {
        SecretSpec {
            secret_type: self.secret_type,
            data: self.data,
            string_data: self.string_data,
        }
    }
}

/// Validated `metadata`: what every kind needs to be named and selected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub uid: Option<String>,
    /// `metadata.creationTimestamp` in milliseconds since the Unix epoch; 0 when not given.
    pub created_at_unix_ms: u64,
}

impl Meta {
    /// `namespace/name`, the key of most resources.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// One document that parsed into its typed shape; field values are not validated yet
/// (that happens in [`super::compile`], which sees every document at once).
#[derive(Debug)]
pub struct ParsedDocument {
    pub origin: Origin,
    pub kind: Kind,
    pub meta: ObjectMeta,
    pub body: Body,
}

/// The kind-specific part of a [`ParsedDocument`].
#[derive(Debug)]
pub enum Body {
    Workload(WorkloadSpec),
    Service(ServiceSpec),
    NetworkPolicy(NetworkPolicySpec),
    AuthorizationPolicy(AuthorizationPolicySpec),
    PeerAuthentication(PeerAuthenticationSpec),
    HttpRoute(HttpRouteSpec),
    GrpcRoute(GrpcRouteSpec),
    Gateway(GatewaySpec),
    Secret(SecretSpec),
    Backend(BackendSpec),
    ApiPolicy(ApiPolicySpec),
    Consumer(ConsumerSpec),
    Plan(PlanSpec),
    Node(NodeSpec),
    EndpointSlice(EndpointSliceSpec),
}

/// A Kubernetes `LabelSelector`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
    #[serde(default)]
    pub match_expressions: Vec<LabelExpression>,
}

/// One `matchExpressions` entry.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabelExpression {
    pub key: String,
    pub operator: LabelOperator,
    #[serde(default)]
    pub values: Vec<String>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub enum LabelOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// An Istio `WorkloadSelector` (only `matchLabels`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// Transport protocol of a port, as Kubernetes spells it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum PortProtocol {
    #[default]
    #[serde(rename = "TCP")]
    Tcp,
    #[serde(rename = "UDP")]
    Udp,
    #[serde(rename = "SCTP")]
    Sctp,
}

/// A port given as a number or a name, as Kubernetes' `IntOrString`.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum IntOrString {
    Int(i64),
    String(String),
}
