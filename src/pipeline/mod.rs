//! The pipeline task: decides what to write from the values the source reads, and carries
//! it out, one cycle at a time.
//!
//! A change takes one route, in this order:
//!
//! ```text
//! source --SourceEvent--> run: Core::on_update (store)      batch: wait/max_wait
//!                              Core::plan (render)           core: pure, unit-tested
//!                              install::carry_out (sink)     install: blocking threads
//!                              --ReloadBatch--> notify::queue (its own task)
//!                              <--ReloadOutcome-- (the one channel outcomes come back on)
//! ```
//!
//! [`Core`] decides without I/O; [`run`] is the one task that owns it and carries out what it
//! decides, and keeps [`Telemetry`] for the status report. An install that failed for a
//! reason of the machine is retried on the core's schedule ([`retry`]): the loop sleeps until
//! [`Core::next_retry`] beside its other timers. Why one task: as the only owner of
//! all state it needs no locks and has no ordering races. `runtime` spawns it, the source and
//! the reload queue, and hands it their channels ([`Channels`]).

mod batch;
mod core;
mod events;
mod install;
mod retry;

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tracing::{debug, error, info};

pub use self::batch::Debounce;
pub use self::core::{Action, Core, Plan, Target};
use self::events::{Held, handle_event};
use self::install::Installed;
use crate::config::TargetId;
use crate::model::{Dep, Update};
use crate::notify::queue::{ReloadBatch, ReloadOutcome};
use crate::ops::metrics;
use crate::source::{Command, SourceEvent};
use crate::status::StatusReport;
use crate::status::telemetry::{Publisher, Telemetry};
pub use crate::status::{ConnectionState, Failure, FailureKind, Status};

/// What the pipeline does with rendered files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The agent: install, reload, keep going.
    Run,
    /// Install every file once, no reloads; stop when all settled (or the deadline).
    Once,
    /// Print instead of installing; stop when all settled (or the deadline).
    Render,
}

/// Settings of the task loop.
#[derive(Debug, Clone)]
pub struct Options {
    pub mode: Mode,
    pub wait: Duration,
    pub max_wait: Duration,
    /// Zero disables.
    pub resync: Duration,
    /// For `once`/`render`: give up waiting for missing znodes then.
    pub deadline: Option<Instant>,
    /// Parallel installs (each fsyncs).
    pub write_parallelism: usize,
    /// Where the status report is published after every change (HTTP endpoint, readiness).
    pub status: Option<watch::Sender<Arc<StatusReport>>>,
    /// The connect string, for the report.
    pub hosts: String,
}

/// The loop's channels, created by `runtime`: one per neighbouring stage.
#[derive(Debug)]
pub struct Channels {
    /// Values, read errors and connection changes from the source.
    pub events: mpsc::Receiver<SourceEvent>,
    /// Watch, unwatch and resync requests to the source.
    pub source: mpsc::UnboundedSender<Command>,
    /// New configurations (config hot reload); closed outside `run`.
    pub reconfigure: mpsc::UnboundedReceiver<Reconfigure>,
    /// Reloads, to the notify stage's queue ([`crate::notify::queue::run`]).
    pub reloads: mpsc::UnboundedSender<ReloadBatch>,
    /// How each reload went. The loop drains it before returning, so it must close: its
    /// sender belongs to the queue task (or is dropped when there is none).
    pub outcomes: mpsc::UnboundedReceiver<ReloadOutcome>,
}

/// How the loop ended, with each file's final state (for `once` and `render`).
#[derive(Debug)]
pub struct Summary {
    pub files: Vec<(PathBuf, Status)>,
    /// `render`: each file's rendering, in config order.
    pub rendered: Vec<(PathBuf, Vec<u8>)>,
    /// The ZooKeeper connection at the end, and its hosts.
    pub connection: ConnectionState,
    pub hosts: String,
    /// Why connecting failed (per host), when the connection is not up at the end.
    pub unreachable: Option<String>,
}

/// A new configuration for a running pipeline (config hot reload).
pub struct Reconfigure {
    pub core: Core,
    pub wait: Duration,
    pub max_wait: Duration,
    pub resync: Duration,
}

