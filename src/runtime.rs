//! Wires the stages together: spawns the source and the pipeline, owns the cancellation token,
//! handles OS signals, and maps each command's outcome to a result.

use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::config::Config;
use crate::error::AgentError;
use crate::hotreload;
use crate::pipeline::{self, Core, Mode, Status, Summary};
use crate::status::StatusReport;
use crate::{ops, source};

/// How long the pipeline may take to finish the install in progress after shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Compiles every template of `config` (what `check` does after loading the config).
///
/// # Errors
/// [`AgentError::Templates`] listing every template that does not compile.
pub fn compile(config: &Config) -> Result<Core, AgentError> {
    Core::new(&config.files).map_err(AgentError::Templates)
}

/// The agent: runs until `shutdown` is cancelled.
///
/// # Errors
/// Template errors at start-up, or a source failure no retry fixes.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), AgentError> {
    refuse_exec_only(&config)?;
    let core = compile(&config)?;
    info!(config = %config.path.display(), files = config.files.len(), watch = ?config.zookeeper.watch, "zkrender starting");
    let (status_tx, status_rx) = watch::channel(Arc::new(StatusReport::default()));
    let alive = start_ops(&config, status_rx, shutdown.clone()).await?;
    let result = drive(&config, core, Mode::Run, None, shutdown, status_tx, false).await.map(|_| ());
    alive.store(false, Ordering::SeqCst);
    ops::systemd::notify_stopping();
    result
}

/// Starts the HTTP endpoint (when `listen` is set) and the systemd readiness notification.
/// Returns the flag `/healthz` reports; set it false when the agent stops.
///
/// # Errors
/// The `listen` address cannot be bound.
async fn start_ops(
    config: &Config,
    status: watch::Receiver<Arc<StatusReport>>,
    shutdown: CancellationToken,
) -> Result<Arc<AtomicBool>, AgentError> {
    let alive = Arc::new(AtomicBool::new(true));
    if let Some(listen) = &config.agent.listen {
        let listener = ops::bind(listen).await.map_err(AgentError::Listen)?;
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_else(|_| listen.clone());
        info!(listen = %addr, "serving /healthz /readyz /metrics /status");
        let flag = alive.clone();
        let status = status.clone();
        tokio::spawn(async move {
            if let Err(e) = ops::serve(listener, status, move || flag.load(Ordering::SeqCst), shutdown).await
            {
                error!(error = %e, "the HTTP endpoint stopped");
            }
        });
    }
    // systemd Type=notify: READY=1 once every file has been written (or found correct).
    let mut status = status;
    tokio::spawn(async move {
        if status.wait_for(|r| r.ready).await.is_ok() {
            info!("ready: every file is written");
            ops::systemd::notify_ready();
        }
    });
    Ok(alive)
}

/// Reloads that only `exec` can carry out (signal to the child, restart) are config errors
/// for every other command.
pub(crate) fn refuse_exec_only(config: &Config) -> Result<(), AgentError> {
    for f in &config.files {
        if f.reload.as_ref().is_some_and(|r| r.action.targets_child()) {
            return Err(AgentError::ExecOnly { config: config.path.clone(), dest: f.dest.clone() });
        }
    }
    Ok(())
}

/// `exec`: renders every file, starts `argv` as a child, and keeps the files up to date while
/// it runs; reloads may signal or restart the child. Returns the child's exit code.
///
/// # Errors
/// Template errors; files not all written within `timeout` (the child is not started then);
/// the child cannot be started.
pub async fn exec(config: Config, argv: Vec<String>, timeout: Duration) -> Result<i32, AgentError> {
    let core = compile(&config)?;
    info!(config = %config.path.display(), files = config.files.len(), "zkrender exec starting");
    // In exec mode SIGTERM and friends go to the child; zkrender stops when the child exits.
    let shutdown = CancellationToken::new();
    let (status_tx, mut status_rx) = watch::channel(Arc::new(StatusReport::default()));
    let alive = start_ops(&config, status_rx.clone(), shutdown.clone()).await?;
    let agent = {
        let config = config.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { drive(&config, core, Mode::Run, None, shutdown, status_tx, true).await })
    };
    let ready = matches!(tokio::time::timeout(timeout, status_rx.wait_for(|r| r.ready)).await, Ok(Ok(_)));
    if !ready {
        let report = status_rx.borrow().clone();
        shutdown.cancel();
        let _ = agent.await;
        let details: Vec<String> = report
            .pending()
            .map(|f| {
                format!("  {}: {}", f.dest, f.last_error.clone().or(f.reason.clone()).unwrap_or_default())
            })
            .collect();
        return Err(AgentError::NotAllWritten {
            count: details.len(),
            total: report.files.len(),
            details: details.join("\n"),
        });
    }
    let code = crate::exec::supervise(&argv).await.map_err(AgentError::Child)?;
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

