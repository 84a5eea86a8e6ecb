//! `cargo xtask bench`: builds the release agent and the load generator, brings up the
//! "weft-bench" testbed, runs every scenario against every target in alternation, and writes
//! `report.md`, `results.json` and PNG charts. The method lives in
//! [`weft_tests::bench`]; this module owns the command line, the build and the charts.

mod chart;
pub mod control_scale;
pub mod gateway;
pub mod kernel_services;
mod report_bin;

use std::path::{Path, PathBuf};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use clap::Args as ClapArgs;
use weft_tests::bench::report::{Memory, Results, number};
use weft_tests::bench::run::{self, Sample, Tools};
use weft_tests::bench::{
    self, Layout, Plan, Scenario, TESTBED_NAME, Target, Via, env, machine::Machine, procstat,
};
use weft_tests::testbed::{self, AgentConfig, Config, TestbedGuard};

use crate::run::{cargo, target_dir, workspace_root};
use crate::setup;

/// The agent's data path gets one thread, as the other proxies get one (haproxy `nbthread
/// 1`, nginx `worker_processes 1`), so that the comparison is per core.
const AGENT_ARGS: [&str; 2] = ["--worker-threads", "1"];
/// The agent's log filter: its default, with one access-log line per connection, as a
/// deployment would run it.
const AGENT_RUST_LOG: &str = "info";
/// The scenario that compares the edge gateway with nginx as a reverse proxy; it runs in a
/// testbed of its own, after the mesh scenarios (see `gateway.rs`).
const GATEWAY_SCENARIO: &str = "gateway";

#[derive(Debug, Clone, Default, ClapArgs)]
pub struct Args {
    /// One short round (about two minutes): checks the harness, not the speed.
    #[arg(long)]
    pub quick: bool,
    /// Only these scenarios (repeatable): throughput, rps-1, rps-50, cps, latency, gateway.
    #[arg(long = "scenario", value_name = "NAME")]
    pub scenarios: Vec<String>,
    /// Output directory [default: target/bench/<UTC timestamp>].
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Rounds (default: 5, or 1 with --quick).
    #[arg(long)]
    pub rounds: Option<u32>,
    /// Seed of the scenario shuffle [default: from the clock].
    #[arg(long)]
    pub seed: Option<u64>,
    /// Give the proxies CPU 1 to themselves, everything else CPU 0 (their capacity). By
    /// default every process runs on CPU 0, so that cost figures are shares of one CPU.
    #[arg(long)]
    pub proxy_own_cpu: bool,
    /// Use debug builds (for the smoke test in `cargo xtask test`, which has them already).
    #[arg(long)]
    pub debug_build: bool,
    /// Run the control-plane scale benchmark (1000 subscribers, 10,000 workloads, 2,000
    /// services; with --quick a small size) instead of the data-path scenarios.
    #[arg(long)]
    pub control_scale: bool,
    /// Run the kernel service translation benchmark (cost per connect with 10,000 services
    /// loaded, from the kernel's BPF run-time statistics; --quick makes fewer connects)
    /// instead of the data-path scenarios.
    #[arg(long)]
    pub kernel_services: bool,
    /// Run this weft-agent binary instead of building one (another commit's build, to
    /// compare two agents on one machine); weft-control must be beside it.
    #[arg(long, value_name = "PATH")]
    pub agent: Option<PathBuf>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    let started = Instant::now();
    if args.control_scale {
        let out = args.out.clone().unwrap_or_else(|| {
            target_dir()
                .join("bench")
                .join(utc_stamp().replace([':', '-'], ""))
        });
        return control_scale::run(&out, args.quick, !args.debug_build);
    }
    if args.kernel_services {
        let out = args.out.clone().unwrap_or_else(|| {
            target_dir()
                .join("bench")
                .join(utc_stamp().replace([':', '-'], ""))
        });
        return kernel_services::run(&out, args.quick);
    }
    let mut plan = plan(args)?;
    setup::ensure()?;
    let release = !args.debug_build;
    let with_gateway =
        args.scenarios.is_empty() || args.scenarios.iter().any(|s| s == GATEWAY_SCENARIO);
    if plan.scenarios.is_empty() {
        // `--scenario gateway` alone.
        let out = args.out.clone().unwrap_or_else(|| {
            target_dir()
                .join("bench")
                .join(utc_stamp().replace([':', '-'], ""))
        });
        gateway::run(&plan, &out, release)?;
        println!(
            "bench: done in {:.0} s; report: {}",
            started.elapsed().as_secs_f64(),
            out.join("gateway.md").display()
        );
        return Ok(());
    }
    let (agent, load) = build(release, args.agent.as_deref())?;
    let stamp = utc_stamp();
    let out = args.out.clone().unwrap_or_else(|| {
        target_dir()
            .join("bench")
            .join(stamp.replace([':', '-'], ""))
    });
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize().unwrap_or(out);
    println!("bench: writing to {}", out.display());

