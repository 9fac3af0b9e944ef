//! A synthetic archived night with ids in apflow's layout: `visits` visits at the
//! given times (seconds after MJD 61000.25 TAI) on night 20261122, `detectors`
//! detectors with `per_detector` alerts each. Even-numbered sources belong to
//! DiaObjects created in the first visit (so later alerts carry previous DiaSources
//! that are themselves alerts of the night, and forced sources); every fifth source is
//! a solar-system source; the first source of each detector-visit has cutouts with the
//! `DIASRCID` card. Deterministic in `seed`.

use std::path::Path;

use apflow_alert_dist::archive::Archive;
use apflow_alert_dist::packet::{AlertEncoder, AlertInput, VisitContext};
use apflow_alert_dist::producer::FramedAlert;
use apflow_alert_dist::schema::{SCHEMA_ID, alert_schema};
use apflow_alert_dist::synth;
use apflow_core::ids::{DetectorId, DiaObjectId, DiaSourceId, VisitId};
use apflow_core::time::MjdTai;
use apflow_core::wcs::CardValue;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

pub const DAY_OBS: u32 = 20261122;
pub const T0: f64 = 61000.25;

pub fn visit_id(k: usize) -> VisitId {
    VisitId::new(DAY_OBS, k as u32 + 1).unwrap()
}

pub fn source_id(k: usize, det: u16, n: usize) -> i64 {
    DiaSourceId::new(visit_id(k), DetectorId(det), n as u32)
        .unwrap()
        .0
}

/// The night's alerts, visit by visit.
pub fn alerts(times_s: &[f64], detectors: u16, per_detector: usize, seed: u64) -> Vec<FramedAlert> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let wcs = synth::detector_wcs(150.0, 2.2);
    let mut enc = AlertEncoder::new();
    let mut out = Vec::new();
    for (k, &ts) in times_s.iter().enumerate() {
        let t = T0 + ts / 86_400.0;
        for det in 0..detectors {
            for n in 0..per_detector {
                let sid = source_id(k, det, n);
                let (ra, dec) = (150.0 + n as f64 * 1e-3, 2.2 + f64::from(det) * 1e-3);
                let mut ds = synth::dia_source(&mut rng, sid, 0, ra, dec, t);
                ds.visit = visit_id(k);
                ds.detector = DetectorId(det);
                ds.midpoint_mjd_tai = MjdTai(t);
                let mut input = AlertInput {
                    context: VisitContext {
                        observation_reason: Some("wfd".into()),
                        target_name: None,
                    },
                    ..Default::default()
                };
                if n % 5 == 4 {
                    ds.dia_object_id = None;
                    ds.ss_object_id = Some(9_000_000 + n as i64);
                } else if n % 2 == 0 {
                    // An object created by this detector's n-th source of visit 0.
                    let oid = source_id(0, det, n);
                    ds.dia_object_id = Some(DiaObjectId(oid));
                    ds.parent_dia_source_id = (n == 2).then(|| DiaSourceId(source_id(k, det, 0)));
                    input.dia_object = Some(synth::dia_object(&mut rng, oid, ra, dec, T0));
                    let prv = (0..k)
                        .map(|j| {
                            let mut p = synth::dia_source(
                                &mut rng,
                                source_id(j, det, n),
                                oid,
                                ra,
                                dec,
                                T0 + times_s[j] / 86_400.0,
                            );
                            p.visit = visit_id(j);
                            p.detector = DetectorId(det);
                            p.parent_dia_source_id =
                                (n == 2).then(|| DiaSourceId(source_id(j, det, 0)));
                            p
                        })
                        .collect();
                    input.prv_dia_sources = Some(prv);
                    let forced = (0..k)
                        .map(|j| {
                            let fid =
                                DiaSourceId::new(visit_id(j), DetectorId(det), 500_000 + n as u32)
                                    .unwrap()
                                    .0;
                            synth::forced_source(
                                &mut rng,
                                fid,
                                oid,
                                ra,
                                dec,
                                T0 + times_s[j] / 86_400.0,
                            )
                        })
                        .collect();
                    input.prv_dia_forced_sources = Some(forced);
                } else {
                    // A new object of this source.
                    ds.dia_object_id = Some(DiaObjectId(sid));
                    input.dia_object = Some(synth::dia_object(&mut rng, sid, ra, dec, t));
                    input.prv_dia_sources = Some(Vec::new());
                    input.prv_dia_forced_sources = Some(Vec::new());
                }
                if n == 0 {
                    let set = synth::cutout_set(&mut rng, 16, &wcs, 100.0, 100.0);
                    let card = [(
                        "DIASRCID".to_string(),
                        CardValue::Int(sid),
                        "diaSourceId of the alert".to_string(),
                    )];
                    input.cutouts =
                        Some(apflow_alert_dist::fits::cutout_set_fits(&set, &card).unwrap());
                }
                input.dia_source = ds;
                out.push(FramedAlert {
                    dia_source_id: sid,
                    framed: enc.to_framed(&input).unwrap().into(),
                });
            }
        }
    }
    out
}

/// Writes `alerts` into an archive at `dir`, one block per visit-sized chunk.
pub fn write_archive(dir: &Path, alerts: &[FramedAlert], chunk: usize) -> Archive {
    let archive = Archive::open(dir).unwrap();
    archive.put_schema(SCHEMA_ID, &alert_schema().json).unwrap();
    for c in alerts.chunks(chunk.max(1)) {
        archive.put_batch(c).unwrap();
    }
    archive
}
