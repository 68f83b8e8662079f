//! The admin API's OpenAPI 3.1 document, served at `/v1/openapi.json`.
//!
//! [`OPERATIONS`] lists every endpoint the admin router serves; the document is built from it,
//! and a test drives the real router with each entry (it must answer, not 404) and with every
//! endpoint DESIGN §5 names that is not in the list (it must 404), so the document and the
//! router cannot drift apart.

use serde_json::{Value, json};

use crate::{auth::Permission, guardian::proposal::ProposalState};

/// One documented operation.
#[derive(Debug, Clone, Copy)]
pub struct Operation {
    /// HTTP method, lower case.
    pub method: &'static str,
    /// Path.
    pub path: &'static str,
    /// What it needs; `None` for the open endpoints (probes, metrics, this document).
    pub permission: Option<Permission>,
    /// One line.
    pub summary: &'static str,
    /// The schema of its 200 response.
    pub response: &'static str,
}

/// Every operation the admin router serves.
pub const OPERATIONS: &[Operation] = &[
    Operation {
        method: "get",
        path: "/metrics",
        permission: None,
        summary: "Prometheus text exposition of every rafael_* metric",
        response: "PrometheusText",
    },
    Operation {
        method: "get",
        path: "/healthz",
        permission: None,
        summary: "Liveness: the process answers",
        response: "Status",
    },
    Operation {
        method: "get",
        path: "/readyz",
        permission: None,
        summary: "Readiness: listeners bound, not draining, and the store usable (503 with a reason otherwise)",
        response: "Status",
    },
    Operation {
        method: "get",
        path: "/",
        permission: None,
        summary: "The dashboard: one page (its assets under /assets/), served from the binary; it asks for a token when /v1 does",
        response: "Html",
    },
    Operation {
        method: "get",
        path: "/v1/events",
        permission: Some(Permission::Read),
        summary: "Server-sent events for the dashboard: `hello` {audit_id}, then every second `routes` (each route's live figures, as in GET /v1/routes), `breaker` {route, endpoint, from, to} on a breaker's change, and one event per new audit entry named by its action's family (proposal, genome, canary, experiment, guardrail, evolution, vault, config) with the entry as data",
        response: "EventStream",
    },
    Operation {
        method: "get",
        path: "/v1/threats",
        permission: Some(Permission::Read),
        summary: "The Chaos Forge's threat table: every threat at every severity and what it injects",
        response: "ThreatTable",
    },
    Operation {
        method: "get",
        path: "/v1/routes/{route}/series",
        permission: Some(Permission::Read),
        summary: "The route's last `secs` complete seconds (300 by default, 600 at most): per second its start (Unix seconds), requests, success share and p99 (404 for an unknown route)",
        response: "Series",
    },
    Operation {
        method: "get",
        path: "/v1/openapi.json",
        permission: None,
        summary: "This document",
        response: "OpenApi",
    },
    Operation {
        method: "get",
        path: "/v1/audit",
        permission: Some(Permission::Read),
        summary: "Audit log entries with an id above `after`, oldest first (at most `limit`, 1000)",
        response: "AuditList",
    },
    Operation {
        method: "get",
        path: "/v1/audit/verify",
        permission: Some(Permission::Read),
        summary: "Recompute the audit log's hash chain and name the first broken entry",
        response: "Verification",
    },
    Operation {
        method: "get",
        path: "/v1/experiments",
        permission: Some(Permission::Read),
        summary: "Every experiment, newest first",
        response: "ExperimentList",
    },
    Operation {
        method: "post",
        path: "/v1/experiments",
        permission: Some(Permission::Operate),
        summary: "Start an experiment (body: ExperimentSpec); answered 201 with the experiment",
        response: "Experiment",
    },
    Operation {
        method: "get",
        path: "/v1/experiments/{id}",
        permission: Some(Permission::Read),
        summary: "One experiment",
        response: "Experiment",
    },
    Operation {
        method: "post",
        path: "/v1/experiments/{id}/stop",
        permission: Some(Permission::Operate),
        summary: "Stop a running experiment; its faults are removed",
        response: "Experiment",
    },
    Operation {
        method: "get",
        path: "/v1/experiments/{id}/report",
        permission: Some(Permission::Read),
        summary: "The report: steady state before, during and after, what was injected, what the policies did, a verdict and recommendations (409 until ready)",
        response: "Report",
    },
    Operation {
        method: "get",
        path: "/v1/routes",
        permission: Some(Permission::Read),
        summary: "Every route with its upstream, live genome and generation, and the snapshot version",
        response: "RouteList",
    },
    Operation {
        method: "get",
        path: "/v1/routes/{route}/genomes",
        permission: Some(Permission::Read),
        summary: "The route's lineage: every genome it has run, newest first (at most `limit`, 1000), each with its generation, source (file, proposal, rollback), when, by whom, the proposal and what a rollback restored; `generation` is the live one",
        response: "Lineage",
    },
    Operation {
        method: "post",
        path: "/v1/routes/{route}/rollback",
        permission: Some(Permission::Approve),
        summary: "Make an earlier generation's genome live again {\"to\": GENERATION, \"comment\": \"...\"}, as a new generation that says which it restores; audited as genome.rolled_back (404 for an unknown generation, 409 for the live one)",
        response: "GenomeRecord",
    },
    Operation {
        method: "get",
        path: "/v1/vault/patterns",
        permission: Some(Permission::Read),
        summary: "Vault patterns matching every filter given: `q` (words in the name, description, tags or stacks), `category`, `tag`, `stack` (patterns for `any` stack match every stack); 400 naming an unknown category",
        response: "PatternList",
    },
    Operation {
        method: "get",
        path: "/v1/vault/patterns/{name}",
        permission: Some(Permission::Read),
        summary: "One vault pattern: category, tags, stacks, when to use it, its genome (404 for an unknown name)",
        response: "Pattern",
    },
    Operation {
        method: "post",
        path: "/v1/vault/patterns",
        permission: Some(Permission::Approve),
        summary: "Save a pattern {\"name\", \"description\", \"genome\" or \"from\": {\"route\", \"generation\"}, \"category\"?, \"tags\"?, \"stacks\"?} (201); checked like a config and against every invariant (422 with every finding's key path), a name is taken once (409), audited as vault.saved",
        response: "Pattern",
    },
    Operation {
        method: "get",
        path: "/v1/routes/{route}/model",
        permission: Some(Permission::Read),
        summary: "The route's upstream model, fitted now from its telemetry (404 for an unknown route, 409 with the request counts until the window holds [evolution].min_requests)",
        response: "Model",
    },
    Operation {
        method: "get",
        path: "/v1/proposals",
        permission: Some(Permission::Read),
        summary: "Proposals, newest first, in `state` and of `route` when given (at most `limit`, 1000; 400 naming an unknown state)",
        response: "ProposalList",
    },
    Operation {
        method: "get",
        path: "/v1/proposals/{id}",
        permission: Some(Permission::Read),
        summary: "One proposal with its evidence: the diff, the predicted impact per scenario, the model's fidelity, the guardrails' verdict, the approvals",
        response: "Proposal",
    },
    Operation {
        method: "get",
        path: "/v1/evolution/rounds",
        permission: Some(Permission::Read),
        summary: "Evolution rounds, newest first, of `route` when given (at most `limit`, 1000)",
        response: "RoundList",
    },
    Operation {
        method: "get",
        path: "/v1/evolution/rounds/{id}",
        permission: Some(Permission::Read),
        summary: "One evolution round: how far it got, the fitness it found, and why it ended as it did",
        response: "Round",
    },
    Operation {
        method: "post",
        path: "/v1/evolution/{route}/run",
        permission: Some(Permission::Operate),
        summary: "Start an evolution round on the route now; 202 with the round (already `skipped`, with the reason, when the route lacks telemetry, has evolution off or an untrusted model; 409 while one runs). Optional body {\"seed\": N}",
        response: "Round",
    },
    Operation {
        method: "post",
        path: "/v1/proposals",
        permission: Some(Permission::Operate),
        summary: "A hand-written proposal {\"route\": R, \"genome\": {...}} (a [routes.policy] table as JSON): checked against the guardrails and invariants (422 naming each gene's key path and rule, audited as guardrail.refused), given the same simulated evidence as evolution's, stored pending (201)",
        response: "Proposal",
    },
    Operation {
        method: "post",
        path: "/v1/proposals/{id}/approve",
        permission: Some(Permission::Approve),
        summary: "Approve a pending proposal, with an optional {\"comment\": \"...\"}: it is `approved` once [guardian].approvals_required distinct approvers have (its author never counts; the same approver twice counts once), and the approval that completes it applies it (a new generation, then watched: `applied`, or `kept` with no watch; 409 when the route's genome changed under it); answers the proposal",
        response: "Proposal",
    },
    Operation {
        method: "post",
        path: "/v1/proposals/{id}/reject",
        permission: Some(Permission::Approve),
        summary: "Reject a pending proposal, with an optional {\"comment\": \"...\"}: one reject ends it (its author may reject, withdrawing it); answers the proposal",
        response: "Proposal",
    },
    Operation {
        method: "post",
        path: "/v1/simulate",
        permission: Some(Permission::Operate),
        summary: "Simulate the route's live genome (`incumbent`) and the request's candidates under scenarios, on its model fitted now: one row per genome and scenario, mean/min/max over the seeds",
        response: "SimulateResponse",
    },
];

