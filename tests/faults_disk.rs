//! Fault injection on the local side: the destination's file system and the reload target.
//!
//! The promise under test (README, "What zkrender guarantees"): whatever goes wrong while
//! writing a file or reloading the application, the last good file stays in place byte for
//! byte, the failure is logged once per cause (not once per event), the agent keeps running,
//! and it recovers by itself once the fault is gone.
//!
//! * 7a: the destination directory becomes unwritable (`chattr +i`; root ignores mode bits).
//! * 7b: the destination's file system is full (a 64 KiB tmpfs, or a loop-mounted ext4).
//! * 8: the reload target is down: a dead pid, a refused HTTP port, a hanging command.
//! * 9: big and bad data: ~1 MiB znodes, binary data, invalid UTF-8, invalid JSON.
//!
//! Tests 7a and 7b need root (mount, chattr); without the means they print why and skip.
//! Every test has its own chroot and temporary directory on one ZooKeeper per test binary
//! (`ZK_TEST_HOSTS`, else one started here).

mod common;

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::disk::{can_create_in, fill, small_fs_or_skip, unwritable_or_skip};
use common::{Agent, Env, assert_file, connect, raw_file, temp_files, wait_for_file, wait_until};

/// How long any single expected effect may take.
const T: Duration = Duration::from_secs(10);
/// How long nothing more may be logged before "exactly once" is asserted: longer than the
/// `resync = "1s"` period, so that at least one anti-entropy retry falls inside it.
const SETTLE: Duration = Duration::from_millis(1500);
/// How many changes are made while a fault lasts.
const CHANGES: usize = 20;

// ------------------------------------------------------------------ fixture

/// `[agent]` for every test here: a resync period short enough that recovery without a
/// change is exercised.
const RESYNC: &str = "resync = \"1s\"";

/// After [`SETTLE`]: `dest` still holds `kept`, and exactly one ERROR line names it (one
/// line for one cause), containing each of `needed`. Returns the log, for later messages.
fn assert_kept_with_one_error(agent: &Agent, dest: &Path, kept: &[u8], needed: &[&str]) -> String {
    std::thread::sleep(SETTLE);
    let context = format!("log:\n{}", agent.log());
    assert_file(dest, kept, &context);
    let errors = error_lines(agent, dest.to_str().unwrap());
    assert_eq!(errors.len(), 1, "one error line for one cause:\n{context}");
    for needed in needed {
        assert!(errors[0].contains(needed), "the error line does not name {needed:?}: {}", errors[0]);
    }
    context
}

/// An agent writing `/app/conf` (set to `first`) to `out/app.conf`, and `/app/control`
/// (`c0`) to `control.conf` outside `out`, once both are written: (dest, control, agent).
async fn start_with_control(env: &Env, out: &Path, first: &[u8]) -> (PathBuf, PathBuf, Agent) {
    let (dest, control) = (out.join("app.conf"), env.path("control.conf"));
    env.seed(&[("/app/conf", first), ("/app/control", b"c0")]).await;
    let files = raw_file(&dest, "/app/conf") + &raw_file(&control, "/app/control");
    let agent = Agent::run(&env.config().agent(RESYNC).write(&files));
    wait_for_file(&dest, first, T);
    wait_for_file(&control, b"c0", T);
    (dest, control, agent)
}

/// The log lines at level ERROR that mention `needle` (a dest path, usually).
fn error_lines(agent: &Agent, needle: &str) -> Vec<String> {
    agent.log().lines().filter(|l| l.contains(" ERROR ") && l.contains(needle)).map(str::to_owned).collect()
}

// ------------------------------------------------------------------ 7. the destination

