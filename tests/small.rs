//! Issue 9 section 4, "small crashes and mismatches", end to end: the built `zkrender` binary
//! against a real ZooKeeper (the shared one of tests/common), real pipes, sockets and signals.
//!
//! - a closed stdout ends `completions`, `man` and `render` quietly (exit 0);
//! - `status` reads `[agent] listen` from `-c` / `$ZKRENDER_CONFIG`, and says when it is off;
//! - a config reload that changes `listen` moves the endpoint (or refuses, naming the key);
//! - a taken `listen` address names the key and the fix;
//! - with `--log-format json` the final error summary is JSON too;
//! - `render --dest` naming no `[[file]]` is refused before connecting (exit 2);
//! - a pid file not there yet at the first install is one warning, not a failed reload.

mod common;

use std::ffi::OsStr;
use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{
    Agent, ConfigBuilder, Env, free_port, raw_file, taken_address, toml_path, wait_for_file, wait_until,
};
use nix::sys::signal::Signal;

/// How long any single expected effect may take.
const T: Duration = Duration::from_secs(10);

fn zkrender() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_zkrender"));
    command.stdin(Stdio::null()).env_remove("ZKRENDER_CONFIG").env_remove("ZKRENDER_LOG_FORMAT");
    command
}

/// Runs zkrender with `args` to completion; stdout and stderr captured.
fn run<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    zkrender().args(args).output().expect("cannot run zkrender")
}

/// Runs zkrender with `args`, its stdout a pipe whose reader is already gone (as under
/// `| head` once head has exited): every write to stdout fails with EPIPE.
fn run_with_closed_stdout<I, S>(args: I) -> Output
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    zkrender().args(args).stdout(writer).stderr(Stdio::piped()).output().expect("cannot run zkrender")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `GET path` on `addr` with a fresh connection: the status code, or `None` when nothing
/// answers (refused, reset).
fn http_get(addr: &str, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut reply = String::new();
    stream.read_to_string(&mut reply).ok()?;
    reply.split_whitespace().nth(1)?.parse().ok()
}

// ------------------------------------------------------------------ closed stdout

#[tokio::test(flavor = "multi_thread")]
async fn a_closed_stdout_ends_each_command_quietly() {
    let env = Env::new("small-closed-stdout").await;
    let dest = env.path("big.txt");
    // More than a pipe buffer: rendering it cannot succeed by luck.
    env.set("/app/big", vec![b'x'; 256 * 1024]).await;
    let cfg = env.write_config(&raw_file(&dest, "/app/big"));
    let cfg = cfg.to_str().unwrap();
    for args in [
        vec!["completions", "bash"],
        vec!["man"],
        vec!["render", "-c", cfg],
        vec!["render", "-c", cfg, "--dest", dest.to_str().unwrap()],
    ] {
        let out = run_with_closed_stdout(&args);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "zkrender {args:?}: {}\n{err}", out.status);
        assert!(!err.contains("panicked"), "zkrender {args:?} panicked:\n{err}");
        assert!(!err.contains("error"), "zkrender {args:?} reported an error:\n{err}");
    }
    assert!(!dest.exists(), "render wrote the file");
}

// ------------------------------------------------------------------ status

#[tokio::test(flavor = "multi_thread")]
async fn status_asks_the_address_in_the_config_and_says_when_it_is_disabled() {
    let env = Env::new("small-status").await;
    let dest = env.path("a.txt");
    env.set("/app/a", "a1").await;
    let addr = format!("127.0.0.1:{}", free_port());
    let cfg = env.config().listen(&addr).write(&raw_file(&dest, "/app/a"));
    let agent = Agent::run(&cfg);
    wait_for_file(&dest, b"a1", T);

    // -c, and $ZKRENDER_CONFIG (what -c defaults to).
    let by_flag = run(["status".as_ref(), "-c".as_ref(), cfg.as_os_str()]);
    let by_env = zkrender().arg("status").env("ZKRENDER_CONFIG", &cfg).output().unwrap();
    for out in [by_flag, by_env] {
        let table = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{}: {}\nagent log:\n{}", out.status, stderr(&out), agent.log());
        assert!(table.contains(dest.to_str().unwrap()), "the table names no file:\n{table}");
    }

    // The same directory with the endpoint off.
    let off = env.mkdir("off");
    let off_cfg = ConfigBuilder::new(&off, env.hosts()).write(&raw_file(&dest, "/app/a"));
    let out = run(["status".as_ref(), "-c".as_ref(), off_cfg.as_os_str()]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("the HTTP endpoint is disabled in {}", off_cfg.display())),
        "status should say the endpoint is off in that config:\n{err}"
    );
    assert!(out.stdout.is_empty());
    agent.stop();
}

// ------------------------------------------------------------------ listen and config reload

