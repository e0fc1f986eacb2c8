//! The `herald` command.

use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use herald::roles::{CometRole, JobRole, LogicRole};
use herald::{edge, observe, Config, Standalone};
use herald_logic::api_keys::{NewKey, Scope};
use herald_tls::Reloader;
use tokio_util::sync::CancellationToken;
use tracing::info;

// The global allocator is glibc's malloc, trimmed periodically (herald::memory); the
// measurements behind the choice, and how to compare other allocators without
// rebuilding: docs/benchmarks.md, "Allocator".

/// herald: a real-time push server speaking goim's protocol and HTTP API.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run comet, logic and job in one process with embedded storage and queue.
    Standalone {
        /// TOML configuration file; `HERALD_<SECTION>__<KEY>` variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the connection tier: client TCP/WebSocket listeners and the comet RPC
    /// service (3109). Needs etcd.
    Comet {
        /// TOML configuration file; `HERALD_<SECTION>__<KEY>` variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the control tier: the HTTP push API (3111) and the logic RPC service
    /// (3119). Needs etcd, Redis and a queue engine.
    Logic {
        /// TOML configuration file; `HERALD_<SECTION>__<KEY>` variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Run the fan-out tier: consume the queue and push to comets. Needs etcd and a
    /// queue engine.
    Job {
        /// TOML configuration file; `HERALD_<SECTION>__<KEY>` variables override it.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
    /// Load generator and benchmarks (clients, push, run SCENARIO, floor).
    Bench {
        #[command(subcommand)]
        command: herald_bench::Cmd,
    },
    /// Print the effective configuration (defaults, file and environment) as TOML.
    Config {
        /// TOML configuration file to merge over the defaults.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print passwords, tokens and secrets as they are (by default `***`).
        #[arg(long)]
        show_secrets: bool,
    },
    /// Manage HTTP API keys.
    Apikey {
        #[command(subcommand)]
        command: ApikeyCommand,
    },
}

#[derive(Subcommand)]
enum ApikeyCommand {
    /// Print a fresh random key (once) and the `[api]` entry that admits it.
    New {
        /// Who will hold the key (logs and error messages name it).
        #[arg(long)]
        name: String,
        /// What the key may do: push, read, admin (admin implies the others).
        #[arg(long, value_delimiter = ',', default_value = "push")]
        scopes: Vec<Scope>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Bench { command } => {
            // The server under test is this very binary, so a bench run always
            // measures the code it was built with.
            let exe = std::env::current_exe().context("cannot locate this program")?;
            herald_bench::run(
                command,
                herald_bench::Invocation {
                    self_prefix: vec!["bench".into()],
                    herald: (exe, vec!["standalone".into()]),
                },
            )
        }
        Command::Config {
            config,
            show_secrets,
        } => {
            let loaded = Config::load(config.as_deref())?;
            let cfg = if show_secrets {
                loaded
            } else {
                loaded.redacted()
            };
            print!(
                "{}",
                toml::to_string(&cfg).context("cannot render configuration")?
            );
            Ok(())
        }
        Command::Apikey {
            command: ApikeyCommand::New { name, scopes },
        } => new_api_key(&name, &scopes),
        Command::Standalone { config } => run(config, run_standalone),
        Command::Comet { config } => run(config, run_comet),
        Command::Logic { config } => run(config, run_logic),
        Command::Job { config } => run(config, run_job),
    }
}

/// `herald apikey new`: the key goes to the backend, only its hash to the
/// configuration.
fn new_api_key(name: &str, scopes: &[Scope]) -> anyhow::Result<()> {
    if name.trim().is_empty() {
        bail!("--name must not be empty");
    }
    let key = NewKey::generate()?;
    let entry = key.entry(name, scopes);
    // Rendered through serde so the fields keep their documented order.
    #[derive(serde::Serialize)]
    struct Doc<'a> {
        api: Section<'a>,
    }
    #[derive(serde::Serialize)]
    struct Section<'a> {
        keys: [&'a herald_logic::api_keys::ApiKeyConfig; 1],
    }
    let table = toml::to_string(&Doc {
        api: Section { keys: [&entry] },
    })
    .context("cannot render the configuration entry")?;
    let quoted = |s: &str| toml::Value::String(s.to_string()).to_string();
    let names: Vec<String> = scopes.iter().map(|s| s.to_string()).collect();
    let list: Vec<String> = names.iter().map(|s| quoted(s)).collect();
    println!(
        "New API key {name:?} (scopes: {}). It is shown only this once:",
        names.join(", ")
    );
    println!();
    println!("    {}", key.key);
    println!();
    println!("Give it to the backend, which sends it as `Authorization: Bearer <key>`.");
    println!("Add this to the configuration (it holds only the key's hash):");
    println!();
    print!("{table}");
    println!();
    println!("or, as one line inside an existing `keys = [ ... ]` list:");
    println!();
    println!(
        "    {{ name = {}, hash = {}, scopes = [{}] }},",
        quoted(name),
        quoted(&key.hash),
        list.join(", ")
    );
    Ok(())
}

/// Loads the configuration, starts logging and runs `serve` on a runtime.
fn run<F, Fut>(config: Option<PathBuf>, serve: F) -> anyhow::Result<()>
where
    F: FnOnce(Config) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let cfg = Config::load(config.as_deref())?;
    observe::init_logging(&cfg.log.level);
    // The trimmer publishes metrics: the recorder goes in before it starts.
    observe::metrics_handle();
    let trimmer = herald::memory::trimmer(cfg.memory.trim_interval)?;
    let upkeep = observe::upkeep()?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let served = rt.block_on(serve(cfg));
    if let Some(t) = trimmer {
        t.stop();
    }
    upkeep.stop();
    served
}

/// A token cancelled by SIGINT/SIGTERM, so a role still waiting for an engine at
/// startup stops cleanly.
fn stop_on_signal() -> CancellationToken {
    let stop = CancellationToken::new();
    let s = stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        info!("shutting down");
        s.cancel();
    });
    stop
}