/// 7a. The destination directory becomes unwritable. While it is, 20 changes: the old file
/// stays, one error line for the cause, the agent runs. Writable again: the file converges
/// by itself (resync), "file recovered" is logged, and later changes apply.
#[tokio::test(flavor = "multi_thread")]
async fn unwritable_dest_dir_keeps_the_old_file_logs_once_and_recovers() {
    let env = Env::new("disk-unwritable").await;
    let out = env.mkdir("out");
    let (dest, control, agent) = start_with_control(&env, &out, b"good-0").await;

    let Some(guard) = unwritable_or_skip(&out) else {
        return;
    };
    let dest_str = dest.to_str().unwrap();
    for i in 1..=CHANGES {
        env.set("/app/conf", format!("bad-{i}").as_bytes()).await;
        std::thread::sleep(Duration::from_millis(50));
    }
    // A barrier: the control file's change comes after all of them in the session's order.
    env.set("/app/control", b"c1").await;
    wait_for_file(&control, b"c1", T);
    wait_until(|| !error_lines(&agent, dest_str).is_empty(), T, "the error about the unwritable dir");
    std::thread::sleep(SETTLE); // the 1 s resync retries the write meanwhile

    let context = format!("log:\n{}", agent.log());
    assert_file(&dest, b"good-0", &context);
    let errors = error_lines(&agent, dest_str);
    assert_eq!(errors.len(), 1, "expected one error line for one cause, got {}:\n{context}", errors.len());
    let cause = format!("cause={:?}", guard.cause());
    assert!(errors[0].contains(&cause), "the error line does not say {cause}: {}", errors[0]);
    agent.assert_running();

    drop(guard);
    assert!(can_create_in(&out), "{} is still unwritable", out.display());
    // No change needed: the periodic resync retries and succeeds.
    wait_for_file(&dest, format!("bad-{CHANGES}").as_bytes(), T);
    agent.wait_for_log("file recovered", T);
    env.set("/app/conf", b"good-21").await;
    wait_for_file(&dest, b"good-21", T);
    assert_eq!(temp_files(&out), Vec::<String>::new(), "temporary files left behind");
    assert_eq!(error_lines(&agent, dest_str).len(), 1, "log:\n{}", agent.log());
    agent.assert_running();
}

/// 7b. The destination's file system is full. While it is, 20 changes each larger than the
/// free space: the old file stays, one `no_space` error line, no temp file is left to eat
/// space, the agent runs. Space freed: the file converges by itself, then follows changes.
#[tokio::test(flavor = "multi_thread")]
async fn full_disk_keeps_the_old_file_logs_no_space_once_and_recovers() {
    let env = Env::new("disk-full").await;
    let out = env.mkdir("out");
    let Some((mounted, what)) = small_fs_or_skip(&out, &env.path("fs.img")) else {
        return;
    };
    let (dest, control, agent) = start_with_control(&env, &out, b"small-0").await;

    let filler = out.join("filler");
    let filled = fill(&filler);
    let big = |i: usize| {
        let mut value = format!("big-{i}-").into_bytes();
        value.resize(32 * 1024, b'x');
        value
    };
    // The file system really cannot take a value now.
    let probe = out.join("probe");
    let refused = File::create(&probe).and_then(|mut f| f.write_all(&big(0)).and_then(|()| f.sync_all()));
    let _ = fs::remove_file(&probe);
    assert!(refused.is_err(), "{what} took 32 KiB after a {filled}-byte filler");

    let dest_str = dest.to_str().unwrap();
    for i in 1..=CHANGES {
        env.set("/app/conf", &big(i)).await;
        std::thread::sleep(Duration::from_millis(50));
    }
    env.set("/app/control", b"c1").await;
    wait_for_file(&control, b"c1", T);
    wait_until(|| !error_lines(&agent, dest_str).is_empty(), T, "the error about the full disk");
    std::thread::sleep(SETTLE);

    let context = format!("log:\n{}", agent.log());
    assert_file(&dest, b"small-0", &context);
    assert_eq!(temp_files(&out), Vec::<String>::new(), "temporary files left on the full disk\n{context}");
    let errors = error_lines(&agent, dest_str);
    assert!(
        errors[0].contains("cause=\"no_space\""),
        "the error line does not say cause=\"no_space\": {}",
        errors[0]
    );
    agent.assert_running();
    // Once per cause is checked last, so that a failure of it still shows whether the
    // agent recovers.
    let errors_while_full = errors;

    fs::remove_file(&filler).unwrap();
    agent.wait_for_bytes(&dest, &big(CHANGES), T, "");
    agent.wait_for_log("file recovered", T);
    env.set("/app/conf", b"small-21").await;
    wait_for_file(&dest, b"small-21", T);
    agent.assert_running();
    agent.stop();
    assert_eq!(
        errors_while_full.len(),
        1,
        "expected one error line for one cause (no_space) during {CHANGES} changes, got {}; \
         the first two:\n{}",
        errors_while_full.len(),
        errors_while_full.iter().take(2).cloned().collect::<Vec<_>>().join("\n")
    );
    drop(mounted);
}

