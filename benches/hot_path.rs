//! Per-event cost of the hot path — decoding a message and counting it into its windows —
//! against a baseline measured in the same run: parsing the same payload into a
//! `serde_json::Value`, the allocation-heavy way. Run with `cargo bench --bench hot_path`;
//! under `cargo test` it only checks that every step runs.

use std::hint::black_box;
use std::time::{Duration, Instant};

use ipm_stream::aggregate::{Aggregator, AggregatorSettings, InputPartition, Observation};
use ipm_stream::decode::{DecodeSettings, Decoder, EventKind, KindSource};
use ipm_stream::window::WindowSpec;

const KEYS: u64 = 2_000;
const PARTITIONS: i32 = 4;

fn payloads(count: usize) -> Vec<Vec<u8>> {
    let start_ms = 1_796_292_000_000i64;
    (0..count as u64)
        .map(|i| {
            // A cheap scramble spreads events over keys unevenly, like real traffic.
            let key = (i.wrapping_mul(2_654_435_761) >> 7) % KEYS;
            let time = ipm_stream::output::rfc3339(start_ms + (i as i64) * 3);
            format!(
                r#"{{"event_id":"e-{i}","campaign_id":"c-{}","creative_id":"cr-{key}","ts":"{time}","device":{{"os":"android","ver":"14"}}}}"#,
                key % 97
            )
            .into_bytes()
        })
        .collect()
}

fn aggregator() -> Aggregator {
    let window = |name: &str, size_ms: i64, slide_ms: i64| WindowSpec {
        name: name.into(),
        size_ms,
        slide_ms,
    };
    let mut aggregator = Aggregator::new(AggregatorSettings {
        windows: vec![
            window("5m", 300_000, 10_000),
            window("1h", 3_600_000, 60_000),
            window("24h", 86_400_000, 900_000),
        ],
        out_of_orderness_ms: 30_000,
        idle_timeout_ms: 30_000,
        replay_horizon_ms: 0,
    });
    for partition in 0..PARTITIONS {
        aggregator.assign(InputPartition { topic: 0, partition }, Default::default(), 0);
    }
    aggregator
}

/// Best time per event over `rounds` passes of `pass`.
fn best_ns_per_event(events: usize, rounds: usize, mut pass: impl FnMut()) -> f64 {
    let mut best = Duration::MAX;
    for _ in 0..rounds {
        let started = Instant::now();
        pass();
        best = best.min(started.elapsed());
    }
    best.as_nanos() as f64 / events as f64
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let (count, rounds) = if full { (200_000, 7) } else { (20_000, 1) };
    let payloads = payloads(count);
    let decoder = Decoder::new(&DecodeSettings::default()).expect("default pointers are valid");
    let kind = KindSource::Fixed(EventKind::Impression);

    let baseline = best_ns_per_event(count, rounds, || {
        for payload in &payloads {
            let value: serde_json::Value = serde_json::from_slice(payload).expect("valid JSON");
            black_box(value);
        }
    });
    let decode = best_ns_per_event(count, rounds, || {
        for payload in &payloads {
            black_box(decoder.decode(payload, &kind, None).expect("valid event"));
        }
    });
    let mut counted = 0;
    let mut filled = None;
    let decode_and_count = best_ns_per_event(count, rounds, || {
        let mut aggregator = aggregator();
        for (offset, payload) in payloads.iter().enumerate() {
            let event = decoder.decode(payload, &kind, None).expect("valid event");
            let partition = InputPartition { topic: 0, partition: offset as i32 % PARTITIONS };
            let observation = Observation {
                campaign_id: &event.campaign_id,
                creative_id: &event.creative_id,
                kind: event.kind,
                event_time_ms: event.event_time_ms,
            };
            let admission = aggregator.observe(partition, offset as i64, &observation, 0);
            counted += usize::from(admission.counted);
        }
        filled = Some(aggregator);
    });
    assert_eq!(counted, count * rounds, "every event is counted");

    // Emission: every boundary the stream passed, for every key held.
    let mut aggregator = filled.expect("at least one pass");
    let started = Instant::now();
    let round = aggregator.advance(0).expect("the stream passes boundaries");
    let emit = started.elapsed();
    let updates = round.updates.len();

    println!("events per pass: {count}, best of {rounds} passes, {KEYS} keys");
    println!("baseline  serde_json::Value parse : {baseline:8.1} ns/event  (1.00x)");
    println!(
        "decode    (borrowed, one pass)    : {decode:8.1} ns/event  ({:.2}x)",
        decode / baseline
    );
    println!(
        "decode + count into 3 windows     : {decode_and_count:8.1} ns/event  ({:.2}x)",
        decode_and_count / baseline
    );
    println!(
        "emit one round: {updates} updates in {:.1} ms ({:.0} ns/update)",
        emit.as_secs_f64() * 1000.0,
        emit.as_nanos() as f64 / updates.max(1) as f64
    );
}
