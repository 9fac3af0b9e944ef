//! Warping template tiles onto the science pixel grid with a Lanczos-3 kernel.
//!
//! Method: the science → tile pixel mapping (science WCS `pixel_to_sky`, then the
//! tile's `sky_to_pixel`) is evaluated exactly on a coarse grid of nodes every
//! [`WarpConfig::grid_step`] science pixels and interpolated bilinearly in between
//! ([`GridMapping`]; the maximum interpolation error is tested < 0.005 px). Each science
//! pixel takes the tile whose centre is nearest in that tile's own pixel frame
//! (Chebyshev distance, so each tile is used well inside its 100 px overlap border); no
//! averaging, so the template noise stays uncorrelated between tiles. The image is
//! resampled with a separable 6 × 6 Lanczos-3 kernel (Duchon 1979), weights from a
//! table of 1024 sub-pixel phases, each axis normalised to sum 1, and multiplied by the
//! pixel-area ratio |det J| (tile px² per science px²) so flux is conserved; units stay
//! nJy per (science) pixel. Variance (cheaper documented scheme): the variance of the
//! nearest tile pixel × Σw² of the same weights × |det J|² — exact for a locally flat
//! variance, which the sky-dominated coadd variance is at the kernel's 6 px scale. Mask:
//! OR of the 36 contributing tile pixels' masks (tiles mark non-finite input pixels
//! NO_DATA); science pixels no tile covers with the full kernel are 0 with NO_DATA.
//!
//! The PSF returned is the template PSF resampled onto science pixels through the local
//! Jacobian of the mapping at the detector centre (so a pixel-scale or rotation change is
//! accounted for), Lanczos-3 interpolated and normalised.

use apflow_core::geom::{TangentPlane, UnitVector};
use apflow_core::wcs::TanSipWcs;
use serde::Deserialize;

use crate::error::ScienceError;
use crate::image::{Image, MaskedImage, mask};
use crate::io::{TemplateTile, TemplateTileInfo};
use crate::psf::{ImagePsf, lanczos3};

/// Warping tunables.
#[derive(Clone, Debug, PartialEq, Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WarpConfig {
    /// Spacing of the exactly evaluated mapping nodes, science pixels.
    pub grid_step: usize,
    /// Smallest covered fraction of the detector (0–1) before
    /// [`ScienceError::NoTemplateCoverage`].
    pub min_coverage: f64,
}

impl Default for WarpConfig {
    fn default() -> Self {
        Self {
            grid_step: 64,
            min_coverage: 0.5,
        }
    }
}

/// A template on the science grid.
#[derive(Clone, Debug)]
pub struct WarpedTemplate {
    /// Image in nJy per science pixel, variance nJy², mask (NO_DATA where uncovered).
    pub masked: MaskedImage,
    /// The template PSF on science pixels.
    pub psf: ImagePsf,
    /// Fraction of detector pixels with data (0–1).
    pub coverage: f64,
}

/// The tiles of `band` whose footprint overlaps the `width` × `height` detector of
/// `science_wcs` (convex polygons on the gnomonic plane at the detector centre).
pub fn select_tiles<'a>(
    index: &'a [TemplateTileInfo],
    band: &str,
    science_wcs: &TanSipWcs,
    width: usize,
    height: usize,
) -> Vec<&'a TemplateTileInfo> {
    let (cx, cy) = (0.5 * (width as f64 - 1.0), 0.5 * (height as f64 - 1.0));
    let centre = science_wcs.pixel_to_unit(cx, cy);
    let (ra, dec) = centre.to_radec();
    let plane = TangentPlane::new(ra, dec);
    let (wf, hf) = (width as f64 - 0.5, height as f64 - 0.5);
    let det: Option<Vec<(f64, f64)>> = [(-0.5, -0.5), (wf, -0.5), (wf, hf), (-0.5, hf)]
        .iter()
        .map(|&(x, y)| plane.project(science_wcs.pixel_to_unit(x, y)))
        .collect();
    let Some(det) = det else {
        return Vec::new();
    };
    index
        .iter()
        .filter(|t| t.band == band)
        .filter(|t| {
            let poly: Option<Vec<(f64, f64)>> = t
                .corners_deg
                .iter()
                .map(|c| plane.project(UnitVector::from_radec_deg(c[0], c[1])))
                .collect();
            poly.is_some_and(|p| p.len() >= 3 && convex_overlap(&det, &p))
        })
        .collect()
}

