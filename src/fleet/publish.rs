//! The task between the agent's status and its report znode: turns each [`StatusReport`] the
//! pipeline publishes into the report's bytes ([`AgentReport`]), and hands them to the source
//! (`source::report`), which writes them.
//!
//! Off the route of a change: the pipeline publishes its status after the install and goes
//! on; this task reads it on its own. A new report goes out only when a unit changed (the
//! connection state and timings of the status are not in it), at most once per
//! `report_interval`, and while a unit with a reload awaits that reload's outcome it waits
//! for it (at most [`Settings::hold`]), so the report says "installed and reloaded" in one
//! write. The sha256 of a unit is read from disk only when the unit changed.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::debug;

use super::{AgentReport, Unit, units};
use crate::config::Config;
use crate::status::{StatusReport, unix_seconds};

/// What the task needs besides its channels.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The report's fixed part: id, host, pid, version, start time (no units).
    pub agent: AgentReport,
    /// At most one report per this period.
    pub interval: Duration,
    /// The dests of files that have a reload at start: their report waits for it (as does the
    /// report of any file that has reloaded since).
    pub reloads: HashSet<String>,
    /// How long a report may wait for a reload's outcome before it goes out without it.
    pub hold: Duration,
}

impl Settings {
    /// The settings for `config`'s `[agent] report`; `None` when it has none.
    pub fn of(config: &Config) -> Option<Settings> {
        let report = config.agent.report.as_ref()?;
        let host = crate::config::host_name().unwrap_or_default();
        let agent = AgentReport {
            id: report.id.clone(),
            host,
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started: unix_seconds(SystemTime::now()),
            units: Vec::new(),
        };
        // A bundle's unit is its `dir` (see `fleet::units`).
        let reloads: HashSet<String> = (config.files.iter().filter(|f| f.reload.is_some()).map(|f| &f.dest))
            .chain(config.bundles.iter().filter(|b| b.reload.is_some()).map(|b| &b.dir))
            .map(|path| path.display().to_string())
            .collect();
        // A reload's longest run: its splay, then every attempt to its timeout with the
        // backoff between (100 ms doubling), plus a second.
        let hold = (config.files.iter().filter_map(|f| f.reload.as_ref()))
            .chain(config.bundles.iter().filter_map(|b| b.reload.as_ref()))
            .map(|r| {
                let attempts = r.retries.saturating_add(1).min(16);
                let backoff = Duration::from_millis(100) * (1u32 << attempts.min(16));
                r.splay + r.timeout * attempts + backoff
            })
            .max()
            .unwrap_or_default()
            + Duration::from_secs(1);
        Some(Settings { agent, interval: report.interval, reloads, hold })
    }

    /// The report before any unit is known: what the znode holds when first created.
    pub fn initial(&self) -> Arc<Vec<u8>> {
        Arc::new(serde_json::to_vec(&self.agent).expect("a report always serializes"))
    }
}

/// Runs until the status channel closes: each changed report goes to `out`.
pub async fn run(
    mut status: watch::Receiver<Arc<StatusReport>>,
    out: watch::Sender<Arc<Vec<u8>>>,
    settings: Settings,
) {
    let mut digests = Digests::default();
    let mut sent: Vec<Unit> = Vec::new();
    let mut last_sent: Option<Instant> = None;
    let mut held_since: Option<Instant> = None;
    loop {
        if status.changed().await.is_err() {
            return;
        }
        loop {
            let report = status.borrow_and_update().clone();
            let units = digests.units(&report).await;
            if units == sent {
                held_since = None;
                break;
            }
            let now = Instant::now();
            // Installed but not reloaded yet: wait for the reload's outcome (a new status).
            // A file has a reload if the config at start says so, or it has reloaded (one a
            // config reload added).
            let awaiting = units
                .iter()
                .any(|u| (u.reload.is_some() || settings.reloads.contains(&u.dest)) && u.awaits_reload());
            let held = *held_since.get_or_insert(now);
            let mut due = last_sent.map_or(now, |last| last + settings.interval);
            if awaiting {
                due = due.max(held + settings.hold);
            }
            if now < due {
                tokio::select! {
                    changed = status.changed() => if changed.is_err() { return },
                    _ = tokio::time::sleep_until(due) => {}
                }
                // Build again from the latest status.
                continue;
            }
            let doc = AgentReport { units, ..settings.agent.clone() };
            let bytes = serde_json::to_vec(&doc).expect("a report always serializes");
            debug!(bytes = bytes.len(), units = doc.units.len(), "fleet report changed");
            out.send_replace(Arc::new(bytes));
            sent = doc.units;
            last_sent = Some(now);
            held_since = None;
            break;
        }
    }
}

/// The sha256 of each unit's file, read again only when the unit changed.
#[derive(Debug, Default)]
struct Digests {
    /// Per dest: the unit (without its digest) when it was read, and the digest.
    known: HashMap<String, (Unit, Option<String>)>,
}

