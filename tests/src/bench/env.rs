//! Everything a benchmark run starts inside its testbed before measuring: socket tuning in
//! every namespace, the servers (nginx and iperf3 in the server pods), certificates, and the
//! other proxies (haproxy, nginx) as mutual-TLS TCP tunnels between node-1 and node-2.
//!
//! Every process is started through the testbed (a pod's or a node's namespace and cgroup),
//! so the testbed guard kills it on the way out, also when a run fails half-way.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::error::{Error, Result};
use super::peers;
use super::{BENCH_VIP, HTTP_PATH, Peer, Service, WORKLOAD_CPU};
use crate::testbed::{Background, Testbed, netns, state};

/// How long a server or proxy gets to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// The pods that serve: cross-node and same-node destinations.
pub const SERVER_PODS: [&str; 4] = ["pod-2a", "pod-1b", "pod-2c", "pod-1d"];

/// Socket settings written in every namespace of the testbed, so that the connection-churn
/// scenario cannot starve the next one of ports or accept-queue space.
pub const SYSCTLS: &[(&str, &str)] = &[
    ("net.ipv4.tcp_tw_reuse", "1"),
    ("net.ipv4.ip_local_port_range", "1024 65535"),
    ("net.ipv4.tcp_fin_timeout", "10"),
    ("net.core.somaxconn", "8192"),
    ("net.ipv4.tcp_max_syn_backlog", "8192"),
];

/// Conntrack settings, written where the kernel has conntrack. The testbed installs no
/// netfilter rules, so conntrack should never register its hooks in these namespaces (it
/// does so per namespace, on demand, since Linux 4.10); if something does make it track
/// them, TIME_WAIT entries must not outlive the sockets' own by much.
pub const CONNTRACK_SYSCTLS: &[(&str, &str)] =
    &[("net.netfilter.nf_conntrack_tcp_timeout_time_wait", "10")];

/// What was started, for the runs and the report.
#[derive(Debug)]
pub struct Env {
    pub out: PathBuf,
    pub servers: Vec<Background>,
    /// Per peer: its client-side (node-1) and server-side (node-2) processes.
    pub peers: Vec<(Peer, Vec<Background>)>,
    /// Things that did not go as planned but do not stop the run (a sysctl that cannot be
    /// written); the report lists them.
    pub warnings: Vec<String>,
}

impl Env {
    /// The pids of `peer`'s processes (their children are found from them).
    pub fn peer_pids(&self, peer: Peer) -> Vec<u32> {
        self.peers
            .iter()
            .filter(|(p, _)| *p == peer)
            .flat_map(|(_, procs)| procs.iter().map(|b| b.process.pid))
            .collect()
    }
}

/// Prepares testbed `tb` for benchmarking, with configuration files in `out`.
pub fn prepare(tb: &Testbed, out: &Path) -> Result<Env> {
    let mut env = Env {
        out: out.to_owned(),
        servers: Vec::new(),
        peers: Vec::new(),
        warnings: Vec::new(),
    };
    tune(tb, &mut env.warnings);
    let www = out.join("www");
    std::fs::create_dir_all(&www).map_err(Error::io("creating", &www))?;
    let object = www.join(HTTP_PATH.trim_start_matches('/'));
    std::fs::write(&object, [b'w'; 1024]).map_err(Error::io("writing", &object))?;
    for pod in SERVER_PODS {
        let dir = out.join("servers");
        let tmp = dir.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(Error::io("creating", &tmp))?;
        let conf = write_file(
            &dir,
            &format!("nginx-{pod}.conf"),
            &server_conf(&dir, &www, pod),
        )?;
        let nginx = spawn_pod(tb, pod, &nginx_argv(&conf, &dir))?;
        let ip = server_ip(tb, pod)?;
        wait_listening(
            tb,
            &Where::Pod(pod),
            &nginx,
            (ip, Service::Http.port()).into(),
        )?;
        env.servers.push(nginx);
        let port = Service::Iperf.port().to_string();
        let iperf = spawn_pod(tb, pod, &["iperf3", "-s", "-p", &port])?;
        wait_listening(
            tb,
            &Where::Pod(pod),
            &iperf,
            (ip, Service::Iperf.port()).into(),
        )?;
        env.servers.push(iperf);
    }
    bench_service(tb)?;
    let tls = out.join("tls");
    peers::certificates(&tls)?;
    for peer in Peer::ALL {
        let procs = peers::start(tb, peer, &out.join("peers"), &tls)?;
        env.peers.push((peer, procs));
    }
    Ok(env)
}

