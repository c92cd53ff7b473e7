//! The HTTP endpoint over real TCP: a server on 127.0.0.1:0, reqwest as the client.
//! No ZooKeeper: the endpoint only reads the report the pipeline publishes, so these
//! tests publish reports themselves.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use zkrender::ops::{self, metrics};
use zkrender::status::{DepStatus, FileStatus, ReloadStatus, StatusReport, ZkStatus};

/// A running endpoint and the handles a test drives it with.
struct Server {
    base: String,
    publish: watch::Sender<Arc<StatusReport>>,
    alive: Arc<AtomicBool>,
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
    client: reqwest::Client,
}

async fn start(report: StatusReport) -> Server {
    let listener = ops::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (publish, status) = watch::channel(Arc::new(report));
    let alive = Arc::new(AtomicBool::new(true));
    let stop = CancellationToken::new();
    let flag = Arc::clone(&alive);
    let task = tokio::spawn(ops::serve(listener, status, move || flag.load(Ordering::SeqCst), stop.clone()));
    let client = reqwest::Client::builder().no_proxy().timeout(Duration::from_secs(5)).build().unwrap();
    Server { base, publish, alive, stop, task, client }
}

impl Server {
    async fn get(&self, path: &str) -> (u16, String, String) {
        let response = self.client.get(format!("{}{path}", self.base)).send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, content_type, response.text().await.unwrap())
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, _, body) = self.get(path).await;
        (status, serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}")))
    }
}

fn file(dest: &str, settled: bool) -> FileStatus {
    FileStatus {
        dest: dest.into(),
        state: if settled { "ok" } else { "pending" }.into(),
        settled,
        ..Default::default()
    }
}

fn not_ready() -> StatusReport {
    let mut waiting = file("/etc/app/app.conf", false);
    waiting.reason = Some("znode_missing".into());
    StatusReport {
        zookeeper: ZkStatus {
            hosts: "127.0.0.1:2181".into(),
            state: "connected".into(),
            ..Default::default()
        },
        files: vec![waiting.into(), file("/etc/app/other.conf", true).into()],
        ..Default::default()
    }
}

fn ready() -> StatusReport {
    let mut report = not_ready();
    report.ready = true;
    for f in &mut report.files {
        let f = Arc::make_mut(f);
        f.settled = true;
        f.state = "ok".into();
        f.reason = None;
    }
    report
}

#[tokio::test]
async fn healthz_follows_the_alive_closure() {
    let server = start(not_ready()).await;
    let (status, _, body) = server.get("/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));

    server.alive.store(false, Ordering::SeqCst);
    assert_eq!(server.get("/healthz").await.0, 503);

    server.alive.store(true, Ordering::SeqCst);
    assert_eq!(server.get("/healthz").await.0, 200);
}

#[tokio::test]
async fn readyz_flips_to_200_exactly_when_a_ready_report_is_published() {
    let server = start(not_ready()).await;
    let (status, body) = server.get_json("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(
        body,
        json!({"ready": false, "pending": [
            {"dest": "/etc/app/app.conf", "state": "pending", "reason": "znode_missing", "error": null}
        ]})
    );

    // Another not-ready report (pipeline progress) keeps it at 503.
    let mut failing = not_ready();
    Arc::make_mut(&mut failing.files[0]).state = "failed".into();
    Arc::make_mut(&mut failing.files[0]).last_error = Some("rendering /etc/app/app.conf: boom".into());
    server.publish.send(Arc::new(failing)).unwrap();
    let (status, body) = server.get_json("/readyz").await;
    assert_eq!(status, 503);
    assert_eq!(body["pending"][0]["error"], "rendering /etc/app/app.conf: boom");

    server.publish.send(Arc::new(ready())).unwrap();
    let (status, body) = server.get_json("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"ready": true, "degraded": false, "zookeeper": "connected"}));
}

#[tokio::test]
async fn zookeeper_outage_after_ready_stays_200_but_degraded() {
    let server = start(ready()).await;
    let mut outage = ready();
    outage.degraded = true;
    outage.zookeeper.state = "disconnected".into();
    server.publish.send(Arc::new(outage)).unwrap();

    let (status, body) = server.get_json("/readyz").await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"ready": true, "degraded": true, "zookeeper": "disconnected"}));
}

