//! `results.json` (every raw sample) and `report.md` (medians, spreads and ratios), and the
//! smoke check that every figure was produced.

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};

use super::machine::Machine;
use super::run::Sample;
use super::stats::Summary;
use super::{Plan, Scenario, Target, Via};

/// Everything a run produced; `results.json` is this, pretty-printed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Results {
    /// The command line that produced it.
    pub command: String,
    /// UTC start time, `YYYY-MM-DDTHH:MM:SSZ`.
    pub started: String,
    pub quick: bool,
    /// "release" or "debug" (a debug build's figures mean nothing).
    pub build: String,
    /// The agent binary and the flags it ran with (besides the testbed's own).
    pub agent_args: Vec<String>,
    pub agent_rust_log: String,
    pub machine: Machine,
    pub plan: Plan,
    pub targets: Vec<Target>,
    pub samples: Vec<Sample>,
    pub memory: Vec<Memory>,
    pub warnings: Vec<String>,
}

/// Resident memory of a target's proxy processes.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Memory {
    pub target: String,
    /// Which processes (e.g. "node-1's weft-agent").
    pub processes: String,
    /// VmRSS after start-up, before any benchmark traffic.
    pub idle_rss_mib: f64,
    /// VmHWM (the peak VmRSS) at the end of the run.
    pub peak_rss_mib: f64,
}

/// A column of a scenario's table.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    /// Key in [`Sample::figures`].
    pub key: &'static str,
    pub header: &'static str,
    /// Whether the table also shows the ratio of the median to the baseline's median.
    pub ratio: bool,
    /// Whether the figure must be above zero in every sample (the smoke check).
    pub positive: bool,
    /// Whether only targets with proxy processes have it.
    pub proxied_only: bool,
}

const fn col(key: &'static str, header: &'static str, ratio: bool, positive: bool) -> Column {
    Column {
        key,
        header,
        ratio,
        positive,
        proxied_only: false,
    }
}

/// Proxy CPU per request (or per new connection), user plus system: what the request costs
/// the proxies' processes, the kernel's TCP work for their sockets included.
const CPU_US: Column = Column {
    key: "proxy_cpu_us",
    header: "proxy CPU µs / req",
    ratio: false,
    positive: false,
    proxied_only: true,
};

/// The user-space part of [`CPU_US`]: the proxies' own code.
const USER_US: Column = Column {
    key: "proxy_user_us",
    header: "of which user µs",
    ..CPU_US
};

/// The busier node's proxy alone (the source or the destination node's), per request or
/// new connection: what one node proxy spends, beside [`CPU_US`] for the whole path.
const NODE_MAX_US: Column = Column {
    key: "proxy_node_max_us",
    header: "busiest node's proxy µs / req",
    ..CPU_US
};

/// The whole machine's busy CPU time per request (or new connection), every process on the
/// path and the kernel's unattributed work included: for the direct targets the cost of the
/// request itself, so that the difference is what the mesh adds, whatever the machine.
const MACHINE_US: Column = Column {
    key: "machine_cpu_us",
    header: "machine CPU µs / req",
    ratio: true,
    positive: false,
    proxied_only: false,
};

/// The columns of each scenario's table.
pub fn columns(scenario: Scenario) -> Vec<Column> {
    match scenario {
        Scenario::Throughput => vec![
            col("gbit_s", "Gbit/s", true, true),
            col("retransmits", "retransmits", false, false),
            Column {
                key: "proxy_cpu_s_per_gib",
                header: "proxy CPU s / GiB",
                ..CPU_US
            },
            Column {
                key: "proxy_user_s_per_gib",
                header: "of which user s",
                ..CPU_US
            },
            Column {
                key: "proxy_node_max_s_per_gib",
                header: "busiest node's proxy s / GiB",
                ..CPU_US
            },
            Column {
                key: "machine_cpu_s_per_gib",
                header: "machine CPU s / GiB",
                ..MACHINE_US
            },
        ],
        Scenario::Rps1 | Scenario::Rps50 => vec![
            col("rps", "req/s", true, true),
            col("p50_us", "p50 µs", false, true),
            col("p99_us", "p99 µs", false, true),
            CPU_US,
            USER_US,
            NODE_MAX_US,
            MACHINE_US,
        ],
        Scenario::Cps => vec![
            col("rps", "conn/s", true, true),
            col("p99_us", "p99 µs", false, true),
            Column {
                header: "proxy CPU µs / conn",
                ..CPU_US
            },
            USER_US,
            Column {
                header: "busiest node's proxy µs / conn",
                ..NODE_MAX_US
            },
            Column {
                header: "machine CPU µs / conn",
                ..MACHINE_US
            },
        ],
        Scenario::Latency => vec![
            col("p50_us", "p50 µs", true, true),
            col("p90_us", "p90 µs", false, true),
            col("p99_us", "p99 µs", true, true),
            col("p999_us", "p99.9 µs", false, true),
            CPU_US,
            USER_US,
            NODE_MAX_US,
            // No machine CPU: at a fixed low rate the whole machine's busy time is mostly
            // the idle testbed's background, not the requests.
        ],
    }
}

