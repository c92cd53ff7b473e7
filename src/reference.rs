//! The reference documentation, in one place: every configuration section and key (default
//! and meaning), the template functions, the exit codes and the signals.
//!
//! `zkrender man` renders it as roff ([`man_page`]); README.md carries the same tables as
//! Markdown ([`Table::markdown`]), and `tests/docs.rs` checks them row for row, and checks
//! that every key the config parser accepts and every function `render` registers has a row
//! here, so code, man page and README cannot drift apart.
//!
//! Text is Markdown-flavoured: `code` in backticks (bold in the man page). A `|` in a cell is
//! escaped in the Markdown rendering.

use std::io::{self, Write};

use roff::{Roff, bold, roman};

/// One reference table: a README heading, a man page subsection, and its rows.
#[derive(Debug, Clone, Copy)]
pub struct Table {
    /// The README heading text (without `#`s) the table sits under, and the man page
    /// subsection title (backticks removed).
    pub heading: &'static str,
    /// Which table under that heading (0 for the first).
    pub index: usize,
    /// The column titles.
    pub columns: &'static [&'static str],
    /// The rows; each has one cell per column.
    pub rows: &'static [&'static [&'static str]],
    /// Prose the man page prints after the table (the README has its own).
    pub notes: &'static str,
}

impl Table {
    /// The table as GitHub Markdown, header and separator included, one line per row.
    pub fn markdown(&self) -> String {
        let mut out = markdown_row(self.columns);
        out.push_str(&format!("|{}\n", "---|".repeat(self.columns.len())));
        for row in self.rows {
            out.push_str(&markdown_row(row));
        }
        out
    }
}

fn markdown_row(cells: &[&str]) -> String {
    let mut out = String::from("|");
    for cell in cells {
        if cell.is_empty() {
            out.push_str(" |");
        } else {
            out.push_str(&format!(" {} |", cell.replace('|', "\\|")));
        }
    }
    out.push('\n');
    out
}

/// The configuration reference, one table per TOML table.
pub const CONFIG: &[Table] = &[ZOOKEEPER, ZOOKEEPER_AUTH, ZOOKEEPER_TLS, AGENT, FILE, FILE_RELOAD];

const KEY_COLUMNS: &[&str] = &["key", "default", "meaning"];

/// `[zookeeper]`
pub const ZOOKEEPER: Table = Table {
    heading: "`[zookeeper]`",
    index: 0,
    columns: KEY_COLUMNS,
    rows: &[
        &[
            "`hosts`",
            "required",
            "a connect string `\"h1:2181,h2:2181\"` (an optional `/chroot` suffix is accepted), or an array `[\"h1:2181\", \"h2:2181\"]`",
        ],
        &["`chroot`", "none", "every znode path in the config and the templates is under it"],
        &[
            "`session_timeout`",
            "`\"10s\"`",
            "the ZooKeeper session timeout asked for (the server may clamp it)",
        ],
        &[
            "`watch`",
            "`\"oneshot\"`",
            "`oneshot`: every read re-arms a one-shot watch. `persistent`: ZooKeeper 3.6+ `addWatch` on each dependency",
        ],
        &["`auth`", "none", "digest authentication: the `[zookeeper.auth]` table below"],
        &["`tls`", "none", "TLS to every server: the `[zookeeper.tls]` table below"],
    ],
    notes: "",
};

/// `[zookeeper.auth]` (usually written inline: `auth = { ... }`).
pub const ZOOKEEPER_AUTH: Table = Table {
    heading: "`[zookeeper.auth]`",
    index: 0,
    columns: KEY_COLUMNS,
    rows: &[
        &["`scheme`", "required", "`digest` (the only scheme)"],
        &[
            "`credentials_file`",
            "required",
            "a file holding `user:password`, read at each connect (never logged)",
        ],
    ],
    notes: "Usually written inline: auth = { scheme = \"digest\", credentials_file = \"zk.digest\" }.",
};

/// `[zookeeper.tls]` (usually written inline: `tls = { ... }`).
pub const ZOOKEEPER_TLS: Table = Table {
    heading: "`[zookeeper.tls]`",
    index: 0,
    columns: KEY_COLUMNS,
    rows: &[
        &[
            "`ca`",
            "required",
            "PEM file of the certificate authorities that signed the servers' certificates",
        ],
        &["`cert`", "none", "PEM client certificate, for servers that require one (with `key`)"],
        &["`key`", "none", "PEM private key of `cert`"],
    ],
    notes: "Usually written inline: tls = { ca = \"ca.pem\", cert = \"client.pem\", key = \"client.key\" }. \
            Relative paths resolve against the config file's directory.",
};

