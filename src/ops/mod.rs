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
//! - `http`: the HTTP endpoint (hyper 1, HTTP/1.1, GET only).
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

use std::time::{Duration, SystemTime};

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
