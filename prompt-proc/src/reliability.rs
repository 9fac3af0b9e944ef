//! Reliability ("real/bogus") score of a DiaSource in [0, 1].
//!
//! The default model is a documented logistic combination of features that separate
//! astrophysical point sources on a difference image from the usual artefacts
//! (cosmic rays and hot pixels, subtraction residuals of bright or mis-registered
//! stars, edge effects, noise). It is a hand-set prior in the spirit of the early
//! real/bogus classifiers (Bloom et al. 2012, PASP 124, 1175; Goldstein et al. 2015,
//! AJ 150, 82, whose most important features were the PSF-fit quality, the shape
//! relative to the PSF, the masked fraction and the flux ratios used here), meant to be
//! replaced by a learned model through the [`ReliabilityModel`] trait.
//!
//! `score = 1 / (1 + exp(−z))` with `z` the sum of these terms ([`LogisticModel`]
//! fields, defaults in brackets):
//!
//! | term | expression | weight | reasoning |
//! |---|---|---|---|
//! | bias | 1 | `bias` [1.5] | a clean 5σ point source scores ≈ 0.8 |
//! | S/N | `ln(snr / 5)` (snr clamped to [1, 1000]) | `w_snr` [1.5] | brighter ⇒ more likely real: +1 at S/N 10, +2 at S/N 20 |
//! | fit quality | `max(0, χ²/dof − 1.5)` (≤ 10) | `w_chi2` [−0.8] | a point source fits the PSF; CRs, residuals and streak edges do not |
//! | too sharp | `max(0, ln(0.6 / size_ratio))` | `w_sharp` [−6] | `size_ratio = (ixx+iyy)/(ixxPsf+iyyPsf)`: below 0.6 nothing optical is that sharp (cosmic ray, hot pixel: ≈ 0.03–0.2) |
//! | too broad | `max(0, ln(size_ratio / 2))` unless trailed | `w_broad` [−1.5] | broad residuals of galaxies and PSF mismatch; a fitted trail is exempt when its minor-axis moment is at most twice the PSF's (a trail is a PSF across; a round broad residual is not) |
//! | masked | fraction of footprint pixels with BAD/SAT/CR/EDGE/NO_DATA/INTRP | `w_masked` [−6] | measurements on masked pixels are unreliable |
//! | centre masked | SAT, CR or BAD in the central 3×3 | `w_centre_bad` [−3] | the source sits on a defect |
//! | dipole | `isDipole` | `w_dipole` [−3] | mis-registration or DCR residual of a static star |
//! | opposite sign | noise-corrected fraction of opposite-sign flux near the source (0–1) | `w_opposite` [−5] | dipoles and ringing residuals carry both signs |
//! | template star | `ln(1 + max(0, |templateFlux|/|psfFlux| − 1))` (≤ 8) | `w_template` [−0.7] | a small difference on a bright template star is more often a residual (but variables are real, hence a mild weight) |
//! | edge | `max(0, 1 − d / (2 FWHM))` with `d` the distance to the nearest `EDGE`/`NO_DATA` pixel or the image edge | `w_edge` [−2] | convolution and PSF edge effects; the difference's unusable border is the kernel's reach wide, and a source centred inside it is detected at its inner boundary with a pulled centroid and a partial flux |
//! | no shape | adaptive moments failed | `w_shape_failed` [−1] | noise or odd morphology |
//!
//! `diff_to_science` (`psfFlux / scienceFlux`) is computed for learned models but
//! carries no weight here (it is degenerate with the template term for positives).

use crate::image::{MaskedImage, mask};
use crate::measure::DiaSourceMeasurement;
use crate::psf::FWHM_PER_SIGMA;

/// Features of one DiaSource for reliability scoring.
#[derive(Clone, Debug, PartialEq)]
pub struct ReliabilityFeatures {
    /// |psfFlux| / psfFluxErr.
    pub snr: f32,
    /// psfChi2 / (psfNdata − 3).
    pub psf_chi2_dof: f32,
    /// (ixx + iyy) / (ixxPsf + iyyPsf); NaN when the moments failed.
    pub size_ratio: f32,
    /// The adaptive moments failed.
    pub shape_failed: bool,
    /// Fraction of footprint pixels with an unusable or interpolated mask bit.
    pub masked_fraction: f32,
    /// SAT, CR or BAD in the central 3×3 pixels.
    pub centre_bad: bool,
    /// The dipole fit says dipole.
    pub is_dipole: bool,
    /// A trail was fitted (longer than one FWHM) and the source is PSF-narrow across it.
    pub is_trailed: bool,
    /// Noise-corrected fraction of opposite-sign flux within 2 PSF σ (Gaussian weight).
    pub opposite_fraction: f32,
    /// |templateFlux| / |psfFlux|.
    pub template_ratio: f32,
    /// psfFlux / scienceFlux.
    pub diff_to_science: f32,
    /// Distance to the nearest `EDGE`/`NO_DATA` pixel or image edge in PSF FWHM.
    pub edge_distance_fwhm: f32,
}

