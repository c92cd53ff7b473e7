//! `[agent]`: debounce (`wait`, `max_wait`), `resync` and the HTTP `listen` address.

use std::net::SocketAddr;
use std::time::Duration;

use toml::Spanned;

use super::{At, Checker};
use crate::config::raw::RawAgent;
use crate::config::{AgentConfig, DEFAULT_LISTEN, DEFAULT_RESYNC};

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
        AgentConfig { wait, max_wait, resync, listen }
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
