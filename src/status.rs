//! What the agent reports about itself: a snapshot the pipeline publishes after every cycle
//! and every connection change, read by the HTTP endpoint (`/readyz`, `/status`, `/metrics`)
//! and by `zkrender status`. Plain data; serialised as the `/status` JSON body.

use serde::{Deserialize, Serialize};

/// The whole agent at one moment.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Every file has been written (or found correct) at least once.
    pub ready: bool,
    /// Ready, but ZooKeeper is not connected now: files are the last good ones and may be stale.
    pub degraded: bool,
    pub zookeeper: ZkStatus,
    pub files: Vec<FileStatus>,
}

/// The ZooKeeper connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ZkStatus {
    pub hosts: String,
    /// `connecting`, `connected`, `disconnected` or `expired`.
    pub state: String,
    pub session_expirations: u64,
    pub reconnects: u64,
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
    pub deps: Vec<DepStatus>,
    /// Unix time (seconds) of the last write that changed the file.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_write: Option<f64>,
    /// Unix time (seconds) since when the file has not matched ZooKeeper (None when it does).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stale_since: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_reload: Option<ReloadStatus>,
}

/// One dependency of a file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DepStatus {
    pub znode: String,
    /// `data` or `children`.
    pub kind: String,
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
        self.files.iter().filter(|f| !f.settled)
    }
}
