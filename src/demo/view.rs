//! What the demo shows: the latest output record of every (campaign, creative, window) as read
//! back from the output topic, an IPM trend per creative, and the rendering of both as an
//! 80-column live table or as plain log lines. Pure functions of what was read, for testing.

use std::collections::{BTreeMap, HashMap};

use crate::output::IpmRecord;

/// Columns of the live table; lines are kept one short of a terminal's width, since writing
/// the last column makes some terminals wrap.
pub const WIDTH: usize = 79;
/// Points of the trend sparkline.
pub const TREND_POINTS: usize = 10;
const SPARKS: [char; 8] = ['▁', '▂', '▃', '▄', '▅', '▆', '▇', '█'];

/// Throughput and progress figures shown above the table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Status {
    pub seed: u64,
    pub uptime_s: u64,
    pub http: String,
    /// Messages the simulator sent per second.
    pub produced_per_s: f64,
    /// Input messages the pipeline read per second.
    pub consumed_per_s: f64,
    /// Output records acknowledged per second.
    pub records_per_s: f64,
    /// Wall clock minus the pipeline's watermark, if it has one.
    pub watermark_delay_s: Option<f64>,
    pub active_keys: i64,
    /// Messages the pipeline did not count, by cause, since the start.
    pub rejected: u64,
    pub duplicates: u64,
    pub too_late: u64,
    /// Simulated time of day, in hours.
    pub simulated_hour: f64,
    /// Incidents, as `Display`ed.
    pub incidents: Vec<String>,
    /// Warnings to surface, newest last.
    pub warnings: Vec<String>,
}

/// Latest values per creative, fed with the output topic's records.
#[derive(Debug)]
pub struct Board {
    windows: Vec<String>,
    /// Index of the window whose IPM, interval and trend are shown.
    focus: usize,
    /// Distance between trend points, milliseconds.
    trend_step_ms: i64,
    creatives: HashMap<(String, String), Creative>,
}

#[derive(Debug, Default)]
struct Creative {
    latest: HashMap<String, IpmRecord>,
    /// IPM of the focus window by window end.
    history: BTreeMap<i64, Option<f64>>,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub campaign_id: String,
    pub creative_id: String,
    /// (impressions, installs) per window, in configured order; `None` before a record.
    pub counts: Vec<Option<(u64, u64)>>,
    pub ipm: Option<(f64, f64, f64)>,
    pub trend: Vec<Option<f64>>,
}

fn end_ms(record: &IpmRecord) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(&record.window_end).ok().map(|t| t.timestamp_millis())
}

impl Board {
    /// A board for the configured window names. The focus is the second window (the first
    /// reacts within a minute but is noisy), and the trend spans `TREND_POINTS` of
    /// `trend_step_ms`.
    pub fn new(windows: Vec<String>, trend_step_ms: i64) -> Board {
        let focus = usize::from(windows.len() > 1);
        Board { windows, focus, trend_step_ms, creatives: HashMap::new() }
    }

    /// Name of the focus window.
    pub fn focus(&self) -> &str {
        &self.windows[self.focus]
    }

    /// Applies one output record: a value, or a tombstone (`None`) for an evicted key.
    pub fn apply(&mut self, key: &[u8], record: Option<IpmRecord>) {
        match record {
            Some(record) => {
                let id = (record.campaign_id.clone(), record.creative_id.clone());
                let creative = self.creatives.entry(id).or_default();
                if record.window == self.windows[self.focus] {
                    if let Some(end) = end_ms(&record) {
                        creative.history.insert(end, record.ipm);
                        // Keep what the trend can show, and a point before it to carry forward.
                        let keep_from = end - self.trend_step_ms * (TREND_POINTS as i64 + 1);
                        creative.history = creative.history.split_off(&keep_from);
                    }
                }
                creative.latest.insert(record.window.clone(), record);
            }
            None => {
                let Ok((campaign, creative, _window)) =
                    serde_json::from_slice::<(String, String, String)>(key)
                else {
                    return;
                };
                // A tombstone is sent for every window once the key holds nothing at all.
                self.creatives.remove(&(campaign, creative));
            }
        }
    }

    /// Number of creatives with a value.
    pub fn len(&self) -> usize {
        self.creatives.len()
    }

    /// True before any record.
    pub fn is_empty(&self) -> bool {
        self.creatives.is_empty()
    }

