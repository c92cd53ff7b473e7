//! Harness shared by zkrender's integration tests (`mod common;` in each test file).
//!
//! * [`Zk`]: a real, throwaway ZooKeeper started through `scripts/zk` (standalone
//!   or an ensemble, with fault injection), or the shared server named by
//!   `ZK_TEST_HOSTS` ([`Zk::shared`]).
//! * Async client helpers on `zookeeper_client` ([`connect`], [`set`], [`get`],
//!   [`delete`], [`delete_recursive`], [`create_chroot`], ...). Use them from
//!   `#[tokio::test(flavor = "multi_thread")]` tests.
//! * [`Agent`]: the built `zkrender` binary (or a stand-in program) running as a
//!   child process, its stderr in a log file.
//! * [`Env`] and [`ConfigBuilder`] (in `env.rs`): the fixture most tests start from, a
//!   chroot, client and temporary directory of the test's own and a config for them.
//! * [`disk`]: a destination directory made unwritable, a file system filled (root only).
//! * [`http`]: the agent's HTTP endpoint (`/readyz`, `/status`, `/metrics`) from a test.
//! * Polling and file helpers: [`wait_for_file`], [`wait_for_bytes`], [`wait_until`],
//!   [`write_config`], [`temp_files`], [`show`], [`free_port`].
//!
//! The process-side helpers ([`Zk`], [`Agent`], the `wait_*` functions) block.
//! That is fine inside a multi-thread tokio test: its body runs on the test's
//! own thread, and the ZooKeeper client's tasks keep running on the runtime's
//! worker threads meanwhile.
//!
//! Tests on a shared server isolate themselves under a chroot of their own:
//!
//! ```ignore
//! let zk = Zk::shared();
//! let chroot = unique_chroot("render-basic");
//! let hosts = create_chroot(zk.hosts(), &chroot).await; // "127.0.0.1:2181/it/render-basic-1a2b3c4d"
//! let client = connect(&hosts).await;
//! set(&client, "/app/db/url", b"postgres://db").await;
//! ```
//!
//! Members of a [`Zk`] are numbered from 1, in the order of the connect string.

#![allow(dead_code)] // each test binary uses its own part of the harness

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;
use tempfile::TempDir;
use zookeeper_client::{Acls, Client, CreateMode, CreateOptions, Error as ZkError};

pub mod disk;
mod env;
pub mod http;
pub use env::*;

/// Environment variable naming an already running ZooKeeper (a connect string)
/// that [`Zk::shared`] uses instead of starting one. `scripts/test` sets it.
pub const SHARED_HOSTS_ENV: &str = "ZK_TEST_HOSTS";

/// How long the client helpers wait for a session before panicking.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the client helpers retry an operation that failed with
/// `ConnectionLoss` (the client is moving to another server).
const RETRY_FOR: Duration = Duration::from_secs(20);

/// Persistent znodes anyone may do anything with: what the helpers create.
const OPEN_PERSISTENT: CreateOptions<'static> = CreateMode::Persistent.with_acls(Acls::anyone_all());

/// The project's ZooKeeper launcher, `scripts/zk`.
pub fn zk_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts").join("zk")
}

/// Runs `scripts/zk ARGS...` with `ZK_STATE_DIR=state` and `env` to completion; panics if
/// it cannot start.
fn run_zk_script(state: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(zk_script())
        .args(args)
        .env("ZK_STATE_DIR", state)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", zk_script().display()))
}

// ------------------------------------------------------------------ ZooKeeper

/// A real ZooKeeper for a test.
///
/// [`Zk::standalone`], [`Zk::ensemble`] and [`Zk::with_observers`] start their own JVMs on free
/// loopback ports, with their state in a temporary directory this value owns;
/// dropping it runs `scripts/zk down` (the JVMs are gone when `drop` returns).
/// As a safety net, `scripts/zk up --owner` also takes them down within about
/// a second should the test process die without dropping it.
///
/// [`Zk::shared`] may instead return the external server of `ZK_TEST_HOSTS`,
/// which is never stopped and offers no fault injection.
///
/// Server settings (see `scripts/zk help`): tickTime 200 ms, sessions of
/// 400 ms to 30 s, `forceSync=no`, the four-letter words ruok, srvr, stat,
/// mntr, cons, wchs, wchc, wchp, dump, conf, envi and isro.
pub struct Zk {
    hosts: String,
    members: usize,
    /// How many of the members are observers: the last ones (0 for an external server).
    observers: usize,
    /// `ZK_STATE_DIR` of the JVMs this value started; `None` for an external server.
    state: Option<TempDir>,
}

impl Zk {
    /// Starts a standalone server (member 1).
    pub fn standalone() -> Zk {
        Zk::up(1, 0, &[])
    }

    /// Starts a standalone server with extra environment for `scripts/zk up` (e.g.
    /// `ZK_EXTRA_CFG` lines for zoo.cfg, `ZK_JAVA_OPTS`).
    pub fn standalone_with_env(env: &[(&str, &str)]) -> Zk {
        Zk::up(1, 0, env)
    }

