//! The pipeline's decision core: what to write, given the values read so far. Pure.
//!
//! [`Core`] takes updates ([`Core::on_update`]) and returns a [`Plan`] ([`Core::plan`]): files
//! to install or remove, dependencies to start or stop watching. It does no I/O and reads no
//! clock, so it is unit-tested with plain values (below, and against a model of ZooKeeper in
//! `tests/proptest_core.rs`). The loop in [`super`] carries out what it decides and reports
//! back with [`Core::on_result`] and [`Core::reject`].
//!
//! It owns the [`Store`] (last value per dependency) and every file's compiled [`Template`];
//! the templates of one configuration share one environment, compiled here up front.
//!
//! It also owns the retry timer of files whose install failed for a reason of the machine
//! ([`Core::on_attempt`], [`Core::next_retry`], [`Core::start_due_retries`]): the time is an
//! input like any value, so the schedule is unit-tested with paused time.

use std::collections::BTreeSet;
use std::sync::Arc;

use tokio::time::Instant;

use crate::config::{BundleSpec, Config, FileSource, FileSpec, OnDelete, TargetId};
use crate::formats::Format;
use crate::model::{Dep, Update, Value, ZnodePath};
use crate::render::{self, RenderError, RenderOutcome, Snapshot as _, Template, TreeRead};
use crate::status::telemetry::FileView;
use crate::status::{Failure, FailureKind, Status};
use crate::store::Store;

use super::retry;

/// How a file is produced.
#[derive(Debug)]
enum Producer {
    Raw {
        dep: Dep,
    },
    Template(Template),
    /// `tree` + `format`: the subtree read through the store as templates read it, so its
    /// dependencies (children and data of every znode in it) are discovered the same way.
    Tree {
        root: ZnodePath,
        format: Format,
    },
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
    /// Failed attempts (renders, installs, removals) since the file was last up to date.
    failed_attempts: u32,
    /// When to try again an install or removal that failed for an I/O reason. Any new plan
    /// for the file replaces it: a new rendering is tried at once, not at this time.
    retry_at: Option<Instant>,
    /// The `[[bundle]]` (index in [`Core::bundles`]) the file belongs to, if any.
    pub bundle: Option<BundleId>,
    /// A template file's last output and where its printed values are, when it can be
    /// patched ([`render::Incremental`]; kept only for renders from the store).
    incremental: Option<Box<render::Incremental>>,
    /// With `incremental`: the dependencies whose value changed since that output.
    changed: Vec<Dep>,
}

/// How many changes to a file's values are patched into its last output at once
/// ([`render::Incremental`]); more render it in full.
const MAX_PATCHED_CHANGES: usize = 64;

/// Index of a `[[bundle]]` in [`Core::bundles`] (config order).
pub type BundleId = usize;

/// One `[[bundle]]` and its state. Its files are targets like any other (rendered, watched
/// and reported one by one) but are planned together: all of them render from one store or
/// snapshot, and they are installed by one [`Action::InstallBundle`].
#[derive(Debug)]
pub struct Bundle {
    pub spec: BundleSpec,
    /// Its files' target ids, in config order.
    pub members: std::ops::Range<TargetId>,
    /// `commit`: the znode whose change (and only that) renders the bundle.
    commit: Option<Dep>,
    /// With `commit`: the commit znode changed since the bundle last rendered (true at start).
    armed: bool,
    /// `rollback`: the files' contents the application rejected; not installed again until
    /// the rendering changes.
    rejected: Option<Vec<Vec<u8>>>,
}

/// One thing to do to the file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Install {
        target: TargetId,
        contents: Vec<u8>,
    },
    Remove {
        target: TargetId,
    },
    /// A new version of a whole bundle: every file's contents, in member order.
    InstallBundle {
        bundle: BundleId,
        files: Vec<(TargetId, Vec<u8>)>,
    },
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
    /// Of `renders`, how many were a change patched into the last output instead
    /// ([`render::Incremental`]).
    pub patched: u64,
}

/// The pure core: values, targets, and the set of targets to re-render.
#[derive(Debug)]
pub struct Core {
    targets: Vec<Target>,
    /// Shared with each render while it runs (an `Arc`, not a copy) and only then: between
    /// renders this is the only reference, so [`Core::store_mut`] never copies.
    store: Arc<Store>,
    dirty: BTreeSet<TargetId>,
    /// Dependencies with a read in flight ([`Core::on_reading`]): files that read one of them
    /// do not render until its answer arrives. See [`Core::blocked`] for why.
    in_flight: BTreeSet<Dep>,
    /// `[[bundle]]`s; their files are the targets after the `[[file]]`s.
    bundles: Vec<Bundle>,
    /// The files with a retry scheduled (`Target::retry_at`): what [`Core::next_retry`] and
    /// [`Core::start_due_retries`] look at, so that neither walks every file after each cycle.
    retrying: BTreeSet<TargetId>,
}

impl Core {
    /// Compiles every template.
    ///
    /// # Errors
    /// Every template that does not compile.
    pub fn new(files: &[FileSpec]) -> Result<Core, Vec<RenderError>> {
        Core::with_bundles(files, &[])
    }

    /// The core of a whole configuration: its `[[file]]`s and `[[bundle]]`s.
    ///
    /// # Errors
    /// Every template that does not compile.
    pub fn for_config(config: &Config) -> Result<Core, Vec<RenderError>> {
        Core::with_bundles(&config.files, &config.bundles)
    }

