//! Logging as the agent sets it up (`weft_link::logging`: RUST_LOG, `--log-format`, a
//! reloadable filter for the admin `/logging`), plus the access log: events of target
//! `access` are written to stdout as their message alone, one JSON object per line whatever
//! the log format, so a log pipeline can read them without unwrapping.
//!
//! The access log is written off the request path: a request appends its line to a
//! shared buffer ([`AccessSink`]) and a dedicated thread writes the buffer to stdout in
//! batches, so a request costs a memory copy instead of a write system call (and never
//! waits for whoever reads stdout).

use std::io::Write;
use std::sync::{Arc, LazyLock};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};
use prometheus_client::metrics::counter::Counter;
use tracing_subscriber::fmt::MakeWriter;
use weft_link::logging::Logging;

use crate::admin::SetLogLevel;

/// The access log's tracing target.
pub const ACCESS_TARGET: &str = "access";

/// Installs the subscriber (`weft_link::logging`, with the access log's lines handed to an
/// [`AccessSink`]); returns the admin's log-level switch and the access log's writer, which
/// writes what is pending when dropped (keep it until the process ends).
pub fn init(json: bool) -> Result<(SetLogLevel, AccessLogGuard), String> {
    let (sink, guard) = AccessSink::start(std::io::stdout())?;
    let logging = Logging {
        json,
        bare_target: Some(ACCESS_TARGET),
        ..Logging::default()
    };
    Ok((logging.init_with_bare_writer(sink)?.set_log_level, guard))
}

/// Access-log bytes waiting for the writer thread before new lines are dropped (and
/// counted): about 3,000 lines, i.e. stdout stalled for a good fraction of a second at
/// full load. Dropping rather than waiting is deliberate: a log reader that stops reading
/// must not stop the traffic, and the loss is visible in
/// `weft_gateway_access_log_dropped_total`.
const MAX_PENDING: usize = 1 << 20;
/// Pending bytes that wake the writer at once instead of at the end of its interval.
const FLUSH_AT: usize = 64 * 1024;
/// Longest a line waits before it is written.
const FLUSH_INTERVAL: Duration = Duration::from_millis(10);

/// Access-log lines dropped because the writer fell [`MAX_PENDING`] bytes behind.
static DROPPED: LazyLock<Counter> = LazyLock::new(Counter::default);

/// The counter of dropped access-log lines, for the metrics registry.
pub fn access_log_dropped() -> Counter {
    DROPPED.clone()
}

/// The access log's `MakeWriter`: each event's line (written whole by the fmt layer) is
/// appended to the pending buffer.
#[derive(Clone)]
pub struct AccessSink {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<Pending>,
    wake: Condvar,
    /// Where lines go once the writer thread is gone (at exit): written at once.
    out: Mutex<Box<dyn Write + Send>>,
}

struct Pending {
    buf: Vec<u8>,
    closed: bool,
}

/// Stops the writer thread when dropped, after it wrote every pending line.
pub struct AccessLogGuard {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl AccessSink {
    /// A sink writing to `out` from a thread of its own.
    pub fn start(out: impl Write + Send + 'static) -> Result<(Self, AccessLogGuard), String> {
        let shared = Arc::new(Shared {
            state: Mutex::new(Pending {
                buf: Vec::with_capacity(FLUSH_AT * 2),
                closed: false,
            }),
            wake: Condvar::new(),
            out: Mutex::new(Box::new(out)),
        });
        let writer = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("access-log".to_owned())
            .spawn(move || writer.run())
            .map_err(|e| format!("cannot start the access-log writer: {e}"))?;
        let guard = AccessLogGuard {
            shared: Arc::clone(&shared),
            thread: Some(thread),
        };
        Ok((Self { shared }, guard))
    }

