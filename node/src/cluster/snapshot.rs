//! The snapshot file: a point-in-time copy of every state-machine column family.
//!
//! Layout (all integers big-endian):
//! ```text
//! "NXSNAP01"                      magic and layout version
//! u32 len, meta                   SnapshotMeta in the value codec
//! { u8 family, u32 klen, key, u32 vlen, value }*   family = index in the machine's families (`Machine::FAMILIES`), from 1
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
use crate::store::keys::GroupId;
use crate::store::{codec, keys, Store, StoreError, CF_SM_META};

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

/// Reads `len` bytes, allocating as they arrive rather than what `len` claims (a corrupt or
/// forged length costs what the file holds, not 4 GiB; seen while writing the snapshot fuzz target).
fn read_bytes(r: &mut impl Read, len: u32) -> std::io::Result<Vec<u8>> {
    let mut v = Vec::with_capacity((len as usize).min(64 << 10));
    r.take(u64::from(len)).read_to_end(&mut v)?;
    if v.len() != len as usize {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            format!("{len} bytes claimed, {} there", v.len()),
        ));
    }
    Ok(v)
}

/// Writes a snapshot of `group`'s state machine to `path` (fsynced) and returns its meta.
///
/// `sm_meta` (the applied watermark and membership, per group) is not written as records:
/// the meta carries both, and install writes them under the installing group's keys. An
/// older file that holds `sm_meta` records is read the same way (they are skipped).
pub fn write(
    store: &Store,
    group: GroupId,
    families: &[&str],
    path: &Path,
    snapshot_id_suffix: &str,
) -> Result<SnapshotMeta, StoreError> {
    let snap = store.db().snapshot();
    let last_applied: Option<LogId> = match snap.get_cf(
        store.cf(CF_SM_META),
        keys::sm_meta::key(group, keys::sm_meta::LAST_APPLIED),
    )? {
        Some(b) => Some(codec::decode(&b)?),
        None => None,
    };
    let membership: StoredMembership = match snap.get_cf(
        store.cf(CF_SM_META),
        keys::sm_meta::key(group, keys::sm_meta::MEMBERSHIP),
    )? {
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
    for (i, family) in families.iter().enumerate() {
        if *family == CF_SM_META {
            continue;
        }
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

/// Longest key and largest value a snapshot record may declare; checked, with the file's
/// length, before anything is allocated for it.
const MAX_RECORD_KEY_BYTES: u32 = 1 << 20;
const MAX_RECORD_VALUE_BYTES: u32 = 256 << 20;

/// Reads every record of the snapshot in `path` in order, handing each to `f` (the family's
/// index in `families`, key, value), and checks the checksum at the end. Memory: one
/// record at a time.
fn for_each_record(
    families: &[&str],
    path: &Path,
    mut f: impl FnMut(usize, &[u8], &[u8]) -> Result<(), StoreError>,
) -> Result<SnapshotMeta, StoreError> {
    let file_len = std::fs::metadata(path)?.len();
    let mut r = CrcReader {
        inner: BufReader::with_capacity(1 << 20, File::open(path)?),
        hasher: crc32fast::Hasher::new(),
    };
    let meta = read_header(&mut r)?;
    let checked_len = |len: u32, max: u32, what: &str| {
        if len > max || u64::from(len) > file_len {
            Err(corrupt(format!(
                "a record's {what} claims {len} bytes (at most {max}, file {file_len})"
            )))
        } else {
            Ok(len)
        }
    };
    loop {
        let mut tag = [0u8; 1];
        r.read_exact(&mut tag)?;
        if tag[0] == 0 {
            break;
        }
        let family = tag[0] as usize - 1;
        if family >= families.len() {
            return Err(corrupt(format!("unknown column family tag {}", tag[0])));
        }
        let klen = checked_len(read_u32(&mut r)?, MAX_RECORD_KEY_BYTES, "key")?;
        let key = read_bytes(&mut r, klen)?;
        let vlen = checked_len(read_u32(&mut r)?, MAX_RECORD_VALUE_BYTES, "value")?;
        let value = read_bytes(&mut r, vlen)?;
        f(family, &key, &value)?;
    }
    let computed = r.hasher.clone().finalize();
    let stored = read_u32(&mut r.inner)?;
    if computed != stored {
        return Err(corrupt(format!(
            "checksum mismatch (stored {stored:08x}, computed {computed:08x})"
        )));
    }
    Ok(meta)
}

/// Reads the snapshot in `path` through, as an install would before changing anything: its
/// header, every record (one at a time) and its checksum. Returns the meta and the records.
pub fn verify_file(path: &Path, families: &[&str]) -> Result<(SnapshotMeta, u64), StoreError> {
    let mut records = 0u64;
    let meta = for_each_record(families, path, |_, _, _| {
        records += 1;
        Ok(())
    })?;
    Ok((meta, records))
}

/// Replaces the whole state machine with the snapshot in `path`, within bounded memory:
///
/// 1. the file is read through once and its checksum verified, before anything changes;
/// 2. each family's records are streamed into an SST file (`SstFileWriter`; the snapshot
///    holds every family's keys in order, as RocksDB iterated them);
/// 3. one synced batch deletes every state-machine key and records an "installing" marker
///    naming `path`; each family's SST file is ingested (moved into the database, newer than
///    the deletion); a last synced batch writes the snapshot's watermark and membership and
///    removes the marker.
///
/// A crash between the marker and its removal leaves a mix of old and new families; the
/// state machine finds the marker when it opens and installs `path` again
/// ([`resume_interrupted_install`]), so the state it serves is never the mix. Stale reads on
/// this node during an install may see it, as they may see any state this node holds.
pub fn install(
    store: &Store,
    group: GroupId,
    families: &[&str],
    path: &Path,
) -> Result<SnapshotMeta, StoreError> {
    for_each_record(families, path, |_, _, _| Ok(()))?;
    let sst_dir = path.with_extension("sst.d");
    let _ = std::fs::remove_dir_all(&sst_dir);
    std::fs::create_dir_all(&sst_dir)?;
    let result = install_from_ssts(store, group, families, path, &sst_dir);
    let _ = std::fs::remove_dir_all(&sst_dir);
    result
}

fn install_from_ssts(
    store: &Store,
    group: GroupId,
    families: &[&str],
    path: &Path,
    sst_dir: &Path,
) -> Result<SnapshotMeta, StoreError> {
    let mut sst_opts = rocksdb::Options::default();
    sst_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let mut files: Vec<(usize, std::path::PathBuf)> = Vec::new();
    let mut open: Option<(usize, rocksdb::SstFileWriter<'_>)> = None;
    let finish = |mut w: rocksdb::SstFileWriter<'_>| w.finish().map_err(StoreError::from);
    let meta = for_each_record(families, path, |family, key, value| {
        if families[family] == CF_SM_META {
            // Written by an older build; the meta below is authoritative.
            return Ok(());
        }
        if open.as_ref().map(|(f, _)| *f) != Some(family) {
            if let Some((_, w)) = open.take() {
                finish(w)?;
            }
            if files.iter().any(|(f, _)| *f == family) {
                return Err(corrupt(format!(
                    "family {} appears twice",
                    families[family]
                )));
            }
            let file = sst_dir.join(format!("{family:02}.sst"));
            let w = rocksdb::SstFileWriter::create(&sst_opts);
            w.open(&file)?;
            files.push((family, file));
            open = Some((family, w));
        }
        let (_, w) = open.as_mut().expect("opened above");
        w.put(key, value)
            .map_err(|e| corrupt(format!("{}: keys out of order? {e}", families[family])))
    })?;
    if let Some((_, w)) = open.take() {
        finish(w)?;
    }

    let sync = || {
        let mut o = WriteOptions::default();
        o.set_sync(true);
        o
    };
    let mut batch = WriteBatch::default();
    for family in families.iter().filter(|f| **f != CF_SM_META) {
        batch.delete_range_cf(store.cf(family), [].as_slice(), keys::KEYSPACE_END);
    }
    batch.put_cf(
        store.cf(CF_SM_META),
        keys::sm_meta::key(group, keys::sm_meta::INSTALLING),
        path.to_string_lossy().as_bytes(),
    );
    store.db().write_opt(batch, &sync())?;
    let mut ingest = rocksdb::IngestExternalFileOptions::default();
    ingest.set_move_files(true);
    for (family, file) in &files {
        store.db().ingest_external_file_cf_opts(
            store.cf(families[*family]),
            &ingest,
            vec![file],
        )?;
    }
    // The snapshot's own meta is authoritative for the watermark and membership.
    let mut batch = WriteBatch::default();
    if let Some(last) = &meta.last_log_id {
        batch.put_cf(
            store.cf(CF_SM_META),
            keys::sm_meta::key(group, keys::sm_meta::LAST_APPLIED),
            codec::encode(last),
        );
    }
    batch.put_cf(
        store.cf(CF_SM_META),
        keys::sm_meta::key(group, keys::sm_meta::MEMBERSHIP),
        codec::encode(&meta.last_membership),
    );
    batch.delete_cf(
        store.cf(CF_SM_META),
        keys::sm_meta::key(group, keys::sm_meta::INSTALLING),
    );
    store.db().write_opt(batch, &sync())?;
    Ok(meta)
}

/// The snapshot file an install interrupted by a crash was installing, if any (see
/// [`install`]).
pub fn interrupted_install(
    store: &Store,
    group: GroupId,
) -> Result<Option<std::path::PathBuf>, StoreError> {
    Ok(store
        .get(
            CF_SM_META,
            &keys::sm_meta::key(group, keys::sm_meta::INSTALLING),
        )?
        .map(|p| std::path::PathBuf::from(String::from_utf8_lossy(&p).into_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SM_FAMILIES;

    fn fill(store: &Store, tenant_values: &[(&[u8], usize, usize)]) {
        for (prefix, n, size) in tenant_values {
            for i in 0..*n {
                let mut k = prefix.to_vec();
                k.extend_from_slice(&(i as u64).to_be_bytes());
                store
                    .db()
                    .put_cf(
                        store.cf(crate::store::CF_KV),
                        k,
                        vec![(i % 251) as u8; *size],
                    )
                    .unwrap();
            }
        }
    }

    fn kv_rows(store: &Store) -> Vec<(Vec<u8>, Vec<u8>)> {
        store
            .db()
            .iterator_cf(store.cf(crate::store::CF_KV), IteratorMode::Start)
            .map(|r| {
                let (k, v) = r.unwrap();
                (k.to_vec(), v.to_vec())
            })
            .collect()
    }

    #[test]
    fn install_replaces_the_state_and_refuses_corrupt_files() {
        let dir = tempfile::tempdir().unwrap();
        let a = Store::open(&dir.path().join("a")).unwrap();
        fill(&a, &[(b"t1/", 500, 100), (b"t2/", 10, 5000)]);
        let snap = dir.path().join("s.snap");
        write(&a, 0, SM_FAMILIES, &snap, "x").unwrap();
        let b = Store::open(&dir.path().join("b")).unwrap();
        fill(&b, &[(b"old/", 50, 10), (b"t1/", 3, 7)]);
        install(&b, 0, SM_FAMILIES, &snap).unwrap();
        assert_eq!(
            kv_rows(&b),
            kv_rows(&a),
            "the snapshot's state, and nothing else"
        );
        assert_eq!(
            interrupted_install(&b, 0).unwrap(),
            None,
            "the marker is gone"
        );

        // A flipped byte, and a length beyond the file, change nothing.
        let mut bytes = std::fs::read(&snap).unwrap();
        let before = kv_rows(&b);
        let at = bytes.len() / 2;
        bytes[at] ^= 0xff;
        let bad = dir.path().join("bad.snap");
        std::fs::write(&bad, &bytes).unwrap();
        assert!(install(&b, 0, SM_FAMILIES, &bad).is_err());
        assert_eq!(kv_rows(&b), before);
    }

    /// Run as a child process by the test below (so that its peak memory is its own).
    #[test]
    fn snapshot_child() {
        let Ok(mode) = std::env::var("NEXUS_SNAPSHOT_CHILD") else {
            return;
        };
        let dir = std::path::PathBuf::from(std::env::var("NEXUS_SNAPSHOT_DIR").unwrap());
        let snap = dir.join("big.snap");
        if mode == "build" {
            let a = Store::open(&dir.join("a")).unwrap();
            fill(&a, &[(b"big/", 320, 1 << 20)]);
            write(&a, 0, SM_FAMILIES, &snap, "big").unwrap();
        } else {
            let b = Store::open(&dir.join("b")).unwrap();
            install(&b, 0, SM_FAMILIES, &snap).unwrap();
            // Counted without holding them: the peak is the install's own.
            let rows = b
                .db()
                .iterator_cf(b.cf(crate::store::CF_KV), IteratorMode::Start)
                .map(|r| {
                    let (_, v) = r.unwrap();
                    assert_eq!(v.len(), 1 << 20);
                })
                .count();
            assert_eq!(rows, 320);
            let status = std::fs::read_to_string("/proc/self/status").unwrap();
            let hwm = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
            println!("child {hwm}");
        }
    }

    #[test]
    fn installing_a_snapshot_larger_than_the_memory_it_may_use_succeeds() {
        if std::env::var("NEXUS_SNAPSHOT_CHILD").is_ok() || !Path::new("/proc/self/status").exists()
        {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let run = |mode: &str| {
            let out = std::process::Command::new(std::env::current_exe().unwrap())
                .args([
                    "--exact",
                    "cluster::snapshot::tests::snapshot_child",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env("NEXUS_SNAPSHOT_CHILD", mode)
                .env("NEXUS_SNAPSHOT_DIR", dir.path())
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{mode}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        run("build");
        let size = std::fs::metadata(dir.path().join("big.snap"))
            .unwrap()
            .len();
        assert!(size > 320 << 20, "a 320 MiB state: {size}");
        let out = run("install");
        let kib: u64 = out
            .lines()
            .find_map(|l| l.split("child VmHWM:").nth(1))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no VmHWM in {out}"));
        // The whole state in one write batch would take more than its 320 MiB.
        assert!(
            kib < 160 * 1024,
            "installing a {} MiB snapshot peaked at {} MiB",
            size >> 20,
            kib >> 10
        );
    }
}
