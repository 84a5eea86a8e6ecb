//! Facts about the machine a run measured, for the report: figures from different machines
//! are not comparable, and a busy machine explains a strange figure.

use std::path::Path;
use std::process::Command;

use serde::{Deserialize, Serialize};

/// What the report says about the machine.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Machine {
    pub kernel: String,
    pub cpus: usize,
    pub cpu_model: String,
    /// cpufreq's governor of CPU 0, or why it is unknown (VMs often expose no cpufreq).
    pub governor: String,
    pub memory_gib: f64,
    /// `/proc/loadavg`'s three averages when the run started and when it ended.
    pub load_before: String,
    pub load_after: String,
    pub git_commit: String,
    /// Versions of the tools the run used, as they print them.
    pub tools: Vec<(String, String)>,
}

impl Machine {
    /// Reads everything but `load_after`; `repo` is the workspace (for the git commit).
    pub fn read(repo: &Path) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown".to_owned(), |(_, m)| m.trim().to_owned());
        let memory_kib: f64 = std::fs::read_to_string("/proc/meminfo")
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0.0);
        let governor =
            std::fs::read_to_string("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor")
                .map_or_else(
                    |_| "not exposed (no cpufreq)".to_owned(),
                    |g| g.trim().to_owned(),
                );
        Self {
            kernel: read_trim("/proc/sys/kernel/osrelease"),
            cpus: std::thread::available_parallelism().map_or(1, usize::from),
            cpu_model,
            governor,
            memory_gib: memory_kib / (1024.0 * 1024.0),
            load_before: load_average(),
            load_after: String::new(),
            git_commit: git_commit(repo),
            tools: tool_versions(),
        }
    }
}

fn read_trim(path: &str) -> String {
    std::fs::read_to_string(path).map_or_else(|e| format!("unknown ({e})"), |s| s.trim().to_owned())
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> String {
    read_trim("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// `HEAD`'s commit, with "+ uncommitted changes" when the tree is dirty.
fn git_commit(repo: &Path) -> String {
    let git = |args: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(repo)
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let Some(head) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return "unknown (not a git checkout)".to_owned();
    };
    match git(&["status", "--porcelain", "--untracked-files=no"]) {
        Some(s) if !s.is_empty() => format!("{head} + uncommitted changes"),
        _ => head,
    }
}

/// The first line of each tool's version output.
fn tool_versions() -> Vec<(String, String)> {
    let first_line = |program: &str, arg: &str| {
        Command::new(program)
            .arg(arg)
            .output()
            .ok()
            .map(|o| {
                // nginx prints its version on stderr.
                let text = if o.stdout.is_empty() {
                    o.stderr
                } else {
                    o.stdout
                };
                String::from_utf8_lossy(&text)
                    .lines()
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_owned()
            })
            .unwrap_or_else(|| "not installed".to_owned())
    };
    [("iperf3", "--version"), ("nginx", "-v"), ("haproxy", "-v")]
        .iter()
        .map(|(p, a)| ((*p).to_owned(), first_line(p, a)))
        .collect()
}
