//! Issue 8, the control plane and config: each test reproduces one attack against the real
//! `rafael` binary (or its admin router) and asserts that it is refused, with the error a user
//! reads.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;
use support::*;

use std::{
    ffi::OsStr,
    io::{Read, Seek, SeekFrom, Write},
    net::TcpStream,
    path::Path,
    process::Command,
    sync::Arc,
    time::Duration,
};

use axum::body::Body;
use http::{Request, StatusCode, Version};
use rafael_control::{audit::AuditLog, store::Store};
use tower::ServiceExt;

/// Long enough for a loaded 2-core machine to start a process; a hang is far longer.
const QUICK: Duration = Duration::from_secs(20);

// === finding 7: experiment faults are validated as the config file's are ===

/// POSTs an experiment on route `main` with these `faults` (a JSON array).
fn start_experiment(rafael: &Rafael, faults: &str) -> (u16, serde_json::Value) {
    let (status, body) = http_post(
        rafael.admin,
        "/v1/experiments",
        &format!(r#"{{"route": "main", "duration": "30s", "faults": {faults}}}"#),
    );
    (status, json_of(&body))
}

#[test]
fn experiment_faults_with_unknown_keys_too_many_rules_or_unbounded_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream("hello", Duration::ZERO), "");
    let rafael = Rafael::start(&config);

    let refused = |faults: &str, expected: &str| {
        let (status, body) = start_experiment(&rafael, faults);
        assert_eq!(status, 400, "{faults:.200}: {body}");
        assert_eq!(body["error"], "bad_request", "{body}");
        let detail = body["detail"].as_str().unwrap();
        assert!(detail.contains(expected), "{faults:.200}: {detail}");
    };
    // A typo must not run at 100%.
    refused(
        r#"[{"percnt": 5, "delay": "10ms"}]"#,
        "faults[0].percnt: unknown key",
    );
    refused(
        r#"[{"abort": 503}, {"delay": "1ms", "stage": "downstream", "colour": "red"}]"#,
        "faults[1].colour: unknown key",
    );
    let many = format!("[{}]", vec![r#"{"delay": "1ms"}"#; 10_000].join(","));
    refused(&many, "faults: at most 64 rules, got 10000");
    let body = "x".repeat(100 * 1024);
    refused(
        &format!(r#"[{{"abort": 503, "abort_body": "{body}"}}]"#),
        "faults[0].abort_body: must be at most 64KiB, got 102400 bytes",
    );
    refused(
        r#"[{"delay": "500000000years"}]"#,
        "faults[0].delay: must be 0s..=1h, got",
    );
    refused(
        r#"[{"delay": "1ms", "delay_max": "2h"}]"#,
        "faults[0].delay_max: must be 0s..=1h, got 2h",
    );

    // None of them ran, or was recorded as started.
    let (_, _, listing) = http_get(rafael.admin, "/v1/experiments");
    assert_eq!(json_of(&listing)["experiments"], serde_json::json!([]));
    assert!(audit_actions(rafael.admin).is_empty());

    // Within the bounds an experiment still starts.
    let (status, body) = start_experiment(
        &rafael,
        r#"[{"stage": "downstream", "percent": 0, "delay": "1h", "abort_body": "unused"}]"#,
    );
    assert_eq!(
        status, 400,
        "abort_body without abort is still refused: {body}"
    );
    let (status, body) = start_experiment(
        &rafael,
        &format!(
            r#"[{{"stage": "downstream", "percent": 0, "abort": 503, "abort_body": "{}"}}]"#,
            "x".repeat(64 * 1024)
        ),
    );
    assert_eq!(status, 201, "{body}");
}

#[test]
fn config_check_bounds_fault_durations_and_name_lengths() {
    let dir = tempfile::tempdir().unwrap();
    let upstream = upstream("hello", Duration::ZERO);
    let (code, _, stderr) = config_check(
        dir.path(),
        &config_text(
            upstream,
            "\n[[faults]]\nroute = \"main\"\ndelay = \"500000000years\"\n",
        ),
    );
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("faults[0].delay: must be 0s..=1h, got"),
        "{stderr}"
    );

    let long = "n".repeat(129);
    let text = config_text(upstream, "")
        .replace("name = \"in\"", &format!("name = \"{long}\""))
        .replace("listener = \"in\"", &format!("listener = \"{long}\""))
        .replace("name = \"app\"", &format!("name = \"{long}\""))
        .replace("upstream = \"app\"", &format!("upstream = \"{long}\""))
        .replace("name = \"main\"", &format!("name = \"{long}\""));
    let (code, _, stderr) = config_check(dir.path(), &text);
    assert_eq!(code, Some(2), "{stderr}");
    for section in ["listeners", "upstreams", "routes"] {
        let expected = format!("{section}[0].name: must be at most 128 bytes, got 129");
        assert!(stderr.contains(&expected), "{expected}\n{stderr}");
    }
    let text = text.replace(&long, &"n".repeat(128));
    let (code, stdout, stderr) = config_check(dir.path(), &text);
    assert_eq!(code, Some(0), "{stdout}{stderr}");
}

// === finding 8: config files are regular files of bounded size ===

#[test]
fn config_check_refuses_dev_zero_a_fifo_and_an_oversized_file_quickly() {
    let dir = tempfile::tempdir().unwrap();
    // An address-space cap, so that a rafael that reads /dev/zero without a bound fails here
    // instead of taking the machine's memory.
    let mut capped = Command::new("sh");
    capped
        .args([
            "-c",
            "ulimit -v 4194304 && exec \"$0\" config check /dev/zero",
        ])
        .arg(RAFAEL);
    let (code, stderr) =
        run_command_bounded(&mut capped, QUICK).expect("config check /dev/zero hung");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("/dev/zero") && stderr.contains("not a regular file"),
        "{stderr}"
    );

    let fifo = dir.path().join("fifo.toml");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    let (code, stderr) = run_bounded(
        &[OsStr::new("config"), OsStr::new("check"), fifo.as_os_str()],
        QUICK,
    )
    .expect("config check on a FIFO hung");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("fifo.toml") && stderr.contains("not a regular file"),
        "{stderr}"
    );

    // A valid config padded past the limit with a comment.
    let big = dir.path().join("big.toml");
    let mut text = config_text(upstream("hello", Duration::ZERO), "");
    text.push('#');
    text.push_str(&"x".repeat(5 * 1024 * 1024));
    text.push('\n');
    std::fs::write(&big, text).unwrap();
    let (code, stderr) = run_bounded(
        &[OsStr::new("config"), OsStr::new("check"), big.as_os_str()],
        QUICK,
    )
    .expect("config check on a 5 MiB file hung");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(
        stderr.contains("big.toml") && stderr.contains("larger than 4 MiB"),
        "{stderr}"
    );

    // `rafael run` reads its config the same way.
    let (code, stderr) = run_bounded(
        &[OsStr::new("run"), OsStr::new("--config"), fifo.as_os_str()],
        QUICK,
    )
    .expect("run --config FIFO hung");
    assert_eq!(code, Some(2), "{stderr}");
    assert!(stderr.contains("not a regular file"), "{stderr}");
}

