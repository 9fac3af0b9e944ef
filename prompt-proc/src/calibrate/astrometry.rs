//! Astrometric calibration: refine the header TAN-SIP WCS against the reference
//! catalogue.
//!
//! Algorithm:
//! 1. Reference stars (moved to the exposure epoch) are placed on the detector with
//!    the header WCS; the brightest clean detections are the sources.
//! 2. **Offset vote**: every (source, reference) pair closer than `max_offset_px`
//!    votes for its offset in a 2-D histogram of `vote_bin_px` bins; the peak bin
//!    (with its 8 neighbours) gives the mean offset. This finds header errors of tens
//!    of pixels without a pattern match (rotation and scale errors of the header are
//!    assumed small over a detector).
//! 3. **Match**: nearest reference within `match_radius_px`, one-to-one.
//! 4. **Fit**: with `CRPIX` and the SIP distortion kept (they describe the camera), the
//!    tangent point and the full CD matrix are fitted by weighted linear least squares:
//!    `(ξ, η)_ref = CD · (u', v') + (ξ₀, η₀)`, where `(u', v')` are the SIP-corrected
//!    pixel offsets from `CRPIX` and `(ξ, η)` the reference's gnomonic coordinates at
//!    the current tangent point; the tangent point moves to `(ξ₀, η₀)`. Matching and
//!    fitting iterate with σ-clipping of the residuals and a match radius shrinking to
//!    a few times the scatter.
//!
//! `rms_arcsec` is the RMS of the 2-D residual (√⟨Δξ² + Δη²⟩) of matched sources with
//! S/N ≥ `bright_snr`. Units: pixels, degrees and arcsec as named.

use apflow_core::geom::UnitVector;
use apflow_core::wcs::TanSipWcs;
use serde::Deserialize;

use super::refcat::RefStar;
use crate::error::ScienceError;
use crate::stars::{Grid, Star, flags};

/// Tunables of [`fit_astrometry`].
#[derive(Clone, Debug, Deserialize, PartialEq, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AstrometryConfig {
    /// Minimum aperture S/N of a source used.
    pub min_snr: f64,
    /// At most this many sources (the highest S/N).
    pub max_stars: usize,
    /// Largest header-WCS error searched by the offset vote, pixels.
    pub max_offset_px: f64,
    /// Bin of the offset histogram, pixels.
    pub vote_bin_px: f64,
    /// Initial match radius after the offset, pixels.
    pub match_radius_px: f64,
    /// Smallest match radius in later iterations, pixels.
    pub min_match_radius_px: f64,
    /// Match/fit iterations.
    pub iterations: usize,
    /// Residuals beyond this many σ are rejected.
    pub clip_sigma: f64,
    /// Fewer matches than this is a failure.
    pub min_matches: usize,
    /// A fit with `rms_arcsec` above this is a failure.
    pub max_rms_arcsec: f64,
    /// Sources at or above this S/N count for `rms_arcsec`.
    pub bright_snr: f64,
}

impl Default for AstrometryConfig {
    fn default() -> Self {
        Self {
            min_snr: 10.0,
            max_stars: 500,
            max_offset_px: 60.0,
            vote_bin_px: 1.0,
            match_radius_px: 3.0,
            min_match_radius_px: 1.0,
            iterations: 5,
            clip_sigma: 3.5,
            min_matches: 8,
            max_rms_arcsec: 0.1,
            bright_snr: 50.0,
        }
    }
}

/// A source matched to a reference star.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AstroMatch {
    /// Index into the source list.
    pub star: usize,
    /// Index into the reference list given to [`fit_astrometry`].
    pub refstar: usize,
    /// Separation after the fit, arcsec.
    pub sep_arcsec: f64,
}

/// Result of [`fit_astrometry`].
#[derive(Clone, Debug, PartialEq)]
pub struct AstrometricFit {
    /// The refined WCS.
    pub wcs: TanSipWcs,
    /// RMS 2-D residual of bright matched sources, arcsec.
    pub rms_arcsec: f64,
    /// Matches kept in the final fit.
    pub n_matched: usize,
    /// Header-WCS offset found by the vote (reference − source), pixels.
    pub offset_px: [f64; 2],
    /// The final matches.
    pub matches: Vec<AstroMatch>,
}

struct Pair {
    star: usize,
    refstar: usize,
}

