//! The sink step of a cycle: installs or removes the files a plan names, on blocking
//! threads, a few at a time, and puts `rollback` files back when their reload failed.
//! Everything on disk goes through [`crate::sink`]; this module only schedules it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::task::JoinSet;
use tracing::{error, info, warn};

use super::core::{Action, Core};
use crate::config::{BundleSpec, FileSpec, TargetId};
use crate::notify::queue::{BundleRollback, Rollback};
use crate::sink::bundle::BundleOutcome;
use crate::sink::{self, WriteError, WriteOutcome};
use crate::status::{Failure, FailureKind};

/// What installing one file did.
pub struct Installed {
    pub id: TargetId,
    /// The file on disk changed.
    pub changed: bool,
    /// The error's cause and message (`report`ed), the same for every file of a bundle.
    pub result: Result<(), Failure>,
    /// For `rollback` files that changed: what to put back if the reload fails.
    pub rollback: Option<Rollback>,
}

/// Installs or removes files on blocking threads, `parallelism` at a time. Returns, per
/// action in target order, whether the file on disk changed, and the error if any. The
/// directories of changed files are synced once, before this returns (and before any
/// reload hears of them).
///
/// Each blocking thread takes the next action from one shared queue until it is empty, so
/// a cycle costs one hand-off per thread, not one per file; a cycle of one file (the usual
/// change) is installed and its directory synced in a single hand-off.
pub async fn carry_out(core: &Core, actions: Vec<Action>, parallelism: usize) -> Vec<Installed> {
    let lanes = parallelism.clamp(1, actions.len().max(1));
    let queue: VecDeque<Job> = actions
        .into_iter()
        .map(|action| match action {
            Action::Install { target, contents } => {
                Job::Install { id: target, spec: core.targets()[target].spec.clone(), contents }
            }
            Action::Remove { target } => {
                Job::Remove { id: target, spec: core.targets()[target].spec.clone() }
            }
            Action::InstallBundle { bundle, files } => {
                let files =
                    files.into_iter().map(|(id, c)| (id, core.targets()[id].spec.clone(), c)).collect();
                Job::Bundle { spec: core.bundles()[bundle].spec.clone(), files }
            }
        })
        .collect();
    let queue = Arc::new(Mutex::new(queue));
    let mut jobs = JoinSet::new();
    for _ in 0..lanes {
        let queue = Arc::clone(&queue);
        jobs.spawn_blocking(move || {
            let mut done = Vec::new();
            loop {
                let next = queue.lock().unwrap_or_else(PoisonError::into_inner).pop_front();
                let Some(job) = next else { break };
                done.extend(job.run());
            }
            if lanes == 1 {
                sync_written(&done);
            }
            done
        });
    }
    let mut results = Vec::new();
    while let Some(r) = jobs.join_next().await {
        results.extend(r.expect("bug: install job panicked"));
    }
    results.sort_by_key(|r| r.0.id);
    if lanes > 1 {
        // One fsync per directory for the whole cycle, before any reload is told about it.
        results = tokio::task::spawn_blocking(move || {
            sync_written(&results);
            results
        })
        .await
        .expect("bug: directory sync panicked");
    }
    results.into_iter().map(|(installed, _)| installed).collect()
}

/// Syncs, once each, the directories of the files `done` changed (a bundle syncs its own:
/// those carry no path).
fn sync_written(done: &[(Installed, Option<PathBuf>)]) {
    let written = done.iter().filter(|(r, _)| r.changed).filter_map(|(_, dest)| dest.as_deref());
    sink::sync_dirs(written);
}

fn failure(e: &WriteError) -> Failure {
    Failure { kind: e.kind(), message: crate::error::report(e) }
}

/// One action, owning what it needs on a blocking thread.
enum Job {
    Install { id: TargetId, spec: FileSpec, contents: Vec<u8> },
    Remove { id: TargetId, spec: FileSpec },
    Bundle { spec: BundleSpec, files: Vec<(TargetId, FileSpec, Vec<u8>)> },
}

