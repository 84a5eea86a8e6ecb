//! Turns one complete set of parsed documents into a [`ResourceSet`]: per-document field
//! validation, then the checks that need every document at once (duplicate names, shared
//! IPs, which workloads a service selects or its EndpointSlices list, the locality of each
//! workload's node, dangling route references).

use std::{
    borrow::Borrow,
    collections::{BTreeMap, btree_map::Entry},
    net::IpAddr,
};

use weft_proto::discovery::v1::{self as pb, ResourceType, resource::Kind as PbKind};

use super::{
    Diagnostic, Origin, ResourceSet,
    document::{Body, Meta, ParsedDocument},
    edge, endpoints, mesh, policy,
    resources::resource_type,
    validate::Checker,
};

/// Validates and compiles `documents`. Every problem is appended to `diagnostics`; the
/// returned set is only meaningful when none of them is an error.
///
/// Generic over how documents are held, so that a reload can pass documents cached from an
/// earlier parse (`Arc<ParsedDocument>`) without copying them.
pub fn compile<D: Borrow<ParsedDocument>>(
    documents: &[D],
    diagnostics: &mut Vec<Diagnostic>,
) -> ResourceSet {
    let mut set = ResourceSet::default();
    // Where each resource came from, to name both ends of a duplicate.
    let mut origins: BTreeMap<(ResourceType, String), Origin> = BTreeMap::new();
    let mut workload_names: BTreeMap<String, Origin> = BTreeMap::new();
    let mut ips: BTreeMap<IpAddr, (String, Origin)> = BTreeMap::new();
    let mut vips: BTreeMap<IpAddr, (String, Origin)> = BTreeMap::new();

    // Documents of the edge gateway's kinds, compiled together after the others.
    let mut edge_docs: Vec<(usize, Meta)> = Vec::new();
    let mut nodes = endpoints::Nodes::default();
    let mut slices = Vec::new();
    for (index, doc) in documents.iter().enumerate() {
        let doc = doc.borrow();
        let mut c = Checker::new(&doc.origin, doc.kind, diagnostics);
        let Some(meta) = c.meta(&doc.meta) else {
            continue;
        };
        let resources: Vec<(String, PbKind)> = match &doc.body {
            Body::Workload(spec) => {
                let w = mesh::workload(&meta, spec, &mut c);
                match workload_names.entry(meta.key()) {
                    Entry::Occupied(e) => c.error(
                        "metadata.name",
                        format!("workload {} is already defined in {}", meta.key(), e.get()),
                    ),
                    Entry::Vacant(e) => {
                        e.insert(doc.origin.clone());
                    }
                }
                for (i, ip) in w.ips.iter().enumerate() {
                    let Ok(ip) = ip.parse::<IpAddr>() else {
                        continue;
                    };
                    match ips.entry(ip) {
                        Entry::Occupied(e) => {
                            let (other, at) = e.get();
                            c.error(
                                format!("spec.ips[{i}]"),
                                format!("{ip} is already used by workload {other} ({at})"),
                            );
                        }
                        Entry::Vacant(e) => {
                            e.insert((meta.key(), doc.origin.clone()));
                        }
                    }
                }
                vec![(w.uid.clone(), PbKind::Workload(w))]
            }
            Body::Service(spec) => {
                let s = mesh::service(&meta, spec, &mut c);
                for (i, vip) in s.vips.iter().enumerate() {
                    let Ok(vip) = vip.parse::<IpAddr>() else {
                        continue;
                    };
                    match vips.entry(vip) {
                        Entry::Occupied(e) => {
                            let (other, at) = e.get();
                            c.error(
                                format!("spec.clusterIPs[{i}]"),
                                format!("{vip} is already the VIP of service {other} ({at})"),
                            );
                        }
                        Entry::Vacant(e) => {
                            e.insert((meta.key(), doc.origin.clone()));
                        }
                    }
                }
                vec![(meta.key(), PbKind::Service(s))]
            }
            Body::NetworkPolicy(spec) => policy::network_policy(&meta, spec, &mut c)
                .into_iter()
                .map(|(dir, p)| {
                    (
                        format!("networkpolicy/{}/{dir}", meta.key()),
                        PbKind::Policy(p),
                    )
                })
                .collect(),
            Body::AuthorizationPolicy(spec) => vec![(
                format!("authorizationpolicy/{}", meta.key()),
                PbKind::Policy(policy::authorization_policy(&meta, spec, &mut c)),
            )],
            Body::PeerAuthentication(spec) => vec![(
                format!("peerauthentication/{}", meta.key()),
                PbKind::Policy(policy::peer_authentication(&meta, spec, &mut c)),
            )],
            Body::Node(_) => {
                nodes.add(&meta, &doc.meta, &doc.origin, &mut c);
                continue;
            }
            Body::EndpointSlice(spec) => {
                slices.extend(endpoints::endpoint_slice(&meta, spec, &doc.origin, &mut c));
                continue;
            }
            Body::HttpRoute(_)
            | Body::GrpcRoute(_)
            | Body::Gateway(_)
            | Body::Secret(_)
            | Body::Backend(_)
            | Body::ApiPolicy(_)
            | Body::Consumer(_)
            | Body::Plan(_) => {
                edge_docs.push((index, meta));
                continue;
            }
        };
        add(&mut set, &mut origins, doc, &meta, resources, &mut c);
    }
    for out in edge::compile(documents, &edge_docs, diagnostics) {
        let doc = documents[out.index].borrow();
        let mut c = Checker::new(&doc.origin, doc.kind, diagnostics);
        add(
            &mut set,
            &mut origins,
            doc,
            &out.meta,
            out.resources,
            &mut c,
        );
    }

    select_workloads(&mut set);
    // Slices may create workloads, which then take their node's locality like any other.
    endpoints::apply(&slices, &mut set, diagnostics);
    nodes.apply(&mut set);
    check_references(documents, &set, diagnostics);
    set
}