/// Refines `header_wcs` against `refcat` (any epoch; moved to `mjd` here) using the
/// centroids of `stars`.
///
/// Errors: [`ScienceError::WcsFit`] with too few sources, references or matches, a
/// singular fit, or `rms_arcsec` above `cfg.max_rms_arcsec`.
pub fn fit_astrometry(
    stars: &[Star],
    header_wcs: &TanSipWcs,
    refcat: &[RefStar],
    mjd: f64,
    cfg: &AstrometryConfig,
) -> Result<AstrometricFit, ScienceError> {
    let bad = flags::SATURATED | flags::EDGE | flags::BAD_SHAPE | flags::BLENDED;
    let mut src: Vec<usize> = (0..stars.len())
        .filter(|&i| {
            let s = &stars[i];
            s.flags & bad == 0 && s.snr() >= cfg.min_snr && s.x.is_finite() && s.y.is_finite()
        })
        .collect();
    src.sort_by(|&a, &b| stars[b].snr().total_cmp(&stars[a].snr()));
    src.truncate(cfg.max_stars);
    if src.len() < cfg.min_matches {
        return Err(ScienceError::WcsFit(format!(
            "{} usable sources, {} needed",
            src.len(),
            cfg.min_matches
        )));
    }
    let (mut x0, mut y0, mut x1, mut y1) = (f64::MAX, f64::MAX, f64::MIN, f64::MIN);
    for &i in &src {
        x0 = x0.min(stars[i].x);
        y0 = y0.min(stars[i].y);
        x1 = x1.max(stars[i].x);
        y1 = y1.max(stars[i].y);
    }
    let m = cfg.max_offset_px;
    // Reference positions at the epoch, as unit vectors.
    let refs: Vec<(usize, UnitVector)> = refcat
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let (ra, dec) = r.position_at(mjd);
            (k, UnitVector::from_radec_deg(ra, dec))
        })
        .collect();
    let project = |wcs: &TanSipWcs| -> Vec<(usize, f64, f64)> {
        let plane = wcs.tangent_plane();
        refs.iter()
            .filter_map(|&(k, p)| {
                let (x, y) = wcs.unit_to_pixel(&plane, p)?;
                (x > x0 - m && x < x1 + m && y > y0 - m && y < y1 + m).then_some((k, x, y))
            })
            .collect()
    };
    let ref_px = project(header_wcs);
    if ref_px.len() < cfg.min_matches {
        return Err(ScienceError::WcsFit(format!(
            "{} reference stars on the detector, {} needed",
            ref_px.len(),
            cfg.min_matches
        )));
    }
    // Offset vote.
    let nb = ((2.0 * m / cfg.vote_bin_px).ceil() as usize).max(1);
    let mut hist = vec![0u32; nb * nb];
    let bin = |d: f64| ((d + m) / cfg.vote_bin_px).floor() as isize;
    let grid = Grid::new(
        ref_px.iter().map(|r| (r.1 - x0 + m, r.2 - y0 + m)),
        x1 - x0 + 2.0 * m,
        y1 - y0 + 2.0 * m,
        m.max(8.0),
    );
    for &i in &src {
        let s = &stars[i];
        grid.near(s.x - x0 + m, s.y - y0 + m, m, |k| {
            let (dx, dy) = (ref_px[k].1 - s.x, ref_px[k].2 - s.y);
            let (bx, by) = (bin(dx), bin(dy));
            if bx >= 0 && by >= 0 && (bx as usize) < nb && (by as usize) < nb {
                hist[by as usize * nb + bx as usize] += 1;
            }
        });
    }
    let peak = (0..hist.len()).max_by_key(|&k| hist[k]).unwrap_or(0);
    let (pbx, pby) = ((peak % nb) as isize, (peak / nb) as isize);
    let (mut sx, mut sy, mut sn) = (0.0, 0.0, 0.0);
    for &i in &src {
        let s = &stars[i];
        grid.near(s.x - x0 + m, s.y - y0 + m, m, |k| {
            let (dx, dy) = (ref_px[k].1 - s.x, ref_px[k].2 - s.y);
            if (bin(dx) - pbx).abs() <= 1 && (bin(dy) - pby).abs() <= 1 {
                sx += dx;
                sy += dy;
                sn += 1.0;
            }
        });
    }
    if sn < cfg.min_matches as f64 {
        return Err(ScienceError::WcsFit(format!(
            "no consistent offset: {sn} pairs in the peak, {} needed",
            cfg.min_matches
        )));
    }
    let offset = [sx / sn, sy / sn];

    let mut wcs = header_wcs.clone();
    let mut shift = offset;
    let mut radius = cfg.match_radius_px;
    let mut kept: Vec<Pair> = Vec::new();
    let scale = header_wcs.pixel_scale_arcsec();
    for _ in 0..cfg.iterations.max(1) {
        let rp = project(&wcs);
        let g = Grid::new(
            rp.iter().map(|r| (r.1 - x0 + m, r.2 - y0 + m)),
            x1 - x0 + 2.0 * m,
            y1 - y0 + 2.0 * m,
            16.0,
        );
        // Nearest reference of each source, then one-to-one by distance.
        let mut cand: Vec<(f64, usize, usize)> = Vec::new();
        for &i in &src {
            let s = &stars[i];
            let (px, py) = (s.x + shift[0], s.y + shift[1]);
            let mut best = (radius * radius, usize::MAX);
            g.near(px - x0 + m, py - y0 + m, radius, |k| {
                let d2 = (rp[k].1 - px).powi(2) + (rp[k].2 - py).powi(2);
                if d2 < best.0 {
                    best = (d2, k);
                }
            });
            if best.1 != usize::MAX {
                cand.push((best.0, i, rp[best.1].0));
            }
        }
        cand.sort_by(|a, b| a.0.total_cmp(&b.0));
        let mut used_ref = std::collections::HashSet::new();
        let mut pairs: Vec<Pair> = Vec::new();
        for (_, i, k) in cand {
            if used_ref.insert(k) {
                pairs.push(Pair {
                    star: i,
                    refstar: k,
                });
            }
        }
        // Fit, then clip and refit once within this iteration.
        let mut fitted = fit_linear(stars, &refs, &pairs, &wcs)?;
        let res = residuals_arcsec(stars, &refs, &pairs, &fitted);
        let mut r2: Vec<f32> = res.iter().map(|r| r.0.hypot(r.1) as f32).collect();
        let sig = crate::image::median_and_iqr_sigma(&mut r2)
            .map_or(f64::INFINITY, |v| f64::from(v.0) * 1.2);
        let lim = (cfg.clip_sigma * sig).max(0.01);
        let before = pairs.len();
        let mut k = 0;
        pairs.retain(|_| {
            k += 1;
            res[k - 1].0.hypot(res[k - 1].1) <= lim
        });
        if pairs.len() < before && pairs.len() >= 3 {
            fitted = fit_linear(stars, &refs, &pairs, &wcs)?;
        }
        wcs = fitted;
        shift = [0.0, 0.0];
        radius = (5.0 * sig / scale).clamp(cfg.min_match_radius_px, cfg.match_radius_px);
        kept = pairs;
        if kept.len() < cfg.min_matches {
            break;
        }
    }
    if kept.len() < cfg.min_matches {
        return Err(ScienceError::WcsFit(format!(
            "{} matches, {} needed",
            kept.len(),
            cfg.min_matches
        )));
    }
    let res = residuals_arcsec(stars, &refs, &kept, &wcs);
    let bright: Vec<f64> = kept
        .iter()
        .zip(&res)
        .filter(|(p, _)| stars[p.star].snr() >= cfg.bright_snr)
        .map(|(_, r)| r.0 * r.0 + r.1 * r.1)
        .collect();
    let all: Vec<f64> = res.iter().map(|r| r.0 * r.0 + r.1 * r.1).collect();
    let use_ = if bright.len() >= 3 { &bright } else { &all };
    let rms = (use_.iter().sum::<f64>() / use_.len() as f64).sqrt();
    if rms.is_nan() || rms > cfg.max_rms_arcsec {
        return Err(ScienceError::WcsFit(format!(
            "astrometric rms {rms:.3}\" above {:.3}\"",
            cfg.max_rms_arcsec
        )));
    }
    Ok(AstrometricFit {
        wcs,
        rms_arcsec: rms,
        n_matched: kept.len(),
        offset_px: offset,
        matches: kept
            .iter()
            .zip(&res)
            .map(|(p, r)| AstroMatch {
                star: p.star,
                refstar: p.refstar,
                sep_arcsec: r.0.hypot(r.1),
            })
            .collect(),
    })
}

