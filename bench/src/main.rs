//! zkrender-bench: the benchmark program of zkrender. See bench/README.md.
//!
//! ```text
//! cargo run --release --manifest-path bench/Cargo.toml -- [--quick] [--agent PATH] [--baseline PATH] [--out DIR] [--keep] [SCENARIO...]
//! ```
//!
//! Scenarios: latency, burst, scale, footprint, fleet, soak, compare (all by default, in that
//! order), and fleet500 (500 agent processes on 3 voters + 2 observers: only when named).
//! Prints one JSON line per scenario on stdout as it finishes, then a table; writes
//! `results.json` and `table.md` to the output directory and, when bench/.venv has
//! matplotlib (bench/run sets it up), the plots.

mod agent;
mod compare;
mod fleet500;
mod hook;
mod scenarios;
mod stats;
mod watch;
mod zk;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::{Value, json};

use scenarios::Ctx;

pub type Res<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

const ALL: [&str; 7] = ["latency", "burst", "scale", "footprint", "fleet", "soak", "compare"];
/// Scenarios that run only when named (after the others).
const EXTRA: [&str; 1] = ["fleet500"];

const USAGE: &str =
    "usage: zkrender-bench [--quick] [--agent PATH] [--baseline PATH] [--out DIR] [--keep] [--no-report] [SCENARIO...]

  SCENARIO    latency burst scale footprint fleet soak compare (default: all, in this order);
              fleet500 (500 agent processes on 3 voters + 2 observers) runs only when named
  --quick     CI-sized run (fewer iterations, smaller N; about 3 minutes)
  --agent P   the zkrender binary to measure (default: build it with `cargo build --release`
              in the repository, CARGO_TARGET_DIR=$ZKR_AGENT_TARGET_DIR or <repo>/target)
  --baseline P  compare: a second zkrender binary (e.g. an older build) measured beside
              --agent and the Python reference agent
  --out DIR   where results.json, table.md and the PNGs go
              (default bench/results, or bench/results/quick with --quick)
  --keep      keep the work directory (configs, agent logs, ZooKeeper logs)
  --no-report fleet500: agents without the fleet report ([agent] report), no `zkrender fleet`

Environment: BENCH_TMPDIR (else TMPDIR, else /tmp): where the work directory is made. It
must be a real disk file system (not tmpfs), or fsync costs nothing. BENCH_PYTHON (else
/usr/bin/python3): the interpreter with python3-kazoo for compare's reference agent.";

fn main() {
    let mut quick = false;
    let mut keep = false;
    let mut report = true;
    let mut agent: Option<PathBuf> = None;
    let mut baseline: Option<PathBuf> = None;
    let mut out: Option<PathBuf> = None;
    let mut wanted: Vec<String> = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--keep" => keep = true,
            "--no-report" => report = false,
            "--agent" => agent = args.next().map(PathBuf::from),
            "--baseline" => baseline = args.next().map(PathBuf::from),
            "--out" => out = args.next().map(PathBuf::from),
            "-h" | "--help" => {
                println!("{USAGE}");
                return;
            }
            s if ALL.contains(&s) || EXTRA.contains(&s) => wanted.push(s.to_owned()),
            s => {
                eprintln!("zkrender-bench: unknown argument '{s}'\n\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    if wanted.is_empty() {
        wanted = ALL.iter().map(|s| (*s).to_owned()).collect();
    }
    let code = match run(quick, keep, report, agent, baseline, out, wanted) {
        Ok(failed) => i32::from(failed),
        Err(e) => {
            eprintln!("zkrender-bench: error: {e}");
            1
        }
    };
    std::process::exit(code);
}

fn repo_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.parent().unwrap_or(here).canonicalize().unwrap_or_else(|_| here.join(".."))
}