    let mut machine = Machine::read(&workspace_root());
    let agent_bin = agent.clone();
    let mut agent_config = AgentConfig::new(agent);
    agent_config.rust_log = AGENT_RUST_LOG.to_owned();
    agent_config.extra_args = AGENT_ARGS.iter().map(|a| (*a).to_owned()).collect();
    let config = Config::named(TESTBED_NAME)
        .size(bench::NODES, bench::PODS_PER_NODE)
        .agent(agent_config)
        .unenrolled(bench::UNENROLLED);
    println!("bench: bringing testbed {TESTBED_NAME} up...");
    let tb = TestbedGuard::up(&config).context("bringing the benchmark testbed up")?;
    let env = env::prepare(&tb, &out).context("starting servers and proxies in the testbed")?;
    let targets = Target::all();
    let tools = Tools {
        load,
        cpus: machine.cpus,
    };
    let mut memory = idle_memory(&tb, &env, &targets)?;

    let mut samples = Vec::new();
    for round in 0..plan.rounds {
        let scenarios = shuffled(&plan.scenarios, plan.seed.wrapping_add(u64::from(round)));
        let mut order = 0;
        for scenario in scenarios {
            // The target order rotates every round: each target is first as often as any.
            let n = targets.len();
            for k in 0..n {
                let target = &targets[(k + round as usize) % n];
                let sample =
                    run::run_one(&tb, &env, &tools, &plan, scenario, target, (round, order))
                        .with_context(|| format!("{} against {}", scenario.id(), target.id))?;
                print_progress(&plan, &sample);
                samples.push(sample);
                order += 1;
            }
        }
    }
    for m in &mut memory {
        if let Some(target) = targets.iter().find(|t| t.id == m.target) {
            m.peak_rss_mib = procstat::memory_mib_of(&run::path_pids(&tb, &env, target)?).1;
        }
    }
    machine.load_after = bench::machine::load_average();
    let warnings = env.warnings.clone();
    drop(env);
    drop(tb);
    let left = testbed::leftover_netns(TESTBED_NAME)?;
    if !left.is_empty() {
        bail!(
            "the benchmark testbed left namespaces behind: {}",
            left.join(", ")
        );
    }

    plan.scenarios
        .sort_by_key(|s| Scenario::ALL.iter().position(|a| a == s));
    let results = Results {
        command: command_line(),
        started: stamp,
        quick: args.quick,
        build: if release { "release" } else { "debug" }.to_owned(),
        agent_args: std::iter::once(agent_bin.display().to_string())
            .chain(AGENT_ARGS.iter().map(|a| (*a).to_owned()))
            .collect(),
        agent_rust_log: AGENT_RUST_LOG.to_owned(),
        machine,
        plan,
        targets,
        samples,
        memory,
        warnings,
    };
    write_outputs(&results, &out)?;
    if with_gateway {
        gateway::run(&results.plan, &out, release)?;
    }
    println!(
        "bench: done in {:.0} s; report: {}",
        started.elapsed().as_secs_f64(),
        out.join("report.md").display()
    );
    let problems = results.problems();
    if !problems.is_empty() {
        bail!("the run is incomplete:\n  {}", problems.join("\n  "));
    }
    Ok(())
}

fn plan(args: &Args) -> anyhow::Result<Plan> {
    let seed = args.seed.unwrap_or_else(|| {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_secs())
    });
    let mut plan = if args.quick {
        Plan::quick(seed)
    } else {
        Plan::full(seed)
    };
    if let Some(rounds) = args.rounds {
        if rounds == 0 {
            bail!("--rounds must be at least 1");
        }
        plan.rounds = rounds;
    }
    if args.proxy_own_cpu {
        plan.layout = Layout::ProxyOwnCpu;
    }
    if !args.scenarios.is_empty() {
        plan.scenarios = args
            .scenarios
            .iter()
            .filter(|s| *s != GATEWAY_SCENARIO)
            .map(|s| {
                Scenario::from_id(s).with_context(|| {
                    let known: Vec<&str> = Scenario::ALL
                        .iter()
                        .map(|s| s.id())
                        .chain([GATEWAY_SCENARIO])
                        .collect();
                    format!(
                        "unknown scenario {s:?}; the scenarios are {}",
                        known.join(", ")
                    )
                })
            })
            .collect::<anyhow::Result<_>>()?;
    }
    Ok(plan)
}

