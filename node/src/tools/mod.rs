//! The tool registry: each tenant's registered tools and its `http.request` policy, a
//! state-machine family (`tools`, tenant-first keys) replicated through Raft, so every node
//! can run every tool. Built-in tools are not stored: every tenant has them
//! (`service::tools::builtin`). What a call does is the service's (`service::tools`).

pub mod composite;
pub mod manifest;

use serde::{Deserialize, Serialize};

use crate::error::NexusError;
use crate::store::{keys, ApplyCtx, Store, StoreError, CF_TOOLS};

const TAG_TOOL: u8 = b'T';
const TAG_HTTP_POLICY: u8 = b'P';
const TAG_MOUNT: u8 = b'M';
const TAG_MODULE: u8 = b'W';

/// Longest tool name.
pub const MAX_NAME_BYTES: usize = 128;
/// Largest schema or configuration, JSON text.
pub const MAX_DEFINITION_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ToolKind {
    Builtin,
    Composite,
    /// A tool of an external MCP server the tenant mounted.
    Mcp,
    /// A WebAssembly plugin (`service::tools::wasm`): its module is kept beside it.
    Wasm,
}

impl ToolKind {
    pub fn name(self) -> &'static str {
        match self {
            ToolKind::Builtin => "builtin",
            ToolKind::Composite => "composite",
            ToolKind::Mcp => "mcp",
            ToolKind::Wasm => "wasm",
        }
    }

    pub fn parse(name: &str) -> Option<ToolKind> {
        [
            ToolKind::Builtin,
            ToolKind::Composite,
            ToolKind::Mcp,
            ToolKind::Wasm,
        ]
        .into_iter()
        .find(|k| k.name() == name)
    }
}

/// An external MCP server mounted under a prefix: its tools are listed and called as
/// `PREFIX.TOOL`. Either a stdio command the node starts (only commands the node's
/// `[mcp_client] commands` allows) with `args` and `env`, or a server reached over streamable
/// HTTP at a URL (within the tenant's http policy) with headers. Values of `env` and of the
/// headers may hold `${secrets.NAME}`.
///
/// Stored (and in the log) as it was before HTTP mounts: an HTTP mount keeps its URL in
/// `command` and its headers in `env` ([`McpMount::url`]), so no format changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct McpMount {
    pub prefix: String,
    /// The command, or an HTTP mount's URL.
    pub command: String,
    pub args: Vec<String>,
    /// The command's environment, or an HTTP mount's headers.
    pub env: std::collections::BTreeMap<String, String>,
    /// Longest a call may take (0: the node's default).
    pub timeout_ms: u64,
    pub created_at_ms: i64,
}

impl McpMount {
    /// The URL of a mount reached over streamable HTTP (its headers are `env`); None for a
    /// stdio command.
    pub fn url(&self) -> Option<&str> {
        is_http_url(&self.command).then_some(self.command.as_str())
    }
}

