//! A configuration set: every `-c` file and directory, plus `--zookeeper`, `--znode` and
//! `--template`, read into one [`Config`].
//!
//! confd's `conf.d` habit: each team drops its own mapping file into a directory. A `-c`
//! directory stands for every `*.toml` directly in it, in name order. Each file is a
//! document of its own, validated as [`validate`](super::validate) validates one file
//! (relative paths against that file's directory, problems naming that file); then the set
//! is put together: `[zookeeper]` and `[agent]` may each come from at most one file,
//! `[[file]]` entries add up in set order (files first, then `--znode`, then `--template`),
//! and no two entries may share a `dest`. Each `--znode`/`--template` flag becomes a
//! one-entry document checked by the same code, so `check` validates it like any other.
//!
//! A config reload ([`crate::hotreload`]) loads the same [`Sources`] again, so a file added
//! to or removed from a directory is picked up.

use std::path::{Path, PathBuf};

use super::validate::{self, ConfigError, Dests, Part};
use super::{AgentConfig, Config, DEFAULT_PATH, ZkConfig};

/// Where a configuration comes from, as given on the command line. Kept in [`Config`] so
/// that a reload reads the same places again.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sources {
    /// `-c` values in order: files, or directories of `*.toml`. Empty: [`DEFAULT_PATH`],
    /// which may then be missing when `--znode` or `--template` is given.
    pub paths: Vec<PathBuf>,
    /// `--zookeeper HOSTS`: replaces `[zookeeper] hosts` (and the chroot, when it ends in one).
    pub zookeeper: Option<String>,
    /// `--znode ZNODE:DEST[:COMMAND]`, in order.
    pub znodes: Vec<String>,
    /// `--template TEMPLATE:DEST[:COMMAND]`, in order.
    pub templates: Vec<String>,
}

/// Where a loaded [`Config`] came from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    /// What to read again on reload.
    pub sources: Sources,
    /// The config files read, absolute, in set order (watched for changes).
    pub files: Vec<PathBuf>,
    /// The `-c` directories, absolute (watched for `*.toml` files coming and going).
    pub dirs: Vec<PathBuf>,
}

impl Sources {
    /// Just the one config file at `path`.
    pub fn file(path: &Path) -> Sources {
        Sources { paths: vec![path.to_owned()], ..Sources::default() }
    }

    /// True when a flag adds a `[[file]]`: the default config file may then be missing.
    fn has_flag_files(&self) -> bool {
        !self.znodes.is_empty() || !self.templates.is_empty()
    }
}

/// Reads every source and validates the set as one configuration.
///
/// # Errors
/// Every file's and flag's [`ConfigError`] (several as [`ConfigError::Several`]);
/// [`ConfigError::Duplicate`] for a second `[zookeeper]` or `[agent]`;
/// [`ConfigError::NoZookeeper`] when no hosts are given anywhere.
pub fn load(sources: &Sources) -> Result<Config, ConfigError> {
    let (files, dirs) = expand(sources)?;
    let mut errors = Vec::new();
    let mut dests = Dests::default();
    let mut zookeeper: Option<(ZkConfig, PathBuf)> = None;
    let mut agent: Option<(AgentConfig, PathBuf)> = None;
    let mut specs = Vec::new();
    let mut bundles = Vec::new();
    let mut exec_only = Vec::new();
    for (doc, path) in files.iter().enumerate() {
        let part = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.clone(), source })
            .and_then(|text| {
                let raw = validate::raw_document(path, &text)?;
                validate::file_part(path, &text, raw, doc, &mut dests)
            });
        let Part { zookeeper: zk, agent: ag, files, bundles: more_bundles, exec_only: needs_exec } =
            match part {
                Ok(part) => part,
                Err(err) => {
                    errors.push(err);
                    continue;
                }
            };
        claim(&mut zookeeper, zk, "[zookeeper]", path, &mut errors);
        claim(&mut agent, ag, "[agent]", path, &mut errors);
        specs.extend(files);
        bundles.extend(more_bundles);
        exec_only.extend(needs_exec.into_iter().map(|problem| (path.clone(), problem)));
    }

    let cwd = std::path::absolute(".").map_err(|source| ConfigError::Path { path: ".".into(), source })?;
    let flags = sources
        .znodes
        .iter()
        .enumerate()
        .map(|(i, value)| (FlagKind::Znode, i, value))
        .chain(sources.templates.iter().enumerate().map(|(i, value)| (FlagKind::Template, i, value)));
    for (doc, (kind, index, value)) in (files.len()..).zip(flags) {
        let flag = format!("{} #{} ({value})", kind.flag(), index + 1);
        match flag_document(kind, value)
            .map_err(|message| ConfigError::Flag { flag: flag.clone(), messages: vec![message] })
            .and_then(|text| validate::flag_part(&flag, &text, cwd.clone(), doc, &mut dests))
        {
            Ok(part) => {
                specs.extend(part.files);
                bundles.extend(part.bundles);
            }
            Err(err) => errors.push(err),
        }
    }

    let zookeeper = match (&sources.zookeeper, zookeeper) {
        (Some(hosts), from_file) => match flag_zookeeper(hosts, from_file.map(|(zk, _)| zk)) {
            Ok(zk) => Some(zk),
            Err(err) => {
                errors.push(err);
                None
            }
        },
        (None, Some((zk, _))) => Some(zk),
        (None, None) => {
            // Only worth saying when the files themselves were fine.
            if errors.is_empty() {
                errors.push(ConfigError::NoZookeeper { files: files.clone() });
            }
            None
        }
    };
    match (zookeeper, errors.len()) {
        (Some(zookeeper), 0) => Ok(Config {
            path: files.first().cloned().unwrap_or(cwd),
            zookeeper,
            agent: agent.map(|(agent, _)| agent).unwrap_or_default(),
            files: specs,
            bundles,
            exec_only,
            origin: Origin { sources: sources.clone(), files, dirs },
        }),
        (_, 1) => Err(errors.pop().expect("one error")),
        _ => Err(ConfigError::Several(errors)),
    }
}

