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

/// Where restart requests go; set while a supervisor runs.
static RESTARTS: Mutex<Option<mpsc::UnboundedSender<oneshot::Sender<Result<(), String>>>>> = Mutex::new(None);

/// The child's pid, if a child is running.
pub fn child_pid() -> Option<i32> {
    match CHILD_PID.load(Ordering::SeqCst) {
        0 => None,
        pid => Some(pid),
    }
}

/// Records the running child's pid (`None` when it exited).
pub fn set_child_pid(pid: Option<i32>) {
    CHILD_PID.store(pid.unwrap_or(0), Ordering::SeqCst);
}

/// Installs the channel restart requests are sent on; returns its receiver.
pub fn serve_restarts() -> mpsc::UnboundedReceiver<oneshot::Sender<Result<(), String>>> {
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
