//! The pacing of a replay: a pure function from the night's visit times to a send
//! offset (from the start of the replay) for every visit and every detector burst.
//!
//! * [`Pacing::Original`] keeps the night's rhythm: visit `k` is sent at
//!   `(t_k − t_0) × 86400 / speed` seconds, `t` the visit's time (MJD TAI): for an
//!   archived night its earliest DiaSource `midpointMjdTai` ([`Schedule::new`]), for a
//!   night of raw images (`apflow run --raw`) its shutter open ([`Schedule::from_times`]
//!   with [`VisitTime`]). At speed 1 the inter-visit spacing of the original night is
//!   reproduced; at speed 10 it is a tenth.
//! * [`Pacing::Max`]: every offset is zero — as fast as the sink takes the alerts.
//! * [`Pacing::Cadence`]: visit `k` (of those selected) at `k × every`, whatever the
//!   original times, like Rubin's alert stream simulator (a visit every ~37 s).
//!
//! Within a visit the alerts go out as one burst per detector (ascending detector
//! number). With a detector spread `s` the `j`-th of `n` bursts is offset by
//! `s × j / n`, as detectors finish processing at slightly different times; with
//! `s = 0` (the default) all bursts of a visit are due at the visit's offset and are
//! sent back to back.
//!
//! The selection comes first: visits whose time lies in the window `[from, to)` (MJD
//! TAI), then at most `limit_visits` of them; offsets count from the first selected
//! visit.

use std::time::Duration;

use chrono::{DateTime, NaiveDateTime, Utc};
use thiserror::Error;

use crate::night::VisitAlerts;

/// Seconds per day.
const DAY: f64 = 86_400.0;

/// Why a pacing or window setting is refused.
#[derive(Debug, Error, PartialEq)]
#[non_exhaustive]
pub enum ScheduleError {
    /// `--speed` is not a positive finite factor or `max`.
    #[error("speed {0:?} is not a positive number (1, 10, x10, 0.5) or `max`")]
    Speed(String),
    /// `--cadence` is not a positive duration.
    #[error("cadence {0:?} is not a positive duration such as 37s")]
    Cadence(String),
    /// A time is neither an MJD (TAI) nor an ISO 8601 UTC date-time.
    #[error("time {0:?} is neither an MJD (TAI, e.g. 61000.25) nor an ISO 8601 UTC time")]
    Time(String),
    /// The window is empty (`from` ≥ `to`).
    #[error("time window [{from}, {to}) is empty")]
    EmptyWindow {
        /// Start, MJD TAI.
        from: f64,
        /// End, MJD TAI.
        to: f64,
    },
}

/// How visits are spaced.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Pacing {
    /// The original spacing divided by `speed` (> 0).
    Original {
        /// Speed factor: 1 = real time, 10 = ten times faster.
        speed: f64,
    },
    /// No waiting at all.
    Max,
    /// One visit every `every`.
    Cadence {
        /// Time between visits.
        every: Duration,
    },
}

impl Default for Pacing {
    fn default() -> Self {
        Self::Original { speed: 1.0 }
    }
}

impl Pacing {
    /// Parses `--speed`: a factor (`10`, `x10`, `×10`, `0.5`) or `max`.
    pub fn speed(s: &str) -> Result<Self, ScheduleError> {
        let t = s.trim();
        if t.eq_ignore_ascii_case("max") {
            return Ok(Self::Max);
        }
        let t = t
            .strip_prefix('x')
            .or_else(|| t.strip_prefix('×'))
            .unwrap_or(t);
        match t.parse::<f64>() {
            Ok(speed) if speed.is_finite() && speed > 0.0 => Ok(Self::Original { speed }),
            _ => Err(ScheduleError::Speed(s.to_string())),
        }
    }

    /// Parses `--cadence`: a human-readable duration (`37s`, `1m 5s`, `500ms`).
    pub fn cadence(s: &str) -> Result<Self, ScheduleError> {
        match parse_duration(s) {
            Some(every) if !every.is_zero() => Ok(Self::Cadence { every }),
            _ => Err(ScheduleError::Cadence(s.to_string())),
        }
    }
}

