//! `zkrender init`: a commented starter `zkrender.toml`.
//!
//! Every section and key of the configuration is in it. Keys that have a default are set to
//! it, so the file as printed behaves exactly like one that leaves them out; keys with no
//! sensible default are shown commented out (`# key = example`). The one active `[[file]]`
//! uses `inline`, so the file passes `zkrender check` as printed with no template file beside
//! it. Tests below load it through the same functions `check` uses, and compare its keys with
//! the serde mirror in `config/raw.rs`, so a new key cannot be left out silently.

use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

/// The starter configuration, as `zkrender init` prints it.
pub fn starter_config() -> String {
    STARTER.to_owned()
}

/// `zkrender init --output`: why the starter could not be written.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    #[error("{}: already exists; not overwriting it", .path.display())]
    Exists { path: PathBuf },
    #[error("writing {}", .path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Writes the starter configuration to `path` (mode 0644), atomically, and only if nothing
/// is there: a temporary file beside it is linked into place, which fails if `path` exists
/// (even if it appeared meanwhile).
///
/// # Errors
/// [`InitError::Exists`] when `path` exists; [`InitError::Write`] for any I/O failure.
pub fn write_new(path: &Path) -> Result<(), InitError> {
    let write_err = |source| InitError::Write { path: path.to_owned(), source };
    if path.symlink_metadata().is_ok() {
        return Err(InitError::Exists { path: path.to_owned() });
    }
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let mut temp = tempfile::Builder::new().prefix(".zkrender-init-").tempfile_in(dir).map_err(write_err)?;
    temp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644)).map_err(write_err)?;
    temp.write_all(starter_config().as_bytes()).map_err(write_err)?;
    temp.as_file().sync_all().map_err(write_err)?;
    temp.persist_noclobber(path).map_err(|e| {
        if e.error.kind() == std::io::ErrorKind::AlreadyExists {
            InitError::Exists { path: path.to_owned() }
        } else {
            write_err(e.error)
        }
    })?;
    Ok(())
}

const STARTER: &str = r#"# zkrender.toml: written by `zkrender init`.
#
# Keys that have a default are set to it; keys without one are commented out.
# Relative paths resolve against the directory of this file. Durations are
# written like "10s", "500ms" or "1h 30m". `zkrender check -c zkrender.toml`
# validates this file; `zkrender diff` shows what would be written.

[zookeeper]
# A connect string "h1:2181,h2:2181" (an optional /chroot suffix is accepted),
# or an array ["h1:2181", "h2:2181"].
hosts = "127.0.0.1:2181"
# Every znode path in this file and in the templates is under this.
# chroot = "/myapp"
# The session timeout asked for (the server may clamp it).
session_timeout = "10s"
# "oneshot": every read re-arms a one-shot watch.
# "persistent": ZooKeeper 3.6+ persistent watches (addWatch).
watch = "oneshot"
# Digest authentication; the file holds user:password and is read at each
# connect (never logged).
# auth = { scheme = "digest", credentials_file = "zk.digest" }
# TLS to every server (PEM files; cert and key only for servers that require
# client certificates).
# tls = { ca = "ca.pem", cert = "client.pem", key = "client.key" }

[agent]
# Quiescence: render once no change has arrived for this long.
wait = "0ms"
# ... but never later than this after the first change (default: 4 x wait).
# max_wait = "2s"
# Anti-entropy: re-read every dependency at this period and repair any file
# that drifted; "0s" disables.
resync = "10m"
# Address of the HTTP endpoint (/healthz, /readyz, /metrics, /status);
# "" disables it.
listen = "127.0.0.1:9102"
# Fleet report (off unless set): keep an ephemeral znode <report>/<id> saying
# what this agent applied, read by `zkrender fleet`.
# report = "/zkrender/agents"
# This agent's name under report (default: the host name).
# id = "web-7f9c"
# At most one report write per this period.
# report_interval = "1s"

# One [[file]] per file to keep up to date. Give exactly one of znode,
# template, inline or tree.
[[file]]
# The file to write.
dest = "app.conf"
# A raw mapping: the znode's bytes, unchanged (binary-safe).
# znode = "/app/config/app.conf"
# A template file (minijinja, Jinja2 syntax).
# template = "templates/app.conf.j2"
# The template text itself.
inline = """
# rendered by zkrender
url = {{ znode("/app/config/db/url", default="postgres://localhost/app") }}
"""
# A whole subtree without a template: every znode below it that holds data,
# in format "json", "yaml", "toml", "properties" or "env".
# tree = "/app/config"
# format = "properties"
# Relative znode paths in the template resolve under this.
# prefix = "/app/config"
# Octal permission bits.
mode = "0644"
# User and group (names or numeric ids); unchanged when not set.
# owner = "app"
# group = "app"
# Raw mappings and trees: "keep" the file, or "remove" it when the znode (the
# tree's root) is deleted.
on_delete = "keep"
# argv run on the staged file before install; {file} is its path. A non-zero
# exit keeps the old file.
# check = ["nginx", "-t", "-c", "{file}"]
# A check running longer is killed and counts as failed.
check_timeout = "30s"
# Keep the previous version as DEST.bak.
backup = false
# "atomic" (temp file, fsync, rename) or "in-place" (for single-file bind
# mounts such as Kubernetes subPath, where rename fails).
install = "atomic"
# Allow replacing a non-empty file with an empty rendering.
allow_empty = false
# If the reload fails, put the previous file back and reload again
# (needs a [file.reload]).
rollback = false
# Environment variables the template may read with env("NAME").
allow_env = []

