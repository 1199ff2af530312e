//! Exact deduplication by event id within a time horizon. Ids are remembered as 64-bit hashes,
//! grouped by the input partition and time bucket of the copy that was counted, so that a
//! revoked partition's ids leave with it and expired ones are dropped a bucket at a time.
//! Rebuilding after a restart is the aggregator's replay: replayed events pass through here.

use std::collections::{BTreeMap, VecDeque};
use std::hash::BuildHasher;

use hashbrown::HashMap;

use crate::aggregate::InputPartition;

/// Remembered ids of counted events.
pub struct Deduper {
    /// How long an id is remembered, by event time behind the watermark.
    horizon_ms: i64,
    /// Width of the expiry buckets.
    bucket_ms: i64,
    hasher: hashbrown::DefaultHashBuilder,
    /// Id hash → event time of the counted copy.
    seen: HashMap<u64, i64>,
    /// Per partition, the ids it counted, by time bucket (oldest first).
    by_partition: BTreeMap<InputPartition, VecDeque<(i64, Vec<u64>)>>,
}

/// What the deduper made of an event id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Not seen within the horizon: count the event, then [`Deduper::remember`] it.
    First(u64),
    /// A copy was already counted.
    Duplicate,
}

impl Deduper {
    /// A deduper remembering ids for `horizon_ms` of event time, expiring them in buckets of
    /// `bucket_ms`.
    pub fn new(horizon_ms: i64, bucket_ms: i64) -> Deduper {
        Deduper {
            horizon_ms,
            bucket_ms: bucket_ms.max(1),
            hasher: hashbrown::DefaultHashBuilder::default(),
            seen: HashMap::new(),
            by_partition: BTreeMap::new(),
        }
    }

    /// How long ids are remembered.
    pub fn horizon_ms(&self) -> i64 {
        self.horizon_ms
    }

    /// Looks `event_id` up.
    pub fn check(&self, event_id: &str) -> Seen {
        let hash = self.hasher.hash_one(event_id);
        if self.seen.contains_key(&hash) {
            Seen::Duplicate
        } else {
            Seen::First(hash)
        }
    }

    /// Remembers the id (from [`Seen::First`]) of an event counted from `partition`.
    pub fn remember(&mut self, partition: InputPartition, hash: u64, event_time_ms: i64) {
        self.seen.insert(hash, event_time_ms);
        let bucket = event_time_ms.div_euclid(self.bucket_ms);
        let buckets = self.by_partition.entry(partition).or_default();
        // Events arrive nearly in time order, so the right bucket is almost always the last.
        let at = buckets.iter().rposition(|(b, _)| *b <= bucket);
        match at {
            Some(i) if buckets[i].0 == bucket => buckets[i].1.push(hash),
            Some(i) => buckets.insert(i + 1, (bucket, vec![hash])),
            None => buckets.push_front((bucket, vec![hash])),
        }
    }

    /// Forgets ids of events older than `watermark_ms` minus the horizon.
    pub fn expire(&mut self, watermark_ms: i64) {
        let oldest_kept = (watermark_ms - self.horizon_ms).div_euclid(self.bucket_ms);
        for buckets in self.by_partition.values_mut() {
            while buckets.front().is_some_and(|(bucket, _)| *bucket < oldest_kept) {
                let (_, hashes) = buckets.pop_front().expect("checked non-empty");
                for hash in hashes {
                    self.seen.remove(&hash);
                }
            }
        }
    }

    /// Forgets the ids counted from `partition`: its next owner rebuilds them.
    pub fn revoke(&mut self, partition: InputPartition) {
        for (_, hashes) in self.by_partition.remove(&partition).unwrap_or_default() {
            for hash in hashes {
                self.seen.remove(&hash);
            }
        }
    }

    /// Number of ids remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// True when no id is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P0: InputPartition = InputPartition { topic: 0, partition: 0 };
    const P1: InputPartition = InputPartition { topic: 1, partition: 0 };

    fn count(deduper: &mut Deduper, partition: InputPartition, id: &str, time_ms: i64) -> bool {
        match deduper.check(id) {
            Seen::First(hash) => {
                deduper.remember(partition, hash, time_ms);
                true
            }
            Seen::Duplicate => false,
        }
    }

    #[test]
    fn second_copy_within_the_horizon_is_a_duplicate_on_any_partition() {
        let mut deduper = Deduper::new(60_000, 10_000);
        assert!(count(&mut deduper, P0, "e-1", 5_000));
        assert!(!count(&mut deduper, P0, "e-1", 5_000));
        assert!(!count(&mut deduper, P1, "e-1", 5_000));
        assert!(count(&mut deduper, P1, "e-2", 5_000));
        assert_eq!(deduper.len(), 2);
    }

    #[test]
    fn ids_older_than_the_horizon_are_forgotten_by_bucket() {
        let mut deduper = Deduper::new(60_000, 10_000);
        count(&mut deduper, P0, "old", 5_000);
        count(&mut deduper, P0, "newer", 25_000);
        count(&mut deduper, P0, "out-of-order", 1_000);
        deduper.expire(75_000);
        assert_eq!(deduper.check("old"), deduper.check("old"));
        assert!(matches!(deduper.check("old"), Seen::First(_)));
        assert!(matches!(deduper.check("out-of-order"), Seen::First(_)));
        assert_eq!(deduper.check("newer"), Seen::Duplicate);
    }

    #[test]
    fn revoking_a_partition_forgets_only_its_ids() {
        let mut deduper = Deduper::new(60_000, 10_000);
        count(&mut deduper, P0, "a", 1_000);
        count(&mut deduper, P1, "b", 1_000);
        deduper.revoke(P0);
        assert!(matches!(deduper.check("a"), Seen::First(_)));
        assert_eq!(deduper.check("b"), Seen::Duplicate);
    }
}
