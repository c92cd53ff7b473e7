//! RawConfig -> Config (owned by the config helper).
use std::path::{Path, PathBuf};

use super::Config;

/// One problem found in the config, with where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: usize,
    pub column: usize,
    pub key: String,
    pub message: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is invalid: {problems:?}", .path.display())]
    Invalid { path: PathBuf, problems: Vec<Problem> },
}

pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse(path, &text)
}

pub fn parse(path: &Path, _text: &str) -> Result<Config, ConfigError> {
    Err(ConfigError::Invalid { path: path.to_owned(), problems: vec![] })
}
