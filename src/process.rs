//! Child processes: the one place zkrender starts, waits for and kills them.
//!
//! Three kinds of child, one code path each way they differ:
//!
//! - a file's `check` (from `sink`, blocking) and a reload `command` (from `notify`, async)
//!   are short jobs: [`run_blocking`] and [`run`] start the argv without a shell, stdin
//!   `/dev/null`, in a process group of its own, wait for it up to a timeout, kill the
//!   whole group when it overruns (so `sh -c 'sleep 100'` leaves no orphan), and keep a
//!   bounded tail of its output for the error message;
//! - the application of `zkrender exec` is long-lived: [`spawn_supervised`] starts it with
//!   a parent-death signal, so that it never outlives a killed zkrender.
//!
//! It also holds the one list an immediate exit (a second SIGTERM) cleans up: the process
//! groups of running jobs and the temporary files `sink` has in flight ([`cleanup`]).
//!
//! What this module must not do: decide anything about files or reloads. It reports how a
//! child ended; the callers turn that into their own errors and messages.

use std::ffi::OsString;
use std::fmt;
use std::io::{self, Read};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use nix::unistd::Pid;

/// After a job exits, how long to wait for its output pipe to reach end of file. A
/// background process it started may hold the pipe open for much longer; its output is
/// not worth waiting for.
const PIPE_GRACE: Duration = Duration::from_millis(500);

/// The longest pause between two looks at a running job.
const MAX_POLL: Duration = Duration::from_millis(50);

// ------------------------------------------------------------------ argv

/// A command line as configured: the program, then its arguments.
///
/// Displayed for messages with arguments joined by spaces; an argument that is empty or
/// holds whitespace or quotes is shown quoted, so word boundaries stay visible.
pub struct Argv<'a>(pub &'a [String]);

impl Argv<'_> {
    /// The arguments as passed to the program: each `{file}` replaced by `file` when one
    /// is given (a `check`), else unchanged (a reload command takes no placeholder).
    pub fn substituted(&self, file: Option<&Path>) -> Vec<OsString> {
        self.0
            .iter()
            .map(|arg| match file {
                Some(file) => substitute(arg, file),
                None => OsString::from(arg),
            })
            .collect()
    }
}

impl fmt::Display for Argv<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, arg) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
                write!(f, "{arg:?}")?;
            } else {
                f.write_str(arg)?;
            }
        }
        Ok(())
    }
}

/// `arg` with every `{file}` replaced by `path`, byte-exact even for non-UTF-8 paths.
fn substitute(arg: &str, path: &Path) -> OsString {
    let mut out = OsString::new();
    let mut parts = arg.split("{file}");
    if let Some(first) = parts.next() {
        out.push(first);
    }
    for part in parts {
        out.push(path.as_os_str());
        out.push(part);
    }
    out
}

// ------------------------------------------------------------------ jobs

/// Which output of a job is kept for its error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Capture {
    /// stdout and stderr through one pipe, so their lines keep the order they were
    /// written in (a `check`: a validator may report on either).
    Combined,
    /// stderr only; stdout goes to `/dev/null`, so a chatty reload command neither
    /// clutters the agent's own output nor blocks on a full pipe.
    Stderr,
}

/// A short-lived child to run to completion.
#[derive(Debug, Clone)]
pub struct Job {
    /// The program and its arguments; never passed through a shell.
    pub argv: Vec<String>,
    /// Replaces `{file}` in every argument when set.
    pub file: Option<PathBuf>,
    /// From spawn to exit; an overrunning job's process group is killed.
    pub timeout: Duration,
    pub capture: Capture,
    /// How many bytes of the end of the output are kept.
    pub keep: usize,
    /// Once the job has exited, kill what it left running in its process group (a
    /// `check` must not leave anything behind; a reload command may start a daemon).
    pub kill_leftovers: bool,
}

/// How a job ended.
#[derive(Debug)]
pub enum Ending {
    /// It exited (successfully or not, or killed by a signal someone else sent).
    Exited(ExitStatus),
    /// It overran its timeout; its process group was killed.
    TimedOut,
}

/// A job that ran.
#[derive(Debug)]
pub struct Finished {
    pub ending: Ending,
    /// The end of the captured output, lossily decoded and trimmed, `...` in front if the
    /// start was dropped.
    pub output: String,
}

