//! Reloading the application after one of its files changed: the last pipeline stage.
//!
//! When `sink` reports that a file's bytes on disk changed, the pipeline queues the file's
//! [`ReloadSpec`] with [`queue`]: its task (spawned by `runtime`) runs each queued reload
//! through [`reload`] and sends a [`queue::ReloadOutcome`] back to the pipeline loop. There
//! are three kinds of action, one submodule each, plus the `exec` child's restart:
//!
//! - `signal`: `kill(2)` to a pid, to the pid read from a pid file at each reload, to
//!   every master process with a given name (`/proc/PID/comm`), or to the `exec` child;
//! - `http`: one request to a hook URL through a shared, lazily built client;
//! - `command`: an argv run without a shell, killed when it overruns its timeout;
//! - `restart = true`: asks the `exec` supervisor through its [`ChildHandle`].
//!
//! A new kind of reload is a [`ReloadAction`] variant (parsed in `config`), an arm in
//! [`attempt`] (usually a new submodule) and a [`crate::ops::ReloadKind`] for its metric.
//!
//! [`reload`] retries a failed action with exponential backoff and returns the last
//! error. Whether that is fatal is the caller's decision; while the agent runs it is
//! not: the failure is logged and the next change tries again.
//!
//! What this module must not do: pass znode contents anywhere. Nothing rendered reaches
//! a signal target, an HTTP request (the body is empty) or a command line.

mod command;
mod http;
pub mod queue;
mod signal;

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::Signal;
use tracing::{debug, warn};

use crate::config::{ReloadAction, ReloadSpec, SignalTarget};
use crate::exec::ChildHandle;

/// Wait before the first retry; it doubles after each further failure.
const FIRST_BACKOFF: Duration = Duration::from_millis(100);

/// Backoff stops doubling here, so a large `retries` cannot produce hour-long sleeps.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Runs `spec.action`, retrying a failure up to `spec.retries` more times. `child` is the
/// `exec` child that a signal without a target and `restart = true` go to.
///
/// The wait before retry `n` (1-based) is 100 ms × 2^(n-1), capped at 30 s. Every failed
/// attempt is logged at `warn` with the action, the attempt number and the error.
///
/// # Errors
/// The error of the last attempt, once all `1 + spec.retries` attempts have failed.
///
/// # Cancel safety
/// Dropping the future stops the current attempt: a running command is killed
/// (`kill_on_drop`), an HTTP request is abandoned. The reload may or may not have
/// reached the application.
pub async fn reload(spec: &ReloadSpec, child: &ChildHandle) -> Result<(), NotifyError> {
    let mut backoff = FIRST_BACKOFF;
    // u64 so that `retries = u32::MAX` still ends instead of overflowing the counter.
    let mut attempt_no: u64 = 1;
    loop {
        match attempt(&spec.action, spec.timeout, child).await {
            Ok(()) => {
                if attempt_no > 1 {
                    debug!(reload = %spec.action, attempt = attempt_no, "reload succeeded after retrying");
                }
                return Ok(());
            }
            Err(err) if attempt_no > u64::from(spec.retries) => {
                warn!(reload = %spec.action, attempt = attempt_no, error = %crate::error::report(&err), "reload attempt failed; giving up");
                return Err(err);
            }
            Err(err) => {
                warn!(
                    reload = %spec.action,
                    attempt = attempt_no,
                    error = %crate::error::report(&err),
                    retry_in = ?backoff,
                    "reload attempt failed; retrying"
                );
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2).min(MAX_BACKOFF);
                attempt_no += 1;
            }
        }
    }
}

/// Runs `action` once.
///
/// `timeout` bounds an HTTP request (connect to the end of the status line and, on
/// failure, the start of the body) and a command (spawn to exit). Sending a signal does
/// not block, so it ignores `timeout`.
///
/// # Errors
/// [`NotifyError`] naming the action's target; see the variants.
pub async fn attempt(
    action: &ReloadAction,
    timeout: Duration,
    child: &ChildHandle,
) -> Result<(), NotifyError> {
    match action {
        ReloadAction::Signal { signal, target } => signal::send(*signal, target, child),
        ReloadAction::Http { url, method } => http::request(method, url, timeout).await,
        ReloadAction::Command { argv } => command::run(argv, timeout).await,
        ReloadAction::Restart => {
            child.request_restart(timeout).await.map_err(|reason| NotifyError::Restart { reason })
        }
    }
}