/// A duration as `37s`, `1m 30s`, `500ms` or plain seconds (`37`, `2.5`); `None` when
/// it is none of these (or negative).
pub fn parse_duration(s: &str) -> Option<Duration> {
    if let Ok(x) = s.trim().parse::<f64>() {
        return (x.is_finite() && x >= 0.0).then(|| Duration::from_secs_f64(x));
    }
    humantime::parse_duration(s.trim()).ok()
}

/// Parses a time for `--from`/`--to`: an MJD in TAI (`61000.25`) or an ISO 8601 /
/// RFC 3339 UTC date-time (`2026-11-23T03:00:00Z`; without a zone, UTC is assumed),
/// converted to MJD TAI with the leap-second table of `apflow_core::time`.
pub fn parse_time(s: &str) -> Result<f64, ScheduleError> {
    let t = s.trim();
    if let Ok(mjd) = t.parse::<f64>() {
        return if mjd.is_finite() {
            Ok(mjd)
        } else {
            Err(ScheduleError::Time(s.to_string()))
        };
    }
    let utc: DateTime<Utc> = if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        d.with_timezone(&Utc)
    } else if let Ok(n) = NaiveDateTime::parse_from_str(t, "%Y-%m-%dT%H:%M:%S%.f") {
        n.and_utc()
    } else {
        return Err(ScheduleError::Time(s.to_string()));
    };
    apflow_core::time::MjdTai::from_utc(utc)
        .map(|m| m.0)
        .map_err(|_| ScheduleError::Time(s.to_string()))
}

/// Everything that decides the schedule.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ScheduleOptions {
    /// Visit spacing.
    pub pacing: Pacing,
    /// Spread of a visit's detector bursts (0: all at the visit's offset).
    pub detector_spread: Duration,
    /// Only visits at or after this MJD TAI.
    pub from: Option<f64>,
    /// Only visits before this MJD TAI.
    pub to: Option<f64>,
    /// At most this many visits (after the window).
    pub limit_visits: Option<usize>,
}

/// When one detector burst is due.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct BurstSlot {
    /// Index into the visit's `detectors`.
    pub detector_index: usize,
    /// Send offset from the start of the replay.
    pub offset: Duration,
}

/// When one visit is due.
#[derive(Clone, Debug, PartialEq)]
pub struct VisitSlot {
    /// Index into the night's `visits`.
    pub visit_index: usize,
    /// Send offset of the visit (its first burst) from the start of the replay.
    pub offset: Duration,
    /// Its bursts, in sending order.
    pub bursts: Vec<BurstSlot>,
}

/// The send plan of a replay.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Schedule {
    /// Visits in sending order.
    pub visits: Vec<VisitSlot>,
}

/// One visit to plan, whatever is replayed: its time and its number of detector
/// bursts. An archived night's visits ([`VisitAlerts`]) give their earliest DiaSource
/// `midpointMjdTai`; a night of raw images gives each visit's shutter open.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VisitTime {
    /// The visit's time, MJD TAI: the window selects on it and original pacing keeps
    /// its spacing.
    pub mjd_tai: f64,
    /// Detector bursts of the visit.
    pub bursts: usize,
}

impl Schedule {
    /// Builds the plan for `visits` (in time order, as [`crate::night::Night`] keeps
    /// them).
    pub fn new(visits: &[VisitAlerts], opts: &ScheduleOptions) -> Result<Self, ScheduleError> {
        let times: Vec<VisitTime> = visits
            .iter()
            .map(|v| VisitTime {
                mjd_tai: v.midpoint_mjd_tai,
                bursts: v.detectors.len(),
            })
            .collect();
        Self::from_times(&times, opts)
    }

