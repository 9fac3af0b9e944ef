//! `apflow run`: a simulated night through every stage that exists, in one process on
//! the embedded backends, ending with a summary of what happened and how fast.
//!
//! Stages today: scheduler (`NextVisit`), camera (the simulator renders and writes each
//! raw detector image), ingest (validates, checksums, `RawImageReady` or a dead letter),
//! process (the science core, once every snap of a detector has arrived:
//! `DetectorProcessed`, or a dead letter naming the failed stage) and accounting
//! (latency since the end of readout). Stages added later (APDB, alerts) plug in after
//! process without changing this command's interface.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use apflow_core::bus::{Bus, EventConsumer, EventPublisher, Topics};
use apflow_core::events::{
    DeadLetter, DetectorCounts, DetectorProcessed, DetectorStatus, Original, RawImageReady,
    StageTiming,
};
use apflow_core::ids::DetectorId;
use apflow_core::telemetry::{events::StageFinished, http};
use apflow_ingest::{ReadoutTimes, dead_letter, ingest_file};
use apflow_prompt_proc::service::ProcessContext;
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
                // Only ingest's refusals stand for images; the process stage's own
                // dead letters are counted by the process stage.
                if l.stage == "ingest" {
                    acc.dead_letters.push(l);
                }
                d.ack();
            }
        }
    }
    raw.close(Duration::from_secs(5)).await;
    dlq.close(Duration::from_secs(5)).await;
    Ok(acc)
}

/// What the process stage did.
#[derive(Debug, Default)]
struct Processed {
    ok: usize,
    failed: Vec<DeadLetter>,
    dia_sources: u64,
    reliable: u64,
    /// End of readout (last snap) → DetectorProcessed published, seconds.
    latencies: Vec<f64>,
    /// Seconds per stage name over detectors.
    stages: Vec<(String, Vec<f64>)>,
}

fn file_path(uri: &str) -> PathBuf {
    PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri))
}

/// The process stage: gathers each detector's snaps from `RawImageReady`, runs the
/// science core on them (at most `workers` at once), publishes `DetectorProcessed` or a
/// dead letter, and acknowledges the snaps only then (at-least-once). Ends when
/// `expected` detectors (sent once known) are done.
async fn process(
    publisher: EventPublisher,
    ctx: Arc<ProcessContext>,
    snaps: usize,
    workers: usize,
    mut expected: tokio::sync::watch::Receiver<Option<usize>>,
    bar: indicatif::ProgressBar,
) -> anyhow::Result<Processed> {
    let mut raw =
        EventConsumer::<RawImageReady>::subscribe(&publisher, "process", "process").await?;
    let mut pending: std::collections::HashMap<
        (u64, u16),
        Vec<(RawImageReady, apflow_core::bus::Delivery)>,
    > = Default::default();
    let limit = Arc::new(Semaphore::new(workers));
    let mut tasks = tokio::task::JoinSet::new();
    let mut out = Processed::default();
    let mut done = 0usize;
    loop {
        if let Some(n) = *expected.borrow()
            && done >= n
        {
            break;
        }
        tokio::select! {
            r = raw.next() => {
                let (e, d) = r?;
                let key = (e.visit.0, e.detector.0);
                let group = pending.entry(key).or_default();
                group.push((e, d));
                if group.len() < snaps {
                    continue;
                }
                let mut group = pending.remove(&key).expect("present");
                group.sort_by_key(|(e, _)| e.exposure.0);
                let permit = limit.clone().acquire_owned().await?;
                let (ctx, publisher) = (ctx.clone(), publisher.clone());
                tasks.spawn(async move {
                    let r = process_detector(ctx, publisher, group).await;
                    drop(permit);
                    r
                });
            }
            Some(r) = tasks.join_next() => {
                let r = r??;
                done += 1;
                bar.inc(1);
                match r {
                    Ok((latency, sources, reliable, timings)) => {
                        out.ok += 1;
                        out.latencies.push(latency);
                        out.dia_sources += sources;
                        out.reliable += reliable;
                        for t in timings {
                            match out.stages.iter_mut().find(|(s, _)| *s == t.stage) {
                                Some((_, v)) => v.push(t.seconds),
                                None => out.stages.push((t.stage, vec![t.seconds])),
                            }
                        }
                    }
                    Err(letter) => out.failed.push(letter),
                }
            }
            _ = expected.changed() => {}
        }
    }
    raw.close(Duration::from_secs(5)).await;
    Ok(out)
}

type DetectorOutcome = Result<(f64, u64, u64, Vec<StageTiming>), DeadLetter>;

