//! Agents on ZooKeeper observers (README, "Sizing: big fleets and observers"): an ensemble of
//! 3 voters plus 2 observers started by `scripts/zk up --observers 2`; agents whose `hosts`
//! list only observers (or an observer and a voter) converge, and when the member an agent is
//! connected to dies, the agent fails over to another server of its `hosts` (same session)
//! and later changes still reach its files.
//!
//! One ensemble for the whole file (5 JVMs on a 2-core machine): one test, in phases.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Agent, ConfigBuilder, Env, Zk, raw_file, set, wait_until};

/// How long a file may take to converge after a member died (generous: 2 CPUs, 5 JVMs).
const CONVERGE: Duration = Duration::from_secs(20);
const SECS_10: Duration = Duration::from_secs(10);

/// The value of `key=` in a log line (text format), without quotes.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let start = line.find(key)? + key.len();
    Some(line[start..].split_whitespace().next()?.trim_matches('"').trim_end_matches(','))
}

/// The agent's session id (`0x...`), from its `connected to zookeeper` line.
fn agent_session(agent: &Agent) -> String {
    agent.wait_for_log("connected to zookeeper", SECS_10);
    let log = agent.log();
    let line = log.lines().find(|l| l.contains("connected to zookeeper")).unwrap();
    field(line, "session=").unwrap_or_else(|| panic!("no session= in {line:?}")).to_string()
}

