//! Event generation as a pure function of the traffic settings (seed, start, rate, incidents)
//! and the simulated clock: [`Generator`] hands out events in delivery order, identically
//! however its caller paces it. Encoding and producing to Kafka live elsewhere.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::time::Duration;

use super::random::{Purpose, Random};
use super::scenario::{Catalogue, DailyCycle, Incident};
use crate::decode::EventKind;

/// Events are drawn one simulated second at a time, each second from its own random stream.
pub const TICK_MS: i64 = 1000;

/// Install delay after the impression: log-normal with this median and spread, so most
/// installs come within minutes and a few hours later.
const INSTALL_DELAY_MEDIAN_MS: f64 = 180_000.0;
const INSTALL_DELAY_SIGMA: f64 = 1.6;
const INSTALL_DELAY_MIN_MS: f64 = 3_000.0;
/// Longer delays are clamped; this is also how far before the start installs are prepared.
const INSTALL_DELAY_MAX_MS: f64 = 6.0 * 3_600_000.0;
/// An attribution provider resends a postback after this base plus an exponential wait.
const RETRY_BASE_MS: f64 = 30_000.0;
const RETRY_MEAN_MS: f64 = 90_000.0;
const RETRY_MAX_MS: f64 = 600_000.0;
/// Ways a message can be malformed; see [`Defect`].
const DEFECTS: u64 = 5;

/// Everything a run's events depend on.
#[derive(Debug, Clone, PartialEq)]
pub struct TrafficSettings {
    pub seed: u64,
    /// Event time of the start of the run, Unix milliseconds.
    pub start_ms: i64,
    /// Mean well-formed, unique events per second (impressions and installs) over a day.
    pub rate_per_s: f64,
    pub campaigns: usize,
    /// Each campaign has 1 to this many creatives.
    pub max_creatives: usize,
    /// A simulated day passes in this much event time; install and retry delays shrink with it.
    pub day_length: Duration,
    /// Strength of the daily cycle, 0 (flat) to 1.
    pub daily_amplitude: f64,
    /// The service's bound: ordinary events arrive within it, late ones well after it.
    pub out_of_orderness_ms: i64,
    /// Share of installs whose postback is sent twice.
    pub duplicate_share: f64,
    /// Share of events delivered later than the out-of-orderness bound.
    pub late_share: f64,
    /// Share of messages followed by a malformed one.
    pub malformed_share: f64,
    pub incidents: Vec<Incident>,
}

impl Default for TrafficSettings {
    fn default() -> Self {
        TrafficSettings {
            seed: 1,
            start_ms: 1_796_292_000_000,
            rate_per_s: 1000.0,
            campaigns: 20,
            max_creatives: 8,
            day_length: Duration::from_secs(86_400),
            daily_amplitude: 1.0,
            out_of_orderness_ms: 30_000,
            duplicate_share: 0.03,
            late_share: 0.001,
            malformed_share: 0.002,
            incidents: Vec::new(),
        }
    }
}

/// How a malformed message is broken; each is rejected by the service's decoder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Defect {
    /// The JSON text is cut short.
    Truncated,
    /// Valid JSON, but an array.
    NotObject,
    /// The creative id is missing.
    NoCreative,
    /// The time is not a timestamp.
    BadTime,
    /// The campaign id is an empty string.
    EmptyCampaign,
}

/// How a message reaches the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// Within the out-of-orderness bound of its event time.
    OnTime,
    /// Later than the out-of-orderness bound.
    Late,
    /// A resent install postback: same event id, sent again later.
    Duplicate,
    /// Not a usable event.
    Malformed(Defect),
}

/// One generated message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimEvent {
    /// When the message is sent (event time of the run's clock), Unix milliseconds.
    pub delivery_ms: i64,
    pub event_time_ms: i64,
    pub kind: EventKind,
    /// Index into the catalogue.
    pub creative: u32,
    pub event_id: String,
    pub delivery: Delivery,
}

impl SimEvent {
    /// Whether the service should count this event: unique and well-formed.
    pub fn is_countable(&self) -> bool {
        matches!(self.delivery, Delivery::OnTime | Delivery::Late)
    }
}

