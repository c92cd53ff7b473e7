//! `[[bundle]]` (issue 12, section 1), end to end: the built binary against a real ZooKeeper.
//!
//! The two consistency cases each run 1,000 updates with a reader in a separate process (a
//! `sh` loop) opening both files through `dir/` meanwhile, and inspect `..data` after the
//! swaps. Then: a failing bundle `check`, `rollback`, a file leaving the bundle, config
//! errors.

mod common;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::http::Endpoint;
use common::*;

const WAIT: Duration = Duration::from_secs(20);
const UPDATES: u32 = 1000;

/// The reader: reads `a.conf`, then `sub/b.json`, then `a.conf` again through `dir/` in a
/// loop until `stop` exists. Each version's two files hold the same number, and a number
/// never comes back once replaced, so when both reads of `a.conf` agree every version that
/// was current meanwhile had that `a.conf`, and `sub/b.json` must hold the same number. (Two
/// opens can straddle a swap; this is how a reader of a ConfigMap volume sees a consistent
/// set.) Writes `MISMATCH a b` lines, then `reads N` (pairs compared) to `out`.
const READER: &str = r#"
d=$1; stop=$2; out=$3; n=0
while [ ! -e "$stop" ]; do
  a1=; b=; a2=
  { read -r a1 < "$d/a.conf"; read -r b < "$d/sub/b.json"; read -r a2 < "$d/a.conf"; } 2>/dev/null
  if [ -n "$a1" ] && [ -n "$b" ] && [ -n "$a2" ]; then
    if [ "$a1" = "$a2" ]; then
      n=$((n+1))
      if [ "$a1" != "$b" ]; then echo "MISMATCH $a1 $b" >> "$out"; fi
    fi
  fi
done
echo "reads $n" >> "$out"
"#;

struct Reader {
    child: Child,
    stop: PathBuf,
    out: PathBuf,
}

impl Reader {
    fn start(env: &Env, dir: &Path) -> Reader {
        let script = env.path("reader.sh");
        fs::write(&script, READER).unwrap();
        let stop = env.path("reader.stop");
        let out = env.path("reader.out");
        let child = Command::new("sh")
            .arg(&script)
            .args([dir, &stop, &out])
            .stdin(Stdio::null())
            .spawn()
            .expect("starting the reader");
        Reader { child, stop, out }
    }

    /// Stops it; every mismatched pair it saw, and how many pairs it compared.
    fn finish(mut self) -> (Vec<String>, u64) {
        fs::write(&self.stop, "").unwrap();
        let status = self.child.wait().unwrap();
        assert!(status.success(), "the reader failed: {status}");
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        let mismatches: Vec<String> =
            text.lines().filter(|l| l.starts_with("MISMATCH")).map(str::to_owned).collect();
        let reads =
            text.lines().find_map(|l| l.strip_prefix("reads ")).expect("the reader's count").parse().unwrap();
        (mismatches, reads)
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        let _ = fs::write(&self.stop, "");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The version directories in `dir` (`..` names but `..data`), sorted (oldest first).
fn versions(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("..") && n != "..data" && n != "..data_tmp")
        .collect();
    v.sort();
    v
}

fn data_target(dir: &Path) -> Option<String> {
    fs::read_link(dir.join("..data")).ok().map(|t| t.to_string_lossy().into_owned())
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()))
}

/// A `[[bundle]]` of `a.conf` (raw `{root}/a`) and `sub/b.json` (a template of `{root}/b`).
fn pair_bundle(dir: &Path, root: &str, extra: &str) -> String {
    format!(
        "[[bundle]]\ndir = {}\n{extra}\n[[bundle.file]]\npath = \"a.conf\"\nznode = \"{root}/a\"\n\
         [[bundle.file]]\npath = \"sub/b.json\"\ninline = '{{{{ znode(\"{root}/b\") }}}}'\nmode = \"0600\"\n",
        toml_path(dir)
    )
}

