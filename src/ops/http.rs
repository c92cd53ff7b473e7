//! The agent's HTTP endpoint: liveness, readiness, metrics and status for supervisors,
//! scrapers and `zkrender status`.
//!
//! | route      | 200 when                        | body                                  |
//! |------------|---------------------------------|---------------------------------------|
//! | `/healthz` | the `alive` closure says so     | `ok` (503: `not alive`)               |
//! | `/readyz`  | the report says `ready`         | JSON: pending files, or degraded flag |
//! | `/metrics` | always                          | OpenMetrics text                      |
//! | `/status`  | always                          | the [`StatusReport`] as pretty JSON   |
//!
//! GET only (others 405); unknown paths 404. Every answer is computed from the latest
//! report on the `watch` channel, read once per request and never held across an
//! await, so the endpoint cannot block the pipeline that publishes it.
//!
//! Readiness is sticky by design of the report, not of this module: once every file has
//! been written, a ZooKeeper outage keeps `/readyz` at 200 with `"degraded": true`. The
//! files on disk are still the last good ones, and restarting or unrouting the pod
//! would not bring ZooKeeper back. A file that is stale (its last install, render or check
//! failed, or its znode is gone) is degraded the same way, and `/readyz` names it.

use std::convert::Infallible;
use std::io;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::metrics::{self, metrics};
use super::{OpsError, unix_now};
use crate::status::StatusReport;

/// A client that has not sent a complete request head by then is dropped (slowloris).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// After cancellation, how long open connections may take to finish their response.
/// Handlers answer from memory, so only a stalled client can use it up.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Longest pause between retries of a failing `accept` (file descriptors exhausted).
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);

/// The `alive` check, shared by every connection.
type Alive = Arc<dyn Fn() -> bool + Send + Sync>;

/// Binds the endpoint's listening socket.
///
/// Separate from [`serve`] so that a taken port fails startup (where it is fatal and
/// reported with the address) rather than surfacing later from a background task.
///
/// # Errors
/// [`OpsError::Bind`] naming `addr`: address in use, permission denied, not an address.
pub async fn bind(addr: &str) -> Result<TcpListener, OpsError> {
    TcpListener::bind(addr).await.map_err(|source| {
        // Typically a second agent on the host with the default address: name the key and
        // the fix, since the agent cannot choose another port by itself.
        let source = if source.kind() == io::ErrorKind::AddrInUse {
            io::Error::new(
                io::ErrorKind::AddrInUse,
                "address already in use (by another process, perhaps a second zkrender on this \
                 host): set [agent] listen = \"\" to turn the HTTP endpoint off, or give \
                 [agent] listen another port",
            )
        } else {
            source
        };
        OpsError::Bind { addr: addr.to_owned(), source }
    })
}

/// Serves the endpoint on `listener` until `stop` is cancelled.
///
/// One task per connection. On cancellation it stops accepting, lets each open
/// connection finish the response in progress (idle keep-alive connections close at
/// once), waits up to 5 s for that, and returns.
///
/// `status` is the pipeline's latest report; `alive` answers `/healthz` and should be
/// cheap (it runs on every probe).
///
/// # Errors
/// Only when the listener itself is unusable (`accept` reports an invalid socket).
/// Transient `accept` failures, such as a client resetting before the accept or
/// running out of file descriptors, are logged and retried with backoff: a busy or
/// misbehaving scraper must not take the endpoint down.
///
/// # Cancel safety
/// Dropping the future instead of cancelling `stop` drops the accept loop, but
/// connection tasks already spawned are aborted with it (they live in a `JoinSet`).
pub async fn serve(
    listener: TcpListener,
    status: watch::Receiver<Arc<StatusReport>>,
    alive: impl Fn() -> bool + Send + Sync + 'static,
    stop: CancellationToken,
) -> io::Result<()> {
    let alive: Alive = Arc::new(alive);
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    if let Ok(addr) = listener.local_addr() {
        info!(listen = %addr, "http endpoint listening");
    }

    let mut connections = JoinSet::new();
    let mut backoff = Duration::ZERO;
    let result = loop {
        // Both branches are cancel safe: `accept` loses no connection when dropped.
        let accepted = tokio::select! {
            () = stop.cancelled() => break Ok(()),
            accepted = listener.accept() => accepted,
        };
        // Reap finished connection tasks so the set does not grow with every request.
        while connections.try_join_next().is_some() {}
        match accepted {
            Ok((stream, peer)) => {
                backoff = Duration::ZERO;
                let conn = serve_connection(
                    builder.clone(),
                    stream,
                    status.clone(),
                    Arc::clone(&alive),
                    stop.clone(),
                );
                connections.spawn(async move {
                    if let Err(err) = conn.await {
                        debug!(peer = %peer, error = %err, "http connection ended with an error");
                    }
                });
            }
            Err(err) if err.kind() == io::ErrorKind::InvalidInput => break Err(err),
            Err(err) if is_per_connection(&err) => {
                debug!(error = %err, "accept failed for one connection");
            }
            Err(err) => {
                backoff = (backoff * 2).clamp(Duration::from_millis(10), MAX_ACCEPT_BACKOFF);
                warn!(error = %err, retry_in = ?backoff, "http endpoint cannot accept connections");
                tokio::select! {
                    () = stop.cancelled() => break Ok(()),
                    () = tokio::time::sleep(backoff) => {}
                }
            }
        }
    };

    // Connection tasks saw the same cancellation and are shutting down gracefully.
    let drained =
        tokio::time::timeout(SHUTDOWN_GRACE, async { while connections.join_next().await.is_some() {} })
            .await;
    if drained.is_err() {
        debug!(open = connections.len(), "http connections still open after grace; dropping them");
        connections.shutdown().await;
    }
    result
}

