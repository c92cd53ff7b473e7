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
}

impl Zk {
    /// `ZK_STATE_DIR=<work>/zk-<tag> scripts/zk up --ensemble N --port auto --owner <our pid>`.
    pub fn up(root: &Path, work: &Path, tag: &str, members: usize) -> Res<Zk> {
        let script = root.join("scripts").join("zk");
        let state = work.join(format!("zk-{tag}"));
        let out = Command::new(&script)
            .args(["up", "--ensemble", &members.to_string(), "--port", "auto", "--owner"])
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
        Ok(Zk { script, state, hosts, ports })
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