/// Builds the agent (with its eBPF programs) and the control plane, unless `agent` names a
/// binary to use, and the load generator; the agent's and the load generator's paths.
fn build(release: bool, agent: Option<&Path>) -> anyhow::Result<(PathBuf, PathBuf)> {
    let mut command = cargo();
    command.arg("build");
    if agent.is_none() {
        // The testbed runs the control plane found beside the agent binary.
        command.args(["-p", "weft-agent", "-p", "weft-control"]);
    }
    command.args(["-p", "weft-load"]);
    if release {
        command.arg("--release");
    }
    crate::run::run(&mut command).context("building the agent and the load generator")?;
    let dir = target_dir().join(if release { "release" } else { "debug" });
    let agent = agent.map_or_else(|| dir.join("weft-agent"), Path::to_path_buf);
    let bins = (agent, dir.join("weft-load"));
    for bin in [&bins.0, &bins.1] {
        if !bin.is_file() {
            bail!("the build succeeded but left no {}", bin.display());
        }
    }
    Ok(bins)
}

/// Resident memory of each proxied target's processes before any benchmark traffic.
fn idle_memory(
    tb: &testbed::Testbed,
    env: &env::Env,
    targets: &[Target],
) -> anyhow::Result<Vec<Memory>> {
    let mut memory = Vec::new();
    for target in targets.iter().filter(|t| t.via != Via::Direct) {
        let pids = run::path_pids(tb, env, target)?;
        let processes = match target.via {
            Via::Weft if pids.len() > 1 => {
                format!("{} weft-agents (node-1, node-2), summed", pids.len())
            }
            Via::Weft => "node-1's weft-agent".to_owned(),
            Via::Peer(p) => format!("{} on node-1 and node-2, with workers", p.name()),
            Via::Direct => String::new(),
        };
        memory.push(Memory {
            target: target.id.clone(),
            processes,
            idle_rss_mib: procstat::memory_mib_of(&pids).0,
            peak_rss_mib: 0.0,
        });
    }
    Ok(memory)
}

/// A Fisher-Yates shuffle driven by xorshift64*: reproducible from the seed, no dependency.
fn shuffled(items: &[Scenario], seed: u64) -> Vec<Scenario> {
    let mut state = seed ^ 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut v = items.to_vec();
    for i in (1..v.len()).rev() {
        let j = (next() % (i as u64 + 1)) as usize;
        v.swap(i, j);
    }
    v
}

fn print_progress(plan: &Plan, s: &Sample) {
    let main = match s.scenario {
        Scenario::Throughput => ("gbit_s", "Gbit/s"),
        Scenario::Cps => ("rps", "conn/s"),
        Scenario::Latency => ("p99_us", "µs p99"),
        Scenario::Rps1 | Scenario::Rps50 => ("rps", "req/s"),
    };
    let value = s.figures.get(main.0).copied().unwrap_or(f64::NAN);
    let errors = if s.errors > 0 {
        format!(" ({} errors)", s.errors)
    } else {
        String::new()
    };
    println!(
        "bench: round {}/{} {:<10} {:<12} {} {}{errors}",
        s.round + 1,
        plan.rounds,
        s.scenario.id(),
        s.target,
        number(value),
        main.1
    );
}

fn write_outputs(results: &Results, out: &Path) -> anyhow::Result<()> {
    let json = serde_json::to_string_pretty(results)?;
    let path = out.join("results.json");
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    let charts = chart::draw_all(results, out).context("drawing the charts")?;
    let md = results.markdown(&charts);
    let path = out.join("report.md");
    std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    println!("\n{md}");
    Ok(())
}

fn command_line() -> String {
    let args: Vec<String> = std::env::args().skip(1).collect();
    format!("cargo xtask {}", args.join(" "))
}

/// `2025-01-31T12:00:00Z` from `date`, which knows the calendar.
fn utc_stamp() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            format!("unix-{secs}")
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shuffle_is_a_reproducible_permutation() {
        let a = shuffled(&Scenario::ALL, 7);
        assert_eq!(a, shuffled(&Scenario::ALL, 7));
        let mut sorted = a.clone();
        sorted.sort_by_key(|s| Scenario::ALL.iter().position(|x| x == s));
        assert_eq!(sorted, Scenario::ALL);
        assert!((0..20).any(|seed| shuffled(&Scenario::ALL, seed) != a));
    }
}
