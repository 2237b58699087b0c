//! The `portico` binary: command line, logging, the runtime, signals (reload, drain).
//!
//! `run` loads the config (portico-config), assembles upstreams and services
//! ([`assemble`]), hands them to the listener core (portico-core) and waits for signals.

mod assemble;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use portico_config::{Config, Loaded};
use portico_core::ListenerSet;
use portico_http::{AccessLog, Metrics, Shared, StatusSource};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "portico",
    version,
    about = "A multi-protocol proxy for Python apps and mail"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    /// Config file (TOML or YAML, by extension); may repeat, later files win key by key.
    #[arg(short, long = "config", global = true)]
    config: Vec<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Run in the foreground (the default).
    Run,
    /// Validate the config and print it merged; exit 0 when valid, 1 when not.
    Check {
        /// Show where each value came from: default, file and line, or env variable.
        #[arg(long)]
        explain: bool,
    },
    /// Ask a running Portico to reload its config (SIGHUP via runtime.pid_file).
    Reload {
        /// The pid file; defaults to runtime.pid_file from the config.
        #[arg(long)]
        pid_file: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Check { explain } => check(&cli.config, explain),
        Command::Reload { pid_file } => match reload_command(&cli.config, pid_file) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portico reload: {e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run => match run(&cli.config) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("portico: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

fn load(given: &[PathBuf]) -> Result<(Vec<PathBuf>, Loaded), Vec<portico_config::ConfigError>> {
    let files = portico_config::find_config_files(given).unwrap_or_default();
    portico_config::load(&files, portico_config::process_env()).map(|l| (files, l))
}

fn check(given: &[PathBuf], explain: bool) -> ExitCode {
    match load(given) {
        Ok((files, loaded)) => {
            if explain {
                for (key, value, origin) in loaded.explain() {
                    println!("{key} = {value}    # {origin}");
                }
            } else {
                print!("{}", loaded.to_toml());
            }
            let from = if files.is_empty() {
                "the embedded default".to_string()
            } else {
                files
                    .iter()
                    .map(|f| f.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            // as strict as `run`: open and build everything run would, bind nothing
            if let Err(e) = build_everything(&loaded.config) {
                eprintln!("{e:#}");
                eprintln!("portico: configuration from {from} is invalid: `run` would refuse it");
                return ExitCode::FAILURE;
            }
            eprintln!("portico: configuration from {from} is valid");
            ExitCode::SUCCESS
        }
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            eprintln!(
                "portico: configuration is invalid ({} error(s))",
                errors.len()
            );
            ExitCode::FAILURE
        }
    }
}

/// What `run` does with a config short of binding its addresses: upstreams (TLS files),
/// limits and maps (mmdb files), the access log, every listener's routes (htpasswd
/// files) and TLS certificates. Prints a warning for a static root that is not a
/// directory (run serves 404 there, as nginx).
fn build_everything(config: &Config) -> anyhow::Result<()> {
    for l in &config.listeners {
        for r in &l.routes {
            if let portico_config::RouteAction::Static(s) = &r.action {
                if !s.root.is_dir() {
                    eprintln!(
                        "warning: listener {} route {}: static root {} is not a directory (requests will get 404)",
                        l.name,
                        r.path,
                        s.root.display()
                    );
                }
            }
        }
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start a runtime")?;
    rt.block_on(async {
        let upstreams = assemble::Upstreams::build(config, &assemble::Upstreams::default(), 1)
            .map_err(anyhow::Error::msg)?;
        let limiters =
            portico_limits::Limiters::build(config, &portico_limits::Limiters::default())
                .map_err(anyhow::Error::msg)?;
        // the disk tiers are not opened (nor created) by a check: their paths are checked
        let mut zones = assemble::cache_zones(config);
        for z in &mut zones {
            if let Some((path, _)) = z.disk.take() {
                if path.exists() && !path.is_dir() {
                    anyhow::bail!(
                        "caches.{}.disk.path: {} is not a directory",
                        z.name,
                        path.display()
                    );
                }
            }
        }
        let caches = portico_cache::Zones::build(zones, &portico_cache::Zones::default())
            .map_err(anyhow::Error::msg)?;
        let access_log = AccessLog::open(&config.log.access_log, config.log.access_log_format)
            .context("cannot open the access log")?;
        let listeners = Arc::new(ListenerSet::new(1).context("cannot start a worker thread")?);
        let shared = Shared {
            access_log,
            status: Arc::new(StatusSource::new(listeners, Arc::new(Metrics::default()))),
            drain: config.runtime.shutdown_timeout,
        };
        assemble::endpoints(config, &upstreams, &limiters, &caches, &shared)
            .map_err(anyhow::Error::msg)?;
        Ok(())
    })
}

fn reload_command(given: &[PathBuf], pid_file: Option<PathBuf>) -> anyhow::Result<()> {
    let pid_file = match pid_file {
        Some(p) => p,
        None => {
            let (_, loaded) = load(given).map_err(|errs| {
                anyhow::anyhow!(errs
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("\n"))
            })?;
            loaded
                .config
                .runtime
                .pid_file
                .context("no --pid-file given and runtime.pid_file is not set")?
        }
    };
    let pid = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("cannot read {}", pid_file.display()))?;
    let pid: u32 = pid
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a pid", pid_file.display()))?;
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .context("cannot run kill")?;
    anyhow::ensure!(status.success(), "kill -HUP {pid} failed");
    println!(
        "portico reload: sent SIGHUP to process {pid} (from {}); the outcome is in its log (\"configuration reloaded\" or \"reload refused\")",
        pid_file.display()
    );
    Ok(())
}

/// Changes the log level on reload (unless `PORTICO_LOG` pins it).
type LogLevelHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

fn init_logging(config: &Config) -> Option<LogLevelHandle> {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let pinned = tracing_subscriber::EnvFilter::try_from_env(portico_config::LOG_FILTER_VAR).ok();
    let is_pinned = pinned.is_some();
    let filter = pinned.unwrap_or_else(|| tracing_subscriber::EnvFilter::new(&config.log.level));
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let json = config.log.format == portico_config::LogFormat::Json;
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(json.then(|| {
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(std::io::stderr)
                .with_target(false)
        }))
        .with((!json).then(|| {
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_target(false)
                .with_ansi(ansi)
        }))
        .try_init();
    std::panic::set_hook(Box::new(|info| {
        tracing::error!(panic = %info, "a task panicked; its connection was closed, the process goes on");
    }));
    (!is_pinned).then_some(handle)
}

fn run(given: &[PathBuf]) -> anyhow::Result<()> {
    let (files, loaded) = match load(given) {
        Ok(l) => l,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            anyhow::bail!("configuration is invalid ({} error(s))", errors.len());
        }
    };
    let config = loaded.config;
    let log_level = init_logging(&config);
    // Each proxied connection holds two descriptors (more with tunnels): use every
    // descriptor the hard limit allows, as nginx's worker_rlimit_nofile would.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(nofile = n, "descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the descriptor limit"),
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if config.runtime.workers > 0 {
        rt.worker_threads(config.runtime.workers);
    }
    let rt = rt
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(serve(files, config, log_level))
}

struct State {
    files: Vec<PathBuf>,
    log_level: Option<LogLevelHandle>,
    config: Config,
    upstreams: assemble::Upstreams,
    limiters: portico_limits::Limiters,
    caches: portico_cache::Zones,
    /// The running config's access log (SIGUSR1 reopens it).
    access_log: Option<AccessLog>,
    listeners: Arc<ListenerSet>,
    status: Arc<StatusSource>,
}

impl State {
    fn shared(&self, config: &Config) -> anyhow::Result<Shared> {
        let access_log = AccessLog::open(&config.log.access_log, config.log.access_log_format)
            .context("cannot open the access log")?
            .counting_into(Arc::clone(&self.status.access_log_dropped));
        Ok(Shared {
            access_log,
            status: Arc::clone(&self.status),
            drain: config.runtime.shutdown_timeout,
        })
    }

    /// Builds and applies `config`; on any error the running state stays as it was.
    fn apply(&mut self, config: Config) -> anyhow::Result<()> {
        let upstreams =
            assemble::Upstreams::build(&config, &self.upstreams, self.listeners.workers())
                .map_err(anyhow::Error::msg)?;
        let limiters =
            portico_limits::Limiters::build(&config, &self.limiters).map_err(anyhow::Error::msg)?;
        let caches = portico_cache::Zones::build(assemble::cache_zones(&config), &self.caches)
            .map_err(anyhow::Error::msg)?;
        let shared = self.shared(&config)?;
        let specs = assemble::endpoints(&config, &upstreams, &limiters, &caches, &shared)
            .map_err(anyhow::Error::msg)?;
        self.listeners
            .apply(specs)
            .map_err(|(addr, e)| anyhow::anyhow!("cannot listen on {addr}: {e}"))?;
        self.status
            .upstreams
            .store(Arc::new(upstreams.shared.values().cloned().collect()));
        if let Some(h) = &self.log_level {
            if config.log.level != self.config.log.level {
                let _ = h.reload(tracing_subscriber::EnvFilter::new(&config.log.level));
            }
        }
        self.status.limits.store(Arc::new(limiters.clone()));
        self.status.caches.store(Arc::new(caches.clone()));
        self.caches = caches;
        self.access_log = Some(shared.access_log.clone());
        self.limiters = limiters;
        self.upstreams = upstreams;
        self.config = config;
        Ok(())
    }

    fn reload(&mut self) {
        tracing::info!("SIGHUP: reloading configuration");
        let loaded = portico_config::load(&self.files, portico_config::process_env());
        let result = match loaded {
            Ok(l) => {
                if l.config.runtime.workers != self.config.runtime.workers {
                    tracing::warn!("runtime.workers changes take effect at the next start");
                }
                self.apply(l.config)
            }
            Err(errors) => {
                for e in &errors {
                    tracing::error!("{e}");
                }
                Err(anyhow::anyhow!("{} config error(s)", errors.len()))
            }
        };
        match result {
            Ok(()) => {
                self.status.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!("configuration reloaded");
            }
            Err(e) => {
                self.status.failed_reloads.fetch_add(1, Ordering::Relaxed);
                tracing::error!("reload refused, the previous configuration keeps serving: {e:#}");
            }
        }
    }
}

async fn serve(
    files: Vec<PathBuf>,
    config: Config,
    log_level: Option<LogLevelHandle>,
) -> anyhow::Result<()> {
    // one entry per bound address (virtual hosts share one), with their names
    let mut listen: Vec<(String, Vec<&str>)> = Vec::new();
    for l in &config.listeners {
        for a in &l.listen {
            let addr = format!("{} {a}", l.protocol);
            match listen.iter_mut().find(|(x, _)| *x == addr) {
                Some((_, names)) => names.push(&l.name),
                None => listen.push((addr, vec![&l.name])),
            }
        }
    }
    let listen: Vec<String> = listen
        .into_iter()
        .map(|(addr, names)| match names.len() {
            1 => addr,
            _ => format!("{addr} ({})", names.join(", ")),
        })
        .collect();
    if files.is_empty() {
        tracing::info!(
            "portico {} starting on the embedded default config (no config file found): {}",
            env!("CARGO_PKG_VERSION"),
            listen.join(", ")
        );
    } else {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        tracing::info!(
            "portico {} starting with config {}: {}",
            env!("CARGO_PKG_VERSION"),
            names.join(", "),
            listen.join(", ")
        );
    }
    let workers = match config.runtime.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let listeners = Arc::new(ListenerSet::new(workers).context("cannot start worker threads")?);
    let status = Arc::new(StatusSource::new(
        Arc::clone(&listeners),
        Arc::new(Metrics::default()),
    ));
    let mut state = State {
        files,
        log_level,
        config: config.clone(),
        upstreams: assemble::Upstreams::default(),
        limiters: portico_limits::Limiters::default(),
        caches: portico_cache::Zones::default(),
        access_log: None,
        listeners: Arc::clone(&listeners),
        status,
    };
    // Signal handlers first: a SIGTERM during start-up must not kill us half-way.
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    // The signals an nginx operator sends habitually must never kill Portico (their
    // default action would): USR1 reopens the logs (logrotate), QUIT drains as TERM,
    // USR2 and WINCH are logged and ignored.
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("cannot handle SIGUSR2")?;
    let mut quit = signal(SignalKind::quit()).context("cannot handle SIGQUIT")?;
    let mut winch = signal(SignalKind::window_change()).context("cannot handle SIGWINCH")?;
    // The pid file first: once a port answers, `portico reload` finds the process.
    let pid_file = config.runtime.pid_file.clone();
    if let Some(p) = &pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .with_context(|| format!("cannot write pid file {}", p.display()))?;
    }
    if let Err(e) = state.apply(config) {
        if let Some(p) = &pid_file {
            let _ = std::fs::remove_file(p);
        }
        return Err(e);
    }
    tracing::info!("ready");
    let which = loop {
        tokio::select! {
            _ = hup.recv() => state.reload(),
            _ = term.recv() => break "SIGTERM",
            _ = int.recv() => break "SIGINT",
            _ = quit.recv() => break "SIGQUIT",
            _ = usr1.recv() => {
                tracing::info!("SIGUSR1: reopening the access log");
                if let Some(log) = &state.access_log {
                    log.reopen();
                }
            }
            _ = usr2.recv() => tracing::warn!(
                "SIGUSR2 (nginx's binary upgrade) is not supported yet: ignored, the process goes on"
            ),
            _ = winch.recv() => tracing::info!("SIGWINCH ignored (Portico has no worker processes to stop)"),
        }
    };
    let timeout = state.config.runtime.shutdown_timeout;
    tracing::info!(
        open = listeners.open_connections(),
        ?timeout,
        "{which}: draining"
    );
    if listeners.shutdown(timeout).await {
        tracing::info!("all connections finished; exiting");
    } else {
        tracing::warn!(
            open = listeners.open_connections(),
            "shutdown_timeout reached; closing the remaining connections"
        );
    }
    if let Some(p) = &pid_file {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}
