//! The embedded store: one SQLite file at `[store].path`, its schema applied by versioned
//! migrations (`PRAGMA user_version` counts those applied), in WAL mode so readers (the admin
//! API, `rafael audit verify --config`) never block the writer.
//!
//! rusqlite is synchronous: async callers go through `tokio::task::spawn_blocking`.
//!
//! The SQL of each kind of record lives here, one module per kind ([`rounds`], [`proposals`],
//! [`genomes`], [`patterns`]), so a second store is one new module rather than a hunt through the domain
//! code.
//!
//! Its health is watched two ways, both cheap enough for every readiness probe: `PRAGMA
//! quick_check` once at open (a pass over every page, milliseconds for a store of a few
//! megabytes), whose failure stays reported; and, before every audit append and every probe,
//! a `stat` of the path compared with the file opened, so a store deleted or replaced while
//! rafael runs is noticed instead of written into an unlinked file.

use std::{
    path::{Path, PathBuf},
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use rusqlite::Connection;

pub mod genomes;
pub mod patterns;
pub mod proposals;
pub mod rounds;

/// The schema, one migration per entry, applied in order and never edited once released: a
/// change is a new entry.
const MIGRATIONS: &[&str] = &[
    // 1: the audit log (see `crate::audit`).
    "CREATE TABLE audit (
        id        INTEGER PRIMARY KEY,
        at        TEXT NOT NULL,
        actor     TEXT NOT NULL,
        action    TEXT NOT NULL,
        target    TEXT NOT NULL,
        details   TEXT NOT NULL,
        prev_hash TEXT NOT NULL,
        hash      TEXT NOT NULL
    );",
    // 2: chaos experiments (see `crate::chaos`).
    "CREATE TABLE experiments (
        id           INTEGER PRIMARY KEY,
        route        TEXT NOT NULL,
        state        TEXT NOT NULL,
        spec         TEXT NOT NULL,
        faults       TEXT NOT NULL,
        abort_when   TEXT NOT NULL,
        started_at   TEXT,
        ends_at      TEXT,
        abort_reason TEXT,
        report       TEXT
    );",
    // 3: evolution rounds and proposals (see `store::rounds`, `store::proposals`). Each row
    // keeps the whole object as JSON in `body`; the other columns copy the fields queries
    // filter and order on, written from the same object in the same statement.
    "CREATE TABLE rounds (
        id         INTEGER PRIMARY KEY,
        route      TEXT NOT NULL,
        state      TEXT NOT NULL,
        started_at TEXT NOT NULL,
        ended_at   TEXT,
        body       TEXT NOT NULL
    );
    CREATE INDEX rounds_route ON rounds (route, id);
    CREATE INDEX rounds_state ON rounds (state);
    CREATE TABLE proposals (
        id              INTEGER PRIMARY KEY,
        route           TEXT NOT NULL,
        state           TEXT NOT NULL,
        created_at      TEXT NOT NULL,
        expires_at      TEXT NOT NULL,
        base_generation INTEGER NOT NULL,
        body            TEXT NOT NULL
    );
    CREATE INDEX proposals_route_state ON proposals (route, state);
    CREATE INDEX proposals_state ON proposals (state);",
    // 4: genome lineage (see `store::genomes`): one row per generation of a route, and the
    // policy the config file last gave each route.
    "CREATE TABLE genomes (
        route      TEXT NOT NULL,
        generation INTEGER NOT NULL,
        applied_at TEXT NOT NULL,
        source     TEXT NOT NULL,
        body       TEXT NOT NULL,
        PRIMARY KEY (route, generation)
    );
    CREATE TABLE file_policies (
        route  TEXT PRIMARY KEY,
        genome TEXT NOT NULL
    );",
    // 5: the vault's patterns other than the built-in ones (see `store::patterns`): learned
    // from a watch that kept its genome, or saved by an approver.
    "CREATE TABLE patterns (
        name       TEXT PRIMARY KEY,
        source     TEXT NOT NULL,
        created_at TEXT NOT NULL,
        body       TEXT NOT NULL
    );",
];

/// Now, as the records' times are written (`created_at`, `applied_at`, ...): RFC 3339, UTC,
/// to the second.
pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// Most `quick_check` findings kept for the report: the first few say what is wrong.
const INTEGRITY_FINDINGS: usize = 3;

