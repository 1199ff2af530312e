//! The running service: it reads input messages, feeds the aggregator, and on each round
//! publishes records, updates gauges and the live view, then commits input offsets once the
//! broker has acknowledged the records. It also owns startup and the bounded drain on shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::producer::FutureProducer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::aggregate::{
    Aggregator, AggregatorSettings, CommitPoint, CreativeKey, InputPartition, Observation, Round,
};
use crate::clients::{consumer_config, producer_config};
use crate::config::{Config, ConfigError, Layout};
use crate::deadletter::{DeadLetters, OnError, Reason};
use crate::decode::{Decoder, EventKind, KindSource};
use crate::dedupe::{Deduper, Seen};
use crate::http::{self, HttpState};
use crate::ipm::Ipm;
use crate::live::LiveState;
use crate::metrics::{outcome, Metrics};
use crate::output::{record_key, IpmRecord, OutputRecord, Publisher};
use crate::source::{Assignment, SourceContext};

/// Why the service could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("cannot create the kafka {client}: {source}")]
    Client { client: &'static str, source: rdkafka::error::KafkaError },
    #[error("cannot serve http on {addr}: {source}")]
    Http { addr: SocketAddr, source: std::io::Error },
    #[error("cannot rebuild state for an assigned partition: {0}")]
    Restore(String),
    #[error("message at {topic}/{partition}@{offset} cannot be counted ({reason}) and dead_letter.on_error is `fail`")]
    BadInput { topic: String, partition: i32, offset: i64, reason: &'static str },
}

/// How often the pipeline checks idleness, lag and the watermark when no message arrives. A
/// round publishes every boundary passed since the last one, so this bounds output latency.
const TICK: Duration = Duration::from_millis(200);

/// A started service.
pub struct Running {
    /// The address the HTTP server is bound to.
    pub http_addr: SocketAddr,
    /// Live values and readiness, as served over HTTP.
    pub live: Arc<LiveState>,
    /// The service's metrics.
    pub metrics: Arc<Metrics>,
    task: JoinHandle<Result<(), PipelineError>>,
}

impl Running {
    /// Waits until the service stops, after `shutdown` is cancelled or on a fatal error.
    pub async fn wait(self) -> Result<(), PipelineError> {
        self.task.await.expect("the pipeline task does not panic")
    }
}

/// Starts the service: HTTP server, consumer group membership and the processing loop. It
/// stops when `shutdown` is cancelled, after draining within the configured grace period.
pub async fn start(config: Config, shutdown: CancellationToken) -> Result<Running, PipelineError> {
    let metrics = Arc::new(Metrics::new());
    let live = Arc::new(LiveState::default());
    let windows = config.window_specs()?;
    let decoder = Decoder::new(&config.decode_settings())
        .map_err(|e| ConfigError::Invalid { key: "input.fields".into(), reason: e.to_string() })?;
    let (topics, kinds) = input_topics(&config);

    let context = SourceContext::new(topics.clone());
    let consumer: Consumer = consumer_config(&config)
        .create_with_context(context)
        .map_err(|source| PipelineError::Client { client: "consumer", source })?;
    let topic_refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    consumer
        .subscribe(&topic_refs)
        .map_err(|source| PipelineError::Client { client: "consumer", source })?;
    let producer: FutureProducer = producer_config(&config)
        .create()
        .map_err(|source| PipelineError::Client { client: "producer", source })?;

    let addr = config.http_listen()?;
    let http_state = HttpState { metrics: metrics.clone(), live: live.clone() };
    let (http_addr, server) = http::bind(addr, http_state, shutdown.child_token())
        .await
        .map_err(|source| PipelineError::Http { addr, source })?;
    tokio::spawn(async move {
        if let Err(error) = server.await {
            tracing::error!(cause = %error, "http server stopped");
        }
    });
    tracing::info!(%http_addr, topics = ?topics, output = %config.output.topic, "ipm-stream started");

    let counters = topics.iter().map(|t| TopicCounters::new(&metrics, t)).collect();
    let late_by_window =
        windows.iter().map(|w| metrics.late_events.with_label_values(&[&w.name])).collect();
    let shortest_slide_ms = windows.iter().map(|w| w.slide_ms).min().unwrap_or(1000);
    let aggregator = Aggregator::new(AggregatorSettings {
        windows,
        out_of_orderness_ms: config.out_of_orderness_ms(),
        idle_timeout_ms: config.idle_timeout_ms(),
        replay_horizon_ms: if config.dedupe.enabled { config.dedupe_horizon_ms() } else { 0 },
    });
    let deduper =
        config.dedupe.enabled.then(|| Deduper::new(config.dedupe_horizon_ms(), shortest_slide_ms));
    let processor = Processor {
        aggregator,
        decoder,
        kinds,
        counters,
        late_by_window,
        metrics: metrics.clone(),
        live: live.clone(),
        publisher: Publisher::new(producer.clone(), config.output.topic.clone()),
        dead_letters: DeadLetters::new(producer, config.dead_letter.topic.clone()),
        on_error: config.dead_letter.on_error,
        deduper,
        limits: Limits {
            max_message_bytes: config.input.max_message_bytes,
            max_future_ms: config.max_future_ms(),
        },
        rejections: RejectionLog::default(),
        restore_started: None,
        commit_in_flight: None,
    };
    let grace = config.shutdown.grace_period;
    let task = tokio::spawn(run(Arc::new(consumer), processor, shutdown, grace));
    Ok(Running { http_addr, live, metrics, task })
}

/// Input topics in index order, with how each decides an event's kind.
fn input_topics(config: &Config) -> (Vec<String>, Vec<KindSource>) {
    match config.input.layout {
        Layout::Separate => (
            vec![config.input.impressions_topic.clone(), config.input.installs_topic.clone()],
            vec![KindSource::Fixed(EventKind::Impression), KindSource::Fixed(EventKind::Install)],
        ),
        Layout::Single => (vec![config.input.events_topic.clone()], vec![KindSource::Field]),
    }
}

/// The input consumer, shared with the blocking tasks that commit its offsets.
type Consumer = StreamConsumer<SourceContext>;

/// Per-topic counters resolved once, so the hot path does no label lookups.
struct TopicCounters {
    topic: String,
    counted: prometheus::IntCounter,
    late: prometheus::IntCounter,
    rejected: prometheus::IntCounter,
    duplicate: prometheus::IntCounter,
    replayed: prometheus::IntCounter,
}

impl TopicCounters {
    fn new(metrics: &Metrics, topic: &str) -> TopicCounters {
        let consumed = |outcome: &str| metrics.events_consumed.with_label_values(&[topic, outcome]);
        TopicCounters {
            topic: topic.to_owned(),
            counted: consumed(outcome::COUNTED),
            late: consumed(outcome::LATE),
            rejected: consumed(outcome::REJECTED),
            duplicate: consumed(outcome::DUPLICATE),
            replayed: consumed(outcome::REPLAYED),
        }
    }
}

/// Logs rejected messages at most once per interval per reason, with how many were skipped.
#[derive(Default)]
struct RejectionLog {
    last: std::collections::HashMap<Reason, (Instant, u64)>,
}

const REJECTION_LOG_INTERVAL: Duration = Duration::from_secs(10);

impl RejectionLog {
    fn note(&mut self, reason: Reason, topic: &str, partition: i32, offset: i64) {
        let now = Instant::now();
        let (logged_at, suppressed) = self.last.entry(reason).or_insert((now, 0));
        if *suppressed > 0 && now.duration_since(*logged_at) < REJECTION_LOG_INTERVAL {
            *suppressed += 1;
            return;
        }
        tracing::warn!(
            topic,
            partition,
            offset,
            reason = reason.code(),
            similar_since_last_log = suppressed.saturating_sub(1),
            "input message not counted: {reason}"
        );
        *logged_at = now;
        *suppressed = 1;
    }
}

/// What became of one input message.
enum Handled {
    Counted,
    /// Read again to rebuild state; its effects were already published.
    Replayed,
    Duplicate,
    Refused(Reason),
}

/// Bounds on input messages.
struct Limits {
    max_message_bytes: usize,
    max_future_ms: i64,
}

/// Everything the loop mutates, apart from the consumer that messages borrow from.
struct Processor {
    aggregator: Aggregator,
    decoder: Decoder,
    kinds: Vec<KindSource>,
    counters: Vec<TopicCounters>,
    late_by_window: Vec<prometheus::IntCounter>,
    metrics: Arc<Metrics>,
    live: Arc<LiveState>,
    publisher: Publisher,
    dead_letters: DeadLetters,
    on_error: OnError,
    deduper: Option<Deduper>,
    limits: Limits,
    rejections: RejectionLog,
    /// When the current state rebuild began, for the restore-duration metric.
    restore_started: Option<Instant>,
    /// The offset commit running on a blocking thread.
    commit_in_flight: Option<JoinHandle<KafkaResult<()>>>,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn run(
    consumer: Arc<Consumer>,
    mut processor: Processor,
    shutdown: CancellationToken,
    grace: Duration,
) -> Result<(), PipelineError> {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let result = loop {
        // Ticks come before messages: under a steady backlog, rounds must still happen.
        let step = tokio::select! {
            biased;
            _ = shutdown.cancelled() => break Ok(()),
            _ = tick.tick() => processor.on_tick(&consumer, &shutdown).await,
            message = consumer.recv() => processor.on_received(&consumer, message),
        };
        if let Err(error) = step {
            break Err(error);
        }
    };
    processor.live.set_ready(false);
    processor.metrics.ready.set(0);
    if result.is_ok() {
        match tokio::time::timeout(grace, processor.drain(&consumer)).await {
            Ok(()) => tracing::info!("drained: output flushed and offsets committed"),
            Err(_) => tracing::warn!(
                grace_ms = grace.as_millis() as u64,
                "grace period ran out while draining; uncommitted input will be read again"
            ),
        }
    }
    result
}

impl Processor {
    /// Applies assignment changes queued by the consumer's rebalance callback.
    fn apply_assignments(&mut self, consumer: &Consumer) -> Result<(), PipelineError> {
        let now = now_ms();
        for change in consumer.context().take_changes() {
            match change {
                Assignment::Assigned(starts) => {
                    for (partition, start) in starts {
                        self.aggregator.assign(partition, start, now);
                    }
                    if self.aggregator.restoring() && self.restore_started.is_none() {
                        self.restore_started = Some(Instant::now());
                    }
                }
                Assignment::Revoked(partitions) => {
                    for partition in partitions {
                        let topic = &self.counters[partition.topic].topic;
                        let label = partition.partition.to_string();
                        let _ = self.metrics.consumer_lag.remove_label_values(&[topic, &label]);
                        if let Some(deduper) = &mut self.deduper {
                            deduper.revoke(partition);
                        }
                        for key in self.aggregator.revoke(partition) {
                            self.forget(&key);
                        }
                    }
                }
                Assignment::RestoreFailed(reason) => return Err(PipelineError::Restore(reason)),
            }
        }
        let assigned = self.aggregator.partitions().count();
        self.metrics.assigned_partitions.set(assigned as i64);
        Ok(())
    }

    /// Applies pending rebalances, then handles what the consumer delivered.
    fn on_received(
        &mut self,
        consumer: &Consumer,
        message: KafkaResult<BorrowedMessage<'_>>,
    ) -> Result<(), PipelineError> {
        self.apply_assignments(consumer)?;
        match message {
            Ok(message) => self.on_message(&message),
            Err(error) => {
                tracing::warn!(cause = %error, "kafka consume error");
                Ok(())
            }
        }
    }

    fn on_message(&mut self, message: &BorrowedMessage<'_>) -> Result<(), PipelineError> {
        let Some(topic) = self.topic_index(message.topic()) else { return Ok(()) };
        let partition = InputPartition { topic, partition: message.partition() };
        let payload = message.payload().unwrap_or_default();
        let kafka_time = message.timestamp().to_millis();
        let handled = self.count(partition, message.offset(), payload, kafka_time, now_ms());
        let counters = &self.counters[topic];
        match handled {
            Handled::Counted => counters.counted.inc(),
            Handled::Replayed => counters.replayed.inc(),
            Handled::Duplicate => {
                counters.duplicate.inc();
                self.metrics.duplicates.with_label_values(&[&counters.topic]).inc();
            }
            Handled::Refused(reason) => return self.refuse(message, topic, reason),
        }
        Ok(())
    }

    /// Decodes, deduplicates and counts one message.
    fn count(
        &mut self,
        partition: InputPartition,
        offset: i64,
        payload: &[u8],
        kafka_time: Option<i64>,
        now: i64,
    ) -> Handled {
        if payload.len() > self.limits.max_message_bytes {
            return self.skip(partition, offset, now, Reason::TooLarge);
        }
        let event = match self.decoder.decode(payload, &self.kinds[partition.topic], kafka_time) {
            Ok(event) => event,
            Err(rejection) => return self.skip(partition, offset, now, Reason::Decode(rejection)),
        };
        if event.event_time_ms > now.saturating_add(self.limits.max_future_ms) {
            return self.skip(partition, offset, now, Reason::FutureTime);
        }
        let replay = self.aggregator.is_replay(partition, offset);
        let mut first_copy = None;
        if let Some(deduper) = &self.deduper {
            match event.event_id.as_deref().map(|id| deduper.check(id)) {
                Some(Seen::Duplicate) => {
                    self.aggregator.note_read(partition, offset, now);
                    return if replay { Handled::Replayed } else { Handled::Duplicate };
                }
                Some(Seen::First(hash)) => first_copy = Some(hash),
                None if !replay => {
                    let topic = &self.counters[partition.topic].topic;
                    self.metrics.events_without_id.with_label_values(&[topic]).inc();
                }
                None => {}
            }
        }
        let observation = Observation {
            campaign_id: &event.campaign_id,
            creative_id: &event.creative_id,
            kind: event.kind,
            event_time_ms: event.event_time_ms,
        };
        let admission = self.aggregator.observe(partition, offset, &observation, now);
        if let (Some(deduper), Some(hash), true) =
            (&mut self.deduper, first_copy, admission.counted)
        {
            deduper.remember(partition, hash, event.event_time_ms);
        }
        if admission.replayed {
            return Handled::Replayed;
        }
        let mut late = admission.late_windows;
        while late != 0 {
            self.late_by_window[late.trailing_zeros() as usize].inc();
            late &= late - 1;
        }
        if admission.counted {
            Handled::Counted
        } else {
            Handled::Refused(Reason::TooLate)
        }
    }

    /// Notes a message that will not be counted; one read again to rebuild state was already
    /// dealt with the first time.
    fn skip(
        &mut self,
        partition: InputPartition,
        offset: i64,
        now: i64,
        reason: Reason,
    ) -> Handled {
        match self.aggregator.note_read(partition, offset, now) {
            Some(true) => Handled::Replayed,
            _ => Handled::Refused(reason),
        }
    }

    /// Counts, logs and routes a message that cannot be counted.
    fn refuse(
        &mut self,
        message: &BorrowedMessage<'_>,
        topic: usize,
        reason: Reason,
    ) -> Result<(), PipelineError> {
        let counters = &self.counters[topic];
        match reason {
            Reason::TooLate => counters.late.inc(),
            _ => counters.rejected.inc(),
        }
        self.metrics.events_rejected.with_label_values(&[&counters.topic, reason.code()]).inc();
        self.rejections.note(reason, &counters.topic, message.partition(), message.offset());
        match self.on_error {
            OnError::DeadLetter => self.dead_letters.send(message, reason),
            OnError::Drop => {}
            OnError::Fail => {
                return Err(PipelineError::BadInput {
                    topic: counters.topic.clone(),
                    partition: message.partition(),
                    offset: message.offset(),
                    reason: reason.code(),
                })
            }
        }
        Ok(())
    }

    fn topic_index(&self, topic: &str) -> Option<usize> {
        self.counters.iter().position(|c| c.topic == topic)
    }

    async fn on_tick(
        &mut self,
        consumer: &Arc<Consumer>,
        shutdown: &CancellationToken,
    ) -> Result<(), PipelineError> {
        self.apply_assignments(consumer)?;
        self.observe_progress(consumer);
        if self.commit_in_flight.as_ref().is_some_and(JoinHandle::is_finished) {
            self.finish_commit().await;
        }
        let now = now_ms();
        let started = Instant::now();
        if let Some(round) = self.aggregator.advance(now) {
            if let Some(deduper) = &mut self.deduper {
                deduper.expire(round.watermark_ms);
            }
            if self.publish(round, now, shutdown).await && self.settle_dead_letters(shutdown).await
            {
                self.commit(consumer).await;
                self.metrics.round_duration.observe(started.elapsed().as_secs_f64());
            }
        }
        self.update_gauges(now, consumer.context().connected());
        Ok(())
    }

    /// Reads the client's statistics and position into idleness, replay progress and lag.
    fn observe_progress(&mut self, consumer: &Consumer) {
        let progress = consumer.context().progress();
        let partitions: Vec<InputPartition> = self.aggregator.partitions().collect();
        for partition in &partitions {
            let Some(stats) = progress.get(partition) else { continue };
            self.aggregator.set_caught_up(*partition, stats.caught_up());
            let read = self.aggregator.next_offset(*partition).unwrap_or(stats.fetch_offset);
            let topic = &self.counters[partition.topic].topic;
            let label = partition.partition.to_string();
            let lag = (stats.end_offset - read).max(0);
            self.metrics.consumer_lag.with_label_values(&[topic, &label]).set(lag);
        }
        if self.aggregator.restoring() {
            if let Ok(positions) = consumer.position() {
                for element in positions.elements() {
                    let (Some(topic), Offset::Offset(position)) =
                        (self.topic_index(element.topic()), element.offset())
                    else {
                        continue;
                    };
                    let partition = InputPartition { topic, partition: element.partition() };
                    self.aggregator.note_position(partition, position);
                }
            }
        }
        if !self.aggregator.restoring() {
            if let Some(started) = self.restore_started.take() {
                let took = started.elapsed();
                self.metrics.restore_duration.set(took.as_secs_f64());
                tracing::info!(took_ms = took.as_millis() as u64, "window state rebuilt");
            }
        }
    }

    fn update_gauges(&self, now: i64, connected: bool) {
        let ready = connected
            && self.aggregator.partitions().next().is_some()
            && !self.aggregator.restoring();
        self.live.set_ready(ready);
        self.metrics.ready.set(i64::from(ready));
        if let Some(watermark) = self.aggregator.watermark_ms() {
            self.metrics.watermark.set(watermark as f64 / 1000.0);
            self.metrics.watermark_delay.set((now - watermark) as f64 / 1000.0);
        }
        self.metrics.active_keys.set(self.aggregator.active_keys() as i64);
        if let Some(deduper) = &self.deduper {
            self.metrics.dedupe_ids.set(deduper.len() as i64);
        }
        self.metrics.panes.set(self.aggregator.panes_held() as i64);
    }

    /// Waits until every dead letter so far is acknowledged, so that a commit never passes an
    /// unwritten one. False when shutdown interrupted the wait.
    async fn settle_dead_letters(&mut self, shutdown: &CancellationToken) -> bool {
        if self.dead_letters.pending() == 0 {
            return true;
        }
        let metrics = &self.metrics;
        let settled = self
            .dead_letters
            .settle(shutdown, |reason, topic| {
                metrics.dead_letters.with_label_values(&[topic, reason.code()]).inc();
            })
            .await;
        settled.is_ok()
    }

    /// Publishes a round and applies it to gauges and the live view. Returns false when
    /// shutdown interrupted delivery, in which case nothing may be committed.
    async fn publish(&mut self, round: Round, now: i64, shutdown: &CancellationToken) -> bool {
        let mut batch = Vec::with_capacity(round.updates.len() + round.evicted.len());
        let mut records = Vec::with_capacity(round.updates.len());
        for update in &round.updates {
            let spec = &self.aggregator.windows()[update.window];
            let record = IpmRecord::new(update, spec, round.watermark_ms, now);
            let value = serde_json::to_vec(&record).expect("records always serialize");
            batch.push(OutputRecord {
                key: record_key(&update.key, &spec.name),
                value: Some(value),
            });
            records.push((update.key.clone(), record));
        }
        for key in &round.evicted {
            for spec in self.aggregator.windows() {
                batch.push(OutputRecord { key: record_key(key, &spec.name), value: None });
            }
        }
        if !batch.is_empty() {
            let metrics = self.metrics.clone();
            let live = self.live.clone();
            let delivered = self
                .publisher
                .publish(&batch, shutdown, |failed, _| {
                    metrics.produce_errors.inc_by(failed as u64);
                    live.set_ready(false);
                    metrics.ready.set(0);
                })
                .await;
            if delivered.is_err() {
                return false;
            }
            let produced = &self.metrics.records_produced;
            produced.with_label_values(&["update"]).inc_by(round.updates.len() as u64);
            let tombstones = (round.evicted.len() * self.aggregator.windows().len()) as u64;
            produced.with_label_values(&["tombstone"]).inc_by(tombstones);
            self.metrics.last_output.set(now as f64 / 1000.0);
        }
        for (key, record) in records {
            self.set_gauges(&record);
            self.live.set(key, record);
        }
        for key in &round.evicted {
            self.forget(key);
        }
        true
    }

    fn set_gauges(&self, record: &IpmRecord) {
        let labels = [record.campaign_id.as_str(), record.creative_id.as_str(), &record.window];
        let ipm = Ipm { value: record.ipm, low: record.ipm_low, high: record.ipm_high };
        let metrics = &self.metrics;
        metrics.ipm.with_label_values(&labels).set(ipm.value.unwrap_or(f64::NAN));
        metrics.ipm_lower.with_label_values(&labels).set(ipm.low.unwrap_or(f64::NAN));
        metrics.ipm_upper.with_label_values(&labels).set(ipm.high.unwrap_or(f64::NAN));
        metrics.window_impressions.with_label_values(&labels).set(record.impressions as f64);
        metrics.window_installs.with_label_values(&labels).set(record.installs as f64);
    }

    /// Removes a key's gauges and live values.
    fn forget(&self, key: &CreativeKey) {
        for spec in self.aggregator.windows() {
            let labels = [&*key.campaign_id, &*key.creative_id, spec.name.as_str()];
            let metrics = &self.metrics;
            for gauge in [
                &metrics.ipm,
                &metrics.ipm_lower,
                &metrics.ipm_upper,
                &metrics.window_impressions,
                &metrics.window_installs,
            ] {
                let _ = gauge.remove_label_values(&labels);
            }
        }
        self.live.remove(key);
    }

    /// Commits every partition's progress, with its checkpoint as commit metadata. The commit
    /// runs on a blocking thread, so that the loop goes on while the broker answers; the next
    /// commit waits for it, which keeps commits in order.
    async fn commit(&mut self, consumer: &Arc<Consumer>) {
        self.finish_commit().await;
        let points = self.aggregator.commit_points();
        if points.is_empty() {
            return;
        }
        let mut offsets = TopicPartitionList::with_capacity(points.len());
        for CommitPoint { partition, next_offset, checkpoint } in points {
            let topic = &self.counters[partition.topic].topic;
            let mut element = offsets.add_partition(topic, partition.partition);
            if element.set_offset(Offset::Offset(next_offset)).is_err() {
                continue;
            }
            element.set_metadata(serde_json::to_string(&checkpoint).expect("plain numbers"));
        }
        let consumer = Arc::clone(consumer);
        self.commit_in_flight =
            Some(tokio::task::spawn_blocking(move || consumer.commit(&offsets, CommitMode::Sync)));
    }

    /// Waits for the commit in flight, if any, and counts its result.
    async fn finish_commit(&mut self) {
        let Some(task) = self.commit_in_flight.take() else { return };
        let result = task.await.expect("commit tasks do not panic");
        let label = if result.is_ok() { "ok" } else { "error" };
        self.metrics.commits.with_label_values(&[label]).inc();
        if let Err(error) = result {
            tracing::warn!(cause = %error, "offset commit failed; the next round retries");
        }
    }

    /// Stops fetching, publishes what the watermark allows, flushes and commits.
    async fn drain(&mut self, consumer: &Arc<Consumer>) {
        if let Ok(assignment) = consumer.assignment() {
            let _ = consumer.pause(&assignment);
        }
        if self.apply_assignments(consumer).is_err() {
            return;
        }
        let now = now_ms();
        // Delivery is not interrupted here: the caller's grace-period timeout bounds it.
        let never = CancellationToken::new();
        if let Some(round) = self.aggregator.advance(now) {
            if !self.publish(round, now, &never).await {
                return;
            }
        }
        if !self.settle_dead_letters(&never).await {
            return;
        }
        self.publisher.flush(Duration::from_secs(5));
        self.commit(consumer).await;
        self.finish_commit().await;
    }
}
