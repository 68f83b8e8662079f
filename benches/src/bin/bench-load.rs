//! An open-loop load at a constant rate, for latency under a load a sidecar really sees (wrk's
//! closed loop saturates the proxy, where the tail is the queue's and not the proxy's).
//!
//! `bench-load URL RATE SECONDS [CONNECTIONS]` sends RATE requests a second over keep-alive
//! HTTP/1.1 connections for SECONDS and prints one line:
//! `requests=N errors=E p50_us=.. p90_us=.. p99_us=.. p999_us=.. max_us=..`.
//!
//! A request's latency runs from the moment it was due, not from when a connection took it, so
//! a proxy that falls behind is charged for the wait (coordinated omission). "Due" is when the
//! pacer woke to issue it: the client's own timer lateness is the same whatever the proxy does,
//! and is left out rather than added to every figure.
//!
//! A connection the server closes (nginx does after 1,000 requests by default) is replaced by a
//! new one, the reconnection counted in the latency of the request that waited for it.

use std::{
    sync::{Arc, Mutex as StdMutex},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, Uri};
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::{
    net::TcpStream,
    sync::{Mutex, mpsc},
};

#[allow(clippy::print_stdout, clippy::print_stderr, clippy::expect_used)] // a command-line tool
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: bench-load URL RATE SECONDS [CONNECTIONS]";
    let (Some(url), Some(rate), Some(seconds)) = (args.get(1), args.get(2), args.get(3)) else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let parsed = (
        url.parse::<Uri>(),
        rate.parse::<u32>(),
        seconds.parse::<f64>(),
        args.get(4).map_or(Ok(32), |c| c.parse::<usize>()),
    );
    let (Ok(uri), Ok(rate), Ok(seconds), Ok(connections)) = parsed else {
        eprintln!("{usage}");
        std::process::exit(2);
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(
        uri,
        rate,
        Duration::from_secs_f64(seconds),
        connections,
    )) {
        Ok(line) => println!("{line}"),
        Err(error) => {
            eprintln!("bench-load: {error}");
            std::process::exit(1);
        }
    }
}

async fn run(uri: Uri, rate: u32, length: Duration, connections: usize) -> Result<String, String> {
    let authority = uri.authority().ok_or("the URL has no host")?.to_string();
    let (due_tx, due_rx) = mpsc::channel::<Instant>(1 << 16);
    let due_rx = Arc::new(Mutex::new(due_rx));
    let latencies = Arc::new(StdMutex::new(Vec::<u32>::new()));
    let errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..connections {
        let sender = connect(&authority).await?;
        let (due_rx, latencies, errors, uri, authority) = (
            due_rx.clone(),
            latencies.clone(),
            errors.clone(),
            uri.clone(),
            authority.clone(),
        );
        workers.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            let mut sender = Some(sender);
            loop {
                let Some(due) = due_rx.lock().await.recv().await else {
                    break;
                };
                // A server that closes a keep-alive connection (nginx after `keepalive_requests`,
                // 1,000 by default) gets a new one, as any client would open; the time it takes
                // counts in this request's latency.
                let mut answered = false;
                for _ in 0..2 {
                    let ready = match sender.as_mut() {
                        Some(s) => s.ready().await.is_ok(),
                        None => false,
                    };
                    if !ready {
                        sender = connect(&authority).await.ok();
                    }
                    let Some(s) = sender.as_mut() else {
                        break;
                    };
                    let request = Request::get(uri.clone())
                        .header(
                            http::header::HOST,
                            uri.authority().map_or("", |a| a.as_str()),
                        )
                        .body(Empty::<Bytes>::new())
                        .expect("a valid request");
                    match s.send_request(request).await {
                        Ok(response) => {
                            let closing = response
                                .headers()
                                .get(http::header::CONNECTION)
                                .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
                            let ok = response.status().is_success();
                            answered = ok && response.into_body().collect().await.is_ok();
                            if closing {
                                sender = None;
                            }
                            break;
                        }
                        // Never sent (the connection was closing): once more on a new one.
                        Err(e) if e.is_canceled() => sender = None,
                        Err(_) => {
                            sender = None;
                            break;
                        }
                    }
                }
                if answered {
                    let micros = due.elapsed().as_micros();
                    mine.push(u32::try_from(micros).unwrap_or(u32::MAX));
                } else {
                    errors.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
            latencies.lock().expect("not poisoned").extend(mine);
        }));
    }

    // The pacer: every millisecond, issue the requests that have fallen due since the last tick.
    let start = Instant::now();
    let mut issued = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    while start.elapsed() < length {
        tick.tick().await;
        let now = Instant::now();
        let owed = (now.duration_since(start).as_secs_f64() * f64::from(rate)) as u64;
        while issued < owed {
            if due_tx.try_send(now).is_err() {
                return Err("the proxy fell more than 65,536 requests behind".to_owned());
            }
            issued += 1;
        }
    }
    drop(due_tx);
    for worker in workers {
        worker.await.map_err(|e| e.to_string())?;
    }

    let mut all = std::mem::take(&mut *latencies.lock().expect("not poisoned"));
    all.sort_unstable();
    let at = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    Ok(format!(
        "requests={} errors={} p50_us={} p90_us={} p99_us={} p999_us={} max_us={}",
        all.len(),
        errors.load(std::sync::atomic::Ordering::Relaxed),
        at(0.5),
        at(0.9),
        at(0.99),
        at(0.999),
        all.last().copied().unwrap_or(0)
    ))
}

/// A new keep-alive HTTP/1.1 connection to `authority`.
async fn connect(authority: &str) -> Result<http1::SendRequest<Empty<Bytes>>, String> {
    let stream = TcpStream::connect(authority)
        .await
        .map_err(|e| format!("connect {authority}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(connection);
    Ok(sender)
}
