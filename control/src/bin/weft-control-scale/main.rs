//! `weft-control-scale`: a scale benchmark of the control plane. It generates a mesh
//! (workloads, services, policies), starts a real `weft-control` on it as a child process,
//! connects many simulated agents (real clients, one TLS connection each), waits for them to
//! sync, then changes one policy per round and times its arrival at every agent.
//!
//! It reports figures and checks correctness (every agent synced, every change arrived as a
//! one-resource delta, every ACK reached the server); it never judges speed. The exit code is
//! 0 when every check passed, 1 when one failed, 2 when the run could not be carried out.

mod control;
mod fleet;
mod mesh;
mod phases;
mod report;
#[cfg(test)]
mod tests;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::{Context, bail};
use clap::Parser;
use tracing_subscriber::EnvFilter;
use weft_proto::discovery::v1::discovery_client::DiscoveryClient;

use crate::{
    control::ControlProcess,
    fleet::Fleet,
    mesh::Shape,
    phases::Plan,
    report::{Control, Machine, Params, Percentiles, Report},
};

/// The measured scenario: a large cluster's mesh and one agent per node for 1000 nodes.
const FULL: Sizes = Sizes {
    workloads: 10_000,
    services: 2_000,
    subscribers: 1_000,
    rounds: 5,
};
/// Small enough to finish in seconds, for smoke tests and `cargo xtask bench`.
const QUICK: Sizes = Sizes {
    workloads: 1_000,
    services: 200,
    subscribers: 50,
    rounds: 1,
};
/// Memory is read this long after a phase ends, so transient buffers of that phase (parsed
/// YAML, encoded snapshots in flight) have been freed.
const IDLE_SETTLE: Duration = Duration::from_secs(1);
/// Between rounds, so one round's change cannot share the control plane's debounce window
/// with the next.
const BETWEEN_ROUNDS: Duration = Duration::from_millis(500);
/// Files the benchmark needs besides one socket per subscriber (the runtime, the log, TLS).
const SPARE_FILES: u64 = 256;
/// The control plane's log, in the work directory.
const LOG_FILE: &str = "weft-control.log";

struct Sizes {
    workloads: usize,
    services: usize,
    subscribers: usize,
    rounds: usize,
}

/// Scale benchmark of the Weft control plane: N simulated agents, one policy change per
/// round, time until every agent applied it; snapshot and delta sizes; the control plane's
/// memory. Build with --release for meaningful figures.
#[derive(Debug, Parser)]
#[command(name = "weft-control-scale", version)]
struct Args {
    /// Small sizes (1000 workloads, 200 services, 50 subscribers, 1 round) that finish in
    /// seconds; explicit size options still override.
    #[arg(long)]
    quick: bool,
    /// Workloads in the mesh [default: 10000, --quick 1000].
    #[arg(long)]
    workloads: Option<usize>,
    /// Services, each selecting an equal share of the workloads [default: 2000, --quick 200].
    #[arg(long)]
    services: Option<usize>,
    /// Simulated agents, each with its own connection [default: 1000, --quick 50].
    #[arg(long)]
    subscribers: Option<usize>,
    /// Policy changes to time, a different policy each [default: 5, --quick 1].
    #[arg(long)]
    rounds: Option<usize>,
    /// Namespaces the workloads and services are spread over.
    #[arg(long, default_value_t = 50)]
    namespaces: usize,
    /// Nodes the workloads (and subscribers) are spread over.
    #[arg(long, default_value_t = 100)]
    nodes: usize,
    /// Subscribers connecting at the same time (started, not yet synced); 0 starts them all
    /// at once, like every agent reconnecting after a control-plane restart.
    #[arg(long, default_value_t = 100)]
    connect_concurrency: usize,
    /// Give up on the initial sync after this many seconds.
    #[arg(long, default_value_t = 600)]
    sync_timeout: u64,
    /// Give up on a round after this many seconds.
    #[arg(long, default_value_t = 60)]
    round_timeout: u64,
    /// The `weft-control` binary [default: the one beside this binary].
    #[arg(long)]
    control_bin: Option<PathBuf>,
    /// `RUST_LOG` of the control plane; its log is written to the work directory.
    #[arg(long, default_value = "info")]
    control_log: String,
    /// Write every figure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the work directory (generated mesh, control plane log) and print where it is.
    #[arg(long)]
    keep: bool,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")),
        )
        .init();
    let args = Args::parse();
    let sizes = if args.quick { QUICK } else { FULL };
    let params = Params {
        workloads: args.workloads.unwrap_or(sizes.workloads),
        services: args.services.unwrap_or(sizes.services),
        namespaces: args.namespaces,
        nodes: args.nodes,
        subscribers: args.subscribers.unwrap_or(sizes.subscribers),
        rounds: args.rounds.unwrap_or(sizes.rounds),
        connect_concurrency: args.connect_concurrency,
        quick: args.quick,
    };
    let mut report = Report {
        ok: false,
        failures: Vec::new(),
        params: params.clone(),
        machine: Machine::default(),
        mesh: None,
        control: Control::default(),
        sync: None,
        rounds: Vec::new(),
        rounds_median: None,
    };
    // The simulated agents: default worker count (one per CPU), as a real process would.
    let outcome = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|rt| rt.block_on(run(&args, &params, &mut report)));
    report.machine.load_after = report::load_average();
    let mut code = ExitCode::SUCCESS;
    if let Err(e) = outcome {
        report.failures.push(format!("{e:#}"));
        code = ExitCode::from(2);
    } else if !report.failures.is_empty() {
        code = ExitCode::FAILURE;
    }
    report.ok = report.failures.is_empty();
    print!("{}", report.table());
    if let Some(path) = &args.json {
        let written = serde_json::to_vec_pretty(&report)
            .context("encoding the report")
            .and_then(|json| {
                std::fs::write(path, json).with_context(|| format!("writing {}", path.display()))
            });
        if let Err(e) = written {
            eprintln!("weft-control-scale: {e:#}");
            code = ExitCode::from(2);
        }
    }
    code
}