    /// `files`, then each bundle's files as targets of their own (see [`Bundle`]).
    ///
    /// # Errors
    /// Every template that does not compile.
    pub fn with_bundles(files: &[FileSpec], bundle_specs: &[BundleSpec]) -> Result<Core, Vec<RenderError>> {
        let all: Vec<(&FileSpec, Option<BundleId>)> = files
            .iter()
            .map(|f| (f, None))
            .chain(
                bundle_specs
                    .iter()
                    .enumerate()
                    .flat_map(|(b, spec)| spec.files.iter().map(move |f| (f, Some(b)))),
            )
            .collect();
        // One environment for the whole configuration, every template compiled into it now.
        let mut compiled = render::compile_all(all.iter().filter_map(|(spec, _)| match &spec.source {
            FileSource::Template(t) => Some((t, spec.allow_env.as_slice())),
            FileSource::Raw { .. } | FileSource::Tree { .. } => None,
        }))
        .into_iter();
        let mut targets = Vec::with_capacity(all.len());
        let mut errors = Vec::new();
        for (spec, bundle) in all {
            let producer = match &spec.source {
                FileSource::Raw { znode } => Producer::Raw { dep: Dep::data(znode.clone()) },
                FileSource::Tree { root, format } => Producer::Tree { root: root.clone(), format: *format },
                FileSource::Template(_) => match compiled.next().expect("bug: one result per template") {
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
                failed_attempts: 0,
                retry_at: None,
                bundle,
                incremental: None,
                changed: Vec::new(),
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        let mut start = files.len();
        let bundles = bundle_specs
            .iter()
            .map(|spec| {
                let members = start..start + spec.files.len();
                start = members.end;
                Bundle {
                    spec: spec.clone(),
                    members,
                    commit: spec.commit.clone().map(Dep::data),
                    armed: true,
                    rejected: None,
                }
            })
            .collect();
        let dirty = (0..targets.len()).collect();
        Ok(Core {
            targets,
            store: Arc::default(),
            dirty,
            in_flight: BTreeSet::new(),
            bundles,
            retrying: BTreeSet::new(),
        })
    }

    /// The `[[bundle]]`s, in config order.
    pub fn bundles(&self) -> &[Bundle] {
        &self.bundles
    }

    /// The files written, checked and reloaded as one with file `id`: its bundle's members,
    /// or `id` alone (none for an id out of range, e.g. from before a config reload).
    pub fn unit_of(&self, id: TargetId) -> std::ops::Range<TargetId> {
        match self.targets.get(id) {
            Some(t) => t.bundle.map_or(id..id + 1, |b| self.bundles[b].members.clone()),
            None => id..id,
        }
    }

    /// The store, to change it. Renders release their share before [`Core::plan`] returns,
    /// so this copies nothing (a copy would still be correct, only slow).
    fn store_mut(&mut self) -> &mut Store {
        Arc::make_mut(&mut self.store)
    }

    /// The values read so far (for the status report).
    pub fn values(&self) -> &Store {
        &self.store
    }

    /// Each file as the status report shows it, in config order.
    pub fn views(&self) -> impl Iterator<Item = FileView<'_>> + Clone {
        (0..self.targets.len()).map(|id| self.view(id))
    }

    /// File `id` as the status report shows it (one of [`Core::views`]).
    pub fn view(&self, id: TargetId) -> FileView<'_> {
        let t = &self.targets[id];
        FileView {
            dest: &t.spec.dest,
            status: &t.status,
            settled: t.settled_once,
            deps: &t.deps,
            bundle: t.bundle.map(|b| self.bundles[b].spec.dir.as_path()),
        }
    }

    pub fn targets(&self) -> &[Target] {
        &self.targets
    }

    /// A read of `dep` is in flight: files that read it wait for its answer.
    pub fn on_reading(&mut self, dep: Dep) {
        self.in_flight.insert(dep);
    }

    /// The source stopped reading these dependencies (unwatched; or, with `None`, the session
    /// ended and every watch task with it): no answer will come for their reads in flight.
    pub fn forget_in_flight(&mut self, deps: Option<&[Dep]>) {
        match deps {
            Some(deps) => deps.iter().for_each(|d| {
                self.in_flight.remove(d);
            }),
            None => self.in_flight.clear(),
        }
    }

    /// True when file `id` may not render now: a read of one of its dependencies is in flight.
    ///
    /// This is what makes every file a snapshot, values of one moment and never a mix of two
    /// ZooKeeper transactions. The source announces each read before sending it
    /// ([`crate::source::SourceEvent::Reading`]) and every read re-arms the dependency's watch
    /// (or it is persistent). ZooKeeper delivers a session's watch notifications in order, and
    /// every notification caused by a transaction before the answer to any read sent after
    /// that transaction. So when a transaction changes /a and /b and the read of /a answered
    /// with the new value, the notification for /b reached the client before that answer,
    /// and /b's read is announced: the file waits for it. Once no read of its dependencies is
    /// in flight, each value held is the latest as of the last answer, i.e. all of them are
    /// the state after one and the same transaction. Under unbroken churn the loop ends the
    /// wait at `max_wait` with one atomic multi-read ([`Core::plan_snapshot`]).
    ///
    /// A bundle is one file in this respect: its files wait while a read of any dependency of
    /// any of them is in flight, so that a transaction that changed the znodes of two of its
    /// files is seen whole, and the held bundle renders from a snapshot of all their
    /// dependencies at once. With `commit`, the commit znode is one of those dependencies:
    /// the files' changes written before the commit znode's were notified before it, so
    /// once the commit znode's new value is in and no read is in flight, every file's value
    /// is at least as new as that commit.
    pub fn blocked(&self, id: TargetId) -> bool {
        if let Some(b) = self.targets[id].bundle {
            return self.bundle_blocked(b);
        }
        self.reading_any(&self.targets[id].deps)
    }

    /// True when a read of one of `deps` is in flight. Walks the smaller of the two sets:
    /// usually one read is in flight and a file has a few deps, but a template over 1,000
    /// znodes must not cost 1,000 lookups per check.
    fn reading_any(&self, deps: &BTreeSet<Dep>) -> bool {
        if self.in_flight.len() < deps.len() {
            self.in_flight.iter().any(|d| deps.contains(d))
        } else {
            deps.iter().any(|d| self.in_flight.contains(d))
        }
    }

    /// Whether some dirty file is held back by a read in flight: [`Core::blocked_deps`] is
    /// not empty. Cheap (no set is built), for the check after every cycle.
    pub fn any_blocked(&self) -> bool {
        !self.in_flight.is_empty() && self.dirty.iter().any(|&id| self.held(id))
    }

    /// A dirty file `id` waits for a read in flight, and a snapshot would render it (a
    /// bundle's file only once its bundle is armed).
    fn held(&self, id: TargetId) -> bool {
        self.blocked(id) && self.targets[id].bundle.is_none_or(|b| self.bundles[b].armed)
    }

    /// Dirty files held back by a read in flight, and the dependencies they last read (for
    /// a bundle's file, those of every file of the bundle).
    pub fn blocked_deps(&self) -> BTreeSet<Dep> {
        let mut deps = BTreeSet::new();
        for &id in self.dirty.iter().filter(|&&id| self.held(id)) {
            match self.targets[id].bundle {
                Some(b) => deps.extend(self.bundle_deps(b)),
                None => deps.extend(self.targets[id].deps.iter().cloned()),
            }
        }
        deps
    }

    /// Records a value read from ZooKeeper and marks the files that depend on it.
    pub fn on_update(&mut self, update: Update) -> Vec<TargetId> {
        self.in_flight.remove(&update.dep);
        let dep = update.dep.clone();
        let touched = self.store_mut().apply(update);
        for &id in &touched {
            let target = &mut self.targets[id];
            if target.incremental.is_some() {
                target.changed.push(dep.clone());
                // Past a few changes at once a render costs less than the patch's lookups.
                if target.changed.len() > MAX_PATCHED_CHANGES {
                    target.incremental = None;
                    target.changed = Vec::new();
                }
            }
        }
        if !touched.is_empty() {
            // A new value of a bundle's commit znode: the bundle renders (once no read of its
            // files' dependencies is in flight, see `Core::blocked`).
            for bundle in self.bundles.iter_mut().filter(|b| b.commit.as_ref() == Some(&dep)) {
                bundle.armed = true;
            }
        }
        self.dirty.extend(touched.iter().copied());
        touched
    }

    /// Reading `dep` fails (e.g. no permission): files that depend on it and were never
    /// written say why, instead of "pending".
    pub fn on_read_error(&mut self, dep: &Dep, message: String) {
        // The read answered (with an error): it no longer holds back the files that read it.
        self.in_flight.remove(dep);
        for t in self.targets.iter_mut().filter(|t| t.deps.contains(dep) && !t.settled_once) {
            t.status = Status::Failed(Failure { kind: FailureKind::Zookeeper, message: message.clone() });
        }
    }

    /// Marks every file for re-rendering (anti-entropy: repairs files changed on disk).
    pub fn mark_all_dirty(&mut self) {
        self.dirty.extend(0..self.targets.len());
    }

    /// The files marked for the next plan: the only ones a cycle can change the status of.
    pub fn dirty(&self) -> impl Iterator<Item = TargetId> + '_ {
        self.dirty.iter().copied()
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Renders every marked file whose dependencies are all known and none awaits a read
    /// ([`Core::blocked`]: those stay marked), and says what to do.
    pub fn plan(&mut self) -> Plan {
        self.plan_from(None)
    }

    /// Like [`Core::plan`], but the files held back by a read in flight whose dependencies
    /// are all in `snapshot` (values of one moment: one multi-read) render from it.
    pub fn plan_snapshot(&mut self, snapshot: Vec<Update>) -> Plan {
        let mut store = Store::new();
        for u in snapshot {
            store.set_deps(0, &BTreeSet::new(), &BTreeSet::from([u.dep.clone()]));
            store.apply(u);
        }
        self.plan_from(Some(&Arc::new(store)))
    }

    fn plan_from(&mut self, snapshot: Option<&Arc<Store>>) -> Plan {
        let mut plan = Plan::default();
        let mut bundles = BTreeSet::new();
        for id in std::mem::take(&mut self.dirty) {
            if let Some(b) = self.targets[id].bundle {
                bundles.insert(b);
                continue;
            }
            // `Some`: render from the snapshot; `None`: from the store.
            let from: Option<&Arc<Store>> = if self.blocked(id) {
                match snapshot {
                    Some(s) if s.all_known(&self.targets[id].deps) => Some(s),
                    _ => {
                        self.dirty.insert(id);
                        continue;
                    }
                }
            } else {
                None
            };
            // A file renders only once everything it read last time has been read again:
            // rendering with half the values would only produce a file we throw away.
            if !from.unwrap_or(&self.store).all_known(&self.targets[id].deps) {
                continue;
            }
            match self.render_target(id, from, &mut plan) {
                Outcome::Done(contents) => {
                    let target = &mut self.targets[id];
                    if target.rejected.as_ref() == Some(&contents) {
                        // Rolled back before: installing it again would only fail the same way.
                        continue;
                    }
                    target.rejected = None;
                    plan.actions.push(Action::Install { target: id, contents });
                }
                Outcome::Pending => self.mark_pending(id),
                Outcome::Failed(failure) => {
                    let target = &mut self.targets[id];
                    // A raw file whose znode is gone, or a tree file whose root is, follows
                    // `on_delete` (the removal's result counts as the attempt).
                    if matches!(target.producer, Producer::Raw { .. } | Producer::Tree { .. })
                        && failure.kind == FailureKind::ZnodeMissing
                        && target.spec.on_delete == OnDelete::Remove
                    {
                        plan.actions.push(Action::Remove { target: id });
                    } else {
                        target.failed_attempts += 1;
                    }
                    target.status = Status::Failed(failure);
                }
            }
        }
        for b in bundles {
            self.plan_bundle(b, snapshot, &mut plan);
        }
        plan
    }

    /// Plans bundle `b`, one of whose files is marked: all its files render from one store
    /// (the snapshot rule applied to the union of their dependencies), and only when every
    /// one of them renders is a new version installed.
    fn plan_bundle(&mut self, b: BundleId, snapshot: Option<&Arc<Store>>, plan: &mut Plan) {
        let members = self.bundles[b].members.clone();
        if !self.bundles[b].armed {
            // `commit`: the files' own changes wait for the commit znode's.
            return;
        }
        let deps = self.bundle_deps(b);
        let from = if self.bundle_blocked(b) {
            match snapshot {
                Some(s) if s.all_known(&deps) => Some(s),
                _ => {
                    self.dirty.extend(members);
                    return;
                }
            }
        } else {
            None
        };
        if !from.unwrap_or(&self.store).all_known(&deps) {
            return;
        }
        let mut files = Vec::with_capacity(members.len());
        let mut pending = false;
        let mut failed = false;
        for id in members.clone() {
            match self.render_target(id, from, plan) {
                Outcome::Done(contents) => files.push((id, contents)),
                Outcome::Pending => {
                    self.mark_pending(id);
                    pending = true;
                }
                Outcome::Failed(failure) => {
                    let target = &mut self.targets[id];
                    target.failed_attempts += 1;
                    target.status = Status::Failed(failure);
                    failed = true;
                }
            }
        }
        // The commit znode is read with the files, so that its change is seen and so that
        // its read in flight holds the bundle like any of theirs.
        if let Some(commit) = self.bundles[b].commit.clone() {
            for id in members {
                if !self.targets[id].deps.contains(&commit) {
                    let mut deps = self.targets[id].deps.iter().cloned().collect();
                    insert_sorted(&mut deps, commit.clone());
                    self.set_target_deps(id, deps, plan);
                }
            }
        }
        if pending {
            // More to read first (a first render, or a template that found new znodes).
            return;
        }
        let bundle = &mut self.bundles[b];
        bundle.armed = bundle.commit.is_none();
        if failed {
            return;
        }
        let contents: Vec<Vec<u8>> = files.iter().map(|(_, c)| c.clone()).collect();
        if bundle.rejected.as_ref() == Some(&contents) {
            return;
        }
        bundle.rejected = None;
        plan.actions.push(Action::InstallBundle { bundle: b, files });
    }

    /// Every dependency the files of bundle `b` last read.
    fn bundle_deps(&self, b: BundleId) -> BTreeSet<Dep> {
        self.bundles[b].members.clone().flat_map(|id| self.targets[id].deps.iter().cloned()).collect()
    }

    /// True when a read of any dependency of any file of bundle `b` is in flight.
    fn bundle_blocked(&self, b: BundleId) -> bool {
        !self.in_flight.is_empty()
            && self.bundles[b].members.clone().any(|id| self.reading_any(&self.targets[id].deps))
    }

    fn mark_pending(&mut self, id: TargetId) {
        let target = &mut self.targets[id];
        if target.status != Status::Pending && !target.settled_once {
            target.status = Status::Pending;
        }
    }

    /// Replaces what file `id` reads (`deps`: sorted, each once), asking to watch or unwatch
    /// the difference. Usually it reads what it read before, and nothing is built.
    fn set_target_deps(&mut self, id: TargetId, deps: Vec<Dep>, plan: &mut Plan) {
        let target = &mut self.targets[id];
        if !target.deps.iter().eq(&deps) {
            let deps: BTreeSet<Dep> = deps.into_iter().collect();
            let (added, removed) = Arc::make_mut(&mut self.store).set_deps(id, &target.deps, &deps);
            plan.watch.extend(added);
            plan.unwatch.extend(removed);
            target.deps = deps;
        }
    }

    /// Renders file `id` from `snapshot`, or from the store when `None`, and records what it
    /// read. The store is borrowed, not shared, for the render: changing what the file reads
    /// afterwards ([`Core::set_target_deps`]) then copies nothing.
    fn render_target(&mut self, id: TargetId, snapshot: Option<&Arc<Store>>, plan: &mut Plan) -> Outcome {
        let store: &Arc<Store> = snapshot.unwrap_or(&self.store);
        let target = &mut self.targets[id];
        // Whatever this render leads to supersedes a retry that was waiting.
        cancel_retry(target, &mut self.retrying, id);
        let changed = std::mem::take(&mut target.changed);
        let (mut deps, outcome) = match &target.producer {
            Producer::Raw { dep } => (vec![dep.clone()], raw_outcome(store, dep)),
            Producer::Template(t) => {
                // A change to values the template only prints is applied to its last output:
                // the same bytes a render would make (`render::Incremental`), and the same
                // dependencies, so nothing else about the file changes.
                if snapshot.is_none()
                    && let Some(incremental) = target.incremental.as_mut()
                    && let Some(bytes) = incremental.patch(&changed, store.as_ref())
                {
                    plan.renders += 1;
                    plan.patched += 1;
                    return Outcome::Done(bytes);
                }
                let r = t.render(store);
                // Kept only for a render from the store (changes are tracked against it) of a
                // file outside a bundle (bundles render together, from one store or snapshot).
                target.incremental = r.incremental.filter(|_| snapshot.is_none() && target.bundle.is_none());
                plan.renders += 1;
                plan.render_errors += u64::from(matches!(r.outcome, RenderOutcome::Failed(_)));
                let outcome = match r.outcome {
                    RenderOutcome::Done(bytes) => Outcome::Done(bytes),
                    RenderOutcome::Pending => Outcome::Pending,
                    RenderOutcome::Failed(e) => Outcome::Failed(Failure {
                        kind: if e.is_missing_znode() {
                            FailureKind::ZnodeMissing
                        } else {
                            FailureKind::Render
                        },
                        message: e.to_string(),
                    }),
                };
                (r.deps, outcome)
            }
            Producer::Tree { root, format } => {
                let (deps, outcome) = tree_outcome(store, root, *format);
                plan.renders += 1;
                plan.render_errors += u64::from(matches!(outcome, Outcome::Failed(_)));
                (deps, outcome)
            }
        };
        if let Some(commit) = target.bundle.and_then(|b| self.bundles[b].commit.clone()) {
            insert_sorted(&mut deps, commit);
        }
        self.set_target_deps(id, deps, plan);
        outcome
    }

    /// Records the result of carrying out an action.
    pub fn on_result(&mut self, id: TargetId, result: &Result<(), Failure>) {
        let target = &mut self.targets[id];
        match result {
            Ok(()) => {
                target.status = Status::Ok;
                target.settled_once = true;
                target.failed_attempts = 0;
                cancel_retry(target, &mut self.retrying, id);
            }
            Err(f) => {
                target.status = Status::Failed(f.clone());
                target.failed_attempts += 1;
            }
        }
    }

    /// Records the result of installing or removing file `id` at `now`, like
    /// [`Core::on_result`], and when it failed for an I/O reason ([`FailureKind::is_io`])
    /// schedules the same action again ([`retry::delay`], `jitter` in `[0, 1)`): the file is
    /// re-rendered then, so a rendering that changed meanwhile is what gets installed. A
    /// `check` or empty-file refusal is a verdict on the bytes and is not retried.
    pub fn on_attempt(&mut self, id: TargetId, result: &Result<(), Failure>, now: Instant, jitter: f64) {
        self.on_result(id, result);
        let target = &mut self.targets[id];
        if let Err(failure) = result
            && failure.kind.is_io()
        {
            target.retry_at = Some(now + retry::delay(target.failed_attempts, jitter));
            self.retrying.insert(id);
            if let Some(b) = target.bundle {
                // A `commit` bundle renders again for the retry without a new commit.
                self.bundles[b].armed = true;
            }
        }
    }

    /// When the earliest waiting retry is due, if any.
    pub fn next_retry(&self) -> Option<Instant> {
        self.retrying.iter().filter_map(|&id| self.targets[id].retry_at).min()
    }

    /// Marks every file whose retry is due at `now` for the next plan. True if there was one.
    pub fn start_due_retries(&mut self, now: Instant) -> bool {
        let due: Vec<TargetId> = self
            .retrying
            .iter()
            .copied()
            .filter(|&id| self.targets[id].retry_at.is_some_and(|at| at <= now))
            .collect();
        for &id in &due {
            cancel_retry(&mut self.targets[id], &mut self.retrying, id);
            self.dirty.insert(id);
        }
        !due.is_empty()
    }

    /// Failed attempts of file `id` since it was last up to date (for the recovery log).
    pub fn failed_attempts(&self, id: TargetId) -> u32 {
        self.targets[id].failed_attempts
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
        // The source keeps its reads going across a config reload: their answers still come.
        self.in_flight = old.in_flight;
        self.store_mut().adopt_values(Arc::unwrap_or_clone(old.store));
        watched
    }

    /// After the first plan of an adopted core: the old dependencies nobody needs any more.
    pub fn finish_adoption(&mut self, old_deps: BTreeSet<Dep>) -> Vec<Dep> {
        self.store_mut().forget_unused();
        let now: BTreeSet<&Dep> = self.store.deps().collect();
        old_deps.into_iter().filter(|d| !now.contains(d)).collect()
    }

    /// `rollback`: the application rejected `contents` (its reload failed) and the previous
    /// file was put back. Keeps them out until the rendering changes.
    pub fn reject(&mut self, id: TargetId, contents: Vec<u8>, reason: String) {
        let target = &mut self.targets[id];
        target.rejected = Some(contents);
        target.status = Status::Failed(Failure { kind: FailureKind::ReloadFailed, message: reason });
        target.failed_attempts += 1;
    }

    /// `rollback` of bundle `b`: the application rejected its files `contents` (in member
    /// order) and `..data` was swapped back. Keeps them out until the rendering changes.
    pub fn reject_bundle(&mut self, b: BundleId, contents: Vec<Vec<u8>>, reason: &str) {
        self.bundles[b].rejected = Some(contents);
        for id in self.bundles[b].members.clone() {
            self.reject_status(id, reason.to_owned());
        }
    }

    fn reject_status(&mut self, id: TargetId, reason: String) {
        let target = &mut self.targets[id];
        target.status = Status::Failed(Failure { kind: FailureKind::ReloadFailed, message: reason });
        target.failed_attempts += 1;
    }

    /// Every dependency watched now (for a resync).
    pub fn deps(&self) -> impl Iterator<Item = &Dep> {
        self.store.deps()
    }

    /// True when no file is waiting for data or for a retry: each is settled or failed for
    /// a reason that waiting does not fix (`once` stops then).
    pub fn all_settled(&self) -> bool {
        self.targets.iter().all(|t| match &t.status {
            Status::Ok => true,
            Status::Pending => false,
            Status::Failed(f) => !f.is_waiting() && t.retry_at.is_none(),
        })
    }
}

/// What rendering one file gave.
enum Outcome {
    Done(Vec<u8>),
    Pending,
    Failed(Failure),
}

/// Drops file `id`'s waiting retry, if it has one (`retrying` lists the files that do).
fn cancel_retry(target: &mut Target, retrying: &mut BTreeSet<TargetId>, id: TargetId) {
    if target.retry_at.take().is_some() {
        retrying.remove(&id);
    }
}

/// Adds `dep` to the sorted `deps` unless it is there.
fn insert_sorted(deps: &mut Vec<Dep>, dep: Dep) {
    if let Err(at) = deps.binary_search(&dep) {
        deps.insert(at, dep);
    }
}

/// A tree file's contents, and every dependency the walk asked for (sorted, each once).
fn tree_outcome(store: &Store, root: &ZnodePath, format: Format) -> (Vec<Dep>, Outcome) {
    let mut deps = Vec::new();
    let read = render::read_tree(root, |dep| {
        deps.push(dep.clone());
        store.get(dep)
    });
    Dep::sort_unique(&mut deps);
    let outcome = match read {
        TreeRead::Pending => Outcome::Pending,
        TreeRead::Missing => Outcome::Failed(Failure {
            kind: FailureKind::ZnodeMissing,
            message: format!("znode {root} does not exist (tree root)"),
        }),
        TreeRead::Found(subtree) => match subtree.render(format) {
            Ok(text) => Outcome::Done(text.into_bytes()),
            Err(err) => Outcome::Failed(Failure { kind: FailureKind::Render, message: err.to_string() }),
        },
    };
    (deps, outcome)
}

/// A raw mapping's contents from its znode's value.
fn raw_outcome(store: &Store, dep: &Dep) -> Outcome {
    match store.get(dep) {
        None => Outcome::Pending,
        Some(Value::Data { data, .. }) => Outcome::Done(data.clone()),
        Some(Value::Missing) => Outcome::Failed(Failure {
            kind: FailureKind::ZnodeMissing,
            message: format!("znode {} does not exist", dep.znode),
        }),
        Some(Value::Children { .. }) => panic!("bug: a data dependency got a children value"),
    }
}

#[cfg(test)]
pub(super) mod tests {
    use std::path::PathBuf;
    use std::time::Duration;

