//! `zkrender fleet`: from every agent's report and each znode's current zxid, who applied
//! what. Pure: the reads are done by `source::report::Reader`, the clock is a parameter.
//!
//! ```text
//! report /zkrender/agents: 3 agents
//!
//! ZNODE        ZXID         CHANGED   AGENTS  CURRENT  LAGGING  FAILED
//! /app/db/url  0x100000005  12s ago   3       1        1        1
//!     lagging  web-2  /etc/app/app.conf  has 0x100000003, behind for 12s
//!     failed   web-3  /etc/app/app.conf  check_failed, for 10s
//!
//! not current: 2 of 3 agents
//! ```
//!
//! Per znode, an agent counts once: current when every unit of it that reads the znode has
//! its current zxid on disk and the reload after it did not fail; failed when one of them
//! failed (it is stale with a cause, or its reload failed); lagging otherwise (an older
//! zxid, a reload or first read still to come).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use serde::Serialize;

use super::{AgentReport, Applied, Unit};

/// What was read from ZooKeeper: the reports, then the znodes they name.
#[derive(Debug, Clone, Default)]
pub struct Read {
    /// The report path.
    pub report: String,
    pub agents: Vec<Found>,
    /// Per znode (and whether its children are meant): its state now.
    pub current: BTreeMap<(String, bool), Current>,
}

/// One report znode.
#[derive(Debug, Clone)]
pub struct Found {
    /// The report znode's name (the agent's id).
    pub id: String,
    /// The report, or why its data is not one.
    pub report: Result<AgentReport, String>,
}

/// A znode as it is now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Current {
    /// Its `mzxid` (`pzxid` for children); `None` when it does not exist.
    pub zxid: Option<i64>,
    /// Unix time (seconds) of that change (its `mtime`; unknown for children).
    pub changed: Option<f64>,
}

/// Every znode the reports name, as `(znode, children)`: what to read the current state of.
pub fn named(agents: &[Found]) -> BTreeSet<(String, bool)> {
    agents
        .iter()
        .filter_map(|a| a.report.as_ref().ok())
        .flat_map(|r| r.units.iter())
        .flat_map(|u| u.znodes.iter())
        .map(|a| (a.znode.clone(), a.children))
        .collect()
}

/// The whole fleet as `zkrender fleet` shows it (its `--json` output).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Fleet {
    pub report: String,
    /// Agents with a report (live sessions).
    pub agents: usize,
    /// Every agent current for every znode shown, and no unit failing before its first
    /// install: what exit status 0 means.
    pub current: bool,
    pub znodes: Vec<ZnodeView>,
    /// Units that never reached disk (no znode to show them under), when no `--znode` is given.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unapplied: Vec<Behind>,
    /// Reports whose data is not a zkrender report.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<Unreadable>,
    /// `--znode` paths no agent reads.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown: Vec<String>,
}

/// One znode: who applied its current zxid.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ZnodeView {
    /// The znode and its current zxid (`mzxid`, or `pzxid` with `children`; `missing`).
    #[serde(flatten)]
    pub now: Applied,
    /// Unix time (seconds) of its current version, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub changed: Option<f64>,
    /// Agents that read it.
    pub agents: usize,
    /// Ids of the agents that applied its current zxid.
    pub current: Vec<String>,
    pub lagging: Vec<Behind>,
    pub failed: Vec<Behind>,
}

/// One unit of one agent that is not current.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Behind {
    pub id: String,
    pub dest: String,
    /// The zxid the unit has on disk (`None`: none yet, or the znode was missing then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zxid: Option<i64>,
    /// Why: for failed units the cause's label (`check_failed`, `reload_failed`, ...); for
    /// lagging ones `behind`, `reloading` or `pending`.
    pub why: String,
    /// Unix time (seconds) since when (failed: stale since; lagging: the znode's change).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<f64>,
}

/// A report that could not be read.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Unreadable {
    pub id: String,
    pub error: String,
}

/// Where one unit stands for one znode.
enum Verdict {
    Current,
    Lagging(Behind),
    Failed(Behind),
}

