//! Configuration from several places (issue 10, section 1), end to end: the built `zkrender`
//! binary against a real ZooKeeper. A `-c` directory of several files (and one added while
//! `run` runs), a section given twice, the no-config one-liners (`--zookeeper` with
//! `--znode`/`--template`) with `once` and `run`, flag entries validated by `check`, and
//! `--zookeeper`/`ZKRENDER_ZOOKEEPER` overriding `[zookeeper] hosts`.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;

/// Deadline for anything that should happen in about one ZooKeeper round trip.
const WAIT: Duration = Duration::from_secs(10);

/// Writes `contents` to `dir/name` the way a deploy tool should: a temporary name first, then
/// a rename, so that a watcher never reads half a file.
fn drop_in(dir: &Path, name: &str, contents: &str) {
    let temp = dir.join(format!(".{name}.tmp"));
    fs::write(&temp, contents).unwrap();
    fs::rename(&temp, dir.join(name)).unwrap();
}

/// Writes `contents` to `dir/name`; the file's path.
fn write_in(dir: &Path, name: &str, contents: &str) -> PathBuf {
    let path = dir.join(name);
    fs::write(&path, contents).unwrap();
    path
}

/// `sh -c 'echo reloaded >> COUNTER'` as one COMMAND argument of a flag (shell quoting).
fn appending_command(counter: &Path) -> String {
    format!("sh -c 'echo reloaded >> \"{}\"'", counter.display())
}

