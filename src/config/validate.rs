//! [`RawConfig`] -> [`Config`]: defaults, path resolution, lookups, and every problem at once.
//!
//! A document that does not have the right shape (TOML syntax, unknown key, wrong type,
//! missing required key) stops at the first error, reported as [`ConfigError::Syntax`].
//! Once it has the right shape, every value is checked and all problems are collected
//! into one [`ConfigError::Invalid`], each with its line, column, table and key.

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::{Group, User};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::raw::{
    RawAgent, RawAuth, RawConfig, RawFile, RawHosts, RawId, RawInstallMode, RawOnDelete, RawReload, RawTls,
    RawWatchMode, RawZookeeper,
};
use super::{
    AgentConfig, Config, DEFAULT_LISTEN, FileSource, FileSpec, InstallMode, OnDelete, ReloadAction,
    ReloadSpec, SignalTarget, TemplateSpec, WatchMode, ZkAuth, ZkConfig, ZkTls,
};
use crate::model::ZnodePath;

/// `[zookeeper] session_timeout` when not set.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// `[agent] resync` when not set.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(600);
/// `[[file]] mode` when not set.
pub const DEFAULT_MODE: u32 = 0o644;
/// `[[file]] check_timeout` when not set.
pub const DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// `[file.reload] retries` when not set.
pub const DEFAULT_RELOAD_RETRIES: u32 = 3;
/// `[file.reload] timeout` when not set.
pub const DEFAULT_RELOAD_TIMEOUT: Duration = Duration::from_secs(10);
/// `[file.reload] method` when not set.
pub const DEFAULT_HTTP_METHOD: &str = "POST";
/// The HTTP methods `[file.reload] method` accepts.
pub const HTTP_METHODS: [&str; 5] = ["GET", "POST", "PUT", "PATCH", "DELETE"];
/// The only `[zookeeper] auth` scheme supported.
pub const AUTH_SCHEME: &str = "digest";
/// Longest name `/proc/PID/comm` holds (`TASK_COMM_LEN - 1`); a longer `process` never matches.
const MAX_COMM_LEN: usize = 15;

/// One problem found in the config, with where it is.
///
/// Displays as `LINE:COLUMN: SECTION: key `KEY`: MESSAGE`, leaving out an empty section or
/// key; [`ConfigError`] puts the file name in front.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based line in the config file.
    pub line: usize,
    /// 1-based column, in characters.
    pub column: usize,
    /// The table the key belongs to: `[zookeeper]`, `[agent]` or
    /// `[[file]] #2 (dest = /etc/app/app.conf)`; empty at the top level or when unknown.
    pub section: String,
    /// The key within `section`, dotted below it (`reload.signal`); empty when the problem
    /// is about a whole table or is a TOML syntax error.
    pub key: String,
    /// What is wrong, lowercase, no trailing period.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: ", self.line, self.column)?;
        if !self.section.is_empty() {
            write!(f, "{}: ", self.section)?;
        }
        if !self.key.is_empty() {
            write!(f, "key `{}`: ", self.key)?;
        }
        f.write_str(&self.message)
    }
}

/// Why a config file could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The config path could not be made absolute (for example, it is empty).
    #[error("making config path {path:?} absolute")]
    Path {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Not valid TOML, or not the shape of a config (unknown key, wrong type, missing key).
    #[error("{}:{problem}", .path.display())]
    Syntax { path: PathBuf, problem: Problem },
    /// Well-formed, but with one or more invalid values.
    #[error("{} is invalid:{}", .path.display(), lines(.path, .problems))]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

impl ConfigError {
    /// The located problems: one for [`ConfigError::Syntax`], all for
    /// [`ConfigError::Invalid`], none when the file could not be read.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. } | ConfigError::Path { .. } => &[],
            ConfigError::Syntax { problem, .. } => std::slice::from_ref(problem),
            ConfigError::Invalid { problems, .. } => problems,
        }
    }
}

/// One `\n  PATH:PROBLEM` line per problem.
fn lines(path: &Path, problems: &[Problem]) -> String {
    problems.iter().map(|p| format!("\n  {}:{p}", path.display())).collect()
}

/// Reads, parses and validates the config file at `path`.
///
/// # Errors
/// [`ConfigError::Read`] when the file cannot be read, otherwise as [`parse`].
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse(path, &text)
}

/// Parses and validates config `text` as if read from `path`.
///
/// `path` is made absolute first; relative `dest`, `template`, `pid_file`, `credentials_file`
/// and `tls` paths resolve against its directory. Template files are read from disk; the
/// credentials and TLS files are only checked to be readable (they are read at connect).
///
/// # Errors
/// [`ConfigError::Syntax`] for the first TOML or shape error, [`ConfigError::Invalid`] with
/// every problem found in the values, [`ConfigError::Path`] if `path` cannot be made absolute.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let path =
        std::path::absolute(path).map_err(|source| ConfigError::Path { path: path.to_owned(), source })?;
    let raw: RawConfig = toml::from_str(text)
        .map_err(|err| ConfigError::Syntax { problem: syntax_problem(text, &err), path: path.clone() })?;
    let base_dir = path.parent().map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let mut checker = Checker { lines: LineIndex::new(text), base_dir, problems: Vec::new() };
    let config = checker.config(path.clone(), raw);
    if checker.problems.is_empty() {
        Ok(config)
    } else {
        Err(ConfigError::Invalid { path, problems: checker.problems })
    }
}

// ---------------------------------------------------------------------------------------
// Positions

/// Byte offset -> 1-based line and column.
struct LineIndex<'t> {
    text: &'t str,
    /// Byte offset at which each line starts.
    starts: Vec<usize>,
}

impl<'t> LineIndex<'t> {
    fn new(text: &'t str) -> Self {
        let starts = std::iter::once(0).chain(text.match_indices('\n').map(|(i, _)| i + 1)).collect();
        LineIndex { text, starts }
    }

    /// 1-based (line, column) of byte `offset`; the column counts characters.
    fn position(&self, offset: usize) -> (usize, usize) {
        let offset = offset.min(self.text.len());
        let line = self.starts.partition_point(|&start| start <= offset).max(1);
        let start = self.starts[line - 1];
        let column = self.text.get(start..offset).map_or(offset - start, |s| s.chars().count());
        (line, column + 1)
    }
}

/// The single problem for a TOML or shape error, named by the table and key at its span.
fn syntax_problem(text: &str, err: &toml::de::Error) -> Problem {
    let offset = err.span().map_or(0, |span| span.start);
    let (line, column) = LineIndex::new(text).position(offset);
    let (section, key) = key_at(text, offset);
    Problem { line, column, section, key, message: err.message().to_owned() }
}

/// One step of the way from the document root to a value.
#[derive(Debug, Clone)]
enum Segment {
    Key(String),
    Index(usize),
}

/// The section and key (as [`Problem`] names them) whose key, value or table header covers
/// byte `offset`; empty strings when the document does not parse or nothing covers it.
fn key_at(text: &str, offset: usize) -> (String, String) {
    let Ok(doc) = DeTable::parse(text) else {
        return (String::new(), String::new());
    };
    let mut best: Option<(usize, Vec<Segment>)> = None;
    let mut trail = Vec::new();
    search_table(doc.get_ref(), offset, &mut trail, &mut best);
    let Some((_, trail)) = best else {
        return (String::new(), String::new());
    };
    name_trail(doc.get_ref(), &trail)
}

/// Whether `span` covers `offset` (an empty span covers its start).
fn covers(span: &Range<usize>, offset: usize) -> bool {
    span.contains(&offset) || (span.is_empty() && span.start == offset)
}

/// Records in `best` the narrowest key/value span covering `offset`, with its trail. On a
/// tie the later, deeper one wins: an array of tables and its first table share a span.
fn consider(span: Range<usize>, offset: usize, trail: &[Segment], best: &mut Option<(usize, Vec<Segment>)>) {
    if covers(&span, offset) && best.as_ref().is_none_or(|(len, _)| span.len() <= *len) {
        *best = Some((span.len(), trail.to_vec()));
    }
}

fn search_table(
    table: &DeTable<'_>,
    offset: usize,
    trail: &mut Vec<Segment>,
    best: &mut Option<(usize, Vec<Segment>)>,
) {
    for (key, value) in table.iter() {
        trail.push(Segment::Key(key.get_ref().to_string()));
        consider(key.span(), offset, trail, best);
        search_value(value, offset, trail, best);
        trail.pop();
    }
}

fn search_value(
    value: &Spanned<DeValue<'_>>,
    offset: usize,
    trail: &mut Vec<Segment>,
    best: &mut Option<(usize, Vec<Segment>)>,
) {
    // A table's span is its header (`[file.reload]`), an array of tables' the first header.
    consider(value.span(), offset, trail, best);
    match value.get_ref() {
        DeValue::Table(table) => search_table(table, offset, trail, best),
        DeValue::Array(array) => {
            for (index, item) in array.iter().enumerate() {
                trail.push(Segment::Index(index));
                search_value(item, offset, trail, best);
                trail.pop();
            }
        }
        _ => {}
    }
}

/// Turns a trail into (section, key): `file`, 1, `reload`, `signal` becomes
/// (`[[file]] #2 (dest = ...)`, `reload.signal`).
fn name_trail(doc: &DeTable<'_>, trail: &[Segment]) -> (String, String) {
    let (section, rest) = match trail {
        [Segment::Key(k), rest @ ..] if k == "zookeeper" || k == "agent" => (format!("[{k}]"), rest),
        [Segment::Key(k), Segment::Index(i), rest @ ..] if k == "file" => {
            let dest = doc
                .get("file")
                .and_then(|files| files.get_ref().get(*i))
                .and_then(|file| file.get_ref().get("dest"))
                .and_then(|dest| dest.get_ref().as_str());
            (file_section(*i, dest), rest)
        }
        _ => (String::new(), trail),
    };
    let key = rest
        .iter()
        .map(|segment| match segment {
            Segment::Key(k) => k.clone(),
            Segment::Index(i) => i.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".");
    (section, key)
}

/// `[[file]] #N (dest = DEST)`, numbered from 1, with `dest` as written.
fn file_section(index: usize, dest: Option<&str>) -> String {
    match dest {
        Some(dest) => format!("[[file]] #{} (dest = {dest})", index + 1),
        None => format!("[[file]] #{}", index + 1),
    }
}

// ---------------------------------------------------------------------------------------
// Validation

/// Walks a [`RawConfig`], building the [`Config`] and collecting problems.
///
/// A value with a problem is replaced by its default (or the file is dropped) so that the
/// walk continues; the built config is only returned when no problem was recorded.
struct Checker<'t> {
    lines: LineIndex<'t>,
    /// The config file's directory, for relative paths.
    base_dir: PathBuf,
    problems: Vec<Problem>,
}

