//! The "gateway" scenario of `cargo xtask bench`: requests per second and latency at 64
//! keep-alive connections through the edge gateway (an HTTPRoute, API-key auth and a plan
//! limit that is never hit) against Debian's nginx as a reverse proxy with the same route
//! (no auth), in the same run, on the same CPU layout, both with one worker, to the same
//! backend.
//!
//! ```text
//!  pod-1a (weft-load, un-enrolled) ──> 10.77.0.2:8080 weft-gateway ──┐
//!                                  └─> 10.77.0.2:9080 nginx ─────────┴─> pod-1b:8080 nginx /1k
//! ```
//!
//! Both proxies run in the gateway's namespace, pinned to the layout's proxy CPU; the
//! client pod and the backend pod are not enrolled, so no agent is on either path and the
//! figures compare the two proxies alone. The gateway reaches the backend as a plain HTTP
//! `Backend` (outside the mesh), as nginx does.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::env::{nginx_argv, server_conf, temp_paths, write_file};
use super::error::{Error, Result};
use super::load::{LoadArgs, LoadReport, Mode};
use super::{HTTP_PATH, Layout, Plan, WORKLOAD_CPU, procstat};
use crate::testbed::gateway::{GatewayConfig, api_key_sha256};
use crate::testbed::{AgentConfig, Background, Config, Testbed, cmd, state};

/// The scenario's testbed: its own name, beside "weft-bench".
pub const TESTBED_NAME: &str = "weft-bench-gw";
/// The client pod and the backend pod, both un-enrolled.
pub const CLIENT_POD: &str = "pod-1a";
pub const BACKEND_POD: &str = "pod-1b";
pub const BACKEND_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 1, 12);
/// The backend nginx's port.
pub const BACKEND_PORT: u16 = 8080;
/// Where the gateway's listener and nginx listen (the gateway's fabric address).
pub const GATEWAY_PORT: u16 = 8080;
pub const NGINX_PORT: u16 = 9080;
/// Keep-alive connections of the load generator.
pub const CONNECTIONS: u32 = 64;
/// The consumer's key, sent by the load generator to the gateway.
pub const API_KEY: &str = "bench-key";
/// The plan's limit: far above what one CPU can serve, so it is checked and never hit.
pub const PLAN_PER_SECOND: u32 = 10_000_000;
/// How long a proxy gets to start listening and the gateway to take its configuration.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Added to a run's own duration before it is declared hung.
const RUN_TIMEOUT_SLACK: Duration = Duration::from_secs(30);
/// The gateway's flags: one worker thread, as nginx has one worker process.
pub const GATEWAY_ARGS: [&str; 2] = ["--worker-threads", "1"];

/// The two proxies compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proxy {
    Gateway,
    Nginx,
}

impl Proxy {
    pub const ALL: [Proxy; 2] = [Proxy::Gateway, Proxy::Nginx];

    pub fn id(self) -> &'static str {
        match self {
            Proxy::Gateway => "weft-gateway",
            Proxy::Nginx => "nginx",
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Proxy::Gateway => "weft-gateway (HTTPRoute + API key + plan limit)",
            Proxy::Nginx => "nginx reverse proxy (same route, no auth)",
        }
    }

    fn port(self) -> u16 {
        match self {
            Proxy::Gateway => GATEWAY_PORT,
            Proxy::Nginx => NGINX_PORT,
        }
    }
}

/// The testbed configuration: one node, two un-enrolled pods, the gateway with one worker.
pub fn config(agent: AgentConfig, gateway_bin: Option<PathBuf>) -> Config {
    let mut gateway = GatewayConfig::from_env().args(&GATEWAY_ARGS);
    if gateway_bin.is_some() {
        gateway.bin = gateway_bin;
    }
    // The default filter: one access-log line per request on stdout, as deployed.
    gateway.rust_log = "info".to_owned();
    Config::named(TESTBED_NAME)
        .size(1, 2)
        .agent(agent)
        .unenrolled(&[CLIENT_POD, BACKEND_POD])
        .gateway(gateway)
}

