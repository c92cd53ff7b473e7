//! `zkrender`: parse the command line, set up logging, run the command, map errors to exit codes.

use std::io::{IsTerminal, Write as _};
use std::path::Path;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use zkrender::cli::{Cli, CommandKind, LogFormat};
use zkrender::error::{AgentError, EXIT_DIFFERENT, report};
use zkrender::{config, runtime};

fn main() -> ExitCode {
    bound_malloc();
    let cli = Cli::parse();
    init_logging(&cli);
    log_panics();
    let log_format = cli.log_format;
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        // The reader stopped early (`zkrender man | head`): done, as for any CLI tool.
        Err(e) if e.is_closed_stdout() => ExitCode::SUCCESS,
        Err(e) => {
            print_error(&e, log_format);
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
}

/// Keeps glibc malloc's retained memory bounded, before any thread starts. By default glibc
/// gives each thread that allocates an arena of its own (up to 8 per CPU: the blocking pool's
/// threads come and go) and raises its mmap threshold to the largest block freed so far, so
/// that after one 256 KiB znode value every later one comes from an arena, which keeps the
/// freed memory. The live heap stays flat under faults (heaptrack: 0.5-0.9 MiB over 4 session
/// expiries and 16 reconnects) while RSS grew by 0.75-0.9 MiB in 5 minutes of
/// `scripts/soak`; with 2 arenas and a fixed threshold it stays flat. An operator's own
/// `MALLOC_ARENA_MAX`, `MALLOC_MMAP_THRESHOLD_` or `GLIBC_TUNABLES` wins.
fn bound_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        use nix::libc;
        let told = ["MALLOC_ARENA_MAX", "MALLOC_MMAP_THRESHOLD_", "GLIBC_TUNABLES"];
        if told.iter().any(|name| std::env::var_os(name).is_some()) {
            return;
        }
        // SAFETY: mallopt only sets allocator parameters; called before any other thread exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
            // glibc's own initial value, fixed (setting it also fixes the trim threshold).
            libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        }
    }
}

/// The final error summary on stderr: `error: <report>`, or with `--log-format json` one JSON
/// object shaped like the log lines (timestamp, level, message, target) plus the exit code,
/// so that a log pipeline parsing every line does not trip over the last one.
fn print_error(e: &AgentError, format: LogFormat) {
    let message = report(e);
    match format {
        LogFormat::Text => eprintln!("error: {message}"),
        LogFormat::Json => {
            let line = serde_json::json!({
                "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
                "level": "ERROR",
                "message": message,
                "exit_code": e.exit_code(),
                "target": "zkrender",
            });
            eprintln!("{line}");
        }
    }
}

/// Writes `bytes` to stdout. A closed stdout comes back as [`AgentError::Stdout`] with
/// `BrokenPipe`, which `main` turns into a quiet exit 0.
fn write_stdout(bytes: &[u8]) -> Result<(), AgentError> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes).and_then(|()| out.flush()).map_err(AgentError::Stdout)
}

/// Panics go to the log, as one event in the log's format (JSON lines stay JSON), instead of
/// Rust's default message on stderr. A panic inside a template render is caught by the render
/// and becomes that file's error, message included, so it is only logged at debug level here
/// (with where it happened). The backtrace is added when `RUST_BACKTRACE` asks for one.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = zkrender::render::panic_message(info.payload());
        let location = info.location().map(ToString::to_string).unwrap_or_default();
        if zkrender::render::rendering() {
            tracing::debug!(%message, %location, "the template engine panicked; the render fails with its message");
            return;
        }
        let thread = std::thread::current().name().unwrap_or("unnamed").to_owned();
        let backtrace = std::backtrace::Backtrace::capture();
        // Recorded only when there is one (`None` fields are left out).
        let backtrace = (backtrace.status() == std::backtrace::BacktraceStatus::Captured)
            .then(|| tracing::field::display(backtrace));
        tracing::error!(%message, %location, thread, backtrace, "panic (a bug in zkrender; please report it)");
    }));
}

