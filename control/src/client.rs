//! The admin API client the CLI's remote subcommands use (`rafael chaos ...`).

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

/// Why a call did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The request could not be built (a bad URL, say).
    #[error("{0}")]
    Request(String),
    /// No answer: rafael is not running there, or the connection failed.
    #[error("no answer: {0}")]
    Transport(String),
}

/// Sends one request to the admin API and returns the status and the body text.
pub async fn call(
    method: &str,
    url: &str,
    token: Option<&str>,
    json: Option<String>,
) -> Result<(u16, String), ClientError> {
    let method =
        Method::from_bytes(method.as_bytes()).map_err(|e| ClientError::Request(e.to_string()))?;
    let mut request = Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    if json.is_some() {
        request = request.header(header::CONTENT_TYPE, "application/json");
    }
    let request = request
        .body(Full::new(Bytes::from(json.unwrap_or_default())))
        .map_err(|e| ClientError::Request(e.to_string()))?;
    let client = Client::builder(TokioExecutor::new()).build_http();
    let response = client
        .request(request)
        .await
        .map_err(|e| ClientError::Transport(e.to_string()))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Transport(e.to_string()))?
        .to_bytes();
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}
