//! Everything the data path reads, converted from wire resources once per configuration
//! version and swapped whole (`ArcSwap<Snapshot>`): each request loads the snapshot once, so
//! it sees one consistent version of listeners, routes, certificates and consumers however
//! often the configuration changes under it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Arc,
};

use rustls::sign::CertifiedKey;
use serde_json::json;
use weft_http::route::{ListenerRef, Route, RouteKind, RouteTable};
use weft_mesh::{service::Service, workload::Workload, workload::WorkloadStore};
use weft_proto::discovery::v1::{self as pb, ResourceType, resource::Kind};

use crate::{
    auth::{AuthPolicy, Authenticator, JwksRegistry},
    limits::{Limits, Scope},
};

/// Every resource of one configuration, by type and `Resource.name`.
pub type Resources = BTreeMap<ResourceType, BTreeMap<String, Arc<pb::Resource>>>;

/// Why a configuration cannot be put in force; names the resource.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{resource}: {reason}")]
pub struct BuildError {
    pub resource: String,
    pub reason: String,
}

impl BuildError {
    fn new(resource: impl Into<String>, reason: impl Into<String>) -> Self {
        BuildError {
            resource: resource.into(),
            reason: reason.into(),
        }
    }
}

/// What a port speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    Http,
    Https,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "HTTP",
            Protocol::Https => "HTTPS",
        }
    }
}

/// One Gateway listener.
#[derive(Debug)]
pub struct ListenerConf {
    /// `namespace/gateway/name`.
    pub key: String,
    pub namespace: String,
    pub gateway: String,
    pub name: String,
    /// Lower case; `None` serves every host.
    pub hostname: Option<String>,
    pub routes: RouteTable,
}

/// What an `ApiPolicy` asks of the requests of one route.
#[derive(Debug)]
pub struct RoutePolicy {
    pub auth: AuthPolicy,
    /// The API's name (analytics).
    pub api: String,
    /// The policy as sent, for the limits' scope.
    policy: Arc<pb::ApiPolicy>,
    /// Limits of anonymous callers, per client address.
    pub anonymous: Limits,
}

impl RoutePolicy {
    /// The counters' scope for a request of `route`.
    pub fn scope(&self, route: &str) -> Scope {
        Scope::for_policy(&self.policy, route)
    }
}

/// The key of a route's policy in [`Snapshot::policies`].
pub fn policy_key(route: &Route) -> String {
    match route.kind {
        RouteKind::Grpc => format!("grpc:{}", route.key),
        _ => route.key.to_string(),
    }
}

/// Everything bound to one port.
#[derive(Debug)]
pub struct PortConf {
    pub port: u16,
    pub protocol: Protocol,
    pub listeners: Vec<Arc<ListenerConf>>,
    /// For HTTPS: the certificates of every listener on the port, by SNI.
    pub certs: Option<Arc<SniCerts>>,
}

impl PortConf {
    /// The listener a request for `host` (lower case, no port) belongs to: an exact hostname
    /// first, then the longest wildcard, then a listener without hostname (Gateway API).
    pub fn listener_for(&self, host: &str) -> Option<&Arc<ListenerConf>> {
        let mut best: Option<(usize, &Arc<ListenerConf>)> = None;
        for l in &self.listeners {
            let score = match &l.hostname {
                None => 1,
                Some(h) if h == host => usize::MAX,
                Some(h) => match h.strip_prefix('*') {
                    Some(suffix) if host.ends_with(suffix) && host.len() > suffix.len() => {
                        2 + suffix.len()
                    }
                    _ => continue,
                },
            };
            if best.is_none_or(|(s, _)| score > s) {
                best = Some((score, l));
            }
        }
        best.map(|(_, l)| l)
    }
}

/// Certificates of one HTTPS port, chosen by SNI: an exact name, then a wildcard, then the
/// first certificate of the port.
#[derive(Debug, Default)]
pub struct SniCerts {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Keyed by the suffix after `*` (`.example.com`).
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
    /// Secret names, for `/config`.
    names: Vec<String>,
}

impl SniCerts {
    pub fn resolve(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        if let Some(name) = sni {
            let name = name.to_ascii_lowercase();
            if let Some(c) = self.exact.get(&name) {
                return Some(c.clone());
            }
            if let Some(dot) = name.find('.')
                && let Some(c) = self.wildcard.get(&name[dot..])
            {
                return Some(c.clone());
            }
        }
        self.default.clone()
    }

