//! The data directory's format version, recorded in `<data-dir>/FORMAT` as
//! `nexus-data-format <N>`. A node migrates an older directory step by step and refuses a
//! newer one, so that a downgrade never misreads data it does not understand.

use std::io::Write;
use std::path::Path;

/// The format this build writes.
pub const CURRENT_FORMAT: u32 = 7;
const FORMAT_FILE: &str = "FORMAT";
const MAGIC: &str = "nexus-data-format";

/// A step that upgrades a data directory from `from` to `from + 1`.
pub struct Migration {
    pub from: u32,
    pub describe: &'static str,
    pub run: fn(&Path) -> std::io::Result<()>,
}

/// Every migration this build knows, in order. A format change adds its step here and bumps
/// `CURRENT_FORMAT`.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        from: 1,
        describe: "format 2: message vectors, identities, secrets and the audit log. Their \
               column families (message_vectors, message_vector_ids, iam, api_key_ids, \
               secrets, audit) are created on open, and the log may hold commands a format-1 \
               build cannot decode (AppendWithVectors, Iam, Secret, Audited, Audit); nothing \
               existing is rewritten",
        run: |_| Ok(()),
    },
    Migration {
        from: 2,
        describe: "format 3: per-tenant usage (stored items and bytes) and limits. The usage \
               column family is created on open and filled by a scan of the tenant data \
               (`store::usage::recompute`); the log may hold IamOp::SetTenantLimits, which a \
               format-2 build cannot decode",
        run: |_| Ok(()),
    },
    Migration {
        from: 3,
        describe: "format 4: Raft groups. The log (raft_log), Raft's metadata (raft_meta) \
               and the applied watermark and membership (sm_meta) are keyed by a group id; \
               the single group of earlier formats becomes group 0. Every log key is \
               rewritten (in batches, each key's move atomic, so an interrupted migration \
               resumes)",
        run: |dir| {
            let db = dir.join("db");
            if !db.exists() {
                return Ok(());
            }
            let store = super::Store::open(&db).map_err(std::io::Error::other)?;
            let moved = to_groups(&store).map_err(std::io::Error::other)?;
            tracing::info!(log_entries = moved, "moved the log and metadata to group 0");
            Ok(())
        },
    },
    Migration {
        from: 4,
        describe: "format 5: the audit log as one hash chain per tenant and incarnation \
               (tenant-first keys, retention by age and count). Format 4's single chain is \
               verified and re-chained on open (`command::bring_up_to_date`, which also runs \
               after installing a snapshot from an older build): records keep their sequence \
               numbers and fields and get new links and hashes; the log may hold \
               Op::AuditTrim, which a format-4 build cannot decode",
        run: |_| Ok(()),
    },
    Migration {
        from: 5,
        describe: "format 6: schedules and their runs, and events. The schedules and \
               events column families are created on open and are empty; the log and \
               snapshots may hold Op::Tool, Op::Schedule and Op::Event commands and those \
               families, which a format-5 build cannot decode; nothing existing is rewritten",
        run: |_| Ok(()),
    },
    Migration {
        from: 6,
        describe: "format 7: workflows and their runs, triggers, webhooks and their \
               deliveries. The workflows and hooks column families are created on open and \
               are empty; the log and snapshots may hold Op::Workflow and Op::Hook commands \
               and those families, which a format-6 build cannot decode; nothing existing is \
               rewritten",
        run: |_| Ok(()),
    },
];

