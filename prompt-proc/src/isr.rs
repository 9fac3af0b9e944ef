//! Instrument signature removal (ISR): raw amplifier arrays of one or two snaps →
//! one assembled visit image in **electrons for the full visit exposure**, with its
//! variance (e⁻²) and mask.
//!
//! Per snap and amplifier:
//! 1. overscan level per row: median of the serial overscan (`BIASSEC`) after skipping
//!    its first [`IsrConfig::overscan_skip`] columns (bias ramp), then the mean of the
//!    values within ±3.5 σ_read of that median, smoothed by a running mean over
//!    ±[`IsrConfig::overscan_row_smoothing`] rows (the bias level drifts slowly; a single
//!    row's estimate from ~24 pixels would add correlated row noise of ~0.25 σ_read);
//! 2. master bias subtraction (ADU, after per-row overscan subtraction), times `GAIN`
//!    → e⁻, assembled into the detector frame at `DETSEC` (reversed ranges are flips);
//! 3. dark subtraction: master dark (e⁻/s) × `DARKTIME` (dark current accrues over
//!    `EXPTIME` + the 2 s readout, which is what `DARKTIME` holds).
//!
//! Saturation: raw ≥ `SATURATE`, or charge ≥ [`IsrConfig::full_well_fraction`] ×
//! `FULLWELL` (the simulated ADC never clips: the full well does), grown by
//! [`IsrConfig::sat_grow_rows`] along columns (ends of bleed trails) and 1 column.
//!
//! Two snaps are **summed** (so the unit is e⁻ for the total exposure, `t1 + t2`).
//! Cosmic rays are found in the snap difference `D = c1 − α c2` (α = t1/t2): a pixel is
//! a seed when `|D| > n σ_D`, with σ_D from the mean of the two snaps' charges (so a
//! hit inflates its own threshold by half its charge at most) plus read noise, **and** `D` is sharper than
//! the PSF (the sharpness test below): moving objects and seeing changes make
//! PSF-wide differences and are not flagged. Seeds are grown by
//! [`IsrConfig::cr_grow`] px; a pixel hit in one snap is replaced by the other snap's
//! charge scaled to the total exposure (variance scaled accordingly), flagged CR; a
//! pixel hit in both is interpolated.
//!
//! One snap: a pixel is a seed when it is `n σ` above the local sky (block medians) and
//! sharper than the PSF, then grown and interpolated.
//!
//! Sharpness test (after van Dokkum 2001 / the LSST `findCosmicRays` idea): for a PSF
//! of width σ_psf, a star's pixel `f` and the mean `p` of two opposite neighbours at
//! distance `d` obey `p ≥ f·exp(−d²/2σ_psf²)`; a seed must have, in at least one of the
//! four directions, `c · r_d · (f − 2σ) > p + σ` (σ the pixel noise) with `c` = [`IsrConfig::cr_sharpness`]
//! and σ_psf from the header `SEEING` × [`IsrConfig::psf_fwhm_safety`] (a narrower
//! assumed PSF is more conservative).
//!
//! After flat division: variance = (smoothed charge + dark charge + Σ read noise² +
//! quantisation gain²/12) / flat², the charge smoothed by a 3×3 box so the variance does
//! not correlate with each pixel's own noise. BAD marks hot pixels (master dark >
//! [`IsrConfig::hot_dark_e_per_s`]), dead pixels (flat < [`IsrConfig::dead_flat_below`])
//! and non-finite values. BAD, SAT and un-replaced CR pixels are interpolated linearly
//! along their row (INTRP), keeping their mask bits.

use serde::Deserialize;

use crate::error::ScienceError;
use crate::image::{Image, MaskedImage, mask};
use crate::io::{MasterCalibs, RawAmp, RawMeta, RawPixels, RawSnap};
use crate::psf::FWHM_PER_SIGMA;

