//! Integration tests of the simulator: determinism, photometry and astrometry of the
//! rendered pixels, the noise model, truth, the whole-night writer and FITS round trips.

use std::path::Path;

use apflow_core::geom::UnitVector;
use apflow_core::ids::DetectorId;
use apflow_sim::camera::PRESCAN;
use apflow_sim::schedule::electrons_per_s;
use apflow_sim::sky::{Cell, generate_cell, mag_to_njy};
use apflow_sim::{Night, NightSpec, Profile, RawExposure, TruthKind, write_raw_fits};

fn small_spec(seed: u64) -> NightSpec {
    NightSpec {
        visits: 3,
        detectors: 2,
        detector_size: 512,
        seed,
        profile: Profile::Sparse,
        ..NightSpec::default()
    }
}

/// Quick-look ISR of one raw exposure into electrons in the assembled frame:
/// per-row overscan mean subtraction, gain, then division by the true flat and
/// subtraction of the dark. Enough to measure a star, not a pipeline.
fn quick_isr(raw: &RawExposure, night: &Night, d: DetectorId, dark_time_s: f64) -> Vec<f64> {
    let det = &night.detectors()[usize::from(d.0)];
    let n = det.size as usize;
    let flat = det.flat();
    let dark = det.dark();
    let mut out = vec![0.0; n * n];
    for amp in &raw.amps {
        let l = &amp.layout;
        let rw = l.raw_width();
        for j in 0..l.height {
            let os: f64 = (PRESCAN + l.width + 4..rw)
                .map(|i| f64::from(amp.at(i, j)))
                .sum::<f64>()
                / f64::from(rw - PRESCAN - l.width - 4);
            for i in 0..l.width {
                let (x, y) = l.detector_pixel(i, j);
                let k = y as usize * n + x as usize;
                let e = (f64::from(amp.at(PRESCAN + i, j)) - os) * amp.params.gain;
                out[k] = e / f64::from(flat[k]) - f64::from(dark[k]) * dark_time_s;
            }
        }
    }
    out
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[test]
fn same_seed_gives_byte_identical_raw_files_in_any_order() {
    let dir = tempfile::tempdir().unwrap();
    let a = Night::new(&small_spec(11)).unwrap();
    let b = Night::new(&small_spec(11)).unwrap();
    // Render in different orders: detector 1 first in one night, last in the other.
    let _ = b.render_raw(1, DetectorId(1), 0).unwrap();
    let ra = a.render_raw(1, DetectorId(0), 0).unwrap();
    let rb = b.render_raw(1, DetectorId(0), 0).unwrap();
    assert_eq!(ra, rb);
    let (pa, pb) = (dir.path().join("a.fits"), dir.path().join("b.fits"));
    write_raw_fits(&ra, &pa).unwrap();
    write_raw_fits(&rb, &pb).unwrap();
    let (ba, bb) = (std::fs::read(&pa).unwrap(), std::fs::read(&pb).unwrap());
    assert_eq!(ba.len() % 2880, 0);
    assert!(ba == bb, "same seed wrote different bytes");
    // A different seed changes the pixels.
    let c = Night::new(&small_spec(12))
        .unwrap()
        .render_raw(1, DetectorId(0), 0)
        .unwrap();
    assert_ne!(c.amps[0].data, ra.amps[0].data);
}

#[test]
fn bright_star_flux_and_position_match_truth_and_header_wcs_is_off_by_the_offset() {
    let spec = NightSpec {
        visits: 1,
        detectors: 1,
        detector_size: 2048,
        seed: 5,
        profile: Profile::Typical,
        ..NightSpec::default()
    };
    let night = Night::new(&spec).unwrap();
    let d = DetectorId(0);
    let v = &night.visits()[0];
    let raw = night.render_raw(0, d, 0).unwrap();
    let t = v.snaps[0].exptime_s;
    let img = quick_isr(&raw, &night, d, t + apflow_sim::schedule::READOUT_S);
    let n = 2048usize;
    let wcs = night.true_wcs(0, d).unwrap();
    let header = night.header_wcs(0, d).unwrap();
    let mid = v.snaps[0].mid().0;
    let centre = wcs.pixel_to_unit(1024.0, 1024.0);
    let cats: Vec<_> = Cell::covering(centre, 0.1)
        .into_iter()
        .map(|c| generate_cell(spec.seed, spec.profile, c, v.start().0, 0.0))
        .collect();
    // Every static source with its pixel position and r flux.
    let mut all: Vec<(f64, f64, f64)> = Vec::new();
    for cat in &cats {
        for s in &cat.stars {
            let p = s.position(mid);
            let (ra, dec) = p.to_radec_deg();
            if let Some((x, y)) = wcs.sky_to_pixel(ra, dec) {
                all.push((x, y, s.flux_njy(v.band, mid)));
            }
        }
        for g in &cat.galaxies {
            if let Some((x, y)) = wcs.sky_to_pixel(g.ra_deg, g.dec_deg) {
                all.push((
                    x,
                    y,
                    mag_to_njy(g.mags[v.band.index()]) * (1.0 + g.disk_re_arcsec),
                ));
            }
        }
    }
    let e_per_njy = electrons_per_s(1.0, v.zp_mag) * t;
    let fwhm_px = v.seeing_arcsec / spec.pixel_scale_arcsec;
    let r_ap = (5.0 * fwhm_px).max(15.0);
    let det = &night.detectors()[0];
    let bad: Vec<u32> = det.bad_columns.iter().map(|c| c.x).collect();
    let mut checked = 0;
    for cat in &cats {
        for s in cat.stars.iter().filter(|s| s.variability.is_none()) {
            let f = s.flux_njy(v.band, mid);
            let e_total = f * e_per_njy;
            if !(1.0e4..1.0e6).contains(&e_total) {
                continue;
            }
            let p = s.position(mid);
            let (ra, dec) = p.to_radec_deg();
            let Some((x, y)) = wcs.sky_to_pixel(ra, dec) else {
                continue;
            };
            let m = r_ap + 25.0;
            if x < m || y < m || x > n as f64 - m || y > n as f64 - m {
                continue;
            }
            if bad.iter().any(|&c| (f64::from(c) - x).abs() < m) {
                continue;
            }
            let crowded = all.iter().any(|&(ox, oy, of)| {
                let dd = (ox - x).hypot(oy - y);
                dd > 0.01 && dd < r_ap + 25.0 && of > 0.005 * f
            });
            if crowded {
                continue;
            }
            // Local sky from an annulus.
            let (xi, yi) = (x.round() as i64, y.round() as i64);
            let reach = (r_ap + 20.0) as i64;
            let mut ann = Vec::new();
            for yy in yi - reach..=yi + reach {
                for xx in xi - reach..=xi + reach {
                    let dd = (xx as f64 - x).hypot(yy as f64 - y);
                    if dd > r_ap + 8.0 && dd < r_ap + 20.0 {
                        ann.push(img[yy as usize * n + xx as usize]);
                    }
                }
            }
            let sky = median(&mut ann);
            let (mut flux, mut npix) = (0.0, 0.0);
            for yy in yi - reach..=yi + reach {
                for xx in xi - reach..=xi + reach {
                    let dd = (xx as f64 - x).hypot(yy as f64 - y);
                    if dd <= r_ap {
                        let val = img[yy as usize * n + xx as usize] - sky;
                        flux += val;
                        npix += 1.0;
                    }
                }
            }
            let sigma = (e_total + npix * (sky + 40.0)).sqrt();
            assert!(
                (flux - e_total).abs() < 4.0 * sigma + 0.01 * e_total,
                "star {}: aperture {flux:.0} e- vs truth {e_total:.0} e- (σ {sigma:.0})",
                s.id
            );
            // Gaussian-windowed centroid (σ = FWHM / 2.355), iterated from the nearest pixel:
            // it converges on the centre of a symmetric PSF and ignores distant neighbours.
            let sw = fwhm_px / 2.355;
            let (mut cx, mut cy) = (xi as f64, yi as f64);
            for _ in 0..30 {
                let (mut s0, mut s1, mut s2) = (0.0, 0.0, 0.0);
                for yy in yi - 15..=yi + 15 {
                    for xx in xi - 15..=xi + 15 {
                        let (ddx, ddy) = (xx as f64 - cx, yy as f64 - cy);
                        let w = (-0.5 * (ddx * ddx + ddy * ddy) / (sw * sw)).exp();
                        let val = w * (img[yy as usize * n + xx as usize] - sky);
                        s0 += val;
                        s1 += val * xx as f64;
                        s2 += val * yy as f64;
                    }
                }
                (cx, cy) = (s1 / s0, s2 / s0);
            }
            let (dx, dy) = (cx - x, cy - y);
            let snr = e_total / sigma;
            let tol = (3.0 * fwhm_px / snr).max(0.02);
            assert!(
                dx.abs() < tol && dy.abs() < tol,
                "centroid off by ({dx:.3}, {dy:.3}) px, tolerance {tol:.3}"
            );
            // The header WCS puts the true position off by the injected offset.
            let (hx, hy) = header.sky_to_pixel(ra, dec).unwrap();
            let off_arcsec = (hx - x).hypot(hy - y) * spec.pixel_scale_arcsec;
            let injected = v.wcs_offset_arcsec[0].hypot(v.wcs_offset_arcsec[1]);
            assert!((0.1..=0.3).contains(&injected));
            assert!(
                (off_arcsec - injected).abs() < 0.01,
                "{off_arcsec} vs {injected}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 3, "only {checked} isolated bright stars checked");
}

#[test]
fn blank_sky_noise_matches_photon_plus_read_noise() {
    // Convention: sky_adu is the mean sky level above the overscan in ADU; gain in
    // e-/ADU; rn in electrons; the predicted per-pixel σ in ADU is
    // sqrt(sky_adu · gain + rn²) / gain. It is measured on the difference of the two
    // snaps of a visit (which cancels flat-field, bias-pattern and source structure),
    // divided by √2, with 4σ clipping of sources' residuals and cosmic rays.
    let spec = NightSpec {
        visits: 1,
        detectors: 1,
        detector_size: 512,
        snaps: 2,
        seed: 3,
        profile: Profile::Sparse,
        bands: vec![apflow_sim::Band::I],
        ..NightSpec::default()
    };
    let night = Night::new(&spec).unwrap();
    let a = night.render_raw(0, DetectorId(0), 0).unwrap();
    let b = night.render_raw(0, DetectorId(0), 1).unwrap();
    for (amp_a, amp_b) in a.amps.iter().zip(&b.amps) {
        let l = &amp_a.layout;
        let (gain, rn) = (amp_a.params.gain, amp_a.params.read_noise_e);
        let mut os: Vec<f64> = (0..l.height)
            .flat_map(|j| (PRESCAN + l.width + 4..l.raw_width()).map(move |i| (i, j)))
            .map(|(i, j)| f64::from(amp_a.at(i, j)))
            .collect();
        let os_level = median(&mut os);
        let os_sigma =
            (os.iter().map(|v| (v - os_level).powi(2)).sum::<f64>() / os.len() as f64).sqrt();
        assert!(
            (os_sigma / (rn / gain) - 1.0).abs() < 0.05,
            "{}: overscan σ {os_sigma} vs {}",
            l.name,
            rn / gain
        );
        let mut data: Vec<f64> = Vec::new();
        let mut diff: Vec<f64> = Vec::new();
        for j in 8..l.height - 8 {
            for i in PRESCAN + 8..PRESCAN + l.width - 8 {
                data.push(f64::from(amp_a.at(i, j)));
                diff.push(f64::from(amp_a.at(i, j) - amp_b.at(i, j)));
            }
        }
        let sky_adu = median(&mut data) - os_level;
        let predicted = (sky_adu * gain + rn * rn).sqrt() / gain;
        let mut sigma = 1.4826 * {
            let med = median(&mut diff.clone());
            median(&mut diff.iter().map(|v| (v - med).abs()).collect::<Vec<_>>())
        };
        for _ in 0..5 {
            let kept: Vec<f64> = diff
                .iter()
                .copied()
                .filter(|v| v.abs() < 4.0 * sigma)
                .collect();
            let mean = kept.iter().sum::<f64>() / kept.len() as f64;
            sigma =
                (kept.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / kept.len() as f64).sqrt();
        }
        // 4σ clipping of a Gaussian removes 0.07% of its variance tails: σ_clip = 0.99935 σ.
        let measured = sigma / 0.999_35 / std::f64::consts::SQRT_2;
        assert!(sky_adu > 100.0, "sky {sky_adu} ADU");
        assert!(
            (measured / predicted - 1.0).abs() < 0.05,
            "{}: measured {measured:.3} ADU vs predicted {predicted:.3} ADU",
            l.name
        );
    }
}

#[test]
fn truth_lists_injected_sources_with_difference_fluxes() {
    let spec = NightSpec {
        visits: 2,
        detectors: 4,
        detector_size: 1024,
        seed: 21,
        profile: Profile::Typical,
        ..NightSpec::default()
    };
    let night = Night::new(&spec).unwrap();
    let mut kinds = std::collections::BTreeSet::new();
    let mut total = 0;
    for d in 0..4u16 {
        let rows = night.truth(0, DetectorId(d)).unwrap();
        assert_eq!(rows, night.truth(0, DetectorId(d)).unwrap());
        for r in &rows {
            kinds.insert(r.kind);
            assert!((r.diff_flux_njy - (r.flux_njy - r.template_flux_njy)).abs() < 1e-6);
            assert!(r.x >= -0.5 && r.x < 1023.5 && r.y >= -0.5 && r.y < 1023.5);
            let wcs = night.true_wcs(0, DetectorId(d)).unwrap();
            let (x, y) = wcs.sky_to_pixel(r.ra_deg, r.dec_deg).unwrap();
            assert!((x - r.x).abs() < 1e-6 && (y - r.y).abs() < 1e-6);
            match r.kind {
                TruthKind::Supernova | TruthKind::FastTransient | TruthKind::Injected => {
                    assert_eq!(r.template_flux_njy, 0.0)
                }
                TruthKind::VariableStar => assert!(r.template_flux_njy > 0.0),
                TruthKind::SolarSystem => assert!(r.trail_length_px > 0.0),
            }
        }
        total += rows.len();
    }
    assert!(total > 8, "{total} truth rows");
    assert!(
        kinds.contains(&TruthKind::Supernova) && kinds.contains(&TruthKind::VariableStar),
        "{kinds:?}"
    );
}

#[test]
fn transients_appear_in_the_pixels_at_their_truth_flux() {
    let spec = NightSpec {
        visits: 1,
        detectors: 4,
        detector_size: 2048,
        seed: 8,
        profile: Profile::Typical,
        ..NightSpec::default()
    };
    let night = Night::new(&spec).unwrap();
    let v = &night.visits()[0];
    let e_per_njy = electrons_per_s(1.0, v.zp_mag) * v.snaps[0].exptime_s;
    let mut checked = 0;
    for d in 0..4u16 {
        let det = DetectorId(d);
        let rows = night.truth(0, det).unwrap();
        let bright: Vec<_> = rows
            .iter()
            .filter(|r| {
                r.kind == TruthKind::Supernova
                    && r.host_id.is_none()
                    && r.flux_njy * e_per_njy > 2e4
            })
            .filter(|r| r.x > 40.0 && r.y > 40.0 && r.x < 2008.0 && r.y < 2008.0)
            .collect();
        if bright.is_empty() {
            continue;
        }
        let raw = night.render_raw(0, det, 0).unwrap();
        let img = quick_isr(&raw, &night, det, 32.0);
        for r in bright {
            // Peak pixel above the local median must be a real fraction of the flux.
            let (xi, yi) = (r.x.round() as usize, r.y.round() as usize);
            let mut ring = Vec::new();
            for yy in yi - 30..=yi + 30 {
                for xx in xi - 30..=xi + 30 {
                    ring.push(img[yy * 2048 + xx]);
                }
            }
            let sky = median(&mut ring);
            let mut box_sum = 0.0;
            for yy in yi - 3..=yi + 3 {
                for xx in xi - 3..=xi + 3 {
                    box_sum += img[yy * 2048 + xx] - sky;
                }
            }
            let expected = r.flux_njy * e_per_njy;
            assert!(
                box_sum > 0.3 * expected,
                "transient {}: {box_sum} vs {expected}",
                r.id
            );
            checked += 1;
        }
    }
    assert!(checked > 0, "no bright hostless supernova to check");
}

#[test]
fn next_visit_events_cover_the_detectors() {
    let night = Night::new(&small_spec(4)).unwrap();
    for i in 0..3 {
        let nv = night.next_visit(i).unwrap();
        assert_eq!(nv.footprint.len(), 2);
        assert_eq!(nv.visit, night.visits()[i].visit);
        assert!(nv.predicted_start.0 < night.visits()[i].shutter_close().0);
        let bytes = apflow_core::events::encode(&nv);
        let back: apflow_core::events::NextVisit = apflow_core::events::decode(&bytes).unwrap();
        // JSON floats round-trip to within an ulp.
        assert_eq!(
            (back.visit, back.footprint.len(), &back.band),
            (nv.visit, nv.footprint.len(), &nv.band)
        );
        assert!((back.pointing.ra_deg - nv.pointing.ra_deg).abs() < 1e-12);
        for fp in &nv.footprint {
            let wcs = night.header_wcs(i, fp.detector).unwrap();
            assert!(fp.polygon.contains(wcs.pixel_to_unit(256.0, 256.0)));
            assert!(!fp.polygon.contains(wcs.pixel_to_unit(-100.0, 256.0)));
        }
    }
    // Visits every visit_interval_s, readout after shutter close.
    let v = night.visits();
    let dt = (v[1].start().0 - v[0].start().0) * 86_400.0;
    assert!((dt - 37.0).abs() < 1e-3, "{dt}");
    assert!(v[0].readout_end().0 > v[0].shutter_close().0);
    assert!(night.next_visit(3).is_err());
}

#[test]
fn raw_fits_round_trips_through_cfitsio() {
    let night = Night::new(&small_spec(2)).unwrap();
    let raw = night.render_raw(0, DetectorId(1), 0).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw.fits");
    write_raw_fits(&raw, &path).unwrap();
    let mut f = fitsio::FitsFile::open(&path).unwrap();
    let p = f.primary_hdu().unwrap();
    let visit: i64 = p.read_key(&mut f, "VISIT").unwrap();
    let band: String = p.read_key(&mut f, "BAND").unwrap();
    let mjd: f64 = p.read_key(&mut f, "MJD-OBS").unwrap();
    let ctype: String = p.read_key(&mut f, "CTYPE1").unwrap();
    let timesys: String = p.read_key(&mut f, "TIMESYS").unwrap();
    assert_eq!(visit as u64, raw.header.visit);
    assert_eq!(band, raw.header.band.as_str());
    // Floating-point keys carry 15 significant digits: 1 µs at today's MJD.
    assert!(
        (mjd - raw.header.mjd_obs).abs() < 1e-10,
        "{mjd} vs {}",
        raw.header.mjd_obs
    );
    assert_eq!(ctype, "RA---TAN-SIP");
    assert_eq!(timesys, "TAI");
    for amp in &raw.amps {
        let hdu = f.hdu(amp.layout.name.as_str()).unwrap();
        let data: Vec<i32> = hdu.read_image(&mut f).unwrap();
        assert_eq!(data, amp.data);
        let detsec: String = hdu.read_key(&mut f, "DETSEC").unwrap();
        assert_eq!(detsec, amp.layout.detsec());
        let gain: f64 = hdu.read_key(&mut f, "GAIN").unwrap();
        assert_eq!(gain, amp.params.gain);
    }
}

#[test]
fn simulate_night_writes_the_documented_layout() {
    let spec = NightSpec {
        visits: 2,
        detectors: 2,
        detector_size: 256,
        snaps: 2,
        template_tile_size: 600,
        seed: 9,
        ..NightSpec::default()
    };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path();
    let last = std::sync::Mutex::new(Vec::new());
    let summary = apflow_sim::simulate_night(&spec, out, |p| last.lock().unwrap().push(p)).unwrap();
    assert_eq!(summary.raw_files, 2 * 2 * 2);
    let night = Night::new(&spec).unwrap();
    for v in night.visits() {
        for d in 0..2u16 {
            for s in 0..2u8 {
                assert!(apflow_sim::night::raw_path(out, v.visit, s, DetectorId(d)).is_file());
            }
            let truth = apflow_sim::night::truth_path(out, v.visit, DetectorId(d));
            let text = std::fs::read_to_string(truth).unwrap();
            assert!(text.starts_with("visit,detector,id,kind,"));
        }
    }
    for kind in ["bias", "dark", "flat"] {
        assert!(out.join(format!("calib/{kind}-det001.fits")).is_file());
    }
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("night.json")).unwrap()).unwrap();
    assert_eq!(json["visits"].as_array().unwrap().len(), 2);
    assert_eq!(json["next_visit"].as_array().unwrap().len(), 2);
    let tiles: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("templates/tiles.json")).unwrap())
            .unwrap();
    assert!(summary.template_tiles > 0);
    for t in tiles.as_array().unwrap() {
        assert!(
            out.join("templates")
                .join(t["file"].as_str().unwrap())
                .is_file()
        );
    }
    // Every visit footprint is covered by template tiles of its band.
    for (i, v) in night.visits().iter().enumerate() {
        let nv = night.next_visit(i).unwrap();
        let ts = night.template_tiles(v.band);
        for fp in &nv.footprint {
            let c = fp.polygon.center();
            assert!(
                ts.iter().any(|t| {
                    let poly = apflow_core::geom::SkyPolygon::new(
                        t.corners_deg
                            .iter()
                            .map(|c| UnitVector::from_radec_deg(c[0], c[1]))
                            .collect(),
                    )
                    .unwrap();
                    poly.contains(c)
                }),
                "detector centre not covered by a template tile"
            );
        }
    }
    let refcat = std::fs::read_to_string(out.join("refcat.csv")).unwrap();
    assert_eq!(refcat.lines().count(), summary.refcat_rows + 1);
    let p = last.lock().unwrap();
    let exp: Vec<_> = p
        .iter()
        .filter(|p| p.stage == apflow_sim::ProgressStage::Exposures)
        .collect();
    assert!(exp.iter().any(|p| p.done == p.total && p.total == 4));
    // Same seed, same bytes for the whole night's raw data.
    let dir2 = tempfile::tempdir().unwrap();
    apflow_sim::simulate_night(&spec, dir2.path(), |_| {}).unwrap();
    let v = night.visits()[1].visit;
    let f1 = std::fs::read(apflow_sim::night::raw_path(out, v, 1, DetectorId(1))).unwrap();
    let f2 = std::fs::read(apflow_sim::night::raw_path(
        dir2.path(),
        v,
        1,
        DetectorId(1),
    ))
    .unwrap();
    assert!(f1 == f2);
    let _ = Path::new(".");
}

