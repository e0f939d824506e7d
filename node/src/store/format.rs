//! The data directory's format version, recorded in `<data-dir>/FORMAT` as
//! `nexus-data-format <N>`. A node migrates an older directory step by step and refuses a
//! newer one, so that a downgrade never misreads data it does not understand.

use std::io::Write;
use std::path::Path;

/// The format this build writes.
pub const CURRENT_FORMAT: u32 = 3;
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
];

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
}