# What to do after the file changed; no reload when absent. Give one of
# signal (with one of pid_file, pid or process), http, command or restart.
# [file.reload]
# signal = "HUP"
# pid_file = "/run/app.pid"
# pid = 1
# process = "nginx"
# http = "http://127.0.0.1:8080/-/reload"
# method = "POST"
# command = ["systemctl", "reload", "app"]
# `zkrender exec` only: restart the child.
# restart = false
# Per attempt, for http and command.
# timeout = "10s"
# Extra attempts after the first; backoff doubles from 100ms.
# retries = 3
# Wait a random 0..splay before reloading, so a fleet does not reload at once.
# splay = "0s"
"#;

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::config::{self, raw::RawConfig, validate};

    /// Commented-out settings and table headers (`# key = ...`, `# [table]`), not prose.
    fn is_commented_setting(line: &str) -> bool {
        let Some(rest) = line.strip_prefix("# ") else { return false };
        if rest.starts_with('[') {
            return rest.ends_with(']');
        }
        rest.split_once(" = ").is_some_and(|(key, _)| {
            !key.is_empty() && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
    }

    /// The starter with every commented-out setting made active.
    fn uncommented() -> String {
        let text = starter_config();
        let lines: Vec<&str> =
            text.lines().map(|line| if is_commented_setting(line) { &line[2..] } else { line }).collect();
        lines.join("\n")
    }

    #[test]
    fn write_new_refuses_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zkrender.toml");
        write_new(&path).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), starter_config());
        std::fs::write(&path, "mine").unwrap();
        let err = write_new(&path).unwrap_err();
        assert!(matches!(err, InitError::Exists { .. }), "{err:?}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "mine");
        // No temporary file is left behind.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn starter_passes_check_as_printed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zkrender.toml");
        std::fs::write(&path, starter_config()).unwrap();
        let config = config::load(&path).unwrap_or_else(|err| panic!("starter config is invalid: {err}"));
        crate::runtime::compile(&config)
            .unwrap_or_else(|err| panic!("starter template does not compile: {err}"));
        assert_eq!(config.zookeeper.hosts, ["127.0.0.1:2181"]);
        assert_eq!(config.files.len(), 1);
        assert_eq!(config.files[0].dest, dir.path().join("app.conf"));
    }

    #[test]
    fn values_shown_are_the_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let starter = config::parse(&dir.path().join("a.toml"), &starter_config()).unwrap();
        let inline = match &starter.files[0].source {
            config::FileSource::Template(spec) => spec.text.clone(),
            other => panic!("the active file should be inline, got {other:?}"),
        };
        let minimal = format!(
            "[zookeeper]\nhosts = \"127.0.0.1:2181\"\n[[file]]\ndest = \"app.conf\"\ninline = {}\n",
            toml::Value::String(inline)
        );
        let minimal = config::parse(&dir.path().join("a.toml"), &minimal).unwrap();
        assert_eq!(starter.zookeeper, minimal.zookeeper);
        assert_eq!(starter.agent, minimal.agent);
        assert_eq!(starter.files, minimal.files);
    }

    #[test]
    fn commented_reload_defaults_match_validation() {
        let text = starter_config();
        for line in [
            format!("# retries = {}", validate::DEFAULT_RELOAD_RETRIES),
            format!("# timeout = \"{}\"", humantime::format_duration(validate::DEFAULT_RELOAD_TIMEOUT)),
            format!("# method = \"{}\"", validate::DEFAULT_HTTP_METHOD),
        ] {
            assert!(text.lines().any(|l| l == line), "starter lacks {line:?}");
        }
    }

    #[test]
    fn commented_settings_are_spelled_right() {
        // With every commented setting made active, the document still has the shape of
        // the config (no unknown key, every value of the right type).
        let text = uncommented();
        if let Err(err) = toml::from_str::<RawConfig>(&text) {
            panic!("uncommented starter does not parse: {err}\n{text}");
        }
    }

    /// Field names of every `Raw*` struct in config/raw.rs, as TOML keys (serde renames
    /// applied).
    fn raw_keys() -> BTreeSet<String> {
        let source = include_str!("config/raw.rs");
        let mut keys = BTreeSet::new();
        let mut in_struct = false;
        let mut rename: Option<String> = None;
        for line in source.lines().map(str::trim) {
            if line.starts_with("pub struct Raw") && line.ends_with('{') {
                in_struct = true;
            } else if line == "}" {
                in_struct = false;
            } else if in_struct && line.starts_with("#[serde(") {
                rename =
                    line.split("rename = \"").nth(1).and_then(|s| s.split('"').next()).map(str::to_owned);
            } else if in_struct
                && let Some((field, _)) = line.strip_prefix("pub ").and_then(|l| l.split_once(':'))
            {
                keys.insert(rename.take().unwrap_or_else(|| field.to_owned()));
            }
        }
        keys
    }

    #[test]
    fn every_raw_key_is_in_the_starter() {
        let keys = raw_keys();
        // The parser above must find the structs, or this test proves nothing.
        for key in ["hosts", "wait", "dest", "file", "signal", "credentials_file", "ca"] {
            assert!(keys.contains(key), "raw.rs parser missed {key:?}: {keys:?}");
        }
        let text = uncommented();
        let missing: Vec<&String> = keys
            .iter()
            .filter(|key| {
                ![
                    format!("\n{key} = "),
                    format!("{{ {key} = "),
                    format!(", {key} = "),
                    format!("[{key}]"),
                    format!("[[{key}]]"),
                    format!(".{key}]"),
                ]
                .iter()
                .any(|form| text.contains(form.as_str()))
            })
            .collect();
        assert!(missing.is_empty(), "keys of config/raw.rs missing from the starter config: {missing:?}");
    }
}