fn verdict(id: &str, unit: &Unit, applied: &Applied, now: Current) -> Verdict {
    let behind = |why: &str, since: Option<f64>| Behind {
        id: id.to_owned(),
        dest: unit.dest.clone(),
        zxid: applied.zxid(),
        why: why.to_owned(),
        since,
    };
    if unit.reload_failed() {
        return Verdict::Failed(behind("reload_failed", unit.reload.as_ref().map(|r| r.at)));
    }
    let matches = applied.zxid() == now.zxid && applied.missing == now.zxid.is_none();
    if matches && unit.state != "pending" {
        return Verdict::Current;
    }
    if unit.state == "stale" {
        let cause = unit.cause.as_deref().unwrap_or("unknown");
        return Verdict::Failed(behind(cause, unit.stale_since.or(now.changed)));
    }
    if unit.state == "pending" {
        return Verdict::Lagging(behind("pending", now.changed));
    }
    Verdict::Lagging(behind("behind", now.changed))
}

/// Who applied what. `only`: the znodes asked for (`--znode`), or every znode named.
pub fn view(read: &Read, only: &[String]) -> Fleet {
    let mut fleet = Fleet { report: read.report.clone(), ..Fleet::default() };
    let reports: Vec<(&str, &AgentReport)> = read
        .agents
        .iter()
        .filter_map(|a| match &a.report {
            Ok(r) => Some((a.id.as_str(), r)),
            Err(e) => {
                fleet.unreadable.push(Unreadable { id: a.id.clone(), error: e.clone() });
                None
            }
        })
        .collect();
    fleet.agents = read.agents.len();
    for ((znode, children), now) in &read.current {
        if !only.is_empty() && !only.contains(znode) {
            continue;
        }
        let mut v = ZnodeView {
            now: Applied {
                znode: znode.clone(),
                children: *children,
                mzxid: now.zxid.filter(|_| !children),
                pzxid: now.zxid.filter(|_| *children),
                missing: now.zxid.is_none(),
            },
            changed: now.changed,
            ..ZnodeView::default()
        };
        for (id, report) in &reports {
            let mut reads = false;
            let (mut lagging, mut failed) = (Vec::new(), Vec::new());
            for unit in &report.units {
                for applied in unit.znodes.iter().filter(|a| &a.znode == znode && a.children == *children) {
                    reads = true;
                    match verdict(id, unit, applied, *now) {
                        Verdict::Current => {}
                        Verdict::Lagging(b) => lagging.push(b),
                        Verdict::Failed(b) => failed.push(b),
                    }
                }
            }
            if !reads {
                continue;
            }
            v.agents += 1;
            if lagging.is_empty() && failed.is_empty() {
                v.current.push((*id).to_owned());
            }
            v.lagging.extend(lagging);
            v.failed.extend(failed);
        }
        fleet.znodes.push(v);
    }
    if only.is_empty() {
        for (id, report) in &reports {
            for unit in report.units.iter().filter(|u| u.znodes.is_empty() && u.state != "ok") {
                let why = unit.cause.clone().unwrap_or_else(|| unit.state.clone());
                fleet.unapplied.push(Behind {
                    id: (*id).to_owned(),
                    dest: unit.dest.clone(),
                    zxid: None,
                    why,
                    since: unit.stale_since,
                });
            }
        }
    } else {
        fleet.unknown =
            only.iter().filter(|z| !fleet.znodes.iter().any(|v| &v.now.znode == *z)).cloned().collect();
    }
    fleet.current = fleet.agents > 0
        && fleet.unknown.is_empty()
        && fleet.unreadable.is_empty()
        && fleet.unapplied.is_empty()
        && fleet.znodes.iter().all(|v| v.current.len() == v.agents);
    fleet
}

