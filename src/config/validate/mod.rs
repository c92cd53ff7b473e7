//! [`RawConfig`] -> [`Config`]: defaults, path resolution, lookups, and every problem at once.
//!
//! A document that does not have the right shape (TOML syntax, unknown key, wrong type,
//! missing required key) stops at the first error, reported as [`ConfigError::Syntax`].
//! Once it has the right shape, every value is checked and all problems are collected
//! into one [`ConfigError::Invalid`], each with its line, column, table and key.
//!
//! [`parse`] is the one entry point. The walk is a [`Checker`] whose methods are split by
//! section: [`zookeeper`], [`agent`], [`file`] and [`reload`]; the value checks they share
//! (durations, paths, argv) are here, and where a key sits in the text is [`super::span`]'s.

mod agent;
mod file;
mod reload;
mod zookeeper;

use std::collections::HashMap;
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::Config;
use super::raw::RawConfig;
use super::span::{LineIndex, file_section, key_at};
use crate::model::ZnodePath;

/// `[zookeeper] session_timeout` when not set.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);
/// `[agent] resync` when not set (defined beside [`super::AgentConfig`]'s default).
pub use super::DEFAULT_RESYNC;
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
    /// A `-c` directory could not be listed.
    #[error("reading config directory {}", .path.display())]
    ReadDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A command-line flag (`--zookeeper`, `--znode`, `--template`) is invalid. `flag` names
    /// it as given, e.g. `--znode #1 (/app/flags:/etc/app/flags.json)`.
    #[error("{flag} is invalid:{}", messages.iter().map(|m| format!("\n  {flag}: {m}")).collect::<String>())]
    Flag { flag: String, messages: Vec<String> },
    /// `[zookeeper]` or `[agent]` in two files of one configuration set.
    #[error("{section} is set in both {} and {}; keep it in one file", .first.display(), .second.display())]
    Duplicate { section: &'static str, first: PathBuf, second: PathBuf },
    /// No `[zookeeper]` in any file of the set, and no `--zookeeper`.
    #[error("no ZooKeeper hosts: no [zookeeper] section in {} and no --zookeeper (or ZKRENDER_ZOOKEEPER)", shown_files(.files))]
    NoZookeeper { files: Vec<PathBuf> },
    /// Several of the above, from different files or flags of one set, in set order.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("\n"))]
    Several(Vec<ConfigError>),
}

/// `a.toml, b.toml`, or `any config file` when none was read.
fn shown_files(files: &[PathBuf]) -> String {
    if files.is_empty() {
        return "any config file (none was read)".to_owned();
    }
    files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", ")
}

