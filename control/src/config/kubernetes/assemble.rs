//! Every watched object at one moment into one [`Loaded`] configuration.
//!
//! Unlike the file source, which rejects a whole configuration for one bad document, a
//! bad object here is skipped on its own and the rest is served: a cluster's objects are
//! written by many teams and controllers, and one team's typo must not freeze every other
//! team's changes (nor, at start, keep the control plane down). A skipped object is
//! reported as a warning naming its kind, namespace, name and field path.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::{Pod, Secret, Service},
        discovery::v1::EndpointSlice,
        networking::v1::NetworkPolicy,
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta as KubeMeta,
};
use kube::{ResourceExt, core::DynamicObject};
use tracing::debug;
use weft_proto::discovery::v1::{self as pb, ResourceType, resource::Kind as PbKind};

use super::translate::{self, Translation};
use crate::config::{
    Diagnostic, Loaded, Origin, ParsedDocument, ResourceSet, Severity, compile, document::Kind,
    gateway::GATEWAY_CLASS,
};

/// The label that ties an EndpointSlice to its Service.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A consistent view of every watched object.
#[derive(Debug, Default, Clone)]
pub struct Objects {
    pub pods: Vec<Arc<Pod>>,
    pub services: Vec<Arc<Service>>,
    pub endpoint_slices: Vec<Arc<EndpointSlice>>,
    pub network_policies: Vec<Arc<NetworkPolicy>>,
    /// TLS Secrets; only those a `weft` Gateway's listener names are read.
    pub secrets: Vec<Arc<Secret>>,
    /// Objects of kinds watched without a Rust type, by the model kind they translate to.
    pub dynamic: Vec<(Kind, Vec<Arc<DynamicObject>>)>,
}

/// Translates, validates and compiles `objects`, skipping each invalid one. The result
/// holds no errors: every problem is a warning (see the module documentation).
pub fn assemble(objects: &Objects) -> Loaded {
    let mut diagnostics = Vec::new();
    let mut documents = Vec::new();
    let mut accept = |what: &str, meta: &KubeMeta, t: Translation, diagnostics: &mut Vec<_>| match t
    {
        Translation::Document(d) => documents.push((meta.creation_timestamp.clone(), *d)),
        Translation::Skipped(why) => {
            debug!(kind = what, object = key(meta), "not in the mesh: {why}")
        }
        Translation::Rejected(d) => diagnostics.push(d),
    };
    for pod in sorted(&objects.pods) {
        accept("Pod", &pod.metadata, translate::pod(pod), &mut diagnostics);
    }
    for svc in sorted(&objects.services) {
        accept(
            "Service",
            &svc.metadata,
            translate::service(svc),
            &mut diagnostics,
        );
    }
    for np in sorted(&objects.network_policies) {
        let mut warnings = Vec::new();
        let t = translate::network_policy(np, &mut warnings);
        diagnostics.append(&mut warnings);
        accept("NetworkPolicy", &np.metadata, t, &mut diagnostics);
    }
    let wanted = gateway_secrets(objects);
    for secret in sorted(&objects.secrets) {
        let key = (
            secret.metadata.namespace.clone().unwrap_or_default(),
            secret.metadata.name.clone().unwrap_or_default(),
        );
        if wanted.contains(&key) {
            accept(
                "Secret",
                &secret.metadata,
                translate::secret(secret),
                &mut diagnostics,
            );
        }
    }
    // What ApiPolicies that cannot be read target: see `unprotected`.
    let mut unreadable_policy_targets: BTreeMap<(String, String, String), String> = BTreeMap::new();
    for (kind, objs) in &objects.dynamic {
        for obj in sorted(objs) {
            let t = translate::dynamic(*kind, obj);
            if *kind == Kind::ApiPolicy && matches!(t, Translation::Rejected(_)) {
                for target in policy_targets(obj) {
                    unreadable_policy_targets.insert(target, key(&obj.metadata));
                }
            }
            accept(kind.name(), &obj.metadata, t, &mut diagnostics);
        }
    }
    documents.retain(|(_, d)| unprotected(d, &unreadable_policy_targets, &mut diagnostics));
    // When two objects claim one name or address, the one created first keeps it: the
    // later one is the likelier mistake, and an IP the kubelet reuses goes to the new pod
    // as soon as the old one's deletion arrives. The sort is stable, so objects created in
    // the same second keep kind and name order.
    documents.sort_by(|(a, _), (b, _)| a.cmp(b));
    let documents: Vec<ParsedDocument> = documents.into_iter().map(|(_, d)| d).collect();
    let count = documents.len();
    let mut resources = compile_skipping(documents, &mut diagnostics);
    endpoint_slices(&mut resources, &objects.endpoint_slices);
    for d in &mut diagnostics {
        present(d);
    }
    Loaded {
        resources,
        diagnostics,
        files: 0,
        documents: count,
    }
}

