//! The snapshot file: a point-in-time copy of every state-machine column family.
//!
//! Layout (all integers big-endian):
//! ```text
//! "NXSNAP01"                      magic and layout version
//! u32 len, meta                   SnapshotMeta in the value codec
//! { u8 family, u32 klen, key, u32 vlen, value }*   family = index in SM_FAMILIES, from 1
//! u8 0                            end of records
//! u32 crc32                       of everything before it
//! ```
//! It is written from a RocksDB snapshot, so it is consistent without stopping writes, and it
//! is what followers that fall behind receive in chunks.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::Path;

use rocksdb::{IteratorMode, WriteBatch, WriteOptions};

use super::types::{LogId, SnapshotMeta, StoredMembership};
use crate::store::{codec, keys, Store, StoreError, CF_SM_META, SM_FAMILIES};

const MAGIC: &[u8; 8] = b"NXSNAP01";

fn corrupt(msg: impl Into<String>) -> StoreError {
    StoreError::Corrupt(format!("snapshot: {}", msg.into()))
}

/// A writer that checksums what passes through it.
struct Crc<W> {
    inner: W,
    hasher: crc32fast::Hasher,
}

impl<W: Write> Write for Crc<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

struct CrcReader<R> {
    inner: R,
    hasher: crc32fast::Hasher,
}

impl<R: Read> Read for CrcReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

fn read_u32(r: &mut impl Read) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    r.read_exact(&mut b)?;
    Ok(u32::from_be_bytes(b))
}

fn read_bytes(r: &mut impl Read, len: u32) -> std::io::Result<Vec<u8>> {
    let mut v = vec![0u8; len as usize];
    r.read_exact(&mut v)?;
    Ok(v)
}

/// Writes a snapshot of the state machine to `path` (fsynced) and returns its meta.
pub fn write(
    store: &Store,
    path: &Path,
    snapshot_id_suffix: &str,
) -> Result<SnapshotMeta, StoreError> {
    let snap = store.db().snapshot();
    let last_applied: Option<LogId> =
        match snap.get_cf(store.cf(CF_SM_META), keys::sm_meta::LAST_APPLIED)? {
            Some(b) => Some(codec::decode(&b)?),
            None => None,
        };
    let membership: StoredMembership =
        match snap.get_cf(store.cf(CF_SM_META), keys::sm_meta::MEMBERSHIP)? {
            Some(b) => codec::decode(&b)?,
            None => StoredMembership::default(),
        };
    let snapshot_id = match &last_applied {
        Some(l) => format!("{}-{}-{}", l.leader_id.term, l.index, snapshot_id_suffix),
        None => format!("0-0-{snapshot_id_suffix}"),
    };
    let meta = SnapshotMeta {
        last_log_id: last_applied,
        last_membership: membership,
        snapshot_id,
    };
    let file = File::create(path)?;
    let mut w = Crc {
        inner: BufWriter::with_capacity(1 << 20, file),
        hasher: crc32fast::Hasher::new(),
    };
    w.write_all(MAGIC)?;
    let meta_bytes = codec::encode(&meta);
    w.write_all(&(meta_bytes.len() as u32).to_be_bytes())?;
    w.write_all(&meta_bytes)?;
    for (i, family) in SM_FAMILIES.iter().enumerate() {
        let tag = (i + 1) as u8;
        for item in snap.iterator_cf(store.cf(family), IteratorMode::Start) {
            let (k, v) = item?;
            w.write_all(&[tag])?;
            w.write_all(&(k.len() as u32).to_be_bytes())?;
            w.write_all(&k)?;
            w.write_all(&(v.len() as u32).to_be_bytes())?;
            w.write_all(&v)?;
        }
    }
    w.write_all(&[0])?;
    let crc = w.hasher.clone().finalize();
    let mut inner = w.inner;
    inner.write_all(&crc.to_be_bytes())?;
    let file = inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(meta)
}

/// Reads only the meta of a snapshot file.
pub fn read_meta(path: &Path) -> Result<SnapshotMeta, StoreError> {
    let mut r = BufReader::new(File::open(path)?);
    read_header(&mut r)
}

fn read_header(r: &mut impl Read) -> Result<SnapshotMeta, StoreError> {
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(corrupt("not a Nexus snapshot (bad magic)"));
    }
    let len = read_u32(r)?;
    Ok(codec::decode(&read_bytes(r, len)?)?)
}

/// Replaces the whole state machine with the snapshot in `path`, atomically (one write batch,
/// synced). The snapshot is verified completely before anything is changed.
pub fn install(store: &Store, path: &Path) -> Result<SnapshotMeta, StoreError> {
    let mut r = CrcReader {
        inner: BufReader::with_capacity(1 << 20, File::open(path)?),
        hasher: crc32fast::Hasher::new(),
    };
    let meta = read_header(&mut r)?;
    let mut batch = WriteBatch::default();
    for family in SM_FAMILIES {
        batch.delete_range_cf(store.cf(family), [].as_slice(), keys::KEYSPACE_END);
    }
    loop {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag)?;
        if tag[0] == 0 {
            break;
        }
        let family = SM_FAMILIES
            .get(tag[0] as usize - 1)
            .ok_or_else(|| corrupt(format!("unknown column family tag {}", tag[0])))?;
        let klen = read_u32(&mut r)?;
        let key = read_bytes(&mut r, klen)?;
        let vlen = read_u32(&mut r)?;
        let value = read_bytes(&mut r, vlen)?;
        batch.put_cf(store.cf(family), key, value);
    }
    let computed = r.hasher.clone().finalize();
    let stored = read_u32(&mut r.inner)?;
    if computed != stored {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored:08x}, computed {computed:08x})"
        )));
    }
    // The snapshot's own meta is authoritative for the watermark and membership.
    if let Some(last) = &meta.last_log_id {
        batch.put_cf(
            store.cf(CF_SM_META),
            keys::sm_meta::LAST_APPLIED,
            codec::encode(last),
        );
    }
    batch.put_cf(
        store.cf(CF_SM_META),
        keys::sm_meta::MEMBERSHIP,
        codec::encode(&meta.last_membership),
    );
    let mut opts = WriteOptions::default();
    opts.set_sync(true);
    store.db().write_opt(batch, &opts)?;
    // A snapshot from a node that kept no usage figures (an older build): compute them.
    if crate::store::usage::missing(store)? {
        crate::store::usage::recompute(store)?;
    }
    Ok(meta)
}
