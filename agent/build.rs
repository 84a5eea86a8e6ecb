//! Builds the kernel programs (`../ebpf`) for `bpfel-unknown-none` with the nightly toolchain
//! and leaves the object in `OUT_DIR/weft`, where `src/capture` embeds it.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../ebpf");
    let root = root.to_str().context("the workspace path is not UTF-8")?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "weft-ebpf",
            root_dir: root,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
    .context(
        "building the eBPF programs failed; `cargo xtask test` installs what they need \
         (nightly rust-src, bpf-linker 0.10.0)",
    )
}
