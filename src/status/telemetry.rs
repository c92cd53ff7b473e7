//! What the pipeline loop knows beyond its pure core (times, the connection, reload outcomes),
//! and the [`StatusReport`] built from both and published on a watch channel.
//!
//! Owned by the pipeline task, like the core: no locks. The loop calls [`Telemetry`]'s
//! `on_*` methods as it carries out a cycle, and [`Publisher::publish`] after each.
//! Metrics are not bumped here (the loop does it): `ops` reads this module, not the reverse.
//!
//! Nothing here walks every file on the way from a change to its install: the loop
//! [`Telemetry::touch`]es the files a cycle or an event can change, [`Telemetry::refresh`]
//! updates staleness and the counts readiness is computed from for those alone, and the
//! [`Publisher`] keeps each file's [`FileStatus`] and rebuilds only the touched ones, and
//! only when a report goes out (at most every [`Publisher::INTERVAL`]).

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
    applied: Vec<Option<Arc<[DepStatus]>>>,
    /// Files whose status, times or values may have changed since the last
    /// [`Telemetry::refresh`] (each once; `is_touched` says which are in it).
    touched: Vec<TargetId>,
    is_touched: Vec<bool>,
    /// Per file: settled as of the last refresh; how many are not, and how many are stale
    /// (kept on each transition: readiness and `degraded` never walk the files).
    settled: Vec<bool>,
    unsettled: usize,
    stale: usize,
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
            touched: (0..n).collect(),
            is_touched: vec![true; n],
            settled: vec![false; n],
            unsettled: n,
            stale: 0,
        }
    }

    /// Per-file state for a new configuration: what is known about a file (last write,
    /// staleness, last reload) carries over when the new configuration has the same `dest`,
    /// and so does the connection state. `old_index` maps each new file to its old index.
    pub fn renew(self, old_index: &[Option<TargetId>]) -> Self {
        fn carry<T: Clone>(old_index: &[Option<TargetId>], v: &[Option<T>]) -> Vec<Option<T>> {
            old_index.iter().map(|old| old.and_then(|i| v[i].clone())).collect()
        }
        let n = old_index.len();
        let stale_since = carry(old_index, &self.stale_since);
        // Every file is touched: the next refresh learns each one's status from the new core.
        Telemetry {
            hosts: self.hosts.clone(),
            connection: self.connection,
            unreachable: self.unreachable.clone(),
            expirations: self.expirations,
            reconnects: self.reconnects,
            changed_at: carry(old_index, &self.changed_at),
            last_write: carry(old_index, &self.last_write),
            stale: stale_since.iter().filter(|s| s.is_some()).count(),
            stale_since,
            last_reload: carry(old_index, &self.last_reload),
            applied: carry(old_index, &self.applied),
            touched: (0..n).collect(),
            is_touched: vec![true; n],
            settled: vec![false; n],
            unsettled: n,
        }
    }

    /// File `id`'s status, times or values may have changed: the next
    /// [`Telemetry::refresh`] looks at it (an `id` beyond the files is ignored).
    pub fn touch(&mut self, id: TargetId) {
        if let Some(seen) = self.is_touched.get_mut(id)
            && !*seen
        {
            *seen = true;
            self.touched.push(id);
        }
    }

    /// Looks at the files touched since the last refresh, `view` giving each as the core
    /// has it now: records since when each is stale (from the first moment, `now`, its status
    /// is failed, whatever the cause, until it is up to date again; the report and the
    /// `zkrender_file_stale_seconds` gauge compute the age from this at read time, so it grows
    /// with no task ticking) and whether it is settled. Returns them, for the [`Publisher`].
    pub fn refresh<'a>(&mut self, view: impl Fn(TargetId) -> FileView<'a>, now: SystemTime) -> Vec<TargetId> {
        let touched = std::mem::take(&mut self.touched);
        for &id in &touched {
            self.is_touched[id] = false;
            let file = view(id);
            match file.status {
                Status::Failed(_) => {
                    if self.stale_since[id].is_none() {
                        self.stale_since[id] = Some(now);
                        self.stale += 1;
                    }
                }
                Status::Ok | Status::Pending => {
                    if self.stale_since[id].take().is_some() {
                        self.stale -= 1;
                    }
                }
            }
            if file.settled != self.settled[id] {
                self.settled[id] = file.settled;
                if file.settled {
                    self.unsettled -= 1;
                } else {
                    self.unsettled += 1;
                }
            }
        }
        touched
    }

    /// Every file settled, as of the last refresh.
    pub fn ready(&self) -> bool {
        self.unsettled == 0
    }

    /// The number of files.
    pub fn len(&self) -> usize {
        self.settled.len()
    }

    /// No files.
    pub fn is_empty(&self) -> bool {
        self.settled.is_empty()
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
        self.touch(id);
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
        self.touch(id);
    }

    /// Records the result of installing file `id`: `changed` when its bytes on disk changed.
    /// Staleness is not recorded here but by [`Telemetry::refresh`], from the status,
    /// so that a render or check failure makes a file stale just as a failed write does.
    pub fn on_result(&mut self, id: TargetId, changed: bool, ok: bool, now: SystemTime) {
        // Either way the change is dealt with; a later one is timed from its own arrival.
        self.changed_at[id] = None;
        if ok && changed {
            self.last_write[id] = Some(now);
        }
        self.touch(id);
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
        // A reload started before a config reload may name files the new configuration no
        // longer has.
        for &id in targets {
            if let Some(slot) = self.last_reload.get_mut(id) {
                *slot = Some(status.clone());
                self.touch(id);
            }
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
    /// The `dir` of the `[[bundle]]` it belongs to, if any.
    pub bundle: Option<&'a Path>,
}

/// Publishes the status report, at most every [`Publisher::INTERVAL`] unless readiness or
/// the connection changed (those go out at once: `/readyz` and systemd must not lag).
/// Each file's [`FileStatus`] is kept from one report to the next and built again only when
/// the file was touched (see [`Telemetry::refresh`]), and only when a report goes out: a
/// change costs what it touched, and a burst of changes publishes once, not once per change.
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
    /// Per file: its entry as last built; `None` when touched since (built again when the
    /// next report goes out).
    entries: Vec<Option<Arc<FileStatus>>>,
}

