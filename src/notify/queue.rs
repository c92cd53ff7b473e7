//! The reload queue: the notify stage's task, between the pipeline loop and the application.
//!
//! The loop sends a [`ReloadBatch`] per cycle (the reloads of the files that cycle changed)
//! and goes on with the next change: a slow reload never holds it back. [`run`] (spawned by
//! `runtime`) carries out batches one after another, merging those queued meanwhile, and
//! sends one [`ReloadOutcome`] per reload back on the loop's outcome channel.

use std::collections::HashSet;
use std::time::{Instant, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, error, info, warn};

use crate::config::{ReloadAction, ReloadSpec, TargetId};
use crate::error::report;
use crate::exec::ChildHandle;
use crate::ops::{ReloadKind, metrics};

/// One reload to run, and the files whose change asked for it.
#[derive(Debug, Clone)]
pub struct ReloadJob {
    pub spec: ReloadSpec,
    /// When the change that asked for it was installed.
    pub queued_at: Instant,
    pub targets: Vec<TargetId>,
    /// `rollback` files this reload is for: what to put back if it fails.
    pub rollback: Vec<Rollback>,
}

/// A `rollback` file's previous and new contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollback {
    pub id: TargetId,
    /// None when there was no file before (nothing to put back).
    pub previous: Option<Vec<u8>>,
    pub installed: Vec<u8>,
    /// For a `[[bundle]]` (`id` is its first file): the versions to swap `..data` between.
    pub bundle: Option<BundleRollback>,
}

/// A `rollback` bundle's swap: back from `installed` to `previous` (version directory names).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleRollback {
    pub installed: String,
    /// None when there was no version before.
    pub previous: Option<String>,
    /// The files' rejected contents, in member order.
    pub contents: Vec<Vec<u8>>,
}

/// The reloads one cycle asks for: identical reloads of files changed together run once.
#[derive(Debug, Default)]
pub struct ReloadBatch {
    jobs: Vec<ReloadJob>,
}

impl ReloadBatch {
    /// A batch of one reload, for no file (after a rollback: the application goes back to
    /// the files it accepted).
    pub fn again(spec: ReloadSpec) -> Self {
        let job = ReloadJob { spec, queued_at: Instant::now(), targets: Vec::new(), rollback: Vec::new() };
        ReloadBatch { jobs: vec![job] }
    }

