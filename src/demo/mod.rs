//! `ipm-stream demo`: the real pipeline end to end with nothing else installed. It runs
//! librdkafka's mock cluster in process, produces simulated traffic into it, runs the service
//! through [`crate::start`] exactly as in production, reads the output topic back and shows a
//! live table ([`view`]), or plain log lines when stdout is not a terminal.

pub mod view;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::{Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use crate::config::{Config, WindowConfig};
use crate::metrics::{names, Metrics};
use crate::output::IpmRecord;
use crate::simulate::encode::Encoder;
use crate::simulate::{Plan, Simulation, TrafficArgs};
use view::{Board, Status};

/// A sliding window written `SIZE/SLIDE`, like `5m/10s`.
#[derive(Debug, Clone)]
pub struct WindowArg(pub WindowConfig);

impl FromStr for WindowArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (size, slide) = text
            .split_once('/')
            .ok_or_else(|| format!("`{text}`: expected SIZE/SLIDE, like 5m/10s"))?;
        let parse = |part: &str| {
            humantime::parse_duration(part.trim())
                .map_err(|e| format!("`{text}`: `{part}` is not a duration: {e}"))
        };
        Ok(WindowArg(WindowConfig { name: None, size: parse(size)?, slide: parse(slide)? }))
    }
}

/// Flags of `ipm-stream demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub traffic: TrafficArgs,
    /// Address of the HTTP port (/metrics, /v1/ipm); 0.0.0.0:9898 lets a Prometheus in a
    /// container reach it.
    #[arg(long, default_value = "127.0.0.1:9898")]
    pub listen: String,
    /// A sliding window as SIZE/SLIDE; repeat for several [default: 1m/5s 5m/10s 15m/1m].
    #[arg(long = "window", value_name = "SIZE/SLIDE")]
    pub windows: Vec<WindowArg>,
    /// How far behind its newest event a partition's watermark trails.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub out_of_orderness: Duration,
    /// Quiet time after which a partition stops holding the watermark back.
    #[arg(long, value_parser = humantime::parse_duration, default_value = "5s")]
    pub idle_timeout: Duration,
    /// Partitions of each input topic in the embedded cluster.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// Creatives shown in the table.
    #[arg(long, default_value_t = 10)]
    pub top: usize,
    /// Time between two refreshes of the table (plain log lines: ten times as long).
    #[arg(long, value_parser = humantime::parse_duration, default_value = "1s")]
    pub refresh: Duration,
}

/// The longest the demo waits for each part to stop after Ctrl-C. librdkafka's mock cluster
/// can hang while a client is torn down, so the demo bounds the wait and exits regardless.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// The demo's own consumer group, so that it never resumes a production group's offsets.
const GROUP_ID: &str = "ipm-stream-demo";

