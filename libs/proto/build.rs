//! Generates the Rust code for every `.proto` under `proto/` with a vendored
//! `protoc`, so a fresh machine needs none installed.

use std::{env, error::Error, path::PathBuf};

const PROTOS: &[&str] = &[
    "parley/bus/v1/bus.proto",
    "parley/gateway/v1/gateway.proto",
    "parley/message/v1/message.proto",
    "parley/notification/v1/notification.proto",
    "parley/presence/v1/presence.proto",
    "parley/receipt/v1/receipt.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let out_dir = PathBuf::from(env::var("OUT_DIR")?);
    let files: Vec<PathBuf> = PROTOS.iter().map(|p| root.join(p)).collect();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    // The transport helper `Client::connect(dst)` would clash with the gateway's
    // `Connect` RPC; clients are built from a `Channel` with `Client::new`.
    tonic_prost_build::configure()
        .build_transport(false)
        .file_descriptor_set_path(out_dir.join("parley_descriptor.bin"))
        .compile_with_config(config, &files, &[root])?;
    Ok(())
}