/// Where a key lives, for messages.
#[derive(Clone, Copy)]
struct At<'a> {
    section: &'a str,
    /// Prepended to keys (`reload.`).
    key_prefix: &'a str,
}

impl Checker<'_> {
    fn problem(&mut self, at: At<'_>, key: &str, span: Range<usize>, message: impl Into<String>) {
        let (line, column) = self.lines.position(span.start);
        let key = if key.is_empty() {
            at.key_prefix.trim_end_matches('.').to_owned()
        } else {
            format!("{}{key}", at.key_prefix)
        };
        self.problems.push(Problem {
            line,
            column,
            section: at.section.to_owned(),
            key,
            message: message.into(),
        });
    }

    fn config(&mut self, path: PathBuf, raw: RawConfig) -> Config {
        let zookeeper = self.zookeeper(&raw.zookeeper);
        let agent = raw.agent.as_ref().map(|agent| self.agent(agent)).unwrap_or_default();
        let mut files = Vec::with_capacity(raw.files.len());
        let mut dests: HashMap<PathBuf, usize> = HashMap::new();
        for (index, file) in raw.files.iter().enumerate() {
            let section = file_section(index, Some(file.get_ref().dest.get_ref()));
            let at = At { section: &section, key_prefix: "" };
            if let Some(spec) = self.file(at, file) {
                if let Some(first) = dests.get(&spec.dest) {
                    let message =
                        format!("{} is also the dest of [[file]] #{}", spec.dest.display(), first + 1);
                    self.problem(at, "dest", file.get_ref().dest.span(), message);
                } else {
                    dests.insert(spec.dest.clone(), index);
                }
                files.push(spec);
            }
        }
        Config { path, zookeeper, agent, files }
    }

    // --- [zookeeper] ------------------------------------------------------------------

    fn zookeeper(&mut self, raw: &RawZookeeper) -> ZkConfig {
        let at = At { section: "[zookeeper]", key_prefix: "" };
        let (hosts, suffix) = self.hosts(at, &raw.hosts);
        let chroot = match (&raw.chroot, suffix) {
            (Some(chroot), Some(suffix)) => {
                let message =
                    format!("chroot is set both here and as the suffix {suffix:?} of `hosts`; keep one");
                self.problem(at, "chroot", chroot.span(), message);
                None
            }
            (Some(chroot), None) => self.znode_path(at, "chroot", chroot),
            (None, Some(suffix)) => match ZnodePath::parse(&suffix) {
                Ok(path) => Some(path),
                Err(err) => {
                    self.problem(at, "hosts", raw.hosts.span(), format!("chroot suffix: {err}"));
                    None
                }
            },
            (None, None) => None,
        };
        let session_timeout =
            self.duration(at, "session_timeout", raw.session_timeout.as_ref(), DEFAULT_SESSION_TIMEOUT);
        if let Some(raw_timeout) = &raw.session_timeout
            && session_timeout.is_zero()
        {
            self.problem(
                at,
                "session_timeout",
                raw_timeout.span(),
                "session_timeout must be greater than zero",
            );
        }
        let watch = match raw.watch.as_ref().map(|w| *w.get_ref()) {
            None | Some(RawWatchMode::Oneshot) => WatchMode::Oneshot,
            Some(RawWatchMode::Persistent) => WatchMode::Persistent,
        };
        let auth = raw.auth.as_ref().and_then(|auth| self.auth(auth.get_ref()));
        let tls = raw.tls.as_ref().and_then(|tls| self.tls(tls.get_ref()));
        ZkConfig { hosts, chroot, session_timeout, watch, auth, tls }
    }

    /// `auth`: the credentials file must be readable now, but its secret is only read at
    /// connect time, so it is neither kept nor shown here.
    fn auth(&mut self, raw: &RawAuth) -> Option<ZkAuth> {
        let at = At { section: "[zookeeper]", key_prefix: "auth." };
        let scheme = raw.scheme.get_ref();
        let scheme_ok = scheme == AUTH_SCHEME;
        if !scheme_ok {
            let message = format!("scheme {scheme:?} is not supported; the only scheme is {AUTH_SCHEME:?}");
            self.problem(at, "scheme", raw.scheme.span(), message);
        }
        let credentials_file = self.readable_file(at, "credentials_file", &raw.credentials_file);
        Some(ZkAuth { scheme: scheme_ok.then(|| scheme.clone())?, credentials_file: credentials_file? })
    }

    /// `tls`: every file named must be readable now; `cert` and `key` come together.
    fn tls(&mut self, raw: &RawTls) -> Option<ZkTls> {
        let at = At { section: "[zookeeper]", key_prefix: "tls." };
        let ca = self.readable_file(at, "ca", &raw.ca);
        let cert = raw.cert.as_ref().map(|cert| self.readable_file(at, "cert", cert));
        let key = raw.key.as_ref().map(|key| self.readable_file(at, "key", key));
        match (&raw.cert, &raw.key) {
            (Some(cert), None) => {
                self.problem(at, "cert", cert.span(), "`cert` needs `key` (the client certificate's key)");
                return None;
            }
            (None, Some(key)) => {
                self.problem(at, "key", key.span(), "`key` needs `cert` (the client certificate)");
                return None;
            }
            _ => {}
        }
        // Outer None: not given; inner None: given but with a problem, already reported.
        Some(ZkTls {
            ca: ca?,
            cert: cert.map_or(Some(None), |cert| cert.map(Some))?,
            key: key.map_or(Some(None), |key| key.map(Some))?,
        })
    }

    /// The `host:port` entries, and the chroot suffix of a connect string if any.
    fn hosts(&mut self, at: At<'_>, raw: &Spanned<RawHosts>) -> (Vec<String>, Option<String>) {
        let mut hosts = Vec::new();
        let mut suffix = None;
        let before = self.problems.len();
        match raw.get_ref() {
            RawHosts::ConnectString(s) => {
                let (list, chroot) = match s.find('/') {
                    Some(slash) => (&s[..slash], Some(s[slash..].to_owned())),
                    None => (s.as_str(), None),
                };
                suffix = chroot;
                if !list.trim().is_empty() {
                    for entry in list.split(',').map(str::trim) {
                        match check_host_port(entry) {
                            Ok(()) => hosts.push(entry.to_owned()),
                            Err(message) => self.problem(at, "hosts", raw.span(), message),
                        }
                    }
                }
            }
            RawHosts::List(list) => {
                for entry in list {
                    let host = entry.get_ref().trim();
                    let checked = if host.contains('/') {
                        Err(format!("host {host:?}: array entries may not carry a chroot; set `chroot`"))
                    } else {
                        check_host_port(host)
                    };
                    match checked {
                        Ok(()) => hosts.push(host.to_owned()),
                        Err(message) => self.problem(at, "hosts", entry.span(), message),
                    }
                }
            }
        }
        if hosts.is_empty() && self.problems.len() == before {
            self.problem(at, "hosts", raw.span(), "no ZooKeeper hosts given");
        }
        (hosts, suffix)
    }

    // --- [agent] ----------------------------------------------------------------------

    fn agent(&mut self, raw: &RawAgent) -> AgentConfig {
        let at = At { section: "[agent]", key_prefix: "" };
        let wait = self.duration(at, "wait", raw.wait.as_ref(), Duration::ZERO);
        let max_wait = match &raw.max_wait {
            None => wait.checked_mul(4).unwrap_or(Duration::MAX),
            Some(raw_max) => {
                let max_wait = self.duration(at, "max_wait", Some(raw_max), wait);
                if !wait.is_zero() && max_wait < wait {
                    let message = format!(
                        "max_wait ({}) must not be shorter than wait ({})",
                        humantime::format_duration(max_wait),
                        humantime::format_duration(wait)
                    );
                    self.problem(at, "max_wait", raw_max.span(), message);
                }
                max_wait
            }
        };
        let resync = self.duration(at, "resync", raw.resync.as_ref(), DEFAULT_RESYNC);
        let listen = match &raw.listen {
            None => Some(DEFAULT_LISTEN.to_owned()),
            Some(listen) => self.listen(at, listen),
        };
        AgentConfig { wait, max_wait, resync, listen }
    }

    /// `listen`: `""` disables the endpoint; anything else must be an `ip:port` socket
    /// address (no host names: the endpoint binds exactly what is written).
    fn listen(&mut self, at: At<'_>, raw: &Spanned<String>) -> Option<String> {
        let text = raw.get_ref();
        if text.is_empty() {
            return None;
        }
        match text.trim().parse::<SocketAddr>() {
            Ok(_) => Some(text.trim().to_owned()),
            Err(_) => {
                let message = format!(
                    "listen {text:?} is not an address such as \"127.0.0.1:9102\" or \"[::1]:9102\" \
                     (use \"\" to disable)"
                );
                self.problem(at, "listen", raw.span(), message);
                None
            }
        }
    }

    // --- [[file]] ---------------------------------------------------------------------

    /// A validated file, or None when a problem leaves nothing sensible to build.
    fn file(&mut self, at: At<'_>, spanned: &Spanned<RawFile>) -> Option<FileSpec> {
        let raw = spanned.get_ref();
        let dest = self.dest(at, &raw.dest);
        // Check the source even when `dest` is bad, so that its problems are reported too.
        let source = {
            let name_dest = dest.clone().unwrap_or_else(|| PathBuf::from(raw.dest.get_ref()));
            self.source(at, spanned, &name_dest)
        };
        let mode = match &raw.mode {
            None => DEFAULT_MODE,
            Some(mode) => parse_mode(mode.get_ref()).unwrap_or_else(|message| {
                self.problem(at, "mode", mode.span(), message);
                DEFAULT_MODE
            }),
        };
        let owner = raw.owner.as_ref().and_then(|owner| self.id(at, "owner", owner));
        let group = raw.group.as_ref().and_then(|group| self.id(at, "group", group));
        let on_delete = match raw.on_delete.as_ref().map(|o| *o.get_ref()) {
            None | Some(RawOnDelete::Keep) => OnDelete::Keep,
            Some(RawOnDelete::Remove) => OnDelete::Remove,
        };
        let check =
            raw.check.as_ref().and_then(|check| self.argv(at, "check", check).map(|argv| argv.to_vec()));
        let check_timeout =
            self.positive_duration(at, "check_timeout", raw.check_timeout.as_ref(), DEFAULT_CHECK_TIMEOUT);
        let install = match raw.install.as_ref().map(|i| *i.get_ref()) {
            None | Some(RawInstallMode::Atomic) => InstallMode::Atomic,
            Some(RawInstallMode::InPlace) => InstallMode::InPlace,
        };
        let reload = raw.reload.as_ref().and_then(|reload| self.reload(at, reload));
        let rollback = raw.rollback.as_ref().is_some_and(|rollback| {
            // Checked against the raw table: a `[file.reload]` with problems has its own.
            if *rollback.get_ref() && raw.reload.is_none() {
                self.problem(
                    at,
                    "rollback",
                    rollback.span(),
                    "rollback = true needs a [file.reload]: it restores the previous file when the reload fails",
                );
            }
            *rollback.get_ref()
        });
        let allow_env = raw.allow_env.as_ref().map(|names| self.env_names(at, names)).unwrap_or_default();
        Some(FileSpec {
            dest: dest?,
            source: source?,
            mode,
            owner,
            group,
            on_delete,
            check,
            check_timeout,
            backup: raw.backup.unwrap_or(false),
            install,
            allow_empty: raw.allow_empty.unwrap_or(false),
            rollback,
            allow_env,
            reload,
        })
    }

    /// `allow_env`: the valid names, in config order; each bad one is reported.
    fn env_names(&mut self, at: At<'_>, raw: &Spanned<Vec<Spanned<String>>>) -> Vec<String> {
        let mut names = Vec::with_capacity(raw.get_ref().len());
        for name in raw.get_ref() {
            match check_env_name(name.get_ref()) {
                Ok(()) => names.push(name.get_ref().clone()),
                Err(message) => self.problem(at, "allow_env", name.span(), message),
            }
        }
        names
    }

    fn dest(&mut self, at: At<'_>, raw: &Spanned<String>) -> Option<PathBuf> {
        let dest = raw.get_ref();
        if dest.is_empty() {
            self.problem(at, "dest", raw.span(), "dest is empty");
            return None;
        }
        let resolved = self.resolve(dest);
        if dest.ends_with('/') || resolved.file_name().is_none() {
            self.problem(at, "dest", raw.span(), format!("dest {dest:?} must name a file, not a directory"));
            return None;
        }
        Some(resolved)
    }

    /// Exactly one of `znode`, `template` or `inline`, plus `prefix` for templates.
    fn source(&mut self, at: At<'_>, file: &Spanned<RawFile>, dest: &Path) -> Option<FileSource> {
        let raw = file.get_ref();
        let given: Vec<(&str, &Spanned<String>)> =
            [("znode", &raw.znode), ("template", &raw.template), ("inline", &raw.inline)]
                .into_iter()
                .filter_map(|(key, value)| value.as_ref().map(|value| (key, value)))
                .collect();
        let (key, value) = match given.as_slice() {
            [] => {
                self.problem(at, "", file.span(), "needs one of `znode`, `template` or `inline`");
                return None;
            }
            [one] => *one,
            [(first, _), rest @ ..] => {
                for (key, value) in rest {
                    let message = format!("`{first}` and `{key}` are mutually exclusive; give exactly one");
                    self.problem(at, key, value.span(), message);
                }
                return None;
            }
        };
        if key == "znode" {
            if let Some(prefix) = &raw.prefix {
                self.problem(
                    at,
                    "prefix",
                    prefix.span(),
                    "`prefix` only applies with `template` or `inline`",
                );
            }
            if let Some(allow_env) = &raw.allow_env {
                self.problem(
                    at,
                    "allow_env",
                    allow_env.span(),
                    "`allow_env` only applies with `template` or `inline`",
                );
            }
            return self.znode_path(at, "znode", value).map(|znode| FileSource::Raw { znode });
        }
        let prefix = raw.prefix.as_ref().and_then(|prefix| self.znode_path(at, "prefix", prefix));
        if key == "inline" {
            let name = format!("inline template of {}", dest.display());
            return Some(FileSource::Template(TemplateSpec {
                name,
                path: None,
                text: value.get_ref().clone(),
                prefix,
            }));
        }
        let name = value.get_ref();
        if name.is_empty() {
            self.problem(at, "template", value.span(), "template path is empty");
            return None;
        }
        let path = self.resolve(name);
        match read_template(&path) {
            Ok(text) => Some(FileSource::Template(TemplateSpec {
                name: name.clone(),
                path: Some(path),
                text,
                prefix,
            })),
            Err(err) => {
                self.problem(
                    at,
                    "template",
                    value.span(),
                    format!("reading template {}: {err}", path.display()),
                );
                None
            }
        }
    }

    /// A uid or gid: a number, or a user/group name looked up now.
    fn id(&mut self, at: At<'_>, key: &str, raw: &Spanned<RawId>) -> Option<u32> {
        let what = if key == "owner" { "user" } else { "group" };
        let result = match raw.get_ref() {
            RawId::Number(n) => u32::try_from(*n).map_err(|_| format!("{what} id {n} is out of range")),
            RawId::Name(name) if name.is_empty() => Err(format!("{what} name is empty")),
            RawId::Name(name) if name.bytes().all(|b| b.is_ascii_digit()) => {
                name.parse::<u32>().map_err(|_| format!("{what} id {name} is out of range"))
            }
            RawId::Name(name) => lookup_id(key == "owner", name),
        };
        result.map_err(|message| self.problem(at, key, raw.span(), message)).ok()
    }

    // --- [file.reload] ----------------------------------------------------------------

    fn reload(&mut self, at: At<'_>, spanned: &Spanned<RawReload>) -> Option<ReloadSpec> {
        let at = At { section: at.section, key_prefix: "reload." };
        let raw = spanned.get_ref();
        let retries = match &raw.retries {
            None => DEFAULT_RELOAD_RETRIES,
            Some(retries) => u32::try_from(*retries.get_ref()).unwrap_or_else(|_| {
                let message = format!("retries must be between 0 and {}", u32::MAX);
                self.problem(at, "retries", retries.span(), message);
                DEFAULT_RELOAD_RETRIES
            }),
        };
        let timeout = self.positive_duration(at, "timeout", raw.timeout.as_ref(), DEFAULT_RELOAD_TIMEOUT);
        let splay = self.duration(at, "splay", raw.splay.as_ref(), Duration::ZERO);

        // `restart = false` is the same as leaving it out.
        let restart = raw.restart.as_ref().filter(|restart| *restart.get_ref());
        let kinds: Vec<(&str, Range<usize>)> = [
            ("signal", raw.signal.as_ref().map(Spanned::span)),
            ("http", raw.http.as_ref().map(Spanned::span)),
            ("command", raw.command.as_ref().map(Spanned::span)),
            ("restart", restart.map(Spanned::span)),
        ]
        .into_iter()
        .filter_map(|(key, span)| span.map(|span| (key, span)))
        .collect();
        match kinds.as_slice() {
            [] => {
                self.problem(
                    at,
                    "",
                    spanned.span(),
                    "needs one of `signal`, `http`, `command` or `restart = true`",
                );
                return None;
            }
            [_] => {}
            [(first, _), rest @ ..] => {
                for (key, span) in rest {
                    let message = format!("`{first}` and `{key}` are mutually exclusive; give exactly one");
                    self.problem(at, key, span.clone(), message);
                }
                return None;
            }
        }
        self.only_with(
            at,
            "signal",
            raw.signal.is_some(),
            &[
                ("pid_file", raw.pid_file.as_ref().map(Spanned::span)),
                ("pid", raw.pid.as_ref().map(Spanned::span)),
                ("process", raw.process.as_ref().map(Spanned::span)),
            ],
        );
        self.only_with(at, "http", raw.http.is_some(), &[("method", raw.method.as_ref().map(Spanned::span))]);

        let action = if let Some(signal) = &raw.signal {
            self.signal(at, signal, raw)?
        } else if let Some(url) = &raw.http {
            self.http(at, url, raw.method.as_ref())?
        } else if let Some(command) = &raw.command {
            ReloadAction::Command { argv: self.argv(at, "command", command)?.to_vec() }
        } else if restart.is_some() {
            ReloadAction::Restart
        } else {
            panic!("bug: reload kind checked above");
        };
        Some(ReloadSpec { action, retries, timeout, splay })
    }

    /// Reports each of `keys` that is set although `owner` is not.
    fn only_with(&mut self, at: At<'_>, owner: &str, owner_set: bool, keys: &[(&str, Option<Range<usize>>)]) {
        if owner_set {
            return;
        }
        for (key, span) in keys {
            if let Some(span) = span {
                self.problem(at, key, span.clone(), format!("`{key}` only applies with `{owner}`"));
            }
        }
    }

    fn signal(&mut self, at: At<'_>, signal: &Spanned<String>, raw: &RawReload) -> Option<ReloadAction> {
        let parsed = parse_signal(signal.get_ref())
            .map_err(|message| self.problem(at, "signal", signal.span(), message));

        let mut targets = Vec::new();
        if let Some(pid_file) = &raw.pid_file {
            let target = if pid_file.get_ref().is_empty() {
                self.problem(at, "pid_file", pid_file.span(), "pid_file is empty");
                None
            } else {
                Some(SignalTarget::PidFile(self.resolve(pid_file.get_ref())))
            };
            targets.push(("pid_file", pid_file.span(), target));
        }
        if let Some(pid) = &raw.pid {
            let target = match i32::try_from(*pid.get_ref()) {
                Ok(n) if n > 0 => Some(SignalTarget::Pid(n)),
                _ => {
                    self.problem(
                        at,
                        "pid",
                        pid.span(),
                        format!("pid {} is not a valid process id", pid.get_ref()),
                    );
                    None
                }
            };
            targets.push(("pid", pid.span(), target));
        }
        if let Some(process) = &raw.process {
            let target = match check_process_name(process.get_ref()) {
                Ok(()) => Some(SignalTarget::Process(process.get_ref().clone())),
                Err(message) => {
                    self.problem(at, "process", process.span(), message);
                    None
                }
            };
            targets.push(("process", process.span(), target));
        }
        let target = match targets.as_slice() {
            // No target: the child of `zkrender exec`.
            [] => SignalTarget::Child,
            [(_, _, target)] => target.clone()?,
            [(first, _, _), rest @ ..] => {
                for (key, span, _) in rest {
                    let message = format!("`{first}` and `{key}` are mutually exclusive; give exactly one");
                    self.problem(at, key, span.clone(), message);
                }
                return None;
            }
        };
        Some(ReloadAction::Signal { signal: parsed.ok()?, target })
    }

    fn http(
        &mut self,
        at: At<'_>,
        url: &Spanned<String>,
        method: Option<&Spanned<String>>,
    ) -> Option<ReloadAction> {
        let method = match method {
            None => Some(DEFAULT_HTTP_METHOD.to_owned()),
            Some(raw) => {
                let upper = raw.get_ref().trim().to_ascii_uppercase();
                if HTTP_METHODS.contains(&upper.as_str()) {
                    Some(upper)
                } else {
                    let message =
                        format!("method {:?} is not one of {}", raw.get_ref(), HTTP_METHODS.join(", "));
                    self.problem(at, "method", raw.span(), message);
                    None
                }
            }
        };
        let text = url.get_ref().trim();
        let rest = text.strip_prefix("http://").or_else(|| text.strip_prefix("https://"));
        if rest.is_none_or(str::is_empty) {
            let message =
                format!("url {:?} must start with http:// or https:// and name a host", url.get_ref());
            self.problem(at, "http", url.span(), message);
            return None;
        }
        Some(ReloadAction::Http { url: text.to_owned(), method: method? })
    }

    // --- shared value checks ----------------------------------------------------------

    /// A path from the config, resolved against the config file's directory.
    fn resolve(&self, path: &str) -> PathBuf {
        // Joining keeps an absolute `path` as is; collecting components drops `.` and `//`.
        self.base_dir.join(path).components().collect()
    }

    fn znode_path(&mut self, at: At<'_>, key: &str, raw: &Spanned<String>) -> Option<ZnodePath> {
        ZnodePath::parse(raw.get_ref()).map_err(|err| self.problem(at, key, raw.span(), err.to_string())).ok()
    }

    /// A humantime duration, or `default` when not set (or invalid, after reporting it).
    fn duration(
        &mut self,
        at: At<'_>,
        key: &str,
        raw: Option<&Spanned<String>>,
        default: Duration,
    ) -> Duration {
        let Some(raw) = raw else { return default };
        humantime::parse_duration(raw.get_ref().trim()).unwrap_or_else(|err| {
            self.problem(at, key, raw.span(), format!("invalid duration {:?}: {err}", raw.get_ref()));
            default
        })
    }

    /// As [`Checker::duration`], and zero is a problem.
    fn positive_duration(
        &mut self,
        at: At<'_>,
        key: &str,
        raw: Option<&Spanned<String>>,
        default: Duration,
    ) -> Duration {
        let value = self.duration(at, key, raw, default);
        if let Some(raw) = raw
            && value.is_zero()
        {
            self.problem(at, key, raw.span(), format!("{key} must be greater than zero"));
            return default;
        }
        value
    }

    /// A file named in the config that is read later (a secret, a PEM file), resolved and
    /// checked to be a readable regular file now. Its contents are never read here.
    fn readable_file(&mut self, at: At<'_>, key: &str, raw: &Spanned<String>) -> Option<PathBuf> {
        if raw.get_ref().is_empty() {
            self.problem(at, key, raw.span(), format!("{key} is empty"));
            return None;
        }
        let path = self.resolve(raw.get_ref());
        match check_readable(&path) {
            Ok(()) => Some(path),
            Err(reason) => {
                self.problem(at, key, raw.span(), format!("cannot read {key} {}: {reason}", path.display()));
                None
            }
        }
    }

    /// A non-empty argv whose program is not empty.
    fn argv<'r>(&mut self, at: At<'_>, key: &str, raw: &'r Spanned<Vec<String>>) -> Option<&'r [String]> {
        match raw.get_ref().first() {
            None => {
                self.problem(
                    at,
                    key,
                    raw.span(),
                    format!("{key} must be a non-empty array (program and arguments)"),
                );
                None
            }
            Some(program) if program.trim().is_empty() => {
                self.problem(at, key, raw.span(), format!("{key}: program name is empty"));
                None
            }
            Some(_) => Some(raw.get_ref()),
        }
    }
}