/// Errors of `accept` that concern one connection, not the listener: retry at once.
fn is_per_connection(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Serves one connection, shutting it down gracefully when `stop` is cancelled.
async fn serve_connection(
    builder: http1::Builder,
    stream: TcpStream,
    status: watch::Receiver<Arc<StatusReport>>,
    alive: Alive,
    stop: CancellationToken,
) -> hyper::Result<()> {
    let service = service_fn(move |req: Request<Incoming>| {
        // Clone the Arc and release the watch lock before anything else runs.
        let report = Arc::clone(&status.borrow());
        let response = respond(req.method(), req.uri().path(), &report, &*alive);
        async move { Ok::<_, Infallible>(response) }
    });
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => result,
        () = stop.cancelled() => {
            // Finish the response in progress, then close; an idle connection closes now.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    }
}

/// The answer to one request. Pure but for `/metrics`, which updates and reads the
/// global registry and the clock.
fn respond(
    method: &Method,
    path: &str,
    report: &StatusReport,
    alive: &dyn Fn() -> bool,
) -> Response<Full<Bytes>> {
    let route = match path {
        "/healthz" | "/readyz" | "/metrics" | "/status" => path,
        _ => return text(StatusCode::NOT_FOUND, "not found\n"),
    };
    if method != Method::GET {
        let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
        response.headers_mut().insert(ALLOW, HeaderValue::from_static("GET"));
        return response;
    }
    match route {
        "/healthz" if alive() => text(StatusCode::OK, "ok\n"),
        "/healthz" => text(StatusCode::SERVICE_UNAVAILABLE, "not alive\n"),
        "/readyz" => readyz(report),
        "/metrics" => {
            let m = metrics();
            m.update_from_report(report, unix_now());
            with_type(StatusCode::OK, metrics::CONTENT_TYPE, m.encode().into())
        }
        _ => match serde_json::to_vec_pretty(report) {
            Ok(body) => with_type(StatusCode::OK, JSON, body.into()),
            Err(err) => {
                // Not reachable with the report's types (serde_json writes NaN as null).
                warn!(error = %err, "serialising the status report failed");
                text(StatusCode::INTERNAL_SERVER_ERROR, "cannot serialise the status report\n")
            }
        },
    }
}

/// `/readyz`: 200 once ready (then possibly degraded, naming each stale file with its cause
/// under `stale`), 503 with what is pending before. Pending while no ZooKeeper session is up:
/// `"reason": "zookeeper"` with why connecting fails per host as `error`, for the agent and
/// for each file still waiting for its znodes.
fn readyz(report: &StatusReport) -> Response<Full<Bytes>> {
    let (status, body) = if report.ready {
        let mut body = json!({
            "ready": true,
            "degraded": report.degraded,
            "zookeeper": report.zookeeper.state,
        });
        let stale: Vec<_> = report
            .stale()
            .map(|f| {
                json!({
                    "dest": f.dest,
                    "reason": f.reason,
                    "error": f.last_error,
                    "stale_since": f.stale_since,
                })
            })
            .collect();
        if !stale.is_empty() {
            body["stale"] = stale.into();
        }
        (StatusCode::OK, body)
    } else {
        // Not connected (and not merely waiting for the first event): ZooKeeper is the reason.
        let unreachable = report.zookeeper.error.as_ref().filter(|_| report.zookeeper.state != "connected");
        let pending: Vec<_> = report
            .pending()
            .map(|f| match unreachable {
                Some(why) if f.state == "pending" => json!({
                    "dest": f.dest,
                    "state": f.state,
                    "reason": "zookeeper",
                    "error": why,
                }),
                _ => json!({
                    "dest": f.dest,
                    "state": f.state,
                    "reason": f.reason,
                    "error": f.last_error,
                }),
            })
            .collect();
        let mut body = json!({ "ready": false, "pending": pending });
        if let Some(why) = unreachable {
            body["reason"] = "zookeeper".into();
            body["error"] = why.as_str().into();
        }
        (StatusCode::SERVICE_UNAVAILABLE, body)
    };
    let mut body = body.to_string();
    body.push('\n');
    with_type(status, JSON, body.into())
}

const JSON: &str = "application/json";

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    with_type(status, "text/plain; charset=utf-8", Bytes::from_static(body.as_bytes()))
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    // Probes and `zkrender status` want the state now, never a cached one.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::FileStatus;
    use http_body_util::BodyExt;

    async fn body(response: Response<Full<Bytes>>) -> String {
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    fn pending_report() -> StatusReport {
        StatusReport {
            files: vec![
                FileStatus {
                    dest: "/etc/a.conf".into(),
                    state: "pending".into(),
                    reason: Some("znode_missing".into()),
                    ..Default::default()
                }
                .into(),
                FileStatus {
                    dest: "/etc/b.conf".into(),
                    state: "ok".into(),
                    settled: true,
                    ..Default::default()
                }
                .into(),
            ],
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn readyz_before_ready_lists_only_pending_files() {
        let response = respond(&Method::GET, "/readyz", &pending_report(), &|| true);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let json: serde_json::Value = serde_json::from_str(&body(response).await).unwrap();
        assert_eq!(
            json,
            json!({"ready": false, "pending": [
                {"dest": "/etc/a.conf", "state": "pending", "reason": "znode_missing", "error": null}
            ]})
        );
    }

    #[tokio::test]
    async fn readyz_before_ready_names_zookeeper_and_why_it_is_unreachable() {
        let mut report = pending_report();
        std::sync::Arc::make_mut(&mut report.files[0]).reason = Some("waiting for znodes to be read".into());
        report.zookeeper = crate::status::ZkStatus {
            state: "connecting".into(),
            error: Some("127.0.0.1:1: connection refused".into()),
            ..Default::default()
        };
        let response = respond(&Method::GET, "/readyz", &report, &|| true);
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let json: serde_json::Value = serde_json::from_str(&body(response).await).unwrap();
        assert_eq!(
            json,
            json!({"ready": false, "reason": "zookeeper", "error": "127.0.0.1:1: connection refused",
                "pending": [{"dest": "/etc/a.conf", "state": "pending", "reason": "zookeeper",
                    "error": "127.0.0.1:1: connection refused"}]})
        );
    }

    #[tokio::test]
    async fn readyz_when_ready_names_each_stale_file_and_its_cause() {
        let stale = FileStatus {
            dest: "/etc/a.conf".into(),
            state: "failed".into(),
            settled: true,
            reason: Some("permission".into()),
            last_error: Some("writing /etc/a.conf: denied".into()),
            stale_since: Some(12.5),
            ..Default::default()
        };
        let ok = FileStatus {
            dest: "/etc/b.conf".into(),
            state: "ok".into(),
            settled: true,
            ..Default::default()
        };
        let report = StatusReport {
            ready: true,
            degraded: true,
            zookeeper: crate::status::ZkStatus { state: "connected".into(), ..Default::default() },
            files: vec![stale.into(), ok.into()],
        };
        let response = respond(&Method::GET, "/readyz", &report, &|| true);
        assert_eq!(response.status(), StatusCode::OK, "readiness stays once every file was written");
        let json: serde_json::Value = serde_json::from_str(&body(response).await).unwrap();
        assert_eq!(
            json,
            json!({"ready": true, "degraded": true, "zookeeper": "connected", "stale": [
                {"dest": "/etc/a.conf", "reason": "permission", "error": "writing /etc/a.conf: denied", "stale_since": 12.5}
            ]})
        );
    }

    #[test]
    fn unknown_path_is_404_even_for_other_methods() {
        let response = respond(&Method::POST, "/nope", &StatusReport::default(), &|| true);
        assert_eq!(response.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn non_get_is_405_with_allow_header() {
        let response = respond(&Method::POST, "/status", &StatusReport::default(), &|| true);
        assert_eq!(response.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(response.headers()[ALLOW], "GET");
    }

    #[test]
    fn healthz_does_not_look_at_readiness() {
        let response = respond(&Method::GET, "/healthz", &pending_report(), &|| true);
        assert_eq!(response.status(), StatusCode::OK);
    }
}
