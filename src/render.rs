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
//! | `znode(path, default=...)` | function | the znode's data as UTF-8 text |
//! | `children(path, default=...)` | function | sorted list of child names |
//! | `exists(path)` | function | whether the znode exists |
//! | `from_json`, `from_toml` | filter | string -> value |
//! | `b64encode`, `b64decode` | filter | string -> string (standard alphabet) |
//!
//! A path without a leading `/` resolves under the file's `prefix`.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use minijinja::value::{Kwargs, Value as JValue};
use minijinja::{AutoEscape, Environment, ErrorKind, UndefinedBehavior};

use crate::config::TemplateSpec;
use crate::model::{Dep, Value, ZnodePath};

/// The values known so far. `None` means "not read yet" (not "missing": that is `Value::Missing`).
pub trait Snapshot {
    /// The last value read for `dep`, or `None` if it has not been read yet.
    fn get(&self, dep: &Dep) -> Option<&Value>;
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
    },
}

/// The end of the message for a missing znode read without `default=`.
const MISSING_SUFFIX: &str = "does not exist (give default= to allow this)";

impl RenderError {
    /// True when the render failed because a znode it reads (without `default=`) is missing:
    /// a failure that the znode's creation fixes.
    pub fn is_missing_znode(&self) -> bool {
        let RenderError::Template { message, .. } = self;
        message.ends_with(MISSING_SUFFIX)
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
    /// Every dependency this pass read or tried to read, known or not.
    pub deps: BTreeSet<Dep>,
    /// `Pending` whenever some dependency in `deps` was not in the snapshot.
    pub outcome: RenderOutcome,
}

/// A compiled template. Compile once at startup (or reload), render on every change.
///
/// Every template lives in one shared environment ([`ENV`]) under a unique key: minijinja's
/// builtins (filters, tests, functions) are registered once for the whole process rather
/// than once per file, which at a thousand templated files is several MiB. The template's
/// own settings (prefix, allowed environment variables) travel in the per-render scope.
/// Dropping a `Template` removes it from the environment (config reloads do not leak).
///
/// `Send + Sync`: it holds only its key and settings; the per-render state lives on the
/// rendering thread's stack.
pub struct Template {
    name: String,
    /// Unique key of the compiled template in [`ENV`].
    key: String,
    prefix: Option<ZnodePath>,
    /// `allow_env` names with their values at compile time.
    allowed_env: BTreeMap<String, Option<String>>,
}

/// The one environment every template is compiled into.
static ENV: std::sync::LazyLock<std::sync::Mutex<Environment<'static>>> =
    std::sync::LazyLock::new(|| std::sync::Mutex::new(base_environment()));

/// Tells templates with the same name apart in [`ENV`].
static NEXT_KEY: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn env() -> std::sync::MutexGuard<'static, Environment<'static>> {
    // A panic while rendering (caught in `render`) leaves the environment intact.
    ENV.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
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
    env.add_function("exists", |path: &str| exists(path));
    env.add_function("env", |name: &str, kwargs: Kwargs| env_var(name, &kwargs));
    env.add_filter("from_json", from_json);
    env.add_filter("from_toml", from_toml);
    env.add_filter("b64encode", b64encode);
    env.add_filter("b64decode", b64decode);
    env
}

impl Drop for Template {
    fn drop(&mut self) {
        env().remove_template(&self.key);
    }
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
    pub fn compile_with_env(spec: &TemplateSpec, allow_env: &[String]) -> Result<Template, RenderError> {
        let id = NEXT_KEY.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = format!("{id}:{}", spec.name);
        env()
            .add_template_owned(key.clone(), spec.text.clone())
            .map_err(|err| template_error(&spec.name, &err, &spec.text))?;
        let allowed_env = allow_env.iter().map(|name| (name.clone(), std::env::var(name).ok())).collect();
        Ok(Template { name: spec.name.clone(), key, prefix: spec.prefix.clone(), allowed_env })
    }

