//! The vendored zookeeper-client's patches (vendor/PATCHES.md), each against a real ZooKeeper
//! started with `scripts/zk`, through the crate's own API (no zkrender code involved).
//!
//! A connection is cut without stopping the server by a small TCP proxy ([`Proxy`]) between
//! the client and the server: while cut, it drops every live connection and closes each new one
//! at once, as a server that is up but does not serve (an ensemble without quorum) would.
//!
//! Each test starts its own server (own `ZK_STATE_DIR`, free ports), so they run in parallel.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use zookeeper_client::{
    Acls, AddWatchMode, Client, CreateMode, EventType, PersistentWatcher, SessionState, WatchedEvent,
};

/// A standalone server of its own, stopped (`scripts/zk down`) on drop.
struct Server {
    hosts: String,
    state: TempDir,
}

impl Server {
    fn start() -> Server {
        let state = tempfile::Builder::new().prefix("zkrender-zkclient-").tempdir().unwrap();
        let out = Server::zk(&state, &["up", "--port", "auto", "--owner", &std::process::id().to_string()]);
        let hosts = String::from_utf8_lossy(&out).lines().last().unwrap_or_default().trim().to_owned();
        assert!(!hosts.is_empty(), "`scripts/zk up` printed no connect string");
        Server { hosts, state }
    }

    /// Runs `scripts/zk ARGS` for this server; panics (with its stderr) if it fails.
    fn zk(state: &TempDir, args: &[&str]) -> Vec<u8> {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/zk");
        let out = Command::new(&script)
            .args(args)
            .env("ZK_STATE_DIR", state.path())
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
        assert!(
            out.status.success(),
            "`scripts/zk {}` failed ({}); is ZooKeeper installed (scripts/zk install)?\n{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    }

    /// `host:port` of the server, without a chroot.
    fn addr(&self) -> &str {
        &self.hosts
    }

    /// Restarts the server (SIGTERM, relaunch with the same data) and waits until it serves.
    fn restart(&self) {
        Server::zk(&self.state, &["ctl", "restart", "1"]);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/zk"))
            .arg("down")
            .env("ZK_STATE_DIR", self.state.path())
            .stdin(Stdio::null())
            .output();
    }
}

/// A TCP proxy to a server whose connections can be cut and restored.
struct Proxy {
    addr: String,
    open: watch::Sender<bool>,
}

impl Proxy {
    async fn start(upstream: &str) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let (open, _) = watch::channel(true);
        let states = open.clone();
        let upstream = upstream.to_owned();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { return };
                let mut state = states.subscribe();
                if !*state.borrow_and_update() {
                    continue; // dropped: closed at once
                }
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    let Ok(mut server) = TcpStream::connect(&upstream).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = state.wait_for(|open| !open) => {}
                    }
                });
            }
        });
        Proxy { addr, open }
    }

    /// Drops every connection and closes new ones at once until [`Proxy::restore`].
    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn restore(&self) {
        self.open.send_replace(true);
    }
}

async fn connect(hosts: &str, session_timeout: Duration, max_reconnect_delay: Option<Duration>) -> Client {
    let mut connector = Client::connector().with_session_timeout(session_timeout);
    if let Some(delay) = max_reconnect_delay {
        connector = connector.with_max_reconnect_delay(delay);
    }
    tokio::time::timeout(Duration::from_secs(20), connector.connect(hosts))
        .await
        .unwrap_or_else(|_| panic!("no session with {hosts} within 20 s"))
        .unwrap_or_else(|e| panic!("connecting to {hosts}: {e}"))
}

async fn create(client: &Client, path: &str, data: &[u8]) {
    client
        .create(path, data, &CreateMode::Persistent.with_acls(Acls::anyone_all()))
        .await
        .unwrap_or_else(|e| panic!("creating {path}: {e}"));
}

async fn set(client: &Client, path: &str, data: &[u8]) {
    client.set_data(path, data, None).await.unwrap_or_else(|e| panic!("setting {path}: {e}"));
}