/// ISR tunables.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IsrConfig {
    /// Leading serial-overscan columns ignored (bias ramp), columns.
    pub overscan_skip: usize,
    /// Half-window of the running mean of per-row overscan levels, rows (0: per row).
    pub overscan_row_smoothing: usize,
    /// Charge at or above this fraction of `FULLWELL` is saturated.
    pub full_well_fraction: f64,
    /// Full well used when the header has no `FULLWELL`, e⁻.
    pub default_full_well_e: f64,
    /// SAT is grown this many rows up and down the column (bleed-trail ends).
    pub sat_grow_rows: usize,
    /// Master dark above this is a hot pixel (BAD), e⁻/s.
    pub hot_dark_e_per_s: f32,
    /// Master flat below this is a dead pixel (BAD).
    pub dead_flat_below: f32,
    /// Significance of a cosmic-ray seed, σ.
    pub cr_n_sigma: f32,
    /// Sharpness factor `c` of the cosmic-ray test (smaller is stricter).
    pub cr_sharpness: f32,
    /// Cosmic-ray masks are grown by this many pixels.
    pub cr_grow: usize,
    /// PSF FWHM assumed for the sharpness test = `SEEING` × this.
    pub psf_fwhm_safety: f64,
    /// PSF FWHM, pixels, when the header has no `SEEING`.
    pub default_psf_fwhm_px: f64,
    /// Sky block size for the single-snap cosmic-ray test, pixels.
    pub sky_block: usize,
    /// Largest non-finite fraction before [`ScienceError::NanImage`].
    pub max_nan_fraction: f64,
    /// Largest saturated fraction before [`ScienceError::Saturated`].
    pub max_saturated_fraction: f64,
}

impl Default for IsrConfig {
    fn default() -> Self {
        Self {
            overscan_skip: 8,
            overscan_row_smoothing: 16,
            full_well_fraction: 0.99,
            default_full_well_e: 100_000.0,
            sat_grow_rows: 2,
            hot_dark_e_per_s: 0.5,
            dead_flat_below: 0.5,
            cr_n_sigma: 5.0,
            cr_sharpness: 0.6,
            cr_grow: 1,
            psf_fwhm_safety: 0.8,
            default_psf_fwhm_px: 3.0,
            sky_block: 64,
            max_nan_fraction: 0.1,
            max_saturated_fraction: 0.5,
        }
    }
}

/// The result of ISR.
#[derive(Clone, Debug)]
pub struct IsrOutput {
    /// The visit image, e⁻ for the total exposure; variance e⁻²; mask planes BAD, SAT,
    /// CR, INTRP.
    pub image: MaskedImage,
    /// Header of the first snap (visit, detector, band, times, header WCS).
    pub meta: RawMeta,
    /// Total open-shutter time the image represents, seconds.
    pub exptime_s: f64,
    /// Mid-exposure time, MJD TAI (first shutter open to last shutter close).
    pub mjd_mid: f64,
    /// Pixels flagged CR.
    pub n_cr_pixels: usize,
    /// Pixels flagged SAT.
    pub n_saturated: usize,
    /// Pixels flagged BAD.
    pub n_bad: usize,
    /// Pixels interpolated.
    pub n_interpolated: usize,
}

/// Read-noise variance (+ quantisation) per detector column, for a band of rows.
struct NoiseBands {
    /// (first row, last row + 1, per-column e⁻² per snap).
    bands: Vec<(usize, usize, Vec<f32>)>,
}

impl NoiseBands {
    fn new(amps: &[RawAmp], w: usize, h: usize) -> Self {
        let mut edges: Vec<usize> = vec![0, h];
        for a in amps {
            edges.push(a.detsec.y_min());
            edges.push(a.detsec.y_min() + a.detsec.height());
        }
        edges.sort_unstable();
        edges.dedup();
        let mut bands = Vec::new();
        for e in edges.windows(2) {
            let (y0, y1) = (e[0], e[1]);
            if y0 >= y1 || y0 >= h {
                continue;
            }
            let mut lut = vec![0f32; w];
            for a in amps {
                let (ay0, ay1) = (a.detsec.y_min(), a.detsec.y_min() + a.detsec.height());
                if ay0 <= y0 && y1 <= ay1 {
                    let x0 = a.detsec.x_min();
                    let v = (a.read_noise_e * a.read_noise_e + a.gain * a.gain / 12.0) as f32;
                    lut[x0..x0 + a.detsec.width()].fill(v);
                }
            }
            bands.push((y0, y1.min(h), lut));
        }
        Self { bands }
    }
    fn row(&self, y: usize) -> &[f32] {
        let b = self
            .bands
            .iter()
            .find(|b| b.0 <= y && y < b.1)
            .expect("every row is in a band");
        &b.2
    }
}