/// Whether `text` names an http or https URL (what tells an HTTP mount from a command).
pub fn is_http_url(text: &str) -> bool {
    text.starts_with("http://") || text.starts_with("https://")
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolRecord {
    pub name: String,
    pub version: String,
    pub description: String,
    /// JSON Schema of the arguments (JSON text).
    pub input_schema: String,
    /// JSON Schema of the output (JSON text; `{}` when it says nothing).
    pub output_schema: String,
    pub kind: ToolKind,
    /// The kind's definition (JSON text): a composite's steps.
    pub config: String,
    pub created_at_ms: i64,
    pub updated_at_ms: i64,
}

/// Which hosts `http.request` may reach for a tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpPolicy {
    pub allow_hosts: Vec<String>,
    pub allow_private: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToolOp {
    /// Stores the tool, replacing one of the same name (keeping its creation time).
    Register {
        tool: ToolRecord,
    },
    Delete {
        name: String,
    },
    SetHttpPolicy {
        policy: HttpPolicy,
    },
    /// Mounts (or replaces) an external MCP server under its prefix.
    Mount {
        mount: McpMount,
    },
    Unmount {
        prefix: String,
    },
    /// Stores a WebAssembly plugin and its module (replacing one of the same name; its
    /// config, the manifest, comes with no grants).
    RegisterPlugin {
        tool: ToolRecord,
        #[serde(with = "serde_bytes")]
        module: Vec<u8>,
    },
    /// Sets a plugin's grants, each one its stored manifest asks for (checked in apply,
    /// against the manifest of the plugin as it is then, whatever was registered meanwhile).
    Grant {
        name: String,
        grants: Vec<String>,
    },
}

impl ToolOp {
    pub fn name(&self) -> &'static str {
        match self {
            ToolOp::Register { .. } => "tools.register",
            ToolOp::Delete { .. } => "tools.delete",
            ToolOp::SetHttpPolicy { .. } => "tools.set_http_policy",
            ToolOp::Mount { .. } => "tools.mount",
            ToolOp::Unmount { .. } => "tools.unmount",
            ToolOp::RegisterPlugin { .. } => "tools.register",
            ToolOp::Grant { .. } => "tools.grant",
        }
    }

    pub fn approx_size(&self) -> usize {
        match self {
            ToolOp::Register { tool } | ToolOp::RegisterPlugin { tool, .. } => {
                self.module_len()
                    + tool.name.len()
                    + tool.description.len()
                    + tool.input_schema.len()
                    + tool.output_schema.len()
                    + tool.config.len()
                    + 64
            }
            ToolOp::Delete { name } => name.len() + 16,
            ToolOp::SetHttpPolicy { policy } => {
                policy
                    .allow_hosts
                    .iter()
                    .map(|h| h.len() + 4)
                    .sum::<usize>()
                    + 16
            }
            ToolOp::Mount { mount } => {
                mount.prefix.len()
                    + mount.command.len()
                    + mount.args.iter().map(|a| a.len() + 4).sum::<usize>()
                    + mount
                        .env
                        .iter()
                        .map(|(k, v)| k.len() + v.len() + 8)
                        .sum::<usize>()
                    + 32
            }
            ToolOp::Unmount { prefix } => prefix.len() + 16,
            ToolOp::Grant { name, grants } => {
                name.len() + grants.iter().map(|g| g.len() + 4).sum::<usize>() + 16
            }
        }
    }

    fn module_len(&self) -> usize {
        match self {
            ToolOp::RegisterPlugin { module, .. } => module.len(),
            _ => 0,
        }
    }

    /// What the op acts on, for the audit log.
    pub fn resource(&self) -> String {
        match self {
            ToolOp::Register { tool } | ToolOp::RegisterPlugin { tool, .. } => {
                format!("tool/{}@{}", tool.name, tool.version)
            }
            ToolOp::Grant { name, .. } => format!("tool/{name} grants"),
            ToolOp::Delete { name } => format!("tool/{name}"),
            ToolOp::SetHttpPolicy { .. } => "tools/http-policy".into(),
            ToolOp::Mount { mount } => format!("mcp/{} {}", mount.prefix, mount.command),
            ToolOp::Unmount { prefix } => format!("mcp/{prefix}"),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ToolReply {
    Tool(ToolRecord),
    Deleted,
    HttpPolicy(HttpPolicy),
    Mounted(McpMount),
}

fn tool_key(tenant: &str, name: &str) -> Vec<u8> {
    keys::tenant_tagged(tenant, TAG_TOOL, name.as_bytes())
}

fn policy_key(tenant: &str) -> Vec<u8> {
    keys::tenant_tagged(tenant, TAG_HTTP_POLICY, &[])
}

fn module_key(tenant: &str, name: &str) -> Vec<u8> {
    keys::tenant_tagged(tenant, TAG_MODULE, name.as_bytes())
}

fn mount_key(tenant: &str, prefix: &str) -> Vec<u8> {
    keys::tenant_tagged(tenant, TAG_MOUNT, prefix.as_bytes())
}

pub fn apply(
    ctx: &mut ApplyCtx<'_>,
    tenant: &str,
    op: &ToolOp,
) -> Result<Result<ToolReply, NexusError>, StoreError> {
    match op {
        ToolOp::Register { tool } => {
            let key = tool_key(tenant, &tool.name);
            let mut tool = tool.clone();
            if let Some(old) = ctx.get_decoded::<ToolRecord>(CF_TOOLS, &key)? {
                tool.created_at_ms = old.created_at_ms;
            }
            ctx.put(CF_TOOLS, &key, &tool);
            // A plugin replaced by a tool of another kind leaves no module behind.
            ctx.delete(CF_TOOLS, &module_key(tenant, &tool.name));
            Ok(Ok(ToolReply::Tool(tool)))
        }
        ToolOp::RegisterPlugin { tool, module } => {
            let key = tool_key(tenant, &tool.name);
            let mut tool = tool.clone();
            if let Some(old) = ctx.get_decoded::<ToolRecord>(CF_TOOLS, &key)? {
                tool.created_at_ms = old.created_at_ms;
            }
            ctx.put(CF_TOOLS, &key, &tool);
            ctx.put(
                CF_TOOLS,
                &module_key(tenant, &tool.name),
                &Module(module.clone()),
            );
            Ok(Ok(ToolReply::Tool(tool)))
        }
        ToolOp::Grant { name, grants } => {
            let key = tool_key(tenant, name);
            let Some(mut tool) = ctx.get_decoded::<ToolRecord>(CF_TOOLS, &key)? else {
                return Ok(Err(NexusError::NotFound(format!("tool {name} not found"))));
            };
            if tool.kind != ToolKind::Wasm {
                return Ok(Err(NexusError::precondition(
                    "name",
                    format!(
                        "{name} is a {} tool; only plugins take grants",
                        tool.kind.name()
                    ),
                )));
            }
            let mut manifest = match manifest::Manifest::parse("config", &tool.config) {
                Ok(m) => m,
                Err(e) => return Ok(Err(e)),
            };
            if let Some((i, g)) = grants
                .iter()
                .enumerate()
                .find(|(_, g)| !manifest.permissions.contains(g))
            {
                return Ok(Err(NexusError::invalid(
                    format!("grants[{i}]"),
                    format!(
                        "{g:?}: the plugin's manifest does not ask for it (it asks for {:?})",
                        manifest.permissions
                    ),
                )));
            }
            manifest.granted = grants.clone();
            tool.config = manifest.to_text();
            ctx.put(CF_TOOLS, &key, &tool);
            Ok(Ok(ToolReply::Tool(tool)))
        }
        ToolOp::Delete { name } => {
            let key = tool_key(tenant, name);
            if ctx.get_raw_value(CF_TOOLS, &key)?.is_none() {
                return Ok(Err(NexusError::NotFound(format!("tool {name} not found"))));
            }
            ctx.delete(CF_TOOLS, &key);
            ctx.delete(CF_TOOLS, &module_key(tenant, name));
            Ok(Ok(ToolReply::Deleted))
        }
        ToolOp::SetHttpPolicy { policy } => {
            ctx.put(CF_TOOLS, &policy_key(tenant), policy);
            Ok(Ok(ToolReply::HttpPolicy(policy.clone())))
        }
        ToolOp::Mount { mount } => {
            ctx.put(CF_TOOLS, &mount_key(tenant, &mount.prefix), mount);
            Ok(Ok(ToolReply::Mounted(mount.clone())))
        }
        ToolOp::Unmount { prefix } => {
            let key = mount_key(tenant, prefix);
            if ctx.get_raw_value(CF_TOOLS, &key)?.is_none() {
                return Ok(Err(NexusError::NotFound(format!(
                    "no MCP server is mounted at {prefix}"
                ))));
            }
            ctx.delete(CF_TOOLS, &key);
            Ok(Ok(ToolReply::Deleted))
        }
    }
}

/// A plugin's WebAssembly module, as stored.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Module(#[serde(with = "serde_bytes")] pub Vec<u8>);

/// The module of plugin `name` of `tenant`.
pub fn module(store: &Store, tenant: &str, name: &str) -> Result<Option<Vec<u8>>, StoreError> {
    Ok(store
        .get_decoded::<Module>(CF_TOOLS, &module_key(tenant, name))?
        .map(|m| m.0))
}

/// The tenant's mounted MCP servers, by prefix.
pub fn mounts(store: &Store, tenant: &str) -> Result<Vec<McpMount>, StoreError> {
    let prefix = keys::tenant_tagged(tenant, TAG_MOUNT, &[]);
    store
        .scan_prefix(CF_TOOLS, &prefix, &prefix, usize::MAX)?
        .iter()
        .map(|(_, v)| crate::store::codec::decode(v).map_err(StoreError::from))
        .collect()
}

pub fn mount(store: &Store, tenant: &str, prefix: &str) -> Result<Option<McpMount>, StoreError> {
    store.get_decoded(CF_TOOLS, &mount_key(tenant, prefix))
}

/// A registered tool of `tenant`.
pub fn read(store: &Store, tenant: &str, name: &str) -> Result<Option<ToolRecord>, StoreError> {
    store.get_decoded(CF_TOOLS, &tool_key(tenant, name))
}

/// Every registered tool of `tenant`, by name.
pub fn list(store: &Store, tenant: &str) -> Result<Vec<ToolRecord>, StoreError> {
    let prefix = keys::tenant_tagged(tenant, TAG_TOOL, &[]);
    store
        .scan_prefix(CF_TOOLS, &prefix, &prefix, usize::MAX)?
        .iter()
        .map(|(_, v)| crate::store::codec::decode(v).map_err(StoreError::from))
        .collect()
}

pub fn http_policy(store: &Store, tenant: &str) -> Result<HttpPolicy, StoreError> {
    Ok(store
        .get_decoded(CF_TOOLS, &policy_key(tenant))?
        .unwrap_or_default())
}

/// A tool name: dotted segments of `a-z`, `0-9` and `_`, each starting with a letter, at
/// least two (`acme.summarize`), at most [`MAX_NAME_BYTES`].
pub fn validate_name(field: &str, name: &str) -> Result<(), NexusError> {
    let segments: Vec<&str> = name.split('.').collect();
    let ok = name.len() <= MAX_NAME_BYTES
        && segments.len() >= 2
        && segments.iter().all(|s| {
            s.chars().next().is_some_and(|c| c.is_ascii_lowercase())
                && s.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        });
    if ok {
        Ok(())
    } else {
        Err(NexusError::invalid(
            field,
            format!(
                "{:?} is not a tool name: dotted segments of a-z, 0-9 and _, each starting with a letter (acme.summarize)",
                crate::error::excerpt(name, 64)
            ),
        ))
    }
}

/// A semantic version, `MAJOR.MINOR.PATCH` with an optional pre-release or build suffix.
pub fn validate_version(field: &str, version: &str) -> Result<(), NexusError> {
    semver::Version::parse(version).map(|_| ()).map_err(|e| {
        NexusError::invalid(
            field,
            format!(
                "{:?} is not a semantic version (1.2.0): {e}",
                crate::error::excerpt(version, 64)
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions() {
        for ok in ["acme.summarize", "memory.recall", "a.b_2.c"] {
            validate_name("name", ok).unwrap();
        }
        for bad in ["echo", "Acme.x", "acme..x", "acme.2x", "acme.x-y", ""] {
            assert!(validate_name("name", bad).is_err(), "{bad}");
        }
        validate_version("version", "1.2.0").unwrap();
        validate_version("version", "0.1.0-beta.1").unwrap();
        assert!(validate_version("version", "1.2").is_err());
    }

    #[test]
    fn registry_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tool = |version: &str, at: i64| ToolRecord {
            name: "acme.hello".into(),
            version: version.into(),
            description: "d".into(),
            input_schema: "{}".into(),
            output_schema: "{}".into(),
            kind: ToolKind::Composite,
            config: "{}".into(),
            created_at_ms: at,
            updated_at_ms: at,
        };
        let step = |op: ToolOp| {
            let mut c = ApplyCtx::new(&store);
            let r = apply(&mut c, "acme", &op).unwrap();
            store.db().write(c.finish().unwrap()).unwrap();
            r
        };
        step(ToolOp::Register {
            tool: tool("1.0.0", 5),
        })
        .unwrap();
        step(ToolOp::Register {
            tool: tool("1.1.0", 9),
        })
        .unwrap();
        let got = read(&store, "acme", "acme.hello").unwrap().unwrap();
        assert_eq!(
            (got.version.as_str(), got.created_at_ms, got.updated_at_ms),
            ("1.1.0", 5, 9)
        );
        assert!(read(&store, "other", "acme.hello").unwrap().is_none());
        assert_eq!(list(&store, "acme").unwrap().len(), 1);
        step(ToolOp::Delete {
            name: "acme.hello".into(),
        })
        .unwrap();
        assert!(step(ToolOp::Delete {
            name: "acme.hello".into()
        })
        .is_err());
        assert!(list(&store, "acme").unwrap().is_empty());
    }
}