/// The pipeline task. Returns when its input closes (shutdown), or in `once`/`render` mode
/// when every file is settled or the deadline passed. A [`Reconfigure`] received on
/// `reconfigure` replaces the files and timings without touching the ZooKeeper session.
pub async fn run(mut core: Core, channels: Channels, mut opts: Options) -> Summary {
    let Channels { mut events, source, mut reconfigure, reloads, mut outcomes } = channels;
    let mut telemetry = Telemetry::new(core.targets().len(), &opts.hosts);
    let mut publisher = Publisher::new(opts.status.take());
    let mut rendered: HashMap<TargetId, Vec<u8>> = HashMap::new();
    let mut debounce = Debounce::new(opts.wait, opts.max_wait);
    let mut resync_at = next_resync(opts.resync);
    let mut input_open = true;
    let mut adopted: Option<BTreeSet<Dep>> = None;
    // Files held back by reads in flight (see `Core::blocked`): since when, and the values of
    // one multi-read to render them from once that lasted `max_wait`.
    let mut held = Held { since: None, after: Held::after(opts.max_wait) };
    let mut snapshot: Option<Vec<Update>> = None;
    // The first cycle runs at once: every file starts marked, to discover what it reads.
    let mut due = true;
    // The earliest retry, looked up again only where it can change (a cycle, retries
    // started, a new configuration), not at every event: it walks every file.
    let mut retry_at = core.next_retry();
    loop {
        if due || snapshot.is_some() {
            due = false;
            debounce.reset();
            let from_snapshot = snapshot.is_some();
            run_cycle(&mut core, &source, &opts, &reloads, &mut rendered, &mut telemetry, snapshot.take())
                .await;
            if let Some(old_deps) = adopted.take() {
                let unused = core.finish_adoption(old_deps);
                if !unused.is_empty() {
                    core.forget_in_flight(Some(&unused));
                    let _ = source.send(Command::Unwatch(unused));
                }
            }
            retry_at = core.next_retry();
            held.after_cycle(&core, &source, Instant::now(), from_snapshot);
            publish(&mut publisher, &core, &mut telemetry, false);
            if opts.mode != Mode::Run && core.all_settled() {
                break;
            }
        }
        if !input_open {
            break;
        }
        let deadline = debounce.deadline();
        tokio::select! {
            // Cancel safety: `recv` loses nothing when another branch wins.
            ev = events.recv() => match ev {
                None => {
                    // Shutdown: finish what is pending, then stop.
                    input_open = false;
                    due = core.has_dirty() && opts.mode == Mode::Run;
                }
                Some(ev) => {
                    // A read announced only holds files back: it never gives a held file
                    // what it waits for, so it starts no cycle (under churn, each would be
                    // an empty one while a file waits for its read).
                    let mut news = !matches!(ev, SourceEvent::Reading(_));
                    let mut connection_changed = handle_event(&mut core, &mut telemetry, ev, &mut snapshot);
                    // With wait = 0, everything already queued joins this cycle (a snapshot
                    // read renders at once, from its own values only).
                    while snapshot.is_none() && let Ok(ev) = events.try_recv() {
                        news |= !matches!(ev, SourceEvent::Reading(_));
                        connection_changed |= handle_event(&mut core, &mut telemetry, ev, &mut snapshot);
                    }
                    if connection_changed {
                        publish(&mut publisher, &core, &mut telemetry, false);
                        // once/render: a read error may have settled the last pending file.
                        if opts.mode != Mode::Run && core.all_settled() {
                            break;
                        }
                    }
                    if news && core.has_dirty() {
                        due |= debounce.on_change(Instant::now());
                    }
                }
            },
            _ = sleep_until(deadline), if deadline.is_some() => due = true,
            // Installs that failed for an I/O reason, tried again with no change needed.
            _ = sleep_until(retry_at), if retry_at.is_some() => {
                due |= core.start_due_retries(Instant::now());
                retry_at = core.next_retry();
            }
            _ = sleep_until(resync_at), if resync_at.is_some() => {
                debug!("resync: re-reading every dependency and checking every file");
                let _ = source.send(Command::Resync);
                core.mark_all_dirty();
                due = true;
                resync_at = next_resync(opts.resync);
            }
            Some(new) = reconfigure.recv() => {
                let old = std::mem::replace(&mut core, new.core);
                let old_index: Vec<Option<TargetId>> = core
                    .targets()
                    .iter()
                    .map(|t| old.targets().iter().position(|o| o.spec.dest == t.spec.dest))
                    .collect();
                adopted = Some(core.adopt(old));
                telemetry = telemetry.renew(&old_index);
                rendered.clear();
                debounce.set(new.wait, new.max_wait);
                held.after = Held::after(new.max_wait);
                if opts.resync != new.resync {
                    opts.resync = new.resync;
                    resync_at = next_resync(opts.resync);
                }
                info!(files = core.targets().len(), "new configuration in effect");
                retry_at = core.next_retry();
                due = true;
            }
            _ = sleep_until(publisher.due()), if publisher.due().is_some() => {
                publish(&mut publisher, &core, &mut telemetry, true);
            }
            Some(outcome) = outcomes.recv() => {
                on_reload_outcome(&mut core, &mut telemetry, outcome, &reloads).await;
                publish(&mut publisher, &core, &mut telemetry, false);
            }
            _ = sleep_until(opts.deadline), if opts.deadline.is_some() => break,
        }
    }
    // Reloads already queued still run; record how they went (no rollback any more).
    drop(reloads);
    while let Some(outcome) = outcomes.recv().await {
        match outcome {
            ReloadOutcome::Reloaded { targets, at } => telemetry.on_reload(&targets, at, None),
            ReloadOutcome::Failed { targets, at, error, .. } => {
                telemetry.on_reload(&targets, at, Some(error))
            }
        }
    }
    publish(&mut publisher, &core, &mut telemetry, true);
    let files = core.targets().iter().map(|t| (t.spec.dest.clone(), t.status.clone())).collect();
    let mut rendered: Vec<_> = rendered.into_iter().collect();
    rendered.sort_by_key(|(id, _)| *id);
    let rendered =
        rendered.into_iter().map(|(id, bytes)| (core.targets()[id].spec.dest.clone(), bytes)).collect();
    Summary {
        files,
        rendered,
        connection: telemetry.connection(),
        hosts: telemetry.hosts().to_owned(),
        unreachable: telemetry.unreachable().map(str::to_owned),
    }
}

