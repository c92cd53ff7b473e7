//! The sink step of a cycle: installs or removes the files a plan names, on blocking
//! threads, a few at a time, and puts `rollback` files back when their reload failed.
//! Everything on disk goes through [`crate::sink`]; this module only schedules it.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError};

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
///
/// Each blocking thread takes the next action from one shared queue until it is empty, so
/// a cycle costs one hand-off per thread, not one per file; a cycle of one file (the usual
/// change) is installed and its directory synced in a single hand-off.
pub async fn carry_out(core: &Core, actions: Vec<Action>, parallelism: usize) -> Vec<Installed> {
    let lanes = parallelism.clamp(1, actions.len().max(1));
    let queue: VecDeque<(FileSpec, Action)> = actions
        .into_iter()
        .map(|action| {
            let id = match &action {
                Action::Install { target, .. } | Action::Remove { target } => *target,
            };
            (core.targets()[id].spec.clone(), action)
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
                let Some((spec, action)) = next else { break };
                done.push(install_one(spec, action));
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

/// Syncs, once each, the directories of the files `done` changed.
fn sync_written(done: &[(Installed, PathBuf)]) {
    let written = done.iter().filter(|(r, _)| r.changed).map(|(_, dest)| dest.as_path());
    sink::sync_dirs(written);
}

/// Installs or removes one file (on a blocking thread); with its destination.
fn install_one(spec: FileSpec, action: Action) -> (Installed, PathBuf) {
    let (id, outcome) = match action {
        Action::Install { target, contents } => {
            // Keep what is there now, to put it back if the application rejects the new file.
            let previous = spec.rollback.then(|| std::fs::read(&spec.dest).ok());
            let r = sink::install_with(&spec, &contents, sink::DirSync::Deferred);
            if let Ok(WriteOutcome::Written) = r {
                info!(dest = %spec.dest.display(), bytes = contents.len(), "file written");
            }
            let changed = matches!(r, Ok(WriteOutcome::Written));
            let rollback = if changed {
                previous.map(|previous| Rollback { id: target, previous, installed: contents })
            } else {
                None
            };
            (target, (r.map(|o| o == WriteOutcome::Written), rollback))
        }
        Action::Remove { target } => {
            let r = sink::remove(&spec);
            if let Ok(true) = r {
                warn!(dest = %spec.dest.display(), "znode deleted; file removed (on_delete = \"remove\")");
            }
            (target, (r, None))
        }
    };
    let installed = match outcome {
        (Ok(changed), rollback) => Installed { id, changed, result: Ok(()), rollback },
        (Err(e), _) => Installed { id, changed: false, result: Err(e), rollback: None },
    };
    (installed, spec.dest)
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
