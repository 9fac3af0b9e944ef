//! The whole chain on simulated detectors, scored against the simulator's truth: the
//! checks of the science-core issue (noise of the difference image, completeness,
//! spurious detections, PSF-flux accuracy and pulls, astrometric RMS) and the failure
//! paths as the pipeline reports them (stage and typed error).
//!
//! Detectors are 2048² (a quarter of an LSST detector) to keep CI time down; spurious
//! counts are scaled to a 4096² detector. Injected constant point sources
//! (`NightSpec::injected_density_deg2`) give enough transients for completeness.

mod common;

use apflow_core::ids::{DetectorId, DiaObjectId};
use apflow_core::time::MjdTai;
use apflow_prompt_proc::apdb_stage::{DetectorVisit, dia_source_records, forced_photometry};
use apflow_prompt_proc::association::ForcedTarget;
use apflow_prompt_proc::calibrate::RefStar;
use apflow_prompt_proc::error::ScienceError;
use apflow_prompt_proc::image::{Image, MaskedImage, mask, median_and_iqr_sigma};
use apflow_prompt_proc::io::TemplateTile;
use apflow_prompt_proc::pipeline::{
    CalibratedScience, DetectorResult, PipelineConfig, process_calibrated, process_detector,
};
use apflow_prompt_proc::warp::select_tiles;
use apflow_sim::{Night, NightSpec, Profile, TruthKind, TruthRow};
use common::{calibs_from_sim, raw_from_sim, tile_from_sim, tile_info};

const SIZE: u32 = 2048;

fn spec() -> NightSpec {
    NightSpec {
        visits: 2,
        detectors: 1,
        detector_size: SIZE,
        seed: 20261122,
        profile: Profile::Typical,
        snaps: 2,
        injected_density_deg2: 20_000.0,
        ..NightSpec::default()
    }
}

fn refcat(night: &Night) -> Vec<RefStar> {
    night
        .refcat()
        .into_iter()
        .map(|r| RefStar {
            id: r.id,
            ra_deg: r.ra_deg,
            dec_deg: r.dec_deg,
            pm_ra_masyr: r.pm_ra_masyr,
            pm_dec_masyr: r.pm_dec_masyr,
            epoch_mjd: r.epoch_mjd,
            flux_njy: r.flux_njy,
            flux_err_njy: r.flux_err_njy,
        })
        .collect()
}

struct Run {
    result: DetectorResult,
    truth: Vec<TruthRow>,
    tiles: Vec<TemplateTile>,
}

fn run_visit(night: &Night, i: usize, refs: &[RefStar], cfg: &PipelineConfig) -> Run {
    let d = DetectorId(0);
    let snaps: Vec<_> = (0..night.spec().snaps)
        .map(|s| raw_from_sim(&night.render_raw(i, d, s).unwrap()))
        .collect();
    let calibs = calibs_from_sim(night, 0);
    let band = night.visits()[i].band;
    let sim_tiles = night.template_tiles(band);
    let index: Vec<_> = sim_tiles.iter().map(tile_info).collect();
    let header = night.header_wcs(i, d).unwrap();
    let wanted = select_tiles(&index, band.as_str(), &header, SIZE as usize, SIZE as usize);
    let tiles: Vec<TemplateTile> = sim_tiles
        .iter()
        .filter(|t| wanted.iter().any(|w| w.id == t.id))
        .map(|t| tile_from_sim(night, t))
        .collect();
    let tile_refs: Vec<&TemplateTile> = tiles.iter().collect();
    let result = process_detector(&snaps, &calibs, &tile_refs, refs, cfg)
        .unwrap_or_else(|e| panic!("visit {i}: {e}"));
    Run {
        result,
        truth: night.truth(i, d).unwrap(),
        tiles,
    }
}

