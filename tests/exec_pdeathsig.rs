//! `zkrender exec` killed with SIGKILL takes its application with it: the child has SIGTERM
//! as its parent-death signal (issue 9 §4), so it never runs on unsupervised.
//!
//! The built binary against the real ZooKeeper that `scripts/test` starts (`ZK_TEST_HOSTS`).

mod common;

use std::fs;
use std::time::Duration;

use common::{Agent, Env, raw_file};
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// How long the application may outlive zkrender.
const GRACE: Duration = Duration::from_secs(2);

/// How long set-up steps (connect, first install, child start) may take.
const T: Duration = Duration::from_secs(20);

/// Whether `pid` is gone: no such process, or a zombie waiting for its new parent to reap it.
fn gone(pid: i32) -> bool {
    if kill(Pid::from_raw(pid), None).is_err() {
        return true;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_sigkilled_exec_takes_its_child_with_it() {
    let env = Env::new("exec-pdeathsig").await;
    env.set("/a", "A1").await;
    let dest = env.path("a.conf");
    let pid_file = env.path("app.pid");
    let config = env.config().write(&raw_file(&dest, "/a"));
    // The app writes its pid, then becomes a long sleep under that same pid.
    let app = format!("echo $$ > '{}'; exec sleep 1000", pid_file.display());
    let agent = Agent::start(["exec", "-c", config.to_str().unwrap(), "--", "sh", "-c", app.as_str()]);

    common::wait_until(
        || fs::read_to_string(&pid_file).is_ok_and(|s| s.ends_with('\n')),
        T,
        "the app to write its pid file",
    );
    let app_pid: i32 = fs::read_to_string(&pid_file).unwrap().trim().parse().unwrap();
    assert!(!gone(app_pid), "the app {app_pid} is not running; zkrender log:\n{}", agent.log());

    agent.kill(); // SIGKILL: no chance to stop the child itself
    let deadline = std::time::Instant::now() + GRACE;
    while !gone(app_pid) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(gone(app_pid), "the app {app_pid} still runs {GRACE:?} after zkrender was SIGKILLed");
}
