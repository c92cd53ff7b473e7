//! Security against a real ZooKeeper: digest authentication with ACL-protected znodes,
//! secret files from the first byte, and templates that cannot read the environment
//! unless allowed.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use common::*;
use zookeeper_client::{Acls, CreateMode};

const T: Duration = Duration::from_secs(15);

/// Creates `path` readable only by the digest user `app:secret`.
async fn create_protected(hosts: &str, path: &str, data: &[u8]) {
    let client = connect(hosts).await;
    client.auth("digest", b"app:secret").await.expect("adding digest auth");
    if let Some((parent, _)) = path.rsplit_once('/')
        && !parent.is_empty()
    {
        mkdir(&client, parent).await;
    }
    let options = CreateMode::Persistent.with_acls(Acls::creator_all());
    client.create(path, data, &options).await.expect("creating the protected znode");
}

/// The secret every test here protects, and the file it is rendered into.
const ZNODE: &str = "/db/password";
const DEST: &str = "out/secret.conf";

/// A test's environment with [`ZNODE`] = `hunter2` readable only by `app:secret`, and a
/// config rendering it into [`DEST`] with `auth` (TOML) in `[zookeeper]`.
async fn protected(name: &str, auth: &str) -> (Env, std::path::PathBuf) {
    let env = Env::new(name).await;
    create_protected(&env.chrooted_hosts(), ZNODE, b"hunter2").await;
    let file = format!("[[file]]\ndest = {DEST:?}\nznode = {ZNODE:?}\nmode = \"0600\"\n");
    let cfg = env.config().zookeeper(auth).write(&file);
    (env, cfg)
}

#[tokio::test(flavor = "multi_thread")]
async fn digest_auth_reads_acl_protected_znodes() {
    let auth = r#"auth = { scheme = "digest", credentials_file = "zk.digest" }"#;
    let (env, cfg) = protected("auth", auth).await;
    std::fs::write(env.path("zk.digest"), "app:secret\n").unwrap();
    let agent = Agent::run(&cfg);
    let dest = env.path(DEST);
    wait_for_file(&dest, b"hunter2", T);
    let mode = std::fs::metadata(&dest).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600, "a secret file must keep mode 0600");
    // The secret itself never reaches the log.
    assert!(!agent.log().contains("app:secret"), "credentials leaked into the log:\n{}", agent.log());
    assert_eq!(agent.stop().code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn without_credentials_the_agent_reports_a_permission_error() {
    let (env, cfg) = protected("noauth", "").await;
    let agent = Agent::run(&cfg);
    agent.wait_for_log("permission denied reading znode", T);
    assert!(agent.log().contains(ZNODE), "the error names the znode:\n{}", agent.log());
    assert!(!env.path(DEST).exists());
    assert!(agent.is_running(), "a permission error must not stop the agent");

    // `once` fails at once with the reason instead of waiting for its timeout.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zkrender"))
        .args(["once", "-c", cfg.to_str().unwrap(), "--timeout", "20s"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("permission denied reading znode"), "stderr:\n{stderr}");
}

#[tokio::test(flavor = "multi_thread")]
async fn templates_read_only_allowed_environment_variables() {
    let env = Env::new("env").await;
    let cfg = env.write_config(
        r#"
[[file]]
dest = "allowed.txt"
inline = "{{ env('ZKR_TEST_REGION') }}"
allow_env = ["ZKR_TEST_REGION"]
[[file]]
dest = "denied.txt"
inline = "{{ env(['ZKR_TEST_SECRET'] | first) }}"
"#,
    );
    // A name computed at render time is refused when rendered (a literal one is refused at
    // load, below).
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zkrender"))
        .args(["once", "-c", cfg.to_str().unwrap(), "--timeout", "10s"])
        .env("ZKR_TEST_REGION", "eu-west-1")
        .env("ZKR_TEST_SECRET", "top-secret")
        .output()
        .unwrap();
    assert_eq!(std::fs::read(env.path("allowed.txt")).unwrap(), b"eu-west-1");
    assert!(!env.path("denied.txt").exists());
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ZKR_TEST_SECRET is not readable"), "stderr:\n{stderr}");
    assert!(!stderr.contains("top-secret"));

    // A literal name not in allow_env is a config error: nothing is rendered.
    let text =
        std::fs::read_to_string(&cfg).unwrap().replace("['ZKR_TEST_SECRET'] | first", "'ZKR_TEST_SECRET'");
    std::fs::write(&cfg, text).unwrap();
    std::fs::remove_file(env.path("allowed.txt")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zkrender"))
        .args(["once", "-c", cfg.to_str().unwrap(), "--timeout", "10s"])
        .env("ZKR_TEST_SECRET", "top-secret")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ZKR_TEST_SECRET is not readable"), "stderr:\n{stderr}");
    assert!(!stderr.contains("top-secret"));
    assert!(!env.path("allowed.txt").exists() && !env.path("denied.txt").exists());
}