    use super::*;
    use crate::config::{BundleSpec, InstallMode, TemplateSpec};
    use crate::model::ZnodePath;

    fn zp(p: &str) -> ZnodePath {
        ZnodePath::parse(p).unwrap()
    }

    fn spec(n: usize, source: FileSource) -> FileSpec {
        FileSpec {
            dest: PathBuf::from(format!("/sim/file{n}")),
            source,
            mode: 0o644,
            owner: None,
            group: None,
            on_delete: OnDelete::Keep,
            check: None,
            check_timeout: Duration::from_secs(30),
            backup: false,
            install: InstallMode::Atomic,
            allow_empty: true,
            rollback: false,
            allow_env: Vec::new(),
            reload: None,
        }
    }

    pub(in crate::pipeline) fn raw(n: usize, znode: &str) -> FileSpec {
        spec(n, FileSource::Raw { znode: zp(znode) })
    }

    fn template(n: usize, text: &str) -> FileSpec {
        let t = TemplateSpec { name: format!("t{n}.j2"), path: None, text: text.to_owned(), prefix: None };
        spec(n, FileSource::Template(t))
    }

    pub(in crate::pipeline) fn data(p: &str, text: &str, version: i32) -> Update {
        let value = Value::Data { data: text.as_bytes().to_vec(), mzxid: i64::from(version), version };
        Update { dep: Dep::data(zp(p)), value }
    }