impl ReliabilityFeatures {
    /// Features of a measurement on its difference image.
    pub fn from_measurement(m: &DiaSourceMeasurement, diff: &MaskedImage) -> Self {
        let psf_size = m.ixx_psf + m.iyy_psf;
        let sigma = if psf_size.is_finite() && psf_size > 0.0 {
            (0.5 * psf_size).sqrt()
        } else {
            2.0
        };
        let fwhm = sigma * FWHM_PER_SIGMA;
        let (w, h) = diff.dims();
        let size_ratio = if m.shape_flag {
            f64::NAN
        } else {
            (m.ixx + m.iyy) / psf_size
        };
        let masked_fraction = masked_fraction(m, diff);
        let sign = if m.psf_flux < 0.0 || (m.psf_flux.is_nan() && m.is_negative) {
            -1.0
        } else {
            1.0
        };
        let opposite = opposite_fraction(diff, m.x, m.y, sign, 2.0 * sigma);
        let edge = distance_to_no_data(diff, m.x, m.y, 2.0 * fwhm)
            .min(m.x)
            .min(m.y)
            .min(w as f64 - 1.0 - m.x)
            .min(h as f64 - 1.0 - m.y)
            .max(0.0);
        // A trail is a PSF across: its minor-axis second moment stays near the PSF's.
        // A round broad residual (a galaxy's, a bright star's wing) can also take a
        // trail fit longer than a FWHM, but must not escape the broadness term.
        let lmin = 0.5 * (m.ixx + m.iyy) - (0.25 * (m.ixx - m.iyy).powi(2) + m.ixy.powi(2)).sqrt();
        let narrow = lmin.is_finite() && lmin <= TRAIL_MAX_MINOR_RATIO * 0.5 * psf_size;
        let cb = m.centre_flags;
        Self {
            snr: m.snr as f32,
            psf_chi2_dof: (m.psf_chi2 / (m.psf_ndata as f64 - 3.0).max(1.0)) as f32,
            size_ratio: size_ratio as f32,
            shape_failed: m.shape_flag,
            masked_fraction: masked_fraction as f32,
            centre_bad: cb.saturated || cb.cosmic_ray || cb.bad,
            is_dipole: m.is_dipole,
            is_trailed: m.trail_length.is_finite() && m.trail_length > fwhm && narrow,
            opposite_fraction: opposite as f32,
            template_ratio: (m.template_flux.abs() / m.psf_flux.abs()) as f32,
            diff_to_science: (m.psf_flux / m.science_flux) as f32,
            edge_distance_fwhm: (edge / fwhm) as f32,
        }
    }
}

/// A trail's minor-axis moment is at most this multiple of the PSF's (per axis).
const TRAIL_MAX_MINOR_RATIO: f64 = 2.0;

/// Distance (pixels) from `(x, y)` to the nearest `EDGE` or `NO_DATA` pixel within
/// `reach` (the difference image's unusable border is `2h` pixels wide, not the
/// image's own edge); `reach` when there is none.
fn distance_to_no_data(diff: &MaskedImage, x: f64, y: f64, reach: f64) -> f64 {
    if !x.is_finite() || !y.is_finite() || !reach.is_finite() {
        return reach;
    }
    let r = reach.ceil().clamp(0.0, 200.0) as isize;
    let (cx, cy) = (x.round() as isize, y.round() as isize);
    let mut best = reach;
    for py in cy - r..=cy + r {
        for px in cx - r..=cx + r {
            if let Some(mk) = diff.mask.get_checked(px, py)
                && mk & (mask::EDGE | mask::NO_DATA) != 0
            {
                best = best.min((px as f64 - x).hypot(py as f64 - y));
            }
        }
    }
    best
}

