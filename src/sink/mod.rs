//! Putting rendered bytes on disk: the last stage before `notify`.
//!
//! [`install`] stages the new contents in a hidden temporary file next to the destination,
//! with its final mode and owner from the first byte, fsyncs it, runs the optional `check`
//! on it, keeps the previous version as `DEST.bak` when asked, then renames it over the
//! destination and fsyncs the directory. The application therefore sees either the old
//! file or the new one, never a half-written, accidentally empty or rejected one. The one
//! exception is `install = "in-place"` (for single-file bind mounts, where rename cannot
//! work), which rewrites the destination itself and is documented as not atomic.
//!
//! This is blocking std code; the pipeline calls it from `spawn_blocking`. It decides
//! nothing about *when* to write and never notifies anyone: it reports [`WriteOutcome`] and
//! the pipeline notifies only after [`WriteOutcome::Written`].
//!
//! The destination always ends up a regular file: a symlink at `dest` is replaced, not
//! followed.

pub mod bundle;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, Metadata, OpenOptions, Permissions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::Duration;

use crate::status::FailureKind;

use nix::fcntl::{Flock, FlockArg};
use rand::Rng;
use rand::distr::Alphanumeric;
use tracing::warn;

use crate::config::{FileSpec, InstallMode};
use crate::process::{self, Argv, Capture, Ending, Finished, Job, RunError};

/// Permission bits of a mode (`st_mode` also carries the file type).
const PERMISSION_BITS: u32 = 0o7777;
/// How much of a failed check's combined stdout and stderr is kept for the error message.
const CHECK_OUTPUT_LIMIT: usize = 4096;
/// A path for a message: "the temporary file" for ours (their names are random), else the path.
fn shown(path: &Path) -> String {
    let temp = path
        .file_name()
        .is_some_and(|n| n.as_bytes().windows(TEMP_MARKER.len()).any(|w| w == TEMP_MARKER.as_bytes()));
    if temp { "the temporary file".to_owned() } else { path.display().to_string() }
}

/// Marks our temporary files: `.<name>.zkrender.<random>`.
const TEMP_MARKER: &str = ".zkrender.";

/// What [`install`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The destination already held these bytes (mode and owner were fixed if they
    /// differed); nothing to notify.
    Unchanged,
    /// New bytes are in place; the application should be notified.
    Written,
}

