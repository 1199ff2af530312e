//! Dirty input against the real broker: malformed messages of every kind go to the dead-letter
//! topic unchanged with their reason and source, duplicates are counted once, the output still
//! equals the clean reference, and an unwritable dead-letter topic holds commits back.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ipm_stream::config::{Config, Layout};
use ipm_stream::deadletter::headers;
use ipm_stream::metrics::names;

use crate::pipeline::{final_watermark, partition_events, Lcg, PARTITIONS, T0};
use crate::support::broker;
use crate::support::kafka::{self, Consumed, TestRecord};
use crate::support::reference::{changes, RefEvent};
use crate::support::service::{read_output, test_config, wait_for_metrics, InProcess, WINDOWS};

/// Largest message the tests accept; the oversized one is built past it.
const MAX_MESSAGE_BYTES: usize = 2_000;

fn single_topic_config(bootstrap: &str) -> Config {
    let mut config = test_config(bootstrap);
    config.input.layout = Layout::Single;
    config.input.max_message_bytes = MAX_MESSAGE_BYTES;
    config
}

fn event_json(event: &RefEvent, id: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "event_id": id,
        "type": if event.install { "install" } else { "impression" },
        "campaign_id": event.campaign_id,
        "creative_id": event.creative_id,
        "ts": ipm_stream::output::rfc3339(event.time_ms),
    }))
    .unwrap()
}

