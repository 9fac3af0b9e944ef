//! The night report (`apflow report`): how many alerts a night produced, per visit and
//! per detector, and — from per-detector records — how fast.
//!
//! # Inputs
//! * The alert archive's night ([`crate::night::load_night`]): alerts per visit and
//!   per detector.
//! * Optionally a JSON Lines file of [`DetectorRecord`]s, one per detector-visit,
//!   written by the pipeline (`apflow run`): the alert latency of the detector is
//!   `alerts_done_tai − readout_end_tai`, the time from the end of the readout to the
//!   last alert of the detector leaving the pipeline, to be compared with Rubin's
//!   60 s budget for alert distribution (the Science Requirements Document, LPM-17:
//!   OTT1 = 1 minute). Without an archive, the counts come from the records' `n_alerts`.
//!   Records of another night than the one reported on are left out.
//!
//! # Outputs ([`write_report`])
//! * `summary.json`: the whole [`NightReport`].
//! * `latency.png`: histogram of the detector latencies, with the 60 s budget as a red
//!   vertical line (when there are records).
//! * `alerts_per_visit.png`: alerts of each visit in time order.
//!
//! The plots are drawn with `plotters`' bitmap backend alone: apflow builds plotters
//! without a font stack, so they carry no text; the axes start at zero and the
//! scales are in `summary.json` (`latency.histogram`, `alerts_per_visit`).
//!
//! Percentiles are nearest-rank on the sorted values (index `round((n − 1) q)`), the
//! convention of the `apflow run` summary.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use apflow_core::ids::{DetectorId, VisitId};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use apflow_alert_dist::filter::service::{MatchLogTotals, read_matches_log};

use crate::night::{Night, NightError, load_night, pick_night};

pub use apflow_core::latency::{LATENCY_BUDGET_S, LatencySummary, quantile};

/// Seconds per day.
const DAY: f64 = 86_400.0;

/// Bins of the latency histogram.
const HISTOGRAM_BINS: usize = 40;

/// Why a report could not be made.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReportError {
    /// The night could not be read from the archive.
    #[error(transparent)]
    Night(#[from] NightError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A line of the records file is not a [`DetectorRecord`] (bad input).
    #[error("{path}:{line}: not a detector record: {reason}")]
    Record {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// The parser's message.
        reason: String,
    },
    /// A plot could not be drawn.
    #[error("{path}: plot: {reason}")]
    Plot {
        /// The file.
        path: PathBuf,
        /// What failed.
        reason: String,
    },
    /// Neither an archive, records nor a filter matches log were given.
    #[error("nothing to report: give an archive, a records file and/or a filter matches log")]
    NoInput,
}

/// What the pipeline did for one detector of one visit: one JSON line of the records
/// file `apflow report --records` reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorRecord {
    /// The visit.
    pub visit: VisitId,
    /// The detector.
    pub detector: DetectorId,
    /// End of the detector's readout, MJD TAI (days).
    pub readout_end_tai: f64,
    /// When the detector's last alert was handed on (sent or archived), MJD TAI.
    pub alerts_done_tai: f64,
    /// Alerts the detector produced.
    pub n_alerts: u64,
    /// Seconds spent in each stage, in pipeline order: `[["isr", 1.2], …]`.
    pub stages: Vec<(String, f64)>,
}

impl DetectorRecord {
    /// `alerts_done_tai − readout_end_tai`, seconds.
    pub fn latency_s(&self) -> f64 {
        (self.alerts_done_tai - self.readout_end_tai) * DAY
    }

    /// Appends the record as one JSON line (the records file's format).
    pub fn write_jsonl(&self, w: &mut impl Write) -> io::Result<()> {
        serde_json::to_writer(&mut *w, self)?;
        w.write_all(b"\n")
    }
}

/// Reads a JSON Lines file of records (blank lines are skipped); the error names the
/// first bad line.
pub fn read_records(path: &Path) -> Result<Vec<DetectorRecord>, ReportError> {
    let io_err = |source| ReportError::Io {
        path: path.to_owned(),
        source,
    };
    let reader = BufReader::new(File::open(path).map_err(io_err)?);
    let mut out = Vec::new();
    for (i, line) in reader.lines().enumerate() {
        let line = line.map_err(io_err)?;
        if line.trim().is_empty() {
            continue;
        }
        let r: DetectorRecord = serde_json::from_str(&line).map_err(|e| ReportError::Record {
            path: path.to_owned(),
            line: i + 1,
            reason: e.to_string(),
        })?;
        out.push(r);
    }
    Ok(out)
}

