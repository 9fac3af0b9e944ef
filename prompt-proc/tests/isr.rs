//! ISR on simulated raw exposures (apflow-sim) and on synthetic amplifier data.

mod common;

use apflow_core::ids::DetectorId;
use apflow_prompt_proc::ScienceError;
use apflow_prompt_proc::image::{Image, mask, median_and_iqr_sigma};
use apflow_prompt_proc::io::{MasterCalibs, RawPixels, RawSnap};
use apflow_prompt_proc::isr::{IsrConfig, IsrOutput, run};
use apflow_sim::{Night, NightSpec, Profile};
use common::{calibs_from_sim, raw_from_sim};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

fn night(size: u32, snaps: u8, profile: Profile, seed: u64) -> Night {
    Night::new(&NightSpec {
        visits: 1,
        detectors: 1,
        detector_size: size,
        snaps,
        profile,
        seed,
        ..NightSpec::default()
    })
    .unwrap()
}

fn snaps_of(n: &Night) -> Vec<RawSnap> {
    (0..n.spec().snaps)
        .map(|s| raw_from_sim(&n.render_raw(0, DetectorId(0), s).unwrap()))
        .collect()
}

/// Robust σ of (image − local sky) / √variance over unmasked pixels, with the sky the
/// median of 32×32 blocks.
fn normalised_noise(out: &IsrOutput) -> f32 {
    let img = &out.image;
    let (w, h) = img.dims();
    let b = 32;
    let mut z = Vec::new();
    let mut block = Vec::new();
    for by in 0..h / b {
        for bx in 0..w / b {
            block.clear();
            for y in by * b..(by + 1) * b {
                for x in bx * b..(bx + 1) * b {
                    if img.mask.get(x, y) == 0 {
                        block.push(img.image.get(x, y));
                    }
                }
            }
            let mut tmp = block.clone();
            let Some((sky, _)) = median_and_iqr_sigma(&mut tmp) else {
                continue;
            };
            for y in by * b..(by + 1) * b {
                for x in bx * b..(bx + 1) * b {
                    if img.mask.get(x, y) == 0 {
                        z.push((img.image.get(x, y) - sky) / img.variance.get(x, y).sqrt());
                    }
                }
            }
        }
    }
    median_and_iqr_sigma(&mut z).unwrap().1
}

#[test]
fn two_snaps_blank_sky_noise_and_level_match_the_simulator() {
    let n = night(1024, 2, Profile::Sparse, 11);
    let snaps = snaps_of(&n);
    let calibs = calibs_from_sim(&n, 0);
    let out = run(&snaps, &calibs, &IsrConfig::default()).unwrap();
    assert_eq!(out.exptime_s, 30.0);
    let ratio = normalised_noise(&out);
    assert!((ratio - 1.0).abs() < 0.03, "noise / predicted = {ratio}");
    // Sky level: e⁻ for the whole 30 s visit; one detector centred on the boresight,
    // so the linear gradient averages out.
    let v = &n.visits()[0];
    let expected = v.sky_e_per_s * 30.0;
    let mut vals: Vec<f32> = out
        .image
        .image
        .data()
        .iter()
        .zip(out.image.mask.data())
        .filter(|(_, m)| **m == 0)
        .map(|(v, _)| *v)
        .collect();
    let (med, _) = median_and_iqr_sigma(&mut vals).unwrap();
    let rel = (f64::from(med) - expected) / expected;
    assert!(
        rel.abs() < 0.01,
        "sky {med} e- vs expected {expected} ({rel:+.4})"
    );
    eprintln!(
        "2 snaps: noise ratio {ratio:.4}, sky {med:.1} vs {expected:.1} e- ({rel:+.4}), CR px {}, SAT {}, BAD {}",
        out.n_cr_pixels, out.n_saturated, out.n_bad
    );
}

#[test]
fn single_snap_noise_and_level() {
    let n = night(1024, 1, Profile::Sparse, 12);
    let snaps = snaps_of(&n);
    let out = run(&snaps, &calibs_from_sim(&n, 0), &IsrConfig::default()).unwrap();
    let ratio = normalised_noise(&out);
    assert!((ratio - 1.0).abs() < 0.03, "noise / predicted = {ratio}");
    let expected = n.visits()[0].sky_e_per_s * 30.0;
    let mut vals: Vec<f32> = out.image.image.data().to_vec();
    let (med, _) = median_and_iqr_sigma(&mut vals).unwrap();
    let rel = (f64::from(med) - expected) / expected;
    assert!(rel.abs() < 0.01, "sky {med} vs {expected}");
    eprintln!(
        "1 snap: noise ratio {ratio:.4}, sky rel {rel:+.4}, CR px {}",
        out.n_cr_pixels
    );
}

