//! What the simulated market looks like: campaigns and creatives with heavy-tailed volume and
//! per-format IPM, the daily traffic curve, and scripted incidents (a broken store page, a
//! paused campaign). Pure data derived from a seed; turning it into events is `generate`'s job.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::random::{Purpose, Random};

/// How an ad is shown, which sets the range its IPM is drawn from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdFormat {
    Banner,
    Native,
    Interstitial,
    Playable,
    RewardedVideo,
}

impl AdFormat {
    /// Formats with their share of creatives.
    const MIX: [(AdFormat, f64); 5] = [
        (AdFormat::Banner, 0.25),
        (AdFormat::Native, 0.20),
        (AdFormat::Interstitial, 0.20),
        (AdFormat::Playable, 0.15),
        (AdFormat::RewardedVideo, 0.20),
    ];

    /// The typical IPM range of the format.
    pub fn ipm_range(self) -> (f64, f64) {
        match self {
            AdFormat::Banner => (2.0, 8.0),
            AdFormat::Native => (5.0, 15.0),
            AdFormat::Interstitial => (10.0, 25.0),
            AdFormat::Playable => (15.0, 35.0),
            AdFormat::RewardedVideo => (20.0, 50.0),
        }
    }

    /// Short name for listings.
    pub fn name(self) -> &'static str {
        match self {
            AdFormat::Banner => "banner",
            AdFormat::Native => "native",
            AdFormat::Interstitial => "interstitial",
            AdFormat::Playable => "playable",
            AdFormat::RewardedVideo => "rewarded_video",
        }
    }
}

/// IPM range of the rare creatives that far outperform their format.
const HIT_IPM: (f64, f64) = (60.0, 150.0);
/// Share of creatives that are such hits.
const HIT_SHARE: f64 = 0.05;
/// Zipf exponents: campaign budgets, and creatives within a campaign. Above 1, the head takes
/// most of the traffic, as ad servers do once they find the winners.
const CAMPAIGN_ZIPF: f64 = 1.3;
const CREATIVE_ZIPF: f64 = 1.5;

/// One creative of the catalogue.
#[derive(Debug, Clone, PartialEq)]
pub struct Creative {
    pub campaign_id: String,
    pub creative_id: String,
    pub format: AdFormat,
    /// True installs per thousand impressions before any incident.
    pub ipm: f64,
    /// Share of all impressions; the catalogue's weights sum to 1.
    pub weight: f64,
}

/// Every campaign and creative of a run. Campaign `c-01` is the largest, and within a
/// campaign its first creative is the largest, so that incidents are easy to aim.
#[derive(Debug, Clone, PartialEq)]
pub struct Catalogue {
    pub creatives: Vec<Creative>,
}

impl Catalogue {
    /// `campaigns` campaigns of 1 to `max_creatives` creatives each, drawn from `seed`.
    pub fn new(seed: u64, campaigns: usize, max_creatives: usize) -> Catalogue {
        let mut random = Random::new(seed, Purpose::Catalogue, 0);
        let width = campaigns.to_string().len().max(2);
        let mut creatives = Vec::new();
        for campaign in 1..=campaigns {
            let count = 1 + random.below(max_creatives.max(1) as u64) as usize;
            let campaign_weight = 1.0 / libm::pow(campaign as f64, CAMPAIGN_ZIPF);
            let norm: f64 = (1..=count).map(|j| 1.0 / libm::pow(j as f64, CREATIVE_ZIPF)).sum();
            for creative in 1..=count {
                let format = pick_format(random.unit());
                let (low, high) =
                    if random.chance(HIT_SHARE) { HIT_IPM } else { format.ipm_range() };
                creatives.push(Creative {
                    campaign_id: format!("c-{campaign:0width$}"),
                    creative_id: format!("cr-{campaign:0width$}-{creative}"),
                    format,
                    ipm: random.between(low, high),
                    weight: campaign_weight / libm::pow(creative as f64, CREATIVE_ZIPF) / norm,
                });
            }
        }
        let total: f64 = creatives.iter().map(|c| c.weight).sum();
        for creative in &mut creatives {
            creative.weight /= total;
        }
        Catalogue { creatives }
    }

    /// Index of the creative with id `creative_id`.
    pub fn creative(&self, creative_id: &str) -> Option<usize> {
        self.creatives.iter().position(|c| c.creative_id == creative_id)
    }

    /// Whether any creative belongs to `campaign_id`.
    pub fn has_campaign(&self, campaign_id: &str) -> bool {
        self.creatives.iter().any(|c| c.campaign_id == campaign_id)
    }