/// The document.
pub fn document() -> Value {
    let mut paths = serde_json::Map::new();
    for op in OPERATIONS {
        let mut responses = json!({
            "200": {
                "description": "OK",
                "content": { content_type(op.response): {
                    "schema": { "$ref": format!("#/components/schemas/{}", op.response) }
                }}
            }
        });
        let mut operation = json!({ "summary": op.summary });
        if let Some(permission) = op.permission {
            operation["security"] = json!([{ "bearer": [] }]);
            operation["x-rafael-permission"] = json!(format!("{permission:?}").to_lowercase());
            responses["401"] = error_response("No valid bearer token");
            responses["403"] = error_response("The token's role may not do this");
        }
        if op.path.contains("{id}") {
            operation["parameters"] = json!([{ "name": "id", "in": "path", "required": true, "schema": { "type": "integer" } }]);
        }
        if op.method == "post" && op.path == "/v1/experiments" {
            operation["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/ExperimentSpec" } } }
            });
            responses["201"] = responses["200"].take();
            if let Some(map) = responses.as_object_mut() {
                map.remove("200");
            }
            responses["400"] = error_response("The spec is invalid");
            responses["413"] = error_response("The body is larger than 1 MiB");
            responses["415"] = error_response("The body is not declared as application/json");
        }
        if op.path == "/v1/evolution/{route}/run" {
            responses["202"] = responses["200"].take();
            if let Some(map) = responses.as_object_mut() {
                map.remove("200");
            }
            responses["400"] = error_response("The body is not {\"seed\": N}");
            responses["409"] = error_response("A round is already running on the route");
        }
        if op.method == "post" && op.path == "/v1/proposals" {
            responses["201"] = responses["200"].take();
            if let Some(map) = responses.as_object_mut() {
                map.remove("200");
            }
            operation["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": {
                    "type": "object",
                    "properties": { "route": { "type": "string" }, "genome": { "type": "object" } },
                    "required": ["route", "genome"],
                    "additionalProperties": false
                } } }
            });
            responses["400"] = error_response(
                "The body is not {route, genome}, or the genome is invalid (with key paths)",
            );
            responses["404"] = error_response("No route of that name");
            responses["422"] = error_response(
                "The genome breaks guardrails or invariants (`violations`: each gene's key path and rule), or is the live genome",
            );
        }
        if op.path.starts_with("/v1/proposals/{id}/") {
            operation["requestBody"] = json!({
                "required": false,
                "content": { "application/json": { "schema": {
                    "type": "object",
                    "properties": { "comment": { "type": "string", "maxLength": 2000 } },
                    "additionalProperties": false
                } } }
            });
            responses["400"] = error_response(
                "The body is not {\"comment\": \"...\"}, or the comment is over 2000 characters",
            );
            responses["403"] = error_response(
                "The caller's role may not approve, or the caller wrote the proposal (approving only)",
            );
            responses["404"] = error_response("No proposal with that id");
            responses["409"] = error_response("The proposal is no longer pending");
        }
        if op.path == "/v1/simulate" {
            operation["requestBody"] = json!({
                "required": true,
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/SimulateRequest" } } }
            });
            responses["400"] = error_response(
                "An unknown scenario or severity (named), a duration over 10 minutes, seeds out of 1..=100, or an invalid genome (with key paths)",
            );
            responses["404"] = error_response("No route of that name");
            responses["409"] = json!({
                "description": "Not enough telemetry to fit the route's model",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/NotEnoughTelemetry" } } }
            });
            responses["413"] = error_response("The body is larger than 1 MiB");
        }
        if op.path.contains("{id}") || op.path == "/v1/audit" {
            responses["400"] = error_response("A path id or query parameter is malformed");
        }
        if op.path.contains("{id}") {
            responses["404"] = error_response("Nothing with that id");
        }
        if op.path == "/v1/proposals" {
            operation["parameters"] = json!([
                { "name": "state", "in": "query", "schema": { "$ref": "#/components/schemas/ProposalState" } },
                { "name": "route", "in": "query", "schema": { "type": "string" } },
                limit_parameter()
            ]);
            responses["400"] = error_response("An unknown state, or a malformed limit");
        }
        if op.path == "/v1/evolution/rounds" {
            operation["parameters"] = json!([
                { "name": "route", "in": "query", "schema": { "type": "string" } },
                limit_parameter()
            ]);
            responses["400"] = error_response("A malformed limit");
        }
        if op.path.contains("{route}") {
            operation["parameters"] = json!([{ "name": "route", "in": "path", "required": true, "schema": { "type": "string" } }]);
            responses["404"] = error_response("No route of that name");
        }
        if op.path.ends_with("/model") {
            responses["409"] = json!({
                "description": "Not enough telemetry: the window holds fewer requests than [evolution].min_requests",
                "content": { "application/json": { "schema": { "$ref": "#/components/schemas/NotEnoughTelemetry" } } }
            });
        }
        if op.path == "/v1/audit" {
            operation["parameters"] = json!([
                { "name": "after", "in": "query", "schema": { "type": "integer", "minimum": 0 } },
                { "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000 } }
            ]);
        }
        operation["responses"] = responses;
        let entry = paths.entry(op.path).or_insert_with(|| json!({}));
        entry[op.method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "rafael admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Roles: viewer (read), operator (experiments, evolution runs), approver (approve or reject proposals), admin (all)."
        },
        "paths": paths,
        "components": {
            "securitySchemes": { "bearer": { "type": "http", "scheme": "bearer" } },
            "schemas": schemas()
        }
    })
}

