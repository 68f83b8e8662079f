//! The audit log: every change an operator or rafael makes, append-only and hash-chained in the
//! store.
//!
//! Each entry commits to the one before it: `hash = SHA-256(prev_hash, id, at, actor, action,
//! target, details)`, each field length-prefixed. Editing, inserting or deleting a row breaks
//! the chain at that row, and [`AuditLog::verify`] names the first entry where it breaks. The
//! hash has no secret key, so someone who can write the database and recomputes every hash from
//! the edited row to the end, or cuts entries off the end, leaves a chain that verifies. Against
//! that, the chain's head is written to rafael's own log with every entry (`hash` of the
//! `audit` line): a head that is not in the log shipped elsewhere exposes the rewrite.

use std::{sync::Arc, time::SystemTime};

use ring::digest::{SHA256, digest};
use rusqlite::{OptionalExtension, params};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::store::{Store, StoreError};

/// `rafael_audit_chain_valid`: 1 when the last verification of the audit chain held, 0 when
/// it found a broken link or could not read the store.
pub const CHAIN_VALID: &str = "rafael_audit_chain_valid";
/// `rafael_audit_entries_verified`: entries the last verification checked (up to the first
/// broken one).
pub const ENTRIES_VERIFIED: &str = "rafael_audit_entries_verified";
/// How often the running rafael verifies its chain by itself.
pub const VERIFY_EVERY: std::time::Duration = std::time::Duration::from_secs(300);

/// Registers HELP text for the audit metrics.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        CHAIN_VALID,
        "1 when the last verification of the audit hash chain held, 0 when it broke."
    );
    metrics::describe_gauge!(
        ENTRIES_VERIFIED,
        "Audit entries the last verification checked."
    );
}

/// Verifies `audit` now and every `every` after, off the async threads, so
/// `rafael_audit_chain_valid` says within `every` that someone edited the store.
pub fn spawn_verifier(audit: AuditLog, every: std::time::Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticker.tick().await;
            let audit = audit.clone();
            match tokio::task::spawn_blocking(move || audit.verify()).await {
                Ok(Ok(v)) if !v.ok => {
                    tracing::error!(broken = ?v.broken, "the audit chain does not verify");
                }
                Ok(Err(error)) => tracing::warn!(%error, "cannot verify the audit chain"),
                _ => {}
            }
        }
    })
}

/// The `prev_hash` of the first entry.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The guardian's and evolution's action names (DESIGN §7.6), so a writer and a test that
/// looks for an entry cannot spell one differently.
pub mod action {
    /// A proposal was made (by a round or by hand).
    pub const PROPOSAL_CREATED: &str = "proposal.created";
    /// An approver approved a proposal (or `rafael`, under `approval = "auto"`).
    pub const PROPOSAL_APPROVED: &str = "proposal.approved";
    /// An approver, a guardrail or a canary rejected a proposal.
    pub const PROPOSAL_REJECTED: &str = "proposal.rejected";
    /// A pending proposal's TTL passed, or its base generation stopped being current.
    pub const PROPOSAL_EXPIRED: &str = "proposal.expired";
    /// A newer proposal for the same route replaced a pending one.
    pub const PROPOSAL_SUPERSEDED: &str = "proposal.superseded";
    /// A genome broke a guardrail and was refused, with the gene and the rule.
    pub const GUARDRAIL_REFUSED: &str = "guardrail.refused";
    /// A candidate began serving a share of its route as a canary.
    pub const CANARY_STARTED: &str = "canary.started";
    /// The canary's cohort held up against the stable one.
    pub const CANARY_PASSED: &str = "canary.passed";
    /// The canary's cohort did significantly worse.
    pub const CANARY_FAILED: &str = "canary.failed";
    /// The canary ended short of evidence either way; a person decides.
    pub const CANARY_INCONCLUSIVE: &str = "canary.inconclusive";
    /// A genome was swapped in, with its new generation.
    pub const GENOME_APPLIED: &str = "genome.applied";
    /// A canary lost to a restart (the stable genome came back live).
    pub const CANARY_INTERRUPTED: &str = "canary.interrupted";
    /// The previous genome was swapped back (by the watch, or by hand).
    pub const GENOME_ROLLED_BACK: &str = "genome.rolled_back";
    /// An applied genome passed its watch.
    pub const GENOME_KEPT: &str = "genome.kept";
    /// An evolution round ended (proposed, no improvement, skipped, failed or interrupted).
    pub const EVOLUTION_ROUND: &str = "evolution.round";
    /// A pattern stored in the vault: learned from a kept genome, or saved by an approver.
    pub const VAULT_SAVED: &str = "vault.saved";
}

/// One entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditEntry {
    /// Position in the log, from 1.
    pub id: i64,
    /// When, RFC 3339 UTC.
    pub at: String,
    /// Who: a token's name, `local`, or `rafael` for its own actions.
    pub actor: String,
    /// What, e.g. `config.reloaded`, `experiment.started`.
    pub action: String,
    /// What it was done to (a route, an experiment id, a file).
    pub target: String,
    /// Anything else worth keeping, as JSON.
    pub details: Value,
    /// The previous entry's hash.
    pub prev_hash: String,
    /// This entry's hash.
    pub hash: String,
}

