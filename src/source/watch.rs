//! One watch loop per dependency (all of a session's polled in one task, see `Session`): read it,
//! keep a watch on it, send every new value. A loop is a small hand-polled [`Idle`] state while
//! it waits for its watch (nearly all the time) and boxed `async` code while it reads (see
//! [`Loop`]).
//!
//! ZooKeeper rules encoded here, each where it applies:
//! - A one-shot watch fires once. The task re-arms it with the same call that reads the new
//!   value, so no change between the fire and the re-arm is lost: intermediate values may be
//!   skipped, the latest never is.
//! - Reads of one dependency are at least [`READ_GAP`] apart (from one answer to the next
//!   request): under a burst of sets the watch fires again as soon as it is re-armed, and a
//!   read per set would take the server's time from the writer for values that are stale on
//!   arrival. The read after the pause returns the latest value, so the final one is still
//!   read, at most `READ_GAP` later; changes further apart than that are read at once. The
//!   read is announced before the pause: from the moment the watch fired the value known is stale,
//!   so the snapshot rule below holds its files back during the pause too.
//! - At most [`READS_AT_ONCE`] loops do a first read or a resync re-read at once ([`Admission`]):
//!   the session queues the rest and starts each as a slot frees. Reads after a watch fired are
//!   not counted (one per change, already paced by `READ_GAP`).
//! - A missing znode is a value ([`Value::Missing`]) watched with an exists-watch.
//! - Disconnected is not expired. The client library restores every watch after a reconnect
//!   within the session (SetWatches with the last zxid seen; the server fires whatever changed
//!   meanwhile), one-shot and persistent alike (the latter with the vendored patches 1 and 2 of
//!   vendor/PATCHES.md). So after a reconnect a task just keeps waiting: nothing is re-added or
//!   re-read unless the server says it changed.
//! - While disconnected, calls block until reconnect or expiry: every call is bounded by a
//!   timeout and retried, so a task never hangs on a dead connection.
//! - Before every read (the first one, one after a watch fired, a resync) the task sends
//!   [`SourceEvent::Reading`], and the value or error after it: the pipeline renders no file
//!   while a read of one of its dependencies is in flight, which is what makes each file a
//!   snapshot (the reasoning is in `pipeline/core.rs`, `Core::in_flight`).
//! - After a terminal session event (expired, closed, auth failed) a task returns: the session
//!   task replaces the client and starts new watch tasks. A persistent watcher must not be
//!   polled again after a terminal event (the library panics).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures_util::FutureExt;
use futures_util::task::AtomicWaker;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{debug, error};
use zookeeper_client as zk;

use super::{SourceError, SourceEvent};
use crate::config::WatchMode;
use crate::model::{Dep, DepKind, Update, Value};

/// The least time from a read's answer to the next read of the same dependency (see the
/// module's documentation): bounds the reads of a znode under a burst of sets to about one
/// per `READ_GAP`, and delays nothing when changes are further apart.
pub(super) const READ_GAP: Duration = Duration::from_millis(10);

/// What every watch task of a session shares (one allocation for all of them).
pub(super) struct Shared {
    pub client: zk::Client,
    pub mode: WatchMode,
    pub out: mpsc::Sender<SourceEvent>,
    /// Bound on every ZooKeeper call, so a blocked call is retried rather than awaited forever.
    pub call_timeout: Duration,
    /// How many loops may read at once outside the normal flow: first reads, resync re-reads.
    pub admission: Admission,
}

/// The most watch loops reading at once when many would start together: the first reads of a
/// session, a resync. Enough to keep the connection's pipeline full (reads are answered in
/// order, a few hundred microseconds apart); few enough that the reading state of a loop
/// (several hundred bytes, boxed while it reads) is not held by 10,000 loops at once, a
/// transient the allocator keeps as resident memory afterwards (measured at 10,000 znodes:
/// 7 MiB of a 22.6 MiB heap peak). A read after a watch fired is not counted: those come one
/// per change.
pub(super) const READS_AT_ONCE: usize = 256;

