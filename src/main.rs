//! `zkrender`: parse the command line, set up logging, run the command, map errors to exit codes.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;
use zkrender::cli::{Cli, CommandKind, LogFormat};
use zkrender::error::{AgentError, report};
use zkrender::{config, runtime};

fn main() -> ExitCode {
    // Both ring (reqwest) and aws-lc-rs (zookeeper-client asks for rustls' defaults) are
    // compiled in, so rustls cannot choose a provider by itself: name ring for the process.
    // An Err only says a provider is already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();
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
            return clap_mangen::Man::new(Cli::command())
                .render(&mut std::io::stdout())
                .map_err(AgentError::Stdout);
        }
        _ => {}
    }
    if let CommandKind::Status { listen, json } = &cli.command {
        return status(&cli.config, listen.as_deref(), *json);
    }
    if let CommandKind::Exec { timeout, command } = cli.command {
        let config = config::load(&cli.config)?;
        let code = runtime()?.block_on(runtime::exec(config, command, timeout))?;
        std::process::exit(code);
    }
    let config = config::load(&cli.config)?;
    if let CommandKind::Check { exec } = cli.command {
        if !exec {
            config.refuse_exec_only()?;
        }
        runtime::compile(&config)?;
        let n = config.files.len();
        eprintln!("{}: ok ({n} file{})", config.path.display(), if n == 1 { "" } else { "s" });
        return Ok(());
    }
    runtime()?.block_on(async move {
        let shutdown = CancellationToken::new();
        runtime::spawn_signal_handler(shutdown.clone());
        match cli.command {
            CommandKind::Run => runtime::run(config, shutdown).await,
            CommandKind::Once { timeout } => runtime::once(config, timeout, shutdown).await,
            CommandKind::Render { dest, timeout } => runtime::render(config, dest, timeout, shutdown).await,
            CommandKind::Check { .. }
            | CommandKind::Exec { .. }
            | CommandKind::Status { .. }
            | CommandKind::Completions { .. }
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
fn status(config_path: &std::path::Path, listen: Option<&str>, json: bool) -> Result<(), AgentError> {
    let listen = match listen {
        Some(l) => l.to_owned(),
        None => config::load(config_path)
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
