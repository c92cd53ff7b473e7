//! `[agent]`: debounce (`wait`, `max_wait`), `resync`, the HTTP `listen` address and the
//! fleet report (`report`, `id`, `report_interval`).

use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::{At, Checker};
use crate::config::raw::RawAgent;
use crate::config::{
    AgentConfig, DEFAULT_LISTEN, DEFAULT_REPORT_INTERVAL, DEFAULT_RESYNC, ReportConfig, host_name,
};

impl Checker<'_> {
    pub(super) fn agent(&mut self, raw: &RawAgent) -> AgentConfig {
        let at = At { section: "[agent]", key_prefix: "" };
        let wait = self.duration(at, "wait", raw.wait.as_ref(), Duration::ZERO);
        let max_wait = match &raw.max_wait {
            None => wait.checked_mul(4).unwrap_or(Duration::MAX),
            Some(raw_max) => {
                let max_wait = self.duration(at, "max_wait", Some(raw_max), wait);
                if !wait.is_zero() && max_wait < wait {
                    let message = format!(
                        "max_wait ({}) must not be shorter than wait ({})",
                        humantime::format_duration(max_wait),
                        humantime::format_duration(wait)
                    );
                    self.problem(at, "max_wait", raw_max.span(), message);
                }
                max_wait
            }
        };
        let resync = self.duration(at, "resync", raw.resync.as_ref(), DEFAULT_RESYNC);
        let listen = match &raw.listen {
            None => Some(DEFAULT_LISTEN.to_owned()),
            Some(listen) => self.listen(at, listen),
        };
        let report = self.report(at, raw);
        AgentConfig { wait, max_wait, resync, listen, report }
    }

    /// `report`, `id`, `report_interval`: `None` unless `report` is set. `id` defaults to the
    /// host name and must be one znode name (it becomes `<report>/<id>`).
    fn report(&mut self, at: At<'_>, raw: &RawAgent) -> Option<ReportConfig> {
        let interval = self.positive_duration(
            at,
            "report_interval",
            raw.report_interval.as_ref(),
            DEFAULT_REPORT_INTERVAL,
        );
        let id = match &raw.id {
            Some(id) => match id_problem(id.get_ref()) {
                None => Some(id.get_ref().clone()),
                Some(why) => {
                    self.problem(at, "id", id.span(), format!("id {:?} {why}", id.get_ref()));
                    None
                }
            },
            None => None,
        };
        let raw_path = raw.report.as_ref()?;
        let path = self.znode_path(at, "report", raw_path)?;
        if path.as_str() == "/" {
            self.problem(at, "report", raw_path.span(), "report must not be the root znode \"/\"");
            return None;
        }
        let id = match (id, &raw.id) {
            (Some(id), _) => id,
            (None, Some(_)) => return None,
            (None, None) => match host_name() {
                Ok(name) if id_problem(&name).is_none() => name,
                Ok(name) => {
                    let message = format!("the host name {name:?} cannot be the report's id; set `id`");
                    self.problem(at, "report", raw_path.span(), message);
                    return None;
                }
                Err(e) => {
                    let message = format!("the host name cannot be read ({e}); set `id`");
                    self.problem(at, "report", raw_path.span(), message);
                    return None;
                }
            },
        };
        Some(ReportConfig { path, id, interval })
    }

    /// `listen`: `""` disables the endpoint; anything else must be an `ip:port` socket
    /// address (no host names: the endpoint binds exactly what is written).
    fn listen(&mut self, at: At<'_>, raw: &Spanned<String>) -> Option<String> {
        let text = raw.get_ref();
        if text.is_empty() {
            return None;
        }
        match text.trim().parse::<SocketAddr>() {
            Ok(_) => Some(text.trim().to_owned()),
            Err(_) => {
                let message = format!(
                    "listen {text:?} is not an address such as \"127.0.0.1:9102\" or \"[::1]:9102\" \
                     (use \"\" to disable)"
                );
                self.problem(at, "listen", raw.span(), message);
                None
            }
        }
    }
}

/// Why `id` cannot name a report znode, if it cannot: it must be one znode name.
fn id_problem(id: &str) -> Option<&'static str> {
    if id.is_empty() {
        Some("must not be empty")
    } else if id == "." || id == ".." {
        Some("must not be \".\" or \"..\"")
    } else if id.contains('/') {
        Some("must not contain \"/\" (it is one znode name under `report`)")
    } else if id.chars().any(char::is_control) {
        Some("must not contain control characters")
    } else if id.len() > 255 {
        Some("must be at most 255 bytes long")
    } else {
        None
    }
}
