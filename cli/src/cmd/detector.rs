//! One detector through the science core, the association stage and the alert stage:
//! what `apflow run`'s process stage and the `apflow process` worker service share.
//!
//! [`process_detector`] takes one detector's snaps (their `RawImageReady` events), runs
//! the science core off the async workers, associates and stores the results in the
//! APDB (one idempotent store), assembles one alert per DiaSource, publishes them (to
//! Kafka through the alert producer, or to the in-process alert topic), archives them
//! when the process keeps the archive itself (`apflow run`; a deployment's archive is
//! its own consumer of the stream, `apflow archive run`), and publishes
//! `DetectorProcessed` — or a dead letter naming the stage that refused the detector.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use apflow_alert_dist::archive::Archive;
#[cfg(feature = "kafka")]
use apflow_alert_dist::ledger::Ledger;
use apflow_alert_dist::packet::{
    AlertEncoder, AlertSources, AssembleConfig, DeadLetter as AlertDeadLetter, VisitContext,
    assemble,
};
#[cfg(feature = "kafka")]
use apflow_alert_dist::producer::AlertProducer;
use apflow_alert_dist::producer::{DetectorAlerts, DetectorReport, FramedAlert};
#[cfg(feature = "kafka")]
use apflow_alert_dist::schema::SCHEMA_ID;
use apflow_apdb::AnyApdb;
use apflow_apdb::partition::DEFAULT_MARGIN;
use apflow_core::bus::{Delivery, EventPublisher};
use apflow_core::events::{
    AlertsDelivered, DeadLetter, DetectorCounts, DetectorProcessed, DetectorStatus, ErrorClass,
    NextVisit, Original, RawImageReady, StageTiming,
};
use apflow_core::geom::SkyPolygon;
use apflow_core::ids::{DetectorId, DiaSourceId, VisitId};
use apflow_core::telemetry::events::StageFinished;
use apflow_core::time::MjdTai;
use apflow_prompt_proc::apdb_stage::{
    AssociateError, Associated, DetectorVisit, associate_and_store, dia_source_records,
    forced_photometry,
};
use apflow_prompt_proc::association::{AssociationConfig, SsPrediction};
use apflow_prompt_proc::cutout::CutoutSet;
use apflow_prompt_proc::pipeline::DetectorResult;
use apflow_prompt_proc::service::ProcessContext;
use apflow_sim::Night;
use chrono::Utc;
use tokio::sync::Notify;

#[cfg(feature = "kafka")]
use crate::config::AppConfig;

/// How long a detector's alerts wait for their visit's `NextVisit` (the scheduler's
/// fields) before they go out without them (null `observation_reason` and
/// `target_name`, as when the scheduler says nothing).
pub(crate) const CONTEXT_WAIT: Duration = Duration::from_secs(10);

/// The scheduler's fields of each visit, from its `NextVisit`: known up front in
/// `apflow run`, learnt from the next-visit topic by the `apflow process` worker.
#[derive(Debug, Default)]
pub(crate) struct VisitContexts {
    known: Mutex<HashMap<VisitId, VisitContext>>,
    added: Notify,
}

impl VisitContexts {
    /// Contexts of these announcements.
    pub(crate) fn of(next_visits: &[NextVisit]) -> Self {
        let c = Self::default();
        for nv in next_visits {
            c.insert(nv);
        }
        c
    }

    /// Learns a visit's fields.
    pub(crate) fn insert(&self, nv: &NextVisit) {
        self.known
            .lock()
            .expect("visit contexts")
            .insert(nv.visit, VisitContext::from_next_visit(nv));
        self.added.notify_waiters();
    }

    /// The visit's fields, waiting at most `wait` for its announcement.
    pub(crate) async fn get(&self, visit: VisitId, wait: Duration) -> Option<VisitContext> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let added = self.added.notified();
            tokio::pin!(added);
            added.as_mut().enable();
            if let Some(c) = self.known.lock().expect("visit contexts").get(&visit) {
                return Some(c.clone());
            }
            if tokio::time::timeout_at(deadline, added).await.is_err() {
                return None;
            }
        }
    }
}

/// What a detector task returns: its outcome, a stage's refusal (published as a dead
/// letter), or an error of the task itself (the bus).
pub(crate) type DetectorTask = anyhow::Result<Result<DetectorOutcome, DeadLetter>>;

