//! The agent's core contract, end to end: the built `zkrender` binary against a real
//! ZooKeeper. Raw copies and templates land byte-exact; changes, child changes, deletes and
//! re-creates reach the files; nothing is rewritten or reloaded when the bytes are equal;
//! `check`, the empty-data guard and `resync` protect the file; `once`, `render` and `check`
//! behave as documented; SIGTERM exits 0.
//!
//! Every test keeps to a chroot of its own on one ZooKeeper for the whole file (the one of
//! `ZK_TEST_HOSTS`, or one started on first use), and to a temporary directory of its own.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::*;
use tempfile::TempDir;
use zookeeper_client::Client;

/// Deadline for anything that should happen in about one ZooKeeper round trip.
const WAIT: Duration = Duration::from_secs(10);

/// How long to watch for something that must NOT happen.
const QUIET: Duration = Duration::from_millis(600);

static ZK: OnceLock<Zk> = OnceLock::new();

/// One ZooKeeper for every test in this file: `ZK_TEST_HOSTS`'s, or a standalone server
/// started on first use (never dropped: `scripts/zk up --owner` takes it down when this test
/// process exits).
fn zk() -> &'static Zk {
    ZK.get_or_init(Zk::shared)
}

/// A test's chroot, client and temporary directory.
struct Env {
    dir: TempDir,
    chroot: String,
    client: Client,
}

impl Env {
    async fn new(name: &str) -> Env {
        let chroot = unique_chroot(&format!("agent-{name}"));
        let hosts = create_chroot(zk().hosts(), &chroot).await;
        let client = connect(&hosts).await;
        let dir = tempfile::Builder::new().prefix("zkrender-agent-test-").tempdir().expect("tempdir");
        Env { dir, chroot, client }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `zkrender.toml` in the test's directory: `[zookeeper]` with the server, the
    /// chroot and `zookeeper_extra`; `[agent]` with `listen = ""` and `agent_extra`; then `files`.
    fn config(&self, zookeeper_extra: &str, agent_extra: &str, files: &str) -> PathBuf {
        let toml = format!(
            "[zookeeper]\nhosts = {hosts:?}\nchroot = {chroot:?}\n{zookeeper_extra}\n\n\
             [agent]\nlisten = \"\"\n{agent_extra}\n\n{files}",
            hosts = zk().hosts(),
            chroot = self.chroot,
        );
        write_config(self.dir.path(), &toml)
    }

    async fn set(&self, path: &str, data: &[u8]) {
        common::set(&self.client, path, data).await;
    }

    async fn delete(&self, path: &str) {
        assert!(common::delete(&self.client, path).await, "{path} did not exist");
    }
}

/// A path as a TOML string.
fn q(path: &Path) -> String {
    format!("{:?}", path.to_str().expect("UTF-8 path"))
}

/// A `[file.reload]` table whose command appends a line to `counter`.
fn counting_reload(counter: &Path) -> String {
    format!("[file.reload]\ncommand = [\"sh\", \"-c\", 'echo x >> \"{}\"']\n", counter.display())
}

/// Lines in `path` (0 when it does not exist).
fn line_count(path: &Path) -> usize {
    fs::read_to_string(path).map(|s| s.lines().count()).unwrap_or(0)
}

fn run_agent(config: &Path) -> Agent {
    Agent::start([OsStr::new("run"), OsStr::new("-c"), config.as_os_str()])
}

/// Runs the binary to completion (stdin from /dev/null) in `cwd`.
fn zkrender_in(cwd: &Path, args: &[&OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zkrender"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run zkrender")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn mode_of(path: &Path) -> u32 {
    fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).permissions().mode() & 0o7777
}

/// (inode, mtime in ns): what changes when a file is replaced or rewritten.
fn identity(path: &Path) -> (u64, i128) {
    let m = fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (m.ino(), i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()))
}