/// Checks one `host:port` entry (`[v6]:port` too); the message names the entry.
fn check_host_port(entry: &str) -> Result<(), String> {
    let Some((host, port)) = entry.rsplit_once(':') else {
        return Err(format!("host {entry:?} must be host:port"));
    };
    let bracketed = host.starts_with('[') || host.ends_with(']');
    if host.is_empty()
        || host.contains(char::is_whitespace)
        || (bracketed && !(host.starts_with('[') && host.ends_with(']') && host.len() > 2))
        || (!bracketed && host.contains(':'))
    {
        return Err(format!("host {entry:?} must be host:port (IPv6 addresses as [addr]:port)"));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err(format!("host {entry:?}: port {port:?} is not a number between 1 and 65535")),
    }
}

/// Whether `path` is a regular file this process can open for reading, without reading it.
fn check_readable(path: &Path) -> Result<(), String> {
    // A regular file only: opening a FIFO would block the load until someone writes to it.
    let metadata = std::fs::metadata(path).map_err(|err| err.to_string())?;
    if !metadata.is_file() {
        return Err("not a regular file".to_owned());
    }
    File::open(path).map(drop).map_err(|err| err.to_string())
}

/// An `allow_env` entry must be a portable environment variable name.
fn check_env_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let valid = chars.next().is_some_and(|first| first.is_ascii_alphabetic() || first == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_');
    if name.is_empty() {
        Err("environment variable name is empty".to_owned())
    } else if valid {
        Ok(())
    } else {
        Err(format!("environment variable name {name:?} must match [A-Za-z_][A-Za-z0-9_]*"))
    }
}

