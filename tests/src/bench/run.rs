//! Running one scenario against one target: pin the processes to the scenario's layout, read
//! the proxies' CPU time, run the client in the client pod, read the CPU time again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::env::Env;
use super::error::{Error, Result};
use super::load::{LoadArgs, LoadReport, Mode};
use super::{HTTP_PATH, Layout, Plan, Scenario, Service, Target, Via, WORKLOAD_CPU, procstat};
use crate::testbed::{Testbed, cmd};

/// Added to a run's own duration before it is declared hung.
const RUN_TIMEOUT_SLACK: Duration = Duration::from_secs(30);
/// Seconds iperf3 runs before it starts measuring, to leave TCP slow start out.
const IPERF_OMIT_SECS: u32 = 1;

/// One measurement: one scenario, one target, one round.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    pub scenario: Scenario,
    pub target: String,
    pub layout: Layout,
    pub round: u32,
    /// Position of this run within its round (0 = first), to check that order has no effect.
    pub order: u32,
    /// Named figures (see `report::FIGURES` for names and units).
    pub figures: BTreeMap<String, f64>,
    pub errors: u64,
    pub first_error: Option<String>,
    /// What the client printed, parsed: the load generator's report, or iperf3's summary.
    pub raw: serde_json::Value,
}

/// What a run needs besides the testbed.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The `weft-load` binary.
    pub load: PathBuf,
    /// CPUs of the machine; with one, both layouts use CPU 0.
    pub cpus: usize,
}

/// The processes that carry a target's traffic, whose CPU and memory are charged to it.
pub fn path_pids(tb: &Testbed, env: &Env, target: &Target) -> Result<Vec<u32>> {
    Ok(path_pids_by_node(tb, env, target)?.concat())
}

/// [`path_pids`], one group per node's proxy (the agent, or a peer instance with its workers).
pub fn path_pids_by_node(tb: &Testbed, env: &Env, target: &Target) -> Result<Vec<Vec<u32>>> {
    Ok(match target.via {
        Via::Direct => Vec::new(),
        // Both agents on the path: the client's and, across nodes, the server's (which
        // terminates the tunnel), as both proxies of a peer pair are charged.
        Via::Weft => {
            let mut nodes = vec![tb.pod(&target.client)?.node.clone()];
            let server_node = tb.pod(&target.server)?.node.clone();
            if !nodes.contains(&server_node) {
                nodes.push(server_node);
            }
            let mut groups = Vec::new();
            for node in &nodes {
                groups.extend(tb.node(node)?.agent.map(|a| vec![a.pid]));
            }
            groups
        }
        // One instance per node, its workers in its process tree.
        Via::Peer(peer) => env.peer_pids(peer).into_iter().map(|p| vec![p]).collect(),
    })
}

/// Pins every proxy process (every agent, every peer) to the layout's proxy CPU, and the
/// servers to the workload CPU (again: a restarted worker would not inherit a later mask).
pub fn apply_layout(tb: &Testbed, env: &Env, layout: Layout, cpus: usize) -> Result<()> {
    let proxy_cpu = if cpus > 1 { layout.proxy_cpu() } else { 0 };
    let proxies = tb
        .nodes()
        .iter()
        .filter_map(|n| n.agent.map(|a| a.pid))
        .chain(
            env.peers
                .iter()
                .flat_map(|(_, p)| p.iter().map(|b| b.process.pid)),
        );
    for pid in proxies {
        procstat::pin_tree(pid, proxy_cpu).map_err(|source| Error::Pin {
            pid,
            cpu: proxy_cpu,
            source,
        })?;
    }
    for server in &env.servers {
        let pid = server.process.pid;
        procstat::pin_tree(pid, WORKLOAD_CPU).map_err(|source| Error::Pin {
            pid,
            cpu: WORKLOAD_CPU,
            source,
        })?;
    }
    Ok(())
}

