//! Turns simulated events into Kafka messages shaped the way the service's configuration reads
//! them: the topic layout, the JSON pointer of every field, the type values, and the Kafka
//! timestamp when event time is taken from it. Malformed messages are broken here, too.

use serde_json::{Map, Value};

use super::generate::{Defect, Delivery, SimEvent};
use super::scenario::Catalogue;
use crate::config::{Config, Layout};
use crate::decode::{EventKind, TimeSource};
use crate::output::rfc3339;

/// A message ready to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub topic: &'a str,
    /// The event id: duplicates land on the partition of their original.
    pub key: &'a str,
    pub payload: Vec<u8>,
    /// Set when the service takes event time from the Kafka timestamp.
    pub timestamp_ms: Option<i64>,
}

/// A JSON pointer split into unescaped tokens; `None` for an empty (unused) pointer.
fn tokens(pointer: &str) -> Option<Vec<String>> {
    let rest = pointer.strip_prefix('/')?;
    Some(rest.split('/').map(|t| t.replace("~1", "/").replace("~0", "~")).collect())
}

/// Sets `value` at `path`, creating objects, or arrays where the next token is an index.
fn set(root: &mut Value, path: &[String], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        *root = value;
        return;
    };
    let mut here = root;
    for (i, token) in parents.iter().enumerate() {
        let next_is_index = path[i + 1].parse::<usize>().is_ok();
        let empty =
            || if next_is_index { Value::Array(Vec::new()) } else { Value::Object(Map::new()) };
        here = slot(here, token, empty);
    }
    *slot(here, last, || Value::Null) = value;
}

fn slot<'v>(container: &'v mut Value, token: &str, empty: impl Fn() -> Value) -> &'v mut Value {
    match container {
        Value::Array(items) => {
            let index = token.parse::<usize>().unwrap_or(items.len());
            if items.len() <= index {
                items.resize(index + 1, Value::Null);
            }
            if items[index].is_null() {
                items[index] = empty();
            }
            &mut items[index]
        }
        other => {
            if !other.is_object() {
                *other = Value::Object(Map::new());
            }
            let Value::Object(map) = other else { unreachable!("made an object above") };
            map.entry(token.to_owned()).or_insert_with(empty)
        }
    }
}

/// Encodes events for one service configuration.
#[derive(Debug, Clone)]
pub struct Encoder {
    layout: Layout,
    impressions_topic: String,
    installs_topic: String,
    events_topic: String,
    event_id: Option<Vec<String>>,
    kind: Option<Vec<String>>,
    campaign_id: Option<Vec<String>>,
    creative_id: Option<Vec<String>>,
    time: Option<Vec<String>>,
    impression_type: String,
    install_type: String,
    kafka_time: bool,
}

impl Encoder {
    /// An encoder writing what `config`'s input section reads.
    pub fn new(config: &Config) -> Encoder {
        let input = &config.input;
        let first = |values: &[String], fallback: &str| {
            values.first().cloned().unwrap_or_else(|| fallback.to_owned())
        };
        Encoder {
            layout: input.layout,
            impressions_topic: input.impressions_topic.clone(),
            installs_topic: input.installs_topic.clone(),
            events_topic: input.events_topic.clone(),
            event_id: tokens(&input.fields.event_id),
            kind: tokens(&input.fields.kind),
            campaign_id: tokens(&input.fields.campaign_id),
            creative_id: tokens(&input.fields.creative_id),
            time: tokens(&input.fields.time),
            impression_type: first(&input.impression_types, "impression"),
            install_type: first(&input.install_types, "install"),
            kafka_time: input.event_time == TimeSource::KafkaTimestamp,
        }
    }

    /// The input topics, impressions first (one topic in the `single` layout).
    pub fn topics(&self) -> Vec<&str> {
        match self.layout {
            Layout::Separate => vec![&self.impressions_topic, &self.installs_topic],
            Layout::Single => vec![&self.events_topic],
        }
    }

