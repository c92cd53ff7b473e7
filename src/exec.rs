//! `zkrender exec -- app args...`: the application as zkrender's child.
//!
//! [`start`] and [`supervise`] run the child (through `spawn`, `restart` and `exit_code`)
//! and publish it in a [`ChildHandle`]: `runtime` creates the handle and gives a clone to the
//! reload queue, so that reloads (`signal` without a target, `restart = true`) reach the
//! child. `runtime` also spawns the signal forwarders ([`signal_forwarders`]) and, as PID 1,
//! the orphan reaper ([`reap_orphans`]). Nothing here is process-wide state.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot};

/// A restart request: the supervisor answers on it once the new child runs.
pub type RestartRequest = oneshot::Sender<Result<(), String>>;

/// The `zkrender exec` child as the rest of the agent sees it: its pid, when it started, and
/// where restart requests go. Cheap to clone; every clone sees the same child. Outside
/// `zkrender exec` it is [`ChildHandle::none`]: no child, no supervisor.
#[derive(Debug, Clone, Default)]
pub struct ChildHandle {
    /// The running child's pid and start time; `None` when none runs.
    running: Arc<Mutex<Option<(i32, Instant)>>>,
    /// Where restart requests go; `None` outside `zkrender exec`.
    restarts: Option<mpsc::UnboundedSender<RestartRequest>>,
}

impl ChildHandle {
    /// No child (every command but `exec`).
    pub fn none() -> Self {
        ChildHandle::default()
    }

    /// A handle for a supervisor, and the receiver of its restart requests.
    pub fn supervised() -> (Self, mpsc::UnboundedReceiver<RestartRequest>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ChildHandle { running: Arc::default(), restarts: Some(tx) }, rx)
    }

    fn running(&self) -> std::sync::MutexGuard<'_, Option<(i32, Instant)>> {
        // Plain data: a panic while holding the lock cannot leave it half-written.
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The child's pid, if a child is running.
    pub fn pid(&self) -> Option<i32> {
        self.running().map(|(pid, _)| pid)
    }

    /// When the running child started, if one runs: reloads queued before it are moot (it
    /// read the files as they are now when it started).
    pub fn started_at(&self) -> Option<Instant> {
        self.running().map(|(_, started)| started)
    }

    /// Records the running child's pid (`None` when it exited); it started now.
    fn set_pid(&self, pid: Option<i32>) {
        *self.running() = pid.map(|pid| (pid, Instant::now()));
    }

    /// Asks the supervisor to restart the child and waits (up to `timeout`) until it has.
    ///
    /// # Errors
    /// A message when no supervisor runs, or the restart failed or took too long.
    pub async fn request_restart(&self, timeout: Duration) -> Result<(), String> {
        let Some(tx) = &self.restarts else {
            return Err("`restart = true` needs `zkrender exec`".to_owned());
        };
        let (done_tx, done_rx) = oneshot::channel();
        tx.send(done_tx).map_err(|_| "the supervisor has stopped".to_owned())?;
        match tokio::time::timeout(timeout, done_rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err("the supervisor has stopped".to_owned()),
            Err(_) => Err(format!("not restarted within {timeout:?}")),
        }
    }
}

/// Signals forwarded to the child. SIGHUP is not among them: it reloads zkrender's own
/// configuration (send the app a signal through a file's `[file.reload]` instead).
const FORWARDED: [(tokio::signal::unix::SignalKind, nix::sys::signal::Signal); 5] = {
    use nix::sys::signal::Signal;
    use tokio::signal::unix::SignalKind;
    [
        (SignalKind::terminate(), Signal::SIGTERM),
        (SignalKind::interrupt(), Signal::SIGINT),
        (SignalKind::quit(), Signal::SIGQUIT),
        (SignalKind::user_defined1(), Signal::SIGUSR1),
        (SignalKind::user_defined2(), Signal::SIGUSR2),
    ]
};

/// How long a child gets to exit after SIGTERM on restart before SIGKILL.
const RESTART_GRACE: Duration = Duration::from_secs(10);

/// Starts `argv` as the child and publishes it in `handle`.
///
/// # Errors
/// The child cannot be started.
pub fn start(argv: &[String], handle: &ChildHandle) -> std::io::Result<tokio::process::Child> {
    let child = spawn(argv)?;
    handle.set_pid(child.id().map(|p| p as i32));
    Ok(child)
}