    fn append(&self, line: &[u8]) {
        let mut state = self.shared.state.lock();
        if state.closed {
            drop(state);
            // After shutdown nothing batches: the line is written now rather than lost.
            let mut out = self.shared.out.lock();
            let _ = out.write_all(line).and_then(|()| out.flush());
            return;
        }
        let before = state.buf.len();
        if before + line.len() > MAX_PENDING {
            drop(state);
            DROPPED.inc();
            return;
        }
        state.buf.extend_from_slice(line);
        // Wake the writer when the first line arrives (it then gathers for an interval)
        // and when a batch is full; otherwise it is already awake or about to be.
        if before == 0 || (before < FLUSH_AT && state.buf.len() >= FLUSH_AT) {
            self.shared.wake.notify_one();
        }
    }
}

impl Shared {
    /// The writer thread: waits for a first line, gathers lines for [`FLUSH_INTERVAL`]
    /// (or until [`FLUSH_AT`] bytes), writes them in one go, until closed and empty.
    fn run(&self) {
        let mut batch = Vec::with_capacity(FLUSH_AT * 2);
        loop {
            let closed = {
                let mut state = self.state.lock();
                while state.buf.is_empty() && !state.closed {
                    self.wake.wait(&mut state);
                }
                if state.buf.len() < FLUSH_AT && !state.closed {
                    self.wake.wait_for(&mut state, FLUSH_INTERVAL);
                }
                std::mem::swap(&mut state.buf, &mut batch);
                state.closed
            };
            if !batch.is_empty() {
                let mut out = self.out.lock();
                // stdout gone (a closed pipe): these lines cannot go anywhere.
                let _ = out.write_all(&batch).and_then(|()| out.flush());
                batch.clear();
            }
            if closed {
                return;
            }
        }
    }
}

impl Drop for AccessLogGuard {
    fn drop(&mut self) {
        self.shared.state.lock().closed = true;
        self.shared.wake.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One event's writer: the fmt layer formats a line, then writes it with one `write_all`.
pub struct AccessLine<'a> {
    sink: &'a AccessSink,
}

impl Write for AccessLine<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.sink.append(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for AccessSink {
    type Writer = AccessLine<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        AccessLine { sink: self }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use tracing_subscriber::{Layer as _, filter::filter_fn, layer::SubscriberExt as _};

    use super::*;

    /// A `Write` into memory the test reads afterwards; optionally held at its first write
    /// until the test lets it go (a stalled stdout).
    #[derive(Clone, Default)]
    struct Memory {
        bytes: Arc<Mutex<Vec<u8>>>,
        hold: Arc<Mutex<Option<mpsc::Receiver<()>>>>,
    }

    impl Write for Memory {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(hold) = self.hold.lock().take() {
                let _ = hold.recv();
            }
            self.bytes.lock().extend_from_slice(buf);
            Ok(buf.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Memory {
        fn lines(&self) -> Vec<String> {
            String::from_utf8(self.bytes.lock().clone())
                .unwrap()
                .lines()
                .map(str::to_owned)
                .collect()
        }
    }

    #[test]
    fn every_line_is_written_in_order_by_the_time_the_guard_is_dropped() {
        let out = Memory::default();
        let (sink, guard) = AccessSink::start(out.clone()).unwrap();
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let sink = sink.clone();
                std::thread::spawn(move || {
                    for i in 0..5_000 {
                        // As the fmt layer does: the whole line in one write.
                        let line = format!("{{\"t\":{t},\"i\":{i}}}\n");
                        sink.make_writer().write_all(line.as_bytes()).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(guard);
        let lines = out.lines();
        assert_eq!(lines.len(), 20_000);
        for t in 0..4 {
            let prefix = format!("{{\"t\":{t},");
            let mine: Vec<_> = lines.iter().filter(|l| l.starts_with(&prefix)).collect();
            let want: Vec<_> = (0..5_000).map(|i| format!("{prefix}\"i\":{i}}}")).collect();
            assert_eq!(mine, want.iter().collect::<Vec<_>>());
        }
        // After the writer stopped, a line is written at once rather than lost.
        writeln!(sink.make_writer(), "late").unwrap();
        assert_eq!(out.lines().last().map(String::as_str), Some("late"));
    }

    #[test]
    fn a_stalled_stdout_drops_and_counts_lines_instead_of_blocking() {
        let (release, hold) = mpsc::channel();
        let out = Memory {
            hold: Arc::new(Mutex::new(Some(hold))),
            ..Memory::default()
        };
        let (sink, guard) = AccessSink::start(out.clone()).unwrap();
        let dropped_before = DROPPED.get();
        let line = format!("{}\n", "x".repeat(99));
        let total = 3 * MAX_PENDING / line.len();
        // The writer is stuck in its first write; the appends must still return.
        for _ in 0..total {
            sink.make_writer().write_all(line.as_bytes()).unwrap();
        }
        let dropped = usize::try_from(DROPPED.get() - dropped_before).unwrap();
        // Let the writer go before asserting: a failed assertion would otherwise unwind into
        // the guard's join while the writer still waits.
        release.send(()).unwrap();
        drop(guard);
        // The stuck writer holds at most one batch and the buffer another, so at least a third
        // of the lines (one buffer's worth) cannot have found room.
        let buffer_lines = MAX_PENDING / line.len();
        assert!(
            dropped >= buffer_lines,
            "{dropped} of {total} dropped, expected at least {buffer_lines}"
        );
        assert_eq!(out.lines().len() + dropped, total);
    }

    #[test]
    fn access_events_reach_the_sink_as_their_message_alone() {
        let out = Memory::default();
        let (sink, guard) = AccessSink::start(out.clone()).unwrap();
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .event_format(weft_link::logging::MessageOnly)
                .with_writer(sink)
                .with_filter(filter_fn(|m| m.target() == ACCESS_TARGET)),
        );
        tracing::subscriber::with_default(subscriber, || {
            tracing::info!(target: "access", "{}", r#"{"status":200}"#);
            tracing::info!("not an access line");
            tracing::info!(target: "access", "{}", r#"{"status":503}"#);
        });
        drop(guard);
        assert_eq!(out.lines(), [r#"{"status":200}"#, r#"{"status":503}"#]);
    }
}
