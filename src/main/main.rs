//! The `aggd` binary: parses arguments and calls the library.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

mod inspect;
mod replay;

use aggd::config::{Config, carbon};
use aggd::listen::BoundListener;
use aggd::server::Signal;

/// Live output series `aggd check` counts in the memory bound it prints.
use aggd::memory::CHECK_LIVE_SERIES;

/// A Graphite-compatible aggregation daemon.
#[derive(Parser)]
#[command(name = "aggd", version, about = "A Graphite-compatible aggregation daemon", long_about = None)]
struct Cli {
    /// Log as JSON lines instead of plain text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

/// Which configuration to read.
#[derive(Args, Clone)]
struct ConfigArg {
    #[command(flatten)]
    source: Source,
    /// carbon's instance (with --carbon-conf): which [aggregator:<instance>] section
    /// applies, and the instance in self-metric names.
    #[arg(long)]
    instance: Option<String>,
}

/// An aggd TOML file or a carbon.conf.
#[derive(Args, Clone)]
#[group(required = true, multiple = false)]
struct Source {
    /// aggd TOML config file.
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    /// An existing carbon.conf; its [aggregator] section is used, with
    /// [aggregator:<instance>] over it.
    #[arg(long = "carbon-conf")]
    carbon_conf: Option<PathBuf>,
}

impl ConfigArg {
    fn load_config(&self) -> Result<Config, aggd::config::ConfigError> {
        match (&self.source.config, &self.source.carbon_conf) {
            (Some(p), _) if self.instance.is_some() => Err(aggd::config::ConfigError::Invalid {
                file: p.clone(),
                message:
                    "--instance goes with --carbon-conf (an aggd config sets service.instance)"
                        .into(),
            }),
            (Some(p), _) => Config::load(p),
            (None, Some(p)) => {
                let instance = self.instance.as_deref();
                carbon::load_instance(p, instance.unwrap_or(carbon::DEFAULT_INSTANCE))
            }
            (None, None) => Err(aggd::config::ConfigError::Invalid {
                file: PathBuf::from("-"),
                message: "give -c FILE or --carbon-conf FILE".into(),
            }),
        }
    }