#[tokio::test(flavor = "multi_thread")]
async fn conf_d_directory_files_add_up_and_a_file_dropped_in_during_run_is_picked_up() {
    let env = Env::new("confd-dir").await;
    env.seed(&[("/team-a/url", b"pg://a"), ("/team-b/name", b"bee"), ("/team-c/flag", b"on")]).await;
    let confd = env.mkdir("conf.d");
    let out = env.mkdir("out");
    // The base file: [zookeeper] and [agent] only (and `resync` off, so that only the
    // directory watch can pick up the new file).
    write_in(&confd, "00-base.toml", &env.config().agent("resync = \"0s\"").text(""));
    // Relative paths resolve against the directory of the file holding them.
    write_in(&confd, "10-team-a.toml", "[[file]]\ndest = \"../out/a\"\nznode = \"/team-a/url\"\n");
    write_in(&confd, "b.j2", "name={{ znode(\"/team-b/name\") }}\n");
    write_in(&confd, "20-team-b.toml", "[[file]]\ndest = \"../out/b\"\ntemplate = \"b.j2\"\n");
    write_in(&confd, "README", "not a config file: ignored\n");

    let check = zkrender_in(env.dir(), &[OsStr::new("check"), OsStr::new("-c"), confd.as_os_str()]);
    assert!(check.status.success(), "check failed ({}): {}", check.status, text(&check.stderr));
    assert!(text(&check.stderr).contains("ok (2 files)"), "{}", text(&check.stderr));

    let agent = Agent::start([OsStr::new("run"), OsStr::new("-c"), confd.as_os_str()]);
    wait_for_file(out.join("a"), b"pg://a", WAIT);
    wait_for_file(out.join("b"), b"name=bee\n", WAIT);

    // Team C drops its own mapping file in while the agent runs.
    drop_in(&confd, "30-team-c.toml", "[[file]]\ndest = \"../out/c\"\nznode = \"/team-c/flag\"\n");
    wait_for_file(out.join("c"), b"on", WAIT);
    // ...and the new file's znode is watched like any other.
    env.set("/team-c/flag", b"off").await;
    wait_for_file(out.join("c"), b"off", WAIT);
    // The others still follow their znodes.
    env.set("/team-a/url", b"pg://a2").await;
    wait_for_file(out.join("a"), b"pg://a2", WAIT);
    agent.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_section_in_two_files_is_an_error_naming_both() {
    let env = Env::new("confd-two-agents").await;
    let confd = env.mkdir("conf.d");
    let base = write_in(&confd, "00-base.toml", &env.config().text(""));
    let second = write_in(&confd, "10-app.toml", "[agent]\nwait = \"1s\"\n");
    for command in ["check", "once"] {
        let out = zkrender_in(env.dir(), &[OsStr::new(command), OsStr::new("-c"), confd.as_os_str()]);
        assert_eq!(out.status.code(), Some(2), "{command}: {}", text(&out.stderr));
        let expected = format!(
            "[agent] is set in both {} and {}; keep it in one file",
            base.display(),
            second.display()
        );
        assert!(text(&out.stderr).contains(&expected), "{command}: {}", text(&out.stderr));
    }
    // The same two files given as two `-c` flags.
    let out = zkrender_in(
        env.dir(),
        &[OsStr::new("check"), OsStr::new("-c"), base.as_os_str(), OsStr::new("-c"), second.as_os_str()],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("[agent] is set in both"), "{}", text(&out.stderr));
}

#[tokio::test(flavor = "multi_thread")]
async fn one_liner_once_needs_no_config_file() {
    let env = Env::new("confd-once").await;
    env.seed(&[("/app/flags", b"{\"beta\": true}"), ("/app/name", b"world")]).await;
    let template = env.path("hello.j2");
    fs::write(&template, "hello {{ znode(\"/app/name\") }}").unwrap();
    let (flags, hello) = (env.path("out/flags.json"), env.path("hello.txt"));
    assert!(!env.path("zkrender.toml").exists());
    let out = zkrender_in(
        env.dir(),
        &[
            OsStr::new("once"),
            OsStr::new("--timeout"),
            OsStr::new("20s"),
            OsStr::new("--zookeeper"),
            OsStr::new(&env.chrooted_hosts()),
            OsStr::new("--znode"),
            OsStr::new(&format!("/app/flags:{}", flags.display())),
            // Relative paths in flags resolve against the working directory.
            OsStr::new("--template"),
            OsStr::new("hello.j2:hello.txt"),
        ],
    );
    assert_succeeded(&out, "once");
    assert_eq!(fs::read(&flags).unwrap(), b"{\"beta\": true}");
    assert_eq!(fs::read(&hello).unwrap(), b"hello world");
}

#[tokio::test(flavor = "multi_thread")]
async fn one_liner_run_follows_the_znode_and_runs_the_command() {
    let env = Env::new("confd-run").await;
    env.set("/app/flags", b"v1").await;
    let (dest, counter) = (env.path("flags.json"), env.path("reloads"));
    // No config file anywhere: the agent starts in this test's working directory (the
    // crate's), which has no zkrender.toml. It serves /healthz on the default address.
    assert!(!Path::new(zkrender::config::DEFAULT_PATH).exists(), "a zkrender.toml in the test's cwd");
    let agent = Agent::start([
        "run".to_owned(),
        "--zookeeper".to_owned(),
        env.chrooted_hosts(),
        "--znode".to_owned(),
        format!("/app/flags:{}:{}", dest.display(), appending_command(&counter)),
    ]);
    wait_for_file(&dest, b"v1", WAIT);
    let before = if counter.exists() { line_count(&counter) } else { 0 };
    env.set("/app/flags", b"v2").await;
    wait_for_file(&dest, b"v2", WAIT);
    wait_until(
        || counter.exists() && line_count(&counter) > before,
        WAIT,
        "the --znode COMMAND to append a line after the change",
    );
    assert_eq!(read_lossy(&counter).lines().last(), Some("reloaded"));
    agent.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn check_validates_flag_entries_naming_the_flag() {
    let env = Env::new("confd-check-flags").await;
    let out = zkrender_in(
        env.dir(),
        &[
            OsStr::new("check"),
            OsStr::new("--zookeeper"),
            OsStr::new(env.hosts()),
            OsStr::new("--znode"),
            OsStr::new("/app/ok:ok.json"),
            OsStr::new("--znode"),
            OsStr::new("app/flags:flags.json"),
            OsStr::new("--template"),
            OsStr::new("missing.j2:out.txt:kill -HUP 1"),
        ],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let stderr = text(&out.stderr);
    assert!(
        stderr.contains("--znode #2 (app/flags:flags.json): znode path \"app/flags\" must start with \"/\""),
        "{stderr}"
    );
    assert!(stderr.contains("--template #1 (missing.j2:out.txt:kill -HUP 1): reading template"), "{stderr}");
    assert!(!stderr.contains("--znode #1"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn zookeeper_flag_and_environment_override_the_hosts_of_the_config() {
    let env = Env::new("confd-override").await;
    env.set("/app/value", b"from the real server").await;
    let dest = env.path("value");
    // The config names a server that is not there (the image's default), with the chroot.
    let config = ConfigBuilder::new(env.dir(), "127.0.0.1:1")
        .zookeeper(&format!("chroot = {:?}", env.chroot()))
        .write(&raw_file(&dest, "/app/value"));
    let once = [
        OsStr::new("once"),
        OsStr::new("--timeout"),
        OsStr::new("20s"),
        OsStr::new("-c"),
        config.as_os_str(),
    ];

    let mut args = once.to_vec();
    args.extend([OsStr::new("--zookeeper"), OsStr::new(env.hosts())]);
    let out = zkrender_in(env.dir(), &args);
    assert_succeeded(&out, "once --zookeeper");
    assert_eq!(fs::read(&dest).unwrap(), b"from the real server");

    fs::remove_file(&dest).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_zkrender"))
        .args(once)
        .env("ZKRENDER_ZOOKEEPER", env.hosts())
        .current_dir(env.dir())
        .stdin(Stdio::null())
        .output()
        .expect("cannot run zkrender");
    assert!(
        out.status.success(),
        "once with ZKRENDER_ZOOKEEPER failed ({}): {}",
        out.status,
        text(&out.stderr)
    );
    assert_eq!(fs::read(&dest).unwrap(), b"from the real server");
}