/// Weighted least squares of tangent point and CD; returns the new WCS.
fn fit_linear(
    stars: &[Star],
    refs: &[(usize, UnitVector)],
    pairs: &[Pair],
    wcs: &TanSipWcs,
) -> Result<TanSipWcs, ScienceError> {
    if pairs.len() < 3 {
        return Err(ScienceError::WcsFit(format!("{} matches", pairs.len())));
    }
    let plane = wcs.tangent_plane();
    let mut rows = Vec::with_capacity(pairs.len());
    let (mut mu, mut mv, mut sw) = (0.0, 0.0, 0.0);
    for p in pairs {
        let s = &stars[p.star];
        let (u, v) = wcs.pixel_to_intermediate(s.x, s.y);
        let Some((xi, eta)) = plane.project(refs[p.refstar].1) else {
            continue;
        };
        let e2 = s.x_err.powi(2) + s.y_err.powi(2);
        let w = 1.0 / (0.5 * if e2.is_finite() { e2 } else { 1.0 } + 0.01f64.powi(2));
        rows.push((u, v, xi.to_degrees(), eta.to_degrees(), w));
        mu += w * u;
        mv += w * v;
        sw += w;
    }
    mu /= sw;
    mv /= sw;
    // Normal equations for [a, b, k] in ξ = a δu + b δv + k (same matrix for η).
    let mut n = [[0.0f64; 3]; 3];
    let mut bx = [0.0f64; 3];
    let mut by = [0.0f64; 3];
    for &(u, v, xi, eta, w) in &rows {
        let f = [u - mu, v - mv, 1.0];
        for r in 0..3 {
            for c in 0..3 {
                n[r][c] += w * f[r] * f[c];
            }
            bx[r] += w * f[r] * xi;
            by[r] += w * f[r] * eta;
        }
    }
    let sol = |b: [f64; 3]| solve3(n, b);
    let (Some(px), Some(py)) = (sol(bx), sol(by)) else {
        return Err(ScienceError::WcsFit("singular astrometric fit".into()));
    };
    let cd = [[px[0], px[1]], [py[0], py[1]]];
    let xi0 = px[2] - px[0] * mu - px[1] * mv;
    let eta0 = py[2] - py[0] * mu - py[1] * mv;
    let (ra, dec) = plane
        .deproject(xi0.to_radians(), eta0.to_radians())
        .to_radec_deg();
    Ok(TanSipWcs {
        crval_deg: [ra, dec],
        cd,
        ..wcs.clone()
    })
}

