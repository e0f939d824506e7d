//! The Nexus node: the library behind the `nexus` binary. See `docs/architecture.md` and the
//! top of each module for what it owns.

pub mod api;
pub mod audit;
pub mod auth;
pub mod cluster;
pub mod command;
pub mod config;
pub mod embed;
pub mod error;
pub mod events;
pub mod fuzz;
pub mod hooks;
pub mod iam;
pub mod memory;
pub mod observe;
pub mod schedules;
pub mod search;
pub mod secrets;
pub mod server;
pub mod service;
pub mod store;
pub mod tls;
pub mod tools;
pub mod workflows;

#[cfg(test)]
mod module_graph;
