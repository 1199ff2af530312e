//! A real Prometheus server, spawned from the `prometheus` binary with the shipped rules,
//! scraping ipm-stream fed through the real broker: PromQL through its HTTP API must return
//! exactly the IPM the service computed, and the campaign recording rules the same interval.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipm_stream::config::Config;
use ipm_stream::metrics::names;

use crate::support::broker;
use crate::support::kafka::{self, TestRecord};
use crate::support::reference::{value_at, RefEvent, RefWindow};
use crate::support::service::{
    creative_series, test_config, wait_for_metrics, InProcess, OUT_OF_ORDERNESS_MS, WINDOWS,
};

use super::promql::rules_path;

/// 2026-12-03T08:00:00Z, as in the pipeline tests.
const T0: i64 = 1_796_284_800_000;
/// c-one has a single creative, so its campaign values must equal that creative's.
pub const KEYS: [(&str, &str); 3] = [("c-one", "cr-solo"), ("c-two", "cr-a"), ("c-two", "cr-b")];
const PARTITIONS: i32 = 2;
const SECONDS: i64 = 180;

/// A service fed with three keys' impressions and installs, one malformed message (which goes
/// to the dead-letter topic) and one duplicate, and the events it counted.
pub struct Fed {
    pub service: InProcess,
    pub events: Vec<RefEvent>,
    pub watermark_ms: i64,
}

/// Starts the service on fresh topics, produces the traffic, and waits until every key's
/// gauges show the last window the traffic completes and the pipeline counters have moved.
pub async fn start_fed_service() -> Fed {
    let bootstrap = &broker::shared().bootstrap;
    let config: Config = test_config(bootstrap);
    kafka::create_topic(bootstrap, &config.input.impressions_topic, PARTITIONS).await;
    kafka::create_topic(bootstrap, &config.input.installs_topic, PARTITIONS).await;
    kafka::create_compacted_topic(bootstrap, &config.output.topic, 1).await;
    kafka::create_topic(bootstrap, &config.dead_letter.topic, 1).await;

    let mut events = Vec::new();
    let mut impressions = Vec::new();
    let mut installs = Vec::new();
    let mut latest = [[0i64; PARTITIONS as usize]; 2];
    for second in 0..SECONDS {
        for partition in 0..PARTITIONS {
            for k in 0..4 {
                let key = KEYS[((second * 4 + k) as usize + partition as usize) % KEYS.len()];
                let time_ms = T0 + second * 1000 + k * 200 + i64::from(partition) * 50;
                let event = ref_event(key, false, time_ms);
                impressions.push(record(partition, &format!("imp-{}", impressions.len()), &event));
                latest[0][partition as usize] = time_ms;
                events.push(event);
            }
            // Installs on their own pace and keys, so that each key's IPM differs.
            if second % 5 == i64::from(partition) {
                let key = KEYS[(second as usize / 5 + partition as usize) % KEYS.len()];
                let time_ms = T0 + second * 1000 + 70;
                let event = ref_event(key, true, time_ms);
                installs.push(record(partition, &format!("ins-{}", installs.len()), &event));
                latest[1][partition as usize] = time_ms;
                events.push(event);
            }
        }
    }
    // A copy of an impression already sent, and a message that is not JSON.
    let duplicate = impressions[10].clone();
    impressions.push(duplicate);
    impressions.push(TestRecord {
        partition: Some(0),
        value: Some(b"{\"campaign_id\":".to_vec()),
        ..TestRecord::default()
    });
    kafka::produce(bootstrap, &config.input.impressions_topic, &impressions).await;
    kafka::produce(bootstrap, &config.input.installs_topic, &installs).await;
    let watermark_ms = latest.iter().flatten().min().unwrap() - OUT_OF_ORDERNESS_MS;

    let service = InProcess::start(config).await;
    let expected = expected_gauges(&events, watermark_ms);
    wait_for_metrics(service.http_addr, Duration::from_secs(90), |metrics| {
        let gauges_done = expected.iter().all(|(series, value)| metrics.get(series) == Some(value));
        let moved =
            [names::DEAD_LETTERS, names::DUPLICATES, names::RECORDS_PRODUCED, names::CONSUMER_LAG]
                .iter()
                .all(|name| metrics.keys().any(|series| series.starts_with(&format!("{name}{{"))));
        gauges_done && moved
    })
    .await;
    Fed { service, events, watermark_ms }
}

