//! Proto -> domain conversion of filters and backends (see `convert`).

use http::{HeaderName, HeaderValue, StatusCode, Uri};
use weft_proto::discovery::v1 as pb;

use super::RouteError;
use super::convert::{Cx, MAX_PATTERN_LEN};
use super::host::HostPattern;
use super::model::{
    Backend, BackendKind, Filter, HeaderModifier, Mirror, PathModifier, Redirect, RedirectScheme,
    RouteKey, UrlRewrite,
};

pub(super) fn filters(
    cx: &Cx<'_>,
    key: &RouteKey,
    field: &str,
    fs: &[pb::RouteFilter],
) -> Result<Vec<Filter>, RouteError> {
    fs.iter()
        .enumerate()
        .filter_map(|(i, f)| {
            f.filter
                .as_ref()
                .map(|f| filter(cx, key, &format!("{field}[{i}]"), f))
        })
        .collect()
}

fn filter(
    cx: &Cx<'_>,
    key: &RouteKey,
    field: &str,
    f: &pb::route_filter::Filter,
) -> Result<Filter, RouteError> {
    use pb::route_filter::Filter as F;
    Ok(match f {
        F::RequestHeaderModifier(m) => Filter::RequestHeaders(header_modifier(cx, field, m)?),
        F::ResponseHeaderModifier(m) => Filter::ResponseHeaders(header_modifier(cx, field, m)?),
        F::UrlRewrite(u) => Filter::UrlRewrite(UrlRewrite {
            hostname: match u.hostname.as_str() {
                "" => None,
                h => {
                    HostPattern::parse(h)
                        .ok()
                        .filter(|p| matches!(p, HostPattern::Exact(_)))
                        .ok_or_else(|| {
                            cx.invalid(
                                format!("{field}.hostname"),
                                format!("{h:?} is not a precise host name"),
                            )
                        })?;
                    Some(HeaderValue::from_str(h).map_err(|_| {
                        cx.invalid(format!("{field}.hostname"), "not a header value")
                    })?)
                }
            },
            path: path_modifier(cx, &format!("{field}.path"), u.path.as_ref())?,
        }),
        F::RequestRedirect(r) => Filter::Redirect(Redirect {
            scheme: match r.scheme.as_str() {
                "" => None,
                "http" => Some(RedirectScheme::Http),
                "https" => Some(RedirectScheme::Https),
                s => {
                    return Err(cx.invalid(
                        format!("{field}.scheme"),
                        format!("{s:?}: must be http or https"),
                    ));
                }
            },
            hostname: match r.hostname.as_str() {
                "" => None,
                h => match HostPattern::parse(h) {
                    Ok(HostPattern::Exact(h)) => Some(h.into_string()),
                    _ => {
                        return Err(cx.invalid(
                            format!("{field}.hostname"),
                            format!("{h:?} is not a precise host name"),
                        ));
                    }
                },
            },
            path: path_modifier(cx, &format!("{field}.path"), r.path.as_ref())?,
            port: match r.port {
                0 => None,
                p => Some(u16::try_from(p).map_err(|_| {
                    cx.invalid(format!("{field}.port"), format!("{p} is not a port"))
                })?),
            },
            status: match r.status_code {
                0 => StatusCode::FOUND,
                c @ (301 | 302 | 303 | 307 | 308) => StatusCode::from_u16(c as u16)
                    .map_err(|_| cx.invalid(format!("{field}.status_code"), "not a status"))?,
                c => {
                    return Err(cx.invalid(
                        format!("{field}.status_code"),
                        format!("{c}: must be 301, 302, 303, 307 or 308"),
                    ));
                }
            },
        }),
        F::RequestMirror(m) => {
            let Some(b) = &m.backend else {
                return Err(cx.invalid(format!("{field}.backend"), "a mirror needs a backend"));
            };
            if m.percent > 100 {
                return Err(cx.invalid(
                    format!("{field}.percent"),
                    format!("{}: must be 0-100", m.percent),
                ));
            }
            let mut backend = backend(cx, key, &format!("{field}.backend"), b)?;
            // The mirror's weight means nothing; a zero from the document must not matter.
            backend.weight = 1;
            Filter::Mirror(Mirror {
                backend,
                percent: m.percent,
            })
        }
    })
}