/// The open store.
#[derive(Debug)]
pub struct Store {
    connection: Mutex<Connection>,
    path: PathBuf,
    /// Device and inode of the file opened; `None` in memory (or off Unix).
    identity: Option<(u64, u64)>,
    /// What `PRAGMA quick_check` found at open, when it was not `ok`.
    integrity: Option<String>,
    /// Set once a vanished file has been logged, so probes do not repeat it every few seconds.
    gone_reported: AtomicBool,
}

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    // SQLite's message is in ours, so the error is not also a `source`: `{:#}` (anyhow) would
    // print it again, and rusqlite's own source (the result code) a third time.
    #[error("store {path}: {error}")]
    Sqlite {
        /// The database file.
        path: String,
        /// What SQLite said.
        error: rusqlite::Error,
    },
    /// `PRAGMA quick_check` found damage when the store was opened.
    #[error("store {path} failed its integrity check (PRAGMA quick_check): {findings}")]
    Corrupt {
        /// The database file.
        path: String,
        /// The first findings.
        findings: String,
    },
    /// The file opened is no longer at its path (deleted, or replaced by another file).
    #[error(
        "store {path}: the file is no longer there (deleted or replaced while rafael ran); \
         nothing more is written to it; restore it or restart rafael"
    )]
    Gone {
        /// The database file.
        path: String,
    },
    /// An update named a record the store does not hold.
    #[error("store {path}: no {kind} {id}")]
    NotFound {
        /// The database file.
        path: String,
        /// What was looked for (`round`, `proposal`).
        kind: &'static str,
        /// Its id.
        id: i64,
    },
    /// The file was written by a newer rafael.
    #[error(
        "store {path}: schema version {found} is newer than this rafael knows ({known}); upgrade rafael"
    )]
    TooNew {
        /// The database file.
        path: String,
        /// Its schema version.
        found: u32,
        /// The newest this build knows.
        known: u32,
    },
}

// === impl Store ===

impl Store {
    /// Opens (creating if needed) the database at `path` and brings its schema up to date.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let connection = Connection::open(path).map_err(|error| StoreError::Sqlite {
            path: path.display().to_string(),
            error,
        })?;
        Self::setup(connection, path.to_owned(), file_identity(path))
    }

    /// A store that lives in memory only (the demo's).
    pub fn in_memory() -> Result<Self, StoreError> {
        let connection = Connection::open_in_memory().map_err(|error| StoreError::Sqlite {
            path: ":memory:".to_owned(),
            error,
        })?;
        Self::setup(connection, PathBuf::from(":memory:"), None)
    }

    fn setup(
        mut connection: Connection,
        path: PathBuf,
        identity: Option<(u64, u64)>,
    ) -> Result<Self, StoreError> {
        let sqlite = |error| StoreError::Sqlite {
            path: path.display().to_string(),
            error,
        };
        connection
            .busy_timeout(Duration::from_secs(5))
            .map_err(sqlite)?;
        // WAL: readers see a consistent snapshot while the sidecar writes; NORMAL sync is
        // durable across a process crash (a SIGKILL) and skips an fsync per commit.
        connection
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(sqlite)?;
        connection
            .pragma_update(None, "synchronous", "NORMAL")
            .map_err(sqlite)?;
        // Before any migration writes to it.
        let integrity = quick_check(&connection);
        let applied: u32 = connection
            .pragma_query_value(None, "user_version", |row| row.get(0))
            .map_err(sqlite)?;
        let known = MIGRATIONS.len() as u32;
        if applied > known {
            return Err(StoreError::TooNew {
                path: path.display().to_string(),
                found: applied,
                known,
            });
        }
        for (version, migration) in MIGRATIONS.iter().enumerate().skip(applied as usize) {
            let transaction = connection.transaction().map_err(sqlite)?;
            transaction.execute_batch(migration).map_err(sqlite)?;
            transaction
                .pragma_update(None, "user_version", version as u32 + 1)
                .map_err(sqlite)?;
            transaction.commit().map_err(sqlite)?;
        }
        Ok(Self {
            connection: Mutex::new(connection),
            path,
            identity,
            integrity,
            gone_reported: AtomicBool::new(false),
        })
    }

    /// `Ok` when the store passed its integrity check at open and its file is still the one
    /// opened; otherwise what is wrong ([`StoreError::Corrupt`], [`StoreError::Gone`]).
    pub fn health(&self) -> Result<(), StoreError> {
        if let Some(findings) = &self.integrity {
            return Err(StoreError::Corrupt {
                path: self.path.display().to_string(),
                findings: findings.clone(),
            });
        }
        self.check_present()
    }

    /// `Ok` while the file opened is still at the store's path (one `stat`): writes to a file
    /// that was deleted would vanish with the process, so callers about to record something
    /// durable ask first.
    pub fn check_present(&self) -> Result<(), StoreError> {
        let Some(opened) = self.identity else {
            return Ok(());
        };
        if file_identity(&self.path) == Some(opened) {
            return Ok(());
        }
        let error = StoreError::Gone {
            path: self.path.display().to_string(),
        };
        if !self.gone_reported.swap(true, Ordering::Relaxed) {
            tracing::error!("{error}");
        }
        Err(error)
    }

    /// The schema version (migrations applied).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.with(|c| c.pragma_query_value(None, "user_version", |row| row.get(0)))
    }

    /// [`StoreError::NotFound`] for the `kind` with `id`.
    fn not_found(&self, kind: &'static str, id: i64) -> StoreError {
        StoreError::NotFound {
            path: self.path.display().to_string(),
            kind,
            id,
        }
    }

    /// Runs `f` on the connection (one caller at a time).
    pub fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut connection = self
            .connection
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        f(&mut connection).map_err(|error| StoreError::Sqlite {
            path: self.path.display().to_string(),
            error,
        })
    }
}