/// [`wait_for_file`] for large contents: on timeout reports lengths and the first difference
/// instead of printing both.
fn wait_for_large_file(path: &Path, expected: &[u8], timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let actual = fs::read(path).unwrap_or_default();
        if actual == expected {
            return;
        }
        if Instant::now() >= deadline {
            let first = actual.iter().zip(expected).position(|(a, b)| a != b);
            panic!(
                "{} did not become the expected {} bytes within {timeout:?}: it has {} bytes, first \
                 difference at {first:?}",
                path.display(),
                expected.len(),
                actual.len()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// The log lines containing `needle`.
fn log_lines(agent: &Agent, needle: &str) -> Vec<String> {
    agent.log().lines().filter(|l| l.contains(needle)).map(str::to_owned).collect()
}

// ------------------------------------------------------------------ 1. raw copies

#[tokio::test(flavor = "multi_thread")]
async fn raw_copy_is_byte_exact_binary_and_large_with_mode() {
    let env = Env::new("raw").await;
    let binary = [0xff, 0x00, 0xfe];
    let large: Vec<u8> = (0..900 * 1024u32).map(|i| (i.wrapping_mul(7) % 251) as u8).collect();
    env.set("/app/bin", &binary).await;
    env.set("/app/large", &large).await;
    let (bin, big) = (env.path("out/bin"), env.path("out/large"));
    let config = env.config(
        "",
        "",
        &format!(
            "[[file]]\ndest = {}\nznode = \"/app/bin\"\nmode = \"0640\"\n\n\
             [[file]]\ndest = {}\nznode = \"/app/large\"\nmode = \"0640\"\n",
            q(&bin),
            q(&big)
        ),
    );
    let agent = run_agent(&config);

    wait_for_file(&bin, &binary, WAIT);
    wait_for_large_file(&big, &large, WAIT);
    assert_eq!(mode_of(&bin), 0o640, "mode of {}", bin.display());
    assert_eq!(mode_of(&big), 0o640, "mode of {}", big.display());

    // Changes follow, still byte-exact and with the mode.
    let binary2 = [0x00, 0x80, 0xff, b'\n', 0xc3, 0x28];
    env.set("/app/bin", &binary2).await;
    wait_for_file(&bin, &binary2, WAIT);
    let large2: Vec<u8> = large.iter().rev().copied().collect();
    env.set("/app/large", &large2).await;
    wait_for_large_file(&big, &large2, WAIT);
    assert_eq!(mode_of(&bin), 0o640);
    assert_eq!(mode_of(&big), 0o640);
    assert!(agent.is_running(), "agent exited; log:\n{}", agent.log());
}

// ------------------------------------------------------------------ 2. templates

#[tokio::test(flavor = "multi_thread")]
async fn template_follows_znode_children_and_default() {
    let env = Env::new("template").await;
    env.set("/app/db/url", b"postgres://db-1").await;
    env.set("/app/servers/a", b"10.0.0.1").await;
    env.set("/app/servers/b", b"10.0.0.2").await;
    fs::create_dir(env.path("templates")).unwrap();
    fs::write(
        env.path("templates/app.conf.j2"),
        "db_url = {{ znode(\"db/url\") }}\n\
         pool   = {{ znode(\"db/pool\", default=\"10\") }}\n\
         {% for s in children(\"servers\") -%}\n\
         server {{ s }} {{ znode(\"servers/\" ~ s) }}\n\
         {% endfor -%}\n",
    )
    .unwrap();
    let dest = env.path("app.conf");
    let config = env.config(
        "",
        "",
        &format!("[[file]]\ndest = {}\ntemplate = \"templates/app.conf.j2\"\nprefix = \"/app\"\n", q(&dest)),
    );
    let agent = run_agent(&config);
    let expect = |pool: &str, servers: &[(&str, &str)]| {
        let mut s = format!("db_url = postgres://db-1\npool   = {pool}\n");
        for (name, addr) in servers {
            s.push_str(&format!("server {name} {addr}\n"));
        }
        s
    };

    wait_for_file(&dest, expect("10", &[("a", "10.0.0.1"), ("b", "10.0.0.2")]).as_bytes(), WAIT);

    // A child added.
    env.set("/app/servers/c", b"10.0.0.3").await;
    wait_for_file(
        &dest,
        expect("10", &[("a", "10.0.0.1"), ("b", "10.0.0.2"), ("c", "10.0.0.3")]).as_bytes(),
        WAIT,
    );

    // A child removed.
    env.delete("/app/servers/a").await;
    wait_for_file(&dest, expect("10", &[("b", "10.0.0.2"), ("c", "10.0.0.3")]).as_bytes(), WAIT);

    // A child's data changed.
    env.set("/app/servers/c", b"10.0.0.33").await;
    wait_for_file(&dest, expect("10", &[("b", "10.0.0.2"), ("c", "10.0.0.33")]).as_bytes(), WAIT);

    // The defaulted znode appears, then goes away again.
    env.set("/app/db/pool", b"25").await;
    wait_for_file(&dest, expect("25", &[("b", "10.0.0.2"), ("c", "10.0.0.33")]).as_bytes(), WAIT);
    env.delete("/app/db/pool").await;
    wait_for_file(&dest, expect("10", &[("b", "10.0.0.2"), ("c", "10.0.0.33")]).as_bytes(), WAIT);

    // Every child removed: an empty loop.
    env.delete("/app/servers/b").await;
    env.delete("/app/servers/c").await;
    wait_for_file(&dest, expect("10", &[]).as_bytes(), WAIT);
    assert!(agent.is_running(), "agent exited; log:\n{}", agent.log());
}

// ------------------------------------------------------------------ 3. delete and re-create

#[tokio::test(flavor = "multi_thread")]
async fn deleted_znode_keeps_or_removes_files_and_recreate_restores_them() {
    let env = Env::new("delete").await;
    env.set("/app/tpl", b"one").await;
    env.set("/app/keep", b"kept-1").await;
    env.set("/app/remove", b"removed-1").await;
    let (tpl, keep, remove) = (env.path("tpl.conf"), env.path("keep.bin"), env.path("remove.bin"));
    let config = env.config(
        "",
        "",
        &format!(
            "[[file]]\ndest = {}\ninline = 'value={{{{ znode(\"/app/tpl\") }}}}'\n\n\
             [[file]]\ndest = {}\nznode = \"/app/keep\"\non_delete = \"keep\"\n\n\
             [[file]]\ndest = {}\nznode = \"/app/remove\"\non_delete = \"remove\"\n",
            q(&tpl),
            q(&keep),
            q(&remove)
        ),
    );
    let agent = run_agent(&config);
    wait_for_file(&tpl, b"value=one", WAIT);
    wait_for_file(&keep, b"kept-1", WAIT);
    wait_for_file(&remove, b"removed-1", WAIT);

    env.delete("/app/tpl").await;
    env.delete("/app/keep").await;
    env.delete("/app/remove").await;

    wait_for_no_file(&remove, WAIT);
    agent.wait_for_log("file not updated", WAIT);
    let errors = log_lines(&agent, "file not updated");
    assert!(
        errors
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("/app/tpl") && l.contains(tpl.to_str().unwrap())),
        "no error naming the znode /app/tpl and the file: {errors:#?}"
    );
    std::thread::sleep(QUIET);
    assert_eq!(fs::read(&tpl).unwrap(), b"value=one", "the template's last file must stay");
    assert_eq!(fs::read(&keep).unwrap(), b"kept-1", "on_delete = keep must keep the file");
    assert!(!remove.exists());

    env.set("/app/tpl", b"two").await;
    env.set("/app/keep", b"kept-2").await;
    env.set("/app/remove", b"removed-2").await;
    wait_for_file(&tpl, b"value=two", WAIT);
    wait_for_file(&keep, b"kept-2", WAIT);
    wait_for_file(&remove, b"removed-2", WAIT);
    assert!(agent.is_running(), "agent exited; log:\n{}", agent.log());
}

// ------------------------------------------------------------------ 4. bursts converge

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_rapid_sets_converge_to_the_last_value() {
    let env = Env::new("burst").await;
    env.set("/app/hot", b"start").await;
    let dest = env.path("hot");
    let config = env.config("", "", &format!("[[file]]\ndest = {}\nznode = \"/app/hot\"\n", q(&dest)));
    let agent = run_agent(&config);
    wait_for_file(&dest, b"start", WAIT);

    let started = Instant::now();
    for i in 0..1000 {
        let value = format!("value-{i}");
        env.client
            .set_data("/app/hot", value.as_bytes(), None)
            .await
            .unwrap_or_else(|e| panic!("set {i}: {e}"));
    }
    eprintln!("1000 sets took {:?}", started.elapsed());
    wait_for_file(&dest, b"value-999", Duration::from_secs(5));
    eprintln!("converged {:?} after the first set", started.elapsed());
    let writes = log_lines(&agent, "file written").len();
    eprintln!("{writes} \"file written\" lines for 1001 values");
    assert!(writes <= 1001, "more writes ({writes}) than values");

    // Still healthy: the next change arrives.
    assert!(agent.is_running(), "agent exited; log:\n{}", agent.log());
    env.set("/app/hot", b"after").await;
    wait_for_file(&dest, b"after", WAIT);
}

// ------------------------------------------------------------------ 5. check command

#[tokio::test(flavor = "multi_thread")]
async fn failing_check_keeps_the_old_file_and_logs_its_output() {
    let env = Env::new("check").await;
    env.set("/app/conf", b"good v1\n").await;
    let dest = env.path("app.conf");
    let config = env.config(
        "",
        "",
        &format!(
            "[[file]]\ndest = {}\nznode = \"/app/conf\"\n\
             check = [\"sh\", \"-c\", 'grep -q good \"$1\" || {{ echo \"CHECK-SAYS no good in $1\" >&2; exit 3; }}', \"sh\", \"{{file}}\"]\n",
            q(&dest)
        ),
    );
    let agent = run_agent(&config);
    wait_for_file(&dest, b"good v1\n", WAIT);

    env.set("/app/conf", b"bad v2\n").await;
    agent.wait_for_log("CHECK-SAYS no good in", WAIT);
    let failure = log_lines(&agent, "CHECK-SAYS");
    assert!(
        failure
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("grep -q good") && l.contains(dest.to_str().unwrap())),
        "the check failure should be an error naming the file, the check and its output: {failure:#?}"
    );
    assert_eq!(fs::read(&dest).unwrap(), b"good v1\n", "a failed check must keep the old file");
    // No temporary file is left behind.
    let leftovers: Vec<_> = fs::read_dir(env.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != "zkrender.toml" && n != "app.conf")
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");

    env.set("/app/conf", b"good v3\n").await;
    wait_for_file(&dest, b"good v3\n", WAIT);
    agent.wait_for_log("file recovered", WAIT);
}

// ------------------------------------------------------------------ 6. empty-data guard

#[tokio::test(flavor = "multi_thread")]
async fn empty_data_keeps_a_non_empty_file_unless_allow_empty() {
    let env = Env::new("empty").await;
    env.set("/app/guarded", b"guarded").await;
    env.set("/app/open", b"open").await;
    let (guarded, open) = (env.path("guarded"), env.path("open"));
    let config = env.config(
        "",
        "",
        &format!(
            "[[file]]\ndest = {}\nznode = \"/app/guarded\"\n\n\
             [[file]]\ndest = {}\nznode = \"/app/open\"\nallow_empty = true\n",
            q(&guarded),
            q(&open)
        ),
    );
    let agent = run_agent(&config);
    wait_for_file(&guarded, b"guarded", WAIT);
    wait_for_file(&open, b"open", WAIT);

    env.set("/app/guarded", b"").await;
    env.set("/app/open", b"").await;
    wait_for_file(&open, b"", WAIT);
    agent.wait_for_log("refusing to replace a non-empty file with empty contents", WAIT);
    let lines = log_lines(&agent, "refusing to replace");
    assert!(lines.iter().any(|l| l.contains(guarded.to_str().unwrap())), "{lines:#?}");
    assert_eq!(fs::read(&guarded).unwrap(), b"guarded");

    // Non-empty again: both follow.
    env.set("/app/guarded", b"guarded-2").await;
    env.set("/app/open", b"open-2").await;
    wait_for_file(&guarded, b"guarded-2", WAIT);
    wait_for_file(&open, b"open-2", WAIT);
}

// ------------------------------------------------------------------ 7. equal bytes: no rewrite

#[tokio::test(flavor = "multi_thread")]
async fn equal_bytes_are_not_rewritten_and_do_not_reload() {
    let env = Env::new("equal").await;
    env.set("/app/conf", b"same").await;
    env.set("/app/other", b"other-1").await;
    let (dest, other, counter) = (env.path("conf"), env.path("other"), env.path("reloads"));
    let config = env.config(
        "",
        "",
        &format!(
            "[[file]]\ndest = {}\nznode = \"/app/conf\"\n{}\n\
             [[file]]\ndest = {}\nznode = \"/app/other\"\n",
            q(&dest),
            counting_reload(&counter),
            q(&other)
        ),
    );
    let agent = run_agent(&config);
    wait_for_file(&dest, b"same", WAIT);
    wait_for_file(&other, b"other-1", WAIT);
    wait_until(|| line_count(&counter) == 1, WAIT, "the first reload");
    let before = identity(&dest);

    // The same bytes again (a new znode version), then a change elsewhere as a marker.
    env.set("/app/conf", b"same").await;
    env.set("/app/other", b"other-2").await;
    wait_for_file(&other, b"other-2", WAIT);
    std::thread::sleep(QUIET);
    assert_eq!(identity(&dest), before, "{} was rewritten with equal bytes", dest.display());
    assert_eq!(line_count(&counter), 1, "the reload ran again for equal bytes; log:\n{}", agent.log());

    // A real change rewrites and reloads (so the assertions above could fail).
    env.set("/app/conf", b"different").await;
    wait_for_file(&dest, b"different", WAIT);
    wait_until(|| line_count(&counter) == 2, WAIT, "the second reload");
    assert_ne!(identity(&dest), before);
}

// ------------------------------------------------------------------ 8. watch modes

/// Data changes (also quick successive ones), children added and removed, a child's data
/// changed, a child removed and added back: each reaches the file in `mode`.
async fn follows_data_and_children(mode: &str) {
    let env = Env::new(&format!("watch-{mode}")).await;
    env.set("/app/name", b"one").await;
    env.set("/app/list/a", b"1").await;
    let dest = env.path("out.txt");
    let config = env.config(
        &format!("watch = {mode:?}"),
        "",
        &format!(
            "[[file]]\ndest = {}\nprefix = \"/app\"\n\
             inline = '''name={{{{ znode(\"name\") }}}}{{% for c in children(\"list\") %}} {{{{ c }}}}={{{{ znode(\"list/\" ~ c) }}}}{{% endfor %}}'''\n",
            q(&dest)
        ),
    );
    let agent = run_agent(&config);
    wait_for_file(&dest, b"name=one a=1", WAIT);
    let started = log_lines(&agent, "zkrender starting");
    assert!(
        started.iter().any(|l| l.to_lowercase().contains(&format!("watch={mode}"))),
        "the agent does not say it watches in {mode} mode: {started:#?}"
    );

    env.set("/app/name", b"two").await;
    wait_for_file(&dest, b"name=two a=1", WAIT);
    for v in ["three", "four", "five"] {
        env.set("/app/name", v.as_bytes()).await;
    }
    wait_for_file(&dest, b"name=five a=1", WAIT);

    env.set("/app/list/b", b"2").await;
    wait_for_file(&dest, b"name=five a=1 b=2", WAIT);
    env.set("/app/list/b", b"3").await;
    wait_for_file(&dest, b"name=five a=1 b=3", WAIT);
    env.delete("/app/list/a").await;
    wait_for_file(&dest, b"name=five b=3", WAIT);
    env.set("/app/list/a", b"4").await;
    wait_for_file(&dest, b"name=five a=4 b=3", WAIT);
    // The re-created child's data is watched again.
    env.set("/app/list/a", b"5").await;
    wait_for_file(&dest, b"name=five a=5 b=3", WAIT);
    env.set("/app/name", b"six").await;
    wait_for_file(&dest, b"name=six a=5 b=3", WAIT);
    assert!(agent.is_running(), "agent exited; log:\n{}", agent.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn oneshot_watches_follow_data_and_children() {
    follows_data_and_children("oneshot").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_watches_follow_data_and_children() {
    follows_data_and_children("persistent").await;
}

// ------------------------------------------------------------------ 9. once

#[tokio::test(flavor = "multi_thread")]
async fn once_writes_every_file_and_runs_no_reload() {
    let env = Env::new("once").await;
    env.set("/app/raw", &[0xde, 0xad, 0x00, 0xbe, 0xef]).await;
    env.set("/app/name", b"world").await;
    let (raw, tpl, counter) = (env.path("raw"), env.path("hello"), env.path("reloads"));
    let config = env.config(
        "",
        "",
        &format!(
            "[[file]]\ndest = {}\nznode = \"/app/raw\"\n{}\n\
             [[file]]\ndest = {}\ninline = 'hello {{{{ znode(\"/app/name\") }}}}'\n{}",
            q(&raw),
            counting_reload(&counter),
            q(&tpl),
            counting_reload(&counter)
        ),
    );
    let out = zkrender_in(
        env.dir.path(),
        &[
            OsStr::new("once"),
            OsStr::new("-c"),
            config.as_os_str(),
            OsStr::new("--timeout"),
            OsStr::new("10s"),
        ],
    );
    assert!(out.status.success(), "once failed ({}): {}", out.status, text(&out.stderr));
    assert_eq!(fs::read(&raw).unwrap(), [0xde, 0xad, 0x00, 0xbe, 0xef]);
    assert_eq!(fs::read(&tpl).unwrap(), b"hello world");
    std::thread::sleep(Duration::from_millis(200)); // a detached reload would show by now
    assert!(!counter.exists(), "once ran a reload: {:?}", fs::read_to_string(&counter));
    assert!(out.stdout.is_empty(), "once printed to stdout: {:?}", text(&out.stdout));
}

#[tokio::test(flavor = "multi_thread")]
async fn once_with_a_missing_znode_fails_naming_it_and_installs_the_rest() {
    let env = Env::new("once-missing").await;
    env.set("/app/name", b"world").await;
    let (missing, tpl, counter) = (env.path("missing"), env.path("hello"), env.path("reloads"));
    let config = env.config(
        "",
        "",
        &format!(
            "[[file]]\ndest = {}\nznode = \"/app/not-there\"\n\n\
             [[file]]\ndest = {}\ninline = 'hello {{{{ znode(\"/app/name\") }}}}'\n{}",
            q(&missing),
            q(&tpl),
            counting_reload(&counter)
        ),
    );
    let started = Instant::now();
    let out = zkrender_in(
        env.dir.path(),
        &[
            OsStr::new("once"),
            OsStr::new("-c"),
            config.as_os_str(),
            OsStr::new("--timeout"),
            OsStr::new("2s"),
        ],
    );
    let took = started.elapsed();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "once should exit 1; stderr:\n{stderr}");
    assert!(took < Duration::from_secs(8), "once took {took:?} with --timeout 2s");
    assert!(stderr.contains("/app/not-there"), "stderr does not name the missing znode:\n{stderr}");
    assert!(stderr.contains(missing.to_str().unwrap()), "stderr does not name the file:\n{stderr}");
    assert!(!missing.exists());
    assert_eq!(fs::read(&tpl).unwrap(), b"hello world", "the file that rendered must be installed");
    assert!(!counter.exists(), "once ran a reload");
}

// ------------------------------------------------------------------ 10. render

#[tokio::test(flavor = "multi_thread")]
async fn render_prints_headers_or_exact_bytes_and_writes_nothing() {
    let env = Env::new("render").await;
    env.set("/app/alpha", b"alpha\n").await;
    env.set("/app/name", b"beta").await;
    let binary = [0x00, 0xff, 0x0a, 0xfe, 0x01];
    env.set("/app/bin", &binary).await;
    let (alpha, beta, bin) = (env.path("out/alpha"), env.path("out/beta"), env.path("out/c.bin"));
    let config = env.config(
        "",
        "",
        "[[file]]\ndest = \"out/alpha\"\nznode = \"/app/alpha\"\n\n\
         [[file]]\ndest = \"out/beta\"\ninline = '''name={{ znode(\"/app/name\") }}\n'''\n\n\
         [[file]]\ndest = \"out/c.bin\"\nznode = \"/app/bin\"\n",
    );
    let elsewhere = tempfile::tempdir().unwrap();
    let out = zkrender_in(
        elsewhere.path(),
        &[
            OsStr::new("render"),
            OsStr::new("-c"),
            config.as_os_str(),
            OsStr::new("--timeout"),
            OsStr::new("10s"),
        ],
    );
    assert!(out.status.success(), "render failed ({}): {}", out.status, text(&out.stderr));
    let mut expected = format!(
        "==> {} <==\nalpha\n\n==> {} <==\nname=beta\n\n==> {} <==\n",
        alpha.display(),
        beta.display(),
        bin.display()
    )
    .into_bytes();
    expected.extend_from_slice(&binary);
    assert_eq!(text(&out.stdout), text(&expected));
    assert_eq!(out.stdout, expected);
    assert!(!env.path("out").exists(), "render wrote files");

    // --dest: exactly the file's bytes, by the dest as in the config (from another cwd) or resolved.
    for dest in [OsStr::new("out/c.bin"), bin.as_os_str()] {
        let out = zkrender_in(
            elsewhere.path(),
            &[OsStr::new("render"), OsStr::new("-c"), config.as_os_str(), OsStr::new("--dest"), dest],
        );
        assert!(
            out.status.success(),
            "render --dest {dest:?} failed ({}): {}",
            out.status,
            text(&out.stderr)
        );
        assert_eq!(out.stdout, binary, "render --dest {dest:?}");
    }
    let out = zkrender_in(
        elsewhere.path(),
        &[OsStr::new("render"), OsStr::new("-c"), config.as_os_str(), OsStr::new("--dest"), beta.as_os_str()],
    );
    assert!(out.status.success(), "render --dest beta failed: {}", text(&out.stderr));
    assert_eq!(out.stdout, b"name=beta\n");
    assert!(!env.path("out").exists(), "render wrote files");
    assert_eq!(fs::read_dir(elsewhere.path()).unwrap().count(), 0, "render wrote into its cwd");
}

// ------------------------------------------------------------------ 11. check

/// A loopback port nothing listens on.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn check_validates_offline_and_names_file_line_column_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = format!("127.0.0.1:{}", closed_port());
    fs::create_dir(dir.path().join("templates")).unwrap();
    fs::write(dir.path().join("templates/ok.j2"), "x = {{ znode(\"x\", default=\"1\") }}\n").unwrap();
    let check = |config: &Path| {
        let started = Instant::now();
        let out = zkrender_in(dir.path(), &[OsStr::new("check"), OsStr::new("-c"), config.as_os_str()]);
        assert!(started.elapsed() < Duration::from_secs(5), "check took {:?}", started.elapsed());
        out
    };

    // Valid, with ZooKeeper unreachable: 0.
    let config = write_config(
        dir.path(),
        &format!(
            "[zookeeper]\nhosts = {hosts:?}\n\n[[file]]\ndest = \"out/ok\"\ntemplate = \"templates/ok.j2\"\nprefix = \"/app\"\n\n\
             [[file]]\ndest = \"out/raw\"\nznode = \"/app/raw\"\n"
        ),
    );
    let out = check(&config);
    assert!(out.status.success(), "check of a valid config failed ({}): {}", out.status, text(&out.stderr));

    // An unknown key: 2, naming file:line:column and the key.
    let config = write_config(
        dir.path(),
        &format!("[zookeeper]\nhosts = {hosts:?}\n\n[[file]]\ndest = \"out/raw\"\nznodes = \"/app/raw\"\n"),
    );
    let out = check(&config);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    let at = format!("{}:6:1", config.display());
    assert!(stderr.contains(&at), "stderr does not name {at}:\n{stderr}");
    assert!(stderr.contains("znodes"), "stderr does not name the key:\n{stderr}");

    // A template syntax error on line 3: 2, naming the template and the line.
    fs::write(dir.path().join("templates/bad.j2"), "line one\nline two\n{% if %}\nline four\n").unwrap();
    let config = write_config(
        dir.path(),
        &format!(
            "[zookeeper]\nhosts = {hosts:?}\n\n[[file]]\ndest = \"out/bad\"\ntemplate = \"templates/bad.j2\"\n"
        ),
    );
    let out = check(&config);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("bad.j2"), "stderr does not name the template:\n{stderr}");
    assert!(stderr.contains("line 3"), "stderr does not name line 3:\n{stderr}");
}

// ------------------------------------------------------------------ 12. SIGTERM

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_exits_zero() {
    let env = Env::new("sigterm").await;
    env.set("/app/x", b"x").await;
    let dest = env.path("x");
    let config = env.config("", "", &format!("[[file]]\ndest = {}\nznode = \"/app/x\"\n", q(&dest)));
    let agent = run_agent(&config);
    wait_for_file(&dest, b"x", WAIT);
    agent.wait_for_log("ready: every file is written", WAIT);
    let status = agent.stop();
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}; log:\n{}", agent.log());
    assert_eq!(fs::read(&dest).unwrap(), b"x");
}

