//! Templates: compile once, render against a snapshot of znode values (pure; no I/O).
//!
//! Sits between `store` (which holds the last value read for every dependency) and `sink`
//! (which writes the bytes). This module reads no files, no clock and never talks to
//! ZooKeeper: everything it knows comes from the [`Snapshot`] passed to [`Template::render`].
//!
//! # Dependency discovery
//!
//! A template's dependencies are not declared; they are whatever its `znode()`,
//! `exists()` and `children()` calls touch, and they can change with the data
//! (`{% if exists("a") %}{{ znode("b") }}{% endif %}`). So, as consul-template does, they are
//! discovered while rendering:
//!
//! - every call records its [`Dep`] in [`Rendered::deps`], also when the render then fails,
//!   so the pipeline watches it and renders again when it changes;
//! - a dependency the snapshot has not read yet (`None`) is noted as unknown and the call
//!   returns a harmless placeholder (the `default=`, or `""`, an empty list, `false`), and
//!   the render goes on, so that one pass finds every unknown dependency it can reach. A
//!   loop calling `znode()` on each of 1,000 children discovers all 1,000 in one pass;
//! - if any dependency was unknown the outcome is [`RenderOutcome::Pending`], whatever the
//!   render produced: output or errors computed from placeholders mean nothing.
//!
//! Rendering `children("/x")` then `znode()` per child therefore takes three passes on a cold
//! snapshot: the first finds `/x (children)`, the second every child, the third is `Done`.
//!
//! # Template language
//!
//! minijinja (Jinja2) with strict undefined values (a typo is an error, not an empty
//! string), no auto-escaping, the trailing newline kept, and no loader: a template cannot
//! include files or read the environment. Besides the builtins it has:
//!
//! | name | kind | result |
//! |---|---|---|
//! | `znode(path, default=..., encoding=...)` | function | the znode's data as UTF-8 text, or with `encoding="base64"` its raw bytes base64-encoded |
//! | `children(path, default=...)` | function | sorted list of child names |
//! | `exists(path)` | function | whether the znode exists |
//! | `tree(path, default=...)` | function | every descendant that holds data, as a sorted list of `{key, value}` (key relative to `path`) |
//! | `from_json`, `from_toml`, `from_yaml`, `from_properties` | filter | string -> value |
//! | `to_json`, `to_yaml`, `to_toml`, `to_properties` | filter | value -> string (keys sorted) |
//! | `b64encode`, `b64decode` | filter | string -> string (standard alphabet) |
//!
//! A path without a leading `/` resolves under the file's `prefix`.
//!
//! `tree(path)` and `tree` files read the subtree with [`read_tree`]: the children of every
//! znode under `path` (`path` included) and the data of every znode below it, each an ordinary
//! [`Dep`], so a change anywhere in the subtree re-renders and only what changed is read
//! again. Which znodes are kept is [`Subtree`]'s rule (see [`crate::formats`]).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::rc::Rc;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use minijinja::value::{Kwargs, Value as JValue};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};

use crate::formats::{self, Subtree};
use crate::model::TemplateSpec;
use crate::model::{Dep, DepKind, Value, ZnodePath};

/// The values known so far. `None` means "not read yet" (not "missing": that is `Value::Missing`).
pub trait Snapshot {
    /// The dependency as the snapshot holds it and the last value read for it, or `None` if
    /// it has not been read yet. A render records the snapshot's own `Dep` (its path is shared,
    /// see [`ZnodePath`](crate::model::ZnodePath)) rather than the one it just parsed.
    fn entry(&self, dep: &Dep) -> Option<(&Dep, &Value)>;

    /// [`Snapshot::entry`] by an absolute path, for a snapshot that can look one up without
    /// building a [`Dep`] (the store can). `None` sends the caller the long way: it parses
    /// the path and asks [`Snapshot::entry`]. So a snapshot without such a lookup returns
    /// `None` (the default), and one with it may return `None` for a path not in normal form
    /// (the store's keys are) or not read yet.
    fn entry_at(&self, _znode: &str, _kind: DepKind) -> Option<(&Dep, &Value)> {
        None
    }

    /// The last value read for `dep`, or `None` if it has not been read yet.
    fn get(&self, dep: &Dep) -> Option<&Value> {
        self.entry(dep).map(|(_, value)| value)
    }
}

/// Why a template could not be compiled or rendered. Names the template and, when
/// minijinja knows it, the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RenderError {
    /// A syntax error at compile time or a failure while rendering.
    #[error("template {template}{}: {message}", at_line(*.line))]
    Template {
        /// [`TemplateSpec::name`].
        template: String,
        /// 1-based line in the template source.
        line: Option<usize>,
        /// What went wrong, e.g. `znode /app/db/url does not exist (give default= to allow this)`.
        message: String,
        /// The render failed because a znode it reads (without `default=`) is missing: a
        /// failure that the znode's creation fixes. Set by the raising function, not
        /// guessed from the message.
        missing_znode: bool,
    },
}

impl RenderError {
    /// True when the render failed because a znode it reads (without `default=`) is missing:
    /// a failure that the znode's creation fixes.
    pub fn is_missing_znode(&self) -> bool {
        let RenderError::Template { missing_znode, .. } = self;
        *missing_znode
    }
}

fn at_line(line: Option<usize>) -> String {
    line.map(|line| format!(" line {line}")).unwrap_or_default()
}

/// Result of one render pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RenderOutcome {
    /// The rendered file contents.
    Done(Vec<u8>),
    /// Some dependencies were not read yet; render again once they arrive.
    Pending,
    /// Every dependency was known and the template failed anyway.
    Failed(RenderError),
}

/// Outcome plus every dependency the pass touched (watched even when the render failed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rendered {
    /// Every dependency this pass read or tried to read, known or not: sorted, each once.
    /// A list, not a set: the pipeline compares it with the file's last one and keeps that
    /// when they are equal (nearly always), so building and dropping a tree of 1,000 nodes
    /// per change would be work for nothing.
    pub deps: Vec<Dep>,
    /// `Pending` whenever some dependency in `deps` was not in the snapshot.
    pub outcome: RenderOutcome,
    /// With `Done`, for a template whose printed values can be patched (see [`patch`]): what
    /// [`Incremental::patch`] needs to apply the next changes without a render.
    pub incremental: Option<Box<Incremental>>,
}

/// A compiled template. Compile once at startup (or reload), render on every change.
///
/// Templates compiled together ([`compile_all`], one call per configuration) share one
/// minijinja [`Environment`], each under its own key: minijinja's builtins (filters, tests,
/// functions) are registered once per configuration rather than once per file, which at a
/// thousand templated files is several MiB. The environment is immutable once built and
/// shared through an `Arc`, so renders take no lock and may run on any number of threads at
/// once; it is freed with the last template of its configuration (config reloads do not
/// leak). The template's own settings (prefix, allowed environment variables) travel in the
/// per-render `Scope`.
pub struct Template {
    name: String,
    /// Key of the compiled template in `env`.
    key: String,
    env: Arc<Environment<'static>>,
    settings: Arc<Settings>,
    /// Every `znode()` call is printed as is ([`patch::printed_as_is`]): renders record
    /// where, and a change to such a value can be patched into the output.
    patchable: bool,
}

/// A template's own settings, read by its functions through the per-render scope.
#[derive(Debug)]
struct Settings {
    /// The template's `prefix`: relative znode paths resolve under it.
    prefix: Option<ZnodePath>,
    /// `allow_env` names with their values at compile time.
    allowed_env: BTreeMap<String, Option<String>>,
}

/// A template compiled into the shared environment: its key there, whether it can be
/// patched ([`patch::printed_as_is`]), its spec and settings.
type Compiled<'a> = (String, bool, &'a TemplateSpec, Settings);