fn masked_fraction(m: &DiaSourceMeasurement, diff: &MaskedImage) -> f64 {
    let b = m.bbox;
    let bits = mask::UNUSABLE | mask::INTRP;
    let (mut n, mut bad) = (0usize, 0usize);
    for y in b.y0..=b.y1 {
        for x in b.x0..=b.x1 {
            n += 1;
            match diff.mask.get_checked(x as isize, y as isize) {
                Some(v) if v & bits == 0 => {}
                _ => bad += 1,
            }
        }
    }
    if n == 0 { 0.0 } else { bad as f64 / n as f64 }
}

/// `(Σ g·max(−s d, 0) − E_noise) / (Σ g·max(s d, 0) − E_noise)` clamped to [0, 1], with
/// a Gaussian weight `g` of width `sw` and `E_noise = Σ g σ_pix / √(2π)` the expected
/// one-sided sum of pure noise.
fn opposite_fraction(diff: &MaskedImage, x: f64, y: f64, s: f64, sw: f64) -> f64 {
    if !x.is_finite() || !y.is_finite() {
        return 0.0;
    }
    let r = (3.0 * sw).ceil() as isize;
    let (cx, cy) = (x.round() as isize, y.round() as isize);
    let (mut same, mut opp, mut noise) = (0.0, 0.0, 0.0);
    for py in cy - r..=cy + r {
        for px in cx - r..=cx + r {
            let (Some(v), Some(var), Some(mk)) = (
                diff.image.get_checked(px, py),
                diff.variance.get_checked(px, py),
                diff.mask.get_checked(px, py),
            ) else {
                continue;
            };
            if mk & mask::UNUSABLE != 0 || !v.is_finite() || var.is_nan() || var <= 0.0 {
                continue;
            }
            let d2 = (px as f64 - x).powi(2) + (py as f64 - y).powi(2);
            let g = (-0.5 * d2 / (sw * sw)).exp();
            let d = s * v as f64;
            if d > 0.0 {
                same += g * d;
            } else {
                opp -= g * d;
            }
            noise += g * (var as f64).sqrt() / (2.0 * std::f64::consts::PI).sqrt();
        }
    }
    let same = (same - noise).max(1e-30);
    let opp = (opp - noise).max(0.0);
    (opp / same).clamp(0.0, 1.0)
}

/// A reliability model: features → probability that the source is real.
pub trait ReliabilityModel: Send + Sync + std::fmt::Debug {
    /// Score in [0, 1].
    fn score(&self, f: &ReliabilityFeatures) -> f32;
}

/// The documented logistic model of the module doc; every weight is a field.
#[derive(Clone, Debug, PartialEq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogisticModel {
    /// Bias.
    pub bias: f32,
    /// Weight of `ln(snr / 5)`.
    pub w_snr: f32,
    /// Weight of `max(0, χ²/dof − 1.5)`.
    pub w_chi2: f32,
    /// Weight of `max(0, ln(0.6 / size_ratio))`.
    pub w_sharp: f32,
    /// Weight of `max(0, ln(size_ratio / 2))` (untrailed only).
    pub w_broad: f32,
    /// Weight of the masked fraction.
    pub w_masked: f32,
    /// Weight of a defect at the centre.
    pub w_centre_bad: f32,
    /// Weight of `isDipole`.
    pub w_dipole: f32,
    /// Weight of the opposite-sign fraction.
    pub w_opposite: f32,
    /// Weight of `ln(1 + max(0, template_ratio − 1))`.
    pub w_template: f32,
    /// Weight of `max(0, 1 − d / 2 FWHM)`.
    pub w_edge: f32,
    /// Weight of a failed shape measurement.
    pub w_shape_failed: f32,
}

impl Default for LogisticModel {
    fn default() -> Self {
        Self {
            bias: 1.5,
            w_snr: 1.5,
            w_chi2: -0.8,
            w_sharp: -6.0,
            w_broad: -1.5,
            w_masked: -6.0,
            w_centre_bad: -3.0,
            w_dipole: -3.0,
            w_opposite: -5.0,
            w_template: -0.7,
            w_edge: -2.0,
            w_shape_failed: -1.0,
        }
    }
}

