//! Image characterisation and calibration on a simulated 2048² detector (typical
//! profile, fixed seed): background, bright stars, PSF model, PSF photometry,
//! astrometric and photometric calibration, checked against the simulator's truth.

mod support;

use std::sync::OnceLock;

use apflow_prompt_proc::ScienceError;
use apflow_prompt_proc::background::{self, BackgroundConfig};
use apflow_prompt_proc::calibrate::{
    self, AstrometricFit, AstrometryConfig, PhotometryConfig, RefStar,
};
use apflow_prompt_proc::psf::Psf;
use apflow_prompt_proc::psf_model::{self, PsfConfig};
use apflow_prompt_proc::stars::{self, Star, StarConfig};
use support::sim_image::{self, SimDetector};

struct Characterised {
    sd: SimDetector,
    img: apflow_prompt_proc::MaskedImage,
    stars: Vec<Star>,
    psf: psf_model::PsfFit,
    refcat: Vec<RefStar>,
    astro: AstrometricFit,
}

fn to_refstar(r: &apflow_sim::night::RefcatRow) -> RefStar {
    RefStar {
        id: r.id,
        ra_deg: r.ra_deg,
        dec_deg: r.dec_deg,
        pm_ra_masyr: r.pm_ra_masyr,
        pm_dec_masyr: r.pm_dec_masyr,
        epoch_mjd: r.epoch_mjd,
        flux_njy: r.flux_njy,
        flux_err_njy: r.flux_err_njy,
    }
}

fn characterised() -> &'static Characterised {
    static CELL: OnceLock<Characterised> = OnceLock::new();
    CELL.get_or_init(|| {
        let sd = sim_image::simulate(&sim_image::spec(2048, 42), 0);
        let mut img = sd.image.clone();
        let bg = background::estimate(&img, &BackgroundConfig::default()).unwrap();
        bg.subtract_from(&mut img);
        let mut stars = stars::detect_stars(&img, &StarConfig::default());
        let psf = psf_model::fit_psf(&img, &stars, &PsfConfig::default()).unwrap();
        psf_model::measure_psf_flux(&img, &psf.model, &mut stars);
        let all: Vec<RefStar> = sd.night.refcat().iter().map(to_refstar).collect();
        let (w, h) = img.dims();
        let refcat = calibrate::refcat_in_detector(&all, &sd.header_wcs, w, h, 50.0, sd.mjd);
        let astro = calibrate::fit_astrometry(
            &stars,
            &sd.header_wcs,
            &refcat,
            sd.mjd,
            &AstrometryConfig::default(),
        )
        .unwrap();
        Characterised {
            sd,
            img,
            stars,
            psf,
            refcat,
            astro,
        }
    })
}

/// Nearest true star within `r` px.
fn truth_of<'a>(sd: &'a SimDetector, s: &Star, r: f64) -> Option<&'a sim_image::TrueStar> {
    sd.stars
        .iter()
        .filter(|t| (t.x - s.x).hypot(t.y - s.y) < r)
        .min_by(|a, b| {
            (a.x - s.x)
                .hypot(a.y - s.y)
                .total_cmp(&(b.x - s.x).hypot(b.y - s.y))
        })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn iqr_sigma(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let q = |f: f64| v[((v.len() - 1) as f64 * f).round() as usize];
    (q(0.75) - q(0.25)) / 1.349
}