/// Parses an octal mode string (`"0644"`, `"644"`, `"0o644"`) up to `07777`.
fn parse_mode(text: &str) -> Result<u32, String> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return Err(format!("mode {text:?} is not an octal number such as \"0644\""));
    }
    match u32::from_str_radix(digits, 8) {
        Ok(mode) if mode <= 0o7777 => Ok(mode),
        _ => Err(format!("mode {text:?} is larger than 07777")),
    }
}

/// Looks up a user (`is_user`) or group name; the message names it.
fn lookup_id(is_user: bool, name: &str) -> Result<u32, String> {
    if is_user {
        match User::from_name(name) {
            Ok(Some(user)) => Ok(user.uid.as_raw()),
            Ok(None) => Err(format!("unknown user {name:?}")),
            Err(err) => Err(format!("looking up user {name:?}: {err}")),
        }
    } else {
        match Group::from_name(name) {
            Ok(Some(group)) => Ok(group.gid.as_raw()),
            Ok(None) => Err(format!("unknown group {name:?}")),
            Err(err) => Err(format!("looking up group {name:?}: {err}")),
        }
    }
}

/// Parses a signal name: any case, with or without `SIG` (`hup`, `SIGHUP`, `Usr1`).
fn parse_signal(text: &str) -> Result<Signal, String> {
    let upper = text.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    Signal::from_str(&name)
        .map_err(|_| format!("unknown signal {text:?}; use a name such as \"HUP\", \"USR1\" or \"TERM\""))
}

/// A `process` name must be able to equal some `/proc/PID/comm`.
fn check_process_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("process name is empty".to_owned())
    } else if name.contains('/') {
        Err(format!("process {name:?} must be a process name (as in /proc/PID/comm), not a path"))
    } else if name.len() > MAX_COMM_LEN {
        Err(format!(
            "process {name:?} is longer than {MAX_COMM_LEN} bytes, the most /proc/PID/comm holds; \
             use its first {MAX_COMM_LEN}"
        ))
    } else {
        Ok(())
    }
}

/// Largest template file accepted (a template is text written by people, not data).
const MAX_TEMPLATE_BYTES: u64 = 16 * 1024 * 1024;