impl LogisticModel {
    /// The linear predictor `z`.
    pub fn logit(&self, f: &ReliabilityFeatures) -> f32 {
        let fin = |v: f32, d: f32| if v.is_finite() { v } else { d };
        let snr = fin(f.snr, 1.0).clamp(1.0, 1000.0);
        let chi = fin(f.psf_chi2_dof, 1.0);
        let mut z = self.bias + self.w_snr * (snr / 5.0).ln();
        z += self.w_chi2 * (chi - 1.5).clamp(0.0, 10.0);
        if f.size_ratio.is_finite() && f.size_ratio > 0.0 {
            z += self.w_sharp * (0.6 / f.size_ratio).ln().max(0.0);
            if !f.is_trailed {
                z += self.w_broad * (f.size_ratio / 2.0).ln().max(0.0);
            }
        } else if f.shape_failed {
            z += self.w_shape_failed;
        }
        z += self.w_masked * fin(f.masked_fraction, 0.0).clamp(0.0, 1.0);
        if f.centre_bad {
            z += self.w_centre_bad;
        }
        if f.is_dipole {
            z += self.w_dipole;
        }
        z += self.w_opposite * fin(f.opposite_fraction, 0.0).clamp(0.0, 1.0);
        let tr = fin(f.template_ratio, 0.0);
        z += self.w_template * (1.0 + (tr - 1.0).max(0.0)).ln().min(8.0);
        z += self.w_edge * (1.0 - fin(f.edge_distance_fwhm, 10.0) / 2.0).max(0.0);
        z
    }
}

