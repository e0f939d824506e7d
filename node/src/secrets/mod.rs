//! The secrets manager: named, versioned secrets per tenant, with envelope encryption.
//!
//! - Each tenant has a data key (256 bits, drawn on the node that first stores a secret for
//!   the tenant). It is stored wrapped: sealed with the master key, with the master key's id.
//! - Each secret version is sealed with the tenant's data key, with the tenant, name and
//!   version as associated data, so a ciphertext cannot be moved to another tenant, name or
//!   version. AES-256-GCM (ring), a fresh 96-bit random nonce per seal.
//! - Sealing happens on the node that receives the request, before proposing: only ciphertext
//!   enters the Raft log, snapshots and RocksDB. Plaintext lives in `Zeroizing` buffers and is
//!   wiped when dropped.
//! - The master key comes from `secrets.master_key_file` or the `secrets.master_key_env`
//!   environment variable (32 bytes, base64), else from `<data-dir>/master.key`, made on first
//!   start (one node on a laptop; a cluster must give every node the same key). Rotation:
//!   nodes run with the new key as current and the old one in `previous_master_key_files`;
//!   `RotateMasterKey` re-wraps every tenant's data key under the current key through Raft;
//!   then the old key can go. Secrets stay readable throughout.
//!
//! Storage, in `secrets` (keys begin with the tenant): `D` the data key, `S<name>` a secret
//! with its versions.

pub mod placeholders;

use std::path::{Path, PathBuf};

use base64::Engine;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use crate::config::SecretsConfig;
use crate::error::NexusError;
use crate::store::{keys, ApplyCtx, Store, StoreError, CF_SECRETS};

const TAG_DATA_KEY: u8 = b'D';
const TAG_SECRET: u8 = b'S';
/// File the generated master key is kept in, under the data directory.
pub const GENERATED_MASTER_KEY: &str = "master.key";

/// A key of 256 bits, wiped when dropped.
pub type Key = Zeroizing<[u8; 32]>;

#[derive(Debug, thiserror::Error)]
pub enum CryptoError {
    #[error("decryption failed: wrong key or damaged data")]
    Open,
    #[error("{0}")]
    Key(String),
}

fn random<const N: usize>() -> Result<[u8; N], NexusError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(NexusError::internal)?;
    Ok(b)
}

/// Seals `plaintext`: nonce, then ciphertext and tag.
pub fn seal(key: &[u8; 32], aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, NexusError> {
    let sealing = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key).map_err(|_| NexusError::internal("AES key"))?,
    );
    let nonce: [u8; NONCE_LEN] = random()?;
    let mut out = Vec::with_capacity(NONCE_LEN + plaintext.len() + 16);
    out.extend_from_slice(&nonce);
    let mut body = plaintext.to_vec();
    sealing
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut body,
        )
        .map_err(|_| NexusError::internal("sealing"))?;
    out.extend_from_slice(&body);
    // `body` held the plaintext before it was encrypted in place; nothing to wipe now.
    Ok(out)
}

/// Opens what `seal` made with the same key and associated data.
pub fn open(key: &[u8; 32], aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
    if sealed.len() < NONCE_LEN + 16 {
        return Err(CryptoError::Open);
    }
    let opening = LessSafeKey::new(
        UnboundKey::new(&AES_256_GCM, key).map_err(|_| CryptoError::Key("AES key".into()))?,
    );
    let (nonce, body) = sealed.split_at(NONCE_LEN);
    let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| CryptoError::Open)?;
    let mut buf = Zeroizing::new(body.to_vec());
    let len = opening
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(aad),
            &mut buf,
        )
        .map_err(|_| CryptoError::Open)?
        .len();
    buf.truncate(len);
    Ok(buf)
}

/// The id of a master key: the first 8 bytes of a SHA-256 over it, in hex. Stored with each
/// wrapped data key, so that a node knows which key unwraps it (and says so when it lacks it).
pub fn master_key_id(key: &[u8; 32]) -> String {
    let digest = Sha256::new()
        .chain_update(b"nexus master key id\0")
        .chain_update(key)
        .finalize();
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_key(text: &str, source: &str) -> Result<Key, CryptoError> {
    let bytes = Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(text.trim())
            .map_err(|_| CryptoError::Key(format!("{source}: not base64")))?,
    );
    let key: [u8; 32] = bytes.as_slice().try_into().map_err(|_| {
        CryptoError::Key(format!(
            "{source}: {} bytes; a master key is 32 bytes, base64 (`openssl rand -base64 32`)",
            bytes.len()
        ))
    })?;
    Ok(Zeroizing::new(key))
}

/// The master keys a node knows: the current one (wraps new data keys) and previous ones
/// (unwrap data keys not re-wrapped yet).
pub struct MasterKeys {
    current: (String, Key),
    previous: Vec<(String, Key)>,
}

