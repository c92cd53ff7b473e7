//! The examples in `examples/`, run for real: each test copies one example to a
//! temporary directory, points it at the test's ZooKeeper chroot (and at free
//! loopback ports), runs the built zkrender on it, and drives the real
//! application the example is about: Debian's nginx and HAProxy, an HTTP
//! server with a reload hook, a file the application reads.
//!
//! nginx and HAProxy must be installed: `scripts/install-example-deps`
//! installs them. A missing one fails its test with that hint rather than
//! skipping it: a skipped example proves nothing.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Agent, Env, delete, free_port, run_ok, set, wait_for_file, wait_until};
use nix::errno::Errno;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What installs the programs the examples drive.
const INSTALL_HINT: &str = "scripts/install-example-deps";

/// How long anything the tests wait for may take.
const TIMEOUT: Duration = Duration::from_secs(20);

/// The examples this file runs (besides `demo`, which `scripts/demo` runs).
const EXAMPLES: [&str; 4] = ["nginx", "haproxy", "http-hook", "feature-flags"];

fn examples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples")
}

// ------------------------------------------------------------------ programs

/// The path of `name`: on `PATH`, or in the sbin directories a non-root user's
/// `PATH` often lacks. Panics naming the install script when it is missing.
fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    let dirs = std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"].into_iter().map(PathBuf::from));
    for dir in dirs {
        let candidate = dir.join(name);
        if fs::metadata(&candidate).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0) {
            return candidate;
        }
    }
    panic!(
        "{name} is not installed (not on PATH, nor in /usr/sbin or /usr/local/sbin): \
         run {INSTALL_HINT} (it installs Debian's nginx-light and haproxy)"
    );
}

/// `PATH` with `program`'s directory first, for the agent: the examples' `check`
/// commands name the program without a directory.
fn path_with(program: &Path) -> String {
    let dir = program.parent().expect("a program path has a directory");
    let rest = std::env::var_os("PATH").unwrap_or_default();
    let dirs: Vec<PathBuf> = std::iter::once(dir.to_path_buf()).chain(std::env::split_paths(&rest)).collect();
    std::env::join_paths(dirs).expect("PATH entries without ':'").to_string_lossy().into_owned()
}

/// A server process (nginx, HAProxy) in a process group of its own, its output in
/// a log file. Dropping it sends SIGTERM to the group (the master and its workers),
/// waits for the master, then SIGKILLs whatever of the group is left.
struct Daemon {
    name: String,
    child: Mutex<Child>,
    log: PathBuf,
}

impl Daemon {
    fn start(program: &Path, args: &[&str], log: PathBuf) -> Daemon {
        let out = fs::File::create(&log).unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let err = out.try_clone().expect("cannot clone a file handle");
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", program.display()));
        let name = program.file_name().unwrap_or_default().to_string_lossy().into_owned();
        Daemon { name, child: Mutex::new(child), log }
    }

    fn pid(&self) -> u32 {
        self.child.lock().unwrap().id()
    }

    fn log(&self) -> String {
        String::from_utf8_lossy(&fs::read(&self.log).unwrap_or_default()).into_owned()
    }

    /// Panics with the log if the process has exited.
    fn assert_running(&self) {
        if let Some(status) = self.child.lock().unwrap().try_wait().expect("waitpid failed") {
            panic!("{} exited ({status}); its output:\n{}", self.name, self.log());
        }
    }