/// Records which of the touched files are stale or settled now, then publishes the report
/// (see [`Publisher::publish`]).
fn publish(publisher: &mut Publisher, core: &Core, telemetry: &mut Telemetry, force: bool) {
    let touched = telemetry.refresh(|id| core.view(id), SystemTime::now());
    publisher.publish(&touched, |id| core.view(id), core.values(), telemetry, force);
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The next resync time: the period plus up to 10% jitter, so a fleet does not resync at once.
fn next_resync(period: Duration) -> Option<Instant> {
    if period.is_zero() {
        return None;
    }
    let jitter = period.mul_f64(rand::random::<f64>() * 0.1);
    Some(Instant::now() + period + jitter)
}

/// Plans one cycle and carries it out: watches, installs, reloads.
async fn run_cycle(
    core: &mut Core,
    source: &mpsc::UnboundedSender<Command>,
    opts: &Options,
    reloads: &mpsc::UnboundedSender<ReloadBatch>,
    rendered: &mut HashMap<TargetId, Vec<u8>>,
    telemetry: &mut Telemetry,
    snapshot: Option<Vec<Update>>,
) {
    // Only the marked files can change status in a cycle (a plan renders nothing else, and
    // installs only what it rendered): what the log compares, without a walk of every file.
    let before: Vec<(TargetId, Status, u32)> =
        core.dirty().map(|id| (id, core.targets()[id].status.clone(), core.failed_attempts(id))).collect();
    // The same files are the only ones whose report entry the cycle can change.
    before.iter().for_each(|(id, ..)| telemetry.touch(*id));
    let plan = match snapshot {
        Some(values) => core.plan_snapshot(values),
        None => core.plan(),
    };
    metrics().renders_total.inc_by(plan.renders);
    metrics().render_errors_total.inc_by(plan.render_errors);
    metrics().renders_patched_total.inc_by(plan.patched);
    if !plan.unwatch.is_empty() {
        core.forget_in_flight(Some(&plan.unwatch));
        let _ = source.send(Command::Unwatch(plan.unwatch));
    }
    if !plan.watch.is_empty() {
        let _ = source.send(Command::Watch(plan.watch));
    }
    let mut to_reload = ReloadBatch::default();
    if opts.mode == Mode::Render {
        for action in plan.actions {
            let files = match action {
                Action::Install { target, contents } => vec![(target, contents)],
                Action::InstallBundle { files, .. } => files,
                Action::Remove { .. } => Vec::new(),
            };
            for (target, contents) in files {
                rendered.insert(target, contents);
                core.on_result(target, &Ok(()));
            }
        }
    } else {
        let results = install::carry_out(core, plan.actions, opts.write_parallelism).await;
        let now = SystemTime::now();
        let mut applied = Vec::new();
        for Installed { id, changed, result, rollback } in results {
            let failure = result.as_ref().err().cloned();
            core.on_attempt(id, &result, Instant::now(), rand::random::<f64>());
            if changed && let Some(waited) = telemetry.change_waited(id) {
                metrics().record_change_to_write(waited);
            }
            if changed {
                metrics().files_written_total.inc();
            }
            // A bundle's check failure is one, not one per file.
            if core.unit_of(id).start == id
                && failure.as_ref().is_some_and(|f| f.kind == FailureKind::CheckFailed)
            {
                metrics().check_failures_total.inc();
            }
            telemetry.on_result(id, changed, failure.is_none(), now);
            if failure.is_none() {
                applied.push(id);
            }
            if changed && let Some(reload) = &core.targets()[id].spec.reload {
                to_reload.add(reload, id, rollback);
            }
        }
        // What each file now on disk was rendered from: the store as this cycle rendered it.
        for id in applied {
            telemetry.on_applied(id, core.view(id).deps, core.values());
        }
    }
    log_transitions(core, &before, telemetry);
    if !to_reload.is_empty() && opts.mode == Mode::Run {
        let _ = reloads.send(to_reload);
    }
}

/// Records how a reload went. A failed one with `rollback` files puts them back and runs
/// the reload again, so the application returns to the configuration it accepted.
async fn on_reload_outcome(
    core: &mut Core,
    telemetry: &mut Telemetry,
    outcome: ReloadOutcome,
    reloads: &mpsc::UnboundedSender<ReloadBatch>,
) {
    match outcome {
        ReloadOutcome::Reloaded { targets, at } => telemetry.on_reload(&targets, at, None),
        ReloadOutcome::Failed { spec, targets, at, error, rollback } => {
            if !rollback.is_empty() {
                // Rolled back files (a bundle's: all its members) change status: report them.
                for r in &rollback {
                    core.unit_of(r.id).for_each(|id| telemetry.touch(id));
                }
                install::roll_back(core, rollback, &error).await;
                let _ = reloads.send(ReloadBatch::again(spec));
            }
            telemetry.on_reload(&targets, at, Some(error));
        }
    }
}

/// Logs each file whose status changed: once per cause, not once per event (a retry that
/// fails the same way logs nothing). `before` holds, per file the cycle could change, its
/// status and failed attempts before it; `telemetry` still knows since when a recovered
/// file was stale.
fn log_transitions(core: &Core, before: &[(TargetId, Status, u32)], telemetry: &Telemetry) {
    for (id, old, attempts) in before {
        let (id, t) = (*id, &core.targets()[*id]);
        if &t.status == old {
            continue;
        }
        let dest = t.spec.dest.display();
        match (&t.status, old) {
            (Status::Failed(f), _) if f.kind.is_io() => {
                error!(dest = %dest, cause = f.kind.as_str(), error = %f.message, "file not updated; it keeps its last good contents and is retried")
            }
            (Status::Failed(f), _) => {
                error!(dest = %dest, cause = f.kind.as_str(), error = %f.message, "file not updated; it keeps its last good contents")
            }
            (Status::Ok, Status::Failed(_)) => {
                // This cycle's attempt succeeded after the failed ones.
                let attempts = attempts + 1;
                match telemetry.stale_for(id, SystemTime::now()) {
                    Some(stale) => {
                        let stale =
                            humantime::format_duration(Duration::from_millis(stale.as_millis() as u64));
                        info!(dest = %dest, attempts, stale_for = %stale, "file recovered after {attempts} attempts, stale for {stale}")
                    }
                    None => info!(dest = %dest, attempts, "file recovered after {attempts} attempts"),
                }
            }
            (Status::Pending, _) => {
                debug!(dest = %dest, "waiting for znodes to be read")
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::task::JoinHandle;

    use super::core::tests::{data, raw};
    use super::*;

    /// A `render`-mode pipeline over one raw file of `/a`: it ends at its first complete
    /// cycle, so the time it ends and what it rendered show when that cycle ran.
    fn start(
        wait: Duration,
        max_wait: Duration,
    ) -> (mpsc::Sender<SourceEvent>, JoinHandle<(Summary, Instant)>) {
        let core = Core::new(&[raw(0, "/a")]).unwrap();
        let (events_tx, events) = mpsc::channel(16);
        let (source, source_rx) = mpsc::unbounded_channel();
        let (_reconfigure_tx, reconfigure) = mpsc::unbounded_channel();
        let (reloads, _reloads_rx) = mpsc::unbounded_channel();
        let (_, outcomes) = mpsc::unbounded_channel();
        let opts = Options {
            mode: Mode::Render,
            wait,
            max_wait,
            resync: Duration::ZERO,
            deadline: None,
            write_parallelism: 1,
            status: None,
            hosts: "h".to_owned(),
        };
        let channels = Channels { events, source, reconfigure, reloads, outcomes };
        let task = tokio::spawn(async move {
            let _keep = (source_rx, _reconfigure_tx, _reloads_rx);
            let summary = run(core, channels, opts).await;
            (summary, Instant::now())
        });
        (events_tx, task)
    }

    fn rendered(summary: &Summary) -> &str {
        std::str::from_utf8(&summary.rendered[0].1).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn changes_closer_than_wait_render_once_wait_after_the_last() {
        let t0 = Instant::now();
        let (events, task) = start(Duration::from_millis(100), Duration::from_secs(1));
        for (i, value) in ["1", "2", "3"].into_iter().enumerate() {
            if i > 0 {
                tokio::time::sleep(Duration::from_millis(60)).await;
            }
            events.send(SourceEvent::Update(data("/a", value, i as i32))).await.unwrap();
        }
        let (summary, ended) = task.await.unwrap();
        assert_eq!(rendered(&summary), "3", "one cycle, with the last value");
        assert_eq!(ended - t0, Duration::from_millis(220), "100 ms after the change at 120 ms");
    }

    #[tokio::test(start_paused = true)]
    async fn a_steady_stream_renders_max_wait_after_the_first_change() {
        let t0 = Instant::now();
        let (events, task) = start(Duration::from_millis(100), Duration::from_millis(250));
        // A change every 40 ms: a plain debounce would never fire.
        for i in 0..20 {
            if events.send(SourceEvent::Update(data("/a", &i.to_string(), i))).await.is_err() {
                break; // the pipeline has finished
            }
            tokio::time::sleep(Duration::from_millis(40)).await;
        }
        let (summary, ended) = task.await.unwrap();
        assert_eq!(ended - t0, Duration::from_millis(250));
        assert_eq!(rendered(&summary), "6", "the value sent at 240 ms");
    }

    #[tokio::test(start_paused = true)]
    async fn a_file_held_by_reads_in_flight_renders_from_one_multi_read_after_max_wait() {
        let core = Core::new(&[raw(0, "/a")]).unwrap();
        let (events_tx, events) = mpsc::channel(64);
        let (source, mut source_rx) = mpsc::unbounded_channel();
        let (_reconfigure_tx, reconfigure) = mpsc::unbounded_channel();
        let (reloads, _reloads_rx) = mpsc::unbounded_channel();
        let (_, outcomes) = mpsc::unbounded_channel();
        let opts = Options {
            mode: Mode::Render,
            wait: Duration::ZERO,
            max_wait: Duration::from_millis(300),
            resync: Duration::ZERO,
            deadline: None,
            write_parallelism: 1,
            status: None,
            hosts: "h".to_owned(),
        };
        let channels = Channels { events, source, reconfigure, reloads, outcomes };
        let t0 = Instant::now();
        let task = tokio::spawn(async move {
            let _keep = (_reconfigure_tx, _reloads_rx);
            run(core, channels, opts).await
        });
        let a = || data("/a", "0", 0).dep;
        // Unbroken churn: every 50 ms a value arrives, and a new read is already in flight.
        let mut asked = None;
        for i in 1..40 {
            let batch = [
                SourceEvent::Reading(a()),
                SourceEvent::Update(data("/a", &i.to_string(), i)),
                SourceEvent::Reading(a()),
            ];
            for ev in batch {
                events_tx.send(ev).await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            while let Ok(cmd) = source_rx.try_recv() {
                if let Command::ReadSnapshot(deps) = cmd {
                    asked = Some((deps, Instant::now() - t0));
                }
            }
            if asked.is_some() {
                break;
            }
        }
        let (deps, at) = asked.expect("no multi-read was asked for under unbroken churn");
        assert_eq!(deps, vec![a()]);
        assert!(at >= Duration::from_millis(300) && at <= Duration::from_millis(400), "asked at {at:?}");
        events_tx.send(SourceEvent::Snapshot(vec![data("/a", "snap", 99)])).await.unwrap();
        let summary = task.await.unwrap();
        assert_eq!(rendered(&summary), "snap", "rendered from the multi-read alone");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_wait_renders_at_once() {
        let t0 = Instant::now();
        let (events, task) = start(Duration::ZERO, Duration::from_secs(1));
        events.send(SourceEvent::Update(data("/a", "x", 1))).await.unwrap();
        let (summary, ended) = task.await.unwrap();
        assert_eq!((rendered(&summary), ended - t0), ("x", Duration::ZERO));
    }
}