/// A job that could not be run, or whose end could not be observed.
#[derive(Debug)]
pub enum RunError {
    /// The argv is empty.
    Empty,
    /// No pipe, or the program could not be started (not found, not executable, ...).
    Start(io::Error),
    /// Waiting for it failed; it was killed with its group. `output` as in [`Finished`].
    Wait { source: io::Error, output: String },
}

/// Runs `job` to its end on the calling thread (blocking code, such as `sink`).
///
/// # Errors
/// [`RunError`] when it could not be started or waited for.
pub fn run_blocking(job: &Job) -> Result<Finished, RunError> {
    run_until(job, &AtomicBool::new(false))
}

/// Runs `job` to its end without a thread of its own: the runtime waits for its exit on a
/// pidfd and reads its output pipe, so a reload costs no thread hand-off and no polling.
/// Falls back to a blocking thread where pidfds are not available (Linux before 5.3).
///
/// # Errors
/// [`RunError`] when it could not be started or waited for.
///
/// # Cancel safety
/// Dropping the future kills the job's whole process group at once; the job may or may
/// not have done its work by then.
pub async fn run(job: Job) -> Result<Finished, RunError> {
    if !pidfd::supported() {
        return run_on_thread(job).await;
    }
    let (child, reader) = start(&job)?;
    let mut running = Running::new(child);
    let pidfd = match pidfd::open(running.pgid).and_then(pidfd::register) {
        Ok(fd) => fd,
        Err(source) => return Err(running.abandon(source)),
    };
    let mut pipe = match tokio::net::unix::pipe::Receiver::from_owned_fd(reader.into()) {
        Ok(pipe) => Some(pipe),
        Err(source) => return Err(running.abandon(source)),
    };
    let mut tail = Tail::default();
    let mut chunk = [0u8; 8192];
    let deadline = tokio::time::Instant::now() + job.timeout;
    let timed_out = loop {
        tokio::select! {
            ready = pidfd.readable() => match ready {
                // Readable once it has exited; still unreaped (see `exited`).
                Ok(mut guard) => match exited(running.pgid) {
                    Ok(true) => break false,
                    Ok(false) => guard.clear_ready(),
                    Err(source) => return Err(running.abandon(source)),
                },
                Err(source) => return Err(running.abandon(source)),
            },
            read = read_some(pipe.as_mut(), &mut chunk) => match read {
                Some(n) => tail.push(&chunk[..n], job.keep),
                None => pipe = None,
            },
            () = tokio::time::sleep_until(deadline) => break true,
        }
    };
    // As in `run_until`: the job is unreaped, so its group id cannot have been reused.
    if job.kill_leftovers || timed_out {
        let _ = killpg(running.pgid, Signal::SIGKILL);
    }
    cleanup::remove_process_group(running.pgid);
    if timed_out {
        // Killed: gone within moments (the pidfd turns readable), reaped below.
        let _ = tokio::time::timeout(PIPE_GRACE, pidfd.readable()).await;
    }
    let status = running.reap();
    // What is left in the pipe, unless something the job started keeps it open.
    if pipe.is_some() {
        let _ = tokio::time::timeout(PIPE_GRACE, async {
            while let Some(n) = read_some(pipe.as_mut(), &mut chunk).await {
                tail.push(&chunk[..n], job.keep);
            }
        })
        .await;
    }
    let output = tail.text(job.keep);
    match (timed_out, status) {
        (true, _) => Ok(Finished { ending: Ending::TimedOut, output }),
        (false, Err(source)) => Err(RunError::Wait { source, output }),
        (false, Ok(status)) => Ok(Finished { ending: Ending::Exited(status), output }),
    }
}

