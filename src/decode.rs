//! Decoding of one Kafka message payload (a JSON object) into an [`Event`], borrowing strings
//! from the payload. Owns field lookup by JSON pointer, the id/type/time rules and the rejection
//! codes; topic layout, reading user configuration, windowing and counting rejections belong to
//! other modules.

use std::borrow::Cow;
use std::fmt;

use chrono::DateTime;
use serde::de::{DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

/// Whether an event is an ad impression or an install attributed to one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventKind {
    /// The creative was shown.
    Impression,
    /// The app was installed after the creative was shown.
    Install,
}

/// One decoded event; its strings borrow from the payload unless they contained JSON escapes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Event<'a> {
    /// Producer-assigned id for deduplication; `None` when absent, null or empty.
    pub event_id: Option<Cow<'a, str>>,
    /// Impression or install.
    pub kind: EventKind,
    /// Campaign the creative belongs to; never empty.
    pub campaign_id: Cow<'a, str>,
    /// Creative shown; never empty.
    pub creative_id: Cow<'a, str>,
    /// Event time as Unix epoch milliseconds.
    pub event_time_ms: i64,
}

impl Event<'_> {
    /// Copies any borrowed strings so the event no longer depends on the payload.
    pub fn into_owned(self) -> Event<'static> {
        Event {
            event_id: self.event_id.map(|id| Cow::Owned(id.into_owned())),
            kind: self.kind,
            campaign_id: Cow::Owned(self.campaign_id.into_owned()),
            creative_id: Cow::Owned(self.creative_id.into_owned()),
            event_time_ms: self.event_time_ms,
        }
    }
}

/// How an event's kind is decided: fixed by the topic or read from the type field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KindSource {
    /// Every message on the topic is of this kind; the type field is not read.
    Fixed(EventKind),
    /// The type field is read and matched against the configured type values.
    Field,
}

/// Where event time comes from; configured as `field` or `kafka_timestamp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeSource {
    /// The event-time field of the payload.
    Field,
    /// The Kafka record timestamp; the event-time field is not read.
    KafkaTimestamp,
}

/// Which payload fields to read and how to interpret them; built by the config module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeSettings {
    /// JSON pointer (RFC 6901) to the event id.
    pub event_id: String,
    /// JSON pointer to the event type.
    pub kind: String,
    /// JSON pointer to the campaign id.
    pub campaign_id: String,
    /// JSON pointer to the creative id.
    pub creative_id: String,
    /// JSON pointer to the event time.
    pub event_time: String,
    /// Values of the type field meaning impression.
    pub impression_types: Vec<String>,
    /// Values of the type field meaning install.
    pub install_types: Vec<String>,
    /// Where event time comes from.
    pub time_source: TimeSource,
}

impl Default for DecodeSettings {
    fn default() -> Self {
        DecodeSettings {
            event_id: "/event_id".to_owned(),
            kind: "/type".to_owned(),
            campaign_id: "/campaign_id".to_owned(),
            creative_id: "/creative_id".to_owned(),
            event_time: "/ts".to_owned(),
            impression_types: vec!["impression".to_owned()],
            install_types: vec!["install".to_owned()],
            time_source: TimeSource::Field,
        }
    }
}

/// A payload field located by a configured pointer; named as in [`DecodeSettings`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    /// [`DecodeSettings::event_id`].
    EventId,
    /// [`DecodeSettings::kind`].
    Kind,
    /// [`DecodeSettings::campaign_id`].
    CampaignId,
    /// [`DecodeSettings::creative_id`].
    CreativeId,
    /// [`DecodeSettings::event_time`].
    EventTime,
}

const FIELD_COUNT: usize = 5;

impl Field {
    /// All fields, in capture-slot order.
    pub const ALL: [Field; FIELD_COUNT] =
        [Field::EventId, Field::Kind, Field::CampaignId, Field::CreativeId, Field::EventTime];

    /// The settings name of the field.
    pub fn name(self) -> &'static str {
        match self {
            Field::EventId => "event_id",
            Field::Kind => "kind",
            Field::CampaignId => "campaign_id",
            Field::CreativeId => "creative_id",
            Field::EventTime => "event_time",
        }
    }

    fn bit(self) -> u8 {
        1 << self as u8
    }

    fn lowest_in(mask: u8) -> Field {
        Field::ALL[(mask.trailing_zeros() as usize).min(FIELD_COUNT - 1)]
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A configured pointer, or set of pointers, that cannot be used for decoding.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PointerError {
    /// A non-empty pointer that does not start with '/'.
    #[error("{field} pointer {pointer:?} must be empty or start with '/'")]
    MissingLeadingSlash {
        /// The field the pointer was configured for.
        field: Field,
        /// The pointer as configured.
        pointer: String,
    },
    /// A '~' not followed by '0' or '1'.
    #[error(
        "{field} pointer {pointer:?} has a '~' not followed by '0' or '1' (write '~0' for '~')"
    )]
    BadEscape {
        /// The field the pointer was configured for.
        field: Field,
        /// The pointer as configured.
        pointer: String,
    },
    /// One pointer names a value inside the value another names, so both cannot be scalars.
    #[error(
        "{field} pointer {pointer:?} overlaps {other_field} pointer {other:?}: \
         one names a value inside the other"
    )]
    Overlap {
        /// The field whose pointer was found to overlap.
        field: Field,
        /// Its pointer as configured.
        pointer: String,
        /// The field it overlaps.
        other_field: Field,
        /// That field's pointer as configured.
        other: String,
    },
    /// A type value listed as both an impression and an install type.
    #[error(
        "type value {value:?} (read at {pointer:?}) is listed as both an impression and an \
         install type"
    )]
    AmbiguousType {
        /// The kind pointer as configured.
        pointer: String,
        /// The value listed twice.
        value: String,
    },
}

/// Why a payload was not turned into an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum Rejection {
    /// The payload bytes are not UTF-8.
    #[error("payload is not valid UTF-8")]
    NotUtf8,
    /// The payload is not one complete JSON value.
    #[error("payload is not valid JSON")]
    NotJson,
    /// The payload is valid JSON but not an object.
    #[error("payload is not a JSON object")]
    NotObject,
    /// The campaign id is absent, empty, or neither a string nor an integer.
    #[error("campaign id is missing or empty")]
    MissingCampaignId,
    /// The creative id is absent, empty, or neither a string nor an integer.
    #[error("creative id is missing or empty")]
    MissingCreativeId,
    /// The type field is absent or null.
    #[error("event type is missing")]
    MissingType,
    /// The type field is not one of the configured impression or install values.
    #[error("event type is not a configured impression or install type")]
    UnknownType,
    /// The time field (or the Kafka timestamp, when configured) is absent or null.
    #[error("event time is missing")]
    MissingTime,
    /// The time field is present but not a recognised timestamp.
    #[error("event time is not a recognised timestamp")]
    BadTime,
}

impl Rejection {
    /// Every rejection, for pre-registering metric labels.
    pub const ALL: [Rejection; 9] = [
        Rejection::NotUtf8,
        Rejection::NotJson,
        Rejection::NotObject,
        Rejection::MissingCampaignId,
        Rejection::MissingCreativeId,
        Rejection::MissingType,
        Rejection::UnknownType,
        Rejection::MissingTime,
        Rejection::BadTime,
    ];

