//! The configuration: `zkrender.toml` (or a set of files and flags, [`sources`]) -> [`Config`].
//!
//! Two steps: [`raw`] mirrors the TOML with serde (`deny_unknown_fields`, spans kept), and
//! [`validate`] turns it into the types below: relative paths resolved against the config
//! file's directory, defaults applied, owner/group names resolved, every problem collected
//! with file, line, column and key. After validation nothing that has a default is an
//! `Option`, and nothing here touches ZooKeeper.

pub mod raw;
pub mod sources;
mod span;
pub mod validate;

use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::formats::Format;
use crate::model::ZnodePath;

pub use crate::model::TemplateSpec;
pub use sources::{Origin, Sources, files as source_files};
pub use validate::{ConfigError, Problem};

/// Default config path when `-c` is not given.
pub const DEFAULT_PATH: &str = "zkrender.toml";

/// Default `[agent] listen`: loopback only.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9102";

/// Default `[agent] resync`: ten minutes.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(600);

/// Default `[agent] report_interval`: one second.
pub const DEFAULT_REPORT_INTERVAL: Duration = Duration::from_secs(1);

/// Longest process name `/proc/PID/comm` holds (the kernel's `TASK_COMM_LEN` - 1): a
/// `[file.reload] process` longer than this could never match, so validation refuses it.
pub const COMM_NAME_MAX: usize = 15;

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The (first) file it was read from, absolute, for messages; the working directory
    /// when it comes from flags alone. [`Config::origin`] has every file.
    pub path: PathBuf,
    pub zookeeper: ZkConfig,
    pub agent: AgentConfig,
    /// In config order; a file's index here is its [`TargetId`].
    pub files: Vec<FileSpec>,
    /// Where the config needs `zkrender exec` (a reload that signals or restarts its child),
    /// located like any problem, with the file that holds it. Every other command refuses a
    /// config that has any ([`Config::refuse_exec_only`]); `exec` and `check --exec` accept it.
    pub exec_only: Vec<(PathBuf, Problem)>,
    /// Where it came from: what a config reload reads again and watches.
    pub origin: Origin,
}

impl Config {
    /// The config files for messages: `a.toml`, `a.toml, b.toml`, or `command-line flags`.
    pub fn describe(&self) -> String {
        if self.origin.files.is_empty() {
            return "command-line flags".to_owned();
        }
        let files: Vec<String> = self.origin.files.iter().map(|f| f.display().to_string()).collect();
        files.join(", ")
    }

    /// The directory a relative path given on the command line about this config (such as
    /// `render --dest`) resolves against: the first file's, or the working directory.
    pub fn base_dir(&self) -> &Path {
        if self.origin.files.is_empty() { &self.path } else { self.path.parent().unwrap_or(Path::new("/")) }
    }
}

/// `[zookeeper]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZkConfig {
    /// `host:port` entries, in order (from a connect string or an array).
    pub hosts: Vec<String>,
    /// Every znode path in the config and templates is under this.
    pub chroot: Option<ZnodePath>,
    pub session_timeout: Duration,
    pub watch: WatchMode,
    /// `auth = { scheme = "digest", credentials_file = "..." }`: added to the session at connect.
    pub auth: Option<ZkAuth>,
    /// `tls = { ca = "...", cert = "...", key = "..." }`: TLS to every server.
    pub tls: Option<ZkTls>,
}

/// `[zookeeper] auth`. The secret lives in a file, never in the config or the logs.
#[derive(Clone, PartialEq, Eq)]
pub struct ZkAuth {
    /// `digest` (the only scheme ZooKeeper clients commonly add).
    pub scheme: String,
    /// Resolved against the config directory; holds `user:password` (trailing newline trimmed).
    pub credentials_file: PathBuf,
}

impl std::fmt::Debug for ZkAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Only the file is named; the secret is read at connect time and never printed.
        f.debug_struct("ZkAuth")
            .field("scheme", &self.scheme)
            .field("credentials_file", &self.credentials_file)
            .finish()
    }
}

/// `[zookeeper] tls`: PEM files, resolved against the config directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZkTls {
    /// CA bundle that signed the servers' certificates.
    pub ca: PathBuf,
    /// Client certificate and key, for servers that require client authentication.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl ZkConfig {
    /// The connect string the client library takes: `h1:p1,h2:p2[/chroot]`.
    pub fn connect_string(&self) -> String {
        let mut s = self.hosts.join(",");
        if let Some(chroot) = &self.chroot
            && chroot.as_str() != "/"
        {
            s.push_str(chroot.as_str());
        }
        s
    }
}

/// `[zookeeper] watch`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchMode {
    /// One-shot watches, re-armed by the read that fetches the new value.
    #[default]
    Oneshot,
    /// ZooKeeper 3.6+ persistent watches (`addWatch`).
    Persistent,
}

/// `[agent]`
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentConfig {
    /// Quiescence: render once no change has arrived for this long.
    pub wait: Duration,
    /// Never later than this after the first change of a cycle (4 × wait by default).
    pub max_wait: Duration,
    /// Anti-entropy period (plus up to 10% jitter); zero disables.
    pub resync: Duration,
    /// `listen`: address of the HTTP endpoint (health, readiness, metrics, status); `None`
    /// when disabled with `listen = ""`. Default `127.0.0.1:9102`.
    pub listen: Option<String>,
    /// `report`, `id`, `report_interval`: the fleet report; `None` unless `report` is set.
    pub report: Option<ReportConfig>,
}

