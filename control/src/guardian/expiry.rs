//! Pending proposals that can no longer be approved (DESIGN §7.5): past their
//! `[guardian].proposal_ttl`, made against a genome the route no longer runs (its generation
//! moved past their `base_generation`: a swap, a rollback or a reload changed it under them), or
//! for a route a reload removed. Approving one of those would apply a diff computed against
//! something that is not live.
//!
//! [`expiry`] decides for one proposal, a pure function of it, the time and the route's live
//! generation; [`sweep`] applies it to every pending proposal, stores, audits
//! (`proposal.expired`, actor `rafael`) and counts the ones that expired. A running rafael
//! sweeps every [`SWEEP_EVERY`], and the admin API checks a proposal again before recording a
//! decision on it.

use std::time::{Duration, SystemTime};

use rafael_proxy::SnapshotHandle;
use serde_json::json;

use super::proposal::{Proposal, ProposalState};
use crate::{
    audit::{AuditLog, action},
    store::{Store, StoreError},
};

/// How often a running rafael looks for expired proposals.
pub const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// Why a pending proposal expired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expiry {
    /// Its TTL passed.
    Ttl,
    /// The route's live generation is no longer the one it was made against.
    Generation {
        /// The generation it was made against.
        base: u64,
        /// The route's generation now.
        live: u64,
    },
    /// The route is gone.
    RouteGone,
}

// === impl Expiry ===

impl Expiry {
    /// In words, for the audit entry and the API.
    pub fn reason(self) -> String {
        match self {
            Self::Ttl => "its proposal_ttl passed".to_owned(),
            Self::Generation { base, live } => format!(
                "it was made against generation {base}, and the route runs generation {live}"
            ),
            Self::RouteGone => "its route no longer exists".to_owned(),
        }
    }
}

/// Whether pending `proposal` has expired at `now`, its route running `live_generation`
/// (`None`: no such route). Other states never expire.
pub fn expiry(
    proposal: &Proposal,
    now: SystemTime,
    live_generation: Option<u64>,
) -> Option<Expiry> {
    if proposal.state != ProposalState::Pending {
        return None;
    }
    let Some(live) = live_generation else {
        return Some(Expiry::RouteGone);
    };
    if live != proposal.base_generation {
        return Some(Expiry::Generation {
            base: proposal.base_generation,
            live,
        });
    }
    // An unreadable time (never written by rafael) does not expire a proposal by itself.
    let expires = humantime::parse_rfc3339_weak(&proposal.expires_at).ok()?;
    (now >= expires).then_some(Expiry::Ttl)
}

/// Marks `proposal` expired for `why`: stored, audited and counted.
pub fn expire(
    store: &Store,
    audit: &AuditLog,
    proposal: &mut Proposal,
    why: Expiry,
) -> Result<(), StoreError> {
    proposal.state = ProposalState::Expired;
    store.update_proposal(proposal)?;
    audit.append(
        "rafael",
        action::PROPOSAL_EXPIRED,
        &format!("proposal/{}", proposal.id),
        json!({ "route": proposal.route, "reason": why.reason() }),
    )?;
    super::metrics::proposal_entered(Some(ProposalState::Pending), ProposalState::Expired);
    Ok(())
}

/// Expires every pending proposal that [`expiry`] says has, at `now`; returns their ids,
/// oldest first.
pub fn sweep(
    store: &Store,
    audit: &AuditLog,
    snapshots: &SnapshotHandle,
    now: SystemTime,
) -> Result<Vec<i64>, StoreError> {
    let snapshot = snapshots.load();
    let mut expired = Vec::new();
    // Oldest first, so the audit chain records them in the order they were made.
    let pending = store.proposals(Some(ProposalState::Pending), None, u32::MAX)?;
    for mut proposal in pending.into_iter().rev() {
        let live = snapshot
            .route(&proposal.route)
            .map(|route| route.live().generation());
        if let Some(why) = expiry(&proposal, now, live) {
            expire(store, audit, &mut proposal, why)?;
            expired.push(proposal.id);
        }
    }
    Ok(expired)
}

