//! The README's configuration reference cannot drift from the code: every key the config
//! parser accepts must be documented there.
//!
//! The list of keys comes from the parser itself: a config with an unknown key in a table
//! is refused with "unknown field `x`, expected one of `a`, `b`, ...", so each table's keys
//! are read from that message. A key added to the code without a README row fails here.

use std::path::Path;

/// One table of the config, as a TOML snippet with `BOGUS` where the unknown key goes.
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

#[test]
fn expected_keys_reads_both_message_shapes() {
    assert_eq!(expected_keys("unknown field `x`, expected one of `a`, `b`"), vec!["a", "b"]);
    assert_eq!(expected_keys("unknown field `x`, expected `a` or `b`"), vec!["a", "b"]);
}
