//! The agent's HTTP endpoint from a test: [`Endpoint::of`] finds the address an agent bound
//! (configure it with `ConfigBuilder::listen("127.0.0.1:0")`) in its log, then plain blocking
//! HTTP/1.0 GETs read `/readyz`, `/status` and `/metrics`.
//!
//! ```ignore
//! let agent = Agent::run(&env.config().listen("127.0.0.1:0").write(&files));
//! let ops = Endpoint::of(&agent);
//! let (code, body) = ops.json("/readyz");
//! assert_eq!(ops.metric("zkrender_ready"), Some(1.0));
//! ```

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use super::Agent;

/// The log line that carries the bound address as `listen=ADDR`.
pub const LISTEN_LOG: &str = "serving /healthz /readyz /metrics /status";

/// One agent's HTTP endpoint.
#[derive(Clone, Debug)]
pub struct Endpoint {
    addr: String,
}

impl Endpoint {
    /// The endpoint `agent` serves, once it has logged its address (panics after 15 s).
    pub fn of(agent: &Agent) -> Endpoint {
        agent.wait_for_log(LISTEN_LOG, Duration::from_secs(15));
        let log = agent.log();
        let line = log.lines().find(|l| l.contains(LISTEN_LOG)).expect("the line just waited for");
        let addr = line
            .split_whitespace()
            .find_map(|word| word.strip_prefix("listen="))
            .unwrap_or_else(|| panic!("no listen= in {line:?}"))
            .trim_matches('"')
            .to_string();
        Endpoint { addr }
    }

    /// The address, e.g. `127.0.0.1:40123`.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `GET path`: the status code and the body; panics if the agent does not answer in 5 s.
    pub fn get(&self, path: &str) -> (u16, String) {
        let addr = &self.addr;
        let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        write!(stream, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
        let mut reply = String::new();
        stream.read_to_string(&mut reply).unwrap_or_else(|e| panic!("GET {path}: {e}"));
        let (head, body) = reply.split_once("\r\n\r\n").unwrap_or_else(|| panic!("GET {path}: {reply:?}"));
        let code = head
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("GET {path}: no status in {head:?}"));
        (code, body.to_string())
    }

    /// `GET path` parsed as JSON.
    pub fn json(&self, path: &str) -> (u16, serde_json::Value) {
        let (code, body) = self.get(path);
        let json = serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {path}: {e}: {body:?}"));
        (code, json)
    }

    /// One scrape of `/metrics`.
    pub fn metrics(&self) -> String {
        let (code, text) = self.get("/metrics");
        assert_eq!(code, 200, "/metrics: {text}");
        text
    }

    /// The value of the sample `series` (name plus labels exactly as exposed, e.g.
    /// `zkrender_file_up_to_date{dest="/x"}`) in a new scrape, if present.
    pub fn metric(&self, series: &str) -> Option<f64> {
        sample(&self.metrics(), series)
    }
}

/// The value of the sample `series` in the scrape `text`, if present.
pub fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let value = line.strip_prefix(series)?.strip_prefix(' ')?;
        value.split_whitespace().next()?.parse().ok()
    })
}