/// 1σ error of a PSF-weighted flux at (x, y) on `img`: sqrt(1 / Σ P² / var).
fn psf_flux_sigma(img: &MaskedImage, psf: &Image<f32>, x: f64, y: f64) -> f64 {
    let h = (psf.width() / 2) as isize;
    let (xc, yc) = (x.round() as isize, y.round() as isize);
    let mut s = 0.0;
    for j in -h..=h {
        for i in -h..=h {
            if let Some(v) = img.variance.get_checked(xc + i, yc + j)
                && v > 0.0
            {
                let p = f64::from(psf.get((i + h) as usize, (j + h) as usize));
                s += p * p / f64::from(v);
            }
        }
    }
    if s > 0.0 {
        s.recip().sqrt()
    } else {
        f64::INFINITY
    }
}

#[derive(Debug, Default)]
struct Score {
    bright_found: usize,
    bright_total: usize,
    faint_found: usize,
    faint_total: usize,
    spurious_before_cut: usize,
    spurious_after_cut: usize,
    pixels: usize,
    flux_ratios: Vec<f32>,
    pulls: Vec<f32>,
    noise_ratios: Vec<f64>,
    astrometric_rms: Vec<f64>,
}

fn near(t: &TruthRow, x: f64, y: f64) -> bool {
    let r = if t.kind == TruthKind::SolarSystem {
        3.0 + 0.5 * t.trail_length_px
    } else {
        3.0
    };
    (t.x - x).hypot(t.y - y) <= r
}

fn score(run: &Run, s: &mut Score) {
    let r = &run.result;
    let (w, h) = r.difference.dims();
    s.pixels += w * h;
    // Noise of the difference image in blank pixels, against its variance plane.
    let skip = mask::UNUSABLE | mask::INTRP | mask::DETECTED | mask::DETECTED_NEGATIVE;
    let mut z: Vec<f32> = (0..w * h)
        .step_by(7)
        .filter(|&k| r.difference.mask.data()[k] & skip == 0)
        .map(|k| r.difference.image.data()[k] / r.difference.variance.data()[k].sqrt())
        .collect();
    s.noise_ratios
        .push(f64::from(median_and_iqr_sigma(&mut z).unwrap().1));
    s.astrometric_rms
        .push(r.calibration.astrometric_rms_arcsec.unwrap());

    // Completeness of transients that are absent from the template.
    for t in &run.truth {
        let is_new = matches!(
            t.kind,
            TruthKind::Injected | TruthKind::Supernova | TruthKind::FastTransient
        );
        let edge = 20.0;
        if !is_new || t.x < edge || t.y < edge || t.x > w as f64 - edge || t.y > h as f64 - edge {
            continue;
        }
        let sigma = psf_flux_sigma(&r.difference, &r.difference_psf_centre, t.x, t.y);
        let snr = t.diff_flux_njy / sigma;
        let found = r
            .reliable()
            .find(|d| !d.measurement.is_negative && near(t, d.measurement.x, d.measurement.y));
        if snr >= 10.0 {
            s.bright_total += 1;
            s.bright_found += usize::from(found.is_some());
        } else if snr >= 6.0 {
            s.faint_total += 1;
            s.faint_found += usize::from(found.is_some());
        }
        // Flux accuracy and pulls of isolated injected point sources.
        if let Some(d) = found
            && t.kind == TruthKind::Injected
            && snr >= 10.0
            && !d.measurement.is_dipole
        {
            let m = &d.measurement;
            s.flux_ratios.push((m.psf_flux / t.diff_flux_njy) as f32);
            s.pulls
                .push(((m.psf_flux - t.diff_flux_njy) / m.psf_flux_err) as f32);
        }
    }
    // Spurious: detections matching nothing the simulator put there.
    for d in &r.sources {
        let m = &d.measurement;
        if run.truth.iter().any(|t| near(t, m.x, m.y)) {
            continue;
        }
        s.spurious_before_cut += 1;
        if d.passes_reliability {
            s.spurious_after_cut += 1;
            eprintln!(
                "spurious: x {:.1} y {:.1} flux {:.0} snr {:.1} neg {} dipole {} rel {:.2} sci {:.0} tmpl {:.0}",
                m.x,
                m.y,
                m.psf_flux,
                m.snr,
                m.is_negative,
                m.is_dipole,
                d.reliability,
                m.science_flux,
                m.template_flux
            );
        }
    }
}