impl ConfigError {
    /// The located problems: one for [`ConfigError::Syntax`], all for
    /// [`ConfigError::Invalid`], none when the file could not be read.
    pub fn problems(&self) -> &[Problem] {
        match self {
            ConfigError::Read { .. }
            | ConfigError::Path { .. }
            | ConfigError::ReadDir { .. }
            | ConfigError::Flag { .. }
            | ConfigError::Duplicate { .. }
            | ConfigError::NoZookeeper { .. }
            | ConfigError::Several(_) => &[],
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

/// Parses and validates config `text` as if read from `path`: one self-contained document,
/// which must hold `[zookeeper]`.
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
    let raw = raw_document(&path, text)?;
    if raw.zookeeper.is_none() {
        let problem = Problem {
            line: 1,
            column: 1,
            section: String::new(),
            key: String::new(),
            message: "missing field `zookeeper`".to_owned(),
        };
        return Err(ConfigError::Syntax { path, problem });
    }
    let part = file_part(&path, text, raw, 0, &mut Dests::default())?;
    let origin =
        super::Origin { sources: super::Sources::file(&path), files: vec![path.clone()], dirs: Vec::new() };
    let exec_only = part.exec_only.into_iter().map(|p| (path.clone(), p)).collect();
    Ok(Config {
        exec_only,
        path,
        zookeeper: part.zookeeper.expect("checked above"),
        agent: part.agent.unwrap_or_default(),
        files: part.files,
        origin,
    })
}

/// The shape of one document (TOML syntax, known keys, types).
///
/// # Errors
/// [`ConfigError::Syntax`] naming `path`, line and key.
pub(crate) fn raw_document(path: &Path, text: &str) -> Result<RawConfig, ConfigError> {
    toml::from_str(text)
        .map_err(|err| ConfigError::Syntax { problem: syntax_problem(text, &err), path: path.to_owned() })
}

/// What one document of a configuration set holds, validated; the set puts the parts
/// together (see [`super::sources`]).
#[derive(Debug)]
pub(crate) struct Part {
    pub zookeeper: Option<super::ZkConfig>,
    pub agent: Option<super::AgentConfig>,
    pub files: Vec<super::FileSpec>,
    /// What only `zkrender exec` accepts (see [`Config::exec_only`]).
    pub exec_only: Vec<Problem>,
}

/// Which `[[file]]` (or flag) claimed each dest, across every document of a set, so that a
/// dest given twice is a problem even when the two entries sit in different files.
#[derive(Debug, Default)]
pub(crate) struct Dests(HashMap<PathBuf, DestOwner>);

#[derive(Debug)]
struct DestOwner {
    /// The document's number in its set.
    doc: usize,
    /// How the entry is named inside its own document (`[[file]] #1`).
    short: String,
    /// How it is named from another document (`[[file]] #1 in /etc/zkrender/conf.d/a.toml`).
    long: String,
    /// The dest as written (resolved), for "the same file as" messages.
    dest: PathBuf,
}

/// Validates a config file's document (`path` absolute, its `raw` shape already read);
/// relative paths resolve against `path`'s directory. `doc` numbers it within its set.
///
/// # Errors
/// [`ConfigError::Invalid`] with every problem, naming `path`.
pub(crate) fn file_part(
    path: &Path,
    text: &str,
    raw: RawConfig,
    doc: usize,
    dests: &mut Dests,
) -> Result<Part, ConfigError> {
    let base_dir = path.parent().map_or_else(|| PathBuf::from("/"), Path::to_path_buf);
    let mut checker =
        Checker { lines: LineIndex::new(text), base_dir, problems: Vec::new(), exec_only: Vec::new() };
    let name = |index: usize, dest: Option<&str>| file_section(index, dest);
    let owner = |index: usize, dest: &Path| {
        let short = format!("[[file]] #{}", index + 1);
        DestOwner { doc, long: format!("{short} in {}", path.display()), short, dest: dest.to_path_buf() }
    };
    let part = checker.part(raw, doc, &name, &owner, dests);
    if checker.problems.is_empty() {
        Ok(part)
    } else {
        Err(ConfigError::Invalid { path: path.to_owned(), problems: checker.problems })
    }
}

/// Validates a document made from a command-line flag (`text`, TOML written by
/// [`super::sources`]); every problem is reported as the flag's, named by `flag`. Relative
/// paths resolve against `base_dir` (the working directory).
///
/// # Errors
/// [`ConfigError::Flag`] naming `flag`.
pub(crate) fn flag_part(
    flag: &str,
    text: &str,
    base_dir: PathBuf,
    doc: usize,
    dests: &mut Dests,
) -> Result<Part, ConfigError> {
    let as_flag = |messages: Vec<String>| ConfigError::Flag { flag: flag.to_owned(), messages };
    let raw: RawConfig = toml::from_str(text)
        .map_err(|err| as_flag(vec![format!("bug: flag document: {}", err.message())]))?;
    let mut checker =
        Checker { lines: LineIndex::new(text), base_dir, problems: Vec::new(), exec_only: Vec::new() };
    let name = |_: usize, _: Option<&str>| flag.to_owned();
    let owner = |_: usize, dest: &Path| DestOwner {
        doc,
        short: flag.to_owned(),
        long: flag.to_owned(),
        dest: dest.to_path_buf(),
    };
    let part = checker.part(raw, doc, &name, &owner, dests);
    if checker.problems.is_empty() {
        Ok(part)
    } else {
        Err(as_flag(checker.problems.into_iter().map(|p| p.message).collect()))
    }
}

/// The single problem for a TOML or shape error, named by the table and key at its span.
fn syntax_problem(text: &str, err: &toml::de::Error) -> Problem {
    let offset = err.span().map_or(0, |span| span.start);
    let (line, column) = LineIndex::new(text).position(offset);
    let (section, key) = key_at(text, offset);
    Problem { line, column, section, key, message: err.message().to_owned() }
}

// ---------------------------------------------------------------------------------------
// Validation

/// Walks a [`RawConfig`], building a [`Part`] and collecting problems.
///
/// A value with a problem is replaced by its default (or the file is dropped) so that the
/// walk continues; the built config is only returned when no problem was recorded.
struct Checker<'t> {
    lines: LineIndex<'t>,
    /// The config file's directory, for relative paths.
    base_dir: PathBuf,
    problems: Vec<Problem>,
    /// What only `zkrender exec` accepts; not a problem for the config itself.
    exec_only: Vec<Problem>,
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
        let problem = self.locate(at, key, span, message.into());
        self.problems.push(problem);
    }

