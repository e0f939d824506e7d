//! The secrets API of a node: seals on this node before proposing, opens on this node after
//! reading. Permissions (`secrets:write`, `secrets:read`, `secrets:list`) are checked before
//! these run.

use std::sync::Arc;

use zeroize::Zeroizing;

use crate::cluster::ReadConsistency;
use crate::command::{self, Cluster, Op, Reply, Scope};
use crate::error::NexusError;
use crate::memory::now_ms;
use crate::secrets::placeholders::{names, substitute, Redactor};
use crate::secrets::{
    all_data_keys, list_secrets, open, read_data_key, read_secret, seal, validate_name, value_aad,
    DataKeyRecord, Key, MasterKeys, SecretOp, SecretRecord, SecretReply, RACED,
};

/// Largest secret value.
pub const MAX_VALUE_BYTES: usize = 64 * 1024;
/// Attempts when a concurrent write raced ours (the data key made twice, a version taken).
const ATTEMPTS: usize = 5;

pub struct SecretsService {
    node: Arc<Cluster>,
    keys: Arc<MasterKeys>,
}

impl SecretsService {
    pub fn new(node: Arc<Cluster>, keys: Arc<MasterKeys>) -> Self {
        Self { node, keys }
    }

    async fn propose(&self, scope: &Scope, op: SecretOp) -> Result<SecretReply, NexusError> {
        match command::propose(&self.node, scope, Op::Secret(op)).await? {
            Reply::Secret(r) => Ok(r),
            other => Err(NexusError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// The tenant's data key, opened; or a new one, wrapped, to propose with the write.
    fn data_key(&self, tenant: &str) -> Result<(String, Key, Option<DataKeyRecord>), NexusError> {
        match read_data_key(&self.node.store, tenant)? {
            Some(record) => {
                let key = self.keys.unwrap(tenant, &record)?;
                Ok((record.id, key, None))
            }
            None => {
                let mut key: Key = Zeroizing::new([0u8; 32]);
                getrandom::fill(key.as_mut()).map_err(NexusError::internal)?;
                let id = uuid::Uuid::now_v7().to_string();
                let record = self.keys.wrap(tenant, &id, &key)?;
                Ok((id, key, Some(record)))
            }
        }
    }

    /// Stores a new version of `name`; returns the record (versions, never values).
    pub async fn set(
        &self,
        scope: &Scope,
        name: &str,
        value: Zeroizing<Vec<u8>>,
    ) -> Result<SecretRecord, NexusError> {
        let tenant = scope.tenant.as_str();
        validate_name("name", name)?;
        if value.is_empty() {
            return Err(NexusError::invalid("value", "must not be empty"));
        }
        if value.len() > MAX_VALUE_BYTES {
            return Err(NexusError::invalid(
                "value",
                format!("is {} bytes; the limit is {MAX_VALUE_BYTES}", value.len()),
            ));
        }
        for _ in 0..ATTEMPTS {
            self.node
                .read_barrier(ReadConsistency::Linearizable)
                .await?;
            let (data_key_id, key, new_data_key) = self.data_key(tenant)?;
            let version = read_secret(&self.node.store, tenant, name)?
                .and_then(|r| r.versions.last().map(|v| v.version + 1))
                .unwrap_or(1);
            let sealed = seal(&key, &value_aad(tenant, name, version), &value)?;
            drop(key);
            let op = SecretOp::Set {
                name: name.to_string(),
                sealed,
                version,
                data_key_id,
                new_data_key,
                now_ms: now_ms(),
            };
            match self.propose(scope, op).await {
                Ok(SecretReply::Stored(r)) => return Ok(r),
                Ok(other) => {
                    return Err(NexusError::internal(format!("unexpected reply {other:?}")))
                }
                Err(NexusError::FailedPrecondition { message, .. }) if message == RACED => continue,
                Err(e) => return Err(e),
            }
        }
        Err(NexusError::unavailable(format!(
            "secret {name}: concurrent writes kept racing this one; retry"
        )))
    }

    /// The value of a version (0 = current), opened on this node. A read made for a caller
    /// is recorded on the audit log before the value is returned.
    pub async fn get(
        &self,
        scope: &Scope,
        name: &str,
        version: u32,
    ) -> Result<(u32, Zeroizing<Vec<u8>>), NexusError> {
        let tenant = scope.tenant.as_str();
        validate_name("name", name)?;
        self.node
            .read_barrier(ReadConsistency::Linearizable)
            .await?;
        let not_found = || NexusError::NotFound(format!("secret {name} not found"));
        let record = read_secret(&self.node.store, tenant, name)?.ok_or_else(not_found)?;
        let v = if version == 0 {
            record.versions.last()
        } else {
            record.versions.iter().find(|v| v.version == version)
        }
        .ok_or_else(|| {
            NexusError::NotFound(format!(
                "secret {name} has no version {version} (versions kept: {})",
                record
                    .versions
                    .iter()
                    .map(|v| v.version.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let data_key = read_data_key(&self.node.store, tenant)?
            .filter(|k| k.id == v.data_key_id)
            .ok_or_else(|| {
                NexusError::internal(format!("the data key of secret {name} is gone"))
            })?;
        let key = self.keys.unwrap(tenant, &data_key)?;
        let value = open(&key, &value_aad(tenant, name, v.version), &v.sealed)
            .map_err(|e| NexusError::internal(format!("secret {name}: {e}")))?;
        // The value leaves only once its read is on record.
        if let Some(on_behalf) = &scope.on_behalf {
            super::audit::record(
                &self.node,
                tenant,
                on_behalf.clone(),
                format!("secret/{name} version {}", v.version),
                "ok".into(),
            )
            .await?;
        }
        Ok((v.version, value))
    }

    /// Resolves the `${secrets.NAME}` placeholders of `text` (the field `field` of a tool run
    /// of `tenant`): each named secret's current value is opened (a read on the audit log,
    /// like `get`), and the text with the values in it is returned with the [`Redactor`] for
    /// everything the run emits. For the tool runner only: no API returns the result. A
    /// missing secret is NOT_FOUND, a value that is not UTF-8 FAILED_PRECONDITION.
    ///
    /// [`Redactor`]: crate::secrets::placeholders::Redactor
    pub async fn resolve_placeholders(
        &self,
        scope: &Scope,
        field: &str,
        text: &str,
    ) -> Result<(Zeroizing<String>, Redactor), NexusError> {
        let mut values: Vec<(String, Zeroizing<String>)> = Vec::new();
        for name in names(field, text)? {
            let (_, bytes) = self.get(scope, &name, 0).await?;
            let value = std::str::from_utf8(&bytes).map_err(|_| {
                NexusError::precondition(
                    field,
                    format!(
                        "secret {name} is not UTF-8 text, so it cannot fill ${{secrets.{name}}}"
                    ),
                )
            })?;
            values.push((name, Zeroizing::new(value.to_string())));
        }
        let resolved = substitute(field, text, &values)?;
        Ok((resolved, Redactor::new(&values)))
    }

    pub async fn list(&self, tenant: &str) -> Result<Vec<SecretRecord>, NexusError> {
        self.node.read_barrier(ReadConsistency::Stale).await?;
        Ok(list_secrets(&self.node.store, tenant)?)
    }

    pub async fn delete(&self, scope: &Scope, name: &str) -> Result<(), NexusError> {
        validate_name("name", name)?;
        self.propose(
            scope,
            SecretOp::Delete {
                name: name.to_string(),
            },
        )
        .await
        .map(|_| ())
    }

    /// Re-wraps every tenant's data key not yet under this node's current master key.
    /// Returns (re-wrapped, already current). Each re-wrap is audited as `by`'s, in the tenant
    /// whose key it re-wraps.
    pub async fn rotate_master_key(&self, by: &Scope) -> Result<(usize, usize), NexusError> {
        self.node
            .read_barrier(ReadConsistency::Linearizable)
            .await?;
        let (mut rewrapped, mut current) = (0, 0);
        for (tenant, record) in all_data_keys(&self.node.store)? {
            if record.master_key_id == self.keys.current_id() {
                current += 1;
                continue;
            }
            let key = self.keys.unwrap(&tenant, &record)?;
            let data_key = self.keys.wrap(&tenant, &record.id, &key)?;
            drop(key);
            self.propose(&by.in_tenant(&tenant), SecretOp::Rewrap { data_key })
                .await?;
            rewrapped += 1;
        }
        Ok((rewrapped, current))
    }

    pub fn master_key_id(&self) -> &str {
        self.keys.current_id()
    }
}