/// Counts the free reading slots (see [`READS_AT_ONCE`]). Only the session takes a slot
/// (when it starts a loop or pokes one); a loop gives it back when that read is done
/// ([`Slot`]) and wakes the session to admit the next.
pub(super) struct Admission {
    free: AtomicUsize,
    waker: AtomicWaker,
}

impl Admission {
    pub(super) fn new(slots: usize) -> Self {
        Admission { free: AtomicUsize::new(slots), waker: AtomicWaker::new() }
    }

    /// Takes a slot if one is free.
    pub(super) fn try_take(&self) -> bool {
        self.free.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1)).is_ok()
    }

    pub(super) fn release(&self) {
        self.free.fetch_add(1, Ordering::AcqRel);
        self.waker.wake();
    }

    /// Ready once a slot is free (it is not taken).
    pub(super) fn poll_free(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.free.load(Ordering::Acquire) > 0 {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.free.load(Ordering::Acquire) > 0 { Poll::Ready(()) } else { Poll::Pending }
    }
}

/// A reading slot held by a loop: given back when the loop leaves the phase that holds it
/// (its read is done, or it ended).
pub(super) struct Slot(Arc<Shared>);

impl Slot {
    /// Wraps a slot the session already took for this loop.
    pub(super) fn taken(shared: Arc<Shared>) -> Self {
        Slot(shared)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.admission.release();
    }
}

/// Everything a watch task needs. Small on purpose: a session has one per watched znode.
#[derive(Clone)]
pub(super) struct WatchCtx {
    pub shared: Arc<Shared>,
    /// How the session stops the loop or asks it to re-read.
    pub ctl: Arc<Ctl>,
}

impl std::ops::Deref for WatchCtx {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

/// The session's handle on one watch loop: stop it (the session ends or the dependency is
/// dropped) or poke it (re-read now: anti-entropy resync).
///
/// Two flags and one waker, where a cancellation token and a `Notify` per loop cost about
/// 160 bytes of heap and 140 bytes of every loop's state (their futures are inline in it):
/// at 10,000 watched znodes that is megabytes. Only the loop itself waits on its `Ctl`, so
/// one waker is enough.
#[derive(Default)]
pub(super) struct Ctl {
    flags: AtomicU8,
    waker: AtomicWaker,
}

/// What [`Ctl::signalled`] reports.
enum Signal {
    Stop,
    Poke,
}

impl Ctl {
    const STOP: u8 = 1;
    const POKE: u8 = 2;

    /// Ends the loop at its next await point. True when a poke was pending: the loop will not
    /// take it up, so the reading slot that came with it is the caller's to give back.
    pub(super) fn stop(&self) -> bool {
        let before = self.flags.fetch_or(Self::STOP, Ordering::AcqRel);
        self.waker.wake();
        before & (Self::STOP | Self::POKE) == Self::POKE
    }

    /// Makes the loop re-read once it next waits for its watch, with a reading slot the caller
    /// took for it (the loop gives it back after that read). False, and the slot stays the
    /// caller's, when the loop is stopped or a poke is already pending.
    pub(super) fn poke(&self) -> bool {
        let before = self.flags.fetch_or(Self::POKE, Ordering::AcqRel);
        self.waker.wake();
        before & (Self::STOP | Self::POKE) == 0
    }

    pub(super) fn is_stopped(&self) -> bool {
        self.flags.load(Ordering::Acquire) & Self::STOP != 0
    }

    /// Resolves once the loop is stopped.
    async fn stopped(&self) {
        poll_fn(|cx| self.poll_first(cx, |flags| (flags & Self::STOP != 0).then_some(()))).await
    }

    /// Resolves when the loop is stopped or poked (the poke is consumed).
    #[cfg(test)]
    async fn signalled(&self) -> Signal {
        poll_fn(|cx| self.poll_signalled(cx)).await
    }

    /// Ready when the loop is stopped or poked (the poke is consumed).
    fn poll_signalled(&self, cx: &mut Context<'_>) -> Poll<Signal> {
        self.poll_first(cx, |flags| {
            if flags & Self::STOP != 0 {
                Some(Signal::Stop)
            } else if flags & Self::POKE != 0 {
                self.flags.fetch_and(!Self::POKE, Ordering::AcqRel);
                Some(Signal::Poke)
            } else {
                None
            }
        })
    }

