//! Wires the stages together: creates the channels and the shared values (the status
//! channel, the `exec` child's handle), spawns every long-lived task (source, pipeline,
//! reload queue, config reloader, HTTP endpoint, signal handlers), owns the cancellation
//! token, and maps each command's outcome to a result.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::Config;
use crate::error::AgentError;
use crate::exec::{self, ChildHandle};
use crate::pipeline::{self, Channels, ConnectionState, Core, Mode, Status, Summary};
use crate::status::StatusReport;
use crate::{fleet, hotreload, notify, ops, source};

/// How long the pipeline may take to finish the install in progress after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Compiles every template of `config` (what `check` does after loading the config).
///
/// # Errors
/// [`AgentError::Templates`] listing every template that does not compile.
pub fn compile(config: &Config) -> Result<Core, AgentError> {
    Core::for_config(config).map_err(AgentError::Templates)
}

/// The agent: runs until `shutdown` is cancelled.
///
/// # Errors
/// Template errors at start-up, or a source failure no retry fixes.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AgentError> {
    config.refuse_exec_only()?;
    let core = compile(&config)?;
    info!(config = %config.describe(), files = config.files.len(), watch = ?config.zookeeper.watch, "zkrender starting");
    let (status_tx, status_rx) = watch::channel(Arc::new(StatusReport::default()));
    let OpsHandles { alive, listen } = start_ops(&config, status_rx, shutdown.clone()).await?;
    let result =
        drive(&config, core, Mode::Run, None, shutdown, status_tx, None, Some(listen)).await.map(|_| ());
    alive.store(false, Ordering::SeqCst);
    ops::systemd::notify_stopping();
    result
}

/// What [`start_ops`] started: the flag `/healthz` reports (set it false when the agent stops)
/// and where config reloads send the new `[agent] listen`.
struct OpsHandles {
    alive: Arc<AtomicBool>,
    listen: watch::Sender<Option<String>>,
}

/// Starts the HTTP endpoint (bound now when `listen` is set; it follows later config reloads)
/// and the systemd readiness notification.
///
/// # Errors
/// The `listen` address cannot be bound.
async fn start_ops(
    config: &Config,
    status: watch::Receiver<Arc<StatusReport>>,
    shutdown: CancellationToken,
) -> Result<OpsHandles, AgentError> {
    let alive = Arc::new(AtomicBool::new(true));
    let first = match &config.agent.listen {
        Some(listen) => {
            let listener = ops::bind(listen).await.map_err(AgentError::Listen)?;
            let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| listen.clone());
            info!(listen = %addr, "serving /healthz /readyz /metrics /status");
            Some(listener)
        }
        None => None,
    };
    let (listen, listen_rx) = watch::channel(config.agent.listen.clone());
    tokio::spawn(ops::endpoint(first, listen_rx, status.clone(), alive.clone(), shutdown));
    // systemd Type=notify: READY=1 once every file has been written (or found correct).
    let mut status = status;
    tokio::spawn(async move {
        if status.wait_for(|r| r.ready).await.is_ok() {
            info!("ready: every file is written");
            ops::systemd::notify_ready();
        }
    });
    Ok(OpsHandles { alive, listen })
}

