//! The broker's gRPC API, version 1 (`broker.v1`), generated from
//! `proto/broker/v1/*.proto` by tonic/prost at build time.
//!
//! Bytes fields are `bytes::Bytes`, so bodies are passed without copies.

/// Generated types and services of package `broker.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("broker.v1");
}

/// The encoded `FileDescriptorSet` of `broker.v1`, served by gRPC server
/// reflection so that tools such as grpcurl work without the .proto files.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("broker_v1_descriptor");

/// The limits of the API: part of the contract, like the messages. The
/// broker enforces them and clients may rely on them; both take them from
/// here.
pub mod limits {
    /// The largest gRPC message either side sends or accepts: a batch of
    /// 100 messages of the largest size (1 MiB each), with room for
    /// attributes and framing.
    pub const MAX_GRPC_MESSAGE_BYTES: usize = 128 * 1024 * 1024;
}
