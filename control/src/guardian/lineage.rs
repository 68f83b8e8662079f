//! A route's lineage (DESIGN §7.6): every genome it has run, one generation each, persisted.
//!
//! Generations only grow. Applying a proposal, a rollback and a config file that changed the
//! route's policy each append one; a rollback appends a new generation carrying the restored
//! genome (and says which it restores) rather than moving the route back to an old number, so
//! a proposal made against generation 7 can never become current again by a rollback to 7, and
//! the lineage reads as what happened, in order.
//!
//! The file's policy and the lineage meet at two moments:
//! - **start-up** ([`restore`]): the newest generation is what must be live, unless the file's
//!   policy for the route changed while rafael was down (then the file wins, as a new
//!   generation with `source: "file"`);
//! - **reload** ([`reconcile`]): a route whose policy in the file is what it was at the last
//!   read keeps its live genome (a swapped-in one stays); a route whose policy in the file
//!   changed takes the file's, recorded likewise.

use rafael_config::{Config, Genome};
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError};

/// One generation of a route.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GenomeRecord {
    /// The route.
    pub route: String,
    /// Its generation: 1 for the first genome the route ran, one more for each change.
    pub generation: u64,
    /// The genome.
    pub genome: Genome,
    /// What made it live.
    pub source: LineageSource,
    /// When it became live (RFC 3339).
    pub applied_at: String,
    /// Who made it live: the approver or operator's token name, `local`, or `rafael` (the file,
    /// an automatic approval, a watch's rollback).
    pub actor: String,
    /// The proposal it came from (`source: "proposal"`), or the proposal a rollback undid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proposal_id: Option<i64>,
    /// For a rollback: the generation whose genome it restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restores: Option<u64>,
    /// Why (a rollback's reason).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What made a generation live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LineageSource {
    /// The config file (at first start, or because its policy for the route changed).
    File,
    /// An approved proposal.
    Proposal,
    /// A rollback to an earlier generation's genome, by hand or by the watch.
    Rollback,
}

/// What [`restore`] or [`reconcile`] decided for one route.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The route.
    pub route: String,
    /// The genome that must be live.
    pub genome: Genome,
    /// Its generation.
    pub generation: u64,
    /// A generation to append to the lineage (the file's policy won), when one is new.
    pub record: Option<GenomeRecord>,
}

// === impl LineageSource ===

impl LineageSource {
    /// Its name, as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::File => "file",
            Self::Proposal => "proposal",
            Self::Rollback => "rollback",
        }
    }
}

/// What must be live on each route of `config` when rafael starts with the lineage in `store`:
/// the newest generation, unless the file's policy changed since rafael last read it (or the
/// route is new), in which case the file's policy as a new generation. Reads only; the caller
/// installs the genomes, appends the records and remembers the file's policies
/// ([`remember_file`]).
pub fn restore(config: &Config, store: &Store, at: &str) -> Result<Vec<Decision>, StoreError> {
    let mut decisions = Vec::with_capacity(config.routes.len());
    for route in &config.routes {
        let latest = store.latest_genome(&route.name)?;
        let file_changed = store.file_policy(&route.name)?.as_ref() != Some(&route.policy);
        decisions.push(decide(&route.name, &route.policy, latest, file_changed, at));
    }
    Ok(decisions)
}

/// What must be live on each route of `config` (a reloaded file) given the genomes live now
/// (`live(route)`: genome and generation). The decisions say which genome each route keeps;
/// `config` itself is not changed.
pub fn reconcile(
    config: &Config,
    store: &Store,
    live: impl Fn(&str) -> Option<(Genome, u64)>,
    at: &str,
) -> Result<Vec<Decision>, StoreError> {
    let mut decisions = Vec::with_capacity(config.routes.len());
    for route in &config.routes {
        let file_changed = store.file_policy(&route.name)?.as_ref() != Some(&route.policy);
        let latest = match live(&route.name) {
            // The live genome is the lineage's newest; a route the running config lacks (added
            // by this reload) starts from whatever its lineage held before it went away.
            Some((genome, generation)) => Some(GenomeRecord {
                genome,
                generation,
                ..placeholder(&route.name, at)
            }),
            None => store.latest_genome(&route.name)?,
        };
        decisions.push(decide(&route.name, &route.policy, latest, file_changed, at));
    }
    Ok(decisions)
}

/// Records the file's policies of `config` as the ones it last gave.
pub fn remember_file(config: &Config, store: &Store) -> Result<(), StoreError> {
    for route in &config.routes {
        store.set_file_policy(&route.name, &route.policy)?;
    }
    Ok(())
}