#[test]
fn a_reload_of_an_oversized_file_or_a_fifo_is_rejected_and_the_running_config_stays() {
    let dir = tempfile::tempdir().unwrap();
    let first = upstream("first", Duration::ZERO);
    let second = upstream("second", Duration::ZERO);
    let config = write_config(dir.path(), first, "");
    let rafael = Rafael::start(&config);
    assert_eq!(http_get(rafael.proxy, "/").2, "first");
    let errors = || {
        metric_value(
            &rafael.metrics(),
            r#"rafael_config_reloads_total{result="error"}"#,
        )
        .unwrap_or(0.0)
    };

    // A valid config for the second upstream, padded past 4 MiB, put in place as editors do.
    let mut text = config_text(second, "");
    text.push('#');
    text.push_str(&"x".repeat(5 * 1024 * 1024));
    text.push('\n');
    let staged = dir.path().join("staged.toml");
    std::fs::write(&staged, text).unwrap();
    std::fs::rename(&staged, &config).unwrap();
    rafael.signal("HUP");
    assert!(
        eventually(QUICK, || errors() >= 1.0),
        "the oversized file was not rejected"
    );
    assert_eq!(http_get(rafael.proxy, "/").2, "first");
    assert!(rafael.logged("ERROR", "larger than 4 MiB"));

    // A FIFO in its place: rejected without hanging the reloader.
    let fifo = dir.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    std::fs::rename(&fifo, &config).unwrap();
    let before = errors();
    rafael.signal("HUP");
    assert!(
        eventually(QUICK, || errors() > before),
        "the FIFO was not rejected"
    );
    assert_eq!(http_get(rafael.proxy, "/").2, "first");
    assert!(rafael.logged("ERROR", "not a regular file"));

    // And a good file still reloads afterwards.
    std::fs::remove_file(&config).unwrap();
    std::fs::write(&staged, config_text(second, "")).unwrap();
    std::fs::rename(&staged, &config).unwrap();
    rafael.signal("HUP");
    assert!(eventually(QUICK, || http_get(rafael.proxy, "/").2 == "second"));
}

