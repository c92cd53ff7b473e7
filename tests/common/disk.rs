//! The destination's file system made to fail, for root: a directory made unwritable
//! ([`Unwritable`]: `chattr +i`, else a read-only bind mount), a small file system to fill
//! ([`small_fs`], [`fill`]). Each undoes itself on drop. Tests that cannot get the means
//! (not root, no tmpfs) say why and skip.

use std::fs::{self, File};
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

/// Runs `program args...`; the error says what failed and why.
pub fn run(program: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(program).args(args).output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("cannot run {program}: {e}")),
    }
}

/// Whether a new file can be created in `dir` (the probe is removed again).
pub fn can_create_in(dir: &Path) -> bool {
    let probe = dir.join(".zkr-probe");
    match File::create(&probe) {
        Ok(_) => {
            let _ = fs::remove_file(&probe);
            true
        }
        Err(_) => false,
    }
}

/// A mount on `path`, unmounted on drop.
pub struct Mounted {
    path: PathBuf,
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let path = self.path.to_str().unwrap();
        if let Err(e) = run("umount", &[path]) {
            eprintln!("warning: {e}; unmounting lazily");
            let _ = run("umount", &["-l", path]);
        }
    }
}

/// The immutable attribute on a directory, cleared on drop.
pub struct Immutable {
    path: PathBuf,
}

impl Drop for Immutable {
    fn drop(&mut self) {
        if let Err(e) = run("chattr", &["-i", self.path.to_str().unwrap()]) {
            eprintln!("warning: {e}");
        }
    }
}

/// A directory made unwritable for root; writable again on drop.
pub enum Unwritable {
    /// `chattr +i`: creating, renaming or removing entries fails with EPERM.
    Immutable { _guard: Immutable },
    /// The directory bind-mounted read-only onto itself: EROFS.
    ReadOnly { _guard: Mounted },
}

impl Unwritable {
    /// The `cause` zkrender should log for it (`WriteError::kind`).
    pub fn cause(&self) -> &'static str {
        match self {
            Unwritable::Immutable { .. } => "permission",
            Unwritable::ReadOnly { .. } => "io",
        }
    }

    /// Makes `dir` unwritable: `chattr +i` where the file system supports it, else a
    /// read-only bind mount. The reasons when neither works.
    pub fn make(dir: &Path) -> Result<Unwritable, String> {
        let path = dir.to_str().unwrap();
        let mut reasons = Vec::new();
        match run("chattr", &["+i", path]) {
            Ok(()) => {
                let guard = Immutable { path: dir.to_path_buf() };
                if !can_create_in(dir) {
                    return Ok(Unwritable::Immutable { _guard: guard });
                }
                reasons.push("chattr +i did not stop root from creating files".to_owned());
            }
            Err(e) => reasons.push(e),
        }
        eprintln!("chattr +i unusable ({}); trying a read-only bind mount", reasons.join("; "));
        match run("mount", &["--bind", path, path]) {
            Ok(()) => {
                let guard = Mounted { path: dir.to_path_buf() };
                match run("mount", &["-o", "remount,bind,ro", path]) {
                    Ok(()) if !can_create_in(dir) => return Ok(Unwritable::ReadOnly { _guard: guard }),
                    Ok(()) => reasons.push("the read-only bind mount is still writable".to_owned()),
                    Err(e) => reasons.push(e),
                }
            }
            Err(e) => reasons.push(e),
        }
        Err(reasons.join("; "))
    }
}

/// Mounts a small file system on `dir`: a 64 KiB tmpfs, else a 1 MiB ext4 image on a loop
/// device (`image` is the image file). The reasons when neither works.
pub fn small_fs(dir: &Path, image: &Path) -> Result<(Mounted, &'static str), String> {
    let path = dir.to_str().unwrap();
    let tmpfs = match run("mount", &["-t", "tmpfs", "-o", "size=64k,mode=0755", "tmpfs", path]) {
        Ok(()) => return Ok((Mounted { path: dir.to_path_buf() }, "tmpfs of 64 KiB")),
        Err(e) => e,
    };
    eprintln!("cannot mount a tmpfs ({tmpfs}); trying a loop-mounted ext4 image");
    let img = image.to_str().unwrap();
    let ext4 = run("truncate", &["-s", "1M", img])
        .and_then(|()| run("mkfs.ext4", &["-q", "-F", "-m", "0", img]))
        .and_then(|()| run("mount", &["-o", "loop", img, path]));
    match ext4 {
        Ok(()) => Ok((Mounted { path: dir.to_path_buf() }, "loop-mounted ext4 of 1 MiB")),
        Err(e) => Err(format!("tmpfs: {tmpfs}; ext4 on a loop device: {e}")),
    }
}

/// [`Unwritable::make`], or `None` after saying why the test skips.
pub fn unwritable_or_skip(dir: &Path) -> Option<Unwritable> {
    match Unwritable::make(dir) {
        Ok(guard) => Some(guard),
        Err(reason) => {
            eprintln!("SKIPPED: cannot make a directory unwritable for root: {reason}");
            None
        }
    }
}

/// [`small_fs`] on `dir` (`image` for the ext4 fallback), saying what it
/// mounted; `None` after saying why the test skips.
pub fn small_fs_or_skip(dir: &Path, image: &Path) -> Option<(Mounted, &'static str)> {
    match small_fs(dir, image) {
        Ok((mounted, what)) => {
            eprintln!("destination on a {what}");
            Some((mounted, what))
        }
        Err(reason) => {
            eprintln!("SKIPPED: cannot mount a small file system: {reason}");
            None
        }
    }
}

/// Fills the file system of `path` with one file, until it refuses to take more.
pub fn fill(path: &Path) -> u64 {
    let mut file = File::create(path).unwrap_or_else(|e| panic!("cannot create {}: {e}", path.display()));
    let mut total = 0u64;
    for chunk in [vec![0x5au8; 4096], vec![0x5au8; 1]] {
        loop {
            match file.write(&chunk) {
                Ok(0) => break,
                Ok(n) => total += n as u64,
                Err(e) if e.kind() == ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    let _ = file.sync_all();
    total
}
