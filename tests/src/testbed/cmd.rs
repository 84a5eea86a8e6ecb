//! Running external commands (mostly `ip`) with errors that quote the command line and its
//! stderr.

use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use super::error::{Error, Result};

/// The command line of `cmd`, for messages.
pub fn display(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| {
            let a = a.to_string_lossy();
            if a.is_empty() || a.contains(char::is_whitespace) {
                format!("'{a}'")
            } else {
                a.into_owned()
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Describes how a process ended: `exit code 1`, `killed by signal 9`.
pub fn describe_status(status: ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt as _;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => status.to_string(),
    }
}

/// The exit code a shell would report: the code, or 128 + signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt as _;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Runs `cmd` to completion, capturing its output; a non-zero exit is an error.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let output = output(cmd)?;
    if output.status.success() {
        Ok(output)
    } else {
        Err(Error::Command {
            command: display(cmd),
            status: describe_status(output.status),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        })
    }
}

/// Runs `cmd` to completion, capturing its output, whatever its exit status.
pub fn output(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            command: display(cmd),
            source,
        })
}

/// `ip <args>`, failing with the command line and stderr.
pub fn ip(args: &[&str]) -> Result<()> {
    run(Command::new("ip").args(args)).map(drop)
}

/// `ip -n <netns> <args>`.
pub fn ip_in(netns: &str, args: &[&str]) -> Result<()> {
    run(Command::new("ip").arg("-n").arg(netns).args(args)).map(drop)
}

/// Runs `cmd` capturing its output, killing it (SIGKILL) if it has not finished after
/// `timeout`; a killed command is an [`Error::Timeout`].
pub fn output_with_timeout(cmd: &mut Command, timeout: Duration) -> Result<Output> {
    let command = display(cmd);
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
    // Read both pipes on threads so a chatty child cannot block on a full pipe.
    let mut stdout = child.stdout.take();
    let mut stderr = child.stderr.take();
    let read_all = |pipe: Option<&mut dyn std::io::Read>| {
        let mut buf = Vec::new();
        if let Some(p) = pipe {
            let _ = p.read_to_end(&mut buf);
        }
        buf
    };
    std::thread::scope(|s| {
        let out = s.spawn(|| read_all(stdout.as_mut().map(|p| p as &mut dyn std::io::Read)));
        let err = s.spawn(|| read_all(stderr.as_mut().map(|p| p as &mut dyn std::io::Read)));
        let deadline = Instant::now() + timeout;
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break Ok(status),
                Ok(None) if Instant::now() >= deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    break Err(Error::Timeout {
                        what: format!("`{command}` to finish"),
                        secs: timeout.as_secs(),
                    });
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(source) => {
                    break Err(Error::Spawn {
                        command: command.clone(),
                        source,
                    });
                }
            }
        };
        let stdout = out.join().unwrap_or_default();
        let stderr = err.join().unwrap_or_default();
        status.map(|status| Output {
            status,
            stdout,
            stderr,
        })
    })
}
