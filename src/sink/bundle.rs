//! Installing a `[[bundle]]`: several files the application sees change as one.
//!
//! The layout is kubelet's atomic writer's (a ConfigMap volume), so tools that handle those
//! handle this:
//!
//! ```text
//! dir/..2026_12_02_12_00_00.123456789/app.conf     a complete version (real files)
//! dir/..2026_12_02_12_00_00.123456789/sub/x.json
//! dir/..data -> ..2026_12_02_12_00_00.123456789    the current version
//! dir/app.conf -> ..data/app.conf                  what the application opens
//! dir/sub -> ..data/sub
//! ```
//!
//! [`install`] writes and fsyncs a whole new version directory, runs the files' `check`s and
//! the bundle's on it, then replaces `..data` with one `rename` of a new symlink: every path
//! under `dir/` resolves to the old version or to the new one, never to a mix. Then it links
//! the visible names the new version adds, unlinks those it no longer has (they already
//! resolved to nothing since the swap) and removes the previous version (kept when the
//! bundle has `rollback`, until the next version, so [`swap_back`] can return to it).
//!
//! A visible name is a path's first component: `sub/x.json` is reached through
//! `dir/sub -> ..data/sub`, so a subdirectory changes with the swap too.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};
use std::time::SystemTime;

use super::{PERMISSION_BITS, WriteError, create_dirs, run_check, set_owner_and_mode, sync_dir};
use crate::config::{BundleSpec, FileSpec};

/// The symlink to the current version.
pub const DATA: &str = "..data";
/// The new `..data` symlink, before its rename.
const DATA_TMP: &str = "..data_tmp";

/// What [`install`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BundleOutcome {
    /// The current version already holds these files (modes and owners were fixed).
    Unchanged,
    /// `..data` now points at `version`; `previous` is the version it pointed at before,
    /// still on disk when the bundle has `rollback`.
    Swapped { version: String, previous: Option<String> },
}

/// The version `..data` points at (a name in `dir`), if any.
pub fn current_version(dir: &Path) -> Option<String> {
    let target = fs::read_link(dir.join(DATA)).ok()?;
    let name = target.to_str()?;
    is_version(OsStr::new(name)).then(|| name.to_owned())
}

/// True for a version directory's name: `..` and not `..data` (or its temporary link).
fn is_version(name: &OsStr) -> bool {
    let bytes = name.as_bytes();
    bytes.starts_with(b"..") && bytes.len() > 2 && name != DATA && name != DATA_TMP
}

/// A new version's name: `..` and the UTC time to the nanosecond (`..2026_12_02_12_00_00.
/// 123456789`), so that names sort in the order they were made.
fn version_name(now: SystemTime) -> String {
    let stamp = humantime::format_rfc3339_nanos(now).to_string();
    let stamp: String = stamp
        .trim_end_matches('Z')
        .chars()
        .map(|c| if matches!(c, '-' | ':' | 'T') { '_' } else { c })
        .collect();
    format!("..{stamp}")
}

/// The first component of each path: the names linked in `dir`.
fn visible_names<'a>(paths: impl IntoIterator<Item = &'a Path>) -> BTreeSet<OsString> {
    paths
        .into_iter()
        .filter_map(|p| match p.components().next() {
            Some(Component::Normal(name)) => Some(name.to_owned()),
            _ => None,
        })
        .collect()
}

