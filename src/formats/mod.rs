//! Whole subtrees as files, and the format filters of templates (pure: no I/O, no ZooKeeper).
//!
//! A `[[file]]` with `tree = "/app/config"` and `format = "json" | "yaml" | "toml" |
//! "properties" | "env"` renders every znode under `/app/config` without a template; templates
//! get the same subtree from `tree(path)` and the filters `to_json`, `to_yaml`, `to_toml`,
//! `to_properties`, `from_yaml` and `from_properties`. This module holds the data model and the
//! emitters and parsers; reading the tree from ZooKeeper and wiring the filters into the
//! template environment happen elsewhere.
//!
//! # The subtree
//!
//! [`Subtree::new`] takes every descendant of the root znode (the root itself is not part of
//! it), each as a key relative to the root (`db/url` for `/app/config/db/url`) with its data.
//! What is kept:
//!
//! - a znode that holds data (non-empty) is an entry;
//! - a leaf znode (no children) with empty data is an entry whose value is the empty string:
//!   a setting deliberately set to `""` stays visible;
//! - a znode with children and no data is only a path (as intermediate znodes made by
//!   `create -p` or Curator are), and contributes nothing of its own.
//!
//! Entries are sorted segment by segment (`a/b` before `a-b/c`, so a znode's descendants
//! follow it directly); every emitter writes them in that order, so output is deterministic
//! byte for byte. Values are text: data that is not UTF-8 is an error naming the znode.
//!
//! # A znode with both data and children
//!
//! In the nested formats (JSON, YAML, TOML) a znode is either a string or an object. When
//! `/app/config/db` holds data and also has children, the object for `db` holds the children
//! by name and the znode's own data under the reserved key [`VALUE_KEY`] (`"_value"`):
//! nothing is dropped, and a reader that only wants the children ignores one key. A child
//! actually named `_value` next to data on its parent is an error naming that parent. The flat
//! formats need no such rule: `db=...` and `db.url=...` are separate lines.
//!
//! # Java `.properties`
//!
//! Writing follows `java.util.Properties.store(OutputStream)` (without its date comment; each
//! line is the one Java writes, checked against OpenJDK 17 on 1,700 generated pairs), so a
//! Java program reads back exactly the strings written:
//!
//! - `\` is written `\\`; `=`, `:`, `#` and `!` are escaped with a backslash, in keys and
//!   values alike;
//! - tab, newline, carriage return and form feed are written `\t`, `\n`, `\r`, `\f`;
//! - every space in a key is written `\ `; in a value only a leading space is (trailing and
//!   inner spaces are kept as they are, as Java does);
//! - every other character below U+0020 or above U+007E is written `\uXXXX` (upper-case hex,
//!   UTF-16 code units: characters beyond U+FFFF become a surrogate pair), so the file is
//!   ASCII and reads the same as ISO-8859-1 (`Properties.load(InputStream)`) or UTF-8.
//!
//! Reading ([`parse_properties`], the `from_properties` filter) follows
//! `Properties.load(Reader)`: natural lines end at `\n`, `\r` or `\r\n`; leading whitespace
//! (space, tab, form feed) is skipped; a line whose first other character is `#` or `!` is a
//! comment; a line ending in an odd number of backslashes continues on the next line (whose
//! leading whitespace is skipped); the key ends at the first unescaped `=`, `:` or whitespace,
//! after which whitespace and at most one `=` or `:` are skipped; escapes are `\t`, `\n`, `\r`,
//! `\f`, `\uXXXX` (exactly four hex digits, else an error naming the line), and a backslash
//! before any other character stands for that character. A later key replaces an earlier one.
//!
//! # env
//!
//! `A_B_C='value'` lines, for `. file` in a shell or `set -a`: the name is the key with
//! ASCII letters upper-cased and every character other than an ASCII letter or digit (the `/`
//! between segments included) replaced by `_`, prefixed with `_` if it would start with a digit.
//! The value is single-quoted, each `'` written `'\''`, so no character is special to the
//! shell. A NUL byte cannot be in a shell variable and is an error naming the znode; two
//! znodes that map to the same name (`a-b` and `a_b`) are an error naming both.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::collections::btree_map;
use std::fmt;
use std::str::FromStr;

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::Value;

/// Where a znode's own data goes when it also has children, in the nested formats.
pub const VALUE_KEY: &str = "_value";

/// `format = "..."` of a tree file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    Json,
    Yaml,
    Toml,
    Properties,
    Env,
}

impl Format {
    /// Every format, in the order the documentation lists them.
    pub const ALL: [Format; 5] = [Format::Json, Format::Yaml, Format::Toml, Format::Properties, Format::Env];

    /// The name used in the config and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Yaml => "yaml",
            Format::Toml => "toml",
            Format::Properties => "properties",
            Format::Env => "env",
        }
    }
}

