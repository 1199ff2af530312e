//! The latest published value of every (campaign, creative, window), shared between the
//! pipeline that writes it and the HTTP pull API that reads it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use dashmap::DashMap;

use crate::aggregate::CreativeKey;
use crate::output::IpmRecord;

/// Live values and readiness, shared by the pipeline and the HTTP server.
#[derive(Default)]
pub struct LiveState {
    /// Per key, the latest record of each window, by window name.
    values: DashMap<CreativeKey, BTreeMap<String, IpmRecord>>,
    ready: AtomicBool,
}

/// Filters of a pull-API query; `None` matches anything.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct Query {
    pub campaign_id: Option<String>,
    pub creative_id: Option<String>,
    pub window: Option<String>,
}

impl LiveState {
    /// Stores `record` as the latest value of its key and window.
    pub fn set(&self, key: CreativeKey, record: IpmRecord) {
        self.values.entry(key).or_default().insert(record.window.clone(), record);
    }

    /// Forgets every window of `key`.
    pub fn remove(&self, key: &CreativeKey) {
        self.values.remove(key);
    }

    /// Values matching `query`, sorted by campaign, creative and window.
    pub fn query(&self, query: &Query) -> Vec<IpmRecord> {
        let matches =
            |wanted: &Option<String>, value: &str| wanted.as_deref().is_none_or(|w| w == value);
        let mut found: Vec<IpmRecord> = self
            .values
            .iter()
            .filter(|entry| {
                matches(&query.campaign_id, &entry.key().campaign_id)
                    && matches(&query.creative_id, &entry.key().creative_id)
            })
            .flat_map(|entry| {
                let windows = entry.value().values();
                windows.filter(|r| matches(&query.window, &r.window)).cloned().collect::<Vec<_>>()
            })
            .collect();
        found.sort_by(|a, b| {
            let key =
                |r: &IpmRecord| (r.campaign_id.clone(), r.creative_id.clone(), r.window.clone());
            key(a).cmp(&key(b))
        });
        found
    }

    /// Sets readiness: partitions assigned, state restored, output reachable.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Current readiness.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(campaign: &str, creative: &str, window: &str, impressions: u64) -> IpmRecord {
        IpmRecord {
            schema_version: 1,
            campaign_id: campaign.into(),
            creative_id: creative.into(),
            window: window.into(),
            window_start: String::new(),
            window_end: String::new(),
            impressions,
            installs: 0,
            ipm: Some(0.0),
            ipm_low: Some(0.0),
            ipm_high: Some(0.0),
            watermark: String::new(),
            emitted_at: String::new(),
        }
    }

    fn key(campaign: &str, creative: &str) -> CreativeKey {
        CreativeKey { campaign_id: campaign.into(), creative_id: creative.into() }
    }

    #[test]
    fn query_filters_sorts_and_keeps_the_latest_value_per_window() {
        let live = LiveState::default();
        live.set(key("c-2", "x"), record("c-2", "x", "5m", 1));
        live.set(key("c-1", "y"), record("c-1", "y", "1h", 2));
        live.set(key("c-1", "y"), record("c-1", "y", "5m", 3));
        live.set(key("c-1", "y"), record("c-1", "y", "5m", 4));
        let all = live.query(&Query::default());
        let seen: Vec<(&str, &str, u64)> = all
            .iter()
            .map(|r| (r.campaign_id.as_str(), r.window.as_str(), r.impressions))
            .collect();
        assert_eq!(seen, [("c-1", "1h", 2), ("c-1", "5m", 4), ("c-2", "5m", 1)]);
        let query = Query {
            campaign_id: Some("c-1".into()),
            window: Some("5m".into()),
            ..Query::default()
        };
        assert_eq!(live.query(&query).len(), 1);
        live.remove(&key("c-1", "y"));
        assert_eq!(live.query(&Query::default()).len(), 1);
    }
}