    /// [`TemplateSpec::name`]: the name used in messages.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Renders against `snapshot`, recording every dependency touched. Pure: no I/O.
    ///
    /// The outcome is `Pending` if any dependency is not in the snapshot yet, otherwise
    /// `Done` or `Failed`. See the module docs for how dependencies are discovered.
    pub fn render(&self, snapshot: &dyn Snapshot) -> Rendered {
        let scope = Scope {
            snapshot,
            prefix: self.prefix.as_ref(),
            allowed_env: &self.allowed_env,
            deps: RefCell::default(),
            unknown: Cell::new(false),
        };
        let env = env();
        let result = match env.get_template(&self.key) {
            // A panic inside the template engine (minijinja 2.24 panics on some slices of empty
            // values, e.g. `""[::-1]`) must not take the agent down: it becomes a render error
            // for this file, which keeps its last good contents.
            Ok(template) => std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                with_active_scope(&scope, || template.render(minijinja::context! {}))
            }))
            .unwrap_or_else(|_| {
                Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "the template engine failed on this template (an internal error); simplify the expression",
                ))
            })
            .map_err(|err| template_error(&self.name, &err, template.source())),
            // Unreachable: compile() registered it under this name.
            Err(err) => Err(template_error(&self.name, &err, "")),
        };
        let outcome = match result {
            _ if scope.unknown.get() => RenderOutcome::Pending,
            Ok(text) => RenderOutcome::Done(text.into_bytes()),
            Err(err) => RenderOutcome::Failed(err),
        };
        Rendered { deps: scope.deps.into_inner(), outcome }
    }
}

// --- Per-render state -------------------------------------------------------------------
//
// Why a thread-local: minijinja only accepts `'static` functions and `'static` context
// objects, but the snapshot is borrowed for the duration of one `render()` call and the
// dependencies found must come back out of it. Copying the snapshot into an owned object,
// or rendering repeatedly against an owned cache, would cost a copy of every value or a pass
// per dependency level. Rendering is synchronous and stays on the calling thread, so
// `render()` instead publishes a pointer to its stack-allocated `Scope` in a thread-local for
// exactly as long as minijinja runs (`with_active_scope`), and the functions reach it through
// `with_scope`. `Template` itself holds no per-render state, so it stays `Send + Sync` and
// renders may run on any number of threads at once, each with its own scope.

/// What one render pass reads from and records into.
struct Scope<'a> {
    snapshot: &'a dyn Snapshot,
    /// The template's `prefix`: relative znode paths resolve under it.
    prefix: Option<&'a ZnodePath>,
    /// The template's `allow_env` names and values.
    allowed_env: &'a BTreeMap<String, Option<String>>,
    /// Every dependency touched so far.
    deps: RefCell<BTreeSet<Dep>>,
    /// Whether some dependency was not in the snapshot.
    unknown: Cell<bool>,
}

impl<'a> Scope<'a> {
    /// Records `dep` and returns its value; `None` (not read yet) marks the pass as pending.
    fn read(&self, dep: &Dep) -> Option<&'a Value> {
        let value = self.snapshot.get(dep);
        if value.is_none() {
            self.unknown.set(true);
        }
        let mut deps = self.deps.borrow_mut();
        if !deps.contains(dep) {
            deps.insert(dep.clone());
        }
        value
    }
}

thread_local! {
    /// The scope of the render running on this thread; null when none is.
    static ACTIVE: Cell<*const Scope<'static>> = const { Cell::new(std::ptr::null()) };
}

