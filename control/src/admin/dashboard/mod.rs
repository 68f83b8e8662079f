//! The dashboard (DESIGN §9): one page and its two assets, embedded in the binary, served on
//! the admin listener without a token (the page holds no data; every figure it shows comes from
//! the `/v1` API, with the token the operator gives it). No build step: plain HTML, CSS and a
//! JavaScript module, written for current browsers.

use axum::{
    http::{StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{ApiPath, error};

const INDEX: &str = include_str!("index.html");
const SCRIPT: &str = include_str!("app.js");
const STYLE: &str = include_str!("app.css");

/// The page's security headers: nothing but its own assets and the API, never framed.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

/// `GET /`.
pub(super) async fn index() -> Response {
    page("text/html; charset=utf-8", INDEX)
}

/// `GET /assets/{file}`.
pub(super) async fn asset(ApiPath(file): ApiPath<String>) -> Response {
    match file.as_str() {
        "app.js" => page("text/javascript; charset=utf-8", SCRIPT),
        "app.css" => page("text/css; charset=utf-8", STYLE),
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            &format!("no asset {file:?}"),
        ),
    }
}
