//! `ipm-stream simulate`: realistic impression and install traffic for any Kafka cluster, for
//! load tests and for trying the service and its alerts. The events are a pure function of the
//! seed and the simulated clock ([`generate`]); this module paces them and produces them with
//! the service's own configuration, and writes the ground truth of the run when asked.

pub mod encode;
pub mod generate;
pub mod random;
pub mod scenario;
pub mod truth;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::config::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::ClientContext;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use encode::Encoder;
use generate::{Delivery, Generator, SimEvent, TrafficSettings};
use scenario::{DropSpec, StopSpec};
use truth::GroundTruth;

/// Traffic shape flags, shared by `simulate` and `demo`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct TrafficArgs {
    /// Mean events per second (impressions and installs) over a simulated day
    /// [default: 1000; demo: 400].
    #[arg(long, value_name = "EVENTS_PER_S")]
    pub rate: Option<f64>,
    /// Seed of the run: the same seed and start give the same messages. Random (and logged)
    /// when omitted.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Number of campaigns; c-01 is the largest.
    #[arg(long, default_value_t = 20)]
    pub campaigns: usize,
    /// Each campaign has 1 to this many creatives; the first of a campaign is its largest.
    #[arg(long, default_value_t = 8)]
    pub creatives_per_campaign: usize,
    /// Event time one simulated day takes; install and postback-retry delays shrink with it
    /// [default: 24h; demo: 10m].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub day_length: Option<Duration>,
    /// Strength of the daily traffic cycle, from 0 (flat) to 1.
    #[arg(long, default_value_t = 1.0)]
    pub daily_amplitude: f64,
    /// Share of install postbacks sent twice (same event id, minutes later).
    #[arg(long, default_value_t = 0.03, value_name = "SHARE")]
    pub duplicates: f64,
    /// Share of events delivered later than the out-of-orderness bound.
    #[arg(long, default_value_t = 0.001, value_name = "SHARE")]
    pub late: f64,
    /// Share of messages followed by a malformed one.
    #[arg(long, default_value_t = 0.002, value_name = "SHARE")]
    pub malformed: f64,
    /// From OFFSET after the start, keep only FACTOR of the creative's installs (a broken
    /// store page), e.g. `cr-01-1=0.5@10m`. Repeatable.
    #[arg(long = "drop", value_name = "CREATIVE=FACTOR@OFFSET")]
    pub drops: Vec<DropSpec>,
    /// From OFFSET after the start, the campaign serves no more impressions, e.g. `c-03@15m`.
    /// Repeatable.
    #[arg(long = "stop", value_name = "CAMPAIGN@OFFSET")]
    pub stops: Vec<StopSpec>,
}

impl TrafficArgs {
    /// Generator settings for a run starting at `start_ms`, with the given defaults for the
    /// flags whose default depends on the command.
    pub fn settings(
        &self,
        config: &Config,
        start_ms: i64,
        default_rate: f64,
        default_day: Duration,
    ) -> TrafficSettings {
        let incidents = self.drops.iter().map(|d| d.0.clone());
        TrafficSettings {
            seed: self.seed.unwrap_or_else(random_seed),
            start_ms,
            rate_per_s: self.rate.unwrap_or(default_rate),
            campaigns: self.campaigns,
            max_creatives: self.creatives_per_campaign,
            day_length: self.day_length.unwrap_or(default_day),
            daily_amplitude: self.daily_amplitude,
            out_of_orderness_ms: config.out_of_orderness_ms(),
            duplicate_share: self.duplicates,
            late_share: self.late,
            malformed_share: self.malformed,
            incidents: incidents.chain(self.stops.iter().map(|s| s.0.clone())).collect(),
        }
    }
}

/// A seed from the clock and process id, for runs that did not ask for one.
fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    random::splitmix64(nanos ^ u64::from(std::process::id()).rotate_left(32)) % 1_000_000_000
}

/// Flags of `ipm-stream simulate`.
#[derive(Debug, Clone, clap::Args)]
pub struct SimulateArgs {
    #[command(flatten)]
    pub traffic: TrafficArgs,
    /// Stop after this much event time (e.g. 10m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Stop after this many messages.
    #[arg(long)]
    pub events: Option<u64>,
    /// Send as fast as the cluster takes messages rather than in real time; needs --duration
    /// or --events.
    #[arg(long)]
    pub fast: bool,
    /// Event time of the start (RFC 3339). Default: now; with --fast and --duration, that
    /// long before now, so that the run ends in the present.
    #[arg(long)]
    pub start: Option<String>,
    /// Write the ground truth (true counts per key and window end) here, as JSON lines.
    #[arg(long, value_name = "FILE")]
    pub truth: Option<PathBuf>,
    /// Print the campaigns and creatives of the seed, then exit.
    #[arg(long)]
    pub list_creatives: bool,
}

