//! The agent's top-level error, its exit codes, and the chain printer.

use std::error::Error as StdError;
use std::fmt::Write as _;

use crate::config::ConfigError;
use crate::render::RenderError;
use crate::source::SourceError;

pub use crate::model::report;

/// Exit code for a config or template error (`check`, and every command at start-up).
pub const EXIT_CONFIG: i32 = 2;
/// Exit code for any other failure (`once` with files not written, a fatal source error).
pub const EXIT_FAILURE: i32 = 1;
/// `diff`: some file would change.
pub const EXIT_DIFFERENT: i32 = 1;
/// `diff`: a file cannot be rendered, or ZooKeeper cannot be reached in time.
pub const EXIT_UNRENDERED: i32 = 3;

/// Everything that can stop a command.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{}", templates_message(.0))]
    Templates(Vec<RenderError>),
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("{count} of {total} files were not written:\n{details}")]
    NotAllWritten { count: usize, total: usize, details: String },
    /// `diff`: what kept a file from being rendered (exit 3).
    #[error(transparent)]
    Unrendered(Box<AgentError>),
    #[error(transparent)]
    Init(#[from] crate::init::InitError),
    /// Writing to stdout failed. A reader that stopped early (`| head`) is not an error:
    /// see [`AgentError::is_closed_stdout`].
    #[error("writing to stdout")]
    Stdout(#[source] std::io::Error),
    /// `render --dest` names no `[[file]]`: refused before connecting.
    #[error(
        "{}: --dest {} matches no [[file]] dest (they are: {})",
        .config.display(), .dest.display(), list_paths(.known)
    )]
    UnknownDest { config: std::path::PathBuf, dest: std::path::PathBuf, known: Vec<std::path::PathBuf> },
    /// `zkrender status` could not read `[agent] listen` from the config file.
    #[error("{}: reading [agent] listen for `zkrender status` (or pass --listen)", .config.display())]
    StatusConfig {
        config: std::path::PathBuf,
        #[source]
        source: Box<dyn StdError + Send + Sync>,
    },
    /// `zkrender status` against a config whose `listen = ""`.
    #[error(
        "the HTTP endpoint is disabled in {} ([agent] listen = \"\"); set listen to an address such as \"{}\" and reload zkrender, or pass --listen",
        .config.display(), crate::config::DEFAULT_LISTEN
    )]
    EndpointDisabled { config: std::path::PathBuf },
    #[error(transparent)]
    Listen(crate::ops::OpsError),
    #[error("running the child")]
    Child(#[source] std::io::Error),
    /// The async runtime could not be started (threads, epoll).
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
    /// `zkrender fleet`: reading the reports or the znodes they name failed.
    #[error("zkrender fleet: {0}")]
    Fleet(String),
    #[error("bug: a task panicked")]
    TaskPanicked(#[source] tokio::task::JoinError),
}

fn list_paths(paths: &[std::path::PathBuf]) -> String {
    if paths.is_empty() {
        return "none".to_owned();
    }
    paths.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
}

fn templates_message(errors: &[RenderError]) -> String {
    let mut s = String::new();
    for (i, e) in errors.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        let _ = write!(s, "{e}");
    }
    s
}

impl AgentError {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            AgentError::Config(_)
            | AgentError::Templates(_)
            | AgentError::UnknownDest { .. }
            | AgentError::StatusConfig { .. } => EXIT_CONFIG,
            AgentError::Unrendered(_) => EXIT_UNRENDERED,
            _ => EXIT_FAILURE,
        }
    }

    /// True when stdout's reader went away (`zkrender render | head`): the command ends
    /// quietly with exit 0 then, as other command-line tools do.
    pub fn is_closed_stdout(&self) -> bool {
        matches!(self, AgentError::Stdout(e) if e.kind() == std::io::ErrorKind::BrokenPipe)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("writing /x")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn only_a_broken_pipe_on_stdout_is_a_closed_stdout() {
        let closed = AgentError::Stdout(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(closed.is_closed_stdout());
        let full = AgentError::Stdout(std::io::Error::from(std::io::ErrorKind::StorageFull));
        assert!(!full.is_closed_stdout());
        let child = AgentError::Child(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(!child.is_closed_stdout());
    }

    #[test]
    fn report_joins_the_chain() {
        let e = Outer(std::io::Error::other("disk full"));
        assert_eq!(report(&e), "writing /x: disk full");
    }
}