fn bad(msg: String) -> ScienceError {
    ScienceError::BadInput(msg)
}

fn check_inputs(snaps: &[RawSnap], calibs: &MasterCalibs) -> Result<(usize, usize), ScienceError> {
    let Some(first) = snaps.first() else {
        return Err(bad("ISR needs at least one snap".into()));
    };
    if snaps.len() > 2 {
        return Err(bad(format!(
            "ISR combines one or two snaps, got {}",
            snaps.len()
        )));
    }
    for s in snaps {
        s.validate()?;
        let (m, f) = (&s.meta, &first.meta);
        if m.visit != f.visit
            || m.detector != f.detector
            || m.band != f.band
            || m.detector_size != f.detector_size
            || s.amps.len() != first.amps.len()
        {
            return Err(bad(format!(
                "snaps do not belong together: visit {}/{}, detector {}/{}, band {}/{}, size {:?}/{:?}",
                f.visit,
                m.visit,
                f.detector,
                m.detector,
                f.band,
                m.band,
                f.detector_size,
                m.detector_size
            )));
        }
        if !(m.exptime_s > 0.0 && m.exptime_s.is_finite()) {
            return Err(bad(format!("snap {}: EXPTIME {}", m.snap, m.exptime_s)));
        }
        for (a, b) in s.amps.iter().zip(&first.amps) {
            if a.detsec != b.detsec {
                return Err(bad(format!(
                    "snaps disagree on {} DETSEC: {} vs {}",
                    a.name, a.detsec, b.detsec
                )));
            }
        }
    }
    if snaps.len() == 2 && snaps[0].meta.snap == snaps[1].meta.snap {
        return Err(bad(format!(
            "two copies of snap {} of visit {}",
            snaps[0].meta.snap, snaps[0].meta.visit
        )));
    }
    let dims = first.meta.detector_size;
    if calibs.dims() != dims {
        return Err(bad(format!(
            "master calibrations are {:?}, detector {} is {:?}",
            calibs.dims(),
            first.meta.detector,
            dims
        )));
    }
    Ok(dims)
}

/// Per-row overscan levels (ADU) of the data rows of `amp`.
fn overscan_levels(amp: &RawAmp, cfg: &IsrConfig) -> Vec<f32> {
    let rows = amp.datasec.height();
    let bx0 = amp.biassec.x_min();
    let bw = amp.biassec.width();
    let skip = if cfg.overscan_skip < bw {
        cfg.overscan_skip
    } else {
        0
    };
    let clip = (3.5 * amp.read_noise_e / amp.gain).max(1.0) as f32;
    let mut vals: Vec<f32> = Vec::with_capacity(bw);
    let mut level = Vec::with_capacity(rows);
    for j in 0..rows {
        let r = amp.datasec.y_min() + j;
        let base = r * amp.width + bx0 + skip;
        vals.clear();
        vals.extend(
            (0..bw - skip)
                .map(|i| amp.data.get(base + i))
                .filter(|v| v.is_finite()),
        );
        if vals.is_empty() {
            level.push(f32::NAN);
            continue;
        }
        let k = vals.len() / 2;
        let med = *vals.select_nth_unstable_by(k, |a, b| a.total_cmp(b)).1;
        let (mut s, mut n) = (0f64, 0usize);
        for &v in &vals {
            if (v - med).abs() <= clip {
                s += f64::from(v);
                n += 1;
            }
        }
        level.push(if n > 0 { (s / n as f64) as f32 } else { med });
    }
    let k = cfg.overscan_row_smoothing;
    if k == 0 || rows < 2 {
        return level;
    }
    // Running mean over ±k rows of the finite levels (prefix sums).
    let mut cs = vec![0f64; rows + 1];
    let mut cn = vec![0u32; rows + 1];
    for j in 0..rows {
        let ok = level[j].is_finite();
        cs[j + 1] = cs[j] + if ok { f64::from(level[j]) } else { 0.0 };
        cn[j + 1] = cn[j] + u32::from(ok);
    }
    (0..rows)
        .map(|j| {
            if !level[j].is_finite() {
                return f32::NAN;
            }
            let (a, b) = (j.saturating_sub(k), (j + k + 1).min(rows));
            ((cs[b] - cs[a]) / f64::from(cn[b] - cn[a])) as f32
        })
        .collect()
}

