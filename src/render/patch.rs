//! Incremental rendering: a change to a znode whose value a template only prints is applied
//! to the last output by replacing the printed bytes, without running the template again.
//!
//! A template that prints 1,000 znode values in a loop costs about 3.8 million instructions
//! per render, 78 % of what a change to one of them costs the agent. Most large templates are
//! of that shape: `{% for k in keys %}{{ k }} = {{ znode(prefix ~ k) }}{% endfor %}`. When
//! a value is only ever printed, as is, where the template calls `znode()`, the rest of the
//! render cannot depend on it: a new value changes those bytes of the output and nothing
//! else. Three things make that sure.
//!
//! 1. **The template prints every `znode()` call as is** ([`printed_as_is`], at compile
//!    time, from the compiled instructions). Every call of `znode` is followed at once by the
//!    instruction that prints it, and nothing else can reach the function: the name is never
//!    read as a value (`{% set f = znode %}`), and the template captures no output (`set`
//!    blocks, macros, `call` and `filter` blocks, recursive loops), switches no auto-escaping,
//!    and uses no blocks, `include` or `extends`. So what a call returns goes straight into
//!    the file, as is (auto-escaping is off in zkrender), and into nothing else: not a
//!    condition, a filter, a variable or another call's argument.
//! 2. **The render records where each value went** ([`Recorder`]): the output is written
//!    through a writer that counts its bytes, so a `znode()` call knows the offset its value
//!    is about to be printed at. Each print is checked after the render: the bytes at each
//!    recorded span must be the value read, or nothing is kept.
//! 3. **Only a value read every time by such a call is patched.** A znode also read by
//!    `exists()`, `children()`, `tree()`, with `encoding=`, or while missing (its `default=`
//!    printed), renders in full when it changes; so does any change that is not to another
//!    text value (deleted, not UTF-8), and any change to a `children` dependency.
//!
//! What the patch produces is what a render would (the property test in `tests` renders and
//! patches side by side). Files with fewer than [`Recorder::MIN_SPANS`] printed values keep
//! no state: their render is cheap and the copy of their output would cost memory for
//! nothing.

use std::cell::{Cell, RefCell};
use std::io;
use std::rc::Rc;

use crate::model::{Dep, Value};

use super::Snapshot;

/// Whether every `znode()` call of the compiled `template` is printed at once and as is, and
/// nothing else can reach the function (see the module docs): the template can be patched.
pub(super) fn printed_as_is(template: &minijinja::Template<'_, '_>) -> bool {
    use minijinja::machinery::Instruction as I;

    let compiled = minijinja::machinery::get_compiled_template(template);
    if !compiled.blocks.is_empty() {
        return false;
    }
    let instructions = &compiled.instructions;
    let len = u32::try_from(instructions.len()).unwrap_or(u32::MAX);
    let mut calls = 0;
    for idx in 0..len {
        match instructions.get(idx) {
            Some(I::CallFunction("znode", _)) => {
                if !matches!(instructions.get(idx + 1), Some(I::Emit)) {
                    return false;
                }
                calls += 1;
            }
            // `znode` read as a value could be called under another name, anywhere.
            Some(I::Lookup("znode")) => return false,
            // Output captured (a value built from printed text) or printed another way.
            Some(
                I::BeginCapture(_)
                | I::BuildMacro(..)
                | I::PushAutoEscape
                | I::FastRecurse
                | I::CallFunction("loop" | "super" | "caller", _)
                | I::CallBlock(_)
                | I::FastSuper
                | I::LoadBlocks
                | I::Include(_)
                | I::ExportLocals,
            ) => return false,
            _ => {}
        }
    }
    calls > 0
}

/// Where one printed value is in the output.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Span {
    start: usize,
    len: usize,
    dep: Dep,
}

/// A file's last output and where its printed znode values are in it: what
/// [`Incremental::patch`] needs to apply a change without rendering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incremental {
    output: Vec<u8>,
    /// In output order, not overlapping.
    spans: Vec<Span>,
    /// The dependencies every read of which is one of `spans`: sorted, each once.
    patchable: Vec<Dep>,
}

