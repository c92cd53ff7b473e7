//! The `compare` scenario: zkrender beside the reference Python agent
//! (`bench/reference/agent.py`) and, with `--baseline`, a second zkrender build, in one run
//! against one warmed-up ZooKeeper, with the same reload command. The agents run one after
//! the other, never together. Layouts: 1,000 znodes into one file, 1,000 znodes into 100
//! files of 10, one znode into one file (and a 1,000-set burst on it). Returns the scenario's
//! JSON with `rows` (the targets) and `table` (a column per agent).

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use serde_json::{Value, json};
use zookeeper_client as zkc;

use crate::Res;
use crate::agent::{Agent, free_port, head, inline_file, q, raw_file};
use crate::scenarios::{Ctx, f, row, settle, tpl_text};
use crate::stats::{mib, ms, pct, r3, summary};
use crate::watch::DirWatch;
use crate::zk::{Zk, connect, ensure_path, put_many};

/// Sets in the burst (d), full and quick alike.
const BURST: usize = 1_000;
/// After a change reached the file: time for the reload to finish before the next change.
const IDLE_GAP: Duration = Duration::from_millis(30);
/// Each agent runs this many times per layout, the agents taking turns (a different one first
/// each round), each time with its share of the changes: a slow spell of a shared machine
/// falls on every agent alike instead of on whichever ran then. Per-change CPU, start time
/// and RSS are the median of the rounds; latencies are pooled.
const ROUNDS: usize = 3;

/// One agent under comparison.
struct Contender {
    label: &'static str,
    kind: Kind,
}

enum Kind {
    Zkrender(PathBuf),
    Python { python: PathBuf, script: PathBuf },
}

/// One output file: the znodes it uses, in order, and how each agent renders them.
struct FileSpec {
    name: String,
    keys: Vec<String>,
    /// `None`: a raw file, the one znode's bytes; else one line `LABEL = VALUE` per key.
    labels: Option<Vec<String>>,
    /// zkrender's inline template and its `prefix` (raw files: none).
    inline: Option<(Option<String>, String)>,
}

impl FileSpec {
    /// The bytes both agents must write for `vals`.
    fn expected(&self, vals: &HashMap<String, String>) -> Vec<u8> {
        match &self.labels {
            None => vals[&self.keys[0]].clone().into_bytes(),
            Some(labels) => labels
                .iter()
                .zip(&self.keys)
                .map(|(l, k)| format!("{l} = {}\n", vals[k]))
                .collect::<String>()
                .into_bytes(),
        }
    }

    /// The Python agent's `str.format` string (labels are `k` and digits: no braces).
    fn format(&self) -> String {
        match &self.labels {
            None => "{0}".into(),
            Some(labels) => labels.iter().enumerate().map(|(i, l)| format!("{l} = {{{i}}}\n")).collect(),
        }
    }
}

struct Layout {
    /// Short name: directory names, JSON keys.
    tag: &'static str,
    /// Row heading in the table.
    title: &'static str,
    files: Vec<FileSpec>,
}

impl Layout {
    /// Change `i` goes to this file and key (spread over files and keys, deterministic).
    fn pick(&self, i: usize) -> (usize, &str) {
        let fi = (i * 37) % self.files.len();
        let keys = &self.files[fi].keys;
        (fi, &keys[(i * 613) % keys.len()])
    }
}

/// (a) 1,000 znodes into one file: zkrender loops over them in one template.
fn one_file() -> Layout {
    let n = 1000;
    Layout {
        tag: "one_file",
        title: "1 × 1,000",
        files: vec![FileSpec {
            name: "all.conf".into(),
            keys: (0..n).map(|i| format!("/cmp/one/k{i}")).collect(),
            labels: Some((0..n).map(|i| format!("k{i}")).collect()),
            inline: Some((
                None,
                format!(
                    "{{% for i in range({n}) %}}k{{{{ i }}}} = {{{{ znode('/cmp/one/k' ~ i) }}}}\n{{% endfor %}}"
                ),
            )),
        }],
    }
}

