//! Six of the scenarios (`compare` is in compare.rs). Each starts its own ZooKeeper with `scripts/zk`, runs the release
//! `zkrender` as separate processes, and returns one JSON object: its measurements, its
//! `rows` for the table (metric, value, target, verdict) and, for the plots, raw `samples`.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;
use serde_json::{Value, json};

use crate::Res;
use crate::agent::{self, Agent, ProcStats, free_port, head, inline_file, q, raw_file};
use crate::hook::{self, Hook};
use crate::stats::{mib, ms, r3, summary};
use crate::watch::DirWatch;
use crate::zk::{Zk, connect, ensure_path, put_many};

/// What every scenario needs.
pub struct Ctx {
    pub root: PathBuf,
    pub bin: PathBuf,
    /// `--baseline`: a second zkrender binary for `compare` (e.g. an older build).
    pub baseline: Option<PathBuf>,
    pub quick: bool,
    /// fleet500: agents with the fleet report on (`--no-report` turns it off).
    pub report: bool,
    pub work: PathBuf,
    /// Online CPUs (for CPU shares).
    pub cpus: usize,
    /// Set by `scale` for `footprint`: the agent's /proc stats once scale settled.
    pub scale_stats: Option<ProcStats>,
    pub zk_version: String,
}

impl Ctx {
    pub(crate) fn pick<T>(&self, full: T, quick: T) -> T {
        if self.quick { quick } else { full }
    }
    /// An agent's log file: under work/logs, away from the config directory (which the
    /// agent watches for config hot reload: a log there would wake it on every line).
    pub(crate) fn log(&self, name: &str) -> PathBuf {
        let d = self.work.join("logs");
        let _ = fs::create_dir_all(&d);
        d.join(format!("{name}.log"))
    }
    pub(crate) fn dir(&self, name: &str) -> Res<PathBuf> {
        let d = self.work.join(name);
        fs::create_dir_all(&d)?;
        Ok(d)
    }
}

/// One table row: metric, value, target text, verdict (`ok`, `MISS`, or `-` without target).
pub(crate) fn row(metric: &str, value: String, target: Option<(&str, bool)>) -> Value {
    match target {
        Some((t, ok)) => json!([metric, value, t, if ok { "ok" } else { "MISS" }]),
        None => json!([metric, value, "", "-"]),
    }
}

pub(crate) fn f(x: f64) -> String {
    if x.is_nan() {
        "n/a".into()
    } else if x >= 100.0 {
        format!("{x:.0}")
    } else if x >= 10.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

pub(crate) fn get(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN)
}