/// Why settings cannot be simulated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("no creative `{0}` in the catalogue (ids look like cr-01-1; see --list-creatives)")]
    UnknownCreative(String),
    #[error("no campaign `{0}` in the catalogue (ids look like c-01; see --list-creatives)")]
    UnknownCampaign(String),
    #[error("{0}")]
    Invalid(String),
}

/// Creatives to draw from, by cumulative weight.
#[derive(Debug, Clone, Default)]
struct Table {
    cumulative: Vec<f64>,
    creatives: Vec<u32>,
}

impl Table {
    fn mass(&self) -> f64 {
        self.cumulative.last().copied().unwrap_or(0.0)
    }

    fn pick(&self, unit: f64) -> u32 {
        let target = unit * self.mass();
        let index = self.cumulative.partition_point(|c| *c <= target);
        self.creatives[index.min(self.creatives.len() - 1)]
    }
}

/// A generated message waiting for its delivery time; ties keep generation order.
#[derive(Debug)]
struct Pending {
    sequence: u64,
    event: SimEvent,
}

impl PartialEq for Pending {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Pending {}

impl PartialOrd for Pending {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Pending {
    fn cmp(&self, other: &Self) -> Ordering {
        // Reversed: the binary heap pops its largest, and the earliest delivery must come first.
        (other.event.delivery_ms, other.sequence).cmp(&(self.event.delivery_ms, self.sequence))
    }
}

/// Everything drawn for one event before deciding whether it is sent: drawing all of it every
/// time keeps the streams aligned, so a run with a drop incident sends a subset of the installs
/// of the same run without it.
struct Draws {
    late: bool,
    jitter_ms: f64,
    lateness_ms: f64,
    duplicate: bool,
    retry_ms: f64,
    malformed: bool,
    defect: u64,
}

/// Deterministic traffic: the same settings give the same messages in the same order.
#[derive(Debug)]
pub struct Generator {
    settings: TrafficSettings,
    catalogue: Catalogue,
    cycle: DailyCycle,
    /// Impressions per millisecond at a multiplier of 1 with every campaign running.
    impressions_per_ms: f64,
    /// Per creative: install keep-factor and when it starts to apply.
    drops: Vec<Option<(f64, i64)>>,
    /// Per creative: when its campaign stops.
    stops: Vec<Option<i64>>,
    /// Impressions that will not convert, and those that will.
    tables: [Table; 2],
    /// Number of stops in force when `tables` were built.
    tables_stops: Option<usize>,
    next_tick: i64,
    pending: BinaryHeap<Pending>,
    sequence: u64,
}

impl Generator {
    /// A generator for `settings`, checking incidents against the catalogue.
    pub fn new(settings: TrafficSettings) -> Result<Generator, SettingsError> {
        let positive = |value: f64| value.is_finite() && value >= 0.0;
        if !(settings.rate_per_s.is_finite() && settings.rate_per_s > 0.0) {
            return Err(SettingsError::Invalid("the rate must be above 0 events/s".into()));
        }
        if settings.campaigns == 0 || settings.max_creatives == 0 {
            return Err(SettingsError::Invalid("at least one campaign and creative".into()));
        }
        let shares = [settings.duplicate_share, settings.late_share, settings.malformed_share];
        if !shares.iter().all(|s| positive(*s) && *s <= 1.0) {
            return Err(SettingsError::Invalid("shares must be between 0 and 1".into()));
        }
        let catalogue = Catalogue::new(settings.seed, settings.campaigns, settings.max_creatives);
        let count = catalogue.creatives.len();
        let mut drops = vec![None; count];
        let mut stops = vec![None; count];
        for incident in &settings.incidents {
            match incident {
                Incident::Drop { creative_id, factor, at } => {
                    let index = catalogue
                        .creative(creative_id)
                        .ok_or_else(|| SettingsError::UnknownCreative(creative_id.clone()))?;
                    drops[index] = Some((*factor, settings.start_ms + at.as_millis() as i64));
                }
                Incident::Stop { campaign_id, at } => {
                    if !catalogue.has_campaign(campaign_id) {
                        return Err(SettingsError::UnknownCampaign(campaign_id.clone()));
                    }
                    let at_ms = settings.start_ms + at.as_millis() as i64;
                    for (i, creative) in catalogue.creatives.iter().enumerate() {
                        if creative.campaign_id == *campaign_id {
                            stops[i] = Some(at_ms);
                        }
                    }
                }
            }
        }
        let cycle =
            DailyCycle::new(settings.start_ms, settings.day_length, settings.daily_amplitude);
        let per_impression = 1.0 + catalogue.mean_install_probability();
        let impressions_per_ms = settings.rate_per_s / per_impression / 1000.0;
        let warmup_ms = INSTALL_DELAY_MAX_MS / cycle.time_scale;
        let next_tick = -((warmup_ms / TICK_MS as f64).ceil() as i64) - 1;
        Ok(Generator {
            settings,
            catalogue,
            cycle,
            impressions_per_ms,
            drops,
            stops,
            tables: [Table::default(), Table::default()],
            tables_stops: None,
            next_tick,
            pending: BinaryHeap::new(),
            sequence: 0,
        })
    }

