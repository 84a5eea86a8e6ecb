//! `cargo xtask bench --kernel-services`: the kernel service translation's cost per
//! `connect()` with 10,000 services loaded, from the kernel's BPF run-time statistics, run by
//! the agent crate's `weft-kernel-svc-bench` binary (the agent's own programs and map sync, a
//! cgroup of its own, a `python3` client). Its table goes to `DIR/kernel-services.md`, its
//! figures to `DIR/kernel-services.json`.
//!
//! The binary is always a debug build: the figure is the kernel programs' run time, and the
//! eBPF object is built optimised whatever the profile of the binary that embeds it.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

use crate::run::{cargo, target_dir};

/// Builds the binary and runs it; `quick` makes fewer connects (the service count stays).
pub fn run(out: &Path, quick: bool) -> anyhow::Result<()> {
    crate::setup::ensure()?;
    let mut build = cargo();
    build.args([
        "build",
        "-p",
        "weft-agent",
        "--bin",
        "weft-kernel-svc-bench",
    ]);
    crate::run::run(&mut build).context("building the kernel service benchmark")?;
    let bin = target_dir().join("debug").join("weft-kernel-svc-bench");
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = out.join("kernel-services.json");
    let mut command = Command::new(&bin);
    command.arg("--json").arg(&json);
    if quick {
        command.arg("--quick");
    }
    println!("bench: {}", weft_tests::testbed::cmd::display(&command));
    let output = command
        .output()
        .with_context(|| format!("running {}", bin.display()))?;
    let table = String::from_utf8_lossy(&output.stdout);
    print!("{table}");
    let md = out.join("kernel-services.md");
    std::fs::write(&md, format!("```text\n{table}```\n"))
        .with_context(|| format!("writing {}", md.display()))?;
    if !output.status.success() {
        bail!(
            "the kernel service benchmark failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    println!("bench: kernel service report: {}", md.display());
    Ok(())
}