/// Each detector's snaps, gathered from `RawImageReady` until all have arrived.
#[derive(Debug)]
pub(crate) struct SnapGroups {
    snaps: usize,
    pending: HashMap<(u64, u16), Vec<(RawImageReady, Delivery)>>,
}

impl SnapGroups {
    /// Detectors of `snaps` snaps each.
    pub(crate) fn new(snaps: usize) -> Self {
        Self {
            snaps,
            pending: HashMap::new(),
        }
    }

    /// Adds one snap; the detector's snaps in exposure order once all are there.
    pub(crate) fn add(
        &mut self,
        e: RawImageReady,
        d: Delivery,
    ) -> Option<Vec<(RawImageReady, Delivery)>> {
        let key = (e.visit.0, e.detector.0);
        let group = self.pending.entry(key).or_default();
        group.push((e, d));
        if group.len() < self.snaps {
            return None;
        }
        let mut group = self.pending.remove(&key)?;
        group.sort_by_key(|(e, _)| e.exposure.0);
        Some(group)
    }

    /// Detectors with some of their snaps still missing (the worker service's idle test).
    #[cfg_attr(not(feature = "kafka"), allow(dead_code))]
    pub(crate) fn incomplete(&self) -> usize {
        self.pending.len()
    }
}

/// Processes one detector's snaps in `tasks` once `limit` grants a worker; the snaps are
/// acknowledged only once the outcome is published (at-least-once).
pub(crate) async fn spawn_detector(
    tasks: &mut tokio::task::JoinSet<DetectorTask>,
    limit: &Arc<tokio::sync::Semaphore>,
    stage: &Arc<Stage>,
    group: Vec<(RawImageReady, Delivery)>,
) -> anyhow::Result<()> {
    let permit = limit.clone().acquire_owned().await?;
    let stage = stage.clone();
    tasks.spawn(async move {
        let r = process_detector(&stage, &group).await;
        if r.is_ok() {
            for (_, d) in group {
                d.ack();
            }
        }
        drop(permit);
        r
    });
    Ok(())
}

/// What one detector came to.
#[derive(Debug)]
pub(crate) struct DetectorOutcome {
    pub(crate) visit: VisitId,
    pub(crate) detector: DetectorId,
    /// What reached the stream: the Kafka producer's report, or on the embedded bus the
    /// archive's (archival is the alerts' delivery there).
    pub(crate) delivered: DetectorReport,
    /// End of readout (last snap) → DetectorProcessed published, seconds.
    pub(crate) latency: f64,
    pub(crate) counts: DetectorCounts,
    pub(crate) reliable: usize,
    pub(crate) matched: usize,
    pub(crate) ss_matched: usize,
    /// DiaSources that got no alert.
    pub(crate) alerts_refused: usize,
    /// Alerts an earlier run of the detector had delivered (the archive held them, or
    /// without an archive here the producer's ledger): not sent again.
    pub(crate) alerts_already_archived: usize,
    /// End of readout (last snap).
    pub(crate) readout_end: chrono::DateTime<Utc>,
    /// The detector's alerts archived (and published, on Kafka); minus `readout_end`,
    /// the alert latency.
    pub(crate) alerts_done: chrono::DateTime<Utc>,
    pub(crate) timings: Vec<StageTiming>,
}

/// What every detector's processing shares.
#[derive(Debug)]
pub(crate) struct Stage {
    pub(crate) ctx: Arc<ProcessContext>,
    pub(crate) apdb: AnyApdb,
    /// The simulator's night: its solar-system ephemerides predict where SSObjects are.
    pub(crate) night: Arc<Night>,
    pub(crate) association: AssociationConfig,
    pub(crate) publisher: EventPublisher,
    /// The scheduler's fields of each visit, for the alerts.
    pub(crate) contexts: Arc<VisitContexts>,
    pub(crate) assemble: AssembleConfig,
    /// The alert archive when this process keeps it (`apflow run`); `None` in the
    /// `apflow process` worker, whose alerts the archive service reads from Kafka.
    pub(crate) archive: Option<Arc<Archive>>,
    /// The alert producer when the bus is Kafka.
    #[cfg(feature = "kafka")]
    pub(crate) producer: Option<AlertProducer>,
    /// The in-process alert topic, when the filtering service runs on the in-process bus.
    pub(crate) alert_feed: Option<super::run_filters::AlertFeed>,
}

fn file_path(uri: &str) -> PathBuf {
    PathBuf::from(uri.strip_prefix("file://").unwrap_or(uri))
}

