//! Operating the agent: what an operator, a supervisor or a scraper sees of it.
//!
//! Beside the pipeline, not in it. The pipeline publishes a [`StatusReport`] on a
//! `tokio::sync::watch` channel and bumps counters in [`metrics()`]; this module only
//! reads those:
//!
//! ```text
//! pipeline --watch<Arc<StatusReport>>--> http::serve --> /healthz /readyz /metrics /status
//!     \--counters--> metrics()  ---------------^                              |
//! zkrender status --fetch_status (GET /status)--------------------------------+--> render_table
//! runtime --> systemd::notify_ready / notify_stopping (READY=1 once every file is written)
//! ```
//!
//! - `metrics`: the process-global Prometheus registry.
//! - `http`: the HTTP endpoint (hyper 1, HTTP/1.1, GET only); [`endpoint`] keeps it on the
//!   address `[agent] listen` names, across config reloads.
//! - `table`: the `zkrender status` table, and the client that fetches the report.
//! - `systemd`: `sd_notify(3)` messages; no-ops outside systemd.
//!
//! What this module must not do: change what the agent does. Nothing here writes files,
//! talks to ZooKeeper or decides readiness; it reports what the pipeline decided, so a
//! failing endpoint can never stop or stall the pipeline.
//!
//! [`StatusReport`]: crate::status::StatusReport

pub mod http;
pub mod metrics;
pub mod systemd;
pub mod table;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::status::StatusReport;

pub use http::{bind, serve};
pub use metrics::{Metrics, Outcome, ReloadKind, metrics};
pub use table::{fetch_status, render_table};