/// `[agent]`
pub const AGENT: Table = Table {
    heading: "`[agent]`",
    index: 0,
    columns: KEY_COLUMNS,
    rows: &[
        &["`wait`", "`\"0ms\"`", "quiescence: render once no change has arrived for `wait`"],
        &[
            "`max_wait`",
            "4 × `wait`",
            "... but never later than `max_wait` after the first change of a cycle",
        ],
        &[
            "`resync`",
            "`\"10m\"`",
            "anti-entropy: re-read every dependency at this period (plus up to 10% jitter) and repair any file that drifted; `\"0s\"` disables",
        ],
        &[
            "`listen`",
            "`\"127.0.0.1:9102\"`",
            "address of the HTTP endpoint (`/healthz`, `/readyz`, `/metrics`, `/status`); `\"\"` disables it",
        ],
        &[
            "`report`",
            "none (off)",
            "fleet report: keep one ephemeral znode `<report>/<id>` saying what this agent applied (per file: sha256, the mzxid of each znode read, state, last reload; never contents); created with its parents; read by `zkrender fleet`",
        ],
        &[
            "`id`",
            "the host name",
            "this agent's name under `report`; one znode name. Taken by a live agent: `run` fails at start naming the holder",
        ],
        &[
            "`report_interval`",
            "`\"1s\"`",
            "the report is written after a change is installed and reloaded, at most once per `report_interval`",
        ],
    ],
    notes: "",
};

/// `[[file]]`
pub const FILE: Table = Table {
    heading: "`[[file]]`",
    index: 0,
    columns: KEY_COLUMNS,
    rows: &[
        &[
            "`dest`",
            "required",
            "the file to write; relative paths resolve against the config file's directory",
        ],
        &["`znode`", "", "a raw mapping: the znode's bytes, unchanged (binary-safe)"],
        &["`template`", "", "a template file, relative to the config file's directory"],
        &["`inline`", "", "the template text itself"],
        &[
            "`tree`",
            "",
            "a whole subtree without a template: every descendant of this znode that holds data, written in `format` (see [Subtrees as files](#subtrees-as-files))",
        ],
        &["`format`", "required with `tree`", "`json`, `yaml`, `toml`, `properties` or `env`"],
        &["`prefix`", "none", "relative znode paths in the template resolve under it"],
        &[
            "`mode`",
            "`\"0644\"`",
            "octal permission bits, applied to the temp file before the first byte is written",
        ],
        &["`owner`, `group`", "unchanged", "user and group, names or numeric ids, applied before the rename"],
        &[
            "`on_delete`",
            "`\"keep\"`",
            "raw mappings and trees: `keep` the file, or `remove` it (and reload) when the znode (the tree's root) is deleted",
        ],
        &[
            "`check`",
            "none",
            "argv run on the staged file before install; `{file}` is replaced by its path anywhere in an argument. Non-zero exit: the old file stays",
        ],
        &["`check_timeout`", "`\"30s\"`", "a `check` running longer is killed and counts as failed"],
        &["`backup`", "`false`", "keep the previous version as `DEST.bak`"],
        &[
            "`install`",
            "`\"atomic\"`",
            "`in-place` rewrites the file itself (not atomic), for single-file bind mounts (Kubernetes `subPath`) where rename fails with EBUSY",
        ],
        &["`allow_empty`", "`false`", "allow replacing a non-empty file with an empty rendering"],
        &[
            "`rollback`",
            "`false`",
            "if the reload after an install fails, put the previous file back and reload again; the rejected rendering is not installed again until it changes",
        ],
        &["`reload`", "none", "what to do after the file changed: the `[file.reload]` table below"],
        &[
            "`allow_env`",
            "`[]`",
            "environment variables the template may read with `env(\"NAME\", default=...)`; none by default",
        ],
    ],
    notes: "Exactly one of znode, template, inline.",
};

