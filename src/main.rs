#![forbid(unsafe_code)]

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// mimalloc rather than glibc's malloc: the request path allocates many
/// small, short-lived blocks, which it serves in a fraction of the
/// instructions (tests/bench/README.md, "Instructions per request").
/// mimalloc is linked as the process's `malloc` (its `override` feature) and
/// Rust allocates through `malloc` (`System`): `mimalloc::MiMalloc` asks
/// for every block with `mi_malloc_aligned`, which in mimalloc 3 takes an
/// over-allocating slow path for any block above 1 KiB whose size is not a
/// power of two (header maps, boxed futures: a dozen a request), where
/// `System` calls `malloc` for the alignments `malloc` already gives (up to
/// 16 bytes) and `posix_memalign`, mimalloc's too, for the others.
#[global_allocator]
static ALLOCATOR: std::alloc::System = std::alloc::System;
use mcp_oauth_proxy::cli;
use mcp_oauth_proxy::config::{self, Config, LogFormat};
use mcp_oauth_proxy::policy::PolicyEngine;
use mcp_oauth_proxy::server::{self, AppState};

/// The runtime `serve` runs on. With several workers (`server.workers`)
/// each worker thread has a runtime of its own and this one keeps only the
/// background work (purges, policy reloads, key rotation, the admin
/// listener): one thread is plenty, and more would compete with the workers
/// for the CPUs. With one worker the requests are served here: on one CPU
/// (a container with one core, `taskset`) one thread runs everything, as
/// one nginx worker does (the work-stealing scheduler's queues and wake-ups
/// would cost without anything to steal); given more CPUs but one worker,
/// tokio's multi-thread runtime, as before workers existed. Policy runs of
/// large batches leave it for the blocking pool either way.
fn request_runtime(workers: usize) -> std::io::Result<tokio::runtime::Runtime> {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if workers > 1 || cpus == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Runtime::new()
    }
}

#[derive(Parser)]
#[command(
    name = "mcp-oauth-proxy",
    version,
    about = "OAuth 2.1 login in front of any MCP server"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Serve {
        /// TOML configuration file (environment variables override it).
        #[arg(long, short, env = "MCP_PROXY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Validate the configuration and print it with secrets redacted.
    Check {
        #[arg(long, short, env = "MCP_PROXY_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Work with policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// List and revoke grants (who authorized which client) in the store.
    Grants {
        #[command(subcommand)]
        command: cli::GrantsCommand,
    },
    /// List and delete registered clients in the store.
    Clients {
        #[command(subcommand)]
        command: cli::ClientsCommand,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Run the cases in NAME.test.toml beside each NAME.rhai.
    Test {
        /// Policy files or directories of them (default: policies).
        paths: Vec<PathBuf>,
    },
    /// Re-run logged decisions (policy.decision_log) under a candidate
    /// policy and report what changes; exit 1 when anything does.
    Replay(cli::policy_replay::ReplayArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(config),
        Command::Serve { config } => serve(config),
        Command::Policy {
            command: PolicyCommand::Test { paths },
        } => policy_test(paths),
        Command::Policy {
            command: PolicyCommand::Replay(args),
        } => cli::policy_replay::main(args),
        Command::Grants { command } => cli::grants_main(command),
        Command::Clients { command } => cli::clients_main(command),
    }
}

fn policy_test(paths: Vec<PathBuf>) -> ExitCode {
    use mcp_oauth_proxy::policy::cases;
    let paths = if paths.is_empty() {
        vec![PathBuf::from("policies")]
    } else {
        paths
    };
    let policies = match cases::policies_in(&paths) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("policy test: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut total = cases::Outcome::default();
    let mut stdout = std::io::stdout();
    for policy in policies {
        let outcome = cases::run_policy(&policy, &mut stdout);
        total.passed += outcome.passed;
        total.failed += outcome.failed;
    }
    println!("{} passed, {} failed", total.passed, total.failed);
    if total.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn load(path: Option<PathBuf>) -> Result<Config, String> {
    config::load(path.as_deref()).map_err(|e| e.to_string())
}

fn check(path: Option<PathBuf>) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let rendered = config::render_redacted(&config);
    match config.validate() {
        Ok(settings) => {
            print!("{rendered}");
            let mut routes = Vec::new();
            for route in &settings.routes {
                match PolicyEngine::new(route.policy_path(), route.identity_headers()) {
                    Ok(engine) => routes.push(format!(
                        "route {}: {} -> {} (policy {})",
                        route.name,
                        route.path,
                        route.downstream_url(),
                        engine.current().name
                    )),
                    Err(e) => {
                        eprintln!("policy error: {}: {e}", route.key("policy.path"));
                        return ExitCode::FAILURE;
                    }
                }
                if let Some(shadow) = route.shadow_policy_path() {
                    if let Err(e) = PolicyEngine::new(Some(shadow), route.identity_headers()) {
                        eprintln!("policy error: {}: {e}", route.key("policy.shadow_path"));
                        return ExitCode::FAILURE;
                    }
                }
            }
            eprintln!(
                "configuration OK (issuer {}, provider {}, {} route{})",
                settings.public_url,
                settings.issuer_url,
                routes.len(),
                if routes.len() == 1 { "" } else { "s" }
            );
            for route in routes {
                eprintln!("  {route}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("config error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr from a background thread: a request never waits for a
/// write(2). Nothing is dropped (the queue applies back-pressure when full);
/// the returned guard flushes what is queued when the process ends.
fn init_logging(config: &Config) -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(64 * 1024)
        .thread_name("log-writer")
        .finish(std::io::stderr());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = match config.log.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        // Colours only for a terminal, never into a log file.
        .with_ansi(std::io::stderr().is_terminal());
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    } else {
        builder.init();
    }
    guard
}

fn serve(path: Option<PathBuf>) -> ExitCode {
    let config = match load(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let _log_guard = init_logging(&config);
    // Also what keeps mimalloc, and with it its `malloc`, in the binary: the
    // linker takes an archive's object only for a symbol something asks for.
    tracing::debug!(
        version = mimalloc::MiMalloc.version(),
        "allocating with mimalloc as malloc"
    );
    let settings = match config.validate() {
        Ok(s) => s,
        Err(e) => {
            tracing::error!("config error: {e}");
            eprintln!("config error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = match request_runtime(settings.config.server.workers()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let started = async {
            let store = mcp_oauth_proxy::store::open(&settings.config.store)?;
            let app = AppState::new(settings, store)?;
            server::start(app).await
        };
        let running = match started.await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!("{e}");
                eprintln!("{e}");
                return ExitCode::FAILURE;
            }
        };
        let stop = running.shutdown_handle();
        tokio::spawn(async move {
            server::shutdown_signal().await;
            let _ = stop.send(true);
        });
        match running.wait().await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "server failed");
                ExitCode::FAILURE
            }
        }
    })
}
