//! What a testbed is made of, its names and its addresses, computed from (name, nodes, pods
//! per node) alone so that a later command can find everything again.
//!
//! Node `i` (1-based): netns `<name>-node-<i>`, fabric address 10.77.0.<10+i>/24 and
//! fd77::<10+i>/64. Pod `j` (letter a, b, ...) of node `i`: netns `<name>-pod-<i><letter>`,
//! 10.78.<i>.<10+j>/24 and fd78:<i>::<10+j>/64.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};
use super::netns;
use super::process::ProcessId;

/// The testbed name when none is given.
pub const DEFAULT_NAME: &str = "weft";
/// Nodes when none is given: two, so that both the same-node and the cross-node path exist.
pub const DEFAULT_NODES: u32 = 2;
/// Pods per node when none is given: two, so that a node has a same-node peer.
pub const DEFAULT_PODS_PER_NODE: u32 = 2;
/// Node addresses are 10.77.0.<10+i>, so i stays below 245.
pub const MAX_NODES: u32 = 200;
/// Pods are lettered a..z.
pub const MAX_PODS_PER_NODE: u32 = 26;
/// A testbed name becomes a prefix of netns and cgroup names; keep them readable.
pub const MAX_NAME_LEN: usize = 32;

/// The agent's admin port, bound to 127.0.0.1 in the node's netns.
pub const ADMIN_PORT: u16 = 15000;
/// The agent's Prometheus port, bound to 0.0.0.0 in the node's netns.
pub const METRICS_PORT: u16 = 15020;
/// The agent's readiness port, bound to 0.0.0.0 in the node's netns.
pub const READINESS_PORT: u16 = 15021;

/// The Kubernetes namespace of every pod.
pub const POD_NAMESPACE: &str = "default";
/// The service account of every pod.
pub const POD_SERVICE_ACCOUNT: &str = "default";

/// A node: a network namespace on the fabric bridge, running one agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Node {
    /// `node-<i>`, what the agent is told with `--node`.
    pub name: String,
    /// 1-based index `i`.
    pub index: u32,
    pub netns: String,
    pub netns_path: PathBuf,
    /// The address on the fabric.
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    /// The agent's cgroup: `<cgroup2>/<testbed>/nodes/<node>`.
    pub cgroup: PathBuf,
    /// The parent of this node's pods' cgroups, enrolled or not: `<cgroup2>/<testbed>/pods/<node>`
    /// (what kubepods is on a Kubernetes node); the agent's `--service-cgroup`.
    #[serde(default)]
    pub pods_cgroup: PathBuf,
    /// Where the agent's admin endpoint answers, from inside the node's netns.
    pub admin_addr: SocketAddr,
    /// Where the agent's metrics endpoint answers.
    pub metrics_addr: SocketAddr,
    /// Where the agent's readiness endpoint answers.
    pub readiness_addr: SocketAddr,
    /// The running agent, if one was started.
    #[serde(default)]
    pub agent: Option<ProcessId>,
}

/// A pod: a network namespace behind its node, and a cgroup.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pod {
    /// `pod-<i><letter>`; also its `app` label.
    pub name: String,
    /// `<testbed>-<pod>`, unique across testbeds.
    pub uid: String,
    pub namespace: String,
    pub service_account: String,
    pub labels: BTreeMap<String, String>,
    /// The name of the node it runs on.
    pub node: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Ipv6Addr,
    pub netns: String,
    pub netns_path: PathBuf,
    /// `<cgroup2>/<testbed>/pods/<node>/<pod>`.
    pub cgroup: PathBuf,
    /// The node's end of the pod's veth, inside the node's netns.
    pub node_link: String,
}

impl Pod {
    /// Both addresses, IPv4 first.
    pub fn ips(&self) -> [IpAddr; 2] {
        [IpAddr::V4(self.ipv4), IpAddr::V6(self.ipv6)]
    }
}