fn solve3(a: [[f64; 3]; 3], b: [f64; 3]) -> Option<[f64; 3]> {
    let det = |m: [[f64; 3]; 3]| {
        m[0][0] * (m[1][1] * m[2][2] - m[1][2] * m[2][1])
            - m[0][1] * (m[1][0] * m[2][2] - m[1][2] * m[2][0])
            + m[0][2] * (m[1][0] * m[2][1] - m[1][1] * m[2][0])
    };
    let d = det(a);
    if !d.is_normal() {
        return None;
    }
    let mut x = [0.0; 3];
    for (c, xc) in x.iter_mut().enumerate() {
        let mut m = a;
        for r in 0..3 {
            m[r][c] = b[r];
        }
        *xc = det(m) / d;
    }
    Some(x)
}

/// (Δξ, Δη) arcsec of source − reference on the tangent plane of `wcs`.
fn residuals_arcsec(
    stars: &[Star],
    refs: &[(usize, UnitVector)],
    pairs: &[Pair],
    wcs: &TanSipWcs,
) -> Vec<(f64, f64)> {
    let plane = wcs.tangent_plane();
    pairs
        .iter()
        .map(|p| {
            let s = &stars[p.star];
            let a = plane.project(wcs.pixel_to_unit(s.x, s.y));
            let b = plane.project(refs[p.refstar].1);
            match (a, b) {
                (Some(a), Some(b)) => (
                    (a.0 - b.0).to_degrees() * 3600.0,
                    (a.1 - b.1).to_degrees() * 3600.0,
                ),
                _ => (f64::INFINITY, f64::INFINITY),
            }
        })
        .collect()
}
