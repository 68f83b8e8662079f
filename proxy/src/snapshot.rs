//! The live routing state: one immutable, versioned [`Snapshot`] behind one `ArcSwap`.
//!
//! A request loads the snapshot once and keeps that `Arc` for its whole life, so a reload (or,
//! later, a genome swap) takes effect for new requests without touching those in flight.

use std::collections::BTreeMap;
use std::sync::{
    Arc, Mutex, PoisonError,
    atomic::{AtomicU64, Ordering},
};

use arc_swap::ArcSwap;
use http::{HeaderMap, Method, Uri};
use hyper_util::{rt::TokioExecutor, server::conn::auto};
use rafael_config::{Config, ConfigError, ConfigErrors, Genome, ListenerConfig};
use tokio_rustls::TlsAcceptor;

use crate::{
    clock,
    faults::{ExtraFaults, FaultSet},
    listener,
    metrics::{POLICY_VERSION, RouteMetrics},
    policy::{Nanos, fault::ActiveFaults},
    route_policy::RoutePolicy,
    router::{Matcher, RouteIndex},
    telemetry::RouteTelemetry,
    tls,
    upstream::Upstream,
};

/// Everything a request needs to be routed and forwarded, immutable once built.
#[derive(Debug)]
pub struct Snapshot {
    version: u64,
    config: Arc<Config>,
    listeners: Box<[ListenerState]>,
    routes: Box<[Arc<Route>]>,
    upstreams: Box<[Arc<Upstream>]>,
    unmatched: RouteMetrics,
    /// Faults in progress, shared by every snapshot (the cap is process-wide).
    active_faults: Arc<ActiveFaults>,
    /// Run-time fault rules by route (experiments'), kept across reloads.
    extra_faults: Arc<BTreeMap<String, Arc<ExtraFaults>>>,
    /// Canaries by route (the guardian's), kept across reloads until it stops them.
    canaries: Arc<BTreeMap<String, CanarySpec>>,
}

/// A canary: the genome a share of a route's requests runs on, with engine state of its own.
#[derive(Debug, Clone, PartialEq)]
pub struct CanarySpec {
    /// The candidate genome.
    pub genome: Genome,
    /// Share of the route's requests it serves, percent (0 to 100).
    pub percent: f64,
}

/// One cohort's `rafael_canary_requests_total` counters: success, client_error, server_error.
pub(crate) type CohortCounters = Arc<[metrics::Counter; 3]>;

/// How a route with a canary splits its requests, and counts each cohort's.
#[derive(Debug)]
pub struct Split {
    /// The canary's route (`None` on the canary's own route).
    canary: Option<Arc<Route>>,
    /// Requests whose id hashes below this go to the canary.
    threshold: u64,
    /// `rafael_canary_requests_total{route,cohort,class}` for this cohort, by class
    /// (success, client_error, server_error).
    counters: Arc<[metrics::Counter; 3]>,
}

/// A listener's live settings and its routes in match order.
#[derive(Clone)]
pub struct ListenerState {
    /// The listener's config.
    pub config: ListenerConfig,
    /// TLS termination, when configured.
    pub tls: Option<TlsAcceptor>,
    /// The HTTP server settings its connections use.
    pub http: auto::Builder<TokioExecutor>,
    routes: Box<[Arc<Route>]>,
    /// The routes' matchers, indexed by host and path prefix.
    index: Arc<RouteIndex>,
}

/// A route, compiled.
#[derive(Debug)]
pub struct Route {
    name: Arc<str>,
    matcher: Matcher,
    upstream: Arc<Upstream>,
    policy: RoutePolicy,
    metrics: RouteMetrics,
    faults: Option<Arc<FaultSet>>,
    /// Protocols an HTTP/1.1 upgrade may switch to (`upgrades`; never `h2c`).
    upgrades: Box<[String]>,
    /// Set while a canary runs on the route (on its stable and its canary route alike).
    split: Option<Box<Split>>,
}

