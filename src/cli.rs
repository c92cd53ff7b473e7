//! The command line.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};

/// Keep local files equal to what ZooKeeper holds, and reload the application when they change.
///
/// zkrender watches znodes, renders them into files (raw copies or Jinja2 templates), installs
/// each file atomically and reloads the application with a signal, an HTTP hook or a command.
#[derive(Debug, Parser)]
#[command(name = "zkrender", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    /// A configuration file, or a directory: every `*.toml` directly in it, in name order.
    /// Repeatable; `[[file]]` entries add up, `[zookeeper]` and `[agent]` may each be in one
    /// file only. Default: ./zkrender.toml (which may be missing when --znode or --template
    /// is given).
    #[arg(short = 'c', long = "config", global = true, env = "ZKRENDER_CONFIG", value_name = "PATH")]
    pub config: Vec<PathBuf>,

    /// ZooKeeper connect string (`host:port,...[/chroot]`); replaces `[zookeeper] hosts`.
    #[arg(long, global = true, env = "ZKRENDER_ZOOKEEPER", value_name = "HOSTS")]
    pub zookeeper: Option<String>,

    /// Copy ZNODE to the file DEST, and run COMMAND (split with shell quoting rules, run
    /// without a shell) after it changed. Repeatable; adds to the config files. With
    /// `fleet`: a znode PATH to show alone (repeatable).
    #[arg(long, global = true, value_name = "ZNODE:DEST[:COMMAND]")]
    pub znode: Vec<String>,

    /// Render the template file TEMPLATE to DEST, and run COMMAND after it changed (as for
    /// --znode). Repeatable; adds to the config files.
    #[arg(long, global = true, value_name = "TEMPLATE:DEST[:COMMAND]")]
    pub template: Vec<String>,

    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "ZKRENDER_LOG_FORMAT")]
    pub log_format: LogFormat,

    /// Log level: error, warn, info, debug, trace, or a tracing filter such as
    /// `zkrender=debug`. RUST_LOG, when set, wins.
    #[arg(long, global = true, default_value = "info", env = "ZKRENDER_LOG_LEVEL")]
    pub log_level: String,

    #[command(subcommand)]
    pub command: CommandKind,
}

