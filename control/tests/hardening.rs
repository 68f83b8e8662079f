//! Issue 8's attacks on the data plane, each against the real binary: a client that breaks its
//! own body, h2c smuggling, HTTP/2 clients that never read, host confusion, the chaos secret,
//! silent connections, the connection cap, clients that stop reading, and transfer codings.
//! Every test failed on the code before its fix.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use support::*;

/// A raw-socket upstream that records every request it receives (head, body and trailers, as
/// sent on the wire) and answers:
/// - a request with an `Upgrade` field: 101, then echoes bytes (a splice would show);
/// - `/big`: `big` bytes of body, written as fast as the proxy takes them;
/// - anything else: 200 `ok`, once the whole request body has arrived.
struct Recorder {
    addr: SocketAddr,
    requests: Arc<Mutex<Vec<String>>>,
    /// Connections open now.
    open: Arc<AtomicUsize>,
    /// Connections accepted so far.
    accepted: Arc<AtomicUsize>,
    /// Body bytes written by `/big` answers.
    written: Arc<AtomicU64>,
}

impl Recorder {
    fn start(big: u64) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let recorder = Self {
            addr: listener.local_addr().unwrap(),
            requests: Arc::default(),
            open: Arc::default(),
            accepted: Arc::default(),
            written: Arc::default(),
        };
        let (requests, open, accepted, written) = (
            recorder.requests.clone(),
            recorder.open.clone(),
            recorder.accepted.clone(),
            recorder.written.clone(),
        );
        thread::spawn(move || {
            for stream in listener.incoming().map_while(Result::ok) {
                accepted.fetch_add(1, Ordering::SeqCst);
                open.fetch_add(1, Ordering::SeqCst);
                let (requests, open, written) = (requests.clone(), open.clone(), written.clone());
                thread::spawn(move || {
                    serve_recorded(stream, &requests, &written, big);
                    open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
        recorder
    }

    /// Every request received so far, lower-cased.
    fn seen(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// The recorded request whose request line contains `marker`.
    fn request_with(&self, marker: &str) -> Option<String> {
        self.seen()
            .into_iter()
            .find(|r| r.lines().next().is_some_and(|l| l.contains(marker)))
    }
}

/// Serves one upstream connection until it closes; returns when the proxy closes it.
fn serve_recorded(stream: TcpStream, requests: &Mutex<Vec<String>>, written: &AtomicU64, big: u64) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut raw = String::new();
        let mut length = 0usize;
        let mut chunked = false;
        let mut upgrade = false;
        loop {
            let mut line = String::new();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
            let lower = line.to_ascii_lowercase();
            if let Some(value) = lower.strip_prefix("content-length:") {
                length = value.trim().parse().unwrap_or(0);
            }
            chunked |= lower.starts_with("transfer-encoding:") && lower.contains("chunked");
            upgrade |= lower.starts_with("upgrade:");
            raw.push_str(&lower);
            if line == "\r\n" {
                break;
            }
        }
        if chunked {
            // Chunks, then trailers up to the blank line; recorded as they came.
            loop {
                let mut size = String::new();
                if reader.read_line(&mut size).unwrap_or(0) == 0 {
                    return;
                }
                raw.push_str(&size);
                let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
                if n == 0 {
                    loop {
                        let mut trailer = String::new();
                        if reader.read_line(&mut trailer).unwrap_or(0) == 0 {
                            return;
                        }
                        raw.push_str(&trailer.to_ascii_lowercase());
                        if trailer == "\r\n" {
                            break;
                        }
                    }
                    break;
                }
                let mut data = vec![0; n + 2];
                if reader.read_exact(&mut data).is_err() {
                    return;
                }
                raw.push_str(&String::from_utf8_lossy(&data));
            }
        } else if length > 0 {
            let mut data = vec![0; length];
            // A client that breaks its body leaves this read waiting until the proxy closes.
            if reader.read_exact(&mut data).is_err() {
                return;
            }
            raw.push_str(&String::from_utf8_lossy(&data));
        }
        let target = raw.split(' ').nth(1).unwrap_or("/").to_owned();
        requests.lock().unwrap().push(raw);
        if upgrade {
            let _ = writer.write_all(
                b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\nUpgrade: h2c\r\n\r\n",
            );
            let _ = std::io::copy(&mut reader, &mut writer);
            return;
        }
        if target.starts_with("/big") {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {big}\r\n\r\n");
            if writer.write_all(head.as_bytes()).is_err() {
                return;
            }
            let chunk = vec![b'x'; 64 * 1024];
            let mut left = big;
            while left > 0 {
                let n = left.min(chunk.len() as u64) as usize;
                if writer.write_all(&chunk[..n]).is_err() {
                    return;
                }
                written.fetch_add(n as u64, Ordering::SeqCst);
                left -= n as u64;
            }
            continue;
        }
        if writer
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
            .is_err()
        {
            return;
        }
    }
}

/// A config with one listener (`listener_extra` added to it) and the routes in `routes`.
fn config(dir: &std::path::Path, listener_extra: &str, rest: &str) -> PathBuf {
    let path = dir.join("rafael.toml");
    let text = format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[store]
path = "{store}"

[[listeners]]
name = "in"
bind = "127.0.0.1:0"
{listener_extra}

{rest}
"#,
        store = dir.join("rafael.db").display()
    );
    std::fs::write(&path, text).unwrap();
    path
}

/// One upstream `app` at `addr` and one catch-all route `main` with `policy` (TOML lines).
fn main_route(addr: SocketAddr, route_extra: &str) -> String {
    format!(
        r#"
[[upstreams]]
name = "app"
endpoints = ["{addr}"]

[[routes]]
name = "main"
listener = "in"
upstream = "app"
{route_extra}
"#
    )
}

/// Writes `request` on a fresh connection, half-closes when `close` says so, and reads the
/// answer until the connection closes or `limit` passes: (status, whole answer). Status 0
/// means the connection closed without an answer.
fn send_raw(addr: SocketAddr, request: &[u8], close: bool, limit: Duration) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(limit)).unwrap();
    stream.write_all(request).unwrap();
    if close {
        stream.shutdown(Shutdown::Write).unwrap();
    }
    let mut answer = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                answer.extend_from_slice(&buf[..n]);
                // One response is enough; keep-alive connections are not waited out.
                if let Some(text) = complete_response(&answer) {
                    return (status_of(&text), text);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no answer within {limit:?}: {e}"),
        }
    }
    let text = String::from_utf8_lossy(&answer).into_owned();
    (status_of(&text), text)
}