/// One snap → charge in e⁻ (before the flat), dark subtracted, assembled. Saturated
/// pixels are OR-ed into `mask` and listed in `sat`.
fn snap_to_electrons(
    snap: &RawSnap,
    calibs: &MasterCalibs,
    cfg: &IsrConfig,
    out: &mut Image<f32>,
    mask_img: &mut Image<u32>,
    sat: &mut Vec<usize>,
) {
    let w = out.width();
    let dt = snap.meta.darktime_s as f32;
    let full_well =
        snap.meta.full_well_e.unwrap_or(cfg.default_full_well_e) * cfg.full_well_fraction;
    for amp in &snap.amps {
        let levels = overscan_levels(amp, cfg);
        let g = amp.gain as f32;
        let (dw, dx0) = (amp.datasec.width(), amp.datasec.x_min());
        let xmin = amp.detsec.x_min();
        let flip = amp.detsec.flip_x();
        for (j, &os) in levels.iter().enumerate() {
            let r = amp.datasec.y_min() + j;
            let y = amp.detsec.y_at(j);
            let start = r * amp.width + dx0;
            let thr = (amp.saturate_adu.min(f64::from(os) + full_well / amp.gain)) as f32;
            let bias = &calibs.bias.row(y)[xmin..xmin + dw];
            let dark = &calibs.dark.row(y)[xmin..xmin + dw];
            let o = &mut out.row_mut(y)[xmin..xmin + dw];
            let any_sat = match &amp.data {
                RawPixels::I32(v) => {
                    let raw = &v[start..start + dw];
                    convert(raw, flip, os, g, dt, bias, dark, o);
                    raw.iter().any(|&v| v as f32 >= thr)
                }
                RawPixels::F32(v) => {
                    let raw = &v[start..start + dw];
                    convert(raw, flip, os, g, dt, bias, dark, o);
                    raw.iter().any(|&v| v >= thr)
                }
            };
            if any_sat {
                for i in 0..dw {
                    if amp.data.get(start + i) >= thr {
                        let x = amp.detsec.x_at(i);
                        let idx = y * w + x;
                        if mask_img.data()[idx] & mask::SAT == 0 {
                            mask_img.data_mut()[idx] |= mask::SAT;
                            sat.push(idx);
                        }
                    }
                }
            }
        }
    }
}

