//! Integration tests against a real Kafka broker (see `support::broker`); one test binary so
//! every test shares a single broker startup.

mod badinput;
mod cli;
mod demo;
mod deploy;
mod outage;
mod pipeline;
mod restart;
mod simulate;
mod support;

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

use support::broker;
use support::kafka::{self, TestRecord};

#[tokio::test]
async fn broker_starts_and_round_trips_a_record() {
    let bootstrap = &broker::shared().bootstrap;
    let topic = kafka::unique("roundtrip");
    kafka::create_topic(bootstrap, &topic, 3).await;

    let records: Vec<TestRecord> = (0..3)
        .map(|p| TestRecord {
            partition: Some(p),
            key: Some(format!("key-{p}").into_bytes()),
            value: Some(format!("value-{p}").into_bytes()),
            timestamp_ms: Some(1_700_000_000_000 + i64::from(p)),
            headers: vec![("h".into(), vec![p as u8])],
        })
        .collect();
    kafka::produce(bootstrap, &topic, &records).await;

    let mut seen =
        kafka::consume_until(bootstrap, &topic, Duration::from_secs(30), |r| r.len() >= 3).await;
    seen.sort_by_key(|c| c.partition);
    assert_eq!(seen.len(), 3);
    for (p, c) in (0..3).zip(&seen) {
        assert_eq!(c.partition, p);
        assert_eq!(c.offset, 0);
        assert_eq!(c.key.as_deref(), Some(format!("key-{p}").as_bytes()));
        assert_eq!(c.value.as_deref(), Some(format!("value-{p}").as_bytes()));
        assert_eq!(c.timestamp_ms, Some(1_700_000_000_000 + i64::from(p)));
        assert_eq!(c.headers, [("h".to_string(), vec![p as u8])]);
    }
}

#[tokio::test]
async fn committed_offsets_reads_back_offset_and_metadata() {
    let bootstrap = &broker::shared().bootstrap;
    let topic = kafka::unique("commits");
    let group = kafka::unique("group");
    kafka::create_topic(bootstrap, &topic, 2).await;

    let committer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", &group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("create committing consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 1, Offset::Offset(42)).unwrap();
    tpl.find_partition(&topic, 1).unwrap().set_metadata("window=2024-01-01T00:00:00Z;v=1");
    committer.commit(&tpl, CommitMode::Sync).expect("commit offsets");

    let committed = kafka::committed_offsets(bootstrap, &group, &topic, 2);
    assert_eq!(
        committed,
        vec![(0, -1, None), (1, 42, Some("window=2024-01-01T00:00:00Z;v=1".to_string()))]
    );
}