    /// The campaigns and creatives of the run.
    pub fn catalogue(&self) -> &Catalogue {
        &self.catalogue
    }

    /// The settings the generator was made with.
    pub fn settings(&self) -> &TrafficSettings {
        &self.settings
    }

    /// The daily cycle in use.
    pub fn cycle(&self) -> &DailyCycle {
        &self.cycle
    }

    fn tick_start(&self, tick: i64) -> i64 {
        self.settings.start_ms + tick * TICK_MS
    }

    /// The next message delivered before `limit_ms`, or `None` when every such message was
    /// returned already. Messages come in delivery order.
    pub fn next_before(&mut self, limit_ms: i64) -> Option<SimEvent> {
        loop {
            // No tick from `next_tick` on can make a message delivered before its start.
            let horizon = self.tick_start(self.next_tick);
            if let Some(top) = self.pending.peek() {
                if top.event.delivery_ms < horizon {
                    if top.event.delivery_ms >= limit_ms {
                        return None;
                    }
                    return self.pending.pop().map(|p| p.event);
                }
            }
            if horizon >= limit_ms || (self.pending.is_empty() && self.all_stopped(horizon)) {
                return None;
            }
            self.generate_tick(self.next_tick);
            self.next_tick += 1;
        }
    }

    fn all_stopped(&self, time_ms: i64) -> bool {
        self.stops.iter().all(|stop| stop.is_some_and(|at| at <= time_ms))
    }

    fn push(&mut self, event: SimEvent) {
        self.sequence += 1;
        self.pending.push(Pending { sequence: self.sequence, event });
    }

    /// Rebuilds the draw tables when a campaign stop takes effect.
    fn refresh_tables(&mut self, time_ms: i64) {
        let stopped = self.stops.iter().filter(|s| s.is_some_and(|at| at <= time_ms)).count();
        if self.tables_stops == Some(stopped) {
            return;
        }
        let mut tables = [Table::default(), Table::default()];
        for (i, creative) in self.catalogue.creatives.iter().enumerate() {
            if self.stops[i].is_some_and(|at| at <= time_ms) {
                continue;
            }
            let converting = creative.ipm / 1000.0;
            for (table, share) in tables.iter_mut().zip([1.0 - converting, converting]) {
                let total = table.mass() + creative.weight * share;
                table.cumulative.push(total);
                table.creatives.push(i as u32);
            }
        }
        self.tables = tables;
        self.tables_stops = Some(stopped);
    }

