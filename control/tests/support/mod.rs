//! Helpers shared by the tests that run the `rafael` binary: start it on a config, talk to it
//! over raw HTTP/1.1, read its metrics and audit log.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

pub mod load;
pub mod worker_pool;

pub const RAFAEL: &str = env!("CARGO_BIN_EXE_rafael");

/// A `rafael run` child process, with the addresses it logged.
pub struct Rafael {
    pub child: Child,
    pub proxy: SocketAddr,
    pub admin: SocketAddr,
    /// Every line rafael has written to stderr so far.
    pub log: Arc<Mutex<Vec<String>>>,
    _logs: thread::JoinHandle<()>,
}

impl Rafael {
    pub fn start(config: &Path) -> Self {
        let mut child = Command::new(RAFAEL)
            .args(["--log-format", "json", "run", "--config"])
            .arg(config)
            .env("RAFAEL_LOG", "info")
            .stderr(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        let log = Arc::new(Mutex::new(Vec::new()));
        let kept = log.clone();
        let logs = thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if std::env::var_os("RAFAEL_TEST_LOGS").is_some() {
                    eprintln!("rafael: {line}");
                }
                kept.lock().unwrap().push(line.clone());
                let _ = tx.send(line);
            }
        });
        let (mut proxy, mut admin) = (None, None);
        let deadline = Instant::now() + Duration::from_secs(30);
        while proxy.is_none() || admin.is_none() {
            let line = rx
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
                .expect("rafael logs its addresses at start-up");
            let json: serde_json::Value = serde_json::from_str(&line).unwrap();
            let address = json["fields"]["address"]
                .as_str()
                .map(|a| a.parse().unwrap());
            match json["fields"]["message"].as_str() {
                Some("listening") => proxy = address,
                Some("admin listening") => admin = address,
                _ => {}
            }
        }
        Self {
            child,
            proxy: proxy.unwrap(),
            admin: admin.unwrap(),
            log,
            _logs: logs,
        }
    }

    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    pub fn wait(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "rafael did not exit within {limit:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The log lines so far, parsed (rafael runs with `--log-format json`).
    pub fn log_lines(&self) -> Vec<serde_json::Value> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// True when some log line at `level` (`"ERROR"`, `"WARN"`) has a message containing `text`.
    pub fn logged(&self, level: &str, text: &str) -> bool {
        self.log_lines().iter().any(|line| {
            line["level"] == level
                && line["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(text))
        })
    }

    pub fn metrics(&self) -> String {
        http_get(self.admin, "/metrics").2
    }

    /// Peak resident memory (VmHWM) in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        self.memory_kib("VmHWM:")
    }

    /// Resident memory now (VmRSS) in KiB.
    pub fn rss_kib(&self) -> u64 {
        self.memory_kib("VmRSS:")
    }

    fn memory_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }
}

impl Drop for Rafael {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A one-shot HTTP/1.1 GET over a fresh connection: (status, headers, body).
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    http_get_with(addr, path, "")
}

/// [`http_get`] with extra header lines (each ending in `\r\n`).
pub fn http_get_with(addr: SocketAddr, path: &str, headers: &str) -> (u16, String, String) {
    exchange(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n{headers}\r\n"),
    )
}

/// Sends `request` over a fresh connection and reads the whole answer: (status, head, body).
pub fn exchange(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = Vec::new();
    stream.read_to_end(&mut response).unwrap();
    let response = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, head.to_owned(), body.to_owned())
}

/// A tiny blocking upstream: answers every request with `body`, after `delay`.
pub fn upstream(body: &'static str, delay: Duration) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            thread::spawn(move || serve_fixed(stream, body, delay));
        }
    });
    addr
}

pub fn serve_fixed(stream: TcpStream, body: &str, delay: Duration) {
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut writer = stream;
    loop {
        let mut line = String::new();
        // Read one request head; these tests send no request bodies to this upstream.
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => return,
                Ok(_) if line == "\r\n" => break,
                Ok(_) => {}
            }
        }
        thread::sleep(delay);
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

