//! `zkrender status`: fetch the running agent's report from its HTTP endpoint and print
//! it as a table an operator can read at a glance.
//!
//! ```text
//! zookeeper: connected (zk1:2181,zk2:2181), 0 session expirations, 2 reconnects
//! ready: yes
//!
//! DEST               STATE   LAST WRITE  RELOAD         ERROR/REASON
//! /etc/app/app.conf  ok      12s ago     ok 12s ago     -
//!     /db/url  mzxid=0x1a  version=3
//!     /db/pass  missing
//! ```
//!
//! Rendering is pure (the clock is a parameter) so it is tested with plain values; only
//! [`fetch_status`] does I/O.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::time::Duration;

use super::OpsError;
use crate::status::{DepStatus, FileStatus, StatusReport};

/// The report as a fixed-width table, ages computed against `now_unix` (seconds).
///
/// A header with the ZooKeeper connection and readiness, then one row per file and,
/// under each, its dependencies indented. Error messages are folded onto one line and
/// sit in the last column, which is not padded, so long messages never misalign the
/// rest.
pub fn render_table(report: &StatusReport, now_unix: f64) -> String {
    let mut out = String::new();
    let zk = &report.zookeeper;
    let hosts = if zk.hosts.is_empty() { String::new() } else { format!(" ({})", zk.hosts) };
    let state = if zk.state.is_empty() { "unknown" } else { zk.state.as_str() };
    let _ = writeln!(
        out,
        "zookeeper: {state}{hosts}, {} session expiration{}, {} reconnect{}",
        zk.session_expirations,
        plural(zk.session_expirations),
        zk.reconnects,
        plural(zk.reconnects),
    );
    // Why connecting fails, per host: what an operator needs first when nothing is written.
    if let Some(why) = zk.error.as_ref().filter(|_| zk.state != "connected") {
        let _ = writeln!(out, "zookeeper unreachable: {}", one_line(why));
    }
    let pending = report.pending().count();
    let readiness = match (report.ready, report.degraded) {
        (true, false) => "yes".to_owned(),
        (true, true) => "yes, degraded (ZooKeeper not connected; files are the last good ones)".to_owned(),
        (false, _) => format!("no ({pending} of {} files pending)", report.files.len()),
    };
    let _ = writeln!(out, "ready: {readiness}");
    out.push('\n');

    if report.files.is_empty() {
        out.push_str("no files configured\n");
        return out;
    }

    let header = ["DEST", "STATE", "LAST WRITE", "RELOAD", "ERROR/REASON"];
    let rows: Vec<[String; 5]> = report.files.iter().map(|f| file_row(f, now_unix)).collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    push_row(&mut out, &header.map(str::to_owned), &widths);
    for (row, file) in rows.iter().zip(&report.files) {
        push_row(&mut out, row, &widths);
        for dep in file.deps.iter() {
            let _ = writeln!(out, "    {}", dep_line(dep));
        }
    }
    out
}

/// Appends one row: every column but the last padded to its width, two spaces apart.
fn push_row(out: &mut String, cells: &[String; 5], widths: &[usize; 5]) {
    let mut line = String::new();
    for (i, (cell, width)) in cells.iter().zip(widths).enumerate() {
        if i + 1 == cells.len() {
            line.push_str(cell);
        } else {
            let _ = write!(line, "{cell:<width$}  ");
        }
    }
    out.push_str(line.trim_end());
    out.push('\n');
}

fn file_row(file: &FileStatus, now_unix: f64) -> [String; 5] {
    let mut state = if file.state.is_empty() { "unknown".to_owned() } else { file.state.clone() };
    if let Some(since) = file.stale_since {
        let _ = write!(state, " (stale {})", span(now_unix - since));
    }
    let last_write = file.last_write.map_or_else(|| "never".to_owned(), |at| age(at, now_unix));
    let reload = file
        .last_reload
        .as_ref()
        .map_or_else(|| "-".to_owned(), |r| format!("{} {}", r.outcome, age(r.at, now_unix)));
    // The most specific explanation: the file's own error, why it waits, or a failed reload.
    let problem = file
        .last_error
        .clone()
        .or_else(|| file.reason.clone())
        .or_else(|| {
            let reload = file.last_reload.as_ref()?;
            Some(format!("reload: {}", reload.error.as_deref()?))
        })
        .map_or_else(|| "-".to_owned(), |text| one_line(&text));
    [file.dest.clone(), state, last_write, reload, problem]
}

