//! The benchmark harness's error type.

use std::path::PathBuf;

/// Anything that can stop a benchmark run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Testbed(#[from] crate::testbed::Error),

    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("{what} failed: {detail}")]
    Tool { what: String, detail: String },

    #[error("{what} printed something that is not the expected JSON ({source}): {text}")]
    Output {
        what: String,
        text: String,
        #[source]
        source: serde_json::Error,
    },

    #[error("pinning process {pid} to CPU {cpu}: {source}")]
    Pin {
        pid: u32,
        cpu: usize,
        #[source]
        source: nix::Error,
    },

    #[error("{what} did not start listening on {addr} within {secs} s; its log {}:\n{tail}", log.display())]
    NotListening {
        what: String,
        addr: std::net::SocketAddr,
        secs: u64,
        log: PathBuf,
        tail: String,
    },
}

impl Error {
    pub(crate) fn io(
        action: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io {
            action,
            path,
            source,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