/// What a run sends and when it stops.
#[derive(Debug, Clone)]
pub struct Plan {
    pub settings: TrafficSettings,
    /// Stop at this event time.
    pub end_ms: Option<i64>,
    /// Stop after this many messages.
    pub max_messages: Option<u64>,
    /// Real-time pacing (false: as fast as possible).
    pub paced: bool,
    pub truth: Option<PathBuf>,
    /// Longest wait for the last messages to be acknowledged.
    pub flush_timeout: Duration,
}

/// Live counters of a run, readable while it goes on.
#[derive(Debug, Default)]
pub struct Stats {
    pub impressions: AtomicU64,
    pub installs: AtomicU64,
    pub duplicates: AtomicU64,
    pub late: AtomicU64,
    pub malformed: AtomicU64,
    /// Messages the cluster acknowledged.
    pub acknowledged: AtomicU64,
    /// Messages the cluster did not take.
    pub failed: AtomicU64,
    /// Event time the run has reached, Unix milliseconds.
    pub clock_ms: AtomicU64,
}

impl Stats {
    /// Messages handed to the producer.
    pub fn sent(&self) -> u64 {
        [&self.impressions, &self.installs, &self.duplicates, &self.late, &self.malformed]
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .sum()
    }

    fn count(&self, event: &SimEvent) {
        let counter = match (event.delivery, event.kind) {
            (Delivery::Duplicate, _) => &self.duplicates,
            (Delivery::Late, _) => &self.late,
            (Delivery::Malformed(_), _) => &self.malformed,
            (Delivery::OnTime, crate::decode::EventKind::Impression) => &self.impressions,
            (Delivery::OnTime, crate::decode::EventKind::Install) => &self.installs,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn summary(&self) -> String {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        format!(
            "{} messages: {} impressions and {} installs on time, {} late, {} duplicates, {} \
             malformed; {} acknowledged, {} failed",
            self.sent(),
            get(&self.impressions),
            get(&self.installs),
            get(&self.late),
            get(&self.duplicates),
            get(&self.malformed),
            get(&self.acknowledged),
            get(&self.failed),
        )
    }
}

/// Counts acknowledgements into [`Stats`].
struct DeliveryCounter {
    stats: Arc<Stats>,
}

impl ClientContext for DeliveryCounter {
    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(cause = %error, reason, "simulator producer error");
    }
}

impl ProducerContext for DeliveryCounter {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        match result {
            Ok(_) => self.stats.acknowledged.fetch_add(1, Ordering::Relaxed),
            Err((error, _)) => {
                if self.stats.failed.fetch_add(1, Ordering::Relaxed) == 0 {
                    tracing::warn!(cause = %error, "simulated message not delivered");
                }
                0
            }
        };
    }
}

/// Producer settings: the service's connection settings, and ordered, idempotent delivery so
/// that each partition receives messages in the generator's delivery order.
fn producer_config(config: &Config) -> ClientConfig {
    let mut client = crate::clients::common_config(config);
    client
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        // Keyed by event id with the Java client's partitioner, as ad servers' producers do.
        .set("partitioner", "murmur2_random")
        .set("message.timeout.ms", "120000");
    for (key, value) in &config.kafka.producer {
        client.set(key, value);
    }
    client
}

/// A started run: its counters and the thread producing it.
pub struct Simulation {
    pub stats: Arc<Stats>,
    pub catalogue: scenario::Catalogue,
    pub settings: TrafficSettings,
    thread: std::thread::JoinHandle<anyhow::Result<String>>,
}

