//! Why no ZooKeeper host answers. The client library says only "no available hosts" (the same
//! words for a refused connection, a name that does not resolve, a timeout or a TLS failure),
//! so after a failed connect each host is probed the way the library would reach it: resolve
//! (with a timeout), TCP connect (with a timeout), and the TLS handshake when TLS is on. Each
//! host gets one cause: `zk-1:2181: name does not resolve`, `127.0.0.1:1: connection refused`,
//! `10.0.0.9:2181: timed out after 2s`, `zk-1:2281: TLS handshake failed: unknown CA ...`.
//!
//! [`Quiet`] decides which failures are worth a log line: the first, a new cause, and then one
//! reminder a minute while it lasts.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::{Instant, timeout};

use super::tls;

/// How long each step of a probe (resolve, connect, handshake) may take.
pub(super) const STEP: Duration = Duration::from_secs(2);

/// One cause per host, as `host: cause`, in the order of `hosts`, joined with `; `.
/// `connect_error` is the client's own words, used for a host that accepts TCP (and TLS) but
/// gave no session anyway.
pub(super) async fn probe(
    hosts: &[String],
    tls: Option<Arc<rustls::ClientConfig>>,
    connect_error: &str,
) -> String {
    let mut set = tokio::task::JoinSet::new();
    for (i, host) in hosts.iter().enumerate() {
        let host = host.clone();
        let tls = tls.clone();
        set.spawn(async move { (i, host.clone(), probe_host(&host, tls).await) });
    }
    let mut causes = vec![String::new(); hosts.len()];
    while let Some(joined) = set.join_next().await {
        if let Ok((i, host, cause)) = joined {
            let cause = cause.unwrap_or_else(|| match (&tls, connect_error) {
                (None, "no available hosts") => "accepts TCP connections but gives no ZooKeeper session \
                     (a TLS-only port? then set [zookeeper] tls; or the server is not serving)"
                    .to_owned(),
                _ => format!("accepts connections but gives no ZooKeeper session ({connect_error})"),
            });
            causes[i] = format!("{host}: {cause}");
        }
    }
    causes.retain(|c| !c.is_empty());
    causes.join("; ")
}

/// `host:port` split, brackets of an IPv6 literal removed; the port defaults to 2181 as the
/// client library's does.
fn split_host(host: &str) -> (&str, u16) {
    let (name, port) = match host.rsplit_once(':') {
        // An IPv6 literal without brackets and port: all of it is the name.
        Some((name, port)) if !name.contains(':') || name.ends_with(']') => {
            (name, port.parse().unwrap_or(2181))
        }
        _ => (host, 2181),
    };
    (name.trim_start_matches('[').trim_end_matches(']'), port)
}

/// Why `host` cannot be reached, or `None` when it can (TCP, and TLS when on).
async fn probe_host(host: &str, tls: Option<Arc<rustls::ClientConfig>>) -> Option<String> {
    let (name, port) = split_host(host);
    let addrs: Vec<std::net::SocketAddr> = match timeout(STEP, tokio::net::lookup_host((name, port))).await {
        Err(_) => return Some(format!("name resolution timed out after {}", secs(STEP))),
        Ok(Err(_)) => return Some("name does not resolve".to_owned()),
        Ok(Ok(addrs)) => addrs.collect(),
    };
    if addrs.is_empty() {
        return Some("name does not resolve".to_owned());
    }
    let mut failure = None;
    let mut stream = None;
    for addr in addrs {
        match timeout(STEP, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                stream = Some(s);
                break;
            }
            Ok(Err(e)) => failure = Some(io_cause(&e)),
            Err(_) => failure = Some(format!("timed out after {}", secs(STEP))),
        }
    }
    let stream = match stream {
        Some(stream) => stream,
        None => return failure,
    };
    let config = tls?;
    let stream = stream.into_std().ok()?;
    stream.set_nonblocking(false).ok()?;
    let name = name.to_owned();
    let handshake = tokio::task::spawn_blocking(move || tls::handshake(stream, &name, config, STEP));
    match timeout(STEP * 3, handshake).await {
        Ok(Ok(why)) => why.map(|why| format!("TLS handshake failed: {why}")),
        Ok(Err(_)) => None,
        Err(_) => Some(format!("TLS handshake timed out after {}", secs(STEP * 3))),
    }
}

