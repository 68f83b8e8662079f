//! `rafael evolve ROUTE [--wait]`: one evolution round now.

use std::{
    io::Write,
    process::ExitCode,
    time::{Duration, Instant},
};

use serde_json::Value;

use super::call_json;

/// How long `--wait` waits for a round: far above the 30 s a default round takes here.
const WAIT_LIMIT: Duration = Duration::from_secs(600);

/// Starts a round on `route`; with `wait`, waits for it and prints its result. Exit 1 when the
/// round was skipped (saying why) or failed.
pub fn evolve(
    route: &str,
    wait: bool,
    seed: Option<u64>,
    admin: &str,
    token: Option<&str>,
) -> ExitCode {
    let admin = admin.trim_end_matches('/');
    let url = format!("{admin}/v1/evolution/{route}/run");
    let body = seed.map(|seed| serde_json::json!({ "seed": seed }).to_string());
    let mut round = match call_json("POST", &url, token, body) {
        Ok(round) => round,
        Err(code) => return code,
    };
    let id = round["id"].as_i64().unwrap_or_default();
    if wait {
        let url = format!("{admin}/v1/evolution/rounds/{id}");
        let deadline = Instant::now() + WAIT_LIMIT;
        while round["state"] == "running" {
            if Instant::now() > deadline {
                eprintln!("error: round {id} still running after {WAIT_LIMIT:?}");
                return ExitCode::from(1);
            }
            // A person waits at a terminal; polling twice a second costs the API nothing.
            std::thread::sleep(Duration::from_millis(500));
            round = match call_json("GET", &url, token, None) {
                Ok(round) => round,
                Err(code) => return code,
            };
        }
    }
    print_round(&round, admin)
}

fn print_round(round: &Value, admin: &str) -> ExitCode {
    let id = round["id"].as_i64().unwrap_or_default();
    let route = round["route"].as_str().unwrap_or_default();
    let reason = round["reason"].as_str().unwrap_or_default();
    let mut out = std::io::stdout();
    match round["state"].as_str().unwrap_or_default() {
        "running" => {
            let _ = writeln!(
                out,
                "round {id} on {route} is running; see it with `rafael evolve {route} --wait` \
                 or GET {admin}/v1/evolution/rounds/{id}"
            );
            ExitCode::SUCCESS
        }
        "skipped" => {
            eprintln!("round {id} on {route} skipped: {reason}");
            ExitCode::from(1)
        }
        "failed" => {
            eprintln!("round {id} on {route} failed: {reason}");
            ExitCode::from(1)
        }
        _ => {
            let fitness = |key: &str| {
                round[key]
                    .as_f64()
                    .map_or("-".to_owned(), |f| format!("{f:.4}"))
            };
            let _ = writeln!(
                out,
                "round {id} on {route}: {} ({} generations, {} genomes); fitness {} -> {}",
                round["result"].as_str().unwrap_or("completed"),
                round["generations"],
                round["evaluations"],
                fitness("incumbent_fitness"),
                fitness("best_fitness"),
            );
            let _ = writeln!(out, "  {reason}");
            if let Some(proposal) = round["proposal_id"].as_i64() {
                let _ = writeln!(
                    out,
                    "  proposal {proposal} is pending: rafael proposals show {proposal} --admin {admin}"
                );
            }
            ExitCode::SUCCESS
        }
    }
}