/// The next bytes from `pipe`: `None` at end of file, on an error, or without a pipe (then
/// never ready, so a `select!` waits on its other branches).
async fn read_some(pipe: Option<&mut tokio::net::unix::pipe::Receiver>, chunk: &mut [u8]) -> Option<usize> {
    use tokio::io::AsyncReadExt as _;
    let Some(pipe) = pipe else { return std::future::pending().await };
    loop {
        match pipe.read(chunk).await {
            Ok(0) => return None,
            Ok(n) => return Some(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return None,
        }
    }
}

/// Whether `pid` has exited, without reaping it (WNOWAIT).
fn exited(pid: Pid) -> io::Result<bool> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    loop {
        match waitid(Id::Pid(pid), flags) {
            Ok(WaitStatus::StillAlive) => return Ok(false),
            Err(nix::errno::Errno::EINTR) => {}
            Ok(_) => return Ok(true),
            Err(e) => return Err(e.into()),
        }
    }
}

/// A job [`run`] started and has not reaped yet. Dropped before [`Running::reap`] (the
/// future was dropped), it kills the job's process group and reaps it on a thread.
struct Running {
    child: Option<Child>,
    pgid: Pid,
}

impl Running {
    fn new(child: Child) -> Self {
        let pgid = child_pid(&child);
        cleanup::add_process_group(pgid);
        Running { child: Some(child), pgid }
    }

    /// Reaps the job, which has exited (or was killed).
    fn reap(&mut self) -> io::Result<ExitStatus> {
        let mut child = self.child.take().expect("bug: reaped twice");
        child.wait()
    }

    /// Gives up on a job whose end cannot be observed: kills its group (on drop).
    fn abandon(self, source: io::Error) -> RunError {
        RunError::Wait { source, output: String::new() }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = killpg(self.pgid, Signal::SIGKILL);
            cleanup::remove_process_group(self.pgid);
            std::thread::spawn(move || child.wait());
        }
    }
}

/// pidfds (Linux 5.3+): a file descriptor that turns readable when a process exits.
mod pidfd {
    use std::io;
    use std::os::fd::{FromRawFd as _, OwnedFd};
    use std::sync::OnceLock;

    use nix::libc;
    use nix::unistd::Pid;
    use tokio::io::Interest;
    use tokio::io::unix::AsyncFd;

    /// Whether this kernel has `pidfd_open` (asked once, about zkrender itself).
    pub(super) fn supported() -> bool {
        static SUPPORTED: OnceLock<bool> = OnceLock::new();
        *SUPPORTED.get_or_init(|| open(nix::unistd::getpid()).is_ok())
    }

    /// `fd` in the runtime's reactor, for readiness to read (the process exited).
    pub(super) fn register(fd: OwnedFd) -> io::Result<AsyncFd<OwnedFd>> {
        // SAFETY: the `OwnedFd` moves into the `AsyncFd`, which owns it until dropped: the
        // descriptor stays open and the same for the whole registration.
        unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.map_err(io::Error::from)
    }

    /// A pidfd of `pid` (close-on-exec), non-blocking as the runtime's reactor needs.
    pub(super) fn open(pid: Pid) -> io::Result<OwnedFd> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), libc::O_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = i32::try_from(fd).map_err(io::Error::other)?;
        // SAFETY: the kernel just returned this descriptor, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}

/// Runs `job` on a blocking thread (where pidfds are missing).
async fn run_on_thread(job: Job) -> Result<Finished, RunError> {
    let stop = Arc::new(AtomicBool::new(false));
    let _stop_on_drop = StopOnDrop(Arc::clone(&stop));
    match tokio::task::spawn_blocking(move || run_until(&job, &stop)).await {
        Ok(result) => result,
        Err(joined) if joined.is_panic() => std::panic::resume_unwind(joined.into_panic()),
        Err(joined) => Err(RunError::Wait { source: io::Error::other(joined), output: String::new() }),
    }
}

