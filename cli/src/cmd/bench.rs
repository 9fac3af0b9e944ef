//! `apflow bench …`: throughput measurements run from the command line.

use std::time::{Duration, Instant};

use apflow_core::bus::{Bus, Record, TopicSpec};
use clap::Subcommand;
use indicatif::{ProgressBar, ProgressStyle};

use crate::config::AppConfig;

/// Benchmarks.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Publish and consume N messages of a given size through the configured bus
    /// (`memory://` by default; set APFLOW__BUS__URL=kafka://… for a broker).
    Bus {
        /// Messages to send.
        #[arg(long, default_value_t = 20_000)]
        messages: usize,
        /// Bytes per message (an alert with cutouts is ~80 KB).
        #[arg(long, default_value_t = 81_920)]
        size: usize,
        /// Publishes in flight at once.
        #[arg(long, default_value_t = 1_000)]
        window: usize,
    },
    /// The produce part of the alert benchmark: pre-serialised ~80 KB alerts to the
    /// Kafka broker with each compression setting (feature `kafka`).
    AlertsProduce(crate::cmd::bench_alerts::AlertsProduceArgs),
    /// Fill an embedded APDB with a year of LSST-like history and time per-detector
    /// reads and writes at 10 %–100 % of it.
    Apdb {
        /// Visits per field per year.
        #[arg(long)]
        visits_per_year: Option<usize>,
        /// Timed visits per history fraction.
        #[arg(long)]
        repeats: Option<usize>,
        /// Directory for the database (a temporary one by default).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Alert serialisation: encode N realistic alerts (30 × 30 cutouts with variance,
    /// mask and PSF; 10 previous DiaSources and 20 forced sources; fixed seed) to
    /// Confluent-framed Avro on one thread and report alerts/s and MB/s.
    Alerts {
        /// Alerts to serialise (Rubin's peak visit: 40,000).
        #[arg(long, default_value_t = 40_000)]
        alerts: usize,
        /// Distinct synthetic inputs cycled through (kept in memory).
        #[arg(long, default_value_t = 256)]
        distinct: usize,
    },
    /// Filters: N realistic filters (the deploy/filters set plus fixed-seed variants)
    /// over the decoded alerts of one synthetic visit on one thread; decoding (direct
    /// and apache-avro) and compilation reported separately.
    Filters {
        /// Alerts in the visit (Rubin's peak: 40,000).
        #[arg(long, default_value_t = 40_000)]
        alerts: usize,
        /// Filters (the figure: 100).
        #[arg(long, default_value_t = 100)]
        filters: usize,
        /// Alerts decoded with apache-avro for the reference decode rate.
        #[arg(long, default_value_t = 2_000)]
        avro_sample: usize,
        /// Timed evaluation passes (the median is reported).
        #[arg(long, default_value_t = 5)]
        repeats: usize,
    },
    /// Run the science core (ISR → measured, scored DiaSources) on simulated detectors
    /// of the typical profile and report per-stage times (median over repeats, one
    /// thread) and the throughput with several detectors at once.
    Detector {
        /// Detector side, pixels (4096 for an LSST-like detector).
        #[arg(long, default_value_t = 4096)]
        size: u32,
        /// Timed runs after one warm-up run.
        #[arg(long, default_value_t = 5)]
        repeats: usize,
        /// Detectors processed at once for the throughput figure (0: number of CPUs).
        #[arg(long, default_value_t = 0)]
        parallel: usize,
        /// Directory for the simulated inputs (a temporary one by default).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
}

fn bar(n: usize, what: &str) -> ProgressBar {
    let pb = ProgressBar::new(n as u64);
    pb.set_style(
        ProgressStyle::with_template(&format!(
            "{what:>9} [{{bar:40}}] {{pos}}/{{len}} {{per_sec}} eta {{eta}}"
        ))
        .expect("valid template"),
    );
    pb
}

/// Runs a benchmark.
pub async fn run(cmd: BenchCommand, config: &AppConfig) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Bus {
            messages,
            size,
            window,
        } => bench_bus(config, messages, size, window.max(1)).await,
        BenchCommand::AlertsProduce(a) => crate::cmd::bench_alerts::run(a, config).await,
        BenchCommand::Apdb {
            visits_per_year,
            repeats,
            dir,
        } => {
            let mut c = apflow_apdb::bench::BenchConfig::default();
            if let Some(v) = visits_per_year {
                c.visits_per_year = v;
            }
            if let Some(r) = repeats {
                c.repeats = r;
            }
            // A given directory is kept; otherwise a temporary one is removed afterwards.
            let tmp = tempfile::tempdir()?;
            let dir = dir.unwrap_or_else(|| tmp.path().to_owned());
            std::fs::create_dir_all(&dir)?;
            println!("{}", apflow_apdb::bench::run_sqlite(&c, &dir).await?);
            Ok(())
        }
        BenchCommand::Alerts { alerts, distinct } => {
            tokio::task::spawn_blocking(move || bench_alerts_serialize(alerts, distinct.max(1)))
                .await?
        }
        BenchCommand::Filters {
            alerts,
            filters,
            avro_sample,
            repeats,
        } => {
            tokio::task::spawn_blocking(move || {
                bench_filters(alerts, filters, avro_sample, repeats.max(1))
            })
            .await?
        }
        BenchCommand::Detector {
            size,
            repeats,
            parallel,
            dir,
        } => {
            let tmp = tempfile::tempdir()?;
            let dir = dir.unwrap_or_else(|| tmp.path().to_owned());
            let science = config.science.clone();
            tokio::task::spawn_blocking(move || {
                bench_detector(science, size, repeats.max(1), parallel, &dir)
            })
            .await?
        }
    }
}

