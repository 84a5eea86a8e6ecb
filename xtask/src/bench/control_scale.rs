//! `cargo xtask bench --control-scale`: the control plane at scale (1000 subscribers, 10,000
//! workloads, 2,000 services by default), run by the `weft-control-scale` binary, which
//! starts a real `weft-control` and real discovery clients. Its table goes to
//! `DIR/control-scale.md`, its figures to `DIR/control-scale.json`.

use std::{path::Path, process::Command};

use anyhow::{Context as _, bail};

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
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let json = out.join("control-scale.json");
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
    let md = out.join("control-scale.md");
    std::fs::write(&md, format!("```text\n{table}```\n"))
        .with_context(|| format!("writing {}", md.display()))?;
    if !output.status.success() {
        bail!(
            "the control-plane scale benchmark failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    println!("bench: control-plane scale report: {}", md.display());
    Ok(())
}
