//! The `sophgate` command line. Only argument handling and process setup live here.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use sophgate::config::{BuildError, Config, ConfigErrors};
use sophgate::gateway::server;
use sophgate::logging;
use sophgate::reload::Runtime;
use sophgate::tools::demo;
use sophgate::tools::mock::{self, MockOptions};

#[derive(Parser)]
#[command(name = "sophgate", version, about = "OpenAI-compatible LLM gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Config file.
        #[arg(short, long, default_value = "config.yml")]
        config: PathBuf,
    },
    /// Validate a config file offline; prints every error. Exit 0 if valid, 2 if not.
    Check {
        #[arg(short, long, default_value = "config.yml")]
        config: PathBuf,
    },
    /// Run the gateway and a mock upstream together on loopback (no network or key needed).
    Demo {
        #[arg(long, default_value = "127.0.0.1:8000")]
        listen: SocketAddr,
        /// Mock delay before the first token, in ms.
        #[arg(long, default_value_t = 200)]
        ttft_ms: u64,
        /// Mock delay between tokens, in ms.
        #[arg(long, default_value_t = 50)]
        itl_ms: u64,
        /// Send one plain and one streamed request through the demo, print the result, exit.
        #[arg(long)]
        check: bool,
    },
    /// Replay request fixtures through the real pipeline against an in-process upstream and
    /// report pass/fail per fixture (exit 0 if all pass, 1 if any fails, 2 on bad input).
    Test {
        #[arg(short, long, default_value = "config.yml")]
        config: PathBuf,
        /// Fixture files (YAML); see README "Testing plugins offline".
        #[arg(required = true)]
        fixtures: Vec<PathBuf>,
    },
    /// Print the `sha256:<hex>` form of a client key, for `api_keys` without plain secrets.
    /// Reads the key from standard input when not given (keeps it out of shell history).
    HashKey { key: Option<String> },
    /// Run an OpenAI-compatible mock upstream (for demos, tests and benchmarks).
    MockUpstream {
        #[arg(long, default_value = "127.0.0.1:9000")]
        listen: SocketAddr,
        /// Delay before the first token (or the whole JSON answer), in ms.
        #[arg(long, default_value_t = 0)]
        ttft_ms: u64,
        /// Delay between streamed tokens, in ms.
        #[arg(long, default_value_t = 0)]
        itl_ms: u64,
        /// Content tokens per answer.
        #[arg(long, default_value_t = 8)]
        tokens: usize,
        /// Answer 401 unless requests carry `Authorization: Bearer <KEY>`.
        #[arg(long)]
        require_key: Option<String>,
        /// Worker threads (default: one per core).
        #[arg(long)]
        workers: Option<usize>,
    },
}

/// One worker means tokio's current-thread scheduler: the same single thread, without the
/// work-stealing queues and their atomics that only pay off with a second worker to steal.
fn runtime(workers: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let mut b = if workers == Some(1) {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    };
    b.enable_all();
    if let Some(n) = workers.filter(|&n| n > 1) {
        b.worker_threads(n);
    }
    b.build()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => check(&config),
        Command::HashKey { key } => hash_key(key),
        Command::Test { config, fixtures } => run_fixtures(&config, &fixtures),
        Command::Serve { config } => serve(&config),
        Command::Demo {
            listen,
            ttft_ms,
            itl_ms,
            check,
        } => run_demo(listen, ttft_ms, itl_ms, check),
        Command::MockUpstream {
            listen,
            ttft_ms,
            itl_ms,
            tokens,
            require_key,
            workers,
        } => run_mock(
            listen,
            MockOptions {
                ttft: Duration::from_millis(ttft_ms),
                itl: Duration::from_millis(itl_ms),
                tokens,
                require_key,
                token_check: None,
            },
            workers,
        ),
    }
}

fn run_fixtures(config: &std::path::Path, fixtures: &[PathBuf]) -> ExitCode {
    let cfg = match Config::from_file(config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            return ExitCode::from(2);
        }
    };
    let rt = match runtime(None) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sophgate test: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(sophgate::tools::fixtures::run(cfg, fixtures)) {
        Ok(reports) => {
            println!("{}", sophgate::tools::fixtures::render(&reports));
            if reports.iter().all(|r| r.passed) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("sophgate test: {e}");
            ExitCode::from(2)
        }
    }
}

fn hash_key(key: Option<String>) -> ExitCode {
    let key = match key {
        Some(k) => k,
        None => {
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err() {
                eprintln!("sophgate hash-key: cannot read the key from standard input");
                return ExitCode::from(2);
            }
            line.trim_end_matches(['\r', '\n']).to_owned()
        }
    };
    if key.is_empty() {
        eprintln!("sophgate hash-key: the key is empty");
        return ExitCode::from(2);
    }
    println!("{}", sophgate::config::validate::hash_key(&key));
    ExitCode::SUCCESS
}

/// Validation and then the build: both report every problem with file, YAML path and line.
fn check(path: &std::path::Path) -> ExitCode {
    let cfg = match Config::from_file(path) {
        Ok(cfg) => cfg,
        Err(errors) => return config_errors(path, &errors),
    };
    for w in &cfg.warnings {
        eprintln!("warning: {w}");
    }
    match sophgate::Generation::build(cfg, 0) {
        Ok(_) => {
            println!("{}: OK", path.display());
            ExitCode::SUCCESS
        }
        Err(BuildError::Config(errors)) => config_errors(path, &errors),
        Err(e) => {
            eprintln!("{}: {e}", path.display());
            ExitCode::from(2)
        }
    }
}

