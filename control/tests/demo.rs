//! `rafael demo` end to end: its URLs and traffic, and (issue 9) the pending proposal its
//! service's first bad day leads to. A file of its own so the demo, timing-sensitive, does
//! not share the machine's two cores with the other end-to-end tests (`cargo test` runs test
//! binaries one at a time).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::*;

use std::{
    io::{BufRead, BufReader},
    net::SocketAddr,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

#[test]
fn demo_prints_its_urls_serves_traffic_and_stops_on_ctrl_c() {
    let (child, _lines, proxy, admin) = spawn_demo(&["--rate", "20", "--traffic-duration", "5s"]);
    let (status, head, _) = http_get(proxy, "/orders/1");
    assert!(status == 200 || status == 503, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-request-id:"),
        "{head}"
    );
    // The built-in traffic shows up in the metrics.
    assert!(eventually(Duration::from_secs(20), || {
        let text = http_get(admin, "/metrics").2;
        metric_value(
            &text,
            r#"rafael_requests_total{route="orders-read",code="200"}"#,
        )
        .is_some_and(|v| v >= 10.0)
    }));
    interrupt_demo(child);
}

/// The whole loop, live (issues 9 and 10): the demo service's first bad day leads to a
/// proposal; the demo's guardian approves it (`approval = "auto"`), tries it as a canary on a
/// quarter of the requests, applies it and watches it; one service day later the demo prints
/// the goodput before and after the swap and how to inspect every step. `--speed 3` runs the
/// service's cycle three times faster, so the bad day is over after about 23 s. A round whose
/// model is not trusted (see below) is tried again after the next bad day, as a sidecar's
/// rounds every `interval` would be.
///
/// Its record (issue 9, the proposal alone): 21 of 24 runs with a five-seed model check, each
/// of the three refusals on amplification (0.81-0.89 attempts per request observed against
/// 1.04-1.09 replayed). The demo genome's breaker (five consecutive failures) trips during the
/// service's 40%-error phase in about two live runs of five, and in as many replays (16 of 40
/// seeds on the model of a run where it tripped): five seeds all missing the trip, one time in
/// thirteen, refused a model that replays it. A refusal is now looked at on twenty seeds before
/// it stands (all twenty miss it one time in 27,000); 13 of 13 since, 3 of them beside the
/// evolution tests. At `--rate 60` it fails still: the slow phase raises the in-flight count
/// with the latency, the fit reads the slow seconds as queueing past a knee and finds no
/// brownout (simulated p99 85 ms against 393 ms observed).
#[test]
fn demo_runs_the_whole_loop_after_the_service_s_first_bad_day_and_says_how_to_see_it() {
    let (child, lines, _proxy, admin) = spawn_demo(&["--speed", "3"]);
    let deadline = Instant::now() + Duration::from_secs(240);
    let mut printed = Vec::new();
    let mut next = |what: &str| {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = lines
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no {what} in time; printed:\n{}", printed.join("\n")));
        printed.push(line.clone());
        (line.trim_start().to_owned(), printed.join("\n"))
    };
    let (verdict, all) = loop {
        let (line, all) = next("round verdict");
        // A round without a proposal is tried again after the next bad day.
        let retried = line.contains("another round");
        if line.starts_with("evolution")
            && !retried
            && (line.contains("proposal") || line.contains("ended"))
        {
            break (line, all);
        }
    };
    assert!(verdict.contains("proposal"), "{all}");
    let id: i64 = verdict
        .split_whitespace()
        .nth(2)
        .and_then(|id| id.parse().ok())
        .unwrap_or_else(|| panic!("no proposal id in {verdict:?}"));
    let (how, all) = next("how to see it");
    assert!(
        how.contains(&format!(
            "rafael proposals show {id} --admin http://{admin}"
        )),
        "{all}"
    );
    // The guardian's steps, then the figures.
    let (goodput, all) = loop {
        let (line, all) = next("goodput line");
        if line.starts_with("goodput") || line.starts_with("inspect") {
            break (line, all);
        }
    };
    assert!(goodput.starts_with("goodput"), "{all}");
    assert!(all.contains("canary on 25"), "{all}");
    assert!(all.contains("generation 2 is live on orders-read"), "{all}");
    let figures: Vec<f64> = goodput
        .split_whitespace()
        .filter_map(|word| word.strip_suffix('%')?.parse().ok())
        .collect();
    assert_eq!(figures.len(), 2, "{goodput}");
    let (inspect, all) = next("inspect commands");
    assert!(
        inspect.contains(&format!(
            "rafael proposals show {id} --admin http://{admin}"
        )),
        "{all}"
    );
    let (status, _, body) = http_get(admin, &format!("/v1/proposals/{id}"));
    assert_eq!(status, 200, "{body}");
    let proposal = json_of(&body);
    assert_eq!(proposal["route"], "orders-read", "{body}");
    assert_eq!(proposal["model"]["trusted"], true, "{body}");
    assert_eq!(proposal["canary"]["state"], "passed", "{body}");
    let lineage = json_of(&http_get(admin, "/v1/routes/orders-read/genomes").2);
    let applied =
        &lineage["genomes"].as_array().unwrap()[lineage["genomes"].as_array().unwrap().len() - 2];
    assert_eq!(
        (
            applied["generation"].as_u64(),
            applied["proposal_id"].as_i64()
        ),
        (Some(2), Some(id)),
        "{lineage}"
    );
    eprintln!("{all}");
    assert_eq!(json_of(&http_get(admin, "/v1/audit/verify").2)["ok"], true);
    interrupt_demo(child);
}

/// `rafael demo ARGS...` on ports the kernel picks: the child, the lines it prints as they
/// come, and its proxy and admin addresses, read from the URLs it prints first.
fn spawn_demo(args: &[&str]) -> (Demo, mpsc::Receiver<String>, SocketAddr, SocketAddr) {
    let mut child = Command::new(RAFAEL)
        .args(["demo", "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let child = Demo(Some(child));
    let (tx, rx) = mpsc::channel();
    // Keep reading until the demo exits, so it never writes into a closed pipe.
    thread::spawn(move || {
        for line in stdout.lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (mut proxy, mut metrics) = (None, None);
    while metrics.is_none() {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the demo prints its URLs");
        let url = line
            .split_whitespace()
            .nth(1)
            .unwrap_or_default()
            .to_owned();
        if line.trim_start().starts_with("proxy") {
            proxy = Some(url);
        } else if line.trim_start().starts_with("metrics") {
            metrics = Some(url);
        }
    }
    let address = |url: &str| -> SocketAddr {
        url.trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let proxy = address(&proxy.expect("the proxy URL is printed"));
    let admin = address(&metrics.expect("the metrics URL is printed"));
    (child, rx, proxy, admin)
}

/// A running demo, killed if the test ends without stopping it (a failed assertion), so it
/// does not go on loading the machine under the tests that follow.
struct Demo(Option<Child>);

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Stops the demo with Ctrl-C and waits for it to exit 0.
fn interrupt_demo(mut demo: Demo) {
    let mut child = demo.0.take().unwrap();
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status.code();
        }
        assert!(Instant::now() < deadline, "demo did not stop");
        thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(code, Some(0));
}