/// Waits for the child [`start`]ed from `argv` to exit; returns the exit code zkrender
/// should exit with (the child's, or 128 + signal). Meanwhile serves the restart requests
/// sent through `handle` (`restarts`, from [`ChildHandle::supervised`]).
///
/// # Errors
/// Waiting for the child fails.
pub async fn supervise(
    mut child: tokio::process::Child,
    argv: &[String],
    handle: &ChildHandle,
    mut restarts: mpsc::UnboundedReceiver<RestartRequest>,
) -> std::io::Result<i32> {
    loop {
        tokio::select! {
            status = child.wait() => {
                handle.set_pid(None);
                // Requests sent from now on fail at once ("the supervisor has stopped").
                drop(restarts);
                let status = status?;
                let code = crate::process::exit_code(status);
                tracing::info!(code, "the child exited; zkrender exits with its code");
                return Ok(code);
            }
            Some(done) = restarts.recv() => {
                let result = restart(&mut child, argv).await;
                handle.set_pid(child.id().map(|p| p as i32));
                let _ = done.send(result.map_err(|e| e.to_string()));
            }
        }
    }
}

/// One forwarder per signal in `FORWARDED` (TERM, INT, QUIT, USR1, USR2), each sending its signal to whichever child
/// `handle` names at the time (a restart replaces it). The caller (`runtime`) spawns them;
/// they end with the runtime when zkrender exits. A signal that cannot be caught is logged
/// and left out.
pub fn signal_forwarders(handle: &ChildHandle) -> Vec<impl Future<Output = ()> + Send + 'static + use<>> {
    use tokio::signal::unix::signal;
    let mut forwarders = Vec::new();
    for (kind, sig) in FORWARDED {
        match signal(kind) {
            Ok(mut stream) => {
                let handle = handle.clone();
                forwarders.push(async move {
                    while stream.recv().await.is_some() {
                        if let Some(pid) = handle.pid() {
                            tracing::info!(signal = %sig, pid, "forwarding signal to the child");
                            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
                        }
                    }
                });
            }
            Err(e) => tracing::warn!(signal = %sig, error = %e, "cannot forward this signal to the child"),
        }
    }
    forwarders
}

/// Starts the child (see [`crate::process::spawn_supervised`]: from a long-lived thread).
fn spawn(argv: &[String]) -> std::io::Result<tokio::process::Child> {
    let child = crate::process::spawn_supervised(argv)?;
    tracing::info!(pid = child.id(), command = %argv[0], "started the child");
    Ok(child)
}

async fn restart(child: &mut tokio::process::Child, argv: &[String]) -> std::io::Result<()> {
    if let Some(pid) = child.id() {
        tracing::info!(pid, "restarting the child: SIGTERM");
        if crate::process::terminate(child, RESTART_GRACE).await {
            tracing::warn!(pid, grace = ?RESTART_GRACE, "the child ignored SIGTERM; SIGKILL");
        }
    }
    *child = spawn(argv)?;
    Ok(())
}

/// As PID 1, adopted orphans become our zombies. Reap those that stay zombies for a second:
/// our own children (checks, reload commands, the app) are reaped promptly by their owners,
/// so waiting a second never steals an exit status someone is waiting for. Runs forever;
/// `runtime` spawns it when zkrender is PID 1.
pub async fn reap_orphans() {
    use std::collections::HashSet;
    let mut seen: HashSet<i32> = HashSet::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let zombies = zombie_children();
        for pid in &zombies {
            if seen.contains(pid) {
                let _ = nix::sys::wait::waitpid(
                    nix::unistd::Pid::from_raw(*pid),
                    Some(nix::sys::wait::WaitPidFlag::WNOHANG),
                );
            }
        }
        seen = zombies;
    }
}

/// Pids of our zombie children, from /proc.
fn zombie_children() -> std::collections::HashSet<i32> {
    let me = std::process::id() as i32;
    let mut out = std::collections::HashSet::new();
    let Ok(dir) = std::fs::read_dir("/proc") else { return out };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields after the last ')': state, ppid, ...
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else { continue };
        let mut fields = rest.split_whitespace();
        let (Some(state), Some(ppid)) = (fields.next(), fields.next()) else { continue };
        if state == "Z" && ppid.parse::<i32>().ok() == Some(me) {
            out.insert(pid);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn without_a_supervisor_there_is_no_child_and_no_restart() {
        let none = ChildHandle::none();
        assert_eq!((none.pid(), none.started_at()), (None, None));
        let err = none.request_restart(Duration::from_secs(1)).await.unwrap_err();
        assert_eq!(err, "`restart = true` needs `zkrender exec`");
    }

    #[tokio::test]
    async fn every_clone_sees_the_child_and_restarts_reach_the_supervisor() {
        let (handle, mut restarts) = ChildHandle::supervised();
        let clone = handle.clone();
        handle.set_pid(Some(4242));
        assert_eq!(clone.pid(), Some(4242));
        assert!(clone.started_at().is_some());
        let server = tokio::spawn(async move {
            let done = restarts.recv().await.unwrap();
            done.send(Ok(())).unwrap();
        });
        clone.request_restart(Duration::from_secs(5)).await.unwrap();
        server.await.unwrap();
        let err = clone.request_restart(Duration::from_secs(5)).await.unwrap_err();
        assert_eq!(err, "the supervisor has stopped");
    }
}