/// `apflow bench filters`: see [`BenchCommand::Filters`].
fn bench_filters(
    n: usize,
    n_filters: usize,
    avro_sample: usize,
    repeats: usize,
) -> anyhow::Result<()> {
    use apflow_alert_dist::filter::{AlertView, bench};
    let t = Instant::now();
    let w = bench::workload(42, n, n_filters, 30).map_err(anyhow::Error::msg)?;
    let bytes: usize = w.framed.iter().map(Vec::len).sum();
    println!(
        "workload: {} alerts ({:.1} MB framed, 30x30 cutouts, 10 previous DiaSources), {} filters, built in {:.1} s",
        w.framed.len(),
        bytes as f64 / 1e6,
        w.set.len(),
        t.elapsed().as_secs_f64()
    );
    let costs: Vec<u64> = w.set.filters().iter().map(|f| f.condition.cost()).collect();
    println!(
        "filter costs: min {}, max {}, limit {}",
        costs.iter().min().unwrap_or(&0),
        costs.iter().max().unwrap_or(&0),
        apflow_alert_dist::filter::DEFAULT_MAX_COST
    );

    let t = Instant::now();
    let views = w
        .framed
        .iter()
        .map(|b| AlertView::decode_framed(b))
        .collect::<Result<Vec<_>, _>>()?;
    let direct = t.elapsed().as_secs_f64();
    println!(
        "decode (direct reader):   {:>8.3} s  {:>10.0} alerts/s  {:>7.1} MB/s",
        direct,
        views.len() as f64 / direct,
        bytes as f64 / 1e6 / direct
    );
    let sample = &w.framed[..avro_sample.min(w.framed.len())];
    if !sample.is_empty() {
        let t = Instant::now();
        for b in sample {
            let d = apflow_alert_dist::packet::decode_framed(b)?;
            std::hint::black_box(AlertView::from_avro(&d.value)?);
        }
        let s = t.elapsed().as_secs_f64();
        println!(
            "decode (apache-avro):     {:>8.3} s  {:>10.0} alerts/s  (on {} alerts)",
            s,
            sample.len() as f64 / s,
            sample.len()
        );
    }

    let mut times = Vec::with_capacity(repeats);
    let mut counts = Vec::new();
    for _ in 0..repeats {
        let t = Instant::now();
        counts = bench::evaluate(&w.set, std::hint::black_box(&views));
        times.push(t.elapsed().as_secs_f64());
    }
    times.sort_by(f64::total_cmp);
    let med = super::quantile(&times, 0.5);
    let evals = (views.len() * w.set.len()) as f64;
    println!(
        "evaluate (compiled):      {:>8.3} s  for {} filters x {} alerts = {:.1} M evaluations, {:.0} ns each (median of {repeats}; goal <= 1 s)",
        med,
        w.set.len(),
        views.len(),
        evals / 1e6,
        med / evals * 1e9
    );
    let t = Instant::now();
    let sub = &views[..views.len().min(2_000)];
    bench::interpret(&w.set, sub);
    let s = t.elapsed().as_secs_f64();
    println!(
        "evaluate (interpreter):   {:>8.3} s  for {} alerts, {:.0} ns each (reference, not the fast path)",
        s,
        sub.len(),
        s / (sub.len() * w.set.len()) as f64 * 1e9
    );
    let mut sorted: Vec<f64> = counts.iter().map(|&c| c as f64).collect();
    sorted.sort_by(f64::total_cmp);
    let q = |p: f64| super::quantile(&sorted, p);
    println!(
        "matches per filter: min {:.0}, median {:.0}, max {:.0} of {} alerts; deploy set: {}",
        q(0.0),
        q(0.5),
        q(1.0),
        views.len(),
        w.set
            .filters()
            .iter()
            .zip(&counts)
            .take(bench::DEPLOY_FILTERS.len())
            .map(|(f, c)| format!("{} {c}", f.name))
            .collect::<Vec<_>>()
            .join(", ")
    );
    Ok(())
}