/// Installs `files` (each file's spec and contents, in the bundle's order) as a new
/// version of `bundle`, unless the current version already holds exactly them.
///
/// # Errors
/// [`WriteError`] naming the file (or the bundle's `dir` for the bundle-wide `check` and
/// the swap). `..data`, and so every visible file, is then untouched, and the staged
/// version is removed. Notably [`WriteError::CheckFailed`] when a file's or the bundle's
/// `check` rejects the staged version and [`WriteError::EmptyRefused`] for empty contents
/// over a non-empty file without `allow_empty`.
pub fn install(bundle: &BundleSpec, files: &[(&FileSpec, &[u8])]) -> Result<BundleOutcome, WriteError> {
    let dir = bundle.dir.as_path();
    create_dirs(dir).map_err(|(created, source)| WriteError::CreateDir {
        dest: dir.to_owned(),
        dir: created,
        source,
    })?;
    let current = current_version(dir);
    let paths: Vec<&Path> = files.iter().map(|(spec, _)| bundle.path_of(spec)).collect();
    if let Some(current) = &current {
        let version = dir.join(current);
        if same_version(&version, bundle, files)? {
            if link_names(dir, &visible_names(paths.iter().copied()))? {
                let _ = sync_dir(dir);
            }
            remove_leftovers(dir, current);
            return Ok(BundleOutcome::Unchanged);
        }
        for (spec, contents) in files {
            if contents.is_empty() && !spec.allow_empty {
                let old = version.join(bundle.path_of(spec));
                if fs::metadata(&old).is_ok_and(|m| m.len() > 0) {
                    return Err(WriteError::EmptyRefused { dest: spec.dest.clone() });
                }
            }
        }
    }

    let staged = Staged::create(dir)?;
    // Every file written first, then each synced: on a journalling file system the first
    // sync commits the others' blocks too, so the rest cost little.
    let written: Vec<fs::File> = files
        .iter()
        .map(|(spec, contents)| staged.write(bundle.path_of(spec), spec, contents))
        .collect::<Result<_, _>>()?;
    for ((spec, _), file) in files.iter().zip(&written) {
        file.sync_data().map_err(|source| WriteError::WriteTemp {
            dest: spec.dest.clone(),
            temp: staged.path.join(bundle.path_of(spec)),
            source,
        })?;
    }
    drop(written);
    staged.sync(&paths)?;
    for (spec, _) in files {
        if let Some(argv) = &spec.check {
            run_check(&spec.dest, argv, &staged.path.join(bundle.path_of(spec)), spec.check_timeout)?;
        }
    }
    if let Some(argv) = &bundle.check {
        let shown = staged.path.display().to_string();
        let argv: Vec<String> = argv.iter().map(|a| a.replace("{dir}", &shown)).collect();
        run_check(dir, &argv, &staged.path, bundle.check_timeout).map_err(|e| match e {
            // Name the check as configured, with `{dir}`.
            WriteError::CheckFailed { dest, reason, output, source, .. } => WriteError::CheckFailed {
                dest,
                command: crate::process::Argv(bundle.check.as_deref().unwrap_or_default()).to_string(),
                reason,
                output,
                source,
            },
            other => other,
        })?;
    }

    let version = staged.commit();
    swap(dir, &version)?;
    let names = visible_names(paths.iter().copied());
    let relinked = link_names(dir, &names)? | unlink_others(dir, &names);
    let keep = if bundle.rollback { current.as_deref() } else { None };
    remove_versions(dir, &version, keep);
    if relinked {
        // The swap is durable already; this makes the new names (and the removals) so.
        let _ = sync_dir(dir);
    }
    Ok(BundleOutcome::Swapped { version, previous: current })
}

/// `rollback`: points `..data` back at `previous` if it still points at `installed` (a newer
/// version may have been installed meanwhile), relinks `previous`'s names and removes
/// `installed`. Returns false when `..data` had moved on or `previous` is gone.
///
/// # Errors
/// The I/O error of the swap.
pub fn swap_back(dir: &Path, installed: &str, previous: &str) -> io::Result<bool> {
    if current_version(dir).as_deref() != Some(installed) || !dir.join(previous).is_dir() {
        return Ok(false);
    }
    swap(dir, previous).map_err(|e| io::Error::other(e.to_string()))?;
    let names: BTreeSet<OsString> =
        fs::read_dir(dir.join(previous))?.flatten().map(|e| e.file_name()).collect();
    link_names(dir, &names).map_err(|e| io::Error::other(e.to_string()))?;
    unlink_others(dir, &names);
    remove_versions(dir, previous, None);
    let _ = sync_dir(dir);
    Ok(true)
}