impl Incremental {
    /// The output with the values of `changed` as `values` holds them now, and this state
    /// updated to it; `None` when a render is needed instead (see the module docs). With
    /// nothing changed, the last output again.
    pub fn patch(&mut self, changed: &[Dep], values: &dyn Snapshot) -> Option<Vec<u8>> {
        // Each changed dependency as the snapshot holds it (its path shares the allocation of
        // the spans' paths, so most comparisons below are a pointer's) and its new text.
        let mut new: Vec<(&Dep, &[u8])> = Vec::with_capacity(changed.len());
        for dep in changed {
            let (known, value) = values.entry(dep)?;
            if new.iter().any(|(d, _)| *d == known) {
                continue;
            }
            self.patchable.binary_search(known).ok()?;
            match value {
                Value::Data { data, .. } if std::str::from_utf8(data).is_ok() => new.push((known, data)),
                _ => return None,
            }
        }
        if new.is_empty() {
            return Some(self.output.clone());
        }
        let grown: usize = new.iter().map(|(_, data)| data.len()).sum();
        let mut out = Vec::with_capacity(self.output.len() + grown);
        // Old bytes before `at` are in `out`; old byte `p >= at` will be at `out.len() + p - at`.
        let mut at = 0;
        for span in &mut self.spans {
            let start = out.len() + (span.start - at);
            if let Some((_, data)) = new.iter().find(|(d, _)| same(d, &span.dep)) {
                out.extend_from_slice(&self.output[at..span.start]);
                out.extend_from_slice(data);
                at = span.start + span.len;
                span.len = data.len();
            }
            span.start = start;
        }
        out.extend_from_slice(&self.output[at..]);
        self.output = out;
        Some(self.output.clone())
    }

    /// How many printed values the state tracks.
    pub fn spans(&self) -> usize {
        self.spans.len()
    }
}

/// Two dependencies are the same; a pointer comparison first, as most paths share one
/// allocation (`ZnodePath::shared`).
fn same(a: &Dep, b: &Dep) -> bool {
    a.kind == b.kind && (std::ptr::eq(a.znode.as_str(), b.znode.as_str()) || a.znode == b.znode)
}

/// What one render of a patchable template records: its output, through a writer that counts
/// what it holds, and the span of each printed `znode()` value.
#[derive(Debug, Default)]
pub(super) struct Recorder {
    /// Bytes written so far (the output's length).
    written: Cell<usize>,
    /// Each printed value: its span and the index of its read in the scope's list of reads.
    spans: RefCell<Vec<(usize, usize, usize)>>,
}

impl Recorder {
    /// Below this many printed values a file keeps no [`Incremental`] state.
    pub const MIN_SPANS: usize = 32;

    /// A `znode()` call is about to return `len` bytes of text, which the next instruction
    /// prints: read number `read` of the render.
    pub fn printing(&self, len: usize, read: usize) {
        self.spans.borrow_mut().push((self.written.get(), len, read));
    }

    /// The state to keep after a render that produced `output` from `reads` (every read, in
    /// order, repeats included) against `values`: `None` with too few printed values, or
    /// when a span does not hold the value read (which [`printed_as_is`] rules out; checked
    /// all the same, since a wrong span would put wrong bytes in a file).
    pub fn finish(&self, output: &[u8], reads: &[Dep], values: &dyn Snapshot) -> Option<Incremental> {
        let recorded = self.spans.take();
        if recorded.len() < Self::MIN_SPANS || self.written.get() != output.len() {
            return None;
        }
        let mut spans = Vec::with_capacity(recorded.len());
        let mut printed = vec![false; reads.len()];
        let mut end = 0;
        for (start, len, read) in recorded {
            let dep = reads.get(read)?;
            let Some(Value::Data { data, .. }) = values.get(dep) else { return None };
            if start < end || output.get(start..start + len) != Some(data.as_slice()) {
                return None;
            }
            end = start + len;
            printed[read] = true;
            spans.push(Span { start, len, dep: dep.clone() });
        }
        // A dependency can be patched when every one of its reads was printed.
        let mut order: Vec<usize> = (0..reads.len()).collect();
        order.sort_by(|&a, &b| reads[a].cmp(&reads[b]));
        let mut patchable = Vec::new();
        for group in order.chunk_by(|&a, &b| reads[a] == reads[b]) {
            if group.iter().all(|&i| printed[i]) {
                patchable.push(reads[group[0]].clone());
            }
        }
        Some(Incremental { output: output.to_vec(), spans, patchable })
    }
}