impl MasterKeys {
    /// Loads the configured keys, or the data directory's generated key (made when missing).
    pub fn load(config: &SecretsConfig, data_dir: &Path) -> Result<Self, CryptoError> {
        let read = |path: &PathBuf| -> Result<Key, CryptoError> {
            let text = Zeroizing::new(std::fs::read_to_string(path).map_err(|e| {
                CryptoError::Key(format!("reading master key {}: {e}", path.display()))
            })?);
            parse_key(&text, &path.display().to_string())
        };
        let current = if !config.master_key_file.as_os_str().is_empty() {
            read(&config.master_key_file)?
        } else if let Some(text) = std::env::var(&config.master_key_env)
            .ok()
            .filter(|v| !v.is_empty())
        {
            parse_key(&Zeroizing::new(text), &config.master_key_env)?
        } else {
            Self::generated(data_dir)?
        };
        let previous = config
            .previous_master_key_files
            .iter()
            .map(|p| read(p).map(|k| (master_key_id(&k), k)))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(MasterKeys {
            current: (master_key_id(&current), current),
            previous,
        })
    }

    /// `<data-dir>/master.key`, made (mode 0600) when missing.
    fn generated(data_dir: &Path) -> Result<Key, CryptoError> {
        let path = data_dir.join(GENERATED_MASTER_KEY);
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_key(&Zeroizing::new(text), &path.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: Key = Zeroizing::new(
                    random().map_err(|e| CryptoError::Key(format!("drawing a key: {e}")))?,
                );
                let text = Zeroizing::new(base64::engine::general_purpose::STANDARD.encode(*key));
                write_private(&path, text.as_bytes())
                    .map_err(|e| CryptoError::Key(format!("writing {}: {e}", path.display())))?;
                tracing::warn!(
                    path = %path.display(),
                    "made a master key for secrets next to the data; in production give every node the same key in secrets.master_key_file or NEXUS_MASTER_KEY"
                );
                Ok(key)
            }
            Err(e) => Err(CryptoError::Key(format!("reading {}: {e}", path.display()))),
        }
    }

    /// Test and tool use: keys given directly.
    pub fn from_keys(current: [u8; 32], previous: Vec<[u8; 32]>) -> Self {
        MasterKeys {
            current: (master_key_id(&current), Zeroizing::new(current)),
            previous: previous
                .into_iter()
                .map(|k| (master_key_id(&k), Zeroizing::new(k)))
                .collect(),
        }
    }

    pub fn current_id(&self) -> &str {
        &self.current.0
    }

    fn by_id(&self, id: &str) -> Option<&Key> {
        std::iter::once(&self.current)
            .chain(&self.previous)
            .find(|(i, _)| i == id)
            .map(|(_, k)| k)
    }

    /// Wraps a tenant's data key under the current master key.
    pub fn wrap(
        &self,
        tenant: &str,
        id: &str,
        data_key: &Key,
    ) -> Result<DataKeyRecord, NexusError> {
        Ok(DataKeyRecord {
            id: id.to_string(),
            master_key_id: self.current.0.clone(),
            wrapped: seal(&self.current.1, &wrap_aad(tenant, id), data_key.as_ref())?,
            created_at_ms: crate::memory::now_ms(),
        })
    }

    /// Unwraps a tenant's data key with whichever known master key wrapped it.
    pub fn unwrap(&self, tenant: &str, record: &DataKeyRecord) -> Result<Key, NexusError> {
        let master = self.by_id(&record.master_key_id).ok_or_else(|| {
            NexusError::precondition(
                "master_key",
                format!(
                    "tenant {tenant}'s data key is wrapped by master key {}, which this node does not have (its current key is {}); give the node that key in secrets.previous_master_key_files",
                    record.master_key_id, self.current.0
                ),
            )
        })?;
        let plain = open(master, &wrap_aad(tenant, &record.id), &record.wrapped).map_err(|_| {
            NexusError::internal(format!("tenant {tenant}'s data key does not open"))
        })?;
        let key: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| NexusError::internal("a data key is not 32 bytes"))?;
        Ok(Zeroizing::new(key))
    }
}

fn wrap_aad(tenant: &str, data_key_id: &str) -> Vec<u8> {
    format!("nexus data key\0{tenant}\0{data_key_id}").into_bytes()
}

/// Associated data of a secret version: it binds the ciphertext to its place.
pub fn value_aad(tenant: &str, name: &str, version: u32) -> Vec<u8> {
    format!("nexus secret\0{tenant}\0{name}\0{version}").into_bytes()
}

