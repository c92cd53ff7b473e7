//! Fuzzes `Template::compile` + `Template::render` with arbitrary znode data.
//!
//! Input format (plain text, so seeds are readable): records separated by a line `%%`:
//!
//! ```text
//! <template text>
//! %%
//! /app/db/host
//! <data bytes of /app/db/host, any bytes, up to the next separator>
//! %%
//! /app/servers/a
//! ...
//! ```
//!
//! The first record is the template (lossily UTF-8), compiled with `prefix = "/app"`. Every
//! further record is a znode: its first line the path, the rest its data. A znode exists
//! when listed or when a listed znode is below it (ZooKeeper needs the parents); the children
//! of a znode are the names listed below it.
//!
//! The target renders the way the pipeline does: start with nothing read, render, read every
//! dependency the pass found unknown, render again, until the outcome is not pending. Checks,
//! besides "no panic":
//! - `Pending` exactly when some dependency of the pass is not in the snapshot;
//! - rendering is deterministic (same snapshot -> same `Rendered`);
//! - every error displays, naming the template.
//!
//! Known finding, skipped so that fuzzing can go on past it: minijinja 2.24 panics
//! (index out of bounds) on a negative-step slice of an empty string or list, e.g.
//! `{{ znode("/a")[::-1] }}` when `/a` is empty or not read yet. Templates whose text has
//! `:-` (a negative slice bound) are skipped unless `ZKRENDER_FUZZ_KNOWN=1` is set. See
//! `tests/proptest_core.rs`, `reversing_an_empty_znode_does_not_panic`.

#![no_main]

use std::collections::{BTreeMap, BTreeSet, HashMap};

use libfuzzer_sys::fuzz_target;
use zkrender::config::TemplateSpec;
use zkrender::model::{Dep, DepKind, Value, ZnodePath};
use zkrender::render::{RenderOutcome, Snapshot, Template};

/// Passes before giving up (each pass reads at least one more dependency).
const MAX_PASSES: usize = 32;

/// What ZooKeeper holds: path -> (data, mzxid).
struct World {
    nodes: BTreeMap<ZnodePath, (Vec<u8>, i64)>,
}

impl World {
    fn parse(records: &[&[u8]]) -> World {
        let mut nodes = BTreeMap::new();
        for (i, record) in records.iter().enumerate() {
            let (path, data) = match record.iter().position(|&b| b == b'\n') {
                Some(nl) => (&record[..nl], &record[nl + 1..]),
                None => (*record, &[][..]),
            };
            let Ok(path) = std::str::from_utf8(path) else { continue };
            let Ok(path) = ZnodePath::parse(path) else { continue };
            let zxid = i64::try_from(i).expect("few records") + 1;
            // Implicit parents exist with empty data, as ZooKeeper requires.
            let mut parent = path.as_str();
            while let Some((up, _)) = parent.rsplit_once('/') {
                parent = if up.is_empty() { "/" } else { up };
                let p = ZnodePath::parse(parent).expect("parent of a valid path");
                nodes.entry(p).or_insert_with(|| (Vec::new(), zxid));
                if parent == "/" {
                    break;
                }
            }
            nodes.insert(path, (data.to_vec(), zxid));
        }
        World { nodes }
    }

    /// What the source would read for `dep`.
    fn read(&self, dep: &Dep) -> Value {
        let Some((data, mzxid)) = self.nodes.get(&dep.znode) else { return Value::Missing };
        match dep.kind {
            DepKind::Data => Value::Data { data: data.clone(), mzxid: *mzxid, version: 0 },
            DepKind::Children => {
                let prefix =
                    if dep.znode.as_str() == "/" { "/".to_owned() } else { format!("{}/", dep.znode) };
                let names: BTreeSet<String> = self
                    .nodes
                    .keys()
                    .filter_map(|p| p.as_str().strip_prefix(&prefix))
                    .filter(|rest| !rest.is_empty() && !rest.contains('/'))
                    .map(str::to_owned)
                    .collect();
                Value::Children { names: names.into_iter().collect(), pzxid: *mzxid, cversion: 0 }
            }
        }
    }
}

#[derive(Default)]
struct Snap(HashMap<Dep, Value>);

impl Snapshot for Snap {
    fn get(&self, dep: &Dep) -> Option<&Value> {
        self.0.get(dep)
    }
}

/// Whether `text` may hit a known, reported panic (see the module docs).
fn skip_known(text: &str) -> bool {
    static KNOWN: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let run_known = *KNOWN.get_or_init(|| std::env::var_os("ZKRENDER_FUZZ_KNOWN").is_some_and(|v| v == "1"));
    !run_known && text.split_whitespace().collect::<String>().contains(":-")
}

/// Splits on lines that are exactly `%%`.
fn records(data: &[u8]) -> Vec<&[u8]> {
    const SEP: &[u8] = b"\n%%\n";
    let mut out = Vec::new();
    let mut rest = data;
    while let Some(at) = rest.windows(SEP.len()).position(|w| w == SEP) {
        out.push(&rest[..at]);
        rest = &rest[at + SEP.len()..];
    }
    out.push(rest);
    out
}

fuzz_target!(|data: &[u8]| {
    let records = records(data);
    let text = String::from_utf8_lossy(records[0]).into_owned();
    if skip_known(&text) {
        return;
    }
    let world = World::parse(&records[1..]);
    let spec = TemplateSpec {
        name: "fuzz.j2".to_owned(),
        path: None,
        text,
        prefix: Some(ZnodePath::parse("/app").expect("valid")),
    };
    let template = match Template::compile(&spec) {
        Ok(template) => template,
        Err(err) => {
            assert!(err.to_string().starts_with("template fuzz.j2"), "{err}");
            return;
        }
    };
    let mut snap = Snap::default();
    for _ in 0..MAX_PASSES {
        let rendered = template.render(&snap);
        let unknown: Vec<&Dep> = rendered.deps.iter().filter(|d| snap.get(d).is_none()).collect();
        match &rendered.outcome {
            RenderOutcome::Pending => assert!(!unknown.is_empty(), "pending with every dependency known"),
            RenderOutcome::Done(_) => assert!(unknown.is_empty(), "done with unknown deps {unknown:?}"),
            RenderOutcome::Failed(err) => {
                assert!(unknown.is_empty(), "failed with unknown deps {unknown:?}");
                assert!(err.to_string().starts_with("template fuzz.j2"), "{err}");
                let _ = err.is_missing_znode();
            }
        }
        assert_eq!(template.render(&snap), rendered, "rendering is not deterministic");
        if unknown.is_empty() {
            break;
        }
        for dep in unknown {
            snap.0.insert(dep.clone(), world.read(dep));
        }
    }
});
