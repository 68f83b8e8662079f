//! The learning half of the control plane (DESIGN §7.1-7.4): fit a model of each route's
//! upstream from its telemetry, simulate genomes against it under chaos, score them and evolve
//! better ones.
//!
//! - [`model`]: what the upstream is like (service time and its growth with load, capacity,
//!   failures and their bursts, bad regimes, arrivals, abandoned work), fitted from telemetry;
//! - [`scenario`]: the conditions a genome is simulated under;
//! - [`sim`]: the discrete-event simulator running the real engines against the model.

pub mod fitness;
pub mod genes;
pub mod model;
pub mod round;
pub mod scenario;
pub mod search;
pub mod sim;
pub mod simulate;
#[cfg(test)]
pub(crate) mod testing;

/// Registers HELP text for the control plane's evolution metrics.
pub fn describe_metrics() {
    metrics::describe_gauge!(
        model::check::MODEL_ERROR,
        "Relative error of the model check (goodput, p50, p99, amplification), by route."
    );
    metrics::describe_counter!(
        round::service::ROUNDS_TOTAL,
        "Evolution rounds ended, by route and result (proposed, no_improvement, skipped, failed)."
    );
    metrics::describe_gauge!(
        round::service::ROUND_SECONDS,
        "How long the route's last evolution round took, seconds."
    );
    metrics::describe_gauge!(
        round::service::BEST_FITNESS,
        "Fitness of the best genome the route's last round found."
    );
}

/// Runs `work` on a thread of its own at the lowest OS priority and waits for its answer:
/// simulation may take every idle cycle, never one a request is waiting for. `None` when the
/// thread could not start or panicked.
pub async fn low_priority<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> Option<T> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name(name.to_owned())
        .spawn(move || {
            lower_priority();
            let _ = tx.send(work());
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start a simulation thread");
        return None;
    }
    rx.await.ok()
}

/// Moves the calling thread out of the data plane's way: on Linux the `SCHED_IDLE` policy, which
/// a waking request thread preempts at once; elsewhere (or where it is refused) the lowest
/// niceness. Niceness only shares the CPU out by weight: a waking request thread may still
/// wait for a nice-19 thread's time slice to end, where `SCHED_IDLE` gives way at once.
pub fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        use thread_priority::{
            NormalThreadSchedulePolicy, ThreadPriority, ThreadSchedulePolicy,
            set_thread_priority_and_policy, thread_native_id,
        };
        let idle = set_thread_priority_and_policy(
            thread_native_id(),
            ThreadPriority::Min,
            ThreadSchedulePolicy::Normal(NormalThreadSchedulePolicy::Idle),
        );
        match idle {
            Ok(()) => return,
            Err(error) => tracing::debug!(?error, "SCHED_IDLE refused; lowering niceness instead"),
        }
    }
    if let Err(error) =
        thread_priority::set_current_thread_priority(thread_priority::ThreadPriority::Min)
    {
        tracing::warn!(?error, "cannot lower a simulation thread's priority");
    }
}