    /// The `n` creatives with most impressions in the focus window.
    pub fn top(&self, n: usize) -> Vec<Row> {
        let focus = &self.windows[self.focus];
        let mut ranked: Vec<(&(String, String), &Creative)> = self.creatives.iter().collect();
        let volume = |c: &Creative| c.latest.get(focus).map_or(0, |r| r.impressions);
        ranked.sort_by(|a, b| volume(b.1).cmp(&volume(a.1)).then_with(|| a.0.cmp(b.0)));
        ranked.into_iter().take(n).map(|(id, creative)| self.row(id, creative)).collect()
    }

    fn row(&self, id: &(String, String), creative: &Creative) -> Row {
        let counts = self
            .windows
            .iter()
            .map(|w| creative.latest.get(w).map(|r| (r.impressions, r.installs)))
            .collect();
        let focus = creative.latest.get(&self.windows[self.focus]);
        let ipm = focus.and_then(|r| Some((r.ipm?, r.ipm_low?, r.ipm_high?)));
        Row {
            campaign_id: id.0.clone(),
            creative_id: id.1.clone(),
            counts,
            ipm,
            trend: self.trend(creative),
        }
    }

    /// IPM at the last `TREND_POINTS` multiples of the trend step, carrying the latest value
    /// forward: records are published only when a value changes.
    fn trend(&self, creative: &Creative) -> Vec<Option<f64>> {
        let Some((&newest, _)) = creative.history.iter().next_back() else {
            return vec![None; TREND_POINTS];
        };
        let last = newest.div_euclid(self.trend_step_ms) * self.trend_step_ms;
        (0..TREND_POINTS as i64)
            .rev()
            .map(|back| {
                let at = last - back * self.trend_step_ms;
                creative.history.range(..=at).next_back().and_then(|(_, ipm)| *ipm)
            })
            .collect()
    }
}

/// `1234` → `1234`, `12345` → `12.3k`, `123456` → `123k`, `1234567` → `1.23M`: at most 5
/// characters.
pub fn compact(n: u64) -> String {
    match n {
        0..=9_999 => n.to_string(),
        10_000..=99_999 => format!("{:.1}k", n as f64 / 1e3),
        100_000..=999_999 => format!("{}k", n / 1000),
        1_000_000..=9_999_999 => format!("{:.2}M", n as f64 / 1e6),
        10_000_000..=99_999_999 => format!("{:.1}M", n as f64 / 1e6),
        _ => format!("{}M", n / 1_000_000),
    }
}

/// A sparkline scaled from zero to the largest value, so that a halving looks like one.
pub fn sparkline(values: &[Option<f64>]) -> String {
    let top = values.iter().flatten().copied().fold(0.0_f64, f64::max);
    values
        .iter()
        .map(|value| match value {
            None => ' ',
            Some(_) if top <= 0.0 => SPARKS[0],
            Some(v) => {
                let level = (v / top * (SPARKS.len() - 1) as f64).round() as usize;
                SPARKS[level.min(SPARKS.len() - 1)]
            }
        })
        .collect()
}