/// `/db/url  mzxid=0x1a  version=3`, `/svc/nodes (children)  ...`, `/db/pass  missing`.
fn dep_line(dep: &DepStatus) -> String {
    let mut line = dep.znode.to_string();
    if dep.kind == "children" {
        line.push_str(" (children)");
    }
    match dep.exists {
        None => line.push_str("  not read yet"),
        Some(false) => line.push_str("  missing"),
        Some(true) => {
            if let Some(mzxid) = dep.mzxid {
                let _ = write!(line, "  mzxid={mzxid:#x}");
            }
            if let Some(version) = dep.version {
                let _ = write!(line, "  version={version}");
            }
        }
    }
    line
}

/// `12s ago`, `5m ago`; `just now` for times a little in the future (clock skew).
fn age(at: f64, now_unix: f64) -> String {
    let seconds = now_unix - at;
    if seconds < 0.0 { "just now".to_owned() } else { format!("{} ago", span(seconds)) }
}

/// A duration in its largest whole unit, up to two units: `45s`, `3m12s`, `2h5m`, `4d3h`.
fn span(seconds: f64) -> String {
    // Saturating float-to-int cast; negatives (clock steps) read as 0s.
    let s = seconds.max(0.0) as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => two_units(s / 60, "m", s % 60, "s"),
        3600..86_400 => two_units(s / 3600, "h", s % 3600 / 60, "m"),
        _ => two_units(s / 86_400, "d", s % 86_400 / 3600, "h"),
    }
}

fn two_units(major: u64, major_unit: &str, minor: u64, minor_unit: &str) -> String {
    if minor == 0 {
        format!("{major}{major_unit}")
    } else {
        format!("{major}{major_unit}{minor}{minor_unit}")
    }
}

/// Multi-line messages (config problems as bullets) folded to fit one row.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn plural(n: u64) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// Fetches the running agent's report: `GET http://{listen}/status`.
///
/// `listen` is the agent's `[agent] listen` address; an unspecified address (`0.0.0.0`,
/// `[::]`) is asked on loopback instead. Proxies from the environment are ignored: the
/// agent is local. `timeout` bounds the whole exchange.
///
/// # Errors
/// [`OpsError`] naming the URL: nothing listening ([`OpsError::Unreachable`], with a
/// hint at the `listen` setting), no answer in time, a non-200 answer, or a body that is
/// not a status report (another service on that port).
pub async fn fetch_status(listen: &str, timeout: Duration) -> Result<StatusReport, OpsError> {
    let url = format!("http://{}/status", local_authority(listen));
    let client = reqwest::Client::builder()
        .timeout(timeout)
        .no_proxy()
        .build()
        .map_err(|source| OpsError::Client { url: url.clone(), source })?;
    let response = client.get(&url).send().await.map_err(|source| {
        if source.is_builder() {
            OpsError::InvalidListen { listen: listen.to_owned(), url: url.clone(), source }
        } else if source.is_timeout() {
            OpsError::Timeout { url: url.clone(), timeout, source }
        } else {
            OpsError::Unreachable { listen: listen.to_owned(), url: url.clone(), source }
        }
    })?;
    let status = response.status();
    if status != reqwest::StatusCode::OK {
        return Err(OpsError::Status { url, status });
    }
    let body = response.bytes().await.map_err(|source| {
        if source.is_timeout() {
            OpsError::Timeout { url: url.clone(), timeout, source }
        } else {
            OpsError::Body { url: url.clone(), source }
        }
    })?;
    serde_json::from_slice(&body).map_err(|source| OpsError::Decode {
        listen: listen.to_owned(),
        url,
        source,
    })
}

