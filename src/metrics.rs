//! Every Prometheus metric the service exports, created in one registry under names defined
//! here once, so dashboards, alert rules and tests can refer to the same constants. Updating
//! them is left to the modules that observe the events.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// Metric names, one constant each.
pub mod names {
    pub const IPM: &str = "ipm_stream_ipm";
    pub const IPM_LOWER: &str = "ipm_stream_ipm_lower";
    pub const IPM_UPPER: &str = "ipm_stream_ipm_upper";
    pub const WINDOW_IMPRESSIONS: &str = "ipm_stream_window_impressions";
    pub const WINDOW_INSTALLS: &str = "ipm_stream_window_installs";
    pub const EVENTS_CONSUMED: &str = "ipm_stream_events_consumed_total";
    pub const EVENTS_REJECTED: &str = "ipm_stream_events_rejected_total";
    pub const LATE_EVENTS: &str = "ipm_stream_late_events_total";
    pub const DEAD_LETTERS: &str = "ipm_stream_dead_letters_total";
    pub const DUPLICATES: &str = "ipm_stream_duplicates_total";
    pub const EVENTS_WITHOUT_ID: &str = "ipm_stream_events_without_id_total";
    pub const DEDUPE_IDS: &str = "ipm_stream_dedupe_ids";
    pub const CONSUMER_LAG: &str = "ipm_stream_consumer_lag_messages";
    pub const WATERMARK: &str = "ipm_stream_watermark_timestamp_seconds";
    pub const WATERMARK_DELAY: &str = "ipm_stream_watermark_delay_seconds";
    pub const RECORDS_PRODUCED: &str = "ipm_stream_records_produced_total";
    pub const PRODUCE_ERRORS: &str = "ipm_stream_produce_errors_total";
    pub const LAST_OUTPUT: &str = "ipm_stream_last_output_timestamp_seconds";
    pub const COMMITS: &str = "ipm_stream_offset_commits_total";
    pub const ACTIVE_KEYS: &str = "ipm_stream_active_keys";
    pub const PANES: &str = "ipm_stream_window_panes";
    pub const ASSIGNED_PARTITIONS: &str = "ipm_stream_assigned_partitions";
    pub const RESTORE_DURATION: &str = "ipm_stream_restore_duration_seconds";
    pub const ROUND_DURATION: &str = "ipm_stream_round_duration_seconds";
    pub const READY: &str = "ipm_stream_ready";
    pub const BUILD_INFO: &str = "ipm_stream_build_info";
}

/// Labels of the per-creative gauges, in order.
pub const CREATIVE_LABELS: [&str; 3] = ["campaign_id", "creative_id", "window"];

/// Outcome label values of [`names::EVENTS_CONSUMED`].
pub mod outcome {
    /// Counted in at least one window.
    pub const COUNTED: &str = "counted";
    /// Too late for every window.
    pub const LATE: &str = "late";
    /// Could not be decoded.
    pub const REJECTED: &str = "rejected";
    /// Read again to rebuild state; not counted a second time.
    pub const REPLAYED: &str = "replayed";
    /// A copy of an event already counted.
    pub const DUPLICATE: &str = "duplicate";
}

/// The registry and every metric in it.
pub struct Metrics {
    pub registry: Registry,
    pub ipm: GaugeVec,
    pub ipm_lower: GaugeVec,
    pub ipm_upper: GaugeVec,
    pub window_impressions: GaugeVec,
    pub window_installs: GaugeVec,
    pub events_consumed: IntCounterVec,
    pub events_rejected: IntCounterVec,
    pub late_events: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub duplicates: IntCounterVec,
    pub events_without_id: IntCounterVec,
    pub dedupe_ids: IntGauge,
    pub consumer_lag: IntGaugeVec,
    pub watermark: Gauge,
    pub watermark_delay: Gauge,
    pub records_produced: IntCounterVec,
    pub produce_errors: IntCounter,
    pub last_output: Gauge,
    pub commits: IntCounterVec,
    pub active_keys: IntGauge,
    pub panes: IntGauge,
    pub assigned_partitions: IntGauge,
    pub restore_duration: Gauge,
    pub round_duration: Histogram,
    pub ready: IntGauge,
}

