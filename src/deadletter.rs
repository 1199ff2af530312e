//! Messages that cannot be counted: why (a stable reason code), and where they go — a
//! dead-letter topic with the original key, value and headers plus headers giving the reason
//! and the source, or nowhere (counted), or a stop. Deciding *that* a message is bad is left to
//! the decoder and the aggregator; the pipeline holds commits until dead letters are written.

use std::time::Duration;

use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::decode::Rejection;

/// Why a message was not counted. The codes are stable: alerts and dashboards key on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// The payload could not be decoded into an event.
    Decode(Rejection),
    /// The message is larger than `input.max_message_bytes`.
    TooLarge,
    /// The event time is further ahead of the wall clock than `input.max_future`.
    FutureTime,
    /// The event is too old for the next emission of every window.
    TooLate,
}

impl Reason {
    /// The stable snake_case code, used in headers and metric labels.
    pub fn code(self) -> &'static str {
        match self {
            Reason::Decode(rejection) => rejection.code(),
            Reason::TooLarge => "too_large",
            Reason::FutureTime => "future_time",
            Reason::TooLate => "too_late",
        }
    }

    /// Every reason, for documentation and tests.
    pub fn all() -> impl Iterator<Item = Reason> {
        Rejection::ALL.into_iter().map(Reason::Decode).chain([
            Reason::TooLarge,
            Reason::FutureTime,
            Reason::TooLate,
        ])
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Decode(rejection) => write!(f, "{rejection}"),
            Reason::TooLarge => f.write_str("message is larger than the configured limit"),
            Reason::FutureTime => f.write_str("event time is too far in the future"),
            Reason::TooLate => f.write_str("event is too late for every window"),
        }
    }
}

/// What to do with a message that cannot be counted, as Kafka Connect users know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Write it to the dead-letter topic; hold commits until the broker has it.
    DeadLetter,
    /// Count it and skip it.
    Drop,
    /// Stop the service with an error, committing nothing past it.
    Fail,
}

/// Header names added to a dead letter.
pub mod headers {
    pub const REASON: &str = "ipm.error.reason";
    pub const MESSAGE: &str = "ipm.error.message";
    pub const TOPIC: &str = "ipm.source.topic";
    pub const PARTITION: &str = "ipm.source.partition";
    pub const OFFSET: &str = "ipm.source.offset";
    /// Source record timestamp in Unix milliseconds; absent when the record had none.
    pub const TIMESTAMP: &str = "ipm.source.timestamp";
}

/// A dead letter kept until the broker acknowledges it, so it can be resent.
struct Letter {
    key: Option<Vec<u8>>,
    value: Option<Vec<u8>>,
    headers: OwnedHeaders,
    reason: Reason,
    source_topic: String,
    delivery: Option<DeliveryFuture>,
}

/// Dead letters written but not yet acknowledged.
pub struct DeadLetters {
    producer: FutureProducer,
    topic: String,
    pending: Vec<Letter>,
}

/// Longest pause between attempts while the dead-letter topic cannot be written.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Shutdown began before every dead letter was acknowledged.
#[derive(Debug, thiserror::Error)]
#[error("shutdown before every dead letter was acknowledged")]
pub struct Unsettled;

impl DeadLetters {
    /// Dead letters for `topic`, written with `producer`.
    pub fn new(producer: FutureProducer, topic: String) -> DeadLetters {
        DeadLetters { producer, topic, pending: Vec::new() }
    }

    /// Number of dead letters not yet acknowledged.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Starts writing `message` to the dead-letter topic, unchanged, with headers giving the
    /// reason and the source.
    pub fn send(&mut self, message: &BorrowedMessage<'_>, reason: Reason) {
        let mut headers = OwnedHeaders::new();
        if let Some(original) = message.headers() {
            for header in original.iter() {
                headers = headers.insert(Header { key: header.key, value: header.value });
            }
        }
        let message_text = reason.to_string();
        let partition = message.partition().to_string();
        let offset = message.offset().to_string();
        let timestamp = message.timestamp().to_millis().map(|ms| ms.to_string());
        for (key, value) in [
            (headers::REASON, Some(reason.code())),
            (headers::MESSAGE, Some(message_text.as_str())),
            (headers::TOPIC, Some(message.topic())),
            (headers::PARTITION, Some(partition.as_str())),
            (headers::OFFSET, Some(offset.as_str())),
            (headers::TIMESTAMP, timestamp.as_deref()),
        ] {
            if let Some(value) = value {
                headers = headers.insert(Header { key, value: Some(value) });
            }
        }
        let mut letter = Letter {
            key: message.key().map(<[u8]>::to_vec),
            value: message.payload().map(<[u8]>::to_vec),
            headers,
            reason,
            source_topic: message.topic().to_owned(),
            delivery: None,
        };
        letter.delivery = self.enqueue(&letter);
        self.pending.push(letter);
    }

    /// Hands `letter` to the producer; `None` when it could not even be queued (it is retried
    /// by [`DeadLetters::settle`]).
    fn enqueue(&self, letter: &Letter) -> Option<DeliveryFuture> {
        let mut record = FutureRecord::to(&self.topic).headers(letter.headers.clone());
        if let Some(key) = &letter.key {
            record = record.key(key);
        }
        if let Some(value) = &letter.value {
            record = record.payload(value);
        }
        match self.producer.send_result(record) {
            Ok(delivery) => Some(delivery),
            Err((error, _)) => {
                if !matches!(error, KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)) {
                    tracing::warn!(topic = %self.topic, cause = %error, "dead letter not queued");
                }
                None
            }
        }
    }

    /// Waits until every pending dead letter is acknowledged, resending failed ones with
    /// backoff. `on_written` is told of each acknowledged letter (reason, source topic).
    pub async fn settle(
        &mut self,
        shutdown: &CancellationToken,
        mut on_written: impl FnMut(Reason, &str),
    ) -> Result<(), Unsettled> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let mut failed = Vec::new();
            for mut letter in std::mem::take(&mut self.pending) {
                let outcome = match letter.delivery.take() {
                    Some(delivery) => match delivery.await {
                        Ok(Ok(_)) => Ok(()),
                        Ok(Err((error, _))) => Err(error),
                        Err(_) => Err(KafkaError::Canceled),
                    },
                    None => Err(KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull)),
                };
                match outcome {
                    Ok(()) => on_written(letter.reason, &letter.source_topic),
                    Err(error) => {
                        tracing::warn!(
                            topic = %self.topic,
                            cause = %error,
                            "dead letter not written; input offsets stay behind it"
                        );
                        failed.push(letter);
                    }
                }
            }
            if failed.is_empty() {
                return Ok(());
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = shutdown.cancelled() => {
                    self.pending = failed;
                    return Err(Unsettled);
                }
            }
            backoff = (backoff * 2).min(MAX_BACKOFF);
            for letter in &mut failed {
                letter.delivery = self.enqueue(letter);
            }
            self.pending = failed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reason_codes_are_distinct_and_snake_case() {
        let codes: Vec<&str> = Reason::all().map(Reason::code).collect();
        let mut unique = codes.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), codes.len());
        assert_eq!(codes.len(), 12);
        let snake = |c: &str| {
            c.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ch == '_')
        };
        assert!(codes.iter().all(|c| snake(c)), "{codes:?}");
    }
}
