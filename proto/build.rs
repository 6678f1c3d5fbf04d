//! Compiles `proto/capkv/v1/*.proto` with the protoc binary shipped in
//! `protoc-bin-vendored`, so building needs no system protoc.

use std::path::PathBuf;

const PROTO_FILES: &[&str] = &[
    "proto/capkv/v1/common.proto",
    "proto/capkv/v1/sensor.proto",
    "proto/capkv/v1/kv.proto",
    "proto/capkv/v1/admin.proto",
    "proto/capkv/v1/raft.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build reads the protoc location from this variable.
    std::env::set_var("PROTOC", protoc);
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out_dir.join("capkv_descriptor.bin"))
        .compile_protos(PROTO_FILES, &["proto"])?;
    for file in PROTO_FILES {
        println!("cargo:rerun-if-changed={file}");
    }
    Ok(())
}
