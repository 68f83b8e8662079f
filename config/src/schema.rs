//! The config file's sections, as DESIGN §4 names them.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{ByteRate, ByteSize, Genome, HumanDuration};

/// A whole, validated config file.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct Config {
    /// The admin listener.
    pub admin: AdminConfig,
    /// The embedded store.
    pub store: StoreConfig,
    /// Process-wide settings: draining, worker threads.
    pub runtime: RuntimeConfig,
    /// Where traffic comes in.
    pub listeners: Vec<ListenerConfig>,
    /// Where traffic goes.
    pub upstreams: Vec<UpstreamConfig>,
    /// How requests map from listeners to upstreams, first match wins.
    pub routes: Vec<RouteConfig>,
    /// Fault-injection safety settings.
    pub chaos: ChaosConfig,
    /// Standing fault rules.
    pub faults: Vec<FaultConfig>,
    /// The control plane's evolution settings.
    pub evolution: EvolutionConfig,
    /// What bounds and gates proposed genomes.
    pub guardian: GuardianConfig,
}

/// `[admin]`: the admin API listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct AdminConfig {
    /// Address of `/metrics`, `/healthz`, `/readyz` and `/v1/*`.
    pub bind: SocketAddr,
    /// Bearer tokens; required when `bind` is not loopback.
    pub tokens_file: Option<PathBuf>,
}

/// `[store]`: the embedded SQLite database.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct StoreConfig {
    /// Database file.
    pub path: PathBuf,
}

/// `[runtime]`: process-wide settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct RuntimeConfig {
    /// How long in-flight requests may run after SIGTERM before rafael exits anyway.
    pub drain_timeout: HumanDuration,
    /// Tokio worker threads; unset means one per available CPU.
    pub worker_threads: Option<u32>,
    /// Watch the config file and reload it when it changes (SIGHUP always reloads).
    pub watch_config: bool,
}

/// `[[listeners]]`: one bound socket.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ListenerConfig {
    /// Name that routes refer to.
    pub name: String,
    /// Address to bind.
    pub bind: SocketAddr,
    /// Protocols served.
    #[serde(default)]
    pub protocol: ListenerProtocol,
    /// TLS termination.
    #[serde(default)]
    pub tls: Option<ServerTls>,
    /// A client must send a complete request head within this time.
    #[serde(default = "ListenerConfig::default_header_read_timeout")]
    pub header_read_timeout: HumanDuration,
    /// Largest request head accepted (431 above it).
    #[serde(default = "ListenerConfig::default_max_header_bytes")]
    pub max_header_bytes: ByteSize,
    /// A connection with no request in progress is closed after this time.
    #[serde(default = "ListenerConfig::default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// A request body that sends nothing for this long is cut off with 408 (nginx
    /// `client_body_timeout`).
    #[serde(default = "ListenerConfig::default_body_read_timeout")]
    pub body_read_timeout: HumanDuration,
    /// A client that takes nothing of what rafael writes for this long is disconnected (nginx
    /// `send_timeout`).
    #[serde(default = "ListenerConfig::default_send_timeout")]
    pub send_timeout: HumanDuration,
    /// Most connections open at once; at the cap idle keep-alive connections are closed to make
    /// room, then new ones wait in the kernel's backlog.
    #[serde(default = "ListenerConfig::default_max_connections")]
    pub max_connections: u32,
    /// Most concurrent HTTP/2 streams per connection (nginx `http2_max_concurrent_streams`).
    #[serde(default = "ListenerConfig::default_max_concurrent_streams")]
    pub max_concurrent_streams: u32,
    /// Connections the kernel queues, handshaken, until rafael accepts them (`listen(2)`'s
    /// backlog; the kernel caps it at `net.core.somaxconn`). Past it, a new connection's SYN is
    /// dropped and the client retries it a second later.
    #[serde(default = "ListenerConfig::default_backlog")]
    pub backlog: u32,
}

/// Downstream protocols a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerProtocol {
    /// HTTP/1.1 and HTTP/2 (ALPN with TLS, prior knowledge without).
    #[default]
    Auto,
    /// HTTP/1.1 only.
    Http1,
    /// HTTP/2 only.
    Http2,
}