// ------------------------------------------------------------------ 8. the reload target

/// What each reload test checks: the first install's reload fails after 1 + `retries = 1`
/// attempts and is logged with `detail`; the file is written regardless; two later changes
/// are written too, each with its own failed reload.
async fn reload_target_down(env: &Env, reload: &str, detail: &str) -> Agent {
    let dest = env.path("app.conf");
    env.set("/app/conf", b"v0").await;
    let cfg = env
        .config()
        .agent(RESYNC)
        .write(&format!("{}[file.reload]\n{reload}retries = 1\n", raw_file(&dest, "/app/conf")));
    let agent = Agent::run(&cfg);
    wait_for_file(&dest, b"v0", T);
    let failed = |n: usize| {
        agent.wait_for_log_count("reload failed after all retries", n, T);
        let log = agent.log();
        let lines: Vec<&str> =
            log.lines().filter(|l| l.contains("reload failed after all retries")).collect();
        assert!(lines.iter().all(|l| l.contains(" ERROR ")), "not at error level: {lines:?}");
        let detailed = lines.iter().filter(|l| l.to_lowercase().contains(&detail.to_lowercase())).count();
        assert_eq!(detailed, lines.len(), "a failure logged without {detail:?}:\n{log}");
        let retried = log.matches("reload attempt failed; retrying").count();
        let gave_up = log.matches("reload attempt failed; giving up").count();
        assert_eq!((retried, gave_up), (n, n), "retries = 1: two attempts per reload\n{log}");
    };
    failed(1);
    for i in 1..=2 {
        let value = format!("v{i}");
        env.set("/app/conf", value.as_bytes()).await;
        wait_for_file(&dest, value.as_bytes(), T);
        failed(1 + i);
    }
    assert_file(&dest, b"v2", "the file stays written");
    agent.assert_running();
    agent
}

/// 8a. `pid_file` names a pid nobody has.
#[tokio::test(flavor = "multi_thread")]
async fn reload_to_a_dead_pid_is_logged_and_changes_keep_applying() {
    let env = Env::new("reload-down-pid").await;
    let mut gone = Command::new("true").spawn().unwrap();
    let pid = gone.id();
    gone.wait().unwrap(); // reaped: nobody has this pid now
    let pid_file = env.path("app.pid");
    fs::write(&pid_file, format!("{pid}\n")).unwrap();
    let reload = format!("signal = \"HUP\"\npid_file = {:?}\n", pid_file.to_str().unwrap());
    let detail = format!("no process with pid {pid} (from pid file {})", pid_file.display());
    let agent = reload_target_down(&env, &reload, &detail).await;
    agent.stop();
}

/// 8b. The HTTP hook's port refuses connections.
#[tokio::test(flavor = "multi_thread")]
async fn reload_to_a_refused_http_port_is_logged_and_changes_keep_applying() {
    let env = Env::new("reload-down-http").await;
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }; // closed again: nothing listens there now
    let url = format!("http://127.0.0.1:{port}/-/reload");
    let reload = format!("http = {url:?}\ntimeout = \"2s\"\n");
    let agent = reload_target_down(&env, &reload, &url).await;
    // The detail an operator needs: why the request failed.
    let log = agent.log();
    let failure = log.lines().find(|l| l.contains("reload failed after all retries")).unwrap();
    assert!(
        failure.to_lowercase().contains("refused"),
        "the failure does not say the connection was refused: {failure}\nlog:\n{log}"
    );
    agent.stop();
}