/// One malformed message of each kind decoding can refuse, with the reason expected for it.
fn malformed(n: usize) -> Vec<(&'static str, Vec<u8>)> {
    let ts = ipm_stream::output::rfc3339(T0 + 1_000);
    let future = ipm_stream::output::rfc3339(chrono::Utc::now().timestamp_millis() + 86_400_000);
    let padding = "x".repeat(MAX_MESSAGE_BYTES);
    let object = |fields: &str| format!(r#"{{"event_id":"bad-{n}"{fields}}}"#).into_bytes();
    vec![
        ("not_utf8", vec![b'{', 0xff, 0xfe, b'}']),
        ("not_json", br#"{"campaign_id":"c-1","#.to_vec()),
        ("not_object", b"[1,2,3]".to_vec()),
        (
            "missing_campaign_id",
            object(&format!(r#","type":"install","creative_id":"x","ts":"{ts}""#)),
        ),
        (
            "missing_campaign_id",
            object(&format!(r#","type":"install","campaign_id":"","creative_id":"x","ts":"{ts}""#)),
        ),
        (
            "missing_creative_id",
            object(&format!(r#","type":"install","campaign_id":"c-1","ts":"{ts}""#)),
        ),
        ("missing_type", object(&format!(r#","campaign_id":"c-1","creative_id":"x","ts":"{ts}""#))),
        (
            "unknown_type",
            object(&format!(
                r#","type":"click","campaign_id":"c-1","creative_id":"x","ts":"{ts}""#
            )),
        ),
        ("missing_time", object(r#","type":"install","campaign_id":"c-1","creative_id":"x""#)),
        (
            "bad_time",
            object(r#","type":"install","campaign_id":"c-1","creative_id":"x","ts":"yesterday""#),
        ),
        (
            "future_time",
            object(&format!(
                r#","type":"install","campaign_id":"c-1","creative_id":"x","ts":"{future}""#
            )),
        ),
        (
            "too_large",
            object(&format!(
                r#","type":"install","campaign_id":"c-1","creative_id":"x","ts":"{ts}","pad":"{padding}""#
            )),
        ),
    ]
}

/// A bad message produced by the test, and where it landed.
struct Bad {
    reason: &'static str,
    partition: i32,
    value: Vec<u8>,
    trace: String,
}

fn header<'a>(record: &'a Consumed, name: &str) -> Option<&'a [u8]> {
    record.headers.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_slice())
}

#[tokio::test]
async fn dirty_input_is_dead_lettered_with_reasons_and_output_equals_the_clean_reference() {
    let bootstrap = &broker::shared().bootstrap;
    let config = single_topic_config(bootstrap);
    let topic = config.input.events_topic.clone();
    kafka::create_topic(bootstrap, &topic, PARTITIONS).await;
    kafka::create_compacted_topic(bootstrap, &config.output.topic, 1).await;
    kafka::create_topic(bootstrap, &config.dead_letter.topic, 1).await;

    // Clean traffic per partition, with ids; installs mixed in.
    let partitions: Vec<Vec<RefEvent>> = (0..PARTITIONS)
        .map(|p| {
            let mut rng = Lcg(300 + p as u64);
            let mut events = partition_events(200 + p as u64, false, 900, 400);
            for event in &mut events {
                event.install = rng.next(10) == 0;
            }
            events
        })
        .collect();
    let id = |p: usize, i: usize| format!("ev-{p}-{i}");
    let split = 240;

    let mut first = Vec::new();
    let mut rest = Vec::new();
    let mut bad = Vec::new();
    let mut duplicates = 0;
    for (p, events) in partitions.iter().enumerate() {
        let partition = p as i32;
        let mut rng = Lcg(700 + p as u64);
        for (i, event) in events.iter().enumerate() {
            let target = if i < split { &mut first } else { &mut rest };
            let clean = event_json(event, &id(p, i));
            target.push(TestRecord {
                partition: Some(partition),
                value: Some(clean.clone()),
                ..TestRecord::default()
            });
            // Attribution retries: some copies right away, on another partition too.
            if i % 17 == 3 {
                target.push(TestRecord {
                    partition: Some((partition + 1) % PARTITIONS),
                    value: Some(clean),
                    ..TestRecord::default()
                });
                duplicates += 1;
            }
            // About one message in ten is malformed, of every kind, across partitions.
            if rng.next(10) == 0 {
                let kinds = malformed(bad.len());
                let (reason, value) = kinds[bad.len() % kinds.len()].clone();
                let trace = format!("trace-{}", bad.len());
                target.push(TestRecord {
                    partition: Some(partition),
                    value: Some(value.clone()),
                    key: Some(b"original-key".to_vec()),
                    headers: vec![("trace-id".into(), trace.clone().into_bytes())],
                    ..TestRecord::default()
                });
                bad.push(Bad { reason, partition, value, trace });
            }
        }
    }
    assert!(bad.len() >= 2 * malformed(0).len(), "every kind appears at least twice");
    kafka::produce(bootstrap, &topic, &first).await;

    let all: Vec<RefEvent> = partitions.iter().flatten().cloned().collect();
    let first_part: Vec<Vec<RefEvent>> = partitions.iter().map(|p| p[..split].to_vec()).collect();
    let first_expected = changes(&all, &WINDOWS, final_watermark(&first_part));
    let service = InProcess::start(config.clone()).await;
    read_output(bootstrap, &config.output.topic, Duration::from_secs(90), |out| {
        first_expected.keys().all(|k| out.values.contains_key(k))
    })
    .await;

    // Now that windows have been published: events too old for every window, and retries of
    // events counted minutes of event time ago, still within the dedupe horizon.
    let mut late = Vec::new();
    for (p, events) in partitions.iter().enumerate() {
        let stale = RefEvent { time_ms: T0 - 3_600_000, ..events[0].clone() };
        let value = event_json(&stale, &format!("stale-{p}"));
        late.push(TestRecord {
            partition: Some(p as i32),
            value: Some(value.clone()),
            headers: vec![("trace-id".into(), format!("late-{p}").into_bytes())],
            ..TestRecord::default()
        });
        bad.push(Bad {
            reason: "too_late",
            partition: p as i32,
            value,
            trace: format!("late-{p}"),
        });
        for i in [split - 150, split - 40, split - 1] {
            late.push(TestRecord {
                partition: Some(p as i32),
                value: Some(event_json(&events[i], &id(p, i))),
                ..TestRecord::default()
            });
            duplicates += 1;
        }
    }
    kafka::produce(bootstrap, &topic, &late).await;
    kafka::produce(bootstrap, &topic, &rest).await;
    let expected = changes(&all, &WINDOWS, final_watermark(&partitions));
    let output = read_output(bootstrap, &config.output.topic, Duration::from_secs(90), |out| {
        out.values.len() >= expected.len()
    })
    .await;
    assert_eq!(output.values, expected);
    assert_eq!(output.updates.len(), expected.len());

    // The dead-letter topic holds exactly the bad messages, unchanged, with reason and source.
    let letters =
        kafka::consume_until(bootstrap, &config.dead_letter.topic, Duration::from_secs(60), |r| {
            r.len() >= bad.len()
        })
        .await;
    assert_eq!(letters.len(), bad.len());
    let mut offsets_seen = std::collections::BTreeSet::new();
    for expected_bad in &bad {
        let letter = letters
            .iter()
            .find(|l| header(l, "trace-id") == Some(expected_bad.trace.as_bytes()))
            .unwrap_or_else(|| panic!("no dead letter for {}", expected_bad.trace));
        assert_eq!(letter.value.as_deref(), Some(expected_bad.value.as_slice()));
        assert_eq!(header(letter, headers::REASON), Some(expected_bad.reason.as_bytes()));
        assert_eq!(header(letter, headers::TOPIC), Some(topic.as_bytes()));
        let partition = expected_bad.partition.to_string();
        assert_eq!(header(letter, headers::PARTITION), Some(partition.as_bytes()));
        let offset: i64 =
            std::str::from_utf8(header(letter, headers::OFFSET).unwrap()).unwrap().parse().unwrap();
        assert!(offsets_seen.insert((expected_bad.partition, offset)), "one letter per message");
        assert!(header(letter, headers::MESSAGE).is_some_and(|m| !m.is_empty()));
        assert!(header(letter, headers::TIMESTAMP).is_some());
        if expected_bad.trace.starts_with("trace-") {
            assert_eq!(letter.key.as_deref(), Some(&b"original-key"[..]));
        }
    }

    // Every reason is counted exactly, as are duplicates.
    let mut by_reason: BTreeMap<&str, usize> = BTreeMap::new();
    for b in &bad {
        *by_reason.entry(b.reason).or_default() += 1;
    }
    let series =
        |metric: &str, reason: &str| format!("{metric}{{reason=\"{reason}\",topic=\"{topic}\"}}");
    let written = series(names::DEAD_LETTERS, "too_late");
    let metrics = wait_for_metrics(service.http_addr, Duration::from_secs(30), |m| {
        m.get(&written) == Some(&(PARTITIONS as f64))
    })
    .await;
    for (reason, count) in &by_reason {
        assert_eq!(
            metrics.get(&series(names::EVENTS_REJECTED, reason)),
            Some(&(*count as f64)),
            "{reason}"
        );
        assert_eq!(
            metrics.get(&series(names::DEAD_LETTERS, reason)),
            Some(&(*count as f64)),
            "{reason}"
        );
    }
    let duplicate_series = format!("{}{{topic=\"{topic}\"}}", names::DUPLICATES);
    assert_eq!(metrics[&duplicate_series], duplicates as f64);
    let counted = format!("{}{{outcome=\"counted\",topic=\"{topic}\"}}", names::EVENTS_CONSUMED);
    assert_eq!(metrics[&counted], all.len() as f64);
    service.stop().await;
}

#[tokio::test]
async fn unwritable_dead_letter_topic_holds_offsets_back_until_it_recovers() {
    let bootstrap = &broker::shared().bootstrap;
    let mut config = single_topic_config(bootstrap);
    // Fail deliveries to the missing topic fast, so the test sees retries within seconds.
    config.kafka.producer.insert("message.timeout.ms".into(), "2000".into());
    config.kafka.producer.insert("topic.metadata.propagation.max.ms".into(), "500".into());
    let topic = config.input.events_topic.clone();
    kafka::create_topic(bootstrap, &topic, 1).await;
    kafka::create_compacted_topic(bootstrap, &config.output.topic, 1).await;

    let events = partition_events(5, false, 1_000, 200);
    let mut records: Vec<TestRecord> = events
        .iter()
        .enumerate()
        .map(|(i, e)| TestRecord {
            value: Some(event_json(e, &format!("u-{i}"))),
            ..TestRecord::default()
        })
        .collect();
    let bad_offset = 50;
    records.insert(
        bad_offset,
        TestRecord { value: Some(b"not json".to_vec()), ..TestRecord::default() },
    );
    kafka::produce(bootstrap, &topic, &records).await;

    let service = InProcess::start(config.clone()).await;
    let expected = changes(&events, &WINDOWS, final_watermark(std::slice::from_ref(&events)));
    let rejected = format!("{}{{reason=\"not_json\",topic=\"{topic}\"}}", names::EVENTS_REJECTED);
    wait_for_metrics(service.http_addr, Duration::from_secs(30), |m| m.contains_key(&rejected))
        .await;
    // While the dead letter cannot be written, nothing is committed past it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let committed = kafka::committed_offsets(bootstrap, &config.kafka.group_id, &topic, 1);
        assert!(
            committed[0].1 <= bad_offset as i64,
            "committed past the unwritten letter: {committed:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (_, text) = crate::support::service::get(service.http_addr, "/metrics").await;
    assert!(!text.contains(names::DEAD_LETTERS), "nothing counted as written yet");

    // Once the topic exists the letter is written, commits move to the end and nothing is lost.
    kafka::create_topic(bootstrap, &config.dead_letter.topic, 1).await;
    let letters =
        kafka::consume_until(bootstrap, &config.dead_letter.topic, Duration::from_secs(60), |r| {
            !r.is_empty()
        })
        .await;
    assert_eq!(letters[0].value.as_deref(), Some(&b"not json"[..]));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let committed = kafka::committed_offsets(bootstrap, &config.kafka.group_id, &topic, 1);
        if committed[0].1 == records.len() as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "commits did not reach the end: {committed:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let output = read_output(bootstrap, &config.output.topic, Duration::from_secs(60), |out| {
        out.values.len() >= expected.len()
    })
    .await;
    assert_eq!(output.values, expected);
    let letters =
        kafka::consume_until(bootstrap, &config.dead_letter.topic, Duration::from_secs(10), |r| {
            !r.is_empty()
        })
        .await;
    assert_eq!(letters.len(), 1, "the letter is written once");
    service.stop().await;
}

/// A stream with one undecodable message at `bad_offset` of a one-partition topic.
async fn stream_with_one_bad_message(config: &Config, bad_offset: usize) -> Vec<RefEvent> {
    let bootstrap = &config.kafka.brokers;
    kafka::create_topic(bootstrap, &config.input.events_topic, 1).await;
    kafka::create_compacted_topic(bootstrap, &config.output.topic, 1).await;
    kafka::create_topic(bootstrap, &config.dead_letter.topic, 1).await;
    let events = partition_events(9, false, 1_000, 120);
    let mut records: Vec<TestRecord> = events
        .iter()
        .enumerate()
        .map(|(i, e)| TestRecord {
            value: Some(event_json(e, &format!("m-{i}"))),
            ..TestRecord::default()
        })
        .collect();
    let bad = TestRecord { value: Some(b"{oops".to_vec()), ..TestRecord::default() };
    records.insert(bad_offset, bad);
    kafka::produce(bootstrap, &config.input.events_topic, &records).await;
    events
}

#[tokio::test]
async fn drop_mode_counts_bad_input_and_writes_no_dead_letter() {
    let bootstrap = &broker::shared().bootstrap;
    let mut config = single_topic_config(bootstrap);
    config.dead_letter.on_error = ipm_stream::deadletter::OnError::Drop;
    let events = stream_with_one_bad_message(&config, 30).await;
    let expected = changes(&events, &WINDOWS, final_watermark(std::slice::from_ref(&events)));

    let service = InProcess::start(config.clone()).await;
    let output = read_output(bootstrap, &config.output.topic, Duration::from_secs(60), |out| {
        out.values.len() >= expected.len()
    })
    .await;
    assert_eq!(output.values, expected);
    let topic = &config.input.events_topic;
    let rejected = format!("{}{{reason=\"not_json\",topic=\"{topic}\"}}", names::EVENTS_REJECTED);
    let metrics =
        wait_for_metrics(service.http_addr, Duration::from_secs(10), |m| m.contains_key(&rejected))
            .await;
    assert_eq!(metrics[&rejected], 1.0);
    assert!(!metrics.keys().any(|k| k.starts_with(names::DEAD_LETTERS)));
    service.stop().await;
    assert_eq!(kafka::end_offsets(bootstrap, &config.dead_letter.topic, 1), [0]);
}

#[tokio::test]
async fn fail_mode_stops_at_the_bad_message_without_committing_past_it() {
    let bootstrap = &broker::shared().bootstrap;
    let mut config = single_topic_config(bootstrap);
    config.dead_letter.on_error = ipm_stream::deadletter::OnError::Fail;
    let bad_offset = 30;
    stream_with_one_bad_message(&config, bad_offset).await;

    let service = InProcess::start(config.clone()).await;
    let ended = service.stopped(Duration::from_secs(60)).await;
    let error = ended.expect_err("the service stops with an error");
    let message = error.to_string();
    let topic = &config.input.events_topic;
    assert!(message.contains(&format!("{topic}/0@{bad_offset}")), "{message}");
    assert!(message.contains("not_json"), "{message}");
    let committed = kafka::committed_offsets(bootstrap, &config.kafka.group_id, topic, 1);
    assert!(committed[0].1 <= bad_offset as i64, "{committed:?}");
}
