//! Working inside pods' network namespaces from the agent, which lives in the node's.
//!
//! A socket keeps the network namespace it was created in, so the agent switches the current
//! thread into the pod's namespace just long enough to create a socket and switches back
//! (`setns` is per thread). Listeners and upstream sockets are made this way; the bytes then
//! flow on the agent's ordinary runtime threads.

use std::{
    fs::File,
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use nix::sched::{CloneFlags, setns};
use weft_ebpf_common::AGENT_SOCKET_MARK;

#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("cannot open network namespace {path}: {source} (has the pod gone?)")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot enter network namespace {path}: {source}")]
    Enter {
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("cannot return to the agent's own network namespace: {source}")]
    Return {
        #[source]
        source: nix::Error,
    },
}

/// A handle on a network namespace (an open nsfs file).
#[derive(Debug, Clone)]
pub struct Netns {
    file: Arc<File>,
    path: PathBuf,
}

impl Netns {
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| NetnsError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Netns {
            file: Arc::new(file),
            path: path.to_path_buf(),
        })
    }

    /// The namespace of the current thread (the agent's own).
    pub fn current() -> Result<Self, NetnsError> {
        Netns::open(Path::new("/proc/thread-self/ns/net"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `f` with the current thread inside this namespace, then returns to `home`.
    pub fn run<T>(&self, home: &Netns, f: impl FnOnce() -> T) -> Result<T, NetnsError> {
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(|source| NetnsError::Enter {
            path: self.path.clone(),
            source,
        })?;
        let out = f();
        setns(home.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|source| NetnsError::Return { source })?;
        Ok(out)
    }
}

/// Creates a TCP socket for `addr`'s family with the options every agent socket carries:
/// non-blocking (from creation: no extra `fcntl` calls), `TCP_NODELAY` (without it a two-hop path stalls on Nagle + delayed ACK) and
/// the agent's `SO_MARK`, which the capture programs never redirect.
pub fn agent_socket(addr: &std::net::SocketAddr) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(*addr),
        socket2::Type::STREAM.nonblocking(),
        Some(socket2::Protocol::TCP),
    )?;
    socket.set_tcp_nodelay(true)?;
    socket.set_mark(AGENT_SOCKET_MARK)?;
    Ok(socket)
}

/// The network-namespace cookie of the namespace a socket lives in (`SO_NETNS_COOKIE`,
/// Linux 5.14), the value sockops reads with `bpf_get_netns_cookie`.
pub fn netns_cookie(socket: &impl AsRawFd) -> std::io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: the buffer and its length describe a valid u64.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cookie)
}
