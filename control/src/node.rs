//! Node credentials: the client certificates agents authenticate to the control plane with.
//!
//! A node credential is an ECDSA P-256 certificate from the mesh root with exactly one URI
//! SAN, `spiffe://<trust-domain>/node/<node-name>`, for client authentication only. It is
//! issued at bootstrap (`weft-control node-credential`, or by whatever provisions the node)
//! and proves which node a caller runs on, so that the CA signs only the identities of that
//! node's workloads (ARCHITECTURE.md §4) and a discovery subscriber can only claim its own
//! node. The path differs from a workload's (`/ns/<ns>/sa/<sa>`), so a workload certificate
//! can never pass for a node credential, nor the other way round.

use std::{
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::Arc,
    time::Duration,
};

use weft_link::identity::TrustDomain;

use crate::ca::{CaError, CertificateAuthority, Issued, ROOT_CERT_FILE, write_file};

/// File name of the node certificate in `--out-dir` (the leaf alone, PEM).
pub const NODE_CERT_FILE: &str = "node-cert.pem";
/// File name of the node's private key in `--out-dir` (PEM, mode 0600).
pub const NODE_KEY_FILE: &str = "node-key.pem";
/// A node credential lives as long as the node is expected to, give or take: a year, after
/// which the node is re-provisioned (the root itself lives ten).
pub const DEFAULT_NODE_CREDENTIAL_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// RFC 1123: a DNS name is at most 253 characters, each label at most 63.
const MAX_NAME_LEN: usize = 253;
const MAX_LABEL_LEN: usize = 63;

/// A node name that is not a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "node name {name:?} is invalid: {reason}; node names are DNS names such as node-1 or \
     ip-10-0-0-1.ec2.internal"
)]
pub struct NodeNameError {
    pub name: String,
    pub reason: &'static str,
}

// === impl NodeName ===

/// The name of a node, as Kubernetes spells it (`spec.nodeName`): a lowercase RFC 1123 DNS
/// name (labels of a-z, 0-9 and '-', separated by dots).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName(Arc<str>);

impl NodeName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for NodeName {
    type Err = NodeNameError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match dns_name_problem(s) {
            Some(reason) => Err(NodeNameError {
                name: s.to_owned(),
                reason,
            }),
            None => Ok(NodeName(Arc::from(s))),
        }
    }
}

/// What makes `s` not a lowercase RFC 1123 DNS name, if anything.
pub(crate) fn dns_name_problem(s: &str) -> Option<&'static str> {
    if s.is_empty() {
        Some("it is empty")
    } else if s.len() > MAX_NAME_LEN {
        Some("it is longer than 253 characters")
    } else if s
        .bytes()
        .any(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'))
    {
        Some("only lowercase letters, digits, '-' and '.' are allowed")
    } else if s.split('.').any(str::is_empty) {
        Some("it has an empty label (a leading, trailing or double '.')")
    } else if s.split('.').any(|l| l.len() > MAX_LABEL_LEN) {
        Some("a label is longer than 63 characters")
    } else if s.split('.').any(|l| l.starts_with('-') || l.ends_with('-')) {
        Some("a label starts or ends with '-'")
    } else {
        None
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeName({})", self.0)
    }
}

/// The SPIFFE ID of a node credential: `spiffe://<trust-domain>/node/<node>`.
pub fn node_spiffe_id(trust_domain: &TrustDomain, node: &NodeName) -> String {
    format!("spiffe://{trust_domain}/node/{node}")
}

/// Why a peer certificate is not a node credential of this trust domain.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotANode {
    #[error("the client presented no certificate")]
    NoCertificate,
    #[error("the client certificate cannot be parsed: {reason}")]
    Malformed { reason: String },
    #[error("the client certificate has {count} URI SANs; a node credential has exactly one")]
    UriSanCount { count: usize },
    #[error(
        "the client certificate is for {uri:?}, not a node of trust domain {trust_domain} \
         (spiffe://{trust_domain}/node/<node>)"
    )]
    NotANodeId { uri: String, trust_domain: String },
    #[error("the client certificate's node: {0}")]
    Name(#[from] NodeNameError),
}

/// The node a verified client certificate (DER, the leaf) names. TLS has already checked the
/// chain against the mesh root; this reads the identity it carries.
pub fn node_of_peer(leaf: Option<&[u8]>, trust_domain: &TrustDomain) -> Result<NodeName, NotANode> {
    let der = leaf.ok_or(NotANode::NoCertificate)?;
    let (uri, _) = weft_link::tls::single_uri_san(der).map_err(|e| match e {
        weft_link::tls::VerifyError::UriSanCount { count } => NotANode::UriSanCount { count },
        other => NotANode::Malformed {
            reason: other.to_string(),
        },
    })?;
    let prefix = format!("spiffe://{trust_domain}/node/");
    let name = uri
        .strip_prefix(&prefix)
        .ok_or_else(|| NotANode::NotANodeId {
            uri: uri.clone(),
            trust_domain: trust_domain.to_string(),
        })?;
    Ok(name.parse()?)
}