    fn missing(p: &str) -> Update {
        Update { dep: Dep::data(zp(p)), value: Value::Missing }
    }

    fn install(target: TargetId, text: &str) -> Action {
        Action::Install { target, contents: text.as_bytes().to_vec() }
    }

    fn failure_kind(core: &Core, id: TargetId) -> Option<FailureKind> {
        match &core.targets()[id].status {
            Status::Failed(f) => Some(f.kind),
            _ => None,
        }
    }

    #[test]
    fn a_file_waits_for_its_znode_then_installs_once_per_change() {
        let mut core = Core::new(&[raw(0, "/a")]).unwrap();
        let plan = core.plan();
        assert_eq!(plan.watch, vec![Dep::data(zp("/a"))]);
        assert!(plan.actions.is_empty());
        assert_eq!(core.targets()[0].status, Status::Pending);
        assert_eq!(core.on_update(data("/a", "x", 1)), vec![0]);
        assert_eq!(core.plan().actions, vec![install(0, "x")]);
        core.on_result(0, &Ok(()));
        assert!(core.all_settled());
        assert!(core.on_update(data("/a", "x", 1)).is_empty(), "the same value again marks nothing");
        assert!(!core.has_dirty());
    }

    /// The text of a file printing `/k/0` .. `/k/39`, where each holds `values(i)`.
    fn forty(values: impl Fn(usize) -> String) -> String {
        (0..40).map(|i| format!("{i}={}\n", values(i))).collect()
    }