fn config_errors(path: &std::path::Path, errors: &ConfigErrors) -> ExitCode {
    eprintln!("{errors}");
    eprintln!("{} error(s) in {}", errors.0.len(), path.display());
    ExitCode::from(2)
}

fn serve(path: &std::path::Path) -> ExitCode {
    let cfg = match Config::from_file(path) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{errors}");
            eprintln!(
                "sophgate: not starting: {} error(s) in {}",
                errors.0.len(),
                path.display()
            );
            return ExitCode::from(2);
        }
    };
    let _guard = match logging::init(&cfg.logging) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("sophgate: {e}");
            return ExitCode::from(2);
        }
    };
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    let rt = match runtime(cfg.workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sophgate: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listen = cfg.listen;
        // Before the port opens: a SIGTERM that comes as soon as a client can connect drains
        // instead of killing the process.
        let shutdown = shutdown_signal();
        // This process is one gateway: its usage follows the config's `store:`.
        sophgate::usage::shared::follow_stores();
        let runtime = match Runtime::new(cfg) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("sophgate: {e}");
                return ExitCode::from(2);
            }
        };
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("sophgate: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let generation = runtime.current();
        tracing::info!(
            listen = %listen,
            upstream = %generation.config.upstream.api_host,
            keys = generation.keys.len(),
            "sophgate serving"
        );
        if let Some(addr) = generation.config.metrics.listen {
            match tokio::net::TcpListener::bind(addr).await {
                Ok(l) => {
                    tracing::info!(listen = %addr, "metrics served on their own listener");
                    // Ends with the process: a scrape has nothing to drain.
                    tokio::spawn(sophgate::observe::scrape::serve(
                        l,
                        runtime.clone(),
                        std::future::pending(),
                    ));
                }
                Err(e) => {
                    eprintln!("sophgate: cannot listen on {addr} (metrics.listen): {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        sophgate::reload::on_sighup(runtime.clone());
        sophgate::logging::report_dropped_lines(std::time::Duration::from_secs(10));
        if let Err(e) = sophgate::reload::watch::spawn(runtime.clone()) {
            tracing::warn!("{e}; reload with SIGHUP or POST /admin/reload instead");
        }
        let traced = runtime.clone();
        server::serve(listener, runtime, shutdown).await;
        // The requests have ended; what they left for the store (lease releases, usage) and
        // their spans go out before the process does.
        if let Some(store) = traced.current().store.clone() {
            store.flush(std::time::Duration::from_secs(2)).await;
        }
        sophgate::observe::trace::flush(traced.current().tracing.clone()).await;
        ExitCode::SUCCESS
    })
}

/// Resolves on SIGTERM or SIGINT. The handlers are installed when this is called, not when
/// the future is first polled.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate()).ok();
        let int = signal(SignalKind::interrupt()).ok();
        async move {
            let recv = |s: Option<tokio::signal::unix::Signal>| async move {
                match s {
                    Some(mut s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = recv(term) => {},
                _ = recv(int) => {},
            }
        }
    }
    #[cfg(not(unix))]
    {
        async {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn run_demo(listen: SocketAddr, ttft_ms: u64, itl_ms: u64, check: bool) -> ExitCode {
    let log = sophgate::config::LoggingConfig {
        level: "info".into(),
        format: sophgate::config::LogFormat::Text,
        file: None,
        rotation: sophgate::config::Rotation::Never,
        retention_days: 1,
        access_log: true,
    };
    let _guard = logging::init(&log).ok().flatten();
    let rt = match runtime(None) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sophgate: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let d = match demo::start(
            listen,
            Duration::from_millis(ttft_ms),
            Duration::from_millis(itl_ms),
        )
        .await
        {
            Ok(d) => d,
            Err(e) => {
                eprintln!("sophgate demo: {e}");
                return ExitCode::FAILURE;
            }
        };
        let addr = d.gateway.addr;
        if check {
            let result = demo::self_check(addr).await;
            d.gateway.shutdown().await;
            return match result {
                Ok(report) => {
                    println!("{report}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("sophgate demo --check failed: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        println!("{}", demo::banner(addr));
        shutdown_signal().await;
        d.gateway.shutdown().await;
        ExitCode::SUCCESS
    })
}

fn run_mock(listen: SocketAddr, opts: MockOptions, workers: Option<usize>) -> ExitCode {
    let rt = match runtime(workers) {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sophgate mock-upstream: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(listen).await {
            Ok(l) => l,
            Err(e) => {
                eprintln!("sophgate mock-upstream: cannot listen on {listen}: {e}");
                return ExitCode::FAILURE;
            }
        };
        let addr = listener
            .local_addr()
            .map(|a| a.to_string())
            .unwrap_or_default();
        println!("mock upstream listening on http://{addr}");
        let stats = std::sync::Arc::new(mock::MockStats::default());
        tokio::select! {
            _ = mock::serve(listener, opts, stats) => {},
            _ = shutdown_signal() => {},
        }
        ExitCode::SUCCESS
    })
}
