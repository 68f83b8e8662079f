//! Config reloads: on SIGHUP, and when the config file changes on disk.
//!
//! An invalid new file is rejected with every error logged and counted in
//! `rafael_config_reloads_total{result="error"}`; the running snapshot stays in place.

use std::{path::PathBuf, time::Duration};

use metrics::{counter, describe_counter};
use notify::{RecursiveMode, Watcher};
use rafael_proxy::{SnapshotHandle, metrics::CONFIG_RELOADS_TOTAL};
use serde_json::json;
use tokio::{sync::mpsc, task::JoinHandle};
use tracing::{error, info, warn};

use crate::{
    audit::AuditLog,
    config_file::{self, ConfigFileError},
};

/// Reloads one config file into one snapshot handle.
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    snapshot: SnapshotHandle,
    last_text: Option<String>,
    audit: Option<AuditLog>,
    guardian: Option<crate::guardian::Guardian>,
}

/// Why a reload did not apply.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file could not be read, or is not a regular file of bounded size.
    #[error("{0}")]
    Read(ConfigFileError),
    /// The file is invalid; the running config stays.
    #[error("{0}")]
    Invalid(rafael_config::ConfigErrors),
}

/// Registers HELP text for the reload counter.
pub fn describe_metrics() {
    describe_counter!(
        CONFIG_RELOADS_TOTAL,
        "Config reloads, by result (success or error)."
    );
}

// === impl Reloader ===

impl Reloader {
    /// A reloader of `path` into `snapshot`.
    pub fn new(path: PathBuf, snapshot: SnapshotHandle) -> Self {
        let last_text = config_file::read(&path).ok();
        Self {
            path,
            snapshot,
            last_text,
            audit: None,
            guardian: None,
        }
    }

    /// Reloads through `guardian`, which keeps the genomes it applied on routes whose policy
    /// the file did not change (and records the ones it did in their lineage).
    pub fn with_guardian(mut self, guardian: crate::guardian::Guardian) -> Self {
        self.guardian = Some(guardian);
        self
    }

    /// Records every reload, applied or rejected, in `audit`.
    pub fn with_audit(mut self, audit: AuditLog) -> Self {
        self.audit = Some(audit);
        self
    }

    /// Reads, validates and applies the file now. Returns the new snapshot version, or `None`
    /// when the file is byte-for-byte what is already running.
    pub fn reload(&mut self) -> Result<Option<u64>, ReloadError> {
        let text = config_file::read(&self.path).map_err(ReloadError::Read)?;
        if self.last_text.as_deref() == Some(text.as_str()) {
            return Ok(None);
        }
        let mut config = rafael_config::parse(&text).map_err(ReloadError::Invalid)?;
        crate::vault::resolve(&mut config).map_err(ReloadError::Invalid)?;
        for warning in config.deprecations() {
            tracing::warn!(%warning, "config key deprecated");
        }
        let version = match &self.guardian {
            Some(guardian) => guardian.reload(config),
            None => self.snapshot.reload(config),
        }
        .map_err(ReloadError::Invalid)?;
        self.last_text = Some(text);
        Ok(Some(version))
    }

