//! Replays on a virtual clock (exact schedules), one short real-clock replay (the
//! issue's check: spacing at ×1 within 5 %), and the directory sink round trip.

use std::time::Duration;

use apflow_alert_dist::packet::decode_framed;
use apflow_alert_dist::producer::FramedAlert;
use apflow_core::ids::{DetectorId, DiaSourceId, VisitId};
use apflow_replay::clock::{Clock, RealClock, VirtualClock};
use apflow_replay::fresh::{FreshIdError, FreshIds};
use apflow_replay::night::load_night;
use apflow_replay::player::{Progress, ReplayError, replay};
use apflow_replay::schedule::{Pacing, Schedule, ScheduleOptions};
use apflow_replay::sink::{DirSink, Sink, SinkError};

use crate::fixture::{self, DAY_OBS};

/// Records when each burst arrived; optionally costs clock time per alert.
struct Recorder<'c, C: Clock> {
    clock: &'c C,
    per_alert: Duration,
    got: Vec<(Duration, VisitId, DetectorId, Vec<i64>)>,
    finished: bool,
}

impl<'c, C: Clock + Sync> Sink for Recorder<'c, C> {
    async fn send_burst(
        &mut self,
        visit: VisitId,
        detector: DetectorId,
        alerts: &[FramedAlert],
    ) -> Result<(), SinkError> {
        self.got.push((
            self.clock.elapsed(),
            visit,
            detector,
            alerts.iter().map(|a| a.dia_source_id).collect(),
        ));
        Ok(())
    }
    async fn finish(&mut self) -> Result<(), SinkError> {
        self.finished = true;
        Ok(())
    }
}

/// A recorder on a virtual clock that also advances it by `per_alert` per alert.
struct SlowRecorder<'c> {
    inner: Recorder<'c, VirtualClock>,
}

impl Sink for SlowRecorder<'_> {
    async fn send_burst(
        &mut self,
        visit: VisitId,
        detector: DetectorId,
        alerts: &[FramedAlert],
    ) -> Result<(), SinkError> {
        self.inner.send_burst(visit, detector, alerts).await?;
        self.inner
            .clock
            .advance(self.inner.per_alert * alerts.len() as u32);
        Ok(())
    }
    async fn finish(&mut self) -> Result<(), SinkError> {
        self.inner.finish().await
    }
}

fn night(times: &[f64], dets: u16, per: usize) -> (tempfile::TempDir, apflow_replay::night::Night) {
    let dir = tempfile::tempdir().unwrap();
    fixture::write_archive(dir.path(), &fixture::alerts(times, dets, per, 11), 7);
    let n = load_night(dir.path(), DAY_OBS).unwrap();
    (dir, n)
}

#[tokio::test]
async fn original_pacing_on_a_virtual_clock_sends_each_burst_when_due() {
    let (_d, night) = night(&[0.0, 37.0, 80.0, 200.0], 3, 2);
    let s = Schedule::new(
        &night.visits,
        &ScheduleOptions {
            pacing: Pacing::speed("10").unwrap(),
            detector_spread: Duration::from_secs(1),
            ..Default::default()
        },
    )
    .unwrap();
    let clock = VirtualClock::new();
    let mut sink = Recorder {
        clock: &clock,
        per_alert: Duration::ZERO,
        got: Vec::new(),
        finished: false,
    };
    let mut seen = Vec::new();
    let summary = replay(&night, &s, &mut sink, &clock, None, |p: &Progress| {
        seen.push(*p)
    })
    .await
    .unwrap();
    assert!(sink.finished);
    assert_eq!(sink.got.len(), 12);
    assert_eq!(summary.alerts, 24);
    assert_eq!(summary.visits, 4);
    assert_eq!(summary.bursts, 12);
    assert_eq!(seen.last().unwrap().alerts_sent, 24);
    assert_eq!(seen.last().unwrap().alerts_total, 24);
    // Visit k's burst j at (t_k / 10) + j / 3 s, to the nanosecond tolerance of f64 days.
    for (i, (at, visit, det, ids)) in sink.got.iter().enumerate() {
        let (k, j) = (i / 3, i % 3);
        let want = [0.0, 3.7, 8.0, 20.0][k] + j as f64 / 3.0;
        assert!(
            (at.as_secs_f64() - want).abs() < 1e-4,
            "burst {i}: {at:?} vs {want}"
        );
        assert_eq!(*visit, fixture::visit_id(k));
        assert_eq!(*det, DetectorId(j as u16));
        assert_eq!(ids.len(), 2);
    }
    assert!(summary.spacing_max_abs_error_s < 1e-4);
    assert!(summary.max_lateness_s < 1e-9);
}

#[tokio::test]
async fn a_slow_sink_makes_bursts_late_and_the_summary_says_so() {
    let (_d, night) = night(&[0.0, 1.0, 2.0], 2, 5);
    let s = Schedule::new(
        &night.visits,
        &ScheduleOptions {
            pacing: Pacing::cadence("1s").unwrap(),
            ..Default::default()
        },
    )
    .unwrap();
    let clock = VirtualClock::new();
    // 10 alerts per visit at 0.15 s each: 1.5 s of work per 1 s slot.
    let mut sink = SlowRecorder {
        inner: Recorder {
            clock: &clock,
            per_alert: Duration::from_millis(150),
            got: Vec::new(),
            finished: false,
        },
    };
    let summary = replay(&night, &s, &mut sink, &clock, None, |_| {})
        .await
        .unwrap();
    let starts: Vec<f64> = sink
        .inner
        .got
        .iter()
        .step_by(2)
        .map(|g| g.0.as_secs_f64())
        .collect();
    assert_eq!(starts, vec![0.0, 1.5, 3.0]);
    // The last burst (visit 2, detector 1) went at 3.75 s, due at 2 s.
    assert!(
        (summary.max_lateness_s - 1.75).abs() < 1e-9,
        "{}",
        summary.max_lateness_s
    );
    assert!((summary.spacing_max_rel_error - 0.5).abs() < 1e-9);
    assert!((summary.elapsed_s - 4.5).abs() < 1e-9);
    assert!((summary.alerts_per_s - 30.0 / 4.5).abs() < 1e-9);
}