/// Why the application `action` reloads looks not started yet (its pid file does not exist
/// or is empty), or `None`. The reload queue asks until it has found the application
/// once: an application that starts after zkrender reads the files when it starts, so a
/// reload before that is no failure.
pub fn not_started(action: &ReloadAction) -> Option<String> {
    match action {
        ReloadAction::Signal { target, .. } => signal::not_started(target),
        ReloadAction::Http { .. } | ReloadAction::Command { .. } | ReloadAction::Restart => None,
    }
}

/// For logs: `signal SIGHUP to pid file /run/app.pid`, `http POST http://127.0.0.1/-/reload`,
/// `command systemctl reload app`.
impl fmt::Display for ReloadAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReloadAction::Signal { signal, target } => {
                write!(f, "signal {} to {}", signal.as_str(), SignalTargetDisplay(target))
            }
            ReloadAction::Http { url, method } => write!(f, "http {method} {url}"),
            ReloadAction::Command { argv } => write!(f, "command {}", Argv(argv)),
            ReloadAction::Restart => write!(f, "restart of the child"),
        }
    }
}

/// A failed reload attempt. Every variant names its target (pid, pid file, process name,
/// URL or command line) and keeps the underlying cause as its `source`.
#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    /// `signal` without pid, pid_file or process outside `zkrender exec`, or no child running.
    #[error(
        "no child process to signal (a signal without pid, pid_file or process goes to the child of `zkrender exec`)"
    )]
    NoChild,
    /// `restart = true` failed.
    #[error("restarting the child: {reason}")]
    Restart { reason: String },
    /// A configured pid of 0 or below: `kill(2)` would signal a whole process group.
    #[error("pid {pid} is not a process id")]
    InvalidPid { pid: i32 },
    #[error("reading pid file {}", .path.display())]
    PidFileRead {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The pid file exists but does not hold a positive integer (surrounding whitespace
    /// is allowed). `contents` is trimmed and cut to 64 characters.
    #[error("pid file {} does not hold a pid: {contents:?}", .path.display())]
    PidFileInvalid { path: PathBuf, contents: String },
    /// `kill(2)` said `ESRCH`. `target` says where the pid came from.
    #[error("no process with pid {pid}{}", Via(.target))]
    NoSuchPid { pid: i32, target: SignalTarget },
    /// `kill(2)` failed otherwise, typically `EPERM`.
    #[error("sending {} to pid {pid}{}", .signal.as_str(), Via(.target))]
    Kill {
        signal: Signal,
        pid: i32,
        target: SignalTarget,
        #[source]
        source: Errno,
    },
    /// No master process with this name (or all exited between the scan and the signal).
    #[error("no process named {name}")]
    NoProcess { name: String },
    #[error("looking for process {name} in /proc")]
    ProcScan {
        name: String,
        #[source]
        source: io::Error,
    },
    #[error("http {method} {url}: {method:?} is not a valid http method")]
    HttpMethod { method: String, url: String },
    #[error("http {method} {url}: building the http client")]
    HttpClient {
        method: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// Invalid URL, connection refused, TLS failure, connection reset, ...
    #[error("http {method} {url}: request failed")]
    HttpRequest {
        method: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// A response outside 2xx. `body` is the start of the body (at most 200 bytes),
    /// lossily decoded and trimmed.
    #[error("http {method} {url}: status {status}{}", Detail(.body))]
    HttpStatus { method: String, url: String, status: reqwest::StatusCode, body: String },
    #[error("http {method} {url}: timed out after {}", humantime::format_duration(*.timeout))]
    HttpTimeout { method: String, url: String, timeout: Duration },
    /// The reload has no argv at all (validation should have refused it).
    #[error("command with an empty argv")]
    CommandEmpty,
    /// Spawning failed: not found, not executable, ...
    #[error("command {command}: cannot start")]
    CommandStart {
        command: String,
        #[source]
        source: io::Error,
    },
    #[error("command {command}: waiting for it to exit")]
    CommandWait {
        command: String,
        #[source]
        source: io::Error,
    },
    /// Exited non-zero or was killed by a signal. `stderr` is the last ~2 KiB of its
    /// standard error, lossily decoded and trimmed (`...` in front if cut).
    #[error("command {command}: {}{}", Exit(.status), Detail(.stderr))]
    CommandFailed { command: String, status: ExitStatus, stderr: String },
    /// Overran its timeout; its process group was killed.
    #[error("command {command}: timed out after {} (killed)", humantime::format_duration(*.timeout))]
    CommandTimeout { command: String, timeout: Duration },
}

impl NotifyError {
    /// The kind of reload that failed: `"signal"`, `"http"` or `"command"`. Stable, for
    /// metric labels.
    pub fn kind(&self) -> &'static str {
        match self {
            NotifyError::Restart { .. } => "restart",
            NotifyError::NoChild
            | NotifyError::InvalidPid { .. }
            | NotifyError::PidFileRead { .. }
            | NotifyError::PidFileInvalid { .. }
            | NotifyError::NoSuchPid { .. }
            | NotifyError::Kill { .. }
            | NotifyError::NoProcess { .. }
            | NotifyError::ProcScan { .. } => "signal",
            NotifyError::HttpMethod { .. }
            | NotifyError::HttpClient { .. }
            | NotifyError::HttpRequest { .. }
            | NotifyError::HttpStatus { .. }
            | NotifyError::HttpTimeout { .. } => "http",
            NotifyError::CommandEmpty
            | NotifyError::CommandStart { .. }
            | NotifyError::CommandWait { .. }
            | NotifyError::CommandFailed { .. }
            | NotifyError::CommandTimeout { .. } => "command",
        }
    }
}

/// `pid 123`, `pid file /run/app.pid`, `process nginx`. A private wrapper rather than
/// `impl Display for SignalTarget`, which belongs to `config` if anywhere.
struct SignalTargetDisplay<'a>(&'a SignalTarget);

impl fmt::Display for SignalTargetDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            SignalTarget::Pid(pid) => write!(f, "pid {pid}"),
            SignalTarget::PidFile(path) => write!(f, "pid file {}", path.display()),
            SignalTarget::Process(name) => write!(f, "process {name}"),
            SignalTarget::Child => write!(f, "the child"),
        }
    }
}