/// Runs `scenario` against `target` once.
pub fn run_one(
    tb: &Testbed,
    env: &Env,
    tools: &Tools,
    plan: &Plan,
    scenario: Scenario,
    target: &Target,
    (round, order): (u32, u32),
) -> Result<Sample> {
    let layout = plan.layout;
    apply_layout(tb, env, layout, tools.cpus)?;
    // The CPU figures' keys: per GiB for throughput, per request or connection otherwise. No
    // machine figure for latency: at its fixed low rate the machine's busy time is mostly the
    // idle testbed's background, not the requests.
    let (machine, total, user, busiest) = match scenario {
        Scenario::Throughput => (
            Some("machine_cpu_s_per_gib"),
            "proxy_cpu_s_per_gib",
            "proxy_user_s_per_gib",
            "proxy_node_max_s_per_gib",
        ),
        Scenario::Latency => (None, "proxy_cpu_us", "proxy_user_us", "proxy_node_max_us"),
        Scenario::Rps1 | Scenario::Rps50 | Scenario::Cps => (
            Some("machine_cpu_us"),
            "proxy_cpu_us",
            "proxy_user_us",
            "proxy_node_max_us",
        ),
    };
    let groups = path_pids_by_node(tb, env, target)?;
    let cpu_before: Vec<_> = groups.iter().map(|g| procstat::cpu_times_of(g)).collect();
    let busy_before = machine.and_then(|_| procstat::machine_busy());
    let mut figures = BTreeMap::new();
    let (raw, errors, first_error, work) = match scenario {
        Scenario::Throughput => {
            let run = iperf(tb, plan, target)?;
            figures.insert("gbit_s".to_owned(), run.gbit);
            figures.insert("retransmits".to_owned(), run.retransmits);
            // Work for the CPU figure: gibibytes moved.
            let gib = run.bytes_moved / f64::from(1u32 << 30);
            (run.summary, 0, None, gib)
        }
        _ => {
            let report = load(tb, tools, plan, scenario, target)?;
            let l = report.latency_us;
            figures.insert("rps".to_owned(), report.rps);
            for (name, v) in [("p50_us", l.p50), ("p90_us", l.p90), ("p99_us", l.p99)] {
                figures.insert(name.to_owned(), v);
            }
            figures.insert("p999_us".to_owned(), l.p999);
            figures.insert("max_us".to_owned(), l.max);
            let raw = serde_json::to_value(&report).unwrap_or_default();
            // Work for the CPU figures: requests (or connections), so that seconds per
            // request times a million is microseconds per request. The CPU time is read
            // around the whole run, warm-up included, so the warm-up's requests count too.
            let work = (report.requests + report.warmup_requests) as f64 / 1e6;
            (raw, report.errors, report.first_error, work)
        }
    };
    if work > 0.0 {
        if let Some((key, before)) = machine.zip(busy_before)
            && let Some(after) = procstat::machine_busy()
        {
            figures.insert(key.to_owned(), (after - before) / work);
        }
        if !groups.is_empty() {
            let per_node: Vec<_> = groups
                .iter()
                .zip(cpu_before)
                .map(|(g, before)| procstat::cpu_times_of(g) - before)
                .collect();
            let sum = per_node
                .iter()
                .fold(procstat::CpuTimes::default(), |a, b| a + *b);
            figures.insert(total.to_owned(), sum.total() / work);
            figures.insert(user.to_owned(), sum.user / work);
            // The busier node's proxy alone: what one node proxy spends per unit, the figure
            // to set beside a single node proxy's (one ztunnel's) CPU.
            let max = per_node.iter().map(|t| t.total()).fold(0.0, f64::max);
            figures.insert(busiest.to_owned(), max / work);
        }
    }
    Ok(Sample {
        scenario,
        target: target.id.clone(),
        layout,
        round,
        order,
        figures,
        errors,
        first_error,
        raw,
    })
}

