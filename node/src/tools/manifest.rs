//! A WebAssembly plugin's manifest, the stored `config` of a `wasm` tool: the grants it asks
//! for, those a tenant admin gave, its limits and the module it runs (docs/plugins.md). The
//! runtime that honours it is `service::tools::wasm`.

use serde::{Deserialize, Serialize};

use crate::error::NexusError;

/// The grants a manifest may ask for.
pub const GRANTS: &[&str] = &["clock", "http", "tools"];

/// A plugin's manifest, the `config` of a `wasm` tool: what it asks for, what a tenant admin
/// granted, its limits and the module it runs.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Grants the plugin asks for: `clock`, `http`, `tools`.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Those a tenant admin granted (set by the server, never by the registration).
    #[serde(default)]
    pub granted: Vec<String>,
    #[serde(default)]
    pub limits: Limits,
    /// Set by the server: the module's SHA-256 and size.
    #[serde(default)]
    pub module_sha256: String,
    #[serde(default)]
    pub module_bytes: u64,
}

/// A plugin's limits; 0 takes the node's default (`[plugins]`, `config::PluginConfig`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    #[serde(default)]
    pub fuel: u64,
    #[serde(default)]
    pub memory_bytes: u64,
    #[serde(default)]
    pub timeout_ms: u64,
}

impl Manifest {
    pub fn parse(field: &str, text: &str) -> Result<Manifest, NexusError> {
        let text = if text.trim().is_empty() { "{}" } else { text };
        serde_json::from_str(text).map_err(|e| {
            NexusError::invalid(
                field,
                format!("is not a plugin manifest: {e} (docs/plugins.md)"),
            )
        })
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).expect("a manifest serializes")
    }

    pub fn granted(&self, grant: &str) -> bool {
        self.granted.iter().any(|g| g == grant)
    }
}