/// `[file.reload]`
pub const FILE_RELOAD: Table = Table {
    heading: "`[file.reload]`",
    index: 0,
    columns: KEY_COLUMNS,
    rows: &[
        &["`signal`", "", "a signal name, with or without `SIG` (`HUP`, `SIGUSR1`), sent to exactly one of:"],
        &["`pid_file`", "", "the pid in this file, read at each reload"],
        &["`pid`", "", "this pid"],
        &[
            "`process`",
            "",
            "every process whose `/proc/PID/comm` is this name and whose parent's is not (nginx's master, not its workers)",
        ],
        &["`http`", "", "a URL called on reload; non-2xx or a timeout is a failure"],
        &["`method`", "`\"POST\"`", "the HTTP method"],
        &["`command`", "", "argv run on reload, no shell; non-zero exit is a failure"],
        &[
            "`restart`",
            "`false`",
            "`zkrender exec` only: restart the child (SIGTERM, 10 s grace, SIGKILL, start again)",
        ],
        &["`timeout`", "`\"10s\"`", "per attempt, for `http` and `command`"],
        &["`retries`", "`3`", "extra attempts after the first, for every kind; backoff doubles from 100 ms"],
        &[
            "`splay`",
            "`\"0s\"`",
            "wait a random 0..splay before firing, so a fleet watching the same znode does not reload at once",
        ],
    ],
    notes: "Exactly one of signal, http, command, restart = true. signal with none of pid_file, pid, \
            process means the child of zkrender exec. If several files change in one cycle and share \
            an identical reload, it runs once.",
};

/// The template functions and filters zkrender adds to minijinja's builtins.
pub const TEMPLATES: Table = Table {
    heading: "Templates",
    index: 0,
    columns: &["function / filter", "meaning"],
    rows: &[
        &[
            "`znode(path, default=...)`",
            "the znode's data as UTF-8 text; a missing znode is an error unless `default=` is given",
        ],
        &[
            "`znode(path, encoding=\"base64\")`",
            "the znode's raw bytes, base64-encoded, for binary data (certificates, keystores); `encoding=\"utf-8\"` is the default",
        ],
        &[
            "`tree(path, default=...)`",
            "every descendant of `path` that holds data, as a sorted list of `{key, value}` (key relative to `path`, `/`-separated); the same subtree and rules as a [`tree` file](#subtrees-as-files); a missing `path` is an error unless `default=` is given",
        ],
        &[
            "`children(path, default=...)`",
            "the sorted list of child names; a missing parent is an error unless `default=` is given",
        ],
        &["`exists(path)`", "whether the znode exists"],
        &[
            "`env(name, default=...)`",
            "an environment variable, only if the file's `allow_env` lists it (read when the config is loaded)",
        ],
        &[
            "`| from_json`, `| from_toml`, `| from_yaml`, `| from_properties`",
            "parse a string into a value (`from_properties` reads Java `.properties`, values as strings)",
        ],
        &[
            "`| to_json`, `| to_yaml`, `| to_toml`, `| to_properties`",
            "write a value, keys sorted (`to_toml` and `to_properties` need a mapping; `to_properties` flattens nesting to `a.b.c`)",
        ],
        &["`| b64encode`, `| b64decode`", "base64"],
    ],
    notes: "Templates are minijinja (Jinja2), sandboxed: no file system, no environment beyond allow_env. \
            Paths without a leading / resolve under the file's prefix. The znodes a template reads are \
            its dependencies, discovered by rendering and watched exactly.",
};

/// The exit codes of every command.
pub const EXIT_CODES: Table = Table {
    heading: "Exit codes and signals",
    index: 0,
    columns: &["code", "meaning"],
    rows: &[
        &[
            "0",
            "success; `run` after SIGTERM/SIGINT (the install in progress is finished first); `diff`: no file would change",
        ],
        &[
            "1",
            "`once`/`render`: a file could not be written (each is named with its error and cause; I/O failures are retried until `--timeout` first); a fatal ZooKeeper error; `diff`: some file would change; `init --output`: the file exists; `fleet`: some agent is not current, or the reports could not be read; `run`: the `[agent] id` is taken by a live agent",
        ],
        &[
            "2",
            "a config or template error (file, line and key are named); `render`/`diff --dest` naming no `[[file]]` (refused before connecting)",
        ],
        &[
            "3",
            "`diff`: a file cannot be rendered, or ZooKeeper cannot be reached within `--timeout` (each file is named with its reason)",
        ],
    ],
    notes: "zkrender exec exits with its child's code.",
};

/// The signals zkrender handles.
pub const SIGNALS: Table = Table {
    heading: "Exit codes and signals",
    index: 1,
    columns: &["signal", "effect"],
    rows: &[
        &["SIGTERM, SIGINT", "finish the install in progress, then exit 0"],
        &[
            "a second SIGTERM or SIGINT",
            "exit at once (130), killing a running `check` and removing temporary files; destinations are untouched",
        ],
        &["SIGHUP", "reload zkrender's own configuration (the ZooKeeper session is kept)"],
        &[
            "`exec`: SIGTERM, SIGINT, SIGQUIT, SIGUSR1, SIGUSR2",
            "forwarded to the child; zkrender exits with the child's exit code",
        ],
    ],
    notes: "",
};