fn median(v: &mut [f32]) -> f32 {
    v.sort_by(f32::total_cmp);
    v[v.len() / 2]
}

fn std(v: &[f32]) -> f32 {
    let n = v.len() as f32;
    let m = v.iter().sum::<f32>() / n;
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f32>() / (n - 1.0)).sqrt()
}

#[test]
fn simulated_detectors_meet_the_science_checks() {
    let night = Night::new(&spec()).unwrap();
    let refs = refcat(&night);
    let cfg = PipelineConfig::default();
    let mut s = Score::default();
    for i in 0..night.visits().len() {
        let run = run_visit(&night, i, &refs, &cfg);
        let r = &run.result;
        eprintln!(
            "visit {i}: {} sources ({} reliable), footprints +{} −{}, calib {:?}, subtraction {:?}, coverage {:.3}",
            r.sources.len(),
            r.reliable().count(),
            r.footprints.0,
            r.footprints.1,
            r.calibration,
            r.subtraction,
            r.template_coverage
        );
        for t in &r.timings {
            eprintln!("  {:<12} {:7.1} ms", t.stage, t.seconds * 1e3);
        }
        // The surviving kernel stamps fit the spatial model to their noise (an outlier
        // kept by the rejection loop showed as 1.49 and 5 more spurious sources).
        assert!(
            r.subtraction.stamp_residual_rms < 1.2,
            "visit {i}: kernel stamp residual rms {}",
            r.subtraction.stamp_residual_rms
        );
        score(&run, &mut s);
    }
    let scale_4k = (4096.0 * 4096.0) / s.pixels as f64;
    let spurious_4k = s.spurious_after_cut as f64 * scale_4k;
    let bright = s.bright_found as f64 / s.bright_total.max(1) as f64;
    let faint = s.faint_found as f64 / s.faint_total.max(1) as f64;
    let med_ratio = median(&mut s.flux_ratios.clone());
    let pull_std = std(&s.pulls);
    eprintln!(
        "completeness SNR≥10 {}/{} = {bright:.3}, SNR 6–10 {}/{} = {faint:.3}",
        s.bright_found, s.bright_total, s.faint_found, s.faint_total
    );
    eprintln!(
        "spurious before cut {} ({:.1} per 4096²), after cut {} ({spurious_4k:.1} per 4096²)",
        s.spurious_before_cut,
        s.spurious_before_cut as f64 * scale_4k,
        s.spurious_after_cut
    );
    eprintln!(
        "psf flux ratio median {med_ratio:.4} over {}, pull σ {pull_std:.3}; noise ratios {:?}; astrometric rms {:?}",
        s.flux_ratios.len(),
        s.noise_ratios,
        s.astrometric_rms
    );
    // The checks of the science-core issue (with this seed: noise 1.007/1.004,
    // astrometry 0.005″/0.007″, completeness 0.988 / 0.984, 4 spurious per 4096²
    // after the cut and 40 before, flux ratio 0.999, pull σ 1.15):
    for n in &s.noise_ratios {
        assert!(
            (0.95..=1.10).contains(n),
            "difference noise / propagated σ = {n}"
        );
    }
    for a in &s.astrometric_rms {
        assert!(*a <= 0.05, "astrometric rms {a}″");
    }
    assert!(
        s.bright_total >= 50,
        "too few bright transients to judge: {}",
        s.bright_total
    );
    assert!(bright >= 0.95, "completeness at SNR ≥ 10: {bright}");
    assert!(
        s.faint_total >= 30,
        "too few SNR 6–10 transients to judge: {}",
        s.faint_total
    );
    assert!(faint >= 0.80, "completeness at SNR 6–10: {faint}");
    // After the reliability cut (`PipelineConfig::reliability_threshold`, 0.5).
    assert!(
        spurious_4k <= 10.0,
        "spurious per 4096² after the cut: {spurious_4k}"
    );
    assert!(
        (med_ratio - 1.0).abs() <= 0.02,
        "median PSF flux ratio {med_ratio}"
    );
    assert!((0.9..=1.2).contains(&pull_std), "pull σ {pull_std}");
}

