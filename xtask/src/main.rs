//! `cargo xtask`: Weft's developer commands. It installs what the build needs (so it must
//! itself build with the stable toolchain alone), runs the tests, brings a local mesh up
//! for people to look at, and manages testbeds.
//!
//! ```text
//! cargo xtask test                                   set up, build, unit + end-to-end tests
//! cargo xtask bench [--quick] [--scenario NAME...] [--out DIR]   benchmarks and report
//! cargo xtask demo                                   a mesh with traffic, left running
//! cargo xtask testbed up [--nodes N] [--pods M] [--name NAME] [--release]
//! cargo xtask testbed status [--json] [--name NAME]
//! cargo xtask testbed exec [--name NAME] POD -- CMD [ARGS...]
//! cargo xtask testbed down [--name NAME]
//! cargo xtask setup                                  only install what is missing
//! ```

mod bench;
mod demo;
mod run;
mod setup;
mod test;
mod testbed;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Weft's developer commands"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check and install what the build and the tests need (root, Debian packages,
    /// nightly rust-src, bpf-linker).
    Setup,
    /// Build everything, run the unit tests, then the privileged end-to-end tests.
    Test(test::Args),
    /// Benchmark weft against no mesh and other proxies; writes report.md, results.json
    /// and charts.
    Bench(bench::Args),
    /// Bring a mesh up, send traffic through it, show what the agents saw, leave it up.
    Demo(demo::Args),
    /// Manage a local testbed: nodes and pods as network namespaces, one agent per node.
    #[command(subcommand)]
    Testbed(testbed::Command),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Setup => setup::command(),
        Command::Test(args) => test::run(&args),
        Command::Bench(args) => bench::run(&args),
        Command::Demo(args) => demo::run(&args),
        Command::Testbed(command) => testbed::run(command),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain on one line; no backtrace, even with RUST_BACKTRACE set.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