#[test]
fn background_and_stars_on_a_simulated_detector() {
    let c = characterised();
    // The detected stars are real: most clean detections have a true star within 1 px
    // (the rest are galaxies), and the bright true stars are found.
    let clean: Vec<&Star> = c.stars.iter().filter(|s| s.is_clean()).collect();
    let matched = clean
        .iter()
        .filter(|s| truth_of(&c.sd, s, 1.0).is_some())
        .count();
    eprintln!(
        "detections {} clean {} matched to true stars {}",
        c.stars.len(),
        clean.len(),
        matched
    );
    assert!(clean.len() >= 60 && matched >= 40);
    // Centroids of bright isolated stars: pulls against the true positions.
    let mut dx = Vec::new();
    for s in clean.iter().filter(|s| s.snr() > 100.0) {
        if let Some(t) = truth_of(&c.sd, s, 1.0) {
            dx.push((s.x - t.x) / s.x_err);
            dx.push((s.y - t.y) / s.y_err);
        }
    }
    let pull = iqr_sigma(dx.clone());
    eprintln!("centroid pull sigma {pull} over {} coordinates", dx.len());
    assert!(pull > 0.5 && pull < 2.0, "{pull}");
    // Background-subtracted sky: median of unmasked, source-free pixels near zero
    // compared with the noise.
    let mut sky = Vec::new();
    for y in (5..2043).step_by(13) {
        for x in (5..2043).step_by(11) {
            let v = c.img.image.get(x, y) as f64;
            if c.img.mask.get(x, y) == 0 {
                sky.push(v);
            }
        }
    }
    let (m, s) = (median(sky.clone()), iqr_sigma(sky));
    {
        let v = &c.sd.night.visits()[0];
        let det = &c.sd.night.detectors()[0];
        let bg = background::estimate(&c.sd.image, &BackgroundConfig::default()).unwrap();
        for &(x, y) in &[(100.0, 100.0), (1024.0, 1024.0), (1900.0, 1500.0)] {
            let (fx, fy) = det.focal_plane(x, y);
            let t = v.snaps[0].exptime_s;
            let sky = v.sky_e_per_s
                * t
                * (1.0 + v.sky_gradient[0] * fx / 1e4 + v.sky_gradient[1] * fy / 1e4);
            eprintln!("bg at {x},{y}: fitted {} true {sky}", bg.value_at(x, y));
        }
    }
    eprintln!("background residual median {m} e- (noise {s} e-)");
    assert!(m.abs() < 0.05 * s, "{m} {s}");
}

#[test]
fn psf_model_matches_the_true_psf() {
    let c = characterised();
    let model = &c.psf.model;
    eprintln!(
        "psf stars used {}, stamp {} px, order {}, residual rms {:.4} of peak",
        c.psf.used.len(),
        model.size(),
        model.spatial_order(),
        c.psf.residual_rms
    );
    assert!(c.psf.used.len() >= 15);
    let n = model.size();
    let mut worst = 0.0f64;
    let (mut worst_pix, mut worst_l1) = (0.0f32, 0.0f32);
    for &(x, y) in &[
        (150.0, 150.0),
        (1900.0, 150.0),
        (1024.0, 1024.0),
        (150.0, 1900.0),
        (1900.0, 1900.0),
    ] {
        let truth = sim_image::true_psf_image(&c.sd, x, y, n);
        let sum: f32 = truth.data().iter().sum();
        let tf = psf_model::fwhm_of_image(&truth);
        let mf = model.fwhm_at(x, y);
        worst = worst.max((mf / tf - 1.0).abs());
        // Pixel residuals, both normalised over the stamp.
        let k = model.kernel(x, y, n);
        let peak = truth.data().iter().cloned().fold(0.0, f32::max) / sum;
        // Within 2 FWHM of the centre (beyond, both are below 1% of the peak).
        let (mut maxd, mut l1) = (0.0f32, 0.0f32);
        let r2 = (2.0 * tf) * (2.0 * tf);
        let cc = (n / 2) as f64;
        for j in 0..n {
            for i in 0..n {
                if (i as f64 - cc).powi(2) + (j as f64 - cc).powi(2) > r2 {
                    continue;
                }
                let d = (k.get(i, j) - truth.get(i, j) / sum).abs();
                maxd = maxd.max(d);
                l1 += d;
            }
        }
        eprintln!(
            "({x}, {y}): FWHM model {mf:.3} true {tf:.3} px; max |Δ| {:.4} of peak, Σ|Δ| {l1:.4}",
            maxd / peak
        );
        worst_pix = worst_pix.max(maxd / peak);
        worst_l1 = worst_l1.max(l1);
    }
    assert!(worst_pix < 0.03, "{worst_pix}");
    assert!(worst_l1 < 0.05, "{worst_l1}");
    assert!(worst < 0.03, "FWHM off by {worst}");
    // The shifted model moves its centroid by the requested phase.
    let k = model.image_at_shifted(1000.0, 1000.0, n, 0.3, -0.2);
    let (mut sx, mut sy, mut s) = (0.0, 0.0, 0.0);
    let cc = (n / 2) as f64;
    for y in 0..n {
        for x in 0..n {
            let v = k.get(x, y) as f64;
            sx += v * (x as f64 - cc);
            sy += v * (y as f64 - cc);
            s += v;
        }
    }
    let k0 = model.kernel(1000.0, 1000.0, n);
    let (mut x0, mut y0) = (0.0, 0.0);
    for y in 0..n {
        for x in 0..n {
            x0 += k0.get(x, y) as f64 * (x as f64 - cc);
            y0 += k0.get(x, y) as f64 * (y as f64 - cc);
        }
    }
    let (ddx, ddy) = (sx / s - x0, sy / s - y0);
    eprintln!("shift 0.3,-0.2 moves the centroid by {ddx:.4},{ddy:.4}");
    assert!((ddx - 0.3).abs() < 0.01 && (ddy + 0.2).abs() < 0.01);
}

