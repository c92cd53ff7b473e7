//! `[[file]]`: destination, source (`znode`, `template`, `inline` or `tree` with `format`),
//! mode, owner and group,
//! install options and `allow_env`; its `[file.reload]` is checked in [`super::reload`].

use std::path::{Path, PathBuf};

use nix::unistd::{Group, User};
use toml::Spanned;

use super::{At, Checker, DEFAULT_CHECK_TIMEOUT, DEFAULT_MODE};
use crate::config::raw::{RawFile, RawId, RawInstallMode, RawOnDelete};
use crate::config::{FileSource, FileSpec, InstallMode, OnDelete, TemplateSpec};
use crate::formats::Format;

/// The keys that say where a file's bytes come from; exactly one is given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SourceKey {
    Znode,
    Template,
    Inline,
    Tree,
}

impl SourceKey {
    /// The TOML key.
    fn key(self) -> &'static str {
        match self {
            SourceKey::Znode => "znode",
            SourceKey::Template => "template",
            SourceKey::Inline => "inline",
            SourceKey::Tree => "tree",
        }
    }
}

/// `owner` (a user) or `group`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IdKind {
    Owner,
    Group,
}

impl IdKind {
    /// The TOML key.
    fn key(self) -> &'static str {
        match self {
            IdKind::Owner => "owner",
            IdKind::Group => "group",
        }
    }

    /// What the id names, for messages.
    fn what(self) -> &'static str {
        match self {
            IdKind::Owner => "user",
            IdKind::Group => "group",
        }
    }
}