impl fmt::Display for Format {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Format::ALL.into_iter().find(|format| format.name() == s).ok_or_else(|| {
            format!(
                "unknown format {s:?}, expected one of \"json\", \"yaml\", \"toml\", \"properties\", \"env\""
            )
        })
    }
}

/// Failures of the emitters and parsers. Subtree errors name the znode; filter errors name
/// the filter and, where there is one, the key path or line.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("tree {root}: {key:?} is not a relative key of non-empty `/`-separated segments")]
    BadKey { root: String, key: String },
    #[error("tree {root}: znode {znode} is listed twice")]
    DuplicateKey { root: String, znode: String },
    #[error("znode {znode}: data is not UTF-8 text, which format {format} cannot hold")]
    NotUtf8 { znode: String, format: Format },
    #[error("znode {znode}: data is not UTF-8 text, which tree() cannot return")]
    NotUtf8Listing { znode: String },
    #[error(
        "znode {znode} has data and a child named \"{VALUE_KEY}\"; format {format} puts a znode's own data \
         under \"{VALUE_KEY}\" when it has children, so the two would collide"
    )]
    ValueKeyTaken { znode: String, format: Format },
    #[error("znodes {first} and {second} both become {format} key {key:?}")]
    KeyCollision { format: Format, key: String, first: String, second: String },
    #[error("znode {znode}: data contains a NUL byte, which a shell variable (format env) cannot hold")]
    Nul { znode: String },
    #[error("{filter}: keys {first:?} and {second:?} both become {key:?}")]
    ValueKeyCollision { filter: &'static str, key: String, first: String, second: String },
    #[error("{filter}: needs a mapping at the top, got {kind}")]
    NotAMapping { filter: &'static str, kind: &'static str },
    #[error("to_toml: TOML has no null (at {path})")]
    TomlNull { path: String },
    #[error("{what}: {message}")]
    Emit { what: String, message: String },
    #[error("from_yaml: invalid YAML: {0}")]
    Yaml(#[source] serde_norway::Error),
    #[error("from_yaml: {path}: {message}")]
    YamlValue { path: String, message: String },
    #[error("from_properties: line {line}: {message}")]
    Properties { line: usize, message: String },
}

// --- The subtree -------------------------------------------------------------------------

/// One znode of a [`Subtree`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative to the tree's root, `/`-separated, never empty (`db/url`).
    pub key: String,
    /// The znode's data, as stored.
    pub value: Vec<u8>,
}

/// The znodes under one root, as a `tree` file or `tree(path)` sees them (see the module
/// docs for which znodes are kept). Invariant: keys valid, unique, sorted by segments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subtree {
    root: String,
    entries: Vec<Entry>,
}

/// Orders keys segment by segment, so that `a/b` sorts before `a-b` and a znode's
/// descendants follow it directly.
fn key_order(a: &str, b: &str) -> Ordering {
    a.split('/').cmp(b.split('/'))
}

impl Subtree {
    /// Builds the subtree of `root` (an absolute znode path, for messages) from every
    /// descendant as `(relative key, data)`, in any order.
    ///
    /// # Errors
    /// [`FormatError::BadKey`] for an empty key, an empty segment or a leading or trailing
    /// `/`; [`FormatError::DuplicateKey`] for a key given twice.
    pub fn new<K, V>(root: &str, entries: impl IntoIterator<Item = (K, V)>) -> Result<Subtree, FormatError>
    where
        K: Into<String>,
        V: Into<Vec<u8>>,
    {
        let mut all: Vec<Entry> = Vec::new();
        for (key, value) in entries {
            let key = key.into();
            if key.split('/').any(str::is_empty) {
                return Err(FormatError::BadKey { root: root.to_owned(), key });
            }
            all.push(Entry { key, value: value.into() });
        }
        all.sort_by(|a, b| key_order(&a.key, &b.key));
        if let Some(pair) = all.windows(2).find(|pair| pair[0].key == pair[1].key) {
            let znode = join(root, &pair[0].key);
            return Err(FormatError::DuplicateKey { root: root.to_owned(), znode });
        }
        // Sorted by segments, a znode's first descendant (if any) is the next entry.
        let has_children: Vec<bool> = (0..all.len())
            .map(|i| {
                all.get(i + 1).is_some_and(|next| {
                    next.key.strip_prefix(all[i].key.as_str()).is_some_and(|rest| rest.starts_with('/'))
                })
            })
            .collect();
        let entries = all
            .into_iter()
            .zip(has_children)
            .filter(|(entry, has_children)| !entry.value.is_empty() || !has_children)
            .map(|(entry, _)| entry)
            .collect();
        Ok(Subtree { root: root.to_owned(), entries })
    }

    /// The root znode, as given.
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The kept znodes, sorted by key segments.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The absolute path of the znode at `key`.
    pub fn znode(&self, key: &str) -> String {
        join(&self.root, key)
    }

