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
    /// The configuration file.
    #[arg(short = 'c', long = "config", global = true, default_value = crate::config::DEFAULT_PATH, env = "ZKRENDER_CONFIG")]
    pub config: PathBuf,

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
    /// Print shell completions for zkrender to stdout.
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
    /// Print the zkrender(1) man page (roff) to stdout.
    Man,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 500ms, 30s, 2m)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_flags_work_after_the_subcommand() {
        let cli = Cli::try_parse_from(["zkrender", "once", "-c", "x.toml", "--log-format", "json"]).unwrap();
        assert_eq!(cli.config, PathBuf::from("x.toml"));
        assert_eq!(cli.log_format, LogFormat::Json);
        assert!(matches!(cli.command, CommandKind::Once { timeout } if timeout == Duration::from_secs(30)));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