/// Compiles `templates` (each with the environment variables it may read, see
/// [`Template::compile_with_env`]) into one shared environment. One result per template,
/// in order.
pub fn compile_all<'a>(
    templates: impl IntoIterator<Item = (&'a TemplateSpec, &'a [String])>,
) -> Vec<Result<Template, RenderError>> {
    let mut env = base_environment();
    // Files whose templates have the same text share one compiled copy (its key is the first
    // such template's): a thousand files rendered from one template file, each with its own
    // prefix, are one compiled template, not a thousand (about 10 KiB each). Messages name
    // each file's own template (`Template::name`), never the key.
    let mut by_text: HashMap<&str, (String, bool)> = HashMap::new();
    let compiled: Vec<Result<Compiled<'_>, RenderError>> = templates
        .into_iter()
        .enumerate()
        .map(|(i, (spec, allow_env))| {
            let (key, patchable) = match by_text.get(spec.text.as_str()) {
                Some(known) => known.clone(),
                None => {
                    // The index tells apart templates with the same name.
                    let key = format!("{i}:{}", spec.name);
                    env.add_template_owned(key.clone(), spec.text.clone())
                        .map_err(|err| template_error(&spec.name, &err, &spec.text))?;
                    let patchable = env.get_template(&key).is_ok_and(|t| patch::printed_as_is(&t));
                    by_text.insert(&spec.text, (key.clone(), patchable));
                    (key, patchable)
                }
            };
            let allowed_env = allow_env.iter().map(|name| (name.clone(), std::env::var(name).ok())).collect();
            Ok((key, patchable, spec, Settings { prefix: spec.prefix.clone(), allowed_env }))
        })
        .collect();
    let env = Arc::new(env);
    compiled
        .into_iter()
        .map(|c| {
            c.map(|(key, patchable, spec, settings)| Template {
                name: spec.name.clone(),
                key,
                env: env.clone(),
                settings: Arc::new(settings),
                patchable,
            })
        })
        .collect()
}

/// minijinja's builtins plus zkrender's functions and filters, sandboxed: no loader.
fn base_environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_keep_trailing_newline(true);
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    // Debug info would snapshot the render context into every error; we only use the
    // line and the span, which minijinja records without it.
    env.set_debug(false);
    env.add_function("znode", |path: &str, kwargs: Kwargs| znode(path, &kwargs));
    env.add_function("children", |path: &str, kwargs: Kwargs| children(path, &kwargs));
    env.add_function("exists", exists);
    env.add_function("env", |name: &str, kwargs: Kwargs| env_var(name, &kwargs));
    env.add_function("tree", |path: &str, kwargs: Kwargs| tree(path, &kwargs));
    env.add_filter("from_json", from_json);
    env.add_filter("from_toml", from_toml);
    env.add_filter("from_yaml", |text: &str| parsed(formats::from_yaml(text)));
    env.add_filter("from_properties", |text: &str| parsed(formats::from_properties(text)));
    env.add_filter("to_json", |value: JValue| emitted(&value, formats::to_json));
    env.add_filter("to_yaml", |value: JValue| emitted(&value, formats::to_yaml));
    env.add_filter("to_toml", |value: JValue| emitted(&value, formats::to_toml));
    env.add_filter("to_properties", |value: JValue| emitted(&value, formats::to_properties));
    env.add_filter("b64encode", b64encode);
    env.add_filter("b64decode", b64decode);
    env
}

impl fmt::Debug for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Template").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Template {
    /// Parses `spec.text` and registers the zkrender functions and filters.
    ///
    /// # Errors
    ///
    /// [`RenderError::Template`] with the line of the syntax error.
    pub fn compile(spec: &TemplateSpec) -> Result<Template, RenderError> {
        Self::compile_with_env(spec, &[])
    }

    /// As [`Template::compile`], and the template may read the environment variables named in
    /// `allow_env` with `env("NAME", default=...)`. Their values are taken now, at compile time
    /// (config load or reload), so rendering stays pure; any other name is an error.
    ///
    /// A template compiled alone gets an environment of its own; compile a configuration's
    /// templates together with [`compile_all`].
    pub fn compile_with_env(spec: &TemplateSpec, allow_env: &[String]) -> Result<Template, RenderError> {
        compile_all([(spec, allow_env)]).pop().expect("bug: one template in, one result out")
    }

    /// [`TemplateSpec::name`]: the name used in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renders against `snapshot`, recording every dependency touched. Pure: no I/O.
    ///
    /// The outcome is `Pending` if any dependency is not in the snapshot yet, otherwise
    /// `Done` or `Failed`. See the module docs for how dependencies are discovered.
    ///
    /// The snapshot is shared with the render (an `Arc` clone) and released when this
    /// returns, so a caller holding the only other `Arc` can mutate it afterwards without
    /// a copy (`Arc::make_mut`).
    pub fn render<S: Snapshot + Send + Sync + 'static>(&self, snapshot: &Arc<S>) -> Rendered {
        let recorder = self.patchable.then(|| Rc::new(patch::Recorder::default()));
        let scope = Rc::new(Scope {
            snapshot: snapshot.clone(),
            settings: self.settings.clone(),
            deps: RefCell::default(),
            unknown: Cell::new(false),
            recorder: recorder.clone(),
        });
        let result = match self.env.get_template(&self.key) {
            // A panic inside the template engine (minijinja 2.24 panics on some slices of empty
            // values, e.g. `""[::-1]`) must not take the agent down: it becomes a render error
            // for this file, which keeps its last good contents.
            Ok(template) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let _current = Current::set(scope.clone());
                match &recorder {
                    // Written through a counting writer, so that each `znode()` call knows
                    // where its value is printed.
                    Some(recorder) => {
                        // Deprecated for `render_captured_to`, which also keeps the render's
                        // state alive (an allocation we do not need); the same render otherwise.
                        let mut out = patch::Counted { buf: Vec::new(), recorder: recorder.clone() };
                        #[allow(deprecated)]
                        let result = template.render_to_write(minijinja::context! {}, &mut out);
                        result.map(|_| out.buf)
                    }
                    None => template.render(minijinja::context! {}).map(String::into_bytes),
                }
            }))
            .unwrap_or_else(|payload| {
                Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!(
                        "the template engine failed on this template (an internal error: {}); \
                         simplify the expression",
                        panic_message(payload.as_ref())
                    ),
                ))
            })
            .map_err(|err| template_error(&self.name, &err, template.source())),
            // Unreachable: compile_all() registered it under this key.
            Err(err) => Err(template_error(&self.name, &err, "")),
        };
        let mut deps = scope.deps.take();
        let outcome = match result {
            _ if scope.unknown.get() => RenderOutcome::Pending,
            Ok(bytes) => RenderOutcome::Done(bytes),
            Err(err) => RenderOutcome::Failed(err),
        };
        let incremental = match (&outcome, &recorder) {
            (RenderOutcome::Done(bytes), Some(recorder)) => {
                recorder.finish(bytes, &deps, snapshot.as_ref()).map(Box::new)
            }
            _ => None,
        };
        Dep::sort_unique(&mut deps);
        Rendered { deps, outcome, incremental }
    }
}

mod lint;
mod patch;

pub use patch::Incremental;

// --- Per-render state -------------------------------------------------------------------
//
// minijinja only accepts `'static` functions, shared by every template of the environment,
// so what one render reads from (the snapshot, the template's settings) and records into
// (the dependencies found) is a `Scope` that the render makes its thread's current one
// ([`CURRENT`]) while it runs; each function finds it there. The snapshot is an `Arc` clone,
// not a copy, and every render has its own scope: nothing is shared between renders but the
// immutable environment. A scope never leaves its thread, so it records with a `RefCell`
// and a `Cell`, not a lock and an atomic.
//
// (The scope used to travel in the render context as a variable, which each function looked
// up through minijinja's `State`: a walk over every frame's variables, about 330
// instructions per `znode()` call.)

thread_local! {
    /// The scope of the render running on this thread, set by [`Template::render`].
    static CURRENT: RefCell<Option<Rc<Scope>>> = const { RefCell::new(None) };
}

/// Whether a template is being rendered on this thread. A panic there is caught by
/// [`Template::render`] and becomes that file's render error, with the panic's message; the
/// process's panic hook uses this to leave it at that instead of printing it a second time.
pub fn rendering() -> bool {
    CURRENT.try_with(|current| current.try_borrow().is_ok_and(|c| c.is_some())).unwrap_or(false)
}