/// Serialisation alone: `n` alerts through one [`AlertEncoder`] on this thread, each
/// into a reused buffer (the bytes a producer would hand to Kafka).
///
/// [`AlertEncoder`]: apflow_alert_dist::packet::AlertEncoder
fn bench_alerts_serialize(n: usize, distinct: usize) -> anyhow::Result<()> {
    use apflow_alert_dist::packet::AlertEncoder;
    let inputs = apflow_alert_dist::synth::alert_inputs(42, distinct);
    anyhow::ensure!(!inputs.is_empty(), "no synthetic alerts");
    let mut enc = AlertEncoder::new();
    let mut buf = Vec::with_capacity(512 * 1024);
    // Warm-up: one pass over the distinct inputs.
    for a in &inputs {
        buf.clear();
        enc.encode_framed(a, &mut buf)?;
    }
    let pb = bar(n, "serialise");
    let mut bytes = 0usize;
    let t0 = Instant::now();
    for i in 0..n {
        buf.clear();
        enc.encode_framed(&inputs[i % inputs.len()], &mut buf)?;
        bytes += buf.len();
        if i % 1000 == 999 {
            pb.inc(1000);
        }
    }
    let dt = t0.elapsed().as_secs_f64();
    pb.finish_and_clear();
    println!(
        "alerts serialise: {n} alerts, {:.1} MB ({:.1} KB/alert) in {dt:.3} s on one thread: \
         {:.0} alerts/s, {:.0} MB/s",
        bytes as f64 / 1e6,
        bytes as f64 / n as f64 / 1e3,
        n as f64 / dt,
        bytes as f64 / 1e6 / dt
    );
    Ok(())
}

/// Simulates the inputs of `n` detectors of one visit into `dir`.
fn prepare_detectors(
    size: u32,
    n: u16,
    dir: &std::path::Path,
) -> anyhow::Result<Vec<Vec<std::path::PathBuf>>> {
    use apflow_core::ids::DetectorId;
    use apflow_sim::{Band, Night, NightSpec, Profile};
    let spec = NightSpec {
        visits: 1,
        detectors: n,
        detector_size: size,
        seed: 1,
        profile: Profile::Typical,
        snaps: 2,
        bands: vec![Band::R],
        ..NightSpec::default()
    };
    spec.validate()?;
    let night = Night::new(&spec)?;
    let pb = ProgressBar::new_spinner();
    pb.set_message("simulating calibrations, templates, reference catalogue and raw snaps");
    pb.enable_steady_tick(Duration::from_millis(200));
    night.write_inputs(dir, |_| {})?;
    let visit = night.visits()[0].visit;
    let mut raws = Vec::new();
    for d in night.detectors() {
        let mut snaps = Vec::new();
        for snap in 0..spec.snaps {
            let path = apflow_sim::night::raw_path(dir, visit, snap, DetectorId(d.id));
            std::fs::create_dir_all(path.parent().expect("raw files live in a directory"))?;
            apflow_sim::write_raw_fits(&night.render_raw(0, DetectorId(d.id), snap)?, &path)?;
            snaps.push(path);
        }
        raws.push(snaps);
    }
    pb.finish_and_clear();
    Ok(raws)
}

