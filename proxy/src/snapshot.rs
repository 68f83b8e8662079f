//! The live routing state: one immutable, versioned [`Snapshot`] behind one `ArcSwap`.
//!
//! A request loads the snapshot once and keeps that `Arc` for its whole life, so a reload (or,
//! later, a genome swap) takes effect for new requests without touching those in flight.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use arc_swap::ArcSwap;
use http::{HeaderMap, Method, Uri};
use hyper_util::{rt::TokioExecutor, server::conn::auto};
use metrics::gauge;
use rafael_config::{Config, ConfigError, ConfigErrors, Genome, ListenerConfig};
use tokio_rustls::TlsAcceptor;

use crate::{
    layer,
    metrics::{GENOME_GENERATION, POLICY_VERSION, RouteMetrics},
    route_policy::RoutePolicy,
    router::Matcher,
    server, tls,
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
}

/// A listener's live settings and its routes in match order.
pub struct ListenerState {
    /// The listener's config.
    pub config: ListenerConfig,
    /// TLS termination, when configured.
    pub tls: Option<TlsAcceptor>,
    /// The HTTP server settings its connections use.
    pub http: auto::Builder<TokioExecutor>,
    routes: Box<[Arc<Route>]>,
}

/// A route, compiled.
#[derive(Debug)]
pub struct Route {
    name: Arc<str>,
    matcher: Matcher,
    upstream: Arc<Upstream>,
    policy: RoutePolicy,
    metrics: RouteMetrics,
}

/// The shared handle to the live snapshot.
#[derive(Debug, Clone)]
pub struct SnapshotHandle {
    current: Arc<ArcSwap<Snapshot>>,
    next_version: Arc<AtomicU64>,
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

        let now = layer::now();
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
                upstream,
                before.map(|r| &r.policy),
                now,
            );
            gauge!(GENOME_GENERATION, "route" => route.name.clone())
                .set(policy.generation() as f64);
            routes.push(Arc::new(Route {
                name: Arc::from(route.name.as_str()),
                matcher: Matcher::new(&route.match_),
                upstream: upstream.clone(),
                policy,
                metrics: RouteMetrics::new(&route.name),
            }));
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
            let listener_routes = config
                .routes
                .iter()
                .zip(&routes)
                .filter(|(spec, _)| spec.listener == listener.name)
                .map(|(_, route)| route.clone())
                .collect();
            listeners.push(ListenerState {
                http: server::http_builder(listener),
                config: listener.clone(),
                tls,
                routes: listener_routes,
            });
        }

        errors.into_result(Self {
            version,
            config: Arc::new(config),
            listeners: listeners.into(),
            routes: routes.into(),
            upstreams: upstreams.into(),
            unmatched: RouteMetrics::unmatched(),
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
        self.routes
            .iter()
            .find(|route| route.matcher.matches(method, uri, headers))
    }
}

// === impl Route ===

impl Route {
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
}

// === impl SnapshotHandle ===

impl SnapshotHandle {
    /// Builds version 1 from `config`.
    pub fn new(config: Config) -> Result<Self, ConfigErrors> {
        let snapshot = Snapshot::build(config, 1, None)?;
        metrics::gauge!(POLICY_VERSION).set(1.0);
        Ok(Self {
            current: Arc::new(ArcSwap::from_pointee(snapshot)),
            next_version: Arc::new(AtomicU64::new(2)),
        })
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
        let version = self.next_version.fetch_add(1, Ordering::Relaxed);
        let snapshot = Snapshot::build(config, version, Some(&current))?;
        self.current.store(Arc::new(snapshot));
        metrics::gauge!(POLICY_VERSION).set(version as f64);
        Ok(version)
    }
}