/// The first response in `bytes` if it is complete (a head and a `Content-Length` body).
fn complete_response(bytes: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(bytes).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let length = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_owned())
        })
        .and_then(|v| v.parse::<usize>().ok())?;
    (body.len() >= length).then_some(text)
}

fn status_of(text: &str) -> u16 {
    text.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

fn get(addr: SocketAddr, path: &str) -> u16 {
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    send_raw(addr, request.as_bytes(), false, Duration::from_secs(10)).0
}

#[test]
fn a_body_the_client_breaks_is_its_own_failure_and_gives_every_slot_back() {
    let upstream = Recorder::start(0);
    let dir = tempfile::tempdir().unwrap();
    // No route timeout: nothing but the fix ends these requests.
    let path = config(
        dir.path(),
        "",
        &main_route(
            upstream.addr,
            r#"
[routes.policy]
concurrency = { max_in_flight = 5 }
circuit_breaker = { consecutive_failures = 3, min_requests = 1000, open_for = "60s" }
"#,
        ),
    );
    let rafael = Rafael::start(&path);

    // Five clients promise 1,000 bytes, send 10 and go away.
    for _ in 0..5 {
        let (status, answer) = send_raw(
            rafael.proxy,
            b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n0123456789",
            true,
            Duration::from_secs(10),
        );
        assert!(status == 400 || status == 0, "{answer}");
    }
    // Three send a chunk size that is not hex.
    for _ in 0..3 {
        let (status, answer) = send_raw(
            rafael.proxy,
            b"POST /upload HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\n",
            false,
            Duration::from_secs(10),
        );
        assert_eq!(status, 400, "{answer}");
        assert!(answer.contains("malformed_body"), "{answer}");
    }
    // The attempts were cancelled: their upstream connections are closed, not left waiting.
    assert!(
        eventually(Duration::from_secs(5), || upstream
            .open
            .load(Ordering::SeqCst)
            == 0),
        "{} upstream connections still open",
        upstream.open.load(Ordering::SeqCst)
    );
    // Every concurrency slot came back and the breaker never opened: the route still serves.
    for _ in 0..6 {
        assert_eq!(get(rafael.proxy, "/after"), 200);
    }
    let metrics = rafael.metrics();
    for outcome in ["timeout", "reset"] {
        let series =
            format!(r#"rafael_upstream_attempts_total{{route="main",outcome="{outcome}"}}"#);
        let charged = metric_value(&metrics, &series).unwrap_or(0.0);
        assert_eq!(charged, 0.0, "{series} in {metrics}");
    }
    assert_eq!(
        metric_value(&metrics, r#"rafael_in_flight{route="main"}"#),
        Some(0.0)
    );
    assert!(
        !metrics.contains(&format!(
            "rafael_circuit_breaker_state{{route=\"main\",endpoint=\"{}\"}} 2",
            upstream.addr
        )),
        "{metrics}"
    );
}

#[test]
fn a_body_that_stops_arriving_is_answered_408_at_the_body_read_timeout() {
    let upstream = Recorder::start(0);
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        r#"body_read_timeout = "1s""#,
        &main_route(upstream.addr, ""),
    );
    let rafael = Rafael::start(&path);
    let started = Instant::now();
    let (status, answer) = send_raw(
        rafael.proxy,
        b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1000\r\n\r\n0123456789",
        false,
        Duration::from_secs(10),
    );
    assert_eq!(status, 408, "{answer}");
    assert!(answer.contains("body_timeout"), "{answer}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(
        eventually(Duration::from_secs(5), || upstream
            .open
            .load(Ordering::SeqCst)
            == 0),
        "the upstream connection is closed with the request"
    );
}

#[test]
fn h2c_upgrades_are_never_spliced_and_others_only_where_the_route_allows() {
    let upstream = Recorder::start(0);
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        r#"
{}
[[routes]]
name = "no-upgrades"
listener = "in"
upstream = "app"
match = {{ path_prefix = "/closed" }}
upgrades = []
"#,
        main_route(upstream.addr, "match = { path_prefix = \"/public\" }")
    );
    let path = config(dir.path(), "", &routes);
    let rafael = Rafael::start(&path);

    let (status, answer) = send_raw(
        rafael.proxy,
        b"GET /public/h2c HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAAQCAAAAAAIAAAAA\r\n\r\n",
        false,
        Duration::from_secs(10),
    );
    assert_eq!(status, 200, "h2c must not be switched to: {answer}");
    let seen = upstream.request_with("/public/h2c").unwrap();
    assert!(!seen.contains("upgrade"), "{seen}");
    assert!(!seen.contains("http2-settings"), "{seen}");

    // WebSocket is spliced by default, but not on a route that allows no upgrades.
    let websocket = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    let mut stream = TcpStream::connect(rafael.proxy).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream
        .write_all(websocket("/public/ws").as_bytes())
        .unwrap();
    let mut head = [0u8; 12];
    stream.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    let (status, answer) = send_raw(
        rafael.proxy,
        websocket("/closed/ws").as_bytes(),
        false,
        Duration::from_secs(10),
    );
    assert_eq!(status, 200, "{answer}");

    // And a config that asks for h2c is refused.
    let bad = std::fs::read_to_string(&path)
        .unwrap()
        .replace("upgrades = []", "upgrades = [\"h2c\"]");
    let (code, _, stderr) = config_check(dir.path(), &bad);
    assert_eq!(code, Some(2));
    assert!(
        stderr.contains("routes[1].upgrades[0]: h2c upgrades are never forwarded"),
        "{stderr}"
    );
}

#[test]
fn the_target_authority_replaces_host_and_untrustworthy_hosts_are_refused() {
    let upstream = Recorder::start(0);
    let dir = tempfile::tempdir().unwrap();
    let routes = format!(
        r#"
[[upstreams]]
name = "app"
endpoints = ["{}"]

[[routes]]
name = "admin"
listener = "in"
upstream = "app"
match = {{ host = "admin.internal" }}
[routes.policy]
rate_limit = {{ rps = 1, burst = 1 }}

[[routes]]
name = "public"
listener = "in"
upstream = "app"
"#,
        upstream.addr
    );
    let path = config(dir.path(), "", &routes);
    let rafael = Rafael::start(&path);

    // Absolute form: routed on public.example, and forwarded with that host too.
    for i in 0..3 {
        let request = format!(
            "GET http://public.example/absolute-{i} HTTP/1.1\r\nHost: admin.internal\r\nConnection: close\r\n\r\n"
        );
        let (status, answer) = send_raw(
            rafael.proxy,
            request.as_bytes(),
            false,
            Duration::from_secs(10),
        );
        assert_eq!(status, 200, "{answer}");
        let seen = upstream.request_with(&format!("/absolute-{i}")).unwrap();
        assert!(seen.contains("\r\nhost: public.example\r\n"), "{seen}");
        assert!(!seen.contains("admin.internal"), "{seen}");
    }

    // HTTP/2: `:authority` wins over a `host` field that names another host.
    let mut h2 = H2Client::connect(rafael.proxy);
    h2.get(
        1,
        "public.example",
        "/h2-authority",
        &[("host", "admin.internal")],
    );
    assert!(eventually(Duration::from_secs(10), || upstream
        .request_with("/h2-authority")
        .is_some()));
    let seen = upstream.request_with("/h2-authority").unwrap();
    assert!(seen.contains("\r\nhost: public.example\r\n"), "{seen}");
    assert!(!seen.contains("admin.internal"), "{seen}");

    for (request, why) in [
        (
            "GET /two HTTP/1.1\r\nHost: public.example\r\nHost: admin.internal\r\n\r\n",
            "two Host fields",
        ),
        ("GET /none HTTP/1.1\r\nConnection: close\r\n\r\n", "no Host"),
        (
            "GET /userinfo HTTP/1.1\r\nHost: user@admin.internal\r\n\r\n",
            "userinfo",
        ),
        ("GET /path HTTP/1.1\r\nHost: /admin\r\n\r\n", "a path"),
        (
            "GET /space HTTP/1.1\r\nHost: admin internal\r\n\r\n",
            "a space",
        ),
    ] {
        let (status, answer) = send_raw(
            rafael.proxy,
            request.as_bytes(),
            false,
            Duration::from_secs(10),
        );
        assert_eq!(status, 400, "{why}: {answer}");
    }
    // HTTP/1.0 may leave Host out.
    let (status, answer) = send_raw(
        rafael.proxy,
        b"GET /old HTTP/1.0\r\n\r\n",
        false,
        Duration::from_secs(10),
    );
    assert_eq!(status, 200, "{answer}");
}

#[test]
fn the_chaos_secret_never_reaches_the_upstream() {
    let upstream = Recorder::start(0);
    let dir = tempfile::tempdir().unwrap();
    let rest = format!(
        r#"
[chaos]
header_secret = "s3cret-value"

{}

[[faults]]
route = "main"
stage = "upstream"
percent = 100.0
abort = 503
only_with_header = "x-rafael-chaos"
"#,
        main_route(upstream.addr, "")
    );
    let path = config(dir.path(), "", &rest);
    let rafael = Rafael::start(&path);
    let (status, _, _) = http_get_with(
        rafael.proxy,
        "/targeted",
        "x-rafael-chaos: s3cret-value\r\n",
    );
    assert_eq!(status, 503, "the secret still targets the fault");
    let (status, _, _) = http_get_with(rafael.proxy, "/wrong", "x-rafael-chaos: guess\r\n");
    assert_eq!(status, 200);
    let seen = upstream.request_with("/wrong").unwrap();
    assert!(!seen.contains("x-rafael-chaos"), "{seen}");
    // Faults at the upstream stage still send nothing for the targeted request; an untargeted
    // one carries no trace of the header either.
    assert!(upstream.seen().iter().all(|r| !r.contains("s3cret-value")));
}

#[test]
fn a_connection_that_sends_nothing_is_closed_at_the_header_read_timeout() {
    let upstream = Recorder::start(0);
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        r#"header_read_timeout = "1s"
idle_timeout = "60s""#,
        &main_route(upstream.addr, ""),
    );
    let rafael = Rafael::start(&path);
    let started = Instant::now();
    let (status, answer) = send_raw(rafael.proxy, b"", false, Duration::from_secs(10));
    assert_eq!((status, answer.as_str()), (0, ""));
    let lived = started.elapsed();
    assert!(
        lived >= Duration::from_secs(1) && lived < Duration::from_secs(5),
        "{lived:?}"
    );
    assert!(eventually(Duration::from_secs(5), || metric_value(
        &rafael.metrics(),
        r#"rafael_connection_errors_total{listener="in",reason="header_read_timeout"}"#
    ) == Some(1.0)));
}