/// Waits until `..data` points at a version whose `a.conf` is `a`; returns the version.
fn wait_for_version(dir: &Path, a: &str, what: &str) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(target) = data_target(dir)
            && fs::read_to_string(dir.join(&target).join("a.conf")).is_ok_and(|s| s == a)
        {
            return target;
        }
        assert!(Instant::now() < deadline, "{what}: no version with a.conf = {a:?} in {}", dir.display());
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// `..data` points at a complete version holding `a`/`b`, and it is the only version left.
fn assert_only_version(dir: &Path, target: &str, a: &str, b: &str) {
    assert_eq!(read(&dir.join(target).join("a.conf")), a);
    assert_eq!(read(&dir.join(target).join("sub/b.json")), b);
    let deadline = Instant::now() + WAIT;
    while versions(dir) != [target] {
        assert!(Instant::now() < deadline, "the previous version was not removed: {:?}", versions(dir));
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Case (a): a writer changes both znodes in one `multi` per update; no version, and no
/// pair the reader sees, mixes two transactions. A reload command records `..data` after
/// each swap it runs for (reloads merge while one runs, so not necessarily every swap), a
/// thread polls `..data` for every version it can catch, and at the end the last version is
/// the only one left. (Case (b) inspects `..data` after every one of its swaps exactly.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_transaction_is_never_seen_half_applied() {
    let env = Env::new("bundle-multi").await;
    env.seed(&[("/m/a", b"0"), ("/m/b", b"0")]).await;
    let dir = env.path("conf");
    let inspect = env.path("inspect.sh");
    let log = env.path("inspect.log");
    fs::write(
        &inspect,
        "d=$1; t=$(readlink \"$d/..data\"); vs=$(cd \"$d\" && ls -d ..?* | grep -v '^[.][.]data$' | tr '\\n' ' ')\n\
         a=$(cat \"$d/$t/a.conf\"); b=$(cat \"$d/$t/sub/b.json\")\n\
         # A newer swap meanwhile (and the removal of $t): this inspection proves nothing.\n\
         [ \"$(readlink \"$d/..data\")\" = \"$t\" ] && echo \"$t|$vs|$a|$b\" >> \"$2\"\n\
         exit 0\n",
    )
    .unwrap();
    let reload = format!(
        "[bundle.reload]\ncommand = [\"sh\", {}, {}, {}]\n",
        toml_path(&inspect),
        toml_path(&dir),
        toml_path(&log)
    );
    let config = env.config().write(&(pair_bundle(&dir, "/m", "") + &reload));
    let agent = Agent::run(&config);
    agent.wait_for_bytes(&dir.join("a.conf"), b"0", WAIT, "the first version");
    // The visible links of new names appear just after the swap, one after the other.
    agent.wait_for_bytes(&dir.join("sub/b.json"), b"0", WAIT, "the first version's second link");
    assert_eq!(fs::read_link(dir.join("sub")).unwrap(), Path::new("..data/sub"));
    assert_eq!(fs::read_link(dir.join("a.conf")).unwrap(), Path::new("..data/a.conf"));

    let reader = Reader::start(&env, &dir);
    // Versions seen by polling `..data` meanwhile: each must be complete and consistent.
    let poll_dir = dir.clone();
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let poller = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let Some(target) = data_target(&poll_dir) else { continue };
                if seen.contains(&target) {
                    continue;
                }
                let a = fs::read_to_string(poll_dir.join(&target).join("a.conf"));
                let b = fs::read_to_string(poll_dir.join(&target).join("sub/b.json"));
                match (a, b) {
                    (Ok(a), Ok(b)) => assert_eq!(a, b, "version {target} mixes two transactions"),
                    // Removed already: only if `..data` moved on meanwhile.
                    _ => assert_ne!(
                        data_target(&poll_dir).as_deref(),
                        Some(target.as_str()),
                        "{target} incomplete"
                    ),
                }
                seen.insert(target);
            }
            seen.len()
        })
    };
    for n in 1..=UPDATES {
        let value = n.to_string();
        let mut writer = env.client().new_multi_writer();
        writer.add_set_data("/m/a", value.as_bytes(), None).unwrap();
        writer.add_set_data("/m/b", value.as_bytes(), None).unwrap();
        writer.commit().await.unwrap_or_else(|e| panic!("multi setting both to {n}: {e}"));
        // A short pause now and then: windows in which the agent renders between bursts.
        if n % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let last = UPDATES.to_string();
    let target = wait_for_version(&dir, &last, "the last transaction");
    assert_only_version(&dir, &target, &last, &last);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let polled = poller.join().expect("a version seen by polling was wrong");
    let (mismatches, reads) = reader.finish();
    assert!(
        mismatches.is_empty(),
        "the reader saw mixed pairs: {:?}",
        &mismatches[..mismatches.len().min(10)]
    );
    assert!(reads > 100, "the reader compared only {reads} pairs");

    // Every swap a reload ran for: `..data` complete, no older version left.
    let deadline = Instant::now() + WAIT;
    // The log exists once an inspection ran with no swap meanwhile: the last one, at least.
    let logged = || fs::read_to_string(&log).unwrap_or_default();
    while !logged().contains(&format!("|{last}|{last}")) {
        assert!(Instant::now() < deadline, "no reload for the last version:\n{}", logged());
        std::thread::sleep(Duration::from_millis(10));
    }
    let lines = read(&log);
    for line in lines.lines() {
        let [t, vs, a, b] = line.split('|').collect::<Vec<_>>()[..] else { panic!("bad line {line:?}") };
        assert_eq!(a, b, "reload saw a mixed version: {line}");
        let vs: Vec<&str> = vs.split_whitespace().collect();
        assert!(vs.contains(&t), "..data -> {t} does not exist: {line}");
        // Reloads run beside the next install, which may be between its swap and its
        // removal of the previous version: at most that one older version may be seen.
        let older = vs.iter().filter(|v| **v < t).count();
        assert!(older <= 1, "versions older than ..data are left: {line}");
    }
    let swaps = agent.log().matches("bundle swapped to a new version").count();
    eprintln!(
        "multi: {UPDATES} transactions, {swaps} swaps, {} reloads, {polled} versions polled, {reads} pairs read",
        lines.lines().count()
    );
    assert!(lines.lines().count() <= swaps, "one reload per bundle change at most");
    agent.assert_running();
}