/// Alerts of one visit.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct VisitCount {
    /// The visit.
    pub visit: VisitId,
    /// Its time, MJD TAI: the earliest DiaSource midpoint (archive) or the earliest
    /// readout end (records).
    pub time_mjd_tai: f64,
    /// Alerts.
    pub alerts: u64,
    /// Detectors with alerts.
    pub detectors: usize,
    /// Per alert of the visit, seconds from the end of its detector's readout until
    /// the detector's alerts were handed on (from the records; `None` without them):
    /// the fraction within the 60 s budget and p50/p95/p98/max.
    pub latency: Option<LatencySummary>,
}

/// Alerts of one detector over the night.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DetectorCount {
    /// The detector.
    pub detector: DetectorId,
    /// Alerts.
    pub alerts: u64,
    /// Visits in which it had alerts.
    pub visits: usize,
}

/// A summary of a distribution.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Distribution {
    /// Values.
    pub count: usize,
    /// Smallest.
    pub min: f64,
    /// Median.
    pub p50: f64,
    /// Mean.
    pub mean: f64,
    /// Largest.
    pub max: f64,
}

impl Distribution {
    fn of(values: &[f64]) -> Option<Self> {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        Some(Self {
            count: v.len(),
            min: *v.first()?,
            p50: quantile(&v, 0.5),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            max: *v.last()?,
        })
    }
}

/// A histogram with equal bins from 0.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Histogram {
    /// Width of a bin, seconds.
    pub bin_width_s: f64,
    /// Counts per bin, from 0 s.
    pub counts: Vec<u64>,
}

/// Alert latency of the detectors against the budget.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyReport {
    /// Detector-visits measured.
    pub detectors: usize,
    /// The budget, seconds.
    pub budget_s: f64,
    /// Median latency, seconds.
    pub p50_s: f64,
    /// 90th percentile, seconds.
    pub p90_s: f64,
    /// 98th percentile, seconds.
    pub p98_s: f64,
    /// 99th percentile, seconds.
    pub p99_s: f64,
    /// Largest, seconds.
    pub max_s: f64,
    /// Fraction of detector-visits within the budget.
    pub within_budget: f64,
    /// Detector-visits over the budget.
    pub over_budget: usize,
    /// Median seconds of each stage, stages in the order first seen.
    pub stage_medians_s: Vec<(String, f64)>,
    /// Histogram of the latencies.
    pub histogram: Histogram,
}

/// The night report.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct NightReport {
    /// The night, when read from the archive.
    pub day_obs: Option<u32>,
    /// Alerts of the night.
    pub alerts: u64,
    /// Alerts per visit, in time order.
    pub visits: Vec<VisitCount>,
    /// Alerts per detector, ascending detector.
    pub detectors: Vec<DetectorCount>,
    /// The distribution of alerts per visit.
    pub alerts_per_visit: Option<Distribution>,
    /// Latency, when records were given.
    pub latency: Option<LatencyReport>,
    /// Filter matches per filter (forwarded alerts, visits, most in one visit), when a
    /// filtering service's matches log was given (`<out>/filter-matches.jsonl` of
    /// `apflow run --filters`, `apflow distribute --matches-log`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<MatchLogTotals>,
}

/// Seconds per stage over many detectors, stages in the order first seen.
#[derive(Debug, Default)]
pub struct StageTimes(Vec<(String, Vec<f64>)>);

impl StageTimes {
    /// Adds one detector's seconds in `stage`.
    pub fn add(&mut self, stage: &str, seconds: f64) {
        match self.0.iter_mut().find(|(s, _)| s == stage) {
            Some((_, v)) => v.push(seconds),
            None => self.0.push((stage.to_string(), vec![seconds])),
        }
    }

    /// The median seconds of each stage, in order.
    pub fn medians(&self) -> Vec<(&str, f64)> {
        self.0
            .iter()
            .map(|(s, v)| {
                let mut v = v.clone();
                v.sort_by(f64::total_cmp);
                (s.as_str(), quantile(&v, 0.5))
            })
            .collect()
    }
}