    /// Records that the key at `span` needs `zkrender exec` (see [`Config::exec_only`]).
    fn exec_only(&mut self, at: At<'_>, key: &str, span: Range<usize>, what: &str) {
        let message = format!(
            "{what}: valid only under `zkrender exec` (`zkrender check --exec` checks a config for it)"
        );
        let problem = self.locate(at, key, span, message);
        self.exec_only.push(problem);
    }

    fn locate(&self, at: At<'_>, key: &str, span: Range<usize>, message: String) -> Problem {
        let (line, column) = self.lines.position(span.start);
        let key = if key.is_empty() {
            at.key_prefix.trim_end_matches('.').to_owned()
        } else {
            format!("{}{key}", at.key_prefix)
        };
        Problem { line, column, section: at.section.to_owned(), key, message }
    }

    /// One document's sections. `name` names a `[[file]]` in messages, `owner` in other
    /// entries' messages about a shared dest.
    fn part(
        &mut self,
        raw: RawConfig,
        doc: usize,
        name: &dyn Fn(usize, Option<&str>) -> String,
        owner: &dyn Fn(usize, &Path) -> DestOwner,
        dests: &mut Dests,
    ) -> Part {
        let zookeeper = raw.zookeeper.as_ref().map(|zookeeper| self.zookeeper(zookeeper));
        let agent = raw.agent.as_ref().map(|agent| self.agent(agent));
        let mut files = Vec::with_capacity(raw.files.len());
        for (index, file) in raw.files.iter().enumerate() {
            let section = name(index, Some(file.get_ref().dest.get_ref()));
            let at = At { section: &section, key_prefix: "" };
            if let Some(spec) = self.file(at, file) {
                // Keyed by the file the dest names on this host, so that `a/../b`, and a path
                // through a symlinked directory, meet the dest they alias.
                let same_file = same_file_key(&spec.dest);
                if let Some(first) = dests.0.get(&same_file) {
                    let name = if first.doc == doc { &first.short } else { &first.long };
                    let message = if first.dest == spec.dest {
                        format!("{} is also the dest of {name}", spec.dest.display())
                    } else {
                        format!(
                            "{} is the same file as {}, the dest of {name}",
                            spec.dest.display(),
                            first.dest.display()
                        )
                    };
                    self.problem(at, "dest", file.get_ref().dest.span(), message);
                } else {
                    dests.0.insert(same_file, owner(index, &spec.dest));
                }
                files.push(spec);
            }
        }
        let exec_only = std::mem::take(&mut self.exec_only);
        Part { zookeeper, agent, files, exec_only }
    }

