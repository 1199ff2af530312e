//! Running ipm-stream in tests: configs for a test broker, the service in process or as a
//! child process, reading its output topic and scraping its HTTP port.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use ipm_stream::config::{Config, WindowConfig};
use ipm_stream::output::IpmRecord;
use tokio_util::sync::CancellationToken;

use super::kafka::{self, Consumed};
use super::reference::{RefWindow, Values};

/// Two short windows keep tests fast while exercising more than one slide and size.
pub const WINDOWS: [RefWindow; 2] = [
    RefWindow { name: "1m", size_ms: 60_000, slide_ms: 10_000 },
    RefWindow { name: "5m", size_ms: 300_000, slide_ms: 60_000 },
];

/// Out-of-orderness used by the test configs.
pub const OUT_OF_ORDERNESS_MS: i64 = 5_000;

/// A config for `bootstrap` with fresh topic and group names, the test windows, and an idle
/// timeout long enough that the watermark only moves with events.
pub fn test_config(bootstrap: &str) -> Config {
    let mut config = Config::default();
    config.kafka.brokers = bootstrap.to_owned();
    config.kafka.group_id = kafka::unique("group");
    config.input.impressions_topic = kafka::unique("impressions");
    config.input.installs_topic = kafka::unique("installs");
    config.input.events_topic = kafka::unique("events");
    config.output.topic = kafka::unique("ipm-live");
    config.dead_letter.topic = kafka::unique("dead-letter");
    config.http.listen = "127.0.0.1:0".into();
    config.windows.out_of_orderness = Duration::from_millis(OUT_OF_ORDERNESS_MS as u64);
    config.windows.idle_timeout = Duration::from_secs(3600);
    config.windows.list = windows_config(&WINDOWS);
    config.shutdown.grace_period = Duration::from_secs(10);
    config
}

/// The config form of reference windows.
pub fn windows_config(windows: &[RefWindow]) -> Vec<WindowConfig> {
    windows
        .iter()
        .map(|w| WindowConfig {
            name: Some(w.name.into()),
            size: Duration::from_millis(w.size_ms as u64),
            slide: Duration::from_millis(w.slide_ms as u64),
        })
        .collect()
}

/// The service running in this process.
pub struct InProcess {
    pub http_addr: SocketAddr,
    shutdown: CancellationToken,
    running: ipm_stream::Running,
}

impl InProcess {
    /// Starts the service with `config`.
    pub async fn start(config: Config) -> InProcess {
        // The service's logs, captured per test and shown when it fails.
        let _ = tracing_subscriber::fmt()
            .with_env_filter("info,librdkafka=warn,rdkafka=warn")
            .with_test_writer()
            .try_init();
        let shutdown = CancellationToken::new();
        let running = ipm_stream::start(config, shutdown.clone()).await.expect("service starts");
        InProcess { http_addr: running.http_addr, shutdown, running }
    }

    /// Stops the service gracefully and waits for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(30), self.running.wait())
            .await
            .expect("service stops within its grace period")
            .expect("service stops cleanly");
    }

    /// Waits for the service to stop on its own, and returns how it ended.
    pub async fn stopped(self, timeout: Duration) -> Result<(), ipm_stream::PipelineError> {
        tokio::time::timeout(timeout, self.running.wait())
            .await
            .expect("service stops on its own within the timeout")
    }
}

/// Output records by (campaign, creative, window, window end); tombstones listed apart.
#[derive(Debug, Default)]
pub struct Output {
    pub values: Values,
    /// Every update in topic order, duplicates included.
    pub updates: Vec<IpmRecord>,
    /// Keys (`[campaign, creative, window]` JSON) that received a tombstone.
    pub tombstones: Vec<String>,
}

/// Parses output records read from the topic.
pub fn parse_output(records: &[Consumed]) -> Output {
    let mut output = Output::default();
    for record in records {
        let key = String::from_utf8(record.key.clone().expect("records are keyed")).unwrap();
        let Some(value) = &record.value else {
            output.tombstones.push(key);
            continue;
        };
        let parsed: IpmRecord = serde_json::from_slice(value).expect("output is an IpmRecord");
        let expected_key =
            serde_json::to_string(&[&parsed.campaign_id, &parsed.creative_id, &parsed.window])
                .unwrap();
        assert_eq!(key, expected_key, "record key matches its value");
        let end =
            chrono::DateTime::parse_from_rfc3339(&parsed.window_end).unwrap().timestamp_millis();
        let counts = (parsed.impressions, parsed.installs);
        let previous = output.values.insert(
            (parsed.campaign_id.clone(), parsed.creative_id.clone(), parsed.window.clone(), end),
            counts,
        );
        if let Some(previous) = previous {
            assert_eq!(previous, counts, "two records for one window end disagree");
        }
        output.updates.push(parsed);
    }
    output
}

/// Reads `topic` until `done` holds for its parsed output.
pub async fn read_output(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    mut done: impl FnMut(&Output) -> bool,
) -> Output {
    let records =
        kafka::consume_until(bootstrap, topic, timeout, |records| done(&parse_output(records)))
            .await;
    parse_output(&records)
}

/// GETs `path` from the service; returns status and body.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let response = reqwest::get(format!("http://{addr}{path}")).await.expect("http request");
    let status = response.status().as_u16();
    (status, response.text().await.expect("http body"))
}

/// Polls `path` until it answers `status`, or panics.
pub async fn wait_for_status(
    addr: std::net::SocketAddr,
    path: &str,
    status: u16,
    timeout: Duration,
) {
    let deadline = Instant::now() + timeout;
    loop {
        if get(addr, path).await.0 == status {
            return;
        }
        assert!(Instant::now() < deadline, "{path} did not answer {status} within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Parses Prometheus text into `name{labels}` → value, labels sorted as exposed.
pub fn parse_metrics(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.is_empty())
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// Polls `/metrics` until `check` passes on the parsed series, or panics with the last text.
pub async fn wait_for_metrics(
    addr: SocketAddr,
    timeout: Duration,
    mut check: impl FnMut(&BTreeMap<String, f64>) -> bool,
) -> BTreeMap<String, f64> {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, text) = get(addr, "/metrics").await;
        let parsed = parse_metrics(&text);
        if check(&parsed) {
            return parsed;
        }
        if Instant::now() > deadline {
            panic!("metrics did not reach the expected values in {timeout:?}:\n{text}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The series name of a per-creative gauge.
pub fn creative_series(metric: &str, campaign: &str, creative: &str, window: &str) -> String {
    let (campaign, creative) = (escape_label(campaign), escape_label(creative));
    format!("{metric}{{campaign_id=\"{campaign}\",creative_id=\"{creative}\",window=\"{window}\"}}")
}

/// A label value as the text exposition format writes it.
pub fn escape_label(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
