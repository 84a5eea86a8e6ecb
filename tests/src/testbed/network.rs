//! Wiring the namespaces together with `ip`.
//!
//! ```text
//!  <name>-fabric:  br0 ── n1 ─┐        ┌─ n2 ── (node-2 ...)
//!                             │ veth   │
//!  <name>-node-1:           eth0 10.77.0.11/24, fd77::11/64
//!                  veth-1a 10.78.1.1/32 ─┐   veth-1b 10.78.1.1/32 ─┐
//!  <name>-pod-1a:             eth0 10.78.1.11/24  <name>-pod-1b: eth0 10.78.1.12/24
//! ```
//!
//! Pods are routed, not bridged: a pod's addresses carry no prefix route
//! (`noprefixroute`), so everything, the same node's pods included, goes through the node,
//! as with Calico or Cilium's native routing. The node end of every pod veth has the
//! gateway address (10.78.<i>.1, fd78:<i>::1) and a host route to its pod. Nodes route each
//! other's pod subnets via their fabric addresses.

use std::net::IpAddr;

use super::cmd::ip_in;
use super::error::Result;
use super::netns;
use super::topology::{self, Node, Pod};

/// The bridge in the fabric namespace.
const FABRIC_BRIDGE: &str = "br0";
/// The interface name of a node's fabric link and a pod's link, inside their namespaces.
const ETH0: &str = "eth0";

/// Per-netns sysctls of every namespace: addresses usable at once (no duplicate address
/// detection) on links created later too.
const COMMON_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv6.conf.all.accept_dad", "0"),
    ("net.ipv6.conf.default.accept_dad", "0"),
];

/// Nodes route between their pods and the fabric; strict reverse-path filtering would drop
/// packets whose source is a pod on another node.
const NODE_SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.ip_forward", "1"),
    ("net.ipv6.conf.all.forwarding", "1"),
    ("net.ipv6.conf.default.forwarding", "1"),
    ("net.ipv4.conf.all.rp_filter", "0"),
    ("net.ipv4.conf.default.rp_filter", "0"),
];

/// Creates every namespace and link of the testbed.
pub fn build(name: &str, nodes: &[Node], pods: &[Pod]) -> Result<()> {
    let fabric = topology::fabric_netns(name);
    create_netns(&fabric, COMMON_SYSCTLS)?;
    ip_in(&fabric, &["link", "add", FABRIC_BRIDGE, "type", "bridge"])?;
    ip_in(&fabric, &["link", "set", FABRIC_BRIDGE, "up"])?;
    // The control plane listens on the bridge itself, reachable from every node.
    let v4 = format!("{}/24", super::control::CONTROL_IPV4);
    let v6 = format!("{}/64", super::control::CONTROL_IPV6);
    ip_in(&fabric, &["addr", "add", &v4, "dev", FABRIC_BRIDGE])?;
    ip_in(
        &fabric,
        &["addr", "add", &v6, "dev", FABRIC_BRIDGE, "nodad"],
    )?;
    for node in nodes {
        create_netns(&node.netns, COMMON_SYSCTLS)?;
        netns::sysctls(&node.netns_path, NODE_SYSCTLS)?;
        wire_node(&fabric, node)?;
    }
    for pod in pods {
        let node = nodes.iter().find(|n| n.name == pod.node);
        if let Some(node) = node {
            create_netns(&pod.netns, COMMON_SYSCTLS)?;
            wire_pod(node, pod)?;
        }
    }
    for node in nodes {
        for other in nodes.iter().filter(|o| o.index != node.index) {
            let (v4, v6) = topology::pod_subnets(other);
            let via4 = other.ipv4.to_string();
            let via6 = other.ipv6.to_string();
            ip_in(&node.netns, &["route", "add", &v4, "via", &via4])?;
            ip_in(&node.netns, &["-6", "route", "add", &v6, "via", &via6])?;
        }
    }
    Ok(())
}

fn create_netns(name: &str, sysctls: &[(&str, &str)]) -> Result<()> {
    netns::add(name)?;
    ip_in(name, &["link", "set", "lo", "up"])?;
    netns::sysctls(&netns::path(name), sysctls)
}

/// A veth from the node's `eth0` to port `n<i>` of the fabric bridge.
fn wire_node(fabric: &str, node: &Node) -> Result<()> {
    let port = format!("n{}", node.index);
    ip_in(
        &node.netns,
        &[
            "link", "add", ETH0, "type", "veth", "peer", "name", &port, "netns", fabric,
        ],
    )?;
    ip_in(
        fabric,
        &["link", "set", &port, "master", FABRIC_BRIDGE, "up"],
    )?;
    add_addr(&node.netns, ETH0, IpAddr::V4(node.ipv4), 24, false)?;
    add_addr(&node.netns, ETH0, IpAddr::V6(node.ipv6), 64, false)?;
    ip_in(&node.netns, &["link", "set", ETH0, "up"])
}

/// A veth from the pod's `eth0` to `veth-<i><letter>` in the node, routed both ways.
fn wire_pod(node: &Node, pod: &Pod) -> Result<()> {
    let gw4 = topology::node_pod_gateway_v4(node);
    let gw6 = topology::node_pod_gateway_v6(node);
    ip_in(
        &node.netns,
        &[
            "link",
            "add",
            &pod.node_link,
            "type",
            "veth",
            "peer",
            "name",
            ETH0,
            "netns",
            &pod.netns,
        ],
    )?;
    // Node side: the gateway address on the link and a host route to the pod.
    add_addr(&node.netns, &pod.node_link, IpAddr::V4(gw4), 32, false)?;
    add_addr(&node.netns, &pod.node_link, IpAddr::V6(gw6), 128, false)?;
    ip_in(&node.netns, &["link", "set", &pod.node_link, "up"])?;
    host_route(&node.netns, &pod.node_link, IpAddr::V4(pod.ipv4))?;
    host_route(&node.netns, &pod.node_link, IpAddr::V6(pod.ipv6))?;
    // Pod side: addresses without prefix routes, the gateway on-link, default via it.
    add_addr(&pod.netns, ETH0, IpAddr::V4(pod.ipv4), 24, true)?;
    add_addr(&pod.netns, ETH0, IpAddr::V6(pod.ipv6), 64, true)?;
    ip_in(&pod.netns, &["link", "set", ETH0, "up"])?;
    default_route(&pod.netns, IpAddr::V4(gw4))?;
    default_route(&pod.netns, IpAddr::V6(gw6))
}

fn add_addr(ns: &str, dev: &str, ip: IpAddr, prefix: u8, no_prefix_route: bool) -> Result<()> {
    let cidr = format!("{ip}/{prefix}");
    let mut args = vec![family(ip), "addr", "add", &cidr, "dev", dev];
    if ip.is_ipv6() {
        args.push("nodad");
    }
    if no_prefix_route {
        args.push("noprefixroute");
    }
    ip_in(ns, &args)
}

fn host_route(ns: &str, dev: &str, ip: IpAddr) -> Result<()> {
    let dst = ip.to_string();
    ip_in(ns, &[family(ip), "route", "add", &dst, "dev", dev])
}

fn default_route(ns: &str, gw: IpAddr) -> Result<()> {
    let gw_s = gw.to_string();
    ip_in(ns, &[family(gw), "route", "add", &gw_s, "dev", ETH0])?;
    ip_in(
        ns,
        &[
            family(gw),
            "route",
            "add",
            "default",
            "via",
            &gw_s,
            "dev",
            ETH0,
        ],
    )
}

fn family(ip: IpAddr) -> &'static str {
    if ip.is_ipv4() { "-4" } else { "-6" }
}