/// (b) 1,000 znodes into 100 files of 10 keys.
fn many_files() -> Layout {
    Layout {
        tag: "many_files",
        title: "100 × 10",
        files: (0..100)
            .map(|fi| FileSpec {
                name: format!("f{fi:02}.conf"),
                keys: (0..10).map(|k| format!("/cmp/many/f{fi:02}/k{k:02}")).collect(),
                labels: Some((0..10).map(|k| format!("k{k:02}")).collect()),
                inline: Some((Some(format!("/cmp/many/f{fi:02}")), tpl_text(10))),
            })
            .collect(),
    }
}

/// (c) one znode into one raw file; (d) runs its burst on the same znode.
fn single() -> Layout {
    Layout {
        tag: "single",
        title: "1 × 1",
        files: vec![FileSpec {
            name: "value".into(),
            keys: vec!["/cmp/single/key".into()],
            labels: None,
            inline: None,
        }],
    }
}

/// A word for `sh`, quoted (also what Python's `shlex.split` undoes).
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The interpreter with python3-kazoo: `$BENCH_PYTHON`, else Debian's /usr/bin/python3
/// (a pyenv or venv `python3` first on PATH would not see the Debian package).
fn python() -> Res<PathBuf> {
    let py = std::env::var_os("BENCH_PYTHON").map(PathBuf::from).unwrap_or_else(|| {
        let debian = PathBuf::from("/usr/bin/python3");
        if debian.is_file() { debian } else { PathBuf::from("python3") }
    });
    let ok = Command::new(&py).args(["-c", "import kazoo"]).status().map(|s| s.success()).unwrap_or(false);
    if !ok {
        return Err(format!(
            "{} cannot import kazoo: install python3-kazoo (apt-get install python3-kazoo) or set BENCH_PYTHON",
            py.display()
        )
        .into());
    }
    Ok(py)
}

/// Sets every key to its current value (and reads it back), a few times over, then a run
/// of sequential round trips: ZooKeeper's JIT and caches warmed before any agent is measured.
async fn warm_up(client: &zkc::Client, vals: &HashMap<String, String>, single: &str) -> Res<()> {
    let keys: Vec<&String> = vals.keys().collect();
    for _ in 0..3 {
        for chunk in keys.chunks(500) {
            for r in join_all(chunk.iter().map(|k| client.set_data(k, vals[*k].as_bytes(), None))).await {
                r?;
            }
            for r in join_all(chunk.iter().map(|k| client.get_data(k))).await {
                r?;
            }
        }
    }
    for _ in 0..300 {
        client.set_data(single, vals[single].as_bytes(), None).await?;
        client.get_data(single).await?;
    }
    Ok(())
}

/// `n` sets of distinct values back to back (all on the wire before the first answer is
/// awaited); returns the values and the time from the first send to the last acknowledgement.
async fn burst_writer(
    client: &zkc::Client,
    znode: &str,
    tag: &str,
    n: usize,
) -> Res<(Vec<String>, Instant, Instant)> {
    let values: Vec<String> = (0..n).map(|i| format!("burst-{tag}-{i}")).collect();
    let t_first = Instant::now();
    let sets: Vec<_> = values.iter().map(|v| client.set_data(znode, v.as_bytes(), None)).collect();
    for r in join_all(sets).await {
        r?;
    }
    Ok((values, t_first, Instant::now()))
}

/// Reloads run so far: the reload command appends one byte to this file.
fn reloads(counter: &Path) -> u64 {
    fs::metadata(counter).map(|m| m.len()).unwrap_or(0)
}

/// Runs one agent on one layout: start, then `changes` single changes each made once the
/// agent is idle; with `burst`, then the burst (d) on the layout's first key.
/// What every run shares: the scenario's context, its ZooKeeper and the writer's client.
struct Env<'a> {
    ctx: &'a Ctx,
    zk: &'a Zk,
    client: &'a zkc::Client,
}