/// Sweeps every [`SWEEP_EVERY`] until aborted, on the blocking pool; the receiver counts the
/// sweeps done. Its clock is the wall clock at the start advanced by tokio's: the same in a
/// running rafael, and on paused time in a test, where a day of TTL passes in an instant.
pub fn spawn_sweeper(
    store: std::sync::Arc<Store>,
    audit: AuditLog,
    snapshots: SnapshotHandle,
) -> (
    tokio::task::JoinHandle<()>,
    tokio::sync::watch::Receiver<u64>,
) {
    let (wall, started) = (SystemTime::now(), tokio::time::Instant::now());
    let (done, swept) = tokio::sync::watch::channel(0);
    let task = tokio::spawn(async move {
        let mut every = tokio::time::interval(SWEEP_EVERY);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            let now = wall + started.elapsed();
            let (store, audit, snapshots) = (store.clone(), audit.clone(), snapshots.clone());
            let swept =
                tokio::task::spawn_blocking(move || sweep(&store, &audit, &snapshots, now)).await;
            match swept {
                Ok(Ok(ids)) if !ids.is_empty() => tracing::info!(?ids, "proposals expired"),
                Ok(Err(error)) => tracing::warn!(%error, "cannot sweep expired proposals"),
                _ => {}
            }
            done.send_modify(|n| *n += 1);
        }
    });
    (task, swept)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::guardian::proposal::tests::pending;

    #[tokio::test(start_paused = true)]
    async fn the_sweeper_expires_a_proposal_within_a_sweep_of_its_ttl_on_paused_time() {
        let config = crate::testing::one_route("orders");
        let snapshots = SnapshotHandle::new(config).unwrap();
        let store = std::sync::Arc::new(Store::in_memory().unwrap());
        let audit = AuditLog::new(store.clone());
        // A day to live, from now.
        let ttl = Duration::from_secs(24 * 3600);
        let expires = humantime::format_rfc3339_seconds(SystemTime::now() + ttl).to_string();
        let id = store
            .insert_proposal(&Proposal {
                base_generation: 1,
                expires_at: expires,
                ..pending("orders", "2025-01-01T00:00:00Z")
            })
            .unwrap();
        let (sweeper, mut swept) = spawn_sweeper(store.clone(), audit, snapshots);
        let state = |store: &Store| store.proposal(id).unwrap().unwrap().state;
        // The first sweep runs at once; ten minutes before the TTL it is still pending.
        swept.changed().await.unwrap();
        tokio::time::advance(ttl - Duration::from_secs(600)).await;
        swept.changed().await.unwrap();
        assert_eq!(state(&store), ProposalState::Pending);
        // A sweep past the TTL expires it (one that began before the jump may finish first).
        tokio::time::advance(Duration::from_secs(600) + SWEEP_EVERY).await;
        for _ in 0..3 {
            swept.changed().await.unwrap();
            if state(&store) == ProposalState::Expired {
                break;
            }
        }
        assert_eq!(state(&store), ProposalState::Expired);
        sweeper.abort();
    }

    fn at(rfc3339: &str) -> SystemTime {
        humantime::parse_rfc3339(rfc3339).unwrap()
    }

    #[test]
    fn a_pending_proposal_expires_at_its_ttl_or_when_its_generation_moves() {
        // Made against generation 3, expiring 2025-01-02T00:00:00Z.
        let proposal = pending("orders", "2025-01-01T00:00:00Z");
        let before = at("2025-01-01T23:59:59Z");
        assert_eq!(expiry(&proposal, before, Some(3)), None);
        assert_eq!(
            expiry(&proposal, at("2025-01-02T00:00:00Z"), Some(3)),
            Some(Expiry::Ttl)
        );
        assert_eq!(
            expiry(&proposal, before, Some(4)),
            Some(Expiry::Generation { base: 3, live: 4 })
        );
        assert_eq!(expiry(&proposal, before, None), Some(Expiry::RouteGone));
        // Only pending proposals expire.
        let approved = Proposal {
            state: ProposalState::Approved,
            ..proposal
        };
        assert_eq!(expiry(&approved, at("2030-01-01T00:00:00Z"), Some(9)), None);
    }

    #[test]
    fn a_sweep_expires_stores_and_audits_what_expired_and_leaves_the_rest() {
        let config = crate::testing::one_route("orders");
        let snapshots = SnapshotHandle::new(config).unwrap();
        let live = snapshots
            .load()
            .route("orders")
            .unwrap()
            .live()
            .generation();
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(Store::open(&dir.path().join("rafael.db")).unwrap());
        let audit = AuditLog::new(store.clone());
        let made = |route: &str, base_generation: u64, expires_at: &str| Proposal {
            base_generation,
            expires_at: expires_at.to_owned(),
            ..pending(route, "2025-01-01T00:00:00Z")
        };
        let ids: Vec<i64> = [
            made("orders", live, "2025-01-03T00:00:00Z"),
            made("orders", live, "2025-01-01T12:00:00Z"),
            made("orders", live + 1, "2025-01-03T00:00:00Z"),
            made("gone", live, "2025-01-03T00:00:00Z"),
        ]
        .iter()
        .map(|p| store.insert_proposal(p).unwrap())
        .collect();
        let now = at("2025-01-02T00:00:00Z");
        assert_eq!(sweep(&store, &audit, &snapshots, now).unwrap(), ids[1..]);
        let state = |id: i64| store.proposal(id).unwrap().unwrap().state;
        assert_eq!(state(ids[0]), ProposalState::Pending);
        for &id in &ids[1..] {
            assert_eq!(state(id), ProposalState::Expired);
        }
        // A second sweep finds nothing more; the reasons are in the audit chain.
        assert!(sweep(&store, &audit, &snapshots, now).unwrap().is_empty());
        let entries = audit.list(0, 100).unwrap();
        let reasons: Vec<&str> = entries
            .iter()
            .filter(|e| e.action == action::PROPOSAL_EXPIRED)
            .map(|e| e.details["reason"].as_str().unwrap())
            .collect();
        assert_eq!(reasons.len(), 3, "{reasons:?}");
        assert!(reasons[0].contains("proposal_ttl"), "{reasons:?}");
        assert!(reasons[1].contains("generation"), "{reasons:?}");
        assert!(reasons[2].contains("no longer exists"), "{reasons:?}");
    }
}
