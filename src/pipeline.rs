//! Decides what to write from the values the source reads, and carries it out.
//!
//! Two halves. [`Core`] is pure: it takes updates and returns a [`Plan`] (files to install or
//! remove, dependencies to start or stop watching); it does no I/O and reads no clock, so it is
//! unit-tested with plain values. [`run`] is the one task that owns the core: it receives
//! updates, batches them into cycles (quiescence `wait`/`max_wait`), installs files through
//! [`crate::sink`] on blocking threads, and hands reloads to a notifier task so a slow reload
//! never holds back the next change.
//!
//! Why one task: as the only owner of all state it needs no locks and has no ordering races.

use std::collections::{BTreeSet, HashMap};
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::config::{FileSource, FileSpec, OnDelete, ReloadSpec, TargetId};
use crate::model::{Dep, Update, Value};
use crate::ops::{ReloadKind, metrics};
use crate::render::{RenderError, RenderOutcome, Snapshot, Template};
use crate::sink::{self, WriteError, WriteOutcome};
use crate::source::{Command, Connection, SourceEvent};
use crate::status::{DepStatus, FileStatus, ReloadStatus, StatusReport, ZkStatus};
use crate::store::Store;

/// How a file is produced.
#[derive(Debug)]
enum Producer {
    Raw { dep: Dep },
    Template(Template),
}

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

/// Why a file could not be brought up to date.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Short stable label: `znode_missing`, `render`, `check_failed`, `empty_refused`, ...
    pub kind: &'static str,
    pub message: String,
}

impl Failure {
    /// True when waiting (for a znode to appear) may fix it.
    pub fn is_waiting(&self) -> bool {
        self.kind == "znode_missing"
    }
}

/// One `[[file]]` and its state.
#[derive(Debug)]
pub struct Target {
    pub spec: FileSpec,
    producer: Producer,
    /// What the last render read.
    deps: BTreeSet<Dep>,
    pub status: Status,
    /// Set once the file has been written or found correct.
    pub settled_once: bool,
    /// `rollback`: contents the application rejected (its reload failed); not installed
    /// again until the rendering changes.
    rejected: Option<Vec<u8>>,
}

/// One thing to do to the file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Install { target: TargetId, contents: Vec<u8> },
    Remove { target: TargetId },
}

/// What one cycle decided.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    pub watch: Vec<Dep>,
    pub unwatch: Vec<Dep>,
    /// Templates rendered, and how many of those failed (for metrics).
    pub renders: u64,
    pub render_errors: u64,
}

/// The pure core: values, targets, and the set of targets to re-render.
#[derive(Debug)]
pub struct Core {
    targets: Vec<Target>,
    store: Store,
    dirty: BTreeSet<TargetId>,
}