/// Runs the science core on one detector's snaps and publishes the outcome.
async fn process_detector(
    ctx: Arc<ProcessContext>,
    publisher: EventPublisher,
    group: Vec<(RawImageReady, apflow_core::bus::Delivery)>,
) -> anyhow::Result<DetectorOutcome> {
    let first = &group[0].0;
    let (visit, detector) = (first.visit, first.detector);
    let readout_end = group
        .iter()
        .map(|(e, _)| e.readout_end)
        .max()
        .expect("a group has snaps");
    let paths: Vec<PathBuf> = group.iter().map(|(e, _)| file_path(&e.image_uri)).collect();
    let started = Instant::now();
    let c = ctx.clone();
    let p = paths.clone();
    let result = tokio::task::spawn_blocking(move || c.process_files(&p)).await?;
    let outcome = match result {
        Ok(r) => {
            let timings: Vec<StageTiming> = r
                .timings
                .iter()
                .map(|t| StageTiming {
                    stage: t.stage.to_string(),
                    seconds: t.seconds,
                })
                .collect();
            for t in &r.timings {
                StageFinished {
                    stage: t.stage,
                    seconds: t.seconds,
                    since_readout: None,
                }
                .emit();
            }
            let reliable = r.reliable().count() as u64;
            let event = DetectorProcessed {
                visit,
                detector,
                status: DetectorStatus::Ok,
                counts: DetectorCounts {
                    dia_sources: r.sources.len() as u32,
                    ..DetectorCounts::default()
                },
                timings: timings.clone(),
                readout_end,
                finished_at: Utc::now(),
            };
            publisher.publish(&event).await?;
            let latency = (Utc::now() - readout_end).as_seconds_f64();
            StageFinished {
                stage: "process",
                seconds: started.elapsed().as_secs_f64(),
                since_readout: Some(latency),
            }
            .emit();
            tracing::info!(
                visit = visit.0,
                detector = detector.0,
                dia_sources = r.sources.len(),
                reliable,
                seconds = r.total_seconds(),
                "Detector processed."
            );
            Ok((latency, r.sources.len() as u64, reliable, timings))
        }
        Err(f) => {
            let letter = DeadLetter {
                original: Original::Reference {
                    uri: first.image_uri.clone(),
                },
                source_topic: None,
                stage: format!("process.{}", f.stage),
                reason: f.error.reason().into(),
                detail: f.to_string(),
                class: f.error.class(),
                visit: Some(visit),
                detector: Some(detector),
                at: Utc::now(),
            };
            publisher.dead_letter(&letter).await?;
            let event = DetectorProcessed {
                visit,
                detector,
                status: DetectorStatus::Failed {
                    stage: f.stage.to_string(),
                    class: f.error.class(),
                    reason: f.error.reason().to_string(),
                },
                counts: DetectorCounts::default(),
                timings: Vec::new(),
                readout_end,
                finished_at: Utc::now(),
            };
            publisher.publish(&event).await?;
            Err(letter)
        }
    };
    for (_, d) in group {
        d.ack();
    }
    Ok(outcome)
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
    let o = out.clone();
    let science = config.science.clone();
    let ctx =
        Arc::new(tokio::task::spawn_blocking(move || ProcessContext::open(&o, science)).await??);
    let (expected_detectors, expected_rx) = tokio::sync::watch::channel(None);
    let bars = indicatif::MultiProgress::new();
    let pbar = bars.add(progress_bar());
    pbar.set_length((night.visits().len() * detectors.len()) as u64);
    pbar.set_message("processed");
    let processing = tokio::spawn(process(
        publisher.clone(),
        ctx,
        usize::from(snaps),
        workers,
        expected_rx,
        pbar.clone(),
    ));

    let bar = bars.insert(0, progress_bar());
    bar.set_length(expected as u64);
    bar.set_message("read out");
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
    // Detectors with a dead-lettered snap never complete; the rest must be processed.
    let mut refused: Vec<(u64, u16)> = acc
        .dead_letters
        .iter()
        .filter_map(|l| Some((l.visit?.0, l.detector?.0)))
        .collect();
    refused.sort_unstable();
    refused.dedup();
    let n_detectors = night.visits().len() * detectors.len();
    expected_detectors.send_replace(Some(n_detectors - refused.len()));
    pbar.set_length((n_detectors - refused.len()) as u64);
    let processed = processing.await??;
    pbar.finish_and_clear();

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
        "  processed       {} detectors, {} failed; {} DiaSources, {} above the reliability cut",
        processed.ok,
        processed.failed.len(),
        processed.dia_sources,
        processed.reliable
    );
    for l in &processed.failed {
        println!(
            "    dead letter: {} at {} ({})",
            l.reason, l.stage, l.detail
        );
    }
    for (stage, v) in &mut processed.stages.clone() {
        v.sort_by(f64::total_cmp);
        println!(
            "    {stage:<12} {:7.1} ms median per detector",
            quantile(v, 0.5) * 1e3
        );
    }
    let mut plat = processed.latencies.clone();
    plat.sort_by(f64::total_cmp);
    let pwithin = plat.iter().filter(|l| **l <= 60.0).count();
    println!(
        "  latency         end of readout → DetectorProcessed: p50 {:.2} s, p95 {:.2} s, p98 {:.2} s, max {:.2} s; {:.1}% within 60 s",
        quantile(&plat, 0.5),
        quantile(&plat, 0.95),
        quantile(&plat, 0.98),
        plat.last().copied().unwrap_or(f64::NAN),
        100.0 * pwithin as f64 / plat.len().max(1) as f64
    );
    println!(
        "  alerts          0 — association with the APDB and alert distribution are not wired in yet"
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
