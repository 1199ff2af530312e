//! Event-time aggregation: per-partition window state, watermarks and emission rounds.
//!
//! State is owned per input partition, so that a partition can be dropped on revocation and
//! rebuilt by its next owner. Emission sums a key over every partition held here. This module
//! never touches Kafka: time and offsets come in as arguments, records go out as [`Round`]s.

use std::collections::BTreeMap;
use std::sync::Arc;

use hashbrown::{Equivalent, HashMap};

use crate::decode::EventKind;
use crate::window::{Counts, PaneRing, Tally, WindowSpec};

/// An input partition: the index of its topic in the configured input list, and its number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InputPartition {
    pub topic: usize,
    pub partition: i32,
}

/// The (campaign, creative) pair that IPM is reported for.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CreativeKey {
    pub campaign_id: Arc<str>,
    pub creative_id: Arc<str>,
}

/// A borrowed view of a [`CreativeKey`], hashing identically, for lookups without allocation.
#[derive(Hash)]
struct KeyRef<'a> {
    campaign_id: &'a str,
    creative_id: &'a str,
}

impl Equivalent<CreativeKey> for KeyRef<'_> {
    fn equivalent(&self, key: &CreativeKey) -> bool {
        *self.campaign_id == *key.campaign_id && *self.creative_id == *key.creative_id
    }
}

type KeyId = u32;

/// One event as the aggregator needs it.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub campaign_id: &'a str,
    pub creative_id: &'a str,
    pub kind: EventKind,
    pub event_time_ms: i64,
}

/// What became of one observed event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Admission {
    /// Bit `i` set: too late for window `i` (its next emission no longer covers the event).
    pub late_windows: u32,
    /// Counted in at least one window.
    pub counted: bool,
    /// Read again to rebuild state after a restart or a reassignment.
    pub replayed: bool,
}

impl Admission {
    const UNASSIGNED: Admission = Admission { late_windows: 0, counted: false, replayed: false };
}

/// Where a partition starts when it is assigned here, as recovered from its last commit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PartitionStart {
    /// The committed offset: the first message not yet reflected in published output.
    pub committed_offset: Option<i64>,
    /// Progress stored with that commit.
    pub checkpoint: Option<Checkpoint>,
}

/// Progress stored with each offset commit, enough to rebuild the partition's window state by
/// reading `replay_from..committed_offset` again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Checkpoint {
    /// First offset whose event may still be in a published or future window.
    pub replay_from: i64,
    /// Processor watermark at the commit: windows ending at or before it were published.
    pub watermark_ms: i64,
}

/// What to commit for one partition after a round's records are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CommitPoint {
    pub partition: InputPartition,
    pub next_offset: i64,
    pub checkpoint: Checkpoint,
}

/// One window value to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowUpdate {
    pub key: CreativeKey,
    /// Index into the configured windows.
    pub window: usize,
    pub window_end_ms: i64,
    pub counts: Counts,
}

/// The output of one emission round: everything that changed when the watermark moved.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    pub watermark_ms: i64,
    pub updates: Vec<WindowUpdate>,
    /// Keys with nothing in any window: their records are deleted downstream.
    pub evicted: Vec<CreativeKey>,
}

/// The panes of one key in one partition, one ring per window.
#[derive(Debug)]
struct KeyPanes {
    rings: Box<[PaneRing]>,
    max_event_ms: i64,
}

/// A key known to this processor.
#[derive(Debug)]
struct KeyEntry {
    key: CreativeKey,
    /// Last published counts per window; `None` when unknown (rebuilt after a restart), which
    /// makes the next emission publish unconditionally.
    published: Box<[Option<Counts>]>,
    /// Partitions holding panes for this key.
    holders: u32,
}

/// Window state and progress of one input partition.
#[derive(Debug)]
struct PartitionState {
    keys: HashMap<KeyId, KeyPanes>,
    /// Newest event time seen; the partition's watermark trails it by the out-of-orderness.
    max_event_ms: Option<i64>,
    /// Wall-clock time of the last message, or of the assignment.
    last_message_at_ms: i64,
    /// Next offset to read; committed after a round.
    next_offset: Option<i64>,
    /// While set, messages before this offset are being read again to rebuild state.
    replay_until: Option<i64>,
    /// Whether the client has fetched everything the partition holds (from client statistics).
    caught_up: bool,
    /// First offset of a counted event, per time bucket: where a replay must start.
    first_offsets: BTreeMap<i64, i64>,
    last_bucket: Option<i64>,
}