impl Checker<'_> {
    /// A validated file, or None when a problem leaves nothing sensible to build.
    pub(super) fn file(&mut self, at: At<'_>, spanned: &Spanned<RawFile>) -> Option<FileSpec> {
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
        let owner = raw.owner.as_ref().and_then(|owner| self.id(at, IdKind::Owner, owner));
        let group = raw.group.as_ref().and_then(|group| self.id(at, IdKind::Group, group));
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
        let rollback = self.rollback(
            at,
            raw.rollback.as_ref(),
            raw.reload.is_some(),
            "rollback = true needs a [file.reload]: it restores the previous file when the reload fails",
        );
        let allow_env = raw.allow_env.as_ref().map(|names| self.env_names(at, names)).unwrap_or_default();
        if let Some(FileSource::Template(template)) = &source {
            self.template(at, raw, template, &allow_env);
        }
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

    /// What [`crate::render::lint`] finds in a template (every render would fail), reported at
    /// its `template` or `inline` key.
    fn template(&mut self, at: At<'_>, raw: &RawFile, template: &TemplateSpec, allow_env: &[String]) {
        let Some((key, value)) = [("template", &raw.template), ("inline", &raw.inline)]
            .into_iter()
            .find_map(|(key, value)| value.as_ref().map(|value| (key, value)))
        else {
            return;
        };
        for lint in crate::render::lint(template, allow_env) {
            let message = format!("template {} line {}: {}", template.name, lint.line, lint.message);
            self.problem(at, key, value.span(), message);
        }
    }

    /// `rollback` of a `[[file]]` or `[[bundle]]`: true needs a reload table, else `missing`
    /// is reported. Checked against the raw table: a reload table with problems has its own.
    pub(super) fn rollback(
        &mut self,
        at: At<'_>,
        raw: Option<&Spanned<bool>>,
        has_reload: bool,
        missing: &str,
    ) -> bool {
        raw.is_some_and(|rollback| {
            if *rollback.get_ref() && !has_reload {
                self.problem(at, "rollback", rollback.span(), missing);
            }
            *rollback.get_ref()
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

    /// Exactly one of `znode`, `template`, `inline` or `tree`, plus `prefix` for templates and
    /// `format` for a tree.
    fn source(&mut self, at: At<'_>, file: &Spanned<RawFile>, dest: &Path) -> Option<FileSource> {
        let raw = file.get_ref();
        let given: Vec<(SourceKey, &Spanned<String>)> = [
            (SourceKey::Znode, &raw.znode),
            (SourceKey::Template, &raw.template),
            (SourceKey::Inline, &raw.inline),
            (SourceKey::Tree, &raw.tree),
        ]
        .into_iter()
        .filter_map(|(kind, value)| value.as_ref().map(|value| (kind, value)))
        .collect();
        let (kind, value) = match given.as_slice() {
            [] => {
                self.problem(
                    at,
                    "",
                    file.span(),
                    "needs one of `znode`, `template` or `inline` (or `tree` with `format`)",
                );
                return None;
            }
            [one] => *one,
            [(first, _), rest @ ..] => {
                for (kind, value) in rest {
                    let message = format!(
                        "`{}` and `{}` are mutually exclusive; give exactly one",
                        first.key(),
                        kind.key()
                    );
                    self.problem(at, kind.key(), value.span(), message);
                }
                return None;
            }
        };
        if kind != SourceKey::Tree
            && let Some(format) = &raw.format
        {
            self.problem(at, "format", format.span(), "`format` only applies with `tree`");
        }
        if matches!(kind, SourceKey::Znode | SourceKey::Tree) {
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
            if kind == SourceKey::Tree {
                return self.tree(at, value, raw.format.as_ref());
            }
            return self.znode_path(at, "znode", value).map(|znode| FileSource::Raw { znode });
        }
        let prefix = raw.prefix.as_ref().and_then(|prefix| self.znode_path(at, "prefix", prefix));
        if kind == SourceKey::Inline {
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

    /// `tree = "/root"` with its required `format`.
    fn tree(
        &mut self,
        at: At<'_>,
        root: &Spanned<String>,
        format: Option<&Spanned<String>>,
    ) -> Option<FileSource> {
        let format = match format {
            None => {
                let names: Vec<String> = Format::ALL.iter().map(|f| format!("{:?}", f.name())).collect();
                let message = format!("`tree` needs `format`, one of {}", names.join(", "));
                self.problem(at, "tree", root.span(), message);
                None
            }
            Some(format) => format
                .get_ref()
                .parse::<Format>()
                .map_err(|message| self.problem(at, "format", format.span(), message))
                .ok(),
        };
        let root = self.znode_path(at, "tree", root);
        Some(FileSource::Tree { root: root?, format: format? })
    }

    /// A uid or gid: a number, or a user/group name looked up now.
    fn id(&mut self, at: At<'_>, kind: IdKind, raw: &Spanned<RawId>) -> Option<u32> {
        let what = kind.what();
        let result = match raw.get_ref() {
            RawId::Number(n) => u32::try_from(*n).map_err(|_| format!("{what} id {n} is out of range")),
            RawId::Name(name) if name.is_empty() => Err(format!("{what} name is empty")),
            RawId::Name(name) if name.bytes().all(|b| b.is_ascii_digit()) => {
                name.parse::<u32>().map_err(|_| format!("{what} id {name} is out of range"))
            }
            RawId::Name(name) => lookup_id(kind, name),
        };
        result.map_err(|message| self.problem(at, kind.key(), raw.span(), message)).ok()
    }
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

/// Looks up a user (`owner`) or group name; the message names it.
fn lookup_id(kind: IdKind, name: &str) -> Result<u32, String> {
    if kind == IdKind::Owner {
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
    use std::path::Path;

    use crate::config::{FileSource, parse};
    use crate::formats::Format;
    use crate::model::ZnodePath;

    const ZK: &str = "[zookeeper]\nhosts = \"127.0.0.1:2181\"\n";

    fn shown(file: &str) -> String {
        parse(Path::new("/etc/zkrender/z.toml"), &format!("{ZK}[[file]]\ndest = \"/a\"\n{file}"))
            .expect_err("expected an invalid config")
            .to_string()
    }

    #[test]
    fn tree_with_each_format() {
        for format in Format::ALL {
            let text =
                format!("{ZK}[[file]]\ndest = \"/a\"\ntree = \"/app/config/\"\nformat = \"{format}\"\n");
            let config = parse(Path::new("/etc/zkrender/z.toml"), &text).unwrap();
            let root = ZnodePath::parse("/app/config").unwrap();
            assert_eq!(config.files[0].source, FileSource::Tree { root, format });
        }
    }

    #[test]
    fn tree_needs_a_known_format_and_format_needs_tree() {
        let message = shown("tree = \"/app\"\n");
        assert!(
            message.contains(
                ":5:8: [[file]] #1 (dest = /a): key `tree`: `tree` needs `format`, one of \"json\""
            ),
            "{message}"
        );
        let message = shown("tree = \"/app\"\nformat = \"xml\"\n");
        assert!(
            message.contains(":6:10: [[file]] #1 (dest = /a): key `format`: unknown format \"xml\""),
            "{message}"
        );
        let message = shown("znode = \"/app\"\nformat = \"json\"\n");
        assert!(message.contains("key `format`: `format` only applies with `tree`"), "{message}");
        let message = shown("tree = \"app\"\nformat = \"json\"\n");
        assert!(message.contains("key `tree`: znode path \"app\" must start with \"/\""), "{message}");
    }

    #[test]
    fn tree_excludes_the_other_sources_and_template_keys() {
        let message = shown("znode = \"/a\"\ntree = \"/app\"\nformat = \"json\"\n");
        assert!(message.contains("key `tree`: `znode` and `tree` are mutually exclusive"), "{message}");
        let message = shown("tree = \"/app\"\nformat = \"env\"\nprefix = \"/p\"\nallow_env = [\"HOME\"]\n");
        assert!(
            message.contains("key `prefix`: `prefix` only applies with `template` or `inline`"),
            "{message}"
        );
        assert!(message.contains("key `allow_env`: `allow_env` only applies with"), "{message}");
        let message = shown("mode = \"0600\"\n");
        assert!(message.contains("needs one of `znode`, `template` or `inline` (or `tree` with `format`)"));
    }
}