/// Sets its flag when dropped: tells [`run_until`] that nobody waits for the job anymore.
struct StopOnDrop(Arc<AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Runs `job` until it exits, overruns its timeout, or `stop` is set (treated as a timeout).
fn run_until(job: &Job, stop: &AtomicBool) -> Result<Finished, RunError> {
    let (mut child, reader) = start(job)?;
    let pgid = child_pid(&child);
    cleanup::add_process_group(pgid);
    let output = OutputTail::start(reader, job.keep);

    let timed_out = wait_with_deadline(&child, Instant::now() + job.timeout, stop);
    // The job is still unreaped, so its pid is still its group's id and cannot have been
    // reused. Killing the group ends a timed-out job, and after a normal exit it ends
    // anything left running in the background, which would hold the output pipe open.
    // ESRCH (nothing left) is the normal case.
    if job.kill_leftovers || !matches!(timed_out, Ok(false)) {
        let _ = killpg(pgid, Signal::SIGKILL);
    }
    cleanup::remove_process_group(pgid);
    let status = child.wait();
    let output = output.finish(PIPE_GRACE);

    match (timed_out, status) {
        (Ok(true), _) => Ok(Finished { ending: Ending::TimedOut, output }),
        (Err(source), _) | (_, Err(source)) => Err(RunError::Wait { source, output }),
        (Ok(false), Ok(status)) => Ok(Finished { ending: Ending::Exited(status), output }),
    }
}

/// Starts `job` in a process group of its own, its output (as `capture` says) into the
/// returned pipe.
fn start(job: &Job) -> Result<(Child, io::PipeReader), RunError> {
    let argv = Argv(&job.argv).substituted(job.file.as_deref());
    let Some((program, args)) = argv.split_first() else {
        return Err(RunError::Empty);
    };
    let (reader, writer) = io::pipe().map_err(RunError::Start)?;
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        // Its own process group, so that a timeout kills whatever it started too.
        .process_group(0);
    match job.capture {
        Capture::Combined => {
            let stdout = writer.try_clone().map_err(RunError::Start)?;
            command.stdout(stdout).stderr(writer);
        }
        Capture::Stderr => {
            command.stdout(Stdio::null()).stderr(writer);
        }
    }
    let spawned = command.spawn();
    // Close our copies of the pipe's write end, or the reader would never see EOF.
    drop(command);
    Ok((spawned.map_err(RunError::Start)?, reader))
}

fn child_pid(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).expect("pids fit in pid_t"))
}

/// Waits until `child` exits, `deadline` passes or `stop` is set, *without reaping it*
/// (WNOWAIT), so its process group id stays reserved for the kill that follows. Returns
/// whether it gave up waiting.
fn wait_with_deadline(child: &Child, deadline: Instant, stop: &AtomicBool) -> io::Result<bool> {
    let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG | WaitPidFlag::WNOWAIT;
    let mut pause = Duration::from_millis(1);
    loop {
        match waitid(Id::Pid(child_pid(child)), flags) {
            Ok(WaitStatus::StillAlive) | Err(nix::errno::Errno::EINTR) => {}
            Ok(_) => return Ok(false),
            Err(e) => return Err(e.into()),
        }
        let now = Instant::now();
        if now >= deadline || stop.load(Ordering::SeqCst) {
            return Ok(true);
        }
        std::thread::sleep(pause.min(deadline - now));
        pause = (pause * 2).min(MAX_POLL);
    }
}

/// Collects the last `keep` bytes written to a pipe, on a helper thread so that a chatty
/// job never blocks on a full pipe.
struct OutputTail {
    tail: Arc<Mutex<Tail>>,
    keep: usize,
    done: mpsc::Receiver<()>,
}

#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    /// Whether earlier bytes were dropped.
    truncated: bool,
}

impl OutputTail {
    fn start(mut reader: io::PipeReader, keep: usize) -> OutputTail {
        let tail = Arc::new(Mutex::new(Tail::default()));
        let (done_tx, done) = mpsc::channel();
        let shared = Arc::clone(&tail);
        std::thread::spawn(move || {
            let mut chunk = [0u8; 8192];
            loop {
                match reader.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => shared.lock().unwrap_or_else(PoisonError::into_inner).push(&chunk[..n], keep),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = done_tx.send(());
        });
        OutputTail { tail, keep, done }
    }

    /// Waits up to `grace` for the pipe to close, then returns what was collected. A process
    /// that escaped the job's process group may hold the pipe open; the reader thread is
    /// then left to finish on its own.
    fn finish(self, grace: Duration) -> String {
        let _ = self.done.recv_timeout(grace);
        self.tail.lock().unwrap_or_else(PoisonError::into_inner).text(self.keep)
    }
}

impl Tail {
    /// Appends `bytes`, keeping at least the last `keep` of everything appended.
    fn push(&mut self, bytes: &[u8], keep: usize) {
        self.bytes.extend_from_slice(bytes);
        // Trimmed only once twice the limit is held: not on every read.
        if self.bytes.len() > 2 * keep {
            let excess = self.bytes.len() - keep;
            self.bytes.drain(..excess);
            self.truncated = true;
        }
    }