/// The service `bench` in front of pod-2a ([`BENCH_VIP`], the HTTP and iperf ports), for the
/// VIP target; ready when pod-1a's agent sends the VIP to pod-2a.
fn bench_service(tb: &Testbed) -> Result<()> {
    let ns = tb.pod("pod-2a")?.namespace.clone();
    // More than one port: each needs a name.
    let ports: Vec<String> = Service::ALL
        .iter()
        .map(|s| {
            let name = match s {
                Service::Http => "http",
                Service::Iperf => "iperf",
            };
            format!(
                "  - {{name: {name}, port: {0}, targetPort: {0}}}\n",
                s.port()
            )
        })
        .collect();
    tb.apply_yaml(
        "bench-service.yaml",
        &format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: bench\n  namespace: {ns}\n\
             spec:\n  selector:\n    app: pod-2a\n  clusterIP: {BENCH_VIP}\n  ports:\n{}",
            ports.concat()
        ),
    )?;
    let url = format!("http://{BENCH_VIP}:{}{HTTP_PATH}", Service::Http.port());
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let out = tb.exec(
            "pod-1a",
            &["curl", "-s", "-o", "/dev/null", "--max-time", "2", &url],
        )?;
        if out.status.success() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Tool {
                what: format!("reaching the service VIP {url} from pod-1a"),
                detail: format!(
                    "no answer within {} s: {}",
                    START_TIMEOUT.as_secs(),
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn tune(tb: &Testbed, warnings: &mut Vec<String>) {
    let paths = tb
        .nodes()
        .iter()
        .map(|n| n.netns_path.clone())
        .chain(tb.pods().iter().map(|p| p.netns_path.clone()));
    for path in paths {
        let conntrack = CONNTRACK_SYSCTLS
            .iter()
            .filter(|(k, _)| Path::new("/proc/sys").join(k.replace('.', "/")).exists());
        for (key, value) in SYSCTLS.iter().chain(conntrack) {
            if let Err(e) = netns::sysctls(&path, &[(key, value)]) {
                warnings.push(format!("sysctl {key}={value} in {}: {e}", path.display()));
            }
        }
    }
}

fn server_ip(tb: &Testbed, pod: &str) -> Result<std::net::Ipv4Addr> {
    Ok(tb.pod(pod)?.ipv4)
}

pub(super) fn write_file(dir: &Path, name: &str, text: &str) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(Error::io("creating", dir))?;
    let path = dir.join(name);
    std::fs::write(&path, text).map_err(Error::io("writing", &path))?;
    Ok(path)
}

/// nginx serving the 1 KiB object from one pod: one worker, no access log, keep-alive
/// connections that last the whole run (nginx closes one every 1000 requests by default,
/// which would count as an error in the closed loop).
pub(super) fn server_conf(dir: &Path, www: &Path, pod: &str) -> String {
    let (dir, www) = (dir.display(), www.display());
    format!(
        "# The benchmark server in {pod}, written by `cargo xtask bench`.\n\
         daemon off;\nworker_processes 1;\nuser root;\npid {dir}/nginx-{pod}.pid;\n\
         error_log {dir}/nginx-{pod}.error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log off;\n  sendfile on;\n  tcp_nopush on;\n  tcp_nodelay on;\n\
         \x20 keepalive_requests 1000000000;\n  keepalive_timeout 600s;\n{temp}\
         \x20 server {{\n    listen {HTTP_PORT_ANY} backlog=8192;\n    root {www};\n  }}\n}}\n",
        temp = temp_paths(&format!("{dir}/tmp/nginx-{pod}")),
        HTTP_PORT_ANY = Service::Http.port(),
    )
}

/// nginx's temporary directories, moved out of /var/lib/nginx so that the benchmark never
/// shares files with a system nginx. nginx creates the last path component only.
pub(super) fn temp_paths(prefix: &str) -> String {
    ["client_body", "proxy", "fastcgi", "uwsgi", "scgi"]
        .iter()
        .map(|t| format!("  {t}_temp_path {prefix}-{t};\n"))
        .collect()
}

pub(super) fn nginx_argv(conf: &Path, prefix: &Path) -> Vec<String> {
    vec![
        "nginx".to_owned(),
        "-c".to_owned(),
        conf.display().to_string(),
        "-p".to_owned(),
        prefix.display().to_string(),
    ]
}

/// Starts `argv` in `pod`, pinned to the workload CPU from its first instruction.
fn spawn_pod<S: AsRef<str>>(tb: &Testbed, pod: &str, argv: &[S]) -> Result<Background> {
    let cpu = WORKLOAD_CPU.to_string();
    let mut full = vec!["taskset", "-c", &cpu];
    full.extend(argv.iter().map(AsRef::as_ref));
    Ok(tb.spawn(pod, &full)?)
}

pub(super) enum Where<'a> {
    Pod(&'a str),
    Node(&'a str),
}

/// Waits until `addr` accepts connections from inside the pod or node, failing early with
/// the process's log if it exits.
pub(super) fn wait_listening(
    tb: &Testbed,
    at: &Where,
    process: &Background,
    addr: SocketAddr,
) -> Result<()> {
    let path = match at {
        Where::Pod(p) => tb.pod(p)?.netns_path.clone(),
        Where::Node(n) => tb.node(n)?.netns_path.clone(),
    };
    let deadline = Instant::now() + START_TIMEOUT;
    let listening = netns::in_netns(&path, || {
        while Instant::now() < deadline && process.is_alive() {
            let attempt = Duration::from_millis(300);
            if std::net::TcpStream::connect_timeout(&addr, attempt).is_ok() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })?;
    if listening {
        return Ok(());
    }
    Err(Error::NotListening {
        what: format!("{} in {}", process_name(process), process.pod),
        addr,
        secs: START_TIMEOUT.as_secs(),
        log: process.log.clone(),
        tail: state::tail(&process.log, 15),
    })
}

fn process_name(b: &Background) -> String {
    b.log
        .file_stem()
        .map_or_else(String::new, |s| s.to_string_lossy().into_owned())
}
