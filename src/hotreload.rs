//! Reloading zkrender's own configuration: on SIGHUP, or when a config file or a template
//! file changes on disk, or a `*.toml` file comes or goes in a `-c` directory (watched with
//! `notify`, debounced), re-read the whole configuration set and validate everything.
//! Invalid: log every problem and keep running the old configuration. Valid: hand a new
//! pipeline core to the running pipeline, which keeps the ZooKeeper session and the values
//! already read, re-renders, and writes only what changed.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use std::sync::Arc;

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::config::{self, Config, FileSource};
use crate::error::report;
use crate::ops;
use crate::pipeline::{Core, Reconfigure};
use crate::status::StatusReport;

/// Editors save in several steps (write temp, rename, chmod); wait for the burst to end.
const DEBOUNCE: Duration = Duration::from_millis(250);

/// Why a reload was attempted, for the log.
#[derive(Debug, Clone, Copy)]
enum Trigger {
    Sighup,
    FileChanged,
}

/// Watches for SIGHUP and config/template changes until `stop`; sends each valid new
/// configuration to the pipeline, and its `[agent] listen` to the HTTP endpoint on `listen`.
/// Each attempt is counted in the `config_reloads` metric
/// (applied or not) and, once the agent was ready, framed by systemd RELOADING=1/READY=1.
pub async fn run(
    mut current: Config,
    pipeline: mpsc::UnboundedSender<Reconfigure>,
    exec_mode: bool,
    status: watch::Receiver<Arc<StatusReport>>,
    listen: watch::Sender<Option<String>>,
    stop: CancellationToken,
) {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => Some(s),
        Err(e) => {
            warn!(error = %e, "cannot install a SIGHUP handler; config reload on SIGHUP is off");
            None
        }
    };
    let (changed_tx, mut changed) = mpsc::unbounded_channel::<()>();
    let mut watcher = FileWatcher::new(changed_tx);
    watcher.watch(&watched_files(&current), &current.origin.dirs);
    loop {
        let trigger = tokio::select! {
            _ = stop.cancelled() => return,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => Trigger::Sighup,
            Some(()) = changed.recv() => {
                // Debounce: wait until no event has arrived for DEBOUNCE.
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, changed.recv()).await {}
                Trigger::FileChanged
            }
        };
        info!(trigger = ?trigger, config = %current.describe(), "reloading the configuration");
        // systemd: RELOADING=1 ... READY=1 around the reload, but only once the agent was
        // ready (before that, READY=1 would claim files that are not written yet).
        let was_ready = status.borrow().ready;
        if was_ready {
            ops::systemd::notify_reloading();
        }
        let applied = match load(&current.origin.sources, exec_mode) {
            Err(message) => {
                error!(config = %current.describe(), error = %message, "new configuration is invalid; still running the previous one");
                false
            }
            Ok((config, core)) => {
                if config.zookeeper != current.zookeeper {
                    warn!(
                        "[zookeeper] settings changed; they take effect at the next restart (the session is kept)"
                    );
                }
                if config.agent.report != current.agent.report {
                    warn!(
                        "[agent] report, id or report_interval changed; they take effect at the next restart"
                    );
                }
                let reconf = Reconfigure {
                    core,
                    wait: config.agent.wait,
                    max_wait: config.agent.max_wait,
                    resync: config.agent.resync,
                };
                if pipeline.send(reconf).is_err() {
                    return;
                }
                if config.agent.listen != current.agent.listen {
                    info!(from = ?current.agent.listen, to = ?config.agent.listen, "[agent] listen changed");
                }
                // Sent at every reload, changed or not: the endpoint ignores the address it
                // already serves, and retries one it could not bind last time.
                listen.send_replace(config.agent.listen.clone());
                watcher.watch(&watched_files(&config), &config.origin.dirs);
                current = config;
                true
            }
        };
        ops::metrics().record_config_reload(applied);
        if was_ready {
            ops::systemd::notify_ready();
        }
    }
}

/// Loads the whole set again and compiles; the error is the full report of every problem.
fn load(sources: &config::Sources, exec_mode: bool) -> Result<(Config, Core), String> {
    let config = config::load_sources(sources).map_err(|e| report(&e))?;
    if !exec_mode {
        // What `run` refuses at start it refuses on reload too.
        config.refuse_exec_only().map_err(|e| report(&e))?;
    }
    let core = Core::new(&config.files)
        .map_err(|errors| errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))?;
    Ok((config, core))
}

/// The config files and every template file.
fn watched_files(config: &Config) -> BTreeSet<PathBuf> {
    let mut files: BTreeSet<PathBuf> = config.origin.files.iter().cloned().collect();
    for f in &config.files {
        if let FileSource::Template(t) = &f.source
            && let Some(p) = &t.path
        {
            files.insert(p.clone());
        }
    }
    files
}

/// Watches the directories holding a set of files (editors replace files by rename, which a
/// watch on the file itself would miss) and reports changes to those files only, and to any
/// `*.toml` file directly in a config directory (one added or removed changes the set).
struct FileWatcher {
    inner: Option<notify::RecommendedWatcher>,
    tx: mpsc::UnboundedSender<()>,
    dirs: BTreeSet<PathBuf>,
}

impl FileWatcher {
    fn new(tx: mpsc::UnboundedSender<()>) -> Self {
        FileWatcher { inner: None, tx, dirs: BTreeSet::new() }
    }

    /// Replaces the watched set: `files`, and the `*.toml` files in `config_dirs`.
    fn watch(&mut self, files: &BTreeSet<PathBuf>, config_dirs: &[PathBuf]) {
        use notify::Watcher as _;
        let tx = self.tx.clone();
        let wanted = files.clone();
        let wanted_dirs: BTreeSet<PathBuf> = config_dirs.iter().cloned().collect();
        let in_config_dir = move |p: &PathBuf| {
            p.extension().is_some_and(|ext| ext == "toml")
                && p.parent().is_some_and(|d| wanted_dirs.contains(d))
        };
        let handler = move |res: notify::Result<notify::Event>| match res {
            Ok(event) => {
                if event.kind.is_access() {
                    return;
                }
                if event.paths.iter().any(|p| wanted.contains(p) || in_config_dir(p)) {
                    let _ = tx.send(());
                }
            }
            Err(e) => debug!(error = %e, "config file watcher error"),
        };
        let mut watcher = match notify::recommended_watcher(handler) {
            Ok(w) => w,
            Err(e) => {
                warn!(error = %e, "cannot watch the config files; reload with SIGHUP instead");
                self.inner = None;
                return;
            }
        };
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .chain(config_dirs.iter().cloned())
            .collect();
        for dir in &dirs {
            if let Err(e) = watcher.watch(dir, notify::RecursiveMode::NonRecursive) {
                warn!(dir = %dir.display(), error = %e, "cannot watch directory for config changes");
            }
        }
        self.dirs = dirs;
        self.inner = Some(watcher);
    }
}