/// The gateway's documents: the `edge` Gateway, a plain HTTP Backend (the backend pod), an
/// HTTPRoute for [`HTTP_PATH`] to it, an ApiPolicy asking for an API key from a consumer on
/// plan `bench`, and that consumer and plan.
pub fn documents() -> Result<String> {
    let ns = crate::edge::NAMESPACE;
    let hash = api_key_sha256(API_KEY)?;
    Ok(format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {{name: edge, \
         namespace: {ns}}}\nspec:\n  gatewayClassName: weft\n  listeners:\n  \
         - {{name: http, port: {GATEWAY_PORT}, protocol: HTTP}}\n---\n\
         apiVersion: weft.dev/v1alpha1\nkind: Backend\nmetadata: {{name: origin, namespace: {ns}}}\n\
         spec: {{url: \"http://{BACKEND_IP}:{BACKEND_PORT}\"}}\n---\n\
         apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: bench, \
         namespace: {ns}}}\nspec:\n  parentRefs: [{{name: edge}}]\n  rules:\n  \
         - matches: [{{path: {{type: PathPrefix, value: {HTTP_PATH}}}}}]\n    \
         backendRefs: [{{group: weft.dev, kind: Backend, name: origin}}]\n---\n{}---\n{}---\n{}",
        crate::edge::api_key_policy_doc("bench-api", "bench", "bench"),
        crate::edge::plan_doc("bench", PLAN_PER_SECOND),
        format_args!(
            "apiVersion: weft.dev/v1alpha1\nkind: Consumer\nmetadata: {{name: bench, namespace: \
             {ns}}}\nspec: {{apiKeySha256: [\"{hash}\"], plan: bench}}\n"
        ),
    ))
}

/// nginx as a reverse proxy with the same route: one worker, keep-alive to the backend,
/// an access log as the gateway has one.
pub fn nginx_conf(dir: &Path) -> String {
    let d = dir.display();
    format!(
        "# The gateway benchmark's reverse proxy, written by `cargo xtask bench`.\n\
         daemon off;\nworker_processes 1;\nuser root;\npid {d}/nginx-rp.pid;\n\
         error_log {d}/nginx-rp.error.log warn;\n\
         events {{ worker_connections 8192; }}\n\
         http {{\n  access_log {d}/nginx-rp.access.log;\n  tcp_nodelay on;\n\
         \x20 keepalive_requests 1000000000;\n  keepalive_timeout 600s;\n{temp}\
         \x20 upstream origin {{\n    server {BACKEND_IP}:{BACKEND_PORT};\n    keepalive 128;\n    \
         keepalive_requests 1000000000;\n  }}\n\
         \x20 server {{\n    listen {gw}:{NGINX_PORT} backlog=8192;\n    \
         location {HTTP_PATH} {{\n      proxy_pass http://origin;\n      \
         proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n    }}\n    \
         location / {{ return 404; }}\n  }}\n}}\n",
        temp = temp_paths(&format!("{d}/tmp/nginx-rp")),
        gw = crate::testbed::gateway::GATEWAY_IPV4,
    )
}

/// What was started for the scenario.
#[derive(Debug)]
pub struct GatewayEnv {
    pub backend: Background,
    pub nginx: Background,
}

/// Starts the backend and nginx, publishes the route through the gateway and waits until
/// both proxies answer 200 on it.
pub fn prepare(tb: &Testbed, out: &Path) -> Result<GatewayEnv> {
    let www = out.join("www");
    std::fs::create_dir_all(&www).map_err(Error::io("creating", &www))?;
    let object = www.join(HTTP_PATH.trim_start_matches('/'));
    std::fs::write(&object, [b'w'; 1024]).map_err(Error::io("writing", &object))?;
    let dir = out.join("gateway");
    std::fs::create_dir_all(dir.join("tmp")).map_err(Error::io("creating", &dir))?;
    let conf = write_file(
        &dir,
        &format!("nginx-{BACKEND_POD}.conf"),
        &server_conf(&dir, &www, BACKEND_POD),
    )?;
    let cpu = WORKLOAD_CPU.to_string();
    let mut argv = vec!["taskset".to_owned(), "-c".to_owned(), cpu];
    argv.extend(nginx_argv(&conf, &dir));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let backend = tb.spawn(BACKEND_POD, &argv)?;
    tb.wait_for_tcp(
        BACKEND_POD,
        SocketAddr::from((BACKEND_IP, BACKEND_PORT)),
        START_TIMEOUT,
    )?;

    let rp = write_file(&dir, "nginx-rp.conf", &nginx_conf(&dir))?;
    let argv = nginx_argv(&rp, &dir);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let nginx = tb.spawn_gateway_side(&argv)?;

    tb.apply_yaml("bench-gateway.yaml", &documents()?)?;
    for proxy in Proxy::ALL {
        wait_answering(tb, proxy)?;
    }
    Ok(GatewayEnv { backend, nginx })
}

/// One request through `proxy` from the client pod, until it answers 200.
fn wait_answering(tb: &Testbed, proxy: Proxy) -> Result<()> {
    let url = format!(
        "http://{}:{}{HTTP_PATH}",
        crate::testbed::gateway::GATEWAY_IPV4,
        proxy.port()
    );
    let key = format!("x-api-key: {API_KEY}");
    let deadline = Instant::now() + START_TIMEOUT;
    let mut last = String::new();
    while Instant::now() < deadline {
        let out = tb.exec(
            CLIENT_POD,
            &[
                "curl",
                "-s",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
                "--max-time",
                "5",
                "-H",
                &key,
                &url,
            ],
        )?;
        last = String::from_utf8_lossy(&out.stdout).into_owned();
        if last == "200" {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let log = tb
        .gateway_log()
        .map(|l| state::tail(&l, 15))
        .unwrap_or_default();
    Err(Error::Tool {
        what: format!("{} at {url}", proxy.id()),
        detail: format!(
            "no 200 within {} s (last status {last:?}); gateway log tail:\n{log}",
            START_TIMEOUT.as_secs()
        ),
    })
}

/// One measurement of one proxy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewaySample {
    pub proxy: Proxy,
    pub round: u32,
    /// rps, p50_us, p90_us, p99_us, p999_us, proxy_cpu_us (per request), rss_mib.
    pub figures: BTreeMap<String, f64>,
    pub errors: u64,
    pub first_error: Option<String>,
}

/// The proxy's process (with its workers).
fn proxy_pid(tb: &Testbed, env: &GatewayEnv, proxy: Proxy) -> Result<u32> {
    match proxy {
        Proxy::Gateway => tb
            .gateway()?
            .process
            .map(|p| p.pid)
            .ok_or_else(|| Error::Tool {
                what: "the gateway".to_owned(),
                detail: "it is not running".to_owned(),
            }),
        Proxy::Nginx => Ok(env.nginx.process.pid),
    }
}

/// Pins both proxies to the layout's proxy CPU and the backend to the workload CPU.
pub fn apply_layout(tb: &Testbed, env: &GatewayEnv, layout: Layout, cpus: usize) -> Result<()> {
    let proxy_cpu = if cpus > 1 { layout.proxy_cpu() } else { 0 };
    for proxy in Proxy::ALL {
        let pid = proxy_pid(tb, env, proxy)?;
        procstat::pin_tree(pid, proxy_cpu).map_err(|source| Error::Pin {
            pid,
            cpu: proxy_cpu,
            source,
        })?;
    }
    let pid = env.backend.process.pid;
    procstat::pin_tree(pid, WORKLOAD_CPU).map_err(|source| Error::Pin {
        pid,
        cpu: WORKLOAD_CPU,
        source,
    })
}

/// Runs the load generator once through `proxy`, with the proxy's CPU time read around it.
pub fn run_one(
    tb: &Testbed,
    env: &GatewayEnv,
    load: &Path,
    plan: &Plan,
    cpus: usize,
    proxy: Proxy,
    round: u32,
) -> Result<GatewaySample> {
    apply_layout(tb, env, plan.layout, cpus)?;
    let pid = proxy_pid(tb, env, proxy)?;
    let args = LoadArgs {
        mode: Mode::Closed,
        addr: SocketAddr::from((crate::testbed::gateway::GATEWAY_IPV4, proxy.port())),
        path: HTTP_PATH.to_owned(),
        connections: CONNECTIONS,
        duration: Duration::from_secs_f64(plan.duration_secs),
        warmup: Duration::from_secs_f64(plan.warmup_secs),
        rate: None,
        close: false,
        // nginx gets the key too: it ignores it, and both parse the same request.
        headers: vec![format!("x-api-key: {API_KEY}")],
    };
    let before = procstat::cpu_times_of(&[pid]);
    let mut command = tb.pod_command(CLIENT_POD, "taskset")?;
    command
        .args(["-c", &WORKLOAD_CPU.to_string()])
        .arg(load)
        .args(args.to_args());
    let timeout =
        Duration::from_secs_f64(plan.duration_secs + plan.warmup_secs) + RUN_TIMEOUT_SLACK;
    let out = cmd::output_with_timeout(&mut command, timeout)?;
    let after = procstat::cpu_times_of(&[pid]);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(Error::Tool {
            what: format!("weft-load through {}", proxy.id()),
            detail: format!(
                "{}: {}{}",
                cmd::describe_status(out.status),
                String::from_utf8_lossy(&out.stderr).trim(),
                text.trim()
            ),
        });
    }
    let report: LoadReport = serde_json::from_str(&text).map_err(|source| Error::Output {
        what: "weft-load".to_owned(),
        text: text.chars().take(500).collect(),
        source,
    })?;
    let l = report.latency_us;
    let mut figures = BTreeMap::new();
    figures.insert("rps".to_owned(), report.rps);
    figures.insert("p50_us".to_owned(), l.p50);
    figures.insert("p90_us".to_owned(), l.p90);
    figures.insert("p99_us".to_owned(), l.p99);
    figures.insert("p999_us".to_owned(), l.p999);
    let work = (report.requests + report.warmup_requests) as f64;
    if work > 0.0 {
        figures.insert(
            "proxy_cpu_us".to_owned(),
            (after - before).total() / work * 1e6,
        );
    }
    let (rss, _) = procstat::memory_mib_of(&[pid]);
    figures.insert("rss_mib".to_owned(), rss);
    Ok(GatewaySample {
        proxy,
        round,
        figures,
        errors: report.errors,
        first_error: report.first_error,
    })
}

/// Every sample of a run, and the summary.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GatewayResults {
    pub plan: Plan,
    pub samples: Vec<GatewaySample>,
    /// Resident memory before any traffic, MiB.
    pub idle_rss_mib: BTreeMap<String, f64>,
}

