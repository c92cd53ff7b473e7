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
