//! Who a request acts as ([`Principal`]), and the API keys that name a service account.
//! Authentication (`auth`) finds the principal; the state machine and the services only read it.

use base64::Engine;
use sha2::{Digest, Sha256};

use super::rbac::Grants;
use crate::error::NexusError;

/// The tenant of unauthenticated local use, and of the root key.
pub const DEFAULT_TENANT: &str = "default";
/// The subject of every request to a node without authentication.
pub const LOCAL_SUBJECT: &str = "local";
/// Prefix of API keys.
pub const KEY_PREFIX: &str = "nxk_";
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub tenant: String,
    /// `root`, `local`, `sa:<name>` or `user:<subject>`.
    pub subject: String,
    pub grants: Grants,
}

impl Principal {
    /// The principal of a node without authentication.
    pub fn local() -> Self {
        Principal {
            tenant: DEFAULT_TENANT.into(),
            subject: LOCAL_SUBJECT.into(),
            grants: Grants::root(),
        }
    }

    /// Ok when the principal may act on `tenant`'s identities: its own, or any for root.
    pub fn may_administer(&self, tenant: &str) -> Result<(), NexusError> {
        if self.grants.is_root() || self.tenant == tenant {
            Ok(())
        } else {
            Err(NexusError::PermissionDenied(format!(
                "{} of tenant {} cannot act on tenant {tenant}",
                self.subject, self.tenant
            )))
        }
    }
}

/// A new API key: the token to hand out once, and what is stored.
pub struct NewKey {
    pub id: String,
    pub token: String,
    pub secret_sha256: Vec<u8>,
}

/// Draws a new API key from the OS's random source.
pub fn new_api_key() -> Result<NewKey, NexusError> {
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id).map_err(NexusError::internal)?;
    getrandom::fill(&mut secret).map_err(NexusError::internal)?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let secret = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret);
    Ok(NewKey {
        token: format!("{KEY_PREFIX}{id}_{secret}"),
        secret_sha256: Sha256::digest(secret.as_bytes()).to_vec(),
        id,
    })
}
