//! The edges of the node: gRPC services (`grpc`) and the HTTP endpoints (`http`). Handlers
//! authenticate the caller (`auth`), convert between wire and domain types, and map domain
//! errors to statuses in one place.

pub mod grpc;
pub mod http;
