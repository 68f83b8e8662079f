//! `rafael vault search [QUERY] [--category C] [--tag T] [--stack S]`, `rafael vault show
//! NAME` and `rafael vault save NAME ...`: the pattern vault, through a running rafael's admin
//! API.

use std::{io::Write, path::PathBuf, process::ExitCode};

use serde_json::{Value, json};

use super::{call_json, simulate::read_genome};

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
    let name = pattern["name"].as_str().unwrap_or_default();
    let source = pattern["source"].as_str().unwrap_or_default();
    // `pattern = "NAME"` resolves built-in patterns only: a config file must not depend on
    // what one rafael's store happens to hold.
    let how = if source == "builtin" {
        format!("# pattern = \"{name}\" on a route starts it from:")
    } else {
        "# a stored pattern: paste these lines into a route to start it from them".to_owned()
    };
    let _ = writeln!(
        out,
        "{name} ({}; {source})\n\n{}\n\n{how}\n[routes.policy]\n{toml}",
        pattern["category"].as_str().unwrap_or_default(),
        pattern["description"].as_str().unwrap_or_default(),
    );
    ExitCode::SUCCESS
}

/// A pattern to save, as `rafael vault save` was given it.
#[derive(Debug)]
pub struct NewPattern {
    /// Its name.
    pub name: String,
    /// When to use it.
    pub description: String,
    /// A genome file.
    pub genome: Option<PathBuf>,
    /// Or a route and generation of its lineage.
    pub from: Option<(String, u64)>,
    /// Its category, when given.
    pub category: Option<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Stacks.
    pub stacks: Vec<String>,
}

/// Saves a pattern (`POST /v1/vault/patterns`) and prints its name, or the API's findings.
pub fn save(pattern: &NewPattern, as_json: bool, admin: &str, token: Option<&str>) -> ExitCode {
    let admin = admin.trim_end_matches('/');
    let mut body = json!({
        "name": pattern.name,
        "description": pattern.description,
        "category": pattern.category,
        "tags": pattern.tags,
        "stacks": pattern.stacks,
    });
    match (&pattern.genome, &pattern.from) {
        (Some(path), _) => match read_genome(path) {
            Ok(genome) => body["genome"] = json!(genome),
            Err(error) => {
                eprintln!("error: {error}");
                return ExitCode::from(2);
            }
        },
        (None, Some((route, generation))) => {
            body["from"] = json!({ "route": route, "generation": generation });
        }
        (None, None) => {
            eprintln!("error: give --genome FILE, or --route ROUTE --generation GEN");
            return ExitCode::from(2);
        }
    }
    let url = format!("{admin}/v1/vault/patterns");
    let saved = match call_json("POST", &url, token, Some(body.to_string())) {
        Ok(saved) => saved,
        Err(code) => return code,
    };
    let mut out = std::io::stdout();
    if as_json {
        let _ = writeln!(out, "{saved:#}");
    } else {
        let _ = writeln!(
            out,
            "saved pattern {} ({}); `rafael vault show {}` prints it",
            saved["name"].as_str().unwrap_or_default(),
            saved["category"].as_str().unwrap_or_default(),
            saved["name"].as_str().unwrap_or_default(),
        );
    }
    ExitCode::SUCCESS
}
