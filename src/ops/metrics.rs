//! The process-global Prometheus registry: every `zkrender_*` metric, in one place.
//!
//! Counters and histograms are bumped by the stage that sees the event (source, pipeline,
//! notify) through [`metrics()`]. Everything that describes *state* rather than events
//! (readiness, the ZooKeeper connection, per-file freshness) is instead derived from the
//! [`StatusReport`] at scrape time by [`Metrics::update_from_report`], so a gauge can never
//! disagree with `/status` and staleness keeps growing between pipeline cycles.
//!
//! Label values are closed sets ([`ReloadKind`], [`Outcome`]) or a configured `dest`, so
//! the number of series is bounded by the configuration.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::config::ReloadAction;
use crate::status::StatusReport;

/// The `Content-Type` of [`Metrics::encode`]'s output (OpenMetrics text 1.0.0).
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// `zkrender_reload_duration_seconds` buckets: 1 ms (a signal) to 30 s (a slow command).
const RELOAD_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// `zkrender_change_to_write_seconds` buckets: 0.1 ms to 10 s in 1-2.5-5 steps (roughly
/// ×2.5 each), readable in dashboards unlike powers of an irrational factor.
const CHANGE_TO_WRITE_BUCKETS: [f64; 16] =
    [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// The kind of reload action, the `kind` label of `zkrender_reloads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReloadKind {
    Signal,
    Http,
    Command,
    /// `restart = true` under `zkrender exec`.
    Restart,
}

impl ReloadKind {
    /// Every kind, to create their series at start (a counter that appears only after
    /// its first increment breaks `rate()` and `increase()`).
    pub const ALL: [ReloadKind; 4] =
        [ReloadKind::Signal, ReloadKind::Http, ReloadKind::Command, ReloadKind::Restart];

    /// The label value: `signal`, `http` or `command` (as `NotifyError::kind` spells it).
    pub fn as_str(self) -> &'static str {
        match self {
            ReloadKind::Signal => "signal",
            ReloadKind::Http => "http",
            ReloadKind::Command => "command",
            ReloadKind::Restart => "restart",
        }
    }
}

impl From<&ReloadAction> for ReloadKind {
    fn from(action: &ReloadAction) -> Self {
        match action {
            ReloadAction::Signal { .. } => ReloadKind::Signal,
            ReloadAction::Http { .. } => ReloadKind::Http,
            ReloadAction::Command { .. } => ReloadKind::Command,
            ReloadAction::Restart => ReloadKind::Restart,
        }
    }
}

impl EncodeLabelValue for ReloadKind {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// How an attempt ended, the `outcome` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Ok,
    Failed,
}

impl Outcome {
    /// Both outcomes, to create their series at start.
    pub const ALL: [Outcome; 2] = [Outcome::Ok, Outcome::Failed];

    /// `Ok` when `ok`, else `Failed`.
    pub fn from_ok(ok: bool) -> Self {
        if ok { Outcome::Ok } else { Outcome::Failed }
    }

    /// The label value: `ok` or `failed` (as in `/status`).
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
        }
    }
}

impl EncodeLabelValue for Outcome {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// Labels of `zkrender_reloads_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReloadLabels {
    pub kind: ReloadKind,
    pub outcome: Outcome,
}

/// Labels of `zkrender_config_reloads_total`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: Outcome,
}

/// Labels of the per-file gauges: the `dest` as configured (the word used everywhere).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct DestLabels {
    pub dest: String,
}

/// A gauge holding seconds (or a Unix time) as a float.
pub type SecondsGauge = Gauge<f64, AtomicU64>;

