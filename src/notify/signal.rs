//! Reload by signal: `kill(2)` to a configured pid, to the pid in a pid file, or to every
//! master process with a given name.
//!
//! The pid file is read at every reload, so an application restarted under a new pid is
//! still found. A process name is matched against `/proc/PID/comm`; of the matches only
//! those whose parent has a different name are signalled: nginx's master, not the workers
//! it forked, which would otherwise reload (or die) on their own.
//!
//! Everything here is synchronous and quick (a few small `/proc` reads and a syscall),
//! so it runs directly on the async worker.

use std::fs;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tracing::debug;

use super::NotifyError;
use crate::config::{COMM_NAME_MAX, SignalTarget};
use crate::exec::ChildHandle;

/// How much of an invalid pid file's contents goes into the error message.
const PID_FILE_EXCERPT: usize = 64;

/// Sends `signal` to `target`; [`SignalTarget::Child`] is the child `child` names.
pub(super) fn send(signal: Signal, target: &SignalTarget, child: &ChildHandle) -> Result<(), NotifyError> {
    match target {
        SignalTarget::Pid(pid) => kill_one(signal, *pid, target),
        SignalTarget::PidFile(path) => kill_one(signal, read_pid_file(path)?, target),
        SignalTarget::Process(name) => kill_masters(signal, name, target),
        SignalTarget::Child => kill_one(signal, child.pid().ok_or(NotifyError::NoChild)?, target),
    }
}

/// Why the application behind `target` looks not started yet, or `None`: only a pid file
/// can say, by not existing yet or being empty (the application writes it when it starts).
/// A pid file naming a dead pid is not "not started": the application ran and is gone, an
/// error the reload reports. Nothing is signalled.
pub(super) fn not_started(target: &SignalTarget) -> Option<String> {
    let SignalTarget::PidFile(path) = target else { return None };
    match read_pid_file(path) {
        Err(NotifyError::PidFileRead { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            Some(format!("pid file {} does not exist", path.display()))
        }
        Err(NotifyError::PidFileInvalid { contents, .. }) if contents.is_empty() => {
            Some(format!("pid file {} is empty", path.display()))
        }
        Ok(_) | Err(_) => None,
    }
}

/// Signals one pid; `target` is where the pid came from, for messages.
fn kill_one(signal: Signal, pid: i32, target: &SignalTarget) -> Result<(), NotifyError> {
    // kill(0) and kill(-n) signal whole process groups, -1 every process we may signal.
    if pid <= 0 {
        return Err(NotifyError::InvalidPid { pid });
    }
    match kill(Pid::from_raw(pid), signal) {
        Ok(()) => Ok(()),
        Err(Errno::ESRCH) => Err(NotifyError::NoSuchPid { pid, target: target.clone() }),
        Err(source) => Err(NotifyError::Kill { signal, pid, target: target.clone(), source }),
    }
}

/// Reads a pid file: one positive integer, surrounding whitespace allowed.
fn read_pid_file(path: &Path) -> Result<i32, NotifyError> {
    let bytes =
        fs::read(path).map_err(|source| NotifyError::PidFileRead { path: path.to_owned(), source })?;
    let text = String::from_utf8_lossy(&bytes);
    let text = text.trim();
    match text.parse::<i32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(NotifyError::PidFileInvalid {
            path: path.to_owned(),
            contents: text.chars().take(PID_FILE_EXCERPT).collect(),
        }),
    }
}

/// Signals every master process named `name`.
///
/// A process that exits between the scan and the signal is skipped; if that leaves none
/// signalled, it is [`NotifyError::NoProcess`]. Any other failure is reported after the
/// remaining masters have been signalled.
fn kill_masters(signal: Signal, name: &str, target: &SignalTarget) -> Result<(), NotifyError> {
    let pids = find_masters(Path::new("/proc"), name)
        .map_err(|source| NotifyError::ProcScan { name: name.to_owned(), source })?;
    let mut signalled = 0_usize;
    let mut failure = None;
    for pid in pids {
        match kill(Pid::from_raw(pid), signal) {
            Ok(()) => signalled += 1,
            Err(Errno::ESRCH) => {} // exited since the scan
            Err(source) => {
                failure.get_or_insert(NotifyError::Kill { signal, pid, target: target.clone(), source });
            }
        }
    }
    if let Some(err) = failure {
        return Err(err);
    }
    if signalled == 0 {
        return Err(NotifyError::NoProcess { name: name.to_owned() });
    }
    debug!(process = name, signalled, "signal sent");
    Ok(())
}