    /// The last `keep` bytes, lossily decoded and trimmed, `...` in front if cut.
    fn text(&self, keep: usize) -> String {
        let start = self.bytes.len().saturating_sub(keep);
        let text = String::from_utf8_lossy(&self.bytes[start..]);
        let text = text.trim();
        if start > 0 || self.truncated { format!("...{text}") } else { text.to_owned() }
    }
}

// ------------------------------------------------------------------ the supervised child

/// Starts the application of `zkrender exec` (in zkrender's own process group, so a
/// terminal's job control treats the two as one).
///
/// The child gets SIGTERM as its parent-death signal, so that it never runs on
/// unsupervised after zkrender is killed (SIGKILL, OOM killer). Linux sends that signal
/// when the *thread* that forked the child exits, not the process: call this from a
/// thread that lives as long as zkrender (a runtime worker or the `block_on` thread),
/// never from `spawn_blocking`, whose idle threads exit. The kernel also clears it when
/// the child executes a set-user-ID or file-capability program.
///
/// # Errors
/// An empty argv, or the program cannot be started; the message names the program.
pub fn spawn_supervised(argv: &[String]) -> io::Result<tokio::process::Child> {
    let (program, args) = argv.split_first().ok_or_else(|| io::Error::other("no command given"))?;
    let mut command = tokio::process::Command::new(program);
    command.args(args);
    let parent = nix::unistd::getpid();
    // SAFETY: the hook runs in the forked child before exec and only makes system calls
    // (prctl, getppid, kill) that are async-signal-safe and allocate nothing.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGTERM)?;
            // The parent may have died between fork and prctl, before the signal was armed:
            // the child has then been re-parented already, and ends itself the same way.
            if nix::unistd::getppid() != parent {
                nix::sys::signal::kill(nix::unistd::getpid(), Signal::SIGTERM)?;
            }
            Ok(())
        });
    }
    command.spawn().map_err(|e| io::Error::new(e.kind(), format!("starting {program}: {e}")))
}

/// Sends SIGTERM to `child` and waits up to `grace` for it to exit, then SIGKILLs it.
/// Returns whether SIGKILL was needed. Does nothing to a child already reaped.
pub async fn terminate(child: &mut tokio::process::Child, grace: Duration) -> bool {
    let Some(pid) = child.id() else { return false };
    let _ = nix::sys::signal::kill(Pid::from_raw(pid as i32), Signal::SIGTERM);
    if tokio::time::timeout(grace, child.wait()).await.is_ok() {
        return false;
    }
    let _ = child.kill().await;
    true
}