/// One route's decision: keep `latest` unless the file changed or there is no lineage.
fn decide(
    route: &str,
    file: &Genome,
    latest: Option<GenomeRecord>,
    file_changed: bool,
    at: &str,
) -> Decision {
    match latest {
        Some(latest) if !file_changed => Decision {
            route: route.to_owned(),
            genome: latest.genome,
            generation: latest.generation,
            record: None,
        },
        // The file says what is live already (a file edited back to the live genome): no new
        // generation, only the file's policy to remember.
        Some(latest) if latest.genome == *file => Decision {
            route: route.to_owned(),
            genome: latest.genome,
            generation: latest.generation,
            record: None,
        },
        latest => {
            let generation = latest.map_or(1, |l| l.generation + 1);
            Decision {
                route: route.to_owned(),
                genome: file.clone(),
                generation,
                record: Some(GenomeRecord {
                    generation,
                    genome: file.clone(),
                    ..placeholder(route, at)
                }),
            }
        }
    }
}

/// A file record for `route` at `at`, its genome and generation to be filled in.
fn placeholder(route: &str, at: &str) -> GenomeRecord {
    GenomeRecord {
        route: route.to_owned(),
        generation: 0,
        genome: Genome::default(),
        source: LineageSource::File,
        applied_at: at.to_owned(),
        actor: "rafael".to_owned(),
        proposal_id: None,
        restores: None,
        reason: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AT: &str = "2026-12-01T10:00:00Z";

    fn config(attempts: u32) -> Config {
        crate::testing::config(&format!(
            r#"
            [[routes]]
            name = "api"
            listener = "in"
            upstream = "app"
            [routes.policy]
            timeout = "2s"
            retry = {{ max_attempts = {attempts} }}
            "#
        ))
    }

    fn genome(attempts: u32) -> Genome {
        config(attempts).routes[0].policy.clone()
    }

    fn apply(store: &Store, decisions: &[Decision]) {
        for decision in decisions {
            if let Some(record) = &decision.record {
                store.insert_genome(record).unwrap();
            }
        }
    }

    fn swapped(generation: u64, attempts: u32) -> GenomeRecord {
        GenomeRecord {
            generation,
            genome: genome(attempts),
            source: LineageSource::Proposal,
            proposal_id: Some(1),
            ..placeholder("api", AT)
        }
    }

    #[test]
    fn a_first_start_records_the_file_as_generation_one() {
        let store = Store::in_memory().unwrap();
        let decisions = restore(&config(3), &store, AT).unwrap();
        assert_eq!(decisions.len(), 1);
        assert_eq!(decisions[0].generation, 1);
        assert_eq!(decisions[0].genome, genome(3));
        let record = decisions[0].record.as_ref().unwrap();
        assert_eq!(record.source, LineageSource::File);
        assert_eq!(record.generation, 1);
    }

    #[test]
    fn a_restart_keeps_the_swapped_genome_unless_the_file_changed_meanwhile() {
        let store = Store::in_memory().unwrap();
        apply(&store, &restore(&config(3), &store, AT).unwrap());
        remember_file(&config(3), &store).unwrap();
        store.insert_genome(&swapped(2, 2)).unwrap();

        // Same file: generation 2 (the swapped genome) is live again.
        let same = restore(&config(3), &store, AT).unwrap();
        assert_eq!((same[0].generation, &same[0].genome), (2, &genome(2)));
        assert!(same[0].record.is_none());

        // The file changed while rafael was down: the file wins, as generation 3.
        let changed = restore(&config(4), &store, AT).unwrap();
        assert_eq!((changed[0].generation, &changed[0].genome), (3, &genome(4)));
        assert_eq!(
            changed[0].record.as_ref().map(|r| r.source),
            Some(LineageSource::File)
        );
    }

    #[test]
    fn a_reload_keeps_the_live_genome_unless_the_files_policy_for_the_route_changed() {
        let store = Store::in_memory().unwrap();
        remember_file(&config(3), &store).unwrap();
        let live = |_: &str| Some((genome(2), 5));

        let same = reconcile(&config(3), &store, live, AT).unwrap();
        assert_eq!((same[0].generation, &same[0].genome), (5, &genome(2)));
        assert!(same[0].record.is_none());

        let changed = reconcile(&config(4), &store, live, AT).unwrap();
        assert_eq!((changed[0].generation, &changed[0].genome), (6, &genome(4)));

        // Edited to the live genome itself: nothing new, nothing lost.
        let to_live = reconcile(&config(2), &store, live, AT).unwrap();
        assert_eq!((to_live[0].generation, &to_live[0].genome), (5, &genome(2)));
        assert!(to_live[0].record.is_none());
    }

    #[test]
    fn a_route_added_back_by_a_reload_continues_its_old_lineage() {
        let store = Store::in_memory().unwrap();
        store.insert_genome(&swapped(4, 2)).unwrap();
        let decisions = reconcile(&config(3), &store, |_| None, AT).unwrap();
        assert_eq!(decisions[0].generation, 5);
        assert_eq!(decisions[0].genome, genome(3));
    }
}