/// The render's output: a byte buffer that keeps the [`Recorder`]'s count up to date.
pub(super) struct Counted {
    pub buf: Vec<u8>,
    pub recorder: Rc<Recorder>,
}

impl io::Write for Counted {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.write_all(bytes)?;
        Ok(bytes.len())
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.buf.extend_from_slice(bytes);
        self.recorder.written.set(self.buf.len());
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::model::{TemplateSpec, Update, ZnodePath};
    use crate::render::{RenderOutcome, Rendered, Template};
    use crate::store::Store;

    fn template(text: &str) -> Template {
        Template::compile(&TemplateSpec { name: "t".into(), path: None, text: text.into(), prefix: None })
            .unwrap()
    }

    fn data(path: &str) -> Dep {
        Dep::data(ZnodePath::parse(path).unwrap())
    }

    /// A store holding `values` (`None`: missing) and `children` of `/k`, every one a
    /// dependency of file 0.
    struct World {
        store: Arc<Store>,
    }

    impl World {
        fn new() -> World {
            World { store: Arc::new(Store::new()) }
        }

        fn set(&mut self, dep: Dep, value: Value) {
            let store = Arc::make_mut(&mut self.store);
            store.set_deps(0, &BTreeSet::new(), &BTreeSet::from([dep.clone()]));
            store.apply(Update { dep, value });
        }

        fn text(&mut self, path: &str, text: &str, version: i32) {
            self.set(
                data(path),
                Value::Data { data: text.as_bytes().to_vec(), mzxid: version.into(), version },
            );
        }
    }

    fn done(r: &Rendered) -> &[u8] {
        match &r.outcome {
            RenderOutcome::Done(bytes) => bytes,
            other => panic!("not rendered: {other:?}"),
        }
    }

    const LOOP: &str = "{% for i in range(40) %}k{{ i }} = {{ znode('/k/' ~ i) }}\n{% endfor %}";

    fn keys(world: &mut World, n: usize) {
        for i in 0..n {
            world.text(&format!("/k/{i}"), &format!("value {i}"), 1);
        }
    }

    #[test]
    fn templates_that_only_print_their_values_can_be_patched() {
        for text in [
            LOOP,
            "{{ znode('/a') }}",
            "{% if exists('/b') %}{{ znode('/a', default='x') }}{% endif %}",
            "{% for c in children('/k') %}{{ c }}={{ znode('/k/' ~ c) }}{% endfor %}",
            "{% set p = '/a' %}{{ znode(p) }}{% with q = p %}{{ znode(q) }}{% endwith %}",
        ] {
            assert!(template(text).patchable, "{text}");
        }
    }

    #[test]
    fn templates_that_use_a_value_otherwise_cannot() {
        for text in [
            "no znode at all",
            "{% set x = znode('/a') %}{{ x }}",
            "{{ znode('/a') | upper }}",
            "{{ znode('/a') ~ '!' }}",
            "{{ znode('/a') if true }}",
            "{% if znode('/a') %}x{% endif %}",
            "{{ children(znode('/a')) }}",
            "{% set f = znode %}{{ f('/a') }}",
            "{% set x %}{{ znode('/a') }}{% endset %}{{ x }}",
            "{% macro m() %}{{ znode('/a') }}{% endmacro %}{{ m() }}",
            "{% filter upper %}{{ znode('/a') }}{% endfilter %}",
            "{% autoescape 'html' %}{{ znode('/a') }}{% endautoescape %}",
            "{% block b %}{{ znode('/a') }}{% endblock %}",
            "{% for x in [[1]] recursive %}{{ znode('/a') }}{{ loop(x[1:]) }}{% endfor %}",
        ] {
            assert!(!template(text).patchable, "{text}");
        }
    }

