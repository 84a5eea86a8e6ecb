//! A synthetic mesh written as the YAML documents the control plane reads: workloads spread
//! over nodes and namespaces with dual-stack IPs and Kubernetes-like labels, services that
//! select them, and a handful of policies, each policy in its own file so that one can be
//! replaced atomically.

use std::{
    fmt::Write as _,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use serde::Serialize;

/// AuthorizationPolicies generated (one per namespace, up to this many): the ones the
/// rounds rewrite, so consecutive rounds touch different policies.
const MAX_AUTHZ: usize = 20;
/// NetworkPolicies generated (one per namespace, up to this many); never changed, they make
/// the Policy snapshot realistic.
const MAX_NETPOL: usize = 10;
/// The first port of the rewritten rule; each rewrite moves it so the content differs.
const BASE_PORT: u32 = 9000;

/// The size of the generated mesh.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Shape {
    pub workloads: usize,
    pub services: usize,
    pub namespaces: usize,
    pub nodes: usize,
}

/// What was written, and the policies a round may rewrite.
#[derive(Debug, Serialize)]
pub struct Mesh {
    pub files: usize,
    pub bytes: u64,
    pub documents: usize,
    pub policies: usize,
    #[serde(skip)]
    pub dir: PathBuf,
    /// Where a rewritten file is staged before the rename: outside the watched directory,
    /// so only the rename itself is an event there.
    #[serde(skip)]
    staging: PathBuf,
    #[serde(skip)]
    authz: Vec<Authz>,
}

#[derive(Debug)]
struct Authz {
    path: PathBuf,
    namespace: String,
    service: usize,
    generation: u32,
}

/// Writes the mesh under `root/config` (staging files under `root/staging`).
pub fn generate(root: &Path, shape: Shape) -> anyhow::Result<Mesh> {
    if shape.services == 0 || shape.namespaces == 0 || shape.nodes == 0 {
        bail!("--services, --namespaces and --nodes must be at least 1");
    }
    if shape.workloads > 1 << 20 || shape.services > 1 << 16 {
        bail!("at most 1,048,576 workloads and 65,536 services (the address plan's size)");
    }
    let dir = root.join("config");
    let staging = root.join("staging");
    for d in ["workloads", "services", "policies"] {
        std::fs::create_dir_all(dir.join(d)).with_context(|| format!("creating {d}"))?;
    }
    std::fs::create_dir_all(&staging).context("creating the staging directory")?;
    let mut mesh = Mesh {
        files: 0,
        bytes: 0,
        documents: 0,
        policies: 0,
        dir,
        staging,
        authz: Vec::new(),
    };

    // One file per namespace and kind, like a `kubectl get -o yaml` export.
    let mut workloads = vec![String::new(); shape.namespaces];
    for i in 0..shape.workloads {
        let service = i % shape.services;
        let ns = service % shape.namespaces;
        workload(&mut workloads[ns], i, service, ns, shape);
    }
    let mut services = vec![String::new(); shape.namespaces];
    for s in 0..shape.services {
        service(&mut services[s % shape.namespaces], s, s % shape.namespaces);
    }
    for (ns, (w, s)) in workloads.iter().zip(&services).enumerate() {
        mesh.write(&format!("workloads/ns-{ns:02}.yaml"), w)?;
        mesh.write(&format!("services/ns-{ns:02}.yaml"), s)?;
    }
    mesh.documents = shape.workloads + shape.services;

    for ns in 0..shape.namespaces.min(MAX_NETPOL) {
        mesh.write(
            &format!("policies/netpol-ns-{ns:02}.yaml"),
            &network_policy(ns, shape),
        )?;
        mesh.documents += 1;
        mesh.policies += 1;
    }
    for ns in 0..shape.namespaces.min(MAX_AUTHZ).min(shape.services) {
        let authz = Authz {
            path: mesh.dir.join(format!("policies/authz-ns-{ns:02}.yaml")),
            namespace: format!("ns-{ns:02}"),
            // Service `ns` lives in namespace `ns` (services are dealt round-robin).
            service: ns,
            generation: 0,
        };
        let text = authz.render();
        mesh.write(&format!("policies/authz-ns-{ns:02}.yaml"), &text)?;
        mesh.authz.push(authz);
        mesh.documents += 1;
        mesh.policies += 1;
    }
    mesh.write(
        "policies/peerauthentication.yaml",
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\n\
         metadata: {name: default, namespace: ns-00}\nspec:\n  mtls: {mode: STRICT}\n",
    )?;
    mesh.documents += 1;
    mesh.policies += 1;
    Ok(mesh)
}

impl Mesh {
    fn write(&mut self, relative: &str, text: &str) -> anyhow::Result<()> {
        let path = self.dir.join(relative);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        self.files += 1;
        self.bytes += text.len() as u64;
        Ok(())
    }

    /// How many policies the rounds can rewrite in turn.
    pub fn rewritable(&self) -> usize {
        self.authz.len()
    }