    /// Stable snake_case code, used as a metric label.
    pub fn code(self) -> &'static str {
        match self {
            Rejection::NotUtf8 => "not_utf8",
            Rejection::NotJson => "not_json",
            Rejection::NotObject => "not_object",
            Rejection::MissingCampaignId => "missing_campaign_id",
            Rejection::MissingCreativeId => "missing_creative_id",
            Rejection::MissingType => "missing_type",
            Rejection::UnknownType => "unknown_type",
            Rejection::MissingTime => "missing_time",
            Rejection::BadTime => "bad_time",
        }
    }
}

/// Payload decoder with its pointers compiled into a trie; build once, share across threads.
#[derive(Debug)]
pub struct Decoder {
    /// Trie of pointer tokens; index 0 is the root (the whole payload).
    nodes: Vec<Node>,
    /// Slots read whatever the [`KindSource`]; the kind slot is added per call.
    always: u8,
    types: Vec<(Box<str>, EventKind)>,
    time_source: TimeSource,
}

#[derive(Debug, Default)]
struct Node {
    children: Vec<Child>,
    /// Fields whose pointer ends at this node.
    slots: u8,
    /// Fields whose pointer ends at or below this node, to skip subtrees nobody reads.
    subtree: u8,
    /// Largest array index among the children, so arrays can be skipped past it.
    max_index: Option<usize>,
}

#[derive(Debug)]
struct Child {
    key: Box<str>,
    /// The key read as an RFC 6901 array index, when it is one.
    index: Option<usize>,
    node: usize,
}

impl Decoder {
    /// Compiles the configured pointers and type values.
    pub fn new(settings: &DecodeSettings) -> Result<Decoder, PointerError> {
        let pointers: [&str; FIELD_COUNT] = [
            &settings.event_id,
            &settings.kind,
            &settings.campaign_id,
            &settings.creative_id,
            &settings.event_time,
        ];
        let mut decoder = Decoder {
            nodes: vec![Node::default()],
            always: Field::EventId.bit() | Field::CampaignId.bit() | Field::CreativeId.bit(),
            types: Vec::new(),
            time_source: settings.time_source,
        };
        if settings.time_source == TimeSource::Field {
            decoder.always |= Field::EventTime.bit();
        }
        let read = decoder.always | Field::Kind.bit();
        for field in Field::ALL {
            let tokens = parse_pointer(field, pointers[field as usize])?;
            // A pointer that is never read cannot clash with the others, so only its syntax is
            // checked.
            if read & field.bit() != 0 {
                decoder.insert(field, &tokens, &pointers)?;
            }
        }
        for (values, kind) in [
            (&settings.impression_types, EventKind::Impression),
            (&settings.install_types, EventKind::Install),
        ] {
            for value in values {
                match decoder.types.iter().find(|(known, _)| **known == **value) {
                    Some((_, known)) if *known != kind => {
                        return Err(PointerError::AmbiguousType {
                            pointer: settings.kind.clone(),
                            value: value.clone(),
                        })
                    }
                    Some(_) => {}
                    None => decoder.types.push((value.as_str().into(), kind)),
                }
            }
        }
        Ok(decoder)
    }

    fn insert(
        &mut self,
        field: Field,
        tokens: &[String],
        pointers: &[&str; FIELD_COUNT],
    ) -> Result<(), PointerError> {
        let overlap = |other_mask: u8| {
            let other_field = Field::lowest_in(other_mask);
            PointerError::Overlap {
                field,
                pointer: pointers[field as usize].to_owned(),
                other_field,
                other: pointers[other_field as usize].to_owned(),
            }
        };
        let mut at = 0;
        for token in tokens {
            if self.nodes[at].slots != 0 {
                return Err(overlap(self.nodes[at].slots));
            }
            self.nodes[at].subtree |= field.bit();
            at = match self.nodes[at].children.iter().find(|c| *c.key == **token) {
                Some(child) => child.node,
                None => {
                    let node = self.nodes.len();
                    self.nodes.push(Node::default());
                    let index = array_index(token);
                    let parent = &mut self.nodes[at];
                    parent.children.push(Child { key: token.as_str().into(), index, node });
                    parent.max_index = parent.max_index.max(index);
                    node
                }
            };
        }
        let leaf = &mut self.nodes[at];
        if !leaf.children.is_empty() {
            return Err(overlap(leaf.subtree & !leaf.slots));
        }
        // Identical pointers are allowed: both fields get the same value.
        leaf.slots |= field.bit();
        leaf.subtree |= field.bit();
        Ok(())
    }

    /// Decodes one payload; `kafka_timestamp_ms` is used only with [`TimeSource::KafkaTimestamp`].
    pub fn decode<'a>(
        &self,
        payload: &'a [u8],
        kind: &KindSource,
        kafka_timestamp_ms: Option<i64>,
    ) -> Result<Event<'a>, Rejection> {
        // serde_json skips unread strings without validating them, so invalid UTF-8 in an
        // ignored field would otherwise pass; checking upfront also lets the parser below skip
        // its own per-string validation.
        let text = std::str::from_utf8(payload).map_err(|_| Rejection::NotUtf8)?;
        let active = match kind {
            KindSource::Field => self.always | Field::Kind.bit(),
            KindSource::Fixed(_) => self.always,
        };
        let mut captured = [const { Leaf::Absent }; FIELD_COUNT];
        let mut de = serde_json::Deserializer::from_str(text);
        let seed = TopSeed(NodeSeed { nodes: &self.nodes, node: 0, active, out: &mut captured });
        let is_object = seed.deserialize(&mut de).map_err(|_| Rejection::NotJson)?;
        de.end().map_err(|_| Rejection::NotJson)?;
        if !is_object {
            return Err(Rejection::NotObject);
        }

        let [event_id, kind_value, campaign_id, creative_id, time] = captured;
        let campaign_id = id_text(campaign_id).ok_or(Rejection::MissingCampaignId)?;
        let creative_id = id_text(creative_id).ok_or(Rejection::MissingCreativeId)?;
        let kind = match kind {
            KindSource::Fixed(kind) => *kind,
            KindSource::Field => self.kind_of(&kind_value)?,
        };
        let event_time_ms = match self.time_source {
            TimeSource::Field => time_ms(&time)?,
            TimeSource::KafkaTimestamp => kafka_timestamp_ms.ok_or(Rejection::MissingTime)?,
        };
        Ok(Event { event_id: id_text(event_id), kind, campaign_id, creative_id, event_time_ms })
    }

    fn kind_of(&self, value: &Leaf<'_>) -> Result<EventKind, Rejection> {
        match value {
            Leaf::Absent | Leaf::Null => Err(Rejection::MissingType),
            Leaf::Str(text) => self
                .types
                .iter()
                .find(|(known, _)| **known == **text)
                .map(|&(_, kind)| kind)
                .ok_or(Rejection::UnknownType),
            _ => Err(Rejection::UnknownType),
        }
    }
}

/// Splits an RFC 6901 pointer into unescaped reference tokens.
fn parse_pointer(field: Field, pointer: &str) -> Result<Vec<String>, PointerError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(PointerError::MissingLeadingSlash { field, pointer: pointer.to_owned() });
    };
    rest.split('/')
        .map(|raw| {
            let mut token = String::with_capacity(raw.len());
            let mut chars = raw.chars();
            while let Some(c) = chars.next() {
                if c != '~' {
                    token.push(c);
                    continue;
                }
                match chars.next() {
                    Some('0') => token.push('~'),
                    Some('1') => token.push('/'),
                    _ => {
                        return Err(PointerError::BadEscape { field, pointer: pointer.to_owned() })
                    }
                }
            }
            Ok(token)
        })
        .collect()
}

/// RFC 6901 array index: "0" or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let digits = !token.is_empty() && token.bytes().all(|b| b.is_ascii_digit());
    if !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