/// Case (b): with `commit`, the writer sets the files' znodes one by one, then the commit
/// znode, and waits for the swap. No version ever holds the half-written state between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_bundle_renders_only_committed_versions() {
    let env = Env::new("bundle-commit").await;
    env.seed(&[("/c/a", b"0"), ("/c/b", b"0"), ("/c/version", b"0")]).await;
    let dir = env.path("conf");
    let config = env.config().write(&pair_bundle(&dir, "/c", "commit = \"/c/version\""));
    let agent = Agent::run(&config);
    let first = wait_for_version(&dir, "0", "the first version");
    assert_only_version(&dir, &first, "0", "0");

    let reader = Reader::start(&env, &dir);
    let started = Instant::now();
    let mut previous = first;
    for n in 1..=UPDATES {
        let value = n.to_string();
        env.set("/c/a", &value).await;
        env.set("/c/b", &value).await;
        env.set("/c/version", &value).await;
        let target = wait_for_version(&dir, &value, "a committed version");
        assert_ne!(target, previous);
        // After every swap: `..data`'s version is complete and the previous one is gone.
        assert_only_version(&dir, &target, &value, &value);
        assert!(!dir.join(&previous).exists(), "{previous} is left after the swap");
        previous = target;
    }
    let elapsed = started.elapsed();
    let (mismatches, reads) = reader.finish();
    assert!(
        mismatches.is_empty(),
        "the reader saw mixed pairs: {:?}",
        &mismatches[..mismatches.len().min(10)]
    );
    assert!(reads > 100, "the reader compared only {reads} pairs");

    // A change of a file's znode alone renders nothing.
    env.set("/c/a", "uncommitted").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(read(&dir.join("a.conf")), UPDATES.to_string(), "rendered without a commit");
    let swaps = agent.log().matches("bundle swapped to a new version").count();
    assert_eq!(swaps as u32, UPDATES + 1, "one swap per commit (and one at start)");
    eprintln!("commit: {UPDATES} committed versions in {elapsed:?}, {reads} pairs read");
    agent.assert_running();
}