fn init_logging(cli: &Cli) {
    // The ZooKeeper client logs every (re)connect at info; keep it at warn unless asked.
    let level = if cli.log_level.contains('=') || matches!(cli.log_level.as_str(), "debug" | "trace") {
        cli.log_level.clone()
    } else {
        format!("{},zookeeper_client=warn", cli.log_level)
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    match cli.log_format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}

fn run(cli: Cli) -> Result<(), AgentError> {
    match &cli.command {
        CommandKind::Completions { shell } => {
            // Into a buffer first: clap_complete panics when its writer fails (a closed pipe).
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut Cli::command(), "zkrender", &mut script);
            return write_stdout(&script);
        }
        CommandKind::Man => {
            return zkrender::reference::man_page(Cli::command(), &mut std::io::stdout().lock())
                .map_err(AgentError::Stdout);
        }
        CommandKind::Init { output: Some(path) } => {
            zkrender::init::write_new(path)?;
            eprintln!("{}: written; check it with `zkrender check -c {}`", path.display(), path.display());
            return Ok(());
        }
        CommandKind::Init { output: None } => {
            use std::io::Write as _;
            let mut out = std::io::stdout().lock();
            return out
                .write_all(zkrender::init::starter_config().as_bytes())
                .and_then(|()| out.flush())
                .map_err(AgentError::Stdout);
        }
        _ => {}
    }
    if let CommandKind::Status { listen, json } = &cli.command {
        return status(&cli.sources(), listen.as_deref(), *json);
    }
    if let CommandKind::Fleet { report, json, wait } = &cli.command {
        return fleet(&cli, report.as_deref(), *json, *wait);
    }
    let sources = cli.sources();
    if let CommandKind::Exec { timeout, command } = cli.command {
        let config = config::load_sources(&sources)?;
        let code = runtime()?.block_on(runtime::exec(config, command, timeout))?;
        std::process::exit(code);
    }
    let config = config::load_sources(&sources)?;
    if let CommandKind::Check { exec } = cli.command {
        if !exec {
            config.refuse_exec_only()?;
        }
        runtime::compile(&config)?;
        let n = config.files.len();
        let bundles = match config.bundles.len() {
            0 => String::new(),
            b => {
                let in_them: usize = config.bundles.iter().map(|b| b.files.len()).sum();
                format!(", {b} bundle{} of {in_them} file{}", plural(b), plural(in_them))
            }
        };
        eprintln!("{}: ok ({n} file{}{bundles})", config.describe(), plural(n));
        return Ok(());
    }
    runtime()?.block_on(async move {
        let shutdown = CancellationToken::new();
        runtime::spawn_signal_handler(shutdown.clone());
        match cli.command {
            CommandKind::Run => runtime::run(config, shutdown).await,
            CommandKind::Once { timeout } => runtime::once(config, timeout, shutdown).await,
            CommandKind::Render { dest, timeout } => runtime::render(config, dest, timeout, shutdown).await,
            CommandKind::Diff { dest, timeout } => {
                match runtime::diff(config, dest, timeout, shutdown).await? {
                    runtime::DiffOutcome::Unchanged => Ok(()),
                    runtime::DiffOutcome::Changed => std::process::exit(EXIT_DIFFERENT),
                }
            }
            CommandKind::Check { .. }
            | CommandKind::Exec { .. }
            | CommandKind::Status { .. }
            | CommandKind::Fleet { .. }
            | CommandKind::Completions { .. }
            | CommandKind::Init { .. }
            | CommandKind::Man => {
                unreachable!("handled above")
            }
        }
    })
}