/// Compiles, drops the documents with errors and compiles again, until no error is left.
/// A second round is only needed for conflicts between objects (two pods claiming one IP
/// while the old one's deletion is still on its way): the object named in the error, the
/// later one in `documents`, is dropped, and the other stays.
fn compile_skipping(
    mut documents: Vec<ParsedDocument>,
    diagnostics: &mut Vec<Diagnostic>,
) -> ResourceSet {
    loop {
        let mut round = Vec::new();
        let resources = compile(&documents, &mut round);
        let bad: BTreeSet<Origin> = round
            .iter()
            .filter(|d| d.is_error())
            .map(|d| d.origin.clone())
            .collect();
        if bad.is_empty() {
            diagnostics.append(&mut round);
            return resources;
        }
        // Warnings are taken from the last round only, so none is reported twice.
        diagnostics.extend(round.into_iter().filter(Diagnostic::is_error));
        documents.retain(|d| !bad.contains(&d.origin));
    }
}

/// Words a diagnostic for an operator who knows the object, not the document it became.
fn present(d: &mut Diagnostic) {
    if let Origin::Kubernetes { kind, .. } = &d.origin {
        if kind == "Pod" {
            d.path = translate::pod_path(&d.path);
        }
        // The origin already names the object's kind.
        d.kind = None;
    }
    if d.severity == Severity::Error {
        d.severity = Severity::Warning;
        d.message.push_str("; the object is skipped");
    }
}

/// Members of services without a selector, from their EndpointSlices: the Kubernetes way to
/// put workloads that are not pods of the cluster (VMs, as Weft `Workload`s) behind a
/// Service. An endpoint is matched to a workload by the pod uid it references or by its
/// address. Services with a selector keep the members their selector picks.
fn endpoint_slices(set: &mut ResourceSet, slices: &[Arc<EndpointSlice>]) {
    let mut by_ip: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut uids: BTreeSet<String> = BTreeSet::new();
    for r in set.of_type(ResourceType::Workload) {
        if let Some(PbKind::Workload(w)) = &r.kind {
            uids.insert(w.uid.clone());
            for ip in &w.ips {
                if let Ok(ip) = ip.parse::<IpAddr>() {
                    by_ip.insert(ip, w.uid.clone());
                }
            }
        }
    }
    let mut members: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for slice in slices {
        let Some(service) = slice.labels().get(SERVICE_NAME_LABEL) else {
            continue;
        };
        let service = format!("{}/{service}", slice.namespace().unwrap_or_default());
        let entry = members.entry(service).or_default();
        // A not-ready endpoint gets no new connections, as with kube-proxy.
        let ready = slice
            .endpoints
            .iter()
            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false));
        for endpoint in ready {
            let by_ref = endpoint
                .target_ref
                .as_ref()
                .filter(|r| r.kind.as_deref() == Some("Pod"))
                .and_then(|r| r.uid.clone())
                .filter(|uid| uids.contains(uid));
            let found = by_ref.or_else(|| {
                endpoint
                    .addresses
                    .iter()
                    .filter_map(|a| a.parse::<IpAddr>().ok())
                    .find_map(|ip| by_ip.get(&ip.to_canonical()).cloned())
            });
            entry.extend(found);
        }
    }
    for (name, uids) in members {
        let Some(resource) = set.get(ResourceType::Service, &name) else {
            continue;
        };
        let mut resource: pb::Resource = (**resource).clone();
        if let Some(PbKind::Service(s)) = &mut resource.kind
            && s.selector.is_empty()
        {
            s.workload_uids = uids.into_iter().collect();
            set.insert(resource);
        }
    }
}

