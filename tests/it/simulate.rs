//! The simulator against the real broker: seeded traffic with duplicates, late and malformed
//! messages, run through the service in process, must give exactly the simulator's ground
//! truth; and an injected drop must show in the output as a drop of the stated size.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use ipm_stream::config::Config;
use ipm_stream::metrics::names;
use ipm_stream::simulate::generate::TrafficSettings;
use ipm_stream::simulate::scenario::Incident;
use ipm_stream::simulate::truth::TruthRow;
use ipm_stream::simulate::{Plan, Simulation, Stats};
use ipm_stream::window::WindowSpec;
use tokio_util::sync::CancellationToken;

use crate::support::broker;
use crate::support::kafka;
use crate::support::service::{
    parse_metrics, read_output, test_config, wait_for_metrics, InProcess, Output,
};

/// Creates the topics of `config` on the broker.
async fn create_topics(bootstrap: &str, config: &Config, partitions: i32) {
    kafka::create_topic(bootstrap, &config.input.impressions_topic, partitions).await;
    kafka::create_topic(bootstrap, &config.input.installs_topic, partitions).await;
    kafka::create_compacted_topic(bootstrap, &config.output.topic, 2).await;
    kafka::create_topic(bootstrap, &config.dead_letter.topic, 1).await;
}

/// A start well in the past, on a minute boundary, so that windows line up with it and no
/// event is ahead of the wall clock.
fn start_ms(minutes_ago: i64) -> i64 {
    let now = chrono::Utc::now().timestamp_millis();
    (now - minutes_ago * 60_000).div_euclid(60_000) * 60_000
}

/// Produces `settings` for `duration_ms` of event time as fast as the broker takes it.
async fn simulate(
    config: &Config,
    settings: TrafficSettings,
    duration_ms: i64,
    truth: Option<std::path::PathBuf>,
) -> Arc<Stats> {
    let plan = Plan {
        end_ms: Some(settings.start_ms + duration_ms),
        settings,
        max_messages: None,
        paced: false,
        truth,
        flush_timeout: Duration::from_secs(60),
    };
    let simulation = Simulation::start(config, plan, CancellationToken::new()).unwrap();
    let stats = simulation.stats.clone();
    let summary = tokio::task::spawn_blocking(move || simulation.join()).await.unwrap().unwrap();
    eprintln!("simulated {summary}");
    assert_eq!(stats.failed.load(std::sync::atomic::Ordering::Relaxed), 0);
    stats
}

fn total(metrics: &BTreeMap<String, f64>, name: &str) -> f64 {
    metrics.iter().filter(|(series, _)| series.starts_with(name)).map(|(_, v)| v).sum()
}

/// Waits until the service has read all `sent` messages and published its last round, then
/// reads every output record. Returns the output and the final watermark in milliseconds.
async fn drained_output(service: &InProcess, config: &Config, sent: u64) -> (Output, i64) {
    let consumed = format!("{}{{", names::EVENTS_CONSUMED);
    wait_for_metrics(service.http_addr, Duration::from_secs(240), |m| {
        total(m, &consumed) >= sent as f64
    })
    .await;
    // The round after the last message comes within a tick; wait until nothing moves.
    let mut last = (f64::NAN, f64::NAN);
    let metrics = loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let (_, text) = crate::support::service::get(service.http_addr, "/metrics").await;
        let metrics = parse_metrics(&text);
        let now = (metrics[names::WATERMARK], total(&metrics, names::RECORDS_PRODUCED));
        if now == last {
            break metrics;
        }
        last = now;
    };
    let records = total(&metrics, names::RECORDS_PRODUCED) as usize;
    let watermark_ms = (metrics[names::WATERMARK] * 1000.0).round() as i64;
    let bootstrap = &broker::shared().bootstrap;
    let output = read_output(bootstrap, &config.output.topic, Duration::from_secs(120), |out| {
        out.updates.len() + out.tombstones.len() >= records
    })
    .await;
    (output, watermark_ms)
}