impl Publisher {
    pub const INTERVAL: Duration = Duration::from_millis(200);

    pub fn new(tx: Option<watch::Sender<Arc<StatusReport>>>) -> Self {
        Publisher { tx, ..Publisher::default() }
    }

    /// Publishes now if due, urgent or `force`d; otherwise remembers to ([`Publisher::due`]).
    /// `touched` are the files [`Telemetry::refresh`] returned; `view` gives a file as the
    /// core has it now, and `values` its dependencies' values.
    pub fn publish<'a>(
        &mut self,
        touched: &[TargetId],
        view: impl Fn(TargetId) -> FileView<'a>,
        values: &dyn Snapshot,
        telemetry: &Telemetry,
        force: bool,
    ) {
        let Some(tx) = &self.tx else { return };
        if self.entries.len() == telemetry.len() {
            for &id in touched {
                self.entries[id] = None;
            }
        } else {
            // A new configuration with another number of files: every entry again.
            self.entries = vec![None; telemetry.len()];
        }
        let ready = telemetry.ready();
        let urgent = force
            || ready != self.ready
            || telemetry.connection != self.connection
            || telemetry.unreachable != self.unreachable;
        let now = Instant::now();
        if !urgent && self.last.is_some_and(|last| now < last + Self::INTERVAL) {
            self.pending = true;
            return;
        }
        for (id, entry) in self.entries.iter_mut().enumerate() {
            if entry.is_none() {
                *entry = Some(Arc::new(file_status(id, view(id), values, telemetry)));
            }
        }
        let files = self.entries.iter().flatten().cloned().collect();
        tx.send_replace(Arc::new(assemble(files, telemetry)));
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

/// The report of `files`, whose dependencies' values are in `values`, built from scratch
/// (what [`Publisher::publish`] keeps up to date file by file).
pub fn report<'a>(
    files: impl Iterator<Item = FileView<'a>>,
    values: &dyn Snapshot,
    telemetry: &Telemetry,
) -> StatusReport {
    let files = files.enumerate().map(|(id, f)| Arc::new(file_status(id, f, values, telemetry))).collect();
    assemble(files, telemetry)
}