    /// Waits until `pid_file` holds this process's pid (the master's).
    fn wait_for_pid_file(&self, pid_file: &Path) {
        let want = self.pid().to_string();
        let deadline = Instant::now() + TIMEOUT;
        while fs::read_to_string(pid_file).map(|s| s.trim().to_owned()).ok().as_deref() != Some(&want) {
            self.assert_running();
            assert!(
                Instant::now() < deadline,
                "{} did not write its pid {want} to {} in {TIMEOUT:?}; its output:\n{}",
                self.name,
                pid_file.display(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap();
        let group = Pid::from_raw(-i32::try_from(child.id()).expect("pid fits in i32"));
        let _ = kill(group, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        // Workers that outlived their master, or a master that ignored SIGTERM.
        match kill(group, Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(e) => eprintln!("warning: kill -KILL -{}: {e}", child.id()),
        }
        let _ = child.wait();
        if std::thread::panicking() {
            eprintln!("----- {} output:\n{}\n-----", self.name, self.log());
        }
    }
}

// ------------------------------------------------------------------ examples

/// A copy of `examples/NAME` in a temporary directory, with the test's settings.
struct Example {
    dir: TempDir,
}

impl Example {
    /// Copies `examples/NAME` (without a `run/` left by trying it by hand) and, in
    /// its config and templates, points `hosts` at `hosts` (a connect string with the
    /// test's chroot), turns the agent's HTTP endpoint off, and applies
    /// `replacements`. Every replacement must match somewhere, so that an edited
    /// example cannot silently escape the test.
    fn new(name: &str, hosts: &str, replacements: &[(&str, String)]) -> Example {
        let dir = tempfile::Builder::new()
            .prefix(&format!("zkrender-example-{name}-"))
            .tempdir()
            .expect("cannot create a temporary dir");
        let source = examples_dir().join(name);
        let mut files = Vec::new();
        copy_dir(&source, dir.path(), &mut files);
        let mut all = vec![
            (r#"hosts = "127.0.0.1:2181""#, format!("hosts = {hosts:?}")),
            ("[agent]\n", "[agent]\nlisten = \"\"\n".to_owned()),
        ];
        all.extend(replacements.iter().map(|(from, to)| (*from, to.clone())));
        let mut matched = vec![false; all.len()];
        for file in &files {
            let Ok(mut text) = fs::read_to_string(file) else { continue };
            for ((from, to), seen) in all.iter().zip(&mut matched) {
                if text.contains(from) {
                    *seen = true;
                    text = text.replace(from, to);
                }
            }
            fs::write(file, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
        }
        for ((from, _), seen) in all.iter().zip(&matched) {
            assert!(seen, "examples/{name} no longer contains {from:?}: update tests/examples.rs");
        }
        Example { dir }
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.path().join(relative)
    }

    fn config(&self) -> PathBuf {
        self.path("zkrender.toml")
    }

    fn config_arg(&self) -> String {
        self.config().to_string_lossy().into_owned()
    }

    /// `zkrender once`: writes every file (runs the checks, no reloads), as an init
    /// container does before the application starts.
    fn once(&self, env: &[(&str, &str)]) {
        let config = self.config_arg();
        let agent = Agent::start_with_env(["once", "-c", config.as_str(), "--timeout", "20s"], env);
        let status = agent.wait_exit(Duration::from_secs(30));
        assert!(status.success(), "zkrender once failed ({status}); log:\n{}", agent.log());
    }

    /// `zkrender run`, once it has read everything and every file is written.
    fn run(&self, env: &[(&str, &str)]) -> Agent {
        let config = self.config_arg();
        let agent = Agent::start_with_env(["run", "-c", config.as_str()], env);
        agent.wait_for_log("ready: every file is written", TIMEOUT);
        agent
    }
}

fn copy_dir(from: &Path, to: &Path, files: &mut Vec<PathBuf>) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("cannot create {}: {e}", to.display()));
    let entries = fs::read_dir(from).unwrap_or_else(|e| panic!("cannot list {}: {e}", from.display()));
    for entry in entries {
        let entry = entry.expect("cannot read a directory entry");
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        if entry.file_type().expect("cannot stat").is_dir() {
            if entry.file_name() != "run" {
                copy_dir(&source, &target, files);
            }
        } else {
            fs::copy(&source, &target).unwrap_or_else(|e| panic!("cannot copy {}: {e}", source.display()));
            files.push(target);
        }
    }
}

// ------------------------------------------------------------------ HTTP

/// Reads one request's head and body (per Content-Length); `None` if the peer
/// closed first (a TCP health check) or sent nonsense.
async fn read_request(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0_u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 || buf.len() > 64 * 1024 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length = head
        .lines()
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = buf[head_end..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        body.extend_from_slice(&chunk[..n]);
    }
    Some((head, body))
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) {
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// A backend answering every request with `body`; returns its `host:port`.
async fn backend(body: &'static str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                if read_request(&mut stream).await.is_some() {
                    respond(&mut stream, "200 OK", body).await;
                }
            });
        }
    });
    addr
}