/// `--log-format`
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum CommandKind {
    /// Run the agent: write every file, then keep each equal to ZooKeeper and reload on change.
    Run,
    /// Render and install every file once, then exit (for init containers). Runs no reloads.
    ///
    /// Exits 0 when every file was written (or already correct), 1 otherwise, naming the znode
    /// or error that kept each file from rendering.
    Once {
        /// How long to wait for ZooKeeper and for missing znodes to appear.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Render every file, then run COMMAND as a child and keep the files up to date while it runs.
    ///
    /// For pods without a shared process namespace, and for plain VMs. A `[file.reload]` with
    /// `signal` and no pid, pid_file or process signals the child; `restart = true` restarts it.
    /// SIGTERM, SIGINT, SIGQUIT, SIGUSR1 and SIGUSR2 are forwarded to the child; SIGHUP reloads
    /// zkrender's own configuration. zkrender exits with the child's exit code.
    Exec {
        /// How long to wait for every file to be written before starting the child.
        #[arg(long, default_value = "60s", value_parser = parse_duration)]
        timeout: Duration,
        /// The command and its arguments, after `--`.
        #[arg(last = true, required = true, value_name = "COMMAND")]
        command: Vec<String>,
    },
    /// Validate the configuration and compile every template, without touching ZooKeeper.
    ///
    /// Passes exactly the configs `run` accepts: besides the config's own keys it finds
    /// templates calling an unknown function, filter or test, literal znode paths and `env()`
    /// names that can never be read, `check` and reload programs that cannot be started, and
    /// two files with the same destination. Exits 2 on any error, naming file, line, column
    /// and key.
    Check {
        /// Check the config for `zkrender exec`: accept reloads that signal or restart its child.
        #[arg(long)]
        exec: bool,
    },
    /// Render against ZooKeeper and print to stdout instead of writing files.
    Render {
        /// Print only this file's exact bytes (its `dest` as in the config, or the resolved path).
        #[arg(long)]
        dest: Option<PathBuf>,
        /// How long to wait for ZooKeeper and for missing znodes to appear.
        #[arg(long, default_value = "30s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Show what would change: a unified diff of each file on disk against its rendering.
    ///
    /// Reads ZooKeeper like `render`; writes nothing and reloads nothing. A missing file diffs
    /// against empty; binary contents are reported with both sizes and SHA-256 digests. Exits
    /// 0 when no file would change, 1 when some file would, 2 on a config error, 3 when a file
    /// cannot be rendered or ZooKeeper cannot be reached within --timeout.
    Diff {
        /// Only this file (its `dest` as in the config, or the resolved path).
        #[arg(long)]
        dest: Option<PathBuf>,
        /// How long to wait for ZooKeeper and for missing znodes to appear.
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// Print a commented starter configuration with every section and key (defaults shown).
    ///
    /// It passes `zkrender check` as printed (hosts 127.0.0.1:2181).
    Init {
        /// Write it to this file instead of stdout; an existing file is never overwritten.
        #[arg(long, short = 'o')]
        output: Option<PathBuf>,
    },
    /// Show a running agent's files, their znodes and last writes, as a table.
    ///
    /// Asks the agent's HTTP endpoint (`[agent] listen`) for `/status`.
    Status {
        /// The agent's `listen` address; by default the one in the config file, else 127.0.0.1:9102.
        #[arg(long)]
        listen: Option<String>,
        /// Print the raw JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show which agents applied the current version of each znode (the fleet reports).
    ///
    /// Reads every agent's report under `[agent] report` (or --report) and the current zxid of
    /// each znode they name, and prints per znode how many agents applied it, which lag
    /// behind and since when, and which failed and why. `--znode PATH` (repeatable) shows only
    /// that znode. Connects as the agent does: `[zookeeper]` of the -c files (hosts, chroot,
    /// auth, tls), --zookeeper replacing the hosts. Exits 0 when every agent is current, 1
    /// otherwise (also when no agent reports, or none reads a --znode).
    Fleet {
        /// The report path; default: `[agent] report` of the config, else /zkrender/agents.
        #[arg(long, value_name = "PATH", value_parser = parse_znode)]
        report: Option<String>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
        /// Read again until every agent is current or DURATION has passed (e.g. 60s).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        wait: Option<Duration>,
    },
    /// Print shell completions for zkrender to stdout.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the zkrender(1) man page (roff) to stdout: commands, options, the configuration
    /// reference, template functions, exit codes and signals.
    Man,
}

impl Cli {
    /// Where the configuration comes from: `-c`, `--zookeeper`, `--znode`, `--template`.
    pub fn sources(&self) -> crate::config::Sources {
        crate::config::Sources {
            paths: self.config.clone(),
            zookeeper: self.zookeeper.clone(),
            znodes: self.znode.clone(),
            templates: self.template.clone(),
        }
    }
}

fn parse_znode(s: &str) -> Result<String, String> {
    crate::model::ZnodePath::parse(s).map(|p| p.to_string()).map_err(|e| e.to_string())
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 30s, 2m)"))
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from(["zkrender", "once", "-c", "x.toml", "--log-format", "json"]).unwrap();
        assert_eq!(cli.config, [PathBuf::from("x.toml")]);
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(matches!(cli.command, CommandKind::Once { timeout } if timeout == Duration::from_secs(30)));
    }

    #[test]
    fn diff_and_init_parse() {
        let cli = Cli::try_parse_from(["zkrender", "diff", "--dest", "a.conf"]).unwrap();
        assert!(matches!(cli.command, CommandKind::Diff { dest: Some(d), timeout }
            if d == Path::new("a.conf") && timeout == Duration::from_secs(10)));
        let cli = Cli::try_parse_from(["zkrender", "init", "--output", "z.toml"]).unwrap();
        assert!(matches!(cli.command, CommandKind::Init { output: Some(o) } if o == Path::new("z.toml")));
    }

    #[test]
    fn config_sources_repeat_and_keep_their_order() {
        let cli = Cli::try_parse_from([
            "zkrender",
            "check",
            "-c",
            "a.toml",
            "-c",
            "conf.d",
            "--zookeeper",
            "zk:2181",
            "--znode",
            "/a:/tmp/a:kill -HUP 1",
            "--template",
            "t.j2:/tmp/t",
            "--znode",
            "/b:/tmp/b",
        ])
        .unwrap();
        let sources = cli.sources();
        assert_eq!(sources.paths, [PathBuf::from("a.toml"), PathBuf::from("conf.d")]);
        assert_eq!(sources.zookeeper.as_deref(), Some("zk:2181"));
        assert_eq!(sources.znodes, ["/a:/tmp/a:kill -HUP 1", "/b:/tmp/b"]);
        assert_eq!(sources.templates, ["t.j2:/tmp/t"]);
        let before = Cli::try_parse_from(["zkrender", "-c", "a.toml", "-c", "b.toml", "run"]).unwrap();
        assert_eq!(before.config, [PathBuf::from("a.toml"), PathBuf::from("b.toml")]);
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