/// `exec`: renders every file, starts `argv` as a child, and keeps the files up to date while
/// it runs; reloads may signal or restart the child. Returns the child's exit code.
///
/// # Errors
/// Template errors; files not all written within `timeout` (the child is not started then);
/// the child cannot be started.
pub async fn exec(config: Config, argv: Vec<String>, timeout: Duration) -> Result<i32, AgentError> {
    let core = compile(&config)?;
    info!(config = %config.describe(), files = config.files.len(), "zkrender exec starting");
    // In exec mode SIGTERM and friends go to the child; zkrender stops when the child exits.
    let shutdown = CancellationToken::new();
    let (status_tx, mut status_rx) = watch::channel(Arc::new(StatusReport::default()));
    let OpsHandles { alive, listen } = start_ops(&config, status_rx.clone(), shutdown.clone()).await?;
    let (child, restarts) = ChildHandle::supervised();
    let agent = {
        let config = config.clone();
        let shutdown = shutdown.clone();
        let child = child.clone();
        tokio::spawn(async move {
            drive(&config, core, Mode::Run, None, shutdown, status_tx, Some(child), Some(listen)).await
        })
    };
    let ready = matches!(tokio::time::timeout(timeout, status_rx.wait_for(|r| r.ready)).await, Ok(Ok(_)));
    if !ready {
        let report = status_rx.borrow().clone();
        shutdown.cancel();
        let _ = agent.await;
        let details: Vec<String> = report
            .pending()
            .map(|f| match &report.zookeeper.error {
                // Still connecting: the cause per host says more than "waiting for znodes".
                Some(why) if f.state == "pending" => format!("  {}: no ZooKeeper session: {why}", f.dest),
                _ => {
                    format!("  {}: {}", f.dest, f.last_error.clone().or(f.reason.clone()).unwrap_or_default())
                }
            })
            .collect();
        return Err(AgentError::NotAllWritten {
            count: details.len(),
            total: report.files.len(),
            details: details.join("\n"),
        });
    }
    let running = exec::start(&argv, &child).map_err(AgentError::Child)?;
    // Signals go to the child from now on; as PID 1, zkrender also reaps adopted orphans.
    for forwarder in exec::signal_forwarders(&child) {
        tokio::spawn(forwarder);
    }
    if std::process::id() == 1 {
        tokio::spawn(exec::reap_orphans());
    }
    let code = exec::supervise(running, &argv, &child, restarts).await.map_err(AgentError::Child)?;
    alive.store(false, Ordering::SeqCst);
    ops::systemd::notify_stopping();
    shutdown.cancel();
    match agent.await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => warn!(error = %crate::error::report(&e), "agent stopped with an error"),
        Err(e) => warn!(error = %e, "agent task failed"),
    }
    Ok(code)
}

/// `once`: installs every file, no reloads. A file whose install fails for an I/O reason
/// (permission, full disk, ...) is retried until `timeout` runs out.
///
/// # Errors
/// [`AgentError::NotAllWritten`] naming each file not written and why.
pub async fn once(config: Config, timeout: Duration, shutdown: CancellationToken) -> Result<(), AgentError> {
    let core = compile(&config)?;
    let (status_tx, _) = watch::channel(Arc::new(StatusReport::default()));
    let summary = drive(&config, core, Mode::Once, Some(timeout), shutdown, status_tx, None, None).await?;
    settled_or_error(&summary)
}

/// `render`: prints each file (or only `dest`) instead of installing.
///
/// # Errors
/// As [`once`], for the files asked for.
pub async fn render(
    config: Config,
    dest: Option<PathBuf>,
    timeout: Duration,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let mut config = config;
    keep_only(&mut config, dest.as_deref())?;
    let core = compile(&config)?;
    let (status_tx, _) = watch::channel(Arc::new(StatusReport::default()));
    let summary = drive(&config, core, Mode::Render, Some(timeout), shutdown, status_tx, None, None).await?;
    // One file's exact bytes with `--dest`; a bundle's files (`--dest DIR`) each under a header.
    let headers = dest.is_none() || summary.rendered.len() > 1;
    print_rendered(&summary.rendered, headers).map_err(AgentError::Stdout)?;
    settled_or_error(&summary)
}

/// What `zkrender diff` found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiffOutcome {
    /// Every file on disk already holds what would be written.
    Unchanged,
    /// Some file would change (its diff was printed).
    Changed,
}

