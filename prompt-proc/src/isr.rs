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
#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
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

/// One amplifier row of raw data, in readout order.
#[derive(Clone, Copy)]
enum RawRow<'a> {
    I32(&'a [i32]),
    F32(&'a [f32]),
}

/// Calls `f(amp, y, xmin, row, overscan level, saturation threshold in ADU)` for every
/// data row of every amplifier of `snap`.
fn for_each_amp_row(
    snap: &RawSnap,
    cfg: &IsrConfig,
    mut f: impl FnMut(&RawAmp, usize, usize, RawRow<'_>, f32, f32),
) {
    let full_well =
        snap.meta.full_well_e.unwrap_or(cfg.default_full_well_e) * cfg.full_well_fraction;
    for amp in &snap.amps {
        let levels = overscan_levels(amp, cfg);
        let (dw, dx0) = (amp.datasec.width(), amp.datasec.x_min());
        let xmin = amp.detsec.x_min();
        for (j, &os) in levels.iter().enumerate() {
            let r = amp.datasec.y_min() + j;
            let y = amp.detsec.y_at(j);
            let start = r * amp.width + dx0;
            let thr = (amp.saturate_adu.min(f64::from(os) + full_well / amp.gain)) as f32;
            let row = match &amp.data {
                RawPixels::I32(v) => RawRow::I32(&v[start..start + dw]),
                RawPixels::F32(v) => RawRow::F32(&v[start..start + dw]),
            };
            f(amp, y, xmin, row, os, thr);
        }
    }
}

/// Saturated pixels of a raw row → detector indices.
fn find_saturated(
    amp: &RawAmp,
    row: RawRow<'_>,
    thr: f32,
    y: usize,
    w: usize,
    sat: &mut Vec<usize>,
) {
    let hit = match row {
        RawRow::I32(r) => r.iter().fold(false, |acc, &v| acc | (v as f32 >= thr)),
        RawRow::F32(r) => r.iter().fold(false, |acc, &v| acc | (v >= thr)),
    };
    if hit {
        let n = match row {
            RawRow::I32(r) => r.len(),
            RawRow::F32(r) => r.len(),
        };
        for i in 0..n {
            let v = match row {
                RawRow::I32(r) => r[i] as f32,
                RawRow::F32(r) => r[i],
            };
            if v >= thr {
                sat.push(y * w + amp.detsec.x_at(i));
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

/// `out = (raw − os − bias) g − dark dt` (detector order; `raw` reversed when flipped).
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

/// `out = (raw − os) g` (detector order).
#[inline]
fn convert_plain<T: RawValue>(raw: &[T], flip: bool, os: f32, g: f32, out: &mut [f32]) {
    if flip {
        for (o, &r) in out.iter_mut().zip(raw.iter().rev()) {
            *o = (r.f() - os) * g;
        }
    } else {
        for (o, &r) in out.iter_mut().zip(raw) {
            *o = (r.f() - os) * g;
        }
    }
}

/// The second snap of a pair, fused with the first's bias and dark subtraction, the
/// sum and the cosmic-ray seed test. `c1` holds snap 1's `(raw − os) g` and becomes the
/// sum; `c2` receives snap 2's charge.
struct PairRow<'a> {
    bias: &'a [f32],
    dark: &'a [f32],
    noise: &'a [f32],
    g: f32,
    os: f32,
    dt1: f32,
    dt2: f32,
    alpha: f32,
    n2: f32,
}

impl PairRow<'_> {
    #[inline]
    fn run<'r, T: RawValue + 'r>(
        &self,
        raw: impl Iterator<Item = &'r T>,
        c1: &mut [f32],
        c2: &mut [f32],
        base: usize,
        seeds: &mut Vec<(usize, f32, bool)>,
    ) {
        let al = self.alpha;
        let k2 = 1.0 + al * al;
        for (k, ((((s, o2), &r), &b), &d)) in c1
            .iter_mut()
            .zip(c2.iter_mut())
            .zip(raw)
            .zip(self.bias)
            .zip(self.dark)
            .enumerate()
        {
            let bg = b * self.g;
            let a = *s - bg - d * self.dt1;
            let bb = (r.f() - self.os) * self.g - bg - d * self.dt2;
            *o2 = bb;
            *s = a + bb;
            let diff = a - al * bb;
            let m = (0.5 * (a + al * bb)).max(0.0);
            let var = m * (1.0 + al) + self.noise[k] * k2;
            if diff * diff > self.n2 * var {
                seeds.push((base + k, var.sqrt(), diff > 0.0));
            }
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
#[allow(clippy::too_many_arguments)]
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
    run_reusing(snaps, calibs, cfg, None)
}

/// As [`run`], reusing the pixel buffers of a previous output of the same size
/// (`recycle`) instead of allocating: fresh 64 MB buffers cost a page fault per 4 kB
/// on first touch, a large share of ISR's time on a 4096² detector.
pub fn run_reusing(
    snaps: &[RawSnap],
    calibs: &MasterCalibs,
    cfg: &IsrConfig,
    recycle: Option<MaskedImage>,
) -> Result<IsrOutput, ScienceError> {
    let (w, h) = check_inputs(snaps, calibs)?;
    let (mut buf1, mut buf2, mask_img) = match recycle {
        Some(m) if m.dims() == (w, h) => (m.image, m.variance, m.mask),
        _ => (Image::new(w, h), Image::new(w, h), Image::new(w, h)),
    };
    let noise = NoiseBands::new(&snaps[0].amps, w, h);
    let ratios = psf_ratios(&snaps[0].meta, cfg);
    let nsig = cfg.cr_n_sigma;
    let n2 = nsig * nsig;
    let c = cfg.cr_sharpness;
    let t: Vec<f64> = snaps.iter().map(|s| s.meta.exptime_s).collect();
    let total_t: f64 = t.iter().sum();
    let dt_total: f32 = snaps.iter().map(|s| s.meta.darktime_s as f32).sum();
    let mut sat = Vec::new();
    let mut cr_interp: Vec<usize> = Vec::new();
    // (pixel, scale 1 + α of the replacement).
    let mut cr_replaced: Vec<(usize, f32)> = Vec::new();
    let two = snaps.len() == 2;
    if two {
        // Snap 1: (raw − os) g only; bias and dark are subtracted in the fused pass.
        for_each_amp_row(&snaps[0], cfg, |amp, y, xmin, row, os, thr| {
            let g = amp.gain as f32;
            let o = &mut buf1.row_mut(y)[xmin..xmin + amp.detsec.width()];
            match row {
                RawRow::I32(r) => convert_plain(r, amp.detsec.flip_x(), os, g, o),
                RawRow::F32(r) => convert_plain(r, amp.detsec.flip_x(), os, g, o),
            }
            find_saturated(amp, row, thr, y, w, &mut sat);
        });
        let alpha = (t[0] / t[1]) as f32;
        let (dt1, dt2) = (
            snaps[0].meta.darktime_s as f32,
            snaps[1].meta.darktime_s as f32,
        );
        let mut seeds: Vec<(usize, f32, bool)> = Vec::new();
        for_each_amp_row(&snaps[1], cfg, |amp, y, xmin, row, os, thr| {
            let dw = amp.detsec.width();
            let pr = PairRow {
                bias: &calibs.bias.row(y)[xmin..xmin + dw],
                dark: &calibs.dark.row(y)[xmin..xmin + dw],
                noise: &noise.row(y)[xmin..xmin + dw],
                g: amp.gain as f32,
                os,
                dt1,
                dt2,
                alpha,
                n2,
            };
            let c1 = &mut buf1.row_mut(y)[xmin..xmin + dw];
            let c2 = &mut buf2.row_mut(y)[xmin..xmin + dw];
            let base = y * w + xmin;
            match (row, amp.detsec.flip_x()) {
                (RawRow::I32(r), false) => pr.run(r.iter(), c1, c2, base, &mut seeds),
                (RawRow::I32(r), true) => pr.run(r.iter().rev(), c1, c2, base, &mut seeds),
                (RawRow::F32(r), false) => pr.run(r.iter(), c1, c2, base, &mut seeds),
                (RawRow::F32(r), true) => pr.run(r.iter().rev(), c1, c2, base, &mut seeds),
            }
            find_saturated(amp, row, thr, y, w, &mut sat);
        });
        sat.sort_unstable();
        sat.dedup();
        // buf1 = sum, buf2 = c2, so c1 = sum − c2 and D = sum − (1 + α) c2.
        let (s, c2) = (buf1.data(), buf2.data());
        let k1 = 1.0 + alpha;
        let diff1 = |i: usize| s[i] - k1 * c2[i];
        let diff2 = |i: usize| k1 * c2[i] - s[i];
        let (mut keep1, mut keep2) = (Vec::new(), Vec::new());
        for &(i, sig, first) in &seeds {
            if sat.binary_search(&i).is_ok() {
                continue;
            }
            let f: &dyn Fn(usize) -> f32 = if first { &diff1 } else { &diff2 };
            if is_sharp(f, i, i % w, i / w, w, h, sig, &ratios, c) {
                if first {
                    keep1.push(i);
                } else {
                    keep2.push(i);
                }
            }
        }
        let hit1 = grow(&keep1, w, h, cfg.cr_grow);
        let hit2 = grow(&keep2, w, h, cfg.cr_grow);
        let s2 = 1.0 + 1.0 / alpha;
        let (s, c2) = (buf1.data_mut(), buf2.data());
        for &i in &hit1 {
            if hit2.binary_search(&i).is_ok() {
                cr_interp.push(i);
            } else {
                s[i] = k1 * c2[i];
                cr_replaced.push((i, k1));
            }
        }
        for &i in &hit2 {
            if hit1.binary_search(&i).is_err() {
                s[i] = s2 * (s[i] - c2[i]);
                cr_replaced.push((i, s2));
            }
        }
        let mut all_cr: Vec<usize> = hit1.iter().chain(&hit2).copied().collect();
        all_cr.sort_unstable();
        all_cr.dedup();
        return finish(
            snaps,
            calibs,
            cfg,
            buf1,
            buf2,
            mask_img,
            sat,
            all_cr,
            cr_interp,
            cr_replaced,
            None,
            &noise,
            dt_total,
            total_t,
        );
    }
    for_each_amp_row(&snaps[0], cfg, |amp, y, xmin, row, os, thr| {
        let g = amp.gain as f32;
        let dw = amp.detsec.width();
        let dt = snaps[0].meta.darktime_s as f32;
        let bias = &calibs.bias.row(y)[xmin..xmin + dw];
        let dark = &calibs.dark.row(y)[xmin..xmin + dw];
        let o = &mut buf1.row_mut(y)[xmin..xmin + dw];
        match row {
            RawRow::I32(r) => convert(r, amp.detsec.flip_x(), os, g, dt, bias, dark, o),
            RawRow::F32(r) => convert(r, amp.detsec.flip_x(), os, g, dt, bias, dark, o),
        }
        find_saturated(amp, row, thr, y, w, &mut sat);
    });
    sat.sort_unstable();
    sat.dedup();
    let sky = block_sky(&buf1, cfg.sky_block);
    finish(
        snaps,
        calibs,
        cfg,
        buf1,
        buf2,
        mask_img,
        sat,
        Vec::new(),
        cr_interp,
        cr_replaced,
        Some((sky, ratios)),
        &noise,
        dt_total,
        total_t,
    )
}

/// Single-snap cosmic-ray inputs: block sky (values, blocks per row, block size) and
/// the PSF ratios of the sharpness test.
type SingleSnapCr = ((Vec<f32>, usize, usize), [f32; 4]);

/// Saturation growth and checks, flat field, variance, masks, single-snap cosmic
/// rays, interpolation. `buf1` holds the summed charge (e⁻), `buf2` becomes the
/// variance.
#[allow(clippy::too_many_arguments)]
fn finish(
    snaps: &[RawSnap],
    calibs: &MasterCalibs,
    cfg: &IsrConfig,
    mut sum: Image<f32>,
    mut variance: Image<f32>,
    mut mask_img: Image<u32>,
    sat: Vec<usize>,
    mut all_cr: Vec<usize>,
    mut cr_interp: Vec<usize>,
    cr_replaced: Vec<(usize, f32)>,
    single: Option<SingleSnapCr>,
    noise: &NoiseBands,
    dt_total: f32,
    total_t: f64,
) -> Result<IsrOutput, ScienceError> {
    let (w, h) = sum.dims();
    let n = w * h;
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
    let sat_fraction = sat_grown.len() as f64 / n as f64;
    if sat_fraction > cfg.max_saturated_fraction {
        return Err(ScienceError::Saturated {
            fraction: 100.0 * sat_fraction,
        });
    }
    // Flat field and variance in place over `sum` (rows y±1 are box-summed from
    // horizontal 3-sums computed before row y is overwritten); the mask is cleared.
    let mut nonfinite: Vec<usize> = Vec::new();
    let mut seeds: Vec<(usize, f32, f32)> = Vec::new();
    let hsum = |row: &[f32], out: &mut Vec<f32>| {
        out.clear();
        let m = row.len();
        let g = |v: f32| if v.is_finite() { v } else { 0.0 };
        if m == 1 {
            out.push(3.0 * g(row[0]));
            return;
        }
        out.push(2.0 * g(row[0]) + g(row[1]));
        out.extend(row.windows(3).map(|t| g(t[0]) + g(t[1]) + g(t[2])));
        out.push(g(row[m - 2]) + 2.0 * g(row[m - 1]));
    };
    let (mut hprev, mut hcur, mut hnext) = (Vec::with_capacity(w), Vec::new(), Vec::new());
    hsum(sum.row(0), &mut hcur);
    hprev.extend_from_slice(&hcur);
    let nsnap = snaps.len() as f32;
    let dark_e = calibs.dark_level * dt_total;
    let n2 = cfg.cr_n_sigma * cfg.cr_n_sigma;
    for y in 0..h {
        if y + 1 < h {
            hsum(sum.row(y + 1), &mut hnext);
        } else {
            hnext.clear();
            hnext.extend_from_slice(&hcur);
        }
        let nl = noise.row(y);
        let inv = calibs.inv_flat.row(y);
        mask_img.row_mut(y).fill(0);
        let vrow = variance.row_mut(y);
        let srow = &mut sum.data_mut()[y * w..(y + 1) * w];
        let mut bad = 0u32;
        if let Some(((sky, nbx, block), _)) = &single {
            let skyrow = &sky[(y / block) * nbx..];
            for x in 0..w {
                let ve = ((hprev[x] + hcur[x] + hnext[x]) * (1.0 / 9.0) + dark_e).max(0.0)
                    + nsnap * nl[x];
                let b = skyrow[x / block];
                let e = srow[x] - b;
                if e > 0.0 && e * e > n2 * ve {
                    seeds.push((y * w + x, ve.sqrt() * inv[x], b * inv[x]));
                }
            }
        }
        for x in 0..w {
            let m = (hprev[x] + hcur[x] + hnext[x]) * (1.0 / 9.0);
            let ve = (m + dark_e).max(0.0) + nsnap * nl[x];
            let fi = inv[x];
            let v = srow[x] * fi;
            srow[x] = v;
            vrow[x] = ve * fi * fi;
            bad += u32::from(!v.is_finite());
        }
        if bad > 0 {
            nonfinite.extend((0..w).filter(|&x| !srow[x].is_finite()).map(|x| y * w + x));
        }
        std::mem::swap(&mut hprev, &mut hcur);
        std::mem::swap(&mut hcur, &mut hnext);
    }
    let nan_fraction = nonfinite.len() as f64 / n as f64;
    if nan_fraction > cfg.max_nan_fraction {
        return Err(ScienceError::NanImage {
            fraction: 100.0 * nan_fraction,
        });
    }
    if let Some((_, ratios)) = &single {
        let data = sum.data();
        let mut kept = Vec::new();
        for &(i, s, b) in &seeds {
            if sat_grown.binary_search(&i).is_ok() {
                continue;
            }
            let f = |k: usize| data[k] - b;
            if is_sharp(&f, i, i % w, i / w, w, h, s, ratios, cfg.cr_sharpness) {
                kept.push(i);
            }
        }
        all_cr = grow(&kept, w, h, cfg.cr_grow);
        cr_interp = all_cr.clone();
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
    let defects = calibs.defects(cfg.hot_dark_e_per_s, cfg.dead_flat_below);
    {
        let md = mask_img.data_mut();
        for &i in defects.iter().chain(&nonfinite) {
            md[i] |= mask::BAD;
        }
        for &i in &sat_grown {
            md[i] |= mask::SAT;
        }
        for &i in &all_cr {
            md[i] |= mask::CR;
        }
    }
    let mut to_interp: Vec<usize> =
        Vec::with_capacity(defects.len() + nonfinite.len() + sat_grown.len() + cr_interp.len());
    to_interp.extend_from_slice(&defects);
    to_interp.extend_from_slice(&nonfinite);
    to_interp.extend_from_slice(&sat_grown);
    to_interp.extend_from_slice(&cr_interp);
    to_interp.sort_unstable();
    to_interp.dedup();
    let n_bad = {
        let mut b: Vec<usize> = defects.iter().chain(&nonfinite).copied().collect();
        b.sort_unstable();
        b.dedup();
        b.len()
    };
    let mut image = MaskedImage::from_parts(sum, variance, mask_img);
    interpolate_rows(&mut image, &to_interp);
    let first = &snaps[0].meta;
    let last = &snaps[snaps.len() - 1].meta;
    Ok(IsrOutput {
        n_cr_pixels: all_cr.len(),
        n_saturated: sat_grown.len(),
        n_bad,
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
