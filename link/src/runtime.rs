//! The two runtimes of a mesh binary (agent, gateway), as in ztunnel: one for the data path,
//! and a small current-thread one on a thread of its own for admin, metrics, readiness and
//! the control-plane client, so neither competes with the other; plus the signal that starts
//! a graceful shutdown.

use std::{
    future::Future,
    pin::Pin,
    task::{Context, Poll},
    thread,
    time::Duration,
};

use tokio::{runtime::Runtime, sync::oneshot};

/// A runtime that could not be started.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the {what} runtime: {source}")]
pub struct RuntimeError {
    /// "data-path" or "admin".
    pub what: &'static str,
    #[source]
    pub source: std::io::Error,
}

/// How long a runtime's remaining tasks get when it is shut down.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(100);

/// The data path's runtime, threads named `weft-data`.
///
/// One worker means a current-thread scheduler on the calling thread: tasks woken by the I/O
/// driver run in FIFO order, so the relay tasks of many streams queue their data before the
/// HTTP/2 connection task runs once and writes it in one TLS record batch. The multi-thread
/// scheduler's LIFO slot would run that task after every single stream instead.
pub fn data_runtime(worker_threads: usize) -> Result<Runtime, RuntimeError> {
    let mut builder = if worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(worker_threads);
        builder
    };
    builder
        .thread_name("weft-data")
        .enable_all()
        .build()
        .map_err(|source| RuntimeError {
            what: "data-path",
            source,
        })
}

/// Resolves on SIGTERM (the kubelet) or SIGINT (a terminal), naming which.
pub async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            // Without signal handlers the default action (exit) applies; park forever.
            std::future::pending::<()>().await;
            "none"
        }
    }
}

/// Completes when [`AdminThread::stop`] is called (or the thread's handle is dropped).
#[derive(Debug)]
pub struct Stopped(oneshot::Receiver<()>);

impl Future for Stopped {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        Pin::new(&mut self.0).poll(cx).map(|_| ())
    }
}

/// The admin runtime's thread.
#[derive(Debug)]
pub struct AdminThread {
    stop: oneshot::Sender<()>,
    handle: thread::JoinHandle<()>,
}

impl AdminThread {
    /// Starts a current-thread runtime on a thread named `weft-admin` and runs `main` on it
    /// until the future it returns completes; that future should end soon after its
    /// [`Stopped`] does.
    pub fn spawn<F, Fut>(main: F) -> Result<AdminThread, RuntimeError>
    where
        F: FnOnce(Stopped) -> Fut + Send + 'static,
        Fut: Future<Output = ()>,
    {
        let err = |source| RuntimeError {
            what: "admin",
            source,
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(err)?;
        let (stop, stopped) = oneshot::channel::<()>();
        let handle = thread::Builder::new()
            .name("weft-admin".into())
            .spawn(move || {
                runtime.block_on(main(Stopped(stopped)));
                runtime.shutdown_timeout(SHUTDOWN_TIMEOUT);
            })
            .map_err(err)?;
        Ok(AdminThread { stop, handle })
    }

    /// Stops the runtime's main future and waits for the thread to end.
    pub fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.handle.join();
    }
}
