//! `fleet500`: a big fleet on ZooKeeper's own scale-out. N = 500 agents (50 with `--quick`),
//! each its own process with one raw file and (unless `--no-report`, or the agent has no
//! `zkrender fleet`) the fleet report on, on a 3-member ensemble plus 2 observers; the agents
//! list only the observers in `hosts` (the client picks one of them at random, so they spread).
//!
//! Measured: a change reaching all N files (per agent p50/p99, all N); the time until
//! `zkrender fleet` shows all N current; ZooKeeper requests per change from `mntr` deltas, per
//! namespace (the data's, the reports'); what each server carries (sessions, watches,
//! packets, at idle and per change); then the whole ensemble restarted (`scripts/zk ctl
//! restart all`): the time until every file holds a value set after it and every report is
//! back and current.
//!
//! The benchmark's own client (the sets) and `zkrender fleet` connect to the voters only, so
//! that what the observers count is the agents' traffic alone: reads are taken from the
//! observers, writes from the largest member count (every member applies every write).

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use zookeeper_client as zkc;

use crate::Res;
use crate::agent::{self, Agent, ProcStats, head, q, raw_file};
use crate::scenarios::{Ctx, f, get, row, settle};
use crate::stats::{mib, ms, r3, summary};
use crate::watch::DirWatch;
use crate::zk::{Member, Zk, connect, ensure_path, put_many};

const KEY: &str = "/f500/key";
const DATA_NS: &str = "f500";
const REPORT: &str = "/zkrender/agents";
const REPORT_NS: &str = "zkrender";

