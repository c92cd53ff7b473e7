//! Values shared by every stage: znode paths, dependencies and what was read from them.
//!
//! These types carry no behaviour beyond validation; they are the vocabulary in which
//! `source` reports what ZooKeeper holds and `render`/`pipeline` decide what to write.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::Arc;

/// An absolute, normalised znode path (`/a/b`, or `/` for the root).
///
/// Built only through [`ZnodePath::parse`] or [`ZnodePath::resolve`], so every value in the
/// program is valid: starts with `/`, no empty or `.`/`..` components, no trailing slash.
///
/// Shared, not copied: a clone is a reference count, so the many places that name one znode
/// (its watch loop, the store's tables, every file's dependency set, the status report) hold
/// one allocation between them, and recording what a render read allocates nothing.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ZnodePath(Arc<str>);

/// Why a string is not a usable znode path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZnodePathError {
    #[error("znode path {0:?} must start with \"/\"")]
    NotAbsolute(String),
    #[error("znode path {0:?} has an empty component (\"//\")")]
    EmptyComponent(String),
    #[error("znode path {0:?} may not contain \".\" or \"..\" components")]
    DotComponent(String),
    #[error("znode path {0:?} contains a NUL character")]
    Nul(String),
    #[error("relative znode path {0:?} needs a `prefix` on the file to resolve against")]
    NoPrefix(String),
}

impl ZnodePath {
    /// The root znode, `/`.
    pub fn root() -> Self {
        ZnodePath(Arc::from("/"))
    }

    /// Parses an absolute path. A trailing `/` is dropped (`/a/` is `/a`).
    pub fn parse(s: &str) -> Result<Self, ZnodePathError> {
        if !s.starts_with('/') {
            return Err(ZnodePathError::NotAbsolute(s.to_owned()));
        }
        if s.contains('\0') {
            return Err(ZnodePathError::Nul(s.to_owned()));
        }
        let trimmed = if s.len() > 1 { s.strip_suffix('/').unwrap_or(s) } else { s };
        if trimmed == "/" {
            return Ok(Self::root());
        }
        for part in trimmed[1..].split('/') {
            match part {
                "" => return Err(ZnodePathError::EmptyComponent(s.to_owned())),
                "." | ".." => return Err(ZnodePathError::DotComponent(s.to_owned())),
                _ => {}
            }
        }
        Ok(ZnodePath(Arc::from(trimmed)))
    }

    /// Resolves `s` against `prefix` when it is relative (no leading `/`).
    pub fn resolve(prefix: Option<&ZnodePath>, s: &str) -> Result<Self, ZnodePathError> {
        if s.starts_with('/') {
            return Self::parse(s);
        }
        let Some(prefix) = prefix else {
            return Err(ZnodePathError::NoPrefix(s.to_owned()));
        };
        if s.is_empty() {
            return Ok(prefix.clone());
        }
        Self::parse(&format!("{}/{}", prefix.0.trim_end_matches('/'), s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The path's text, shared (a reference count, not a copy).
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }

    /// `self` with `child` appended as one more component.
    pub fn join(&self, child: &str) -> Result<Self, ZnodePathError> {
        Self::parse(&format!("{}/{}", self.0.trim_end_matches('/'), child))
    }
}

impl fmt::Display for ZnodePath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What of a znode a file depends on, which decides the kind of watch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DepKind {
    /// Its data and existence (`znode()`, `exists()`, raw mappings): a data/exists watch.
    Data,
    /// Its list of children (`children()`): a child watch.
    Children,
}

/// One thing a file depends on: a znode and which aspect of it.
///
/// Hashed as its [`DepKey::parts`], so a map keyed by `Dep` can be searched with a borrowed
/// `(&str, DepKind)` (as `&dyn DepKey`) without building a `Dep`, whose path is an allocation.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Dep {
    pub znode: ZnodePath,
    pub kind: DepKind,
}

/// A dependency by its parts: the znode's path and the kind.
pub trait DepKey {
    fn parts(&self) -> (&str, DepKind);
}

impl DepKey for Dep {
    fn parts(&self) -> (&str, DepKind) {
        (self.znode.as_str(), self.kind)
    }
}

impl DepKey for (&str, DepKind) {
    fn parts(&self) -> (&str, DepKind) {
        (self.0, self.1)
    }
}

impl Hash for Dep {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self as &dyn DepKey).hash(state);
    }
}

impl Hash for dyn DepKey + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        let (znode, kind) = self.parts();
        znode.hash(state);
        kind.hash(state);
    }
}

impl PartialEq for dyn DepKey + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.parts() == other.parts()
    }
}