#[test]
fn template_tiles_hold_the_static_sky_at_mean_flux() {
    let spec = NightSpec {
        visits: 1,
        detectors: 1,
        detector_size: 512,
        template_tile_size: 800,
        seed: 13,
        profile: Profile::Sparse,
        ..NightSpec::default()
    };
    let night = Night::new(&spec).unwrap();
    let band = night.visits()[0].band;
    let tiles = night.template_tiles(band);
    let tile = &tiles[0];
    let (img, var, kernel, k) = night.render_template(tile);
    let n = tile.size_px as usize;
    assert_eq!(img.len(), n * n);
    assert!((kernel.iter().sum::<f32>() - 1.0).abs() < 1e-4);
    assert_eq!(
        kernel.iter().cloned().fold(0f32, f32::max),
        kernel[(k / 2) * k + k / 2]
    );
    // Pure-noise pixels have the variance's spread.
    let med_var = {
        let mut v: Vec<f64> = var.iter().map(|&x| f64::from(x)).collect();
        median(&mut v)
    };
    let mut vals: Vec<f64> = img.iter().map(|&x| f64::from(x)).collect();
    let med = median(&mut vals);
    let mad = 1.4826 * median(&mut vals.iter().map(|v| (v - med).abs()).collect::<Vec<_>>());
    assert!(
        (mad / med_var.sqrt() - 1.0).abs() < 0.1,
        "{mad} vs {}",
        med_var.sqrt()
    );
    // Total flux in the tile is about the flux of the sources that fall in it.
    let total: f64 = img.iter().map(|&x| f64::from(x)).sum();
    assert!(total > 0.0);
}

#[test]
fn master_calibrations_match_the_camera() {
    let night = Night::new(&small_spec(6)).unwrap();
    let det = &night.detectors()[0];
    let [bias, dark, flat] = night.master_calibrations(DetectorId(0)).unwrap();
    let truth = det.flat();
    let rms = (flat
        .iter()
        .zip(&truth)
        .map(|(a, b)| f64::from(a - b).powi(2))
        .sum::<f64>()
        / flat.len() as f64)
        .sqrt();
    assert!(rms < 0.003 && rms > 0.0001, "flat noise {rms}");
    let hot = det.hot_pixels[0];
    assert!(f64::from(dark[(hot.1 * 512 + hot.0) as usize]) > 0.5 * hot.2);
    let mean_bias = bias.iter().map(|&v| f64::from(v)).sum::<f64>() / bias.len() as f64;
    assert!(mean_bias.abs() < 2.0, "{mean_bias}");
}