#[test]
fn hot_pixels_and_dead_columns_are_bad() {
    let n = night(1024, 2, Profile::Sparse, 13);
    let out = run(
        &snaps_of(&n),
        &calibs_from_sim(&n, 0),
        &IsrConfig::default(),
    )
    .unwrap();
    let det = &n.detectors()[0];
    assert!(!det.hot_pixels.is_empty());
    for &(x, y, _) in &det.hot_pixels {
        let m = out.image.mask.get(x as usize, y as usize);
        assert!(
            m & mask::BAD != 0 && m & mask::INTRP != 0,
            "hot pixel {x},{y}"
        );
    }
    for c in &det.bad_columns {
        for y in (c.y0..=c.y1).step_by(7) {
            let m = out.image.mask.get(c.x as usize, y as usize);
            assert!(m & mask::BAD != 0, "bad column {c:?} row {y}");
        }
    }
    // Interpolated dead-column pixels look like their neighbours, not like 3% pixels.
    if let Some(c) = det
        .bad_columns
        .iter()
        .find(|c| !c.hot && c.x > 2 && c.x < 1020)
    {
        let y = (c.y0 + c.y1) as usize / 2;
        let v = out.image.image.get(c.x as usize, y);
        let nb = 0.5
            * (out.image.image.get(c.x as usize - 2, y) + out.image.image.get(c.x as usize + 2, y));
        assert!((v - nb).abs() < 0.2 * nb.abs() + 100.0, "{v} vs {nb}");
    }
}

/// Detector pixel → (amp, raw index) for the simulator's layout.
fn raw_index(snap: &RawSnap, x: usize, y: usize) -> (usize, usize) {
    for (k, a) in snap.amps.iter().enumerate() {
        let d = &a.detsec;
        if x >= d.x_min()
            && x < d.x_min() + d.width()
            && y >= d.y_min()
            && y < d.y_min() + d.height()
        {
            let i = if d.flip_x() {
                d.x1 - 1 - x
            } else {
                x - (d.x1 - 1)
            };
            let j = if d.flip_y() {
                d.y1 - 1 - y
            } else {
                y - (d.y1 - 1)
            };
            let r = a.datasec.y_min() + j;
            return (k, r * a.width + a.datasec.x_min() + i);
        }
    }
    panic!("pixel outside the detector");
}

fn add_electrons(snap: &mut RawSnap, x: usize, y: usize, e: f64) {
    let (k, idx) = raw_index(snap, x, y);
    let g = snap.amps[k].gain;
    match &mut snap.amps[k].data {
        RawPixels::I32(v) => v[idx] += (e / g).round() as i32,
        RawPixels::F32(v) => v[idx] += (e / g) as f32,
    }
}

/// Synthetic tracks: (x0, y0, dx, dy, length) with 3000 e⁻ per pixel.
fn tracks() -> Vec<(usize, usize, isize, isize, usize)> {
    vec![
        (100, 100, 1, 0, 12),
        (300, 700, 0, 1, 8),
        (600, 200, 1, 1, 10),
        (800, 900, 1, -1, 6),
        (520, 520, 0, 0, 1),
        (900, 300, 1, 0, 3),
    ]
}

fn track_pixels() -> Vec<(usize, usize)> {
    let mut px = Vec::new();
    for (x0, y0, dx, dy, len) in tracks() {
        for k in 0..len as isize {
            px.push((
                (x0 as isize + k * dx) as usize,
                (y0 as isize + k * dy) as usize,
            ));
        }
    }
    px
}

