//! Reloading zkrender's own configuration: on SIGHUP, or when a config file or a template
//! file changes on disk, or a `*.toml` file comes or goes in a `-c` directory (watched with
//! `notify`, debounced), re-read the whole configuration set and validate everything.
//! Invalid: log every problem and keep running the old configuration. Valid: hand a new
//! pipeline core to the running pipeline, which keeps the ZooKeeper session and the values
//! already read, re-renders, and writes only what changed.

use std::collections::{BTreeSet, HashMap};
use std::os::fd::{AsFd as _, AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;
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
    let mut watcher = FileWatcher::default();
    watcher.watch(&watched_files(&current), &current.origin.dirs);
    loop {
        let trigger = tokio::select! {
            _ = stop.cancelled() => return,
            Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => Trigger::Sighup,
            () = watcher.changed() => {
                // Debounce: wait until no event has arrived for DEBOUNCE.
                while tokio::time::timeout(DEBOUNCE, watcher.changed()).await.is_ok() {}
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
    let core = Core::for_config(&config)
        .map_err(|errors| errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("\n"))?;
    Ok((config, core))
}

/// The config files and every template file.
fn watched_files(config: &Config) -> BTreeSet<PathBuf> {
    let mut files: BTreeSet<PathBuf> = config.origin.files.iter().cloned().collect();
    for f in config.files.iter().chain(config.bundles.iter().flat_map(|b| &b.files)) {
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
///
/// inotify read by the runtime itself: no thread of its own, and no wake-up for what cannot
/// matter. Opening or reading a file (`IN_OPEN`, `IN_ACCESS`: the agent opens its
/// destinations' directories to sync them, and its destinations may lie beside the config)
/// is not asked for; every other event is matched by name before it counts.
#[derive(Default)]
struct FileWatcher {
    inotify: Option<AsyncFd<InotifyFd>>,
    /// Each watched directory by its watch descriptor.
    dirs: HashMap<WatchDescriptor, PathBuf>,
    files: BTreeSet<PathBuf>,
    config_dirs: BTreeSet<PathBuf>,
}

/// An inotify instance as the runtime's reactor registers it.
struct InotifyFd(Inotify);

impl AsRawFd for InotifyFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_fd().as_raw_fd()
    }
}

impl FileWatcher {
    /// What a change to a config file or template can look like: written and closed,
    /// replaced by rename, created, deleted, or its mode changed. Not each write
    /// (`IN_MODIFY`): a file is read once its writer closed it, never half-saved, and a file
    /// held open and appended to in the same directory (an application's log beside its
    /// config) does not wake the agent at every write.
    const MASK: AddWatchFlags = AddWatchFlags::IN_CLOSE_WRITE
        .union(AddWatchFlags::IN_ATTRIB)
        .union(AddWatchFlags::IN_MOVED_FROM)
        .union(AddWatchFlags::IN_MOVED_TO)
        .union(AddWatchFlags::IN_CREATE)
        .union(AddWatchFlags::IN_DELETE);

    /// Replaces the watched set: `files`, and the `*.toml` files in `config_dirs`.
    fn watch(&mut self, files: &BTreeSet<PathBuf>, config_dirs: &[PathBuf]) {
        self.inotify = None;
        self.dirs.clear();
        self.files = files.clone();
        self.config_dirs = config_dirs.iter().cloned().collect();
        let inotify = match Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC)
            .map_err(std::io::Error::from)
            // SAFETY: the instance moves into the `AsyncFd`, which owns it until dropped: its
            // descriptor stays open and the same for the whole registration.
            .and_then(|i| {
                unsafe { AsyncFd::register_with_interest(InotifyFd(i), Interest::READABLE) }
                    .map_err(std::io::Error::from)
            }) {
            Ok(i) => i,
            Err(e) => {
                warn!(error = %e, "cannot watch the config files; reload with SIGHUP instead");
                return;
            }
        };
        let dirs: BTreeSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_path_buf))
            .chain(config_dirs.iter().cloned())
            .collect();
        for dir in dirs {
            match inotify.get_ref().0.add_watch(&dir, Self::MASK) {
                Ok(wd) => {
                    self.dirs.insert(wd, dir);
                }
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "cannot watch directory for config changes");
                }
            }
        }
        self.inotify = Some(inotify);
    }

    /// Waits for a change to a watched file (never returns when nothing can be watched).
    async fn changed(&mut self) {
        let Some(inotify) = &self.inotify else { return std::future::pending().await };
        loop {
            let Ok(mut ready) = inotify.readable().await else { return std::future::pending().await };
            let events = match ready.try_io(|fd| fd.get_ref().0.read_events().map_err(std::io::Error::from)) {
                Ok(Ok(events)) => events,
                Ok(Err(e)) => {
                    debug!(error = %e, "config file watcher error");
                    continue;
                }
                Err(_would_block) => continue,
            };
            let relevant = events.iter().any(|event| {
                let (Some(dir), Some(name)) = (self.dirs.get(&event.wd), &event.name) else { return false };
                let path = dir.join(name);
                self.files.contains(&path)
                    || (path.extension().is_some_and(|ext| ext == "toml") && self.config_dirs.contains(dir))
            });
            if relevant {
                return;
            }
        }
    }
}