#[test]
fn at_max_connections_idle_keep_alive_connections_make_room_and_the_admin_answers() {
    let upstream = Recorder::start(0);
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        "max_connections = 3\nheader_read_timeout = \"30s\"",
        &main_route(upstream.addr, ""),
    );
    let rafael = Rafael::start(&path);
    // Three keep-alive connections, each idle after one request.
    let mut idle: Vec<TcpStream> = (0..3)
        .map(|i| {
            let mut stream = TcpStream::connect(rafael.proxy).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            write!(stream, "GET /keep-{i} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
            let mut answer = Vec::new();
            let mut buf = [0u8; 1024];
            while complete_response(&answer).is_none() {
                let n = stream.read(&mut buf).unwrap();
                assert!(n > 0);
                answer.extend_from_slice(&buf[..n]);
            }
            stream
        })
        .collect();
    // A fourth client is served: rafael closed an idle one to make room.
    assert_eq!(get(rafael.proxy, "/fourth"), 200);
    let closed = idle
        .iter_mut()
        .map(|stream| {
            stream
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            match stream.read(&mut [0u8; 16]) {
                Ok(n) => n == 0,
                Err(e) => !matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ),
            }
        })
        .filter(|closed| *closed)
        .count();
    assert!(closed >= 1, "no idle connection was closed to make room");
    // With the listener full of connections that never send a byte, the admin API answers.
    let silent: Vec<TcpStream> = (0..4)
        .map(|_| TcpStream::connect(rafael.proxy).unwrap())
        .collect();
    assert!(eventually(Duration::from_secs(10), || metric_value(
        &rafael.metrics(),
        r#"rafael_connection_limit_reached_total{listener="in"}"#
    )
    .is_some_and(|n| n >= 2.0)));
    assert_eq!(http_get(rafael.admin, "/healthz").0, 200);
    assert!(
        metric_value(
            &rafael.metrics(),
            r#"rafael_connections_active{listener="in"}"#
        )
        .is_some_and(|n| n <= 3.0)
    );
    drop(silent);
}