/// The pids of live (non-zombie) processes whose command line contains `needle`.
fn processes_with(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && pid != std::process::id() {
            pids.push(pid);
        }
    }
    pids
}

/// 8c. The reload command hangs past its timeout: killed (with what it started), logged,
/// and the next changes still apply.
#[tokio::test(flavor = "multi_thread")]
async fn reload_command_that_hangs_is_killed_logged_and_leaves_nothing_behind() {
    let env = Env::new("reload-down-command").await;
    // A duration no other process uses, to find this test's sleeps; `; true` keeps the
    // shell waiting as the sleep's parent, so both must be killed.
    let token = format!("30.{:06}", rand::random::<u32>() % 1_000_000);
    let script = format!("sleep {token}; true");
    let reload = format!("command = [\"sh\", \"-c\", {script:?}]\ntimeout = \"300ms\"\n");
    let agent = reload_target_down(&env, &reload, "timed out after 300ms (killed)").await;
    // A change that arrives while a reload hangs is still written.
    let dest = env.path("app.conf");
    env.set("/app/conf", b"v3").await;
    wait_until(|| !processes_with(&token).is_empty(), T, "the reload after v3 to hang");
    env.set("/app/conf", b"v4").await;
    wait_for_file(&dest, b"v4", T);
    agent.wait_for_log_count("reload failed after all retries", 4, T);
    wait_until(|| processes_with(&token).is_empty(), Duration::from_secs(3), "the hung reloads to be gone");
    agent.assert_running();
    agent.stop();
    assert!(processes_with(&token).is_empty(), "left behind: {:?}", processes_with(&token));
}

// ------------------------------------------------------------------ 9. big and bad data

/// The largest znode value (in KiB steps) a fresh client can create under `path`, starting
/// from ZooKeeper's default limit (`jute.maxbuffer`, 1 MiB including the request's
/// overhead). A refused size costs the probing client its connection, so each try uses a
/// client of its own.
async fn largest_accepted(hosts: &str, path: &str) -> usize {
    let mut size = 1024 * 1024 - 64;
    while size > 900_000 {
        let client = connect(hosts).await;
        let data = vec![b'p'; size];
        let options =
            zookeeper_client::CreateMode::Persistent.with_acls(zookeeper_client::Acls::anyone_all());
        match tokio::time::timeout(Duration::from_secs(5), client.create(path, &data, &options)).await {
            Ok(Ok(_)) => {
                client.delete(path, None).await.unwrap();
                return size;
            }
            Ok(Err(e)) => eprintln!("a {size}-byte znode was refused: {e}"),
            Err(_) => eprintln!("a {size}-byte znode got no answer in 5 s"),
        }
        size -= 1024;
    }
    1_000_000
}

/// 9a, 9b. A znode of nearly 1 MiB and one holding every byte value are copied byte-exact.
#[tokio::test(flavor = "multi_thread")]
async fn big_and_binary_znodes_are_copied_byte_exact() {
    let env = Env::new("data-big-binary").await;
    let hosts = env.chrooted_hosts();
    let size = largest_accepted(&hosts, "/probe").await;
    eprintln!("largest znode the server accepts: {size} bytes");
    let big: Vec<u8> = (0..size).map(|i| (i * 7 % 251) as u8).collect();
    let binary: Vec<u8> = (0..=255u8).collect();
    env.set("/app/big", &big).await;
    env.set("/app/bin", &binary).await;
    let (big_dest, bin_dest) = (env.path("big.bin"), env.path("all-bytes.bin"));
    let cfg = env
        .config()
        .agent(RESYNC)
        .write(&(raw_file(&big_dest, "/app/big") + &raw_file(&bin_dest, "/app/bin")));
    let agent = Agent::run(&cfg);
    agent.wait_for_bytes(&big_dest, &big, T, "");
    agent.wait_for_bytes(&bin_dest, &binary, T, "");

    // Changed: a different big value, the byte values reversed.
    let big2: Vec<u8> = big.iter().rev().copied().collect();
    let binary2: Vec<u8> = binary.iter().rev().copied().collect();
    env.set("/app/big", &big2).await;
    env.set("/app/bin", &binary2).await;
    agent.wait_for_bytes(&big_dest, &big2, T, "");
    agent.wait_for_bytes(&bin_dest, &binary2, T, "");
    assert!(error_lines(&agent, "").is_empty(), "errors logged:\n{}", agent.log());
    agent.assert_running();
    agent.stop();
}