/// librdkafka's mock cluster, owned by a thread of its own: the handle is not `Send`, and
/// destroying it must wait until every client has gone.
struct EmbeddedKafka {
    bootstrap: String,
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl EmbeddedKafka {
    /// Starts a one-broker cluster holding `topics` (name, partitions).
    fn start(topics: Vec<(String, i32)>) -> anyhow::Result<EmbeddedKafka> {
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new().name("mock-kafka".into()).spawn(move || {
            let cluster = match MockCluster::new(1) {
                Ok(cluster) => cluster,
                Err(error) => {
                    let _ = ready_tx.send(Err(format!("cannot start the mock cluster: {error}")));
                    return;
                }
            };
            for (topic, partitions) in &topics {
                if let Err(error) = cluster.create_topic(topic, *partitions, 1) {
                    let _ = ready_tx.send(Err(format!("cannot create topic {topic}: {error}")));
                    return;
                }
            }
            let _ = ready_tx.send(Ok(cluster.bootstrap_servers()));
            // Until the demo is done with it, or gone.
            let _ = stop_rx.recv();
            drop(cluster);
        })?;
        let bootstrap = ready_rx
            .recv()
            .map_err(|_| anyhow::anyhow!("the mock cluster thread stopped"))?
            .map_err(|e| anyhow::anyhow!(e))?;
        Ok(EmbeddedKafka { bootstrap, stop, thread })
    }

    /// Destroys the cluster, waiting at most `timeout`.
    async fn stop(self, timeout: Duration) -> bool {
        let _ = self.stop.send(());
        let thread = self.thread;
        let joined = tokio::task::spawn_blocking(move || thread.join());
        tokio::time::timeout(timeout, joined).await.is_ok()
    }
}

/// The service configuration of the demo: the given one (input layout and fields, output
/// topic) pointed at the embedded cluster, with short windows that fill within minutes.
fn demo_config(mut config: Config, args: &DemoArgs, bootstrap: &str) -> anyhow::Result<Config> {
    config.kafka.brokers = bootstrap.to_owned();
    config.kafka.group_id = GROUP_ID.into();
    config.kafka.auto_offset_reset = "earliest".into();
    // Production security settings and tuning do not apply to the embedded cluster.
    config.kafka.librdkafka.clear();
    config.kafka.consumer.clear();
    config.kafka.producer.clear();
    config.windows.list = if args.windows.is_empty() {
        ["1m/5s", "5m/10s", "15m/1m"]
            .iter()
            .map(|w| WindowArg::from_str(w).expect("the default windows parse").0)
            .collect()
    } else {
        args.windows.iter().map(|w| w.0.clone()).collect()
    };
    config.windows.out_of_orderness = args.out_of_orderness;
    config.windows.idle_timeout = args.idle_timeout;
    config.http.listen = args.listen.clone();
    config.shutdown.grace_period = config.shutdown.grace_period.min(Duration::from_secs(10));
    config.window_specs().context("--window")?;
    config.http_listen().context("--listen")?;
    Ok(config)
}

/// Log lines of the demo: to stderr when stdout is not a terminal; otherwise kept in memory
/// so they cannot scribble over the table, and the latest warnings are shown under it.
#[derive(Clone, Default)]
pub struct LogTail(Arc<Mutex<Vec<String>>>);

const LOG_TAIL_LINES: usize = 3;

impl LogTail {
    fn lines(&self) -> Vec<String> {
        self.0.lock().expect("no panics while holding the lock").clone()
    }
}

impl Write for LogTail {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(bytes);
        let mut lines = self.0.lock().expect("no panics while holding the lock");
        // Rejected messages are expected here (the simulator sends some) and are counted
        // above the table; their per-message warnings would only crowd it.
        let shown = |l: &&str| !l.trim().is_empty() && !l.contains("input message not counted");
        for line in text.lines().filter(shown) {
            lines.push(line.trim().to_owned());
        }
        let excess = lines.len().saturating_sub(LOG_TAIL_LINES);
        lines.drain(..excess);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Sets up logging for the demo; returns the in-memory tail when the table is shown.
pub fn init_logging() -> Option<LogTail> {
    use tracing_subscriber::EnvFilter;
    if std::io::stdout().is_terminal() {
        let tail = LogTail::default();
        let writer = tail.clone();
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("warn,rdkafka=error,librdkafka=error"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(false)
            .without_time()
            .with_target(false)
            .with_writer(move || writer.clone())
            .init();
        Some(tail)
    } else {
        let filter = EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| EnvFilter::new("info,rdkafka=warn,librdkafka=warn"));
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(std::io::stderr)
            .init();
        None
    }
}

/// Reads the output topic from the beginning into `board`, until `shutdown`.
async fn read_output(
    consumer: StreamConsumer,
    board: Arc<Mutex<Board>>,
    shutdown: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            _ = shutdown.cancelled() => break,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(cause = %error, "reading the output topic failed");
                continue;
            }
        };
        let record = match message.payload() {
            None => None,
            Some(payload) => match serde_json::from_slice::<IpmRecord>(payload) {
                Ok(record) => Some(record),
                Err(error) => {
                    tracing::warn!(cause = %error, "unreadable output record");
                    continue;
                }
            },
        };
        let key = message.key().unwrap_or_default();
        board.lock().expect("no panics while holding the lock").apply(key, record);
    }
}

fn output_consumer(config: &Config, partitions: i32) -> anyhow::Result<StreamConsumer> {
    let consumer: StreamConsumer = crate::clients::common_config(config)
        // Partitions are assigned by hand, so this group never joins (no rebalance wait).
        .set("group.id", "ipm-stream-demo-view")
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot create the output reader")?;
    let mut assignment = TopicPartitionList::new();
    for partition in 0..partitions {
        assignment.add_partition_offset(&config.output.topic, partition, Offset::Beginning)?;
    }
    consumer.assign(&assignment).context("cannot assign the output topic")?;
    Ok(consumer)
}

/// Sum of the samples of the counter family `name` whose labels pass `keep`.
fn counter_sum(metrics: &Metrics, name: &str, keep: impl Fn(&[(&str, &str)]) -> bool) -> f64 {
    let mut total = 0.0;
    for family in metrics.registry.gather().iter().filter(|family| family.name() == name) {
        for metric in family.get_metric() {
            let labels: Vec<(&str, &str)> =
                metric.get_label().iter().map(|l| (l.name(), l.value())).collect();
            if keep(&labels) {
                total += metric.get_counter().value();
            }
        }
    }
    total
}

