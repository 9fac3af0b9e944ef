//! Rendering pixels: sources through the PSF into an image of expected electrons
//! (or nJy for templates), then the instrument — flat field, dark current, photon and
//! read noise, cosmic rays, saturation with bleed trails, bias and the amplifier
//! readout into raw ADU.
//!
//! Noise model (per pixel, electrons): the expected charge
//! `m = (S + sky) · flat + dark · t` is drawn from a Poisson distribution — exactly
//! for `m < 20`, by its Gaussian approximation `N(m, m)` above — plus Gaussian read
//! noise of σ = `RDNOISE` e⁻. Raw values are `round(e / GAIN + bias + pattern)` ADU,
//! clipped to the 18-bit ADC range.

use apflow_core::geom::{TangentPlane, UnitVector};
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

use crate::camera::{
    ADC_MAX, AmpLayout, AmpParams, DetectorModel, FULL_WELL_E, PARALLEL_OVERSCAN, PRESCAN,
};
use crate::psf::{Gauss, add_mixture, convolve, galaxy_gaussians};
use crate::schedule::{Band, SatelliteTrail};
use crate::sky::CellCatalog;
use crate::wcs::TanSipWcs;

/// Below this expected charge (e⁻) photon noise is drawn exactly from a Poisson law.
pub const EXACT_POISSON_BELOW_E: f64 = 20.0;
/// Cosmic-ray rate, per cm² per second (≈ 2 per cm² per minute at 2,700 m).
pub const COSMIC_RAY_RATE_CM2_S: f64 = 2.0 / 60.0;
/// Pixel pitch, cm (10 µm).
pub const PIXEL_PITCH_CM: f64 = 1.0e-3;
/// Silicon thickness in pixels (100 µm / 10 µm).
pub const THICKNESS_PX: f64 = 10.0;
/// Ionisation by a minimum-ionising muon, e⁻ per µm of silicon.
pub const CR_E_PER_UM: f64 = 80.0;

/// Primary-header content of a raw exposure (see `docs/CAMERA.md`).
#[derive(Clone, Debug, PartialEq)]
pub struct RawHeader {
    /// `TELESCOP`.
    pub telescope: String,
    /// `INSTRUME`.
    pub instrument: String,
    /// `VISIT`: Rubin-style visit id.
    pub visit: u64,
    /// `EXPOSURE`: exposure id (`visit * 10 + snap`).
    pub exposure: u64,
    /// `SNAP`: 0 or 1.
    pub snap: u8,
    /// `DETECTOR`.
    pub detector: u16,
    /// `BAND`.
    pub band: Band,
    /// `DAYOBS`.
    pub day_obs: u32,
    /// `SEQNUM`.
    pub seq_num: u32,
    /// `GROUPID`.
    pub group: String,
    /// `MJD-OBS`: shutter open, MJD TAI.
    pub mjd_obs: f64,
    /// `MJD-END`: shutter close, MJD TAI.
    pub mjd_end: f64,
    /// `MJD-RDO`: end of readout, MJD TAI.
    pub mjd_readout_end: f64,
    /// `EXPTIME`: open-shutter time, s.
    pub exptime_s: f64,
    /// `RA`: boresight right ascension, degrees.
    pub ra_deg: f64,
    /// `DEC`: boresight declination, degrees.
    pub dec_deg: f64,
    /// `ROTPA`: position angle of the detector +y axis east of north, degrees.
    pub rotpa_deg: f64,
    /// `AIRMASS`.
    pub airmass: f64,
    /// `SEEING`: FWHM at the boresight, arcsec.
    pub seeing_arcsec: f64,
    /// Detector side, pixels (`DETSIZE`).
    pub detector_size: u32,
    /// The (header) WCS of the assembled detector.
    pub wcs: TanSipWcs,
}

/// One amplifier's raw pixels.
#[derive(Clone, Debug, PartialEq)]
pub struct AmpImage {
    /// Geometry.
    pub layout: AmpLayout,
    /// Electronics (gain and read noise go into the header).
    pub params: AmpParams,
    /// Raw ADU, row-major, `raw_height × raw_width`, in readout order.
    pub data: Vec<i32>,
}

impl AmpImage {
    /// Raw value at column `i`, row `j` of the raw array (0-based, including prescan).
    pub fn at(&self, i: u32, j: u32) -> i32 {
        self.data[(j * self.layout.raw_width() + i) as usize]
    }
}