/// Runs `f` with `scope` as this thread's active scope, then restores the previous one
/// (also if `f` panics), so the pointer never outlives the borrow of `scope`.
fn with_active_scope<R>(scope: &Scope<'_>, f: impl FnOnce() -> R) -> R {
    struct Restore(*const Scope<'static>);
    impl Drop for Restore {
        fn drop(&mut self) {
            ACTIVE.with(|active| active.set(self.0));
        }
    }
    let ptr: *const Scope<'_> = scope;
    let _restore = Restore(ACTIVE.with(|active| active.replace(ptr.cast())));
    f()
}

/// Calls `f` with the active scope; an error if no render is running on this thread.
fn with_scope<R>(f: impl FnOnce(&Scope<'_>) -> Result<R, minijinja::Error>) -> Result<R, minijinja::Error> {
    let ptr = ACTIVE.with(Cell::get);
    // SAFETY: a non-null pointer was set by `with_active_scope` on this thread from a
    // `&Scope` that is borrowed until that call returns, and that call is still on the stack
    // below us (it restores the previous value on return and on unwind). The `'static` in
    // the pointer's type is never seen: `f` takes the scope at an arbitrary (higher-ranked)
    // lifetime, so it cannot keep the reference or anything borrowed from it.
    match unsafe { ptr.as_ref() } {
        Some(scope) => f(scope),
        None => Err(fail("bug: znode functions called outside Template::render".to_owned())),
    }
}

// --- Functions --------------------------------------------------------------------------

/// Marks an error raised by this module: its detail is the whole message.
#[derive(Debug)]
struct Ours;

impl fmt::Display for Ours {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("zkrender")
    }
}

impl std::error::Error for Ours {}

/// An error whose message is shown as is (minijinja adds template and line).
fn fail(message: String) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, message).with_source(Ours)
}

/// `path` resolved under the rendering template's prefix.
fn resolve(path: &str) -> Result<ZnodePath, minijinja::Error> {
    with_scope(|scope| ZnodePath::resolve(scope.prefix, path).map_err(|err| fail(err.to_string())))
}

