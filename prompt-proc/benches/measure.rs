//! Detection, measurement, reliability and cutouts on a 4096² difference image with
//! ~100 sources (point sources of both signs, dipoles, a trail, cosmic-ray spikes).
//!
//! `cargo bench -p apflow-prompt-proc --bench measure`

use apflow_core::wcs::TanSipWcs;
use apflow_prompt_proc::MaskedImage;
use apflow_prompt_proc::cutout::{CutoutConfig, cutout_size_for, extract};
use apflow_prompt_proc::detect::{DetectConfig, detect};
use apflow_prompt_proc::measure::{MeasureConfig, measure};
use apflow_prompt_proc::reliability::{LogisticModel, ReliabilityFeatures, ReliabilityModel};
use apflow_prompt_proc::synth::{DoubleGaussianPsf, demo_scene};
use criterion::{Criterion, criterion_group, criterion_main};
use std::hint::black_box;

struct Scene {
    diff: MaskedImage,
    sci: MaskedImage,
    tmpl: MaskedImage,
    psf: DoubleGaussianPsf,
    wcs: TanSipWcs,
}

fn bench(c: &mut Criterion) {
    let d = demo_scene(4096);
    let s = Scene {
        diff: d.diff,
        sci: d.science,
        tmpl: d.template,
        psf: d.psf,
        wcs: d.wcs,
    };
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
    let model = LogisticModel::default();
    g.bench_function("score", |b| {
        b.iter(|| {
            ms.iter()
                .map(|m| model.score(&ReliabilityFeatures::from_measurement(m, &s.diff)))
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
                let r = model.score(&ReliabilityFeatures::from_measurement(m, &s.diff));
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
