//! `rafael vault search [QUERY] [--category C] [--tag T] [--stack S]` and `rafael vault show
//! NAME`: the pattern vault, through a running rafael's admin API.

use std::{io::Write, process::ExitCode};

use serde_json::Value;

use super::call_json;

/// Lists the patterns a search matches: name, category, stacks, and the first sentence of
/// when to use each.
pub fn search(
    query: &[String],
    category: Option<&str>,
    tag: Option<&str>,
    stack: Option<&str>,
    as_json: bool,
    admin: &str,
    token: Option<&str>,
) -> ExitCode {
    let admin = admin.trim_end_matches('/');
    let mut params = form_urlencoded::Serializer::new(String::new());
    let words = query.join(" ");
    for (key, value) in [
        ("q", (!words.is_empty()).then_some(words.as_str())),
        ("category", category),
        ("tag", tag),
        ("stack", stack),
    ] {
        if let Some(value) = value {
            params.append_pair(key, value);
        }
    }
    let url = format!("{admin}/v1/vault/patterns?{}", params.finish());
    let answer = match call_json("GET", &url, token, None) {
        Ok(answer) => answer,
        Err(code) => return code,
    };
    let mut out = std::io::stdout();
    if as_json {
        let _ = writeln!(out, "{answer:#}");
        return ExitCode::SUCCESS;
    }
    let patterns = answer["patterns"].as_array().cloned().unwrap_or_default();
    if patterns.is_empty() {
        let _ = writeln!(out, "no pattern matches");
        return ExitCode::SUCCESS;
    }
    let _ = writeln!(
        out,
        "{:<22} {:<16} {:<28} WHEN",
        "NAME", "CATEGORY", "STACKS"
    );
    for pattern in &patterns {
        let stacks: Vec<&str> = pattern["stacks"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        let description = pattern["description"].as_str().unwrap_or_default();
        let first = description.split(". ").next().unwrap_or(description);
        let _ = writeln!(
            out,
            "{:<22} {:<16} {:<28} {first}",
            pattern["name"].as_str().unwrap_or_default(),
            pattern["category"].as_str().unwrap_or_default(),
            stacks.join(","),
        );
    }
    ExitCode::SUCCESS
}

/// Prints one pattern: its description and its genome as `[routes.policy]` TOML.
pub fn show(name: &str, as_json: bool, admin: &str, token: Option<&str>) -> ExitCode {
    let admin = admin.trim_end_matches('/');
    let segment = percent_encoding::utf8_percent_encode(name, percent_encoding::NON_ALPHANUMERIC);
    let url = format!("{admin}/v1/vault/patterns/{segment}");
    let pattern = match call_json("GET", &url, token, None) {
        Ok(pattern) => pattern,
        Err(code) => return code,
    };
    let mut out = std::io::stdout();
    if as_json {
        let _ = writeln!(out, "{pattern:#}");
        return ExitCode::SUCCESS;
    }
    let genome: Option<rafael_config::Genome> =
        serde_json::from_value(pattern["genome"].clone()).ok();
    // The genome's sections as the route's sub-tables, so the lines paste into a config.
    let toml: String = genome
        .and_then(|g| toml::to_string(&g).ok())
        .unwrap_or_default()
        .lines()
        .map(|line| match line.strip_prefix('[') {
            Some(rest) if !rest.starts_with('[') => format!("[routes.policy.{rest}\n"),
            _ => format!("{line}\n"),
        })
        .collect();
    let _ = writeln!(
        out,
        "{} ({}; {})\n\n{}\n\n# pattern = \"{}\" on a route starts it from:\n[routes.policy]\n{toml}",
        pattern["name"].as_str().unwrap_or_default(),
        pattern["category"].as_str().unwrap_or_default(),
        pattern["source"].as_str().unwrap_or_default(),
        pattern["description"].as_str().unwrap_or_default(),
        pattern["name"].as_str().unwrap_or_default(),
    );
    ExitCode::SUCCESS
}
