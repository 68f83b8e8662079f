//! Evolution rounds in the store (DESIGN §7.4): one row per round, the whole [`Round`] as JSON
//! in `body`, and `route`, `state`, `started_at`, `ended_at` copied beside it for the queries.
//!
//! A round lives in the process that runs it, so one still `running` when the store is opened
//! was cut short by a crash or a kill: [`Store::fail_interrupted_rounds`] ends it as failed,
//! as `chaos` ends the experiments a dead process left running.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, from_body, to_body};
use crate::evolution::round::{Round, RoundResult, RoundState};

/// The reason recorded on a round that a restart cut short.
pub const INTERRUPTED: &str = "interrupted by a restart";

// === impl Store ===

impl Store {
    /// Records a new round and returns the id the store gave it (`round.id` is ignored; the
    /// stored body carries the new id).
    pub fn insert_round(&self, round: &Round) -> Result<i64, StoreError> {
        self.with(|c| {
            let transaction = c.transaction()?;
            transaction.execute(
                "INSERT INTO rounds (route, state, started_at, ended_at, body)
                 VALUES (?1, ?2, ?3, ?4, '')",
                params![
                    round.route,
                    round.state.as_str(),
                    round.started_at,
                    round.ended_at
                ],
            )?;
            let id = transaction.last_insert_rowid();
            let stored = Round {
                id,
                ..round.clone()
            };
            transaction.execute(
                "UPDATE rounds SET body = ?2 WHERE id = ?1",
                params![id, to_body(&stored)?],
            )?;
            transaction.commit()?;
            Ok(id)
        })
    }

    /// Writes `round` over the stored round with its id; [`StoreError::NotFound`] when there is
    /// none (an update that changed nothing would hide the caller's mistake).
    pub fn update_round(&self, round: &Round) -> Result<(), StoreError> {
        let changed = self.with(|c| write_round(c, round))?;
        if changed == 0 {
            return Err(self.not_found("round", round.id));
        }
        Ok(())
    }

    /// The round with this id.
    pub fn round(&self, id: i64) -> Result<Option<Round>, StoreError> {
        self.with(|c| {
            c.query_row("SELECT body FROM rounds WHERE id = ?1", [id], |row| {
                from_body(row, 0)
            })
            .optional()
        })
    }

    /// At most `limit` rounds, of `route` when given, newest first.
    pub fn rounds(&self, route: Option<&str>, limit: u32) -> Result<Vec<Round>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare(
                "SELECT body FROM rounds WHERE (?1 IS NULL OR route = ?1)
                 ORDER BY id DESC LIMIT ?2",
            )?;
            let rows = statement.query_map(params![route, limit], |row| from_body(row, 0))?;
            rows.collect()
        })
    }

    /// Ends every round still `running` as `failed` with the reason [`INTERRUPTED`] at
    /// `ended_at` (RFC 3339), and returns them as now stored. Called once at start-up, before
    /// any round of this process runs; never by a reader of the store (`rafael audit
    /// --config` opens the store of a rafael that may be running its rounds).
    pub fn fail_interrupted_rounds(&self, ended_at: &str) -> Result<Vec<Round>, StoreError> {
        self.with(|c| {
            let transaction =
                c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let running: Vec<Round> = {
                let mut statement =
                    transaction.prepare("SELECT body FROM rounds WHERE state = ?1 ORDER BY id")?;
                let rows =
                    statement.query_map([RoundState::Running.as_str()], |row| from_body(row, 0))?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut failed = Vec::with_capacity(running.len());
            for round in running {
                let round = Round {
                    state: RoundState::Failed,
                    result: Some(RoundResult::Failed),
                    reason: Some(INTERRUPTED.to_owned()),
                    ended_at: Some(ended_at.to_owned()),
                    ..round
                };
                write_round(&transaction, &round)?;
                failed.push(round);
            }
            transaction.commit()?;
            Ok(failed)
        })
    }
}