/// Separating-axis test for two convex polygons.
fn convex_overlap(a: &[(f64, f64)], b: &[(f64, f64)]) -> bool {
    for poly in [a, b] {
        for i in 0..poly.len() {
            let (p, q) = (poly[i], poly[(i + 1) % poly.len()]);
            let axis = (q.1 - p.1, p.0 - q.0);
            let proj = |pts: &[(f64, f64)]| {
                pts.iter()
                    .map(|v| v.0 * axis.0 + v.1 * axis.1)
                    .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), d| {
                        (lo.min(d), hi.max(d))
                    })
            };
            let (a0, a1) = proj(a);
            let (b0, b1) = proj(b);
            if a1 < b0 || b1 < a0 {
                return false;
            }
        }
    }
    true
}

/// The science → tile pixel mapping, exact on grid nodes and bilinear in between.
#[derive(Clone, Debug)]
pub struct GridMapping {
    step: usize,
    nx: usize,
    ny: usize,
    /// Tile (x, y) at each node (NaN where the sky point is not projectable).
    nodes: Vec<(f64, f64)>,
}

impl GridMapping {
    /// Evaluates `science → src` on nodes every `step` pixels covering
    /// `width` × `height`.
    pub fn new(
        science: &TanSipWcs,
        src: &TanSipWcs,
        width: usize,
        height: usize,
        step: usize,
    ) -> Self {
        let step = step.max(1);
        // One node past the last cell, so every cell of `warp_template` has four.
        let nx = width.max(1).div_ceil(step) + 1;
        let ny = height.max(1).div_ceil(step) + 1;
        let plane = src.tangent_plane();
        let mut nodes = Vec::with_capacity(nx * ny);
        for j in 0..ny {
            for i in 0..nx {
                let u = science.pixel_to_unit((i * step) as f64, (j * step) as f64);
                nodes.push(src.unit_to_pixel(&plane, u).unwrap_or((f64::NAN, f64::NAN)));
            }
        }
        Self {
            step,
            nx,
            ny,
            nodes,
        }
    }

    /// Node spacing, pixels.
    pub fn step(&self) -> usize {
        self.step
    }

    /// Bilinear coefficients of cell (ci, cj): (p00, p10 − p00, p01 − p00,
    /// p11 − p10 − p01 + p00), in units of one cell.
    fn cell(&self, ci: usize, cj: usize) -> [(f64, f64); 4] {
        let ci = ci.min(self.nx - 2);
        let cj = cj.min(self.ny - 2);
        let at = |i: usize, j: usize| self.nodes[j * self.nx + i];
        let (p00, p10, p01, p11) = (
            at(ci, cj),
            at(ci + 1, cj),
            at(ci, cj + 1),
            at(ci + 1, cj + 1),
        );
        [
            p00,
            (p10.0 - p00.0, p10.1 - p00.1),
            (p01.0 - p00.0, p01.1 - p00.1),
            (p11.0 - p10.0 - p01.0 + p00.0, p11.1 - p10.1 - p01.1 + p00.1),
        ]
    }

    /// Interpolated tile position of science pixel (x, y).
    pub fn eval(&self, x: f64, y: f64) -> (f64, f64) {
        let s = self.step as f64;
        let ci = ((x / s).floor().max(0.0) as usize).min(self.nx - 2);
        let cj = ((y / s).floor().max(0.0) as usize).min(self.ny - 2);
        let (u, v) = (x / s - ci as f64, y / s - cj as f64);
        let [a, b, c, d] = self.cell(ci, cj);
        (
            a.0 + b.0 * u + c.0 * v + d.0 * u * v,
            a.1 + b.1 * u + c.1 * v + d.1 * u * v,
        )
    }