/// Failures while putting rendered bytes on disk. Every variant names the file.
///
/// After any of these no temporary file is left behind and the previous file is still in
/// place, unchanged, except after [`WriteError::InPlace`]: a failed in-place rewrite may
/// leave it partly rewritten.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("writing {}: reading the current file", .dest.display())]
    ReadCurrent {
        dest: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "writing {}: refusing to replace a non-empty file with empty contents \
         (set allow_empty = true on the file to allow it)",
        .dest.display()
    )]
    EmptyRefused { dest: PathBuf },
    #[error("writing {}: creating directory {}", .dest.display(), .dir.display())]
    CreateDir {
        dest: PathBuf,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {}: creating temporary file in {}", .dest.display(), .dir.display())]
    TempFile {
        dest: PathBuf,
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {}: setting owner and mode of {}", .dest.display(), shown(.path))]
    Metadata {
        dest: PathBuf,
        /// The temporary file, the backup or the destination itself.
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    // The temporary file's random name stays out of the message: the same cause must read the
    // same on every attempt, so that it is logged once, not once per attempt.
    #[error("writing {}: writing the temporary file", .dest.display())]
    WriteTemp {
        dest: PathBuf,
        temp: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {}: check `{command}` {reason}{}", .dest.display(), output_suffix(.output))]
    CheckFailed {
        dest: PathBuf,
        /// The configured argv, `{file}` not substituted.
        command: String,
        reason: CheckFailure,
        /// The last few KiB of the check's stdout and stderr, interleaved.
        output: String,
        /// Why the check could not be run at all, if that was the problem.
        #[source]
        source: Option<io::Error>,
    },
    #[error("writing {}: keeping the previous version as {}", .dest.display(), .backup.display())]
    Backup {
        dest: PathBuf,
        backup: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "writing {}: the file is a single-file bind mount (such as a Kubernetes subPath) and \
         cannot be replaced by rename; mount its directory instead, or set \
         install = \"in-place\" on the file",
        .dest.display()
    )]
    BindMount {
        dest: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {}: moving temporary file into place", .dest.display())]
    Rename {
        dest: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing {}: rewriting the file in place", .dest.display())]
    InPlace {
        dest: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A bundle's `..data` could not be replaced (or its new version synced).
    #[error("writing bundle {}: swapping ..data to the new version", .dir.display())]
    Swap {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("removing {}", .dest.display())]
    Remove {
        dest: PathBuf,
        #[source]
        source: io::Error,
    },
}

impl WriteError {
    /// The cause, so callers can log or count once per cause; its label (`as_str`) is one of
    /// `check_failed`, `empty_refused`, `bind_mount`, `permission`, `no_space` or `io`.
    pub fn kind(&self) -> FailureKind {
        match self {
            WriteError::CheckFailed { .. } => FailureKind::CheckFailed,
            WriteError::EmptyRefused { .. } => FailureKind::EmptyRefused,
            WriteError::BindMount { .. } => FailureKind::BindMount,
            _ => match self.io_source().map(io::Error::kind) {
                Some(io::ErrorKind::PermissionDenied) => FailureKind::Permission,
                Some(io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded) => FailureKind::NoSpace,
                _ => FailureKind::Io,
            },
        }
    }

    /// The destination this error is about.
    pub fn dest(&self) -> &Path {
        match self {
            WriteError::ReadCurrent { dest, .. }
            | WriteError::EmptyRefused { dest }
            | WriteError::CreateDir { dest, .. }
            | WriteError::TempFile { dest, .. }
            | WriteError::Metadata { dest, .. }
            | WriteError::WriteTemp { dest, .. }
            | WriteError::CheckFailed { dest, .. }
            | WriteError::Backup { dest, .. }
            | WriteError::BindMount { dest, .. }
            | WriteError::Rename { dest, .. }
            | WriteError::InPlace { dest, .. }
            | WriteError::Remove { dest, .. } => dest,
            WriteError::Swap { dir, .. } => dir,
        }
    }

    fn io_source(&self) -> Option<&io::Error> {
        std::error::Error::source(self).and_then(|e| e.downcast_ref::<io::Error>())
    }
}

/// Why a `check` rejected the staged file.
#[derive(Debug)]
pub enum CheckFailure {
    /// It ran and exited unsuccessfully (non-zero or killed by a signal).
    Status(ExitStatus),
    /// It ran longer than `check_timeout` and was killed.
    TimedOut(Duration),
    /// It could not be run (program not found, not executable, ...).
    NotRun,
}

impl fmt::Display for CheckFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckFailure::Status(status) => write!(f, "failed ({status})"),
            CheckFailure::TimedOut(after) => {
                write!(f, "timed out after {} and was killed", humantime::format_duration(*after))
            }
            CheckFailure::NotRun => f.write_str("could not be run"),
        }
    }
}

fn output_suffix(output: &str) -> String {
    if output.is_empty() { String::new() } else { format!("; output:\n{output}") }
}

/// Installs `contents` at `spec.dest` with `spec.mode` and owner, atomically unless
/// `spec.install` is [`InstallMode::InPlace`].
///
/// Identical bytes give [`WriteOutcome::Unchanged`] without a write (a differing mode or
/// owner is fixed in place). Missing parent directories are created with mode 0755.
///
/// # Errors
/// [`WriteError`] naming `spec.dest`; the previous file is then untouched (except by a
/// failed in-place rewrite, [`WriteError::InPlace`]). Notably
/// [`WriteError::EmptyRefused`] for empty contents over a non-empty file without
/// `allow_empty`, [`WriteError::CheckFailed`] when `check` rejects the new contents and
/// [`WriteError::BindMount`] when `dest` is a single-file bind mount in atomic mode.
pub fn install(spec: &FileSpec, contents: &[u8]) -> Result<WriteOutcome, WriteError> {
    install_with(spec, contents, DirSync::Now)
}

/// When the directory fsync after a rename happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DirSync {
    /// Before [`install_with`] returns.
    Now,
    /// Left to the caller, who calls [`sync_dirs`] for a whole batch of installs before
    /// telling the application (one fsync per directory instead of one per file).
    Deferred,
}

/// [`install`], with the directory fsync optionally left to the caller.
///
/// # Errors
/// As [`install`].
pub fn install_with(spec: &FileSpec, contents: &[u8], dir_sync: DirSync) -> Result<WriteOutcome, WriteError> {
    let dest = spec.dest.as_path();
    let mode = spec.mode & PERMISSION_BITS;
    let current = Current::read(dest, contents)
        .map_err(|source| WriteError::ReadCurrent { dest: dest.to_owned(), source })?;

    if let Current::Same { file, meta } = &current {
        fix_metadata(file, meta, mode, spec.owner, spec.group).map_err(|source| WriteError::Metadata {
            dest: dest.to_owned(),
            path: dest.to_owned(),
            source,
        })?;
        return Ok(WriteOutcome::Unchanged);
    }
    if contents.is_empty() && !spec.allow_empty && current.is_non_empty() {
        return Err(WriteError::EmptyRefused { dest: dest.to_owned() });
    }

    let dir = parent_dir(dest);
    create_dirs(dir).map_err(|(dir, source)| WriteError::CreateDir { dest: dest.to_owned(), dir, source })?;

    let mut temp = TempFile::create(dest, dir).map_err(|source| WriteError::TempFile {
        dest: dest.to_owned(),
        dir: dir.to_owned(),
        source,
    })?;
    set_owner_and_mode(temp.file(), mode, spec.owner, spec.group).map_err(|source| WriteError::Metadata {
        dest: dest.to_owned(),
        path: temp.path.clone(),
        source,
    })?;
    write_synced(temp.file(), contents).map_err(|source| WriteError::WriteTemp {
        dest: dest.to_owned(),
        temp: temp.path.clone(),
        source,
    })?;
    temp.close();

    if let Some(argv) = &spec.check {
        run_check(dest, argv, &temp.path, spec.check_timeout)?;
    }

    let old = match current {
        Current::Differs { file, meta } => Some((file, meta)),
        _ => None,
    };
    if spec.backup
        && let Some((file, meta)) = &old
    {
        let backup = sibling(dest, ".bak");
        keep_backup(file, meta, &backup, dir).map_err(|source| WriteError::Backup {
            dest: dest.to_owned(),
            backup: backup.clone(),
            source,
        })?;
    }

    // In-place only makes sense over an existing regular file; anything else (a missing
    // file, a symlink) cannot be a single-file bind mount, so it gets the atomic path.
    if spec.install == InstallMode::InPlace && old.is_some() {
        rewrite_in_place(dest, contents, mode, spec.owner, spec.group)
            .map_err(|source| WriteError::InPlace { dest: dest.to_owned(), source })?;
        return Ok(WriteOutcome::Written); // `temp` is removed on drop
    }

    temp.rename_to(dest).map_err(|source| {
        if source.raw_os_error() == Some(nix::libc::EBUSY) {
            WriteError::BindMount { dest: dest.to_owned(), source }
        } else {
            WriteError::Rename { dest: dest.to_owned(), source }
        }
    })?;
    if dir_sync == DirSync::Now {
        sync_dir_after_commit(dest, dir);
    }
    Ok(WriteOutcome::Written)
}

/// Fsyncs the directory of each of `dests` once, after a batch of deferred installs. A
/// failure is logged, not returned (the files are already in place).
pub fn sync_dirs<'a>(dests: impl IntoIterator<Item = &'a Path>) {
    let mut done = BTreeSet::new();
    for dest in dests {
        let dir = parent_dir(dest);
        if done.insert(dir.to_path_buf()) {
            sync_dir_after_commit(dest, dir);
        }
    }
}

