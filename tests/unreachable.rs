//! ZooKeeper unreachable (issue 9, section 3): one clear cause per host, then quiet.
//!
//! - A refused connection, a name that does not resolve and a TLS handshake that fails are
//!   each named in the first error line (`127.0.0.1:1: connection refused`, ...); then at
//!   most one reminder a minute, and one line when connected.
//! - `/readyz` (503 before ready) says `"reason": "zookeeper"` with that cause, and so do
//!   `/status` and `zkrender status`.
//! - `once` and `exec` keep trying for their whole `--timeout`.

mod common;

use std::ffi::OsStr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::http::Endpoint;
use common::{Agent, ConfigBuilder, Env, Zk, raw_file, run_ok, wait_until};

const WAIT: Duration = Duration::from_secs(20);

/// Lines of `log` that contain `needle`.
fn count(log: &str, needle: &str) -> usize {
    log.lines().filter(|l| l.contains(needle)).count()
}

/// A server that is down when the agent starts: one error line naming "connection refused"
/// (no more than 2 such lines in 10 s), `/readyz` 503 with reason `zookeeper` and the cause,
/// `/status` and `zkrender status` show it; once the server starts, one line says so.
#[tokio::test(flavor = "multi_thread")]
async fn refused_is_named_once_then_quiet_until_connected() {
    let zk = Zk::standalone();
    let env = Env::on(&zk, "unreach-refused").await;
    env.set("/a", "v1").await;
    let address = zk.address(1);
    zk.kill(1);
    let dest = env.path("a.conf");
    let config = ConfigBuilder::new(env.dir(), &env.chrooted_hosts())
        .listen("127.0.0.1:0")
        .write(&raw_file(&dest, "/a"));
    let started = Instant::now();
    let agent = Agent::run(&config);
    let ops = Endpoint::of(&agent);
    let cause = format!("{address}: connection refused");
    agent.wait_for_log(&cause, WAIT);
    let first = agent.log().lines().find(|l| l.contains(&cause)).unwrap().to_owned();
    assert!(first.contains("ERROR") && first.contains("cannot connect to zookeeper"), "{first}");

    // The report follows the log line at once (a new cause is published without delay).
    wait_until(
        || ops.json("/readyz").1["reason"] == "zookeeper",
        Duration::from_secs(2),
        "/readyz names zookeeper",
    );
    let (code, ready) = ops.json("/readyz");
    assert_eq!(code, 503, "{ready}");
    assert_eq!(ready["reason"], "zookeeper", "{ready}");
    assert_eq!(ready["error"], cause.as_str(), "{ready}");
    assert_eq!(ready["pending"][0]["reason"], "zookeeper", "{ready}");
    let (_, status) = ops.json("/status");
    assert_eq!(status["zookeeper"]["error"], cause.as_str(), "{status}");
    let table = run_ok(Command::new(env!("CARGO_BIN_EXE_zkrender")).args([
        OsStr::new("status"),
        OsStr::new("--listen"),
        OsStr::new(ops.addr()),
    ]));
    let table = String::from_utf8_lossy(&table.stdout).into_owned();
    assert!(table.contains(&format!("zookeeper unreachable: {cause}")), "{table}");

    // Quiet: the agent keeps retrying (every 2 s at most), but says it no more than twice.
    std::thread::sleep(Duration::from_secs(10).saturating_sub(started.elapsed()));
    let log = agent.log();
    let said = count(&log, "connection refused");
    assert!((1..=2).contains(&said), "{said} lines name the cause in 10 s:\n{log}");
    assert!(!log.contains("no available hosts"), "the client's vague words reached the log:\n{log}");
    assert!(!dest.exists(), "written without ZooKeeper");

    zk.start(1);
    agent.wait_for_log("connected to zookeeper", WAIT);
    common::wait_for_file(&dest, b"v1", WAIT);
    let log = agent.log();
    assert_eq!(count(&log, "connected to zookeeper"), 1, "{log}");
    let connected = log.lines().find(|l| l.contains("connected to zookeeper")).unwrap();
    assert!(connected.contains("failed_attempts=") && connected.contains("unreachable_for="), "{connected}");
    assert!(!connected.contains("failed_attempts=0"), "{connected}");
    wait_until(|| ops.json("/readyz").0 == 200, WAIT, "/readyz 200 once written");
    let (_, status) = ops.json("/status");
    assert!(status["zookeeper"].get("error").is_none(), "the cause stays after connecting: {status}");
    assert_eq!(agent.stop().code(), Some(0), "{}", agent.log());
}

