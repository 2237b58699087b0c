//! The `portico` binary: command line, logging, the runtime, signals (reload, drain).
//!
//! `run` loads the config (portico-config), assembles upstreams and services
//! ([`assemble`]), hands them to the listener core (portico-core) and waits for signals.

/// jemalloc (feature `jemalloc`, on by default) in place of the system's malloc:
/// fewer instructions per request, and with its background thread (started in `run`)
/// the pages a burst of requests used go back to the system once they have been free
/// for a while (glibc keeps them: docs/performance.md, "Idle keep-alive connections").
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

mod assemble;
mod logging;
mod notify;
mod upgrade;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use portico_config::{Config, Loaded};
use portico_core::{Inherited, ListenerSet};
use portico_http::{AccessLog, Metrics, Shared, StatusSource};
use tokio::signal::unix::{signal, SignalKind};
use tokio_util::sync::CancellationToken;

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
    /// Replace the running Portico by a new binary without dropping a connection
    /// (SIGUSR2 via runtime.pid_file); waits until the new process is ready.
    Upgrade {
        /// The pid file; defaults to runtime.pid_file from the config.
        #[arg(long)]
        pid_file: Option<PathBuf>,
        /// The binary to start; defaults to the path the running process was started from.
        #[arg(long)]
        binary: Option<PathBuf>,
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
        Command::Upgrade { pid_file, binary } => {
            match upgrade_command(&cli.config, pid_file, binary) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("portico upgrade: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run => {
            // before any thread: both read and clear environment variables
            let (inherited, warnings) = Inherited::from_env();
            let start = Start {
                inherited,
                warnings,
                notifier: notify::Notifier::from_env(),
                invocation: upgrade::Invocation::current(),
            };
            match run(&cli.config, start) {
                Ok(()) => ExitCode::SUCCESS,
                Err((e, notifier)) => {
                    eprintln!("portico: {e:#}");
                    notifier.failed(&format!("{e:#}"));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// What the process brought from its start: sockets handed over (systemd, or the old
/// process of an upgrade), who wants to hear it is ready, how it was invoked.
struct Start {
    inherited: Inherited,
    warnings: Vec<String>,
    notifier: notify::Notifier,
    invocation: upgrade::Invocation,
}

fn load(given: &[PathBuf]) -> Result<(Vec<PathBuf>, Loaded), Vec<portico_config::ConfigError>> {
    let files = portico_config::find_config_files(given).unwrap_or_default();
    portico_config::load(&files, portico_config::process_env()).map(|l| (files, l))
}

fn check(given: &[PathBuf], explain: bool) -> ExitCode {
    portico_acme::check_only();
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
        let (logs, access_log) = open_logs(config, Arc::default())?;
        let listeners = Arc::new(ListenerSet::new(1).context("cannot start a worker thread")?);
        let shared = Shared {
            access_log,
            logs,
            status: Arc::new(StatusSource::new(listeners, Arc::new(Metrics::default()))),
            drain: config.runtime.shutdown_timeout,
        };
        assemble::endpoints(config, &upstreams, &limiters, &caches, &shared)
            .map_err(anyhow::Error::msg)?;
        Ok(())
    })
}

/// The pid file a command talks through (`--pid-file`, or runtime.pid_file), and the
/// config when it could be loaded.
fn pid_file_of(
    given: &[PathBuf],
    pid_file: Option<PathBuf>,
) -> anyhow::Result<(PathBuf, Option<Config>)> {
    let loaded = load(given).map_err(|errs| {
        anyhow::anyhow!(errs
            .iter()
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join("\n"))
    });
    match (pid_file, loaded) {
        (Some(p), loaded) => Ok((p, loaded.ok().map(|(_, l)| l.config))),
        (None, loaded) => {
            let config = loaded?.1.config;
            let p = config
                .runtime
                .pid_file
                .clone()
                .context("no --pid-file given and runtime.pid_file is not set")?;
            Ok((p, Some(config)))
        }
    }
}

fn upgrade_command(
    given: &[PathBuf],
    pid_file: Option<PathBuf>,
    binary: Option<PathBuf>,
) -> anyhow::Result<()> {
    let (pid_file, config) = pid_file_of(given, pid_file)?;
    // the running process gives up after its upgrade_timeout; leave it room to say so
    let timeout = config.map_or(Duration::from_secs(30), |c| c.runtime.upgrade_timeout);
    upgrade::command(&pid_file, binary, timeout + Duration::from_secs(15))
}

fn reload_command(given: &[PathBuf], pid_file: Option<PathBuf>) -> anyhow::Result<()> {
    let (pid_file, _) = pid_file_of(given, pid_file)?;
    let pid = upgrade::signal_pid_file(&pid_file, nix::sys::signal::Signal::SIGHUP)?;
    println!(
        "portico reload: sent SIGHUP to process {pid} (from {}); the outcome is in its log (\"configuration reloaded\" or \"reload refused\")",
        pid_file.display()
    );
    Ok(())
}

/// The access log destinations of a config and its global log; lines dropped by a
/// writer that cannot keep up are counted into `dropped`.
fn open_logs(
    config: &Config,
    dropped: Arc<std::sync::atomic::AtomicU64>,
) -> anyhow::Result<(portico_http::access_log::Writers, AccessLog)> {
    let logs = portico_http::access_log::Writers::new(dropped);
    let global = logs
        .log(&config.log.access_log, &config.log.access_log_format, None)
        .context("cannot open the access log")?;
    Ok((logs, global))
}

fn run(given: &[PathBuf], start: Start) -> Result<(), (anyhow::Error, notify::Notifier)> {
    let (files, loaded) = match load(given) {
        Ok(l) => l,
        Err(errors) => {
            for e in &errors {
                eprintln!("{e}");
            }
            // the old process of an upgrade reports the first one as the reason
            let first = errors.first().map(|e| e.to_string()).unwrap_or_default();
            start.notifier.failed(&format!(
                "configuration is invalid ({} error(s)); the first: {first}",
                errors.len()
            ));
            let e = anyhow::anyhow!("configuration is invalid ({} error(s))", errors.len());
            return Err((e, notify::Notifier::default()));
        }
    };
    let config = loaded.config;
    let logging = match logging::init(&config) {
        Ok(l) => l,
        Err(e) => return Err((e, start.notifier)),
    };
    for w in &start.warnings {
        tracing::warn!("{w}");
    }
    // Each proxied connection holds two descriptors (more with tunnels): use every
    // descriptor the hard limit allows, as nginx's worker_rlimit_nofile would.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) => tracing::debug!(nofile = n, "descriptor limit"),
        Err(e) => tracing::warn!(error = %e, "cannot raise the descriptor limit"),
    }
    // jemalloc's own thread purges dirty pages after their decay time (10 s), so memory
    // freed after a burst is given back even while no request allocates
    #[cfg(feature = "jemalloc")]
    if let Err(e) = tikv_jemalloc_ctl::background_thread::write(true) {
        tracing::warn!(error = %e, "jemalloc's background thread did not start: freed memory is given back only as requests allocate");
    }
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if config.runtime.workers > 0 {
        rt.worker_threads(config.runtime.workers);
    }
    let rt = match rt.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            return Err((
                anyhow::Error::new(e).context("cannot start the runtime"),
                start.notifier,
            ))
        }
    };
    let notifier = start.notifier;
    let rest = (start.inherited, start.invocation);
    rt.block_on(serve(files, config, logging, rest, &notifier))
        .map_err(|e| (e, notifier))
}