#[test]
fn failures_name_their_stage_and_reason() {
    let spec = NightSpec {
        visits: 1,
        detectors: 1,
        detector_size: 1024,
        seed: 5,
        snaps: 1,
        ..NightSpec::default()
    };
    let night = Night::new(&spec).unwrap();
    let refs = refcat(&night);
    let d = DetectorId(0);
    let snap = raw_from_sim(&night.render_raw(0, d, 0).unwrap());
    let calibs = calibs_from_sim(&night, 0);
    // A 1024² detector has few bright stars: allow a PSF from 4.
    let mut cfg = PipelineConfig::default();
    cfg.psf.min_stars = 4;
    cfg.psf.min_stars_per_term = 4;
    cfg.astrometry.min_matches = 4;
    cfg.photometry.min_stars = 3;

    // No template tile: the warp stage reports no coverage.
    let e = process_detector(std::slice::from_ref(&snap), &calibs, &[], &refs, &cfg).unwrap_err();
    assert_eq!(e.stage, "warp", "{e}");
    assert!(
        matches!(e.error, ScienceError::NoTemplateCoverage { .. }),
        "{e}"
    );
    assert_eq!(e.error.reason(), "no_template_coverage");

    // No reference stars: the WCS fit fails.
    let e = process_detector(std::slice::from_ref(&snap), &calibs, &[], &[], &cfg).unwrap_err();
    assert_eq!(e.stage, "calibrate", "{e}");
    assert!(matches!(e.error, ScienceError::WcsFit(_)), "{e}");

    // Demanding more PSF stars than a detector has.
    let mut strict = cfg.clone();
    strict.psf.min_stars = 100_000;
    let e =
        process_detector(std::slice::from_ref(&snap), &calibs, &[], &refs, &strict).unwrap_err();
    assert_eq!(e.stage, "characterize", "{e}");
    assert!(
        matches!(e.error, ScienceError::TooFewPsfStars { .. }),
        "{e}"
    );
}

/// `process_calibrated` (what `apflow diffim` runs) on the calibrated science image of
/// the raw path, given in an arbitrary unit and without a refcat: the relative scale to
/// the template recovers that unit, and the difference is as clean as the raw path's.
#[test]
fn the_calibrated_path_recovers_the_scale_and_the_sources() {
    let night = Night::new(&NightSpec {
        visits: 1,
        ..spec()
    })
    .unwrap();
    let refs = refcat(&night);
    let cfg = PipelineConfig::default();
    let run = run_visit(&night, 0, &refs, &cfg);
    let r = &run.result;
    let k = 0.55f32;
    let mut masked = r.science.clone();
    masked.scale(1.0 / k);
    let science = CalibratedScience {
        masked,
        wcs: r.wcs.clone(),
        band: None,
        mjd: None,
        in_njy: false,
    };
    let tiles: Vec<&TemplateTile> = run.tiles.iter().collect();
    let c = process_calibrated(science, &tiles, None, &cfg).unwrap();
    assert_eq!(c.calibration.method, "relative");
    let ratio = c.calibration.scale_to_njy / f64::from(k);
    assert!(
        (ratio - 1.0).abs() < 0.02,
        "relative scale {ratio} of the true unit"
    );
    let (w, h) = c.difference.dims();
    let skip = mask::UNUSABLE | mask::INTRP;
    let mut z: Vec<f32> = (0..w * h)
        .step_by(7)
        .filter(|&i| c.difference.mask.data()[i] & skip == 0)
        .map(|i| c.difference.image.data()[i] / c.difference.variance.data()[i].sqrt())
        .collect();
    let sigma = median_and_iqr_sigma(&mut z).unwrap().1;
    assert!(
        (0.95..=1.10).contains(&sigma),
        "difference noise ratio {sigma}"
    );
    let (a, b) = (r.reliable().count() as f64, c.reliable().count() as f64);
    eprintln!("raw path {a} reliable DiaSources, calibrated path {b}; scale ratio {ratio:.4}");
    assert!(
        (b - a).abs() <= 0.1 * a,
        "{b} reliable DiaSources against {a}"
    );
}