/// What [`AuditLog::verify`] found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verification {
    /// True when the whole chain holds.
    pub ok: bool,
    /// Entries checked.
    pub entries: u64,
    /// The newest hash (the chain's head), when there are entries.
    pub head: Option<String>,
    /// The first entry where the chain breaks.
    pub broken: Option<BrokenLink>,
}

/// Where and why the chain breaks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BrokenLink {
    /// The entry's id.
    pub id: i64,
    /// What does not match.
    pub reason: String,
}

/// The log, over a store.
#[derive(Debug, Clone)]
pub struct AuditLog {
    store: Arc<Store>,
}

// === impl AuditLog ===

impl AuditLog {
    /// The log kept in `store`.
    pub fn new(store: Arc<Store>) -> Self {
        Self { store }
    }

    /// Appends an entry and returns it. The read of the chain's head and the insert are one
    /// immediate transaction, so two writers cannot both chain onto the same entry.
    pub fn append(
        &self,
        actor: &str,
        action: &str,
        target: &str,
        details: Value,
    ) -> Result<AuditEntry, StoreError> {
        // An entry written into a deleted file would be lost with the process: refuse instead.
        self.store.check_present()?;
        let at = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let details_text = details.to_string();
        let entry = self.store.with(|connection| {
            let transaction =
                connection.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            let last: Option<(i64, String)> = transaction
                .query_row(
                    "SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1",
                    [],
                    |row| Ok((row.get(0)?, row.get(1)?)),
                )
                .optional()?;
            let (id, prev_hash) = match last {
                Some((id, hash)) => (id + 1, hash),
                None => (1, GENESIS.to_owned()),
            };
            let hash = entry_hash(&prev_hash, id, &at, actor, action, target, &details_text);
            transaction.execute(
                "INSERT INTO audit (id, at, actor, action, target, details, prev_hash, hash)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![id, at, actor, action, target, details_text, prev_hash, hash],
            )?;
            transaction.commit()?;
            Ok(AuditEntry {
                id,
                at: at.clone(),
                actor: actor.to_owned(),
                action: action.to_owned(),
                target: target.to_owned(),
                details,
                prev_hash,
                hash,
            })
        })?;
        tracing::info!(
            id = entry.id,
            actor,
            action,
            target,
            hash = %entry.hash,
            "audit"
        );
        Ok(entry)
    }

    /// The newest entry's id, 0 for an empty log.
    pub fn latest_id(&self) -> Result<i64, StoreError> {
        self.store.with(|connection| {
            connection.query_row("SELECT COALESCE(MAX(id), 0) FROM audit", [], |row| {
                row.get(0)
            })
        })
    }

    /// Entries with an id above `after`, oldest first, at most `limit`.
    pub fn list(&self, after: i64, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.store.with(|connection| {
            let mut statement = connection.prepare(
                "SELECT id, at, actor, action, target, details, prev_hash, hash
                 FROM audit WHERE id > ?1 ORDER BY id LIMIT ?2",
            )?;
            let rows = statement.query_map(params![after, limit], |row| {
                let details: String = row.get(5)?;
                Ok(AuditEntry {
                    id: row.get(0)?,
                    at: row.get(1)?,
                    actor: row.get(2)?,
                    action: row.get(3)?,
                    target: row.get(4)?,
                    // A row edited into invalid JSON still lists (as a string); verify flags it.
                    details: serde_json::from_str(&details).unwrap_or(Value::String(details)),
                    prev_hash: row.get(6)?,
                    hash: row.get(7)?,
                })
            })?;
            rows.collect()
        })
    }

    /// Recomputes the chain from the first entry and reports the first link that does not
    /// hold: a row whose hash is not the hash of its fields, whose `prev_hash` is not the
    /// previous row's hash, or whose id is not the previous id plus one. Every verification
    /// sets [`CHAIN_VALID`] and [`ENTRIES_VERIFIED`] (a store that cannot be read counts as a
    /// broken chain: nothing vouches for it).
    pub fn verify(&self) -> Result<Verification, StoreError> {
        let verification = self.verify_chain();
        let (valid, entries) = match &verification {
            Ok(v) => (v.ok, v.entries),
            Err(_) => (false, 0),
        };
        metrics::gauge!(CHAIN_VALID).set(if valid { 1.0 } else { 0.0 });
        metrics::gauge!(ENTRIES_VERIFIED).set(entries as f64);
        verification
    }