/// A raw exposure of one detector: header and 16 amplifiers.
#[derive(Clone, Debug, PartialEq)]
pub struct RawExposure {
    /// Primary header.
    pub header: RawHeader,
    /// The amplifiers, `AMP00`–`AMP15`.
    pub amps: Vec<AmpImage>,
}

/// When source fluxes are evaluated.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Epoch<'a> {
    /// At one instant, MJD TAI.
    Instant(f64),
    /// Averaged over the epochs of a coadd (MJD TAI).
    Mean(&'a [f64]),
}

impl Epoch<'_> {
    pub(crate) fn mjd(&self) -> f64 {
        match self {
            Epoch::Instant(t) => *t,
            Epoch::Mean(ts) => ts.iter().sum::<f64>() / ts.len().max(1) as f64,
        }
    }
    pub(crate) fn flux(&self, f: impl Fn(f64) -> f64) -> f64 {
        match self {
            Epoch::Instant(t) => f(*t),
            Epoch::Mean(ts) => ts.iter().map(|&t| f(t)).sum::<f64>() / ts.len().max(1) as f64,
        }
    }
}

/// Where and how to paint: an image grid, its true WCS and its PSF.
pub(crate) struct Canvas<'a> {
    pub width: usize,
    pub height: usize,
    pub wcs: &'a TanSipWcs,
    pub plane: TangentPlane,
    /// PSF (without pixel box) at a pixel position.
    pub psf: &'a dyn Fn(f64, f64) -> [Gauss; 3],
    /// Image units per nJy (e⁻ per nJy for the exposure, or 1 for nJy images).
    pub units_per_njy: f64,
    /// Draw each Gaussian down to this level per pixel (image units).
    pub floor: f64,
    /// Sources farther than this outside the image are skipped, pixels.
    pub margin_px: f64,
}

impl Canvas<'_> {
    fn pixel(&self, p: UnitVector) -> Option<(f64, f64)> {
        let (x, y) = self.wcs.unit_to_pixel(&self.plane, p)?;
        let m = self.margin_px;
        (x > -m && y > -m && x < self.width as f64 + m && y < self.height as f64 + m)
            .then_some((x, y))
    }

    /// Paints a point source of `flux_njy` at sky position `p`; returns its pixel position.
    pub(crate) fn point(
        &self,
        img: &mut [f32],
        p: UnitVector,
        flux_njy: f64,
    ) -> Option<(f64, f64)> {
        let (x, y) = self.pixel(p)?;
        if flux_njy > 0.0 {
            let psf = (self.psf)(x, y);
            add_mixture(
                img,
                self.width,
                self.height,
                x,
                y,
                flux_njy * self.units_per_njy,
                &psf,
                self.floor,
            );
        }
        Some((x, y))
    }

    /// Paints a source trailed uniformly from `a` to `b` (sky positions at shutter open
    /// and close), as PSF images every ≤ 0.5 px along the trail.
    pub(crate) fn trail(&self, img: &mut [f32], a: UnitVector, b: UnitVector, flux_njy: f64) {
        let (Some((xa, ya)), Some((xb, yb))) = (
            self.wcs.unit_to_pixel(&self.plane, a),
            self.wcs.unit_to_pixel(&self.plane, b),
        ) else {
            return;
        };
        let len = (xb - xa).hypot(yb - ya);
        let m = self.margin_px;
        let (w, h) = (self.width as f64, self.height as f64);
        if xa.max(xb) < -m || ya.max(yb) < -m || xa.min(xb) > w + m || ya.min(yb) > h + m {
            return;
        }
        let n = ((len / 0.5).ceil() as usize).max(1);
        let psf = (self.psf)(0.5 * (xa + xb), 0.5 * (ya + yb));
        let each = flux_njy * self.units_per_njy / n as f64;
        for k in 0..n {
            let f = (k as f64 + 0.5) / n as f64;
            let (x, y) = (xa + f * (xb - xa), ya + f * (yb - ya));
            add_mixture(
                img,
                self.width,
                self.height,
                x,
                y,
                each,
                &psf,
                self.floor / n as f64,
            );
        }
    }

    /// Paints the static sky (stars, galaxies, and transients when `transients`) of
    /// the catalogues in `band` at `epoch`.
    pub(crate) fn paint_static(
        &self,
        img: &mut [f32],
        cats: &[CellCatalog],
        band: Band,
        epoch: Epoch<'_>,
        transients: bool,
    ) {
        let b = band.index();
        let scale = self.wcs.pixel_scale_arcsec();
        for cat in cats {
            for s in &cat.stars {
                let flux = epoch.flux(|t| s.flux_njy(band, t));
                self.point(img, s.position(epoch.mjd()), flux);
            }
            for g in &cat.galaxies {
                let centre = UnitVector::from_radec_deg(g.ra_deg, g.dec_deg);
                let Some((x, y)) = self.pixel(centre) else {
                    continue;
                };
                // Direction of the major axis on the image: map a point 1″ along it.
                let plane = TangentPlane::new(g.ra_deg.to_radians(), g.dec_deg.to_radians());
                let (s, c) = g.pa_deg.to_radians().sin_cos();
                let one = (1.0f64 / 3600.0).to_radians();
                let Some((x2, y2)) = self
                    .wcs
                    .unit_to_pixel(&self.plane, plane.deproject(one * s, one * c))
                else {
                    continue;
                };
                let angle = (y2 - y).atan2(x2 - x);
                let gal = galaxy_gaussians(
                    g.disk_re_arcsec / scale,
                    g.bulge_re_arcsec / scale,
                    g.bulge_fraction,
                    g.axis_ratio,
                    angle,
                );
                let psf = (self.psf)(x, y);
                let flux = crate::sky::mag_to_njy(g.mags[b]) * self.units_per_njy;
                add_mixture(
                    img,
                    self.width,
                    self.height,
                    x,
                    y,
                    flux,
                    &convolve(&gal, &psf),
                    self.floor,
                );
            }
            if transients {
                for t in &cat.transients {
                    let flux = epoch.flux(|mjd| t.flux_njy(band, mjd));
                    if flux > 0.0 {
                        self.point(img, UnitVector::from_radec_deg(t.ra_deg, t.dec_deg), flux);
                    }
                }
            }
        }
    }
}

