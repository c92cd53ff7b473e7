//! The fleet report end to end (`[agent] report`, `zkrender fleet`): real agents against a
//! real ZooKeeper, their report znodes read with a plain client and with `zkrender fleet`.
//!
//! Every agent of a test reports under `/agents` in the test's chroot, so tests do not see
//! each other's agents.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use common::*;
use nix::sys::signal::Signal;
use serde_json::Value;
use sha2::{Digest, Sha256};

/// Generous bound for anything that normally takes milliseconds.
const T: Duration = Duration::from_secs(15);

/// A config for agent `id` in `dir`: reports under `/agents` every 100 ms at most, session
/// timeout `session`, and `files`.
fn agent_config(env: &Env, dir: &Path, id: &str, session: &str, files: &str) -> PathBuf {
    ConfigBuilder::new(dir, env.hosts())
        .zookeeper(&format!("chroot = {:?}\nsession_timeout = {session:?}", env.chroot()))
        .agent(&format!("report = \"/agents\"\nid = {id:?}\nreport_interval = \"100ms\""))
        .write(files)
}

/// The agent's report znode: its JSON and its Stat's ephemeral owner, if it exists.
async fn report(env: &Env, id: &str) -> Option<(Value, i64)> {
    match env.client().get_data(&format!("/agents/{id}")).await {
        Ok((data, stat)) => {
            Some((serde_json::from_slice(&data).expect("a report is JSON"), stat.ephemeral_owner))
        }
        Err(zookeeper_client::Error::NoNode) => None,
        Err(e) => panic!("reading /agents/{id}: {e}"),
    }
}

/// How many times agent `id`'s report znode was written since created (its data version).
async fn report_version(env: &Env, id: &str) -> i32 {
    env.client().check_stat(&format!("/agents/{id}")).await.unwrap().expect("the report exists").version
}