/// Failures of the operator-facing side. Every variant names the address or URL.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    /// The endpoint's address could not be bound (in use, no permission, not an address).
    #[error("binding the HTTP endpoint to {addr}")]
    Bind {
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The HTTP client could not be built (TLS backend initialisation).
    #[error("building the HTTP client for {url}")]
    Client {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// `listen` does not make a valid URL (`host:port` expected).
    #[error("[agent] listen = \"{listen}\" does not make a valid URL ({url})")]
    InvalidListen {
        listen: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// Nothing answered: refused connection, reset, unknown host.
    #[error("no answer from {url} (is zkrender running with [agent] listen = \"{listen}\"?)")]
    Unreachable {
        listen: String,
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// Something accepted the connection but did not answer in time.
    #[error("no answer from {url} within {}", humantime::format_duration(*.timeout))]
    Timeout {
        url: String,
        timeout: Duration,
        #[source]
        source: reqwest::Error,
    },
    /// An answer, but not a 200.
    #[error("{url} answered {status}")]
    Status { url: String, status: reqwest::StatusCode },
    /// The body could not be read to the end.
    #[error("reading the answer from {url}")]
    Body {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    /// A 200 whose body is not a status report: probably another service on that port.
    #[error("{url} did not answer with a zkrender status report (is another service listening on {listen}?)")]
    Decode {
        listen: String,
        url: String,
        #[source]
        source: serde_json::Error,
    },
}

/// Seconds since the Unix epoch now, as the `f64` that [`StatusReport`] times use
/// (see [`crate::status::unix_seconds`]).
///
/// [`StatusReport`]: crate::status::StatusReport
pub fn unix_now() -> f64 {
    crate::status::unix_seconds(SystemTime::now())
}

/// One `serve` in progress: its address, its own stop token and the future itself.
struct Serving {
    addr: String,
    stop: CancellationToken,
    future: Pin<Box<dyn Future<Output = std::io::Result<()>> + Send>>,
}

impl Serving {
    fn new(
        listener: TcpListener,
        addr: String,
        status: &watch::Receiver<Arc<StatusReport>>,
        alive: &Arc<AtomicBool>,
        parent: &CancellationToken,
    ) -> Serving {
        let stop = parent.child_token();
        let alive = Arc::clone(alive);
        let future =
            Box::pin(serve(listener, status.clone(), move || alive.load(Ordering::SeqCst), stop.clone()));
        Serving { addr, stop, future }
    }

    /// Stops accepting and lets open connections finish (see [`serve`]); the port is free
    /// when this returns.
    async fn close(self) {
        self.stop.cancel();
        if let Err(e) = self.future.await {
            warn!(listen = %self.addr, error = %e, "the HTTP endpoint stopped with an error");
        }
    }
}

/// The HTTP endpoint for the agent's whole life: serves on `first` (already bound by the
/// caller, so that a taken address fails start-up), then follows `[agent] listen` as config
/// reloads send it on `listen`: a new address is bound before the old one closes (no gap), and
/// `None` (`listen = ""`) closes the endpoint. A new address that cannot be bound is refused
/// with a warning naming the key, and the endpoint stays where it was; the same value sent again
/// (the next config reload) tries again. Returns once `stop` is cancelled and the open
/// connections are done.
///
/// `alive` answers `/healthz`.
pub async fn endpoint(
    first: Option<TcpListener>,
    mut listen: watch::Receiver<Option<String>>,
    status: watch::Receiver<Arc<StatusReport>>,
    alive: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let mut current = first.map(|listener| {
        let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
        Serving::new(listener, listen.borrow_and_update().clone().unwrap_or(addr), &status, &alive, &stop)
    });
    listen.mark_unchanged();
    let mut reloads_over = false;
    loop {
        // All three are cancel safe: `cancelled` and `changed` lose nothing when dropped, and
        // the serve future is polled through a reference, never dropped by the select.
        tokio::select! {
            () = stop.cancelled() => break,
            result = async { match current.as_mut() { Some(s) => (&mut s.future).await, None => std::future::pending().await } } => {
                let addr = current.take().map(|s| s.addr).unwrap_or_default();
                match result {
                    Ok(()) => {}
                    Err(e) => error!(listen = %addr, error = %e, "the HTTP endpoint stopped"),
                }
            }
            changed = listen.changed(), if !reloads_over => {
                if changed.is_err() {
                    reloads_over = true; // no config reloader (any more): keep what there is
                    continue;
                }
                let wanted = listen.borrow_and_update().clone();
                current = follow(current, wanted, &status, &alive, &stop).await;
            }
        }
    }
    if let Some(serving) = current {
        serving.close().await;
    }
}

/// Moves the endpoint from `current` to `wanted`; returns what serves afterwards.
async fn follow(
    current: Option<Serving>,
    wanted: Option<String>,
    status: &watch::Receiver<Arc<StatusReport>>,
    alive: &Arc<AtomicBool>,
    stop: &CancellationToken,
) -> Option<Serving> {
    let Some(addr) = wanted else {
        if let Some(serving) = current {
            info!(listen = %serving.addr, "[agent] listen = \"\": closing the HTTP endpoint");
            serving.close().await;
        }
        return None;
    };
    if current.as_ref().is_some_and(|s| s.addr == addr) {
        return current;
    }
    let from = current.as_ref().map(|s| s.addr.clone());
    let mut current = current;
    let mut bound = bind(&addr).await;
    // 0.0.0.0:9102 -> 127.0.0.1:9102 overlaps the old socket: free it, then try again.
    if let (Err(OpsError::Bind { source, .. }), Some(_)) = (&bound, &current)
        && source.kind() == std::io::ErrorKind::AddrInUse
        && let Some(old) = current.take()
    {
        let old_addr = old.addr.clone();
        old.close().await;
        bound = bind(&addr).await;
        if bound.is_err() {
            // Put the endpoint back where it was, if that still works.
            match bind(&old_addr).await {
                Ok(listener) => current = Some(Serving::new(listener, old_addr, status, alive, stop)),
                Err(e) => {
                    error!(listen = %old_addr, error = %crate::model::report(&e), "the HTTP endpoint is closed");
                }
            }
        }
    }
    match bound {
        Ok(listener) => {
            if let Some(old) = current.take() {
                old.close().await;
            }
            info!(listen = %addr, from = from.as_deref().unwrap_or("(disabled)"), "[agent] listen changed: the HTTP endpoint moved");
            Some(Serving::new(listener, addr, status, alive, stop))
        }
        Err(e) => {
            warn!(
                key = "[agent] listen",
                listen = %addr,
                error = %crate::model::report(&e),
                "[agent] listen changed but the new address cannot be bound; the HTTP endpoint stays at {}",
                current.as_ref().map_or("(disabled)", |s| s.addr.as_str())
            );
            current
        }
    }
}
