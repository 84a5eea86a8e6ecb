//! `weft-kernel-svc-bench`: the kernel service translation's cost per `connect()` with
//! 10,000 services loaded, from the kernel's own BPF run-time statistics (run time / run count
//! of the service connect programs), and how long the agent takes to write that many services.
//! Run by `cargo xtask bench --kernel-services`; needs root.
//!
//! The programs and the sync are the agent's own (`weft_agent::services_kernel`), attached to a
//! cgroup of this run's; the client is this binary again (`--client`), moved into that cgroup,
//! dialling random VIPs in a tight loop, so little but the connect path runs between two
//! connects; every VIP
//! has three endpoints, listeners of this process on loopback. Statistics are switched on
//! through `BPF_ENABLE_STATS` for the measurement only: the kernel switches them off again when
//! this process's descriptor closes (or it dies), so `kernel.bpf_stats_enabled` is never left
//! on.

use std::{
    fmt::Write as _,
    fs::OpenOptions,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener},
    os::unix::process::CommandExt as _,
    path::PathBuf,
    process::Command,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail, ensure};
use clap::Parser;
use weft_agent::{capture::Capture, services_kernel};
use weft_ebpf_common::programs;
use weft_mesh::{
    service::{Service, ServiceIndex, ServicePort, TargetPort, TrafficDistribution},
    workload::{Workload, WorkloadStore, WorkloadUid},
};

/// The translation's target cost per connect.
const TARGET: Duration = Duration::from_micros(1);
/// Rounds per measurement; the median round is the figure.
const ROUNDS: usize = 5;
/// Services a typical client dials (its hot set), for the first measurement.
const HOT_SET: u32 = 16;
/// Endpoints per service.
const ENDPOINTS: u8 = 3;
const SERVICE_PORT: u16 = 80;

#[derive(Parser)]
#[command(about = "Kernel service translation cost per connect (needs root)")]
struct Args {
    /// Fewer connects (a smoke test of the harness; the service count stays).
    #[arg(long)]
    quick: bool,
    /// Services loaded, each with an IPv4 and an IPv6 VIP (at most 60,000).
    #[arg(long, default_value_t = 10_000)]
    services: u32,
    /// Connects per measurement [default: 50,000, or 10,000 with --quick].
    #[arg(long)]
    connects: Option<u32>,
    /// Also write the figures here as JSON.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Internal: be the client (services, connects, family 0/4/6, endpoint port).
    #[arg(long, hide = true, num_args = 4)]
    client: Option<Vec<u32>>,
}

/// What a measurement dials.
#[derive(Debug, Clone, Copy)]
enum Phase {
    /// 127.0.0.1: passed at once, the cost of the hook itself.
    Loopback,
    /// A few services, as a typical client: their map entries stay in the CPU caches.
    Hot,
    /// Every service at random: a map entry cold in the caches on nearly every connect.
    All,
}

/// A cgroup of this run, removed on drop (its processes have exited by then).
struct Cgroup(PathBuf);

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

fn cgroup2_mount() -> anyhow::Result<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| left.split_whitespace().nth(4).map(PathBuf::from))?
        })
        .context("no cgroup2 mount in /proc/self/mountinfo")
}

