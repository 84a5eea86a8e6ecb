//! Weft's kernel programs live in the `weft` binary of this crate (`src/main.rs`), built for
//! `bpfel-unknown-none` by the agent's build script. This library target is empty.
#![no_std]