/// The exit code a supervisor passes on for `status`: the child's own, or 128 + the
/// signal that killed it, as a shell reports it.
pub fn exit_code(status: ExitStatus) -> i32 {
    status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

// ------------------------------------------------------------------ cleanup

/// The list a second SIGTERM cleans up: what an exit that cannot wait for the work in
/// progress must not leave behind.
///
/// Process-wide by necessity: the signal handler that exits has no other way to reach
/// the jobs and installs in flight on other threads. Everything else is passed as values.
pub mod cleanup {
    use std::collections::BTreeSet;
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::sync::{Mutex, MutexGuard, PoisonError};

    use nix::sys::signal::{Signal, killpg};
    use nix::unistd::Pid;

    struct Cleanup {
        /// Temporary files `sink` has created and not yet renamed or removed.
        temps: BTreeSet<PathBuf>,
        /// Process groups of running jobs, unregistered before each job is reaped (so an
        /// id here is never one the kernel could have reused).
        process_groups: BTreeSet<i32>,
    }

    static CLEANUP: Mutex<Cleanup> =
        Mutex::new(Cleanup { temps: BTreeSet::new(), process_groups: BTreeSet::new() });

    fn list() -> MutexGuard<'static, Cleanup> {
        // A panic while holding the lock leaves plain data behind; keep using it.
        CLEANUP.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a temporary file in flight.
    pub fn add_temp(path: &Path) {
        list().temps.insert(path.to_owned());
    }

    /// Forgets a temporary file (renamed into place or removed).
    pub fn remove_temp(path: &Path) {
        list().temps.remove(path);
    }

    pub(super) fn add_process_group(pgid: Pid) {
        list().process_groups.insert(pgid.as_raw());
    }

    pub(super) fn remove_process_group(pgid: Pid) {
        list().process_groups.remove(&pgid.as_raw());
    }

    /// For an exit that cannot wait for installs to finish: kills every running job (and
    /// what it started) and removes every temporary file. Destinations are untouched.
    pub fn abort_in_progress() {
        let list = list();
        for pgid in &list.process_groups {
            let _ = killpg(Pid::from_raw(*pgid), Signal::SIGKILL);
        }
        for path in &list.temps {
            let _ = fs::remove_file(path);
        }
    }

    #[cfg(test)]
    pub(super) fn has_process_group(pgid: Pid) -> bool {
        list().process_groups.contains(&pgid.as_raw())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|s| s.to_string()).collect()
    }

    fn job(args: &[&str], timeout: Duration) -> Job {
        Job {
            argv: strings(args),
            file: None,
            timeout,
            capture: Capture::Combined,
            keep: 4096,
            kill_leftovers: true,
        }
    }

    /// Whether `pid` is gone: no such process, or a zombie waiting for its new parent.
    fn gone(pid: i32) -> bool {
        if nix::sys::signal::kill(Pid::from_raw(pid), None).is_err() {
            return true;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
    }

    fn wait_gone(pid: i32) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !gone(pid) {
            assert!(Instant::now() < deadline, "process {pid} still running");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[test]
    fn placeholder_is_replaced_everywhere() {
        let path = Path::new("/d/.f.zkrender.x");
        assert_eq!(substitute("{file}", path), "/d/.f.zkrender.x");
        assert_eq!(substitute("--a={file},{file}", path), "--a=/d/.f.zkrender.x,/d/.f.zkrender.x");
        assert_eq!(substitute("-t", path), "-t");
    }

    #[test]
    fn placeholder_is_kept_without_a_file() {
        let argv = strings(&["cat", "{file}"]);
        assert_eq!(Argv(&argv).substituted(None), ["cat", "{file}"]);
        assert_eq!(Argv(&argv).substituted(Some(Path::new("/x"))), ["cat", "/x"]);
    }

    #[test]
    fn argv_display_quotes_arguments_that_would_be_ambiguous() {
        let argv = strings(&["sh", "-c", "kill -HUP 1", "", "a'b", "--x={file}"]);
        assert_eq!(Argv(&argv).to_string(), r#"sh -c "kill -HUP 1" "" "a'b" --x={file}"#);
    }

    #[test]
    fn exit_status_and_combined_output_in_order() {
        let done = run_blocking(&job(
            &["sh", "-c", "echo one; echo two >&2; echo three; exit 4"],
            Duration::from_secs(5),
        ))
        .unwrap();
        assert!(matches!(done.ending, Ending::Exited(s) if s.code() == Some(4)), "{:?}", done.ending);
        assert_eq!(done.output, "one\ntwo\nthree");
    }

    #[test]
    fn stderr_capture_leaves_stdout_out() {
        let j = Job {
            capture: Capture::Stderr,
            ..job(&["sh", "-c", "echo out; echo err >&2"], Duration::from_secs(5))
        };
        let done = run_blocking(&j).unwrap();
        assert!(matches!(done.ending, Ending::Exited(s) if s.success()));
        assert_eq!(done.output, "err");
    }

    #[test]
    fn file_placeholder_reaches_the_program() {
        let j = Job {
            file: Some("/some/staged file".into()),
            ..job(&["echo", "[{file}]"], Duration::from_secs(5))
        };
        assert_eq!(run_blocking(&j).unwrap().output, "[/some/staged file]");
    }

    #[test]
    fn output_tail_is_bounded() {
        let script = "i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done";
        let j = Job { keep: 100, ..job(&["sh", "-c", script], Duration::from_secs(5)) };
        let output = run_blocking(&j).unwrap().output;
        assert!(output.starts_with("..."), "{output}");
        assert!(output.ends_with("line 2999"), "{output}");
        assert!(output.len() <= 100 + 3, "{} bytes", output.len());
    }

    #[test]
    fn short_output_is_not_marked_cut() {
        let j = Job { keep: 3, ..job(&["printf", "abc"], Duration::from_secs(5)) };
        assert_eq!(run_blocking(&j).unwrap().output, "abc");
    }

    #[test]
    fn a_timeout_kills_the_whole_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        // The shell records its grandchild's pid, then waits for it.
        let script = format!("sleep 30 & echo $! > '{}'; wait", pid_file.display());
        let started = Instant::now();
        let done = run_blocking(&job(&["sh", "-c", &script], Duration::from_millis(300))).unwrap();
        assert!(matches!(done.ending, Ending::TimedOut), "{:?}", done.ending);
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        wait_gone(pid);
        assert!(!cleanup::has_process_group(Pid::from_raw(pid)));
    }

    #[test]
    fn leftovers_survive_only_when_asked() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 30 >/dev/null 2>&1 & echo $! > '{}'", pid_file.display());
        let j = Job { kill_leftovers: false, ..job(&["sh", "-c", &script], Duration::from_secs(5)) };
        run_blocking(&j).unwrap();
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        assert!(!gone(pid), "the background process was killed");
        let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);

        run_blocking(&job(&["sh", "-c", &script], Duration::from_secs(5))).unwrap();
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        wait_gone(pid);
    }

    #[test]
    fn empty_and_missing_programs_are_start_errors() {
        assert!(matches!(run_blocking(&job(&[], Duration::from_secs(1))), Err(RunError::Empty)));
        let err = run_blocking(&job(&["/nonexistent/zkr-prog"], Duration::from_secs(1))).unwrap_err();
        assert!(matches!(&err, RunError::Start(e) if e.kind() == io::ErrorKind::NotFound), "{err:?}");
    }

    #[tokio::test]
    async fn dropping_the_async_run_kills_the_group() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > '{}'; wait", pid_file.display());
        let running = run(job(&["sh", "-c", &script], Duration::from_secs(60)));
        assert!(tokio::time::timeout(Duration::from_millis(300), running).await.is_err());
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        tokio::task::spawn_blocking(move || wait_gone(pid)).await.unwrap();
    }

    #[tokio::test]
    async fn the_async_run_reports_status_output_and_timeouts_like_the_blocking_one() {
        let script = "echo one; echo two >&2; echo three; exit 4";
        let done = run(job(&["sh", "-c", script], Duration::from_secs(5))).await.unwrap();
        assert!(matches!(done.ending, Ending::Exited(s) if s.code() == Some(4)), "{:?}", done.ending);
        assert_eq!(done.output, "one\ntwo\nthree");
        let chatty = "i=0; while [ $i -lt 3000 ]; do echo line $i; i=$((i+1)); done";
        let output = run(Job { keep: 100, ..job(&["sh", "-c", chatty], Duration::from_secs(5)) })
            .await
            .unwrap()
            .output;
        assert!(output.starts_with("...") && output.ends_with("line 2999"), "{output}");

        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("pid");
        let script = format!("sleep 30 & echo $! > '{}'; wait", pid_file.display());
        let started = Instant::now();
        let done = run(job(&["sh", "-c", &script], Duration::from_millis(300))).await.unwrap();
        assert!(matches!(done.ending, Ending::TimedOut), "{:?}", done.ending);
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        let pid: i32 = std::fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
        tokio::task::spawn_blocking(move || wait_gone(pid)).await.unwrap();
        assert!(!cleanup::has_process_group(Pid::from_raw(pid)));
    }

    #[test]
    fn exit_codes_follow_the_shell_convention() {
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 128 + 9);
    }

    #[tokio::test]
    async fn terminate_escalates_to_sigkill() {
        let mut polite = spawn_supervised(&strings(&["sleep", "30"])).unwrap();
        assert!(!terminate(&mut polite, Duration::from_secs(5)).await);
        let mut stubborn =
            spawn_supervised(&strings(&["sh", "-c", "trap '' TERM; while :; do sleep 0.05; done"])).unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(terminate(&mut stubborn, Duration::from_millis(200)).await);
        assert!(stubborn.try_wait().unwrap().is_some());
    }
}