/// Adds a satellite streak (light, before the flat field) to the detector image.
pub(crate) fn paint_satellite(img: &mut [f32], det: &DetectorModel, trail: &SatelliteTrail) {
    let n = det.size as usize;
    let (sa, ca) = trail.angle_deg.to_radians().sin_cos();
    let px = trail.point_px[0] - det.origin_px[0];
    let py = trail.point_px[1] - det.origin_px[1];
    let sig = trail.sigma_px;
    let norm = trail.electrons_per_px / ((std::f64::consts::TAU).sqrt() * sig);
    let reach = 6.0 * sig;
    if sa.abs() >= ca.abs() {
        // Mostly vertical: walk rows.
        for y in 0..n {
            let xc = px + (y as f64 - py) * ca / sa;
            let half = reach / sa.abs();
            let x0 = (xc - half).floor().max(0.0) as i64;
            let x1 = (xc + half).ceil().min(n as f64 - 1.0) as i64;
            for x in x0..=x1 {
                let d = (x as f64 - px) * sa - (y as f64 - py) * ca;
                img[y * n + x as usize] += (norm * (-0.5 * d * d / (sig * sig)).exp()) as f32;
            }
        }
    } else {
        for x in 0..n {
            let yc = py + (x as f64 - px) * sa / ca;
            let half = reach / ca.abs();
            let y0 = (yc - half).floor().max(0.0) as i64;
            let y1 = (yc + half).ceil().min(n as f64 - 1.0) as i64;
            for y in y0..=y1 {
                let d = (x as f64 - px) * sa - (y as f64 - py) * ca;
                img[y as usize * n + x] += (norm * (-0.5 * d * d / (sig * sig)).exp()) as f32;
            }
        }
    }
}

/// Knuth's multiplication method: exact Poisson deviates for small means.
#[inline]
fn poisson_small(r: &mut ChaCha8Rng, mean: f64) -> f64 {
    let limit = (-mean).exp();
    let mut k = 0.0;
    let mut p: f64 = r.random();
    while p > limit {
        k += 1.0;
        p *= r.random::<f64>();
    }
    k
}

