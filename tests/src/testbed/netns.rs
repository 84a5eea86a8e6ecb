//! Named network namespaces (`ip netns`, bind-mounted under `/run/netns`) and running code
//! inside one.

use std::fs::File;
use std::path::{Path, PathBuf};

use nix::sched::CloneFlags;

use super::cmd;
use super::error::{Error, Result};

/// Where `ip netns add` bind-mounts named namespaces.
pub const NETNS_DIR: &str = "/run/netns";

/// The path of the named namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Creates the named namespace `name`.
pub fn add(name: &str) -> Result<()> {
    cmd::ip(&["netns", "add", name])
}

/// Deletes the named namespace `name`; a namespace that does not exist is not an error.
pub fn delete(name: &str) -> Result<()> {
    if !path(name).exists() {
        return Ok(());
    }
    cmd::ip(&["netns", "delete", name])
}

/// The names of every named namespace.
pub fn list() -> Result<Vec<String>> {
    let entries = match std::fs::read_dir(NETNS_DIR) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io("listing", NETNS_DIR)(e)),
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Runs `f` on a dedicated thread that has entered the network namespace at `netns` and
/// returns its result. Only that thread changes namespace (`setns` acts on the calling
/// thread), so sockets `f` creates live in `netns` while the rest of the process stays put.
pub fn in_netns<T, F>(netns: &Path, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> T + Send,
{
    let file = File::open(netns).map_err(Error::io("opening network namespace", netns))?;
    std::thread::scope(|scope| {
        scope
            .spawn(move || {
                nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).map_err(|source| {
                    Error::Setns {
                        path: netns.to_owned(),
                        source,
                    }
                })?;
                Ok(f())
            })
            .join()
            .map_err(|_| Error::NetnsThread {
                path: netns.to_owned(),
            })?
    })
}

/// Writes network sysctls (`net.ipv4.ip_forward` style keys) inside `netns`. `/proc/sys/net`
/// shows the namespace of the thread that opens it, so the writes happen on a thread that has
/// entered `netns`.
pub fn sysctls(netns: &Path, settings: &[(&str, &str)]) -> Result<()> {
    in_netns(netns, || {
        for (key, value) in settings {
            let file = Path::new("/proc/sys").join(key.replace('.', "/"));
            std::fs::write(&file, value).map_err(Error::io("writing sysctl", file))?;
        }
        Ok(())
    })?
}
