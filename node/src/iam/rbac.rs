//! Permissions and roles: what each API needs, what each built-in role grants, and the one
//! check every request goes through (`api::grpc::handle`).
//!
//! A permission is `resource:action` (`memory:read`), optionally narrowed to one item
//! (`tools:call:web.fetch`). A grant may end in `*`: `memory:*` grants every memory action,
//! `tools:call` also grants `tools:call:NAME` for every NAME, and `*` grants every tenant
//! permission. System permissions (`cluster:admin`, `tenants:admin`) are never granted by a
//! role: only the root principal holds them, so no tenant can act on the cluster or on other
//! tenants.

use std::collections::BTreeSet;

use crate::error::NexusError;

/// Permissions only the root principal holds.
pub const SYSTEM_PERMISSIONS: &[&str] = &["cluster:admin", "tenants:admin"];

/// Every permission a role may name (besides wildcards and `tools:call:NAME`).
pub const PERMISSIONS: &[&str] = &[
    "memory:read",
    "memory:write",
    "secrets:read",
    "secrets:write",
    "secrets:list",
    "tools:call",
    "tools:read",
    "tools:write",
    "tools:grant",
    "schedules:read",
    "schedules:write",
    "events:read",
    "events:write",
    "workflows:read",
    "workflows:write",
    "webhooks:read",
    "webhooks:write",
    "iam:read",
    "iam:write",
    "audit:read",
    "cluster:read",
];

/// The built-in roles and their grants.
pub const BUILTIN_ROLES: &[(&str, &[&str])] = &[
    // Everything within the tenant.
    ("admin", &["*"]),
    // Runs the deployment: reads state, audit and identities, manages schedules.
    (
        "operator",
        &[
            "memory:read",
            "cluster:read",
            "audit:read",
            "iam:read",
            "schedules:*",
            "workflows:*",
            "webhooks:*",
            "events:read",
            "tools:read",
            "secrets:list",
        ],
    ),
    // Builds agents: memory, tools, schedules; sets secrets but does not read them back.
    (
        "developer",
        &[
            "memory:*",
            // Not tools:grant: what a plugin may reach is a tenant admin's to give.
            "tools:read",
            "tools:write",
            "tools:call",
            "schedules:*",
            "workflows:*",
            "webhooks:*",
            "events:*",
            "secrets:write",
            "secrets:list",
        ],
    ),
    // An agent at run time: its memory and its tools.
    (
        "agent",
        &[
            "memory:read",
            "memory:write",
            "tools:call",
            "events:read",
            "events:write",
            "workflows:read",
            "workflows:write",
        ],
    ),
    ("reader", &["memory:read"]),
];

/// The grants of a built-in role.
pub fn builtin(role: &str) -> Option<&'static [&'static str]> {
    BUILTIN_ROLES
        .iter()
        .find(|(name, _)| *name == role)
        .map(|(_, grants)| *grants)
}

/// Checks a permission a custom role names: a known permission, a `resource:*` of a known
/// resource, `*`, or `tools:call:NAME`. System permissions are refused.
pub fn validate_grant(field: &str, grant: &str) -> Result<(), NexusError> {
    if SYSTEM_PERMISSIONS.contains(&grant) {
        return Err(NexusError::invalid(
            field,
            format!("{grant:?} is held by the root principal only and cannot be granted"),
        ));
    }
    if grant == "*" || PERMISSIONS.contains(&grant) {
        return Ok(());
    }
    if let Some(resource) = grant.strip_suffix(":*") {
        if PERMISSIONS
            .iter()
            .any(|p| p.split(':').next() == Some(resource))
        {
            return Ok(());
        }
    }
    if let Some(tool) = grant.strip_prefix("tools:call:") {
        if !tool.is_empty()
            && tool.len() <= 128
            && tool
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
        {
            return Ok(());
        }
    }
    Err(NexusError::invalid(
        field,
        format!(
            "{grant:?} is not a permission; use one of {}, RESOURCE:*, * or tools:call:NAME",
            PERMISSIONS.join(", ")
        ),
    ))
}

/// A principal's permissions: the union of its roles' grants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Grants {
    grants: BTreeSet<String>,
    /// The root principal: every permission, system ones included.
    root: bool,
}

impl Grants {
    pub fn root() -> Self {
        Grants {
            grants: BTreeSet::new(),
            root: true,
        }
    }

    pub fn of<I: IntoIterator<Item = S>, S: Into<String>>(grants: I) -> Self {
        Grants {
            grants: grants.into_iter().map(Into::into).collect(),
            root: false,
        }
    }

    pub fn is_root(&self) -> bool {
        self.root
    }

