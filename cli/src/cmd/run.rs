//! `apflow run`: a simulated night through every stage that exists, in one process on
//! the embedded backends, ending with a summary of what happened and how fast.
//!
//! Stages today: scheduler (`NextVisit`), camera (`super::camera`: the simulator renders
//! and writes each raw detector image, or `--raw DIR` lands a night directory's raw
//! files, each visit at its paced time), ingest (validates, checksums, `RawImageReady` or a dead letter),
//! process (once every snap of a detector has arrived: the science core, then the
//! association stage — APDB history read, association with DiaObjects and the
//! simulator's solar-system ephemerides, forced photometry, one idempotent APDB store —
//! then `DetectorProcessed`, or a dead letter naming the failed stage) and accounting
//! (latency since the end of readout), then alerts: one `lsst.v11_0`-compatible
//! packet per DiaSource with its history and cutouts, written to the alert archive
//! (`<out>/archive`; the embedded run's stream), served with the schema registry on
//! the metrics address. With `--filters DIR` the filtering service runs on the
//! night's alert stream ([`super::run_filters`]).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use apflow_alert_dist::archive::Archive;
use apflow_alert_dist::packet::AssembleConfig;
use apflow_alert_dist::producer::{DetectorReport, VisitTally};
use apflow_alert_dist::registry::SchemaRegistry;
use apflow_alert_dist::schema::SCHEMA_ID;
use apflow_apdb::AnyApdb;
use apflow_core::bus::{Bus, EventConsumer, EventPublisher, Topics};
use apflow_core::events::{DeadLetter, RawImageReady};
use apflow_core::ids::{DetectorId, VisitId};
use apflow_core::telemetry::http;
use apflow_core::time::MjdTai;
use apflow_prompt_proc::service::ProcessContext;
use apflow_replay::clock::RealClock;
use apflow_replay::report::DetectorRecord;
use apflow_replay::schedule::{ScheduleOptions, parse_time};
use apflow_sim::{Night, NightSpec};
use chrono::Utc;
use clap::Args;
use tokio::sync::{Semaphore, watch};

use super::apdb::ApdbSection;
use super::camera::{
    Camera, VisitPacer, missing_raw_files, read_out, spacing_error, visit_schedule,
};
#[cfg(feature = "kafka")]
use super::detector::alert_producer;
use super::detector::{DetectorOutcome, SnapGroups, Stage, VisitContexts, spawn_detector};
use super::simulate::{NightArgs, progress_bar};
use crate::config::AppConfig;

/// How often `apflow run` reads every consumer group's lag (cheap in-process; one
/// round of requests per group on Kafka).
const LAG_INTERVAL: Duration = Duration::from_secs(1);

/// `apflow run` options (each overrides the configuration).
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The night.
    #[command(flatten)]
    pub night: NightArgs,
    /// Working directory for the night's images and products.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Replay a night directory of raw images (`apflow simulate --out DIR`) through
    /// the whole pipeline instead of simulating one: its `night.json`, calibrations,
    /// templates and reference catalogue, each raw file read out at its visit's paced
    /// time (see --speed, --cadence, --from, --to, --limit-visits; without --speed or
    /// --cadence, the original pacing at ×1).
    #[arg(long, value_name = "DIR", conflicts_with_all = ["visits", "detectors", "size", "seed", "profile", "snaps"])]
    pub raw: Option<PathBuf>,
    /// Time between visits (e.g. `37s`); `0s` runs as fast as possible.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub cadence: Option<Duration>,
    /// Pace visits by the night's original start times instead: a speed factor over
    /// their spacing (1, 10, x10, 0.5) or `max`.
    #[arg(long, conflicts_with = "cadence")]
    pub speed: Option<String>,
    /// Only visits starting at or after this time (MJD TAI, or ISO 8601 UTC).
    #[arg(long)]
    pub from: Option<String>,
    /// Only visits starting before this time (MJD TAI, or ISO 8601 UTC).
    #[arg(long)]
    pub to: Option<String>,
    /// At most this many visits (after --from/--to).
    #[arg(long)]
    pub limit_visits: Option<usize>,
    /// Detectors processed at once (default: the number of CPUs).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Address for /metrics and /healthz (port 0 picks one; empty disables).
    #[arg(long)]
    pub metrics_listen: Option<String>,
    /// APDB URL (default: `[apdb] url`, or `sqlite://<out>/apdb.sqlite` when that is
    /// left at its default).
    #[arg(long)]
    pub apdb: Option<String>,
    /// Keep serving /metrics this long after the summary (e.g. `30s`), so that a
    /// scraper such as Prometheus sees the night's final values; Ctrl-C ends it early.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub linger: Option<Duration>,
    /// Run the filtering service on the night's alert stream with the filter files of
    /// DIR (default `[filters] dir`; e.g. `deploy/filters`): matches go to each
    /// filter's topic and to `<out>/filter-matches.jsonl`.
    #[arg(long, value_name = "DIR")]
    pub filters: Option<PathBuf>,
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