/// `diff`: renders each file (or only `dest`) as `render` does, and prints a unified diff of
/// what is on disk against it. Writes nothing, reloads nothing.
///
/// Every file that rendered is compared and printed, even when others could not be rendered;
/// those are reported in the error afterwards.
///
/// # Errors
/// [`AgentError::UnknownDest`] when no file has `dest`; template errors; and, wrapped in
/// [`AgentError::Unrendered`] (exit 3), a file that could not be rendered or read from disk,
/// or ZooKeeper not reached within `timeout`.
pub async fn diff(
    config: Config,
    dest: Option<PathBuf>,
    timeout: Duration,
    shutdown: CancellationToken,
) -> Result<DiffOutcome, AgentError> {
    let mut config = config;
    keep_only(&mut config, dest.as_deref())?;
    let core = compile(&config)?;
    let (status_tx, _) = watch::channel(Arc::new(StatusReport::default()));
    let summary = drive(&config, core, Mode::Render, Some(timeout), shutdown, status_tx, None, None)
        .await
        .map_err(|e| AgentError::Unrendered(Box::new(e)))?;
    let rendered = summary.rendered.clone();
    let compared = tokio::task::spawn_blocking(move || print_diffs(&rendered))
        .await
        .map_err(AgentError::TaskPanicked)?
        .map_err(AgentError::Stdout)?;
    let mut failed: Vec<String> = match settled_or_error(&summary) {
        Ok(()) => Vec::new(),
        Err(AgentError::NotAllWritten { details, .. }) => details.lines().map(str::to_owned).collect(),
        Err(other) => return Err(AgentError::Unrendered(Box::new(other))),
    };
    failed.extend(compared.unreadable);
    if !failed.is_empty() {
        return Err(AgentError::Unrendered(Box::new(AgentError::NotAllWritten {
            count: failed.len(),
            total: summary.files.len(),
            details: failed.join("\n"),
        })));
    }
    Ok(if compared.changed { DiffOutcome::Changed } else { DiffOutcome::Unchanged })
}

/// What [`print_diffs`] found.
struct Compared {
    changed: bool,
    /// `  DEST: reason` for each file on disk that could not be read.
    unreadable: Vec<String>,
}

/// Prints, for each rendering, the diff of the file on disk against it.
fn print_diffs(rendered: &[(PathBuf, Vec<u8>)]) -> std::io::Result<Compared> {
    let mut out = std::io::stdout().lock();
    let mut compared = Compared { changed: false, unreadable: Vec::new() };
    for (dest, bytes) in rendered {
        let old = match std::fs::read(dest) {
            Ok(old) => Some(old),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                compared.unreadable.push(format!("  {}: reading the file on disk: {e}", dest.display()));
                continue;
            }
        };
        if let Some(text) = crate::diff::diff(&dest.display().to_string(), old.as_deref(), bytes) {
            compared.changed = true;
            out.write_all(text.as_bytes())?;
        }
    }
    out.flush()?;
    Ok(compared)
}

/// Prints renderings for `zkrender render`: one file's exact bytes, or each under a header.
fn print_rendered(rendered: &[(PathBuf, Vec<u8>)], headers: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for (i, (dest, bytes)) in rendered.iter().enumerate() {
        if headers {
            if i > 0 {
                writeln!(out)?;
            }
            writeln!(out, "==> {} <==", dest.display())?;
        }
        out.write_all(bytes)?;
    }
    out.flush()
}

/// A `--dest` as given, or resolved against the config's directory like `dest` keys are
/// (the first config file's, or the working directory for flags alone).
/// `--dest`: keeps only the `[[file]]` with that dest. A dest no file has is a typo, not a
/// ZooKeeper problem: refused before connecting (exit 2), naming the dests there are.
/// A bundle's dir, or the path of one of its files, keeps the whole bundle (it renders as one).
fn keep_only(config: &mut Config, dest: Option<&Path>) -> Result<(), AgentError> {
    let Some(dest) = dest else { return Ok(()) };
    let wanted = resolve_dest(config.base_dir(), dest);
    let known: Vec<PathBuf> = config
        .files
        .iter()
        .map(|f| f.dest.clone())
        .chain(config.bundles.iter().map(|b| b.dir.clone()))
        .collect();
    config.files.retain(|f| f.dest == wanted);
    config.bundles.retain(|b| b.dir == wanted || b.files.iter().any(|f| f.dest == wanted));
    if config.files.is_empty() && config.bundles.is_empty() {
        return Err(AgentError::UnknownDest { config: config.path.clone(), dest: wanted, known });
    }
    Ok(())
}

