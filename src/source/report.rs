//! The fleet report on the ZooKeeper side (`[agent] report`, see `crate::fleet`): the agent's
//! own report znode, and the reader `zkrender fleet` uses.
//!
//! The agent's report is one EPHEMERAL znode `<report>/<id>`, owned by the session the
//! agent watches with: it disappears when that session ends, so the list of reports is the
//! list of live agents. At the start of every session [`claim`] creates it (and its parents,
//! persistent, when missing); if it exists and belongs to another session, the id is taken:
//! at the agent's start that is an error naming the holder ([`super::SourceError::ReportIdTaken`]),
//! unless the holder is this agent's own previous run (same host, its process gone: killed
//! and restarted before its session expired), whose report is replaced; on a later session (the holder took it while this agent's session was expired) it is logged
//! and tried again. [`keep`] then runs beside the watch loops and writes each new report
//! (one `setData`) when `crate::fleet::publish` produces one; it is never on the route
//! between a watch event and an install.
//!
//! ACL: with `[zookeeper] auth` (or a TLS client certificate, whose x509 identity the server
//! may authenticate) the znodes are created with `auth:cdrwa` (the agents' identity) plus
//! `world:anyone:r`; without, `world:anyone:cdrwa`. README's "Fleet report" section shows
//! the ACL to set on the report path so that agents can write there and nowhere else.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use zookeeper_client as zk;

use super::{SourceError, SourceEvent, probe, watch as watches};
use crate::config::ZkConfig;
use crate::fleet::{self, view};
use crate::model::ZnodePath;

/// The agent's report, as the source keeps it.
#[derive(Debug, Clone)]
pub struct Report {
    /// `<report>/<id>`.
    pub node: ZnodePath,
    /// The report's bytes, newest last; written after each change.
    pub doc: watch::Receiver<Arc<Vec<u8>>>,
}

/// Why a report znode could not be claimed.
#[derive(Debug)]
pub(super) enum ClaimError {
    /// Another live session holds it: who (session, and what its report says).
    Taken(String),
    /// The session ended meanwhile.
    SessionOver,
    /// Anything else (no permission, connection loss): tried again later.
    Failed(String),
}

/// The ACL of the report znode and of parents it creates. `authenticated` when the session
/// carries an identity (digest auth, or a TLS client certificate).
fn acls(authenticated: bool) -> zk::Acls<'static> {
    static AGENTS_AND_READ: [zk::Acl; 2] = [
        zk::Acl::new_const(zk::Permission::ALL, "auth", ""),
        zk::Acl::new_const(zk::Permission::READ, "world", "anyone"),
    ];
    if authenticated { zk::Acls::new(&AGENTS_AND_READ) } else { zk::Acls::anyone_all() }
}

/// True when the session carries an identity the `auth` ACL scheme can use.
pub(super) fn authenticated(cfg: &ZkConfig) -> bool {
    cfg.auth.is_some() || cfg.tls.as_ref().is_some_and(|t| t.cert.is_some())
}

async fn bounded<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, zk::Error>>,
) -> Result<T, zk::Error> {
    tokio::time::timeout(timeout, fut).await.unwrap_or(Err(zk::Error::Timeout))
}

fn session_over(e: &zk::Error) -> bool {
    matches!(e, zk::Error::SessionExpired | zk::Error::ClientClosed | zk::Error::AuthFailed)
}

