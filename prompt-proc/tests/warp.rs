//! Template warping: analytic tiles with known stars, and simulator tiles.

mod common;

use apflow_core::ids::DetectorId;
use apflow_core::wcs::TanSipWcs;
use apflow_prompt_proc::ScienceError;
use apflow_prompt_proc::image::{Image, mask};
use apflow_prompt_proc::io::{TemplateTile, TemplateTileInfo};
use apflow_prompt_proc::psf::{Psf, erf};
use apflow_prompt_proc::warp::{GridMapping, WarpConfig, select_tiles, warp_template};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const RA0: f64 = 150.0;
const DEC0: f64 = -20.0;
const SIGMA_TILE: f64 = 2.0;

/// A science WCS: 0.21″/px, rotated 33°, with the camera's SIP distortion about a
/// boresight off the detector.
fn science_wcs(ra: f64, dec: f64) -> TanSipWcs {
    let w =
        TanSipWcs::tan([ra, dec], [-3000.0, 2500.0], 0.21, 33.0).with_radial_distortion(2.5e-13);
    // Move the tangent point so that the detector centre (300, 300) sits at (ra, dec).
    let (r, d) = w.pixel_to_sky(300.0, 300.0);
    TanSipWcs {
        crval_deg: [2.0 * ra - r, 2.0 * dec - d],
        ..w
    }
}

fn stars(n: usize, seed: u64, ra: f64, dec: f64, radius_deg: f64) -> Vec<(f64, f64, f64)> {
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let dra = r.random_range(-radius_deg..radius_deg) / dec.to_radians().cos();
            let ddec = r.random_range(-radius_deg..radius_deg);
            (ra + dra, dec + ddec, r.random_range(1.0e4..1.0e5))
        })
        .collect()
}

/// A north-up tile of `size` px at (ra, dec), 0.2″/px, with pixel-integrated Gaussian
/// stars (σ = 2 px) of the given nJy fluxes.
fn analytic_tile(
    id: &str,
    ra: f64,
    dec: f64,
    size: usize,
    stars: &[(f64, f64, f64)],
) -> TemplateTile {
    let c = 0.5 * size as f64 + 0.5;
    let wcs = TanSipWcs::tan([ra, dec], [c, c], 0.2, 0.0);
    let mut img = Image::new(size, size);
    let s = SIGMA_TILE * std::f64::consts::SQRT_2;
    for &(sra, sdec, flux) in stars {
        let Some((x, y)) = wcs.sky_to_pixel(sra, sdec) else {
            continue;
        };
        let (x0, x1) = (
            (x - 12.0).max(0.0) as usize,
            ((x + 13.0) as usize).min(size),
        );
        let (y0, y1) = (
            (y - 12.0).max(0.0) as usize,
            ((y + 13.0) as usize).min(size),
        );
        for yy in y0..y1 {
            let gy = 0.5 * (erf((yy as f64 + 0.5 - y) / s) - erf((yy as f64 - 0.5 - y) / s));
            for xx in x0..x1 {
                let gx = 0.5 * (erf((xx as f64 + 0.5 - x) / s) - erf((xx as f64 - 0.5 - x) / s));
                *img.at_mut(xx, yy) += (flux * gx * gy) as f32;
            }
        }
    }
    let psf = apflow_prompt_proc::psf::GaussianPsf { sigma: SIGMA_TILE }.kernel(0.0, 0.0, 25);
    TemplateTile::from_parts(id, "r", img, Image::filled(size, size, 4.0), psf, wcs).unwrap()
}

/// Gaussian-weighted centroid (σ_w = 2 px, iterated; unbiased for a symmetric star).
fn weighted_centroid(img: &Image<f32>, x: f64, y: f64) -> (f64, f64) {
    let (mut cx, mut cy) = (x, y);
    let sw = 2.0;
    for _ in 0..20 {
        let (mut s, mut sx, mut sy) = (0.0, 0.0, 0.0);
        for j in (cy - 9.0).round() as isize..=(cy + 9.0).round() as isize {
            for i in (cx - 9.0).round() as isize..=(cx + 9.0).round() as isize {
                if let Some(v) = img.get_checked(i, j) {
                    let (dx, dy) = (i as f64 - cx, j as f64 - cy);
                    let wgt = f64::from(v) * (-(dx * dx + dy * dy) / (2.0 * sw * sw)).exp();
                    s += wgt;
                    sx += wgt * dx;
                    sy += wgt * dy;
                }
            }
        }
        // For a Gaussian star of σ_s, the weighted mean offset is shrunk by
        // σ_w²/(σ_w² + σ_s²); stepping 2× that converges for σ_s ≈ σ_w.
        cx += 2.0 * sx / s;
        cy += 2.0 * sy / s;
    }
    (cx, cy)
}

