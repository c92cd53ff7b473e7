//! TLS to ZooKeeper against a real server: Debian's ZooKeeper 3.8 with a
//! `secureClientPort`, started through `scripts/zk`, with certificates made
//! by `openssl` for each test.
//!
//! How the server is set up (see [`SecureZk::start`]):
//! - TLS needs the Netty connection factory
//!   (`serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory`).
//!   Debian's zookeeper.jar names its Netty jars in its manifest's Class-Path,
//!   but not netty-codec, which Netty's SslHandler needs (without it every
//!   connection fails with `NoClassDefFoundError: io/netty/handler/codec/
//!   ByteToMessageDecoder`). `scripts/zk` fixes its own `-cp`, so the jar goes
//!   on the module path instead, through `ZK_JAVA_OPTS`: `--module-path
//!   /usr/share/java/netty-codec.jar --add-modules io.netty.codec` (an
//!   automatic module, which reads the class path; the app class loader
//!   serves both).
//! - ZooKeeper 3.8 reads PEM stores: `ssl.keyStore.type=PEM` with one file
//!   holding the server's key and certificate, `ssl.trustStore.type=PEM` with
//!   the CA certificate. No keytool, JKS or PKCS12 needed.
//! - The plain `clientPort` stays: the test seeds and changes znodes there
//!   with the harness's client, and `scripts/zk` checks readiness there.
//!
//! The server certificate is for CN=localhost with subjectAltName
//! IP:127.0.0.1 and DNS:localhost; the agent connects to 127.0.0.1 and
//! verifies the name, as it does by default.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{Agent, ConfigBuilder, Zk, connect, free_port, raw_file, run_ok, set, wait_for_file};
use tempfile::TempDir;
use zookeeper_client::Client;

const WAIT: Duration = Duration::from_secs(30);

/// Where Debian's Java libraries are (as `scripts/zk` defaults to).
const JAVA_LIB: &str = "/usr/share/java";

// ------------------------------------------------------------------ certificates

/// A CA, a server certificate and a client certificate it signed, and an
/// unrelated CA, all PEM files in a temporary directory.
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::Builder::new().prefix("zkrender-tls-").tempdir().expect("temp dir");
        let pki = Pki { dir };
        pki.make_ca("ca", "zkrender test CA");
        pki.make_ca("other-ca", "some other CA");
        pki.make_leaf(
            "server",
            "/CN=localhost",
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        );
        pki.make_leaf("client", "/CN=zkrender", "extendedKeyUsage=clientAuth\n");
        // ZooKeeper's PEM keystore: the private key and the certificate in one file.
        let mut keystore = fs::read(pki.path("server.key")).unwrap();
        keystore.extend(fs::read(pki.path("server.pem")).unwrap());
        fs::write(pki.path("server-keystore.pem"), keystore).unwrap();
        pki
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn openssl(&self, args: &[&str]) {
        run_ok(Command::new("openssl").args(args).current_dir(self.dir.path()));
    }

    /// `NAME.pem` (self-signed CA certificate) and `NAME.key`.
    fn make_ca(&self, name: &str, cn: &str) {
        let extensions = [
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ];
        common::make_self_signed_ca(self.dir.path(), name, cn, "2", &extensions);
    }

    /// `NAME.pem` signed by `ca` (with a random serial: no `-CAserial`), and `NAME.key`, with the
    /// extensions in `ext` (openssl syntax).
    fn make_leaf(&self, name: &str, subject: &str, ext: &str) {
        let (key, csr, pem, ext_file) =
            (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"), format!("{name}.ext"));
        fs::write(
            self.path(&ext_file),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n{ext}"),
        )
        .unwrap();
        self.openssl(&[
            "req", "-newkey", "rsa:2048", "-nodes", "-keyout", &key, "-out", &csr, "-subj", subject,
        ]);
        self.openssl(&[
            "x509", "-req", "-in", &csr, "-CA", "ca.pem", "-CAkey", "ca.key", "-days", "2", "-out", &pem,
            "-extfile", &ext_file,
        ]);
    }
}

// ------------------------------------------------------------------ server

/// `ssl.clientAuth` of the server.
#[derive(Clone, Copy)]
enum ClientAuth {
    Need,
    None,
}

/// A standalone ZooKeeper with a plain client port and a TLS client port,
/// stopped on drop (its log printed first when a test fails).
struct SecureZk {
    zk: Zk,
    /// The plain client port's connect string, for seeding znodes.
    plain: String,
    /// `127.0.0.1:<secureClientPort>`.
    secure: String,
}