/// Removes `spec.dest` if it exists and makes the removal durable.
///
/// Returns whether a file was removed.
///
/// # Errors
/// [`WriteError::Remove`] when the file exists but cannot be removed (or is a directory).
pub fn remove(spec: &FileSpec) -> Result<bool, WriteError> {
    let dest = spec.dest.as_path();
    match fs::remove_file(dest) {
        Ok(()) => {
            sync_dir_after_commit(dest, parent_dir(dest));
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(WriteError::Remove { dest: dest.to_owned(), source }),
    }
}

/// What is at the destination now, compared with the new contents.
enum Current {
    Missing,
    /// A regular file with exactly the new bytes.
    Same {
        file: File,
        meta: Metadata,
    },
    /// A regular file with other bytes; kept open for the backup copy.
    Differs {
        file: File,
        meta: Metadata,
    },
    /// A symlink, directory or other non-regular file; it will be replaced.
    Other {
        non_empty: bool,
    },
}

impl Current {
    fn read(dest: &Path, contents: &[u8]) -> io::Result<Current> {
        let link_meta = match fs::symlink_metadata(dest) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Current::Missing),
            Err(e) => return Err(e),
        };
        if !link_meta.is_file() {
            // For the empty guard, judge what the application reads through the link.
            let non_empty = fs::metadata(dest).is_ok_and(|m| m.len() > 0);
            return Ok(Current::Other { non_empty });
        }
        // O_NOFOLLOW: if a symlink was swapped in since the lstat, fail rather than follow it.
        let mut file = OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(dest)?;
        let meta = file.metadata()?;
        if meta.len() != contents.len() as u64 {
            return Ok(Current::Differs { file, meta });
        }
        let mut existing = Vec::with_capacity(contents.len());
        file.read_to_end(&mut existing)?;
        if existing == contents {
            Ok(Current::Same { file, meta })
        } else {
            Ok(Current::Differs { file, meta })
        }
    }

    fn is_non_empty(&self) -> bool {
        match self {
            Current::Missing => false,
            Current::Same { meta, .. } | Current::Differs { meta, .. } => meta.len() > 0,
            Current::Other { non_empty } => *non_empty,
        }
    }
}

/// Brings an unchanged file's owner and mode to the configured ones, touching nothing
/// that already matches.
fn fix_metadata(
    file: &File,
    meta: &Metadata,
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
) -> io::Result<()> {
    let owner_differs =
        owner.is_some_and(|uid| uid != meta.uid()) || group.is_some_and(|gid| gid != meta.gid());
    if owner_differs {
        set_owner_and_mode(file, mode, owner, group)
    } else if meta.mode() & PERMISSION_BITS != mode {
        file.set_permissions(Permissions::from_mode(mode))
    } else {
        Ok(())
    }
}

/// fchown, then fchmod to exactly `mode`.
///
/// The order matters: changing the owner clears setuid/setgid bits, and the explicit
/// fchmod makes the result independent of the umask.
fn set_owner_and_mode(file: &File, mode: u32, owner: Option<u32>, group: Option<u32>) -> io::Result<()> {
    if owner.is_some() || group.is_some() {
        std::os::unix::fs::fchown(file, owner, group)?;
    }
    file.set_permissions(Permissions::from_mode(mode))
}

fn write_synced(mut file: &File, contents: &[u8]) -> io::Result<()> {
    file.write_all(contents)?;
    // fdatasync: the data and the size; the timestamps a full fsync would add are not
    // needed for the file to survive a crash whole.
    file.sync_data()
}

/// For an exit that cannot wait for installs to finish: kills every running `check` (and
/// what it started) and removes every temporary file. The destinations are untouched.
pub fn abort_in_progress() {
    process::cleanup::abort_in_progress();
}

/// Removes leftovers of a crash beside `dests`: our hidden temporary files for them
/// (`.<name>.zkrender.*`) that no process holds. Each temporary file in flight is locked
/// (flock) by the process writing it, and a killed process loses its locks, so a file we
/// can lock is a leftover, while one we cannot is another agent's install in progress.
/// Each directory is listed once, however many of `dests` it holds (a listing per file
/// made a restart with 1,000 files in one directory read a million entries).
/// Returns, per destination that had any, how many were removed.
pub fn sweep_stale_temps<'a>(dests: impl IntoIterator<Item = &'a Path>) -> Vec<(PathBuf, usize)> {
    // Per directory: each prefix and the destination it belongs to.
    let mut dirs: BTreeMap<&Path, HashMap<Vec<u8>, &Path>> = BTreeMap::new();
    for dest in dests {
        if let (Some(dir), Some(name)) = (dest.parent(), dest.file_name()) {
            dirs.entry(dir).or_default().insert(temp_prefix(name), dest);
        }
    }
    let mut removed: BTreeMap<&Path, usize> = BTreeMap::new();
    for (dir, prefixes) in dirs {
        let Ok(entries) = fs::read_dir(dir) else { continue };
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(dest) = temp_owner(name.as_bytes(), &prefixes) else { continue };
            let Ok(file) =
                OpenOptions::new().read(true).custom_flags(nix::libc::O_NOFOLLOW).open(entry.path())
            else {
                continue;
            };
            // Held until the removal is done, so nobody can adopt the file in between.
            let Ok(_lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            if fs::remove_file(entry.path()).is_ok() {
                *removed.entry(dest).or_default() += 1;
            }
        }
    }
    removed.into_iter().map(|(dest, n)| (dest.to_path_buf(), n)).collect()
}

/// The destination whose temporary file `name` is: the one of `prefixes` it starts with.
/// Every prefix ends with the marker, so only the name's bytes up to the end of each
/// marker in it are looked up.
fn temp_owner<'a>(name: &[u8], prefixes: &HashMap<Vec<u8>, &'a Path>) -> Option<&'a Path> {
    if !name.starts_with(b".") {
        return None;
    }
    let marker = TEMP_MARKER.as_bytes();
    (0..name.len().saturating_sub(marker.len() - 1))
        .filter(|&at| name[at..].starts_with(marker))
        .find_map(|at| prefixes.get(&name[..at + marker.len()]).copied())
}