/// TLS termination material for a listener.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ServerTls {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

/// `[[upstreams]]`: a service with one or more endpoints.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct UpstreamConfig {
    /// Name that routes refer to.
    pub name: String,
    /// `host:port` of each endpoint.
    pub endpoints: Vec<String>,
    /// Deadline for establishing a connection (TLS handshake included).
    #[serde(default = "UpstreamConfig::default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Protocol spoken to the endpoints.
    #[serde(default)]
    pub protocol: UpstreamProtocol,
    /// TLS origination.
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    /// Idle pooled connections are closed after this time.
    #[serde(default = "UpstreamConfig::default_pool_idle_timeout")]
    pub pool_idle_timeout: HumanDuration,
    /// Most idle connections kept per endpoint.
    #[serde(default = "UpstreamConfig::default_pool_max_idle")]
    pub pool_max_idle_per_endpoint: u32,
}

/// Upstream protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    #[default]
    Http1,
    /// HTTP/2 (prior knowledge in clear text, ALPN `h2` with TLS).
    Http2,
}

/// TLS origination settings for an upstream.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct UpstreamTls {
    /// PEM bundle of trusted roots; unset means the Mozilla roots are not available, so set it.
    pub ca: Option<PathBuf>,
    /// Name sent as SNI and checked against the certificate; defaults to the endpoint's host.
    pub server_name: Option<String>,
}

/// `[[routes]]`: maps matching requests from a listener to an upstream.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct RouteConfig {
    /// Route name, used in metrics and the admin API.
    pub name: String,
    /// Listener whose requests this route sees.
    pub listener: String,
    /// Upstream that serves it.
    pub upstream: String,
    /// Which requests it takes.
    #[serde(default, rename = "match")]
    pub match_: RouteMatch,
    /// Vault pattern used as the starting genome.
    #[serde(default)]
    pub pattern: Option<String>,
    /// The route's genome.
    #[serde(default)]
    pub policy: Genome,
    /// Protocols an HTTP/1.1 `Upgrade` may switch to on this route (Envoy `upgrade_configs`);
    /// any other upgrade is forwarded as a plain request. `h2c` is never allowed.
    #[serde(default = "RouteConfig::default_upgrades")]
    pub upgrades: Vec<String>,
    /// Whether evolution rounds run on this route.
    #[serde(default = "RouteConfig::default_evolve")]
    pub evolve: bool,
}

/// Conditions a request must meet, all of them, for a route to take it.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct RouteMatch {
    /// `example.com` or `*.example.com`; compared without the port, case-insensitively.
    pub host: Option<HostMatch>,
    /// Path prefix, `/` when unset. Matches whole segments are not required: `/api` takes `/apix`.
    pub path_prefix: Option<String>,
    /// Allowed methods; unset means all.
    pub methods: Option<Vec<String>>,
    /// Headers that must be present with exactly these values.
    pub headers: BTreeMap<String, String>,
}

/// A host pattern.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub enum HostMatch {
    /// This host exactly.
    Exact(String),
    /// Any host ending in `.suffix` (from `*.suffix`).
    Suffix(String),
}

/// `[chaos]`: fault-injection safety settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct ChaosConfig {
    /// Value that `only_with_header` rules require.
    pub header_secret: Option<String>,
    /// Faults in progress at once, all rules together.
    pub max_active_faults: u32,
}