    /// Jacobian d(tile)/d(science) at science pixel (x, y).
    pub fn jacobian(&self, x: f64, y: f64) -> [[f64; 2]; 2] {
        let s = self.step as f64;
        let ci = ((x / s).floor().max(0.0) as usize).min(self.nx - 2);
        let cj = ((y / s).floor().max(0.0) as usize).min(self.ny - 2);
        let (u, v) = (x / s - ci as f64, y / s - cj as f64);
        let [_, b, c, d] = self.cell(ci, cj);
        [
            [(b.0 + d.0 * v) / s, (c.0 + d.0 * u) / s],
            [(b.1 + d.1 * v) / s, (c.1 + d.1 * u) / s],
        ]
    }
}

/// Lanczos-3 weights for `PHASES + 1` sub-pixel phases, each row of 8 (6 taps + 2
/// zeros, for 8-wide loads) normalised to sum 1.
const PHASES: usize = 1024;

fn lanczos_table() -> Vec<[f32; 8]> {
    (0..=PHASES)
        .map(|p| {
            let f = p as f64 / PHASES as f64;
            let mut w = [0f64; 6];
            for (k, wk) in w.iter_mut().enumerate() {
                *wk = lanczos3(f - (k as f64 - 2.0));
            }
            let s: f64 = w.iter().sum();
            let mut out = [0f32; 8];
            for k in 0..6 {
                out[k] = (w[k] / s) as f32;
            }
            out
        })
        .collect()
}

/// Lanczos-3 sample of a tile at (sx, sy) (inside): value × area, variance, mask.
///
/// Written for the SLP vectoriser: the six tile rows are combined eight lanes at a time
/// (two SSE registers on baseline x86-64) and the column sums dotted with the x weights;
/// the mask is 0 unless [`MaskBlocks`] finds a set bit near the window, and then the OR
/// of the window's pixels ([`window_mask`]).
#[inline(always)]
fn sample(
    st: &TileState<'_>,
    table: &[[f32; 8]],
    sw2: &[f32],
    sx: f64,
    sy: f64,
    area: f32,
) -> (f32, f32, u32) {
    // sx, sy ≥ 2 (inside): truncation is floor, without a libm call.
    let (ix, iy) = (sx as usize, sy as usize);
    let px = ((sx - ix as f64) * PHASES as f64 + 0.5) as usize;
    let py = ((sy - iy as f64) * PHASES as f64 + 0.5) as usize;
    sample_at(st, table, sw2, (ix, px), (iy, py), area)
}

/// [`sample`] at tile pixel `ix` + `px / PHASES`, `iy` + `py / PHASES` (the window
/// `ix − 2 ..= ix + 5`, `iy − 2 ..= iy + 3` inside the tile).
#[inline(always)]
fn sample_at(
    st: &TileState<'_>,
    table: &[[f32; 8]],
    sw2: &[f32],
    (ix, px): (usize, usize),
    (iy, py): (usize, usize),
    area: f32,
) -> (f32, f32, u32) {
    let (wx, wy) = (&table[px], &table[py]);
    let img = st.tile.image.data();
    let w = st.w;
    let base = (iy - 2) * w + ix - 2;
    let rows = &img[base..base + 5 * w + 8];
    let row = |r: usize| -> &[f32; 8] { rows[r * w..r * w + 8].try_into().expect("8 taps") };
    let (r0, r1, r2, r3, r4, r5) = (row(0), row(1), row(2), row(3), row(4), row(5));
    let mut col = [0f32; 8];
    for k in 0..8 {
        col[k] = (r0[k] * wy[0] + r1[k] * wy[1])
            + (r2[k] * wy[2] + r3[k] * wy[3])
            + (r4[k] * wy[4] + r5[k] * wy[5]);
    }
    let mut s = [0f32; 8];
    for k in 0..8 {
        s[k] = col[k] * wx[k];
    }
    let acc = ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
    let near = (iy + usize::from(py > PHASES / 2)) * w + ix + usize::from(px > PHASES / 2);
    let nvar = st.tile.variance.data()[near];
    let m = match &st.mask_blocks {
        Some(blocks) if blocks.any(ix - 2, iy - 2) => {
            window_mask(st.tile.mask.data(), base, w, wx, wy)
        }
        _ => 0,
    };
    (acc * area, nvar * sw2[px] * sw2[py] * area * area, m)
}