/// A panic's message: its payload when that is a string (as `panic!` makes it), else a
/// placeholder.
pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> &str {
    match payload.downcast_ref::<&'static str>() {
        Some(text) => text,
        None => payload.downcast_ref::<String>().map_or("no message", String::as_str),
    }
}

/// Makes a scope its thread's current one until dropped (also when the render panics), then
/// puts back the one before: none, as renders do not nest.
struct Current(Option<Rc<Scope>>);

impl Current {
    fn set(scope: Rc<Scope>) -> Current {
        Current(CURRENT.replace(Some(scope)))
    }
}

impl Drop for Current {
    fn drop(&mut self) {
        CURRENT.set(self.0.take());
    }
}

/// What one render pass reads from and records into.
struct Scope {
    snapshot: Arc<dyn Snapshot + Send + Sync>,
    settings: Arc<Settings>,
    /// Every dependency touched so far, in the order read, repeats included: a push per
    /// read, sorted once at the end. (A set searched on every read cost a fifth of the
    /// render of a template reading 1,000 znodes.)
    deps: RefCell<Vec<Dep>>,
    /// Whether some dependency was not in the snapshot.
    unknown: Cell<bool>,
    /// For a patchable template: where the printed `znode()` values went.
    recorder: Option<Rc<patch::Recorder>>,
}

impl fmt::Debug for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the snapshot: znode contents may be secrets.
        f.write_str("zkrender render scope")
    }
}

impl Scope {
    /// `path` resolved to a dependency of `kind`, recorded, and its value ([`Scope::read`]).
    /// An absolute path the snapshot holds is found without parsing it or allocating: the
    /// usual case, once per `znode()` call.
    fn read_at(&self, path: &str, kind: DepKind) -> Result<(Dep, Option<&Value>), minijinja::Error> {
        if path.starts_with('/')
            && let Some((known, value)) = self.snapshot.entry_at(path, kind)
        {
            self.record(known);
            return Ok((known.clone(), Some(value)));
        }
        let dep = Dep { znode: self.resolve(path)?, kind };
        let value = self.read(&dep);
        Ok((dep, value))
    }

    /// Records `dep` and returns its value; `None` (not read yet) marks the pass as pending.
    fn read(&self, dep: &Dep) -> Option<&Value> {
        let (known, value) = match self.snapshot.entry(dep) {
            Some((known, value)) => (known, Some(value)),
            None => {
                self.unknown.set(true);
                (dep, None)
            }
        };
        self.record(known);
        value
    }

    fn record(&self, dep: &Dep) {
        self.deps.borrow_mut().push(dep.clone());
    }
}

/// Calls `f` with the render's scope; an error if the function runs outside
/// [`Template::render`].
fn with_scope<R>(f: impl FnOnce(&Scope) -> Result<R, minijinja::Error>) -> Result<R, minijinja::Error> {
    CURRENT.with_borrow(|current| match current {
        Some(scope) => f(scope),
        None => Err(fail("bug: znode functions called outside Template::render".to_owned())),
    })
}

// --- Functions --------------------------------------------------------------------------

/// Marks an error raised by this module: its detail is the whole message.
#[derive(Debug)]
struct Ours {
    /// The error is "this znode does not exist" (see [`RenderError::is_missing_znode`]).
    missing_znode: bool,
}

impl fmt::Display for Ours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("zkrender")
    }
}

impl std::error::Error for Ours {}

/// An error whose message is shown as is (minijinja adds template and line).
fn fail(message: String) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, message).with_source(Ours { missing_znode: false })
}

impl Scope {
    /// `path` resolved under the rendering template's prefix.
    fn resolve(&self, path: &str) -> Result<ZnodePath, minijinja::Error> {
        ZnodePath::resolve(self.settings.prefix.as_ref(), path).map_err(|err| fail(err.to_string()))
    }
}

/// `env(name, default=...)`: an environment variable the file's `allow_env` lists.
fn env_var(name: &str, kwargs: &Kwargs) -> Result<JValue, minijinja::Error> {
    let default = default_arg(kwargs)?;
    let value = with_scope(|scope| Ok(scope.settings.allowed_env.get(name).cloned()))?;
    match value {
        None => Err(fail(format!(
            "environment variable {name} is not readable: list it in this file's allow_env"
        ))),
        Some(Some(value)) => Ok(JValue::from(value.as_str())),
        Some(None) => default.ok_or_else(|| fail(format!("environment variable {name} is not set"))),
    }
}

/// The `default=` keyword argument, if given (`default=none` counts); rejects any other.
fn default_arg(kwargs: &Kwargs) -> Result<Option<JValue>, minijinja::Error> {
    let default = if kwargs.has("default") { Some(kwargs.get::<JValue>("default")?) } else { None };
    kwargs.assert_all_used()?;
    Ok(default)
}

/// A znode read without `default=` is missing: marked, so that the pipeline can tell this
/// failure (which the znode's creation fixes) from the others.
fn does_not_exist(znode: &ZnodePath) -> minijinja::Error {
    minijinja::Error::new(
        ErrorKind::InvalidOperation,
        format!("znode {znode} does not exist (give default= to allow this)"),
    )
    .with_source(Ours { missing_znode: true })
}

/// A value of the wrong kind for the dependency: the snapshot broke its contract.
fn wrong_kind(dep: &Dep) -> minijinja::Error {
    fail(format!("bug: snapshot holds a value of the wrong kind for {dep}"))
}

/// `znode(path, encoding=...)`: how the data is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Encoding {
    /// `"utf-8"` (the default): the data as text; other bytes are an error.
    Utf8,
    /// `"base64"`: the raw bytes, base64-encoded (standard alphabet, padded).
    Base64,
}

impl Encoding {
    fn from_kwargs(kwargs: &Kwargs) -> Result<Encoding, minijinja::Error> {
        // `get` records the name as used (a String in a set) even when it is absent: a
        // twelfth of a render reading 1,000 znodes, so ask only when it was given.
        if !kwargs.has("encoding") {
            return Ok(Encoding::Utf8);
        }
        match kwargs.get::<Option<&str>>("encoding")? {
            None | Some("utf-8") => Ok(Encoding::Utf8),
            Some("base64") => Ok(Encoding::Base64),
            Some(other) => Err(fail(format!(
                "znode: unknown encoding {other:?}, expected \"utf-8\" (the default) or \"base64\""
            ))),
        }
    }
}

/// `znode(path, default=..., encoding=...)`: the data as UTF-8 text, or base64 of its bytes.
fn znode(path: &str, kwargs: &Kwargs) -> Result<JValue, minijinja::Error> {
    let encoding = Encoding::from_kwargs(kwargs)?;
    let default = default_arg(kwargs)?;
    with_scope(|scope| {
        let (dep, value) = scope.read_at(path, DepKind::Data)?;
        match value {
            None => Ok(default.unwrap_or_else(|| JValue::from(""))),
            Some(Value::Missing) => default.ok_or_else(|| does_not_exist(&dep.znode)),
            Some(Value::Data { data, .. }) if encoding == Encoding::Base64 => {
                Ok(JValue::from(BASE64.encode(data)))
            }
            Some(Value::Data { data, .. }) => match std::str::from_utf8(data) {
                Ok(text) => {
                    if let Some(recorder) = &scope.recorder {
                        // Printed next, as is (`patch::printed_as_is`); this read is the last.
                        recorder.printing(text.len(), scope.deps.borrow().len() - 1);
                    }
                    Ok(JValue::from(text))
                }
                Err(err) => Err(fail(format!(
                    "znode {} holds data that is not valid UTF-8 (invalid byte at offset {})",
                    dep.znode,
                    err.valid_up_to()
                ))),
            },
            Some(Value::Children { .. }) => Err(wrong_kind(&dep)),
        }
    })
}

