//! Compiles the `.proto` files with protox (a pure-Rust protobuf compiler, so no system
//! `protoc` is needed) and generates prost messages and tonic clients and servers from the
//! resulting descriptor set. The encoded descriptor set is kept in `OUT_DIR` too, so tools
//! can render messages as canonical protobuf JSON.

use std::path::PathBuf;

use anyhow::Context;

const PROTOS: &[&str] = &[
    "weft/discovery/v1/discovery.proto",
    "weft/discovery/v1/resources.proto",
    "weft/discovery/v1/gateway.proto",
    "weft/identity/v1/certificates.proto",
];

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-changed=proto");
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").context("OUT_DIR is not set")?);

    let mut compiler = protox::Compiler::new(["proto"]).context("proto include path")?;
    // Source info carries the .proto comments into the generated Rust docs.
    compiler.include_source_info(true).include_imports(true);
    compiler
        .open_files(PROTOS)
        .context("compiling .proto files")?;

    std::fs::write(
        out_dir.join("weft_descriptor.bin"),
        compiler.encode_file_descriptor_set(),
    )
    .context("writing the descriptor set")?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Ordered maps make encodings deterministic, so equal resources compare and encode
        // equal and dumps are stable.
        .btree_map(".")
        .compile_fds(compiler.file_descriptor_set())
        .context("generating Rust code from the descriptor set")?;
    Ok(())
}