/// The OR of the masks of the 36 tile pixels a sample combines, leaving out a tap of
/// weight exactly 0 (at the two extreme phases one tap of an axis has weight 0). Only
/// called where [`MaskBlocks`] says some mask bit is near.
#[cold]
#[inline(never)]
fn window_mask(md: &[u32], base: usize, w: usize, wx: &[f32; 8], wy: &[f32; 8]) -> u32 {
    let mut m = 0u32;
    for (r, &wyr) in wy.iter().take(6).enumerate() {
        let o = base + r * w;
        for (c, &wxc) in wx.iter().take(6).enumerate() {
            if wxc != 0.0 && wyr != 0.0 {
                m |= md[o + c];
            }
        }
    }
    m
}

/// The tiles that can serve cell (ci, cj) of the mapping grid: every tile with support
/// near the cell, or only the nearest-centre one when it is nearest at all four corners
/// (tiles are used far inside their overlap borders, so no other tile wins inside such a
/// cell). A single candidate means every pixel of the cell samples that tile.
fn plan_cell(
    states: &[TileState<'_>],
    ci: usize,
    cj: usize,
    step: usize,
    width: usize,
    height: usize,
) -> Vec<Candidate> {
    let sf = step as f64;
    let (x0, y0) = (ci * step, cj * step);
    let (x1, y1) = (((ci + 1) * step).min(width), ((cj + 1) * step).min(height));
    let corners = [(x0, y0), (x1, y0), (x0, y1), (x1, y1)];
    let mut cands = Vec::new();
    // Nearest-centre tile at each corner (with support), to detect uniform cells.
    let mut corner_best = [usize::MAX; 4];
    let mut corner_d = [f64::INFINITY; 4];
    for (k, st) in states.iter().enumerate() {
        let m = 2.0 * sf;
        let mut any = false;
        for (q, &(x, y)) in corners.iter().enumerate() {
            let (sx, sy) = st.map.eval(x as f64, y as f64);
            any |= sx > -m && sy > -m && sx < st.w as f64 + m && sy < st.h as f64 + m;
            if st.inside(sx, sy) {
                let d = st.distance(sx, sy);
                if d < corner_d[q] {
                    corner_d[q] = d;
                    corner_best[q] = k;
                }
            }
        }
        if any {
            let coef = st.map.cell(ci, cj);
            let jac = st
                .map
                .jacobian((x0 + x1) as f64 * 0.5, (y0 + y1) as f64 * 0.5);
            let area = (jac[0][0] * jac[1][1] - jac[0][1] * jac[1][0]).abs() as f32;
            cands.push((k, coef, area));
        }
    }
    if corner_best[0] != usize::MAX && corner_best.iter().all(|&k| k == corner_best[0]) {
        cands.retain(|c| c.0 == corner_best[0]);
    }
    cands
}

/// Fractional bits of the fixed-point positions of [`warp_row`].
const FIX_BITS: u32 = 32;

/// Samples one row segment that one tile serves: output pixel `i` maps to tile position
/// `start + i step`. Positions advance in fixed point (32 fractional bits, so 64 steps
/// drift by < 1e-8 px) and are rounded to the nearest of the [`PHASES`] sub-pixel phases
/// there, which saves the float → integer conversions of [`sample`]; a phase that rounds
/// up to a whole pixel is phase 0 of the next pixel, the same weights on the same tile
/// pixels. Pixels whose window leaves the tile are left as they are. Returns the number
/// of pixels written.
#[allow(clippy::too_many_arguments)]
fn warp_row(
    st: &TileState<'_>,
    table: &[[f32; 8]],
    sw2: &[f32],
    start: (f64, f64),
    step: (f64, f64),
    area: f32,
    image: &mut [f32],
    variance: &mut [f32],
    mask: &mut [u32],
) -> usize {
    let one = (1u64 << FIX_BITS) as f64;
    // Positions far outside any tile cannot be sampled (and must not overflow).
    let lim = 1.0e9;
    if !(start.0.abs() < lim && start.1.abs() < lim && step.0.abs() < 1e3 && step.1.abs() < 1e3) {
        return 0;
    }
    let (mut qx, mut qy) = ((start.0 * one) as i64, (start.1 * one) as i64);
    let (dx, dy) = ((step.0 * one) as i64, (step.1 * one) as i64);
    // Rounding to the nearest phase: add half a phase, drop the bits below a phase.
    let shift = FIX_BITS - PHASES.trailing_zeros();
    let half = 1i64 << (shift - 1);
    let (xmax, ymax) = (st.w as i64 - 6, st.h as i64 - 4);
    let mask_phase = PHASES as i64 - 1;
    let mut written = 0;
    for ((o, v), m) in image
        .iter_mut()
        .zip(variance.iter_mut())
        .zip(mask.iter_mut())
    {
        let (px, py) = ((qx + half) >> shift, (qy + half) >> shift);
        qx += dx;
        qy += dy;
        let (ix, iy) = (px >> PHASES.trailing_zeros(), py >> PHASES.trailing_zeros());
        if ix < 2 || iy < 2 || ix >= xmax || iy >= ymax {
            continue;
        }
        (*o, *v, *m) = sample_at(
            st,
            table,
            sw2,
            (ix as usize, (px & mask_phase) as usize),
            (iy as usize, (py & mask_phase) as usize),
            area,
        );
        written += 1;
    }
    written
}

/// Side of the blocks of [`MaskBlocks`], pixels.
const MASK_BLOCK: usize = 16;

/// Which 16 × 16 blocks of a tile's mask have any bit set: a sample's 6 × 6 window lies
/// within 2 × 2 blocks, so four reads of this small table (19 KB for a 2200² tile, cache
/// resident) say whether the window's mask can be non-zero, and only then are its 36
/// pixels ORed ([`window_mask`]). Tiles mark only non-finite pixels (`NO_DATA`), so
/// nearly every sample takes the first path and the warp reads no mask plane.
struct MaskBlocks {
    /// Blocks per row.
    nbx: usize,
    set: Vec<bool>,
}

impl MaskBlocks {
    /// `None` when no pixel of `mask` is set.
    fn new(mask: &Image<u32>) -> Option<Self> {
        let (w, h) = mask.dims();
        let (nbx, nby) = (w.div_ceil(MASK_BLOCK), h.div_ceil(MASK_BLOCK));
        let mut set = vec![false; nbx * nby];
        let mut any = false;
        for (y, row) in mask.data().chunks_exact(w.max(1)).enumerate() {
            let flags = &mut set[(y / MASK_BLOCK) * nbx..(y / MASK_BLOCK + 1) * nbx];
            for (f, chunk) in flags.iter_mut().zip(row.chunks(MASK_BLOCK)) {
                let or = chunk.iter().fold(0u32, |a, &m| a | m);
                *f |= or != 0;
                any |= or != 0;
            }
        }
        any.then_some(Self { nbx, set })
    }

    /// Can any pixel of the 6 × 6 window starting at (x0, y0) have a mask bit?
    #[inline(always)]
    fn any(&self, x0: usize, y0: usize) -> bool {
        let (bx0, bx1) = (x0 / MASK_BLOCK, (x0 + 5) / MASK_BLOCK);
        let (r0, r1) = (
            (y0 / MASK_BLOCK) * self.nbx,
            ((y0 + 5) / MASK_BLOCK) * self.nbx,
        );
        self.set[r0 + bx0] | self.set[r0 + bx1] | self.set[r1 + bx0] | self.set[r1 + bx1]
    }
}

/// Per-tile data for the warp.
struct TileState<'a> {
    tile: &'a TemplateTile,
    map: GridMapping,
    w: usize,
    h: usize,
    centre: (f64, f64),
    /// Where the tile's mask has bits set (`None`: nowhere).
    mask_blocks: Option<MaskBlocks>,
}