    /// Starts an ensemble of `n` members and waits until all of them serve
    /// and exactly one leads.
    pub fn ensemble(n: usize) -> Zk {
        assert!((1..=9).contains(&n), "an ensemble has 1 to 9 members, not {n}");
        Zk::up(n, 0, &[])
    }

    /// Starts an ensemble of `voters` voting members plus `observers` observers
    /// (non-voting members that serve reads and watches; `scripts/zk up --observers`),
    /// and waits until all of them serve and exactly one voter leads. Members
    /// `1..=voters` vote, `voters+1..=voters+observers` observe; [`Zk::hosts`] lists them
    /// all, [`Zk::observer_hosts`] only the observers.
    pub fn with_observers(voters: usize, observers: usize) -> Zk {
        assert!((1..=9).contains(&voters), "an ensemble has 1 to 9 voters, not {voters}");
        assert!((1..=9).contains(&observers), "1 to 9 observers, not {observers}");
        Zk::up(voters, observers, &[])
    }

    /// The server of `ZK_TEST_HOSTS` when that is set (not stopped on drop),
    /// else a new standalone server for this caller. Isolate a test on it
    /// with [`unique_chroot`] and [`create_chroot`].
    pub fn shared() -> Zk {
        match std::env::var(SHARED_HOSTS_ENV) {
            Ok(hosts) if !hosts.trim().is_empty() => Zk::external(hosts.trim()),
            _ => Zk::standalone(),
        }
    }

    /// An already running server this harness neither started nor stops.
    pub fn external(hosts: &str) -> Zk {
        let members = hosts.split('/').next().unwrap_or_default().split(',').count();
        Zk { hosts: hosts.to_string(), members, observers: 0, state: None }
    }

