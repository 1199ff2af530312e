//! Service configuration: the TOML file, `IPM__SECTION__KEY` environment overrides, defaults
//! and the cross-field checks that must pass before anything connects. Every error names the
//! key at fault. Turning settings into client configs is left to the modules that own clients.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::deadletter::OnError;
use crate::decode::{DecodeSettings, TimeSource};
use crate::window::WindowSpec;

/// Prefix of environment variables that override file settings (`IPM__KAFKA__BROKERS`).
pub const ENV_PREFIX: &str = "IPM";
/// Separator between the prefix, sections and keys of an environment override.
pub const ENV_SEPARATOR: &str = "__";

/// A configuration that cannot be used, with the key that made it so.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file or an override could not be read or does not fit the schema.
    #[error("cannot load configuration: {0}")]
    Load(#[from] config::ConfigError),
    /// A value was read but breaks a rule of its own or of a related key.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid { key: String, reason: String },
}

fn invalid(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.to_owned(), reason: reason.into() }
}

/// The whole service configuration, as read from file and environment.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub input: InputConfig,
    pub windows: WindowsConfig,
    pub output: OutputConfig,
    pub dead_letter: DeadLetterConfig,
    pub dedupe: DedupeConfig,
    pub http: HttpConfig,
    pub shutdown: ShutdownConfig,
}

/// Connection and consumer-group settings shared by every Kafka client of the service.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Comma-separated `host:port` bootstrap list.
    pub brokers: String,
    /// Consumer group; instances with the same group share the input partitions.
    pub group_id: String,
    /// Where a partition without a committed offset starts: `earliest` or `latest`.
    pub auto_offset_reset: String,
    /// Extra librdkafka properties for every client (SASL, SSL, timeouts). `_` in a key is read
    /// as `.`, so that environment overrides can name them.
    pub librdkafka: BTreeMap<String, String>,
    /// Extra librdkafka properties for the consumer only.
    pub consumer: BTreeMap<String, String>,
    /// Extra librdkafka properties for the producer only.
    pub producer: BTreeMap<String, String>,
}

/// How input events are laid out and where each field lives.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InputConfig {
    /// `separate` (one topic per event kind) or `single` (one topic, kind in a field).
    pub layout: Layout,
    pub impressions_topic: String,
    pub installs_topic: String,
    /// The topic of the `single` layout.
    pub events_topic: String,
    /// Where event time comes from: `field` or `kafka_timestamp`.
    pub event_time: TimeSource,
    /// Values of the type field that mean an impression (`single` layout).
    pub impression_types: Vec<String>,
    /// Values of the type field that mean an install (`single` layout).
    pub install_types: Vec<String>,
    /// Larger messages are not decoded; they go where `dead_letter.on_error` says.
    pub max_message_bytes: usize,
    /// Events timed further ahead of the wall clock than this are refused, so that a skewed
    /// upstream clock cannot push the watermark past everyone else's events.
    #[serde(with = "humantime_serde_compat")]
    pub max_future: Duration,
    pub fields: FieldsConfig,
}

/// JSON pointers (RFC 6901) to each field of an input event.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FieldsConfig {
    pub event_id: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub campaign_id: String,
    pub creative_id: String,
    pub time: String,
}

/// Input topic layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    Separate,
    Single,
}

/// Event-time settings and the list of sliding windows.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WindowsConfig {
    /// How far behind the newest event of a partition its watermark trails.
    #[serde(with = "humantime_serde_compat")]
    pub out_of_orderness: Duration,
    /// Quiet time after which a caught-up partition stops holding the watermark back.
    #[serde(with = "humantime_serde_compat")]
    pub idle_timeout: Duration,
    /// The windows to keep, each a size and a slide.
    pub list: Vec<WindowConfig>,
}

/// One named sliding window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// Label used in records and metrics; defaults to the size as written (`5m`).
    pub name: Option<String>,
    #[serde(with = "humantime_serde_compat")]
    pub size: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub slide: Duration,
}

/// Where live values are published.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutputConfig {
    pub topic: String,
}

/// Where messages that cannot be counted go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeadLetterConfig {
    /// `dead_letter`, `drop` or `fail`.
    pub on_error: OnError,
    pub topic: String,
}

/// Deduplication by event id.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DedupeConfig {
    pub enabled: bool,
    /// How long an id is remembered, in event time; defaults to the longest window plus the
    /// out-of-orderness, beyond which a copy could not be counted anyway.
    #[serde(default, with = "humantime_serde_option")]
    pub horizon: Option<Duration>,
}