/// `taskset -c <workload cpu> <argv>` in the target's client pod, with a deadline; stdout.
fn client(tb: &Testbed, target: &Target, argv: &[String], secs: f64) -> Result<String> {
    let mut command = tb.pod_command(&target.client, "taskset")?;
    command.args(["-c", &WORKLOAD_CPU.to_string()]).args(argv);
    let timeout = Duration::from_secs_f64(secs) + RUN_TIMEOUT_SLACK;
    let out = cmd::output_with_timeout(&mut command, timeout)?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(Error::Tool {
            what: format!("`{}` in {}", argv.join(" "), target.client),
            detail: format!(
                "{}: {}{}",
                cmd::describe_status(out.status),
                String::from_utf8_lossy(&out.stderr).trim(),
                stdout.trim()
            ),
        });
    }
    Ok(stdout)
}

/// What one iperf3 run reports.
struct IperfRun {
    summary: serde_json::Value,
    /// Received over the measured interval.
    gbit: f64,
    retransmits: f64,
    /// Bytes sent over the whole run, the omitted first seconds included: the proxies' CPU
    /// time covers them too.
    bytes_moved: f64,
}

/// One iperf3 stream for the plan's duration.
fn iperf(tb: &Testbed, plan: &Plan, target: &Target) -> Result<IperfRun> {
    let addr = target.addr(Service::Iperf);
    let secs = plan.duration_secs.ceil().max(1.0);
    let argv: Vec<String> = [
        "iperf3",
        "-c",
        &addr.ip().to_string(),
        "-p",
        &addr.port().to_string(),
        "-t",
        &format!("{secs}"),
        // Leaves TCP slow start out of the figure.
        "-O",
        &IPERF_OMIT_SECS.to_string(),
        "-J",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let text = client(tb, target, &argv, secs + f64::from(IPERF_OMIT_SECS))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|source| Error::Output {
        what: "iperf3".to_owned(),
        text: text.chars().take(500).collect(),
        source,
    })?;
    let end = &json["end"];
    let bps = end["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or(0.0);
    let retransmits = end["sum_sent"]["retransmits"].as_f64().unwrap_or(0.0);
    // Every interval, omitted ones included (iperf3 marks them `omitted` but lists them).
    let bytes_moved = json["intervals"]
        .as_array()
        .map(|intervals| {
            intervals
                .iter()
                .filter_map(|i| i["sum"]["bytes"].as_f64())
                .sum()
        })
        .unwrap_or(0.0);
    let summary = serde_json::json!({
        "sum_sent": end["sum_sent"],
        "sum_received": end["sum_received"],
        "cpu_utilization_percent": end["cpu_utilization_percent"],
    });
    Ok(IperfRun {
        summary,
        gbit: bps / 1e9,
        retransmits,
        bytes_moved,
    })
}

/// The load generator for an HTTP scenario.
fn load(
    tb: &Testbed,
    tools: &Tools,
    plan: &Plan,
    scenario: Scenario,
    target: &Target,
) -> Result<LoadReport> {
    let (mode, connections, rate, close) = match scenario {
        Scenario::Rps1 => (Mode::Closed, 1, None, false),
        Scenario::Rps50 => (Mode::Closed, 50, None, false),
        Scenario::Cps => (Mode::Closed, plan.cps_connections, None, true),
        Scenario::Latency | Scenario::Throughput => (
            Mode::Open,
            plan.latency_connections,
            Some(plan.latency_rate),
            false,
        ),
    };
    let args = LoadArgs {
        mode,
        addr: target.addr(Service::Http),
        path: HTTP_PATH.to_owned(),
        connections,
        duration: Duration::from_secs_f64(plan.duration_secs),
        warmup: Duration::from_secs_f64(plan.warmup_secs),
        rate,
        close,
        headers: Vec::new(),
    };
    let mut argv = vec![tools.load.display().to_string()];
    argv.extend(args.to_args());
    let text = client(tb, target, &argv, plan.duration_secs + plan.warmup_secs)?;
    serde_json::from_str(&text).map_err(|source| Error::Output {
        what: "weft-load".to_owned(),
        text: text.chars().take(500).collect(),
        source,
    })
}