    #[test]
    fn a_change_to_a_printed_value_is_patched_into_the_last_output_and_anything_else_renders() {
        let text = "{% for i in range(40) %}{{ i }}={{ znode('/k/' ~ i) }}\n{% endfor %}";
        let mut core = Core::new(&[template(0, text)]).unwrap();
        core.plan();
        for i in 0..40 {
            core.on_update(data(&format!("/k/{i}"), "v", 1));
        }
        let plan = core.plan();
        assert_eq!((plan.renders, plan.patched), (1, 0), "the first render is a render");
        assert_eq!(plan.actions, vec![install(0, &forty(|_| "v".into()))]);
        core.on_result(0, &Ok(()));

        core.on_update(data("/k/3", "three", 2));
        core.on_update(data("/k/39", "", 2));
        let plan = core.plan();
        assert_eq!((plan.renders, plan.patched), (1, 1));
        let expected = |i| match i {
            3 => "three".to_owned(),
            39 => String::new(),
            _ => "v".to_owned(),
        };
        assert_eq!(plan.actions, vec![install(0, &forty(expected))]);
        assert!(plan.watch.is_empty() && plan.unwatch.is_empty());

        // A resync marks the file without a change: the same contents, still patched.
        core.mark_all_dirty();
        let plan = core.plan();
        assert_eq!((plan.patched, plan.actions.clone()), (1, vec![install(0, &forty(expected))]));

        // Deleted: a render, which fails as it always did, and keeps no state.
        core.on_update(missing("/k/5"));
        let plan = core.plan();
        assert_eq!((plan.renders, plan.patched, plan.render_errors), (1, 0, 1));
        assert_eq!(failure_kind(&core, 0), Some(FailureKind::ZnodeMissing));
        // The failed render stopped at /k/5, so /k/6 and on were unwatched: read again.
        core.on_update(data("/k/5", "five", 3));
        core.plan();
        for i in 6..40 {
            core.on_update(data(&format!("/k/{i}"), &expected(i), 2));
        }
        let plan = core.plan();
        assert_eq!((plan.renders, plan.patched), (1, 0), "back from a failure: a render");
        core.on_update(data("/k/6", "six", 3));
        let plan = core.plan();
        assert_eq!(plan.patched, 1);
        let expected = |i| match i {
            5 => "five".to_owned(),
            6 => "six".to_owned(),
            _ => expected(i),
        };
        assert_eq!(plan.actions, vec![install(0, &forty(expected))]);
    }

    #[test]
    fn many_changes_at_once_render_in_full() {
        let text = "{% for i in range(40) %}{{ i }}={{ znode('/k/' ~ i) }}\n{% endfor %}";
        let mut core = Core::new(&[template(0, text)]).unwrap();
        core.plan();
        for i in 0..40 {
            core.on_update(data(&format!("/k/{i}"), "v", 1));
        }
        core.plan();
        for round in 0..2 {
            for i in 0..40 {
                core.on_update(data(&format!("/k/{i}"), &format!("{round}"), round + 2));
            }
        }
        assert!(core.targets()[0].incremental.is_none(), "80 changes: no state kept");
        let plan = core.plan();
        assert_eq!((plan.renders, plan.patched), (1, 0));
        assert_eq!(plan.actions, vec![install(0, &forty(|_| "1".into()))]);
        assert!(core.targets()[0].incremental.is_some(), "the render keeps a new state");
    }