impl Digests {
    async fn units(&mut self, report: &StatusReport) -> Vec<Unit> {
        let mut units = units(report, |_| None);
        let stale: Vec<(String, Vec<String>)> = units
            .iter()
            .filter(|u| self.known.get(&u.dest).is_none_or(|(seen, _)| seen != *u))
            .map(|u| (u.dest.clone(), u.files.clone()))
            .collect();
        if !stale.is_empty() {
            let read = tokio::task::spawn_blocking(move || {
                stale.into_iter().map(|(dest, files)| (digest_of(&dest, &files), dest)).collect::<Vec<_>>()
            })
            .await
            .unwrap_or_default();
            for (digest, dest) in read {
                if let Some(u) = units.iter().find(|u| u.dest == dest) {
                    self.known.insert(dest, (u.clone(), digest));
                }
            }
        }
        for u in &mut units {
            u.sha256 = self.known.get(&u.dest).and_then(|(_, d)| d.clone());
        }
        self.known.retain(|dest, _| units.iter().any(|u| &u.dest == dest));
        units
    }
}

/// The digest of a unit: of the file at `dest`, or for a bundle ([`Unit::files`] not empty)
/// [`crate::fleet::bundle_digest`] of its files.
fn digest_of(dest: &str, files: &[String]) -> Option<String> {
    if files.is_empty() {
        return sha256_of(dest);
    }
    crate::fleet::bundle_digest(files.iter().map(|f| (f.clone(), sha256_of(f))))
}

/// The SHA-256 (hex) of the file at `dest`, if it can be read.
fn sha256_of(dest: &str) -> Option<String> {
    let bytes = std::fs::read(dest).ok()?;
    Some(Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{FileStatus, ReloadStatus};

    fn settings(reloads: &[&str]) -> Settings {
        Settings {
            agent: AgentReport { id: "a".into(), ..Default::default() },
            interval: Duration::from_secs(1),
            reloads: reloads.iter().map(|s| s.to_string()).collect(),
            hold: Duration::from_secs(5),
        }
    }

    fn report(written: f64, reload_at: Option<f64>) -> Arc<StatusReport> {
        let file = FileStatus {
            dest: "/nonexistent/zkrender-fleet-test".into(),
            state: "ok".into(),
            last_write: Some(written),
            last_reload: reload_at.map(|at| ReloadStatus { outcome: "ok".into(), at, error: None }),
            ..Default::default()
        };
        Arc::new(StatusReport { files: vec![file.into()], ..Default::default() })
    }

    fn written(rx: &watch::Receiver<Arc<Vec<u8>>>) -> Vec<Option<f64>> {
        let doc: AgentReport = serde_json::from_slice(&rx.borrow()).unwrap();
        doc.units.iter().map(|u| u.written).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn one_report_per_interval_and_none_without_a_change() {
        let (status_tx, status) = watch::channel(Arc::new(StatusReport::default()));
        let s = settings(&[]);
        let (out, rx) = watch::channel(s.initial());
        tokio::spawn(run(status, out, s));
        status_tx.send_replace(report(1.0, None));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(written(&rx), [Some(1.0)], "the first change goes out at once");
        status_tx.send_replace(report(2.0, None));
        tokio::time::sleep(Duration::from_millis(10)).await;
        status_tx.send_replace(report(3.0, None));
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(written(&rx), [Some(1.0)], "held back within the interval");
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(written(&rx), [Some(3.0)], "the latest, once the interval passed");
        let before = rx.borrow().clone();
        status_tx.send_replace(report(3.0, None));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(Arc::ptr_eq(&before, &rx.borrow()), "the same units: nothing written");
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_with_a_reload_is_reported_once_reloaded() {
        let (status_tx, status) = watch::channel(Arc::new(StatusReport::default()));
        let s = settings(&["/nonexistent/zkrender-fleet-test"]);
        let (out, rx) = watch::channel(s.initial());
        tokio::spawn(run(status, out, s));
        status_tx.send_replace(report(1.0, None));
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(written(&rx), Vec::<Option<f64>>::new(), "installed, not reloaded yet");
        status_tx.send_replace(report(1.0, Some(1.5)));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(written(&rx), [Some(1.0)]);
        // A reload that never reports back holds the report for `hold` at most.
        status_tx.send_replace(report(4.0, Some(1.5)));
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert_eq!(written(&rx), [Some(1.0)]);
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(written(&rx), [Some(4.0)]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_that_has_reloaded_waits_for_its_next_reload_too() {
        // Its reload came with a config reload: not in the settings of the start.
        let (status_tx, status) = watch::channel(report(1.0, Some(1.5)));
        let s = settings(&[]);
        let (out, rx) = watch::channel(s.initial());
        tokio::spawn(run(status, out, s));
        status_tx.send_replace(report(2.0, Some(1.5)));
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(written(&rx), Vec::<Option<f64>>::new(), "written at 2, its reload still to come");
        status_tx.send_replace(report(2.0, Some(2.5)));
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(written(&rx), [Some(2.0)]);
    }
}