/// Builds the report from a night of the archive and/or detector records. Counts come
/// from the night when given, else from the records.
pub fn build_report(night: Option<&Night>, records: &[DetectorRecord]) -> NightReport {
    // (visit) -> (time, detector -> alerts)
    let mut visits: BTreeMap<VisitId, (f64, BTreeMap<DetectorId, u64>)> = BTreeMap::new();
    match night {
        Some(n) => {
            for v in &n.visits {
                let e = visits
                    .entry(v.visit)
                    .or_insert((v.midpoint_mjd_tai, BTreeMap::new()));
                for d in &v.detectors {
                    *e.1.entry(d.detector).or_default() += d.alerts.len() as u64;
                }
            }
        }
        None => {
            for r in records {
                let e = visits
                    .entry(r.visit)
                    .or_insert((r.readout_end_tai, BTreeMap::new()));
                e.0 = e.0.min(r.readout_end_tai);
                if r.n_alerts > 0 {
                    *e.1.entry(r.detector).or_default() += r.n_alerts;
                }
            }
        }
    }
    let mut visit_latencies: BTreeMap<VisitId, Vec<f64>> = BTreeMap::new();
    for r in records {
        let l = r.latency_s();
        visit_latencies
            .entry(r.visit)
            .or_default()
            .extend(std::iter::repeat_n(l, r.n_alerts as usize));
    }
    let mut per_detector: BTreeMap<DetectorId, (u64, usize)> = BTreeMap::new();
    let mut visit_counts: Vec<VisitCount> = visits
        .iter()
        .map(|(&visit, (t, dets))| {
            for (&d, &n) in dets {
                let e = per_detector.entry(d).or_default();
                e.0 += n;
                e.1 += 1;
            }
            VisitCount {
                visit,
                time_mjd_tai: *t,
                alerts: dets.values().sum(),
                detectors: dets.len(),
                latency: visit_latencies
                    .get(&visit)
                    .and_then(|l| LatencySummary::of(l)),
            }
        })
        .collect();
    visit_counts.sort_by(|a, b| {
        a.time_mjd_tai
            .total_cmp(&b.time_mjd_tai)
            .then(a.visit.cmp(&b.visit))
    });
    let per_visit: Vec<f64> = visit_counts.iter().map(|v| v.alerts as f64).collect();
    NightReport {
        day_obs: night.map(|n| n.day_obs),
        alerts: visit_counts.iter().map(|v| v.alerts).sum(),
        alerts_per_visit: Distribution::of(&per_visit),
        visits: visit_counts,
        detectors: per_detector
            .into_iter()
            .map(|(detector, (alerts, visits))| DetectorCount {
                detector,
                alerts,
                visits,
            })
            .collect(),
        latency: latency_report(records),
        filters: Vec::new(),
    }
}

fn latency_report(records: &[DetectorRecord]) -> Option<LatencyReport> {
    let mut lat: Vec<f64> = records.iter().map(DetectorRecord::latency_s).collect();
    if lat.is_empty() {
        return None;
    }
    lat.sort_by(f64::total_cmp);
    let max = *lat.last()?;
    let within = lat.iter().filter(|&&l| l <= LATENCY_BUDGET_S).count();
    let top = max.max(LATENCY_BUDGET_S * 1.2);
    let bin_width_s = top / HISTOGRAM_BINS as f64;
    let mut counts = vec![0u64; HISTOGRAM_BINS];
    for &l in &lat {
        let i = ((l.max(0.0) / bin_width_s) as usize).min(HISTOGRAM_BINS - 1);
        counts[i] += 1;
    }
    let mut stages = StageTimes::default();
    for r in records {
        for (name, s) in &r.stages {
            stages.add(name, *s);
        }
    }
    Some(LatencyReport {
        detectors: lat.len(),
        budget_s: LATENCY_BUDGET_S,
        p50_s: quantile(&lat, 0.5),
        p90_s: quantile(&lat, 0.9),
        p98_s: quantile(&lat, 0.98),
        p99_s: quantile(&lat, 0.99),
        max_s: max,
        within_budget: within as f64 / lat.len() as f64,
        over_budget: lat.len() - within,
        stage_medians_s: stages
            .medians()
            .into_iter()
            .map(|(n, m)| (n.to_owned(), m))
            .collect(),
        histogram: Histogram {
            bin_width_s,
            counts,
        },
    })
}

/// The files a report wrote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReportFiles {
    /// `summary.json`.
    pub summary: PathBuf,
    /// `latency.png`, when there were records.
    pub latency_png: Option<PathBuf>,
    /// `alerts_per_visit.png`, when there were visits.
    pub alerts_png: Option<PathBuf>,
}

