//! Privileged: the service programs translate a VIP to an endpoint at connect time for every
//! process below the service cgroup, give the VIP back to getpeername, refuse an undeclared
//! port or a VIP without endpoints with EPERM at once, and leave other destinations alone.
//!
//! A cgroup of its own (`<cgroup2>/weft-e2e-bpf-unit-<pid>`), the maps filled by the agent's
//! own sync, and a `python3` client placed in the cgroup; the endpoint is a listener of this
//! test on loopback. Needs root (cgroups, BPF); without it the test fails, it never skips.

#![expect(
    clippy::unwrap_used,
    reason = "test helpers outside #[test] functions; a failure is a test failure"
)]

use std::{
    collections::BTreeMap,
    fs::OpenOptions,
    io::Write as _,
    net::{Ipv6Addr, SocketAddr, TcpListener},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::Command,
    sync::Arc,
};

use weft_agent::{capture::Capture, services_kernel};
use weft_ebpf_common::Verdict;
use weft_mesh::{
    service::{Service, ServiceIndex, ServicePort, TargetPort, TrafficDistribution},
    workload::{Workload, WorkloadStore, WorkloadUid},
};

/// A cgroup removed on drop (after its processes have exited).
struct Cgroup(PathBuf);

impl Cgroup {
    fn new(name: &str) -> Self {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let mount = mountinfo
            .lines()
            .find_map(|l| {
                let (left, right) = l.split_once(" - ")?;
                (right.split_whitespace().next()? == "cgroup2")
                    .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
            })
            .expect("no cgroup2 mount");
        let dir = mount.join(format!("{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Cgroup(dir)
    }

    /// Runs `python3 -c script` inside this cgroup; its stdout.
    fn python(&self, script: &str) -> String {
        let mut procs = OpenOptions::new()
            .write(true)
            .open(self.0.join("cgroup.procs"))
            .unwrap();
        let mut command = Command::new("python3");
        command.args(["-c", script]);
        // SAFETY: only a write(2) on an already open file between fork and exec.
        unsafe {
            command.pre_exec(move || procs.write_all(b"0"));
        }
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "python3 failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn service(name: &str, vips: &[&str], ports: &[u16], target: u16, members: &[&str]) -> Service {
    Service {
        name: name.into(),
        namespace: "default".into(),
        vips: vips.iter().map(|v| v.parse().unwrap()).collect(),
        ports: ports
            .iter()
            .map(|p| ServicePort {
                port: *p,
                target: TargetPort::Number(target),
            })
            .collect(),
        endpoints: members.iter().map(|m| WorkloadUid((*m).into())).collect(),
        traffic_distribution: TrafficDistribution::Any,
    }
}

const CLIENT: &str = r#"
import socket, sys
def dial(family, addr):
    s = socket.socket(family, socket.SOCK_STREAM)
    s.settimeout(3)
    try:
        s.connect(addr)
        peer = s.getpeername()
        print("ok", peer[0], peer[1])
    except OSError as e:
        print("err", e.errno)
    finally:
        s.close()
dial(socket.AF_INET, ("10.96.0.10", 80))
dial(socket.AF_INET6, ("fd00:96::10", 80))
dial(socket.AF_INET6, ("::ffff:10.96.0.10", 80))
dial(socket.AF_INET, ("10.96.0.10", 81))
dial(socket.AF_INET, ("10.96.0.11", 80))
dial(socket.AF_INET, ("127.0.0.1", int(sys.argv[1])))
"#;

#[test]
fn vips_are_translated_at_connect_and_shown_to_getpeername() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root (cgroups and BPF)"
    );
    // The endpoint: one dual-stack listener, reached as 127.0.0.1 and ::1.
    let listener = TcpListener::bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0)).unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || for _ in listener.incoming() {});

    let (capture, _logger) = Capture::load(0).expect("loading the programs");
    let cgroup = Cgroup::new("weft-e2e-bpf-unit");
    let (mut maps, links) = services_kernel::attach(&capture, &cgroup.0).expect("attaching");

    let endpoint = Workload {
        uid: WorkloadUid("ep".into()),
        name: "ep".into(),
        namespace: "default".into(),
        node: "node-1".into(),
        ips: vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
        ..Workload::default()
    };
    let store = WorkloadStore::new(vec![endpoint]);
    let index = ServiceIndex::from_arcs([
        Arc::new(service(
            "web",
            &["10.96.0.10", "fd00:96::10"],
            &[80],
            port,
            &["ep"],
        )),
        Arc::new(service("empty", &["10.96.0.11"], &[80], port, &[])),
    ]);
    let want = services_kernel::desired(&index, &store, "node-1");
    let report = maps.sync(&want);
    assert_eq!(report.errors, 0, "{report:?}");

    let before = counts(&capture);
    let out = cgroup.python(&CLIENT.replace("sys.argv[1]", &port.to_string()));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "ok 10.96.0.10 80",
            "ok fd00:96::10 80",
            "ok ::ffff:10.96.0.10 80",
            "err 1",
            "err 1",
            &format!("ok 127.0.0.1 {port}"),
        ],
        "translated, getpeername shows the VIP; undeclared port and no endpoint: EPERM"
    );
    let after = counts(&capture);
    let delta = |v: Verdict| after[&v.name()] - before[&v.name()];
    assert_eq!(delta(Verdict::ServiceTranslated), 3);
    assert_eq!(delta(Verdict::ServiceRefusedPort), 1);
    assert_eq!(delta(Verdict::ServiceRefusedNoBackend), 1);
    assert_eq!(delta(Verdict::ServicePassLoopback), 1);
    assert!(delta(Verdict::ServicePeerRestored) >= 3);
    // The client has closed its sockets: their VIP records went with them (sock_release).
    assert_eq!(
        services_kernel::peer_records(&capture).unwrap(),
        0,
        "SERVICE_PEERS keeps records of closed sockets"
    );

    // Detached: the VIP is an ordinary address again (nothing routes it; not EPERM).
    drop(links);
    let out = cgroup.python(
        "import socket\ns=socket.socket()\ns.settimeout(0.5)\ntry:\n    \
         s.connect(('10.96.0.11', 80))\nexcept OSError as e:\n    print(e.errno)\n",
    );
    assert_ne!(out.trim(), "1", "still refused after detaching");
}

fn counts(capture: &Capture) -> BTreeMap<&'static str, u64> {
    capture
        .verdict_counts()
        .into_iter()
        .map(|(v, n)| (v.name(), n))
        .collect()
}
