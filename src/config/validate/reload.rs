//! `[file.reload]`: exactly one kind (`signal`, `http`, `command` or `restart = true`), its
//! target or options, and `retries`, `timeout` and `splay`.

use std::ops::Range;
use std::str::FromStr;
use std::time::Duration;

use nix::sys::signal::Signal;
use toml::Spanned;

use super::{At, Checker, DEFAULT_HTTP_METHOD, DEFAULT_RELOAD_RETRIES, DEFAULT_RELOAD_TIMEOUT, HTTP_METHODS};
use crate::config::raw::RawReload;
use crate::config::{COMM_NAME_MAX, ReloadAction, ReloadSpec, SignalTarget};

impl Checker<'_> {
    pub(super) fn reload(&mut self, at: At<'_>, spanned: &Spanned<RawReload>) -> Option<ReloadSpec> {
        let at = At { section: at.section, key_prefix: "reload." };
        let raw = spanned.get_ref();
        let retries = match &raw.retries {
            None => DEFAULT_RELOAD_RETRIES,
            Some(retries) => u32::try_from(*retries.get_ref()).unwrap_or_else(|_| {
                let message = format!("retries must be between 0 and {}", u32::MAX);
                self.problem(at, "retries", retries.span(), message);
                DEFAULT_RELOAD_RETRIES
            }),
        };
        let timeout = self.positive_duration(at, "timeout", raw.timeout.as_ref(), DEFAULT_RELOAD_TIMEOUT);
        let splay = self.duration(at, "splay", raw.splay.as_ref(), Duration::ZERO);

        // `restart = false` is the same as leaving it out.
        let restart = raw.restart.as_ref().filter(|restart| *restart.get_ref());
        let kinds: Vec<(&str, Range<usize>)> = [
            ("signal", raw.signal.as_ref().map(Spanned::span)),
            ("http", raw.http.as_ref().map(Spanned::span)),
            ("command", raw.command.as_ref().map(Spanned::span)),
            ("restart", restart.map(Spanned::span)),
        ]
        .into_iter()
        .filter_map(|(key, span)| span.map(|span| (key, span)))
        .collect();
        match kinds.as_slice() {
            [] => {
                self.problem(
                    at,
                    "",
                    spanned.span(),
                    "needs one of `signal`, `http`, `command` or `restart = true`",
                );
                return None;
            }
            [_] => {}
            [(first, _), rest @ ..] => {
                for (key, span) in rest {
                    let message = format!("`{first}` and `{key}` are mutually exclusive; give exactly one");
                    self.problem(at, key, span.clone(), message);
                }
                return None;
            }
        }
        self.only_with(
            at,
            "signal",
            raw.signal.is_some(),
            &[
                ("pid_file", raw.pid_file.as_ref().map(Spanned::span)),
                ("pid", raw.pid.as_ref().map(Spanned::span)),
                ("process", raw.process.as_ref().map(Spanned::span)),
            ],
        );
        self.only_with(at, "http", raw.http.is_some(), &[("method", raw.method.as_ref().map(Spanned::span))]);

        let action = if let Some(signal) = &raw.signal {
            self.signal(at, signal, raw)?
        } else if let Some(url) = &raw.http {
            self.http(at, url, raw.method.as_ref())?
        } else if let Some(command) = &raw.command {
            ReloadAction::Command { argv: self.argv(at, "command", command)?.to_vec() }
        } else if let Some(restart) = restart {
            self.exec_only(
                at,
                "restart",
                restart.span(),
                "`restart = true` restarts the child of `zkrender exec`",
            );
            ReloadAction::Restart
        } else {
            panic!("bug: reload kind checked above");
        };
        Some(ReloadSpec { action, retries, timeout, splay })
    }

    /// Reports each of `keys` that is set although `owner` is not.
    fn only_with(&mut self, at: At<'_>, owner: &str, owner_set: bool, keys: &[(&str, Option<Range<usize>>)]) {
        if owner_set {
            return;
        }
        for (key, span) in keys {
            if let Some(span) = span {
                self.problem(at, key, span.clone(), format!("`{key}` only applies with `{owner}`"));
            }
        }
    }

    fn signal(&mut self, at: At<'_>, signal: &Spanned<String>, raw: &RawReload) -> Option<ReloadAction> {
        let parsed = parse_signal(signal.get_ref())
            .map_err(|message| self.problem(at, "signal", signal.span(), message));

        let mut targets = Vec::new();
        if let Some(pid_file) = &raw.pid_file {
            let target = if pid_file.get_ref().is_empty() {
                self.problem(at, "pid_file", pid_file.span(), "pid_file is empty");
                None
            } else {
                Some(SignalTarget::PidFile(self.resolve(pid_file.get_ref())))
            };
            targets.push(("pid_file", pid_file.span(), target));
        }
        if let Some(pid) = &raw.pid {
            let target = match i32::try_from(*pid.get_ref()) {
                Ok(n) if n > 0 => Some(SignalTarget::Pid(n)),
                _ => {
                    self.problem(
                        at,
                        "pid",
                        pid.span(),
                        format!("pid {} is not a valid process id", pid.get_ref()),
                    );
                    None
                }
            };
            targets.push(("pid", pid.span(), target));
        }
        if let Some(process) = &raw.process {
            let target = match check_process_name(process.get_ref()) {
                Ok(()) => Some(SignalTarget::Process(process.get_ref().clone())),
                Err(message) => {
                    self.problem(at, "process", process.span(), message);
                    None
                }
            };
            targets.push(("process", process.span(), target));
        }
        let target = match targets.as_slice() {
            // No target: the child of `zkrender exec`.
            [] => {
                let what =
                    "a `signal` without `pid`, `pid_file` or `process` goes to the child of `zkrender exec`";
                self.exec_only(at, "signal", signal.span(), what);
                SignalTarget::Child
            }
            [(_, _, target)] => target.clone()?,
            [(first, _, _), rest @ ..] => {
                for (key, span, _) in rest {
                    let message = format!("`{first}` and `{key}` are mutually exclusive; give exactly one");
                    self.problem(at, key, span.clone(), message);
                }
                return None;
            }
        };
        Some(ReloadAction::Signal { signal: parsed.ok()?, target })
    }

    fn http(
        &mut self,
        at: At<'_>,
        url: &Spanned<String>,
        method: Option<&Spanned<String>>,
    ) -> Option<ReloadAction> {
        let method = match method {
            None => Some(DEFAULT_HTTP_METHOD.to_owned()),
            Some(raw) => {
                let upper = raw.get_ref().trim().to_ascii_uppercase();
                if HTTP_METHODS.contains(&upper.as_str()) {
                    Some(upper)
                } else {
                    let message =
                        format!("method {:?} is not one of {}", raw.get_ref(), HTTP_METHODS.join(", "));
                    self.problem(at, "method", raw.span(), message);
                    None
                }
            }
        };
        let text = url.get_ref().trim();
        let rest = text.strip_prefix("http://").or_else(|| text.strip_prefix("https://"));
        if rest.is_none_or(str::is_empty) {
            let message =
                format!("url {:?} must start with http:// or https:// and name a host", url.get_ref());
            self.problem(at, "http", url.span(), message);
            return None;
        }
        Some(ReloadAction::Http { url: text.to_owned(), method: method? })
    }
}