/// A bundle `check` that fails leaves `..data`, the files and the versions as they were,
/// and says so in the log; the next good rendering is swapped in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_check_keeps_the_current_version() {
    let env = Env::new("bundle-check").await;
    env.seed(&[("/k/a", b"good"), ("/k/b", b"1")]).await;
    let dir = env.path("conf");
    let check = "check = [\"sh\", \"-c\", \"! grep -q bad {dir}/a.conf\"]";
    let mut files = pair_bundle(&dir, "/k", check);
    // A per-file check too, run on the staged file.
    files.push_str("check = [\"test\", \"-s\", \"{file}\"]\n");
    let config = env.config().listen("127.0.0.1:0").write(&files);
    let agent = Agent::run(&config);
    let good = wait_for_version(&dir, "good", "the first version");
    let endpoint = Endpoint::of(&agent);

    env.set("/k/a", "bad").await;
    agent.wait_for_log("bundle check failed; ..data untouched", WAIT);
    agent.wait_for_log("! grep -q bad {dir}/a.conf", WAIT);
    assert_eq!(data_target(&dir).as_deref(), Some(good.as_str()), "..data untouched");
    assert_eq!(versions(&dir), [good.as_str()], "the staged version is removed");
    assert_eq!(read(&dir.join("a.conf")), "good");
    // `/status` lists the bundle's files, with one state; the metric counts one failure.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, status) = endpoint.json("/status");
        let files: Vec<&serde_json::Value> = status["files"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["bundle"] == dir.display().to_string())
            .collect();
        let dests: Vec<&str> = files.iter().map(|f| f["dest"].as_str().unwrap()).collect();
        assert_eq!(
            dests,
            [dir.join("a.conf").display().to_string(), dir.join("sub/b.json").display().to_string()]
        );
        if files.iter().all(|f| f["reason"] == "check_failed") {
            break;
        }
        assert!(Instant::now() < deadline, "/status: {status}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(endpoint.metric("zkrender_check_failures_total"), Some(1.0));

    env.set("/k/a", "better").await;
    let next = wait_for_version(&dir, "better", "the next good version");
    assert_only_version(&dir, &next, "better", "1");
    agent.assert_running();
}

/// `rollback`: the reload after a swap fails, `..data` goes back to the previous version
/// (a file the new version dropped comes back too), and the rejected version is not
/// installed again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollback_swaps_data_back() {
    let env = Env::new("bundle-rollback").await;
    env.seed(&[("/r/a", b"good"), ("/r/b", b"1")]).await;
    let dir = env.path("conf");
    let reloads = env.path("reloads");
    let reload = format!(
        "[bundle.reload]\ncommand = [\"sh\", \"-c\", \"echo x >> {}; ! grep -q bad {}/a.conf\"]\nretries = 0\n",
        reloads.display(),
        dir.display()
    );
    let config = env.config().write(&(pair_bundle(&dir, "/r", "rollback = true") + &reload));
    let agent = Agent::run(&config);
    let good = wait_for_version(&dir, "good", "the first version");

    env.set("/r/a", "bad").await;
    agent.wait_for_log("swapped back to the previous version", WAIT);
    assert_eq!(data_target(&dir).as_deref(), Some(good.as_str()), "..data is back");
    assert_eq!(read(&dir.join("a.conf")), "good");
    assert_eq!(versions(&dir), [good.as_str()], "the rejected version is removed");
    // First install, the failed one, the one after the rollback.
    let deadline = Instant::now() + WAIT;
    while read(&reloads).lines().count() < 3 {
        assert!(Instant::now() < deadline, "reloads: {}", read(&reloads));
        std::thread::sleep(Duration::from_millis(10));
    }

    // A new rendering (b changed) is tried again, and rolled back again.
    env.set("/r/b", "2").await;
    agent.wait_for_log_count("swapped back to the previous version", 2, WAIT);
    env.set("/r/a", "fine").await;
    let fine = wait_for_version(&dir, "fine", "a good version");
    assert_eq!(read(&dir.join("sub/b.json")), "2");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(data_target(&dir).as_deref(), Some(fine.as_str()), "the good version stays");
    agent.assert_running();
}

