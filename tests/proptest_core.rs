//! Property tests of the pure pipeline core ([`Core`]) against a model of ZooKeeper.
//!
//! A small universe of znodes (`/a`, `/b`, `/flag`, and `/p` with children `x`, `y`, `z`)
//! is changed by a random sequence of events: sets, deletes, child creates and deletes,
//! deliveries (all at once or one at a time, so intermediate values may be skipped),
//! disconnects, reconnects, session expiries (every watched value delivered again),
//! resyncs and plan cycles. The test plays the source exactly as ZooKeeper allows: it only
//! delivers values for dependencies the core asked to watch, each delivery is the value the
//! model holds at that moment (never an older one), and a newly watched dependency is read
//! once. The sink is a map target -> bytes whose installs report `Ok`.
//!
//! Properties:
//! 1. Once quiescent, every file equals what a fresh core fed the final state once gives
//!    (same status, same bytes), and exactly the dependencies that fresh core needs are
//!    watched (no leaked or missing watch).
//! 2. No file changes to the bytes it already holds: the changing writes of each file
//!    never repeat the previous bytes; and when everything is settled, an expiry's
//!    re-delivery marks nothing to re-render and a resync changes no file.
//!
//! No ZooKeeper needed: this is plain `cargo test --test proptest_core`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence};
use zkrender::config::{FileSource, FileSpec, InstallMode, OnDelete, TargetId, TemplateSpec};
use zkrender::model::{Dep, DepKind, Update, Value, ZnodePath};
use zkrender::pipeline::{Action, Core, Status};

/// The znodes events act on. `/p/*` need `/p`; `/p` cannot be deleted while it has children.
const NODES: [&str; 7] = ["/a", "/b", "/flag", "/p", "/p/x", "/p/y", "/p/z"];
/// Data values; `none` and `-` equal the templates' defaults, `""` an empty file.
const VALUES: [&str; 5] = ["", "1", "2", "none", "-"];

/// The children template from the issue: reads `/p`'s children and each child, plus `/a`.
const CHILDREN_TEMPLATE: &str = "{% for c in children(\"/p\", default=[]) %}{{ c }}={{ znode(\"/p/\" ~ c, \
                                 default=\"-\") }};{% endfor %}{{ znode(\"/a\", default=\"none\") }}";
/// Dependencies that follow the data; `/b` without a default fails while `/b` is missing.
const EXISTS_TEMPLATE: &str =
    "{% if exists(\"/flag\") %}b={{ znode(\"/b\") }}{% else %}a={{ znode(\"/a\", default=\"\") }}{% endif %}";
/// A children read without a default: fails while `/p` is missing.
const STRICT_CHILDREN_TEMPLATE: &str = "{{ children(\"/p\") | join(\",\") }}";

fn zp(path: &str) -> ZnodePath {
    ZnodePath::parse(path).unwrap()
}

fn spec(n: usize, source: FileSource, on_delete: OnDelete) -> FileSpec {
    FileSpec {
        dest: PathBuf::from(format!("/sim/file{n}")),
        source,
        mode: 0o644,
        owner: None,
        group: None,
        on_delete,
        check: None,
        check_timeout: Duration::from_secs(30),
        backup: false,
        install: InstallMode::Atomic,
        // The simulated sink has no empty-file guard; the real one would refuse "" over a
        // non-empty file without this.
        allow_empty: true,
        rollback: false,
        allow_env: Vec::new(),
        reload: None,
    }
}

fn template(n: usize, text: &str) -> FileSpec {
    let t = TemplateSpec { name: format!("t{n}.j2"), path: None, text: text.to_owned(), prefix: None };
    spec(n, FileSource::Template(t), OnDelete::Keep)
}

fn files() -> Vec<FileSpec> {
    vec![
        spec(0, FileSource::Raw { znode: zp("/a") }, OnDelete::Keep),
        spec(1, FileSource::Raw { znode: zp("/p/x") }, OnDelete::Remove),
        template(2, CHILDREN_TEMPLATE),
        template(3, EXISTS_TEMPLATE),
        template(4, STRICT_CHILDREN_TEMPLATE),
    ]
}

// --- The model of ZooKeeper -------------------------------------------------------------

#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    data: Vec<u8>,
    mzxid: i64,
    version: i32,
    pzxid: i64,
    cversion: i32,
}

#[derive(Debug, Clone, Default)]
struct Zk {
    nodes: BTreeMap<String, Node>,
    zxid: i64,
}

