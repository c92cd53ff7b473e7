//! Soak test: minutes of random changes and faults against a 3-member ensemble, checking
//! after every burst that each file is exactly what zkrender promises for ZooKeeper's
//! state, while the agent's RSS and open file descriptors are sampled every second and must
//! stay flat.
//!
//! Not part of `cargo test` (it is `#[ignore]`d): run it with `scripts/soak`, or
//!
//! ```sh
//! SOAK_SECS=60 cargo test --release --test soak -- --ignored --nocapture
//! ```
//!
//! Environment: `SOAK_SECS` (default 600), `SOAK_SEED` (default random; printed, so that a
//! run's sequence of operations can be replayed: fault timing still varies),
//! `SOAK_WATCH` (`oneshot`, the default, or `persistent`), `SOAK_FAULT_GAP` (seconds; a
//! fault every GAP to 2 x GAP s, default 20), `SOAK_AGENT_BIN` (the zkrender binary to soak;
//! default the one cargo built with this test; CI soaks the release build from a dev-profile
//! test), `SOAK_AGENT_ENV` (`"K=V K=V"`, added to the agent's environment: a heap profiler's
//! `LD_PRELOAD`, `MALLOC_ARENA_MAX`, ...).
//!
//! What runs:
//!
//! * A ZooKeeper ensemble of 3 ([`Zk::ensemble`]) and one agent with `session_timeout =
//!   "2s"`, `resync = "0s"` (so that a missed event shows up as a failed check instead of
//!   being repaired by anti-entropy) and `listen = "127.0.0.1:0"` (its metrics are scraped
//!   for the summary). It maps 20 raw znodes (10 of random binary bytes, 10 of text; even
//!   ones `on_delete = "keep"`, odd ones `"remove"`) and renders 5 templates: the children
//!   of a directory with `znode()` per child (`members.conf`), `exists()` and `default=`
//!   (`feature.conf`), two required znodes (`db.conf`), children with a for-else and a
//!   per-child default (`upstreams.conf`), and five of the raw text znodes with defaults
//!   (`summary.conf`, so raw mappings and a template share dependencies).
//! * A driver: bursts of 5 to 40 random operations (sets, creates, deletes, children
//!   added and removed, a directory deleted whole, runs of back-to-back sets of one znode),
//!   a few milliseconds apart. Every 20 to 40 s a burst carries a fault, the kinds dealt
//!   from a shuffled deck so that each comes up in turn: the member the agent is connected
//!   to killed and started again, a member paused for 3 s, a member restarted, the leader
//!   killed and started again, the agent SIGSTOPped for 5 s (past its session timeout)
//!   then SIGCONTed. Operations keep coming while the fault lasts.
//! * After each burst a quiet period: no more changes; ZooKeeper's state is read back, the
//!   expected contents of every file computed from it (templates rendered here, in Rust,
//!   by the same logic as the template), and the files polled for up to 15 s until all
//!   match (and still match 300 ms later). No other file may be in the output directory
//!   (a leftover temp file fails the check). A check that times out records every
//!   mismatch and the agent's log since the burst began.
//! * A sampler thread reads `/proc/<agent>/status` (VmRSS) and counts `/proc/<agent>/fd`
//!   every second.
//!
//! The model of what zkrender promises (see README, "What zkrender guarantees"):
//!
//! * a raw file equals its znode's bytes; when the znode is missing, an `on_delete =
//!   "remove"` file is absent and a `"keep"` file holds the last value the agent read: the
//!   file as it was at the previous check, or any value the znode was given since;
//! * a template file equals its rendering of ZooKeeper's state; when that rendering fails
//!   (a required znode of `db.conf` is missing), the file is the one of the previous
//!   check. To keep that exact, the driver deletes a required znode of a template only if
//!   none of that template's znodes changed earlier in the same burst (otherwise the agent
//!   could have rendered a mix of old and new values just before the delete).
//! * Values are never empty: the empty-data guard (a non-empty file is never replaced by
//!   an empty one unless `allow_empty`) would otherwise make the expected file depend on
//!   history; that guard has tests of its own in `tests/agent.rs`.
//!
//! At the end (after a 12 s rest, so that idle blocking-pool threads have exited) it prints
//! a summary and asserts: every check passed; the agent still runs and exits 0 on SIGTERM;
//! RSS grew by less than 2 MiB and open fds by at most 2 from the end of the warm-up (the
//! first minute, or the first third of a shorter run: CI's 60 s runs measure from 20 s on, past
//! the steepest part of the ramp-up) to the end.
//!
//! Reading the RSS numbers: the summary splits RSS into anonymous and file-backed memory and
//! prints a timeline with the thread count. Growth of RSS without growth of the live heap is
//! the allocator keeping freed memory: by default glibc gives each thread an arena of its own
//! (the blocking pool's threads come and go) and raises its mmap threshold to the largest
//! block freed (the 64-256 KiB values the driver sometimes writes), so later large buffers
//! come from arenas that keep them. zkrender caps both at startup (`bound_malloc` in
//! `main.rs`); before that, 5 minutes in persistent mode grew RSS by 0.9 MiB (anonymous 3.1
//! to 3.9 MiB) while heaptrack's live heap stayed between 0.5 and 0.9 MiB across 4 session
//! expiries and 16 reconnects. A leak of one allocation per watch re-arm would show as
//! steady growth proportional to the operations (the summary prints KiB per 1000
//! operations). To look at the live heap, run the agent under heaptrack's preload library:
//!
//! ```sh
//! mkfifo /tmp/ht; /usr/lib/heaptrack/libexec/heaptrack_interpret </tmp/ht | zstd >/tmp/ht.zst &
//! SOAK_AGENT_ENV="LD_PRELOAD=/usr/lib/heaptrack/libheaptrack_preload.so DUMP_HEAPTRACK_OUTPUT=/tmp/ht" \
//!   SOAK_FAULT_GAP=6 scripts/soak --duration 240 --watch persistent
//! heaptrack_print -f /tmp/ht.zst -M /tmp/ht.massif   # heap over time, massif format
//! ```

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use zookeeper_client::Client;

