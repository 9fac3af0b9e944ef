//! The camera side of `apflow run`: where each raw detector image comes from, and when
//! each visit is read out.
//!
//! * [`Camera::Simulator`] (the default) renders every image with the simulator
//!   (`Night::render_raw`) and writes it into the run's landing area, `<out>/raw/`.
//! * [`Camera::Raw`] (`apflow run --raw DIR`) replays a night directory written by
//!   `apflow simulate` (docs/CAMERA.md, "Night directory"): `DIR/night.json` gives the
//!   spec, from which the night is rebuilt — the simulator is deterministic in its
//!   spec — for the visit plans, the scheduler's `NextVisit` announcements and the
//!   solar-system predictions; the rebuilt visit plans must equal the file's, or the
//!   replay is refused. Each image is "read out" by hard-linking
//!   `DIR/raw/<visit>/<visit>-<snap>-det<NNN>.fits` into `<out>/raw/` (copying it when
//!   a link is impossible, e.g. across filesystems). Calibrations, templates and the
//!   reference catalogue are read from `DIR`, not regenerated.
//!
//! Either way the landed file is then ingested as a camera's would be (`ingest_file`
//! with the read-out's shutter-close and end-of-readout times): a corrupt or missing
//! raw file becomes ingest's dead letter, never a crash.
//!
//! **Pacing.** Each visit's read-out starts at its slot in an
//! [`apflow_replay::schedule::Schedule`] over the visits' shutter-open times (the
//! night's plans): `--speed F` keeps the original spacing divided by `F` (37 s
//! between visits at ×1, docs/CAMERA.md "Timing"), `--speed max` and `--cadence 0s`
//! start every visit at once, `--cadence D` starts one every `D`; `--from`/`--to` (MJD
//! TAI or ISO 8601 UTC, on the shutter open) and `--limit-visits` select visits. The
//! [`VisitPacer`] waits on a [`Clock`], real in `apflow run`, virtual in the tests.
//!
//! **Ids.** Every id derives from the visit and detector (`apflow_core::ids`), so a
//! raw replay into a fresh `--out` (its own APDB and archive) reproduces the live run's
//! ids exactly; no replay generation is applied (fresh ids would have to be given to
//! the APDB's records too, not just remapped on the alerts). The run's summary says so.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use apflow_core::bus::EventPublisher;
use apflow_core::events::DeadLetter;
use apflow_core::ids::DetectorId;
use apflow_core::telemetry::events::StageFinished;
use apflow_ingest::{ReadoutTimes, dead_letter, ingest_file};
use apflow_replay::clock::Clock;
use apflow_replay::schedule::{
    Pacing, Schedule, ScheduleError, ScheduleOptions, SpacingError, VisitTime,
};
use apflow_sim::night::raw_path;
use apflow_sim::{Night, NightSpec, write_raw_fits};
use chrono::Utc;

/// Where the run's raw images come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Camera {
    /// Rendered by the simulator as the night goes.
    Simulator,
    /// Read from a night directory (`apflow simulate --out DIR`).
    Raw {
        /// The night directory.
        dir: PathBuf,
    },
}

impl Camera {
    /// The directory holding calibrations, templates and the reference catalogue:
    /// the raw night's, or `out` (where the simulator writes them).
    pub fn inputs_dir<'a>(&'a self, out: &'a Path) -> &'a Path {
        match self {
            Self::Simulator => out,
            Self::Raw { dir } => dir,
        }
    }

    /// `"simulator"` or `"raw images from DIR"`, for the run's banner.
    pub fn describe(&self) -> String {
        match self {
            Self::Simulator => "simulator".into(),
            Self::Raw { dir } => format!("raw images from {}", dir.display()),
        }
    }
}

/// `night.json`, as far as a replay reads it.
#[derive(serde::Deserialize)]
struct NightDoc {
    spec: NightSpec,
    visits: serde_json::Value,
}