/// Whether a canary serving `percent` of a route's requests takes the request with this
/// `x-request-id`: the split is a pure function of the id, so a client (or a test) that sets
/// its own ids knows each request's cohort.
pub fn canary_takes(request_id: &[u8], percent: f64) -> bool {
    request_hash(request_id) < canary_threshold(percent)
}

/// `percent` of the hash space, exactly none and all of it at the ends.
fn canary_threshold(percent: f64) -> u64 {
    let share = (percent / 100.0).clamp(0.0, 1.0);
    if share >= 1.0 {
        u64::MAX
    } else {
        (share * u64::MAX as f64) as u64
    }
}

/// The index of `route` in `snapshot`, with `genome` (when given) validated at its key path;
/// every error otherwise.
fn checked(
    snapshot: &Snapshot,
    route: &str,
    genome: Option<&Genome>,
) -> Result<usize, ConfigErrors> {
    let mut errors = ConfigErrors::default();
    let Some(index) = snapshot.routes.iter().position(|r| &*r.name == route) else {
        errors.push("routes", format!("no route named {route:?}"));
        return Err(errors);
    };
    if let Some(genome) = genome {
        genome.validate(&format!("routes[{index}].policy"), &mut errors);
    }
    errors.into_result(index)
}

/// FNV-1a over the request id, finalized by murmur3's mix: stable across processes and versions, so one id always lands
/// in the same cohort, and a few instructions a byte.
#[inline]
fn request_hash(id: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &byte in id {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // FNV alone leaves ids that differ in their last bytes close together in the high bits
    // the threshold compares; murmur3's finalizer spreads them.
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// The shared handle to the live snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotHandle {
    current: Arc<ArcSwap<Snapshot>>,
    next_version: Arc<AtomicU64>,
    /// Serializes writers (reloads and genome swaps), so neither builds on a snapshot the other
    /// is replacing and loses its change. Readers never take it.
    writer: Arc<Mutex<()>>,
}

/// Replaces route genomes at run time: what the control plane's guardian (and an operator, by
/// the admin API) uses to apply a genome. A swap builds a new snapshot that differs in that one
/// route and stores it atomically: requests in flight finish on the version they loaded, new
/// ones get the new genome, and the route's engine state is carried over (see
/// [`RoutePolicy::activate`]). [`SnapshotHandle::reload`] installs the genomes of the config it
/// is given; the control plane's guardian gives it the file's policy only for routes whose
/// policy the file changed, and the live genome elsewhere.
#[derive(Debug, Clone)]
pub struct PolicyHandle {
    snapshots: SnapshotHandle,
}

// === impl Snapshot ===

impl Snapshot {
    /// Compiles `config`. Upstreams whose config equals one in `previous` are reused with their
    /// connection pools and in-flight counts.
    pub fn build(
        config: Config,
        version: u64,
        previous: Option<&Snapshot>,
    ) -> Result<Self, ConfigErrors> {
        let mut errors = ConfigErrors::default();
        let mut upstreams = Vec::with_capacity(config.upstreams.len());
        for (i, upstream) in config.upstreams.iter().enumerate() {
            let reused =
                previous.and_then(|p| p.upstreams.iter().find(|u| u.config() == upstream).cloned());
            match reused {
                Some(existing) => upstreams.push(existing),
                None => match Upstream::new(upstream, &format!("upstreams[{i}]")) {
                    Ok(built) => upstreams.push(Arc::new(built)),
                    Err(error) => errors.0.push(error),
                },
            }
        }

        let active_faults = previous.map_or_else(Arc::default, |p| p.active_faults.clone());
        let extra_faults = previous.map_or_else(Arc::default, |p| p.extra_faults.clone());
        let canaries = previous.map_or_else(Arc::default, |p| p.canaries.clone());
        let mut routes = Vec::with_capacity(config.routes.len());
        for route in &config.routes {
            let Some(upstream) = upstreams.iter().find(|u| u.name() == route.upstream) else {
                // Validation guarantees the reference; a missing one means its build failed above.
                continue;
            };
            let before = previous.and_then(|p| p.route(&route.name));
            let policy = RoutePolicy::build(
                &route.name,
                &route.policy,
                upstream.addresses(),
                before.map(|r| &r.policy),
            );
            let built = Route {
                name: Arc::from(route.name.as_str()),
                matcher: Matcher::new(&route.match_),
                upstream: upstream.clone(),
                policy,
                metrics: RouteMetrics::new(&route.name),
                faults: FaultSet::for_route(
                    &route.name,
                    &config,
                    extra_faults.get(&route.name),
                    &active_faults,
                )
                .map(Arc::new),
                upgrades: route.upgrades.clone().into(),
                split: None,
            };
            routes.push(Arc::new(
                built.with_canary(canaries.get(&route.name), before.map(|r| &**r)),
            ));
        }

        let mut listeners = Vec::with_capacity(config.listeners.len());
        for (i, listener) in config.listeners.iter().enumerate() {
            let tls = match &listener.tls {
                None => None,
                Some(spec) => match tls::server_config(spec, listener.protocol) {
                    Ok(server) => Some(TlsAcceptor::from(server)),
                    Err(e) => {
                        errors.push(format!("listeners[{i}].tls"), e);
                        None
                    }
                },
            };
            let listener_routes: Box<[Arc<Route>]> = config
                .routes
                .iter()
                .zip(&routes)
                .filter(|(spec, _)| spec.listener == listener.name)
                .map(|(_, route)| route.clone())
                .collect();
            let index = RouteIndex::new(listener_routes.iter().map(|r| r.matcher.clone()));
            listeners.push(ListenerState {
                http: listener::http_builder(listener),
                config: listener.clone(),
                tls,
                routes: listener_routes,
                index: Arc::new(index),
            });
        }

        errors.into_result(Self {
            version,
            config: Arc::new(config),
            listeners: listeners.into(),
            routes: routes.into(),
            upstreams: upstreams.into(),
            unmatched: RouteMetrics::unmatched(),
            active_faults,
            extra_faults,
            canaries,
        })
    }

    /// Monotonic version: every reload or swap gets a new one.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The config it was built from.
    pub fn config(&self) -> &Arc<Config> {
        &self.config
    }

    /// Listener `index` (in config order).
    pub fn listener(&self, index: usize) -> Option<&ListenerState> {
        self.listeners.get(index)
    }

    /// All routes, in config order.
    pub fn routes(&self) -> &[Arc<Route>] {
        &self.routes
    }

    /// Route named `name`.
    pub fn route(&self, name: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| &*r.name == name)
    }

    /// A copy in which route `index` runs `canary` (`None`: none), everything else shared.
    fn with_canary(&self, index: usize, canary: Option<CanarySpec>, version: u64) -> Self {
        let mut canaries = (*self.canaries).clone();
        let name = self.routes[index].name.to_string();
        match canary {
            Some(canary) => canaries.insert(name, canary),
            None => canaries.remove(&name),
        };
        let mut next = Self {
            canaries: Arc::new(canaries),
            ..self.shallow_copy(version)
        };
        next = next.with_route_at(
            Some(index),
            (*self.config).clone(),
            (*self.extra_faults).clone(),
            version,
            None,
        );
        next
    }

    /// This snapshot again at `version`, sharing everything.
    fn shallow_copy(&self, version: u64) -> Self {
        Self {
            version,
            config: self.config.clone(),
            listeners: self.listeners.clone(),
            routes: self.routes.clone(),
            upstreams: self.upstreams.clone(),
            unmatched: RouteMetrics::unmatched(),
            active_faults: self.active_faults.clone(),
            extra_faults: self.extra_faults.clone(),
            canaries: self.canaries.clone(),
        }
    }

    /// A copy with route `index` (if any) rebuilt from `config` and `extra_faults` (its policy
    /// state carried over); everything else is shared.
    fn with_route(
        &self,
        index: Option<usize>,
        config: Config,
        extra_faults: BTreeMap<String, Arc<ExtraFaults>>,
        version: u64,
    ) -> Self {
        self.with_route_at(index, config, extra_faults, version, None)
    }

    /// [`Snapshot::with_route`], the rebuilt route at `generation` when given (else one more
    /// than before when its genome changed).
    fn with_route_at(
        &self,
        index: Option<usize>,
        config: Config,
        extra_faults: BTreeMap<String, Arc<ExtraFaults>>,
        version: u64,
        generation: Option<u64>,
    ) -> Self {
        let rebuilt = index.map(|index| {
            let old = &self.routes[index];
            let mut policy = RoutePolicy::build(
                &old.name,
                &config.routes[index].policy,
                old.upstream.addresses(),
                Some(&old.policy),
            );
            if let Some(generation) = generation {
                policy.set_generation(generation);
            }
            policy.activate(clock::now());
            let new = Route {
                name: old.name.clone(),
                matcher: old.matcher.clone(),
                upstream: old.upstream.clone(),
                policy,
                metrics: RouteMetrics::new(&old.name),
                faults: FaultSet::for_route(
                    &old.name,
                    &config,
                    extra_faults.get(&*old.name),
                    &self.active_faults,
                )
                .map(Arc::new),
                upgrades: old.upgrades.clone(),
                split: None,
            };
            let new = Arc::new(new.with_canary(self.canaries.get(&*old.name), Some(old)));
            if let Some(canary) = new.canary() {
                canary.policy.activate(clock::now());
            }
            (old, new)
        });
        let replace = |route: &Arc<Route>| match &rebuilt {
            Some((old, new)) if Arc::ptr_eq(route, old) => new.clone(),
            _ => route.clone(),
        };
        Self {
            version,
            config: Arc::new(config),
            listeners: self
                .listeners
                .iter()
                .map(|listener| ListenerState {
                    routes: listener.routes.iter().map(replace).collect(),
                    ..listener.clone()
                })
                .collect(),
            routes: self.routes.iter().map(replace).collect(),
            upstreams: self.upstreams.clone(),
            unmatched: RouteMetrics::unmatched(),
            active_faults: self.active_faults.clone(),
            extra_faults: Arc::new(extra_faults),
            canaries: self.canaries.clone(),
        }
    }

    /// Makes every route's policy the live one (see [`RoutePolicy::activate`]): called once,
    /// just before the snapshot is stored.
    fn activate(&self) {
        let now = clock::now();
        for route in self.routes.iter() {
            route.policy.activate(now);
            if let Some(canary) = route.canary() {
                canary.policy.activate(now);
            }
        }
    }

    /// Metrics of requests that matched no route.
    pub fn unmatched_metrics(&self) -> &RouteMetrics {
        &self.unmatched
    }
}