/// A dead letter for one detector, pointing at its first raw file.
fn detector_letter(
    first: &RawImageReady,
    stage: String,
    reason: &str,
    detail: String,
    class: ErrorClass,
) -> DeadLetter {
    DeadLetter {
        original: Original::Reference {
            uri: first.image_uri.clone(),
        },
        source_topic: None,
        stage,
        reason: reason.into(),
        detail,
        class,
        visit: Some(first.visit),
        detector: Some(first.detector),
        at: Utc::now(),
    }
}

/// Solar-system objects predicted inside `footprint` (plus the APDB margin) at `t`.
fn ss_predictions(night: &Night, footprint: &SkyPolygon, t: MjdTai) -> Vec<SsPrediction> {
    night
        .solar_system_objects()
        .iter()
        .filter_map(|o| {
            let p = o.position(t.0);
            footprint.contains_with_margin(p, DEFAULT_MARGIN).then(|| {
                let (ra, dec) = p.to_radec_deg();
                SsPrediction {
                    ss_object_id: o.id as i64,
                    ra,
                    dec,
                }
            })
        })
        .collect()
}

/// The association stage for one processed detector: records, APDB read, association,
/// forced photometry (pixel work, off the async workers), one store.
async fn associate(
    stage: &Stage,
    visit: &DetectorVisit,
    result: &DetectorResult,
) -> Result<Associated, AssociateError> {
    let processed = MjdTai::from_utc(Utc::now())?;
    let records = dia_source_records(visit, &result.sources, &result.wcs, processed)?;
    let footprint = visit.footprint(&result.wcs)?;
    let predictions = ss_predictions(&stage.night, &footprint, visit.midpoint);
    associate_and_store(
        &stage.apdb,
        visit,
        &footprint,
        records,
        &predictions,
        &stage.association,
        |targets| {
            tokio::task::block_in_place(|| {
                forced_photometry(visit, result, targets, &stage.ctx.config.measure, processed)
            })
        },
    )
    .await
}

/// Assembles one alert per DiaSource: the framed packets and the DiaSources refused an
/// alert. Blocking (FITS, Avro).
fn assemble_alerts(
    stage: &Stage,
    a: &Associated,
    cutouts: &HashMap<DiaSourceId, CutoutSet>,
    context: &VisitContext,
) -> (Vec<FramedAlert>, Vec<AlertDeadLetter>) {
    let assembled = assemble(
        &AlertSources {
            dia_sources: &a.batch.sources,
            dia_objects: &a.batch.objects,
            ss_objects: &[],
            history: &a.history_sources,
            forced: &a.history_forced,
            cutouts,
        },
        context,
        &stage.assemble,
        &mut AlertEncoder::new(),
    );
    let framed = assembled
        .packets
        .into_iter()
        .map(|p| FramedAlert {
            dia_source_id: p.dia_source_id.0,
            framed: p.bytes.into(),
        })
        .collect();
    (framed, assembled.dead_letters)
}

/// Publishes one detector's alerts to Kafka when the run has a producer (the bus is
/// Kafka): `Ok(None)` on the embedded bus, where the archive is the stream.
async fn publish_alerts(
    stage: &Stage,
    batch: DetectorAlerts<'_>,
) -> Result<Option<DetectorReport>, String> {
    if let Some(feed) = &stage.alert_feed {
        feed.publish(batch.alerts)
            .await
            .map_err(|e| e.to_string())?;
    }
    #[cfg(feature = "kafka")]
    if let Some(p) = &stage.producer {
        return p
            .send_detector(batch)
            .await
            .map(Some)
            .map_err(|e| e.to_string());
    }
    let _ = (stage, batch);
    Ok(None)
}

/// Refuses a detector: publishes `letter` and a failed `DetectorProcessed` naming
/// `failed_stage`; returns the letter.
async fn refuse(
    stage: &Stage,
    first: &RawImageReady,
    readout_end: chrono::DateTime<Utc>,
    letter: DeadLetter,
    failed_stage: String,
) -> anyhow::Result<DeadLetter> {
    stage.publisher.dead_letter(&letter).await?;
    stage
        .publisher
        .publish(&DetectorProcessed {
            visit: first.visit,
            detector: first.detector,
            status: DetectorStatus::Failed {
                stage: failed_stage,
                class: letter.class,
                reason: letter.reason.clone(),
            },
            counts: DetectorCounts::default(),
            timings: Vec::new(),
            readout_end,
            finished_at: Utc::now(),
            delivered: AlertsDelivered::default(),
        })
        .await?;
    Ok(letter)
}

