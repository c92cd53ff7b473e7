//! `[zookeeper]`: hosts and chroot, session timeout, watch mode, `auth` and `tls`.

use toml::Spanned;

use super::{AUTH_SCHEME, At, Checker, DEFAULT_SESSION_TIMEOUT};
use crate::config::raw::{RawAuth, RawHosts, RawTls, RawWatchMode, RawZookeeper};
use crate::config::{WatchMode, ZkAuth, ZkConfig, ZkTls};
use crate::model::ZnodePath;

impl Checker<'_> {
    pub(super) fn zookeeper(&mut self, raw: &RawZookeeper) -> ZkConfig {
        let at = At { section: "[zookeeper]", key_prefix: "" };
        let (hosts, suffix) = self.hosts(at, &raw.hosts);
        let chroot = match (&raw.chroot, suffix) {
            (Some(chroot), Some(suffix)) => {
                let message =
                    format!("chroot is set both here and as the suffix {suffix:?} of `hosts`; keep one");
                self.problem(at, "chroot", chroot.span(), message);
                None
            }
            (Some(chroot), None) => self.znode_path(at, "chroot", chroot),
            (None, Some(suffix)) => match ZnodePath::parse(&suffix) {
                Ok(path) => Some(path),
                Err(err) => {
                    self.problem(at, "hosts", raw.hosts.span(), format!("chroot suffix: {err}"));
                    None
                }
            },
            (None, None) => None,
        };
        let session_timeout =
            self.duration(at, "session_timeout", raw.session_timeout.as_ref(), DEFAULT_SESSION_TIMEOUT);
        if let Some(raw_timeout) = &raw.session_timeout
            && session_timeout.is_zero()
        {
            self.problem(
                at,
                "session_timeout",
                raw_timeout.span(),
                "session_timeout must be greater than zero",
            );
        }
        let watch = match raw.watch.as_ref().map(|w| *w.get_ref()) {
            None | Some(RawWatchMode::Oneshot) => WatchMode::Oneshot,
            Some(RawWatchMode::Persistent) => WatchMode::Persistent,
        };
        let auth = raw.auth.as_ref().and_then(|auth| self.auth(auth.get_ref()));
        let tls = raw.tls.as_ref().and_then(|tls| self.tls(tls.get_ref()));
        ZkConfig { hosts, chroot, session_timeout, watch, auth, tls }
    }

    /// `auth`: the credentials file must be readable now, but its secret is only read at
    /// connect time, so it is neither kept nor shown here.
    fn auth(&mut self, raw: &RawAuth) -> Option<ZkAuth> {
        let at = At { section: "[zookeeper]", key_prefix: "auth." };
        let scheme = raw.scheme.get_ref();
        let scheme_ok = scheme == AUTH_SCHEME;
        if !scheme_ok {
            let message = format!("scheme {scheme:?} is not supported; the only scheme is {AUTH_SCHEME:?}");
            self.problem(at, "scheme", raw.scheme.span(), message);
        }
        let credentials_file = self.readable_file(at, "credentials_file", &raw.credentials_file);
        Some(ZkAuth { scheme: scheme_ok.then(|| scheme.clone())?, credentials_file: credentials_file? })
    }

    /// `tls`: every file named must be readable now; `cert` and `key` come together.
    fn tls(&mut self, raw: &RawTls) -> Option<ZkTls> {
        let at = At { section: "[zookeeper]", key_prefix: "tls." };
        let ca = self.readable_file(at, "ca", &raw.ca);
        let cert = raw.cert.as_ref().map(|cert| self.readable_file(at, "cert", cert));
        let key = raw.key.as_ref().map(|key| self.readable_file(at, "key", key));
        match (&raw.cert, &raw.key) {
            (Some(cert), None) => {
                self.problem(at, "cert", cert.span(), "`cert` needs `key` (the client certificate's key)");
                return None;
            }
            (None, Some(key)) => {
                self.problem(at, "key", key.span(), "`key` needs `cert` (the client certificate)");
                return None;
            }
            _ => {}
        }
        // Outer None: not given; inner None: given but with a problem, already reported.
        Some(ZkTls {
            ca: ca?,
            cert: cert.map_or(Some(None), |cert| cert.map(Some))?,
            key: key.map_or(Some(None), |key| key.map(Some))?,
        })
    }

    /// The `host:port` entries, and the chroot suffix of a connect string if any.
    fn hosts(&mut self, at: At<'_>, raw: &Spanned<RawHosts>) -> (Vec<String>, Option<String>) {
        let mut hosts = Vec::new();
        let mut suffix = None;
        let before = self.problems.len();
        match raw.get_ref() {
            RawHosts::ConnectString(s) => {
                let (list, chroot) = match s.find('/') {
                    Some(slash) => (&s[..slash], Some(s[slash..].to_owned())),
                    None => (s.as_str(), None),
                };
                suffix = chroot;
                if !list.trim().is_empty() {
                    for entry in list.split(',').map(str::trim) {
                        match check_host_port(entry) {
                            Ok(()) => hosts.push(entry.to_owned()),
                            Err(message) => self.problem(at, "hosts", raw.span(), message),
                        }
                    }
                }
            }
            RawHosts::List(list) => {
                for entry in list {
                    let host = entry.get_ref().trim();
                    let checked = if host.contains('/') {
                        Err(format!("host {host:?}: array entries may not carry a chroot; set `chroot`"))
                    } else {
                        check_host_port(host)
                    };
                    match checked {
                        Ok(()) => hosts.push(host.to_owned()),
                        Err(message) => self.problem(at, "hosts", entry.span(), message),
                    }
                }
            }
        }
        if hosts.is_empty() && self.problems.len() == before {
            self.problem(at, "hosts", raw.span(), "no ZooKeeper hosts given");
        }
        (hosts, suffix)
    }
}

/// Checks one `host:port` entry (`[v6]:port` too); the message names the entry.
fn check_host_port(entry: &str) -> Result<(), String> {
    let Some((host, port)) = entry.rsplit_once(':') else {
        return Err(format!("host {entry:?} must be host:port"));
    };
    let bracketed = host.starts_with('[') || host.ends_with(']');
    if host.is_empty()
        || host.contains(char::is_whitespace)
        || (bracketed && !(host.starts_with('[') && host.ends_with(']') && host.len() > 2))
        || (!bracketed && host.contains(':'))
    {
        return Err(format!("host {entry:?} must be host:port (IPv6 addresses as [addr]:port)"));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok(()),
        _ => Err(format!("host {entry:?}: port {port:?} is not a number between 1 and 65535")),
    }
}