fn ref_event(key: (&str, &str), install: bool, time_ms: i64) -> RefEvent {
    RefEvent { campaign_id: key.0.into(), creative_id: key.1.into(), install, time_ms }
}

fn record(partition: i32, id: &str, event: &RefEvent) -> TestRecord {
    let value = serde_json::json!({
        "event_id": id,
        "campaign_id": event.campaign_id,
        "creative_id": event.creative_id,
        "ts": ipm_stream::output::rfc3339(event.time_ms),
    });
    TestRecord {
        partition: Some(partition),
        value: Some(serde_json::to_vec(&value).unwrap()),
        ..TestRecord::default()
    }
}

fn last_boundary(window: &RefWindow, watermark_ms: i64) -> i64 {
    watermark_ms.div_euclid(window.slide_ms) * window.slide_ms
}

/// Impressions, installs and IPM series of every key and window at the final watermark.
fn expected_gauges(events: &[RefEvent], watermark_ms: i64) -> BTreeMap<String, f64> {
    let mut expected = BTreeMap::new();
    for window in &WINDOWS {
        let end = last_boundary(window, watermark_ms);
        for (campaign, creative) in KEYS {
            let (impressions, installs) = value_at(events, window, (campaign, creative), end);
            let series = |metric| creative_series(metric, campaign, creative, window.name);
            expected.insert(series(names::WINDOW_IMPRESSIONS), impressions as f64);
            expected.insert(series(names::WINDOW_INSTALLS), installs as f64);
            expected.insert(series(names::IPM), installs as f64 * 1000.0 / impressions as f64);
        }
    }
    expected
}