// === finding 11: the store's health is checked and reported ===

/// Fills the store at `db` with audit entries through rafael's own log, so the audit table
/// spans many pages, and folds the WAL back into the file.
fn fill_store(db: &Path) {
    let audit = AuditLog::new(Arc::new(Store::open(db).unwrap()));
    for i in 0..400 {
        audit
            .append(
                "test",
                "test.filler",
                &i.to_string(),
                serde_json::json!({ "padding": "p".repeat(200) }),
            )
            .unwrap();
    }
    drop(audit);
    let connection = rusqlite::Connection::open(db).unwrap();
    connection
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .unwrap();
}

/// What `PRAGMA quick_check` says of the file at `db` (an error is a failed check too).
fn quick_check(db: &Path) -> String {
    let connection = rusqlite::Connection::open(db).unwrap();
    connection
        .query_row("PRAGMA quick_check", [], |row| row.get::<_, String>(0))
        .unwrap_or_else(|e| e.to_string())
}

#[test]
fn a_store_with_a_corrupted_page_starts_not_ready_and_the_log_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream("hello", Duration::ZERO), "");
    let mut rafael = Rafael::start(&config);
    rafael.signal("TERM");
    assert!(rafael.wait(QUICK).success());
    drop(rafael);

    let db = dir.path().join("rafael.db");
    fill_store(&db);
    assert_eq!(quick_check(&db), "ok");
    // Overwrite one page in the middle of the audit table: page 1 (the header and schema) and
    // the experiments table's root stay intact, so SQLite opens the file and rafael starts.
    let page_size: i64 = rusqlite::Connection::open(&db)
        .unwrap()
        .query_row("PRAGMA page_size", [], |row| row.get(0))
        .unwrap();
    let page_size = page_size as u64;
    let pages = std::fs::metadata(&db).unwrap().len() / page_size;
    assert!(pages >= 20, "the store has only {pages} pages");
    let mut file = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
    file.seek(SeekFrom::Start(pages / 2 * page_size)).unwrap();
    file.write_all(&vec![0xA5; page_size as usize]).unwrap();
    file.sync_all().unwrap();
    drop(file);
    assert_ne!(quick_check(&db), "ok", "the corruption must be detectable");

    let rafael = Rafael::start(&config);
    let (status, _, body) = http_get(rafael.admin, "/readyz");
    assert_eq!(status, 503, "{body}");
    let readyz = json_of(&body);
    assert_eq!(readyz["status"], "not ready", "{body}");
    let reason = readyz["reason"].as_str().unwrap();
    assert!(
        reason.contains("rafael.db") && reason.contains("integrity check"),
        "{reason}"
    );
    assert!(
        rafael.logged("ERROR", "integrity check"),
        "{:?}",
        rafael.log_lines()
    );
    // The proxy itself still serves: the store is the control plane's, not the data plane's.
    assert_eq!(http_get(rafael.proxy, "/").2, "hello");
}