/// Moves format 3's single-group keys to group 0's (format 4). Idempotent: only keys of the
/// old shape are moved, each with its deletion in the same batch.
pub fn to_groups(store: &super::Store) -> Result<u64, super::StoreError> {
    use super::keys::{self, raft_meta, sm_meta};
    use super::{CF_RAFT_LOG, CF_RAFT_META, CF_SM_META};
    use rocksdb::{IteratorMode, WriteBatch};
    const BATCH_BYTES: usize = 32 << 20;
    let cf = store.cf(CF_RAFT_LOG);
    let mut moved = 0u64;
    let mut batch = WriteBatch::default();
    // The iterator reads the log as it was when it was made: the new keys written meanwhile
    // are not seen again.
    for item in store.db().iterator_cf(cf, IteratorMode::Start) {
        let (k, v) = item?;
        let Some(index) = keys::format3::log_key_index(&k) else {
            continue;
        };
        batch.put_cf(cf, keys::log_key(0, index), &v);
        batch.delete_cf(cf, &k);
        moved += 1;
        if batch.size_in_bytes() >= BATCH_BYTES {
            store.db().write(std::mem::take(&mut batch))?;
        }
    }
    type KeyOf = fn(keys::GroupId, &[u8]) -> Vec<u8>;
    let metadata: [(&str, KeyOf, [&[u8]; 3]); 2] = [
        (
            CF_RAFT_META,
            raft_meta::key,
            [
                raft_meta::VOTE,
                raft_meta::COMMITTED,
                raft_meta::LAST_PURGED,
            ],
        ),
        (
            CF_SM_META,
            sm_meta::key,
            [
                sm_meta::LAST_APPLIED,
                sm_meta::MEMBERSHIP,
                sm_meta::INSTALLING,
            ],
        ),
    ];
    for (family, key_of, names) in metadata {
        for name in names {
            if let Some(v) = store.get(family, name)? {
                batch.put_cf(store.cf(family), key_of(0, name), v);
                batch.delete_cf(store.cf(family), name);
            }
        }
    }
    store.db().write(batch)?;
    store.db().flush_wal(true)?;
    Ok(moved)
}

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("data directory {dir} has format {found}, but this nexus understands formats up to {supported}: run a newer nexus on it (refusing to start so that nothing is misread)")]
    TooNew {
        dir: String,
        found: u32,
        supported: u32,
    },
    #[error("data directory {dir} has format {found} and no migration from it is known")]
    NoMigration { dir: String, found: u32 },
    #[error("{dir}/FORMAT is not a Nexus format file: {content:?}")]
    Unreadable { dir: String, content: String },
    #[error(
        "data directory {dir} is not empty and has no FORMAT file; it was not written by Nexus"
    )]
    Foreign { dir: String },
    #[error("I/O on the data directory: {0}")]
    Io(#[from] std::io::Error),
}

/// Prepares `dir` for this build: creates and stamps a new directory, migrates an older one,
/// refuses a newer or foreign one. Returns the format found (before migration).
pub fn prepare(dir: &Path) -> Result<u32, FormatError> {
    prepare_with(dir, CURRENT_FORMAT, MIGRATIONS)
}