/// The `limit` of a list: at most 1000, 100 when not given.
fn limit_parameter() -> Value {
    json!({ "name": "limit", "in": "query", "schema": { "type": "integer", "minimum": 1, "maximum": 1000, "default": 100 } })
}

fn content_type(schema: &str) -> &'static str {
    match schema {
        "PrometheusText" => "text/plain",
        "Html" => "text/html",
        "EventStream" => "text/event-stream",
        _ => "application/json",
    }
}

fn error_response(description: &str) -> Value {
    json!({
        "description": description,
        "content": { "application/json": { "schema": { "$ref": "#/components/schemas/Error" } } }
    })
}

/// The model (DESIGN §7.1); `fidelity` is null until the model check has run.
fn model_schema() -> Value {
    let number = json!({ "type": "number" });
    let quantiles = json!({
        "type": "object",
        "properties": { "p50_ms": number, "p99_ms": number },
        "required": ["p50_ms", "p99_ms"]
    });
    let check = json!({
        "type": "object",
        "properties": {
            "observed": number,
            "simulated": number,
            "observed_range": {
                "type": "array", "items": number, "minItems": 2, "maxItems": 2,
                "description": "a latency quantile's 95% confidence interval, milliseconds"
            },
            "simulated_rank": {
                "type": "number",
                "description": "a latency quantile's simulated value as a share of the observed answers faster than it"
            },
            "simulated_range": {
                "type": "array", "items": number, "minItems": 2, "maxItems": 2,
                "description": "the least and the most of the figure over the check's seeds"
            },
            "error": number
        }
    });
    json!({
        "type": "object",
        "properties": {
            "route": { "type": "string" },
            "fitted_at": { "type": "string", "format": "date-time" },
            "window_secs": { "type": "integer" },
            "sampled_secs": { "type": "integer", "description": "Seconds (the newest) the attempt samples cover; endpoint figures and regimes come from them" },
            "requests": { "type": "integer" },
            "arrivals": {
                "type": "object",
                "properties": {
                    "rate_per_sec": number,
                    "burstiness": number,
                    "per_second": { "type": "array", "items": { "type": "integer" } }
                }
            },
            "endpoints": { "type": "array", "items": {
                "type": "object",
                "properties": {
                    "endpoint": { "type": "string" },
                    "samples": { "type": "integer" },
                    "service_time": quantiles,
                    "by_load": { "type": "array", "items": {
                        "type": "object",
                        "properties": { "in_flight": { "type": "integer" }, "samples": { "type": "integer" }, "p50_ms": number, "p99_ms": number }
                    }},
                    "capacity": {
                        "type": ["object", "null"],
                        "description": "null when the endpoint was never seen saturated",
                        "properties": { "concurrency": number, "throughput_per_sec": number, "timeouts_in_fit": { "type": "boolean" } }
                    },
                    "failure": {
                        "type": "object",
                        "properties": {
                            "rate": number, "healthy_rate": number, "burst_rate": number,
                            "mean_burst_secs": number, "mean_healthy_secs": number,
                            "status": { "type": ["integer", "null"] }, "latency_p50_ms": number
                        }
                    },
                    "timeout_rate": number,
                    "abandoned_work": { "type": "boolean" }
                },
                "required": ["endpoint", "service_time", "capacity", "failure", "abandoned_work"]
            }},
            "regimes": { "type": "array", "items": {
                "type": "object",
                "properties": {
                    "kind": { "enum": ["brownout", "outage"] },
                    "share": number, "mean_secs": number, "service_time_factor": number, "failure_rate": number,
                    "periods": { "type": "array", "items": {
                        "type": "object",
                        "properties": { "start_sec": { "type": "integer" }, "secs": { "type": "integer" } }
                    }}
                }
            }},
            "censored_secs": {
                "type": "array", "items": { "type": "integer" },
                "description": "Seconds from the window's start in which half or more of the attempts timed out: the upstream's latency there was not seen"
            },
            "calibration": {
                "type": "object",
                "description": "What the calibration inferred by simulation where the telemetry was censored (absent when it did not run or was not kept)",
                "properties": {
                    "workers": { "type": ["integer", "null"] },
                    "workers_range": { "type": ["array", "null"], "items": { "type": "integer" }, "minItems": 2, "maxItems": 2 },
                    "brownouts": { "type": "array", "items": {
                        "type": "object",
                        "properties": { "start_sec": { "type": "integer" }, "secs": { "type": "integer" }, "service_time_factor": number }
                    }},
                    "loss_before": number, "loss": number, "simulations": { "type": "integer" }
                }
            },
            "fidelity": {
                "type": ["object", "null"],
                "properties": {
                    "goodput": check, "p50_ms": check, "p99_ms": check, "amplification": check,
                    "trusted": { "type": "boolean" }, "reason": { "type": "string" }
                }
            }
        },
        "required": ["route", "fitted_at", "window_secs", "requests", "arrivals", "endpoints", "regimes", "fidelity"]
    })
}