/// Cuts `text` to `width` characters, marking the cut.
fn fit(text: &str, width: usize) -> String {
    if text.chars().count() <= width {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(width.saturating_sub(1)).collect();
    cut.push('…');
    cut
}

fn duration(seconds: u64) -> String {
    match seconds {
        0..=59 => format!("{seconds}s"),
        60..=3599 => format!("{}m{:02}s", seconds / 60, seconds % 60),
        _ => format!("{}h{:02}m", seconds / 3600, seconds / 60 % 60),
    }
}

fn delay(status: &Status) -> String {
    status.watermark_delay_s.map_or_else(|| "no watermark yet".into(), |d| format!("{d:.1} s"))
}

/// An IPM figure in at most 4 characters where it can: one decimal below 100.
fn ipm_figure(value: f64) -> String {
    if value < 99.95 {
        format!("{value:.1}")
    } else {
        format!("{value:.0}")
    }
}

/// Width of a window's `impressions/installs` cell.
const CELL: usize = 11;
/// Width of the `IPM (low-high)` cell.
const IPM_CELL: usize = 17;

/// The live table, each line at most [`WIDTH`] columns:
///
/// ```text
/// camp. creative  ─── 1m ───  ─── 5m ───  ─── 15m ──  ─ IPM 5m, 95% CI ─ trend
/// c-01  cr-01-1    5112/207   25.6k/1031  60.1k/2440  40.3 (37.9-42.8) ▅▆▆▇▇█▇▆▃▂
/// ```
pub fn render(board: &Board, status: &Status, top: usize) -> Vec<String> {
    let mut lines = Vec::new();
    let hour = status.simulated_hour;
    lines.push(format!(
        "ipm-stream demo · embedded Kafka · seed {} · up {} · sim. day {:02}:{:02}",
        status.seed,
        duration(status.uptime_s),
        hour as u32 % 24,
        (hour.fract() * 60.0) as u32
    ));
    lines.push(format!(
        "in {:.0} ev/s · read {:.0} ev/s · out {:.0} rec/s · watermark delay {} · {} keys",
        status.produced_per_s,
        status.consumed_per_s,
        status.records_per_s,
        delay(status),
        status.active_keys
    ));
    lines.push(format!(
        "not counted: {} malformed, {} duplicates, {} too late · Ctrl-C stops",
        status.rejected, status.duplicates, status.too_late
    ));
    lines.push(format!("scrape {0}/metrics · pull {0}/v1/ipm", status.http));
    lines.push(String::new());
    let focus = board.focus();
    let ruled = |label: String, width: usize| {
        let label = format!(" {label} ");
        let left = width.saturating_sub(label.chars().count()) / 2;
        let right = width.saturating_sub(label.chars().count() + left);
        format!("{}{label}{}", "─".repeat(left), "─".repeat(right))
    };
    let mut header = format!("{:<5} {:<8}", "camp.", "creative");
    for window in board.windows.iter().take(3) {
        header.push(' ');
        header.push_str(&ruled(window.clone(), CELL));
    }
    header.push(' ');
    header.push_str(&ruled(format!("IPM {focus}, 95% CI"), IPM_CELL));
    header.push_str(" trend");
    lines.push(header);
    let rows = board.top(top);
    if rows.is_empty() {
        lines.push("  waiting for the first window to close…".into());
    }
    for row in rows {
        let mut line = format!("{:<5} {:<8}", fit(&row.campaign_id, 5), fit(&row.creative_id, 8));
        for counts in row.counts.iter().take(3) {
            // Impressions right-aligned and installs left-aligned around a fixed slash.
            let cell = counts.map_or_else(
                || format!("{:>6} {:<4}", "-", ""),
                |(i, n)| {
                    let (i, n) = (compact(i), compact(n));
                    // Five-character install counts borrow a column from impressions.
                    if n.len() > 4 {
                        format!("{i:>5}/{n:<5}")
                    } else {
                        format!("{i:>6}/{n:<4}")
                    }
                },
            );
            line.push_str(&format!(" {cell:<CELL$}"));
        }
        let ipm = row.ipm.map_or_else(
            || "-".to_owned(),
            |(value, low, high)| {
                format!("{} ({}-{})", ipm_figure(value), ipm_figure(low), ipm_figure(high))
            },
        );
        line.push_str(&format!(" {:>IPM_CELL$} {}", fit(&ipm, IPM_CELL), sparkline(&row.trend)));
        lines.push(line);
    }
    lines.push(String::new());
    let incidents = if status.incidents.is_empty() {
        "none (try --drop cr-01-1=0.5@2m)".to_owned()
    } else {
        status.incidents.join("; ")
    };
    lines.push(format!("incidents: {incidents}"));
    for warning in &status.warnings {
        lines.push(format!("! {warning}"));
    }
    lines.into_iter().map(|line| fit(&line, WIDTH)).collect()
}

/// The same information as plain log lines, for when stdout is not a terminal.
pub fn plain(board: &Board, status: &Status, top: usize) -> Vec<String> {
    let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let mut lines = vec![format!(
        "{now} in {:.0} ev/s, read {:.0} ev/s, out {:.0} rec/s, watermark delay {}, {} keys",
        status.produced_per_s,
        status.consumed_per_s,
        status.records_per_s,
        delay(status),
        status.active_keys
    )];
    let focus = board.focus();
    for row in board.top(top) {
        let (impressions, installs) = row.counts[board.focus].unwrap_or((0, 0));
        let ipm = row.ipm.map_or_else(
            || "none".to_owned(),
            |(value, low, high)| format!("{value:.1} ({low:.1}-{high:.1})"),
        );
        lines.push(format!(
            "  {}/{} {focus}: {impressions} impressions, {installs} installs, IPM {ipm}",
            row.campaign_id, row.creative_id
        ));
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(creative: &str, window: &str, end_s: i64, counts: (u64, u64)) -> IpmRecord {
        let ipm = crate::ipm::Ipm::of(crate::window::Counts {
            impressions: counts.0,
            installs: counts.1,
        });
        IpmRecord {
            schema_version: 1,
            campaign_id: "c-01".into(),
            creative_id: creative.into(),
            window: window.into(),
            window_start: crate::output::rfc3339(end_s * 1000 - 300_000),
            window_end: crate::output::rfc3339(end_s * 1000),
            impressions: counts.0,
            installs: counts.1,
            ipm: ipm.value,
            ipm_low: ipm.low,
            ipm_high: ipm.high,
            watermark: crate::output::rfc3339(end_s * 1000),
            emitted_at: crate::output::rfc3339(end_s * 1000),
        }
    }

    fn board() -> Board {
        Board::new(vec!["1m".into(), "5m".into(), "15m".into()], 30_000)
    }

    #[test]
    fn numbers_and_sparklines_stay_narrow() {
        assert_eq!(compact(9_999), "9999");
        assert_eq!(compact(12_345), "12.3k");
        assert_eq!(compact(123_456), "123k");
        assert_eq!(compact(1_234_567), "1.23M");
        assert_eq!(sparkline(&[Some(10.0), Some(5.0), None, Some(0.0)]), "█▅ ▁");
        assert_eq!(sparkline(&[Some(0.0)]), "▁");
    }

    #[test]
    fn rows_rank_by_focus_window_volume_and_carry_the_trend_forward() {
        let mut board = board();
        let key = |creative: &str| format!(r#"["c-01","{creative}","5m"]"#).into_bytes();
        for step in 0..10 {
            let installs = if step < 5 { 40 } else { 20 };
            board.apply(&key("a"), Some(record("a", "5m", 990 + step * 30, (1000, installs))));
        }
        board.apply(&key("b"), Some(record("b", "5m", 1_270, (5000, 10))));
        board.apply(&key("b"), Some(record("b", "1m", 1_270, (900, 2))));
        let rows = board.top(5);
        assert_eq!(rows.iter().map(|r| r.creative_id.as_str()).collect::<Vec<_>>(), ["b", "a"]);
        assert_eq!(rows[0].counts, [Some((900, 2)), Some((5000, 10)), None]);
        assert_eq!(sparkline(&rows[1].trend), "█████▅▅▅▅▅");
        assert_eq!(rows[1].ipm.unwrap().0, 20.0);
        board.apply(&key("b"), None);
        assert_eq!(board.len(), 1);
    }

    #[test]
    fn the_table_fits_eighty_columns() {
        let mut board = board();
        for (i, creative) in ["cr-01-1", "cr-100-12", "cr-02-3"].iter().enumerate() {
            let key = format!(r#"["c-01","{creative}","5m"]"#).into_bytes();
            for window in ["1m", "5m", "15m"] {
                let volume = 123_456_789 / (i as u64 + 1);
                board.apply(&key, Some(record(creative, window, 1_000, (volume, volume / 7))));
            }
        }
        let status = Status {
            seed: 123_456_789,
            uptime_s: 4000,
            http: "http://127.0.0.1:9898".into(),
            watermark_delay_s: Some(5.25),
            incidents: vec!["cr-01-1: installs x0.5 from +2m".into(); 4],
            warnings: vec!["x".repeat(200)],
            ..Status::default()
        };
        let lines = render(&board, &status, 10);
        for line in &lines {
            assert!(line.chars().count() <= WIDTH, "{line}");
        }
        assert!(lines[5].contains("IPM 5m, 95% CI"), "{}", lines[5]);
        assert!(lines[6].starts_with("c-01  cr-01-1"), "{}", lines[6]);
        // Every row ends with a whole trend: nothing was cut.
        assert!(lines[6..9].iter().all(|l| !l.ends_with('…')), "{lines:#?}");
        assert_eq!(lines[0].chars().count(), 77, "{}", lines[0]);
        let plain = plain(&board, &status, 2);
        assert_eq!(plain.len(), 3);
        assert!(plain[1].contains("c-01/cr-01-1 5m: 123456789 impressions"), "{}", plain[1]);
    }
}
