//! Closed loop: every connection sends its next request as soon as the previous response is
//! complete. All connections share one thread, so the generator costs one CPU at most and the
//! harness can pin it.

use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http;
use crate::{Common, Tally};

/// After an error a connection waits this long before it tries again, so that a dead server
/// shows up as a count of errors rather than a busy loop.
const ERROR_BACKOFF: Duration = Duration::from_millis(10);
/// A response that takes longer than this counts as an error.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

pub fn run(common: &Common) -> anyhow::Result<Tally> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the runtime")?;
    runtime.block_on(async {
        let start = Instant::now();
        let measure_from = start + common.warmup();
        let end = measure_from + common.duration();
        let mut tasks = Vec::new();
        for _ in 0..common.connections {
            let common = common.clone();
            tasks.push(tokio::spawn(connection(common, measure_from, end)));
        }
        let mut total = Tally::new()?;
        for task in tasks {
            total.merge(task.await.context("a connection task panicked")??)?;
        }
        Ok(total)
    })
}

async fn connection(common: Common, measure_from: Instant, end: Instant) -> anyhow::Result<Tally> {
    let mut tally = Tally::new()?;
    let host = common.addr.to_string();
    let request = http::request_with(&host, &common.path, common.close, &common.headers);
    let mut stream: Option<TcpStream> = None;
    let mut buf = Vec::with_capacity(4096);
    loop {
        let sent_at = Instant::now();
        if sent_at >= end {
            return Ok(tally);
        }
        let measured = sent_at >= measure_from;
        let result = tokio::time::timeout(
            RESPONSE_TIMEOUT,
            exchange(
                &common,
                &request,
                &mut stream,
                &mut buf,
                &mut tally,
                measured,
            ),
        )
        .await
        .unwrap_or_else(|_| Err(anyhow::anyhow!("no response within {RESPONSE_TIMEOUT:?}")));
        if tally.record(result, sent_at.into_std(), measured) {
            stream = None;
            tokio::time::sleep(ERROR_BACKOFF).await;
        }
        if common.close {
            stream = None;
        }
    }
}

/// One request and its response, on `stream` (connecting first if there is none).
async fn exchange(
    common: &Common,
    request: &[u8],
    stream: &mut Option<TcpStream>,
    buf: &mut Vec<u8>,
    tally: &mut Tally,
    measured: bool,
) -> anyhow::Result<()> {
    if stream.is_none() {
        let s = TcpStream::connect(common.addr)
            .await
            .with_context(|| format!("connecting to {}", common.addr))?;
        s.set_nodelay(true).context("setting TCP_NODELAY")?;
        if measured {
            tally.connections_opened += 1;
        }
        *stream = Some(s);
    }
    let Some(s) = stream.as_mut() else {
        anyhow::bail!("no connection");
    };
    s.write_all(request).await.context("sending the request")?;
    buf.clear();
    let mut chunk = [0u8; 8192];
    loop {
        let n = s.read(&mut chunk).await.context("reading the response")?;
        buf.extend_from_slice(&chunk[..n]);
        if http::response_done(buf, n == 0, common.close)? {
            return Ok(());
        }
    }
}
