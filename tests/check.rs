//! `zkrender check` passes exactly the configs `run` accepts (issue 9, section 2): each config
//! below used to pass `check` and then be refused by `run` or fail every render. Now `check`
//! exits 2 naming file, line, column and key, and `run` refuses it at start with the same
//! message, before it writes anything.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{Agent, Env, toml_path};

const T: Duration = Duration::from_secs(10);

/// The config written, and where in it the problem must be reported.
struct Case {
    config: PathBuf,
    /// `CONFIG:LINE:COLUMN: [[file]] #N (dest = DEST): key `KEY``, the start of the problem line.
    at: String,
    /// A part of the message that names what is wrong.
    says: String,
}

/// Writes `files` as the `[[file]]` tables of `env`'s config and locates `needle`'s value in
/// it (the first `needle` in the text; its value starts after `= `).
fn case(env: &Env, files: &str, entry: usize, dest: &Path, needle: &str, key: &str, says: &str) -> Case {
    let config = env.write_config(files);
    let text = fs::read_to_string(&config).unwrap();
    let offset = text.find(needle).unwrap_or_else(|| panic!("{needle:?} is not in:\n{text}"));
    let value = offset + needle.find("= ").map_or(0, |i| i + 2);
    let line = text[..value].matches('\n').count() + 1;
    let column = text[..value].rsplit('\n').next().unwrap().chars().count() + 1;
    let at = format!(
        "{}:{line}:{column}: [[file]] #{entry} (dest = {}): key `{key}`",
        config.display(),
        dest.display()
    );
    Case { config, at, says: says.to_owned() }
}

/// Runs `zkrender ARGS -c CONFIG` to its end; its exit code and stderr.
/// The test's environment with `/app/a` set to `A1`, and the destination `a.conf` in it.
async fn env_with_a(name: &str) -> (Env, PathBuf) {
    let env = Env::new(name).await;
    env.set("/app/a", "A1").await;
    let dest = env.path("a.conf");
    (env, dest)
}

/// One `[[file]]` entry writing `dest`, its other keys in `rest`.
fn file_entry(dest: &Path, rest: &str) -> String {
    format!("[[file]]\ndest = {}\n{rest}", toml_path(dest))
}

fn zkrender(args: &[&str], config: &Path) -> (Option<i32>, String) {
    let mut argv: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
    argv.extend([std::ffi::OsStr::new("-c"), config.as_os_str()]);
    let agent = Agent::start(argv);
    let status = agent.wait_exit(T);
    (status.code(), agent.log())
}

