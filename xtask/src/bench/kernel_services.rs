//! `cargo xtask bench --kernel-services`: the kernel service translation's cost per
//! `connect()` with 10,000 services loaded, from the kernel's BPF run-time statistics, run by
//! the agent crate's `weft-kernel-svc-bench` binary (the agent's own programs and map sync, a
//! cgroup of its own, a `python3` client). Its table goes to `DIR/kernel-services.md`, its
//! figures to `DIR/kernel-services.json`.
//!
//! The binary is always a debug build: the figure is the kernel programs' run time, and the
//! eBPF object is built optimised whatever the profile of the binary that embeds it.

use std::path::Path;

use anyhow::Context as _;

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
    super::report_bin::run(&bin, out, "kernel-services", quick, "kernel service")
}