/// True when `version` holds exactly `files` (same paths, bytes, and no other file); fixes
/// a differing mode or owner on the way, as a single file's install does.
fn same_version(
    version: &Path,
    bundle: &BundleSpec,
    files: &[(&FileSpec, &[u8])],
) -> Result<bool, WriteError> {
    let mut found = BTreeSet::new();
    list_files(version, Path::new(""), &mut found);
    let wanted: BTreeSet<PathBuf> = files.iter().map(|(spec, _)| bundle.path_of(spec).to_owned()).collect();
    if found != wanted {
        return Ok(false);
    }
    for (spec, contents) in files {
        let path = version.join(bundle.path_of(spec));
        match fs::read(&path) {
            Ok(bytes) if bytes == *contents => {}
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(source) => return Err(WriteError::ReadCurrent { dest: spec.dest.clone(), source }),
        }
    }
    for (spec, _) in files {
        let path = version.join(bundle.path_of(spec));
        let fixed = fs::File::open(&path).and_then(|file| {
            let meta = file.metadata()?;
            super::fix_metadata(&file, &meta, spec.mode & PERMISSION_BITS, spec.owner, spec.group)
        });
        fixed.map_err(|source| WriteError::Metadata {
            dest: spec.dest.clone(),
            path: path.clone(),
            source,
        })?;
    }
    Ok(true)
}

/// Every regular file under `root/rel`, as paths relative to `root`.
fn list_files(root: &Path, rel: &Path, out: &mut BTreeSet<PathBuf>) {
    let Ok(entries) = fs::read_dir(root.join(rel)) else { return };
    for entry in entries.flatten() {
        let path = rel.join(entry.file_name());
        match entry.file_type() {
            Ok(t) if t.is_dir() => list_files(root, &path, out),
            Ok(_) => {
                out.insert(path);
            }
            Err(_) => {}
        }
    }
}

/// Replaces `dir/..data` with a symlink to `version`: one rename, then the directory fsync.
fn swap(dir: &Path, version: &str) -> Result<(), WriteError> {
    let tmp = dir.join(DATA_TMP);
    let failed = |source| WriteError::Swap { dir: dir.to_owned(), source };
    match fs::remove_file(&tmp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(failed(e)),
    }
    std::os::unix::fs::symlink(version, &tmp).map_err(failed)?;
    fs::rename(&tmp, dir.join(DATA)).map_err(failed)?;
    sync_dir(dir).map_err(failed)
}

/// Makes each of `names` in `dir` a symlink to `..data/NAME` (a new link is renamed over
/// whatever is there, so it appears at once). True if any link was made.
fn link_names(dir: &Path, names: &BTreeSet<OsString>) -> Result<bool, WriteError> {
    let mut made_any = false;
    for name in names {
        let link = dir.join(name);
        let target = Path::new(DATA).join(name);
        if fs::read_link(&link).is_ok_and(|t| t == target) {
            continue;
        }
        let mut tmp_name = OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(".zkrender.link");
        let tmp = dir.join(tmp_name);
        let _ = fs::remove_file(&tmp);
        let made = std::os::unix::fs::symlink(&target, &tmp).and_then(|()| fs::rename(&tmp, &link));
        if let Err(source) = made {
            let _ = fs::remove_file(&tmp);
            return Err(WriteError::Rename { dest: link, source });
        }
        made_any = true;
    }
    Ok(made_any)
}

/// Removes the symlinks into `..data` that are not among `names` (files that left the
/// bundle: since the swap they resolved to nothing). True if any was removed.
fn unlink_others(dir: &Path, names: &BTreeSet<OsString>) -> bool {
    let Ok(entries) = fs::read_dir(dir) else { return false };
    let mut removed = false;
    for entry in entries.flatten() {
        let name = entry.file_name();
        if names.contains(&name) {
            continue;
        }
        if fs::read_link(entry.path()).is_ok_and(|t| t.starts_with(DATA)) {
            removed |= fs::remove_file(entry.path()).is_ok();
        }
    }
    removed
}

/// Removes every version directory in `dir` but `current` and `keep` (the previous version,
/// and leftovers of a crash in the middle of an install).
fn remove_versions(dir: &Path, current: &str, keep: Option<&str>) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !is_version(&name) || name == current || keep.is_some_and(|k| name == k) {
            continue;
        }
        if entry.file_type().is_ok_and(|t| t.is_dir())
            && let Err(e) = fs::remove_dir_all(entry.path())
        {
            tracing::warn!(dir = %dir.display(), version = %name.to_string_lossy(), error = %e, "could not remove an old bundle version");
        }
    }
}