    fn add(&mut self, resource: &str, cert: &pb::TlsCertificate) -> Result<(), BuildError> {
        let err = |reason: String| {
            BuildError::new(resource, format!("certificate {}: {reason}", cert.name))
        };
        if cert.key_pem.is_empty() {
            return Err(err(
                "no private key (the gateway credential is needed to receive keys)".into(),
            ));
        }
        let chain: Vec<rustls::pki_types::CertificateDer<'static>> =
            rustls::pki_types::pem::PemObject::pem_slice_iter(cert.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .map_err(|e| err(format!("tls.crt is not PEM: {e}")))?;
        let Some(leaf) = chain.first() else {
            return Err(err("tls.crt holds no certificate".into()));
        };
        let key = <rustls::pki_types::PrivateKeyDer<'static> as rustls::pki_types::pem::PemObject>::from_pem_slice(
            cert.key_pem.as_bytes(),
        )
        .map_err(|e| err(format!("tls.key is not a PEM private key: {e}")))?;
        let signer = rustls::crypto::aws_lc_rs::sign::any_supported_type(&key)
            .map_err(|e| err(format!("tls.key: {e}")))?;
        let names = dns_names(leaf).map_err(err)?;
        let certified = Arc::new(CertifiedKey::new(chain, signer));
        for name in names {
            let name = name.to_ascii_lowercase();
            match name.strip_prefix('*') {
                Some(suffix) => {
                    self.wildcard
                        .entry(suffix.to_string())
                        .or_insert_with(|| certified.clone());
                }
                None => {
                    self.exact.entry(name).or_insert_with(|| certified.clone());
                }
            }
        }
        if self.default.is_none() {
            self.default = Some(certified);
        }
        self.names.push(cert.name.clone());
        Ok(())
    }
}

/// The DNS names a certificate covers: its DNS SANs, or its CN when it has none.
fn dns_names(der: &[u8]) -> Result<Vec<String>, String> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("tls.crt cannot be read: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let GeneralName::DNSName(d) = n {
                names.push((*d).to_string());
            }
        }
    }
    if names.is_empty() {
        for cn in cert.subject().iter_common_name() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_string());
            }
        }
    }
    Ok(names)
}

/// One configuration in force.
#[derive(Default)]
pub struct Snapshot {
    /// Counts configurations put in force since start.
    pub generation: u64,
    pub ports: BTreeMap<u16, Arc<PortConf>>,
    /// Consumers by `namespace/name`.
    pub consumers: BTreeMap<String, Arc<pb::Consumer>>,
    /// Plan limits by `namespace/name`.
    pub plans: HashMap<String, Limits>,
    /// Route policies by [`policy_key`].
    pub policies: HashMap<String, Arc<RoutePolicy>>,
    /// Consumers and JWT keys.
    pub authenticator: Option<Arc<Authenticator>>,
    /// Mesh services by (namespace, name).
    pub services: HashMap<(String, String), Arc<Service>>,
    pub workloads: WorkloadStore,
    /// Resource counts per type, for `/config`.
    counts: BTreeMap<&'static str, usize>,
}