/// `/p/x` -> `/p`; `/a` -> None (the root, which always exists).
fn parent(path: &str) -> Option<&str> {
    match path.rsplit_once('/') {
        Some(("", _)) | None => None,
        Some((up, _)) => Some(up),
    }
}

impl Zk {
    fn exists(&self, path: &str) -> bool {
        self.nodes.contains_key(path)
    }

    fn children(&self, path: &str) -> Vec<String> {
        let prefix = format!("{path}/");
        self.nodes.keys().filter_map(|p| p.strip_prefix(&prefix)).map(str::to_owned).collect()
    }

    fn bump_parent(&mut self, path: &str) {
        let zxid = self.zxid;
        if let Some(parent) = parent(path).and_then(|p| self.nodes.get_mut(p)) {
            parent.pzxid = zxid;
            parent.cversion += 1;
        }
    }

    /// `set`, or `create` when missing (fails, changing nothing, without the parent).
    fn set(&mut self, path: &str, data: &[u8]) {
        if let Some(node) = self.nodes.get_mut(path) {
            self.zxid += 1;
            node.data = data.to_vec();
            node.mzxid = self.zxid;
            node.version += 1;
        } else if parent(path).is_none_or(|p| self.exists(p)) {
            self.zxid += 1;
            let zxid = self.zxid;
            self.nodes.insert(
                path.to_owned(),
                Node { data: data.to_vec(), mzxid: zxid, version: 0, pzxid: zxid, cversion: 0 },
            );
            self.bump_parent(path);
        }
    }

    /// `delete`; fails, changing nothing, when missing or when it has children.
    fn delete(&mut self, path: &str) {
        if self.exists(path) && self.children(path).is_empty() {
            self.zxid += 1;
            self.nodes.remove(path);
            self.bump_parent(path);
        }
    }

    /// What the source reads for `dep` now.
    fn read(&self, dep: &Dep) -> Value {
        let path = dep.znode.as_str();
        let Some(node) = self.nodes.get(path) else { return Value::Missing };
        match dep.kind {
            DepKind::Data => {
                Value::Data { data: node.data.clone(), mzxid: node.mzxid, version: node.version }
            }
            DepKind::Children => {
                Value::Children { names: self.children(path), pzxid: node.pzxid, cversion: node.cversion }
            }
        }
    }
}

// --- The simulated source, pipeline loop and sink -----------------------------------------

#[derive(Debug, Clone)]
enum Event {
    /// Set a znode (creating it if its parent exists).
    Set(usize, usize),
    /// Delete a znode (if it has no children).
    Delete(usize),
    /// Deliver every pending read and every changed watched value.
    Deliver,
    /// Deliver just one of them (the n-th, modulo their number).
    DeliverOne(usize),
    /// One pipeline cycle: plan, watch/unwatch, install.
    Cycle,
    /// The connection is lost: nothing is delivered until a reconnect or an expiry.
    Disconnect,
    /// Reconnected within the session: changed values are delivered from then on.
    Reconnect,
    /// New session: every watched value is read and delivered again.
    Expiry,
    /// Anti-entropy: every file marked dirty, one cycle, every watched value re-read.
    Resync,
    /// Deliver and cycle until nothing is left to do (while connected).
    Quiesce,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        5 => (0..NODES.len(), 0..VALUES.len()).prop_map(|(n, v)| Event::Set(n, v)),
        3 => (0..NODES.len()).prop_map(Event::Delete),
        3 => Just(Event::Deliver),
        3 => (0..8usize).prop_map(Event::DeliverOne),
        3 => Just(Event::Cycle),
        1 => Just(Event::Disconnect),
        1 => Just(Event::Reconnect),
        1 => Just(Event::Expiry),
        1 => Just(Event::Resync),
        1 => Just(Event::Quiesce),
    ]
}

struct Sim {
    zk: Zk,
    core: Core,
    /// What the core asked to watch and did not unwatch.
    watched: BTreeSet<Dep>,
    /// Watched, and its first read not delivered yet.
    unread: BTreeSet<Dep>,
    /// The last value delivered per watched dependency.
    delivered: HashMap<Dep, Value>,
    connected: bool,
    /// The simulated file system.
    disk: BTreeMap<TargetId, Vec<u8>>,
    /// Per file, every write that changed it (`None`: removed).
    changes: Vec<Vec<Option<Vec<u8>>>>,
}

impl Sim {
    fn new(zk: Zk) -> Sim {
        let files = files();
        let core = Core::new(&files).expect("templates compile");
        Sim {
            zk,
            core,
            watched: BTreeSet::new(),
            unread: BTreeSet::new(),
            delivered: HashMap::new(),
            connected: true,
            disk: BTreeMap::new(),
            changes: vec![Vec::new(); files.len()],
        }
    }