/// Parses a signal name: any case, with or without `SIG` (`hup`, `SIGHUP`, `Usr1`).
fn parse_signal(text: &str) -> Result<Signal, String> {
    let upper = text.trim().to_ascii_uppercase();
    let name = if upper.starts_with("SIG") { upper } else { format!("SIG{upper}") };
    Signal::from_str(&name)
        .map_err(|_| format!("unknown signal {text:?}; use a name such as \"HUP\", \"USR1\" or \"TERM\""))
}

/// A `process` name must be able to equal some `/proc/PID/comm`.
fn check_process_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("process name is empty".to_owned())
    } else if name.contains('/') {
        Err(format!("process {name:?} must be a process name (as in /proc/PID/comm), not a path"))
    } else if name.len() > COMM_NAME_MAX {
        Err(format!(
            "process {name:?} is longer than {COMM_NAME_MAX} bytes, the most /proc/PID/comm holds; \
             use its first {COMM_NAME_MAX}"
        ))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_names_take_any_case_with_or_without_sig() {
        for name in ["HUP", "sighup", "SigHup", " hup "] {
            assert_eq!(parse_signal(name), Ok(Signal::SIGHUP), "{name}");
        }
        assert_eq!(parse_signal("usr2"), Ok(Signal::SIGUSR2));
        assert!(parse_signal("1").is_err());
    }
}