/// Writes a file only the owner can read (0600 on Unix).
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // Written whole beside it, then renamed, then the folder synced: a crash leaves either
    // no key or the whole key, and a key that wrapped data keys cannot vanish with a power
    // loss (the rename itself is durable only once the folder is synced).
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = opts.open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    drop(f);
    if path.exists() {
        let _ = std::fs::remove_file(&tmp);
        return Err(std::io::Error::new(
            std::io::ErrorKind::AlreadyExists,
            format!("{} exists", path.display()),
        ));
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// A tenant's data key, wrapped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataKeyRecord {
    pub id: String,
    pub master_key_id: String,
    pub wrapped: Vec<u8>,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretVersion {
    pub version: u32,
    /// Sealed with the data key `data_key_id`.
    pub sealed: Vec<u8>,
    pub data_key_id: String,
    pub created_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SecretRecord {
    pub name: String,
    /// Oldest first; the last is current. At most `MAX_VERSIONS`.
    pub versions: Vec<SecretVersion>,
    pub created_at_ms: i64,
}

/// Versions kept per secret; older ones are dropped.
pub const MAX_VERSIONS: usize = 10;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SecretOp {
    /// A new version of `name`, sealed by the proposer. `new_data_key` is set when the
    /// proposer found no data key for the tenant and made one.
    Set {
        name: String,
        sealed: Vec<u8>,
        version: u32,
        data_key_id: String,
        new_data_key: Option<DataKeyRecord>,
        now_ms: i64,
    },
    Delete {
        name: String,
    },
    /// The tenant's data key re-wrapped under another master key.
    Rewrap {
        data_key: DataKeyRecord,
    },
}

impl SecretOp {
    pub fn name(&self) -> &'static str {
        match self {
            SecretOp::Set { .. } => "secrets.set",
            SecretOp::Delete { .. } => "secrets.delete",
            SecretOp::Rewrap { .. } => "secrets.rewrap",
        }
    }

    pub fn approx_size(&self) -> usize {
        match self {
            SecretOp::Set { name, sealed, .. } => name.len() + sealed.len() + 200,
            SecretOp::Delete { name } => name.len(),
            SecretOp::Rewrap { .. } => 200,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum SecretReply {
    Stored(SecretRecord),
    Deleted,
    Rewrapped,
}

use keys::tenant_tagged as tagged;

pub fn data_key_key(tenant: &str) -> Vec<u8> {
    tagged(tenant, TAG_DATA_KEY, b"")
}

fn secret_key(tenant: &str, name: &str) -> Vec<u8> {
    tagged(tenant, TAG_SECRET, name.as_bytes())
}

/// Why a proposal raced another: the proposer reads again and retries.
pub const RACED: &str = "changed while this request was being prepared; retry";

pub fn apply(
    ctx: &mut ApplyCtx<'_>,
    tenant: &str,
    op: &SecretOp,
) -> Result<Result<SecretReply, NexusError>, StoreError> {
    match op {
        SecretOp::Set {
            name,
            sealed,
            version,
            data_key_id,
            new_data_key,
            now_ms,
        } => {
            let stored_key = ctx.get_decoded::<DataKeyRecord>(CF_SECRETS, &data_key_key(tenant))?;
            match (&stored_key, new_data_key) {
                (Some(k), None) if k.id == *data_key_id => {}
                (None, Some(k)) if k.id == *data_key_id => {
                    ctx.put(CF_SECRETS, &data_key_key(tenant), k);
                }
                _ => return Ok(Err(NexusError::precondition("data_key", RACED))),
            }
            let k = secret_key(tenant, name);
            let mut record =
                ctx.get_decoded::<SecretRecord>(CF_SECRETS, &k)?
                    .unwrap_or(SecretRecord {
                        name: name.clone(),
                        versions: Vec::new(),
                        created_at_ms: *now_ms,
                    });
            let next = record.versions.last().map_or(1, |v| v.version + 1);
            if *version != next {
                return Ok(Err(NexusError::precondition("version", RACED)));
            }
            record.versions.push(SecretVersion {
                version: *version,
                sealed: sealed.clone(),
                data_key_id: data_key_id.clone(),
                created_at_ms: *now_ms,
            });
            if record.versions.len() > MAX_VERSIONS {
                let excess = record.versions.len() - MAX_VERSIONS;
                record.versions.drain(..excess);
            }
            ctx.put(CF_SECRETS, &k, &record);
            Ok(Ok(SecretReply::Stored(record)))
        }
        SecretOp::Delete { name } => {
            let k = secret_key(tenant, name);
            if ctx.get_decoded::<SecretRecord>(CF_SECRETS, &k)?.is_none() {
                return Ok(Err(NexusError::NotFound(format!(
                    "secret {name} not found"
                ))));
            }
            ctx.delete(CF_SECRETS, &k);
            Ok(Ok(SecretReply::Deleted))
        }
        SecretOp::Rewrap { data_key } => {
            match ctx.get_decoded::<DataKeyRecord>(CF_SECRETS, &data_key_key(tenant))? {
                Some(k) if k.id == data_key.id => {
                    ctx.put(CF_SECRETS, &data_key_key(tenant), data_key);
                    Ok(Ok(SecretReply::Rewrapped))
                }
                _ => Ok(Err(NexusError::precondition("data_key", RACED))),
            }
        }
    }
}

pub fn read_data_key(store: &Store, tenant: &str) -> Result<Option<DataKeyRecord>, StoreError> {
    store.get_decoded(CF_SECRETS, &data_key_key(tenant))
}

pub fn read_secret(
    store: &Store,
    tenant: &str,
    name: &str,
) -> Result<Option<SecretRecord>, StoreError> {
    store.get_decoded(CF_SECRETS, &secret_key(tenant, name))
}

pub fn list_secrets(store: &Store, tenant: &str) -> Result<Vec<SecretRecord>, StoreError> {
    let prefix = tagged(tenant, TAG_SECRET, b"");
    store
        .scan_prefix(CF_SECRETS, &prefix, &prefix, usize::MAX)?
        .iter()
        .map(|(_, v)| crate::store::codec::decode(v).map_err(StoreError::from))
        .collect()
}

/// Every tenant's wrapped data key.
pub fn all_data_keys(store: &Store) -> Result<Vec<(String, DataKeyRecord)>, StoreError> {
    let mut out = Vec::new();
    for (k, v) in store.scan_prefix(CF_SECRETS, b"", b"", usize::MAX)? {
        if let Some(tenant) = keys::parse_tenant(&k) {
            if k == data_key_key(&tenant) {
                out.push((tenant, crate::store::codec::decode(&v)?));
            }
        }
    }
    Ok(out)
}

/// Checks a secret name: 1..=128 of `[A-Za-z0-9_.-]`, as environment variables and
/// `${secrets.NAME}` placeholders can carry it.
pub fn validate_name(field: &str, name: &str) -> Result<(), NexusError> {
    let ok = !name.is_empty()
        && name.len() <= 128
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(NexusError::invalid(
            field,
            format!("{name:?} must be 1 to 128 of A-Z, a-z, 0-9, '_', '.' and '-'"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealing_binds_key_and_place() {
        let k = [7u8; 32];
        let sealed = seal(&k, b"a", b"sk-secret").unwrap();
        assert!(!sealed.windows(9).any(|w| w == b"sk-secret"));
        assert_eq!(open(&k, b"a", &sealed).unwrap().as_slice(), b"sk-secret");
        assert!(open(&k, b"b", &sealed).is_err(), "other associated data");
        assert!(open(&[8u8; 32], b"a", &sealed).is_err(), "other key");
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert!(open(&k, b"a", &tampered).is_err());
        // Fresh nonces: the same plaintext seals differently.
        assert_ne!(seal(&k, b"a", b"x").unwrap(), seal(&k, b"a", b"x").unwrap());
    }

    #[test]
    fn data_keys_unwrap_with_current_or_previous_master_keys() {
        let old = MasterKeys::from_keys([1; 32], vec![]);
        let dk: Key = Zeroizing::new([9; 32]);
        let record = old.wrap("t", "dk1", &dk).unwrap();
        assert_eq!(*old.unwrap("t", &record).unwrap(), [9; 32]);
        assert!(old.unwrap("other", &record).is_err(), "bound to its tenant");
        let rotated = MasterKeys::from_keys([2; 32], vec![[1; 32]]);
        assert_eq!(*rotated.unwrap("t", &record).unwrap(), [9; 32]);
        let rewrapped = rotated.wrap("t", "dk1", &dk).unwrap();
        assert_eq!(rewrapped.master_key_id, rotated.current_id());
        let only_new = MasterKeys::from_keys([2; 32], vec![]);
        assert_eq!(*only_new.unwrap("t", &rewrapped).unwrap(), [9; 32]);
        let err = only_new.unwrap("t", &record).unwrap_err();
        assert!(err.to_string().contains(&record.master_key_id), "{err}");
    }

    #[test]
    fn a_generated_master_key_is_private_and_stable() {
        let dir = tempfile::tempdir().unwrap();
        let config = SecretsConfig {
            master_key_env: "NEXUS_TEST_NO_SUCH_VARIABLE".into(),
            ..SecretsConfig::default()
        };
        let a = MasterKeys::load(&config, dir.path()).unwrap();
        let b = MasterKeys::load(&config, dir.path()).unwrap();
        assert_eq!(a.current_id(), b.current_id());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(GENERATED_MASTER_KEY))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