/// 9c. A template reads a znode that is not valid UTF-8: a render error naming the znode,
/// logged once, the old file kept; fixed, the file converges.
#[tokio::test(flavor = "multi_thread")]
async fn template_on_invalid_utf8_keeps_the_old_file_and_converges_when_fixed() {
    let env = Env::new("data-bad-utf8").await;
    fs::write(env.path("t.j2"), "value={{ znode(\"/app/t\") }}\n").unwrap();
    let dest = env.path("t.conf");
    env.set("/app/t", b"ok-0").await;
    let dest_str = dest.to_str().unwrap();
    let cfg =
        env.config().agent(RESYNC).write(&format!("[[file]]\ndest = {dest_str:?}\ntemplate = \"t.j2\"\n"));
    let agent = Agent::run(&cfg);
    wait_for_file(&dest, b"value=ok-0\n", T);

    env.set("/app/t", b"ok\xff\xfe").await;
    agent.wait_for_log("not valid UTF-8", T);
    env.set("/app/t", b"ok\xff\xfe").await; // the same bad value again: no new error line
    let needed = ["/app/t", "t.j2", "cause=\"render\"", "not valid UTF-8"];
    assert_kept_with_one_error(&agent, &dest, b"value=ok-0\n", &needed);
    agent.assert_running();

    env.set("/app/t", b"ok-1").await;
    wait_for_file(&dest, b"value=ok-1\n", T);
    agent.wait_for_log("file recovered", T);
    agent.assert_running();
    agent.stop();
}

/// 9d. `from_json` on invalid JSON: an error naming the template and the line, the old file
/// kept, no panic; fixed, the file converges.
#[tokio::test(flavor = "multi_thread")]
async fn from_json_on_invalid_json_keeps_the_old_file_and_converges_when_fixed() {
    let env = Env::new("data-bad-json").await;
    env.mkdir("templates");
    fs::write(env.path("templates/j.j2"), "# generated\nport={{ (znode(\"j\") | from_json).port }}\n")
        .unwrap();
    let dest = env.path("j.conf");
    env.set("/app/j", br#"{"port": 8080}"#).await;
    let dest_str = dest.to_str().unwrap();
    let cfg = env
        .config()
        .agent(RESYNC)
        .write(&format!("[[file]]\ndest = {dest_str:?}\ntemplate = \"templates/j.j2\"\nprefix = \"/app\"\n"));
    let agent = Agent::run(&cfg);
    wait_for_file(&dest, b"# generated\nport=8080\n", T);

    env.set("/app/j", br#"{"port": 80"#).await;
    agent.wait_for_log("invalid JSON", T);
    let needed = ["templates/j.j2", "line 2", "from_json: invalid JSON", "cause=\"render\""];
    let context = assert_kept_with_one_error(&agent, &dest, b"# generated\nport=8080\n", &needed);
    assert!(!agent.log().contains("panicked"), "{context}");
    agent.assert_running();

    env.set("/app/j", br#"{"port": 9090}"#).await;
    wait_for_file(&dest, b"# generated\nport=9090\n", T);
    agent.wait_for_log("file recovered", T);
    agent.assert_running();
    agent.stop();
}