/// Every metric the agent exports. Get the one instance with [`metrics()`].
///
/// Fields are the prometheus-client handles: increment them directly, or use the
/// methods below where a call would otherwise take several steps.
#[derive(Debug)]
pub struct Metrics {
    /// `zkrender_zk_connected`: 1 while a ZooKeeper session is connected. Set from the
    /// report at scrape time.
    pub zk_connected: Gauge,
    /// `zkrender_zk_session_expirations_total`.
    pub zk_session_expirations_total: Counter,
    /// `zkrender_zk_reconnects_total`: connection re-established within the same session
    /// or after an expiry.
    pub zk_reconnects_total: Counter,
    /// `zkrender_watch_events_total`: updates received from ZooKeeper.
    pub watch_events_total: Counter,
    /// `zkrender_renders_total`: template renders attempted.
    pub renders_total: Counter,
    /// `zkrender_render_errors_total`.
    pub render_errors_total: Counter,
    /// `zkrender_renders_patched_total`: of the renders, changes patched into a file's last
    /// output instead of running its template (`render::Incremental`).
    pub renders_patched_total: Counter,
    /// `zkrender_files_written_total`: writes that changed a file on disk.
    pub files_written_total: Counter,
    /// `zkrender_check_failures_total`: rendered files rejected by their check command.
    pub check_failures_total: Counter,
    /// `zkrender_reloads_total{kind, outcome}`: reload actions after all retries.
    pub reloads_total: Family<ReloadLabels, Counter>,
    /// `zkrender_reload_duration_seconds`: one reload including its retries.
    pub reload_duration_seconds: Histogram,
    /// `zkrender_file_last_write_timestamp_seconds{dest}`: Unix time of the last write
    /// that changed the file; absent until the agent has written it once.
    pub file_last_write_timestamp_seconds: Family<DestLabels, SecondsGauge>,
    /// `zkrender_file_stale_seconds{dest}`: how long the file has not matched ZooKeeper;
    /// 0 when it does.
    pub file_stale_seconds: Family<DestLabels, SecondsGauge>,
    /// `zkrender_file_up_to_date{dest}`: 1 when the file matches what ZooKeeper holds.
    pub file_up_to_date: Family<DestLabels, Gauge>,
    /// `zkrender_change_to_write_seconds`: from receiving a znode change to the file
    /// being in place.
    pub change_to_write_seconds: Histogram,
    /// `zkrender_config_reloads_total{outcome}`: SIGHUP reloads of zkrender.toml.
    pub config_reloads_total: Family<OutcomeLabels, Counter>,
    /// `zkrender_ready`: 1 once every file has been written once. Set from the report
    /// at scrape time.
    pub ready: Gauge,
    /// The dests that currently have per-file series, to drop those of files removed by
    /// a config reload. Held for the whole of `update_files`, which also serialises
    /// concurrent scrapes.
    known_dests: Mutex<BTreeSet<String>>,
    registry: Registry,
}

/// The process-wide metrics, created on first use.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