// === impl ListenerState ===

impl std::fmt::Debug for ListenerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerState")
            .field("config", &self.config)
            .field("tls", &self.tls.is_some())
            .field("routes", &self.routes)
            .finish_non_exhaustive()
    }
}

impl ListenerState {
    /// The first route of this listener that takes the request.
    pub fn route(&self, method: &Method, uri: &Uri, headers: &HeaderMap) -> Option<&Arc<Route>> {
        self.index
            .find(method, uri, headers)
            .and_then(|i| self.routes.get(i))
    }
}

// === impl Route ===

/// `rafael_canary_requests_total{route,cohort,class}`.
pub const CANARY_REQUESTS_TOTAL: &str = "rafael_canary_requests_total";

impl Route {
    /// This route with `canary` split off it (or none), the canary's engine state carried
    /// over from `before`'s canary when it had the same one running.
    fn with_canary(mut self, canary: Option<&CanarySpec>, before: Option<&Route>) -> Self {
        let Some(spec) = canary else {
            return self;
        };
        let name = self.name.to_string();
        let counters = |cohort: &'static str| {
            Arc::new(["success", "client_error", "server_error"].map(|class| {
                metrics::counter!(CANARY_REQUESTS_TOTAL, "route" => name.clone(), "cohort" => cohort, "class" => class)
            }))
        };
        // The canary's engines report under `ROUTE:canary`, so its limits, breakers and
        // generation never overwrite the stable cohort's gauges.
        let previous = before
            .and_then(Route::canary)
            .filter(|c| c.policy.genome() == &spec.genome);
        let policy = RoutePolicy::build(
            &format!("{name}:canary"),
            &spec.genome,
            self.upstream.addresses(),
            previous.map(|c| &c.policy),
        );
        let canary = Route {
            name: self.name.clone(),
            matcher: self.matcher.clone(),
            upstream: self.upstream.clone(),
            policy,
            metrics: RouteMetrics::new(&name),
            faults: self.faults.clone(),
            upgrades: self.upgrades.clone(),
            split: Some(Box::new(Split {
                canary: None,
                threshold: 0,
                counters: counters("canary"),
            })),
        };
        let threshold = canary_threshold(spec.percent);
        self.split = Some(Box::new(Split {
            canary: Some(Arc::new(canary)),
            threshold,
            counters: counters("stable"),
        }));
        self
    }

    /// The canary's route, while a canary runs on this one.
    pub fn canary(&self) -> Option<&Arc<Route>> {
        self.split.as_ref().and_then(|split| split.canary.as_ref())
    }

    /// While a canary runs on this route: the route a request with this id runs on (this one,
    /// or its canary's) and the counters of that cohort. `None` without a canary: the one
    /// branch a request pays for the feature.
    #[inline]
    pub(crate) fn cohort(&self, request_id: &[u8]) -> Option<(Option<Arc<Route>>, CohortCounters)> {
        let split = self.split.as_ref()?;
        Some(match &split.canary {
            Some(canary) if request_hash(request_id) < split.threshold => (
                Some(canary.clone()),
                canary
                    .split
                    .as_ref()
                    .map_or_else(|| split.counters.clone(), |s| s.counters.clone()),
            ),
            _ => (None, split.counters.clone()),
        })
    }
    /// Route name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The upstream serving it.
    pub fn upstream(&self) -> &Arc<Upstream> {
        &self.upstream
    }

    /// Its genome.
    pub fn policy(&self) -> &Genome {
        self.policy.genome()
    }

    /// Its live policy: the genome compiled for the engines, and their shared state.
    pub fn live(&self) -> &RoutePolicy {
        &self.policy
    }

    /// Its metric handles.
    pub fn metrics(&self) -> &RouteMetrics {
        &self.metrics
    }

    /// Its fault rules, when it has any.
    pub fn faults(&self) -> Option<&FaultSet> {
        self.faults.as_deref()
    }

    /// True when every protocol an `Upgrade` field offers is one this route splices. `h2c` never
    /// is: rafael speaks HTTP/2 to clients itself, and a spliced h2c connection would carry
    /// whatever the client sends next straight to the upstream, past routing and policies.
    pub fn allows_upgrade(&self, headers: &HeaderMap) -> bool {
        let mut offered = false;
        for value in headers.get_all(http::header::UPGRADE) {
            // A value that is not visible ASCII names no protocol this route could allow.
            let Ok(value) = value.to_str() else {
                return false;
            };
            // `name/version` tokens; the version does not change what is allowed.
            for protocol in value.split(',') {
                let name = protocol.split('/').next().unwrap_or(protocol).trim();
                if name.is_empty() {
                    continue;
                }
                let allowed = !name.eq_ignore_ascii_case("h2c")
                    && self.upgrades.iter().any(|u| u.eq_ignore_ascii_case(name));
                if !allowed {
                    return false;
                }
                offered = true;
            }
        }
        offered
    }
}