/// Writes every column of `round`'s row from `round`: the number of rows changed.
fn write_round(connection: &rusqlite::Connection, round: &Round) -> rusqlite::Result<usize> {
    connection.execute(
        "UPDATE rounds SET route = ?2, state = ?3, started_at = ?4, ended_at = ?5, body = ?6
         WHERE id = ?1",
        params![
            round.id,
            round.route,
            round.state.as_str(),
            round.started_at,
            round.ended_at,
            to_body(round)?
        ],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(route: &str) -> Round {
        Round::running(route, "2025-01-01T00:00:00Z".to_owned())
    }

    #[test]
    fn a_round_is_stored_updated_and_listed_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("rafael.db")).unwrap();
        let first = store.insert_round(&running("orders")).unwrap();
        let second = store.insert_round(&running("users")).unwrap();
        let third = store.insert_round(&running("orders")).unwrap();
        assert!(first < second && second < third);
        // The stored body carries the id the store gave it.
        assert_eq!(store.round(second).unwrap().unwrap().id, second);

        let mut done = store.round(first).unwrap().unwrap();
        done.state = RoundState::Completed;
        done.result = Some(RoundResult::NoImprovement);
        done.reason = Some("no_improvement".to_owned());
        done.generations = 12;
        done.evaluations = 240;
        done.incumbent_fitness = Some(0.81);
        done.best_fitness = Some(0.82);
        done.ended_at = Some("2025-01-01T00:00:09Z".to_owned());
        store.update_round(&done).unwrap();
        assert_eq!(store.round(first).unwrap(), Some(done.clone()));

        let ids = |rounds: Vec<Round>| rounds.iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(store.rounds(None, 10).unwrap()), [third, second, first]);
        assert_eq!(
            ids(store.rounds(Some("orders"), 10).unwrap()),
            [third, first]
        );
        assert_eq!(ids(store.rounds(Some("orders"), 1).unwrap()), [third]);
        assert!(store.rounds(Some("nope"), 10).unwrap().is_empty());
        assert_eq!(store.round(99).unwrap(), None);

        let missing = Round { id: 99, ..done };
        let error = store.update_round(&missing).unwrap_err().to_string();
        assert!(error.contains("no round 99"), "{error}");
    }

    #[test]
    fn the_queried_columns_follow_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("rafael.db")).unwrap();
        let id = store.insert_round(&running("orders")).unwrap();
        let mut round = store.round(id).unwrap().unwrap();
        round.route = "users".to_owned();
        round.state = RoundState::Skipped;
        round.ended_at = Some("2025-01-01T00:00:01Z".to_owned());
        store.update_round(&round).unwrap();
        let columns: (String, String, Option<String>) = store
            .with(|c| {
                c.query_row(
                    "SELECT route, state, ended_at FROM rounds WHERE id = ?1",
                    [id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
            })
            .unwrap();
        assert_eq!(
            columns,
            (
                "users".to_owned(),
                "skipped".to_owned(),
                Some("2025-01-01T00:00:01Z".to_owned())
            )
        );
        assert!(store.rounds(Some("orders"), 10).unwrap().is_empty());
    }

    #[test]
    fn a_reopen_keeps_every_round_and_fails_the_ones_left_running() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rafael.db");
        let store = Store::open(&path).unwrap();
        let cut_short = store.insert_round(&running("orders")).unwrap();
        let mut finished = running("orders");
        finished.state = RoundState::Completed;
        finished.result = Some(RoundResult::Proposed);
        finished.proposal_id = Some(4);
        finished.ended_at = Some("2025-01-01T00:00:09Z".to_owned());
        let finished_id = store.insert_round(&finished).unwrap();
        let before = store.rounds(None, 10).unwrap();
        drop(store);

        let store = Store::open(&path).unwrap();
        assert_eq!(
            store.rounds(None, 10).unwrap(),
            before,
            "a reopen keeps them"
        );
        let failed = store
            .fail_interrupted_rounds("2025-01-02T00:00:00Z")
            .unwrap();
        assert_eq!(failed.len(), 1);
        let round = store.round(cut_short).unwrap().unwrap();
        assert_eq!(failed[0], round);
        assert_eq!(round.state, RoundState::Failed);
        assert_eq!(round.result, Some(RoundResult::Failed));
        assert_eq!(round.reason.as_deref(), Some(INTERRUPTED));
        assert_eq!(round.ended_at.as_deref(), Some("2025-01-02T00:00:00Z"));
        // A round that had ended is left as it was, and a second start finds nothing to fail.
        assert_eq!(
            store.round(finished_id).unwrap().unwrap().state,
            RoundState::Completed
        );
        assert!(
            store
                .fail_interrupted_rounds("2025-01-03T00:00:00Z")
                .unwrap()
                .is_empty()
        );
    }
}