/// Every table README.md carries, in README order.
pub fn readme_tables() -> Vec<&'static Table> {
    CONFIG.iter().chain([&TEMPLATES, &EXIT_CODES, &SIGNALS]).collect()
}

/// The bare key names of a configuration table's rows (`owner`, `group` from one row).
pub fn keys(table: &Table) -> Vec<&'static str> {
    table.rows.iter().flat_map(|row| row[0].split('`').skip(1).step_by(2)).collect()
}

/// The zkrender(1) man page: clap's synopsis, description, options and commands, then
/// CONFIGURATION, TEMPLATES, EXIT STATUS and SIGNALS from the tables above.
///
/// # Errors
/// Writing to `w` failed.
pub fn man_page(cmd: clap::Command, w: &mut dyn Write) -> io::Result<()> {
    let has_version = cmd.get_version().is_some();
    let has_subcommands = cmd.has_subcommands();
    let man = clap_mangen::Man::new(cmd);
    man.render_title(w)?;
    man.render_name_section(w)?;
    man.render_synopsis_section(w)?;
    man.render_description_section(w)?;
    man.render_options_section(w)?;
    if has_subcommands {
        man.render_subcommands_section(w)?;
    }
    let mut roff = Roff::new();
    roff.control("SH", ["CONFIGURATION"]);
    roff.text([roman(
        "The configuration file is TOML. Durations are written like \"500ms\", \"10s\", \"10m\". \
         Unknown keys are errors; every error names the file, line, column and key. \
         zkrender init prints a commented starter file with every key.",
    )]);
    for table in CONFIG {
        roff.control("SS", [plain(table.heading).as_str()]);
        key_list(&mut roff, table);
    }
    roff.control("SH", ["TEMPLATES"]);
    key_list(&mut roff, &TEMPLATES);
    roff.control("SH", ["EXIT STATUS"]);
    key_list(&mut roff, &EXIT_CODES);
    roff.control("SH", ["SIGNALS"]);
    key_list(&mut roff, &SIGNALS);
    roff.to_writer(w)?;
    if has_version {
        man.render_version_section(w)?;
    }
    Ok(())
}

/// A table as a roff tagged list: the first cell in bold, the default (for three columns)
/// after it, the last cell as the paragraph; then the table's notes.
fn key_list(roff: &mut Roff, table: &Table) {
    for row in table.rows {
        roff.control("TP", []);
        let mut tag = vec![bold(plain(row[0]))];
        if row.len() == 3 {
            tag.push(roman(match row[1] {
                "required" => " (required)".to_owned(),
                "" => " (default: none)".to_owned(),
                default => format!(" (default: {})", plain(default)),
            }));
        }
        roff.text(tag);
        roff.text([roman(plain(row[row.len() - 1]))]);
    }
    if !table.notes.is_empty() {
        roff.control("PP", []);
        roff.text([roman(table.notes)]);
    }
}

/// Markdown-flavoured text as plain ASCII for roff (backticks removed; `×` as `x`, which
/// groff reads without preconv).
fn plain(text: &str) -> String {
    text.replace('`', "").replace('×', "x")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_has_one_cell_per_column() {
        for table in readme_tables() {
            for row in table.rows {
                assert_eq!(row.len(), table.columns.len(), "{}: {row:?}", table.heading);
            }
        }
    }

    #[test]
    fn markdown_escapes_pipes_and_keeps_empty_cells() {
        let table = Table {
            heading: "x",
            index: 0,
            columns: &["a", "b", "c"],
            rows: &[&["`| f`", "", "m"]],
            notes: "",
        };
        assert_eq!(table.markdown(), "| a | b | c |\n|---|---|---|\n| `\\| f` | | m |\n");
    }

    #[test]
    fn keys_split_rows_naming_two() {
        assert!(keys(&FILE).starts_with(&["dest", "znode"]));
        assert!(keys(&FILE).contains(&"owner") && keys(&FILE).contains(&"group"));
    }

    #[test]
    fn man_page_carries_the_reference() {
        let mut out = Vec::new();
        man_page(clap::Command::new("zkrender").about("x"), &mut out).unwrap();
        let man = String::from_utf8(out).unwrap();
        for needle in
            [".SH CONFIGURATION", ".SS [file.reload]", "session_timeout", ".SH \"EXIT STATUS\"", "SIGHUP"]
        {
            assert!(man.contains(needle), "man page lacks {needle:?}:\n{man}");
        }
        assert!(man.is_ascii(), "groff reads ASCII without preconv:\n{man}");
    }
}