    #[test]
    fn a_render_from_a_snapshot_is_never_patched_and_drops_the_state() {
        let text = "{% for i in range(40) %}{{ i }}={{ znode('/k/' ~ i) }}\n{% endfor %}";
        let mut core = Core::new(&[template(0, text)]).unwrap();
        core.plan();
        for i in 0..40 {
            core.on_update(data(&format!("/k/{i}"), "v", 1));
        }
        core.plan();
        assert!(core.targets()[0].incremental.is_some());
        core.on_reading(Dep::data(zp("/k/1")));
        core.on_update(data("/k/2", "two", 2));
        let snapshot: Vec<Update> = (0..40).map(|i| data(&format!("/k/{i}"), "s", 2)).collect();
        let plan = core.plan_snapshot(snapshot);
        assert_eq!((plan.renders, plan.patched), (1, 0));
        assert_eq!(plan.actions, vec![install(0, &forty(|_| "s".into()))]);
        assert!(core.targets()[0].incremental.is_none(), "its values are not the store's");
    }

    /// A file of `/a` and `/b`, both read once ("0"), installed.
    fn pair() -> Core {
        let mut core = Core::new(&[template(0, "{{ znode('/a') }}-{{ znode('/b') }}")]).unwrap();
        core.plan();
        core.on_update(data("/a", "0", 1));
        core.on_update(data("/b", "0", 1));
        assert_eq!(core.plan().actions, vec![install(0, "0-0")]);
        core.on_result(0, &Ok(()));
        core
    }

    #[test]
    fn a_file_waits_while_a_read_of_any_of_its_dependencies_is_in_flight() {
        let mut core = pair();
        // One transaction set both: both watches fired, /a's answer came first.
        core.on_reading(Dep::data(zp("/a")));
        core.on_reading(Dep::data(zp("/b")));
        core.on_update(data("/a", "1", 2));
        assert!(core.blocked(0));
        assert!(core.plan().actions.is_empty(), "never 1-0: /b's read is in flight");
        assert!(core.has_dirty(), "the file stays marked");
        assert!(core.any_blocked());
        assert_eq!(core.blocked_deps(), BTreeSet::from([Dep::data(zp("/a")), Dep::data(zp("/b"))]));
        core.on_update(data("/b", "1", 2));
        assert!(!core.any_blocked());
        assert_eq!(core.plan().actions, vec![install(0, "1-1")]);
    }

    #[test]
    fn a_read_error_or_an_ended_session_releases_the_wait() {
        let mut core = pair();
        core.on_reading(Dep::data(zp("/b")));
        core.on_update(data("/a", "1", 2));
        core.on_read_error(&Dep::data(zp("/b")), "permission denied reading znode /b".to_owned());
        assert_eq!(core.plan().actions, vec![install(0, "1-0")]);
        core.on_reading(Dep::data(zp("/a")));
        core.forget_in_flight(None);
        assert!(!core.blocked(0));
    }

    #[test]
    fn a_held_file_renders_from_a_snapshot_that_covers_its_dependencies() {
        let mut core = pair();
        core.on_reading(Dep::data(zp("/a")));
        core.on_reading(Dep::data(zp("/b")));
        core.on_update(data("/a", "5", 6));
        // A snapshot without /b does not do.
        assert!(core.plan_snapshot(vec![data("/a", "7", 8)]).actions.is_empty());
        // One with both: rendered from it alone, not from the store's newer /a.
        let plan = core.plan_snapshot(vec![data("/a", "4", 5), data("/b", "4", 5)]);
        assert_eq!(plan.actions, vec![install(0, "4-4")]);
        // The reads in flight still hold the file for the next changes.
        core.on_update(data("/a", "6", 7));
        assert!(core.plan().actions.is_empty());
    }

    /// A bundle in `/sim/b` of raw files of `/a` and `/b`, with `commit` if given.
    fn bundle_core(commit: Option<&str>) -> Core {
        let files = vec![
            FileSpec { dest: PathBuf::from("/sim/b/a"), ..raw(0, "/a") },
            FileSpec { dest: PathBuf::from("/sim/b/b"), ..raw(1, "/b") },
        ];
        let bundle = BundleSpec {
            dir: PathBuf::from("/sim/b"),
            commit: commit.map(zp),
            files,
            check: None,
            check_timeout: Duration::from_secs(1),
            rollback: false,
            reload: None,
        };
        Core::with_bundles(&[raw(9, "/x")], &[bundle]).unwrap()
    }

    fn bundle_install(files: &[(TargetId, &str)]) -> Action {
        let files = files.iter().map(|(id, text)| (*id, text.as_bytes().to_vec())).collect();
        Action::InstallBundle { bundle: 0, files }
    }

    #[test]
    fn a_bundle_installs_as_one_action_once_every_file_renders() {
        let mut core = bundle_core(None);
        assert_eq!(core.bundles()[0].members, 1..3);
        let plan = core.plan();
        assert_eq!(plan.watch.len(), 3);
        core.on_update(data("/a", "1", 1));
        assert!(core.plan().actions.is_empty(), "/b not read yet: no half bundle");
        core.on_update(data("/b", "1", 1));
        assert_eq!(core.plan().actions, vec![bundle_install(&[(1, "1"), (2, "1")])]);
        // Only /a changes: the whole bundle is planned again.
        core.on_update(data("/a", "2", 2));
        assert_eq!(core.plan().actions, vec![bundle_install(&[(1, "2"), (2, "1")])]);
    }

    #[test]
    fn a_bundle_waits_while_a_read_of_any_of_its_files_dependencies_is_in_flight() {
        let mut core = bundle_core(None);
        core.plan();
        core.on_update(data("/a", "0", 1));
        core.on_update(data("/b", "0", 1));
        core.plan();
        // One transaction set /a and /b: /a's file alone is not held by /a, but by /b's read.
        core.on_reading(Dep::data(zp("/a")));
        core.on_reading(Dep::data(zp("/b")));
        core.on_update(data("/a", "1", 2));
        assert!(core.blocked(1) && core.blocked(2));
        assert!(core.plan().actions.is_empty(), "never a version with a=1, b=0");
        assert!(core.any_blocked());
        assert_eq!(core.blocked_deps(), BTreeSet::from([Dep::data(zp("/a")), Dep::data(zp("/b"))]));
        // Held too long: one snapshot of both renders it.
        let plan = core.plan_snapshot(vec![data("/a", "1", 2), data("/b", "1", 2)]);
        assert_eq!(plan.actions, vec![bundle_install(&[(1, "1"), (2, "1")])]);
        core.on_update(data("/b", "1", 2));
        assert_eq!(core.plan().actions, vec![bundle_install(&[(1, "1"), (2, "1")])]);
    }

