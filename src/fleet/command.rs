//! `zkrender fleet`: reads every agent's report and the znodes they name
//! (`source::report::Reader`), and shows who applied what ([`super::view`]).

use std::time::Duration;

use tokio::time::Instant;

use super::view::{self, Fleet};
use crate::config::ZkConfig;
use crate::error::AgentError;
use crate::model::ZnodePath;
use crate::source::report::Reader;

/// Default report path for `zkrender fleet` without `--report` or `[agent] report`.
pub const DEFAULT_REPORT: &str = "/zkrender/agents";

/// Between two reads under `--wait`.
const POLL: Duration = Duration::from_millis(250);

/// How long connecting may take without `--wait`.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Reads the fleet once, or with `wait` until every agent is current or `wait` has passed;
/// returns the last view.
///
/// # Errors
/// No ZooKeeper session within the time allowed; a read that fails (no permission, ...).
pub async fn run(
    zk: &ZkConfig,
    report: &ZnodePath,
    only: &[String],
    wait: Option<Duration>,
) -> Result<Fleet, AgentError> {
    let deadline = Instant::now() + wait.unwrap_or_default();
    let reader = Reader::connect(zk, wait.unwrap_or_default().max(CONNECT_TIMEOUT)).await?;
    loop {
        let read = reader.read(report).await.map_err(AgentError::Fleet)?;
        let fleet = view::view(&read, only);
        if fleet.current || Instant::now() + POLL > deadline {
            return Ok(fleet);
        }
        tokio::time::sleep(POLL).await;
    }
}