/// How long a quiet period waits for every file to match.
const QUIET: Duration = Duration::from_secs(15);
/// Once every file matches, they must still match this much later.
const STABLE: Duration = Duration::from_millis(300);
/// The agent's ZooKeeper session timeout.
const AGENT_SESSION: &str = "2s";
/// The rest before the last check and the last samples.
const FINAL_REST: Duration = Duration::from_secs(12);
/// The label of the last check, after a rest.
const FINAL: &str = "a final rest";
/// What the agent logs when its session expired.
const EXPIRED: &str = "zookeeper session expired;";
/// How long the agent is SIGSTOPped (well past its session timeout).
const AGENT_PAUSE: Duration = Duration::from_secs(5);
/// How long a member is SIGSTOPped.
const MEMBER_PAUSE: Duration = Duration::from_secs(3);
/// Allowed growth after the warm-up.
const MAX_RSS_GROWTH_KIB: i64 = 2048;
const MAX_FD_GROWTH: i64 = 2;

const RAW_BIN: usize = 10;
const RAW_TEXT: usize = 10;
const MEMBER_NAMES: usize = 12;
const POOL_NAMES: usize = 6;

/// The state the test cares about: every existing znode of interest (leaves only; parents
/// are implied) and its data.
type State = BTreeMap<String, Vec<u8>>;

// ------------------------------------------------------------------ the files

#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Tpl {
    Members,
    Feature,
    Db,
    Upstreams,
    Summary,
}

impl Tpl {
    const ALL: [Tpl; 5] = [Tpl::Members, Tpl::Feature, Tpl::Db, Tpl::Upstreams, Tpl::Summary];

    fn dest(self) -> &'static str {
        match self {
            Tpl::Members => "members.conf",
            Tpl::Feature => "feature.conf",
            Tpl::Db => "db.conf",
            Tpl::Upstreams => "upstreams.conf",
            Tpl::Summary => "summary.conf",
        }
    }

    /// The template text (zkrender keeps a trailing newline; none is written here).
    fn source(self) -> &'static str {
        match self {
            Tpl::Members => {
                "# members\n{% for c in children(\"/members\", default=[]) %}\
                 {{ c }}={{ znode(\"/members/\" ~ c) }}\n{% endfor %}"
            }
            Tpl::Feature => {
                "{% if exists(\"/feature/flag\") %}flag={{ znode(\"/feature/flag\") }}\
                 {% else %}flag=off{% endif %}\n\
                 level={{ znode(\"/feature/level\", default=\"info\") }}\n"
            }
            Tpl::Db => "url={{ znode(\"/db/url\") }}\npool={{ znode(\"/db/pool\") }}\n",
            Tpl::Upstreams => {
                "{% for s in children(\"/pool\") %}\
                 server {{ s }} weight={{ znode(\"/pool/\" ~ s, default=\"1\") }}\n\
                 {% else %}# no servers\n{% endfor %}"
            }
            Tpl::Summary => {
                "{% for i in range(5) %}t{{ i }}={{ znode(\"/raw/t0\" ~ i, default=\"-\") }}\n{% endfor %}"
            }
        }
    }

    /// What the template renders for `s`, or `None` when rendering fails (the agent then
    /// keeps the last file).
    fn render(self, s: &State) -> Option<Vec<u8>> {
        let text = |path: &str| s.get(path).map(|v| String::from_utf8(v.clone()).expect("text znode"));
        let mut out = String::new();
        match self {
            Tpl::Members => {
                out.push_str("# members\n");
                for (child, value) in children(s, "/members") {
                    writeln!(out, "{child}={}", String::from_utf8_lossy(value)).unwrap();
                }
            }
            Tpl::Feature => {
                match text("/feature/flag") {
                    Some(flag) => writeln!(out, "flag={flag}").unwrap(),
                    None => out.push_str("flag=off\n"),
                }
                writeln!(out, "level={}", text("/feature/level").unwrap_or_else(|| "info".into())).unwrap();
            }
            Tpl::Db => {
                writeln!(out, "url={}", text("/db/url")?).unwrap();
                writeln!(out, "pool={}", text("/db/pool")?).unwrap();
            }
            Tpl::Upstreams => {
                let servers = children(s, "/pool");
                if servers.is_empty() {
                    out.push_str("# no servers\n");
                }
                for (child, value) in servers {
                    writeln!(out, "server {child} weight={}", String::from_utf8_lossy(value)).unwrap();
                }
            }
            Tpl::Summary => {
                for i in 0..5 {
                    let value = text(&format!("/raw/t0{i}")).unwrap_or_else(|| "-".into());
                    writeln!(out, "t{i}={value}").unwrap();
                }
            }
        }
        Some(out.into_bytes())
    }

    /// Whether a change of znode `path` can change this template's output.
    fn reads(self, path: &str) -> bool {
        match self {
            Tpl::Members => path == "/members" || path.starts_with("/members/"),
            Tpl::Feature => path.starts_with("/feature/"),
            Tpl::Db => path.starts_with("/db/"),
            Tpl::Upstreams => path.starts_with("/pool/"),
            Tpl::Summary => (0..5).any(|i| path == format!("/raw/t0{i}")),
        }
    }
}

/// The direct children of `dir` in `s`, sorted by name, with their data.
fn children<'a>(s: &'a State, dir: &str) -> Vec<(&'a str, &'a [u8])> {
    let prefix = format!("{dir}/");
    s.range(prefix.clone()..)
        .take_while(|(path, _)| path.starts_with(&prefix))
        .filter_map(|(path, value)| {
            let name = &path[prefix.len()..];
            (!name.contains('/')).then_some((name, value.as_slice()))
        })
        .collect()
}

#[derive(Clone, Debug)]
enum Source {
    Raw { znode: String, keep: bool },
    Template(Tpl),
}

#[derive(Clone, Debug)]
struct FileSpec {
    /// File name in the output directory.
    dest: String,
    source: Source,
}

impl FileSpec {
    fn reads(&self, path: &str) -> bool {
        match &self.source {
            Source::Raw { znode, .. } => znode == path,
            Source::Template(t) => t.reads(path),
        }
    }