/// Creates the report znode with the latest report (parents first when missing), or takes
/// it back when it is already this session's.
pub(super) async fn claim(
    client: &zk::Client,
    report: &mut Report,
    authenticated: bool,
    timeout: Duration,
) -> Result<(), ClaimError> {
    let node = report.node.as_str();
    let mut authenticated = authenticated;
    for _ in 0..4 {
        let bytes = report.doc.borrow_and_update().clone();
        let acls = acls(authenticated);
        let created =
            bounded(timeout, client.create(node, &bytes, &zk::CreateMode::Ephemeral.with_acls(acls))).await;
        match created {
            Ok(_) => return Ok(()),
            Err(zk::Error::NoNode) => {
                let parent = node.rsplit_once('/').map_or("/", |(p, _)| p);
                let made =
                    bounded(timeout, client.mkdir(parent, &zk::CreateMode::Persistent.with_acls(acls))).await;
                match made {
                    Ok(()) => info!(znode = parent, "created the fleet report path"),
                    Err(e) if session_over(&e) => return Err(ClaimError::SessionOver),
                    Err(e) => return Err(ClaimError::Failed(format!("creating {parent}: {e}"))),
                }
            }
            Err(zk::Error::InvalidAcl) if authenticated => {
                // A TLS certificate the server does not turn into an identity: no `auth` id.
                warn!(
                    znode = node,
                    "the session has no identity for an `auth` ACL; creating the report readable and writable by anyone"
                );
                authenticated = false;
            }
            Err(zk::Error::NodeExists) => match bounded(timeout, client.get_data(node)).await {
                Ok((_, stat)) if stat.ephemeral_owner == client.session_id().0 => {
                    // Ours (a create retried after a lost answer): bring it up to date.
                    return match bounded(timeout, client.set_data(node, &bytes, None)).await {
                        Ok(_) => Ok(()),
                        Err(e) if session_over(&e) => Err(ClaimError::SessionOver),
                        Err(e) => Err(ClaimError::Failed(format!("writing {node}: {e}"))),
                    };
                }
                Ok((data, stat)) if stat.ephemeral_owner == 0 => {
                    return Err(ClaimError::Taken(format!(
                        "a persistent znode, not an agent's report ({})",
                        fleet::describe_holder(&data)
                    )));
                }
                Ok((data, stat)) if fleet::is_previous_run(&data, &bytes, pid_alive) => {
                    // This agent's own previous run, killed before its session expired:
                    // its report goes now rather than in a session timeout.
                    info!(znode = node, session = %zk::SessionId(stat.ephemeral_owner), "replacing the fleet report of this agent's previous run (same host, its process is gone)");
                    match bounded(timeout, client.delete(node, Some(stat.version))).await {
                        Ok(()) | Err(zk::Error::NoNode | zk::Error::BadVersion) => {}
                        Err(e) if session_over(&e) => return Err(ClaimError::SessionOver),
                        Err(e) => return Err(ClaimError::Failed(format!("deleting {node}: {e}"))),
                    }
                }
                Ok((data, stat)) => {
                    return Err(ClaimError::Taken(format!(
                        "session {}, {}",
                        zk::SessionId(stat.ephemeral_owner),
                        fleet::describe_holder(&data)
                    )));
                }
                // The holder just went away: create it again.
                Err(zk::Error::NoNode) => {}
                Err(e) if session_over(&e) => return Err(ClaimError::SessionOver),
                Err(e) => return Err(ClaimError::Failed(format!("reading {node}: {e}"))),
            },
            Err(e) if session_over(&e) => return Err(ClaimError::SessionOver),
            Err(e) => return Err(ClaimError::Failed(format!("creating {node}: {e}"))),
        }
    }
    Err(ClaimError::Failed(format!("creating {node}: its parent or the znode kept changing")))
}

/// True while a process `pid` exists (signal 0; a process of another user counts).
fn pid_alive(pid: u32) -> bool {
    use nix::sys::signal::kill;
    let Ok(pid) = i32::try_from(pid) else { return false };
    !matches!(kill(nix::unistd::Pid::from_raw(pid), None), Err(nix::errno::Errno::ESRCH))
}

/// Keeps the report znode up to date for one session: each new report is one `setData`.
/// `claimed`: [`claim`] succeeded at the session's start; if not, it is tried again here
/// every few seconds. Ends when `stop` is cancelled or the session is over.
pub(super) async fn keep(
    shared: Arc<watches::Shared>,
    mut report: Report,
    authenticated: bool,
    mut claimed: bool,
    stop: CancellationToken,
) -> watches::Ended {
    let client = &shared.client;
    let timeout = shared.call_timeout;
    let node = report.node.to_string();
    let mut dirty = false;
    let mut said: Option<String> = None;
    loop {
        if !claimed {
            match claim(client, &mut report, authenticated, timeout).await {
                Ok(()) => {
                    info!(znode = %node, "fleet report created");
                    claimed = true;
                    said = None;
                    dirty = false;
                }
                Err(ClaimError::SessionOver) => return watches::Ended::SessionOver,
                Err(ClaimError::Taken(holder)) => {
                    let why = format!("taken by {holder}");
                    if said.as_deref() != Some(why.as_str()) {
                        error!(znode = %node, holder = %holder, "fleet report id is taken by another live agent; trying again every 5s");
                        said = Some(why);
                    }
                }
                Err(ClaimError::Failed(why)) => {
                    if said.as_deref() != Some(why.as_str()) {
                        warn!(znode = %node, error = %why, "cannot write the fleet report; trying again every 5s");
                        said = Some(why);
                    }
                }
            }
            if !claimed {
                tokio::select! {
                    _ = stop.cancelled() => return watches::Ended::Stopped,
                    _ = tokio::time::sleep(Duration::from_secs(5)) => continue,
                }
            }
        }
        if !dirty {
            tokio::select! {
                _ = stop.cancelled() => return watches::Ended::Stopped,
                changed = report.doc.changed() => {
                    if changed.is_err() {
                        // The agent is stopping: its report stays until the session ends.
                        stop.cancelled().await;
                        return watches::Ended::Stopped;
                    }
                }
            }
        }
        let bytes = report.doc.borrow_and_update().clone();
        let written = tokio::select! {
            _ = stop.cancelled() => return watches::Ended::Stopped,
            r = bounded(timeout, client.set_data(&node, &bytes, None)) => r,
        };
        match written {
            Ok(_) => {
                dirty = false;
                said = None;
            }
            Err(e) if session_over(&e) => return watches::Ended::SessionOver,
            Err(zk::Error::NoNode) => {
                warn!(znode = %node, "the fleet report znode was deleted; creating it again");
                claimed = false;
            }
            Err(e @ (zk::Error::ConnectionLoss | zk::Error::Timeout | zk::Error::Custom(_))) => {
                // Written once the connection is back (the newest report by then).
                tracing::debug!(znode = %node, error = %e, "fleet report not written; trying again");
                dirty = true;
                tokio::select! {
                    _ = stop.cancelled() => return watches::Ended::Stopped,
                    _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                }
            }
            Err(e) => {
                // No permission, or the like: said once; the next report tries again.
                let why = e.to_string();
                if said.as_deref() != Some(why.as_str()) {
                    warn!(znode = %node, error = %why, "cannot write the fleet report");
                    said = Some(why);
                }
                dirty = false;
            }
        }
    }
}

