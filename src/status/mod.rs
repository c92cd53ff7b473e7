//! What the agent reports about itself: where each file stands ([`Status`], [`Failure`]),
//! the ZooKeeper connection ([`ConnectionState`]), and the [`StatusReport`] the pipeline
//! publishes after every cycle and every connection change, read by the HTTP endpoint
//! (`/readyz`, `/status`, `/metrics`) and by `zkrender status`.
//!
//! Beside the pipeline, fed by it: [`telemetry`] keeps what the pipeline loop learns beyond
//! its pure core (times, connection, reload outcomes) and builds the report. The labels the
//! enums here give (`as_str`) are the stable words of `/status` and of metric labels.
//!
//! What this module must not do: decide anything. It records and reports.

pub mod telemetry;

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::source::Connection;

/// Where a file stands, as operators (and `once`) see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Its dependencies have not all been read yet.
    Pending,
    /// The file on disk equals the last rendering (written, or found correct).
    Ok,
    /// The last attempt failed; the file keeps its last good contents.
    Failed(Failure),
}

impl Status {
    /// `ok`, `pending` or `failed`: the `state` of a file in `/status`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Pending => "pending",
            Status::Failed(_) => "failed",
        }
    }
}

/// Why a file could not be brought up to date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub kind: FailureKind,
    pub message: String,
}

impl Failure {
    /// True when waiting (for a znode to appear) may fix it.
    pub fn is_waiting(&self) -> bool {
        self.kind == FailureKind::ZnodeMissing
    }
}

/// What kind of failure kept a file from being brought up to date. Its label
/// ([`FailureKind::as_str`]) is the `reason` in `/status` and the `cause` in logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// A znode the file reads (without `default=`) does not exist.
    ZnodeMissing,
    /// The template failed for another reason.
    Render,
    /// Reading a znode failed (e.g. no permission).
    Zookeeper,
    /// The `check` command rejected the rendering.
    CheckFailed,
    /// An empty rendering over a non-empty file, without `allow_empty`.
    EmptyRefused,
    /// `install = "bind_mount"` could not be applied.
    BindMount,
    /// Writing the file: permission denied.
    Permission,
    /// Writing the file: no space or quota left.
    NoSpace,
    /// Writing the file: any other I/O error.
    Io,
    /// `rollback`: the application's reload failed and the previous file was put back.
    ReloadFailed,
}

impl FailureKind {
    /// Every kind.
    pub const ALL: [FailureKind; 10] = [
        FailureKind::ZnodeMissing,
        FailureKind::Render,
        FailureKind::Zookeeper,
        FailureKind::CheckFailed,
        FailureKind::EmptyRefused,
        FailureKind::BindMount,
        FailureKind::Permission,
        FailureKind::NoSpace,
        FailureKind::Io,
        FailureKind::ReloadFailed,
    ];

    /// The stable label: `znode_missing`, `render`, `check_failed`, `empty_refused`, ...
    pub fn as_str(self) -> &'static str {
        match self {
            FailureKind::ZnodeMissing => "znode_missing",
            FailureKind::Render => "render",
            FailureKind::Zookeeper => "zookeeper",
            FailureKind::CheckFailed => "check_failed",
            FailureKind::EmptyRefused => "empty_refused",
            FailureKind::BindMount => "bind_mount",
            FailureKind::Permission => "permission",
            FailureKind::NoSpace => "no_space",
            FailureKind::Io => "io",
            FailureKind::ReloadFailed => "reload_failed",
        }
    }

    /// True for a fault of the machine (permission, read-only or full file system, any other
    /// I/O error): installing the same bytes again may succeed, so the pipeline retries it.
    /// The others are verdicts on the contents (render, check, empty, reload) or wait for
    /// ZooKeeper, and trying the same bytes again would only fail the same way.
    pub fn is_io(self) -> bool {
        matches!(
            self,
            FailureKind::Permission | FailureKind::NoSpace | FailureKind::Io | FailureKind::BindMount
        )
    }
}

impl fmt::Display for FailureKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Compares with a label, so that `failure.kind == "render"` reads as the report does.
impl PartialEq<&str> for FailureKind {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// The ZooKeeper connection as the pipeline knows it: the source's [`Connection`] events,
/// plus `connecting` before the first one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConnectionState {
    /// No session yet.
    #[default]
    Connecting,
    Connected,
    Disconnected,
    Expired,
}

impl ConnectionState {
    /// `connecting`, `connected`, `disconnected` or `expired`: the `zookeeper.state` in `/status`.
    pub fn as_str(self) -> &'static str {
        match self {
            ConnectionState::Connecting => "connecting",
            ConnectionState::Connected => "connected",
            ConnectionState::Disconnected => "disconnected",
            ConnectionState::Expired => "expired",
        }
    }
}

impl From<Connection> for ConnectionState {
    fn from(c: Connection) -> Self {
        match c {
            Connection::Connected => ConnectionState::Connected,
            Connection::Disconnected => ConnectionState::Disconnected,
            Connection::Expired => ConnectionState::Expired,
        }
    }
}