// ------------------------------------------------------------------ 13. resync

#[tokio::test(flavor = "multi_thread")]
async fn resync_repairs_a_file_edited_by_hand() {
    let env = Env::new("resync").await;
    env.set("/app/x", b"from zookeeper\n").await;
    let dest = env.path("x");
    let config =
        env.config("", "resync = \"1s\"", &format!("[[file]]\ndest = {}\nznode = \"/app/x\"\n", q(&dest)));
    let agent = run_agent(&config);
    wait_for_file(&dest, b"from zookeeper\n", WAIT);

    fs::write(&dest, b"garbage written by hand").unwrap();
    wait_for_file(&dest, b"from zookeeper\n", Duration::from_secs(3));
    fs::remove_file(&dest).unwrap();
    wait_for_file(&dest, b"from zookeeper\n", Duration::from_secs(3));
    assert!(agent.is_running(), "agent exited; log:\n{}", agent.log());
}

// ------------------------------------------------------------------ 14. start-up reloads

#[tokio::test(flavor = "multi_thread")]
async fn startup_reloads_only_files_that_differed() {
    let env = Env::new("startup").await;
    env.set("/app/a", b"correct-a").await;
    env.set("/app/b", b"correct-b").await;
    let (a, b) = (env.path("a"), env.path("b"));
    let (count_a, count_b) = (env.path("reloads-a"), env.path("reloads-b"));
    fs::write(&a, b"correct-a").unwrap();
    fs::write(&b, b"stale-b").unwrap();
    let a_before = identity(&a);
    let config = env.config(
        "",
        "",
        &format!(
            "[[file]]\ndest = {}\nznode = \"/app/a\"\n{}\n[[file]]\ndest = {}\nznode = \"/app/b\"\n{}",
            q(&a),
            counting_reload(&count_a),
            q(&b),
            counting_reload(&count_b)
        ),
    );
    let agent = run_agent(&config);
    wait_for_file(&b, b"correct-b", WAIT);
    wait_until(|| line_count(&count_b) == 1, WAIT, "the reload of the file that differed");
    agent.wait_for_log("ready: every file is written", WAIT);
    std::thread::sleep(QUIET);
    assert_eq!(line_count(&count_a), 0, "the file already correct fired its reload; log:\n{}", agent.log());
    assert_eq!(identity(&a), a_before, "the file already correct was rewritten");
    assert_eq!(line_count(&count_b), 1);
}

