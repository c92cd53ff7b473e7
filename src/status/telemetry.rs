//! What the pipeline loop knows beyond its pure core (times, the connection, reload outcomes),
//! and the [`StatusReport`] built from both and published on a watch channel.
//!
//! Owned by the pipeline task, like the core: no locks. The loop calls [`Telemetry`]'s
//! `on_*` methods as it carries out a cycle, and [`Publisher::publish`] after each.
//! Metrics are not bumped here (the loop does it): `ops` reads this module, not the reverse.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::time::Instant;

use super::{
    ConnectionState, DepStatus, FileStatus, ReloadStatus, Status, StatusReport, ZkStatus, unix_seconds,
};
use crate::config::TargetId;
use crate::model::{Dep, DepKind, Value};
use crate::render::Snapshot;
use crate::source::Connection;

/// Per-file times and the connection, indexed by [`TargetId`].
#[derive(Debug)]
pub struct Telemetry {
    hosts: String,
    connection: ConnectionState,
    /// Why connecting fails, while it does (see [`Telemetry::on_unreachable`]).
    unreachable: Option<String>,
    expirations: u64,
    reconnects: u64,
    /// Per file: when a change it depends on first arrived and is not on disk yet.
    changed_at: Vec<Option<Instant>>,
    last_write: Vec<Option<SystemTime>>,
    stale_since: Vec<Option<SystemTime>>,
    last_reload: Vec<Option<ReloadStatus>>,
    /// Per file: the values its file on disk was rendered from (see [`Telemetry::on_applied`]).
    applied: Vec<Option<Vec<DepStatus>>>,
}

/// What a connection event changed, for the loop's metrics and publishing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionChange {
    /// The state differs from before (worth publishing at once).
    pub changed: bool,
    /// Connected again after a disconnect or an expiry.
    pub reconnected: bool,
}

impl Telemetry {
    /// `n` files, nothing known yet, `connecting` to `hosts`.
    pub fn new(n: usize, hosts: &str) -> Self {
        Telemetry {
            hosts: hosts.to_owned(),
            connection: ConnectionState::Connecting,
            unreachable: None,
            expirations: 0,
            reconnects: 0,
            changed_at: vec![None; n],
            last_write: vec![None; n],
            stale_since: vec![None; n],
            last_reload: vec![None; n],
            applied: vec![None; n],
        }
    }

    /// Per-file state for a new configuration: what is known about a file (last write,
    /// staleness, last reload) carries over when the new configuration has the same `dest`,
    /// and so does the connection state. `old_index` maps each new file to its old index.
    pub fn renew(self, old_index: &[Option<TargetId>]) -> Self {
        fn carry<T: Clone>(old_index: &[Option<TargetId>], v: &[Option<T>]) -> Vec<Option<T>> {
            old_index.iter().map(|old| old.and_then(|i| v[i].clone())).collect()
        }
        Telemetry {
            hosts: self.hosts.clone(),
            connection: self.connection,
            unreachable: self.unreachable.clone(),
            expirations: self.expirations,
            reconnects: self.reconnects,
            changed_at: carry(old_index, &self.changed_at),
            last_write: carry(old_index, &self.last_write),
            stale_since: carry(old_index, &self.stale_since),
            last_reload: carry(old_index, &self.last_reload),
            applied: carry(old_index, &self.applied),
        }
    }

    /// The connection now.
    pub fn connection(&self) -> ConnectionState {
        self.connection
    }

    /// The connect string.
    pub fn hosts(&self) -> &str {
        &self.hosts
    }

    /// Why connecting fails, while it does.
    pub fn unreachable(&self) -> Option<&str> {
        self.unreachable.as_deref()
    }

    /// Records why connecting failed (per host); true when the cause is a new one (worth
    /// publishing at once). Cleared by the next [`Connection::Connected`].
    pub fn on_unreachable(&mut self, cause: String) -> bool {
        let changed = self.unreachable.as_deref() != Some(cause.as_str());
        self.unreachable = Some(cause);
        changed
    }

    /// Records a connection event.
    pub fn on_connection(&mut self, c: Connection) -> ConnectionChange {
        let state = ConnectionState::from(c);
        if state == ConnectionState::Connected {
            self.unreachable = None;
        }
        let reconnected = state == ConnectionState::Connected
            && matches!(self.connection, ConnectionState::Disconnected | ConnectionState::Expired);
        if reconnected {
            self.reconnects += 1;
        }
        if state == ConnectionState::Expired {
            self.expirations += 1;
        }
        let changed = self.connection != state;
        self.connection = state;
        ConnectionChange { changed, reconnected }
    }

