//! A failed install recovers by itself, and the agent says the file is stale (issue 9, 1).
//!
//! Every agent here keeps the default `resync` (10 minutes): the file must converge on the
//! agent's own retry, not on a periodic re-read or a new znode change. While the fault lasts,
//! `/readyz` stays 200 (every file was written once) but says `"degraded": true` and names
//! the file and its cause, `zkrender_file_up_to_date{dest}` is 0 and
//! `zkrender_file_stale_seconds{dest}` grows between scrapes.
//!
//! The faults need root (`chattr +i` or a read-only bind mount; a tmpfs): without the means
//! a test prints why and skips, like `tests/faults_disk.rs`, whose helpers these are.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::disk::{Unwritable, can_create_in, fill, small_fs_or_skip, unwritable_or_skip};
use common::http::Endpoint;
use common::{Agent, Env, raw_file, toml_path, wait_for_file, wait_until};
use serde_json::Value;

/// How long anything that normally takes milliseconds may take.
const T: Duration = Duration::from_secs(10);

/// The promise under test: once the fault is gone, the file is right within this, with no
/// further change in ZooKeeper.
const CONVERGE: Duration = Duration::from_secs(2);

/// An agent with the HTTP endpoint and default timings, copying `/app/conf` (set to `first`)
/// to `dest`, once the file is written and `/readyz` says ready and not degraded.
async fn start(env: &Env, dest: &Path, first: &[u8]) -> (Agent, Endpoint) {
    env.set("/app/conf", first).await;
    let agent = Agent::run(&env.config().listen("127.0.0.1:0").write(&raw_file(dest, "/app/conf")));
    wait_for_file(dest, first, T);
    let ops = Endpoint::of(&agent);
    wait_until(|| ops.json("/readyz").1["degraded"] == false, T, "/readyz ready and not degraded");
    (agent, ops)
}

/// The test's environment, its destination directory `out` and the file `out/app.conf`.
async fn env_with_dest(name: &str) -> (Env, PathBuf, PathBuf) {
    let env = Env::new(name).await;
    let out = env.mkdir("out");
    let dest = out.join("app.conf");
    (env, out, dest)
}

/// For `once`: `/app/conf` set to `v1`, a config copying it to `out/app.conf`, and `out` made
/// unwritable. `None` when the test skips (see [`unwritable_or_skip`]).
async fn once_into_unwritable(name: &str) -> Option<(Env, PathBuf, PathBuf, Unwritable)> {
    let (env, out, dest) = env_with_dest(name).await;
    env.set("/app/conf", b"v1").await;
    let config = env.write_config(&raw_file(&dest, "/app/conf"));
    let guard = unwritable_or_skip(&out)?;
    Some((env, dest, config, guard))
}

/// The series of a per-file gauge.
fn series(name: &str, dest: &Path) -> String {
    format!("{name}{{dest=\"{}\"}}", dest.display())
}

/// While the fault lasts: `/readyz` 200, degraded, naming `dest` with `cause`; the file's
/// gauges say it is stale, and for longer at each scrape; readiness holds.
fn assert_stale(agent: &Agent, ops: &Endpoint, dest: &Path, cause: &str) {
    let dest_str = dest.to_str().unwrap();
    let mut body = Value::Null;
    wait_until(
        || {
            let (code, json) = ops.json("/readyz");
            assert_eq!(code, 200, "/readyz must stay 200 once every file was written: {json}");
            body = json;
            body["degraded"] == true
        },
        T,
        "/readyz to say degraded",
    );
    let stale = body["stale"].as_array().unwrap_or_else(|| panic!("no stale list: {body}\n{}", agent.log()));
    assert_eq!(stale.len(), 1, "{body}");
    assert_eq!(stale[0]["dest"], dest_str, "{body}");
    assert_eq!(stale[0]["reason"], cause, "{body}");
    assert!(stale[0]["error"].as_str().is_some_and(|e| e.contains(dest_str)), "{body}");
    assert_eq!(body["zookeeper"], "connected", "ZooKeeper is fine; the file is not: {body}");

    let (up, age) = (series("zkrender_file_up_to_date", dest), series("zkrender_file_stale_seconds", dest));
    let first = ops.metrics();
    assert_eq!(common::http::sample(&first, &up), Some(0.0), "{up}");
    assert_eq!(common::http::sample(&first, "zkrender_ready"), Some(1.0));
    let before = common::http::sample(&first, &age).unwrap_or_else(|| panic!("no {age}"));
    std::thread::sleep(Duration::from_millis(300));
    let after = ops.metric(&age).unwrap();
    assert!(after >= before + 0.25, "{age} does not grow: {before} then {after}");
}