/// The fleet as a table, ages against `now` (Unix seconds).
pub fn render_table(fleet: &Fleet, now: f64) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "report {}: {} agent{}", fleet.report, fleet.agents, plural(fleet.agents));
    out.push('\n');
    if !fleet.znodes.is_empty() {
        let rows: Vec<[String; 7]> = fleet
            .znodes
            .iter()
            .map(|v| {
                let znode =
                    if v.now.children { format!("{} (children)", v.now.znode) } else { v.now.znode.clone() };
                [
                    znode,
                    v.now.zxid().map_or_else(|| "missing".to_owned(), hex),
                    v.changed.map_or_else(|| "-".to_owned(), |t| format!("{} ago", age(now - t))),
                    v.agents.to_string(),
                    v.current.len().to_string(),
                    distinct(&v.lagging, &v.failed).to_string(),
                    distinct(&v.failed, &[]).to_string(),
                ]
            })
            .collect();
        let header = ["ZNODE", "ZXID", "CHANGED", "AGENTS", "CURRENT", "LAGGING", "FAILED"];
        let mut widths = header.map(str::len);
        for row in &rows {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.len());
            }
        }
        let line = |cells: &[&str]| {
            let mut s = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                if i + 1 == cells.len() {
                    s.push_str(cell);
                } else {
                    let _ = write!(s, "{cell:<w$}  ");
                }
            }
            s.push('\n');
            s
        };
        out.push_str(&line(&header));
        for (v, row) in fleet.znodes.iter().zip(&rows) {
            out.push_str(&line(&row.each_ref().map(String::as_str)));
            for b in &v.lagging {
                let _ = writeln!(out, "    lagging  {}", describe(b, now));
            }
            for b in &v.failed {
                let _ = writeln!(out, "    failed   {}", describe(b, now));
            }
        }
        out.push('\n');
    }
    for b in &fleet.unapplied {
        let _ = writeln!(out, "never applied: {}", describe(b, now));
    }
    for u in &fleet.unreadable {
        let _ = writeln!(out, "unreadable report {}: {}", u.id, u.error);
    }
    for z in &fleet.unknown {
        let _ = writeln!(out, "no agent reports reading {z}");
    }
    if fleet.agents == 0 {
        let _ = writeln!(out, "no agent reports under {}", fleet.report);
    } else if fleet.current {
        let _ = writeln!(out, "current: {} of {} agent{}", fleet.agents, fleet.agents, plural(fleet.agents));
    } else {
        match not_current(fleet) {
            0 => out.push_str("not current\n"),
            n => {
                let _ = writeln!(out, "not current: {n} of {} agent{}", fleet.agents, plural(fleet.agents));
            }
        }
    }
    out
}

/// Agents not current somewhere.
fn not_current(fleet: &Fleet) -> usize {
    let mut ids: BTreeSet<&str> = BTreeSet::new();
    for v in &fleet.znodes {
        ids.extend(v.lagging.iter().chain(&v.failed).map(|b| b.id.as_str()));
    }
    ids.extend(fleet.unapplied.iter().map(|b| b.id.as_str()));
    ids.extend(fleet.unreadable.iter().map(|u| u.id.as_str()));
    ids.len()
}

/// Agents in `these` that are not in `but`.
fn distinct(these: &[Behind], but: &[Behind]) -> usize {
    let ids: BTreeSet<&str> = these.iter().map(|b| b.id.as_str()).collect();
    ids.iter().filter(|id| !but.iter().any(|b| b.id == **id)).count()
}

/// `web-2  /etc/app.conf  has 0x1f, behind for 12s`
fn describe(b: &Behind, now: f64) -> String {
    let has = b.zxid.map_or_else(String::new, |z| format!("has {}, ", hex(z)));
    let since = b.since.map_or_else(String::new, |t| format!(", for {}", age(now - t)));
    format!("{}  {}  {has}{}{since}", b.id, b.dest, b.why)
}

fn hex(zxid: i64) -> String {
    format!("{zxid:#x}")
}