/// `.<name>.zkrender.`: what every temporary file for a destination called `name` starts
/// with (the name cut to 200 bytes, leaving room for the marker and suffix in NAME_MAX).
fn temp_prefix(name: &std::ffi::OsStr) -> Vec<u8> {
    let name = &name.as_bytes()[..name.len().min(200)];
    let mut prefix = Vec::with_capacity(name.len() + TEMP_MARKER.len() + 13);
    prefix.push(b'.');
    prefix.extend_from_slice(name);
    prefix.extend_from_slice(TEMP_MARKER.as_bytes());
    prefix
}

/// A hidden temporary file beside its target, removed on drop unless renamed into place.
struct TempFile {
    path: PathBuf,
    file: Option<File>,
    /// An exclusive flock on the file for as long as it is ours: marks it as in flight, so
    /// that [`sweep_stale_temps`] (in this or another agent) leaves it alone.
    _lock: Option<Flock<File>>,
    /// False once the file has been renamed: there is nothing left to clean up.
    armed: bool,
}

impl TempFile {
    /// Creates `.<name>.zkrender.<random>` in `dir` for the target `target`.
    ///
    /// Why mode 0600 and not the final mode: the file is created owned by us, and its owner
    /// and group may still change. Creating it with the final mode (say 0640) would let
    /// *our* group read it until the fchown. Created 0600, only we can open it until
    /// [`set_owner_and_mode`] has set the real owner and then the exact mode (fchmod, so the
    /// umask does not matter), and the caller does that before writing the first byte.
    /// O_EXCL: never reuse, or follow a symlink at, a path someone else created.
    fn create(target: &Path, dir: &Path) -> io::Result<TempFile> {
        let name = target
            .file_name()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "destination has no file name"))?;
        let prefix = temp_prefix(name);
        let mut attempts = 0;
        loop {
            let suffix: String = rand::rng().sample_iter(Alphanumeric).take(12).map(char::from).collect();
            let mut temp_name = prefix.clone();
            temp_name.extend_from_slice(suffix.as_bytes());
            let path = dir.join(OsString::from_vec(temp_name));
            match OpenOptions::new().write(true).create_new(true).mode(0o600).open(&path) {
                Ok(file) => {
                    process::cleanup::add_temp(&path);
                    // A second open file description carries the lock, so closing `file`
                    // before the check does not release it.
                    let lock = File::open(&path)
                        .ok()
                        .and_then(|f| Flock::lock(f, FlockArg::LockExclusiveNonblock).ok());
                    return Ok(TempFile { path, file: Some(file), _lock: lock, armed: true });
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 8 => attempts += 1,
                Err(e) => return Err(e),
            }
        }
    }

    fn file(&self) -> &File {
        self.file.as_ref().expect("temporary file is open until close()")
    }

    /// Closes our descriptor (the check and rename need only the path).
    fn close(&mut self) {
        self.file = None;
    }

    fn rename_to(mut self, target: &Path) -> io::Result<()> {
        fs::rename(&self.path, target)?;
        self.armed = false;
        process::cleanup::remove_temp(&self.path);
        Ok(())
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        process::cleanup::remove_temp(&self.path);
        if let Err(e) = fs::remove_file(&self.path)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %self.path.display(), error = %e, "could not remove temporary file");
        }
    }
}

/// Atomically replaces `backup` with a copy of `current` (same owner and mode).
///
/// A copy, not a hard link: a link would share the inode, which in-place mode is about to
/// overwrite, and cannot cross a bind mount.
fn keep_backup(current: &File, meta: &Metadata, backup: &Path, dir: &Path) -> io::Result<()> {
    let mut temp = TempFile::create(backup, dir)?;
    set_owner_and_mode(temp.file(), meta.mode() & PERMISSION_BITS, Some(meta.uid()), Some(meta.gid()))?;
    let mut reader = current;
    reader.seek(SeekFrom::Start(0))?;
    io::copy(&mut reader, &mut temp.file())?;
    temp.file().sync_all()?;
    temp.close();
    temp.rename_to(backup)?;
    sync_dir(dir)
}

/// Rewrites an existing file in place. NOT atomic: a reader may see a mix of old and new
/// bytes while this runs, and a crash can leave that mix behind. It exists only for
/// single-file bind mounts, where rename is impossible.
///
/// Mode and owner are set before the first new byte. The file is not opened with O_TRUNC:
/// writing first and truncating after means a reader never sees an empty file.
fn rewrite_in_place(
    dest: &Path,
    contents: &[u8],
    mode: u32,
    owner: Option<u32>,
    group: Option<u32>,
) -> io::Result<()> {
    let file = OpenOptions::new().write(true).custom_flags(nix::libc::O_NOFOLLOW).open(dest)?;
    set_owner_and_mode(&file, mode, owner, group)?;
    (&file).write_all(contents)?;
    file.set_len(contents.len() as u64)?;
    file.sync_all()
}

/// The directory holding `dest` (`.` for a bare file name).
fn parent_dir(dest: &Path) -> &Path {
    match dest.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    }
}

/// `dest` with `suffix` appended to its file name.
fn sibling(dest: &Path, suffix: &str) -> PathBuf {
    let mut name = dest.as_os_str().to_owned();
    name.push(suffix);
    PathBuf::from(name)
}

