//! Fault injection against REAL ZooKeeper servers (standalone and a 3-member ensemble).
//!
//! The promise under test (README, "What zkrender guarantees, fault by fault"): after any
//! ZooKeeper fault every file converges to what ZooKeeper holds, no file is ever partial or
//! empty, and the agent recovers on its own.
//!
//! Every fault test runs a [`Reader`]: a thread that reads each destination file in a
//! tight loop for the whole test and records any read that is empty, unknown (partial), or
//! missing after the file first appeared. Each value is added to the allowed set *before*
//! it is written to ZooKeeper, so anything else the reader sees is a torn or invented file.
//!
//! Each test starts its own server(s): faults affect a whole server.

mod common;

use std::collections::HashSet;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{Agent, Env, Zk, connect, get, set, show, temp_files, wait_until};
use nix::sys::signal::Signal;
use zookeeper_client::Client;

/// How long a file may take to converge once a fault is over (generous: 2 CPUs, JVMs).
const CONVERGE: Duration = Duration::from_secs(15);
const SECS_10: Duration = Duration::from_secs(10);

// ------------------------------------------------------------------ helpers

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Oneshot,
    Persistent,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Oneshot => "oneshot",
            Mode::Persistent => "persistent",
        }
    }
}

/// The values a file may hold: every value written to its znode so far.
#[derive(Clone, Default)]
struct Allowed(Arc<Mutex<HashSet<Vec<u8>>>>);

impl Allowed {
    fn allow(&self, value: &[u8]) {
        self.0.lock().unwrap().insert(value.to_vec());
    }
    fn contains(&self, value: &[u8]) -> bool {
        self.0.lock().unwrap().contains(value)
    }
}

/// A thread reading one file in a tight loop, recording every read that breaks the promise.
struct Reader {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<(u64, u64, Vec<String>)>>,
}