/// Consumes `RawImageReady` until as many images as expected (sent once the camera has
/// finished and knows how many ingest refused) are accounted for; returns the latencies
/// from end of readout and the bytes ingested.
async fn account(
    publisher: EventPublisher,
    mut expected: watch::Receiver<Option<usize>>,
) -> anyhow::Result<(Vec<f64>, u64)> {
    let mut raw =
        EventConsumer::<RawImageReady>::subscribe(&publisher, "accounting", "accounting").await?;
    let (mut latencies, mut bytes) = (Vec::new(), 0u64);
    while expected.borrow().is_none_or(|n| latencies.len() < n) {
        tokio::select! {
            r = raw.next() => {
                let (e, d) = r?;
                latencies.push((Utc::now() - e.readout_end).as_seconds_f64());
                bytes += e.size_bytes;
                d.ack();
            }
            _ = expected.changed() => {}
        }
    }
    raw.close(Duration::from_secs(5)).await;
    Ok((latencies, bytes))
}

/// What the process stage did.
#[derive(Debug)]
struct Processed {
    done: Vec<DetectorOutcome>,
    failed: Vec<DeadLetter>,
    /// Detectors per visit.
    per_visit: u32,
    /// Each visit's tally; its `VisitComplete` is published when it completes.
    visits: HashMap<VisitId, VisitTally>,
    /// Complete visits whose p98 alert latency was within the 60 s budget.
    within_budget: usize,
}

impl Processed {
    fn new(per_visit: u32) -> Self {
        Self {
            done: Vec::new(),
            failed: Vec::new(),
            per_visit,
            visits: HashMap::new(),
            within_budget: 0,
        }
    }

    fn total(&self, f: impl Fn(&DetectorOutcome) -> usize) -> usize {
        self.done.iter().map(f).sum()
    }

    /// Counts a detector towards its visit (`report` is `None` for a failed one) and
    /// publishes the visit's `VisitComplete` once every detector is accounted for.
    async fn tally(
        &mut self,
        publisher: &EventPublisher,
        visit: VisitId,
        detector: DetectorId,
        report: Option<&DetectorReport>,
    ) -> anyhow::Result<()> {
        let per_visit = self.per_visit;
        let tally = self
            .visits
            .entry(visit)
            .or_insert_with(|| VisitTally::new(visit, per_visit));
        let was_complete = tally.is_complete();
        match report {
            Some(r) => tally.done(detector, r),
            None => tally.failed(detector),
        }
        if !was_complete && tally.is_complete() {
            let event = tally.event(Utc::now());
            publisher.publish(&event).await?;
            super::VISITS_COMPLETE_TOTAL
                .with_label_values(&[super::visit_result(&event)])
                .inc();
            match &event.latency {
                Some(l) if l.meets_budget() => self.within_budget += 1,
                Some(_) => super::VISITS_OVER_BUDGET_TOTAL.inc(),
                None => {}
            }
            tracing::info!(
                visit = visit.0,
                alerts = event.n_alerts,
                detectors_done = event.detectors_done,
                detectors_failed = event.detectors_failed.len(),
                "Visit complete."
            );
        }
        Ok(())
    }

