//! The edge gateway's documents, one at a time: Gateway API `Gateway`, TLS `Secret`s, and
//! Weft's own `Backend`, `ApiPolicy`, `Consumer` and `Plan` (`weft.dev/v1alpha1`). Each
//! function here validates one document's fields; what needs several documents (a
//! listener's certificates, a policy's plans, which route a policy attaches to) is resolved
//! in [`super::edge`].

use std::collections::BTreeMap;

use base64::Engine as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};
use serde::Deserialize;
use weft_proto::discovery::v1 as pb;

use super::{
    document::Meta,
    validate::{self, Checker},
};

/// The `gatewayClassName` of the Gateways this control plane serves; other classes belong
/// to other implementations and are left alone.
pub const GATEWAY_CLASS: &str = "weft";
/// The Gateway API group, which `parentRefs` and `targetRefs` default to.
pub const GATEWAY_GROUP: &str = "gateway.networking.k8s.io";
/// The group of Weft's own kinds, as a `backendRef` names it.
pub const WEFT_GROUP: &str = "weft.dev";
/// The `type` of a Secret that holds a certificate and its key.
pub const TLS_SECRET_TYPE: &str = "kubernetes.io/tls";

// === Gateway ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewaySpec {
    pub gateway_class_name: String,
    #[serde(default)]
    pub listeners: Vec<GatewayListenerSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayListenerSpec {
    pub name: String,
    pub hostname: Option<String>,
    pub port: i64,
    /// `HTTP` or `HTTPS`; kept as text so that `TLS`, `TCP` or `UDP` get a clear error.
    pub protocol: String,
    pub tls: Option<GatewayTlsSpec>,
    pub allowed_routes: Option<AllowedRoutesSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayTlsSpec {
    /// `Terminate` (the default) or `Passthrough`, which Weft does not do.
    pub mode: Option<String>,
    #[serde(default)]
    pub certificate_refs: Vec<SecretRefSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecretRefSpec {
    pub group: Option<String>,
    pub kind: Option<String>,
    pub name: String,
    pub namespace: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AllowedRoutesSpec {
    pub namespaces: Option<RouteNamespacesSpec>,
    #[serde(default)]
    pub kinds: Vec<RouteGroupKindSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteNamespacesSpec {
    /// `Same` (the default) or `All`; `Selector` is not supported.
    pub from: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteGroupKindSpec {
    pub group: Option<String>,
    pub kind: String,
}

/// One validated listener of a `weft` Gateway, before its certificates are resolved.
#[derive(Debug, Clone)]
pub struct GatewayListener {
    pub index: usize,
    pub listener: pb::Listener,
    /// Names of the Secrets (in the Gateway's namespace) of `tls.certificateRefs`.
    pub certificate_refs: Vec<String>,
    /// Routes from every namespace may attach (`allowedRoutes.namespaces.from: All`).
    pub all_namespaces: bool,
    /// Route kinds that may attach (`HTTPRoute`, `GRPCRoute`).
    pub kinds: Vec<String>,
}

/// Validates a Gateway's listeners. The caller has checked the class is ours.
pub fn gateway(meta: &Meta, spec: &GatewaySpec, c: &mut Checker<'_>) -> Vec<GatewayListener> {
    if spec.listeners.is_empty() {
        c.error("spec.listeners", "must list at least one listener");
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut out = Vec::new();
    for (i, l) in spec.listeners.iter().enumerate() {
        let at = format!("spec.listeners[{i}]");
        c.check(format!("{at}.name"), validate::dns_subdomain(&l.name));
        if let Some(first) = names.insert(&l.name, i) {
            c.error(
                format!("{at}.name"),
                format!(
                    "listener {:?} is already defined at spec.listeners[{first}]",
                    l.name
                ),
            );
        }
        let port = c
            .check(format!("{at}.port"), validate::port(l.port))
            .unwrap_or(0);
        if let Some(h) = &l.hostname {
            c.check(format!("{at}.hostname"), validate::hostname(h, true));
        }
        let protocol = match l.protocol.as_str() {
            "HTTP" => pb::ListenerProtocol::Http,
            "HTTPS" => pb::ListenerProtocol::Https,
            other => {
                c.error(
                    format!("{at}.protocol"),
                    format!(
                        "must be HTTP or HTTPS, got {other:?} (the weft gateway serves HTTP \
                         only: TLS passthrough, TCP and UDP listeners are not supported)"
                    ),
                );
                pb::ListenerProtocol::Unspecified
            }
        };
        let mut certificate_refs = Vec::new();
        match (protocol, &l.tls) {
            (pb::ListenerProtocol::Https, None) => c.error(
                format!("{at}.tls"),
                "required for HTTPS: give mode Terminate and certificateRefs",
            ),
            (pb::ListenerProtocol::Http, Some(_)) => {
                c.error(format!("{at}.tls"), "only allowed for HTTPS")
            }
            (pb::ListenerProtocol::Https, Some(tls)) => {
                let mode = tls.mode.as_deref().unwrap_or("Terminate");
                if mode != "Terminate" {
                    c.error(
                        format!("{at}.tls.mode"),
                        format!("must be Terminate, got {mode:?} (no TLS passthrough)"),
                    );
                }
                if tls.certificate_refs.is_empty() {
                    c.error(
                        format!("{at}.tls.certificateRefs"),
                        "must name at least one Secret of type kubernetes.io/tls",
                    );
                }
                for (j, r) in tls.certificate_refs.iter().enumerate() {
                    let rat = format!("{at}.tls.certificateRefs[{j}]");
                    let kind = r.kind.as_deref().unwrap_or("Secret");
                    if kind != "Secret" || !matches!(r.group.as_deref(), None | Some("" | "core")) {
                        c.error(
                            format!("{rat}.kind"),
                            format!("must be a Secret (group \"\"), got kind {kind:?}"),
                        );
                    }
                    if let Some(ns) = &r.namespace
                        && *ns != meta.namespace
                    {
                        c.error(
                            format!("{rat}.namespace"),
                            format!(
                                "the Secret must be in the Gateway's namespace {:?}, got {ns:?} \
                                 (ReferenceGrant is not supported)",
                                meta.namespace
                            ),
                        );
                    }
                    certificate_refs.push(r.name.clone());
                }
            }
            _ => {}
        }
        let (all_namespaces, kinds) = allowed_routes(&at, l.allowed_routes.as_ref(), c);
        out.push(GatewayListener {
            index: i,
            listener: pb::Listener {
                name: l.name.clone(),
                namespace: meta.namespace.clone(),
                port,
                protocol: protocol.into(),
                hostname: l.hostname.clone().unwrap_or_default(),
                gateway: meta.name.clone(),
                certificates: Vec::new(),
            },
            certificate_refs,
            all_namespaces,
            kinds,
        });
    }
    out
}

fn allowed_routes(
    at: &str,
    allowed: Option<&AllowedRoutesSpec>,
    c: &mut Checker<'_>,
) -> (bool, Vec<String>) {
    let all_kinds = vec!["HTTPRoute".to_string(), "GRPCRoute".to_string()];
    let Some(allowed) = allowed else {
        return (false, all_kinds);
    };
    let all = match allowed.namespaces.as_ref().and_then(|n| n.from.as_deref()) {
        None | Some("Same") => false,
        Some("All") => true,
        Some(other) => {
            c.error(
                format!("{at}.allowedRoutes.namespaces.from"),
                format!("must be Same or All, got {other:?} (Selector is not supported)"),
            );
            false
        }
    };
    if allowed.kinds.is_empty() {
        return (all, all_kinds);
    }
    let mut kinds = Vec::new();
    for (k, gk) in allowed.kinds.iter().enumerate() {
        let group_ok = matches!(gk.group.as_deref(), None | Some(GATEWAY_GROUP));
        if !group_ok || !matches!(gk.kind.as_str(), "HTTPRoute" | "GRPCRoute") {
            c.error(
                format!("{at}.allowedRoutes.kinds[{k}]"),
                format!(
                    "must be HTTPRoute or GRPCRoute of group {GATEWAY_GROUP}, got {:?}",
                    gk.kind
                ),
            );
        }
        kinds.push(gk.kind.clone());
    }
    (all, kinds)
}

// === Secret ===

/// A `v1` Secret, used only as the source of a listener's certificate.
#[derive(Debug, Default)]
pub struct SecretSpec {
    pub secret_type: Option<String>,
    /// Base64 values.
    pub data: BTreeMap<String, String>,
    /// Plain values; they win over `data`, as in Kubernetes.
    pub string_data: BTreeMap<String, String>,
}

/// Reads a TLS Secret's certificate and key, checking both parse and belong together.
/// `None` for a Secret of another type (not a certificate source) or with errors.
pub fn tls_secret(
    meta: &Meta,
    spec: &SecretSpec,
    c: &mut Checker<'_>,
) -> Option<pb::TlsCertificate> {
    if spec.secret_type.as_deref() != Some(TLS_SECRET_TYPE) {
        return None;
    }
    let mut value = |key: &str| -> Option<String> {
        if let Some(v) = spec.string_data.get(key) {
            return Some(v.clone());
        }
        let Some(encoded) = spec.data.get(key) else {
            c.error(
                format!("data.{key}"),
                "required in a kubernetes.io/tls Secret (in data, base64, or stringData)",
            );
            return None;
        };
        let bytes = c.check(
            format!("data.{key}"),
            base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|e| format!("is not base64: {e}")),
        )?;
        c.check(
            format!("data.{key}"),
            String::from_utf8(bytes).map_err(|_| "does not decode to PEM text".to_string()),
        )
    };
    let cert_pem = value("tls.crt");
    let key_pem = value("tls.key");
    let field = |key: &str| {
        if spec.string_data.contains_key(key) {
            format!("stringData.{key}")
        } else {
            format!("data.{key}")
        }
    };
    let certs = cert_pem
        .as_deref()
        .and_then(|pem| c.check(field("tls.crt"), certificates(pem)));
    let key = key_pem
        .as_deref()
        .and_then(|pem| c.check(field("tls.key"), private_key(pem)));
    if let (Some(certs), Some(key)) = (certs, key) {
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        if let Err(e) = rustls::sign::CertifiedKey::from_der(certs, key, &provider) {
            c.error(
                field("tls.key"),
                format!("does not belong to the certificate of tls.crt: {e}"),
            );
            return None;
        }
    }
    Some(pb::TlsCertificate {
        name: meta.key(),
        cert_pem: cert_pem?,
        key_pem: key_pem?,
    })
}

/// Every certificate of a PEM text; at least one, each a parseable X.509 certificate.
pub fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let mut out = Vec::new();
    for (i, cert) in CertificateDer::pem_slice_iter(pem.as_bytes()).enumerate() {
        let cert = cert.map_err(|e| format!("certificate {i} is not valid PEM: {e}"))?;
        x509_parser::parse_x509_certificate(&cert)
            .map_err(|e| format!("certificate {i} is not an X.509 certificate: {e}"))?;
        out.push(cert);
    }
    if out.is_empty() {
        return Err("holds no PEM certificate (-----BEGIN CERTIFICATE-----)".to_string());
    }
    Ok(out)
}

/// A PEM private key (PKCS#8, PKCS#1 or SEC1) of a type the gateway can sign with.
fn private_key(pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("holds no PEM private key (PKCS#8, PKCS#1 or SEC1): {e}"))?;
    rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
        .map_err(|e| format!("is not a usable private key: {e}"))?;
    Ok(key)
}

// === Backend ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendSpec {
    /// `http://host[:port]` or `https://host[:port]`, nothing after the authority.
    pub url: String,
    /// Extra trust anchors (PEM) for an `https://` URL.
    pub ca_certificate: Option<String>,
}

/// A validated Backend: what a `backendRef` to it becomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// Normalized to `scheme://host:port`.
    pub url: String,
    pub ca_pem: String,
}

pub fn backend(spec: &BackendSpec, c: &mut Checker<'_>) -> Option<Backend> {
    let url = c.check("spec.url", backend_url(&spec.url));
    let ca_pem = spec.ca_certificate.clone().unwrap_or_default();
    if !ca_pem.is_empty() {
        c.check("spec.caCertificate", certificates(&ca_pem));
        if url.as_deref().is_some_and(|u| u.starts_with("http://")) {
            c.error("spec.caCertificate", "only meaningful for an https:// url");
        }
    }
    Some(Backend { url: url?, ca_pem })
}

/// `scheme://host[:port]` with the port made explicit.
fn backend_url(url: &str) -> Result<String, String> {
    let (scheme, rest, default_port) = if let Some(rest) = url.strip_prefix("http://") {
        ("http", rest, 80)
    } else if let Some(rest) = url.strip_prefix("https://") {
        ("https", rest, 443)
    } else {
        return Err(format!("must start with http:// or https://, got {url:?}"));
    };
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err(format!(
            "must be scheme://host[:port] with no path, query or user, got {url:?}"
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, tail) = v6
            .split_once(']')
            .ok_or_else(|| format!("unclosed '[' in {url:?}"))?;
        addr.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
        (format!("[{addr}]"), tail.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (authority.to_string(), None),
        }
    };
    if host.is_empty() {
        return Err(format!("has no host: {url:?}"));
    }
    if !host.starts_with('[') && host.parse::<std::net::Ipv4Addr>().is_err() {
        validate::hostname(&host, false).map_err(|e| format!("host {e}"))?;
    }
    let port = match port {
        None => default_port,
        Some(p) => {
            let n: i64 = p
                .parse()
                .map_err(|_| format!("port {p:?} is not a number"))?;
            validate::port(n).map_err(|e| format!("port {e}"))?
        }
    };
    Ok(format!("{scheme}://{host}:{port}"))
}

// === ApiPolicy ===

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiPolicySpec {
    #[serde(default)]
    pub target_refs: Vec<PolicyTargetRefSpec>,
    pub api: Option<String>,
    pub api_key: Option<ApiKeySpec>,
    pub jwt: Option<JwtSpec>,
    #[serde(default)]
    pub allow_anonymous: bool,
    #[serde(default)]
    pub required_scopes: Vec<String>,
    #[serde(default)]
    pub plans: Vec<String>,
    pub limit_scope: Option<LimitScopeSpec>,
    pub anonymous_limits: Option<LimitsSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyTargetRefSpec {
    pub group: Option<String>,
    pub kind: String,
    pub name: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApiKeySpec {
    #[serde(default)]
    pub headers: Vec<String>,
    #[serde(default)]
    pub query_params: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtSpec {
    #[serde(default)]
    pub providers: Vec<JwtProviderSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwtProviderSpec {
    pub name: String,
    pub issuer: Option<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub jwks: Option<JwksSpec>,
    pub refresh: Option<String>,
    pub clock_skew: Option<String>,
    pub consumer_claim: Option<String>,
    pub scope_claim: Option<String>,
    #[serde(default)]
    pub claim_to_headers: Vec<ClaimToHeaderSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct JwksSpec {
    pub uri: Option<String>,
    pub file: Option<String>,
    pub inline: Option<String>,
    pub ca_certificate: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClaimToHeaderSpec {
    pub claim: String,
    pub header: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum LimitScopeSpec {
    Route,
    #[serde(rename = "API")]
    Api,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsSpec {
    pub per_second: Option<i64>,
    pub per_minute: Option<i64>,
    pub per_hour: Option<i64>,
    pub per_day: Option<i64>,
    pub per_month: Option<i64>,
}

/// The header and query parameter an API key is looked for in when `apiKey: {}`.
pub const DEFAULT_API_KEY_HEADER: &str = "x-api-key";
pub const DEFAULT_API_KEY_QUERY: &str = "apikey";

/// Validates a policy's own fields. `plan_exists` answers for a plan name in the policy's
/// namespace. Target references are resolved by the caller.
pub fn api_policy(
    meta: &Meta,
    spec: &ApiPolicySpec,
    plan_exists: &dyn Fn(&str) -> bool,
    c: &mut Checker<'_>,
) -> pb::ApiPolicy {
    if spec.target_refs.is_empty() {
        c.error(
            "spec.targetRefs",
            "must name at least one HTTPRoute, GRPCRoute or Gateway",
        );
    }
    for (i, t) in spec.target_refs.iter().enumerate() {
        let group_ok = matches!(t.group.as_deref(), None | Some(GATEWAY_GROUP));
        if !group_ok || !matches!(t.kind.as_str(), "HTTPRoute" | "GRPCRoute" | "Gateway") {
            c.error(
                format!("spec.targetRefs[{i}]"),
                format!(
                    "must be an HTTPRoute, GRPCRoute or Gateway of group {GATEWAY_GROUP}, got \
                     kind {:?} group {:?}",
                    t.kind,
                    t.group.as_deref().unwrap_or("")
                ),
            );
        }
    }
    let api = spec.api.clone().unwrap_or_else(|| meta.name.clone());
    c.check("spec.api", validate::dns_subdomain(&api));
    if spec.api_key.is_none() && spec.jwt.is_none() && !spec.allow_anonymous {
        c.error(
            "spec",
            "must accept a credential (apiKey or jwt) or set allowAnonymous: true",
        );
    }
    let api_key = spec.api_key.as_ref().map(|k| {
        let mut headers = Vec::new();
        for (i, h) in k.headers.iter().enumerate() {
            c.check(
                format!("spec.apiKey.headers[{i}]"),
                validate::header_name(h),
            );
            headers.push(h.to_ascii_lowercase());
        }
        for (i, q) in k.query_params.iter().enumerate() {
            if q.is_empty() {
                c.error(format!("spec.apiKey.queryParams[{i}]"), "must not be empty");
            }
        }
        let mut query_params = k.query_params.clone();
        if headers.is_empty() && query_params.is_empty() {
            headers.push(DEFAULT_API_KEY_HEADER.to_string());
            query_params.push(DEFAULT_API_KEY_QUERY.to_string());
        }
        pb::ApiKeyAuth {
            headers,
            query_params,
        }
    });
    let jwt = spec.jwt.as_ref().map(|j| jwt(j, c));
    if !spec.required_scopes.is_empty() && spec.jwt.is_none() {
        c.error(
            "spec.requiredScopes",
            "scopes come from JWTs: only allowed together with jwt",
        );
    }
    for (i, s) in spec.required_scopes.iter().enumerate() {
        if s.is_empty() || s.contains(char::is_whitespace) {
            c.error(
                format!("spec.requiredScopes[{i}]"),
                format!("must be a scope without spaces, got {s:?}"),
            );
        }
    }
    let mut plans = Vec::new();
    for (i, p) in spec.plans.iter().enumerate() {
        if !plan_exists(p) {
            c.error(
                format!("spec.plans[{i}]"),
                format!("no Plan {p:?} is defined in namespace {:?}", meta.namespace),
            );
        }
        plans.push(format!("{}/{p}", meta.namespace));
    }
    let anonymous_limits = spec
        .anonymous_limits
        .as_ref()
        .map(|l| limits("spec.anonymousLimits", l, c));
    pb::ApiPolicy {
        name: meta.key(),
        api,
        api_key,
        jwt,
        allow_anonymous: spec.allow_anonymous,
        required_scopes: spec.required_scopes.clone(),
        plans,
        limit_scope: match spec.limit_scope {
            None | Some(LimitScopeSpec::Route) => pb::LimitScope::Route,
            Some(LimitScopeSpec::Api) => pb::LimitScope::Api,
        }
        .into(),
        anonymous_limits,
    }
}

fn jwt(spec: &JwtSpec, c: &mut Checker<'_>) -> pb::JwtAuth {
    if spec.providers.is_empty() {
        c.error("spec.jwt.providers", "must list at least one provider");
    }
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut providers = Vec::new();
    for (i, p) in spec.providers.iter().enumerate() {
        let at = format!("spec.jwt.providers[{i}]");
        if p.name.is_empty() {
            c.error(format!("{at}.name"), "must not be empty");
        }
        if let Some(first) = names.insert(&p.name, i) {
            c.error(
                format!("{at}.name"),
                format!(
                    "provider {:?} is already defined at providers[{first}]",
                    p.name
                ),
            );
        }
        match p.issuer.as_deref() {
            None | Some("") => c.error(
                format!("{at}.issuer"),
                "required: the `iss` that tokens of this provider carry",
            ),
            Some(_) => {}
        }
        let mut out = pb::JwtProvider {
            name: p.name.clone(),
            issuer: p.issuer.clone().unwrap_or_default(),
            audiences: p.audiences.clone(),
            consumer_claim: p.consumer_claim.clone().unwrap_or_default(),
            scope_claim: p.scope_claim.clone().unwrap_or_default(),
            ..Default::default()
        };
        match &p.jwks {
            None => c.error(format!("{at}.jwks"), "required: one of uri, file or inline"),
            Some(jwks) => {
                let given = [&jwks.uri, &jwks.file, &jwks.inline]
                    .iter()
                    .filter(|v| v.is_some())
                    .count();
                if given != 1 {
                    c.error(
                        format!("{at}.jwks"),
                        format!("must give exactly one of uri, file or inline, got {given}"),
                    );
                }
                if let Some(uri) = &jwks.uri {
                    let ok = uri
                        .strip_prefix("https://")
                        .is_some_and(|rest| !rest.is_empty() && !rest.starts_with('/'));
                    if !ok {
                        c.error(
                            format!("{at}.jwks.uri"),
                            format!("must be an https:// URL, got {uri:?}"),
                        );
                    }
                    out.jwks_uri = uri.clone();
                }
                if let Some(file) = &jwks.file {
                    if !file.starts_with('/') {
                        c.error(
                            format!("{at}.jwks.file"),
                            format!("must be an absolute path, got {file:?}"),
                        );
                    }
                    out.jwks_file = file.clone();
                }
                if let Some(inline) = &jwks.inline {
                    c.check(format!("{at}.jwks.inline"), jwks_document(inline));
                    out.jwks_inline = inline.clone();
                }
                if let Some(ca) = &jwks.ca_certificate {
                    if jwks.uri.is_none() {
                        c.error(
                            format!("{at}.jwks.caCertificate"),
                            "only meaningful with uri",
                        );
                    }
                    c.check(format!("{at}.jwks.caCertificate"), certificates(ca));
                    out.jwks_ca_pem = ca.clone();
                }
            }
        }
        let mut duration = |field: &str, v: &Option<String>| -> u64 {
            v.as_deref()
                .and_then(|v| c.check(format!("{at}.{field}"), validate::duration_ms(v)))
                .unwrap_or(0)
        };
        out.jwks_refresh_ms = duration("refresh", &p.refresh);
        out.clock_skew_ms = duration("clockSkew", &p.clock_skew);
        for (k, h) in p.claim_to_headers.iter().enumerate() {
            if h.claim.is_empty() {
                c.error(
                    format!("{at}.claimToHeaders[{k}].claim"),
                    "must not be empty",
                );
            }
            c.check(
                format!("{at}.claimToHeaders[{k}].header"),
                validate::header_name(&h.header),
            );
            out.claim_to_headers.push(pb::ClaimToHeader {
                claim: h.claim.clone(),
                header: h.header.to_ascii_lowercase(),
            });
        }
        providers.push(out);
    }
    pb::JwtAuth { providers }
}

/// A JWKS: a JSON object with a `keys` array.
fn jwks_document(text: &str) -> Result<(), String> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("is not JSON: {e}"))?;
    match value.get("keys") {
        Some(serde_json::Value::Array(_)) => Ok(()),
        _ => Err("must be a JWKS: a JSON object with a \"keys\" array".to_string()),
    }
}

/// Validates and converts limits; negative values are errors.
pub fn limits(at: &str, spec: &LimitsSpec, c: &mut Checker<'_>) -> pb::RateLimits {
    let mut value = |field: &str, v: Option<i64>| -> u64 {
        let v = v.unwrap_or(0);
        if v < 0 {
            c.error(
                format!("{at}.{field}"),
                format!("must not be negative (0 means no limit), got {v}"),
            );
        }
        v.max(0) as u64
    };
    pb::RateLimits {
        per_second: value("perSecond", spec.per_second),
        per_minute: value("perMinute", spec.per_minute),
        per_hour: value("perHour", spec.per_hour),
        per_day: value("perDay", spec.per_day),
        per_month: value("perMonth", spec.per_month),
    }
}

// === Consumer and Plan ===

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

pub fn consumer(
    meta: &Meta,
    spec: &ConsumerSpec,
    plan_exists: &dyn Fn(&str) -> bool,
    c: &mut Checker<'_>,
) -> pb::Consumer {
    for (i, h) in spec.api_key_sha256.iter().enumerate() {
        if h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()) {
            c.error(
                format!("spec.apiKeySha256[{i}]"),
                "must be 64 hex digits (the SHA-256 of the key, not the key itself)",
            );
        }
    }
    for (i, s) in spec.jwt_subjects.iter().enumerate() {
        if s.is_empty() {
            c.error(format!("spec.jwtSubjects[{i}]"), "must not be empty");
        }
    }
    let plan = match &spec.plan {
        None => String::new(),
        Some(p) => {
            if !plan_exists(p) {
                c.error(
                    "spec.plan",
                    format!("no Plan {p:?} is defined in namespace {:?}", meta.namespace),
                );
            }
            format!("{}/{p}", meta.namespace)
        }
    };
    pb::Consumer {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        api_key_sha256: spec
            .api_key_sha256
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
        jwt_subjects: spec.jwt_subjects.clone(),
        plan,
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PlanSpec {
    pub limits: Option<LimitsSpec>,
}

pub fn plan(meta: &Meta, spec: &PlanSpec, c: &mut Checker<'_>) -> pb::Plan {
    let limits = match &spec.limits {
        None => {
            c.error(
                "spec.limits",
                "required: perSecond, perMinute, perHour, perDay and/or perMonth",
            );
            pb::RateLimits::default()
        }
        Some(l) => limits("spec.limits", l, c),
    };
    pb::Plan {
        name: meta.name.clone(),
        namespace: meta.namespace.clone(),
        limits: Some(limits),
    }
}
