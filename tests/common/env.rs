//! The fixture most integration tests start from: [`Env`] (a chroot of the test's own on
//! the shared ZooKeeper, a client inside it and a temporary directory) and
//! [`ConfigBuilder`] (a `zkrender.toml` with the test's server and chroot), plus the
//! small file helpers several test files need.
//!
//! ```ignore
//! let env = Env::new("render-basic").await;
//! env.set("/app/db/url", "postgres://db").await;
//! let dest = env.path("app.conf");
//! let config = env.config().agent("resync = \"1s\"").write(&raw_file(&dest, "/app/db/url"));
//! let agent = Agent::run(&config);
//! wait_for_file(&dest, b"postgres://db", Duration::from_secs(10));
//! ```

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use tempfile::TempDir;
use zookeeper_client::Client;

use super::{Zk, connect, create_chroot, unique_chroot, write_config};

/// The ZooKeeper every test of one test binary shares: `ZK_TEST_HOSTS`'s, or a standalone
/// server started on first use (never dropped: `scripts/zk up --owner` takes it down when
/// the test process exits).
pub fn shared_zk() -> &'static Zk {
    static ZK: OnceLock<Zk> = OnceLock::new();
    ZK.get_or_init(Zk::shared)
}

/// A test's own corner of the world: a chroot (`/it/<name>-<random>`) on a ZooKeeper, a
/// client inside it, and a temporary directory for configs and rendered files. Dropping it
/// removes the directory; agents started with [`Agent::run`] must be dropped first (they are
/// declared after the `Env`, so they are).
pub struct Env {
    dir: TempDir,
    hosts: String,
    chroot: String,
    client: Client,
}

impl Env {
    /// An environment on the shared ZooKeeper ([`shared_zk`]).
    pub async fn new(name: &str) -> Env {
        Env::on(shared_zk(), name).await
    }

    /// An environment on `zk` (one the test started itself, e.g. for fault injection).
    pub async fn on(zk: &Zk, name: &str) -> Env {
        let chroot = unique_chroot(name);
        let chrooted = create_chroot(zk.hosts(), &chroot).await;
        let client = connect(&chrooted).await;
        let dir = tempfile::Builder::new()
            .prefix("zkrender-test-")
            .tempdir()
            .expect("cannot create a temporary dir");
        Env { dir, hosts: zk.hosts().to_string(), chroot, client }
    }

    /// The temporary directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// `name` inside the temporary directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Creates the directory `name` (and its parents) inside the temporary directory;
    /// returns its path.
    pub fn mkdir(&self, name: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::create_dir_all(&path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
        path
    }

    /// The server's connect string, without the chroot.
    pub fn hosts(&self) -> &str {
        &self.hosts
    }

    /// This test's chroot, e.g. `/it/agent-template-1a2b3c4d`.
    pub fn chroot(&self) -> &str {
        &self.chroot
    }

    /// The connect string with the chroot appended (for a client, or `hosts =` in a config).
    pub fn chrooted_hosts(&self) -> String {
        format!("{}{}", self.hosts, self.chroot)
    }

    /// The client inside the chroot.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Sets `znode` (inside the chroot), creating it and its parents as needed.
    pub async fn set(&self, znode: &str, data: impl AsRef<[u8]>) {
        super::set(&self.client, znode, data.as_ref()).await;
    }

    /// Sets each `(znode, value)` in order.
    pub async fn seed(&self, values: &[(&str, &[u8])]) {
        for (znode, value) in values {
            self.set(znode, value).await;
        }
    }

    /// Deletes `znode`, which must exist and have no children.
    pub async fn delete(&self, znode: &str) {
        assert!(super::delete(&self.client, znode).await, "{znode} did not exist");
    }

    /// A config for this environment: its server, `chroot`, `[agent] listen = ""`, written
    /// to `zkrender.toml` in its directory.
    pub fn config(&self) -> ConfigBuilder {
        ConfigBuilder::new(self.dir(), &self.hosts).zookeeper(&format!("chroot = {:?}", self.chroot))
    }

    /// [`Env::config`] with nothing more than `files` (the `[[file]]` tables): writes it and
    /// returns its path.
    pub fn write_config(&self, files: &str) -> PathBuf {
        self.config().write(files)
    }
}

/// Builds a `zkrender.toml`: `[zookeeper]` with `hosts` and the lines added with
/// [`ConfigBuilder::zookeeper`], `[agent]` with `listen` (default `""`: no HTTP endpoint) and
/// the lines added with [`ConfigBuilder::agent`], then the `[[file]]` tables given to
/// [`ConfigBuilder::text`] or [`ConfigBuilder::write`].
#[derive(Clone, Debug)]
pub struct ConfigBuilder {
    dir: PathBuf,
    zookeeper: String,
    listen: String,
    agent: String,
}

impl ConfigBuilder {
    /// A config for the server at `hosts` (a connect string, may end in a chroot), to be
    /// written in `dir`.
    pub fn new(dir: &Path, hosts: &str) -> ConfigBuilder {
        ConfigBuilder {
            dir: dir.to_path_buf(),
            zookeeper: format!("hosts = {hosts:?}\n"),
            listen: String::new(),
            agent: String::new(),
        }
    }

    /// Adds `lines` (TOML) to `[zookeeper]`.
    pub fn zookeeper(mut self, lines: &str) -> ConfigBuilder {
        push_lines(&mut self.zookeeper, lines);
        self
    }

    /// Adds `lines` (TOML) to `[agent]`.
    pub fn agent(mut self, lines: &str) -> ConfigBuilder {
        push_lines(&mut self.agent, lines);
        self
    }

    /// Sets `[agent] listen` (e.g. `127.0.0.1:0` for an endpoint on an ephemeral port).
    pub fn listen(mut self, address: &str) -> ConfigBuilder {
        self.listen = address.to_string();
        self
    }

    /// The whole config text with `files` (the `[[file]]` tables) at the end.
    pub fn text(&self, files: &str) -> String {
        format!(
            "[zookeeper]\n{}\n[agent]\nlisten = {:?}\n{}\n{files}",
            self.zookeeper, self.listen, self.agent
        )
    }

    /// Writes [`ConfigBuilder::text`] to `zkrender.toml` in the directory; returns its path.
    pub fn write(&self, files: &str) -> PathBuf {
        write_config(&self.dir, &self.text(files))
    }
}

fn push_lines(section: &mut String, lines: &str) {
    if !lines.is_empty() {
        section.push_str(lines);
        if !lines.ends_with('\n') {
            section.push('\n');
        }
    }
}

/// A path as a TOML (basic) string.
pub fn toml_path(path: &Path) -> String {
    format!("{:?}", path.to_str().expect("UTF-8 path"))
}

/// A raw `[[file]]` table: `znode` copied to `dest`.
pub fn raw_file(dest: &Path, znode: &str) -> String {
    format!("[[file]]\ndest = {}\nznode = {znode:?}\n\n", toml_path(dest))
}