    /// Renders the subtree in `format`. Output ends with a newline unless empty.
    ///
    /// # Errors
    /// Data that is not UTF-8, and the format-specific errors in the module docs, each
    /// naming the znode(s).
    pub fn render(&self, format: Format) -> Result<String, FormatError> {
        match format {
            Format::Json => {
                let tree = self.nested(format)?;
                let mut out = serde_json::to_string_pretty(&tree)
                    .map_err(|err| emit_error(format!("tree {} as json", self.root), err))?;
                out.push('\n');
                Ok(out)
            }
            Format::Yaml => serde_norway::to_string(&self.nested(format)?)
                .map_err(|err| emit_error(format!("tree {} as yaml", self.root), err)),
            Format::Toml => toml::to_string(&self.nested(format)?)
                .map_err(|err| emit_error(format!("tree {} as toml", self.root), err)),
            Format::Properties => self.properties(),
            Format::Env => self.env(),
        }
    }

    /// What `tree(path)` returns in templates: a list of `{"key": ..., "value": ...}` objects
    /// in entry order, values as text.
    ///
    /// # Errors
    /// [`FormatError::NotUtf8Listing`] naming the first znode whose data is not UTF-8.
    pub fn listing(&self) -> Result<Value, FormatError> {
        self.entries
            .iter()
            .map(|entry| match std::str::from_utf8(&entry.value) {
                Ok(text) => Ok(serde_json::json!({"key": entry.key, "value": text})),
                Err(_) => Err(FormatError::NotUtf8Listing { znode: self.znode(&entry.key) }),
            })
            .collect::<Result<Vec<Value>, FormatError>>()
            .map(Value::Array)
    }

    /// Each entry's value as text, or [`FormatError::NotUtf8`] naming the znode.
    fn texts(&self, format: Format) -> Result<Vec<(&str, &str)>, FormatError> {
        self.entries
            .iter()
            .map(|entry| match std::str::from_utf8(&entry.value) {
                Ok(text) => Ok((entry.key.as_str(), text)),
                Err(_) => Err(FormatError::NotUtf8 { znode: self.znode(&entry.key), format }),
            })
            .collect()
    }

    /// The nested form of JSON, YAML and TOML: objects by path segment, strings as values,
    /// a znode with data and children holding its data under [`VALUE_KEY`].
    fn nested(&self, format: Format) -> Result<Node, FormatError> {
        let mut root = BTreeMap::new();
        for (key, text) in self.texts(format)? {
            let segments: Vec<&str> = key.split('/').collect();
            let (last, parents) = segments.split_last().expect("bug: keys have at least one segment");
            let mut map = &mut root;
            for (depth, segment) in parents.iter().enumerate() {
                let node = map.entry((*segment).to_owned()).or_insert_with(|| Node::Branch(BTreeMap::new()));
                if let Node::Leaf(data) = node {
                    let data = std::mem::take(data);
                    *node = Node::Branch(BTreeMap::from([(VALUE_KEY.to_owned(), Node::Leaf(data))]));
                }
                let Node::Branch(children) = node else { unreachable!("made a branch above") };
                if depth + 1 == parents.len() && *last == VALUE_KEY && children.contains_key(VALUE_KEY) {
                    let parent = self.znode(&segments[..parents.len()].join("/"));
                    return Err(FormatError::ValueKeyTaken { znode: parent, format });
                }
                map = children;
            }
            match map.entry((*last).to_owned()) {
                btree_map::Entry::Vacant(slot) => {
                    slot.insert(Node::Leaf(text.to_owned()));
                }
                // Sorted input puts a znode before its children, so this is only reached if
                // that ever changes; the rule stays the same.
                btree_map::Entry::Occupied(mut slot) => match slot.get_mut() {
                    Node::Branch(children) if !children.contains_key(VALUE_KEY) => {
                        children.insert(VALUE_KEY.to_owned(), Node::Leaf(text.to_owned()));
                    }
                    _ => return Err(FormatError::ValueKeyTaken { znode: self.znode(key), format }),
                },
            }
        }
        Ok(Node::Branch(root))
    }

    fn properties(&self) -> Result<String, FormatError> {
        let mut out = String::new();
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for (key, text) in self.texts(Format::Properties)? {
            let dotted = key.replace('/', ".");
            if let Some(first) = seen.insert(dotted.clone(), key) {
                return Err(FormatError::KeyCollision {
                    format: Format::Properties,
                    key: dotted,
                    first: self.znode(first),
                    second: self.znode(key),
                });
            }
            write_property(&mut out, &dotted, text);
        }
        Ok(out)
    }

    fn env(&self) -> Result<String, FormatError> {
        let mut out = String::new();
        let mut seen: BTreeMap<String, &str> = BTreeMap::new();
        for (key, text) in self.texts(Format::Env)? {
            if text.contains('\0') {
                return Err(FormatError::Nul { znode: self.znode(key) });
            }
            let name = env_name(key);
            if let Some(first) = seen.insert(name.clone(), key) {
                return Err(FormatError::KeyCollision {
                    format: Format::Env,
                    key: name,
                    first: self.znode(first),
                    second: self.znode(key),
                });
            }
            out.push_str(&name);
            out.push('=');
            out.push_str(&shell_quote(text));
            out.push('\n');
        }
        Ok(out)
    }
}