impl SecureZk {
    fn start(pki: &Pki, auth: ClientAuth) -> SecureZk {
        let codec = Path::new(JAVA_LIB).join("netty-codec.jar");
        assert!(codec.exists(), "{} is missing (Debian's libnetty-java)", codec.display());
        let secure_port = free_port();
        let extra = [
            format!("secureClientPort={secure_port}"),
            "secureClientPortAddress=127.0.0.1".to_owned(),
            "serverCnxnFactory=org.apache.zookeeper.server.NettyServerCnxnFactory".to_owned(),
            format!("ssl.keyStore.location={}", pki.path("server-keystore.pem").display()),
            "ssl.keyStore.type=PEM".to_owned(),
            format!("ssl.trustStore.location={}", pki.path("ca.pem").display()),
            "ssl.trustStore.type=PEM".to_owned(),
            format!(
                "ssl.clientAuth={}",
                match auth {
                    ClientAuth::Need => "need",
                    ClientAuth::None => "none",
                }
            ),
        ]
        .join("\n");
        let java_opts = format!("--module-path {} --add-modules io.netty.codec", codec.display());
        let zk = Zk::standalone_with_env(&[("ZK_EXTRA_CFG", &extra), ("ZK_JAVA_OPTS", &java_opts)]);
        let plain = zk.hosts().to_owned();
        SecureZk { zk, plain, secure: format!("127.0.0.1:{secure_port}") }
    }

    /// The server's log so far (TLS failures are logged there too).
    fn log(&self) -> String {
        let state = self.zk.state_dir().expect("a server the test started");
        fs::read_to_string(state.join("zk1/zk.log")).unwrap_or_default()
    }
}

impl Drop for SecureZk {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().filter(|l| !l.starts_with('\t')).collect();
            eprintln!(
                "----- ZooKeeper log, last lines:\n{}\n-----",
                lines[lines.len().saturating_sub(40)..].join("\n")
            );
        }
    }
}

// ------------------------------------------------------------------ agent

/// Writes a config for an agent that renders `/app/key` into `dest`, with
/// `tls` (a TOML inline table, or nothing) in `[zookeeper]`.
fn agent_config(dir: &Path, hosts: &str, tls: Option<String>, dest: &Path) -> PathBuf {
    let tls = tls.map(|t| format!("tls = {t}")).unwrap_or_default();
    ConfigBuilder::new(dir, hosts).zookeeper(&tls).write(&raw_file(dest, "/app/key"))
}

/// A PKI, a server with `auth`, and `/app/key` set to `value` through the plain port.
async fn secure_server(auth: ClientAuth, value: &[u8]) -> (Pki, SecureZk, Client) {
    let pki = Pki::new();
    let zk = SecureZk::start(&pki, auth);
    let client = connect(&zk.plain).await;
    set(&client, "/app/key", value).await;
    (pki, zk, client)
}

fn tls_table(ca: &Path, identity: Option<(&Path, &Path)>) -> String {
    match identity {
        Some((cert, key)) => format!("{{ ca = {ca:?}, cert = {cert:?}, key = {key:?} }}"),
        None => format!("{{ ca = {ca:?} }}"),
    }
}

/// The agent logs `needle` (at least `count` times) and has written no file.
fn assert_refused(agent: &Agent, needle: &str, count: usize, dest: &Path) {
    agent.wait_for_log_count(needle, count, WAIT);
    assert!(!dest.exists(), "{} was written; log:\n{}", dest.display(), agent.log());
    assert!(!agent.log().contains("connected to zookeeper"), "it connected; log:\n{}", agent.log());
}

// ------------------------------------------------------------------ tests

/// With a client certificate the server requires, the agent renders over TLS
/// and follows a change; without one the server refuses it.
#[tokio::test(flavor = "multi_thread")]
async fn renders_over_tls_with_a_client_certificate() {
    let (pki, zk, client) = secure_server(ClientAuth::Need, b"v1").await;

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.txt");
    let identity = Some((pki.path("client.pem"), pki.path("client.key")));
    let tls = tls_table(&pki.path("ca.pem"), identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())));
    let config = agent_config(dir.path(), &zk.secure, Some(tls), &dest);
    let agent = Agent::run(&config);
    wait_for_file(&dest, b"v1", WAIT);
    agent.wait_for_log(&format!("connected to zookeeper hosts={}", zk.secure), WAIT);
    set(&client, "/app/key", b"v2").await;
    wait_for_file(&dest, b"v2", WAIT);

    // The CA but no client certificate: the server ends the handshake.
    let other = tempfile::tempdir().unwrap();
    let other_dest = other.path().join("out.txt");
    let config =
        agent_config(other.path(), &zk.secure, Some(tls_table(&pki.path("ca.pem"), None)), &other_dest);
    let refused = Agent::run(&config);
    assert_refused(&refused, "TLS handshake failed: received fatal alert: BadCertificate", 1, &other_dest);

    assert_eq!(agent.stop().code(), Some(0), "log:\n{}", agent.log());
    assert_eq!(refused.stop().code(), Some(0), "log:\n{}", refused.log());
    // The key's contents never reach the log.
    let key = fs::read_to_string(pki.path("client.key")).unwrap();
    let secret_line = key.lines().nth(1).expect("a PEM body line");
    assert!(!agent.log().contains(secret_line) && !refused.log().contains(secret_line));
}