impl PartitionState {
    fn replaying(&self) -> bool {
        self.replay_until.is_some()
    }

    fn idle(&self, now_ms: i64, idle_timeout_ms: i64) -> bool {
        self.caught_up && now_ms - self.last_message_at_ms >= idle_timeout_ms
    }
}

/// Tunables of the aggregator.
#[derive(Debug, Clone)]
pub struct AggregatorSettings {
    pub windows: Vec<WindowSpec>,
    pub out_of_orderness_ms: i64,
    pub idle_timeout_ms: i64,
    /// Events this far behind the watermark stay replayable even when no window needs them,
    /// so that state kept elsewhere (remembered event ids) is rebuilt too. Zero for none.
    pub replay_horizon_ms: i64,
}

/// Event-time window state for every partition assigned to this processor.
#[derive(Debug)]
pub struct Aggregator {
    settings: AggregatorSettings,
    /// Width of the replay bookkeeping buckets: the shortest slide.
    bucket_ms: i64,
    index: HashMap<CreativeKey, KeyId>,
    entries: Vec<Option<KeyEntry>>,
    free_ids: Vec<KeyId>,
    partitions: BTreeMap<InputPartition, PartitionState>,
    /// Last published window end per window; `None` until the first round.
    cursors: Vec<Option<i64>>,
    /// Processor watermark: never moves back.
    watermark_ms: Option<i64>,
    /// Earliest event seen before the first round: the first windows end just after it.
    earliest_event_ms: Option<i64>,
    /// Scratch sums per key id, reused across rounds.
    scratch: Vec<Counts>,
}

impl Aggregator {
    /// An aggregator with no partitions.
    pub fn new(settings: AggregatorSettings) -> Aggregator {
        assert!(!settings.windows.is_empty(), "config validation requires a window");
        let bucket_ms = settings.windows.iter().map(|w| w.slide_ms).min().unwrap_or(1000);
        let windows = settings.windows.len();
        Aggregator {
            settings,
            bucket_ms,
            index: HashMap::new(),
            entries: Vec::new(),
            free_ids: Vec::new(),
            partitions: BTreeMap::new(),
            cursors: vec![None; windows],
            watermark_ms: None,
            earliest_event_ms: None,
            scratch: Vec::new(),
        }
    }

    /// The configured windows.
    pub fn windows(&self) -> &[WindowSpec] {
        &self.settings.windows
    }

    /// Starts holding `partition`. With a checkpoint, messages from its `replay_from` up to the
    /// committed offset are expected again and rebuild state without being counted as new.
    pub fn assign(&mut self, partition: InputPartition, start: PartitionStart, now_ms: i64) {
        let mut state = PartitionState {
            keys: HashMap::new(),
            max_event_ms: None,
            last_message_at_ms: now_ms,
            next_offset: start.committed_offset,
            replay_until: None,
            caught_up: false,
            first_offsets: BTreeMap::new(),
            last_bucket: None,
        };
        if let (Some(committed), Some(checkpoint)) = (start.committed_offset, start.checkpoint) {
            if checkpoint.replay_from < committed {
                state.replay_until = Some(committed);
            }
            self.restore_watermark(checkpoint.watermark_ms);
        }
        if let Some(old) = self.partitions.insert(partition, state) {
            self.release_keys(old);
        }
    }

    /// Windows ending at or before `watermark_ms` were published by an earlier owner.
    fn restore_watermark(&mut self, watermark_ms: i64) {
        self.watermark_ms = Some(self.watermark_ms.map_or(watermark_ms, |w| w.max(watermark_ms)));
        for (cursor, spec) in self.cursors.iter_mut().zip(&self.settings.windows) {
            let restored = spec.boundary_at_or_before(watermark_ms);
            *cursor = Some(cursor.map_or(restored, |c| c.max(restored)));
        }
    }

    /// Stops holding `partition`, returning the keys that no partition here holds any more.
    /// They are not evicted downstream: the partition's next owner publishes them.
    pub fn revoke(&mut self, partition: InputPartition) -> Vec<CreativeKey> {
        match self.partitions.remove(&partition) {
            Some(state) => self.release_keys(state),
            None => Vec::new(),
        }
    }

    fn release_keys(&mut self, state: PartitionState) -> Vec<CreativeKey> {
        let mut released = Vec::new();
        for id in state.keys.into_keys() {
            let entry = self.entries[id as usize].as_mut().expect("held keys have entries");
            entry.holders -= 1;
            if entry.holders == 0 {
                released.push(self.remove_key(id));
            }
        }
        released
    }