impl TileState<'_> {
    /// Can the full 6 (8-wide) tap window be read at tile position (sx, sy)?
    #[inline]
    fn inside(&self, sx: f64, sy: f64) -> bool {
        sx >= 2.0 && sy >= 2.0 && sx < (self.w - 6) as f64 && sy < (self.h - 4) as f64
    }
    #[inline]
    fn distance(&self, sx: f64, sy: f64) -> f64 {
        (sx - self.centre.0).abs().max((sy - self.centre.1).abs())
    }
}

/// A tile usable in a mapping cell: (tile, bilinear coefficients, |det J|).
type Candidate = (usize, [(f64, f64); 4], f32);

/// Warps `tiles` onto the `width` × `height` science grid of `science_wcs`.
pub fn warp_template(
    tiles: &[&TemplateTile],
    science_wcs: &TanSipWcs,
    width: usize,
    height: usize,
    cfg: &WarpConfig,
) -> Result<WarpedTemplate, ScienceError> {
    if width == 0 || height == 0 {
        return Err(ScienceError::BadInput(format!(
            "warp onto an empty {width}x{height} grid"
        )));
    }
    let step = cfg.grid_step.max(2);
    let states: Vec<TileState<'_>> = tiles
        .iter()
        .filter(|t| t.image.width() >= 12 && t.image.height() >= 12)
        .map(|t| {
            let (w, h) = t.image.dims();
            TileState {
                tile: t,
                map: GridMapping::new(science_wcs, &t.wcs, width, height, step),
                w,
                h,
                centre: (0.5 * (w as f64 - 1.0), 0.5 * (h as f64 - 1.0)),
                mask_blocks: MaskBlocks::new(&t.mask),
            }
        })
        .collect();
    let table = lanczos_table();
    let sw2: Vec<f32> = table
        .iter()
        .map(|w| w.iter().map(|v| v * v).sum())
        .collect();
    let mut out = MaskedImage::new(width, height);
    out.mask.data_mut().fill(mask::NO_DATA);
    let (ncx, ncy) = (width.div_ceil(step), height.div_ceil(step));
    let sf = step as f64;
    let mut covered = 0usize;
    // Cells are sampled in bands of GROUP cells along x, row by row within a band: each
    // tile row is then read in runs of GROUP × 64 pixels, long enough for the hardware
    // prefetcher, while the six rows of the window stay in L1 (whole detector rows
    // do not fit, single cells are too short).
    const GROUP: usize = 8;
    for cj in 0..ncy {
        let (y0, y1) = (cj * step, ((cj + 1) * step).min(height));
        for g0 in (0..ncx).step_by(GROUP) {
            let plans: Vec<Vec<Candidate>> = (g0..(g0 + GROUP).min(ncx))
                .map(|ci| plan_cell(&states, ci, cj, step, width, height))
                .collect();
            for y in y0..y1 {
                let v = y as f64 / sf - cj as f64;
                let row = y * width..(y + 1) * width;
                let image = &mut out.image.data_mut()[row.clone()];
                let variance = &mut out.variance.data_mut()[row.clone()];
                let maskr = &mut out.mask.data_mut()[row];
                for (ci, cands) in (g0..).zip(&plans) {
                    let (x0, x1) = (ci * step, ((ci + 1) * step).min(width));
                    if let [(k, [a, b, cc, d], area)] = cands.as_slice() {
                        // One tile: positions advance linearly along the segment.
                        let u0 = x0 as f64 / sf - ci as f64;
                        let (dxu, dyu) = ((b.0 + d.0 * v) / sf, (b.1 + d.1 * v) / sf);
                        let sx0 = a.0 + cc.0 * v + (b.0 + d.0 * v) * u0;
                        let sy0 = a.1 + cc.1 * v + (b.1 + d.1 * v) * u0;
                        covered += warp_row(
                            &states[*k],
                            &table,
                            &sw2,
                            (sx0, sy0),
                            (dxu, dyu),
                            *area,
                            &mut image[x0..x1],
                            &mut variance[x0..x1],
                            &mut maskr[x0..x1],
                        );
                        continue;
                    }
                    for x in x0..x1 {
                        let u = x as f64 / sf - ci as f64;
                        // The tile with the nearest centre among those with support.
                        let mut best: Option<(usize, f64, f64, f64)> = None;
                        for (c, &(k, coef, _)) in cands.iter().enumerate() {
                            let [a, b, cc, d] = coef;
                            let sx = a.0 + b.0 * u + cc.0 * v + d.0 * u * v;
                            let sy = a.1 + b.1 * u + cc.1 * v + d.1 * u * v;
                            let st = &states[k];
                            if st.inside(sx, sy) {
                                let dist = st.distance(sx, sy);
                                if best.is_none_or(|b| dist < b.3) {
                                    best = Some((c, sx, sy, dist));
                                }
                            }
                        }
                        let Some((c, sx, sy, _)) = best else {
                            continue;
                        };
                        let (k, _, area) = cands[c];
                        (image[x], variance[x], maskr[x]) =
                            sample(&states[k], &table, &sw2, sx, sy, area);
                        covered += 1;
                    }
                }
            }
        }
    }
    let coverage = covered as f64 / (width * height) as f64;
    if coverage < cfg.min_coverage {
        return Err(ScienceError::NoTemplateCoverage {
            covered: 100.0 * coverage,
            needed: 100.0 * cfg.min_coverage,
        });
    }
    // PSF of the tile used at the detector centre, through the local Jacobian.
    let (cx, cy) = (0.5 * (width as f64 - 1.0), 0.5 * (height as f64 - 1.0));
    let st = states
        .iter()
        .filter(|s| {
            let (sx, sy) = s.map.eval(cx, cy);
            s.inside(sx, sy)
        })
        .min_by(|a, b| {
            let (ax, ay) = a.map.eval(cx, cy);
            let (bx, by) = b.map.eval(cx, cy);
            a.distance(ax, ay).total_cmp(&b.distance(bx, by))
        })
        .or_else(|| states.first())
        .ok_or(ScienceError::NoTemplateCoverage {
            covered: 0.0,
            needed: 100.0 * cfg.min_coverage,
        })?;
    let psf = resample_psf(&st.tile.psf, st.map.jacobian(cx, cy));
    Ok(WarpedTemplate {
        masked: out,
        psf,
        coverage,
    })
}