impl std::fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Snapshot")
            .field("generation", &self.generation)
            .field("ports", &self.ports.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Snapshot {
    /// Converts a whole configuration, or names the first resource that cannot be used.
    /// JWT key sets come from `jwks`, which outlives versions; must run inside a Tokio
    /// runtime (key fetches start here).
    pub fn build(
        resources: &Resources,
        generation: u64,
        jwks: &JwksRegistry,
    ) -> Result<Snapshot, BuildError> {
        let empty = BTreeMap::new();
        let of = |ty: ResourceType| resources.get(&ty).unwrap_or(&empty);
        let mut counts = BTreeMap::new();
        for (ty, map) in resources {
            counts.insert(ty.as_str_name(), map.len());
        }

        let mut workloads = Vec::new();
        for (name, r) in of(ResourceType::Workload) {
            let w = Workload::try_from((**r).clone())
                .map_err(|e| BuildError::new(name, e.to_string()))?;
            workloads.push(Arc::new(w));
        }
        let mut services = HashMap::new();
        for (name, r) in of(ResourceType::Service) {
            let s = Service::try_from((**r).clone())
                .map_err(|e| BuildError::new(name, e.to_string()))?;
            services.insert((s.namespace.clone(), s.name.clone()), Arc::new(s));
        }
        let mut consumers = BTreeMap::new();
        for (name, r) in of(ResourceType::Consumer) {
            let Some(Kind::Consumer(c)) = &r.kind else {
                return Err(BuildError::new(name, "not a Consumer"));
            };
            consumers.insert(format!("{}/{}", c.namespace, c.name), Arc::new(c.clone()));
        }
        let mut plans = HashMap::new();
        for (name, r) in of(ResourceType::Plan) {
            let Some(Kind::Plan(p)) = &r.kind else {
                return Err(BuildError::new(name, "not a Plan"));
            };
            let limits = p.limits.as_ref().map(Limits::from).unwrap_or_default();
            plans.insert(format!("{}/{}", p.namespace, p.name), limits);
        }
        let mut routes: Vec<Arc<Route>> = Vec::new();
        let mut policies = HashMap::new();
        for (name, r) in of(ResourceType::ApiRoute) {
            let Some(Kind::ApiRoute(a)) = &r.kind else {
                return Err(BuildError::new(name, "not an ApiRoute"));
            };
            let route = Route::try_from(a).map_err(|e| BuildError::new(name, e.to_string()))?;
            if let Some(p) = &a.policy {
                let auth =
                    AuthPolicy::try_from(p).map_err(|e| BuildError::new(name, e.to_string()))?;
                // As the limits' API scope names it: `api`, else the policy's name.
                let api = if p.api.is_empty() {
                    p.name.clone()
                } else {
                    p.api.clone()
                };
                policies.insert(
                    policy_key(&route),
                    Arc::new(RoutePolicy {
                        auth,
                        api,
                        policy: Arc::new(p.clone()),
                        anonymous: p
                            .anonymous_limits
                            .as_ref()
                            .map(Limits::from)
                            .unwrap_or_default(),
                    }),
                );
            }
            routes.push(Arc::new(route));
        }
        let consumer_list: Vec<pb::Consumer> = consumers
            .values()
            .map(|c: &Arc<pb::Consumer>| (**c).clone())
            .collect();
        let authenticator =
            Authenticator::new(&consumer_list, policies.values().map(|p| &p.auth), jwks)
                .map_err(|e| BuildError::new("consumers and policies", e.to_string()))?;

        // Ports: every listener on a port must speak the same protocol.
        let mut by_port: BTreeMap<u16, (Protocol, Vec<Arc<ListenerConf>>, SniCerts)> =
            BTreeMap::new();
        for (name, r) in of(ResourceType::Listener) {
            let Some(Kind::Listener(l)) = &r.kind else {
                return Err(BuildError::new(name, "not a Listener"));
            };
            let port = u16::try_from(l.port)
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| BuildError::new(name, format!("port {} is not 1-65535", l.port)))?;
            let protocol = match pb::ListenerProtocol::try_from(l.protocol) {
                Ok(pb::ListenerProtocol::Http) => Protocol::Http,
                Ok(pb::ListenerProtocol::Https) => Protocol::Https,
                _ => {
                    return Err(BuildError::new(
                        name,
                        format!("unknown listener protocol {}", l.protocol),
                    ));
                }
            };
            let entry = by_port
                .entry(port)
                .or_insert_with(|| (protocol, Vec::new(), SniCerts::default()));
            if entry.0 != protocol {
                return Err(BuildError::new(
                    name,
                    format!(
                        "port {port} is already an {} port; one port speaks one protocol",
                        entry.0.as_str()
                    ),
                ));
            }
            if protocol == Protocol::Https {
                if l.certificates.is_empty() {
                    return Err(BuildError::new(
                        name,
                        "an HTTPS listener needs a certificate",
                    ));
                }
                for c in &l.certificates {
                    entry.2.add(name, c)?;
                }
            }
            let hostname = Some(l.hostname.to_ascii_lowercase()).filter(|h| !h.is_empty());
            let listener_ref =
                ListenerRef::try_from(l).map_err(|e| BuildError::new(name, e.to_string()))?;
            let table = RouteTable::build(&listener_ref, &routes);
            entry.1.push(Arc::new(ListenerConf {
                key: name.clone(),
                namespace: l.namespace.clone(),
                gateway: l.gateway.clone(),
                name: l.name.clone(),
                hostname,
                routes: table,
            }));
        }
        let ports = by_port
            .into_iter()
            .map(|(port, (protocol, listeners, certs))| {
                let certs = (protocol == Protocol::Https).then(|| Arc::new(certs));
                (
                    port,
                    Arc::new(PortConf {
                        port,
                        protocol,
                        listeners,
                        certs,
                    }),
                )
            })
            .collect();
        Ok(Snapshot {
            generation,
            ports,
            consumers,
            plans,
            policies,
            authenticator: Some(Arc::new(authenticator)),
            services,
            workloads: WorkloadStore::from_arcs(workloads),
            counts,
        })
    }

    /// What is in force, for the admin `/config`.
    pub fn dump(&self) -> serde_json::Value {
        let ports: Vec<_> = self
            .ports
            .values()
            .map(|p| {
                json!({
                    "port": p.port,
                    "protocol": p.protocol.as_str(),
                    "certificates": p.certs.as_ref().map(|c| c.names.clone()).unwrap_or_default(),
                    "listeners": p.listeners.iter().map(|l| json!({
                        "name": l.key,
                        "hostname": l.hostname,
                        "routes": l.routes.routes().iter().map(|r| r.key.to_string()).collect::<Vec<_>>(),
                    })).collect::<Vec<_>>(),
                })
            })
            .collect();
        json!({
            "generation": self.generation,
            "resources": self.counts,
            "ports": ports,
            "consumers": self.consumers.keys().collect::<Vec<_>>(),
            "plans": self.plans.keys().collect::<std::collections::BTreeSet<_>>(),
            "services": self.services.len(),
            "workloads": self.workloads.iter().count(),
        })
    }
}