fn join(root: &str, key: &str) -> String {
    format!("{}/{key}", root.trim_end_matches('/'))
}

fn emit_error(what: String, err: impl fmt::Display) -> FormatError {
    FormatError::Emit { what, message: err.to_string() }
}

/// A subtree in nested form. A `BTreeMap`, not a `serde_json::Map`, so key order does not
/// depend on serde_json's `preserve_order` feature.
#[derive(Debug)]
enum Node {
    Leaf(String),
    Branch(BTreeMap<String, Node>),
}

impl Serialize for Node {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Node::Leaf(text) => serializer.serialize_str(text),
            Node::Branch(children) => {
                let mut map = serializer.serialize_map(Some(children.len()))?;
                for (key, child) in children {
                    map.serialize_entry(key, child)?;
                }
                map.end()
            }
        }
    }
}

/// The env name of a relative key (see the module docs).
fn env_name(key: &str) -> String {
    let mut name: String =
        key.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
    if name.starts_with(|c: char| c.is_ascii_digit()) {
        name.insert(0, '_');
    }
    name
}

/// `text` single-quoted for a POSIX shell: nothing inside is special but `'` itself.
fn shell_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

mod properties;
pub use properties::parse_properties;
use properties::write_property;

// --- Filters over values -----------------------------------------------------------------

/// Serializes a value with object keys sorted, whatever order the map keeps them in.
struct Sorted<'a>(&'a Value);

impl Serialize for Sorted<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(map) => {
                let mut entries: Vec<(&String, &Value)> = map.iter().collect();
                entries.sort_by(|a, b| a.0.cmp(b.0));
                let mut out = serializer.serialize_map(Some(entries.len()))?;
                for (key, value) in entries {
                    out.serialize_entry(key, &Sorted(value))?;
                }
                out.end()
            }
            Value::Array(items) => {
                let mut out = serializer.serialize_seq(Some(items.len()))?;
                for item in items {
                    out.serialize_element(&Sorted(item))?;
                }
                out.end()
            }
            scalar => scalar.serialize(serializer),
        }
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "none",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

/// `to_json`: pretty-printed JSON (two-space indent), keys sorted, ending in a newline.
///
/// # Errors
/// Only if serde_json fails, which a `Value` does not make it do.
pub fn to_json(value: &Value) -> Result<String, FormatError> {
    let mut out =
        serde_json::to_string_pretty(&Sorted(value)).map_err(|err| emit_error("to_json".into(), err))?;
    out.push('\n');
    Ok(out)
}

/// `to_yaml`: a YAML document, keys sorted, ending in a newline.
///
/// # Errors
/// If the YAML serializer refuses the value.
pub fn to_yaml(value: &Value) -> Result<String, FormatError> {
    serde_norway::to_string(&Sorted(value)).map_err(|err| emit_error("to_yaml".into(), err))
}

/// `to_toml`: a TOML document, keys sorted (plain keys of a table before its sub-tables, as
/// TOML requires).
///
/// # Errors
/// [`FormatError::NotAMapping`] unless the value is a mapping; [`FormatError::TomlNull`]
/// naming the first null (TOML has none).
pub fn to_toml(value: &Value) -> Result<String, FormatError> {
    if !value.is_object() {
        return Err(FormatError::NotAMapping { filter: "to_toml", kind: kind(value) });
    }
    if let Some(path) = first_null(value, String::new()) {
        return Err(FormatError::TomlNull { path });
    }
    toml::to_string(&Sorted(value)).map_err(|err| emit_error("to_toml".into(), err))
}

/// The dotted path of the first null in `value` (keys sorted), if any.
fn first_null(value: &Value, path: String) -> Option<String> {
    let child = |key: &str| if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") };
    match value {
        Value::Null => Some(path),
        Value::Array(items) => {
            items.iter().enumerate().find_map(|(i, item)| first_null(item, child(&i.to_string())))
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            keys.into_iter().find_map(|key| first_null(&map[key], child(key)))
        }
        _ => None,
    }
}