/// One thread runs every task: a change goes from the ZooKeeper client to the rename without
/// waking a second worker (measured: half the agent's context switches per change were
/// workers waking each other). Blocking work (installs, checks) still has its own threads.
///
/// It also keeps the snapshot rule's premise (`Core::blocked`): the client dispatches each
/// watch notification and read answer in the order ZooKeeper sent them, and on one thread the
/// watch loops then run, and announce their reads, in that same order. With a multi-thread
/// runtime `tests/bundle.rs`'s `multi` case saw a mixed version in 3 of 25 runs (none on one
/// thread); keep this in mind before going back to several workers.
fn runtime() -> Result<tokio::runtime::Runtime, AgentError> {
    tokio::runtime::Builder::new_current_thread()
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)
}

/// `zkrender fleet`: who applied what. Connects with the `[zookeeper]` of the config files
/// (or `--zookeeper` alone when there is no config file); `--znode` names znodes to show.
/// Exits 1 (after printing) when some agent is not current.
fn fleet(
    cli: &Cli,
    report: Option<&str>,
    json: bool,
    wait: Option<std::time::Duration>,
) -> Result<(), AgentError> {
    use zkrender::fleet::command;
    use zkrender::model::ZnodePath;
    let sources =
        config::Sources { paths: cli.config.clone(), zookeeper: cli.zookeeper.clone(), ..Default::default() };
    let config = match &cli.zookeeper {
        // Only the hosts: no config file needed.
        Some(hosts) if cli.config.is_empty() && !Path::new(config::DEFAULT_PATH).exists() => {
            let text = format!("[zookeeper]\nhosts = {}\n", toml::Value::String(hosts.clone()));
            config::parse(&std::path::absolute("--zookeeper").map_err(AgentError::Stdout)?, &text)?
        }
        _ => config::load_sources(&sources)?,
    };
    let report = match (report, &config.agent.report) {
        (Some(path), _) => path.to_owned(),
        (None, Some(r)) => r.path.to_string(),
        (None, None) => command::DEFAULT_REPORT.to_owned(),
    };
    let report = ZnodePath::parse(&report).map_err(|e| AgentError::Fleet(e.to_string()))?;
    let only: Vec<String> =
        cli.znode.iter().map(|z| ZnodePath::parse(z).map_or_else(|_| z.clone(), |p| p.to_string())).collect();
    let fleet = runtime()?.block_on(command::run(&config.zookeeper, &report, &only, wait))?;
    let text = if json {
        let mut text = serde_json::to_string_pretty(&fleet).unwrap_or_default();
        text.push('\n');
        text
    } else {
        zkrender::fleet::view::render_table(&fleet, zkrender::ops::unix_now())
    };
    write_stdout(text.as_bytes())?;
    if !fleet.current {
        std::process::exit(zkrender::error::EXIT_FAILURE);
    }
    Ok(())
}

/// `zkrender status`: fetch `/status` from a running agent and print it.
fn status(sources: &config::Sources, listen: Option<&str>, json: bool) -> Result<(), AgentError> {
    let listen = match listen {
        Some(l) => l.to_owned(),
        None => {
            let (config_path, listen) = status_listen_of(sources)?;
            listen.ok_or(AgentError::EndpointDisabled { config: config_path })?
        }
    };
    let report = runtime()?
        .block_on(zkrender::ops::fetch_status(&listen, std::time::Duration::from_secs(5)))
        .map_err(AgentError::Listen)?;
    let text = if json {
        let mut text = serde_json::to_string_pretty(&report).unwrap_or_default();
        text.push('\n');
        text
    } else {
        zkrender::ops::render_table(&report, zkrender::ops::unix_now())
    };
    write_stdout(text.as_bytes())
}