impl GatewayResults {
    /// The median of `figure` over `proxy`'s rounds.
    pub fn median(&self, proxy: Proxy, figure: &str) -> Option<f64> {
        let mut v: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| s.proxy == proxy)
            .filter_map(|s| s.figures.get(figure).copied())
            .collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    }

    /// What is missing or wrong: no sample, or errors in one.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for proxy in Proxy::ALL {
            if !self.samples.iter().any(|s| s.proxy == proxy) {
                problems.push(format!("no sample for {}", proxy.id()));
            }
        }
        for s in self.samples.iter().filter(|s| s.errors > 0) {
            problems.push(format!(
                "{} round {}: {} errors (first: {})",
                s.proxy.id(),
                s.round + 1,
                s.errors,
                s.first_error.as_deref().unwrap_or("?")
            ));
        }
        problems
    }

    /// The report: one row per proxy and the gateway-to-nginx ratios.
    pub fn markdown(&self) -> String {
        let fig = |p: Proxy, f: &str| self.median(p, f);
        let show = |v: Option<f64>, digits: usize| {
            v.map_or_else(|| "-".to_owned(), |v| format!("{v:.digits$}"))
        };
        let mut md = format!(
            "## Gateway: {CONNECTIONS} keep-alive connections, 1 KiB responses\n\n\
             weft-gateway (HTTPRoute, API-key auth, a plan limit that is never hit, access log) \
             against nginx as a reverse proxy with the same route (no auth, access log), both \
             with one worker, same backend (nginx in {BACKEND_POD}), same run, {}; {} round(s) \
             of {} s; medians.\n\n\
             | proxy | req/s | p50 µs | p99 µs | p99.9 µs | CPU µs/request | RSS MiB (idle) | RSS MiB (after) |\n\
             |---|---:|---:|---:|---:|---:|---:|---:|\n",
            self.plan.layout.describe(),
            self.plan.rounds,
            self.plan.duration_secs
        );
        for proxy in Proxy::ALL {
            md.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} | {} | {} |\n",
                proxy.label(),
                show(fig(proxy, "rps"), 0),
                show(fig(proxy, "p50_us"), 0),
                show(fig(proxy, "p99_us"), 0),
                show(fig(proxy, "p999_us"), 0),
                show(fig(proxy, "proxy_cpu_us"), 1),
                show(self.idle_rss_mib.get(proxy.id()).copied(), 1),
                show(fig(proxy, "rss_mib"), 1),
            ));
        }
        let ratio = |f: &str| match (fig(Proxy::Gateway, f), fig(Proxy::Nginx, f)) {
            (Some(g), Some(n)) if n > 0.0 => format!("{:.2}", g / n),
            _ => "-".to_owned(),
        };
        let rss_ratio = match (
            self.idle_rss_mib.get(Proxy::Gateway.id()),
            self.idle_rss_mib.get(Proxy::Nginx.id()),
        ) {
            (Some(g), Some(n)) if *n > 0.0 => format!("{:.2}", g / n),
            _ => "-".to_owned(),
        };
        md.push_str(&format!(
            "\nweft-gateway / nginx: req/s {}, p50 {}, p99 {}, CPU per request {}, idle RSS {}, \
             RSS after {}. Target: req/s ratio >= 1 and p99 ratio < 1.\n",
            ratio("rps"),
            ratio("p50_us"),
            ratio("p99_us"),
            ratio("proxy_cpu_us"),
            rss_ratio,
            ratio("rss_mib"),
        ));
        md
    }
}