    /// The message for `event`.
    pub fn encode<'a>(&'a self, event: &'a SimEvent, catalogue: &Catalogue) -> Message<'a> {
        let topic = match (self.layout, event.kind) {
            (Layout::Single, _) => &self.events_topic,
            (Layout::Separate, EventKind::Impression) => &self.impressions_topic,
            (Layout::Separate, EventKind::Install) => &self.installs_topic,
        };
        let creative = &catalogue.creatives[event.creative as usize];
        let defect = match event.delivery {
            Delivery::Malformed(defect) => Some(defect),
            _ => None,
        };
        // Event time read from the Kafka timestamp makes a bad time field harmless.
        let defect = match defect {
            Some(Defect::BadTime) if self.kafka_time => Some(Defect::NoCreative),
            other => other,
        };
        let time = rfc3339(event.event_time_ms);
        let mut root = Value::Object(Map::new());
        let mut put = |path: &Option<Vec<String>>, value: &str| {
            if let Some(path) = path {
                set(&mut root, path, Value::String(value.to_owned()));
            }
        };
        put(&self.event_id, &event.event_id);
        if self.layout == Layout::Single {
            let kind = match event.kind {
                EventKind::Impression => &self.impression_type,
                EventKind::Install => &self.install_type,
            };
            put(&self.kind, kind);
        }
        let campaign =
            if defect == Some(Defect::EmptyCampaign) { "" } else { &creative.campaign_id };
        put(&self.campaign_id, campaign);
        if defect != Some(Defect::NoCreative) {
            put(&self.creative_id, &creative.creative_id);
        }
        put(&self.time, if defect == Some(Defect::BadTime) { "soon after lunch" } else { &time });
        let payload = match defect {
            Some(Defect::NotObject) => {
                let values = [&event.event_id, &creative.campaign_id, &creative.creative_id, &time];
                serde_json::to_vec(&values).expect("strings serialize")
            }
            Some(Defect::Truncated) => {
                let mut whole = serde_json::to_vec(&root).expect("values serialize");
                whole.truncate(whole.len() / 2);
                whole
            }
            _ => serde_json::to_vec(&root).expect("values serialize"),
        };
        let timestamp_ms = self.kafka_time.then_some(event.event_time_ms);
        Message { topic, key: &event.event_id, payload, timestamp_ms }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{Decoder, KindSource};

    fn event(kind: EventKind, delivery: Delivery) -> SimEvent {
        SimEvent {
            delivery_ms: 1_796_292_000_400,
            event_time_ms: 1_796_292_000_250,
            kind,
            creative: 0,
            event_id: "e-1".into(),
            delivery,
        }
    }

    fn decoded(config: &Config, message: &Message<'_>) -> Result<(String, i64), String> {
        let decoder = Decoder::new(&config.decode_settings()).unwrap();
        let kinds = match config.input.layout {
            Layout::Separate if message.topic == config.input.installs_topic => {
                KindSource::Fixed(EventKind::Install)
            }
            Layout::Separate => KindSource::Fixed(EventKind::Impression),
            Layout::Single => KindSource::Field,
        };
        decoder
            .decode(&message.payload, &kinds, message.timestamp_ms)
            .map(|e| (format!("{:?}/{}/{}", e.kind, e.campaign_id, e.creative_id), e.event_time_ms))
            .map_err(|r| r.code().to_owned())
    }

    #[test]
    fn default_layout_writes_the_documented_json_on_two_topics() {
        let config = Config::default();
        let catalogue = Catalogue::new(1, 1, 1);
        let encoder = Encoder::new(&config);
        let install = event(EventKind::Install, Delivery::OnTime);
        let message = encoder.encode(&install, &catalogue);
        assert_eq!(message.topic, "ad.installs");
        assert_eq!(message.key, "e-1");
        assert_eq!(
            String::from_utf8(message.payload.clone()).unwrap(),
            r#"{"campaign_id":"c-01","creative_id":"cr-01-1","event_id":"e-1","ts":"2026-12-03T10:00:00.250Z"}"#
        );
        assert_eq!(
            decoded(&config, &message),
            Ok(("Install/c-01/cr-01-1".into(), 1_796_292_000_250))
        );
    }

    #[test]
    fn nested_pointers_single_topic_and_kafka_time_are_honoured() {
        let mut config = Config::default();
        config.input.layout = Layout::Single;
        config.input.fields.campaign_id = "/attribution/af_c_id".into();
        config.input.fields.creative_id = "/attribution/af_ad_id".into();
        config.input.fields.kind = "/event_name".into();
        config.input.fields.time = "/times/1".into();
        config.input.event_time = TimeSource::KafkaTimestamp;
        config.input.impression_types = vec!["view".into()];
        let catalogue = Catalogue::new(1, 1, 1);
        let encoder = Encoder::new(&config);
        let impression = event(EventKind::Impression, Delivery::OnTime);
        let message = encoder.encode(&impression, &catalogue);
        assert_eq!(message.topic, "ad.events");
        assert_eq!(message.timestamp_ms, Some(1_796_292_000_250));
        let json: Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(json["event_name"], "view");
        assert_eq!(json["attribution"]["af_ad_id"], "cr-01-1");
        assert_eq!(json["times"][0], Value::Null);
        assert_eq!(decoded(&config, &message).unwrap().0, "Impression/c-01/cr-01-1");
    }

    #[test]
    fn every_defect_is_rejected_by_the_decoder() {
        let catalogue = Catalogue::new(1, 1, 1);
        let mut single = Config::default();
        single.input.layout = Layout::Single;
        for config in [Config::default(), single] {
            let encoder = Encoder::new(&config);
            for defect in [
                Defect::Truncated,
                Defect::NotObject,
                Defect::NoCreative,
                Defect::BadTime,
                Defect::EmptyCampaign,
            ] {
                let bad = event(EventKind::Install, Delivery::Malformed(defect));
                let result = decoded(&config, &encoder.encode(&bad, &catalogue));
                assert!(result.is_err(), "{defect:?} was accepted: {result:?}");
            }
        }
    }
}