/// `[[faults]]`: a standing fault rule.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct FaultConfig {
    /// Route it applies to.
    pub route: String,
    /// Where it is injected.
    #[serde(default)]
    pub stage: FaultStage,
    /// Share of requests (or attempts) affected, 0..=100.
    #[serde(default = "FaultConfig::default_percent")]
    pub percent: f64,
    /// Added latency (the least of it, with `delay_max`).
    #[serde(default)]
    pub delay: Option<HumanDuration>,
    /// With `delay`: the latency is drawn uniformly between `delay` and this (jitter).
    #[serde(default)]
    pub delay_max: Option<HumanDuration>,
    /// Answer with this status instead of calling the upstream (gRPC requests get the
    /// matching `grpc-status`).
    #[serde(default)]
    pub abort: Option<u16>,
    /// With `abort`: the response body.
    #[serde(default)]
    pub abort_body: Option<String>,
    /// Never answer: the request waits for the route's timeout or for the client to give up.
    #[serde(default)]
    pub blackhole: bool,
    /// Reset the connection or stream.
    #[serde(default)]
    pub reset: bool,
    /// Limit the response body's rate.
    #[serde(default)]
    pub throttle: Option<ByteRate>,
    /// Cut the response body after this many bytes.
    #[serde(default)]
    pub truncate: Option<ByteSize>,
    /// Inject only into requests carrying this header with the chaos secret as its value.
    #[serde(default)]
    pub only_with_header: Option<String>,
}

/// Where a fault is injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultStage {
    /// Per attempt, under the policies: retries and breakers react to it.
    #[default]
    Upstream,
    /// Seen by the client, untouched by policies.
    Downstream,
}

/// `[evolution]`: the control plane's search settings.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct EvolutionConfig {
    /// Run evolution rounds on a timer.
    pub enabled: bool,
    /// Time between rounds.
    pub interval: HumanDuration,
    /// Requests a route's telemetry window needs before its model is fitted (and a round runs).
    pub min_requests: u32,
    /// Largest relative error of the model check before the model is not trusted.
    pub max_model_error: f64,
    /// Offspring per generation (lambda).
    pub population: u32,
    /// Parents kept per generation (mu).
    pub parents: u32,
    /// Generations after the first.
    pub generations: u32,
    /// Paired simulation seeds per full evaluation.
    pub seeds: u32,
    /// Scenarios every genome is evaluated under (`observed`, `nominal`, `THREAT:SEVERITY`).
    pub scenarios: Vec<String>,
    /// How scenarios combine.
    pub aggregate: AggregateMode,
    /// Least fitness gain over the incumbent for a proposal; also the most any one scenario
    /// may lose.
    pub margin: f64,
    /// Virtual time of a full evaluation, per scenario and seed.
    pub duration: HumanDuration,
    /// Whether winners wait for a human. Deprecated: moved to `[guardian].approval`, still
    /// read here with a warning (see [`Config::approval`]).
    pub approval: Option<ApprovalMode>,
    /// What a good genome is.
    pub objectives: Objectives,
    /// Hard bounds per gene path (moved to `[guardian].guardrails`, still read here).
    pub guardrails: BTreeMap<String, Guardrail>,
}

// === impl Config ===

impl Config {
    /// How proposals are approved: `[guardian].approval`, else the deprecated
    /// `[evolution].approval`, else `manual`.
    pub fn approval(&self) -> ApprovalMode {
        self.guardian
            .approval
            .or(self.evolution.approval)
            .unwrap_or_default()
    }

    /// The bounds per gene: `[guardian].guardrails`, else the deprecated
    /// `[evolution].guardrails`.
    pub fn guardrails(&self) -> &BTreeMap<String, Guardrail> {
        if self.guardian.guardrails.is_empty() {
            &self.evolution.guardrails
        } else {
            &self.guardian.guardrails
        }
    }

    /// Warnings about keys that still work but moved: each with its key path and where it
    /// lives now. `rafael config check` prints them and a running rafael logs them.
    pub fn deprecations(&self) -> Vec<crate::ConfigError> {
        let mut warnings = Vec::new();
        if self.evolution.approval.is_some() {
            warnings.push(crate::ConfigError::new(
                "evolution.approval",
                "deprecated: moved to [guardian].approval (still read here)",
            ));
        }
        if !self.evolution.guardrails.is_empty() {
            warnings.push(crate::ConfigError::new(
                "evolution.guardrails",
                "deprecated: moved to [guardian].guardrails (still read here)",
            ));
        }
        warnings
    }
}

/// How scenarios combine into one fitness.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AggregateMode {
    /// The mean over scenarios.
    #[default]
    Mean,
    /// The worst scenario.
    Worst,
}