/// A proposal (DESIGN §7.5) and its parts.
fn proposal_schemas() -> Value {
    let objectives = json!({
        "type": "object",
        "properties": {
            "goodput": { "type": "number" }, "latency": { "type": "number" },
            "amplification": { "type": "number" }, "rejected": { "type": "number" },
            "fitness": { "type": "number" }
        },
        "required": ["goodput", "latency", "amplification", "rejected", "fitness"]
    });
    let states: Vec<&str> = ProposalState::ALL.iter().map(|s| s.as_str()).collect();
    json!({
        "ProposalState": { "enum": states },
        "Proposal": {
            "type": "object",
            "properties": {
                "id": { "type": "integer" },
                "route": { "type": "string" },
                "source": { "enum": ["evolution", "manual"] },
                "author": { "type": "string" },
                "state": { "$ref": "#/components/schemas/ProposalState" },
                "created_at": { "type": "string", "format": "date-time" },
                "expires_at": { "type": "string", "format": "date-time" },
                "base_generation": { "type": "integer" },
                "genome": { "type": "object", "description": "The candidate genome, as in [routes.policy]" },
                "diff": { "type": "array", "items": {
                    "type": "object",
                    "properties": { "gene": { "type": "string" }, "from": {}, "to": {} },
                    "required": ["gene", "from", "to"]
                }},
                "predicted": { "type": "array", "items": {
                    "type": "object",
                    "properties": {
                        "scenario": { "type": "string" },
                        "extrapolated": { "type": "boolean" },
                        "incumbent": objectives,
                        "candidate": objectives
                    },
                    "required": ["scenario", "incumbent", "candidate"]
                }},
                "model": {
                    "type": "object",
                    "properties": {
                        "fitted_at": { "type": "string" },
                        "fidelity": { "type": ["object", "null"] },
                        "trusted": { "type": "boolean" }
                    },
                    "required": ["fidelity", "trusted"]
                },
                "guardrails": {
                    "oneOf": [
                        { "const": "passed" },
                        { "type": "array", "items": {
                            "type": "object",
                            "properties": { "gene": { "type": "string" }, "rule": { "type": "string" } },
                            "required": ["gene", "rule"]
                        }}
                    ]
                },
                "approvals": { "type": "array", "items": {
                    "type": "object",
                    "properties": { "by": { "type": "string" }, "at": { "type": "string" }, "comment": { "type": ["string", "null"] }, "decision": { "enum": ["approve", "reject"] } },
                    "required": ["by", "at"]
                }},
                "canary": { "type": ["object", "null"] },
                "watch": { "type": ["object", "null"] },
                "round_id": { "type": "integer", "description": "The evolution round that made it (absent for a hand-written one)" }
            },
            "required": ["id", "route", "source", "author", "state", "created_at", "expires_at", "base_generation", "genome", "diff", "predicted", "model", "guardrails", "approvals"]
        },
        "ProposalList": {
            "type": "object",
            "properties": { "proposals": { "type": "array", "items": { "$ref": "#/components/schemas/Proposal" } } },
            "required": ["proposals"]
        },
        "Round": {
            "type": "object",
            "properties": {
                "id": { "type": "integer" },
                "route": { "type": "string" },
                "state": { "enum": ["running", "completed", "failed", "skipped"] },
                "started_at": { "type": "string", "format": "date-time" },
                "ended_at": { "type": ["string", "null"], "format": "date-time" },
                "generations": { "type": "integer" },
                "evaluations": { "type": "integer" },
                "incumbent_fitness": { "type": ["number", "null"] },
                "best_fitness": { "type": ["number", "null"] },
                "proposal_id": { "type": ["integer", "null"] },
                "reason": { "type": ["string", "null"] },
                "result": { "enum": ["proposed", "no_improvement", "skipped", "failed"], "description": "Once it ended" },
                "patterns": { "type": "array", "items": { "type": "string" }, "description": "The vault patterns its first generation started from" }
            },
            "required": ["id", "route", "state", "started_at", "generations", "evaluations"]
        },
        "Pattern": {
            "type": "object",
            "properties": {
                "name": { "type": "string" },
                "category": { "enum": ["retry", "circuit-breaker", "rate-limit", "concurrency", "timeout", "protection", "composite"] },
                "tags": { "type": "array", "items": { "type": "string" } },
                "stacks": { "type": "array", "items": { "type": "string" } },
                "description": { "type": "string" },
                "genome": { "type": "object" },
                "source": { "enum": ["builtin", "learned"] },
                "learned_from": { "type": ["object", "null"], "description": "For a learned pattern: {route, generation, model} (model: a summary of the upstream it was kept on, null when saved by hand)" },
                "created_at": { "type": "string", "format": "date-time", "description": "When it was stored (stored patterns only)" },
                "author": { "type": "string", "description": "Who stored it: a token name, local, or rafael (learned on a watch)" }
            },
            "required": ["name", "category", "tags", "stacks", "description", "genome", "source"]
        },
        "PatternList": {
            "type": "object",
            "properties": { "patterns": { "type": "array", "items": { "$ref": "#/components/schemas/Pattern" } } },
            "required": ["patterns"]
        },
        "RouteList": {
            "type": "object",
            "properties": {
                "version": { "type": "integer", "description": "The live snapshot's version" },
                "routes": { "type": "array", "items": { "type": "object", "properties": {
                    "name": { "type": "string" }, "upstream": { "type": "string" },
                    "generation": { "type": "integer" }, "genome": { "type": "object" },
                    "live": { "type": "object", "description": "The last 10 complete seconds: rate (req/s), success (share not 5xx), p99_ms, amplification (attempts per request); now: in_flight, generation, canary, endpoints [{address, in_flight, breaker: closed|half_open|open|null}]" }
                }, "required": ["name", "upstream", "generation", "genome", "live"] } }
            },
            "required": ["version", "routes"]
        },
        "GenomeRecord": {
            "type": "object",
            "properties": {
                "route": { "type": "string" },
                "generation": { "type": "integer" },
                "genome": { "type": "object" },
                "source": { "enum": ["file", "proposal", "rollback"] },
                "applied_at": { "type": "string", "format": "date-time" },
                "actor": { "type": "string" },
                "proposal_id": { "type": "integer", "description": "The proposal applied, or the one a rollback undid" },
                "restores": { "type": "integer", "description": "A rollback: the generation whose genome it restored" },
                "reason": { "type": "string" }
            },
            "required": ["route", "generation", "genome", "source", "applied_at", "actor"]
        },
        "Lineage": {
            "type": "object",
            "properties": {
                "route": { "type": "string" },
                "generation": { "type": ["integer", "null"], "description": "The live generation (null when the route is gone)" },
                "genomes": { "type": "array", "items": { "$ref": "#/components/schemas/GenomeRecord" } }
            },
            "required": ["route", "generation", "genomes"]
        },
        "RoundList": {
            "type": "object",
            "properties": { "rounds": { "type": "array", "items": { "$ref": "#/components/schemas/Round" } } },
            "required": ["rounds"]
        }
    })
}

