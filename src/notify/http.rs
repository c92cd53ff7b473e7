//! Reload by HTTP: one request with an empty body to a hook URL, such as Prometheus's
//! `POST /-/reload`. Any 2xx status is success.
//!
//! One `reqwest::Client` serves every hook for the life of the process, built on first
//! use, so connections and TLS sessions are reused between reloads.

use std::sync::OnceLock;
use std::time::Duration;

use reqwest::header::CONTENT_LENGTH;
use reqwest::{Client, Method, StatusCode};

use super::NotifyError;

/// How much of a failed response's body goes into the error message.
const BODY_EXCERPT: usize = 200;

static CLIENT: OnceLock<Client> = OnceLock::new();

/// The shared client, built on first use.
///
/// Proxies from the environment (`HTTP_PROXY`, ...) are ignored: reload hooks are the
/// application's own endpoints, usually on loopback or in the same pod, and a proxy set
/// for outbound traffic would only be in the way.
fn client() -> Result<&'static Client, reqwest::Error> {
    if let Some(client) = CLIENT.get() {
        return Ok(client);
    }
    let built =
        Client::builder().user_agent(concat!("zkrender/", env!("CARGO_PKG_VERSION"))).no_proxy().build()?;
    // Two first reloads racing here both build a client; one is kept, the other dropped.
    Ok(CLIENT.get_or_init(|| built))
}

/// Sends `method url` with an empty body; the whole exchange must finish within `timeout`.
pub(super) async fn request(method: &str, url: &str, timeout: Duration) -> Result<(), NotifyError> {
    let parsed = Method::from_bytes(method.as_bytes())
        .map_err(|_| NotifyError::HttpMethod { method: method.to_owned(), url: url.to_owned() })?;
    let client = client().map_err(|source| NotifyError::HttpClient {
        method: method.to_owned(),
        url: url.to_owned(),
        source,
    })?;
    match tokio::time::timeout(timeout, exchange(client, parsed, url)).await {
        Ok(Ok(None)) => Ok(()),
        Ok(Ok(Some((status, body)))) => {
            Err(NotifyError::HttpStatus { method: method.to_owned(), url: url.to_owned(), status, body })
        }
        // The message already names the URL; reqwest's own copy would repeat it.
        Ok(Err(source)) => Err(NotifyError::HttpRequest {
            method: method.to_owned(),
            url: url.to_owned(),
            source: source.without_url(),
        }),
        Err(_elapsed) => {
            Err(NotifyError::HttpTimeout { method: method.to_owned(), url: url.to_owned(), timeout })
        }
    }
}

