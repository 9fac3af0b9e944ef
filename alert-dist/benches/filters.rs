//! Filter evaluation: the 100 filters of `apflow bench filters` over the decoded alerts
//! of one synthetic visit (fixed seed), compiled evaluator vs the reference
//! interpreter, and decoding (direct reader vs apache-avro) as separate groups, on a
//! 4,000-alert visit (`apflow bench filters` runs Rubin's 40,000).

use apflow_alert_dist::filter::{AlertView, bench};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

fn filters(c: &mut Criterion) {
    let w = bench::workload(42, 4_000, 100, 30).expect("workload");
    let views: Vec<AlertView> = w
        .framed
        .iter()
        .map(|b| AlertView::decode_framed(b).expect("decodes"))
        .collect();

    let mut g = c.benchmark_group("filter_eval");
    g.throughput(Throughput::Elements((views.len() * w.set.len()) as u64));
    g.sample_size(10);
    g.bench_function("compiled_100_filters", |b| {
        b.iter(|| bench::evaluate(&w.set, &views))
    });
    let sub = &views[..views.len().min(500)];
    g.throughput(Throughput::Elements((sub.len() * w.set.len()) as u64));
    g.bench_function("interpreted_100_filters_500_alerts", |b| {
        b.iter(|| bench::interpret(&w.set, sub))
    });
    g.finish();

    let mut g = c.benchmark_group("filter_decode");
    let sub = &w.framed[..w.framed.len().min(500)];
    g.throughput(Throughput::Elements(sub.len() as u64));
    g.sample_size(10);
    g.bench_function("direct", |b| {
        b.iter(|| {
            for m in sub {
                std::hint::black_box(AlertView::decode_framed(m).expect("decodes"));
            }
        })
    });
    g.bench_function("apache_avro", |b| {
        b.iter(|| {
            for m in sub {
                let d = apflow_alert_dist::packet::decode_framed(m).expect("decodes");
                std::hint::black_box(AlertView::from_avro(&d.value).expect("view"));
            }
        })
    });
    g.finish();
}

criterion_group!(benches, filters);
criterion_main!(benches);