    /// Visits whose `VisitComplete` is published, their alerts, and how many of them
    /// had 98% of their alerts out within the 60 s budget.
    fn visits_complete(&self) -> (usize, u64, usize) {
        let (n, alerts) = self
            .visits
            .values()
            .filter(|t| t.is_complete())
            .fold((0, 0), |(n, a), t| (n + 1, a + t.alerts()));
        (n, alerts, self.within_budget)
    }
}

/// The process stage: gathers each detector's snaps from `RawImageReady`, runs the
/// science core and the association stage on them (at most `workers` at once),
/// publishes `DetectorProcessed` or a dead letter, and acknowledges the snaps only
/// then (at-least-once). Detectors ingest refused a snap of (`refused`, sent as they
/// are refused) count as failed in their visit's tally. Ends when `expected` detectors
/// (sent once known) are done.
async fn process(
    stage: Arc<Stage>,
    snaps: usize,
    workers: usize,
    per_visit: u32,
    mut expected: watch::Receiver<Option<usize>>,
    mut refused: tokio::sync::mpsc::UnboundedReceiver<(VisitId, DetectorId)>,
    bar: indicatif::ProgressBar,
) -> anyhow::Result<Processed> {
    let mut raw =
        EventConsumer::<RawImageReady>::subscribe(&stage.publisher, "process", "process").await?;
    let mut groups = SnapGroups::new(snaps);
    let limit = Arc::new(Semaphore::new(workers));
    let mut tasks = tokio::task::JoinSet::new();
    let mut out = Processed::new(per_visit);
    while expected
        .borrow()
        .is_none_or(|n| out.done.len() + out.failed.len() < n)
    {
        tokio::select! {
            r = raw.next() => {
                let (e, d) = r?;
                if let Some(group) = groups.add(e, d) {
                    spawn_detector(&mut tasks, &limit, &stage, group).await?;
                }
            }
            Some(r) = tasks.join_next() => {
                bar.inc(1);
                match r?? {
                    Ok(o) => {
                        out.tally(&stage.publisher, o.visit, o.detector, Some(&o.delivered)).await?;
                        out.done.push(o);
                    }
                    Err(letter) => {
                        if let (Some(v), Some(d)) = (letter.visit, letter.detector) {
                            out.tally(&stage.publisher, v, d, None).await?;
                        }
                        out.failed.push(letter);
                    }
                }
            }
            Some((v, d)) = refused.recv() => {
                out.tally(&stage.publisher, v, d, None).await?;
            }
            _ = expected.changed() => {}
        }
    }
    // Every refusal was sent before `expected` was: any left are taken now.
    while let Ok((v, d)) = refused.try_recv() {
        out.tally(&stage.publisher, v, d, None).await?;
    }
    raw.close(Duration::from_secs(5)).await;
    Ok(out)
}

/// Writes one [`DetectorRecord`] per processed detector (JSON Lines), for `apflow report`.
fn write_records(path: &std::path::Path, done: &[DetectorOutcome]) -> anyhow::Result<()> {
    let mut w = std::io::BufWriter::new(std::fs::File::create(path)?);
    for o in done {
        DetectorRecord {
            visit: o.visit,
            detector: o.detector,
            readout_end_tai: MjdTai::from_utc(o.readout_end)?.0,
            alerts_done_tai: MjdTai::from_utc(o.alerts_done)?.0,
            n_alerts: u64::from(o.counts.alerts) + o.alerts_already_archived as u64,
            stages: o
                .timings
                .iter()
                .map(|t| (t.stage.clone(), t.seconds))
                .collect(),
        }
        .write_jsonl(&mut w)?;
    }
    std::io::Write::flush(&mut w)?;
    Ok(())
}