    /// The file exactly determined by `s`: `Some(Some(bytes))`, `Some(None)` for no file,
    /// or `None` when the agent keeps whatever it had (keep on delete, failed rendering).
    fn determined(&self, s: &State) -> Option<Option<Vec<u8>>> {
        match &self.source {
            Source::Raw { znode, keep, .. } => match s.get(znode) {
                Some(value) => Some(Some(value.clone())),
                None if *keep => None,
                None => Some(None),
            },
            Source::Template(t) => t.render(s).map(Some),
        }
    }
}

fn raw_path(i: usize) -> String {
    if i < RAW_BIN { format!("/raw/b{i:02}") } else { format!("/raw/t{:02}", i - RAW_BIN) }
}

fn file_specs() -> Vec<FileSpec> {
    let mut files: Vec<FileSpec> = (0..RAW_BIN + RAW_TEXT)
        .map(|i| {
            let znode = raw_path(i);
            FileSpec { dest: format!("raw-{}", &znode[5..]), source: Source::Raw { znode, keep: i % 2 == 0 } }
        })
        .collect();
    files.extend(
        Tpl::ALL.iter().map(|&t| FileSpec { dest: t.dest().to_string(), source: Source::Template(t) }),
    );
    files
}

/// Writes the agent's config: `env`'s ZooKeeper and chroot, `watch` mode, the endpoint on
/// an ephemeral port, no resync, and `files`.
fn config(env: &Env, watch: &str, files: &[FileSpec]) -> PathBuf {
    let mut toml = String::new();
    for f in files {
        write!(toml, "\n[[file]]\ndest = \"out/{}\"\n", f.dest).unwrap();
        match &f.source {
            Source::Raw { znode, keep, .. } => {
                let on_delete = if *keep { "keep" } else { "remove" };
                writeln!(toml, "znode = {znode:?}\non_delete = {on_delete:?}").unwrap();
            }
            Source::Template(t) => writeln!(toml, "template = \"tpl/{}.j2\"", t.dest()).unwrap(),
        }
    }
    env.config()
        .zookeeper(&format!("session_timeout = {AGENT_SESSION:?}\nwatch = {watch:?}"))
        .listen("127.0.0.1:0")
        .agent("resync = \"0s\"")
        .write(&toml)
}

// ------------------------------------------------------------------ what a check expects

enum Expect {
    /// Exactly these bytes (`None`: no file).
    Exact(Option<Vec<u8>>),
    /// Any of these (the agent kept what it had).
    OneOf(Vec<Option<Vec<u8>>>),
}

impl Expect {
    fn accepts(&self, actual: &Option<Vec<u8>>) -> bool {
        match self {
            Expect::Exact(e) => e == actual,
            Expect::OneOf(es) => es.contains(actual),
        }
    }

    fn describe(&self) -> String {
        match self {
            Expect::Exact(e) => show_file(e),
            Expect::OneOf(es) => {
                format!("one of [{}]", es.iter().map(show_file).collect::<Vec<_>>().join(", "))
            }
        }
    }
}

fn show_file(bytes: &Option<Vec<u8>>) -> String {
    match bytes {
        None => "<no file>".to_string(),
        Some(b) => match std::str::from_utf8(b) {
            Ok(s) if b.len() <= 160 => format!("{s:?}"),
            _ => format!("<{} bytes: {:02x?}...>", b.len(), &b[..b.len().min(12)]),
        },
    }
}

fn read_file(path: &Path) -> Option<Vec<u8>> {
    match fs::read(path) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => panic!("cannot read {}: {e}", path.display()),
    }
}

// ------------------------------------------------------------------ sampling

#[derive(Clone, Copy, Debug)]
struct Sample {
    t: f64,
    rss_kib: i64,
    fds: i64,
    threads: i64,
    /// The anonymous and the file-backed parts of `rss_kib` (RssAnon, RssFile + RssShmem).
    anon_kib: i64,
    file_kib: i64,
    /// Driver operations so far.
    ops: u64,
}

/// Driver operations so far (read by the sampler).
static OPS: AtomicU64 = AtomicU64::new(0);

/// VmRSS, RssAnon, RssFile + RssShmem (KiB), open fds and threads of process `pid`.
fn sample_process(pid: u32) -> Option<[i64; 5]> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<i64> {
        status.lines().find_map(|l| l.strip_prefix(name))?.split_whitespace().next()?.parse().ok()
    };
    let fds = fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    Some([
        field("VmRSS:")?,
        field("RssAnon:")?,
        field("RssFile:")? + field("RssShmem:")?,
        i64::try_from(fds).ok()?,
        field("Threads:")?,
    ])
}

fn start_sampler(
    pid: u32,
    t0: Instant,
    stop: Arc<AtomicBool>,
) -> (Arc<Mutex<Vec<Sample>>>, std::thread::JoinHandle<()>) {
    let samples = Arc::new(Mutex::new(Vec::new()));
    let out = samples.clone();
    let handle = std::thread::spawn(move || {
        let mut next = Instant::now();
        while !stop.load(Ordering::SeqCst) {
            if let Some([rss_kib, anon_kib, file_kib, fds, threads]) = sample_process(pid) {
                out.lock().unwrap().push(Sample {
                    t: t0.elapsed().as_secs_f64(),
                    rss_kib,
                    fds,
                    threads,
                    anon_kib,
                    file_kib,
                    ops: OPS.load(Ordering::Relaxed),
                });
            }
            next += Duration::from_secs(1);
            while Instant::now() < next && !stop.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    });
    (samples, handle)
}

// ------------------------------------------------------------------ the agent's side

/// The last session id the agent logged (`session=0x...`).
fn agent_session(log: &str) -> Option<String> {
    let at = log.rfind("session=0x")?;
    let hex: String =
        log[at + "session=".len()..].chars().take_while(|c| c.is_ascii_hexdigit() || *c == 'x').collect();
    Some(hex)
}

/// The address the agent serves metrics on (its `serving ... listen=ADDR` line).
fn agent_listen(log: &str) -> Option<String> {
    let line = log.lines().find(|l| l.contains("serving /healthz"))?;
    let at = line.find("listen=")?;
    Some(line[at + "listen=".len()..].split_whitespace().next()?.trim_matches('"').to_string())
}

/// `GET /metrics`, as `name{labels} -> value`.
fn scrape(addr: &str) -> Option<BTreeMap<String, f64>> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n").ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    let body = reply.split_once("\r\n\r\n")?.1;
    Some(
        body.lines()
            .filter(|l| l.starts_with("zkrender_"))
            .filter_map(|l| {
                let (name, value) = l.rsplit_once(' ')?;
                Some((name.to_string(), value.parse().ok()?))
            })
            .collect(),
    )
}