#[test]
fn injected_cosmic_rays_are_flagged_and_replaced_from_the_other_snap() {
    let n = night(1024, 2, Profile::Sparse, 14);
    let calibs = calibs_from_sim(&n, 0);
    let clean = snaps_of(&n);
    let cfg = IsrConfig::default();
    let base = run(&clean, &calibs, &cfg).unwrap();
    let frac = base.n_cr_pixels as f64 / (1024.0 * 1024.0);
    assert!(frac < 2e-3, "{} CR pixels on a pair", base.n_cr_pixels);
    for target in [0usize, 1] {
        let mut snaps = clean.clone();
        for (x, y) in track_pixels() {
            add_electrons(&mut snaps[target], x, y, 3000.0);
        }
        let out = run(&snaps, &calibs, &cfg).unwrap();
        for (x, y) in track_pixels() {
            let m = out.image.mask.get(x, y);
            if base.image.mask.get(x, y) & (mask::BAD | mask::SAT) != 0 {
                continue;
            }
            assert!(
                m & mask::CR != 0,
                "snap {target} hit at {x},{y} not flagged"
            );
            // Replaced by the other snap ×2: within 6σ of the clean visit value.
            let (a, b) = (out.image.image.get(x, y), base.image.image.get(x, y));
            let s = out.image.variance.get(x, y).sqrt();
            assert!((a - b).abs() < 6.0 * s, "{x},{y}: {a} vs clean {b} (σ {s})");
        }
        let extra = out.n_cr_pixels as i64 - base.n_cr_pixels as i64;
        assert!(extra > 0 && extra < 400, "{extra} extra CR pixels");
    }
}

#[test]
fn injected_cosmic_rays_single_snap_are_flagged_and_interpolated() {
    let n = night(1024, 1, Profile::Sparse, 15);
    let calibs = calibs_from_sim(&n, 0);
    let mut snaps = snaps_of(&n);
    let base = run(&snaps, &calibs, &IsrConfig::default()).unwrap();
    assert!((base.n_cr_pixels as f64) < 2e-3 * 1024.0 * 1024.0);
    for (x, y) in track_pixels() {
        add_electrons(&mut snaps[0], x, y, 3000.0);
    }
    let out = run(&snaps, &calibs, &IsrConfig::default()).unwrap();
    for (x, y) in track_pixels() {
        let m = out.image.mask.get(x, y);
        assert!(
            m & mask::CR != 0 && m & mask::INTRP != 0,
            "{x},{y} mask {m:#x}"
        );
        let (a, b) = (out.image.image.get(x, y), base.image.image.get(x, y));
        assert!((a - b).abs() < 300.0, "{x},{y}: {a} vs clean {b}");
    }
}

// ---------------------------------------------------------------- synthetic data

const SIZE: usize = 512;
const GAIN: f64 = 1.6;
const RN: f64 = 6.0;
const BIAS: f64 = 20_000.0;

/// A synthetic snap in the camera's amplifier layout from a charge image (e⁻).
fn synthetic_snap(charge: &[f64], snap: u8, seed: u64) -> RawSnap {
    let n = night(SIZE as u32, 2, Profile::Sparse, 1);
    let mut raw = raw_from_sim(&n.render_raw(0, DetectorId(0), snap).unwrap());
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let z = Normal::new(0.0, 1.0).unwrap();
    for a in &mut raw.amps {
        a.gain = GAIN;
        a.read_noise_e = RN;
        let mut data = vec![0i32; a.width * a.height];
        for (k, v) in data.iter_mut().enumerate() {
            *v = (BIAS + RN / GAIN * z.sample(&mut r)).round() as i32;
            let _ = k;
        }
        a.data = RawPixels::I32(data);
    }
    for y in 0..SIZE {
        for x in 0..SIZE {
            let m = charge[y * SIZE + x];
            let e = (m + (m + RN * RN).sqrt() * z.sample(&mut r)).min(100_000.0);
            let (k, idx) = raw_index(&raw, x, y);
            if let RawPixels::I32(v) = &mut raw.amps[k].data {
                v[idx] = (BIAS + e / GAIN).round() as i32;
            }
        }
    }
    raw.meta.seeing_arcsec = Some(0.7);
    raw
}

fn zero_calibs() -> MasterCalibs {
    MasterCalibs::from_parts(
        Image::new(SIZE, SIZE),
        Image::new(SIZE, SIZE),
        Image::filled(SIZE, SIZE, 1.0),
    )
    .unwrap()
}

/// Sky 400 e⁻ per snap plus stars (FWHM 3.5 px) from faint to saturated.
fn star_field() -> (Vec<f64>, Vec<(f64, f64)>) {
    let mut c = vec![400.0; SIZE * SIZE];
    let sigma = 3.5 / 2.3548;
    let mut stars = Vec::new();
    for k in 0..60 {
        let x = 20.0 + (k % 8) as f64 * 60.0 + 0.37 * (k as f64 % 3.0);
        let y = 20.0 + (k / 8) as f64 * 60.0 + 0.21 * (k as f64 % 5.0);
        let flux = 2000.0 * 1.3f64.powi(k);
        stars.push((x, y));
        for yy in (y as usize).saturating_sub(15)..(y as usize + 16).min(SIZE) {
            for xx in (x as usize).saturating_sub(15)..(x as usize + 16).min(SIZE) {
                let r2 = (xx as f64 - x).powi(2) + (yy as f64 - y).powi(2);
                c[yy * SIZE + xx] += flux / (std::f64::consts::TAU * sigma * sigma)
                    * (-0.5 * r2 / (sigma * sigma)).exp();
            }
        }
    }
    (c, stars)
}

