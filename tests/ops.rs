//! The agent's operations side end to end: the real `zkrender run` binary against a real
//! ZooKeeper, observed through its HTTP endpoint (`/healthz`, `/readyz`, `/metrics`,
//! `/status`), the `zkrender status` command and the systemd notification socket.
//!
//! Every agent listens on `127.0.0.1:0`; the bound address is read from its log line
//! `serving /healthz /readyz /metrics /status listen=ADDR`. Each test runs its own agent,
//! so the agent's process-global metrics belong to that test alone and deltas are exact.

mod common;

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;

/// Generous bound for anything that normally takes milliseconds.
const T: Duration = Duration::from_secs(15);

const LISTEN_LOG: &str = "serving /healthz /readyz /metrics /status";

// ------------------------------------------------------------------ helpers

/// The config of every agent here: ZooKeeper at `hosts` (with the chroot, if any, in the
/// connect string), no quiet period and the endpoint on an ephemeral loopback port.
fn ops_config(dir: &Path, hosts: &str) -> ConfigBuilder {
    ConfigBuilder::new(dir, hosts)
        .zookeeper("session_timeout = \"10s\"")
        .agent("wait = \"0ms\"")
        .listen("127.0.0.1:0")
}

/// `files` (TOML) with `DIR` replaced by `dir`.
fn in_dir(dir: &Path, files: &str) -> String {
    files.replace("DIR", &dir.display().to_string())
}

/// The config text of an agent for `env`, then `files` (with `DIR`: its directory).
fn config_text(env: &Env, files: &str) -> String {
    ops_config(env.dir(), &env.chrooted_hosts()).text(&in_dir(env.dir(), files))
}

/// Writes [`config_text`] to `zkrender.toml` in the test's directory.
fn config(env: &Env, files: &str) -> PathBuf {
    write_config(env.dir(), &config_text(env, files))
}

/// The address the agent bound, parsed from its log.
fn bound_addr(agent: &Agent) -> String {
    agent.wait_for_log(LISTEN_LOG, T);
    let log = agent.log();
    let line = log.lines().find(|l| l.contains(LISTEN_LOG)).expect("the line just waited for");
    line.split_whitespace()
        .find_map(|word| word.strip_prefix("listen="))
        .unwrap_or_else(|| panic!("no listen= in {line:?}"))
        .trim_matches('"')
        .to_string()
}

/// An HTTP client for one agent's endpoint.
#[derive(Clone)]
struct Ops {
    base: String,
    client: reqwest::Client,
}

impl Ops {
    fn new(addr: &str) -> Ops {
        let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap();
        Ops { base: format!("http://{addr}"), client }
    }

    async fn get(&self, path: &str) -> (u16, String) {
        let response = self
            .client
            .get(format!("{}{path}", self.base))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let status = response.status().as_u16();
        (status, response.text().await.unwrap())
    }

    async fn json(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.get(path).await;
        let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body:?}"));
        (status, json)
    }

    async fn status(&self) -> Value {
        let (code, json) = self.json("/status").await;
        assert_eq!(code, 200, "/status: {json}");
        json
    }

    async fn metrics(&self) -> Metrics {
        let (code, text) = self.get("/metrics").await;
        assert_eq!(code, 200, "/metrics: {text}");
        Metrics(text)
    }
}

/// One scrape of `/metrics`.
struct Metrics(String);

impl Metrics {
    /// The value of the sample `series` (name plus labels exactly as exposed), if present.
    fn get(&self, series: &str) -> Option<f64> {
        self.0.lines().find_map(|line| {
            let value = line.strip_prefix(series)?.strip_prefix(' ')?;
            Some(value.split_whitespace().next()?.parse().unwrap())
        })
    }

    /// Like [`Metrics::get`], panicking with the scrape when the series is absent.
    fn value(&self, series: &str) -> f64 {
        self.get(series).unwrap_or_else(|| panic!("no {series} in /metrics:\n{}", self.0))
    }
}

/// Polls `probe` every 20 ms until it returns `Some`; panics after `timeout`.
async fn eventually<R>(what: &str, timeout: Duration, mut probe: impl AsyncFnMut() -> Option<R>) -> R {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The entry of `/status` (or `/readyz` pending list) whose `dest` is `dest`.
fn file_entry<'a>(files: &'a Value, dest: &Path) -> Option<&'a Value> {
    let dest = dest.display().to_string();
    files.as_array()?.iter().find(|f| f["dest"] == dest.as_str())
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Runs `zkrender ARGS` to completion.
fn zkrender(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zkrender"))
        .args(args)
        .env_remove("ZKRENDER_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .expect("cannot run zkrender")
}

/// A loopback address on which nothing listens (bound, then released).
fn free_addr() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

/// Every datagram that arrives on `socket` within `window`.
fn drain(socket: &UnixDatagram, window: Duration) -> Vec<String> {
    let deadline = Instant::now() + window;
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return received;
        }
        socket.set_read_timeout(Some(left)).unwrap();
        match socket.recv(&mut buf) {
            Ok(n) => received.push(String::from_utf8_lossy(&buf[..n]).into_owned()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return received;
            }
            Err(e) => panic!("recv on the notify socket: {e}"),
        }
    }
}