// ------------------------------------------------------------------ the driver's client

/// Operations the driver had to repeat (for the summary).
static DRIVER_RETRIES: AtomicU64 = AtomicU64::new(0);

/// The driver repeats an operation through any failure a fault explains: `ConnectionLoss`,
/// `Timeout`, or an I/O error of the connection (which zookeeper-client hands to the
/// requests in flight as `Error::Custom`, e.g. "Connection reset by peer" when their server
/// is killed), for up to a minute, and counts the repeats. Every operation used is safe to
/// repeat.
const DRIVER: Retry = Retry {
    limit: Duration::from_secs(60),
    pause: Duration::from_millis(50),
    through_timeouts: true,
    count: Some(&DRIVER_RETRIES),
};

async fn zset(client: &Client, path: &str, data: &[u8]) {
    set_with(&DRIVER, client, path, data).await;
}

async fn zget(client: &Client, path: &str) -> Option<Vec<u8>> {
    get_with(&DRIVER, client, path).await
}

async fn zls(client: &Client, path: &str) -> Vec<String> {
    ls_with(&DRIVER, client, path).await.unwrap_or_default()
}

async fn zdelete(client: &Client, path: &str) {
    delete_with(&DRIVER, client, path).await;
}

/// Deletes `dir` and its children (the test's directories are one level deep).
async fn zdelete_dir(client: &Client, dir: &str) {
    for child in zls(client, dir).await {
        zdelete(client, &format!("{dir}/{child}")).await;
    }
    zdelete(client, dir).await;
}

// ------------------------------------------------------------------ the driver

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Fault {
    KillConnected,
    PauseMember,
    RestartMember,
    KillLeader,
    PauseAgent,
}

impl Fault {
    const ALL: [Fault; 5] = [
        Fault::KillConnected,
        Fault::PauseMember,
        Fault::RestartMember,
        Fault::KillLeader,
        Fault::PauseAgent,
    ];

    fn name(self) -> &'static str {
        match self {
            Fault::KillConnected => "kill agent's member + start",
            Fault::PauseMember => "pause member 3s",
            Fault::RestartMember => "restart member",
            Fault::KillLeader => "kill leader + start",
            Fault::PauseAgent => "SIGSTOP agent 5s",
        }
    }
}

struct Soak {
    zk: Arc<Zk>,
    client: Client,
    agent: Agent,
    rng: StdRng,
    t0: Instant,
    out: PathBuf,
    files: Vec<FileSpec>,
    /// What the driver wrote (checked against ZooKeeper at every check).
    model: State,
    /// Per file: the contents seen at the last check plus every determined content since.
    candidates: HashMap<String, Vec<Option<Vec<u8>>>>,
    /// Templates whose znodes changed in the current burst.
    touched: HashSet<Tpl>,
    ops: BTreeMap<&'static str, u64>,
    faults: BTreeMap<&'static str, u64>,
    deck: Vec<Fault>,
    checks_ok: u64,
    failures: Vec<String>,
    converged: Vec<f64>,
    /// When the driver last changed a znode.
    last_change: Instant,
    /// Byte offset in the agent's log where the current burst began.
    log_mark: usize,
}

fn alnum(rng: &mut StdRng, len: usize) -> Vec<u8> {
    const CHARS: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.";
    (0..len).map(|_| CHARS[rng.random_range(0..CHARS.len())]).collect()
}

impl Soak {
    fn secs(&self) -> f64 {
        self.t0.elapsed().as_secs_f64()
    }