pub fn write_config(dir: &Path, upstream: SocketAddr, body_extra: &str) -> PathBuf {
    let path = dir.join("rafael.toml");
    std::fs::write(&path, config_text(upstream, body_extra)).unwrap();
    path
}

pub fn config_text(upstream: SocketAddr, extra: &str) -> String {
    format!(
        r#"
[admin]
bind = "127.0.0.1:0"

[runtime]
drain_timeout = "10s"

[[listeners]]
name = "in"
bind = "127.0.0.1:0"

[[upstreams]]
name = "app"
endpoints = ["{upstream}"]

[[routes]]
name = "main"
listener = "in"
upstream = "app"
{extra}
"#
    )
}

/// Fails unless `promtool check metrics` accepts the exposition.
pub fn assert_promtool_accepts(metrics: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is needed: `.ci/setup` installs it (Debian package `prometheus`)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let output = promtool.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

pub fn eventually(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if check() {
            return true;
        }
        thread::sleep(Duration::from_millis(20));
    }
    check()
}

/// Runs `rafael config check` on `text`: (exit code, stdout, stderr).
pub fn config_check(dir: &Path, text: &str) -> (Option<i32>, String, String) {
    let path = dir.join("checked.toml");
    std::fs::write(&path, text).unwrap();
    let output = Command::new(RAFAEL)
        .args(["config", "check"])
        .arg(&path)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A one-shot HTTP/1.1 POST of a JSON body: (status, body).
pub fn http_post(addr: SocketAddr, path: &str, json: &str) -> (u16, String) {
    http_post_with(addr, path, json, "")
}

/// [`http_post`] with extra header lines (each ending in `\r\n`).
pub fn http_post_with(addr: SocketAddr, path: &str, json: &str, headers: &str) -> (u16, String) {
    let (status, _, body) = exchange(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{headers}\r\n{json}",
            json.len()
        ),
    );
    (status, body)
}

/// The actions in the audit log, oldest first, read through the admin API.
pub fn audit_actions(admin: SocketAddr) -> Vec<String> {
    let (_, _, audit) = http_get(admin, "/v1/audit");
    json_of(&audit)["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect()
}

pub fn json_of(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

/// Runs `rafael ARGS...` and waits for it at most `limit`, killing it past that: (exit code,
/// stderr), or `None` when it had to be killed (it hung).
pub fn run_bounded(args: &[&std::ffi::OsStr], limit: Duration) -> Option<(Option<i32>, String)> {
    run_command_bounded(Command::new(RAFAEL).args(args), limit)
}

/// [`run_bounded`] for any command.
pub fn run_command_bounded(
    command: &mut Command,
    limit: Duration,
) -> Option<(Option<i32>, String)> {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(20));
    };
    let text = reader.join().unwrap();
    status.map(|status| (status.code(), text))
}

/// The admin router for `config` (TOML), over an in-memory store and without tokens (every
/// caller is `admin`, as on a loopback bind): for tests that drive it with `oneshot`.
pub fn local_admin_router(config: &str) -> axum::Router {
    let store = rafael_control::store::Store::in_memory().unwrap();
    admin_router_over(config, Arc::new(store))
}

/// [`local_admin_router`] over `store`, for tests that put records in it first.
pub fn admin_router_over(config: &str, store: Arc<rafael_control::store::Store>) -> axum::Router {
    admin_router_with(config, store, rafael_control::auth::Auth::Local)
}

