//! `zkrender diff`, `init` and `man`, end to end: the built binary against a real ZooKeeper.
//!
//! `diff` prints what would change and exits 0 (nothing), 1 (something), 2 (config error) or
//! 3 (a file cannot be rendered, or no ZooKeeper within `--timeout`), and writes and reloads
//! nothing. `init` prints a starter config that `check` accepts, and `--output` never
//! overwrites. `man` carries the configuration reference and the exit codes.

mod common;

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::*;
use sha2::{Digest, Sha256};

/// Runs the binary to completion (stdin from /dev/null).
fn zkrender(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zkrender"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run zkrender")
}

/// `zkrender diff -c CONFIG ARGS...`.
fn diff(config: &Path, args: &[&str]) -> Output {
    let mut all = vec!["diff", "-c", config.to_str().unwrap()];
    all.extend_from_slice(args);
    zkrender(&all)
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `zkrender diff`, asserting its exit code (see [`assert_exit`]).
fn diff_exits(config: &Path, args: &[&str], code: i32, what: &str) -> Output {
    let out = diff(config, args);
    assert_exit(&out, code, what);
    out
}

/// Asserts the exit code, showing stdout and stderr otherwise.
fn assert_exit(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}: expected exit {code}, got {}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        stdout(out),
        stderr(out)
    );
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// A `[file.reload]` whose command creates `marker`: it must never run under `diff`.
fn marker_reload(marker: &Path) -> String {
    format!("[file.reload]\ncommand = [\"touch\", {}]\n", toml_path(marker))
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_exits_1_on_a_change_0_when_equal_and_writes_nothing() {
    let env = Env::new("diff-codes").await;
    env.set("/app/a", "one\ntwo\nthree\n").await;
    env.set("/app/b", "bee\n").await;
    let (a, b, marker) = (env.path("a.conf"), env.path("b.conf"), env.path("reloaded"));
    let config = env.write_config(&format!(
        "{}{}{}",
        raw_file(&a, "/app/a"),
        marker_reload(&marker),
        raw_file(&b, "/app/b")
    ));
    fs::write(&b, "bee\n").unwrap();

    // a.conf is missing: it diffs against empty. b.conf is equal: no output for it.
    let out = diff_exits(&config, &[], 1, "a missing file");
    let a_name = a.display();
    assert_eq!(
        stdout(&out),
        format!("--- {a_name}\n+++ {a_name} (rendered)\n@@ -0,0 +1,3 @@\n+one\n+two\n+three\n")
    );
    assert!(!a.exists(), "diff must not write {a_name}");

    // A changed line, in unified form.
    fs::write(&a, "one\n2\nthree\n").unwrap();
    let out = diff_exits(&config, &[], 1, "a changed line");
    assert_eq!(
        stdout(&out),
        format!("--- {a_name}\n+++ {a_name} (rendered)\n@@ -1,3 +1,3 @@\n one\n-2\n+two\n three\n")
    );
    assert_eq!(fs::read(&a).unwrap(), b"one\n2\nthree\n", "diff must not touch the file");

    // --dest limits it to one file: b.conf is up to date.
    let out = diff_exits(&config, &["--dest", "b.conf"], 0, "--dest b.conf, which is up to date");
    assert_eq!(stdout(&out), "");

    // Everything equal: exit 0, no output.
    fs::write(&a, "one\ntwo\nthree\n").unwrap();
    let out = diff_exits(&config, &[], 0, "every file up to date");
    assert_eq!(stdout(&out), "");
    assert!(!marker.exists(), "diff must not reload");
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_exits_2_on_a_config_error() {
    let env = Env::new("diff-config").await;
    let dest = env.path("a.conf");
    let config = env.write_config(&format!("{}mode = \"0999\"\n", raw_file(&dest, "/app/a")));
    let out = diff_exits(&config, &[], 2, "an invalid mode");
    assert!(stderr(&out).contains("zkrender.toml"), "the error names the config file: {}", stderr(&out));

    let config = env.write_config(&raw_file(&dest, "/app/a"));
    let out = diff_exits(&config, &["--dest", "other.conf"], 2, "a --dest no [[file]] has");
    assert!(stderr(&out).contains("other.conf"), "the error names the dest: {}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_exits_3_when_zookeeper_cannot_be_reached_in_time() {
    let env = Env::new("diff-unreachable").await;
    let dest = env.path("a.conf");
    // Nothing listens on this port.
    let hosts = format!("127.0.0.1:{}", free_port());
    let config = ConfigBuilder::new(env.dir(), &hosts).write(&raw_file(&dest, "/app/a"));
    let started = Instant::now();
    let out = diff(&config, &["--timeout", "2s"]);
    let took = started.elapsed();
    assert_exit(&out, 3, "an unreachable ZooKeeper");
    assert!(took < Duration::from_secs(10), "--timeout 2s, yet diff took {took:?}");
    assert!(stderr(&out).contains(&hosts), "the error names the hosts: {}", stderr(&out));
    assert_eq!(stdout(&out), "");
    assert!(!dest.exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_exits_3_when_a_template_fails_and_still_shows_the_others() {
    let env = Env::new("diff-template").await;
    env.set("/app/json", "{not json").await;
    env.set("/app/ok", "fine\n").await;
    let (bad, ok) = (env.path("bad.conf"), env.path("ok.conf"));
    let config = env.write_config(&format!(
        "[[file]]\ndest = {}\ninline = '{{{{ (znode(\"/app/json\") | from_json).x }}}}'\n\n{}",
        toml_path(&bad),
        raw_file(&ok, "/app/ok")
    ));
    let out = diff_exits(&config, &["--timeout", "5s"], 3, "a template that fails to render");
    assert!(stderr(&out).contains(&bad.display().to_string()), "the error names the file: {}", stderr(&out));
    let ok_name = ok.display();
    assert_eq!(stdout(&out), format!("--- {ok_name}\n+++ {ok_name} (rendered)\n@@ -0,0 +1 @@\n+fine\n"));
    assert!(!bad.exists() && !ok.exists(), "diff must write nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn diff_reports_binary_contents_with_sizes_and_sha256() {
    let env = Env::new("diff-binary").await;
    let data: &[u8] = b"\xff\x00\x01";
    env.set("/app/bin", data).await;
    let dest = env.path("keystore");
    let config = env.write_config(&raw_file(&dest, "/app/bin"));
    fs::write(&dest, "text\n").unwrap();
    let out = diff_exits(&config, &[], 1, "binary contents that differ");
    let name = dest.display();
    assert_eq!(
        stdout(&out),
        format!(
            "--- {name}\n+++ {name} (rendered)\nbinary files differ: on disk 5 bytes, sha256 {}; rendered 3 bytes, sha256 {}\n",
            sha256_hex(b"text\n"),
            sha256_hex(data)
        )
    );
    fs::write(&dest, data).unwrap();
    let out = diff_exits(&config, &[], 0, "equal binary contents");
    assert_eq!(stdout(&out), "");
}

#[test]
fn init_prints_a_config_that_check_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let out = zkrender(&["init"]);
    assert_exit(&out, 0, "init");
    let config = write_config(dir.path(), &stdout(&out));
    let check = zkrender(&["check", "-c", config.to_str().unwrap()]);
    assert_exit(&check, 0, "check of init's output");
}

#[test]
fn init_output_writes_once_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("zkrender.toml");
    let arg = path.to_str().unwrap();
    assert_exit(&zkrender(&["init", "--output", arg]), 0, "init --output a new file");
    let written = fs::read_to_string(&path).unwrap();
    assert_eq!(written, stdout(&zkrender(&["init"])), "--output writes what init prints");
    assert_exit(&zkrender(&["check", "-c", arg]), 0, "check of init --output");

    fs::write(&path, "# mine\n").unwrap();
    let out = zkrender(&["init", "--output", arg]);
    assert_exit(&out, 1, "init --output an existing file");
    assert!(stderr(&out).contains(arg), "the error names the file: {}", stderr(&out));
    assert_eq!(fs::read_to_string(&path).unwrap(), "# mine\n", "the existing file is untouched");
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1, "no temporary file is left");
}

#[test]
fn man_carries_config_keys_exit_codes_and_signals() {
    let out = zkrender(&["man"]);
    assert_exit(&out, 0, "man");
    let man = stdout(&out);
    for needle in [
        ".SH CONFIGURATION",
        ".SS [zookeeper]",
        "session_timeout",
        "credentials_file",
        "check_timeout",
        "splay",
        ".SH TEMPLATES",
        "children(path, default=...)",
        ".SH \"EXIT STATUS\"",
        "ZooKeeper cannot be reached within \\-\\-timeout",
        ".SH SIGNALS",
        "SIGHUP",
        "zkrender\\-diff",
    ] {
        assert!(man.contains(needle), "man page lacks {needle:?}:\n{man}");
    }
}