/// The `i`-th service's VIPs (1-based): 10.96.x.y and fd00:96::<i>.
fn vips(i: u32) -> [IpAddr; 2] {
    let [_, _, hi, lo] = i.to_be_bytes();
    [
        IpAddr::V4(Ipv4Addr::new(10, 96, hi, lo)),
        IpAddr::V6(Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0) | Ipv6Addr::from(u128::from(i))),
    ]
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(client_args) = &args.client {
        return client(client_args);
    }
    ensure!(
        nix::unistd::geteuid().is_root(),
        "needs root (cgroups and BPF)"
    );
    ensure!(
        (1..=60_000).contains(&args.services),
        "--services must be between 1 and 60000"
    );
    let connects = args
        .connects
        .unwrap_or(if args.quick { 10_000 } else { 50_000 });

    // The endpoints: one dual-stack listener, reached as 127.0.0.1-3 and ::1.
    let listener = TcpListener::bind(SocketAddr::new(Ipv6Addr::UNSPECIFIED.into(), 0))?;
    let port = listener.local_addr()?.port();
    std::thread::spawn(move || for _ in listener.incoming() {});

    let (capture, _logger) = Capture::load(0)?;
    let cgroup =
        Cgroup(cgroup2_mount()?.join(format!("weft-bench-kernel-svc-{}", std::process::id())));
    std::fs::create_dir_all(&cgroup.0)
        .with_context(|| format!("creating {}", cgroup.0.display()))?;
    let (mut maps, links) = services_kernel::attach(&capture, &cgroup.0)?;

    let workloads = WorkloadStore::new(
        (1..=ENDPOINTS)
            .map(|k| Workload {
                uid: WorkloadUid(format!("ep-{k}")),
                name: format!("ep-{k}"),
                namespace: "bench".into(),
                node: "node-1".into(),
                ips: vec![
                    IpAddr::V4(Ipv4Addr::new(127, 0, 0, k)),
                    IpAddr::V6(Ipv6Addr::LOCALHOST),
                ],
                ..Workload::default()
            })
            .collect(),
    );
    let service = |i: u32, endpoints: u8| {
        Arc::new(Service {
            name: format!("svc-{i}"),
            namespace: "bench".into(),
            vips: vips(i).to_vec(),
            ports: vec![ServicePort {
                port: SERVICE_PORT,
                target: TargetPort::Number(port),
            }],
            endpoints: (1..=endpoints)
                .map(|k| WorkloadUid(format!("ep-{k}")))
                .collect(),
            traffic_distribution: TrafficDistribution::Any,
        })
    };
    let mut all: Vec<Arc<Service>> = (1..=args.services).map(|i| service(i, ENDPOINTS)).collect();

    // The first sync: every key written.
    let started = Instant::now();
    let want =
        services_kernel::desired(&ServiceIndex::from_arcs(all.clone()), &workloads, "node-1");
    let report = maps.sync(&want);
    let first_sync = started.elapsed();
    ensure!(
        report.errors == 0,
        "the first sync failed for {} keys",
        report.errors
    );
    let keys = maps.len();

    // One service loses an endpoint: the diff writes its two keys (one per VIP).
    all[0] = service(1, ENDPOINTS - 1);
    let started = Instant::now();
    let want =
        services_kernel::desired(&ServiceIndex::from_arcs(all.clone()), &workloads, "node-1");
    let report = maps.sync(&want);
    let one_change = started.elapsed();
    ensure!(
        report.written == 2 && report.errors == 0,
        "one changed service wrote {report:?}"
    );

    let stats = aya::sys::enable_stats(aya::sys::Stats::RunTime)
        .context("enabling BPF run-time statistics")?;
    let mut results = Vec::new();
    let hot = HOT_SET.min(args.services);
    let phases = [
        (
            Phase::Loopback,
            0,
            args.services,
            programs::SERVICE_CONNECT4,
        ),
        (Phase::Hot, 4, hot, programs::SERVICE_CONNECT4),
        (Phase::All, 4, args.services, programs::SERVICE_CONNECT4),
        (Phase::All, 6, args.services, programs::SERVICE_CONNECT6),
    ];
    // Each phase in rounds, and the median round reported: a round's mean is pulled far up by
    // a few connects that a busy host interrupts, and on a shared VM some rounds are.
    let per_round = (connects / ROUNDS as u32).max(1);
    for (phase, family, dialled, program) in phases {
        let mut rounds = Vec::with_capacity(ROUNDS);
        let mut runs = 0;
        for _ in 0..ROUNDS {
            let (time0, runs0) = services_kernel::program_stats(&capture, program)?;
            run_client(&cgroup, dialled, per_round, family, port)?;
            let (time1, runs1) = services_kernel::program_stats(&capture, program)?;
            let round_runs = runs1.saturating_sub(runs0);
            ensure!(
                round_runs >= u64::from(per_round),
                "{program} ran {round_runs} times for {per_round} connects"
            );
            rounds.push((time1.saturating_sub(time0)).as_nanos() / u128::from(round_runs));
            runs += round_runs;
        }
        rounds.sort_unstable();
        results.push((phase, family, dialled, program, runs, rounds));
    }
    drop(stats);
    drop(links);

    let mut table = String::new();
    let _ = writeln!(
        table,
        "kernel service translation ({} services, each with an IPv4 and an IPv6 VIP, one port, {ENDPOINTS} endpoints)",
        args.services
    );
    let _ = writeln!(table, "  map keys (VIP, port) and VIPs      {keys}");
    let _ = writeln!(
        table,
        "  first sync (all keys)              {:.1} ms",
        first_sync.as_secs_f64() * 1e3
    );
    let _ = writeln!(
        table,
        "  sync after one service changed     {:.1} ms",
        one_change.as_secs_f64() * 1e3
    );
    let target = TARGET.as_nanos();
    for (phase, family, dialled, program, runs, rounds) in &results {
        let per = &rounds[ROUNDS / 2];
        let (low, high) = (rounds[0], rounds[ROUNDS - 1]);
        let what = match phase {
            Phase::Loopback => {
                "connect4 to loopback, passed (the floor: hook and statistics)".to_owned()
            }
            Phase::Hot => format!("connect{family} to a VIP of {dialled} services dialled"),
            Phase::All => format!("connect{family} to a VIP of all {dialled} services at random"),
        };
        let verdict = match phase {
            Phase::Loopback => String::new(),
            _ if *per < target => format!(", target < {target} ns met"),
            _ => format!(", target < {target} ns MISSED"),
        };
        let _ = writeln!(
            table,
            "  {what}: {per} ns (median of {ROUNDS} rounds, {low}-{high}; {program}, {runs} runs{verdict})"
        );
    }
    print!("{table}");
    if let Some(path) = &args.json {
        let json = serde_json::json!({
            "services": args.services,
            "keys": keys,
            "first_sync_ms": first_sync.as_secs_f64() * 1e3,
            "one_change_sync_ms": one_change.as_secs_f64() * 1e3,
            "connect": results.iter().map(|(phase, family, dialled, program, runs, rounds)| serde_json::json!({
                "phase": format!("{phase:?}"), "family": family, "services_dialled": dialled,
                "program": program, "runs": runs, "ns_per_connect": rounds[ROUNDS / 2],
                "ns_per_connect_rounds": rounds,
            })).collect::<Vec<_>>(),
            "target_ns": TARGET.as_nanos(),
        });
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// `connects` connects to random VIPs of `family` from this binary's `--client`, in the
/// cgroup. Family 0 dials the endpoint's loopback address directly: the programs pass it at
/// once, so its cost is the floor (the hook and the statistics themselves).
fn run_client(
    cgroup: &Cgroup,
    services: u32,
    connects: u32,
    family: u8,
    port: u16,
) -> anyhow::Result<()> {
    let mut procs = OpenOptions::new()
        .write(true)
        .open(cgroup.0.join("cgroup.procs"))?;
    let mut command = Command::new(std::env::current_exe()?);
    command.arg("--client").args([
        services.to_string(),
        connects.to_string(),
        family.to_string(),
        port.to_string(),
    ]);
    // SAFETY: only a write(2) on an already open file between fork and exec.
    unsafe {
        command.pre_exec(move || procs.write_all(b"0"));
    }
    let out = command.output().context("running the client")?;
    if !out.status.success() {
        bail!(
            "the IPv{family} client failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The client: `connects` connects, each closed at once, to random VIPs among the first
/// `services` (or to the endpoint directly, family 0).
fn client(args: &[u32]) -> anyhow::Result<()> {
    let &[services, connects, family, port] = args else {
        bail!("--client takes services, connects, family and port");
    };
    let port = u16::try_from(port).context("--client port")?;
    ensure!(services > 0, "--client services must be at least 1");
    // xorshift64: a fixed sequence, no dependency.
    let mut x: u64 = 0x5eed_2024;
    for _ in 0..connects {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let i = u32::try_from(x % u64::from(services)).unwrap_or(0) + 1;
        let [v4, v6] = vips(i);
        let addr = match family {
            0 => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port),
            4 => SocketAddr::new(v4, SERVICE_PORT),
            6 => SocketAddr::new(v6, SERVICE_PORT),
            other => bail!("--client family {other}: 0, 4 or 6"),
        };
        // Closed with a reset (linger 0), so that no TIME_WAIT entry holds the port: the
        // connects of a run would otherwise exhaust the ephemeral ports of one address.
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )?;
        socket.set_linger(Some(Duration::ZERO))?;
        socket
            .connect_timeout(&addr.into(), Duration::from_secs(5))
            .with_context(|| format!("connecting to {addr}"))?;
        drop(socket);
    }
    Ok(())
}
