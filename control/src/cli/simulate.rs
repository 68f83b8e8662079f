//! `rafael chaos simulate ROUTE --threat T --severity S [--genome FILE] [--seeds N]`: the
//! predicted effect of a threat on the route's live genome (and on a candidate), on its
//! fitted model, beside the same genomes without the threat.

use std::{io::Write, path::Path, process::ExitCode};

use rafael_config::{ConfigErrors, Genome};
use serde_json::{Value, json};

use super::call_json;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimulateArgs<'a> {
    /// The route.
    pub route: &'a str,
    /// The threat.
    pub threat: &'a str,
    /// Its severity.
    pub severity: &'a str,
    /// A candidate genome, in the TOML of a `[routes.policy]` table.
    pub genome: Option<&'a Path>,
    /// Seeds per scenario.
    pub seeds: Option<u32>,
    /// Virtual time per run (e.g. `60s`).
    pub duration: Option<&'a str>,
    /// Print the raw answer.
    pub json: bool,
}

/// Runs the simulation through the admin API and prints a table.
pub fn simulate(args: &SimulateArgs<'_>, admin: &str, token: Option<&str>) -> ExitCode {
    let mut request = json!({
        "route": args.route,
        "scenarios": ["nominal", format!("{}:{}", args.threat, args.severity)],
    });
    if let Some(seeds) = args.seeds {
        request["seeds"] = seeds.into();
    }
    if let Some(duration) = args.duration {
        request["duration"] = duration.into();
    }
    if let Some(path) = args.genome {
        match read_genome(path) {
            Ok(genome) => request["genomes"] = json!({ "candidate": genome }),
            Err(message) => {
                eprintln!("error: {message}");
                return ExitCode::from(2);
            }
        }
    }
    let url = format!("{}/v1/simulate", admin.trim_end_matches('/'));
    let answer = match call_json("POST", &url, token, Some(request.to_string())) {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    let mut out = std::io::stdout();
    if args.json {
        let _ = writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&answer).unwrap_or_default()
        );
        return ExitCode::SUCCESS;
    }
    let _ = writeln!(
        out,
        "{:<11} {:<26} {:>8} {:>9} {:>9} {:>7} {:>8}",
        "genome", "scenario", "goodput", "p50 ms", "p99 ms", "amplif", "rejected"
    );
    for row in answer["results"].as_array().into_iter().flatten() {
        let mean = |key: &str| row[key]["mean"].as_f64().unwrap_or_default();
        let scenario = row["scenario"].as_str().unwrap_or_default();
        let marker = if row["extrapolated"] == true {
            " (extrapolated)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{:<11} {:<26} {:>8.3} {:>9.1} {:>9.1} {:>7.2} {:>8.3}",
            row["genome"].as_str().unwrap_or_default(),
            format!("{scenario}{marker}"),
            mean("goodput"),
            mean("p50_ms"),
            mean("p99_ms"),
            mean("amplification"),
            mean("rejected"),
        );
    }
    if let Some(fidelity) = answer["model"]["fidelity"].as_object() {
        let trusted = fidelity.get("trusted") == Some(&Value::Bool(true));
        let _ = writeln!(
            out,
            "model fitted at {}: {}",
            answer["model"]["fitted_at"].as_str().unwrap_or_default(),
            if trusted {
                "trusted"
            } else {
                "NOT trusted (see `rafael model ROUTE`)"
            }
        );
    }
    ExitCode::SUCCESS
}

/// A genome file (a `[routes.policy]` table as TOML), validated with key paths under `genome`.
pub fn read_genome(path: &Path) -> Result<Genome, String> {
    let text = crate::config_file::read(path).map_err(|e| e.to_string())?;
    let genome: Genome = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut errors = ConfigErrors::default();
    genome.validate("genome", &mut errors);
    if errors.is_empty() {
        Ok(genome)
    } else {
        Err(format!("{}: {errors}", path.display()))
    }
}
