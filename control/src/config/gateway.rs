//! The edge gateway's own kinds (`weft.dev/v1alpha1` Listener, ApiRoute, Consumer, Plan).
//! They start with a few fields each and will grow with the gateway.

use serde::Deserialize;
use weft_proto::discovery::v1 as pb;

use super::{
    document::Meta,
    validate::{self, Checker},
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenerSpec {
    pub port: i64,
    /// `HTTP` or `HTTPS`.
    pub protocol: ListenerProtocol,
    pub hostname: Option<String>,
    pub tls: Option<ListenerTls>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum ListenerProtocol {
    #[serde(rename = "HTTP")]
    Http,
    #[serde(rename = "HTTPS")]
    Https,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ListenerTls {
    pub cert_file: String,
    pub key_file: String,
}

pub fn listener(meta: &Meta, spec: &ListenerSpec, c: &mut Checker<'_>) -> pb::Listener {
    let port = c.check("spec.port", validate::port(spec.port)).unwrap_or(0);
    if let Some(h) = &spec.hostname {
        c.check(
            "spec.hostname",
            validate::dns_subdomain(h.strip_prefix("*.").unwrap_or(h)),
        );
    }
    match (spec.protocol, &spec.tls) {
        (ListenerProtocol::Https, None) => c.error("spec.tls", "required for HTTPS"),
        (ListenerProtocol::Http, Some(_)) => c.error("spec.tls", "only allowed for HTTPS"),
        _ => {}
    }
    pb::Listener {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        port,
        protocol: match spec.protocol {
            ListenerProtocol::Http => pb::ListenerProtocol::Http,
            ListenerProtocol::Https => pb::ListenerProtocol::Https,
        }
        .into(),
        hostname: spec.hostname.clone().unwrap_or_default(),
        ..Default::default()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiRouteSpec {
    #[serde(default)]
    pub listeners: Vec<String>,
    #[serde(default)]
    pub hostnames: Vec<String>,
    pub path_prefix: String,
    #[serde(default)]
    pub methods: Vec<String>,
    pub backend: ApiBackend,
    /// `None` (default), `ApiKey` or `Jwt`.
    pub auth: Option<ApiAuth>,
    #[serde(default)]
    pub plans: Vec<String>,
    pub timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiBackend {
    pub name: String,
    pub namespace: Option<String>,
    pub port: i64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
pub enum ApiAuth {
    None,
    ApiKey,
    Jwt,
}

pub fn api_route(meta: &Meta, spec: &ApiRouteSpec, c: &mut Checker<'_>) -> pb::ApiRoute {
    if !spec.path_prefix.starts_with('/') {
        c.error(
            "spec.pathPrefix",
            format!("must start with '/', got {:?}", spec.path_prefix),
        );
    }
    for (i, m) in spec.methods.iter().enumerate() {
        if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
            c.error(
                format!("spec.methods[{i}]"),
                format!("must be an upper-case HTTP method such as GET, got {m:?}"),
            );
        }
    }
    let port = c
        .check("spec.backend.port", validate::port(spec.backend.port))
        .unwrap_or(0);
    let timeout_ms = spec
        .timeout
        .as_deref()
        .and_then(|t| c.check("spec.timeout", validate::duration_ms(t)))
        .unwrap_or(0);
    let _ = (port, timeout_ms);
    pb::ApiRoute {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        ..Default::default()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsumerSpec {
    /// Hex SHA-256 of each API key; plaintext keys never go into configuration.
    #[serde(default)]
    pub api_key_sha256: Vec<String>,
    #[serde(default)]
    pub jwt_subjects: Vec<String>,
    pub plan: Option<String>,
}

pub fn consumer(meta: &Meta, spec: &ConsumerSpec, c: &mut Checker<'_>) -> pb::Consumer {
    for (i, h) in spec.api_key_sha256.iter().enumerate() {
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            c.error(
                format!("spec.apiKeySha256[{i}]"),
                "must be 64 hex digits (the SHA-256 of the key, not the key itself)",
            );
        }
    }
    pb::Consumer {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        api_key_sha256: spec
            .api_key_sha256
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        jwt_subjects: spec.jwt_subjects.clone(),
        plan: spec.plan.clone().unwrap_or_default(),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlanSpec {
    pub requests_per_second: Option<i64>,
    pub burst: Option<i64>,
    pub monthly_quota: Option<i64>,
}

pub fn plan(meta: &Meta, spec: &PlanSpec, c: &mut Checker<'_>) -> pb::Plan {
    let mut non_negative = |path: &str, v: Option<i64>, max: i64| -> i64 {
        let v = v.unwrap_or(0);
        if !(0..=max).contains(&v) {
            c.error(path, format!("must be 0-{max}, got {v}"));
        }
        v.clamp(0, max)
    };
    let rps = non_negative(
        "spec.requestsPerSecond",
        spec.requests_per_second,
        u32::MAX.into(),
    );
    let burst = non_negative("spec.burst", spec.burst, u32::MAX.into());
    let quota = non_negative("spec.monthlyQuota", spec.monthly_quota, i64::MAX);
    let _ = burst;
    pb::Plan {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        limits: Some(pb::RateLimits {
            per_second: rps as u64,
            per_month: quota as u64,
            ..Default::default()
        }),
    }
}
