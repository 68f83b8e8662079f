//! Evolution end to end (issue 9), against real upstreams whose truth the tests know: a round
//! on live telemetry proposes a genome with its evidence, the CLI and the API show it, the
//! audit chain records it; and the genome it proposes after a bad day, swapped in, does better
//! on the next bad day, as the simulation predicted, measured by the test's own client.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{process::Command, time::Duration};

use support::{
    RAFAEL, Rafael, audit_actions, http_get, http_post, json_of,
    load::{goodput, open_loop},
    metric_value,
    worker_pool::WorkerPool,
    write_config,
};

const SLO: Duration = Duration::from_millis(300);

/// Small rounds, so a debug build runs one in seconds.
const EVOLUTION: &str = r#"
[evolution]
min_requests = 500
scenarios = ["observed", "nominal"]
population = 8
generations = 4
seeds = 3
duration = "20s"
"#;

fn rafael_cli(args: &[&str]) -> (Option<i32>, String, String) {
    let output = Command::new(RAFAEL).args(args).output().unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_round_on_live_telemetry_proposes_with_its_evidence_and_every_surface_shows_it() {
    // 8 workers at 10 ms, one attempt in five fails: retries are worth their cost.
    let pool = WorkerPool::new(8, Duration::from_millis(10))
        .errors(0.2)
        .seed(3)
        .start()
        .await;
    let dir = tempfile::tempdir().unwrap();
    let config = write_config(
        dir.path(),
        pool.address,
        &format!(
            "[routes.policy]\ntimeout = \"2s\"\n\n[[routes]]\nname = \"quiet\"\nlistener = \"in\"\nupstream = \"app\"\n{EVOLUTION}"
        ),
    );
    let rafael = tokio::task::spawn_blocking(move || Rafael::start(&config))
        .await
        .unwrap();
    let answers = open_loop(
        rafael.proxy,
        "/work",
        100.0,
        8,
        Duration::from_secs(5),
        |_| {},
    )
    .await;
    let live = goodput(&answers, SLO);
    assert!((live - 0.8).abs() < 0.06, "live goodput {live}");

    let admin = format!("http://{}", rafael.admin);
    let admin_address = rafael.admin;
    let (code, out, err) = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || rafael_cli(&["evolve", "main", "--wait", "--seed", "7", "--admin", &admin])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("proposed") && out.contains("is pending"),
        "{out}"
    );

    let checks = tokio::task::spawn_blocking(move || {
        let (status, _, body) = http_get(admin_address, "/v1/proposals?state=pending&route=main");
        assert_eq!(status, 200, "{body}");
        let proposals = json_of(&body)["proposals"].as_array().unwrap().clone();
        assert_eq!(proposals.len(), 1, "{body}");
        let proposal = &proposals[0];
        assert_eq!(proposal["source"], "evolution");
        assert_eq!(proposal["author"], "rafael");
        assert_eq!(proposal["guardrails"], "passed");
        assert_eq!(proposal["model"]["trusted"], true, "{}", proposal["model"]);
        assert!(proposal["genome"]["retry"].is_object(), "{}", proposal["genome"]);
        let diff = proposal["diff"].as_array().unwrap();
        assert!(diff.iter().any(|d| d["gene"] == "retry"), "{diff:?}");
        let observed = proposal["predicted"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["scenario"] == "observed")
            .unwrap()
            .clone();
        let predicted_incumbent = observed["incumbent"]["goodput"].as_f64().unwrap();
        let predicted_candidate = observed["candidate"]["goodput"].as_f64().unwrap();
        assert!(predicted_candidate > predicted_incumbent + 0.1, "{observed}");
        // The incumbent's prediction on the observed window is what the client saw.
        assert!((predicted_incumbent - live).abs() < 0.05, "{predicted_incumbent} vs {live}");

        let (_, _, body) = http_get(admin_address, "/v1/evolution/rounds?route=main");
        let rounds = json_of(&body)["rounds"].as_array().unwrap().clone();
        assert_eq!(rounds[0]["result"], "proposed", "{body}");
        assert_eq!(rounds[0]["proposal_id"], proposal["id"]);

        // The bad inputs of the issue.
        let (status, body) = http_post(admin_address, "/v1/simulate", r#"{"route": "main", "scenarios": ["observed", "quake:high"]}"#);
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("quake:high"), "{body}");
        let (status, body) = http_post(admin_address, "/v1/simulate", r#"{"route": "main", "scenarios": ["latency:extreme"]}"#);
        assert_eq!(status, 400, "{body}");
        assert!(body.contains("extreme"), "{body}");
        let (status, _) = http_post(admin_address, "/v1/simulate", r#"{"route": "main", "duration": "11m"}"#);
        assert_eq!(status, 400);
        let (status, _) = http_post(admin_address, "/v1/simulate", r#"{"route": "nope"}"#);
        assert_eq!(status, 404);
        let (status, _) = http_post(admin_address, "/v1/evolution/nope/run", "");
        assert_eq!(status, 404);
        let (status, body) = http_post(
            admin_address,
            "/v1/simulate",
            r#"{"route": "main", "scenarios": ["observed", "latency:high"], "duration": "10s", "seeds": 2,
                "genomes": {"candidate": {"retry": {"max_attempts": 3, "retry_on": ["5xx"], "budget_ratio": 1.0}}}}"#,
        );
        assert_eq!(status, 200, "{body}");
        let answer = json_of(&body);
        assert_eq!(answer["results"].as_array().unwrap().len(), 4, "{body}");
        assert_eq!(answer["model"]["route"], "main");

        let actions = audit_actions(admin_address);
        assert!(actions.iter().any(|a| a == "evolution.round"), "{actions:?}");
        assert!(actions.iter().any(|a| a == "proposal.created"), "{actions:?}");
        let (_, _, metrics) = http_get(admin_address, "/metrics");
        assert_eq!(
            metric_value(&metrics, "rafael_evolution_rounds_total{route=\"main\",result=\"proposed\"}"),
            Some(1.0),
            "{metrics}"
        );
        assert_eq!(metric_value(&metrics, "rafael_proposals_pending"), Some(1.0));
    })
    .await;
    checks.unwrap();

    // The CLI around it: a route without telemetry is skipped with the reason (exit 1), an
    // unknown route is an error, the chaos forge simulates on the model, the chain verifies.
    let (code, out, err) = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || rafael_cli(&["evolve", "quiet", "--wait", "--admin", &admin])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(
        err.contains("skipped: not enough telemetry: 0 requests"),
        "{err}"
    );
    let (code, _, err) = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || rafael_cli(&["evolve", "nope", "--admin", &admin])
    })
    .await
    .unwrap();
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no route named"), "{err}");
    let (code, out, err) = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || {
            rafael_cli(&[
                "chaos",
                "simulate",
                "main",
                "--threat",
                "latency",
                "--severity",
                "high",
                "--seeds",
                "2",
                "--duration",
                "10s",
                "--admin",
                &admin,
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.contains("latency:high") && out.contains("nominal"),
        "{out}"
    );
    let (code, _, err) = tokio::task::spawn_blocking({
        let admin = admin.clone();
        move || {
            rafael_cli(&[
                "chaos",
                "simulate",
                "main",
                "--threat",
                "quake",
                "--severity",
                "high",
                "--admin",
                &admin,
            ])
        }
    })
    .await
    .unwrap();
    assert_eq!(code, Some(2), "{err}");
    let (code, out, err) =
        tokio::task::spawn_blocking(move || rafael_cli(&["audit", "verify", "--admin", &admin]))
            .await
            .unwrap();
    assert_eq!(code, Some(0), "{out}{err}");
}