/// (campaign, creative, window) → window end → (impressions, installs), as published.
type Series = BTreeMap<(String, String, String), BTreeMap<i64, (u64, u64)>>;

fn series(output: &Output) -> Series {
    let mut series = Series::new();
    for ((campaign, creative, window, end), counts) in &output.values {
        let key = (campaign.clone(), creative.clone(), window.clone());
        series.entry(key).or_default().insert(*end, *counts);
    }
    series
}

/// Compares the published values with the ground truth at every window end up to the
/// watermark. A change-only publisher's value at an end is its latest record at or before it
/// (zero before the first). Returns how many window values were compared exactly and how many
/// were bounded by late events.
fn compare(
    truth: &[TruthRow],
    output: &Output,
    windows: &[WindowSpec],
    watermark_ms: i64,
) -> (usize, usize) {
    let mut expected: BTreeMap<(String, String, String), BTreeMap<i64, &TruthRow>> =
        BTreeMap::new();
    for row in truth {
        let key = (row.campaign_id.clone(), row.creative_id.clone(), row.window.clone());
        expected.entry(key).or_default().insert(row.window_end_ms, row);
    }
    let published = series(output);
    let keys: BTreeSet<_> = expected.keys().chain(published.keys()).cloned().collect();
    let (mut exact, mut bounded) = (0, 0);
    let empty = BTreeMap::new();
    for key in keys {
        let spec = windows.iter().find(|w| w.name == key.2).expect("a configured window");
        let truth_ends = expected.get(&key).unwrap_or(&empty);
        let records = published.get(&key).cloned().unwrap_or_default();
        let first = truth_ends.keys().chain(records.keys()).min().copied().unwrap();
        let mut end = first;
        while end <= watermark_ms {
            let got = records.range(..=end).next_back().map_or((0, 0), |(_, c)| *c);
            let (want, late) = truth_ends.get(&end).map_or(((0, 0), (0, 0)), |row| {
                ((row.impressions, row.installs), (row.late_impressions, row.late_installs))
            });
            if late == (0, 0) {
                assert_eq!(got, want, "{key:?} at {}", ipm_stream::output::rfc3339(end));
                exact += 1;
            } else {
                // Late events count only if they arrived before this window was published.
                let within = |got: u64, want: u64, late: u64| got <= want && got + late >= want;
                assert!(
                    within(got.0, want.0, late.0) && within(got.1, want.1, late.1),
                    "{key:?} at {}: {got:?}, truth {want:?} with {late:?} late",
                    ipm_stream::output::rfc3339(end)
                );
                bounded += 1;
            }
            end += spec.slide_ms;
        }
    }
    (exact, bounded)
}

