//! Field-level checks shared by every kind. Each returns the message to show after the
//! field path; [`Checker`] attaches origin and path.

use std::{collections::BTreeMap, fmt::Display, net::IpAddr};

use ipnet::IpNet;
use weft_proto::discovery::v1 as pb;

use super::{
    Diagnostic, Origin,
    document::{IntOrString, Kind, LabelOperator, LabelSelector, Meta, ObjectMeta, PortProtocol},
};

/// The namespace of documents that leave `metadata.namespace` out, as in Kubernetes.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Collects the diagnostics of one document.
pub struct Checker<'a> {
    origin: &'a Origin,
    kind: Kind,
    diagnostics: &'a mut Vec<Diagnostic>,
}

impl<'a> Checker<'a> {
    pub fn new(origin: &'a Origin, kind: Kind, diagnostics: &'a mut Vec<Diagnostic>) -> Self {
        Checker {
            origin,
            kind,
            diagnostics,
        }
    }

    pub fn error(&mut self, path: impl Display, message: impl Into<String>) {
        let mut d = Diagnostic::error(self.origin.clone(), path.to_string(), message);
        d.kind = Some(self.kind.name().to_string());
        self.diagnostics.push(d);
    }

    pub fn warning(&mut self, path: impl Display, message: impl Into<String>) {
        let mut d = Diagnostic::warning(self.origin.clone(), path.to_string(), message);
        d.kind = Some(self.kind.name().to_string());
        self.diagnostics.push(d);
    }

    /// Every diagnostic so far, of every document.
    pub fn diagnostics(&self) -> &[Diagnostic] {
        self.diagnostics
    }

    /// Records `result`'s error under `path`, passing its value through.
    pub fn check<T>(&mut self, path: impl Display, result: Result<T, String>) -> Option<T> {
        match result {
            Ok(v) => Some(v),
            Err(message) => {
                self.error(path, message);
                None
            }
        }
    }

    /// Validates `metadata`: name, namespace, labels, uid.
    pub fn meta(&mut self, meta: &ObjectMeta) -> Option<Meta> {
        let name = match &meta.name {
            None => {
                self.error("metadata.name", "required");
                None
            }
            Some(name) => self.check("metadata.name", dns_subdomain(name)),
        };
        let namespace = meta.namespace.as_deref().unwrap_or(DEFAULT_NAMESPACE);
        let namespace = self.check("metadata.namespace", dns_label(namespace));
        self.labels("metadata.labels", &meta.labels);
        if let Some(uid) = &meta.uid
            && (uid.is_empty() || uid.len() > 128 || uid.chars().any(char::is_whitespace))
        {
            self.error(
                "metadata.uid",
                format!("must be 1-128 characters without spaces, got {uid:?}"),
            );
        }
        let created_at_unix_ms = match &meta.creation_timestamp {
            None => 0,
            Some(t) => self
                .check("metadata.creationTimestamp", timestamp_ms(t))
                .unwrap_or(0),
        };
        Some(Meta {
            name: name?.to_string(),
            namespace: namespace?.to_string(),
            labels: meta.labels.clone(),
            annotations: meta.annotations.clone(),
            uid: meta.uid.clone(),
            created_at_unix_ms,
        })
    }

    /// Validates label keys and values.
    pub fn labels(&mut self, path: &str, labels: &BTreeMap<String, String>) {
        for (key, value) in labels {
            self.check(format!("{path}.{key}"), label_key(key));
            self.check(format!("{path}.{key}"), label_value(value));
        }
    }

    /// Validates and converts a Kubernetes `LabelSelector`.
    pub fn selector(&mut self, path: &str, selector: &LabelSelector) -> pb::Selector {
        self.labels(&format!("{path}.matchLabels"), &selector.match_labels);
        let mut out = pb::Selector {
            match_labels: selector.match_labels.clone().into_iter().collect(),
            match_expressions: Vec::new(),
        };
        for (i, expr) in selector.match_expressions.iter().enumerate() {
            let at = format!("{path}.matchExpressions[{i}]");
            self.check(format!("{at}.key"), label_key(&expr.key));
            let operator = match expr.operator {
                LabelOperator::In => pb::LabelOperator::In,
                LabelOperator::NotIn => pb::LabelOperator::NotIn,
                LabelOperator::Exists => pb::LabelOperator::Exists,
                LabelOperator::DoesNotExist => pb::LabelOperator::DoesNotExist,
            };
            let needs_values = matches!(expr.operator, LabelOperator::In | LabelOperator::NotIn);
            if needs_values && expr.values.is_empty() {
                self.error(format!("{at}.values"), "must not be empty for In and NotIn");
            }
            if !needs_values && !expr.values.is_empty() {
                self.error(
                    format!("{at}.values"),
                    "must be empty for Exists and DoesNotExist",
                );
            }
            for (j, v) in expr.values.iter().enumerate() {
                self.check(format!("{at}.values[{j}]"), label_value(v));
            }
            out.match_expressions.push(pb::LabelExpression {
                key: expr.key.clone(),
                operator: operator.into(),
                values: expr.values.clone(),
            });
        }
        out
    }
}

