//! Running commands and finding the workspace.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, bail};
use weft_tests::testbed::cmd;

/// The workspace root (the parent of this crate).
pub fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// The target directory: CARGO_TARGET_DIR or `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The agent binary a `cargo build -p weft-agent [--release]` leaves.
pub fn agent_bin(release: bool) -> PathBuf {
    target_dir()
        .join(if release { "release" } else { "debug" })
        .join("weft-agent")
}

/// `cargo` run in the workspace root, with the toolchain that runs this xtask.
pub fn cargo() -> Command {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command.current_dir(workspace_root());
    command
}

/// Runs `command` with inherited stdio, echoing it first; a non-zero exit is an error.
pub fn run(command: &mut Command) -> anyhow::Result<()> {
    let line = cmd::display(command);
    eprintln!("$ {line}");
    let status = command
        .status()
        .with_context(|| format!("could not run `{line}`"))?;
    if !status.success() {
        bail!("`{line}` failed ({})", cmd::describe_status(status));
    }
    Ok(())
}

/// `cargo build -p weft-agent -p weft-control -p weft-ctl` (the agent's build also builds the
/// eBPF programs); the agent binary's path, with the others beside it.
pub fn build_agent(release: bool) -> anyhow::Result<PathBuf> {
    let mut build = cargo();
    build.args([
        "build",
        "-p",
        "weft-agent",
        "-p",
        "weft-control",
        "-p",
        "weft-ctl",
    ]);
    if release {
        build.arg("--release");
    }
    run(&mut build).context("building the agent failed")?;
    let bin = agent_bin(release);
    if !bin.is_file() {
        bail!("the build succeeded but left no {}", bin.display());
    }
    Ok(bin)
}

/// `cargo build -p weft-gateway [--release]`; the binary's path (beside the agent's, where
/// the testbed looks for it).
pub fn build_gateway(release: bool) -> anyhow::Result<PathBuf> {
    let mut build = cargo();
    build.args(["build", "-p", "weft-gateway"]);
    if release {
        build.arg("--release");
    }
    run(&mut build).context("building the gateway failed")?;
    let bin = agent_bin(release).with_file_name("weft-gateway");
    if !bin.is_file() {
        bail!("the build succeeded but left no {}", bin.display());
    }
    Ok(bin)
}