/// A client that opens a new connection for every request (a reloaded proxy's old
/// workers keep serving the connections they have) and ignores proxy settings.
fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap()
}

/// The bodies of `n` successive GETs of `url` (an error counts as its message).
async fn bodies(client: &reqwest::Client, url: &str, n: usize) -> Vec<String> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let body = match client.get(url).send().await {
            Ok(response) if response.status().is_success() => {
                response.text().await.unwrap_or_else(|e| format!("<body: {e}>"))
            }
            Ok(response) => format!("<status {}>", response.status()),
            Err(e) => format!("<error: {e}>"),
        };
        seen.push(body);
    }
    seen
}

/// Waits until six successive requests through the proxy reach exactly the backends
/// answering `expected` (each at least once: the proxies balance round-robin).
async fn wait_for_backends(client: &reqwest::Client, url: &str, expected: &[&str], proxy: &Daemon) {
    let expected: BTreeSet<String> = expected.iter().map(|s| (*s).to_owned()).collect();
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let seen = bodies(client, url, 6).await;
        if seen.iter().cloned().collect::<BTreeSet<_>>() == expected {
            return;
        }
        proxy.assert_running();
        assert!(
            Instant::now() < deadline,
            "{url} (via {}) never answered from exactly {expected:?} in {TIMEOUT:?}; last answers: {seen:?}",
            proxy.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn read_text(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()))
}

// ------------------------------------------------------------------ tests

/// Every example's config passes `zkrender check` exactly as shipped.
#[test]
fn every_example_passes_zkrender_check() {
    let mut names = Vec::new();
    for entry in fs::read_dir(examples_dir()).expect("cannot list examples/") {
        let dir = entry.expect("cannot read examples/").path();
        let config = dir.join("zkrender.toml");
        if !config.is_file() {
            continue;
        }
        // `check` looks up each `check` program on PATH; haproxy and nginx live in sbin
        // directories a non-root user's PATH often lacks.
        let path = format!("{}:/usr/local/sbin:/usr/sbin:/sbin", std::env::var("PATH").unwrap_or_default());
        run_ok(
            Command::new(env!("CARGO_BIN_EXE_zkrender"))
                .arg("check")
                .arg("-c")
                .arg(&config)
                .env("PATH", path),
        );
        names.push(dir.file_name().unwrap().to_string_lossy().into_owned());
    }
    for name in EXAMPLES.iter().chain(&["demo"]) {
        assert!(
            names.iter().any(|n| n == name),
            "examples/{name}/zkrender.toml was not found; checked {names:?}"
        );
    }
}

/// A proxy example: its name (also the program's), its listen directive (as in the
/// example, and with `{port}` for the test's free port), and the znode of the first backend.
struct ProxySpec {
    name: &'static str,
    listen: (&'static str, &'static str),
    znode: &'static str,
}

const NGINX: ProxySpec = ProxySpec {
    name: "nginx",
    listen: ("listen 127.0.0.1:8080;", "listen 127.0.0.1:{port};"),
    znode: "/nginx/upstreams/app/a",
};

const HAPROXY: ProxySpec = ProxySpec {
    name: "haproxy",
    listen: ("bind 127.0.0.1:8081", "bind 127.0.0.1:{port}"),
    znode: "/haproxy/backends/app/web1",
};

/// What the proxy examples (nginx, HAProxy) start from: the test's chroot, backends
/// answering "A" and "B", the example listening on a free port, the first backend's
/// address in `znode`, and `zkrender once` run so that the proxy's config exists.
struct Proxy {
    /// The proxy program (`nginx`, `haproxy`, named like its example).
    program: PathBuf,
    /// The test's chroot and client.
    zk: Env,
    example: Example,
    /// `PATH` for the agent, with the proxy's directory first.
    path: String,
    a: String,
    b: String,
    http: reqwest::Client,
    /// The proxy's URL.
    url: String,
}