#[test]
fn a_client_that_stops_reading_is_disconnected_at_the_send_timeout() {
    let upstream = Recorder::start(256 * 1024 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let path = config(
        dir.path(),
        r#"send_timeout = "1s""#,
        &main_route(upstream.addr, ""),
    );
    let rafael = Rafael::start(&path);
    let mut stream = TcpStream::connect(rafael.proxy).unwrap();
    stream
        .write_all(b"GET /big HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    // Never read. rafael gives up on this client, and on the upstream exchange with it.
    assert!(eventually(Duration::from_secs(10), || upstream
        .accepted
        .load(Ordering::SeqCst)
        == 1));
    assert!(
        eventually(Duration::from_secs(15), || metric_value(
            &rafael.metrics(),
            r#"rafael_connections_active{listener="in"}"#
        ) == Some(0.0)),
        "the connection is still open"
    );
    assert!(eventually(Duration::from_secs(5), || upstream
        .open
        .load(Ordering::SeqCst)
        == 0));
    assert!(upstream.written.load(Ordering::SeqCst) < 256 * 1024 * 1024);
    assert!(eventually(Duration::from_secs(5), || metric_value(
        &rafael.metrics(),
        r#"rafael_connection_errors_total{listener="in",reason="send_timeout"}"#
    ) == Some(1.0)));
    drop(stream);
}

#[test]
fn http2_clients_that_never_read_hold_bounded_streams_and_memory() {
    const STREAMS: u32 = 300;
    let upstream = Recorder::start(16 * 1024 * 1024);
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "", &main_route(upstream.addr, ""));
    let rafael = Rafael::start(&path);
    let before = rafael.rss_kib();
    // Two connections advertise 2 GB windows, ask for 300 large bodies each, and never read.
    let clients: Vec<H2Client> = (0..2)
        .map(|_| {
            let mut client = H2Client::connect(rafael.proxy);
            client.open_windows();
            for i in 0..STREAMS {
                client.get(2 * i + 1, "localhost", "/big", &[]);
            }
            client
        })
        .collect();
    // Wait until the upstream has stopped accepting and writing: everything rafael would take.
    let (mut last, mut unchanged) = ((0, 0), 0);
    let settled = eventually(Duration::from_secs(30), || {
        thread::sleep(Duration::from_millis(300));
        let now = (
            upstream.accepted.load(Ordering::SeqCst),
            upstream.written.load(Ordering::SeqCst),
        );
        unchanged = if now == last && now.0 > 0 {
            unchanged + 1
        } else {
            0
        };
        last = now;
        unchanged >= 3
    });
    assert!(settled, "the upstream kept being asked for more");
    let accepted = upstream.accepted.load(Ordering::SeqCst);
    assert!(
        accepted <= 2 * 128,
        "{accepted} streams reached the upstream: more than 128 per connection"
    );
    let grown_mib = rafael.rss_kib().saturating_sub(before) / 1024;
    eprintln!("{accepted} streams reached the upstream; rafael grew by {grown_mib} MiB");
    assert!(grown_mib < 100, "rafael grew by {grown_mib} MiB");
    drop(clients);
}

#[test]
fn transfer_codings_other_than_chunked_get_501_and_forbidden_trailers_are_dropped() {
    let upstream = Recorder::start(0);
    let dir = tempfile::tempdir().unwrap();
    let path = config(dir.path(), "", &main_route(upstream.addr, ""));
    let rafael = Rafael::start(&path);
    let (status, answer) = send_raw(
        rafael.proxy,
        b"POST /gzip HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: gzip, chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        false,
        Duration::from_secs(10),
    );
    assert_eq!(status, 501, "{answer}");
    assert!(upstream.request_with("/gzip").is_none());

    let (status, answer) = send_raw(
        rafael.proxy,
        b"POST /trailers HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-checksum: abc\r\nhost: evil.example\r\ncontent-length: 99\r\nauthorization: Bearer stolen\r\n\r\n",
        false,
        Duration::from_secs(10),
    );
    assert_eq!(status, 200, "{answer}");
    let seen = upstream.request_with("/trailers").unwrap();
    assert!(seen.contains("x-checksum: abc"), "{seen}");
    for forbidden in ["evil.example", "content-length: 99", "stolen"] {
        assert!(!seen.contains(forbidden), "{forbidden} in {seen}");
    }
}

/// A hand-written HTTP/2 client (prior knowledge, h2c) that sends frames and never reads: the
/// client a hostile peer would write.
struct H2Client {
    stream: TcpStream,
}

impl H2Client {
    fn connect(addr: SocketAddr) -> Self {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
            .unwrap();
        let mut client = Self { stream };
        client.frame(4, 0, 0, &[]); // SETTINGS, empty
        client
    }

    /// Advertises the largest windows HTTP/2 allows, per stream and for the connection.
    fn open_windows(&mut self) {
        let mut settings = Vec::new();
        settings.extend_from_slice(&4u16.to_be_bytes()); // SETTINGS_INITIAL_WINDOW_SIZE
        settings.extend_from_slice(&0x7fff_ffffu32.to_be_bytes());
        self.frame(4, 0, 0, &settings);
        self.frame(8, 0, 0, &(0x7fff_ffffu32 - 65_535).to_be_bytes()); // WINDOW_UPDATE
    }

    /// Opens stream `id` with a GET of `path` on `authority`, plus `fields` (HPACK literals
    /// without indexing, so no dynamic table state is needed).
    fn get(&mut self, id: u32, authority: &str, path: &str, fields: &[(&str, &str)]) {
        let mut block = vec![0x82, 0x86]; // :method GET, :scheme http (static table)
        literal(&mut block, 4, path); // :path
        literal(&mut block, 1, authority); // :authority
        for (name, value) in fields {
            block.push(0x00);
            block.push(name.len() as u8);
            block.extend_from_slice(name.as_bytes());
            block.push(value.len() as u8);
            block.extend_from_slice(value.as_bytes());
        }
        self.frame(1, 0x5, id, &block); // HEADERS, END_STREAM | END_HEADERS
    }

    fn frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
        let len = payload.len() as u32;
        let mut frame = len.to_be_bytes()[1..].to_vec();
        frame.push(kind);
        frame.push(flags);
        frame.extend_from_slice(&stream.to_be_bytes());
        frame.extend_from_slice(payload);
        self.stream.write_all(&frame).unwrap();
    }
}