/// The `[agent] listen` of the `-c` files (each directory's `*.toml`; the first file that
/// has `[agent] listen` decides), with the file it came from, for `zkrender status`.
fn status_listen_of(sources: &config::Sources) -> Result<(std::path::PathBuf, Option<String>), AgentError> {
    let files = if sources.paths.is_empty() {
        vec![std::path::PathBuf::from(config::DEFAULT_PATH)]
    } else {
        config::source_files(sources)?
    };
    let mut first = None;
    for file in files {
        let table = std::fs::read_to_string(&file).ok().and_then(|text| text.parse::<toml::Table>().ok());
        if let Some(listen) = table.as_ref().and_then(|t| t.get("agent")).and_then(|a| a.get("listen")) {
            let listen = listen_value(&file, listen)?;
            return Ok((file, listen));
        }
        first.get_or_insert(file);
    }
    // No file sets it: the first one decides (the default address, or why it cannot be read).
    let file = first.unwrap_or_else(|| std::path::PathBuf::from(config::DEFAULT_PATH));
    let listen = status_listen(&file)?;
    Ok((file, listen))
}

/// The `[agent] listen` of the config at `path`, for `zkrender status`: `None` when the endpoint
/// is disabled (`listen = ""`), the default address when the key is absent, or when `path` is
/// the default `./zkrender.toml` and there is no such file.
///
/// Only this key is read (not the whole config through `config::load`): `status` must work
/// while the file holds an edit the running agent refused, and needs none of the rest.
fn status_listen(path: &Path) -> Result<Option<String>, AgentError> {
    let error = |source: Box<dyn std::error::Error + Send + Sync>| AgentError::StatusConfig {
        config: path.to_owned(),
        source,
    };
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && path == Path::new(config::DEFAULT_PATH) => {
            return Ok(Some(config::DEFAULT_LISTEN.to_owned()));
        }
        Err(e) => return Err(error(Box::new(e))),
    };
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| error(Box::new(e)))?;
    match table.get("agent").and_then(|agent| agent.get("listen")) {
        None => Ok(Some(config::DEFAULT_LISTEN.to_owned())),
        Some(listen) => listen_value(path, listen),
    }
}

/// `[agent] listen = VALUE` of the config at `path`: `None` when the endpoint is disabled.
fn listen_value(path: &Path, value: &toml::Value) -> Result<Option<String>, AgentError> {
    match value {
        toml::Value::String(listen) if listen.is_empty() => Ok(None),
        toml::Value::String(listen) => Ok(Some(listen.clone())),
        other => Err(AgentError::StatusConfig {
            config: path.to_owned(),
            source: format!("listen must be a string, not {}", other.type_str()).into(),
        }),
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listen_of(toml: &str) -> Result<Option<String>, AgentError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zkrender.toml");
        std::fs::write(&path, toml).unwrap();
        status_listen(&path)
    }

    #[test]
    fn status_reads_listen_from_the_config() {
        assert_eq!(
            listen_of("[agent]\nlisten = \"127.0.0.1:9200\"\n").unwrap().as_deref(),
            Some("127.0.0.1:9200")
        );
        assert_eq!(listen_of("[agent]\nlisten = \"\"\n").unwrap(), None);
        assert_eq!(
            listen_of("[zookeeper]\nhosts = \"x:1\"\n").unwrap().as_deref(),
            Some(config::DEFAULT_LISTEN)
        );
        // Keys status does not need may be wrong: the agent may run an older, valid version.
        assert_eq!(
            listen_of("[agent]\nlisten = \"[::1]:1\"\nbogus = 3\n").unwrap().as_deref(),
            Some("[::1]:1")
        );
    }

    #[test]
    fn status_names_the_config_it_cannot_read() {
        let err = listen_of("[agent]\nlisten = 9102\n").unwrap_err();
        assert!(report(&err).contains("listen must be a string, not integer"), "{}", report(&err));
        let err = listen_of("[agent\n").unwrap_err();
        assert!(report(&err).contains("zkrender.toml: reading [agent] listen"), "{}", report(&err));
        assert_eq!(err.exit_code(), 2);
        let missing = status_listen(Path::new("/nonexistent/zkrender.toml")).unwrap_err();
        assert!(report(&missing).starts_with("/nonexistent/zkrender.toml: "), "{}", report(&missing));
    }
}
