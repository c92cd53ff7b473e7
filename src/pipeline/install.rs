//! The sink step of a cycle: installs or removes the files a plan names, on blocking
//! threads, a few at a time, and puts `rollback` files back when their reload failed.
//! Everything on disk goes through [`crate::sink`]; this module only schedules it.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use super::core::{Action, Core};
use crate::config::{FileSpec, TargetId};
use crate::notify::queue::Rollback;
use crate::sink::{self, WriteError, WriteOutcome};

/// What installing one file did.
pub struct Installed {
    pub id: TargetId,
    /// The file on disk changed.
    pub changed: bool,
    pub result: Result<(), WriteError>,
    /// For `rollback` files that changed: what to put back if the reload fails.
    pub rollback: Option<Rollback>,
}

/// Installs or removes files on blocking threads, `parallelism` at a time. Returns, per
/// action in target order, whether the file on disk changed, and the error if any. The
/// directories of changed files are synced once, before this returns (and before any
/// reload hears of them).
pub async fn carry_out(core: &Core, actions: Vec<Action>, parallelism: usize) -> Vec<Installed> {
    let permits = Arc::new(Semaphore::new(parallelism.max(1)));
    let mut jobs = JoinSet::new();
    for action in actions {
        let (id, spec) = match &action {
            Action::Install { target, .. } | Action::Remove { target } => {
                (*target, core.targets()[*target].spec.clone())
            }
        };
        let permits = permits.clone();
        jobs.spawn(async move {
            let _permit = permits.acquire_owned().await.expect("bug: semaphore closed");
            let joined = tokio::task::spawn_blocking(move || match action {
                Action::Install { contents, .. } => {
                    // Keep what is there now, to put it back if the application rejects the new file.
                    let previous = spec.rollback.then(|| std::fs::read(&spec.dest).ok());
                    let r = sink::install_with(&spec, &contents, sink::DirSync::Deferred);
                    if let Ok(WriteOutcome::Written) = r {
                        info!(dest = %spec.dest.display(), bytes = contents.len(), "file written");
                    }
                    let changed = matches!(r, Ok(WriteOutcome::Written));
                    let rollback = if changed { previous.map(|previous| Rollback { id, previous, installed: contents }) } else { None };
                    (r.map(|o| o == WriteOutcome::Written), rollback)
                }
                Action::Remove { .. } => {
                    let r = sink::remove(&spec);
                    if let Ok(true) = r {
                        warn!(dest = %spec.dest.display(), "znode deleted; file removed (on_delete = \"remove\")");
                    }
                    (r, None)
                }
            })
            .await;
            match joined {
                Ok((Ok(changed), rollback)) => Installed { id, changed, result: Ok(()), rollback },
                Ok((Err(e), _)) => Installed { id, changed: false, result: Err(e), rollback: None },
                Err(e) => panic!("bug: install task failed: {e}"),
            }
        });
    }
    let mut results = Vec::new();
    while let Some(r) = jobs.join_next().await {
        results.push(r.expect("bug: install job panicked"));
    }
    results.sort_by_key(|r| r.id);
    // One fsync per directory for the whole cycle, before any reload is told about it.
    let written: Vec<PathBuf> =
        results.iter().filter(|r| r.changed).map(|r| core.targets()[r.id].spec.dest.clone()).collect();
    if !written.is_empty() {
        let _ =
            tokio::task::spawn_blocking(move || sink::sync_dirs(written.iter().map(PathBuf::as_path))).await;
    }
    results
}

/// The reload after installing `rollback` files failed with `error`: put each previous file
/// back and keep the rejected contents out until the rendering changes. The caller then runs
/// the reload again, so the application returns to the configuration it accepted.
pub async fn roll_back(core: &mut Core, rollback: Vec<Rollback>, error: &str) {
    for Rollback { id, previous, installed } in rollback {
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
