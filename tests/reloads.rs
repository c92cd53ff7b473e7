//! The reload, exec and config hot-reload contract, end to end: the built `zkrender`
//! binary against a real ZooKeeper, real processes counting real signals, a real HTTP
//! server (tokio, in the test) receiving the hooks, and real commands.
//!
//! Every test has its own chroot and temporary directory; one ZooKeeper serves them all
//! (`ZK_TEST_HOSTS`, else one started for this test binary). Waits poll to a deadline;
//! "exactly n" is asserted after the count reached n and then stayed there for [`SETTLE`].

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Agent, Env, wait_for_file};
use nix::sys::signal::Signal;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// How long any single expected effect may take.
const T: Duration = Duration::from_secs(10);

/// How long a count must stay put before "exactly n" is asserted.
const SETTLE: Duration = Duration::from_millis(400);

// ------------------------------------------------------------------ helpers

/// `zkrender exec -c CONFIG -- bash -c SCRIPT`
fn exec_agent(config: &Path, extra: &[&str], script: &str) -> Agent {
    let mut args: Vec<String> = vec!["exec".into(), "-c".into(), config.display().to_string()];
    args.extend(extra.iter().map(|s| s.to_string()));
    args.extend(["--".into(), "bash".into(), "-c".into(), script.into()]);
    Agent::start(args)
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// Lines of `path` that start with `prefix`.
fn lines_starting(path: &Path, prefix: &str) -> Vec<String> {
    read(path).lines().filter(|l| l.starts_with(prefix)).map(str::to_owned).collect()
}

/// Waits until `count()` reaches `n`; panics with the last value and `context()` otherwise.
fn wait_count(what: &str, n: usize, count: impl Fn() -> usize, context: impl Fn() -> String) {
    let deadline = Instant::now() + T;
    loop {
        let got = count();
        if got >= n {
            return;
        }
        if Instant::now() >= deadline {
            panic!("{what}: {got} of {n} after {T:?}\n{}", context());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Waits until `count()` reaches `n`, lets it settle, and asserts it is exactly `n`.
fn expect_exactly(what: &str, n: usize, count: impl Fn() -> usize, context: impl Fn() -> String) {
    wait_count(what, n, &count, &context);
    std::thread::sleep(SETTLE);
    let got = count();
    assert_eq!(got, n, "{what}: expected exactly {n}, got {got}\n{}", context());
}

/// A copy of `program` (found on PATH) under a fresh short name, for `process = NAME`.
fn unique_copy(dir: &Path, program: &str) -> PathBuf {
    let name = format!("zkr-{:08x}", rand::random::<u32>());
    let found =
        std::process::Command::new("sh").arg("-c").arg(format!("command -v {program}")).output().unwrap();
    let original = String::from_utf8(found.stdout).unwrap();
    let copy = dir.join(name);
    fs::copy(original.trim(), &copy).unwrap();
    copy
}

// ------------------------------------------------------------------ a SIGHUP counter

/// Appends a line to `$D/hups` per SIGHUP; creates `$D/ready` once the trap is set.
const COUNTER: &str = r#"trap 'echo hup >> "$D/hups"' HUP; touch "$D/ready"; while :; do sleep 0.05; done"#;

/// Starts `program -c COUNTER` with `D=dir` and waits until its trap is installed.
fn start_counter(program: &Path, dir: &Path) -> Agent {
    let counter = Agent::start_program(program, ["-c", COUNTER], &[("D", dir.to_str().unwrap())]);
    common::wait_until(|| dir.join("ready").exists(), T, "the SIGHUP counter to be ready");
    counter
}

fn hups(dir: &Path) -> usize {
    read(&dir.join("hups")).lines().count()
}

// ------------------------------------------------------------------ an HTTP hook server

/// One request the hook server received.
#[derive(Debug, Clone)]
struct Hit {
    method: String,
    path: String,
    at: Instant,
    /// The watched file's contents when the request arrived (if the server watches one).
    file: Option<String>,
    status: u16,
}

type Responder = dyn Fn(&str, Option<&str>) -> u16 + Send + Sync;

/// A real HTTP/1.1 server on loopback. Each request is answered with the status
/// `respond(path, contents of the watched file)` and recorded.
struct Hook {
    base: String,
    hits: Arc<Mutex<Vec<Hit>>>,
}

impl Hook {
    async fn start(
        watched: Option<PathBuf>,
        respond: impl Fn(&str, Option<&str>) -> u16 + Send + Sync + 'static,
    ) -> Hook {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(Mutex::new(Vec::new()));
        let respond: Arc<Responder> = Arc::new(respond);
        let seen = Arc::clone(&hits);
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, respond, watched) = (Arc::clone(&seen), Arc::clone(&respond), watched.clone());
                tokio::spawn(async move {
                    let _ = serve(stream, seen, respond, watched).await;
                });
            }
        });
        Hook { base, hits }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn hits(&self) -> Vec<Hit> {
        self.hits.lock().unwrap().clone()
    }

    fn count(&self) -> usize {
        self.hits.lock().unwrap().len()
    }

    fn count_path(&self, path: &str) -> usize {
        self.hits.lock().unwrap().iter().filter(|h| h.path == path).count()
    }
}

async fn serve(
    mut stream: TcpStream,
    hits: Arc<Mutex<Vec<Hit>>>,
    respond: Arc<Responder>,
    watched: Option<PathBuf>,
) -> std::io::Result<()> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 2048];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let at = Instant::now();
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut request_line = head.lines().next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let path = request_line.next().unwrap_or_default().to_owned();
    let length: usize = head
        .lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse().ok())
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
    let file = watched.as_ref().map(|p| fs::read_to_string(p).unwrap_or_default());
    let status = respond(&path, file.as_deref());
    hits.lock().unwrap().push(Hit { method, path, at, file, status });
    let reason = if status < 300 { "OK" } else { "Error" };
    let response = format!("HTTP/1.1 {status} {reason}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

// ------------------------------------------------------------------ 1. signal reloads

#[tokio::test(flavor = "multi_thread")]
async fn signal_via_pid_file_reaches_the_process_once_per_change() {
    let env = Env::new("reload-signal-pidfile").await;
    let app = env.mkdir("app");
    let counter = start_counter(Path::new("bash"), &app);
    let pid_file = env.path("app.pid");
    fs::write(&pid_file, format!("{}\n", counter.pid())).unwrap();
    let dest = env.path("app.conf");
    env.set("/app/conf", "v0").await;
    let cfg = env.write_config(&format!(
        "[[file]]\ndest = {dest:?}\nznode = \"/app/conf\"\n[file.reload]\nsignal = \"HUP\"\npid_file = {pid_file:?}\n"
    ));
    let agent = Agent::run(&cfg);
    wait_for_file(&dest, b"v0", T);
    // The first install changed the file (it did not exist): one SIGHUP.
    let log = || agent.log();
    expect_exactly("SIGHUPs after the first install", 1, || hups(&app), log);
    for i in 1..=4 {
        let value = format!("v{i}");
        env.set("/app/conf", &value).await;
        wait_for_file(&dest, value.as_bytes(), T);
        wait_count("SIGHUPs", 1 + i, || hups(&app), log);
    }
    expect_exactly("SIGHUPs after 4 sequential changes", 5, || hups(&app), log);
    // Setting the same bytes again changes nothing on disk: no reload.
    env.set("/app/conf", "v4").await;
    expect_exactly("SIGHUPs after re-setting an unchanged value", 5, || hups(&app), log);
    assert!(counter.is_running(), "the counter died");
    agent.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn signal_by_process_name_reaches_the_master() {
    let env = Env::new("reload-signal-process").await;
    let app = env.mkdir("app");
    let program = unique_copy(env.dir(), "bash");
    let name = program.file_name().unwrap().to_str().unwrap().to_owned();
    let counter = start_counter(&program, &app);
    let dest = env.path("proc.conf");
    env.set("/app/proc", "p0").await;
    let cfg = env.write_config(&format!(
        "[[file]]\ndest = {dest:?}\nznode = \"/app/proc\"\n[file.reload]\nsignal = \"SIGHUP\"\nprocess = {name:?}\n"
    ));
    let agent = Agent::run(&cfg);
    wait_for_file(&dest, b"p0", T);
    let log = || agent.log();
    expect_exactly("SIGHUPs after the first install", 1, || hups(&app), log);
    for i in 1..=2 {
        let value = format!("p{i}");
        env.set("/app/proc", &value).await;
        wait_for_file(&dest, value.as_bytes(), T);
        wait_count("SIGHUPs", 1 + i, || hups(&app), log);
    }
    expect_exactly("SIGHUPs after 2 changes", 3, || hups(&app), log);
    assert!(counter.is_running(), "the counter died");
    agent.assert_running();
}

// ------------------------------------------------------------------ 2. HTTP hooks

#[tokio::test(flavor = "multi_thread")]
async fn http_hook_gets_one_request_per_change() {
    let env = Env::new("reload-http-ok").await;
    let hook = Hook::start(None, |_, _| 200).await;
    let (a, b) = (env.path("a.conf"), env.path("b.conf"));
    env.seed(&[("/app/a", b"a0"), ("/app/b", b"b0")]).await;
    let cfg = env.write_config(&format!(
        "[[file]]\ndest = {a:?}\nznode = \"/app/a\"\n[file.reload]\nhttp = {:?}\n\n\
         [[file]]\ndest = {b:?}\nznode = \"/app/b\"\n[file.reload]\nhttp = {:?}\nmethod = \"put\"\n",
        hook.url("/-/reload"),
        hook.url("/b"),
    ));
    let agent = Agent::run(&cfg);
    wait_for_file(&a, b"a0", T);
    wait_for_file(&b, b"b0", T);
    let log = || format!("requests: {:?}\nlog:\n{}", hook.hits(), agent.log());
    expect_exactly("requests after the first install", 2, || hook.count(), log);

    env.set("/app/a", "a1").await;
    wait_for_file(&a, b"a1", T);
    expect_exactly("requests to /-/reload after one change", 2, || hook.count_path("/-/reload"), log);
    env.set("/app/b", "b1").await;
    wait_for_file(&b, b"b1", T);
    expect_exactly("requests to /b after one change", 2, || hook.count_path("/b"), log);
    assert_eq!(hook.count(), 4, "{}", log());
    for hit in hook.hits() {
        let expected = if hit.path == "/b" { "PUT" } else { "POST" };
        assert_eq!(hit.method, expected, "{hit:?}");
    }
    agent.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn http_hook_failing_is_retried_then_logged_and_the_agent_keeps_going() {
    let env = Env::new("reload-http-500").await;
    let hook = Hook::start(None, |_, _| 500).await;
    let dest = env.path("a.conf");
    env.set("/app/a", "a0").await;
    let url = hook.url("/-/reload");
    let cfg = env.write_config(&format!(
        "[[file]]\ndest = {dest:?}\nznode = \"/app/a\"\n[file.reload]\nhttp = {url:?}\nretries = 2\n"
    ));
    let agent = Agent::run(&cfg);
    wait_for_file(&dest, b"a0", T);
    let log = || format!("requests: {:?}\nlog:\n{}", hook.hits(), agent.log());
    // 1 attempt + 2 retries, 100 ms then 200 ms apart.
    expect_exactly("requests for the first install", 3, || hook.count(), log);
    agent.wait_for_log("reload failed after all retries", T);
    assert!(agent.log().contains("status 500"), "{}", log());
    let hits = hook.hits();
    assert!(hits[2].at - hits[0].at >= Duration::from_millis(280), "backoff 100 + 200 ms: {hits:?}");

    env.set("/app/a", "a1").await;
    wait_for_file(&dest, b"a1", T);
    expect_exactly("requests after one change", 6, || hook.count(), log);
    agent.wait_for_log_count("reload failed after all retries", 2, T);
    assert!(hook.hits().iter().all(|h| h.method == "POST"));
    assert_eq!(read(&dest), "a1", "the file stays written");
    agent.assert_running();
}

// ------------------------------------------------------------------ 3. command reloads

#[tokio::test(flavor = "multi_thread")]
async fn command_reload_runs_and_a_failing_command_is_logged_with_stderr() {
    let env = Env::new("reload-command").await;
    let (ok, bad) = (env.path("ok.conf"), env.path("bad.conf"));
    let out = env.path("reloads.txt");
    env.seed(&[("/app/ok", b"o0"), ("/app/bad", b"x0")]).await;
    let append = format!("echo reload >> '{}'", out.display());
    let cfg = env.write_config(&format!(
        "[[file]]\ndest = {ok:?}\nznode = \"/app/ok\"\n[file.reload]\ncommand = [\"sh\", \"-c\", {append:?}]\n\n\
         [[file]]\ndest = {bad:?}\nznode = \"/app/bad\"\n[file.reload]\n\
         command = [\"sh\", \"-c\", \"echo boom-on-stderr >&2; exit 4\"]\nretries = 0\n"
    ));
    let agent = Agent::run(&cfg);
    wait_for_file(&ok, b"o0", T);
    wait_for_file(&bad, b"x0", T);
    let log = || agent.log();
    let reloads = || read(&out).lines().count();
    expect_exactly("command runs after the first install", 1, reloads, log);
    agent.wait_for_log("exited with status 4: boom-on-stderr", T);

    env.set("/app/bad", "x1").await;
    wait_for_file(&bad, b"x1", T);
    agent.wait_for_log_count("exited with status 4: boom-on-stderr", 2, T);
    agent.assert_running();

    env.set("/app/ok", "o1").await;
    wait_for_file(&ok, b"o1", T);
    expect_exactly("command runs after one change", 2, reloads, log);
    let attempts =
        agent.log().lines().filter(|l| l.contains("reload attempt failed") && l.contains("exit 4")).count();
    assert_eq!(attempts, 2, "retries = 0: one attempt per change\n{}", agent.log());
    agent.assert_running();
}

// ------------------------------------------------------------------ 4. target down

#[tokio::test(flavor = "multi_thread")]
async fn dead_pid_in_pid_file_is_logged_and_changes_still_apply() {
    let env = Env::new("reload-dead-pid").await;
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap(); // reaped: nobody has this pid now
    let pid_file = env.path("app.pid");
    fs::write(&pid_file, format!("{pid}\n")).unwrap();
    let dest = env.path("app.conf");
    env.set("/app/conf", "v0").await;
    let cfg = env.write_config(&format!(
        "[[file]]\ndest = {dest:?}\nznode = \"/app/conf\"\n[file.reload]\nsignal = \"HUP\"\n\
         pid_file = {pid_file:?}\nretries = 0\n"
    ));
    let agent = Agent::run(&cfg);
    wait_for_file(&dest, b"v0", T);
    let expected = format!("no process with pid {pid} (from pid file {})", pid_file.display());
    agent.wait_for_log(&expected, T);
    agent.wait_for_log("reload failed after all retries", T);
    for i in 1..=2 {
        let value = format!("v{i}");
        env.set("/app/conf", &value).await;
        wait_for_file(&dest, value.as_bytes(), T);
        agent.wait_for_log_count(&expected, 1 + i, T);
    }
    agent.assert_running();
}

// ------------------------------------------------------------------ 5. splay

#[tokio::test(flavor = "multi_thread")]
async fn splay_delays_the_reload_by_up_to_the_splay() {
    let env = Env::new("reload-splay").await;
    let dest = env.path("s.conf");
    let hook = Hook::start(Some(dest.clone()), |_, _| 200).await;
    env.set("/app/s", "s0").await;
    let url = hook.url("/-/reload");
    let cfg = env.write_config(&format!(
        "[[file]]\ndest = {dest:?}\nznode = \"/app/s\"\n[file.reload]\nhttp = {url:?}\nsplay = \"1s\"\n"
    ));
    let agent = Agent::run(&cfg);
    wait_for_file(&dest, b"s0", T);
    let log = || format!("requests: {:?}\nlog:\n{}", hook.hits(), agent.log());
    wait_count("the first install's request", 1, || hook.count(), log);
    let mut delays = Vec::new();
    for i in 1..=5 {
        let value = format!("s{i}");
        env.set("/app/s", &value).await;
        // Poll tightly: the moment the new bytes are seen is the write time (+ ~1 ms).
        let deadline = Instant::now() + T;
        while read(&dest) != value {
            assert!(Instant::now() < deadline, "{} never became {value}", dest.display());
            std::thread::sleep(Duration::from_millis(1));
        }
        let written = Instant::now();
        wait_count("requests", 1 + i, || hook.count(), log);
        let hit = hook.hits()[i].clone();
        assert_eq!(hit.file.as_deref(), Some(value.as_str()), "the request came before the write: {hit:?}");
        let delay = hit.at.saturating_duration_since(written);
        assert!(
            delay <= Duration::from_millis(1200),
            "request {i} came {delay:?} after the write\n{}",
            log()
        );
        delays.push(delay);
    }
    // Uniform in 0..1 s: all five under 100 ms has probability 1e-5.
    assert!(delays.iter().any(|d| *d >= Duration::from_millis(100)), "no splay at all: {delays:?}");
    assert_eq!(hook.count(), 6, "{}", log());
    agent.assert_running();
}

// ------------------------------------------------------------------ 6. rollback

#[tokio::test(flavor = "multi_thread")]
async fn rollback_restores_the_previous_file_and_reloads_again() {
    let env = Env::new("reload-rollback").await;
    let dest = env.path("r.conf");
    // The "application" refuses any configuration that says "bad".
    let hook =
        Hook::start(Some(dest.clone()), |_, file| if file.unwrap_or("").contains("bad") { 500 } else { 200 })
            .await;
    env.set("/app/r", "good").await;
    let url = hook.url("/-/reload");
    let cfg = env.write_config(&format!(
        "[[file]]\ndest = {dest:?}\nznode = \"/app/r\"\nrollback = true\n[file.reload]\nhttp = {url:?}\nretries = 0\n"
    ));
    let agent = Agent::run(&cfg);
    wait_for_file(&dest, b"good", T);
    let log = || format!("requests: {:?}\nlog:\n{}", hook.hits(), agent.log());
    expect_exactly("requests after the first install", 1, || hook.count(), log);

    env.set("/app/r", "bad").await;
    // The rejected file's reload fails, the previous file comes back and is reloaded.
    expect_exactly("requests after the bad value", 3, || hook.count(), log);
    wait_for_file(&dest, b"good", T);
    let hits = hook.hits();
    assert_eq!((hits[1].file.as_deref(), hits[1].status), (Some("bad"), 500), "{}", log());
    assert_eq!((hits[2].file.as_deref(), hits[2].status), (Some("good"), 200), "{}", log());
    agent.wait_for_log("rollback", T);
    let rolled = agent.log().lines().any(|l| l.contains("rollback") && l.contains(&*dest.to_string_lossy()));
    assert!(rolled, "no log line says {} was rolled back\n{}", dest.display(), log());
    // The rejected contents stay out.
    std::thread::sleep(SETTLE);
    assert_eq!(read(&dest), "good");

    env.set("/app/r", "good2").await;
    wait_for_file(&dest, b"good2", T);
    expect_exactly("requests after good2", 4, || hook.count(), log);
    let last = hook.hits()[3].clone();
    assert_eq!((last.file.as_deref(), last.status), (Some("good2"), 200), "{}", log());
    agent.assert_running();
}

// ------------------------------------------------------------------ 7. exec mode

/// The app for exec tests: logs `start PID <contents of each file>` and `ready PID`, then
/// a line per USR1, USR2 and HUP; on TERM logs `TERM PID` and exits 7.
fn app_script(log: &Path, files: &[&Path]) -> String {
    let contents: Vec<String> =
        files.iter().map(|f| format!("$(cat '{}' 2>/dev/null || echo MISSING)", f.display())).collect();
    format!(
        r#"log='{log}'
echo "start $$ {contents}" >> "$log"
trap 'echo "USR1 $$" >> "$log"' USR1
trap 'echo "USR2 $$" >> "$log"' USR2
trap 'echo "HUP $$" >> "$log"' HUP
trap 'echo "TERM $$" >> "$log"; exit 7' TERM
echo "ready $$" >> "$log"
while :; do sleep 0.05; done
"#,
        log = log.display(),
        contents = contents.join(" "),
    )
}

/// Waits for the app's n-th `ready` line and returns the pid it names.
fn wait_ready(app_log: &Path, n: usize, agent: &Agent) -> u32 {
    wait_count(
        "app ready lines",
        n,
        || lines_starting(app_log, "ready ").len(),
        || format!("app log:\n{}\nzkrender log:\n{}", read(app_log), agent.log()),
    );
    let line = &lines_starting(app_log, "ready ")[n - 1];
    line["ready ".len()..].trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_starts_the_child_only_after_every_file_is_written() {
    let env = Env::new("exec-after-files").await;
    let (a, b) = (env.path("a.conf"), env.path("b.conf"));
    let app_log = env.path("app.log");
    env.set("/app/a", "A1").await;
    let cfg = env.write_config(&format!(
        "[[file]]\ndest = {a:?}\nznode = \"/app/a\"\n\n[[file]]\ndest = {b:?}\nznode = \"/app/b\"\n"
    ));
    let agent = exec_agent(&cfg, &[], &app_script(&app_log, &[&a, &b]));
    wait_for_file(&a, b"A1", T);
    // /app/b does not exist yet: the child must not start.
    std::thread::sleep(Duration::from_millis(800));
    assert!(!app_log.exists(), "the child started before b.conf was written: {}", read(&app_log));
    agent.assert_running();
    env.set("/app/b", "B1").await;
    wait_ready(&app_log, 1, &agent);
    let starts = lines_starting(&app_log, "start ");
    assert_eq!(starts.len(), 1, "{starts:?}");
    assert!(starts[0].ends_with(" A1 B1"), "the child saw {:?}", starts[0]);
    agent.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_gives_up_after_timeout_without_starting_the_child() {
    let env = Env::new("exec-timeout").await;
    let a = env.path("a.conf");
    let app_log = env.path("app.log");
    let cfg = env.write_config(&format!("[[file]]\ndest = {a:?}\nznode = \"/app/missing\"\n"));
    let agent = exec_agent(&cfg, &["--timeout", "1s"], &app_script(&app_log, &[&a]));
    let status = agent.wait_exit(T);
    assert_eq!(status.code(), Some(1), "log:\n{}", agent.log());
    assert!(agent.log().contains(&*a.to_string_lossy()), "the error names the file:\n{}", agent.log());
    assert!(!app_log.exists(), "the child ran: {}", read(&app_log));
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_reload_signal_without_target_goes_to_the_child() {
    let env = Env::new("exec-signal-child").await;
    let a = env.path("a.conf");
    let app_log = env.path("app.log");
    env.set("/app/a", "A1").await;
    // Already up to date: the first render writes nothing and fires no reload (the
    // first install's reload is `exec_first_install_does_not_signal_the_new_child`).
    fs::write(&a, "A1").unwrap();
    let cfg = env.write_config(&format!(
        "[[file]]\ndest = {a:?}\nznode = \"/app/a\"\n[file.reload]\nsignal = \"USR1\"\n"
    ));
    let agent = exec_agent(&cfg, &[], &app_script(&app_log, &[&a]));
    let pid = wait_ready(&app_log, 1, &agent);
    let usr1 = || lines_starting(&app_log, "USR1 ").len();
    let context = || format!("app log:\n{}\nzkrender log:\n{}", read(&app_log), agent.log());
    assert_eq!(usr1(), 0, "{}", context());

    env.set("/app/a", "A2").await;
    wait_for_file(&a, b"A2", T);
    expect_exactly("USR1 after one change", 1, usr1, context);
    assert_eq!(lines_starting(&app_log, "USR1 ")[0], format!("USR1 {pid}"));
    env.set("/app/a", "A3").await;
    wait_for_file(&a, b"A3", T);
    expect_exactly("USR1 after two changes", 2, usr1, context);
    assert_eq!(lines_starting(&app_log, "start ").len(), 1, "{}", context());
    agent.assert_running();
}

/// Starts `exec` with `reload` on a file that does not exist yet, and returns once the
/// app is ready and the first install's reload (with its retries, 100 + 200 + 400 ms)
/// has had time to run.
async fn exec_fresh_file(name: &str, reload: &str) -> (Env, Agent, PathBuf) {
    let env = Env::new(name).await;
    let a = env.path("a.conf");
    let app_log = env.path("app.log");
    env.set("/app/a", "A1").await;
    let cfg =
        env.write_config(&format!("[[file]]\ndest = {a:?}\nznode = \"/app/a\"\n[file.reload]\n{reload}\n"));
    let agent = exec_agent(&cfg, &[], &app_script(&app_log, &[&a]));
    let deadline = Instant::now() + T;
    while lines_starting(&app_log, "ready ").is_empty() && agent.is_running() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(1000));
    (env, agent, app_log)
}

/// The child starts after the first install, so that install's reload is not for it: the
/// app must not get a reload signal it has had no chance to install a handler for.
#[tokio::test(flavor = "multi_thread")]
async fn exec_first_install_does_not_signal_the_new_child() {
    let (_env, agent, app_log) = exec_fresh_file("exec-first-signal", "signal = \"USR1\"").await;
    let context = || format!("app log:\n{}\nzkrender log:\n{}", read(&app_log), agent.log());
    agent.assert_running();
    assert_eq!(lines_starting(&app_log, "ready ").len(), 1, "{}", context());
    assert!(lines_starting(&app_log, "USR1 ").is_empty(), "USR1 with no change\n{}", context());
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_first_install_does_not_restart_the_new_child() {
    let (_env, agent, app_log) = exec_fresh_file("exec-first-restart", "restart = true").await;
    let context = || format!("app log:\n{}\nzkrender log:\n{}", read(&app_log), agent.log());
    agent.assert_running();
    let log = agent.log();
    assert_eq!(log.matches("started the child").count(), 1, "restarted with no change\n{}", context());
    assert!(!log.contains("restarting the child"), "restarted with no change\n{}", context());
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_forwards_sigterm_and_exits_with_the_child_code() {
    let env = Env::new("exec-sigterm").await;
    let a = env.path("a.conf");
    let app_log = env.path("app.log");
    env.set("/app/a", "A1").await;
    let cfg = env.write_config(&format!("[[file]]\ndest = {a:?}\nznode = \"/app/a\"\n"));
    let agent = exec_agent(&cfg, &[], &app_script(&app_log, &[&a]));
    let pid = wait_ready(&app_log, 1, &agent);
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(T);
    assert_eq!(lines_starting(&app_log, "TERM "), vec![format!("TERM {pid}")], "log:\n{}", agent.log());
    assert_eq!(status.code(), Some(7), "zkrender exits with the child's code; log:\n{}", agent.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_forwards_sigusr2() {
    let env = Env::new("exec-sigusr2").await;
    let a = env.path("a.conf");
    let app_log = env.path("app.log");
    env.set("/app/a", "A1").await;
    let cfg = env.write_config(&format!("[[file]]\ndest = {a:?}\nznode = \"/app/a\"\n"));
    let agent = exec_agent(&cfg, &[], &app_script(&app_log, &[&a]));
    let pid = wait_ready(&app_log, 1, &agent);
    let context = || format!("app log:\n{}\nzkrender log:\n{}", read(&app_log), agent.log());
    agent.signal(Signal::SIGUSR2);
    expect_exactly("USR2 lines", 1, || lines_starting(&app_log, "USR2 ").len(), context);
    assert_eq!(lines_starting(&app_log, "USR2 ")[0], format!("USR2 {pid}"));
    agent.signal(Signal::SIGUSR2);
    expect_exactly("USR2 lines", 2, || lines_starting(&app_log, "USR2 ").len(), context);
    agent.assert_running();
    // SIGHUP reloads zkrender's own config; it is not forwarded.
    agent.signal(Signal::SIGHUP);
    agent.wait_for_log("reloading the configuration", T);
    std::thread::sleep(SETTLE);
    assert!(lines_starting(&app_log, "HUP ").is_empty(), "SIGHUP was forwarded\n{}", context());
    agent.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_restart_true_restarts_the_child_on_change() {
    let env = Env::new("exec-restart").await;
    let a = env.path("a.conf");
    let app_log = env.path("app.log");
    env.set("/app/a", "A1").await;
    fs::write(&a, "A1").unwrap(); // up to date: the first render fires no reload
    let cfg = env.write_config(&format!(
        "[[file]]\ndest = {a:?}\nznode = \"/app/a\"\n[file.reload]\nrestart = true\n"
    ));
    let agent = exec_agent(&cfg, &[], &app_script(&app_log, &[&a]));
    let first = wait_ready(&app_log, 1, &agent);
    let starts = || lines_starting(&app_log, "start ").len();
    let context = || format!("app log:\n{}\nzkrender log:\n{}", read(&app_log), agent.log());
    assert_eq!(agent.log().matches("started the child").count(), 1, "{}", context());

    env.set("/app/a", "A2").await;
    wait_for_file(&a, b"A2", T);
    let second = wait_ready(&app_log, 2, &agent);
    expect_exactly("child starts after one change", 2, starts, context);
    assert_ne!(first, second, "a restart makes a new process");
    assert_eq!(lines_starting(&app_log, "TERM "), vec![format!("TERM {first}")], "{}", context());
    assert!(lines_starting(&app_log, "start ")[1].ends_with(" A2"), "{}", context());
    agent.assert_running();
    // zkrender now supervises the new child.
    agent.signal(Signal::SIGTERM);
    let status = agent.wait_exit(T);
    assert_eq!(status.code(), Some(7), "{}", context());
    assert_eq!(lines_starting(&app_log, "TERM ").last().cloned(), Some(format!("TERM {second}")));
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_exits_with_the_code_of_a_child_that_exits_by_itself() {
    let env = Env::new("exec-child-exit").await;
    let a = env.path("a.conf");
    let app_log = env.path("app.log");
    env.set("/app/a", "A1").await;
    let cfg = env.write_config(&format!("[[file]]\ndest = {a:?}\nznode = \"/app/a\"\n"));
    let script =
        format!("echo \"start $(cat '{}')\" >> '{}'; sleep 0.2; exit 3", a.display(), app_log.display());
    let agent = exec_agent(&cfg, &[], &script);
    let status = agent.wait_exit(T);
    assert_eq!(read(&app_log), "start A1\n");
    assert_eq!(status.code(), Some(3), "log:\n{}", agent.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_exits_128_plus_the_signal_that_killed_the_child() {
    let env = Env::new("exec-child-killed").await;
    let a = env.path("a.conf");
    env.set("/app/a", "A1").await;
    let cfg = env.write_config(&format!("[[file]]\ndest = {a:?}\nznode = \"/app/a\"\n"));
    let agent = exec_agent(&cfg, &[], "kill -KILL $$");
    let status = agent.wait_exit(T);
    assert_eq!(status.code(), Some(128 + 9), "log:\n{}", agent.log());
}

// ------------------------------------------------------------------ 8. exec-only reloads

#[tokio::test(flavor = "multi_thread")]
async fn run_refuses_exec_only_reloads() {
    let env = Env::new("run-exec-only").await;
    let dest = env.path("a.conf");
    for reload in ["signal = \"HUP\"", "restart = true"] {
        let cfg = env.write_config(&format!(
            "[[file]]\ndest = {dest:?}\nznode = \"/app/a\"\n[file.reload]\n{reload}\n"
        ));
        let agent = Agent::run(&cfg);
        let status = agent.wait_exit(T);
        let log = agent.log();
        assert_eq!(status.code(), Some(2), "{reload}: log:\n{log}");
        assert!(log.contains("zkrender exec"), "{reload}: the message names `zkrender exec`:\n{log}");
        assert!(log.contains(&*dest.to_string_lossy()), "{reload}: the message names the file:\n{log}");
        assert!(!dest.exists(), "{reload}: nothing is written");
    }
}

// ------------------------------------------------------------------ 9. config hot reload

#[tokio::test(flavor = "multi_thread")]
async fn config_hot_reload_keeps_the_session_and_survives_a_bad_config() {
    let env = Env::new("hot-reload").await;
    let template = env.path("a.j2");
    let (a, b, c) = (env.path("a.conf"), env.path("b.conf"), env.path("c.conf"));
    let a_reloads = env.path("a-reloads.txt");
    env.seed(&[("/app/a", b"A1"), ("/app/b", b"B1"), ("/app/c", b"C1")]).await;
    fs::write(&template, "v1 {{ znode(\"/app/a\") }}").unwrap();
    let file_a = format!(
        "[[file]]\ndest = {a:?}\ntemplate = \"a.j2\"\n[file.reload]\ncommand = [\"sh\", \"-c\", {:?}]\n",
        format!("echo r >> '{}'", a_reloads.display())
    );
    let file_b = format!("\n[[file]]\ndest = {b:?}\nznode = \"/app/b\"\n");
    let file_c = format!("\n[[file]]\ndest = {c:?}\nznode = \"/app/c\"\n");
    let cfg = env.write_config(&file_a);
    let agent = Agent::run(&cfg);
    wait_for_file(&a, b"v1 A1", T);
    let log = || agent.log();
    let a_reloaded = || read(&a_reloads).lines().count();
    expect_exactly("a.conf reloads after the first install", 1, a_reloaded, log);

    // 1. The template changes on disk: re-rendered in the same process and session.
    fs::write(&template, "v2 {{ znode(\"/app/a\") }}").unwrap();
    wait_for_file(&a, b"v2 A1", T);
    expect_exactly("a.conf reloads after the template edit", 2, a_reloaded, log);

    // 2. A new [[file]] and SIGHUP: written; a.conf is not touched.
    fs::write(&cfg, env.config().text(&format!("{file_a}{file_b}"))).unwrap();
    agent.signal(Signal::SIGHUP);
    wait_for_file(&b, b"B1", T);
    agent.wait_for_log("trigger=Sighup", T);
    assert_eq!(read(&a), "v2 A1");
    expect_exactly("a.conf reloads after adding b.conf", 2, a_reloaded, log);

    // 3. An invalid config: logged with file:line; the running config keeps working.
    let bad_text = env.config().text(&format!("{file_a}{file_b}bogus_key = 1\n"));
    let bad_line = bad_text.lines().position(|l| l.starts_with("bogus_key")).unwrap() + 1;
    fs::write(&cfg, &bad_text).unwrap();
    agent.signal(Signal::SIGHUP);
    agent.wait_for_log("new configuration is invalid", T);
    let at = format!("{}:{bad_line}:", cfg.display());
    let invalid_line =
        agent.log().lines().find(|l| l.contains("new configuration is invalid")).unwrap().to_owned();
    assert!(invalid_line.contains(&at), "the error names {at}: {invalid_line}");
    assert!(invalid_line.contains("bogus_key"), "the error names the key: {invalid_line}");
    env.set("/app/a", "A2").await;
    wait_for_file(&a, b"v2 A2", T);
    env.set("/app/b", "B2").await;
    wait_for_file(&b, b"B2", T);
    agent.assert_running();

    // 4. Fixed (and a third file added): applied.
    let applied_before = agent.log().matches("new configuration in effect").count();
    fs::write(&cfg, env.config().text(&format!("{file_a}{file_b}{file_c}"))).unwrap();
    agent.signal(Signal::SIGHUP);
    wait_for_file(&c, b"C1", T);
    agent.wait_for_log_count("new configuration in effect", applied_before + 1, T);
    env.set("/app/c", "C2").await;
    wait_for_file(&c, b"C2", T);
    env.set("/app/a", "A3").await;
    wait_for_file(&a, b"v2 A3", T);

    agent.assert_running();
    let log = agent.log();
    assert_eq!(log.matches("connected to zookeeper").count(), 1, "one session for the whole run:\n{log}");
    assert!(!log.contains("new zookeeper session"), "the session was replaced:\n{log}");
    assert_eq!(log.matches("zkrender starting").count(), 1, "the agent restarted:\n{log}");
}

/// An agent rendering `a.conf` from the template `a.j2` (`v1 {{ znode("/app/a") }}`, with
/// `/app/a` = `A1`), both beside its config; returns once the file is written.
async fn one_template_agent(env: &Env) -> (PathBuf, PathBuf, Agent) {
    let template = env.path("a.j2");
    let a = env.path("a.conf");
    env.set("/app/a", "A1").await;
    fs::write(&template, "v1 {{ znode(\"/app/a\") }}").unwrap();
    let cfg = env.write_config(&format!("[[file]]\ndest = {a:?}\ntemplate = \"a.j2\"\n"));
    let agent = Agent::run(&cfg);
    wait_for_file(&a, b"v1 A1", T);
    (template, a, agent)
}

/// The agent's threads' voluntary context switches so far: how often it went to sleep and was
/// woken.
fn wakeups(pid: u32) -> u64 {
    let tasks = fs::read_dir(format!("/proc/{pid}/task")).expect("the agent's threads");
    tasks
        .filter_map(|t| fs::read_to_string(t.ok()?.path().join("status")).ok())
        .filter_map(|status| {
            let line = status.lines().find(|l| l.starts_with("voluntary_ctxt_switches:"))?;
            line.split_whitespace().nth(1)?.parse::<u64>().ok()
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread")]
async fn appending_to_an_open_file_beside_the_config_does_not_wake_the_agent_and_a_saved_template_still_counts()
 {
    let env = Env::new("hot-reload-quiet").await;
    let (template, a, agent) = one_template_agent(&env).await;
    std::thread::sleep(SETTLE);

    // An application's log beside the config and the template, held open and appended to:
    // every write is an inotify IN_MODIFY in the watched directory. Before, each one woke the
    // agent (a read of the event, matched by name and dropped).
    let mut app_log = fs::OpenOptions::new().create(true).append(true).open(env.path("app.log")).unwrap();
    let before = wakeups(agent.pid());
    let writes = 300;
    for i in 0..writes {
        std::io::Write::write_all(&mut app_log, format!("line {i}\n").as_bytes()).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    let woke = wakeups(agent.pid()) - before;
    assert!(
        woke < writes / 5,
        "the agent woke {woke} times during {writes} writes to a file that is not its config; log:\n{}",
        agent.log()
    );

    // A template saved in place (opened, written, closed) is still picked up.
    fs::write(&template, "v2 {{ znode(\"/app/a\") }}").unwrap();
    wait_for_file(&a, b"v2 A1", T);
    drop(app_log);
    agent.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_reload_to_an_exec_only_reload_is_refused_under_run() {
    let env = Env::new("hot-reload-exec-only").await;
    let a = env.path("a.conf");
    let hook = Hook::start(None, |_, _| 200).await;
    env.set("/app/a", "A1").await;
    let good = format!(
        "[[file]]\ndest = {a:?}\nznode = \"/app/a\"\n[file.reload]\nhttp = {:?}\nretries = 0\n",
        hook.url("/-/reload")
    );
    let cfg = env.write_config(&good);
    let agent = Agent::run(&cfg);
    wait_for_file(&a, b"A1", T);
    let log = || format!("requests: {:?}\nlog:\n{}", hook.hits(), agent.log());
    expect_exactly("requests after the first install", 1, || hook.count(), log);

    // `run` refuses this config at start (exit 2); a hot reload must refuse it too.
    let exec_only =
        format!("[[file]]\ndest = {a:?}\nznode = \"/app/a\"\n[file.reload]\nsignal = \"HUP\"\nretries = 0\n");
    fs::write(&cfg, env.config().text(&exec_only)).unwrap();
    agent.signal(Signal::SIGHUP);
    agent.wait_for_log("trigger=Sighup", T);
    std::thread::sleep(SETTLE);
    assert!(
        !agent.log().contains("new configuration in effect"),
        "an exec-only reload was applied under `run`\n{}",
        log()
    );
    assert!(agent.log().contains("zkrender exec"), "the refusal names `zkrender exec`\n{}", log());
    // The previous configuration still reloads through its hook.
    env.set("/app/a", "A2").await;
    wait_for_file(&a, b"A2", T);
    expect_exactly("requests after a change", 2, || hook.count(), log);
    agent.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn hot_reload_of_a_broken_template_keeps_the_old_one() {
    let env = Env::new("hot-reload-bad-template").await;
    let (template, a, agent) = one_template_agent(&env).await;
    fs::write(&template, "v2 {{ znode(\"/app/a\") ").unwrap(); // unclosed
    agent.wait_for_log("new configuration is invalid", T);
    let line = agent.log().lines().find(|l| l.contains("new configuration is invalid")).unwrap().to_owned();
    assert!(line.contains("a.j2"), "the error names the template: {line}");
    env.set("/app/a", "A2").await;
    wait_for_file(&a, b"v1 A2", T);
    fs::write(&template, "v3 {{ znode(\"/app/a\") }}").unwrap();
    wait_for_file(&a, b"v3 A2", T);
    agent.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn identical_reloads_of_files_changed_in_one_cycle_run_once() {
    let env = Env::new("reload-dedupe").await;
    let hook = Hook::start(None, |_, _| 200).await;
    let (a, b) = (env.path("a.conf"), env.path("b.conf"));
    env.set("/app/shared", "S1").await;
    let url = hook.url("/-/reload");
    let file = |dest: &Path, prefix: &str| {
        format!(
            "[[file]]\ndest = {dest:?}\ninline = \"{prefix} {{{{ znode('/app/shared') }}}}\"\n[file.reload]\nhttp = {url:?}\n\n"
        )
    };
    let cfg = env.write_config(&format!("{}{}", file(&a, "a"), file(&b, "b")));
    let agent = Agent::run(&cfg);
    wait_for_file(&a, b"a S1", T);
    wait_for_file(&b, b"b S1", T);
    let log = || format!("requests: {:?}\nlog:\n{}", hook.hits(), agent.log());
    expect_exactly("requests after the first install of both files", 1, || hook.count(), log);
    env.set("/app/shared", "S2").await;
    wait_for_file(&a, b"a S2", T);
    wait_for_file(&b, b"b S2", T);
    expect_exactly("requests after one change to both files", 2, || hook.count(), log);
    agent.assert_running();
}
