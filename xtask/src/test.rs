//! `cargo xtask test`: set-up, build, unit tests, then the privileged end-to-end tests
//! (`tests/tests/*.rs` of weft-tests) one at a time against the freshly built agent, and
//! last a quick run of the benchmark harness (`cargo xtask bench --quick`).

use anyhow::bail;
use clap::Args as ClapArgs;
use weft_tests::testbed::netns;

use crate::run::{self, cargo};
use crate::{bench, setup};

#[derive(Debug, ClapArgs)]
pub struct Args {
    /// Skip the build-wide unit tests and run only the end-to-end tests.
    #[arg(long)]
    pub e2e_only: bool,
    /// Skip the benchmark harness's smoke run that ends the tests.
    #[arg(long)]
    pub no_bench: bool,
    /// Only run end-to-end tests whose name contains this (skips the benchmark smoke run).
    pub filter: Option<String>,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    // Root is checked first: privileged tests must fail, never pass silently, without it.
    setup::ensure()?;

    // The kernel crate only builds for bpfel-unknown-none, through the agent's build.rs.
    run::run(cargo().args([
        "build",
        "--workspace",
        "--exclude",
        "weft-ebpf",
        "--all-targets",
    ]))?;
    let agent = run::agent_bin(false);
    if !agent.is_file() {
        bail!(
            "the workspace build left no agent binary at {}",
            agent.display()
        );
    }

    if !args.e2e_only {
        run::run(cargo().args([
            "test",
            "--workspace",
            "--exclude",
            "weft-ebpf",
            "--exclude",
            "weft-tests",
        ]))?;
        run::run(cargo().args(["test", "-p", "weft-tests", "--lib"]))?;
        run::run(cargo().args(["test", "-p", "weft-tests", "--doc"]))?;
    }

    let before: Vec<String> = weft_netns()?;
    let mut e2e = cargo();
    // One test at a time: each brings up its own mesh, and two cores are not enough for
    // several agents at once to stay within the tests' time limits.
    e2e.args(["test", "-p", "weft-tests", "--test", "*", "--"])
        .args(args.filter.as_deref())
        .args(["--test-threads=1"])
        .env("WEFT_AGENT_BIN", &agent);
    let result = run::run(&mut e2e);

    let left: Vec<String> = weft_netns()?
        .into_iter()
        .filter(|ns| !before.contains(ns))
        .collect();
    if !left.is_empty() {
        bail!(
            "the end-to-end tests left network namespaces behind: {} (a testbed was not taken \
             down; remove them with `cargo xtask testbed down --name <prefix>`)",
            left.join(", ")
        );
    }
    println!("end-to-end tests left no weft network namespace behind");
    result?;

    // Last, a quick benchmark run with the debug builds at hand: it checks that the harness
    // still produces every figure, never how fast anything is. A filtered run is someone
    // iterating on a few tests, so it is skipped there.
    if args.filter.is_none() && !args.no_bench {
        println!("benchmark harness smoke run (cargo xtask bench --quick --debug-build)");
        bench::run(&bench::Args {
            quick: true,
            debug_build: true,
            out: Some(run::target_dir().join("bench").join("smoke")),
            ..bench::Args::default()
        })?;
        println!(
            "control-plane scale benchmark smoke run (cargo xtask bench --control-scale --quick)"
        );
        bench::control_scale::run(&run::target_dir().join("bench").join("smoke"), true, false)?;
        println!(
            "kernel service benchmark smoke run (cargo xtask bench --kernel-services --quick)"
        );
        bench::kernel_services::run(&run::target_dir().join("bench").join("smoke"), true)?;
    }
    Ok(())
}

/// Named network namespaces whose name starts with "weft".
fn weft_netns() -> anyhow::Result<Vec<String>> {
    Ok(netns::list()?
        .into_iter()
        .filter(|n| n.starts_with("weft"))
        .collect())
}
