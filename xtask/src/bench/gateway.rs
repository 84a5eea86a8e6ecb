//! The "gateway" scenario (`cargo xtask bench --scenario gateway`): weft-gateway against
//! nginx as a reverse proxy, 64 connections, in its own testbed ("weft-bench-gw"). The
//! method lives in [`weft_tests::bench::gateway`]; this module builds, runs the rounds and
//! writes `gateway.md` and `gateway.json`.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use weft_tests::bench::gateway::{self as gw, GatewayResults, Proxy};
use weft_tests::bench::{Plan, machine::Machine};
use weft_tests::testbed::{self, AgentConfig, TestbedGuard};

use crate::run::{cargo, target_dir, workspace_root};

/// Builds the agent, the control plane, the gateway and the load generator (the testbed
/// needs the control plane, which runs with the agent); the agent's and the load
/// generator's paths.
fn build(release: bool) -> anyhow::Result<(PathBuf, PathBuf)> {
    let mut command = cargo();
    command.args([
        "build",
        "-p",
        "weft-agent",
        "-p",
        "weft-control",
        "-p",
        "weft-gateway",
        "-p",
        "weft-load",
    ]);
    if release {
        command.arg("--release");
    }
    crate::run::run(&mut command).context("building the gateway and the load generator")?;
    let dir = target_dir().join(if release { "release" } else { "debug" });
    let bins = (dir.join("weft-agent"), dir.join("weft-load"));
    for bin in [&bins.0, &bins.1, &dir.join("weft-gateway")] {
        if !bin.is_file() {
            bail!("the build succeeded but left no {}", bin.display());
        }
    }
    Ok(bins)
}

/// Runs the scenario with `plan` (its rounds, durations and layout), writing into `out`.
pub fn run(plan: &Plan, out: &Path, release: bool) -> anyhow::Result<GatewayResults> {
    let (agent, load) = build(release)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let machine = Machine::read(&workspace_root());
    let mut agent = AgentConfig::new(agent);
    agent.rust_log = "warn".to_owned();
    // The release gateway beside the release agent, whatever WEFT_GATEWAY_BIN says.
    let gateway_bin = agent.bin.with_file_name("weft-gateway");
    let config = gw::config(agent, Some(gateway_bin));
    println!("bench: bringing testbed {} up...", gw::TESTBED_NAME);
    let tb = TestbedGuard::up(&config).context("bringing the gateway benchmark testbed up")?;
    let env = gw::prepare(&tb, out).context("starting the backend, nginx and the route")?;
    let idle_rss_mib = gw::idle_rss(&tb, &env)?;
    let mut samples = Vec::new();
    for round in 0..plan.rounds {
        // The order alternates every round: each proxy goes first as often as the other.
        let mut order = Proxy::ALL;
        if round % 2 == 1 {
            order.reverse();
        }
        for proxy in order {
            let sample = gw::run_one(&tb, &env, &load, plan, machine.cpus, proxy, round)
                .with_context(|| format!("gateway scenario through {}", proxy.id()))?;
            println!(
                "bench: round {}/{} gateway    {:<12} {:.0} req/s, p99 {:.0} µs",
                round + 1,
                plan.rounds,
                proxy.id(),
                sample.figures.get("rps").copied().unwrap_or(f64::NAN),
                sample.figures.get("p99_us").copied().unwrap_or(f64::NAN),
            );
            samples.push(sample);
        }
    }
    drop(env);
    drop(tb);
    let left = testbed::leftover_netns(gw::TESTBED_NAME)?;
    if !left.is_empty() {
        bail!(
            "the gateway benchmark testbed left namespaces behind: {}",
            left.join(", ")
        );
    }
    let results = GatewayResults {
        plan: plan.clone(),
        samples,
        idle_rss_mib,
    };
    let json = serde_json::to_string_pretty(&results)?;
    let path = out.join("gateway.json");
    std::fs::write(&path, json).with_context(|| format!("writing {}", path.display()))?;
    let md = results.markdown();
    let path = out.join("gateway.md");
    std::fs::write(&path, &md).with_context(|| format!("writing {}", path.display()))?;
    println!("\n{md}");
    let problems = results.problems();
    if !problems.is_empty() {
        bail!(
            "the gateway scenario is incomplete:\n  {}",
            problems.join("\n  ")
        );
    }
    Ok(results)
}