    /// Ready with the first `Some` that `check` makes of the flags, woken by [`Ctl::stop`]
    /// and [`Ctl::poke`]. The flags are looked at again after the waker is registered: one
    /// set in between woke no one.
    fn poll_first<T>(&self, cx: &mut Context<'_>, check: impl Fn(u8) -> Option<T>) -> Poll<T> {
        if let Some(found) = check(self.flags.load(Ordering::Acquire)) {
            return Poll::Ready(found);
        }
        self.waker.register(cx.waker());
        check(self.flags.load(Ordering::Acquire)).map_or(Poll::Pending, Poll::Ready)
    }
}

/// How a watch task ended.
pub(super) enum Ended {
    /// Cancelled, or the pipeline is gone.
    Stopped,
    /// The session is over; the session task opens a new one.
    SessionOver,
    /// A problem no retry fixes (persistent watches unsupported by the server).
    Fatal(SourceError),
}

/// A watch loop, or another task of the session (see [`Loop::task`]): a future that ends
/// how the task ended.
///
/// A watch loop spends nearly all its life waiting for its watch to fire, so that wait is a
/// small plain struct ([`Idle`], about a hundred bytes) held inline, polled by hand. Reading,
/// pausing, retrying and sending are `async` code ([`Active`]) boxed only while they run:
/// a session holds one loop per watched znode (10,000 in the benchmark's scale scenario),
/// and the largest state of an `async` loop was 424 bytes for every one of them.
pub(super) struct Loop(Phase);

enum Phase {
    Active(Active),
    /// Active with a reading slot (see [`READS_AT_ONCE`]): a first read, or a resync's.
    Admitted(Active, #[allow(dead_code, reason = "held for its Drop, which gives the slot back")] Slot),
    Idle(Idle),
    /// Only while one phase is replaced by the next.
    Moving,
}

/// The `async` part of a loop: runs until the loop waits for its watch again, or ends.
type Active = Pin<Box<dyn Future<Output = Next> + Send>>;

/// What an [`Active`] phase ends in.
enum Next {
    Ended(Ended),
    Idle(Idle),
}

/// A loop waiting for its watch to fire, or for a stop or a poke.
pub(super) struct Idle {
    ctx: WatchCtx,
    dep: Dep,
    /// When the last read was answered: the next one waits until `READ_GAP` after it.
    answered: Instant,
    watch: Waiting,
}

enum Waiting {
    Oneshot(zk::OneshotWatcher),
    Persistent {
        watcher: zk::PersistentWatcher,
        /// Whether the last value sent was `Missing`: a NodeDeleted then changes nothing (after
        /// a reconnect the library reports a still-missing node as deleted again).
        missing: bool,
    },
}

/// What woke an [`Idle`] loop.
enum Wake {
    /// The watch fired.
    Read,
    /// A resync: the session took a reading slot for this read.
    Poke,
    Ended(Ended),
}

impl Loop {
    /// Another task of the session (the report, a snapshot read), polled with the loops.
    pub(super) fn task(task: impl Future<Output = Ended> + Send + 'static) -> Loop {
        Loop(Phase::Active(Box::pin(async move { Next::Ended(task.await) })))
    }
}

impl Future for Loop {
    type Output = Ended;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Ended> {
        loop {
            let next = match &mut self.0 {
                Phase::Active(active) | Phase::Admitted(active, _) => ready!(active.as_mut().poll(cx)),
                Phase::Idle(idle) => match ready!(idle.poll_wake(cx)) {
                    Wake::Ended(ended) => Next::Ended(ended),
                    wake @ (Wake::Read | Wake::Poke) => {
                        let Phase::Idle(idle) = std::mem::replace(&mut self.0, Phase::Moving) else {
                            unreachable!()
                        };
                        self.0 = match wake {
                            Wake::Poke => {
                                let slot = Slot::taken(idle.ctx.shared.clone());
                                Phase::Admitted(idle.resume(), slot)
                            }
                            _ => Phase::Active(idle.resume()),
                        };
                        continue;
                    }
                },
                Phase::Moving => unreachable!("bug: a watch loop polled between phases"),
            };
            match next {
                Next::Ended(ended) => {
                    self.0 = Phase::Moving;
                    return Poll::Ready(ended);
                }
                Next::Idle(idle) => self.0 = Phase::Idle(idle),
            }
        }
    }
}

impl Idle {
    fn poll_wake(&mut self, cx: &mut Context<'_>) -> Poll<Wake> {
        // A stop wins over an event that arrived at the same time.
        match self.ctx.ctl.poll_signalled(cx) {
            Poll::Ready(Signal::Stop) => return Poll::Ready(Wake::Ended(Ended::Stopped)),
            Poll::Ready(Signal::Poke) => {
                debug!(dep = %self.dep, "resync: re-reading");
                return Poll::Ready(Wake::Poke);
            }
            Poll::Pending => {}
        }
        match &mut self.watch {
            Waiting::Oneshot(watcher) => {
                let event = ready!(watcher.poll_changed(cx));
                if event.event_type == zk::EventType::Session && event.session_state.is_terminated() {
                    return Poll::Ready(Wake::Ended(Ended::SessionOver));
                }
                debug!(dep = %self.dep, event = ?event.event_type, "watch fired; re-reading and re-arming");
                Poll::Ready(Wake::Read)
            }
            Waiting::Persistent { watcher, missing } => loop {
                let event = ready!(watcher.poll_changed(cx));
                let read = match event.event_type {
                    zk::EventType::Session => match event.session_state {
                        // Never poll this watcher again after a terminal state: the library panics.
                        s if s.is_terminated() => return Poll::Ready(Wake::Ended(Ended::SessionOver)),
                        // Disconnected or reconnected: the watch stays, and whatever changed in
                        // between arrives as a node event.
                        _ => false,
                    },
                    // A persistent watch on a node fires for both data and child events; each
                    // dependency re-reads only for what it depends on (and, once known missing,
                    // for any sign of life: after a reconnect a node created meanwhile is
                    // reported by the data or child event of its creation, not by NodeCreated).
                    zk::EventType::NodeChildrenChanged => *missing || self.dep.kind == DepKind::Children,
                    zk::EventType::NodeDataChanged => *missing || self.dep.kind == DepKind::Data,
                    zk::EventType::NodeCreated => true,
                    zk::EventType::NodeDeleted => !*missing,
                };
                if read {
                    debug!(dep = %self.dep, event = ?event.event_type, "watch fired; re-reading");
                    return Poll::Ready(Wake::Read);
                }
            },
        }
    }