/// `to_properties`: a mapping flattened into `a.b.c=value` lines, escaped as
/// `Properties.store` does (see the module docs), in key order segment by segment.
///
/// Nested mappings join their keys with `.`; sequence items take their index as the segment
/// (`hosts.0`); strings are written as they are, numbers and booleans as JSON writes them,
/// null as the empty string. An empty mapping or sequence writes nothing.
///
/// # Errors
/// [`FormatError::NotAMapping`] unless the value is a mapping;
/// [`FormatError::ValueKeyCollision`] when two paths flatten to one key (`{"a.b": 1,
/// "a": {"b": 2}}`).
pub fn to_properties(value: &Value) -> Result<String, FormatError> {
    if !value.is_object() {
        return Err(FormatError::NotAMapping { filter: "to_properties", kind: kind(value) });
    }
    let mut flat: Vec<(Vec<String>, String)> = Vec::new();
    flatten(value, &mut Vec::new(), &mut flat);
    flat.sort_by(|a, b| a.0.cmp(&b.0));
    let mut out = String::new();
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for (segments, text) in flat {
        let key = segments.join(".");
        let shown = format!("{segments:?}");
        if let Some(first) = seen.insert(key.clone(), shown.clone()) {
            return Err(FormatError::ValueKeyCollision {
                filter: "to_properties",
                key,
                first,
                second: shown,
            });
        }
        write_property(&mut out, &key, &text);
    }
    Ok(out)
}

fn flatten(value: &Value, path: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    match value {
        Value::Object(map) => {
            for (key, child) in map {
                path.push(key.clone());
                flatten(child, path, out);
                path.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                path.push(i.to_string());
                flatten(child, path, out);
                path.pop();
            }
        }
        Value::Null => out.push((path.clone(), String::new())),
        Value::String(text) => out.push((path.clone(), text.clone())),
        scalar => out.push((path.clone(), scalar.to_string())),
    }
}

/// `from_properties`: parses `.properties` text into a flat mapping of strings; a later key
/// replaces an earlier one, as in Java.
///
/// # Errors
/// As [`parse_properties`].
pub fn from_properties(text: &str) -> Result<Value, FormatError> {
    let mut map = serde_json::Map::new();
    for (key, value) in parse_properties(text)? {
        map.insert(key, Value::String(value));
    }
    Ok(Value::Object(map))
}

/// `from_yaml`: parses one YAML document. Merge keys (`<<`) are applied and tags dropped;
/// numbers and booleans used as mapping keys become their text (`1: a` has the key `"1"`).
///
/// # Errors
/// [`FormatError::Yaml`] with the parser's line and column; [`FormatError::YamlValue`] for
/// what JSON-like values cannot hold (a mapping or null as a key, NaN or infinity), naming
/// where it is.
pub fn from_yaml(text: &str) -> Result<Value, FormatError> {
    let mut yaml: serde_norway::Value = serde_norway::from_str(text).map_err(FormatError::Yaml)?;
    yaml.apply_merge().map_err(FormatError::Yaml)?;
    yaml_to_value(yaml, "top")
}

