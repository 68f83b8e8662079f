//! Proposals in the store (DESIGN §7.5): one row per proposal, the whole [`Proposal`] as JSON
//! in `body`, and `route`, `state`, `created_at`, `expires_at`, `base_generation` copied beside
//! it for the queries.

use rusqlite::{OptionalExtension, params};

use super::{Store, StoreError, from_body, to_body};
use crate::guardian::proposal::{Proposal, ProposalState};

// === impl Store ===

impl Store {
    /// Records a new proposal and returns the id the store gave it (`proposal.id` is ignored;
    /// the stored body carries the new id).
    pub fn insert_proposal(&self, proposal: &Proposal) -> Result<i64, StoreError> {
        self.with(|c| {
            let transaction = c.transaction()?;
            transaction.execute(
                "INSERT INTO proposals (route, state, created_at, expires_at, base_generation, body)
                 VALUES (?1, ?2, ?3, ?4, ?5, '')",
                params![
                    proposal.route,
                    proposal.state.as_str(),
                    proposal.created_at,
                    proposal.expires_at,
                    generation(proposal)?
                ],
            )?;
            let id = transaction.last_insert_rowid();
            let stored = Proposal {
                id,
                ..proposal.clone()
            };
            transaction.execute(
                "UPDATE proposals SET body = ?2 WHERE id = ?1",
                params![id, to_body(&stored)?],
            )?;
            transaction.commit()?;
            Ok(id)
        })
    }

    /// Writes `proposal` over the stored proposal with its id; [`StoreError::NotFound`] when
    /// there is none.
    pub fn update_proposal(&self, proposal: &Proposal) -> Result<(), StoreError> {
        let changed = self.with(|c| write_proposal(c, proposal))?;
        if changed == 0 {
            return Err(self.not_found("proposal", proposal.id));
        }
        Ok(())
    }

    /// The proposal with this id.
    pub fn proposal(&self, id: i64) -> Result<Option<Proposal>, StoreError> {
        self.with(|c| {
            c.query_row("SELECT body FROM proposals WHERE id = ?1", [id], |row| {
                from_body(row, 0)
            })
            .optional()
        })
    }

    /// At most `limit` proposals, in `state` and of `route` when given, newest first.
    pub fn proposals(
        &self,
        state: Option<ProposalState>,
        route: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Proposal>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare(
                "SELECT body FROM proposals
                 WHERE (?1 IS NULL OR state = ?1) AND (?2 IS NULL OR route = ?2)
                 ORDER BY id DESC LIMIT ?3",
            )?;
            let state = state.map(ProposalState::as_str);
            let rows =
                statement.query_map(params![state, route, limit], |row| from_body(row, 0))?;
            rows.collect()
        })
    }

    /// How many proposals are in `state` (the `rafael_proposals_pending` gauge at start-up).
    pub fn proposal_count(&self, state: ProposalState) -> Result<u64, StoreError> {
        let count: i64 = self.with(|c| {
            c.query_row(
                "SELECT COUNT(*) FROM proposals WHERE state = ?1",
                [state.as_str()],
                |row| row.get(0),
            )
        })?;
        // COUNT(*) is never negative.
        Ok(count.unsigned_abs())
    }

    /// Marks every pending proposal of `route` older than `except_id` (a smaller id) as
    /// `superseded`, and returns their ids, oldest first: "a newer proposal for the same route
    /// supersedes an older pending one" (DESIGN §7.5). One immediate transaction, so a
    /// proposal approved meanwhile is either approved or superseded, never both.
    pub fn supersede_pending(&self, route: &str, except_id: i64) -> Result<Vec<i64>, StoreError> {
        self.with(|c| {
            let transaction =
                c.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let older: Vec<Proposal> = {
                let mut statement = transaction.prepare(
                    "SELECT body FROM proposals WHERE route = ?1 AND state = ?2 AND id < ?3
                     ORDER BY id",
                )?;
                let rows = statement.query_map(
                    params![route, ProposalState::Pending.as_str(), except_id],
                    |row| from_body(row, 0),
                )?;
                rows.collect::<rusqlite::Result<_>>()?
            };
            let mut ids = Vec::with_capacity(older.len());
            for proposal in older {
                let proposal = Proposal {
                    state: ProposalState::Superseded,
                    ..proposal
                };
                write_proposal(&transaction, &proposal)?;
                ids.push(proposal.id);
            }
            transaction.commit()?;
            Ok(ids)
        })
    }
}

/// Writes every column of `proposal`'s row from `proposal`: the number of rows changed.
fn write_proposal(
    connection: &rusqlite::Connection,
    proposal: &Proposal,
) -> rusqlite::Result<usize> {
    connection.execute(
        "UPDATE proposals SET route = ?2, state = ?3, created_at = ?4, expires_at = ?5,
         base_generation = ?6, body = ?7 WHERE id = ?1",
        params![
            proposal.id,
            proposal.route,
            proposal.state.as_str(),
            proposal.created_at,
            proposal.expires_at,
            generation(proposal)?,
            to_body(proposal)?
        ],
    )
}

