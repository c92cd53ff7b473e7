//! The ZooKeeper side: one session, one watch task per dependency. The ONLY module that
//! imports the ZooKeeper client crate.
//!
//! The pipeline tells the source what to watch ([`Command`]); the source sends back every value
//! it reads ([`SourceEvent::Update`]) and the connection's state. Values are state, not events:
//! the pipeline only ever needs the latest one.
//!
//! Session lifecycle (see `run`):
//! - connect (retrying with backoff until it works, shutdown or the deadline); when it fails,
//!   each host is probed for the precise cause ([`probe`]), which is sent to the pipeline
//!   ([`SourceEvent::Unreachable`], shown by `/readyz` and `/status`) and logged once, then
//!   reminded once a minute while it lasts;
//! - start a watch task for every dependency known so far and for each new one;
//! - on disconnect: report it ([`Connection::Disconnected`]); the files stay and the
//!   library reconnects within the same session;
//! - on expiry: every watch is gone with the session. Stop all tasks, open a new session,
//!   start every task again (each re-reads and re-arms), and the pipeline drops values that
//!   did not change.

mod probe;
pub mod report;
mod tls;
mod watch;

use std::collections::{HashMap, VecDeque};
use std::future::poll_fn;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt as _;
use futures_util::future::CatchUnwind;
use futures_util::stream::{FuturesUnordered, StreamExt as _};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use zookeeper_client as zk;

use crate::config::{WatchMode, ZkConfig};
use crate::model::{Dep, Update};

/// What the pipeline asks of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Start watching these dependencies (already watched ones are ignored).
    Watch(Vec<Dep>),
    /// Stop watching these dependencies.
    Unwatch(Vec<Dep>),
    /// Re-read every dependency now (anti-entropy).
    Resync,
    /// Read these dependencies in one read-only `multi` (answered atomically, so the values
    /// are one snapshot) and answer with [`SourceEvent::Snapshot`]: files held back under
    /// unbroken churn render from it at `max_wait`.
    ReadSnapshot(Vec<Dep>),
}

/// The connection as the pipeline and operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// A session is established and the connection is up.
    Connected,
    /// The connection dropped; the session may still be alive.
    Disconnected,
    /// The session expired; a new one is being opened and every watch re-established.
    Expired,
}

impl Connection {
    /// The stable label shown in `/status`, `zkrender status` and `once`'s summary:
    /// `connected`, `disconnected` or `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Connection::Connected => "connected",
            Connection::Disconnected => "disconnected",
            Connection::Expired => "expired",
        }
    }

    /// The label of a state that may not be known yet: `connecting` before the source has
    /// reported any, otherwise [`Connection::as_str`].
    pub fn label(state: Option<Connection>) -> &'static str {
        state.map_or("connecting", Connection::as_str)
    }
}

impl std::fmt::Display for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the source sends to the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    /// A read of `dep` is in flight (a watch fired, or a first read or resync started): its
    /// [`SourceEvent::Update`] (or [`SourceEvent::ReadError`]) follows. Files that read `dep`
    /// wait for it, so they never mix values from different transactions (see
    /// `pipeline::core`'s `in_flight`).
    Reading(Dep),
    Update(Update),
    /// The answer to [`Command::ReadSnapshot`]: every dependency asked for, as of one moment.
    Snapshot(Vec<Update>),
    Connection(Connection),
    /// Connecting failed; why, per host (`127.0.0.1:1: connection refused; ...`). Sent after
    /// each failed attempt; the next [`Connection::Connected`] clears it.
    Unreachable {
        cause: String,
    },
    /// Reading a dependency fails for a reason retrying alone may not fix (no permission).
    ReadError {
        dep: Dep,
        message: String,
    },
}