/// An HPACK literal field without indexing whose name is static table entry `index`.
fn literal(block: &mut Vec<u8>, index: u8, value: &str) {
    block.push(index);
    block.push(value.len() as u8);
    block.extend_from_slice(value.as_bytes());
}

#[test]
fn thousands_of_idle_routes_stay_small() {
    const ROUTES: usize = 2_500;
    let upstream = Recorder::start(0);
    let dir = tempfile::tempdir().unwrap();
    let mut routes = format!(
        "[[upstreams]]\nname = \"app\"\nendpoints = [\"{}\"]\n",
        upstream.addr
    );
    for i in 0..ROUTES {
        routes.push_str(&format!(
            "\n[[routes]]\nname = \"route-{i}\"\nlistener = \"in\"\nupstream = \"app\"\nmatch = {{ path_prefix = \"/r{i}/\" }}\n"
        ));
    }
    let path = config(dir.path(), "", &routes);
    let rafael = Rafael::start(&path);
    assert_eq!(get(rafael.proxy, "/r7/x"), 200);
    let rss_mib = rafael.rss_kib() / 1024;
    eprintln!("{ROUTES} idle routes: {rss_mib} MiB resident");
    assert!(rss_mib < 150, "{ROUTES} idle routes take {rss_mib} MiB");
}
