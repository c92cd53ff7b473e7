//! Fuzzes `config::parse` with arbitrary config text, then compiles every template of a
//! valid config and plans once against an empty store.
//!
//! The config "lives" in a scratch directory that holds the files seeds refer to
//! (`templates/app.conf.j2`, `secrets/*`), so that `template = ...`, `auth` and `tls`
//! entries can validate. Checks, besides "no panic":
//! - every problem has a line and column inside the text (1-based);
//! - `Display` of every error works and names the config file;
//! - a valid config's templates compile or fail with a displayable error.

#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use zkrender::config::{self, ConfigError};
use zkrender::pipeline::Core;

/// `<tmp>/zkrender-fuzz-config/zkrender.toml`, with the files seeds refer to beside it.
fn config_path() -> &'static Path {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        let dir = std::env::temp_dir().join("zkrender-fuzz-config");
        let files: [(&str, &str); 5] = [
            (
                "templates/app.conf.j2",
                "db_host = {{ znode(\"db/host\") }}\n\
                 {% for s in children(\"servers\", default=[]) -%}\n\
                 backend {{ s }} = {{ znode(\"servers/\" ~ s) }}\n\
                 {% endfor -%}\n",
            ),
            ("secrets/zk.digest", "user:password\n"),
            ("secrets/ca.pem", "ca\n"),
            ("secrets/client.pem", "cert\n"),
            ("secrets/client.key", "key\n"),
        ];
        for (name, text) in files {
            let path = dir.join(name);
            std::fs::create_dir_all(path.parent().expect("has a parent")).expect("creating the scratch dir");
            std::fs::write(&path, text).expect("writing a scratch file");
        }
        dir.join("zkrender.toml")
    })
}

fuzz_target!(|data: &[u8]| {
    // TOML is UTF-8; anything else is rejected before `parse` (it takes `&str`).
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = config_path();
    match config::parse(path, text) {
        Ok(config) => {
            let _ = config.zookeeper.connect_string();
            let _ = format!("{config:?}");
            match Core::new(&config.files) {
                Ok(mut core) => {
                    // Every file renders once against an empty store: a file that reads a
                    // znode is pending, so only files that read none can be installed.
                    let plan = core.plan();
                    let watched: std::collections::BTreeSet<_> = plan.watch.iter().collect();
                    assert_eq!(watched.len(), plan.watch.len(), "a dependency watched twice: {plan:?}");
                    assert!(plan.unwatch.is_empty(), "unwatch before anything was watched: {plan:?}");
                }
                Err(errors) => {
                    for err in errors {
                        assert!(!err.to_string().is_empty());
                    }
                }
            }
        }
        Err(err) => check_error(path, text, &err),
    }
});

fn check_error(path: &Path, text: &str, err: &ConfigError) {
    let shown = err.to_string();
    assert!(shown.contains(&path.display().to_string()), "error does not name the file: {shown}");
    let lines: Vec<&str> = text.split('\n').collect();
    for problem in err.problems() {
        assert!(problem.line >= 1 && problem.line <= lines.len(), "line out of range: {problem:?}");
        let width = lines[problem.line - 1].chars().count();
        assert!(problem.column >= 1 && problem.column <= width + 1, "column out of range: {problem:?}");
        assert!(!problem.message.is_empty(), "empty message: {problem:?}");
        let _ = problem.to_string();
    }
}