/// A connect error in the words an operator searches for.
fn io_cause(e: &std::io::Error) -> String {
    use std::io::ErrorKind as K;
    match e.kind() {
        K::ConnectionRefused => "connection refused".to_owned(),
        K::TimedOut => format!("timed out after {}", secs(STEP)),
        K::HostUnreachable => "host unreachable".to_owned(),
        K::NetworkUnreachable => "network unreachable".to_owned(),
        _ => e.to_string(),
    }
}

/// `2s`, `1.5s`.
pub(super) fn secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

/// What [`Quiet::on_failure`] says to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Say {
    /// The first failure of this outage: at error, with the cause.
    First,
    /// The cause is not the one last logged.
    Changed,
    /// A minute since the last line: a reminder with attempts and how long.
    Reminder,
    /// Nothing at error level (debug only).
    Nothing,
}

/// The logging rule of an outage: one clear line, then quiet.
#[derive(Debug, Default)]
pub(super) struct Quiet {
    /// Since when connecting fails, and the failed attempts since.
    since: Option<Instant>,
    attempts: u32,
    last_line: Option<Instant>,
    last_cause: String,
}

impl Quiet {
    /// At most one reminder in this long.
    pub(super) const REMINDER: Duration = Duration::from_secs(60);
    /// A new cause is logged at once, unless the last line is younger than this (a flapping
    /// cause must not become a line per attempt).
    pub(super) const CHANGED: Duration = Duration::from_secs(10);

    pub(super) fn on_failure(&mut self, now: Instant, cause: &str) -> Say {
        self.attempts += 1;
        self.since.get_or_insert(now);
        let say = match self.last_line {
            None => Say::First,
            Some(last) if now.duration_since(last) >= Self::REMINDER => Say::Reminder,
            Some(last) if cause != self.last_cause && now.duration_since(last) >= Self::CHANGED => {
                Say::Changed
            }
            Some(_) => Say::Nothing,
        };
        if say != Say::Nothing {
            self.last_line = Some(now);
            self.last_cause = cause.to_owned();
        }
        say
    }

    /// Failed attempts in this outage.
    pub(super) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// How long this outage has lasted at `now`.
    pub(super) fn lasted(&self, now: Instant) -> Duration {
        self.since.map_or(Duration::ZERO, |since| now.duration_since(since))
    }

    /// Connected: the outage (attempts, how long) if there was one, and a fresh start.
    pub(super) fn on_connected(&mut self, now: Instant) -> Option<(u32, Duration)> {
        let outage = self.since.map(|since| (self.attempts, now.duration_since(since)));
        *self = Quiet::default();
        outage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_split_like_the_client_library() {
        assert_eq!(split_host("zk1:2181"), ("zk1", 2181));
        assert_eq!(split_host("zk1"), ("zk1", 2181));
        assert_eq!(split_host("[::1]:2182"), ("::1", 2182));
        assert_eq!(split_host("127.0.0.1:1"), ("127.0.0.1", 1));
    }

    #[test]
    fn one_line_then_a_reminder_a_minute() {
        let t0 = Instant::now();
        let mut q = Quiet::default();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(q.on_failure(at(0), "a: connection refused"), Say::First);
        for s in 1..60 {
            assert_eq!(q.on_failure(at(s), "a: connection refused"), Say::Nothing, "at {s}s");
        }
        assert_eq!(q.on_failure(at(60), "a: connection refused"), Say::Reminder);
        assert_eq!(q.on_failure(at(61), "a: connection refused"), Say::Nothing);
        assert_eq!(q.attempts(), 62);
        assert_eq!(q.lasted(at(61)), Duration::from_secs(61));
        assert_eq!(q.on_connected(at(62)), Some((62, Duration::from_secs(62))));
        assert_eq!(q.on_connected(at(63)), None, "no outage since");
        assert_eq!(q.on_failure(at(64), "a: connection refused"), Say::First, "a new outage");
    }

    #[test]
    fn a_new_cause_is_said_but_not_more_than_every_ten_seconds() {
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        let mut q = Quiet::default();
        assert_eq!(q.on_failure(at(0), "refused"), Say::First);
        assert_eq!(q.on_failure(at(5), "tls"), Say::Nothing, "too soon after the last line");
        assert_eq!(q.on_failure(at(10), "tls"), Say::Changed);
        assert_eq!(q.on_failure(at(12), "refused"), Say::Nothing);
        assert_eq!(q.on_failure(at(15), "tls"), Say::Nothing, "the cause last said");
        assert_eq!(q.on_failure(at(25), "refused"), Say::Changed);
    }
}
