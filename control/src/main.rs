//! The `rafael` binary: parse the command line, set up logging and the runtime, run.
//!
//! Exit codes: 0 ok, 1 runtime failure, 2 bad usage or bad config.

use std::{io::Write as _, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use rafael_config::{Config, ConfigErrors, HumanDuration};
use rafael_control::{
    App, AppOptions,
    app::ShutdownSignal,
    demo,
    guardian::proposal::{GeneChange, GuardrailVerdict, Proposal, ProposalState, Source},
};
use rafael_proxy::{Snapshot, server::DrainOutcome};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

// The proxy allocates small, short-lived buffers on every request; mimalloc's thread-local free
// lists serve them several times cheaper than glibc's malloc (measured in benches/README.md).
// Built without transparent huge pages (the `no_thp` feature): with them, each worker thread's
// first heap page is a 2 MiB huge page, and an idle rafael held 9 MB of heap instead of 2.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A block big enough to take an allocator page of its own, so freeing it frees a page.
const PURGE_NUDGE_BYTES: usize = 4 << 20;

/// Hands memory freed after a burst back to the OS while rafael is quiet.
///
/// mimalloc returns freed pages to the OS only once they have been free for its purge delay
/// (1 s), and only when the process next frees a page of its own. A rafael that goes quiet
/// after a burst of connections would keep the burst's memory until its next busy moment (42 MB
/// against 20 MB after the memory scenario's 1,000-connection burst). So once a second this
/// allocates and frees one block that takes a page of its own, and that free runs the purge.
/// `mi_collect` would do it directly, but calling it takes `unsafe`, which this workspace forbids.
async fn purge_freed_memory() {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        // black_box keeps the optimiser from eliding the allocation.
        drop(std::hint::black_box(Vec::<u8>::with_capacity(
            PURGE_NUDGE_BYTES,
        )));
    }
}