fn resolve_dest(base: &Path, dest: &Path) -> PathBuf {
    if dest.is_absolute() {
        return dest.to_owned();
    }
    base.join(dest)
}

fn settled_or_error(summary: &Summary) -> Result<(), AgentError> {
    let failed: Vec<String> = summary
        .files
        .iter()
        .filter_map(|(dest, status)| match status {
            Status::Ok => None,
            Status::Pending if summary.connection != ConnectionState::Connected => Some(format!(
                "  {}: no ZooKeeper session ({} to {}){}",
                dest.display(),
                summary.connection,
                summary.hosts,
                summary.unreachable.as_ref().map(|why| format!(": {why}")).unwrap_or_default(),
            )),
            Status::Pending => {
                Some(format!("  {}: its znodes could not all be read in time", dest.display()))
            }
            // The cause's label too: an I/O failure was retried until the timeout ran out.
            Status::Failed(f) => Some(format!("  {}: {} (cause: {})", dest.display(), f.message, f.kind)),
        })
        .collect();
    if failed.is_empty() {
        return Ok(());
    }
    Err(AgentError::NotAllWritten {
        count: failed.len(),
        total: summary.files.len(),
        details: failed.join("\n"),
    })
}

/// Runs source and pipeline (and, for `run`, the reload queue and the config reloader) until
/// the pipeline returns. `child` is the `exec` child's handle (`None` for other commands);
/// `listen` is where config reloads send `[agent] listen` (`None` without an endpoint).
#[allow(clippy::too_many_arguments)]
async fn drive(
    config: &Config,
    core: Core,
    mode: Mode,
    timeout: Option<Duration>,
    shutdown: CancellationToken,
    status_tx: watch::Sender<Arc<StatusReport>>,
    child: Option<ChildHandle>,
    listen: Option<watch::Sender<Option<String>>>,
) -> Result<Summary, AgentError> {
    if mode != Mode::Render {
        sweep_stale_temps(config).await;
    }
    let (events_tx, events) = mpsc::channel(4096);
    let (source_tx, source_rx) = mpsc::unbounded_channel();
    let (reconfigure_tx, reconfigure) = mpsc::unbounded_channel();
    let (reloads, reloads_rx) = mpsc::unbounded_channel();
    let (outcomes_tx, outcomes) = mpsc::unbounded_channel();
    let source_stop = shutdown.child_token();
    // One deadline for both: the source tries to connect for the whole of it.
    let deadline = timeout.map(|t| Instant::now() + t);
    let report = if mode == Mode::Run { fleet_report(config, &status_tx) } else { None };
    let opts = source::Options { connect_deadline: deadline.zip(timeout), report };
    let mut source =
        tokio::spawn(source::run(config.zookeeper.clone(), opts, source_rx, events_tx, source_stop.clone()));
    let popts = pipeline::Options {
        mode,
        wait: config.agent.wait,
        max_wait: config.agent.max_wait,
        resync: if mode == Mode::Run { config.agent.resync } else { Duration::ZERO },
        deadline,
        write_parallelism: 8,
        status: Some(status_tx.clone()),
        hosts: config.zookeeper.connect_string(),
    };
    let exec_mode = child.is_some();
    if mode == Mode::Run {
        // The reload queue ends once the pipeline drops its sender, after the last outcome.
        tokio::spawn(notify::queue::run(reloads_rx, outcomes_tx, child.unwrap_or_else(ChildHandle::none)));
        tokio::spawn(hotreload::run(
            config.clone(),
            reconfigure_tx,
            exec_mode,
            status_tx.subscribe(),
            listen.unwrap_or_else(|| watch::channel(config.agent.listen.clone()).0),
            shutdown.child_token(),
        ));
    } else {
        // No reloads outside `run`: both channels close at once.
        drop((reloads_rx, outcomes_tx, reconfigure_tx));
    }
    let channels = Channels { events, source: source_tx, reconfigure, reloads, outcomes };
    let mut pipeline = tokio::spawn(pipeline::run(core, channels, popts));

    // The source ends when cancelled or on a fatal error, dropping its sender either way; the
    // pipeline then finishes the cycle in progress and returns. In once/render mode the
    // pipeline returns first, and the source is stopped after it.
    let source_result = tokio::select! {
        joined = &mut source => joined.map_err(AgentError::TaskPanicked)?,
        joined = &mut pipeline => {
            let summary = joined.map_err(AgentError::TaskPanicked)?;
            source_stop.cancel();
            let source_result = source.await.map_err(AgentError::TaskPanicked)?;
            if let Err(e) = source_result {
                // `run`: the pipeline ends only after its input closed, i.e. after the source
                // stopped (both may be done by the time this select! polls; it picks either),
                // so the source's error is why the agent stops. once/render: a source that
                // never connected explains every pending file better.
                if mode == Mode::Run || summary.files.iter().any(|(_, s)| *s == Status::Pending) {
                    return Err(e.into());
                }
            } else if let (Some(timeout), ConnectionState::Connecting, Some(cause)) =
                (timeout, summary.connection, &summary.unreachable)
                && summary.files.iter().any(|(_, s)| *s == Status::Pending)
            {
                // The pipeline's deadline (the same instant) came first: the same error as
                // the source's own, whichever of the two noticed the timeout.
                let hosts = summary.hosts.clone();
                return Err(source::SourceError::ConnectTimeout { hosts, timeout, cause: cause.clone() }.into());
            }
            return Ok(summary);
        }
    };
    let summary = match tokio::time::timeout(SHUTDOWN_GRACE, &mut pipeline).await {
        Ok(joined) => joined.map_err(AgentError::TaskPanicked)?,
        Err(_) => {
            warn!(grace = ?SHUTDOWN_GRACE, "pipeline still busy; exiting anyway");
            pipeline.abort();
            // No file to report on: the connection is never looked at.
            Summary {
                files: Vec::new(),
                rendered: Vec::new(),
                connection: ConnectionState::Connecting,
                hosts: String::new(),
                unreachable: None,
            }
        }
    };
    source_result?;
    Ok(summary)
}

