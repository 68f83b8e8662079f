//! The embedded store: one SQLite file at `[store].path`, its schema applied by versioned
//! migrations (`PRAGMA user_version` counts those applied), in WAL mode so readers (the admin
//! API, `rafael audit verify --config`) never block the writer.
//!
//! rusqlite is synchronous: async callers go through `tokio::task::spawn_blocking`.

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use rusqlite::Connection;

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
];

/// The open store.
#[derive(Debug)]
pub struct Store {
    connection: Mutex<Connection>,
    path: PathBuf,
}

/// Why the store could not be used.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite refused.
    #[error("store {path}: {source}")]
    Sqlite {
        /// The database file.
        path: String,
        /// What SQLite said.
        source: rusqlite::Error,
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
        let connection = Connection::open(path).map_err(|source| StoreError::Sqlite {
            path: path.display().to_string(),
            source,
        })?;
        Self::setup(connection, path.to_owned())
    }

    /// A store that lives in memory only (the demo's).
    pub fn in_memory() -> Result<Self, StoreError> {
        let connection = Connection::open_in_memory().map_err(|source| StoreError::Sqlite {
            path: ":memory:".to_owned(),
            source,
        })?;
        Self::setup(connection, PathBuf::from(":memory:"))
    }

    fn setup(mut connection: Connection, path: PathBuf) -> Result<Self, StoreError> {
        let sqlite = |source| StoreError::Sqlite {
            path: path.display().to_string(),
            source,
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
        })
    }

    /// The schema version (migrations applied).
    pub fn schema_version(&self) -> Result<u32, StoreError> {
        self.with(|c| c.pragma_query_value(None, "user_version", |row| row.get(0)))
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
        f(&mut connection).map_err(|source| StoreError::Sqlite {
            path: self.path.display().to_string(),
            source,
        })
    }
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
}
