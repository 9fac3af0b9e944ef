//! Detection, measurement, reliability and cutouts on a 4096² difference image with
//! ~100 sources (point sources of both signs, dipoles, a trail, cosmic-ray spikes).
//!
//! `cargo bench -p apflow-prompt-proc --bench measure`

use apflow_core::wcs::TanSipWcs;
use apflow_prompt_proc::MaskedImage;
use apflow_prompt_proc::cutout::{CutoutConfig, cutout_size_for, extract};
use apflow_prompt_proc::detect::{DetectConfig, detect};
use apflow_prompt_proc::measure::{MeasureConfig, measure};
use apflow_prompt_proc::psf::Psf;
use apflow_prompt_proc::reliability::{ReliabilityFeatures, score};
use apflow_prompt_proc::synth::{DoubleGaussianPsf, Rng, add_psf, add_trail, noise_image};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

struct Scene {
    diff: MaskedImage,
    sci: MaskedImage,
    tmpl: MaskedImage,
    psf: DoubleGaussianPsf,
    wcs: TanSipWcs,
}

fn scene() -> Scene {
    let n = 4096;
    let psf = DoubleGaussianPsf {
        sigma: 1.7,
        halo_ratio: 2.0,
        halo_frac: 0.1,
        gx: 0.1,
        gy: -0.05,
        width: n as f64,
        height: n as f64,
    };
    let sn = 30.0f32;
    let mut diff = noise_image(n, n, sn, 1);
    let mut sci = noise_image(n, n, 25.0, 2);
    let mut tmpl = noise_image(n, n, 15.0, 3);
    let mut rng = Rng::new(4);
    let unit = {
        let k = psf.kernel(2048.0, 2048.0, 31);
        sn as f64
            / k.data()
                .iter()
                .map(|&v| (v as f64).powi(2))
                .sum::<f64>()
                .sqrt()
    };
    let mut pos = || {
        (
            100.0 + rng.uniform() * 3896.0,
            100.0 + rng.uniform() * 3896.0,
        )
    };
    let mut r2 = Rng::new(5);
    for i in 0..90 {
        let (x, y) = pos();
        let snr = 6.0 + 60.0 * r2.uniform();
        let f = unit * snr * if i % 5 == 0 { -1.0 } else { 1.0 };
        add_psf(&mut diff.image, &psf, x, y, f, 15);
        add_psf(&mut sci.image, &psf, x, y, f.max(0.0), 15);
    }
    for _ in 0..4 {
        let (x, y) = pos();
        let f = unit * 500.0;
        add_psf(&mut diff.image, &psf, x + 0.3, y, f, 15);
        add_psf(&mut diff.image, &psf, x - 0.3, y, -f, 15);
        add_psf(&mut sci.image, &psf, x + 0.3, y, f, 15);
        add_psf(&mut tmpl.image, &psf, x - 0.3, y, f, 15);
    }
    for _ in 0..2 {
        let (x, y) = pos();
        add_trail(&mut diff.image, &psf, x, y, unit * 150.0, 25.0, 40.0);
    }
    for _ in 0..4 {
        let (x, y) = pos();
        *diff.image.at_mut(x as usize, y as usize) += 20.0 * sn;
    }
    let wcs =
        TanSipWcs::tan([150.0, 2.0], [2048.5, 2048.5], 0.2, 10.0).with_radial_distortion(1e-10);
    Scene {
        diff,
        sci,
        tmpl,
        psf,
        wcs,
    }
}

fn bench(c: &mut Criterion) {
    let s = scene();
    let (dcfg, mcfg, ccfg) = (
        DetectConfig::default(),
        MeasureConfig::default(),
        CutoutConfig::default(),
    );
    let det = detect(&s.diff, &s.psf, &dcfg);
    let ms = measure(&s.diff, &s.sci, &s.tmpl, &s.psf, &s.wcs, &det, &mcfg);
    eprintln!(
        "{} footprints (+{} −{}, {} dipoles), {} sources, filtered σ {:.3}",
        det.footprints.len(),
        det.positive,
        det.negative,
        det.dipoles,
        ms.len(),
        det.filtered_sigma
    );
    let mut g = c.benchmark_group("measure");
    g.sample_size(10);
    g.bench_function("detect_4096", |b| {
        b.iter(|| black_box(detect(&s.diff, &s.psf, &dcfg)))
    });
    g.bench_function("measure_4096", |b| {
        b.iter(|| {
            black_box(measure(
                &s.diff, &s.sci, &s.tmpl, &s.psf, &s.wcs, &det, &mcfg,
            ))
        })
    });
    g.bench_function("score", |b| {
        b.iter(|| {
            ms.iter()
                .map(|m| score(&ReliabilityFeatures::from_measurement(m, &s.diff)))
                .sum::<f32>()
        })
    });
    g.bench_function("cutouts", |b| {
        b.iter(|| {
            ms.iter()
                .map(|m| {
                    let size = cutout_size_for(m, &ccfg);
                    extract(
                        &s.diff, &s.sci, &s.tmpl, &s.wcs, &s.psf, &s.psf, &s.psf, m.x, m.y, size,
                    )
                    .map(|c| c.difference.masked.width())
                    .unwrap_or(0)
                })
                .sum::<usize>()
        })
    });
    g.bench_function("all_4096", |b| {
        b.iter(|| {
            let det = detect(&s.diff, &s.psf, &dcfg);
            let ms = measure(&s.diff, &s.sci, &s.tmpl, &s.psf, &s.wcs, &det, &mcfg);
            let mut n = 0usize;
            for m in &ms {
                let r = score(&ReliabilityFeatures::from_measurement(m, &s.diff));
                let c = extract(
                    &s.diff,
                    &s.sci,
                    &s.tmpl,
                    &s.wcs,
                    &s.psf,
                    &s.psf,
                    &s.psf,
                    m.x,
                    m.y,
                    cutout_size_for(m, &ccfg),
                );
                n += (r > 0.5) as usize + c.is_ok() as usize;
            }
            black_box(n)
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