    /// Whether these grants allow `permission`.
    pub fn allows(&self, permission: &str) -> bool {
        if self.root {
            return true;
        }
        if SYSTEM_PERMISSIONS.contains(&permission) {
            return false;
        }
        if self.grants.contains("*") || self.grants.contains(permission) {
            return true;
        }
        let mut parts = permission.splitn(3, ':');
        let (Some(resource), Some(action)) = (parts.next(), parts.next()) else {
            return false;
        };
        if self.grants.contains(&format!("{resource}:*")) {
            return true;
        }
        // tools:call grants tools:call:NAME.
        parts.next().is_some() && self.grants.contains(&format!("{resource}:{action}"))
    }

    /// Ok when allowed; otherwise PermissionDenied naming the principal and the permission.
    pub fn require(&self, subject: &str, permission: &str) -> Result<(), NexusError> {
        if self.allows(permission) {
            return Ok(());
        }
        Err(NexusError::PermissionDenied(format!(
            "{subject} lacks the permission {permission}"
        )))
    }

    pub fn list(&self) -> Vec<String> {
        if self.root {
            return vec!["*".into(), "cluster:admin".into(), "tenants:admin".into()];
        }
        self.grants.iter().cloned().collect()
    }
}

/// The permission each gRPC method needs (`None`: authentication alone). A method missing
/// from this table is refused: a new API cannot be served unguarded by omission.
pub fn permission_for(method: &str) -> Result<Option<&'static str>, NexusError> {
    Ok(Some(match method {
        "memory.put" | "memory.delete" | "memory.remember" | "memory.forget" => "memory:write",
        "memory.get" | "memory.list" | "memory.get_semantic" | "memory.recall" => "memory:read",
        "conversation.create" | "conversation.append" | "conversation.delete" => "memory:write",
        "conversation.get" | "conversation.list" | "conversation.list_messages" => "memory:read",
        "search.search" => "memory:read",
        "cluster.status" => "cluster:read",
        "cluster.add_member"
        | "cluster.promote_member"
        | "cluster.remove_member"
        | "cluster.transfer_leader" => "cluster:admin",
        "iam.create_tenant"
        | "iam.list_tenants"
        | "iam.set_tenant_state"
        | "iam.delete_tenant"
        | "iam.set_tenant_limits" => "tenants:admin",
        "iam.create_key" | "iam.revoke_key" | "iam.put_role" | "iam.delete_role"
        | "iam.create_binding" | "iam.delete_binding" => "iam:write",
        "iam.list_keys" | "iam.list_roles" | "iam.list_bindings" | "iam.get_usage" => "iam:read",
        "secrets.set" | "secrets.delete" => "secrets:write",
        "secrets.get" => "secrets:read",
        "secrets.list" => "secrets:list",
        "secrets.rotate_master_key" => "cluster:admin",
        "audit.tail" | "audit.verify" => "audit:read",
        // Listing shows each caller the tools it may call (all of them with tools:read):
        // `service::tools::ToolService::list`.
        "tools.list" => return Ok(None),
        // A request to `/mcp`: authenticated; each tool call then needs tools:call:NAME and
        // each resource read its tool's permission, as over gRPC.
        "mcp" => return Ok(None),
        // A WebSocket session (`/ws`): authenticated; each message then needs the permission
        // of the method it stands for (`api::ws`).
        "ws" => return Ok(None),
        "tools.describe" | "tools.stats" | "tools.get_http_policy" | "tools.list_mounts" => {
            "tools:read"
        }
        "tools.register"
        | "tools.delete"
        | "tools.set_http_policy"
        | "tools.mount"
        | "tools.unmount" => "tools:write",
        // What a WebAssembly plugin may reach beyond its sandbox (clock, http, tools).
        "tools.grant" => "tools:grant",
        // With the tool's name: tools:call:NAME (`api::gate::authorize`).
        "tools.call" => "tools:call",
        "iam.whoami" => return Ok(None),
        "schedules.add" | "schedules.update" | "schedules.delete" | "schedules.pause"
        | "schedules.resume" | "schedules.replay" => "schedules:write",
        "schedules.list" | "schedules.get" | "schedules.next" | "schedules.runs" => {
            "schedules:read"
        }
        "events.publish" => "events:write",
        "events.subscribe" | "events.list" => "events:read",
        "workflows.put" | "workflows.delete" | "workflows.start" | "workflows.cancel" => {
            "workflows:write"
        }
        "workflows.get" | "workflows.list" | "workflows.get_run" | "workflows.list_runs" => {
            "workflows:read"
        }
        "hooks.put"
        | "hooks.delete"
        | "hooks.pause"
        | "hooks.resume"
        | "hooks.replay"
        | "hooks.put_inbound"
        | "hooks.delete_inbound" => "webhooks:write",
        "hooks.get" | "hooks.list" | "hooks.deliveries" | "hooks.list_inbound" => "webhooks:read",
        other => {
            return Err(NexusError::internal(format!(
                "no permission is declared for method {other} (iam::rbac::permission_for)"
            )))
        }
    }))
}