#[tokio::test(flavor = "multi_thread")]
async fn a_config_reload_moves_the_endpoint_to_the_new_listen_address() {
    let env = Env::new("small-listen-reload").await;
    let dest = env.path("a.txt");
    env.set("/app/a", "a1").await;
    let files = raw_file(&dest, "/app/a");
    let (first, second) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let cfg = env.config().listen(&first).write(&files);
    let agent = Agent::run(&cfg);
    wait_for_file(&dest, b"a1", T);
    assert_eq!(http_get(&first, "/healthz"), Some(200), "log:\n{}", agent.log());

    // A new address: bound, and the old one closed.
    env.config().listen(&second).write(&files);
    agent.signal(Signal::SIGHUP);
    wait_until(|| http_get(&second, "/healthz") == Some(200), T, "the endpoint on the new address");
    wait_until(|| http_get(&first, "/healthz").is_none(), T, "the old address closed");
    assert_eq!(http_get(&second, "/readyz"), Some(200));

    // An address that is taken: refused with a warning naming the key; the endpoint stays.
    let (taken, taken_addr) = taken_address();
    env.config().listen(&taken_addr).write(&files);
    agent.signal(Signal::SIGHUP);
    agent.wait_for_log("the new address cannot be bound", T);
    let log = agent.log();
    let line = log.lines().find(|l| l.contains("the new address cannot be bound")).unwrap();
    assert!(line.contains("WARN"), "{line}");
    assert!(line.contains("[agent] listen") && line.contains(&taken_addr), "{line}");
    assert!(line.contains(&format!("stays at {second}")), "{line}");
    assert_eq!(http_get(&second, "/healthz"), Some(200), "the endpoint left its working address");

    // listen = "": closed. Files are still kept up to date.
    env.config().write(&files);
    agent.signal(Signal::SIGHUP);
    wait_until(|| http_get(&second, "/healthz").is_none(), T, "the endpoint closed");
    env.set("/app/a", "a2").await;
    wait_for_file(&dest, b"a2", T);
    agent.assert_running();
    drop(taken);
    agent.stop();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_taken_listen_address_names_the_key_and_the_fix() {
    let (taken, addr) = taken_address();
    let dir = tempfile::tempdir().unwrap();
    // Nothing listens on port 1: the agent must stop on the address before any ZooKeeper.
    let cfg = ConfigBuilder::new(dir.path(), "127.0.0.1:1")
        .listen(&addr)
        .write(&raw_file(&dir.path().join("a.txt"), "/app/a"));
    let agent = Agent::run(&cfg);
    let status = agent.wait_exit(T);
    let log = agent.log();
    assert_eq!(status.code(), Some(1), "{log}");
    let last =
        log.lines().rfind(|l| l.starts_with("error: ")).unwrap_or_else(|| panic!("no error line:\n{log}"));
    assert!(last.contains(&format!("binding the HTTP endpoint to {addr}")), "{last}");
    assert!(last.contains("address already in use"), "{last}");
    assert!(last.contains("[agent] listen = \"\"") && last.contains("another port"), "the fix: {last}");
    drop(taken);
}

// ------------------------------------------------------------------ JSON error summary

/// Every line of `text` is a JSON object; returns the last one.
fn last_json_line(text: &str) -> serde_json::Value {
    let mut last = None;
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let value: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line:?}\nall:\n{text}"));
        last = Some(value);
    }
    last.unwrap_or_else(|| panic!("no line at all"))
}

#[tokio::test(flavor = "multi_thread")]
async fn with_json_logs_the_final_error_of_once_check_and_render_is_json() {
    let env = Env::new("small-json").await;
    let dest = env.path("missing.txt");
    let cfg = env.write_config(&raw_file(&dest, "/app/never"));
    let bad = env.mkdir("bad").join("zkrender.toml");
    fs::write(&bad, "[zookeeper]\nhosts = \"127.0.0.1:1\"\n[[file]]\ndest = \"x\"\nznoed = \"/x\"\n")
        .unwrap();
    let json = ["--log-format", "json"];
    let cases: [(&str, Vec<&OsStr>, i32, String); 3] = [
        (
            "once",
            vec!["once".as_ref(), "-c".as_ref(), cfg.as_os_str(), "--timeout".as_ref(), "1s".as_ref()],
            1,
            dest.display().to_string(),
        ),
        ("check", vec!["check".as_ref(), "-c".as_ref(), bad.as_os_str()], 2, "znoed".to_owned()),
        (
            "render",
            vec!["render".as_ref(), "-c".as_ref(), cfg.as_os_str(), "--timeout".as_ref(), "1s".as_ref()],
            1,
            dest.display().to_string(),
        ),
    ];
    for (name, args, code, needle) in cases {
        let out = zkrender().args(json).args(&args).output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(code), "{name}: {err}");
        let summary = last_json_line(&err);
        assert_eq!(summary["level"], "ERROR", "{name}: {summary}");
        assert_eq!(summary["exit_code"], code, "{name}: {summary}");
        let message = summary["message"].as_str().unwrap_or_default();
        assert!(message.contains(&needle), "{name}: the summary should name {needle}: {summary}");
        assert!(summary["timestamp"].is_string(), "{name}: {summary}");
    }
}

