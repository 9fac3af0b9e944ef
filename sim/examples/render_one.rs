//! Renders and times one detector of one visit, writes it as FITS with its truth,
//! and (for the astropy test) a JSON file of expected header values, WCS positions
//! and per-amplifier pixel checksums.
//!
//! ```text
//! cargo run --release -p apflow-sim --example render_one -- OUT_DIR [SIZE] [PROFILE]
//! ```

use std::path::PathBuf;
use std::time::Instant;

use apflow_core::ids::DetectorId;
use apflow_sim::{Night, NightSpec, Profile, write_raw_fits, write_truth_csv};
use sha2::{Digest, Sha256};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let out = PathBuf::from(
        args.next()
            .ok_or("usage: render_one OUT_DIR [SIZE] [sparse|typical|crowded]")?,
    );
    let size: u32 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1024);
    let profile = match args.next().as_deref() {
        Some("sparse") => Profile::Sparse,
        Some("crowded") => Profile::Crowded,
        _ => Profile::Typical,
    };
    std::fs::create_dir_all(&out)?;
    let spec = NightSpec {
        visits: 2,
        detectors: 2,
        detector_size: size,
        seed: 2026,
        profile,
        ..NightSpec::default()
    };
    let night = Night::new(&spec)?;
    let d = DetectorId(1);
    let t = Instant::now();
    let raw = night.render_raw(1, d, 0)?;
    let truth = night.truth(1, d)?;
    let elapsed = t.elapsed();
    let raw_path = out.join("raw.fits");
    write_raw_fits(&raw, &raw_path)?;
    write_truth_csv(&truth, &out.join("truth.csv"))?;
    let tiles = night.write_templates(&out.join("templates"))?;
    eprintln!(
        "rendered {size}x{size} ({profile:?}) raw + {} truth rows in {:.3} s; total incl. FITS write {:.3} s",
        truth.len(),
        elapsed.as_secs_f64(),
        t.elapsed().as_secs_f64()
    );
    // Expected values for the astropy check.
    let wcs = &raw.header.wcs;
    let mut points = Vec::new();
    for &(x, y) in &[
        (0.0, 0.0),
        (f64::from(size) - 1.0, 0.0),
        (17.25, f64::from(size) * 0.7),
        (f64::from(size) / 2.0, f64::from(size) / 2.0),
    ] {
        let (ra, dec) = wcs.pixel_to_sky(x, y);
        points.push(serde_json::json!({"x": x, "y": y, "ra": ra, "dec": dec}));
    }
    let amps: Vec<_> = raw
        .amps
        .iter()
        .map(|a| {
            let bytes: Vec<u8> = a.data.iter().flat_map(|v| v.to_le_bytes()).collect();
            serde_json::json!({
                "extname": a.layout.name,
                "shape": [a.layout.raw_height(), a.layout.raw_width()],
                "sha256_le_i32": hex::encode(Sha256::digest(&bytes)),
                "sum": a.data.iter().map(|&v| i64::from(v)).sum::<i64>(),
                "samples": [[0, 0, a.at(0, 0)], [10, 5, a.at(5, 10)], [100, 37, a.at(37, 100)]],
                "gain": a.params.gain,
                "rdnoise": a.params.read_noise_e,
                "detsec": a.layout.detsec(),
            })
        })
        .collect();
    let h = &raw.header;
    let doc = serde_json::json!({
        "raw": "raw.fits",
        "header": {"VISIT": h.visit, "EXPOSURE": h.exposure, "SNAP": h.snap, "DETECTOR": h.detector,
                   "BAND": h.band.as_str(), "MJD-OBS": h.mjd_obs, "MJD-END": h.mjd_end, "EXPTIME": h.exptime_s,
                   "RA": h.ra_deg, "DEC": h.dec_deg, "ROTPA": h.rotpa_deg, "AIRMASS": h.airmass, "SEEING": h.seeing_arcsec},
        "wcs_points": points,
        "amps": amps,
        "template": tiles.first().map(|t| format!("templates/{}", t.file)),
    });
    std::fs::write(
        out.join("expected.json"),
        serde_json::to_string_pretty(&doc)?,
    )?;
    Ok(())
}