/// A value found at a pointer, kept only as far as the id/type/time rules need.
#[derive(Debug, Clone)]
enum Leaf<'de> {
    Absent,
    Null,
    Str(Cow<'de, str>),
    I64(i64),
    U64(u64),
    F64(f64),
    /// Bool, object or array: present but never a usable id, type or time.
    Other,
}

fn id_text(value: Leaf<'_>) -> Option<Cow<'_, str>> {
    match value {
        Leaf::Str(text) if !text.is_empty() => Some(text),
        Leaf::I64(n) => Some(Cow::Owned(n.to_string())),
        Leaf::U64(n) => Some(Cow::Owned(n.to_string())),
        _ => None,
    }
}

fn time_ms(value: &Leaf<'_>) -> Result<i64, Rejection> {
    match value {
        Leaf::Absent | Leaf::Null => Err(Rejection::MissingTime),
        Leaf::I64(ms) => Ok(*ms),
        Leaf::U64(ms) => i64::try_from(*ms).map_err(|_| Rejection::BadTime),
        Leaf::F64(ms) => float_ms(*ms),
        Leaf::Str(text) => text_ms(text),
        Leaf::Other => Err(Rejection::BadTime),
    }
}

fn float_ms(ms: f64) -> Result<i64, Rejection> {
    let floor = ms.floor();
    // `i64::MAX as f64` rounds up to 2^63, which itself does not fit, hence the strict bound.
    if floor.is_finite() && floor >= i64::MIN as f64 && floor < i64::MAX as f64 {
        Ok(floor as i64)
    } else {
        Err(Rejection::BadTime)
    }
}

fn text_ms(text: &str) -> Result<i64, Rejection> {
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return text.parse().map_err(|_| Rejection::BadTime);
    }
    let mut zoned = [0u8; NAIVE_MAX_LEN + 1];
    let text = if is_naive_shape(text) {
        // chrono's RFC 3339 parser accepts a space separator and is several times faster than its
        // format-string parser, so a UTC designator is appended in a stack buffer. Fraction digits
        // past nanoseconds are dropped first; chrono ignores them anyway.
        let keep = text.len().min(NAIVE_MAX_LEN);
        zoned[..keep].copy_from_slice(&text.as_bytes()[..keep]);
        zoned[keep] = b'Z';
        std::str::from_utf8(&zoned[..=keep]).map_err(|_| Rejection::BadTime)?
    } else {
        text
    };
    DateTime::parse_from_rfc3339(text)
        .map(|time| time.timestamp_millis())
        .map_err(|_| Rejection::BadTime)
}

/// `yyyy-mm-dd hh:mm:ss` plus a dot and nanosecond digits.
const NAIVE_MAX_LEN: usize = 19 + 1 + 9;

/// Exactly `dddd-dd-dd dd:dd:dd` plus an optional `.d+`: AppsFlyer's format, which has no offset
/// and is read as UTC.
fn is_naive_shape(text: &str) -> bool {
    let b = text.as_bytes();
    if b.len() < 19 {
        return false;
    }
    let digit = |i: usize| b[i].is_ascii_digit();
    let head = (0..19).all(|i| match i {
        4 | 7 => b[i] == b'-',
        10 => b[i] == b' ',
        13 | 16 => b[i] == b':',
        _ => digit(i),
    });
    let tail = match &b[19..] {
        [] => true,
        [b'.', fraction @ ..] => !fraction.is_empty() && fraction.iter().all(u8::is_ascii_digit),
        _ => false,
    };
    head && tail
}

/// Walks the top-level value: an object is descended from the trie root, anything else is only
/// validated so that "valid JSON but not an object" can be told apart from "not JSON".
struct TopSeed<'t, 'c, 'de>(NodeSeed<'t, 'c, 'de>);

impl<'de> DeserializeSeed<'de> for TopSeed<'_, '_, 'de> {
    type Value = bool;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<bool, D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for TopSeed<'_, '_, 'de> {
    type Value = bool;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<bool, A::Error> {
        self.0.visit_map(map).map(|()| true)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<bool, A::Error> {
        IgnoredAny.visit_seq(seq).map(|_| false)
    }

    fn visit_bool<E>(self, _: bool) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_i64<E>(self, _: i64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_u64<E>(self, _: u64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_f64<E>(self, _: f64) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_str<E>(self, _: &str) -> Result<bool, E> {
        Ok(false)
    }

    fn visit_unit<E>(self) -> Result<bool, E> {
        Ok(false)
    }
}

/// Visits the value at one trie node: captures it if a pointer ends here, otherwise descends
/// into the children that an active field still needs.
struct NodeSeed<'t, 'c, 'de> {
    nodes: &'t [Node],
    node: usize,
    active: u8,
    out: &'c mut [Leaf<'de>; FIELD_COUNT],
}

impl<'de> NodeSeed<'_, '_, 'de> {
    fn slots(&self) -> u8 {
        self.nodes[self.node].slots & self.active
    }

    fn store(self, leaf: Leaf<'de>) {
        let mut slots = self.slots();
        while slots != 0 {
            let slot = slots.trailing_zeros() as usize;
            slots &= slots - 1;
            if slots == 0 {
                self.out[slot] = leaf;
                return;
            }
            self.out[slot] = leaf.clone();
        }
    }

    fn child(&mut self, node: usize) -> Option<NodeSeed<'_, '_, 'de>> {
        if self.nodes[node].subtree & self.active == 0 {
            return None;
        }
        Some(NodeSeed { nodes: self.nodes, node, active: self.active, out: &mut *self.out })
    }
}

impl<'de> DeserializeSeed<'de> for NodeSeed<'_, '_, 'de> {
    type Value = ();

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<(), D::Error> {
        de.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for NodeSeed<'_, '_, 'de> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        if self.slots() != 0 {
            self.store(Leaf::Other);
            return IgnoredAny.visit_map(map).map(drop);
        }
        let nodes = self.nodes;
        let children = &nodes[self.node].children;
        while let Some(found) = map.next_key_seed(KeySeed(children))? {
            match found.and_then(|at| self.child(children[at].node)) {
                Some(seed) => map.next_value_seed(seed)?,
                None => map.next_value::<IgnoredAny>().map(drop)?,
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        if self.slots() != 0 {
            self.store(Leaf::Other);
            return IgnoredAny.visit_seq(seq).map(drop);
        }
        let nodes = self.nodes;
        let node = &nodes[self.node];
        if let Some(max_index) = node.max_index {
            for index in 0..=max_index {
                let wanted = node.children.iter().find(|c| c.index == Some(index));
                let more = match wanted.and_then(|c| self.child(c.node)) {
                    Some(seed) => seq.next_element_seed(seed)?.is_some(),
                    None => seq.next_element::<IgnoredAny>()?.is_some(),
                };
                if !more {
                    return Ok(());
                }
            }
        }
        IgnoredAny.visit_seq(seq).map(drop)
    }

    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<(), E> {
        if self.slots() != 0 {
            self.store(Leaf::Str(Cow::Borrowed(v)));
        }
        Ok(())
    }

    fn visit_str<E>(self, v: &str) -> Result<(), E> {
        // Reached only for strings with escapes, which serde_json unescapes into scratch space.
        if self.slots() != 0 {
            self.store(Leaf::Str(Cow::Owned(v.to_owned())));
        }
        Ok(())
    }

    fn visit_string<E>(self, v: String) -> Result<(), E> {
        if self.slots() != 0 {
            self.store(Leaf::Str(Cow::Owned(v)));
        }
        Ok(())
    }

    fn visit_i64<E>(self, v: i64) -> Result<(), E> {
        if self.slots() != 0 {
            self.store(Leaf::I64(v));
        }
        Ok(())
    }

    fn visit_u64<E>(self, v: u64) -> Result<(), E> {
        if self.slots() != 0 {
            self.store(Leaf::U64(v));
        }
        Ok(())
    }

    fn visit_f64<E>(self, v: f64) -> Result<(), E> {
        if self.slots() != 0 {
            self.store(Leaf::F64(v));
        }
        Ok(())
    }

    fn visit_bool<E>(self, _: bool) -> Result<(), E> {
        if self.slots() != 0 {
            self.store(Leaf::Other);
        }
        Ok(())
    }

    fn visit_unit<E>(self) -> Result<(), E> {
        if self.slots() != 0 {
            self.store(Leaf::Null);
        }
        Ok(())
    }
}