/// `check` exits 2 with the located problem; `run` refuses the config at start with the same
/// line; nothing is written.
fn assert_refused(case: &Case, dests: &[&Path]) {
    let (code, log) = zkrender(&["check"], &case.config);
    assert_eq!(code, Some(2), "check must exit 2; stderr:\n{log}");
    let line = log
        .lines()
        .find(|l| l.trim_start().starts_with(&case.at))
        .unwrap_or_else(|| panic!("check must report at {}; stderr:\n{log}", case.at))
        .trim()
        .to_owned();
    assert!(line.contains(&case.says), "check must say {:?}: {line}", case.says);

    let (code, run_log) = zkrender(&["run"], &case.config);
    assert_eq!(code, Some(2), "run must refuse the config at start; log:\n{run_log}");
    assert!(run_log.contains(&line), "run must give check's message {line:?}; log:\n{run_log}");
    for dest in dests {
        assert!(!dest.exists(), "{} was written", dest.display());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_signal_to_the_exec_child_is_refused_unless_check_exec() {
    let (env, dest) = env_with_a("check-exec-only").await;
    let files = file_entry(&dest, "znode = \"/app/a\"\n[file.reload]\nsignal = \"HUP\"\n");
    let case = case(&env, &files, 1, &dest, "signal = ", "reload.signal", "valid only under `zkrender exec`");
    assert_refused(&case, &[&dest]);
    let (code, log) = zkrender(&["check", "--exec"], &case.config);
    assert_eq!(code, Some(0), "check --exec accepts what exec accepts; stderr:\n{log}");
    assert!(log.contains("ok (1 file)"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_functions_filters_and_tests_are_refused() {
    let env = Env::new("check-unknown-names").await;
    env.set("/app/mode", "a").await;
    let dest = env.path("a.conf");
    // In a branch the data does not take: a trial render would not see it.
    fs::write(env.path("a.j2"), "{% if znode('/app/mode') == 'b' %}\n{{ frobnicate() }}\n{% endif %}\n")
        .unwrap();
    let template = format!("[[file]]\ndest = {}\ntemplate = \"a.j2\"\n", toml_path(&dest));
    let function = case(
        &env,
        &template,
        1,
        &dest,
        "template = ",
        "template",
        "a.j2 line 2: unknown function `frobnicate`",
    );
    assert_refused(&function, &[&dest]);

    for (inline, says) in [
        ("{{ znode('/app/mode') | nosuchfilter }}", "line 1: unknown filter `nosuchfilter`"),
        ("{{ znode('/app/mode') is nosuchtest }}", "line 1: unknown test `nosuchtest`"),
    ] {
        let files = format!("[[file]]\ndest = {}\ninline = {inline:?}\n", toml_path(&dest));
        assert_refused(&case(&env, &files, 1, &dest, "inline = ", "inline", says), &[&dest]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_relative_znode_without_prefix_and_an_env_not_allowed_are_refused() {
    let (env, dest) = env_with_a("check-paths-env").await;
    let files = format!("[[file]]\ndest = {}\ninline = \"{{{{ znode('app/a') }}}}\"\n", toml_path(&dest));
    let says = "relative znode path \"app/a\" needs a `prefix`";
    assert_refused(&case(&env, &files, 1, &dest, "inline = ", "inline", says), &[&dest]);

    let files = format!(
        "[[file]]\ndest = {}\ninline = \"{{{{ znode('/app/a') }}}} {{{{ env('HOME') }}}}\"\nallow_env = [\"PATH\"]\n",
        toml_path(&dest)
    );
    let says = "environment variable HOME is not readable: list it in this file's allow_env";
    assert_refused(&case(&env, &files, 1, &dest, "inline = ", "inline", says), &[&dest]);
}

#[tokio::test(flavor = "multi_thread")]
async fn check_and_reload_programs_that_cannot_start_are_refused() {
    let (env, dest) = env_with_a("check-programs").await;
    let files =
        file_entry(&dest, "znode = \"/app/a\"\ncheck = [\"zkrender-no-such-validator\", \"{file}\"]\n");
    let says = "program \"zkrender-no-such-validator\" is not an executable file in any directory of PATH";
    assert_refused(&case(&env, &files, 1, &dest, "check = ", "check", says), &[&dest]);

    let script = env.path("reload.sh");
    fs::write(&script, "#!/bin/sh\n").unwrap(); // mode 0644: not executable
    let files = format!(
        "[[file]]\ndest = {}\nznode = \"/app/a\"\n[file.reload]\ncommand = [{}]\n",
        toml_path(&dest),
        toml_path(&script)
    );
    let says = format!("program {}: not executable", script.display());
    assert_refused(&case(&env, &files, 1, &dest, "command = ", "reload.command", &says), &[&dest]);
}

#[tokio::test(flavor = "multi_thread")]
async fn two_dests_naming_one_file_are_refused() {
    let env = Env::new("check-same-dest").await;
    env.set("/app/a", "A1").await;
    env.set("/app/b", "B1").await;
    let real = env.mkdir("real");
    std::os::unix::fs::symlink(&real, env.path("link")).unwrap();
    let dest = real.join("a.conf");
    for alias in [env.path("real/sub/../a.conf"), env.path("link/a.conf")] {
        let files = format!(
            "[[file]]\ndest = {}\nznode = \"/app/a\"\n\n[[file]]\ndest = {}\nznode = \"/app/b\"\n",
            toml_path(&dest),
            toml_path(&alias)
        );
        let config = env.write_config(&files);
        let text = fs::read_to_string(&config).unwrap();
        // The second `dest = `: the alias.
        let needle = format!("dest = {}", toml_path(&alias));
        let says = format!("is the same file as {}, the dest of [[file]] #1", dest.display());
        let case = case(&env, &files, 2, &alias, &needle, "dest", &says);
        assert!(text.contains(&needle));
        assert_refused(&case, &[&dest]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_config_reload_with_an_unknown_filter_is_refused_and_the_old_one_keeps_running() {
    let (env, dest) = env_with_a("check-hot-reload").await;
    let good = format!("[[file]]\ndest = {}\ninline = \"{{{{ znode('/app/a') }}}}\"\n", toml_path(&dest));
    let config = env.write_config(&good);
    let agent = Agent::run(&config);
    common::wait_for_file(&dest, b"A1", T);

    let bad = format!(
        "[[file]]\ndest = {}\ninline = \"{{{{ znode('/app/a') | nosuchfilter }}}}\"\n",
        toml_path(&dest)
    );
    let case = case(&env, &bad, 1, &dest, "inline = ", "inline", "unknown filter `nosuchfilter`");
    agent.signal(nix::sys::signal::Signal::SIGHUP);
    agent.wait_for_log("new configuration is invalid", T);
    let log = agent.log();
    // The report goes on over the next lines, one problem each.
    let refused = &log[log.find("new configuration is invalid").unwrap()..];
    let problem = refused.lines().find(|l| l.trim_start().starts_with(&case.at));
    assert!(problem.is_some_and(|l| l.contains(&case.says)), "{refused}");
    env.set("/app/a", "A2").await;
    common::wait_for_file(&dest, b"A2", T);
    agent.assert_running();
}
