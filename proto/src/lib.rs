//! The Nexus gRPC contract: the public API `nexus.v1` and the internal Raft transport
//! `nexus.raft.v1`, generated from the .proto files under `proto/nexus/`. Clients in other
//! languages generate their stubs from the same files.

/// The public API, version 1.
pub mod v1 {
    tonic::include_proto!("nexus.v1");

    impl RecallHit {
        /// The semantic memory this hit is, if it is one.
        pub fn memory(&self) -> Option<&SemanticMemory> {
            match &self.item {
                Some(recall_hit::Item::Memory(m)) => Some(m),
                _ => None,
            }
        }

        /// The conversation message this hit is, if it is one.
        pub fn message(&self) -> Option<&Message> {
            match &self.item {
                Some(recall_hit::Item::Message(m)) => Some(m),
                _ => None,
            }
        }
    }
}

/// The internal node-to-node Raft transport. Not a public API.
pub mod raft {
    pub mod v1 {
        tonic::include_proto!("nexus.raft.v1");
    }
}

/// A client for the subset of etcd v3's KV API that `nexus-bench cluster` drives etcd with
/// (proto/bench/etcd/kv.proto). Not part of Nexus.
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}

/// Encoded `FileDescriptorSet` of every .proto file, for gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/nexus_descriptor.bin"));