/// `[agent] report`: the agent keeps one ephemeral znode `<path>/<id>` describing what it
/// applied (see `crate::fleet`). Read at start; a config reload does not change it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportConfig {
    /// The parent znode (`report`), created if missing.
    pub path: ZnodePath,
    /// The report's name under `path` (`id`, default: the host name).
    pub id: String,
    /// `report_interval`: at most one write per this period (default 1s).
    pub interval: Duration,
}

impl ReportConfig {
    /// The agent's own report znode, `<path>/<id>`.
    pub fn node(&self) -> ZnodePath {
        self.path.join(&self.id).expect("bug: `id` is validated as one znode name")
    }
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            wait: Duration::ZERO,
            max_wait: Duration::ZERO,
            resync: DEFAULT_RESYNC,
            listen: Some(DEFAULT_LISTEN.to_owned()),
            report: None,
        }
    }
}

/// The host name (`[agent] id`'s default), from the kernel.
///
/// # Errors
/// `/proc/sys/kernel/hostname` cannot be read.
pub fn host_name() -> std::io::Result<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(name.trim().to_owned())
}

/// Index of a `[[file]]` entry in [`Config::files`].
pub type TargetId = usize;

/// One `[[file]]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSpec {
    /// Absolute destination path.
    pub dest: PathBuf,
    pub source: FileSource,
    /// Permission bits, applied to the temp file before any byte is written.
    pub mode: u32,
    /// Numeric ids, resolved from names at validation.
    pub owner: Option<u32>,
    pub group: Option<u32>,
    pub on_delete: OnDelete,
    /// argv with `{file}` placeholders, run on the staged file before install.
    pub check: Option<Vec<String>>,
    /// How long `check` may run before it is killed and counted as failed.
    pub check_timeout: Duration,
    /// Keep the previous version as `DEST.bak`.
    pub backup: bool,
    pub install: InstallMode,
    /// Allow replacing a non-empty file with empty contents.
    pub allow_empty: bool,
    /// If the reload after an install fails, put the previous file back and reload again.
    pub rollback: bool,
    /// Environment variables the template may read with `env("NAME")`; none by default.
    pub allow_env: Vec<String>,
    pub reload: Option<ReloadSpec>,
}

/// Where a file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    /// `znode = "..."`: the znode's bytes, unchanged.
    Raw { znode: ZnodePath },
    /// `template = "..."` or `inline = "..."`.
    Template(TemplateSpec),
    /// `tree = "..."` with `format = "..."`: every descendant of `root` that holds data, in
    /// `format` (see [`crate::formats`]).
    Tree { root: ZnodePath, format: Format },
}

/// `on_delete`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnDelete {
    #[default]
    Keep,
    Remove,
}

/// `install`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InstallMode {
    /// Temp file + fsync + rename (the default, always safe).
    #[default]
    Atomic,
    /// Rewrite the destination in place, for single-file bind mounts (`subPath`).
    InPlace,
}

/// `[file.reload]`: what to do after the file changed on disk.
///
/// `Eq + Hash` so that identical reloads of files changed in one cycle run once.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ReloadSpec {
    pub action: ReloadAction,
    /// Extra attempts after the first; backoff doubles from 100 ms.
    pub retries: u32,
    /// Per attempt, for `http` and `command` (default 10 s).
    pub timeout: Duration,
    /// Wait a random 0..splay before firing, so a fleet does not reload at once (default 0).
    pub splay: Duration,
}

/// The kinds of reload.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReloadAction {
    Signal {
        signal: Signal,
        target: SignalTarget,
    },
    Http {
        url: String,
        method: String,
    },
    Command {
        argv: Vec<String>,
    },
    /// `restart = true`: restart the child (`zkrender exec` only).
    Restart,
}

impl ReloadAction {
    /// True for reloads only `zkrender exec` can carry out: a signal to its child, or a
    /// restart of it.
    pub fn targets_child(&self) -> bool {
        matches!(self, ReloadAction::Restart | ReloadAction::Signal { target: SignalTarget::Child, .. })
    }
}

/// Who receives a reload signal.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SignalTarget {
    Pid(i32),
    /// The pid is read from this file at each reload.
    PidFile(PathBuf),
    /// Every process whose `/proc/PID/comm` is this name and whose parent's is not.
    Process(String),
    /// `signal` with no pid, pid_file or process: the child of `zkrender exec`.
    Child,
}

/// Reads, parses and validates the config file at `path`.
///
/// # Errors
/// [`ConfigError`] naming the file and, for each problem, line, column and key.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    validate::load(path)
}

/// Reads every source (`-c` files and directories, flags) into one configuration.
///
/// # Errors
/// See [`sources::load`]: each error names the file or flag it is about.
pub fn load_sources(sources: &Sources) -> Result<Config, ConfigError> {
    sources::load(sources)
}

/// Parses and validates config text as if read from `path` (relative paths resolve
/// against `path`'s directory). Templates named by `template =` are read from disk.
///
/// # Errors
/// As [`load`].
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    validate::parse(path, text)
}
