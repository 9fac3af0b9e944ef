//! Criterion benchmarks of the APDB per-detector read and write, at 10 % and 100 % of a
//! year of LSST-like history (see `apflow_apdb::bench`). Fixed seeds.
//!
//! `cargo bench -p apflow-apdb --bench apdb`

use apflow_apdb::bench::{BenchConfig, run_sqlite};
use criterion::{Criterion, criterion_group, criterion_main};

fn per_detector(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let mut group = c.benchmark_group("apdb_sqlite_per_detector");
    group.sample_size(10);
    for fraction in [0.1, 1.0] {
        // Each iteration fills a fresh database to `fraction` of a year and times
        // `repeats` reads and writes of the central detector; criterion reports the
        // whole fill, the report struct the per-detector figures.
        group.bench_function(format!("history_{:.0}pct", fraction * 100.0), |b| {
            b.iter_custom(|iters| {
                let mut total = std::time::Duration::ZERO;
                for _ in 0..iters {
                    let dir = tempfile::tempdir().expect("tempdir");
                    let config = BenchConfig {
                        fractions: vec![fraction],
                        repeats: 3,
                        ..BenchConfig::default()
                    };
                    let report = rt.block_on(run_sqlite(&config, dir.path())).expect("bench");
                    let p = &report.points[0];
                    total += std::time::Duration::from_secs_f64((p.read_ms + p.write_ms) / 1e3);
                }
                total
            })
        });
    }
    group.finish();
}

criterion_group!(benches, per_detector);
criterion_main!(benches);