/// Why the main loop ended.
enum Stop {
    Signal(&'static str),
    /// A new process serves on our sockets: drain without removing socket files.
    HandedOver,
}

/// Writes the pid file (whole, or not at all).
fn write_pid_file(p: &std::path::Path) -> anyhow::Result<()> {
    upgrade::write_atomically(p, &format!("{}\n", std::process::id()))
        .with_context(|| format!("cannot write pid file {}", p.display()))
}

/// Removes the pid file if it still names this process (after an upgrade it names the
/// new one).
fn remove_pid_file(p: &std::path::Path) {
    let mine = std::fs::read_to_string(p).is_ok_and(|t| t.trim() == std::process::id().to_string());
    if mine {
        let _ = std::fs::remove_file(p);
    }
}

/// The outcome of a pending upgrade (never, when none is pending).
async fn upgrade_outcome(
    pending: &mut Option<(
        tokio::task::JoinHandle<Result<u32, String>>,
        CancellationToken,
    )>,
) -> Result<u32, String> {
    match pending {
        Some((task, _)) => task
            .await
            .unwrap_or_else(|e| Err(format!("the upgrade task failed: {e}"))),
        None => std::future::pending().await,
    }
}

struct State {
    files: Vec<PathBuf>,
    logging: logging::Logging,
    config: Config,
    upstreams: assemble::Upstreams,
    limiters: portico_limits::Limiters,
    caches: portico_cache::Zones,
    /// The running config's access log destinations (SIGUSR1 reopens them).
    logs: Option<portico_http::access_log::Writers>,
    listeners: Arc<ListenerSet>,
    status: Arc<StatusSource>,
    /// Obtains and renews ACME certificates; a new one makes the process reload.
    acme: portico_acme::Manager,
    /// Fetches the OCSP staples of `ocsp = "fetch"` certificates.
    stapler: portico_acme::ocsp::Stapler,
}

impl State {
    fn shared(&self, config: &Config) -> anyhow::Result<Shared> {
        let (logs, access_log) = open_logs(config, Arc::clone(&self.status.access_log_dropped))?;
        Ok(Shared {
            access_log,
            logs,
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
        self.acme.ensure(&assemble::acme_blocks(&config));
        self.stapler.ensure(&assemble::ocsp_fetched(&config));
        self.status
            .upstreams
            .store(Arc::new(upstreams.shared.values().cloned().collect()));
        if let Some(h) = &self.logging.level {
            if config.log.level != self.config.log.level {
                let _ = h.reload(tracing_subscriber::EnvFilter::new(&config.log.level));
            }
        }
        self.status.limits.store(Arc::new(limiters.clone()));
        self.status.caches.store(Arc::new(caches.clone()));
        self.caches = caches;
        self.logs = Some(shared.logs.clone());
        self.limiters = limiters;
        self.upstreams = upstreams;
        self.config = config;
        Ok(())
    }

    /// Reloads the config files (`why`: SIGHUP, a new ACME certificate), telling systemd.
    fn reload(&mut self, why: &str, notifier: &notify::Notifier) {
        tracing::info!("{why}: reloading configuration");
        notifier.reloading();
        self.reload_files();
        notifier.reloaded();
    }

    fn reload_files(&mut self) {
        let loaded = portico_config::load(&self.files, portico_config::process_env());
        let result = match loaded {
            Ok(l) => {
                if l.config.runtime.workers != self.config.runtime.workers {
                    tracing::warn!("runtime.workers changes take effect at the next start");
                }
                if l.config.log.file != self.logging.destination {
                    tracing::warn!("log.file changes take effect at the next start (or upgrade)");
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
    logging: logging::Logging,
    (inherited, invocation): (Inherited, upgrade::Invocation),
    notifier: &notify::Notifier,
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
            pid = std::process::id(),
            "portico {} starting on the embedded default config (no config file found): {}",
            env!("CARGO_PKG_VERSION"),
            listen.join(", ")
        );
    } else {
        let names: Vec<String> = files.iter().map(|f| f.display().to_string()).collect();
        tracing::info!(
            pid = std::process::id(),
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
    if !inherited.is_empty() {
        tracing::info!(
            "{} inherited listening socket(s): {}",
            inherited.len(),
            inherited.addresses().join(", ")
        );
        listeners.adopt(inherited);
    }
    let status = Arc::new(StatusSource::new(
        Arc::clone(&listeners),
        Arc::new(Metrics::default()),
    ));
    let (acme_tx, mut acme_rx) = tokio::sync::mpsc::unbounded_channel();
    let mut state = State {
        files,
        logging,
        config: config.clone(),
        upstreams: assemble::Upstreams::default(),
        limiters: portico_limits::Limiters::default(),
        caches: portico_cache::Zones::default(),
        logs: None,
        listeners: Arc::clone(&listeners),
        status,
        acme: portico_acme::Manager::new(move || {
            let _ = acme_tx.send(());
        }),
        stapler: portico_acme::ocsp::Stapler::default(),
    };
    // Signal handlers first: a SIGTERM during start-up must not kill us half-way.
    let mut hup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
    let mut term = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    // The signals an nginx operator sends habitually must never kill Portico (their
    // default action would): USR1 reopens the logs (logrotate), QUIT drains as TERM,
    // USR2 upgrades the binary, WINCH is logged and ignored.
    let mut usr1 = signal(SignalKind::user_defined1()).context("cannot handle SIGUSR1")?;
    let mut usr2 = signal(SignalKind::user_defined2()).context("cannot handle SIGUSR2")?;
    let mut quit = signal(SignalKind::quit()).context("cannot handle SIGQUIT")?;
    let mut winch = signal(SignalKind::window_change()).context("cannot handle SIGWINCH")?;
    // The pid file first: once a port answers, `portico reload` finds the process. A
    // process started by an upgrade writes it once ready: until then the old one is
    // the one to signal.
    let pid_file = config.runtime.pid_file.clone();
    if let (Some(p), false) = (&pid_file, notifier.is_upgrade()) {
        write_pid_file(p)?;
    }
    if let Err(e) = state.apply(config) {
        if let Some(p) = &pid_file {
            remove_pid_file(p);
        }
        return Err(e);
    }
    if let (Some(p), true) = (&pid_file, notifier.is_upgrade()) {
        write_pid_file(p)?;
    }
    tracing::info!("ready");
    notifier.ready();
    let mut pending = None;
    let stop = loop {
        tokio::select! {
            Some(()) = acme_rx.recv() => state.reload("a new ACME certificate", notifier),
            _ = hup.recv() => state.reload("SIGHUP", notifier),
            _ = term.recv() => break Stop::Signal("SIGTERM"),
            _ = int.recv() => break Stop::Signal("SIGINT"),
            _ = quit.recv() => break Stop::Signal("SIGQUIT"),
            _ = usr1.recv() => {
                if let Some(logs) = &state.logs {
                    logs.reopen();
                }
                state.logging.reopen();
                // after the reopen: the first line of the new process log file
                tracing::info!("SIGUSR1: log files reopened");
            }
            _ = usr2.recv() => {
                if pending.is_some() {
                    tracing::warn!("SIGUSR2: an upgrade is already in progress; ignored");
                    continue;
                }
                let binary = upgrade::take_request(pid_file.as_deref())
                    .unwrap_or_else(|| invocation.binary.clone());
                tracing::info!(binary = %binary.display(), "SIGUSR2: upgrading the binary");
                let cancel = CancellationToken::new();
                let task = tokio::spawn({
                    let (listeners, inv, cancel) = (Arc::clone(&listeners), invocation.clone(), cancel.clone());
                    let systemd = notifier.systemd_socket().map(str::to_string);
                    let timeout = state.config.runtime.upgrade_timeout;
                    async move {
                        upgrade::start_new(&listeners, &inv, &binary, systemd.as_deref(), timeout, cancel).await
                    }
                });
                pending = Some((task, cancel));
            }
            outcome = upgrade_outcome(&mut pending) => {
                pending = None;
                upgrade::write_result(pid_file.as_deref(), &outcome);
                match outcome {
                    Ok(pid) => {
                        tracing::info!(new_pid = pid, "upgrade: the new process is ready; this one stops accepting");
                        break Stop::HandedOver;
                    }
                    Err(reason) => tracing::error!("upgrade failed, this process keeps serving: {reason}"),
                }
            }
            _ = winch.recv() => tracing::info!("SIGWINCH ignored (Portico has no worker processes to stop)"),
        }
    };
    if let Some((task, cancel)) = pending.take() {
        // stopping while a new binary starts: it is stopped too
        cancel.cancel();
        let outcome = task
            .await
            .unwrap_or_else(|e| Err(format!("the upgrade task failed: {e}")));
        upgrade::write_result(pid_file.as_deref(), &outcome);
    }
    let timeout = state.config.runtime.shutdown_timeout;
    let which = match stop {
        Stop::Signal(s) => s,
        Stop::HandedOver => "upgrade",
    };
    tracing::info!(
        open = listeners.open_connections(),
        ?timeout,
        "{which}: draining"
    );
    let drained = match stop {
        Stop::Signal(_) => {
            notifier.stopping();
            listeners.shutdown(timeout).await
        }
        Stop::HandedOver => listeners.shutdown_handed_over(timeout).await,
    };
    if drained {
        tracing::info!("all connections finished; exiting");
    } else {
        tracing::warn!(
            open = listeners.open_connections(),
            "shutdown_timeout reached; closing the remaining connections"
        );
    }
    if let Some(p) = &pid_file {
        remove_pid_file(p);
    }
    Ok(())
}
