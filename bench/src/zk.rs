//! ZooKeeper: started and stopped with the project's own launcher (`scripts/zk up/down`),
//! observed with the `mntr` four-letter word, written with the zookeeper-client crate.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use futures_util::future::join_all;
use zookeeper_client as zk;

use crate::Res;

/// A throwaway ZooKeeper (standalone or ensemble) started by `scripts/zk up`.
pub struct Zk {
    script: PathBuf,
    state: PathBuf,
    pub hosts: String,
    pub ports: Vec<u16>,
    /// How many of the members are observers (the last ones).
    pub observers: usize,
}

impl Zk {
    /// `ZK_STATE_DIR=<work>/zk-<tag> scripts/zk up --ensemble N --port auto --owner <our pid>`.
    pub fn up(root: &Path, work: &Path, tag: &str, members: usize) -> Res<Zk> {
        Zk::up_with_observers(root, work, tag, members, 0)
    }

    /// [`Zk::up`] with `--observers M`: members `N+1..N+M` are observers; `hosts` and
    /// `ports` list all N+M servers, voters first.
    pub fn up_with_observers(
        root: &Path,
        work: &Path,
        tag: &str,
        members: usize,
        observers: usize,
    ) -> Res<Zk> {
        let script = root.join("scripts").join("zk");
        let state = work.join(format!("zk-{tag}"));
        let out = Command::new(&script)
            .args(["up", "--ensemble", &members.to_string(), "--observers", &observers.to_string()])
            .args(["--port", "auto", "--owner"])
            .arg(std::process::id().to_string())
            .env("ZK_STATE_DIR", &state)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            return Err(format!("scripts/zk up failed ({})", out.status).into());
        }
        let hosts = String::from_utf8(out.stdout)?.trim().to_owned();
        let ports = hosts
            .split(',')
            .map(|h| h.rsplit(':').next().unwrap_or("").parse::<u16>())
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Zk { script, state, hosts, ports, observers })
    }

    /// The connect string of the observers only.
    pub fn observer_hosts(&self) -> String {
        self.hosts.split(',').skip(self.ports.len() - self.observers).collect::<Vec<_>>().join(",")
    }

    /// The connect string of the voting members only.
    pub fn voter_hosts(&self) -> String {
        self.hosts.split(',').take(self.ports.len() - self.observers).collect::<Vec<_>>().join(",")
    }

    /// Whether member `i` (0-based) is an observer.
    pub fn is_observer(&self, i: usize) -> bool {
        i >= self.ports.len() - self.observers
    }

    /// `scripts/zk ctl ARGS...` on this ZooKeeper (stderr passed through); its stdout.
    pub fn ctl(&self, args: &[&str]) -> Res<String> {
        let out = Command::new(&self.script)
            .arg("ctl")
            .args(args)
            .env("ZK_STATE_DIR", &self.state)
            .stdin(Stdio::null())
            .stderr(Stdio::inherit())
            .output()?;
        if !out.status.success() {
            return Err(format!("scripts/zk ctl {} failed ({})", args.join(" "), out.status).into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Pid of member `i`'s JVM (0-based), from the launcher's state.
    pub fn pid(&self, i: usize) -> Option<i32> {
        std::fs::read_to_string(self.state.join(format!("zk{}", i + 1)).join("pid")).ok()?.trim().parse().ok()
    }

    /// What every member says (see [`Member`]).
    pub fn members(&self) -> Res<Vec<Member>> {
        (0..self.ports.len()).map(|i| Ok(Member::of(&self.mntr(i)?))).collect()
    }

    /// `mntr` of member `i` (0-based), as key -> value. Same bytes as `scripts/zk cli 4lw mntr N`,
    /// read directly over TCP so that sampling it costs no fork.
    pub fn mntr(&self, i: usize) -> Res<HashMap<String, String>> {
        let mut s = TcpStream::connect(("127.0.0.1", self.ports[i]))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"mntr")?;
        let mut text = String::new();
        s.read_to_string(&mut text)?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once('\t'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    /// Request counters summed over the members (see [`Counters`]).
    pub fn counters(&self) -> Res<Counters> {
        let mut c = Counters::default();
        for i in 0..self.ports.len() {
            let m = self.mntr(i)?;
            let num = |k: &str| m.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64;
            let mut writes = 0;
            for (k, v) in &m {
                let v = v.parse::<f64>().unwrap_or(0.0) as u64;
                if k.starts_with("zk_cnt_") && k.ends_with("_read_per_namespace") {
                    c.reads += v;
                } else if k.starts_with("zk_cnt_") && k.ends_with("_write_per_namespace") {
                    writes += v;
                }
            }
            // Every member applies every committed write: count it once.
            c.writes = c.writes.max(writes);
            c.packets += num("zk_packets_received");
            c.watches += num("zk_watch_count");
            c.connections += num("zk_num_alive_connections");
        }
        Ok(c)
    }

    pub fn version(&self) -> String {
        self.mntr(0).ok().and_then(|m| m.get("zk_version").cloned()).unwrap_or_default()
    }
}

impl Drop for Zk {
    fn drop(&mut self) {
        let _ = Command::new(&self.script)
            .arg("down")
            .env("ZK_STATE_DIR", &self.state)
            .stdin(Stdio::null())
            .status();
    }
}

/// ZooKeeper's own request counters (mntr), summed over an ensemble's members.
///
/// - `reads`: `zk_cnt_<ns>_read_per_namespace`, one per read request (getData, getChildren,
///   exists) served, summed over namespaces and members. Pings and session traffic are not
///   in it.
/// - `writes`: `zk_cnt_<ns>_write_per_namespace`; every member applies each committed write,
///   so the largest member count is taken.
/// - `packets`: `zk_packets_received`, every client packet, pings included.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    pub reads: u64,
    pub writes: u64,
    pub packets: u64,
    pub watches: u64,
    pub connections: u64,
}

impl Counters {
    pub fn delta(&self, before: &Counters) -> Counters {
        Counters {
            reads: self.reads.saturating_sub(before.reads),
            writes: self.writes.saturating_sub(before.writes),
            packets: self.packets.saturating_sub(before.packets),
            watches: self.watches,
            connections: self.connections,
        }
    }
}

/// One member's `mntr`: connections, watches, packets and the per-namespace request
/// counters (`zk_{cnt,sum}_<ns>_{read,write}_per_namespace`: requests and bytes, per
/// top-level znode). Each member counts what it served itself; every member applies every
/// write.
#[derive(Debug, Default, Clone)]
pub struct Member {
    pub connections: u64,
    pub watches: u64,
    pub packets_received: u64,
    pub packets_sent: u64,
    pub znodes: u64,
    pub data_bytes: u64,
    /// namespace -> (reads, read bytes, writes, write bytes).
    pub ns: HashMap<String, [u64; 4]>,
}

impl Member {
    fn of(m: &HashMap<String, String>) -> Member {
        let num = |k: &str| m.get(k).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0) as u64;
        let mut ns: HashMap<String, [u64; 4]> = HashMap::new();
        for (k, v) in m {
            let v = v.parse::<f64>().unwrap_or(0.0) as u64;
            let (slot, name) = if let Some(r) = k.strip_prefix("zk_cnt_") {
                (r.strip_suffix("_read_per_namespace").map(|n| (0, n)))
                    .or_else(|| r.strip_suffix("_write_per_namespace").map(|n| (2, n)))
                    .map_or((9, ""), |(s, n)| (s, n))
            } else if let Some(r) = k.strip_prefix("zk_sum_") {
                (r.strip_suffix("_read_per_namespace").map(|n| (1, n)))
                    .or_else(|| r.strip_suffix("_write_per_namespace").map(|n| (3, n)))
                    .map_or((9, ""), |(s, n)| (s, n))
            } else {
                (9, "")
            };
            if slot < 4 {
                ns.entry(name.to_owned()).or_default()[slot] += v;
            }
        }
        Member {
            connections: num("zk_num_alive_connections"),
            watches: num("zk_watch_count"),
            packets_received: num("zk_packets_received"),
            packets_sent: num("zk_packets_sent"),
            znodes: num("zk_znode_count"),
            data_bytes: num("zk_approximate_data_size"),
            ns,
        }
    }

    /// `self - before` for the counters (connections, watches and sizes stay as they are now).
    pub fn delta(&self, before: &Member) -> Member {
        let mut d = self.clone();
        d.packets_received = self.packets_received.saturating_sub(before.packets_received);
        d.packets_sent = self.packets_sent.saturating_sub(before.packets_sent);
        for (k, v) in d.ns.iter_mut() {
            let b = before.ns.get(k).copied().unwrap_or_default();
            for j in 0..4 {
                v[j] = v[j].saturating_sub(b[j]);
            }
        }
        d
    }

    /// (reads, read bytes, writes, write bytes) of namespace `ns`.
    pub fn ns(&self, ns: &str) -> [u64; 4] {
        self.ns.get(ns).copied().unwrap_or_default()
    }
}

pub async fn connect(hosts: &str) -> Res<zk::Client> {
    let c = zk::Client::connector().with_session_timeout(Duration::from_secs(20)).connect(hosts).await?;
    Ok(c)
}

const OPEN: zk::CreateOptions<'static> = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());

/// Creates `path` and its parents (empty data); existing ones are fine.
pub async fn ensure_path(c: &zk::Client, path: &str) -> Res<()> {
    let mut at = String::new();
    for part in path.split('/').filter(|p| !p.is_empty()) {
        at.push('/');
        at.push_str(part);
        match c.create(&at, b"", &OPEN).await {
            Ok(_) | Err(zk::Error::NodeExists) => {}
            Err(e) => return Err(format!("create {at}: {e}").into()),
        }
    }
    Ok(())
}

/// Creates (or sets) every `(path, data)`, pipelined in batches; parents must exist.
pub async fn put_many(c: &zk::Client, items: &[(String, Vec<u8>)]) -> Res<()> {
    for chunk in items.chunks(2000) {
        let futs: Vec<_> = chunk.iter().map(|(p, d)| c.create(p, d, &OPEN)).collect();
        let results = join_all(futs).await;
        for ((p, d), r) in chunk.iter().zip(results) {
            match r {
                Ok(_) => {}
                Err(zk::Error::NodeExists) => {
                    c.set_data(p, d, None).await?;
                }
                Err(e) => return Err(format!("create {p}: {e}").into()),
            }
        }
    }
    Ok(())
}
