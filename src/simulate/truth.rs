//! Ground truth of a simulated run: the true impressions and installs per (campaign, creative,
//! window, window end), counting each unique, well-formed event once by its event time, written
//! as JSON lines so that a run can be checked against the service's output.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use serde::{Deserialize, Serialize};

use super::generate::{Delivery, SimEvent};
use super::scenario::Catalogue;
use crate::decode::EventKind;
use crate::output::rfc3339;
use crate::window::{Counts, WindowSpec};

/// One line of the ground-truth file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TruthRow {
    pub campaign_id: String,
    pub creative_id: String,
    /// Window name, as in the service's records.
    pub window: String,
    /// Inclusive start, RFC 3339 UTC.
    pub window_start: String,
    /// Exclusive end, RFC 3339 UTC.
    pub window_end: String,
    /// The window end as Unix milliseconds, for tools that do not parse dates.
    pub window_end_ms: i64,
    pub impressions: u64,
    pub installs: u64,
    /// Of `impressions`, those delivered so late that the service may not count them here.
    pub late_impressions: u64,
    /// Of `installs`, those delivered so late that the service may not count them here.
    pub late_installs: u64,
}

/// Accumulates the true counts of a run.
///
/// Events sent later than the out-of-orderness bound are true events, so they are counted;
/// the service counts one in a window only if that window was not yet published when the
/// event arrived. A late event delivered at `d` cannot have been preceded on its partition by
/// an event newer than `d` (messages are sent in delivery order and none before its event
/// time), so the watermark was at most `d - bound` when it was read and every window ending
/// after that still counts it. Windows ending at or before `d - bound` may or may not: such
/// events are also reported as `late_impressions` / `late_installs`, and the service's value
/// lies between `impressions - late_impressions` and `impressions` (likewise installs).
#[derive(Debug)]
pub struct GroundTruth {
    windows: Vec<WindowSpec>,
    out_of_orderness_ms: i64,
    /// Per (creative, window): counts per pane (slide-long slot).
    panes: HashMap<(u32, usize), BTreeMap<i64, Counts>>,
    /// Per (creative, window, end): late events the service may not count there.
    uncertain: HashMap<(u32, usize, i64), Counts>,
}

fn add(counts: &mut Counts, kind: EventKind) {
    match kind {
        EventKind::Impression => counts.impressions += 1,
        EventKind::Install => counts.installs += 1,
    }
}

impl GroundTruth {
    /// Truth for `windows`, with the service's out-of-orderness bound.
    pub fn new(windows: Vec<WindowSpec>, out_of_orderness_ms: i64) -> GroundTruth {
        GroundTruth {
            windows,
            out_of_orderness_ms,
            panes: HashMap::new(),
            uncertain: HashMap::new(),
        }
    }

    /// Counts `event` if it is unique and well-formed; duplicates and malformed messages are
    /// not events.
    pub fn observe(&mut self, event: &SimEvent) {
        if !event.is_countable() {
            return;
        }
        for (w, spec) in self.windows.iter().enumerate() {
            let pane = spec.pane_of(event.event_time_ms);
            let slot = self.panes.entry((event.creative, w)).or_default().entry(pane).or_default();
            add(slot, event.kind);
            if event.delivery == Delivery::Late {
                let surely_open_after = event.delivery_ms - self.out_of_orderness_ms;
                for end_pane in pane + 1..=pane + spec.panes() {
                    let end = end_pane * spec.slide_ms;
                    if end <= surely_open_after {
                        let key = (event.creative, w, end);
                        add(self.uncertain.entry(key).or_default(), event.kind);
                    }
                }
            }
        }
    }