/// Writes `summary.json` and the plots into `out_dir` (created when missing).
pub fn write_report(report: &NightReport, out_dir: &Path) -> Result<ReportFiles, ReportError> {
    fs::create_dir_all(out_dir).map_err(|source| ReportError::Io {
        path: out_dir.to_owned(),
        source,
    })?;
    let summary = out_dir.join("summary.json");
    let json = serde_json::to_vec_pretty(report).map_err(|e| ReportError::Io {
        path: summary.clone(),
        source: io::Error::other(e),
    })?;
    fs::write(&summary, json).map_err(|source| ReportError::Io {
        path: summary.clone(),
        source,
    })?;
    let latency_png = match &report.latency {
        Some(l) => {
            let path = out_dir.join("latency.png");
            let bars: Vec<f64> = l.histogram.counts.iter().map(|&c| c as f64).collect();
            let budget_x = l.budget_s / (l.histogram.bin_width_s * bars.len() as f64);
            bar_plot(&path, &bars, Some(budget_x))?;
            Some(path)
        }
        None => None,
    };
    let alerts_png = if report.visits.is_empty() {
        None
    } else {
        let path = out_dir.join("alerts_per_visit.png");
        let bars: Vec<f64> = report.visits.iter().map(|v| v.alerts as f64).collect();
        bar_plot(&path, &bars, None)?;
        Some(path)
    };
    Ok(ReportFiles {
        summary,
        latency_png,
        alerts_png,
    })
}

/// A bar chart without text: `bars` from left to right scaled to the tallest, axes
/// from zero, and optionally a red vertical line at fraction `marker` of the width.
fn bar_plot(path: &Path, bars: &[f64], marker: Option<f64>) -> Result<(), ReportError> {
    use plotters::prelude::*;
    let err = |e: &dyn std::fmt::Display| ReportError::Plot {
        path: path.to_owned(),
        reason: e.to_string(),
    };
    let (w, h) = (800i32, 400i32);
    let (left, right, top, bottom) = (40i32, 20i32, 20i32, 30i32);
    let (pw, ph) = (w - left - right, h - top - bottom);
    let root = BitMapBackend::new(path, (w as u32, h as u32)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let tallest = bars.iter().copied().fold(0.0f64, f64::max).max(1.0);
    let n = bars.len().max(1) as f64;
    for (i, &b) in bars.iter().enumerate() {
        let x0 = left + (pw as f64 * i as f64 / n) as i32;
        let x1 = left + (pw as f64 * (i + 1) as f64 / n) as i32;
        let y = top + ph - (ph as f64 * b / tallest).round() as i32;
        if b > 0.0 {
            root.draw(&Rectangle::new(
                [(x0 + 1, y), ((x1 - 1).max(x0 + 1), top + ph)],
                RGBColor(70, 110, 170).filled(),
            ))
            .map_err(|e| err(&e))?;
        }
    }
    // Axes.
    root.draw(&PathElement::new(
        vec![(left, top), (left, top + ph), (left + pw, top + ph)],
        BLACK.stroke_width(2),
    ))
    .map_err(|e| err(&e))?;
    // Ticks: ten along each axis.
    for k in 0..=10 {
        let x = left + pw * k / 10;
        let y = top + ph - ph * k / 10;
        root.draw(&PathElement::new(
            vec![(x, top + ph), (x, top + ph + 6)],
            BLACK.stroke_width(1),
        ))
        .map_err(|e| err(&e))?;
        root.draw(&PathElement::new(
            vec![(left - 6, y), (left, y)],
            BLACK.stroke_width(1),
        ))
        .map_err(|e| err(&e))?;
    }
    if let Some(m) = marker.filter(|m| (0.0..=1.0).contains(m)) {
        let x = left + (pw as f64 * m).round() as i32;
        root.draw(&PathElement::new(
            vec![(x, top), (x, top + ph)],
            RED.stroke_width(2),
        ))
        .map_err(|e| err(&e))?;
    }
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

/// The report entry point: reads night `night` of the archive `archive` (the only
/// night when `None`), the records file `records` and the filtering service's matches
/// log `filter_matches`, each when given, builds the report and writes it into
/// `out_dir`.
pub fn night_report(
    archive: Option<&Path>,
    night: Option<u32>,
    records: Option<&Path>,
    filter_matches: Option<&Path>,
    out_dir: &Path,
) -> Result<(NightReport, ReportFiles), ReportError> {
    if archive.is_none() && records.is_none() && filter_matches.is_none() {
        return Err(ReportError::NoInput);
    }
    let night_arg = night;
    let night = match archive {
        Some(a) => Some(load_night(a, pick_night(a, night)?)?),
        None => None,
    };
    let mut records = match records {
        Some(p) => read_records(p)?,
        None => Vec::new(),
    };
    // One night: the records of the night reported on (a records file may hold others).
    if let Some(day_obs) = night.as_ref().map(|n| n.day_obs).or(night_arg) {
        records.retain(|r| r.visit.day_obs() == day_obs);
    }
    let mut report = build_report(night.as_ref(), &records);
    if let Some(p) = filter_matches {
        report.filters = read_matches_log(p).map_err(|source| ReportError::Io {
            path: p.to_owned(),
            source,
        })?;
    }
    let files = write_report(&report, out_dir)?;
    Ok((report, files))
}