/// Keeps the section `found` in `path` in `slot`, unless another file already gave it.
fn claim<T>(
    slot: &mut Option<(T, PathBuf)>,
    found: Option<T>,
    section: &'static str,
    path: &Path,
    errors: &mut Vec<ConfigError>,
) {
    let Some(found) = found else { return };
    match slot {
        Some((_, first)) => {
            errors.push(ConfigError::Duplicate { section, first: first.clone(), second: path.to_owned() });
        }
        None => *slot = Some((found, path.to_owned())),
    }
}

/// The config files `sources` names, as they are now (each directory's `*.toml` in name
/// order), absolute.
///
/// # Errors
/// A path cannot be made absolute, or a directory cannot be listed.
pub fn files(sources: &Sources) -> Result<Vec<PathBuf>, ConfigError> {
    expand(sources).map(|(files, _)| files)
}

/// The config files of `sources` as they are now (each directory listed), and the
/// directories, all absolute.
fn expand(sources: &Sources) -> Result<(Vec<PathBuf>, Vec<PathBuf>), ConfigError> {
    let absolute = |path: &Path| {
        std::path::absolute(path).map_err(|source| ConfigError::Path { path: path.to_owned(), source })
    };
    if sources.paths.is_empty() {
        let default = absolute(Path::new(DEFAULT_PATH))?;
        // With flags that make files, no config file is needed at all (a one-liner).
        if sources.has_flag_files() && !default.exists() {
            return Ok((Vec::new(), Vec::new()));
        }
        return Ok((vec![default], Vec::new()));
    }
    let (mut files, mut dirs) = (Vec::new(), Vec::new());
    for path in &sources.paths {
        let path = absolute(path)?;
        if !path.is_dir() {
            // A file, or a path that is neither: reading it reports why.
            files.push(path);
            continue;
        }
        let entries =
            std::fs::read_dir(&path).map_err(|source| ConfigError::ReadDir { path: path.clone(), source })?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| ConfigError::ReadDir { path: path.clone(), source })?;
            let file = entry.path();
            // `is_file` follows symlinks: a Kubernetes ConfigMap mount's entries are links
            // into `..data/`, and its `..data` and timestamped directories are skipped.
            if file.extension().is_some_and(|ext| ext == "toml") && file.is_file() {
                found.push(file);
            }
        }
        found.sort_by(|a, b| a.file_name().cmp(&b.file_name()));
        files.extend(found);
        dirs.push(path);
    }
    Ok((files, dirs))
}

/// `--znode` or `--template`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FlagKind {
    Znode,
    Template,
}

impl FlagKind {
    fn flag(self) -> &'static str {
        match self {
            FlagKind::Znode => "--znode",
            FlagKind::Template => "--template",
        }
    }

    /// The `[[file]]` key the first part of the flag fills.
    fn key(self) -> &'static str {
        match self {
            FlagKind::Znode => "znode",
            FlagKind::Template => "template",
        }
    }

    fn syntax(self) -> &'static str {
        match self {
            FlagKind::Znode => "ZNODE:DEST[:COMMAND]",
            FlagKind::Template => "TEMPLATE:DEST[:COMMAND]",
        }
    }
}

