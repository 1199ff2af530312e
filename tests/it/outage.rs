//! A broker that is down at start and again mid-run: the service keeps running, reports not
//! ready while it cannot reach the broker, and once the broker is back publishes exactly the
//! reference values, losing nothing.

use std::time::Duration;

use crate::pipeline::{
    create_separate_topics, final_watermark, partition_events, produce_partitions, split,
    PARTITIONS,
};
use crate::support::broker::OwnBroker;
use crate::support::reference::{changes, RefEvent};
use crate::support::service::{get, read_output, test_config, wait_for_status, InProcess, WINDOWS};

#[tokio::test]
async fn broker_down_at_start_and_mid_run_loses_nothing_and_readiness_follows_it() {
    let broker = tokio::task::spawn_blocking(OwnBroker::start).await.unwrap();
    let bootstrap = broker.bootstrap.clone();
    let config = test_config(&bootstrap);
    create_separate_topics(&bootstrap, &config, 1).await;
    let broker = tokio::task::spawn_blocking(move || {
        broker.kill();
        broker
    })
    .await
    .unwrap();

    // Down at start: alive, not ready, no crash.
    let service = InProcess::start(config.clone()).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(get(service.http_addr, "/healthz").await.0, 200);
    assert_eq!(get(service.http_addr, "/readyz").await.0, 503);

    let broker = tokio::task::spawn_blocking(move || {
        broker.resume();
        broker
    })
    .await
    .unwrap();
    let impressions: Vec<Vec<RefEvent>> =
        (0..PARTITIONS).map(|p| partition_events(41 + p as u64, false, 900, 300)).collect();
    let installs: Vec<Vec<RefEvent>> =
        (0..PARTITIONS).map(|p| partition_events(43 + p as u64, true, 12_000, 24)).collect();
    let (impressions_first, impressions_rest) = split(&impressions, 50);
    let (installs_first, installs_rest) = split(&installs, 50);
    produce_partitions(&bootstrap, &config.input.impressions_topic, &impressions_first).await;
    produce_partitions(&bootstrap, &config.input.installs_topic, &installs_first).await;
    let all: Vec<RefEvent> = impressions.iter().chain(&installs).flatten().cloned().collect();
    let first_watermark =
        final_watermark(&[impressions_first.clone(), installs_first.clone()].concat());
    let first_expected = changes(&all, &WINDOWS, first_watermark);
    read_output(&bootstrap, &config.output.topic, Duration::from_secs(90), |out| {
        first_expected.keys().all(|k| out.values.contains_key(k))
    })
    .await;
    wait_for_status(service.http_addr, "/readyz", 200, Duration::from_secs(30)).await;

    // Down mid-run: readiness goes false, the process stays up.
    let broker = tokio::task::spawn_blocking(move || {
        broker.kill();
        broker
    })
    .await
    .unwrap();
    wait_for_status(service.http_addr, "/readyz", 503, Duration::from_secs(30)).await;
    assert_eq!(get(service.http_addr, "/healthz").await.0, 200);

    // Back: the rest of the stream is counted and every value published, as if nothing happened.
    let broker = tokio::task::spawn_blocking(move || {
        broker.resume();
        broker
    })
    .await
    .unwrap();
    produce_partitions(&bootstrap, &config.input.impressions_topic, &impressions_rest).await;
    produce_partitions(&bootstrap, &config.input.installs_topic, &installs_rest).await;
    let expected = changes(&all, &WINDOWS, final_watermark(&[impressions, installs].concat()));
    let output = read_output(&bootstrap, &config.output.topic, Duration::from_secs(120), |out| {
        expected.keys().all(|k| out.values.contains_key(k))
    })
    .await;
    for (key, counts) in &expected {
        assert_eq!(output.values.get(key), Some(counts), "{key:?}");
    }
    assert!(output.values.len() >= expected.len());
    for ((campaign, creative, window, end), counts) in &output.values {
        let spec = WINDOWS.iter().find(|w| w.name == window).unwrap();
        let truth = crate::support::reference::value_at(&all, spec, (campaign, creative), *end);
        assert_eq!(*counts, truth, "{campaign}/{creative} {window} at {end}");
    }
    wait_for_status(service.http_addr, "/readyz", 200, Duration::from_secs(30)).await;
    service.stop().await;
    drop(broker);
}