/// Resident memory of both proxies now, MiB, by proxy id.
pub fn idle_rss(tb: &Testbed, env: &GatewayEnv) -> Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for proxy in Proxy::ALL {
        let pid = proxy_pid(tb, env, proxy)?;
        out.insert(proxy.id().to_owned(), procstat::memory_mib_of(&[pid]).0);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nginx_has_one_worker_and_the_same_route() {
        let conf = nginx_conf(Path::new("/tmp/x"));
        assert!(conf.contains("worker_processes 1;"));
        assert!(conf.contains("location /1k {"));
        assert!(conf.contains("listen 10.77.0.2:9080"));
        assert!(conf.contains("server 10.78.1.12:8080;"));
    }

    #[test]
    fn ratios_in_the_report() {
        let sample = |proxy, rps, p99| GatewaySample {
            proxy,
            round: 0,
            figures: BTreeMap::from([("rps".to_owned(), rps), ("p99_us".to_owned(), p99)]),
            errors: 0,
            first_error: None,
        };
        let r = GatewayResults {
            plan: Plan::quick(1),
            samples: vec![
                sample(Proxy::Gateway, 2000.0, 900.0),
                sample(Proxy::Nginx, 1000.0, 1800.0),
            ],
            idle_rss_mib: BTreeMap::new(),
        };
        let md = r.markdown();
        assert!(md.contains("req/s 2.00, p50 -, p99 0.50"), "{md}");
        assert!(r.problems().is_empty());
    }
}