    /// Every window value that is not zero, sorted by campaign, creative, window and end.
    pub fn rows(&self, catalogue: &Catalogue) -> Vec<TruthRow> {
        let mut rows = Vec::new();
        for ((creative, w), panes) in &self.panes {
            let spec = &self.windows[*w];
            let info = &catalogue.creatives[*creative as usize];
            let (Some(first), Some(last)) = (panes.keys().next(), panes.keys().next_back()) else {
                continue;
            };
            for end_pane in first + 1..=last + spec.panes() {
                let mut counts = Counts::ZERO;
                for (_, pane) in panes.range(end_pane - spec.panes()..end_pane) {
                    counts += *pane;
                }
                if counts.is_zero() {
                    continue;
                }
                let end = end_pane * spec.slide_ms;
                let late = self.uncertain.get(&(*creative, *w, end)).copied().unwrap_or_default();
                rows.push(TruthRow {
                    campaign_id: info.campaign_id.clone(),
                    creative_id: info.creative_id.clone(),
                    window: spec.name.clone(),
                    window_start: rfc3339(end - spec.size_ms),
                    window_end: rfc3339(end),
                    window_end_ms: end,
                    impressions: counts.impressions,
                    installs: counts.installs,
                    late_impressions: late.impressions,
                    late_installs: late.installs,
                });
            }
        }
        let order = |r: &TruthRow| {
            let window = self.windows.iter().position(|w| w.name == r.window);
            (r.campaign_id.clone(), r.creative_id.clone(), window, r.window_end_ms)
        };
        rows.sort_by_cached_key(order);
        rows
    }

    /// Writes [`GroundTruth::rows`] to `writer`, one JSON object per line.
    pub fn write_json_lines(
        &self,
        catalogue: &Catalogue,
        writer: impl Write,
    ) -> std::io::Result<usize> {
        let mut writer = std::io::BufWriter::new(writer);
        let rows = self.rows(catalogue);
        for row in &rows {
            serde_json::to_writer(&mut writer, row)?;
            writer.write_all(b"\n")?;
        }
        writer.flush()?;
        Ok(rows.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::scenario::Catalogue;

    fn event(kind: EventKind, time_ms: i64, delivery_ms: i64, delivery: Delivery) -> SimEvent {
        SimEvent {
            delivery_ms,
            event_time_ms: time_ms,
            kind,
            creative: 0,
            event_id: "e".into(),
            delivery,
        }
    }

    #[test]
    fn counts_each_unique_well_formed_event_in_every_window_holding_it() {
        let window = WindowSpec { name: "20s".into(), size_ms: 20_000, slide_ms: 10_000 };
        let mut truth = GroundTruth::new(vec![window], 5_000);
        truth.observe(&event(EventKind::Impression, 12_000, 12_500, Delivery::OnTime));
        truth.observe(&event(EventKind::Install, 15_000, 15_100, Delivery::OnTime));
        truth.observe(&event(EventKind::Install, 15_000, 40_000, Delivery::Duplicate));
        let bad = Delivery::Malformed(crate::simulate::generate::Defect::BadTime);
        truth.observe(&event(EventKind::Impression, 16_000, 16_000, bad));
        // Delivered 21 s after its time: the window ending at 20 s may be published already.
        truth.observe(&event(EventKind::Impression, 5_000, 26_000, Delivery::Late));
        let catalogue = Catalogue::new(1, 1, 1);
        let rows = truth.rows(&catalogue);
        let values: Vec<(i64, u64, u64, u64)> = rows
            .iter()
            .map(|r| (r.window_end_ms, r.impressions, r.installs, r.late_impressions))
            .collect();
        assert_eq!(values, [(10_000, 1, 0, 1), (20_000, 2, 1, 1), (30_000, 1, 1, 0)]);
        assert_eq!(rows[0].window_start, "1969-12-31T23:59:50.000Z");
        let mut text = Vec::new();
        assert_eq!(truth.write_json_lines(&catalogue, &mut text).unwrap(), 3);
        let first: TruthRow =
            serde_json::from_str(std::str::from_utf8(&text).unwrap().lines().next().unwrap())
                .unwrap();
        assert_eq!(first, rows[0]);
    }
}
