//! A file never mixes values from different ZooKeeper transactions (issue 9 section 5), end
//! to end: the built binary against a real ZooKeeper, a writer setting `/m/a` and `/m/b` to
//! the same counter in one `multi` transaction, hundreds of times, and a reader thread
//! reading the rendered file in a loop meanwhile. Every content it sees must be a pair that
//! existed in ZooKeeper (`n-n`), in both watch modes.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(20);
const TRANSACTIONS: u32 = 300;

/// Sets `/m/a` and `/m/b` to `n` in one transaction.
async fn set_both(env: &Env, n: u32) {
    let value = n.to_string();
    let mut writer = env.client().new_multi_writer();
    writer.add_set_data("/m/a", value.as_bytes(), None).unwrap();
    writer.add_set_data("/m/b", value.as_bytes(), None).unwrap();
    writer.commit().await.unwrap_or_else(|e| panic!("multi setting /m/a and /m/b to {n}: {e}"));
}

/// Renders `{{ znode("/m/a") }}-{{ znode("/m/b") }}` in watch mode `mode` (with `agent`
/// lines for `[agent]`) during `TRANSACTIONS` multi updates; returns every distinct content a
/// reader saw.
async fn contents_seen_during_multi_updates(mode: &str, agent_lines: &str) -> BTreeSet<String> {
    let env = Env::new(&format!("snapshot-{mode}")).await;
    env.seed(&[("/m/a", b"0"), ("/m/b", b"0")]).await;
    let dest = env.path("pair");
    let files = format!(
        "[[file]]\ndest = {}\ninline = '''{{{{ znode(\"/m/a\") }}}}-{{{{ znode(\"/m/b\") }}}}'''\n",
        toml_path(&dest)
    );
    let config = env.config().zookeeper(&format!("watch = {mode:?}")).agent(agent_lines).write(&files);
    let agent = Agent::run(&config);
    agent.wait_for_bytes(&dest, b"0-0", WAIT, "the first rendering");

    let stop = Arc::new(AtomicBool::new(false));
    let reader = {
        let (stop, dest) = (stop.clone(), dest.clone());
        std::thread::spawn(move || {
            let mut seen = BTreeSet::new();
            while !stop.load(Ordering::Relaxed) {
                // Installs are atomic renames: every read is one whole rendering.
                if let Ok(bytes) = std::fs::read(&dest) {
                    seen.insert(String::from_utf8_lossy(&bytes).into_owned());
                }
            }
            seen
        })
    };
    for n in 1..=TRANSACTIONS {
        set_both(&env, n).await;
        // A short pause now and then: windows in which the agent can render between bursts.
        if n % 5 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let last = format!("{TRANSACTIONS}-{TRANSACTIONS}");
    agent.wait_for_bytes(&dest, last.as_bytes(), WAIT, "the last transaction's pair");
    stop.store(true, Ordering::Relaxed);
    let seen = reader.join().expect("the reader thread panicked");
    agent.assert_running();
    seen
}

fn assert_no_mixed_pair(mode: &str, seen: &BTreeSet<String>) {
    let mixed: Vec<&String> = seen.iter().filter(|s| s.split_once('-').is_none_or(|(a, b)| a != b)).collect();
    assert!(
        mixed.is_empty(),
        "{mode}: {} of {} contents mix two transactions, e.g. {:?}",
        mixed.len(),
        seen.len(),
        &mixed[..mixed.len().min(10)]
    );
    eprintln!("{mode}: {} distinct contents seen, none mixed", seen.len());
    // The reader must have seen the file change during the updates (more than the first and
    // the last pair), or it proved nothing.
    assert!(seen.len() >= 3, "{mode}: the reader saw only {} contents: {seen:?}", seen.len());
}

#[tokio::test(flavor = "multi_thread")]
async fn oneshot_watches_never_render_a_mixed_pair() {
    let seen = contents_seen_during_multi_updates("oneshot", "").await;
    assert_no_mixed_pair("oneshot", &seen);
}

#[tokio::test(flavor = "multi_thread")]
async fn persistent_watches_never_render_a_mixed_pair() {
    let seen = contents_seen_during_multi_updates("persistent", "").await;
    assert_no_mixed_pair("persistent", &seen);
}
