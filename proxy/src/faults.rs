//! A route's fault rules, compiled for the Chaos Forge's two fault layers
//! ([`crate::layer::fault`]), and the slots that bound how many faults run at once.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use http::{HeaderMap, HeaderName};
use metrics::Counter;
use rafael_config::{Config, FaultStage};

use crate::{
    headers::constant_time_eq,
    metrics::FAULTS_INJECTED_TOTAL,
    policy::{
        Nanos,
        fault::{ActiveFaults, FaultRule, first_firing},
    },
};

/// Fault rules added to a route at run time (by an experiment), on top of its `[[faults]]`,
/// with a count of what they injected.
#[derive(Debug, Default)]
pub struct ExtraFaults {
    /// The rules, tried before the standing ones.
    pub rules: Vec<FaultRule>,
    /// Faults these rules injected.
    pub injected: AtomicU64,
}

/// A route's fault rules, compiled, with what they share.
#[derive(Debug)]
pub struct FaultSet {
    rules: Box<[(FaultRule, Counter)]>,
    /// The run-time rules (the first `extra.rules.len()` of `rules`), for their count.
    extra: Option<Arc<ExtraFaults>>,
    secret: Option<String>,
    /// The header names `only_with_header` rules look at: removed from every request of the
    /// route, so the chaos secret never reaches the upstream.
    targeting: Box<[HeaderName]>,
    max_active: u32,
    active: Arc<ActiveFaults>,
}

/// Which of a route's rules a request targets with the chaos secret: bit `i` for rule `i`
/// (rules past the 64th never fire by header).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Targets(u64);

/// Holds a slot of `max_active_faults` until dropped.
#[derive(Debug)]
pub struct ActiveFault(Arc<ActiveFaults>);

// === impl FaultSet ===

impl FaultSet {
    /// The rules of route `route`: `extra` (run-time) first, then its `[[faults]]` in
    /// `config`; `None` when it has none.
    pub fn for_route(
        route: &str,
        config: &Config,
        extra: Option<&Arc<ExtraFaults>>,
        active: &Arc<ActiveFaults>,
    ) -> Option<Self> {
        let standing = config
            .faults
            .iter()
            .filter(|f| f.route == route)
            .filter_map(FaultRule::from_config);
        let rules: Box<[(FaultRule, Counter)]> = extra
            .map(|e| e.rules.clone())
            .unwrap_or_default()
            .into_iter()
            .chain(standing)
            .map(|rule| {
                let stage = match rule.stage {
                    FaultStage::Upstream => "upstream",
                    FaultStage::Downstream => "downstream",
                };
                let counter = metrics::counter!(
                    FAULTS_INJECTED_TOTAL,
                    "route" => route.to_owned(),
                    "kind" => rule.kind_label(),
                    "stage" => stage
                );
                (rule, counter)
            })
            .collect();
        let mut targeting: Vec<HeaderName> = rules
            .iter()
            .filter_map(|(rule, _)| rule.only_with_header.as_deref())
            .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
            .collect();
        targeting.sort_unstable_by(|a, b| a.as_str().cmp(b.as_str()));
        targeting.dedup();
        (!rules.is_empty()).then(|| Self {
            rules,
            extra: extra.cloned(),
            targeting: targeting.into(),
            secret: config.chaos.header_secret.clone(),
            max_active: config.chaos.max_active_faults,
            active: active.clone(),
        })
    }

    /// Reads which rules the request targets with the chaos secret (compared in constant
    /// time), then removes every targeting header from it: the secret is rafael's, not the
    /// upstream's. Costs nothing on routes without `only_with_header` rules.
    pub fn take_targets(&self, headers: &mut HeaderMap) -> Targets {
        if self.targeting.is_empty() {
            return Targets::default();
        }
        let secret = self.secret.as_deref().filter(|s| !s.is_empty());
        let mut targets = 0u64;
        for (i, (rule, _)) in self.rules.iter().enumerate().take(64) {
            let (Some(name), Some(secret)) = (rule.only_with_header.as_deref(), secret) else {
                continue;
            };
            let carried = headers
                .get_all(name)
                .iter()
                .any(|value| constant_time_eq(value.as_bytes(), secret.as_bytes()));
            if carried {
                targets |= 1 << i;
            }
        }
        for name in self.targeting.iter() {
            headers.remove(name);
        }
        Targets(targets)
    }

    /// The first rule of `stage` that fires for a request that targets `targets`, with a slot
    /// taken.
    pub(crate) fn pick(
        &self,
        stage: FaultStage,
        targets: Targets,
        now: Nanos,
    ) -> Option<(&FaultRule, ActiveFault)> {
        let targeted = |i: usize| i < 64 && targets.0 & (1 << i) != 0;
        let index = first_firing(
            self.rules.iter().map(|(rule, _)| rule),
            stage,
            targeted,
            now,
            fastrand::f64,
        )?;
        let (rule, counter) = &self.rules[index];
        if !self.active.try_begin(self.max_active) {
            return None;
        }
        counter.increment(1);
        if let Some(extra) = self.extra.as_ref().filter(|e| index < e.rules.len()) {
            extra.injected.fetch_add(1, Ordering::Relaxed);
        }
        Some((rule, ActiveFault(self.active.clone())))
    }
}

impl Drop for ActiveFault {
    fn drop(&mut self) {
        self.0.end();
    }
}