/// [`admin_router_over`] with `auth` (a tokens file's) instead of loopback-only admin.
pub fn admin_router_with(
    config: &str,
    store: Arc<rafael_control::store::Store>,
    auth: rafael_control::auth::Auth,
) -> axum::Router {
    use std::sync::atomic::AtomicBool;

    use rafael_control::{
        admin::{AdminState, router},
        audit::AuditLog,
        chaos::Chaos,
        evolution::round::Evolution,
        guardian::Guardian,
    };

    let config = rafael_config::parse(config).unwrap();
    let snapshot = rafael_proxy::SnapshotHandle::new(config).unwrap();
    let audit = AuditLog::new(store.clone());
    let guardian = Guardian::new(snapshot.clone(), store.clone(), audit.clone());
    guardian.restore().unwrap();
    router(AdminState {
        metrics: None,
        ready: Arc::new(AtomicBool::new(true)),
        chaos: Chaos::new(snapshot.clone(), store.clone(), audit.clone()).unwrap(),
        evolution: Evolution::new(snapshot.clone(), store.clone(), audit.clone())
            .with_guardian(guardian.clone()),
        guardian,
        snapshot,
        auth: Arc::new(auth),
        audit,
        store,
    })
}

/// A round of `route` as a round logic would record one that ended with a proposal.
pub fn sample_round(route: &str) -> rafael_control::evolution::round::Round {
    use rafael_control::evolution::round::{Round, RoundResult, RoundState};
    Round {
        id: 0,
        route: route.to_owned(),
        state: RoundState::Completed,
        started_at: "2025-01-01T00:00:00Z".to_owned(),
        ended_at: Some("2025-01-01T00:00:07Z".to_owned()),
        generations: 12,
        evaluations: 240,
        incumbent_fitness: Some(0.81),
        best_fitness: Some(0.86),
        proposal_id: None,
        reason: Some("proposed".to_owned()),
        result: Some(RoundResult::Proposed),
        patterns: Vec::new(),
    }
}

/// A pending proposal for `route`: `retry.max_attempts` 3 -> 2, with evidence for one
/// scenario, a trusted model and passed guardrails.
pub fn sample_proposal(route: &str) -> rafael_control::guardian::proposal::Proposal {
    use rafael_config::{Genome, RetryGenes};
    use rafael_control::{
        evolution::{
            fitness::Objectives,
            model::{Check, Fidelity},
        },
        guardian::proposal::{
            GuardrailVerdict, ModelEvidence, Passed, Predicted, Proposal, ProposalState, Source,
            diff,
        },
    };
    let retry = |max_attempts| Genome {
        retry: Some(RetryGenes {
            max_attempts,
            ..RetryGenes::default()
        }),
        ..Genome::default()
    };
    let (incumbent, candidate) = (retry(3), retry(2));
    let objectives = |goodput: f64, amplification: f64| Objectives {
        goodput,
        latency: 0.12,
        amplification,
        rejected: 0.0,
        fitness: goodput - 0.1 * amplification,
    };
    Proposal {
        id: 0,
        route: route.to_owned(),
        source: Source::Evolution,
        author: "rafael".to_owned(),
        state: ProposalState::Pending,
        created_at: "2025-01-01T00:00:07Z".to_owned(),
        // Far ahead: a proposal past its TTL expires at the first look (issue 10).
        expires_at: "2100-01-02T00:00:07Z".to_owned(),
        base_generation: 1,
        diff: diff(&incumbent, &candidate),
        genome: candidate,
        predicted: vec![Predicted {
            scenario: "steady".to_owned(),
            extrapolated: false,
            incumbent: objectives(0.95, 1.4),
            candidate: objectives(0.96, 1.1),
        }],
        model: ModelEvidence {
            fitted_at: "2025-01-01T00:00:00Z".to_owned(),
            fidelity: Some(Fidelity {
                goodput: Check::new(0.95, 0.94),
                p50_ms: Check::new(20.0, 21.0),
                p99_ms: Check::new(200.0, 210.0),
                amplification: Check::new(1.4, 1.35),
                trusted: true,
                reason: None,
            }),
            trusted: true,
        },
        guardrails: GuardrailVerdict::Passed(Passed::Passed),
        approvals: Vec::new(),
        canary: None,
        watch: None,
        round_id: None,
    }
}