    /// Reloads on SIGHUP (always) and on file changes (when `watch`), until aborted.
    pub fn spawn(self, watch: bool) -> JoinHandle<()> {
        // Installed before returning, not inside the task: until it is, SIGHUP's default action
        // (terminate) applies, and a SIGHUP sent right after start-up would kill rafael.
        let mut hangup = hangup_signal();
        let (changed_tx, mut changed) = mpsc::channel::<()>(1);
        // Likewise the watcher, so a change made right after start-up is not missed.
        let watcher = if watch { self.watch(changed_tx) } else { None };
        tokio::spawn(async move {
            // Keep the watcher alive as long as the task.
            let _watcher = watcher;
            let mut reloader = self;
            loop {
                let hup = async {
                    match hangup.as_mut() {
                        Some(signal) => signal.recv().await,
                        None => std::future::pending().await,
                    }
                };
                let forced = tokio::select! {
                    _ = hup => { info!("SIGHUP received"); true }
                    Some(()) = changed.recv() => {
                        // Editors write in several steps; let them finish.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        while changed.try_recv().is_ok() {}
                        false
                    }
                };
                if forced {
                    // SIGHUP reloads even an unchanged file (TLS material may have rotated).
                    reloader.last_text = None;
                }
                let trigger = if forced { "signal" } else { "file" };
                // Off the runtime's threads: parsing, building the snapshot (tens of
                // milliseconds at 1,000 routes) and the audit write would hold up every
                // connection the thread serves, and on one CPU rafael runs the current-thread
                // scheduler, where `block_in_place` is not available.
                reloader = match tokio::task::spawn_blocking(move || {
                    reloader.apply(trigger);
                    reloader
                })
                .await
                {
                    Ok(reloader) => reloader,
                    Err(e) => {
                        error!("config reload failed: {e}; reloads stop until restart");
                        return;
                    }
                };
            }
        })
    }

    fn apply(&mut self, trigger: &str) {
        match self.reload() {
            Ok(Some(version)) => {
                counter!(CONFIG_RELOADS_TOTAL, "result" => "success").increment(1);
                crate::guardian::series::initialize(self.snapshot.load().config(), false);
                info!(version, path = %self.path.display(), "config reloaded");
                self.record(
                    "config.reloaded",
                    json!({ "version": version, "trigger": trigger }),
                );
            }
            Ok(None) => {}
            Err(ReloadError::Invalid(errors)) => {
                counter!(CONFIG_RELOADS_TOTAL, "result" => "error").increment(1);
                for e in errors.iter() {
                    error!(path = %self.path.display(), "config reload rejected: {e}");
                }
                warn!("keeping the running config");
                let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
                self.record(
                    "config.rejected",
                    json!({ "errors": errors, "trigger": trigger }),
                );
            }
            Err(e) => {
                counter!(CONFIG_RELOADS_TOTAL, "result" => "error").increment(1);
                error!("config reload failed: {e}; keeping the running config");
                self.record(
                    "config.rejected",
                    json!({ "errors": [e.to_string()], "trigger": trigger }),
                );
            }
        }
    }

    /// Appends to the audit log. A store failure is logged, not fatal: the reload happened.
    fn record(&self, action: &str, details: serde_json::Value) {
        if let Some(audit) = &self.audit {
            let target = self.path.display().to_string();
            if let Err(e) = audit.append("rafael", action, &target, details) {
                error!("cannot write the audit log: {e}");
            }
        }
    }

    fn watch(&self, changed: mpsc::Sender<()>) -> Option<notify::RecommendedWatcher> {
        // Watch the directory: editors and Kubernetes ConfigMaps replace the file rather than
        // write into it, which a watch on the file itself would miss.
        let file = self.path.file_name()?.to_owned();
        let dir = match self.path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let handler = move |event: notify::Result<notify::Event>| {
            if let Ok(event) = event {
                let ours = event
                    .paths
                    .iter()
                    .any(|p| p.file_name() == Some(file.as_os_str()) || p.ends_with("..data"));
                if ours && !event.kind.is_access() {
                    let _ = changed.try_send(());
                }
            }
        };
        match notify::recommended_watcher(handler) {
            Ok(mut watcher) => match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                Ok(()) => Some(watcher),
                Err(e) => {
                    warn!(dir = %dir.display(), "cannot watch the config directory ({e}); SIGHUP still reloads");
                    None
                }
            },
            Err(e) => {
                warn!("cannot watch the config file ({e}); SIGHUP still reloads");
                None
            }
        }
    }
}

#[cfg(unix)]
fn hangup_signal() -> Option<tokio::signal::unix::Signal> {
    use tokio::signal::unix::{SignalKind, signal};
    signal(SignalKind::hangup())
        .map_err(|e| warn!("cannot install the SIGHUP handler ({e}); file changes still reload"))
        .ok()
}

#[cfg(not(unix))]
fn hangup_signal() -> Option<std::future::Pending<Option<()>>> {
    None
}
