//! What a run measured: the JSON document (`--json`) and the table printed at the end.
//! Times are milliseconds, sizes bytes, memory KiB.

use std::time::Duration;

use serde::Serialize;

use crate::{control::Memory, mesh};

#[derive(Debug, Serialize)]
pub struct Report {
    /// False when anything failed; the reasons are in `failures`.
    pub ok: bool,
    pub failures: Vec<String>,
    pub params: Params,
    pub machine: Machine,
    pub mesh: Option<mesh::Mesh>,
    pub control: Control,
    pub sync: Option<Sync>,
    pub rounds: Vec<Round>,
    /// The median over rounds of each round's figure.
    pub rounds_median: Option<Percentiles>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Params {
    pub workloads: usize,
    pub services: usize,
    pub namespaces: usize,
    pub nodes: usize,
    pub subscribers: usize,
    pub rounds: usize,
    pub connect_concurrency: usize,
    pub quick: bool,
}

#[derive(Debug, Default, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
    pub cpu_model: String,
    /// `/proc/loadavg`'s three averages at start and end: a busy machine explains a figure.
    pub load_before: String,
    pub load_after: String,
    /// The control plane binary measured.
    pub control_binary: String,
}

impl Machine {
    pub fn read(control_binary: String) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            cpu_model: cpuinfo
                .lines()
                .find_map(|l| l.strip_prefix("model name"))
                .and_then(|l| l.split_once(':'))
                .map_or_else(|| "unknown".to_string(), |(_, m)| m.trim().to_string()),
            load_before: load_average(),
            load_after: String::new(),
            control_binary,
        }
    }
}

