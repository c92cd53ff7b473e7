//! TLS to ZooKeeper (`[zookeeper] tls`): the PEM files read and checked into the client
//! library's options, and a probe that says why a handshake fails, which the library does not.
//!
//! Key material is never logged or quoted in an error; only the file and the kind of problem.

use std::io::{Read as _, Write as _};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::{self, PemObject as _};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use zookeeper_client as zk;

use super::SourceError;
use crate::config::ZkTls;

/// Installs ring as the process's rustls provider unless one is installed already, for
/// library users that skip main's start-up.
pub(super) fn install_default_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // An Err means another thread installed one first: fine either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}

/// `[zookeeper] tls` read and checked: the client library's options, and the same
/// settings as a rustls config for [`diagnosis`].
pub(super) struct Tls {
    pub(super) options: zk::TlsOptions,
    pub(super) probe: Arc<rustls::ClientConfig>,
}

/// Reads the PEM files (at each attempt, so rotated certificates are picked up) and checks
/// each, so that a bad one is named. Error messages never quote the files' contents.
pub(super) fn read(tls: &ZkTls) -> Result<Tls, SourceError> {
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
            let probe = probe
                .with_client_auth_cert(chain, der)
                .map_err(|e| fail("key", key, format!("does not go with cert {}: {e}", cert.display())))?;
            options = options
                .with_pem_identity(&cert_pem, &key_pem)
                .map_err(|e| fail("cert", cert, format!("with key {}: {e}", key.display())))?;
            probe
        }
        _ => probe.with_no_client_auth(),
    };
    Ok(Tls { options, probe: Arc::new(probe) })
}

/// Why a TLS handshake over `sock` (connected to `name`) fails with these settings, or `None`
/// when it succeeds. The client library reports a handshake failure (an unknown CA, a client
/// certificate refused) only as a lost connection, so the probe does the handshake itself.
/// Blocking: run it on a blocking thread. Each read and write waits at most `step`.
pub(super) fn handshake(
    sock: std::net::TcpStream,
    name: &str,
    config: Arc<rustls::ClientConfig>,
    step: Duration,
) -> Option<String> {
    let server = ServerName::try_from(name.to_owned()).ok()?;
    sock.set_read_timeout(Some(step)).ok()?;
    sock.set_write_timeout(Some(step)).ok()?;
    let conn = rustls::ClientConnection::new(config, server).ok()?;
    let mut tls = rustls::StreamOwned::new(conn, sock);
    let failed = |e: std::io::Error| {
        Some(match e.get_ref().and_then(|inner| inner.downcast_ref::<rustls::Error>()) {
            Some(tls) => tls_cause(tls),
            None if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                "the server closed the connection (not a TLS port, or it refused this client)".to_owned()
            }
            None if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                "no answer (not a TLS port?)".to_owned()
            }
            None => e.to_string(),
        })
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
}

/// rustls's words, with the plain name of the commonest failure first.
fn tls_cause(e: &rustls::Error) -> String {
    match e {
        rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer) => {
            format!("unknown CA ({e}: the server's certificate is not signed by the `ca` file)")
        }
        _ => e.to_string(),
    }
}
