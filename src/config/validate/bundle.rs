//! `[[bundle]]`: `dir`, `commit`, the bundle-wide `check`, `rollback` and `[bundle.reload]`,
//! and each `[[bundle.file]]`, validated as a `[[file]]` whose `dest` is `dir/path`.

use std::collections::BTreeMap;
use std::path::{Component, Path, PathBuf};

use toml::Spanned;

use super::{At, Checker, DEFAULT_CHECK_TIMEOUT, DestOwner, Dests, same_file_key};
use crate::config::BundleSpec;
use crate::config::raw::{RawBundle, RawBundleFile, RawFile};

/// How a `[[bundle]]` is named in messages.
fn bundle_section(index: usize, dir: &str) -> String {
    format!("[[bundle]] #{} (dir = {dir})", index + 1)
}

impl Checker<'_> {
    /// A validated bundle, or None when a problem leaves nothing sensible to build. Each
    /// file's dest is claimed in `dests` like a `[[file]]`'s, and so is the bundle's `..data`
    /// (two bundles in one directory would overwrite each other's versions).
    pub(super) fn bundle(
        &mut self,
        index: usize,
        spanned: &Spanned<RawBundle>,
        doc: usize,
        owner: &dyn Fn(usize, &Path) -> DestOwner,
        dests: &mut Dests,
    ) -> Option<BundleSpec> {
        let raw = spanned.get_ref();
        let section = bundle_section(index, raw.dir.get_ref());
        let at = At { section: &section, key_prefix: "" };
        let dir = self.bundle_dir(at, &raw.dir);
        let commit = raw.commit.as_ref().and_then(|commit| self.znode_path(at, "commit", commit));
        let check =
            raw.check.as_ref().and_then(|check| self.argv(at, "check", check).map(|argv| argv.to_vec()));
        let check_timeout =
            self.positive_duration(at, "check_timeout", raw.check_timeout.as_ref(), DEFAULT_CHECK_TIMEOUT);
        let reload = raw.reload.as_ref().and_then(|reload| self.reload(at, reload));
        let rollback = self.rollback(
            at,
            raw.rollback.as_ref(),
            raw.reload.is_some(),
            "rollback = true needs a [bundle.reload]: it swaps ..data back when the reload fails",
        );
        if raw.files.is_empty() {
            self.problem(at, "", spanned.span(), "a bundle needs at least one [[bundle.file]]");
        }
        let mut claim = |checker: &mut Self, at: At<'_>, key: &str, dest: &Path, span| {
            let same_file = same_file_key(dest);
            if let Some(first) = dests.0.get(&same_file) {
                let name = if first.doc == doc { &first.short } else { &first.long };
                let message = format!("{} is also claimed by {name}", dest.display());
                checker.problem(at, key, span, message);
                return;
            }
            // `owner` names a `[[file]]` of this document; say which bundle instead.
            let file_owner = owner(0, dest);
            let short = at.section.to_owned();
            let long = file_owner.long.replacen(&file_owner.short, &short, 1);
            dests.0.insert(same_file, DestOwner { doc, short, long, dest: dest.to_path_buf() });
        };
        if let Some(dir) = &dir {
            claim(self, at, "dir", &dir.join("..data"), raw.dir.span());
        }
        // Each path's components, to find a path that is also another's directory.
        let mut paths: BTreeMap<PathBuf, usize> = BTreeMap::new();
        let mut files = Vec::with_capacity(raw.files.len());
        for (file_index, file) in raw.files.iter().enumerate() {
            let file_section = format!(
                "{section} [[bundle.file]] #{} (path = {})",
                file_index + 1,
                file.get_ref().path.get_ref()
            );
            let file_at = At { section: &file_section, key_prefix: "" };
            let path = self.bundle_path(file_at, &file.get_ref().path);
            let (Some(dir), Some(path)) = (&dir, path) else {
                // Still check the rest of the entry.
                self.file(file_at, &as_file(file, "/nonexistent/zkrender-bundle-file".to_owned()));
                continue;
            };
            let dest = dir.join(&path);
            let clash =
                paths.keys().find(|other| other.starts_with(&path) || path.starts_with(other)).cloned();
            if let Some(other) = clash {
                let message = if other == path {
                    format!(
                        "path {} is also the path of [[bundle.file]] #{}",
                        path.display(),
                        paths[&other] + 1
                    )
                } else {
                    format!(
                        "path {} and the path {} of [[bundle.file]] #{} cannot both exist (one would be the other's directory)",
                        path.display(),
                        other.display(),
                        paths[&other] + 1
                    )
                };
                self.problem(file_at, "path", file.get_ref().path.span(), message);
            } else {
                paths.insert(path.clone(), file_index);
                claim(self, file_at, "path", &dest, file.get_ref().path.span());
            }
            if let Some(mut spec) = self.file(file_at, &as_file(file, dest.display().to_string())) {
                spec.dest = dest;
                spec.reload = reload.clone();
                files.push(spec);
            }
        }
        Some(BundleSpec { dir: dir?, commit, files, check, check_timeout, rollback, reload })
    }

    fn bundle_dir(&mut self, at: At<'_>, raw: &Spanned<String>) -> Option<PathBuf> {
        if raw.get_ref().is_empty() {
            self.problem(at, "dir", raw.span(), "dir is empty");
            return None;
        }
        let dir = self.resolve(raw.get_ref());
        if dir.parent().is_none() {
            self.problem(at, "dir", raw.span(), "dir may not be the root directory");
            return None;
        }
        Some(dir)
    }

    /// A `[[bundle.file]] path`: relative, inside the bundle, not one of its hidden names.
    fn bundle_path(&mut self, at: At<'_>, raw: &Spanned<String>) -> Option<PathBuf> {
        match check_bundle_path(raw.get_ref()) {
            Ok(path) => Some(path),
            Err(message) => {
                self.problem(at, "path", raw.span(), message);
                None
            }
        }
    }
}