/// Reads `dir/night.json` and rebuilds its night from the spec; refuses a directory
/// whose visit plans differ from the rebuilt ones (written by another simulator
/// version, or edited) and an `out` that is `dir` itself (read-out would overwrite the
/// raw files it reads). Blocking.
pub fn open_raw_night(dir: &Path, out: &Path) -> anyhow::Result<Night> {
    if let (Ok(a), Ok(b)) = (dir.canonicalize(), out.canonicalize())
        && a == b
    {
        anyhow::bail!(
            "--out {} is the raw night itself: give the replay its own output directory",
            out.display()
        );
    }
    open_night_dir(dir)
}

/// Reads `dir/night.json` and rebuilds its night from the spec; refuses a directory
/// whose visit plans differ from the rebuilt ones. Blocking.
pub fn open_night_dir(dir: &Path) -> anyhow::Result<Night> {
    let path = dir.join("night.json");
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!(
            "reading {} (a night directory from `apflow simulate --out DIR`)",
            path.display()
        )
    })?;
    let doc: NightDoc =
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    doc.spec
        .validate()
        .with_context(|| format!("the spec in {}", path.display()))?;
    let night = Night::new(&doc.spec)?;
    let rebuilt = serde_json::to_value(night.visits())?;
    if rebuilt != doc.visits {
        let first = match (rebuilt.as_array(), doc.visits.as_array()) {
            (Some(a), Some(b)) if a.len() == b.len() => a
                .iter()
                .zip(b)
                .position(|(x, y)| x != y)
                .map_or("?".into(), |i| format!("visit index {i}")),
            (Some(a), Some(b)) => format!("{} visits rebuilt, {} in the file", a.len(), b.len()),
            _ => "not a list".into(),
        };
        anyhow::bail!(
            "{}: its visit plans differ from the simulator's for its spec ({first}); \
             was it written by another apflow version?",
            path.display()
        );
    }
    Ok(night)
}

/// Raw files of the night's `visits` (indices) missing from `dir/raw/`.
pub fn missing_raw_files(night: &Night, dir: &Path, visits: &[usize]) -> Vec<PathBuf> {
    let snaps = night.spec().snaps;
    visits
        .iter()
        .flat_map(|&i| {
            let visit = night.visits()[i].visit;
            night.detectors().iter().flat_map(move |d| {
                (0..snaps).map(move |s| raw_path(dir, visit, s, DetectorId(d.id)))
            })
        })
        .filter(|p| !p.is_file())
        .collect()
}

/// The pacing: `--speed` (a factor or `max`), else `--cadence`, else — replaying raw
/// images — the original pacing at ×1 (as `apflow replay`), else the configured
/// cadence (`[run] cadence`). A zero cadence is as fast as possible.
pub fn pacing(
    camera: &Camera,
    speed: Option<&str>,
    cadence: Option<Duration>,
    configured: Duration,
) -> Result<Pacing, ScheduleError> {
    let every = match (speed, cadence, camera) {
        (Some(s), _, _) => return Pacing::speed(s),
        (None, Some(c), _) => c,
        (None, None, Camera::Raw { .. }) => return Ok(Pacing::Original { speed: 1.0 }),
        (None, None, Camera::Simulator) => configured,
    };
    Ok(if every.is_zero() {
        Pacing::Max
    } else {
        Pacing::Cadence { every }
    })
}

/// When each visit of `night` starts its read-out: the schedule over the visits'
/// shutter-open times (MJD TAI), one burst per detector, all due at the visit's slot.
pub fn visit_schedule(night: &Night, opts: &ScheduleOptions) -> Result<Schedule, ScheduleError> {
    let times: Vec<VisitTime> = night
        .visits()
        .iter()
        .map(|p| VisitTime {
            mjd_tai: p.start().0,
            bursts: night.detectors().len(),
        })
        .collect();
    Schedule::from_times(&times, opts)
}

/// A visit whose read-out is due.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PacedVisit {
    /// Index into the night's visits.
    pub visit_index: usize,
    /// Its slot, from the start of the night.
    pub due: Duration,
    /// How late it starts (the previous visits' read-out overran its slot).
    pub late: Duration,
}

/// Hands out the schedule's visits in order, each once the clock reaches its slot.
#[derive(Debug)]
pub struct VisitPacer<'a, C> {
    schedule: &'a Schedule,
    clock: &'a C,
    next: usize,
}