    #[test]
    fn a_changed_value_is_patched_into_the_output_a_render_would_make() {
        let t = template(LOOP);
        let mut world = World::new();
        keys(&mut world, 40);
        let first = t.render(&world.store);
        let mut inc = first.incremental.clone().expect("40 printed values are tracked");
        assert_eq!(inc.spans(), 40);
        world.text("/k/7", "a longer value than before", 2);
        world.text("/k/39", "", 2);
        let patched = inc.patch(&[data("/k/7"), data("/k/39"), data("/k/7")], world.store.as_ref()).unwrap();
        let rendered = t.render(&world.store);
        assert_eq!(String::from_utf8(patched).unwrap(), String::from_utf8(done(&rendered).to_vec()).unwrap());
        assert_eq!(inc, rendered.incremental.unwrap(), "the state moves with the output");
        assert_eq!(inc.patch(&[], world.store.as_ref()).unwrap(), done(&t.render(&world.store)));
    }

    #[test]
    fn a_value_read_some_other_way_or_no_longer_text_is_rendered_in_full() {
        let t = template(
            "{% if exists('/k/0') %}on{% endif %}\n\
             {% for i in range(40) %}{{ znode('/k/' ~ i) }}\n{% endfor %}",
        );
        let mut world = World::new();
        keys(&mut world, 40);
        let mut inc = t.render(&world.store).incremental.unwrap();
        assert_eq!(inc.patch(&[data("/k/0")], world.store.as_ref()), None, "also read by exists()");
        world.set(data("/k/1"), Value::Missing);
        assert_eq!(inc.patch(&[data("/k/1")], world.store.as_ref()), None, "deleted");
        world.set(data("/k/1"), Value::Data { data: vec![0xff], mzxid: 3, version: 3 });
        assert_eq!(inc.patch(&[data("/k/1")], world.store.as_ref()), None, "not UTF-8");
        assert_eq!(inc.patch(&[data("/unknown")], world.store.as_ref()), None, "not read");
    }

    #[test]
    fn few_printed_values_keep_no_state() {
        let mut world = World::new();
        keys(&mut world, 40);
        let few = format!(
            "{{% for i in range({}) %}}{{{{ znode('/k/' ~ i) }}}}{{% endfor %}}",
            Recorder::MIN_SPANS - 1
        );
        assert!(template(&few).render(&world.store).incremental.is_none());
        assert!(template(LOOP).render(&world.store).incremental.is_some());
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Whatever values change, in whatever order, a patch gives what a render gives.
        #[test]
        fn patches_match_renders(
            changes in proptest::collection::vec((0usize..40, "[a-z =\\n{}%é]{0,12}", any::<bool>()), 1..30)
        ) {
            let t = template(
                "{% for c in children('/k') %}{{ c }}: {{ znode('/k/' ~ c) }};{{ znode('/k/0') }}\n{% endfor %}",
            );
            let mut world = World::new();
            keys(&mut world, 40);
            let names: Vec<String> = (0..40).map(|i| i.to_string()).collect();
            let mut sorted = names.clone();
            sorted.sort();
            world.set(Dep::children(ZnodePath::parse("/k").unwrap()), Value::Children { names: sorted, pzxid: 1, cversion: 1 });
            let mut inc = t.render(&world.store).incremental.unwrap();
            for (version, (key, text, delete)) in changes.into_iter().enumerate() {
                let path = format!("/k/{key}");
                if delete {
                    world.set(data(&path), Value::Missing);
                } else {
                    world.text(&path, &text, version as i32 + 2);
                }
                let rendered = t.render(&world.store);
                match inc.patch(&[data(&path)], world.store.as_ref()) {
                    Some(patched) => {
                        prop_assert!(!delete);
                        prop_assert_eq!(&patched[..], done(&rendered));
                    }
                    None => {
                        prop_assert!(delete);
                        // The agent renders in full and keeps that render's state.
                        match rendered.incremental {
                            Some(fresh) => inc = fresh,
                            None => {
                                prop_assert!(matches!(rendered.outcome, RenderOutcome::Failed(_)));
                                world.text(&path, "back", version as i32 + 2);
                                inc = t.render(&world.store).incremental.unwrap();
                            }
                        }
                    }
                }
            }
        }
    }
}
