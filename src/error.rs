//! The agent's top-level error, its exit codes, and the chain printer.

use std::error::Error as StdError;
use std::fmt::Write as _;

use crate::config::ConfigError;
use crate::render::RenderError;
use crate::source::SourceError;

/// Exit code for a config or template error (`check`, and every command at start-up).
pub const EXIT_CONFIG: i32 = 2;
/// Exit code for any other failure (`once` with files not written, a fatal source error).
pub const EXIT_FAILURE: i32 = 1;

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
    #[error("writing rendered output to stdout")]
    Stdout(#[source] std::io::Error),
    #[error(transparent)]
    Listen(crate::ops::OpsError),
    #[error("running the child")]
    Child(#[source] std::io::Error),
    /// The async runtime could not be started (threads, epoll).
    #[error("starting the async runtime")]
    Runtime(#[source] std::io::Error),
    #[error("bug: a task panicked")]
    TaskPanicked(#[source] tokio::task::JoinError),
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
            AgentError::Config(_) | AgentError::Templates(_) => EXIT_CONFIG,
            _ => EXIT_FAILURE,
        }
    }
}

/// `err` and its causes, one `: `-joined line (causes already in the message are skipped).
pub fn report(err: &dyn StdError) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !out.contains(&text) {
            let _ = write!(out, ": {text}");
        }
        source = cause.source();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("writing /x")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn report_joins_the_chain() {
        let e = Outer(std::io::Error::other("disk full"));
        assert_eq!(report(&e), "writing /x: disk full");
    }
}