    fn count(&mut self, what: &'static str) {
        *self.ops.entry(what).or_default() += 1;
        OPS.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a change of `path` in the model's bookkeeping.
    fn changed(&mut self, path: &str) {
        for f in &self.files {
            if !f.reads(path) {
                continue;
            }
            if let Source::Template(t) = f.source {
                self.touched.insert(t);
            }
            if let Some(content) = f.determined(&self.model) {
                let list = self.candidates.entry(f.dest.clone()).or_default();
                if !list.contains(&content) {
                    list.push(content);
                }
            }
        }
    }

    async fn put(&mut self, path: &str, value: Vec<u8>, what: &'static str) {
        zset(&self.client, path, &value).await;
        self.model.insert(path.to_string(), value);
        self.last_change = Instant::now();
        self.changed(path);
        self.count(what);
    }

    async fn remove(&mut self, path: &str, what: &'static str) {
        zdelete(&self.client, path).await;
        self.model.remove(path);
        self.last_change = Instant::now();
        self.changed(path);
        self.count(what);
    }

    fn raw_value(&mut self, binary: bool) -> Vec<u8> {
        if binary {
            let len = if self.rng.random_bool(0.05) {
                self.rng.random_range(64 * 1024..=256 * 1024)
            } else {
                self.rng.random_range(1..=2048)
            };
            let mut v = vec![0u8; len];
            self.rng.fill(&mut v[..]);
            v
        } else {
            let len = self.rng.random_range(1..=40);
            alnum(&mut self.rng, len)
        }
    }

    /// One random operation.
    async fn random_op(&mut self) {
        let roll = self.rng.random_range(0..100);
        match roll {
            0..51 => {
                let i = self.rng.random_range(0..RAW_BIN + RAW_TEXT);
                let path = raw_path(i);
                let value = self.raw_value(i < RAW_BIN);
                if !self.model.contains_key(&path) {
                    self.put(&path, value, "create").await;
                } else if self.rng.random_bool(0.2) {
                    self.remove(&path, "delete").await;
                } else {
                    self.put(&path, value, "set").await;
                }
            }
            51..55 => {
                // A run of back-to-back sets of one znode: the file must end at the last.
                let i = self.rng.random_range(0..RAW_BIN + RAW_TEXT);
                let path = raw_path(i);
                for _ in 0..self.rng.random_range(10..=50) {
                    let value = self.raw_value(i < RAW_BIN);
                    self.put(&path, value, "rapid set").await;
                }
            }
            55..72 => {
                if self.rng.random_bool(0.03) {
                    zdelete_dir(&self.client, "/members").await;
                    self.model.retain(|p, _| !p.starts_with("/members/"));
                    self.last_change = Instant::now();
                    self.changed("/members");
                    self.count("directory delete");
                    return;
                }
                let path = format!("/members/m{:02}", self.rng.random_range(0..MEMBER_NAMES));
                self.child_op(&path).await;
            }
            72..82 => {
                let path = format!("/pool/p{}", self.rng.random_range(0..POOL_NAMES));
                self.child_op(&path).await;
            }
            82..91 => {
                let path = if self.rng.random_bool(0.5) { "/feature/flag" } else { "/feature/level" };
                if self.model.contains_key(path) && self.rng.random_bool(0.4) {
                    self.remove(path, "delete").await;
                } else {
                    let len = self.rng.random_range(1..=12);
                    let value = alnum(&mut self.rng, len);
                    let what = if self.model.contains_key(path) { "set" } else { "create" };
                    self.put(path, value, what).await;
                }
            }
            _ => {
                let path = if self.rng.random_bool(0.5) { "/db/url" } else { "/db/pool" };
                // Delete a required znode only if db.conf is exactly known at that moment.
                let may_delete = !self.touched.contains(&Tpl::Db) && self.model.contains_key(path);
                if may_delete && self.rng.random_bool(0.3) {
                    self.remove(path, "delete").await;
                } else {
                    let value = if path == "/db/url" {
                        let len = self.rng.random_range(4..=24);
                        [b"postgres://".as_slice(), &alnum(&mut self.rng, len)].concat()
                    } else {
                        self.rng.random_range(1..=500u32).to_string().into_bytes()
                    };
                    let what = if self.model.contains_key(path) { "set" } else { "create" };
                    self.put(path, value, what).await;
                }
            }
        }
    }

    async fn child_op(&mut self, path: &str) {
        if self.model.contains_key(path) {
            if self.rng.random_bool(0.45) {
                self.remove(path, "child remove").await;
            } else {
                let value = self.rng.random_range(1..=100u32).to_string().into_bytes();
                self.put(path, value, "set").await;
            }
        } else {
            let value = self.rng.random_range(1..=100u32).to_string().into_bytes();
            self.put(path, value, "child add").await;
        }
    }

    fn ms(&mut self, range: std::ops::Range<u64>) -> Duration {
        Duration::from_millis(self.rng.random_range(range))
    }

    async fn pause_between_ops(&mut self) {
        let ms = self.rng.random_range(0..80);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// Random operations for `how_long`.
    async fn ops_for(&mut self, how_long: Duration) -> usize {
        let until = Instant::now() + how_long;
        let mut n = 0;
        while Instant::now() < until {
            self.random_op().await;
            n += 1;
            self.pause_between_ops().await;
        }
        n
    }

    /// Random operations while `fault` (a blocking `scripts/zk ctl` call) runs.
    async fn ops_during(&mut self, what: impl FnOnce(&Zk) + Send + 'static) -> usize {
        let zk = self.zk.clone();
        let task = tokio::task::spawn_blocking(move || what(&zk));
        let mut n = 0;
        while !task.is_finished() {
            self.random_op().await;
            n += 1;
            self.pause_between_ops().await;
        }
        task.await.expect("fault injection panicked");
        n
    }

    /// The member the agent's session is on (a random one if none lists it right now).
    fn agent_member(&mut self) -> usize {
        let found = agent_session(&self.agent.log()).and_then(|sid| self.zk.member_with_session(&sid));
        found.unwrap_or_else(|| self.rng.random_range(1..=3))
    }

    fn next_fault(&mut self) -> Fault {
        if self.deck.is_empty() {
            self.deck = Fault::ALL.to_vec();
            self.deck.shuffle(&mut self.rng);
        }
        self.deck.pop().unwrap()
    }

    /// Kills member `m`, keeps operating for 0.5 to 3 s, then starts it again (operating
    /// meanwhile); says what happened.
    async fn kill_and_start(&mut self, m: usize) -> String {
        self.zk.kill(m);
        let pause = self.ms(500..3000);
        let during = self.ops_for(pause).await;
        let restarting = self.ops_during(move |zk| zk.start(m)).await;
        format!("member {m}; {during} ops while down, {restarting} while starting")
    }

    async fn fault(&mut self, fault: Fault) -> String {
        *self.faults.entry(fault.name()).or_default() += 1;
        let pause = self.ms(0..1000);
        let before = self.ops_for(pause).await;
        let detail = match fault {
            Fault::KillConnected => {
                let m = self.agent_member();
                self.kill_and_start(m).await
            }
            Fault::PauseMember => {
                let m = if self.rng.random_bool(0.5) {
                    self.agent_member()
                } else {
                    self.rng.random_range(1..=3)
                };
                let leader = self.zk.leader();
                self.zk.pause(m);
                let during = self.ops_for(MEMBER_PAUSE).await;
                let resuming = self.ops_during(move |zk| zk.start(m)).await;
                let role = if m == leader { "leader" } else { "follower" };
                format!("member {m} ({role}); {during} ops while paused, {resuming} while resuming")
            }
            Fault::RestartMember => {
                let m = self.rng.random_range(1..=3);
                let during = self.ops_during(move |zk| zk.restart(m)).await;
                format!("member {m}; {during} ops while restarting")
            }
            Fault::KillLeader => {
                let m = self.zk.leader();
                self.kill_and_start(m).await
            }
            Fault::PauseAgent => {
                let expired_before = self.agent.log().matches(EXPIRED).count();
                self.agent.signal(Signal::SIGSTOP);
                let during = self.ops_for(AGENT_PAUSE).await;
                self.agent.signal(Signal::SIGCONT);
                // Give it a moment to notice, for the note below; the check waits anyway.
                let after = self.ops_for(Duration::from_millis(1500)).await;
                let expired = self.agent.log().matches(EXPIRED).count() > expired_before;
                format!(
                    "{during} ops while stopped, {after} after; session expired: {}",
                    if expired { "yes" } else { "not yet logged" }
                )
            }
        };
        let pause = self.ms(0..1000);
        let after = self.ops_for(pause).await;
        format!("{} ({detail}; {before} ops before, {after} after)", fault.name())
    }

    /// Reads back every znode of interest.
    async fn read_state(&self) -> State {
        let mut s = State::new();
        let mut paths: Vec<String> = (0..RAW_BIN + RAW_TEXT).map(raw_path).collect();
        paths.extend(["/feature/flag", "/feature/level", "/db/url", "/db/pool"].map(String::from));
        for dir in ["/members", "/pool"] {
            for child in zls(&self.client, dir).await {
                paths.push(format!("{dir}/{child}"));
            }
        }
        for path in paths {
            if let Some(value) = zget(&self.client, &path).await {
                s.insert(path, value);
            }
        }
        s
    }

    /// The file names in the output directory that are not files of the config.
    fn strays(&self) -> Vec<String> {
        let known: HashSet<&str> = self.files.iter().map(|f| f.dest.as_str()).collect();
        let mut strays: Vec<String> = fs::read_dir(&self.out)
            .expect("read the output directory")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| !known.contains(name.as_str()))
            .collect();
        strays.sort();
        strays
    }

    fn mismatches(&self, expects: &[(String, Expect)]) -> Vec<String> {
        let mut bad: Vec<String> = expects
            .iter()
            .filter_map(|(dest, expect)| {
                let actual = read_file(&self.out.join(dest));
                (!expect.accepts(&actual))
                    .then(|| format!("{dest}: expected {}, found {}", expect.describe(), show_file(&actual)))
            })
            .collect();
        bad.extend(self.strays().into_iter().map(|s| format!("stray file {s:?} in the output directory")));
        bad
    }

    /// Quiet period and check; `label` says what the burst did.
    async fn check(&mut self, label: &str) {
        let state = self.read_state().await;
        if state != self.model {
            let diff: Vec<String> = state
                .keys()
                .chain(self.model.keys())
                .collect::<std::collections::BTreeSet<_>>()
                .into_iter()
                .filter(|k| state.get(*k) != self.model.get(*k))
                .map(|k| {
                    format!(
                        "{k}: zookeeper {:?} / driver {:?}",
                        state.get(k).map(|v| v.len()),
                        self.model.get(k).map(|v| v.len())
                    )
                })
                .collect();
            self.failures
                .push(format!("[{:.1}s] the driver's model differs from ZooKeeper: {diff:?}", self.secs()));
            self.model = state.clone();
        }
        let expects: Vec<(String, Expect)> = self
            .files
            .iter()
            .map(|f| {
                let expect = match f.determined(&state) {
                    Some(content) => Expect::Exact(content),
                    None => Expect::OneOf(self.candidates.get(&f.dest).cloned().unwrap_or_default()),
                };
                (f.dest.clone(), expect)
            })
            .collect();

        let quiet_from = Instant::now();
        let outcome = loop {
            let bad = self.mismatches(&expects);
            if bad.is_empty() {
                let matched = self.last_change.elapsed();
                tokio::time::sleep(STABLE).await;
                let bad = self.mismatches(&expects);
                break if bad.is_empty() { Ok(matched) } else { Err(("flapped after matching", bad)) };
            }
            if quiet_from.elapsed() >= QUIET {
                break Err(("still wrong after the quiet period", bad));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let n = self.checks_ok as usize + self.failures.len() + 1;
        match outcome {
            Ok(matched) => {
                self.checks_ok += 1;
                if label != FINAL {
                    self.converged.push(matched.as_secs_f64());
                }
                println!(
                    "[{:7.1}s] check {n:4} ok in {:.2}s after {label}",
                    self.secs(),
                    matched.as_secs_f64()
                );
            }
            Err((why, bad)) => {
                let log = self.agent.log();
                let since: Vec<&str> = log.get(self.log_mark..).unwrap_or_default().lines().collect();
                let excerpt = since[since.len().saturating_sub(60)..].join("\n");
                let report = format!(
                    "[{:.1}s] check {n} FAILED ({why}) after {label}:\n  {}\n  agent log since the burst began \
                     (last {} of {} lines):\n{excerpt}",
                    self.secs(),
                    bad.join("\n  "),
                    since.len().min(60),
                    since.len()
                );
                println!("{report}");
                self.failures.push(report);
            }
        }
        // What the files hold now is what the agent keeps from here on.
        self.candidates =
            self.files.iter().map(|f| (f.dest.clone(), vec![read_file(&self.out.join(&f.dest))])).collect();
        self.touched.clear();
        self.log_mark = self.agent.log().len();
    }
}

// ------------------------------------------------------------------ the test

fn env_u64(name: &str) -> Option<u64> {
    let value = std::env::var(name).ok()?;
    Some(value.trim().parse().unwrap_or_else(|_| panic!("{name}={value:?} is not a whole number")))
}

fn at(samples: &[Sample], t: f64) -> Sample {
    *samples.iter().find(|s| s.t >= t).or(samples.last()).expect("samples")
}

/// Least-squares slope of RSS over time, in KiB per minute.
fn rss_slope(samples: &[Sample]) -> f64 {
    let n = samples.len() as f64;
    if n < 2.0 {
        return 0.0;
    }
    let mean_t = samples.iter().map(|s| s.t).sum::<f64>() / n;
    let mean_r = samples.iter().map(|s| s.rss_kib as f64).sum::<f64>() / n;
    let cov: f64 = samples.iter().map(|s| (s.t - mean_t) * (s.rss_kib as f64 - mean_r)).sum();
    let var: f64 = samples.iter().map(|s| (s.t - mean_t).powi(2)).sum();
    if var == 0.0 { 0.0 } else { cov / var * 60.0 }
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "soak: run with scripts/soak"]
async fn soak() {
    let duration = Duration::from_secs(env_u64("SOAK_SECS").unwrap_or(600));
    let seed = env_u64("SOAK_SEED").unwrap_or_else(rand::random);
    let watch = std::env::var("SOAK_WATCH").unwrap_or_else(|_| "oneshot".into());
    let warmup = Duration::from_secs(60).min(duration / 3);
    let gap = env_u64("SOAK_FAULT_GAP").unwrap_or(20).max(2);
    println!(
        "soak: SOAK_SECS={} SOAK_SEED={seed} SOAK_WATCH={watch} SOAK_FAULT_GAP={gap}",
        duration.as_secs()
    );

    let zk = Arc::new(Zk::ensemble(3));
    let env = Env::on(&zk, "soak").await;
    // The driver's own session rides out faults longer than the fixture's client would.
    let client = connect_with_session_timeout(&env.chrooted_hosts(), Duration::from_secs(30)).await;
    println!("soak: ensemble {} chroot {}", zk.hosts(), env.chroot());

    let out = env.mkdir("out");
    env.mkdir("tpl");
    for t in Tpl::ALL {
        fs::write(env.path("tpl").join(format!("{}.j2", t.dest())), t.source()).unwrap();
    }
    let files = file_specs();
    let config = config(&env, &watch, &files);

    let mut rng = StdRng::seed_from_u64(seed);
    // Seed every znode before the agent starts.
    let mut model = State::new();
    for i in 0..RAW_BIN + RAW_TEXT {
        let value = if i < RAW_BIN {
            let mut v = vec![0u8; rng.random_range(1..=2048)];
            rng.fill(&mut v[..]);
            v
        } else {
            let len = rng.random_range(1..=40);
            alnum(&mut rng, len)
        };
        model.insert(raw_path(i), value);
    }
    for i in 0..MEMBER_NAMES / 2 {
        model.insert(format!("/members/m{i:02}"), rng.random_range(1..=100u32).to_string().into_bytes());
    }
    for i in 0..POOL_NAMES / 2 {
        model.insert(format!("/pool/p{i}"), rng.random_range(1..=100u32).to_string().into_bytes());
    }
    model.insert("/feature/flag".into(), b"on".to_vec());
    model.insert("/db/url".into(), b"postgres://db".to_vec());
    model.insert("/db/pool".into(), b"10".to_vec());
    for (path, value) in &model {
        zset(&client, path, value).await;
    }
    mkdir_with(&DRIVER, &client, "/pool").await;

    let t0 = Instant::now();
    // `SOAK_AGENT_ENV="K=V K=V"`: extra environment for the agent (a heap profiler's
    // LD_PRELOAD, MALLOC_ARENA_MAX, ...), so that the agent's pid is the process measured.
    let agent_env = std::env::var("SOAK_AGENT_ENV").unwrap_or_default();
    let agent_env: Vec<(&str, &str)> = agent_env
        .split_whitespace()
        .map(|kv| kv.split_once('=').unwrap_or_else(|| panic!("SOAK_AGENT_ENV: {kv:?} is not K=V")))
        .collect();
    // `SOAK_AGENT_BIN`: the zkrender binary to soak (CI: the release build, with this test
    // built in the dev profile); by default the one cargo built beside this test.
    let program = std::env::var_os("SOAK_AGENT_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_zkrender").into());
    println!("soak: agent {}", Path::new(&program).display());
    let agent =
        Agent::start_program(&program, [OsStr::new("run"), OsStr::new("-c"), config.as_os_str()], &agent_env);
    agent.wait_for_log("serving /healthz", Duration::from_secs(30));
    let listen = agent_listen(&agent.log());
    let stop = Arc::new(AtomicBool::new(false));
    let (samples, sampler) = start_sampler(agent.pid(), t0, stop.clone());

    let mut soak = Soak {
        zk: zk.clone(),
        client,
        agent,
        rng,
        t0,
        out,
        files,
        model,
        candidates: HashMap::new(),
        touched: HashSet::new(),
        ops: BTreeMap::new(),
        faults: BTreeMap::new(),
        deck: Vec::new(),
        checks_ok: 0,
        failures: Vec::new(),
        converged: Vec::new(),
        log_mark: 0,
        last_change: Instant::now(),
    };
    // Nothing was ever written: no file is kept from before.
    soak.candidates = soak.files.iter().map(|f| (f.dest.clone(), vec![None])).collect();
    soak.check("start").await;

    let mut next_fault = Duration::from_secs(soak.rng.random_range(gap / 2..gap)).min(duration / 3);
    while t0.elapsed() < duration {
        let label = if t0.elapsed() >= next_fault {
            next_fault = t0.elapsed() + Duration::from_secs(soak.rng.random_range(gap..=2 * gap));
            let fault = soak.next_fault();
            let note = soak.fault(fault).await;
            format!("fault: {note}")
        } else {
            let n = soak.rng.random_range(5..=40);
            for _ in 0..n {
                soak.random_op().await;
                soak.pause_between_ops().await;
            }
            format!("{n} ops")
        };
        soak.check(&label).await;
    }
    // The end: a last look after a rest longer than tokio's blocking-pool keep-alive (10 s),
    // so that the last samples do not count the stacks of threads that were about to exit.
    tokio::time::sleep(FINAL_REST).await;
    soak.check(FINAL).await;
    stop.store(true, Ordering::SeqCst);
    sampler.join().unwrap();
    let metrics = listen.as_deref().and_then(scrape).unwrap_or_default();
    let running = soak.agent.is_running();
    let log = soak.agent.log();
    let exit = soak.agent.stop();
    // Keep the agent's log for a post-mortem (the agent's own directory goes with it).
    let kept_log = Path::new(env!("CARGO_TARGET_TMPDIR")).join("soak-agent.log");
    fs::write(&kept_log, soak.agent.log()).expect("copy the agent's log");

    // ------------------------------------------------------------- summary
    let samples = samples.lock().unwrap().clone();
    assert!(samples.len() >= 2, "too few samples of the agent: {samples:?}");
    let first = samples[0];
    let last = *samples.last().unwrap();
    let warm = at(&samples, warmup.as_secs_f64());
    let after_warm: Vec<Sample> = samples.iter().copied().filter(|s| s.t >= warm.t).collect();
    let rss_growth = last.rss_kib - warm.rss_kib;
    let fd_growth = last.fds - warm.fds;
    let total_ops: u64 = soak.ops.values().sum();
    let mut converged = soak.converged.clone();
    converged.sort_by(f64::total_cmp);
    let pct =
        |p: f64| converged.get(((converged.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(0.0);

    let mut s = String::new();
    writeln!(s, "\n==================== soak summary ====================").unwrap();
    writeln!(
        s,
        "duration {:.0}s (asked {}s), seed {seed}, watch {watch}",
        t0.elapsed().as_secs_f64(),
        duration.as_secs()
    )
    .unwrap();
    writeln!(s, "operations: {total_ops}").unwrap();
    for (what, n) in &soak.ops {
        writeln!(s, "  {what:<18} {n}").unwrap();
    }
    writeln!(s, "  (the driver repeated {} requests through faults)", DRIVER_RETRIES.load(Ordering::Relaxed))
        .unwrap();
    writeln!(s, "faults: {}", soak.faults.values().sum::<u64>()).unwrap();
    for (what, n) in &soak.faults {
        writeln!(s, "  {what:<28} {n}").unwrap();
    }
    writeln!(s, "checks: {} passed, {} failed", soak.checks_ok, soak.failures.len()).unwrap();
    writeln!(
        s,
        "  files right after the last change (incl. reading ZooKeeper back): median {:.2}s, p95 {:.2}s, max {:.2}s",
        pct(0.5),
        pct(0.95),
        pct(1.0)
    )
    .unwrap();
    let rss: Vec<i64> = samples.iter().map(|x| x.rss_kib).collect();
    let fds: Vec<i64> = samples.iter().map(|x| x.fds).collect();
    writeln!(
        s,
        "RSS KiB ({} samples): min {} first {} at warm-up ({:.0}s) {} last {} max {}; growth after warm-up {:+} KiB \
         (limit {MAX_RSS_GROWTH_KIB}); trend after warm-up {:+.1} KiB/min",
        samples.len(),
        rss.iter().min().unwrap(),
        first.rss_kib,
        warm.t,
        warm.rss_kib,
        last.rss_kib,
        rss.iter().max().unwrap(),
        rss_growth,
        rss_slope(&after_warm)
    )
    .unwrap();
    writeln!(
        s,
        "open fds: first {} at warm-up {} last {} min {} max {}; growth after warm-up {:+} (limit {MAX_FD_GROWTH})",
        first.fds,
        warm.fds,
        last.fds,
        fds.iter().min().unwrap(),
        fds.iter().max().unwrap(),
        fd_growth
    )
    .unwrap();
    writeln!(
        s,
        "  of which anonymous: at warm-up {} last {} max {} ({:+} KiB); file-backed: at warm-up {} last {} ({:+} KiB)",
        warm.anon_kib,
        last.anon_kib,
        samples.iter().map(|x| x.anon_kib).max().unwrap(),
        last.anon_kib - warm.anon_kib,
        warm.file_kib,
        last.file_kib,
        last.file_kib - warm.file_kib
    )
    .unwrap();
    let ops_after_warm = last.ops.saturating_sub(warm.ops);
    if ops_after_warm > 0 {
        writeln!(
            s,
            "RSS growth per 1000 operations after warm-up: {:+.1} KiB",
            rss_growth as f64 * 1000.0 / ops_after_warm as f64
        )
        .unwrap();
    }
    let step = (duration.as_secs_f64() / 10.0).max(5.0);
    let mut timeline = Vec::new();
    let mut next = 0.0;
    for x in &samples {
        if x.t >= next || std::ptr::eq(x, samples.last().unwrap()) {
            timeline.push(format!(
                "{:.0}s {}K (anon {}K) {}fd {}thr {}op",
                x.t, x.rss_kib, x.anon_kib, x.fds, x.threads, x.ops
            ));
            next = x.t + step;
        }
    }
    let threads: Vec<i64> = samples.iter().map(|x| x.threads).collect();
    writeln!(s, "threads: min {} max {}", threads.iter().min().unwrap(), threads.iter().max().unwrap())
        .unwrap();
    writeln!(s, "timeline: {}", timeline.join(" | ")).unwrap();
    writeln!(
        s,
        "agent log: {} session expiries, {} connection losses, {} new sessions, {} ERROR lines, {} WARN lines",
        log.matches(EXPIRED).count(),
        log.matches("connection lost").count(),
        log.matches("new zookeeper session").count(),
        log.lines().filter(|l| l.contains("ERROR")).count(),
        log.lines().filter(|l| l.contains("WARN")).count()
    )
    .unwrap();
    if metrics.is_empty() {
        writeln!(s, "agent metrics: not scraped (listen {listen:?})").unwrap();
    } else {
        let m = |name: &str| metrics.get(name).map_or("-".to_string(), |v| v.to_string());
        writeln!(
            s,
            "agent metrics: session expirations {}, reconnects {}, watch events {}, renders {}, render errors {}, files written {}",
            m("zkrender_zk_session_expirations_total"),
            m("zkrender_zk_reconnects_total"),
            m("zkrender_watch_events_total"),
            m("zkrender_renders_total"),
            m("zkrender_render_errors_total"),
            m("zkrender_files_written_total"),
        )
        .unwrap();
    }
    writeln!(
        s,
        "agent: {} at the end; exit after SIGTERM: {exit}",
        if running { "running" } else { "EXITED" }
    )
    .unwrap();
    writeln!(s, "agent log kept at {}", kept_log.display()).unwrap();
    for f in &soak.failures {
        writeln!(s, "FAILURE {f}").unwrap();
    }
    writeln!(s, "======================================================").unwrap();
    println!("{s}");

    assert!(running, "the agent exited during the soak");
    assert!(exit.success(), "the agent exited with {exit} after SIGTERM");
    assert!(!log.contains("panicked"), "the agent panicked; see its log");
    assert!(
        soak.failures.is_empty(),
        "{} of {} checks failed (see above)",
        soak.failures.len(),
        soak.checks_ok as usize + soak.failures.len()
    );
    assert!(
        rss_growth < MAX_RSS_GROWTH_KIB,
        "RSS grew by {rss_growth} KiB after the warm-up (limit {MAX_RSS_GROWTH_KIB} KiB)"
    );
    assert!(
        fd_growth <= MAX_FD_GROWTH,
        "open fds grew by {fd_growth} after the warm-up (limit {MAX_FD_GROWTH})"
    );
}
