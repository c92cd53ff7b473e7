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
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Deadline for anything that should happen in about one ZooKeeper round trip.
const WAIT: Duration = Duration::from_secs(10);

/// How long to watch for something that must NOT happen.
const QUIET: Duration = Duration::from_millis(600);

/// The test's environment with `/app/x` set to `value`, and the destination `x` in it.
async fn env_with_x(name: &str, value: &[u8]) -> (Env, PathBuf) {
    let env = Env::new(name).await;
    env.set("/app/x", value).await;
    let dest = env.path("x");
    (env, dest)
}

/// A `[file.reload]` table whose command appends a line to `counter`.
fn counting_reload(counter: &Path) -> String {
    format!("[file.reload]\ncommand = [\"sh\", \"-c\", 'echo x >> \"{}\"']\n", counter.display())
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
    let config = env.write_config(&format!(
        "[[file]]\ndest = {}\nznode = \"/app/bin\"\nmode = \"0640\"\n\n\
             [[file]]\ndest = {}\nznode = \"/app/large\"\nmode = \"0640\"\n",
        toml_path(&bin),
        toml_path(&big)
    ));
    let agent = Agent::run(&config);

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
    env.seed(&[
        ("/app/db/url", b"postgres://db-1"),
        ("/app/servers/a", b"10.0.0.1"),
        ("/app/servers/b", b"10.0.0.2"),
    ])
    .await;
    env.mkdir("templates");
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
    let config = env.write_config(&format!(
        "[[file]]\ndest = {}\ntemplate = \"templates/app.conf.j2\"\nprefix = \"/app\"\n",
        toml_path(&dest)
    ));
    let agent = Agent::run(&config);
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
    env.seed(&[("/app/tpl", b"one"), ("/app/keep", b"kept-1"), ("/app/remove", b"removed-1")]).await;
    let (tpl, keep, remove) = (env.path("tpl.conf"), env.path("keep.bin"), env.path("remove.bin"));
    let config = env.write_config(&format!(
        "[[file]]\ndest = {}\ninline = 'value={{{{ znode(\"/app/tpl\") }}}}'\n\n\
             [[file]]\ndest = {}\nznode = \"/app/keep\"\non_delete = \"keep\"\n\n\
             [[file]]\ndest = {}\nznode = \"/app/remove\"\non_delete = \"remove\"\n",
        toml_path(&tpl),
        toml_path(&keep),
        toml_path(&remove)
    ));
    let agent = Agent::run(&config);
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

    env.seed(&[("/app/tpl", b"two"), ("/app/keep", b"kept-2"), ("/app/remove", b"removed-2")]).await;
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
    let config = env.write_config(&raw_file(&dest, "/app/hot"));
    let agent = Agent::run(&config);
    wait_for_file(&dest, b"start", WAIT);

    let started = Instant::now();
    for i in 0..1000 {
        let value = format!("value-{i}");
        env.client()
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
    let config = env.write_config(&format!(
            "[[file]]\ndest = {}\nznode = \"/app/conf\"\n\
             check = [\"sh\", \"-c\", 'grep -q good \"$1\" || {{ echo \"CHECK-SAYS no good in $1\" >&2; exit 3; }}', \"sh\", \"{{file}}\"]\n",
            toml_path(&dest)
        ),
    );
    let agent = Agent::run(&config);
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
    let leftovers: Vec<_> = fs::read_dir(env.dir())
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
    env.seed(&[("/app/guarded", b"guarded"), ("/app/open", b"open")]).await;
    let (guarded, open) = (env.path("guarded"), env.path("open"));
    let config = env.write_config(&format!(
        "[[file]]\ndest = {}\nznode = \"/app/guarded\"\n\n\
             [[file]]\ndest = {}\nznode = \"/app/open\"\nallow_empty = true\n",
        toml_path(&guarded),
        toml_path(&open)
    ));
    let agent = Agent::run(&config);
    wait_for_file(&guarded, b"guarded", WAIT);
    wait_for_file(&open, b"open", WAIT);

    env.seed(&[("/app/guarded", b""), ("/app/open", b"")]).await;
    wait_for_file(&open, b"", WAIT);
    agent.wait_for_log("refusing to replace a non-empty file with empty contents", WAIT);
    let lines = log_lines(&agent, "refusing to replace");
    assert!(lines.iter().any(|l| l.contains(guarded.to_str().unwrap())), "{lines:#?}");
    assert_eq!(fs::read(&guarded).unwrap(), b"guarded");

    // Non-empty again: both follow.
    env.seed(&[("/app/guarded", b"guarded-2"), ("/app/open", b"open-2")]).await;
    wait_for_file(&guarded, b"guarded-2", WAIT);
    wait_for_file(&open, b"open-2", WAIT);
}

// ------------------------------------------------------------------ 7. equal bytes: no rewrite

#[tokio::test(flavor = "multi_thread")]
async fn equal_bytes_are_not_rewritten_and_do_not_reload() {
    let env = Env::new("equal").await;
    env.seed(&[("/app/conf", b"same"), ("/app/other", b"other-1")]).await;
    let (dest, other, counter) = (env.path("conf"), env.path("other"), env.path("reloads"));
    let config = env.write_config(&format!(
        "[[file]]\ndest = {}\nznode = \"/app/conf\"\n{}\n\
             [[file]]\ndest = {}\nznode = \"/app/other\"\n",
        toml_path(&dest),
        counting_reload(&counter),
        toml_path(&other)
    ));
    let agent = Agent::run(&config);
    wait_for_file(&dest, b"same", WAIT);
    wait_for_file(&other, b"other-1", WAIT);
    wait_until(|| line_count(&counter) == 1, WAIT, "the first reload");
    let before = identity(&dest);

    // The same bytes again (a new znode version), then a change elsewhere as a marker.
    env.seed(&[("/app/conf", b"same"), ("/app/other", b"other-2")]).await;
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
    env.seed(&[("/app/name", b"one"), ("/app/list/a", b"1")]).await;
    let dest = env.path("out.txt");
    let config = env.config().zookeeper(&format!("watch = {mode:?}")).write(&format!(
            "[[file]]\ndest = {}\nprefix = \"/app\"\n\
             inline = '''name={{{{ znode(\"name\") }}}}{{% for c in children(\"list\") %}} {{{{ c }}}}={{{{ znode(\"list/\" ~ c) }}}}{{% endfor %}}'''\n",
            toml_path(&dest)
        ),
    );
    let agent = Agent::run(&config);
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
    let config = env.write_config(&format!(
        "[[file]]\ndest = {}\nznode = \"/app/raw\"\n{}\n\
             [[file]]\ndest = {}\ninline = 'hello {{{{ znode(\"/app/name\") }}}}'\n{}",
        toml_path(&raw),
        counting_reload(&counter),
        toml_path(&tpl),
        counting_reload(&counter)
    ));
    let out = zkrender_in(
        env.dir(),
        &[
            OsStr::new("once"),
            OsStr::new("-c"),
            config.as_os_str(),
            OsStr::new("--timeout"),
            OsStr::new("10s"),
        ],
    );
    assert_succeeded(&out, "once");
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
    let config = env.write_config(&format!(
        "[[file]]\ndest = {}\nznode = \"/app/not-there\"\n\n\
             [[file]]\ndest = {}\ninline = 'hello {{{{ znode(\"/app/name\") }}}}'\n{}",
        toml_path(&missing),
        toml_path(&tpl),
        counting_reload(&counter)
    ));
    let started = Instant::now();
    let out = zkrender_in(
        env.dir(),
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
    env.seed(&[("/app/alpha", b"alpha\n"), ("/app/name", b"beta")]).await;
    let binary = [0x00, 0xff, 0x0a, 0xfe, 0x01];
    env.set("/app/bin", &binary).await;
    let (alpha, beta, bin) = (env.path("out/alpha"), env.path("out/beta"), env.path("out/c.bin"));
    let config = env.write_config(
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
    assert_succeeded(&out, "render");
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
    assert_succeeded(&out, "check of a valid config");

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
    let (env, dest) = env_with_x("sigterm", b"x").await;
    let config = env.write_config(&raw_file(&dest, "/app/x"));
    let agent = Agent::run(&config);
    wait_for_file(&dest, b"x", WAIT);
    agent.wait_for_log("ready: every file is written", WAIT);
    let status = agent.stop();
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}; log:\n{}", agent.log());
    assert_eq!(fs::read(&dest).unwrap(), b"x");
}

// ------------------------------------------------------------------ 13. resync

#[tokio::test(flavor = "multi_thread")]
async fn resync_repairs_a_file_edited_by_hand() {
    let (env, dest) = env_with_x("resync", b"from zookeeper\n").await;
    let config = env.config().agent("resync = \"1s\"").write(&raw_file(&dest, "/app/x"));
    let agent = Agent::run(&config);
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
    env.seed(&[("/app/a", b"correct-a"), ("/app/b", b"correct-b")]).await;
    let (a, b) = (env.path("a"), env.path("b"));
    let (count_a, count_b) = (env.path("reloads-a"), env.path("reloads-b"));
    fs::write(&a, b"correct-a").unwrap();
    fs::write(&b, b"stale-b").unwrap();
    let a_before = identity(&a);
    let config = env.write_config(&format!(
        "[[file]]\ndest = {}\nznode = \"/app/a\"\n{}\n[[file]]\ndest = {}\nznode = \"/app/b\"\n{}",
        toml_path(&a),
        counting_reload(&count_a),
        toml_path(&b),
        counting_reload(&count_b)
    ));
    let agent = Agent::run(&config);
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
    let config = env.write_config(&format!(
        "[[file]]\ndest = {}\ninline = 'one {{{{ znode(\"/app/shared\") }}}}'\n{reload}\n\
             [[file]]\ndest = {}\ninline = 'two {{{{ znode(\"/app/shared\") }}}}'\n{reload}",
        toml_path(&one),
        toml_path(&two)
    ));
    let agent = Agent::run(&config);
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
        env.hosts(),
        env.chroot()
    );
    write_config(&cfg_dir, &toml);
    let script = format!("cd {} && exec \"$0\" run -c ../cfg/zkrender.toml", toml_path(&cwd));
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

// ------------------------------------------------------------------ more of the contract

#[tokio::test(flavor = "multi_thread")]
async fn once_waits_for_a_missing_znode_within_its_timeout() {
    let env = Env::new("once-wait").await;
    let dest = env.path("late");
    let config = env.write_config(&raw_file(&dest, "/app/late"));
    let child = Command::new(env!("CARGO_BIN_EXE_zkrender"))
        .args([
            OsStr::new("once"),
            OsStr::new("-c"),
            config.as_os_str(),
            OsStr::new("--timeout"),
            OsStr::new("10s"),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    env.set("/app/late", b"arrived").await;
    let out = child.wait_with_output().unwrap();
    assert_succeeded(&out, "once");
    assert_eq!(fs::read(&dest).unwrap(), b"arrived");
}

#[tokio::test(flavor = "multi_thread")]
async fn removed_file_reloads_and_on_delete_works_in_persistent_mode() {
    let (env, dest) = env_with_x("remove-reload", b"x1").await;
    let counter = env.path("reloads");
    let config = env.config().zookeeper("watch = \"persistent\"").write(&format!(
        "[[file]]\ndest = {}\nznode = \"/app/x\"\non_delete = \"remove\"\n{}",
        toml_path(&dest),
        counting_reload(&counter)
    ));
    let agent = Agent::run(&config);
    wait_for_file(&dest, b"x1", WAIT);
    wait_until(|| line_count(&counter) == 1, WAIT, "the first reload");
    env.delete("/app/x").await;
    wait_for_no_file(&dest, WAIT);
    wait_until(|| line_count(&counter) == 2, WAIT, "the reload after the removal");
    env.set("/app/x", b"x2").await;
    wait_for_file(&dest, b"x2", WAIT);
    wait_until(|| line_count(&counter) == 3, WAIT, "the reload after the re-creation");
    assert!(agent.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn exists_and_branches_follow_znodes_appearing() {
    let env = Env::new("exists").await;
    env.seed(&[("/app/mode", b"a"), ("/app/a", b"A1"), ("/app/b", b"B1")]).await;
    let dest = env.path("out");
    let config = env.write_config(&format!(
            "[[file]]\ndest = {}\nprefix = \"/app\"\ninline = '''{{% if exists(\"flag\") %}}flag {{% endif %}}{{% if znode(\"mode\") == \"a\" %}}{{{{ znode(\"a\") }}}}{{% else %}}{{{{ znode(\"b\") }}}}{{% endif %}}'''\n",
            toml_path(&dest)
        ),
    );
    let agent = Agent::run(&config);
    wait_for_file(&dest, b"A1", WAIT);
    env.set("/app/flag", b"").await;
    wait_for_file(&dest, b"flag A1", WAIT);
    env.set("/app/mode", b"b").await;
    wait_for_file(&dest, b"flag B1", WAIT);
    env.set("/app/b", b"B2").await;
    wait_for_file(&dest, b"flag B2", WAIT);
    env.delete("/app/flag").await;
    wait_for_file(&dest, b"B2", WAIT);
    env.seed(&[("/app/mode", b"a"), ("/app/a", b"A2")]).await;
    wait_for_file(&dest, b"A2", WAIT);
    assert!(agent.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn chroot_in_the_connect_string_and_hosts_array() {
    let env = Env::new("hosts").await;
    env.set("/app/x", b"via connect string").await;
    let (a, b) = (env.path("a"), env.path("b"));
    let toml = format!(
        "[zookeeper]\nhosts = \"{}{}\"\n\n[agent]\nlisten = \"\"\n\n[[file]]\ndest = {}\nznode = \"/app/x\"\n",
        env.hosts(),
        env.chroot(),
        toml_path(&a)
    );
    let cfg_a = write_config(&env.path(""), &toml);
    let agent = Agent::run(&cfg_a);
    wait_for_file(&a, b"via connect string", WAIT);
    agent.stop();
    let dir_b = env.mkdir("b-dir");
    let toml = format!(
        "[zookeeper]\nhosts = [{:?}]\nchroot = {:?}\n\n[agent]\nlisten = \"\"\n\n[[file]]\ndest = {}\nznode = \"/app/x\"\n",
        env.hosts(),
        env.chroot(),
        toml_path(&b)
    );
    let cfg_b = write_config(&dir_b, &toml);
    let agent = Agent::run(&cfg_b);
    wait_for_file(&b, b"via connect string", WAIT);
    assert!(agent.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn quiescence_batches_a_burst_into_one_write() {
    let (env, dest) = env_with_x("wait", b"0").await;
    let config = env.config().agent("wait = \"400ms\"\nmax_wait = \"5s\"").write(&raw_file(&dest, "/app/x"));
    let agent = Agent::run(&config);
    wait_for_file(&dest, b"0", WAIT);
    agent.wait_for_log("file written", WAIT); // logged just after the install
    let before = log_lines(&agent, "file written").len();
    for i in 1..=20 {
        env.set("/app/x", format!("{i}").as_bytes()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    wait_for_file(&dest, b"20", WAIT);
    std::thread::sleep(QUIET);
    assert_eq!(log_lines(&agent, "file written").len(), before + 1, "log:\n{}", agent.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn check_file_placeholder_inside_an_argument() {
    let (env, dest) = env_with_x("check-arg", b"hello").await;
    let config = env.write_config(&format!(
            "[[file]]\ndest = {}\nznode = \"/app/x\"\ncheck = [\"sh\", \"-c\", '[ \"$2\" = \"--file=$1\" ] && [ \"$(cat \"$1\")\" = hello ]', \"sh\", \"{{file}}\", \"--file={{file}}\"]\n",
            toml_path(&dest)
        ),
    );
    let agent = Agent::run(&config);
    wait_for_file(&dest, b"hello", WAIT);
    assert!(agent.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn template_rendering_empty_is_guarded() {
    let (env, dest) = env_with_x("empty-tpl", b"text").await;
    let config = env.write_config(&format!(
        "[[file]]\ndest = {}\ninline = '{{{{ znode(\"/app/x\") }}}}'\n",
        toml_path(&dest)
    ));
    let agent = Agent::run(&config);
    wait_for_file(&dest, b"text", WAIT);
    env.set("/app/x", b"").await;
    agent.wait_for_log("refusing to replace", WAIT);
    assert_eq!(fs::read(&dest).unwrap(), b"text");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigint_exits_zero() {
    let (env, dest) = env_with_x("sigint", b"x").await;
    let config = env.write_config(&raw_file(&dest, "/app/x"));
    let agent = Agent::run(&config);
    agent.wait_for_log("ready: every file is written", WAIT);
    agent.signal(nix::sys::signal::Signal::SIGINT);
    let status = agent.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "log:\n{}", agent.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn render_with_a_missing_znode_fails() {
    let env = Env::new("render-missing").await;
    let config = env.write_config("[[file]]\ndest = \"out\"\nznode = \"/app/none\"\n");
    let out = zkrender_in(
        env.dir(),
        &[
            OsStr::new("render"),
            OsStr::new("-c"),
            config.as_os_str(),
            OsStr::new("--timeout"),
            OsStr::new("1s"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("/app/none"), "{}", text(&out.stderr));
    assert!(out.stdout.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn deleted_children_parent_and_back() {
    let env = Env::new("parent").await;
    env.set("/app/list/a", b"1").await;
    let dest = env.path("x");
    let config = env.write_config(&format!(
        "[[file]]\ndest = {}\ninline = 'list={{{{ children(\"/app/list\") | join(\",\") }}}}'\n",
        toml_path(&dest)
    ));
    let agent = Agent::run(&config);
    wait_for_file(&dest, b"list=a", WAIT);
    env.delete("/app/list/a").await;
    wait_for_file(&dest, b"list=", WAIT);
    env.delete("/app/list").await;
    agent.wait_for_log("file not updated", WAIT);
    assert!(log_lines(&agent, "file not updated").iter().any(|l| l.contains("/app/list")), "{}", agent.log());
    assert_eq!(fs::read(&dest).unwrap(), b"list=");
    env.set("/app/list/b", b"2").await;
    wait_for_file(&dest, b"list=b", WAIT);
}

async fn burst_of_everything(mode: &str) {
    let env = Env::new(&format!("burst-all-{mode}")).await;
    env.set("/app/x", b"x0").await;
    common::mkdir(env.client(), "/app/kids").await;
    let (raw, list) = (env.path("raw"), env.path("list"));
    let config = env.config().zookeeper(&format!("watch = {mode:?}")).write(&format!(
            "[[file]]\ndest = {}\nznode = \"/app/x\"\n\n[[file]]\ndest = {}\ninline = 'n={{{{ children(\"/app/kids\") | length }}}}'\n",
            toml_path(&raw), toml_path(&list)
        ),
    );
    let agent = Agent::run(&config);
    wait_for_file(&raw, b"x0", WAIT);
    wait_for_file(&list, b"n=0", WAIT);
    for i in 0..30 {
        assert!(common::delete(env.client(), "/app/x").await);
        env.set("/app/x", format!("x{}", i + 1).as_bytes()).await;
    }
    for i in 0..200 {
        env.set(&format!("/app/kids/k{i:03}"), b"").await;
    }
    wait_for_file(&raw, b"x30", WAIT);
    wait_for_file(&list, b"n=200", WAIT);
    for i in 0..150 {
        assert!(common::delete(env.client(), &format!("/app/kids/k{i:03}")).await);
    }
    wait_for_file(&list, b"n=50", WAIT);
    for i in 0..500 {
        env.client().set_data("/app/x", format!("y{i}").as_bytes(), None).await.unwrap();
    }
    wait_for_file(&raw, b"y499", WAIT);
    assert!(agent.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn bursts_converge_oneshot() {
    burst_of_everything("oneshot").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bursts_converge_persistent() {
    burst_of_everything("persistent").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn check_timeout_kills_and_keeps_the_old_file() {
    let (env, dest) = env_with_x("check-timeout", b"fast").await;
    let config = env.write_config(&format!(
            "[[file]]\ndest = {}\nznode = \"/app/x\"\ncheck_timeout = \"500ms\"\ncheck = [\"sh\", \"-c\", 'grep -q slow \"$1\" && sleep 30; exit 0', \"sh\", \"{{file}}\"]\n",
            toml_path(&dest)
        ),
    );
    let agent = Agent::run(&config);
    wait_for_file(&dest, b"fast", WAIT);
    let t = Instant::now();
    env.set("/app/x", b"slow").await;
    agent.wait_for_log("file not updated", WAIT);
    eprintln!("check timeout noticed after {:?}: {:?}", t.elapsed(), log_lines(&agent, "file not updated"));
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(fs::read(&dest).unwrap(), b"fast");
    env.set("/app/x", b"fast again").await;
    wait_for_file(&dest, b"fast again", WAIT);
}

#[tokio::test(flavor = "multi_thread")]
async fn backup_and_in_place() {
    let env = Env::new("backup").await;
    env.set("/app/x", b"one").await;
    let (bak, inplace) = (env.path("bak"), env.path("inplace"));
    let config = env.write_config(&format!(
            "[[file]]\ndest = {}\nznode = \"/app/x\"\nbackup = true\n\n[[file]]\ndest = {}\nznode = \"/app/x\"\ninstall = \"in-place\"\nmode = \"0600\"\n",
            toml_path(&bak), toml_path(&inplace)
        ),
    );
    let agent = Agent::run(&config);
    wait_for_file(&bak, b"one", WAIT);
    wait_for_file(&inplace, b"one", WAIT);
    let ino = fs::metadata(&inplace).unwrap().ino();
    env.set("/app/x", b"two!").await;
    wait_for_file(&bak, b"two!", WAIT);
    wait_for_file(&inplace, b"two!", WAIT);
    assert_eq!(fs::read(env.path("bak.bak")).unwrap(), b"one");
    assert_eq!(fs::metadata(&inplace).unwrap().ino(), ino);
    assert_eq!(mode_of(&inplace), 0o600);
    env.set("/app/x", b"3").await;
    wait_for_file(&inplace, b"3", WAIT);
    wait_for_file(&bak, b"3", WAIT);
    assert_eq!(fs::read(env.path("bak.bak")).unwrap(), b"two!");
    assert!(agent.is_running());
}

#[tokio::test(flavor = "multi_thread")]
async fn once_leaves_correct_files_alone_and_fixes_mode() {
    let (env, dest) = env_with_x("once-correct", b"same").await;
    fs::write(&dest, b"same").unwrap();
    let before = identity(&dest);
    let config = env.write_config(&raw_file(&dest, "/app/x"));
    let out = zkrender_in(env.dir(), &[OsStr::new("once"), OsStr::new("-c"), config.as_os_str()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(identity(&dest), before);
}

#[tokio::test(flavor = "multi_thread")]
async fn resync_of_correct_files_neither_rewrites_nor_reloads() {
    let env = Env::new("resync-quiet").await;
    env.seed(&[("/app/x", b"x"), ("/app/t", b"t")]).await;
    let (raw, tpl, counter) = (env.path("x"), env.path("t"), env.path("reloads"));
    let config = env.config().agent("resync = \"300ms\"").write(&format!(
            "[[file]]\ndest = {}\nznode = \"/app/x\"\n{}\n[[file]]\ndest = {}\ninline = 't={{{{ znode(\"/app/t\") }}}}'\n{}",
            toml_path(&raw),
            counting_reload(&counter),
            toml_path(&tpl),
            counting_reload(&counter)
        ),
    );
    let agent = Agent::start_with_env(
        [OsStr::new("run"), OsStr::new("-c"), config.as_os_str()],
        &[("RUST_LOG", "zkrender=debug")],
    );
    wait_for_file(&raw, b"x", WAIT);
    wait_for_file(&tpl, b"t=t", WAIT);
    wait_until(|| line_count(&counter) >= 1, WAIT, "the start-up reload");
    std::thread::sleep(QUIET);
    let reloads = line_count(&counter);
    let (raw_id, tpl_id) = (identity(&raw), identity(&tpl));

    const RESYNC: &str = "resync: re-reading every dependency and checking every file";
    let resyncs = log_lines(&agent, RESYNC).len();
    agent.wait_for_log_count(RESYNC, resyncs + 3, WAIT);
    std::thread::sleep(Duration::from_millis(200)); // the last resync's reads and cycle
    assert_eq!(identity(&raw), raw_id, "resync rewrote a correct raw file");
    assert_eq!(identity(&tpl), tpl_id, "resync rewrote a correct template file");
    assert_eq!(line_count(&counter), reloads, "resync fired reloads; log:\n{}", agent.log());
}

/// More dependencies than the source reads at once (256 first reads or resync re-reads; the
/// rest wait for a slot): the first render still sees every value, every resync still re-reads
/// every dependency (a slot not given back would stall the queue), and the watches still fire.
#[tokio::test(flavor = "multi_thread")]
async fn more_dependencies_than_reads_at_once_are_all_read_and_resynced() {
    const KEYS: usize = 600;
    let env = Env::new("many-deps").await;
    let names: Vec<String> = (0..KEYS).map(|i| format!("/app/k{i}")).collect();
    let values: Vec<(&str, &[u8])> = names.iter().map(|n| (n.as_str(), n.as_bytes())).collect();
    env.seed(&values).await;
    let dest = env.path("all");
    let config = env.config().agent("resync = \"500ms\"").write(&format!(
        "[[file]]\ndest = {}\ninline = \"{{% for i in range({KEYS}) %}}{{{{ znode('/app/k' ~ i) }}}}\\n{{% endfor %}}\"\n",
        toml_path(&dest),
    ));
    let agent = Agent::start_with_env(
        [OsStr::new("run"), OsStr::new("-c"), config.as_os_str()],
        &[("RUST_LOG", "zkrender=debug")],
    );
    let expected: String = names.iter().map(|n| format!("{n}\n")).collect();
    wait_for_file(&dest, expected.as_bytes(), WAIT);

    const RESYNC: &str = "resync: re-reading every dependency and checking every file";
    let per_dep =
        |agent: &Agent| log_lines(agent, "resync: re-reading").iter().filter(|l| l.contains("dep=")).count();
    let (resyncs, reread) = (log_lines(&agent, RESYNC).len(), per_dep(&agent));
    agent.wait_for_log_count(RESYNC, resyncs + 3, WAIT);
    // The third resync's re-reads may still be under way; the first two's are done.
    wait_until(|| per_dep(&agent) >= reread + 2 * KEYS, WAIT, "two resyncs' re-reads of every dependency");

    env.set("/app/k599", "changed").await;
    let expected = expected.replace("/app/k599\n", "changed\n");
    wait_for_file(&dest, expected.as_bytes(), WAIT);
}

#[tokio::test(flavor = "multi_thread")]
async fn empty_znode_and_no_file_yet_writes_an_empty_file() {
    let (env, dest) = env_with_x("empty-new", b"").await;
    let config = env.write_config(&raw_file(&dest, "/app/x"));
    let agent = Agent::run(&config);
    wait_for_file(&dest, b"", WAIT);
    agent.wait_for_log("ready: every file is written", WAIT);
}

#[tokio::test(flavor = "multi_thread")]
async fn only_files_depending_on_a_changed_znode_are_rewritten() {
    let env = Env::new("dependents").await;
    env.seed(&[("/app/a", b"a"), ("/app/b", b"b")]).await;
    let (a, b) = (env.path("a"), env.path("b"));
    let config = env.write_config(&format!(
        "[[file]]\ndest = {}\ninline = 'a={{{{ znode(\"/app/a\") }}}}'\n\n\
             [[file]]\ndest = {}\ninline = 'b={{{{ znode(\"/app/b\") }}}}'\n",
        toml_path(&a),
        toml_path(&b)
    ));
    let agent = Agent::run(&config);
    wait_for_file(&a, b"a=a", WAIT);
    wait_for_file(&b, b"b=b", WAIT);
    let b_id = identity(&b);
    for v in ["a2", "a3", "a4"] {
        env.set("/app/a", v.as_bytes()).await;
        wait_for_file(&a, format!("a={v}").as_bytes(), WAIT);
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(identity(&b), b_id);
    let b_writes = log_lines(&agent, "file written")
        .iter()
        .filter(|l| l.contains(&format!("dest={} ", b.display())))
        .count();
    assert_eq!(b_writes, 1, "log:\n{}", agent.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn template_reading_non_utf8_data_fails_naming_the_znode_until_fixed() {
    let (env, dest) = env_with_x("nonutf8", &[0xff, 0xfe]).await;
    let config = env.write_config(&format!(
        "[[file]]\ndest = {}\ninline = 'v={{{{ znode(\"/app/x\") }}}}'\n",
        toml_path(&dest)
    ));
    let agent = Agent::run(&config);
    agent.wait_for_log("file not updated", WAIT);
    let errors = log_lines(&agent, "file not updated");
    assert!(errors.iter().any(|l| l.contains("/app/x") && l.contains("UTF-8")), "{errors:#?}");
    assert!(!dest.exists());
    env.set("/app/x", "é".as_bytes()).await;
    wait_for_file(&dest, "v=é".as_bytes(), WAIT);
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_finishes_the_install_in_progress_then_exits_zero() {
    let (env, dest) = env_with_x("sigterm-install", b"old").await;
    let marker = env.path("check-started");
    // The check of "new" announces itself, then takes 1.5 s.
    let config = env.write_config(&format!(
            "[[file]]\ndest = {}\nznode = \"/app/x\"\n\
             check = [\"sh\", \"-c\", 'if grep -q new \"$1\"; then touch \"$2\"; sleep 1.5; fi', \"sh\", \"{{file}}\", {}]\n",
            toml_path(&dest),
            toml_path(&marker)
        ),
    );
    let agent = Agent::run(&config);
    wait_for_file(&dest, b"old", WAIT);
    env.set("/app/x", b"new").await;
    wait_until(|| marker.exists(), WAIT, "the check of the new value to start");
    let t = Instant::now();
    let status = agent.stop();
    assert_eq!(status.code(), Some(0), "exit after SIGTERM: {status}; log:\n{}", agent.log());
    assert!(
        t.elapsed() >= Duration::from_millis(1000),
        "exited after {:?}, before the check ended",
        t.elapsed()
    );
    assert_eq!(
        fs::read(&dest).unwrap(),
        b"new",
        "the install in progress was not finished; log:\n{}",
        agent.log()
    );
}

/// True while process `pid` exists and is not a zombie.
fn alive(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_second_sigterm_exits_at_once_leaving_no_check_process_or_temp_file() {
    let (env, dest) = env_with_x("sigterm-twice", b"old").await;
    let marker = env.path("check-pid");
    // The check of "new" writes its pid (it leads its own process group), then hangs.
    let config = env.write_config(&format!(
            "[[file]]\ndest = {}\nznode = \"/app/x\"\ncheck_timeout = \"60s\"\n\
             check = [\"sh\", \"-c\", 'if grep -q new \"$1\"; then echo $$ > \"$2\"; sleep 20; fi', \"sh\", \"{{file}}\", {}]\n",
            toml_path(&dest),
            toml_path(&marker)
        ),
    );
    let agent = Agent::run(&config);
    wait_for_file(&dest, b"old", WAIT);
    env.set("/app/x", b"new").await;
    let mut check_pid = 0;
    wait_until(
        || {
            check_pid = fs::read_to_string(&marker).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
            check_pid > 0
        },
        WAIT,
        "the slow check to start",
    );
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    agent.wait_for_log("shutting down", WAIT);
    std::thread::sleep(Duration::from_millis(200));
    assert!(agent.is_running(), "the first SIGTERM did not wait for the install in progress");

    let t = Instant::now();
    agent.signal(nix::sys::signal::Signal::SIGTERM);
    let status = agent.wait_exit(Duration::from_secs(3));
    eprintln!("second SIGTERM: {status} after {:?}", t.elapsed());
    assert_eq!(fs::read(&dest).unwrap(), b"old", "an abandoned install must leave the old file");
    let check_left = alive(check_pid);
    let temps = temp_files(env.dir());
    if check_left {
        // Clean up what the agent left: the check's process group (the test started it).
        let _ = nix::sys::signal::killpg(
            nix::unistd::Pid::from_raw(check_pid),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    assert!(!check_left, "the check (pid {check_pid}) outlived the agent; log:\n{}", agent.log());
    assert!(temps.is_empty(), "temporary files left behind: {temps:?}");
}

#[test]
fn once_and_render_without_zookeeper_fail_within_their_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = format!("127.0.0.1:{}", closed_port());
    let config = write_config(
        dir.path(),
        &format!(
            "[zookeeper]\nhosts = {hosts:?}\n\n[agent]\nlisten = \"\"\n\n[[file]]\ndest = \"out\"\nznode = \"/app/x\"\n"
        ),
    );
    for cmd in ["once", "render"] {
        let t = Instant::now();
        let out = zkrender_in(
            dir.path(),
            &[
                OsStr::new(cmd),
                OsStr::new("-c"),
                config.as_os_str(),
                OsStr::new("--timeout"),
                OsStr::new("2s"),
            ],
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{cmd}: {stderr}");
        assert!(t.elapsed() < Duration::from_secs(6), "{cmd} took {:?}", t.elapsed());
        assert!(!dir.path().join("out").exists());
        assert!(out.stdout.is_empty(), "{cmd} printed {:?}", text(&out.stdout));
        // The final error names the server and the timeout given (not the time left at the
        // last attempt).
        let last = stderr.lines().rfind(|l| l.starts_with("error:")).unwrap_or_default();
        assert!(last.contains(&hosts), "{cmd}: the error does not name {hosts}: {stderr}");
        assert!(last.contains("2s"), "{cmd}: the error does not name the 2s timeout: {last:?}");
    }
}

#[test]
fn run_with_a_bad_config_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let config =
        write_config(dir.path(), "[zookeeper]\nhosts = \"127.0.0.1:1\"\n\n[[file]]\ndest = \"out\"\n");
    let agent = Agent::run(&config);
    let status = agent.wait_exit(WAIT);
    assert_eq!(status.code(), Some(2), "log:\n{}", agent.log());
    eprintln!("{}", agent.log());
}

#[tokio::test(flavor = "multi_thread")]
async fn template_runtime_error_keeps_the_file_until_fixed() {
    let env = Env::new("tpl-error").await;
    env.set("/app/json", br#"{"port": 80}"#).await;
    let dest = env.path("x");
    let config = env.write_config(&format!(
        "[[file]]\ndest = {}\ninline = 'port={{{{ (znode(\"/app/json\") | from_json).port }}}}'\n",
        toml_path(&dest)
    ));
    let agent = Agent::run(&config);
    wait_for_file(&dest, b"port=80", WAIT);
    env.set("/app/json", b"{not json").await;
    agent.wait_for_log("file not updated", WAIT);
    eprintln!("{:?}", log_lines(&agent, "file not updated"));
    assert_eq!(fs::read(&dest).unwrap(), b"port=80");
    env.set("/app/json", br#"{"port": 8080}"#).await;
    wait_for_file(&dest, b"port=8080", WAIT);
    agent.wait_for_log("file recovered", WAIT);
}
