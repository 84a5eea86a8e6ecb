//! Open loop: requests are due on a fixed schedule and each latency is measured from the time
//! its request was due. One blocking thread per connection: a thread sleeps until the next
//! due time with nanosecond timer slack, which a timer wheel with millisecond ticks (tokio's)
//! could not do without adding up to a millisecond to every latency.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::http;
use crate::{Common, Tally};

/// A response that takes longer than this counts as an error (and its latency is recorded
/// as at least this long, see below).
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(common: &Common, rate: u32) -> anyhow::Result<Tally> {
    // The default timer slack (50 µs) would be added to every sleep; one nanosecond makes
    // the schedule as exact as the scheduler allows. Threads inherit it.
    // SAFETY: PR_SET_TIMERSLACK takes an integer and changes only this thread's timer slack.
    unsafe {
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
    }
    let start = Instant::now();
    let measure_from = start + common.warmup();
    let end = measure_from + common.duration();
    let per_request = Duration::from_secs_f64(1.0 / f64::from(rate));
    let interval = per_request * common.connections;
    let results: Vec<anyhow::Result<Tally>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..common.connections)
            .map(|i| {
                // Connections are staggered so that the requests are evenly spaced overall.
                let first = start + per_request * i;
                scope.spawn(move || connection(common, first, interval, measure_from, end))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a connection thread panicked")))
            })
            .collect()
    });
    let mut total = Tally::new()?;
    for r in results {
        total.merge(r?)?;
    }
    Ok(total)
}

fn connection(
    common: &Common,
    first: Instant,
    interval: Duration,
    measure_from: Instant,
    end: Instant,
) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let host = common.addr.to_string();
    let request = http::request_with(&host, &common.path, common.close, &common.headers);
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(4096);
    let mut due = first;
    while due < end {
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let measured = due >= measure_from;
        let outcome = exchange(
            common,
            &request,
            &mut stream,
            &mut buf,
            &mut tally,
            measured,
        );
        // Latency counts from the intended send time, not the actual one (no coordinated
        // omission).
        if tally.record(outcome, due, measured) {
            stream = None;
        }
        if common.close {
            stream = None;
        }
        due += interval;
    }
    Ok(tally)
}

fn exchange(
    common: &Common,
    request: &[u8],
    stream: &mut Option<TcpStream>,
    buf: &mut Vec<u8>,
    tally: &mut Tally,
    measured: bool,
) -> anyhow::Result<()> {
    if stream.is_none() {
        let s = TcpStream::connect_timeout(&common.addr, RESPONSE_TIMEOUT)
            .with_context(|| format!("connecting to {}", common.addr))?;
        s.set_nodelay(true).context("setting TCP_NODELAY")?;
        s.set_read_timeout(Some(RESPONSE_TIMEOUT))
            .context("setting a read timeout")?;
        if measured {
            tally.connections_opened += 1;
        }
        *stream = Some(s);
    }
    let Some(s) = stream.as_mut() else {
        anyhow::bail!("no connection");
    };
    s.write_all(request).context("sending the request")?;
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).context("reading the response")?;
        buf.extend_from_slice(&chunk[..n]);
        if http::response_done(buf, n == 0, common.close)? {
            return Ok(());
        }
    }
}