// === impl SnapshotHandle ===

impl SnapshotHandle {
    /// Builds version 1 from `config`.
    pub fn new(config: Config) -> Result<Self, ConfigErrors> {
        let snapshot = Snapshot::build(config, 1, None)?;
        snapshot.activate();
        metrics::gauge!(POLICY_VERSION).set(1.0);
        Ok(Self {
            current: Arc::new(ArcSwap::from_pointee(snapshot)),
            next_version: Arc::new(AtomicU64::new(2)),
            writer: Arc::new(Mutex::new(())),
        })
    }

    /// Read-only access to the routes' telemetry.
    pub fn telemetry(&self) -> TelemetryHandle {
        TelemetryHandle::new(self.clone())
    }

    /// Adds (`Some`) or removes (`None`) the run-time fault rules of `route` and returns the
    /// new snapshot version: how an experiment injects its faults and always takes them out.
    /// Reloads keep them.
    pub fn set_extra_faults(
        &self,
        route: &str,
        faults: Option<Arc<ExtraFaults>>,
    ) -> Result<u64, ConfigErrors> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.load();
        let index = current.routes.iter().position(|r| &*r.name == route);
        if index.is_none() && faults.is_some() {
            let mut errors = ConfigErrors::default();
            errors.push("route", format!("no route named {route:?}"));
            return Err(errors);
        }
        let mut extra = (*current.extra_faults).clone();
        match faults {
            Some(faults) => extra.insert(route.to_owned(), faults),
            None => extra.remove(route),
        };
        // Without the route (a reload took it away while its experiment ran) only the table
        // changes: its rules must still leave, or they would come back with the route.
        let version = self.next_version();
        let config = (*current.config).clone();
        Ok(self.publish(current.with_route(index, config, extra, version)))
    }

    /// The version for the next snapshot.
    fn next_version(&self) -> u64 {
        self.next_version.fetch_add(1, Ordering::Relaxed)
    }

    /// Makes `snapshot` the live one (callers hold the writer lock) and returns its version.
    fn publish(&self, snapshot: Snapshot) -> u64 {
        let version = snapshot.version;
        self.current.store(Arc::new(snapshot));
        metrics::gauge!(POLICY_VERSION).set(version as f64);
        version
    }

    /// The handle that swaps route genomes on this snapshot.
    pub fn policies(&self) -> PolicyHandle {
        PolicyHandle {
            snapshots: self.clone(),
        }
    }

    /// The live snapshot. Requests call this once and keep the result.
    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Replaces the live snapshot with one built from `config` and returns its version.
    ///
    /// Listeners are bound sockets, so their names, order and addresses must stay as they are;
    /// everything else (routes, upstreams, TLS material, timeouts) may change.
    pub fn reload(&self, config: Config) -> Result<u64, ConfigErrors> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = self.load();
        let mut errors = ConfigErrors::default();
        let old = &current.config.listeners;
        if old.len() != config.listeners.len() {
            errors.push(
                "listeners",
                format!(
                    "a reload cannot add or remove listeners ({} before, {} now); restart rafael",
                    old.len(),
                    config.listeners.len()
                ),
            );
        }
        for (i, (before, after)) in old.iter().zip(&config.listeners).enumerate() {
            if before.name != after.name || before.bind != after.bind {
                errors.0.push(ConfigError::new(
                    format!("listeners[{i}]"),
                    format!(
                        "a reload cannot rename or rebind a listener ({} on {} before); restart rafael",
                        before.name, before.bind
                    ),
                ));
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let snapshot = Snapshot::build(config, self.next_version(), Some(&current))?;
        snapshot.activate();
        Ok(self.publish(snapshot))
    }
}

