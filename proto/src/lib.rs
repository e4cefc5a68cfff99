//! The broker's gRPC API, version 1 (`broker.v1`), generated from
//! `proto/broker/v1/*.proto` by tonic/prost at build time.
//!
//! Bytes fields are `bytes::Bytes`, so bodies are passed without copies.
//! The API's limits (name lengths, batch sizes, attribute ranges, ...) are
//! constants of [`limits`], which the broker and its clients both use.

/// Generated types and services of package `broker.v1`.
pub mod pb {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("broker.v1");
}

/// The encoded `FileDescriptorSet` of `broker.v1`, served by gRPC server
/// reflection so that tools such as grpcurl work without the .proto files.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("broker_v1_descriptor");

pub mod limits;

/// The response header a cluster node adds to a request it passed on to the
/// leader: the leader's client address (`host:port`), so that a client can
/// go there directly next time. Only a node that knows the leader's client
/// address adds it (see the README's "Cluster mode").
pub const LEADER_HEADER: &str = "x-broker-leader";