/// `children(path, default=...)`: the sorted child names.
fn children(path: &str, kwargs: &Kwargs) -> Result<JValue, minijinja::Error> {
    let default = default_arg(kwargs)?;
    with_scope(|scope| {
        let (dep, value) = scope.read_at(path, DepKind::Children)?;
        match value {
            None => Ok(default.unwrap_or_else(|| JValue::from(Vec::<JValue>::new()))),
            Some(Value::Missing) => default.ok_or_else(|| does_not_exist(&dep.znode)),
            Some(Value::Children { names, .. }) if names.is_sorted() => {
                Ok(names.iter().map(String::as_str).collect())
            }
            Some(Value::Children { names, .. }) => {
                let mut names: Vec<&str> = names.iter().map(String::as_str).collect();
                names.sort_unstable();
                Ok(names.into_iter().collect())
            }
            Some(Value::Data { .. }) => Err(wrong_kind(&dep)),
        }
    })
}

/// `exists(path)`: whether the znode exists (a data dependency).
fn exists(path: &str) -> Result<bool, minijinja::Error> {
    with_scope(|scope| {
        let (_, value) = scope.read_at(path, DepKind::Data)?;
        Ok(!matches!(value, None | Some(Value::Missing)))
    })
}

/// `tree(path, default=...)`: the subtree under `path` as a sorted list of `{key, value}`.
fn tree(path: &str, kwargs: &Kwargs) -> Result<JValue, minijinja::Error> {
    let default = default_arg(kwargs)?;
    with_scope(|scope| {
        let root = scope.resolve(path)?;
        match read_tree(&root, |dep| scope.read(dep)) {
            TreeRead::Pending => Ok(default.unwrap_or_else(|| JValue::from(Vec::<JValue>::new()))),
            TreeRead::Missing => default.ok_or_else(|| does_not_exist(&root)),
            TreeRead::Found(subtree) => match subtree.listing() {
                Ok(listing) => Ok(JValue::from_serialize(&listing)),
                Err(err) => Err(fail(err.to_string())),
            },
        }
    })
}

/// What [`read_tree`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TreeRead {
    /// Some znode's data or children have not been read yet (every one reachable was asked).
    Pending,
    /// The root znode does not exist.
    Missing,
    /// Every descendant of the root, as [`Subtree`] keeps them.
    Found(Subtree),
}

/// Reads the subtree under `root` through `read`, which is asked for the children of `root`
/// and of every znode below it, and for the data of every znode below it (not of `root`:
/// it is not part of the subtree). A znode that has disappeared while its parent's list still
/// names it is left out: the parent's new list is on its way.
///
/// Every dependency reachable with what is known is asked for, so a cold read takes one pass
/// per level and no more.
pub fn read_tree<'a>(root: &ZnodePath, mut read: impl FnMut(&Dep) -> Option<&'a Value>) -> TreeRead {
    /// Queues the children `names` of the znode at `path` (`key` relative to the root).
    fn push_children(stack: &mut Vec<(String, ZnodePath)>, key: &str, path: &ZnodePath, names: &[String]) {
        for name in names {
            // A child name is never empty and never holds `/`, so the join is valid.
            if let Ok(child) = path.join(name) {
                let child_key = if key.is_empty() { name.clone() } else { format!("{key}/{name}") };
                stack.push((child_key, child));
            }
        }
    }

    let mut pending = false;
    // (key relative to the root, znode path) still to read.
    let mut stack: Vec<(String, ZnodePath)> = Vec::new();
    match read(&Dep::children(root.clone())) {
        None => return TreeRead::Pending,
        Some(Value::Missing) => return TreeRead::Missing,
        Some(Value::Children { names, .. }) => push_children(&mut stack, "", root, names),
        // The snapshot broke its contract; there is nothing below to read.
        Some(Value::Data { .. }) => {}
    }
    let mut entries: Vec<(String, Vec<u8>)> = Vec::new();
    while let Some((key, path)) = stack.pop() {
        let data = read(&Dep::data(path.clone()));
        let children = read(&Dep::children(path.clone()));
        match data {
            None => pending = true,
            Some(Value::Data { data, .. }) => entries.push((key.clone(), data.clone())),
            // Gone (or a broken snapshot): neither it nor anything below it is part of the tree.
            Some(Value::Missing | Value::Children { .. }) => continue,
        }
        match children {
            None => pending = true,
            Some(Value::Children { names, .. }) => push_children(&mut stack, &key, &path, names),
            Some(Value::Missing | Value::Data { .. }) => {}
        }
    }
    if pending {
        return TreeRead::Pending;
    }
    // Keys are child names joined by `/`, each visited once: always valid and unique.
    TreeRead::Found(Subtree::new(root.as_str(), entries).expect("bug: keys built from child names"))
}

// --- Filters ----------------------------------------------------------------------------

/// A parsing filter's result as a template value.
fn parsed(value: Result<serde_json::Value, formats::FormatError>) -> Result<JValue, minijinja::Error> {
    value.map(|value| JValue::from_serialize(&value)).map_err(|err| fail(err.to_string()))
}

/// An emitting filter (`to_json`, ...) applied to a template value.
fn emitted(
    value: &JValue,
    emit: fn(&serde_json::Value) -> Result<String, formats::FormatError>,
) -> Result<String, minijinja::Error> {
    let value =
        serde_json::to_value(value).map_err(|err| fail(format!("cannot convert the value: {err}")))?;
    emit(&value).map_err(|err| fail(err.to_string()))
}

/// `from_json`: parses a JSON document into a value.
fn from_json(text: &str) -> Result<JValue, minijinja::Error> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|err| fail(format!("from_json: invalid JSON: {err}")))?;
    Ok(JValue::from_serialize(&value))
}

/// `from_toml`: parses a TOML document into a map. Datetimes become strings.
fn from_toml(text: &str) -> Result<JValue, minijinja::Error> {
    let table: toml::Table = toml::from_str(text).map_err(|err| {
        let at = match err.span() {
            Some(span) => {
                let before = &text.as_bytes()[..span.start.min(text.len())];
                let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
                let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
                format!(" at line {line} column {column}")
            }
            None => String::new(),
        };
        fail(format!("from_toml: invalid TOML{at}: {}", err.message()))
    })?;
    Ok(toml_value(toml::Value::Table(table)))
}

fn toml_value(value: toml::Value) -> JValue {
    match value {
        toml::Value::String(s) => JValue::from(s),
        toml::Value::Integer(i) => JValue::from(i),
        toml::Value::Float(f) => JValue::from(f),
        toml::Value::Boolean(b) => JValue::from(b),
        toml::Value::Datetime(d) => JValue::from(d.to_string()),
        toml::Value::Array(items) => items.into_iter().map(toml_value).collect(),
        toml::Value::Table(table) => table.into_iter().map(|(k, v)| (k, toml_value(v))).collect(),
    }
}

/// `b64encode`: base64 (standard alphabet, padded) of a string's UTF-8 bytes.
fn b64encode(value: &JValue) -> Result<String, minijinja::Error> {
    match value.as_bytes() {
        Some(bytes) => Ok(BASE64.encode(bytes)),
        None => Err(fail(format!("b64encode: expected a string, got {}", value.kind()))),
    }
}

/// `b64decode`: decodes base64 (standard alphabet, surrounding whitespace ignored) into a
/// UTF-8 string.
fn b64decode(text: &str) -> Result<String, minijinja::Error> {
    let bytes =
        BASE64.decode(text.trim()).map_err(|err| fail(format!("b64decode: invalid base64: {err}")))?;
    String::from_utf8(bytes).map_err(|_| fail("b64decode: decoded data is not valid UTF-8".to_owned()))
}

// --- Errors -----------------------------------------------------------------------------

/// Longest expression quoted in an error message.
const MAX_SNIPPET: usize = 60;

/// Turns a minijinja error into a message naming `template` and the line. `source` is the
/// template text, used to quote the failing expression.
fn template_error(template: &str, err: &minijinja::Error, source: &str) -> RenderError {
    let ours = std::error::Error::source(err).and_then(|source| source.downcast_ref::<Ours>());
    let missing_znode = ours.is_some_and(|ours| ours.missing_znode);
    let message = match err.detail() {
        Some(detail) if ours.is_some() => detail.to_owned(),
        _ => {
            // A syntax error's span is where parsing gave up, which often is not the mistake.
            let snippet = Some(err)
                .filter(|err| err.kind() != ErrorKind::SyntaxError)
                .and_then(minijinja::Error::range)
                .and_then(|range| source.get(range))
                .map(str::trim)
                .filter(|s| !s.is_empty() && s.len() <= MAX_SNIPPET && !s.contains('\n'));
            let mut message = match err.detail() {
                Some(detail) => format!("{}: {detail}", err.kind()),
                None => err.kind().to_string(),
            };
            if let Some(snippet) = snippet {
                message = if err.kind() == ErrorKind::UndefinedError && err.detail().is_none() {
                    format!("{message} {snippet:?}")
                } else {
                    format!("{message} (in {snippet:?})")
                };
            }
            let mut cause = std::error::Error::source(err);
            while let Some(next) = cause {
                message = format!("{message}: {next}");
                cause = next.source();
            }
            message
        }
    };
    RenderError::Template { template: template.to_owned(), line: err.line(), message, missing_znode }
}

