//! Reload by command: run an argv directly (no shell), e.g. `["systemctl", "reload", "app"]`.
//!
//! stdin is `/dev/null` and stdout is discarded, so the agent's own output stays clean and
//! a chatty command cannot block on a full pipe; the tail of stderr goes into the error
//! when the command fails. The command runs in a process group of its own: on timeout,
//! or when the reload is dropped (shutdown), the whole group is killed, so
//! `sh -c 'sleep 100'` leaves no orphan behind. What it leaves running after a normal
//! exit is left alone: a reload may start a daemon. `crate::process` does the running.
//! Nothing from ZooKeeper is ever added to the command line or the environment.

use std::time::Duration;

use super::NotifyError;
use crate::process::{self, Argv, Capture, Ending, Finished, Job, RunError};

/// How much of the end of stderr goes into the error message.
const STDERR_TAIL: usize = 2048;

/// Runs `argv` to completion; it must exit 0 within `timeout`.
pub(super) async fn run(argv: &[String], timeout: Duration) -> Result<(), NotifyError> {
    let command = || Argv(argv).to_string();
    let job = Job {
        argv: argv.to_vec(),
        file: None,
        timeout,
        capture: Capture::Stderr,
        keep: STDERR_TAIL,
        kill_leftovers: false,
    };
    match process::run(job).await {
        Ok(Finished { ending: Ending::Exited(status), .. }) if status.success() => Ok(()),
        Ok(Finished { ending: Ending::Exited(status), output }) => {
            Err(NotifyError::CommandFailed { command: command(), status, stderr: output })
        }
        Ok(Finished { ending: Ending::TimedOut, .. }) => {
            Err(NotifyError::CommandTimeout { command: command(), timeout })
        }
        Err(RunError::Empty) => Err(NotifyError::CommandEmpty),
        Err(RunError::Start(source)) => Err(NotifyError::CommandStart { command: command(), source }),
        Err(RunError::Wait { source, .. }) => Err(NotifyError::CommandWait { command: command(), source }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ReloadAction, ReloadSpec};
    use crate::notify::{attempt, reload};
    use nix::unistd::Pid;
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