impl Eq for dyn DepKey + '_ {}

impl<'a> Borrow<dyn DepKey + 'a> for Dep {
    fn borrow(&self) -> &(dyn DepKey + 'a) {
        self
    }
}

impl Dep {
    /// Sorts `deps` and drops the repeats: the order a set of them iterates in. A stable sort:
    /// reads come in runs already in order (a loop over sorted keys), which it merges in
    /// linear time where an unstable sort compared four times as much.
    pub fn sort_unique(deps: &mut Vec<Dep>) {
        deps.sort();
        deps.dedup();
    }

    pub fn data(znode: ZnodePath) -> Self {
        Dep { znode, kind: DepKind::Data }
    }
    pub fn children(znode: ZnodePath) -> Self {
        Dep { znode, kind: DepKind::Children }
    }
}

impl fmt::Display for Dep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            DepKind::Data => write!(f, "{}", self.znode),
            DepKind::Children => write!(f, "{} (children)", self.znode),
        }
    }
}

/// The state of one dependency as last read from ZooKeeper. A missing znode is a value too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// The znode does not exist.
    Missing,
    /// The znode's data. `mzxid`/`version` come from its Stat.
    Data { data: Vec<u8>, mzxid: i64, version: i32 },
    /// The znode's children, sorted by name. `pzxid`/`cversion` come from its Stat.
    Children { names: Vec<String>, pzxid: i64, cversion: i32 },
}

impl Value {
    /// The zxid that produced this value, used to drop reads older than one already seen.
    pub fn zxid(&self) -> Option<i64> {
        match self {
            Value::Missing => None,
            Value::Data { mzxid, .. } => Some(*mzxid),
            Value::Children { pzxid, .. } => Some(*pzxid),
        }
    }
}

/// A fresh read of one dependency, sent from `source` to the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Update {
    pub dep: Dep,
    pub value: Value,
}

/// A template's text and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateSpec {
    /// Name used in messages: the template path as written in the config, or
    /// `inline template of DEST` for `inline`.
    pub name: String,
    /// The resolved template file (None for `inline`); watched by hot reload.
    pub path: Option<std::path::PathBuf>,
    /// The template source, read at load time.
    pub text: String,
    /// Relative znode paths in the template resolve under this.
    pub prefix: Option<ZnodePath>,
}

/// `err` and its causes, one `: `-joined line (causes already in the message are skipped).
/// Every stage logs errors through it (`error::report` is the same function).
pub fn report(err: &dyn std::error::Error) -> String {
    use std::fmt::Write as _;
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dep_is_found_by_its_borrowed_parts() {
        let mut map = std::collections::HashMap::new();
        map.insert(Dep::data(ZnodePath::parse("/a/b").unwrap()), 1);
        map.insert(Dep::children(ZnodePath::parse("/a/b").unwrap()), 2);
        let by = |znode: &str, kind| map.get(&(znode, kind) as &dyn DepKey).copied();
        assert_eq!(by("/a/b", DepKind::Data), Some(1));
        assert_eq!(by("/a/b", DepKind::Children), Some(2));
        assert_eq!(by("/a/c", DepKind::Data), None);
        assert_eq!(by("/a/b/", DepKind::Data), None, "only the normal form is a key");
    }

    #[test]
    fn parse_normalises_trailing_slash() {
        assert_eq!(ZnodePath::parse("/a/b/").unwrap().as_str(), "/a/b");
        assert_eq!(ZnodePath::parse("/").unwrap().as_str(), "/");
    }

    #[test]
    fn parse_rejects_bad_paths() {
        assert!(matches!(ZnodePath::parse("a"), Err(ZnodePathError::NotAbsolute(_))));
        assert!(matches!(ZnodePath::parse("/a//b"), Err(ZnodePathError::EmptyComponent(_))));
        assert!(matches!(ZnodePath::parse("/a/../b"), Err(ZnodePathError::DotComponent(_))));
    }

    #[test]
    fn resolve_relative_under_prefix() {
        let p = ZnodePath::parse("/app").unwrap();
        assert_eq!(ZnodePath::resolve(Some(&p), "db/host").unwrap().as_str(), "/app/db/host");
        assert_eq!(ZnodePath::resolve(Some(&p), "/x").unwrap().as_str(), "/x");
        assert!(matches!(ZnodePath::resolve(None, "x"), Err(ZnodePathError::NoPrefix(_))));
        let root = ZnodePath::root();
        assert_eq!(ZnodePath::resolve(Some(&root), "x").unwrap().as_str(), "/x");
    }
}