pub use lint::{Lint, lint};

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use super::*;

    /// A snapshot built from plain values; deps not added are "not read yet".
    #[derive(Default, Clone)]
    struct Snap(HashMap<Dep, Value>);

    /// Renders against a copy of a test snapshot (the agent shares its store instead).
    trait RenderSnap {
        fn render_snap(&self, snap: &Snap) -> Rendered;
    }

    impl RenderSnap for Template {
        fn render_snap(&self, snap: &Snap) -> Rendered {
            self.render(&Arc::new(snap.clone()))
        }
    }

    impl Snapshot for Snap {
        fn entry(&self, dep: &Dep) -> Option<(&Dep, &Value)> {
            self.0.get_key_value(dep)
        }
        // As the store does: a borrowed lookup, so that these tests take the renders' fast path.
        fn entry_at(&self, znode: &str, kind: DepKind) -> Option<(&Dep, &Value)> {
            self.0.get_key_value(&(znode, kind) as &dyn crate::model::DepKey)
        }
    }

    fn zp(path: &str) -> ZnodePath {
        ZnodePath::parse(path).unwrap()
    }

    impl Snap {
        fn bytes(mut self, path: &str, data: &[u8]) -> Self {
            self.0.insert(Dep::data(zp(path)), Value::Data { data: data.to_vec(), mzxid: 1, version: 0 });
            self
        }
        fn data(self, path: &str, text: &str) -> Self {
            self.bytes(path, text.as_bytes())
        }
        fn missing(mut self, path: &str) -> Self {
            self.0.insert(Dep::data(zp(path)), Value::Missing);
            self
        }
        fn children(mut self, path: &str, names: &[&str]) -> Self {
            let names = names.iter().map(|name| (*name).to_owned()).collect();
            self.0.insert(Dep::children(zp(path)), Value::Children { names, pzxid: 1, cversion: 0 });
            self
        }
        fn no_children(mut self, path: &str) -> Self {
            self.0.insert(Dep::children(zp(path)), Value::Missing);
            self
        }
    }

    fn compile_with(text: &str, prefix: Option<&str>) -> Template {
        let spec = TemplateSpec {
            name: "t.j2".to_owned(),
            path: None,
            text: text.to_owned(),
            prefix: prefix.map(zp),
        };
        Template::compile(&spec).unwrap()
    }

    fn compile(text: &str) -> Template {
        compile_with(text, None)
    }

    fn done(rendered: &Rendered) -> &str {
        match &rendered.outcome {
            RenderOutcome::Done(bytes) => std::str::from_utf8(bytes).unwrap(),
            other => panic!("expected Done, got {other:?}"),
        }
    }

    fn failed(rendered: &Rendered) -> String {
        match &rendered.outcome {
            RenderOutcome::Failed(err) => err.to_string(),
            other => panic!("expected Failed, got {other:?}"),
        }
    }

    fn compile_env(text: &str, allow: &[&str]) -> Template {
        let spec = TemplateSpec { name: "t.j2".to_owned(), path: None, text: text.to_owned(), prefix: None };
        let allow: Vec<String> = allow.iter().map(|s| s.to_string()).collect();
        Template::compile_with_env(&spec, &allow).unwrap()
    }

    #[test]
    fn env_reads_only_allowed_variables() {
        // PATH is set in every test environment; HOME may not be, so it is not used.
        let path = std::env::var("PATH").unwrap();
        let t = compile_env("{{ env('PATH') }}", &["PATH"]);
        assert_eq!(done(&t.render_snap(&Snap::default())), path);
        let t = compile_env("{{ env('PATH') }}", &[]);
        assert!(
            failed(&t.render_snap(&Snap::default()))
                .contains("not readable: list it in this file's allow_env")
        );
    }

    #[test]
    fn env_unset_needs_a_default() {
        let name = "ZKRENDER_TEST_SURELY_UNSET_VAR";
        let t = compile_env(&format!("{{{{ env('{name}') }}}}"), &[name]);
        assert!(failed(&t.render_snap(&Snap::default())).contains("is not set"));
        let t = compile_env(&format!("{{{{ env('{name}', default='d') }}}}"), &[name]);
        assert_eq!(done(&t.render_snap(&Snap::default())), "d");
    }

    /// Data dependencies on `paths`, as [`Rendered::deps`] lists them (sorted, each once).
    fn data_deps(paths: &[&str]) -> Vec<Dep> {
        let mut deps = paths.iter().map(|path| Dep::data(zp(path))).collect();
        Dep::sort_unique(&mut deps);
        deps
    }

    #[test]
    fn znode_renders_data_and_keeps_trailing_newline() {
        let t = compile("url={{ znode('/db/url') }}\n");
        let r = t.render_snap(&Snap::default().data("/db/url", "pg://a"));
        assert_eq!(done(&r), "url=pg://a\n");
        assert_eq!(r.deps, data_deps(&["/db/url"]));
        assert_eq!(t.name(), "t.j2");
    }

    #[test]
    fn a_path_not_in_normal_form_is_read_as_its_normal_form() {
        let snap = Snap::default().data("/db/url", "pg://a").data("/app/x", "1");
        let t =
            compile("{{ znode('/db/url/') }} {{ exists('/app/x/') }} {{ znode('/app//x', default='d') }}");
        let err = t.render_snap(&snap);
        assert!(matches!(err.outcome, RenderOutcome::Failed(_)), "an empty component is an error");
        let t = compile("{{ znode('/db/url/') }} {{ exists('/app/x/') }}");
        let r = t.render_snap(&snap);
        assert_eq!(done(&r), "pg://a True");
        assert_eq!(r.deps, data_deps(&["/app/x", "/db/url"]));
    }

    #[test]
    fn no_auto_escaping() {
        let t = compile("{{ znode('/a') }}");
        assert_eq!(done(&t.render_snap(&Snap::default().data("/a", "<b>&'\""))), "<b>&'\"");
    }

    #[test]
    fn default_is_used_for_a_missing_znode() {
        let t = compile("{{ znode('/a', default='x') }} {{ znode('/b', default=none) is none }}");
        let r = t.render_snap(&Snap::default().missing("/a").missing("/b"));
        assert_eq!(done(&r), "x True");
    }

    #[test]
    fn missing_znode_without_default_fails_naming_znode_and_line() {
        let t = compile("a\nb\nurl={{ znode('/db/url') }}\n");
        let r = t.render_snap(&Snap::default().missing("/db/url"));
        assert_eq!(
            failed(&r),
            "template t.j2 line 3: znode /db/url does not exist (give default= to allow this)"
        );
    }

    #[test]
    fn unknown_keyword_argument_is_an_error() {
        let t = compile("{{ znode('/a', defualt='x') }}");
        let message = failed(&t.render_snap(&Snap::default().missing("/a")));
        assert!(message.contains("unknown keyword argument 'defualt'"), "{message}");
    }

    #[test]
    fn unknown_deps_are_all_found_in_one_pass_and_make_it_pending() {
        let t = compile("{{ znode('/a') }}{{ znode('/b', default='d') }}{{ exists('/c') }}");
        let r = t.render_snap(&Snap::default());
        assert_eq!(r.outcome, RenderOutcome::Pending);
        assert_eq!(r.deps, data_deps(&["/a", "/b", "/c"]));
    }

    #[test]
    fn error_caused_by_a_placeholder_is_pending_not_failed() {
        let t = compile("{{ (znode('/cfg') | from_json).port }}");
        let r = t.render_snap(&Snap::default());
        assert_eq!(r.outcome, RenderOutcome::Pending);
        assert_eq!(r.deps, data_deps(&["/cfg"]));
    }

    #[test]
    fn children_are_sorted() {
        let t = compile("{{ children('/svc') | join(',') }}");
        let r = t.render_snap(&Snap::default().children("/svc", &["b", "c", "a"]));
        assert_eq!(done(&r), "a,b,c");
        assert_eq!(r.deps, [Dep::children(zp("/svc"))]);
    }

    #[test]
    fn children_of_a_missing_parent_fails_unless_default() {
        let snap = Snap::default().no_children("/svc");
        let message = failed(&compile("{{ children('/svc') }}").render_snap(&snap));
        assert_eq!(message, "template t.j2 line 1: znode /svc does not exist (give default= to allow this)");
        let t = compile("{{ children('/svc', default=['none']) | join(',') }}");
        assert_eq!(done(&t.render_snap(&snap)), "none");
    }

    #[test]
    fn loop_over_children_discovers_every_child_in_one_pass() {
        let t = compile("{% for c in children('/svc') %}{{ c }}={{ znode('/svc/' ~ c) }}\n{% endfor %}");
        let names: Vec<String> = (0..1000).rev().map(|i| format!("n{i:04}")).collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();

        // Pass 1: only the child list is found.
        let mut snap = Snap::default();
        let r = t.render_snap(&snap);
        assert_eq!(r.outcome, RenderOutcome::Pending);
        assert_eq!(r.deps, [Dep::children(zp("/svc"))]);

        // Pass 2: all 1,000 children at once.
        snap = snap.children("/svc", &name_refs);
        let r = t.render_snap(&snap);
        assert_eq!(r.outcome, RenderOutcome::Pending);
        assert_eq!(r.deps.len(), 1001);
        assert!(names.iter().all(|n| r.deps.contains(&Dep::data(zp(&format!("/svc/{n}"))))));

        // Pass 3: done, in sorted order.
        for name in &names {
            snap = snap.data(&format!("/svc/{name}"), &format!("v{name}"));
        }
        let r = t.render_snap(&snap);
        let out = done(&r);
        assert_eq!(out.lines().count(), 1000);
        assert!(out.starts_with("n0000=vn0000\nn0001=vn0001\n"), "{}", &out[..40]);
        assert_eq!(r.deps.len(), 1001);
    }

    #[test]
    fn a_thousand_znodes_render_quickly() {
        let t = compile("{% for c in children('/svc') %}{{ znode('/svc/' ~ c) }}\n{% endfor %}");
        let names: Vec<String> = (0..1000).map(|i| format!("n{i}")).collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        let mut snap = Snap::default().children("/svc", &name_refs);
        for name in &names {
            snap = snap.data(&format!("/svc/{name}"), "value");
        }
        let start = Instant::now();
        let r = t.render_snap(&snap);
        let elapsed = start.elapsed();
        assert_eq!(done(&r).len(), 6000);
        // Generous even for an unoptimised build on a busy machine (release: ~1.3 ms).
        assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");
    }

    #[test]
    fn exists_is_a_data_dependency() {
        let t = compile("{{ exists('/a') }} {{ exists('/b') }}");
        let r = t.render_snap(&Snap::default().data("/a", "").missing("/b"));
        assert_eq!(done(&r), "True False");
        assert_eq!(r.deps, data_deps(&["/a", "/b"]));
        let r = t.render_snap(&Snap::default().data("/a", ""));
        assert_eq!(r.outcome, RenderOutcome::Pending);
    }

    #[test]
    fn relative_paths_resolve_under_the_prefix() {
        let t = compile_with(
            "{{ znode('db/url') }} {{ children('svc') | join }} {{ znode('/abs') }}",
            Some("/app"),
        );
        let snap = Snap::default().data("/app/db/url", "u").children("/app/svc", &["x"]).data("/abs", "a");
        let r = t.render_snap(&snap);
        assert_eq!(done(&r), "u x a");
        assert_eq!(
            r.deps,
            [Dep::data(zp("/abs")), Dep::data(zp("/app/db/url")), Dep::children(zp("/app/svc"))]
        );
    }

    #[test]
    fn relative_path_without_prefix_fails() {
        let r = compile("{{ znode('db/url') }}").render_snap(&Snap::default());
        assert_eq!(
            failed(&r),
            "template t.j2 line 1: relative znode path \"db/url\" needs a `prefix` on the file to resolve against"
        );
        assert!(r.deps.is_empty());
    }

    #[test]
    fn invalid_znode_path_fails() {
        let r = compile("{{ znode('/a//b') }}").render_snap(&Snap::default());
        assert!(failed(&r).contains("empty component"));
    }

    #[test]
    fn non_utf8_data_fails_naming_the_znode() {
        let r = compile("{{ znode('/bin') }}").render_snap(&Snap::default().bytes("/bin", b"ok\xff"));
        assert_eq!(
            failed(&r),
            "template t.j2 line 1: znode /bin holds data that is not valid UTF-8 (invalid byte at offset 2)"
        );
    }

    #[test]
    fn from_json_parses_documents() {
        let t = compile("{% set c = znode('/c') | from_json %}{{ c.db.port }} {{ c.hosts | join(',') }}");
        let r = t.render_snap(&Snap::default().data("/c", r#"{"db": {"port": 5432}, "hosts": ["a", "b"]}"#));
        assert_eq!(done(&r), "5432 a,b");
    }

    #[test]
    fn from_json_reports_bad_json() {
        let r = compile("\n{{ znode('/c') | from_json }}").render_snap(&Snap::default().data("/c", "{"));
        assert_eq!(
            failed(&r),
            "template t.j2 line 2: from_json: invalid JSON: EOF while parsing an object at line 1 column 1"
        );
    }

    #[test]
    fn from_toml_parses_documents() {
        let t = compile("{% set c = znode('/c') | from_toml %}{{ c.db.port }} {{ c.name }} {{ c.when }}");
        let toml = "name = \"x\"\nwhen = 1979-05-27T07:32:00Z\n[db]\nport = 5432\n";
        let r = t.render_snap(&Snap::default().data("/c", toml));
        assert_eq!(done(&r), "5432 x 1979-05-27T07:32:00Z");
    }

    #[test]
    fn from_toml_reports_bad_toml_with_position() {
        let r = compile("{{ znode('/c') | from_toml }}")
            .render_snap(&Snap::default().data("/c", "a = 1\nb = \n"));
        let message = failed(&r);
        assert!(
            message.starts_with("template t.j2 line 1: from_toml: invalid TOML at line 2 column"),
            "{message}"
        );
    }

    #[test]
    fn base64_round_trip() {
        let t = compile("{{ znode('/a') | b64encode }} {{ znode('/b') | b64decode }}");
        let r = t.render_snap(&Snap::default().data("/a", "hello").data("/b", "aGVsbG8=\n"));
        assert_eq!(done(&r), "aGVsbG8= hello");
    }

    #[test]
    fn b64decode_rejects_bad_input_and_non_utf8() {
        let t = compile("{{ znode('/a') | b64decode }}");
        let message = failed(&t.render_snap(&Snap::default().data("/a", "!!")));
        assert!(message.starts_with("template t.j2 line 1: b64decode: invalid base64"), "{message}");
        let message = failed(&t.render_snap(&Snap::default().data("/a", "/w==")));
        assert_eq!(message, "template t.j2 line 1: b64decode: decoded data is not valid UTF-8");
    }

    #[test]
    fn syntax_error_at_compile_names_template_and_line() {
        let spec = TemplateSpec {
            name: "templates/app.conf.j2".to_owned(),
            path: None,
            text: "ok\n\nport={{ znode('/p' }}\n".to_owned(),
            prefix: None,
        };
        let err = Template::compile(&spec).unwrap_err();
        let RenderError::Template { template, line, .. } = &err;
        assert_eq!((template.as_str(), *line), ("templates/app.conf.j2", Some(3)), "{err}");
        assert!(
            err.to_string().starts_with("template templates/app.conf.j2 line 3: syntax error: "),
            "{err}"
        );
    }

    #[test]
    fn undefined_variable_is_an_error_naming_it() {
        let r = compile("a\n{{ db_url }}\n").render_snap(&Snap::default());
        assert_eq!(failed(&r), "template t.j2 line 2: undefined value \"db_url\"");
    }

    #[test]
    fn deps_are_recorded_when_the_render_fails() {
        let t = compile(
            "{{ znode('/a') }}{{ children('/b', default=[]) }}{{ znode('/missing') }}{{ znode('/never') }}",
        );
        let r = t.render_snap(&Snap::default().data("/a", "x").no_children("/b").missing("/missing"));
        assert!(failed(&r).contains("znode /missing does not exist"));
        assert_eq!(r.deps, [Dep::data(zp("/a")), Dep::children(zp("/b")), Dep::data(zp("/missing"))]);
    }

    #[test]
    fn deps_follow_the_data() {
        let t = compile("{% if exists('/flag') %}{{ znode('/a') }}{% else %}{{ znode('/b') }}{% endif %}");
        let base = || Snap::default().data("/a", "A").data("/b", "B");
        let r = t.render_snap(&base().data("/flag", ""));
        assert_eq!(done(&r), "A");
        assert_eq!(r.deps, data_deps(&["/flag", "/a"]));
        let r = t.render_snap(&base().missing("/flag"));
        assert_eq!(done(&r), "B");
        assert_eq!(r.deps, data_deps(&["/flag", "/b"]));
    }

    #[test]
    fn functions_outside_render_are_an_error() {
        let t = compile("{{ znode('/a') }}");
        let err = t.env.get_template(&t.key).unwrap().render(minijinja::context! {}).unwrap_err();
        assert!(err.to_string().contains("outside Template::render"), "{err}");
    }

    #[test]
    fn missing_znode_is_flagged_by_type_not_by_message() {
        let r = compile("{{ znode('/a') }}").render_snap(&Snap::default().missing("/a"));
        let RenderOutcome::Failed(err) = r.outcome else { panic!("expected Failed") };
        assert!(err.is_missing_znode(), "{err}");
        // The same words from elsewhere (here the data itself) are not a missing znode.
        let t = compile("{{ undefined_thing }}{{ znode('/b') }}");
        let RenderOutcome::Failed(err) = t.render_snap(&Snap::default().data("/b", "x")).outcome else {
            panic!("expected Failed")
        };
        assert!(!err.is_missing_znode(), "{err}");
        let t = compile("{{ znode('/c') | from_json }}");
        let snap = Snap::default().data("/c", "does not exist (give default= to allow this)");
        let RenderOutcome::Failed(err) = t.render_snap(&snap).outcome else { panic!("expected Failed") };
        assert!(!err.is_missing_znode(), "{err}");
    }

    #[test]
    fn templates_compiled_together_share_one_environment_and_render_in_parallel() {
        let a = TemplateSpec {
            name: "a.j2".to_owned(),
            path: None,
            text: "a={{ znode('/a') }}".to_owned(),
            prefix: None,
        };
        let b = TemplateSpec {
            name: "a.j2".to_owned(),
            path: None,
            text: "b={{ znode('/b') }}".to_owned(),
            prefix: None,
        };
        let mut compiled = compile_all([(&a, &[][..]), (&b, &[][..])]);
        let tb = compiled.pop().unwrap().unwrap();
        let ta = compiled.pop().unwrap().unwrap();
        assert!(Arc::ptr_eq(&ta.env, &tb.env), "one environment per configuration");
        let snap = Arc::new(Snap::default().data("/a", "1").data("/b", "2"));
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..200 {
                        assert_eq!(done(&ta.render(&snap)), "a=1");
                        assert_eq!(done(&tb.render(&snap)), "b=2");
                    }
                });
            }
        });
        // Every render released its share of the snapshot.
        assert_eq!(Arc::strong_count(&snap), 1);
    }

    #[test]
    fn templates_with_the_same_text_share_one_compiled_copy_and_keep_their_own_settings() {
        let spec = |name: &str, text: &str, prefix: &str| TemplateSpec {
            name: name.to_owned(),
            path: None,
            text: text.to_owned(),
            prefix: Some(ZnodePath::parse(prefix).unwrap()),
        };
        let (a, b) = (spec("a.j2", "v={{ znode('k') }}", "/a"), spec("b.j2", "v={{ znode('k') }}", "/b"));
        let other = spec("c.j2", "w={{ znode('k') }}", "/a");
        let mut compiled = compile_all([(&a, &[][..]), (&b, &[][..]), (&other, &[][..])]);
        let tc = compiled.pop().unwrap().unwrap();
        let tb = compiled.pop().unwrap().unwrap();
        let ta = compiled.pop().unwrap().unwrap();
        assert_eq!(ta.key, tb.key, "same text, one compiled template");
        assert_ne!(ta.key, tc.key);
        assert_eq!(ta.env.templates().count(), 2);
        let snap = Snap::default().data("/a/k", "1").data("/b/k", "2");
        assert_eq!(done(&ta.render_snap(&snap)), "v=1");
        assert_eq!(done(&tb.render_snap(&snap)), "v=2");
        assert_eq!(done(&tc.render_snap(&snap)), "w=1");
        // A failure names each file's own template, also where the compiled copy is shared.
        let RenderOutcome::Failed(err) =
            tb.render_snap(&Snap::default().data("/a/k", "1").missing("/b/k")).outcome
        else {
            panic!("expected Failed")
        };
        assert!(err.to_string().contains("b.j2"), "{err}");
        let (x, y) = (spec("x.j2", "{% if %}", "/a"), spec("y.j2", "{% if %}", "/a"));
        let errors: Vec<String> = compile_all([(&x, &[][..]), (&y, &[][..])])
            .into_iter()
            .map(|r| r.unwrap_err().to_string())
            .collect();
        assert!(errors[0].contains("x.j2") && errors[1].contains("y.j2"), "{errors:?}");
    }

    #[test]
    fn the_render_scope_is_current_during_the_render_only_even_when_the_engine_panics() {
        // minijinja 2.24 panics on this slice (see Template::render).
        let t = compile("{{ exists('/a') }}{{ \"\"[::-1] }}");
        let message = failed(&t.render_snap(&Snap::default().missing("/a")));
        assert!(message.contains("internal error: "), "{message}");
        assert!(!message.contains("no message"), "the panic's own message is missing: {message}");
        assert!(CURRENT.with_borrow(Option::is_none), "the panicked render's scope was left behind");
        assert!(!rendering());
        let outside = exists("/a").unwrap_err();
        assert!(outside.to_string().contains("outside Template::render"), "{outside}");
        let t = compile("{{ exists('/a') }}");
        assert_eq!(done(&t.render_snap(&Snap::default().data("/a", "x"))), "True");
        assert!(CURRENT.with_borrow(Option::is_none));
    }

    #[test]
    fn a_panic_message_is_its_string_payload() {
        let message = |payload: Box<dyn std::any::Any + Send>| panic_message(payload.as_ref()).to_owned();
        assert_eq!(message(Box::new("static text")), "static text");
        assert_eq!(message(Box::new(String::from("formatted 7"))), "formatted 7");
        assert_eq!(message(Box::new(7_u32)), "no message");
    }

    #[test]
    fn znode_base64_returns_the_raw_bytes() {
        let bytes: Vec<u8> = (0..=255).collect();
        let t = compile("{{ znode('/bin', encoding='base64') }}");
        let r = t.render_snap(&Snap::default().bytes("/bin", &bytes));
        assert_eq!(BASE64.decode(done(&r)).unwrap(), bytes);
        let t = compile("{{ znode('/gone', encoding='base64', default='none') }}");
        assert_eq!(done(&t.render_snap(&Snap::default().missing("/gone"))), "none");
        let t = compile("{{ znode('/bin', encoding='utf-16') }}");
        let message = failed(&t.render_snap(&Snap::default().bytes("/bin", b"x")));
        assert_eq!(
            message,
            "template t.j2 line 1: znode: unknown encoding \"utf-16\", expected \"utf-8\" (the default) or \"base64\""
        );
    }

    /// The tree under /app: db/url, db/pool/size (db itself only a path), name; and a gone
    /// child still listed by its parent.
    fn app_tree() -> Snap {
        Snap::default()
            .children("/app", &["db", "name", "gone"])
            .data("/app/db", "")
            .children("/app/db", &["url", "pool"])
            .data("/app/db/url", "pg://x")
            .children("/app/db/url", &[])
            .data("/app/db/pool", "")
            .children("/app/db/pool", &["size"])
            .data("/app/db/pool/size", "5")
            .children("/app/db/pool/size", &[])
            .data("/app/name", "svc")
            .children("/app/name", &[])
            .missing("/app/gone")
            .no_children("/app/gone")
    }

    #[test]
    fn tree_lists_every_descendant_with_data_and_watches_children_and_data() {
        let t = compile("{% for e in tree('/app') %}{{ e.key }}={{ e.value }}\n{% endfor %}");
        let r = t.render_snap(&app_tree());
        assert_eq!(done(&r), "db/pool/size=5\ndb/url=pg://x\nname=svc\n");
        let mut expected = BTreeSet::from([Dep::children(zp("/app"))]);
        for path in ["db", "db/url", "db/pool", "db/pool/size", "name", "gone"] {
            expected.insert(Dep::data(zp(&format!("/app/{path}"))));
            expected.insert(Dep::children(zp(&format!("/app/{path}"))));
        }
        assert_eq!(
            r.deps,
            Vec::from_iter(expected),
            "children of every znode, data of every descendant, not the root's data (sorted, each once)"
        );
    }

    #[test]
    fn tree_on_a_cold_snapshot_takes_one_pass_per_level() {
        let t = compile_with("{{ tree('app') | length }}", Some("/"));
        let full = app_tree();
        let mut snap = Snap::default();
        let mut passes = 0;
        loop {
            passes += 1;
            let r = t.render_snap(&snap);
            if r.outcome != RenderOutcome::Pending {
                assert_eq!(done(&r), "3");
                break;
            }
            for dep in &r.deps {
                snap.0.insert(dep.clone(), full.0[dep].clone());
            }
        }
        // /app's children; level 1; level 2; level 3; done.
        assert_eq!(passes, 5);
    }

    #[test]
    fn tree_of_a_missing_root_fails_unless_default_and_names_non_utf8() {
        let snap = Snap::default().no_children("/app");
        let message = failed(&compile("{{ tree('/app') }}").render_snap(&snap));
        assert_eq!(message, "template t.j2 line 1: znode /app does not exist (give default= to allow this)");
        assert_eq!(done(&compile("{{ tree('/app', default=[]) | length }}").render_snap(&snap)), "0");
        let snap = Snap::default().children("/r", &["k"]).bytes("/r/k", b"\xff").children("/r/k", &[]);
        let message = failed(&compile("{{ tree('/r') }}").render_snap(&snap));
        assert_eq!(
            message,
            "template t.j2 line 1: znode /r/k: data is not UTF-8 text, which tree() cannot return"
        );
    }

    #[test]
    fn format_filters() {
        let t = compile(concat!(
            "{% set c = znode('/y') | from_yaml %}{{ c | to_json }}",
            "{{ c | to_toml }}{{ c | to_properties }}{{ c | to_yaml }}",
            "{{ (znode('/p') | from_properties)['a b'] }}"
        ));
        let r = t.render_snap(&Snap::default().data("/y", "b: {x: 1}\na: s\n").data("/p", "a\\ b = 2\n"));
        assert_eq!(
            done(&r),
            concat!(
                "{\n  \"a\": \"s\",\n  \"b\": {\n    \"x\": 1\n  }\n}\n",
                "a = \"s\"\n\n[b]\nx = 1\n",
                "a=s\nb.x=1\n",
                "a: s\nb:\n  x: 1\n",
                "2"
            )
        );
        let t = compile("{{ tree('/app') | to_yaml }}");
        assert_eq!(
            done(&t.render_snap(&app_tree())),
            "- key: db/pool/size\n  value: '5'\n- key: db/url\n  value: pg://x\n- key: name\n  value: svc\n"
        );
        let message = failed(&compile("{{ 'x' | to_toml }}").render_snap(&Snap::default()));
        assert_eq!(message, "template t.j2 line 1: to_toml: needs a mapping at the top, got a string");
        let message =
            failed(&compile("{{ znode('/y') | from_yaml }}").render_snap(&Snap::default().data("/y", "[1")));
        assert!(message.starts_with("template t.j2 line 1: from_yaml: invalid YAML: "), "{message}");
    }

    #[test]
    fn template_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Template>();
    }

    // --- lint ---

    fn lint_of(text: &str, prefix: Option<&str>, allow_env: &[&str]) -> Vec<String> {
        let spec = TemplateSpec {
            name: "t.j2".to_owned(),
            path: None,
            text: text.to_owned(),
            prefix: prefix.map(zp),
        };
        let allow: Vec<String> = allow_env.iter().map(|s| (*s).to_owned()).collect();
        lint(&spec, &allow).iter().map(ToString::to_string).collect()
    }

    #[test]
    fn lint_finds_unknown_functions_filters_and_tests_in_every_branch() {
        let text = "{% if znode('/m') == 'x' %}\n{{ frobnicate() }}\n{% else %}\n{{ 'a' | nosuchfilter }}\n\
                    {% endif %}\n{% macro m() %}{{ 1 is nosuchtest }}{% endmacro %}\n";
        assert_eq!(
            lint_of(text, None, &[]),
            [
                "line 2: unknown function `frobnicate`",
                "line 4: unknown filter `nosuchfilter`",
                "line 6: unknown test `nosuchtest`"
            ]
        );
    }

    #[test]
    fn lint_accepts_builtins_our_functions_and_the_templates_own_names() {
        let text = "{% set f = namespace(a=1) %}{% macro m(x) %}{{ x | upper }}{% endmacro %}{{ m('a') }}\n\
                    {% for c in children('/c', default=[]) %}{{ loop.index }}{{ c | b64encode | from_json }}{% endfor %}\n\
                    {{ range(3) | list | join(',') }}{{ exists('/e') }}{{ 'x' is defined }}{{ dict(a=1) | tojson }}\n\
                    {{ env('HOME', default='') }}{{ znode('/a' ~ 'b') }}";
        assert_eq!(lint_of(text, None, &["HOME"]), Vec::<String>::new());
    }

    #[test]
    fn lint_checks_literal_znode_paths_against_the_prefix() {
        let text =
            "{{ znode('db/url') }}\n{{ children('x', default=[]) }}\n{{ exists('/ok') }}{{ znode('/a//b') }}";
        let lints = lint_of(text, None, &[]);
        assert_eq!(lints.len(), 3, "{lints:?}");
        assert!(lints[0].starts_with("line 1: relative znode path \"db/url\" needs a `prefix`"), "{lints:?}");
        assert!(lints[1].starts_with("line 2: relative znode path \"x\""), "{lints:?}");
        assert!(lints[2].starts_with("line 3: "), "{lints:?}");
        let lints = lint_of("{% for e in tree('svc') %}{{ e.key }}{% endfor %}", None, &[]);
        assert_eq!(lints.len(), 1, "{lints:?}");
        assert!(lints[0].starts_with("line 1: relative znode path \"svc\""), "{lints:?}");
        assert_eq!(
            lint_of("{{ znode('db/url') }}{{ children('x', default=[]) }}{{ tree('t') }}", Some("/app"), &[]),
            Vec::<String>::new()
        );
    }

    #[test]
    fn lint_checks_env_names_against_allow_env() {
        assert_eq!(
            lint_of(
                "{{ env('HOME') }}\n{{ env('PATH', default='x') }}\n{{ env('USER', default=znode('/u')) }}",
                None,
                &["PATH"]
            ),
            [
                "line 1: environment variable HOME is not readable: list it in this file's allow_env",
                "line 3: environment variable USER is not readable: list it in this file's allow_env"
            ]
        );
    }

    #[test]
    fn lint_leaves_syntax_errors_to_compile() {
        assert_eq!(lint_of("{{ frobnicate( }}", None, &[]), Vec::<String>::new());
    }
}
