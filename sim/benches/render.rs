//! Rendering one detector of one visit: raw image (all 16 amplifiers, in memory) and
//! its truth table, fixed seed. Target: a 4096 × 4096 detector in ≤ 2 s on one core
//! (release build). Run with `cargo bench -p apflow-sim --bench render`.

use std::hint::black_box;

use apflow_core::ids::DetectorId;
use apflow_sim::{Night, NightSpec, Profile};
use criterion::{Criterion, criterion_group, criterion_main};

fn night(size: u32, profile: Profile) -> Night {
    Night::new(&NightSpec {
        visits: 1,
        detectors: 1,
        detector_size: size,
        seed: 42,
        profile,
        ..NightSpec::default()
    })
    .expect("valid spec")
}

fn render(c: &mut Criterion) {
    let mut group = c.benchmark_group("render_detector");
    group.sample_size(10);
    for (name, size, profile) in [
        ("raw_and_truth_4096_typical", 4096, Profile::Typical),
        ("raw_and_truth_4096_crowded", 4096, Profile::Crowded),
        ("raw_and_truth_2048_typical", 2048, Profile::Typical),
    ] {
        let n = night(size, profile);
        group.bench_function(name, |b| {
            b.iter(|| {
                let raw = n.render_raw(0, DetectorId(0), 0).expect("render");
                let truth = n.truth(0, DetectorId(0)).expect("truth");
                black_box((raw, truth))
            })
        });
    }
    group.finish();
}

criterion_group!(benches, render);
criterion_main!(benches);