/// Whether `bin` has the `fleet` command (the fleet report came with it).
pub fn has_fleet_command(bin: &Path) -> bool {
    Command::new(bin)
        .args(["fleet", "--help"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// One `zkrender fleet --zookeeper HOSTS --report PATH` run: (exit 0 = all current, stdout).
fn fleet_cmd(bin: &Path, hosts: &str) -> (bool, String) {
    match Command::new(bin)
        .args(["fleet", "--zookeeper", hosts, "--report", REPORT])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
    {
        Ok(o) => (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned()),
        Err(_) => (false, String::new()),
    }
}

/// Runs `zkrender fleet` until it exits 0 and `zk`'s `REPORT` has `n` children (the report
/// of every agent is there); the time that happened, the number of runs.
async fn wait_fleet_current(
    bin: &Path,
    hosts: &str,
    client: &zkc::Client,
    n: usize,
    timeout: Duration,
) -> (Option<Instant>, u32, String) {
    let deadline = Instant::now() + timeout;
    let mut runs = 0;
    let mut last = String::new();
    while Instant::now() < deadline {
        runs += 1;
        let (ok, out) = fleet_cmd(bin, hosts);
        last = out;
        if ok {
            let t = Instant::now();
            let children = client.list_children(REPORT).await.map(|c| c.len()).unwrap_or(0);
            if children >= n {
                return (Some(t), runs, last);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (None, runs, last)
}

/// Sets `KEY` to `v`, retrying while the client finds its way back after a restart.
async fn set_retrying(client: &zkc::Client, v: &[u8]) -> Res<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match client.set_data(KEY, v, None).await {
            Ok(_) => return Ok(()),
            Err(e) if Instant::now() < deadline => {
                eprintln!("zkrender-bench: fleet500: set after restart: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Per-member view for the JSON and the sizing table.
fn member_json(zk: &Zk, i: usize, m: &Member, rss_kib: u64) -> Value {
    json!({
        "member": i + 1,
        "role": if zk.is_observer(i) { "observer" } else { "voter" },
        "connections": m.connections,
        "watches": m.watches,
        "packets_received": m.packets_received,
        "packets_sent": m.packets_sent,
        "jvm_rss_mib": mib(rss_kib),
        "znodes": m.znodes,
        "data_bytes": m.data_bytes,
    })
}

fn sum_ns(ms: &[Member], ns: &str, slot: usize) -> u64 {
    ms.iter().map(|m| m.ns(ns)[slot]).sum()
}

/// [`sum_ns`] over the observers only (the agents' servers).
fn obs_ns(zk: &Zk, ms: &[Member], ns: &str, slot: usize) -> u64 {
    ms.iter().enumerate().filter(|(i, _)| zk.is_observer(*i)).map(|(_, m)| m.ns(ns)[slot]).sum()
}

fn max_ns(ms: &[Member], ns: &str, slot: usize) -> u64 {
    ms.iter().map(|m| m.ns(ns)[slot]).max().unwrap_or(0)
}

fn delta(after: &[Member], before: &[Member]) -> Vec<Member> {
    after.iter().zip(before).map(|(a, b)| a.delta(b)).collect()
}

pub async fn fleet500(ctx: &mut Ctx) -> Res<Value> {
    let n = ctx.pick(500, 50);
    let changes = ctx.pick(10, 5);
    let gap = Duration::from_millis(2000); // > report_interval (1 s): no report is held back
    let report = ctx.report && has_fleet_command(&ctx.bin);
    if ctx.report && !report {
        eprintln!("zkrender-bench: fleet500: the agent has no `zkrender fleet`: running without the report");
    }
    let zk = Zk::up_with_observers(&ctx.root, &ctx.work, "fleet500", 3, 2)?;
    if ctx.zk_version.is_empty() {
        ctx.zk_version = zk.version();
    }
    let obs = zk.observer_hosts();
    let voters = zk.voter_hosts();
    let client = connect(&voters).await?;
    ensure_path(&client, "/f500").await?;
    put_many(&client, &[(KEY.to_owned(), b"init".to_vec())]).await?;
    if report {
        ensure_path(&client, REPORT).await?;
    }
    let dir = ctx.dir("fleet500")?;
    let out = dir.join("out");
    let mut w = DirWatch::new(&out)?;

    // Start the fleet.
    let mut want = HashMap::new();
    let mut agents = Vec::with_capacity(n);
    let t_spawn = Instant::now();
    for i in 0..n {
        let name = format!("a{i:03}.key");
        let mut cfg = head(&obs, "0ms", "");
        if report {
            cfg = cfg.replacen(
                "[agent]\n",
                &format!("[agent]\nreport = {}\nid = {}\n", q(REPORT), q(&format!("a{i:03}"))),
                1,
            );
        }
        cfg += &raw_file(&out.join(&name), KEY);
        let p = dir.join(format!("a{i:03}.toml"));
        fs::write(&p, cfg)?;
        want.insert(name, b"init".to_vec());
        agents.push(Agent::spawn(&ctx.bin, &p, &ctx.log(&format!("fleet500-a{i:03}")))?);
    }
    let spawned_ms = ms(t_spawn.elapsed());
    settle(&mut w, &mut agents, &want, Duration::from_secs(180)).await?;
    let start_files_ms = ms(t_spawn.elapsed());
    let mut start_reports_ms = f64::NAN;
    if report {
        let (t, _, last) = wait_fleet_current(&ctx.bin, &voters, &client, n, Duration::from_secs(60)).await;
        let t = t.ok_or_else(|| format!("zkrender fleet never showed all {n} current at start:\n{last}"))?;
        start_reports_ms = ms(t - t_spawn);
    }
    eprintln!(
        "zkrender-bench: fleet500: {n} agents spawned in {spawned_ms:.0} ms, all files in {start_files_ms:.0} ms, reports {start_reports_ms:.0} ms"
    );

    // Idle: what the servers carry with the fleet connected and nothing changing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.drain().await;
    let idle_s = ctx.pick(10, 5);
    let m0 = zk.members()?;
    let (idle_a0, idle_z0) = cpu_ms(&agents, &zk);
    let t_idle = Instant::now();
    tokio::time::sleep(Duration::from_secs(idle_s)).await;
    let (idle_a1, idle_z1) = cpu_ms(&agents, &zk);
    let idle_secs = t_idle.elapsed().as_secs_f64();
    let m1 = zk.members()?;
    // CPU per second with nothing changing (pings, timers): subtracted from the change loop.
    let (idle_agents_ms_s, idle_zk_ms_s) = ((idle_a1 - idle_a0) / idle_secs, (idle_z1 - idle_z0) / idle_secs);
    let idle = delta(&m1, &m0);
    let rss: Vec<ProcStats> = agents.iter().map(|a| a.stats()).collect();
    let jvm_rss: Vec<u64> =
        (0..zk.ports.len()).map(|i| zk.pid(i).map(|p| ProcStats::of(p).rss_kib).unwrap_or(0)).collect();
    let per_member: Vec<Value> =
        (0..zk.ports.len()).map(|i| member_json(&zk, i, &m1[i], jvm_rss[i])).collect();
    let idle_packets_per_s: Vec<f64> =
        idle.iter().map(|m| r3((m.packets_received + m.packets_sent) as f64 / idle_s as f64)).collect();
    let mut per_member = per_member;
    for (m, p) in per_member.iter_mut().zip(&idle_packets_per_s) {
        m["idle_packets_per_s"] = json!(p);
    }

    // One `zkrender fleet` run alone: its requests.
    let mut fleet_run = json!(null);
    if report {
        let b = zk.members()?;
        let t = Instant::now();
        let (ok, _) = fleet_cmd(&ctx.bin, &voters);
        let took = ms(t.elapsed());
        let d = delta(&zk.members()?, &b);
        fleet_run = json!({
            "ok": ok, "ms": r3(took),
            "reads": sum_ns(&d, REPORT_NS, 0) + sum_ns(&d, DATA_NS, 0),
            "read_bytes": sum_ns(&d, REPORT_NS, 1) + sum_ns(&d, DATA_NS, 1),
        });
    }

    // Changes.
    let mut per_agent = Vec::new();
    let mut all_n = Vec::new();
    let mut fleet_ms = Vec::new();
    let mut fleet_runs = Vec::new();
    let mut data_reads = Vec::new();
    let mut data_read_bytes = Vec::new();
    let mut data_writes = Vec::new();
    let mut report_writes = Vec::new();
    let mut report_write_bytes = Vec::new();
    let mut report_reads = Vec::new();
    let mut fleet_reads = Vec::new();
    let mut obs_packets = Vec::new();
    let mut voter_packets = Vec::new();
    let mut misses = 0;
    let mut per_change_curves = Vec::new();
    let (agents_cpu0, zk_cpu0) = cpu_ms(&agents, &zk);
    let busy0 = machine_busy_ms();
    let own0 = ProcStats::of(std::process::id() as i32).cpu_stat_ns;
    let t_loop = Instant::now();
    for rep in 0..changes {
        tokio::time::sleep(gap).await;
        w.drain().await;
        let v = format!("f500-{rep}");
        let want: HashMap<String, Vec<u8>> =
            (0..n).map(|i| (format!("a{i:03}.key"), v.clone().into_bytes())).collect();
        let c0 = zk.members()?;
        let t0 = Instant::now();
        let set = client.set_data(KEY, v.as_bytes(), None);
        let (done, acked) = tokio::join!(w.wait_all(&want, false, Duration::from_secs(20)), set);
        acked?;
        misses += n - done.len();
        let mut lat: Vec<f64> = done.values().map(|t| ms(*t - t0)).collect();
        lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
        all_n.push(if done.len() == n { lat.last().copied().unwrap_or(f64::NAN) } else { f64::NAN });
        per_change_curves.push(lat.iter().map(|x| r3(*x)).collect::<Vec<_>>());
        per_agent.extend(lat);
        if report {
            let (t, runs, _) =
                wait_fleet_current(&ctx.bin, &voters, &client, n, Duration::from_secs(20)).await;
            fleet_ms.push(t.map_or(f64::NAN, |t| ms(t - t0)));
            fleet_runs.push(runs as f64);
        }
        // Trailing report writes (throttled to one per report_interval) land meanwhile.
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let d = delta(&zk.members()?, &c0);
        data_reads.push(obs_ns(&zk, &d, DATA_NS, 0) as f64);
        data_read_bytes.push(obs_ns(&zk, &d, DATA_NS, 1) as f64);
        data_writes.push(max_ns(&d, DATA_NS, 2) as f64);
        report_writes.push(max_ns(&d, REPORT_NS, 2) as f64);
        report_write_bytes.push(max_ns(&d, REPORT_NS, 3) as f64);
        report_reads.push(obs_ns(&zk, &d, REPORT_NS, 0) as f64);
        fleet_reads.push(
            (sum_ns(&d, REPORT_NS, 0) + sum_ns(&d, DATA_NS, 0)) as f64
                - (obs_ns(&zk, &d, REPORT_NS, 0) + obs_ns(&zk, &d, DATA_NS, 0)) as f64,
        );
        let pk = |obs: bool| -> f64 {
            d.iter()
                .enumerate()
                .filter(|(i, _)| zk.is_observer(*i) == obs)
                .map(|(_, m)| (m.packets_received + m.packets_sent) as f64)
                .sum()
        };
        obs_packets.push(pk(true));
        voter_packets.push(pk(false));
    }

    // CPU per change (the whole loop, gaps included: idle costs little next to a change).
    let (agents_cpu1, zk_cpu1) = cpu_ms(&agents, &zk);
    let busy = machine_busy_ms() - busy0;
    let loop_ms = ms(t_loop.elapsed());
    let own = (ProcStats::of(std::process::id() as i32).cpu_stat_ns - own0) as f64 / 1e6;
    let per = |x: f64| r3(x / changes as f64);
    let loop_s = loop_ms / 1000.0;
    let agents_net = (agents_cpu1 - agents_cpu0) - idle_agents_ms_s * loop_s;
    let zk_net = (zk_cpu1 - zk_cpu0) - idle_zk_ms_s * loop_s;
    let cpu = json!({
        "note": "over the change loop, divided by the changes; *_net: minus the idle rate (measured over the idle window) times the loop's duration",
        "loop_s": r3(loop_s),
        "agents_idle_ms_per_s": r3(idle_agents_ms_s),
        "zookeeper_idle_ms_per_s": r3(idle_zk_ms_s),
        "agents_ms_per_change": per(agents_cpu1 - agents_cpu0),
        "agents_net_ms_per_change": per(agents_net),
        "agent_net_ms_per_change": r3(agents_net / (changes * n) as f64),
        "zookeeper_ms_per_change": per(zk_cpu1 - zk_cpu0),
        "zookeeper_net_ms_per_change": per(zk_net),
        "benchmark_ms_per_change": per(own),
        "machine_busy_ms_per_change": per(busy),
        "machine_capacity_ms_per_change": per(loop_ms * ctx.cpus as f64),
        "other_ms_per_change": per(busy - (agents_cpu1 - agents_cpu0) - (zk_cpu1 - zk_cpu0) - own),
    });

    // The whole ensemble restarted: SIGTERM all 5 JVMs, relaunch them, wait until they serve.
    let sessions_before = count_logs(&agents, "new zookeeper session");
    let t_r0 = Instant::now();
    zk.ctl(&["restart", "all"])?;
    let restart_ms = ms(t_r0.elapsed());
    let v = b"f500-after-restart".to_vec();
    set_retrying(&client, &v).await?;
    let t_set = Instant::now();
    // Reports (ephemeral znodes) present right after the restart: all of them when the
    // sessions survived it.
    let reports_present =
        if report { client.list_children(REPORT).await.map(|c| c.len()).unwrap_or(0) } else { 0 };
    let want: HashMap<String, Vec<u8>> = (0..n).map(|i| (format!("a{i:03}.key"), v.clone())).collect();
    let done = settle(&mut w, &mut agents, &want, Duration::from_secs(120)).await?;
    let mut restart_curve: Vec<f64> = done.values().map(|t| ms(t.saturating_duration_since(t_set))).collect();
    restart_curve.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let files_after_set_ms = restart_curve.last().copied().unwrap_or(f64::NAN);
    let files_after_restart_ms = files_after_set_ms + ms(t_set - t_r0);
    let mut reports_after_restart_ms = f64::NAN;
    let mut reports_after_set_ms = f64::NAN;
    if report {
        let (t, _, last) = wait_fleet_current(&ctx.bin, &voters, &client, n, Duration::from_secs(120)).await;
        let t = t.ok_or_else(|| {
            format!("after the restart, zkrender fleet never showed all {n} current:\n{last}")
        })?;
        reports_after_restart_ms = ms(t - t_r0);
        reports_after_set_ms = ms(t - t_set);
    }
    let new_sessions = count_logs(&agents, "new zookeeper session") - sessions_before;
    let mut alive = 0;
    for a in agents.iter_mut() {
        if a.check_alive().is_ok() {
            alive += 1;
        }
    }
    agent::stop_all(agents);
    drop(client);
    drop(zk);

    // Figures and rows.
    let pa = summary(&per_agent);
    let an = summary(&all_n);
    let fl = summary(&fleet_ms);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let p99 = get(&pa, "p99");
    let fleet_worst = fleet_ms.iter().copied().fold(f64::NAN, f64::max);
    let mut rows = vec![
        row(&format!("N={n}: set to file, per agent p50 (ms)"), f(get(&pa, "p50")), None),
        row(&format!("N={n}: set to file, per agent p99 (ms)"), f(p99), Some(("<= 300", p99 <= 300.0))),
        row(
            &format!("N={n}: set to all N files, p50 / max (ms)"),
            format!("{} / {}", f(get(&an, "p50")), f(get(&an, "max"))),
            None,
        ),
    ];
    if report {
        rows.push(row(
            &format!("N={n}: set to `zkrender fleet` all current, p50 / max (ms)"),
            format!("{} / {}", f(get(&fl, "p50")), f(fleet_worst)),
            Some(("<= 2000", fleet_worst <= 2000.0)),
        ));
    } else {
        rows.push(row(
            &format!("N={n}: fleet report"),
            "off (agent without `zkrender fleet`, or --no-report)".into(),
            None,
        ));
    }
    rows.push(row(
        &format!("N={n}: requests per change: data reads + writes; report writes"),
        format!("{} + {}; {}", f(mean(&data_reads)), f(mean(&data_writes)), f(mean(&report_writes))),
        None,
    ));
    rows.push(row(
        &format!(
            "N={n}: CPU per change, idle subtracted (ms): agents / ZooKeeper / other processes ({} CPUs)",
            ctx.cpus
        ),
        format!(
            "{} / {} / {}",
            f(get(&cpu, "agents_net_ms_per_change")),
            f(get(&cpu, "zookeeper_net_ms_per_change")),
            f(get(&cpu, "other_ms_per_change"))
        ),
        None,
    ));
    rows.push(row(
        &format!("N={n}: packets per change: observers / voters"),
        format!("{} / {}", f(mean(&obs_packets)), f(mean(&voter_packets))),
        None,
    ));
    rows.push(row(
        &format!("N={n}: sessions / watches per observer"),
        (0..per_member.len())
            .filter(|i| per_member[*i]["role"] == "observer")
            .map(|i| format!("{} / {}", per_member[i]["connections"], per_member[i]["watches"]))
            .collect::<Vec<_>>()
            .join(", "),
        None,
    ));
    rows.push(row(
        &format!("N={n}: whole ensemble restarted: files / reports all back (ms from restart)"),
        format!("{} / {}", f(files_after_restart_ms), f(reports_after_restart_ms)),
        Some(("all", misses == 0 && alive == n)),
    ));
    rows.push(row(
        &format!("N={n}: agents' RSS, mean / total (MiB)"),
        format!(
            "{} / {}",
            f(mib(rss.iter().map(|s| s.rss_kib).sum::<u64>() / n as u64)),
            f(mib(rss.iter().map(|s| s.rss_kib).sum::<u64>()))
        ),
        None,
    ));
    Ok(json!({
        "scenario": "fleet500",
        "agents": n, "voters": 3, "observers": 2, "hosts": "observers only",
        "report": report, "changes": changes, "gap_ms": gap.as_millis() as u64, "missed": misses,
        "start": { "spawn_ms": r3(spawned_ms), "all_files_ms": r3(start_files_ms), "all_reports_ms": r3(start_reports_ms) },
        "per_agent_ms": pa, "all_agents_ms": an,
        "fleet_all_current_ms": fl,
        "fleet_polls_per_change_mean": r3(mean(&fleet_runs)),
        "fleet_command_alone": fleet_run,
        "requests_per_change": {
            "data_reads": r3(mean(&data_reads)), "data_read_bytes": r3(mean(&data_read_bytes)),
            "data_writes": r3(mean(&data_writes)),
            "report_writes": r3(mean(&report_writes)), "report_write_bytes": r3(mean(&report_write_bytes)),
            "agents_report_reads": r3(mean(&report_reads)),
            "fleet_polls_reads_on_voters": r3(mean(&fleet_reads)),
            "packets_observers": r3(mean(&obs_packets)), "packets_voters": r3(mean(&voter_packets)),
        },
        "idle": { "seconds": idle_s, "packets_per_s_per_member": idle_packets_per_s },
        "members": per_member,
        "agent_rss_mib": {
            "mean": mib(rss.iter().map(|s| s.rss_kib).sum::<u64>() / n as u64),
            "max": mib(rss.iter().map(|s| s.rss_kib).max().unwrap_or(0)),
            "total": mib(rss.iter().map(|s| s.rss_kib).sum()),
        },
        "cpu": cpu,
        "agent_fds_mean": r3(rss.iter().map(|s| s.fds).sum::<u64>() as f64 / n as f64),
        "agent_threads_mean": r3(rss.iter().map(|s| s.threads).sum::<u64>() as f64 / n as f64),
        "restart": {
            "restart_all_ms": r3(restart_ms),
            "files_ms_from_restart": r3(files_after_restart_ms),
            "files_ms_from_set": r3(files_after_set_ms),
            "reports_ms_from_restart": r3(reports_after_restart_ms),
            "reports_ms_from_set": r3(reports_after_set_ms),
            "new_sessions": new_sessions,
            "reports_present_right_after": reports_present,
            "agents_alive": alive,
        },
        "rows": rows,
        "samples": {
            "per_change_ms": per_change_curves,
            "fleet_all_current_ms": fleet_ms.iter().map(|x| r3(*x)).collect::<Vec<_>>(),
            "restart_files_ms": restart_curve.iter().map(|x| r3(*x)).collect::<Vec<_>>(),
            "restart_set_ms": r3(ms(t_set - t_r0)),
            "restart_all_ms": r3(restart_ms),
        },
    }))
}

/// CPU time (ms) the whole machine spent busy (everything but idle and iowait, all CPUs), from
/// /proc/stat: with the agents' and ZooKeeper's own, it says how much went to other work.
fn machine_busy_ms() -> f64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let v: Vec<f64> = stat
        .lines()
        .next()
        .unwrap_or("")
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse::<f64>().ok())
        .collect();
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3).copied().unwrap_or(0.0) + v.get(4).copied().unwrap_or(0.0);
    (total - idle) * 1000.0 / tick
}

/// CPU time (ms, utime + stime of all threads) of the agents and of the ZooKeeper JVMs.
fn cpu_ms(agents: &[Agent], zk: &Zk) -> (f64, f64) {
    let a: u64 = agents.iter().map(|a| a.stats().cpu_stat_ns).sum();
    let z: u64 = (0..zk.ports.len()).filter_map(|i| zk.pid(i)).map(|p| ProcStats::of(p).cpu_stat_ns).sum();
    (a as f64 / 1e6, z as f64 / 1e6)
}

/// How many agent logs hold `needle`, in total.
fn count_logs(agents: &[Agent], needle: &str) -> usize {
    agents.iter().map(|a| fs::read_to_string(&a.log).unwrap_or_default().matches(needle).count()).sum()
}