    fn load(&self) -> anyhow::Result<Config> {
        Ok(self.load_config()?)
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Run(ConfigArg),
    /// Validate the config and rules files, print a summary, and do what `run` does
    /// short of serving: bind each listener, lock the journal directory, resolve the
    /// destinations, check the memory bound against the machine.
    Check(CheckArgs),
    /// Show, per metric path, the rewrites, matching rules and output series.
    Explain {
        #[command(flatten)]
        config: ConfigArg,
        /// Metric paths to explain.
        #[arg(required = true)]
        paths: Vec<String>,
    },
    /// Recompute intervals from the journal and send the complete aggregates.
    Replay(ReplayArgs),
    /// Inspect the journal.
    Journal {
        #[command(subcommand)]
        command: JournalCommand,
    },
    /// Cluster mode (`[cluster]`).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Show what a running aggd holds for the output series matching PATTERN (a regex):
    /// each one's method and interval, the intervals it holds with their aggregate so far,
    /// its last emission, and in cluster mode its shard and owner. Asks the admin API
    /// (`GET /api/series`, `[admin]` with a token) of the aggd the config describes.
    Inspect {
        #[command(flatten)]
        config: ConfigArg,
        /// A regex over output series names.
        pattern: String,
        /// Most series shown.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print the aggd.toml equivalent to a carbon.conf (`--carbon-conf F [--instance X]`),
    /// with a comment for every key it maps or ignores: `aggd migrate --carbon-conf
    /// /etc/carbon/carbon.conf > /etc/aggd/aggd.toml`.
    Migrate(ConfigArg),
    /// Print a shell completion script (e.g. `aggd completions bash >
    /// /usr/share/bash-completion/completions/aggd`).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff, `aggd(1)`), e.g. `aggd man | man -l -`.
    Man,
}

#[derive(Args)]
struct CheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Do not bind the listeners (e.g. while aggd runs on the same addresses).
    #[arg(long)]
    no_bind: bool,
}

#[derive(Subcommand)]
enum ClusterCommand {
    /// The nodes with their publish and consumer lags, and the shard map.
    Status(ConfigArg),
}

#[derive(Subcommand)]
enum JournalCommand {
    /// Segments, time ranges, sizes, corruption, and the loss ledger.
    Stat(ConfigArg),
}

#[derive(Args)]
struct ReplayArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Start of the window: epoch seconds, RFC 3339, `now` or `-2h`.
    #[arg(long, allow_hyphen_values = true)]
    from: Option<String>,
    /// End of the window (inclusive), same forms.
    #[arg(long, allow_hyphen_values = true)]
    to: Option<String>,
    /// Replay the unreplayed windows of the loss ledger and mark them replayed.
    #[arg(long)]
    lost: bool,
    /// Only output series whose name matches this regex.
    #[arg(long = "match")]
    matching: Option<String>,
    /// Only records of this tenant.
    #[arg(long)]
    tenant: Option<String>,
    /// Most input datapoints read per second (0 = unlimited).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Send to this host:port (pickle) instead of the configured destinations.
    #[arg(long)]
    dest: Option<String>,
    /// Compute and report; send nothing.
    #[arg(long)]
    dry_run: bool,
    /// With --dry-run: print each computed aggregate to stdout as a carbon plaintext line
    /// (`path value timestamp`), before the summary.
    #[arg(long, requires = "dry_run")]
    print: bool,
    /// Also replay the datapoints refused at receive time for these reasons
    /// (comma-separated: tenant_deleted, tenant_blocked, tenant_unknown, rate_limited,
    /// series_limit, blacklist, whitelist, queue_full). Without it, replay sends exactly
    /// what was accepted.
    #[arg(long, value_delimiter = ',')]
    include_refused: Vec<String>,
    /// Read the cluster's stream (`[cluster]`) instead of the local journal: works from
    /// any node, and after a node's disk is lost. Implied by a config with `[cluster]`.
    #[arg(long)]
    cluster: bool,
}

fn init_logging(json: bool) {
    use tracing_subscriber::EnvFilter;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("AGGD_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal() && !json)
        // A closed stderr (a restarted journald, a reader gone) must not matter: by
        // default tracing-subscriber reports a failed write with eprintln!, which panics.
        .log_internal_errors(false);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Forwards SIGHUP as [`Signal::Reload`] and SIGTERM/SIGINT as [`Signal::Stop`].
fn signals() -> anyhow::Result<tokio::sync::mpsc::Receiver<Signal>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let (tx, rx) = tokio::sync::mpsc::channel(8);
    tokio::spawn(async move {
        loop {
            let s = tokio::select! {
                _ = term.recv() => Signal::Stop,
                _ = int.recv() => Signal::Stop,
                _ = hup.recv() => Signal::Reload,
            };
            if tx.send(s).await.is_err() || s == Signal::Stop {
                return;
            }
        }
    });
    Ok(rx)
}

fn run(config: Config, source: ConfigArg) -> anyhow::Result<()> {
    #[cfg(feature = "fault-injection")]
    let config = with_test_faults(config);
    let listeners = BoundListener::from_systemd_or_bind(&config.listeners)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("aggd-io")
        .build()
        .context("starting the tokio runtime")?;
    let stats = rt.block_on(async {
        let signals = signals()?;
        let load = move || source.load_config();
        anyhow::Ok(aggd::server::run(config, listeners, signals, load).await?)
    })?;
    tracing::info!(
        received = stats.received.load(std::sync::atomic::Ordering::Relaxed),
        aggregates = stats
            .aggregates_emitted
            .load(std::sync::atomic::Ordering::Relaxed),
        sent = stats.sent.load(std::sync::atomic::Ordering::Relaxed),
        dropped = stats.total_drops(),
        unjournaled = stats.unjournaled(),
        "stopped"
    );
    Ok(())
}

/// `aggd cluster status`: joins (read-only use) and prints the shard map and lags.
fn cluster_status(config: &Config) -> anyhow::Result<()> {
    let Some(c) = &config.cluster else {
        anyhow::bail!("the config has no [cluster] section");
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let text = rt.block_on(async {
        let joined = aggd::cluster::nats::join(c, None).await?;
        anyhow::Ok(
            aggd::cluster::owner::status(&joined)
                .await
                .map_err(|e| anyhow::anyhow!(e))?,
        )
    })?;
    print!("{text}");
    Ok(())
}

/// The journal directory and the ledger file.
fn journal_paths(config: &Config) -> anyhow::Result<(PathBuf, PathBuf)> {
    match &config.journal {
        Some(j) => Ok((j.dir.clone(), j.ledger.clone())),
        None => anyhow::bail!("the config has no [journal] section"),
    }
}

/// Test builds only (feature `fault-injection`, which only the test suite enables):
/// `AGGD_FAULT_STALL_SERIES=<series>:<ms>` stalls the worker that applies a datapoint of
/// that output series, for the systemd watchdog and health tests of the real binary.
#[cfg(feature = "fault-injection")]
fn with_test_faults(mut config: Config) -> Config {
    let v = std::env::var("AGGD_FAULT_STALL_SERIES").unwrap_or_default();
    if let Some((series, ms)) = v.rsplit_once(':')
        && let Ok(ms) = ms.parse()
    {
        let stall = std::time::Duration::from_millis(ms);
        config.faults.stall_on_series = Some((series.to_string(), stall));
    }
    config
}

/// `aggd check`: the summary and the memory bound, then the preflight's findings
/// ([`aggd::preflight`]); fails if any is an error.
fn check(cfg: &aggd::config::Config, bind: bool) -> anyhow::Result<()> {
    print!("{cfg}{}", cfg.memory_bound(CHECK_LIVE_SERIES));
    let findings = aggd::preflight::preflight(
        cfg,
        aggd::preflight::Options {
            bind,
            live_series: CHECK_LIVE_SERIES,
        },
    );
    for f in &findings {
        println!("{f}");
    }
    let errors = findings
        .iter()
        .filter(|f| f.severity == aggd::preflight::Severity::Error)
        .count();
    anyhow::ensure!(
        errors == 0,
        "{errors} error(s) above: aggd run would not start (or not as configured)"
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_json);
    let result = match cli.command {
        Command::Run(c) => c.load().and_then(|cfg| run(cfg, c.clone())),
        Command::Check(c) => c.config.load().and_then(|cfg| check(&cfg, !c.no_bind)),
        Command::Explain { config, paths } => config
            .load()
            .map(|cfg| print!("{}", aggd::explain::explain(&cfg, &paths))),
        Command::Replay(args) => replay::run(args),
        Command::Cluster {
            command: ClusterCommand::Status(c),
        } => c.load().and_then(|cfg| cluster_status(&cfg)),
        Command::Inspect {
            config,
            pattern,
            limit,
        } => config
            .load()
            .and_then(|cfg| inspect::run(&cfg, &pattern, limit)),
        Command::Migrate(c) => match &c.source.carbon_conf {
            Some(path) => aggd::config::carbon::migrate(
                path,
                c.instance
                    .as_deref()
                    .unwrap_or(aggd::config::carbon::DEFAULT_INSTANCE),
            )
            .map(|toml| print!("{toml}"))
            .map_err(anyhow::Error::from),
            None => Err(anyhow::anyhow!(
                "migrate reads a carbon.conf: give --carbon-conf FILE"
            )),
        },
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(shell, &mut Cli::command(), "aggd", &mut std::io::stdout());
            Ok(())
        }
        Command::Man => {
            use clap::CommandFactory;
            clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(anyhow::Error::from)
        }
        Command::Journal {
            command: JournalCommand::Stat(c),
        } => c.load().and_then(|cfg| {
            let (dir, ledger) = journal_paths(&cfg)?;
            print!("{}", aggd::replay::journal_stat(&dir, &ledger)?);
            Ok(())
        }),
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