/// Pids under `proc` (normally `/proc`) whose `comm` is `name` and whose parent's is
/// not, in ascending order. `name` is cut to the 15 bytes the kernel keeps.
///
/// Processes come and go while the directory is read: one whose files cannot be read
/// has exited and is skipped. Only failing to list `proc` itself is an error.
fn find_masters(proc: &Path, name: &str) -> std::io::Result<Vec<i32>> {
    let wanted = &name.as_bytes()[..name.len().min(COMM_NAME_MAX)];
    let mut pids = Vec::new();
    for entry in fs::read_dir(proc)? {
        let Some(pid) = entry?.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue; // not a process directory: /proc/self, /proc/sys, ...
        };
        if read_comm(proc, pid).as_deref() != Some(wanted) {
            continue;
        }
        let Some(ppid) = read_ppid(proc, pid) else { continue };
        // ppid 0 (no parent in this pid namespace) has no /proc entry: a master.
        if read_comm(proc, ppid).as_deref() != Some(wanted) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    Ok(pids)
}

/// The process name from `PROC/PID/comm`, without the trailing newline.
fn read_comm(proc: &Path, pid: i32) -> Option<Vec<u8>> {
    let mut comm = fs::read(pid_dir(proc, pid).join("comm")).ok()?;
    if comm.last() == Some(&b'\n') {
        comm.pop();
    }
    Some(comm)
}

/// The parent pid from `PROC/PID/stat`.
fn read_ppid(proc: &Path, pid: i32) -> Option<i32> {
    let stat = fs::read(pid_dir(proc, pid).join("stat")).ok()?;
    parse_ppid(&stat)
}

/// `stat` is `pid (comm) state ppid ...`. comm may itself hold spaces and `)`, so the
/// fields are counted from the last `)`.
fn parse_ppid(stat: &[u8]) -> Option<i32> {
    let close = stat.iter().rposition(|&b| b == b')')?;
    let rest = std::str::from_utf8(&stat[close + 1..]).ok()?;
    rest.split_ascii_whitespace().nth(1)?.parse().ok()
}