/// Waits until `client`'s session reaches `want`; panics on a terminal state or after `within`.
async fn wait_state(client: &Client, want: SessionState, within: Duration) -> Duration {
    let start = Instant::now();
    let mut states = client.state_watcher();
    let wait = async {
        let mut state = states.peek_state();
        while state != want {
            assert!(!state.is_terminated(), "the session ended ({state}) while waiting for {want}");
            state = states.changed().await;
        }
    };
    tokio::time::timeout(within, wait)
        .await
        .unwrap_or_else(|_| panic!("session not {want} within {within:?} (now {})", client.state()));
    start.elapsed()
}

/// The next node event of `watcher` (session events skipped), or `None` after `within`.
async fn next_node_event(watcher: &mut PersistentWatcher, within: Duration) -> Option<WatchedEvent> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let event = tokio::time::timeout_at(deadline, watcher.changed()).await.ok()?;
        if event.event_type != EventType::Session {
            return Some(event);
        }
    }
}

/// Patch 1: after a reconnect within the session a persistent watch still fires, and nothing
/// fires for a node that did not change meanwhile.
#[tokio::test(flavor = "multi_thread")]
async fn persistent_watch_still_fires_after_a_server_restart_within_the_session() {
    let server = Server::start();
    let admin = connect(server.addr(), Duration::from_secs(10), None).await;
    create(&admin, "/restart", b"0").await;
    let client = connect(server.addr(), Duration::from_secs(10), None).await;
    let session = client.session_id();
    let mut watcher = client.watch("/restart", AddWatchMode::Persistent).await.unwrap();

    server.restart();
    wait_state(&client, SessionState::SyncConnected, Duration::from_secs(20)).await;
    assert_eq!(client.session_id(), session, "the session must survive the restart");
    let spurious = next_node_event(&mut watcher, Duration::from_secs(1)).await;
    assert_eq!(spurious, None, "/restart did not change, yet its watch fired after the reconnect");

    // Twice: the watch stays persistent once restored.
    for value in [b"1", b"2"] {
        set(&admin, "/restart", value).await;
        let event = next_node_event(&mut watcher, Duration::from_secs(5)).await.unwrap_or_else(|| {
            panic!("no event for a change after the reconnect: the persistent watch was not restored")
        });
        assert_eq!((event.event_type, event.path.as_str()), (EventType::NodeDataChanged, "/restart"));
    }
}

/// Patch 2: a change made while the client was disconnected reaches its persistent watch after
/// the reconnect (as it would a one-shot watch); an unchanged node stays quiet; the watches stay
/// persistent afterwards.
#[tokio::test(flavor = "multi_thread")]
async fn persistent_watch_reports_changes_missed_while_disconnected() {
    let server = Server::start();
    let admin = connect(server.addr(), Duration::from_secs(10), None).await;
    for path in ["/changed", "/deleted", "/same"] {
        create(&admin, path, b"0").await;
    }
    create(&admin, "/parent", b"").await;
    let proxy = Proxy::start(server.addr()).await;
    let client = connect(&proxy.addr, Duration::from_secs(10), Some(Duration::from_millis(100))).await;
    let session = client.session_id();
    let mut watchers = Vec::new();
    for path in ["/changed", "/deleted", "/same", "/parent"] {
        watchers.push(client.watch(path, AddWatchMode::Persistent).await.unwrap());
    }
    let [changed, deleted, same, parent] = &mut watchers[..] else { unreachable!() };

    proxy.cut();
    wait_state(&client, SessionState::Disconnected, Duration::from_secs(10)).await;
    set(&admin, "/changed", b"1").await;
    admin.delete("/deleted", None).await.unwrap();
    create(&admin, "/parent/child", b"").await;
    proxy.restore();
    wait_state(&client, SessionState::SyncConnected, Duration::from_secs(10)).await;
    assert_eq!(client.session_id(), session, "the session must survive the cut");

    let missed = |what: &str| format!("{what} while disconnected, but its persistent watch never said so");
    let event = next_node_event(changed, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("{}", missed("/changed was set")));
    assert_eq!(event.event_type, EventType::NodeDataChanged);
    let event = next_node_event(deleted, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("{}", missed("/deleted was deleted")));
    assert_eq!(event.event_type, EventType::NodeDeleted);
    let event = next_node_event(parent, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("{}", missed("/parent got a child")));
    assert_eq!(event.event_type, EventType::NodeChildrenChanged);
    assert_eq!(
        next_node_event(same, Duration::from_millis(500)).await,
        None,
        "/same did not change, yet its watch fired"
    );
    assert_eq!(next_node_event(changed, Duration::from_millis(200)).await, None, "/changed reported twice");

    // Still persistent, not downgraded to the one-shot watches the catch-up used.
    for value in [b"2", b"3"] {
        set(&admin, "/changed", value).await;
        set(&admin, "/same", value).await;
        for (path, watcher) in [("/changed", &mut *changed), ("/same", &mut *same)] {
            let event = next_node_event(watcher, Duration::from_secs(5))
                .await
                .unwrap_or_else(|| panic!("no event for {path} set after the reconnect"));
            assert_eq!((event.event_type, event.path.as_str()), (EventType::NodeDataChanged, path));
        }
    }
}

