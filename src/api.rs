//! The generated protobuf and gRPC code of `agenda.v1`, and the encoded
//! descriptor set that reflection serves and the scope map is read from.

#![allow(clippy::all, missing_docs)]

tonic::include_proto!("agenda.v1");

/// The encoded `FileDescriptorSet` of every agenda proto, custom options included.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("agenda_descriptor");
