//! Runs a replay: for each visit of the [`Schedule`], each detector burst is prepared
//! (framed, with fresh ids when asked), the clock waited on until the burst is due,
//! and the burst handed to the sink. Preparing before waiting keeps re-encoding time
//! out of the pacing; the schedule's zero is the moment the first burst is ready.
//!
//! The summary compares what happened with the plan: the achieved rate, and the
//! spacing error — for each pair of consecutive visits, the difference between the
//! time their first bursts were actually sent and the planned spacing.

use std::time::Duration;

use apflow_alert_dist::producer::FramedAlert;
use serde::Serialize;
use thiserror::Error;

use crate::clock::Clock;
use crate::fresh::{FreshIdError, FreshIds};
use crate::night::Night;
use crate::schedule::{Schedule, SpacingError};
use crate::sink::{Sink, SinkError};

/// Why a replay stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ReplayError {
    /// An alert could not get fresh ids (bad input).
    #[error("alert {id}: {source}")]
    Fresh {
        /// The alert's original id.
        id: i64,
        /// Why.
        source: FreshIdError,
    },
    /// The sink failed.
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// Where a replay is, for progress bars.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Alerts sent so far.
    pub alerts_sent: u64,
    /// Alerts the plan sends.
    pub alerts_total: u64,
    /// Visits started.
    pub visits_sent: usize,
    /// Visits the plan sends.
    pub visits_total: usize,
}

/// What a replay did.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct ReplaySummary {
    /// Alerts sent.
    pub alerts: u64,
    /// Their framed bytes.
    pub bytes: u64,
    /// Visits sent.
    pub visits: usize,
    /// Detector bursts sent.
    pub bursts: usize,
    /// Time from the start to the sink's finish, seconds.
    pub elapsed_s: f64,
    /// Alerts per second over `elapsed_s`.
    pub alerts_per_s: f64,
    /// The largest |actual − planned| spacing between consecutive visits, seconds.
    pub spacing_max_abs_error_s: f64,
    /// The mean |actual − planned| spacing, seconds.
    pub spacing_mean_abs_error_s: f64,
    /// The largest |actual − planned| / planned over spacings > 0 (0.05 = 5 %).
    pub spacing_max_rel_error: f64,
    /// The latest any burst was sent after its due time, seconds.
    pub max_lateness_s: f64,
    /// Replay generation of the ids sent (0: the original ids).
    pub generation: u8,
}

/// Replays the planned visits of `night` into `sink` on `clock`. With `fresh`, every
/// alert is given fresh ids first. `progress` is called after every burst.
pub async fn replay<S: Sink, C: Clock>(
    night: &Night,
    schedule: &Schedule,
    sink: &mut S,
    clock: &C,
    fresh: Option<&FreshIds>,
    mut progress: impl FnMut(&Progress),
) -> Result<ReplaySummary, ReplayError> {
    let mut p = Progress {
        alerts_total: schedule.alert_count(&night.visits) as u64,
        visits_total: schedule.visits.len(),
        ..Default::default()
    };
    let mut summary = ReplaySummary {
        generation: fresh.map_or(0, FreshIds::generation),
        ..Default::default()
    };
    let mut started = Vec::with_capacity(schedule.visits.len());
    let mut batch: Vec<FramedAlert> = Vec::new();
    let mut epoch: Option<Duration> = None;
    for slot in &schedule.visits {
        let visit = &night.visits[slot.visit_index];
        for (k, b) in slot.bursts.iter().enumerate() {
            let burst = &visit.detectors[b.detector_index];
            batch.clear();
            for a in &burst.alerts {
                batch.push(match fresh {
                    Some(f) => f.remap_datum(a.schema_id, &a.datum).map_err(|source| {
                        ReplayError::Fresh {
                            id: a.dia_source_id,
                            source,
                        }
                    })?,
                    None => a.framed(),
                });
            }
            // The schedule starts when the first burst is ready to go.
            let due = *epoch.get_or_insert_with(|| clock.elapsed()) + b.offset;
            clock.sleep_until(due).await;
            let now = clock.elapsed();
            if k == 0 {
                started.push(now);
            }
            summary.max_lateness_s = summary
                .max_lateness_s
                .max(now.saturating_sub(due).as_secs_f64());
            sink.send_burst(visit.visit, burst.detector, &batch).await?;
            summary.bursts += 1;
            summary.alerts += batch.len() as u64;
            summary.bytes += batch.iter().map(|a| a.framed.len() as u64).sum::<u64>();
            p.alerts_sent = summary.alerts;
            p.visits_sent = started.len();
            progress(&p);
        }
        if slot.bursts.is_empty() {
            let due = *epoch.get_or_insert_with(|| clock.elapsed()) + slot.offset;
            clock.sleep_until(due).await;
            started.push(clock.elapsed());
        }
    }
    sink.finish().await?;
    summary.visits = started.len();
    summary.elapsed_s = clock.elapsed().as_secs_f64();
    summary.alerts_per_s = if summary.elapsed_s > 0.0 {
        summary.alerts as f64 / summary.elapsed_s
    } else {
        f64::INFINITY
    };
    let planned: Vec<f64> = schedule
        .visits
        .iter()
        .map(|v| v.offset.as_secs_f64())
        .collect();
    let achieved: Vec<f64> = started.iter().map(Duration::as_secs_f64).collect();
    let e = SpacingError::of(&planned, &achieved);
    summary.spacing_max_abs_error_s = e.max_abs_s;
    summary.spacing_mean_abs_error_s = e.mean_abs_s;
    summary.spacing_max_rel_error = e.max_rel;
    Ok(summary)
}