/// `env(name, default=...)`: an environment variable the file's `allow_env` lists.
fn env_var(name: &str, kwargs: &Kwargs) -> Result<JValue, minijinja::Error> {
    let default = default_arg(kwargs)?;
    let value = with_scope(|scope| Ok(scope.allowed_env.get(name).cloned()))?;
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

fn does_not_exist(znode: &ZnodePath) -> minijinja::Error {
    fail(format!("znode {znode} {MISSING_SUFFIX}"))
}

/// A value of the wrong kind for the dependency: the snapshot broke its contract.
fn wrong_kind(dep: &Dep) -> minijinja::Error {
    fail(format!("bug: snapshot holds a value of the wrong kind for {dep}"))
}

/// `znode(path, default=...)`: the data as UTF-8 text.
fn znode(path: &str, kwargs: &Kwargs) -> Result<JValue, minijinja::Error> {
    let default = default_arg(kwargs)?;
    let dep = Dep::data(resolve(path)?);
    with_scope(|scope| match scope.read(&dep) {
        None => Ok(default.unwrap_or_else(|| JValue::from(""))),
        Some(Value::Missing) => default.ok_or_else(|| does_not_exist(&dep.znode)),
        Some(Value::Data { data, .. }) => match std::str::from_utf8(data) {
            Ok(text) => Ok(JValue::from(text)),
            Err(err) => Err(fail(format!(
                "znode {} holds data that is not valid UTF-8 (invalid byte at offset {})",
                dep.znode,
                err.valid_up_to()
            ))),
        },
        Some(Value::Children { .. }) => Err(wrong_kind(&dep)),
    })
}

/// `children(path, default=...)`: the sorted child names.
fn children(path: &str, kwargs: &Kwargs) -> Result<JValue, minijinja::Error> {
    let default = default_arg(kwargs)?;
    let dep = Dep::children(resolve(path)?);
    with_scope(|scope| match scope.read(&dep) {
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
    })
}

/// `exists(path)`: whether the znode exists (a data dependency).
fn exists(path: &str) -> Result<bool, minijinja::Error> {
    let dep = Dep::data(resolve(path)?);
    with_scope(|scope| Ok(!matches!(scope.read(&dep), None | Some(Value::Missing))))
}

// --- Filters ----------------------------------------------------------------------------

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
    let ours = std::error::Error::source(err).is_some_and(|source| source.is::<Ours>());
    let message = match err.detail() {
        Some(detail) if ours => detail.to_owned(),
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
    RenderError::Template { template: template.to_owned(), line: err.line(), message }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use super::*;

    /// A snapshot built from plain values; deps not added are "not read yet".
    #[derive(Default)]
    struct Snap(HashMap<Dep, Value>);

    impl Snapshot for Snap {
        fn get(&self, dep: &Dep) -> Option<&Value> {
            self.0.get(dep)
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
        assert_eq!(done(&t.render(&Snap::default())), path);
        let t = compile_env("{{ env('PATH') }}", &[]);
        assert!(
            failed(&t.render(&Snap::default())).contains("not readable: list it in this file's allow_env")
        );
    }

    #[test]
    fn env_unset_needs_a_default() {
        let name = "ZKRENDER_TEST_SURELY_UNSET_VAR";
        let t = compile_env(&format!("{{{{ env('{name}') }}}}"), &[name]);
        assert!(failed(&t.render(&Snap::default())).contains("is not set"));
        let t = compile_env(&format!("{{{{ env('{name}', default='d') }}}}"), &[name]);
        assert_eq!(done(&t.render(&Snap::default())), "d");
    }

    fn data_deps(paths: &[&str]) -> BTreeSet<Dep> {
        paths.iter().map(|path| Dep::data(zp(path))).collect()
    }

    #[test]
    fn znode_renders_data_and_keeps_trailing_newline() {
        let t = compile("url={{ znode('/db/url') }}\n");
        let r = t.render(&Snap::default().data("/db/url", "pg://a"));
        assert_eq!(done(&r), "url=pg://a\n");
        assert_eq!(r.deps, data_deps(&["/db/url"]));
        assert_eq!(t.name(), "t.j2");
    }

    #[test]
    fn no_auto_escaping() {
        let t = compile("{{ znode('/a') }}");
        assert_eq!(done(&t.render(&Snap::default().data("/a", "<b>&'\""))), "<b>&'\"");
    }

    #[test]
    fn default_is_used_for_a_missing_znode() {
        let t = compile("{{ znode('/a', default='x') }} {{ znode('/b', default=none) is none }}");
        let r = t.render(&Snap::default().missing("/a").missing("/b"));
        assert_eq!(done(&r), "x True");
    }

    #[test]
    fn missing_znode_without_default_fails_naming_znode_and_line() {
        let t = compile("a\nb\nurl={{ znode('/db/url') }}\n");
        let r = t.render(&Snap::default().missing("/db/url"));
        assert_eq!(
            failed(&r),
            "template t.j2 line 3: znode /db/url does not exist (give default= to allow this)"
        );
    }

    #[test]
    fn unknown_keyword_argument_is_an_error() {
        let t = compile("{{ znode('/a', defualt='x') }}");
        let message = failed(&t.render(&Snap::default().missing("/a")));
        assert!(message.contains("unknown keyword argument 'defualt'"), "{message}");
    }

    #[test]
    fn unknown_deps_are_all_found_in_one_pass_and_make_it_pending() {
        let t = compile("{{ znode('/a') }}{{ znode('/b', default='d') }}{{ exists('/c') }}");
        let r = t.render(&Snap::default());
        assert_eq!(r.outcome, RenderOutcome::Pending);
        assert_eq!(r.deps, data_deps(&["/a", "/b", "/c"]));
    }

    #[test]
    fn error_caused_by_a_placeholder_is_pending_not_failed() {
        let t = compile("{{ (znode('/cfg') | from_json).port }}");
        let r = t.render(&Snap::default());
        assert_eq!(r.outcome, RenderOutcome::Pending);
        assert_eq!(r.deps, data_deps(&["/cfg"]));
    }

    #[test]
    fn children_are_sorted() {
        let t = compile("{{ children('/svc') | join(',') }}");
        let r = t.render(&Snap::default().children("/svc", &["b", "c", "a"]));
        assert_eq!(done(&r), "a,b,c");
        assert_eq!(r.deps, BTreeSet::from([Dep::children(zp("/svc"))]));
    }

    #[test]
    fn children_of_a_missing_parent_fails_unless_default() {
        let snap = Snap::default().no_children("/svc");
        let message = failed(&compile("{{ children('/svc') }}").render(&snap));
        assert_eq!(message, "template t.j2 line 1: znode /svc does not exist (give default= to allow this)");
        let t = compile("{{ children('/svc', default=['none']) | join(',') }}");
        assert_eq!(done(&t.render(&snap)), "none");
    }

    #[test]
    fn loop_over_children_discovers_every_child_in_one_pass() {
        let t = compile("{% for c in children('/svc') %}{{ c }}={{ znode('/svc/' ~ c) }}\n{% endfor %}");
        let names: Vec<String> = (0..1000).rev().map(|i| format!("n{i:04}")).collect();
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();

        // Pass 1: only the child list is found.
        let mut snap = Snap::default();
        let r = t.render(&snap);
        assert_eq!(r.outcome, RenderOutcome::Pending);
        assert_eq!(r.deps, BTreeSet::from([Dep::children(zp("/svc"))]));

        // Pass 2: all 1,000 children at once.
        snap = snap.children("/svc", &name_refs);
        let r = t.render(&snap);
        assert_eq!(r.outcome, RenderOutcome::Pending);
        assert_eq!(r.deps.len(), 1001);
        assert!(names.iter().all(|n| r.deps.contains(&Dep::data(zp(&format!("/svc/{n}"))))));

        // Pass 3: done, in sorted order.
        for name in &names {
            snap = snap.data(&format!("/svc/{name}"), &format!("v{name}"));
        }
        let r = t.render(&snap);
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
        let r = t.render(&snap);
        let elapsed = start.elapsed();
        assert_eq!(done(&r).len(), 6000);
        // Generous even for an unoptimised build on a busy machine (release: ~1.3 ms).
        assert!(elapsed < Duration::from_millis(500), "{elapsed:?}");
    }

    #[test]
    fn exists_is_a_data_dependency() {
        let t = compile("{{ exists('/a') }} {{ exists('/b') }}");
        let r = t.render(&Snap::default().data("/a", "").missing("/b"));
        assert_eq!(done(&r), "True False");
        assert_eq!(r.deps, data_deps(&["/a", "/b"]));
        let r = t.render(&Snap::default().data("/a", ""));
        assert_eq!(r.outcome, RenderOutcome::Pending);
    }

    #[test]
    fn relative_paths_resolve_under_the_prefix() {
        let t = compile_with(
            "{{ znode('db/url') }} {{ children('svc') | join }} {{ znode('/abs') }}",
            Some("/app"),
        );
        let snap = Snap::default().data("/app/db/url", "u").children("/app/svc", &["x"]).data("/abs", "a");
        let r = t.render(&snap);
        assert_eq!(done(&r), "u x a");
        assert_eq!(
            r.deps,
            BTreeSet::from([
                Dep::data(zp("/app/db/url")),
                Dep::children(zp("/app/svc")),
                Dep::data(zp("/abs"))
            ])
        );
    }

    #[test]
    fn relative_path_without_prefix_fails() {
        let r = compile("{{ znode('db/url') }}").render(&Snap::default());
        assert_eq!(
            failed(&r),
            "template t.j2 line 1: relative znode path \"db/url\" needs a `prefix` on the file to resolve against"
        );
        assert!(r.deps.is_empty());
    }

    #[test]
    fn invalid_znode_path_fails() {
        let r = compile("{{ znode('/a//b') }}").render(&Snap::default());
        assert!(failed(&r).contains("empty component"));
    }

    #[test]
    fn non_utf8_data_fails_naming_the_znode() {
        let r = compile("{{ znode('/bin') }}").render(&Snap::default().bytes("/bin", b"ok\xff"));
        assert_eq!(
            failed(&r),
            "template t.j2 line 1: znode /bin holds data that is not valid UTF-8 (invalid byte at offset 2)"
        );
    }

    #[test]
    fn from_json_parses_documents() {
        let t = compile("{% set c = znode('/c') | from_json %}{{ c.db.port }} {{ c.hosts | join(',') }}");
        let r = t.render(&Snap::default().data("/c", r#"{"db": {"port": 5432}, "hosts": ["a", "b"]}"#));
        assert_eq!(done(&r), "5432 a,b");
    }

    #[test]
    fn from_json_reports_bad_json() {
        let r = compile("\n{{ znode('/c') | from_json }}").render(&Snap::default().data("/c", "{"));
        assert_eq!(
            failed(&r),
            "template t.j2 line 2: from_json: invalid JSON: EOF while parsing an object at line 1 column 1"
        );
    }

    #[test]
    fn from_toml_parses_documents() {
        let t = compile("{% set c = znode('/c') | from_toml %}{{ c.db.port }} {{ c.name }} {{ c.when }}");
        let toml = "name = \"x\"\nwhen = 1979-05-27T07:32:00Z\n[db]\nport = 5432\n";
        let r = t.render(&Snap::default().data("/c", toml));
        assert_eq!(done(&r), "5432 x 1979-05-27T07:32:00Z");
    }

    #[test]
    fn from_toml_reports_bad_toml_with_position() {
        let r = compile("{{ znode('/c') | from_toml }}").render(&Snap::default().data("/c", "a = 1\nb = \n"));
        let message = failed(&r);
        assert!(
            message.starts_with("template t.j2 line 1: from_toml: invalid TOML at line 2 column"),
            "{message}"
        );
    }

    #[test]
    fn base64_round_trip() {
        let t = compile("{{ znode('/a') | b64encode }} {{ znode('/b') | b64decode }}");
        let r = t.render(&Snap::default().data("/a", "hello").data("/b", "aGVsbG8=\n"));
        assert_eq!(done(&r), "aGVsbG8= hello");
    }

    #[test]
    fn b64decode_rejects_bad_input_and_non_utf8() {
        let t = compile("{{ znode('/a') | b64decode }}");
        let message = failed(&t.render(&Snap::default().data("/a", "!!")));
        assert!(message.starts_with("template t.j2 line 1: b64decode: invalid base64"), "{message}");
        let message = failed(&t.render(&Snap::default().data("/a", "/w==")));
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
        let r = compile("a\n{{ db_url }}\n").render(&Snap::default());
        assert_eq!(failed(&r), "template t.j2 line 2: undefined value \"db_url\"");
    }

    #[test]
    fn deps_are_recorded_when_the_render_fails() {
        let t = compile(
            "{{ znode('/a') }}{{ children('/b', default=[]) }}{{ znode('/missing') }}{{ znode('/never') }}",
        );
        let r = t.render(&Snap::default().data("/a", "x").no_children("/b").missing("/missing"));
        assert!(failed(&r).contains("znode /missing does not exist"));
        assert_eq!(
            r.deps,
            BTreeSet::from([Dep::data(zp("/a")), Dep::children(zp("/b")), Dep::data(zp("/missing"))])
        );
    }

    #[test]
    fn deps_follow_the_data() {
        let t = compile("{% if exists('/flag') %}{{ znode('/a') }}{% else %}{{ znode('/b') }}{% endif %}");
        let base = || Snap::default().data("/a", "A").data("/b", "B");
        let r = t.render(&base().data("/flag", ""));
        assert_eq!(done(&r), "A");
        assert_eq!(r.deps, data_deps(&["/flag", "/a"]));
        let r = t.render(&base().missing("/flag"));
        assert_eq!(done(&r), "B");
        assert_eq!(r.deps, data_deps(&["/flag", "/b"]));
    }

    #[test]
    fn functions_outside_render_are_an_error() {
        let err = with_scope(|_| Ok(())).unwrap_err();
        assert!(err.to_string().contains("outside Template::render"));
    }

    #[test]
    fn template_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Template>();
    }
}