    fn remove_key(&mut self, id: KeyId) -> CreativeKey {
        let entry = self.entries[id as usize].take().expect("removed keys have entries");
        self.index.remove(&entry.key);
        self.free_ids.push(id);
        entry.key
    }

    /// Partitions currently held.
    pub fn partitions(&self) -> impl Iterator<Item = InputPartition> + '_ {
        self.partitions.keys().copied()
    }

    /// Next offset to read for `partition`, if known.
    pub fn next_offset(&self, partition: InputPartition) -> Option<i64> {
        self.partitions.get(&partition).and_then(|p| p.next_offset)
    }

    /// Records whether the client has fetched everything `partition` holds.
    pub fn set_caught_up(&mut self, partition: InputPartition, caught_up: bool) {
        if let Some(state) = self.partitions.get_mut(&partition) {
            state.caught_up = caught_up;
        }
    }

    /// Ends the replay of `partition` once the client's position has passed its end, even if
    /// the last replayed offsets held no message (transaction markers, compaction).
    pub fn note_position(&mut self, partition: InputPartition, position: i64) {
        if let Some(state) = self.partitions.get_mut(&partition) {
            if state.replay_until.is_some_and(|until| position >= until) {
                state.replay_until = None;
                state.next_offset = Some(state.next_offset.map_or(position, |n| n.max(position)));
            }
        }
    }

    /// True while any held partition is still being read again to rebuild state.
    pub fn restoring(&self) -> bool {
        self.partitions.values().any(PartitionState::replaying)
    }

    /// True when the message at `offset` of `partition` is being read again to rebuild state.
    pub fn is_replay(&self, partition: InputPartition, offset: i64) -> bool {
        let state = self.partitions.get(&partition);
        state.and_then(|s| s.replay_until).is_some_and(|until| offset < until)
    }

    /// Records that the message at `offset` of `partition` was read, whatever it held.
    /// Returns whether it was read again to rebuild state, or `None` if the partition is not
    /// held here.
    pub fn note_read(
        &mut self,
        partition: InputPartition,
        offset: i64,
        now_ms: i64,
    ) -> Option<bool> {
        let state = self.partitions.get_mut(&partition)?;
        let replayed = state.replay_until.is_some_and(|until| offset < until);
        if state.replay_until.is_some_and(|until| offset + 1 >= until) {
            state.replay_until = None;
        }
        state.next_offset = Some(offset + 1);
        state.last_message_at_ms = now_ms;
        Some(replayed)
    }

    /// Counts the event at `offset` of `partition` into every window whose next emission still
    /// covers its time.
    pub fn observe(
        &mut self,
        partition: InputPartition,
        offset: i64,
        event: &Observation<'_>,
        now_ms: i64,
    ) -> Admission {
        let restoring_before = self.restoring();
        let Some(replayed) = self.note_read(partition, offset, now_ms) else {
            return Admission::UNASSIGNED;
        };
        let state = self.partitions.get_mut(&partition).expect("held: note_read found it");
        let time_ms = event.event_time_ms;
        state.max_event_ms = Some(state.max_event_ms.map_or(time_ms, |m| m.max(time_ms)));
        if self.cursors[0].is_none() {
            self.earliest_event_ms =
                Some(self.earliest_event_ms.map_or(time_ms, |e| e.min(time_ms)));
        }

        let mut late_windows = 0u32;
        for (i, (spec, cursor)) in self.settings.windows.iter().zip(&self.cursors).enumerate() {
            // A replayed event was read before the round at `cursor`, so it belongs in the window
            // published there; a new one only in windows still to come.
            let oldest_open_end = match cursor {
                Some(end) if replayed => *end,
                Some(end) => end + spec.slide_ms,
                None => continue,
            };
            if time_ms < oldest_open_end - spec.size_ms {
                late_windows |= 1 << i;
            }
        }
        let all_late = (1u32 << self.settings.windows.len()) - 1;
        if late_windows == all_late {
            return Admission { late_windows, counted: false, replayed };
        }

        let id = self.key_id(event.campaign_id, event.creative_id, restoring_before || replayed);
        let state = self.partitions.get_mut(&partition).expect("looked up above");
        let panes = match state.keys.entry(id) {
            hashbrown::hash_map::Entry::Occupied(slot) => slot.into_mut(),
            hashbrown::hash_map::Entry::Vacant(slot) => {
                let entry = self.entries[id as usize].as_mut().expect("interned keys have entries");
                entry.holders += 1;
                slot.insert(KeyPanes {
                    rings: vec![PaneRing::default(); self.settings.windows.len()].into(),
                    max_event_ms: time_ms,
                })
            }
        };
        panes.max_event_ms = panes.max_event_ms.max(time_ms);
        let tally = match event.kind {
            EventKind::Impression => Tally::Impression,
            EventKind::Install => Tally::Install,
        };
        for (i, spec) in self.settings.windows.iter().enumerate() {
            if late_windows & (1 << i) == 0 {
                panes.rings[i].add(spec.pane_of(time_ms), tally);
            }
        }

        let bucket = time_ms.div_euclid(self.bucket_ms);
        if state.last_bucket != Some(bucket) {
            state.first_offsets.entry(bucket).or_insert(offset);
            state.last_bucket = Some(bucket);
        }
        Admission { late_windows, counted: true, replayed }
    }

    fn key_id(&mut self, campaign_id: &str, creative_id: &str, restoring: bool) -> KeyId {
        if let Some(id) = self.index.get(&KeyRef { campaign_id, creative_id }) {
            return *id;
        }
        let key = CreativeKey { campaign_id: campaign_id.into(), creative_id: creative_id.into() };
        // A key first seen while state is being rebuilt may have been published before.
        let published = if restoring { None } else { Some(Counts::ZERO) };
        let entry = KeyEntry {
            key: key.clone(),
            published: vec![published; self.settings.windows.len()].into(),
            holders: 0,
        };
        let id = match self.free_ids.pop() {
            Some(id) => {
                self.entries[id as usize] = Some(entry);
                id
            }
            None => {
                self.entries.push(Some(entry));
                KeyId::try_from(self.entries.len() - 1).expect("fewer than 2^32 live keys")
            }
        };
        self.index.insert(key, id);
        id
    }

    /// Number of keys held.
    pub fn active_keys(&self) -> usize {
        self.index.len()
    }

    /// The processor watermark that the partitions allow now, before monotonicity: the
    /// minimum over partitions that are not idle, or wall-clock time once all are idle.
    pub fn allowed_watermark(&self, now_ms: i64) -> Option<i64> {
        if self.partitions.is_empty() || self.restoring() {
            return None;
        }
        let ooo = self.settings.out_of_orderness_ms;
        let mut lowest: Option<i64> = None;
        for state in self.partitions.values() {
            if state.idle(now_ms, self.settings.idle_timeout_ms) {
                continue;
            }
            let partition_watermark = state.max_event_ms? - ooo;
            lowest = Some(lowest.map_or(partition_watermark, |l| l.min(partition_watermark)));
        }
        Some(lowest.unwrap_or(now_ms - ooo))
    }

    /// The processor watermark as of the last round.
    pub fn watermark_ms(&self) -> Option<i64> {
        self.watermark_ms
    }

    /// Moves the watermark to what the partitions allow at `now_ms` and emits every window
    /// boundary it passes, oldest first. `None` when no boundary was passed.
    pub fn advance(&mut self, now_ms: i64) -> Option<Round> {
        let allowed = self.allowed_watermark(now_ms)?;
        let watermark = self.watermark_ms.map_or(allowed, |w| w.max(allowed));
        self.watermark_ms = Some(watermark);
        if self.cursors[0].is_none() {
            let start = self.earliest_event_ms.unwrap_or(watermark).min(watermark);
            for (cursor, spec) in self.cursors.iter_mut().zip(&self.settings.windows) {
                *cursor = Some(spec.boundary_at_or_before(start));
            }
        }

        let mut round = Round { watermark_ms: watermark, ..Round::default() };
        let mut passed_any = false;
        while let Some(end) = self.next_boundary(watermark) {
            passed_any = true;
            for i in 0..self.settings.windows.len() {
                if self.cursor(i) + self.settings.windows[i].slide_ms == end {
                    self.emit(i, end, &mut round);
                    self.skip_empty_boundaries(i, watermark);
                }
            }
        }
        if !passed_any {
            return None;
        }
        self.evict(&mut round);
        Some(round)
    }

    fn cursor(&self, window: usize) -> i64 {
        self.cursors[window].expect("cursors are set before the first boundary")
    }

    fn next_boundary(&self, watermark: i64) -> Option<i64> {
        (0..self.settings.windows.len())
            .map(|i| self.cursor(i) + self.settings.windows[i].slide_ms)
            .filter(|end| *end <= watermark)
            .min()
    }

    /// Publishes window `window` ending at `end` for every key whose value changed.
    fn emit(&mut self, window: usize, end: i64, round: &mut Round) {
        let spec = &self.settings.windows[window];
        let first = spec.first_pane_of_window(end);
        let past_last = spec.pane_of(end);
        self.scratch.clear();
        self.scratch.resize(self.entries.len(), Counts::ZERO);
        for state in self.partitions.values_mut() {
            for (id, panes) in state.keys.iter_mut() {
                let ring = &mut panes.rings[window];
                self.scratch[*id as usize] += ring.sum(first, past_last);
                // The next emission of this window starts one pane later.
                ring.drop_before(first + 1);
            }
        }
        for (id, slot) in self.entries.iter_mut().enumerate() {
            let Some(entry) = slot else { continue };
            let counts = self.scratch[id];
            if entry.published[window] != Some(counts) {
                entry.published[window] = Some(counts);
                round.updates.push(WindowUpdate {
                    key: entry.key.clone(),
                    window,
                    window_end_ms: end,
                    counts,
                });
            }
        }
        self.cursors[window] = Some(end);
    }

    /// After traffic stops, jumps window `window` straight to the watermark once every key
    /// has published zero and no held event can enter a later window.
    fn skip_empty_boundaries(&mut self, window: usize, watermark: i64) {
        let spec = &self.settings.windows[window];
        let next_window_start = self.cursor(window) + spec.slide_ms - spec.size_ms;
        let newest_event = self.partitions.values().filter_map(|p| p.max_event_ms).max();
        if newest_event.is_some_and(|t| t >= next_window_start) {
            return;
        }
        let all_zero = self
            .entries
            .iter()
            .flatten()
            .all(|entry| entry.published[window] == Some(Counts::ZERO));
        if all_zero {
            let last = spec.boundary_at_or_before(watermark);
            self.cursors[window] = Some(self.cursor(window).max(last));
        }
    }

    /// Oldest event time any published or future window still covers.
    fn horizon_ms(&self) -> i64 {
        (0..self.settings.windows.len())
            .map(|i| self.cursor(i) - self.settings.windows[i].size_ms)
            .min()
            .expect("at least one window")
    }

    /// Oldest event time a rebuild must read again: the window horizon, or further back for
    /// state kept outside the aggregator.
    fn replay_horizon_ms(&self) -> i64 {
        let watermark = self.watermark_ms.unwrap_or(i64::MIN);
        self.horizon_ms().min(watermark.saturating_sub(self.settings.replay_horizon_ms))
    }

    /// Drops keys with nothing in any window and replay bookkeeping older than the horizon.
    fn evict(&mut self, round: &mut Round) {
        let horizon = self.horizon_ms();
        let mut newest = vec![i64::MIN; self.entries.len()];
        for state in self.partitions.values() {
            for (id, panes) in &state.keys {
                newest[*id as usize] = newest[*id as usize].max(panes.max_event_ms);
            }
        }
        let expired: Vec<KeyId> = (0..self.entries.len())
            .filter(|id| self.entries[*id].is_some() && newest[*id] < horizon)
            .map(|id| id as KeyId)
            .collect();
        let first_live_bucket = self.replay_horizon_ms().div_euclid(self.bucket_ms);
        for state in self.partitions.values_mut() {
            for id in &expired {
                state.keys.remove(id);
            }
            state.first_offsets = state.first_offsets.split_off(&first_live_bucket);
        }
        for id in expired {
            round.evicted.push(self.remove_key(id));
        }
    }

    /// What to commit for each partition once the records of the last round are acknowledged.
    pub fn commit_points(&self) -> Vec<CommitPoint> {
        let Some(watermark_ms) = self.watermark_ms else { return Vec::new() };
        self.partitions
            .iter()
            .filter(|(_, state)| !state.replaying())
            .filter_map(|(partition, state)| {
                let next_offset = state.next_offset?;
                let replay_from =
                    state.first_offsets.values().copied().min().unwrap_or(next_offset);
                Some(CommitPoint {
                    partition: *partition,
                    next_offset,
                    checkpoint: Checkpoint { replay_from, watermark_ms },
                })
            })
            .collect()
    }

    /// Panes held in all partitions, for memory accounting.
    pub fn panes_held(&self) -> usize {
        let rings = self.partitions.values().flat_map(|p| p.keys.values());
        rings.map(|panes| panes.rings.iter().map(PaneRing::len).sum::<usize>()).sum()
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SECOND: i64 = 1000;

    fn settings() -> AggregatorSettings {
        AggregatorSettings {
            windows: vec![
                WindowSpec { name: "1m".into(), size_ms: 60 * SECOND, slide_ms: 10 * SECOND },
                WindowSpec { name: "5m".into(), size_ms: 300 * SECOND, slide_ms: 60 * SECOND },
            ],
            out_of_orderness_ms: 5 * SECOND,
            idle_timeout_ms: 30 * SECOND,
            replay_horizon_ms: 0,
        }
    }

    fn p(partition: i32) -> InputPartition {
        InputPartition { topic: 0, partition }
    }

    fn event(creative_id: &str, kind: EventKind, event_time_ms: i64) -> Observation<'_> {
        Observation { campaign_id: "c-1", creative_id, kind, event_time_ms }
    }

    fn counts(impressions: u64, installs: u64) -> Counts {
        Counts { impressions, installs }
    }

    fn started(partitions: &[i32]) -> Aggregator {
        let mut aggregator = Aggregator::new(settings());
        for partition in partitions {
            aggregator.assign(p(*partition), PartitionStart::default(), 0);
        }
        aggregator
    }

    fn updates_of(round: &Round, window: usize) -> Vec<(&str, i64, Counts)> {
        round
            .updates
            .iter()
            .filter(|u| u.window == window)
            .map(|u| (&*u.key.creative_id, u.window_end_ms, u.counts))
            .collect()
    }

    #[test]
    fn watermark_waits_for_every_partition_to_see_an_event() {
        let mut agg = started(&[0, 1]);
        agg.observe(p(0), 0, &event("a", EventKind::Impression, 100 * SECOND), 0);
        assert_eq!(agg.advance(0), None);
        agg.observe(p(1), 0, &event("a", EventKind::Install, 30 * SECOND), 0);
        assert_eq!(agg.allowed_watermark(0), Some(25 * SECOND));
    }

    #[test]
    fn first_round_emits_from_the_earliest_event_and_only_changes() {
        let mut agg = started(&[0]);
        agg.observe(p(0), 0, &event("a", EventKind::Impression, 12 * SECOND), 0);
        agg.observe(p(0), 1, &event("a", EventKind::Impression, 14 * SECOND), 0);
        agg.observe(p(0), 2, &event("a", EventKind::Install, 21 * SECOND), 0);
        agg.observe(p(0), 3, &event("a", EventKind::Impression, 46 * SECOND), 0);
        let round = agg.advance(0).unwrap();
        assert_eq!(round.watermark_ms, 41 * SECOND);
        assert_eq!(
            updates_of(&round, 0),
            [("a", 20 * SECOND, counts(2, 0)), ("a", 30 * SECOND, counts(2, 1))]
        );
        assert_eq!(updates_of(&round, 1), []);
        let commit = agg.commit_points();
        assert_eq!(commit.len(), 1);
        assert_eq!(commit[0].next_offset, 4);
        assert_eq!(commit[0].checkpoint, Checkpoint { replay_from: 0, watermark_ms: 41 * SECOND });
    }

    #[test]
    fn late_install_counts_in_windows_whose_next_emission_covers_it() {
        let mut agg = started(&[0]);
        agg.observe(p(0), 0, &event("a", EventKind::Impression, 0), 0);
        agg.observe(p(0), 1, &event("a", EventKind::Impression, 125 * SECOND), 0);
        agg.advance(0).unwrap();
        // The 1m window has published up to 120 s; its next window is [70 s, 130 s).
        let admission = agg.observe(p(0), 2, &event("a", EventKind::Install, 65 * SECOND), 0);
        assert_eq!(admission, Admission { late_windows: 0b01, counted: true, replayed: false });
        let admission = agg.observe(p(0), 3, &event("a", EventKind::Install, 75 * SECOND), 0);
        assert_eq!(admission.late_windows, 0);
        agg.observe(p(0), 4, &event("a", EventKind::Impression, 200 * SECOND), 0);
        let round = agg.advance(0).unwrap();
        assert_eq!(updates_of(&round, 0)[0], ("a", 130 * SECOND, counts(1, 1)));
        assert_eq!(updates_of(&round, 1), [("a", 180 * SECOND, counts(2, 2))]);
    }

    #[test]
    fn event_too_late_for_every_window_is_not_counted() {
        let mut agg = started(&[0]);
        agg.observe(p(0), 0, &event("a", EventKind::Impression, 0), 0);
        agg.observe(p(0), 1, &event("a", EventKind::Impression, 1000 * SECOND), 0);
        agg.advance(0).unwrap();
        let admission = agg.observe(p(0), 2, &event("a", EventKind::Install, 10 * SECOND), 0);
        assert_eq!(admission, Admission { late_windows: 0b11, counted: false, replayed: false });
    }

    #[test]
    fn idle_partition_stops_holding_back_only_when_caught_up() {
        let mut agg = started(&[0, 1]);
        agg.observe(p(0), 0, &event("a", EventKind::Impression, 100 * SECOND), 0);
        let later = 31 * SECOND;
        assert_eq!(agg.allowed_watermark(later), None);
        agg.set_caught_up(p(1), true);
        assert_eq!(agg.allowed_watermark(later), Some(95 * SECOND));
    }

    #[test]
    fn all_idle_partitions_let_the_watermark_follow_wall_clock() {
        let mut agg = started(&[0]);
        agg.observe(p(0), 0, &event("a", EventKind::Impression, 100 * SECOND), 0);
        agg.set_caught_up(p(0), true);
        assert_eq!(agg.allowed_watermark(10 * SECOND), Some(95 * SECOND));
        let now = 2000 * SECOND;
        assert_eq!(agg.allowed_watermark(now), Some(now - 5 * SECOND));
    }

    #[test]
    fn stopped_traffic_decays_to_zero_then_evicts_the_key() {
        let mut agg = started(&[0]);
        agg.observe(p(0), 0, &event("a", EventKind::Impression, 100 * SECOND), 0);
        agg.observe(p(0), 1, &event("a", EventKind::Install, 101 * SECOND), 0);
        agg.set_caught_up(p(0), true);
        let round = agg.advance(10_000 * SECOND).unwrap();
        assert_eq!(
            updates_of(&round, 0),
            [("a", 110 * SECOND, counts(1, 1)), ("a", 170 * SECOND, counts(0, 0))]
        );
        assert_eq!(
            updates_of(&round, 1),
            [("a", 120 * SECOND, counts(1, 1)), ("a", 420 * SECOND, counts(0, 0))]
        );
        assert_eq!(round.evicted.len(), 1);
        assert_eq!(agg.active_keys(), 0);
        assert_eq!(agg.panes_held(), 0);
    }

    #[test]
    fn keys_are_summed_over_partitions() {
        let mut agg = started(&[0, 1]);
        agg.observe(p(0), 0, &event("a", EventKind::Impression, SECOND), 0);
        agg.observe(p(1), 0, &event("a", EventKind::Install, 2 * SECOND), 0);
        agg.observe(p(0), 1, &event("a", EventKind::Impression, 30 * SECOND), 0);
        agg.observe(p(1), 1, &event("b", EventKind::Impression, 30 * SECOND), 0);
        let round = agg.advance(0).unwrap();
        assert_eq!(updates_of(&round, 0), [("a", 10 * SECOND, counts(1, 1))]);
        let released = agg.revoke(p(0));
        assert!(released.is_empty());
        let released = agg.revoke(p(1));
        assert_eq!(released.len(), 2);
    }

    #[test]
    fn rebuilt_state_matches_the_state_it_replaced() {
        let events: Vec<(i64, &str, EventKind)> = (0..40)
            .map(|i| {
                let kind = if i % 4 == 0 { EventKind::Install } else { EventKind::Impression };
                (i * 7 * SECOND, if i % 3 == 0 { "a" } else { "b" }, kind)
            })
            .collect();
        let mut original = started(&[0]);
        let mut commit = None;
        for (offset, (time, creative, kind)) in events.iter().enumerate() {
            original.observe(p(0), offset as i64, &event(creative, *kind, *time), 0);
            if offset == 25 {
                original.advance(0).unwrap();
                commit = Some(original.commit_points()[0]);
            }
        }
        let commit = commit.unwrap();
        let expected = original.advance(0).unwrap();

        let mut rebuilt = Aggregator::new(settings());
        let start = PartitionStart {
            committed_offset: Some(commit.next_offset),
            checkpoint: Some(commit.checkpoint),
        };
        rebuilt.assign(p(0), start, 0);
        let from = commit.checkpoint.replay_from as usize;
        for (offset, (time, creative, kind)) in events.iter().enumerate().skip(from) {
            let admission = rebuilt.observe(p(0), offset as i64, &event(creative, *kind, *time), 0);
            assert_eq!(admission.replayed, (offset as i64) < commit.next_offset);
        }
        let round = rebuilt.advance(0).unwrap();
        // Values unknown after a rebuild are published again; every value equals the original's.
        for update in &expected.updates {
            assert!(round.updates.contains(update), "missing {update:?}");
        }
        for update in &round.updates {
            let same_end = expected.updates.iter().any(|u| {
                u.key == update.key && u.window == update.window && u.counts == update.counts
            });
            assert!(same_end || update.window_end_ms > commit.checkpoint.watermark_ms);
        }
    }

    /// Naive reference: an event counts in the window published at `end` exactly when it was
    /// observed before that emission and its time lies in the window.
    fn reference(
        seen: &[(usize, i64, EventKind)],
        key: usize,
        spec: &WindowSpec,
        end: i64,
    ) -> Counts {
        let mut total = Counts::ZERO;
        for (k, time, kind) in seen {
            if *k == key && *time >= end - spec.size_ms && *time < end {
                match kind {
                    EventKind::Impression => total.impressions += 1,
                    EventKind::Install => total.installs += 1,
                }
            }
        }
        total
    }

    /// One step of a generated stream: key, partition, how far behind its partition's clock
    /// (in tenths of a second), whether it is an install, and whether a round follows.
    type Step = (usize, i32, i64, bool, bool);

    const NAMES: [&str; 3] = ["x", "y", "z"];

    fn key_index(key: &CreativeKey) -> usize {
        NAMES.iter().position(|n| **n == *key.creative_id).unwrap()
    }

    /// Feeds `steps` to an aggregator and checks every round against [`reference`].
    fn check_against_reference(steps: Vec<Step>) -> Result<(), TestCaseError> {
        let mut agg = started(&[0, 1, 2]);
        let mut seen: Vec<(usize, i64, EventKind)> = Vec::new();
        let mut clock = [0i64; 3];
        let mut offsets = [0i64; 3];
        let mut published: HashMap<(usize, usize), Counts> = HashMap::new();
        for (key, partition, behind, install, round_follows) in steps {
            // Each partition moves forward with jitter, so events arrive out of order within
            // and across partitions, some beyond the out-of-orderness bound.
            let part = partition as usize;
            clock[part] += 3 * SECOND;
            let time = clock[part] - behind * 100;
            let kind = if install { EventKind::Install } else { EventKind::Impression };
            let event = event(NAMES[key], kind, time);
            let admission = agg.observe(p(partition), offsets[part], &event, 0);
            offsets[part] += 1;
            if admission.counted {
                // Windows the event was late for can never again publish a window holding it.
                seen.push((key, time, kind));
            }
            if !round_follows {
                continue;
            }
            let before = agg.cursors.clone();
            let Some(round) = agg.advance(0) else { continue };
            let published_before = published.clone();
            for update in &round.updates {
                let spec = &agg.windows()[update.window];
                let key = key_index(&update.key);
                let expected = reference(&seen, key, spec, update.window_end_ms);
                prop_assert_eq!(update.counts, expected);
                published.insert((key, update.window), update.counts);
            }
            // Every boundary passed whose value changed was published.
            for (w, spec) in agg.windows().iter().enumerate() {
                let after = agg.cursors[w].unwrap();
                let mut end = before[w].unwrap_or(after) + spec.slide_ms;
                while end <= after {
                    for (key, name) in NAMES.iter().enumerate() {
                        let value = reference(&seen, key, spec, end);
                        let in_round = round.updates.iter().rev().find(|u| {
                            u.window == w && *u.key.creative_id == **name && u.window_end_ms <= end
                        });
                        let last = in_round
                            .map(|u| u.counts)
                            .or(published_before.get(&(key, w)).copied())
                            .unwrap_or(Counts::ZERO);
                        prop_assert_eq!(value, last, "window {} end {} key {}", w, end, key);
                    }
                    end += spec.slide_ms;
                }
            }
            for evicted in &round.evicted {
                published.retain(|(key, _), _| *key != key_index(evicted));
            }
        }
        Ok(())
    }

    proptest! {
        #[test]
        fn window_counts_equal_a_naive_reference_over_out_of_order_streams(
            steps in prop::collection::vec(
                (0usize..3, 0i32..3, -40i64..400, any::<bool>(), prop::bool::weighted(0.1)),
                1..300,
            ),
        ) {
            check_against_reference(steps)?;
        }
    }
}
