//! Serde mirror of `zkrender.toml`.
//!
//! Every table denies unknown keys, so a typo is an error rather than an ignored setting.
//! Values that [`validate`](super::validate) checks are kept as [`Spanned`] so that a
//! problem can name the line and column it comes from. Only the shape of the document is
//! checked here: whether a duration parses, a path is absolute or a user exists is left to
//! validation, which reports every problem at once instead of stopping at the first.

use std::fmt;

use serde::Deserialize;
use serde::de::{self, Deserializer, SeqAccess, Visitor};
use toml::Spanned;

/// The whole document.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    /// `[zookeeper]`: required in exactly one document of a configuration set (or replaced
    /// by `--zookeeper`), so optional in each.
    #[serde(default)]
    pub zookeeper: Option<RawZookeeper>,
    /// `[agent]` (optional).
    #[serde(default)]
    pub agent: Option<RawAgent>,
    /// `[[file]]`, in config order.
    #[serde(default, rename = "file")]
    pub files: Vec<Spanned<RawFile>>,
}

/// `[zookeeper]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawZookeeper {
    /// A connect string (`h1:p1,h2:p2[/chroot]`) or an array of `host:port`.
    pub hosts: Spanned<RawHosts>,
    pub chroot: Option<Spanned<String>>,
    /// Humantime duration.
    pub session_timeout: Option<Spanned<String>>,
    pub watch: Option<Spanned<RawWatchMode>>,
    /// `auth = { scheme = "digest", credentials_file = "..." }`
    pub auth: Option<Spanned<RawAuth>>,
    /// `tls = { ca = "...", cert = "...", key = "..." }`
    pub tls: Option<Spanned<RawTls>>,
}

/// `[zookeeper] auth`: both keys required. Only the file's name is here, never the secret.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAuth {
    pub scheme: Spanned<String>,
    /// Relative paths resolve against the config file's directory.
    pub credentials_file: Spanned<String>,
}

/// `[zookeeper] tls`: PEM files; relative paths resolve against the config file's directory.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTls {
    pub ca: Spanned<String>,
    /// With `key`, or neither (checked in validation).
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
}

/// `[zookeeper] hosts`: either form as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawHosts {
    /// `hosts = "h1:p1,h2:p2/chroot"`
    ConnectString(String),
    /// `hosts = ["h1:p1", "h2:p2"]`, each entry with its own span.
    List(Vec<Spanned<String>>),
}

impl<'de> Deserialize<'de> for RawHosts {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct HostsVisitor;

        impl<'de> Visitor<'de> for HostsVisitor {
            type Value = RawHosts;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a connect string or an array of \"host:port\" strings")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawHosts, E> {
                Ok(RawHosts::ConnectString(v.to_owned()))
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RawHosts, A::Error> {
                let mut hosts = Vec::new();
                while let Some(host) = seq.next_element::<Spanned<String>>()? {
                    hosts.push(host);
                }
                Ok(RawHosts::List(hosts))
            }
        }

        deserializer.deserialize_any(HostsVisitor)
    }
}

/// `[zookeeper] watch`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawWatchMode {
    Oneshot,
    Persistent,
}

/// `[agent]`; durations are humantime strings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAgent {
    pub wait: Option<Spanned<String>>,
    pub max_wait: Option<Spanned<String>>,
    pub resync: Option<Spanned<String>>,
    /// A socket address, or `""` to disable the HTTP endpoint.
    pub listen: Option<Spanned<String>>,
    /// Fleet report: the znode under which this agent keeps its ephemeral report.
    pub report: Option<Spanned<String>>,
    /// The report's name under `report` (default: the host name).
    pub id: Option<Spanned<String>>,
    /// Humantime; the report is written at most this often.
    pub report_interval: Option<Spanned<String>>,
}

/// One `[[file]]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawFile {
    /// Destination; relative paths resolve against the config file's directory.
    pub dest: Spanned<String>,
    /// Raw mapping: an absolute znode path.
    pub znode: Option<Spanned<String>>,
    /// Template file; relative paths resolve against the config file's directory.
    pub template: Option<Spanned<String>>,
    /// Template text given in the config itself.
    pub inline: Option<Spanned<String>>,
    /// Whole subtree: an absolute znode path whose descendants are written in `format`.
    pub tree: Option<Spanned<String>>,
    /// With `tree`: `json`, `yaml`, `toml`, `properties` or `env` (parsed in validation).
    pub format: Option<Spanned<String>>,
    /// Absolute znode path that relative paths in the template resolve under.
    pub prefix: Option<Spanned<String>>,
    /// Octal permission bits, as a string (`"0644"`).
    pub mode: Option<Spanned<String>>,
    pub owner: Option<Spanned<RawId>>,
    pub group: Option<Spanned<RawId>>,
    pub on_delete: Option<Spanned<RawOnDelete>>,
    /// argv run on the staged file; `{file}` is replaced by its path.
    pub check: Option<Spanned<Vec<String>>>,
    pub check_timeout: Option<Spanned<String>>,
    pub backup: Option<bool>,
    pub install: Option<Spanned<RawInstallMode>>,
    pub allow_empty: Option<bool>,
    pub rollback: Option<Spanned<bool>>,
    /// Environment variable names, each with its own span.
    pub allow_env: Option<Spanned<Vec<Spanned<String>>>>,
    pub reload: Option<Spanned<RawReload>>,
}

/// `owner` / `group`: a name, or a numeric id as a string or a TOML integer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RawId {
    Name(String),
    /// A TOML integer, not yet range-checked.
    Number(i64),
}

impl<'de> Deserialize<'de> for RawId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct IdVisitor;

        impl Visitor<'_> for IdVisitor {
            type Value = RawId;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a name or a numeric id")
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<RawId, E> {
                Ok(RawId::Name(v.to_owned()))
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawId, E> {
                Ok(RawId::Number(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawId, E> {
                i64::try_from(v)
                    .map(RawId::Number)
                    .map_err(|_| E::invalid_value(de::Unexpected::Unsigned(v), &self))
            }
        }

        deserializer.deserialize_any(IdVisitor)
    }
}

/// `on_delete`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RawOnDelete {
    Keep,
    Remove,
}

/// `install`
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RawInstallMode {
    Atomic,
    InPlace,
}

/// `[file.reload]`: exactly one of `signal`, `http`, `command` or `restart = true`, checked in
/// validation.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawReload {
    /// Signal name, with or without `SIG`, any case.
    pub signal: Option<Spanned<String>>,
    pub pid_file: Option<Spanned<String>>,
    pub pid: Option<Spanned<i64>>,
    pub process: Option<Spanned<String>>,
    /// URL of an HTTP reload hook.
    pub http: Option<Spanned<String>>,
    pub method: Option<Spanned<String>>,
    /// argv, run without a shell.
    pub command: Option<Spanned<Vec<String>>>,
    /// Restart the child of `zkrender exec`; `false` is the same as absent.
    pub restart: Option<Spanned<bool>>,
    pub retries: Option<Spanned<i64>>,
    pub timeout: Option<Spanned<String>>,
    /// Humantime; a random delay of up to this before each reload.
    pub splay: Option<Spanned<String>>,
}
