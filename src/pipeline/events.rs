//! How source events reach the core: [`handle_event`] applies each one, and [`Held`] turns
//! reads that stay in flight past `max_wait` into one atomic multi-read (the snapshot rule,
//! see `Core::blocked`).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::debug;

use super::Core;
use crate::model::Update;
use crate::ops::metrics;
use crate::source::{Command, Connection, SourceEvent};
use crate::status::telemetry::Telemetry;

/// Files held back by reads in flight (see `Core::blocked`): under unbroken churn some read
/// is always in flight, so once that lasts `max_wait` (1 s when `max_wait` is 0) the loop asks
/// the source for one atomic multi-read of their dependencies and renders them from it.
pub(super) struct Held {
    pub(super) since: Option<Instant>,
    pub(super) after: Duration,
}

impl Held {
    pub(super) fn after(max_wait: Duration) -> Duration {
        if max_wait.is_zero() { Duration::from_secs(1) } else { max_wait }
    }

    /// After a cycle: starts, ends or acts on a hold (asking again each `after` while it lasts).
    pub(super) fn after_cycle(
        &mut self,
        core: &Core,
        source: &mpsc::UnboundedSender<Command>,
        now: Instant,
        rendered_snapshot: bool,
    ) {
        // Checked after every cycle: no set is built unless a snapshot read is asked for.
        if !core.any_blocked() {
            self.since = None;
            return;
        }
        if rendered_snapshot {
            self.since = Some(now);
        }
        let since = *self.since.get_or_insert(now);
        if now.duration_since(since) >= self.after {
            let blocked = core.blocked_deps();
            debug!(
                deps = blocked.len(),
                "reads in flight for max_wait: reading the files' znodes in one multi-read"
            );
            let _ = source.send(Command::ReadSnapshot(blocked.into_iter().collect()));
            self.since = Some(now);
        }
    }
}

/// Applies one event; true when the connection state changed (worth publishing at once). A
/// snapshot read's answer is kept in `snapshot` for the next cycle.
pub(super) fn handle_event(
    core: &mut Core,
    telemetry: &mut Telemetry,
    ev: SourceEvent,
    snapshot: &mut Option<Vec<Update>>,
) -> bool {
    match ev {
        SourceEvent::Reading(dep) => {
            core.on_reading(dep);
            false
        }
        SourceEvent::Snapshot(values) => {
            *snapshot = Some(values);
            false
        }
        SourceEvent::Update(u) => {
            metrics().watch_events_total.inc();
            let now = Instant::now();
            for id in core.on_update(u) {
                telemetry.on_change(id, now);
            }
            false
        }
        // On expiry every watch is re-established by the source and every value re-read;
        // values that did not change are dropped by the store, so nothing is rewritten.
        SourceEvent::Connection(c) => {
            let change = telemetry.on_connection(c);
            let m = metrics();
            if change.reconnected {
                m.zk_reconnects_total.inc();
            }
            if c == Connection::Expired {
                // Every watch task ended with the session: their reads will never answer.
                core.forget_in_flight(None);
                m.zk_session_expirations_total.inc();
            }
            m.zk_connected.set(i64::from(c == Connection::Connected));
            change.changed
        }
        SourceEvent::Unreachable { cause } => telemetry.on_unreachable(cause),
        SourceEvent::ReadError { dep, message } => {
            core.on_read_error(&dep, message);
            // A read error is rare: the files that read `dep` are looked up by a walk.
            for id in 0..core.targets().len() {
                if core.view(id).deps.contains(&dep) {
                    telemetry.touch(id);
                }
            }
            true
        }
    }
}