/// Checks that `name` can prefix every object of a testbed: it starts with "weft" (so
/// leftovers are easy to spot), has only lowercase letters, digits and '-', and is short.
pub fn validate_name(name: &str) -> Result<()> {
    let invalid = |reason| {
        Err(Error::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if !name.starts_with("weft") {
        return invalid("it must start with \"weft\"");
    }
    if name.len() > MAX_NAME_LEN {
        return invalid("it must be at most 32 characters long");
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
    {
        return invalid("only lowercase letters, digits and '-' are allowed");
    }
    if name.ends_with('-') {
        return invalid("it must not end with '-'");
    }
    Ok(())
}

/// Checks the node and pod counts.
pub fn validate_size(nodes: u32, pods_per_node: u32) -> Result<()> {
    if !(1..=MAX_NODES).contains(&nodes) {
        return Err(Error::InvalidTopology {
            reason: format!("--nodes must be between 1 and {MAX_NODES}, not {nodes}"),
        });
    }
    if !(1..=MAX_PODS_PER_NODE).contains(&pods_per_node) {
        return Err(Error::InvalidTopology {
            reason: format!(
                "--pods must be between 1 and {MAX_PODS_PER_NODE}, not {pods_per_node}"
            ),
        });
    }
    Ok(())
}

/// The fabric namespace, which holds the bridge every node is plugged into.
pub fn fabric_netns(name: &str) -> String {
    format!("{name}-fabric")
}

/// Whether the namespace `netns` is one that testbed `name` creates. The match is exact
/// (fabric, gateway, node-<digits>, pod-<digits><letters>), so that testbed "weft" never claims the
/// namespaces of testbed "weft-e2e-x".
pub fn owns_netns(name: &str, netns: &str) -> bool {
    let Some(rest) = netns.strip_prefix(name).and_then(|r| r.strip_prefix('-')) else {
        return false;
    };
    let digits_then = |s: &str, tail: fn(&str) -> bool| {
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        split > 0 && tail(&s[split..])
    };
    if rest == "fabric" || rest == "gateway" {
        true
    } else if let Some(n) = rest.strip_prefix("node-") {
        digits_then(n, str::is_empty)
    } else if let Some(p) = rest.strip_prefix("pod-") {
        digits_then(p, |t| {
            !t.is_empty() && t.chars().all(|c| c.is_ascii_lowercase())
        })
    } else {
        false
    }
}

/// The testbed's cgroup: `<cgroup2>/<name>`.
pub fn cgroup_root(cgroup2: &Path, name: &str) -> PathBuf {
    cgroup2.join(name)
}

/// The nodes and pods of a testbed.
pub fn build(name: &str, nodes: u32, pods_per_node: u32, cgroup2: &Path) -> (Vec<Node>, Vec<Pod>) {
    let root = cgroup_root(cgroup2, name);
    let mut node_list = Vec::new();
    let mut pod_list = Vec::new();
    for i in 1..=nodes {
        let node_name = format!("node-{i}");
        let netns = format!("{name}-{node_name}");
        let host = u8::try_from(10 + i).unwrap_or(u8::MAX);
        let ipv4 = Ipv4Addr::new(10, 77, 0, host);
        node_list.push(Node {
            netns_path: netns::path(&netns),
            netns,
            ipv4,
            ipv6: Ipv6Addr::new(0xfd77, 0, 0, 0, 0, 0, 0, decimal_as_hex(10 + i)),
            cgroup: root.join("nodes").join(&node_name),
            pods_cgroup: root.join("pods").join(&node_name),
            admin_addr: SocketAddr::from((Ipv4Addr::LOCALHOST, ADMIN_PORT)),
            metrics_addr: SocketAddr::from((ipv4, METRICS_PORT)),
            readiness_addr: SocketAddr::from((ipv4, READINESS_PORT)),
            agent: None,
            name: node_name.clone(),
            index: i,
        });
        for j in 1..=pods_per_node {
            let letter = char::from(b'a' + u8::try_from(j - 1).unwrap_or(0));
            let pod_name = format!("pod-{i}{letter}");
            let netns = format!("{name}-{pod_name}");
            let subnet = u8::try_from(i).unwrap_or(u8::MAX);
            let host = u8::try_from(10 + j).unwrap_or(u8::MAX);
            pod_list.push(Pod {
                uid: format!("{name}-{pod_name}"),
                namespace: POD_NAMESPACE.to_owned(),
                service_account: POD_SERVICE_ACCOUNT.to_owned(),
                labels: BTreeMap::from([("app".to_owned(), pod_name.clone())]),
                node: node_name.clone(),
                ipv4: Ipv4Addr::new(10, 78, subnet, host),
                ipv6: pod_ipv6(i, u16::from(host)),
                netns_path: netns::path(&netns),
                netns,
                cgroup: root.join("pods").join(&node_name).join(&pod_name),
                node_link: format!("veth-{i}{letter}"),
                name: pod_name,
            });
        }
    }
    (node_list, pod_list)
}

/// fd78:<i>::<host> — numbers are written as hex digits that read like the decimal ones
/// (pod 11 of node 12 is fd78:12::11), so the IPv6 plan reads like the IPv4 one.
fn pod_ipv6(node: u32, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(
        0xfd78,
        decimal_as_hex(node),
        0,
        0,
        0,
        0,
        0,
        decimal_as_hex(u32::from(host)),
    )
}

fn decimal_as_hex(n: u32) -> u16 {
    u16::from_str_radix(&n.to_string(), 16).unwrap_or(u16::MAX)
}

/// The node's address on its pods' links (each pod veth, node side): 10.78.<i>.1.
pub fn node_pod_gateway_v4(node: &Node) -> Ipv4Addr {
    Ipv4Addr::new(10, 78, u8::try_from(node.index).unwrap_or(u8::MAX), 1)
}

/// fd78:<i>::1.
pub fn node_pod_gateway_v6(node: &Node) -> Ipv6Addr {
    pod_ipv6(node.index, 1)
}

/// The pod subnets of a node: 10.78.<i>.0/24 and fd78:<i>::/64.
pub fn pod_subnets(node: &Node) -> (String, String) {
    (
        format!("10.78.{}.0/24", node.index),
        format!("{}/64", pod_ipv6(node.index, 0)),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_addresses() {
        let (nodes, pods) = build("weft", 2, 2, Path::new("/sys/fs/cgroup/unified"));
        assert_eq!(nodes.len(), 2);
        assert_eq!(nodes[1].netns, "weft-node-2");
        assert_eq!(nodes[1].ipv4.to_string(), "10.77.0.12");
        assert_eq!(nodes[1].ipv6.to_string(), "fd77::12");
        assert_eq!(nodes[0].metrics_addr.to_string(), "10.77.0.11:15020");
        let names: Vec<_> = pods.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["pod-1a", "pod-1b", "pod-2a", "pod-2b"]);
        let p = &pods[2];
        assert_eq!(p.uid, "weft-pod-2a");
        assert_eq!(p.netns_path, Path::new("/run/netns/weft-pod-2a"));
        assert_eq!(p.ipv4.to_string(), "10.78.2.11");
        assert_eq!(p.ipv6.to_string(), "fd78:2::11");
        assert_eq!(
            p.cgroup,
            Path::new("/sys/fs/cgroup/unified/weft/pods/node-2/pod-2a")
        );
        // Each node's pods under one parent: the agent's --service-cgroup.
        assert_eq!(
            nodes[1].pods_cgroup,
            Path::new("/sys/fs/cgroup/unified/weft/pods/node-2")
        );
        assert!(p.cgroup.starts_with(&nodes[1].pods_cgroup));
        assert_eq!(node_pod_gateway_v6(&nodes[0]).to_string(), "fd78:1::1");
        assert_eq!(pod_subnets(&nodes[1]).1, "fd78:2::/64");
    }

    #[test]
    fn owns_only_its_own_namespaces() {
        assert!(owns_netns("weft", "weft-fabric"));
        assert!(owns_netns("weft", "weft-node-12"));
        assert!(owns_netns("weft", "weft-pod-1a"));
        assert!(!owns_netns("weft", "weft-e2e-x-node-1"));
        assert!(!owns_netns("weft", "weft-node-"));
        assert!(!owns_netns("weft", "weft-pod-1"));
        assert!(!owns_netns("weft", "weftx-node-1"));
        assert!(!owns_netns("weft-node", "weft-node-1"));
        assert!(owns_netns("weft-e2e-x", "weft-e2e-x-pod-2b"));
    }

    #[test]
    fn validates_names() {
        assert!(validate_name("weft").is_ok());
        assert!(validate_name("weft-e2e-conn").is_ok());
        assert!(validate_name("mesh").is_err());
        assert!(validate_name("weft_x").is_err());
        assert!(validate_name("weft-").is_err());
        assert!(validate_name(&format!("weft{}", "x".repeat(40))).is_err());
        assert!(validate_size(0, 2).is_err());
        assert!(validate_size(2, 27).is_err());
    }
}