impl Simulation {
    /// Starts producing `plan` with `config`'s cluster and topics on a thread of its own,
    /// until the plan ends or `shutdown` is cancelled.
    pub fn start(
        config: &Config,
        plan: Plan,
        shutdown: CancellationToken,
    ) -> anyhow::Result<Simulation> {
        let generator = Generator::new(plan.settings.clone())?;
        let stats = Arc::new(Stats::default());
        let context = DeliveryCounter { stats: stats.clone() };
        let producer: ThreadedProducer<DeliveryCounter> = producer_config(config)
            .create_with_context(context)
            .context("cannot create the simulator's kafka producer")?;
        let encoder = Encoder::new(config);
        for topic in encoder.topics() {
            check_topic(&producer, topic)?;
        }
        let truth = plan.truth.as_ref().map(|_| {
            let windows = config.window_specs().expect("validated configs have valid windows");
            GroundTruth::new(windows, config.out_of_orderness_ms())
        });
        let catalogue = generator.catalogue().clone();
        let settings = plan.settings.clone();
        let producing = Producing { generator, encoder, producer, truth, stats: stats.clone() };
        let thread = std::thread::Builder::new()
            .name("simulator".into())
            .spawn(move || producing.run(plan, shutdown))
            .context("cannot start the simulator thread")?;
        Ok(Simulation { stats, catalogue, settings, thread })
    }

    /// True once the run has ended.
    pub fn is_finished(&self) -> bool {
        self.thread.is_finished()
    }

    /// Waits for the run to end; returns its summary.
    pub fn join(self) -> anyhow::Result<String> {
        self.thread.join().map_err(|_| anyhow::anyhow!("the simulator thread panicked"))?
    }
}

/// Fails with a clear message when `topic` cannot be reached or does not exist.
fn check_topic(producer: &ThreadedProducer<DeliveryCounter>, topic: &str) -> anyhow::Result<()> {
    // A cluster that creates topics on first use answers "unknown" to the request that
    // creates one: ask a few times before giving up.
    for attempt in 1..=5 {
        let metadata = producer
            .client()
            .fetch_metadata(Some(topic), Duration::from_secs(15))
            .with_context(|| format!("cannot read metadata of topic `{topic}` from the brokers"))?;
        let found = metadata.topics().iter().find(|t| t.name() == topic);
        if found.is_some_and(|t| t.error().is_none() && !t.partitions().is_empty()) {
            return Ok(());
        }
        if attempt < 5 {
            std::thread::sleep(Duration::from_millis(500));
        }
    }
    anyhow::bail!("topic `{topic}` does not exist; create it first")
}

struct Producing {
    generator: Generator,
    encoder: Encoder,
    producer: ThreadedProducer<DeliveryCounter>,
    truth: Option<GroundTruth>,
    stats: Arc<Stats>,
}

/// How often a paced run catches up with the wall clock.
const PACE_STEP: Duration = Duration::from_millis(10);

impl Producing {
    fn run(mut self, plan: Plan, shutdown: CancellationToken) -> anyhow::Result<String> {
        let started = Instant::now();
        let start_ms = plan.settings.start_ms;
        let end_ms = plan.end_ms.unwrap_or(i64::MAX);
        let max_messages = plan.max_messages.unwrap_or(u64::MAX);
        let mut sent = 0u64;
        let mut last_progress = Instant::now();
        'run: loop {
            if shutdown.is_cancelled() {
                break;
            }
            let clock_ms = if plan.paced {
                start_ms + started.elapsed().as_millis() as i64
            } else {
                // As fast as possible: a simulated second per step keeps shutdown responsive.
                let reached = self.stats.clock_ms.load(Ordering::Relaxed) as i64;
                reached.max(start_ms) + 1000
            };
            let limit_ms = clock_ms.min(end_ms);
            while let Some(event) = self.generator.next_before(limit_ms) {
                self.send(&event, &shutdown)?;
                sent += 1;
                if sent >= max_messages {
                    break 'run;
                }
            }
            self.stats.clock_ms.store(limit_ms.max(0) as u64, Ordering::Relaxed);
            if limit_ms >= end_ms {
                break;
            }
            if last_progress.elapsed() >= Duration::from_secs(10) {
                last_progress = Instant::now();
                tracing::info!(
                    clock = %crate::output::rfc3339(limit_ms),
                    "simulating: {}",
                    self.stats.summary()
                );
            }
            if plan.paced {
                std::thread::sleep(PACE_STEP);
            }
        }
        // After Ctrl-C, wait only briefly: the user wants to stop, not to drain a slow cluster.
        let flush_timeout = if shutdown.is_cancelled() {
            plan.flush_timeout.min(Duration::from_secs(5))
        } else {
            plan.flush_timeout
        };
        if let Err(error) = self.producer.flush(flush_timeout) {
            tracing::warn!(cause = %error, "not every simulated message was acknowledged");
        }
        let mut summary = self.stats.summary();
        if let (Some(truth), Some(path)) = (&self.truth, &plan.truth) {
            let file = std::fs::File::create(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            let rows = truth
                .write_json_lines(self.generator.catalogue(), file)
                .with_context(|| format!("cannot write {}", path.display()))?;
            summary.push_str(&format!("; ground truth: {rows} rows in {}", path.display()));
            if self.stats.failed.load(Ordering::Relaxed) > 0 {
                tracing::warn!(
                    "some messages failed, so the ground truth counts events never sent"
                );
            }
        }
        Ok(summary)
    }