    #[test]
    fn a_commit_bundle_renders_only_when_its_commit_znode_changes() {
        let mut core = bundle_core(Some("/v"));
        let plan = core.plan();
        assert!(plan.watch.contains(&Dep::data(zp("/v"))), "the commit znode is read from the start");
        core.on_update(data("/a", "1", 1));
        core.on_update(data("/b", "1", 1));
        assert!(core.plan().actions.is_empty(), "the commit znode is not read yet");
        core.on_update(data("/v", "1", 1));
        assert_eq!(core.plan().actions, vec![bundle_install(&[(1, "1"), (2, "1")])], "at start");
        core.on_update(data("/a", "2", 2));
        assert!(core.plan().actions.is_empty(), "a file's change waits for the commit");
        core.on_update(data("/b", "2", 2));
        core.mark_all_dirty();
        assert!(core.plan().actions.is_empty(), "nor does a resync render it");
        core.on_reading(Dep::data(zp("/b")));
        assert!(!core.any_blocked() && core.blocked_deps().is_empty(), "waiting for its commit, not held");
        core.on_update(data("/v", "2", 2));
        assert!(core.plan().actions.is_empty(), "a read in flight holds the commit too");
        core.on_update(data("/b", "2", 3));
        assert_eq!(core.plan().actions, vec![bundle_install(&[(1, "2"), (2, "2")])]);
        assert!(core.plan().actions.is_empty());
    }

    #[test]
    fn a_bundle_with_a_failing_file_installs_nothing_and_a_rejected_version_stays_out() {
        let mut core = bundle_core(None);
        core.plan();
        core.on_update(data("/a", "1", 1));
        core.on_update(missing("/b"));
        assert!(core.plan().actions.is_empty());
        assert_eq!(failure_kind(&core, 2), Some(FailureKind::ZnodeMissing));
        core.on_update(data("/b", "1", 2));
        assert_eq!(core.plan().actions.len(), 1);
        core.reject_bundle(0, vec![b"1".to_vec(), b"1".to_vec()], "reload failed");
        assert_eq!(failure_kind(&core, 1), Some(FailureKind::ReloadFailed));
        core.mark_all_dirty();
        assert!(core.plan().actions.is_empty(), "the rejected version is not installed again");
        core.on_update(data("/a", "2", 3));
        assert_eq!(core.plan().actions, vec![bundle_install(&[(1, "2"), (2, "1")])]);
    }

    #[test]
    fn planning_new_dependencies_does_not_copy_the_store() {
        let mut core = bundle_core(None);
        let store = Arc::as_ptr(&core.store);
        let plan = core.plan();
        assert_eq!(plan.watch.len(), 3, "every file found new dependencies");
        core.on_update(data("/a", "1", 1));
        core.on_update(data("/b", "1", 1));
        core.on_update(data("/x", "1", 1));
        assert_eq!(core.plan().actions.len(), 2);
        assert_eq!(Arc::as_ptr(&core.store), store, "the store was copied");
    }

    #[test]
    fn renders_share_the_store_without_copying_it() {
        let mut core = Core::new(&[template(0, "{{ znode('/a') }}{{ znode('/b') }}")]).unwrap();
        core.plan();
        core.on_update(data("/a", "1", 1));
        core.on_update(data("/b", "2", 1));
        assert_eq!(core.plan().actions, vec![install(0, "12")]);
        assert_eq!(Arc::strong_count(&core.store), 1, "no render keeps the store");
    }

    #[test]
    fn failure_kinds_are_typed() {
        let files = [
            template(0, "{{ znode('/gone') }}"),
            template(1, "{{ znode('/a') }}{{ nope }}"),
            FileSpec { on_delete: OnDelete::Remove, ..raw(2, "/gone") },
        ];
        let mut core = Core::new(&files).unwrap();
        core.plan();
        core.on_update(missing("/gone"));
        core.on_update(data("/a", "x", 1));
        let plan = core.plan();
        assert_eq!(plan.actions, vec![Action::Remove { target: 2 }]);
        assert_eq!(plan.render_errors, 2);
        assert_eq!(failure_kind(&core, 0), Some(FailureKind::ZnodeMissing));
        assert_eq!(failure_kind(&core, 1), Some(FailureKind::Render));
        assert_eq!(failure_kind(&core, 2), Some(FailureKind::ZnodeMissing));
        assert!(!core.all_settled(), "a missing znode may still appear");
    }

    #[test]
    fn a_read_error_explains_only_files_never_written() {
        let mut core = Core::new(&[raw(0, "/a"), template(1, "{{ znode('/a') }}{{ znode('/b') }}")]).unwrap();
        core.plan();
        core.on_update(data("/a", "x", 1));
        core.plan();
        core.on_result(0, &Ok(()));
        core.on_read_error(&Dep::data(zp("/a")), "no permission".to_owned());
        assert_eq!(core.targets()[0].status, Status::Ok);
        assert_eq!(failure_kind(&core, 1), Some(FailureKind::Zookeeper));
        assert!(core.all_settled(), "waiting does not fix a read error");
    }

    #[test]
    fn rejected_contents_stay_out_until_the_rendering_changes() {
        let mut core = Core::new(&[raw(0, "/a")]).unwrap();
        core.plan();
        core.on_update(data("/a", "bad", 1));
        core.plan();
        core.reject(0, b"bad".to_vec(), "reload failed".to_owned());
        assert_eq!(failure_kind(&core, 0), Some(FailureKind::ReloadFailed));
        core.mark_all_dirty();
        assert!(core.plan().actions.is_empty(), "the rejected bytes are not installed again");
        core.on_update(data("/a", "good", 2));
        assert_eq!(core.plan().actions, vec![install(0, "good")]);
    }

    fn children(p: &str, names: &[&str], version: i32) -> Update {
        let names = names.iter().map(|n| (*n).to_owned()).collect();
        let value = Value::Children { names, pzxid: i64::from(version), cversion: version };
        Update { dep: Dep::children(zp(p)), value }
    }

    /// Answers every watch of `plan` from `world` (path -> (data, children)), as the source would.
    fn answer(core: &mut Core, plan: &Plan, world: &[(&str, &str, &[&str])], version: i32) {
        for dep in &plan.watch {
            let node = world.iter().find(|(path, ..)| *path == dep.znode.as_str());
            let update = match (node, dep.kind) {
                (None, _) => Update { dep: dep.clone(), value: Value::Missing },
                (Some((path, text, _)), crate::model::DepKind::Data) => data(path, text, version),
                (Some((path, _, names)), crate::model::DepKind::Children) => children(path, names, version),
            };
            core.on_update(update);
        }
    }

