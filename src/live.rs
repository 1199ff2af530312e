//! The latest published value of every (campaign, creative, window), shared between the
//! pipeline that writes it and the HTTP pull API that reads it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dashmap::DashMap;

use crate::aggregate::CreativeKey;
use crate::output::IpmRecord;

/// Live values and readiness, shared by the pipeline and the HTTP server.
#[derive(Default)]
pub struct LiveState {
    values: DashMap<(CreativeKey, Arc<str>), IpmRecord>,
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
        self.values.insert((key, record.window.as_str().into()), record);
    }

    /// Forgets every window of `key`.
    pub fn remove(&self, key: &CreativeKey) {
        self.values.retain(|(held, _), _| held != key);
    }

    /// Values matching `query`, sorted by campaign, creative and window.
    pub fn query(&self, query: &Query) -> Vec<IpmRecord> {
        let matches =
            |wanted: &Option<String>, value: &str| wanted.as_deref().is_none_or(|w| w == value);
        let mut found: Vec<IpmRecord> = self
            .values
            .iter()
            .filter(|entry| {
                let record = entry.value();
                matches(&query.campaign_id, &record.campaign_id)
                    && matches(&query.creative_id, &record.creative_id)
                    && matches(&query.window, &record.window)
            })
            .map(|entry| entry.value().clone())
            .collect();
        found.sort_by(|a, b| {
            (&a.campaign_id, &a.creative_id, &a.window).cmp(&(
                &b.campaign_id,
                &b.creative_id,
                &b.window,
            ))
        });
        found
    }

    /// Number of values held.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True when no value is held.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
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