/// Waits until agent `id`'s report satisfies `ok`; returns it.
async fn wait_report(env: &Env, id: &str, what: &str, ok: impl Fn(&Value) -> bool) -> Value {
    let start = std::time::Instant::now();
    loop {
        let last = report(env, id).await;
        if let Some((doc, _)) = &last
            && ok(doc)
        {
            return doc.clone();
        }
        assert!(start.elapsed() < T, "{what}: report of {id} is {last:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The current mzxid of `znode`.
async fn mzxid(env: &Env, znode: &str) -> i64 {
    env.client().check_stat(znode).await.unwrap().expect("znode exists").mzxid
}

/// The mzxid a unit reports for `znode`.
fn applied(unit: &Value, znode: &str) -> Option<i64> {
    unit["znodes"].as_array()?.iter().find(|z| z["znode"] == znode)?["mzxid"].as_i64()
}

fn sha256_hex(path: &Path) -> String {
    Sha256::digest(std::fs::read(path).unwrap()).iter().map(|b| format!("{b:02x}")).collect()
}

/// `zkrender fleet -c CONFIG ARGS`.
fn fleet(config: &Path, args: &[&str]) -> Output {
    let mut all: Vec<&OsStr> = vec![OsStr::new("fleet"), OsStr::new("-c"), config.as_os_str()];
    all.extend(args.iter().map(OsStr::new));
    zkrender_in(config.parent().unwrap(), &all)
}

fn fleet_json(config: &Path, args: &[&str]) -> (i32, Value) {
    let mut args = args.to_vec();
    args.push("--json");
    let out = fleet(config, &args);
    let json = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("fleet --json: {e}: {}\n{}", text(&out.stdout), text(&out.stderr)));
    (out.status.code().unwrap_or(-1), json)
}

#[tokio::test]
async fn the_report_names_the_sha256_and_mzxid_of_what_was_installed_and_reloaded() {
    let env = Env::new("fleet-content").await;
    env.set("/app/a", "secret-one").await;
    env.set("/app/b", "two").await;
    let dest = env.path("app.conf");
    let marker = env.path("reloaded");
    let files = format!(
        "[[file]]\ndest = {}\ninline = \"{{{{ znode('/app/a') }}}} {{{{ znode('/app/b') }}}}\"\n\
         [file.reload]\ncommand = [\"sh\", \"-c\", \"sleep 0.5; touch \\\"$1\\\"\", \"sh\", {}]\n",
        toml_path(&dest),
        toml_path(&marker)
    );
    let config = agent_config(&env, env.dir(), "web-1", "10s", &files);
    let agent = Agent::run(&config);
    agent.wait_for_bytes(&dest, b"secret-one two", T, "first render");
    wait_report(&env, "web-1", "first report, reloaded", |d| d["units"][0]["reload"]["outcome"] == "ok")
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let writes_before = report_version(&env, "web-1").await;

    env.set("/app/a", "secret-three").await;
    agent.wait_for_bytes(&dest, b"secret-three two", T, "change");
    let (a, b) = (mzxid(&env, "/app/a").await, mzxid(&env, "/app/b").await);
    let doc = wait_report(&env, "web-1", "report after the change", |d| {
        applied(&d["units"][0], "/app/a") == Some(a)
    })
    .await;
    let unit = &doc["units"][0];
    assert_eq!(unit["kind"], "file");
    assert_eq!(unit["dest"], dest.to_str().unwrap());
    assert_eq!(unit["state"], "ok");
    assert_eq!(unit["sha256"], sha256_hex(&dest), "the digest of the bytes on disk");
    assert_eq!(applied(unit, "/app/b"), Some(b), "{doc}");
    assert_eq!(unit["znodes"].as_array().unwrap().len(), 2, "{doc}");
    // Written after the (half-second) reload: its outcome is in the same report as the mzxid.
    assert!(marker.exists(), "the reload ran");
    assert_eq!(unit["reload"]["outcome"], "ok", "{doc}");
    assert!(unit["reload"]["at"].as_f64() >= unit["written"].as_f64(), "{doc}");
    assert_eq!(doc["id"], "web-1");
    assert_eq!(doc["pid"], agent.pid());
    assert_eq!(doc["version"], env!("CARGO_PKG_VERSION"));
    let text = doc.to_string();
    assert!(!text.contains("secret"), "never a znode's contents: {text}");
    let (_, owner) = report(&env, "web-1").await.unwrap();
    assert_ne!(owner, 0, "the report is ephemeral");
    // One write for the change (install and reload together), and none after it.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(report_version(&env, "web-1").await, writes_before + 1, "writes of the report for one change");
}

/// Two agents on the same znode: both current (exit 0); one paused while the znode changes
/// is lagging (exit 1) until it resumes (`--wait`); one whose check rejects the value is
/// failed, with the cause; `--znode` looks at one znode only.
#[tokio::test]
async fn a_bundle_is_one_unit_with_its_files_and_every_znode_they_read() {
    let env = Env::new("fleet-bundle").await;
    env.set("/app/a", "one").await;
    env.set("/app/b", "two").await;
    let dir = env.path("conf");
    let files = format!(
        "[[bundle]]\ndir = {}\n[[bundle.file]]\npath = \"a.conf\"\nznode = \"/app/a\"\n\
         [[bundle.file]]\npath = \"sub/b.conf\"\ninline = \"{{{{ znode('/app/b') }}}}\"\n",
        toml_path(&dir)
    );
    let config = agent_config(&env, env.dir(), "web-b", "10s", &files);
    let agent = Agent::run(&config);
    agent.wait_for_bytes(&dir.join("sub/b.conf"), b"two", T, "first swap");
    env.set("/app/b", "three").await;
    agent.wait_for_bytes(&dir.join("sub/b.conf"), b"three", T, "second swap");
    let (a, b) = (mzxid(&env, "/app/a").await, mzxid(&env, "/app/b").await);
    let doc =
        wait_report(&env, "web-b", "report of the bundle", |d| applied(&d["units"][0], "/app/b") == Some(b))
            .await;
    let units = doc["units"].as_array().unwrap();
    assert_eq!(units.len(), 1, "one unit for the bundle: {doc}");
    let unit = &units[0];
    assert_eq!(unit["kind"], "bundle", "{doc}");
    assert_eq!(unit["dest"], dir.display().to_string(), "{doc}");
    let listed: Vec<&str> = unit["files"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    let (fa, fb) = (dir.join("a.conf"), dir.join("sub/b.conf"));
    assert_eq!(listed, [fa.to_str().unwrap(), fb.to_str().unwrap()], "{doc}");
    assert_eq!(applied(unit, "/app/a"), Some(a), "{doc}");
    assert_eq!(unit["state"], "ok", "{doc}");
    // The digest covers both files: the one recomputed here from the files on disk.
    let mut h = Sha256::new();
    for f in [&fa, &fb] {
        h.update(f.to_str().unwrap().as_bytes());
        h.update([0]);
        h.update(sha256_hex(f).as_bytes());
        h.update([b'\n']);
    }
    let expected: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(unit["sha256"], expected, "{doc}");
    let (code, view) = fleet_json(&config, &["--report", "/agents"]);
    assert_eq!(code, 0, "every agent is current: {view}");
    agent.stop();
}

#[tokio::test]
async fn fleet_shows_who_is_current_lagging_or_failed() {
    let env = Env::new("fleet-cli").await;
    env.set("/app/a", "v1").await;
    env.set("/app/only-one", "x").await;
    let (dir1, dir2) = (env.mkdir("one"), env.mkdir("two"));
    let (dest1, dest2) = (dir1.join("a.conf"), dir2.join("a.conf"));
    let files1 = format!("{}{}", raw_file(&dest1, "/app/a"), raw_file(&dir1.join("o.conf"), "/app/only-one"));
    // The second agent's check rejects any value containing "bad".
    let files2 = format!(
        "{}\ncheck = [\"sh\", \"-c\", \"! grep -q bad \\\"$1\\\"\", \"sh\", \"{{file}}\"]\n",
        raw_file(&dest2, "/app/a").trim_end()
    );
    let config1 = agent_config(&env, &dir1, "one", "10s", &files1);
    let config2 = agent_config(&env, &dir2, "two", "10s", &files2);
    let one = Agent::run(&config1);
    let two = Agent::run(&config2);
    one.wait_for_bytes(&dest1, b"v1", T, "first render");
    two.wait_for_bytes(&dest2, b"v1", T, "first render");
    let v1 = mzxid(&env, "/app/a").await;
    for id in ["one", "two"] {
        wait_report(&env, id, "first report", |d| applied(&d["units"][0], "/app/a") == Some(v1)).await;
    }

    let out = fleet(&config1, &[]);
    let table = text(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{table}{}", text(&out.stderr));
    assert!(table.contains("report /agents: 2 agents"), "{table}");
    assert!(table.contains("current: 2 of 2 agents"), "{table}");
    let (code, json) = fleet_json(&config1, &["--znode", "/app/a"]);
    assert_eq!(code, 0, "{json}");
    assert_eq!(json["znodes"].as_array().unwrap().len(), 1, "{json}");
    assert_eq!(json["znodes"][0]["mzxid"], v1);
    assert_eq!(json["znodes"][0]["current"], serde_json::json!(["one", "two"]));

    // Lagging: agent two is paused (its session lives on) while /app/a changes.
    two.signal(Signal::SIGSTOP);
    env.set("/app/a", "v2").await;
    let v2 = mzxid(&env, "/app/a").await;
    one.wait_for_bytes(&dest1, b"v2", T, "change");
    wait_report(&env, "one", "report of v2", |d| applied(&d["units"][0], "/app/a") == Some(v2)).await;
    let (code, json) = fleet_json(&config1, &[]);
    two.signal(Signal::SIGCONT);
    assert_eq!(code, 1, "{json}");
    let a = json["znodes"].as_array().unwrap().iter().find(|z| z["znode"] == "/app/a").unwrap().clone();
    assert_eq!(a["current"], serde_json::json!(["one"]), "{json}");
    assert_eq!(a["lagging"][0]["id"], "two", "{json}");
    assert_eq!(a["lagging"][0]["zxid"], v1, "{json}");
    assert_eq!(a["lagging"][0]["why"], "behind", "{json}");
    assert!(a["lagging"][0]["since"].is_f64(), "{json}");
    // The znode only agent one reads is current whatever agent two does.
    assert_eq!(fleet(&config1, &["--znode", "/app/only-one"]).status.code(), Some(0));
    let out = fleet(&config1, &["--wait", "10s"]);
    assert_eq!(out.status.code(), Some(0), "--wait: {}{}", text(&out.stdout), text(&out.stderr));

    // Failed: agent two's check rejects the new value; it keeps v2 and says why.
    env.set("/app/a", "bad").await;
    let v3 = mzxid(&env, "/app/a").await;
    one.wait_for_bytes(&dest1, b"bad", T, "change");
    wait_report(&env, "two", "report of the failed check", |d| d["units"][0]["state"] == "stale").await;
    wait_report(&env, "one", "report of v3", |d| applied(&d["units"][0], "/app/a") == Some(v3)).await;
    let (code, json) = fleet_json(&config1, &["--znode", "/app/a"]);
    assert_eq!(code, 1, "{json}");
    let failed = &json["znodes"][0]["failed"][0];
    assert_eq!(
        (failed["id"].as_str(), failed["why"].as_str()),
        (Some("two"), Some("check_failed")),
        "{json}"
    );
    assert_eq!(failed["zxid"], v2, "what it still has: {json}");
    let out = fleet(&config1, &["--znode", "/app/a"]);
    let table = text(&out.stdout);
    assert!(table.contains("failed   two"), "{table}");
    assert!(table.contains("check_failed"), "{table}");
    assert!(table.contains("not current: 1 of 2 agents"), "{table}");
    // A --wait that runs out still answers 1, with the last state.
    let out = fleet(&config1, &["--wait", "1s"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    assert_eq!(fleet(&config1, &["--znode", "/nope"]).status.code(), Some(1), "a znode nobody reads");
}

#[tokio::test]
async fn a_killed_agent_disappears_when_its_session_expires() {
    let env = Env::new("fleet-kill").await;
    env.set("/app/a", "v1").await;
    let (dir1, dir2) = (env.mkdir("one"), env.mkdir("two"));
    let config1 = agent_config(&env, &dir1, "stays", "10s", &raw_file(&dir1.join("a"), "/app/a"));
    let config2 = agent_config(&env, &dir2, "killed", "1s", &raw_file(&dir2.join("a"), "/app/a"));
    let _stays = Agent::run(&config1);
    let killed = Agent::run(&config2);
    for id in ["stays", "killed"] {
        wait_report(&env, id, "first report", |d| d["units"][0]["state"] == "ok").await;
    }
    let (_, json) = fleet_json(&config1, &[]);
    assert_eq!(json["agents"], 2, "{json}");
    killed.kill();
    wait_async(
        || fleet_json(&config1, &[]).1["agents"] == 1,
        "the killed agent's report gone with its session",
    )
    .await;
    let (code, json) = fleet_json(&config1, &[]);
    assert_eq!((code, json["znodes"][0]["current"].clone()), (0, serde_json::json!(["stays"])), "{json}");
}

#[tokio::test]
async fn a_second_agent_with_the_same_id_fails_at_start_naming_the_holder() {
    let env = Env::new("fleet-dup").await;
    env.set("/app/a", "v1").await;
    let (dir1, dir2) = (env.mkdir("one"), env.mkdir("two"));
    let config1 = agent_config(&env, &dir1, "dup", "10s", &raw_file(&dir1.join("a"), "/app/a"));
    let config2 = agent_config(&env, &dir2, "dup", "10s", &raw_file(&dir2.join("a"), "/app/a"));
    let first = Agent::run(&config1);
    wait_report(&env, "dup", "first report", |d| d["units"][0]["state"] == "ok").await;
    let second = Agent::run(&config2);
    let status = second.wait_exit(T);
    assert_eq!(status.code(), Some(1), "{}", second.log());
    let log = second.log();
    assert!(log.contains("fleet report /agents/dup: the id is taken by a live agent (session 0x"), "{log}");
    assert!(log.contains(&format!("pid {}", first.pid())), "names the holder: {log}");
    assert!(!dir2.join("a").exists(), "the second agent wrote no file");
    first.assert_running();
    let (doc, _) = report(&env, "dup").await.unwrap();
    assert_eq!(doc["pid"], first.pid(), "the report is still the first agent's");
}

/// Killed and started again at once (as systemd or a container runtime does), long before its
/// 10 s session expires: the new run replaces its previous run's report instead of failing.
#[tokio::test]
async fn a_restarted_agent_replaces_the_report_of_its_killed_run() {
    let env = Env::new("fleet-restart").await;
    env.set("/app/a", "v1").await;
    let config = agent_config(&env, env.dir(), "again", "10s", &raw_file(&env.path("a"), "/app/a"));
    let first = Agent::run(&config);
    wait_report(&env, "again", "first report", |d| d["units"][0]["state"] == "ok").await;
    let (_, owner) = report(&env, "again").await.unwrap();
    first.kill();
    let second = Agent::run(&config);
    let pid = second.pid();
    wait_report(&env, "again", "the new run's report", |d| d["pid"] == pid && d["units"][0]["state"] == "ok")
        .await;
    let (_, new_owner) = report(&env, "again").await.unwrap();
    assert_ne!(new_owner, owner);
    second.wait_for_log("replacing the fleet report of this agent's previous run", T);
    second.assert_running();
}

/// Frozen past its 1 s session while the znode changes: the report goes with the session,
/// and comes back with the new one, up to date.
#[tokio::test]
async fn the_report_comes_back_after_a_session_expiry() {
    let env = Env::new("fleet-expiry").await;
    env.set("/app/a", "v1").await;
    let dest = env.path("a");
    let config = agent_config(&env, env.dir(), "frozen", "1s", &raw_file(&dest, "/app/a"));
    let agent = Agent::run(&config);
    wait_report(&env, "frozen", "first report", |d| d["units"][0]["state"] == "ok").await;
    let (_, owner) = report(&env, "frozen").await.unwrap();
    agent.signal(Signal::SIGSTOP);
    env.set("/app/a", "v2").await;
    let v2 = mzxid(&env, "/app/a").await;
    let start = std::time::Instant::now();
    while report(&env, "frozen").await.is_some() {
        assert!(start.elapsed() < T, "the report still there after the session timeout");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    agent.signal(Signal::SIGCONT);
    agent.wait_for_bytes(&dest, b"v2", T, "after the expiry");
    wait_report(&env, "frozen", "report after the new session", |d| {
        applied(&d["units"][0], "/app/a") == Some(v2)
    })
    .await;
    let (_, new_owner) = report(&env, "frozen").await.unwrap();
    assert_ne!(new_owner, owner, "owned by the new session");
}

/// With digest auth the agent creates the report path and its report writable by its own
/// identity only and readable by anyone: another client can read it (and so can `zkrender
/// fleet` without credentials) but not change it.
#[tokio::test]
async fn with_digest_auth_the_report_is_the_agents_own_and_readable_by_all() {
    use zookeeper_client::{Error, Permission};
    let env = Env::new("fleet-acl").await;
    env.set("/app/a", "v1").await;
    std::fs::write(env.path("zk.digest"), "agent:pw\n").unwrap();
    let files = raw_file(&env.path("a"), "/app/a");
    let config = ConfigBuilder::new(env.dir(), env.hosts())
        .zookeeper(&format!(
            "chroot = {:?}\nauth = {{ scheme = \"digest\", credentials_file = \"zk.digest\" }}",
            env.chroot()
        ))
        .agent("report = \"/agents\"\nid = \"acl\"")
        .write(&files);
    let _agent = Agent::run(&config);
    wait_report(&env, "acl", "first report", |d| d["units"][0]["state"] == "ok").await;
    for znode in ["/agents", "/agents/acl"] {
        let (acls, _) = env.client().get_acl(znode).await.unwrap();
        let acls: Vec<(String, String, bool, bool)> = acls
            .iter()
            .map(|a| {
                (
                    a.scheme().to_owned(),
                    a.id().to_owned(),
                    a.permission() == Permission::ALL,
                    a.permission() == Permission::READ,
                )
            })
            .collect();
        assert_eq!(acls.len(), 2, "{znode}: {acls:?}");
        assert!(
            acls.iter().any(|(s, id, all, _)| s == "digest" && id.starts_with("agent:") && *all),
            "{znode}: {acls:?}"
        );
        assert!(
            acls.iter().any(|(s, id, _, read)| s == "world" && id == "anyone" && *read),
            "{znode}: {acls:?}"
        );
    }
    assert!(matches!(env.client().set_data("/agents/acl", b"{}", None).await, Err(Error::NoAuth)));
    // Without credentials (a config of its own, beside the agent's).
    let plain = ConfigBuilder::new(&env.mkdir("plain"), env.hosts())
        .zookeeper(&format!("chroot = {:?}", env.chroot()))
        .write("");
    let (code, json) = fleet_json(&plain, &["--report", "/agents"]);
    assert_eq!((code, json["agents"].clone()), (0, serde_json::json!(1)), "{json}");
}

/// Polls `condition` (which may block briefly, e.g. run `zkrender fleet`) until it holds,
/// letting the test's runtime (its ZooKeeper client) run in between.
async fn wait_async(mut condition: impl FnMut() -> bool, what: &str) {
    let start = std::time::Instant::now();
    while !condition() {
        assert!(start.elapsed() < T, "timed out after {T:?} waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