/// Patch 3: with a long session timeout and a cap on the pause between connection attempts,
/// the session is back within 1 s of the server serving again, however long the outage was.
/// Without the cap the pause doubles each round: after 8 s down, the next attempt would come
/// about 12.7 s after the loss.
#[tokio::test(flavor = "multi_thread")]
async fn reconnect_within_a_second_of_the_server_serving_again() {
    let server = Server::start();
    let proxy = Proxy::start(server.addr()).await;
    let client = connect(&proxy.addr, Duration::from_secs(20), Some(Duration::from_millis(250))).await;
    let session = client.session_id();

    proxy.cut();
    wait_state(&client, SessionState::Disconnected, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_secs(8)).await;
    proxy.restore();
    let took = wait_state(&client, SessionState::SyncConnected, Duration::from_secs(20)).await;
    assert_eq!(client.session_id(), session, "the session must survive the outage");
    assert!(
        took <= Duration::from_secs(1),
        "reconnected {took:?} after the server served again (want <= 1 s)"
    );
    eprintln!("reconnected {took:?} after the server served again");
}

/// Patch 5: with the `tokio` feature the client's sockets and timers are tokio's, driven by
/// the runtime it is used from: on a current-thread runtime the whole client runs on the
/// test's thread, and async-io's reactor thread is never started. The session's ping ticker
/// (an interval timer) must keep firing: idle for several session timeouts, the session stays.
#[tokio::test]
async fn the_client_runs_on_the_applications_tokio_runtime() {
    let server = Server::start();
    let client = connect(server.addr(), Duration::from_millis(1500), None).await;
    let session = client.session_id();
    create(&client, "/rt", b"a").await;
    let (_, _, watcher) = client.get_and_watch_data("/rt").await.expect("read and watch /rt");
    set(&client, "/rt", b"b").await;
    let event = tokio::time::timeout(Duration::from_secs(10), watcher.changed()).await.expect("watch fired");
    assert_eq!(event.event_type, EventType::NodeDataChanged);

    // Idle for three session timeouts: only the pings keep the session.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    let (data, _) = client.get_data("/rt").await.expect("read /rt after idling");
    assert_eq!(data, b"b");
    assert_eq!(client.session_id(), session, "the session must outlive idling (pings stopped?)");
    assert_eq!(client.state(), SessionState::SyncConnected);

    let threads: Vec<String> = std::fs::read_dir("/proc/self/task")
        .expect("list /proc/self/task")
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|name| name.trim().to_owned())
        .collect();
    assert!(
        !threads.iter().any(|name| name == "async-io"),
        "async-io's reactor thread runs beside tokio's: {threads:?}"
    );
}

