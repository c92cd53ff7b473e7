//! Tests of the integration-test harness itself (tests/common), against a real
//! ZooKeeper started by scripts/zk.

mod common;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use nix::sys::signal::Signal;

const SECS_10: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread")]
async fn client_helpers_work_in_a_unique_chroot() {
    let zk = Zk::shared();
    assert_eq!(zk.four_letter(1, "ruok"), "imok");

    let chroot = unique_chroot("harness/helpers");
    assert!(chroot.starts_with("/it/harness-helpers-"), "{chroot}");
    let hosts = create_chroot(zk.hosts(), &chroot).await;
    assert_eq!(hosts, format!("{}{chroot}", zk.hosts()));
    let client = connect(&hosts).await;

    set(&client, "/app/db/url", b"postgres://one").await; // creates /app and /app/db
    assert_eq!(get(&client, "/app/db/url").await.as_deref(), Some(&b"postgres://one"[..]));
    set(&client, "/app/db/url", b"postgres://two").await;
    assert_eq!(get(&client, "/app/db/url").await.as_deref(), Some(&b"postgres://two"[..]));
    set(&client, "/app/db/pool", b"").await;
    assert_eq!(get(&client, "/app/db/pool").await, Some(Vec::new()));
    assert_eq!(ls(&client, "/app/db").await, Some(vec!["pool".to_string(), "url".to_string()]));
    assert_eq!(get(&client, "/app/missing").await, None);
    assert_eq!(ls(&client, "/app/missing").await, None);

    // The chroot really is a prefix on the server.
    let root = connect(zk.hosts()).await;
    assert_eq!(get(&root, &format!("{chroot}/app/db/url")).await.as_deref(), Some(&b"postgres://two"[..]));

    assert!(delete(&client, "/app/db/pool").await);
    assert!(!delete(&client, "/app/db/pool").await);
    delete_recursive(&client, "/app").await;
    assert_eq!(get(&client, "/app").await, None);
    delete_recursive(&client, "/app").await; // nothing there: no-op
    delete_recursive(&root, &chroot).await;
    assert_eq!(ls(&root, &chroot).await, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn ensemble_elects_a_new_leader_when_the_leader_dies() {
    let t0 = Instant::now();
    let zk = Zk::ensemble(3);
    eprintln!("ensemble of 3 up in {:?}", t0.elapsed());
    assert_eq!(zk.hosts().split(',').count(), 3);
    let modes: Vec<Option<String>> = (1..=3).map(|i| zk.mode(i)).collect();
    assert_eq!(modes.iter().filter(|m| m.as_deref() == Some("leader")).count(), 1, "{modes:?}");
    assert_eq!(modes.iter().filter(|m| m.as_deref() == Some("follower")).count(), 2, "{modes:?}");
    let old = zk.leader();
    assert_eq!(modes[old - 1].as_deref(), Some("leader"));

    let client = connect(zk.hosts()).await;
    set(&client, "/before", b"1").await;
    let sid = session_hex(&client);
    let on = zk.member_with_session(&sid).expect("the session is on some member");

    let t1 = Instant::now();
    zk.kill(old);
    assert_eq!(zk.pid(old), None);
    let new = zk.leader();
    eprintln!("new leader after {:?}", t1.elapsed());
    assert_ne!(new, old);
    assert_eq!(zk.mode(old), None);

    // The data survived, and the ensemble takes writes again.
    assert_eq!(get(&client, "/before").await.as_deref(), Some(&b"1"[..]));
    set(&client, "/after", b"2").await;
    // The session lives on, on a live member. (Followers drop their clients
    // too while they elect a new leader, so it may have moved even if it was
    // not on the old leader.)
    let now_on = zk.member_with_session(&sid).expect("the session is on some member");
    assert_ne!(now_on, old);
    eprintln!("session {sid} was on member {on}, now on {now_on}");

    // The killed member comes back with its data, as a follower.
    let t2 = Instant::now();
    zk.start(old);
    eprintln!("member {old} serves again after {:?}", t2.elapsed());
    assert_eq!(zk.mode(old).as_deref(), Some("follower"));
    assert!(zk.pid(old).is_some());
    assert_eq!(zk.leader(), new);
}

#[tokio::test(flavor = "multi_thread")]
async fn paused_member_is_left_out_and_rejoins() {
    let zk = Zk::ensemble(3);
    let leader = zk.leader();
    let follower = (1..=3).find(|&i| i != leader).unwrap();

    // Find connections by session id and by local port.
    let client = connect(&zk.address(follower)).await;
    assert_eq!(zk.member_with_session(&session_hex(&client)), Some(follower));
    let raw = TcpStream::connect(zk.address(leader)).unwrap();
    let local_port = raw.local_addr().unwrap().port();
    wait_until(
        || zk.member_with_local_port(local_port) == Some(leader),
        SECS_10,
        "the raw connection in cons",
    );
    drop(raw);

    let everyone = connect(zk.hosts()).await;
    zk.pause(follower);
    assert!(zk.status().lines().any(|l| l.starts_with(&format!("{follower}\t")) && l.contains("\tpaused")));
    assert_eq!(zk.mode(follower), None);
    // Two of three still make a quorum.
    let other = (1..=3).find(|&i| i != leader && i != follower).unwrap();
    let writer = connect(&zk.address(other)).await;
    set(&writer, "/while-paused", b"x").await;

    zk.resume(follower);
    wait_until(|| zk.mode(follower).as_deref() == Some("follower"), SECS_10, "the resumed member to serve");
    // It caught up.
    let reader = connect(&zk.address(follower)).await;
    reader.sync("/while-paused").await.unwrap();
    assert_eq!(get(&reader, "/while-paused").await.as_deref(), Some(&b"x"[..]));

    // restart: a new JVM, same data.
    let pid = zk.pid(follower).unwrap();
    zk.restart(follower);
    assert_ne!(zk.pid(follower), Some(pid));
    assert_eq!(zk.mode(follower).as_deref(), Some("follower"));
    assert_eq!(get(&everyone, "/while-paused").await.as_deref(), Some(&b"x"[..]));
}

#[test]
fn dropping_zk_stops_its_jvms_and_removes_its_state() {
    let t0 = Instant::now();
    let zk = Zk::standalone();
    let up = t0.elapsed();
    assert!(zk.is_managed());
    assert_eq!(zk.leader(), 1);
    assert_eq!(zk.mode(1).as_deref(), Some("standalone"));
    let pids = zk.pids();
    assert_eq!(pids.len(), 1);
    let state = zk.state_dir().unwrap().to_path_buf();
    assert!(state.join("zk1").join("zoo.cfg").exists());
    let address = zk.address(1);

    let t1 = Instant::now();
    drop(zk);
    eprintln!("standalone up in {up:?}, down in {:?}", t1.elapsed());
    for pid in pids {
        // Gone, or at most a zombie its new parent has not reaped yet (empty cmdline).
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(cmdline.is_empty(), "pid {pid} still runs: {}", String::from_utf8_lossy(&cmdline));
    }
    assert!(!state.exists(), "{} is left over", state.display());
    assert!(TcpStream::connect(&address).is_err(), "something still listens on {address}");
}

#[test]
fn agent_runs_a_program_and_stops_it() {
    let script = r#"trap 'echo got-hup >&2' HUP
        trap 'echo bye >&2; exit 3' TERM
        echo starting >&2
        echo out
        while :; do sleep 0.02; done"#;
    let agent = Agent::start_program("sh", ["-c", script], &[]);
    assert!(agent.pid() > 0);
    agent.wait_for_log("starting", SECS_10);
    assert!(agent.is_running());
    agent.signal(Signal::SIGHUP);
    agent.wait_for_log("got-hup", SECS_10);
    agent.signal(Signal::SIGHUP);
    agent.wait_for_log_count("got-hup", 2, SECS_10);
    let status = agent.stop();
    assert_eq!(status.code(), Some(3), "log:\n{}", agent.log());
    assert!(agent.log().ends_with("bye\n"), "{}", agent.log());
    assert_eq!(agent.stdout(), "out\n");
    assert!(!agent.is_running());
    assert_eq!(agent.stop().code(), Some(3)); // idempotent
}

#[test]
#[should_panic(expected = "exited (exit status: 0) having logged \"never\" 0 of 1 times")]
fn agent_wait_for_log_fails_fast_when_the_process_exits() {
    let agent = Agent::start_program("sh", ["-c", "echo something else >&2"], &[]);
    agent.wait_for_log("never", Duration::from_secs(30));
}

#[test]
fn agent_drop_kills_the_process() {
    let agent = Agent::start_program("sleep", ["30"], &[]);
    let pid = agent.pid();
    drop(agent);
    assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "pid {pid} survived the drop");
}

#[test]
fn agent_starts_the_built_binary() {
    // The real agent; `--version` must exit 0 (no ZooKeeper needed).
    let agent = Agent::start(["--version"]);
    let status = agent.wait_exit(SECS_10);
    assert!(status.success(), "zkrender --version: {status}; stderr:\n{}", agent.log());
}

#[test]
fn wait_for_file_sees_a_late_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_config(dir.path(), "[zookeeper]\n");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "[zookeeper]\n");
    let target = dir.path().join("out.conf");
    let writer = {
        let target = target.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write(target, b"late").unwrap();
        })
    };
    wait_for_file(&target, b"late", SECS_10);
    writer.join().unwrap();
    std::fs::remove_file(&target).unwrap();
    wait_for_no_file(&target, SECS_10);
}