impl Results {
    /// The values of one figure over the rounds.
    pub fn values(&self, scenario: Scenario, target: &str, key: &str) -> Vec<f64> {
        self.samples
            .iter()
            .filter(|s| s.scenario == scenario && s.target == target)
            .filter_map(|s| s.figures.get(key).copied())
            .collect()
    }

    pub fn summary(&self, scenario: Scenario, target: &str, key: &str) -> Option<Summary> {
        Summary::of(&self.values(scenario, target, key))
    }

    /// What is wrong with this run as a run (a figure missing, not finite, or not positive
    /// where it must be); never a judgement of how fast anything was.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        for &scenario in &self.plan.scenarios {
            for target in &self.targets {
                let samples: Vec<&Sample> = self
                    .samples
                    .iter()
                    .filter(|s| s.scenario == scenario && s.target == target.id)
                    .collect();
                if samples.len() != self.plan.rounds as usize {
                    problems.push(format!(
                        "{} / {}: {} samples, expected {}",
                        scenario.id(),
                        target.id,
                        samples.len(),
                        self.plan.rounds
                    ));
                }
                for c in columns(scenario) {
                    if c.proxied_only && target.via == Via::Direct {
                        continue;
                    }
                    for s in &samples {
                        match s.figures.get(c.key) {
                            None => problems.push(format!(
                                "{} / {} round {}: no {}",
                                scenario.id(),
                                target.id,
                                s.round,
                                c.key
                            )),
                            Some(v) if !v.is_finite() || *v < 0.0 || (c.positive && *v <= 0.0) => {
                                problems.push(format!(
                                    "{} / {} round {}: {} = {v}",
                                    scenario.id(),
                                    target.id,
                                    s.round,
                                    c.key
                                ))
                            }
                            Some(_) => {}
                        }
                    }
                }
            }
        }
        for target in self.targets.iter().filter(|t| t.via != Via::Direct) {
            match self.memory.iter().find(|m| m.target == target.id) {
                Some(m) if m.idle_rss_mib > 0.0 && m.peak_rss_mib >= m.idle_rss_mib => {}
                Some(m) => problems.push(format!(
                    "memory of {}: idle {} MiB, peak {} MiB",
                    target.id, m.idle_rss_mib, m.peak_rss_mib
                )),
                None => problems.push(format!("memory of {}: not measured", target.id)),
            }
        }
        problems
    }

    /// `report.md`.
    pub fn markdown(&self, charts: &[(String, String)]) -> String {
        let mut md = String::new();
        let m = &self.machine;
        let _ = writeln!(md, "# Weft benchmark, {}\n", self.started);
        if self.quick || self.build != "release" {
            let _ = writeln!(
                md,
                "> **Smoke run** ({}{} build): it checks that the harness works. Its figures \
                 are not results; publish only a full release run on a quiet machine.\n",
                if self.quick { "--quick, " } else { "" },
                self.build
            );
        }
        let _ = writeln!(md, "Command: `{}`\n", self.command);
        let _ = writeln!(md, "| machine | |\n|---|---|");
        let rows = [
            ("kernel", m.kernel.clone()),
            ("CPUs", format!("{} × {}", m.cpus, m.cpu_model)),
            ("scaling governor", m.governor.clone()),
            ("memory", format!("{:.1} GiB", m.memory_gib)),
            (
                "load average before / after",
                format!("{} / {}", m.load_before, m.load_after),
            ),
            ("commit", m.git_commit.clone()),
            (
                "weft-agent",
                format!(
                    "{} build, `{}`, RUST_LOG={}",
                    self.build,
                    self.agent_args.join(" "),
                    self.agent_rust_log
                ),
            ),
        ];
        for (k, v) in rows
            .into_iter()
            .chain(m.tools.iter().map(|(k, v)| (k.as_str(), v.clone())))
        {
            let _ = writeln!(md, "| {k} | {v} |");
        }
        let p = &self.plan;
        let _ = writeln!(
            md,
            "\n{} round(s); each run measures {} s after {} s of warm-up. Cells are the median over \
             the rounds, with (min–max) when there are several. \"vs no mesh\" is the median's \
             ratio to the un-meshed path between the same nodes (direct cross-node or direct \
             same-node).\n",
            p.rounds, p.duration_secs, p.warmup_secs
        );
        for &scenario in &p.scenarios {
            self.scenario_table(&mut md, scenario);
        }
        self.vip_table(&mut md);
        self.memory_table(&mut md);
        method(&mut md, p);
        if !charts.is_empty() {
            let _ = writeln!(md, "## Charts\n");
            for (file, title) in charts {
                let _ = writeln!(md, "![{title}]({file})\n");
            }
        }
        let errors: Vec<String> = self
            .samples
            .iter()
            .filter(|s| s.errors > 0)
            .map(|s| {
                format!(
                    "{} / {} round {}: {} failed requests (first: {})",
                    s.scenario.id(),
                    s.target,
                    s.round,
                    s.errors,
                    s.first_error.as_deref().unwrap_or("?")
                )
            })
            .collect();
        if !errors.is_empty() || !self.warnings.is_empty() {
            let _ = writeln!(md, "## Warnings\n");
            for w in errors.iter().chain(&self.warnings) {
                let _ = writeln!(md, "- {w}");
            }
        }
        md
    }

    /// The service VIP against the pod's own address on the same path: what resolving the
    /// VIP and choosing the endpoint costs (target: within 5%).
    fn vip_table(&self, md: &mut String) {
        let rows: Vec<String> = self
            .plan
            .scenarios
            .iter()
            .filter(|s| matches!(s, Scenario::Rps1 | Scenario::Rps50 | Scenario::Cps))
            .filter_map(|&s| {
                let vip = self.summary(s, super::WEFT_VIP, "rps")?;
                let pod = self.summary(s, super::WEFT_CROSS, "rps")?;
                (pod.median > 0.0).then(|| {
                    format!(
                        "| {} | {} | {} | {:+.1}% |",
                        s.id(),
                        number(pod.median),
                        number(vip.median),
                        (vip.median / pod.median - 1.0) * 100.0
                    )
                })
            })
            .collect();
        if rows.is_empty() {
            return;
        }
        let _ = writeln!(
            md,
            "### Service VIP against pod IP (weft cross-node, same run)\n\n\
             | scenario | pod IP /s | VIP /s | VIP vs pod IP |\n|---|---|---|---|"
        );
        for row in rows {
            let _ = writeln!(md, "{row}");
        }
        let _ = writeln!(md);
    }

    fn scenario_table(&self, md: &mut String, scenario: Scenario) {
        let cols = columns(scenario);
        let _ = writeln!(
            md,
            "### {} ({})\n",
            scenario.title(),
            self.plan.layout.describe()
        );
        let mut header = vec!["target".to_owned()];
        for c in &cols {
            header.push(c.header.to_owned());
            if c.ratio {
                header.push(format!("{} vs no mesh", c.header));
            }
        }
        let _ = writeln!(md, "| {} |", header.join(" | "));
        let _ = writeln!(md, "|{}", "---|".repeat(header.len()));
        for target in &self.targets {
            let mut row = vec![target.label.clone()];
            for c in &cols {
                let s = self.summary(scenario, &target.id, c.key);
                row.push(s.map_or_else(|| "–".to_owned(), cell));
                if c.ratio {
                    let base = self.summary(scenario, &target.baseline, c.key);
                    row.push(match (s, base) {
                        (Some(s), Some(b)) if b.median > 0.0 => {
                            format!("{:.2}", s.median / b.median)
                        }
                        _ => "–".to_owned(),
                    });
                }
            }
            let _ = writeln!(md, "| {} |", row.join(" | "));
        }
        let _ = writeln!(md);
    }

    fn memory_table(&self, md: &mut String) {
        let _ = writeln!(md, "### Memory of the proxy processes\n");
        let _ = writeln!(
            md,
            "| target | processes | idle RSS MiB | peak RSS MiB |\n|---|---|---|---|"
        );
        for mem in &self.memory {
            let label = self
                .targets
                .iter()
                .find(|t| t.id == mem.target)
                .map_or(mem.target.as_str(), |t| t.label.as_str());
            let _ = writeln!(
                md,
                "| {label} | {} | {:.1} | {:.1} |",
                mem.processes, mem.idle_rss_mib, mem.peak_rss_mib
            );
        }
        let _ = writeln!(md);
    }
}