/// The base generation as SQLite's signed integer (a generation past `i64::MAX` is refused,
/// not wrapped into a negative number).
fn generation(proposal: &Proposal) -> rusqlite::Result<i64> {
    i64::try_from(proposal.base_generation)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guardian::{
        approval::Decision,
        guardrails::Violation,
        proposal::{Approval, GuardrailVerdict},
    };

    use crate::guardian::proposal::tests::pending;

    #[test]
    fn a_proposal_is_stored_whole_and_filtered_by_state_and_route() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("rafael.db")).unwrap();
        let a = store
            .insert_proposal(&pending("orders", "2025-01-01T00:00:01Z"))
            .unwrap();
        let b = store
            .insert_proposal(&pending("users", "2025-01-01T00:00:02Z"))
            .unwrap();
        let stored = store.proposal(a).unwrap().unwrap();
        assert_eq!(
            stored,
            Proposal {
                id: a,
                ..pending("orders", "2025-01-01T00:00:01Z")
            }
        );

        let mut rejected = stored;
        rejected.state = ProposalState::Rejected;
        rejected.approvals.push(Approval {
            by: "alice".to_owned(),
            at: "2025-01-01T00:01:00Z".to_owned(),
            comment: Some("too eager".to_owned()),
            decision: Decision::Reject,
        });
        rejected.guardrails = GuardrailVerdict::Refused(vec![Violation {
            gene: "retry.max_attempts".to_owned(),
            rule: "at most 5".to_owned(),
        }]);
        store.update_proposal(&rejected).unwrap();
        assert_eq!(store.proposal(a).unwrap().as_ref(), Some(&rejected));

        let ids = |proposals: Vec<Proposal>| proposals.iter().map(|p| p.id).collect::<Vec<_>>();
        assert_eq!(ids(store.proposals(None, None, 10).unwrap()), [b, a]);
        assert_eq!(
            ids(store
                .proposals(Some(ProposalState::Pending), None, 10)
                .unwrap()),
            [b]
        );
        assert_eq!(
            ids(store
                .proposals(Some(ProposalState::Rejected), Some("orders"), 10)
                .unwrap()),
            [a]
        );
        assert!(
            store
                .proposals(Some(ProposalState::Pending), Some("orders"), 10)
                .unwrap()
                .is_empty()
        );
        assert_eq!(ids(store.proposals(None, None, 1).unwrap()), [b]);
        assert_eq!(store.proposal_count(ProposalState::Pending).unwrap(), 1);
        assert_eq!(store.proposal(99).unwrap(), None);
        let missing = Proposal { id: 99, ..rejected };
        let error = store.update_proposal(&missing).unwrap_err().to_string();
        assert!(error.contains("no proposal 99"), "{error}");
    }

    #[test]
    fn a_newer_proposal_supersedes_only_the_older_pending_ones_of_its_route() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("rafael.db")).unwrap();
        let insert = |route: &str, state: ProposalState| {
            let mut proposal = pending(route, "2025-01-01T00:00:00Z");
            proposal.state = state;
            store.insert_proposal(&proposal).unwrap()
        };
        let old = insert("orders", ProposalState::Pending);
        let approved = insert("orders", ProposalState::Approved);
        let older_still_pending = insert("orders", ProposalState::Pending);
        let other_route = insert("users", ProposalState::Pending);
        let newest = insert("orders", ProposalState::Pending);
        let later = insert("orders", ProposalState::Pending);

        let superseded = store.supersede_pending("orders", newest).unwrap();
        assert_eq!(superseded, [old, older_still_pending]);
        let state = |id| store.proposal(id).unwrap().unwrap().state;
        assert_eq!(state(old), ProposalState::Superseded);
        assert_eq!(state(older_still_pending), ProposalState::Superseded);
        assert_eq!(state(approved), ProposalState::Approved);
        assert_eq!(state(other_route), ProposalState::Pending);
        assert_eq!(state(newest), ProposalState::Pending);
        // Only older ones: a proposal made after `newest` is not its to supersede.
        assert_eq!(state(later), ProposalState::Pending);
        // The state column moved with the body, so the filter sees it.
        let superseded_listed: Vec<i64> = store
            .proposals(Some(ProposalState::Superseded), Some("orders"), 10)
            .unwrap()
            .iter()
            .map(|p| p.id)
            .collect();
        assert_eq!(superseded_listed, [older_still_pending, old]);
        assert!(
            store
                .supersede_pending("orders", newest)
                .unwrap()
                .is_empty()
        );
    }

    #[test]
    fn a_reopen_keeps_every_proposal() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("rafael.db");
        let store = Store::open(&path).unwrap();
        for second in 0..3 {
            let created = format!("2025-01-01T00:00:0{second}Z");
            store.insert_proposal(&pending("orders", &created)).unwrap();
        }
        let before = store.proposals(None, None, 10).unwrap();
        assert_eq!(before.len(), 3);
        drop(store);
        let store = Store::open(&path).unwrap();
        assert_eq!(store.proposals(None, None, 10).unwrap(), before);
    }

    #[test]
    fn a_body_that_no_longer_parses_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("rafael.db")).unwrap();
        let id = store
            .insert_proposal(&pending("orders", "2025-01-01T00:00:00Z"))
            .unwrap();
        store
            .with(|c| {
                c.execute(
                    "UPDATE proposals SET body = '{\"id\": 1}' WHERE id = ?1",
                    [id],
                )
            })
            .unwrap();
        let error = store.proposal(id).unwrap_err().to_string();
        assert!(error.contains("missing field"), "{error}");
    }
}