/// Reads an object key and reports which trie child, if any, it names.
struct KeySeed<'t>(&'t [Child]);

impl<'de> DeserializeSeed<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn deserialize<D: serde::Deserializer<'de>>(self, de: D) -> Result<Option<usize>, D::Error> {
        de.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed<'_> {
    type Value = Option<usize>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_str<E>(self, key: &str) -> Result<Option<usize>, E> {
        Ok(self.0.iter().position(|child| *child.key == *key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::{json, Value};

    const T_250: i64 = 1_796_292_000_250; // 2026-12-03T10:00:00.250Z

    fn decoder() -> Decoder {
        Decoder::new(&DecodeSettings::default()).unwrap()
    }

    fn with(edit: impl FnOnce(&mut DecodeSettings)) -> Decoder {
        let mut settings = DecodeSettings::default();
        edit(&mut settings);
        Decoder::new(&settings).unwrap()
    }

    fn decode(payload: &[u8]) -> Result<Event<'_>, Rejection> {
        decoder().decode(payload, &KindSource::Field, None)
    }

    fn time_of(ts: Value) -> Result<i64, Rejection> {
        let payload =
            json!({"type": "impression", "campaign_id": "c", "creative_id": "x", "ts": ts});
        let bytes = serde_json::to_vec(&payload).unwrap();
        decode(&bytes).map(|event| event.event_time_ms)
    }

    fn pointer_error(edit: impl FnOnce(&mut DecodeSettings)) -> PointerError {
        let mut settings = DecodeSettings::default();
        edit(&mut settings);
        Decoder::new(&settings).unwrap_err()
    }

    #[test]
    fn default_event_decodes_with_borrowed_strings() {
        let payload = br#"{"event_id":"e-1","type":"install","campaign_id":"c-1",
            "creative_id":"cr-2","ts":"2026-12-03T10:00:00.250Z","extra":{"a":[1,2,{"b":null}]}}"#;
        let event = decode(payload).unwrap();
        assert_eq!(event.event_id.as_deref(), Some("e-1"));
        assert_eq!(event.kind, EventKind::Install);
        assert_eq!(event.campaign_id, "c-1");
        assert_eq!(event.creative_id, "cr-2");
        assert_eq!(event.event_time_ms, T_250);
        assert!(matches!(event.event_id, Some(Cow::Borrowed(_))));
        assert!(matches!(event.campaign_id, Cow::Borrowed(_)));
        assert!(matches!(event.creative_id, Cow::Borrowed(_)));
    }

    #[test]
    fn escaped_strings_decode_to_owned_text() {
        let payload = br#"{"type":"impression","campaign_id":"a\"b\\c\/d\u00e9\ud83d\ude00",
            "creative_id":"line\nbreak","event_id":"\u0041","ts":1}"#;
        let event = decode(payload).unwrap();
        assert_eq!(event.campaign_id, "a\"b\\c/d\u{e9}\u{1F600}");
        assert!(matches!(event.campaign_id, Cow::Owned(_)));
        assert_eq!(event.creative_id, "line\nbreak");
        assert!(matches!(event.creative_id, Cow::Owned(_)));
        assert_eq!(event.event_id.as_deref(), Some("A"));
    }

    #[test]
    fn escaped_keys_match_pointer_tokens() {
        let payload =
            br#"{"typ\u0065":"impression","campaign\u005fid":"c","creative_id":"x","ts":1}"#;
        let event = decode(payload).unwrap();
        assert_eq!(event.campaign_id, "c");
        assert_eq!(event.kind, EventKind::Impression);
    }

    #[test]
    fn non_ascii_strings_are_borrowed() {
        let payload = r#"{"type":"install","campaign_id":"кампания","creative_id":"😀","ts":1}"#;
        let event = decode(payload.as_bytes()).unwrap();
        assert_eq!(event.campaign_id, "кампания");
        assert!(matches!(event.campaign_id, Cow::Borrowed(_)));
        assert!(matches!(event.creative_id, Cow::Borrowed(_)));
    }