async fn run_one(
    env: &Env<'_>,
    who: &Contender,
    layout: &Layout,
    vals: &mut HashMap<String, String>,
    changes: usize,
    burst: bool,
    round: usize,
) -> Res<Value> {
    let Env { ctx, zk, client } = *env;
    let name = format!("compare-{}-{}-r{round}", layout.tag, who.label);
    let dir = ctx.dir(&name)?;
    let out = dir.join("out");
    let mut w = DirWatch::new(&out)?;
    // The same trivial reload for every agent and file: one byte appended to a counter, kept
    // out of the config's directory (zkrender watches that for hot reload).
    let counter = ctx.dir("reload-counters")?.join(&name);
    let script = format!("printf . >> {}", sh_quote(&counter.to_string_lossy()));
    let mut agent = match &who.kind {
        Kind::Zkrender(bin) => {
            let mut cfg = head(&zk.hosts, "0ms", &format!("127.0.0.1:{}", free_port()));
            for file in &layout.files {
                let dest = out.join(&file.name);
                cfg += &match &file.inline {
                    None => raw_file(&dest, &file.keys[0]),
                    Some((prefix, text)) => inline_file(&dest, prefix.as_deref(), text),
                };
                cfg += &format!("[file.reload]\ncommand = [\"sh\", \"-c\", {}]\n\n", q(&script));
            }
            let path = dir.join("zkrender.toml");
            fs::write(&path, cfg)?;
            Agent::spawn(bin, &path, &ctx.log(&name))?
        }
        Kind::Python { python, script: agent_py } => {
            let files: Vec<Value> = layout
                .files
                .iter()
                .map(|file| {
                    json!({
                        "dest": out.join(&file.name).to_string_lossy(),
                        "keys": file.keys,
                        "format": file.format(),
                        "reload": format!("sh -c {}", sh_quote(&script)),
                    })
                })
                .collect();
            let path = dir.join("agent.json");
            fs::write(&path, serde_json::to_string_pretty(&json!({ "hosts": zk.hosts, "files": files }))?)?;
            let mut cmd = Command::new(python);
            cmd.arg(agent_py).arg(&path);
            Agent::start(cmd, &ctx.log(&name))?
        }
    };
    let want: HashMap<String, Vec<u8>> =
        layout.files.iter().map(|file| (file.name.clone(), file.expected(vals))).collect();
    let t_start = Instant::now();
    let done = settle(&mut w, std::slice::from_mut(&mut agent), &want, Duration::from_secs(120)).await?;
    let start_ms = ms(done.values().max().copied().expect("at least one file") - t_start);
    tokio::time::sleep(Duration::from_secs(1)).await;
    w.drain().await;
    let started = agent.stats();

    // (a)-(c): single changes, each once the agent is idle.
    let r0 = reloads(&counter);
    let c0 = zk.counters()?;
    let cpu0 = agent.stats();
    let mut lat = Vec::with_capacity(changes);
    let mut missed = 0;
    for i in 0..changes {
        let (fi, key) = layout.pick(i);
        let key = key.to_owned();
        let v = format!("{}-{}-{i}", layout.tag, who.label);
        vals.insert(key.clone(), v.clone());
        let bytes = layout.files[fi].expected(vals);
        let t0 = Instant::now();
        let set = client.set_data(&key, v.as_bytes(), None);
        let (seen, acked) =
            tokio::join!(w.wait_one(&layout.files[fi].name, &bytes, Duration::from_secs(5)), set);
        acked?;
        match seen {
            Some(t) => lat.push(ms(t - t0)),
            None => missed += 1,
        }
        tokio::time::sleep(IDLE_GAP).await;
    }
    let (cpu_ns, _) = agent.stats().busy_since(&cpu0);
    let d = zk.counters()?.delta(&c0);
    agent.check_alive()?;
    let per = |x: f64| r3(x / changes.max(1) as f64);
    let mut result = json!({
        "agent": who.label,
        "start_to_all_files_ms": r3(start_ms),
        "rss_mib": mib(started.rss_kib),
        "threads": started.threads,
        "changes": changes,
        "missed": missed,
        "cpu_per_change_ms": per(cpu_ns as f64 / 1e6),
        "set_to_file_ms": summary(&lat),
        "reads_per_change": per(d.reads as f64),
        "reloads_per_change": per((reloads(&counter) - r0) as f64),
        "samples_ms": lat.iter().map(|x| r3(*x)).collect::<Vec<_>>(),
    });

    // (d): a burst on one znode, the agent watching.
    if burst {
        let (fi, _) = layout.pick(0);
        let (file, key) = (&layout.files[fi].name, layout.files[fi].keys[0].clone());
        tokio::time::sleep(Duration::from_millis(500)).await;
        w.drain().await;
        w.installs.clear();
        let r0 = reloads(&counter);
        let c0 = zk.counters()?;
        let cpu0 = agent.stats();
        let last = format!("burst-{}-{}", who.label, BURST - 1);
        let (written, seen) = tokio::join!(
            burst_writer(client, &key, who.label, BURST),
            w.wait_one(file, last.as_bytes(), Duration::from_secs(30))
        );
        let (values, t_first, t_acked) = written?;
        vals.insert(key, values.last().expect("a burst of at least one set").clone());
        let seen =
            seen.ok_or_else(|| format!("{}: the burst's last value never reached the file", who.label))?;
        // Reloads finish after the install, and late reads after that: let it go quiet.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        w.drain().await;
        let d = zk.counters()?.delta(&c0);
        let (cpu_ns, _) = agent.stats().busy_since(&cpu0);
        agent.check_alive()?;
        result["burst"] = json!({
            "sets": BURST,
            "writer_ms": r3(ms(t_acked - t_first)),
            "converged_after_last_ack_ms": r3(ms(seen.saturating_duration_since(t_acked))),
            "reads": d.reads,
            "installs": w.installs.get(file.as_str()).copied().unwrap_or(0),
            "reloads": reloads(&counter) - r0,
            "cpu_ms": r3(cpu_ns as f64 / 1e6),
        });
    }
    drop(agent);
    Ok(result)
}