fn counter_total(metrics: &Metrics, name: &str) -> f64 {
    counter_sum(metrics, name, |_| true)
}

/// Whether the `reason` label is `too_late`.
fn too_late(labels: &[(&str, &str)]) -> bool {
    labels.contains(&("reason", "too_late"))
}

/// Counters sampled at a refresh; rates are taken over the last [`RATE_SPAN`] of samples,
/// since output comes in bursts, one per slide.
#[derive(Clone, Copy)]
struct Rates {
    at: Instant,
    produced: u64,
    consumed: f64,
    records: f64,
}

const RATE_SPAN: Duration = Duration::from_secs(10);

impl Rates {
    fn sample(simulation: &Simulation, metrics: &Metrics) -> Rates {
        Rates {
            at: Instant::now(),
            produced: simulation.stats.sent(),
            consumed: counter_total(metrics, names::EVENTS_CONSUMED),
            records: counter_total(metrics, names::RECORDS_PRODUCED),
        }
    }
}

/// Terminal control: the table is drawn on the alternate screen, which is left on exit so
/// the shell comes back as it was.
const ENTER_SCREEN: &str = "\x1b[?1049h\x1b[?25l";
const LEAVE_SCREEN: &str = "\x1b[?25h\x1b[?1049l";

/// Runs the demo until `shutdown` is cancelled (Ctrl-C).
pub async fn run(
    config: Config,
    args: DemoArgs,
    log_tail: Option<LogTail>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let tty = log_tail.is_some();
    let encoder = Encoder::new(&config);
    let output_partitions = 1;
    let mut topics: Vec<(String, i32)> =
        encoder.topics().iter().map(|t| (t.to_string(), args.partitions.max(1))).collect();
    topics.push((config.output.topic.clone(), output_partitions));
    if config.dead_letter.on_error == crate::deadletter::OnError::DeadLetter {
        topics.push((config.dead_letter.topic.clone(), 1));
    }
    let kafka = EmbeddedKafka::start(topics)?;
    let config = demo_config(config, &args, &kafka.bootstrap)?;
    let started = Instant::now();
    let running = crate::start(config.clone(), shutdown.clone()).await?;
    let http = format!("http://{}", display_addr(running.http_addr));
    tracing::info!(bootstrap = %kafka.bootstrap, %http, "demo pipeline started on the mock cluster");

    let start_ms = chrono::Utc::now().timestamp_millis();
    let settings = args.traffic.settings(&config, start_ms, 400.0, Duration::from_secs(600));
    let plan = Plan {
        settings,
        end_ms: None,
        max_messages: None,
        paced: true,
        truth: None,
        flush_timeout: Duration::from_secs(5),
    };
    let simulation = Simulation::start(&config, plan, shutdown.clone())?;
    tracing::info!(seed = simulation.settings.seed, "simulating traffic");

    let names: Vec<String> =
        config.window_specs().expect("checked above").into_iter().map(|w| w.name).collect();
    let board = Arc::new(Mutex::new(Board::new(names, 30_000)));
    let reader = tokio::spawn(read_output(
        output_consumer(&config, output_partitions)?,
        board.clone(),
        shutdown.clone(),
    ));

    let mut screen = std::io::stdout();
    if tty {
        let _ = write!(screen, "{ENTER_SCREEN}");
    }
    let refresh = if tty { args.refresh } else { args.refresh * 10 };
    let mut interval = tokio::time::interval(refresh.max(Duration::from_millis(100)));
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut samples =
        std::collections::VecDeque::from([Rates::sample(&simulation, &running.metrics)]);
    let incidents: Vec<String> =
        simulation.settings.incidents.iter().map(ToString::to_string).collect();
    // The last view, printed again after the alternate screen is left so that it stays in
    // the terminal's scrollback (and in a plain log, once more with the final values).
    let mut last_view: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = interval.tick() => {}
        }
        if simulation.is_finished() {
            tracing::error!("the simulator stopped");
            shutdown.cancel();
            break;
        }
        let now = Rates::sample(&simulation, &running.metrics);
        while samples.len() > 1 && now.at.duration_since(samples[0].at) > RATE_SPAN {
            samples.pop_front();
        }
        let previous = samples[0];
        samples.push_back(now);
        let seconds = now.at.duration_since(previous.at).as_secs_f64().max(1e-3);
        let metrics = &running.metrics;
        let delay = running.metrics.watermark.get();
        let status = Status {
            seed: simulation.settings.seed,
            uptime_s: started.elapsed().as_secs(),
            http: http.clone(),
            produced_per_s: (now.produced - previous.produced) as f64 / seconds,
            consumed_per_s: (now.consumed - previous.consumed) / seconds,
            records_per_s: (now.records - previous.records) / seconds,
            watermark_delay_s: (delay > 0.0).then(|| running.metrics.watermark_delay.get()),
            active_keys: running.metrics.active_keys.get(),
            rejected: counter_sum(metrics, names::EVENTS_REJECTED, |l| !too_late(l)) as u64,
            duplicates: counter_total(metrics, names::DUPLICATES) as u64,
            too_late: counter_sum(metrics, names::EVENTS_REJECTED, too_late) as u64,
            simulated_hour: simulated_hour(&simulation),
            incidents: incidents.clone(),
            warnings: log_tail.as_ref().map(LogTail::lines).unwrap_or_default(),
        };
        let board = board.lock().expect("no panics while holding the lock");
        let text = if tty {
            last_view = view::render(&board, &status, args.top);
            // Home, each line cleared to its end, then the rest of the screen cleared.
            let body: String = last_view.iter().map(|l| format!("{l}\x1b[K\r\n")).collect();
            format!("\x1b[H{body}\x1b[J")
        } else {
            last_view = view::plain(&board, &status, args.top.min(5));
            last_view.join("\n") + "\n"
        };
        drop(board);
        if screen.write_all(text.as_bytes()).and_then(|()| screen.flush()).is_err() {
            // Nobody reads stdout any more: stop as after Ctrl-C.
            shutdown.cancel();
            break;
        }
    }
    if tty {
        let _ = write!(screen, "{LEAVE_SCREEN}");
        let _ = writeln!(screen, "{}", last_view.join("\n"));
        let _ = screen.flush();
    }
    shutdown.cancel();
    eprintln!("stopping: draining the pipeline (at most {}s)…", STOP_TIMEOUT.as_secs());
    let stopped = stop_all(running, simulation, reader, kafka).await;
    if !tty {
        let board = board.lock().expect("no panics while holding the lock");
        let status = Status { http, ..Status::default() };
        let _ = writeln!(
            screen,
            "final values:\n{}",
            view::plain(&board, &status, args.top)[1..].join("\n")
        );
    }
    for line in log_tail.as_ref().map(LogTail::lines).unwrap_or_default() {
        eprintln!("{line}");
    }
    if !stopped {
        // A librdkafka client is stuck in teardown: leave without waiting for it.
        eprintln!("the embedded cluster did not stop in time; exiting anyway");
        std::process::exit(0);
    }
    Ok(())
}