/// `listen` as an address to connect to: the wildcard address the agent binds is not
/// one a client should dial, so it becomes the loopback address of the same family.
fn local_authority(listen: &str) -> String {
    match listen.parse::<SocketAddr>() {
        Ok(SocketAddr::V4(addr)) if addr.ip().is_unspecified() => format!("127.0.0.1:{}", addr.port()),
        Ok(SocketAddr::V6(addr)) if addr.ip().is_unspecified() => format!("[::1]:{}", addr.port()),
        _ => listen.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{ReloadStatus, ZkStatus};

    const NOW: f64 = 10_000.0;

    fn report() -> StatusReport {
        StatusReport {
            ready: true,
            degraded: false,
            zookeeper: ZkStatus {
                hosts: "zk1:2181".into(),
                state: "connected".into(),
                session_expirations: 1,
                reconnects: 2,
                error: None,
            },
            files: vec![
                FileStatus {
                    dest: "/etc/app/app.conf".into(),
                    state: "ok".into(),
                    settled: true,
                    last_write: Some(NOW - 12.0),
                    last_reload: Some(ReloadStatus { outcome: "ok".into(), at: NOW - 11.0, error: None }),
                    deps: vec![
                        DepStatus {
                            znode: "/db/url".into(),
                            kind: "data".into(),
                            exists: Some(true),
                            mzxid: Some(0x1a),
                            version: Some(3),
                        },
                        DepStatus {
                            znode: "/db/pass".into(),
                            kind: "data".into(),
                            exists: Some(false),
                            ..Default::default()
                        },
                    ]
                    .into(),
                    ..Default::default()
                }
                .into(),
                FileStatus {
                    dest: "/etc/b.conf".into(),
                    state: "failed".into(),
                    settled: true,
                    reason: Some("render".into()),
                    last_error: Some(
                        "rendering /etc/b.conf: template b.j2 line 3:\n  undefined value".into(),
                    ),
                    last_write: Some(NOW - 3_700.0),
                    stale_since: Some(NOW - 125.0),
                    deps: vec![DepStatus {
                        znode: "/svc".into(),
                        kind: "children".into(),
                        ..Default::default()
                    }]
                    .into(),
                    ..Default::default()
                }
                .into(),
            ],
        }
    }

    #[test]
    fn renders_header_rows_and_deps() {
        let expected = "\
zookeeper: connected (zk1:2181), 1 session expiration, 2 reconnects
ready: yes

DEST               STATE                LAST WRITE  RELOAD      ERROR/REASON
/etc/app/app.conf  ok                   12s ago     ok 11s ago  -
    /db/url  mzxid=0x1a  version=3
    /db/pass  missing
/etc/b.conf        failed (stale 2m5s)  1h1m ago    -           rendering /etc/b.conf: template b.j2 line 3: undefined value
    /svc (children)  not read yet
";
        assert_eq!(render_table(&report(), NOW), expected);
    }

    #[test]
    fn header_says_why_zookeeper_is_unreachable() {
        let mut r = report();
        r.ready = false;
        r.zookeeper.state = "connecting".into();
        r.zookeeper.error = Some("zk9.invalid:2181: name does not resolve".into());
        let table = render_table(&r, 1000.0);
        let mut lines = table.lines();
        assert!(lines.next().unwrap().starts_with("zookeeper: connecting (zk1:2181)"), "{table}");
        assert_eq!(lines.next(), Some("zookeeper unreachable: zk9.invalid:2181: name does not resolve"));
        // Once connected, a stale cause is not shown.
        r.zookeeper.state = "connected".into();
        assert!(!render_table(&r, 1000.0).contains("unreachable"));
    }

    #[test]
    fn header_says_degraded_when_ready_without_zookeeper() {
        let mut r = report();
        r.degraded = true;
        r.zookeeper.state = "disconnected".into();
        let table = render_table(&r, NOW);
        assert!(table.starts_with("zookeeper: disconnected (zk1:2181)"), "{table}");
        assert!(table.contains("ready: yes, degraded"), "{table}");
    }

    #[test]
    fn header_counts_pending_files_before_ready() {
        let mut r = report();
        r.ready = false;
        std::sync::Arc::make_mut(&mut r.files[1]).settled = false;
        assert!(render_table(&r, NOW).contains("ready: no (1 of 2 files pending)"));
    }

    #[test]
    fn failed_reload_shows_when_the_file_itself_is_fine() {
        let mut r = report();
        std::sync::Arc::make_mut(&mut r.files[0]).last_reload = Some(ReloadStatus {
            outcome: "failed".into(),
            at: NOW - 5.0,
            error: Some("http POST x: 500".into()),
        });
        let table = render_table(&r, NOW);
        let row = table.lines().find(|l| l.starts_with("/etc/app/app.conf")).unwrap();
        assert!(row.contains("failed 5s ago"), "{row}");
        assert!(row.ends_with("reload: http POST x: 500"), "{row}");
    }

    #[test]
    fn never_written_file_and_no_files() {
        let mut r = report();
        std::sync::Arc::make_mut(&mut r.files[0]).last_write = None;
        assert!(render_table(&r, NOW).contains("/etc/app/app.conf  ok                   never"));
        r.files.clear();
        assert!(render_table(&r, NOW).ends_with("\nno files configured\n"));
    }

    #[test]
    fn ages_use_up_to_two_units_and_tolerate_clock_skew() {
        assert_eq!(age(NOW - 0.4, NOW), "0s ago");
        assert_eq!(age(NOW - 60.0, NOW), "1m ago");
        assert_eq!(age(NOW - 90_000.0, NOW), "1d1h ago");
        assert_eq!(age(NOW + 3.0, NOW), "just now");
    }

    #[test]
    fn wildcard_listen_is_fetched_on_loopback() {
        assert_eq!(local_authority("0.0.0.0:9102"), "127.0.0.1:9102");
        assert_eq!(local_authority("[::]:9102"), "[::1]:9102");
        assert_eq!(local_authority("10.0.0.5:9102"), "10.0.0.5:9102");
        assert_eq!(local_authority("localhost:9102"), "localhost:9102");
    }
}