/// Runs the science core and the association stage on one detector's snaps and
/// publishes the outcome: `Ok(Err(letter))` when a stage refused it.
pub(crate) async fn process_detector(
    stage: &Arc<Stage>,
    group: &[(RawImageReady, Delivery)],
) -> anyhow::Result<Result<DetectorOutcome, DeadLetter>> {
    let first = &group[0].0;
    let readout_end = group
        .iter()
        .map(|(e, _)| e.readout_end)
        .max()
        .expect("a group has snaps");
    let paths: Vec<PathBuf> = group.iter().map(|(e, _)| file_path(&e.image_uri)).collect();
    let started = Instant::now();
    let stage_ctx = stage.ctx.clone();
    let science = tokio::task::spawn_blocking(move || stage_ctx.process_files(&paths)).await?;
    let (visit, mut result) = match science {
        Ok(r) => r,
        Err(f) => {
            let letter = detector_letter(
                first,
                format!("process.{}", f.stage),
                f.error.reason(),
                f.to_string(),
                f.error.class(),
            );
            return Ok(Err(refuse(
                stage,
                first,
                readout_end,
                letter,
                f.stage.to_string(),
            )
            .await?));
        }
    };
    let mut timings: Vec<StageTiming> = result
        .timings
        .iter()
        .map(|t| StageTiming {
            stage: t.stage.to_string(),
            seconds: t.seconds,
        })
        .collect();
    let assoc_started = Instant::now();
    let a = match associate(stage, &visit, &result).await {
        Ok(a) => a,
        Err(e) => {
            let letter = detector_letter(
                first,
                "associate".into(),
                e.reason(),
                e.to_string(),
                e.class(),
            );
            return Ok(Err(refuse(
                stage,
                first,
                readout_end,
                letter,
                "associate".into(),
            )
            .await?));
        }
    };
    timings.extend([
        StageTiming {
            stage: "associate".into(),
            seconds: assoc_started.elapsed().as_secs_f64(),
        },
        StageTiming {
            stage: "apdb_read".into(),
            seconds: a.read_seconds,
        },
        StageTiming {
            stage: "apdb_write".into(),
            seconds: a.write_seconds,
        },
    ]);
    let reliable = result.reliable().count();
    let (matched, created, ss_matched) = (a.matched, a.created, a.ss_matched);
    let rerun = a.report.replaced_previous;
    let (n_sources, n_forced) = (a.batch.sources.len(), a.batch.forced.len());

    let alerts_started = Instant::now();
    let cutouts: HashMap<DiaSourceId, CutoutSet> = a
        .batch
        .sources
        .iter()
        .zip(std::mem::take(&mut result.sources))
        .filter_map(|(rec, s)| Some((rec.dia_source_id, s.cutouts?)))
        .collect();
    let context = match stage.contexts.get(visit.visit, CONTEXT_WAIT).await {
        Some(c) => c,
        None => {
            tracing::warn!(
                visit = visit.visit.0,
                detector = visit.detector.0,
                "No NextVisit for the visit: its alerts carry no scheduler fields."
            );
            VisitContext::default()
        }
    };
    let s = stage.clone();
    let (framed, refused) =
        tokio::task::spawn_blocking(move || assemble_alerts(&s, &a, &cutouts, &context)).await?;
    for d in &refused {
        let letter = detector_letter(
            first,
            "alerts".into(),
            d.reason.reason(),
            format!("DiaSource {}: {}", d.dia_source_id, d.reason),
            d.reason.class(),
        );
        stage.publisher.dead_letter(&letter).await?;
    }
    // Kafka first (when the bus is Kafka), then the archive: it holds what was published.
    let shutter_close = group
        .iter()
        .map(|(e, _)| e.shutter_close)
        .max()
        .expect("a group has snaps");
    let batch = DetectorAlerts {
        visit: visit.visit,
        detector: visit.detector,
        shutter_close,
        readout_end,
        alerts: &framed,
    };
    let published = match publish_alerts(stage, batch).await {
        Ok(p) => p,
        Err(reason) => {
            // Acknowledged alerts are in the producer's ledger: a rerun sends the rest.
            let letter = detector_letter(
                first,
                "alerts.publish".into(),
                "kafka_delivery",
                reason,
                ErrorClass::Retryable,
            );
            return Ok(Err(refuse(
                stage,
                first,
                readout_end,
                letter,
                "alerts.publish".into(),
            )
            .await?));
        }
    };
    let archived = match &stage.archive {
        Some(archive) => {
            let archive = archive.clone();
            Some(tokio::task::spawn_blocking(move || archive.put_batch(&framed)).await??)
        }
        None => None,
    };
    // Measured once the detector's alerts are out: acknowledged by Kafka (and archived,
    // when this process keeps the archive: after the acknowledgements).
    let alerts_done = Utc::now();
    let alert_latency = (alerts_done - readout_end).as_seconds_f64();
    // What reached the stream: Kafka's report (its latencies observed by the producer
    // from the acknowledgements), else the archive's: on the embedded bus archival is
    // the alerts' delivery, each alert's latency the detector's.
    let delivered = match (published, &archived) {
        (Some(p), _) => p,
        (None, Some(report)) => {
            for _ in 0..report.written {
                apflow_alert_dist::metrics::LATENCY_SINCE_READOUT_END_SECONDS
                    .observe(alert_latency);
            }
            DetectorReport {
                sent: report.written as u32,
                skipped: report.duplicates as u32,
                bytes: 0,
                latencies_s: vec![alert_latency; report.written],
            }
        }
        (None, None) => {
            anyhow::bail!("the detector's alerts went nowhere: no Kafka producer and no archive")
        }
    };
    // Alerts of this run and alerts an earlier run had delivered: archived or (without
    // an archive in this process) acknowledged by Kafka.
    let (alerts_new, alerts_before) = match &archived {
        Some(r) => (r.written, r.duplicates),
        None => (delivered.sent as usize, delivered.skipped as usize),
    };
    timings.push(StageTiming {
        stage: "alerts".into(),
        seconds: alerts_started.elapsed().as_secs_f64(),
    });
    for t in &timings {
        StageFinished {
            stage: &t.stage,
            seconds: t.seconds,
            since_readout: (t.stage == "alerts").then_some(alert_latency),
        }
        .emit();
    }
    let counts = DetectorCounts {
        dia_sources: n_sources as u32,
        new_dia_objects: created as u32,
        forced_sources: n_forced as u32,
        alerts: alerts_new as u32,
    };
    stage
        .publisher
        .publish(&DetectorProcessed {
            visit: visit.visit,
            detector: visit.detector,
            status: DetectorStatus::Ok,
            counts,
            timings: timings.clone(),
            readout_end,
            finished_at: Utc::now(),
            delivered: AlertsDelivered {
                sent: delivered.sent,
                already_sent: delivered.skipped,
                latencies_s: delivered.latencies_s.clone(),
            },
        })
        .await?;
    let latency = (Utc::now() - readout_end).as_seconds_f64();
    StageFinished {
        stage: "process",
        seconds: started.elapsed().as_secs_f64(),
        since_readout: Some(latency),
    }
    .emit();
    tracing::info!(
        visit = visit.visit.0,
        detector = visit.detector.0,
        dia_sources = counts.dia_sources,
        reliable,
        new_dia_objects = created,
        forced = counts.forced_sources,
        alerts = alerts_new,
        alerts_already_delivered = alerts_before,
        rerun,
        seconds = started.elapsed().as_secs_f64(),
        "Detector processed."
    );
    Ok(Ok(DetectorOutcome {
        visit: visit.visit,
        detector: visit.detector,
        delivered,
        latency,
        counts,
        reliable,
        matched,
        ss_matched,
        alerts_refused: refused.len(),
        alerts_already_archived: alerts_before,
        readout_end,
        alerts_done,
        timings,
    }))
}

/// The Kafka producer of the alert stream when the bus is Kafka (`kafka://brokers`),
/// with its ledger (what was sent, per detector) in the SQLite file `ledger` and its
/// topic created if missing.
#[cfg(feature = "kafka")]
pub(crate) async fn alert_producer(
    config: &AppConfig,
    ledger: &std::path::Path,
) -> anyhow::Result<Option<AlertProducer>> {
    let Some(brokers) = config.bus.kafka_brokers() else {
        return Ok(None);
    };
    let ledger = Arc::new(Ledger::open(ledger)?);
    let producer = AlertProducer::new(
        brokers,
        &config.bus.kafka,
        &config.producer,
        SCHEMA_ID / 100,
        ledger,
    )?;
    producer.ensure_topic().await?;
    Ok(Some(producer))
}