/// An RFC 1123 DNS label: namespaces, port names, and names of kinds that become DNS names.
pub fn dns_label(s: &str) -> Result<&str, String> {
    if s.is_empty() || s.len() > 63 {
        return Err(format!(
            "must be 1-63 characters (an RFC 1123 label), got {s:?}"
        ));
    }
    let bytes = s.as_bytes();
    let ok_inner = bytes
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-');
    let ok_ends =
        bytes[0].is_ascii_alphanumeric() && bytes[bytes.len() - 1].is_ascii_alphanumeric();
    if !ok_inner || !ok_ends {
        return Err(format!(
            "must be an RFC 1123 label: lower-case letters, digits and '-', starting and ending \
             with a letter or digit, got {s:?}"
        ));
    }
    Ok(s)
}

/// An RFC 1123 DNS subdomain: object names, service accounts, node names.
pub fn dns_subdomain(s: &str) -> Result<&str, String> {
    if s.is_empty() || s.len() > 253 {
        return Err(format!("must be 1-253 characters, got {s:?}"));
    }
    if s.split('.').any(|part| dns_label(part).is_err()) {
        return Err(format!(
            "must be an RFC 1123 subdomain: lower-case letters, digits, '-' and '.', each \
             dot-separated part starting and ending with a letter or digit, got {s:?}"
        ));
    }
    Ok(s)
}

/// A Kubernetes label key: optional DNS-subdomain prefix and `/`, then a name of 1-63
/// characters of `[A-Za-z0-9_.-]` starting and ending with an alphanumeric.
pub fn label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        dns_subdomain(prefix)
            .map_err(|_| format!("label key {key:?} has an invalid prefix {prefix:?}"))?;
    }
    if name.is_empty() || !label_chars(name) {
        return Err(format!(
            "label key {key:?} is invalid: the name part must be 1-63 characters of letters, \
             digits, '-', '_' and '.', starting and ending with a letter or digit"
        ));
    }
    Ok(())
}

/// A Kubernetes label value: empty, or like a label key's name part.
pub fn label_value(value: &str) -> Result<(), String> {
    if value.is_empty() || label_chars(value) {
        Ok(())
    } else {
        Err(format!(
            "label value {value:?} is invalid: at most 63 characters of letters, digits, '-', \
             '_' and '.', starting and ending with a letter or digit"
        ))
    }
}

fn label_chars(s: &str) -> bool {
    let b = s.as_bytes();
    s.len() <= 63
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
}

/// A port number, 1-65535.
pub fn port(value: i64) -> Result<u32, String> {
    if (1..=65535).contains(&value) {
        Ok(value as u32)
    } else {
        Err(format!("must be 1-65535, got {value}"))
    }
}

/// A numeric port where Kubernetes allows a number or a name (policy ports): a policy is
/// not resolved per workload, so a name has nothing to resolve against.
pub fn numeric_port(value: &IntOrString) -> Result<u32, String> {
    match value {
        IntOrString::Int(n) => port(*n),
        IntOrString::String(s) => match s.parse::<i64>() {
            Ok(n) => port(n),
            Err(_) => Err(format!(
                "named ports ({s:?}) are not supported; give the port number"
            )),
        },
    }
}

/// A service's `targetPort`: a number, or the name of each endpoint's port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetPort {
    Number(u32),
    Named(String),
}

/// A `targetPort`, as Kubernetes takes it: a number (also written as a string), or a port
/// name.
pub fn target_port(value: &IntOrString) -> Result<TargetPort, String> {
    match value {
        IntOrString::Int(n) => port(*n).map(TargetPort::Number),
        IntOrString::String(s) => match s.parse::<i64>() {
            Ok(n) => port(n).map(TargetPort::Number),
            Err(_) => port_name(s).map(|name| TargetPort::Named(name.to_string())),
        },
    }
}