impl Reader {
    fn spawn(path: &Path, allowed: &Allowed) -> Reader {
        let stop = Arc::new(AtomicBool::new(false));
        let (path, flag, allowed) = (path.to_path_buf(), stop.clone(), allowed.clone());
        let file = path.clone();
        let handle = std::thread::spawn(move || {
            let started = Instant::now();
            let (mut reads, mut broken, mut seen, mut bad) = (0u64, 0u64, false, Vec::new());
            while !flag.load(Ordering::Relaxed) {
                let problem = match fs::read(&file) {
                    Ok(bytes) => {
                        reads += 1;
                        seen = true;
                        if bytes.is_empty() {
                            Some("EMPTY file".to_string())
                        } else if !allowed.contains(&bytes) {
                            Some(format!("a value never written (partial?): {}", show(&bytes)))
                        } else {
                            None
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound && !seen => None,
                    Err(e) => Some(format!("unreadable after it existed: {e}")),
                };
                if let Some(p) = problem {
                    broken += 1;
                    if bad.len() < 20 {
                        bad.push(format!("at {:?}: {p}", started.elapsed()));
                    }
                }
                // Tight, but leave the 2-CPU machine's JVMs some air.
                std::thread::sleep(Duration::from_micros(100));
            }
            (reads, broken, bad)
        });
        Reader { path, stop, handle: Some(handle) }
    }

    /// Stops the thread and asserts that every read it made was a whole, known value.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let (reads, broken, bad) = self.handle.take().unwrap().join().expect("reader thread panicked");
        assert!(
            broken == 0,
            "{} was seen broken {broken} time(s) (of {reads} reads); the first ones:\n{}",
            self.path.display(),
            bad.join("\n")
        );
        assert!(reads > 0, "the reader never saw {}", self.path.display());
        reads
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// One raw mapping: znode -> file, with its allowed values and its reader.
struct Mapped {
    znode: String,
    dest: PathBuf,
    allowed: Allowed,
}

/// A test's environment (chroot, admin client, directory), its agent config and files.
struct Setup {
    env: Env,
    config: PathBuf,
    files: Vec<Mapped>,
}

impl Setup {
    /// Creates a chroot on `zk`, seeds each znode with `<name>0` and writes an agent config
    /// with one raw mapping per znode (dest `out/<name>.conf`) and the metrics endpoint.
    async fn new(zk: &Zk, name: &str, znodes: &[&str], mode: Mode, session_timeout: &str) -> Setup {
        let env = Env::on(zk, name).await;
        let out = env.mkdir("out");
        let mut toml = String::new();
        let mut files = Vec::new();
        for znode in znodes {
            let base = znode.trim_start_matches('/').replace('/', "_");
            let dest = out.join(format!("{base}.conf"));
            toml.push_str(&format!("\n[[file]]\ndest = {:?}\nznode = {znode:?}\n", dest.to_str().unwrap()));
            let m = Mapped { znode: znode.to_string(), dest, allowed: Allowed::default() };
            let first = format!("{base}0");
            m.allowed.allow(first.as_bytes());
            env.set(znode, &first).await;
            files.push(m);
        }
        let config = env
            .config()
            .zookeeper(&format!("session_timeout = {session_timeout:?}\nwatch = {:?}", mode.as_str()))
            .listen("127.0.0.1:0")
            .write(&toml);
        Setup { env, config, files }
    }

    /// The chrooted admin client.
    fn admin(&self) -> &Client {
        self.env.client()
    }

    fn out(&self) -> PathBuf {
        self.env.path("out")
    }

    fn start_agent(&self) -> Agent {
        Agent::run(&self.config)
    }

    /// Allows `value` for file `i`, then writes it through `client`.
    async fn write(&self, client: &Client, i: usize, value: &[u8]) {
        self.files[i].allowed.allow(value);
        set(client, &self.files[i].znode, value).await;
    }

    fn readers(&self) -> Vec<Reader> {
        self.files.iter().map(|m| Reader::spawn(&m.dest, &m.allowed)).collect()
    }

    /// Connects a client to the given members only (chrooted).
    async fn client_on(&self, zk: &Zk, members: &[usize]) -> Client {
        let hosts: Vec<String> = members.iter().map(|&i| zk.address(i)).collect();
        connect(&format!("{}{}", hosts.join(","), self.env.chroot())).await
    }

    /// A new admin-like client on every member (after a fault expired the old sessions).
    async fn fresh_client(&self) -> Client {
        connect(&self.env.chrooted_hosts()).await
    }
}

/// The value of `key=` in a log line (text format), without quotes.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len();
    Some(line[start..].split_whitespace().next()?.trim_matches('"'))
}

/// The metrics endpoint's address, from the agent's log.
fn metrics_addr(agent: &Agent) -> String {
    agent.wait_for_log("serving /healthz /readyz /metrics /status", SECS_10);
    let log = agent.log();
    let line = log.lines().find(|l| l.contains("serving /healthz")).unwrap();
    field(line, "listen=").unwrap_or_else(|| panic!("no listen= in {line:?}")).to_string()
}

/// GET /metrics over a raw HTTP/1.0 connection; the body.
fn scrape(addr: &str) -> String {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(stream, "GET /metrics HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut reply = String::new();
    stream.read_to_string(&mut reply).unwrap();
    let (head, body) = reply.split_once("\r\n\r\n").unwrap_or_else(|| panic!("bad reply {reply:?}"));
    assert!(head.starts_with("HTTP/1.") && head.contains(" 200"), "GET /metrics: {head}");
    body.to_string()
}

/// A counter (or gauge) without labels, from a scrape.
fn metric(addr: &str, name: &str) -> u64 {
    let body = scrape(addr);
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<f64>().ok())
        .map(|v| v as u64)
        .unwrap_or_else(|| panic!("no {name} in /metrics:\n{body}"))
}

const EVENTS: &str = "zkrender_watch_events_total";
const RECONNECTS: &str = "zkrender_zk_reconnects_total";
const EXPIRATIONS: &str = "zkrender_zk_session_expirations_total";

/// The agent's first session id (`0x...`), from `connected to zookeeper`.
fn agent_session(agent: &Agent) -> String {
    agent.wait_for_log("connected to zookeeper", SECS_10);
    let log = agent.log();
    let line = log.lines().find(|l| l.contains("connected to zookeeper")).unwrap();
    field(line, "session=").unwrap_or_else(|| panic!("no session= in {line:?}")).to_string()
}

/// The member the agent's session is connected to.
fn agent_member(zk: &Zk, agent: &Agent) -> usize {
    let session = agent_session(agent);
    let deadline = Instant::now() + SECS_10;
    loop {
        if let Some(m) = zk.member_with_session(&session) {
            return m;
        }
        assert!(Instant::now() < deadline, "no member holds session {session}:\n{}", zk.status());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The agent's connection story (for `--nocapture` runs and bug reports).
fn print_zk_log(name: &str, agent: &Agent) {
    let log = agent.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("zookeeper")).collect();
    eprintln!("----- {name}: agent's zookeeper log lines\n{}\n-----", lines.join("\n"));
}

fn assert_no_panic(agent: &Agent) {
    let log = agent.log();
    assert!(!log.contains("panicked"), "the agent panicked:\n{log}");
    assert!(agent.is_running(), "the agent exited ({:?}):\n{log}", agent.try_status());
}

/// A writer that keeps changing znode `i` (every ~25 ms) through `client` until stopped;
/// returns the last value written.
fn spawn_writer(
    setup: Arc<Setup>,
    client: Client,
    i: usize,
    tag: &'static str,
) -> (Arc<AtomicBool>, Arc<AtomicUsize>, tokio::task::JoinHandle<Vec<u8>>) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicUsize::new(0));
    let (flag, n) = (stop.clone(), count.clone());
    let task = tokio::spawn(async move {
        let mut k = 0usize;
        loop {
            k += 1;
            let value = format!("{tag}-{k}").into_bytes();
            setup.write(&client, i, &value).await;
            n.store(k, Ordering::SeqCst);
            if flag.load(Ordering::SeqCst) {
                return value;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    });
    (stop, count, task)
}

async fn stop_writer(
    (stop, count, task): (Arc<AtomicBool>, Arc<AtomicUsize>, tokio::task::JoinHandle<Vec<u8>>),
) -> Vec<u8> {
    stop.store(true, Ordering::SeqCst);
    let last = tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .expect("the writer is stuck")
        .expect("the writer panicked");
    eprintln!("writer wrote {} values, last {}", count.load(Ordering::SeqCst), show(&last));
    last
}

/// Waits until the writer has made at least `n` writes.
async fn writes_reach(count: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while count.load(Ordering::SeqCst) < n {
        assert!(Instant::now() < deadline, "the writer made only {} writes", count.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// ------------------------------------------------------------------ 1. restart within the session

/// A standalone server restarted within the session timeout. In both modes the client
/// restores the watches (SetWatches, persistent watches included), so nothing is re-read on
/// reconnect. Then a change still reaches the files.
async fn restart_within_session(mode: Mode) {
    let t0 = Instant::now();
    let zk = Zk::standalone();
    let setup = Setup::new(&zk, &format!("restart-{}", mode.as_str()), &["/a", "/b"], mode, "10s").await;
    let agent = setup.start_agent();
    let addr = metrics_addr(&agent);
    for m in &setup.files {
        agent.wait_for_bytes(
            &m.dest,
            &get(setup.admin(), &m.znode).await.unwrap(),
            CONVERGE,
            "initial render",
        );
    }
    let readers = setup.readers();
    wait_until(|| metric(&addr, EVENTS) >= 2, SECS_10, "the two initial reads counted");
    std::thread::sleep(Duration::from_millis(300));
    let events_before = metric(&addr, EVENTS);
    let reconnects_before = metric(&addr, RECONNECTS);
    assert_eq!(events_before, 2, "two dependencies, two reads at start");

    zk.restart(1);
    wait_until(
        || metric(&addr, RECONNECTS) > reconnects_before,
        Duration::from_secs(15),
        "zkrender_zk_reconnects_total to increase after the restart",
    );
    // Settle: whatever the reconnect triggers has time to arrive.
    std::thread::sleep(Duration::from_millis(1500));
    let events_after = metric(&addr, EVENTS);
    assert_eq!(metric(&addr, EXPIRATIONS), 0, "the session must survive a restart within its timeout");
    assert!(
        agent.log().contains("zookeeper connection restored (same session)"),
        "no same-session reconnect logged:\n{}",
        agent.log()
    );
    // Both modes: the client restores the watches (SetWatches; persistent ones too, with the
    // vendored client's fix, see vendor/PATCHES.md), so nothing is re-read on reconnect.
    assert_eq!(
        events_after,
        events_before,
        "{mode:?}: a reconnect within the session must not re-read (watches restored by SetWatches); log:\n{}",
        agent.log()
    );

    // The watches still work: a change after the restart reaches both files.
    setup.write(setup.admin(), 0, b"a-after-restart").await;
    setup.write(setup.admin(), 1, b"b-after-restart").await;
    let took = agent.wait_for_bytes(&setup.files[0].dest, b"a-after-restart", CONVERGE, "after restart");
    agent.wait_for_bytes(&setup.files[1].dest, b"b-after-restart", CONVERGE, "after restart");
    for r in readers {
        r.finish();
    }
    assert_no_panic(&agent);
    print_zk_log("restart_within_session", &agent);
    eprintln!("restart_within_session({mode:?}): change converged in {took:?}; test {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_within_session_oneshot() {
    restart_within_session(Mode::Oneshot).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_within_session_persistent() {
    restart_within_session(Mode::Persistent).await;
}

// ------------------------------------------------------------------ 2. session expiry

/// The agent frozen (SIGSTOP) past its 1 s session while a znode changes: on SIGCONT it
/// sees the expiry, opens a new session, re-reads, converges, and later changes still arrive.
async fn session_expiry(mode: Mode) {
    let t0 = Instant::now();
    let zk = Zk::standalone();
    let setup = Setup::new(&zk, &format!("expiry-{}", mode.as_str()), &["/a", "/b"], mode, "1s").await;
    let agent = setup.start_agent();
    let addr = metrics_addr(&agent);
    agent.wait_for_bytes(&setup.files[0].dest, b"a0", CONVERGE, "initial render");
    agent.wait_for_bytes(&setup.files[1].dest, b"b0", CONVERGE, "initial render");
    let readers = setup.readers();
    // /b does not change: after the expiry its file must not be rewritten.
    let b_inode = fs::metadata(&setup.files[1].dest).unwrap().ino();

    agent.signal(Signal::SIGSTOP);
    setup.write(setup.admin(), 0, b"a-during-1").await;
    std::thread::sleep(Duration::from_secs(2));
    setup.write(setup.admin(), 0, b"a-during-2").await;
    std::thread::sleep(Duration::from_secs(2));
    agent.signal(Signal::SIGCONT);

    let took = agent.wait_for_bytes(&setup.files[0].dest, b"a-during-2", CONVERGE, "after expiry");
    agent.wait_for_log("zookeeper session expired", SECS_10);
    agent.wait_for_log("new zookeeper session; re-establishing every watch", SECS_10);
    // Watches re-established: later changes arrive, on both znodes.
    setup.write(setup.admin(), 0, b"a-later").await;
    agent.wait_for_bytes(&setup.files[0].dest, b"a-later", CONVERGE, "change after the new session");
    assert_eq!(
        fs::metadata(&setup.files[1].dest).unwrap().ino(),
        b_inode,
        "b.conf did not change in ZooKeeper but was rewritten after the expiry"
    );
    setup.write(setup.admin(), 1, b"b-later").await;
    agent.wait_for_bytes(&setup.files[1].dest, b"b-later", CONVERGE, "change after the new session");
    wait_until(|| metric(&addr, EXPIRATIONS) == 1, SECS_10, "zkrender_zk_session_expirations_total == 1");
    for r in readers {
        r.finish();
    }
    assert_no_panic(&agent);
    assert_eq!(metric(&addr, EXPIRATIONS), 1);
    print_zk_log("session_expiry", &agent);
    eprintln!("session_expiry({mode:?}): converged {took:?} after SIGCONT; test {:?}", t0.elapsed());
}

#[tokio::test(flavor = "multi_thread")]
async fn session_expiry_oneshot() {
    session_expiry(Mode::Oneshot).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn session_expiry_persistent() {
    session_expiry(Mode::Persistent).await;
}

// ------------------------------------------------------------------ 3. ensemble

/// A 3-member ensemble, an agent on it and a reader on its file.
async fn ensemble_setup(
    name: &str,
    mode: Mode,
    session_timeout: &str,
) -> (Zk, Arc<Setup>, Agent, Reader, usize) {
    let zk = Zk::ensemble(3);
    let setup = Setup::new(&zk, name, &["/v"], mode, session_timeout).await;
    let agent = setup.start_agent();
    agent.wait_for_bytes(&setup.files[0].dest, b"v0", CONVERGE, "initial render");
    let reader = Reader::spawn(&setup.files[0].dest, &setup.files[0].allowed);
    let member = agent_member(&zk, &agent);
    eprintln!("{name}: agent on member {member}, leader {}", zk.leader());
    (zk, Arc::new(setup), agent, reader, member)
}

fn others(member: usize) -> Vec<usize> {
    (1..=3).filter(|&m| m != member).collect()
}

/// (a) SIGKILL the agent's member while a writer (on the other members) keeps changing the value.
async fn ensemble_kill_agents_member(mode: Mode) {
    let t0 = Instant::now();
    let (zk, setup, agent, reader, member) =
        ensemble_setup(&format!("ens-kill-{}", mode.as_str()), mode, "4s").await;
    let client = setup.client_on(&zk, &others(member)).await;
    let writer = spawn_writer(setup.clone(), client, 0, "kill");
    writes_reach(&writer.1, 10).await;
    zk.kill(member);
    let at = writer.1.load(Ordering::SeqCst);
    writes_reach(&writer.1, at + 40).await;
    let last = stop_writer(writer).await;
    // The admin session may be on a member that has not applied the writer's last write yet
    // (ZooKeeper reads are not linearizable): `sync` first.
    let admin = setup.admin();
    common::HARNESS_RETRY.run(|| admin.sync("/v")).await.expect("sync /v");
    assert_eq!(get(admin, "/v").await.as_deref(), Some(&last[..]));
    let took =
        agent.wait_for_bytes(&setup.files[0].dest, &last, CONVERGE, "after killing the agent's member");
    reader.finish();
    assert_no_panic(&agent);
    print_zk_log("ensemble_kill_agents_member", &agent);
    eprintln!(
        "ensemble_kill_agents_member({mode:?}): converged {took:?} after the writer stopped; test {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ensemble_kill_agents_member_oneshot() {
    ensemble_kill_agents_member(Mode::Oneshot).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ensemble_kill_agents_member_persistent() {
    ensemble_kill_agents_member(Mode::Persistent).await;
}

/// (b) SIGSTOP the agent's member: its socket stays open and nothing answers.
async fn ensemble_pause_agents_member(mode: Mode) {
    let t0 = Instant::now();
    let (zk, setup, agent, reader, member) =
        ensemble_setup(&format!("ens-pause-{}", mode.as_str()), mode, "4s").await;
    let client = setup.client_on(&zk, &others(member)).await;
    let writer = spawn_writer(setup.clone(), client.clone(), 0, "pause");
    writes_reach(&writer.1, 10).await;
    zk.pause(member);
    let at = writer.1.load(Ordering::SeqCst);
    writes_reach(&writer.1, at + 40).await;
    let last = stop_writer(writer).await;
    // Converges while the member is still frozen: the agent must have moved away from it.
    let took = agent.wait_for_bytes(&setup.files[0].dest, &last, CONVERGE, "with the agent's member paused");
    zk.start(member);
    setup.write(&client, 0, b"after-resume").await;
    agent.wait_for_bytes(&setup.files[0].dest, b"after-resume", CONVERGE, "after the member resumed");
    reader.finish();
    assert_no_panic(&agent);
    print_zk_log("ensemble_pause_agents_member", &agent);
    eprintln!(
        "ensemble_pause_agents_member({mode:?}): converged {took:?} after the writer stopped; test {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ensemble_pause_agents_member_oneshot() {
    ensemble_pause_agents_member(Mode::Oneshot).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ensemble_pause_agents_member_persistent() {
    ensemble_pause_agents_member(Mode::Persistent).await;
}

/// (c) SIGKILL the leader while a writer (on the followers) keeps changing the value.
#[tokio::test(flavor = "multi_thread")]
async fn ensemble_kill_leader() {
    let t0 = Instant::now();
    let (zk, setup, agent, reader, _member) = ensemble_setup("ens-leader", Mode::Oneshot, "4s").await;
    let leader = zk.leader();
    let client = setup.client_on(&zk, &others(leader)).await;
    let writer = spawn_writer(setup.clone(), client.clone(), 0, "leader");
    writes_reach(&writer.1, 10).await;
    zk.kill(leader);
    let at = writer.1.load(Ordering::SeqCst);
    writes_reach(&writer.1, at + 40).await;
    let last = stop_writer(writer).await;
    let took = agent.wait_for_bytes(&setup.files[0].dest, &last, CONVERGE, "after killing the leader");
    setup.write(&client, 0, b"after-election").await;
    agent.wait_for_bytes(&setup.files[0].dest, b"after-election", CONVERGE, "a change after the election");
    reader.finish();
    assert_no_panic(&agent);
    print_zk_log("ensemble_kill_leader", &agent);
    eprintln!("ensemble_kill_leader: converged {took:?} after the writer stopped; test {:?}", t0.elapsed());
}

/// Starts the listed members at once (a lone member of a dead ensemble cannot serve alone).
fn start_together(zk: &Zk, members: &[usize]) {
    std::thread::scope(|s| {
        for &m in members {
            s.spawn(move || zk.start(m));
        }
    });
}

/// How soon after ZooKeeper serves again a file must hold a value written then, whatever the
/// session timeout (the agent caps its pause between connection attempts at 250 ms).
const SERVED_TO_FILE: Duration = Duration::from_secs(1);

/// (d) Quorum lost for ~10 s (the two members the agent is not on killed, then started
/// again); values changed after the quorum returns. With a 4 s session the agent's session
/// expires during the outage (new session, full re-read); with a 20 s one it survives (the new
/// leader renews it) and the one-shot watch is restored by SetWatches across the new epoch, or
/// the persistent one is re-sent by the client.
///
/// The file must hold the first value written after the quorum returns within
/// [`SERVED_TO_FILE`] of ZooKeeper serving again, which is when a probe (a client of the
/// test's own, whose session outlives the outage and which tries again every 50 ms) first
/// succeeds in writing that value: the moment is measured, not assumed from when the members
/// were started.
async fn ensemble_quorum_lost(mode: Mode, session_timeout: &str, expires: bool) {
    let t0 = Instant::now();
    let name = format!("ens-quorum-{}-{session_timeout}", mode.as_str());
    let (zk, setup, agent, reader, member) = ensemble_setup(&name, mode, session_timeout).await;
    let zk = Arc::new(zk);
    let addr = metrics_addr(&agent);
    let probe = Client::connector()
        .with_session_timeout(Duration::from_secs(30))
        .with_max_reconnect_delay(Duration::from_millis(50))
        .connect(&setup.env.chrooted_hosts())
        .await
        .expect("the probe's session");
    setup.write(setup.admin(), 0, b"before-loss").await;
    agent.wait_for_bytes(&setup.files[0].dest, b"before-loss", CONVERGE, "before the quorum loss");
    let gone = others(member);
    for &m in &gone {
        zk.kill(m);
    }
    std::thread::sleep(SECS_10);
    assert_eq!(fs::read(&setup.files[0].dest).unwrap(), b"before-loss", "the file changed without a quorum");
    assert!(agent.is_running(), "the agent exited without a quorum:\n{}", agent.log());
    let starting = {
        let (zk, gone) = (zk.clone(), gone.clone());
        tokio::task::spawn_blocking(move || start_together(&zk, &gone))
    };
    // The probe writes as soon as ZooKeeper serves: its first success is "served again".
    setup.files[0].allowed.allow(b"after-quorum-1");
    let probing = Instant::now();
    let mut tries = 0;
    while !matches!(
        tokio::time::timeout(Duration::from_secs(1), probe.set_data("/v", b"after-quorum-1", None)).await,
        Ok(Ok(_))
    ) {
        tries += 1;
        assert!(probing.elapsed() < Duration::from_secs(60), "ZooKeeper did not serve again within 60 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let served = probing.elapsed();
    let took =
        agent.wait_for_bytes(&setup.files[0].dest, b"after-quorum-1", CONVERGE, "after the quorum returned");
    starting.await.expect("starting the members");
    // Later changes still arrive (the watch is in place, whichever path was taken).
    let client = setup.fresh_client().await;
    setup.write(&client, 0, b"after-quorum-2").await;
    agent.wait_for_bytes(&setup.files[0].dest, b"after-quorum-2", CONVERGE, "a later change");
    reader.finish();
    assert_no_panic(&agent);
    print_zk_log(&name, &agent);
    // Which path ran (a precondition of the scenario, not a promise of zkrender).
    let expirations = metric(&addr, EXPIRATIONS);
    assert_eq!(
        expirations > 0,
        expires,
        "{name}: expected the session to {} the outage; expirations={expirations}",
        if expires { "expire during" } else { "survive" }
    );
    eprintln!(
        "{name}: ZooKeeper served again {served:?} after the members were started ({tries} failed probes); \
         file converged {took:?} after that; test {:?}",
        t0.elapsed()
    );
    assert!(
        took <= SERVED_TO_FILE,
        "{name}: the file converged {took:?} after ZooKeeper served again (want <= {SERVED_TO_FILE:?}); agent log:\n{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn ensemble_quorum_lost_session_expires() {
    ensemble_quorum_lost(Mode::Oneshot, "4s", true).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ensemble_quorum_lost_within_session_oneshot() {
    ensemble_quorum_lost(Mode::Oneshot, "20s", false).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ensemble_quorum_lost_within_session_persistent() {
    ensemble_quorum_lost(Mode::Persistent, "20s", false).await;
}

/// (e) The whole ensemble killed and started again.
#[tokio::test(flavor = "multi_thread")]
async fn ensemble_full_restart() {
    let t0 = Instant::now();
    let (zk, setup, agent, reader, _member) = ensemble_setup("ens-full", Mode::Oneshot, "10s").await;
    setup.write(setup.admin(), 0, b"before-restart").await;
    agent.wait_for_bytes(&setup.files[0].dest, b"before-restart", CONVERGE, "before the restart");
    for m in 1..=3 {
        zk.kill(m);
    }
    std::thread::sleep(Duration::from_secs(1));
    start_together(&zk, &[1, 2, 3]);
    let client = setup.fresh_client().await;
    setup.write(&client, 0, b"after-restart").await;
    let took =
        agent.wait_for_bytes(&setup.files[0].dest, b"after-restart", CONVERGE, "after the full restart");
    reader.finish();
    assert_no_panic(&agent);
    print_zk_log("ensemble_full_restart", &agent);
    eprintln!("ensemble_full_restart: converged {took:?} after the write; test {:?}", t0.elapsed());
}

// ------------------------------------------------------------------ 5. agent killed mid-burst

/// `kills` rounds of: the agent (started, caught up) SIGKILLed halfway through a burst of
/// `burst` updates, the burst finishing while it is dead. Then the agent is started once
/// more: the file converges to the last value, the reader never saw it torn, and at most one
/// temporary file is left.
async fn killed_mid_burst(name: &str, kills: usize, burst: usize) {
    let t0 = Instant::now();
    let zk = Zk::standalone();
    let setup = Setup::new(&zk, name, &["/burst"], Mode::Oneshot, "10s").await;
    let dest = setup.files[0].dest.clone();
    let reader = Reader::spawn(&dest, &setup.files[0].allowed);
    // 8 KiB values: a torn write would show up as an unknown value.
    let value = |i: usize| {
        let mut v = format!("burst value {i:05}\n").into_bytes();
        v.resize(8192, b'0' + (i % 10) as u8);
        v
    };
    let mut current = b"burst0".to_vec();
    let mut after_each_kill = Vec::new();
    for round in 0..kills {
        let agent = setup.start_agent();
        agent.wait_for_bytes(&dest, &current, CONVERGE, &format!("round {round}: agent started"));
        for k in 1..=burst {
            current = value(round * burst + k);
            setup.write(setup.admin(), 0, &current).await;
            if k == burst / 2 {
                agent.kill();
            }
        }
        after_each_kill.push(temp_files(&setup.out()).len());
    }
    let agent = setup.start_agent();
    let took = agent.wait_for_bytes(&dest, &current, CONVERGE, "after the agent restarted");
    reader.finish();
    let left = temp_files(&setup.out());
    print_zk_log(name, &agent);
    eprintln!(
        "{name}: temp files after each kill {after_each_kill:?}, after the last restart {left:?}; \
         converged {took:?}; test {:?}",
        t0.elapsed()
    );
    assert!(
        left.len() <= 1,
        "{} temporary files left in {} after {kills} kill(s) and a restart (counts after each kill: \
         {after_each_kill:?}); nothing removes them: {left:?}",
        left.len(),
        setup.out().display()
    );
    assert_no_panic(&agent);
}

/// The agent SIGKILLed in the middle of a burst of 500 updates, then started again.
#[tokio::test(flavor = "multi_thread")]
async fn agent_killed_mid_burst() {
    killed_mid_burst("burst", 1, 500).await;
}

/// A crash loop (8 kills mid-burst, as under a supervisor restarting an OOM-killed agent):
/// the temporary files the kills leave must not pile up in the application's directory.
#[tokio::test(flavor = "multi_thread")]
async fn agent_crash_loop_leaves_no_temp_pileup() {
    killed_mid_burst("crashloop", 8, 100).await;
}

// ------------------------------------------------------------------ 6. unreachable at start

/// ZooKeeper down when the agent starts: it keeps running, says so at error level, writes
/// nothing (an existing file stays); once the server starts the files are written.
#[tokio::test(flavor = "multi_thread")]
async fn unreachable_at_start() {
    let t0 = Instant::now();
    let zk = Zk::standalone();
    let setup = Setup::new(&zk, "unreachable", &["/x", "/y"], Mode::Oneshot, "2s").await;
    // y.conf exists from an earlier run: it must stay as it is while ZooKeeper is unreachable.
    let old = b"old contents".as_slice();
    setup.files[1].allowed.allow(old);
    fs::write(&setup.files[1].dest, old).unwrap();
    zk.kill(1);
    let agent = setup.start_agent();
    let readers = setup.readers();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = agent.log();
        if log.lines().any(|l| l.contains("ERROR") && l.contains("cannot connect to zookeeper")) {
            break;
        }
        assert!(agent.is_running(), "the agent exited while ZooKeeper was down:\n{log}");
        assert!(Instant::now() < deadline, "no error about connecting within 20 s:\n{log}");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    assert!(agent.is_running(), "the agent exited while ZooKeeper was down:\n{}", agent.log());
    assert!(!setup.files[0].dest.exists(), "x.conf was written without ZooKeeper");
    assert_eq!(fs::read(&setup.files[1].dest).unwrap(), old, "y.conf changed without ZooKeeper");
    assert!(temp_files(&setup.out()).is_empty(), "temp files: {:?}", temp_files(&setup.out()));

    zk.start(1);
    let took = agent.wait_for_bytes(&setup.files[0].dest, b"x0", CONVERGE, "after the server started");
    agent.wait_for_bytes(&setup.files[1].dest, b"y0", CONVERGE, "after the server started");
    for r in readers {
        r.finish();
    }
    assert_no_panic(&agent);
    print_zk_log("unreachable_at_start", &agent);
    eprintln!("unreachable_at_start: converged {took:?} after the server served; test {:?}", t0.elapsed());
}