    /// A change that file `id` depends on arrived at `now` (kept if one is already waiting).
    pub fn on_change(&mut self, id: TargetId, now: Instant) {
        self.changed_at[id].get_or_insert(now);
    }

    /// Since when the change now installed for `id` had been waiting, if it was timed.
    pub fn change_waited(&self, id: TargetId) -> Option<Duration> {
        self.changed_at[id].map(|since| since.elapsed())
    }

    /// File `id` on disk is now its rendering from the values of `deps` in `values` (after a
    /// successful install, or a check that it already was): what the fleet report says the
    /// agent applied.
    pub fn on_applied(&mut self, id: TargetId, deps: &BTreeSet<Dep>, values: &dyn Snapshot) {
        self.applied[id] = Some(deps.iter().map(|d| dep_status(d, values)).collect());
    }

    /// Records the result of installing file `id`: `changed` when its bytes on disk changed.
    /// Staleness is not recorded here but by [`Telemetry::track_staleness`], from the status,
    /// so that a render or check failure makes a file stale just as a failed write does.
    pub fn on_result(&mut self, id: TargetId, changed: bool, ok: bool, now: SystemTime) {
        // Either way the change is dealt with; a later one is timed from its own arrival.
        self.changed_at[id] = None;
        if ok && changed {
            self.last_write[id] = Some(now);
        }
    }

    /// Records since when each file is stale: from the first moment (`now`) its status is
    /// failed, whatever the cause, until it is up to date again. The report and the
    /// `zkrender_file_stale_seconds` gauge compute the age from this at read time, so it
    /// grows with no task ticking.
    pub fn track_staleness<'a>(&mut self, files: impl Iterator<Item = FileView<'a>>, now: SystemTime) {
        for (id, file) in files.enumerate() {
            match file.status {
                Status::Failed(_) => {
                    self.stale_since[id].get_or_insert(now);
                }
                Status::Ok | Status::Pending => self.stale_since[id] = None,
            }
        }
    }

    /// How long file `id` has been stale at `now`, if it is.
    pub fn stale_for(&self, id: TargetId, now: SystemTime) -> Option<Duration> {
        self.stale_since[id].map(|since| now.duration_since(since).unwrap_or_default())
    }

    /// Records a reload of `targets` at `at`, failed with `error` if any.
    pub fn on_reload(&mut self, targets: &[TargetId], at: SystemTime, error: Option<String>) {
        let status = ReloadStatus {
            outcome: if error.is_none() { "ok" } else { "failed" }.to_owned(),
            at: unix_seconds(at),
            error,
        };
        for &id in targets {
            self.last_reload[id] = Some(status.clone());
        }
    }
}

/// One file as the report shows it: what the pipeline's core knows of it.
#[derive(Debug, Clone, Copy)]
pub struct FileView<'a> {
    pub dest: &'a Path,
    pub status: &'a Status,
    /// Written, or found correct, at least once.
    pub settled: bool,
    /// What its last render read.
    pub deps: &'a BTreeSet<Dep>,
}

/// Publishes the status report, at most every [`Publisher::INTERVAL`] unless readiness or
/// the connection changed (those go out at once: `/readyz` and systemd must not lag).
/// Building the report walks every file and dependency, which at a thousand files costs
/// more than rendering a change, so a burst of changes publishes once, not once per change.
#[derive(Debug, Default)]
pub struct Publisher {
    /// Where the report goes; `None` publishes nothing.
    tx: Option<watch::Sender<Arc<StatusReport>>>,
    last: Option<Instant>,
    /// A change not published yet: publish at `last + INTERVAL`.
    pending: bool,
    ready: bool,
    connection: ConnectionState,
    /// Why connecting fails, as last published: a new cause goes out at once too.
    unreachable: Option<String>,
}

impl Publisher {
    pub const INTERVAL: Duration = Duration::from_millis(200);

    pub fn new(tx: Option<watch::Sender<Arc<StatusReport>>>) -> Self {
        Publisher { tx, ..Publisher::default() }
    }

