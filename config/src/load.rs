//! Parsing a config file into a [`Config`], collecting every error rather than stopping at the
//! first.
//!
//! serde stops at the first error it meets, so the file is first read as a TOML table and then
//! each section (and each element of each array section) is decoded on its own. Unknown keys
//! are found by `serde_ignored` rather than `deny_unknown_fields`, so all of them are reported,
//! while a wrong value type stops its own element only. Semantic validation runs once every element decoded.

use std::fmt::Display;

use serde::{Deserialize, Deserializer, de::DeserializeOwned};

use crate::{
    Config, ConfigErrors, FaultConfig,
    error::{UNKNOWN_KEY, UNKNOWN_SECTION},
    validate,
};

/// Parses and validates a config file's text.
///
/// On failure the error lists every problem found, each with its key path.
pub fn parse(text: &str) -> Result<Config, ConfigErrors> {
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
        let mut errors = ConfigErrors::default();
        let location = e
            .span()
            .map(|span| {
                let line = text[..span.start.min(text.len())].lines().count().max(1);
                format!("line {line}")
            })
            .unwrap_or_default();
        errors.push(location, format!("TOML syntax error: {}", e.message()));
        errors
    })?;

    let mut errors = ConfigErrors::default();
    let mut config = Config::default();
    for (key, value) in table {
        match key.as_str() {
            "admin" => decode_into(&mut config.admin, value, &key, &mut errors),
            "store" => decode_into(&mut config.store, value, &key, &mut errors),
            "runtime" => decode_into(&mut config.runtime, value, &key, &mut errors),
            "chaos" => decode_into(&mut config.chaos, value, &key, &mut errors),
            "evolution" => decode_into(&mut config.evolution, value, &key, &mut errors),
            "guardian" => decode_into(&mut config.guardian, value, &key, &mut errors),
            "listeners" => config.listeners = decode_array(value, &key, &mut errors),
            "upstreams" => config.upstreams = decode_array(value, &key, &mut errors),
            "routes" => config.routes = decode_array(value, &key, &mut errors),
            "faults" => config.faults = decode_array(value, &key, &mut errors),
            _ => errors.push(
                key,
                format!(
                    "{UNKNOWN_SECTION}; expected one of admin, store, runtime, listeners, \
                     upstreams, routes, chaos, faults, evolution, guardian"
                ),
            ),
        }
    }
    // Unknown keys do not stop the checks: every section still decoded, so its values are the
    // file's and their errors are real. A value of the wrong type does: its section (or array
    // item) fell back to defaults, and checking those would report errors the file does not
    // have, at key paths that no longer match it.
    let decoded_everything = errors.iter().all(|e| e.is_unknown_key());
    if decoded_everything {
        validate::config(&config, &mut errors);
    } else {
        errors.push(
            "",
            "the other checks (bounds, references between sections) run once the values above decode",
        );
    }
    errors.into_result(config)
}

/// Decodes and checks one fault rule given outside the file (an experiment's, from the admin
/// API's JSON) exactly as a `[[faults]]` rule of the file is: unknown keys are errors, and
/// every bound applies. Errors are located under `path` (`faults[0]`); `config` is the live
/// config, whose `[chaos]` settings the rule must agree with. Whether `route` names a route is
/// the caller's to check.
pub fn parse_fault_rule<'de, D>(
    rule: D,
    path: &str,
    config: &Config,
) -> Result<FaultConfig, ConfigErrors>
where
    D: Deserializer<'de>,
    D::Error: Display,
{
    let mut errors = ConfigErrors::default();
    let decoded: Option<FaultConfig> = decode_with(rule, path, &mut errors, |e| e.to_string());
    match decoded {
        Some(fault) => {
            validate::fault_rule_checks(&fault, path, config, &mut errors);
            errors.into_result(fault)
        }
        None => Err(errors),
    }
}

fn decode_into<T: DeserializeOwned>(
    slot: &mut T,
    value: toml::Value,
    path: &str,
    errors: &mut ConfigErrors,
) {
    if let Some(decoded) = decode(value, path, errors) {
        *slot = decoded;
    }
}

fn decode_array<T: DeserializeOwned>(
    value: toml::Value,
    path: &str,
    errors: &mut ConfigErrors,
) -> Vec<T> {
    let toml::Value::Array(items) = value else {
        errors.push(
            path,
            format!(
                "expected an array of tables ([[{path}]]), got a {}",
                value.type_str()
            ),
        );
        return Vec::new();
    };
    items
        .into_iter()
        .enumerate()
        .filter_map(|(i, item)| decode(item, &format!("{path}[{i}]"), errors))
        .collect()
}

/// Decodes one TOML value, reporting every unknown key and the first type error under `path`.
fn decode<T: DeserializeOwned>(
    value: toml::Value,
    path: &str,
    errors: &mut ConfigErrors,
) -> Option<T> {
    decode_with(value, path, errors, |e: toml::de::Error| {
        e.message().to_owned()
    })
}

/// [`decode`] from any self-describing format; `message` phrases its errors.
fn decode_with<'de, T: Deserialize<'de>, D: Deserializer<'de>>(
    value: D,
    path: &str,
    errors: &mut ConfigErrors,
    message: impl FnOnce(D::Error) -> String,
) -> Option<T> {
    let mut unknown = Vec::new();
    let mut record = |ignored: serde_ignored::Path<'_>| {
        unknown.push(join(path, &ignored_path(&ignored)));
    };
    let deserializer = serde_ignored::Deserializer::new(value, &mut record);
    let result: Result<T, _> = serde_path_to_error::deserialize(deserializer);
    for key in unknown.drain(..) {
        errors.push(key, UNKNOWN_KEY);
    }
    match result {
        Ok(decoded) => Some(decoded),
        Err(error) => {
            let inner = error.path().to_string();
            let inner = if inner == "." { String::new() } else { inner };
            errors.push(join(path, &inner), message(error.into_inner()));
            None
        }
    }
}

fn join(base: &str, rest: &str) -> String {
    match (base.is_empty(), rest.is_empty()) {
        (_, true) => base.to_owned(),
        (true, false) => rest.to_owned(),
        (false, false) if rest.starts_with('[') => format!("{base}{rest}"),
        (false, false) => format!("{base}.{rest}"),
    }
}

fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        Path::Map { parent, key } => join(&ignored_path(parent), key),
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}