/// Photon and read noise: replaces the expected light `signal` (e⁻, before the flat)
/// by the charge read in each pixel: `(signal + sky) · flat + dark · t`, drawn with
/// Poisson noise, plus read noise. `sky_e(fx, fy)` is the sky per pixel at a
/// focal-plane position; it is evaluated at each row's ends and interpolated.
pub(crate) fn expose(
    signal: &mut [f32],
    det: &DetectorModel,
    flat: &[f32],
    dark: &[f32],
    exptime_s: f64,
    sky_e: &dyn Fn(f64, f64) -> f64,
    seed_key: (u64, u64, u64),
) {
    let n = det.size as usize;
    for (a, layout) in det.amps.iter().enumerate() {
        let rn = det.amp_params[a].read_noise_e;
        let rn2 = rn * rn;
        let mut r =
            crate::rng::stream(seed_key.0, "photon-noise", seed_key.1, seed_key.2, a as u64);
        for y in layout.y0 as usize..(layout.y0 + layout.height) as usize {
            let (fx0, fy) = det.focal_plane(f64::from(layout.x0), y as f64);
            let s0 = sky_e(fx0, fy);
            let s1 = sky_e(fx0 + f64::from(layout.width), fy);
            let ds = (s1 - s0) / f64::from(layout.width);
            let row = y * n;
            for i in 0..layout.width as usize {
                let x = layout.x0 as usize + i;
                let idx = row + x;
                let sky = s0 + ds * i as f64;
                let m = (f64::from(signal[idx]) + sky) * f64::from(flat[idx])
                    + f64::from(dark[idx]) * exptime_s;
                let z: f64 = StandardNormal.sample(&mut r);
                let v = if m >= EXACT_POISSON_BELOW_E {
                    m + (m + rn2).sqrt() * z
                } else {
                    poisson_small(&mut r, m.max(0.0)) + rn * z
                };
                signal[idx] = v as f32;
            }
        }
    }
}

/// Adds cosmic-ray tracks (charge, after the flat field): muons from a cos²-zenith
/// distribution crossing [`THICKNESS_PX`] of silicon, depositing [`CR_E_PER_UM`] e⁻/µm
/// along their path, with 0.4 px charge diffusion. Returns the number of tracks.
pub(crate) fn add_cosmic_rays(
    img: &mut [f32],
    size: usize,
    exptime_s: f64,
    r: &mut ChaCha8Rng,
) -> usize {
    let area_cm2 = (size as f64 * PIXEL_PITCH_CM).powi(2);
    let mean = COSMIC_RAY_RATE_CM2_S * area_cm2 * exptime_s;
    let count = rand_distr::Poisson::new(mean.max(1e-9))
        .map(|p| p.sample(r) as usize)
        .unwrap_or(0);
    let blur = [Gauss {
        weight: 1.0,
        cov: [0.16, 0.0, 0.16],
    }];
    for _ in 0..count {
        let x0 = r.random_range(0.0..size as f64);
        let y0 = r.random_range(0.0..size as f64);
        // cos² zenith distribution: cos θ = u^(1/3).
        let cos_t = r.random::<f64>().cbrt().max(0.05);
        let tan_t = (1.0 - cos_t * cos_t).sqrt() / cos_t;
        let len = (THICKNESS_PX * tan_t).min(300.0);
        let phi: f64 = r.random_range(0.0..std::f64::consts::TAU);
        let charge = CR_E_PER_UM * 100.0 / cos_t * r.random_range(0.7..1.6);
        let steps = ((len / 0.5).ceil() as usize).max(1);
        for k in 0..steps {
            let f = (k as f64 + 0.5) / steps as f64;
            let x = x0 + f * len * phi.cos();
            let y = y0 + f * len * phi.sin();
            add_mixture(img, size, size, x, y, charge / steps as f64, &blur, 0.5);
        }
    }
    count
}

/// Saturation: charge above the full well spills up and down the column (half each
/// way) into pixels with room; the spilled charge is conserved except where it
/// leaves the detector. Returns the number of saturated pixels.
pub(crate) fn bleed(img: &mut [f32], size: usize) -> usize {
    let fw = FULL_WELL_E as f32;
    let mut columns = vec![false; size];
    for (i, v) in img.iter().enumerate() {
        if *v > fw {
            columns[i % size] = true;
        }
    }
    let mut excess = vec![0f32; size];
    let mut saturated = 0;
    for (x, _) in columns.iter().enumerate().filter(|(_, c)| **c) {
        for y in 0..size {
            let v = &mut img[y * size + x];
            excess[y] = (*v - fw).max(0.0);
            *v = v.min(fw);
        }
        for upward in [true, false] {
            let mut carry = 0f32;
            for k in 0..size {
                let y = if upward { k } else { size - 1 - k };
                carry += 0.5 * excess[y];
                let v = &mut img[y * size + x];
                let take = carry.min(fw - *v).max(0.0);
                *v += take;
                carry -= take;
            }
        }
        saturated += (0..size).filter(|&y| img[y * size + x] >= fw).count();
    }
    saturated
}