impl ReliabilityModel for LogisticModel {
    fn score(&self, f: &ReliabilityFeatures) -> f32 {
        let z = self.logit(f);
        1.0 / (1.0 + (-z).exp())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{DetectConfig, detect};
    use crate::measure::{MeasureConfig, measure};
    use crate::psf::Psf;
    use crate::synth::{DoubleGaussianPsf, GaussianPsfScaled, Rng, add_psf, noise_image};
    use apflow_core::wcs::TanSipWcs;

    fn psf(w: usize, h: usize) -> DoubleGaussianPsf {
        DoubleGaussianPsf::demo(w, h)
    }

    fn wcs() -> TanSipWcs {
        TanSipWcs::tan([10.0, -30.0], [512.0, 512.0], 0.2, 0.0)
    }

    fn flux_for_snr(p: &dyn Psf, snr: f64, sn: f64) -> f64 {
        crate::synth::flux_for_snr(p, 500.0, 500.0, snr, sn)
    }

    /// Scores of every measured source: `(x, y, score, measurement S/N)`.
    fn scores(
        diff: &MaskedImage,
        sci: &MaskedImage,
        tmpl: &MaskedImage,
        p: &dyn Psf,
        dcfg: &DetectConfig,
    ) -> Vec<(f64, f64, f32, f64)> {
        let det = detect(diff, p, dcfg);
        let ms = measure(diff, sci, tmpl, p, &wcs(), &det, &MeasureConfig::default());
        ms.iter()
            .map(|m| {
                let f = ReliabilityFeatures::from_measurement(m, diff);
                (m.x, m.y, LogisticModel::default().score(&f), m.snr)
            })
            .collect()
    }

    fn near(s: &[(f64, f64, f32, f64)], x: f64, y: f64) -> Vec<f32> {
        s.iter()
            .filter(|v| (v.0 - x).hypot(v.1 - y) < 4.0)
            .map(|v| v.2)
            .collect()
    }

    /// Science = template + diff; template empty (new sources).
    fn real_sources(seed: u64) -> (MaskedImage, MaskedImage, Vec<(f64, f64)>) {
        let (w, h) = (1024, 1024);
        let sn = 2.0;
        let p = psf(w, h);
        let mut diff = noise_image(w, h, sn as f32, seed);
        let mut rng = Rng::new(seed + 1);
        let mut truth = vec![];
        for gy in 1..(h / 48) - 1 {
            for gx in 1..(w / 48) - 1 {
                let x = (gx * 48) as f64 + rng.uniform() * 6.0 - 3.0;
                let y = (gy * 48) as f64 + rng.uniform() * 6.0 - 3.0;
                let snr = 10.0 * (1.0 + 4.0 * rng.uniform());
                add_psf(&mut diff.image, &p, x, y, flux_for_snr(&p, snr, sn), 15);
                truth.push((x, y));
            }
        }
        let tmpl = noise_image(w, h, 1.0, seed + 2);
        let mut sci = diff.clone();
        for (s, t) in sci.image.data_mut().iter_mut().zip(tmpl.image.data()) {
            *s += t;
        }
        (diff, sci, truth)
    }

    #[test]
    fn real_point_sources_score_high() {
        let (diff, sci, truth) = real_sources(100);
        let p = psf(1024, 1024);
        let tmpl = noise_image(1024, 1024, 1.0, 102);
        let s = scores(&diff, &sci, &tmpl, &p, &DetectConfig::default());
        let mut real: Vec<f32> = vec![];
        for &(x, y) in &truth {
            let v = near(&s, x, y);
            assert_eq!(v.len(), 1, "({x}, {y})");
            real.push(v[0]);
        }
        real.sort_by(f32::total_cmp);
        eprintln!(
            "real SNR 10–50: n {} min {:.3} 5% {:.3} median {:.3}",
            real.len(),
            real[0],
            real[real.len() / 20],
            real[real.len() / 2]
        );
        assert!(real[0] > 0.8, "{}", real[0]);
    }

    #[test]
    fn artefacts_score_low() {
        let (w, h) = (256, 256);
        let p = psf(w, h);
        let sn = 2.0f32;
        let mut diff = noise_image(w, h, sn, 200);
        let mut sci = noise_image(w, h, sn, 201);
        let mut tmpl = noise_image(w, h, 1.0, 202);
        // A cosmic-ray-like spike (unmasked) and a two-pixel hot pair.
        *diff.image.at_mut(60, 60) += 400.0;
        *sci.image.at_mut(60, 60) += 400.0;
        *diff.image.at_mut(60, 190) += 250.0;
        *diff.image.at_mut(61, 190) += 200.0;
        // A bright template star mis-registered by 0.4 px (dipole residual).
        let f = flux_for_snr(&p, 800.0, sn as f64);
        add_psf(&mut sci.image, &p, 190.2, 60.0, f, 15);
        add_psf(&mut tmpl.image, &p, 189.8, 60.0, f, 15);
        add_psf(&mut diff.image, &p, 190.2, 60.0, f, 15);
        add_psf(&mut diff.image, &p, 189.8, 60.0, -f, 15);
        // A bright star with a 6% PSF-width mismatch (ring residual).
        let narrow = GaussianPsfScaled {
            psf: p,
            scale: 0.94,
        };
        add_psf(&mut sci.image, &p, 190.0, 190.0, f, 15);
        add_psf(&mut tmpl.image, &p, 190.0, 190.0, f, 15);
        add_psf(&mut diff.image, &narrow, 190.0, 190.0, f, 15);
        add_psf(&mut diff.image, &p, 190.0, 190.0, -f, 15);
        let s = scores(&diff, &sci, &tmpl, &p, &DetectConfig::default());
        eprintln!("{s:?}");
        for (x, y, what) in [
            (60.0, 60.0, "spike"),
            (60.5, 190.0, "hot pair"),
            (190.0, 60.0, "dipole"),
            (190.0, 190.0, "ring"),
        ] {
            let v = near(&s, x, y);
            assert!(!v.is_empty(), "{what} detected");
            for sc in v {
                assert!(sc < 0.3, "{what}: {sc}");
            }
        }
    }

    #[test]
    fn noise_fluctuations_score_lower_than_real_sources() {
        let (w, h) = (2048, 2048);
        let p = psf(w, h);
        let noise = noise_image(w, h, 2.0, 300);
        let zero = MaskedImage::new(w, h);
        // A 4σ threshold to collect enough pure-noise peaks (≈ 5σ in the PSF fit).
        let cfg = DetectConfig {
            threshold: 4.2,
            ..DetectConfig::default()
        };
        let s = scores(&noise, &noise, &zero, &p, &cfg);
        let mean_noise = s.iter().map(|v| v.2 as f64).sum::<f64>() / s.len() as f64;
        let (diff, sci, _) = real_sources(400);
        let tmpl = noise_image(1024, 1024, 1.0, 402);
        let r = scores(
            &diff,
            &sci,
            &tmpl,
            &psf(1024, 1024),
            &DetectConfig::default(),
        );
        let mean_real = r.iter().map(|v| v.2 as f64).sum::<f64>() / r.len() as f64;
        eprintln!(
            "noise peaks {} mean score {mean_noise:.3}; real mean {mean_real:.3}",
            s.len()
        );
        assert!(s.len() >= 10);
        assert!(mean_noise < mean_real - 0.05, "{mean_noise} {mean_real}");
    }

    /// A source centred in the difference's unusable border is detected at the border's
    /// inner edge (the masked pixels count as zero): it must be penalised as an edge
    /// source although it is far from the image edge; the same source in the open is
    /// not. `distance_to_no_data` measures to the band.
    #[test]
    fn sources_at_the_unusable_border_score_lower() {
        let (w, h) = (256, 256);
        let p = psf(w, h);
        let sn = 2.0;
        let mut diff = noise_image(w, h, sn as f32, 7);
        let f = flux_for_snr(&p, 40.0, sn);
        add_psf(&mut diff.image, &p, 128.0, 38.0, f, 15);
        add_psf(&mut diff.image, &p, 128.0, 160.0, f, 15);
        // EDGE band 40 px deep at the bottom: the first source sits 2 px inside it.
        for y in 0..40 {
            for x in 0..w {
                let m = diff.mask.get(x, y);
                diff.mask.set(x, y, m | mask::EDGE);
            }
        }
        assert!((distance_to_no_data(&diff, 128.0, 45.0, 20.0) - 6.0).abs() < 1e-9);
        assert_eq!(distance_to_no_data(&diff, 128.0, 160.0, 20.0), 20.0);
        let sci = diff.clone();
        let tmpl = noise_image(w, h, 1.0, 8);
        let s = scores(&diff, &sci, &tmpl, &p, &DetectConfig::default());
        let open = s
            .iter()
            .find(|v| (v.0 - 128.0).hypot(v.1 - 160.0) < 3.0)
            .expect("the open source");
        let border = s
            .iter()
            .filter(|v| (v.0 - 128.0).abs() < 6.0 && v.1 < 60.0)
            .map(|v| v.2)
            .fold(f32::NAN, f32::max);
        eprintln!("open {:.3}, at the border {border:.3}", open.2);
        assert!(open.2 > 0.8, "{}", open.2);
        assert!(border < open.2 - 0.3, "{border}");
    }

    /// A fitted "trail" that is broad across (a round residual) does not escape the
    /// broadness term; a PSF-narrow one does.
    #[test]
    fn only_psf_narrow_trails_are_exempt_from_broadness() {
        let (w, h) = (128, 128);
        let p = psf(w, h);
        let mut diff = noise_image(w, h, 2.0, 3);
        add_psf(
            &mut diff.image,
            &p,
            64.0,
            64.0,
            flux_for_snr(&p, 30.0, 2.0),
            15,
        );
        let det = detect(&diff, &p, &DetectConfig::default());
        let ms = measure(
            &diff,
            &diff,
            &diff,
            &p,
            &wcs(),
            &det,
            &MeasureConfig::default(),
        );
        let mut m = ms
            .into_iter()
            .find(|m| (m.x - 64.0).hypot(m.y - 64.0) < 2.0)
            .expect("the source");
        let psf_axis = 0.5 * (m.ixx_psf + m.iyy_psf);
        m.trail_length = 30.0;
        // Round and 8× the PSF's moments: not a trail.
        (m.ixx, m.iyy, m.ixy) = (8.0 * psf_axis, 8.0 * psf_axis, 0.0);
        let round = ReliabilityFeatures::from_measurement(&m, &diff);
        assert!(!round.is_trailed);
        // Long along x, the PSF's width across: a trail.
        (m.ixx, m.iyy, m.ixy) = (15.0 * psf_axis, psf_axis, 0.0);
        let trail = ReliabilityFeatures::from_measurement(&m, &diff);
        assert!(trail.is_trailed);
        let model = LogisticModel::default();
        assert!(model.logit(&round) < model.logit(&trail) - 2.0);
    }

    #[test]
    fn a_custom_model_replaces_the_default() {
        #[derive(Debug)]
        struct Always;
        impl ReliabilityModel for Always {
            fn score(&self, _: &ReliabilityFeatures) -> f32 {
                0.5
            }
        }
        let models: Vec<Box<dyn ReliabilityModel>> =
            vec![Box::new(Always), Box::new(LogisticModel::default())];
        let f = ReliabilityFeatures {
            snr: f32::NAN,
            psf_chi2_dof: f32::NAN,
            size_ratio: f32::NAN,
            shape_failed: true,
            masked_fraction: 1.0,
            centre_bad: true,
            is_dipole: true,
            is_trailed: false,
            opposite_fraction: f32::NAN,
            template_ratio: f32::INFINITY,
            diff_to_science: f32::NAN,
            edge_distance_fwhm: 0.0,
        };
        for m in &models {
            let s = m.score(&f);
            assert!((0.0..=1.0).contains(&s) && s.is_finite());
        }
        assert!(models[1].score(&f) < 0.01);
    }
}