// ------------------------------------------------------------------ 15. shared reloads

#[tokio::test(flavor = "multi_thread")]
async fn identical_reload_of_two_files_changed_together_runs_once() {
    let env = Env::new("shared-reload").await;
    env.set("/app/shared", b"v1").await;
    let (one, two, counter) = (env.path("one"), env.path("two"), env.path("reloads"));
    let reload = counting_reload(&counter);
    let config = env.config(
        "",
        "",
        &format!(
            "[[file]]\ndest = {}\ninline = 'one {{{{ znode(\"/app/shared\") }}}}'\n{reload}\n\
             [[file]]\ndest = {}\ninline = 'two {{{{ znode(\"/app/shared\") }}}}'\n{reload}",
            q(&one),
            q(&two)
        ),
    );
    let agent = run_agent(&config);
    wait_for_file(&one, b"one v1", WAIT);
    wait_for_file(&two, b"two v1", WAIT);
    wait_until(|| line_count(&counter) >= 1, WAIT, "the first reload");
    std::thread::sleep(QUIET);
    assert_eq!(
        line_count(&counter),
        1,
        "both files were written at start: one reload; log:\n{}",
        agent.log()
    );

    env.set("/app/shared", b"v2").await;
    wait_for_file(&one, b"one v2", WAIT);
    wait_for_file(&two, b"two v2", WAIT);
    wait_until(|| line_count(&counter) >= 2, WAIT, "the reload after the change");
    std::thread::sleep(QUIET);
    assert_eq!(line_count(&counter), 2, "one change of both files must reload once; log:\n{}", agent.log());
}

