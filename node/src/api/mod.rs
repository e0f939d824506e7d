//! The edges of the node: gRPC services (`grpc`), the HTTP endpoints (`http`), the MCP
//! server (`mcp`) and the WebSocket API (`ws`). Handlers
//! authenticate the caller (`auth`), convert between wire and domain types, and map domain
//! errors to statuses in one place.

pub mod gate;
pub mod grpc;
pub mod http;
pub mod inbound;
pub mod mcp;
pub mod ws;