    // --- value checks shared by the sections --------------------------------------------

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
            Some(program) => {
                if let Err(reason) = check_program(program) {
                    self.problem(at, key, raw.span(), reason);
                }
                Some(raw.get_ref())
            }
        }
    }
}

impl Config {
    /// Refuses a config that only `zkrender exec` can carry out (see [`Config::exec_only`]),
    /// naming each place with its line and column.
    ///
    /// # Errors
    /// [`ConfigError::Invalid`] with every exec-only key.
    pub fn refuse_exec_only(&self) -> Result<(), ConfigError> {
        // One `Invalid` per file, in the order the problems were found.
        let mut errors: Vec<ConfigError> = Vec::new();
        for (path, problem) in &self.exec_only {
            match errors.last_mut() {
                Some(ConfigError::Invalid { path: last, problems }) if last == path => {
                    problems.push(problem.clone());
                }
                _ => {
                    errors.push(ConfigError::Invalid { path: path.clone(), problems: vec![problem.clone()] })
                }
            }
        }
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.pop().expect("one error")),
            _ => Err(ConfigError::Several(errors)),
        }
    }
}

/// The file `dest` names on this host: its longest existing ancestor canonicalized (symlinks,
/// `..` resolved by the kernel), then the rest with `..` applied by hand (a directory that
/// does not exist yet cannot be a symlink). `dest` is absolute, without `.` or `//`.
fn same_file_key(dest: &Path) -> PathBuf {
    let Some(name) = dest.file_name() else { return dest.to_path_buf() };
    let parent = dest.parent().unwrap_or(Path::new("/"));
    let (mut key, rest) = parent
        .ancestors()
        .find_map(|existing| {
            let canonical = std::fs::canonicalize(existing).ok()?;
            let rest = parent.strip_prefix(existing).ok()?.to_path_buf();
            Some((canonical, rest))
        })
        .unwrap_or_else(|| (PathBuf::from("/"), parent.to_path_buf()));
    for component in rest.components() {
        match component {
            std::path::Component::ParentDir => {
                key.pop();
            }
            std::path::Component::Normal(part) => key.push(part),
            _ => {}
        }
    }
    key.join(name)
}

/// Whether `program` (a reload `command`'s or a `check`'s first word) can be started the way
/// the agent starts it (`execvp`): a name without `/` is looked up on `PATH`, a path is taken
/// as is (relative to the working directory). A `{file}` in it is only known at run time.
fn check_program(program: &str) -> Result<(), String> {
    if program.contains("{file}") {
        return Ok(());
    }
    if program.contains('/') {
        return check_executable(Path::new(program)).map_err(|reason| format!("program {program}: {reason}"));
    }
    // execvp's search path when PATH is not set.
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/bin:/usr/bin".into());
    let found = std::env::split_paths(&path).any(|dir| {
        // An empty entry is the working directory.
        let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
        check_executable(&dir.join(program)).is_ok()
    });
    if found {
        Ok(())
    } else {
        Err(format!("program {program:?} is not an executable file in any directory of PATH"))
    }
}