    /// Impression-weighted mean install probability (installs per impression).
    pub fn mean_install_probability(&self) -> f64 {
        self.creatives.iter().map(|c| c.weight * c.ipm / 1000.0).sum()
    }
}

fn pick_format(unit: f64) -> AdFormat {
    let mut left = unit;
    for (format, share) in AdFormat::MIX {
        if left < share {
            return format;
        }
        left -= share;
    }
    AdFormat::RewardedVideo
}

/// Relative traffic by UTC hour of a typical mobile day: a trough before dawn, a climb through
/// the morning and a peak in the evening. Normalised to a mean of 1 when used.
const HOURLY_TRAFFIC: [f64; 24] = [
    1.00, 0.75, 0.55, 0.42, 0.38, 0.42, 0.55, 0.75, 0.90, 1.00, 1.05, 1.10, //
    1.15, 1.12, 1.08, 1.08, 1.12, 1.20, 1.30, 1.40, 1.45, 1.40, 1.30, 1.15,
];

const DAY_MS: i64 = 86_400_000;

/// The daily traffic cycle, possibly compressed so that a simulated day passes in minutes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DailyCycle {
    /// Simulated time passes this many times faster than event time (24h / day length).
    pub time_scale: f64,
    /// 0 for flat traffic, 1 for the full curve.
    pub amplitude: f64,
    /// Simulated time of day at `start_ms`, in milliseconds.
    pub start_of_day_ms: i64,
    pub start_ms: i64,
}

impl DailyCycle {
    /// A cycle whose simulated day lasts `day_length` of event time, starting at the UTC time
    /// of day of `start_ms`.
    pub fn new(start_ms: i64, day_length: Duration, amplitude: f64) -> DailyCycle {
        let day_length_ms = (day_length.as_millis() as i64).max(1);
        DailyCycle {
            time_scale: DAY_MS as f64 / day_length_ms as f64,
            amplitude: amplitude.clamp(0.0, 1.0),
            start_of_day_ms: start_ms.rem_euclid(DAY_MS),
            start_ms,
        }
    }

    /// Traffic multiplier at event time `time_ms`; its mean over a day is 1.
    pub fn multiplier(&self, time_ms: i64) -> f64 {
        let simulated = (time_ms - self.start_ms) as f64 * self.time_scale;
        let day_ms = (self.start_of_day_ms as f64 + simulated).rem_euclid(DAY_MS as f64);
        let hour = day_ms / 3_600_000.0;
        let (index, fraction) = (hour as usize % 24, hour.fract());
        let mean = HOURLY_TRAFFIC.iter().sum::<f64>() / 24.0;
        let here = HOURLY_TRAFFIC[index];
        let next = HOURLY_TRAFFIC[(index + 1) % 24];
        let profile = (here + (next - here) * fraction) / mean;
        1.0 + self.amplitude * (profile - 1.0)
    }
}

/// A scripted change of traffic, at an offset from the start of the run (event time).
#[derive(Debug, Clone, PartialEq)]
pub enum Incident {
    /// From `at`, the creative's installs are kept with probability `factor` (a broken store
    /// page loses installs whenever the impression was).
    Drop { creative_id: String, factor: f64, at: Duration },
    /// From `at`, the campaign serves no impressions; installs of earlier impressions still
    /// arrive, as they do when a campaign is paused.
    Stop { campaign_id: String, at: Duration },
}

/// An incident flag that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{text}`: {reason}")]
pub struct IncidentError {
    text: String,
    reason: String,
}

fn incident_error(text: &str, reason: &str) -> IncidentError {
    IncidentError { text: text.into(), reason: reason.into() }
}

fn split_offset<'a>(text: &'a str, form: &str) -> Result<(&'a str, Duration), IncidentError> {
    let (head, offset) =
        text.rsplit_once('@').ok_or_else(|| incident_error(text, &format!("expected {form}")))?;
    let at = humantime::parse_duration(offset.trim())
        .map_err(|e| incident_error(text, &format!("offset `{offset}` is not a duration: {e}")))?;
    Ok((head.trim(), at))
}

/// `CREATIVE=FACTOR@OFFSET`, as `--drop cr-01-1=0.5@10m` writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct DropSpec(pub Incident);