    #[test]
    fn integer_ids_are_formatted_as_text() {
        let payload = br#"{"type":"install","campaign_id":-42,"creative_id":18446744073709551615,
            "event_id":7,"ts":1}"#;
        let event = decode(payload).unwrap();
        assert_eq!(event.campaign_id, "-42");
        assert_eq!(event.creative_id, "18446744073709551615");
        assert_eq!(event.event_id.as_deref(), Some("7"));
    }

    #[test]
    fn whitespace_only_id_is_kept_as_is() {
        let event = decode(br#"{"type":"install","campaign_id":" ","creative_id":"x","ts":1}"#);
        assert_eq!(event.unwrap().campaign_id, " ");
    }

    #[test]
    fn event_id_is_none_when_absent_null_empty_or_not_a_scalar_id() {
        for event_id in ["", r#","event_id":null"#, r#","event_id":"""#, r#","event_id":{}"#] {
            let payload = format!(
                r#"{{"type":"install","campaign_id":"c","creative_id":"x","ts":1{event_id}}}"#
            );
            let event = decode(payload.as_bytes()).unwrap();
            assert_eq!(event.event_id, None, "{payload}");
        }
    }

    #[test]
    fn rfc3339_utc_with_millis_is_converted_to_epoch_millis() {
        assert_eq!(time_of(json!("2026-12-03T10:00:00.250Z")), Ok(T_250));
    }

    #[test]
    fn rfc3339_with_offset_is_converted_to_utc_millis() {
        assert_eq!(time_of(json!("2026-12-03T12:00:00.250+02:00")), Ok(T_250));
        assert_eq!(time_of(json!("2026-12-03T05:30:00.250-04:30")), Ok(T_250));
        assert_eq!(time_of(json!("2026-12-03T10:00:00.250+00:00")), Ok(T_250));
    }

    #[test]
    fn rfc3339_lowercase_t_and_z_are_accepted() {
        assert_eq!(time_of(json!("2026-12-03t10:00:00.250z")), Ok(T_250));
    }

    #[test]
    fn rfc3339_without_fraction_is_whole_seconds() {
        assert_eq!(time_of(json!("2026-12-03T10:00:00Z")), Ok(T_250 - 250));
    }

    #[test]
    fn rfc3339_fraction_beyond_millis_is_truncated() {
        assert_eq!(time_of(json!("2026-12-03T10:00:00.2509Z")), Ok(T_250));
        assert_eq!(time_of(json!("2026-12-03T10:00:00.250999999999999Z")), Ok(T_250));
        assert_eq!(time_of(json!("2026-12-03T10:00:00.25Z")), Ok(T_250));
        assert_eq!(time_of(json!("2026-12-03T10:00:00.2Z")), Ok(T_250 - 50));
    }

    #[test]
    fn times_before_the_epoch_truncate_toward_the_past() {
        assert_eq!(time_of(json!("1969-12-31T23:59:59.9995Z")), Ok(-1));
        assert_eq!(time_of(json!("1969-12-31 23:59:59.9995")), Ok(-1));
    }

    #[test]
    fn appsflyer_space_separated_time_is_read_as_utc() {
        assert_eq!(time_of(json!("2026-12-03 10:00:00.250")), Ok(T_250));
        assert_eq!(time_of(json!("2026-12-03 10:00:00.250123")), Ok(T_250));
    }

    #[test]
    fn appsflyer_time_without_fraction_is_whole_seconds() {
        assert_eq!(time_of(json!("2026-12-03 10:00:00")), Ok(T_250 - 250));
    }

    #[test]
    fn space_separated_time_with_offset_is_rfc3339() {
        assert_eq!(time_of(json!("2026-12-03 11:00:00.250+01:00")), Ok(T_250));
    }

    #[test]
    fn integer_time_is_epoch_millis() {
        assert_eq!(time_of(json!(T_250)), Ok(T_250));
        assert_eq!(time_of(json!(-5)), Ok(-5));
        assert_eq!(time_of(json!(i64::MAX as u64)), Ok(i64::MAX));
    }

    #[test]
    fn digit_string_time_is_epoch_millis() {
        assert_eq!(time_of(json!("1796292000250")), Ok(T_250));
        assert_eq!(time_of(json!("0")), Ok(0));
    }

    #[test]
    fn float_time_is_floored_to_millis() {
        assert_eq!(time_of(json!(1_796_292_000_250.9_f64)), Ok(T_250));
        assert_eq!(time_of(json!(-1.5)), Ok(-2));
        assert_eq!(
            decode(br#"{"type":"install","campaign_id":"c","creative_id":"x","ts":1e3}"#)
                .map(|e| e.event_time_ms),
            Ok(1000)
        );
    }

    #[test]
    fn unparseable_times_are_bad_time() {
        let bad = [
            json!(""),
            json!("yesterday"),
            json!("-5"),
            json!("+5"),
            json!("99999999999999999999"),
            json!("2026-13-03T10:00:00Z"),
            json!("2026-02-30 10:00:00"),
            json!("2026-12-03T10:00:00"),
            json!("2026-12-03T10:00:00.Z"),
            json!("2026-12-03 10:00:00."),
            json!("2026-12-03 10:00:00Zjunk"),
            json!(" 2026-12-03 10:00:00"),
            json!("2026-12-03 10:00:00 "),
            json!("2026-1-3 1:00:00"),
            json!("2026-12-03"),
            json!(u64::MAX),
            json!(1e300),
            json!(-1e300),
            json!(true),
            json!({"ms": 1}),
            json!([1]),
        ];
        for ts in bad {
            assert_eq!(time_of(ts.clone()), Err(Rejection::BadTime), "{ts}");
        }
    }

    #[test]
    fn absent_or_null_time_is_missing_time() {
        assert_eq!(time_of(Value::Null), Err(Rejection::MissingTime));
        let payload = br#"{"type":"install","campaign_id":"c","creative_id":"x"}"#;
        assert_eq!(decode(payload), Err(Rejection::MissingTime));
    }

    #[test]
    fn kafka_timestamp_source_ignores_time_field() {
        let decoder = with(|s| s.time_source = TimeSource::KafkaTimestamp);
        for payload in [
            &br#"{"type":"install","campaign_id":"c","creative_id":"x"}"#[..],
            br#"{"type":"install","campaign_id":"c","creative_id":"x","ts":"garbage"}"#,
        ] {
            let event = decoder.decode(payload, &KindSource::Field, Some(T_250)).unwrap();
            assert_eq!(event.event_time_ms, T_250);
        }
    }

    #[test]
    fn kafka_timestamp_source_without_timestamp_is_missing_time() {
        let decoder = with(|s| s.time_source = TimeSource::KafkaTimestamp);
        let payload = br#"{"type":"install","campaign_id":"c","creative_id":"x","ts":1}"#;
        assert_eq!(decoder.decode(payload, &KindSource::Field, None), Err(Rejection::MissingTime));
    }

    #[test]
    fn field_time_source_ignores_kafka_timestamp() {
        let payload = br#"{"type":"install","campaign_id":"c","creative_id":"x","ts":5}"#;
        let event = decoder().decode(payload, &KindSource::Field, Some(T_250)).unwrap();
        assert_eq!(event.event_time_ms, 5);
    }

    #[test]
    fn appsflyer_postback_with_custom_pointers_decodes() {
        let decoder = with(|s| {
            s.campaign_id = "/af_c_id".into();
            s.creative_id = "/af_ad_id".into();
            s.event_time = "/install_time".into();
            s.kind = "/event_name".into();
            s.event_id = "/appsflyer_id".into();
        });
        let payload = br#"{"af_c_id":"c-1","af_ad_id":"cr-2",
            "install_time":"2026-12-03 10:00:00.250","event_name":"install"}"#;
        let event = decoder.decode(payload, &KindSource::Field, None).unwrap();
        let expected = Event {
            event_id: None,
            kind: EventKind::Install,
            campaign_id: "c-1".into(),
            creative_id: "cr-2".into(),
            event_time_ms: T_250,
        };
        assert_eq!(event, expected);
    }

    #[test]
    fn nested_object_pointers_decode() {
        let decoder = with(|s| {
            s.campaign_id = "/campaign/id".into();
            s.creative_id = "/creative/id".into();
            s.event_time = "/meta/time/ms".into();
        });
        let payload =
            br#"{"campaign":{"name":"n","id":"c","tags":[1,{"id":"no"}]},"type":"impression",
            "creative":{"id":"x"},"meta":{"time":{"ms":7,"s":0}}}"#;
        let event = decoder.decode(payload, &KindSource::Field, None).unwrap();
        assert_eq!((&*event.campaign_id, &*event.creative_id), ("c", "x"));
        assert_eq!(event.event_time_ms, 7);
        assert!(matches!(event.campaign_id, Cow::Borrowed(_)));
    }

    #[test]
    fn nested_pointer_through_a_scalar_is_missing() {
        let decoder = with(|s| s.campaign_id = "/campaign/id".into());
        for campaign in [r#""c""#, "1", "null", "[]", r#"{"idx":"c"}"#] {
            let payload =
                format!(r#"{{"campaign":{campaign},"type":"install","creative_id":"x","ts":1}}"#);
            let result = decoder.decode(payload.as_bytes(), &KindSource::Field, None);
            assert_eq!(result, Err(Rejection::MissingCampaignId), "{payload}");
        }
    }

    #[test]
    fn pointer_escapes_name_keys_with_slash_and_tilde() {
        let decoder = with(|s| {
            s.campaign_id = "/a~1b".into();
            s.creative_id = "/c~0d/~01".into();
        });
        let payload = br#"{"a/b":"c","c~d":{"~1":"x","/":"no"},"type":"install","ts":1}"#;
        let event = decoder.decode(payload, &KindSource::Field, None).unwrap();
        assert_eq!((&*event.campaign_id, &*event.creative_id), ("c", "x"));
    }

    #[test]
    fn empty_key_tokens_are_matched() {
        let decoder = with(|s| s.campaign_id = "/".into());
        let payload = br#"{"":"c","type":"install","creative_id":"x","ts":1}"#;
        let event = decoder.decode(payload, &KindSource::Field, None).unwrap();
        assert_eq!(event.campaign_id, "c");
    }

    #[test]
    fn array_index_pointers_select_elements() {
        let decoder = with(|s| {
            s.campaign_id = "/items/0/id".into();
            s.creative_id = "/items/2/id".into();
            s.event_time = "/times/1".into();
        });
        let payload = br#"{"items":[{"id":"c"},{"id":"no"},{"id":"x"},{"id":"after"}],
            "times":[0,9,{"deep":[1]}],"type":"install"}"#;
        let event = decoder.decode(payload, &KindSource::Field, None).unwrap();
        assert_eq!((&*event.campaign_id, &*event.creative_id), ("c", "x"));
        assert_eq!(event.event_time_ms, 9);
    }

    #[test]
    fn array_index_pointer_past_the_end_is_missing() {
        let decoder = with(|s| s.creative_id = "/items/3".into());
        let payload = br#"{"items":["a","b"],"type":"install","campaign_id":"c","ts":1}"#;
        let result = decoder.decode(payload, &KindSource::Field, None);
        assert_eq!(result, Err(Rejection::MissingCreativeId));
    }

    #[test]
    fn numeric_tokens_also_match_object_keys() {
        let decoder = with(|s| s.creative_id = "/items/0".into());
        let payload = br#"{"items":{"0":"x"},"type":"install","campaign_id":"c","ts":1}"#;
        let event = decoder.decode(payload, &KindSource::Field, None).unwrap();
        assert_eq!(event.creative_id, "x");
    }

    #[test]
    fn non_canonical_indices_never_match_array_elements() {
        for pointer in ["/items/01", "/items/-", "/items/+1", "/items/ 1"] {
            let decoder = with(|s| s.creative_id = pointer.into());
            let payload = br#"{"items":["a","b"],"type":"install","campaign_id":"c","ts":1}"#;
            let result = decoder.decode(payload, &KindSource::Field, None);
            assert_eq!(result, Err(Rejection::MissingCreativeId), "{pointer}");
        }
    }

    #[test]
    fn identical_pointers_give_both_fields_the_same_value() {
        let decoder = with(|s| s.event_id = "/campaign_id".into());
        let payload = br#"{"type":"install","campaign_id":"c\"","creative_id":"x","ts":1}"#;
        let event = decoder.decode(payload, &KindSource::Field, None).unwrap();
        assert_eq!(event.event_id.as_deref(), Some("c\""));
        assert_eq!(event.campaign_id, "c\"");
    }

    #[test]
    fn duplicate_keys_last_value_wins() {
        let payload =
            br#"{"type":"install","campaign_id":"a","campaign_id":"b","creative_id":"x","ts":1}"#;
        assert_eq!(decode(payload).unwrap().campaign_id, "b");
    }

    #[test]
    fn fixed_kind_ignores_type_field() {
        for type_field in ["", r#""type":"click","#, r#""type":{"a":[1]},"#, r#""type":null,"#] {
            let payload = format!(r#"{{{type_field}"campaign_id":"c","creative_id":"x","ts":1}}"#);
            let kind = KindSource::Fixed(EventKind::Install);
            let event = decoder().decode(payload.as_bytes(), &kind, None).unwrap();
            assert_eq!(event.kind, EventKind::Install, "{payload}");
        }
    }

    #[test]
    fn type_is_matched_exactly_against_configured_lists() {
        let decoder = with(|s| {
            s.impression_types = vec!["impression".into(), "view".into()];
            s.install_types = vec!["install".into(), "af_install".into()];
        });
        let cases = [
            (r#""view""#, Ok(EventKind::Impression)),
            (r#""impression""#, Ok(EventKind::Impression)),
            (r#""af_install""#, Ok(EventKind::Install)),
            (r#""Install""#, Err(Rejection::UnknownType)),
            (r#""install ""#, Err(Rejection::UnknownType)),
            (r#""""#, Err(Rejection::UnknownType)),
            ("1", Err(Rejection::UnknownType)),
            ("true", Err(Rejection::UnknownType)),
            (r#"["install"]"#, Err(Rejection::UnknownType)),
            ("null", Err(Rejection::MissingType)),
        ];
        for (type_field, expected) in cases {
            let payload =
                format!(r#"{{"type":{type_field},"campaign_id":"c","creative_id":"x","ts":1}}"#);
            let result = decoder.decode(payload.as_bytes(), &KindSource::Field, None);
            assert_eq!(result.map(|e| e.kind), expected, "{payload}");
        }
    }

    #[test]
    fn invalid_utf8_is_not_utf8() {
        assert_eq!(decode(b"{\"campaign_id\":\"\xff\"}"), Err(Rejection::NotUtf8));
    }

    #[test]
    fn invalid_utf8_in_an_unread_field_is_still_not_utf8() {
        let valid = br#"{"type":"install","campaign_id":"c","creative_id":"x","ts":1,"note":"ok"}"#;
        assert!(decode(valid).is_ok());
        let payload = [&valid[..valid.len() - 4], b"\xc3\x28\"}"].concat();
        assert_eq!(decode(&payload), Err(Rejection::NotUtf8));
    }

    #[test]
    fn malformed_json_is_not_json() {
        for payload in [
            &b""[..],
            b"   ",
            b"{",
            b"{\"campaign_id\":",
            b"{\"campaign_id\":\"c}",
            b"{campaign_id:\"c\"}",
            b"{\"a\":1,}",
            b"{\"a\":\"\\x\"}",
            b"{\"a\":\"\x01\"}",
            b"\xef\xbb\xbf{}",
            b"NaN",
        ] {
            assert_eq!(decode(payload), Err(Rejection::NotJson), "{payload:?}");
        }
    }

    #[test]
    fn trailing_garbage_is_not_json() {
        let valid = br#"{"type":"install","campaign_id":"c","creative_id":"x","ts":1}"#;
        assert!(decode(valid).is_ok());
        for tail in [&b"x"[..], b"{}", b",", b"\n}"] {
            let payload = [&valid[..], tail].concat();
            assert_eq!(decode(&payload), Err(Rejection::NotJson), "{tail:?}");
        }
        let mut padded = valid.to_vec();
        padded.extend_from_slice(b" \n\t\r");
        assert!(decode(&padded).is_ok(), "trailing whitespace is valid JSON");
        assert_eq!(decode(b"[1] ]"), Err(Rejection::NotJson));
    }

    #[test]
    fn valid_json_that_is_not_an_object_is_not_object() {
        for payload in [&b"[1,{\"a\":2}]"[..], b"\"str\"", b"42", b"-1.5", b"null", b"true", b"[]"]
        {
            assert_eq!(decode(payload), Err(Rejection::NotObject), "{payload:?}");
        }
    }

    #[test]
    fn missing_or_unusable_campaign_id_is_missing_campaign_id() {
        for campaign in [
            "",
            r#""campaign_id":"","#,
            r#""campaign_id":null,"#,
            r#""campaign_id":true,"#,
            r#""campaign_id":{"id":"c"},"#,
            r#""campaign_id":1.5,"#,
        ] {
            let payload = format!(r#"{{{campaign}"type":"install","creative_id":"x","ts":1}}"#);
            assert_eq!(decode(payload.as_bytes()), Err(Rejection::MissingCampaignId), "{payload}");
        }
    }

    #[test]
    fn missing_creative_id_is_missing_creative_id() {
        let payload = br#"{"type":"install","campaign_id":"c","creative_id":"","ts":1}"#;
        assert_eq!(decode(payload), Err(Rejection::MissingCreativeId));
        let payload = br#"{"type":"install","campaign_id":"c","ts":1}"#;
        assert_eq!(decode(payload), Err(Rejection::MissingCreativeId));
    }

    #[test]
    fn missing_type_is_missing_type() {
        let payload = br#"{"campaign_id":"c","creative_id":"x","ts":1}"#;
        assert_eq!(decode(payload), Err(Rejection::MissingType));
    }

    #[test]
    fn unknown_type_is_unknown_type() {
        let payload = br#"{"type":"click","campaign_id":"c","creative_id":"x","ts":1}"#;
        assert_eq!(decode(payload), Err(Rejection::UnknownType));
    }

    #[test]
    fn bad_time_is_bad_time() {
        let payload = br#"{"type":"install","campaign_id":"c","creative_id":"x","ts":"soon"}"#;
        assert_eq!(decode(payload), Err(Rejection::BadTime));
    }

    #[test]
    fn first_failing_check_decides_the_rejection() {
        assert_eq!(decode(br#"{"ts":"soon"}"#), Err(Rejection::MissingCampaignId));
        assert_eq!(
            decode(br#"{"campaign_id":"c","ts":"soon"}"#),
            Err(Rejection::MissingCreativeId)
        );
        let payload = br#"{"campaign_id":"c","creative_id":"x","ts":"soon"}"#;
        assert_eq!(decode(payload), Err(Rejection::MissingType));
    }

    #[test]
    fn deep_nesting_in_skipped_values_is_accepted_without_recursion() {
        let deep = format!("{{\"a\":{}1{}}}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(decode(deep.as_bytes()), Err(Rejection::MissingCampaignId));
        let deep = format!("{}1{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(decode(deep.as_bytes()), Err(Rejection::NotObject));
    }

    #[test]
    fn nesting_along_a_pointer_beyond_the_parser_limit_is_not_json() {
        let decoder = with(|s| s.campaign_id = "/a".repeat(300));
        let deep = format!("{}\"c\"{}", "{\"a\":".repeat(300), "}".repeat(300));
        assert_eq!(
            decoder.decode(deep.as_bytes(), &KindSource::Field, None),
            Err(Rejection::NotJson)
        );
    }

    #[test]
    fn pointer_without_leading_slash_is_rejected_naming_it() {
        let err = pointer_error(|s| s.campaign_id = "campaign_id".into());
        assert!(matches!(err, PointerError::MissingLeadingSlash { field: Field::CampaignId, .. }));
        assert!(err.to_string().contains("\"campaign_id\""), "{err}");
    }

    #[test]
    fn bad_tilde_escapes_are_rejected_naming_the_pointer() {
        for pointer in ["/a~2", "/a~", "/~/b", "/~a"] {
            let err = pointer_error(|s| s.creative_id = pointer.into());
            assert!(matches!(err, PointerError::BadEscape { field: Field::CreativeId, .. }));
            assert!(err.to_string().contains(&format!("{pointer:?}")), "{err}");
        }
    }

    #[test]
    fn unread_pointers_are_still_syntax_checked() {
        let err = pointer_error(|s| {
            s.time_source = TimeSource::KafkaTimestamp;
            s.event_time = "ts".into();
        });
        assert!(matches!(err, PointerError::MissingLeadingSlash { field: Field::EventTime, .. }));
    }

    #[test]
    fn pointer_inside_another_pointer_value_is_rejected_naming_both() {
        let err = pointer_error(|s| {
            s.campaign_id = "/a".into();
            s.creative_id = "/a/b".into();
        });
        let message = err.to_string();
        assert!(message.contains("\"/a\"") && message.contains("\"/a/b\""), "{message}");
        let err = pointer_error(|s| {
            s.campaign_id = "/a/b/c".into();
            s.creative_id = "/a/b".into();
        });
        assert!(matches!(
            err,
            PointerError::Overlap { field: Field::CreativeId, other_field: Field::CampaignId, .. }
        ));
    }

    #[test]
    fn root_pointer_overlaps_every_other_pointer() {
        let err = pointer_error(|s| s.event_id = String::new());
        assert!(matches!(err, PointerError::Overlap { field: Field::Kind, .. }), "{err}");
    }

    #[test]
    fn unread_time_pointer_cannot_overlap() {
        let mut settings = DecodeSettings {
            time_source: TimeSource::KafkaTimestamp,
            event_time: "/campaign_id/ts".into(),
            ..DecodeSettings::default()
        };
        assert!(Decoder::new(&settings).is_ok());
        settings.time_source = TimeSource::Field;
        assert!(matches!(Decoder::new(&settings), Err(PointerError::Overlap { .. })));
    }

    #[test]
    fn siblings_sharing_a_prefix_are_allowed() {
        let decoder = with(|s| {
            s.campaign_id = "/ad/campaign".into();
            s.creative_id = "/ad/creative".into();
        });
        let payload = br#"{"ad":{"creative":"x","campaign":"c"},"type":"install","ts":1}"#;
        let event = decoder.decode(payload, &KindSource::Field, None).unwrap();
        assert_eq!((&*event.campaign_id, &*event.creative_id), ("c", "x"));
    }

    #[test]
    fn type_listed_as_both_kinds_is_rejected() {
        let err = pointer_error(|s| s.install_types.push("impression".into()));
        assert!(matches!(err, PointerError::AmbiguousType { .. }));
        assert!(err.to_string().contains("\"/type\""), "{err}");
    }

    #[test]
    fn rejection_codes_are_distinct_snake_case_and_cover_all_variants() {
        let codes: std::collections::HashSet<_> = Rejection::ALL.iter().map(|r| r.code()).collect();
        assert_eq!(codes.len(), Rejection::ALL.len());
        for rejection in Rejection::ALL {
            let code = rejection.code();
            assert!(
                code.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
                "{code}"
            );
            assert!(!rejection.to_string().is_empty());
        }
        assert_eq!(Rejection::MissingCampaignId.to_string(), "campaign id is missing or empty");
    }

    #[test]
    fn decoder_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Decoder>();
    }

    #[test]
    fn into_owned_keeps_the_values() {
        let payload =
            br#"{"event_id":"e","type":"install","campaign_id":"c","creative_id":"x","ts":1}"#;
        let event = decode(payload).unwrap();
        let owned: Event<'static> = event.clone().into_owned();
        assert_eq!(owned, event);
        assert!(matches!(owned.campaign_id, Cow::Owned(_)));
    }

    // ---- properties ----

    fn key() -> impl Strategy<Value = String> {
        prop_oneof![
            3 => prop::sample::select(vec![
                "event_id", "type", "campaign_id", "creative_id", "ts", "campaign", "id", "items",
                "meta", "0", "1", "a/b", "~",
            ])
            .prop_map(str::to_owned),
            1 => any::<String>(),
        ]
    }

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<u64>().prop_map(Value::from),
            any::<f64>()
                .prop_filter_map("finite", |f| serde_json::Number::from_f64(f).map(Value::Number)),
            any::<String>().prop_map(Value::String),
            prop::sample::select(vec![
                "",
                "impression",
                "install",
                "2026-12-03T10:00:00.250Z",
                "2026-12-03 10:00:00",
                "1796292000250",
                "c\"\\/~",
            ])
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(4, 48, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::vec((key(), inner), 0..6)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
            ]
        })
    }

    /// A value that is usually valid for the field it is put in, sometimes anything at all.
    fn mostly(
        good: impl Strategy<Value = Value> + 'static,
    ) -> impl Strategy<Value = Option<Value>> {
        proptest::option::weighted(0.9, prop_oneof![4 => good, 1 => json_value()])
    }

    /// Objects shaped like events in the flat default layout or the nested layout, so the
    /// lookup comparison below reaches every rejection and acceptance.
    fn event_like() -> impl Strategy<Value = Value> {
        let id = || {
            prop_oneof![
                "[a-z\"\\\\]{1,3}".prop_map(Value::from),
                any::<i64>().prop_map(Value::from)
            ]
        };
        let kind =
            prop::sample::select(vec!["install", "impression", "click"]).prop_map(Value::from);
        let ts = prop_oneof![
            any::<i64>().prop_map(Value::from),
            Just(Value::from("2026-12-03T10:00:00.250+01:00")),
            Just(Value::from("2026-12-03 10:00:00.250")),
        ];
        (
            (mostly(id()), mostly(id()), mostly(id()), mostly(kind), mostly(ts)),
            any::<bool>(),
            prop::collection::vec((key(), json_value()), 0..3),
        )
            .prop_map(|((event_id, campaign, creative, kind, ts), nested, extra)| {
                let mut object: serde_json::Map<String, Value> = extra.into_iter().collect();
                let put = |object: &mut serde_json::Map<_, _>, key: &str, value: Option<Value>| {
                    if let Some(value) = value {
                        object.insert(key.to_owned(), value);
                    }
                };
                if nested {
                    let mut campaign_object = serde_json::Map::new();
                    put(&mut campaign_object, "id", campaign);
                    let mut creative_object = serde_json::Map::new();
                    put(&mut creative_object, "id", creative);
                    let mut meta = serde_json::Map::new();
                    put(&mut meta, "type", kind);
                    put(&mut meta, "ts", ts);
                    let mut items = vec![Value::Object(creative_object)];
                    items.extend(event_id);
                    object.insert("campaign".into(), Value::Object(campaign_object));
                    object.insert("items".into(), Value::Array(items));
                    object.insert("meta".into(), Value::Object(meta));
                } else {
                    put(&mut object, "event_id", event_id);
                    put(&mut object, "campaign_id", campaign);
                    put(&mut object, "creative_id", creative);
                    put(&mut object, "type", kind);
                    put(&mut object, "ts", ts);
                }
                Value::Object(object)
            })
    }

    fn leaf_of(value: Option<&Value>) -> Leaf<'_> {
        match value {
            None => Leaf::Absent,
            Some(Value::Null) => Leaf::Null,
            Some(Value::String(s)) => Leaf::Str(Cow::Borrowed(s)),
            Some(Value::Number(n)) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
                (Some(i), _, _) => Leaf::I64(i),
                (_, Some(u), _) => Leaf::U64(u),
                (_, _, Some(f)) => Leaf::F64(f),
                _ => Leaf::Other,
            },
            Some(_) => Leaf::Other,
        }
    }

    /// Decodes through `serde_json::Value::pointer` as an independent walk of the document.
    fn oracle(
        decoder: &Decoder,
        settings: &DecodeSettings,
        value: &Value,
        kind: &KindSource,
    ) -> Result<Event<'static>, Rejection> {
        if !value.is_object() {
            return Err(Rejection::NotObject);
        }
        let at = |pointer: &str| leaf_of(value.pointer(pointer));
        let campaign_id = id_text(at(&settings.campaign_id)).ok_or(Rejection::MissingCampaignId)?;
        let creative_id = id_text(at(&settings.creative_id)).ok_or(Rejection::MissingCreativeId)?;
        let kind = match kind {
            KindSource::Fixed(kind) => *kind,
            KindSource::Field => decoder.kind_of(&at(&settings.kind))?,
        };
        let event_time_ms = time_ms(&at(&settings.event_time))?;
        let event = Event {
            event_id: id_text(at(&settings.event_id)),
            kind,
            campaign_id,
            creative_id,
            event_time_ms,
        };
        Ok(event.into_owned())
    }

    fn nested_settings() -> DecodeSettings {
        DecodeSettings {
            event_id: "/items/1".into(),
            kind: "/meta/type".into(),
            campaign_id: "/campaign/id".into(),
            creative_id: "/items/0/id".into(),
            event_time: "/meta/ts".into(),
            ..DecodeSettings::default()
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
            let decoder = decoder();
            let _ = decoder.decode(&bytes, &KindSource::Field, None);
            let _ = decoder.decode(&bytes, &KindSource::Fixed(EventKind::Impression), Some(0));
        }

        #[test]
        fn corrupted_valid_payloads_never_panic(
            at in any::<prop::sample::Index>(),
            byte in any::<u8>(),
            cut in any::<prop::sample::Index>(),
        ) {
            let valid = br#"{"event_id":"e\u00e9","type":"install","campaign_id":"c-1",
                "creative_id":[1],"ts":"2026-12-03 10:00:00.250"}"#;
            let mut bytes = valid.to_vec();
            bytes[at.index(valid.len())] = byte;
            bytes.truncate(cut.index(valid.len() + 1) + 1);
            let _ = decoder().decode(&bytes, &KindSource::Field, None);
        }

        #[test]
        fn arbitrary_json_values_decode_like_a_pointer_lookup(
            value in prop_oneof![
                1 => json_value(),
                1 => prop::collection::vec((key(), json_value()), 0..8)
                    .prop_map(|entries| Value::Object(entries.into_iter().collect())),
                4 => event_like(),
            ],
            fixed in any::<bool>(),
        ) {
            let bytes = serde_json::to_vec(&value).unwrap();
            let reparsed: Value = serde_json::from_slice(&bytes).unwrap();
            let kind =
                if fixed { KindSource::Fixed(EventKind::Install) } else { KindSource::Field };
            for settings in [DecodeSettings::default(), nested_settings()] {
                let decoder = Decoder::new(&settings).unwrap();
                let decoded = decoder.decode(&bytes, &kind, None).map(Event::into_owned);
                prop_assert_eq!(decoded, oracle(&decoder, &settings, &reparsed, &kind));
            }
        }

        #[test]
        fn generated_events_round_trip(
            campaign_id in prop_oneof![".+", "[\"\\\\/~é😀\u{0}-\u{1f}a-z]{1,12}"],
            creative_id in prop_oneof![".+", "[\"\\\\/~é😀\u{0}-\u{1f}a-z]{1,12}"],
            event_id in proptest::option::of("[\"\\\\/~é😀a-z0-9]{1,12}"),
            install in any::<bool>(),
            time_ms in 0..253_402_300_800_000_i64,
            time_format in 0..4_u8,
            extra in json_value(),
        ) {
            let time = chrono::DateTime::from_timestamp_millis(time_ms).unwrap();
            let ts = match time_format {
                0 => json!(time_ms),
                1 => json!(time_ms.to_string()),
                2 => json!(time.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()),
                _ => json!(time.format("%Y-%m-%d %H:%M:%S%.3f").to_string()),
            };
            let payload = json!({
                "extra": extra,
                "event_id": event_id,
                "type": if install { "install" } else { "impression" },
                "campaign_id": campaign_id,
                "creative_id": creative_id,
                "ts": ts,
            });
            let bytes = serde_json::to_vec(&payload).unwrap();
            let event = decoder().decode(&bytes, &KindSource::Field, None).unwrap();
            prop_assert_eq!(event.event_id.as_deref(), event_id.as_deref());
            let kind = if install { EventKind::Install } else { EventKind::Impression };
            prop_assert_eq!(event.kind, kind);
            prop_assert_eq!(&event.campaign_id, &campaign_id);
            prop_assert_eq!(&event.creative_id, &creative_id);
            prop_assert_eq!(event.event_time_ms, time_ms);
            let escaped = serde_json::to_string(&campaign_id).unwrap();
            let plain = escaped == format!("\"{campaign_id}\"");
            prop_assert_eq!(matches!(event.campaign_id, Cow::Borrowed(_)), plain);
        }
    }
}