/// One agent's rounds of one layout as one result: medians of the per-round figures (each
/// round's own in `*_rounds`), latency samples pooled, the burst from the round that had it.
fn merge_rounds(rounds: Vec<Value>) -> Value {
    let median = |key: &str| {
        let mut v: Vec<f64> = rounds.iter().map(|r| at(r, key)).filter(|x| x.is_finite()).collect();
        v.sort_by(f64::total_cmp);
        pct(&v, 50.0)
    };
    let each = |key: &str| rounds.iter().map(|r| r[key].clone()).collect::<Vec<_>>();
    let sum = |key: &str| rounds.iter().map(|r| at(r, key)).sum::<f64>();
    let samples: Vec<f64> = rounds
        .iter()
        .flat_map(|r| r["samples_ms"].as_array().cloned().unwrap_or_default())
        .filter_map(|x| x.as_f64())
        .collect();
    let mut merged = json!({
        "agent": rounds.first().map(|r| r["agent"].clone()).unwrap_or_default(),
        "rounds": rounds.len(),
        "start_to_all_files_ms": r3(median("start_to_all_files_ms")),
        "start_to_all_files_rounds_ms": each("start_to_all_files_ms"),
        "rss_mib": r3(median("rss_mib")),
        "threads": rounds.last().map(|r| r["threads"].clone()).unwrap_or_default(),
        "changes": sum("changes"),
        "missed": sum("missed"),
        "cpu_per_change_ms": r3(median("cpu_per_change_ms")),
        "cpu_per_change_rounds_ms": each("cpu_per_change_ms"),
        "set_to_file_ms": summary(&samples),
        "reads_per_change": r3(median("reads_per_change")),
        "reloads_per_change": r3(median("reloads_per_change")),
        "samples_ms": samples,
    });
    if let Some(burst) = rounds.iter().find_map(|r| r.get("burst")) {
        merged["burst"] = burst.clone();
    }
    merged
}

/// `v[path]` as f64 (`a.b` for nested objects).
fn at(v: &Value, path: &str) -> f64 {
    let mut x = v;
    for p in path.split('.') {
        x = &x[p];
    }
    x.as_f64().unwrap_or(f64::NAN)
}