#[test]
fn psf_fluxes_of_isolated_bright_stars() {
    let c = characterised();
    let fwhm = c.psf.model.fwhm_at(1024.0, 1024.0);
    let apcorr =
        psf_model::measure_aperture_correction(&c.img, &c.stars, &c.psf.used, 6.0 * fwhm).unwrap();
    let (mut ratio, mut pull) = (Vec::new(), Vec::new());
    for s in c.stars.iter().filter(|s| s.is_clean() && s.snr() > 50.0) {
        if let Some(t) = truth_of(&c.sd, s, 1.0) {
            ratio.push(s.psf_flux * apcorr / t.electrons);
            pull.push((s.psf_flux * apcorr - t.electrons) / s.psf_flux_err);
        }
    }
    let (mr, ps) = (median(ratio.clone()), iqr_sigma(pull.clone()));
    eprintln!(
        "aperture correction {apcorr:.4}; {} stars: median psf/true {mr:.4}, pull σ {ps:.2}, median pull {:.2}",
        ratio.len(),
        median(pull)
    );
    assert!(ratio.len() >= 12);
    assert!((mr - 1.0).abs() < 0.01, "{mr}");
    assert!(apcorr > 0.97 && apcorr < 1.03, "{apcorr}");
    assert!(ps > 0.5 && ps < 3.0, "{ps}");
}

#[test]
fn astrometry_recovers_the_true_wcs() {
    let c = characterised();
    let a = &c.astro;
    let max_sep = |w: &apflow_core::wcs::TanSipWcs| {
        let mut worst = 0.0f64;
        for j in 0..=8 {
            for i in 0..=8 {
                let (x, y) = (i as f64 * 2047.0 / 8.0, j as f64 * 2047.0 / 8.0);
                let (r1, d1) = w.pixel_to_sky(x, y);
                let (r2, d2) = c.sd.true_wcs.pixel_to_sky(x, y);
                worst = worst
                    .max(apflow_core::geom::separation_deg(r1, d1, r2, d2).to_degrees() * 3600.0);
            }
        }
        worst
    };
    let (before, after) = (max_sep(&c.sd.header_wcs), max_sep(&a.wcs));
    eprintln!(
        "refs {} matched {} rms {:.4}\" offset {:?} px; header vs truth {before:.3}\", fit vs truth {after:.4}\"",
        c.refcat.len(),
        a.n_matched,
        a.rms_arcsec,
        a.offset_px
    );
    assert!(before > 0.09, "{before}");
    assert!(a.n_matched >= 30);
    assert!(a.rms_arcsec <= 0.05, "{}", a.rms_arcsec);
    assert!(after <= 0.02, "{after}");
}