    /// The active phase that re-reads (a one-shot watcher, fired or not, is dropped: the read
    /// arms a new one).
    fn resume(self) -> Active {
        let Idle { ctx, dep, answered, watch } = self;
        match watch {
            Waiting::Oneshot(_) => Box::pin(oneshot(ctx, dep, Some(answered))),
            Waiting::Persistent { watcher, .. } => {
                Box::pin(persistent_read(ctx, dep, watcher, Some(answered)))
            }
        }
    }
}

/// The watch loop of `dep` in the session's watch mode; its first read holds `slot`.
pub(super) fn run(ctx: WatchCtx, dep: Dep, slot: Slot) -> Loop {
    let first: Active = match ctx.mode {
        WatchMode::Oneshot => Box::pin(oneshot(ctx, dep, None)),
        WatchMode::Persistent => Box::pin(persistent(ctx, dep)),
    };
    Loop(Phase::Admitted(first, slot))
}

/// What a failed call means for the task.
enum CallFailure {
    /// Connection lost or the call timed out: retry after a short pause.
    Retry(String),
    /// Session expired or client closed: stop, the session task takes over.
    SessionOver,
    /// Anything else (e.g. no permission): reported, then retried slowly.
    Error(zk::Error),
}

fn classify(err: zk::Error) -> CallFailure {
    match err {
        zk::Error::SessionExpired | zk::Error::ClientClosed | zk::Error::AuthFailed => {
            CallFailure::SessionOver
        }
        // An I/O failure on the connection (a member killed mid-request: "connection reset by
        // peer") reaches us as a custom error; like a connection loss, it is retried quietly.
        zk::Error::ConnectionLoss | zk::Error::Timeout | zk::Error::Custom(_) => {
            CallFailure::Retry(err.to_string())
        }
        other => CallFailure::Error(other),
    }
}

/// Runs `fut` with the context's timeout; a timeout is a retryable failure.
async fn bounded<T>(
    ctx: &WatchCtx,
    fut: impl Future<Output = Result<T, zk::Error>>,
) -> Result<T, CallFailure> {
    match tokio::time::timeout(ctx.call_timeout, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(classify(e)),
        Err(_) => Err(CallFailure::Retry(format!("no answer within {:?}", ctx.call_timeout))),
    }
}

const STOPPED: Next = Next::Ended(Ended::Stopped);

/// One-shot mode: read-and-watch (retrying until it works), send the value, then wait for the
/// watch as [`Idle`]. `answered`: when the previous read was answered.
async fn oneshot(ctx: WatchCtx, dep: Dep, mut answered: Option<Instant>) -> Next {
    let mut backoff = Backoff::new();
    let mut announced = false;
    loop {
        // Announced before the pause: the value known is stale from the moment the watch
        // fired, and a file reading it with another dependency must not render meanwhile.
        if !announce(&ctx, &dep, &mut announced).await {
            return STOPPED;
        }
        if let Some(at) = answered.take()
            && !pause_until(&ctx, at + READ_GAP).await
        {
            return STOPPED;
        }
        let read = tokio::select! {
            // Cancel safety: dropping an in-flight read also drops its watcher, which the
            // library unregisters; nothing is half-applied.
            _ = ctx.ctl.stopped() => return STOPPED,
            read = read_and_watch(&ctx, &dep) => read,
        };
        let (value, watcher) = match read {
            Ok(v) => v,
            Err(failure) => match on_failure(&ctx, &dep, failure, &mut backoff, &mut announced).await {
                Some(ended) => return Next::Ended(ended),
                None => continue,
            },
        };
        let answered = Instant::now();
        if !send(&ctx, &dep, value).await {
            return STOPPED;
        }
        return Next::Idle(Idle { ctx, dep, answered, watch: Waiting::Oneshot(watcher) });
    }
}

/// Persistent mode: add the watch (retrying until it works), then read (so nothing between is
/// missed), then re-read on every node event that concerns `dep` (see [`Idle::poll_wake`]).
/// The watch is added once per session: the client library re-sends it after a reconnect,
/// and the server then fires an event for each change missed meanwhile, so a reconnect alone
/// re-reads nothing.
async fn persistent(ctx: WatchCtx, dep: Dep) -> Next {
    let mut backoff = Backoff::new();
    let watcher = loop {
        let added = tokio::select! {
            _ = ctx.ctl.stopped() => return STOPPED,
            added = bounded(&ctx, ctx.client.watch(dep.znode.as_str(), zk::AddWatchMode::Persistent)) => added,
        };
        match added {
            Ok(watcher) => break watcher,
            Err(CallFailure::Error(zk::Error::Unimplemented)) => {
                return Next::Ended(Ended::Fatal(SourceError::PersistentUnsupported));
            }
            Err(failure) => {
                if let Some(ended) = on_failure(&ctx, &dep, failure, &mut backoff, &mut false).await {
                    return Next::Ended(ended);
                }
            }
        }
    };
    persistent_read(ctx, dep, watcher, None).await
}

/// Persistent mode's read: retried until it works, then the value is sent and the loop waits
/// for the watch as [`Idle`]. `answered`: when the previous read was answered.
async fn persistent_read(
    ctx: WatchCtx,
    dep: Dep,
    mut watcher: zk::PersistentWatcher,
    mut answered: Option<Instant>,
) -> Next {
    let mut backoff = Backoff::new();
    let mut announced = false;
    loop {
        // Announced before the pause, as in one-shot mode.
        if !announce(&ctx, &dep, &mut announced).await {
            return STOPPED;
        }
        if let Some(at) = answered.take() {
            if !pause_until(&ctx, at + READ_GAP).await {
                return STOPPED;
            }
            // Events queued until now are answered by the read about to be sent (the server
            // sends an event before any answer that shows its change): one read for all of
            // them, not one each.
            while let Some(event) = watcher.changed().now_or_never() {
                if event.event_type == zk::EventType::Session && event.session_state.is_terminated() {
                    return Next::Ended(Ended::SessionOver);
                }
            }
        }
        let read = tokio::select! {
            _ = ctx.ctl.stopped() => return STOPPED,
            read = read_plain(&ctx, &dep) => read,
        };
        match read {
            Ok(value) => {
                let answered = Instant::now();
                let missing = matches!(value, Value::Missing);
                if !send(&ctx, &dep, value).await {
                    return STOPPED;
                }
                return Next::Idle(Idle {
                    ctx,
                    dep,
                    answered,
                    watch: Waiting::Persistent { watcher, missing },
                });
            }
            // The watch outlives a lost connection (the library re-sends it), so only the read
            // is retried.
            Err(failure) => {
                if let Some(ended) = on_failure(&ctx, &dep, failure, &mut backoff, &mut announced).await {
                    return Next::Ended(ended);
                }
            }
        }
    }
}

/// Waits until `at` (at once when it has passed); false when cancelled meanwhile.
async fn pause_until(ctx: &WatchCtx, at: Instant) -> bool {
    if at <= Instant::now() {
        return true;
    }
    tokio::select! {
        _ = ctx.ctl.stopped() => false,
        _ = tokio::time::sleep_until(at) => true,
    }
}

/// Handles a failed call: `Some` ends the task, `None` means retry (after a pause).
///
/// A read error reported to the pipeline answers the read in flight (`announced` is cleared),
/// so an unreadable dependency does not hold back the files that read it for ever.
async fn on_failure(
    ctx: &WatchCtx,
    dep: &Dep,
    failure: CallFailure,
    backoff: &mut Backoff,
    announced: &mut bool,
) -> Option<Ended> {
    match failure {
        CallFailure::SessionOver => return Some(Ended::SessionOver),
        CallFailure::Retry(why) => debug!(dep = %dep, reason = %why, "read failed; retrying"),
        CallFailure::Error(err) => {
            let message = match err {
                zk::Error::NoAuth => format!(
                    "permission denied reading znode {} (its ACL does not allow this session; check [zookeeper] auth)",
                    dep.znode
                ),
                other => format!("reading znode {}: {other}", dep.znode),
            };
            // Once per cause: the retry loop would otherwise log every backoff period.
            if backoff.first_failure() {
                error!(znode = %dep.znode, error = %message, "the file keeps its last good contents; retrying");
                let _ = ctx.out.send(SourceEvent::ReadError { dep: dep.clone(), message }).await;
                *announced = false;
            } else {
                debug!(znode = %dep.znode, error = %message, "still failing; retrying");
            }
        }
    }
    tokio::select! {
        _ = ctx.ctl.stopped() => Some(Ended::Stopped),
        _ = tokio::time::sleep(backoff.next()) => None,
    }
}

/// Tells the pipeline a read of `dep` is about to be sent, unless it already knows (a retry of
/// the same read); false when the pipeline is gone. Sent before the request, so it reaches
/// the pipeline before the answer's [`SourceEvent::Update`] (one channel, one sender task).
async fn announce(ctx: &WatchCtx, dep: &Dep, announced: &mut bool) -> bool {
    if *announced {
        return true;
    }
    *announced = true;
    ctx.out.send(SourceEvent::Reading(dep.clone())).await.is_ok()
}

/// Sends a value to the pipeline; false when the pipeline is gone.
async fn send(ctx: &WatchCtx, dep: &Dep, value: Value) -> bool {
    ctx.out.send(SourceEvent::Update(Update { dep: dep.clone(), value })).await.is_ok()
}

/// Reads `deps` in one read-only `multi` (ZooKeeper 3.6+; the server answers it atomically,
/// so the values are of one moment) and sends them as [`SourceEvent::Snapshot`]. On failure
/// nothing is sent: the reads in flight answer in time and the files render then.
pub(super) async fn read_snapshot(shared: &Shared, deps: Vec<Dep>) {
    let mut reader = shared.client.new_multi_reader();
    for dep in &deps {
        let added = match dep.kind {
            DepKind::Data => reader.add_get_data(dep.znode.as_str()),
            DepKind::Children => reader.add_get_children(dep.znode.as_str()),
        };
        if let Err(e) = added {
            debug!(dep = %dep, error = %e, "snapshot read not possible");
            return;
        }
    }
    let results = match tokio::time::timeout(shared.call_timeout, reader.commit()).await {
        Ok(Ok(results)) if results.len() == deps.len() => results,
        Ok(Ok(results)) => {
            debug!(asked = deps.len(), answered = results.len(), "snapshot read: wrong number of answers");
            return;
        }
        Ok(Err(e)) => {
            debug!(error = %e, "snapshot read failed; waiting for the reads in flight");
            return;
        }
        Err(_) => {
            debug!("snapshot read timed out; waiting for the reads in flight");
            return;
        }
    };
    let mut updates = Vec::with_capacity(deps.len());
    for (dep, result) in deps.into_iter().zip(results) {
        let value = match result {
            zk::MultiReadResult::Data { data, stat } => data_value(data, &stat),
            // A multi's children answer has no Stat: the zxids are unknown (0). The pipeline
            // renders from these values only, and never keeps them.
            zk::MultiReadResult::Children { children } => {
                let mut names = children;
                names.sort_unstable();
                Value::Children { names, pzxid: 0, cversion: 0 }
            }
            zk::MultiReadResult::Error { err: zk::Error::NoNode } => Value::Missing,
            zk::MultiReadResult::Error { err } => {
                debug!(dep = %dep, error = %err, "snapshot read: one read failed; waiting for the reads in flight");
                return;
            }
            other => {
                debug!(dep = %dep, answer = ?other, "snapshot read: unexpected answer");
                return;
            }
        };
        updates.push(Update { dep, value });
    }
    let _ = shared.out.send(SourceEvent::Snapshot(updates)).await;
}

/// Reads `dep` and arms a one-shot watch in the same call.
async fn read_and_watch(ctx: &WatchCtx, dep: &Dep) -> Result<(Value, zk::OneshotWatcher), CallFailure> {
    let path = dep.znode.as_str();
    loop {
        let read = match dep.kind {
            DepKind::Data => bounded(ctx, ctx.client.get_and_watch_data(path))
                .await
                .map(|(data, stat, w)| (data_value(data, &stat), w)),
            DepKind::Children => bounded(ctx, ctx.client.get_and_watch_children(path))
                .await
                .map(|(names, stat, w)| (children_value(names, &stat), w)),
        };
        match read {
            Err(CallFailure::Error(zk::Error::NoNode)) => {}
            other => return other,
        }
        // Missing: watch for its creation with an exists-watch. If it was created between the
        // two calls, the exists call sees it and we read again.
        match bounded(ctx, ctx.client.check_and_watch_stat(path)).await? {
            (None, watcher) => return Ok((Value::Missing, watcher)),
            (Some(_), _) => continue,
        }
    }
}

/// Reads `dep` without a watch (persistent mode, where the watch is already in place).
async fn read_plain(ctx: &WatchCtx, dep: &Dep) -> Result<Value, CallFailure> {
    let path = dep.znode.as_str();
    let read = match dep.kind {
        DepKind::Data => bounded(ctx, ctx.client.get_data(path)).await.map(|(d, s)| data_value(d, &s)),
        DepKind::Children => {
            bounded(ctx, ctx.client.get_children(path)).await.map(|(n, s)| children_value(n, &s))
        }
    };
    match read {
        Err(CallFailure::Error(zk::Error::NoNode)) => Ok(Value::Missing),
        other => other,
    }
}

fn data_value(data: Vec<u8>, stat: &zk::Stat) -> Value {
    Value::Data { data, mzxid: stat.mzxid, version: stat.version }
}

fn children_value(mut names: Vec<String>, stat: &zk::Stat) -> Value {
    names.sort_unstable();
    Value::Children { names, pzxid: stat.pzxid, cversion: stat.cversion }
}

/// Retry pauses: 50 ms doubling to 2 s.
pub(super) struct Backoff(Duration);

impl Backoff {
    const FIRST: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(2);

