//! An open-loop client: requests at a fixed rate whatever the answers take, each one's status
//! and latency recorded, so a test measures what clients saw with its own clock.

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};

/// What one request got: its status (0 when the connection failed or the client gave up) and
/// its latency.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Answer {
    pub status: u16,
    pub latency: Duration,
}

/// GETs `path` on `proxy` at `rate` a second for `secs` seconds, giving up on a request after
/// `patience`; calls `at_second(s)` as second `s` of the run begins (a test schedules a bad
/// day there). Returns every answer, in the order sent.
pub async fn open_loop(
    proxy: SocketAddr,
    path: &str,
    rate: f64,
    secs: u64,
    patience: Duration,
    at_second: impl FnMut(u64),
) -> Vec<Answer> {
    open_loop_ids(proxy, path, rate, secs, patience, None, at_second).await
}

/// [`open_loop`], request `i` sent with `x-request-id: {ids}-{i}` when `ids` is given.
pub async fn open_loop_ids(
    proxy: SocketAddr,
    path: &str,
    rate: f64,
    secs: u64,
    patience: Duration,
    ids: Option<&str>,
    mut at_second: impl FnMut(u64),
) -> Vec<Answer> {
    let client = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build_http::<Empty<Bytes>>();
    let count = (rate * secs as f64) as u64;
    let start = tokio::time::Instant::now();
    let mut requests = Vec::with_capacity(count as usize);
    let mut second = None;
    for i in 0..count {
        let at = Duration::from_secs_f64(i as f64 / rate);
        if second != Some(at.as_secs()) {
            second = Some(at.as_secs());
            at_second(at.as_secs());
        }
        tokio::time::sleep_until(start + at).await;
        let client = client.clone();
        let uri: hyper::Uri = format!("http://{proxy}{path}").parse().unwrap();
        let mut request = hyper::Request::get(uri);
        if let Some(prefix) = ids {
            request = request.header("x-request-id", format!("{prefix}-{i}"));
        }
        let request = request.body(Empty::<Bytes>::new()).unwrap();
        requests.push(tokio::spawn(async move {
            let sent = Instant::now();
            let answered = tokio::time::timeout(patience, async {
                let response = client.request(request).await.ok()?;
                let status = response.status().as_u16();
                response.into_body().collect().await.ok()?;
                Some(status)
            })
            .await;
            Answer {
                status: answered.ok().flatten().unwrap_or(0),
                latency: sent.elapsed(),
            }
        }));
    }
    let mut answers = Vec::with_capacity(requests.len());
    for request in requests {
        answers.push(request.await.unwrap());
    }
    answers
}

/// Share of `answers` that were 2xx within `slo` (the goodput of DESIGN §7.3).
pub fn goodput(answers: &[Answer], slo: Duration) -> f64 {
    let good = answers
        .iter()
        .filter(|a| (200..300).contains(&a.status) && a.latency <= slo)
        .count();
    good as f64 / answers.len().max(1) as f64
}