// === impl PolicyHandle ===

impl PolicyHandle {
    /// Replaces the genome of `route` and returns the new snapshot version. The genome is
    /// validated first; an invalid one changes nothing and comes back with its errors, each
    /// under `routes[i].policy`.
    pub fn swap(&self, route: &str, genome: Genome) -> Result<u64, ConfigErrors> {
        self.replace(route, genome, None)
    }

    /// Makes `genome` live on `route` as generation `generation` (the control plane's lineage
    /// numbers generations, and a restart must bring the same numbers back), and returns the
    /// new snapshot version. Validated like [`PolicyHandle::swap`]; the engine state carries
    /// over the same way. Installing the live genome at another generation renumbers it
    /// without touching its state.
    pub fn install(
        &self,
        route: &str,
        genome: Genome,
        generation: u64,
    ) -> Result<u64, ConfigErrors> {
        self.replace(route, genome, Some(generation))
    }

    /// [`PolicyHandle::swap`] and [`PolicyHandle::install`]: `generation` when given, else one
    /// more than before when the genome changed.
    fn replace(
        &self,
        route: &str,
        genome: Genome,
        generation: Option<u64>,
    ) -> Result<u64, ConfigErrors> {
        let handle = &self.snapshots;
        let _writer = handle.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = handle.load();
        let index = checked(&current, route, Some(&genome))?;
        let mut config = (*current.config).clone();
        config.routes[index].policy = genome;
        let next = current.with_route_at(
            Some(index),
            config,
            (*current.extra_faults).clone(),
            handle.next_version(),
            generation,
        );
        Ok(handle.publish(next))
    }

