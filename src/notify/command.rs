//! Reload by command: run an argv directly (no shell), e.g. `["systemctl", "reload", "app"]`.
//!
//! stdin is `/dev/null`; stdout is read and discarded so the agent's own output stays
//! clean and a chatty command cannot block on a full pipe; the tail of stderr goes into
//! the error when the command fails. The command runs in a process group of its own:
//! on timeout the whole group is killed, so `sh -c 'sleep 100'` leaves no orphan behind.
//! Nothing from ZooKeeper is ever added to the command line or the environment.

use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::task::JoinHandle;
use tracing::debug;

use super::{Argv, NotifyError};

/// How much of the end of stderr goes into the error message.
const STDERR_TAIL: usize = 2048;

/// After the command exits, how long to wait for its stderr to reach end of file. A
/// background process it started may hold the pipe open for much longer; its output is
/// not worth waiting for.
const PIPE_GRACE: Duration = Duration::from_millis(500);

/// Runs `argv` to completion; it must exit 0 within `timeout`.
pub(super) async fn run(argv: &[String], timeout: Duration) -> Result<(), NotifyError> {
    let Some((program, args)) = argv.split_first() else {
        return Err(NotifyError::CommandEmpty);
    };
    let command = || Argv(argv).to_string();
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // If the reload future is dropped (shutdown), the command does not outlive it
        // (though, unlike on timeout, anything it started in the background may).
        .kill_on_drop(true)
        .process_group(0)
        .spawn()
        .map_err(|source| NotifyError::CommandStart { command: command(), source })?;

    // Both pipes are read while the command runs, or a full pipe would stall it.
    let _stdout = Reader::spawn(child.stdout.take(), 0);
    let mut stderr = Reader::spawn(child.stderr.take(), STDERR_TAIL);

    let status = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => status,
        Ok(Err(source)) => return Err(NotifyError::CommandWait { command: command(), source }),
        Err(_elapsed) => {
            // The child has not been reaped (its wait timed out), so its pid cannot have
            // been reused: it still names the command's process group.
            if let Some(pid) = child.id().and_then(|id| i32::try_from(id).ok())
                && let Err(err) = killpg(Pid::from_raw(pid), Signal::SIGKILL)
            {
                debug!(command = %command(), error = %err, "killing the process group failed");
            }
            if let Err(err) = child.kill().await {
                debug!(command = %command(), error = %err, "killing the command failed");
            }
            return Err(NotifyError::CommandTimeout { command: command(), timeout });
        }
    };
    if status.success() {
        return Ok(());
    }
    let stderr = stderr.tail(PIPE_GRACE).await;
    Err(NotifyError::CommandFailed { command: command(), status, stderr })
}

/// The end of a pipe's output so far, and whether anything before it was dropped.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    cut: bool,
}

/// A task reading a pipe to its end, keeping the last `keep` bytes where [`Reader::tail`]
/// can take them even while the task still runs. The task is aborted when the reader is
/// dropped, so an early return or a dropped reload leaves nothing behind.
struct Reader {
    tail: Arc<Mutex<Tail>>,
    task: JoinHandle<()>,
}