/// Failures that stop the source. Everything else is retried.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "the ZooKeeper server does not support persistent watches (addWatch needs ZooKeeper 3.6 or newer); \
         set `watch = \"oneshot\"` in [zookeeper]"
    )]
    PersistentUnsupported,
    #[error("zookeeper at {hosts}: authentication failed")]
    AuthFailed { hosts: String },
    #[error("reading zookeeper credentials_file {}", .path.display())]
    Credentials {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("zookeeper at {hosts}: no session within {}: {cause}", probe::secs(*.timeout))]
    ConnectTimeout { hosts: String, timeout: Duration, cause: String },
    /// A `[zookeeper] tls` file cannot be read or is not what it should be (never shows key material).
    #[error("zookeeper tls {what} {}: {reason}", .path.display())]
    Tls { what: &'static str, path: std::path::PathBuf, reason: String },
    /// `[agent] report`: the report znode `<report>/<id>` belongs to another live session.
    #[error(
        "fleet report {node}: the id is taken by a live agent ({holder}); give this agent another \
         [agent] id, or wait until that agent's session ends"
    )]
    ReportIdTaken { node: String, holder: String },
}

/// Options for [`run`] beyond the config.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Give up connecting at this instant (for `once`/`render`: their `--timeout`, the
    /// duration, for messages); `None` retries forever.
    pub connect_deadline: Option<(tokio::time::Instant, Duration)>,
    /// `[agent] report`: the agent's report znode, claimed at each session's start and kept
    /// up to date beside the watches ([`report`]).
    pub report: Option<report::Report>,
}

/// Runs the source until `stop` is cancelled, the command channel closes, or a fatal error.
///
/// # Errors
/// [`SourceError`] for failures no retry fixes.
pub async fn run(
    cfg: ZkConfig,
    opts: Options,
    mut commands: mpsc::UnboundedReceiver<Command>,
    out: mpsc::Sender<SourceEvent>,
    stop: CancellationToken,
) -> Result<(), SourceError> {
    let hosts = cfg.connect_string();
    let mut deps: Vec<Dep> = Vec::new();
    let mut first = true;
    let mut quiet = probe::Quiet::default();
    let mut report = opts.report.clone();
    loop {
        let Some(client) = connect(&cfg, &hosts, &stop, opts.connect_deadline, &out, &mut quiet).await?
        else {
            return Ok(());
        };
        let outage = quiet.on_connected(tokio::time::Instant::now());
        let attempts = outage.map_or(0, |(attempts, _)| attempts);
        let after = probe::secs(outage.map_or(Duration::ZERO, |(_, lasted)| lasted));
        if first {
            info!(hosts = %hosts, session = %client.session_id(), timeout = ?client.session_timeout(), failed_attempts = attempts, unreachable_for = %after, "connected to zookeeper");
        } else {
            info!(hosts = %hosts, session = %client.session_id(), watches = deps.len(), failed_attempts = attempts, unreachable_for = %after, "new zookeeper session; re-establishing every watch");
        }
        // The report znode first: an id taken by another live agent stops the agent before it
        // writes any file.
        let claimed = match &mut report {
            Some(rep) => report::start(&client, rep, &cfg, first).await?,
            None => false,
        };
        first = false;
        let _ = out.send(SourceEvent::Connection(Connection::Connected)).await;
        let mut session =
            Session::new(client, &hosts, cfg.watch, out.clone(), stop.child_token(), cfg.session_timeout);
        if let Some(rep) = &report {
            session.keep_report(rep.clone(), report::authenticated(&cfg), claimed);
        }
        for dep in &deps {
            session.watch(dep.clone());
        }
        let ended = session.serve(&mut commands, &mut deps, &stop).await;
        session.shutdown().await;
        match ended {
            SessionEnd::Shutdown => return Ok(()),
            SessionEnd::Fatal(e) => return Err(e),
            SessionEnd::Expired => {
                error!(hosts = %hosts, "zookeeper session expired; opening a new session (files keep their last good contents)");
                let _ = out.send(SourceEvent::Connection(Connection::Expired)).await;
            }
        }
    }
}

/// The longest pause between connection attempts, in a session (the library's reconnects) and
/// between sessions (`connect`): files converge soon after a server serves again, whatever the
/// session timeout, at the price of a few attempts a second while none does.
const RETRY_CONNECT: Duration = Duration::from_millis(250);

