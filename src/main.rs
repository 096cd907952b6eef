//! The `aggd` binary: parses arguments and calls the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use aggd::config::{Config, carbon};
use aggd::listen::BoundListener;

/// A Graphite-compatible aggregation daemon.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// Which configuration to read.
#[derive(Args)]
#[group(required = true, multiple = false)]
struct ConfigArg {
    /// aggd TOML config file.
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    /// An existing carbon.conf; its [aggregator] section is used.
    #[arg(long = "carbon-conf")]
    carbon_conf: Option<PathBuf>,
}

impl ConfigArg {
    fn load(&self) -> anyhow::Result<Config> {
        match (&self.config, &self.carbon_conf) {
            (Some(p), _) => Ok(Config::load(p)?),
            (None, Some(p)) => Ok(carbon::load(p)?),
            (None, None) => anyhow::bail!("give -c FILE or --carbon-conf FILE"),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Run(ConfigArg),
    /// Validate the config and rules files, print a summary.
    Check(ConfigArg),
    /// Show, per metric path, the rewrites, matching rules and output series.
    Explain {
        #[command(flatten)]
        config: ConfigArg,
        /// Metric paths to explain.
        #[arg(required = true)]
        paths: Vec<String>,
    },
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("AGGD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        // A closed stderr (a restarted journald, a reader gone) must not matter: by
        // default tracing-subscriber reports a failed write with eprintln!, which panics.
        .log_internal_errors(false)
        .init();
}

async fn signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

fn run(config: Config) -> anyhow::Result<()> {
    let listeners = BoundListener::bind_all(&config.listeners)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("aggd-io")
        .build()
        .context("starting the tokio runtime")?;
    let stats = rt.block_on(aggd::server::run(config, listeners, signal()))?;
    tracing::info!(
        received = stats.received.load(std::sync::atomic::Ordering::Relaxed),
        aggregates = stats
            .aggregates_emitted
            .load(std::sync::atomic::Ordering::Relaxed),
        sent = stats.sent.load(std::sync::atomic::Ordering::Relaxed),
        dropped = stats.total_drops(),
        "stopped"
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let result = match cli.command {
        Command::Run(c) => c.load().and_then(run),
        Command::Check(c) => c.load().map(|cfg| print!("{}", cfg.summary())),
        Command::Explain { config, paths } => config
            .load()
            .map(|cfg| print!("{}", aggd::explain::explain(&cfg, &paths))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "aggd: {e:#}");
            ExitCode::FAILURE
        }
    }
}
