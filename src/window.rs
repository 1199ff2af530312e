//! Sliding-window arithmetic: window specs, slide-aligned boundaries and the pane ring that
//! holds one key's counts for one window. Which windows are due, and what is late, is decided
//! by the aggregator that owns these rings.

use std::collections::VecDeque;

/// One configured sliding window. Windows end on multiples of `slide_ms` since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowSpec {
    /// Label used in records and metrics (`5m`).
    pub name: String,
    /// Length of each window in milliseconds; a whole multiple of `slide_ms`.
    pub size_ms: i64,
    /// Distance between consecutive window ends in milliseconds; also the pane width.
    pub slide_ms: i64,
}

impl WindowSpec {
    /// Number of panes (slides) in one window.
    pub fn panes(&self) -> i64 {
        self.size_ms / self.slide_ms
    }

    /// Index of the pane holding `time_ms`.
    pub fn pane_of(&self, time_ms: i64) -> i64 {
        time_ms.div_euclid(self.slide_ms)
    }

    /// The last window end at or before `time_ms`.
    pub fn boundary_at_or_before(&self, time_ms: i64) -> i64 {
        self.pane_of(time_ms) * self.slide_ms
    }

    /// The first pane of the window that ends at `window_end_ms`.
    pub fn first_pane_of_window(&self, window_end_ms: i64) -> i64 {
        self.pane_of(window_end_ms) - self.panes()
    }
}

/// Impressions and installs in one window (or pane).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Counts {
    pub impressions: u64,
    pub installs: u64,
}

impl Counts {
    /// No events.
    pub const ZERO: Counts = Counts { impressions: 0, installs: 0 };

    /// True when the window holds no event of either kind.
    pub fn is_zero(&self) -> bool {
        *self == Counts::ZERO
    }
}

impl std::ops::AddAssign for Counts {
    fn add_assign(&mut self, other: Counts) {
        self.impressions += other.impressions;
        self.installs += other.installs;
    }
}

/// Counts of one slide. `u32` halves the memory of a key; a single creative would need four
/// billion events in one slide to saturate it, and it saturates rather than wraps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Pane {
    impressions: u32,
    installs: u32,
}

/// The kind of an event, as far as counting goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tally {
    Impression,
    Install,
}

/// Panes of one key and one window, contiguous from `first_pane`. It holds the panes that a
/// future emission may still read, plus any that events ahead of the watermark opened.
#[derive(Debug, Clone, Default)]
pub struct PaneRing {
    first_pane: i64,
    panes: VecDeque<Pane>,
}

impl PaneRing {
    /// Counts one event into pane `pane`, growing the ring at either end as needed.
    pub fn add(&mut self, pane: i64, tally: Tally) {
        if self.panes.is_empty() {
            self.first_pane = pane;
            self.panes.push_back(Pane::default());
        } else if pane < self.first_pane {
            for _ in pane..self.first_pane {
                self.panes.push_front(Pane::default());
            }
            self.first_pane = pane;
        } else {
            let past_end = pane - self.first_pane - self.panes.len() as i64 + 1;
            for _ in 0..past_end {
                self.panes.push_back(Pane::default());
            }
        }
        let slot = &mut self.panes[(pane - self.first_pane) as usize];
        match tally {
            Tally::Impression => slot.impressions = slot.impressions.saturating_add(1),
            Tally::Install => slot.installs = slot.installs.saturating_add(1),
        }
    }

    /// Sum of panes `from..until`.
    pub fn sum(&self, from: i64, until: i64) -> Counts {
        let start = (from - self.first_pane).max(0);
        let end = (until - self.first_pane).min(self.panes.len() as i64);
        let mut total = Counts::ZERO;
        if start >= end {
            return total;
        }
        for pane in self.panes.range(start as usize..end as usize) {
            total.impressions += u64::from(pane.impressions);
            total.installs += u64::from(pane.installs);
        }
        total
    }

    /// Drops panes before `pane`: no future emission reads them.
    pub fn drop_before(&mut self, pane: i64) {
        while self.first_pane < pane && !self.panes.is_empty() {
            self.panes.pop_front();
            self.first_pane += 1;
        }
        if self.panes.is_empty() {
            self.panes = VecDeque::new();
        }
    }

    /// Number of panes held (memory accounting).
    pub fn len(&self) -> usize {
        self.panes.len()
    }

    /// True when the ring holds no pane.
    pub fn is_empty(&self) -> bool {
        self.panes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn five_minutes() -> WindowSpec {
        WindowSpec { name: "5m".into(), size_ms: 300_000, slide_ms: 10_000 }
    }

    #[test]
    fn boundaries_align_to_the_slide_for_negative_and_positive_times() {
        let w = five_minutes();
        assert_eq!(w.boundary_at_or_before(25_000), 20_000);
        assert_eq!(w.boundary_at_or_before(-1), -10_000);
        assert_eq!(w.first_pane_of_window(300_000), 0);
    }

    #[test]
    fn ring_grows_both_ways_and_sums_a_range() {
        let mut ring = PaneRing::default();
        ring.add(10, Tally::Impression);
        ring.add(7, Tally::Install);
        ring.add(12, Tally::Impression);
        assert_eq!(ring.len(), 6);
        assert_eq!(ring.sum(7, 13), Counts { impressions: 2, installs: 1 });
        assert_eq!(ring.sum(8, 12), Counts { impressions: 1, installs: 0 });
        assert_eq!(ring.sum(0, 5), Counts::ZERO);
        assert_eq!(ring.sum(20, 30), Counts::ZERO);
        assert_eq!(PaneRing::default().sum(1, 5), Counts::ZERO);
        ring.drop_before(11);
        assert_eq!(ring.sum(0, 100), Counts { impressions: 1, installs: 0 });
        ring.drop_before(100);
        assert!(ring.is_empty());
    }
}
