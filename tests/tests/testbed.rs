//! The testbed itself, without agents: every pod reaches every pod over IPv4 and IPv6,
//! commands run inside the right namespace and cgroup, and `down` leaves nothing behind,
//! also after a crash.

use std::path::Path;

use weft_tests::scenario;
use weft_tests::testbed::{self, AgentConfig, Config, Error, Testbed, TestbedGuard, netns, state};

fn require_root() {
    assert!(
        weft_tests::is_root(),
        "the testbed tests need root (namespaces, cgroups); run them with `cargo xtask test`"
    );
}

/// Nothing of testbed `name` is left: namespaces, cgroups, state.
fn assert_gone(name: &str, cgroup_root: &Path) {
    let left = testbed::leftover_netns(name).expect("listing namespaces");
    assert_eq!(left, Vec::<String>::new());
    assert!(!cgroup_root.exists(), "{} is left", cgroup_root.display());
    assert!(
        !state::state_dir(name).exists(),
        "state dir of {name} is left"
    );
}

#[test]
fn every_pod_reaches_every_pod() {
    require_root();
    let tb = TestbedGuard::up(&Config::named("weft-e2e-net")).unwrap();
    let _servers: Vec<_> = tb
        .pods()
        .iter()
        .map(|p| scenario::serve_http(&tb, &p.name).unwrap())
        .collect();
    let mut failures = Vec::new();
    for src in tb.pods() {
        for dst in tb.pods().iter().filter(|d| d.name != src.name) {
            for ip in dst.ips() {
                let ip_s = ip.to_string();
                let ping = tb
                    .exec(&src.name, &["ping", "-c", "1", "-W", "2", &ip_s])
                    .unwrap();
                if !ping.status.success() {
                    failures.push(format!("ping {} -> {} ({ip})", src.name, dst.name));
                }
                if let Err(e) = scenario::curl_whoami(&tb, &src.name, &dst.name, ip) {
                    failures.push(format!("curl {} -> {} ({ip}): {e}", src.name, dst.name));
                }
            }
        }
    }
    assert!(failures.is_empty(), "unreachable:\n{}", failures.join("\n"));
}

#[test]
fn exec_runs_in_the_pod_and_passes_the_exit_code_through() {
    require_root();
    let tb = TestbedGuard::up(&Config::named("weft-e2e-exec").size(1, 1)).unwrap();
    let out = tb.exec("pod-1a", &["sh", "-c", "exit 7"]).unwrap();
    assert_eq!(out.status.code(), Some(7));

    let cgroup = tb.exec_ok("pod-1a", &["cat", "/proc/self/cgroup"]).unwrap();
    let cgroup = String::from_utf8_lossy(&cgroup.stdout);
    assert!(
        cgroup
            .lines()
            .any(|l| l == "0::/weft-e2e-exec/pods/node-1/pod-1a"),
        "not in the pod's cgroup: {cgroup}"
    );

    let addrs = tb
        .exec_ok("pod-1a", &["ip", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    assert!(addrs.contains("10.78.1.11/24"), "{addrs}");
    assert!(addrs.contains("fd78:1::11/64"), "{addrs}");

    // A node process is in the node's netns and in no pod cgroup.
    let out = tb
        .exec_node("node-1", &["cat", "/proc/self/cgroup"])
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stdout).contains("/pods/"));
    let out = tb
        .exec_node("node-1", &["ip", "-o", "addr", "show", "dev", "eth0"])
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("10.77.0.11/24"));
}