#[test]
fn astrometry_finds_a_large_header_error() {
    let c = characterised();
    // 8″ = 40 px off, beyond any nearest-neighbour radius.
    let off = c.sd.header_wcs.shifted_arcsec(6.0, -5.3);
    let a = calibrate::fit_astrometry(
        &c.stars,
        &off,
        &c.refcat,
        c.sd.mjd,
        &AstrometryConfig::default(),
    )
    .unwrap();
    let (x, y) = (1500.0, 300.0);
    let (r1, d1) = a.wcs.pixel_to_sky(x, y);
    let (r2, d2) = c.sd.true_wcs.pixel_to_sky(x, y);
    let sep = apflow_core::geom::separation_deg(r1, d1, r2, d2).to_degrees() * 3600.0;
    eprintln!(
        "large offset: vote {:?} px, fit vs truth {sep:.4}\"",
        a.offset_px
    );
    assert!(a.offset_px[0].hypot(a.offset_px[1]) > 30.0);
    assert!(sep < 0.02, "{sep}");
}

#[test]
fn photometric_calibration_matches_truth() {
    let c = characterised();
    let pc = calibrate::fit_photometry(
        &c.stars,
        &c.refcat,
        &c.astro.matches,
        c.sd.band_index,
        &PhotometryConfig::default(),
    )
    .unwrap();
    let mut ratio = Vec::new();
    for s in c.stars.iter().filter(|s| s.is_clean() && s.snr() > 50.0) {
        if let Some(t) = truth_of(&c.sd, s, 1.0) {
            ratio.push(s.psf_flux * pc.njy_per_electron / t.njy);
        }
    }
    let mr = median(ratio.clone());
    eprintln!(
        "calib {:.5} ± {:.5} nJy/e- (true 1/e_per_nJy {:.5}), zp {:.4}, {} stars; calibrated psf / true flux median {mr:.4} over {}",
        pc.njy_per_electron,
        pc.err,
        1.0 / c.sd.e_per_njy,
        pc.zero_point_mag,
        pc.n_stars,
        ratio.len()
    );
    assert!(pc.n_stars >= 10);
    assert!((mr - 1.0).abs() < 0.01, "{mr}");
    assert!(pc.err / pc.njy_per_electron < 0.01);
}

#[test]
fn refcat_csv_round_trip() {
    let c = characterised();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("refcat.csv");
    let n = c.sd.night.write_refcat(&path).unwrap();
    let read = calibrate::read_refcat_csv(&path).unwrap();
    assert_eq!(read.len(), n);
    let rows = c.sd.night.refcat();
    for (a, b) in read.iter().zip(&rows).step_by(97) {
        let b = to_refstar(b);
        assert_eq!(a.id, b.id);
        assert!((a.ra_deg - b.ra_deg).abs() < 1e-9 && (a.dec_deg - b.dec_deg).abs() < 1e-9);
        assert!((a.flux_njy[2] - b.flux_njy[2]).abs() < 1e-3);
        assert!((a.pm_ra_masyr - b.pm_ra_masyr).abs() < 1e-3);
    }
    std::fs::write(&path, "id,ra_deg\n1,2\n").unwrap();
    assert!(matches!(
        calibrate::read_refcat_csv(&path),
        Err(ScienceError::BadInput(_))
    ));
}

#[test]
fn failure_paths_are_typed() {
    let c = characterised();
    assert!(matches!(
        psf_model::fit_psf(&c.img, &[], &PsfConfig::default()),
        Err(ScienceError::TooFewPsfStars { found: 0, .. })
    ));
    assert!(matches!(
        calibrate::fit_astrometry(
            &c.stars,
            &c.sd.header_wcs,
            &[],
            c.sd.mjd,
            &AstrometryConfig::default()
        ),
        Err(ScienceError::WcsFit(_))
    ));
    let strict = AstrometryConfig {
        max_rms_arcsec: 1e-4,
        ..AstrometryConfig::default()
    };
    assert!(matches!(
        calibrate::fit_astrometry(&c.stars, &c.sd.header_wcs, &c.refcat, c.sd.mjd, &strict),
        Err(ScienceError::WcsFit(_))
    ));
    assert!(matches!(
        calibrate::fit_photometry(&c.stars, &c.refcat, &[], 2, &PhotometryConfig::default()),
        Err(ScienceError::PhotoCalib(_))
    ));
}
