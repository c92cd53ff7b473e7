//! Atomic file install (owned by the sink helper).
use crate::config::FileSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteOutcome {
    Unchanged,
    Written,
}

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("writing {}: not implemented", .dest.display())]
    Todo { dest: std::path::PathBuf },
}

pub fn install(spec: &FileSpec, _contents: &[u8]) -> Result<WriteOutcome, WriteError> {
    Err(WriteError::Todo { dest: spec.dest.clone() })
}

pub fn remove(spec: &FileSpec) -> Result<bool, WriteError> {
    Err(WriteError::Todo { dest: spec.dest.clone() })
}

impl WriteError {
    pub fn kind(&self) -> &'static str {
        "io"
    }
}