#[test]
fn unknown_pod_lists_the_pods_that_exist() {
    require_root();
    let tb = TestbedGuard::up(&Config::named("weft-e2e-unknown")).unwrap();
    let err = tb.exec("nosuchpod", &["true"]).unwrap_err();
    assert!(matches!(err, Error::UnknownPod { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("nosuchpod"), "{msg}");
    assert!(msg.contains("pod-1a, pod-1b, pod-2a, pod-2b"), "{msg}");
    // The same from a process that only has the state file, as `cargo xtask testbed exec`.
    let loaded = Testbed::load("weft-e2e-unknown").unwrap();
    assert!(
        loaded
            .exec("nosuchpod", &["true"])
            .unwrap_err()
            .to_string()
            .contains("pod-2b")
    );
}

#[test]
fn down_is_idempotent_and_leaves_nothing() {
    require_root();
    let name = "weft-e2e-down";
    let tb = TestbedGuard::up(&Config::named(name)).unwrap();
    let root = tb.cgroup_root().to_owned();
    let sleeper = tb.spawn("pod-2b", &["sleep", "600"]).unwrap();
    assert!(sleeper.is_alive());
    assert_eq!(
        testbed::leftover_netns(name).unwrap().len(),
        7,
        "fabric + 2 nodes + 4 pods"
    );
    drop(tb);
    assert!(!sleeper.is_alive(), "down kills the pods' processes");
    assert_gone(name, &root);
    testbed::down(name).unwrap();
    assert_gone(name, &root);
}

#[test]
fn up_cleans_the_leftovers_of_a_crashed_run() {
    require_root();
    let name = "weft-e2e-crash";
    // A run that "crashed": no guard, so nothing takes it down.
    let crashed = Testbed::up(&Config::named(name).size(1, 2)).unwrap();
    let orphan = crashed.spawn("pod-1a", &["sleep", "600"]).unwrap();
    // ... and lost its state file, so only the names are left to go by.
    std::fs::remove_file(state::state_file(name)).unwrap();

    let tb = TestbedGuard::up(&Config::named(name).size(2, 1)).unwrap();
    assert!(!orphan.is_alive(), "the old run's processes were killed");
    let mut names = netns::list().unwrap();
    names.retain(|n| n.starts_with(name));
    assert_eq!(
        names,
        [
            "weft-e2e-crash-fabric",
            "weft-e2e-crash-node-1",
            "weft-e2e-crash-node-2",
            "weft-e2e-crash-pod-1a",
            "weft-e2e-crash-pod-2a"
        ]
    );
    scenario::serve_http(&tb, "pod-2a").unwrap();
    let ip = tb.pod("pod-2a").unwrap().ipv4.into();
    scenario::curl_whoami(&tb, "pod-1a", "pod-2a", ip).unwrap();
    let root = tb.cgroup_root().to_owned();
    drop(tb);
    assert_gone(name, &root);
}

#[test]
fn testbeds_coexist() {
    require_root();
    let a = TestbedGuard::up(&Config::named("weft-e2e-co-a").size(1, 1)).unwrap();
    let b = TestbedGuard::up(&Config::named("weft-e2e-co-b").size(1, 1)).unwrap();
    scenario::serve_http(&a, "pod-1a").unwrap();
    drop(b);
    assert_eq!(testbed::leftover_netns("weft-e2e-co-a").unwrap().len(), 3);
    let out = a
        .exec(
            "pod-1a",
            &["curl", "-sS", "http://127.0.0.1:8000/whoami.txt"],
        )
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "pod-1a");
}

#[test]
fn an_agent_that_dies_or_never_gets_ready_fails_up_and_leaves_nothing() {
    require_root();
    let dir = std::env::temp_dir().join(format!("weft-e2e-fake-agent-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let write_script = |name: &str, body: &str| {
        use std::os::unix::fs::PermissionsExt as _;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    };
    // The control plane is real: `up` starts it beside the agent before the agents.
    let control = AgentConfig::from_env().control_bin();
    let _ = std::fs::remove_file(dir.join("weft-control"));
    std::os::unix::fs::symlink(&control, dir.join("weft-control")).unwrap();
    let dies = write_script("dies", "echo 'cannot load eBPF: out of luck' >&2; exit 3");
    let hangs = write_script("hangs", "exec sleep 600");

    let name = "weft-e2e-badagent";
    let config = Config::named(name).size(1, 1);
    let err = Testbed::up(&config.clone().agent(AgentConfig::new(&dies))).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::AgentExited { .. }), "{msg}");
    assert!(
        msg.contains("out of luck") && msg.contains("agent.log"),
        "{msg}"
    );
    assert_eq!(testbed::leftover_netns(name).unwrap(), Vec::<String>::new());

    let mut slow = AgentConfig::new(&hangs);
    slow.ready_timeout = std::time::Duration::from_secs(2);
    let err = Testbed::up(&config.agent(slow)).unwrap_err();
    assert!(matches!(err, Error::AgentNotReady { .. }), "{err}");
    assert!(err.to_string().contains("15021"), "{err}");
    assert_eq!(testbed::leftover_netns(name).unwrap(), Vec::<String>::new());
    assert!(!state::state_dir(name).exists());
    std::fs::remove_dir_all(dir).unwrap();
}