/// The one-entry TOML document a `--znode` or `--template` value stands for:
/// `SOURCE:DEST[:COMMAND]`, split at the first two colons (COMMAND may hold more), COMMAND
/// split into argv with shell quoting rules (it runs without a shell, as
/// `[file.reload] command` does).
///
/// # Errors
/// What is wrong with the value's shape; its parts are checked by validation.
fn flag_document(kind: FlagKind, value: &str) -> Result<String, String> {
    let mut parts = value.splitn(3, ':');
    let (Some(source), Some(dest)) = (parts.next(), parts.next()) else {
        return Err(format!("expected {}", kind.syntax()));
    };
    let mut file = toml::Table::new();
    file.insert("dest".into(), dest.into());
    file.insert(kind.key().into(), source.into());
    if let Some(command) = parts.next() {
        let argv = shlex::split(command).ok_or_else(|| format!("COMMAND {command:?}: unbalanced quotes"))?;
        if argv.is_empty() {
            return Err("COMMAND is empty (leave out the last `:` for no reload)".to_owned());
        }
        let mut reload = toml::Table::new();
        reload.insert("command".into(), argv.into());
        file.insert("reload".into(), reload.into());
    }
    let mut doc = toml::Table::new();
    doc.insert("file".into(), vec![toml::Value::Table(file)].into());
    toml::to_string(&doc).map_err(|err| format!("bug: writing the flag's document: {err}"))
}