/// A file removed from the bundle (config reload) leaves with the swap; one reload.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_leaving_the_bundle_leaves_with_the_swap() {
    let env = Env::new("bundle-leave").await;
    env.seed(&[("/l/a", b"A"), ("/l/b", b"B")]).await;
    let dir = env.path("conf");
    let reloads = env.path("reloads");
    let reload =
        format!("[bundle.reload]\ncommand = [\"sh\", \"-c\", \"echo x >> {}\"]\n", reloads.display());
    let config = env.config().write(&(pair_bundle(&dir, "/l", "") + &reload));
    let agent = Agent::run(&config);
    let first = wait_for_version(&dir, "A", "the first version");
    // The visible links are made right after the first swap.
    agent.wait_for_bytes(&dir.join("sub/b.json"), b"B", WAIT, "sub/b.json");
    assert_eq!(
        fs::metadata(dir.join("sub/b.json"))
            .map(|m| std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o777)
            .unwrap(),
        0o600
    );

    let only_a = format!(
        "[[bundle]]\ndir = {}\n[[bundle.file]]\npath = \"a.conf\"\nznode = \"/l/a\"\n{reload}",
        toml_path(&dir)
    );
    env.config().write(&only_a);
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    let deadline = Instant::now() + WAIT;
    while data_target(&dir).as_deref() == Some(first.as_str()) {
        assert!(Instant::now() < deadline, "no new version without sub/b.json");
        std::thread::sleep(Duration::from_millis(5));
    }
    let target = data_target(&dir).unwrap();
    // Gone with the swap (its link, dangling since, is removed right after).
    assert!(!dir.join("sub/b.json").exists(), "sub/b.json left with the swap");
    assert!(!dir.join(&target).join("sub").exists());
    assert_eq!(read(&dir.join("a.conf")), "A");
    let deadline = Instant::now() + WAIT;
    while versions(&dir) != [target.clone()]
        || read(&reloads).lines().count() < 2
        || fs::symlink_metadata(dir.join("sub")).is_ok()
    {
        assert!(Instant::now() < deadline, "versions {:?}, reloads {}", versions(&dir), read(&reloads));
        std::thread::sleep(Duration::from_millis(5));
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(read(&reloads).lines().count(), 2, "one reload per bundle change");
    // The first reload's outcome may arrive after the config reload dropped sub/b.json.
    assert!(!agent.log().contains("panicked"), "{}", agent.log());
    agent.assert_running();
}

/// Config errors name the file, the line and the key, and `check` counts the bundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_errors_name_file_line_and_key() {
    let env = Env::new("bundle-config").await;
    let dir = env.path("conf");
    let check = |files: &str| {
        let config = env.config().write(files);
        let agent = Agent::start([std::ffi::OsStr::new("check"), "-c".as_ref(), config.as_os_str()]);
        let status = agent.wait_exit(WAIT);
        (status.code(), agent.log(), config)
    };
    let head = format!("[[bundle]]\ndir = {}\n", toml_path(&dir));
    let cases: &[(&str, &str, &str)] = &[
        ("[[bundle.file]]\npath = \"../x\"\nznode = \"/a\"\n", "key `path`", "may not contain \"..\""),
        ("[[bundle.file]]\npath = \"..data\"\nznode = \"/a\"\n", "key `path`", "the bundle's own"),
        (
            "[[bundle.file]]\npath = \"a\"\nznode = \"/a\"\n[[bundle.file]]\npath = \"a/b\"\nznode = \"/b\"\n",
            "key `path`",
            "cannot both exist",
        ),
        ("[[bundle.file]]\npath = \"a\"\nznode = \"a\"\n", "key `znode`", "must start with \"/\""),
        ("commit = \"nope\"\n[[bundle.file]]\npath = \"a\"\nznode = \"/a\"\n", "key `commit`", "must start"),
        (
            "rollback = true\n[[bundle.file]]\npath = \"a\"\nznode = \"/a\"\n",
            "key `rollback`",
            "[bundle.reload]",
        ),
        ("[[bundle.file]]\npath = \"a\"\nznode = \"/a\"\nbackup = true\n", "backup", "unknown field"),
    ];
    for (rest, key, says) in cases {
        let (code, log, config) = check(&format!("{head}{rest}"));
        assert_eq!(code, Some(2), "{rest}: {log}");
        let text = read(&config);
        // The problem is at the last line of the key (the second of two paths).
        let needle = rest.lines().rfind(|l| key.contains(l.split(" = ").next().unwrap_or("-"))).unwrap_or("");
        let line = text
            .lines()
            .enumerate()
            .filter(|(_, l)| !needle.is_empty() && *l == needle)
            .last()
            .map(|(i, _)| i + 1);
        assert!(log.contains(&config.display().to_string()), "{rest}: no file in: {log}");
        assert!(log.contains(key) && log.contains(says), "{rest}: expected {key} / {says} in: {log}");
        if let Some(line) = line {
            assert!(log.contains(&format!(":{line}:")), "{rest}: no line {line} in: {log}");
        }
        assert!(log.contains("[[bundle]] #1") || *key == "backup", "{rest}: bundle not named: {log}");
    }
    let (code, log, _) = check(&format!("{head}[[bundle.file]]\npath = \"a\"\nznode = \"/a\"\n"));
    assert_eq!(code, Some(0), "{log}");
    assert!(log.contains("1 bundle of 1 file"), "{log}");
}