fn centroid(img: &Image<f32>, x: f64, y: f64, half: isize) -> (f64, f64, f64) {
    let (cx, cy) = (x.round() as isize, y.round() as isize);
    let (mut s, mut sx, mut sy) = (0.0, 0.0, 0.0);
    for j in cy - half..=cy + half {
        for i in cx - half..=cx + half {
            if let Some(v) = img.get_checked(i, j) {
                let v = f64::from(v);
                s += v;
                sx += v * i as f64;
                sy += v * j as f64;
            }
        }
    }
    (sx / s, sy / s, s)
}

#[test]
fn grid_mapping_interpolation_error_is_below_5_millipixels() {
    // A detector at the corner of the focal plane: 2 px of distortion.
    let sci = TanSipWcs::tan([RA0, DEC0], [-12000.0, -11000.0], 0.2, 33.0)
        .with_radial_distortion(2.5e-13);
    let (ra, dec) = sci.pixel_to_sky(2048.0, 2048.0);
    let tile = TanSipWcs::tan([ra + 0.1, dec - 0.1], [1100.0, 1100.0], 0.2, 0.0);
    let map = GridMapping::new(&sci, &tile, 4096, 4096, 64);
    let mut r = ChaCha8Rng::seed_from_u64(1);
    let plane = tile.tangent_plane();
    let mut worst = 0f64;
    for _ in 0..20_000 {
        let (x, y) = (r.random_range(0.0..4095.0), r.random_range(0.0..4095.0));
        let exact = tile.unit_to_pixel(&plane, sci.pixel_to_unit(x, y)).unwrap();
        let (ix, iy) = map.eval(x, y);
        worst = worst.max((ix - exact.0).hypot(iy - exact.1));
    }
    eprintln!("max interpolation error {worst:.2e} px");
    assert!(worst < 0.005, "{worst}");
}

#[test]
fn analytic_stars_are_reproduced_on_the_science_grid() {
    let all = stars(80, 3, RA0, DEC0, 0.02);
    // Two overlapping tiles straddling the detector.
    let c = DEC0.to_radians().cos();
    let t1 = analytic_tile("a", RA0 - 0.02 / c, DEC0, 1000, &all);
    let t2 = analytic_tile("b", RA0 + 0.02 / c, DEC0 + 0.004, 1000, &all);
    let sci = science_wcs(RA0, DEC0);
    let (w, h) = (600, 600);
    let out = warp_template(&[&t1, &t2], &sci, w, h, &WarpConfig::default()).unwrap();
    assert!(out.coverage > 0.999, "{}", out.coverage);
    let mut n = 0;
    let (mut worst_pos, mut worst_flux) = (0f64, 0f64);
    // Expected total: each star's flux × the fraction of its (circular, σ = 2 tile px =
    // 1.905 science px) profile inside the detector.
    let ss = 2.0 * 0.2 / 0.21 * std::f64::consts::SQRT_2;
    let inside = |c: f64, n: usize| 0.5 * (erf((n as f64 - 0.5 - c) / ss) - erf((-0.5 - c) / ss));
    let total_true: f64 = all
        .iter()
        .map(|&(ra, dec, flux)| {
            let (x, y) = sci.sky_to_pixel(ra, dec).unwrap();
            flux * inside(x, w) * inside(y, h)
        })
        .sum();
    for &(ra, dec, flux) in &all {
        let (x, y) = sci.sky_to_pixel(ra, dec).unwrap();
        if x < 15.0 || y < 15.0 || x > w as f64 - 16.0 || y > h as f64 - 16.0 {
            continue;
        }
        let (cx, cy, f) = centroid(&out.masked.image, x, y, 11);
        // Skip blends.
        if all.iter().any(|&(r2, d2, _)| {
            let (x2, y2) = sci.sky_to_pixel(r2, d2).unwrap();
            (r2, d2) != (ra, dec) && (x2 - x).hypot(y2 - y) < 30.0
        }) {
            continue;
        }
        n += 1;
        if (cx - x).hypot(cy - y) > 0.02 || (f / flux - 1.0).abs() > 0.005 {
            eprintln!(
                "star {ra} {dec} at {x:.2},{y:.2}: centroid {cx:.3},{cy:.3} flux {:.4}",
                f / flux
            );
        }
        worst_pos = worst_pos.max((cx - x).hypot(cy - y));
        worst_flux = worst_flux.max((f / flux - 1.0).abs());
    }
    eprintln!("{n} stars: worst position {worst_pos:.4} px, worst flux {worst_flux:.5}");
    assert!(n >= 10, "{n}");
    assert!(worst_pos < 0.02, "{worst_pos}");
    assert!(worst_flux < 0.005, "{worst_flux}");
    // Flux conservation over the detector (stars well inside it).
    let total: f64 = out.masked.image.data().iter().map(|&v| f64::from(v)).sum();
    eprintln!("total flux {total:.1} vs {total_true:.1}");
    assert!(
        (total / total_true - 1.0).abs() < 0.002,
        "{total} vs {total_true}"
    );
    // The PSF: σ of 2 tile px = 0.4″ is 1.905 science px at 0.21″/px.
    let s = out.psf.sigma_at(0.0, 0.0);
    assert!((s - 2.0 * 0.2 / 0.21).abs() < 0.03, "psf σ {s}");
    // Variance: 4 nJy² × Σw²ₓ Σw²ᵧ × |det J|², where each normalised Lanczos-3 Σw² lies
    // in [0.786, 1] (whole-pixel to half-pixel phase) and |det J|² = (0.21/0.2)⁴.
    let v = out.masked.variance.get(300, 300);
    let det2 = (0.21f32 / 0.2).powi(4);
    assert!(
        v >= 4.0 * 0.786 * 0.786 * det2 * 0.999 && v <= 4.0 * det2 * 1.001,
        "{v}"
    );
}