fn header_modifier(
    cx: &Cx<'_>,
    field: &str,
    m: &pb::HeaderModifier,
) -> Result<HeaderModifier, RouteError> {
    let pair = |f: String, h: &pb::HeaderValue| -> Result<(HeaderName, HeaderValue), RouteError> {
        let name = HeaderName::from_bytes(h.name.as_bytes()).map_err(|_| {
            cx.invalid(
                format!("{f}.name"),
                format!("{:?} is not a header name", h.name),
            )
        })?;
        let value = HeaderValue::from_str(&h.value).map_err(|_| {
            cx.invalid(
                format!("{f}.value"),
                "not a valid header value (visible ASCII)",
            )
        })?;
        Ok((name, value))
    };
    Ok(HeaderModifier {
        set: m
            .set
            .iter()
            .enumerate()
            .map(|(i, h)| pair(format!("{field}.set[{i}]"), h))
            .collect::<Result<_, _>>()?,
        add: m
            .add
            .iter()
            .enumerate()
            .map(|(i, h)| pair(format!("{field}.add[{i}]"), h))
            .collect::<Result<_, _>>()?,
        remove: m
            .remove
            .iter()
            .enumerate()
            .map(|(i, n)| {
                HeaderName::from_bytes(n.as_bytes()).map_err(|_| {
                    cx.invalid(
                        format!("{field}.remove[{i}]"),
                        format!("{n:?} is not a header name"),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    })
}

fn path_modifier(
    cx: &Cx<'_>,
    field: &str,
    p: Option<&pb::PathModifier>,
) -> Result<Option<PathModifier>, RouteError> {
    let Some(p) = p else { return Ok(None) };
    if p.value.len() > MAX_PATTERN_LEN || (!p.value.is_empty() && !p.value.starts_with('/')) {
        return Err(cx.invalid(
            format!("{field}.value"),
            format!("{:?} must start with '/'", p.value),
        ));
    }
    match pb::PathModifierType::try_from(p.r#type) {
        Ok(pb::PathModifierType::Full) => {
            if p.value.is_empty() {
                return Err(cx.invalid(format!("{field}.value"), "ReplaceFullPath needs a path"));
            }
            Ok(Some(PathModifier::Full(p.value.clone())))
        }
        Ok(pb::PathModifierType::Prefix) => Ok(Some(PathModifier::Prefix(p.value.clone()))),
        _ => Err(cx.invalid(
            format!("{field}.type"),
            "must be ReplaceFullPath or ReplacePrefixMatch",
        )),
    }
}

pub(super) fn backend(
    cx: &Cx<'_>,
    key: &RouteKey,
    field: &str,
    b: &pb::BackendRef,
) -> Result<Backend, RouteError> {
    let kind = if b.kind == "Backend" || (b.kind.is_empty() && !b.url.is_empty()) {
        let url: Uri = b
            .url
            .parse()
            .map_err(|e| cx.invalid(format!("{field}.url"), format!("{:?}: {e}", b.url)))?;
        if !matches!(url.scheme_str(), Some("http" | "https")) || url.authority().is_none() {
            return Err(cx.invalid(
                format!("{field}.url"),
                format!("{:?}: must be http://host:port or https://host:port", b.url),
            ));
        }
        BackendKind::Url {
            url,
            ca_pem: (!b.ca_pem.is_empty()).then(|| b.ca_pem.clone()),
        }
    } else if b.kind.is_empty() || b.kind == "Service" {
        if b.name.is_empty() {
            return Err(cx.invalid(format!("{field}.name"), "a Service backend needs a name"));
        }
        let port = u16::try_from(b.port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| {
                cx.invalid(
                    format!("{field}.port"),
                    format!("{}: must be 1-65535", b.port),
                )
            })?;
        BackendKind::Service {
            namespace: if b.namespace.is_empty() {
                key.namespace.clone()
            } else {
                b.namespace.clone()
            },
            name: b.name.clone(),
            port,
        }
    } else {
        return Err(cx.invalid(
            format!("{field}.kind"),
            format!("{:?}: must be Service or Backend", b.kind),
        ));
    };
    Ok(Backend {
        kind,
        weight: b.weight,
        filters: filters(cx, key, &format!("{field}.filters"), &b.filters)?,
    })
}
