//! What the build and the tests need, checked and installed when missing: root, Debian
//! packages, the nightly toolchain's rust-src (for `-Z build-std=core`) and bpf-linker 0.10
//! (see ../shared/TOOLCHAIN.md for why these versions).

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context as _, bail};

use crate::run::run;

/// Debian packages the testbed and the tests run: `ip`, curl, the test HTTP server, `ps`,
/// `ping` and tcpdump (the mutual-TLS test captures the link between nodes); `setpriv` and `unshare` (util-linux) and `sha256sum` (coreutils) are
/// essential packages, always there. Then what `cargo xtask bench` runs (its quick run is
/// part of `cargo xtask test`): iperf3, nginx (server, and with its stream module a peer
/// proxy), haproxy, openssl for the peers' certificates, and a TTF font for chart labels.
/// The edge gateway's tests add h2load (nghttp2-client), an HTTP/2 load generator and
/// client, and redis-server, the shared limits store several gateways count in (the tests
/// start their own). The DNS tests run a resolver of their own (dnsmasq-base: the binary,
/// no system service) and query with dig (bind9-dnsutils).
const DEBIAN_PACKAGES: &[&str] = &[
    "iproute2",
    "curl",
    "python3",
    "procps",
    "iputils-ping",
    "tcpdump",
    "iperf3",
    "nginx",
    "libnginx-mod-stream",
    "haproxy",
    "openssl",
    "fonts-dejavu-core",
    "nghttp2-client",
    "redis-server",
    "dnsmasq-base",
    "bind9-dnsutils",
];

/// The bpf-linker the eBPF build needs: 0.11+ wants a system LLVM that Debian 12 lacks.
const BPF_LINKER_VERSION: &str = "0.10.0";
const BPF_LINKER_SERIES: &str = "0.10.";

/// Checks everything and installs what is missing, one line per item.
pub fn ensure() -> anyhow::Result<()> {
    require_root()?;
    debian_packages()?;
    nightly_rust_src()?;
    bpf_linker()?;
    Ok(())
}

/// `cargo xtask setup`.
pub fn command() -> anyhow::Result<()> {
    ensure()?;
    println!("setup: everything is in place");
    Ok(())
}

/// Fails unless root: the testbed creates namespaces and cgroups and loads eBPF.
pub fn require_root() -> anyhow::Result<()> {
    if weft_tests::is_root() {
        println!("setup: running as root: ok");
        Ok(())
    } else {
        bail!(
            "setup: this needs root (it installs packages, creates network namespaces and \
             cgroups, and loads eBPF programs); run it as root, e.g. `sudo -E cargo xtask ...`"
        )
    }
}

fn debian_packages() -> anyhow::Result<()> {
    let missing: Vec<&str> = DEBIAN_PACKAGES
        .iter()
        .copied()
        .filter(|p| !dpkg_installed(p))
        .collect();
    if missing.is_empty() {
        println!(
            "setup: Debian packages {}: installed",
            DEBIAN_PACKAGES.join(", ")
        );
        return Ok(());
    }
    println!(
        "setup: installing Debian packages {} (apt-get)...",
        missing.join(", ")
    );
    let apt = |args: &[&str]| {
        let mut c = Command::new("apt-get");
        c.args(args).env("DEBIAN_FRONTEND", "noninteractive");
        c
    };
    run(&mut apt(&["update", "-q"])).context("setup: `apt-get update` failed")?;
    let mut install = apt(&["install", "-y", "-q", "--no-install-recommends"]);
    install.args(&missing);
    run(&mut install).with_context(|| {
        format!(
            "setup: could not install Debian packages {}",
            missing.join(", ")
        )
    })?;
    let still: Vec<&str> = missing.into_iter().filter(|p| !dpkg_installed(p)).collect();
    if !still.is_empty() {
        bail!(
            "setup: Debian packages {} are still not installed",
            still.join(", ")
        );
    }
    Ok(())
}

fn dpkg_installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| {
            o.status.success() && String::from_utf8_lossy(&o.stdout).contains("ok installed")
        })
}

/// The nightly sysroot, if a nightly toolchain is installed.
fn nightly_sysroot() -> Option<PathBuf> {
    let out = Command::new("rustc")
        .args(["+nightly", "--print", "sysroot"])
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

fn nightly_rust_src() -> anyhow::Result<()> {
    let sysroot = match nightly_sysroot() {
        Some(s) => {
            println!("setup: nightly toolchain: installed");
            s
        }
        None => {
            println!("setup: installing the nightly toolchain (rustup, minimal profile)...");
            run(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
            ]))
            .context("setup: could not install the nightly toolchain with rustup")?;
            nightly_sysroot()
                .context("setup: the nightly toolchain is still missing after installing it")?
        }
    };
    let lock = sysroot.join("lib/rustlib/src/rust/library/Cargo.lock");
    if lock.is_file() {
        println!("setup: nightly rust-src: installed");
        return Ok(());
    }
    println!("setup: installing nightly rust-src (rustup component add)...");
    run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", "nightly"]))
        .context("setup: could not add the rust-src component to the nightly toolchain")?;
    if !lock.is_file() {
        bail!(
            "setup: nightly rust-src is installed but {} is missing",
            lock.display()
        );
    }
    Ok(())
}

/// `bpf-linker --version` prints `bpf-linker 0.10.0`.
fn bpf_linker_version() -> Option<String> {
    let out = Command::new("bpf-linker").arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_whitespace().nth(1).map(str::to_owned)
}

fn bpf_linker() -> anyhow::Result<()> {
    match bpf_linker_version() {
        Some(v) if v.starts_with(BPF_LINKER_SERIES) => {
            println!("setup: bpf-linker {v}: installed");
            return Ok(());
        }
        Some(v) => println!("setup: bpf-linker {v} is not {BPF_LINKER_SERIES}x"),
        None => {}
    }
    println!("setup: installing bpf-linker {BPF_LINKER_VERSION} (about a minute)...");
    let mut install = Command::new("cargo");
    install
        .args([
            "+nightly",
            "install",
            "bpf-linker",
            "--version",
            BPF_LINKER_VERSION,
            "--locked",
            "--force",
        ])
        // This xtask runs under `cargo run`, whose environment pins the stable toolchain.
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .env_remove("CARGO");
    run(&mut install)
        .with_context(|| format!("setup: could not install bpf-linker {BPF_LINKER_VERSION}"))?;
    match bpf_linker_version() {
        Some(v) if v.starts_with(BPF_LINKER_SERIES) => Ok(()),
        other => bail!(
            "setup: installed bpf-linker {BPF_LINKER_VERSION}, but `bpf-linker --version` says {other:?}; \
             is ~/.cargo/bin on PATH?"
        ),
    }
}