/// `once`: installs every file, no reloads.
///
/// # Errors
/// [`AgentError::NotAllWritten`] naming each file not written and why.
pub async fn once(config: Config, timeout: Duration, shutdown: CancellationToken) -> Result<(), AgentError> {
    let core = compile(&config)?;
    let (status_tx, _) = watch::channel(Arc::new(StatusReport::default()));
    let summary = drive(&config, core, Mode::Once, Some(timeout), shutdown, status_tx, false).await?;
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
    if let Some(dest) = &dest {
        let wanted = resolve_dest(&config.path, dest);
        config.files.retain(|f| f.dest == wanted);
        if config.files.is_empty() {
            return Err(AgentError::NotAllWritten {
                count: 1,
                total: 1,
                details: format!("  {}: no [[file]] has this dest", wanted.display()),
            });
        }
    }
    let core = compile(&config)?;
    let (status_tx, _) = watch::channel(Arc::new(StatusReport::default()));
    let summary = drive(&config, core, Mode::Render, Some(timeout), shutdown, status_tx, false).await?;
    pipeline::print_rendered(&summary.rendered, dest.is_none()).map_err(AgentError::Stdout)?;
    settled_or_error(&summary)
}

/// A `--dest` as given, or resolved against the config's directory like `dest` keys are.
fn resolve_dest(config_path: &Path, dest: &Path) -> PathBuf {
    if dest.is_absolute() {
        return dest.to_owned();
    }
    let base = config_path.parent().unwrap_or(Path::new("."));
    base.join(dest)
}

fn settled_or_error(summary: &Summary) -> Result<(), AgentError> {
    let failed: Vec<String> = summary
        .files
        .iter()
        .filter_map(|(dest, status)| match status {
            Status::Ok => None,
            Status::Pending if summary.connection != "connected" => Some(format!(
                "  {}: no ZooKeeper session ({} to {})",
                dest.display(),
                summary.connection,
                summary.hosts
            )),
            Status::Pending => {
                Some(format!("  {}: its znodes could not all be read in time", dest.display()))
            }
            Status::Failed(f) => Some(format!("  {}: {}", dest.display(), f.message)),
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

/// Runs source and pipeline (and, for `run`, the config reloader) until the pipeline returns.
async fn drive(
    config: &Config,
    core: Core,
    mode: Mode,
    timeout: Option<Duration>,
    shutdown: CancellationToken,
    status_tx: watch::Sender<Arc<StatusReport>>,
    exec_mode: bool,
) -> Result<Summary, AgentError> {
    if mode != Mode::Render {
        sweep_stale_temps(config).await;
    }
    let (events_tx, events_rx) = mpsc::channel(4096);
    let (commands_tx, commands_rx) = mpsc::unbounded_channel();
    let (reconfigure_tx, reconfigure_rx) = mpsc::unbounded_channel();
    let source_stop = shutdown.child_token();
    let opts = source::Options { connect_deadline: timeout };
    let mut source = tokio::spawn(source::run(
        config.zookeeper.clone(),
        opts,
        commands_rx,
        events_tx,
        source_stop.clone(),
    ));
    let popts = pipeline::Options {
        mode,
        wait: config.agent.wait,
        max_wait: config.agent.max_wait,
        resync: if mode == Mode::Run { config.agent.resync } else { Duration::ZERO },
        deadline: timeout.map(|t| Instant::now() + t),
        write_parallelism: 8,
        status: Some(status_tx.clone()),
        hosts: config.zookeeper.connect_string(),
    };
    let mut pipeline = tokio::spawn(pipeline::run(core, events_rx, commands_tx, popts, reconfigure_rx));
    if mode == Mode::Run {
        tokio::spawn(hotreload::run(
            config.clone(),
            reconfigure_tx,
            exec_mode,
            status_tx.subscribe(),
            shutdown.child_token(),
        ));
    } else {
        drop(reconfigure_tx);
    }

    // The source ends when cancelled or on a fatal error, dropping its sender either way; the
    // pipeline then finishes the cycle in progress and returns. In once/render mode the
    // pipeline returns first, and the source is stopped after it.
    let source_result = tokio::select! {
        joined = &mut source => joined.map_err(AgentError::TaskPanicked)?,
        joined = &mut pipeline => {
            let summary = joined.map_err(AgentError::TaskPanicked)?;
            source_stop.cancel();
            let source_result = source.await.map_err(AgentError::TaskPanicked)?;
            if mode != Mode::Run && let Err(e) = source_result {
                // A source that never connected explains every pending file better.
                if summary.files.iter().any(|(_, s)| *s == Status::Pending) {
                    return Err(e.into());
                }
            }
            return Ok(summary);
        }
    };
    let summary = match tokio::time::timeout(SHUTDOWN_GRACE, &mut pipeline).await {
        Ok(joined) => joined.map_err(AgentError::TaskPanicked)?,
        Err(_) => {
            warn!(grace = ?SHUTDOWN_GRACE, "pipeline still busy; exiting anyway");
            pipeline.abort();
            Summary { files: Vec::new(), rendered: Vec::new(), connection: "unknown", hosts: String::new() }
        }
    };
    source_result?;
    Ok(summary)
}

/// Removes temporary files a crash (a SIGKILL mid-install) left beside the destinations.
async fn sweep_stale_temps(config: &Config) {
    let dests: Vec<PathBuf> = config.files.iter().map(|f| f.dest.clone()).collect();
    let _ = tokio::task::spawn_blocking(move || {
        for dest in dests {
            let removed = crate::sink::sweep_stale_temps(&dest);
            if removed > 0 {
                info!(dest = %dest.display(), removed, "removed temporary files left by an earlier crash");
            }
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
