//! A naive reference for window output: counts every event of a key whose time falls in the
//! window, at every slide boundary, and lists the values that change. Deliberately written
//! without any of the service's data structures.

use std::collections::BTreeMap;

/// One input event as the reference sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefEvent {
    pub campaign_id: String,
    pub creative_id: String,
    pub install: bool,
    pub time_ms: i64,
}

/// A sliding window: size and slide in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct RefWindow {
    pub name: &'static str,
    pub size_ms: i64,
    pub slide_ms: i64,
}

/// (campaign, creative, window name, window end) → (impressions, installs).
pub type Values = BTreeMap<(String, String, String, i64), (u64, u64)>;

/// The counts of `key` in the window ending at `end_ms`.
pub fn value_at(
    events: &[RefEvent],
    window: &RefWindow,
    key: (&str, &str),
    end_ms: i64,
) -> (u64, u64) {
    let mut impressions = 0;
    let mut installs = 0;
    for event in events {
        let in_window = event.time_ms >= end_ms - window.size_ms && event.time_ms < end_ms;
        if in_window && event.campaign_id == key.0 && event.creative_id == key.1 {
            if event.install {
                installs += 1;
            } else {
                impressions += 1;
            }
        }
    }
    (impressions, installs)
}

/// Every boundary up to `watermark_ms` at which a key's window value differs from its previous
/// boundary (starting from zero): exactly the records a change-only publisher emits.
pub fn changes(events: &[RefEvent], windows: &[RefWindow], watermark_ms: i64) -> Values {
    let mut keys: Vec<(String, String)> =
        events.iter().map(|e| (e.campaign_id.clone(), e.creative_id.clone())).collect();
    keys.sort();
    keys.dedup();
    let first = events.iter().map(|e| e.time_ms).min().expect("events");
    let mut out = Values::new();
    for window in windows {
        for (campaign, creative) in &keys {
            let mut previous = (0, 0);
            let mut end = first.div_euclid(window.slide_ms) * window.slide_ms;
            while end <= watermark_ms {
                let value = value_at(events, window, (campaign, creative), end);
                if value != previous {
                    out.insert(
                        (campaign.clone(), creative.clone(), window.name.into(), end),
                        value,
                    );
                    previous = value;
                }
                end += window.slide_ms;
            }
        }
    }
    out
}
