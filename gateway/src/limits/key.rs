//! Who a counter belongs to: a consumer or an anonymous client address, within a scope
//! (one route or one whole API).

use std::fmt;
use std::net::{IpAddr, Ipv6Addr};

use serde::{Deserialize, Serialize};
use weft_proto::discovery::v1 as pb;

/// Whose requests are counted.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Subject {
    /// An authenticated consumer (`namespace/name`), on its plan's limits.
    Consumer {
        /// The consumer's namespace.
        namespace: String,
        /// The consumer's name.
        name: String,
    },
    /// An anonymous client, by address. IPv6 clients are counted per /64: one host usually
    /// holds a whole /64, so per-address counting would let it pick a fresh address for
    /// every request.
    Client(IpAddr),
}

/// What the counters cover (`limitScope` of the ApiPolicy).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// One route (its key, e.g. `namespace/name/rule`).
    Route(String),
    /// A whole API (the ApiPolicy's `api`): all its routes share the counters.
    Api(String),
}

// === impl Scope ===

impl Scope {
    /// The scope an ApiPolicy gives a request on the route `route_key`: the API (its `api`,
    /// else the policy's name) when `limitScope` is API, else the route. Anonymous limits
    /// use the same scope as consumers'.
    pub fn for_policy(policy: &pb::ApiPolicy, route_key: &str) -> Self {
        if policy.limit_scope() == pb::LimitScope::Api {
            let api = if policy.api.is_empty() {
                &policy.name
            } else {
                &policy.api
            };
            Scope::Api(api.clone())
        } else {
            Scope::Route(route_key.to_string())
        }
    }
}

/// The key of one set of counters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LimitKey {
    /// Whose requests.
    pub subject: Subject,
    /// Which routes.
    pub scope: Scope,
}

// === impl LimitKey ===

impl LimitKey {
    /// The counters of a consumer within a scope.
    pub fn consumer(namespace: impl Into<String>, name: impl Into<String>, scope: Scope) -> Self {
        Self {
            subject: Subject::Consumer {
                namespace: namespace.into(),
                name: name.into(),
            },
            scope,
        }
    }

    /// The counters of an anonymous client address within a scope; IPv4-mapped IPv6
    /// addresses count as the IPv4 address, other IPv6 addresses by their /64.
    pub fn anonymous(addr: IpAddr, scope: Scope) -> Self {
        let addr = match addr {
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => {
                    let bits = u128::from(v6) & !((1u128 << 64) - 1);
                    IpAddr::V6(Ipv6Addr::from(bits))
                }
            },
            v4 => v4,
        };
        Self {
            subject: Subject::Client(addr),
            scope,
        }
    }
}

/// Escapes the separators of the text form, so that two different keys never render alike.
fn escape(s: &str, out: &mut fmt::Formatter<'_>) -> fmt::Result {
    for c in s.chars() {
        match c {
            '%' => out.write_str("%25")?,
            '/' => out.write_str("%2F")?,
            '|' => out.write_str("%7C")?,
            '{' => out.write_str("%7B")?,
            '}' => out.write_str("%7D")?,
            c if c.is_control() || c == ' ' => write!(out, "%{:02X}", u32::from(c) & 0xff)?,
            c => write!(out, "{c}")?,
        }
    }
    Ok(())
}

/// `consumer/<ns>/<name>|route/<key>`, `client/<addr>|api/<name>`: unambiguous (components
/// are escaped), used in Redis key names and logs.
impl fmt::Display for LimitKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.subject {
            Subject::Consumer { namespace, name } => {
                f.write_str("consumer/")?;
                escape(namespace, f)?;
                f.write_str("/")?;
                escape(name, f)?;
            }
            Subject::Client(addr) => write!(f, "client/{addr}")?,
        }
        match &self.scope {
            Scope::Route(r) => {
                f.write_str("|route/")?;
                escape(r, f)
            }
            Scope::Api(a) => {
                f.write_str("|api/")?;
                escape(a, f)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form_is_unambiguous() {
        let a = LimitKey::consumer("a/b", "c", Scope::Route("r".into()));
        let b = LimitKey::consumer("a", "b/c", Scope::Route("r".into()));
        assert_ne!(a.to_string(), b.to_string());
        assert_eq!(b.to_string(), "consumer/a/b%2Fc|route/r");
        let c = LimitKey::consumer("a", "b", Scope::Route("x|api/y".into()));
        assert_eq!(c.to_string(), "consumer/a/b|route/x%7Capi%2Fy");
    }

    #[test]
    fn scope_follows_the_policy() {
        let mut p = pb::ApiPolicy {
            name: "demo/demo-api".into(),
            ..Default::default()
        };
        assert_eq!(
            Scope::for_policy(&p, "demo/r/0"),
            Scope::Route("demo/r/0".into())
        );
        p.set_limit_scope(pb::LimitScope::Api);
        assert_eq!(
            Scope::for_policy(&p, "demo/r/0"),
            Scope::Api("demo/demo-api".into())
        );
        p.api = "demo".into();
        assert_eq!(Scope::for_policy(&p, "demo/r/0"), Scope::Api("demo".into()));
    }

    #[test]
    fn ipv6_clients_count_per_64() {
        let s = || Scope::Api("demo".into());
        let a = LimitKey::anonymous("2001:db8::1".parse().unwrap(), s());
        let b = LimitKey::anonymous("2001:db8::ffff:1234".parse().unwrap(), s());
        assert_eq!(a, b);
        let c = LimitKey::anonymous("2001:db8:0:1::1".parse().unwrap(), s());
        assert_ne!(a, c);
        let mapped = LimitKey::anonymous("::ffff:10.0.0.1".parse().unwrap(), s());
        assert_eq!(
            mapped,
            LimitKey::anonymous("10.0.0.1".parse().unwrap(), s())
        );
        assert_eq!(mapped.to_string(), "client/10.0.0.1|api/demo");
    }
}