async fn run(args: &Args, params: &Params, report: &mut Report) -> anyhow::Result<()> {
    let binary = control::binary(args.control_bin.clone())?;
    report.machine = Machine::read(binary.display().to_string());
    raise_open_files(params.subscribers as u64 + SPARE_FILES)?;

    let work = tempfile::Builder::new()
        .prefix("weft-control-scale-")
        .tempdir()
        .context("creating the work directory")?;
    let shape = Shape {
        workloads: params.workloads,
        services: params.services,
        namespaces: params.namespaces,
        nodes: params.nodes,
    };
    let mut mesh = mesh::generate(work.path(), shape)?;
    let result = start_and_measure(args, params, report, &binary, work.path(), &mut mesh).await;
    report.mesh = Some(mesh);
    // A failed run keeps its evidence: the generated mesh and the control plane's log.
    if args.keep || result.is_err() || !report.failures.is_empty() {
        let kept = work.keep();
        eprintln!(
            "work directory kept: {} (control plane log: {})",
            kept.display(),
            kept.join(LOG_FILE).display()
        );
    }
    result
}

async fn start_and_measure(
    args: &Args,
    params: &Params,
    report: &mut Report,
    binary: &Path,
    work: &Path,
    mesh: &mut mesh::Mesh,
) -> anyhow::Result<()> {
    let state_dir = work.join("state");
    std::fs::create_dir_all(&state_dir).context("creating the state directory")?;
    let mut cp = ControlProcess::start(
        binary,
        &mesh.dir,
        &state_dir,
        &work.join(LOG_FILE),
        &args.control_log,
        Duration::from_secs(args.sync_timeout),
    )
    .await?;
    let result = measure(args, params, report, &mut cp, mesh).await;
    report.control.end = cp.memory().unwrap_or_default();
    result.and(cp.stop().await)
}

