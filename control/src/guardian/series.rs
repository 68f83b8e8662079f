//! Series that exist before their first event. A counter that appears only when it first counts
//! starts at 1, and `increase()` over a window that holds its first sample sees nothing: the
//! first rollback of a route would never fire an alert on `increase(...) > 0`. So the control
//! plane's per-route counters are created at 0 for every route when rafael starts and when a
//! reload brings new routes, and `rafael_canary_active` and `rafael_config_reloads_total` at 0
//! when rafael starts (a reload must not reset the gauge of a canary that runs).

use metrics::{counter, gauge};
use rafael_config::Config;

use crate::{
    evolution::round::{RoundResult, service::ROUNDS_TOTAL},
    guardian::{metrics::ROLLBACKS_TOTAL, service::CANARY_ACTIVE},
};

/// The reasons `rafael_guardian_rollbacks_total` counts.
pub const ROLLBACK_REASONS: [&str; 3] = ["goodput", "p99", "manual"];

/// Creates every route's counters at 0 (a counter that exists is left as it is), and, at
/// start-up (`starting`), every route's canary gauge at 0.
pub fn initialize(config: &Config, starting: bool) {
    if starting {
        for result in ["success", "error"] {
            counter!(rafael_proxy::metrics::CONFIG_RELOADS_TOTAL, "result" => result).increment(0);
        }
    }
    for route in &config.routes {
        for reason in ROLLBACK_REASONS {
            counter!(ROLLBACKS_TOTAL, "route" => route.name.clone(), "reason" => reason)
                .increment(0);
        }
        for result in [
            RoundResult::Proposed,
            RoundResult::NoImprovement,
            RoundResult::Skipped,
            RoundResult::Failed,
        ] {
            counter!(ROUNDS_TOTAL, "route" => route.name.clone(), "result" => result.as_str())
                .increment(0);
        }
        if starting {
            gauge!(CANARY_ACTIVE, "route" => route.name.clone()).set(0.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use metrics_exporter_prometheus::PrometheusBuilder;

    use super::*;

    #[test]
    fn every_route_has_its_series_at_zero_and_a_reload_keeps_a_running_canary() {
        let config = crate::testing::one_route("api");
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            initialize(&config, true);
            counter!(ROLLBACKS_TOTAL, "route" => "api", "reason" => "p99").increment(1);
            gauge!(CANARY_ACTIVE, "route" => "api").set(1.0);
            initialize(&config, false);
        });
        let text = handle.render();
        for line in [
            r#"rafael_guardian_rollbacks_total{route="api",reason="goodput"} 0"#,
            r#"rafael_guardian_rollbacks_total{route="api",reason="p99"} 1"#,
            r#"rafael_evolution_rounds_total{route="api",result="no_improvement"} 0"#,
            r#"rafael_canary_active{route="api"} 1"#,
            r#"rafael_config_reloads_total{result="error"} 0"#,
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing:\n{text}");
        }
    }
}