pub async fn compare(ctx: &mut Ctx) -> Res<Value> {
    let changes: usize = ctx.pick(200, 60);
    let mut who = vec![Contender { label: "zkrender", kind: Kind::Zkrender(ctx.bin.clone()) }];
    if let Some(b) = &ctx.baseline {
        who.push(Contender { label: "baseline", kind: Kind::Zkrender(b.clone()) });
    }
    let script = ctx.root.join("bench").join("reference").join("agent.py");
    who.push(Contender { label: "python", kind: Kind::Python { python: python()?, script } });

    let layouts = [one_file(), many_files(), single()];
    let zk = Zk::up(&ctx.root, &ctx.work, "compare", 1)?;
    if ctx.zk_version.is_empty() {
        ctx.zk_version = zk.version();
    }
    let client = connect(&zk.hosts).await?;
    ensure_path(&client, "/cmp/one").await?;
    ensure_path(&client, "/cmp/single").await?;
    ensure_path(&client, "/cmp/many").await?;
    let dirs: Vec<(String, Vec<u8>)> =
        (0..100).map(|fi| (format!("/cmp/many/f{fi:02}"), Vec::new())).collect();
    put_many(&client, &dirs).await?;
    let mut vals: HashMap<String, String> = HashMap::new();
    for l in &layouts {
        for file in &l.files {
            for k in &file.keys {
                vals.insert(k.clone(), format!("{k}-v0"));
            }
        }
    }
    let items: Vec<(String, Vec<u8>)> =
        vals.iter().map(|(k, v)| (k.clone(), v.clone().into_bytes())).collect();
    put_many(&client, &items).await?;
    let single_key = layouts[2].files[0].keys[0].clone();
    warm_up(&client, &vals, &single_key).await?;
    // The writer's burst with nothing watching: what the agents' reads slow it down from.
    let mut idle_writer_ms = f64::NAN;
    for rep in 0..2 {
        let (values, t0, t1) = burst_writer(&client, &single_key, &format!("none{rep}"), BURST).await?;
        vals.insert(single_key.clone(), values.last().expect("a burst of at least one set").clone());
        idle_writer_ms = ms(t1 - t0);
    }

    let env = Env { ctx: &*ctx, zk: &zk, client: &client };
    let mut by_layout = serde_json::Map::new();
    let per_round = changes.div_ceil(ROUNDS);
    for l in &layouts {
        let mut rounds: Vec<Vec<Value>> = vec![Vec::new(); who.len()];
        for round in 0..ROUNDS {
            for k in 0..who.len() {
                let i = (k + round) % who.len();
                let c = &who[i];
                let burst = l.tag == "single" && round == ROUNDS - 1;
                eprintln!("zkrender-bench: compare: {} with {}, round {}", l.title, c.label, round + 1);
                rounds[i].push(run_one(&env, c, l, &mut vals, per_round, burst, round).await?);
            }
        }
        let mut runs = serde_json::Map::new();
        for (c, rs) in who.iter().zip(rounds) {
            runs.insert(c.label.to_owned(), merge_rounds(rs));
        }
        by_layout.insert(l.tag.to_owned(), Value::Object(runs));
    }
    let res = Value::Object(by_layout);

    let labels: Vec<&str> = who.iter().map(|c| c.label).collect();
    let table = table(&res, &labels, per_round * ROUNDS, idle_writer_ms);
    let rows = target_rows(&res);
    // Raw samples out of the per-run objects, into `samples` (kept out of the JSON line).
    let mut samples = serde_json::Map::new();
    let mut runs = res.clone();
    for (tag, per) in runs.as_object_mut().into_iter().flatten() {
        for (label, r) in per.as_object_mut().into_iter().flatten() {
            if let Some(s) = r.as_object_mut().and_then(|o| o.remove("samples_ms")) {
                samples.insert(format!("{tag}/{label}"), s);
            }
        }
    }
    Ok(json!({
        "scenario": "compare",
        "agents": who.iter().map(|c| json!({
            "label": c.label,
            "path": match &c.kind { Kind::Zkrender(p) => p.display().to_string(), Kind::Python { script, .. } => script.display().to_string() },
        })).collect::<Vec<_>>(),
        "changes": per_round * ROUNDS,
        "idle_gap_ms": IDLE_GAP.as_millis() as u64,
        "burst_writer_no_agent_ms": r3(idle_writer_ms),
        "runs": runs,
        "rows": rows,
        "table": table,
        "samples": { "set_to_file_ms": samples },
    }))
}