    fn verify_chain(&self) -> Result<Verification, StoreError> {
        self.store.with(|connection| {
            let mut statement = connection.prepare(
                "SELECT id, at, actor, action, target, details, prev_hash, hash
                 FROM audit ORDER BY id",
            )?;
            let mut rows = statement.query([])?;
            let mut expected_prev = GENESIS.to_owned();
            let mut expected_id = 1;
            let mut entries = 0;
            while let Some(row) = rows.next()? {
                let id: i64 = row.get(0)?;
                let at: String = row.get(1)?;
                let actor: String = row.get(2)?;
                let action: String = row.get(3)?;
                let target: String = row.get(4)?;
                let details: String = row.get(5)?;
                let prev_hash: String = row.get(6)?;
                let hash: String = row.get(7)?;
                let broken = |reason: String| Verification {
                    ok: false,
                    entries,
                    head: None,
                    broken: Some(BrokenLink { id, reason }),
                };
                if id != expected_id {
                    return Ok(broken(format!(
                        "expected entry {expected_id} here; entries are missing or were inserted"
                    )));
                }
                if prev_hash != expected_prev {
                    return Ok(broken(
                        "prev_hash is not the previous entry's hash".to_owned(),
                    ));
                }
                let computed = entry_hash(&prev_hash, id, &at, &actor, &action, &target, &details);
                if computed != hash {
                    return Ok(broken(
                        "its fields do not match its hash (the entry was changed)".to_owned(),
                    ));
                }
                entries += 1;
                expected_id = id + 1;
                expected_prev = hash;
            }
            Ok(Verification {
                ok: true,
                entries,
                head: (entries > 0).then_some(expected_prev),
                broken: None,
            })
        })
    }
}

/// SHA-256 over the length-prefixed fields, as lower-case hex.
fn entry_hash(
    prev_hash: &str,
    id: i64,
    at: &str,
    actor: &str,
    action: &str,
    target: &str,
    details: &str,
) -> String {
    let id = id.to_string();
    let mut message = Vec::with_capacity(256);
    for field in [prev_hash, &id, at, actor, action, target, details] {
        message.extend_from_slice(&(field.len() as u64).to_be_bytes());
        message.extend_from_slice(field.as_bytes());
    }
    digest(&SHA256, &message)
        .as_ref()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn log_with(entries: usize) -> (tempfile::TempDir, AuditLog) {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(&dir.path().join("rafael.db")).unwrap());
        let log = AuditLog::new(store);
        for i in 0..entries {
            log.append(
                "ci-operator",
                "experiment.started",
                &format!("exp-{i}"),
                json!({ "i": i }),
            )
            .unwrap();
        }
        (dir, log)
    }

    #[test]
    fn entries_chain_and_verify() {
        let (_dir, log) = log_with(5);
        let entries = log.list(0, 100).unwrap();
        assert_eq!(entries.len(), 5);
        assert_eq!(entries[0].prev_hash, GENESIS);
        for pair in entries.windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash);
            assert_eq!(pair[1].id, pair[0].id + 1);
        }
        assert_eq!(log.list(3, 100).unwrap().len(), 2);
        let verification = log.verify().unwrap();
        assert!(verification.ok);
        assert_eq!(verification.entries, 5);
        assert_eq!(verification.head.as_deref(), Some(entries[4].hash.as_str()));
    }

    #[test]
    fn an_edited_row_is_named() {
        let (_dir, log) = log_with(5);
        log.store
            .with(|c| c.execute("UPDATE audit SET actor = 'mallory' WHERE id = 3", []))
            .unwrap();
        let verification = log.verify().unwrap();
        assert!(!verification.ok);
        let broken = verification.broken.unwrap();
        assert_eq!(broken.id, 3);
        assert!(broken.reason.contains("changed"), "{}", broken.reason);
        assert_eq!(verification.entries, 2);
    }

    #[test]
    fn a_deleted_row_breaks_the_chain_at_the_next_one() {
        let (_dir, log) = log_with(5);
        log.store
            .with(|c| c.execute("DELETE FROM audit WHERE id = 2", []))
            .unwrap();
        let broken = log.verify().unwrap().broken.unwrap();
        assert_eq!(broken.id, 3);
    }

    #[test]
    fn a_rehashed_forgery_still_breaks_the_link_after_it() {
        let (_dir, log) = log_with(4);
        // Change entry 2 and recompute its own hash: entry 3 still points at the old one.
        log.store
            .with(|c| {
                let (prev, at): (String, String) =
                    c.query_row("SELECT prev_hash, at FROM audit WHERE id = 2", [], |r| {
                        Ok((r.get(0)?, r.get(1)?))
                    })?;
                let forged = entry_hash(
                    &prev,
                    2,
                    &at,
                    "mallory",
                    "experiment.started",
                    "exp-1",
                    "{}",
                );
                c.execute(
                    "UPDATE audit SET actor = 'mallory', details = '{}', hash = ?1 WHERE id = 2",
                    [forged],
                )
            })
            .unwrap();
        let broken = log.verify().unwrap().broken.unwrap();
        assert_eq!(broken.id, 3);
        assert!(broken.reason.contains("prev_hash"), "{}", broken.reason);
    }
}