/// Waits until every wanted file holds its bytes, failing early if an agent died.
pub(crate) async fn settle(
    w: &mut DirWatch,
    agents: &mut [Agent],
    want: &HashMap<String, Vec<u8>>,
    timeout: Duration,
) -> Res<HashMap<String, Instant>> {
    let start = Instant::now();
    let mut done: HashMap<String, Instant> = HashMap::new();
    loop {
        let rest: HashMap<String, Vec<u8>> = want
            .iter()
            .filter(|(k, _)| !done.contains_key(*k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        if rest.is_empty() {
            return Ok(done);
        }
        done.extend(w.wait_all(&rest, true, Duration::from_millis(1000)).await);
        if done.len() == want.len() {
            return Ok(done);
        }
        for a in agents.iter_mut() {
            a.check_alive()?;
        }
        if start.elapsed() > timeout {
            let missing: Vec<&String> = want.keys().filter(|k| !done.contains_key(*k)).take(5).collect();
            return Err(format!(
                "{} of {} files not written after {timeout:?} (e.g. {missing:?})",
                want.len() - done.len(),
                want.len()
            )
            .into());
        }
    }
}

fn stats_json(s: &ProcStats) -> Value {
    json!({ "rss_mib": mib(s.rss_kib), "hwm_mib": mib(s.hwm_kib), "threads": s.threads, "fds": s.fds })
}

// ------------------------------------------------------------------ 1. latency

pub async fn latency(ctx: &mut Ctx) -> Res<Value> {
    let n = ctx.pick(500, 100);
    let spacing = Duration::from_millis(20);
    let zk = Zk::up(&ctx.root, &ctx.work, "latency", 1)?;
    ctx.zk_version = zk.version();
    let client = connect(&zk.hosts).await?;
    ensure_path(&client, "/lat").await?;
    put_many(&client, &[("/lat/key".into(), b"init".to_vec())]).await?;
    let dir = ctx.dir("latency")?;
    let mut w = DirWatch::new(&dir.join("out"))?;
    let cfg = dir.join("zkrender.toml");
    let listen = format!("127.0.0.1:{}", free_port());
    fs::write(&cfg, head(&zk.hosts, "0ms", &listen) + &raw_file(&w.path("value"), "/lat/key"))?;
    let mut agents =
        vec![Agent::spawn(&ctx.bin, &cfg, &ctx.log(&dir.file_name().unwrap().to_string_lossy()))?];
    settle(
        &mut w,
        &mut agents,
        &HashMap::from([("value".into(), b"init".to_vec())]),
        Duration::from_secs(30),
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.drain().await;

    let mut lat = Vec::with_capacity(n);
    let mut rtt = Vec::with_capacity(n);
    let mut misses = 0;
    let cpu0 = agents[0].stats();
    let start = tokio::time::Instant::now();
    for i in 0..n {
        tokio::time::sleep_until(start + spacing * i as u32).await;
        let v = format!("latency-{i}");
        let t0 = Instant::now();
        let set = client.set_data("/lat/key", v.as_bytes(), None);
        let (seen, acked) = tokio::join!(w.wait_one("value", v.as_bytes(), Duration::from_secs(5)), async {
            let r = set.await;
            (r, Instant::now())
        });
        acked.0?;
        rtt.push(ms(acked.1 - t0));
        match seen {
            Some(t) => lat.push(ms(t - t0)),
            None => misses += 1,
        }
    }
    let s = summary(&lat);
    let st = agents[0].stats();
    let cpu_per_change_ms = st.busy_since(&cpu0).0 as f64 / 1e6 / n as f64;
    let (p50, p99) = (get(&s, "p50"), get(&s, "p99"));
    let rows = vec![
        row("latency p50 (ms)", f(p50), Some(("<= 1", p50 <= 1.0))),
        row("latency p90 (ms)", f(get(&s, "p90")), None),
        row("latency p99 (ms)", f(p99), Some(("<= 5", p99 <= 5.0))),
        row("latency max (ms)", f(get(&s, "max")), None),
        row("ZooKeeper set round trip p50 (ms)", f(get(&summary(&rtt), "p50")), None),
        row("agent CPU per change (ms)", f(cpu_per_change_ms), None),
        row("changes not seen within 5 s", misses.to_string(), Some(("0", misses == 0))),
    ];
    Ok(json!({
        "scenario": "latency",
        "sets": n, "spacing_ms": 20, "missed": misses,
        "latency_ms": s,
        "set_rtt_ms": summary(&rtt),
        "agent_cpu_per_change_ms": r3(cpu_per_change_ms),
        "agent": stats_json(&st),
        "rows": rows,
        "samples": { "latency_ms": lat.iter().map(|x| r3(*x)).collect::<Vec<_>>() },
    }))
}

// ------------------------------------------------------------------ 2. burst

pub async fn burst(ctx: &mut Ctx) -> Res<Value> {
    let n = ctx.pick(10_000, 2_000);
    let reps = ctx.pick(3, 1);
    let zk = Zk::up(&ctx.root, &ctx.work, "burst", 1)?;
    let client = connect(&zk.hosts).await?;
    ensure_path(&client, "/burst").await?;
    let mut runs = Vec::new();
    let mut rows = Vec::new();
    for wait in ["0ms", "100ms"] {
        let znode = format!("/burst/w{wait}");
        put_many(&client, &[(znode.clone(), b"init".to_vec())]).await?;
        let hook = Hook::start().await?;
        let dir = ctx.dir(&format!("burst-{wait}"))?;
        let mut w = DirWatch::new(&dir.join("out"))?;
        let cfg = dir.join("zkrender.toml");
        let listen = format!("127.0.0.1:{}", free_port());
        fs::write(
            &cfg,
            head(&zk.hosts, wait, &listen)
                + &raw_file(&w.path("value"), &znode)
                + &format!("[file.reload]\nhttp = {}\n", q(&hook.url)),
        )?;
        let mut agents =
            vec![Agent::spawn(&ctx.bin, &cfg, &ctx.log(&dir.file_name().unwrap().to_string_lossy()))?];
        settle(
            &mut w,
            &mut agents,
            &HashMap::from([("value".into(), b"init".to_vec())]),
            Duration::from_secs(30),
        )
        .await?;
        let mut converge = Vec::new();
        let mut converge_issue = Vec::new();
        let mut reloads = Vec::new();
        let mut installs = Vec::new();
        let mut rates = Vec::new();
        for rep in 0..reps {
            tokio::time::sleep(Duration::from_millis(700)).await;
            w.drain().await;
            w.installs.clear();
            let c0 = hook.count();
            let values: Vec<String> = (0..n).map(|i| format!("burst-{wait}-{rep}-{i}")).collect();
            let last = values.last().unwrap().clone();
            let t_first = Instant::now();
            // Back to back: every request is on the wire before the first answer is awaited.
            let sets: Vec<_> = values.iter().map(|v| client.set_data(&znode, v.as_bytes(), None)).collect();
            let t_issued = Instant::now();
            let (acked, seen) = tokio::join!(
                async {
                    let r = join_all(sets).await;
                    (r, Instant::now())
                },
                w.wait_one("value", last.as_bytes(), Duration::from_secs(30))
            );
            for r in acked.0 {
                r?;
            }
            let t_acked = acked.1;
            let seen = seen.ok_or("the last value never reached the file")?;
            // Reloads finish after the install: give them time, then count.
            tokio::time::sleep(Duration::from_millis(1500)).await;
            w.drain().await;
            converge.push(ms(seen.saturating_duration_since(t_acked)));
            converge_issue.push(ms(seen.saturating_duration_since(t_issued)));
            reloads.push(hook.count() - c0);
            installs.push(w.installs.get("value").copied().unwrap_or(0));
            rates.push(n as f64 / (t_acked - t_first).as_secs_f64());
        }
        let worst = converge.iter().cloned().fold(0.0, f64::max);
        let target = if wait == "0ms" { Some(("<= 50", worst <= 50.0)) } else { None };
        rows.push(row(
            &format!("wait={wait}: converged after last set acked (ms, worst of {reps})"),
            f(worst),
            target,
        ));
        rows.push(row(
            &format!("wait={wait}: reloads per burst of {n}"),
            reloads.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
            None,
        ));
        rows.push(row(
            &format!("wait={wait}: file installs per burst"),
            installs.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
            None,
        ));
        runs.push(json!({
            "wait": wait,
            "sets": n,
            "converge_after_last_ack_ms": converge.iter().map(|x| r3(*x)).collect::<Vec<_>>(),
            "converge_after_last_issue_ms": converge_issue.iter().map(|x| r3(*x)).collect::<Vec<_>>(),
            "reloads": reloads,
            "file_installs": installs,
            "sets_per_s": rates.iter().map(|x| x.round()).collect::<Vec<_>>(),
        }));
        agent::stop_all(agents);
    }
    Ok(json!({ "scenario": "burst", "runs": runs, "rows": rows }))
}

// ------------------------------------------------------------------ 3. scale

/// The scale layout: 500 raw files, 499 templates over 8,500 znodes, one template listing
/// 1,000 children: 10,000 znodes, 1,000 files (smaller with --quick).
struct Layout {
    raw: usize,
    /// Number of keys each template reads.
    tpl: Vec<usize>,
    list: usize,
}

impl Layout {
    fn new(files: usize, znodes: usize) -> Layout {
        let raw = files / 2;
        let list = znodes / 10;
        let ntpl = files - raw - 1;
        let keys = znodes - raw - list;
        let tpl = (0..ntpl).map(|t| keys / ntpl + usize::from(t < keys % ntpl)).collect();
        Layout { raw, tpl, list }
    }
}

pub(crate) fn tpl_text(keys: usize) -> String {
    (0..keys).map(|k| format!("k{k:02} = {{{{ znode('k{k:02}') }}}}\n")).collect()
}
fn tpl_render(t: usize, vals: &[String]) -> Vec<u8> {
    let _ = t;
    vals.iter().enumerate().map(|(k, v)| format!("k{k:02} = {v}\n")).collect::<String>().into_bytes()
}
fn list_render(vals: &[String]) -> Vec<u8> {
    vals.iter().enumerate().map(|(c, v)| format!("c{c:04} = {v}\n")).collect::<String>().into_bytes()
}

pub async fn scale(ctx: &mut Ctx) -> Res<Value> {
    let (files, znodes) = ctx.pick((1000, 10_000), (1000, 10_000));
    let changes = ctx.pick(300, 60);
    let lay = Layout::new(files, znodes);
    let zk = Zk::up(&ctx.root, &ctx.work, "scale", 1)?;
    let client = connect(&zk.hosts).await?;
    for p in ["/scale/raw", "/scale/list"] {
        ensure_path(&client, p).await?;
    }
    let mut raw_v: Vec<String> = (0..lay.raw).map(|i| format!("raw-{i}-v0")).collect();
    let mut tpl_v: Vec<Vec<String>> =
        lay.tpl.iter().enumerate().map(|(t, &n)| (0..n).map(|k| format!("t{t}k{k}-v0")).collect()).collect();
    let mut list_v: Vec<String> = (0..lay.list).map(|c| format!("c{c}-v0")).collect();
    let mut items: Vec<(String, Vec<u8>)> = Vec::with_capacity(znodes + lay.tpl.len());
    for (i, v) in raw_v.iter().enumerate() {
        items.push((format!("/scale/raw/n{i:04}"), v.clone().into_bytes()));
    }
    ensure_path(&client, "/scale/tpl").await?;
    let dirs: Vec<(String, Vec<u8>)> =
        (0..lay.tpl.len()).map(|t| (format!("/scale/tpl/t{t:03}"), Vec::new())).collect();
    put_many(&client, &dirs).await?;
    for (t, vals) in tpl_v.iter().enumerate() {
        for (k, v) in vals.iter().enumerate() {
            items.push((format!("/scale/tpl/t{t:03}/k{k:02}"), v.clone().into_bytes()));
        }
    }
    for (c, v) in list_v.iter().enumerate() {
        items.push((format!("/scale/list/c{c:04}"), v.clone().into_bytes()));
    }
    let value_znodes = items.len();
    put_many(&client, &items).await?;
    drop(items);

    let dir = ctx.dir("scale")?;
    let out = dir.join("out");
    let mut w = DirWatch::new(&out)?;
    let mut cfg = head(&zk.hosts, "0ms", &format!("127.0.0.1:{}", free_port()));
    let mut want: HashMap<String, Vec<u8>> = HashMap::new();
    for (i, v) in raw_v.iter().enumerate() {
        let name = format!("r{i:04}");
        cfg += &raw_file(&out.join(&name), &format!("/scale/raw/n{i:04}"));
        want.insert(name, v.clone().into_bytes());
    }
    for (t, &n) in lay.tpl.iter().enumerate() {
        let name = format!("t{t:03}.conf");
        cfg += &inline_file(&out.join(&name), Some(&format!("/scale/tpl/t{t:03}")), &tpl_text(n));
        want.insert(name, tpl_render(t, &tpl_v[t]));
    }
    cfg += &inline_file(
        &out.join("list.conf"),
        None,
        "{% for c in children('/scale/list') %}{{ c }} = {{ znode('/scale/list/' ~ c) }}\n{% endfor %}",
    );
    want.insert("list.conf".into(), list_render(&list_v));
    let cfg_path = dir.join("zkrender.toml");
    fs::write(&cfg_path, cfg)?;

    let t_start = Instant::now();
    let mut agents =
        vec![Agent::spawn(&ctx.bin, &cfg_path, &ctx.log(&dir.file_name().unwrap().to_string_lossy()))?];
    let done = settle(&mut w, &mut agents, &want, Duration::from_secs(120)).await?;
    let all_ms = ms(done.values().max().copied().unwrap() - t_start);
    let first_ms = ms(done.values().min().copied().unwrap() - t_start);
    let list_ms = ms(done["list.conf"] - t_start);
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.drain().await;
    let settled = agents[0].stats();
    ctx.scale_stats = Some(settled.clone());
    let start_cpu_ms = settled.cpu_stat_ns as f64 / 1e6;
    let c = zk.counters()?;

    // Single changes, cycling over a raw file, a template and the 1,000-child list.
    let cpu0 = agents[0].stats();
    let mut lat: HashMap<&str, Vec<f64>> = HashMap::new();
    let mut reads = Vec::new();
    let mut writes = Vec::new();
    let mut misses = 0;
    for i in 0..changes {
        let (kind, path, name, bytes) = match i % 3 {
            0 => {
                let r = (i * 7919) % lay.raw;
                raw_v[r] = format!("raw-{r}-v{}", i + 1);
                ("raw", format!("/scale/raw/n{r:04}"), format!("r{r:04}"), raw_v[r].clone().into_bytes())
            }
            1 => {
                let t = (i * 131) % lay.tpl.len();
                let k = i % lay.tpl[t];
                tpl_v[t][k] = format!("t{t}k{k}-v{}", i + 1);
                (
                    "template",
                    format!("/scale/tpl/t{t:03}/k{k:02}"),
                    format!("t{t:03}.conf"),
                    tpl_render(t, &tpl_v[t]),
                )
            }
            _ => {
                let cc = (i * 613) % lay.list;
                list_v[cc] = format!("c{cc}-v{}", i + 1);
                ("list", format!("/scale/list/c{cc:04}"), "list.conf".to_owned(), list_render(&list_v))
            }
        };
        let value = match kind {
            "raw" => raw_v[(i * 7919) % lay.raw].clone(),
            "template" => {
                let t = (i * 131) % lay.tpl.len();
                tpl_v[t][i % lay.tpl[t]].clone()
            }
            _ => list_v[(i * 613) % lay.list].clone(),
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        let c0 = zk.counters()?;
        let t0 = Instant::now();
        let set = client.set_data(&path, value.as_bytes(), None);
        let (seen, acked) = tokio::join!(w.wait_one(&name, &bytes, Duration::from_secs(5)), set);
        acked?;
        match seen {
            Some(t) => lat.entry(kind).or_default().push(ms(t - t0)),
            None => misses += 1,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        let d = zk.counters()?.delta(&c0);
        reads.push(d.reads as f64);
        writes.push(d.writes as f64);
    }
    let cpu_per_change_ms = agents[0].stats().busy_since(&cpu0).0 as f64 / 1e6 / changes as f64;
    let all: Vec<f64> = lat.values().flatten().copied().collect();
    let s = summary(&all);
    let by_kind: serde_json::Map<String, Value> =
        lat.iter().map(|(k, v)| ((*k).to_owned(), summary(v))).collect();
    let reads_mean = reads.iter().sum::<f64>() / reads.len().max(1) as f64;
    let writes_mean = writes.iter().sum::<f64>() / writes.len().max(1) as f64;
    let rss = mib(settled.rss_kib);
    let rows = vec![
        row(
            &format!("start to all {files} files written (ms)"),
            f(all_ms),
            Some(("<= 1000", all_ms <= 1000.0)),
        ),
        row("start to first file written (ms)", f(first_ms), None),
        row("agent CPU time until settled (ms)", f(start_cpu_ms), None),
        row("start to the 1,000-child list file (ms)", f(list_ms), None),
        row("RSS after settling (MiB)", f(rss), Some(("<= 30", rss <= 30.0))),
        row("single change p50 (ms)", f(get(&s, "p50")), None),
        row("single change p99 (ms)", f(get(&s, "p99")), None),
        row(
            "single change p50 raw / template / list (ms)",
            ["raw", "template", "list"]
                .iter()
                .map(|k| f(by_kind.get(*k).map(|v| get(v, "p50")).unwrap_or(f64::NAN)))
                .collect::<Vec<_>>()
                .join(" / "),
            None,
        ),
        row("agent CPU per single change (ms)", f(cpu_per_change_ms), None),
        row("ZooKeeper watch count (mntr zk_watch_count)", c.watches.to_string(), None),
        row(
            "ZooKeeper requests per change: agent reads + writes",
            format!("{} + {}", f(reads_mean), f(writes_mean)),
            None,
        ),
    ];
    Ok(json!({
        "scenario": "scale",
        "files": files, "znodes": value_znodes, "raw_files": lay.raw, "template_files": lay.tpl.len() + 1,
        "list_children": lay.list,
        "start_to_all_files_ms": r3(all_ms), "start_to_first_file_ms": r3(first_ms), "start_to_list_file_ms": r3(list_ms),
        "agent_settled": stats_json(&settled),
        "agent_cpu_until_settled_ms": r3(start_cpu_ms),
        "agent_cpu_per_change_ms": r3(cpu_per_change_ms),
        "zk_watch_count": c.watches,
        "single_change_ms": s, "single_change_by_kind_ms": by_kind, "missed": misses,
        "requests_per_change": { "reads_mean": r3(reads_mean), "writes_mean": r3(writes_mean),
                                  "reads_max": reads.iter().cloned().fold(0.0, f64::max) },
        "rows": rows,
        "samples": { "single_change_ms": all.iter().map(|x| r3(*x)).collect::<Vec<_>>() },
    }))
}

// ------------------------------------------------------------------ 4. footprint

/// The typical config: 10 template files reading 10 znodes each.
async fn typical(
    ctx: &Ctx,
    zk: &Zk,
    root: &str,
    dir: &Path,
    listen: &str,
) -> Res<(String, HashMap<String, Vec<u8>>, Vec<String>, Vec<String>)> {
    let client = connect(&zk.hosts).await?;
    let mut cfg = head(&zk.hosts, "0ms", listen);
    let mut want = HashMap::new();
    let mut keys = Vec::new();
    let mut vals = Vec::new();
    let mut items = Vec::new();
    for a in 0..10 {
        ensure_path(&client, &format!("{root}/app{a}")).await?;
        let vs: Vec<String> = (0..10).map(|k| format!("a{a}k{k}-v0")).collect();
        for (k, v) in vs.iter().enumerate() {
            keys.push(format!("{root}/app{a}/k{k:02}"));
            vals.push(v.clone());
            items.push((format!("{root}/app{a}/k{k:02}"), v.clone().into_bytes()));
        }
        let name = format!("app{a}.conf");
        cfg += &inline_file(&dir.join("out").join(&name), Some(&format!("{root}/app{a}")), &tpl_text(10));
        want.insert(name, tpl_render(a, &vs));
    }
    put_many(&client, &items).await?;
    let _ = ctx;
    Ok((cfg, want, keys, vals))
}

pub async fn footprint(ctx: &mut Ctx) -> Res<Value> {
    let idle = Duration::from_secs(ctx.pick(60, 10));
    let zk = Zk::up(&ctx.root, &ctx.work, "footprint", 1)?;
    let dir = ctx.dir("footprint")?;
    let mut w = DirWatch::new(&dir.join("out"))?;
    let (cfg, want, _, _) = typical(ctx, &zk, "/typ", &dir, &format!("127.0.0.1:{}", free_port())).await?;
    let cfg_path = dir.join("zkrender.toml");
    fs::write(&cfg_path, cfg)?;
    let mut agents =
        vec![Agent::spawn(&ctx.bin, &cfg_path, &ctx.log(&dir.file_name().unwrap().to_string_lossy()))?];
    settle(&mut w, &mut agents, &want, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let s0 = agents[0].stats();
    let c0 = zk.counters()?;
    tokio::time::sleep(idle).await;
    let s1 = agents[0].stats();
    let d = zk.counters()?.delta(&c0);
    agents[0].check_alive()?;
    // Per-thread schedstat run time (ns resolution); utime+stime (10 ms ticks: one tick is
    // 0.1% of 10 s) only where schedstat is unavailable.
    let (busy_ns, switches) = s1.busy_since(&s0);
    let cpu_ns = if s1.cpu_ns > 0 { busy_ns } else { s1.cpu_stat_ns.saturating_sub(s0.cpu_stat_ns) };
    let cpu_pct = cpu_ns as f64 / idle.as_nanos() as f64 * 100.0;
    let wakeups = switches as f64 / idle.as_secs_f64();

    let size = fs::metadata(&ctx.bin)?.len();
    let stripped_path = ctx.work.join("zkrender.stripped");
    let stripped = std::process::Command::new("strip")
        .arg("--strip-all")
        .arg("-o")
        .arg(&stripped_path)
        .arg(&ctx.bin)
        .status()
        .ok()
        .filter(|s| s.success())
        .and_then(|_| fs::metadata(&stripped_path).ok())
        .map(|m| m.len());
    let typ_rss = mib(s0.rss_kib);
    let mut rows = Vec::new();
    if let Some(sc) = &ctx.scale_stats {
        let r = mib(sc.rss_kib);
        rows.push(row("RSS after scale settles (MiB)", f(r), Some(("<= 30", r <= 30.0))));
    }
    rows.push(row(
        "RSS, typical config: 10 files, 100 znodes (MiB)",
        f(typ_rss),
        Some(("<= 10", typ_rss <= 10.0)),
    ));
    rows.push(row(
        &format!("idle CPU over {} s (%)", idle.as_secs()),
        format!("{:.4}", cpu_pct),
        Some(("< 0.1", cpu_pct < 0.1)),
    ));
    rows.push(row("idle wake-ups per second (context switches)", f(wakeups), None));
    rows.push(row(&format!("ZooKeeper reads while idle ({} s)", idle.as_secs()), d.reads.to_string(), None));
    rows.push(row("binary size, stripped (MiB)", f(stripped.unwrap_or(size) as f64 / 1048576.0), None));
    Ok(json!({
        "scenario": "footprint",
        "scale_settled": ctx.scale_stats.as_ref().map(stats_json),
        "typical": stats_json(&s0),
        "idle_seconds": idle.as_secs(),
        "idle_cpu_ms": r3(cpu_ns as f64 / 1e6),
        "idle_cpu_ms_schedstat": r3(busy_ns as f64 / 1e6),
        "idle_cpu_ms_stat_ticks": r3(s1.cpu_stat_ns.saturating_sub(s0.cpu_stat_ns) as f64 / 1e6),
        "idle_cpu_percent": (cpu_pct * 10000.0).round() / 10000.0,
        "idle_wakeups_per_s": r3(wakeups),
        "idle_zk_reads": d.reads, "idle_zk_packets": d.packets,
        "binary_bytes": size, "binary_stripped_bytes": stripped,
        "rows": rows,
    }))
}

// ------------------------------------------------------------------ 5. fleet

pub async fn fleet(ctx: &mut Ctx) -> Res<Value> {
    let sizes: Vec<usize> = ctx.pick(vec![50, 200], vec![10, 50]);
    let reps = ctx.pick(20, 5);
    let zk = Zk::up(&ctx.root, &ctx.work, "fleet", 3)?;
    let client = connect(&zk.hosts).await?;
    ensure_path(&client, "/fleet/conf").await?;
    let mut items = vec![("/fleet/key".to_owned(), b"init".to_vec())];
    let conf: Vec<String> = (0..10).map(|k| format!("conf-{k}")).collect();
    for (k, v) in conf.iter().enumerate() {
        items.push((format!("/fleet/conf/k{k:02}"), v.clone().into_bytes()));
    }
    put_many(&client, &items).await?;
    let mut runs = Vec::new();
    let mut rows = Vec::new();
    let mut samples = serde_json::Map::new();
    for &n in &sizes {
        client.set_data("/fleet/key", b"init", None).await?;
        let dir = ctx.dir(&format!("fleet-{n}"))?;
        let out = dir.join("out");
        let mut w = DirWatch::new(&out)?;
        let mut want = HashMap::new();
        let mut agents = Vec::new();
        let t0 = Instant::now();
        for i in 0..n {
            let key = format!("a{i:03}.key");
            let cf = format!("a{i:03}.conf");
            let cfg = head(&zk.hosts, "0ms", "")
                + &raw_file(&out.join(&key), "/fleet/key")
                + &inline_file(&out.join(&cf), Some("/fleet/conf"), &tpl_text(10));
            let p = dir.join(format!("a{i:03}.toml"));
            fs::write(&p, cfg)?;
            want.insert(key, b"init".to_vec());
            want.insert(cf, tpl_render(0, &conf));
            agents.push(Agent::spawn(&ctx.bin, &p, &ctx.log(&format!("fleet-{n}-a{i:03}")))?);
        }
        settle(&mut w, &mut agents, &want, Duration::from_secs(120)).await?;
        let start_ms = ms(t0.elapsed());
        tokio::time::sleep(Duration::from_secs(2)).await;
        w.drain().await;
        let rss: Vec<u64> = agents.iter().map(|a| a.stats().rss_kib).collect();
        let watches = zk.counters()?.watches;
        let mut per_agent = Vec::new();
        let mut all_n = Vec::new();
        let mut reads = Vec::new();
        let mut writes = Vec::new();
        let mut packets = Vec::new();
        let mut misses = 0;
        for rep in 0..reps {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let v = format!("fleet-{n}-{rep}");
            let want: HashMap<String, Vec<u8>> =
                (0..n).map(|i| (format!("a{i:03}.key"), v.clone().into_bytes())).collect();
            let c0 = zk.counters()?;
            let t0 = Instant::now();
            let set = client.set_data("/fleet/key", v.as_bytes(), None);
            let (done, acked) = tokio::join!(w.wait_all(&want, false, Duration::from_secs(10)), set);
            acked?;
            misses += n - done.len();
            let mut lat: Vec<f64> = done.values().map(|t| ms(*t - t0)).collect();
            lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
            all_n.push(lat.last().copied().unwrap_or(f64::NAN));
            per_agent.extend(lat);
            tokio::time::sleep(Duration::from_millis(100)).await;
            let d = zk.counters()?.delta(&c0);
            reads.push(d.reads as f64);
            writes.push(d.writes as f64);
            packets.push(d.packets as f64);
        }
        let pa = summary(&per_agent);
        let an = summary(&all_n);
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len().max(1) as f64;
        let p99 = get(&pa, "p99");
        let target = if n >= 200 { Some(("<= 500", p99 <= 500.0)) } else { None };
        rows.push(row(&format!("N={n}: set to file, per agent p50 (ms)"), f(get(&pa, "p50")), None));
        rows.push(row(&format!("N={n}: set to file, per agent p99 (ms)"), f(p99), target));
        rows.push(row(
            &format!("N={n}: set to all N files, p50 / max (ms)"),
            format!("{} / {}", f(get(&an, "p50")), f(get(&an, "max"))),
            None,
        ));
        rows.push(row(
            &format!("N={n}: ensemble requests per change: reads + writes (packets)"),
            format!("{} + {} ({})", f(mean(&reads)), f(mean(&writes)), f(mean(&packets))),
            None,
        ));
        rows.push(row(
            &format!("N={n}: agents' RSS, mean (MiB)"),
            f(mib(rss.iter().sum::<u64>() / n as u64)),
            None,
        ));
        runs.push(json!({
            "agents": n, "changes": reps, "missed": misses,
            "start_to_all_files_ms": r3(start_ms),
            "zk_watch_count": watches,
            "per_agent_ms": pa, "all_agents_ms": an,
            "requests_per_change": { "reads_mean": r3(mean(&reads)), "writes_mean": r3(mean(&writes)), "packets_mean": r3(mean(&packets)) },
            "agent_rss_mib": { "mean": mib(rss.iter().sum::<u64>() / n as u64), "max": mib(*rss.iter().max().unwrap_or(&0)), "total": mib(rss.iter().sum()) },
        }));
        samples.insert(n.to_string(), json!(per_agent.iter().map(|x| r3(*x)).collect::<Vec<_>>()));
        agent::stop_all(agents);
    }
    Ok(
        json!({ "scenario": "fleet", "ensemble": 3, "runs": runs, "rows": rows, "samples": { "per_agent_ms": samples } }),
    )
}

// ------------------------------------------------------------------ 6. soak

pub async fn soak(ctx: &mut Ctx) -> Res<Value> {
    let total = ctx.pick(100_000, 10_000);
    let first = 1_000;
    let window = 32;
    let zk = Zk::up(&ctx.root, &ctx.work, "soak", 1)?;
    let client = connect(&zk.hosts).await?;
    let dir = ctx.dir("soak")?;
    let mut w = DirWatch::new(&dir.join("out"))?;
    let port = free_port();
    let (cfg, want, keys, mut vals) = typical(ctx, &zk, "/soak", &dir, &format!("127.0.0.1:{port}")).await?;
    let cfg_path = dir.join("zkrender.toml");
    fs::write(&cfg_path, cfg)?;
    let mut agents =
        vec![Agent::spawn(&ctx.bin, &cfg_path, &ctx.log(&dir.file_name().unwrap().to_string_lossy()))?];
    settle(&mut w, &mut agents, &want, Duration::from_secs(30)).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start_stats = agents[0].stats();

    let expected = |vals: &[String]| -> HashMap<String, Vec<u8>> {
        (0..10).map(|a| (format!("app{a}.conf"), tpl_render(a, &vals[a * 10..a * 10 + 10]))).collect()
    };
    let mut series = Vec::new();
    let mut marks = Vec::new();
    let mut sent = 0usize;
    let t_start = Instant::now();
    let mut checkpoints = vec![first];
    let mut k = 10_000;
    while k < total {
        checkpoints.push(k);
        k += 10_000;
    }
    checkpoints.push(total);
    checkpoints.dedup();
    for &upto in &checkpoints {
        let mut inflight = FuturesUnordered::new();
        while sent < upto {
            let z = sent % keys.len();
            vals[z] = format!("s{sent}");
            inflight.push(client.set_data(&keys[z], vals[z].as_bytes(), None));
            sent += 1;
            if inflight.len() >= window {
                inflight.next().await.unwrap()?;
            }
        }
        while let Some(r) = inflight.next().await {
            r?;
        }
        w.drain().await;
        let s = agents[0].stats();
        series
            .push(json!({ "changes": sent, "rss_mib": mib(s.rss_kib), "fds": s.fds, "threads": s.threads }));
        if upto == first || upto == total {
            // Settled: every file holds the last values, then a pause for the frees.
            settle(&mut w, &mut agents, &expected(&vals), Duration::from_secs(60)).await?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            let s = agents[0].stats();
            let writes = hook::metric(port, "zkrender_files_written_total").await;
            let events = hook::metric(port, "zkrender_watch_events_total").await;
            marks.push((sent, s, writes, events, t_start.elapsed()));
        }
    }
    let (_, a, wa, _, _) = marks[0].clone();
    let (_, b, wb, eb, tb) = marks[marks.len() - 1].clone();
    let growth_kib = b.rss_kib as i64 - a.rss_kib as i64;
    let growth = growth_kib as f64 / 1024.0;
    let rows = vec![
        row(
            &format!("RSS after {first} / after {total} changes (MiB)"),
            format!("{} / {}", f(mib(a.rss_kib)), f(mib(b.rss_kib))),
            None,
        ),
        row("RSS growth (MiB)", f(growth), Some(("< 1", growth < 1.0))),
        row(
            &format!("fds after {first} / after {total}"),
            format!("{} / {}", a.fds, b.fds),
            Some(("equal", a.fds >= b.fds)),
        ),
        row(
            &format!("threads after {first} / after {total}"),
            format!("{} / {}", a.threads, b.threads),
            None,
        ),
        row("file writes by the agent (metrics)", format!("{}", wb.unwrap_or(f64::NAN)), None),
    ];
    Ok(json!({
        "scenario": "soak",
        "changes": total, "window": window, "znodes": keys.len(),
        "start": stats_json(&start_stats),
        "after_first": { "changes": first, "stats": stats_json(&a), "files_written": wa },
        "after_all": { "changes": total, "stats": stats_json(&b), "files_written": wb, "watch_events": eb },
        "rss_growth_kib": growth_kib,
        "duration_s": r3(tb.as_secs_f64()),
        "changes_per_s": (total as f64 / tb.as_secs_f64()).round(),
        "series": series,
        "rows": rows,
    }))
}
