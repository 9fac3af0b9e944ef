//! Writes a few framed alert packets from a fixed-seed synthetic detector-visit to a
//! directory, with a JSON sidecar of the values put in, for the Python outside check
//! (`alert-dist/tests/python`, run by `scripts/python-checks`).
//!
//! `cargo run -p apflow-alert-dist --example write_packets -- DIR`
//!
//! Files: `<diaSourceId>.avro` (Confluent-framed, schema id 1100), `<diaSourceId>.avro.gz`
//! for the first one, and `expected.json`.

use std::io::Write;

use apflow_alert_dist::packet::{AlertEncoder, AssembleConfig, assemble};
use apflow_alert_dist::synth;
use apflow_apdb::partition::HISTORY_DAYS;
use serde_json::json;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: write_packets DIR")?;
    let dir = std::path::PathBuf::from(dir);
    std::fs::create_dir_all(&dir)?;
    // 10 sources: one is a solar-system source (every tenth); cutouts of 33 px.
    let v = synth::visit(20261122, 10, 3, 5, 33);
    let mut enc = AlertEncoder::new();
    let out = assemble(
        &v.sources(),
        &v.context,
        &AssembleConfig::default(),
        &mut enc,
    );
    if !out.dead_letters.is_empty() {
        return Err(format!("dead letters: {:?}", out.dead_letters).into());
    }
    let mut expected = Vec::new();
    for (i, (p, ds)) in out.packets.iter().zip(&v.dia_sources).enumerate() {
        let id = ds.dia_source_id.0;
        std::fs::write(dir.join(format!("{id}.avro")), &p.bytes)?;
        if i == 0 {
            let mut gz = flate2::write::GzEncoder::new(
                std::fs::File::create(dir.join(format!("{id}.avro.gz")))?,
                flate2::Compression::default(),
            );
            gz.write_all(&p.bytes)?;
            gz.finish()?;
        }
        let obj = ds
            .dia_object_id
            .and_then(|o| v.dia_objects.iter().find(|x| x.dia_object_id == o));
        let n_prv = ds.dia_object_id.map(|o| {
            v.history
                .iter()
                .filter(|h| {
                    h.dia_object_id == Some(o) && h.midpoint_mjd_tai.0 >= v.t - HISTORY_DAYS
                })
                .count()
        });
        let n_forced = ds.dia_object_id.map(|o| {
            v.forced
                .iter()
                .filter(|f| f.dia_object_id == o && f.midpoint_mjd_tai.0 >= v.t - HISTORY_DAYS)
                .count()
        });
        let c = &v.cutouts[&ds.dia_source_id];
        expected.push(json!({
            "diaSourceId": id,
            "observation_reason": v.context.observation_reason,
            "target_name": v.context.target_name,
            "diaSource": {
                "visit": ds.visit.0, "detector": ds.detector.0,
                "ra": ds.ra, "dec": ds.dec, "x": ds.x, "y": ds.y,
                "midpointMjdTai": ds.midpoint_mjd_tai.0,
                "psfFlux": ds.psf_flux, "psfFluxErr": ds.psf_flux_err,
                "snr": ds.snr, "band": ds.band, "isDipole": ds.is_dipole,
                "diaObjectId": ds.dia_object_id.map(|o| o.0),
                "ssObjectId": ds.ss_object_id,
            },
            "diaObject": obj.map(|o| json!({
                "diaObjectId": o.dia_object_id.0, "ra": o.ra, "dec": o.dec,
                "nDiaSources": o.n_dia_sources,
                "r_psfFluxMean": o.bands.get("r").and_then(|b| b.psf_flux_mean),
            })),
            "n_prvDiaSources": n_prv,
            "n_prvDiaForcedSources": n_forced,
            "cutout": {
                "width": c.difference.masked.width(),
                "cutMinX": c.difference.x0, "cutMinY": c.difference.y0,
                "centre_value_difference": c.difference.masked.image.get(16, 16),
                "variance_00": c.difference.masked.variance.get(0, 0),
                "mask_centre": c.difference.masked.mask.get(16, 16),
            },
        }));
    }
    std::fs::write(
        dir.join("expected.json"),
        serde_json::to_string_pretty(&expected)?,
    )?;
    println!("wrote {} packets to {}", out.packets.len(), dir.display());
    Ok(())
}