/// Runs the night.
pub async fn run(args: RunArgs, config: &AppConfig) -> anyhow::Result<()> {
    let wall = Instant::now();
    super::register_visit_metrics();
    let out = args.out.clone().unwrap_or_else(|| config.run.out.clone());
    // The camera: the simulator, or a night directory of raw images (its spec rebuilds
    // the night); and when each visit is read out.
    let camera = Arc::new(match &args.raw {
        Some(dir) => Camera::Raw { dir: dir.clone() },
        None => Camera::Simulator,
    });
    let night = match &*camera {
        Camera::Simulator => {
            let spec: NightSpec = args.night.apply(&config.simulate);
            spec.validate()?;
            tokio::task::spawn_blocking(move || Night::new(&spec)).await??
        }
        Camera::Raw { dir } => {
            let (d, o) = (dir.clone(), out.clone());
            tokio::task::spawn_blocking(move || super::camera::open_raw_night(&d, &o)).await??
        }
    };
    let night = Arc::new(night);
    let spec = night.spec().clone();
    let pacing_opts = ScheduleOptions {
        pacing: super::camera::pacing(
            &camera,
            args.speed.as_deref(),
            args.cadence,
            config.run.cadence,
        )?,
        detector_spread: Duration::ZERO,
        from: args.from.as_deref().map(parse_time).transpose()?,
        to: args.to.as_deref().map(parse_time).transpose()?,
        limit_visits: args.limit_visits,
    };
    let schedule = visit_schedule(&night, &pacing_opts)?;
    let selected: Vec<usize> = schedule.visits.iter().map(|v| v.visit_index).collect();
    let workers = match args.workers.unwrap_or(config.run.workers) {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };

    // Alerts are archived under <out>/archive; its schemas are served by the registry.
    let registry = Arc::new(SchemaRegistry::current(&config.producer)?);
    let archive_dir = out.join("archive");
    let archive = Arc::new(Archive::open(&archive_dir)?);
    archive.put_schemas(&registry)?;
    if !config.producer.registry_url.is_empty() {
        apflow_alert_dist::registry::register_all(
            &config.producer.registry_url,
            &registry,
            &config.producer.registry,
        )
        .await?;
        println!("  schemas registered in {}", config.producer.registry_url);
    }
    let listen = args
        .metrics_listen
        .clone()
        .unwrap_or_else(|| config.telemetry.metrics_listen.clone());
    let server = if listen.is_empty() {
        None
    } else {
        // /metrics and /healthz, the alert archive and the schema registry.
        let router = http::router()
            .merge(registry.clone().router())
            .merge(archive.clone().router());
        Some(http::serve(&listen, router).await?)
    };
    if let Some(s) = &server {
        println!("metrics: http://{}/metrics", s.addr);
    }

    let bus = Bus::from_config(&config.bus)?;
    let topics = Topics::new(config.bus.topic_prefix.clone());
    bus.ensure_topics(&topics.stage_topics(config.bus.partitions))
        .await?;
    // Every consumer group's lag on the stage topics and the alert topic, as metrics.
    let mut lag_topics: Vec<String> = topics
        .stage_topics(config.bus.partitions)
        .into_iter()
        .map(|t| t.name)
        .collect();
    lag_topics.push(config.producer.topic(SCHEMA_ID / 100));
    let lag = apflow_core::bus::spawn_lag_monitor(bus.clone(), lag_topics, LAG_INTERVAL);
    let publisher = EventPublisher::new(bus, topics);
    // The filtering service joins the alert topic before the first alert.
    let filters = match super::run_filters::dir(args.filters.as_deref(), config) {
        Some(dir) => Some(super::run_filters::start(&dir, config, &publisher, &out).await?),
        None => None,
    };

    println!(
        "night {}: {} visits × {} detectors × {} snap(s), {} px, {:?} profile, seed {}, {} → {}",
        spec.day_obs,
        spec.visits,
        spec.detectors,
        spec.snaps,
        spec.detector_size,
        spec.profile,
        spec.seed,
        camera.describe(),
        out.display()
    );
    match &*camera {
        Camera::Simulator => {
            let n = night.clone();
            let o = out.clone();
            let prep = Instant::now();
            tokio::task::spawn_blocking(move || n.write_inputs(&o, |_| {})).await??;
            println!(
                "  calibrations, templates and reference catalogue ready in {:.1} s",
                prep.elapsed().as_secs_f64()
            );
        }
        Camera::Raw { dir } => {
            println!(
                "  calibrations, templates and reference catalogue from {}",
                dir.display()
            );
            // One stat per raw file of the selection: off the async workers.
            let (n, d, v) = (night.clone(), dir.clone(), selected.clone());
            let missing =
                tokio::task::spawn_blocking(move || missing_raw_files(&n, &d, &v)).await?;
            if !missing.is_empty() {
                println!(
                    "  raw files       {} missing (each will be ingest's dead letter), e.g. {}",
                    missing.len(),
                    missing[0].display()
                );
            }
        }
    }
    println!(
        "  pacing          {}: {} of {} visits",
        super::replay::describe(&pacing_opts.pacing),
        selected.len(),
        night.visits().len()
    );

    let detectors: Vec<DetectorId> = night.detectors().iter().map(|d| DetectorId(d.id)).collect();
    let snaps = spec.snaps;
    let images = selected.len() * detectors.len() * usize::from(snaps);
    let n_detectors = selected.len() * detectors.len();
    let (expected_images, images_rx) = watch::channel(None);
    let accounting = tokio::spawn(account(publisher.clone(), images_rx));
    let o = out.clone();
    let science = config.science.clone();
    let inputs = camera.inputs_dir(&o).to_owned();
    let ctx = Arc::new(
        tokio::task::spawn_blocking(move || ProcessContext::open(&inputs, science)).await??,
    );
    let apdb_url = match &args.apdb {
        Some(url) => url.clone(),
        None if config.apdb.url == ApdbSection::default().url => {
            format!("sqlite://{}", out.join("apdb.sqlite").display())
        }
        None => config.apdb.url.clone(),
    };
    let apdb = AnyApdb::open_or_create(&apdb_url, &config.apdb.config).await?;
    println!("  APDB {apdb_url}");
    if let Some(s) = &server {
        println!(
            "  alerts: http://{}/v1/alerts/<id>, schema registry http://{}/subjects",
            s.addr, s.addr
        );
    }
    // The scheduler's announcements: published before each visit, and the alerts'
    // scheduler fields.
    let next_visits = (0..night.visits().len())
        .map(|i| night.next_visit(i))
        .collect::<Result<Vec<_>, _>>()?;
    let contexts = Arc::new(VisitContexts::of(&next_visits));
    let stage = Arc::new(Stage {
        ctx,
        apdb,
        night: night.clone(),
        association: config.association.clone(),
        publisher: publisher.clone(),
        contexts,
        assemble: AssembleConfig {
            history_days: config.association.history_days,
            ..config.alerts.clone()
        },
        archive: Some(archive.clone()),
        #[cfg(feature = "kafka")]
        producer: alert_producer(config, &out.join("alerts-ledger.sqlite")).await?,
        alert_feed: filters.as_ref().and_then(|f| f.feed()),
    });
    #[cfg(feature = "kafka")]
    let alert_topic = stage.producer.as_ref().map(|p| p.topic().to_owned());
    let (expected_detectors, detectors_rx) = watch::channel(None);
    let bars = indicatif::MultiProgress::new();
    let pbar = bars.add(progress_bar());
    pbar.set_length(n_detectors as u64);
    pbar.set_message("processed");
    let (refused_tx, refused_rx) = tokio::sync::mpsc::unbounded_channel();
    let processing = tokio::spawn(process(
        stage,
        usize::from(snaps),
        workers,
        detectors.len() as u32,
        detectors_rx,
        refused_rx,
        pbar.clone(),
    ));

    let bar = bars.insert(0, progress_bar());
    bar.set_length(images as u64);
    bar.set_message("read out");
    let limit = Arc::new(Semaphore::new(workers));
    let mut tasks = tokio::task::JoinSet::new();
    let clock = RealClock::start();
    let mut pacer = VisitPacer::new(&schedule, &clock);
    let mut started = Vec::with_capacity(schedule.visits.len());
    while let Some(paced) = pacer.next().await {
        let i = paced.visit_index;
        let plan = &night.visits()[i];
        started.push(paced);
        publisher.publish(&next_visits[i]).await?;
        crate::cmd::VISITS_TOTAL.inc();
        tracing::info!(
            visit = plan.visit.0,
            band = plan.band.as_str(),
            "Visit started."
        );
        let plan_visit = plan.visit;
        for &d in &detectors {
            for snap in 0..snaps {
                let permit = limit.clone().acquire_owned().await?;
                let (camera, night, publisher, out, bar, refused_tx) = (
                    camera.clone(),
                    night.clone(),
                    publisher.clone(),
                    out.clone(),
                    bar.clone(),
                    refused_tx.clone(),
                );
                tasks.spawn(async move {
                    let r = read_out(camera, night, publisher, out, i, d, snap).await;
                    if let Ok((_, Some(_))) = &r {
                        // The process stage closes the visit's tally without it.
                        let _ = refused_tx.send((plan_visit, d));
                    }
                    bar.inc(1);
                    drop(permit);
                    r
                });
            }
        }
    }
    let mut camera_seconds = Vec::with_capacity(images);
    let mut refused = Vec::new();
    while let Some(r) = tasks.join_next().await {
        let (seconds, letter) = r??;
        camera_seconds.push(seconds);
        refused.extend(letter);
    }
    bar.finish_and_clear();
    // A detector with a refused snap never completes; the rest must be processed.
    let mut refused_detectors: Vec<(u64, u16)> = refused
        .iter()
        .filter_map(|l| Some((l.visit?.0, l.detector?.0)))
        .collect();
    refused_detectors.sort_unstable();
    refused_detectors.dedup();
    expected_images.send_replace(Some(images - refused.len()));
    expected_detectors.send_replace(Some(n_detectors - refused_detectors.len()));
    pbar.set_length((n_detectors - refused_detectors.len()) as u64);
    let (latencies, bytes) = tokio::time::timeout(Duration::from_secs(120), accounting)
        .await
        .map_err(|_| anyhow::anyhow!("accounting did not see every image within 120 s"))???;
    let processed = processing.await??;
    pbar.finish_and_clear();

    camera_seconds.sort_by(f64::total_cmp);
    println!("summary");
    let latest = started.iter().map(|v| v.late).max().unwrap_or_default();
    let (spacing_abs, spacing_rel) = spacing_error(&started);
    println!(
        "  visits          {} read out ({}): the latest {:.3} s after its slot; spacing vs schedule max |error| {:.3} s, {:.2}%",
        selected.len(),
        super::replay::describe(&pacing_opts.pacing),
        latest.as_secs_f64(),
        spacing_abs,
        100.0 * spacing_rel
    );
    // Ids derive from visit and detector (see cmd::camera): no replay generation.
    println!(
        "  ids             original (from visit and detector){}",
        match &*camera {
            Camera::Raw { .. } => ": the same as the live run's of this night into a fresh --out",
            Camera::Simulator => "",
        }
    );
    println!(
        "  detector images {images} read out, {} ingested, {} dead-lettered",
        latencies.len(),
        refused.len()
    );
    for l in &refused {
        println!("    dead letter: {} ({})", l.reason, l.detail);
    }
    println!(
        "  camera          {:.2} s median per detector image ({}), {:.1} MB ingested",
        super::quantile(&camera_seconds, 0.5),
        match &*camera {
            Camera::Simulator => "render + write",
            Camera::Raw { .. } => "link or copy",
        },
        bytes as f64 / 1e6
    );
    println!(
        "  latency         end of readout → RawImageReady consumed: {}",
        super::latency_summary(&latencies)
    );
    println!(
        "  processed       {} detectors, {} failed; {} DiaSources, {} above the reliability cut",
        processed.done.len(),
        processed.failed.len(),
        processed.total(|o| o.counts.dia_sources as usize),
        processed.total(|o| o.reliable)
    );
    for l in &processed.failed {
        println!(
            "    dead letter: {} at {} ({})",
            l.reason, l.stage, l.detail
        );
    }
    let mut stages = super::StageTimes::default();
    for t in processed.done.iter().flat_map(|o| &o.timings) {
        stages.add(&t.stage, t.seconds);
    }
    for (stage, median) in stages.medians() {
        println!(
            "    {stage:<12} {:7.1} ms median per detector",
            median * 1e3
        );
    }
    println!(
        "  associated      {} matched to DiaObjects, {} new DiaObjects, {} solar-system; {} forced sources",
        processed.total(|o| o.matched),
        processed.total(|o| o.counts.new_dia_objects as usize),
        processed.total(|o| o.ss_matched),
        processed.total(|o| o.counts.forced_sources as usize)
    );
    let detector_latencies: Vec<f64> = processed.done.iter().map(|o| o.latency).collect();
    println!(
        "  latency         end of readout → DetectorProcessed: {}",
        super::latency_summary(&detector_latencies)
    );
    println!(
        "  alerts          {} archived, {} already archived (a rerun), {} DiaSources refused an alert; archive {}",
        processed.total(|o| o.counts.alerts as usize),
        processed.total(|o| o.alerts_already_archived),
        processed.total(|o| o.alerts_refused),
        archive_dir.display()
    );
    #[cfg(feature = "kafka")]
    if let Some(p) = &alert_topic {
        let (sent, skipped) = processed
            .done
            .iter()
            .map(|o| &o.delivered)
            .fold((0u64, 0u64), |(a, b), r| {
                (a + u64::from(r.sent), b + u64::from(r.skipped))
            });
        println!(
            "  published       {sent} alerts to Kafka topic {p}, {skipped} already sent (a rerun)"
        );
    }
    let (visits_complete, visit_alerts, within_budget) = processed.visits_complete();
    println!(
        "  visits complete {visits_complete} of {} (VisitComplete published), {visit_alerts} alerts in them; \
         {within_budget} with p98 alert latency within 60 s",
        selected.len()
    );
    let alert_latencies: Vec<f64> = processed
        .done
        .iter()
        .map(|o| (o.alerts_done - o.readout_end).as_seconds_f64())
        .collect();
    println!(
        "  latency         end of readout → a detector's alerts archived: {}",
        super::latency_summary(&alert_latencies)
    );
    let mut report_matches = String::new();
    if let Some(f) = filters {
        let (n, log) = (f.n_filters, f.log.clone());
        report_matches = format!(" --filter-matches {}", log.display());
        let s = f.finish().await?;
        let (m, p, d) = s.totals();
        println!(
            "  filters         {n} filters: {} alerts consumed, {m} matched, {p} passed, {d} dropped over quota; {} ({} reloads)",
            s.consumed,
            log.display(),
            s.reloads
        );
    }
    let records = out.join("records.jsonl");
    write_records(&records, &processed.done)?;
    println!(
        "  records         {} (apflow report --records {} --archive {}{report_matches})",
        records.display(),
        records.display(),
        archive_dir.display()
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
    lag.abort();
    if let Some(s) = server {
        s.task.abort();
    }
    Ok(())
}