pub fn prepare_with(
    dir: &Path,
    current: u32,
    migrations: &[Migration],
) -> Result<u32, FormatError> {
    std::fs::create_dir_all(dir)?;
    let display = dir.display().to_string();
    let path = dir.join(FORMAT_FILE);
    let found = match std::fs::read_to_string(&path) {
        Ok(content) => parse(&content).ok_or_else(|| FormatError::Unreadable {
            dir: display.clone(),
            content: content.clone(),
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if std::fs::read_dir(dir)?.next().is_some() {
                return Err(FormatError::Foreign { dir: display });
            }
            write(dir, current)?;
            return Ok(current);
        }
        Err(e) => return Err(e.into()),
    };
    if found > current {
        return Err(FormatError::TooNew {
            dir: display,
            found,
            supported: current,
        });
    }
    let mut at = found;
    while at < current {
        let step = migrations
            .iter()
            .find(|m| m.from == at)
            .ok_or(FormatError::NoMigration {
                dir: display.clone(),
                found: at,
            })?;
        tracing::info!(
            from = at,
            to = at + 1,
            step = step.describe,
            "migrating data directory"
        );
        (step.run)(dir)?;
        at += 1;
        write(dir, at)?;
    }
    Ok(found)
}

fn parse(content: &str) -> Option<u32> {
    let mut words = content.split_whitespace();
    (words.next()? == MAGIC).then_some(())?;
    words.next()?.parse().ok()
}

/// Writes the format file atomically (temp file, fsync, rename).
fn write(dir: &Path, format: u32) -> std::io::Result<()> {
    let tmp = dir.join(format!("{FORMAT_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    writeln!(f, "{MAGIC} {format}")?;
    f.sync_all()?;
    std::fs::rename(&tmp, dir.join(FORMAT_FILE))?;
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_a_new_directory_and_accepts_it_again() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(prepare(dir.path()).unwrap(), CURRENT_FORMAT);
        assert_eq!(prepare(dir.path()).unwrap(), CURRENT_FORMAT);
    }

    #[test]
    fn refuses_a_newer_directory_with_a_clear_message() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), CURRENT_FORMAT + 1).unwrap();
        let err = prepare(dir.path()).unwrap_err();
        assert!(matches!(err, FormatError::TooNew { .. }));
        assert!(err.to_string().contains("run a newer nexus"));
    }

    #[test]
    fn refuses_a_foreign_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("something"), b"x").unwrap();
        assert!(matches!(
            prepare(dir.path()),
            Err(FormatError::Foreign { .. })
        ));
    }

    #[test]
    fn migrates_an_older_directory_step_by_step() {
        fn add_marker(dir: &Path) -> std::io::Result<()> {
            std::fs::write(dir.join("migrated-from-1"), b"ok")
        }
        fn add_marker2(dir: &Path) -> std::io::Result<()> {
            assert!(dir.join("migrated-from-1").exists(), "steps run in order");
            std::fs::write(dir.join("migrated-from-2"), b"ok")
        }
        let steps = [
            Migration {
                from: 1,
                describe: "one",
                run: add_marker,
            },
            Migration {
                from: 2,
                describe: "two",
                run: add_marker2,
            },
        ];
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 1).unwrap();
        assert_eq!(prepare_with(dir.path(), 3, &steps).unwrap(), 1);
        assert!(dir.path().join("migrated-from-2").exists());
        assert_eq!(
            parse(&std::fs::read_to_string(dir.path().join("FORMAT")).unwrap()),
            Some(3)
        );
        // A directory whose migration is unknown is refused, not half-read.
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), 1).unwrap();
        assert!(matches!(
            prepare_with(dir.path(), 2, &[]),
            Err(FormatError::NoMigration { found: 1, .. })
        ));
    }

    #[test]
    fn format_4_moves_the_single_group_to_group_0_and_can_resume() {
        use crate::store::keys::{self, raft_meta, sm_meta};
        use crate::store::{Store, CF_RAFT_LOG, CF_RAFT_META, CF_SM_META};
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let db = store.db();
        for index in 1..=300u64 {
            db.put_cf(
                store.cf(CF_RAFT_LOG),
                index.to_be_bytes(),
                index.to_string(),
            )
            .unwrap();
        }
        db.put_cf(store.cf(CF_RAFT_META), raft_meta::VOTE, b"vote")
            .unwrap();
        db.put_cf(store.cf(CF_SM_META), sm_meta::LAST_APPLIED, b"applied")
            .unwrap();
        // As if a first run stopped after one key: it was moved already.
        db.delete_cf(store.cf(CF_RAFT_LOG), 1u64.to_be_bytes())
            .unwrap();
        db.put_cf(store.cf(CF_RAFT_LOG), keys::log_key(0, 1), b"1")
            .unwrap();

        assert_eq!(to_groups(&store).unwrap(), 299);
        assert_eq!(to_groups(&store).unwrap(), 0, "nothing left to move");
        let log: Vec<(u32, u64, String)> = db
            .iterator_cf(store.cf(CF_RAFT_LOG), rocksdb::IteratorMode::Start)
            .map(|r| {
                let (k, v) = r.unwrap();
                let (g, i) = keys::parse_log_key(&k).expect("every key has the new shape");
                (g, i, String::from_utf8(v.to_vec()).unwrap())
            })
            .collect();
        assert_eq!(log.len(), 300);
        assert!(log
            .iter()
            .enumerate()
            .all(|(n, (g, i, v))| *g == 0 && *i == n as u64 + 1 && *v == i.to_string()));
        assert_eq!(
            store
                .get(CF_RAFT_META, &raft_meta::key(0, raft_meta::VOTE))
                .unwrap()
                .as_deref(),
            Some(b"vote".as_slice())
        );
        assert_eq!(store.get(CF_RAFT_META, raft_meta::VOTE).unwrap(), None);
        assert_eq!(
            store
                .get(CF_SM_META, &sm_meta::key(0, sm_meta::LAST_APPLIED))
                .unwrap()
                .as_deref(),
            Some(b"applied".as_slice())
        );
    }
}