    /// Publishes now if due, urgent or `force`d; otherwise remembers to ([`Publisher::due`]).
    pub fn publish<'a>(
        &mut self,
        files: impl Iterator<Item = FileView<'a>> + Clone,
        values: &dyn Snapshot,
        telemetry: &Telemetry,
        force: bool,
    ) {
        let Some(tx) = &self.tx else { return };
        let ready = files.clone().all(|f| f.settled);
        let urgent = force
            || ready != self.ready
            || telemetry.connection != self.connection
            || telemetry.unreachable != self.unreachable;
        let now = Instant::now();
        if !urgent && self.last.is_some_and(|last| now < last + Self::INTERVAL) {
            self.pending = true;
            return;
        }
        tx.send_replace(Arc::new(report(files, values, telemetry)));
        self.last = Some(now);
        self.pending = false;
        self.ready = ready;
        self.connection = telemetry.connection;
        self.unreachable.clone_from(&telemetry.unreachable);
    }

    /// When a held-back report is due.
    pub fn due(&self) -> Option<Instant> {
        self.pending.then(|| self.last.map_or_else(Instant::now, |l| l + Self::INTERVAL))
    }
}

/// The report of `files`, whose dependencies' values are in `values`.
pub fn report<'a>(
    files: impl Iterator<Item = FileView<'a>>,
    values: &dyn Snapshot,
    telemetry: &Telemetry,
) -> StatusReport {
    let files: Vec<FileStatus> = files
        .enumerate()
        .map(|(id, f)| {
            let (reason, last_error) = match f.status {
                Status::Ok => (None, None),
                Status::Pending => (Some("waiting for znodes to be read".to_owned()), None),
                Status::Failed(failure) => {
                    (Some(failure.kind.as_str().to_owned()), Some(failure.message.clone()))
                }
            };
            let deps = f.deps.iter().map(|d| dep_status(d, values)).collect();
            FileStatus {
                dest: f.dest.display().to_string(),
                state: f.status.as_str().to_owned(),
                settled: f.settled,
                reason,
                last_error,
                deps,
                last_write: telemetry.last_write[id].map(unix_seconds),
                stale_since: telemetry.stale_since[id].map(unix_seconds),
                last_reload: telemetry.last_reload[id].clone(),
                applied: telemetry.applied[id].clone(),
            }
        })
        .collect();
    let ready = files.iter().all(|f| f.settled);
    // Readiness is sticky (the files on disk are the last good ones); what is wrong since
    // shows as `degraded`: no ZooKeeper, or a file that does not match it.
    let stale = files.iter().any(|f| f.stale_since.is_some());
    StatusReport {
        ready,
        degraded: ready && (telemetry.connection != ConnectionState::Connected || stale),
        zookeeper: ZkStatus {
            hosts: telemetry.hosts.clone(),
            state: telemetry.connection.as_str().to_owned(),
            session_expirations: telemetry.expirations,
            reconnects: telemetry.reconnects,
            error: telemetry.unreachable.clone(),
        },
        files,
    }
}