    fn deliver(&mut self, dep: &Dep) {
        let value = self.zk.read(dep);
        self.unread.remove(dep);
        self.delivered.insert(dep.clone(), value.clone());
        self.core.on_update(Update { dep: dep.clone(), value });
    }

    /// Watched dependencies whose current value has not been delivered.
    fn undelivered(&self) -> Vec<Dep> {
        self.watched.iter().filter(|d| self.delivered.get(*d) != Some(&self.zk.read(d))).cloned().collect()
    }

    fn deliver_changed(&mut self) {
        if self.connected {
            for dep in self.undelivered() {
                self.deliver(&dep);
            }
        }
    }

    fn deliver_everything(&mut self) {
        for dep in self.watched.clone() {
            self.deliver(&dep);
        }
    }

    /// Nothing to read, deliver or render: the files are what the core last decided.
    fn settled(&self) -> bool {
        self.connected && self.unread.is_empty() && self.undelivered().is_empty() && !self.core.has_dirty()
    }

    fn cycle(&mut self) {
        let plan = self.core.plan();
        for dep in plan.unwatch {
            assert!(self.watched.remove(&dep), "unwatch of {dep}, which is not watched");
            self.unread.remove(&dep);
            self.delivered.remove(&dep);
        }
        for dep in plan.watch {
            assert!(self.watched.insert(dep.clone()), "watch of {dep}, which is already watched");
            self.unread.insert(dep);
        }
        for action in plan.actions {
            match action {
                Action::Install { target, contents } => {
                    if self.disk.get(&target) != Some(&contents) {
                        self.changes[target].push(Some(contents.clone()));
                        self.disk.insert(target, contents);
                    }
                    self.core.on_result(target, &Ok(()));
                }
                Action::Remove { target } => {
                    if self.disk.remove(&target).is_some() {
                        self.changes[target].push(None);
                    }
                    self.core.on_result(target, &Ok(()));
                }
                Action::InstallBundle { .. } => unreachable!("this model has no bundles"),
            }
        }
    }

    fn quiesce(&mut self) {
        assert!(self.connected);
        for _ in 0..100 {
            self.deliver_changed();
            if !self.core.has_dirty() {
                return;
            }
            self.cycle();
        }
        panic!("no quiescence after 100 cycles");
    }

    fn changes(&self) -> usize {
        self.changes.iter().map(Vec::len).sum()
    }

    fn apply(&mut self, event: &Event) {
        match *event {
            Event::Set(n, v) => self.zk.set(NODES[n], VALUES[v].as_bytes()),
            Event::Delete(n) => self.zk.delete(NODES[n]),
            Event::Deliver => self.deliver_changed(),
            Event::DeliverOne(i) => {
                let candidates = self.undelivered();
                if self.connected && !candidates.is_empty() {
                    self.deliver(&candidates[i % candidates.len()]);
                }
            }
            Event::Cycle => self.cycle(),
            Event::Disconnect => self.connected = false,
            Event::Reconnect => self.connected = true,
            Event::Expiry => {
                let settled = self.settled();
                self.connected = true;
                self.deliver_everything();
                assert!(
                    !(settled && self.core.has_dirty()),
                    "an expiry re-delivering unchanged values marked files to re-render"
                );
            }
            Event::Resync => {
                let settled = self.settled();
                let before = self.changes();
                self.core.mark_all_dirty();
                self.cycle();
                assert!(
                    !(settled && self.changes() != before),
                    "a resync with everything settled changed a file: {:?}",
                    self.changes
                );
                if self.connected {
                    self.deliver_everything();
                }
            }
            Event::Quiesce => {
                if self.connected {
                    self.quiesce();
                }
            }
        }
    }
}

