//! The fleet report (`[agent] report`): which agent applied what.
//!
//! Each agent keeps one ephemeral znode `<report>/<id>` whose data is an [`AgentReport`]: a
//! small JSON document saying, per unit (a `[[file]]`, or a `[[bundle]]` as one unit, see
//! [`Unit::kind`]), the sha256 of the bytes installed, the zxid of every znode they were
//! rendered from, when they were written, whether they are stale and why, and how the last
//! reload went. Never a znode's contents, nor an error message (a `check`'s output may quote
//! them): the cause's label says why.
//!
//! This module is pure: [`units`] builds the units from the agent's [`StatusReport`], and
//! [`view`] tells, from every agent's report and the znodes' current zxids, who applied what
//! (`zkrender fleet`). The ZooKeeper side (claiming and writing the report znode, reading
//! the reports) is in `source::report`; [`publish`] is the task between the two.
//!
//! ```json
//! {"id":"web-7f9c","host":"web-7f9c","pid":4242,"version":"0.1.0","started":1764670000.5,
//!  "units":[{"kind":"file","dest":"/etc/app/app.conf","sha256":"9f86d0...",
//!            "znodes":[{"znode":"/app/db/url","mzxid":4294967302}],
//!            "written":1764670001.2,"state":"ok","reload":{"outcome":"ok","at":1764670001.3}}]}
//! ```

pub mod command;
pub mod publish;
pub mod view;

use serde::{Deserialize, Serialize};

use crate::status::{DepStatus, FileStatus, StatusReport};

/// One agent's report: the data of its znode `<report>/<id>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    /// `[agent] id`.
    pub id: String,
    /// The host name.
    pub host: String,
    pub pid: u32,
    /// The zkrender version.
    pub version: String,
    /// Unix time (seconds) the agent started.
    pub started: f64,
    /// In config order.
    #[serde(default)]
    pub units: Vec<Unit>,
}

/// One unit the agent keeps up to date: a `[[file]]` (`kind = "file"`) or a `[[bundle]]`
/// (`kind = "bundle"`, `dest` its `dir`, its files in `files`: they are written, checked and
/// reloaded as one, so the unit has one state, one reload and one digest over all its files).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    /// `file` or `bundle`.
    pub kind: String,
    /// The file (a bundle: its directory).
    pub dest: String,
    /// SHA-256 (hex) of the bytes on disk; absent when there is no file. A bundle's is
    /// [`bundle_digest`] of its files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Every znode the bytes on disk were rendered from, with its zxid then. Empty until the
    /// unit was first brought up to date.
    #[serde(default)]
    pub znodes: Vec<Applied>,
    /// Unix time (seconds) of the last write that changed it (by this agent process).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written: Option<f64>,
    /// `ok` (matches ZooKeeper), `stale` (the last attempt failed, see `cause`) or `pending`
    /// (its znodes are not all read yet).
    pub state: String,
    /// Why it is stale: `znode_missing`, `render`, `check_failed`, `reload_failed`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<String>,
    /// Unix time (seconds) since when it is stale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stale_since: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reload: Option<Reload>,
    /// A bundle's files (their paths on disk, through `dir/`), in config order; empty for a
    /// `[[file]]`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<String>,
}

/// A znode a unit was rendered from. A data dependency carries its `mzxid`, a children
/// dependency (`children = true`) its `pzxid`; a znode that did not exist, `missing = true`.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Applied {
    pub znode: String,
    #[serde(default, skip_serializing_if = "is_false")]
    pub children: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mzxid: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pzxid: Option<i64>,
    #[serde(default, skip_serializing_if = "is_false")]
    pub missing: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl Applied {
    /// The zxid compared with the znode's current one: `mzxid`, or `pzxid` for children.
    pub fn zxid(&self) -> Option<i64> {
        if self.children { self.pzxid } else { self.mzxid }
    }
}

/// The last reload of a unit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reload {
    /// `ok` or `failed`.
    pub outcome: String,
    /// Unix time (seconds).
    pub at: f64,
}

