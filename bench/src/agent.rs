//! The agent under test: the release `zkrender` binary, run as a separate process exactly as
//! users run it (`zkrender run -c CONFIG`, logs on stderr, here into a file), and what
//! /proc says about it.

use std::fs;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::Res;

pub struct Agent {
    /// The program's file name, for messages.
    name: String,
    child: Child,
    pub pid: i32,
    pub log: PathBuf,
}

impl Agent {
    /// Starts `bin run -c config`, stderr into `log`.
    pub fn spawn(bin: &Path, config: &Path, log: &Path) -> Res<Agent> {
        let mut cmd = Command::new(bin);
        cmd.arg("run").arg("-c").arg(config);
        Agent::start(cmd, log)
    }

    /// Starts any agent program (`cmd` with its arguments), stderr into `log`.
    pub fn start(mut cmd: Command, log: &Path) -> Res<Agent> {
        let err = fs::File::create(log)?;
        let name =
            Path::new(cmd.get_program()).file_name().unwrap_or_default().to_string_lossy().into_owned();
        cmd.stdin(Stdio::null()).stdout(Stdio::null()).stderr(err);
        // Should the benchmark die, its agents die with it.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        Ok(Agent { name, pid: child.id() as i32, child, log: log.to_owned() })
    }

    /// Fails with the log's tail if the process is gone.
    pub fn check_alive(&mut self) -> Res<()> {
        if let Some(st) = self.child.try_wait()? {
            let log = fs::read_to_string(&self.log).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!(
                "{} exited ({st}); log {}:\n{}",
                self.name,
                self.log.display(),
                tail.join("\n")
            )
            .into());
        }
        Ok(())
    }

    pub fn term(&self) {
        unsafe {
            libc::kill(self.pid, libc::SIGTERM);
        }
    }

    pub fn stats(&self) -> ProcStats {
        ProcStats::of(self.pid)
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.term();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Stops many agents at once: SIGTERM to all, then the drops only wait.
pub fn stop_all(agents: Vec<Agent>) {
    for a in &agents {
        a.term();
    }
    drop(agents);
}

/// A process's footprint, from /proc.
#[derive(Debug, Default, Clone)]
pub struct ProcStats {
    pub rss_kib: u64,
    pub hwm_kib: u64,
    pub threads: u64,
    pub fds: u64,
    /// CPU time of the live threads, ns (sum of /proc/PID/task/*/schedstat).
    pub cpu_ns: u64,
    /// utime + stime of the process, all threads ever (clock ticks -> ns).
    pub cpu_stat_ns: u64,
    /// Voluntary + involuntary context switches of the live threads (wake-ups).
    pub ctx_switches: u64,
    /// Per live thread: (tid, schedstat ns, context switches), for [`ProcStats::busy_since`].
    pub per_thread: Vec<(u64, u64, u64)>,
}

impl ProcStats {
    pub fn of(pid: i32) -> ProcStats {
        let mut s = ProcStats::default();
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        for line in status.lines() {
            let num = || line.split_whitespace().nth(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            if line.starts_with("VmRSS:") {
                s.rss_kib = num();
            } else if line.starts_with("VmHWM:") {
                s.hwm_kib = num();
            } else if line.starts_with("Threads:") {
                s.threads = num();
            }
        }
        s.fds = fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count() as u64).unwrap_or(0);
        if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let p = t.path();
                let tid = t.file_name().to_str().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
                let mut ns = 0;
                let mut cs = 0;
                if let Ok(ss) = fs::read_to_string(p.join("schedstat")) {
                    ns = ss.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                }
                if let Ok(st) = fs::read_to_string(p.join("status")) {
                    for line in st.lines() {
                        if line.starts_with("voluntary_ctxt_switches:")
                            || line.starts_with("nonvoluntary_ctxt_switches:")
                        {
                            cs += line
                                .split_whitespace()
                                .nth(1)
                                .and_then(|v| v.parse::<u64>().ok())
                                .unwrap_or(0);
                        }
                    }
                }
                s.cpu_ns += ns;
                s.ctx_switches += cs;
                s.per_thread.push((tid, ns, cs));
            }
        }
        if let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) {
            // Fields after the last ')': state is field 3; utime 14, stime 15.
            let rest = stat.rsplit_once(") ").map(|x| x.1).unwrap_or("");
            let f: Vec<&str> = rest.split_whitespace().collect();
            let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
            let get = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            s.cpu_stat_ns = (get(11) + get(12)) * 1_000_000_000 / tick;
        }
        s
    }
}

impl ProcStats {
    /// CPU ns and context switches of the live threads since `before` (threads that exited
    /// meanwhile, such as idle blocking-pool threads, drop out of both; new ones count whole).
    pub fn busy_since(&self, before: &ProcStats) -> (u64, u64) {
        let mut ns = 0;
        let mut cs = 0;
        for &(tid, n, c) in &self.per_thread {
            let (n0, c0) =
                before.per_thread.iter().find(|t| t.0 == tid).map(|t| (t.1, t.2)).unwrap_or((0, 0));
            ns += n.saturating_sub(n0);
            cs += c.saturating_sub(c0);
        }
        (ns, cs)
    }
}

/// A TOML basic string.
pub fn q(s: &str) -> String {
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A free loopback port for the agent's HTTP endpoint (bound and released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// The `[zookeeper]` and `[agent]` head of a config.
pub fn head(hosts: &str, wait: &str, listen: &str) -> String {
    format!("[zookeeper]\nhosts = {}\n\n[agent]\nwait = {}\nlisten = {}\n\n", q(hosts), q(wait), q(listen))
}

/// A raw `[[file]]`.
pub fn raw_file(dest: &Path, znode: &str) -> String {
    format!("[[file]]\ndest = {}\nznode = {}\n\n", q(&dest.to_string_lossy()), q(znode))
}

/// An inline-template `[[file]]`.
pub fn inline_file(dest: &Path, prefix: Option<&str>, text: &str) -> String {
    let mut s = format!("[[file]]\ndest = {}\ninline = {}\n", q(&dest.to_string_lossy()), q(text));
    if let Some(p) = prefix {
        s.push_str(&format!("prefix = {}\n", q(p)));
    }
    s.push('\n');
    s
}
