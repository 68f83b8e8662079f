//! The CLI's command groups that talk to a running rafael's admin API, one file per group
//! (DESIGN §1). `main.rs` parses the command line and calls them.

pub mod evolve;
pub mod simulate;

use std::process::ExitCode;

/// One admin API call on a runtime of its own: `(status, body)`, or why there was no answer.
pub fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<String>,
) -> Result<(u16, String), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    runtime
        .block_on(crate::client::call(method, url, token, body))
        .map_err(|e| format!("{url}: {e}"))
}

/// An admin API call whose 2xx answer is JSON: the value, or (having said why on stderr) the
/// exit code to end with — 2 for what the API calls a bad request, 1 for everything else.
pub fn call_json(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<String>,
) -> Result<serde_json::Value, ExitCode> {
    match call(method, url, token, body) {
        Ok((status, text)) if (200..300).contains(&status) => {
            serde_json::from_str(&text).map_err(|e| {
                eprintln!("error: {url} answered {status} with something that is not JSON: {e}");
                ExitCode::from(1)
            })
        }
        Ok((status, text)) => {
            eprintln!("error: {}", error_text(&text));
            Err(exit_for(status))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(1))
        }
    }
}

/// The exit code for an API error: 2 for a request the API calls bad (400), 1 otherwise.
pub fn exit_for(status: u16) -> ExitCode {
    if status == 400 {
        ExitCode::from(2)
    } else {
        ExitCode::from(1)
    }
}

/// The `error` and `detail` of an API error body, in one line.
pub fn error_text(body: &str) -> String {
    match serde_json::from_str::<serde_json::Value>(body) {
        Ok(value) => match (&value["error"], &value["detail"]) {
            (serde_json::Value::String(error), serde_json::Value::String(detail)) => {
                format!("{error}: {detail}")
            }
            (serde_json::Value::String(error), serde_json::Value::Null) => error.clone(),
            (serde_json::Value::String(error), detail) => format!("{error}: {detail}"),
            _ => body.to_owned(),
        },
        Err(_) => body.to_owned(),
    }
}