    fn up(n: usize, observers: usize, env: &[(&str, &str)]) -> Zk {
        let state = tempfile::Builder::new()
            .prefix("zkrender-zk-")
            .tempdir()
            .expect("cannot create a temporary ZK_STATE_DIR");
        let started = Instant::now();
        let owner = std::process::id().to_string();
        let (voters, observing) = (n.to_string(), observers.to_string());
        let mut args = vec!["up", "--port", "auto", "--ensemble", &voters, "--owner", &owner];
        if observers > 0 {
            args.extend(["--observers", &observing]);
        }
        let out = run_zk_script(state.path(), &args, env);
        if !out.status.success() {
            panic!(
                "`scripts/zk up --ensemble {n} --observers {observers}` failed ({}) after {:?}; is \
                 ZooKeeper installed (scripts/zk install)?\n{}",
                out.status,
                started.elapsed(),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let hosts = stdout.lines().last().unwrap_or_default().trim().to_string();
        assert!(hosts.contains(':'), "scripts/zk up printed no connect string: {stdout:?}");
        Zk { hosts, members: n + observers, observers, state: Some(state) }
    }

    /// The connect string, e.g. `127.0.0.1:21810,127.0.0.1:21811,127.0.0.1:21812`.
    pub fn hosts(&self) -> &str {
        &self.hosts
    }

    /// The number of members (1 for a standalone server), observers included.
    pub fn members(&self) -> usize {
        self.members
    }

    /// The number of observers (the last members; 0 without them).
    pub fn observers(&self) -> usize {
        self.observers
    }

    /// The voting members' numbers (`1..=voters`).
    pub fn voter_members(&self) -> Vec<usize> {
        (1..=self.members - self.observers).collect()
    }

    /// The observers' member numbers (after the voters).
    pub fn observer_members(&self) -> Vec<usize> {
        (self.members - self.observers + 1..=self.members).collect()
    }

    /// The connect string of the given members only, e.g. for an agent that must
    /// reach nothing but the observers.
    pub fn hosts_of(&self, members: &[usize]) -> String {
        members.iter().map(|&i| self.address(i)).collect::<Vec<_>>().join(",")
    }

    /// The connect string of the observers only.
    pub fn observer_hosts(&self) -> String {
        self.hosts_of(&self.observer_members())
    }

    /// True when this value started (and will stop) the servers itself.
    pub fn is_managed(&self) -> bool {
        self.state.is_some()
    }

    /// `ZK_STATE_DIR` of the servers this value started (their logs are in
    /// `zk<i>/zk.log` there until drop).
    pub fn state_dir(&self) -> Option<&Path> {
        self.state.as_ref().map(TempDir::path)
    }

    /// Address (`host:port`) of member `i` (1-based), from the connect string.
    pub fn address(&self, i: usize) -> String {
        let servers: Vec<&str> = self.hosts.split('/').next().unwrap_or_default().split(',').collect();
        assert!(
            (1..=servers.len()).contains(&i),
            "no member {i}: this ZooKeeper has members 1..={}",
            servers.len()
        );
        let server = servers[i - 1].trim();
        if server.contains(':') { server.to_string() } else { format!("{server}:2181") }
    }

    /// Client port of member `i` (1-based).
    pub fn port(&self, i: usize) -> u16 {
        let address = self.address(i);
        let port = address.rsplit(':').next().unwrap_or_default();
        port.parse().unwrap_or_else(|_| panic!("bad port in {address:?} (hosts {})", self.hosts))
    }

    /// Runs `scripts/zk ctl ARGS...` on the servers this value started and
    /// returns its stdout; panics with its stderr when it fails.
    pub fn ctl(&self, args: &[&str]) -> String {
        let state = self.state.as_ref().unwrap_or_else(|| {
            panic!(
                "`scripts/zk ctl {}` needs a ZooKeeper the test started, not {}",
                args.join(" "),
                self.hosts
            )
        });
        let out = run_zk_script(state.path(), &[&["ctl"], args].concat(), &[]);
        if !out.status.success() {
            panic!(
                "`scripts/zk ctl {}` failed ({}):\n{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// SIGKILLs member `i` and waits until its JVM is gone.
    pub fn kill(&self, i: usize) {
        self.ctl(&["kill", &i.to_string()]);
    }

    /// SIGSTOPs member `i`: its sockets stay open but it answers nothing, as
    /// in a long GC pause or a network partition.
    pub fn pause(&self, i: usize) {
        self.ctl(&["stop", &i.to_string()]);
    }

    /// SIGCONTs a paused member `i` without waiting for it to serve again
    /// ([`Zk::start`] waits).
    pub fn resume(&self, i: usize) {
        self.ctl(&["cont", &i.to_string()]);
    }

    /// Resumes member `i` if paused, or relaunches it (same config and data)
    /// if dead, and waits until it serves and the ensemble has one leader.
    pub fn start(&self, i: usize) {
        self.ctl(&["start", &i.to_string()]);
    }

    /// SIGTERMs member `i`, relaunches it and waits until it serves.
    pub fn restart(&self, i: usize) {
        self.ctl(&["restart", &i.to_string()]);
    }

    /// The member that leads (1 for a standalone server), waiting (up to 30 s)
    /// until exactly one running member claims to.
    pub fn leader(&self) -> usize {
        if self.is_managed() {
            let out = self.ctl(&["leader"]);
            return out.trim().parse().unwrap_or_else(|_| panic!("`scripts/zk ctl leader` printed {out:?}"));
        }
        let mut modes = Vec::new();
        for _ in 0..300 {
            modes = (1..=self.members).map(|i| self.mode(i)).collect();
            if let Some(i) = modes.iter().position(|m| matches!(m.as_deref(), Some("leader" | "standalone")))
            {
                return i + 1;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("no member of {} leads: modes {modes:?}", self.hosts)
    }

    /// Pid of member `i`'s JVM, or `None` when it is dead.
    pub fn pid(&self, i: usize) -> Option<u32> {
        let state = self.state.as_ref().expect("pid() needs a ZooKeeper the test started");
        let path = state.path().join(format!("zk{i}")).join("pid");
        let pid: u32 = fs::read_to_string(path).ok()?.trim().parse().ok()?;
        // Only if that pid is still this member's JVM (its last argument is the config).
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let config = state.path().join(format!("zk{i}")).join("zoo.cfg");
        let last = cmdline.split(|&b| b == 0).rfind(|a| !a.is_empty())?;
        (last == config.as_os_str().as_encoded_bytes()).then_some(pid)
    }

    /// The pids of the member JVMs that are alive.
    pub fn pids(&self) -> Vec<u32> {
        (1..=self.members).filter_map(|i| self.pid(i)).collect()
    }

    /// `scripts/zk ctl status`: one line per member with its number, client
    /// port, pid, running|paused|dead and mode.
    pub fn status(&self) -> String {
        self.ctl(&["status"])
    }

    /// Sends a four-letter word (`ruok`, `srvr`, `mntr`, `cons`, `wchc`, ...) to
    /// member `i` and returns the reply; panics if it does not answer in 5 s.
    pub fn four_letter(&self, i: usize, word: &str) -> String {
        self.try_four_letter(i, word, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("member {i} ({}) did not answer {word:?}: {e}", self.address(i)))
    }

    /// Like [`Zk::four_letter`], with a timeout and the error returned.
    pub fn try_four_letter(&self, i: usize, word: &str, timeout: Duration) -> std::io::Result<String> {
        let address = self.address(i);
        let target = address
            .to_socket_addrs()?
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{address} resolves to nothing")))?;
        let mut stream = TcpStream::connect_timeout(&target, timeout)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.write_all(word.as_bytes())?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply)?;
        let reply = String::from_utf8_lossy(&reply).into_owned();
        if reply.contains("not in the whitelist") {
            return Err(std::io::Error::other(reply));
        }
        Ok(reply)
    }

    /// Member `i`'s mode from `srvr` (`standalone`, `leader`, `follower`,
    /// `observer`), or `None` when it does not serve (dead, paused, starting).
    pub fn mode(&self, i: usize) -> Option<String> {
        let reply = self.try_four_letter(i, "srvr", Duration::from_secs(1)).ok()?;
        reply.lines().find_map(|l| l.strip_prefix("Mode: ")).map(|m| m.trim().to_string())
    }

    /// The member a session is connected to, found in each member's `cons`
    /// output (its `sid=0x...` field); `None` when no member lists it (the
    /// session is between servers, or closed). `session_id_hex` is the id in
    /// hex with or without `0x`, as [`session_hex`] prints it for a client
    /// (ZooKeeper logs it the same way). Members that do not answer within 2 s
    /// (dead or paused) are skipped.
    pub fn member_with_session(&self, session_id_hex: &str) -> Option<usize> {
        let digits = session_id_hex.trim().trim_start_matches("0x").trim_start_matches("0X");
        let wanted = u64::from_str_radix(digits, 16)
            .unwrap_or_else(|_| panic!("{session_id_hex:?} is not a session id in hex"));
        self.find_connection(|line| {
            line.split(['(', ',', ')'])
                .filter_map(|field| field.trim().strip_prefix("sid=0x"))
                .any(|sid| u64::from_str_radix(sid, 16) == Ok(wanted))
        })
    }

    /// The member holding the connection that comes from local TCP port
    /// `port` on the client side (a `cons` line starts with
    /// ` /127.0.0.1:PORT[`). Useful when a test knows the agent's socket.
    pub fn member_with_local_port(&self, port: u16) -> Option<usize> {
        self.find_connection(|line| {
            let peer = line.trim_start().trim_start_matches('/');
            let peer = peer.split('[').next().unwrap_or_default();
            peer.rsplit(':').next().and_then(|p| p.parse::<u16>().ok()) == Some(port)
        })
    }

    fn find_connection(&self, matches: impl Fn(&str) -> bool) -> Option<usize> {
        (1..=self.members).find(|&i| {
            self.try_four_letter(i, "cons", Duration::from_secs(2))
                .is_ok_and(|reply| reply.lines().any(&matches))
        })
    }
}

impl Drop for Zk {
    fn drop(&mut self) {
        let Some(state) = &self.state else { return };
        let result = Command::new(zk_script())
            .arg("down")
            .env("ZK_STATE_DIR", state.path())
            .stdin(Stdio::null())
            .output();
        match result {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: `scripts/zk down` for {} failed ({}): {}",
                state.path().display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("warning: cannot run `scripts/zk down`: {e}"),
        }
    }
}

/// A chroot of its own for a test on a shared server: `/it/<name>-<8 hex digits>`.
pub fn unique_chroot(name: &str) -> String {
    let name: String = name
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '-' })
        .collect();
    format!("/it/{name}-{:08x}", rand::random::<u32>())
}

/// The id of a client's session in hex with `0x`, as `cons` and ZooKeeper's
/// log print it (see [`Zk::member_with_session`]).
pub fn session_hex(client: &Client) -> String {
    format!("{:#x}", client.session_id().0)
}

// ------------------------------------------------------------------ client helpers

/// Connects to `hosts` (a connect string, optionally with a `/chroot`
/// suffix) with a 10 s session; panics if no session is established in 30 s.
pub async fn connect(hosts: &str) -> Client {
    connect_with_session_timeout(hosts, Duration::from_secs(10)).await
}

/// [`connect`] asking for a session timeout (the test servers accept 400 ms
/// to 30 s).
pub async fn connect_with_session_timeout(hosts: &str, session_timeout: Duration) -> Client {
    let connecting = Client::connector().with_session_timeout(session_timeout).connect(hosts);
    match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
        Ok(Ok(client)) => client,
        Ok(Err(e)) => panic!("cannot connect to ZooKeeper at {hosts}: {e}"),
        Err(_) => panic!("no ZooKeeper session with {hosts} after {CONNECT_TIMEOUT:?}"),
    }
}

/// The parent of an absolute znode path (`None` for `/` and top-level nodes).
fn parent(path: &str) -> Option<&str> {
    match path.rfind('/') {
        Some(0) | None => None,
        Some(i) => Some(&path[..i]),
    }
}

fn child_path(parent: &str, child: &str) -> String {
    if parent == "/" { format!("/{child}") } else { format!("{parent}/{child}") }
}

/// How the client helpers ride out a fault: which failures they repeat an operation
/// through, for how long, and what they count. Every helper operation is safe to repeat.
#[derive(Clone, Copy, Debug)]
pub struct Retry {
    /// Give up (return the failure) after this long.
    pub limit: Duration,
    /// Pause between tries.
    pub pause: Duration,
    /// Also repeat through `Timeout` (by default only through a lost connection).
    pub through_timeouts: bool,
    /// Counts every repeat, when given.
    pub count: Option<&'static AtomicU64>,
}

/// The helpers' default: [`RETRY_FOR`] through `ConnectionLoss`, and through the I/O
/// (custom) error a member killed mid-request surfaces as.
pub const HARNESS_RETRY: Retry =
    Retry { limit: RETRY_FOR, pause: Duration::from_millis(20), through_timeouts: false, count: None };

impl Retry {
    /// Runs `op` again while it fails in a way this policy repeats, up to [`Retry::limit`].
    pub async fn run<T, F, Fut>(&self, mut op: F) -> Result<T, ZkError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, ZkError>>,
    {
        let deadline = Instant::now() + self.limit;
        loop {
            match op().await {
                Err(ZkError::ConnectionLoss | ZkError::Custom(_)) if Instant::now() < deadline => {}
                Err(ZkError::Timeout) if self.through_timeouts && Instant::now() < deadline => {}
                result => return result,
            }
            if let Some(count) = self.count {
                count.fetch_add(1, Ordering::Relaxed);
            }
            tokio::time::sleep(self.pause).await;
        }
    }
}

async fn retry<T, F, Fut>(op: F) -> Result<T, ZkError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, ZkError>>,
{
    HARNESS_RETRY.run(op).await
}

/// Sets `path`'s data, creating the node and its missing parents (empty,
/// persistent, open ACL) as needed.
pub async fn set(client: &Client, path: &str, data: &[u8]) {
    set_with(&HARNESS_RETRY, client, path, data).await;
}

/// [`set`] with a retry policy of the caller's.
pub async fn set_with(retry: &Retry, client: &Client, path: &str, data: &[u8]) {
    match retry.run(|| client.set_data(path, data, None)).await {
        Ok(_) => return,
        Err(ZkError::NoNode) => {}
        Err(e) => panic!("set {path}: {e}"),
    }
    if let Some(dir) = parent(path) {
        mkdir_with(retry, client, dir).await;
    }
    match retry.run(|| client.create(path, data, &OPEN_PERSISTENT)).await {
        Ok(_) => {}
        // Created meanwhile (by someone else, or by a try whose reply was lost): set it after all.
        Err(ZkError::NodeExists) => {
            retry
                .run(|| client.set_data(path, data, None))
                .await
                .unwrap_or_else(|e| panic!("set {path}: {e}"));
        }
        Err(e) => panic!("create {path}: {e}"),
    }
}

/// Creates `path` and its missing parents, all empty (a no-op when it exists).
pub async fn mkdir(client: &Client, path: &str) {
    mkdir_with(&HARNESS_RETRY, client, path).await;
}

/// [`mkdir`] with a retry policy of the caller's.
pub async fn mkdir_with(retry: &Retry, client: &Client, path: &str) {
    retry.run(|| client.mkdir(path, &OPEN_PERSISTENT)).await.unwrap_or_else(|e| panic!("mkdir {path}: {e}"));
}

/// `path`'s data, or `None` when the node does not exist.
pub async fn get(client: &Client, path: &str) -> Option<Vec<u8>> {
    get_with(&HARNESS_RETRY, client, path).await
}

/// [`get`] with a retry policy of the caller's.
pub async fn get_with(retry: &Retry, client: &Client, path: &str) -> Option<Vec<u8>> {
    match retry.run(|| client.get_data(path)).await {
        Ok((data, _stat)) => Some(data),
        Err(ZkError::NoNode) => None,
        Err(e) => panic!("get {path}: {e}"),
    }
}

/// `path`'s children, sorted (`None` when the node does not exist).
pub async fn ls(client: &Client, path: &str) -> Option<Vec<String>> {
    ls_with(&HARNESS_RETRY, client, path).await
}

/// [`ls`] with a retry policy of the caller's.
pub async fn ls_with(retry: &Retry, client: &Client, path: &str) -> Option<Vec<String>> {
    match retry.run(|| client.list_children(path)).await {
        Ok(mut children) => {
            children.sort();
            Some(children)
        }
        Err(ZkError::NoNode) => None,
        Err(e) => panic!("ls {path}: {e}"),
    }
}

/// Deletes `path` (which must have no children); returns false when it did
/// not exist (or when a server was lost just after deleting it).
pub async fn delete(client: &Client, path: &str) -> bool {
    delete_with(&HARNESS_RETRY, client, path).await
}

/// [`delete`] with a retry policy of the caller's.
pub async fn delete_with(retry: &Retry, client: &Client, path: &str) -> bool {
    match retry.run(|| client.delete(path, None)).await {
        Ok(()) => true,
        Err(ZkError::NoNode) => false,
        Err(e) => panic!("delete {path}: {e}"),
    }
}

/// Deletes `path` and everything below it (nothing when it does not exist).
/// On `/` it deletes everything but `/` itself and `/zookeeper`.
pub async fn delete_recursive(client: &Client, path: &str) {
    // Breadth first, so every node comes after its parent; then delete backwards.
    let mut nodes = vec![path.to_string()];
    let mut next = 0;
    while next < nodes.len() {
        let node = nodes[next].clone();
        next += 1;
        match retry(|| client.list_children(&node)).await {
            Ok(children) => {
                nodes.extend(children.iter().map(|c| child_path(&node, c)).filter(|p| p != "/zookeeper"))
            }
            Err(ZkError::NoNode) => {}
            Err(e) => panic!("ls {node}: {e}"),
        }
    }
    for node in nodes.iter().rev().filter(|n| n.as_str() != "/") {
        match retry(|| client.delete(node, None)).await {
            Ok(()) | Err(ZkError::NoNode) => {}
            Err(e) => panic!("delete {node} (deleting {path} recursively): {e}"),
        }
    }
}

/// Creates `chroot` (and its parents) on the server of `hosts` and returns
/// the connect string with the chroot appended, ready for [`connect`] or an
/// agent's config.
pub async fn create_chroot(hosts: &str, chroot: &str) -> String {
    assert!(chroot.starts_with('/') && chroot.len() > 1, "a chroot is an absolute path, not {chroot:?}");
    let client = connect(hosts).await;
    mkdir(&client, chroot).await;
    format!("{hosts}{chroot}")
}

// ------------------------------------------------------------------ agent

/// Environment variable the harness gives every process it starts, with a value of
/// that process's own; whatever the process starts inherits it (unless it clears its
/// environment), which is how [`Agent`]'s drop finds them all.
pub const AGENT_MARKER_ENV: &str = "ZKRENDER_TEST_AGENT";

/// A running `zkrender` (or stand-in) process: stdin from /dev/null, stdout
/// and stderr each to a file in a temporary directory the value owns.
///
/// The process leads a process group of its own. Dropping the value SIGKILLs
/// that whole group, reaps the process, and SIGKILLs any process left that
/// carries its [`AGENT_MARKER_ENV`] marker (a child that moved to a group of
/// its own), so nothing a test starts outlives it. When that happens during a
/// panic (a failing test), the end of the agent's log is printed.
pub struct Agent {
    name: String,
    pid: u32,
    /// The value of [`AGENT_MARKER_ENV`] this process and its descendants carry.
    marker: String,
    child: Mutex<Child>,
    status: Mutex<Option<ExitStatus>>,
    dir: TempDir,
}

impl Agent {
    /// Starts the built binary (`CARGO_BIN_EXE_zkrender`) with `args`, e.g.
    /// `["run", "-c", cfg]`.
    pub fn start<I, S>(args: I) -> Agent
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Agent::start_program(env!("CARGO_BIN_EXE_zkrender"), args, &[])
    }

    /// `zkrender run -c CONFIG`: the launcher of every test that runs the agent.
    pub fn run(config: &Path) -> Agent {
        Agent::start([OsStr::new("run"), OsStr::new("-c"), config.as_os_str()])
    }

    /// [`Agent::start`] with extra environment variables (e.g. `RUST_LOG`).
    pub fn start_with_env<I, S>(args: I, env: &[(&str, &str)]) -> Agent
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Agent::start_program(env!("CARGO_BIN_EXE_zkrender"), args, env)
    }

    /// Starts any program the way [`Agent::start`] starts zkrender (used to
    /// test the harness itself, or for a stand-in reload target).
    pub fn start_program<P, I, S>(program: P, args: I, env: &[(&str, &str)]) -> Agent
    where
        P: AsRef<OsStr>,
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let program = program.as_ref();
        let name = Path::new(program).file_name().unwrap_or(program).to_string_lossy().into_owned();
        let dir = tempfile::Builder::new()
            .prefix("zkrender-agent-")
            .tempdir()
            .expect("cannot create a temporary dir");
        let stdout = File::create(dir.path().join("stdout.log")).expect("cannot create stdout.log");
        let stderr = File::create(dir.path().join("agent.log")).expect("cannot create agent.log");
        let marker = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
        let mut command = Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(stdout).stderr(stderr);
        command.env(AGENT_MARKER_ENV, &marker).process_group(0);
        for (key, value) in env {
            command.env(key, value);
        }
        let child =
            command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", program.to_string_lossy()));
        let (pid, child, status) = (child.id(), Mutex::new(child), Mutex::new(None));
        Agent { name, pid, marker, child, status, dir }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// A temporary directory that lives as long as the agent (its logs are there).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Sends `sig` (e.g. `Signal::SIGHUP`); panics if the process already exited.
    pub fn signal(&self, sig: Signal) {
        if let Some(status) = self.try_status() {
            panic!("cannot send {sig} to {}: it exited ({status}); log:\n{}", self.name, self.log());
        }
        signal::kill(self.nix_pid(), sig).unwrap_or_else(|e| panic!("kill -{sig} {}: {e}", self.pid));
    }

    fn nix_pid(&self) -> Pid {
        Pid::from_raw(i32::try_from(self.pid).expect("pid fits in i32"))
    }

    /// The exit status, if the process has exited (reaps it).
    pub fn try_status(&self) -> Option<ExitStatus> {
        let mut status = self.status.lock().unwrap();
        if status.is_none() {
            *status = self.child.lock().unwrap().try_wait().expect("waitpid failed");
        }
        *status
    }

    /// True while the process runs.
    pub fn is_running(&self) -> bool {
        self.try_status().is_none()
    }

    /// [`wait_for_bytes`] that shows this agent's log on timeout: until `path` holds
    /// exactly `expected`; returns how long that took. `what` starts the panic message.
    pub fn wait_for_bytes(&self, path: &Path, expected: &[u8], timeout: Duration, what: &str) -> Duration {
        wait_for_bytes(path, expected, timeout, Some(self), what)
    }

    /// Panics with the exit status and the log unless the process still runs.
    pub fn assert_running(&self) {
        if let Some(status) = self.try_status() {
            panic!("{} exited ({status}); log:\n{}", self.name, self.log());
        }
    }

    /// Waits up to `timeout` for the process to exit on its own and returns
    /// its status; panics (with the log) if it is still running then.
    pub fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return status;
            }
            if Instant::now() >= deadline {
                panic!("{} still runs after {timeout:?}; log:\n{}", self.name, self.log());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// SIGTERM, then waits (up to 10 s) for the exit and returns the status.
    /// Panics with the log if it had to be SIGKILLed. Fine to call after the
    /// process exited (returns that status).
    pub fn stop(&self) -> ExitStatus {
        if let Some(status) = self.try_status() {
            return status;
        }
        // It may exit between the check and the signal: ESRCH is fine then.
        let _ = signal::kill(self.nix_pid(), Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Some(status) = self.try_status() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        self.kill();
        panic!("{} did not exit within 10 s of SIGTERM (SIGKILLed it); log:\n{}", self.name, self.log());
    }

    /// SIGKILL and reap (no-op once it has exited).
    pub fn kill(&self) {
        if self.try_status().is_none() {
            let mut child = self.child.lock().unwrap();
            let _ = child.kill();
            *self.status.lock().unwrap() = child.wait().ok();
        }
    }

    /// Path of the file that collects the process's stderr (zkrender's log).
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("agent.log")
    }

    /// Everything the process wrote to stderr so far (lossy UTF-8).
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// Everything the process wrote to stdout so far (lossy UTF-8).
    pub fn stdout(&self) -> String {
        String::from_utf8_lossy(&fs::read(self.dir.path().join("stdout.log")).unwrap_or_default())
            .into_owned()
    }

    /// Waits until the log contains `needle`; panics with the log on timeout,
    /// or as soon as the process has exited without logging it.
    pub fn wait_for_log(&self, needle: &str, timeout: Duration) {
        self.wait_for_log_count(needle, 1, timeout);
    }

    /// Waits until the log contains `needle` at least `count` times (e.g. the
    /// second "rendered" line after a change); panics like [`Agent::wait_for_log`].
    pub fn wait_for_log_count(&self, needle: &str, count: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let exited = self.try_status();
            let log = self.log(); // read after the exit check, so no last words are missed
            let seen = log.matches(needle).count();
            if seen >= count {
                return;
            }
            if let Some(status) = exited {
                panic!(
                    "{} exited ({status}) having logged {needle:?} {seen} of {count} times; log:\n{log}",
                    self.name
                );
            }
            if Instant::now() >= deadline {
                panic!("{} logged {needle:?} {seen} of {count} times in {timeout:?}; log:\n{log}", self.name);
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let was_running = self.is_running();
        if self.try_status().is_none() {
            // Not reaped yet, so the pid (and the group it leads) is still this agent's.
            let _ = signal::killpg(self.nix_pid(), Signal::SIGKILL);
        }
        self.kill();
        kill_marked(&self.marker);
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            let tail = &lines[lines.len().saturating_sub(100)..];
            eprintln!(
                "----- {} (pid {}, {}) log, last {} lines:\n{}\n-----",
                self.name,
                self.pid,
                if was_running { "killed by the harness" } else { "had exited" },
                tail.len(),
                tail.join("\n")
            );
        }
    }
}

/// SIGKILLs every process whose environment carries `AGENT_MARKER_ENV=marker`, until
/// none is left (for up to 2 s; they may be forking meanwhile).
fn kill_marked(marker: &str) {
    let needle = format!("{AGENT_MARKER_ENV}={marker}");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let marked = processes_with_env(&needle);
        if marked.is_empty() || Instant::now() >= deadline {
            return;
        }
        for pid in marked {
            let _ = signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Pids of the live processes (not zombies) with `entry` (`KEY=value`) in their environment.
pub fn processes_with_env(entry: &str) -> Vec<i32> {
    let Ok(proc) = fs::read_dir("/proc") else { return Vec::new() };
    proc.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
            environ.split(|&b| b == 0).any(|var| var == entry.as_bytes())
        })
        .collect()
}

// ------------------------------------------------------------------ files and polling

/// Runs `command` to completion with stdin from /dev/null and returns its output;
/// panics (showing its stdout and stderr) if it cannot start or does not succeed.
pub fn run_ok(command: &mut Command) -> Output {
    let out = command.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"));
    assert!(
        out.status.success(),
        "{command:?} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Writes `toml` to `dir/zkrender.toml` and returns that path.
pub fn write_config(dir: &Path, toml: &str) -> PathBuf {
    let path = dir.join("zkrender.toml");
    fs::write(&path, toml).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
    path
}

/// Polls `condition` every 5 ms until it holds; panics with
/// "timed out after ...: <what>" if it does not within `timeout`.
pub fn wait_until(mut condition: impl FnMut() -> bool, timeout: Duration, what: &str) {
    let deadline = Instant::now() + timeout;
    while !condition() {
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Polls `path` every 5 ms until its contents are exactly `expected`; on
/// timeout panics showing both (lossy UTF-8), or that the file is missing.
pub fn wait_for_file(path: impl AsRef<Path>, expected: &[u8], timeout: Duration) {
    let lossy = |b: &[u8]| format!("{:?}", String::from_utf8_lossy(b));
    poll_file(path.as_ref(), expected, timeout, "", lossy, String::new);
}

/// Polls `path` every 5 ms until it holds exactly `expected` (binary-safe, large contents
/// shown in short by [`show`]); returns how long that took. On timeout the panic starts
/// with `what` (when not empty) and ends, given an agent, with whether it runs and its log.
pub fn wait_for_bytes(
    path: &Path,
    expected: &[u8],
    timeout: Duration,
    agent: Option<&Agent>,
    what: &str,
) -> Duration {
    let context = || match agent {
        Some(a) => format!("; agent running: {}\nagent log:\n{}", a.is_running(), a.log()),
        None => String::new(),
    };
    poll_file(path, expected, timeout, what, show, context)
}

/// The loop of [`wait_for_file`] and [`wait_for_bytes`]: `describe` shows contents in the
/// panic, `context` adds to its end.
fn poll_file(
    path: &Path,
    expected: &[u8],
    timeout: Duration,
    what: &str,
    describe: impl Fn(&[u8]) -> String,
    context: impl Fn() -> String,
) -> Duration {
    let started = Instant::now();
    loop {
        let actual = fs::read(path);
        if actual.as_deref().ok() == Some(expected) {
            return started.elapsed();
        }
        if started.elapsed() >= timeout {
            let actual = actual.map(|b| describe(&b)).unwrap_or_else(|e| format!("<unreadable: {e}>"));
            panic!(
                "{what}{}{} did not become {} within {timeout:?}; it is {actual}{}",
                if what.is_empty() { "" } else { ": " },
                path.display(),
                describe(expected),
                context()
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// `bytes` in short: the length and the first 60 bytes (lossy UTF-8).
pub fn show(bytes: &[u8]) -> String {
    let head = &bytes[..bytes.len().min(60)];
    format!(
        "{} bytes {:?}{}",
        bytes.len(),
        String::from_utf8_lossy(head),
        if bytes.len() > 60 { "..." } else { "" }
    )
}

/// Asserts that `path` holds exactly `expected`, showing both in short otherwise, then
/// `context`.
pub fn assert_file(path: &Path, expected: &[u8], context: &str) {
    let actual = fs::read(path).unwrap_or_else(|e| panic!("{}: unreadable: {e}\n{context}", path.display()));
    assert!(
        actual == expected,
        "{} holds {}, expected {}\n{context}",
        path.display(),
        show(&actual),
        show(expected)
    );
}

/// `path`'s contents as lossy UTF-8 (empty when it cannot be read).
pub fn read_lossy(path: &Path) -> String {
    String::from_utf8_lossy(&fs::read(path).unwrap_or_default()).into_owned()
}

/// Lines in `path` (0 when it does not exist).
pub fn line_count(path: &Path) -> usize {
    read_lossy(path).lines().count()
}

/// The temporary files zkrender left in `dir` (`.<name>.zkrender.<random>`), each as
/// `name (N bytes)`; none when `dir` cannot be read.
pub fn temp_files(dir: &Path) -> Vec<String> {
    let Ok(entries) = fs::read_dir(dir) else { return Vec::new() };
    entries
        .filter_map(|e| {
            let e = e.ok()?;
            let name = e.file_name().to_string_lossy().into_owned();
            let size = e.metadata().map(|m| m.len()).unwrap_or(0);
            name.contains(".zkrender.").then(|| format!("{name} ({size} bytes)"))
        })
        .collect()
}

/// A loopback address held taken while the listener lives, and the address as `host:port`.
pub fn taken_address() -> (std::net::TcpListener, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    (listener, addr)
}

/// A loopback port that was free a moment ago (nothing listens on it just now).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Polls every 5 ms until `path` does not exist; panics with its contents on timeout.
pub fn wait_for_no_file(path: impl AsRef<Path>, timeout: Duration) {
    let path = path.as_ref();
    let deadline = Instant::now() + timeout;
    while path.exists() {
        if Instant::now() >= deadline {
            let contents =
                fs::read(path).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
            panic!("{} still exists after {timeout:?}; it holds {contents:?}", path.display());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Runs `zkrender ARGS` to completion (stdin from /dev/null) in `cwd`, so that no
/// `./zkrender.toml` is found unless the test put one there.
pub fn zkrender_in(cwd: &Path, args: &[&OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zkrender"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run zkrender")
}

/// Bytes as text, for messages and `contains` checks.
/// Asserts that a finished `zkrender` command succeeded, showing its stderr otherwise.
pub fn assert_succeeded(out: &Output, what: &str) {
    assert!(out.status.success(), "{what} failed ({}): {}", out.status, text(&out.stderr));
}

pub fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Makes `NAME.pem`, a self-signed CA certificate with subject `/CN=CN` valid for `days`, and
/// its key `NAME.key`, in `dir` (openssl; `extra` is appended to the `req` arguments).
pub fn make_self_signed_ca(dir: &Path, name: &str, cn: &str, days: &str, extra: &[&str]) {
    let (key, pem, subject) = (format!("{name}.key"), format!("{name}.pem"), format!("/CN={cn}"));
    let mut args = vec![
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", days, "-keyout", &key, "-out", &pem,
        "-subj", &subject,
    ];
    args.extend_from_slice(extra);
    run_ok(Command::new("openssl").current_dir(dir).args(&args));
}
