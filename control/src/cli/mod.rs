//! The CLI's command groups that talk to a running rafael's admin API, one file per group
//! (DESIGN §1). `main.rs` parses the command line and calls them.

pub mod evolve;
pub mod genomes;
pub mod health;
pub mod simulate;
pub mod vault;

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

/// An admin API call: the body of a 2xx answer, or, with the error printed (the URL, the
/// status and the API's `detail`), the exit code to end with — 2 for a 400, a request the API
/// calls bad usage; 1 for everything else.
pub fn call_body(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<String>,
) -> Result<String, ExitCode> {
    match call(method, url, token, body) {
        Ok((status, body)) if (200..300).contains(&status) => Ok(body),
        Ok((status, body)) => {
            let detail = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["detail"].as_str().map(str::to_owned))
                .unwrap_or(body);
            eprintln!("error: {url} answered {status}: {detail}");
            Err(ExitCode::from(if status == 400 { 2 } else { 1 }))
        }
        Err(e) => {
            eprintln!("error: {e}");
            Err(ExitCode::from(1))
        }
    }
}

/// [`call_body`] for an answer that is JSON.
pub fn call_json(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<String>,
) -> Result<serde_json::Value, ExitCode> {
    let body = call_body(method, url, token, body)?;
    serde_json::from_str(&body).map_err(|e| {
        eprintln!("error: {url} answered something that is not JSON: {e}");
        ExitCode::from(1)
    })
}