impl Proxy {
    async fn new(spec: &ProxySpec) -> Proxy {
        let ProxySpec { name, listen, znode } = *spec;
        let program = program(name);
        let env = Env::new(&format!("example-{name}")).await;
        let (a, b) = (backend("A").await, backend("B").await);
        let port = free_port();
        let directive = listen.1.replace("{port}", &port.to_string());
        let example = Example::new(name, &env.chrooted_hosts(), &[(listen.0, directive)]);
        let path = path_with(&program);
        env.set(znode, a.as_bytes()).await;
        example.once(&[("PATH", path.as_str())]);
        let url = format!("http://127.0.0.1:{port}/");
        Proxy { program, zk: env, example, path, a, b, http: http_client(), url }
    }

    fn agent_env(&self) -> [(&str, &str); 1] {
        [("PATH", self.path.as_str())]
    }
}

/// examples/nginx: the upstream servers follow the children of
/// /nginx/upstreams/app, through `nginx -t` and a SIGHUP to the running nginx's
/// master (the same process all along), and traffic moves from A to B.
#[tokio::test(flavor = "multi_thread")]
async fn nginx_follows_the_upstream_children() {
    let proxy = Proxy::new(&NGINX).await;
    let Proxy { program: nginx, zk, example, a, b, http, url, .. } = &proxy;
    let (run, conf) = (example.path("run"), example.path("run/nginx.conf"));
    assert!(read_text(&conf).contains(&format!("server {a};")), "{}", read_text(&conf));
    let prefix = format!("{}/", run.display());
    let conf_arg = conf.to_string_lossy().into_owned();
    let server = Daemon::start(
        nginx,
        &["-p", &prefix, "-c", &conf_arg, "-g", "daemon off;"],
        example.path("nginx.log"),
    );
    server.wait_for_pid_file(&run.join("nginx.pid"));
    wait_for_backends(http, url, &["A"], &server).await;

    let agent = example.run(&proxy.agent_env());
    set(zk.client(), "/nginx/upstreams/app/b", b.as_bytes()).await;
    wait_for_backends(http, url, &["A", "B"], &server).await;
    delete(zk.client(), "/nginx/upstreams/app/a").await;
    wait_for_backends(http, url, &["B"], &server).await;
    let rendered = read_text(&conf);
    assert!(
        rendered.contains(&format!("server {b};")) && !rendered.contains(&format!("server {a};")),
        "{rendered}"
    );
    agent.wait_for_log_count("application reloaded", 2, TIMEOUT);

    // `nginx -t` refuses an invalid port: the file stays, nginx serves on.
    set(zk.client(), "/nginx/upstreams/app/b", b"127.0.0.1:99999").await;
    agent.wait_for_log("check_failed", TIMEOUT);
    assert_eq!(read_text(&conf), rendered, "the refused config was installed");
    wait_for_backends(http, url, &["B"], &server).await;
    set(zk.client(), "/nginx/upstreams/app/b", b.as_bytes()).await;
    agent.wait_for_log("file recovered", TIMEOUT);
    assert_eq!(agent.log().matches("application reloaded").count(), 2, "{}", agent.log());
    // Reloaded, not restarted: the master that started serves on.
    server.assert_running();
    assert_eq!(read_text(&run.join("nginx.pid")).trim(), server.pid().to_string());
    assert!(agent.stop().success(), "{}", agent.log());
}