/// Write calls (`write`, `writev`, not `send`) the calling thread has made so far: `syscw` of
/// `/proc/thread-self/io`.
fn thread_write_calls() -> u64 {
    let io = std::fs::read_to_string("/proc/thread-self/io").expect("read /proc/thread-self/io");
    io.lines()
        .find_map(|line| line.strip_prefix("syscw:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a syscw line in /proc/thread-self/io")
}

/// Patch 7: requests queued at once leave in a few vectored writes, not in one `send` each.
/// On a current-thread runtime the session task runs on this thread, so the thread's own
/// counter sees every write to the socket. tokio's single-buffer write is a `send`, which the
/// counter does not see: with the old adapter (first buffer only) the burst made no write call
/// it counts at all, and without the drain each request made one `writev` of its own.
#[tokio::test]
async fn a_burst_of_requests_leaves_in_a_few_vectored_writes() {
    const BURST: usize = 1000;
    let server = Server::start();
    let client = connect(server.addr(), Duration::from_secs(10), None).await;
    create(&client, "/burst", b"value").await;

    let before = thread_write_calls();
    // Each call queues its request at once; the session task runs when this task waits.
    let reads: Vec<_> = (0..BURST).map(|_| client.get_data("/burst")).collect();
    for read in reads {
        assert_eq!(read.await.expect("read /burst").0, b"value");
    }
    let writes = thread_write_calls() - before;
    assert!(
        (1..=BURST as u64 / 20).contains(&writes),
        "{BURST} queued requests took {writes} write calls (wanted 1 to {}: vectored, many requests each)",
        BURST / 20
    );
}

/// The first of `watchers` to fire: its index and event. A fired watcher is taken out (it must
/// not be polled again).
async fn first_fired(watchers: &mut [Option<zookeeper_client::OneshotWatcher>]) -> (usize, WatchedEvent) {
    std::future::poll_fn(|cx| {
        for (i, slot) in watchers.iter_mut().enumerate() {
            if let Some(watcher) = slot
                && let std::task::Poll::Ready(event) = watcher.poll_changed(cx)
            {
                *slot = None;
                return std::task::Poll::Ready((i, event));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// Patch 6: watchers polled by hand. An application that keeps thousands of watchers in
/// its own state (zkrender keeps one per watched znode) polls them with `poll_changed` instead
/// of holding a `changed()` future for each. Three one-shot watchers in one Vec, polled from
/// one `poll_fn`: the one whose node changed fires, the others stay pending and still fire
/// later. A persistent watcher polled the same way delivers every event in order.
#[tokio::test]
async fn watchers_can_be_polled_by_hand() {
    let server = Server::start();
    let client = connect(server.addr(), Duration::from_secs(10), None).await;
    let mut watchers = Vec::new();
    for name in ["/p0", "/p1", "/p2"] {
        create(&client, name, b"a").await;
        let (_, _, watcher) = client.get_and_watch_data(name).await.expect("read and watch");
        watchers.push(Some(watcher));
    }
    set(&client, "/p1", b"b").await;
    let (i, event) =
        tokio::time::timeout(Duration::from_secs(10), first_fired(&mut watchers)).await.expect("fired");
    assert_eq!((i, event.event_type, event.path.as_str()), (1, EventType::NodeDataChanged, "/p1"));
    set(&client, "/p2", b"b").await;
    let (i, event) =
        tokio::time::timeout(Duration::from_secs(10), first_fired(&mut watchers)).await.expect("fired");
    assert_eq!((i, event.path.as_str()), (2, "/p2"));
    assert!(watchers[0].is_some() && watchers[1].is_none() && watchers[2].is_none());

    let mut persistent = client.watch("/p0", AddWatchMode::Persistent).await.expect("add a persistent watch");
    set(&client, "/p0", b"c").await;
    set(&client, "/p0", b"d").await;
    for _ in 0..2 {
        let event = tokio::time::timeout(
            Duration::from_secs(10),
            std::future::poll_fn(|cx| persistent.poll_changed(cx)),
        )
        .await
        .expect("persistent watch fired");
        assert_eq!((event.event_type, event.path.as_str()), (EventType::NodeDataChanged, "/p0"));
    }
}

/// Patch 4: only ring is compiled in (zookeeper-client's `ring` feature, its default
/// `aws-lc-rs` off). TLS against a real server with ring alone is tests/tls.rs.
#[test]
fn aws_lc_rs_is_not_built() {
    let lock = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.lock")).unwrap();
    assert!(
        !lock.lines().any(|l| l == r#"name = "aws-lc-rs""#),
        "Cargo.lock has aws-lc-rs: something enables a second TLS crypto provider (`cargo tree -i aws-lc-rs`)"
    );
}
