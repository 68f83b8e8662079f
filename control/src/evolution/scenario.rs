//! Scenarios: the conditions a genome is simulated under (DESIGN §7.2).
//!
//! - `observed`: the fitted model as it was, its bad regimes replayed where they happened;
//! - `nominal`: the model without its bad regimes;
//! - `THREAT:SEVERITY`: a threat of the Chaos Forge table applied to the nominal model, with
//!   the same fault rules a live experiment injects (`chaos::threat_rules`), so a simulated
//!   `latency:high` is the live one.

use std::{fmt, str::FromStr};

use rafael_proxy::policy::fault::FaultRule;

use crate::chaos::{Severity, Threat, surge_rate, threat_rules};

/// A scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scenario {
    /// The model as observed, regimes included.
    Observed,
    /// The model without its bad regimes.
    Nominal,
    /// A Chaos Forge threat on the nominal model.
    Threat(Threat, Severity),
}

/// A scenario name that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScenarioError {
    /// Not `observed`, `nominal` or a known threat.
    #[error(
        "unknown scenario {0:?}: expected observed, nominal or THREAT:SEVERITY with THREAT one of latency, upstream-failure, surge, brownout, memory-pressure"
    )]
    Unknown(String),
    /// A known threat with an unknown severity.
    #[error(
        "unknown severity {severity:?} in scenario {scenario:?}: expected low, medium, high or critical"
    )]
    Severity {
        /// The scenario as written.
        scenario: String,
        /// The severity as written.
        severity: String,
    },
}

// === impl Scenario ===

impl Scenario {
    /// Whether the model's bad regimes are replayed.
    pub fn replays_regimes(self) -> bool {
        self == Self::Observed
    }

    /// The fault rules the scenario injects into every attempt.
    pub fn faults(self) -> Vec<FaultRule> {
        match self {
            // Surge is traffic, not a fault rule; the table covers every other pair.
            Self::Threat(threat, severity) => threat_rules(threat, severity).unwrap_or_default(),
            Self::Observed | Self::Nominal => Vec::new(),
        }
    }

    /// Extra requests per second on top of the route's own arrivals.
    pub fn extra_rate(self) -> f64 {
        match self {
            Self::Threat(Threat::Surge, severity) => f64::from(surge_rate(severity)),
            _ => 0.0,
        }
    }
}

impl FromStr for Scenario {
    type Err = ScenarioError;

    fn from_str(text: &str) -> Result<Self, ScenarioError> {
        match text {
            "observed" => return Ok(Self::Observed),
            "nominal" => return Ok(Self::Nominal),
            _ => {}
        }
        let unknown = || ScenarioError::Unknown(text.to_owned());
        let (threat, severity) = text.split_once(':').ok_or_else(unknown)?;
        let threat = match threat {
            "latency" => Threat::Latency,
            "upstream-failure" => Threat::UpstreamFailure,
            "surge" => Threat::Surge,
            "brownout" => Threat::Brownout,
            "memory-pressure" => Threat::MemoryPressure,
            _ => return Err(unknown()),
        };
        let severity = match severity {
            "low" => Severity::Low,
            "medium" => Severity::Medium,
            "high" => Severity::High,
            "critical" => Severity::Critical,
            _ => {
                return Err(ScenarioError::Severity {
                    scenario: text.to_owned(),
                    severity: severity.to_owned(),
                });
            }
        };
        Ok(Self::Threat(threat, severity))
    }
}

impl fmt::Display for Scenario {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Observed => f.write_str("observed"),
            Self::Nominal => f.write_str("nominal"),
            Self::Threat(threat, severity) => {
                let threat = match threat {
                    Threat::Latency => "latency",
                    Threat::UpstreamFailure => "upstream-failure",
                    Threat::Surge => "surge",
                    Threat::Brownout => "brownout",
                    Threat::MemoryPressure => "memory-pressure",
                };
                let severity = match severity {
                    Severity::Low => "low",
                    Severity::Medium => "medium",
                    Severity::High => "high",
                    Severity::Critical => "critical",
                };
                write!(f, "{threat}:{severity}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_ones_are_named() {
        for name in [
            "observed",
            "nominal",
            "latency:high",
            "surge:medium",
            "memory-pressure:critical",
        ] {
            let scenario: Scenario = name.parse().expect("a known scenario");
            assert_eq!(scenario.to_string(), name);
        }
        assert_eq!(
            "latency:extreme".parse::<Scenario>(),
            Err(ScenarioError::Severity {
                scenario: "latency:extreme".into(),
                severity: "extreme".into()
            })
        );
        let error = "earthquake:high".parse::<Scenario>().unwrap_err();
        assert!(error.to_string().contains("\"earthquake:high\""), "{error}");
        assert_eq!(
            Scenario::Threat(Threat::Surge, Severity::High).extra_rate(),
            500.0
        );
        assert!(
            Scenario::Threat(Threat::Surge, Severity::High)
                .faults()
                .is_empty()
        );
        assert_eq!(
            Scenario::Threat(Threat::Latency, Severity::Low)
                .faults()
                .len(),
            1
        );
    }
}