fn build_agent(root: &Path) -> Res<PathBuf> {
    let target =
        std::env::var_os("ZKR_AGENT_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| root.join("target"));
    eprintln!(
        "zkrender-bench: building the agent: cargo build --release (CARGO_TARGET_DIR={})",
        target.display()
    );
    let st = Command::new("cargo")
        .args(["build", "--release", "--bin", "zkrender"])
        .current_dir(root)
        .env("CARGO_TARGET_DIR", &target)
        .status()?;
    if !st.success() {
        return Err("cargo build --release failed".into());
    }
    Ok(target.join("release").join("zkrender"))
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

/// Runs the scenarios; true when one failed.
#[allow(clippy::too_many_arguments)]
fn run(
    quick: bool,
    keep: bool,
    report: bool,
    agent: Option<PathBuf>,
    baseline: Option<PathBuf>,
    out: Option<PathBuf>,
    wanted: Vec<String>,
) -> Res<bool> {
    let root = repo_root();
    let bin = match agent {
        Some(p) => p.canonicalize()?,
        None => build_agent(&root)?,
    };
    if !bin.is_file() {
        return Err(format!("no agent binary at {}", bin.display()).into());
    }
    let baseline = match baseline {
        Some(p) => Some(p.canonicalize().map_err(|e| format!("--baseline {}: {e}", p.display()))?),
        None => None,
    };
    let out = out.unwrap_or_else(|| {
        let r = root.join("bench").join("results");
        if quick { r.join("quick") } else { r }
    });
    fs::create_dir_all(&out)?;
    // The tests' launcher installs Debian's ZooKeeper if it is missing (quiet otherwise).
    let st = Command::new(root.join("scripts").join("zk")).arg("install").status()?;
    if !st.success() {
        return Err("scripts/zk install failed".into());
    }
    let base = std::env::var_os("BENCH_TMPDIR")
        .or_else(|| std::env::var_os("TMPDIR"))
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    let work = base.join(format!("zkrender-bench-{}", std::process::id()));
    fs::create_dir_all(&work)?;
    eprintln!(
        "zkrender-bench: agent {}; work dir {} ({}); {} run",
        bin.display(),
        work.display(),
        sh(&format!("findmnt -no FSTYPE -T '{}'", work.display())),
        if quick { "quick" } else { "full" }
    );

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut ctx = Ctx {
        root: root.clone(),
        bin: bin.clone(),
        baseline: baseline.clone(),
        quick,
        report,
        work: work.clone(),
        cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
        scale_stats: None,
        zk_version: String::new(),
    };
    let started = Instant::now();
    let load_before = sh("cut -d' ' -f1-3 /proc/loadavg");
    let mut results: Vec<Value> = Vec::new();
    let mut failed = false;
    for name in ALL.iter().chain(EXTRA.iter()).filter(|s| wanted.iter().any(|w| w == *s)) {
        eprintln!("zkrender-bench: == {name}");
        let t = Instant::now();
        let r = rt.block_on(async {
            match *name {
                "latency" => scenarios::latency(&mut ctx).await,
                "burst" => scenarios::burst(&mut ctx).await,
                "scale" => scenarios::scale(&mut ctx).await,
                "footprint" => scenarios::footprint(&mut ctx).await,
                "fleet" => scenarios::fleet(&mut ctx).await,
                "soak" => scenarios::soak(&mut ctx).await,
                "compare" => compare::compare(&mut ctx).await,
                "fleet500" => fleet500::fleet500(&mut ctx).await,
                _ => unreachable!(),
            }
        });
        let mut v = match r {
            Ok(v) => v,
            Err(e) => {
                failed = true;
                eprintln!("zkrender-bench: {name} failed: {e}");
                json!({ "scenario": name, "error": e.to_string(), "rows": [["error", e.to_string(), "", "FAIL"]] })
            }
        };
        v["seconds"] = json!(stats::r3(t.elapsed().as_secs_f64()));
        // The machine may be shared: the load average says how quiet it was.
        v["loadavg_1m_after"] = json!(sh("cut -d' ' -f1 /proc/loadavg").parse::<f64>().unwrap_or(f64::NAN));
        // One JSON line per scenario: the measurements, without raw samples and table rows.
        let mut line = v.clone();
        if let Some(o) = line.as_object_mut() {
            o.remove("samples");
            o.remove("rows");
            o.remove("table");
        }
        println!("{}", serde_json::to_string(&line)?);
        results.push(v);
    }

    let meta = json!({
        "date": sh("date -u +%Y-%m-%dT%H:%M:%SZ"),
        "quick": quick,
        "host": sh("uname -srm"),
        "os": sh(". /etc/os-release 2>/dev/null && echo \"$PRETTY_NAME\""),
        "cpu": sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"),
        "cpus": sh("nproc"),
        "memory": sh("free -h | awk '/Mem:/{print $2}'"),
        "work_fs": sh(&format!("findmnt -no FSTYPE -T '{}'", work.display())),
        "zookeeper": ctx.zk_version,
        "agent": bin.display().to_string(),
        "baseline": baseline.as_ref().map(|b| b.display().to_string()),
        "agent_commit": sh(&format!("git -C '{}' rev-parse --short HEAD", root.display())),
        "seconds": stats::r3(started.elapsed().as_secs_f64()),
        "loadavg_before": load_before,
        "loadavg_after": sh("cut -d' ' -f1-3 /proc/loadavg"),
    });
    let table = table(&meta, &results);
    println!("\n{table}");
    fs::write(
        out.join("results.json"),
        serde_json::to_string_pretty(&json!({ "meta": meta, "scenarios": results }))? + "\n",
    )?;
    fs::write(out.join("table.md"), table)?;
    plot(&root, &out);
    if !keep {
        let _ = fs::remove_dir_all(&work);
    } else {
        eprintln!("zkrender-bench: work dir kept: {}", work.display());
    }
    eprintln!("zkrender-bench: results in {}", out.display());
    Ok(failed)
}

fn table(meta: &Value, results: &[Value]) -> String {
    let m = |k: &str| meta[k].as_str().unwrap_or("").trim().to_owned();
    let mut s = format!(
        "zkrender benchmark ({} run), {}: {}, {} CPUs ({}), {} RAM, {}; ZooKeeper {}; work dir on {}; agent {}; load average before / after: {} / {}\n\n",
        if meta["quick"].as_bool() == Some(true) { "quick" } else { "full" },
        m("date"),
        m("os"),
        m("cpus"),
        m("cpu"),
        m("memory"),
        m("host"),
        m("zookeeper").split(',').next().unwrap_or(""),
        m("work_fs"),
        m("agent_commit"),
        m("loadavg_before"),
        m("loadavg_after"),
    );
    s += "| scenario | metric | value | target | |\n|---|---|---|---|---|\n";
    for r in results {
        let name = r["scenario"].as_str().unwrap_or("?");
        for row in r["rows"].as_array().into_iter().flatten() {
            let c = |i: usize| row[i].as_str().unwrap_or("").replace('|', "\\|");
            s += &format!("| {name} | {} | {} | {} | {} |\n", c(0), c(1), c(2), c(3));
        }
    }
    // Scenarios with a table of their own (compare: a column per agent) follow.
    for t in results.iter().filter_map(|r| r["table"].as_str()) {
        s += "\n";
        s += t;
    }
    s
}

/// Runs bench/plot.py with bench/.venv's Python when it is there (bench/run creates it).
fn plot(root: &Path, out: &Path) {
    let py = root.join("bench").join(".venv").join("bin").join("python");
    let script = root.join("bench").join("plot.py");
    if !py.is_file() {
        eprintln!("zkrender-bench: no bench/.venv: plots skipped (bench/run creates it)");
        return;
    }
    match Command::new(&py).arg(&script).arg(out.join("results.json")).arg(out).status() {
        Ok(s) if s.success() => {}
        other => eprintln!("zkrender-bench: plotting failed: {other:?}"),
    }
}
