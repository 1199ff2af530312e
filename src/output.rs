//! Output records: the JSON schema of a live IPM value, its unambiguous Kafka key, and the
//! producer that delivers a round's records in order, retrying until the broker takes them.
//! Deciding what to publish is the aggregator's job; committing input offsets is the pipeline's.

use std::time::Duration;

use chrono::{DateTime, SecondsFormat};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::aggregate::{CreativeKey, WindowUpdate};
use crate::ipm::Ipm;
use crate::window::WindowSpec;

/// Version of the output record schema; bumped on any incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// One live IPM value, as published on the output topic and served by the pull API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpmRecord {
    pub schema_version: u32,
    pub campaign_id: String,
    pub creative_id: String,
    /// Window name (`5m`).
    pub window: String,
    /// Inclusive start, RFC 3339 UTC.
    pub window_start: String,
    /// Exclusive end, RFC 3339 UTC.
    pub window_end: String,
    pub impressions: u64,
    pub installs: u64,
    /// `null` when the window has no impressions.
    pub ipm: Option<f64>,
    pub ipm_low: Option<f64>,
    pub ipm_high: Option<f64>,
    /// Processor watermark when the record was made, RFC 3339 UTC.
    pub watermark: String,
    /// Wall-clock time the record was made, RFC 3339 UTC.
    pub emitted_at: String,
}

impl IpmRecord {
    /// The record for `update` of window `spec`.
    pub fn new(update: &WindowUpdate, spec: &WindowSpec, watermark_ms: i64, now_ms: i64) -> Self {
        let ipm = Ipm::of(update.counts);
        IpmRecord {
            schema_version: SCHEMA_VERSION,
            campaign_id: update.key.campaign_id.to_string(),
            creative_id: update.key.creative_id.to_string(),
            window: spec.name.clone(),
            window_start: rfc3339(update.window_end_ms - spec.size_ms),
            window_end: rfc3339(update.window_end_ms),
            impressions: update.counts.impressions,
            installs: update.counts.installs,
            ipm: ipm.value,
            ipm_low: ipm.low,
            ipm_high: ipm.high,
            watermark: rfc3339(watermark_ms),
            emitted_at: rfc3339(now_ms),
        }
    }
}

/// Formats Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    match DateTime::from_timestamp_millis(ms) {
        Some(time) => time.to_rfc3339_opts(SecondsFormat::Millis, true),
        None => String::from("out-of-range"),
    }
}

/// The Kafka key of a (campaign, creative, window): a JSON array, so that ids containing any
/// separator character still give distinct keys and a compacted topic keeps one value each.
pub fn record_key(key: &CreativeKey, window: &str) -> Vec<u8> {
    serde_json::to_vec(&[&*key.campaign_id, &*key.creative_id, window])
        .expect("strings always serialize")
}

/// A record ready to send: a tombstone has no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    pub key: Vec<u8>,
    pub value: Option<Vec<u8>>,
}

/// Why a batch was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// Shutdown began while the broker was still refusing records.
    #[error("shutdown before the output records were acknowledged")]
    Cancelled,
}

/// Delivers batches of output records in order.
pub struct Publisher {
    producer: FutureProducer,
    topic: String,
}

/// Longest pause between delivery retries while the broker is unreachable.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

impl Publisher {
    /// A publisher writing to `topic`.
    pub fn new(producer: FutureProducer, topic: String) -> Publisher {
        Publisher { producer, topic }
    }