// ------------------------------------------------------------------ render --dest

#[test]
fn render_with_a_dest_no_file_has_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let known = dir.path().join("app.conf");
    // Nothing listens on port 1: connecting would fail only after the timeout.
    let cfg = ConfigBuilder::new(dir.path(), "127.0.0.1:1").write(&raw_file(&known, "/app/a"));
    let started = Instant::now();
    let out = run([
        "render".as_ref(),
        "-c".as_ref(),
        cfg.as_os_str(),
        "--dest".as_ref(),
        "app.conf.typo".as_ref(),
        "--timeout".as_ref(),
        "30s".as_ref(),
    ]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "a usage error exits 2: {err}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}: it tried ZooKeeper", started.elapsed());
    assert!(err.contains(&dir.path().join("app.conf.typo").display().to_string()), "{err}");
    assert!(err.contains("matches no [[file]]") && err.contains(&known.display().to_string()), "{err}");
    assert!(!err.contains("zookeeper"), "no ZooKeeper was involved:\n{err}");
    assert!(out.stdout.is_empty());
}

// ------------------------------------------------------------------ pid file not there yet

#[tokio::test(flavor = "multi_thread")]
async fn a_pid_file_not_there_yet_at_the_first_install_is_one_warning() {
    let env = Env::new("small-pid-not-yet").await;
    let pid_file = env.path("app.pid");
    let (a, b) = (env.path("a.conf"), env.path("b.conf"));
    env.set("/app/a", "a1").await;
    env.set("/app/b", "b1").await;
    let reload = format!("[file.reload]\nsignal = \"HUP\"\npid_file = {}\n", toml_path(&pid_file));
    let cfg =
        env.write_config(&format!("{}{reload}\n{}{reload}", raw_file(&a, "/app/a"), raw_file(&b, "/app/b")));
    let agent = Agent::run(&cfg);
    wait_for_file(&a, b"a1", T);
    wait_for_file(&b, b"b1", T);
    agent.wait_for_log("not running yet", T);
    // The old behaviour, 4 attempts and an error, took under a second: give it two.
    std::thread::sleep(Duration::from_secs(2));
    let log = agent.log();
    let mentions: Vec<&str> = log.lines().filter(|l| l.contains("app.pid")).collect();
    assert_eq!(mentions.len(), 1, "one line about the pid file, not one per attempt:\n{log}");
    assert!(mentions[0].contains("WARN") && mentions[0].contains("does not exist"), "{}", mentions[0]);
    assert!(!log.contains("ERROR"), "nothing failed:\n{log}");

    // The application starts (and writes its pid file): the next change reloads it.
    let app = Agent::start_program(
        "bash",
        [
            "-c",
            r#"trap 'echo hup >> "$D/hups"' HUP; echo $$ > "$D/app.pid.tmp"; mv "$D/app.pid.tmp" "$D/app.pid"; while :; do sleep 0.05; done"#,
        ],
        &[("D", env.dir().to_str().unwrap())],
    );
    wait_until(|| pid_file.exists(), T, "the application's pid file");
    env.set("/app/a", "a2").await;
    wait_for_file(&a, b"a2", T);
    let hups = env.path("hups");
    wait_until(|| fs::read_to_string(&hups).is_ok_and(|s| s.lines().count() == 1), T, "one SIGHUP");

    // From now on a missing application is a failure again.
    drop(app);
    fs::remove_file(&pid_file).unwrap();
    env.set("/app/b", "b2").await;
    wait_for_file(&b, b"b2", T);
    agent.wait_for_log("reload failed after all retries", T);
    agent.assert_running();
    agent.stop();
}

// ------------------------------------------------------------------ panics

#[tokio::test(flavor = "multi_thread")]
async fn a_template_that_panics_the_engine_is_one_error_naming_the_panic_not_a_raw_panic_message() {
    let env = Env::new("small-panic").await;
    env.set("/app/a", "x").await;
    let dest = env.path("out.txt");
    // minijinja 2.24 panics on this slice; the render turns it into an error for the file.
    let cfg = env.write_config(&format!(
        "[[file]]\ndest = {}\ninline = \"{{{{ znode('/app/a') }}}}{{{{ \\\"\\\"[::-1] }}}}\"\n",
        toml_path(&dest)
    ));
    for format in ["text", "json"] {
        let out = zkrender()
            .args(["--log-format", format, "render", "-c"])
            .arg(&cfg)
            .args(["--timeout", "5s"])
            .output()
            .unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(1), "{format}: {err}");
        assert!(
            err.contains("internal error: "),
            "{format}: the error should carry the panic's message: {err}"
        );
        assert!(!err.contains("panicked at"), "{format}: Rust's raw panic message was printed: {err}");
        if format == "json" {
            last_json_line(&err);
        }
    }
    assert!(!dest.exists(), "render must not write the file");
}