#[tokio::test]
async fn metrics_are_openmetrics_text_with_agent_counters_and_file_gauges() {
    // The registry is process-global and each scrape replaces the per-file series with
    // those of the scraped report, so this is the only test here that scrapes.
    let mut report = ready();
    Arc::make_mut(&mut report.files[0]).dest = "/etc/metrics-test.conf".into();
    let server = start(report).await;
    let (status, content_type, body) = server.get("/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/openmetrics-text; version=1.0.0; charset=utf-8");
    assert!(body.contains("\nzkrender_files_written_total "), "{body}");
    assert!(body.contains("zkrender_file_up_to_date{dest=\"/etc/metrics-test.conf\"} 1"), "{body}");
    assert!(body.ends_with("# EOF\n"));

    // Counters are global: other tests may bump them too, so compare, don't pin.
    let before = written_total(&body);
    metrics().files_written_total.inc();
    let after = written_total(&server.get("/metrics").await.2);
    assert!(after > before, "{before} -> {after}");
}

fn written_total(text: &str) -> u64 {
    text.lines().find_map(|l| l.strip_prefix("zkrender_files_written_total ")).unwrap().parse().unwrap()
}

#[tokio::test]
async fn status_json_round_trips_into_the_report() {
    let mut report = ready();
    Arc::make_mut(&mut report.files[0]).deps = vec![DepStatus {
        znode: "/db/url".into(),
        kind: "data".into(),
        exists: Some(true),
        mzxid: Some(0x1a),
        version: Some(3),
    }]
    .into();
    Arc::make_mut(&mut report.files[0]).last_write = Some(1_700_000_000.25);
    Arc::make_mut(&mut report.files[0]).last_reload =
        Some(ReloadStatus { outcome: "ok".into(), at: 1_700_000_001.0, error: None });
    let server = start(report.clone()).await;

    let (status, content_type, body) = server.get("/status").await;
    assert_eq!(status, 200);
    assert_eq!(content_type, "application/json");
    assert!(body.contains("\n  \"ready\": true"), "not pretty: {body}");
    let parsed: StatusReport = serde_json::from_str(&body).unwrap();
    assert_eq!(parsed, report);
}

#[tokio::test]
async fn fetch_status_reads_the_served_report() {
    let server = start(ready()).await;
    let listen = server.base.trim_start_matches("http://");
    let fetched = ops::fetch_status(listen, Duration::from_secs(5)).await.unwrap();
    assert_eq!(fetched, ready());
}

#[tokio::test]
async fn unknown_path_is_404_and_other_methods_405() {
    let server = start(ready()).await;
    assert_eq!(server.get("/nope").await.0, 404);
    let post = server.client.post(format!("{}/status", server.base)).send().await.unwrap();
    assert_eq!(post.status().as_u16(), 405);
    assert_eq!(post.headers()["allow"], "GET");
}

#[tokio::test]
async fn server_stops_on_cancel_and_closes_the_port() {
    let server = start(ready()).await;
    // A pooled keep-alive connection must not hold shutdown up.
    assert_eq!(server.get("/healthz").await.0, 200);

    server.stop.cancel();
    let result = tokio::time::timeout(Duration::from_secs(2), server.task).await;
    result.expect("serve did not return within 2s of cancel").unwrap().unwrap();

    let fresh = reqwest::Client::builder().no_proxy().build().unwrap();
    let err = fresh.get(format!("{}/healthz", server.base)).send().await.unwrap_err();
    assert!(err.is_connect(), "{err:?}");
}

#[tokio::test]
async fn bind_error_names_the_address() {
    let taken = ops::bind("127.0.0.1:0").await.unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let err = ops::bind(&addr).await.unwrap_err();
    assert_eq!(err.to_string(), format!("binding the HTTP endpoint to {addr}"));
}

#[tokio::test]
async fn fetch_status_without_agent_hints_at_the_listen_setting() {
    // Bind then drop: a port on which nothing listens.
    let addr = ops::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
    let err = ops::fetch_status(&addr, Duration::from_secs(2)).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "no answer from http://{addr}/status (is zkrender running with [agent] listen = \"{addr}\"?)"
        )
    );
}