/// The report of `files`, with readiness and the connection from `telemetry`.
fn assemble(files: Vec<Arc<FileStatus>>, telemetry: &Telemetry) -> StatusReport {
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

/// File `id`, `f`, as the report shows it.
fn file_status(id: TargetId, f: FileView<'_>, values: &dyn Snapshot, telemetry: &Telemetry) -> FileStatus {
    let (reason, last_error) = match f.status {
        Status::Ok => (None, None),
        Status::Pending => (Some("waiting for znodes to be read".to_owned()), None),
        Status::Failed(failure) => (Some(failure.kind.as_str().to_owned()), Some(failure.message.clone())),
    };
    FileStatus {
        dest: f.dest.display().to_string(),
        state: f.status.as_str().to_owned(),
        settled: f.settled,
        reason,
        last_error,
        deps: deps_status(f.deps, values, telemetry.applied[id].as_ref()),
        last_write: telemetry.last_write[id].map(unix_seconds),
        stale_since: telemetry.stale_since[id].map(unix_seconds),
        last_reload: telemetry.last_reload[id].clone(),
        applied: telemetry.applied[id].clone(),
        bundle: f.bundle.map(|dir| dir.display().to_string()),
    }
}

/// A file's dependencies with their values in `values`. Once the file is applied and none of
/// them changed since (a settled agent's every file), that is its applied list: shared, not
/// built a second time (at 1,000 files over 10,000 znodes the second list was 0.75 MiB).
fn deps_status(
    deps: &BTreeSet<Dep>,
    values: &dyn Snapshot,
    applied: Option<&Arc<[DepStatus]>>,
) -> Arc<[DepStatus]> {
    match applied {
        Some(applied)
            if applied.len() == deps.len()
                && deps.iter().zip(applied.iter()).all(|(d, a)| shows(a, d, values)) =>
        {
            applied.clone()
        }
        _ => deps.iter().map(|d| dep_status(d, values)).collect(),
    }
}

/// One dependency and its value in `values`, as the report shows it.
fn dep_status(d: &Dep, values: &dyn Snapshot) -> DepStatus {
    let (exists, mzxid, version) = value_fields(values.get(d));
    DepStatus { znode: d.znode.shared(), kind: kind_name(d.kind).into(), exists, mzxid, version }
}

/// Whether `shown` is what [`dep_status`] makes of `d` now, without making it.
fn shows(shown: &DepStatus, d: &Dep, values: &dyn Snapshot) -> bool {
    let (path, znode): (&str, &str) = (&shown.znode, d.znode.as_str());
    // The same path is usually the same allocation (`ZnodePath::shared`).
    (std::ptr::eq(path, znode) || path == znode)
        && shown.kind == kind_name(d.kind)
        && (shown.exists, shown.mzxid, shown.version) == value_fields(values.get(d))
}

fn kind_name(kind: DepKind) -> &'static str {
    match kind {
        DepKind::Data => "data",
        DepKind::Children => "children",
    }
}

