//! `zkrender`: parse the command line, set up logging, run the command, map errors to exit codes.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use zkrender::cli::{Cli, CommandKind, LogFormat};
use zkrender::error::{AgentError, EXIT_DIFFERENT, report};
use zkrender::{config, runtime};

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(&cli);
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", report(&e));
            ExitCode::from(u8::try_from(e.exit_code()).unwrap_or(1))
        }
    }
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
            clap_complete::generate(*shell, &mut Cli::command(), "zkrender", &mut std::io::stdout());
            return Ok(());
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
    let sources = cli.sources();
    if let CommandKind::Exec { timeout, command } = cli.command {
        let config = config::load_sources(&sources)?;
        let code = runtime()?.block_on(runtime::exec(config, command, timeout))?;
        std::process::exit(code);
    }
    let config = config::load_sources(&sources)?;
    if let CommandKind::Check = cli.command {
        runtime::compile(&config)?;
        let n = config.files.len();
        eprintln!("{}: ok ({n} file{})", config.describe(), if n == 1 { "" } else { "s" });
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
            CommandKind::Check
            | CommandKind::Exec { .. }
            | CommandKind::Status { .. }
            | CommandKind::Completions { .. }
            | CommandKind::Init { .. }
            | CommandKind::Man => {
                unreachable!("handled above")
            }
        }
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, AgentError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(8)
        .enable_all()
        .build()
        .map_err(AgentError::Runtime)
}

/// `zkrender status`: fetch `/status` from a running agent and print it.
fn status(sources: &config::Sources, listen: Option<&str>, json: bool) -> Result<(), AgentError> {
    let listen = match listen {
        Some(l) => l.to_owned(),
        None => config::load_sources(sources)
            .ok()
            .and_then(|c| c.agent.listen)
            .unwrap_or_else(|| config::DEFAULT_LISTEN.to_owned()),
    };
    let report = runtime()?
        .block_on(zkrender::ops::fetch_status(&listen, std::time::Duration::from_secs(5)))
        .map_err(AgentError::Listen)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
    } else {
        print!("{}", zkrender::ops::render_table(&report, zkrender::ops::unix_now()));
    }
    Ok(())
}