impl Metrics {
    /// A fresh registry. Private: the agent has exactly one, behind [`metrics()`]; tests
    /// in this module build their own so they never see each other's counts.
    fn new() -> Self {
        let zk_connected = Gauge::default();
        let zk_session_expirations_total = Counter::default();
        let zk_reconnects_total = Counter::default();
        let watch_events_total = Counter::default();
        let renders_total = Counter::default();
        let render_errors_total = Counter::default();
        let renders_patched_total = Counter::default();
        let files_written_total = Counter::default();
        let check_failures_total = Counter::default();
        let reloads_total = Family::<ReloadLabels, Counter>::default();
        let reload_duration_seconds = Histogram::new(RELOAD_BUCKETS);
        let file_last_write_timestamp_seconds = Family::<DestLabels, SecondsGauge>::default();
        let file_stale_seconds = Family::<DestLabels, SecondsGauge>::default();
        let file_up_to_date = Family::<DestLabels, Gauge>::default();
        let change_to_write_seconds = Histogram::new(CHANGE_TO_WRITE_BUCKETS);
        let config_reloads_total = Family::<OutcomeLabels, Counter>::default();
        let ready = Gauge::default();

        for kind in ReloadKind::ALL {
            for outcome in Outcome::ALL {
                let _ = reloads_total.get_or_create_owned(&ReloadLabels { kind, outcome });
            }
        }
        for outcome in Outcome::ALL {
            let _ = config_reloads_total.get_or_create_owned(&OutcomeLabels { outcome });
        }

        // Names without the `zkrender_` prefix, the unit suffix or `_total`: the
        // registry appends those (and rejects names that already carry them).
        let mut r = Registry::with_prefix("zkrender");
        r.register("zk_connected", "1 while connected to ZooKeeper", zk_connected.clone());
        r.register(
            "zk_session_expirations",
            "ZooKeeper sessions that expired (every watch was lost and re-armed)",
            zk_session_expirations_total.clone(),
        );
        r.register("zk_reconnects", "Reconnections to ZooKeeper", zk_reconnects_total.clone());
        r.register("watch_events", "Updates received from ZooKeeper", watch_events_total.clone());
        r.register("renders", "Template renders attempted", renders_total.clone());
        r.register("render_errors", "Template renders that failed", render_errors_total.clone());
        r.register(
            "renders_patched",
            "Template renders done by patching changed values into the last output",
            renders_patched_total.clone(),
        );
        r.register("files_written", "Writes that changed a file on disk", files_written_total.clone());
        r.register(
            "check_failures",
            "Rendered files rejected by their check command",
            check_failures_total.clone(),
        );
        r.register("reloads", "Reload actions after all retries, by kind and outcome", reloads_total.clone());
        r.register_with_unit(
            "reload_duration",
            "Time taken by one reload including its retries",
            Unit::Seconds,
            reload_duration_seconds.clone(),
        );
        r.register_with_unit(
            "file_last_write_timestamp",
            "Unix time of the last write that changed the file",
            Unit::Seconds,
            file_last_write_timestamp_seconds.clone(),
        );
        r.register_with_unit(
            "file_stale",
            "How long the file has not matched ZooKeeper (0 when it does)",
            Unit::Seconds,
            file_stale_seconds.clone(),
        );
        r.register(
            "file_up_to_date",
            "1 when the file matches what ZooKeeper holds",
            file_up_to_date.clone(),
        );
        r.register_with_unit(
            "change_to_write",
            "From receiving a znode change to the file being in place",
            Unit::Seconds,
            change_to_write_seconds.clone(),
        );
        r.register(
            "config_reloads",
            "Reloads of the configuration file (SIGHUP), by outcome",
            config_reloads_total.clone(),
        );
        r.register("ready", "1 once every file has been written once", ready.clone());

        Metrics {
            zk_connected,
            zk_session_expirations_total,
            zk_reconnects_total,
            watch_events_total,
            renders_total,
            render_errors_total,
            renders_patched_total,
            files_written_total,
            check_failures_total,
            reloads_total,
            reload_duration_seconds,
            file_last_write_timestamp_seconds,
            file_stale_seconds,
            file_up_to_date,
            change_to_write_seconds,
            config_reloads_total,
            ready,
            known_dests: Mutex::new(BTreeSet::new()),
            registry: r,
        }
    }

    /// Records one reload action (after its retries): the counter by kind and outcome,
    /// and its duration.
    pub fn record_reload(&self, kind: ReloadKind, ok: bool, took: Duration) {
        let outcome = Outcome::from_ok(ok);
        self.reloads_total.get_or_create(&ReloadLabels { kind, outcome }).inc();
        self.reload_duration_seconds.observe(took.as_secs_f64());
    }

