//! `rafael genomes ROUTE` (the lineage) and `rafael genomes rollback ROUTE --to GENERATION`.

use std::{io::Write, process::ExitCode};

use serde_json::{Value, json};

use super::call_json;

/// Prints `route`'s lineage, newest first, the live generation marked.
pub fn list(route: &str, as_json: bool, admin: &str, token: Option<&str>) -> ExitCode {
    let admin = admin.trim_end_matches('/');
    let url = format!("{admin}/v1/routes/{route}/genomes");
    let answer = match call_json("GET", &url, token, None) {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    let mut out = std::io::stdout();
    if as_json {
        let _ = writeln!(out, "{answer:#}");
        return ExitCode::SUCCESS;
    }
    let live = answer["generation"].as_u64();
    let _ = writeln!(
        out,
        "{:<4} {:<10} {:<9} {:<21} {:<14} {:<9} NOTE",
        "", "GENERATION", "SOURCE", "APPLIED", "BY", "PROPOSAL"
    );
    for record in answer["genomes"].as_array().into_iter().flatten() {
        let generation = record["generation"].as_u64().unwrap_or_default();
        let note = match (record["restores"].as_u64(), record["reason"].as_str()) {
            (Some(to), Some(reason)) => format!("restores {to}: {reason}"),
            (Some(to), None) => format!("restores {to}"),
            (None, Some(reason)) => reason.to_owned(),
            (None, None) => String::new(),
        };
        let _ = writeln!(
            out,
            "{:<4} {:<10} {:<9} {:<21} {:<14} {:<9} {note}",
            if live == Some(generation) { "live" } else { "" },
            generation,
            text(&record["source"]),
            text(&record["applied_at"]),
            text(&record["actor"]),
            record["proposal_id"]
                .as_i64()
                .map_or_else(String::new, |id| id.to_string()),
        );
    }
    ExitCode::SUCCESS
}

/// Makes generation `to`'s genome live again on `route` (as a new generation).
pub fn rollback(
    route: &str,
    to: u64,
    comment: Option<&str>,
    as_json: bool,
    admin: &str,
    token: Option<&str>,
) -> ExitCode {
    let admin = admin.trim_end_matches('/');
    let url = format!("{admin}/v1/routes/{route}/rollback");
    let body = json!({ "to": to, "comment": comment }).to_string();
    let record = match call_json("POST", &url, token, Some(body)) {
        Ok(record) => record,
        Err(code) => return code,
    };
    let mut out = std::io::stdout();
    if as_json {
        let _ = writeln!(out, "{record:#}");
    } else {
        let _ = writeln!(
            out,
            "route {route} runs generation {} now, the genome of generation {to}; \
             see the lineage with `rafael genomes {route} --admin {admin}`",
            record["generation"]
        );
    }
    ExitCode::SUCCESS
}

fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("-")
}