    /// Builds the plan for visits given by their times (in time order); the slots'
    /// `visit_index` index `visits`.
    pub fn from_times(visits: &[VisitTime], opts: &ScheduleOptions) -> Result<Self, ScheduleError> {
        if let (Some(from), Some(to)) = (opts.from, opts.to)
            && from >= to
        {
            return Err(ScheduleError::EmptyWindow { from, to });
        }
        let selected: Vec<usize> = visits
            .iter()
            .enumerate()
            .filter(|(_, v)| {
                opts.from.is_none_or(|f| v.mjd_tai >= f) && opts.to.is_none_or(|t| v.mjd_tai < t)
            })
            .map(|(i, _)| i)
            .take(opts.limit_visits.unwrap_or(usize::MAX))
            .collect();
        let t0 = selected.first().map_or(0.0, |&i| visits[i].mjd_tai);
        let slots = selected
            .iter()
            .enumerate()
            .map(|(k, &i)| {
                let offset = match opts.pacing {
                    Pacing::Original { speed } => {
                        Duration::from_secs_f64(((visits[i].mjd_tai - t0) * DAY / speed).max(0.0))
                    }
                    Pacing::Max => Duration::ZERO,
                    Pacing::Cadence { every } => every.saturating_mul(k as u32),
                };
                let n = visits[i].bursts.max(1);
                let spread = match opts.pacing {
                    Pacing::Max => Duration::ZERO,
                    _ => opts.detector_spread,
                };
                VisitSlot {
                    visit_index: i,
                    offset,
                    bursts: (0..visits[i].bursts)
                        .map(|j| BurstSlot {
                            detector_index: j,
                            offset: offset + spread.mul_f64(j as f64 / n as f64),
                        })
                        .collect(),
                }
            })
            .collect();
        Ok(Self { visits: slots })
    }

    /// Alerts the plan sends.
    pub fn alert_count(&self, visits: &[VisitAlerts]) -> usize {
        self.visits
            .iter()
            .map(|s| visits[s.visit_index].alert_count())
            .sum()
    }
}

/// How far the achieved spacing of consecutive visits was from the planned one.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SpacingError {
    /// Largest |achieved − planned| spacing, seconds.
    pub max_abs_s: f64,
    /// Mean |achieved − planned| spacing, seconds.
    pub mean_abs_s: f64,
    /// Largest such error relative to a planned spacing > 0 (0.05 = 5 %).
    pub max_rel: f64,
}