    /// Draws one second of impressions and the installs they lead to.
    ///
    /// By Poisson thinning, the impressions that will convert form a Poisson stream of their
    /// own (rate × IPM/1000 per creative), independent of the rest. Drawing the two streams
    /// apart lets seconds before the start draw only the converting ones, whose installs may
    /// arrive after the start, so the run begins in a steady state.
    fn generate_tick(&mut self, tick: i64) {
        let start = self.tick_start(tick);
        let end = start + TICK_MS;
        let mut random = Random::new(self.settings.seed, Purpose::Tick, tick);
        self.refresh_tables(start);
        let multiplier = self.cycle.multiplier(start + TICK_MS / 2);
        let sending = end > self.settings.start_ms;
        for converting in [false, true] {
            if !sending && !converting {
                continue;
            }
            let table = &self.tables[usize::from(converting)];
            let rate_per_ms = self.impressions_per_ms * multiplier * table.mass();
            if rate_per_ms <= 0.0 {
                continue;
            }
            let mut at = start as f64;
            loop {
                at += random.exponential(1.0 / rate_per_ms);
                if at >= end as f64 {
                    break;
                }
                let time_ms = at as i64;
                let creative = self.tables[usize::from(converting)].pick(random.unit());
                let impression_id = random.uuid();
                if converting {
                    self.schedule_install(&mut random, creative, time_ms);
                }
                let draws = self.draw(&mut random);
                if time_ms >= self.settings.start_ms {
                    let kind = EventKind::Impression;
                    self.send(draws, kind, creative, time_ms, impression_id);
                }
            }
        }
    }

    fn schedule_install(&mut self, random: &mut Random, creative: u32, impression_ms: i64) {
        let raw = INSTALL_DELAY_MEDIAN_MS * libm::exp(INSTALL_DELAY_SIGMA * random.normal());
        let delay_ms =
            raw.clamp(INSTALL_DELAY_MIN_MS, INSTALL_DELAY_MAX_MS) / self.cycle.time_scale;
        let install_ms = impression_ms + (delay_ms as i64).max(1);
        let keep = random.unit();
        let install_id = random.uuid();
        let draws = self.draw(random);
        let dropped = self.drops[creative as usize]
            .is_some_and(|(factor, at_ms)| install_ms >= at_ms && keep >= factor);
        if install_ms >= self.settings.start_ms && !dropped {
            self.send(draws, EventKind::Install, creative, install_ms, install_id);
        }
    }

    fn draw(&self, random: &mut Random) -> Draws {
        let bound_ms = self.settings.out_of_orderness_ms as f64;
        Draws {
            late: random.chance(self.settings.late_share),
            // Most messages arrive within a fraction of the bound; none at or past it.
            jitter_ms: random.exponential(bound_ms / 10.0).min(bound_ms * 0.9),
            lateness_ms: bound_ms.max(1000.0) * random.between(1.5, 10.0),
            duplicate: random.chance(self.settings.duplicate_share),
            retry_ms: (RETRY_BASE_MS + random.exponential(RETRY_MEAN_MS)).min(RETRY_MAX_MS)
                / self.cycle.time_scale,
            malformed: random.chance(self.settings.malformed_share),
            defect: random.below(DEFECTS),
        }
    }

    fn send(&mut self, draws: Draws, kind: EventKind, creative: u32, time_ms: i64, id: String) {
        let (delivery, after_ms) = if draws.late {
            (Delivery::Late, draws.lateness_ms)
        } else {
            (Delivery::OnTime, draws.jitter_ms)
        };
        let delivery_ms = time_ms + after_ms as i64;
        let event = SimEvent {
            delivery_ms,
            event_time_ms: time_ms,
            kind,
            creative,
            event_id: id,
            delivery,
        };
        if kind == EventKind::Install && draws.duplicate {
            let resent_ms = delivery_ms + (draws.retry_ms as i64).max(1);
            self.push(SimEvent {
                delivery_ms: resent_ms,
                delivery: Delivery::Duplicate,
                ..event.clone()
            });
        }
        if draws.malformed {
            let defect = match draws.defect {
                0 => Defect::Truncated,
                1 => Defect::NotObject,
                2 => Defect::NoCreative,
                3 => Defect::BadTime,
                _ => Defect::EmptyCampaign,
            };
            self.push(SimEvent { delivery: Delivery::Malformed(defect), ..event.clone() });
        }
        self.push(event);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};