/// Whether `path` is a regular file (after symlinks) this process may execute.
fn check_executable(path: &Path) -> Result<(), String> {
    let metadata = std::fs::metadata(path).map_err(|err| match err.kind() {
        std::io::ErrorKind::NotFound => "does not exist".to_owned(),
        _ => err.to_string(),
    })?;
    if !metadata.is_file() {
        return Err("not a regular file".to_owned());
    }
    nix::unistd::access(path, nix::unistd::AccessFlags::X_OK).map_err(|_| "not executable".to_owned())
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

#[cfg(test)]
mod tests {
    use nix::sys::signal::Signal;

    use super::*;
    use crate::config::{
        AgentConfig, DEFAULT_LISTEN, FileSource, FileSpec, InstallMode, OnDelete, ReloadAction, ReloadSpec,
        SignalTarget, TemplateSpec, WatchMode, ZkAuth, ZkConfig, ZkTls,
    };

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

    /// As [`invalid`], and the Display text contains `expected`.
    #[track_caller]
    fn invalid_showing(text: &str, expected: &str) -> (ConfigError, String) {
        let (err, shown) = invalid(text);
        assert!(shown.contains(expected), "{shown}");
        (err, shown)
    }

    /// As [`invalid`], and the Display text starts with `expected`.
    #[track_caller]
    fn invalid_starting(text: &str, expected: &str) -> (ConfigError, String) {
        let (err, shown) = invalid(text);
        assert!(shown.starts_with(expected), "{shown}");
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
check = ["true", "--check-config", "{file}"]
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
inline = "x = {{ znode(\"/x\") }}"
[file.reload]
http = "http://127.0.0.1:8080/-/reload"
method = "put"
timeout = "3s"

[[file]]
dest = "/etc/app/cmd.conf"
znode = "/app/cmd"
[file.reload]
command = ["/bin/sh", "--graceful"]
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
                report: None,
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
                check: Some(vec!["true".into(), "--check-config".into(), "{file}".into()]),
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
                text: "x = {{ znode(\"/x\") }}".into(),
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
                action: ReloadAction::Command { argv: vec!["/bin/sh".into(), "--graceful".into()] },
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

        invalid_starting(
            &format!("{ZK}[agent]\nwiat = \"1s\"\n"),
            &format!("{CONFIG}:4:1: [agent]: key `wiat`: unknown field `wiat`"),
        );

        invalid_starting(
            &format!("{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\n[file.reload]\nsignl = \"HUP\"\n"),
            &format!("{CONFIG}:7:1: [[file]] #1 (dest = /a): key `reload.signl`: unknown field"),
        );

        invalid_starting(
            "[zookeepr]\nhosts = \"a:1\"\n",
            &format!("{CONFIG}:1:2: key `zookeepr`: unknown field `zookeepr`"),
        );
    }

    #[test]
    fn shape_errors_are_located() {
        invalid_starting(
            &format!("{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\nmode = 644\n"),
            &format!(
                "{CONFIG}:6:8: [[file]] #1 (dest = /a): key `mode`: invalid type: integer `644`, expected a string"
            ),
        );
        invalid_starting(
            &format!("{ZK}[[file]]\nznode = \"/a\"\n"),
            &format!("{CONFIG}:3:1: [[file]] #1: missing field `dest`"),
        );
        invalid_starting(
            "[zookeeper]\nchroot = \"/x\"\n",
            &format!("{CONFIG}:1:1: [zookeeper]: missing field `hosts`"),
        );
        invalid_showing("", "missing field `zookeeper`");
        invalid_starting(&format!("{ZK}[zookeeper\n"), &format!("{CONFIG}:3:11: "));
        invalid_showing(
            "[zookeeper]\nhosts = 5\n",
            "key `hosts`: invalid type: integer `5`, expected a connect string or an array",
        );
        invalid_showing(
            "[zookeeper]\nhosts = \"a:1\"\nwatch = \"always\"\n",
            ":3:9: [zookeeper]: key `watch`: unknown variant `always`",
        );
    }

    #[test]
    fn bad_mode() {
        for (mode, what) in
            [("0999", "not an octal number"), ("10000", "larger than 07777"), ("", "not an octal")]
        {
            let (_, shown) = invalid_showing(
                &format!("{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\nmode = \"{mode}\"\n"),
                &format!("{CONFIG}:6:8: [[file]] #1 (dest = /a): key `mode`: mode {mode:?} is"),
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
        invalid_showing(
            &format!(
                "{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\n[file.reload]\nsignal = \"HUPP\"\npid = 1\n"
            ),
            &format!("{CONFIG}:7:10: [[file]] #1 (dest = /a): key `reload.signal`: unknown signal \"HUPP\""),
        );
    }

    #[test]
    fn signal_takes_at_most_one_target() {
        let base = format!("{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\n[file.reload]\nsignal = \"HUP\"\n");
        // No target: the child of `zkrender exec`.
        assert_eq!(
            ok(&base).files[0].reload.as_ref().map(|r| &r.action),
            Some(&ReloadAction::Signal { signal: Signal::SIGHUP, target: SignalTarget::Child })
        );
        invalid_showing(
            &format!("{base}pid = 1\nprocess = \"app\"\n"),
            ":9:11: [[file]] #1 (dest = /a): key `reload.process`: `pid` and `process`",
        );
        invalid_showing(&format!("{base}pid = 0\n"), "key `reload.pid`: pid 0 is not a valid process id");
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
        invalid_showing(
            &format!("{file}http = \"http://h/\"\ncommand = [\"x\"]\n"),
            ":8:11: [[file]] #1 (dest = /a): key `reload.command`: `http` and `command`",
        );
        invalid_showing(
            &format!("{file}retries = 2\n"),
            ":6:1: [[file]] #1 (dest = /a): key `reload`: needs one of `signal`",
        );
        let (_, shown) = invalid_showing(
            &format!("{file}http = \"ftp://h/\"\nmethod = \"FETCH\"\nretries = -1\n"),
            ":7:8: [[file]] #1 (dest = /a): key `reload.http`: url \"ftp://h/\"",
        );
        assert!(
            shown.contains(":8:10: [[file]] #1 (dest = /a): key `reload.method`: method \"FETCH\""),
            "{shown}"
        );
        assert!(
            shown.contains(":9:11: [[file]] #1 (dest = /a): key `reload.retries`: retries must be"),
            "{shown}"
        );
        let (_, shown) = invalid_showing(
            &format!("{file}command = []\npid = 3\ntimeout = \"0s\"\n"),
            "key `reload.command`: command must be a non-empty array",
        );
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
        invalid_showing(
            &format!(
                "{ZK}[[file]]\ndest = \"/etc/zkrender/a\"\nznode = \"/a\"\n[[file]]\ndest = \"a\"\nznode = \"/b\"\n"
            ),
            &format!(
                "{CONFIG}:7:8: [[file]] #2 (dest = a): key `dest`: /etc/zkrender/a is also the dest of [[file]] #1"
            ),
        );
        invalid_showing(
            &format!("{ZK}[[file]]\ndest = \"/etc/app/\"\nznode = \"/a\"\n"),
            "key `dest`: dest \"/etc/app/\" must name a file",
        );
    }

    #[test]
    fn max_wait_defaults_to_four_times_wait() {
        let config = ok(&format!("{ZK}[agent]\nwait = \"250ms\"\n"));
        assert_eq!(config.agent.wait, Duration::from_millis(250));
        assert_eq!(config.agent.max_wait, Duration::from_secs(1));
        assert_eq!(config.agent.resync, Duration::from_secs(600));

        invalid_showing(
            &format!("{ZK}[agent]\nwait = \"2s\"\nmax_wait = \"1s\"\n"),
            &format!("{CONFIG}:5:12: [agent]: key `max_wait`: max_wait (1s) must not be shorter"),
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

        invalid_showing(
            "[zookeeper]\nhosts = \"zk1:2181/a\"\nchroot = \"/b\"\n",
            &format!("{CONFIG}:3:10: [zookeeper]: key `chroot`: chroot is set both here and"),
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
        invalid_showing(
            "[zookeeper]\nhosts = []\n",
            ":2:9: [zookeeper]: key `hosts`: no ZooKeeper hosts given",
        );
        invalid_showing("[zookeeper]\nhosts = \"/prod\"\n", "key `hosts`: no ZooKeeper hosts given");
        let (_, shown) = invalid_showing(
            "[zookeeper]\nhosts = \"a:1,,b:2/x//y\"\n",
            "key `hosts`: host \"\" must be host:port",
        );
        assert!(shown.contains("key `hosts`: chroot suffix: znode path \"/x//y\" has an empty component"));
    }

    #[test]
    fn bad_duration() {
        invalid_showing(
            "[zookeeper]\nhosts = \"a:1\"\nsession_timeout = \"ten seconds\"\n",
            &format!("{CONFIG}:3:19: [zookeeper]: key `session_timeout`: invalid duration \"ten seconds\": "),
        );
        invalid_showing(
            "[zookeeper]\nhosts = \"a:1\"\nsession_timeout = \"0s\"\n",
            "key `session_timeout`: session_timeout must be greater than zero",
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
        invalid_showing(
            &format!("{file}group = \"no-such-group-zkr\"\n"),
            "key `group`: unknown group \"no-such-group-zkr\"",
        );
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
        let (_, shown) = invalid_starting(
            &format!(
                "{ZK}auth = {{ scheme = \"digest\", credentials_file = \"zk.digest\", password = \"hunter2\" }}\n"
            ),
            &format!("{CONFIG}:3:61: [zookeeper]: key `auth.password`: unknown field `password`"),
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
        invalid_showing(
            &format!("{ZK}tls = {{ cert = \"client.pem\" }}\n"),
            ":3:7: [zookeeper]: key `tls`: missing field `ca`",
        );
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
            invalid_showing(
                &format!("{ZK}[agent]\nlisten = {bad:?}\n"),
                &format!("{CONFIG}:4:10: [agent]: key `listen`: listen {bad:?} is not an address such as"),
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
        let config = ok(&format!("{file}rollback = true\n[file.reload]\ncommand = [\"true\"]\n"));
        assert!(config.files[0].rollback);
        // A reload with problems of its own is not also reported as missing.
        let (err, shown) = invalid(&format!("{file}rollback = true\n[file.reload]\nretries = 1\n"));
        assert_eq!(err.problems().len(), 1, "{shown}");
        assert_eq!(err.problems()[0].key, "reload", "{shown}");
    }

    #[test]
    fn allow_env_names() {
        let file = format!("{ZK}[[file]]\ndest = \"/a\"\ninline = \"a\"\n");
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
            format!("{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\n[file.reload]\ncommand = [\"true\"]\n");
        let splay = |config: Config| config.files[0].reload.as_ref().unwrap().splay;
        assert_eq!(splay(ok(&reload)), Duration::ZERO);
        assert_eq!(splay(ok(&format!("{reload}splay = \"5s\"\n"))), Duration::from_secs(5));
        assert_eq!(splay(ok(&format!("{reload}splay = \"0s\"\n"))), Duration::ZERO);
        invalid_showing(
            &format!("{reload}splay = \"soon\"\n"),
            &format!("{CONFIG}:8:9: [[file]] #1 (dest = /a): key `reload.splay`: invalid duration \"soon\""),
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
        invalid_showing(
            &format!("{file}restart = false\n"),
            &format!(
                "{CONFIG}:6:1: [[file]] #1 (dest = /a): key `reload`: needs one of `signal`, `http`, \
                 `command` or `restart = true`"
            ),
        );
        let config = ok(&format!("{file}restart = false\nsignal = \"HUP\"\n"));
        assert_eq!(
            config.files[0].reload.as_ref().map(|r| &r.action),
            Some(&ReloadAction::Signal { signal: Signal::SIGHUP, target: SignalTarget::Child })
        );
        invalid_showing(
            &format!("{file}signal = \"HUP\"\nrestart = true\n"),
            &format!(
                "{CONFIG}:8:11: [[file]] #1 (dest = /a): key `reload.restart`: `signal` and `restart` are \
                 mutually exclusive"
            ),
        );
    }

    // --- what `run` would refuse or never render (issue 9 section 2) ---

    #[test]
    fn exec_only_reloads_are_located_but_not_problems() {
        let file = format!("{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\n[file.reload]\n");
        for (reload, key, column) in
            [("signal = \"HUP\"\n", "reload.signal", 10), ("restart = true\n", "reload.restart", 11)]
        {
            let config = ok(&format!("{file}{reload}"));
            let problems: Vec<(usize, usize, &str)> =
                config.exec_only.iter().map(|(_, p)| (p.line, p.column, p.key.as_str())).collect();
            assert_eq!(problems, [(7, column, key)], "{reload}");
            let shown = config.refuse_exec_only().unwrap_err().to_string();
            assert!(
                shown.contains(&format!("{CONFIG}:7:{column}: [[file]] #1 (dest = /a): key `{key}`")),
                "{shown}"
            );
            assert!(shown.contains("valid only under `zkrender exec`"), "{shown}");
        }
        let config = ok(&format!("{file}signal = \"HUP\"\npid = 1\n"));
        assert!(config.exec_only.is_empty());
        assert!(config.refuse_exec_only().is_ok());
    }

    #[test]
    fn template_mistakes_are_located_at_the_template_key() {
        let file = format!(
            "{ZK}[[file]]\ndest = \"/a\"\ninline = \"\"\"\n{{{{ frobnicate() }}}}\n{{{{ x | nope }}}}\"\"\"\n"
        );
        let (err, shown) = invalid(&file);
        let found: Vec<(usize, usize, &str, &str)> =
            err.problems().iter().map(|p| (p.line, p.column, p.key.as_str(), p.message.as_str())).collect();
        assert_eq!(
            found,
            [
                (5, 10, "inline", "template inline template of /a line 1: unknown function `frobnicate`"),
                (5, 10, "inline", "template inline template of /a line 2: unknown filter `nope`"),
            ],
            "{shown}"
        );
    }

    #[test]
    fn check_and_reload_programs_must_be_executable() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        let file = format!("{ZK}[[file]]\ndest = \"/a\"\nznode = \"/a\"\n");
        for (argv, expected) in [
            (
                "[\"no-such-program-zkr\"]",
                "program \"no-such-program-zkr\" is not an executable file in any directory of PATH",
            ),
            ("[\"/no/such/program\"]", "program /no/such/program: does not exist"),
            (&*format!("[{:?}]", plain.display().to_string()), "not executable"),
            (&*format!("[{:?}]", dir.path().display().to_string()), "not a regular file"),
        ] {
            let (err, shown) = invalid(&format!("{file}check = {argv}\n"));
            assert_eq!((err.problems()[0].line, err.problems()[0].key.as_str()), (6, "check"), "{shown}");
            assert!(shown.contains(expected), "{shown}");
            let (err, shown) = invalid(&format!("{file}[file.reload]\ncommand = {argv}\n"));
            assert_eq!(err.problems()[0].key, "reload.command", "{shown}");
            assert!(shown.contains(expected), "{shown}");
        }
        ok(&format!("{file}check = [\"sh\", \"{{file}}\"]\n[file.reload]\ncommand = [\"/bin/sh\"]\n"));
        ok(&format!("{file}check = [\"{{file}}\"]\n"));
    }

    #[test]
    fn dests_naming_the_same_file_are_one_dest() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, dir.path().join("link")).unwrap();
        let d = dir.path().display();
        for alias in [format!("{d}/real/x/../a"), format!("{d}/link/a"), format!("{d}/link/../real/a")] {
            let text = format!(
                "{ZK}[[file]]\ndest = \"{d}/real/a\"\nznode = \"/a\"\n[[file]]\ndest = \"{alias}\"\nznode = \"/b\"\n"
            );
            let (err, shown) = invalid(&text);
            assert_eq!((err.problems()[0].line, err.problems()[0].key.as_str()), (7, "dest"), "{shown}");
            assert!(
                shown.contains(&format!("is the same file as {d}/real/a, the dest of [[file]] #1")),
                "{shown}"
            );
        }
        let text = format!(
            "{ZK}[[file]]\ndest = \"{d}/real/a\"\nznode = \"/a\"\n[[file]]\ndest = \"{d}/link/b\"\nznode = \"/b\"\n"
        );
        ok(&text);
    }
}
