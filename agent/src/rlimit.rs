//! The open-files limit. Every proxied connection holds two sockets (client and upstream),
//! every HBONE connection one, so the usual soft limit of 1024 caps a node at a few hundred
//! connections. The agent raises its soft limit to the hard limit at start, as Envoy and
//! ztunnel deployments do, logs the result and exports it (`weft_open_files_limit`).

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The open-files limit before and after start.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FdLimit {
    /// The soft limit the process started with.
    pub before: u64,
    /// The soft limit now: the hard limit unless raising it failed.
    pub soft: u64,
    pub hard: u64,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot {what} the open-files limit (RLIMIT_NOFILE): {source}")]
pub struct FdLimitError {
    what: &'static str,
    #[source]
    source: nix::Error,
}

/// Raises the soft open-files limit to the hard limit. Lowering is never done: a soft limit
/// already at the hard one is left alone.
pub fn raise_fd_limit() -> Result<FdLimit, FdLimitError> {
    let (before, hard) = getrlimit(Resource::RLIMIT_NOFILE).map_err(|source| FdLimitError {
        what: "read",
        source,
    })?;
    if before >= hard {
        return Ok(FdLimit {
            before,
            soft: before,
            hard,
        });
    }
    setrlimit(Resource::RLIMIT_NOFILE, hard, hard).map_err(|source| FdLimitError {
        what: "raise",
        source,
    })?;
    Ok(FdLimit {
        before,
        soft: hard,
        hard,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_limit() {
        let limit = raise_fd_limit().unwrap();
        assert_eq!(limit.soft, limit.hard);
        assert!(limit.before <= limit.soft);
        assert_eq!(
            getrlimit(Resource::RLIMIT_NOFILE).unwrap(),
            (limit.hard, limit.hard)
        );
    }
}