impl fmt::Display for ConnectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Seconds since the Unix epoch, as the `f64` that [`StatusReport`] times use.
///
/// A clock before 1970 reads as 0 rather than failing: ages then come out too large,
/// which is visible, instead of the status command refusing to print.
pub fn unix_seconds(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The whole agent at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Every file has been written (or found correct) at least once.
    pub ready: bool,
    /// Ready, but ZooKeeper is not connected now or some file is stale (its last attempt
    /// failed, see [`StatusReport::stale`]): files are the last good ones and may be stale.
    pub degraded: bool,
    pub zookeeper: ZkStatus,
    /// Each shared with the agent's cache of entries (a report after a change copies no file's
    /// entry, only the `Arc`s).
    pub files: Vec<std::sync::Arc<FileStatus>>,
}

/// The ZooKeeper connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ZkStatus {
    pub hosts: String,
    /// `connecting`, `connected`, `disconnected` or `expired`.
    pub state: String,
    pub session_expirations: u64,
    pub reconnects: u64,
    /// Why connecting fails, per host (`127.0.0.1:1: connection refused`), while no session
    /// is up; cleared when connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One `[[file]]`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FileStatus {
    pub dest: String,
    /// `ok`, `pending` or `failed`.
    pub state: String,
    /// Written, or found already correct, at least once (what readiness waits for).
    pub settled: bool,
    /// Why it is pending or failed: `znode_missing`, `render`, `check_failed`, ...
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The full message of the last failure (cleared when the file is up to date again).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Shared, so that the report sent after each change copies a pointer per file, not
    /// every file's dependencies (10,000 of them at the benchmark's scale).
    pub deps: std::sync::Arc<[DepStatus]>,
    /// Unix time (seconds) of the last write that changed the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_write: Option<f64>,
    /// Unix time (seconds) since when the file has not matched ZooKeeper (None when it does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_since: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reload: Option<ReloadStatus>,
    /// The dependencies' values the file on disk was rendered from, as of its last
    /// successful install (or check that it was already correct). `deps` shows the values
    /// read last, which may be newer. For the fleet report (`crate::fleet`); not in `/status`.
    #[serde(skip)]
    pub applied: Option<std::sync::Arc<[DepStatus]>>,
    /// The `dir` of the `[[bundle]]` the file belongs to: its files are written, checked and
    /// reloaded as one, so they share one state.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle: Option<String>,
}

/// One dependency of a file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DepStatus {
    /// Shared with the znode's path everywhere else in the agent (no copy per report).
    pub znode: std::sync::Arc<str>,
    /// `data` or `children`.
    pub kind: std::borrow::Cow<'static, str>,
    /// False when the znode is missing; None while not read yet.
    pub exists: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mzxid: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<i32>,
}

/// The last reload of a file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ReloadStatus {
    /// `ok` or `failed`.
    pub outcome: String,
    /// Unix time (seconds).
    pub at: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl StatusReport {
    /// Files not yet written once, with why (the `/readyz` 503 body).
    pub fn pending(&self) -> impl Iterator<Item = &FileStatus> {
        self.files.iter().map(AsRef::as_ref).filter(|f| !f.settled)
    }

    /// Files that do not match ZooKeeper now because their last attempt failed (install,
    /// render, check, missing znode), with why: what makes a ready agent `degraded`.
    pub fn stale(&self) -> impl Iterator<Item = &FileStatus> {
        self.files.iter().map(AsRef::as_ref).filter(|f| f.stale_since.is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_labels_are_the_report_words() {
        let labels: Vec<&str> = FailureKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(
            labels,
            [
                "znode_missing",
                "render",
                "zookeeper",
                "check_failed",
                "empty_refused",
                "bind_mount",
                "permission",
                "no_space",
                "io",
                "reload_failed"
            ]
        );
        for kind in FailureKind::ALL {
            assert!(kind == kind.as_str());
        }
    }

    #[test]
    fn only_a_missing_znode_is_worth_waiting_for() {
        for kind in FailureKind::ALL {
            let failure = Failure { kind, message: String::new() };
            assert_eq!(failure.is_waiting(), kind == FailureKind::ZnodeMissing, "{kind}");
        }
    }

    #[test]
    fn only_faults_of_the_machine_are_retried() {
        let retried: Vec<FailureKind> = FailureKind::ALL.into_iter().filter(|k| k.is_io()).collect();
        assert_eq!(
            retried,
            [FailureKind::BindMount, FailureKind::Permission, FailureKind::NoSpace, FailureKind::Io]
        );
    }

    #[test]
    fn connection_labels() {
        assert_eq!(ConnectionState::default().as_str(), "connecting");
        assert_eq!(ConnectionState::from(Connection::Connected).as_str(), "connected");
        assert_eq!(ConnectionState::from(Connection::Disconnected).as_str(), "disconnected");
        assert_eq!(ConnectionState::from(Connection::Expired).as_str(), "expired");
    }

    #[test]
    fn unix_seconds_before_1970_is_zero() {
        assert_eq!(unix_seconds(UNIX_EPOCH - std::time::Duration::from_secs(5)), 0.0);
        assert_eq!(unix_seconds(UNIX_EPOCH + std::time::Duration::from_millis(1500)), 1.5);
    }
}