    pub(super) fn new() -> Self {
        Backoff(Self::FIRST)
    }
    pub(super) fn next(&mut self) -> Duration {
        let d = self.0;
        self.0 = (self.0 * 2).min(Self::MAX);
        d
    }
    /// True before the first pause since the last reset: the first failure of a run.
    pub(super) fn first_failure(&self) -> bool {
        self.0 == Self::FIRST
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_waiting_watch_loop_stays_small() {
        // A session holds one loop per watched znode (10,000 in the benchmark's scale
        // scenario), nearly all of them waiting for their watch: every byte here is 10 KB of
        // resident memory there. An `async` loop held its whole state for that wait: 640
        // bytes plus 160 of heap with a cancellation token and a Notify, then 424 with `Ctl`.
        let waiting = std::mem::size_of::<Loop>();
        assert!(waiting <= 112, "a waiting watch loop takes {waiting} bytes");
    }

    #[test]
    fn ctl_stop_and_poke() {
        let ctl = Ctl::default();
        assert!(ctl.poke(), "the first poke is taken up");
        assert!(!ctl.poke(), "a second poke while one is pending is not: its slot stays the caller's");
        assert!(matches!(ctl.signalled().now_or_never(), Some(Signal::Poke)));
        // The poke was consumed; nothing is pending now.
        assert!(ctl.signalled().now_or_never().is_none());
        assert!(ctl.stopped().now_or_never().is_none());
        assert!(!ctl.is_stopped());
        assert!(ctl.poke());
        assert!(ctl.stop(), "stopped with a poke pending: the poke's slot goes back to the caller");
        assert!(ctl.is_stopped());
        // Stop wins over a pending poke, and stays.
        assert!(matches!(ctl.signalled().now_or_never(), Some(Signal::Stop)));
        assert!(matches!(ctl.signalled().now_or_never(), Some(Signal::Stop)));
        assert!(ctl.stopped().now_or_never().is_some());
        assert!(!ctl.poke(), "a stopped loop takes no poke");
        assert!(!ctl.stop(), "a second stop owes nothing");

        let idle = Ctl::default();
        assert!(!idle.stop(), "stopped without a poke pending: no slot to give back");
    }

    #[tokio::test]
    async fn admission_counts_slots_and_wakes_the_session_when_one_frees() {
        let admission = Arc::new(Admission::new(2));
        assert!(admission.try_take());
        assert!(admission.try_take());
        assert!(!admission.try_take(), "only two slots");
        assert!(poll_fn(|cx| Poll::Ready(admission.poll_free(cx))).await.is_pending());
        let waiter = tokio::spawn({
            let admission = admission.clone();
            async move { poll_fn(|cx| admission.poll_free(cx)).await }
        });
        tokio::task::yield_now().await;
        admission.release();
        tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").expect("no panic");
        assert!(admission.try_take(), "the released slot can be taken again");
        assert!(!admission.try_take());
    }

    #[tokio::test]
    async fn ctl_wakes_the_waiting_loop() {
        let ctl = Arc::new(Ctl::default());
        let waiter = tokio::spawn({
            let ctl = ctl.clone();
            async move {
                let first = ctl.signalled().await;
                ctl.stopped().await;
                matches!(first, Signal::Poke)
            }
        });
        tokio::task::yield_now().await;
        ctl.poke();
        tokio::task::yield_now().await;
        ctl.stop();
        assert!(
            tokio::time::timeout(Duration::from_secs(5), waiter).await.expect("woken").expect("no panic")
        );
    }
}