    /// Sends `batch` in order and waits until the broker acknowledges all of it. A failed
    /// delivery resends the whole batch, so the newest value of a key stays last on the topic.
    /// `on_failure` is told of each failed attempt (for readiness and metrics).
    pub async fn publish(
        &self,
        batch: &[OutputRecord],
        shutdown: &CancellationToken,
        mut on_failure: impl FnMut(usize, &KafkaError),
    ) -> Result<(), PublishError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.try_publish(batch).await {
                Ok(()) => return Ok(()),
                Err((failed, error)) => {
                    on_failure(failed, &error);
                    tracing::warn!(
                        topic = %self.topic,
                        failed,
                        records = batch.len(),
                        cause = %error,
                        retry_in_ms = backoff.as_millis() as u64,
                        "output records not acknowledged; resending the batch"
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => return Err(PublishError::Cancelled),
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    /// One attempt: enqueue in order, then await every acknowledgement.
    async fn try_publish(&self, batch: &[OutputRecord]) -> Result<(), (usize, KafkaError)> {
        let mut deliveries = Vec::with_capacity(batch.len());
        for record in batch {
            let mut future_record = FutureRecord::to(&self.topic).key(&record.key);
            if let Some(value) = &record.value {
                future_record = future_record.payload(value);
            }
            loop {
                match self.producer.send_result(future_record) {
                    Ok(delivery) => {
                        deliveries.push(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // Wait for earlier records to leave the queue; order is kept.
                        future_record = back;
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    Err((error, _)) => return Err((batch.len(), error)),
                }
            }
        }
        let mut failed = 0;
        let mut first_error = None;
        for delivery in futures::future::join_all(deliveries).await {
            let error = match delivery {
                Ok(Ok(_)) => continue,
                Ok(Err((error, _))) => error,
                Err(_cancelled) => KafkaError::Canceled,
            };
            failed += 1;
            first_error.get_or_insert(error);
        }
        match first_error {
            None => Ok(()),
            Some(error) => Err((failed, error)),
        }
    }

    /// Waits up to `timeout` for queued records to leave.
    pub fn flush(&self, timeout: Duration) {
        use rdkafka::producer::Producer;
        if let Err(error) = self.producer.flush(timeout) {
            tracing::warn!(cause = %error, "output producer did not flush in time");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::Counts;

    #[test]
    fn keys_stay_distinct_when_ids_contain_separators() {
        let key = |campaign: &str, creative: &str| {
            record_key(
                &CreativeKey { campaign_id: campaign.into(), creative_id: creative.into() },
                "5m",
            )
        };
        assert_ne!(key("a|b", "c"), key("a", "b|c"));
        assert_ne!(key("a\",\"b", "c"), key("a", "b\",\"c"));
        assert_eq!(key("c-42", "cr-7"), br#"["c-42","cr-7","5m"]"#.to_vec());
    }

    #[test]
    fn record_carries_window_bounds_and_interval_in_utc() {
        let update = WindowUpdate {
            key: CreativeKey { campaign_id: "c-42".into(), creative_id: "cr-7".into() },
            window: 0,
            window_end_ms: 1_796_292_000_000,
            counts: Counts { impressions: 1000, installs: 20 },
        };
        let spec = WindowSpec { name: "5m".into(), size_ms: 300_000, slide_ms: 10_000 };
        let record = IpmRecord::new(&update, &spec, 1_796_292_001_000, 1_796_292_031_500);
        assert_eq!(record.window_start, "2026-12-03T09:55:00.000Z");
        assert_eq!(record.window_end, "2026-12-03T10:00:00.000Z");
        assert_eq!(record.watermark, "2026-12-03T10:00:01.000Z");
        assert_eq!(record.emitted_at, "2026-12-03T10:00:31.500Z");
        assert_eq!(record.ipm, Some(20.0));
        let json: serde_json::Value = serde_json::to_value(&record).unwrap();
        assert_eq!(json["schema_version"], 1);
        assert_eq!(json["window"], "5m");
    }

    #[test]
    fn record_without_impressions_has_null_ipm_fields() {
        let update = WindowUpdate {
            key: CreativeKey { campaign_id: "c".into(), creative_id: "x".into() },
            window: 0,
            window_end_ms: 0,
            counts: Counts { impressions: 0, installs: 2 },
        };
        let spec = WindowSpec { name: "5m".into(), size_ms: 300_000, slide_ms: 10_000 };
        let json = serde_json::to_value(IpmRecord::new(&update, &spec, 0, 0)).unwrap();
        assert!(json["ipm"].is_null() && json["ipm_low"].is_null() && json["ipm_high"].is_null());
        assert_eq!(json["installs"], 2);
    }
}
