//! `zkrender exec -- app args...`: the application as zkrender's child.
//!
//! The supervisor (in `runtime`) publishes the child's pid here and serves restart
//! requests, so that reloads (`signal` without a target, `restart = true`) reach the child.

use std::sync::Mutex;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

/// The running child's pid, 0 when none.
static CHILD_PID: AtomicI32 = AtomicI32::new(0);

/// A restart request: the supervisor answers on it once the new child runs.
pub type RestartRequest = oneshot::Sender<Result<(), String>>;

/// Where restart requests go; set while a supervisor runs.
static RESTARTS: Mutex<Option<mpsc::UnboundedSender<RestartRequest>>> = Mutex::new(None);

/// When the running child was started: reloads queued before it are moot (it read the
/// files as they are now when it started).
static CHILD_STARTED: Mutex<Option<std::time::Instant>> = Mutex::new(None);

/// When the running child started, if one runs.
pub fn child_started_at() -> Option<std::time::Instant> {
    *CHILD_STARTED.lock().expect("bug: child lock poisoned")
}

/// The child's pid, if a child is running.
pub fn child_pid() -> Option<i32> {
    match CHILD_PID.load(Ordering::SeqCst) {
        0 => None,
        pid => Some(pid),
    }
}

/// Records the running child's pid (`None` when it exited).
pub fn set_child_pid(pid: Option<i32>) {
    *CHILD_STARTED.lock().expect("bug: child lock poisoned") = pid.map(|_| std::time::Instant::now());
    CHILD_PID.store(pid.unwrap_or(0), Ordering::SeqCst);
}

/// Installs the channel restart requests are sent on; returns its receiver.
pub fn serve_restarts() -> mpsc::UnboundedReceiver<RestartRequest> {
    let (tx, rx) = mpsc::unbounded_channel();
    *RESTARTS.lock().expect("bug: restart lock poisoned") = Some(tx);
    rx
}

/// Asks the supervisor to restart the child and waits (up to `timeout`) until it has.
///
/// # Errors
/// A message when no supervisor runs, or the restart failed or took too long.
pub async fn request_restart(timeout: Duration) -> Result<(), String> {
    let tx = RESTARTS.lock().expect("bug: restart lock poisoned").clone();
    let Some(tx) = tx else {
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

/// Runs `argv` as a child until it exits; returns the exit code zkrender should exit with
/// (the child's, or 128 + signal). Forwards signals, serves restarts, and reaps orphans when
/// zkrender is PID 1.
///
/// # Errors
/// The child cannot be started.
pub async fn supervise(argv: &[String]) -> std::io::Result<i32> {
    use tokio::signal::unix::signal;
    let mut restarts = serve_restarts();
    let mut child = spawn(argv)?;
    // One small task per forwarded signal; each signals whichever child runs at the time
    // (a restart replaces it). They end with the runtime when zkrender exits.
    for (kind, sig) in FORWARDED {
        match signal(kind) {
            Ok(mut stream) => {
                tokio::spawn(async move {
                    while stream.recv().await.is_some() {
                        if let Some(pid) = child_pid() {
                            tracing::info!(signal = %sig, pid, "forwarding signal to the child");
                            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig);
                        }
                    }
                });
            }
            Err(e) => tracing::warn!(signal = %sig, error = %e, "cannot forward this signal to the child"),
        }
    }
    if std::process::id() == 1 {
        tokio::spawn(reap_orphans());
    }
    loop {
        tokio::select! {
            status = child.wait() => {
                set_child_pid(None);
                *RESTARTS.lock().expect("bug: restart lock poisoned") = None;
                let status = status?;
                let code = crate::process::exit_code(status);
                tracing::info!(code, "the child exited; zkrender exits with its code");
                return Ok(code);
            }
            Some(done) = restarts.recv() => {
                let result = restart(&mut child, argv).await;
                let _ = done.send(result.map_err(|e| e.to_string()));
            }
        }
    }
}

/// Starts the child (see [`crate::process::spawn_supervised`]: from a long-lived thread).
fn spawn(argv: &[String]) -> std::io::Result<tokio::process::Child> {
    let child = crate::process::spawn_supervised(argv)?;
    set_child_pid(child.id().map(|p| p as i32));
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
/// so waiting a second never steals an exit status someone is waiting for.
async fn reap_orphans() {
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
