//! `sd_notify(3)` for `Type=notify` units: tell systemd when the agent is ready, is
//! reloading its configuration, and is stopping.
//!
//! Every function is a no-op outside systemd (no `NOTIFY_SOCKET`), and a failure to
//! notify is logged at `debug` and otherwise ignored: the agent's job is the files, and
//! a supervisor that cannot be told is not a reason to stop doing it.

use std::io;

use sd_notify::NotifyState;
use tracing::debug;

/// `READY=1`: every file has been rendered once (what `/readyz` also waits for). Also
/// ends a reload started with [`notify_reloading`].
pub fn notify_ready() {
    send("READY=1", &[NotifyState::Ready]);
}

/// `RELOADING=1`, with the `MONOTONIC_USEC` that `Type=notify-reload` requires: a SIGHUP
/// config reload has started. Follow with [`notify_ready`] when it is done, whatever the
/// outcome (on failure the old configuration keeps running).
pub fn notify_reloading() {
    match NotifyState::monotonic_usec_now() {
        Ok(now) => send("RELOADING=1", &[NotifyState::Reloading, now]),
        Err(err) => debug!(error = %err, "sd_notify RELOADING=1 not sent: reading the monotonic clock"),
    }
}

/// `STOPPING=1`: shutdown has begun (a SIGTERM was received).
pub fn notify_stopping() {
    send("STOPPING=1", &[NotifyState::Stopping]);
}

/// `STATUS=...`: a one-line description shown by `systemctl status`.
///
/// Line breaks become spaces: the protocol is one assignment per line, so a newline in
/// `status` would otherwise send a second, unintended assignment (`READY=1`).
pub fn notify_status(status: &str) {
    let line = one_line(status);
    send("STATUS", &[NotifyState::Status(&line)]);
}

fn one_line(status: &str) -> String {
    status.replace(['\n', '\r'], " ")
}

fn send(what: &str, states: &[NotifyState<'_>]) {
    if let Err(err) = notify(states) {
        debug!(notify = what, error = %err, "sd_notify failed");
    }
}

/// `sd_notify::notify`, which already returns `Ok` without `NOTIFY_SOCKET`.
fn notify(states: &[NotifyState<'_>]) -> io::Result<()> {
    sd_notify::notify(states)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    #[test]
    fn status_cannot_smuggle_a_second_assignment() {
        assert_eq!(one_line("syncing\nREADY=1\r"), "syncing READY=1 ");
    }

    /// Set only in the child process that [`sends_ready_status_and_stopping`] starts.
    const CHILD: &str = "ZKRENDER_TEST_SD_NOTIFY_CHILD";

    /// Exercises the real datagram path. `NOTIFY_SOCKET` is process-wide and setting it
    /// while other tests run threads is unsound, so the notifications are sent by a child
    /// test process (this binary running only [`child_sends_notifications`]) whose
    /// environment carries the socket from the start.
    #[test]
    fn sends_ready_status_and_stopping() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify.sock");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();

        let output = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["ops::systemd::tests::child_sends_notifications", "--exact", "--test-threads=1"])
            .env("NOTIFY_SOCKET", &path)
            .env(CHILD, "1")
            .output()
            .unwrap();
        assert!(output.status.success(), "child test failed: {output:?}");

        let mut received = Vec::new();
        let mut buf = [0u8; 256];
        for _ in 0..3 {
            let n = socket.recv(&mut buf).unwrap();
            received.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        assert_eq!(received, ["READY=1\n", "STATUS=2 of 3 files\n", "STOPPING=1\n"]);
    }

    /// The child half of [`sends_ready_status_and_stopping`]; does nothing in a normal run,
    /// so it never notifies a real service manager a test run happens to live under.
    #[test]
    fn child_sends_notifications() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        notify_ready();
        notify_status("2 of 3\nfiles");
        notify_stopping();
    }

    #[test]
    fn without_notify_socket_nothing_fails() {
        // With the variable unset (the normal case outside systemd) these must not panic.
        if std::env::var_os("NOTIFY_SOCKET").is_none() {
            notify_ready();
            notify_reloading();
            notify_stopping();
            notify_status("idle");
        }
    }
}