/// examples/haproxy: a value `haproxy -c` refuses never reaches HAProxy: the
/// installed file stays, no reload is sent, HAProxy serves on from the last good
/// config; a good value after it goes through (SIGUSR2 to the master).
#[tokio::test(flavor = "multi_thread")]
async fn haproxy_refuses_a_bad_server_address() {
    let proxy = Proxy::new(&HAPROXY).await;
    let Proxy { program: haproxy, zk, example, a, b, http, url, .. } = &proxy;
    let (cfg, pid_file) = (example.path("run/haproxy.cfg"), example.path("run/haproxy.pid"));
    let (cfg_arg, pid_arg) = (cfg.to_string_lossy().into_owned(), pid_file.to_string_lossy().into_owned());
    // Master-worker mode in the foreground (the test owns the process group).
    let server = Daemon::start(haproxy, &["-W", "-f", &cfg_arg, "-p", &pid_arg], example.path("haproxy.log"));
    server.wait_for_pid_file(&pid_file);
    wait_for_backends(http, url, &["A"], &server).await;

    let agent = example.run(&proxy.agent_env());
    set(zk.client(), "/haproxy/backends/app/web1", b.as_bytes()).await;
    wait_for_backends(http, url, &["B"], &server).await;
    agent.wait_for_log_count("application reloaded", 1, TIMEOUT);
    let good = read_text(&cfg);

    // Port 99999: HAProxy's parser refuses it.
    set(zk.client(), "/haproxy/backends/app/web1", b"127.0.0.1:99999").await;
    agent.wait_for_log("check_failed", TIMEOUT);
    assert_eq!(read_text(&cfg), good, "the refused config was installed");
    assert!(agent.log().contains("99999"), "the log does not show HAProxy's complaint:\n{}", agent.log());
    wait_for_backends(http, url, &["B"], &server).await;
    assert_eq!(agent.log().matches("application reloaded").count(), 1, "{}", agent.log());
    server.assert_running();
    assert_eq!(read_text(&pid_file).trim(), server.pid().to_string());

    // Fixed: the file recovers and HAProxy follows.
    set(zk.client(), "/haproxy/backends/app/web1", a.as_bytes()).await;
    wait_for_backends(http, url, &["A"], &server).await;
    agent.wait_for_log("file recovered", TIMEOUT);
    agent.wait_for_log_count("application reloaded", 2, TIMEOUT);
    server.assert_running();
    assert!(agent.stop().success(), "{}", agent.log());
}

/// What the application of examples/http-hook has loaded.
#[derive(Default)]
struct AppState {
    /// The config it runs with: prometheus.yml as JSON.
    config: Option<serde_json::Value>,
    reloads: usize,
    failures: Vec<String>,
}

/// A Prometheus stand-in on `listener`: on `POST /-/reload` it re-reads `file` (200 when it
/// parses, 500 with the error when not); nothing else.
fn hook_app(listener: TcpListener, file: PathBuf) -> Arc<Mutex<AppState>> {
    let state = Arc::new(Mutex::new(AppState::default()));
    let shared = Arc::clone(&state);
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (state, file) = (Arc::clone(&shared), file.clone());
            tokio::spawn(async move {
                let Some((head, _body)) = read_request(&mut stream).await else { return };
                if !head.starts_with("POST /-/reload ") {
                    return respond(&mut stream, "404 Not Found", "not found").await;
                }
                let loaded = fs::read(&file)
                    .map_err(|e| e.to_string())
                    .and_then(|bytes| serde_norway::from_slice(&bytes).map_err(|e| e.to_string()));
                let reply = {
                    let mut state = state.lock().unwrap();
                    match loaded {
                        Ok(config) => {
                            state.config = Some(config);
                            state.reloads += 1;
                            Ok(())
                        }
                        Err(e) => {
                            state.failures.push(e.clone());
                            Err(e)
                        }
                    }
                };
                match reply {
                    Ok(()) => respond(&mut stream, "200 OK", "reloaded").await,
                    Err(e) => respond(&mut stream, "500 Internal Server Error", &e).await,
                }
            });
        }
    });
    state
}