#[test]
fn clean_synthetic_pair_has_no_cosmic_rays_and_stars_survive() {
    let (charge, stars) = star_field();
    let snaps = vec![synthetic_snap(&charge, 0, 1), synthetic_snap(&charge, 1, 2)];
    let out = run(&snaps, &zero_calibs(), &IsrConfig::default()).unwrap();
    // Pure noise gives a 5σ seed once in ~10⁶ pixels (each grown to 3×3).
    assert!(
        out.n_cr_pixels <= 18,
        "{} CR pixels on a clean pair",
        out.n_cr_pixels
    );
    assert!(out.n_saturated > 0, "bright stars saturate");
    // Single snap: no star flagged as a cosmic ray.
    let one = run(&snaps[..1], &zero_calibs(), &IsrConfig::default()).unwrap();
    for &(x, y) in &stars {
        let m = one.image.mask.get(x.round() as usize, y.round() as usize);
        assert!(m & mask::CR == 0, "star at {x},{y} flagged CR");
    }
    assert!(one.n_cr_pixels < 20, "{} CR pixels", one.n_cr_pixels);
    // Sky level and noise: 800 e- for the pair.
    let mut v: Vec<f32> = (0..SIZE).map(|x| out.image.image.get(x, 50)).collect();
    let (med, _) = median_and_iqr_sigma(&mut v).unwrap();
    assert!((med - 800.0).abs() < 5.0, "{med}");
    // A crowded 512² field (star wings in every sky block): looser than the sim tests.
    let ratio = normalised_noise(&out);
    assert!((ratio - 1.0).abs() < 0.05, "{ratio}");
}

#[test]
fn failure_paths() {
    let (charge, _) = star_field();
    let snap = synthetic_snap(&charge, 0, 3);
    let cfg = IsrConfig::default();
    // NaN-filled float raw data.
    let mut nan = snap.clone();
    for a in &mut nan.amps {
        a.data = RawPixels::F32(vec![f32::NAN; a.width * a.height]);
    }
    let e = run(&[nan], &zero_calibs(), &cfg).unwrap_err();
    assert!(
        matches!(e, ScienceError::NanImage { fraction } if fraction > 99.0),
        "{e}"
    );
    // Fully saturated.
    let mut sat = snap.clone();
    for a in &mut sat.amps {
        a.data = RawPixels::I32(vec![262_143; a.width * a.height]);
    }
    let e = run(&[sat], &zero_calibs(), &cfg).unwrap_err();
    assert!(
        matches!(e, ScienceError::Saturated { fraction } if fraction > 99.0),
        "{e}"
    );
    // Inconsistent snaps.
    let mut other = snap.clone();
    other.meta.detector += 1;
    other.meta.snap = 1;
    let e = run(&[snap.clone(), other], &zero_calibs(), &cfg).unwrap_err();
    assert!(matches!(e, ScienceError::BadInput(_)), "{e}");
    let e = run(&[snap.clone(), snap.clone()], &zero_calibs(), &cfg).unwrap_err();
    assert!(matches!(e, ScienceError::BadInput(_)), "{e}");
    let e = run(&[], &zero_calibs(), &cfg).unwrap_err();
    assert!(matches!(e, ScienceError::BadInput(_)), "{e}");
    // Calibrations of another size.
    let small =
        MasterCalibs::from_parts(Image::new(8, 8), Image::new(8, 8), Image::filled(8, 8, 1.0))
            .unwrap();
    let e = run(std::slice::from_ref(&snap), &small, &cfg).unwrap_err();
    assert!(matches!(e, ScienceError::BadInput(_)), "{e}");
    // A truncated amplifier.
    let mut cut = snap;
    cut.amps[3].data = RawPixels::I32(vec![0; 10]);
    let e = run(&[cut], &zero_calibs(), &cfg).unwrap_err();
    assert!(
        matches!(e, ScienceError::BadInput(ref m) if m.contains("AMP03")),
        "{e}"
    );
}