/// Where a signalled pid came from, for messages: nothing for a configured pid,
/// ` (from pid file /run/app.pid)` or ` (process nginx)`.
struct Via<'a>(&'a SignalTarget);

impl fmt::Display for Via<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            SignalTarget::Pid(_) => Ok(()),
            SignalTarget::PidFile(path) => write!(f, " (from pid file {})", path.display()),
            SignalTarget::Process(name) => write!(f, " (process {name})"),
            SignalTarget::Child => write!(f, " (the child)"),
        }
    }
}

/// `: text` after a message, or nothing when `text` is empty.
struct Detail<'a>(&'a str);

impl fmt::Display for Detail<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() { Ok(()) } else { write!(f, ": {}", self.0) }
    }
}

/// `exited with status 1` or `killed by SIGKILL`.
struct Exit<'a>(&'a ExitStatus);

impl fmt::Display for Exit<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use std::os::unix::process::ExitStatusExt;
        match (self.0.code(), self.0.signal()) {
            (Some(code), _) => write!(f, "exited with status {code}"),
            (None, Some(raw)) => match Signal::try_from(raw) {
                Ok(signal) => write!(f, "killed by {}", signal.as_str()),
                Err(_) => write!(f, "killed by signal {raw}"),
            },
            (None, None) => write!(f, "{}", self.0),
        }
    }
}