/// Removes version directories newer than `current`: what a crash in the middle of an
/// install left (an older one may be the previous version a `rollback` still needs).
fn remove_leftovers(dir: &Path, current: &str) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if is_version(&name)
            && name.as_bytes() > current.as_bytes()
            && entry.file_type().is_ok_and(|t| t.is_dir())
        {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// A version directory being written; removed on drop unless committed.
struct Staged {
    path: PathBuf,
    name: String,
    committed: bool,
}

impl Staged {
    fn create(dir: &Path) -> Result<Staged, WriteError> {
        loop {
            let name = version_name(SystemTime::now());
            let path = dir.join(&name);
            match fs::DirBuilder::new().mode(0o755).create(&path) {
                Ok(()) => return Ok(Staged { path, name, committed: false }),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(source) => {
                    return Err(WriteError::CreateDir { dest: dir.to_owned(), dir: path, source });
                }
            }
        }
    }

    /// Writes one file (with its final mode and owner from the first byte); the caller
    /// syncs it.
    fn write(&self, rel: &Path, spec: &FileSpec, contents: &[u8]) -> Result<fs::File, WriteError> {
        let path = self.path.join(rel);
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new().mode(0o755).recursive(true).create(parent).map_err(|source| {
                WriteError::CreateDir { dest: spec.dest.clone(), dir: parent.to_owned(), source }
            })?;
        }
        let mode = spec.mode & PERMISSION_BITS;
        let file =
            OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path).map_err(|source| {
                WriteError::TempFile { dest: spec.dest.clone(), dir: self.path.clone(), source }
            })?;
        set_owner_and_mode(&file, mode, spec.owner, spec.group).map_err(|source| WriteError::Metadata {
            dest: spec.dest.clone(),
            path: path.clone(),
            source,
        })?;
        (&file).write_all(contents).map_err(|source| WriteError::WriteTemp {
            dest: spec.dest.clone(),
            temp: path.clone(),
            source,
        })?;
        Ok(file)
    }

    /// Fsyncs every directory of the version (the files are already synced).
    fn sync(&self, paths: &[&Path]) -> Result<(), WriteError> {
        let mut dirs: BTreeSet<PathBuf> = BTreeSet::new();
        for path in paths {
            let mut p = path.parent();
            while let Some(d) = p.filter(|d| !d.as_os_str().is_empty()) {
                dirs.insert(self.path.join(d));
                p = d.parent();
            }
        }
        dirs.insert(self.path.clone());
        for d in dirs.iter().rev() {
            sync_dir(d).map_err(|source| WriteError::Swap { dir: self.path.clone(), source })?;
        }
        Ok(())
    }

    fn commit(mut self) -> String {
        self.committed = true;
        std::mem::take(&mut self.name)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.committed {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    fn mode_of(path: &Path) -> Option<u32> {
        fs::metadata(path).ok().map(|m| m.mode() & PERMISSION_BITS)
    }

    use std::os::unix::fs::MetadataExt;

    use super::*;

    fn file(dir: &Path, path: &str) -> FileSpec {
        FileSpec { mode: 0o640, ..crate::sink::tests::spec(&dir.join(path)) }
    }

    fn bundle(dir: &Path, paths: &[&str]) -> BundleSpec {
        BundleSpec {
            dir: dir.to_owned(),
            commit: None,
            files: paths.iter().map(|p| file(dir, p)).collect(),
            check: None,
            check_timeout: Duration::from_secs(10),
            rollback: false,
            reload: None,
        }
    }

    fn put(b: &BundleSpec, contents: &[&str]) -> Result<BundleOutcome, WriteError> {
        let files: Vec<(&FileSpec, &[u8])> =
            b.files.iter().zip(contents).map(|(f, c)| (f, c.as_bytes())).collect();
        install(b, &files)
    }

    fn versions(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .flatten()
            .map(|e| e.file_name())
            .filter(|n| is_version(n))
            .map(|n| n.to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn version_names_sort_in_time_order() {
        let a = version_name(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 5));
        let b = version_name(SystemTime::UNIX_EPOCH + Duration::new(1_700_000_000, 40));
        assert_eq!(a, "..2023_11_14_22_13_20.000000005");
        assert!(a < b && is_version(OsStr::new(&a)));
        assert!(!is_version(OsStr::new(DATA)) && !is_version(OsStr::new("app.conf")));
    }

    #[test]
    fn a_new_version_swaps_in_whole_and_the_previous_one_goes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("conf");
        let b = bundle(&dir, &["a.conf", "sub/b.json"]);
        let BundleOutcome::Swapped { version: v1, previous: None } = put(&b, &["1", "1"]).unwrap() else {
            panic!("first install")
        };
        assert_eq!(fs::read_to_string(dir.join("a.conf")).unwrap(), "1");
        assert_eq!(fs::read_to_string(dir.join("sub/b.json")).unwrap(), "1");
        assert_eq!(fs::read_link(dir.join("sub")).unwrap(), Path::new("..data/sub"));
        assert_eq!(mode_of(&dir.join("a.conf")), Some(0o640));
        // A crash left a staged version: the next install that changes nothing removes it.
        fs::create_dir(dir.join("..9999_01_01_00_00_00.000000000")).unwrap();
        assert_eq!(put(&b, &["1", "1"]).unwrap(), BundleOutcome::Unchanged);
        assert_eq!(versions(&dir), vec![v1.clone()]);
        let BundleOutcome::Swapped { version: v2, previous } = put(&b, &["2", "2"]).unwrap() else {
            panic!("second install")
        };
        assert_eq!(previous.as_deref(), Some(v1.as_str()));
        assert_eq!(versions(&dir), vec![v2.clone()], "the previous version is removed");
        assert_eq!(current_version(&dir), Some(v2));
        assert_eq!(fs::read_to_string(dir.join("sub/b.json")).unwrap(), "2");
    }

    #[test]
    fn a_file_leaving_the_bundle_leaves_with_the_swap() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("conf");
        put(&bundle(&dir, &["a", "b"]), &["1", "1"]).unwrap();
        fs::write(dir.join("mine"), "not the bundle's").unwrap();
        put(&bundle(&dir, &["a"]), &["2"]).unwrap();
        assert!(fs::symlink_metadata(dir.join("b")).is_err(), "b is gone");
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "2");
        assert!(dir.join("mine").exists(), "files that are not the bundle's stay");
    }

    #[test]
    fn a_failed_check_or_empty_file_leaves_the_current_version() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("conf");
        let mut b = bundle(&dir, &["a", "b"]);
        put(&b, &["1", "1"]).unwrap();
        let before = current_version(&dir);
        b.check = Some(vec!["sh".into(), "-c".into(), "test \"$(cat {dir}/a)\" = \"$(cat {dir}/b)\"".into()]);
        let err = put(&b, &["2", "3"]).unwrap_err();
        assert!(matches!(err, WriteError::CheckFailed { .. }), "{err}");
        assert!(err.to_string().contains("{dir}"), "{err}");
        assert_eq!(current_version(&dir), before, "..data untouched");
        assert_eq!(versions(&dir).len(), 1, "the staged version is removed");
        assert!(matches!(put(&b, &["", ""]).unwrap_err(), WriteError::EmptyRefused { .. }));
        assert!(matches!(put(&b, &["2", "2"]), Ok(BundleOutcome::Swapped { .. })));
    }

    #[test]
    fn swap_back_returns_to_the_kept_previous_version() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("conf");
        let mut b = bundle(&dir, &["a", "b"]);
        b.rollback = true;
        put(&b, &["1", "1"]).unwrap();
        let b2 = BundleSpec { files: vec![file(&dir, "a")], ..b.clone() };
        let BundleOutcome::Swapped { version, previous: Some(previous) } = put(&b2, &["2"]).unwrap() else {
            panic!("swap")
        };
        assert_eq!(versions(&dir).len(), 2, "rollback keeps the previous version");
        assert!(swap_back(&dir, &version, &previous).unwrap());
        assert_eq!(fs::read_to_string(dir.join("b")).unwrap(), "1", "b is back");
        assert_eq!(fs::read_to_string(dir.join("a")).unwrap(), "1");
        assert_eq!(versions(&dir), vec![previous.clone()]);
        assert!(!swap_back(&dir, &version, &previous).unwrap(), "only from the version installed");
    }
}
