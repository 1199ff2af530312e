//! IPM arithmetic: installs per thousand impressions and its 95% Wilson score interval.
//! Pure functions of window counts; where the values are published is left to others.

use crate::window::Counts;

/// The two-sided 95% quantile of the standard normal distribution.
const Z_95: f64 = 1.959_963_984_540_054;

/// IPM of one window with its confidence interval, all `None` when there were no impressions.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ipm {
    /// installs × 1000 / impressions.
    pub value: Option<f64>,
    /// Lower bound of the 95% Wilson score interval, per mille.
    pub low: Option<f64>,
    /// Upper bound of the 95% Wilson score interval, per mille.
    pub high: Option<f64>,
}

impl Ipm {
    /// IPM and interval of `counts`.
    ///
    /// An install may be credited to an impression from before the window, so installs can
    /// exceed impressions. The interval is for a proportion and tops out at 1000: it is
    /// computed with installs capped at impressions, while the IPM itself is not capped.
    pub fn of(counts: Counts) -> Ipm {
        if counts.impressions == 0 {
            return Ipm { value: None, low: None, high: None };
        }
        let trials = counts.impressions as f64;
        let successes = counts.installs.min(counts.impressions) as f64;
        let (low, high) = wilson_interval(successes, trials, Z_95);
        Ipm {
            value: Some(counts.installs as f64 * 1000.0 / trials),
            low: Some(low * 1000.0),
            high: Some(high * 1000.0),
        }
    }
}

/// Wilson score interval of a binomial proportion `successes / trials` (trials > 0).
fn wilson_interval(successes: f64, trials: f64, z: f64) -> (f64, f64) {
    let p = successes / trials;
    let z2 = z * z;
    let denominator = 1.0 + z2 / trials;
    let centre = (p + z2 / (2.0 * trials)) / denominator;
    let spread = z / denominator * (p * (1.0 - p) / trials + z2 / (4.0 * trials * trials)).sqrt();
    // The bounds are exactly 0 and 1 at the extremes; rounding would otherwise leave 1e-15s.
    let low = if successes == 0.0 { 0.0 } else { centre - spread };
    let high = if successes == trials { 1.0 } else { centre + spread };
    (low, high)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ipm(impressions: u64, installs: u64) -> Ipm {
        Ipm::of(Counts { impressions, installs })
    }

    fn close(actual: Option<f64>, expected: f64) -> bool {
        actual.is_some_and(|a| (a - expected).abs() < 1e-3)
    }

    #[test]
    fn no_impressions_gives_no_ipm_and_no_interval() {
        assert_eq!(ipm(0, 3), Ipm { value: None, low: None, high: None });
    }

    #[test]
    fn twenty_installs_in_a_thousand_impressions_match_the_textbook_interval() {
        // Wilson interval for 20/1000 at 95%: [0.0129837, 0.0306900].
        let result = ipm(1000, 20);
        assert!(close(result.value, 20.0));
        assert!(close(result.low, 12.9837), "{result:?}");
        assert!(close(result.high, 30.6900), "{result:?}");
    }

    #[test]
    fn zero_installs_give_a_zero_lower_bound() {
        // Wilson interval for 0/100 at 95%: [0, 0.0369935].
        let result = ipm(100, 0);
        assert_eq!(result.value, Some(0.0));
        assert_eq!(result.low, Some(0.0));
        assert!(close(result.high, 36.9935), "{result:?}");
    }

    #[test]
    fn all_impressions_converting_gives_an_upper_bound_of_one_thousand() {
        // Wilson interval for 10/10 at 95%: [0.722467, 1].
        let result = ipm(10, 10);
        assert!(close(result.low, 722.467), "{result:?}");
        assert_eq!(result.high, Some(1000.0));
    }

    #[test]
    fn more_installs_than_impressions_stay_defined() {
        let result = ipm(4, 9);
        assert_eq!(result.value, Some(2250.0));
        let (low, high) = (result.low.unwrap(), result.high.unwrap());
        assert!(low.is_finite() && high.is_finite() && low <= high && high <= 1000.0);
        assert_eq!(Ipm::of(Counts { impressions: 4, installs: 4 }).low, result.low);
    }
}
