//! `apflow run`: a simulated night through every stage that exists, in one process on
//! the embedded backends, ending with a summary of what happened and how fast.
//!
//! Stages today: scheduler (`NextVisit`), camera (the simulator renders and writes each
//! raw detector image), ingest (validates, checksums, `RawImageReady` or a dead letter)
//! and accounting (consumes what ingest announced, measures latency since the end of
//! readout). Stages added later (processing, APDB, alerts) plug in between ingest and
//! accounting without changing this command's interface.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apflow_core::bus::{Bus, EventConsumer, EventPublisher, Topics};
use apflow_core::events::{DeadLetter, RawImageReady};
use apflow_core::ids::DetectorId;
use apflow_core::telemetry::{events::StageFinished, http};
use apflow_ingest::{ReadoutTimes, dead_letter, ingest_file};
use apflow_sim::{Night, NightSpec, write_raw_fits};
use chrono::Utc;
use clap::Args;
use tokio::sync::Semaphore;

use super::simulate::{NightArgs, progress_bar};
use crate::config::AppConfig;

/// `apflow run` options (each overrides the configuration).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The night.
    #[command(flatten)]
    pub night: NightArgs,
    /// Working directory for the night's images and products.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Time between visits (e.g. `37s`); `0s` runs as fast as possible.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub cadence: Option<Duration>,
    /// Detectors processed at once (default: the number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Address for /metrics and /healthz (port 0 picks one; empty disables).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// Keep serving /metrics this long after the summary (e.g. `30s`), so that a
    /// scraper such as Prometheus sees the night's final values; Ctrl-C ends it early.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub linger: Option<Duration>,
}

/// `[run]`.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    /// Working directory.
    pub out: PathBuf,
    /// Time between visits; 0 for as fast as possible.
    #[serde(with = "humantime_serde")]
    pub cadence: Duration,
    /// Detectors at once; 0 for the number of CPUs.
    pub workers: usize,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            out: PathBuf::from("night"),
            cadence: Duration::ZERO,
            workers: 0,
        }
    }
}

/// Seconds at quantile `q` of sorted values.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

#[derive(Debug, Default)]
struct Accounting {
    dead_letters: Vec<DeadLetter>,
    latencies: Vec<f64>,
    bytes: u64,
}

/// Consumes what ingest announced until `expected` images are accounted for.
async fn account(publisher: EventPublisher, expected: usize) -> anyhow::Result<Accounting> {
    let mut raw =
        EventConsumer::<RawImageReady>::subscribe(&publisher, "accounting", "accounting").await?;
    let mut dlq =
        EventConsumer::<DeadLetter>::subscribe(&publisher, "accounting-dead-letters", "accounting")
            .await?;
    let mut acc = Accounting::default();
    while acc.latencies.len() + acc.dead_letters.len() < expected {
        tokio::select! {
            r = raw.next() => {
                let (e, d) = r?;
                let latency = (Utc::now() - e.readout_end).as_seconds_f64();
                acc.latencies.push(latency);
                acc.bytes += e.size_bytes;
                d.ack();
            }
            r = dlq.next() => {
                let (l, d) = r?;
                acc.dead_letters.push(l);
                d.ack();
            }
        }
    }
    raw.close(Duration::from_secs(5)).await;
    dlq.close(Duration::from_secs(5)).await;
    Ok(acc)
}

/// Camera and ingest for one detector image: render, write, validate, announce.
async fn read_out(
    night: Arc<Night>,
    publisher: EventPublisher,
    out: PathBuf,
    visit_index: usize,
    detector: DetectorId,
    snap: u8,
) -> anyhow::Result<f64> {
    let plan = &night.visits()[visit_index];
    let visit = plan.visit;
    let path = apflow_sim::night::raw_path(&out, visit, snap, detector);
    // The shutter closes now; the readout ends when the file is written.
    let shutter_close = Utc::now();
    let started = Instant::now();
    let n = night.clone();
    let p = path.clone();
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        let raw = n.render_raw(visit_index, detector, snap)?;
        if let Some(dir) = p.parent() {
            std::fs::create_dir_all(dir)?;
        }
        write_raw_fits(&raw, &p)?;
        Ok(())
    })
    .await??;
    let camera_s = started.elapsed().as_secs_f64();
    let readout_end = Utc::now();

    let ingest_started = Instant::now();
    let p = path.clone();
    let result = tokio::task::spawn_blocking(move || {
        ingest_file(
            &p,
            Some(ReadoutTimes {
                shutter_close,
                readout_end,
            }),
        )
    })
    .await?;
    match result {
        Ok(event) => {
            publisher.publish(&event).await?;
            StageFinished {
                stage: "ingest",
                seconds: ingest_started.elapsed().as_secs_f64(),
                since_readout: Some((Utc::now() - readout_end).as_seconds_f64()),
            }
            .emit();
            tracing::debug!(
                visit = visit.0,
                detector = detector.0,
                snap,
                "Raw image ingested."
            );
        }
        Err(e) => {
            let mut letter = dead_letter(&path, &e);
            letter.visit = Some(visit);
            letter.detector = Some(detector);
            publisher.dead_letter(&letter).await?;
        }
    }
    StageFinished {
        stage: "camera",
        seconds: camera_s,
        since_readout: None,
    }
    .emit();
    Ok(camera_s)
}

fn prepare(night: &Night, out: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(out)?;
    night.write_calibrations(&out.join("calib"))?;
    night.write_templates(&out.join("templates"))?;
    night.write_refcat(&out.join("refcat.csv"))?;
    std::fs::write(out.join("night.json"), night.schedule_json()?)?;
    Ok(())
}