    use super::*;

    const MINUTE: i64 = 60_000;

    fn settings(seed: u64) -> TrafficSettings {
        TrafficSettings { seed, rate_per_s: 300.0, ..TrafficSettings::default() }
    }

    fn run(settings: TrafficSettings, duration_ms: i64) -> Vec<SimEvent> {
        let end = settings.start_ms + duration_ms;
        let mut generator = Generator::new(settings).unwrap();
        std::iter::from_fn(|| generator.next_before(end)).collect()
    }

    #[test]
    fn same_seed_gives_the_same_events_and_another_seed_does_not() {
        let first = run(settings(11), 2 * MINUTE);
        assert!(first.len() > 30_000, "{}", first.len());
        assert_eq!(first, run(settings(11), 2 * MINUTE));
        let other = run(settings(12), 2 * MINUTE);
        assert_ne!(first.len(), 0);
        assert_ne!(first[..100], other[..100]);
    }

    #[test]
    fn pacing_does_not_change_the_sequence() {
        let whole = run(settings(5), MINUTE);
        let mut generator = Generator::new(settings(5)).unwrap();
        let start = generator.settings().start_ms;
        let mut paced = Vec::new();
        // Irregular steps, as a wall clock would give.
        for step in (1..).map(|i| start + i * 137) {
            while let Some(event) = generator.next_before(step.min(start + MINUTE)) {
                paced.push(event);
            }
            if step >= start + MINUTE {
                break;
            }
        }
        assert_eq!(whole, paced);
    }

    #[test]
    fn messages_come_in_delivery_order_within_their_lateness_class() {
        let events = run(settings(3), 3 * MINUTE);
        let bound = TrafficSettings::default().out_of_orderness_ms;
        assert!(events.windows(2).all(|w| w[0].delivery_ms <= w[1].delivery_ms));
        let mut out_of_order = 0;
        let mut newest = i64::MIN;
        for event in &events {
            let after = event.delivery_ms - event.event_time_ms;
            match event.delivery {
                Delivery::OnTime => assert!((0..bound).contains(&after), "{event:?}"),
                Delivery::Late => assert!(after >= bound + bound / 2, "{event:?}"),
                _ => {}
            }
            if event.event_time_ms < newest {
                out_of_order += 1;
            }
            newest = newest.max(event.event_time_ms);
        }
        assert!(out_of_order > events.len() / 4, "{out_of_order} of {}", events.len());
    }

    #[test]
    fn shares_of_each_kind_of_message_match_the_settings() {
        let events = run(settings(9), 5 * MINUTE);
        let count = |wanted: fn(&SimEvent) -> bool| events.iter().filter(|e| wanted(e)).count();
        let countable = count(SimEvent::is_countable) as f64;
        let per_s = countable / 300.0;
        // The first minutes are mostly the evening peak of a day starting at 10:00 UTC.
        assert!((200.0..400.0).contains(&per_s), "{per_s} events/s");
        let installs = count(|e| e.kind == EventKind::Install && e.is_countable()) as f64;
        let impressions = countable - installs;
        let ipm = installs * 1000.0 / impressions;
        assert!((10.0..80.0).contains(&ipm), "overall IPM {ipm}");
        let duplicates = count(|e| e.delivery == Delivery::Duplicate) as f64;
        assert!((0.015..0.05).contains(&(duplicates / installs)), "{duplicates} / {installs}");
        let malformed = count(|e| matches!(e.delivery, Delivery::Malformed(_))) as f64;
        assert!((0.001..0.004).contains(&(malformed / countable)), "{malformed}");
        let late = count(|e| e.delivery == Delivery::Late) as f64;
        assert!((0.0003..0.002).contains(&(late / countable)), "{late}");
        // Duplicates repeat an id sent before; countable ids are unique.
        let mut ids = HashSet::new();
        for event in events.iter().filter(|e| e.is_countable()) {
            assert!(ids.insert(&event.event_id), "{event:?}");
        }
        for event in events.iter().filter(|e| e.delivery == Delivery::Duplicate) {
            assert!(ids.contains(&event.event_id));
        }
    }

