//! Whole subtrees without a template (issue 10 section 3), end to end: the built binary against
//! a real ZooKeeper. A `tree` file in every format follows a value changed, a znode added and
//! a znode deleted three levels below its root; `tree()` and `to_yaml` in a template; a binary
//! znode through `znode(path, encoding="base64")`.

mod common;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use common::*;

/// Deadline for anything that should happen in about one ZooKeeper round trip.
const WAIT: Duration = Duration::from_secs(10);

/// The formats, in the order of [`FORMATS`]'s expected contents below.
const FORMATS: [&str; 5] = ["json", "yaml", "toml", "properties", "env"];

/// A `[[file]]` writing the subtree under `root` to `dest` in `format`.
fn tree_file(dest: &Path, root: &str, format: &str) -> String {
    format!("[[file]]\ndest = {}\ntree = {root:?}\nformat = {format:?}\n\n", toml_path(dest))
}

/// Waits until each format's file holds its expected contents (in [`FORMATS`] order).
fn wait_for_all(agent: &Agent, env: &Env, step: &str, expected: [&str; 5]) {
    for (format, contents) in FORMATS.iter().zip(expected) {
        let what = format!("{step}: the {format} file");
        agent.wait_for_bytes(&env.path(&format!("config.{format}")), contents.as_bytes(), WAIT, &what);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tree_file_in_each_format_follows_add_change_and_delete_three_levels_deep() {
    let env = Env::new("tree-formats").await;
    // `db` and `db/pool` are only paths (created empty by `set`).
    env.seed(&[("/app/config/db/pool/size", b"5"), ("/app/config/name", b"svc")]).await;
    let files: String =
        FORMATS.iter().map(|f| tree_file(&env.path(&format!("config.{f}")), "/app/config", f)).collect();
    let agent = Agent::run(&env.write_config(&files));

    wait_for_all(
        &agent,
        &env,
        "initial",
        [
            "{\n  \"db\": {\n    \"pool\": {\n      \"size\": \"5\"\n    }\n  },\n  \"name\": \"svc\"\n}\n",
            "db:\n  pool:\n    size: '5'\nname: svc\n",
            "name = \"svc\"\n\n[db.pool]\nsize = \"5\"\n",
            "db.pool.size=5\nname=svc\n",
            "DB_POOL_SIZE='5'\nNAME='svc'\n",
        ],
    );

    env.set("/app/config/db/pool/size", "10").await;
    wait_for_all(
        &agent,
        &env,
        "after a change three levels deep",
        [
            "{\n  \"db\": {\n    \"pool\": {\n      \"size\": \"10\"\n    }\n  },\n  \"name\": \"svc\"\n}\n",
            "db:\n  pool:\n    size: '10'\nname: svc\n",
            "name = \"svc\"\n\n[db.pool]\nsize = \"10\"\n",
            "db.pool.size=10\nname=svc\n",
            "DB_POOL_SIZE='10'\nNAME='svc'\n",
        ],
    );

    env.set("/app/config/db/pool/max", "20").await;
    wait_for_all(
        &agent,
        &env,
        "after an add three levels deep",
        [
            "{\n  \"db\": {\n    \"pool\": {\n      \"max\": \"20\",\n      \"size\": \"10\"\n    }\n  },\n  \"name\": \"svc\"\n}\n",
            "db:\n  pool:\n    max: '20'\n    size: '10'\nname: svc\n",
            "name = \"svc\"\n\n[db.pool]\nmax = \"20\"\nsize = \"10\"\n",
            "db.pool.max=20\ndb.pool.size=10\nname=svc\n",
            "DB_POOL_MAX='20'\nDB_POOL_SIZE='10'\nNAME='svc'\n",
        ],
    );

    env.delete("/app/config/db/pool/size").await;
    wait_for_all(
        &agent,
        &env,
        "after a delete three levels deep",
        [
            "{\n  \"db\": {\n    \"pool\": {\n      \"max\": \"20\"\n    }\n  },\n  \"name\": \"svc\"\n}\n",
            "db:\n  pool:\n    max: '20'\nname: svc\n",
            "name = \"svc\"\n\n[db.pool]\nmax = \"20\"\n",
            "db.pool.max=20\nname=svc\n",
            "DB_POOL_MAX='20'\nNAME='svc'\n",
        ],
    );

    // A znode with both data and children: its data under `_value` in the nested formats,
    // a line of its own in the flat ones.
    env.set("/app/config/db", "primary").await;
    wait_for_all(
        &agent,
        &env,
        "after data on a znode with children",
        [
            "{\n  \"db\": {\n    \"_value\": \"primary\",\n    \"pool\": {\n      \"max\": \"20\"\n    }\n  },\n  \"name\": \"svc\"\n}\n",
            "db:\n  _value: primary\n  pool:\n    max: '20'\nname: svc\n",
            "name = \"svc\"\n\n[db]\n_value = \"primary\"\n\n[db.pool]\nmax = \"20\"\n",
            "db=primary\ndb.pool.max=20\nname=svc\n",
            "DB='primary'\nDB_POOL_MAX='20'\nNAME='svc'\n",
        ],
    );
    agent.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_template_renders_tree_with_to_yaml_and_follows_the_subtree() {
    let env = Env::new("tree-template").await;
    env.seed(&[("/app/config/db/url", b"pg://x"), ("/app/config/name", b"svc")]).await;
    let dest = env.path("listing.yaml");
    let files = format!(
        "[[file]]\ndest = {}\nprefix = \"/app\"\ninline = '''{{{{ tree(\"config\") | to_yaml }}}}'''\n",
        toml_path(&dest)
    );
    let agent = Agent::run(&env.write_config(&files));
    agent.wait_for_bytes(
        &dest,
        b"- key: db/url\n  value: pg://x\n- key: name\n  value: svc\n",
        WAIT,
        "the tree() listing",
    );

    env.set("/app/config/db/pool/size", "5").await;
    agent.wait_for_bytes(
        &dest,
        b"- key: db/pool/size\n  value: '5'\n- key: db/url\n  value: pg://x\n- key: name\n  value: svc\n",
        WAIT,
        "the tree() listing after a znode was added two levels down",
    );
    agent.assert_running();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_binary_znode_renders_through_base64() {
    let env = Env::new("tree-base64").await;
    let bytes: Vec<u8> = (0..=255).collect();
    env.set("/app/keystore", &bytes).await;
    let dest = env.path("keystore.b64");
    let files = format!(
        "[[file]]\ndest = {}\ninline = '''{{{{ znode(\"/app/keystore\", encoding=\"base64\") }}}}'''\n",
        toml_path(&dest)
    );
    let agent = Agent::run(&env.write_config(&files));
    wait_until(|| dest.exists(), WAIT, "the base64 file");
    let written = std::fs::read_to_string(&dest).unwrap();
    assert_eq!(BASE64.decode(written.trim()).expect("valid base64"), bytes, "{written}");
    agent.assert_running();
}