/// The association stage's pixel work on a real result: the records carry the
/// measurements, and forced photometry at the detections' own positions gives back
/// their fluxes (science: the same fit, so equal; difference: the detector-centre PSF
/// against the fit's local one).
#[test]
fn records_and_forced_photometry_agree_with_the_measurements() {
    let night = Night::new(&spec()).unwrap();
    let refs = refcat(&night);
    let cfg = PipelineConfig::default();
    let r = run_visit(&night, 0, &refs, &cfg).result;
    let plan = &night.visits()[0];
    let visit = DetectorVisit {
        visit: plan.visit,
        detector: DetectorId(0),
        band: plan.band.as_str().into(),
        midpoint: MjdTai(61000.0),
        size: (SIZE as usize, SIZE as usize),
    };
    let records = dia_source_records(&visit, &r.sources, &r.wcs, MjdTai(61000.01)).unwrap();
    assert_eq!(records.len(), r.sources.len());
    let ids: std::collections::HashSet<_> = records.iter().map(|s| s.dia_source_id).collect();
    assert_eq!(ids.len(), records.len(), "DiaSource ids are unique");
    for (rec, s) in records.iter().zip(&r.sources) {
        let m = &s.measurement;
        assert_eq!(
            rec.psf_flux,
            Some(m.psf_flux as f32).filter(|f| f.is_finite())
        );
        assert_eq!(rec.reliability, Some(s.reliability));
        assert_eq!((rec.ra, rec.dec), (m.ra, m.dec));
    }
    // Bright, isolated point sources (no dipoles, no trails).
    let picked: Vec<(usize, ForcedTarget)> = records
        .iter()
        .enumerate()
        .filter(|(i, _)| {
            let m = &r.sources[*i].measurement;
            r.sources[*i].passes_reliability
                && !m.is_negative
                && !m.is_dipole_candidate
                && m.trail_ndata == 0
                && m.snr >= 10.0
                && m.science_flux.is_finite()
        })
        .map(|(i, rec)| {
            let t = ForcedTarget {
                dia_object_id: DiaObjectId(rec.dia_source_id.0),
                ra: rec.ra,
                dec: rec.dec,
            };
            (i, t)
        })
        .collect();
    assert!(picked.len() >= 50, "{} bright detections", picked.len());
    let targets: Vec<ForcedTarget> = picked.iter().map(|p| p.1.clone()).collect();
    let forced = forced_photometry(&visit, &r, &targets, &cfg.measure, MjdTai(61000.01)).unwrap();
    assert_eq!(forced.len(), targets.len());
    let (mut ratios, mut pulls, mut sci) = (Vec::new(), Vec::new(), Vec::new());
    for ((i, _), f) in picked.iter().zip(&forced) {
        let m = &r.sources[*i].measurement;
        let fp = f64::from(f.psf_flux.unwrap());
        ratios.push((fp / m.psf_flux) as f32);
        pulls.push(((fp - m.psf_flux) / m.psf_flux_err).abs() as f32);
        sci.push((f64::from(f.science_flux.unwrap()) / m.science_flux) as f32);
    }
    let (ratio, pull, sci_ratio) = (median(&mut ratios), median(&mut pulls), median(&mut sci));
    eprintln!(
        "forced/fit flux on {}: difference median ratio {ratio:.4}, median |pull| {pull:.3}; science median ratio {sci_ratio:.5}",
        forced.len()
    );
    assert!((ratio - 1.0).abs() < 0.02, "difference forced/fit: {ratio}");
    assert!(pull < 0.5, "median |forced − fit| / σ: {pull}");
    assert!(
        (sci_ratio - 1.0).abs() < 1e-3,
        "science forced/fit: {sci_ratio}"
    );
}