/// Stops every part, each within [`STOP_TIMEOUT`]; false if one did not stop in time.
async fn stop_all(
    running: crate::Running,
    simulation: Simulation,
    reader: tokio::task::JoinHandle<()>,
    kafka: EmbeddedKafka,
) -> bool {
    let mut clean = true;
    match tokio::time::timeout(STOP_TIMEOUT, running.wait()).await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => tracing::error!("{error}"),
        Err(_) => {
            tracing::warn!("the pipeline did not stop within {STOP_TIMEOUT:?}");
            clean = false;
        }
    }
    let summary =
        tokio::time::timeout(STOP_TIMEOUT, tokio::task::spawn_blocking(move || simulation.join()))
            .await;
    match summary {
        Ok(Ok(Ok(summary))) => eprintln!("simulated {summary}"),
        Ok(Ok(Err(error))) => tracing::error!("{error:#}"),
        _ => clean = false,
    }
    if tokio::time::timeout(STOP_TIMEOUT, reader).await.is_err() {
        clean = false;
    }
    clean && kafka.stop(STOP_TIMEOUT).await
}

/// The simulated time of day, in hours.
fn simulated_hour(simulation: &Simulation) -> f64 {
    let clock = simulation.stats.clock_ms.load(Ordering::Relaxed) as i64;
    let cycle = crate::simulate::scenario::DailyCycle::new(
        simulation.settings.start_ms,
        simulation.settings.day_length,
        1.0,
    );
    let simulated = (clock - cycle.start_ms).max(0) as f64 * cycle.time_scale;
    (cycle.start_of_day_ms as f64 + simulated).rem_euclid(86_400_000.0) / 3_600_000.0
}

/// `0.0.0.0:9898` is served on every interface; show the loopback address a browser can use.
fn display_addr(addr: SocketAddr) -> String {
    if addr.ip().is_unspecified() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_flags_parse_size_and_slide() {
        let window: WindowArg = "5m/10s".parse().unwrap();
        assert_eq!(window.0.size, Duration::from_secs(300));
        assert_eq!(window.0.slide, Duration::from_secs(10));
        assert!("5m".parse::<WindowArg>().unwrap_err().contains("SIZE/SLIDE"));
    }
}