/// The agent's units, from its status report: one per `[[file]]`, one per bundle (its files
/// folded into one unit). `sha256` gives a unit's digest (read by the caller; `None` when
/// there is no file).
pub fn units(report: &StatusReport, mut sha256: impl FnMut(&Unit) -> Option<String>) -> Vec<Unit> {
    let mut units: Vec<Unit> = Vec::with_capacity(report.files.len());
    for f in &report.files {
        let unit = file_unit(f, None);
        match &f.bundle {
            None => units.push(unit),
            Some(dir) => match units.iter_mut().find(|u| u.kind == "bundle" && &u.dest == dir) {
                Some(bundle) => bundle.fold(unit),
                None => units.push(Unit {
                    kind: "bundle".to_owned(),
                    dest: dir.clone(),
                    files: vec![unit.dest.clone()],
                    ..unit
                }),
            },
        }
    }
    for u in &mut units {
        if !u.files.is_empty() {
            // Files of a bundle often share znodes: each once.
            u.znodes.sort();
            u.znodes.dedup();
        }
        u.sha256 = sha256(u);
    }
    units
}

/// The digest of a bundle: SHA-256 over each file's path and the SHA-256 of its bytes, in
/// order, so that any file's change, and a file joining or leaving, changes it. `None` when a
/// file is missing.
pub fn bundle_digest(files: impl IntoIterator<Item = (String, Option<String>)>) -> Option<String> {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    for (path, digest) in files {
        hasher.update(path.as_bytes());
        hasher.update([0]);
        hasher.update(digest?.as_bytes());
        hasher.update([b'\n']);
    }
    Some(hasher.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

fn file_unit(f: &FileStatus, sha256: Option<String>) -> Unit {
    let (state, cause) = match f.state.as_str() {
        "ok" => ("ok", None),
        "pending" if f.stale_since.is_none() => ("pending", None),
        _ => ("stale", f.reason.clone()),
    };
    Unit {
        kind: "file".to_owned(),
        dest: f.dest.clone(),
        sha256,
        znodes: f.applied.as_deref().unwrap_or_default().iter().map(applied).collect(),
        written: f.last_write,
        state: state.to_owned(),
        cause,
        stale_since: f.stale_since,
        reload: f.last_reload.as_ref().map(|r| Reload { outcome: r.outcome.clone(), at: r.at }),
        files: Vec::new(),
    }
}

fn applied(d: &DepStatus) -> Applied {
    let children = d.kind == "children";
    let missing = d.exists == Some(false);
    let zxid = if missing { None } else { d.mzxid };
    Applied {
        znode: d.znode.to_string(),
        children,
        mzxid: if children { None } else { zxid },
        pzxid: if children { zxid } else { None },
        missing,
    }
}

impl Unit {
    /// Folds a bundle's next file into the bundle's unit: every znode, the last write and
    /// reload, and the worst state (stale over pending over ok).
    fn fold(&mut self, file: Unit) {
        fn rank(state: &str) -> u8 {
            match state {
                "ok" => 0,
                "pending" => 1,
                _ => 2,
            }
        }
        self.files.push(file.dest);
        self.znodes.extend(file.znodes);
        self.written = match (self.written, file.written) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
        if rank(&file.state) > rank(&self.state) {
            self.state = file.state;
            self.cause = file.cause;
        }
        self.stale_since = match (self.stale_since, file.stale_since) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if file.reload.as_ref().map(|r| r.at) > self.reload.as_ref().map(|r| r.at) {
            self.reload = file.reload;
        }
    }

    /// Written by this agent since its last reload: the reload is still to come (or under
    /// way). Only meaningful for a unit that has a reload.
    pub fn awaits_reload(&self) -> bool {
        match (self.written, &self.reload) {
            (Some(written), Some(reload)) => reload.at < written,
            (Some(_), None) => true,
            (None, _) => false,
        }
    }

    /// The last reload failed after the last write: the application did not take the bytes.
    pub fn reload_failed(&self) -> bool {
        self.reload.as_ref().is_some_and(|r| r.outcome != "ok" && self.written.is_none_or(|w| r.at >= w))
    }
}

/// True when `holder` (the data of a report znode another session holds) is this agent's
/// own previous run, dead but its session not expired yet: same host, and its pid is this
/// process's (a container restarted) or `alive` says that pid runs no more. Its report may
/// then be replaced instead of refusing to start.
pub fn is_previous_run(holder: &[u8], ours: &[u8], alive: impl Fn(u32) -> bool) -> bool {
    let (Ok(holder), Ok(ours)) =
        (serde_json::from_slice::<AgentReport>(holder), serde_json::from_slice::<AgentReport>(ours))
    else {
        return false;
    };
    holder.id == ours.id
        && !holder.host.is_empty()
        && holder.host == ours.host
        && (holder.pid == ours.pid || !alive(holder.pid))
}

/// The holder of a report znode, for the error when an id is taken: what its report says
/// (host, pid, start time), or that it could not be read.
pub fn describe_holder(data: &[u8]) -> String {
    match serde_json::from_slice::<AgentReport>(data) {
        Ok(r) => {
            let started = std::time::UNIX_EPOCH + std::time::Duration::from_secs_f64(r.started.max(0.0));
            format!(
                "host {}, pid {}, zkrender {}, started {}",
                r.host,
                r.pid,
                r.version,
                humantime::format_rfc3339_seconds(started)
            )
        }
        Err(_) => "its data is not a zkrender report".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::ReloadStatus;

    fn dep(znode: &str, kind: &str, exists: Option<bool>, mzxid: Option<i64>) -> DepStatus {
        DepStatus { znode: znode.into(), kind: kind.to_owned().into(), exists, mzxid, version: None }
    }

    #[test]
    fn a_bundles_files_fold_into_one_unit_with_every_znode_and_the_worst_state() {
        let file = |dest: &str, bundle: Option<&str>, state: &str, zxid: i64, written: f64| FileStatus {
            dest: dest.into(),
            state: state.into(),
            reason: (state != "ok").then(|| "check_failed".to_owned()),
            stale_since: (state != "ok").then_some(written),
            applied: Some(
                vec![dep("/shared", "data", Some(true), Some(3)), dep(dest, "data", Some(true), Some(zxid))]
                    .into(),
            ),
            last_write: Some(written),
            last_reload: Some(ReloadStatus { outcome: "ok".into(), at: written + 1.0, error: None }),
            bundle: bundle.map(Into::into),
            ..Default::default()
        };
        let report = StatusReport {
            files: vec![
                file("/etc/lone.conf", None, "ok", 1, 5.0).into(),
                file("/b/a.conf", Some("/b"), "ok", 7, 10.0).into(),
                file("/b/sub/r.json", Some("/b"), "stale", 8, 12.0).into(),
            ],
            ..Default::default()
        };
        let units = units(&report, |u| Some(format!("{}:{}", u.kind, u.files.len())));
        assert_eq!(units.len(), 2, "{units:?}");
        assert_eq!((units[0].kind.as_str(), units[0].sha256.as_deref()), ("file", Some("file:0")));
        let b = &units[1];
        assert_eq!(
            (b.kind.as_str(), b.dest.as_str(), b.sha256.as_deref()),
            ("bundle", "/b", Some("bundle:2"))
        );
        assert_eq!(b.files, ["/b/a.conf", "/b/sub/r.json"]);
        let znodes: Vec<_> = b.znodes.iter().map(|a| (a.znode.as_str(), a.mzxid)).collect();
        assert_eq!(znodes, [("/b/a.conf", Some(7)), ("/b/sub/r.json", Some(8)), ("/shared", Some(3))]);
        assert_eq!((b.state.as_str(), b.cause.as_deref()), ("stale", Some("check_failed")));
        assert_eq!((b.written, b.stale_since), (Some(12.0), Some(12.0)));
        assert_eq!(b.reload.as_ref().map(|r| r.at), Some(13.0));
    }

    #[test]
    fn a_bundle_digest_changes_with_any_file_and_needs_every_file() {
        let d = |files: &[(&str, Option<&str>)]| {
            bundle_digest(files.iter().map(|(p, h)| (p.to_string(), h.map(str::to_owned))))
        };
        let base = d(&[("a", Some("1")), ("b", Some("2"))]).unwrap();
        assert_eq!(base.len(), 64);
        assert_ne!(Some(&base), d(&[("a", Some("1")), ("b", Some("3"))]).as_ref());
        assert_ne!(Some(&base), d(&[("a", Some("1"))]).as_ref());
        assert_eq!(d(&[("a", Some("1")), ("b", None)]), None);
    }

    #[test]
    fn a_unit_carries_the_applied_zxids_not_the_last_read_ones() {
        let file = FileStatus {
            dest: "/etc/a.conf".into(),
            state: "ok".into(),
            settled: true,
            deps: vec![dep("/a", "data", Some(true), Some(9))].into(),
            applied: Some(
                vec![
                    dep("/a", "data", Some(true), Some(7)),
                    dep("/svc", "children", Some(true), Some(5)),
                    dep("/gone", "data", Some(false), None),
                ]
                .into(),
            ),
            last_write: Some(10.0),
            last_reload: Some(ReloadStatus { outcome: "ok".into(), at: 11.0, error: Some("x".into()) }),
            ..Default::default()
        };
        let report = StatusReport { files: vec![file.into()], ..Default::default() };
        let units = units(&report, |u| Some(format!("sha of {}", u.dest)));
        let u = &units[0];
        assert_eq!((u.kind.as_str(), u.state.as_str(), u.cause.as_deref()), ("file", "ok", None));
        assert_eq!(u.sha256.as_deref(), Some("sha of /etc/a.conf"));
        let zxids: Vec<_> =
            u.znodes.iter().map(|a| (a.znode.as_str(), a.children, a.zxid(), a.missing)).collect();
        assert_eq!(
            zxids,
            [("/a", false, Some(7), false), ("/svc", true, Some(5), false), ("/gone", false, None, true)]
        );
        assert!(!u.awaits_reload() && !u.reload_failed());
        // Never an error message: a check's output could quote the contents.
        let json = serde_json::to_string(u).unwrap();
        assert!(!json.contains("\"x\""), "{json}");
        assert!(json.contains(r#"{"znode":"/a","mzxid":7}"#), "{json}");
        assert!(json.contains(r#"{"znode":"/svc","children":true,"pzxid":5}"#), "{json}");
        assert!(json.contains(r#"{"znode":"/gone","missing":true}"#), "{json}");
    }

    #[test]
    fn failed_is_stale_with_its_cause_and_a_reload_is_awaited_after_a_write() {
        let file = FileStatus {
            dest: "/etc/b.conf".into(),
            state: "failed".into(),
            reason: Some("check_failed".into()),
            last_error: Some("secret contents".into()),
            stale_since: Some(3.0),
            last_write: Some(2.0),
            last_reload: Some(ReloadStatus { outcome: "failed".into(), at: 1.0, error: None }),
            ..Default::default()
        };
        let u = &units(&StatusReport { files: vec![file.into()], ..Default::default() }, |_| None)[0];
        assert_eq!(
            (u.state.as_str(), u.cause.as_deref(), u.stale_since),
            ("stale", Some("check_failed"), Some(3.0))
        );
        assert!(u.awaits_reload(), "written at 2 after the reload at 1");
        assert!(!u.reload_failed(), "the failed reload was of the bytes before");
        let after = Unit { reload: Some(Reload { outcome: "failed".into(), at: 2.5 }), ..u.clone() };
        assert!(!after.awaits_reload() && after.reload_failed());
        assert!(!serde_json::to_string(u).unwrap().contains("secret"));
    }

    #[test]
    fn pending_before_the_first_read() {
        let file = FileStatus { dest: "/c".into(), state: "pending".into(), ..Default::default() };
        let u = &units(&StatusReport { files: vec![file.into()], ..Default::default() }, |_| None)[0];
        assert_eq!((u.state.as_str(), u.znodes.len(), u.sha256.as_deref()), ("pending", 0, None));
    }

    #[test]
    fn only_a_dead_run_on_the_same_host_is_a_previous_run() {
        let doc = |host: &str, pid| {
            serde_json::to_vec(&AgentReport {
                id: "a".into(),
                host: host.into(),
                pid,
                ..AgentReport::default()
            })
            .unwrap()
        };
        let ours = doc("h", 10);
        assert!(is_previous_run(&doc("h", 7), &ours, |_| false), "dead on this host");
        assert!(is_previous_run(&doc("h", 10), &ours, |_| true), "our own pid: a restarted container");
        assert!(!is_previous_run(&doc("h", 7), &ours, |_| true), "alive");
        assert!(!is_previous_run(&doc("other", 7), &ours, |_| false), "another host");
        assert!(!is_previous_run(b"junk", &ours, |_| false));
    }

    #[test]
    fn the_report_round_trips_and_names_its_holder() {
        let r = AgentReport {
            id: "web-1".into(),
            host: "h1".into(),
            pid: 42,
            version: "0.1.0".into(),
            started: 0.0,
            units: Vec::new(),
        };
        let bytes = serde_json::to_vec(&r).unwrap();
        assert_eq!(serde_json::from_slice::<AgentReport>(&bytes).unwrap(), r);
        assert_eq!(describe_holder(&bytes), "host h1, pid 42, zkrender 0.1.0, started 1970-01-01T00:00:00Z");
        assert_eq!(describe_holder(b"junk"), "its data is not a zkrender report");
    }
}