    /// Stages a changed version of rewritable policy `index` (modulo their count). Returns
    /// the staged file, its destination and the Policy resource name that will change;
    /// [`commit`] makes it visible.
    pub fn stage_change(&mut self, index: usize) -> anyhow::Result<Staged> {
        let count = self.authz.len();
        let Some(authz) = self.authz.get_mut(index % count.max(1)) else {
            bail!("the mesh has no AuthorizationPolicy to change");
        };
        authz.generation += 1;
        let staged = self.staging.join("policy.yaml");
        std::fs::write(&staged, authz.render())
            .with_context(|| format!("writing {}", staged.display()))?;
        Ok(Staged {
            from: staged,
            to: authz.path.clone(),
            resource: format!(
                "authorizationpolicy/{}/allow-svc-{}",
                authz.namespace, authz.service
            ),
        })
    }
}

/// A rewritten policy file waiting for its rename.
#[derive(Debug)]
pub struct Staged {
    from: PathBuf,
    to: PathBuf,
    pub resource: String,
}

impl Staged {
    /// Replaces the policy file in one step (rename is atomic within a filesystem), as a
    /// ConfigMap update or `kubectl cp` of a finished file would.
    pub fn commit(&self) -> anyhow::Result<()> {
        std::fs::rename(&self.from, &self.to)
            .with_context(|| format!("renaming into {}", self.to.display()))
    }
}

impl Authz {
    fn render(&self) -> String {
        let (ns, s) = (&self.namespace, self.service);
        let port = BASE_PORT + self.generation;
        format!(
            "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n\
             metadata: {{name: allow-svc-{s}, namespace: {ns}}}\n\
             spec:\n  selector: {{matchLabels: {{app: app-{s}}}}}\n  action: ALLOW\n  rules:\n\
             \x20 - from:\n    - source: {{principals: [cluster.local/ns/{ns}/sa/frontend], namespaces: [{ns}, edge]}}\n\
             \x20   to:\n    - operation: {{ports: [\"8080\", \"{port}\"], methods: [GET, POST], paths: [\"/api/*\"]}}\n"
        )
    }
}

fn workload(out: &mut String, i: usize, service: usize, ns: usize, shape: Shape) {
    // Every workload gets a distinct address: 10.64.0.0/12 and fd00:64::/96.
    let n = u32::try_from(i).unwrap_or(u32::MAX).saturating_add(1);
    let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 0)) + n);
    let v6 =
        Ipv6Addr::from(u128::from(Ipv6Addr::new(0xfd00, 0x64, 0, 0, 0, 0, 0, 0)) + u128::from(n));
    let version = if (i / shape.services).is_multiple_of(2) {
        "v1"
    } else {
        "v2"
    };
    let tier = ["frontend", "backend", "data"][service % 3];
    let node = i % shape.nodes;
    // A replica-set-like name: app, template hash, replica index.
    let _ = write!(
        out,
        "---\napiVersion: weft.dev/v1alpha1\nkind: Workload\nmetadata:\n  name: app-{service}-{hash:08x}-{i}\n\
         \x20 namespace: ns-{ns:02}\n\
         \x20 labels: {{app: app-{service}, version: {version}, tier: {tier}, team: team-{team}, pod-template-hash: \"{hash:08x}\"}}\n\
         spec:\n  serviceAccount: app-{service}\n  node: node-{node:03}\n  ips: [\"{v4}\", \"{v6}\"]\n",
        hash = (service as u32).wrapping_mul(2_654_435_761),
        team = service % 12,
    );
}

fn service(out: &mut String, s: usize, ns: usize) {
    // 10.96.0.0/16 and fd00:96::/112, as a cluster's service CIDRs.
    let n = u32::try_from(s).unwrap_or(u32::MAX).saturating_add(1);
    let v4 = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + n);
    let v6 =
        Ipv6Addr::from(u128::from(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0)) + u128::from(n));
    let _ = write!(
        out,
        "---\napiVersion: v1\nkind: Service\nmetadata: {{name: app-{s}, namespace: ns-{ns:02}}}\n\
         spec:\n  selector: {{app: app-{s}}}\n  clusterIP: {v4}\n  clusterIPs: [\"{v4}\", \"{v6}\"]\n\
         \x20 ports:\n  - {{name: http, port: 80, targetPort: 8080, appProtocol: http}}\n\
         \x20 - {{name: grpc, port: 9090, targetPort: 9090, appProtocol: grpc}}\n"
    );
}

fn network_policy(ns: usize, shape: Shape) -> String {
    // The namespace's first service plays the database, its second the web tier.
    let db = ns;
    let web = ns + shape.namespaces;
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: app-{db}-ingress, namespace: ns-{ns:02}}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: app-{db}}}}}\n  policyTypes: [Ingress]\n  ingress:\n\
         \x20 - from:\n    - podSelector: {{matchLabels: {{app: app-{web}}}}}\n\
         \x20   - ipBlock: {{cidr: 10.0.0.0/8, except: [10.9.0.0/16]}}\n\
         \x20   ports:\n    - {{protocol: TCP, port: 5432}}\n"
    )
}