/// Without `tls` against the TLS port nothing is written and connecting fails;
/// with a CA that did not sign the server's certificate the agent says so and
/// writes nothing, until the CA file is replaced by the right one (the files
/// are read at each connect attempt).
#[tokio::test(flavor = "multi_thread")]
async fn plain_or_wrong_ca_against_the_tls_port_writes_nothing() {
    let (pki, zk, _client) = secure_server(ClientAuth::Need, b"secret").await;

    let plain_dir = tempfile::tempdir().unwrap();
    let plain_dest = plain_dir.path().join("out.txt");
    let plain = Agent::run(&agent_config(plain_dir.path(), &zk.secure, None, &plain_dest));

    let wrong_dir = tempfile::tempdir().unwrap();
    let wrong_dest = wrong_dir.path().join("out.txt");
    let ca = wrong_dir.path().join("ca.pem");
    fs::copy(pki.path("other-ca.pem"), &ca).unwrap();
    let identity = (pki.path("client.pem"), pki.path("client.key"));
    let tls = tls_table(&ca, Some((&identity.0, &identity.1)));
    let wrong = Agent::run(&agent_config(wrong_dir.path(), &zk.secure, Some(tls), &wrong_dest));

    // The first failure is logged at error level, with the cause per host (then quiet).
    assert_refused(
        &plain,
        "cannot connect to zookeeper; files keep their last good contents",
        1,
        &plain_dest,
    );
    assert_refused(&wrong, "invalid peer certificate: UnknownIssuer", 1, &wrong_dest);
    assert!(
        wrong.log().contains(&format!("{}: TLS handshake failed: unknown CA", zk.secure)),
        "log:\n{}",
        wrong.log()
    );
    assert!(plain.log().contains("a TLS-only port?"), "log:\n{}", plain.log());
    assert!(!plain_dest.exists(), "the plain agent wrote {}", plain_dest.display());

    // Rotating the CA file to the right one is picked up at the next attempt.
    let replacement = wrong_dir.path().join("ca.pem.new");
    fs::copy(pki.path("ca.pem"), &replacement).unwrap();
    fs::rename(&replacement, &ca).unwrap();
    wait_for_file(&wrong_dest, b"secret", WAIT);

    assert_eq!(plain.stop().code(), Some(0), "log:\n{}", plain.log());
    assert_eq!(wrong.stop().code(), Some(0), "log:\n{}", wrong.log());
}

/// `ssl.clientAuth=none`: the CA alone is enough.
#[tokio::test(flavor = "multi_thread")]
async fn server_without_client_auth_needs_only_the_ca() {
    let (pki, zk, client) = secure_server(ClientAuth::None, b"one").await;

    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("out.txt");
    let config = agent_config(dir.path(), &zk.secure, Some(tls_table(&pki.path("ca.pem"), None)), &dest);
    let agent = Agent::run(&config);
    wait_for_file(&dest, b"one", WAIT);
    set(&client, "/app/key", b"two").await;
    wait_for_file(&dest, b"two", WAIT);
    assert_eq!(agent.stop().code(), Some(0), "log:\n{}", agent.log());
}

/// A key file that holds no key stops the agent with an error naming the file.
#[test]
fn unreadable_key_is_a_clear_error() {
    let pki = Pki::new();
    let dir = tempfile::tempdir().unwrap();
    let bad_key = dir.path().join("client.key");
    fs::write(&bad_key, "not a key\n").unwrap();
    // Nothing listens: the files are read before any connection is tried.
    let hosts = format!("127.0.0.1:{}", free_port());
    let tls = tls_table(&pki.path("ca.pem"), Some((&pki.path("client.pem"), &bad_key)));
    let config = agent_config(dir.path(), &hosts, Some(tls), &dir.path().join("out.txt"));
    let agent = Agent::run(&config);
    let status = agent.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1), "log:\n{}", agent.log());
    assert!(
        agent.log().contains(&format!("error: zookeeper tls key {}: no PEM private key", bad_key.display())),
        "log:\n{}",
        agent.log()
    );
}