/// Runs the night.
pub async fn run(args: RunArgs, config: &AppConfig) -> anyhow::Result<()> {
    let wall = Instant::now();
    let spec: NightSpec = args.night.apply(&config.simulate);
    spec.validate()?;
    let out = args.out.clone().unwrap_or_else(|| config.run.out.clone());
    let cadence = args.cadence.unwrap_or(config.run.cadence);
    let workers = match args.workers.unwrap_or(config.run.workers) {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };

    let listen = args
        .metrics_listen
        .clone()
        .unwrap_or_else(|| config.telemetry.metrics_listen.clone());
    let server = if listen.is_empty() {
        None
    } else {
        Some(http::serve(&listen, http::router()).await?)
    };
    if let Some(s) = &server {
        println!("metrics: http://{}/metrics", s.addr);
    }

    let bus = Bus::from_config(&config.bus)?;
    let topics = Topics::new(config.bus.topic_prefix.clone());
    bus.ensure_topics(&topics.stage_topics(config.bus.partitions))
        .await?;
    let publisher = EventPublisher::new(bus, topics);

    println!(
        "night {}: {} visits × {} detectors × {} snap(s), {} px, {:?} profile, seed {} → {}",
        spec.day_obs,
        spec.visits,
        spec.detectors,
        spec.snaps,
        spec.detector_size,
        spec.profile,
        spec.seed,
        out.display()
    );
    let s = spec.clone();
    let night = Arc::new(tokio::task::spawn_blocking(move || Night::new(&s)).await??);
    let n = night.clone();
    let o = out.clone();
    let prep = Instant::now();
    tokio::task::spawn_blocking(move || prepare(&n, &o)).await??;
    println!(
        "  calibrations, templates and reference catalogue ready in {:.1} s",
        prep.elapsed().as_secs_f64()
    );

    let detectors: Vec<DetectorId> = night.detectors().iter().map(|d| DetectorId(d.id)).collect();
    let snaps = spec.snaps;
    let expected = night.visits().len() * detectors.len() * usize::from(snaps);
    let accounting = tokio::spawn(account(publisher.clone(), expected));

    let bar = progress_bar();
    bar.set_length(expected as u64);
    bar.set_message("detectors");
    let limit = Arc::new(Semaphore::new(workers));
    let mut tasks = tokio::task::JoinSet::new();
    let night_started = Instant::now();
    for (i, plan) in night.visits().iter().enumerate() {
        let slot = cadence * i as u32;
        if let Some(wait) = slot.checked_sub(night_started.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        publisher.publish(&night.next_visit(i)?).await?;
        crate::cmd::VISITS_TOTAL.inc();
        tracing::info!(
            visit = plan.visit.0,
            band = plan.band.as_str(),
            "Visit started."
        );
        for &d in &detectors {
            for snap in 0..snaps {
                let permit = limit.clone().acquire_owned().await?;
                let (night, publisher, out, bar) =
                    (night.clone(), publisher.clone(), out.clone(), bar.clone());
                tasks.spawn(async move {
                    let r = read_out(night, publisher, out, i, d, snap).await;
                    bar.inc(1);
                    drop(permit);
                    r
                });
            }
        }
    }
    let mut camera_seconds = Vec::with_capacity(expected);
    while let Some(r) = tasks.join_next().await {
        camera_seconds.push(r??);
    }
    bar.finish_and_clear();
    let acc = tokio::time::timeout(Duration::from_secs(120), accounting)
        .await
        .map_err(|_| anyhow::anyhow!("accounting did not see every image within 120 s"))???;

    camera_seconds.sort_by(f64::total_cmp);
    let mut lat = acc.latencies.clone();
    lat.sort_by(f64::total_cmp);
    let within = lat.iter().filter(|l| **l <= 60.0).count();
    println!("summary");
    println!("  visits          {}", night.visits().len());
    println!(
        "  detector images {expected} read out, {} ingested, {} dead-lettered",
        acc.latencies.len(),
        acc.dead_letters.len()
    );
    for l in &acc.dead_letters {
        println!("    dead letter: {} ({})", l.reason, l.detail);
    }
    println!(
        "  camera          {:.2} s median per detector image (render + write), {:.1} MB ingested",
        quantile(&camera_seconds, 0.5),
        acc.bytes as f64 / 1e6
    );
    println!(
        "  latency         end of readout → RawImageReady consumed: p50 {:.3} s, p95 {:.3} s, p98 {:.3} s, max {:.3} s; {:.1}% within 60 s",
        quantile(&lat, 0.5),
        quantile(&lat, 0.95),
        quantile(&lat, 0.98),
        lat.last().copied().unwrap_or(f64::NAN),
        100.0 * within as f64 / lat.len().max(1) as f64
    );
    println!(
        "  alerts          0 — prompt processing, APDB and alert distribution are not built yet"
    );
    println!("  wall time       {:.1} s", wall.elapsed().as_secs_f64());
    if let (Some(s), Some(linger)) = (&server, args.linger.filter(|l| !l.is_zero())) {
        println!(
            "  metrics         still served on http://{}/metrics for {} (Ctrl-C stops)",
            s.addr,
            humantime::format_duration(linger)
        );
        tokio::select! {
            _ = tokio::time::sleep(linger) => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    if let Some(s) = server {
        s.task.abort();
    }
    Ok(())
}