/// `value` as the JSON of a `body` column.
fn to_body(value: &impl serde::Serialize) -> rusqlite::Result<String> {
    serde_json::to_string(value).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

/// The object in the `body` column at `index` of `row`: a body that no longer parses (written
/// by hand, or by a rafael whose objects differed) is an error naming the column, not a panic.
fn from_body<T: serde::de::DeserializeOwned>(
    row: &rusqlite::Row<'_>,
    index: usize,
) -> rusqlite::Result<T> {
    let text: String = row.get(index)?;
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// `None` when `PRAGMA quick_check` says `ok`, else its first findings (or the error it
/// stopped on, which is a finding too: SQLite answers "database disk image is malformed").
fn quick_check(connection: &Connection) -> Option<String> {
    let findings = connection
        .prepare("PRAGMA quick_check")
        .and_then(|mut statement| {
            let rows = statement.query_map([], |row| row.get::<_, String>(0))?;
            rows.take(INTEGRITY_FINDINGS)
                .collect::<rusqlite::Result<Vec<_>>>()
        });
    match findings {
        Ok(findings) if findings.len() == 1 && findings[0] == "ok" => None,
        Ok(findings) => Some(findings.join("; ")),
        Err(error) => Some(error.to_string()),
    }
}

/// Device and inode of the file at `path`: what tells the file opened from one put in its
/// place.
#[cfg(unix)]
fn file_identity(path: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

#[cfg(not(unix))]
fn file_identity(_path: &Path) -> Option<(u64, u64)> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_run_once_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rafael.db");
        let store = Store::open(&path).unwrap();
        assert_eq!(store.schema_version().unwrap(), MIGRATIONS.len() as u32);
        drop(store);
        // Opening again applies nothing twice (the CREATE TABLE would fail).
        let store = Store::open(&path).unwrap();
        store
            .with(|c| c.pragma_update(None, "user_version", 99))
            .unwrap();
        drop(store);
        let error = Store::open(&path).unwrap_err().to_string();
        assert!(error.contains("schema version 99 is newer"), "{error}");
    }

    #[test]
    fn an_error_prints_sqlites_message_once_even_with_its_chain() {
        let dir = tempfile::tempdir().unwrap();
        let error = Store::open(&dir.path().join("missing/rafael.db")).unwrap_err();
        let chain = format!("{:#}", anyhow::Error::from(error)).to_lowercase();
        assert_eq!(
            chain.matches("unable to open database file").count(),
            1,
            "{chain}"
        );
    }

    #[test]
    fn a_deleted_or_replaced_file_is_noticed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rafael.db");
        let store = Store::open(&path).unwrap();
        assert!(store.health().is_ok());
        std::fs::remove_file(&path).unwrap();
        let error = store.check_present().unwrap_err().to_string();
        assert!(error.contains("no longer there"), "{error}");
        // Another file at the same path is not the one opened either.
        drop(Store::open(&path).unwrap());
        assert!(store.health().is_err());
        assert!(Store::in_memory().unwrap().health().is_ok());
    }
}