fn has_ready(messages: &[String]) -> bool {
    messages.iter().any(|m| m.lines().any(|l| l == "READY=1"))
}

/// Waits until the agent has logged `sighups` SIGHUP-triggered config reloads and every
/// reload attempt it logged has finished, with no new attempt for 500 ms; returns how many
/// attempts were refused and how many applied.
fn config_reload_attempts(agent: &Agent, sighups: usize) -> (usize, usize) {
    agent.wait_for_log_count("reloading the configuration trigger=Sighup", sighups, T);
    let count = |log: &str| {
        let started = log.matches("reloading the configuration").count();
        let invalid = log.matches("new configuration is invalid").count();
        let applied = log.matches("new configuration in effect").count();
        (started, invalid, applied)
    };
    let deadline = Instant::now() + T;
    let mut last = (usize::MAX, 0, 0);
    let mut stable_since = Instant::now();
    loop {
        let now = count(&agent.log());
        if now != last {
            last = now;
            stable_since = Instant::now();
        }
        let (started, invalid, applied) = now;
        if started == invalid + applied && stable_since.elapsed() > Duration::from_millis(500) {
            return (invalid, applied);
        }
        assert!(Instant::now() < deadline, "config reloads did not finish: {now:?}; log:\n{}", agent.log());
        std::thread::sleep(Duration::from_millis(20));
    }
}

// ------------------------------------------------------------------ 1. readiness

