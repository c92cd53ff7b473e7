//! The ZooKeeper side: one session, one watch task per dependency. The ONLY module that
//! imports the ZooKeeper client crate.
//!
//! The pipeline tells the source what to watch ([`Command`]); the source sends back every value
//! it reads ([`SourceEvent::Update`]) and the connection's state. Values are state, not events:
//! the pipeline only ever needs the latest one.
//!
//! Session lifecycle (see `run`):
//! - connect (retrying with backoff until it works or shutdown);
//! - start a watch task for every dependency known so far and for each new one;
//! - on disconnect: nothing to do; the files stay and the library reconnects;
//! - on expiry: every watch is gone with the session. Stop all tasks, open a new session,
//!   start every task again (each re-reads and re-arms), and the pipeline drops values that
//!   did not change.

mod watch;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};
use zookeeper_client as zk;

use crate::config::{WatchMode, ZkConfig};
use crate::model::{Dep, Update};

/// What the pipeline asks of the source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Start watching these dependencies (already watched ones are ignored).
    Watch(Vec<Dep>),
    /// Stop watching these dependencies.
    Unwatch(Vec<Dep>),
    /// Re-read every dependency now (anti-entropy).
    Resync,
}

/// The connection as the pipeline and operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Connection {
    /// A session is established and the connection is up.
    Connected,
    /// The connection dropped; the session may still be alive.
    Disconnected,
    /// The session expired; a new one is being opened and every watch re-established.
    Expired,
}

/// What the source sends to the pipeline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceEvent {
    Update(Update),
    Connection(Connection),
    /// Reading a dependency fails for a reason retrying alone may not fix (no permission).
    ReadError {
        dep: Dep,
        message: String,
    },
}

/// Failures that stop the source. Everything else is retried.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error(
        "the ZooKeeper server does not support persistent watches (addWatch needs ZooKeeper 3.6 or newer); \
         set `watch = \"oneshot\"` in [zookeeper]"
    )]
    PersistentUnsupported,
    #[error("zookeeper at {hosts}: authentication failed")]
    AuthFailed { hosts: String },
    #[error("reading zookeeper credentials_file {}", .path.display())]
    Credentials {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("zookeeper at {hosts}: no session within {timeout:?}")]
    ConnectTimeout { hosts: String, timeout: Duration },
    /// A `[zookeeper] tls` file cannot be read or is not what it should be (never shows key material).
    #[error("zookeeper tls {what} {}: {reason}", .path.display())]
    Tls { what: &'static str, path: std::path::PathBuf, reason: String },
}

/// Options for [`run`] beyond the config.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Give up connecting after this long (for `once`/`render`); `None` retries forever.
    pub connect_deadline: Option<Duration>,
}

/// Runs the source until `stop` is cancelled, the command channel closes, or a fatal error.
///
/// # Errors
/// [`SourceError`] for failures no retry fixes.
pub async fn run(
    cfg: ZkConfig,
    opts: Options,
    mut commands: mpsc::UnboundedReceiver<Command>,
    out: mpsc::Sender<SourceEvent>,
    stop: CancellationToken,
) -> Result<(), SourceError> {
    let hosts = cfg.connect_string();
    let started = tokio::time::Instant::now();
    let mut deps: Vec<Dep> = Vec::new();
    let mut first = true;
    loop {
        let Some(client) =
            connect(&cfg, &hosts, &stop, opts.connect_deadline.map(|d| (started + d, d))).await?
        else {
            return Ok(());
        };
        if first {
            info!(hosts = %hosts, session = %client.session_id(), timeout = ?client.session_timeout(), "connected to zookeeper");
        } else {
            info!(hosts = %hosts, session = %client.session_id(), watches = deps.len(), "new zookeeper session; re-establishing every watch");
        }
        first = false;
        let _ = out.send(SourceEvent::Connection(Connection::Connected)).await;
        let mut session =
            Session::new(client, cfg.watch, out.clone(), stop.child_token(), cfg.session_timeout);
        session.hosts = hosts.clone();
        for dep in &deps {
            session.watch(dep.clone());
        }
        let ended = session.serve(&mut commands, &mut deps, &stop).await;
        session.shutdown().await;
        match ended {
            SessionEnd::Shutdown => return Ok(()),
            SessionEnd::Fatal(e) => return Err(e),
            SessionEnd::Expired => {
                error!(hosts = %hosts, "zookeeper session expired; opening a new session (files keep their last good contents)");
                let _ = out.send(SourceEvent::Connection(Connection::Expired)).await;
            }
        }
    }
}