/// One dependency and its value in `values`, as the report shows it.
fn dep_status(d: &Dep, values: &dyn Snapshot) -> DepStatus {
    let value = values.get(d);
    DepStatus {
        znode: d.znode.to_string(),
        kind: match d.kind {
            DepKind::Data => "data",
            DepKind::Children => "children",
        }
        .to_owned(),
        exists: value.map(|v| *v != Value::Missing),
        mzxid: value.and_then(Value::zxid),
        version: match value {
            Some(Value::Data { version, .. }) => Some(*version),
            Some(Value::Children { cversion, .. }) => Some(*cversion),
            _ => None,
        },
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::model::ZnodePath;
    use crate::status::{Failure, FailureKind};

    struct Values(HashMap<Dep, Value>);

    impl Snapshot for Values {
        fn get(&self, dep: &Dep) -> Option<&Value> {
            self.0.get(dep)
        }
    }

    fn dep(p: &str) -> Dep {
        Dep::data(ZnodePath::parse(p).unwrap())
    }

    #[test]
    fn reconnects_count_only_after_a_loss_and_expiries_count_each_time() {
        let mut t = Telemetry::new(0, "h:2181");
        assert_eq!(
            t.on_connection(Connection::Connected),
            ConnectionChange { changed: true, reconnected: false }
        );
        assert_eq!(
            t.on_connection(Connection::Connected),
            ConnectionChange { changed: false, reconnected: false }
        );
        t.on_connection(Connection::Expired);
        assert_eq!(
            t.on_connection(Connection::Connected),
            ConnectionChange { changed: true, reconnected: true }
        );
        let r = report(std::iter::empty(), &Values(HashMap::new()), &t);
        assert_eq!((r.zookeeper.reconnects, r.zookeeper.session_expirations), (1, 1));
        assert_eq!(r.zookeeper.state, "connected");
    }

    #[test]
    fn report_names_state_reason_and_deps() {
        let mut t = Telemetry::new(2, "h:2181");
        t.on_connection(Connection::Disconnected);
        t.on_result(0, true, true, SystemTime::UNIX_EPOCH + Duration::from_secs(7));
        t.on_reload(&[0], SystemTime::UNIX_EPOCH + Duration::from_secs(8), Some("boom".to_owned()));
        let deps = BTreeSet::from([dep("/a"), dep("/b")]);
        let values = Values(HashMap::from([(dep("/a"), Value::Missing)]));
        let failed = Status::Failed(Failure { kind: FailureKind::ZnodeMissing, message: "gone".into() });
        let files = [
            FileView { dest: Path::new("/x"), status: &Status::Ok, settled: true, deps: &deps },
            FileView { dest: Path::new("/y"), status: &failed, settled: false, deps: &deps },
        ];
        let r = report(files.into_iter(), &values, &t);
        assert!(!r.ready && !r.degraded);
        assert_eq!(r.zookeeper.state, "disconnected");
        assert_eq!((r.files[0].state.as_str(), r.files[0].last_write), ("ok", Some(7.0)));
        let reload = r.files[0].last_reload.as_ref().unwrap();
        assert_eq!(
            (reload.outcome.as_str(), reload.at, reload.error.as_deref()),
            ("failed", 8.0, Some("boom"))
        );
        assert_eq!(r.files[1].state, "failed");
        assert_eq!(r.files[1].reason.as_deref(), Some("znode_missing"));
        assert_eq!(r.files[1].last_error.as_deref(), Some("gone"));
        assert_eq!(r.files[1].deps[0].exists, Some(false));
        assert_eq!(r.files[1].deps[1].exists, None);
    }

    /// `/x` up to date and `/y` in `status`, both written once.
    fn two<'a>(status: &'a Status, deps: &'a BTreeSet<Dep>) -> [FileView<'a>; 2] {
        [
            FileView { dest: Path::new("/x"), status: &Status::Ok, settled: true, deps },
            FileView { dest: Path::new("/y"), status, settled: true, deps },
        ]
    }

    #[test]
    fn a_failed_file_is_stale_from_its_first_failure_and_degrades_a_ready_report() {
        let mut t = Telemetry::new(2, "h:2181");
        t.on_connection(Connection::Connected);
        let (deps, values) = (BTreeSet::new(), Values(HashMap::new()));
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let failed = |kind| Status::Failed(Failure { kind, message: "writing /y: denied".into() });
        let (denied, render) = (failed(FailureKind::Permission), failed(FailureKind::Render));
        t.track_staleness(two(&denied, &deps).into_iter(), at(10));
        // Another failure later (a retry, or now a render error): still stale since the first.
        t.track_staleness(two(&render, &deps).into_iter(), at(15));
        assert_eq!(t.stale_for(1, at(25)), Some(Duration::from_secs(15)));
        assert_eq!(t.stale_for(0, at(25)), None);
        let r = report(two(&render, &deps).into_iter(), &values, &t);
        assert!(r.ready && r.degraded, "ready, connected, one file stale: degraded");
        let stale: Vec<_> =
            r.stale().map(|f| (f.dest.as_str(), f.reason.as_deref(), f.stale_since)).collect();
        assert_eq!(stale, [("/y", Some("render"), Some(10.0))]);

        t.track_staleness(two(&Status::Ok, &deps).into_iter(), at(30));
        assert_eq!(t.stale_for(1, at(31)), None);
        let r = report(two(&Status::Ok, &deps).into_iter(), &values, &t);
        assert!(r.ready && !r.degraded && r.stale().next().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_publishes_once_per_interval_but_readiness_at_once() {
        let (tx, rx) = watch::channel(Arc::new(StatusReport::default()));
        let mut p = Publisher::new(Some(tx));
        let t = Telemetry::new(1, "h");
        let deps = BTreeSet::new();
        let values = Values(HashMap::new());
        let view =
            |settled| [FileView { dest: Path::new("/x"), status: &Status::Pending, settled, deps: &deps }];
        p.publish(view(false).into_iter(), &values, &t, false);
        assert!(p.due().is_none());
        let first = rx.borrow().clone();
        p.publish(view(false).into_iter(), &values, &t, false);
        assert!(Arc::ptr_eq(&first, &rx.borrow()), "held back within the interval");
        assert_eq!(p.due(), Some(Instant::now() + Publisher::INTERVAL));
        p.publish(view(true).into_iter(), &values, &t, false);
        assert!(rx.borrow().ready, "readiness goes out at once");
        tokio::time::advance(Publisher::INTERVAL).await;
        p.publish(view(true).into_iter(), &values, &t, false);
        assert!(p.due().is_none());
    }
}
