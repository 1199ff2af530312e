//! End-to-end behaviour of the pipeline against the real broker: exact output records,
//! gauges, the pull API, the one-topic layout with field pointers, idle decay, and a crash.

use std::time::Duration;

use ipm_stream::config::{Config, Layout};
use ipm_stream::metrics::names;
use ipm_stream::output::IpmRecord;

use crate::support::broker;
use crate::support::kafka::{self, TestRecord};
use crate::support::reference::{changes, value_at, RefEvent, RefWindow};
use crate::support::service::{
    creative_series, get, read_output, test_config, wait_for_metrics, wait_for_status, InProcess,
    OUT_OF_ORDERNESS_MS, WINDOWS,
};

/// 2026-12-03T08:00:00Z.
pub(crate) const T0: i64 = 1_796_284_800_000;
pub(crate) const PARTITIONS: i32 = 3;
pub(crate) const KEYS: [(&str, &str); 4] =
    [("c-1", "cr-a"), ("c-1", "cr/b|x"), ("c-2", "cr-a"), ("c-2", "crème \"7\"")];

/// A small deterministic generator, so every run produces the same stream.
pub(crate) struct Lcg(pub(crate) u64);

impl Lcg {
    pub(crate) fn next(&mut self, below: u64) -> u64 {
        self.0 =
            self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

/// Events of one kind for one partition: times step forward with jitter below the
/// out-of-orderness bound, so nothing is late and the expected output is exact; keys are
/// skewed towards the first one.
pub(crate) fn partition_events(
    seed: u64,
    install: bool,
    step_ms: i64,
    count: usize,
) -> Vec<RefEvent> {
    let mut rng = Lcg(seed);
    (0..count)
        .map(|i| {
            let key = KEYS[[0, 0, 0, 1, 2, 3][rng.next(6) as usize]];
            RefEvent {
                campaign_id: key.0.into(),
                creative_id: key.1.into(),
                install,
                time_ms: T0
                    + i as i64 * step_ms
                    + rng.next((OUT_OF_ORDERNESS_MS - 1000) as u64) as i64,
            }
        })
        .collect()
}

/// The default JSON shape of `event`, with an event id unique in this test process.
pub(crate) fn json_event(event: &RefEvent) -> Vec<u8> {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let id = NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    serde_json::to_vec(&serde_json::json!({
        "event_id": format!("e-{id}"),
        "campaign_id": event.campaign_id,
        "creative_id": event.creative_id,
        "ts": ipm_stream::output::rfc3339(event.time_ms),
    }))
    .unwrap()
}

/// Watermark once every partition's events are read: the slowest partition's newest event
/// minus the out-of-orderness.
pub(crate) fn final_watermark(partitions: &[Vec<RefEvent>]) -> i64 {
    partitions.iter().map(|p| p.iter().map(|e| e.time_ms).max().unwrap()).min().unwrap()
        - OUT_OF_ORDERNESS_MS
}

/// Produces each partition's events to the same partition number of `topic`, in order, and
/// returns the records sent (so a test can send copies later).
pub(crate) async fn produce_partitions(
    bootstrap: &str,
    topic: &str,
    partitions: &[Vec<RefEvent>],
) -> Vec<TestRecord> {
    let mut records = Vec::new();
    for (partition, events) in partitions.iter().enumerate() {
        for event in events {
            records.push(TestRecord {
                partition: Some(partition as i32),
                value: Some(json_event(event)),
                ..TestRecord::default()
            });
        }
    }
    kafka::produce(bootstrap, topic, &records).await;
    records
}

/// Both input topics with [`PARTITIONS`] partitions each, and a compacted output topic.
pub(crate) async fn create_separate_topics(
    bootstrap: &str,
    config: &Config,
    output_partitions: i32,
) {
    kafka::create_topic(bootstrap, &config.input.impressions_topic, PARTITIONS).await;
    kafka::create_topic(bootstrap, &config.input.installs_topic, PARTITIONS).await;
    kafka::create_compacted_topic(bootstrap, &config.output.topic, output_partitions).await;
}

/// Each partition's events split at `percent` of its length: what comes before a break in a
/// test, and what comes after.
pub(crate) fn split(
    partitions: &[Vec<RefEvent>],
    percent: usize,
) -> (Vec<Vec<RefEvent>>, Vec<Vec<RefEvent>>) {
    partitions
        .iter()
        .map(|events| {
            let at = events.len() * percent / 100;
            (events[..at].to_vec(), events[at..].to_vec())
        })
        .unzip()
}

pub(crate) fn last_boundary(window: &RefWindow, watermark: i64) -> i64 {
    watermark.div_euclid(window.slide_ms) * window.slide_ms
}

#[tokio::test]
async fn separate_topics_publish_exact_window_values_across_out_of_order_partitions() {
    let bootstrap = &broker::shared().bootstrap;
    let config = test_config(bootstrap);
    create_separate_topics(bootstrap, &config, 2).await;

    // Partitions advance at different paces, so they interleave out of order.
    let impressions: Vec<Vec<RefEvent>> = (0..PARTITIONS)
        .map(|p| partition_events(11 + p as u64, false, 700 + 150 * p as i64, 800))
        .collect();
    let installs: Vec<Vec<RefEvent>> = (0..PARTITIONS)
        .map(|p| partition_events(97 + p as u64, true, 9_000 + 1000 * p as i64, 60))
        .collect();
    produce_partitions(bootstrap, &config.input.impressions_topic, &impressions).await;
    produce_partitions(bootstrap, &config.input.installs_topic, &installs).await;
    let all: Vec<RefEvent> = impressions.iter().chain(&installs).flatten().cloned().collect();
    let watermark = final_watermark(&[impressions.clone(), installs.clone()].concat());
    let expected = changes(&all, &WINDOWS, watermark);

    let service = InProcess::start(config.clone()).await;
    let output = read_output(bootstrap, &config.output.topic, Duration::from_secs(90), |out| {
        out.values.len() >= expected.len()
    })
    .await;
    assert_eq!(output.values, expected);
    assert!(output.tombstones.is_empty());
    assert_eq!(output.updates.len(), expected.len(), "one record per change");
    let sample = &output.updates[0];
    assert_eq!(sample.schema_version, 1);
    assert_eq!(sample.watermark.len(), "2026-12-03T08:00:00.000Z".len());

    // Gauges hold the values of the last boundary each window passed.
    let impressions_topic = config.input.impressions_topic.clone();
    let counted =
        format!("{}{{outcome=\"counted\",topic=\"{impressions_topic}\"}}", names::EVENTS_CONSUMED);
    // Every round commits; none failed.
    let commits_ok = format!("{}{{result=\"ok\"}}", names::COMMITS);
    let metrics = wait_for_metrics(service.http_addr, Duration::from_secs(20), |m| {
        m.get(&counted) == Some(&(PARTITIONS as f64 * 800.0)) && m.contains_key(&commits_ok)
    })
    .await;
    for window in &WINDOWS {
        let end = last_boundary(window, watermark);
        for (campaign, creative) in KEYS {
            let (imps, insts) = value_at(&all, window, (campaign, creative), end);
            let series = |metric| creative_series(metric, campaign, creative, window.name);
            assert_eq!(metrics[&series(names::WINDOW_IMPRESSIONS)], imps as f64);
            assert_eq!(metrics[&series(names::WINDOW_INSTALLS)], insts as f64);
            assert_eq!(metrics[&series(names::IPM)], insts as f64 * 1000.0 / imps as f64);
        }
    }
    let installs_counted = format!(
        "{}{{outcome=\"counted\",topic=\"{}\"}}",
        names::EVENTS_CONSUMED,
        config.input.installs_topic
    );
    assert_eq!(metrics[&installs_counted], PARTITIONS as f64 * 60.0);
    assert_eq!(metrics[names::ACTIVE_KEYS], KEYS.len() as f64);
    assert!(!metrics.contains_key(&format!("{}{{result=\"error\"}}", names::COMMITS)));
    assert_eq!(metrics[names::WATERMARK], watermark as f64 / 1000.0);
    let late: Vec<f64> = metrics
        .iter()
        .filter(|(k, _)| k.starts_with(names::LATE_EVENTS))
        .map(|(_, v)| *v)
        .collect();
    assert_eq!(late, [0.0, 0.0]);

    // The pull API serves the same values.
    let window = &WINDOWS[0];
    let (campaign, creative) = KEYS[1];
    let query = format!("/v1/ipm?campaign_id=c-1&creative_id={}&window=1m", "cr%2Fb%7Cx");
    let (status, body) = get(service.http_addr, &query).await;
    assert_eq!(status, 200);
    let served: Vec<IpmRecord> = serde_json::from_str(&body).unwrap();
    assert_eq!(served.len(), 1);
    let end = last_boundary(window, watermark);
    assert_eq!(
        (served[0].impressions, served[0].installs),
        value_at(&all, window, (campaign, creative), end)
    );
    assert_eq!(served[0].window_end, ipm_stream::output::rfc3339(end));
    // Readiness also waits for the client's first statistics (once a second).
    wait_for_status(service.http_addr, "/readyz", 200, Duration::from_secs(10)).await;
    assert_eq!(get(service.http_addr, "/healthz").await.0, 200);

    service.stop().await;
    // Nothing more was published after the expected records.
    let again = read_output(bootstrap, &config.output.topic, Duration::from_secs(30), |out| {
        out.values.len() >= expected.len()
    })
    .await;
    assert_eq!(again.updates.len(), expected.len());
}

#[tokio::test]
async fn one_topic_layout_reads_nested_postbacks_through_field_pointers() {
    let bootstrap = &broker::shared().bootstrap;
    let mut config = test_config(bootstrap);
    config.input.layout = Layout::Single;
    config.input.fields.campaign_id = "/attribution/af_c_id".into();
    config.input.fields.creative_id = "/attribution/af_ad_id".into();
    config.input.fields.kind = "/event_name".into();
    config.input.fields.time = "/times/0".into();
    config.input.impression_types = vec!["view".into(), "impression".into()];
    config.input.install_types = vec!["install".into()];
    kafka::create_topic(bootstrap, &config.input.events_topic, PARTITIONS).await;
    kafka::create_compacted_topic(bootstrap, &config.output.topic, 1).await;
    kafka::create_topic(bootstrap, &config.dead_letter.topic, 1).await;

    let mut partitions: Vec<Vec<RefEvent>> = Vec::new();
    let mut records = Vec::new();
    for partition in 0..PARTITIONS {
        let mut events = partition_events(500 + partition as u64, false, 1_500, 300);
        let mut rng = Lcg(900 + partition as u64);
        for (i, event) in events.iter_mut().enumerate() {
            event.install = rng.next(8) == 0;
            let name = match (event.install, i % 2) {
                (true, _) => "install",
                (false, 0) => "view",
                (false, _) => "impression",
            };
            // AppsFlyer-style time: `yyyy-mm-dd hh:mm:ss.sss`, UTC, in an array.
            let time = chrono::DateTime::from_timestamp_millis(event.time_ms).unwrap();
            let value = serde_json::json!({
                "event_name": name,
                "attribution": { "af_c_id": event.campaign_id, "af_ad_id": event.creative_id },
                "times": [time.format("%Y-%m-%d %H:%M:%S%.3f").to_string()],
            });
            records.push(TestRecord {
                partition: Some(partition),
                value: Some(serde_json::to_vec(&value).unwrap()),
                ..TestRecord::default()
            });
        }
        partitions.push(events);
    }
    // Messages that cannot be counted are skipped and counted by reason.
    for bad in [
        &b"{\"event_name\":\"view\""[..],
        b"[1,2]",
        br#"{"event_name":"click","attribution":{"af_c_id":"c","af_ad_id":"x"},"times":[1]}"#,
    ] {
        records.push(TestRecord {
            partition: Some(0),
            value: Some(bad.to_vec()),
            ..TestRecord::default()
        });
    }
    kafka::produce(bootstrap, &config.input.events_topic, &records).await;
    let all: Vec<RefEvent> = partitions.iter().flatten().cloned().collect();
    let expected = changes(&all, &WINDOWS, final_watermark(&partitions));

    let service = InProcess::start(config.clone()).await;
    let output = read_output(bootstrap, &config.output.topic, Duration::from_secs(90), |out| {
        out.values.len() >= expected.len()
    })
    .await;
    assert_eq!(output.values, expected);

    let topic = &config.input.events_topic;
    let rejected = |reason: &str| {
        format!("{}{{reason=\"{reason}\",topic=\"{topic}\"}}", names::EVENTS_REJECTED)
    };
    let metrics = wait_for_metrics(service.http_addr, Duration::from_secs(20), |m| {
        m.get(&rejected("unknown_type")).is_some()
    })
    .await;
    assert_eq!(metrics[&rejected("not_json")], 1.0);
    assert_eq!(metrics[&rejected("not_object")], 1.0);
    assert_eq!(metrics[&rejected("unknown_type")], 1.0);
    service.stop().await;
}

#[tokio::test]
async fn idle_partitions_let_stopped_traffic_decay_to_zero_and_be_evicted() {
    let bootstrap = &broker::shared().bootstrap;
    let mut config = test_config(bootstrap);
    let windows = [
        RefWindow { name: "20s", size_ms: 20_000, slide_ms: 5_000 },
        RefWindow { name: "30s", size_ms: 30_000, slide_ms: 10_000 },
    ];
    config.windows.list = crate::support::service::windows_config(&windows);
    config.windows.idle_timeout = Duration::from_secs(2);
    kafka::create_topic(bootstrap, &config.input.impressions_topic, 2).await;
    kafka::create_topic(bootstrap, &config.input.installs_topic, 1).await;
    kafka::create_compacted_topic(bootstrap, &config.output.topic, 1).await;

    // Traffic that stopped a minute ago, on one installs partition that never sees any.
    let now = chrono::Utc::now().timestamp_millis();
    let start = (now - 70_000).div_euclid(1000) * 1000;
    let events: Vec<RefEvent> = (0..40)
        .map(|i| RefEvent {
            campaign_id: "c-idle".into(),
            creative_id: ["a", "b"][i % 2].into(),
            install: false,
            time_ms: start + i as i64 * 300,
        })
        .collect();
    let records: Vec<TestRecord> = events
        .iter()
        .enumerate()
        .map(|(i, e)| TestRecord {
            partition: Some((i % 2) as i32),
            value: Some(json_event(e)),
            ..TestRecord::default()
        })
        .collect();
    kafka::produce(bootstrap, &config.input.impressions_topic, &records).await;
    // Every change up to well past the decay, which ends 30 s after the last event.
    let expected = changes(&events, &windows, start + 60_000);

    let service = InProcess::start(config.clone()).await;
    let tombstones = 2 * windows.len();
    let output = read_output(bootstrap, &config.output.topic, Duration::from_secs(90), |out| {
        out.tombstones.len() >= tombstones
    })
    .await;
    assert_eq!(output.values, expected);
    let mut evicted = output.tombstones.clone();
    evicted.sort();
    assert_eq!(
        evicted,
        [
            r#"["c-idle","a","20s"]"#,
            r#"["c-idle","a","30s"]"#,
            r#"["c-idle","b","20s"]"#,
            r#"["c-idle","b","30s"]"#
        ]
    );
    // Each window's last record before the tombstone is zero.
    for (creative, window) in [("a", "20s"), ("a", "30s"), ("b", "20s"), ("b", "30s")] {
        let last = output
            .updates
            .iter()
            .rev()
            .find(|u| u.creative_id == creative && u.window == window)
            .unwrap();
        assert_eq!((last.impressions, last.installs, last.ipm), (0, 0, None));
    }
    let metrics = wait_for_metrics(service.http_addr, Duration::from_secs(10), |m| {
        m.get(names::ACTIVE_KEYS) == Some(&0.0)
    })
    .await;
    assert!(!metrics.keys().any(|k| k.contains("c-idle")), "gauges of evicted keys are removed");
    assert!(metrics[names::WATERMARK] * 1000.0 >= (now - OUT_OF_ORDERNESS_MS) as f64);
    service.stop().await;
}