fn bench_detector(
    science: apflow_prompt_proc::pipeline::PipelineConfig,
    size: u32,
    repeats: usize,
    parallel: usize,
    dir: &std::path::Path,
) -> anyhow::Result<()> {
    use apflow_prompt_proc::service::ProcessContext;
    let parallel = match parallel {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let raws = prepare_detectors(size, parallel.max(1) as u16, dir)?;
    let ctx = ProcessContext::open(dir, science)?;
    // Warm-up: fills the calibration and template caches.
    for r in &raws {
        ctx.process_files(r)?;
    }
    let pb = bar(repeats, "detector");
    let mut stages = super::StageTimes::default();
    let (mut totals, mut walls, mut cpus, mut sources) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let cpu_now = apflow_core::time::process_cpu_seconds;
    for _ in 0..repeats {
        let (t, c) = (Instant::now(), cpu_now());
        let (_, result) = ctx.process_files(&raws[0])?;
        walls.push(t.elapsed().as_secs_f64());
        if let Some(used) = c.zip(cpu_now()).map(|(a, b)| b - a) {
            cpus.push(used);
        }
        totals.push(result.total_seconds());
        sources.push(result.sources.len() as f64);
        for s in &result.timings {
            stages.add(s.stage, s.seconds);
        }
        pb.inc(1);
    }
    pb.finish_and_clear();
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        super::quantile(v, 0.5)
    };
    println!(
        "science core, {size}×{size} detector, typical profile, 2 snaps, {repeats} runs, one thread (median):"
    );
    for (stage, m) in stages.medians() {
        println!("  {stage:<12} {:8.1} ms", m * 1e3);
    }
    println!("  {:<12} {:8.1} ms", "stages", median(&mut totals) * 1e3);
    println!(
        "  {:<12} {:8.1} ms   (stages + reading the raw FITS files)",
        "wall",
        median(&mut walls) * 1e3
    );
    if !cpus.is_empty() {
        println!(
            "  {:<12} {:8.1} ms   (CPU time of the process for the wall time above: the figure a loaded machine does not inflate)",
            "cpu",
            median(&mut cpus) * 1e3
        );
    }
    println!("  DiaSources   {:8.0}", median(&mut sources));
    if parallel > 1 {
        let t = Instant::now();
        std::thread::scope(|s| -> anyhow::Result<()> {
            let handles: Vec<_> = raws
                .iter()
                .map(|r| {
                    let ctx = &ctx;
                    s.spawn(move || -> anyhow::Result<()> {
                        for _ in 0..repeats {
                            ctx.process_files(r)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for h in handles {
                h.join()
                    .map_err(|_| anyhow::anyhow!("a worker panicked"))??;
            }
            Ok(())
        })?;
        let wall = t.elapsed().as_secs_f64();
        let n = (raws.len() * repeats) as f64;
        println!(
            "  throughput   {:8.2} detectors/s with {} detectors at once ({:.2} s per detector per worker)",
            n / wall,
            raws.len(),
            wall / repeats as f64
        );
    }
    Ok(())
}

async fn bench_bus(
    config: &AppConfig,
    messages: usize,
    size: usize,
    window: usize,
) -> anyhow::Result<()> {
    let bus = Bus::from_config(&config.bus)?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_nanos();
    let topic = format!(
        "{}bench-{}",
        config.bus.topic_prefix,
        nanos % 1_000_000_000_000
    );
    bus.ensure_topics(&[TopicSpec {
        name: topic.clone(),
        partitions: config.bus.partitions,
    }])
    .await?;
    let mut sub = bus
        .subscribe(std::slice::from_ref(&topic), &format!("{topic}-reader"))
        .await?;
    // Deterministic, incompressible-ish payload.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let payload: Vec<u8> = (0..size)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state as u8
        })
        .collect();

    let consumer = tokio::spawn(async move {
        let pb = bar(messages, "consume");
        let started = Instant::now();
        for _ in 0..messages {
            match sub.next_timeout(Duration::from_secs(60)).await {
                Ok(Some(d)) => d.ack(),
                Ok(None) => {
                    anyhow::bail!("no message for 60 s after {} of {messages}", pb.position())
                }
                Err(e) => return Err(e.into()),
            }
            pb.inc(1);
        }
        pb.finish_and_clear();
        let elapsed = started.elapsed();
        sub.close(Duration::from_secs(5)).await;
        Ok(elapsed)
    });

    let pb = bar(messages, "publish");
    let started = Instant::now();
    let mut sent = 0;
    while sent < messages {
        let n = window.min(messages - sent);
        let batch = (0..n).map(|i| {
            bus.publish(Record {
                topic: topic.clone(),
                key: Some(((sent + i) % 189).to_string()),
                payload: payload.clone(),
                headers: vec![],
            })
        });
        for r in futures::future::join_all(batch).await {
            r?;
        }
        sent += n;
        pb.set_position(sent as u64);
    }
    let publish = started.elapsed();
    pb.finish_and_clear();
    let consume = consumer.await??;
    let mb = (messages * size) as f64 / 1e6;
    println!(
        "bus {} — {messages} messages × {size} B ({mb:.0} MB)",
        bus.backend()
    );
    println!(
        "  publish: {:>8.2} s  {:>10.0} msg/s  {:>8.1} MB/s",
        publish.as_secs_f64(),
        messages as f64 / publish.as_secs_f64(),
        mb / publish.as_secs_f64()
    );
    println!(
        "  consume: {:>8.2} s  {:>10.0} msg/s  {:>8.1} MB/s (from subscription start)",
        consume.as_secs_f64(),
        messages as f64 / consume.as_secs_f64(),
        mb / consume.as_secs_f64()
    );
    Ok(())
}