/// The markdown table: a column per agent, then zkrender / python.
fn table(res: &Value, labels: &[&str], changes: usize, idle_writer_ms: f64) -> String {
    let mut s = format!(
        "compare: the agents one after the other, taking turns over {ROUNDS} rounds per layout (own CPU, \
         start and RSS: median of the rounds; latencies pooled), same ZooKeeper, same reload (`sh -c` \
         appending a byte); {changes} single changes per layout, each once the agent is idle; own CPU = \
         the agent process's threads (schedstat), reload children excluded\n\n| per change | {} | zkrender / python |\n|---|{}---|\n",
        labels.join(" | "),
        "---|".repeat(labels.len())
    );
    let mut line = |metric: String, tag: &str, path: &str| {
        let v: Vec<f64> = labels.iter().map(|l| at(&res[tag][*l], path)).collect();
        let ratio = v[0] / v[v.len() - 1];
        // Counts (reads, installs, reloads) print as integers.
        let cells: Vec<String> = v
            .iter()
            .map(|x| if x.fract() == 0.0 && x.abs() < 1e9 { format!("{x:.0}") } else { f(*x) })
            .collect();
        s += &format!(
            "| {metric} | {} | {} |\n",
            cells.join(" | "),
            if ratio.is_finite() { format!("{ratio:.2}") } else { "n/a".into() }
        );
    };
    for (tag, title) in [("one_file", "1 × 1,000"), ("many_files", "100 × 10"), ("single", "1 × 1")] {
        line(format!("own CPU, {title} (ms)"), tag, "cpu_per_change_ms");
        line(format!("set → file p50, {title} (ms)"), tag, "set_to_file_ms.p50");
        line(format!("set → file p99, {title} (ms)"), tag, "set_to_file_ms.p99");
        line(format!("ZooKeeper reads, {title}"), tag, "reads_per_change");
        line(format!("reloads, {title}"), tag, "reloads_per_change");
    }
    for (tag, title) in [("one_file", "1 × 1,000"), ("many_files", "100 × 10")] {
        line(format!("start to all files written, {title} (ms)"), tag, "start_to_all_files_ms");
        line(format!("RSS once started, {title} (MiB)"), tag, "rss_mib");
    }
    line(
        format!("burst of {BURST} sets: writer's duration (ms; {} with no agent)", f(idle_writer_ms)),
        "single",
        "burst.writer_ms",
    );
    line(
        "burst: file converged after the last ack (ms)".into(),
        "single",
        "burst.converged_after_last_ack_ms",
    );
    line("burst: the agent's ZooKeeper reads".into(), "single", "burst.reads");
    line("burst: installs".into(), "single", "burst.installs");
    line("burst: reloads".into(), "single", "burst.reloads");
    line("burst: the agent's own CPU (ms)".into(), "single", "burst.cpu_ms");
    s
}

/// Rows for the main table: issue 13's targets, zkrender against python from this run.
fn target_rows(res: &Value) -> Vec<Value> {
    let z = |tag: &str, p: &str| at(&res[tag]["zkrender"], p);
    let py = |tag: &str, p: &str| at(&res[tag]["python"], p);
    let mut rows = Vec::new();
    for (tag, title, cap) in [("many_files", "100 × 10", 0.25), ("one_file", "1 × 1,000", 0.6)] {
        let (a, b) = (z(tag, "cpu_per_change_ms"), py(tag, "cpu_per_change_ms"));
        rows.push(row(
            &format!("own CPU per change, {title}: zkrender (python) (ms)"),
            format!("{} ({})", f(a), f(b)),
            Some((&format!("<= {cap} and <= python / 5"), a <= cap && a <= b / 5.0)),
        ));
    }
    let one = z("single", "set_to_file_ms.p50");
    for (tag, title) in [("one_file", "1 × 1,000"), ("many_files", "100 × 10")] {
        let a = z(tag, "set_to_file_ms.p50");
        rows.push(row(
            &format!("set → file p50, {title}: zkrender (its 1 × 1) (ms)"),
            format!("{} ({})", f(a), f(one)),
            Some(("<= its 1 × 1", a <= one)),
        ));
    }
    let b = py("single", "set_to_file_ms.p50");
    rows.push(row(
        "set → file p50, 1 × 1: zkrender, fsync (python, no fsync) (ms)",
        format!("{} ({})", f(one), f(b)),
        Some(("<= python", one <= b)),
    ));
    let (a, b) = (z("single", "burst.writer_ms"), py("single", "burst.writer_ms"));
    rows.push(row(
        &format!("writer's {BURST}-set burst, zkrender watching (python watching) (ms)"),
        format!("{} ({})", f(a), f(b)),
        Some(("<= python", a <= b)),
    ));
    rows.push(row(
        "burst: zkrender's reads (python's)",
        format!("{} ({})", at(&res["single"]["zkrender"], "burst.reads"), py("single", "burst.reads")),
        None,
    ));
    rows
}
