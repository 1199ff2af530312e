//! The input side of Kafka: the consumer, its group rebalances and its statistics. On
//! assignment it reads each partition's last commit and starts the partition where window
//! state can be rebuilt from; the pipeline is told what changed through [`SourceContext`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rdkafka::client::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;

use crate::aggregate::{Checkpoint, InputPartition, PartitionStart};

/// A change of assignment, for the pipeline to apply to its state.
#[derive(Debug)]
pub enum Assignment {
    Assigned(Vec<(InputPartition, PartitionStart)>),
    Revoked(Vec<InputPartition>),
    /// The last commits could not be read, so state could not be rebuilt: the process must
    /// stop rather than count from a wrong starting point.
    RestoreFailed(String),
}

/// What the client reported about one partition in its last statistics.
#[derive(Debug, Clone, Copy, Default)]
pub struct PartitionProgress {
    /// End of the readable log: the last stable offset, or the high watermark.
    pub end_offset: i64,
    /// Next offset the client will fetch.
    pub fetch_offset: i64,
    /// Messages fetched but not yet handed to the application.
    pub queued: i64,
}

impl PartitionProgress {
    /// True when everything in the partition has been fetched and handed over.
    pub fn caught_up(&self) -> bool {
        self.queued == 0 && self.fetch_offset >= 0 && self.fetch_offset >= self.end_offset
    }
}

/// The parts of librdkafka's statistics the service reads; everything else is skipped, and a
/// missing field reads as unknown rather than failing the whole report.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct ClientStats {
    brokers: HashMap<String, BrokerStats>,
    topics: HashMap<String, TopicStats>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct BrokerStats {
    source: String,
    state: String,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(default)]
struct TopicStats {
    partitions: HashMap<String, PartitionStats>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(default)]
struct PartitionStats {
    partition: i32,
    hi_offset: i64,
    ls_offset: i64,
    next_offset: i64,
    fetchq_cnt: i64,
}

impl Default for PartitionStats {
    fn default() -> Self {
        PartitionStats {
            partition: -1,
            hi_offset: -1,
            ls_offset: -1,
            next_offset: -1,
            fetchq_cnt: 0,
        }
    }
}

/// Consumer callbacks: rebalances and statistics, queued for the pipeline.
pub struct SourceContext {
    input_topics: Vec<String>,
    changes: Mutex<Vec<Assignment>>,
    changed: AtomicBool,
    progress: Mutex<HashMap<InputPartition, PartitionProgress>>,
    /// Whether the last statistics showed a live connection to any broker.
    connected: AtomicBool,
}

/// How long to keep retrying the read of committed offsets during a rebalance.
const RESTORE_ATTEMPTS: u32 = 5;
const RESTORE_TIMEOUT: Duration = Duration::from_secs(10);

impl SourceContext {
    /// A context for a consumer of `input_topics` (indices are [`InputPartition::topic`]).
    pub fn new(input_topics: Vec<String>) -> SourceContext {
        SourceContext {
            input_topics,
            changes: Mutex::new(Vec::new()),
            changed: AtomicBool::new(false),
            progress: Mutex::new(HashMap::new()),
            connected: AtomicBool::new(false),
        }
    }

    /// The input topics, by index.
    pub fn input_topics(&self) -> &[String] {
        &self.input_topics
    }

    /// The index of `topic`, if it is an input topic.
    pub fn topic_index(&self, topic: &str) -> Option<usize> {
        self.input_topics.iter().position(|t| t == topic)
    }

    /// Assignment changes since the last call, oldest first.
    pub fn take_changes(&self) -> Vec<Assignment> {
        if !self.changed.swap(false, Ordering::AcqRel) {
            return Vec::new();
        }
        std::mem::take(&mut *self.changes.lock().expect("no panics while holding the lock"))
    }

    /// Whether the client was connected to at least one broker at its last statistics.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// The last statistics of each partition.
    pub fn progress(&self) -> HashMap<InputPartition, PartitionProgress> {
        self.progress.lock().expect("no panics while holding the lock").clone()
    }

    fn push(&self, change: Assignment) {
        self.changes.lock().expect("no panics while holding the lock").push(change);
        self.changed.store(true, Ordering::Release);
    }

    fn partitions_of(&self, tpl: &TopicPartitionList) -> Vec<InputPartition> {
        tpl.elements()
            .iter()
            .filter_map(|e| {
                let topic = self.topic_index(e.topic())?;
                Some(InputPartition { topic, partition: e.partition() })
            })
            .collect()
    }

    fn note_stats(&self, stats: &ClientStats) {
        let up = stats.brokers.values().any(|b| b.source != "internal" && b.state == "UP");
        let was_up = self.connected.swap(up, Ordering::Relaxed);
        if was_up && !up {
            tracing::warn!("no Kafka broker reachable; retrying, readiness is false");
        } else if up && !was_up {
            tracing::info!("Kafka brokers reachable");
        }
        let mut progress = self.progress.lock().expect("no panics while holding the lock");
        progress.clear();
        for (name, topic) in &stats.topics {
            let Some(index) = self.topic_index(name) else { continue };
            // librdkafka lists an internal "unassigned" partition as -1.
            for partition in topic.partitions.values().filter(|p| p.partition >= 0) {
                let end_offset = if partition.ls_offset >= 0 {
                    partition.ls_offset
                } else {
                    partition.hi_offset
                };
                progress.insert(
                    InputPartition { topic: index, partition: partition.partition },
                    PartitionProgress {
                        end_offset,
                        fetch_offset: partition.next_offset,
                        queued: partition.fetchq_cnt,
                    },
                );
            }
        }
    }