impl SpacingError {
    /// From each visit's planned and achieved start (seconds from the replay's start,
    /// the same visits in the same order); zero for fewer than two visits.
    pub fn of(planned: &[f64], achieved: &[f64]) -> Self {
        let errors: Vec<(f64, f64)> = planned
            .windows(2)
            .zip(achieved.windows(2))
            .map(|(p, a)| {
                let plan = (p[1] - p[0]).max(0.0);
                (((a[1] - a[0]) - plan).abs(), plan)
            })
            .collect();
        if errors.is_empty() {
            return Self::default();
        }
        Self {
            max_abs_s: errors.iter().map(|e| e.0).fold(0.0, f64::max),
            mean_abs_s: errors.iter().map(|e| e.0).sum::<f64>() / errors.len() as f64,
            max_rel: errors
                .iter()
                .filter(|e| e.1 > 0.0)
                .map(|e| e.0 / e.1)
                .fold(0.0, f64::max),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::night::DetectorBurst;
    use apflow_core::ids::{DetectorId, VisitId};

    fn visits(times_s: &[f64], detectors: usize) -> Vec<VisitAlerts> {
        times_s
            .iter()
            .enumerate()
            .map(|(k, t)| VisitAlerts {
                visit: VisitId(2026112200000 + k as u64),
                midpoint_mjd_tai: 61000.0 + t / DAY,
                detectors: (0..detectors)
                    .map(|d| DetectorBurst {
                        detector: DetectorId(d as u16),
                        alerts: Vec::new(),
                    })
                    .collect(),
            })
            .collect()
    }

    fn offsets(s: &Schedule) -> Vec<f64> {
        s.visits.iter().map(|v| v.offset.as_secs_f64()).collect()
    }

    #[test]
    fn original_pacing_divides_the_spacing_by_the_speed() {
        let v = visits(&[0.0, 40.0, 75.0, 300.0], 2);
        let opts = |speed| ScheduleOptions {
            pacing: Pacing::Original { speed },
            ..Default::default()
        };
        let s1 = Schedule::new(&v, &opts(1.0)).unwrap();
        let s10 = Schedule::new(&v, &opts(10.0)).unwrap();
        for (got, want) in offsets(&s1).iter().zip([0.0, 40.0, 75.0, 300.0]) {
            assert!((got - want).abs() < 1e-4, "{got} vs {want}");
        }
        for (got, want) in offsets(&s10).iter().zip([0.0, 4.0, 7.5, 30.0]) {
            assert!((got - want).abs() < 1e-5, "{got} vs {want}");
        }
        // Bursts of a visit share its offset without a spread.
        assert!(
            s1.visits[2]
                .bursts
                .iter()
                .all(|b| b.offset == s1.visits[2].offset)
        );
        let max = Schedule::new(
            &v,
            &ScheduleOptions {
                pacing: Pacing::Max,
                detector_spread: Duration::from_secs(3),
                ..Default::default()
            },
        )
        .unwrap();
        assert!(
            max.visits
                .iter()
                .flat_map(|v| &v.bursts)
                .all(|b| b.offset.is_zero())
        );
    }

    #[test]
    fn cadence_ignores_original_times_and_spreads_bursts() {
        let v = visits(&[0.0, 5.0, 500.0, 501.0], 4);
        let s = Schedule::new(
            &v,
            &ScheduleOptions {
                pacing: Pacing::cadence("37s").unwrap(),
                detector_spread: Duration::from_secs(2),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(offsets(&s), vec![0.0, 37.0, 74.0, 111.0]);
        let b: Vec<f64> = s.visits[1]
            .bursts
            .iter()
            .map(|b| b.offset.as_secs_f64())
            .collect();
        assert_eq!(b, vec![37.0, 37.5, 38.0, 38.5]);
        let spacings: Vec<f64> = s
            .visits
            .windows(2)
            .map(|w| w[1].offset.as_secs_f64() - w[0].offset.as_secs_f64())
            .collect();
        assert_eq!(spacings, vec![37.0, 37.0, 37.0]);
    }

    #[test]
    fn window_and_limit_select_visits_and_offsets_start_at_the_first() {
        let v = visits(&[0.0, 40.0, 80.0, 120.0, 160.0], 1);
        let s = Schedule::new(
            &v,
            &ScheduleOptions {
                from: Some(61000.0 + 40.0 / DAY),
                to: Some(61000.0 + 160.0 / DAY),
                limit_visits: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
        let idx: Vec<usize> = s.visits.iter().map(|v| v.visit_index).collect();
        assert_eq!(idx, vec![1, 2]);
        assert!(s.visits[0].offset.is_zero());
        assert!((s.visits[1].offset.as_secs_f64() - 40.0).abs() < 1e-4);
        // `to` is exclusive: the visit at 160 s is out even without the limit.
        let s = Schedule::new(
            &v,
            &ScheduleOptions {
                from: Some(61000.0 + 40.0 / DAY),
                to: Some(61000.0 + 160.0 / DAY),
                ..Default::default()
            },
        )
        .unwrap();
        assert_eq!(s.visits.len(), 3);
        assert_eq!(
            Schedule::new(
                &v,
                &ScheduleOptions {
                    from: Some(2.0),
                    to: Some(1.0),
                    ..Default::default()
                }
            ),
            Err(ScheduleError::EmptyWindow { from: 2.0, to: 1.0 })
        );
    }

    #[test]
    fn settings_parse_and_bad_ones_are_refused() {
        assert_eq!(Pacing::speed("max").unwrap(), Pacing::Max);
        assert_eq!(
            Pacing::speed("x10").unwrap(),
            Pacing::Original { speed: 10.0 }
        );
        assert_eq!(
            Pacing::speed("0.5").unwrap(),
            Pacing::Original { speed: 0.5 }
        );
        for bad in ["0", "-1", "fast", "inf", "NaN"] {
            assert!(Pacing::speed(bad).is_err(), "{bad}");
        }
        assert_eq!(
            Pacing::cadence("1m 5s").unwrap(),
            Pacing::Cadence {
                every: Duration::from_secs(65)
            }
        );
        assert_eq!(
            Pacing::cadence("500ms").unwrap(),
            Pacing::Cadence {
                every: Duration::from_millis(500)
            }
        );
        assert!(Pacing::cadence("0s").is_err());
        assert!(Pacing::cadence("37 parsecs").is_err());
        assert_eq!(parse_time("61000.25").unwrap(), 61000.25);
        // 2026-01-01T00:00:00Z is MJD 61041 UTC; TAI − UTC = 37 s.
        let t = parse_time("2026-01-01T00:00:00Z").unwrap();
        assert!((t - (61041.0 + 37.0 / DAY)).abs() < 1e-9, "{t}");
        assert_eq!(parse_time("2026-01-01T00:00:00").unwrap(), t);
        assert!(parse_time("yesterday").is_err());
    }
}