/// Adds one document's resources, refusing a name another document already took.
fn add(
    set: &mut ResourceSet,
    origins: &mut BTreeMap<(ResourceType, String), Origin>,
    doc: &ParsedDocument,
    meta: &Meta,
    resources: Vec<(String, PbKind)>,
    c: &mut Checker<'_>,
) {
    for (name, kind) in resources {
        let resource = pb::Resource {
            name: name.clone(),
            kind: Some(kind),
        };
        let ty = resource_type(&resource);
        match origins.entry((ty, name)) {
            Entry::Occupied(e) => {
                c.error(
                    "metadata.name",
                    format!(
                        "{} {} is already defined in {}",
                        doc.kind.name(),
                        meta.key(),
                        e.get()
                    ),
                );
                continue;
            }
            Entry::Vacant(e) => {
                e.insert(doc.origin.clone());
            }
        }
        set.insert(resource);
    }
}

/// Fills in each service's `workload_uids`. A service selects only workloads of its own
/// namespace, so workloads are grouped by namespace first: each service is matched against
/// its namespace's workloads, not the whole mesh (services x workloads grows quadratically
/// and dominated reloads of large meshes).
fn select_workloads(set: &mut ResourceSet) {
    let mut by_namespace: BTreeMap<String, Vec<std::sync::Arc<pb::Resource>>> = BTreeMap::new();
    for r in set.of_type(ResourceType::Workload) {
        if let Some(PbKind::Workload(w)) = &r.kind {
            by_namespace
                .entry(w.namespace.clone())
                .or_default()
                .push(r.clone());
        }
    }
    let services: Vec<pb::Resource> = set
        .of_type(ResourceType::Service)
        .map(|r| (**r).clone())
        .collect();
    for mut resource in services {
        if let Some(PbKind::Service(s)) = &mut resource.kind {
            let candidates = by_namespace
                .get(&s.namespace)
                .map_or(&[][..], Vec::as_slice);
            let mut uids: Vec<String> = candidates
                .iter()
                .filter_map(|r| match &r.kind {
                    Some(PbKind::Workload(w)) if mesh::selects(s, w) => Some(w.uid.clone()),
                    _ => None,
                })
                .collect();
            uids.sort();
            s.workload_uids = uids;
        }
        set.insert(resource);
    }
}

/// Warns about routes whose backends or parent services do not exist. Only a warning: in
/// Kubernetes a route may name a service that is created later, and the data plane simply
/// has no endpoint for it until then.
fn check_references<D: Borrow<ParsedDocument>>(
    documents: &[D],
    set: &ResourceSet,
    diagnostics: &mut Vec<Diagnostic>,
) {
    for doc in documents {
        let doc = doc.borrow();
        let (parent_refs, backend_refs): (_, Vec<_>) = match &doc.body {
            Body::HttpRoute(spec) => (
                &spec.parent_refs,
                spec.rules.iter().map(|r| &r.backend_refs).collect(),
            ),
            Body::GrpcRoute(spec) => (
                &spec.parent_refs,
                spec.rules.iter().map(|r| &r.backend_refs).collect(),
            ),
            _ => continue,
        };
        let namespace = doc
            .meta
            .namespace
            .as_deref()
            .unwrap_or(super::validate::DEFAULT_NAMESPACE);
        let mut c = Checker::new(&doc.origin, doc.kind, diagnostics);
        let exists = |ns: &Option<String>, name: &str| {
            let key = format!("{}/{name}", ns.as_deref().unwrap_or(namespace));
            set.get(ResourceType::Service, &key).is_some()
        };
        for (i, p) in parent_refs.iter().enumerate() {
            if p.kind.as_deref() == Some("Service") && !exists(&p.namespace, &p.name) {
                c.warning(
                    format!("spec.parentRefs[{i}].name"),
                    format!("no Service {:?} is defined", p.name),
                );
            }
        }
        for (i, refs) in backend_refs.iter().enumerate() {
            for (j, b) in refs.iter().enumerate() {
                let is_service = b.kind.as_deref().unwrap_or("Service") == "Service";
                if is_service && !exists(&b.namespace, &b.name) {
                    c.warning(
                        format!("spec.rules[{i}].backendRefs[{j}].name"),
                        format!("no Service {:?} is defined", b.name),
                    );
                }
            }
        }
    }
}