async fn run_comet(cfg: Config) -> anyhow::Result<()> {
    let stop = stop_on_signal();
    let role = CometRole::start(cfg, stop.child_token()).await?;
    let reload = tokio::spawn(edge::reload_on_sighup(role.reloader(), stop.clone()));
    stop.cancelled().await;
    role.shutdown().await;
    let _ = reload.await;
    info!("stopped");
    Ok(())
}

async fn run_logic(cfg: Config) -> anyhow::Result<()> {
    let stop = stop_on_signal();
    let role = LogicRole::start(cfg, stop.child_token()).await?;
    let reload = tokio::spawn(edge::reload_on_sighup(role.reloader(), stop.clone()));
    stop.cancelled().await;
    role.shutdown().await;
    let _ = reload.await;
    info!("stopped");
    Ok(())
}

async fn run_job(cfg: Config) -> anyhow::Result<()> {
    let stop = stop_on_signal();
    let role = JobRole::start(cfg, stop.child_token()).await?;
    // No certificate of its own yet; handled so that SIGHUP never ends the process.
    let reload = tokio::spawn(edge::reload_on_sighup(Reloader::new(), stop.clone()));
    stop.cancelled().await;
    role.shutdown().await;
    let _ = reload.await;
    info!("stopped");
    Ok(())
}

async fn run_standalone(cfg: Config) -> anyhow::Result<()> {
    // Signals are handled from the start: one during startup (waiting for an
    // engine, say) ends the process cleanly instead of killing it.
    let stop = stop_on_signal();
    let server = tokio::select! {
        s = Standalone::start(cfg) => s?,
        _ = stop.cancelled() => {
            info!("stopped before startup completed");
            return Ok(());
        }
    };
    let stop_reloading = CancellationToken::new();
    let reload = tokio::spawn(edge::reload_on_sighup(
        server.reloader(),
        stop_reloading.clone(),
    ));
    let mut demo = server.http_addr;
    if demo.ip().is_unspecified() {
        demo.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    info!(
        tcp = ?server.tcp_addrs,
        ws = ?server.ws_addrs,
        http = %server.http_addr,
        "herald standalone ready (demo page at http://{demo}/_/)"
    );
    stop.cancelled().await;
    stop_reloading.cancel();
    server.shutdown().await;
    let _ = reload.await;
    info!("stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