/// `[guardian]`: what bounds and gates proposed genomes, and how an approved one goes live
/// (DESIGN §7.6).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct GuardianConfig {
    /// Whether proposals wait for people (`manual`, the default) or are approved by rafael
    /// when they pass every guardrail (`auto`). Read through [`Config::approval`], which also
    /// honours the deprecated `[evolution].approval`.
    pub approval: Option<ApprovalMode>,
    /// Distinct approvers a `manual` proposal needs; its author never counts.
    pub approvals_required: u32,
    /// Hard bounds per gene path (`"retry.max_attempts" = { max = 4 }`).
    pub guardrails: BTreeMap<String, Guardrail>,
    /// Most relative change of any numeric gene in one proposal.
    pub max_step: f64,
    /// Gene paths or sections no proposal changes.
    pub frozen: Vec<String>,
    /// How long a proposal waits for approval before it expires.
    pub proposal_ttl: HumanDuration,
    /// A live trial of an approved genome on a share of the route's requests before it is
    /// applied to all; `None` applies it directly.
    pub canary: Option<CanaryConfig>,
    /// How long an applied genome is watched, and what rolls it back.
    pub watch: WatchConfig,
}

/// `[guardian].canary`: the candidate serves `percent` of the route's requests, with engine
/// state of its own, for `duration` and at least `min_requests`.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct CanaryConfig {
    /// Share of the route's requests the candidate serves, percent.
    pub percent: f64,
    /// How long the trial runs at least.
    pub duration: HumanDuration,
    /// Requests the candidate must have served before it is judged.
    pub min_requests: u32,
}

/// `[guardian].watch`: after a genome goes live, for `duration`, a goodput drop beyond
/// `max_goodput_drop` or a p99 rise beyond `max_p99_increase` (relative) against the baseline
/// rolls it back. A `duration` of `0s` applies without watching.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct WatchConfig {
    /// How long the new genome is judged after it goes live.
    pub duration: HumanDuration,
    /// Largest goodput drop (absolute share) tolerated.
    pub max_goodput_drop: f64,
    /// Largest p99 rise tolerated, relative (0.25: a quarter slower).
    pub max_p99_increase: f64,
}

/// How proposals are approved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ApprovalMode {
    /// A human approves every proposal.
    #[default]
    Manual,
    /// Proposals inside the guardrails are applied without a human.
    Auto,
}

/// Fitness objectives.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct Objectives {
    /// Latency a request must beat to count as goodput.
    pub slo_latency: HumanDuration,
    /// Clients give up after this long: an answer later than this is no answer.
    pub client_timeout: HumanDuration,
    /// Weights of the fitness terms.
    pub weights: ObjectiveWeights,
}

/// Weights of the fitness terms.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct ObjectiveWeights {
    /// Requests answered well within the SLO.
    pub goodput: f64,
    /// Tail latency.
    pub latency: f64,
    /// Attempts per request.
    pub amplification: f64,
    /// Requests rejected by the policies.
    pub rejected: f64,
}

/// Bounds on one gene.
#[derive(Debug, Clone, PartialEq, Default, Deserialize, Serialize)]
#[serde(default)]
pub struct Guardrail {
    /// Lowest allowed value.
    pub min: Option<f64>,
    /// Highest allowed value.
    pub max: Option<f64>,
}

// === defaults ===

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 9901)),
            tokens_file: None,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: PathBuf::from("rafael.db"),
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            drain_timeout: HumanDuration::from_secs(15),
            worker_threads: None,
            watch_config: true,
        }
    }
}

impl ListenerConfig {
    fn default_header_read_timeout() -> HumanDuration {
        HumanDuration::from_secs(10)
    }

    fn default_max_header_bytes() -> ByteSize {
        ByteSize(64 * 1024)
    }

    fn default_idle_timeout() -> HumanDuration {
        HumanDuration::from_secs(60)
    }

    fn default_body_read_timeout() -> HumanDuration {
        HumanDuration::from_secs(30)
    }

    fn default_send_timeout() -> HumanDuration {
        HumanDuration::from_secs(60)
    }