/// `--zookeeper HOSTS` over the `[zookeeper]` from a file (or the defaults): the hosts are
/// replaced, and so is the chroot when HOSTS ends in one; the rest is kept.
///
/// # Errors
/// [`ConfigError::Flag`] naming `--zookeeper`, checked as `hosts` in a file is.
fn flag_zookeeper(hosts: &str, from_file: Option<ZkConfig>) -> Result<ZkConfig, ConfigError> {
    let flag = format!("--zookeeper ({hosts})");
    let mut zookeeper = toml::Table::new();
    zookeeper.insert("hosts".into(), hosts.into());
    let mut doc = toml::Table::new();
    doc.insert("zookeeper".into(), zookeeper.into());
    let text = toml::to_string(&doc)
        .map_err(|err| ConfigError::Flag { flag: flag.clone(), messages: vec![format!("bug: {err}")] })?;
    let part = validate::flag_part(&flag, &text, PathBuf::from("/"), usize::MAX, &mut Dests::default())?;
    let given = part.zookeeper.expect("a [zookeeper] document has a [zookeeper] part");
    Ok(match from_file {
        None => given,
        Some(file) => ZkConfig { hosts: given.hosts, chroot: given.chroot.or(file.chroot), ..file },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileSource, ReloadAction};

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    const ZK: &str = "[zookeeper]\nhosts = \"zk:2181\"\n";

    #[test]
    fn a_directory_is_its_toml_files_in_name_order_and_files_add_up() {
        let dir = tempfile::tempdir().unwrap();
        let confd = dir.path().join("conf.d");
        std::fs::create_dir(&confd).unwrap();
        write(&confd, "20-b.toml", "[[file]]\ndest = \"b\"\nznode = \"/b\"\n");
        write(&confd, "10-zk.toml", ZK);
        write(&confd, "30-a.toml", "[agent]\nwait = \"1s\"\n[[file]]\ndest = \"a\"\nznode = \"/a\"\n");
        write(&confd, "notes.txt", "not toml");
        std::fs::create_dir(confd.join("sub.toml")).unwrap();
        let main = write(dir.path(), "main.toml", "[[file]]\ndest = \"m\"\nznode = \"/m\"\n");
        let config = load(&Sources { paths: vec![confd.clone(), main], ..Sources::default() }).unwrap();
        let names: Vec<_> = config.origin.files.iter().map(|f| f.file_name().unwrap().to_owned()).collect();
        assert_eq!(names, ["10-zk.toml", "20-b.toml", "30-a.toml", "main.toml"]);
        let dests: Vec<_> = config.files.iter().map(|f| f.dest.clone()).collect();
        // Relative paths resolve against the directory of the file holding them.
        assert_eq!(dests, [confd.join("b"), confd.join("a"), dir.path().join("m")]);
        assert_eq!(config.agent.wait, std::time::Duration::from_secs(1));
        assert_eq!(config.origin.dirs, std::slice::from_ref(&confd));
        assert_eq!(config.path, confd.join("10-zk.toml"));
    }

    #[test]
    fn a_section_in_two_files_names_both() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.toml", &format!("{ZK}[agent]\nwait = \"1s\"\n"));
        let b = write(dir.path(), "b.toml", "[agent]\nwait = \"2s\"\n");
        let err = load(&Sources { paths: vec![a.clone(), b.clone()], ..Sources::default() }).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("[agent] is set in both {} and {}; keep it in one file", a.display(), b.display())
        );
    }

    #[test]
    fn problems_name_the_file_holding_them_and_every_bad_file_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.toml", &format!("{ZK}[[file]]\ndest = \"x\"\nznode = \"rel\"\n"));
        let b = write(dir.path(), "b.toml", "[[file]]\ndest = \"y\"\nznodes = \"/y\"\n");
        let shown = load(&Sources { paths: vec![a.clone(), b.clone()], ..Sources::default() })
            .unwrap_err()
            .to_string();
        assert!(
            shown.contains(&format!("{}:5:9: [[file]] #1 (dest = x): key `znode`", a.display())),
            "{shown}"
        );
        assert!(
            shown.contains(&format!("{}:3:1: [[file]] #1 (dest = y): key `znodes`", b.display())),
            "{shown}"
        );
    }

    #[test]
    fn a_dest_in_two_files_names_the_first_one() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.toml", &format!("{ZK}[[file]]\ndest = \"/out/x\"\nznode = \"/x\"\n"));
        let b = write(dir.path(), "b.toml", "[[file]]\ndest = \"/out/x\"\nznode = \"/y\"\n");
        let shown = load(&Sources { paths: vec![a.clone(), b.clone()], ..Sources::default() })
            .unwrap_err()
            .to_string();
        assert!(
            shown.contains(&format!("/out/x is also the dest of [[file]] #1 in {}", a.display())),
            "{shown}"
        );
        assert!(shown.starts_with(&format!("{} is invalid", b.display())), "{shown}");
    }

    #[test]
    fn flags_alone_make_a_config() {
        let sources = Sources {
            paths: Vec::new(),
            zookeeper: Some("zk1:2181,zk2:2181/chroot".into()),
            znodes: vec!["/app/flags:/etc/app/flags.json:kill -HUP '1 2'".into()],
            templates: Vec::new(),
        };
        let config = load(&sources).unwrap();
        assert_eq!(config.zookeeper.connect_string(), "zk1:2181,zk2:2181/chroot");
        assert_eq!(config.files.len(), 1);
        let file = &config.files[0];
        assert_eq!(file.dest, PathBuf::from("/etc/app/flags.json"));
        assert!(matches!(&file.source, FileSource::Raw { znode } if znode.as_str() == "/app/flags"));
        let reload = file.reload.as_ref().unwrap();
        assert_eq!(
            reload.action,
            ReloadAction::Command { argv: vec!["kill".into(), "-HUP".into(), "1 2".into()] }
        );
        assert!(config.origin.files.is_empty());
    }

    #[test]
    fn bad_flags_are_named_with_their_number_and_value() {
        let sources = Sources {
            zookeeper: Some("zk:2181".into()),
            znodes: vec!["/ok:/tmp/ok".into(), "app/flags:/tmp/x".into(), "nodest".into()],
            templates: vec!["/no/such/template.j2:/tmp/t:'unbalanced".into()],
            ..Sources::default()
        };
        let shown = load(&sources).unwrap_err().to_string();
        assert!(
            shown.contains("--znode #2 (app/flags:/tmp/x): znode path \"app/flags\" must start with \"/\""),
            "{shown}"
        );
        assert!(shown.contains("--znode #3 (nodest): expected ZNODE:DEST[:COMMAND]"), "{shown}");
        assert!(
            shown.contains("--template #1 (/no/such/template.j2:/tmp/t:'unbalanced): COMMAND"),
            "{shown}"
        );
        assert!(!shown.contains("#1 (/ok"), "{shown}");
    }

    #[test]
    fn zookeeper_flag_replaces_hosts_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(
            dir.path(),
            "a.toml",
            "[zookeeper]\nhosts = \"file:2181\"\nchroot = \"/c\"\nsession_timeout = \"3s\"\n",
        );
        let sources = Sources { paths: vec![a], zookeeper: Some("flag:2181".into()), ..Sources::default() };
        let zk = load(&sources).unwrap().zookeeper;
        assert_eq!(zk.connect_string(), "flag:2181/c");
        assert_eq!(zk.session_timeout, std::time::Duration::from_secs(3));
        let bad = Sources { zookeeper: Some("flag:notaport".into()), ..sources };
        let shown = load(&bad).unwrap_err().to_string();
        assert!(shown.starts_with("--zookeeper (flag:notaport) is invalid"), "{shown}");
    }

    #[test]
    fn no_hosts_anywhere_is_an_error_naming_the_files_read() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.toml", "[[file]]\ndest = \"x\"\nznode = \"/x\"\n");
        let shown = load(&Sources::file(&a)).unwrap_err().to_string();
        assert!(shown.starts_with("no ZooKeeper hosts: no [zookeeper] section in"), "{shown}");
        assert!(shown.contains(&a.display().to_string()), "{shown}");
    }
}