impl FromStr for DropSpec {
    type Err = IncidentError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let form = "CREATIVE=FACTOR@OFFSET, like cr-01-1=0.5@10m";
        let (head, at) = split_offset(text, form)?;
        let (creative, factor) = head
            .split_once('=')
            .ok_or_else(|| incident_error(text, &format!("expected {form}")))?;
        let factor: f64 = factor
            .trim()
            .parse()
            .ok()
            .filter(|f: &f64| (0.0..=1.0).contains(f))
            .ok_or_else(|| incident_error(text, "the factor must be a number from 0 to 1"))?;
        if creative.trim().is_empty() {
            return Err(incident_error(text, "the creative id is empty"));
        }
        Ok(DropSpec(Incident::Drop { creative_id: creative.trim().into(), factor, at }))
    }
}

/// `CAMPAIGN@OFFSET`, as `--stop c-03@15m` writes it.
#[derive(Debug, Clone, PartialEq)]
pub struct StopSpec(pub Incident);

impl FromStr for StopSpec {
    type Err = IncidentError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (campaign, at) = split_offset(text, "CAMPAIGN@OFFSET, like c-03@15m")?;
        if campaign.is_empty() {
            return Err(incident_error(text, "the campaign id is empty"));
        }
        Ok(StopSpec(Incident::Stop { campaign_id: campaign.into(), at }))
    }
}

impl fmt::Display for Incident {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Incident::Drop { creative_id, factor, at } => write!(
                f,
                "{creative_id}: installs x{factor} from +{}",
                humantime::format_duration(*at)
            ),
            Incident::Stop { campaign_id, at } => {
                write!(f, "{campaign_id}: traffic stops at +{}", humantime::format_duration(*at))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue_is_heavy_tailed_and_ordered_by_volume() {
        let catalogue = Catalogue::new(7, 20, 8);
        let weights: Vec<f64> = catalogue.creatives.iter().map(|c| c.weight).collect();
        assert!((weights.iter().sum::<f64>() - 1.0).abs() < 1e-9);
        let mut sorted = weights.clone();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let top_tenth: f64 = sorted[..sorted.len() / 10].iter().sum();
        assert!(top_tenth > 0.4, "the top 10% of creatives take {top_tenth} of traffic");
        assert_eq!(catalogue.creatives[0].creative_id, "cr-01-1");
        assert_eq!(sorted[0], weights[0]);
        for creative in &catalogue.creatives {
            let (low, high) = creative.format.ipm_range();
            let in_format = (low..high).contains(&creative.ipm);
            assert!(in_format || (HIT_IPM.0..HIT_IPM.1).contains(&creative.ipm), "{creative:?}");
        }
        assert_eq!(catalogue, Catalogue::new(7, 20, 8));
        assert_ne!(catalogue, Catalogue::new(8, 20, 8));
    }

    #[test]
    fn daily_cycle_averages_one_and_peaks_in_the_evening() {
        let cycle = DailyCycle::new(0, Duration::from_secs(86_400), 1.0);
        let samples: Vec<f64> = (0..24 * 60).map(|m| cycle.multiplier(m * 60_000)).collect();
        let mean = samples.iter().sum::<f64>() / samples.len() as f64;
        assert!((mean - 1.0).abs() < 1e-3, "{mean}");
        assert!(cycle.multiplier(20 * 3_600_000) > 1.3);
        assert!(cycle.multiplier(4 * 3_600_000) < 0.5);
        // A ten-minute day reaches the evening peak 20/24 of the way through.
        let fast = DailyCycle::new(0, Duration::from_secs(600), 1.0);
        assert_eq!(fast.multiplier(500_000), cycle.multiplier(20 * 3_600_000));
        let flat = DailyCycle::new(0, Duration::from_secs(600), 0.0);
        assert_eq!(flat.multiplier(123_456), 1.0);
    }

    #[test]
    fn incident_flags_parse_and_explain_mistakes() {
        let drop: DropSpec = "cr-01-1=0.5@10m".parse().unwrap();
        assert_eq!(
            drop.0,
            Incident::Drop {
                creative_id: "cr-01-1".into(),
                factor: 0.5,
                at: Duration::from_secs(600)
            }
        );
        let stop: StopSpec = "c-03@1h30m".parse().unwrap();
        assert_eq!(
            stop.0,
            Incident::Stop { campaign_id: "c-03".into(), at: Duration::from_secs(5400) }
        );
        assert!("cr-1=2@1m".parse::<DropSpec>().unwrap_err().to_string().contains("0 to 1"));
        assert!("cr-1=0.5".parse::<DropSpec>().unwrap_err().to_string().contains("expected"));
        assert!("c-1@soon".parse::<StopSpec>().unwrap_err().to_string().contains("duration"));
    }
}