/// The scrape interval and targets of a loaded prometheus.yml.
fn scrape(config: &serde_json::Value) -> (String, Vec<String>) {
    let interval = config["global"]["scrape_interval"].as_str().unwrap_or_default().to_owned();
    let targets = config["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_array()
        .map(|t| t.iter().map(|v| v.as_str().unwrap_or_default().to_owned()).collect())
        .unwrap_or_default();
    (interval, targets)
}

/// Waits until the app has loaded a config with `interval` and `targets`.
fn wait_for_app(state: &Mutex<AppState>, interval: &str, targets: &[&str]) {
    let want = (interval.to_owned(), targets.iter().map(|t| (*t).to_owned()).collect::<Vec<_>>());
    let deadline = Instant::now() + TIMEOUT;
    loop {
        let (seen, failures) = {
            let state = state.lock().unwrap();
            (state.config.as_ref().map(scrape), state.failures.clone())
        };
        assert!(failures.is_empty(), "the app could not load the rendered file: {failures:?}");
        if seen.as_ref() == Some(&want) {
            return;
        }
        assert!(Instant::now() < deadline, "the app runs with {seen:?}, not {want:?}, after {TIMEOUT:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// examples/http-hook: after each change zkrender calls the app's reload hook, and
/// the app, re-reading the rendered file then, already finds the new contents.
#[tokio::test(flavor = "multi_thread")]
async fn http_hook_app_rereads_its_config() {
    let env = Env::new("example-http-hook").await;
    let (hosts, client) = (env.chrooted_hosts(), env.client());
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let example = Example::new("http-hook", &hosts, &[("127.0.0.1:9090", addr.to_string())]);
    let state = hook_app(listener, example.path("run/prometheus.yml"));
    set(client, "/prometheus/scrape_interval", b"30s").await;
    set(client, "/prometheus/targets/app/node-a", b"10.0.0.1:9100").await;

    // No `once` first: writing the first file fires the hook too.
    let agent = example.run(&[]);
    wait_for_app(&state, "30s", &["10.0.0.1:9100"]);
    set(client, "/prometheus/targets/app/node-b", b"10.0.0.2:9100").await;
    wait_for_app(&state, "30s", &["10.0.0.1:9100", "10.0.0.2:9100"]);
    set(client, "/prometheus/scrape_interval", b"10s").await;
    delete(client, "/prometheus/targets/app/node-a").await;
    wait_for_app(&state, "10s", &["10.0.0.2:9100"]);

    agent.wait_for_log_count("application reloaded", 3, TIMEOUT);
    let reloads = state.lock().unwrap().reloads;
    assert!((3..=4).contains(&reloads), "{reloads} reloads; log:\n{}", agent.log());
    assert!(agent.stop().success(), "{}", agent.log());
}

/// examples/feature-flags: the JSON document is copied byte for byte, follows
/// changes, and stays as it was when the znode is deleted (`on_delete = "keep"`).
#[tokio::test(flavor = "multi_thread")]
async fn feature_flags_are_copied_byte_for_byte_and_kept_on_delete() {
    let env = Env::new("example-feature-flags").await;
    let (hosts, client) = (env.chrooted_hosts(), env.client());
    // A sentinel with on_delete = "remove" on the same znode: its removal shows
    // that the agent has seen the deletion (the flags file must not move).
    let example = Example::new("feature-flags", &hosts, &[]);
    let mut config = read_text(&example.config());
    config.push_str(
        "\n[[file]]\ndest = \"run/sentinel\"\nznode = \"/flags/checkout\"\non_delete = \"remove\"\n",
    );
    fs::write(example.config(), config).unwrap();
    let (flags, sentinel) = (example.path("run/flags.json"), example.path("run/sentinel"));
    // Not how a JSON encoder would write it: CRLF, tabs, UTF-8, no final newline.
    let v1: &[u8] = b"{\r\n\t\"new_checkout\": false,  \"banner\": \"Gr\xc3\xbc\xc3\x9fe \\u2603\"\r\n}";
    let v2: &[u8] = b"{\"new_checkout\":true,\"banner\":\"\",\"max_items\":50}\n\n";
    set(client, "/flags/checkout", v1).await;

    let agent = example.run(&[]);
    wait_for_file(&flags, v1, TIMEOUT);
    assert_eq!(fs::metadata(&flags).unwrap().permissions().mode() & 0o7777, 0o644);
    set(client, "/flags/checkout", v2).await;
    wait_for_file(&flags, v2, TIMEOUT);
    let parsed: serde_json::Value = serde_json::from_slice(v2).unwrap();
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&fs::read(&flags).unwrap()).unwrap(), parsed);

    delete(client, "/flags/checkout").await;
    wait_until(|| !sentinel.exists(), TIMEOUT, "the sentinel (on_delete = \"remove\") to go");
    assert_eq!(fs::read(&flags).unwrap(), v2, "on_delete = \"keep\" did not keep the flags");

    let v3: &[u8] = b"{\"new_checkout\": true}";
    set(client, "/flags/checkout", v3).await;
    wait_for_file(&flags, v3, TIMEOUT);
    assert!(agent.stop().success(), "{}", agent.log());
}
