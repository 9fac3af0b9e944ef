//! ISR of two 4096² snaps of a simulated detector (one core).
//! `cargo bench -p apflow-prompt-proc --bench isr`

#[path = "../tests/common/mod.rs"]
mod common;

use apflow_core::ids::DetectorId;
use apflow_prompt_proc::isr::{IsrConfig, run};
use apflow_sim::{Night, NightSpec};
use criterion::{Criterion, criterion_group, criterion_main};

fn bench(c: &mut Criterion) {
    let night = Night::new(&NightSpec {
        visits: 1,
        detectors: 1,
        detector_size: 4096,
        snaps: 2,
        seed: 3,
        ..NightSpec::default()
    })
    .unwrap();
    let snaps: Vec<_> = (0..2)
        .map(|s| common::raw_from_sim(&night.render_raw(0, DetectorId(0), s).unwrap()))
        .collect();
    let calibs = common::calibs_from_sim(&night, 0);
    let cfg = IsrConfig::default();
    let mut g = c.benchmark_group("isr");
    g.sample_size(10);
    g.bench_function("two_snaps_4096", |b| {
        b.iter(|| run(&snaps, &calibs, &cfg).unwrap())
    });
    g.bench_function("one_snap_4096", |b| {
        b.iter(|| run(&snaps[..1], &calibs, &cfg).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