#[test]
fn coverage_no_data_edges_and_the_coverage_error() {
    let all = stars(20, 4, RA0, DEC0, 0.01);
    let tile = analytic_tile("a", RA0, DEC0, 400, &all);
    // Detector centred on the tile's east edge: about half covered.
    let edge_ra = RA0 + 200.0 * 0.2 / 3600.0 / DEC0.to_radians().cos();
    let sci = science_wcs(edge_ra, DEC0);
    let low = WarpConfig {
        min_coverage: 0.2,
        ..WarpConfig::default()
    };
    let out = warp_template(&[&tile], &sci, 600, 600, &low).unwrap();
    assert!(
        out.coverage > 0.25 && out.coverage < 0.6,
        "{}",
        out.coverage
    );
    let (mut nd, mut ok) = (0, 0);
    for (k, &m) in out.masked.mask.data().iter().enumerate() {
        if m & mask::NO_DATA != 0 {
            assert_eq!(out.masked.image.data()[k], 0.0);
            nd += 1;
        } else {
            assert_eq!(m, 0);
            ok += 1;
        }
    }
    assert!((ok as f64 / 360_000.0 - out.coverage).abs() < 1e-9 && nd > 0);
    let e = warp_template(
        &[&tile],
        &sci,
        600,
        600,
        &WarpConfig {
            min_coverage: 0.9,
            ..WarpConfig::default()
        },
    )
    .unwrap_err();
    assert!(
        matches!(e, ScienceError::NoTemplateCoverage { covered, needed } if covered < 60.0 && needed == 90.0),
        "{e}"
    );
    let e = warp_template(&[], &sci, 600, 600, &WarpConfig::default()).unwrap_err();
    assert!(matches!(e, ScienceError::NoTemplateCoverage { .. }), "{e}");
    // A tile with NaN pixels: their neighbourhood is NO_DATA in the warp.
    let mut img = tile.image.clone();
    let (x, y) = tile.wcs.sky_to_pixel(edge_ra - 0.005, DEC0).unwrap();
    img.set(x.round() as usize, y.round() as usize, f32::NAN);
    let bad = TemplateTile::from_parts(
        "n",
        "r",
        img,
        tile.variance.clone(),
        tile.psf.image().clone(),
        tile.wcs.clone(),
    )
    .unwrap();
    let out = warp_template(&[&bad], &sci, 600, 600, &low).unwrap();
    let (sx, sy) = sci.sky_to_pixel(edge_ra - 0.005, DEC0).unwrap();
    assert!(
        out.masked
            .mask
            .get(sx.round() as usize, sy.round() as usize)
            & mask::NO_DATA
            != 0
    );
}