    fn default_max_connections() -> u32 {
        10_000
    }

    fn default_max_concurrent_streams() -> u32 {
        128
    }

    /// Envoy's `tcp_backlog_size` default; std's and mio's 128 overflows in a burst of new
    /// connections, and every dropped SYN costs its client a one-second retransmit.
    fn default_backlog() -> u32 {
        1024
    }
}

impl RouteConfig {
    fn default_upgrades() -> Vec<String> {
        vec!["websocket".to_owned()]
    }

    fn default_evolve() -> bool {
        true
    }
}

impl UpstreamConfig {
    fn default_connect_timeout() -> HumanDuration {
        HumanDuration::from_secs(1)
    }

    fn default_pool_idle_timeout() -> HumanDuration {
        HumanDuration::from_secs(90)
    }

    fn default_pool_max_idle() -> u32 {
        256
    }
}

impl Default for ChaosConfig {
    fn default() -> Self {
        Self {
            header_secret: None,
            max_active_faults: 100,
        }
    }
}

impl FaultConfig {
    fn default_percent() -> f64 {
        100.0
    }
}

impl Default for EvolutionConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            interval: HumanDuration::from_secs(600),
            min_requests: 2000,
            max_model_error: 0.15,
            population: 16,
            parents: 4,
            generations: 12,
            seeds: 5,
            scenarios: [
                "observed",
                "latency:high",
                "upstream-failure:high",
                "surge:medium",
                "brownout:medium",
                "memory-pressure:medium",
            ]
            .map(str::to_owned)
            .to_vec(),
            aggregate: AggregateMode::Mean,
            margin: 0.02,
            duration: HumanDuration::from_secs(60),
            approval: None,
            objectives: Objectives::default(),
            guardrails: BTreeMap::new(),
        }
    }
}

impl Default for GuardianConfig {
    fn default() -> Self {
        Self {
            approval: None,
            approvals_required: 1,
            guardrails: BTreeMap::new(),
            max_step: 0.5,
            frozen: Vec::new(),
            proposal_ttl: HumanDuration::from_secs(24 * 3600),
            canary: None,
            watch: WatchConfig::default(),
        }
    }
}

impl Default for CanaryConfig {
    fn default() -> Self {
        Self {
            percent: 10.0,
            duration: HumanDuration::from_secs(120),
            min_requests: 500,
        }
    }
}

impl Default for WatchConfig {
    fn default() -> Self {
        Self {
            duration: HumanDuration::from_secs(300),
            max_goodput_drop: 0.02,
            max_p99_increase: 0.25,
        }
    }
}

impl Default for Objectives {
    fn default() -> Self {
        Self {
            slo_latency: HumanDuration::from_millis(300),
            client_timeout: HumanDuration::from_secs(5),
            weights: ObjectiveWeights::default(),
        }
    }
}

impl Default for ObjectiveWeights {
    fn default() -> Self {
        Self {
            goodput: 1.0,
            latency: 0.3,
            amplification: 0.2,
            rejected: 0.5,
        }
    }
}

// === impl HostMatch ===

impl HostMatch {
    /// True when `host` (already lowercase, without port) matches.
    pub fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(exact) => exact == host,
            Self::Suffix(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
        }
    }
}

impl TryFrom<String> for HostMatch {
    type Error = String;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        let lower = value.to_ascii_lowercase();
        let valid = |h: &str| {
            !h.is_empty()
                && h.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        };
        if let Some(suffix) = lower.strip_prefix("*.") {
            if valid(suffix) {
                return Ok(Self::Suffix(suffix.to_owned()));
            }
        } else if valid(&lower) {
            return Ok(Self::Exact(lower));
        }
        Err(format!(
            "invalid host {value:?}; expected a host name such as \"api.example.com\" or \"*.example.com\""
        ))
    }
}

impl From<HostMatch> for String {
    fn from(value: HostMatch) -> Self {
        match value {
            HostMatch::Exact(host) => host,
            HostMatch::Suffix(suffix) => format!("*.{suffix}"),
        }
    }
}