/// `[agent] report`: starts the task that turns the status into the agent's report; the
/// source writes it (`source::report`).
fn fleet_report(
    config: &Config,
    status: &watch::Sender<Arc<StatusReport>>,
) -> Option<source::report::Report> {
    let settings = fleet::publish::Settings::of(config)?;
    let node = config.agent.report.as_ref()?.node();
    let (doc_tx, doc) = watch::channel(settings.initial());
    tokio::spawn(fleet::publish::run(status.subscribe(), doc_tx, settings));
    Some(source::report::Report { node, doc })
}

/// Removes temporary files a crash (a SIGKILL mid-install) left beside the destinations.
async fn sweep_stale_temps(config: &Config) {
    let dests: Vec<PathBuf> = config.files.iter().map(|f| f.dest.clone()).collect();
    let _ = tokio::task::spawn_blocking(move || {
        for (dest, removed) in crate::sink::sweep_stale_temps(dests.iter().map(PathBuf::as_path)) {
            info!(dest = %dest.display(), removed, "removed temporary files left by an earlier crash");
        }
    })
    .await;
}

/// Cancels `token` on the first SIGTERM or SIGINT; exits at once on the second.
pub fn spawn_signal_handler(token: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    tokio::spawn(async move {
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            warn!("cannot install SIGTERM/SIGINT handlers");
            return;
        };
        let mut count = 0;
        loop {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            count += 1;
            if count == 1 {
                info!(signal = name, "shutting down: finishing the install in progress");
                token.cancel();
            } else {
                warn!(signal = name, "second signal: exiting now");
                // Kill running checks and remove temporary files; destinations are untouched.
                crate::sink::abort_in_progress();
                std::process::exit(130);
            }
        }
    });
}