/// Where a credential's files were written.
#[derive(Debug, Clone)]
pub struct CredentialFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub root: PathBuf,
    /// The credential's SPIFFE ID, the certificate's only URI SAN.
    pub spiffe_id: String,
    pub issued: Issued,
}

/// Issues a credential for `node` and writes `node-cert.pem`, `node-key.pem` (mode 0600) and
/// `root-cert.pem` into `out_dir`, creating it if needed.
pub fn write_node_credential(
    ca: &CertificateAuthority,
    trust_domain: &TrustDomain,
    node: &NodeName,
    lifetime: Duration,
    out_dir: &Path,
) -> Result<CredentialFiles, CaError> {
    write_credential(
        ca,
        &node_spiffe_id(trust_domain, node),
        node.as_str(),
        lifetime,
        out_dir,
        (NODE_CERT_FILE, NODE_KEY_FILE),
    )
}

/// Issues a client credential for `spiffe_id` and writes its certificate, its key (mode
/// 0600) and `root-cert.pem` into `out_dir`, creating it (0700) if needed. Existing files
/// are not replaced: re-issuing goes to a fresh directory, or after removing the old files.
pub fn write_credential(
    ca: &CertificateAuthority,
    spiffe_id: &str,
    common_name: &str,
    lifetime: Duration,
    out_dir: &Path,
    (cert_file, key_file): (&str, &str),
) -> Result<CredentialFiles, CaError> {
    use std::os::unix::fs::DirBuilderExt;
    let (issued, key_pem) = ca.issue_client_credential(spiffe_id, common_name, lifetime)?;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(out_dir)
        .map_err(|source| CaError::Write {
            path: out_dir.to_path_buf(),
            source,
        })?;
    let files = CredentialFiles {
        cert: out_dir.join(cert_file),
        key: out_dir.join(key_file),
        root: out_dir.join(ROOT_CERT_FILE),
        spiffe_id: spiffe_id.to_string(),
        issued,
    };
    // The key first, as for the root: a certificate never sits next to a missing key.
    write_file(&files.key, key_pem.as_bytes(), 0o600)?;
    write_file(&files.cert, files.issued.cert_pem.as_bytes(), 0o644)?;
    write_file(&files.root, ca.root_pem().as_bytes(), 0o644)?;
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_dns_names() {
        for ok in ["node-1", "a", "ip-10-0-0-1.ec2.internal", "n0de.x"] {
            assert_eq!(ok.parse::<NodeName>().unwrap().as_str(), ok);
        }
        let cases = [
            ("", "empty"),
            ("Node-1", "lowercase"),
            ("node_1", "lowercase"),
            ("node/1", "lowercase"),
            ("-node", "starts or ends"),
            ("node-", "starts or ends"),
            ("a..b", "empty label"),
            (".a", "empty label"),
        ];
        for (input, want) in cases {
            let err = input.parse::<NodeName>().unwrap_err().to_string();
            assert!(err.contains(want), "{input:?}: {err}");
            assert!(!err.contains('\n'), "{err}");
        }
        assert!("a".repeat(64).parse::<NodeName>().is_err());
        assert!(["a"; 130].join(".").parse::<NodeName>().is_err());
    }

    #[test]
    fn reads_the_node_of_a_credential_and_nothing_else() {
        let ca = CertificateAuthority::generate().unwrap();
        let td = TrustDomain::default();
        let node: NodeName = "node-a".parse().unwrap();
        let (issued, _) = ca
            .issue_node_credential(&td, &node, Duration::from_secs(60))
            .unwrap();
        let der = pem_der(&issued.cert_pem);
        assert_eq!(node_of_peer(Some(&der), &td), Ok(node));
        let other: TrustDomain = "example.org".parse().unwrap();
        assert!(matches!(
            node_of_peer(Some(&der), &other),
            Err(NotANode::NotANodeId { .. })
        ));
        assert_eq!(node_of_peer(None, &td), Err(NotANode::NoCertificate));
        // The serving certificate has DNS and IP SANs but no URI: not a node.
        let (serving, _) = ca.issue_serving(&[]).unwrap();
        assert_eq!(
            node_of_peer(Some(&pem_der(&serving)), &td),
            Err(NotANode::UriSanCount { count: 0 })
        );
    }

    fn pem_der(pem: &str) -> Vec<u8> {
        let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
        block.contents
    }
}