fn method(md: &mut String, p: &Plan) {
    let _ = writeln!(
        md,
        "## Method\n\n\
         - Every target runs on the same testbed in the same run. Within a round the scenario \
         order is shuffled (seed {}) and the target order rotates, so that neither order nor \
         drift favours a target.\n\
         - Clients run in pods: un-enrolled pod-1c for the baselines and the other proxies, \
         enrolled pod-1a for weft. Servers: nginx (1 worker, access log off, `sendfile` with `tcp_nopush` as in Debian's default configuration, so that a response leaves in one segment) serving 1 KiB, and \
         iperf3, in enrolled pod-2a (cross-node) and pod-1b (same-node) for weft, and in \
         un-enrolled pod-2c and pod-1d for the baselines and the other proxies (the same \
         software, configuration and CPU).\n\
         - haproxy and nginx run as a TCP tunnel with TLS 1.3 mutual authentication: one instance \
         in node-1's namespace, one in node-2's, one thread or worker each. The weft cross-node \
         path is the same shape: the source node's agent opens an HBONE tunnel (HTTP/2 CONNECT \
         over TLS 1.3 mutual auth, ECDSA P-256 SPIFFE certificates) to the destination node's \
         agent, which connects to the server.\n\
         - Layout of this run: {}. \"All on CPU 0\" (the default) pins load generator, \
         proxies and server to CPU 0: a cross-CPU wake-up costs milliseconds at the tail on \
         this class of VM, and every figure, cost per request included, is then a share of one \
         CPU. `--proxy-own-cpu` gives the proxies CPU 1 to themselves, for their capacity.\n\
         - Latency: {} req/s over {} connections on a fixed schedule; each latency counts from \
         the request's intended send time (no coordinated omission), into an HDR histogram.\n\
         - Proxy CPU: utime+stime of the proxy processes (both nodes' for the cross-node \
         targets) from /proc/<pid>/stat before and after each run, divided by every request or \
         new connection of the run, warm-up included, in microseconds (seconds per GiB moved \
         for throughput, iperf3's omitted first second included); \"of which user\" is utime alone, \
         the proxies' own code without the kernel's work for their sockets; \"busiest node's proxy\" \
         is the same figure for the busier of the two nodes' proxies alone (the source node's \
         or the destination node's), one node proxy's cost. Machine CPU: the \
         busy time of all CPUs (user, nice, system, irq, softirq from /proc/stat) over the same \
         window and per the same unit, for every target: what the whole path costs, load \
         generator, server and kernel work that no process is charged for included, plus the \
         idle testbed's background. Its ratio to the direct target is the mesh's cost as a \
         multiple of the request's own, comparable between machines where absolute \
         microseconds are not. Memory: VmRSS before traffic, VmHWM at the end.\n",
        p.seed,
        p.layout.describe(),
        p.latency_rate,
        p.latency_connections
    );
}

/// "12,345 (12,001–12,600)".
fn cell(s: Summary) -> String {
    if s.n > 1 {
        format!("{} ({}–{})", number(s.median), number(s.min), number(s.max))
    } else {
        number(s.median)
    }
}

/// Three significant digits, thousands separated.
pub fn number(v: f64) -> String {
    let a = v.abs();
    if a >= 1000.0 {
        let digits = format!("{:.0}", v.abs());
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i) % 3 == 0 {
                out.push(',');
            }
            out.push(c);
        }
        if v < 0.0 { format!("-{out}") } else { out }
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 1.0 || a == 0.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_numbers() {
        assert_eq!(number(12345.4), "12,345");
        assert_eq!(number(123.4), "123");
        assert_eq!(number(12.34), "12.3");
        assert_eq!(number(1.234), "1.23");
        assert_eq!(number(0.01234), "0.012");
    }
}
