//! Serialisation on one thread, in parts, timed by the thread's CPU time (so the
//! figures hold on a shared, loaded machine): the full encoder, the records alone
//! (cutouts left out), and copying the cutout bytes alone (the memcpy floor), over the
//! same fixed-seed alerts as `apflow bench alerts`.
//!
//! `taskset -c 1 cargo run --release -p apflow-alert-dist --example serialize_parts -- [N] [DISTINCT]`

use apflow_alert_dist::bench::{serialise, thread_cpu_seconds};
use apflow_alert_dist::packet::AlertInput;
use apflow_alert_dist::synth;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().map_or(Ok(40_000), |a| a.parse())?;
    let distinct: usize = args.next().map_or(Ok(256), |a| a.parse())?;
    let inputs = synth::alert_inputs(42, distinct.max(1));
    let full = serialise(&inputs, n, |_| {})?;
    let bare: Vec<AlertInput> = inputs
        .iter()
        .map(|a| AlertInput {
            cutouts: None,
            ..a.clone()
        })
        .collect();
    let records = serialise(&bare, n, |_| {})?;
    // The floor: the cutout bytes copied once each into a reused buffer.
    let mut buf: Vec<u8> = Vec::with_capacity(512 * 1024);
    let mut copied = 0usize;
    let (c0, t0) = (thread_cpu_seconds(), std::time::Instant::now());
    for a in inputs.iter().cycle().take(n) {
        buf.clear();
        if let Some(c) = &a.cutouts {
            for part in [&c.difference, &c.science, &c.template] {
                buf.extend_from_slice(part);
            }
        }
        copied += std::hint::black_box(&buf).len();
    }
    let wall = t0.elapsed().as_secs_f64();
    let cpu = c0.zip(thread_cpu_seconds()).map(|(a, b)| b - a);
    println!(
        "{n} alerts cycled from {} distinct, {:.1} KB framed each",
        inputs.len(),
        full.bytes as f64 / n as f64 / 1e3
    );
    println!("part             wall s    cpu s   alerts/s (cpu)  MB/s (cpu)");
    for (name, f) in [("encode, full", full), ("records only", records)] {
        let cpu = f.cpu_seconds.unwrap_or(f64::NAN);
        println!(
            "{name:<15} {:>7.3} {:>8.3} {:>14.0} {:>11.0}",
            f.wall_seconds,
            cpu,
            f.alerts_per_cpu_s().unwrap_or(f64::NAN),
            f.mb_per_s()
        );
    }
    let cpu = cpu.unwrap_or(f64::NAN);
    println!(
        "{:<15} {wall:>7.3} {cpu:>8.3} {:>14.0} {:>11.0}",
        "memcpy cutouts",
        n as f64 / cpu,
        copied as f64 / 1e6 / cpu
    );
    Ok(())
}