/// Connects, retrying every [`RETRY_CONNECT`] until `deadline`. `Ok(None)` when stopped first.
///
/// After a failed attempt each host is probed for the precise cause, which goes to the
/// pipeline at every attempt and to the log as [`probe::Quiet`] says: the first failure,
/// a new cause, then a reminder a minute.
async fn connect(
    cfg: &ZkConfig,
    hosts: &str,
    stop: &CancellationToken,
    deadline: Option<(tokio::time::Instant, Duration)>,
    out: &mpsc::Sender<SourceEvent>,
    quiet: &mut probe::Quiet,
) -> Result<Option<zk::Client>, SourceError> {
    use tokio::time::Instant;
    if cfg.tls.is_some() {
        tls::install_default_provider();
    }
    loop {
        let mut connector = zk::Client::connector()
            .with_session_timeout(cfg.session_timeout)
            .with_connection_timeout(cfg.session_timeout.min(Duration::from_secs(5)))
            // Files converge soon after a server is back, whatever the session timeout: the
            // library's pause between attempts otherwise doubles up to the session timeout.
            .with_max_reconnect_delay(RETRY_CONNECT)
            .with_fail_eagerly();
        if let Some(auth) = &cfg.auth {
            // Read at each attempt, so a rotated secret is picked up; never logged.
            let secret = read_credentials(&auth.credentials_file)?;
            connector = connector.with_auth(&auth.scheme, &secret);
        }
        // Also read at each attempt; with TLS every host is connected to over TLS.
        let tls = cfg.tls.as_ref().map(tls::read).transpose()?;
        let probe_tls = tls.as_ref().map(|tls| tls.probe.clone());
        let connecting = async {
            match tls {
                Some(tls) => connector.with_tls(tls.options).secure_connect(hosts).await,
                None => connector.connect(hosts).await,
            }
        };
        // An attempt never outlasts the deadline: `once --timeout` is the whole budget.
        let mut limit = cfg.session_timeout * 2;
        if let Some((at, _)) = deadline {
            limit = limit.min(at.saturating_duration_since(Instant::now()).max(Duration::from_millis(100)));
        }
        let attempt = tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            r = tokio::time::timeout(limit, connecting) => r,
        };
        let why = match attempt {
            Ok(Ok(client)) => return Ok(Some(client)),
            Ok(Err(zk::Error::AuthFailed)) => {
                error!(hosts = %hosts, "cannot connect to zookeeper: authentication failed (check [zookeeper] auth)");
                return Err(SourceError::AuthFailed { hosts: hosts.to_owned() });
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no session within {}", probe::secs(limit)),
        };
        let cause = tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            c = probe::probe(&cfg.hosts, probe_tls, &why) => c,
        };
        let cause = if cause.is_empty() { why } else { cause };
        let _ = out.send(SourceEvent::Unreachable { cause: cause.clone() }).await;
        let now = Instant::now();
        match quiet.on_failure(now, &cause) {
            probe::Say::First => {
                error!(hosts = %hosts, error = %cause, "cannot connect to zookeeper; files keep their last good contents; retrying (reminder once a minute)");
            }
            probe::Say::Changed => {
                error!(hosts = %hosts, error = %cause, attempts = quiet.attempts(), unreachable_for = %probe::secs(quiet.lasted(now)), "cannot connect to zookeeper, for another reason now; retrying");
            }
            probe::Say::Reminder => {
                error!(hosts = %hosts, error = %cause, attempts = quiet.attempts(), unreachable_for = %probe::secs(quiet.lasted(now)), "still cannot connect to zookeeper; files keep their last good contents; retrying");
            }
            probe::Say::Nothing => {
                debug!(hosts = %hosts, error = %cause, attempts = quiet.attempts(), "cannot connect to zookeeper; retrying");
            }
        }
        // The same pause as the library's within a session: a session that expired while no
        // server served is replaced within RETRY_CONNECT of one serving again. Jittered over
        // its upper half, so that a fleet whose ensemble went away does not come back in step.
        let mut pause = RETRY_CONNECT.mul_f64(rand::random_range(0.5..=1.0));
        if let Some((at, _)) = deadline {
            pause = pause.min(at.saturating_duration_since(Instant::now()));
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(pause) => {}
        }
        if let Some((at, timeout)) = deadline
            && Instant::now() >= at
        {
            return Err(SourceError::ConnectTimeout { hosts: hosts.to_owned(), timeout, cause });
        }
    }
}