fn schemas() -> Value {
    let mut schemas = base_schemas();
    if let (Some(all), Value::Object(more)) = (schemas.as_object_mut(), proposal_schemas()) {
        all.extend(more);
    }
    schemas
}

fn base_schemas() -> Value {
    json!({
        "PrometheusText": { "type": "string" },
        "Html": { "type": "string" },
        "EventStream": { "type": "string", "description": "text/event-stream: `event: NAME` and `data: JSON` lines, a blank line between events" },
        "ThreatTable": {
            "type": "object",
            "properties": { "threats": { "type": "array", "items": { "type": "object", "properties": {
                "threat": { "enum": ["latency", "upstream-failure", "surge", "brownout", "memory-pressure"] },
                "severity": { "enum": ["low", "medium", "high", "critical"] },
                "injects": { "type": "string" }
            } } } },
            "required": ["threats"]
        },
        "Series": {
            "type": "object",
            "properties": {
                "route": { "type": "string" },
                "secs": { "type": "integer" },
                "points": { "type": "array", "items": { "type": "object", "properties": {
                    "t": { "type": "number" }, "requests": { "type": "integer" },
                    "success": { "type": ["number", "null"] }, "p99_ms": { "type": ["number", "null"] }
                } } }
            },
            "required": ["route", "secs", "points"]
        },
        "SimulateRequest": {
            "type": "object",
            "properties": {
                "route": { "type": "string" },
                "scenarios": { "type": "array", "items": { "type": "string" }, "description": "observed, nominal or THREAT:SEVERITY (default [observed])" },
                "duration": { "type": "string", "description": "virtual time per run, at most 10m (default 60s)" },
                "seeds": { "type": "integer", "minimum": 1, "maximum": 100, "default": 5 },
                "rate": { "type": "number", "description": "requests per second, replacing the observed arrivals" },
                "genomes": { "type": "object", "additionalProperties": { "type": "object" }, "description": "candidate genomes by name" }
            },
            "required": ["route"],
            "additionalProperties": false
        },
        "SimulateResponse": {
            "type": "object",
            "properties": {
                "model": { "$ref": "#/components/schemas/Model" },
                "results": { "type": "array", "items": { "type": "object", "properties": {
                    "genome": { "type": "string" }, "scenario": { "type": "string" }, "extrapolated": { "type": "boolean" },
                    "goodput": { "$ref": "#/components/schemas/Spread" }, "p50_ms": { "$ref": "#/components/schemas/Spread" },
                    "p99_ms": { "$ref": "#/components/schemas/Spread" }, "amplification": { "$ref": "#/components/schemas/Spread" },
                    "rejected": { "$ref": "#/components/schemas/Spread" }, "fitness": { "$ref": "#/components/schemas/Spread" }
                }, "required": ["genome", "scenario", "extrapolated", "goodput", "p50_ms", "p99_ms", "amplification", "rejected", "fitness"] } }
            },
            "required": ["model", "results"]
        },
        "Spread": {
            "type": "object",
            "properties": { "mean": { "type": "number" }, "min": { "type": "number" }, "max": { "type": "number" } },
            "required": ["mean", "min", "max"]
        },
        "OpenApi": { "type": "object" },
        "Status": {
            "type": "object",
            "properties": {
                "status": { "type": "string" },
                "reason": { "type": "string", "description": "Why not ready (503 only)" },
                "policy_version": { "type": "integer" }
            },
            "required": ["status"]
        },
        "Error": {
            "type": "object",
            "properties": { "error": { "type": "string" }, "detail": {} },
            "required": ["error", "detail"]
        },
        "AuditEntry": {
            "type": "object",
            "properties": {
                "id": { "type": "integer" },
                "at": { "type": "string", "format": "date-time" },
                "actor": { "type": "string" },
                "action": { "type": "string" },
                "target": { "type": "string" },
                "details": {},
                "prev_hash": { "type": "string" },
                "hash": { "type": "string" }
            },
            "required": ["id", "at", "actor", "action", "target", "details", "prev_hash", "hash"]
        },
        "AuditList": {
            "type": "object",
            "properties": { "entries": { "type": "array", "items": { "$ref": "#/components/schemas/AuditEntry" } } },
            "required": ["entries"]
        },
        "Experiment": {
            "type": "object",
            "properties": {
                "id": { "type": "integer" },
                "route": { "type": "string" },
                "state": { "enum": ["running", "completed", "aborted", "stopped", "interrupted"] },
                "started_at": { "type": ["string", "null"] },
                "ends_at": { "type": ["string", "null"] },
                "faults": { "type": "array" },
                "abort_when": { "type": "array", "items": { "type": "string" } },
                "abort_reason": { "type": ["string", "null"] }
            },
            "required": ["id", "route", "state"]
        },
        "ExperimentList": {
            "type": "object",
            "properties": { "experiments": { "type": "array", "items": { "$ref": "#/components/schemas/Experiment" } } }
        },
        "ExperimentSpec": {
            "type": "object",
            "properties": {
                "route": { "type": "string" },
                "threat": { "enum": ["latency", "upstream-failure", "surge", "brownout", "memory-pressure"] },
                "severity": { "enum": ["low", "medium", "high", "critical"] },
                "faults": { "type": "array", "items": { "type": "object" } },
                "duration": { "type": "string", "examples": ["60s"] },
                "percent": { "type": "number", "minimum": 0, "maximum": 100 },
                "seed": { "type": "integer" },
                "abort_when": { "type": "array", "items": { "type": "string", "examples": ["error_rate > 0.3", "p99 > 2s"] } }
            },
            "required": ["route", "duration"]
        },
        "Report": { "type": "object" },
        "NotEnoughTelemetry": {
            "type": "object",
            "properties": {
                "error": { "const": "not enough telemetry" },
                "detail": {
                    "type": "object",
                    "properties": { "requests": { "type": "integer" }, "needed": { "type": "integer" } },
                    "required": ["requests", "needed"]
                }
            },
            "required": ["error", "detail"]
        },
        "Model": model_schema(),
        "Verification": {
            "type": "object",
            "properties": {
                "ok": { "type": "boolean" },
                "entries": { "type": "integer" },
                "head": { "type": ["string", "null"] },
                "broken": {
                    "type": ["object", "null"],
                    "properties": { "id": { "type": "integer" }, "reason": { "type": "string" } }
                }
            },
            "required": ["ok", "entries"]
        }
    })
}