pub(crate) use crate::process::Argv;

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt;
    use std::time::Instant;

    fn argv(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn display_names_each_kind_of_action() {
        let sig = |target| ReloadAction::Signal { signal: Signal::SIGHUP, target };
        assert_eq!(sig(SignalTarget::Pid(123)).to_string(), "signal SIGHUP to pid 123");
        assert_eq!(
            sig(SignalTarget::PidFile("/run/app.pid".into())).to_string(),
            "signal SIGHUP to pid file /run/app.pid"
        );
        assert_eq!(sig(SignalTarget::Process("nginx".into())).to_string(), "signal SIGHUP to process nginx");
        let http = ReloadAction::Http { url: "http://127.0.0.1:9090/-/reload".into(), method: "POST".into() };
        assert_eq!(http.to_string(), "http POST http://127.0.0.1:9090/-/reload");
        let cmd = ReloadAction::Command { argv: argv(&["/usr/bin/x", "--y"]) };
        assert_eq!(cmd.to_string(), "command /usr/bin/x --y");
    }

    #[test]
    fn argv_display_quotes_arguments_that_would_be_ambiguous() {
        assert_eq!(Argv(&argv(&["sh", "-c", "kill -HUP 1", ""])).to_string(), r#"sh -c "kill -HUP 1" """#);
    }

    #[test]
    fn error_messages_name_the_target() {
        let err = NotifyError::PidFileInvalid { path: "/run/app.pid".into(), contents: "abc".into() };
        assert_eq!(err.to_string(), r#"pid file /run/app.pid does not hold a pid: "abc""#);
        let err = NotifyError::NoSuchPid { pid: 123, target: SignalTarget::Pid(123) };
        assert_eq!(err.to_string(), "no process with pid 123");
        let err = NotifyError::NoSuchPid { pid: 123, target: SignalTarget::PidFile("/run/app.pid".into()) };
        assert_eq!(err.to_string(), "no process with pid 123 (from pid file /run/app.pid)");
        let err = NotifyError::HttpStatus {
            method: "POST".into(),
            url: "http://h/r".into(),
            status: reqwest::StatusCode::INTERNAL_SERVER_ERROR,
            body: String::new(),
        };
        assert_eq!(err.to_string(), "http POST http://h/r: status 500 Internal Server Error");
        let err = NotifyError::HttpTimeout {
            method: "POST".into(),
            url: "http://h/r".into(),
            timeout: Duration::from_secs(10),
        };
        assert_eq!(err.to_string(), "http POST http://h/r: timed out after 10s");
        let err = NotifyError::CommandFailed {
            command: "/x".into(),
            status: ExitStatus::from_raw(1 << 8),
            stderr: "boom".into(),
        };
        assert_eq!(err.to_string(), "command /x: exited with status 1: boom");
        let err = NotifyError::CommandFailed {
            command: "/x".into(),
            status: ExitStatus::from_raw(9),
            stderr: String::new(),
        };
        assert_eq!(err.to_string(), "command /x: killed by SIGKILL");
        let err = NotifyError::CommandTimeout { command: "/x".into(), timeout: Duration::from_secs(10) };
        assert_eq!(err.to_string(), "command /x: timed out after 10s (killed)");
        assert_eq!(err.kind(), "command");
    }

    #[tokio::test]
    async fn retries_back_off_then_return_the_last_error() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        // Appends a line per run, then fails: the file shows how many attempts ran.
        let script = format!("echo x >> '{}'; echo nope >&2; exit 7", count.display());
        let spec = ReloadSpec {
            splay: std::time::Duration::ZERO,
            action: ReloadAction::Command { argv: argv(&["sh", "-c", &script]) },
            retries: 2,
            timeout: Duration::from_secs(5),
        };
        let started = Instant::now();
        let err = reload(&spec, &ChildHandle::none()).await.unwrap_err();
        let elapsed = started.elapsed();
        assert_eq!(std::fs::read_to_string(&count).unwrap().lines().count(), 3);
        assert!(elapsed >= Duration::from_millis(300), "100 + 200 ms of backoff, took {elapsed:?}");
        assert!(elapsed < Duration::from_secs(3), "took {elapsed:?}");
        assert!(err.to_string().ends_with("exited with status 7: nope"), "{err}");
    }

    #[tokio::test]
    async fn a_retry_that_succeeds_ends_the_reload() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("seen");
        // Fails the first time (creating the marker), succeeds from then on.
        let script = format!("test -e '{0}' && exit 0; touch '{0}'; exit 1", marker.display());
        let spec = ReloadSpec {
            splay: std::time::Duration::ZERO,
            action: ReloadAction::Command { argv: argv(&["sh", "-c", &script]) },
            retries: 5,
            timeout: Duration::from_secs(5),
        };
        let started = Instant::now();
        reload(&spec, &ChildHandle::none()).await.unwrap();
        let elapsed = started.elapsed();
        assert!(elapsed >= Duration::from_millis(100), "one backoff, took {elapsed:?}");
        assert!(elapsed < Duration::from_millis(1500), "no more retries after success, took {elapsed:?}");
    }
}