/// Reads the charge image out through the amplifiers into raw ADU arrays, with the
/// bias level, the fixed bias pattern and read noise in the prescan and overscan.
pub(crate) fn read_out(
    charge: &[f32],
    det: &DetectorModel,
    seed_key: (u64, u64, u64),
) -> Vec<AmpImage> {
    let n = det.size as usize;
    det.amps
        .iter()
        .enumerate()
        .map(|(a, layout)| {
            let p = det.amp_params[a];
            let pattern = det.bias_pattern(a);
            let (rw, rh) = (layout.raw_width() as usize, layout.raw_height() as usize);
            let mut data = vec![0i32; rw * rh];
            let mut r = crate::rng::stream(
                seed_key.0,
                "overscan-noise",
                seed_key.1,
                seed_key.2,
                a as u64,
            );
            let rn_adu = p.read_noise_e / p.gain;
            let inv_gain = 1.0 / p.gain;
            let adc = |v: f64| -> i32 { (v.round() as i64).clamp(0, i64::from(ADC_MAX)) as i32 };
            for j in 0..rh {
                for i in 0..rw {
                    let in_data = j < layout.height as usize
                        && i >= PRESCAN as usize
                        && i < (PRESCAN + layout.width) as usize;
                    let base = p.bias_adu + f64::from(pattern[i]);
                    data[j * rw + i] = if in_data {
                        let (x, y) = layout.detector_pixel(i as u32 - PRESCAN, j as u32);
                        let e = f64::from(charge[y as usize * n + x as usize]);
                        adc(e * inv_gain + base)
                    } else {
                        let z: f64 = StandardNormal.sample(&mut r);
                        adc(base + rn_adu * z)
                    };
                }
            }
            debug_assert_eq!(rh, (layout.height + PARALLEL_OVERSCAN) as usize);
            AmpImage {
                layout: layout.clone(),
                params: p,
                data,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn poisson_small_has_poisson_moments() {
        let mut r = crate::rng::stream(1, "t", 0, 0, 0);
        let n = 200_000;
        let xs: Vec<f64> = (0..n).map(|_| poisson_small(&mut r, 7.5)).collect();
        let mean = xs.iter().sum::<f64>() / n as f64;
        let var = xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n as f64;
        assert!(
            (mean - 7.5).abs() < 0.03 && (var - 7.5).abs() < 0.15,
            "{mean} {var}"
        );
    }

    #[test]
    fn bleeding_conserves_charge_and_caps_pixels() {
        let size = 64;
        let mut img = vec![100f32; size * size];
        img[32 * size + 10] = 1.0e6;
        let before: f64 = img.iter().map(|&v| f64::from(v)).sum();
        let sat = bleed(&mut img, size);
        let after: f64 = img.iter().map(|&v| f64::from(v)).sum();
        assert!((before - after).abs() < 1.0, "{before} {after}");
        assert!(img.iter().all(|&v| v <= FULL_WELL_E as f32));
        assert!(sat >= 9, "{sat}");
        // The trail runs along the column, symmetric about the star.
        assert_eq!(img[28 * size + 10], FULL_WELL_E as f32);
        assert_eq!(img[36 * size + 10], FULL_WELL_E as f32);
        assert_eq!(img[32 * size + 11], 100.0);
    }

    #[test]
    fn cosmic_rays_deposit_charge() {
        // 1.05 cm² for 300 s: 10.5 tracks expected.
        let size = 1024;
        let mut img = vec![0f32; size * size];
        let mut r = crate::rng::stream(5, "cr", 0, 0, 0);
        let n = add_cosmic_rays(&mut img, size, 300.0, &mut r);
        assert!((3..=25).contains(&n), "{n} tracks");
        // At least 5,600 e- per track (80 e-/µm through 100 µm, ×0.7), some lost at edges.
        let total: f64 = img.iter().map(|&v| f64::from(v)).sum();
        assert!(total > n as f64 * 0.5 * 5600.0, "{total} for {n} tracks");
        let hot = img.iter().filter(|&&v| v > 500.0).count();
        assert!(hot >= n, "{hot} pixels above 500 e- for {n} tracks");
    }
}