/// RAFAEL: an adaptive resilience sidecar.
#[derive(Debug, Parser)]
#[command(
    name = "rafael",
    version = concat!(env!("CARGO_PKG_VERSION"), " (commit ", env!("RAFAEL_COMMIT"), ")"),
    about
)]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the sidecar: data plane and embedded control plane.
    Run {
        /// Config file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run rafael in front of a built-in flaky demo service, with bounded built-in traffic.
    Demo {
        /// Address of the demo's proxy listener.
        #[arg(long, default_value = "127.0.0.1:15001")]
        listen: SocketAddr,
        /// Address of the demo's admin listener.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Built-in traffic, requests per second (0 for none).
        #[arg(long, default_value_t = 20)]
        rate: u32,
        /// How long the built-in traffic runs.
        #[arg(long, default_value = "10m")]
        traffic_duration: HumanDuration,
        /// Runs the demo service's day this many times faster (for tests).
        #[arg(long, default_value_t = 1.0, hide = true)]
        speed: f64,
    },
    /// Work with config files.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Manage admin API tokens.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Live chaos experiments, through a running rafael's admin API.
    Chaos {
        #[command(subcommand)]
        command: ChaosCommand,
        /// The admin API's address.
        #[arg(long, global = true, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// A bearer token (needed when the admin API has a tokens file).
        #[arg(long, global = true, env = "RAFAEL_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Print a shell completion script: `rafael completions bash > /etc/bash_completion.d/rafael`,
    /// `rafael completions zsh > "${fpath[1]}/_rafael"`, `rafael completions fish >
    /// ~/.config/fish/completions/rafael.fish`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Whether a running rafael is ready (its `/readyz` answers 200): exit 0, or 1 saying why.
    /// For container health checks where there is no curl.
    Health {
        /// The admin API's address.
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// How long to wait for the answer.
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// The fitted model of ROUTE's upstream, through a running rafael's admin API.
    Model {
        /// The route.
        route: String,
        /// Print the raw JSON object instead.
        #[arg(long)]
        json: bool,
        /// The admin API's address.
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// A bearer token (needed when the admin API has a tokens file).
        #[arg(long, env = "RAFAEL_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Run one evolution round on ROUTE now, through a running rafael's admin API.
    Evolve {
        /// The route.
        route: String,
        /// Wait for the round to end and print its result (exit 1 when it was skipped).
        #[arg(long)]
        wait: bool,
        /// The round's seed: the same telemetry and seed give the same proposal.
        #[arg(long)]
        seed: Option<u64>,
        /// The admin API's address.
        #[arg(long, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// A bearer token (needed when the admin API has a tokens file).
        #[arg(long, env = "RAFAEL_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// The genomes ROUTE has run (its lineage), and rollbacks, through a running rafael's
    /// admin API: `rafael genomes ROUTE`, `rafael genomes rollback ROUTE --to GENERATION`.
    #[command(args_conflicts_with_subcommands = true)]
    Genomes {
        /// The route whose lineage to print.
        route: Option<String>,
        #[command(subcommand)]
        command: Option<GenomesCommand>,
        /// Print the raw JSON instead.
        #[arg(long, global = true)]
        json: bool,
        /// The admin API's address.
        #[arg(long, global = true, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// A bearer token (needed when the admin API has a tokens file).
        #[arg(long, global = true, env = "RAFAEL_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// The pattern vault, through a running rafael's admin API: `rafael vault search [QUERY]
    /// [--category C] [--tag T] [--stack S]`, `rafael vault show NAME`.
    Vault {
        #[command(subcommand)]
        command: VaultCommand,
        /// Print the raw JSON instead.
        #[arg(long, global = true)]
        json: bool,
        /// The admin API's address.
        #[arg(long, global = true, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// A bearer token (needed when the admin API has a tokens file).
        #[arg(long, global = true, env = "RAFAEL_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Proposals and their evidence, through a running rafael's admin API.
    Proposals {
        #[command(subcommand)]
        command: ProposalsCommand,
        /// The admin API's address.
        #[arg(long, global = true, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// A bearer token (needed when the admin API has a tokens file).
        #[arg(long, global = true, env = "RAFAEL_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Read and check the audit log: through a running rafael's admin API, or with `--config`
    /// straight from its store (offline).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
        /// The admin API's address (without `--config`).
        #[arg(long, global = true, default_value = "http://127.0.0.1:9901")]
        admin: String,
        /// A bearer token for the admin API.
        #[arg(long, global = true, env = "RAFAEL_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ChaosCommand {
    /// Start an experiment on ROUTE and print it.
    Run {
        /// The route.
        route: String,
        /// A threat: latency, upstream-failure, surge, brownout or memory-pressure.
        #[arg(long, requires = "severity", conflicts_with = "fault")]
        threat: Option<String>,
        /// The threat's severity: low, medium, high, critical.
        #[arg(long)]
        severity: Option<String>,
        /// An explicit fault rule as JSON, e.g. '{"stage": "upstream", "abort": 503}'.
        #[arg(long)]
        fault: Vec<String>,
        /// How long it runs (e.g. 60s).
        #[arg(long)]
        duration: String,
        /// Share of traffic every rule applies to, 0..=100.
        #[arg(long)]
        percent: Option<f64>,
        /// Recorded with the experiment.
        #[arg(long)]
        seed: Option<u64>,
        /// Abort condition, e.g. 'error_rate > 0.3' or 'p99 > 2s' (repeatable).
        #[arg(long = "abort-when")]
        abort_when: Vec<String>,
    },
    /// Stop a running experiment.
    Stop {
        /// Its id.
        id: i64,
    },
    /// List experiments, newest first.
    List,
    /// Print an experiment's report.
    Report {
        /// Its id.
        id: i64,
    },
    /// The predicted effect of a threat on ROUTE's live genome (and on a candidate), on its
    /// fitted model, beside the same genomes without the threat.
    Simulate {
        /// The route.
        route: String,
        /// A threat: latency, upstream-failure, surge, brownout or memory-pressure.
        #[arg(long)]
        threat: String,
        /// The threat's severity: low, medium, high, critical.
        #[arg(long)]
        severity: String,
        /// A candidate genome: a TOML file in the form of a `[routes.policy]` table.
        #[arg(long)]
        genome: Option<std::path::PathBuf>,
        /// Seeds per scenario (default 5).
        #[arg(long)]
        seeds: Option<u32>,
        /// Virtual time per run (default 60s, at most 10m).
        #[arg(long)]
        duration: Option<String>,
        /// Print the raw JSON answer instead.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum VaultCommand {
    /// Patterns whose name, description, tags or stacks hold every word of QUERY.
    Search {
        /// Words to look for (any case).
        query: Vec<String>,
        /// Only this category (retry, circuit-breaker, rate-limit, concurrency, timeout,
        /// protection, composite).
        #[arg(long)]
        category: Option<String>,
        /// Only patterns with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only patterns for this stack (grpc, node, python-wsgi, jvm, postgrest, ...).
        #[arg(long)]
        stack: Option<String>,
    },
    /// One pattern: when to use it, and its genome as `[routes.policy]`.
    Show {
        /// The pattern's name.
        name: String,
    },
    /// Save a genome as a pattern (role approver): from a TOML file of `[routes.policy]` keys,
    /// or a route's generation (`--route R --generation G`).
    Save {
        /// The new pattern's name (lower-case letters, digits and '-').
        name: String,
        /// When to use it.
        #[arg(long)]
        description: String,
        /// The genome: a TOML file holding a `[routes.policy]` table's keys.
        #[arg(long, conflicts_with_all = ["route", "generation"], required_unless_present = "route")]
        genome: Option<PathBuf>,
        /// The route whose lineage holds the genome.
        #[arg(long, requires = "generation")]
        route: Option<String>,
        /// The generation of that route.
        #[arg(long, requires = "route")]
        generation: Option<u64>,
        /// Its category (derived from the genome's sections when not given).
        #[arg(long)]
        category: Option<String>,
        /// A tag (repeatable).
        #[arg(long = "tag")]
        tags: Vec<String>,
        /// A stack it suits (repeatable; `any` when none).
        #[arg(long = "stack")]
        stacks: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum GenomesCommand {
    /// Make an earlier generation's genome live again (as a new generation; approver).
    Rollback {
        /// The route.
        route: String,
        /// The generation whose genome goes live again.
        #[arg(long)]
        to: u64,
        /// Why, for the audit log.
        #[arg(long)]
        comment: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ProposalsCommand {
    /// List proposals, newest first: id, route, state, source, created, what changes.
    List {
        /// Only proposals in this state (pending, approved, canary, applied, kept,
        /// rolled_back, rejected, expired, superseded).
        #[arg(long, value_parser = proposal_state)]
        state: Option<ProposalState>,
        /// Only proposals for this route.
        #[arg(long)]
        route: Option<String>,
        /// Print the raw JSON answer instead.
        #[arg(long)]
        json: bool,
    },
    /// Show a proposal: its diff, the predicted impact per scenario, the model's fidelity and
    /// the guardrails' verdict.
    Show {
        /// Its id.
        id: i64,
        /// Print the raw JSON object instead.
        #[arg(long)]
        json: bool,
    },
    /// Propose a genome by hand (role operator): checked against the guardrails, given the
    /// same simulated evidence as evolution's, stored pending for approvers.
    Create {
        /// The route.
        route: String,
        /// The genome: a TOML file holding a `[routes.policy]` table's keys.
        #[arg(long)]
        genome: PathBuf,
        /// Print the raw JSON object instead.
        #[arg(long)]
        json: bool,
    },
    /// Approve a pending proposal (role approver). It is approved once
    /// `[guardian].approvals_required` distinct approvers have; its author never counts.
    Approve {
        /// Its id.
        id: i64,
        /// Why, kept on the proposal and in the audit log.
        #[arg(long)]
        comment: Option<String>,
        /// Print the raw JSON object instead.
        #[arg(long)]
        json: bool,
    },
    /// Reject a pending proposal (role approver): one reject ends it.
    Reject {
        /// Its id.
        id: i64,
        /// Why, kept on the proposal and in the audit log.
        #[arg(long)]
        comment: Option<String>,
        /// Print the raw JSON object instead.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Append a token to the tokens file (created if missing) and print its secret, once: only
    /// its SHA-256 is stored.
    Add {
        /// The token's name: the audit log's actor for its calls.
        name: String,
        /// What it may do.
        #[arg(long, value_enum)]
        role: RoleArg,
        /// The tokens file.
        #[arg(long, required_unless_present = "config", conflicts_with = "config")]
        file: Option<PathBuf>,
        /// A config file whose `[admin].tokens_file` to use instead.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Viewer,
    Operator,
    Approver,
    Admin,
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Print entries, oldest first, one JSON object per line.
    List {
        /// Read the store of this config file directly instead of asking the admin API.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Only entries with an id above this.
        #[arg(long, default_value_t = 0)]
        after: i64,
        /// At most this many entries.
        #[arg(long, default_value_t = 1000)]
        limit: u32,
    },
    /// Recompute the hash chain: exit 0 when it holds, 1 naming the first broken entry.
    Verify {
        /// Read the store of this config file directly instead of asking the admin API.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCommand {
    /// Validate a config file: exit 0, or exit 2 listing every error with its key path.
    Check {
        /// Config file (TOML).
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_format);
    match cli.command {
        Command::Config {
            command: ConfigCommand::Check { file },
        } => check(&file),
        Command::Run { config } => {
            let parsed = match load(&config) {
                Ok(parsed) => parsed,
                Err(code) => return code,
            };
            let threads = parsed.runtime.worker_threads;
            block_on(
                threads,
                run(
                    parsed,
                    AppOptions {
                        config_path: Some(config),
                    },
                ),
            )
        }
        Command::Audit {
            command,
            admin,
            token,
        } => audit(command, &admin, token.as_deref()),
        Command::Chaos {
            command,
            admin,
            token,
        } => chaos(command, &admin, token.as_deref()),
        Command::Vault {
            command,
            json,
            admin,
            token,
        } => match command {
            VaultCommand::Search {
                query,
                category,
                tag,
                stack,
            } => rafael_control::cli::vault::search(
                &query,
                category.as_deref(),
                tag.as_deref(),
                stack.as_deref(),
                json,
                &admin,
                token.as_deref(),
            ),
            VaultCommand::Show { name } => {
                rafael_control::cli::vault::show(&name, json, &admin, token.as_deref())
            }
            VaultCommand::Save {
                name,
                description,
                genome,
                route,
                generation,
                category,
                tags,
                stacks,
            } => rafael_control::cli::vault::save(
                &rafael_control::cli::vault::NewPattern {
                    name,
                    description,
                    genome,
                    from: route.zip(generation),
                    category,
                    tags,
                    stacks,
                },
                json,
                &admin,
                token.as_deref(),
            ),
        },
        Command::Genomes {
            route,
            command,
            json,
            admin,
            token,
        } => match (command, route) {
            (Some(GenomesCommand::Rollback { route, to, comment }), _) => {
                rafael_control::cli::genomes::rollback(
                    &route,
                    to,
                    comment.as_deref(),
                    json,
                    &admin,
                    token.as_deref(),
                )
            }
            (None, Some(route)) => {
                rafael_control::cli::genomes::list(&route, json, &admin, token.as_deref())
            }
            (None, None) => {
                eprintln!(
                    "error: name a route (`rafael genomes ROUTE`) or roll one back \
                     (`rafael genomes rollback ROUTE --to GENERATION`)"
                );
                ExitCode::from(2)
            }
        },
        Command::Evolve {
            route,
            wait,
            seed,
            admin,
            token,
        } => rafael_control::cli::evolve::evolve(&route, wait, seed, &admin, token.as_deref()),
        Command::Proposals {
            command,
            admin,
            token,
        } => proposals(command, &admin, token.as_deref()),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            use std::io::Write;
            // Into memory first: clap_complete panics on a write error, and a reader that
            // stops early (`| head`) is no error of ours.
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "rafael", &mut script);
            let _ = std::io::stdout().write_all(&script);
            ExitCode::SUCCESS
        }
        Command::Health { admin, timeout } => rafael_control::cli::health::health(&admin, timeout),
        Command::Model {
            route,
            json,
            admin,
            token,
        } => model(&route, json, &admin, token.as_deref()),
        Command::Token {
            command:
                TokenCommand::Add {
                    name,
                    role,
                    file,
                    config,
                },
        } => add_token(&name, role, file, config),
        Command::Demo {
            listen,
            admin,
            rate,
            traffic_duration,
            speed,
        } => block_on(
            None,
            run_demo(listen, admin, rate, traffic_duration.get(), speed),
        ),
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_env("RAFAEL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn block_on(
    worker_threads: Option<u32>,
    task: impl Future<Output = anyhow::Result<()>>,
) -> ExitCode {
    // One worker gets the current-thread scheduler: no work stealing, no cross-thread wakeups.
    // A sidecar limited to one CPU is the common case, and the cheapest there.
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = worker_threads.map_or(cpus, |t| t as usize);
    let mut builder = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(threads);
        builder
    };
    builder.enable_all().thread_name("rafael-worker");
    let runtime = match builder.build() {
        Ok(runtime) => runtime,
        Err(e) => {
            error!("cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e:#}");
            ExitCode::from(1)
        }
    }
}

/// Reads and validates a config file, printing every error with its key path.
fn load(path: &std::path::Path) -> Result<Config, ExitCode> {
    let text = rafael_control::config_file::read(path).map_err(|e| {
        eprintln!("error: {e}");
        ExitCode::from(2)
    })?;
    let report = |errors: &ConfigErrors| {
        eprintln!("{}: {} error(s)", path.display(), errors.len());
        for e in errors.iter() {
            eprintln!("  {e}");
        }
        ExitCode::from(2)
    };
    let mut config = rafael_config::parse(&text).map_err(|errors| report(&errors))?;
    rafael_control::vault::resolve(&mut config).map_err(|errors| report(&errors))?;
    for warning in config.deprecations() {
        eprintln!("{}: warning: {warning}", path.display());
    }
    // Building the snapshot loads TLS material and compiles routes: catch those errors here too.
    Snapshot::build(config.clone(), 0, None).map_err(|errors| report(&errors))?;
    if let Some(tokens) = &config.admin.tokens_file {
        let tokens = rafael_control::app::relative_to_config(Some(path), tokens);
        if let Err(e) = rafael_control::auth::Auth::load(Some(&tokens)) {
            let mut errors = ConfigErrors::default();
            errors.push("admin.tokens_file", e.to_string());
            return Err(report(&errors));
        }
    }
    Ok(config)
}

/// `rafael chaos ...`: one call to the admin API; prints its JSON answer. Exit 1 when the API
/// answers an error (printed on stderr), 2 for bad arguments.
fn chaos(command: ChaosCommand, admin: &str, token: Option<&str>) -> ExitCode {
    let admin = admin.trim_end_matches('/');
    let (method, path, body) = match command {
        ChaosCommand::Run {
            route,
            threat,
            severity,
            fault,
            duration,
            percent,
            seed,
            abort_when,
        } => {
            let mut spec = serde_json::json!({ "route": route, "duration": duration, "abort_when": abort_when });
            if let (Some(threat), Some(severity)) = (threat, severity) {
                spec["threat"] = threat.into();
                spec["severity"] = severity.into();
            } else {
                let faults: Result<Vec<serde_json::Value>, _> =
                    fault.iter().map(|f| serde_json::from_str(f)).collect();
                match faults {
                    Ok(faults) => spec["faults"] = faults.into(),
                    Err(e) => {
                        eprintln!("error: --fault is not JSON: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            if let Some(percent) = percent {
                spec["percent"] = percent.into();
            }
            if let Some(seed) = seed {
                spec["seed"] = seed.into();
            }
            ("POST", "/v1/experiments".to_owned(), Some(spec.to_string()))
        }
        ChaosCommand::Stop { id } => ("POST", format!("/v1/experiments/{id}/stop"), None),
        ChaosCommand::List => ("GET", "/v1/experiments".to_owned(), None),
        ChaosCommand::Report { id } => ("GET", format!("/v1/experiments/{id}/report"), None),
        ChaosCommand::Simulate {
            route,
            threat,
            severity,
            genome,
            seeds,
            duration,
            json,
        } => {
            let args = rafael_control::cli::simulate::SimulateArgs {
                route: &route,
                threat: &threat,
                severity: &severity,
                genome: genome.as_deref(),
                seeds,
                duration: duration.as_deref(),
                json,
            };
            return rafael_control::cli::simulate::simulate(&args, admin, token);
        }
    };
    let url = format!("{admin}{path}");
    match rafael_control::cli::call(method, &url, token, body) {
        Ok((status, text)) if (200..300).contains(&status) => {
            let pretty = serde_json::from_str::<serde_json::Value>(&text)
                .ok()
                .and_then(|v| serde_json::to_string_pretty(&v).ok())
                .unwrap_or(text);
            let _ = writeln!(std::io::stdout(), "{pretty}");
            ExitCode::SUCCESS
        }
        Ok((status, text)) => {
            eprintln!("error: {url} answered {status}: {text}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `--state`: a proposal state by its API name; clap prints the error (and exits 2).
fn proposal_state(name: &str) -> Result<ProposalState, String> {
    ProposalState::parse(name).ok_or_else(|| {
        let known: Vec<&str> = ProposalState::ALL.iter().map(|s| s.as_str()).collect();
        format!("unknown state; one of {}", known.join(", "))
    })
}

/// `rafael proposals list|show|approve|reject`: one call to the admin API, the proposal(s) it
/// answers printed for a reader (or raw with `--json`). Exit 1 with the API's error (an
/// unknown id, a role that may not, a proposal no longer pending), 2 when it calls the request
/// bad.
fn proposals(command: ProposalsCommand, admin: &str, token: Option<&str>) -> ExitCode {
    let admin = admin.trim_end_matches('/');
    let (url, json) = match &command {
        ProposalsCommand::List { state, route, json } => {
            let mut query = Vec::new();
            if let Some(state) = state {
                query.push(format!("state={}", state.as_str()));
            }
            if let Some(route) = route {
                query.push(format!("route={}", percent_encode(route)));
            }
            let query = if query.is_empty() {
                String::new()
            } else {
                format!("?{}", query.join("&"))
            };
            (format!("{admin}/v1/proposals{query}"), *json)
        }
        ProposalsCommand::Show { id, json } => (format!("{admin}/v1/proposals/{id}"), *json),
        ProposalsCommand::Create { json, .. } => (format!("{admin}/v1/proposals"), *json),
        ProposalsCommand::Approve { id, json, .. } => {
            (format!("{admin}/v1/proposals/{id}/approve"), *json)
        }
        ProposalsCommand::Reject { id, json, .. } => {
            (format!("{admin}/v1/proposals/{id}/reject"), *json)
        }
    };
    let (method, request) = match &command {
        ProposalsCommand::Create { route, genome, .. } => {
            match rafael_control::cli::simulate::read_genome(genome) {
                Ok(genome) => (
                    "POST",
                    Some(serde_json::json!({ "route": route, "genome": genome }).to_string()),
                ),
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(2);
                }
            }
        }
        ProposalsCommand::Approve { comment, .. } | ProposalsCommand::Reject { comment, .. } => (
            "POST",
            Some(serde_json::json!({ "comment": comment }).to_string()),
        ),
        _ => ("GET", None),
    };
    let body = match rafael_control::cli::call_body(method, &url, token, request) {
        Ok(body) => body,
        Err(code) => return code,
    };
    let mut out = std::io::stdout().lock();
    let written = match command {
        ProposalsCommand::List { .. } => {
            #[derive(serde::Deserialize)]
            struct List {
                proposals: Vec<Proposal>,
            }
            match serde_json::from_str::<List>(&body) {
                Ok(list) if json => pretty(&mut out, &list.proposals),
                Ok(list) => print_proposals(&mut out, &list.proposals),
                Err(e) => {
                    eprintln!("error: {url} answered an unexpected document: {e}");
                    return ExitCode::from(1);
                }
            }
        }
        ProposalsCommand::Show { .. }
        | ProposalsCommand::Create { .. }
        | ProposalsCommand::Approve { .. }
        | ProposalsCommand::Reject { .. } => match serde_json::from_str::<Proposal>(&body) {
            Ok(proposal) if json => pretty(&mut out, &proposal),
            Ok(proposal) => print_proposal(&mut out, &proposal),
            Err(e) => {
                eprintln!("error: {url} answered an unexpected document: {e}");
                return ExitCode::from(1);
            }
        },
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write the answer: {e}");
            ExitCode::from(1)
        }
    }
}

/// `value` as pretty JSON on its own line.
fn pretty(out: &mut impl std::io::Write, value: &impl serde::Serialize) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(std::io::Error::other)?;
    writeln!(out, "{text}")
}

/// `text` for a URL's query: everything but unreserved characters percent-encoded.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                char::from(b).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A gene's value for a reader: a number or a duration as written, `none` when absent.
fn gene_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::Null => "none".to_owned(),
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// One change as `gene from→to`.
fn gene_change(change: &GeneChange) -> String {
    format!(
        "{} {}→{}",
        change.gene,
        gene_value(&change.from),
        gene_value(&change.to)
    )
}

/// The first changes of a diff on one line (`retry.max_attempts 3→2, ... (+2 more)`).
fn diff_summary(diff: &[GeneChange]) -> String {
    const SHOWN: usize = 2;
    if diff.is_empty() {
        return "no change".to_owned();
    }
    let mut summary: Vec<String> = diff.iter().take(SHOWN).map(gene_change).collect();
    if diff.len() > SHOWN {
        summary.push(format!("(+{} more)", diff.len() - SHOWN));
    }
    summary.join(", ")
}

/// `evolution` or `manual`, as the API spells it.
fn source_name(source: Source) -> &'static str {
    match source {
        Source::Evolution => "evolution",
        Source::Manual => "manual",
    }
}

/// The proposals as a table, one line each, columns as wide as their widest cell.
fn print_proposals(out: &mut impl std::io::Write, proposals: &[Proposal]) -> std::io::Result<()> {
    if proposals.is_empty() {
        return writeln!(out, "no proposals");
    }
    let rows: Vec<[String; 6]> = proposals
        .iter()
        .map(|p| {
            [
                p.id.to_string(),
                p.route.clone(),
                p.state.as_str().to_owned(),
                source_name(p.source).to_owned(),
                p.created_at.clone(),
                diff_summary(&p.diff),
            ]
        })
        .collect();
    let header = ["ID", "ROUTE", "STATE", "SOURCE", "CREATED", "DIFF"].map(str::to_owned);
    let mut widths = [0; 6];
    for row in std::iter::once(&header).chain(&rows) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    for row in std::iter::once(&header).chain(&rows) {
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(widths).enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                line.push_str(&format!("{cell:<width$}  "));
            }
        }
        writeln!(out, "{}", line.trim_end())?;
    }
    Ok(())
}

/// A proposal with its evidence, for a reader deciding whether to approve it.
fn print_proposal(out: &mut impl std::io::Write, p: &Proposal) -> std::io::Result<()> {
    let source = source_name(p.source);
    let round = p
        .round_id
        .map(|id| format!(", round {id}"))
        .unwrap_or_default();
    writeln!(
        out,
        "proposal {} for route {}: {}",
        p.id,
        p.route,
        p.state.as_str()
    )?;
    writeln!(out, "source: {source}, by {}{round}", p.author)?;
    writeln!(
        out,
        "created {}, expires {}, against generation {}",
        p.created_at, p.expires_at, p.base_generation
    )?;
    writeln!(out, "diff:")?;
    if p.diff.is_empty() {
        writeln!(out, "  no change")?;
    }
    for change in &p.diff {
        writeln!(out, "  {}", gene_change(change))?;
    }
    writeln!(out, "predicted (incumbent → candidate):")?;
    if p.predicted.is_empty() {
        writeln!(out, "  none")?;
    }
    for s in &p.predicted {
        let (a, b) = (&s.incumbent, &s.candidate);
        writeln!(
            out,
            "  {}{}: goodput {:.3}→{:.3}, latency {:.3}→{:.3}, amplification {:.2}→{:.2}, rejected {:.3}→{:.3}; fitness {:.3}→{:.3}",
            s.scenario,
            if s.extrapolated {
                " (extrapolated)"
            } else {
                ""
            },
            a.goodput,
            b.goodput,
            a.latency,
            b.latency,
            a.amplification,
            b.amplification,
            a.rejected,
            b.rejected,
            a.fitness,
            b.fitness
        )?;
    }
    let trusted = if p.model.trusted {
        "trusted"
    } else {
        "not trusted"
    };
    match &p.model.fidelity {
        None => writeln!(
            out,
            "model: fitted {}, {trusted}, fidelity not checked",
            p.model.fitted_at
        )?,
        Some(f) => writeln!(
            out,
            "model: fitted {}, {trusted}; fidelity error goodput {:.3}, p50 {:.3}, p99 {:.3}, amplification {:.3}{}",
            p.model.fitted_at,
            f.goodput.error,
            f.p50_ms.error,
            f.p99_ms.error,
            f.amplification.error,
            f.reason
                .as_deref()
                .map(|r| format!(" ({r})"))
                .unwrap_or_default()
        )?,
    }
    match &p.guardrails {
        GuardrailVerdict::Passed(_) => writeln!(out, "guardrails: passed")?,
        GuardrailVerdict::Refused(violations) => {
            writeln!(out, "guardrails: refused")?;
            for v in violations {
                writeln!(out, "  {}: {}", v.gene, v.rule)?;
            }
        }
    }
    if p.approvals.is_empty() {
        writeln!(out, "approvals: none")?;
    } else {
        writeln!(out, "approvals:")?;
        for a in &p.approvals {
            let comment = a
                .comment
                .as_deref()
                .map(|c| format!(": {c}"))
                .unwrap_or_default();
            writeln!(out, "  {} at {}{comment}", a.by, a.at)?;
        }
    }
    Ok(())
}

/// `rafael model ROUTE`: the model, one line per endpoint (or `--json`). Exit 1 with the
/// reason when the API answers an error (too little telemetry, an unknown route).
fn model(route: &str, json: bool, admin: &str, token: Option<&str>) -> ExitCode {
    let url = format!("{}/v1/routes/{route}/model", admin.trim_end_matches('/'));
    let answer = rafael_control::cli::call("GET", &url, token, None);
    let body = match answer {
        Ok((200, body)) => body,
        Ok((status, body)) => {
            let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
            let detail = &value["detail"];
            match (detail["requests"].as_u64(), detail["needed"].as_u64()) {
                (Some(requests), Some(needed)) if status == 409 => eprintln!(
                    "error: route {route:?} has not enough telemetry: {requests} requests in its window, {needed} needed ([evolution].min_requests)"
                ),
                _ => eprintln!("error: {url} answered {status}: {body}"),
            }
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let parsed = serde_json::from_str::<rafael_control::evolution::model::Model>(&body);
    let mut out = std::io::stdout().lock();
    let written = match parsed {
        Ok(model) if json => serde_json::to_string_pretty(&model)
            .map_err(std::io::Error::other)
            .and_then(|text| writeln!(out, "{text}")),
        Ok(model) => print_model(&mut out, &model),
        Err(e) => {
            eprintln!("error: {url} answered an unexpected document: {e}");
            return ExitCode::from(1);
        }
    };
    match written {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: cannot write the model: {e}");
            ExitCode::from(1)
        }
    }
}

/// The model for a reader: the window, arrivals, one line per endpoint, the regimes.
fn print_model(
    out: &mut impl std::io::Write,
    model: &rafael_control::evolution::model::Model,
) -> std::io::Result<()> {
    writeln!(
        out,
        "route {}: {} requests over {} s (endpoints from the last {} s), fitted {}",
        model.route, model.requests, model.window_secs, model.sampled_secs, model.fitted_at
    )?;
    writeln!(
        out,
        "arrivals: {:.1}/s, burstiness {:.2} (variance/mean of per-second counts)",
        model.arrivals.rate_per_sec, model.arrivals.burstiness
    )?;
    for e in &model.endpoints {
        let capacity = match e.capacity {
            Some(c) => format!(
                "capacity {:.1} in flight, {:.0}/s{}",
                c.concurrency,
                c.throughput_per_sec,
                if c.timeouts_in_fit {
                    " (fitted near timeouts)"
                } else {
                    ""
                }
            ),
            None => "never saturated".to_owned(),
        };
        let f = &e.failure;
        let bursts = if f.mean_burst_secs > 0.0 {
            format!(
                "bursts of {:.0}% for {:.0} s every {:.0} s",
                f.burst_rate * 100.0,
                f.mean_burst_secs,
                f.mean_healthy_secs
            )
        } else {
            "no bursts".to_owned()
        };
        writeln!(
            out,
            "endpoint {}: p50 {:.1} ms, p99 {:.1} ms, {capacity}, failures {:.1}% ({bursts}), timeouts {:.1}%, {} samples",
            e.endpoint,
            e.service_time.p50_ms,
            e.service_time.p99_ms,
            f.rate * 100.0,
            e.timeout_rate * 100.0,
            e.samples
        )?;
    }
    if model.regimes.is_empty() {
        writeln!(out, "regimes: none")?;
    }
    for r in &model.regimes {
        let periods: Vec<String> = r
            .periods
            .iter()
            .map(|p| format!("{}s+{}s", p.start_sec, p.secs))
            .collect();
        writeln!(
            out,
            "regime {}: {:.0}% of the time, {:.0} s on average, service time x{:.1}, failures {:.0}%, at {}",
            match r.kind {
                rafael_control::evolution::model::RegimeKind::Brownout => "brownout",
                rafael_control::evolution::model::RegimeKind::Outage => "outage",
            },
            r.share * 100.0,
            r.mean_secs,
            r.service_time_factor,
            r.failure_rate * 100.0,
            periods.join(", ")
        )?;
    }
    if let (Some(first), Some(last)) = (model.censored_secs.first(), model.censored_secs.last()) {
        writeln!(
            out,
            "censored: {} seconds between {first}s and {last}s where most attempts timed out",
            model.censored_secs.len()
        )?;
    }
    if let Some(c) = &model.calibration {
        let workers = match (c.workers, c.workers_range) {
            (Some(w), Some([low, high])) => format!("{w} workers (the window allows {low}-{high})"),
            (Some(w), None) => format!("{w} workers"),
            _ => "the fitted capacities".to_owned(),
        };
        let drops: Vec<String> = c
            .brownouts
            .iter()
            .map(|b| {
                format!(
                    "x{:.1} at {}s+{}s",
                    b.service_time_factor, b.start_sec, b.secs
                )
            })
            .collect();
        writeln!(
            out,
            "calibrated by {} simulations: {workers}, slowdown {}; replay loss {:.4} (was {:.4})",
            c.simulations,
            drops.join(", "),
            c.loss,
            c.loss_before
        )?;
    }
    match &model.fidelity {
        None => writeln!(out, "fidelity: not checked yet"),
        Some(f) => writeln!(
            out,
            "fidelity: {} (goodput error {:.3}, p50 {:.3}, p99 {:.3}, amplification {:.3})",
            if f.trusted { "trusted" } else { "not trusted" },
            f.goodput.error,
            f.p50_ms.error,
            f.p99_ms.error,
            f.amplification.error
        ),
    }
}

/// `rafael audit list|verify` through the admin API: the same output and exit codes as offline.
fn audit_remote(command: &AuditCommand, admin: &str, token: Option<&str>) -> ExitCode {
    let admin = admin.trim_end_matches('/');
    let url = match command {
        AuditCommand::List { after, limit, .. } => {
            format!("{admin}/v1/audit?after={after}&limit={limit}")
        }
        AuditCommand::Verify { .. } => format!("{admin}/v1/audit/verify"),
    };
    let answer = rafael_control::cli::call("GET", &url, token, None);
    let body = match answer {
        Ok((200, body)) => body,
        Ok((status, body)) => {
            eprintln!("error: {url} answered {status}: {body}");
            return ExitCode::from(1);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let value: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let mut out = std::io::stdout().lock();
    match command {
        AuditCommand::List { .. } => {
            for entry in value["entries"].as_array().into_iter().flatten() {
                let _ = writeln!(out, "{entry}");
            }
            ExitCode::SUCCESS
        }
        AuditCommand::Verify { .. } => {
            match serde_json::from_value::<rafael_control::audit::Verification>(value) {
                Ok(verification) => print_verification(&mut out, &verification),
                Err(e) => {
                    eprintln!("error: {url} answered an unexpected document: {e}");
                    ExitCode::from(1)
                }
            }
        }
    }
}

/// Prints a verification as `rafael audit verify` does, offline or remote: exit 0 when the
/// chain holds, 1 naming the first broken entry.
fn print_verification(
    out: &mut impl std::io::Write,
    verification: &rafael_control::audit::Verification,
) -> ExitCode {
    match &verification.broken {
        None if verification.ok => {
            let head = verification.head.as_deref().unwrap_or("(empty)");
            let _ = writeln!(
                out,
                "ok: {} entries, chain head {head}",
                verification.entries
            );
            ExitCode::SUCCESS
        }
        broken => {
            if let Some(broken) = broken {
                let _ = writeln!(
                    out,
                    "broken at entry {}: {} ({} entries before it verified)",
                    broken.id, broken.reason, verification.entries
                );
            }
            ExitCode::from(1)
        }
    }
}

/// Reads and parses a config file for the commands that only need its settings (no
/// snapshot is built): the message on failure names the file.
fn parse_config_file(path: &std::path::Path) -> Result<Config, String> {
    let text = rafael_control::config_file::read(path).map_err(|e| e.to_string())?;
    rafael_config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `rafael token add NAME --role R (--file F | --config FILE)`.
fn add_token(
    name: &str,
    role: RoleArg,
    file: Option<PathBuf>,
    config: Option<PathBuf>,
) -> ExitCode {
    use rafael_control::auth::Role;
    let file = match (file, config) {
        (Some(file), _) => file,
        (None, Some(config_path)) => match parse_config_file(&config_path) {
            Ok(config) => match &config.admin.tokens_file {
                Some(tokens) => rafael_control::app::relative_to_config(Some(&config_path), tokens),
                None => {
                    eprintln!(
                        "error: {} has no [admin].tokens_file",
                        config_path.display()
                    );
                    return ExitCode::from(2);
                }
            },
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        (None, None) => return ExitCode::from(2),
    };
    let role = match role {
        RoleArg::Viewer => Role::Viewer,
        RoleArg::Operator => Role::Operator,
        RoleArg::Approver => Role::Approver,
        RoleArg::Admin => Role::Admin,
    };
    match rafael_control::auth::add_token(&file, name, role) {
        Ok(secret) => {
            let _ = writeln!(std::io::stdout(), "{secret}");
            eprintln!(
                "token {name:?} ({role:?}) added to {}; the secret above is not stored, keep it now",
                file.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

/// `rafael audit list|verify --config FILE`: reads the store directly, so it works with rafael
/// stopped, and on a copy of the database.
fn audit(command: AuditCommand, admin: &str, token: Option<&str>) -> ExitCode {
    let config_path = match &command {
        AuditCommand::List { config, .. } | AuditCommand::Verify { config } => config.clone(),
    };
    let Some(config_path) = config_path else {
        return audit_remote(&command, admin, token);
    };
    let config = match parse_config_file(&config_path) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let path = rafael_control::app::store_path(&config, &config_path);
    if !path.exists() {
        eprintln!("error: no store at {} ([store].path)", path.display());
        return ExitCode::from(1);
    }
    let log = match rafael_control::store::Store::open(&path) {
        Ok(store) => {
            // Reading a damaged store may still work, and is what one wants of it now.
            if let Err(e) = store.health() {
                eprintln!("warning: {e}");
            }
            rafael_control::audit::AuditLog::new(std::sync::Arc::new(store))
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(1);
        }
    };
    let mut out = std::io::stdout().lock();
    match command {
        AuditCommand::List { after, limit, .. } => match log.list(after, limit) {
            Ok(entries) => {
                for entry in entries {
                    let line = serde_json::to_string(&entry).unwrap_or_default();
                    if writeln!(out, "{line}").is_err() {
                        return ExitCode::from(1);
                    }
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
        AuditCommand::Verify { .. } => match log.verify() {
            Ok(verification) => print_verification(&mut out, &verification),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(1)
            }
        },
    }
}

fn check(path: &std::path::Path) -> ExitCode {
    // Building upstream clients wants a runtime context even though nothing runs.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let _guard = runtime.as_ref().ok().map(|r| r.enter());
    match load(path) {
        Ok(config) => {
            #[allow(clippy::print_stdout)]
            {
                println!(
                    "{}: ok ({} listener(s), {} upstream(s), {} route(s))",
                    path.display(),
                    config.listeners.len(),
                    config.upstreams.len(),
                    config.routes.len()
                );
            }
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

async fn run(config: Config, options: AppOptions) -> anyhow::Result<()> {
    let shutdown = ShutdownSignal::install();
    let app = App::start(config, options).await?;
    let purge = tokio::spawn(purge_freed_memory());
    shutdown.recv().await;
    purge.abort();
    match app.shutdown().await {
        DrainOutcome::Complete | DrainOutcome::DeadlineReached => Ok(()),
    }
}

async fn run_demo(
    listen: SocketAddr,
    admin: SocketAddr,
    rate: u32,
    traffic: Duration,
    speed: f64,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        (0.1..=100.0).contains(&speed),
        "--speed must be 0.1..=100, got {speed}"
    );
    let shutdown = ShutdownSignal::install();
    let upstream = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .context("cannot bind the demo service")?;
    let upstream_address = upstream.local_addr()?;
    demo::spawn_service(upstream, speed);
    // A round needs the bad day's telemetry: about 1,000 requests at the demo's 20 a second.
    let min_requests = ((f64::from(rate.max(1)) * demo::first_bad_day_ends().as_secs_f64() / speed)
        * 0.7)
        .clamp(100.0, 10_000.0) as u32;
    // The canary and the watch run in real time: shortened with the cycle. The canary needs
    // half of what its quarter of orders-read's traffic (four requests in five) brings in the
    // whole seconds of its duration (its first and last are partly outside it).
    let canary = demo::CANARY.div_f64(speed).max(Duration::from_secs(8));
    let canary_requests = ((f64::from(rate) * 0.8 * 0.25 * (canary.as_secs_f64() - 2.0) * 0.5)
        as u32)
        .clamp(10, 10_000);
    let watch = demo::WATCH.div_f64(speed).max(Duration::from_secs(5));
    let text = demo::DEMO_CONFIG
        .replace("{min_requests}", &min_requests.to_string())
        .replace("{canary}", &format!("{}ms", canary.as_millis()))
        .replace("{canary_requests}", &canary_requests.to_string())
        .replace("{watch}", &format!("{}ms", watch.as_millis()))
        .replace("{upstream}", &upstream_address.to_string())
        .replace("{listen}", &listen.to_string())
        .replace("{admin}", &admin.to_string());
    let config = rafael_config::parse(&text)
        .map_err(|errors| anyhow::anyhow!("the shipped demo config is invalid:\n{errors}"))?;
    let app = App::start(config, AppOptions::default())
        .await
        .context("pass --listen and --admin to use other ports")?;
    let proxy = app
        .listener_address("inbound")
        .context("the demo config has no inbound listener")?;
    let admin = app.admin_address();
    // Written with `writeln!` so a closed stdout (a pipe whose reader went away) is not a panic.
    let banner = format!(
        "\n  rafael demo is running (Ctrl-C to stop)\n  \
         demo service   http://{upstream_address}/  (a dependency having a bad day)\n  \
         proxy          http://{proxy}/orders/1\n  \
         admin          http://{admin}/healthz\n  \
         metrics        http://{admin}/metrics\n  \
         evolution      after the service's first bad day (about {bad_day} s) a round evolves\n                 \
         orders-read's genome; the demo's guardian approves what it proposes, tries it as a\n                 \
         canary, applies it and watches it; then: rafael proposals list --admin http://{admin}\n",
        bad_day = (demo::first_bad_day_ends().as_secs_f64() / speed).round()
    );
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{banner}").and_then(|()| stdout.flush());
    drop(stdout);
    if rate > 0 {
        info!(rate, duration = ?traffic, "starting demo traffic");
        let stats = std::sync::Arc::new(demo::TrafficStats::default());
        tokio::spawn(demo::run_traffic(proxy, rate, traffic, stats.clone()));
        let after = demo::first_bad_day_ends().div_f64(speed) + Duration::from_secs(2);
        let cycle = demo::cycle().div_f64(speed);
        tokio::spawn(async move {
            demo::evolve_after_the_bad_day(admin, "orders-read", after, cycle, stats).await;
        });
    }
    shutdown.recv().await;
    app.shutdown().await;
    Ok(())
}