/// Reads a template file: a regular file (a FIFO would block loading, a device would never
/// end) of reasonable size.
fn read_template(path: &Path) -> std::io::Result<String> {
    let meta = std::fs::metadata(path)?;
    if !meta.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    if meta.len() > MAX_TEMPLATE_BYTES {
        return Err(std::io::Error::other(format!("larger than {MAX_TEMPLATE_BYTES} bytes")));
    }
    std::fs::read_to_string(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = "/etc/zkrender/zkrender.toml";
    /// Lines 1-2 of most test configs.
    const ZK: &str = "[zookeeper]\nhosts = \"127.0.0.1:2181\"\n";

    fn ok(text: &str) -> Config {
        match parse(Path::new(CONFIG), text) {
            Ok(config) => config,
            Err(err) => panic!("expected a valid config, got:\n{err}"),
        }
    }

    /// The error and its Display text.
    fn invalid(text: &str) -> (ConfigError, String) {
        let err = parse(Path::new(CONFIG), text).expect_err("expected an invalid config");
        let shown = err.to_string();
        (err, shown)
    }

    fn znode(s: &str) -> ZnodePath {
        ZnodePath::parse(s).unwrap()
    }

    #[test]
    fn full_config_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("templates")).unwrap();
        std::fs::write(dir.path().join("templates/app.conf.j2"), "url = {{ znode(\"db/url\") }}\n").unwrap();
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        for name in ["zk.digest", "ca.pem", "client.pem", "client.key"] {
            std::fs::write(dir.path().join("secrets").join(name), "secret\n").unwrap();
        }
        let path = dir.path().join("zkrender.toml");
        let text = r#"
[zookeeper]
hosts = ["zk1:2181", "zk2:2182"]
chroot = "/prod"
session_timeout = "15s"
watch = "persistent"
auth = { scheme = "digest", credentials_file = "secrets/zk.digest" }
tls = { ca = "secrets/ca.pem", cert = "secrets/client.pem", key = "secrets/client.key" }

[agent]
wait = "200ms"
max_wait = "2s"
resync = "0s"
listen = "0.0.0.0:9200"

[[file]]
dest = "/etc/app/flags.json"
znode = "/app/flags"
mode = "0600"
owner = "root"
group = 0
on_delete = "remove"

[[file]]
dest = "/etc/app/app.conf"
template = "templates/app.conf.j2"
prefix = "/app"
mode = "0640"
check = ["app", "--check-config", "{file}"]
check_timeout = "5s"
backup = true
install = "in-place"
allow_empty = true
rollback = true
allow_env = ["HOSTNAME", "_APP_ENV2"]
[file.reload]
signal = "hup"
pid_file = "/run/app.pid"
retries = 5
splay = "1m 30s"

[[file]]
dest = "/etc/app/inline.conf"
inline = "x = {{ znode(\"x\") }}"
[file.reload]
http = "http://127.0.0.1:8080/-/reload"
method = "put"
timeout = "3s"

[[file]]
dest = "/etc/app/cmd.conf"
znode = "/app/cmd"
[file.reload]
command = ["/usr/local/bin/reload-app", "--graceful"]
retries = 0

[[file]]
dest = "/etc/app/proc.conf"
znode = "/app/proc"
[file.reload]
signal = "SIGUSR1"
process = "nginx"

[[file]]
dest = "/etc/app/pid.conf"
znode = "/app/pid"
[file.reload]
signal = "Term"
pid = 123

[[file]]
dest = "/etc/app/restart.conf"
znode = "/app/restart"
[file.reload]
restart = true
"#;
        let config = parse(&path, text).unwrap();
        assert_eq!(config.path, path);
        assert_eq!(
            config.zookeeper,
            ZkConfig {
                hosts: vec!["zk1:2181".into(), "zk2:2182".into()],
                chroot: Some(znode("/prod")),
                session_timeout: Duration::from_secs(15),
                watch: WatchMode::Persistent,
                auth: Some(ZkAuth {
                    scheme: "digest".into(),
                    credentials_file: dir.path().join("secrets/zk.digest"),
                }),
                tls: Some(ZkTls {
                    ca: dir.path().join("secrets/ca.pem"),
                    cert: Some(dir.path().join("secrets/client.pem")),
                    key: Some(dir.path().join("secrets/client.key")),
                }),
            }
        );
        assert_eq!(config.zookeeper.connect_string(), "zk1:2181,zk2:2182/prod");
        assert_eq!(
            config.agent,
            AgentConfig {
                wait: Duration::from_millis(200),
                max_wait: Duration::from_secs(2),
                resync: Duration::ZERO,
                listen: Some("0.0.0.0:9200".into()),
            }
        );
        assert_eq!(config.files.len(), 7);

        assert_eq!(
            config.files[0],
            FileSpec {
                dest: PathBuf::from("/etc/app/flags.json"),
                source: FileSource::Raw { znode: znode("/app/flags") },
                mode: 0o600,
                owner: Some(0),
                group: Some(0),
                on_delete: OnDelete::Remove,
                check: None,
                check_timeout: DEFAULT_CHECK_TIMEOUT,
                backup: false,
                install: InstallMode::Atomic,
                allow_empty: false,
                rollback: false,
                allow_env: Vec::new(),
                reload: None,
            }
        );
        assert_eq!(
            config.files[1],
            FileSpec {
                dest: PathBuf::from("/etc/app/app.conf"),
                source: FileSource::Template(TemplateSpec {
                    name: "templates/app.conf.j2".into(),
                    path: Some(dir.path().join("templates/app.conf.j2")),
                    text: "url = {{ znode(\"db/url\") }}\n".into(),
                    prefix: Some(znode("/app")),
                }),
                mode: 0o640,
                owner: None,
                group: None,
                on_delete: OnDelete::Keep,
                check: Some(vec!["app".into(), "--check-config".into(), "{file}".into()]),
                check_timeout: Duration::from_secs(5),
                backup: true,
                install: InstallMode::InPlace,
                allow_empty: true,
                rollback: true,
                allow_env: vec!["HOSTNAME".into(), "_APP_ENV2".into()],
                reload: Some(ReloadSpec {
                    action: ReloadAction::Signal {
                        signal: Signal::SIGHUP,
                        target: SignalTarget::PidFile("/run/app.pid".into()),
                    },
                    retries: 5,
                    timeout: DEFAULT_RELOAD_TIMEOUT,
                    splay: Duration::from_secs(90),
                }),
            }
        );
        assert_eq!(
            config.files[2].source,
            FileSource::Template(TemplateSpec {
                name: "inline template of /etc/app/inline.conf".into(),
                path: None,
                text: "x = {{ znode(\"x\") }}".into(),
                prefix: None,
            })
        );
        assert_eq!(
            config.files[2].reload,
            Some(ReloadSpec {
                action: ReloadAction::Http {
                    url: "http://127.0.0.1:8080/-/reload".into(),
                    method: "PUT".into()
                },
                retries: 3,
                timeout: Duration::from_secs(3),
                splay: Duration::ZERO,
            })
        );
        assert_eq!(
            config.files[3].reload,
            Some(ReloadSpec {
                action: ReloadAction::Command {
                    argv: vec!["/usr/local/bin/reload-app".into(), "--graceful".into()]
                },
                retries: 0,
                timeout: DEFAULT_RELOAD_TIMEOUT,
                splay: Duration::ZERO,
            })
        );
        assert_eq!(
            config.files[4].reload.as_ref().map(|r| &r.action),
            Some(&ReloadAction::Signal {
                signal: Signal::SIGUSR1,
                target: SignalTarget::Process("nginx".into())
            })
        );
        assert_eq!(
            config.files[5].reload.as_ref().map(|r| &r.action),
            Some(&ReloadAction::Signal { signal: Signal::SIGTERM, target: SignalTarget::Pid(123) })
        );
        assert_eq!(config.files[6].reload.as_ref().map(|r| &r.action), Some(&ReloadAction::Restart));
    }

    #[test]
    fn defaults() {
        let config = ok(&format!("{ZK}[[file]]\ndest = \"/etc/a\"\nznode = \"/a\"\n"));
        assert_eq!(config.path, PathBuf::from(CONFIG));
        assert_eq!(config.zookeeper.chroot, None);
        assert_eq!(config.zookeeper.session_timeout, DEFAULT_SESSION_TIMEOUT);
        assert_eq!(config.zookeeper.watch, WatchMode::Oneshot);
        assert_eq!((&config.zookeeper.auth, &config.zookeeper.tls), (&None, &None));
        assert_eq!(config.agent, AgentConfig::default());
        assert_eq!(config.agent.listen.as_deref(), Some(DEFAULT_LISTEN));
        let file = &config.files[0];
        assert_eq!(file.mode, 0o644);
        assert_eq!((file.owner, file.group), (None, None));
        assert_eq!(file.on_delete, OnDelete::Keep);
        assert_eq!(file.check, None);
        assert_eq!(file.check_timeout, Duration::from_secs(30));
        assert!(!file.backup && !file.allow_empty && !file.rollback);
        assert!(file.allow_env.is_empty());
        assert_eq!(file.install, InstallMode::Atomic);
        assert_eq!(file.reload, None);

        let config = ok(&format!(
            "{ZK}[[file]]\ndest = \"/etc/a\"\nznode = \"/a\"\n[file.reload]\nhttp = \"https://h/r\"\n"
        ));
        assert_eq!(
            config.files[0].reload,
            Some(ReloadSpec {
                action: ReloadAction::Http { url: "https://h/r".into(), method: "POST".into() },
                retries: 3,
                timeout: Duration::from_secs(10),
                splay: Duration::ZERO,
            })
        );
    }

    #[test]
    fn no_files_is_valid() {
        assert!(ok(ZK).files.is_empty());
    }

    #[test]
    fn unknown_key_names_line_column_and_key() {
        let text = format!(
            "{ZK}\n[[file]]\ndest = \"/etc/a\"\nznode = \"/a\"\n\n[[file]]\ndest = \"/etc/app/app.conf\"\n  znodes = \"/b\"\n"
        );
        let (err, shown) = invalid(&text);
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err:?}");
        assert!(
            shown.starts_with(&format!(
                "{CONFIG}:10:3: [[file]] #2 (dest = /etc/app/app.conf): key `znodes`: unknown field `znodes`, expected one of"
            )),
            "{shown}"
        );
        let problem = &err.problems()[0];
        assert_eq!((problem.line, problem.column, problem.key.as_str()), (10, 3, "znodes"));

        let (_, shown) = invalid(&format!("{ZK}[agent]\nwiat = \"1s\"\n"));
        assert!(
            shown.starts_with(&format!("{CONFIG}:4:1: [agent]: key `wiat`: unknown field `wiat`")),
            "{shown}"
        );

        let (_, shown) = invalid(&format!(
            "{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\n[file.reload]\nsignl = \"HUP\"\n"
        ));
        assert!(
            shown.starts_with(&format!(
                "{CONFIG}:7:1: [[file]] #1 (dest = /a): key `reload.signl`: unknown field"
            )),
            "{shown}"
        );

        let (_, shown) = invalid("[zookeepr]\nhosts = \"a:1\"\n");
        assert!(
            shown.starts_with(&format!("{CONFIG}:1:2: key `zookeepr`: unknown field `zookeepr`")),
            "{shown}"
        );
    }

    #[test]
    fn shape_errors_are_located() {
        let (_, shown) = invalid(&format!("{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\nmode = 644\n"));
        assert!(
            shown.starts_with(&format!(
                "{CONFIG}:6:8: [[file]] #1 (dest = /a): key `mode`: invalid type: integer `644`, expected a string"
            )),
            "{shown}"
        );
        let (_, shown) = invalid(&format!("{ZK}[[file]]\nznode = \"/a\"\n"));
        assert!(shown.starts_with(&format!("{CONFIG}:3:1: [[file]] #1: missing field `dest`")), "{shown}");
        let (_, shown) = invalid("[zookeeper]\nchroot = \"/x\"\n");
        assert!(shown.starts_with(&format!("{CONFIG}:1:1: [zookeeper]: missing field `hosts`")), "{shown}");
        let (_, shown) = invalid("");
        assert!(shown.contains("missing field `zookeeper`"), "{shown}");
        let (_, shown) = invalid(&format!("{ZK}[zookeeper\n"));
        assert!(shown.starts_with(&format!("{CONFIG}:3:11: ")), "{shown}");
        let (_, shown) = invalid("[zookeeper]\nhosts = 5\n");
        assert!(
            shown.contains("key `hosts`: invalid type: integer `5`, expected a connect string or an array"),
            "{shown}"
        );
        let (_, shown) = invalid("[zookeeper]\nhosts = \"a:1\"\nwatch = \"always\"\n");
        assert!(shown.contains(":3:9: [zookeeper]: key `watch`: unknown variant `always`"), "{shown}");
    }

    #[test]
    fn bad_mode() {
        for (mode, what) in
            [("0999", "not an octal number"), ("10000", "larger than 07777"), ("", "not an octal")]
        {
            let (_, shown) =
                invalid(&format!("{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\nmode = \"{mode}\"\n"));
            assert!(
                shown.contains(&format!(
                    "{CONFIG}:6:8: [[file]] #1 (dest = /a): key `mode`: mode {mode:?} is"
                )),
                "{shown}"
            );
            assert!(shown.contains(what), "{shown}");
        }
        assert_eq!(
            ok(&format!("{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\nmode = \"4755\"\n")).files[0].mode,
            0o4755
        );
        assert_eq!(
            ok(&format!("{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\nmode = \"0o600\"\n")).files[0].mode,
            0o600
        );
    }

    #[test]
    fn bad_signal() {
        let (_, shown) = invalid(&format!(
            "{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\n[file.reload]\nsignal = \"HUPP\"\npid = 1\n"
        ));
        assert!(
            shown.contains(&format!(
                "{CONFIG}:7:10: [[file]] #1 (dest = /a): key `reload.signal`: unknown signal \"HUPP\""
            )),
            "{shown}"
        );
        for name in ["HUP", "sighup", "SigHup", " hup "] {
            assert_eq!(parse_signal(name), Ok(Signal::SIGHUP), "{name}");
        }
        assert_eq!(parse_signal("usr2"), Ok(Signal::SIGUSR2));
        assert!(parse_signal("1").is_err());
    }

    #[test]
    fn signal_takes_at_most_one_target() {
        let base = format!("{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\n[file.reload]\nsignal = \"HUP\"\n");
        // No target: the child of `zkrender exec`.
        assert_eq!(
            ok(&base).files[0].reload.as_ref().map(|r| &r.action),
            Some(&ReloadAction::Signal { signal: Signal::SIGHUP, target: SignalTarget::Child })
        );
        let (_, shown) = invalid(&format!("{base}pid = 1\nprocess = \"app\"\n"));
        assert!(
            shown.contains(":9:11: [[file]] #1 (dest = /a): key `reload.process`: `pid` and `process`"),
            "{shown}"
        );
        let (_, shown) = invalid(&format!("{base}pid = 0\n"));
        assert!(shown.contains("key `reload.pid`: pid 0 is not a valid process id"), "{shown}");
        let (_, shown) = invalid(&format!("{base}process = \"a-very-long-process-name\"\n"));
        assert!(
            shown.contains("key `reload.process`: process \"a-very-long-process-name\" is longer than 15")
        );
        let config = ok(&format!("{base}pid_file = \"run/app.pid\"\n"));
        assert_eq!(
            config.files[0].reload.as_ref().map(|r| &r.action),
            Some(&ReloadAction::Signal {
                signal: Signal::SIGHUP,
                target: SignalTarget::PidFile("/etc/zkrender/run/app.pid".into())
            })
        );
    }

    #[test]
    fn reload_kinds_are_exclusive_and_checked() {
        let file = format!("{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\n[file.reload]\n");
        let (_, shown) = invalid(&format!("{file}http = \"http://h/\"\ncommand = [\"x\"]\n"));
        assert!(
            shown.contains(":8:11: [[file]] #1 (dest = /a): key `reload.command`: `http` and `command`"),
            "{shown}"
        );
        let (_, shown) = invalid(&format!("{file}retries = 2\n"));
        assert!(
            shown.contains(":6:1: [[file]] #1 (dest = /a): key `reload`: needs one of `signal`"),
            "{shown}"
        );
        let (_, shown) = invalid(&format!("{file}http = \"ftp://h/\"\nmethod = \"FETCH\"\nretries = -1\n"));
        assert!(
            shown.contains(":7:8: [[file]] #1 (dest = /a): key `reload.http`: url \"ftp://h/\""),
            "{shown}"
        );
        assert!(
            shown.contains(":8:10: [[file]] #1 (dest = /a): key `reload.method`: method \"FETCH\""),
            "{shown}"
        );
        assert!(
            shown.contains(":9:11: [[file]] #1 (dest = /a): key `reload.retries`: retries must be"),
            "{shown}"
        );
        let (_, shown) = invalid(&format!("{file}command = []\npid = 3\ntimeout = \"0s\"\n"));
        assert!(shown.contains("key `reload.command`: command must be a non-empty array"), "{shown}");
        assert!(shown.contains("key `reload.pid`: `pid` only applies with `signal`"), "{shown}");
        assert!(shown.contains("key `reload.timeout`: timeout must be greater than zero"), "{shown}");
    }

    #[test]
    fn exactly_one_source() {
        let (err, shown) = invalid(&format!(
            "{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\ntemplate = \"t.j2\"\ninline = \"x\"\n"
        ));
        assert_eq!(err.problems().len(), 2, "{shown}");
        assert!(shown.contains(&format!(
            "{CONFIG}:6:12: [[file]] #1 (dest = /a): key `template`: `znode` and `template` are mutually exclusive"
        )));
        assert!(
            shown.contains(":7:10: [[file]] #1 (dest = /a): key `inline`: `znode` and `inline`"),
            "{shown}"
        );

        let (_, shown) = invalid(&format!("{ZK}[[file]]\ndest = \"/a\"\nmode = \"0600\"\n"));
        assert!(
            shown.contains(":3:1: [[file]] #1 (dest = /a): needs one of `znode`, `template` or `inline`")
        );

        let (_, shown) = invalid(&format!("{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\nprefix = \"/p\"\n"));
        assert!(shown.contains(":6:10: [[file]] #1 (dest = /a): key `prefix`: `prefix` only applies with"));
    }

    #[test]
    fn bad_znode_paths() {
        let (_, shown) = invalid(&format!(
            "{ZK}[[file]]\ndest = \"/etc/a\"\ninline = \"\"\nprefix = \"app\"\n\n[[file]]\ndest = \"/etc/app/app.conf\"\nznode = \"db/url\"\n"
        ));
        assert!(shown.contains(&format!(
            "{CONFIG}:6:10: [[file]] #1 (dest = /etc/a): key `prefix`: znode path \"app\" must start with \"/\""
        )));
        assert!(
            shown.contains(&format!(
                "{CONFIG}:10:9: [[file]] #2 (dest = /etc/app/app.conf): key `znode`: znode path \"db/url\" must start with \"/\""
            )),
            "{shown}"
        );
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("conf/templates")).unwrap();
        std::fs::write(dir.path().join("conf/templates/a.j2"), "hello").unwrap();
        let path = dir.path().join("conf/./zkrender.toml");
        let text = format!("{ZK}[[file]]\ndest = \"out/./a.conf\"\ntemplate = \"./templates/a.j2\"\n");
        let config = parse(&path, &text).unwrap();
        let file = &config.files[0];
        assert_eq!(config.path, dir.path().join("conf/zkrender.toml"));
        assert_eq!(file.dest, dir.path().join("conf/out/a.conf"));
        let FileSource::Template(template) = &file.source else { panic!("expected a template") };
        assert_eq!(template.name, "./templates/a.j2");
        assert_eq!(template.path.as_deref(), Some(dir.path().join("conf/templates/a.j2").as_path()));
        assert_eq!(template.text, "hello");

        // Loading from disk gives the same result.
        std::fs::write(dir.path().join("conf/zkrender.toml"), &text).unwrap();
        assert_eq!(load(&path).unwrap().files, config.files);

        // A missing template is a problem on the `template` line.
        let text = format!("{ZK}[[file]]\ndest = \"a.conf\"\ntemplate = \"templates/missing.j2\"\n");
        let err = parse(&path, &text).unwrap_err();
        let shown = err.to_string();
        let missing = dir.path().join("conf/templates/missing.j2");
        assert!(
            shown.contains(&format!(
                "zkrender.toml:5:12: [[file]] #1 (dest = a.conf): key `template`: reading template {}:",
                missing.display()
            )),
            "{shown}"
        );
    }

    #[test]
    fn unreadable_file_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("nope.toml");
        let err = load(&path).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }));
        assert_eq!(err.to_string(), format!("reading {}", path.display()));
        assert!(err.problems().is_empty());
    }

    #[test]
    fn duplicate_dest() {
        let (_, shown) = invalid(&format!(
            "{ZK}[[file]]\ndest = \"/etc/zkrender/a\"\nznode = \"/a\"\n[[file]]\ndest = \"a\"\nznode = \"/b\"\n"
        ));
        assert!(
            shown.contains(&format!(
                "{CONFIG}:7:8: [[file]] #2 (dest = a): key `dest`: /etc/zkrender/a is also the dest of [[file]] #1"
            )),
            "{shown}"
        );
        let (_, shown) = invalid(&format!("{ZK}[[file]]\ndest = \"/etc/app/\"\nznode = \"/a\"\n"));
        assert!(shown.contains("key `dest`: dest \"/etc/app/\" must name a file"), "{shown}");
    }

    #[test]
    fn max_wait_defaults_to_four_times_wait() {
        let config = ok(&format!("{ZK}[agent]\nwait = \"250ms\"\n"));
        assert_eq!(config.agent.wait, Duration::from_millis(250));
        assert_eq!(config.agent.max_wait, Duration::from_secs(1));
        assert_eq!(config.agent.resync, Duration::from_secs(600));

        let (_, shown) = invalid(&format!("{ZK}[agent]\nwait = \"2s\"\nmax_wait = \"1s\"\n"));
        assert!(
            shown.contains(&format!(
                "{CONFIG}:5:12: [agent]: key `max_wait`: max_wait (1s) must not be shorter"
            )),
            "{shown}"
        );
        // Without a wait there is nothing to be shorter than.
        assert_eq!(ok(&format!("{ZK}[agent]\nmax_wait = \"1s\"\n")).agent.max_wait, Duration::from_secs(1));
    }

    #[test]
    fn hosts_string_or_array() {
        let config = ok("[zookeeper]\nhosts = \"zk1:2181, zk2:2182/prod\"\n");
        assert_eq!(config.zookeeper.hosts, ["zk1:2181", "zk2:2182"]);
        assert_eq!(config.zookeeper.chroot, Some(znode("/prod")));
        assert_eq!(config.zookeeper.connect_string(), "zk1:2181,zk2:2182/prod");

        let config = ok("[zookeeper]\nhosts = [\"zk1:2181\", \"[::1]:2182\"]\nchroot = \"/prod/\"\n");
        assert_eq!(config.zookeeper.hosts, ["zk1:2181", "[::1]:2182"]);
        assert_eq!(config.zookeeper.chroot, Some(znode("/prod")));

        let config = ok("[zookeeper]\nhosts = \"zk1:2181\"\n");
        assert_eq!(config.zookeeper.chroot, None);

        let (_, shown) = invalid("[zookeeper]\nhosts = \"zk1:2181/a\"\nchroot = \"/b\"\n");
        assert!(
            shown.contains(&format!("{CONFIG}:3:10: [zookeeper]: key `chroot`: chroot is set both here and")),
            "{shown}"
        );
        let (err, shown) =
            invalid("[zookeeper]\nhosts = [\"zk1:2181\", \"zk2\", \"zk3:x\", \"zk4:1/c\"]\nchroot = \"c\"\n");
        assert_eq!(err.problems().len(), 4, "{shown}");
        assert!(shown.contains(":2:22: [zookeeper]: key `hosts`: host \"zk2\" must be host:port"), "{shown}");
        assert!(
            shown.contains(":2:29: [zookeeper]: key `hosts`: host \"zk3:x\": port \"x\" is not a number")
        );
        assert!(shown.contains(":2:38: [zookeeper]: key `hosts`: host \"zk4:1/c\": array entries may not"));
        assert!(shown.contains(":3:10: [zookeeper]: key `chroot`: znode path \"c\" must start with \"/\""));
        let (_, shown) = invalid("[zookeeper]\nhosts = []\n");
        assert!(shown.contains(":2:9: [zookeeper]: key `hosts`: no ZooKeeper hosts given"), "{shown}");
        let (_, shown) = invalid("[zookeeper]\nhosts = \"/prod\"\n");
        assert!(shown.contains("key `hosts`: no ZooKeeper hosts given"), "{shown}");
        let (_, shown) = invalid("[zookeeper]\nhosts = \"a:1,,b:2/x//y\"\n");
        assert!(shown.contains("key `hosts`: host \"\" must be host:port"), "{shown}");
        assert!(shown.contains("key `hosts`: chroot suffix: znode path \"/x//y\" has an empty component"));
    }

    #[test]
    fn bad_duration() {
        let (_, shown) = invalid("[zookeeper]\nhosts = \"a:1\"\nsession_timeout = \"ten seconds\"\n");
        assert!(
            shown.contains(&format!(
                "{CONFIG}:3:19: [zookeeper]: key `session_timeout`: invalid duration \"ten seconds\": "
            )),
            "{shown}"
        );
        let (_, shown) = invalid("[zookeeper]\nhosts = \"a:1\"\nsession_timeout = \"0s\"\n");
        assert!(
            shown.contains("key `session_timeout`: session_timeout must be greater than zero"),
            "{shown}"
        );
        let (_, shown) =
            invalid(&format!("{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\ncheck_timeout = \"5\"\n"));
        assert!(
            shown.contains(":6:17: [[file]] #1 (dest = /a): key `check_timeout`: invalid duration \"5\"")
        );
    }

    #[test]
    fn owner_and_group() {
        let file = format!("{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\n");
        let config = ok(&format!("{file}owner = \"1000\"\ngroup = 1001\n"));
        assert_eq!((config.files[0].owner, config.files[0].group), (Some(1000), Some(1001)));
        let config = ok(&format!("{file}owner = \"root\"\n"));
        assert_eq!(config.files[0].owner, Some(0));
        let (_, shown) = invalid(&format!("{file}owner = \"no-such-user-zkr\"\ngroup = -1\n"));
        assert!(
            shown.contains(":6:9: [[file]] #1 (dest = /a): key `owner`: unknown user \"no-such-user-zkr\"")
        );
        assert!(
            shown.contains(":7:9: [[file]] #1 (dest = /a): key `group`: group id -1 is out of range"),
            "{shown}"
        );
        let (_, shown) = invalid(&format!("{file}group = \"no-such-group-zkr\"\n"));
        assert!(shown.contains("key `group`: unknown group \"no-such-group-zkr\""), "{shown}");
    }

    #[test]
    fn every_problem_is_reported_in_one_error() {
        let text = "[zookeeper]
hosts = \"zk1\"
session_timeout = \"soon\"

[agent]
resync = \"-1s\"

[[file]]
dest = \"/etc/a\"
znode = \"a\"
mode = \"888\"

[[file]]
dest = \"/etc/b\"
inline = \"x\"
check = []
[file.reload]
signal = \"NOPE\"
pid_file = \"/run/b.pid\"
";
        let (err, shown) = invalid(text);
        let ConfigError::Invalid { path, problems } = &err else { panic!("expected Invalid, got {err:?}") };
        assert_eq!(path, Path::new(CONFIG));
        let found: Vec<(usize, usize, &str)> =
            problems.iter().map(|p| (p.line, p.column, p.key.as_str())).collect();
        assert_eq!(
            found,
            [
                (2, 9, "hosts"),
                (3, 19, "session_timeout"),
                (6, 10, "resync"),
                (10, 9, "znode"),
                (11, 8, "mode"),
                (16, 9, "check"),
                (18, 10, "reload.signal"),
            ],
            "{shown}"
        );
        let mut lines = shown.lines();
        assert_eq!(lines.next(), Some(format!("{CONFIG} is invalid:").as_str()));
        for (line, problem) in lines.zip(problems) {
            assert_eq!(line, format!("  {CONFIG}:{problem}"));
            assert!(line.contains(&format!("key `{}`", problem.key)), "{line}");
        }
        assert_eq!(shown.lines().count(), 1 + problems.len());
        assert!(!shown.ends_with('.'));
    }

    /// Parses `text` as `DIR/zkrender.toml`, so that relative paths resolve into `dir`.
    fn parse_in(dir: &Path, text: &str) -> Result<Config, ConfigError> {
        parse(&dir.join("zkrender.toml"), text)
    }

    #[test]
    fn auth_names_the_credentials_file_and_never_its_secret() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        std::fs::write(dir.path().join("secrets/zk.digest"), "agent:s3cret-pw\n").unwrap();
        let config = parse_in(
            dir.path(),
            &format!("{ZK}auth = {{ scheme = \"digest\", credentials_file = \"secrets/zk.digest\" }}\n"),
        )
        .unwrap();
        let auth = config.zookeeper.auth.as_ref().unwrap();
        assert_eq!(auth.scheme, "digest");
        assert_eq!(auth.credentials_file, dir.path().join("secrets/zk.digest"));
        let debug = format!("{config:?}");
        assert!(debug.contains(&format!("{:?}", dir.path().join("secrets/zk.digest"))), "{debug}");
        assert!(!debug.contains("s3cret"), "{debug}");
        assert_eq!(
            format!("{auth:?}"),
            format!("ZkAuth {{ scheme: \"digest\", credentials_file: {:?} }}", auth.credentials_file)
        );

        // The table form is the same key.
        let config = parse_in(
            dir.path(),
            &format!("{ZK}[zookeeper.auth]\nscheme = \"digest\"\ncredentials_file = \"secrets/zk.digest\"\n"),
        )
        .unwrap();
        assert_eq!(config.zookeeper.auth.as_ref(), Some(auth));
    }

    #[test]
    fn bad_auth() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("zk.digest"), "agent:s3cret-pw\n").unwrap();
        std::fs::create_dir(dir.path().join("secrets")).unwrap();
        let err = parse_in(
            dir.path(),
            &format!("{ZK}auth = {{ scheme = \"sasl\", credentials_file = \"missing.digest\" }}\n"),
        )
        .unwrap_err();
        let shown = err.to_string();
        assert_eq!(err.problems().len(), 2, "{shown}");
        assert!(
            shown.contains(
                "zkrender.toml:3:19: [zookeeper]: key `auth.scheme`: scheme \"sasl\" is not supported; \
                 the only scheme is \"digest\""
            ),
            "{shown}"
        );
        assert!(
            shown.contains(&format!(
                "zkrender.toml:3:46: [zookeeper]: key `auth.credentials_file`: cannot read credentials_file {}: \
                 No such file or directory",
                dir.path().join("missing.digest").display()
            )),
            "{shown}"
        );

        // A directory is not a credentials file; an error never shows a secret.
        let shown = parse_in(
            dir.path(),
            &format!("{ZK}auth = {{ scheme = \"digest\", credentials_file = \"secrets\" }}\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(
            shown.contains(&format!(
                "key `auth.credentials_file`: cannot read credentials_file {}: not a regular file",
                dir.path().join("secrets").display()
            )),
            "{shown}"
        );
        let (_, shown) = invalid(&format!("{ZK}auth = {{ scheme = \"digest\", credentials_file = \"\" }}\n"));
        assert!(shown.contains(":3:48: [zookeeper]: key `auth.credentials_file`: credentials_file is empty"));

        // Both keys are required and no other is allowed: shape errors, located.
        let (err, shown) = invalid(&format!("{ZK}auth = {{ scheme = \"digest\" }}\n"));
        assert!(matches!(err, ConfigError::Syntax { .. }), "{shown}");
        assert!(
            shown.starts_with(&format!(
                "{CONFIG}:3:8: [zookeeper]: key `auth`: missing field `credentials_file`"
            )),
            "{shown}"
        );
        let (_, shown) = invalid(&format!(
            "{ZK}auth = {{ scheme = \"digest\", credentials_file = \"zk.digest\", password = \"hunter2\" }}\n"
        ));
        assert!(
            shown.starts_with(&format!(
                "{CONFIG}:3:61: [zookeeper]: key `auth.password`: unknown field `password`"
            )),
            "{shown}"
        );
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    #[test]
    fn tls_files_resolve_and_must_exist() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ca.pem", "client.pem", "client.key"] {
            std::fs::write(dir.path().join(name), "pem").unwrap();
        }
        let config = parse_in(dir.path(), &format!("{ZK}tls = {{ ca = \"ca.pem\" }}\n")).unwrap();
        assert_eq!(
            config.zookeeper.tls,
            Some(ZkTls { ca: dir.path().join("ca.pem"), cert: None, key: None })
        );
        let text = format!(
            "{ZK}[zookeeper.tls]\nca = \"/nonexistent/ca.pem\"\ncert = \"no.pem\"\nkey = \"no.key\"\n"
        );
        let err = parse_in(dir.path(), &text).unwrap_err();
        let shown = err.to_string();
        let found: Vec<(usize, usize, &str)> =
            err.problems().iter().map(|p| (p.line, p.column, p.key.as_str())).collect();
        assert_eq!(found, [(4, 6, "tls.ca"), (5, 8, "tls.cert"), (6, 7, "tls.key")], "{shown}");
        assert!(
            shown.contains("[zookeeper]: key `tls.ca`: cannot read ca /nonexistent/ca.pem: No such file"),
            "{shown}"
        );
        assert!(
            shown.contains(&format!(
                "[zookeeper]: key `tls.key`: cannot read key {}: No such file",
                dir.path().join("no.key").display()
            )),
            "{shown}"
        );
        let (_, shown) = invalid(&format!("{ZK}tls = {{ cert = \"client.pem\" }}\n"));
        assert!(shown.contains(":3:7: [zookeeper]: key `tls`: missing field `ca`"), "{shown}");
    }

    #[test]
    fn tls_cert_and_key_go_together() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["ca.pem", "client.pem", "client.key"] {
            std::fs::write(dir.path().join(name), "pem").unwrap();
        }
        let err = parse_in(dir.path(), &format!("{ZK}tls = {{ ca = \"ca.pem\", cert = \"client.pem\" }}\n"))
            .unwrap_err();
        let shown = err.to_string();
        assert_eq!(err.problems().len(), 1, "{shown}");
        assert!(
            shown.contains(
                "zkrender.toml:3:31: [zookeeper]: key `tls.cert`: `cert` needs `key` (the client certificate's key)"
            ),
            "{shown}"
        );
        let shown = parse_in(dir.path(), &format!("{ZK}tls = {{ ca = \"ca.pem\", key = \"client.key\" }}\n"))
            .unwrap_err()
            .to_string();
        assert!(shown.contains(":3:30: [zookeeper]: key `tls.key`: `key` needs `cert`"), "{shown}");
    }

    #[test]
    fn listen() {
        let listen = |value: &str| ok(&format!("{ZK}[agent]\nlisten = {value:?}\n")).agent.listen;
        assert_eq!(
            ok(&format!("{ZK}[agent]\nwait = \"1s\"\n")).agent.listen.as_deref(),
            Some(DEFAULT_LISTEN)
        );
        assert_eq!(listen(""), None);
        for addr in ["127.0.0.1:9102", "0.0.0.0:9102", "[::1]:9102", "[::]:0", "10.1.2.3:0"] {
            assert_eq!(listen(addr).as_deref(), Some(addr));
        }
        for bad in ["localhost:9102", "127.0.0.1", "127.0.0.1:99999", ":9102", " "] {
            let (_, shown) = invalid(&format!("{ZK}[agent]\nlisten = {bad:?}\n"));
            assert!(
                shown.contains(&format!(
                    "{CONFIG}:4:10: [agent]: key `listen`: listen {bad:?} is not an address such as"
                )),
                "{shown}"
            );
        }
    }

    #[test]
    fn rollback_needs_a_reload() {
        let file = format!("{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\n");
        let (err, shown) = invalid(&format!("{file}rollback = true\n"));
        assert_eq!(err.problems().len(), 1, "{shown}");
        assert!(
            shown.contains(&format!(
                "{CONFIG}:6:12: [[file]] #1 (dest = /a): key `rollback`: rollback = true needs a [file.reload]"
            )),
            "{shown}"
        );
        assert!(!ok(&format!("{file}rollback = false\n")).files[0].rollback);
        let config = ok(&format!("{file}rollback = true\n[file.reload]\ncommand = [\"reload\"]\n"));
        assert!(config.files[0].rollback);
        // A reload with problems of its own is not also reported as missing.
        let (err, shown) = invalid(&format!("{file}rollback = true\n[file.reload]\nretries = 1\n"));
        assert_eq!(err.problems().len(), 1, "{shown}");
        assert_eq!(err.problems()[0].key, "reload", "{shown}");
    }

    #[test]
    fn allow_env_names() {
        let file = format!("{ZK}[[file]]\ndest = \"/a\"\ninline = \"{{{{ env(\\\"A\\\") }}}}\"\n");
        assert_eq!(ok(&format!("{file}allow_env = [\"A\", \"_b1\"]\n")).files[0].allow_env, ["A", "_b1"]);
        assert!(ok(&format!("{file}allow_env = []\n")).files[0].allow_env.is_empty());
        let (err, shown) = invalid(&format!("{file}allow_env = [\"OK\", \"1X\", \"\", \"A-B\", \"É\"]\n"));
        let found: Vec<(usize, usize, &str)> =
            err.problems().iter().map(|p| (p.line, p.column, p.key.as_str())).collect();
        assert_eq!(
            found,
            [(6, 20, "allow_env"), (6, 26, "allow_env"), (6, 30, "allow_env"), (6, 37, "allow_env")]
        );
        assert!(
            shown.contains(&format!(
                "{CONFIG}:6:20: [[file]] #1 (dest = /a): key `allow_env`: environment variable name \"1X\" \
                 must match [A-Za-z_][A-Za-z0-9_]*"
            )),
            "{shown}"
        );
        assert!(
            shown.contains(
                ":6:26: [[file]] #1 (dest = /a): key `allow_env`: environment variable name is empty"
            )
        );
        assert!(shown.contains("key `allow_env`: environment variable name \"A-B\" must match"), "{shown}");
        assert!(shown.contains("key `allow_env`: environment variable name \"É\" must match"), "{shown}");
    }

    #[test]
    fn allow_env_needs_a_template() {
        let (err, shown) =
            invalid(&format!("{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\nallow_env = [\"HOME\"]\n"));
        assert_eq!(err.problems().len(), 1, "{shown}");
        assert!(
            shown.contains(&format!(
                "{CONFIG}:6:13: [[file]] #1 (dest = /a): key `allow_env`: `allow_env` only applies with \
                 `template` or `inline`"
            )),
            "{shown}"
        );
    }

    #[test]
    fn splay() {
        let reload =
            format!("{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\n[file.reload]\ncommand = [\"r\"]\n");
        let splay = |config: Config| config.files[0].reload.as_ref().unwrap().splay;
        assert_eq!(splay(ok(&reload)), Duration::ZERO);
        assert_eq!(splay(ok(&format!("{reload}splay = \"5s\"\n"))), Duration::from_secs(5));
        assert_eq!(splay(ok(&format!("{reload}splay = \"0s\"\n"))), Duration::ZERO);
        let (_, shown) = invalid(&format!("{reload}splay = \"soon\"\n"));
        assert!(
            shown.contains(&format!(
                "{CONFIG}:8:9: [[file]] #1 (dest = /a): key `reload.splay`: invalid duration \"soon\""
            )),
            "{shown}"
        );
    }

    #[test]
    fn restart_is_a_reload_kind() {
        let file = format!("{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\n[file.reload]\n");
        let config = ok(&format!("{file}restart = true\ntimeout = \"30s\"\n"));
        assert_eq!(
            config.files[0].reload,
            Some(ReloadSpec {
                action: ReloadAction::Restart,
                retries: DEFAULT_RELOAD_RETRIES,
                timeout: Duration::from_secs(30),
                splay: Duration::ZERO,
            })
        );
        // `restart = false` is the same as leaving it out.
        let (_, shown) = invalid(&format!("{file}restart = false\n"));
        assert!(
            shown.contains(&format!(
                "{CONFIG}:6:1: [[file]] #1 (dest = /a): key `reload`: needs one of `signal`, `http`, \
                 `command` or `restart = true`"
            )),
            "{shown}"
        );
        let config = ok(&format!("{file}restart = false\nsignal = \"HUP\"\n"));
        assert_eq!(
            config.files[0].reload.as_ref().map(|r| &r.action),
            Some(&ReloadAction::Signal { signal: Signal::SIGHUP, target: SignalTarget::Child })
        );
        let (_, shown) = invalid(&format!("{file}signal = \"HUP\"\nrestart = true\n"));
        assert!(
            shown.contains(&format!(
                "{CONFIG}:8:11: [[file]] #1 (dest = /a): key `reload.restart`: `signal` and `restart` are \
                 mutually exclusive"
            )),
            "{shown}"
        );
    }

    #[test]
    fn positions_count_characters() {
        let lines = LineIndex::new("ab\nçé = 1\n");
        assert_eq!(lines.position(0), (1, 1));
        assert_eq!(lines.position(3), (2, 1));
        assert_eq!(lines.position(7), (2, 3));
        assert_eq!(lines.position(100), (3, 1));
    }
}