fn zkrender(args: &[&str], config: &Path) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_zkrender"))
        .args(args)
        .arg("-c")
        .arg(config)
        .stdin(Stdio::null())
        .output()
        .expect("cannot run zkrender")
}

/// `render` prints every file of a bundle (`--dest` takes its dir), `once` installs it,
/// and `diff` compares each file through `dir/`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn render_once_and_diff_treat_the_bundle_as_one_unit() {
    let env = Env::new("bundle-commands").await;
    env.seed(&[("/d/a", b"1"), ("/d/b", b"2")]).await;
    let dir = env.path("conf");
    let config = env.config().write(&(pair_bundle(&dir, "/d", "") + &raw_file(&env.path("plain"), "/d/a")));
    let out = zkrender(&["render"], &config);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "render: {}", String::from_utf8_lossy(&out.stderr));
    for header in [dir.join("a.conf"), dir.join("sub/b.json"), env.path("plain")] {
        assert!(text.contains(&format!("==> {} <==", header.display())), "{text}");
    }
    let out = zkrender(&["render", "--dest", dir.to_str().unwrap()], &config);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("sub/b.json <==") && !text.contains("plain"), "render --dest DIR: {text}");
    assert!(!dir.exists(), "render writes nothing");

    let out = zkrender(&["diff"], &config);
    assert_eq!(out.status.code(), Some(1), "diff before install: {}", String::from_utf8_lossy(&out.stderr));
    let out = zkrender(&["once"], &config);
    assert!(out.status.success(), "once: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(read(&dir.join("sub/b.json")), "2");
    let out = zkrender(&["diff"], &config);
    assert_eq!(out.status.code(), Some(0), "diff after install: {}", String::from_utf8_lossy(&out.stdout));
    env.set("/d/b", "3").await;
    let out = zkrender(&["diff"], &config);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(text.contains("sub/b.json") && text.contains("+3"), "{text}");
}

/// `examples/bundle` as shipped: a release is installed whole, and one whose routes do not
/// match is refused by the bundle's check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundle_example_installs_a_release_and_refuses_a_mismatched_one() {
    let env = Env::new("bundle-example").await;
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bundle");
    let copy = env.mkdir("example");
    fs::create_dir_all(copy.join("templates")).unwrap();
    for file in ["zkrender.toml", "templates/app.conf.j2"] {
        fs::copy(example.join(file), copy.join(file)).unwrap();
    }
    let config = copy.join("zkrender.toml");
    let hosts = env.chrooted_hosts();
    let once = || zkrender(&["once", "--zookeeper", &hosts], &config);
    env.seed(&[
        ("/app/routes", br#"{"home": "/", "cart": "/cart"}"#),
        ("/app/config", b"route = home\nroute = cart"),
        ("/app/version", b"1"),
    ])
    .await;
    let out = once();
    assert!(out.status.success(), "once: {}", String::from_utf8_lossy(&out.stderr));
    let conf = copy.join("run/conf");
    assert!(read(&conf.join("app.conf")).contains("route = cart"));
    assert!(read(&conf.join("routes.json")).contains("\"cart\""));
    let first = data_target(&conf).unwrap();

    env.set("/app/config", "route = home\nroute = checkout").await;
    env.set("/app/version", "2").await;
    let out = once();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("check_failed"), "once: {stderr}");
    assert_eq!(data_target(&conf), Some(first), "the refused release is not swapped in");
    assert!(read(&conf.join("app.conf")).contains("route = cart"));
}