/// A host name that does not resolve is named so, beside the other hosts' causes.
#[tokio::test(flavor = "multi_thread")]
async fn unresolvable_name_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let hosts = format!("zk-1.zkrender-test.invalid:2181,127.0.0.1:{port}");
    let config = ConfigBuilder::new(dir.path(), &hosts).write(&raw_file(&dir.path().join("a.conf"), "/a"));
    let agent = Agent::run(&config);
    agent.wait_for_log("zk-1.zkrender-test.invalid:2181: name does not resolve", WAIT);
    let log = agent.log();
    let line = log.lines().find(|l| l.contains("name does not resolve")).unwrap();
    assert!(line.contains(&format!("127.0.0.1:{port}: connection refused")), "{line}");
    assert!(line.contains("ERROR"), "{line}");
    assert_eq!(agent.stop().code(), Some(0), "{}", agent.log());
}

/// Runs zkrender with `args` (after them `--timeout 3s` unless `args` has one) against an
/// unreachable ZooKeeper and asserts that it ends within [3 s, 6 s): it tried for its whole
/// timeout. Returns its exit code and log.
fn run_for_its_timeout(args: &[&OsStr], what: &str) -> (Option<i32>, String) {
    let mut args = args.to_vec();
    if !args.contains(&OsStr::new("--timeout")) {
        args.extend([OsStr::new("--timeout"), OsStr::new("3s")]);
    }
    let started = Instant::now();
    let agent = Agent::start(args);
    let status = agent.wait_exit(Duration::from_secs(15));
    let took = started.elapsed();
    let log = agent.log();
    assert!(took >= Duration::from_secs(3) && took < Duration::from_secs(6), "{what} took {took:?}:\n{log}");
    (status.code(), log)
}

/// `once --timeout 3s` keeps trying for the whole 3 s (it gave up after 1.8 s), then exits 1
/// naming the cause.
#[test]
fn once_tries_for_its_whole_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let config = ConfigBuilder::new(dir.path(), &format!("127.0.0.1:{port}"))
        .write(&raw_file(&dir.path().join("a.conf"), "/a"));
    let (code, log) =
        run_for_its_timeout(&[OsStr::new("once"), OsStr::new("-c"), config.as_os_str()], "once");
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains(&format!("127.0.0.1:{port}: connection refused")), "{log}");
}

/// `exec --timeout 3s` waits the whole 3 s for ZooKeeper, names the cause, and never starts
/// the child.
#[test]
fn exec_tries_for_its_whole_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let marker = dir.path().join("child-ran");
    let config = ConfigBuilder::new(dir.path(), &format!("127.0.0.1:{port}"))
        .write(&raw_file(&dir.path().join("a.conf"), "/a"));
    let args =
        [OsStr::new("exec"), OsStr::new("-c"), config.as_os_str(), OsStr::new("--timeout"), OsStr::new("3s")];
    let (code, log) = run_for_its_timeout(
        &[&args[..], &[OsStr::new("--"), OsStr::new("touch"), marker.as_os_str()]].concat(),
        "exec",
    );
    assert_ne!(code, Some(0), "{log}");
    assert!(log.contains(&format!("no ZooKeeper session: 127.0.0.1:{port}: connection refused")), "{log}");
    assert!(!marker.exists(), "the child ran without its files");
}

/// TLS on, against ZooKeeper's plain port: the TLS handshake is named as the cause.
#[tokio::test(flavor = "multi_thread")]
async fn tls_to_a_plain_port_names_the_handshake() {
    let env = Env::new("unreach-tls").await;
    // Any CA will do: the server never gets as far as showing a certificate.
    common::make_self_signed_ca(env.dir(), "ca", "unreachable test CA", "1", &[]);
    let tls = format!("tls = {{ ca = {:?} }}", env.path("ca.pem"));
    let config = ConfigBuilder::new(env.dir(), env.hosts())
        .zookeeper(&tls)
        .write(&raw_file(&env.path("a.conf"), "/a"));
    let agent = Agent::run(&config);
    agent.wait_for_log("TLS handshake failed", WAIT);
    let log = agent.log();
    let line = log.lines().find(|l| l.contains("TLS handshake failed")).unwrap();
    let host = env.hosts().split(',').next().unwrap();
    assert!(line.contains(&format!("{host}: TLS handshake failed")), "{line}");
    assert!(line.contains("ERROR"), "{line}");
    assert_eq!(agent.stop().code(), Some(0), "{}", agent.log());
}
