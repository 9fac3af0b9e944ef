//! Photometric calibration: the factor from electrons (PSF fluxes on the ISR-corrected
//! image) to nJy, from reference stars matched by the astrometric fit.
//!
//! For each matched, unsaturated, unblended star with a PSF flux, the ratio
//! `r = F_ref / F_psf` (nJy per electron) is formed; `ln r` is iteratively σ-clipped
//! about its median (σ from the IQR), and the survivors' inverse-variance weighted mean
//! of `ln r` (errors from the reference and PSF flux errors) is the calibration. Its
//! error is the larger of the formal error and the scatter / √n.
//! `zero_point_mag = 31.4 − 2.5 log₁₀(njy_per_electron)`: the AB magnitude of a
//! source giving 1 electron in the exposure.

use serde::Deserialize;

use super::astrometry::AstroMatch;
use super::refcat::RefStar;
use crate::error::ScienceError;
use crate::stars::{Star, flags};

/// AB magnitude of 1 nJy (AB magnitude 31.4 = 1 nJy).
pub const AB_NJY_ZERO_POINT: f64 = 31.4;

/// Tunables of [`fit_photometry`].
#[derive(Clone, Debug, Deserialize, PartialEq, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct PhotometryConfig {
    /// Minimum PSF-flux S/N of a calibration star.
    pub min_snr: f64,
    /// Minimum reference-flux S/N.
    pub min_ref_snr: f64,
    /// Clipping threshold, σ.
    pub clip_sigma: f64,
    /// Clipping iterations.
    pub iterations: usize,
    /// Fewer calibration stars than this is a failure.
    pub min_stars: usize,
}

impl Default for PhotometryConfig {
    fn default() -> Self {
        Self {
            min_snr: 20.0,
            min_ref_snr: 20.0,
            clip_sigma: 3.0,
            iterations: 5,
            min_stars: 5,
        }
    }
}

/// The photometric calibration of an exposure.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct PhotoCalib {
    /// nJy per electron: multiply an electron image by this to get nJy per pixel.
    pub njy_per_electron: f64,
    /// 1σ error of `njy_per_electron`.
    pub err: f64,
    /// AB magnitude giving 1 electron.
    pub zero_point_mag: f64,
    /// Stars in the final estimate.
    pub n_stars: usize,
}

/// Fits the calibration from `matches` (sources in `stars` with filled PSF fluxes,
/// references in `refcat`, as given to [`super::fit_astrometry`]) in band
/// `band_index` (0..6 = u g r i z y).
///
/// Errors: [`ScienceError::PhotoCalib`] when the band is invalid or fewer than
/// `cfg.min_stars` stars qualify or survive clipping.
pub fn fit_photometry(
    stars: &[Star],
    refcat: &[RefStar],
    matches: &[AstroMatch],
    band_index: usize,
    cfg: &PhotometryConfig,
) -> Result<PhotoCalib, ScienceError> {
    if band_index >= 6 {
        return Err(ScienceError::PhotoCalib(format!("band index {band_index}")));
    }
    let bad = flags::SATURATED | flags::BLENDED | flags::EDGE | flags::MASKED;
    let mut obs: Vec<(f64, f64)> = matches
        .iter()
        .filter_map(|m| {
            let s = stars.get(m.star)?;
            let r = refcat.get(m.refstar)?;
            let (f, fe) = (r.flux_njy[band_index], r.flux_err_njy[band_index]);
            let ok = s.flags & bad == 0
                && s.psf_flux > 0.0
                && s.psf_flux_err > 0.0
                && s.psf_flux / s.psf_flux_err >= cfg.min_snr
                && f > 0.0
                && fe > 0.0
                && f / fe >= cfg.min_ref_snr;
            ok.then(|| {
                let lr = (f / s.psf_flux).ln();
                let var = (fe / f).powi(2) + (s.psf_flux_err / s.psf_flux).powi(2);
                (lr, var)
            })
        })
        .collect();
    let too_few = |n: usize| {
        ScienceError::PhotoCalib(format!("{n} calibration stars, {} needed", cfg.min_stars))
    };
    if obs.len() < cfg.min_stars.max(1) {
        return Err(too_few(obs.len()));
    }
    for _ in 0..cfg.iterations {
        let mut v: Vec<f32> = obs.iter().map(|o| o.0 as f32).collect();
        let Some((med, sig)) = crate::image::median_and_iqr_sigma(&mut v) else {
            break;
        };
        let (med, sig) = (f64::from(med), f64::from(sig).max(1e-4));
        let before = obs.len();
        obs.retain(|o| (o.0 - med).abs() <= cfg.clip_sigma * sig);
        if obs.len() == before {
            break;
        }
    }
    let n = obs.len();
    if n < cfg.min_stars.max(1) {
        return Err(too_few(n));
    }
    let sw: f64 = obs.iter().map(|o| 1.0 / o.1).sum();
    let mean = obs.iter().map(|o| o.0 / o.1).sum::<f64>() / sw;
    let scatter =
        (obs.iter().map(|o| (o.0 - mean).powi(2)).sum::<f64>() / (n.max(2) - 1) as f64).sqrt();
    let err_ln = (1.0 / sw).sqrt().max(scatter / (n as f64).sqrt());
    let k = mean.exp();
    Ok(PhotoCalib {
        njy_per_electron: k,
        err: k * err_ln,
        zero_point_mag: AB_NJY_ZERO_POINT - 2.5 * k.log10(),
        n_stars: n,
    })
}