fn pid_dir(proc: &Path, pid: i32) -> PathBuf {
    proc.join(pid.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ReloadAction, ReloadSpec};
    use crate::notify::{attempt, reload};
    use std::os::unix::process::{CommandExt, ExitStatusExt};
    use std::process::{Child, Command};
    use std::time::{Duration, Instant};

    /// A process tree in its own process group, killed as a whole when dropped.
    struct Group(Child);

    impl Group {
        fn pid(&self) -> i32 {
            i32::try_from(self.0.id()).unwrap()
        }
    }

    impl Drop for Group {
        fn drop(&mut self) {
            let _ = nix::sys::signal::killpg(Pid::from_raw(self.pid()), Signal::SIGKILL);
            let _ = self.0.wait();
        }
    }

    /// Runs `program -c script` (a bash) in its own process group, with `$D` set to `dir`.
    fn spawn_bash(program: &Path, dir: &Path, script: &str) -> Group {
        let child =
            Command::new(program).arg("-c").arg(script).env("D", dir).process_group(0).spawn().unwrap();
        Group(child)
    }

    /// Waits for `path` to exist: the child writes it once its trap is installed.
    fn wait_for(path: &Path) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !path.exists() {
            assert!(Instant::now() < deadline, "{} never appeared", path.display());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Polls until `path` has `n` lines; fails with the actual count at the deadline.
    fn wait_for_lines(path: &Path, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let lines = fs::read_to_string(path).map(|s| s.lines().count()).unwrap_or(0);
            if lines == n {
                return;
            }
            assert!(Instant::now() < deadline, "{} has {lines} lines, expected {n}", path.display());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn lines(path: &Path) -> usize {
        fs::read_to_string(path).map(|s| s.lines().count()).unwrap_or(0)
    }

    /// Counts SIGHUPs as lines in `$D/hups`; `$D/ready` once the trap is set.
    const COUNTER: &str = r#"trap 'echo x >> "$D/hups"' HUP; touch "$D/ready"; while :; do sleep 0.05; done"#;

    fn hup(target: SignalTarget) -> ReloadSpec {
        ReloadSpec {
            splay: std::time::Duration::ZERO,
            action: ReloadAction::Signal { signal: Signal::SIGHUP, target },
            retries: 0,
            timeout: Duration::from_secs(1),
        }
    }

    fn counter(dir: &Path) -> Group {
        let child = spawn_bash(Path::new("bash"), dir, COUNTER);
        wait_for(&dir.join("ready"));
        child
    }

    #[tokio::test]
    async fn signals_a_pid() {
        let dir = tempfile::tempdir().unwrap();
        let child = counter(dir.path());
        reload(&hup(SignalTarget::Pid(child.pid())), &crate::exec::ChildHandle::none()).await.unwrap();
        wait_for_lines(&dir.path().join("hups"), 1);
        reload(&hup(SignalTarget::Pid(child.pid())), &crate::exec::ChildHandle::none()).await.unwrap();
        wait_for_lines(&dir.path().join("hups"), 2);
    }

    #[tokio::test]
    async fn reads_the_pid_file_at_each_reload() {
        let dir = tempfile::tempdir().unwrap();
        let first = tempfile::tempdir().unwrap();
        let second = tempfile::tempdir().unwrap();
        let (a, b) = (counter(first.path()), counter(second.path()));
        let pid_file = dir.path().join("app.pid");
        let spec = hup(SignalTarget::PidFile(pid_file.clone()));

        fs::write(&pid_file, format!("{}\n", a.pid())).unwrap();
        reload(&spec, &crate::exec::ChildHandle::none()).await.unwrap();
        wait_for_lines(&first.path().join("hups"), 1);

        fs::write(&pid_file, format!("  {}  ", b.pid())).unwrap();
        reload(&spec, &crate::exec::ChildHandle::none()).await.unwrap();
        wait_for_lines(&second.path().join("hups"), 1);
        assert_eq!(lines(&first.path().join("hups")), 1);
    }

    #[tokio::test]
    async fn pid_file_problems_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("app.pid");
        let spec = hup(SignalTarget::PidFile(pid_file.clone()));

        let err = reload(&spec, &crate::exec::ChildHandle::none()).await.unwrap_err();
        assert!(matches!(err, NotifyError::PidFileRead { .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("reading pid file {}", pid_file.display()));

        for bad in ["abc\n", "", "0", "-5", "12 13"] {
            fs::write(&pid_file, bad).unwrap();
            let err = reload(&spec, &crate::exec::ChildHandle::none()).await.unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("pid file {} does not hold a pid: {:?}", pid_file.display(), bad.trim())
            );
            assert_eq!(err.kind(), "signal");
        }
    }

    #[tokio::test]
    async fn a_dead_pid_is_an_error() {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = i32::try_from(child.id()).unwrap();
        child.wait().unwrap(); // reaped: the pid is free
        let action = ReloadAction::Signal { signal: Signal::SIGHUP, target: SignalTarget::Pid(pid) };
        let err =
            attempt(&action, Duration::from_secs(1), &crate::exec::ChildHandle::none()).await.unwrap_err();
        assert!(matches!(err, NotifyError::NoSuchPid { .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("no process with pid {pid}"));
    }

    #[tokio::test]
    async fn refuses_pids_that_mean_process_groups() {
        for pid in [0, -1] {
            let err =
                reload(&hup(SignalTarget::Pid(pid)), &crate::exec::ChildHandle::none()).await.unwrap_err();
            assert!(matches!(err, NotifyError::InvalidPid { .. }), "{err:?}");
        }
    }

    /// A copy of `program` under a fresh name that no other process has (comm <= 15 bytes).
    fn unique_copy(dir: &Path, program: &str) -> PathBuf {
        let name = format!("zkr-n-{:08x}", rand::random::<u32>());
        let copy = dir.join(name);
        let found = Command::new("sh").arg("-c").arg(format!("command -v {program}")).output().unwrap();
        let original = String::from_utf8(found.stdout).unwrap();
        fs::copy(original.trim(), &copy).unwrap();
        copy
    }

    fn file_name(path: &Path) -> String {
        path.file_name().unwrap().to_str().unwrap().to_owned()
    }

    #[tokio::test]
    async fn signals_a_process_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let sleep = unique_copy(dir.path(), "sleep");
        let mut child = Command::new(&sleep).arg("30").spawn().unwrap();
        // The copy's comm is set at exec; wait until the kernel shows it.
        let name = file_name(&sleep);
        let deadline = Instant::now() + Duration::from_secs(5);
        while find_masters(Path::new("/proc"), &name).unwrap().is_empty() {
            assert!(Instant::now() < deadline, "{name} never showed up in /proc");
            std::thread::sleep(Duration::from_millis(10));
        }

        reload(&hup(SignalTarget::Process(name)), &crate::exec::ChildHandle::none()).await.unwrap();
        // sleep does not handle SIGHUP, so it dies of it.
        let status = child.wait().unwrap();
        assert_eq!(status.signal(), Some(Signal::SIGHUP as i32), "{status:?}");
    }

    #[tokio::test]
    async fn signals_the_master_but_not_its_workers() {
        let dir = tempfile::tempdir().unwrap();
        let bash = unique_copy(dir.path(), "bash");
        // The subshell is a fork of the master: same comm, and the master is its parent.
        let script = r#"
            ( trap 'echo x >> "$D/worker"' HUP; touch "$D/worker-ready"; while :; do sleep 0.05; done ) &
            trap 'echo x >> "$D/master"' HUP; touch "$D/master-ready"; while :; do sleep 0.05; done
        "#;
        let master = spawn_bash(&bash, dir.path(), script);
        wait_for(&dir.path().join("worker-ready"));
        wait_for(&dir.path().join("master-ready"));
        let name = file_name(&bash);
        let masters = find_masters(Path::new("/proc"), &name).unwrap();
        assert_eq!(masters, vec![master.pid()]);

        reload(&hup(SignalTarget::Process(name)), &crate::exec::ChildHandle::none()).await.unwrap();
        wait_for_lines(&dir.path().join("master"), 1);
        std::thread::sleep(Duration::from_millis(200));
        assert_eq!(lines(&dir.path().join("worker")), 0, "a worker was signalled");
    }

    #[tokio::test]
    async fn no_process_with_that_name_is_an_error() {
        let name = format!("zkr-n-{:08x}", rand::random::<u32>());
        let err = reload(&hup(SignalTarget::Process(name.clone())), &crate::exec::ChildHandle::none())
            .await
            .unwrap_err();
        assert!(matches!(err, NotifyError::NoProcess { .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("no process named {name}"));
    }

    #[test]
    fn only_a_missing_or_empty_pid_file_means_not_started() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("app.pid");
        let target = SignalTarget::PidFile(pid_file.clone());
        let why = not_started(&target).unwrap();
        assert_eq!(why, format!("pid file {} does not exist", pid_file.display()));

        fs::write(&pid_file, "\n").unwrap();
        assert_eq!(not_started(&target).unwrap(), format!("pid file {} is empty", pid_file.display()));

        let mut gone = Command::new("true").spawn().unwrap();
        let pid = gone.id();
        gone.wait().unwrap(); // reaped: the pid is free
        fs::write(&pid_file, pid.to_string()).unwrap();
        assert_eq!(not_started(&target), None, "a dead pid: the application ran and is gone");
        fs::write(&pid_file, "garbage").unwrap();
        assert_eq!(not_started(&target), None, "a broken pid file is a real error, reported by the reload");
        let name = format!("zkr-n-{:08x}", rand::random::<u32>());
        assert_eq!(not_started(&SignalTarget::Process(name)), None, "only pid files are forgiven");
        assert_eq!(not_started(&SignalTarget::Pid(i32::MAX)), None);
    }

    #[test]
    fn ppid_is_read_after_the_last_parenthesis() {
        assert_eq!(parse_ppid(b"42 (nginx) S 1 42 42 0 -1"), Some(1));
        assert_eq!(parse_ppid(b"43 (a) b (c) R 42 43 43 0 -1"), Some(42));
        assert_eq!(parse_ppid(b"garbage"), None);
    }

    #[test]
    fn masters_are_matches_whose_parent_has_another_name() {
        let proc = tempfile::tempdir().unwrap();
        let add = |pid: i32, ppid: i32, comm: &str| {
            let dir = proc.path().join(pid.to_string());
            fs::create_dir(&dir).unwrap();
            fs::write(dir.join("comm"), format!("{comm}\n")).unwrap();
            fs::write(dir.join("stat"), format!("{pid} ({comm}) S {ppid} 0 0")).unwrap();
        };
        add(1, 0, "init");
        add(10, 1, "nginx"); // master
        add(11, 10, "nginx"); // worker
        add(12, 10, "nginx"); // worker
        add(20, 1, "nginx"); // a second, unrelated master
        add(30, 1, "averylongname-1"); // comm cut to 15 bytes by the kernel
        fs::create_dir(proc.path().join("self")).unwrap();
        assert_eq!(find_masters(proc.path(), "nginx").unwrap(), vec![10, 20]);
        assert_eq!(find_masters(proc.path(), "averylongname-12345").unwrap(), vec![30]);
        assert!(find_masters(proc.path(), "apache").unwrap().is_empty());
    }
}