#[tokio::test(flavor = "multi_thread")]
async fn readyz_flips_exactly_when_the_last_pending_file_is_written() {
    let env = Env::new("ops-readyz").await;
    env.set("/app/ok", b"ok\n").await;
    let d = env.dir();
    let cfg = config(
        &env,
        r#"
[[file]]
dest = "DIR/ok.txt"
znode = "/app/ok"

[[file]]
dest = "DIR/late.txt"
znode = "/app/late"

[[file]]
dest = "DIR/late.conf"
inline = "late={{ znode('/app/late') }}\n"
"#,
    );
    let agent = Agent::run(&cfg);
    let ops = Ops::new(&bound_addr(&agent));
    wait_for_file(d.join("ok.txt"), b"ok\n", T);

    // 503, naming both files of the missing znode (and not the written one), with why.
    let (late_txt, late_conf) = (d.join("late.txt"), d.join("late.conf"));
    let body = eventually("/readyz to name both late files as znode_missing", T, async || {
        let (code, body) = ops.json("/readyz").await;
        assert_eq!(code, 503, "not ready yet: {body}");
        let pending = &body["pending"];
        let both = [&late_txt, &late_conf]
            .iter()
            .all(|p| file_entry(pending, p).is_some_and(|f| f["reason"] == "znode_missing"));
        both.then_some(body)
    })
    .await;
    assert_eq!(body["ready"], false, "{body}");
    let pending = body["pending"].as_array().unwrap();
    assert_eq!(pending.len(), 2, "{body}");
    assert!(file_entry(&body["pending"], &d.join("ok.txt")).is_none(), "{body}");
    for entry in pending {
        let error = entry["error"].as_str().unwrap_or_default();
        assert!(error.contains("/app/late"), "the error should name the znode: {entry}");
    }
    assert!(!late_txt.exists() && !late_conf.exists());

    // Probe /readyz in a tight loop while the znode appears. Each probe checks the files
    // *after* the answer: a 200 must never be seen before both files are on disk.
    let stop = Arc::new(AtomicBool::new(false));
    let prober = {
        let (ops, stop) = (ops.clone(), stop.clone());
        let (a, b) = (late_txt.clone(), late_conf.clone());
        tokio::spawn(async move {
            let mut samples: Vec<(bool, u16, Instant)> = Vec::new();
            let mut ok_since: Option<Instant> = None;
            while !stop.load(Ordering::SeqCst) {
                let (code, _) = ops.get("/readyz").await;
                let written = a.exists() && b.exists();
                samples.push((written, code, Instant::now()));
                // Keep probing a little after the first 200, to see it stay.
                if code == 200
                    && ok_since.get_or_insert_with(Instant::now).elapsed() > Duration::from_millis(200)
                {
                    break;
                }
            }
            samples
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    env.set("/app/late", b"L").await;
    wait_for_file(&late_txt, b"L", T);
    wait_for_file(&late_conf, b"late=L\n", T);
    let samples = match tokio::time::timeout(T, prober).await {
        Ok(joined) => joined.unwrap(),
        Err(_) => {
            stop.store(true, Ordering::SeqCst);
            panic!("/readyz never answered 200 within {T:?} of both files being written");
        }
    };

    let early: Vec<_> = samples.iter().filter(|(written, code, _)| !written && *code == 200).collect();
    assert!(early.is_empty(), "/readyz answered 200 before both files existed: {} samples", early.len());
    assert!(samples.iter().any(|(w, c, _)| !w && *c == 503), "no 503 probe before the write");
    let first_written = samples.iter().find(|(w, _, _)| *w).map(|s| s.2).unwrap();
    let first_ok = samples.iter().find(|(_, c, _)| *c == 200).map(|s| s.2).unwrap();
    assert!(
        first_ok.saturating_duration_since(first_written) < Duration::from_secs(1),
        "/readyz took {:?} after the files were written to turn 200",
        first_ok.saturating_duration_since(first_written)
    );
    let after: Vec<u16> = samples.iter().filter(|s| s.2 >= first_ok).map(|s| s.1).collect();
    assert!(after.iter().all(|&c| c == 200), "/readyz went back to 503 after 200: {after:?}");
    eprintln!("readyz probes: {} (first 200 {:?} after the files)", samples.len(), first_ok - first_written);

    let (code, body) = ops.json("/readyz").await;
    assert_eq!(code, 200);
    assert_eq!(body, serde_json::json!({"ready": true, "degraded": false, "zookeeper": "connected"}));
    agent.stop();
}

// ------------------------------------------------------------------ 2. degraded

#[tokio::test(flavor = "multi_thread")]
async fn zookeeper_outage_keeps_readyz_200_but_degraded() {
    let zk = Zk::standalone();
    let env = Env::on(&zk, "ops-degraded").await;
    env.set("/app/v", b"1").await;
    let d = env.dir();
    let cfg = config(&env, "[[file]]\ndest = \"DIR/v.txt\"\nznode = \"/app/v\"\n");
    let agent = Agent::run(&cfg);
    let ops = Ops::new(&bound_addr(&agent));
    wait_for_file(d.join("v.txt"), b"1", T);
    eventually("ready", T, async || (ops.get("/readyz").await.0 == 200).then_some(())).await;
    assert_eq!(ops.metrics().await.value("zkrender_zk_connected"), 1.0);

    zk.kill(1);
    let body = eventually("/readyz degraded", Duration::from_secs(10), async || {
        let (code, body) = ops.json("/readyz").await;
        assert_eq!(code, 200, "/readyz must stay 200 once ready: {body}");
        (body["degraded"] == true).then_some(body)
    })
    .await;
    assert_eq!(body["ready"], true);
    assert_ne!(body["zookeeper"], "connected", "{body}");
    // It stays so during the outage, and liveness does not care.
    for _ in 0..10 {
        let (code, body) = ops.json("/readyz").await;
        assert_eq!((code, &body["degraded"]), (200, &Value::Bool(true)), "{body}");
        assert_eq!(ops.get("/healthz").await, (200, "ok\n".to_string()));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let m = ops.metrics().await;
    assert_eq!(m.value("zkrender_zk_connected"), 0.0);
    assert_eq!(m.value("zkrender_ready"), 1.0);
    let status = ops.status().await;
    assert_eq!(status["degraded"], true);
    assert_ne!(status["zookeeper"]["state"], "connected");

    zk.start(1);
    let body = eventually("/readyz not degraded after the restart", T, async || {
        let (code, body) = ops.json("/readyz").await;
        assert_eq!(code, 200, "{body}");
        (body["degraded"] == false).then_some(body)
    })
    .await;
    assert_eq!(body["zookeeper"], "connected", "{body}");
    let m = ops.metrics().await;
    assert_eq!(m.value("zkrender_zk_connected"), 1.0);
    assert!(m.value("zkrender_zk_reconnects_total") >= 1.0);
    assert!(ops.status().await["zookeeper"]["reconnects"].as_u64().unwrap() >= 1);

    // And it still follows ZooKeeper (through a new session: the old one may have expired).
    let client = connect(&env.chrooted_hosts()).await;
    set(&client, "/app/v", b"2").await;
    wait_for_file(d.join("v.txt"), b"2", T);
    agent.stop();
}

// ------------------------------------------------------------------ 3. metrics

#[tokio::test(flavor = "multi_thread")]
async fn metrics_move_with_changes_reloads_and_check_failures() {
    let env = Env::new("ops-metrics").await;
    env.seed(&[("/app/value", b"v1"), ("/app/raw", b"raw")]).await;
    let d = env.dir();
    let cfg = config(
        &env,
        r#"
[[file]]
dest = "DIR/app.conf"
inline = "value={{ znode('/app/value') }}\n"
check = ["sh", "-c", "! grep -q BAD \"$1\"", "check", "{file}"]

[file.reload]
command = ["sh", "-c", "echo reloaded >> DIR/reloads.log"]

[[file]]
dest = "DIR/raw.txt"
znode = "/app/raw"
"#,
    );
    let app = d.join("app.conf");
    let agent = Agent::run(&cfg);
    let ops = Ops::new(&bound_addr(&agent));
    wait_for_file(&app, b"value=v1\n", T);
    wait_for_file(d.join("raw.txt"), b"raw", T);
    // The first install reloads too; start counting once that is done.
    eventually("the first reload in /status", T, async || {
        let status = ops.status().await;
        file_entry(&status["files"], &app)?.get("last_reload").map(|_| ())
    })
    .await;

    let ok = r#"zkrender_reloads_total{kind="command",outcome="ok"}"#;
    let failed = r#"zkrender_reloads_total{kind="command",outcome="failed"}"#;
    let before = ops.metrics().await;
    assert!(before.value(ok) >= 1.0, "the first install's reload is counted");

    env.set("/app/value", b"v2").await;
    wait_for_file(&app, b"value=v2\n", T);
    let after = eventually("the reload to be counted", T, async || {
        let m = ops.metrics().await;
        (m.value(ok) > before.value(ok)).then_some(m)
    })
    .await;
    let delta = |name: &str| after.value(name) - before.value(name);
    assert_eq!(delta("zkrender_files_written_total"), 1.0);
    assert!(delta("zkrender_watch_events_total") >= 1.0);
    assert!(delta("zkrender_renders_total") >= 1.0);
    assert_eq!(delta("zkrender_render_errors_total"), 0.0);
    assert_eq!(delta("zkrender_change_to_write_seconds_count"), 1.0);
    assert_eq!(delta(ok), 1.0);
    assert_eq!(delta(failed), 0.0);
    assert!(delta("zkrender_reload_duration_seconds_count") >= 1.0);
    assert_eq!(delta("zkrender_check_failures_total"), 0.0);
    assert_eq!(after.value("zkrender_zk_connected"), 1.0);
    assert_eq!(after.value("zkrender_ready"), 1.0);
    let now = unix_now();
    for dest in [app.clone(), d.join("raw.txt")] {
        let series = format!("zkrender_file_last_write_timestamp_seconds{{dest=\"{}\"}}", dest.display());
        let at = after.value(&series);
        assert!((now - 60.0..=now + 1.0).contains(&at), "{series} = {at}, now {now}");
        let up = format!("zkrender_file_up_to_date{{dest=\"{}\"}}", dest.display());
        assert_eq!(after.value(&up), 1.0, "{up}");
    }

    // A rendering the check rejects: counted, not installed, not reloaded.
    env.set("/app/value", b"BAD").await;
    let rejected = eventually("the check failure to be counted", T, async || {
        let m = ops.metrics().await;
        (m.value("zkrender_check_failures_total") > after.value("zkrender_check_failures_total")).then_some(m)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let settled = ops.metrics().await;
    let delta = |name: &str| settled.value(name) - after.value(name);
    assert_eq!(delta("zkrender_check_failures_total"), 1.0);
    assert_eq!(delta("zkrender_files_written_total"), 0.0);
    assert_eq!(delta(ok) + delta(failed), 0.0);
    assert_eq!(read(&app), "value=v2\n");
    let up = format!("zkrender_file_up_to_date{{dest=\"{}\"}}", app.display());
    // Per-file series come from the status report, which trails a change by at most 200 ms.
    assert_eq!(settled.value(&up), 0.0, "a file the check rejected does not match ZooKeeper");
    assert!(rejected.value("zkrender_check_failures_total") >= 1.0);
    assert_eq!(read(&d.join("reloads.log")).lines().count(), 2);
    agent.stop();
}

/// A file printing 40 znodes: each line `i=VALUE`, `VALUE` from `value(i)`.
fn forty_lines(value: impl Fn(usize) -> String) -> String {
    (0..40).map(|i| format!("{i}={}\n", value(i))).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_change_to_a_printed_value_is_patched_into_the_file_and_counted() {
    let env = Env::new("ops-patched").await;
    let seed: Vec<(String, Vec<u8>)> = (0..40).map(|i| (format!("/app/k/{i}"), b"v".to_vec())).collect();
    let seed: Vec<(&str, &[u8])> = seed.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    env.seed(&seed).await;
    let cfg = config(
        &env,
        r#"
[[file]]
dest = "DIR/big.conf"
inline = "{% for i in range(40) %}{{ i }}={{ znode('/app/k/' ~ i) }}\n{% endfor %}"
"#,
    );
    let big = env.path("big.conf");
    let agent = Agent::run(&cfg);
    let ops = Ops::new(&bound_addr(&agent));
    wait_for_file(&big, forty_lines(|_| "v".into()).as_bytes(), T);
    let before = ops.metrics().await;
    assert_eq!(before.value("zkrender_renders_patched_total"), 0.0, "the first render runs the template");

    env.set("/app/k/7", "seven, a longer value").await;
    wait_for_file(
        &big,
        forty_lines(|i| if i == 7 { "seven, a longer value".into() } else { "v".into() }).as_bytes(),
        T,
    );
    env.set("/app/k/7", "").await;
    wait_for_file(&big, forty_lines(|i| if i == 7 { String::new() } else { "v".into() }).as_bytes(), T);
    env.set("/app/k/39", "last").await;
    let expected = |i| match i {
        39 => "last".to_owned(),
        7 => String::new(),
        _ => "v".to_owned(),
    };
    wait_for_file(&big, forty_lines(expected).as_bytes(), T);
    let patched = eventually("the patches to be counted", T, async || {
        let m = ops.metrics().await;
        (m.value("zkrender_files_written_total") - before.value("zkrender_files_written_total") >= 3.0)
            .then_some(m)
    })
    .await;
    let delta = |name: &str| patched.value(name) - before.value(name);
    assert!(delta("zkrender_renders_patched_total") >= 3.0, "each change was patched");
    assert_eq!(delta("zkrender_renders_patched_total"), delta("zkrender_renders_total"));

    // Deleted: the template runs and fails; the last good file stays.
    env.delete("/app/k/3").await;
    eventually("the failed render", T, async || {
        let m = ops.metrics().await;
        (m.value("zkrender_render_errors_total") > patched.value("zkrender_render_errors_total"))
            .then_some(())
    })
    .await;
    assert_eq!(read(&big), forty_lines(expected));
    env.set("/app/k/3", "back").await;
    let expected = |i| if i == 3 { "back".to_owned() } else { expected(i) };
    wait_for_file(&big, forty_lines(expected).as_bytes(), T);
    agent.stop();
}

// ------------------------------------------------------------------ 4. /status

#[tokio::test(flavor = "multi_thread")]
async fn status_json_reports_deps_writes_reloads_and_errors() {
    let env = Env::new("ops-status").await;
    env.seed(&[("/app/db", b"one"), ("/app/nodes/a", b""), ("/app/nodes/b", b"")]).await;
    let d = env.dir();
    let cfg = config(
        &env,
        r#"
[[file]]
dest = "DIR/app.conf"
inline = "db={{ znode('/app/db') }} nodes={{ children('/app/nodes') | join(',') }}\n"
check = ["sh", "-c", "! grep -q BAD \"$1\"", "check", "{file}"]

[file.reload]
command = ["sh", "-c", "test ! -e DIR/fail-reload"]
"#,
    );
    let app = d.join("app.conf");
    let started = unix_now();
    let agent = Agent::run(&cfg);
    let ops = Ops::new(&bound_addr(&agent));
    wait_for_file(&app, b"db=one nodes=a,b\n", T);

    // Deps match ZooKeeper's Stat: mzxid/version for data, pzxid/cversion for children.
    async fn expect_deps(ops: &Ops, client: &zookeeper_client::Client, dest: &Path) -> Value {
        let (_, db) = client.get_data("/app/db").await.unwrap();
        let (_, nodes) = client.get_children("/app/nodes").await.unwrap();
        eventually("the deps in /status to match ZooKeeper", T, async || {
            let status = ops.status().await;
            let file = file_entry(&status["files"], dest)?.clone();
            let deps = file["deps"].as_array()?;
            let db_dep = deps.iter().find(|d| d["znode"] == "/app/db")?;
            let nodes_dep = deps.iter().find(|d| d["znode"] == "/app/nodes")?;
            let expected_db = serde_json::json!({
                "znode": "/app/db", "kind": "data", "exists": true,
                "mzxid": db.mzxid, "version": db.version,
            });
            let expected_nodes = serde_json::json!({
                "znode": "/app/nodes", "kind": "children", "exists": true,
                "mzxid": nodes.pzxid, "version": nodes.cversion,
            });
            (deps.len() == 2 && *db_dep == expected_db && *nodes_dep == expected_nodes).then_some(file)
        })
        .await
    }

    let file = expect_deps(&ops, env.client(), &app).await;
    assert_eq!(file["state"], "ok", "{file}");
    assert_eq!(file["settled"], true, "{file}");
    let written = file["last_write"].as_f64().unwrap_or_else(|| panic!("no last_write: {file}"));
    assert!((started - 1.0..=unix_now()).contains(&written), "last_write {written}, started {started}");
    assert!(file.get("last_error").is_none() && file.get("stale_since").is_none(), "{file}");
    let reload = eventually("last_reload after the first install", T, async || {
        file_entry(&ops.status().await["files"], &app)?.get("last_reload").cloned()
    })
    .await;
    assert_eq!(reload["outcome"], "ok", "{reload}");
    assert!(reload.get("error").is_none(), "{reload}");

    // A change: new Stat, new last_write.
    env.set("/app/db", b"two").await;
    wait_for_file(&app, b"db=two nodes=a,b\n", T);
    let file = expect_deps(&ops, env.client(), &app).await;
    assert!(file["last_write"].as_f64().unwrap() >= written, "{file}");

    // A failed reload.
    std::fs::write(d.join("fail-reload"), b"").unwrap();
    env.set("/app/db", b"three").await;
    wait_for_file(&app, b"db=three nodes=a,b\n", T);
    let reload = eventually("a failed last_reload", T, async || {
        let reload = file_entry(&ops.status().await["files"], &app)?.get("last_reload")?.clone();
        (reload["outcome"] == "failed").then_some(reload)
    })
    .await;
    let error = reload["error"].as_str().unwrap_or_else(|| panic!("no error: {reload}"));
    assert!(!error.is_empty(), "{reload}");
    std::fs::remove_file(d.join("fail-reload")).unwrap();

    // A rejected rendering: failed with check_failed, the file keeps its last good contents.
    env.set("/app/db", b"BAD").await;
    let file = eventually("check_failed in /status", T, async || {
        let file = file_entry(&ops.status().await["files"], &app)?.clone();
        (file["state"] == "failed").then_some(file)
    })
    .await;
    assert_eq!(file["reason"], "check_failed", "{file}");
    assert_eq!(file["settled"], true, "{file}");
    let error = file["last_error"].as_str().unwrap_or_else(|| panic!("no last_error: {file}"));
    assert!(error.contains("check"), "{error}");
    assert!(file["stale_since"].as_f64().is_some(), "a rejected file is stale: {file}");
    assert_eq!(read(&app), "db=three nodes=a,b\n");
    expect_deps(&ops, env.client(), &app).await;
    let status = ops.status().await;
    assert_eq!(status["ready"], true, "a file written once stays ready: {status}");

    // Fixed: the error is cleared.
    env.set("/app/db", b"four").await;
    wait_for_file(&app, b"db=four nodes=a,b\n", T);
    let file = eventually("ok again in /status", T, async || {
        let file = file_entry(&ops.status().await["files"], &app)?.clone();
        (file["state"] == "ok").then_some(file)
    })
    .await;
    assert!(file.get("last_error").is_none() && file.get("reason").is_none(), "{file}");
    assert!(file.get("stale_since").is_none(), "{file}");
    agent.stop();
}

// ------------------------------------------------------------------ 5. zkrender status

#[tokio::test(flavor = "multi_thread")]
async fn status_command_prints_the_table_and_json() {
    let env = Env::new("ops-cli").await;
    env.set("/app/a", b"a").await;
    let d = env.dir();
    let cfg = config(
        &env,
        "[[file]]\ndest = \"DIR/a.txt\"\nznode = \"/app/a\"\n\n\
         [[file]]\ndest = \"DIR/b.txt\"\nznode = \"/app/b\"\n",
    );
    let agent = Agent::run(&cfg);
    let addr = bound_addr(&agent);
    let ops = Ops::new(&addr);
    wait_for_file(d.join("a.txt"), b"a", T);
    let b = d.join("b.txt");
    let status = eventually("b.txt to be reported missing", T, async || {
        let status = ops.status().await;
        (file_entry(&status["files"], &b)?["reason"] == "znode_missing").then_some(status)
    })
    .await;

    let out = zkrender(&["status", "--listen", &addr]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(stdout.starts_with("zookeeper: connected ("), "{stdout}");
    assert!(stdout.contains("ready: no (1 of 2 files pending)"), "{stdout}");
    assert!(stdout.lines().any(|l| l.starts_with("DEST ") && l.contains("STATE")), "{stdout}");
    for file in status["files"].as_array().unwrap() {
        let dest = file["dest"].as_str().unwrap();
        let row = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(dest))
            .unwrap_or_else(|| panic!("no row for {dest}:\n{stdout}"));
        let state = row.split_whitespace().nth(1).unwrap();
        assert_eq!(state, file["state"].as_str().unwrap(), "{row}");
    }
    let b_row = stdout.lines().find(|l| l.starts_with(&b.display().to_string())).unwrap();
    assert!(b_row.contains("never") && b_row.contains("/app/b"), "{b_row}");
    assert!(stdout.contains("    /app/b  missing"), "{stdout}");
    assert!(stdout.contains("    /app/a  mzxid=0x"), "{stdout}");

    let out = zkrender(&["status", "--listen", &addr, "--json"]);
    assert!(out.status.success(), "{out:?}");
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("--json: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    let dests: BTreeSet<&str> =
        json["files"].as_array().unwrap().iter().filter_map(|f| f["dest"].as_str()).collect();
    let expected: BTreeSet<String> =
        [d.join("a.txt"), b.clone()].iter().map(|p| p.display().to_string()).collect();
    assert_eq!(dests, expected.iter().map(String::as_str).collect());
    assert_eq!(json["ready"], false);
    assert_eq!(json["zookeeper"]["state"], "connected");

    // No agent there: non-zero, and the message says where it looked and what to check.
    let nobody = free_addr();
    let out = zkrender(&["status", "--listen", &nobody]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{out:?}");
    assert!(out.stdout.is_empty(), "{out:?}");
    assert!(stderr.contains(&format!("no answer from http://{nobody}/status")), "{stderr}");
    assert!(stderr.contains("listen"), "{stderr}");
    agent.stop();
}

// ------------------------------------------------------------------ 6. systemd

/// A notify socket in a fresh temp dir, and its path.
fn notify_socket() -> (tempfile::TempDir, PathBuf, UnixDatagram) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).unwrap();
    (dir, path, socket)
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_ready_is_sent_once_every_file_is_written() {
    let env = Env::new("ops-sdnotify").await;
    env.set("/app/a", b"a").await;
    let d = env.dir();
    let cfg = config(
        &env,
        "[[file]]\ndest = \"DIR/a.txt\"\nznode = \"/app/a\"\n\n\
         [[file]]\ndest = \"DIR/b.txt\"\nznode = \"/app/b\"\n",
    );
    let (_sock_dir, sock, socket) = notify_socket();
    let agent = Agent::start_with_env(
        ["run".as_ref(), "-c".as_ref(), cfg.as_os_str()],
        &[("NOTIFY_SOCKET", sock.to_str().unwrap())],
    );
    wait_for_file(d.join("a.txt"), b"a", T);
    let early = drain(&socket, Duration::from_millis(1500));
    assert!(!has_ready(&early), "READY=1 while b.txt is missing: {early:?}");

    env.set("/app/b", b"b").await;
    let deadline = Instant::now() + T;
    let mut seen = Vec::new();
    while !has_ready(&seen) && Instant::now() < deadline {
        seen.extend(drain(&socket, Duration::from_millis(200)));
    }
    assert!(has_ready(&seen), "no READY=1 within {T:?} of the last znode appearing: {seen:?}");
    assert_eq!(read(&d.join("b.txt")), "b", "READY=1 before the file was written");
    assert!(agent.is_running());
    agent.stop();
    let rest = drain(&socket, Duration::from_millis(300));
    assert!(rest.iter().any(|m| m.contains("STOPPING=1")), "no STOPPING=1 on SIGTERM: {rest:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn systemd_ready_is_not_sent_by_a_config_reload_before_ready() {
    let env = Env::new("ops-sdnotify-hup").await;
    let d = env.dir();
    let cfg = config(&env, "[[file]]\ndest = \"DIR/b.txt\"\nznode = \"/app/b\"\n");
    let (_sock_dir, sock, socket) = notify_socket();
    let agent = Agent::start_with_env(
        ["run".as_ref(), "-c".as_ref(), cfg.as_os_str()],
        &[("NOTIFY_SOCKET", sock.to_str().unwrap())],
    );
    let ops = Ops::new(&bound_addr(&agent));
    eventually("b.txt reported missing", T, async || {
        let (code, body) = ops.json("/readyz").await;
        (code == 503 && file_entry(&body["pending"], &d.join("b.txt"))?["reason"] == "znode_missing")
            .then_some(())
    })
    .await;

    // SIGHUP with the same, valid configuration: nothing is written, so not ready.
    agent.signal(Signal::SIGHUP);
    agent.wait_for_log("new configuration in effect", T);
    let seen = drain(&socket, Duration::from_millis(1000));
    assert_eq!(ops.get("/readyz").await.0, 503);
    assert!(!d.join("b.txt").exists());
    assert!(!has_ready(&seen), "READY=1 after a config reload although b.txt was never written: {seen:?}");
    agent.stop();
}

// ------------------------------------------------------------------ 7. config reloads

#[tokio::test(flavor = "multi_thread")]
async fn config_reload_outcomes_are_counted() {
    let env = Env::new("ops-hup").await;
    env.set("/app/a", b"a").await;
    let d = env.dir();
    let files = "[[file]]\ndest = \"DIR/a.txt\"\nznode = \"/app/a\"\n";
    let cfg = config(&env, files);
    let agent = Agent::run(&cfg);
    let ops = Ops::new(&bound_addr(&agent));
    wait_for_file(d.join("a.txt"), b"a", T);
    let ok = r#"zkrender_config_reloads_total{outcome="ok"}"#;
    let failed = r#"zkrender_config_reloads_total{outcome="failed"}"#;
    let before = ops.metrics().await;
    assert_eq!((before.value(ok), before.value(failed)), (0.0, 0.0));

    // Writing the file may itself trigger a reload (the agent also watches its config file),
    // so every attempt in the log must be counted, the SIGHUP one among them.
    std::fs::write(&cfg, "[zookeeper\nthis is not toml\n").unwrap();
    agent.signal(Signal::SIGHUP);
    let (invalid, applied) = config_reload_attempts(&agent, 1);
    assert_eq!(applied, 0, "a broken configuration was applied; log:\n{}", agent.log());
    let broken = eventually("the failed reloads to be counted", T, async || {
        let m = ops.metrics().await;
        (m.value(failed) >= invalid as f64).then_some(m)
    })
    .await;
    assert_eq!(broken.value(failed), invalid as f64);
    assert_eq!(broken.value(ok), 0.0);
    // Still running the old configuration.
    env.set("/app/a", b"a2").await;
    wait_for_file(d.join("a.txt"), b"a2", T);

    std::fs::write(&cfg, config_text(&env, files)).unwrap();
    agent.signal(Signal::SIGHUP);
    let (invalid_now, applied) = config_reload_attempts(&agent, 2);
    assert_eq!(invalid_now, invalid, "a valid configuration was refused; log:\n{}", agent.log());
    let fixed = eventually("the applied reloads to be counted", T, async || {
        let m = ops.metrics().await;
        (m.value(ok) >= applied as f64).then_some(m)
    })
    .await;
    assert!(applied >= 1);
    assert_eq!(fixed.value(ok), applied as f64);
    assert_eq!(fixed.value(failed), broken.value(failed));
    eprintln!("config reloads: {invalid} failed, {applied} applied (SIGHUP and file watcher)");
    agent.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn config_reload_keeps_what_status_and_metrics_know_about_written_files() {
    let env = Env::new("ops-hup-keep").await;
    env.set("/app/a", b"a").await;
    let d = env.dir();
    let cfg = config(
        &env,
        "[[file]]\ndest = \"DIR/a.txt\"\nznode = \"/app/a\"\n\n[file.reload]\ncommand = [\"true\"]\n",
    );
    let a = d.join("a.txt");
    let agent = Agent::run(&cfg);
    let ops = Ops::new(&bound_addr(&agent));
    wait_for_file(&a, b"a", T);
    let before = eventually("last_write and last_reload", T, async || {
        let file = file_entry(&ops.status().await["files"], &a)?.clone();
        (file.get("last_write").is_some() && file.get("last_reload").is_some()).then_some(file)
    })
    .await;

    // Same configuration, reloaded: nothing to write, nothing forgotten.
    agent.signal(Signal::SIGHUP);
    agent.wait_for_log("new configuration in effect", T);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let status = ops.status().await;
    let after = file_entry(&status["files"], &a).unwrap();
    assert_eq!(status["ready"], true, "{status}");
    assert_eq!(after["state"], "ok", "{after}");
    let series = format!("zkrender_file_last_write_timestamp_seconds{{dest=\"{}\"}}", a.display());
    let m = ops.metrics().await;
    assert!(
        after.get("last_write") == before.get("last_write") && m.get(&series).is_some(),
        "a config reload forgot when the file was last written: before {before}, after {after}, \
         {series} = {:?}",
        m.get(&series)
    );
    assert_eq!(after.get("last_reload"), before.get("last_reload"), "the last reload was forgotten");
    agent.stop();
}

// ------------------------------------------------------------------ 8. listen taken

#[tokio::test(flavor = "multi_thread")]
async fn taken_listen_address_stops_the_agent_naming_the_address() {
    let (taken, addr) = taken_address();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let text = ops_config(d, "127.0.0.1:1")
        .listen(&addr)
        .text(&in_dir(d, "[[file]]\ndest = \"DIR/a.txt\"\nznode = \"/app/a\"\n"));
    let cfg = write_config(d, &text);
    let agent = Agent::run(&cfg);
    let status = agent.wait_exit(T);
    let log = agent.log();
    assert!(!status.success(), "{status}; log:\n{log}");
    assert!(log.contains(&format!("binding the HTTP endpoint to {addr}")), "{log}");
    assert!(log.to_lowercase().contains("in use"), "the cause should be given: {log}");
    assert!(!d.join("a.txt").exists());
    drop(taken);
}

// ------------------------------------------------------------------ before ZooKeeper answers

#[tokio::test(flavor = "multi_thread")]
async fn readyz_names_every_file_while_zookeeper_is_unreachable() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Nothing listens there: the agent keeps trying to connect.
    let cfg =
        ops_config(d, &free_addr()).write(&in_dir(d, "[[file]]\ndest = \"DIR/a.txt\"\nznode = \"/app/a\"\n"));
    let agent = Agent::run(&cfg);
    let ops = Ops::new(&bound_addr(&agent));
    let body = eventually("/readyz to name a.txt", T, async || {
        let (code, body) = ops.json("/readyz").await;
        assert_eq!(code, 503, "{body}");
        file_entry(&body["pending"], &d.join("a.txt")).map(|_| body.clone())
    })
    .await;
    assert_eq!(body["ready"], false, "{body}");
    assert!(file_entry(&body["pending"], &d.join("a.txt")).unwrap()["reason"].is_string(), "{body}");
    assert_eq!(ops.get("/healthz").await.0, 200);
    let status = ops.status().await;
    assert_eq!(status["degraded"], false, "not ready is not degraded: {status}");
    assert_ne!(status["zookeeper"]["state"], "connected", "{status}");
    assert_eq!(ops.metrics().await.value("zkrender_zk_connected"), 0.0);
    assert_eq!(ops.metrics().await.value("zkrender_ready"), 0.0);
    agent.stop();
}