/// Everything that needs the control plane up.
async fn measure(
    args: &Args,
    params: &Params,
    report: &mut Report,
    cp: &mut ControlProcess,
    mesh: &mut mesh::Mesh,
) -> anyhow::Result<()> {
    report.control.startup_ms = report::ms(cp.startup);
    tokio::time::sleep(IDLE_SETTLE).await;
    report.control.loaded = cp.memory()?;

    let plan = Plan {
        subscribers: params.subscribers,
        connect_concurrency: params.connect_concurrency,
        sync_timeout: Duration::from_secs(args.sync_timeout),
        round_timeout: Duration::from_secs(args.round_timeout),
    };
    let mut fleet = Fleet::new(
        cp.url(),
        cp.root_pem.clone(),
        cp.operator.clone(),
        params.nodes,
    );
    let result = measure_with_fleet(params, &plan, report, cp, mesh, &mut fleet).await;
    fleet.stop().await;
    // What the subscribers' streams held (and whether it is given back when they go).
    tokio::time::sleep(IDLE_SETTLE).await;
    report.control.disconnected = cp.memory()?;
    result
}

async fn measure_with_fleet(
    params: &Params,
    plan: &Plan,
    report: &mut Report,
    cp: &mut ControlProcess,
    mesh: &mut mesh::Mesh,
    fleet: &mut Fleet,
) -> anyhow::Result<()> {
    let cpu_before = cp.cpu_time()?;
    let synced = phases::sync(plan, cp, fleet, &mut report.failures).await?;
    report.control.sync_cpu_s = cp.cpu_time()?.saturating_sub(cpu_before).as_secs_f64();
    let snapshot_total = synced.sync.snapshot_bytes.total;
    let all_synced = synced.sync.per_subscriber.count == params.subscribers;
    report.sync = Some(synced.sync);
    if !all_synced {
        // Rounds would only time out on the subscribers that are missing.
        return Ok(());
    }
    tokio::time::sleep(IDLE_SETTLE).await;
    report.control.synced = cp.memory()?;

    let endpoint = weft_link::control::endpoint_with_identity(
        &cp.url(),
        &cp.root_pem,
        None,
        Some(&cp.operator),
        weft_link::control::DEFAULT_CONNECT_TIMEOUT,
    )?;
    let mut admin = DiscoveryClient::new(
        endpoint
            .connect()
            .await
            .context("connecting to the control plane for its status")?,
    )
    // The Status of 1000 clients is larger than gRPC's 4 MiB default at larger scales.
    .max_decoding_message_size(usize::MAX);
    if params.rounds > 0 && mesh.rewritable() == 0 {
        bail!("the mesh has no policy to change; use --services and --namespaces of at least 1");
    }
    let mut version = synced.version;
    let mut round_cpu = Vec::new();
    for number in 1..=params.rounds {
        tokio::time::sleep(BETWEEN_ROUNDS).await;
        let round = phases::round(
            number,
            plan,
            cp,
            fleet,
            mesh,
            &mut admin,
            version,
            snapshot_total,
            &mut report.failures,
        )
        .await?;
        version = version.max(round.version);
        round_cpu.push(round.cpu_s);
        report.rounds.push(round);
    }
    round_cpu.sort_by(f64::total_cmp);
    report.control.round_cpu_s = round_cpu.get(round_cpu.len() / 2).copied().unwrap_or(0.0);
    let latencies: Vec<Percentiles> = report.rounds.iter().map(|r| r.latency).collect();
    report.rounds_median = Percentiles::median(&latencies);

    let resyncs = phases::resyncs(&mut admin).await?;
    if resyncs > 0 {
        report.failures.push(format!(
            "the control plane resynchronised subscribers {resyncs} time(s): a queue overflowed"
        ));
    }
    let reconnects: u64 = fleet.connects().iter().map(|c| c.saturating_sub(1)).sum();
    if reconnects > 0 {
        report
            .failures
            .push(format!("subscribers reconnected {reconnects} time(s)"));
    }
    Ok(())
}

/// One socket per subscriber in this process, and as many in the control plane (which
/// inherits the limit): raise the soft limit to what is needed, up to the hard limit.
fn raise_open_files(needed: u64) -> anyhow::Result<()> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).context("reading RLIMIT_NOFILE")?;
    if soft >= needed {
        return Ok(());
    }
    if hard < needed {
        bail!(
            "{needed} open files are needed but the hard limit is {hard}; raise it \
             (`ulimit -Hn`, LimitNOFILE=) or use fewer --subscribers"
        );
    }
    setrlimit(Resource::RLIMIT_NOFILE, needed, hard).context("raising RLIMIT_NOFILE")
}