/// The `credentials_file` contents without the trailing newline editors add.
fn read_credentials(path: &std::path::Path) -> Result<Vec<u8>, SourceError> {
    let mut bytes =
        std::fs::read(path).map_err(|source| SourceError::Credentials { path: path.to_owned(), source })?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(bytes)
}

enum SessionEnd {
    Shutdown,
    Expired,
    Fatal(SourceError),
}

/// One session's watch loops.
///
/// They are polled in ONE task (the source's), through a `FuturesUnordered`, which polls
/// woken futures in the order they were woken. The client library wakes a watcher for each
/// notification and a reader for each answer in the order the server sent them, so a loop
/// whose watch fired announces its re-read ([`SourceEvent::Reading`]) before a loop whose
/// read answered later sends that value: the order the snapshot rule relies on
/// (`Core::blocked`). Separate tasks would give the runtime's scheduler the last word on
/// that order (measured: mixed pairs in 3 of 33 contents).
struct Session {
    /// The connect string, for messages.
    hosts: String,
    /// The client, channel and settings every watch task of this session uses.
    shared: Arc<watch::Shared>,
    stop: CancellationToken,
    /// The watch loops, one per dependency, and the report and snapshot reads beside them.
    tasks: FuturesUnordered<Guarded>,
    /// Per dependency: how to stop its loop or make it re-read.
    watching: HashMap<Dep, Arc<watch::Ctl>>,
    /// Loops to start and resync re-reads to ask for, each as a reading slot frees
    /// (see [`watch::READS_AT_ONCE`]).
    queued: VecDeque<Queued>,
}

/// Room the queue of [`Session::queued`] keeps once it is empty.
const QUEUE_KEPT: usize = 64;

enum Queued {
    Start(Dep, Arc<watch::Ctl>),
    Poke(Arc<watch::Ctl>),
}

impl Session {
    fn new(
        client: zk::Client,
        hosts: &str,
        mode: WatchMode,
        out: mpsc::Sender<SourceEvent>,
        stop: CancellationToken,
        session_timeout: Duration,
    ) -> Self {
        // Long enough for a slow ensemble, short enough that a dead connection is retried.
        let call_timeout = session_timeout.max(Duration::from_secs(1));
        Session {
            hosts: hosts.to_owned(),
            shared: Arc::new(watch::Shared {
                client,
                mode,
                out,
                call_timeout,
                admission: watch::Admission::new(watch::READS_AT_ONCE),
            }),
            stop,
            tasks: FuturesUnordered::new(),
            watching: HashMap::new(),
            queued: VecDeque::new(),
        }
    }

    /// Starts watching `dep` (its loop starts once a reading slot is free, see [`Session::admit`]).
    fn watch(&mut self, dep: Dep) {
        if self.watching.contains_key(&dep) {
            return;
        }
        let ctl = Arc::new(watch::Ctl::default());
        self.watching.insert(dep.clone(), ctl.clone());
        self.queued.push_back(Queued::Start(dep, ctl));
    }

    /// Starts queued loops and asks for queued re-reads while reading slots are free. A
    /// dependency dropped meanwhile is skipped (its `Ctl` is stopped).
    fn admit(&mut self) {
        while let Some(next) = self.queued.pop_front() {
            let (Queued::Start(_, ctl) | Queued::Poke(ctl)) = &next;
            if ctl.is_stopped() {
                continue;
            }
            if !self.shared.admission.try_take() {
                self.queued.push_front(next);
                return;
            }
            match next {
                Queued::Start(dep, ctl) => {
                    let ctx = watch::WatchCtx { shared: self.shared.clone(), ctl };
                    let slot = watch::Slot::taken(self.shared.clone());
                    self.tasks.push(guarded(watch::run(ctx, dep, slot)));
                }
                Queued::Poke(ctl) => {
                    // Already poked and not yet re-read: one re-read answers both.
                    if !ctl.poke() {
                        self.shared.admission.release();
                    }
                }
            }
        }
        // All admitted. A start or a resync queued every dependency at once (10,000 entries
        // are 0.5 MiB); the queue does not keep that room until the next one.
        if self.queued.capacity() > QUEUE_KEPT {
            self.queued.shrink_to(QUEUE_KEPT);
        }
    }

