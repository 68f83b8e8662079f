//! The running sidecar: data plane, admin listener, reloader, and an orderly shutdown.

use std::{
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, OnceLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use rafael_config::Config;
use rafael_proxy::{Server, SnapshotHandle, bind_listeners, server::DrainOutcome};
use tokio::{net::TcpListener, task::JoinHandle};
use tracing::{error, info, warn};

use crate::{
    admin,
    audit::AuditLog,
    auth::Auth,
    chaos::Chaos,
    evolution::round::Evolution,
    guardian::Guardian,
    reload::Reloader,
    store::{Store, StoreError},
};

/// How to start an [`App`].
#[derive(Debug, Clone, Default)]
pub struct AppOptions {
    /// The file the config came from; enables SIGHUP and file-change reloads.
    pub config_path: Option<PathBuf>,
}

/// A running rafael.
#[derive(Debug)]
pub struct App {
    snapshot: SnapshotHandle,
    server: Server,
    admin_address: SocketAddr,
    admin_task: JoinHandle<()>,
    reloader: Option<JoinHandle<()>>,
    ready: Arc<AtomicBool>,
    drain_timeout: Duration,
    audit: AuditLog,
    evolution_timer: Option<JoinHandle<()>>,
    expiry_sweeper: JoinHandle<()>,
    /// Verifies the audit chain every [`crate::audit::VERIFY_EVERY`].
    audit_verifier: JoinHandle<()>,
}

// === impl App ===

impl App {
    /// Builds the snapshot, binds every listener and the admin listener, and starts serving.
    /// Errors here are start-up failures (a port in use, unreadable TLS files).
    pub async fn start(config: Config, options: AppOptions) -> anyhow::Result<Self> {
        let metrics = metrics_handle();
        let drain_timeout = config.runtime.drain_timeout.get();
        let watch = config.runtime.watch_config;
        let admin_bind = config.admin.bind;
        // SQLite is synchronous, and the integrity check reads every page.
        let store = {
            let config = config.clone();
            let path = options.config_path.clone();
            tokio::task::spawn_blocking(move || {
                let store = open_store(&config, path.as_deref())?;
                if let Err(e) = store.health() {
                    error!("{e}; /readyz answers 503 until the store is repaired or replaced");
                }
                Ok::<_, StoreError>(store)
            })
            .await
            .context("opening the store")??
        };
        let store = Arc::new(store);
        let audit = AuditLog::new(store.clone());
        let tokens_file = config
            .admin
            .tokens_file
            .as_ref()
            .map(|file| relative_to_config(options.config_path.as_deref(), file));
        let auth = Arc::new(Auth::load(tokens_file.as_deref())?);

        let snapshot = SnapshotHandle::new(config)
            .map_err(|errors| anyhow::anyhow!("invalid configuration:\n{errors}"))?;
        let guardian = Guardian::new(snapshot.clone(), store.clone(), audit.clone());
        // The reloader installs its SIGHUP handler now, before any socket is bound: from the
        // moment rafael can be seen running, a SIGHUP reloads it rather than killing it.
        let reloader = options.config_path.map(|path| {
            Reloader::new(path, snapshot.clone())
                .with_audit(audit.clone())
                .with_guardian(guardian.clone())
                .spawn(watch)
        });
        let bound = async {
            let listeners = bind_listeners(snapshot.load().config()).await?;
            let admin_socket = TcpListener::bind(admin_bind)
                .await
                .with_context(|| format!("admin.bind: cannot bind {admin_bind}"))?;
            anyhow::Ok((listeners, admin_socket))
        }
        .await;
        let (listeners, admin_socket) = match bound {
            Ok(bound) => bound,
            Err(error) => {
                if let Some(reloader) = &reloader {
                    reloader.abort();
                }
                return Err(error);
            }
        };
        let admin_address = admin_socket.local_addr()?;

        {
            let (store, audit, guardian) = (store.clone(), audit.clone(), guardian.clone());
            tokio::task::spawn_blocking(move || {
                recover_evolution(&store, &audit)?;
                // Before traffic: the lineage's genomes go live before the first request.
                guardian.restore()
            })
            .await
            .context("recovering evolution's state")??;
        }
        let ready = Arc::new(AtomicBool::new(false));
        let chaos = Chaos::new(snapshot.clone(), store.clone(), audit.clone())?;
        chaos.set_listeners(listeners.iter().filter_map(|bound| {
            let address = bound.socket.local_addr().ok()?;
            Some((bound.name.to_string(), address))
        }));
        let evolution = Evolution::new(snapshot.clone(), store.clone(), audit.clone())
            .with_guardian(guardian.clone());
        // Rounds on a timer when the file asks for them at start-up (a reload does not start
        // or stop the timer; rounds on demand work either way).
        let evolution_timer = {
            let loaded = snapshot.load();
            let settings = &loaded.config().evolution;
            settings
                .enabled
                .then(|| evolution.spawn_timer(settings.interval.get()))
        };
        crate::guardian::series::initialize(snapshot.load().config(), true);
        let (expiry_sweeper, _) =
            crate::guardian::expiry::spawn_sweeper(store.clone(), audit.clone(), snapshot.clone());
        let audit_verifier =
            crate::audit::spawn_verifier(audit.clone(), crate::audit::VERIFY_EVERY);
        let state = admin::AdminState {
            metrics,
            ready: ready.clone(),
            snapshot: snapshot.clone(),
            auth,
            audit: audit.clone(),
            chaos,
            store,
            evolution,
            guardian,
        };
        let admin_task = tokio::spawn(async move {
            if let Err(error) = axum::serve(admin_socket, admin::router(state)).await {
                warn!(%error, "admin listener stopped");
            }
        });
        info!(address = %admin_address, "admin listening");

        // Ready before the server announces its listeners: the sockets are bound already (a
        // connection made now waits in the backlog), and whoever reads "listening" in the logs
        // must find /readyz agreeing.
        ready.store(true, Ordering::Release);
        let server = Server::start(snapshot.clone(), listeners).inspect_err(|_| {
            ready.store(false, Ordering::Release);
        })?;
        Ok(Self {
            snapshot,
            server,
            admin_address,
            admin_task,
            reloader,
            ready,
            drain_timeout,
            audit,
            evolution_timer,
            expiry_sweeper,
            audit_verifier,
        })
    }

    /// Address of the traffic listener named `name`.
    pub fn listener_address(&self, name: &str) -> Option<SocketAddr> {
        self.server.address(name)
    }

    /// Addresses of every traffic listener.
    pub fn listener_addresses(&self) -> &[(Arc<str>, SocketAddr)] {
        self.server.addresses()
    }

    /// Address of the admin listener.
    pub fn admin_address(&self) -> SocketAddr {
        self.admin_address
    }

    /// The audit log in the store.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The live snapshot handle.
    pub fn snapshot(&self) -> &SnapshotHandle {
        &self.snapshot
    }

    /// Stops accepting, drains in-flight requests up to `[runtime].drain_timeout`, and stops the
    /// admin listener last so probes see the drain.
    pub async fn shutdown(self) -> DrainOutcome {
        self.ready.store(false, Ordering::Release);
        if let Some(reloader) = &self.reloader {
            reloader.abort();
        }
        if let Some(timer) = &self.evolution_timer {
            timer.abort();
        }
        self.expiry_sweeper.abort();
        self.audit_verifier.abort();
        info!(deadline = ?self.drain_timeout, "draining");
        let outcome = self.server.drain(self.drain_timeout).await;
        match outcome {
            DrainOutcome::Complete => info!("drained"),
            DrainOutcome::DeadlineReached => {
                warn!("drain deadline reached with requests still in flight")
            }
        }
        self.admin_task.abort();
        outcome
    }
}

/// SIGTERM and SIGINT, caught from the moment this is built: build it before binding anything,
/// so a signal sent as soon as rafael is up drains it instead of killing it outright.
#[derive(Debug)]
pub struct ShutdownSignal {
    #[cfg(unix)]
    signals: Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>,
}

impl ShutdownSignal {
    /// Installs the handlers (within a runtime).
    pub fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let signals = match (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                (Ok(term), Ok(int)) => Some((term, int)),
                _ => {
                    warn!("cannot install signal handlers; waiting for Ctrl-C only");
                    None
                }
            };
            Self { signals }
        }
        #[cfg(not(unix))]
        {
            Self {}
        }
    }

    /// Resolves when SIGTERM or SIGINT arrives.
    pub async fn recv(self) {
        #[cfg(unix)]
        if let Some((mut term, mut int)) = self.signals {
            tokio::select! {
                _ = term.recv() => info!("SIGTERM received"),
                _ = int.recv() => info!("SIGINT received"),
            }
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Ends the rounds a previous process left running (they ran in its memory, and died with
/// it), each with an `evolution.round` audit entry, and seeds the pending-proposals gauge
/// from the store.
fn recover_evolution(store: &Store, audit: &AuditLog) -> Result<(), StoreError> {
    let now = crate::store::now();
    for round in store.fail_interrupted_rounds(&now)? {
        audit.append(
            "rafael",
            crate::audit::action::EVOLUTION_ROUND,
            &round.route,
            serde_json::json!({
                "round": round.id,
                "state": round.state.as_str(),
                "reason": round.reason,
            }),
        )?;
        warn!(
            id = round.id,
            route = round.route,
            "evolution round interrupted by a restart"
        );
    }
    crate::guardian::metrics::set_pending(
        store.proposal_count(crate::guardian::proposal::ProposalState::Pending)?,
    );
    Ok(())
}

/// The process-wide Prometheus recorder, installed on first use.
fn metrics_handle() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            // Latency histograms are rafael's own (proxy/src/histogram.rs); the exporter
            // renders counters and gauges only, so it needs no buckets and no upkeep thread.
            match PrometheusBuilder::new().install_recorder() {
                Ok(handle) => {
                    rafael_proxy::metrics::describe();
                    crate::reload::describe_metrics();
                    crate::evolution::describe_metrics();
                    crate::audit::describe_metrics();
                    crate::guardian::metrics::describe();
                    Some(handle)
                }
                Err(error) => {
                    warn!(%error, "cannot install the metrics recorder; /metrics will be empty");
                    None
                }
            }
        })
        .clone()
}

/// Opens the store at `[store].path`, relative to the config file's directory (so a sidecar's
/// state sits beside its config whatever its working directory). Without a config file (the
/// demo) the store lives in memory.
pub fn open_store(
    config: &Config,
    config_path: Option<&std::path::Path>,
) -> Result<Store, StoreError> {
    match config_path {
        None => Store::in_memory(),
        Some(file) => Store::open(&store_path(config, file)),
    }
}

/// Where `[store].path` points, for a config read from `file`.
pub fn store_path(config: &Config, file: &std::path::Path) -> PathBuf {
    relative_to_config(Some(file), &config.store.path)
}

/// `path` as the config read from `config_file` means it: a relative path is taken from the
/// config file's directory (from the working directory without a file).
pub fn relative_to_config(
    config_file: Option<&std::path::Path>,
    path: &std::path::Path,
) -> PathBuf {
    let dir = config_file
        .and_then(std::path::Path::parent)
        .unwrap_or_else(|| std::path::Path::new("."));
    dir.join(path)
}