    /// Records one reload of the configuration file.
    pub fn record_config_reload(&self, ok: bool) {
        let outcome = Outcome::from_ok(ok);
        self.config_reloads_total.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    /// Records the time from receiving a znode change to the file written from it.
    pub fn record_change_to_write(&self, took: Duration) {
        self.change_to_write_seconds.observe(took.as_secs_f64());
    }

    /// Sets every gauge that describes state from `report`: `ready`, `zk_connected` and
    /// the per-file gauges (see [`Metrics::update_files`]). Call right before encoding.
    pub fn update_from_report(&self, report: &StatusReport, now_unix: f64) {
        self.ready.set(i64::from(report.ready));
        self.zk_connected.set(i64::from(report.zookeeper.state == "connected"));
        self.update_files(report, now_unix);
    }

    /// Sets the per-file gauges from `report`, computing staleness against `now_unix`
    /// (so it grows between pipeline cycles), and drops the series of files no longer in
    /// the report (removed by a config reload).
    ///
    /// A file is up to date when it has been settled once and is not stale. Its
    /// last-write series is absent until the agent has written it: a 0 would read as
    /// "last written in 1970".
    pub fn update_files(&self, report: &StatusReport, now_unix: f64) {
        // Held throughout: two scrapes at once must not interleave removals and sets.
        let mut known = self.known_dests.lock().unwrap_or_else(PoisonError::into_inner);
        let mut current = BTreeSet::new();
        for file in &report.files {
            let labels = DestLabels { dest: file.dest.clone() };
            match file.last_write {
                Some(at) => {
                    self.file_last_write_timestamp_seconds.get_or_create(&labels).set(at);
                }
                None => {
                    self.file_last_write_timestamp_seconds.remove(&labels);
                }
            }
            // A stale_since in the future (clock stepped back) is not negative staleness.
            let stale = file.stale_since.map_or(0.0, |since| (now_unix - since).max(0.0));
            self.file_stale_seconds.get_or_create(&labels).set(stale);
            let up_to_date = file.settled && file.stale_since.is_none();
            self.file_up_to_date.get_or_create(&labels).set(i64::from(up_to_date));
            current.insert(labels.dest);
        }
        for gone in known.difference(&current) {
            let labels = DestLabels { dest: gone.clone() };
            self.file_last_write_timestamp_seconds.remove(&labels);
            self.file_stale_seconds.remove(&labels);
            self.file_up_to_date.remove(&labels);
        }
        *known = current;
    }

    /// The whole registry in the OpenMetrics text format (serve with [`CONTENT_TYPE`]).
    ///
    /// # Panics
    /// Never in practice: encoding into a `String` fails only for native histograms,
    /// which this registry does not use.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("bug: encoding classic metrics into a String cannot fail");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{FileStatus, ZkStatus};

    /// The value of the sample line that starts with `series ` (name plus labels).
    fn sample(text: &str, series: &str) -> Option<f64> {
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
            .map(|value| value.parse().unwrap())
    }

    fn file(dest: &str) -> FileStatus {
        FileStatus { dest: dest.into(), state: "ok".into(), settled: true, ..Default::default() }
    }

    #[test]
    fn counter_increment_shows_in_the_text() {
        let m = Metrics::new();
        assert_eq!(sample(&m.encode(), "zkrender_files_written_total"), Some(0.0));
        m.files_written_total.inc();
        m.files_written_total.inc();
        assert_eq!(sample(&m.encode(), "zkrender_files_written_total"), Some(2.0));
    }

    #[test]
    fn every_metric_is_named_with_prefix_unit_and_total() {
        let text = Metrics::new().encode();
        for name in [
            "zkrender_zk_connected",
            "zkrender_zk_session_expirations_total",
            "zkrender_zk_reconnects_total",
            "zkrender_watch_events_total",
            "zkrender_renders_total",
            "zkrender_render_errors_total",
            "zkrender_renders_patched_total",
            "zkrender_files_written_total",
            "zkrender_check_failures_total",
            "zkrender_reload_duration_seconds_bucket",
            "zkrender_change_to_write_seconds_bucket",
            "zkrender_ready",
        ] {
            assert!(text.lines().any(|l| l.starts_with(name)), "{name} missing in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }

    #[test]
    fn labelled_counters_exist_at_zero_before_first_use() {
        let text = Metrics::new().encode();
        for kind in ["signal", "http", "command"] {
            for outcome in ["ok", "failed"] {
                let series = format!("zkrender_reloads_total{{kind=\"{kind}\",outcome=\"{outcome}\"}}");
                assert_eq!(sample(&text, &series), Some(0.0), "{series} in:\n{text}");
            }
        }
        assert_eq!(sample(&text, "zkrender_config_reloads_total{outcome=\"failed\"}"), Some(0.0));
    }

    #[test]
    fn record_reload_counts_by_kind_and_outcome_and_times_it() {
        let m = Metrics::new();
        m.record_reload(ReloadKind::Http, false, Duration::from_millis(3));
        let text = m.encode();
        let failed = "zkrender_reloads_total{kind=\"http\",outcome=\"failed\"}";
        assert_eq!(sample(&text, failed), Some(1.0));
        assert_eq!(sample(&text, "zkrender_reloads_total{kind=\"http\",outcome=\"ok\"}"), Some(0.0));
        assert_eq!(sample(&text, "zkrender_reload_duration_seconds_count"), Some(1.0));
        // 3 ms lands in the 5 ms bucket, not the 2.5 ms one.
        assert_eq!(sample(&text, "zkrender_reload_duration_seconds_bucket{le=\"0.0025\"}"), Some(0.0));
        assert_eq!(sample(&text, "zkrender_reload_duration_seconds_bucket{le=\"0.005\"}"), Some(1.0));
    }

    #[test]
    fn reload_kind_follows_the_configured_action() {
        let action = ReloadAction::Command { argv: vec!["true".into()] };
        assert_eq!(ReloadKind::from(&action), ReloadKind::Command);
    }

    #[test]
    fn file_gauges_come_from_the_report_with_staleness_at_scrape_time() {
        let m = Metrics::new();
        let mut stale = file("/etc/b.conf");
        stale.stale_since = Some(1_000.0);
        stale.last_write = Some(900.5);
        let report = StatusReport {
            ready: true,
            zookeeper: ZkStatus { state: "connected".into(), ..Default::default() },
            files: vec![file("/etc/a.conf").into(), stale.into()],
            ..Default::default()
        };

        m.update_from_report(&report, 1_030.0);
        let text = m.encode();
        assert_eq!(sample(&text, "zkrender_file_up_to_date{dest=\"/etc/a.conf\"}"), Some(1.0));
        assert_eq!(sample(&text, "zkrender_file_stale_seconds{dest=\"/etc/a.conf\"}"), Some(0.0));
        assert_eq!(sample(&text, "zkrender_file_up_to_date{dest=\"/etc/b.conf\"}"), Some(0.0));
        assert_eq!(sample(&text, "zkrender_file_stale_seconds{dest=\"/etc/b.conf\"}"), Some(30.0));
        let last_write = "zkrender_file_last_write_timestamp_seconds{dest=\"/etc/b.conf\"}";
        assert_eq!(sample(&text, last_write), Some(900.5));
        // Never written: no last-write series rather than a 1970 timestamp.
        assert!(!text.contains("zkrender_file_last_write_timestamp_seconds{dest=\"/etc/a.conf\"}"));
        assert_eq!(sample(&text, "zkrender_ready"), Some(1.0));
        assert_eq!(sample(&text, "zkrender_zk_connected"), Some(1.0));

        // The same report scraped later: staleness grew without a new report.
        m.update_files(&report, 1_090.0);
        let later = m.encode();
        assert_eq!(sample(&later, "zkrender_file_stale_seconds{dest=\"/etc/b.conf\"}"), Some(90.0));
    }

    #[test]
    fn series_of_a_removed_file_disappear() {
        let m = Metrics::new();
        let mut written = file("/etc/gone.conf");
        written.last_write = Some(5.0);
        let before =
            StatusReport { files: vec![file("/etc/kept.conf").into(), written.into()], ..Default::default() };
        m.update_files(&before, 10.0);
        assert!(m.encode().contains("/etc/gone.conf"));

        let after = StatusReport { files: vec![file("/etc/kept.conf").into()], ..Default::default() };
        m.update_files(&after, 20.0);
        let text = m.encode();
        assert!(!text.contains("/etc/gone.conf"), "{text}");
        assert!(text.contains("/etc/kept.conf"));
    }

    #[test]
    fn pending_file_is_not_up_to_date() {
        let m = Metrics::new();
        let mut pending = file("/etc/p.conf");
        pending.settled = false;
        pending.state = "pending".into();
        m.update_files(&StatusReport { files: vec![pending.into()], ..Default::default() }, 1.0);
        assert_eq!(sample(&m.encode(), "zkrender_file_up_to_date{dest=\"/etc/p.conf\"}"), Some(0.0));
    }
}
