//! The examples (issue 11): every config passes `rafael config check`, and the httpbin one runs
//! end to end: httpbin under gunicorn with a bad day on a schedule, rafael with the example's
//! config, a round on what it saw, the approval, and the next bad day, on which clients must
//! see more successes than on the first. (`grpc.rs` runs the gRPC example.)
//!
//! Needs httpbin and gunicorn (PyPI): `.ci/setup` installs them.
#![allow(clippy::unwrap_used)]

mod support;

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use support::{RAFAEL, Rafael, http_get, http_post, json_of, load::Answer};

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

#[test]
fn every_example_config_passes_config_check() {
    let mut checked = 0;
    for entry in std::fs::read_dir(examples()).unwrap() {
        let config = entry.unwrap().path().join("rafael.toml");
        if !config.exists() {
            continue;
        }
        let output = Command::new(RAFAEL)
            .args(["config", "check"])
            .arg(&config)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}: {}",
            config.display(),
            String::from_utf8_lossy(&output.stderr)
        );
        checked += 1;
    }
    assert!(checked >= 2, "{checked} example configs");
    for readme in [
        "README.md",
        "httpbin-gunicorn/README.md",
        "grpc/README.md",
        "kubernetes/README.md",
    ] {
        assert!(examples().join(readme).exists(), "{readme}");
    }
}

struct Gunicorn(Child);

impl Drop for Gunicorn {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// gunicorn serving the example on a free port; the port, once it listens.
fn gunicorn(day_secs: u64) -> (Gunicorn, u16) {
    let dir = examples().join("httpbin-gunicorn");
    let mut child = Command::new("python3")
        .args([
            "-m",
            "gunicorn",
            "--config",
            "gunicorn.conf.py",
            "--bind",
            "127.0.0.1:0",
            "--log-level",
            "info",
            "bad_day:app",
        ])
        .current_dir(&dir)
        .env("DAY_SECS", day_secs.to_string())
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("python3 runs");
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in stderr.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let guard = Gunicorn(child);
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        if let Some(rest) = line.split("Listening at: http://127.0.0.1:").nth(1) {
            let port = rest.split_whitespace().next().unwrap().parse().unwrap();
            // The workers boot after the master listens; the first request waits for one.
            std::thread::spawn(move || for _ in rx {});
            return (guard, port);
        }
        seen.push(line);
    }
    panic!(
        "gunicorn did not listen (are httpbin and gunicorn installed? `.ci/setup` installs them):\n{}",
        seen.join("\n")
    );
}

fn success(answers: &[Answer]) -> f64 {
    let ok = answers.iter().filter(|a| a.status == 200).count();
    ok as f64 / answers.len().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn httpbin_under_gunicorn_has_a_bad_day_rafael_learns_and_the_next_one_hurts_less() {
    // A day of 60 s: 40% of requests fail with 503 from second 4 to second 16.
    const DAY: u64 = 60;
    let (server, port) = tokio::task::spawn_blocking(|| gunicorn(DAY)).await.unwrap();
    let day_one = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string(examples().join("httpbin-gunicorn/rafael.toml")).unwrap();
    let config = example
        .replace("127.0.0.1:8000", &format!("127.0.0.1:{port}"))
        .replace("127.0.0.1:15001", "127.0.0.1:0")
        .replace("127.0.0.1:9901", "127.0.0.1:0")
        .replace(
            "path = \"rafael.db\"",
            &format!("path = {:?}", dir.path().join("rafael.db")),
        );
    let path = dir.path().join("rafael.toml");
    std::fs::write(&path, config).unwrap();
    let rafael = tokio::task::spawn_blocking(move || Rafael::start(&path))
        .await
        .unwrap();
    let (proxy, admin) = (rafael.proxy, rafael.admin);
    let day = |start: Instant| async move {
        // The same stretch of each day: from second 1 to second 25 (the bad period and the
        // calm after it).
        tokio::time::sleep_until((start + Duration::from_secs(1)).into()).await;
        support::load::open_loop(proxy, "/get", 40.0, 24, Duration::from_secs(5), |_| {}).await
    };
    let first = day(day_one).await;
    let before = success(&first);

    // A round on what rafael saw, and the approval of its proposal through the CLI.
    let (round, proposal) = tokio::task::spawn_blocking(move || {
        eprintln!("model: {}", http_get(admin, "/v1/routes/api/model").2);
        let (status, body) = http_post(admin, "/v1/evolution/api/run", "{}");
        assert_eq!(status, 202, "{body}");
        let id = json_of(&body)["id"].as_i64().unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        let round = loop {
            let round = json_of(&http_get(admin, &format!("/v1/evolution/rounds/{id}")).2);
            if round["state"] != "running" {
                break round;
            }
            assert!(Instant::now() < deadline, "{round}");
            std::thread::sleep(Duration::from_millis(250));
        };
        assert_eq!(round["result"], "proposed", "{round}");
        let proposal = round["proposal_id"].as_i64().unwrap();
        let output = Command::new(RAFAEL)
            .args([
                "proposals",
                "approve",
                &proposal.to_string(),
                "--comment",
                "retries for the bad days",
            ])
            .args(["--admin", &format!("http://{admin}")])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        (
            round,
            json_of(&http_get(admin, &format!("/v1/proposals/{proposal}")).2),
        )
    })
    .await
    .unwrap();
    eprintln!("round: {round}\nproposal: {}", proposal["genome"]);
    assert!(
        ["applied", "kept"].contains(&proposal["state"].as_str().unwrap()),
        "{proposal}"
    );
    let retry_on = proposal["genome"]["retry"]["retry_on"].to_string();
    assert!(
        ["5xx", "gateway-error", "503"]
            .iter()
            .any(|c| retry_on.contains(c)),
        "the proposal does not retry what the bad day breaks: {retry_on}"
    );
    assert!(
        day_one.elapsed() < Duration::from_secs(DAY),
        "the round and the approval took past the next day's start"
    );

    let second = day(day_one + Duration::from_secs(DAY)).await;
    let after = success(&second);
    // The heart of each bad period: the traffic's seconds 5 to 13 are the day's 6 to 14, inside
    // the bad period (4 to 16) even if gunicorn's clock started a second or so after ours.
    let heart = |answers: &[Answer]| success(&answers[5 * 40..13 * 40]);
    let (bad_before, bad_after) = (heart(&first), heart(&second));
    eprintln!(
        "success over each day {before:.3} then {after:.3}; in its bad period {bad_before:.3} then {bad_after:.3}"
    );
    assert!(
        bad_before < 0.75,
        "the first bad day was not bad: {bad_before}"
    );
    assert!(
        after > before && bad_after > bad_before + 0.08,
        "first day {before} ({bad_before} when bad), second {after} ({bad_after} when bad)"
    );
    drop(rafael);
    drop(server);
}