#[test]
fn a_store_deleted_while_running_is_reported_and_audited_actions_fail() {
    let dir = tempfile::tempdir().unwrap();
    let first = upstream("first", Duration::ZERO);
    let second = upstream("second", Duration::ZERO);
    let config = write_config(dir.path(), first, "");
    let rafael = Rafael::start(&config);
    assert_eq!(http_get(rafael.admin, "/readyz").0, 200);

    let db = dir.path().join("rafael.db");
    std::fs::remove_file(&db).unwrap();
    for suffix in ["-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("rafael.db{suffix}")));
    }

    let (status, _, body) = http_get(rafael.admin, "/readyz");
    assert_eq!(status, 503, "{body}");
    let reason = json_of(&body)["reason"].as_str().unwrap().to_owned();
    assert!(
        reason.contains("rafael.db") && reason.contains("no longer"),
        "{reason}"
    );

    // An experiment cannot be recorded, so it does not start.
    let (status, body) = start_experiment(&rafael, r#"[{"stage": "downstream", "delay": "1ms"}]"#);
    assert_eq!(status, 500, "{body}");
    assert_eq!(body["error"], "store", "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("no longer"),
        "{body}"
    );

    // A reload still applies (the data plane does not need the store) but its audit entry
    // cannot be written, and the log says so.
    std::fs::write(&config, config_text(second, "")).unwrap();
    rafael.signal("HUP");
    assert!(eventually(QUICK, || http_get(rafael.proxy, "/").2 == "second"));
    assert!(
        eventually(QUICK, || rafael
            .logged("ERROR", "cannot write the audit log")),
        "{:?}",
        rafael.log_lines()
    );
    assert!(
        rafael.logged("ERROR", "no longer"),
        "{:?}",
        rafael.log_lines()
    );
    assert!(
        !db.exists(),
        "nothing recreates the store behind rafael's back"
    );
}

#[test]
fn a_store_error_says_what_failed_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("rafael.toml");
    std::fs::write(
        &config,
        config_text(upstream("hello", Duration::ZERO), "").replace(
            "[runtime]",
            "[store]\npath = \"missing/dir/rafael.db\"\n\n[runtime]",
        ),
    )
    .unwrap();
    let (code, stderr) = run_bounded(
        &[
            OsStr::new("run"),
            OsStr::new("--config"),
            config.as_os_str(),
        ],
        QUICK,
    )
    .expect("rafael run hung on a store it cannot open");
    assert_eq!(code, Some(1), "{stderr}");
    let lower = stderr.to_lowercase();
    assert_eq!(
        lower.matches("unable to open database file").count(),
        1,
        "{stderr}"
    );
    assert!(stderr.contains("missing/dir/rafael.db"), "{stderr}");
}

// === finding 12: the admin API's edges ===

/// The admin router over an in-memory store, without tokens (as a loopback bind may run).
fn local_admin() -> axum::Router {
    local_admin_router(&config_text("127.0.0.1:9".parse().unwrap(), ""))
}

/// Asserts `head`/`body` are a JSON error `{"error", "detail"}` and returns the error code.
fn json_error(head: &str, body: &str) -> String {
    assert!(
        head.to_lowercase()
            .contains("content-type: application/json"),
        "{head}"
    );
    let error = json_of(body);
    assert!(error["detail"].is_string(), "{body}");
    error["error"].as_str().unwrap().to_owned()
}

#[test]
fn malformed_queries_and_path_ids_are_json_errors() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream("hello", Duration::ZERO), "");
    let rafael = Rafael::start(&config);
    for path in [
        "/v1/audit?after=abc",
        "/v1/audit?limit=-1",
        "/v1/experiments/abc",
        "/v1/experiments/99999999999999999999999/report",
    ] {
        let (status, head, body) = http_get(rafael.admin, path);
        assert_eq!(status, 400, "{path}: {body}");
        assert_eq!(json_error(&head, &body), "bad_request", "{path}");
    }
    let (status, head, body) = exchange(
        rafael.admin,
        "POST /v1/experiments/abc/stop HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
    );
    assert_eq!(status, 400, "{body}");
    assert_eq!(json_error(&head, &body), "bad_request");
    let (status, head, body) = exchange(
        rafael.admin,
        "POST /v1/experiments HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}",
    );
    assert_eq!(status, 415, "no JSON content type: {body}");
    assert_eq!(json_error(&head, &body), "bad_request");
}

#[test]
fn a_declared_ten_megabyte_body_is_refused_with_413_before_it_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream("hello", Duration::ZERO), "");
    let rafael = Rafael::start(&config);
    // Only the head is sent: the answer must come from the declared length alone.
    let mut stream = TcpStream::connect(rafael.admin).unwrap();
    stream.set_read_timeout(Some(QUICK)).unwrap();
    stream
        .write_all(
            b"POST /v1/experiments HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
              Content-Type: application/json\r\nContent-Length: 10485760\r\n\r\n",
        )
        .unwrap();
    let mut answer = Vec::new();
    let read = stream.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer).into_owned();
    assert!(read.is_ok(), "no answer before the body: {read:?}");
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 413"), "{head}");
    assert_eq!(json_error(head, body), "payload_too_large");
}

