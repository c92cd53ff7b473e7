//! The README's reference cannot drift from the code: every key the config parser accepts
//! must be documented there, and the man page's reference and README's tables come from one
//! source, `zkrender::reference`.
//!
//! The list of keys comes from the parser itself: a config with an unknown key in a table
//! is refused with "unknown field `x`, expected one of `a`, `b`, ...", so each table's keys
//! are read from that message. A key added to the code without a reference row fails here;
//! so does a README table that differs from its reference table, row for row.
//!
//! After changing `src/reference.rs`, `ZKRENDER_BLESS=1 cargo test --test docs` rewrites the
//! README's tables from it (then review `git diff README.md`).

use std::path::{Path, PathBuf};

use zkrender::reference::{self, Table};

/// One table of the config, as a TOML snippet with `BOGUS` where the unknown key goes.
/// The reference tables follow the same order ([`reference::CONFIG`]).
const TABLES: &[(&str, &str)] = &[
    ("[zookeeper]", "[zookeeper]\nhosts = \"h:1\"\nBOGUS = 1\n"),
    ("[zookeeper] auth", "[zookeeper]\nhosts = \"h:1\"\nauth = { BOGUS = 1 }\n"),
    ("[zookeeper] tls", "[zookeeper]\nhosts = \"h:1\"\ntls = { BOGUS = 1 }\n"),
    ("[agent]", "[zookeeper]\nhosts = \"h:1\"\n[agent]\nBOGUS = 1\n"),
    ("[[file]]", "[zookeeper]\nhosts = \"h:1\"\n[[file]]\ndest = \"x\"\nznode = \"/a\"\nBOGUS = 1\n"),
    (
        "[file.reload]",
        "[zookeeper]\nhosts = \"h:1\"\n[[file]]\ndest = \"x\"\nznode = \"/a\"\n[file.reload]\nBOGUS = 1\n",
    ),
    ("[[bundle]]", "[zookeeper]\nhosts = \"h:1\"\n[[bundle]]\ndir = \"d\"\nBOGUS = 1\n"),
    (
        "[[bundle.file]]",
        "[zookeeper]\nhosts = \"h:1\"\n[[bundle]]\ndir = \"d\"\n[[bundle.file]]\npath = \"x\"\nBOGUS = 1\n",
    ),
];

/// The keys named in "expected one of `a`, `b`" or "expected `a` or `b`".
fn expected_keys(message: &str) -> Vec<String> {
    let Some((_, list)) = message.split_once("expected") else {
        panic!("no list of expected keys in: {message}");
    };
    list.split('`').skip(1).step_by(2).map(str::to_owned).collect()
}

#[test]
fn every_config_key_is_in_the_readme() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let mut missing = Vec::new();
    let mut total = 0;
    for (table, toml) in TABLES {
        let err = zkrender::config::parse(Path::new("/tmp/zkrender-docs-test.toml"), toml)
            .expect_err("a config with an unknown key must be refused");
        let message = err.to_string();
        assert!(message.contains("BOGUS"), "{table}: the error should name the unknown key: {message}");
        let keys = expected_keys(&message);
        assert!(keys.len() >= 2, "{table}: too few keys parsed from: {message}");
        for key in keys {
            total += 1;
            // Documented as a table cell: | `key` | ... or `key` within a row's first cell.
            if !readme.contains(&format!("`{key}`")) {
                missing.push(format!("{table} {key}"));
            }
        }
    }
    assert!(total > 30, "expected the parser to list more than 30 keys, found {total}");
    assert!(missing.is_empty(), "config keys missing from README.md's reference: {missing:?}");
}

/// The keys the parser accepts in the table of `toml` (see [`TABLES`]).
fn parser_keys(table: &str, toml: &str) -> Vec<String> {
    let err = zkrender::config::parse(Path::new("/tmp/zkrender-docs-test.toml"), toml)
        .expect_err("a config with an unknown key must be refused");
    let mut keys = expected_keys(&err.to_string());
    assert!(keys.len() >= 2, "{table}: too few keys parsed from: {err}");
    keys.sort();
    keys
}

#[test]
fn every_parser_key_has_a_reference_row_and_every_row_a_key() {
    assert_eq!(TABLES.len(), reference::CONFIG.len(), "one reference table per config table");
    for ((table, toml), documented) in TABLES.iter().zip(reference::CONFIG) {
        let accepted = parser_keys(table, toml);
        let mut keys: Vec<String> = reference::keys(documented).into_iter().map(str::to_owned).collect();
        keys.sort();
        assert_eq!(
            keys, accepted,
            "{table}: the rows of src/reference.rs ({}) must name exactly the keys the parser accepts",
            documented.heading
        );
    }
}

#[test]
fn every_template_function_and_filter_has_a_reference_row() {
    let source = std::fs::read_to_string(manifest_dir().join("src/render/mod.rs")).unwrap();
    let usages: Vec<&str> = reference::TEMPLATES.rows.iter().map(|row| row[0]).collect();
    let mut missing = Vec::new();
    let mut total = 0;
    for (call, form) in [("add_function(\"", "{}("), ("add_filter(\"", "| {}")] {
        for rest in source.split(call).skip(1) {
            let name = rest.split('"').next().unwrap_or_default();
            total += 1;
            let wanted = form.replace("{}", name);
            if !usages.iter().any(|usage| usage.split('`').any(|code| code.starts_with(&wanted))) {
                missing.push(wanted);
            }
        }
    }
    assert!(total >= 8, "expected to find at least 8 functions and filters in src/render.rs, found {total}");
    assert!(
        missing.is_empty(),
        "template functions/filters without a row in reference::TEMPLATES: {missing:?}"
    );
}