/// The HTTP port for metrics, health and the pull API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    pub listen: String,
}

/// Graceful shutdown bounds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ShutdownConfig {
    /// Longest time from SIGTERM to exit; keep it under the pod's termination grace period.
    #[serde(with = "humantime_serde_compat")]
    pub grace_period: Duration,
}

impl Default for DeadLetterConfig {
    fn default() -> Self {
        DeadLetterConfig { on_error: OnError::DeadLetter, topic: "ipm.dead-letter".into() }
    }
}

impl Default for DedupeConfig {
    fn default() -> Self {
        DedupeConfig { enabled: true, horizon: None }
    }
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig { topic: "ipm.live".into() }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig { listen: "0.0.0.0:9898".into() }
    }
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        ShutdownConfig { grace_period: Duration::from_secs(20) }
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        KafkaConfig {
            brokers: "localhost:9092".into(),
            group_id: "ipm-stream".into(),
            auto_offset_reset: "earliest".into(),
            librdkafka: BTreeMap::new(),
            consumer: BTreeMap::new(),
            producer: BTreeMap::new(),
        }
    }
}

impl Default for InputConfig {
    fn default() -> Self {
        InputConfig {
            layout: Layout::Separate,
            impressions_topic: "ad.impressions".into(),
            installs_topic: "ad.installs".into(),
            events_topic: "ad.events".into(),
            event_time: TimeSource::Field,
            impression_types: vec!["impression".into()],
            install_types: vec!["install".into()],
            max_message_bytes: 1_000_000,
            max_future: Duration::from_secs(600),
            fields: FieldsConfig::default(),
        }
    }
}

impl Default for FieldsConfig {
    fn default() -> Self {
        FieldsConfig {
            event_id: "/event_id".into(),
            kind: "/type".into(),
            campaign_id: "/campaign_id".into(),
            creative_id: "/creative_id".into(),
            time: "/ts".into(),
        }
    }
}

impl Default for WindowsConfig {
    fn default() -> Self {
        let window = |size: u64, slide: u64| WindowConfig {
            name: None,
            size: Duration::from_secs(size),
            slide: Duration::from_secs(slide),
        };
        WindowsConfig {
            out_of_orderness: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            list: vec![window(300, 10), window(3600, 60), window(86_400, 900)],
        }
    }
}