impl Job {
    /// Carries it out: one [`Installed`] per file (a bundle's files share its result), each
    /// with the path whose directory the cycle syncs (none for a bundle's).
    fn run(self) -> Vec<(Installed, Option<PathBuf>)> {
        match self {
            Job::Install { id, spec, contents } => {
                // Keep what is there now, to put it back if the application rejects the new file.
                let previous = spec.rollback.then(|| std::fs::read(&spec.dest).ok());
                let r = sink::install_with(&spec, &contents, sink::DirSync::Deferred);
                if let Ok(WriteOutcome::Written) = r {
                    info!(dest = %spec.dest.display(), bytes = contents.len(), "file written");
                }
                let changed = matches!(r, Ok(WriteOutcome::Written));
                let rollback = if changed {
                    previous.map(|previous| Rollback { id, previous, installed: contents, bundle: None })
                } else {
                    None
                };
                let installed =
                    Installed { id, changed, result: r.map(|_| ()).map_err(|e| failure(&e)), rollback };
                vec![(installed, Some(spec.dest))]
            }
            Job::Remove { id, spec } => {
                let r = sink::remove(&spec);
                if let Ok(true) = r {
                    warn!(dest = %spec.dest.display(), "znode deleted; file removed (on_delete = \"remove\")");
                }
                let changed = matches!(r, Ok(true));
                let installed =
                    Installed { id, changed, result: r.map(|_| ()).map_err(|e| failure(&e)), rollback: None };
                vec![(installed, Some(spec.dest))]
            }
            Job::Bundle { spec, files } => {
                let refs: Vec<(&FileSpec, &[u8])> = files.iter().map(|(_, f, c)| (f, c.as_slice())).collect();
                let r = sink::bundle::install(&spec, &refs);
                let ids = files.iter().map(|(id, ..)| *id);
                let installed: Vec<Installed> = match r {
                    Ok(BundleOutcome::Unchanged) => ids
                        .map(|id| Installed { id, changed: false, result: Ok(()), rollback: None })
                        .collect(),
                    Ok(BundleOutcome::Swapped { version, previous }) => {
                        let paths: Vec<String> =
                            files.iter().map(|(_, f, _)| spec.path_of(f).display().to_string()).collect();
                        info!(dir = %spec.dir.display(), version = %version, files = %paths.join(", "), "bundle swapped to a new version");
                        let first = files.first().map(|(id, ..)| *id);
                        let rollback = spec.rollback.then(|| BundleRollback {
                            installed: version,
                            previous,
                            contents: files.iter().map(|(.., c)| c.clone()).collect(),
                        });
                        ids.map(|id| Installed {
                            id,
                            changed: true,
                            result: Ok(()),
                            rollback: rollback.clone().filter(|_| Some(id) == first).map(|bundle| Rollback {
                                id,
                                previous: None,
                                installed: Vec::new(),
                                bundle: Some(bundle),
                            }),
                        })
                        .collect()
                    }
                    Err(e) => {
                        if e.kind() == FailureKind::CheckFailed {
                            warn!(dir = %spec.dir.display(), "bundle check failed; ..data untouched, the current version stays");
                        }
                        let message = failure(&e).message;
                        ids.map(|id| Installed {
                            id,
                            changed: false,
                            result: Err(Failure { kind: e.kind(), message: message.clone() }),
                            rollback: None,
                        })
                        .collect()
                    }
                };
                installed.into_iter().map(|i| (i, None)).collect()
            }
        }
    }
}

/// The reload after installing `rollback` files failed with `error`: put each previous file
/// back and keep the rejected contents out until the rendering changes. The caller then runs
/// the reload again, so the application returns to the configuration it accepted.
pub async fn roll_back(core: &mut Core, rollback: Vec<Rollback>, error: &str) {
    for Rollback { id, previous, installed, bundle } in rollback {
        if id >= core.targets().len() {
            // Installed under a configuration that had more files (config reload since).
            warn!(error = %error, "reload failed; the file it was for is no longer configured, not rolled back");
            continue;
        }
        if let Some(swap) = bundle {
            roll_back_bundle(core, id, swap, error).await;
            continue;
        }
        let file = core.targets()[id].spec.clone();
        let dest = file.dest.display().to_string();
        let Some(previous) = previous else {
            error!(dest = %dest, error = %error, "reload failed; there was no previous file to roll back to");
            core.reject(id, installed, format!("reload failed (no previous file to roll back to): {error}"));
            continue;
        };
        let restored = tokio::task::spawn_blocking(move || {
            // The previous file was accepted once; put it back even if it is empty.
            let file = FileSpec { check: None, backup: false, allow_empty: true, ..file };
            sink::install(&file, &previous)
        })
        .await
        .expect("bug: rollback task panicked");
        match restored {
            Ok(_) => {
                error!(dest = %dest, error = %error, "reload failed; previous file restored (rollback)");
                core.reject(
                    id,
                    installed,
                    format!("reload failed; rolled back to the previous file: {error}"),
                );
            }
            Err(e) => {
                error!(dest = %dest, error = %crate::error::report(&e), "reload failed and the previous file could not be restored");
                core.reject(
                    id,
                    installed,
                    format!("reload failed; restoring the previous file failed too: {error}"),
                );
            }
        }
    }
}

/// `rollback` of a bundle: swap `..data` back to the version before `swap.installed`.
async fn roll_back_bundle(core: &mut Core, first: TargetId, swap: BundleRollback, error: &str) {
    let Some(b) = core.targets()[first].bundle else { return };
    let dir = core.bundles()[b].spec.dir.clone();
    let shown = dir.display().to_string();
    let BundleRollback { installed, previous, contents } = swap;
    let Some(previous) = previous else {
        error!(dir = %shown, error = %error, "reload failed; there was no previous bundle version to roll back to");
        core.reject_bundle(
            b,
            contents,
            &format!("reload failed (no previous version to roll back to): {error}"),
        );
        return;
    };
    let swapped = tokio::task::spawn_blocking(move || sink::bundle::swap_back(&dir, &installed, &previous))
        .await
        .expect("bug: rollback task panicked");
    match swapped {
        Ok(true) => {
            error!(dir = %shown, error = %error, "reload failed; ..data swapped back to the previous version (rollback)");
            core.reject_bundle(
                b,
                contents,
                &format!("reload failed; rolled back to the previous version: {error}"),
            );
        }
        Ok(false) => {
            warn!(dir = %shown, error = %error, "reload failed; not rolled back: a newer version is installed or the previous one is gone");
        }
        Err(e) => {
            error!(dir = %shown, error = %e, "reload failed and ..data could not be swapped back");
            core.reject_bundle(b, contents, &format!("reload failed; swapping back failed too: {error}"));
        }
    }
}