    /// Starts (`Some`) or stops (`None`) a canary on `route` and returns the new snapshot
    /// version: `percent` of the route's requests, chosen by a stable hash of their request
    /// id, run on the canary's genome with engine state of its own (budget, breakers,
    /// limits, telemetry), the rest on the route's own. The genome is validated first.
    pub fn set_canary(&self, route: &str, canary: Option<CanarySpec>) -> Result<u64, ConfigErrors> {
        let handle = &self.snapshots;
        let _writer = handle.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let current = handle.load();
        let index = checked(&current, route, canary.as_ref().map(|c| &c.genome))?;
        if let Some(spec) = &canary {
            let mut errors = ConfigErrors::default();
            if !(0.0..=100.0).contains(&spec.percent) {
                errors.push(
                    "canary.percent",
                    format!("must be 0..=100, got {}", spec.percent),
                );
            }
            if !errors.is_empty() {
                return Err(errors);
            }
        }
        Ok(handle.publish(current.with_canary(index, canary, handle.next_version())))
    }

    /// The canary running on `route`, if any.
    pub fn canary(&self, route: &str) -> Option<CanarySpec> {
        self.snapshots.load().canaries.get(route).cloned()
    }

    /// The live genome of `route`.
    pub fn genome(&self, route: &str) -> Option<Genome> {
        let snapshot = self.snapshots.load();
        snapshot.route(route).map(|r| r.policy().clone())
    }

