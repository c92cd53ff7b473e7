//! `zkrender exec` killed with SIGKILL takes its application with it: the child has SIGTERM
//! as its parent-death signal (issue 9 §4), so it never runs on unsupervised.
//!
//! The built binary against the real ZooKeeper that `scripts/test` starts (`ZK_TEST_HOSTS`);
//! self-contained on purpose (no `mod common`), with a znode of its own under `/it`.

use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use zookeeper_client::{Acls, Client, CreateMode};

/// How long the application may outlive zkrender.
const GRACE: Duration = Duration::from_secs(2);

/// How long set-up steps (connect, first install, child start) may take.
const T: Duration = Duration::from_secs(20);

/// The connect string of the test server; fails, naming the script, when there is none.
fn zk_hosts() -> String {
    std::env::var("ZK_TEST_HOSTS").unwrap_or_else(|_| {
        panic!("ZK_TEST_HOSTS is not set: run this test through scripts/test, which starts ZooKeeper")
    })
}

/// Whether `pid` is gone: no such process, or a zombie waiting for its new parent to reap it.
fn gone(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return true;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

fn wait_until(mut done: impl FnMut() -> bool, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkilled_exec_takes_its_child_with_it() {
    let hosts = zk_hosts();
    let znode = format!("/it/exec-pdeathsig-{:08x}/a", rand::random::<u32>());
    let client = tokio::time::timeout(T, Client::connector().connect(&hosts))
        .await
        .expect("no ZooKeeper session in time")
        .unwrap_or_else(|e| panic!("cannot connect to ZooKeeper at {hosts}: {e}"));
    let open = CreateMode::Persistent.with_acls(Acls::anyone_all());
    client.mkdir(Path::new(&znode).parent().unwrap().to_str().unwrap(), &open).await.unwrap();
    client.create(&znode, b"A1", &open).await.unwrap();

    let dir = tempfile::Builder::new().prefix("zkr-pdeathsig-").tempdir().unwrap();
    let dest = dir.path().join("a.conf");
    let pid_file = dir.path().join("app.pid");
    let config = dir.path().join("zkrender.toml");
    fs::write(
        &config,
        format!("[zookeeper]\nhosts = {hosts:?}\n\n[agent]\nlisten = \"\"\n\n[[file]]\ndest = {dest:?}\nznode = {znode:?}\n"),
    )
    .unwrap();
    let log = dir.path().join("agent.log");
    // The app writes its pid, then becomes a long sleep under that same pid.
    let app = format!("echo $$ > '{}'; exec sleep 1000", pid_file.display());
    let mut agent = Command::new(env!("CARGO_BIN_EXE_zkrender"))
        .args(["exec", "-c", config.to_str().unwrap(), "--", "sh", "-c", &app])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let show_log = || fs::read_to_string(&log).unwrap_or_default();

    let started = wait_until(|| fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n')), T);
    if !started {
        let _ = agent.kill();
        let _ = agent.wait();
        panic!("the app did not start within {T:?}; zkrender log:\n{}", show_log());
    }
    let app_pid: i32 = fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(!gone(app_pid), "the app {app_pid} is not running; zkrender log:\n{}", show_log());

    agent.kill().unwrap(); // SIGKILL: no chance to stop the child itself
    agent.wait().unwrap();
    let ended = wait_until(|| gone(app_pid), GRACE);
    if !ended {
        let _ = kill(Pid::from_raw(app_pid), Signal::SIGKILL); // leave nothing behind
    }
    assert!(ended, "the app {app_pid} still runs {GRACE:?} after zkrender was SIGKILLed");

    let _ = client.delete(&znode, None).await;
    let _ = client.delete(Path::new(&znode).parent().unwrap().to_str().unwrap(), None).await;
}