impl Config {
    /// Reads `path` (if given), applies `IPM__…` overrides from the process environment and
    /// checks the result.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        Self::load_with_env(path, None)
    }

    /// As [`Config::load`], with the environment given explicitly (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: Option<std::collections::HashMap<String, String>>,
    ) -> Result<Config, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(path) = path {
            builder = builder.add_source(config::File::from(path).required(true));
        }
        let environment = config::Environment::with_prefix(ENV_PREFIX)
            .prefix_separator(ENV_SEPARATOR)
            .separator(ENV_SEPARATOR)
            .list_separator(",")
            .with_list_parse_key("input.impression_types")
            .with_list_parse_key("input.install_types")
            .try_parsing(false)
            .source(env);
        let loaded: Config = builder.add_source(environment).build()?.try_deserialize()?;
        loaded.validated()
    }

    fn validated(mut self) -> Result<Config, ConfigError> {
        for map in [&mut self.kafka.librdkafka, &mut self.kafka.consumer, &mut self.kafka.producer]
        {
            *map = std::mem::take(map).into_iter().map(|(k, v)| (k.replace('_', "."), v)).collect();
        }
        if self.kafka.brokers.trim().is_empty() {
            return Err(invalid("kafka.brokers", "must list at least one host:port"));
        }
        if self.kafka.group_id.trim().is_empty() {
            return Err(invalid("kafka.group_id", "must not be empty"));
        }
        if !matches!(self.kafka.auto_offset_reset.as_str(), "earliest" | "latest") {
            return Err(invalid("kafka.auto_offset_reset", "must be `earliest` or `latest`"));
        }
        let topics = match self.input.layout {
            Layout::Separate => {
                if self.input.impressions_topic == self.input.installs_topic {
                    return Err(invalid(
                        "input.installs_topic",
                        "must differ from input.impressions_topic in the `separate` layout",
                    ));
                }
                vec![
                    ("input.impressions_topic", &self.input.impressions_topic),
                    ("input.installs_topic", &self.input.installs_topic),
                ]
            }
            Layout::Single => vec![("input.events_topic", &self.input.events_topic)],
        };
        let outputs =
            [("output.topic", &self.output.topic), ("dead_letter.topic", &self.dead_letter.topic)];
        for (key, topic) in topics.iter().chain(&outputs) {
            if topic.trim().is_empty() {
                return Err(invalid(key, "must not be empty"));
            }
        }
        for (key, topic) in outputs {
            if topics.iter().any(|(_, t)| *t == topic) {
                return Err(invalid(key, "must differ from every input topic"));
            }
        }
        if self.output.topic == self.dead_letter.topic {
            return Err(invalid("dead_letter.topic", "must differ from output.topic"));
        }
        if self.input.max_message_bytes == 0 {
            return Err(invalid("input.max_message_bytes", "must be above zero"));
        }
        if self.windows.list.is_empty() {
            return Err(invalid("windows.list", "must hold at least one window"));
        }
        if self.windows.list.len() > 32 {
            return Err(invalid("windows.list", "at most 32 windows are supported"));
        }
        self.window_specs()?;
        crate::decode::Decoder::new(&self.decode_settings())
            .map_err(|e| invalid("input.fields", e.to_string()))?;
        self.http_listen()?;
        if self.shutdown.grace_period.is_zero() {
            return Err(invalid("shutdown.grace_period", "must be longer than zero"));
        }
        Ok(self)
    }

    /// The configured windows with names filled in, checked for usable sizes and slides.
    pub fn window_specs(&self) -> Result<Vec<WindowSpec>, ConfigError> {
        let mut specs: Vec<WindowSpec> = Vec::with_capacity(self.windows.list.len());
        for (i, window) in self.windows.list.iter().enumerate() {
            let key = |field: &str| format!("windows.list[{i}].{field}");
            let size_ms = duration_ms(window.size);
            let slide_ms = duration_ms(window.slide);
            if slide_ms < 1000 || size_ms % 1000 != 0 || slide_ms % 1000 != 0 {
                return Err(invalid(&key("slide"), "size and slide must be whole seconds, >= 1s"));
            }
            if size_ms < slide_ms || size_ms % slide_ms != 0 {
                return Err(invalid(&key("size"), "must be a whole multiple of the slide"));
            }
            if size_ms / slide_ms > 10_000 {
                return Err(invalid(&key("slide"), "a window may hold at most 10000 slides"));
            }
            let name = window.name.clone().unwrap_or_else(|| compact_duration(window.size));
            if name.is_empty() || specs.iter().any(|s| s.name == name) {
                return Err(invalid(&key("name"), format!("`{name}` is empty or used twice")));
            }
            specs.push(WindowSpec { name, size_ms, slide_ms });
        }
        Ok(specs)
    }

    /// Decoder settings derived from the input section.
    pub fn decode_settings(&self) -> DecodeSettings {
        let fields = &self.input.fields;
        DecodeSettings {
            event_id: fields.event_id.clone(),
            kind: fields.kind.clone(),
            campaign_id: fields.campaign_id.clone(),
            creative_id: fields.creative_id.clone(),
            event_time: fields.time.clone(),
            impression_types: self.input.impression_types.clone(),
            install_types: self.input.install_types.clone(),
            time_source: self.input.event_time,
        }
    }

    /// The HTTP listen address.
    pub fn http_listen(&self) -> Result<SocketAddr, ConfigError> {
        self.http.listen.parse().map_err(|_| invalid("http.listen", "must be an ip:port address"))
    }

    /// Out-of-orderness in milliseconds.
    pub fn out_of_orderness_ms(&self) -> i64 {
        duration_ms(self.windows.out_of_orderness)
    }

    /// How long event ids are remembered for deduplication, in milliseconds.
    pub fn dedupe_horizon_ms(&self) -> i64 {
        match self.dedupe.horizon {
            Some(horizon) => duration_ms(horizon),
            None => {
                let longest = self.windows.list.iter().map(|w| duration_ms(w.size)).max();
                longest.unwrap_or(0) + self.out_of_orderness_ms()
            }
        }
    }

    /// `input.max_future` in milliseconds.
    pub fn max_future_ms(&self) -> i64 {
        duration_ms(self.input.max_future)
    }

    /// Idle timeout in milliseconds.
    pub fn idle_timeout_ms(&self) -> i64 {
        duration_ms(self.windows.idle_timeout)
    }
}

fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// `300s` → `5m`, `86400s` → `24h`: the short form users write in dashboards.
fn compact_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs >= 3600 && secs % 3600 == 0 {
        format!("{}h", secs / 3600)
    } else if secs >= 60 && secs % 60 == 0 {
        format!("{}m", secs / 60)
    } else {
        format!("{secs}s")
    }
}

/// Durations written as `10s`, `5m`, `1h 30m` (humantime), read through serde.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("`{text}` is not a duration like 10s or 5m: {e}"))
        })
    }
}

/// An optional duration, as [`humantime_serde_compat`].
mod humantime_serde_option {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            None => Ok(None),
            Some(text) => humantime::parse_duration(&text).map(Some).map_err(|e| {
                serde::de::Error::custom(format!("`{text}` is not a duration like 10s or 5m: {e}"))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::io::Write;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Option<HashMap<String, String>> {
        Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    #[test]
    fn shipped_config_files_load() {
        for name in ["ipm-stream.toml", "production.example.toml", "appsflyer.example.toml"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config").join(name);
            let config = Config::load_with_env(Some(&path), env(&[]));
            assert!(config.is_ok(), "{name}: {}", config.unwrap_err());
        }
    }

    #[test]
    fn defaults_hold_three_windows_named_by_size() {
        let config = Config::load_with_env(None, env(&[])).unwrap();
        let names: Vec<_> = config.window_specs().unwrap().into_iter().map(|w| w.name).collect();
        assert_eq!(names, ["5m", "1h", "24h"]);
        assert_eq!(config.output.topic, "ipm.live");
        assert_eq!(config.out_of_orderness_ms(), 30_000);
        assert_eq!(config.dedupe_horizon_ms(), 86_400_000 + 30_000);
        assert_eq!(config.dead_letter.on_error, OnError::DeadLetter);
    }

    #[test]
    fn dead_letter_mode_and_dedupe_horizon_are_read() {
        let config = Config::load_with_env(
            None,
            env(&[("IPM__DEAD_LETTER__ON_ERROR", "drop"), ("IPM__DEDUPE__HORIZON", "2h")]),
        )
        .unwrap();
        assert_eq!(config.dead_letter.on_error, OnError::Drop);
        assert_eq!(config.dedupe_horizon_ms(), 7_200_000);
    }

    #[test]
    fn environment_overrides_file_values() {
        let toml = file("[kafka]\nbrokers = \"file:9092\"\ngroup_id = \"g\"\n");
        let config = Config::load_with_env(
            Some(toml.path()),
            env(&[("IPM__KAFKA__BROKERS", "env:9092"), ("IPM__WINDOWS__IDLE_TIMEOUT", "2m")]),
        )
        .unwrap();
        assert_eq!(config.kafka.brokers, "env:9092");
        assert_eq!(config.kafka.group_id, "g");
        assert_eq!(config.idle_timeout_ms(), 120_000);
    }

    #[test]
    fn librdkafka_passthrough_keys_accept_underscores_from_environment() {
        let toml = file("[kafka.librdkafka]\n\"security.protocol\" = \"SASL_SSL\"\n");
        let config = Config::load_with_env(
            Some(toml.path()),
            env(&[("IPM__KAFKA__LIBRDKAFKA__SASL_PASSWORD", "secret")]),
        )
        .unwrap();
        assert_eq!(config.kafka.librdkafka["security.protocol"], "SASL_SSL");
        assert_eq!(config.kafka.librdkafka["sasl.password"], "secret");
    }

    #[test]
    fn unknown_key_is_named_in_the_error() {
        let toml = file("[kafka]\nbroker = \"x:1\"\n");
        let err = Config::load_with_env(Some(toml.path()), env(&[])).unwrap_err().to_string();
        assert!(err.contains("broker"), "{err}");
    }

    #[test]
    fn window_size_not_a_multiple_of_slide_is_rejected_with_its_key() {
        let toml = file("[[windows.list]]\nsize = \"5m\"\nslide = \"7s\"\n");
        let err = Config::load_with_env(Some(toml.path()), env(&[])).unwrap_err().to_string();
        assert!(err.contains("windows.list[0].size"), "{err}");
    }

    #[test]
    fn bad_duration_text_is_rejected() {
        let err = Config::load_with_env(None, env(&[("IPM__WINDOWS__OUT_OF_ORDERNESS", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("soon"), "{err}");
    }

    #[test]
    fn output_topic_equal_to_an_input_topic_is_rejected() {
        let err = Config::load_with_env(None, env(&[("IPM__OUTPUT__TOPIC", "ad.installs")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("output.topic"), "{err}");
    }
}