#[tokio::test]
async fn pipeline_output_equals_the_simulators_ground_truth() {
    let bootstrap = &broker::shared().bootstrap;
    let config = test_config(bootstrap);
    create_topics(bootstrap, &config, 3).await;
    let dir = tempfile::tempdir().unwrap();
    let truth_path = dir.path().join("truth.jsonl");
    let settings = TrafficSettings {
        seed: 20_261_203,
        start_ms: start_ms(40),
        rate_per_s: 150.0,
        campaigns: 8,
        max_creatives: 4,
        // A simulated day in two hours: installs follow impressions within seconds to
        // minutes, and retries come within the dedupe horizon.
        day_length: Duration::from_secs(7200),
        out_of_orderness_ms: config.out_of_orderness_ms(),
        duplicate_share: 0.05,
        late_share: 0.001,
        malformed_share: 0.005,
        ..TrafficSettings::default()
    };
    let stats = simulate(&config, settings, 8 * 60_000, Some(truth_path.clone())).await;
    let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    assert!(get(&stats.duplicates) > 20, "{}", get(&stats.duplicates));
    assert!(get(&stats.late) > 30, "{}", get(&stats.late));
    assert!(get(&stats.malformed) > 50, "{}", get(&stats.malformed));

    let service = InProcess::start(config.clone()).await;
    let (output, watermark_ms) = drained_output(&service, &config, stats.sent()).await;
    let truth: Vec<TruthRow> = std::fs::read_to_string(&truth_path)
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let windows = config.window_specs().unwrap();
    let (exact, bounded) = compare(&truth, &output, &windows, watermark_ms);
    eprintln!("{exact} window values equal to the truth, {bounded} within late-event bounds");
    assert!(exact > 600 && bounded > 0, "{exact} exact, {bounded} bounded");

    // Every duplicate copy was recognised, and every malformed message rejected.
    let (_, text) = crate::support::service::get(service.http_addr, "/metrics").await;
    let metrics = parse_metrics(&text);
    let duplicates = total(&metrics, names::DUPLICATES);
    assert!(duplicates > 0.0 && duplicates <= get(&stats.duplicates) as f64, "{duplicates}");
    let rejected: f64 = metrics
        .iter()
        .filter(|(s, _)| s.starts_with(names::EVENTS_REJECTED) && !s.contains("too_late"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(rejected, get(&stats.malformed) as f64);
    service.stop().await;
}

#[tokio::test]
async fn an_injected_drop_halves_the_creatives_ipm_in_windows_after_it() {
    let bootstrap = &broker::shared().bootstrap;
    let config = test_config(bootstrap);
    create_topics(bootstrap, &config, 2).await;
    let start = start_ms(30);
    let drop_at = Duration::from_secs(6 * 60);
    let settings = TrafficSettings {
        seed: 7,
        start_ms: start,
        rate_per_s: 800.0,
        campaigns: 3,
        max_creatives: 2,
        // Flat traffic, so that the windows before and after differ only by the drop.
        daily_amplitude: 0.0,
        day_length: Duration::from_secs(7200),
        out_of_orderness_ms: config.out_of_orderness_ms(),
        incidents: vec![Incident::Drop { creative_id: "cr-01-1".into(), factor: 0.5, at: drop_at }],
        ..TrafficSettings::default()
    };
    let stats = simulate(&config, settings, 12 * 60_000, None).await;
    let service = InProcess::start(config.clone()).await;
    let (output, watermark_ms) = drained_output(&service, &config, stats.sent()).await;
    service.stop().await;

    // The 5m windows [+1m, +6m) and [+6m, +11m): wholly before and wholly after the drop.
    let key = ("c-01".to_string(), "cr-01-1".to_string(), "5m".to_string());
    let published = &series(&output)[&key];
    let at = |end_ms: i64| published.range(..=end_ms).next_back().map(|(_, c)| *c).unwrap();
    let drop_ms = start + drop_at.as_millis() as i64;
    assert!(watermark_ms >= drop_ms + 300_000, "the window after the drop was published");
    let before = at(drop_ms);
    let after = at(drop_ms + 300_000);
    let ipm = |(impressions, installs): (u64, u64)| installs as f64 * 1000.0 / impressions as f64;
    let ratio = ipm(after) / ipm(before);
    // Installs are Poisson in both windows: the ratio's relative standard deviation is about
    // sqrt(1/before + 1/after), under 3% for these volumes; allow four of it.
    let spread = (1.0 / before.1 as f64 + 1.0 / after.1 as f64).sqrt();
    eprintln!("before {before:?} after {after:?}: IPM {:.2} → {:.2}", ipm(before), ipm(after));
    assert!(before.1 > 2000 && after.1 > 1000, "{before:?} {after:?}");
    assert!(spread < 0.035, "{spread}");
    assert!((ratio - 0.5).abs() < 4.0 * spread * 0.5, "ratio {ratio:.3}, spread {spread:.3}");
    // Impressions are unaffected: flat traffic within Poisson noise.
    let impressions = after.0 as f64 / before.0 as f64;
    assert!((impressions - 1.0).abs() < 0.03, "impressions ratio {impressions:.3}");
}