    /// Reads the last commit of every partition in `tpl` and rewrites `tpl` so that each
    /// partition starts where its state can be rebuilt.
    fn plan_starts(
        &self,
        consumer: &BaseConsumer<SourceContext>,
        tpl: &mut TopicPartitionList,
    ) -> Result<Vec<(InputPartition, PartitionStart)>, String> {
        let mut last_error = String::new();
        let mut committed = None;
        for attempt in 1..=RESTORE_ATTEMPTS {
            match consumer.committed_offsets(tpl.clone(), RESTORE_TIMEOUT) {
                Ok(found) => {
                    committed = Some(found);
                    break;
                }
                Err(error) => {
                    tracing::warn!(attempt, cause = %error, "cannot read committed offsets");
                    last_error = error.to_string();
                }
            }
        }
        let committed = committed.ok_or(last_error)?;
        let mut starts = Vec::new();
        for element in committed.elements() {
            let Some(topic) = self.topic_index(element.topic()) else { continue };
            let partition = InputPartition { topic, partition: element.partition() };
            let committed_offset = match element.offset() {
                Offset::Offset(offset) => Some(offset),
                _ => None,
            };
            let checkpoint = serde_json::from_str::<Checkpoint>(element.metadata()).ok();
            let start = PartitionStart { committed_offset, checkpoint };
            let first = match (committed_offset, checkpoint) {
                (Some(offset), Some(checkpoint)) => {
                    Offset::Offset(checkpoint.replay_from.min(offset))
                }
                (Some(offset), None) => Offset::Offset(offset),
                _ => Offset::Invalid,
            };
            tpl.set_partition_offset(element.topic(), element.partition(), first)
                .map_err(|e| e.to_string())?;
            tracing::info!(
                topic = element.topic(),
                partition = element.partition(),
                committed = ?committed_offset,
                replay_from = ?checkpoint.map(|c| c.replay_from),
                "partition assigned"
            );
            starts.push((partition, start));
        }
        Ok(starts)
    }
}

impl ClientContext for SourceContext {
    fn stats_raw(&self, statistics: &[u8]) {
        match serde_json::from_slice::<ClientStats>(statistics) {
            Ok(stats) => self.note_stats(&stats),
            Err(error) => tracing::debug!(cause = %error, "unreadable client statistics"),
        }
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        tracing::warn!(cause = %error, reason, "kafka client error");
    }
}

impl ConsumerContext for SourceContext {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                match self.plan_starts(consumer, tpl) {
                    Ok(starts) => {
                        let assigned = if cooperative {
                            consumer.incremental_assign(tpl)
                        } else {
                            consumer.assign(tpl)
                        };
                        match assigned {
                            Ok(()) => self.push(Assignment::Assigned(starts)),
                            Err(e) => self.push(Assignment::RestoreFailed(e.to_string())),
                        }
                    }
                    Err(reason) => self.push(Assignment::RestoreFailed(reason)),
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.push(Assignment::Revoked(self.partitions_of(tpl)));
                let result = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(error) = result {
                    tracing::warn!(cause = %error, "unassign failed");
                }
            }
            other => {
                tracing::error!(code = ?other, "rebalance failed; dropping the assignment");
                self.push(Assignment::Revoked(self.partitions_of(tpl)));
                if let Err(error) = consumer.unassign() {
                    tracing::warn!(cause = %error, "unassign failed");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn context() -> SourceContext {
        SourceContext::new(vec!["ad.impressions".into()])
    }

    #[test]
    fn statistics_give_connectivity_and_partition_progress() {
        let context = context();
        let report = br#"{
            "name": "rdkafka#consumer-1", "type": "consumer",
            "brokers": {
                "127.0.0.1:9092/bootstrap": {"source": "configured", "state": "INIT", "nodeid": -1},
                "127.0.0.1:9092/1": {"source": "learned", "state": "UP", "nodeid": 1},
                "GroupCoordinator": {"source": "logical", "state": "UP", "nodeid": 1}
            },
            "topics": {
                "ad.impressions": {"topic": "ad.impressions", "partitions": {
                    "0": {"partition": 0, "hi_offset": 120, "ls_offset": 118,
                          "next_offset": 118, "fetchq_cnt": 0},
                    "-1": {"partition": -1, "hi_offset": -1, "ls_offset": -1}
                }},
                "other": {"partitions": {"0": {"partition": 0}}}
            }
        }"#;
        context.stats_raw(report);
        assert!(context.connected());
        let progress = context.progress();
        let p0 = progress[&InputPartition { topic: 0, partition: 0 }];
        assert_eq!((p0.end_offset, p0.fetch_offset, p0.queued), (118, 118, 0));
        assert!(p0.caught_up());
        assert_eq!(progress.len(), 1);

        let down = br#"{"brokers": {"127.0.0.1:9092/1": {"source": "learned", "state": "DOWN"}}}"#;
        context.stats_raw(down);
        assert!(!context.connected());
    }
}