impl<'a, C: Clock> VisitPacer<'a, C> {
    /// A pacer whose zero is the clock's.
    pub fn new(schedule: &'a Schedule, clock: &'a C) -> Self {
        Self {
            schedule,
            clock,
            next: 0,
        }
    }

    /// Waits for the next visit's slot; `None` after the last.
    pub async fn next(&mut self) -> Option<PacedVisit> {
        let slot = self.schedule.visits.get(self.next)?;
        self.next += 1;
        self.clock.sleep_until(slot.offset).await;
        Some(PacedVisit {
            visit_index: slot.visit_index,
            due: slot.offset,
            late: self.clock.elapsed().saturating_sub(slot.offset),
        })
    }
}

/// How far the visits' actual spacing was from the planned one: the largest |actual −
/// planned| spacing between consecutive visits, seconds, and the largest such error
/// relative to a planned spacing > 0 (0.05 = 5 %). Zero for fewer than two visits.
pub fn spacing_error(visits: &[PacedVisit]) -> (f64, f64) {
    let planned: Vec<f64> = visits.iter().map(|v| v.due.as_secs_f64()).collect();
    let achieved: Vec<f64> = visits
        .iter()
        .map(|v| (v.due + v.late).as_secs_f64())
        .collect();
    let e = SpacingError::of(&planned, &achieved);
    (e.max_abs_s, e.max_rel)
}

/// How a raw file reached the landing area.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Landing {
    /// A hard link to the night's file.
    Linked,
    /// A copy (no link possible, e.g. another filesystem).
    Copied,
}

/// Puts `src` at `dst` (replacing what a previous run left there): a hard link, else a
/// copy. Blocking.
pub fn land(src: &Path, dst: &Path) -> std::io::Result<Landing> {
    if let Some(parent) = dst.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(dst) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    match std::fs::hard_link(src, dst) {
        Ok(()) => Ok(Landing::Linked),
        // A missing source is not retried as a copy.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(e),
        Err(_) => std::fs::copy(src, dst).map(|_| Landing::Copied),
    }
}

