//! Compiles the .proto files with protox (pure Rust, no system protoc) and generates the tonic
//! services and prost messages. The encoded FileDescriptorSet is kept for gRPC reflection.

use prost::Message;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "nexus/v1/common.proto",
    "nexus/v1/memory.proto",
    "nexus/v1/conversation.proto",
    "nexus/v1/search.proto",
    "nexus/v1/cluster.proto",
    "nexus/v1/iam.proto",
    "nexus/v1/secrets.proto",
    "nexus/v1/audit.proto",
    "nexus/v1/tools.proto",
    "nexus/v1/schedules.proto",
    "nexus/v1/events.proto",
    "nexus/v1/workflows.proto",
    "nexus/v1/hooks.proto",
    "nexus/raft/v1/raft.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    for p in PROTOS {
        println!("cargo:rerun-if-changed={}", root.join(p).display());
    }
    let fds = protox::compile(PROTOS, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("nexus_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    // etcd's KV subset, for the benchmark that compares a Nexus cluster with an etcd cluster.
    println!(
        "cargo:rerun-if-changed={}",
        root.join("bench/etcd/kv.proto").display()
    );
    let etcd = protox::compile(["etcd/kv.proto"], [root.join("bench")])?;
    tonic_prost_build::configure()
        .build_server(false)
        .build_client(true)
        .compile_fds(etcd)?;
    Ok(())
}
