//! Genome lineage in the store (DESIGN §7.6): one row per generation a route has run, the whole
//! [`GenomeRecord`] as JSON in `body`, append-only; and, per route, the policy the config file
//! last gave it, which is how a reload or a restart tells "the file changed this route" from
//! "the file still says what it said when the guardian swapped something else in".

use rafael_config::Genome;
use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, from_body, to_body};
use crate::guardian::lineage::GenomeRecord;

// === impl Store ===

impl Store {
    /// Appends `record` to its route's lineage. A generation recorded twice is an error: the
    /// lineage never rewrites its past.
    pub fn insert_genome(&self, record: &GenomeRecord) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO genomes (route, generation, applied_at, source, body)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    record.route,
                    generation(record.generation)?,
                    record.applied_at,
                    record.source.as_str(),
                    to_body(record)?
                ],
            )?;
            Ok(())
        })
    }

    /// At most `limit` generations of `route`, newest first.
    pub fn lineage(&self, route: &str, limit: u32) -> Result<Vec<GenomeRecord>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare(
                "SELECT body FROM genomes WHERE route = ?1 ORDER BY generation DESC LIMIT ?2",
            )?;
            let rows = statement.query_map(params![route, limit], |row| from_body(row, 0))?;
            rows.collect()
        })
    }

    /// Generation `generation` of `route`.
    pub fn genome_at(
        &self,
        route: &str,
        generation: u64,
    ) -> Result<Option<GenomeRecord>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT body FROM genomes WHERE route = ?1 AND generation = ?2",
                params![route, self::generation(generation)?],
                |row| from_body(row, 0),
            )
            .optional()
        })
    }

    /// The newest generation of `route`: the one that should be live.
    pub fn latest_genome(&self, route: &str) -> Result<Option<GenomeRecord>, StoreError> {
        Ok(self.lineage(route, 1)?.pop())
    }

    /// The policy the config file gave `route` when rafael last read it.
    pub fn file_policy(&self, route: &str) -> Result<Option<Genome>, StoreError> {
        self.with(|c| {
            c.query_row(
                "SELECT genome FROM file_policies WHERE route = ?1",
                [route],
                |row| from_body(row, 0),
            )
            .optional()
        })
    }

    /// Records `genome` as the policy the config file gives `route`.
    pub fn set_file_policy(&self, route: &str, genome: &Genome) -> Result<(), StoreError> {
        self.with(|c| {
            c.execute(
                "INSERT INTO file_policies (route, genome) VALUES (?1, ?2)
                 ON CONFLICT (route) DO UPDATE SET genome = excluded.genome",
                params![route, to_body(genome)?],
            )?;
            Ok(())
        })
    }
}

/// A generation as SQLite's signed integer.
fn generation(generation: u64) -> rusqlite::Result<i64> {
    i64::try_from(generation).map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use rafael_config::RetryGenes;

    use super::*;
    use crate::guardian::lineage::LineageSource;

    fn record(route: &str, generation: u64, attempts: u32) -> GenomeRecord {
        GenomeRecord {
            route: route.to_owned(),
            generation,
            genome: Genome {
                retry: Some(RetryGenes {
                    max_attempts: attempts,
                    ..RetryGenes::default()
                }),
                ..Genome::default()
            },
            source: LineageSource::File,
            applied_at: "2026-12-01T10:00:00Z".to_owned(),
            actor: "rafael".to_owned(),
            proposal_id: None,
            restores: None,
            reason: None,
        }
    }

    #[test]
    fn the_lineage_is_per_route_newest_first_and_never_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rafael.db");
        {
            let store = Store::open(&path).unwrap();
            store.insert_genome(&record("a", 1, 3)).unwrap();
            store.insert_genome(&record("a", 2, 2)).unwrap();
            store.insert_genome(&record("b", 1, 4)).unwrap();
            assert!(store.insert_genome(&record("a", 2, 5)).is_err());
        }
        // What a restart reads back.
        let store = Store::open(&path).unwrap();
        let lineage = store.lineage("a", 10).unwrap();
        assert_eq!(
            lineage.iter().map(|r| r.generation).collect::<Vec<_>>(),
            [2, 1]
        );
        assert_eq!(lineage[0], record("a", 2, 2));
        assert_eq!(store.latest_genome("b").unwrap(), Some(record("b", 1, 4)));
        assert_eq!(store.genome_at("a", 1).unwrap(), Some(record("a", 1, 3)));
        assert_eq!(store.genome_at("a", 3).unwrap(), None);
        assert_eq!(store.latest_genome("c").unwrap(), None);
    }

    #[test]
    fn the_file_policy_is_one_per_route_and_replaced() {
        let store = Store::in_memory().unwrap();
        assert_eq!(store.file_policy("a").unwrap(), None);
        let first = record("a", 1, 3).genome;
        let second = record("a", 1, 2).genome;
        store.set_file_policy("a", &first).unwrap();
        store.set_file_policy("a", &second).unwrap();
        assert_eq!(store.file_policy("a").unwrap(), Some(second));
    }
}