fn info(id: &str, band: &str, wcs: &TanSipWcs, size: u32) -> TemplateTileInfo {
    let s = f64::from(size) - 0.5;
    let corners: Vec<[f64; 2]> = [(-0.5, -0.5), (s, -0.5), (s, s), (-0.5, s)]
        .iter()
        .map(|&(x, y)| {
            let (r, d) = wcs.pixel_to_sky(x, y);
            [r, d]
        })
        .collect();
    let json = serde_json::json!({
        "id": id, "band": band, "file": format!("{band}/tile-{id}.fits"),
        "centre_deg": wcs.crval_deg, "size_px": size, "corners_deg": corners,
        "psf_fwhm_arcsec": 0.9, "depth_5sigma_mag": 25.0
    });
    serde_json::from_value(json).unwrap()
}

#[test]
fn tiles_overlapping_the_detector_are_selected() {
    let mut index = Vec::new();
    for (k, dra) in [-0.1, -0.03, 0.0, 0.03, 0.2].iter().enumerate() {
        let w = TanSipWcs::tan([RA0 + dra, DEC0], [200.5, 200.5], 0.2, 0.0);
        index.push(info(&format!("t{k}"), "r", &w, 400));
        index.push(info(&format!("g{k}"), "g", &w, 400));
    }
    let sci = science_wcs(RA0, DEC0);
    let sel: Vec<&str> = select_tiles(&index, "r", &sci, 600, 600)
        .iter()
        .map(|t| t.id.as_str())
        .collect();
    assert_eq!(sel, vec!["t1", "t2", "t3"]);
}

#[test]
fn simulator_template_has_star_peaks_at_refcat_positions() {
    let night = apflow_sim::Night::new(&apflow_sim::NightSpec {
        visits: 1,
        detectors: 1,
        detector_size: 2048,
        seed: 21,
        template_tile_size: 1500,
        ..apflow_sim::NightSpec::default()
    })
    .unwrap();
    let band = night.visits()[0].band;
    let sim_tiles = night.template_tiles(band);
    let index: Vec<TemplateTileInfo> = sim_tiles.iter().map(common::tile_info).collect();
    let wcs = night.true_wcs(0, DetectorId(0)).unwrap();
    let selected = select_tiles(&index, band.as_str(), &wcs, 2048, 2048);
    assert!(!selected.is_empty());
    let tiles: Vec<TemplateTile> = sim_tiles
        .iter()
        .filter(|t| selected.iter().any(|s| s.id == t.id))
        .map(|t| common::tile_from_sim(&night, t))
        .collect();
    let out = warp_template(
        &tiles.iter().collect::<Vec<_>>(),
        &wcs,
        2048,
        2048,
        &WarpConfig::default(),
    )
    .unwrap();
    assert!(out.coverage > 0.999);
    let t_mean = night.template_epochs().iter().sum::<f64>() / night.template_epochs().len() as f64;
    let mut offsets = Vec::new();
    for s in night.refcat() {
        let f = s.flux_njy[band.index()];
        if !(f > 3.0e4 && f < 1.0e7) {
            continue;
        }
        let yr = (t_mean - s.epoch_mjd) / 365.25;
        let dec = s.dec_deg + s.pm_dec_masyr * yr / 3.6e6;
        let ra = s.ra_deg + s.pm_ra_masyr * yr / 3.6e6 / s.dec_deg.to_radians().cos();
        let Some((x, y)) = wcs.sky_to_pixel(ra, dec) else {
            continue;
        };
        if x < 10.0 || y < 10.0 || x > 2037.0 || y > 2037.0 {
            continue;
        }
        let (cx, cy) = weighted_centroid(&out.masked.image, x, y);
        offsets.push((cx - x).hypot(cy - y));
    }
    offsets.sort_by(f64::total_cmp);
    let n = offsets.len();
    eprintln!(
        "{n} refcat stars: median offset {:.4} px, 90% {:.4}",
        offsets[n / 2],
        offsets[n * 9 / 10]
    );
    assert!(n >= 5, "{n}");
    assert!(offsets[n / 2] < 0.03, "median {}", offsets[n / 2]);
    assert!(
        offsets[n * 9 / 10] < 0.1,
        "90th percentile {}",
        offsets[n * 9 / 10]
    );
}