    fn send(&mut self, event: &SimEvent, shutdown: &CancellationToken) -> anyhow::Result<()> {
        let message = self.encoder.encode(event, self.generator.catalogue());
        let mut record = BaseRecord::to(message.topic).key(message.key).payload(&message.payload);
        if let Some(timestamp) = message.timestamp_ms {
            record = record.timestamp(timestamp);
        }
        loop {
            match self.producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    // The cluster is slower than the plan: wait for the queue to drain.
                    if shutdown.is_cancelled() {
                        return Ok(());
                    }
                    record = back;
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err((error, _)) => return Err(error).context("cannot enqueue a simulated message"),
            }
        }
        self.stats.count(event);
        if let Some(truth) = &mut self.truth {
            truth.observe(event);
        }
        Ok(())
    }
}

/// Parses `--start`, or picks the default start.
fn start_ms(args: &SimulateArgs) -> anyhow::Result<i64> {
    if let Some(text) = &args.start {
        let time = chrono::DateTime::parse_from_rfc3339(text)
            .with_context(|| format!("--start `{text}` is not an RFC 3339 time"))?;
        return Ok(time.timestamp_millis());
    }
    let now = chrono::Utc::now().timestamp_millis() / 1000 * 1000;
    match (args.fast, args.duration) {
        (true, Some(duration)) => Ok(now - duration.as_millis() as i64),
        _ => Ok(now),
    }
}

/// Prints the campaigns and creatives of `settings`' seed; stops quietly when the reader
/// goes away (`| head`).
fn list_creatives(settings: &TrafficSettings) -> anyhow::Result<()> {
    use std::io::Write;
    let generator = Generator::new(settings.clone())?;
    let mut out = std::io::stdout().lock();
    let header = format!(
        "{:<8} {:<10} {:<15} {:>7} {:>8}",
        "campaign", "creative", "format", "ipm", "traffic"
    );
    if writeln!(out, "{header}").is_err() {
        return Ok(());
    }
    for creative in &generator.catalogue().creatives {
        let line = writeln!(
            out,
            "{:<8} {:<10} {:<15} {:>7.1} {:>7.2}%",
            creative.campaign_id,
            creative.creative_id,
            creative.format.name(),
            creative.ipm,
            creative.weight * 100.0
        );
        if line.is_err() {
            break;
        }
    }
    Ok(())
}

/// Runs `ipm-stream simulate` until its plan ends or `shutdown` is cancelled.
pub async fn run(
    config: Config,
    args: SimulateArgs,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let start_ms = start_ms(&args)?;
    let settings = args.traffic.settings(&config, start_ms, 1000.0, Duration::from_secs(86_400));
    if args.list_creatives {
        return list_creatives(&settings);
    }
    if args.fast && args.duration.is_none() && args.events.is_none() {
        anyhow::bail!("--fast needs --duration or --events, or it would never end");
    }
    let plan = Plan {
        end_ms: args.duration.map(|d| start_ms + d.as_millis() as i64),
        max_messages: args.events,
        paced: !args.fast,
        truth: args.truth.clone(),
        flush_timeout: Duration::from_secs(60),
        settings,
    };
    tracing::info!(
        seed = plan.settings.seed,
        start = %crate::output::rfc3339(start_ms),
        rate_per_s = plan.settings.rate_per_s,
        brokers = %config.kafka.brokers,
        topics = ?Encoder::new(&config).topics(),
        incidents = ?plan.settings.incidents.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "simulating; repeat this run with --seed {} --start {}",
        plan.settings.seed,
        crate::output::rfc3339(start_ms),
    );
    let started = Instant::now();
    let simulation = Simulation::start(&config, plan, shutdown)?;
    let summary = tokio::task::spawn_blocking(move || simulation.join()).await??;
    tracing::info!(took_ms = started.elapsed().as_millis() as u64, "simulated {summary}");
    Ok(())
}
