//! The vault's stored patterns (DESIGN §7.8): learned ones and those approvers saved. The
//! built-in catalogue is compiled in and never stored. One row per pattern, the whole
//! [`Pattern`] as JSON in `body`; a name is taken once and never rewritten.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, from_body, to_body};
use crate::vault::Pattern;

// === impl Store ===

impl Store {
    /// Stores `pattern`; `false` (and nothing written) when a stored pattern has its name.
    pub fn insert_pattern(&self, pattern: &Pattern) -> Result<bool, StoreError> {
        self.with(|c| {
            let inserted = c.execute(
                "INSERT INTO patterns (name, source, created_at, body) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO NOTHING",
                params![
                    pattern.name,
                    pattern.source,
                    pattern.created_at.as_deref().unwrap_or_default(),
                    to_body(pattern)?
                ],
            )?;
            Ok(inserted == 1)
        })
    }

    /// Every stored pattern, newest first.
    pub fn patterns(&self) -> Result<Vec<Pattern>, StoreError> {
        self.with(|c| {
            let mut statement =
                c.prepare("SELECT body FROM patterns ORDER BY created_at DESC, rowid DESC")?;
            let rows = statement.query_map([], |row| from_body(row, 0))?;
            rows.collect()
        })
    }

    /// The stored pattern named `name`.
    pub fn pattern(&self, name: &str) -> Result<Option<Pattern>, StoreError> {
        self.with(|c| {
            c.query_row("SELECT body FROM patterns WHERE name = ?1", [name], |row| {
                from_body(row, 0)
            })
            .optional()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(name: &str, at: &str, attempts: u32) -> Pattern {
        let mut pattern = crate::vault::builtin_pattern("adaptive-retry")
            .expect("a built-in pattern")
            .clone();
        pattern.name = name.to_owned();
        pattern.source = "learned".to_owned();
        pattern.created_at = Some(at.to_owned());
        if let Some(retry) = pattern.genome.retry.as_mut() {
            retry.max_attempts = attempts;
        }
        pattern
    }

    #[test]
    fn a_name_is_taken_once_and_patterns_list_newest_first_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rafael.db");
        {
            let store = Store::open(&path).unwrap();
            assert!(
                store
                    .insert_pattern(&pattern("a", "2026-12-01T10:00:00Z", 2))
                    .unwrap()
            );
            assert!(
                store
                    .insert_pattern(&pattern("b", "2026-12-01T11:00:00Z", 3))
                    .unwrap()
            );
            assert!(
                !store
                    .insert_pattern(&pattern("a", "2026-12-01T12:00:00Z", 4))
                    .unwrap()
            );
        }
        let store = Store::open(&path).unwrap();
        let names: Vec<String> = store
            .patterns()
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        assert_eq!(names, ["b", "a"]);
        assert_eq!(
            store.pattern("a").unwrap(),
            Some(pattern("a", "2026-12-01T10:00:00Z", 2))
        );
        assert_eq!(store.pattern("c").unwrap(), None);
    }
}