    #[test]
    fn impressions_are_heavy_tailed_over_creatives() {
        let events = run(settings(4), 2 * MINUTE);
        let mut per_creative: HashMap<u32, usize> = HashMap::new();
        for event in events.iter().filter(|e| e.kind == EventKind::Impression) {
            *per_creative.entry(event.creative).or_default() += 1;
        }
        let mut volumes: Vec<usize> = per_creative.into_values().collect();
        volumes.sort_unstable_by(|a, b| b.cmp(a));
        let total: usize = volumes.iter().sum();
        let head: usize = volumes[..volumes.len() / 10].iter().sum();
        assert!(head * 2 > total, "the top tenth of creatives: {head} of {total} impressions");
    }

    #[test]
    fn a_drop_removes_that_share_of_installs_after_its_time_and_nothing_else() {
        let plain = TrafficSettings { rate_per_s: 2000.0, ..settings(21) };
        let creative = "cr-01-1";
        let at = Duration::from_secs(60);
        let dropped = TrafficSettings {
            incidents: vec![Incident::Drop { creative_id: creative.into(), factor: 0.25, at }],
            ..plain.clone()
        };
        let (before, after) = (run(plain.clone(), 4 * MINUTE), run(dropped, 4 * MINUTE));
        let index = Generator::new(plain.clone()).unwrap().catalogue().creative(creative).unwrap();
        let drop_ms = plain.start_ms + MINUTE;
        let is_target_install = |e: &&SimEvent| {
            e.creative as usize == index && e.kind == EventKind::Install && e.is_countable()
        };
        let late_installs = |events: &[SimEvent]| {
            events.iter().filter(is_target_install).filter(|e| e.event_time_ms >= drop_ms).count()
        };
        let (all, kept) = (late_installs(&before) as f64, late_installs(&after) as f64);
        assert!(all > 200.0, "{all} installs is too few to judge");
        // Binomial thinning: within four standard deviations of the factor.
        let tolerance = 4.0 * (0.25 * 0.75 / all).sqrt();
        assert!((kept / all - 0.25).abs() < tolerance, "kept {kept} of {all}");
        // Every other message is identical: the drop only removes.
        let others = |events: &[SimEvent]| -> Vec<SimEvent> {
            events
                .iter()
                .filter(|e| !(e.creative as usize == index && e.kind == EventKind::Install))
                .cloned()
                .collect()
        };
        assert_eq!(others(&before), others(&after));
    }

    #[test]
    fn a_stopped_campaign_sends_no_impressions_after_its_time() {
        let stop = Incident::Stop { campaign_id: "c-02".into(), at: Duration::from_secs(30) };
        let settings = TrafficSettings { incidents: vec![stop], ..settings(8) };
        let start = settings.start_ms;
        let mut generator = Generator::new(settings).unwrap();
        let campaign: HashSet<u32> = (0..generator.catalogue().creatives.len() as u32)
            .filter(|i| generator.catalogue().creatives[*i as usize].campaign_id == "c-02")
            .collect();
        let events: Vec<SimEvent> =
            std::iter::from_fn(|| generator.next_before(start + 2 * MINUTE)).collect();
        let impressions = |from: i64, to: i64| {
            events
                .iter()
                .filter(|e| campaign.contains(&e.creative) && e.kind == EventKind::Impression)
                .filter(|e| (from..to).contains(&e.event_time_ms))
                .count()
        };
        assert!(impressions(start, start + 30_000) > 100);
        assert_eq!(impressions(start + 30_000, start + 2 * MINUTE), 0);
    }

    #[test]
    fn unknown_incident_targets_are_refused() {
        let drop = Incident::Drop { creative_id: "cr-x".into(), factor: 0.5, at: Duration::ZERO };
        let error = Generator::new(TrafficSettings { incidents: vec![drop], ..settings(1) });
        assert_eq!(error.unwrap_err(), SettingsError::UnknownCreative("cr-x".into()));
    }
}