/// A PSF image in source pixels → science pixels: science offset `u` samples the
/// source at `J u` (Lanczos-3), same odd size, normalised.
pub fn resample_psf(psf: &ImagePsf, jac: [[f64; 2]; 2]) -> ImagePsf {
    let src = psf.image();
    let n = src.width();
    let c = (n / 2) as f64;
    let mut out = Image::new(n, n);
    for j in 0..n {
        for i in 0..n {
            let (u, v) = (i as f64 - c, j as f64 - c);
            let sx = c + jac[0][0] * u + jac[0][1] * v;
            let sy = c + jac[1][0] * u + jac[1][1] * v;
            let (fx, fy) = (sx.floor() as isize, sy.floor() as isize);
            let mut acc = 0.0;
            for b in -2..=3 {
                let yy = fy + b;
                let wy = lanczos3(sy - yy as f64);
                for a in -2..=3 {
                    let xx = fx + a;
                    if let Some(p) = src.get_checked(xx, yy) {
                        acc += f64::from(p) * wy * lanczos3(sx - xx as f64);
                    }
                }
            }
            out.set(i, j, acc.max(0.0) as f32);
        }
    }
    if out.data().iter().all(|&v| v == 0.0) {
        return psf.clone();
    }
    ImagePsf::new(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_blocks_flag_every_window_that_holds_a_set_pixel() {
        let (w, h) = (53, 41);
        let mut m = Image::<u32>::new(w, h);
        assert!(MaskBlocks::new(&m).is_none());
        for &(x, y) in &[(0, 0), (15, 16), (16, 15), (31, 32), (52, 40), (40, 7)] {
            m.set(x, y, mask::NO_DATA);
        }
        let blocks = MaskBlocks::new(&m).unwrap();
        for y0 in 0..h - 5 {
            for x0 in 0..w - 5 {
                let set = (y0..y0 + 6).any(|y| (x0..x0 + 6).any(|x| m.get(x, y) != 0));
                assert!(!set || blocks.any(x0, y0), "window at ({x0}, {y0})");
            }
        }
    }
}