/// A ZooKeeper session that reads the fleet's reports (`zkrender fleet`).
pub struct Reader {
    client: zk::Client,
    timeout: Duration,
}

impl Reader {
    /// Connects, trying until `timeout` runs out.
    ///
    /// # Errors
    /// [`SourceError`] when no session can be had (the cause per host), or auth fails.
    pub async fn connect(cfg: &ZkConfig, timeout: Duration) -> Result<Reader, SourceError> {
        let hosts = cfg.connect_string();
        let stop = CancellationToken::new();
        let deadline = Some((tokio::time::Instant::now() + timeout, timeout));
        // The unreachable causes go to the error; nobody else listens.
        let (out, _rx) = tokio::sync::mpsc::channel::<SourceEvent>(64);
        let mut quiet = probe::Quiet::default();
        let client = super::connect(cfg, &hosts, &stop, deadline, &out, &mut quiet)
            .await?
            .expect("bug: the reader's connect is never stopped");
        Ok(Reader { client, timeout: cfg.session_timeout.max(Duration::from_secs(5)) })
    }

    /// Every report under `path`, then the current state of every znode they name (read
    /// after the reports, so no report can be ahead of it).
    ///
    /// # Errors
    /// A read that fails for another reason than a missing znode: its message.
    pub async fn read(&self, path: &ZnodePath) -> Result<view::Read, String> {
        let timeout = self.timeout;
        let ids = match bounded(timeout, self.client.list_children(path.as_str())).await {
            Ok(mut ids) => {
                ids.sort();
                ids
            }
            Err(zk::Error::NoNode) => Vec::new(),
            Err(e) => return Err(format!("listing {path}: {e}")),
        };
        let nodes: Vec<String> =
            ids.iter().map(|id| path.join(id).map(|p| p.to_string()).unwrap_or_default()).collect();
        let reads =
            futures_util::future::join_all(nodes.iter().map(|n| bounded(timeout, self.client.get_data(n))));
        let mut agents = Vec::new();
        for ((id, node), got) in ids.into_iter().zip(&nodes).zip(reads.await) {
            match got {
                Ok((data, _)) => {
                    let report =
                        serde_json::from_slice::<fleet::AgentReport>(&data).map_err(|e| e.to_string());
                    agents.push(view::Found { id, report });
                }
                // Its agent's session ended between the listing and the read.
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(format!("reading {node}: {e}")),
            }
        }
        let named: Vec<(String, bool)> = view::named(&agents).into_iter().collect();
        let stats = futures_util::future::join_all(
            named.iter().map(|(z, _)| bounded(timeout, self.client.check_stat(z))),
        );
        let mut current = std::collections::BTreeMap::new();
        for ((znode, children), stat) in named.into_iter().zip(stats.await) {
            let now = match stat {
                Ok(Some(stat)) => view::Current {
                    zxid: Some(if children { stat.pzxid } else { stat.mzxid }),
                    changed: (!children).then_some(stat.mtime as f64 / 1000.0),
                },
                Ok(None) => view::Current::default(),
                Err(e) => return Err(format!("reading {znode}: {e}")),
            };
            current.insert((znode, children), now);
        }
        Ok(view::Read { report: path.to_string(), agents, current })
    }
}
