//! Names in the testbed: a DNS resolver of the testbed's own (dnsmasq in a node's network
//! namespace, on the node's fabric address, with no upstream and no /etc/hosts, so the
//! machine's own resolver is never asked) and per-pod `resolv.conf` files.
//!
//! `ip netns exec <netns>` bind-mounts `/etc/netns/<netns>/resolv.conf` over `/etc/resolv.conf`
//! in a private mount namespace; [`Testbed::exec_resolving`] runs a command in a pod that way
//! (in the pod's cgroup, so its sockets are captured). `down` removes the files.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Output;

use super::cmd;
use super::error::{Error, Result};
use super::exec::Background;
use super::{Testbed, topology};

/// Where `ip netns exec` finds per-namespace `/etc` files.
pub const NETNS_ETC: &str = "/etc/netns";

/// The `/etc/netns` directory of namespace `netns`.
pub fn netns_etc(netns: &str) -> PathBuf {
    Path::new(NETNS_ETC).join(netns)
}

/// Removes the `/etc/netns` directories of testbed `name`'s namespaces.
pub fn remove_netns_etc(name: &str) -> Result<()> {
    let entries = match std::fs::read_dir(NETNS_ETC) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io("listing", NETNS_ETC)(e)),
    };
    for entry in entries.filter_map(|e| e.ok()) {
        let Ok(ns) = entry.file_name().into_string() else {
            continue;
        };
        if topology::owns_netns(name, &ns) {
            let dir = entry.path();
            std::fs::remove_dir_all(&dir).map_err(Error::io("removing", dir))?;
        }
    }
    Ok(())
}

impl Testbed {
    /// The address the resolver of [`Testbed::start_resolver`] on `node` answers on.
    pub fn resolver_addr(&self, node: &str) -> Result<SocketAddr> {
        Ok(SocketAddr::new(IpAddr::V4(self.node(node)?.ipv4), 53))
    }

    /// Starts dnsmasq in `node`'s namespace on the node's fabric address, port 53, answering
    /// `records` (a domain and everything under it -> an address) and refusing everything
    /// else. It runs in the node's cgroup: `down` kills it.
    pub fn start_resolver(&self, node: &str, records: &[(&str, IpAddr)]) -> Result<Background> {
        let addr = self.resolver_addr(node)?;
        let listen = format!("--listen-address={}", addr.ip());
        let addresses: Vec<String> = records
            .iter()
            .map(|(name, ip)| format!("--address=/{name}/{ip}"))
            .collect();
        let mut argv = vec![
            "dnsmasq",
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            &listen,
            "--port=53",
            // No pid file: two testbeds' resolvers would fight over /run/dnsmasq.pid.
            "--pid-file",
            "--user=root",
            "--log-queries",
            "--log-facility=-",
        ];
        argv.extend(addresses.iter().map(String::as_str));
        let resolver = self.spawn_node(node, &argv)?;
        // Up once it answers (dig from the node: not a pod, so not captured).
        let server = format!("@{}", addr.ip());
        for _ in 0..50 {
            let out = self.exec_node(
                node,
                &[
                    "dig",
                    "+time=1",
                    "+tries=1",
                    &server,
                    "version.bind",
                    "CH",
                    "TXT",
                ],
            )?;
            if out.status.success() {
                return Ok(resolver);
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        Err(Error::Timeout {
            what: format!("dnsmasq to answer on {addr} in {node}"),
            secs: 5,
        })
    }

    /// Writes `pod`'s resolv.conf (used by [`Testbed::exec_resolving`]).
    pub fn write_pod_resolv_conf(&self, pod: &str, text: &str) -> Result<()> {
        let dir = netns_etc(&self.pod(pod)?.netns);
        std::fs::create_dir_all(&dir).map_err(Error::io("creating", &dir))?;
        let path = dir.join("resolv.conf");
        std::fs::write(&path, text).map_err(Error::io("writing", path))
    }

    /// Runs `argv` in `pod` (its cgroup and namespace) with the pod's resolv.conf in place of
    /// the machine's, through `ip netns exec`; its output, whatever its exit status.
    pub fn exec_resolving(&self, pod: &str, argv: &[&str]) -> Result<Output> {
        let netns = self.pod(pod)?.netns.clone();
        let mut command = self.pod_command(pod, "ip")?;
        command.args(["netns", "exec", &netns]).args(argv);
        cmd::output(&mut command)
    }
}