/// `(kind, namespace, name)` of what an ApiPolicy object targets, read from the raw object
/// (it could not be decoded into its type).
fn policy_targets(obj: &DynamicObject) -> Vec<(String, String, String)> {
    let namespace = obj.metadata.namespace.clone().unwrap_or_default();
    obj.data["spec"]["targetRefs"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|t| {
            Some((
                t["kind"].as_str()?.to_string(),
                namespace.clone(),
                t["name"].as_str()?.to_string(),
            ))
        })
        .collect()
}

/// Whether `doc` may be served: a route or Gateway that an unreadable ApiPolicy targets is
/// skipped with it, so that a typo in a policy never serves its routes without
/// authentication (a valid policy with errors is handled the same way when compiling).
fn unprotected(
    doc: &ParsedDocument,
    unreadable: &BTreeMap<(String, String, String), String>,
    diagnostics: &mut Vec<Diagnostic>,
) -> bool {
    if unreadable.is_empty()
        || !matches!(doc.kind, Kind::HttpRoute | Kind::GrpcRoute | Kind::Gateway)
    {
        return true;
    }
    let target = (
        doc.kind.name().to_string(),
        doc.meta
            .namespace
            .clone()
            .unwrap_or_else(|| crate::config::validate::DEFAULT_NAMESPACE.to_string()),
        doc.meta.name.clone().unwrap_or_default(),
    );
    let Some(policy) = unreadable.get(&target) else {
        return true;
    };
    diagnostics.push(Diagnostic::error(
        doc.origin.clone(),
        "",
        format!(
            "ApiPolicy {policy}, which targets it, cannot be read: refused rather than \
             served without it"
        ),
    ));
    false
}

/// `(namespace, name)` of every Secret a listener of a `weft` Gateway names: the other
/// Secrets of the cluster are none of the control plane's business.
fn gateway_secrets(objects: &Objects) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let gateways = objects
        .dynamic
        .iter()
        .filter(|(kind, _)| *kind == Kind::Gateway)
        .flat_map(|(_, objs)| objs.iter());
    for gw in gateways {
        let spec = &gw.data["spec"];
        if spec["gatewayClassName"].as_str() != Some(GATEWAY_CLASS) {
            continue;
        }
        let namespace = gw.metadata.namespace.clone().unwrap_or_default();
        let listeners = spec["listeners"].as_array().into_iter().flatten();
        for listener in listeners {
            let refs = listener["tls"]["certificateRefs"]
                .as_array()
                .into_iter()
                .flatten();
            for r in refs {
                if let Some(name) = r["name"].as_str() {
                    // A ref to another namespace is refused when the Gateway compiles.
                    let ns = r["namespace"].as_str().unwrap_or(&namespace);
                    out.insert((ns.to_string(), name.to_string()));
                }
            }
        }
    }
    out
}

/// Objects in namespace/name order, so that every rebuild sees them alike.
fn sorted<K: kube::Resource>(objects: &[Arc<K>]) -> Vec<&Arc<K>> {
    let mut v: Vec<&Arc<K>> = objects.iter().collect();
    v.sort_by_key(|o| (o.meta().namespace.clone(), o.meta().name.clone()));
    v
}

fn key(meta: &KubeMeta) -> String {
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}