/// Once the fault is gone: `dest` holds `expected` within [`CONVERGE`], the recovery is
/// logged once with its attempts and staleness, the error was logged once, and the agent
/// says so everywhere.
fn assert_converges(agent: &Agent, ops: &Endpoint, dest: &Path, expected: &[u8]) {
    let took = agent.wait_for_bytes(dest, expected, CONVERGE, "no converging after the fault");
    eprintln!("converged {took:?} after the fault was gone");
    agent.wait_for_log("file recovered after", T);
    let log = agent.log();
    let recovered: Vec<&str> = log.lines().filter(|l| l.contains("file recovered after")).collect();
    assert_eq!(recovered.len(), 1, "{log}");
    assert!(recovered[0].contains("attempts, stale for"), "{}", recovered[0]);
    let dest_str = dest.to_str().unwrap();
    let errors = log.lines().filter(|l| l.contains(" ERROR ") && l.contains(dest_str)).count();
    assert_eq!(errors, 1, "one error line for one cause, however many retries:\n{log}");

    wait_until(|| ops.json("/readyz").1["degraded"] == false, T, "/readyz no longer degraded");
    let (code, body) = ops.json("/readyz");
    assert_eq!((code, body.get("stale")), (200, None), "{body}");
    wait_until(
        || ops.metric(&series("zkrender_file_up_to_date", dest)) == Some(1.0),
        T,
        "zkrender_file_up_to_date back to 1",
    );
    assert_eq!(ops.metric(&series("zkrender_file_stale_seconds", dest)), Some(0.0));
    agent.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unwritable_directory_made_writable_again_converges_without_a_change() {
    let (env, out, dest) = env_with_dest("recover-unwritable").await;
    let (agent, ops) = start(&env, &dest, b"v1").await;
    let Some(guard) = unwritable_or_skip(&out) else {
        return;
    };
    env.set("/app/conf", b"v2").await;
    assert_stale(&agent, &ops, &dest, guard.cause());
    assert_eq!(fs::read(&dest).unwrap(), b"v1", "the last good file stays");

    drop(guard);
    assert!(can_create_in(&out), "{} is still unwritable", out.display());
    assert_converges(&agent, &ops, &dest, b"v2");
    agent.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_full_file_system_with_space_freed_converges_without_a_change() {
    let (env, out, dest) = env_with_dest("recover-full").await;
    let Some((mounted, _)) = small_fs_or_skip(&out, &env.path("fs.img")) else {
        return;
    };
    let (agent, ops) = start(&env, &dest, b"small").await;
    let filler = out.join("filler");
    fill(&filler);
    let mut big = b"big-".to_vec();
    big.resize(32 * 1024, b'x');
    env.set("/app/conf", &big).await;
    assert_stale(&agent, &ops, &dest, "no_space");
    assert_eq!(fs::read(&dest).unwrap(), b"small", "the last good file stays");

    fs::remove_file(&filler).unwrap();
    assert_converges(&agent, &ops, &dest, &big);
    agent.stop();
    drop(mounted);
}

/// `zkrender once -c CONFIG --timeout TIMEOUT`, started in the background.
fn once(config: &Path, timeout: &str) -> Agent {
    Agent::start([
        OsStr::new("once"),
        OsStr::new("-c"),
        config.as_os_str(),
        OsStr::new("--timeout"),
        OsStr::new(timeout),
    ])
}

#[tokio::test(flavor = "multi_thread")]
async fn once_retries_an_unwritable_directory_until_its_timeout_then_names_the_file_and_cause() {
    let Some((_env, dest, config, guard)) = once_into_unwritable("recover-once-timeout").await else {
        return;
    };
    let started = Instant::now();
    let run = once(&config, "2s");
    let status = run.wait_exit(T);
    let took = started.elapsed();
    let cause = guard.cause();
    drop(guard);
    let log = run.log();
    assert_eq!(status.code(), Some(1), "once exits 1 when a file could not be written:\n{log}");
    assert!(
        took >= Duration::from_millis(1900),
        "once gave up after {took:?}, before its 2s timeout:\n{log}"
    );
    assert!(took < Duration::from_secs(6), "once took {took:?} with --timeout 2s");
    let summary = log.lines().skip_while(|l| !l.starts_with("error:")).collect::<Vec<_>>().join("\n");
    let named = format!("{}: ", dest.display());
    assert!(summary.contains(&named), "the summary does not name the file:\n{log}");
    assert!(summary.contains(&format!("(cause: {cause})")), "the summary does not name the cause:\n{log}");
    assert!(!dest.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn once_installs_the_file_when_its_directory_becomes_writable_before_the_timeout() {
    let Some((_env, dest, config, guard)) = once_into_unwritable("recover-once-late").await else {
        return;
    };
    let run = once(&config, "20s");
    run.wait_for_log("is retried", T);
    std::thread::sleep(Duration::from_millis(500));
    run.assert_running();
    drop(guard);
    let status = run.wait_exit(T);
    assert!(status.success(), "once failed ({status}); log:\n{}", run.log());
    assert_eq!(fs::read(&dest).unwrap(), b"v1");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_check_failure_is_not_retried_for_the_same_bytes() {
    let env = Env::new("recover-check").await;
    let (dest, runs) = (env.path("app.conf"), env.path("check-runs"));
    env.set("/app/conf", b"good").await;
    let files = format!(
        "{}check = [\"sh\", \"-c\", 'echo \"$(cat \"$1\")\" >> \"$2\"; ! grep -q BAD \"$1\"', \"sh\", \"{{file}}\", {}]\n",
        raw_file(&dest, "/app/conf"),
        toml_path(&runs)
    );
    let agent = Agent::run(&env.config().listen("127.0.0.1:0").write(&files));
    wait_for_file(&dest, b"good", T);
    let ops = Endpoint::of(&agent);
    env.set("/app/conf", b"BAD").await;
    agent.wait_for_log("check_failed", T);
    // A retry would come within a second; give it three.
    std::thread::sleep(Duration::from_secs(3));
    let checked = fs::read_to_string(&runs).unwrap();
    assert_eq!(
        checked.lines().filter(|l| *l == "BAD").count(),
        1,
        "the check ran again on the same bytes:\n{checked}"
    );
    assert_eq!(fs::read(&dest).unwrap(), b"good");
    // Stale all the same: degraded, naming the cause.
    let (code, body) = ops.json("/readyz");
    assert_eq!((code, &body["degraded"]), (200, &Value::Bool(true)), "{body}");
    assert_eq!(body["stale"][0]["reason"], "check_failed", "{body}");
    agent.stop();
}