pub fn load_average() -> String {
    read_trim("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path).map_or_else(|_| "unknown".to_string(), |s| s.trim().to_string())
}

/// The control plane process.
#[derive(Debug, Default, Serialize)]
pub struct Control {
    /// Spawn to accepting connections (loads and compiles the whole mesh).
    pub startup_ms: f64,
    /// Idle after loading the mesh, before any subscriber.
    pub loaded: Memory,
    /// Idle with every subscriber synced.
    pub synced: Memory,
    /// Idle after every subscriber disconnected.
    pub disconnected: Memory,
    /// At the end; `hwm_kib` is the peak of the whole run.
    pub end: Memory,
    /// CPU seconds the control plane spent serving every initial snapshot.
    pub sync_cpu_s: f64,
    /// CPU seconds per round (reload, diff, fan-out), median over rounds.
    pub round_cpu_s: f64,
}

/// Getting every subscriber its first snapshot.
#[derive(Debug, Serialize)]
pub struct Sync {
    /// From the first connect to the last subscriber synced.
    pub wall_ms: f64,
    /// Per subscriber: from its start to its last snapshot applied.
    pub per_subscriber: Percentiles,
    /// The initial snapshot of one subscriber, per type and in all.
    pub snapshot_bytes: TypeBytes,
    /// `snapshot_bytes.total` times the subscribers: what the server sent in all.
    pub snapshot_bytes_all: u64,
    pub resources: TypeCounts,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct TypeBytes {
    pub workload: u64,
    pub service: u64,
    pub policy: u64,
    pub total: u64,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct TypeCounts {
    pub workload: usize,
    pub service: usize,
    pub policy: usize,
}

/// One policy change.
#[derive(Debug, Serialize)]
pub struct Round {
    pub round: usize,
    /// The Policy resource that changed.
    pub resource: String,
    pub version: u64,
    /// How many subscribers applied it (every one, when the round passed).
    pub applied: usize,
    /// How many the control plane recorded as having ACKed it (its Status view).
    pub acked_at_server: usize,
    /// From the rename to each subscriber having applied it; `min` is mostly the control
    /// plane's debounce and reload, `max - min` the fan-out.
    pub latency: Percentiles,
    /// The delta as received: one resource, snapshot=false.
    pub delta_bytes: u64,
    pub delta_resources: usize,
    /// `delta_bytes` over the initial snapshot's total size.
    pub delta_to_snapshot: f64,
    pub cpu_s: f64,
}

#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub count: usize,
    pub min_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Percentiles {
    /// Nearest-rank percentiles of `samples` (order irrelevant).
    pub fn of(samples: &[Duration]) -> Self {
        let mut sorted: Vec<f64> = samples.iter().map(|d| ms(*d)).collect();
        sorted.sort_by(f64::total_cmp);
        let rank = |p: f64| -> f64 {
            if sorted.is_empty() {
                return 0.0;
            }
            let i = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            sorted[i.clamp(1, sorted.len()) - 1]
        };
        Percentiles {
            count: sorted.len(),
            min_ms: rank(0.0),
            p50_ms: rank(50.0),
            p90_ms: rank(90.0),
            p99_ms: rank(99.0),
            max_ms: rank(100.0),
        }
    }

    /// The median of each field over several sets.
    pub fn median(sets: &[Percentiles]) -> Option<Self> {
        if sets.is_empty() {
            return None;
        }
        let med = |f: fn(&Percentiles) -> f64| {
            let mut v: Vec<f64> = sets.iter().map(f).collect();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        Some(Percentiles {
            count: sets.len(),
            min_ms: med(|p| p.min_ms),
            p50_ms: med(|p| p.p50_ms),
            p90_ms: med(|p| p.p90_ms),
            p99_ms: med(|p| p.p99_ms),
            max_ms: med(|p| p.max_ms),
        })
    }
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

fn size(bytes: u64) -> String {
    match bytes {
        b if b >= 10 << 20 => format!("{:.1} MiB", b as f64 / f64::from(1 << 20)),
        b if b >= 10 << 10 => format!("{:.1} KiB", b as f64 / 1024.0),
        b => format!("{b} B"),
    }
}

impl Report {
    /// The human-readable summary.
    pub fn table(&self) -> String {
        let p = &self.params;
        let m = &self.machine;
        let c = &self.control;
        let mut out = format!(
            "weft-control scale: {} workloads, {} services, {} subscribers, {} round(s)\n\
             machine: {} CPUs ({}), kernel {}, load {} -> {}\n\n",
            p.workloads,
            p.services,
            p.subscribers,
            p.rounds,
            m.cpus,
            m.cpu_model,
            m.kernel,
            m.load_before,
            m.load_after,
        );
        // Absent when the control plane never started (the failure says why).
        if c.startup_ms > 0.0 {
            out += &format!(
                "control plane  start-up {:.0} ms | RSS loaded {} | RSS synced {} | RSS after \
                 disconnect {} | peak {} | sync CPU {:.2} s\n",
                c.startup_ms,
                mib(c.loaded.rss_kib),
                mib(c.synced.rss_kib),
                mib(c.disconnected.rss_kib),
                mib(c.end.hwm_kib),
                c.sync_cpu_s,
            );
        }
        if let Some(s) = &self.sync {
            out += &format!(
                "initial sync   all in {:.0} ms | per subscriber p50 {:.0} / p99 {:.0} ms | \
                 snapshot {} per subscriber (workloads {}, services {}, policies {}), {} in all\n",
                s.wall_ms,
                s.per_subscriber.p50_ms,
                s.per_subscriber.p99_ms,
                size(s.snapshot_bytes.total),
                size(s.snapshot_bytes.workload),
                size(s.snapshot_bytes.service),
                size(s.snapshot_bytes.policy),
                size(s.snapshot_bytes_all),
            );
        }
        if !self.rounds.is_empty() {
            out += "\npolicy change -> applied by every subscriber (ms from the file rename)\n";
            out += &format!(
                "{:>5} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>9} {:>8}  {}\n",
                "round", "applied", "min", "p50", "p90", "p99", "max", "delta", "CPU s", "policy"
            );
            for r in &self.rounds {
                let l = &r.latency;
                out += &format!(
                    "{:>5} {:>8} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>9} {:>8.3}  {}\n",
                    r.round,
                    r.applied,
                    l.min_ms,
                    l.p50_ms,
                    l.p90_ms,
                    l.p99_ms,
                    l.max_ms,
                    size(r.delta_bytes),
                    r.cpu_s,
                    r.resource
                );
            }
            if let Some(l) = &self.rounds_median {
                out += &format!(
                    "{:>5} {:>8} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8.1}\n",
                    "median", "", l.min_ms, l.p50_ms, l.p90_ms, l.p99_ms, l.max_ms
                );
            }
        }
        if self.ok {
            out += "\nresult: ok\n";
        } else {
            out += &format!("\nresult: FAILED ({} problem(s))\n", self.failures.len());
            for f in &self.failures {
                out += &format!("  - {f}\n");
            }
        }
        out
    }
}