/// Runs `events`, brings the core to rest and checks both properties.
fn check(events: &[Event]) {
    let mut sim = Sim::new(Zk::default());
    for event in events {
        sim.apply(event);
    }
    sim.connected = true;
    sim.quiesce();

    // What a fresh agent started on the final state writes.
    let mut fresh = Sim::new(sim.zk.clone());
    fresh.quiesce();

    for (id, target) in sim.core.targets().iter().enumerate() {
        let expected = &fresh.core.targets()[id];
        assert_eq!(target.status, expected.status, "file {id}: status differs from a fresh start");
        assert_ne!(target.status, Status::Pending, "file {id} still pending at rest");
        if target.status == Status::Ok {
            assert_eq!(
                sim.disk.get(&id).map(|b| String::from_utf8_lossy(b)),
                fresh.disk.get(&id).map(|b| String::from_utf8_lossy(b)),
                "file {id}: contents differ from a fresh start"
            );
        }
    }
    assert_eq!(sim.watched, fresh.watched, "watched dependencies differ from a fresh start");
    let needed: BTreeSet<Dep> = sim.core.deps().cloned().collect();
    assert_eq!(sim.watched, needed, "the source watches something other than what the core needs");

    for (id, writes) in sim.changes.iter().enumerate() {
        for pair in writes.windows(2) {
            assert_ne!(pair[0], pair[1], "file {id} changed to the bytes it already held");
        }
    }
}

proptest! {
    #![proptest_config(Config {
        // PROPTEST_CASES overrides (e.g. a long run: PROPTEST_CASES=20000).
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|n| n.parse().ok()).unwrap_or(768),
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    })]

    #[test]
    fn final_files_match_final_state_and_nothing_is_rewritten(events in proptest::collection::vec(event(), 0..60)) {
        check(&events);
    }
}

// --- Fixed cases ------------------------------------------------------------------------

#[test]
fn children_appear_one_by_one() {
    use Event::*;
    check(&[Quiesce, Set(3, 1), Quiesce, Set(4, 1), Deliver, Cycle, Set(5, 2), Quiesce, Delete(4), Quiesce]);
}

#[test]
fn expiry_while_disconnected_skips_intermediate_values() {
    use Event::*;
    check(&[
        Set(0, 1),
        Set(3, 0),
        Set(4, 1),
        Quiesce,
        Disconnect,
        Set(0, 2),
        Set(0, 3),
        Delete(4),
        Set(1, 1),
        Set(2, 0),
        Cycle,
        Expiry,
        Cycle,
    ]);
}

#[test]
fn dependencies_switch_and_switch_back() {
    use Event::*;
    check(&[Quiesce, Set(2, 0), Deliver, Cycle, Delete(2), Deliver, Cycle, Set(2, 0), Resync, Quiesce]);
}

// --- Reproducers of fuzzing findings (fail until fixed in src/) -----------------------------

/// Found by `fuzz/fuzz_targets/render.rs`: minijinja 2.24 panics ("index out of bounds: the
/// len is 0 but the index is 0", minijinja-2.24.0/src/value/ops.rs:180) on a negative-step
/// slice of an empty string; the same code path (`range_step_backwards`) panics for an empty
/// list (ops.rs:222) when it is iterated. The placeholder for a znode not read yet is `""`,
/// so a template with `{{ znode("/a")[::-1] }}` panics in its very first `Core::plan`, inside
/// the pipeline task: the agent stops with `TaskPanicked` at every start. With `/a` read, it
/// panics whenever `/a` holds empty data. A render must fail (`Failed`), never panic.
#[test]
fn reversing_an_empty_znode_does_not_panic() {
    let reversed = |text: &str| {
        let t = TemplateSpec { name: "rev.j2".to_owned(), path: None, text: text.to_owned(), prefix: None };
        spec(0, FileSource::Template(t), OnDelete::Keep)
    };
    for text in ["{{ znode(\"/a\")[::-1] }}", "{{ children(\"/p\", default=[])[::-1] | join(\",\") }}"] {
        let outcome = std::panic::catch_unwind(|| {
            let mut core = Core::new(&[reversed(text)]).expect("compiles");
            // Cold start: nothing read yet, the functions return their placeholders.
            let plan = core.plan();
            for dep in plan.watch {
                let value = match dep.kind {
                    DepKind::Data => Value::Data { data: Vec::new(), mzxid: 1, version: 0 },
                    DepKind::Children => Value::Children { names: Vec::new(), pzxid: 1, cversion: 0 },
                };
                core.on_update(Update { dep, value });
            }
            // Read: empty data / no children.
            let plan = core.plan();
            (plan, core.targets()[0].status.clone())
        });
        let (plan, status) = outcome.unwrap_or_else(|_| panic!("rendering {text:?} panicked"));
        // Either the engine handles it (an empty file) or the render fails cleanly and the
        // file keeps its last good contents; never a panic.
        match status {
            Status::Failed(f) => {
                assert_eq!(f.kind, "render", "{text}");
                assert!(plan.actions.is_empty(), "{text}");
            }
            _ => {
                assert_eq!(plan.actions, vec![Action::Install { target: 0, contents: Vec::new() }], "{text}")
            }
        }
    }
}