fn manifest_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Line range (start, end exclusive) of table `index` under the heading `heading` in
/// `lines` (Markdown; headings inside fenced code do not count).
fn find_table(lines: &[&str], heading: &str, index: usize) -> Option<(usize, usize)> {
    let mut in_code = false;
    let mut in_section = false;
    let mut seen = 0;
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        if line.starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            in_section = line.trim_start_matches('#').trim() == heading;
        } else if !in_code && in_section && line.starts_with('|') {
            let start = i;
            while i < lines.len() && lines[i].starts_with('|') {
                i += 1;
            }
            if seen == index {
                return Some((start, i));
            }
            seen += 1;
            continue;
        }
        i += 1;
    }
    None
}

#[test]
fn readme_tables_match_the_reference() {
    let path = manifest_dir().join("README.md");
    let mut readme = std::fs::read_to_string(&path).unwrap();
    let bless = std::env::var_os("ZKRENDER_BLESS").is_some();
    let mut wrong = Vec::new();
    for table in reference::readme_tables() {
        let lines: Vec<&str> = readme.lines().collect();
        let expected = table.markdown();
        let Some((start, end)) = find_table(&lines, table.heading, table.index) else {
            wrong.push(format!(
                "README.md has no table #{} under a heading {:?}",
                table.index + 1,
                table.heading
            ));
            continue;
        };
        let actual = lines[start..end].iter().map(|l| format!("{l}\n")).collect::<String>();
        if actual == expected {
            continue;
        }
        if bless {
            let mut out: Vec<String> = lines[..start].iter().map(|l| (*l).to_owned()).collect();
            out.extend(expected.lines().map(str::to_owned));
            out.extend(lines[end..].iter().map(|l| (*l).to_owned()));
            readme = out.join("\n") + "\n";
        } else {
            wrong.push(describe_mismatch(table, &actual, &expected));
        }
    }
    if bless {
        std::fs::write(&path, readme).unwrap();
    }
    assert!(
        wrong.is_empty(),
        "README.md differs from src/reference.rs (ZKRENDER_BLESS=1 cargo test --test docs rewrites it):\n{}",
        wrong.join("\n")
    );
}

fn describe_mismatch(table: &Table, actual: &str, expected: &str) -> String {
    let missing: Vec<&str> = expected.lines().filter(|l| !actual.lines().any(|a| a == *l)).collect();
    let extra: Vec<&str> = actual.lines().filter(|l| !expected.lines().any(|e| e == *l)).collect();
    format!(
        "table #{} under {:?}:\n  rows only in the reference:\n    {}\n  rows only in README.md:\n    {}",
        table.index + 1,
        table.heading,
        missing.join("\n    "),
        extra.join("\n    ")
    )
}

#[test]
fn find_table_skips_code_and_counts_tables() {
    let md = "# A\n| x |\n## B\n```\n# B\n| in code |\n```\n| one |\n|---|\n\ntext\n| two |\n# C\n";
    let lines: Vec<&str> = md.lines().collect();
    assert_eq!(find_table(&lines, "B", 0), Some((7, 9)));
    assert_eq!(find_table(&lines, "B", 1), Some((11, 12)));
    assert_eq!(find_table(&lines, "B", 2), None);
    assert_eq!(find_table(&lines, "A", 0), Some((1, 2)));
}

#[test]
fn man_page_carries_every_reference_row() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_zkrender")).arg("man").output().unwrap();
    assert!(out.status.success(), "zkrender man failed: {}", String::from_utf8_lossy(&out.stderr));
    let man = String::from_utf8(out.stdout).unwrap();
    // The tags of the tagged lists: the line after each `.TP`, its bold part split at ", ".
    let lines: Vec<&str> = man.lines().collect();
    let tags: Vec<&str> = lines
        .windows(2)
        .filter(|pair| pair[0] == ".TP")
        .filter_map(|pair| pair[1].strip_prefix("\\fB")?.split("\\fR").next())
        .flat_map(|bold| bold.split(", "))
        .collect();
    for table in reference::CONFIG {
        let title = table.heading.replace('`', "");
        assert!(man.contains(&format!(".SS {title}")), "man page lacks the subsection {title}");
        for key in reference::keys(table) {
            assert!(tags.contains(&key), "man page lacks the key {key} of {title}: {tags:?}");
        }
    }
    for table in [&reference::TEMPLATES, &reference::EXIT_CODES, &reference::SIGNALS] {
        for row in table.rows {
            let first = row[0].replace('`', "").replace('-', "\\-");
            assert!(man.contains(&first), "man page lacks {first:?}");
        }
    }
}

#[test]
fn expected_keys_reads_both_message_shapes() {
    assert_eq!(expected_keys("unknown field `x`, expected one of `a`, `b`"), vec!["a", "b"]);
    assert_eq!(expected_keys("unknown field `x`, expected `a` or `b`"), vec!["a", "b"]);
}