/// Creates `dir` and any missing ancestors with mode 0755 (exactly, whatever the umask),
/// fsyncing each new directory's parent so the new entries survive a crash.
fn create_dirs(dir: &Path) -> Result<(), (PathBuf, io::Error)> {
    let missing: Vec<&Path> =
        dir.ancestors().take_while(|d| !d.as_os_str().is_empty() && !d.exists()).collect();
    for new in missing.into_iter().rev() {
        match fs::DirBuilder::new().mode(0o755).create(new) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && new.is_dir() => continue,
            Err(e) => return Err((new.to_owned(), e)),
        }
        let fixed =
            fs::set_permissions(new, Permissions::from_mode(0o755)).and_then(|()| sync_dir(parent_dir(new)));
        fixed.map_err(|e| (new.to_owned(), e))?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Fsyncs `dir` after a rename or unlink in it, so the change survives a crash (the file's
/// own fsync does not cover its directory entry).
///
/// A failure here is logged, not returned: the change is already visible to the
/// application, so reporting "old file kept" would be false and would suppress the reload.
fn sync_dir_after_commit(dest: &Path, dir: &Path) {
    if let Err(e) = sync_dir(dir) {
        warn!(dest = %dest.display(), dir = %dir.display(), error = %e, "could not fsync directory; change may not survive a crash");
    }
}

/// Runs `check` on the staged file `temp`; Ok only if it exits 0 within `timeout`.
fn run_check(dest: &Path, argv: &[String], temp: &Path, timeout: Duration) -> Result<(), WriteError> {
    let failed = |reason, output: String, source| WriteError::CheckFailed {
        dest: dest.to_owned(),
        command: Argv(argv).to_string(),
        reason,
        output,
        source,
    };
    let job = Job {
        argv: argv.to_vec(),
        file: Some(temp.to_owned()),
        timeout,
        capture: Capture::Combined,
        keep: CHECK_OUTPUT_LIMIT,
        kill_leftovers: true,
    };
    match process::run_blocking(&job) {
        Ok(Finished { ending: Ending::Exited(status), .. }) if status.success() => Ok(()),
        Ok(Finished { ending: Ending::Exited(status), output }) => {
            Err(failed(CheckFailure::Status(status), output, None))
        }
        Ok(Finished { ending: Ending::TimedOut, output }) => {
            Err(failed(CheckFailure::TimedOut(timeout), output, None))
        }
        Err(RunError::Empty) => Err(failed(
            CheckFailure::NotRun,
            String::new(),
            Some(io::Error::new(io::ErrorKind::InvalidInput, "the command is empty")),
        )),
        Err(RunError::Start(source)) => Err(failed(CheckFailure::NotRun, String::new(), Some(source))),
        Err(RunError::Wait { source, output }) => Err(failed(CheckFailure::NotRun, output, Some(source))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{FileSource, OnDelete};
    use crate::model::ZnodePath;
    use std::ffi::OsStr;
    use std::process::{Command, Stdio};
    use std::time::Instant;
    use tempfile::TempDir;

    /// A raw file at `dest` with every option at its default (also `sink::bundle`'s tests').
    pub(super) fn spec(dest: &Path) -> FileSpec {
        FileSpec {
            rollback: false,
            allow_env: Vec::new(),
            dest: dest.to_owned(),
            source: FileSource::Raw { znode: ZnodePath::parse("/app/conf").unwrap() },
            mode: 0o644,
            owner: None,
            group: None,
            on_delete: OnDelete::Keep,
            check: None,
            check_timeout: Duration::from_secs(10),
            backup: false,
            install: InstallMode::Atomic,
            allow_empty: false,
            reload: None,
        }
    }

    fn setup() -> (TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("app.conf");
        (dir, dest)
    }

    fn argv(args: &[&str]) -> Option<Vec<String>> {
        Some(args.iter().map(|a| a.to_string()).collect())
    }

    fn mode_of(path: &Path) -> u32 {
        fs::metadata(path).unwrap().mode() & PERMISSION_BITS
    }

    fn ino_of(path: &Path) -> u64 {
        fs::metadata(path).unwrap().ino()
    }

    /// Fails if any of our temporary files is left anywhere under `dir`.
    fn assert_no_temp_files(dir: &Path) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            assert!(!name.to_string_lossy().contains(TEMP_MARKER), "leftover temporary file {name:?}");
            if entry.file_type().unwrap().is_dir() {
                assert_no_temp_files(&entry.path());
            }
        }
    }

    fn is_root() -> bool {
        nix::unistd::geteuid().is_root()
    }

    #[test]
    fn new_file_gets_exact_mode() {
        let (dir, dest) = setup();
        for mode in [0o640, 0o600, 0o755] {
            let s = FileSpec { mode, ..spec(&dest.with_extension(format!("{mode:o}"))) };
            assert_eq!(install(&s, b"x=1\n").unwrap(), WriteOutcome::Written);
            assert_eq!(mode_of(&s.dest), mode, "mode {mode:o}");
            assert_eq!(fs::read(&s.dest).unwrap(), b"x=1\n");
        }
        assert_no_temp_files(dir.path());
    }

    /// Runs only as the child of `mode_is_exact_under_a_strict_umask`, in its own process,
    /// because the umask is process-wide and would leak into tests running in parallel.
    #[test]
    fn umask_child() {
        let Some(dir) = std::env::var_os("ZKRENDER_SINK_UMASK_DIR") else { return };
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
        for mode in [0o640, 0o600, 0o755] {
            let dest = Path::new(&dir).join("a/b").join(format!("{mode:o}"));
            install(&FileSpec { mode, ..spec(&dest) }, b"x").unwrap();
        }
    }

    #[test]
    fn mode_is_exact_under_a_strict_umask() {
        let (dir, _) = setup();
        let status = Command::new(std::env::current_exe().unwrap())
            .args(["sink::tests::umask_child", "--exact", "--test-threads=1", "--quiet"])
            .env("ZKRENDER_SINK_UMASK_DIR", dir.path())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
        for mode in [0o640, 0o600, 0o755] {
            assert_eq!(mode_of(&dir.path().join("a/b").join(format!("{mode:o}"))), mode, "mode {mode:o}");
        }
        assert_eq!(mode_of(&dir.path().join("a")), 0o755);
        assert_eq!(mode_of(&dir.path().join("a/b")), 0o755);
    }

    #[test]
    fn identical_bytes_are_unchanged_and_untouched() {
        let (dir, dest) = setup();
        let s = spec(&dest);
        install(&s, b"same").unwrap();
        let before = fs::metadata(&dest).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(install(&s, b"same").unwrap(), WriteOutcome::Unchanged);
        let after = fs::metadata(&dest).unwrap();
        assert_eq!(
            (before.ino(), before.mtime(), before.mtime_nsec()),
            (after.ino(), after.mtime(), after.mtime_nsec())
        );
        assert_no_temp_files(dir.path());
    }

    #[test]
    fn identical_bytes_with_other_mode_fix_mode_in_place() {
        let (_dir, dest) = setup();
        install(&FileSpec { mode: 0o644, ..spec(&dest) }, b"same").unwrap();
        let ino = ino_of(&dest);
        assert_eq!(
            install(&FileSpec { mode: 0o600, ..spec(&dest) }, b"same").unwrap(),
            WriteOutcome::Unchanged
        );
        assert_eq!(mode_of(&dest), 0o600);
        assert_eq!(ino_of(&dest), ino);
    }

    #[test]
    fn owner_and_group_are_set_and_fixed_in_place() {
        if !is_root() {
            eprintln!("skipping: changing owners needs root");
            return;
        }
        let (_dir, dest) = setup();
        let s = FileSpec { owner: Some(1234), group: Some(5678), mode: 0o640, ..spec(&dest) };
        install(&s, b"secret").unwrap();
        let meta = fs::metadata(&dest).unwrap();
        assert_eq!((meta.uid(), meta.gid(), meta.mode() & PERMISSION_BITS), (1234, 5678, 0o640));

        let s = FileSpec { owner: Some(4321), ..s };
        assert_eq!(install(&s, b"secret").unwrap(), WriteOutcome::Unchanged);
        let after = fs::metadata(&dest).unwrap();
        assert_eq!((after.uid(), after.gid(), after.mode() & PERMISSION_BITS), (4321, 5678, 0o640));
        assert_eq!(after.ino(), meta.ino());
    }

    #[test]
    fn changed_bytes_replace_the_file_by_rename() {
        let (dir, dest) = setup();
        let s = spec(&dest);
        install(&s, b"one").unwrap();
        let ino = ino_of(&dest);
        assert_eq!(install(&s, b"two").unwrap(), WriteOutcome::Written);
        assert_eq!(fs::read(&dest).unwrap(), b"two");
        assert_ne!(ino_of(&dest), ino);
        assert_no_temp_files(dir.path());
    }

    #[test]
    fn missing_parent_directories_are_created() {
        let (dir, _) = setup();
        let dest = dir.path().join("etc/app/conf.d/app.conf");
        install(&spec(&dest), b"x").unwrap();
        assert_eq!(fs::read(&dest).unwrap(), b"x");
        for d in ["etc", "etc/app", "etc/app/conf.d"] {
            assert_eq!(mode_of(&dir.path().join(d)), 0o755, "{d}");
        }
        assert_no_temp_files(dir.path());
    }

    #[test]
    fn binary_contents_round_trip() {
        let (_dir, dest) = setup();
        let bytes: Vec<u8> = (0..=255u8).chain([0xff, 0xfe, 0x00, 0xc3]).collect();
        install(&spec(&dest), &bytes).unwrap();
        assert_eq!(fs::read(&dest).unwrap(), bytes);
        assert_eq!(install(&spec(&dest), &bytes).unwrap(), WriteOutcome::Unchanged);
    }

    #[test]
    fn passing_check_installs() {
        let (dir, dest) = setup();
        let s =
            FileSpec { check: argv(&["sh", "-c", r#"grep -q good "$1""#, "sh", "{file}"]), ..spec(&dest) };
        assert_eq!(install(&s, b"good\n").unwrap(), WriteOutcome::Written);
        assert_eq!(fs::read(&dest).unwrap(), b"good\n");
        assert_no_temp_files(dir.path());
    }

    #[test]
    fn failing_check_keeps_the_old_file() {
        let (dir, dest) = setup();
        fs::write(&dest, b"old good\n").unwrap();
        let script = r#"grep -q good "$1" || { echo "line 1: no good in $1" >&2; exit 3; }"#;
        let s = FileSpec { check: argv(&["sh", "-c", script, "sh", "{file}"]), ..spec(&dest) };
        let err = install(&s, b"bad\n").unwrap_err();
        assert_eq!(err.kind(), "check_failed");
        let WriteError::CheckFailed { reason: CheckFailure::Status(status), output, .. } = &err else {
            panic!("unexpected error: {err:?}");
        };
        assert_eq!(status.code(), Some(3));
        assert!(output.contains("line 1: no good in"), "{output}");
        let message = err.to_string();
        assert!(message.starts_with(&format!("writing {}: check `sh -c", dest.display())), "{message}");
        assert!(message.contains("failed (exit status: 3); output:\nline 1: no good"), "{message}");
        assert_eq!(fs::read(&dest).unwrap(), b"old good\n");
        assert_no_temp_files(dir.path());
    }

    #[test]
    fn check_placeholder_inside_a_longer_argument() {
        let (dir, dest) = setup();
        let script = r#"case "$1" in --x=*) grep -q good "${1#--x=}";; *) exit 2;; esac"#;
        let s = FileSpec { check: argv(&["sh", "-c", script, "sh", "--x={file}"]), ..spec(&dest) };
        assert_eq!(install(&s, b"good").unwrap(), WriteOutcome::Written);
        assert_eq!(install(&s, b"bad").unwrap_err().kind(), "check_failed");
        assert_eq!(fs::read(&dest).unwrap(), b"good");
        assert_no_temp_files(dir.path());
    }

    #[test]
    fn check_sees_the_final_mode_and_owner() {
        let (_dir, dest) = setup();
        let (owner, expect) = if is_root() { (Some(1234), "640:1234") } else { (None, "640:") };
        let script =
            format!(r#"s=$(stat -c %a:%u "$1"); case "$s" in {expect}*) ;; *) echo "$s"; exit 1;; esac"#);
        let s = FileSpec {
            mode: 0o640,
            owner,
            check: argv(&["sh", "-c", &script, "sh", "{file}"]),
            ..spec(&dest)
        };
        install(&s, b"secret").unwrap();
    }

    #[test]
    fn check_that_runs_too_long_is_killed() {
        let (dir, dest) = setup();
        fs::write(&dest, b"old").unwrap();
        let s = FileSpec {
            check: argv(&["sh", "-c", "sleep 30; true", "sh", "{file}"]),
            check_timeout: Duration::from_millis(200),
            ..spec(&dest)
        };
        let started = Instant::now();
        let err = install(&s, b"new").unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        assert!(matches!(err, WriteError::CheckFailed { reason: CheckFailure::TimedOut(_), .. }), "{err:?}");
        assert!(err.to_string().contains("timed out after 200ms"), "{err}");
        assert_eq!(fs::read(&dest).unwrap(), b"old");
        assert_no_temp_files(dir.path());
    }

    #[test]
    fn check_leaving_a_background_process_does_not_hang() {
        let (_dir, dest) = setup();
        let s = FileSpec { check: argv(&["sh", "-c", "sleep 30 & echo bad; exit 1"]), ..spec(&dest) };
        let started = Instant::now();
        let err = install(&s, b"new").unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());
        let WriteError::CheckFailed { output, .. } = &err else { panic!("{err:?}") };
        assert_eq!(output, "bad");
    }

    #[test]
    fn check_output_keeps_only_the_tail() {
        let (_dir, dest) = setup();
        let script = "i=0; while [ $i -lt 2000 ]; do echo line $i; i=$((i+1)); done; exit 1";
        let s = FileSpec { check: argv(&["sh", "-c", script]), ..spec(&dest) };
        let err = install(&s, b"new").unwrap_err();
        let WriteError::CheckFailed { output, .. } = &err else { panic!("{err:?}") };
        assert!(output.starts_with("..."), "{output}");
        assert!(output.ends_with("line 1999"), "{output}");
        assert!(output.len() <= CHECK_OUTPUT_LIMIT + 3);
    }

    #[test]
    fn missing_check_program_is_a_check_failure() {
        let (dir, dest) = setup();
        let s = FileSpec { check: argv(&["/nonexistent/zkrender-check", "{file}"]), ..spec(&dest) };
        let err = install(&s, b"new").unwrap_err();
        assert_eq!(err.kind(), "check_failed");
        assert!(matches!(err, WriteError::CheckFailed { reason: CheckFailure::NotRun, .. }));
        let source = std::error::Error::source(&err).unwrap().downcast_ref::<io::Error>().unwrap();
        assert_eq!(source.kind(), io::ErrorKind::NotFound);
        assert!(
            err.to_string().ends_with("check `/nonexistent/zkrender-check {file}` could not be run"),
            "{err}"
        );
        assert!(!dest.exists());
        assert_no_temp_files(dir.path());
    }

    #[test]
    fn backup_keeps_the_previous_version() {
        let (dir, dest) = setup();
        let backup = dir.path().join("app.conf.bak");
        let s = FileSpec { backup: true, mode: 0o600, ..spec(&dest) };
        install(&s, b"v1").unwrap();
        assert!(!backup.exists(), "no previous version, no backup");
        install(&s, b"v2").unwrap();
        assert_eq!(fs::read(&backup).unwrap(), b"v1");
        assert_eq!(mode_of(&backup), 0o600);
        install(&s, b"v3").unwrap();
        assert_eq!(fs::read(&backup).unwrap(), b"v2");
        assert_eq!(fs::read(&dest).unwrap(), b"v3");
        assert_no_temp_files(dir.path());
    }

    #[test]
    fn rejected_contents_leave_the_backup_alone() {
        let (dir, dest) = setup();
        let backup = dir.path().join("app.conf.bak");
        fs::write(&dest, b"v1").unwrap();
        let s = FileSpec { backup: true, check: argv(&["false"]), ..spec(&dest) };
        install(&s, b"v2").unwrap_err();
        assert!(!backup.exists());
        assert_eq!(fs::read(&dest).unwrap(), b"v1");
    }

    #[test]
    fn empty_contents_over_a_non_empty_file_are_refused() {
        let (dir, dest) = setup();
        fs::write(&dest, b"keep me").unwrap();
        let err = install(&spec(&dest), b"").unwrap_err();
        assert_eq!(err.kind(), "empty_refused");
        assert!(err.to_string().starts_with(&format!("writing {}: refusing", dest.display())), "{err}");
        assert_eq!(fs::read(&dest).unwrap(), b"keep me");
        assert_no_temp_files(dir.path());

        let allowed = FileSpec { allow_empty: true, ..spec(&dest) };
        assert_eq!(install(&allowed, b"").unwrap(), WriteOutcome::Written);
        assert_eq!(fs::read(&dest).unwrap(), b"");
        assert_eq!(install(&spec(&dest), b"").unwrap(), WriteOutcome::Unchanged);
    }

    #[test]
    fn empty_contents_over_a_missing_file_are_written() {
        let (_dir, dest) = setup();
        assert_eq!(install(&spec(&dest), b"").unwrap(), WriteOutcome::Written);
        assert_eq!(fs::read(&dest).unwrap(), b"");
    }

    #[test]
    fn in_place_keeps_the_inode() {
        let (dir, dest) = setup();
        fs::write(&dest, b"a much longer old version\n").unwrap();
        let ino = ino_of(&dest);
        let s = FileSpec { install: InstallMode::InPlace, mode: 0o600, backup: true, ..spec(&dest) };
        assert_eq!(install(&s, b"new\n").unwrap(), WriteOutcome::Written);
        assert_eq!(fs::read(&dest).unwrap(), b"new\n");
        assert_eq!(ino_of(&dest), ino);
        assert_eq!(mode_of(&dest), 0o600);
        assert_eq!(fs::read(dir.path().join("app.conf.bak")).unwrap(), b"a much longer old version\n");
        assert_no_temp_files(dir.path());
    }

    #[test]
    fn in_place_creates_a_missing_file() {
        let (dir, dest) = setup();
        let s = FileSpec { install: InstallMode::InPlace, ..spec(&dest) };
        assert_eq!(install(&s, b"new").unwrap(), WriteOutcome::Written);
        assert_eq!(fs::read(&dest).unwrap(), b"new");
        assert_no_temp_files(dir.path());
    }

    #[test]
    fn symlink_at_dest_is_replaced_not_followed() {
        let (dir, dest) = setup();
        let target = dir.path().join("target");
        fs::write(&target, b"target").unwrap();
        std::os::unix::fs::symlink(&target, &dest).unwrap();
        install(&spec(&dest), b"new").unwrap();
        assert!(fs::symlink_metadata(&dest).unwrap().is_file());
        assert_eq!(fs::read(&dest).unwrap(), b"new");
        assert_eq!(fs::read(&target).unwrap(), b"target");
    }

    #[test]
    fn failed_rename_leaves_no_temp_file() {
        let (dir, dest) = setup();
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("inside"), b"x").unwrap();
        let err = install(&spec(&dest), b"new").unwrap_err();
        assert!(matches!(err, WriteError::Rename { .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("writing {}: moving temporary file into place", dest.display()));
        assert_eq!(err.kind(), "io");
        assert_no_temp_files(dir.path());
    }

    #[test]
    fn remove_reports_whether_a_file_was_removed() {
        let (dir, dest) = setup();
        fs::write(&dest, b"x").unwrap();
        assert!(remove(&spec(&dest)).unwrap());
        assert!(!dest.exists());
        assert!(!remove(&spec(&dest)).unwrap());
        assert!(dir.path().is_dir());
    }

    /// Unmounts on drop, so a failing assertion does not leave the mount behind.
    struct Unmount(PathBuf);

    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
        }
    }

    #[test]
    fn single_file_bind_mount_needs_in_place() {
        let (dir, dest) = setup();
        let source = dir.path().join("mounted");
        fs::write(&source, b"old").unwrap();
        fs::write(&dest, b"old").unwrap();
        let mounted = Command::new("mount").arg("--bind").arg(&source).arg(&dest).output();
        match &mounted {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                eprintln!("skipping: mount --bind failed: {}", String::from_utf8_lossy(&out.stderr).trim());
                return;
            }
            Err(e) => {
                eprintln!("skipping: cannot run mount: {e}");
                return;
            }
        }
        let _unmount = Unmount(dest.clone());

        let err = install(&spec(&dest), b"new").unwrap_err();
        assert_eq!(err.kind(), "bind_mount", "{err:?}");
        assert!(err.to_string().contains("install = \"in-place\""), "{err}");
        assert_eq!(fs::read(&dest).unwrap(), b"old");
        assert_no_temp_files(dir.path());

        let in_place = FileSpec { install: InstallMode::InPlace, ..spec(&dest) };
        assert_eq!(install(&in_place, b"new").unwrap(), WriteOutcome::Written);
        assert_eq!(fs::read(&dest).unwrap(), b"new");
        assert_eq!(fs::read(&source).unwrap(), b"new");
        assert_no_temp_files(dir.path());
    }

    #[test]
    fn kind_labels_follow_the_io_cause() {
        let dest = PathBuf::from("/etc/app/app.conf");
        let rename =
            |errno| WriteError::Rename { dest: dest.clone(), source: io::Error::from_raw_os_error(errno) };
        assert_eq!(rename(nix::libc::EACCES).kind(), "permission");
        assert_eq!(rename(nix::libc::EPERM).kind(), "permission");
        assert_eq!(rename(nix::libc::ENOSPC).kind(), "no_space");
        assert_eq!(rename(nix::libc::EDQUOT).kind(), "no_space");
        assert_eq!(rename(nix::libc::EIO).kind(), "io");
        assert_eq!(
            rename(nix::libc::EIO).to_string(),
            "writing /etc/app/app.conf: moving temporary file into place"
        );
        assert_eq!(rename(nix::libc::EIO).dest(), dest);
    }

    #[test]
    fn temp_file_is_hidden_beside_dest() {
        let (dir, dest) = setup();
        let temp = TempFile::create(&dest, dir.path()).unwrap();
        let name = temp.path.file_name().unwrap().to_string_lossy().into_owned();
        assert!(
            name.starts_with(".app.conf.zkrender.") && name.len() > ".app.conf.zkrender.".len(),
            "{name}"
        );
        assert_eq!(temp.path.parent(), Some(dir.path()));
        drop(temp);
        assert_no_temp_files(dir.path());
    }

    #[test]
    fn sweep_removes_unheld_leftovers_of_configured_files_only() {
        let (dir, dest) = setup();
        let other = dir.path().join("other.conf");
        let leftover = |name: &str, suffix: &str| {
            let path = dir.path().join(format!(".{name}{TEMP_MARKER}{suffix}"));
            fs::write(&path, b"half").unwrap();
            path
        };
        // Two crashes' leftovers for app.conf, one for other.conf, and one in flight (held).
        let stale =
            [leftover("app.conf", "aaaaaaaaaaaa"), leftover("app.conf", "b"), leftover("other.conf", "c")];
        let held = TempFile::create(&dest, dir.path()).unwrap();
        // Not ours to sweep: a file nobody configured, and one whose name only contains ours.
        let unconfigured = leftover("third.conf", "d");
        let lookalike = dir.path().join(format!("x.app.conf{TEMP_MARKER}e"));
        fs::write(&lookalike, b"x").unwrap();
        fs::write(&dest, b"current").unwrap();

        let removed = sweep_stale_temps([dest.as_path(), other.as_path()]);
        assert_eq!(removed, vec![(dest.clone(), 2), (other.clone(), 1)]);
        for path in &stale {
            assert!(!path.exists(), "{path:?} was left");
        }
        for path in [&held.path, &unconfigured, &lookalike, &dest] {
            assert!(path.exists(), "{path:?} was removed");
        }
        drop(held);
        assert!(sweep_stale_temps([dest.as_path()]).is_empty(), "nothing left to sweep");
    }

    #[test]
    fn a_temp_file_is_told_apart_from_one_whose_name_holds_the_marker() {
        let a = Path::new("/d/a");
        let odd = Path::new("/d/a.zkrender.x");
        let prefixes: HashMap<Vec<u8>, &Path> =
            [(temp_prefix(OsStr::new("a")), a), (temp_prefix(OsStr::new("a.zkrender.x")), odd)].into();
        assert_eq!(temp_owner(b".a.zkrender.123", &prefixes), Some(a));
        // Starts with both prefixes (starts_with semantics): either owner is right, it is ours.
        assert!(temp_owner(b".a.zkrender.x.zkrender.123", &prefixes).is_some());
        assert_eq!(temp_owner(b".b.zkrender.123", &prefixes), None);
        assert_eq!(temp_owner(b"a.zkrender.123", &prefixes), None);
        assert_eq!(temp_owner(b".a.zkrende", &prefixes), None);
        assert_eq!(temp_owner(b".", &prefixes), None);
    }
}