#[tokio::test]
async fn a_ten_megabyte_body_is_413_json_with_or_without_a_length() {
    for declared in [true, false] {
        let mut request = Request::post("/v1/experiments")
            .header("host", "localhost")
            .header("content-type", "application/json");
        if declared {
            request = request.header("content-length", "10485760");
        }
        let request = request.body(Body::from(vec![b' '; 10 << 20])).unwrap();
        let response = local_admin().oneshot(request).await.unwrap();
        assert_eq!(
            response.status(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "declared: {declared}"
        );
        let content_type = response.headers()["content-type"]
            .to_str()
            .unwrap()
            .to_owned();
        let bytes = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .unwrap();
        let body = String::from_utf8_lossy(&bytes);
        assert_eq!(content_type, "application/json", "{body}");
        assert_eq!(json_of(&body)["error"], "payload_too_large", "{body}");
    }
}

#[test]
fn the_bearer_scheme_is_case_insensitive() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.toml");
    let output = Command::new(RAFAEL)
        .args(["token", "add", "dashboard", "--role", "viewer", "--file"])
        .arg(&tokens)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let secret = String::from_utf8(output.stdout).unwrap().trim().to_owned();
    let config = dir.path().join("rafael.toml");
    std::fs::write(
        &config,
        config_text(upstream("hello", Duration::ZERO), "").replace(
            "[admin]\nbind = \"127.0.0.1:0\"",
            "[admin]\nbind = \"127.0.0.1:0\"\ntokens_file = \"tokens.toml\"",
        ),
    )
    .unwrap();
    let rafael = Rafael::start(&config);
    for scheme in ["Bearer", "bearer", "BEARER", "bEaReR"] {
        let header = format!("Authorization: {scheme} {secret}\r\n");
        let (status, _, body) = http_get_with(rafael.admin, "/v1/audit", &header);
        assert_eq!(status, 200, "{scheme}: {body}");
    }
    for wrong in [
        format!("Basic {secret}"),
        format!("Bearer{secret}"),
        secret.clone(),
    ] {
        let header = format!("Authorization: {wrong}\r\n");
        assert_eq!(
            http_get_with(rafael.admin, "/v1/audit", &header).0,
            401,
            "{wrong}"
        );
    }
}

#[test]
fn without_tokens_an_absolute_form_target_must_name_this_host_too() {
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(dir.path(), upstream("hello", Duration::ZERO), "");
    let rafael = Rafael::start(&config);
    let get = |target: &str| {
        exchange(
            rafael.admin,
            &format!("GET {target} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"),
        )
    };
    let (status, head, body) = get("http://evil.example/v1/audit");
    assert_eq!(status, 403, "{body}");
    assert_eq!(json_error(&head, &body), "forbidden");
    let (status, _, body) = get("http://evil.example:9901/v1/experiments");
    assert_eq!(status, 403, "{body}");
    let (status, _, body) = get("http://localhost/v1/audit");
    assert_eq!(status, 200, "{body}");
    let (status, _, body) = get("http://127.0.0.1:9901/v1/audit");
    assert_eq!(status, 200, "{body}");
}

#[tokio::test]
async fn without_tokens_an_http2_authority_must_name_this_host() {
    // The admin listener speaks HTTP/1.1 only; the router is checked as an HTTP/2 server would
    // hand it a request (`:authority` in the URI, no Host header).
    for (authority, expected) in [
        ("evil.example", StatusCode::FORBIDDEN),
        ("evil.example:9901", StatusCode::FORBIDDEN),
        ("localhost:9901", StatusCode::OK),
        ("[::1]:9901", StatusCode::OK),
    ] {
        let request = Request::get(format!("http://{authority}/v1/audit"))
            .version(Version::HTTP_2)
            .body(Body::empty())
            .unwrap();
        let response = local_admin().oneshot(request).await.unwrap();
        assert_eq!(response.status(), expected, ":authority {authority}");
    }
}