/// Connects, retrying with backoff. `Ok(None)` when stopped first.
async fn connect(
    cfg: &ZkConfig,
    hosts: &str,
    stop: &CancellationToken,
    deadline: Option<(tokio::time::Instant, Duration)>,
) -> Result<Option<zk::Client>, SourceError> {
    use std::io::{Read as _, Write as _};
    use std::path::Path;

    use rustls::pki_types::pem::{self, PemObject as _};
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

    use crate::config::ZkTls;

    /// `[zookeeper] tls` read and checked: the client library's options, and the same
    /// settings as a rustls config for [`tls_diagnosis`].
    struct Tls {
        options: zk::TlsOptions,
        probe: Arc<rustls::ClientConfig>,
    }

    /// Reads the PEM files (at each attempt, so rotated certificates are picked up) and checks
    /// each, so that a bad one is named. Error messages never quote the files' contents.
    fn read_tls(tls: &ZkTls) -> Result<Tls, SourceError> {
        let fail = |what: &'static str, path: &Path, reason: String| SourceError::Tls {
            what,
            path: path.to_owned(),
            reason,
        };
        let read = |what: &'static str, path: &Path| {
            let bytes = std::fs::read(path).map_err(|e| fail(what, path, e.to_string()))?;
            String::from_utf8(bytes).map_err(|_| fail(what, path, "not a PEM file (not text)".to_owned()))
        };
        let certs = |what: &'static str, path: &Path, text: &str| {
            let certs = CertificateDer::pem_slice_iter(text.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| fail(what, path, format!("not valid PEM: {e}")))?;
            if certs.is_empty() {
                return Err(fail(what, path, "no PEM certificate (BEGIN CERTIFICATE) in it".to_owned()));
            }
            Ok(certs)
        };
        let ca_pem = read("ca", &tls.ca)?;
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs("ca", &tls.ca, &ca_pem)? {
            roots.add(cert).map_err(|e| fail("ca", &tls.ca, format!("not a usable CA certificate: {e}")))?;
        }
        let mut options =
            zk::TlsOptions::new().with_pem_ca(&ca_pem).map_err(|e| fail("ca", &tls.ca, e.to_string()))?;
        // ring, as installed by main; named here so that the probe never depends on a default.
        let probe =
            rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map_err(|e| fail("ca", &tls.ca, e.to_string()))?
                .with_root_certificates(roots);
        let probe = match (&tls.cert, &tls.key) {
            (Some(cert), Some(key)) => {
                let cert_pem = read("cert", cert)?;
                let chain = certs("cert", cert, &cert_pem)?;
                let key_pem = read("key", key)?;
                // Only the kind of failure: pem's messages may quote a line of the file.
                let der = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| match e {
                    pem::Error::NoItemsFound => {
                        fail("key", key, "no PEM private key (PKCS#8, PKCS#1 or SEC1) in it".to_owned())
                    }
                    _ => fail("key", key, "not a valid PEM private key".to_owned()),
                })?;
                let probe = probe.with_client_auth_cert(chain, der).map_err(|e| {
                    fail("key", key, format!("does not go with cert {}: {e}", cert.display()))
                })?;
                options = options
                    .with_pem_identity(&cert_pem, &key_pem)
                    .map_err(|e| fail("cert", cert, format!("with key {}: {e}", key.display())))?;
                probe
            }
            _ => probe.with_no_client_auth(),
        };
        Ok(Tls { options, probe: Arc::new(probe) })
    }

    /// Why TLS to the first host that fails at the TLS layer fails. The client library reports
    /// a handshake failure (an unknown CA, a client certificate refused) only as a lost
    /// connection, so after a failed attempt each host is probed with the same settings.
    /// `None` when every host handshakes, or none accepts a TCP connection.
    async fn tls_diagnosis(hosts: &[String], config: Arc<rustls::ClientConfig>) -> Option<String> {
        const STEP: Duration = Duration::from_secs(2);
        for host in hosts {
            let host = host.clone();
            let config = config.clone();
            let probe = tokio::task::spawn_blocking(move || -> Option<String> {
                let (name, port) = host.rsplit_once(':')?;
                let name = name.trim_start_matches('[').trim_end_matches(']');
                let port: u16 = port.parse().ok()?;
                let server = ServerName::try_from(name.to_owned()).ok()?;
                let addr = std::net::ToSocketAddrs::to_socket_addrs(&(name, port)).ok()?.next()?;
                let sock = std::net::TcpStream::connect_timeout(&addr, STEP).ok()?;
                sock.set_read_timeout(Some(STEP)).ok()?;
                sock.set_write_timeout(Some(STEP)).ok()?;
                let conn = rustls::ClientConnection::new(config, server).ok()?;
                let mut tls = rustls::StreamOwned::new(conn, sock);
                let failed = |e: std::io::Error| {
                    let e = match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
                        Some(tls) => tls.to_string(),
                        None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                            "the server closed the connection (not a TLS port, or it refused this client)"
                                .to_owned()
                        }
                        None => e.to_string(),
                    };
                    Some(format!("TLS handshake with {host} failed: {e}"))
                };
                while tls.conn.is_handshaking() {
                    if let Err(e) = tls.conn.complete_io(&mut tls.sock) {
                        return failed(e);
                    }
                }
                if let Err(e) = tls.flush() {
                    return failed(e);
                }
                // In TLS 1.3 a server refuses a client certificate only after the handshake.
                tls.sock.set_read_timeout(Some(Duration::from_millis(300))).ok()?;
                match tls.read(&mut [0u8; 64]) {
                    Err(e) if e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) => failed(e),
                    _ => None,
                }
            });
            if let Ok(Ok(Some(why))) = tokio::time::timeout(STEP * 4, probe).await {
                return Some(why);
            }
        }
        None
    }

    // Library users that skip main's start-up get ring too (an Err means one is installed).
    if cfg.tls.is_some() && rustls::crypto::CryptoProvider::get_default().is_none() {
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    let mut backoff = watch::Backoff::new();
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let mut connector = zk::Client::connector()
            .with_session_timeout(cfg.session_timeout)
            .with_connection_timeout(cfg.session_timeout.min(Duration::from_secs(5)))
            // Files converge soon after a server is back, whatever the session timeout: the
            // library's pause between attempts otherwise doubles up to the session timeout.
            .with_max_reconnect_delay(Duration::from_millis(250))
            .with_fail_eagerly();
        if let Some(auth) = &cfg.auth {
            // Read at each attempt, so a rotated secret is picked up; never logged.
            let secret = read_credentials(&auth.credentials_file)?;
            connector = connector.with_auth(&auth.scheme, &secret);
        }
        // Also read at each attempt; with TLS every host is connected to over TLS.
        let tls = cfg.tls.as_ref().map(read_tls).transpose()?;
        let probe = tls.as_ref().map(|tls| tls.probe.clone());
        let connecting = async {
            match tls {
                Some(tls) => connector.with_tls(tls.options).secure_connect(hosts).await,
                None => connector.connect(hosts).await,
            }
        };
        let attempt = tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            r = tokio::time::timeout(cfg.session_timeout * 2, connecting) => r,
        };
        let mut why = match attempt {
            Ok(Ok(client)) => return Ok(Some(client)),
            Ok(Err(zk::Error::AuthFailed)) => {
                return Err(SourceError::AuthFailed { hosts: hosts.to_owned() });
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "timed out".to_owned(),
        };
        if let Some(probe) = probe {
            let diagnosis = tokio::select! {
                _ = stop.cancelled() => return Ok(None),
                d = tls_diagnosis(&cfg.hosts, probe) => d,
            };
            if let Some(diagnosis) = diagnosis {
                why = format!("{why}; {diagnosis}");
            }
        }
        // First failures are common while an ensemble starts; say it loudly only when it lasts.
        if attempts >= 3 {
            error!(hosts = %hosts, attempt = attempts, error = %why, "cannot connect to zookeeper; files keep their last good contents; retrying");
        } else {
            warn!(hosts = %hosts, attempt = attempts, error = %why, "cannot connect to zookeeper; retrying");
        }
        let pause = backoff.next().max(Duration::from_millis(200));
        if let Some((deadline, timeout)) = deadline
            && tokio::time::Instant::now() + pause >= deadline
        {
            return Err(SourceError::ConnectTimeout { hosts: hosts.to_owned(), timeout });
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// The `credentials_file` contents without the trailing newline editors add.
fn read_credentials(path: &std::path::Path) -> Result<Vec<u8>, SourceError> {
    let mut bytes =
        std::fs::read(path).map_err(|source| SourceError::Credentials { path: path.to_owned(), source })?;
    while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
        bytes.pop();
    }
    Ok(bytes)
}

enum SessionEnd {
    Shutdown,
    Expired,
    Fatal(SourceError),
}

/// One session's watch tasks.
struct Session {
    hosts: String,
    /// The client, channel and settings every watch task of this session uses.
    shared: Arc<watch::Shared>,
    stop: CancellationToken,
    tasks: JoinSet<watch::Ended>,
    /// Per dependency: its task's cancel token and resync trigger.
    watching: HashMap<Dep, (CancellationToken, Arc<Notify>)>,
}

impl Session {
    fn new(
        client: zk::Client,
        mode: WatchMode,
        out: mpsc::Sender<SourceEvent>,
        stop: CancellationToken,
        session_timeout: Duration,
    ) -> Self {
        // Long enough for a slow ensemble, short enough that a dead connection is retried.
        let call_timeout = session_timeout.max(Duration::from_secs(1));
        Session {
            hosts: String::new(),
            shared: Arc::new(watch::Shared { client, mode, out, call_timeout }),
            stop,
            tasks: JoinSet::new(),
            watching: HashMap::new(),
        }
    }

    fn watch(&mut self, dep: Dep) {
        if self.watching.contains_key(&dep) {
            return;
        }
        let stop = self.stop.child_token();
        let poke = Arc::new(Notify::new());
        let ctx = watch::WatchCtx { shared: self.shared.clone(), stop: stop.clone(), poke: poke.clone() };
        self.watching.insert(dep.clone(), (stop, poke));
        self.tasks.spawn(watch::run(ctx, dep));
    }

    fn unwatch(&mut self, dep: &Dep) {
        if let Some((stop, _)) = self.watching.remove(dep) {
            stop.cancel();
        }
    }

    async fn serve(
        &mut self,
        commands: &mut mpsc::UnboundedReceiver<Command>,
        deps: &mut Vec<Dep>,
        stop: &CancellationToken,
    ) -> SessionEnd {
        let mut state = self.shared.client.state_watcher();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return SessionEnd::Shutdown,
                cmd = commands.recv() => match cmd {
                    None => return SessionEnd::Shutdown,
                    Some(Command::Watch(new)) => {
                        for dep in new {
                            if !self.watching.contains_key(&dep) {
                                deps.push(dep.clone());
                                self.watch(dep);
                            }
                        }
                    }
                    Some(Command::Unwatch(old)) => {
                        for dep in &old {
                            self.unwatch(dep);
                        }
                        deps.retain(|d| !old.contains(d));
                    }
                    Some(Command::Resync) => {
                        debug!(watches = self.watching.len(), "resync: re-reading every dependency");
                        for (_, poke) in self.watching.values() {
                            poke.notify_one();
                        }
                    }
                },
                s = state.changed() => match s {
                    zk::SessionState::Disconnected => {
                        warn!("zookeeper connection lost; files keep their last good contents; reconnecting");
                        let _ = self.shared.out.send(SourceEvent::Connection(Connection::Disconnected)).await;
                    }
                    zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly => {
                        info!(session = %self.shared.client.session_id(), "zookeeper connection restored (same session)");
                        let _ = self.shared.out.send(SourceEvent::Connection(Connection::Connected)).await;
                    }
                    zk::SessionState::AuthFailed => {
                        return SessionEnd::Fatal(SourceError::AuthFailed { hosts: self.hosts.clone() });
                    }
                    zk::SessionState::Expired | zk::SessionState::Closed => return SessionEnd::Expired,
                },
                Some(joined) = self.tasks.join_next() => match joined {
                    Ok(watch::Ended::Fatal(e)) => return SessionEnd::Fatal(e),
                    Ok(watch::Ended::SessionOver) => return SessionEnd::Expired,
                    Ok(watch::Ended::Stopped) => {}
                    Err(e) if e.is_panic() => {
                        error!(error = %e, "bug: a watch task panicked; opening a new session to recover");
                        return SessionEnd::Expired;
                    }
                    Err(_) => {}
                },
            }
        }
    }

    async fn shutdown(mut self) {
        self.stop.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}
