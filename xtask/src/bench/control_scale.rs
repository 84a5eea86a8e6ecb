//! `cargo xtask bench --control-scale`: the control plane at scale (1000 subscribers, 10,000
//! workloads, 2,000 services by default), run by the `weft-control-scale` binary, which
//! starts a real `weft-control` and real discovery clients. Its table goes to
//! `DIR/control-scale.md`, its figures to `DIR/control-scale.json`.

use std::path::Path;

use anyhow::Context as _;

use crate::run::{cargo, target_dir};

/// Builds both binaries and runs the benchmark; `quick` is the small smoke-test size.
pub fn run(out: &Path, quick: bool, release: bool) -> anyhow::Result<()> {
    let mut build = cargo();
    build.args(["build", "-p", "weft-control", "--bins"]);
    if release {
        build.arg("--release");
    }
    crate::run::run(&mut build).context("building the control plane and its scale benchmark")?;
    let bin = target_dir()
        .join(if release { "release" } else { "debug" })
        .join("weft-control-scale");
    super::report_bin::run(&bin, out, "control-scale", quick, "control-plane scale")
}