/// Sends the request. `None` on a 2xx status, otherwise the status and the start of the
/// body (lossily decoded, trimmed).
async fn exchange(
    client: &Client,
    method: Method,
    url: &str,
) -> Result<Option<(StatusCode, String)>, reqwest::Error> {
    let mut request = client.request(method.clone(), url);
    // hyper sends no length for an empty body, but some servers refuse a POST or PUT
    // without one (411 Length Required).
    if method != Method::GET && method != Method::HEAD {
        request = request.header(CONTENT_LENGTH, "0");
    }
    let mut response = request.send().await?;
    let status = response.status();
    if status.is_success() {
        return Ok(None);
    }
    // Only the start of the body goes into the message, so read no further than that.
    // A body that fails halfway still leaves the status worth reporting.
    let mut body = Vec::new();
    while body.len() < BODY_EXCERPT {
        match response.chunk().await {
            Ok(Some(chunk)) => body.extend_from_slice(&chunk),
            Ok(None) | Err(_) => break,
        }
    }
    body.truncate(BODY_EXCERPT);
    Ok(Some((status, String::from_utf8_lossy(&body).trim().to_owned())))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ReloadAction, ReloadSpec};
    use crate::notify::reload;
    use std::error::Error as _;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A real HTTP/1.1 server on loopback answering every request with `status` and
    /// `body`, recording each request's head. `status = None` accepts and never answers.
    struct Server {
        addr: SocketAddr,
        requests: Arc<Mutex<Vec<String>>>,
    }

    impl Server {
        async fn start(status: Option<&'static str>, body: String) -> Server {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let requests = Arc::new(Mutex::new(Vec::new()));
            let seen = Arc::clone(&requests);
            tokio::spawn(async move {
                loop {
                    let (mut stream, _) = listener.accept().await.unwrap();
                    let seen = Arc::clone(&seen);
                    let body = body.clone();
                    tokio::spawn(async move {
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match stream.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        seen.lock().unwrap().push(String::from_utf8_lossy(&head).into_owned());
                        let Some(status) = status else {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        };
                        let response = format!(
                            "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = stream.write_all(response.as_bytes()).await;
                        let _ = stream.shutdown().await;
                    });
                }
            });
            Server { addr, requests }
        }

        fn url(&self) -> String {
            format!("http://{}/-/reload", self.addr)
        }

        fn requests(&self) -> Vec<String> {
            self.requests.lock().unwrap().clone()
        }
    }

    fn spec(url: String, method: &str, retries: u32, timeout: Duration) -> ReloadSpec {
        ReloadSpec {
            splay: std::time::Duration::ZERO,
            action: ReloadAction::Http { url, method: method.into() },
            retries,
            timeout,
        }
    }

    #[tokio::test]
    async fn a_2xx_answer_is_success() {
        let server = Server::start(Some("200 OK"), "reloaded".into()).await;
        reload(&spec(server.url(), "POST", 2, Duration::from_secs(5)), &crate::exec::ChildHandle::none())
            .await
            .unwrap();
        let requests = server.requests();
        assert_eq!(requests.len(), 1);
        assert!(requests[0].starts_with("POST /-/reload HTTP/1.1\r\n"), "{}", requests[0]);
        assert!(requests[0].to_ascii_lowercase().contains("content-length: 0\r\n"), "{}", requests[0]);
    }

    #[tokio::test]
    async fn uses_the_configured_method() {
        let server = Server::start(Some("204 No Content"), String::new()).await;
        reload(&spec(server.url(), "PUT", 0, Duration::from_secs(5)), &crate::exec::ChildHandle::none())
            .await
            .unwrap();
        assert!(server.requests()[0].starts_with("PUT /-/reload "));
    }

    #[tokio::test]
    async fn a_500_is_retried_and_reported_with_the_start_of_the_body() {
        let server = Server::start(Some("500 Internal Server Error"), "x".repeat(1000)).await;
        let url = server.url();
        let err =
            reload(&spec(url.clone(), "POST", 2, Duration::from_secs(5)), &crate::exec::ChildHandle::none())
                .await
                .unwrap_err();
        assert_eq!(server.requests().len(), 3);
        assert_eq!(
            err.to_string(),
            format!("http POST {url}: status 500 Internal Server Error: {}", "x".repeat(200))
        );
        assert_eq!(err.kind(), "http");
    }

    #[tokio::test]
    async fn connection_refused_is_an_error_with_its_cause() {
        let port = {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            listener.local_addr().unwrap().port()
        }; // closed again: nothing listens there now
        let url = format!("http://127.0.0.1:{port}/-/reload");
        let started = Instant::now();
        let err =
            reload(&spec(url.clone(), "POST", 1, Duration::from_secs(5)), &crate::exec::ChildHandle::none())
                .await
                .unwrap_err();
        assert!(started.elapsed() >= Duration::from_millis(100), "one backoff before the retry");
        assert!(matches!(err, NotifyError::HttpRequest { .. }), "{err:?}");
        assert_eq!(err.to_string(), format!("http POST {url}: request failed"));
        let mut chain = String::new();
        let mut cause = err.source();
        while let Some(c) = cause {
            chain.push_str(&format!("{c}; "));
            cause = c.source();
        }
        assert!(chain.to_lowercase().contains("refused"), "{chain}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_times_out() {
        let server = Server::start(None, String::new()).await;
        let url = server.url();
        let started = Instant::now();
        let err = reload(
            &spec(url.clone(), "POST", 0, Duration::from_millis(200)),
            &crate::exec::ChildHandle::none(),
        )
        .await
        .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(1), "took {:?}", started.elapsed());
        assert_eq!(err.to_string(), format!("http POST {url}: timed out after 200ms"));
    }

    #[tokio::test]
    async fn an_invalid_method_is_an_error() {
        let err = reload(
            &spec("http://127.0.0.1:1/".into(), "NOT VALID", 0, Duration::from_secs(1)),
            &crate::exec::ChildHandle::none(),
        )
        .await
        .unwrap_err();
        assert!(matches!(err, NotifyError::HttpMethod { .. }), "{err:?}");
    }
}