impl Reader {
    fn spawn<R: AsyncRead + Unpin + Send + 'static>(pipe: Option<R>, keep: usize) -> Reader {
        let tail = Arc::new(Mutex::new(Tail::default()));
        let shared = Arc::clone(&tail);
        let task = tokio::spawn(async move {
            if let Some(pipe) = pipe {
                read_tail(pipe, keep, &shared).await;
            }
        });
        Reader { tail, task }
    }

    /// Waits up to `grace` for end of file, then returns what was read, decoded lossily
    /// and trimmed, with `...` in front if the start was dropped.
    async fn tail(&mut self, grace: Duration) -> String {
        let _ = tokio::time::timeout(grace, &mut self.task).await;
        let tail = self.tail.lock().unwrap_or_else(PoisonError::into_inner);
        let text = String::from_utf8_lossy(&tail.bytes);
        let text = text.trim();
        if tail.cut { format!("...{text}") } else { text.to_owned() }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads `pipe` to its end (or a read error), keeping its last `keep` bytes in `tail`.
async fn read_tail<R: AsyncRead + Unpin>(mut pipe: R, keep: usize, tail: &Mutex<Tail>) {
    let mut buf = [0u8; 4096];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut tail = tail.lock().unwrap_or_else(PoisonError::into_inner);
                tail.bytes.extend_from_slice(&buf[..n]);
                if tail.bytes.len() > keep {
                    let excess = tail.bytes.len() - keep;
                    tail.bytes.drain(..excess);
                    tail.cut = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ReloadAction, ReloadSpec};
    use crate::notify::{attempt, reload};
    use std::time::Instant;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn action(args: &[&str]) -> ReloadAction {
        ReloadAction::Command { argv: argv(args) }
    }

    #[tokio::test]
    async fn a_zero_exit_is_success() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("ran");
        let spec = ReloadSpec {
            splay: std::time::Duration::ZERO,
            action: action(&["touch", marker.to_str().unwrap()]),
            retries: 0,
            timeout: Duration::from_secs(5),
        };
        reload(&spec, &crate::exec::ChildHandle::none()).await.unwrap();
        assert!(marker.exists());
    }

    #[tokio::test]
    async fn arguments_are_not_interpreted_by_a_shell() {
        let dir = tempfile::tempdir().unwrap();
        let odd = dir.path().join("a b; $(touch pwned)");
        attempt(
            &action(&["touch", odd.to_str().unwrap()]),
            Duration::from_secs(5),
            &crate::exec::ChildHandle::none(),
        )
        .await
        .unwrap();
        assert!(odd.exists());
        assert!(!dir.path().join("pwned").exists());
    }

    #[tokio::test]
    async fn a_non_zero_exit_reports_the_status_and_stderr() {
        let act = action(&["sh", "-c", "echo to stdout; echo something broke >&2; exit 3"]);
        let err = attempt(&act, Duration::from_secs(5), &crate::exec::ChildHandle::none()).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"command sh -c "echo to stdout; echo something broke >&2; exit 3": exited with status 3: something broke"#
        );
        assert_eq!(err.kind(), "command");
    }

    #[tokio::test]
    async fn only_the_tail_of_a_long_stderr_is_kept() {
        let act =
            action(&["sh", "-c", "i=0; while [ $i -lt 500 ]; do echo line $i >&2; i=$((i+1)); done; exit 1"]);
        let NotifyError::CommandFailed { stderr, .. } =
            attempt(&act, Duration::from_secs(5), &crate::exec::ChildHandle::none()).await.unwrap_err()
        else {
            panic!("expected CommandFailed");
        };
        assert!(stderr.starts_with("..."), "{stderr}");
        assert!(stderr.ends_with("line 499"), "{stderr}");
        assert!(stderr.len() <= STDERR_TAIL + 3);
    }

    #[tokio::test]
    async fn an_overrunning_command_is_killed() {
        let started = Instant::now();
        let err =
            attempt(&action(&["sleep", "5"]), Duration::from_millis(200), &crate::exec::ChildHandle::none())
                .await
                .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
        assert_eq!(err.to_string(), "command sleep 5: timed out after 200ms (killed)");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_commands_children_too() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // The shell records its grandchild's pid, then waits for it.
        let script = format!("sleep 30 & echo $! > '{}'; wait", pid_file.display());
        let err = attempt(
            &action(&["sh", "-c", &script]),
            Duration::from_millis(300),
            &crate::exec::ChildHandle::none(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, NotifyError::CommandTimeout { .. }), "{err:?}");
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        // Killed, and reaped by init (or a subreaper) shortly after.
        let deadline = Instant::now() + Duration::from_secs(5);
        while nix::sys::signal::kill(Pid::from_raw(pid), None).is_ok() {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            if stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')) {
                break; // a zombie: dead, waiting for its new parent to reap it
            }
            assert!(Instant::now() < deadline, "grandchild {pid} still running");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[tokio::test]
    async fn a_missing_program_cannot_start() {
        let err = attempt(
            &action(&["/nonexistent/zkr-reload", "--now"]),
            Duration::from_secs(1),
            &crate::exec::ChildHandle::none(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, NotifyError::CommandStart { .. }), "{err:?}");
        assert_eq!(err.to_string(), "command /nonexistent/zkr-reload --now: cannot start");
    }

    #[tokio::test]
    async fn a_background_process_holding_stderr_does_not_delay_the_result() {
        // The command fails at once, but leaves a process that keeps stderr open.
        let act = action(&["sh", "-c", "echo failed >&2; sleep 5 & exit 1"]);
        let started = Instant::now();
        let err =
            attempt(&act, Duration::from_secs(10), &crate::exec::ChildHandle::none()).await.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        assert!(err.to_string().ends_with("exited with status 1: failed"), "{err}");
    }

    #[tokio::test]
    async fn an_empty_argv_is_an_error() {
        let err = attempt(
            &ReloadAction::Command { argv: Vec::new() },
            Duration::from_secs(1),
            &crate::exec::ChildHandle::none(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, NotifyError::CommandEmpty));
    }
}