#[tokio::test]
async fn window_limit_and_max_speed_select_and_do_not_wait() {
    let (_d, night) = night(&[0.0, 40.0, 80.0, 120.0], 1, 1);
    let s = Schedule::new(
        &night.visits,
        &ScheduleOptions {
            pacing: Pacing::Max,
            from: Some(fixture::T0 + 30.0 / 86_400.0),
            limit_visits: Some(2),
            ..Default::default()
        },
    )
    .unwrap();
    let clock = VirtualClock::new();
    let mut sink = Recorder {
        clock: &clock,
        per_alert: Duration::ZERO,
        got: Vec::new(),
        finished: false,
    };
    let summary = replay(&night, &s, &mut sink, &clock, None, |_| {})
        .await
        .unwrap();
    let visits: Vec<VisitId> = sink.got.iter().map(|g| g.1).collect();
    assert_eq!(visits, vec![fixture::visit_id(1), fixture::visit_id(2)]);
    assert!(sink.got.iter().all(|g| g.0.is_zero()));
    assert_eq!(summary.alerts, 2);
}

/// The check: at ×1 the original inter-visit spacing is reproduced within 5 %.
/// The only test on the real clock; ~2.6 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_clock_at_speed_1_reproduces_the_visit_spacing_within_5_percent() {
    let times = [0.0, 1.0, 1.8, 2.6];
    let (_d, night) = night(&times, 2, 3);
    let s = Schedule::new(&night.visits, &ScheduleOptions::default()).unwrap();
    let clock = RealClock::start();
    let mut sink = Recorder {
        clock: &clock,
        per_alert: Duration::ZERO,
        got: Vec::new(),
        finished: false,
    };
    let fresh = FreshIds::new(1).unwrap();
    let summary = replay(&night, &s, &mut sink, &clock, Some(&fresh), |_| {})
        .await
        .unwrap();
    let starts: Vec<f64> = sink
        .got
        .iter()
        .step_by(2)
        .map(|g| g.0.as_secs_f64())
        .collect();
    for (k, w) in starts.windows(2).enumerate() {
        let (actual, original) = (w[1] - w[0], times[k + 1] - times[k]);
        assert!(
            ((actual - original) / original).abs() < 0.05,
            "spacing {k}: {actual:.4} s vs original {original} s"
        );
    }
    assert!(summary.spacing_max_rel_error < 0.05, "{summary:?}");
    println!(
        "real clock x1: spacing max rel error {:.5}, max abs error {:.6} s",
        summary.spacing_max_rel_error, summary.spacing_max_abs_error_s
    );
}

#[tokio::test]
async fn the_directory_sink_writes_a_replayable_archive() {
    let (_d, night) = night(&[0.0, 30.0], 2, 3);
    let s = Schedule::new(
        &night.visits,
        &ScheduleOptions {
            pacing: Pacing::Max,
            ..Default::default()
        },
    )
    .unwrap();
    let clock = VirtualClock::new();
    // Original ids: the output night is byte-identical.
    let out = tempfile::tempdir().unwrap();
    let mut sink = DirSink::open(out.path(), &night.schemas).unwrap();
    replay(&night, &s, &mut sink, &clock, None, |_| {})
        .await
        .unwrap();
    assert_eq!(sink.written(), 12);
    let copy = load_night(out.path(), DAY_OBS).unwrap();
    assert_eq!(copy, night);
    // Fresh ids: same night, same visits and detectors, generation-1 ids that decode.
    let out = tempfile::tempdir().unwrap();
    let mut sink = DirSink::open(out.path(), &night.schemas).unwrap();
    let fresh = FreshIds::new(1).unwrap();
    let summary = replay(&night, &s, &mut sink, &clock, Some(&fresh), |_| {})
        .await
        .unwrap();
    assert_eq!(summary.generation, 1);
    let copy = load_night(out.path(), DAY_OBS).unwrap();
    assert_eq!(copy.alert_count(), night.alert_count());
    for (a, b) in copy.visits.iter().zip(&night.visits) {
        assert_eq!(a.visit, b.visit);
        for (da, db) in a.detectors.iter().zip(&b.detectors) {
            assert_eq!(da.detector, db.detector);
            for (x, y) in da.alerts.iter().zip(&db.alerts) {
                assert_eq!(
                    x.dia_source_id,
                    DiaSourceId(y.dia_source_id).fresh(1).unwrap().0
                );
                assert_eq!(DiaSourceId(x.dia_source_id).generation(), 1);
                decode_framed(&x.framed().framed).unwrap();
            }
        }
    }
    // Replaying the replay in the same generation is refused, not silently reused.
    let again = tempfile::tempdir().unwrap();
    let mut sink = DirSink::open(again.path(), &copy.schemas).unwrap();
    let s2 = Schedule::new(
        &copy.visits,
        &ScheduleOptions {
            pacing: Pacing::Max,
            ..Default::default()
        },
    )
    .unwrap();
    let r = replay(&copy, &s2, &mut sink, &clock, Some(&fresh), |_| {}).await;
    assert!(
        matches!(
            r,
            Err(ReplayError::Fresh {
                source: FreshIdError::SameGeneration { .. },
                ..
            })
        ),
        "{r:?}"
    );
}
