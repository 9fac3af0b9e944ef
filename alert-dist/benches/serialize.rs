//! Alert serialisation: the direct encoder (into a reused buffer, and into a fresh one
//! per packet), its parts (the records alone; copying the cutout bytes alone, the
//! memcpy floor), and apache-avro's `Value` path, on realistic alerts (30 × 30 cutouts
//! with variance, mask and PSF; 10 previous DiaSources, 20 forced sources; fixed seed).
//!
//! `cargo bench -p apflow-alert-dist --bench serialize`

use apache_avro::types::Value as A;
use apflow_alert_dist::packet::{AlertEncoder, AlertInput, decode_framed};
use apflow_alert_dist::schema::parsed_writer_schema;
use apflow_alert_dist::synth;
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use std::hint::black_box;

fn inputs() -> Vec<AlertInput> {
    synth::alert_inputs(42, 64)
}

fn serialize(c: &mut Criterion) {
    let alerts = inputs();
    let mut enc = AlertEncoder::new();
    let total: usize = alerts.iter().map(|a| enc.to_framed(a).unwrap().len()).sum();
    let mut g = c.benchmark_group("serialize");
    // Criterion prints bytes/s; alerts/s is 64 / the time per iteration.
    g.throughput(Throughput::Bytes(total as u64));
    g.bench_function("direct_encoder_64_alerts", |b| {
        let mut buf = Vec::with_capacity(256 * 1024);
        b.iter(|| {
            for a in &alerts {
                buf.clear();
                enc.encode_framed(a, &mut buf).unwrap();
                black_box(&buf);
            }
        })
    });
    // Fresh buffer per packet, as `assemble` hands each packet out (the encoder
    // reserves from the last packet's size).
    g.bench_function("direct_encoder_64_alerts_owned", |b| {
        b.iter(|| {
            for a in &alerts {
                black_box(enc.to_framed(a).unwrap());
            }
        })
    });
    // The parts: the records alone (cutouts left out), and the floor of copying the
    // cutout bytes once into a reused buffer (this machine's memcpy bandwidth on the
    // same working set).
    let bare: Vec<AlertInput> = alerts
        .iter()
        .map(|a| AlertInput {
            cutouts: None,
            ..a.clone()
        })
        .collect();
    g.bench_function("records_only_64_alerts", |b| {
        let mut buf = Vec::with_capacity(256 * 1024);
        b.iter(|| {
            for a in &bare {
                buf.clear();
                enc.encode_framed(a, &mut buf).unwrap();
                black_box(&buf);
            }
        })
    });
    g.bench_function("memcpy_cutouts_64_alerts", |b| {
        let mut buf: Vec<u8> = Vec::with_capacity(256 * 1024);
        b.iter(|| {
            for a in &alerts {
                buf.clear();
                if let Some(c) = &a.cutouts {
                    for part in [&c.difference, &c.science, &c.template] {
                        buf.extend_from_slice(part);
                    }
                }
                black_box(&buf);
            }
        })
    });
    // apache-avro from a prepared `Value` (the encoding alone, no tree building).
    let w = parsed_writer_schema().unwrap();
    let values: Vec<A> = alerts
        .iter()
        .map(|a| {
            let framed = enc.to_framed(a).unwrap();
            decode_framed(&framed).unwrap().value
        })
        .collect();
    let writer = apache_avro::writer::datum::GenericDatumWriter::builder(&w)
        .build()
        .unwrap();
    g.bench_function("apache_avro_value_64_alerts", |b| {
        b.iter_batched(
            || values.clone(),
            |vals| {
                for v in vals {
                    black_box(writer.write_value_to_vec(v).unwrap());
                }
            },
            BatchSize::LargeInput,
        )
    });
    g.finish();
}

criterion_group!(benches, serialize);
criterion_main!(benches);