fn yaml_to_value(yaml: serde_norway::Value, path: &str) -> Result<Value, FormatError> {
    use serde_norway::Value as Y;
    let problem = |message: String| FormatError::YamlValue { path: path.to_owned(), message };
    Ok(match yaml {
        Y::Null => Value::Null,
        Y::Bool(b) => Value::Bool(b),
        Y::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::from(i)
            } else if let Some(u) = n.as_u64() {
                Value::from(u)
            } else {
                let f = n.as_f64().expect("bug: a YAML number is an integer or a float");
                Value::Number(
                    serde_json::Number::from_f64(f)
                        .ok_or_else(|| problem(format!("{n} is not a finite number")))?,
                )
            }
        }
        Y::String(s) => Value::String(s),
        Y::Sequence(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| yaml_to_value(item, &format!("{path}[{i}]")))
                .collect::<Result<_, _>>()?,
        ),
        Y::Mapping(mapping) => {
            let mut map = serde_json::Map::new();
            for (key, value) in mapping {
                let key = match key {
                    Y::String(s) => s,
                    Y::Bool(b) => b.to_string(),
                    Y::Number(n) => n.to_string(),
                    other => {
                        return Err(problem(format!(
                            "a mapping key must be a string, number or boolean, not {other:?}"
                        )));
                    }
                };
                let value = yaml_to_value(value, &format!("{path}.{key}"))?;
                map.insert(key, value);
            }
            Value::Object(map)
        }
        Y::Tagged(tagged) => yaml_to_value(tagged.value, path)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    fn tree(entries: &[(&str, &str)]) -> Subtree {
        Subtree::new("/app/config", entries.iter().map(|(k, v)| (*k, v.as_bytes().to_vec()))).unwrap()
    }

    fn keys(subtree: &Subtree) -> Vec<&str> {
        subtree.entries().iter().map(|e| e.key.as_str()).collect()
    }

    #[test]
    fn entries_sort_by_segments_and_keep_empty_leaves_only() {
        let t = tree(&[("a-b", "1"), ("a/b", "2"), ("a", ""), ("c/d", ""), ("c", ""), ("e", "")]);
        // `a` and `c` have children and no data: only paths. `c/d` and `e` are empty leaves.
        assert_eq!(keys(&t), ["a/b", "a-b", "c/d", "e"]);
        assert_eq!(t.entries()[2].value, b"");
    }

    #[test]
    fn bad_and_duplicate_keys_are_refused() {
        for key in ["", "/a", "a/", "a//b"] {
            let err = Subtree::new("/r", [(key, "x")]).unwrap_err();
            assert!(matches!(err, FormatError::BadKey { .. }), "{key:?}: {err}");
        }
        let err = Subtree::new("/r", [("a/b", "x"), ("a/b", "y")]).unwrap_err();
        assert_eq!(err.to_string(), "tree /r: znode /r/a/b is listed twice");
    }

    #[test]
    fn json_nests_by_segment_with_sorted_keys() {
        let t = tree(&[("db/url", "pg://x"), ("db/pool", "5"), ("name", "app")]);
        assert_eq!(
            t.render(Format::Json).unwrap(),
            "{\n  \"db\": {\n    \"pool\": \"5\",\n    \"url\": \"pg://x\"\n  },\n  \"name\": \"app\"\n}\n"
        );
    }

    #[test]
    fn yaml_and_toml_nest_the_same_tree() {
        let t = tree(&[("db/url", "pg://x"), ("db/pool", "5"), ("name", "app")]);
        let expected = json!({"db": {"pool": "5", "url": "pg://x"}, "name": "app"});
        let yaml = t.render(Format::Yaml).unwrap();
        assert_eq!(serde_norway::from_str::<Value>(&yaml).unwrap(), expected, "{yaml}");
        let toml_text = t.render(Format::Toml).unwrap();
        assert_eq!(toml::from_str::<Value>(&toml_text).unwrap(), expected, "{toml_text}");
        assert_eq!(toml_text, "name = \"app\"\n\n[db]\npool = \"5\"\nurl = \"pg://x\"\n");
    }

    #[test]
    fn data_and_children_put_the_data_under_value_key() {
        let t = tree(&[("db", "primary"), ("db/url", "pg://x"), ("db/pool/size", "5"), ("db/pool", "p")]);
        let expected =
            json!({"db": {"_value": "primary", "url": "pg://x", "pool": {"_value": "p", "size": "5"}}});
        for format in [Format::Json, Format::Yaml] {
            let text = t.render(format).unwrap();
            assert_eq!(serde_norway::from_str::<Value>(&text).unwrap(), expected, "{format}: {text}");
        }
        let toml_text = t.render(Format::Toml).unwrap();
        assert_eq!(toml::from_str::<Value>(&toml_text).unwrap(), expected);
        // The flat formats just write both.
        assert_eq!(
            t.render(Format::Properties).unwrap(),
            "db=primary\ndb.pool=p\ndb.pool.size=5\ndb.url=pg\\://x\n"
        );
    }

    #[test]
    fn a_child_named_value_key_next_to_data_is_an_error_naming_the_parent() {
        let t = tree(&[("db", "primary"), ("db/_value", "x")]);
        let err = t.render(Format::Json).unwrap_err();
        assert!(
            matches!(&err, FormatError::ValueKeyTaken { znode, .. } if znode == "/app/config/db"),
            "{err}"
        );
        // Without data on the parent, `_value` is an ordinary child.
        let t = tree(&[("db/_value", "x")]);
        assert_eq!(t.render(Format::Json).unwrap(), "{\n  \"db\": {\n    \"_value\": \"x\"\n  }\n}\n");
    }

    #[test]
    fn non_utf8_data_names_the_znode() {
        let t = Subtree::new("/app/config/", [("cert/der", vec![0xff, 0x00])]).unwrap();
        for format in Format::ALL {
            let err = t.render(format).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "znode /app/config/cert/der: data is not UTF-8 text, which format {format} cannot hold"
                )
            );
        }
    }

    #[test]
    fn listing_is_sorted_key_value_pairs() {
        let t = tree(&[("db/url", "pg://x"), ("db", ""), ("a-b", "1"), ("a/b", "2")]);
        assert_eq!(
            t.listing().unwrap(),
            json!([
                {"key": "a/b", "value": "2"},
                {"key": "a-b", "value": "1"},
                {"key": "db/url", "value": "pg://x"},
            ])
        );
        let err = Subtree::new("/r", [("k", vec![0xc3])]).unwrap().listing().unwrap_err();
        assert_eq!(err.to_string(), "znode /r/k: data is not UTF-8 text, which tree() cannot return");
    }

    #[test]
    fn empty_tree() {
        let t = tree(&[]);
        assert_eq!(t.render(Format::Json).unwrap(), "{}\n");
        assert_eq!(t.render(Format::Yaml).unwrap(), "{}\n");
        assert_eq!(t.render(Format::Toml).unwrap(), "");
        assert_eq!(t.render(Format::Properties).unwrap(), "");
        assert_eq!(t.render(Format::Env).unwrap(), "");
    }

    #[test]
    fn properties_escape_like_java() {
        let t = tree(&[
            ("a b/c=d:e", " lead and trail "),
            ("hash#bang!", "back\\slash"),
            ("uni", "é€😀\u{7f}"),
            ("lines", "one\ntwo\r\tthree\x0c"),
        ]);
        assert_eq!(
            t.render(Format::Properties).unwrap(),
            concat!(
                "a\\ b.c\\=d\\:e=\\ lead and trail \n",
                "hash\\#bang\\!=back\\\\slash\n",
                "lines=one\\ntwo\\r\\tthree\\f\n",
                "uni=\\u00E9\\u20AC\\uD83D\\uDE00\\u007F\n",
            )
        );
    }

    #[test]
    fn properties_key_collision_names_both_znodes() {
        let err = tree(&[("a.b", "1"), ("a/b", "2")]).render(Format::Properties).unwrap_err();
        assert_eq!(
            err.to_string(),
            "znodes /app/config/a/b and /app/config/a.b both become properties key \"a.b\""
        );
    }

    #[test]
    fn env_names_and_quoting() {
        let t = tree(&[("db/url", "it's $HOME `x`"), ("9lives", "x"), ("dash-ed.dot", "multi\nline")]);
        assert_eq!(
            t.render(Format::Env).unwrap(),
            "_9LIVES='x'\nDASH_ED_DOT='multi\nline'\nDB_URL='it'\\''s $HOME `x`'\n"
        );
    }

    #[test]
    fn env_output_is_read_back_by_a_real_shell() {
        let value = "it's $HOME `id` \"q\" \\ \n* ; |";
        let t = tree(&[("db/url", value), ("a-b", "é")]);
        let script = format!("{}printf '%s|%s' \"$DB_URL\" \"$A_B\"", t.render(Format::Env).unwrap());
        let out = std::process::Command::new("sh").arg("-c").arg(script).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(String::from_utf8(out.stdout).unwrap(), format!("{value}|é"));
    }

    #[test]
    fn env_collision_and_nul_are_errors() {
        let err = tree(&[("a-b", "1"), ("a_b", "2")]).render(Format::Env).unwrap_err();
        assert_eq!(err.to_string(), "znodes /app/config/a-b and /app/config/a_b both become env key \"A_B\"");
        let err = tree(&[("x", "a\0b")]).render(Format::Env).unwrap_err();
        assert!(matches!(&err, FormatError::Nul { znode } if znode == "/app/config/x"), "{err}");
    }

    #[test]
    fn parse_properties_follows_java_load() {
        let text = concat!(
            "# comment\n",
            "  ! also a comment \\\n",
            "\n",
            "a=1\n",
            "b : 2\n",
            "c 3\n",
            "d\t=\t 4 \n",
            "e==5\n",
            "f\n",
            "g=multi \\\n",
            "    line \\\\\n",
            "h\\ i\\=j\\:k = v\\u00e9\\t\\x\r\n",
            "l=\\uD83D\\uDE00\r",
            "a=later wins in from_properties\n",
            "m = trailing backslash \\",
        );
        let pairs = parse_properties(text).unwrap();
        let expected = [
            ("a", "1"),
            ("b", "2"),
            ("c", "3"),
            ("d", "4 "),
            ("e", "=5"),
            ("f", ""),
            ("g", "multi line \\"),
            ("h i=j:k", "vé\tx"),
            ("l", "😀"),
            ("a", "later wins in from_properties"),
            ("m", "trailing backslash "),
        ];
        let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(pairs, expected);
        assert_eq!(from_properties(text).unwrap()["a"], "later wins in from_properties");
    }

    #[test]
    fn malformed_unicode_escape_names_the_line() {
        let err = parse_properties("a=1\nb=\\u12G4\n").unwrap_err();
        assert_eq!(err.to_string(), "from_properties: line 2: malformed \\uxxxx escape \"\\u12G4\"");
        let err = parse_properties("a=\\uD800\n").unwrap_err();
        assert!(err.to_string().starts_with("from_properties: line 1: "), "{err}");
    }

    #[test]
    fn value_filters_sort_keys() {
        let value = json!({"b": {"y": 1, "x": [true, null]}, "a": "s"});
        assert_eq!(
            to_json(&value).unwrap(),
            "{\n  \"a\": \"s\",\n  \"b\": {\n    \"x\": [\n      true,\n      null\n    ],\n    \"y\": 1\n  }\n}\n"
        );
        assert_eq!(to_yaml(&value).unwrap(), "a: s\nb:\n  x:\n  - true\n  - null\n  y: 1\n");
        assert_eq!(to_properties(&value).unwrap(), "a=s\nb.x.0=true\nb.x.1=\nb.y=1\n");
    }

    #[test]
    fn to_toml_refuses_null_and_scalars() {
        let err = to_toml(&json!({"b": {"x": [1, null]}})).unwrap_err();
        assert_eq!(err.to_string(), "to_toml: TOML has no null (at b.x.1)");
        let err = to_toml(&json!("s")).unwrap_err();
        assert_eq!(err.to_string(), "to_toml: needs a mapping at the top, got a string");
        assert_eq!(to_toml(&json!({"t": {"k": 1}, "a": 2})).unwrap(), "a = 2\n\n[t]\nk = 1\n");
    }

    #[test]
    fn to_properties_collision_is_an_error() {
        let err = to_properties(&json!({"a.b": 1, "a": {"b": 2}})).unwrap_err();
        assert!(matches!(err, FormatError::ValueKeyCollision { ref key, .. } if key == "a.b"), "{err}");
    }

    #[test]
    fn from_yaml_parses_merges_and_stringifies_scalar_keys() {
        let text = "base: &b {x: 1}\nderived:\n  <<: *b\n  y: !tag two\n1: one\ntrue: yes\n";
        assert_eq!(
            from_yaml(text).unwrap(),
            json!({"base": {"x": 1}, "derived": {"x": 1, "y": "two"}, "1": "one", "true": "yes"})
        );
        let err = from_yaml("a: [1, 2\n").unwrap_err();
        assert!(err.to_string().starts_with("from_yaml: invalid YAML: "), "{err}");
        assert!(err.to_string().contains("line"), "{err}");
        let err = from_yaml("a: {[1]: x}\n").unwrap_err();
        assert!(err.to_string().starts_with("from_yaml: top.a: a mapping key must be"), "{err}");
        let err = from_yaml("a: .nan\n").unwrap_err();
        assert!(err.to_string().starts_with("from_yaml: top.a: "), "{err}");
    }

    #[test]
    fn format_names_round_trip() {
        for format in Format::ALL {
            assert_eq!(format.name().parse::<Format>().unwrap(), format);
        }
        assert!("xml".parse::<Format>().unwrap_err().contains("\"properties\""));
    }

    /// Strings that exercise every escaping rule: separators, spaces, comment characters,
    /// backslashes, control characters, non-ASCII and astral characters.
    fn tricky_string() -> impl Strategy<Value = String> {
        let pieces = prop::sample::select(vec![
            " ", "  ", "=", ":", "#", "!", "\\", "\\u", "\n", "\r", "\r\n", "\t", "\x0c", "\0", "\x7f", "a",
            "Z", "0", ".", "é", "€", "😀", "'", "\"", "$", "{", "}", "[", "-", "~",
        ]);
        prop::collection::vec(pieces, 0..12).prop_map(|parts| parts.concat())
    }

    fn tricky_key() -> impl Strategy<Value = String> {
        tricky_string().prop_filter("keys are not empty", |s| !s.is_empty())
    }

    fn json_tree() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            tricky_string().prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(tricky_string(), inner, 0..4)
                    .prop_map(|map| Value::Object(map.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn properties_round_trip(pairs in prop::collection::btree_map(tricky_key(), tricky_string(), 0..8)) {
            let mut text = String::new();
            for (key, value) in &pairs {
                write_property(&mut text, key, value);
            }
            prop_assert!(text.is_ascii());
            let back: BTreeMap<String, String> = parse_properties(&text).unwrap().into_iter().collect();
            prop_assert_eq!(back, pairs);
        }

        #[test]
        fn to_yaml_round_trips(value in json_tree()) {
            let text = to_yaml(&value).unwrap();
            prop_assert_eq!(&serde_norway::from_str::<Value>(&text).unwrap(), &value, "{}", text);
            prop_assert_eq!(from_yaml(&text).unwrap(), value);
        }

        #[test]
        fn to_json_round_trips(value in json_tree()) {
            prop_assert_eq!(serde_json::from_str::<Value>(&to_json(&value).unwrap()).unwrap(), value);
        }

        #[test]
        fn subtree_formats_round_trip(pairs in prop::collection::btree_map("[a-z_]{1,3}(/[a-z]{1,3}){0,2}", tricky_string(), 0..8)) {
            let t = Subtree::new("/r", pairs.clone()).unwrap();
            // Properties: every kept entry comes back under its dotted key.
            let props = t.render(Format::Properties).unwrap();
            let back: BTreeMap<String, String> = parse_properties(&props).unwrap().into_iter().collect();
            let kept: BTreeMap<String, String> = t.entries().iter()
                .map(|e| (e.key.replace('/', "."), String::from_utf8(e.value.clone()).unwrap()))
                .collect();
            prop_assert_eq!(back, kept);
            // The nested formats parse back to the same value.
            let json: Value = serde_json::from_str(&t.render(Format::Json).unwrap()).unwrap();
            let yaml = t.render(Format::Yaml).unwrap();
            prop_assert_eq!(&serde_norway::from_str::<Value>(&yaml).unwrap(), &json);
            let toml_text = t.render(Format::Toml).unwrap();
            prop_assert_eq!(&toml::from_str::<Value>(&toml_text).unwrap(), &json);
            // Output is a function of the set of entries, not of their order.
            let reversed = Subtree::new("/r", pairs.into_iter().rev()).unwrap();
            prop_assert_eq!(reversed.render(Format::Env).ok(), t.render(Format::Env).ok());
            prop_assert_eq!(reversed.render(Format::Toml).unwrap(), toml_text);
        }
    }
}