// ------------------------------------------------------------------ 16. relative paths

#[tokio::test(flavor = "multi_thread")]
async fn relative_dest_and_template_resolve_against_the_config_directory() {
    let env = Env::new("relative").await;
    env.set("/app/name", b"relative").await;
    // The config in <tmp>/cfg, the agent started in <tmp>/cwd with `-c ../cfg/zkrender.toml`.
    let (cfg_dir, cwd) = (env.path("cfg"), env.path("cwd"));
    fs::create_dir_all(cfg_dir.join("templates")).unwrap();
    fs::create_dir_all(&cwd).unwrap();
    fs::write(cfg_dir.join("templates/app.j2"), "name={{ znode(\"name\") }}\n").unwrap();
    let toml = format!(
        "[zookeeper]\nhosts = {:?}\nchroot = {:?}\n\n[agent]\nlisten = \"\"\n\n\
         [[file]]\ndest = \"out/app.conf\"\ntemplate = \"templates/app.j2\"\nprefix = \"/app\"\n\n\
         [[file]]\ndest = \"raw.txt\"\nznode = \"/app/name\"\n",
        zk().hosts(),
        env.chroot
    );
    write_config(&cfg_dir, &toml);
    let script = format!("cd {} && exec \"$0\" run -c ../cfg/zkrender.toml", q(&cwd));
    let agent = Agent::start_program("sh", ["-c", &script, env!("CARGO_BIN_EXE_zkrender")], &[]);
    wait_for_file(cfg_dir.join("out/app.conf"), b"name=relative\n", WAIT);
    wait_for_file(cfg_dir.join("raw.txt"), b"relative", WAIT);
    env.set("/app/name", b"changed").await;
    wait_for_file(cfg_dir.join("out/app.conf"), b"name=changed\n", WAIT);
    assert_eq!(fs::read_dir(&cwd).unwrap().count(), 0, "the agent wrote into its cwd");

    // once, from the same cwd, writes to the same place.
    fs::remove_file(cfg_dir.join("raw.txt")).unwrap();
    let out = zkrender_in(&cwd, &[OsStr::new("once"), OsStr::new("-c"), OsStr::new("../cfg/zkrender.toml")]);
    assert!(out.status.success(), "once failed: {}", text(&out.stderr));
    assert_eq!(fs::read(cfg_dir.join("raw.txt")).unwrap(), b"changed");
    assert_eq!(fs::read_dir(&cwd).unwrap().count(), 0, "once wrote into its cwd");
    assert!(agent.is_running(), "agent exited; log:\n{}", agent.log());
}