/// A Prometheus server in a temporary directory, killed when dropped (or, through a
/// watchdog, when the test process dies first).
struct Prometheus {
    child: Child,
    watchdog: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every second with the shipped rules, evaluated
    /// every second instead of every minute so that the test need not wait for them.
    fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::Builder::new().prefix("ipm-prometheus-").tempdir().unwrap();
        let shipped = std::fs::read_to_string(rules_path()).unwrap();
        assert_eq!(shipped.matches("interval: 1m").count(), 1, "one rule group, every minute");
        let rules = dir.path().join("ipm-stream.rules.yml");
        std::fs::write(&rules, shipped.replace("interval: 1m", "interval: 1s")).unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 rule_files:\n  - {}\n\
                 scrape_configs:\n  - job_name: ipm-stream\n    static_configs:\n      \
                 - targets: ['{target}']\n",
                rules.display()
            ),
        )
        .unwrap();
        let addr = free_addr();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run the `prometheus` binary ({e}); these tests need a real \
                     Prometheus server: install Debian's `prometheus` package (tests/run-all.sh \
                     does)"
                )
            });
        // Statics and leaked values are never dropped: stop Prometheus with the test process.
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg("while kill -0 \"$1\" 2>/dev/null && kill -0 \"$2\" 2>/dev/null; do sleep 1; done; kill \"$2\" 2>/dev/null")
            .arg("sh")
            .arg(std::process::id().to_string())
            .arg(child.id().to_string())
            .stdin(Stdio::null())
            .spawn()
            .expect("the watchdog shell starts");
        Prometheus { child, watchdog, addr, _dir: dir }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The value of the single series `query` returns, once it returns exactly one.
    async fn instant(&self, query: &str) -> Option<(BTreeMap<String, String>, f64)> {
        let url = format!("http://{}/api/v1/query", self.addr);
        let response = reqwest::Client::new().get(url).query(&[("query", query)]).send().await;
        let body: serde_json::Value = response.ok()?.json().await.ok()?;
        assert_eq!(body["status"], "success", "{query}: {body}");
        let result = body["data"]["result"].as_array()?;
        if result.len() != 1 {
            return None;
        }
        let labels = serde_json::from_value(result[0]["metric"].clone()).unwrap();
        let value = result[0]["value"][1].as_str()?.parse().unwrap();
        Some((labels, value))
    }

    /// Runs `query` once and returns how many series it gave; panics if Prometheus refuses it.
    async fn evaluate(&self, query: &str) -> usize {
        let url = format!("http://{}/api/v1/query", self.addr);
        let response = reqwest::Client::new().get(url).query(&[("query", query)]).send().await;
        let body: serde_json::Value = response.unwrap().json().await.unwrap();
        assert_eq!(body["status"], "success", "Prometheus refuses {query}: {body}");
        body["data"]["result"].as_array().map_or(0, Vec::len)
    }

    /// Polls `query` until its single value satisfies `check`, or panics with what was seen.
    async fn wait_for(&self, query: &str, check: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last = None;
        loop {
            if let Some((_, value)) = self.instant(query).await {
                if check(value) {
                    return value;
                }
                last = Some(value);
            }
            if Instant::now() > deadline {
                panic!(
                    "Prometheus query {query} did not reach the expected value (last: {last:?}); \
                     its log:\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // The watchdog notices within a second that Prometheus is gone, and exits.
        let _ = self.watchdog.wait();
    }
}

fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn selector(campaign: &str, creative: &str, window: &str) -> String {
    format!(
        "{{job=\"ipm-stream\",campaign_id=\"{campaign}\",creative_id=\"{creative}\",window=\"{window}\"}}"
    )
}

#[tokio::test]
async fn promql_through_a_real_prometheus_returns_exactly_the_ipm_the_service_computed() {
    assert!(Path::new(&rules_path()).is_file());
    let fed = start_fed_service().await;
    let prometheus = Prometheus::start(fed.service.http_addr);
    prometheus.wait_for("up{job=\"ipm-stream\"}", |up| up == 1.0).await;

    let (_, text) = crate::support::service::get(fed.service.http_addr, "/metrics").await;
    let exported = crate::support::service::parse_metrics(&text);
    for window in &WINDOWS {
        let end = last_boundary(window, fed.watermark_ms);
        for (campaign, creative) in KEYS {
            let (impressions, installs) = value_at(&fed.events, window, (campaign, creative), end);
            let computed = installs as f64 * 1000.0 / impressions as f64;
            let own = exported[&creative_series(names::IPM, campaign, creative, window.name)];
            assert_eq!(own, computed, "{campaign}/{creative}/{}", window.name);
            let query = format!("{}{}", names::IPM, selector(campaign, creative, window.name));
            let scraped = prometheus.wait_for(&query, |v| v == own).await;
            assert_eq!(scraped, computed);
            for bound in [names::IPM_LOWER, names::IPM_UPPER] {
                let own = exported[&creative_series(bound, campaign, creative, window.name)];
                let query = format!("{bound}{}", selector(campaign, creative, window.name));
                prometheus.wait_for(&query, |v| v == own).await;
            }
        }
    }

    // The campaign recording rules, evaluated by Prometheus on the scraped gauges: a campaign
    // of one creative has that creative's interval, and a campaign of two sums them.
    let window = WINDOWS[0].name;
    let solo = exported[&creative_series(names::IPM_UPPER, "c-one", "cr-solo", window)];
    prometheus
        .wait_for(
            &format!("campaign_window:ipm_stream_ipm_upper:wilson95{{campaign_id=\"c-one\",window=\"{window}\"}}"),
            |v| (v - solo).abs() <= 1e-9 * solo,
        )
        .await;
    let sum = |metric: &str| -> f64 {
        ["cr-a", "cr-b"]
            .iter()
            .map(|cr| exported[&creative_series(metric, "c-two", cr, window)])
            .sum()
    };
    let campaign_ipm = sum(names::WINDOW_INSTALLS) * 1000.0 / sum(names::WINDOW_IMPRESSIONS);
    prometheus
        .wait_for(
            &format!(
                "campaign_window:ipm_stream_ipm:ratio{{campaign_id=\"c-two\",window=\"{window}\"}}"
            ),
            |v| (v - campaign_ipm).abs() <= 1e-9 * campaign_ipm,
        )
        .await;

    // Every dashboard query is valid PromQL for this Prometheus, with the variables Grafana
    // fills in; the per-creative ones find the creative picked.
    let dashboard: serde_json::Value =
        serde_json::from_str(&super::promql::read("deploy/grafana/ipm-stream.json")).unwrap();
    for expr in super::promql::dashboard_expressions(&dashboard) {
        let filled = expr
            .replace("$campaign", "c-one")
            .replace("$creative", "cr-solo")
            .replace("$window", window)
            .replace("$__rate_interval", "1m");
        let series = prometheus.evaluate(&filled).await;
        if expr.contains("$creative") {
            assert!(series > 0, "{filled} finds nothing");
        }
    }
    drop(prometheus);
    fed.service.stop().await;
}
