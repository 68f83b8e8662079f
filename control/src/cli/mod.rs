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
