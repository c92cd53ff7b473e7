//! Reloads (owned by the notify helper).
use crate::config::ReloadSpec;

#[derive(Debug, thiserror::Error)]
pub enum NotifyError {
    #[error("not implemented")]
    Todo,
}

pub async fn reload(_spec: &ReloadSpec) -> Result<(), NotifyError> {
    Err(NotifyError::Todo)
}

impl std::fmt::Display for crate::config::ReloadAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}