    /// How many times the genome of `route` changed, plus one.
    pub fn generation(&self, route: &str) -> Option<u64> {
        let snapshot = self.snapshots.load();
        snapshot.route(route).map(|r| r.live().generation())
    }
}

/// Read-only access to every route's telemetry.
#[derive(Debug, Clone)]
pub struct TelemetryHandle {
    snapshots: SnapshotHandle,
}

// === impl TelemetryHandle ===

impl TelemetryHandle {
    /// Reads the telemetry of the routes in `snapshots`' live snapshot.
    pub fn new(snapshots: SnapshotHandle) -> Self {
        Self { snapshots }
    }

    /// The data plane's clock now, in the unit of every time here.
    pub fn now(&self) -> Nanos {
        clock::now()
    }

    /// Names of the live routes.
    pub fn routes(&self) -> Vec<String> {
        let snapshot = self.snapshots.load();
        snapshot
            .routes()
            .iter()
            .map(|r| r.name().to_owned())
            .collect()
    }

    /// The telemetry of `route`.
    pub fn route(&self, route: &str) -> Option<Arc<RouteTelemetry>> {
        let snapshot = self.snapshots.load();
        snapshot.route(route).map(|r| r.live().telemetry().clone())
    }
}

#[cfg(test)]
mod canary_tests {
    use super::request_hash;

    #[test]
    fn the_request_hash_splits_ids_evenly_and_stably() {
        // Ids as rafael makes them (hex) and as clients send them (counters): a 10% threshold
        // takes close to 10% of either.
        let threshold = (0.1 * u64::MAX as f64) as u64;
        for ids in [
            (0..20_000u64)
                .map(|i| format!("{:032x}", i.wrapping_mul(0x9e37_79b9_7f4a_7c15)))
                .collect::<Vec<_>>(),
            (0..20_000u64).map(|i| format!("req-{i}")).collect(),
        ] {
            let taken = ids
                .iter()
                .filter(|id| request_hash(id.as_bytes()) < threshold)
                .count();
            let share = taken as f64 / ids.len() as f64;
            assert!((share - 0.1).abs() < 0.01, "{share}");
        }
        assert_eq!(request_hash(b"abc"), request_hash(b"abc"));
    }
}