    /// Runs the report task ([`report::keep`]) beside the watch loops, polled with them.
    fn keep_report(&mut self, report: report::Report, authenticated: bool, claimed: bool) {
        let keep = report::keep(self.shared.clone(), report, authenticated, claimed, self.stop.child_token());
        self.tasks.push(guarded(watch::Loop::task(keep)));
    }

    fn unwatch(&mut self, dep: &Dep) {
        if let Some(ctl) = self.watching.remove(dep)
            && ctl.stop()
        {
            // It was poked and will not re-read now: the slot taken for that comes back here.
            self.shared.admission.release();
        }
    }

    async fn serve(
        &mut self,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        deps: &mut Vec<Dep>,
        stop: &CancellationToken,
    ) -> SessionEnd {
        let mut state = self.shared.client.state_watcher();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return SessionEnd::Shutdown,
                cmd = commands.recv() => match cmd {
                    None => return SessionEnd::Shutdown,
                    Some(Command::Watch(new)) => {
                        for dep in new {
                            if !self.watching.contains_key(&dep) {
                                deps.push(dep.clone());
                                self.watch(dep);
                            }
                        }
                        self.admit();
                    }
                    Some(Command::Unwatch(old)) => {
                        for dep in &old {
                            self.unwatch(dep);
                        }
                        deps.retain(|d| !old.contains(d));
                    }
                    Some(Command::ReadSnapshot(deps)) => {
                        let shared = self.shared.clone();
                        let stop = self.stop.child_token();
                        let read = async move {
                            tokio::select! {
                                _ = stop.cancelled() => {}
                                _ = watch::read_snapshot(&shared, deps) => {}
                            }
                            watch::Ended::Stopped
                        };
                        self.tasks.push(guarded(watch::Loop::task(read)));
                    }
                    Some(Command::Resync) => {
                        debug!(watches = self.watching.len(), "resync: re-reading every dependency");
                        self.queued.extend(self.watching.values().map(|ctl| Queued::Poke(ctl.clone())));
                        self.admit();
                    }
                },
                s = state.changed() => match s {
                    zk::SessionState::Disconnected => {
                        warn!("zookeeper connection lost; files keep their last good contents; reconnecting");
                        let _ = self.shared.out.send(SourceEvent::Connection(Connection::Disconnected)).await;
                    }
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                        info!(session = %self.shared.client.session_id(), "zookeeper connection restored (same session)");
                        let _ = self.shared.out.send(SourceEvent::Connection(Connection::Connected)).await;
                    }
                    zk::SessionState::AuthFailed => {
                        return SessionEnd::Fatal(SourceError::AuthFailed { hosts: self.hosts.clone() });
                    }
                    zk::SessionState::Expired | zk::SessionState::Closed => return SessionEnd::Expired,
                },
                _ = poll_fn(|cx| self.shared.admission.poll_free(cx)), if !self.queued.is_empty() => self.admit(),
                Some(joined) = self.tasks.next() => match joined {
                    Ok(watch::Ended::Fatal(e)) => return SessionEnd::Fatal(e),
                    Ok(watch::Ended::SessionOver) => return SessionEnd::Expired,
                    Ok(watch::Ended::Stopped) => {}
                    Err(_) => {
                        error!("bug: a watch loop panicked; opening a new session to recover");
                        return SessionEnd::Expired;
                    }
                },
            }
        }
    }

    async fn shutdown(mut self) {
        self.stop.cancel();
        for ctl in self.watching.values() {
            ctl.stop();
        }
        while self.tasks.next().await.is_some() {}
    }
}

/// A boxed watch loop (or report, or snapshot read) whose panic becomes `Err`: the session
/// replaces the client instead of the agent going down.
type Guarded = CatchUnwind<AssertUnwindSafe<watch::Loop>>;

fn guarded(task: watch::Loop) -> Guarded {
    AssertUnwindSafe(task).catch_unwind()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_labels_are_stable() {
        // /status, metrics and `once`'s summary show these; they are part of the interface.
        assert_eq!(Connection::Connected.as_str(), "connected");
        assert_eq!(Connection::Disconnected.as_str(), "disconnected");
        assert_eq!(Connection::Expired.to_string(), "expired");
        assert_eq!(Connection::label(None), "connecting");
        assert_eq!(Connection::label(Some(Connection::Expired)), "expired");
    }
}