impl Metrics {
    /// Creates and registers every metric, with process metrics where the platform has them.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let creative = |name: &str, help: &str| {
            register(&registry, GaugeVec::new(Opts::new(name, help), &CREATIVE_LABELS))
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            register(&registry, IntCounterVec::new(Opts::new(name, help), labels))
        };
        let gauge = |name: &str, help: &str| register(&registry, Gauge::new(name, help));
        let int_gauge = |name: &str, help: &str| register(&registry, IntGauge::new(name, help));
        let metrics = Metrics {
            ipm: creative(
                names::IPM,
                "Installs per thousand impressions in the window (NaN without impressions).",
            ),
            ipm_lower: creative(
                names::IPM_LOWER,
                "Lower bound of the 95% Wilson interval of the IPM.",
            ),
            ipm_upper: creative(
                names::IPM_UPPER,
                "Upper bound of the 95% Wilson interval of the IPM.",
            ),
            window_impressions: creative(names::WINDOW_IMPRESSIONS, "Impressions in the window."),
            window_installs: creative(names::WINDOW_INSTALLS, "Installs in the window."),
            events_consumed: counter_vec(
                names::EVENTS_CONSUMED,
                "Input messages read, by topic and outcome (counted, late, rejected, duplicate, \
                 replayed).",
                &["topic", "outcome"],
            ),
            events_rejected: counter_vec(
                names::EVENTS_REJECTED,
                "Input messages that could not be counted, by topic and reason.",
                &["topic", "reason"],
            ),
            late_events: counter_vec(
                names::LATE_EVENTS,
                "Events too late for a window's next emission, by window.",
                &["window"],
            ),
            dead_letters: counter_vec(
                names::DEAD_LETTERS,
                "Messages written to the dead-letter topic and acknowledged, by source topic and \
                 reason.",
                &["topic", "reason"],
            ),
            duplicates: counter_vec(
                names::DUPLICATES,
                "Events skipped because a copy with the same id was already counted.",
                &["topic"],
            ),
            events_without_id: counter_vec(
                names::EVENTS_WITHOUT_ID,
                "Events counted without an id, which cannot be deduplicated.",
                &["topic"],
            ),
            dedupe_ids: int_gauge(names::DEDUPE_IDS, "Event ids remembered for deduplication."),
            consumer_lag: register(
                &registry,
                IntGaugeVec::new(
                    Opts::new(names::CONSUMER_LAG, "Messages not yet read, by input partition."),
                    &["topic", "partition"],
                ),
            ),
            watermark: gauge(names::WATERMARK, "Processor watermark as a Unix timestamp."),
            watermark_delay: gauge(names::WATERMARK_DELAY, "Wall-clock time minus the watermark."),
            records_produced: counter_vec(
                names::RECORDS_PRODUCED,
                "Output records acknowledged by the broker, by kind (update, tombstone).",
                &["kind"],
            ),
            produce_errors: register(
                &registry,
                IntCounter::new(names::PRODUCE_ERRORS, "Output records the broker did not take."),
            ),
            last_output: gauge(names::LAST_OUTPUT, "When output records were last acknowledged."),
            commits: counter_vec(
                names::COMMITS,
                "Input offset commits, by result (ok, error).",
                &["result"],
            ),
            active_keys: int_gauge(names::ACTIVE_KEYS, "(campaign, creative) keys held."),
            panes: int_gauge(names::PANES, "Window panes held; each is 8 bytes of counts."),
            assigned_partitions: int_gauge(names::ASSIGNED_PARTITIONS, "Input partitions held."),
            restore_duration: gauge(
                names::RESTORE_DURATION,
                "Time the last state rebuild took after an assignment.",
            ),
            round_duration: register(
                &registry,
                Histogram::with_opts(HistogramOpts::new(
                    names::ROUND_DURATION,
                    "Time from a watermark advance to its records being acknowledged.",
                )),
            ),
            ready: int_gauge(names::READY, "1 when partitions are assigned and state is restored."),
            registry,
        };
        let build = IntGaugeVec::new(
            Opts::new(names::BUILD_INFO, "Build information; always 1."),
            &["version"],
        );
        register(&metrics.registry, build).with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        #[cfg(target_os = "linux")]
        metrics
            .registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("process metrics register once");
        metrics
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buffer)
            .expect("text encoding into memory does not fail");
        String::from_utf8(buffer).expect("the text format is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn register<M>(registry: &Registry, metric: prometheus::Result<M>) -> M
where
    M: prometheus::core::Collector + Clone + 'static,
{
    let metric = metric.expect("metric names and labels here are valid");
    registry.register(Box::new(metric.clone())).expect("each metric registers once");
    metric
}