/// A duration in whole seconds, minutes or hours (`0s` for the future).
fn age(seconds: f64) -> String {
    let s = seconds.max(0.0) as u64;
    match s {
        0..120 => format!("{s}s"),
        120..7200 => format!("{}m", s / 60),
        _ => format!("{}h", s / 3600),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::Reload;

    fn unit(dest: &str, state: &str, znodes: Vec<Applied>) -> Unit {
        Unit { kind: "file".into(), dest: dest.into(), state: state.into(), znodes, ..Unit::default() }
    }

    fn data(znode: &str, mzxid: i64) -> Applied {
        Applied { znode: znode.into(), mzxid: Some(mzxid), ..Applied::default() }
    }

    fn agent(id: &str, units: Vec<Unit>) -> Found {
        Found { id: id.into(), report: Ok(AgentReport { id: id.into(), units, ..AgentReport::default() }) }
    }

    fn read(agents: Vec<Found>, current: &[(&str, Option<i64>)]) -> Read {
        let current = current
            .iter()
            .map(|(z, zxid)| ((z.to_string(), false), Current { zxid: *zxid, changed: Some(100.0) }));
        Read { report: "/r".into(), agents, current: current.collect() }
    }

    #[test]
    fn every_agent_at_the_current_zxid_is_current() {
        let agents = vec![
            agent("a", vec![unit("/x", "ok", vec![data("/z", 5)])]),
            agent("b", vec![unit("/x", "ok", vec![data("/z", 5)])]),
        ];
        assert_eq!(named(&agents), BTreeSet::from([("/z".to_owned(), false)]));
        let f = view(&read(agents, &[("/z", Some(5))]), &[]);
        assert!(f.current);
        assert_eq!(
            (f.agents, f.znodes[0].agents, f.znodes[0].current.clone()),
            (2, 2, vec!["a".into(), "b".into()])
        );
        let table = render_table(&f, 112.0);
        assert!(table.contains("/z     0x5   12s ago  2       2        0        0"), "{table}");
        assert!(table.ends_with("current: 2 of 2 agents\n"), "{table}");
    }

    #[test]
    fn lagging_failed_and_reload_failed_agents_are_named_with_why_and_since() {
        let stale = Unit {
            cause: Some("check_failed".into()),
            stale_since: Some(105.0),
            ..unit("/x", "stale", vec![data("/z", 4)])
        };
        let reload_failed = Unit {
            written: Some(101.0),
            reload: Some(Reload { outcome: "failed".into(), at: 102.0 }),
            ..unit("/x", "ok", vec![data("/z", 5)])
        };
        let agents = vec![
            agent("ok", vec![unit("/x", "ok", vec![data("/z", 5)])]),
            agent("old", vec![unit("/x", "ok", vec![data("/z", 4)])]),
            agent("bad", vec![stale]),
            agent("rl", vec![reload_failed]),
            Found { id: "junk".into(), report: Err("expected value".into()) },
        ];
        let f = view(&read(agents, &[("/z", Some(5))]), &[]);
        assert!(!f.current);
        let z = &f.znodes[0];
        assert_eq!((z.agents, z.current.clone()), (4, vec!["ok".to_owned()]));
        let lag: Vec<_> =
            z.lagging.iter().map(|b| (b.id.as_str(), b.zxid, b.why.as_str(), b.since)).collect();
        assert_eq!(lag, [("old", Some(4), "behind", Some(100.0))]);
        let failed: Vec<_> = z.failed.iter().map(|b| (b.id.as_str(), b.why.as_str(), b.since)).collect();
        assert_eq!(failed, [("bad", "check_failed", Some(105.0)), ("rl", "reload_failed", Some(102.0))]);
        assert_eq!(f.unreadable[0].id, "junk");
        let table = render_table(&f, 110.0);
        assert!(table.contains("    lagging  old  /x  has 0x4, behind, for 10s\n"), "{table}");
        assert!(table.contains("    failed   bad  /x  has 0x4, check_failed, for 5s\n"), "{table}");
        assert!(table.contains("unreadable report junk: expected value"), "{table}");
        assert!(table.ends_with("not current: 4 of 5 agents\n"), "{table}");
        let json = serde_json::to_value(&f).unwrap();
        assert_eq!(json["znodes"][0]["mzxid"], 5);
        assert_eq!(json["znodes"][0]["failed"][1]["why"], "reload_failed");
    }

    #[test]
    fn only_the_znode_asked_for_decides() {
        let agents = vec![agent(
            "a",
            vec![unit("/x", "ok", vec![data("/z", 5)]), unit("/y", "ok", vec![data("/w", 1)])],
        )];
        let r = read(agents, &[("/z", Some(5)), ("/w", Some(2))]);
        assert!(!view(&r, &[]).current);
        let only = view(&r, &["/z".to_owned()]);
        assert!(only.current && only.znodes.len() == 1);
        let unknown = view(&r, &["/nope".to_owned()]);
        assert!(!unknown.current);
        assert!(render_table(&unknown, 0.0).contains("no agent reports reading /nope"));
    }

    #[test]
    fn missing_znodes_children_and_units_never_applied() {
        let gone = Applied { znode: "/gone".into(), missing: true, ..Applied::default() };
        let kids = Applied { znode: "/svc".into(), children: true, pzxid: Some(9), ..Applied::default() };
        let never = Unit { cause: Some("render".into()), ..unit("/n", "stale", vec![]) };
        let agents = vec![agent("a", vec![unit("/x", "ok", vec![gone, kids]), never])];
        let mut r = read(agents, &[("/gone", None)]);
        r.current.insert(("/svc".into(), true), Current { zxid: Some(9), changed: None });
        let f = view(&r, &[]);
        assert!(f.znodes.iter().all(|v| v.current == ["a"]), "{f:?}");
        assert!(!f.current, "a unit that never reached disk");
        assert_eq!((f.unapplied[0].dest.as_str(), f.unapplied[0].why.as_str()), ("/n", "render"));
        assert!(view(&r, &["/gone".to_owned()]).current);
        assert!(!view(&read(vec![], &[]), &[]).current, "no agent at all is not a fleet that is current");
    }
}