    /// File `id` changed and asks for `spec`; `rollback` is what to put back if it fails.
    pub fn add(&mut self, spec: &ReloadSpec, id: TargetId, rollback: Option<Rollback>) {
        let i = match self.jobs.iter().position(|job| &job.spec == spec) {
            Some(i) => i,
            None => {
                let job = ReloadJob {
                    spec: spec.clone(),
                    queued_at: Instant::now(),
                    targets: Vec::new(),
                    rollback: Vec::new(),
                };
                self.jobs.push(job);
                self.jobs.len() - 1
            }
        };
        self.jobs[i].targets.push(id);
        self.jobs[i].rollback.extend(rollback);
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Folds `other` in: a reload in both runs once, for the files of both. A merged job
    /// keeps the earlier `queued_at` (the oldest change it carries).
    fn merge(&mut self, other: ReloadBatch) {
        for job in other.jobs {
            match self.jobs.iter_mut().find(|j| j.spec == job.spec) {
                Some(j) => {
                    j.targets.extend(job.targets);
                    j.rollback.extend(job.rollback);
                }
                None => self.jobs.push(job),
            }
        }
    }
}

/// How one reload went: what the notify stage sends back to the pipeline loop.
#[derive(Debug)]
pub enum ReloadOutcome {
    /// The application was told.
    Reloaded { targets: Vec<TargetId>, at: SystemTime },
    /// Every attempt failed; `rollback` holds the files to put back.
    Failed {
        spec: ReloadSpec,
        targets: Vec<TargetId>,
        at: SystemTime,
        error: String,
        rollback: Vec<Rollback>,
    },
}

/// Runs reload batches one after another; batches queued meanwhile are merged, so a burst of
/// changes during a slow reload costs one more reload, not one per change. Returns when
/// `batches` closes and every reload started has reported.
pub async fn run(
    mut batches: mpsc::UnboundedReceiver<ReloadBatch>,
    outcomes: mpsc::UnboundedSender<ReloadOutcome>,
    child: ChildHandle,
) {
    // Until its application has been found running once, a reload through a pid file that
    // does not exist yet is skipped: at boot the application often starts after zkrender,
    // and reads the files when it does, so there is nothing to reload and nothing to retry
    // or report as failed. Logged once per action at warn. Once the application has been
    // seen, a missing pid file is an error again (it ran and is gone).
    let mut seen: HashSet<ReloadAction> = HashSet::new();
    let mut warned: HashSet<ReloadAction> = HashSet::new();
    while let Some(mut batch) = batches.recv().await {
        while let Ok(more) = batches.try_recv() {
            batch.merge(more);
        }
        let mut running = JoinSet::new();
        for job in batch.jobs {
            if job.spec.action.targets_child()
                && child.started_at().is_none_or(|started| job.queued_at < started)
            {
                // `zkrender exec`: the child started after this change was installed, so it
                // already runs on the new file; signalling or restarting it now would hit a
                // process that may not have set up its handlers yet.
                debug!(reload = %job.spec.action, "the child started after this change; no reload needed");
                continue;
            }
            if !seen.contains(&job.spec.action) {
                match super::not_started(&job.spec.action) {
                    Some(reason) => {
                        let action = &job.spec.action;
                        if warned.insert(action.clone()) {
                            warn!(reload = %action, reason = %reason, "the application is not running yet; no reload sent, it reads the files when it starts");
                        } else {
                            debug!(reload = %action, reason = %reason, "the application is still not running; no reload sent");
                        }
                        continue;
                    }
                    None => {
                        seen.insert(job.spec.action.clone());
                    }
                }
            }
            running.spawn(reload(job, outcomes.clone(), child.clone()));
        }
        while running.join_next().await.is_some() {}
    }
}

/// Runs one job (after its splay) and reports how it went.
async fn reload(job: ReloadJob, outcomes: mpsc::UnboundedSender<ReloadOutcome>, child: ChildHandle) {
    if !job.spec.splay.is_zero() {
        // A random delay so that a fleet watching the same znode does not reload at once.
        let delay = job.spec.splay.mul_f64(rand::random::<f64>());
        debug!(reload = %job.spec.action, delay = ?delay, "splay: waiting before the reload");
        tokio::time::sleep(delay).await;
    }
    let started = tokio::time::Instant::now();
    let result = super::reload(&job.spec, &child).await;
    metrics().record_reload(ReloadKind::from(&job.spec.action), result.is_ok(), started.elapsed());
    let at = SystemTime::now();
    let outcome = match result {
        Ok(()) => {
            info!(reload = %job.spec.action, took = ?started.elapsed(), "application reloaded");
            ReloadOutcome::Reloaded { targets: job.targets, at }
        }
        Err(e) => {
            let error = report(&e);
            error!(reload = %job.spec.action, error = %error, "reload failed after all retries");
            ReloadOutcome::Failed { spec: job.spec, targets: job.targets, at, error, rollback: job.rollback }
        }
    };
    let _ = outcomes.send(outcome);
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::ReloadAction;

    fn command(script: &str) -> ReloadSpec {
        ReloadSpec {
            splay: Duration::ZERO,
            action: ReloadAction::Command { argv: vec!["sh".into(), "-c".into(), script.into()] },
            retries: 0,
            timeout: Duration::from_secs(5),
        }
    }

    #[test]
    fn identical_reloads_in_a_batch_run_once_for_all_their_files() {
        let (a, b) = (command("true"), command("false"));
        let mut batch = ReloadBatch::default();
        assert!(batch.is_empty());
        batch.add(&a, 0, None);
        batch.add(&b, 1, None);
        let rollback = Rollback { id: 2, previous: None, installed: b"x".to_vec(), bundle: None };
        batch.add(&a, 2, Some(rollback.clone()));
        let mut later = ReloadBatch::default();
        later.add(&a, 3, None);
        batch.merge(later);
        assert_eq!(batch.jobs.len(), 2);
        assert_eq!(batch.jobs[0].targets, vec![0, 2, 3]);
        assert_eq!(batch.jobs[0].rollback, vec![rollback]);
        assert_eq!(batch.jobs[1].targets, vec![1]);
    }

    #[tokio::test]
    async fn each_reload_reports_its_outcome_and_the_task_ends_with_its_input() {
        let (batch_tx, batch_rx) = mpsc::unbounded_channel();
        let (outcome_tx, mut outcomes) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(batch_rx, outcome_tx, ChildHandle::none()));
        let mut batch = ReloadBatch::default();
        batch.add(&command("true"), 0, None);
        batch.add(&command("echo no >&2; exit 3"), 1, None);
        batch_tx.send(batch).unwrap();
        drop(batch_tx);
        let mut got = Vec::new();
        while let Some(outcome) = outcomes.recv().await {
            got.push(outcome);
        }
        task.await.unwrap();
        got.sort_by_key(|o| matches!(o, ReloadOutcome::Failed { .. }));
        assert!(matches!(&got[0], ReloadOutcome::Reloaded { targets, .. } if targets == &[0]));
        let ReloadOutcome::Failed { targets, error, .. } = &got[1] else { panic!("{got:?}") };
        assert_eq!(targets, &[1]);
        assert!(error.ends_with("exited with status 3: no"), "{error}");
    }