/// The member holding `session`, waiting (up to 10 s) until one of `allowed` does; panics
/// naming where it is otherwise.
fn member_of(zk: &Zk, session: &str, allowed: &[usize], what: &str) -> usize {
    let deadline = Instant::now() + CONVERGE;
    let mut last = None;
    loop {
        last = zk.member_with_session(session).or(last);
        if let Some(m) = last
            && allowed.contains(&m)
        {
            return m;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: session {session} is on {last:?}, not one of {allowed:?}:\n{}",
            zk.status()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An agent with one raw file of `/v`, connected to `hosts` (members of `zk`) only.
fn start_agent(env: &Env, hosts: &str, name: &str) -> (Agent, std::path::PathBuf) {
    let dir = env.mkdir(name);
    let dest = dir.join("v.conf");
    let config = ConfigBuilder::new(&dir, hosts)
        .zookeeper(&format!("chroot = {:?}\nsession_timeout = \"10s\"", env.chroot()))
        .write(&raw_file(&dest, "/v"));
    (Agent::run(&config), dest)
}

fn converge(agents: &[(&Agent, &Path)], value: &[u8], what: &str) {
    for (agent, dest) in agents {
        let took = agent.wait_for_bytes(dest, value, CONVERGE, what);
        eprintln!("{what}: {} in {took:?}", dest.display());
    }
}

/// Watches each member holds (`wchs`: "... watching N paths / Total watches:N").
fn watches(zk: &Zk) -> Vec<(usize, String)> {
    (1..=zk.members())
        .map(|i| {
            let reply = zk.try_four_letter(i, "wchs", Duration::from_secs(2)).unwrap_or_default();
            let total = reply.lines().find_map(|l| l.strip_prefix("Total watches:")).unwrap_or("-").trim();
            (i, total.to_string())
        })
        .collect()
}

fn assert_healthy(agent: &Agent) {
    let log = agent.log();
    assert!(!log.contains("panicked"), "the agent panicked:\n{log}");
    assert!(agent.is_running(), "the agent exited ({:?}):\n{log}", agent.try_status());
    assert!(
        !log.contains("new zookeeper session"),
        "an observer's death must not cost the session (failover keeps it):\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn agents_on_observers_converge_and_fail_over() {
    let t0 = Instant::now();
    let zk = Zk::with_observers(3, 2);
    eprintln!("3 voters + 2 observers up in {:?}: {}", t0.elapsed(), zk.hosts());

    // The launcher: members 4 and 5 observe, 1..3 vote, one of them leads.
    assert_eq!((zk.members(), zk.observers()), (5, 2));
    assert_eq!(zk.observer_members(), vec![4, 5]);
    for i in zk.observer_members() {
        assert_eq!(zk.mode(i).as_deref(), Some("observer"), "member {i}:\n{}", zk.status());
        assert_eq!(zk.ctl(&["role", &i.to_string()]).trim(), "observer");
    }
    let leader = zk.leader();
    assert!(leader <= 3, "an observer cannot lead: {leader}");
    assert_eq!(zk.ctl(&["hosts", "--observers"]).trim(), zk.observer_hosts());
    assert!(zk.status().lines().all(|l| l.ends_with("\tvoter") || l.ends_with("\tobserver")));

    // The admin client reaches every member (its writes go through whichever one).
    let env = Env::on(&zk, "observers").await;
    env.set("/v", "v0").await;

    // Agent A: only the two observers. Agent B: observer 4 and a follower.
    let follower = (1..=3).find(|&i| i != leader).unwrap();
    let (a, a_dest) = start_agent(&env, &zk.observer_hosts(), "a");
    let b_hosts = zk.hosts_of(&[4, follower]);
    let (b, b_dest) = start_agent(&env, &b_hosts, "b");
    converge(&[(&a, &a_dest), (&b, &b_dest)], b"v0", "initial render");
    let a_session = agent_session(&a);
    let b_session = agent_session(&b);
    let first = member_of(&zk, &a_session, &[4, 5], "agent A at start");
    let other = if first == 4 { 5 } else { 4 };
    let b_on = member_of(&zk, &b_session, &[4, follower], "agent B at start");
    eprintln!("A on observer {first}, B on member {b_on} (of 4, {follower}); watches {:?}", watches(&zk));

    env.set("/v", "v1").await;
    converge(&[(&a, &a_dest), (&b, &b_dest)], b"v1", "a change, everything up");

    // 1. The observer A is on dies: A moves to the other observer, with its session.
    zk.kill(first);
    env.set("/v", "v2").await;
    converge(&[(&a, &a_dest), (&b, &b_dest)], b"v2", &format!("observer {first} killed"));
    assert_eq!(member_of(&zk, &a_session, &[other], "agent A after the kill"), other);
    env.set("/v", "v3").await;
    converge(&[(&a, &a_dest), (&b, &b_dest)], b"v3", "a later change");

    // 2. The first observer comes back, the second dies: A moves back.
    zk.start(first);
    assert_eq!(zk.mode(first).as_deref(), Some("observer"));
    zk.kill(other);
    env.set("/v", "v4").await;
    converge(&[(&a, &a_dest), (&b, &b_dest)], b"v4", &format!("observer {other} killed"));
    assert_eq!(member_of(&zk, &a_session, &[first], "agent A after the second kill"), first);
    zk.start(other);

    // 3. B loses its member (observer 4 or the follower): it moves to the other one it lists.
    let b_on = member_of(&zk, &b_session, &[4, follower], "agent B before its kill");
    let b_next = if b_on == 4 { follower } else { 4 };
    zk.kill(b_on);
    env.set("/v", "v5").await;
    converge(&[(&a, &a_dest), (&b, &b_dest)], b"v5", &format!("B's member {b_on} killed"));
    assert_eq!(member_of(&zk, &b_session, &[b_next], "agent B after its kill"), b_next);
    env.set("/v", "v6").await;
    converge(&[(&a, &a_dest), (&b, &b_dest)], b"v6", "a last change");
    zk.start(b_on);

    // Both still run on their first session, and their files hold what ZooKeeper holds.
    wait_until(|| zk.member_with_session(&a_session).is_some(), SECS_10, "A's session on a member");
    assert_healthy(&a);
    assert_healthy(&b);
    set(env.client(), "/v", b"v7").await;
    converge(&[(&a, &a_dest), (&b, &b_dest)], b"v7", "after everything is back");
    eprintln!("watches per member at the end {:?}; test {:?}", watches(&zk), t0.elapsed());
}