#[test]
#[should_panic(expected = "did not become \"wanted\" within 50ms; it is \"actual\"")]
fn wait_for_file_shows_the_actual_contents() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f");
    std::fs::write(&path, "actual").unwrap();
    wait_for_file(&path, b"wanted", Duration::from_millis(50));
}

#[test]
#[should_panic(expected = "timed out after 20ms waiting for the impossible")]
fn wait_until_names_what_it_waited_for() {
    wait_until(|| false, Duration::from_millis(20), "the impossible");
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

#[test]
fn agent_drop_kills_its_process_group_and_children_that_left_it() {
    let dir = tempfile::tempdir().unwrap();
    let (in_group, escaped) = (dir.path().join("in-group"), dir.path().join("escaped"));
    // One child stays in the agent's process group; one leaves it (a session of its own),
    // as a check or reload command run in a group of its own does.
    let script = r#"sleep 60 & echo $! > "$1"; setsid sleep 60 & echo $! > "$2"; wait"#;
    let args = ["-c", script, "sh", in_group.to_str().unwrap(), escaped.to_str().unwrap()];
    let agent = Agent::start_program("sh", args, &[]);
    let pid_in = |path: &std::path::Path| std::fs::read_to_string(path).ok()?.trim().parse::<i32>().ok();
    wait_until(|| pid_in(&in_group).is_some() && pid_in(&escaped).is_some(), SECS_10, "both children");
    let pids = [pid_in(&in_group).unwrap(), pid_in(&escaped).unwrap()];
    assert!(pids.iter().all(|&p| alive(p)), "the children did not start: {pids:?}");
    drop(agent);
    // Killed; their new parent (init or a subreaper) reaps them soon after.
    wait_until(|| !pids.iter().any(|&p| alive(p)), SECS_10, "the children to be gone");
}

#[test]
fn config_builder_writes_both_sections_then_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let config = ConfigBuilder::new(dir.path(), "127.0.0.1:2181/it/x")
        .zookeeper("session_timeout = \"5s\"")
        .zookeeper("watch = \"persistent\"\n")
        .agent("resync = \"1s\"")
        .listen("127.0.0.1:0");
    let expected = "[zookeeper]\nhosts = \"127.0.0.1:2181/it/x\"\nsession_timeout = \"5s\"\n\
                    watch = \"persistent\"\n\n[agent]\nlisten = \"127.0.0.1:0\"\nresync = \"1s\"\n\n\
                    [[file]]\n";
    assert_eq!(config.text("[[file]]\n"), expected);
    let path = config.write("[[file]]\n");
    assert_eq!(path, dir.path().join("zkrender.toml"));
    assert_eq!(std::fs::read_to_string(&path).unwrap(), expected);
}

#[tokio::test(flavor = "multi_thread")]
async fn env_keeps_a_test_to_its_own_chroot_and_directory() {
    let env = Env::new("harness-env").await;
    assert!(env.chroot().starts_with("/it/harness-env-"), "{}", env.chroot());
    env.seed(&[("/app/a", b"1"), ("/app/b", b"2")]).await;
    let root = connect(env.hosts()).await;
    let under_chroot = format!("{}/app", env.chroot());
    assert_eq!(ls(&root, &under_chroot).await, Some(vec!["a".to_string(), "b".to_string()]));
    assert_eq!(get(env.client(), "/app/a").await.as_deref(), Some(&b"1"[..]));
    env.delete("/app/a").await;
    assert_eq!(get(&root, &format!("{under_chroot}/a")).await, None);
    let config = std::fs::read_to_string(env.write_config("")).unwrap();
    assert!(config.contains(&format!("chroot = {:?}", env.chroot())), "{config}");
    assert!(env.path("x").starts_with(env.dir()));
}