    #[tokio::test]
    async fn a_pid_file_is_forgiven_until_its_application_was_seen() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("app.pid");
        let spec = ReloadSpec {
            action: ReloadAction::Signal {
                // SIGCONT: harmless to this test process, which stands in for the application.
                signal: nix::sys::signal::Signal::SIGCONT,
                target: crate::config::SignalTarget::PidFile(pid_file.clone()),
            },
            ..command("true")
        };
        let (batch_tx, batch_rx) = mpsc::unbounded_channel();
        let (outcome_tx, mut outcomes) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(batch_rx, outcome_tx, ChildHandle::none()));
        let send = |id| {
            let mut batch = ReloadBatch::default();
            batch.add(&spec, id, None);
            batch_tx.send(batch).unwrap();
        };
        // Not started yet: no reload, no outcome (twice).
        send(0);
        send(1);
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(outcomes.try_recv().is_err(), "no outcome while the application was never seen");
        // It starts: reloaded.
        std::fs::write(&pid_file, std::process::id().to_string()).unwrap();
        send(2);
        let Some(ReloadOutcome::Reloaded { targets, .. }) = outcomes.recv().await else { panic!("reloaded") };
        assert_eq!(targets, vec![2]);
        // Gone again: now a failure.
        std::fs::remove_file(&pid_file).unwrap();
        send(3);
        let Some(ReloadOutcome::Failed { targets, error, .. }) = outcomes.recv().await else {
            panic!("a reload after the application was seen should fail")
        };
        assert_eq!(targets, vec![3]);
        assert!(error.contains("app.pid"), "{error}");
        drop(batch_tx);
        task.await.unwrap();
        assert!(outcomes.recv().await.is_none(), "no other outcome");
    }

    #[tokio::test]
    async fn a_child_reload_queued_before_the_child_started_is_skipped() {
        let (child, _restarts) = ChildHandle::supervised();
        let (batch_tx, batch_rx) = mpsc::unbounded_channel();
        let (outcome_tx, mut outcomes) = mpsc::unbounded_channel();
        let spec = ReloadSpec { action: ReloadAction::Restart, ..command("true") };
        // No child yet: nothing to reload.
        let mut batch = ReloadBatch::default();
        batch.add(&spec, 0, None);
        batch_tx.send(batch).unwrap();
        drop(batch_tx);
        run(batch_rx, outcome_tx, child).await;
        assert!(outcomes.recv().await.is_none(), "no reload ran");
    }
}
