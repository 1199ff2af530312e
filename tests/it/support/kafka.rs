//! Kafka client helpers for the integration tests: unique names, topic creation, producing,
//! reading a whole topic back and reading a group's committed offsets. Everything panics on
//! failure, since a test has nothing better to do with a Kafka error.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

const ADMIN_TIMEOUT: Duration = Duration::from_secs(30);

/// A record to produce; `None` fields are left to the client/broker defaults.
#[derive(Clone, Debug, Default)]
pub struct TestRecord {
    pub partition: Option<i32>,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub timestamp_ms: Option<i64>,
    pub headers: Vec<(String, Vec<u8>)>,
}

/// A record read back from a topic. Header values that are null come back empty.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Consumed {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp_ms: Option<i64>,
}

/// `prefix` plus a suffix unique across tests and test processes sharing one broker.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}

/// Creates a topic with replication factor 1 and waits until every partition has a leader.
pub async fn create_topic(bootstrap: &str, name: &str, partitions: i32) {
    create(bootstrap, NewTopic::new(name, partitions, TopicReplication::Fixed(1))).await;
}

/// Like [`create_topic`], with `cleanup.policy=compact`.
pub async fn create_compacted_topic(bootstrap: &str, name: &str, partitions: i32) {
    let topic = NewTopic::new(name, partitions, TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact");
    create(bootstrap, topic).await;
}

async fn create(bootstrap: &str, topic: NewTopic<'_>) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("create admin client");
    let opts = AdminOptions::new().operation_timeout(Some(ADMIN_TIMEOUT));
    let results = admin.create_topics([&topic], &opts).await.expect("create_topics request");
    for result in results {
        if let Err((name, code)) = result {
            panic!("creating topic {name} failed: {code}");
        }
    }
    // The controller has accepted the topic, but clients that look it up right away could
    // still see it unknown or leaderless on the broker side.
    let (name, partitions) = (topic.name, topic.num_partitions);
    let deadline = Instant::now() + ADMIN_TIMEOUT;
    loop {
        let metadata = admin.inner().fetch_metadata(Some(name), Duration::from_secs(5));
        let ready = metadata.is_ok_and(|m| {
            m.topics().iter().any(|t| {
                t.name() == name
                    && t.error().is_none()
                    && i32::try_from(t.partitions().len()) == Ok(partitions)
                    && t.partitions().iter().all(|p| p.leader() >= 0)
            })
        });
        if ready {
            return;
        }
        assert!(Instant::now() < deadline, "topic {name} has no leaders after {ADMIN_TIMEOUT:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Produces `records` in order (acks=all) and waits until every one is acknowledged.
pub async fn produce(bootstrap: &str, topic: &str, records: &[TestRecord]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("acks", "all")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "30000")
        .create()
        .expect("create producer");
    // Enqueue everything before awaiting so the order within a partition is the slice order.
    let mut deliveries = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        let mut record = FutureRecord::<[u8], [u8]>::to(topic);
        record.partition = r.partition;
        record.key = r.key.as_deref();
        record.payload = r.value.as_deref();
        record.timestamp = r.timestamp_ms;
        if !r.headers.is_empty() {
            let mut headers = rdkafka::message::OwnedHeaders::new();
            for (key, value) in &r.headers {
                headers = headers.insert(rdkafka::message::Header { key, value: Some(value) });
            }
            record.headers = Some(headers);
        }
        match producer.send_result(record) {
            Ok(delivery) => deliveries.push(delivery),
            Err((e, _)) => panic!("enqueueing record {i} for {topic} failed: {e}"),
        }
    }
    for (i, delivery) in deliveries.into_iter().enumerate() {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => panic!("producing record {i} to {topic} failed: {e}"),
            Err(_) => panic!("producer dropped record {i} for {topic}"),
        }
    }
}

/// Reads all partitions of `topic` from the beginning (`read_committed`) until `done` returns
/// true for the records seen so far, in arrival order; panics after `timeout`.
pub async fn consume_until(
    bootstrap: &str,
    topic: &str,
    timeout: Duration,
    mut done: impl FnMut(&[Consumed]) -> bool,
) -> Vec<Consumed> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        // Never joined (partitions are assigned by hand); librdkafka just wants a group id.
        .set("group.id", unique("it-reader"))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .create()
        .expect("create consumer");
    let partitions = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .expect("fetch topic metadata")
        .topics()
        .iter()
        .find(|t| t.name() == topic)
        .map_or(0, |t| t.partitions().len());
    assert!(partitions > 0, "topic {topic} has no partitions (does it exist?)");
    let mut tpl = TopicPartitionList::new();
    for p in 0..i32::try_from(partitions).expect("partition count fits i32") {
        tpl.add_partition_offset(topic, p, Offset::Beginning).expect("add partition");
    }
    consumer.assign(&tpl).expect("assign partitions");

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + timeout;
    while !done(&seen) {
        let msg = match tokio::time::timeout_at(deadline, consumer.recv()).await {
            Ok(Ok(msg)) => msg,
            Ok(Err(e)) => panic!("consuming {topic} failed: {e}"),
            Err(_) => panic!(
                "consume_until({topic}) timed out after {timeout:?} having seen {} records",
                seen.len()
            ),
        };
        let headers = msg.headers().map_or_else(Vec::new, |hs| {
            hs.iter()
                .map(|h| (h.key.to_string(), h.value.map_or_else(Vec::new, <[u8]>::to_vec)))
                .collect()
        });
        seen.push(Consumed {
            partition: msg.partition(),
            offset: msg.offset(),
            key: msg.key().map(<[u8]>::to_vec),
            value: msg.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: msg.timestamp().to_millis(),
        });
    }
    seen
}

/// `(partition, committed offset, commit metadata)` of `group` for partitions
/// `0..partitions` of `topic`. The offset is -1 where nothing is committed; empty metadata
/// is `None`. Reads without joining the group, so it does not disturb a running member.
pub fn committed_offsets(
    bootstrap: &str,
    group: &str,
    topic: &str,
    partitions: i32,
) -> Vec<(i32, i64, Option<String>)> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("create consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let committed = consumer
        .committed_offsets(tpl, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("reading committed offsets of {group} failed: {e}"));
    committed
        .elements_for_topic(topic)
        .iter()
        .map(|e| {
            let offset = match e.offset() {
                Offset::Offset(o) => o,
                _ => -1,
            };
            let metadata = Some(e.metadata()).filter(|m| !m.is_empty()).map(str::to_owned);
            (e.partition(), offset, metadata)
        })
        .collect()
}

/// The high watermark (end offset) of each partition `0..partitions` of `topic`.
pub fn end_offsets(bootstrap: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", bootstrap).create().expect("create consumer");
    (0..partitions)
        .map(|p| {
            let (_, high) = consumer
                .fetch_watermarks(topic, p, Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("reading the end of {topic}/{p} failed: {e}"));
            high
        })
        .collect()
}