/// A port name as Kubernetes names container ports (IANA_SVC_NAME, RFC 6335): at most 15
/// lower-case letters, digits and '-', with at least one letter, and no '-' at either end
/// or twice in a row.
pub fn port_name(s: &str) -> Result<&str, String> {
    let b = s.as_bytes();
    let ok = !s.is_empty()
        && s.len() <= 15
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b.iter().any(u8::is_ascii_lowercase)
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--");
    if ok {
        Ok(s)
    } else {
        Err(format!(
            "{s:?} is not a port name: 1-15 lower-case letters, digits and '-', with at least \
             one letter and no '-' at either end or twice in a row (e.g. http, grpc-web)"
        ))
    }
}

pub fn ip(value: &str) -> Result<IpAddr, String> {
    value
        .parse::<IpAddr>()
        .map(|ip| ip.to_canonical())
        .map_err(|_| format!("{value:?} is not an IPv4 or IPv6 address"))
}

/// A CIDR; a bare address means a single host (`/32` or `/128`).
pub fn cidr(value: &str) -> Result<IpNet, String> {
    if let Ok(net) = value.parse::<IpNet>() {
        if net.trunc() != net {
            return Err(format!(
                "{value:?} has host bits set; did you mean {}?",
                net.trunc()
            ));
        }
        return Ok(net);
    }
    if let Ok(ip) = value.parse::<IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    Err(format!(
        "{value:?} is not a CIDR (e.g. 10.0.0.0/8 or fd00::/64)"
    ))
}

pub fn protocol(p: Option<PortProtocol>) -> pb::Protocol {
    match p.unwrap_or_default() {
        PortProtocol::Tcp => pb::Protocol::Tcp,
        PortProtocol::Udp => pb::Protocol::Udp,
        PortProtocol::Sctp => pb::Protocol::Sctp,
    }
}

/// A Gateway API duration (`1h`, `10s`, `500ms`, `1m30s`), in milliseconds.
pub fn duration_ms(value: &str) -> Result<u64, String> {
    let bad =
        || format!("{value:?} is not a duration: use numbers with units h, m, s or ms, e.g. 1m30s");
    let mut total: u64 = 0;
    let mut rest = value;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 || digits > 5 {
            return Err(bad());
        }
        let n: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let (unit_ms, len) = if rest.starts_with("ms") {
            (1, 2)
        } else if rest.starts_with('h') {
            (3_600_000, 1)
        } else if rest.starts_with('m') {
            (60_000, 1)
        } else if rest.starts_with('s') {
            (1000, 1)
        } else {
            return Err(bad());
        };
        rest = &rest[len..];
        total = total.saturating_add(n.saturating_mul(unit_ms));
    }
    Ok(total)
}

/// An RFC 3339 time (`2024-05-01T12:00:00Z`, as Kubernetes writes `creationTimestamp`), in
/// milliseconds since the Unix epoch; times before the epoch count as 0.
pub fn timestamp_ms(value: &str) -> Result<u64, String> {
    value
        .parse::<k8s_openapi::jiff::Timestamp>()
        .map(|t| u64::try_from(t.as_millisecond()).unwrap_or(0))
        .map_err(|_| format!("{value:?} is not an RFC 3339 time such as 2024-05-01T12:00:00Z"))
}

/// A Gateway API host name: an RFC 1123 subdomain, `*.`-prefixed when `wildcard` allows
/// it; IP addresses are not host names.
pub fn hostname(value: &str, wildcard: bool) -> Result<(), String> {
    let bare = match value.strip_prefix("*.") {
        Some(rest) if wildcard => rest,
        Some(_) => return Err(format!("must not be a wildcard, got {value:?}")),
        None => value,
    };
    if value.parse::<IpAddr>().is_ok() {
        return Err(format!(
            "must be a host name, not an IP address, got {value:?}"
        ));
    }
    dns_subdomain(bare).map(|_| ())
}

/// An HTTP header name (an RFC 9110 token).
pub fn header_name(value: &str) -> Result<(), String> {
    let token = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if value.is_empty() || value.len() > 256 || !value.bytes().all(token) {
        return Err(format!(
            "must be an HTTP header name (letters, digits and !#$%&'*+-.^_`|~), got {value:?}"
        ));
    }
    Ok(())
}