/// What the report shows of a value: whether the znode exists, its mzxid (pzxid for children)
/// and version (cversion); all `None` while it is not read yet.
fn value_fields(value: Option<&Value>) -> (Option<bool>, Option<i64>, Option<i32>) {
    let version = match value {
        Some(Value::Data { version, .. }) => Some(*version),
        Some(Value::Children { cversion, .. }) => Some(*cversion),
        _ => None,
    };
    (value.map(|v| !matches!(v, Value::Missing)), value.and_then(Value::zxid), version)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::model::ZnodePath;
    use crate::status::{Failure, FailureKind};

    struct Values(HashMap<Dep, Value>);

    impl Snapshot for Values {
        fn entry(&self, dep: &Dep) -> Option<(&Dep, &Value)> {
            self.0.get_key_value(dep)
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
            FileView { dest: Path::new("/x"), status: &Status::Ok, settled: true, deps: &deps, bundle: None },
            FileView { dest: Path::new("/y"), status: &failed, settled: false, deps: &deps, bundle: None },
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
            FileView { dest: Path::new("/x"), status: &Status::Ok, settled: true, deps, bundle: None },
            FileView { dest: Path::new("/y"), status, settled: true, deps, bundle: None },
        ]
    }

    #[test]
    fn an_applied_file_shares_its_dependency_list_until_a_value_changes() {
        let mut t = Telemetry::new(1, "h:2181");
        let deps = BTreeSet::from([dep("/a"), dep("/b")]);
        let data = |version| Value::Data { data: vec![], version, mzxid: i64::from(version) };
        let mut values = Values(HashMap::from([(dep("/a"), data(1)), (dep("/b"), data(2))]));
        t.on_applied(0, &deps, &values);
        let view = || FileView {
            dest: Path::new("/x"),
            status: &Status::Ok,
            settled: true,
            deps: &deps,
            bundle: None,
        };
        let r = report(std::iter::once(view()), &values, &t);
        let applied = r.files[0].applied.clone().unwrap();
        assert!(Arc::ptr_eq(&r.files[0].deps, &applied), "one list, not two");
        // /a changed after the install: the report shows its new version beside the applied one.
        values.0.insert(dep("/a"), data(3));
        let r = report(std::iter::once(view()), &values, &t);
        assert!(!Arc::ptr_eq(&r.files[0].deps, r.files[0].applied.as_ref().unwrap()));
        assert_eq!(r.files[0].deps.iter().map(|d| d.version).collect::<Vec<_>>(), [Some(3), Some(2)]);
        assert_eq!(applied.iter().map(|d| d.version).collect::<Vec<_>>(), [Some(1), Some(2)]);
    }

    #[test]
    fn a_failed_file_is_stale_from_its_first_failure_and_degrades_a_ready_report() {
        let mut t = Telemetry::new(2, "h:2181");
        t.on_connection(Connection::Connected);
        let (deps, values) = (BTreeSet::new(), Values(HashMap::new()));
        let at = |s| SystemTime::UNIX_EPOCH + Duration::from_secs(s);
        let failed = |kind| Status::Failed(Failure { kind, message: "writing /y: denied".into() });
        let (denied, render) = (failed(FailureKind::Permission), failed(FailureKind::Render));
        assert_eq!(t.refresh(|id| two(&denied, &deps)[id], at(10)), [0, 1], "all touched at first");
        assert!(t.ready());
        // Another failure later (a retry, or now a render error): still stale since the first.
        t.touch(1);
        assert_eq!(t.refresh(|id| two(&render, &deps)[id], at(15)), [1]);
        assert_eq!(t.stale_for(1, at(25)), Some(Duration::from_secs(15)));
        assert_eq!(t.stale_for(0, at(25)), None);
        let r = report(two(&render, &deps).into_iter(), &values, &t);
        assert!(r.ready && r.degraded, "ready, connected, one file stale: degraded");
        let stale: Vec<_> =
            r.stale().map(|f| (f.dest.as_str(), f.reason.as_deref(), f.stale_since)).collect();
        assert_eq!(stale, [("/y", Some("render"), Some(10.0))]);

        // Untouched, a file is not looked at.
        assert!(t.refresh(|id| two(&Status::Ok, &deps)[id], at(30)).is_empty());
        assert_eq!(t.stale_for(1, at(31)), Some(Duration::from_secs(21)));
        t.on_result(1, true, true, at(30));
        t.refresh(|id| two(&Status::Ok, &deps)[id], at(30));
        assert_eq!(t.stale_for(1, at(31)), None);
        let r = report(two(&Status::Ok, &deps).into_iter(), &values, &t);
        assert!(r.ready && !r.degraded && r.stale().next().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_publishes_once_per_interval_but_readiness_at_once() {
        let (tx, rx) = watch::channel(Arc::new(StatusReport::default()));
        let mut p = Publisher::new(Some(tx));
        let mut t = Telemetry::new(1, "h");
        let deps = BTreeSet::new();
        let values = Values(HashMap::new());
        let view = |settled| FileView {
            dest: Path::new("/x"),
            status: &Status::Pending,
            settled,
            deps: &deps,
            bundle: None,
        };
        let mut publish = |p: &mut Publisher, settled: bool| {
            t.touch(0);
            let touched = t.refresh(|_| view(settled), SystemTime::now());
            p.publish(&touched, |_| view(settled), &values, &t, false);
        };
        publish(&mut p, false);
        assert!(p.due().is_none());
        let first = rx.borrow().clone();
        publish(&mut p, false);
        assert!(Arc::ptr_eq(&first, &rx.borrow()), "held back within the interval");
        assert_eq!(p.due(), Some(Instant::now() + Publisher::INTERVAL));
        publish(&mut p, true);
        assert!(rx.borrow().ready, "readiness goes out at once");
        tokio::time::advance(Publisher::INTERVAL).await;
        publish(&mut p, true);
        assert!(p.due().is_none());
    }

    /// The published report, kept up to date file by file from what was touched, equals the
    /// report built from scratch, and readiness follows the settled count.
    #[tokio::test(start_paused = true)]
    async fn the_kept_report_equals_one_built_from_scratch() {
        let (tx, rx) = watch::channel(Arc::new(StatusReport::default()));
        let mut p = Publisher::new(Some(tx));
        let mut t = Telemetry::new(3, "h");
        t.on_connection(Connection::Connected);
        let deps = BTreeSet::from([dep("/a"), dep("/b")]);
        let mut values = Values(HashMap::new());
        let failed = Status::Failed(Failure { kind: FailureKind::Io, message: "disk".into() });
        let dests = [Path::new("/x"), Path::new("/y"), Path::new("/z")];
        let mut state = [(Status::Pending, false), (Status::Pending, false), (Status::Pending, false)];
        let at = SystemTime::UNIX_EPOCH + Duration::from_secs(100);
        // Each step: which file changes, to what, and its dependency's new value.
        let steps = [
            (0, Status::Ok, true, 1),
            (1, failed.clone(), false, 2),
            (2, Status::Ok, true, 3),
            (1, Status::Ok, true, 4),
            (0, failed.clone(), true, 5),
        ];
        for (i, (id, status, settled, version)) in steps.into_iter().enumerate() {
            state[id] = (status, settled);
            values.0.insert(dep("/a"), Value::Data { data: vec![], version, mzxid: i64::from(version) });
            // The value changed for every file (each reads /a): all three are touched.
            (0..3).for_each(|f| t.on_change(f, Instant::now()));
            t.on_result(id, true, true, at);
            let views = |f: TargetId| FileView {
                dest: dests[f],
                status: &state[f].0,
                settled: state[f].1,
                deps: &deps,
                bundle: None,
            };
            let touched = t.refresh(views, at);
            p.publish(&touched, views, &values, &t, true);
            let full = report((0..3).map(views), &values, &t);
            let kept = rx.borrow().clone();
            assert_eq!(
                serde_json::to_value(&*kept).unwrap(),
                serde_json::to_value(&full).unwrap(),
                "step {i}"
            );
            assert_eq!(
                kept.files.iter().map(|f| f.applied.clone()).collect::<Vec<_>>(),
                full.files.iter().map(|f| f.applied.clone()).collect::<Vec<_>>()
            );
            assert_eq!(t.ready(), full.ready, "step {i}");
        }
        assert!(rx.borrow().ready && rx.borrow().degraded, "all settled, /x stale");
    }
}