/// Camera and ingest for one detector image: render and write it (simulator) or land
/// the night's file (raw), then validate and announce it. Returns the camera's seconds
/// and ingest's dead letter when it refused the image.
pub async fn read_out(
    camera: Arc<Camera>,
    night: Arc<Night>,
    publisher: EventPublisher,
    out: PathBuf,
    visit_index: usize,
    detector: DetectorId,
    snap: u8,
) -> anyhow::Result<(f64, Option<DeadLetter>)> {
    let plan = &night.visits()[visit_index];
    let visit = plan.visit;
    let path = raw_path(&out, visit, snap, detector);
    // The shutter closes now; the readout ends when the file has landed.
    let shutter_close = Utc::now();
    let started = Instant::now();
    let n = night.clone();
    let p = path.clone();
    match &*camera {
        Camera::Simulator => {
            tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
                let raw = n.render_raw(visit_index, detector, snap)?;
                if let Some(dir) = p.parent() {
                    std::fs::create_dir_all(dir)?;
                }
                write_raw_fits(&raw, &p)?;
                Ok(())
            })
            .await??;
        }
        Camera::Raw { dir } => {
            let src = raw_path(dir, visit, snap, detector);
            let landed =
                tokio::task::spawn_blocking(move || land(&src, &p).map_err(|e| (src, e))).await?;
            if let Err((src, error)) = landed {
                // Nothing landed: ingest finds no file and dead-letters it.
                tracing::warn!(
                    visit = visit.0,
                    detector = detector.0,
                    snap,
                    src = %src.display(),
                    %error,
                    "Raw file not read out."
                );
            }
        }
    }
    let camera_s = started.elapsed().as_secs_f64();
    StageFinished {
        stage: "camera",
        seconds: camera_s,
        since_readout: None,
    }
    .emit();
    let readout_end = Utc::now();

    let ingest_started = Instant::now();
    let p = path.clone();
    let result = tokio::task::spawn_blocking(move || {
        ingest_file(
            &p,
            Some(ReadoutTimes {
                shutter_close,
                readout_end,
            }),
        )
    })
    .await?;
    match result {
        Ok(event) => {
            publisher.publish(&event).await?;
            StageFinished {
                stage: "ingest",
                seconds: ingest_started.elapsed().as_secs_f64(),
                since_readout: Some((Utc::now() - readout_end).as_seconds_f64()),
            }
            .emit();
            tracing::debug!(
                visit = visit.0,
                detector = detector.0,
                snap,
                "Raw image ingested."
            );
            Ok((camera_s, None))
        }
        Err(e) => {
            let mut letter = dead_letter(&path, &e);
            letter.visit = Some(visit);
            letter.detector = Some(detector);
            publisher.dead_letter(&letter).await?;
            Ok((camera_s, Some(letter)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apflow_replay::clock::VirtualClock;

    fn night(visits: u32) -> Night {
        let spec = NightSpec {
            visits,
            detectors: 2,
            detector_size: 256,
            ..NightSpec::default()
        };
        Night::new(&spec).unwrap()
    }

    /// Starts of the visits the pacer hands out on a virtual clock, and their
    /// lateness, with `work` spent reading out each visit.
    fn paced(s: &Schedule, work: Duration) -> Vec<(usize, f64, f64)> {
        let clock = VirtualClock::new();
        let mut pacer = VisitPacer::new(s, &clock);
        let mut out = Vec::new();
        futures::executor::block_on(async {
            while let Some(v) = pacer.next().await {
                assert_eq!(clock.elapsed(), v.due + v.late);
                out.push((v.visit_index, v.due.as_secs_f64(), v.late.as_secs_f64()));
                clock.advance(work);
            }
        });
        out
    }

    #[test]
    fn original_pacing_follows_the_plans_shutter_open_times() {
        let n = night(4);
        let starts: Vec<f64> = n.visits().iter().map(|p| p.start().0).collect();
        for speed in [1.0, 10.0] {
            let s = visit_schedule(
                &n,
                &ScheduleOptions {
                    pacing: Pacing::Original { speed },
                    ..Default::default()
                },
            )
            .unwrap();
            let got = paced(&s, Duration::ZERO);
            assert_eq!(got.len(), 4);
            for (k, (i, due, late)) in got.iter().enumerate() {
                assert_eq!(*i, k);
                let want = (starts[k] - starts[0]) * 86_400.0 / speed;
                assert!((due - want).abs() < 1e-3, "visit {k}: {due} vs {want}");
                assert_eq!(*late, 0.0);
            }
            // The simulator's visits are 37 s apart (docs/CAMERA.md, "Timing").
            assert!((got[1].1 - 37.0 / speed).abs() < 1e-3, "{got:?}");
            // Every detector of a visit is read out at the visit's slot.
            assert!(
                s.visits
                    .iter()
                    .all(|v| v.bursts.len() == 2 && v.bursts.iter().all(|b| b.offset == v.offset))
            );
        }
    }

    #[test]
    fn cadence_max_window_and_lateness() {
        let n = night(5);
        let opts = |pacing| ScheduleOptions {
            pacing,
            ..Default::default()
        };
        let every = Duration::from_secs(2);
        let sim = Camera::Simulator;
        let raw = Camera::Raw { dir: "n".into() };
        let s = visit_schedule(&n, &opts(pacing(&sim, None, Some(every), every).unwrap())).unwrap();
        let dues: Vec<f64> = paced(&s, Duration::ZERO).iter().map(|v| v.1).collect();
        assert_eq!(dues, vec![0.0, 2.0, 4.0, 6.0, 8.0]);
        // Read-out slower than the cadence: each visit starts late by the overrun.
        let lates: Vec<f64> = paced(&s, Duration::from_secs(3))
            .iter()
            .map(|v| v.2)
            .collect();
        assert_eq!(lates, vec![0.0, 1.0, 2.0, 3.0, 4.0]);
        // The spacing error: 3 s achieved for 2 s planned is 1 s, 50 %.
        let visit = |due: u64, late_ms: u64| PacedVisit {
            visit_index: 0,
            due: Duration::from_secs(due),
            late: Duration::from_millis(late_ms),
        };
        assert_eq!(
            spacing_error(&[visit(0, 0), visit(2, 1000), visit(4, 2000)]),
            (1.0, 0.5)
        );
        assert_eq!(spacing_error(&[visit(0, 0), visit(2, 0)]), (0.0, 0.0));
        assert_eq!(spacing_error(&[visit(0, 0), visit(0, 100)]).1, 0.0);
        // Cadence 0 and --speed max: every visit at once.
        for p in [
            pacing(&sim, None, None, Duration::ZERO).unwrap(),
            pacing(&raw, None, Some(Duration::ZERO), every).unwrap(),
            pacing(&raw, Some("max"), None, every).unwrap(),
        ] {
            assert_eq!(p, Pacing::Max);
        }
        let s = visit_schedule(&n, &opts(Pacing::Max)).unwrap();
        assert!(paced(&s, Duration::ZERO).iter().all(|v| v.1 == 0.0));
        // Without a setting: the configured cadence live, the original pacing replayed.
        assert_eq!(
            pacing(&sim, None, None, every).unwrap(),
            Pacing::Cadence { every }
        );
        assert_eq!(
            pacing(&raw, None, None, every).unwrap(),
            Pacing::Original { speed: 1.0 }
        );
        assert!(pacing(&raw, Some("fast"), None, every).is_err());
        // The window is on the shutter open: from the second visit, before the fifth;
        // at most two of them; offsets count from the first selected.
        let t: Vec<f64> = n.visits().iter().map(|p| p.start().0).collect();
        let s = visit_schedule(
            &n,
            &ScheduleOptions {
                pacing: Pacing::Original { speed: 1.0 },
                from: Some(t[1]),
                to: Some(t[4]),
                limit_visits: Some(2),
                ..Default::default()
            },
        )
        .unwrap();
        let got = paced(&s, Duration::ZERO);
        assert_eq!(got.iter().map(|v| v.0).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(got[0].1, 0.0);
    }

    #[test]
    fn landing_links_or_copies_and_replaces_a_stale_file() {
        let dir = tempfile::tempdir().unwrap();
        let src = dir.path().join("night/raw/1/a.fits");
        std::fs::create_dir_all(src.parent().unwrap()).unwrap();
        std::fs::write(&src, b"raw bytes").unwrap();
        let dst = dir.path().join("out/raw/1/a.fits");
        assert_eq!(land(&src, &dst).unwrap(), Landing::Linked);
        assert_eq!(std::fs::read(&dst).unwrap(), b"raw bytes");
        // A rerun replaces what is there.
        std::fs::remove_file(&dst).unwrap();
        std::fs::write(&dst, b"stale").unwrap();
        land(&src, &dst).unwrap();
        assert_eq!(std::fs::read(&dst).unwrap(), b"raw bytes");
        // A missing source is an error and leaves nothing behind.
        let missing = dir.path().join("night/raw/1/missing.fits");
        assert!(land(&missing, &dst).is_err());
        assert!(!dst.exists());
    }

    #[test]
    fn a_raw_night_is_rebuilt_from_its_night_json_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let n = night(2);
        let nd = dir.path().join("night");
        std::fs::create_dir_all(&nd).unwrap();
        std::fs::write(nd.join("night.json"), n.schedule_json().unwrap()).unwrap();
        let out = dir.path().join("out");
        let rebuilt = open_raw_night(&nd, &out).unwrap();
        assert_eq!(rebuilt.visits(), n.visits());
        // Every raw file is missing: none were written.
        assert_eq!(missing_raw_files(&rebuilt, &nd, &[0, 1]).len(), 2 * 2);
        // Replaying into the night itself is refused.
        let e = open_raw_night(&nd, &nd).unwrap_err().to_string();
        assert!(e.contains("own output directory"), "{e}");
        // A visit plan edited in the file no longer matches the rebuilt night.
        let mut doc: serde_json::Value = serde_json::from_str(&n.schedule_json().unwrap()).unwrap();
        doc["visits"][1]["seeing_arcsec"] = serde_json::json!(9.9);
        std::fs::write(nd.join("night.json"), doc.to_string()).unwrap();
        let e = open_raw_night(&nd, &out).unwrap_err().to_string();
        assert!(e.contains("visit index 1"), "{e}");
        // No night.json at all.
        let e = open_raw_night(&out, &nd).unwrap_err().to_string();
        assert!(e.contains("night.json"), "{e}");
    }
}