trait RawValue: Copy {
    fn f(self) -> f32;
}
impl RawValue for i32 {
    #[inline(always)]
    fn f(self) -> f32 {
        self as f32
    }
}
impl RawValue for f32 {
    #[inline(always)]
    fn f(self) -> f32 {
        self
    }
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn convert<T: RawValue>(
    raw: &[T],
    flip: bool,
    os: f32,
    g: f32,
    dt: f32,
    bias: &[f32],
    dark: &[f32],
    out: &mut [f32],
) {
    let f = |r: T, b: f32, d: f32| (r.f() - os - b) * g - d * dt;
    if flip {
        for (((o, &r), &b), &d) in out.iter_mut().zip(raw.iter().rev()).zip(bias).zip(dark) {
            *o = f(r, b, d);
        }
    } else {
        for (((o, &r), &b), &d) in out.iter_mut().zip(raw).zip(bias).zip(dark) {
            *o = f(r, b, d);
        }
    }
}

/// PSF ratios exp(−d²/2σ²) for the four directions (x, y, two diagonals).
fn psf_ratios(meta: &RawMeta, cfg: &IsrConfig) -> [f32; 4] {
    let fwhm = match meta.seeing_arcsec {
        Some(s) if s > 0.0 => s / meta.wcs.pixel_scale_arcsec(),
        _ => cfg.default_psf_fwhm_px,
    } * cfg.psf_fwhm_safety;
    let sigma = (fwhm / FWHM_PER_SIGMA).max(0.3);
    let r1 = (-1.0 / (2.0 * sigma * sigma)).exp() as f32;
    let r2 = (-1.0 / (sigma * sigma)).exp() as f32;
    [r1, r1, r2, r2]
}

/// Is `f(x, y)` sharper than the PSF in some direction? `noise` is the pixel σ.
#[inline]
fn is_sharp(
    f: &dyn Fn(usize) -> f32,
    idx: usize,
    x: usize,
    y: usize,
    w: usize,
    h: usize,
    noise: f32,
    ratios: &[f32; 4],
    c: f32,
) -> bool {
    let v = f(idx);
    let dirs: [(isize, isize); 4] = [(1, 0), (0, 1), (1, 1), (1, -1)];
    for (k, (dx, dy)) in dirs.iter().enumerate() {
        let (xa, ya) = (x as isize + dx, y as isize + dy);
        let (xb, yb) = (x as isize - dx, y as isize - dy);
        if xa < 0 || ya < 0 || xb < 0 || yb < 0 {
            continue;
        }
        let (xa, ya, xb, yb) = (xa as usize, ya as usize, xb as usize, yb as usize);
        if xa >= w || xb >= w || ya >= h || yb >= h {
            continue;
        }
        let p = 0.5 * (f(ya * w + xa) + f(yb * w + xb));
        if c * ratios[k] * (v - 2.0 * noise) > p + noise {
            return true;
        }
    }
    false
}

/// Grows a list of seed pixels by `r` px (square), sorted and deduplicated.
fn grow(seeds: &[usize], w: usize, h: usize, r: usize) -> Vec<usize> {
    let mut out = Vec::with_capacity(seeds.len() * (2 * r + 1).pow(2));
    for &i in seeds {
        let (x, y) = (i % w, i / w);
        for yy in y.saturating_sub(r)..=(y + r).min(h - 1) {
            for xx in x.saturating_sub(r)..=(x + r).min(w - 1) {
                out.push(yy * w + xx);
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// Block-median sky of a charge image (subsampled every 4th pixel), per block.
fn block_sky(img: &Image<f32>, block: usize) -> (Vec<f32>, usize, usize) {
    let (w, h) = img.dims();
    let block = block.max(8);
    let (nx, ny) = (w.div_ceil(block), h.div_ceil(block));
    let mut sky = vec![0f32; nx * ny];
    let mut vals = Vec::new();
    for by in 0..ny {
        for bx in 0..nx {
            vals.clear();
            for y in (by * block..((by + 1) * block).min(h)).step_by(4) {
                let row = img.row(y);
                for x in (bx * block..((bx + 1) * block).min(w)).step_by(4) {
                    if row[x].is_finite() {
                        vals.push(row[x]);
                    }
                }
            }
            sky[by * nx + bx] = if vals.is_empty() {
                0.0
            } else {
                let k = vals.len() / 2;
                *vals.select_nth_unstable_by(k, |a, b| a.total_cmp(b)).1
            };
        }
    }
    (sky, nx, block)
}

/// Runs ISR on the snaps of one detector of one visit. See the module docs.
pub fn run(
    snaps: &[RawSnap],
    calibs: &MasterCalibs,
    cfg: &IsrConfig,
) -> Result<IsrOutput, ScienceError> {
    let (w, h) = check_inputs(snaps, calibs)?;
    let n = w * h;
    let mut mask_img: Image<u32> = Image::new(w, h);
    let mut sat = Vec::new();
    let mut charges: Vec<Image<f32>> = Vec::with_capacity(snaps.len());
    for s in snaps {
        let mut c = Image::new(w, h);
        snap_to_electrons(s, calibs, cfg, &mut c, &mut mask_img, &mut sat);
        charges.push(c);
    }
    // Saturation: grow along columns (bleed ends) and by one column.
    let sat_grown = if sat.is_empty() {
        sat
    } else {
        let mut g = Vec::with_capacity(sat.len() * 3);
        let r = cfg.sat_grow_rows;
        for &i in &sat {
            let (x, y) = (i % w, i / w);
            for yy in y.saturating_sub(r)..=(y + r).min(h - 1) {
                g.push(yy * w + x);
            }
            if x > 0 {
                g.push(y * w + x - 1);
            }
            if x + 1 < w {
                g.push(y * w + x + 1);
            }
        }
        g.sort_unstable();
        g.dedup();
        g
    };
    for &i in &sat_grown {
        mask_img.data_mut()[i] |= mask::SAT;
    }
    let sat_fraction = sat_grown.len() as f64 / n as f64;
    if sat_fraction > cfg.max_saturated_fraction {
        return Err(ScienceError::Saturated {
            fraction: 100.0 * sat_fraction,
        });
    }

    let noise = NoiseBands::new(&snaps[0].amps, w, h);
    let ratios = psf_ratios(&snaps[0].meta, cfg);
    let nsig = cfg.cr_n_sigma;
    let n2 = nsig * nsig;
    let c = cfg.cr_sharpness;
    let t: Vec<f64> = snaps.iter().map(|s| s.meta.exptime_s).collect();
    let total_t: f64 = t.iter().sum();
    let dt_total: f32 = snaps.iter().map(|s| s.meta.darktime_s as f32).sum();
    let mut cr_interp: Vec<usize> = Vec::new();
    // (pixel, scale 1 + α of the replacement).
    let mut cr_replaced: Vec<(usize, f32)> = Vec::new();
    let mut sum;
    if charges.len() == 2 {
        let c2 = charges.pop().expect("two snaps");
        let c1 = charges.pop().expect("two snaps");
        let alpha = (t[0] / t[1]) as f32;
        sum = Image::new(w, h);
        let (mut seeds1, mut seeds2) = (Vec::new(), Vec::new());
        for y in 0..h {
            let (r1, r2) = (c1.row(y), c2.row(y));
            let nl = noise.row(y);
            let srow = sum.row_mut(y);
            for x in 0..w {
                let (a, b) = (r1[x], r2[x]);
                srow[x] = a + b;
                let d = a - alpha * b;
                // Snap-1 charge expected from both snaps (a hit inflates its own
                // threshold by at most its half).
                let m = (0.5 * (a + alpha * b)).max(0.0);
                let var = m * (1.0 + alpha) + nl[x] * (1.0 + alpha * alpha);
                if d * d > n2 * var {
                    if d > 0.0 {
                        seeds1.push((y * w + x, var.sqrt()));
                    } else {
                        seeds2.push((y * w + x, var.sqrt()));
                    }
                }
            }
        }
        let diff1 = |i: usize| c1.data()[i] - alpha * c2.data()[i];
        let diff2 = |i: usize| alpha * c2.data()[i] - c1.data()[i];
        let md = mask_img.data();
        let keep = |seeds: Vec<(usize, f32)>, f: &dyn Fn(usize) -> f32| -> Vec<usize> {
            seeds
                .into_iter()
                .filter(|&(i, s)| {
                    md[i] & mask::SAT == 0 && is_sharp(f, i, i % w, i / w, w, h, s, &ratios, c)
                })
                .map(|(i, _)| i)
                .collect()
        };
        let hit1 = grow(&keep(seeds1, &diff1), w, h, cfg.cr_grow);
        let hit2 = grow(&keep(seeds2, &diff2), w, h, cfg.cr_grow);
        let s = sum.data_mut();
        let (s1, s2) = (1.0 + alpha, 1.0 + 1.0 / alpha);
        let in2 = |i: usize| hit2.binary_search(&i).is_ok();
        let in1 = |i: usize| hit1.binary_search(&i).is_ok();
        for &i in &hit1 {
            if in2(i) {
                cr_interp.push(i);
            } else {
                s[i] = s1 * c2.data()[i];
                cr_replaced.push((i, s1));
            }
        }
        for &i in &hit2 {
            if !in1(i) {
                s[i] = s2 * c1.data()[i];
                cr_replaced.push((i, s2));
            }
        }
        let md = mask_img.data_mut();
        for &i in hit1.iter().chain(&hit2) {
            md[i] |= mask::CR;
        }
    } else {
        sum = charges.pop().expect("one snap");
        let (sky, nbx, block) = block_sky(&sum, cfg.sky_block);
        let mut seeds = Vec::new();
        for y in 0..h {
            let row = sum.row(y);
            let nl = noise.row(y);
            let srow = &sky[(y / block) * nbx..];
            for x in 0..w {
                let b = srow[x / block];
                let v = row[x] - b;
                let var = b.max(0.0) + nl[x];
                if v > 0.0 && v * v > n2 * var {
                    seeds.push((y * w + x, var.sqrt(), b));
                }
            }
        }
        let md = mask_img.data();
        let data = sum.data();
        let mut kept = Vec::new();
        for (i, s, b) in seeds {
            let f = |k: usize| data[k] - b;
            if md[i] & mask::SAT == 0 && is_sharp(&f, i, i % w, i / w, w, h, s, &ratios, c) {
                kept.push(i);
            }
        }
        let hit = grow(&kept, w, h, cfg.cr_grow);
        let md = mask_img.data_mut();
        let s = sum.data_mut();
        for &i in &hit {
            md[i] |= mask::CR;
            // Placeholder so the smoothed variance ignores the hit; interpolated below.
            s[i] = sky[(i / w / block) * nbx + (i % w) / block];
        }
        cr_interp = hit;
    }

    // Flat field, variance, BAD; in place over `sum` (rows y±1 are box-summed from
    // horizontal 3-sums computed before row y is overwritten).
    let mut variance: Image<f32> = Image::new(w, h);
    let mut nan_count = 0usize;
    let mut to_interp: Vec<usize> = Vec::new();
    let hsum = |row: &[f32], out: &mut Vec<f32>| {
        out.clear();
        let m = row.len();
        let g = |v: f32| if v.is_finite() { v } else { 0.0 };
        if m == 1 {
            out.push(3.0 * g(row[0]));
            return;
        }
        out.push(2.0 * g(row[0]) + g(row[1]));
        for x in 1..m - 1 {
            out.push(g(row[x - 1]) + g(row[x]) + g(row[x + 1]));
        }
        out.push(g(row[m - 2]) + 2.0 * g(row[m - 1]));
    };
    let (mut hprev, mut hcur, mut hnext) = (Vec::with_capacity(w), Vec::new(), Vec::new());
    hsum(sum.row(0), &mut hcur);
    hprev.extend_from_slice(&hcur);
    let hot = cfg.hot_dark_e_per_s;
    let dead = cfg.dead_flat_below;
    let nsnap = snaps.len() as f32;
    for y in 0..h {
        if y + 1 < h {
            hsum(sum.row(y + 1), &mut hnext);
        } else {
            hnext.clear();
            hnext.extend_from_slice(&hcur);
        }
        let nl = noise.row(y);
        let dark = calibs.dark.row(y);
        let flat = calibs.flat.row(y);
        let inv = calibs.inv_flat.row(y);
        let vrow = variance.row_mut(y);
        let mrow = &mut mask_img.row_mut(y)[..];
        let srow = &mut sum.data_mut()[y * w..(y + 1) * w];
        for x in 0..w {
            let m = (hprev[x] + hcur[x] + hnext[x]) * (1.0 / 9.0);
            let ve = (m + dark[x] * dt_total).max(0.0) + nsnap * nl[x];
            let fi = inv[x];
            let v = srow[x] * fi;
            srow[x] = v;
            vrow[x] = ve * fi * fi;
            let is_bad = !v.is_finite() || dark[x] > hot || !(flat[x] >= dead) || fi == 0.0;
            if is_bad {
                if !v.is_finite() {
                    nan_count += 1;
                }
                mrow[x] |= mask::BAD;
            }
            if mrow[x] & (mask::BAD | mask::SAT) != 0 {
                to_interp.push(y * w + x);
            }
        }
        std::mem::swap(&mut hprev, &mut hcur);
        std::mem::swap(&mut hcur, &mut hnext);
    }
    let nan_fraction = nan_count as f64 / n as f64;
    if nan_fraction > cfg.max_nan_fraction {
        return Err(ScienceError::NanImage {
            fraction: 100.0 * nan_fraction,
        });
    }
    // Variance of CR pixels replaced from the other snap: (1+α)(V − Σrn²) + (1+α)² rn².
    for &(i, k) in &cr_replaced {
        let (x, y) = (i % w, i / w);
        let rn2 = noise.row(y)[x];
        let fi = calibs.inv_flat.data()[i];
        if fi > 0.0 {
            let ve = variance.data()[i] / (fi * fi);
            let vr = k * (ve - nsnap * rn2).max(0.0) + k * k * rn2;
            variance.data_mut()[i] = vr * fi * fi;
        }
    }
    to_interp.extend_from_slice(&cr_interp);
    to_interp.sort_unstable();
    to_interp.dedup();
    let mut image = MaskedImage::from_parts(sum, variance, mask_img);
    interpolate_rows(&mut image, &to_interp);

    let md = image.mask.data();
    let count = |bit: u32| md.iter().filter(|&&m| m & bit != 0).count();
    let first = &snaps[0].meta;
    let last = &snaps[snaps.len() - 1].meta;
    Ok(IsrOutput {
        n_cr_pixels: count(mask::CR),
        n_saturated: count(mask::SAT),
        n_bad: count(mask::BAD),
        n_interpolated: to_interp.len(),
        image,
        meta: first.clone(),
        exptime_s: total_t,
        mjd_mid: 0.5 * (first.mjd_obs + last.mjd_end),
    })
}

/// Linear interpolation along rows over the listed pixels (sorted row-major): each run
/// of listed pixels takes the line between the nearest good pixels left and right
/// (or the one that exists); image and variance both; INTRP is set.
pub fn interpolate_rows(img: &mut MaskedImage, pixels: &[usize]) {
    let w = img.width();
    let mut k = 0;
    while k < pixels.len() {
        let start = pixels[k];
        let y = start / w;
        let mut end = start;
        while k + 1 < pixels.len() && pixels[k + 1] == end + 1 && (end + 1) / w == y {
            k += 1;
            end += 1;
        }
        k += 1;
        let (xa, xb) = (start % w, end % w);
        let row = y * w;
        let left = (xa > 0).then(|| xa - 1);
        let right = (xb + 1 < w).then_some(xb + 1);
        for plane in [&mut img.image, &mut img.variance] {
            let d = plane.data_mut();
            let lv = left.map(|l| d[row + l]).filter(|v| v.is_finite());
            let rv = right.map(|r| d[row + r]).filter(|v| v.is_finite());
            for x in xa..=xb {
                d[row + x] = match (lv, rv) {
                    (Some(a), Some(b)) => {
                        let (l, r) = (left.unwrap_or(0) as f32, right.unwrap_or(0) as f32);
                        a + (b - a) * (x as f32 - l) / (r - l)
                    }
                    (Some(a), None) => a,
                    (None, Some(b)) => b,
                    (None, None) => 0.0,
                };
            }
        }
        for x in xa..=xb {
            *img.mask.at_mut(x, y) |= mask::INTRP;
        }
    }
}