/// Whether `principal` may call API method `method` (on `target`, for a method whose
/// permission names one: `tools.call` on a tool needs `tools:call:NAME`, which `tools:call`
/// grants for every NAME). `api::gate::authorize` checks every request with it, and the tool
/// runner each step of a composite.
pub fn authorize(
    method: &str,
    target: &str,
    principal: &super::Principal,
) -> Result<(), NexusError> {
    match permission_for(method)? {
        Some("tools:call") if !target.is_empty() => principal
            .grants
            .require(&principal.subject, &format!("tools:call:{target}")),
        Some(permission) => principal.grants.require(&principal.subject, permission),
        None => Ok(()),
    }
}

/// The permission a replicated command needs, by its name (`Op::name`), for the leader's
/// check of what members forward (`auth::forward`): the same permission the API method that
/// makes it needs. `kv.purge_expired` (the TTL sweeper's, made by the node itself) needs
/// none; an unknown command is refused.
pub fn permission_for_command(command: &str) -> Result<Option<&'static str>, NexusError> {
    let (family, _) = command.split_once('.').unwrap_or((command, ""));
    Ok(Some(match (family, command) {
        (_, "kv.purge_expired") => return Ok(None),
        ("kv" | "conversation" | "semantic", _) => "memory:write",
        (_, "secrets.set" | "secrets.delete") => "secrets:write",
        (_, "secrets.rewrap") => "cluster:admin",
        (_, "tools.grant") => "tools:grant",
        ("tools", _) => "tools:write",
        // A schedule's fires, attempts and outcomes are the leader's own, never forwarded.
        (_, "schedules.fire" | "schedules.start" | "schedules.finish") => {
            return Err(NexusError::PermissionDenied(format!(
                "{command} is the leader's own and cannot be forwarded by a member"
            )))
        }
        ("schedules", _) => "schedules:write",
        ("events", _) => "events:write",
        // A workflow's steps and a hook's deliveries are the leader's own too.
        (
            _,
            "workflows.step_start"
            | "workflows.step_skip"
            | "workflows.step_finish"
            | "hooks.begin"
            | "hooks.pass"
            | "hooks.start"
            | "hooks.finish",
        ) => {
            return Err(NexusError::PermissionDenied(format!(
                "{command} is the leader's own and cannot be forwarded by a member"
            )))
        }
        // An inbound webhook's request, checked against its signature by the member that
        // took it (which holds the signing secret anyway).
        (_, "hooks.receive") => return Ok(None),
        ("workflows", _) => "workflows:write",
        ("hooks", _) => "webhooks:write",
        ("iam", _) => match permission_for(command)? {
            Some(p) => p,
            None => {
                return Err(NexusError::internal(format!(
                    "{command} needs a permission"
                )))
            }
        },
        _ => {
            return Err(NexusError::PermissionDenied(format!(
                "{command} cannot be forwarded by a member"
            )))
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_and_tool_names() {
        let g = Grants::of(["memory:*", "tools:call"]);
        assert!(g.allows("memory:read") && g.allows("memory:write"));
        assert!(g.allows("tools:call") && g.allows("tools:call:web.fetch"));
        assert!(!g.allows("tools:write") && !g.allows("secrets:read"));
        let one_tool = Grants::of(["tools:call:web.fetch"]);
        assert!(one_tool.allows("tools:call:web.fetch"));
        assert!(!one_tool.allows("tools:call:shell") && !one_tool.allows("tools:call"));
        let admin = Grants::of(builtin("admin").unwrap().iter().copied());
        assert!(admin.allows("secrets:read") && admin.allows("iam:write"));
        // No role reaches system permissions, not even `*`.
        assert!(!admin.allows("cluster:admin") && !admin.allows("tenants:admin"));
        assert!(Grants::root().allows("tenants:admin"));
        let err = Grants::of(builtin("reader").unwrap().iter().copied())
            .require("sa:bot", "memory:write")
            .unwrap_err();
        assert!(err
            .to_string()
            .contains("sa:bot lacks the permission memory:write"));
    }

    #[test]
    fn grants_of_custom_roles_are_checked() {
        for ok in [
            "memory:read",
            "memory:*",
            "*",
            "tools:call:web.fetch",
            "schedules:*",
        ] {
            validate_grant("permissions", ok).unwrap();
        }
        for bad in [
            "cluster:admin",
            "tenants:admin",
            "memory:delete",
            "nope:*",
            "tools:call:",
            "",
        ] {
            let err = validate_grant("permissions", bad).unwrap_err();
            assert!(err.to_string().contains("permissions"), "{bad}: {err}");
        }
        // Every built-in role's grants are valid custom grants too.
        for (_, grants) in BUILTIN_ROLES {
            for g in *grants {
                validate_grant("g", g).unwrap();
            }
        }
    }
}
