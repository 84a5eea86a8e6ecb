//! Reading what a process tree costs (CPU time, resident memory) from `/proc`, and pinning a
//! process tree to one CPU.

use std::collections::BTreeSet;

use nix::sched::CpuSet;
use nix::unistd::Pid;

/// Clock ticks per second of `/proc/<pid>/stat` times (`sysconf(_SC_CLK_TCK)`).
fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks > 0 { ticks as f64 } else { 100.0 }
}

/// `pid` and all its descendants that exist now.
pub fn tree(pid: u32) -> Vec<u32> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        if !seen.insert(p) {
            continue;
        }
        for tid in threads(p) {
            let path = format!("/proc/{p}/task/{tid}/children");
            if let Ok(text) = std::fs::read_to_string(path) {
                todo.extend(
                    text.split_whitespace()
                        .filter_map(|c| c.parse::<u32>().ok()),
                );
            }
        }
    }
    seen.into_iter()
        .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
        .collect()
}

fn threads(pid: u32) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|entries| {
            entries
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// CPU seconds a process spent in user space (its own code: TLS, HTTP/2, copying) and in the
/// kernel on its behalf (system calls, and the TCP stack work they do).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    pub user: f64,
    pub system: f64,
}

impl CpuTimes {
    pub fn total(self) -> f64 {
        self.user + self.system
    }
}

impl std::ops::Add for CpuTimes {
    type Output = CpuTimes;
    fn add(self, rhs: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user + rhs.user,
            system: self.system + rhs.system,
        }
    }
}

impl std::ops::Sub for CpuTimes {
    type Output = CpuTimes;
    fn sub(self, rhs: CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - rhs.user,
            system: self.system - rhs.system,
        }
    }
}

/// User and system CPU seconds of one process (all its threads), from `/proc/<pid>/stat`.
pub fn cpu_times(pid: u32) -> Option<CpuTimes> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name, which is in parentheses and may contain anything.
    let mut fields = text[text.rfind(')')? + 1..].split_whitespace();
    // utime and stime are fields 14 and 15; the first field after ')' is field 3.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(CpuTimes {
        user: utime as f64 / clock_ticks(),
        system: stime as f64 / clock_ticks(),
    })
}

/// CPU times of every process in the trees of `pids`, summed.
pub fn cpu_times_of(pids: &[u32]) -> CpuTimes {
    pids.iter()
        .flat_map(|p| tree(*p))
        .filter_map(cpu_times)
        .fold(CpuTimes::default(), |sum, t| sum + t)
}

/// CPU seconds the whole machine was busy, summed over its CPUs, from the `cpu` line of
/// `/proc/stat`: user, nice, system, irq and softirq time. Idle, iowait and steal (time the
/// hypervisor gave to someone else) are not work done here; guest time is already in user.
///
/// Unlike [`cpu_times_of`], this includes work no process is charged for, such as softirqs
/// that run in the idle task's context, and every process on the path, load generator and
/// server included: what a request costs the machine.
pub fn machine_busy() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    parse_busy(&text)
}

fn parse_busy(stat: &str) -> Option<f64> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal ...
    let busy = [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| fields.get(i).copied())
        .sum::<Option<u64>>()?;
    Some(busy as f64 / clock_ticks())
}

/// `VmRSS` and `VmHWM` (peak) of one process, in KiB, from `/proc/<pid>/status`.
pub fn memory_kib(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Current and peak resident memory summed over the trees of `pids`, in MiB.
pub fn memory_mib_of(pids: &[u32]) -> (f64, f64) {
    let (rss, hwm) = pids
        .iter()
        .flat_map(|p| tree(*p))
        .filter_map(memory_kib)
        .fold((0, 0), |(r, h), (r1, h1)| (r + r1, h + h1));
    (rss as f64 / 1024.0, hwm as f64 / 1024.0)
}

/// Pins every thread of every process in the tree of `pid` to `cpu`. New threads inherit
/// the mask of the thread that creates them, so pinning a running process is enough.
pub fn pin_tree(pid: u32, cpu: usize) -> nix::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu)?;
    for p in tree(pid) {
        for tid in threads(p) {
            let tid = Pid::from_raw(i32::try_from(tid).unwrap_or(i32::MAX));
            match nix::sched::sched_setaffinity(tid, &set) {
                // A thread that exited meanwhile has nothing left to pin.
                Ok(()) | Err(nix::Error::ESRCH) => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process() {
        let me = std::process::id();
        assert!(tree(me).contains(&me));
        assert!(cpu_times(me).is_some_and(|t| t.total() >= 0.0));
        let (rss, hwm) = memory_kib(me).unwrap();
        assert!(rss > 0 && hwm >= rss);
    }

    #[test]
    fn machine_busy_counts_work_not_idle_or_steal() {
        let ticks = clock_ticks();
        let stat = "cpu  100 2 30 900 7 4 5 60 0 0\ncpu0 50 1 15 450 3 2 2 30 0 0\n";
        assert_eq!(parse_busy(stat), Some(141.0 / ticks));
        assert_eq!(
            parse_busy("cpu0 1 2 3 4 5 6 7\n"),
            None,
            "no machine-wide line"
        );
        assert_eq!(
            parse_busy("cpu  1 2 x 4 5 6 7\n"),
            None,
            "a field that is not a number"
        );
        assert_eq!(
            parse_busy("cpu  1 2 3 4\n"),
            None,
            "irq and softirq missing"
        );
        assert!(machine_busy().is_some_and(|b| b > 0.0));
    }
}