    #[test]
    fn a_tree_file_reads_level_by_level_and_follows_changes_at_any_depth() {
        let tree = FileSpec {
            on_delete: OnDelete::Remove,
            ..spec(0, FileSource::Tree { root: zp("/t"), format: Format::Properties })
        };
        let mut core = Core::new(&[tree]).unwrap();
        let world: &[(&str, &str, &[&str])] =
            &[("/t", "", &["a"]), ("/t/a", "", &["b"]), ("/t/a/b", "", &["c"]), ("/t/a/b/c", "1", &[])];
        let mut plans = 0;
        let contents = loop {
            let plan = core.plan();
            plans += 1;
            if let [Action::Install { contents, .. }] = plan.actions.as_slice() {
                break String::from_utf8(contents.clone()).unwrap();
            }
            assert!(!plan.watch.is_empty(), "a pending tree asks for more");
            answer(&mut core, &plan, world, 1);
        };
        assert_eq!((contents.as_str(), plans), ("a.b.c=1\n", 5));
        assert!(!core.targets()[0].deps.contains(&Dep::data(zp("/t"))), "the root's data is not read");
        assert_eq!(core.targets()[0].deps.len(), 7);

        // A value three levels down changes: only its data is new, the file follows.
        assert_eq!(core.on_update(data("/t/a/b/c", "2", 2)), vec![0]);
        assert_eq!(core.plan().actions, vec![install(0, "a.b.c=2\n")]);

        // A znode is added at depth three: one children list changes, the new znode is read.
        core.on_update(children("/t/a/b", &["c", "d"], 3));
        let plan = core.plan();
        assert!(plan.actions.is_empty());
        assert_eq!(plan.watch, vec![Dep::data(zp("/t/a/b/d")), Dep::children(zp("/t/a/b/d"))]);
        core.on_update(data("/t/a/b/d", "x", 3));
        core.on_update(children("/t/a/b/d", &[], 3));
        assert_eq!(core.plan().actions, vec![install(0, "a.b.c=2\na.b.d=x\n")]);

        // Deleted: its watches are released and the file follows.
        core.on_update(Update { dep: Dep::data(zp("/t/a/b/c")), value: Value::Missing });
        core.on_update(children("/t/a/b", &["d"], 4));
        let plan = core.plan();
        assert_eq!(plan.actions, vec![install(0, "a.b.d=x\n")]);
        assert_eq!(plan.unwatch.len(), 2);

        // The root goes: on_delete = "remove".
        core.on_update(Update { dep: Dep::children(zp("/t")), value: Value::Missing });
        assert_eq!(core.plan().actions, vec![Action::Remove { target: 0 }]);
        assert_eq!(failure_kind(&core, 0), Some(FailureKind::ZnodeMissing));
    }

    fn failed(kind: FailureKind) -> Result<(), Failure> {
        Err(Failure { kind, message: format!("writing /sim/file0: {kind}") })
    }

    /// A core with one raw file of `/a` = "x" whose first install is planned.
    fn planned_once() -> Core {
        let mut core = Core::new(&[raw(0, "/a")]).unwrap();
        core.plan();
        core.on_update(data("/a", "x", 1));
        assert_eq!(core.plan().actions, vec![install(0, "x")]);
        core
    }

    #[tokio::test(start_paused = true)]
    async fn an_io_failure_is_retried_with_growing_pauses_until_it_succeeds() {
        use tokio::time::advance;
        let mut core = planned_once();
        let failed_at = Instant::now();
        core.on_attempt(0, &failed(FailureKind::Permission), failed_at, 0.0);
        assert_eq!(core.next_retry(), Some(failed_at + Duration::from_millis(125)));
        assert!(!core.all_settled(), "`once` waits for the retry");
        assert!(core.plan().actions.is_empty(), "nothing before the retry is due");

        advance(Duration::from_millis(124)).await;
        assert!(!core.start_due_retries(Instant::now()));
        advance(Duration::from_millis(1)).await;
        assert!(core.start_due_retries(Instant::now()));
        assert_eq!(core.next_retry(), None);
        assert_eq!(core.plan().actions, vec![install(0, "x")], "the same file again, no change needed");
        // Still failing: the pause doubles.
        core.on_attempt(0, &failed(FailureKind::NoSpace), Instant::now(), 0.0);
        assert_eq!(core.next_retry(), Some(Instant::now() + Duration::from_millis(250)));
        assert_eq!(core.failed_attempts(0), 2);

        advance(Duration::from_millis(250)).await;
        assert!(core.start_due_retries(Instant::now()));
        assert_eq!(core.plan().actions, vec![install(0, "x")]);
        core.on_attempt(0, &Ok(()), Instant::now(), 0.0);
        assert_eq!((core.next_retry(), core.failed_attempts(0)), (None, 0));
        assert_eq!(core.targets()[0].status, Status::Ok);
        assert!(core.all_settled());
    }

    #[tokio::test(start_paused = true)]
    async fn a_new_rendering_is_tried_at_once_and_replaces_the_waiting_retry() {
        let mut core = planned_once();
        core.on_attempt(0, &failed(FailureKind::Io), Instant::now(), 0.5);
        assert!(core.next_retry().is_some());
        core.on_update(data("/a", "y", 2));
        assert_eq!(core.plan().actions, vec![install(0, "y")], "not held back by the backoff");
        assert_eq!(core.next_retry(), None, "the retry of the old rendering is gone");
        core.on_attempt(0, &failed(FailureKind::Io), Instant::now(), 0.0);
        assert_eq!(core.failed_attempts(0), 2, "the fault lasts: the backoff keeps growing");
        assert_eq!(core.next_retry(), Some(Instant::now() + Duration::from_millis(250)));
    }

    #[tokio::test(start_paused = true)]
    async fn verdicts_on_the_contents_are_not_retried() {
        for kind in [FailureKind::CheckFailed, FailureKind::EmptyRefused] {
            let mut core = planned_once();
            core.on_attempt(0, &failed(kind), Instant::now(), 0.0);
            assert_eq!(core.next_retry(), None, "{kind}");
            assert!(core.all_settled(), "{kind}: `once` does not wait for it");
            tokio::time::advance(Duration::from_secs(60)).await;
            assert!(!core.start_due_retries(Instant::now()));
            assert!(core.plan().actions.is_empty(), "{kind}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_removal_is_retried() {
        let mut core = Core::new(&[FileSpec { on_delete: OnDelete::Remove, ..raw(0, "/a") }]).unwrap();
        core.plan();
        core.on_update(missing("/a"));
        assert_eq!(core.plan().actions, vec![Action::Remove { target: 0 }]);
        core.on_attempt(0, &failed(FailureKind::Permission), Instant::now(), 0.0);
        assert_eq!(core.failed_attempts(0), 1, "the removal is the attempt, not the missing znode");
        tokio::time::advance(Duration::from_millis(125)).await;
        assert!(core.start_due_retries(Instant::now()));
        assert_eq!(core.plan().actions, vec![Action::Remove { target: 0 }]);
        core.on_attempt(0, &Ok(()), Instant::now(), 0.0);
        assert_eq!(core.next_retry(), None);
    }

    #[test]
    fn the_earliest_retry_is_next() {
        let mut core = Core::new(&[raw(0, "/a"), raw(1, "/b")]).unwrap();
        core.plan();
        core.on_update(data("/a", "x", 1));
        core.on_update(data("/b", "y", 1));
        core.plan();
        let now = Instant::now();
        core.on_attempt(0, &failed(FailureKind::Io), now, 1.0);
        core.on_attempt(1, &failed(FailureKind::Io), now, 0.0);
        assert_eq!(core.next_retry(), Some(now + Duration::from_millis(125)));
        core.start_due_retries(now + Duration::from_millis(125));
        assert_eq!(core.next_retry(), Some(now + Duration::from_millis(250)));
    }

    #[test]
    fn a_new_configuration_adopts_values_and_releases_what_it_does_not_read() {
        let mut old = Core::new(&[raw(0, "/a"), raw(1, "/b")]).unwrap();
        old.plan();
        old.on_update(data("/a", "x", 1));
        old.on_update(data("/b", "y", 1));
        old.plan();
        old.on_result(0, &Ok(()));
        let mut new = Core::new(&[raw(0, "/a")]).unwrap();
        let watched = new.adopt(old);
        let plan = new.plan();
        assert_eq!(plan.actions, vec![install(0, "x")], "renders at once from the adopted value");
        assert!(new.targets()[0].settled_once);
        assert_eq!(new.finish_adoption(watched), vec![Dep::data(zp("/b"))]);
    }
}