/// `path` as a relative path of normal components, or why it is not one.
pub(crate) fn check_bundle_path(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("path is empty".to_owned());
    }
    if path.ends_with('/') {
        return Err(format!("path {path:?} must name a file, not a directory"));
    }
    let mut out = PathBuf::new();
    for component in Path::new(path).components() {
        match component {
            Component::Normal(part) => out.push(part),
            Component::CurDir => {}
            Component::RootDir | Component::Prefix(_) => {
                return Err(format!("path {path:?} must be relative to the bundle's dir"));
            }
            Component::ParentDir => return Err(format!("path {path:?} may not contain \"..\"")),
        }
    }
    let Some(first) = out.components().next() else {
        return Err(format!("path {path:?} names no file"));
    };
    if first.as_os_str().as_encoded_bytes().starts_with(b"..") {
        return Err(format!(
            "path {path:?}: names starting with \"..\" are the bundle's own (..data and the versions)"
        ));
    }
    Ok(out)
}

/// A `[[bundle.file]]` as the `[[file]]` it is checked as: `dest` the path under the bundle's
/// dir, at the `path` key's span; no keys a bundle file cannot have.
fn as_file(file: &Spanned<RawBundleFile>, dest: String) -> Spanned<RawFile> {
    let raw = file.get_ref();
    let raw_file = RawFile {
        dest: Spanned::new(raw.path.span(), dest),
        znode: raw.znode.clone(),
        template: raw.template.clone(),
        inline: raw.inline.clone(),
        tree: raw.tree.clone(),
        format: raw.format.clone(),
        prefix: raw.prefix.clone(),
        mode: raw.mode.clone(),
        owner: raw.owner.clone(),
        group: raw.group.clone(),
        on_delete: None,
        check: raw.check.clone(),
        check_timeout: raw.check_timeout.clone(),
        backup: None,
        install: None,
        allow_empty: raw.allow_empty,
        rollback: None,
        allow_env: raw.allow_env.clone(),
        reload: None,
    };
    Spanned::new(file.span(), raw_file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Config, ReloadAction};
    use crate::model::ZnodePath;

    const ZK: &str = "[zookeeper]\nhosts = \"127.0.0.1:2181\"\n";

    fn parse(text: &str) -> Result<Config, String> {
        super::super::parse(Path::new("/etc/zkrender/zkrender.toml"), &format!("{ZK}{text}"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_bundle_becomes_files_under_its_dir_sharing_its_reload() {
        let config = parse(
            "[[bundle]]\ndir = \"conf\"\ncommit = \"/app/version\"\nrollback = true\n\
             check = [\"true\", \"{dir}\"]\n\
             [[bundle.file]]\npath = \"app.conf\"\nznode = \"/app/conf\"\nmode = \"0600\"\n\
             [[bundle.file]]\npath = \"sub/routes.json\"\ninline = \"{{ znode('/app/routes') }}\"\n\
             [bundle.reload]\ncommand = [\"true\"]\n",
        )
        .unwrap();
        assert!(config.files.is_empty());
        let bundle = &config.bundles[0];
        assert_eq!(bundle.dir, Path::new("/etc/zkrender/conf"));
        assert_eq!(bundle.commit, Some(ZnodePath::parse("/app/version").unwrap()));
        assert!(bundle.rollback);
        assert_eq!(bundle.check.as_deref(), Some(&["true".to_owned(), "{dir}".to_owned()][..]));
        let dests: Vec<&Path> = bundle.files.iter().map(|f| f.dest.as_path()).collect();
        assert_eq!(
            dests,
            [Path::new("/etc/zkrender/conf/app.conf"), Path::new("/etc/zkrender/conf/sub/routes.json")]
        );
        assert_eq!(bundle.path_of(&bundle.files[1]), Path::new("sub/routes.json"));
        assert_eq!(bundle.files[0].mode, 0o600);
        assert!(bundle.files.iter().all(|f| f.reload.as_ref().map(|r| &r.action)
            == Some(&ReloadAction::Command { argv: vec!["true".into()] })));
    }

    #[test]
    fn bundle_problems_name_the_bundle_the_file_and_the_key() {
        let err = parse("[[bundle]]\ndir = \"d\"\n").unwrap_err();
        assert!(
            err.contains("3:1: [[bundle]] #1 (dir = d): a bundle needs at least one [[bundle.file]]"),
            "{err}"
        );
        let err = parse(
            "[[file]]\ndest = \"d/a\"\nznode = \"/a\"\n[[bundle]]\ndir = \"d\"\n\
             [[bundle.file]]\npath = \"a\"\nznode = \"/a\"\n",
        )
        .unwrap_err();
        assert!(err.contains("[[bundle]] #1 (dir = d) [[bundle.file]] #1 (path = a): key `path`"), "{err}");
        assert!(err.contains("is also claimed by [[file]] #1"), "{err}");
        let err = parse(
            "[[bundle]]\ndir = \"d\"\n[[bundle.file]]\npath = \"a\"\nznode = \"/a\"\n\
             [[bundle]]\ndir = \"d/\"\n[[bundle.file]]\npath = \"b\"\nznode = \"/b\"\n",
        )
        .unwrap_err();
        assert!(
            err.contains(
                "[[bundle]] #2 (dir = d/): key `dir`: /etc/zkrender/d/..data is also claimed by [[bundle]] #1"
            ),
            "{err}"
        );
        let err =
            parse("[[bundle]]\ndir = \"d\"\n[[bundle.file]]\npath = \"a\"\nmode = \"9\"\n").unwrap_err();
        assert!(err.contains("key `mode`") && err.contains("needs one of `znode`"), "{err}");
    }

    #[test]
    fn bundle_paths_are_relative_normal_and_not_hidden_names() {
        assert_eq!(check_bundle_path("a.conf").unwrap(), PathBuf::from("a.conf"));
        assert_eq!(check_bundle_path("./sub/b.json").unwrap(), PathBuf::from("sub/b.json"));
        assert!(check_bundle_path("").is_err());
        assert!(check_bundle_path("/etc/x").unwrap_err().contains("relative"));
        assert!(check_bundle_path("a/../b").unwrap_err().contains(".."));
        assert!(check_bundle_path("sub/").unwrap_err().contains("directory"));
        assert!(check_bundle_path("..data").unwrap_err().contains("bundle's own"));
        assert!(check_bundle_path("..2026_01_01/x").is_err());
        assert!(check_bundle_path(".").is_err());
    }
}