impl Core {
    /// Compiles every template.
    ///
    /// # Errors
    /// Every template that does not compile.
    pub fn new(files: &[FileSpec]) -> Result<Core, Vec<RenderError>> {
        let mut targets = Vec::with_capacity(files.len());
        let mut errors = Vec::new();
        for spec in files {
            let producer = match &spec.source {
                FileSource::Raw { znode } => Producer::Raw { dep: Dep::data(znode.clone()) },
                FileSource::Template(t) => match Template::compile_with_env(t, &spec.allow_env) {
                    Ok(t) => Producer::Template(t),
                    Err(e) => {
                        errors.push(e);
                        continue;
                    }
                },
            };
            targets.push(Target {
                spec: spec.clone(),
                producer,
                deps: BTreeSet::new(),
                status: Status::Pending,
                settled_once: false,
                rejected: None,
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let dirty = (0..targets.len()).collect();
        Ok(Core { targets, store: Store::new(), dirty })
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// Records a value read from ZooKeeper and marks the files that depend on it.
    pub fn on_update(&mut self, update: Update) -> Vec<TargetId> {
        let touched = self.store.apply(update);
        self.dirty.extend(touched.iter().copied());
        touched
    }

    /// Reading `dep` fails (e.g. no permission): files that depend on it and were never
    /// written say why, instead of "pending".
    pub fn on_read_error(&mut self, dep: &Dep, message: String) {
        for t in self.targets.iter_mut().filter(|t| t.deps.contains(dep) && !t.settled_once) {
            t.status = Status::Failed(Failure { kind: "zookeeper", message: message.clone() });
        }
    }

    /// Marks every file for re-rendering (anti-entropy: repairs files changed on disk).
    pub fn mark_all_dirty(&mut self) {
        self.dirty.extend(0..self.targets.len());
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Renders every marked file whose dependencies are all known, and says what to do.
    pub fn plan(&mut self) -> Plan {
        let mut plan = Plan::default();
        for id in std::mem::take(&mut self.dirty) {
            let target = &mut self.targets[id];
            // A file renders only once everything it read last time has been read again:
            // rendering with half the values would only produce a file we throw away.
            if !self.store.all_known(&target.deps) {
                continue;
            }
            let (deps, outcome) = match &target.producer {
                Producer::Raw { dep } => (BTreeSet::from([dep.clone()]), raw_outcome(&self.store, dep)),
                Producer::Template(t) => {
                    let r = t.render(&self.store);
                    plan.renders += 1;
                    plan.render_errors += u64::from(matches!(r.outcome, RenderOutcome::Failed(_)));
                    let outcome = match r.outcome {
                        RenderOutcome::Done(bytes) => Outcome::Done(bytes),
                        RenderOutcome::Pending => Outcome::Pending,
                        RenderOutcome::Failed(e) => Outcome::Failed(Failure {
                            kind: if e.is_missing_znode() { "znode_missing" } else { "render" },
                            message: e.to_string(),
                        }),
                    };
                    (r.deps, outcome)
                }
            };
            if deps != target.deps {
                let (added, removed) = self.store.set_deps(id, &target.deps, &deps);
                plan.watch.extend(added);
                plan.unwatch.extend(removed);
                target.deps = deps;
            }
            match outcome {
                Outcome::Done(contents) => {
                    if target.rejected.as_ref() == Some(&contents) {
                        // Rolled back before: installing it again would only fail the same way.
                        continue;
                    }
                    target.rejected = None;
                    plan.actions.push(Action::Install { target: id, contents });
                }
                Outcome::Pending => {
                    if target.status != Status::Pending && !target.settled_once {
                        target.status = Status::Pending;
                    }
                }
                Outcome::Failed(failure) => {
                    // A raw file whose znode is gone follows `on_delete`.
                    if let (Producer::Raw { .. }, OnDelete::Remove) =
                        (&target.producer, target.spec.on_delete)
                    {
                        plan.actions.push(Action::Remove { target: id });
                    }
                    target.status = Status::Failed(failure);
                }
            }
        }
        plan
    }

    /// Records the result of carrying out an action.
    pub fn on_result(&mut self, id: TargetId, result: &Result<(), Failure>) {
        let target = &mut self.targets[id];
        match result {
            Ok(()) => {
                target.status = Status::Ok;
                target.settled_once = true;
            }
            Err(f) => target.status = Status::Failed(f.clone()),
        }
    }

    /// Takes over the values a previous configuration's core read, so the new configuration
    /// renders at once. Returns what the old core watched; once the new core has planned, the
    /// caller unwatches what is no longer needed ([`Core::finish_adoption`]).
    pub fn adopt(&mut self, old: Core) -> BTreeSet<Dep> {
        // A file the old configuration already wrote stays "written once" (readiness).
        for t in &mut self.targets {
            t.settled_once = old.targets.iter().any(|o| o.spec.dest == t.spec.dest && o.settled_once);
        }
        let watched = old.store.deps().cloned().collect();
        self.store.adopt_values(old.store);
        watched
    }

    /// After the first plan of an adopted core: the old dependencies nobody needs any more.
    pub fn finish_adoption(&mut self, old_deps: BTreeSet<Dep>) -> Vec<Dep> {
        self.store.forget_unused();
        let now: BTreeSet<&Dep> = self.store.deps().collect();
        old_deps.into_iter().filter(|d| !now.contains(d)).collect()
    }

    /// `rollback`: the application rejected `contents` (its reload failed) and the previous
    /// file was put back. Keeps them out until the rendering changes.
    pub fn reject(&mut self, id: TargetId, contents: Vec<u8>, reason: String) {
        let target = &mut self.targets[id];
        target.rejected = Some(contents);
        target.status = Status::Failed(Failure { kind: "reload_failed", message: reason });
    }

    /// Every dependency watched now (for a resync).
    pub fn deps(&self) -> impl Iterator<Item = &Dep> {
        self.store.deps()
    }

    /// True when no file is waiting for data: each is settled or failed for a reason that
    /// waiting does not fix (`once` stops then).
    pub fn all_settled(&self) -> bool {
        self.targets.iter().all(|t| match &t.status {
            Status::Ok => true,
            Status::Pending => false,
            Status::Failed(f) => !f.is_waiting(),
        })
    }
}

/// What rendering one file gave.
enum Outcome {
    Done(Vec<u8>),
    Pending,
    Failed(Failure),
}

/// A raw mapping's contents from its znode's value.
fn raw_outcome(store: &Store, dep: &Dep) -> Outcome {
    match store.get(dep) {
        None => Outcome::Pending,
        Some(Value::Data { data, .. }) => Outcome::Done(data.clone()),
        Some(Value::Missing) => Outcome::Failed(Failure {
            kind: "znode_missing",
            message: format!("znode {} does not exist", dep.znode),
        }),
        Some(Value::Children { .. }) => panic!("bug: a data dependency got a children value"),
    }
}

/// What the pipeline does with rendered files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The agent: install, reload, keep going.
    Run,
    /// Install every file once, no reloads; stop when all settled (or the deadline).
    Once,
    /// Print instead of installing; stop when all settled (or the deadline).
    Render,
}

/// Settings of the task loop.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    pub wait: Duration,
    pub max_wait: Duration,
    /// Zero disables.
    pub resync: Duration,
    /// For `once`/`render`: give up waiting for missing znodes then.
    pub deadline: Option<Instant>,
    /// Parallel installs (each fsyncs).
    pub write_parallelism: usize,
    /// Where the status report is published after every change (HTTP endpoint, readiness).
    pub status: Option<watch::Sender<Arc<StatusReport>>>,
    /// The connect string, for the report.
    pub hosts: String,
}

/// How the loop ended, with each file's final state (for `once` and `render`).
#[derive(Debug)]
pub struct Summary {
    pub files: Vec<(PathBuf, Status)>,
    /// `render`: each file's rendering, in config order.
    pub rendered: Vec<(PathBuf, Vec<u8>)>,
    /// The ZooKeeper connection at the end (`connected`, `connecting`, ...), and its hosts.
    pub connection: &'static str,
    pub hosts: String,
}

/// A new configuration for a running pipeline (config hot reload).
pub struct Reconfigure {
    pub core: Core,
    pub wait: Duration,
    pub max_wait: Duration,
    pub resync: Duration,
}

/// The pipeline task. Returns when its input closes (shutdown), or in `once`/`render` mode
/// when every file is settled or the deadline passed. A [`Reconfigure`] received on
/// `reconfigure` replaces the files and timings without touching the ZooKeeper session.
pub async fn run(
    mut core: Core,
    mut events: mpsc::Receiver<SourceEvent>,
    source: mpsc::UnboundedSender<Command>,
    mut opts: Options,
    mut reconfigure: mpsc::UnboundedReceiver<Reconfigure>,
) -> Summary {
    let (reload_tx, reload_rx) = mpsc::unbounded_channel::<Vec<ReloadJob>>();
    let (outcome_tx, mut outcomes) = mpsc::unbounded_channel::<ReloadOutcome>();
    let notifier = (opts.mode == Mode::Run).then(|| tokio::spawn(notifier(reload_rx, outcome_tx)));
    let mut telemetry = Telemetry::new(core.targets().len(), &opts.hosts);
    let mut publisher = Publisher::default();
    let mut rendered: HashMap<TargetId, Vec<u8>> = HashMap::new();
    let mut cycle_start: Option<Instant> = None;
    let mut last_change = Instant::now();
    let mut resync_at = next_resync(opts.resync);
    let mut input_open = true;
    let mut adopted: Option<BTreeSet<Dep>> = None;
    // The first cycle runs at once: every file starts marked, to discover what it reads.
    let mut due = true;
    loop {
        if due {
            due = false;
            cycle_start = None;
            run_cycle(&mut core, &source, &opts, &reload_tx, &mut rendered, &mut telemetry).await;
            if let Some(old_deps) = adopted.take() {
                let unused = core.finish_adoption(old_deps);
                if !unused.is_empty() {
                    let _ = source.send(Command::Unwatch(unused));
                }
            }
            publisher.publish(&core, &telemetry, &opts, false);
            if opts.mode != Mode::Run && core.all_settled() {
                break;
            }
        }
        if !input_open {
            break;
        }
        let deadline = cycle_start.map(|first| (last_change + opts.wait).min(first + opts.max_wait));
        tokio::select! {
            // Cancel safety: `recv` loses nothing when another branch wins.
            ev = events.recv() => match ev {
                None => {
                    // Shutdown: finish what is pending, then stop.
                    input_open = false;
                    due = core.has_dirty() && opts.mode == Mode::Run;
                }
                Some(ev) => {
                    let mut connection_changed = handle_event(&mut core, &mut telemetry, ev);
                    // With wait = 0, everything already queued joins this cycle.
                    while let Ok(ev) = events.try_recv() {
                        connection_changed |= handle_event(&mut core, &mut telemetry, ev);
                    }
                    if connection_changed {
                        publisher.publish(&core, &telemetry, &opts, false);
                        // once/render: a read error may have settled the last pending file.
                        if opts.mode != Mode::Run && core.all_settled() {
                            break;
                        }
                    }
                    if core.has_dirty() {
                        let now = Instant::now();
                        last_change = now;
                        if opts.wait.is_zero() {
                            due = true;
                        } else if cycle_start.is_none() {
                            cycle_start = Some(now);
                        }
                    }
                }
            },
            _ = sleep_until(deadline), if deadline.is_some() => due = true,
            _ = sleep_until(resync_at), if resync_at.is_some() => {
                debug!("resync: re-reading every dependency and checking every file");
                let _ = source.send(Command::Resync);
                core.mark_all_dirty();
                due = true;
                resync_at = next_resync(opts.resync);
            }
            Some(new) = reconfigure.recv() => {
                let old = std::mem::replace(&mut core, new.core);
                let old_index: Vec<Option<TargetId>> = core
                    .targets()
                    .iter()
                    .map(|t| old.targets().iter().position(|o| o.spec.dest == t.spec.dest))
                    .collect();
                adopted = Some(core.adopt(old));
                telemetry = telemetry.renew(&old_index);
                rendered.clear();
                opts.wait = new.wait;
                opts.max_wait = new.max_wait;
                if opts.resync != new.resync {
                    opts.resync = new.resync;
                    resync_at = next_resync(opts.resync);
                }
                info!(files = core.targets().len(), "new configuration in effect");
                due = true;
            }
            _ = sleep_until(publisher.due()), if publisher.due().is_some() => {
                publisher.publish(&core, &telemetry, &opts, true);
            }
            Some(mut outcome) = outcomes.recv() => {
                let rollback = std::mem::take(&mut outcome.rollback);
                if let Some(error) = outcome.error.clone() && !rollback.is_empty() {
                    roll_back(&mut core, rollback, &outcome.spec, &error, &reload_tx).await;
                }
                telemetry.on_reload(outcome);
                publisher.publish(&core, &telemetry, &opts, false);
            }
            _ = sleep_until(opts.deadline), if opts.deadline.is_some() => break,
        }
    }
    drop(reload_tx);
    if let Some(n) = notifier {
        let _ = n.await;
    }
    while let Ok(outcome) = outcomes.try_recv() {
        telemetry.on_reload(outcome);
    }
    publisher.publish(&core, &telemetry, &opts, true);
    let files = core.targets().iter().map(|t| (t.spec.dest.clone(), t.status.clone())).collect();
    let mut rendered: Vec<_> = rendered.into_iter().collect();
    rendered.sort_by_key(|(id, _)| *id);
    let rendered =
        rendered.into_iter().map(|(id, bytes)| (core.targets()[id].spec.dest.clone(), bytes)).collect();
    Summary { files, rendered, connection: telemetry.connection, hosts: telemetry.hosts.clone() }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next resync time: the period plus up to 10% jitter, so a fleet does not resync at once.
fn next_resync(period: Duration) -> Option<Instant> {
    if period.is_zero() {
        return None;
    }
    let jitter = period.mul_f64(rand::random::<f64>() * 0.1);
    Some(Instant::now() + period + jitter)
}

/// Applies one event; true when the connection state changed (worth publishing at once).
fn handle_event(core: &mut Core, telemetry: &mut Telemetry, ev: SourceEvent) -> bool {
    match ev {
        SourceEvent::Update(u) => {
            metrics().watch_events_total.inc();
            let now = Instant::now();
            for id in core.on_update(u) {
                telemetry.changed_at[id].get_or_insert(now);
            }
            false
        }
        // On expiry every watch is re-established by the source and every value re-read;
        // values that did not change are dropped by the store, so nothing is rewritten.
        SourceEvent::Connection(c) => telemetry.on_connection(c),
        SourceEvent::ReadError { dep, message } => {
            core.on_read_error(&dep, message);
            true
        }
    }
}

/// Plans one cycle and carries it out: watches, installs, reloads.
async fn run_cycle(
    core: &mut Core,
    source: &mpsc::UnboundedSender<Command>,
    opts: &Options,
    reloads: &mpsc::UnboundedSender<Vec<ReloadJob>>,
    rendered: &mut HashMap<TargetId, Vec<u8>>,
    telemetry: &mut Telemetry,
) {
    let before: Vec<Status> = core.targets().iter().map(|t| t.status.clone()).collect();
    let plan = core.plan();
    metrics().renders_total.inc_by(plan.renders);
    metrics().render_errors_total.inc_by(plan.render_errors);
    if !plan.unwatch.is_empty() {
        let _ = source.send(Command::Unwatch(plan.unwatch));
    }
    if !plan.watch.is_empty() {
        let _ = source.send(Command::Watch(plan.watch));
    }
    let mut to_reload: Vec<ReloadJob> = Vec::new();
    if opts.mode == Mode::Render {
        for action in plan.actions {
            if let Action::Install { target, contents } = action {
                rendered.insert(target, contents);
                core.on_result(target, &Ok(()));
            }
        }
    } else {
        let results = carry_out(core, plan.actions, opts.write_parallelism).await;
        let now = SystemTime::now();
        for Installed { id, changed, result, rollback } in results {
            let failure =
                result.as_ref().err().map(|e| Failure { kind: e.kind(), message: crate::error::report(e) });
            core.on_result(id, &failure.clone().map_or(Ok(()), Err));
            if changed && let Some(since) = telemetry.changed_at[id] {
                metrics().record_change_to_write(since.elapsed());
            }
            if changed {
                metrics().files_written_total.inc();
            }
            if failure.as_ref().is_some_and(|f| f.kind == "check_failed") {
                metrics().check_failures_total.inc();
            }
            telemetry.on_result(id, changed, failure.is_none(), now);
            if changed && let Some(reload) = &core.targets()[id].spec.reload {
                // Identical reloads of files changed in one cycle run once.
                let job = match to_reload.iter_mut().position(|job| &job.spec == reload) {
                    Some(i) => &mut to_reload[i],
                    None => {
                        to_reload.push(ReloadJob {
                            spec: reload.clone(),
                            queued_at: std::time::Instant::now(),
                            targets: Vec::new(),
                            rollback: Vec::new(),
                        });
                        to_reload.last_mut().expect("just pushed")
                    }
                };
                job.targets.push(id);
                if let Some((previous, installed)) = rollback {
                    job.rollback.push(Rollback { id, previous, installed });
                }
            }
        }
    }
    log_transitions(core, &before);
    if !to_reload.is_empty() && opts.mode == Mode::Run {
        let _ = reloads.send(to_reload);
    }
}

/// The reload after installing `rollback` files failed: put each previous file back, keep the
/// rejected contents out until the rendering changes, and run the reload again so the
/// application returns to the configuration it accepted.
async fn roll_back(
    core: &mut Core,
    rollback: Vec<Rollback>,
    spec: &ReloadSpec,
    error: &str,
    reloads: &mpsc::UnboundedSender<Vec<ReloadJob>>,
) {
    for Rollback { id, previous, installed } in rollback {
        let file = core.targets()[id].spec.clone();
        let dest = file.dest.display().to_string();
        let Some(previous) = previous else {
            error!(dest = %dest, error = %error, "reload failed; there was no previous file to roll back to");
            core.reject(id, installed, format!("reload failed (no previous file to roll back to): {error}"));
            continue;
        };
        let restored = tokio::task::spawn_blocking(move || {
            // The previous file was accepted once; put it back even if it is empty.
            let file = FileSpec { check: None, backup: false, allow_empty: true, ..file };
            sink::install(&file, &previous)
        })
        .await
        .expect("bug: rollback task panicked");
        match restored {
            Ok(_) => {
                error!(dest = %dest, error = %error, "reload failed; previous file restored (rollback)");
                core.reject(
                    id,
                    installed,
                    format!("reload failed; rolled back to the previous file: {error}"),
                );
            }
            Err(e) => {
                error!(dest = %dest, error = %crate::error::report(&e), "reload failed and the previous file could not be restored");
                core.reject(
                    id,
                    installed,
                    format!("reload failed; restoring the previous file failed too: {error}"),
                );
            }
        }
    }
    let _ = reloads.send(vec![ReloadJob {
        spec: spec.clone(),
        queued_at: std::time::Instant::now(),
        targets: Vec::new(),
        rollback: Vec::new(),
    }]);
}

/// Logs each file whose status changed: once per cause, not once per event.
fn log_transitions(core: &Core, before: &[Status]) {
    for (t, old) in core.targets().iter().zip(before) {
        if &t.status == old {
            continue;
        }
        let dest = t.spec.dest.display();
        match (&t.status, old) {
            (Status::Failed(f), _) => {
                error!(dest = %dest, cause = f.kind, error = %f.message, "file not updated; it keeps its last good contents")
            }
            (Status::Ok, Status::Failed(_)) => info!(dest = %dest, "file recovered"),
            (Status::Pending, _) => {
                debug!(dest = %dest, "waiting for znodes to be read")
            }
            _ => {}
        }
    }
}

/// Installs or removes files on blocking threads, a few at a time. Returns, per action,
/// whether the file on disk changed, and the error if any.
/// What installing one file did.
struct Installed {
    id: TargetId,
    /// The file on disk changed.
    changed: bool,
    result: Result<(), WriteError>,
    /// For `rollback` files that changed: (previous contents if there was a file, new contents).
    rollback: Option<(Option<Vec<u8>>, Vec<u8>)>,
}

async fn carry_out(core: &Core, actions: Vec<Action>, parallelism: usize) -> Vec<Installed> {
    let permits = Arc::new(Semaphore::new(parallelism.max(1)));
    let mut jobs = JoinSet::new();
    for action in actions {
        let (id, spec) = match &action {
            Action::Install { target, .. } | Action::Remove { target } => {
                (*target, core.targets()[*target].spec.clone())
            }
        };
        let permits = permits.clone();
        jobs.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("bug: semaphore closed");
            let joined = tokio::task::spawn_blocking(move || match action {
                Action::Install { contents, .. } => {
                    // Keep what is there now, to put it back if the application rejects the new file.
                    let previous = spec.rollback.then(|| std::fs::read(&spec.dest).ok());
                    let r = sink::install_with(&spec, &contents, sink::DirSync::Deferred);
                    if let Ok(WriteOutcome::Written) = r {
                        info!(dest = %spec.dest.display(), bytes = contents.len(), "file written");
                    }
                    let changed = matches!(r, Ok(WriteOutcome::Written));
                    let rollback = if changed { previous.map(|p| (p, contents)) } else { None };
                    (r.map(|o| o == WriteOutcome::Written), rollback)
                }
                Action::Remove { .. } => {
                    let r = sink::remove(&spec);
                    if let Ok(true) = r {
                        warn!(dest = %spec.dest.display(), "znode deleted; file removed (on_delete = \"remove\")");
                    }
                    (r, None)
                }
            })
            .await;
            match joined {
                Ok((Ok(changed), rollback)) => Installed { id, changed, result: Ok(()), rollback },
                Ok((Err(e), _)) => Installed { id, changed: false, result: Err(e), rollback: None },
                Err(e) => panic!("bug: install task failed: {e}"),
            }
        });
    }
    let mut results = Vec::new();
    while let Some(r) = jobs.join_next().await {
        results.push(r.expect("bug: install job panicked"));
    }
    results.sort_by_key(|r| r.id);
    // One fsync per directory for the whole cycle, before any reload is told about it.
    let written: Vec<PathBuf> =
        results.iter().filter(|r| r.changed).map(|r| core.targets()[r.id].spec.dest.clone()).collect();
    if !written.is_empty() {
        let _ =
            tokio::task::spawn_blocking(move || sink::sync_dirs(written.iter().map(PathBuf::as_path))).await;
    }
    results
}

/// One reload to run, and the files whose change asked for it.
#[derive(Debug, Clone)]
struct ReloadJob {
    spec: ReloadSpec,
    /// When the change that asked for it was installed.
    queued_at: std::time::Instant,
    targets: Vec<TargetId>,
    /// `rollback` files this reload is for: what to put back if it fails.
    rollback: Vec<Rollback>,
}

/// A `rollback` file's previous and new contents.
#[derive(Debug, Clone)]
struct Rollback {
    id: TargetId,
    /// None when there was no file before (nothing to put back).
    previous: Option<Vec<u8>>,
    installed: Vec<u8>,
}

/// How a reload went, reported back to the pipeline for the status.
#[derive(Debug)]
struct ReloadOutcome {
    spec: ReloadSpec,
    targets: Vec<TargetId>,
    at: SystemTime,
    error: Option<String>,
    rollback: Vec<Rollback>,
}

/// Runs reload batches one after another; batches queued meanwhile are merged, so a burst of
/// changes during a slow reload costs one more reload, not one per change.
async fn notifier(
    mut batches: mpsc::UnboundedReceiver<Vec<ReloadJob>>,
    outcomes: mpsc::UnboundedSender<ReloadOutcome>,
) {
    while let Some(mut batch) = batches.recv().await {
        while let Ok(more) = batches.try_recv() {
            for job in more {
                match batch.iter_mut().find(|j| j.spec == job.spec) {
                    Some(j) => {
                        j.targets.extend(job.targets);
                        j.rollback.extend(job.rollback);
                    }
                    None => batch.push(job),
                }
            }
        }
        let mut running = JoinSet::new();
        for job in batch {
            if job.spec.action.targets_child()
                && crate::exec::child_started_at().is_none_or(|started| job.queued_at < started)
            {
                // `zkrender exec`: the child started after this change was installed, so it
                // already runs on the new file; signalling or restarting it now would hit a
                // process that may not have set up its handlers yet.
                debug!(reload = %job.spec.action, "the child started after this change; no reload needed");
                continue;
            }
            let outcomes = outcomes.clone();
            running.spawn(async move {
                if !job.spec.splay.is_zero() {
                    // A random delay so that a fleet watching the same znode does not reload at once.
                    let delay = job.spec.splay.mul_f64(rand::random::<f64>());
                    debug!(reload = %job.spec.action, delay = ?delay, "splay: waiting before the reload");
                    tokio::time::sleep(delay).await;
                }
                let started = Instant::now();
                let result = crate::notify::reload(&job.spec).await;
                metrics().record_reload(
                    ReloadKind::from(&job.spec.action),
                    result.is_ok(),
                    started.elapsed(),
                );
                match &result {
                    Ok(()) => {
                        info!(reload = %job.spec.action, took = ?started.elapsed(), "application reloaded")
                    }
                    Err(e) => {
                        error!(reload = %job.spec.action, error = %crate::error::report(e), "reload failed after all retries")
                    }
                }
                let error = result.err().map(|e| crate::error::report(&e));
                let _ = outcomes.send(ReloadOutcome {
                    spec: job.spec,
                    targets: job.targets,
                    at: SystemTime::now(),
                    error,
                    rollback: job.rollback,
                });
            });
        }
        while running.join_next().await.is_some() {}
    }
}

/// What the loop knows beyond the pure core: times, connection, reload outcomes.
#[derive(Debug)]
struct Telemetry {
    hosts: String,
    connection: &'static str,
    expirations: u64,
    reconnects: u64,
    /// Per file: when a change it depends on first arrived and is not on disk yet.
    changed_at: Vec<Option<Instant>>,
    last_write: Vec<Option<SystemTime>>,
    stale_since: Vec<Option<SystemTime>>,
    last_reload: Vec<Option<ReloadStatus>>,
}

impl Telemetry {
    fn new(n: usize, hosts: &str) -> Self {
        Telemetry {
            hosts: hosts.to_owned(),
            connection: "connecting",
            expirations: 0,
            reconnects: 0,
            changed_at: vec![None; n],
            last_write: vec![None; n],
            stale_since: vec![None; n],
            last_reload: vec![None; n],
        }
    }

    /// Per-file state for a new configuration: what is known about a file (last write,
    /// staleness, last reload) carries over when the new configuration has the same `dest`,
    /// and so does the connection state. `old_index` maps each new file to its old index.
    fn renew(self, old_index: &[Option<TargetId>]) -> Self {
        fn carry<T: Clone>(old_index: &[Option<TargetId>], v: &[Option<T>]) -> Vec<Option<T>> {
            old_index.iter().map(|old| old.and_then(|i| v[i].clone())).collect()
        }
        Telemetry {
            hosts: self.hosts.clone(),
            connection: self.connection,
            expirations: self.expirations,
            reconnects: self.reconnects,
            changed_at: carry(old_index, &self.changed_at),
            last_write: carry(old_index, &self.last_write),
            stale_since: carry(old_index, &self.stale_since),
            last_reload: carry(old_index, &self.last_reload),
        }
    }

    fn on_connection(&mut self, c: Connection) -> bool {
        let state = match c {
            Connection::Connected => "connected",
            Connection::Disconnected => "disconnected",
            Connection::Expired => "expired",
        };
        let m = metrics();
        if c == Connection::Connected && matches!(self.connection, "disconnected" | "expired") {
            self.reconnects += 1;
            m.zk_reconnects_total.inc();
        }
        if c == Connection::Expired {
            self.expirations += 1;
            m.zk_session_expirations_total.inc();
        }
        m.zk_connected.set(i64::from(c == Connection::Connected));
        let changed = self.connection != state;
        self.connection = state;
        changed
    }

    fn on_result(&mut self, id: TargetId, changed: bool, ok: bool, now: SystemTime) {
        if ok {
            self.changed_at[id] = None;
            self.stale_since[id] = None;
            if changed {
                self.last_write[id] = Some(now);
            }
        } else {
            self.stale_since[id].get_or_insert(now);
            // The change was not installed; a later good one is timed from its own arrival.
            self.changed_at[id] = None;
        }
    }

    fn on_reload(&mut self, outcome: ReloadOutcome) {
        let status = ReloadStatus {
            outcome: if outcome.error.is_none() { "ok" } else { "failed" }.to_owned(),
            at: unix(outcome.at),
            error: outcome.error,
        };
        for id in outcome.targets {
            self.last_reload[id] = Some(status.clone());
        }
    }
}

fn unix(t: SystemTime) -> f64 {
    t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Builds the status report and publishes it (no-op without a receiver).
/// Publishes the status report, at most every [`Publisher::INTERVAL`] unless readiness or
/// the connection changed (those go out at once: `/readyz` and systemd must not lag).
/// Building the report walks every file and dependency, which at a thousand files costs
/// more than rendering a change, so a burst of changes publishes once, not once per change.
#[derive(Debug, Default)]
struct Publisher {
    last: Option<Instant>,
    /// A change not published yet: publish at `last + INTERVAL`.
    pending: bool,
    ready: bool,
    connection: &'static str,
}

impl Publisher {
    const INTERVAL: Duration = Duration::from_millis(200);

    fn publish(&mut self, core: &Core, telemetry: &Telemetry, opts: &Options, force: bool) {
        let Some(tx) = &opts.status else { return };
        let ready = core.targets().iter().all(|t| t.settled_once);
        let urgent = force || ready != self.ready || telemetry.connection != self.connection;
        let now = Instant::now();
        if !urgent && self.last.is_some_and(|last| now < last + Self::INTERVAL) {
            self.pending = true;
            return;
        }
        tx.send_replace(Arc::new(report(core, telemetry)));
        self.last = Some(now);
        self.pending = false;
        self.ready = ready;
        self.connection = telemetry.connection;
    }

    /// When a held-back report is due.
    fn due(&self) -> Option<Instant> {
        self.pending.then(|| self.last.map_or_else(Instant::now, |l| l + Self::INTERVAL))
    }
}

fn report(core: &Core, telemetry: &Telemetry) -> StatusReport {
    let files: Vec<FileStatus> = core
        .targets()
        .iter()
        .enumerate()
        .map(|(id, t)| {
            let (state, reason, last_error) = match &t.status {
                Status::Ok => ("ok", None, None),
                Status::Pending => ("pending", Some("waiting for znodes to be read".to_owned()), None),
                Status::Failed(f) => ("failed", Some(f.kind.to_owned()), Some(f.message.clone())),
            };
            let deps = t
                .deps
                .iter()
                .map(|d| {
                    let value = core.store.get(d);
                    DepStatus {
                        znode: d.znode.to_string(),
                        kind: match d.kind {
                            crate::model::DepKind::Data => "data",
                            crate::model::DepKind::Children => "children",
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
                })
                .collect();
            FileStatus {
                dest: t.spec.dest.display().to_string(),
                state: state.to_owned(),
                settled: t.settled_once,
                reason,
                last_error,
                deps,
                last_write: telemetry.last_write[id].map(unix),
                stale_since: telemetry.stale_since[id].map(unix),
                last_reload: telemetry.last_reload[id].clone(),
            }
        })
        .collect();
    let ready = files.iter().all(|f| f.settled);
    StatusReport {
        ready,
        degraded: ready && telemetry.connection != "connected",
        zookeeper: ZkStatus {
            hosts: telemetry.hosts.clone(),
            state: telemetry.connection.to_owned(),
            session_expirations: telemetry.expirations,
            reconnects: telemetry.reconnects,
        },
        files,
    }
}

/// Prints renderings for `zkrender render`: one file's exact bytes, or each under a header.
pub fn print_rendered(rendered: &[(PathBuf, Vec<u8>)], headers: bool) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    for (i, (dest, bytes)) in rendered.iter().enumerate() {
        if headers {
            if i > 0 {
                writeln!(out)?;
            }
            writeln!(out, "==> {} <==", dest.display())?;
        }
        out.write_all(bytes)?;
    }
    out.flush()
}
