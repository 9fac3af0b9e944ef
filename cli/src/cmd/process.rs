//! `apflow process`: the prompt-processing worker service, the stage `apflow run` runs
//! in-process, on its own for a deployment (one detector per task, as many replicas as
//! the raw-image backlog needs; the Helm chart scales them on consumer lag with KEDA).
//!
//! It joins the consumer group `<prefix>process` on the raw-image topic (a detector's
//! snaps share its partition: they are keyed by detector), gathers each detector's
//! snaps, and runs [`super::detector::process_detector`] on them: science core,
//! association and one APDB store, alerts to Kafka through the idempotent producer
//! (its ledger keeps a rerun from sending twice), `DetectorProcessed` or a dead letter.
//! The snaps are acknowledged only after that, so a worker killed mid-detector leaves
//! them to the next member of the group. The scheduler's fields for the alerts come
//! from the next-visit topic, read from its start by every worker (a group of its own
//! that never commits). Visits are accounted for (`VisitComplete`) by `apflow
//! alert-dist`, the archive is `apflow archive run`: both read what the workers publish.

use std::path::PathBuf;
#[cfg(feature = "kafka")]
use std::sync::Arc;
use std::time::Duration;

use clap::Args;

use crate::config::AppConfig;

/// `apflow process` options.
#[derive(Debug, Args)]
pub struct ProcessArgs {
    /// The night directory (`apflow simulate --out DIR` layout): master calibrations
    /// (`calib/`), template tiles (`templates/`), the reference catalogue
    /// (`refcat.csv`) and `night.json`, whose solar-system ephemerides predict where
    /// SSObjects are.
    #[arg(long, value_name = "DIR")]
    pub night: PathBuf,
    /// Detectors processed at once by this worker.
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Consumer group on the raw-image topic (prefixed like topics).
    #[arg(long, default_value = "process")]
    pub group: String,
    /// APDB URL (default `[apdb] url`).
    #[arg(long)]
    pub apdb: Option<String>,
    /// The alert producer's ledger (SQLite): what was sent, per detector, so that a
    /// rerun of a detector on this worker sends only what is missing.
    #[arg(long, value_name = "FILE", default_value = "alerts-ledger.sqlite")]
    pub ledger: PathBuf,
    /// Exit after this long with nothing to do (batch mode), e.g. `30s`.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub idle_exit: Option<Duration>,
    /// Address for /metrics and /healthz (port 0 picks one; empty disables; default
    /// `[telemetry] metrics_listen`).
    #[arg(long)]
    pub metrics_listen: Option<String>,
}

/// Runs the worker until SIGINT, SIGTERM or `--idle-exit`.
pub async fn run(args: ProcessArgs, config: &AppConfig) -> anyhow::Result<()> {
    #[cfg(feature = "kafka")]
    {
        serve(args, config).await
    }
    #[cfg(not(feature = "kafka"))]
    {
        let _ = (args, config);
        anyhow::bail!(
            "apflow process is a worker on a shared Kafka bus and this build has no Kafka: \
             rebuild with `--features kafka` (apflow run runs every stage in one process)"
        )
    }
}

/// Detectors finished by this worker, for its summary.
#[cfg(feature = "kafka")]
#[derive(Debug, Default)]
struct Totals {
    done: usize,
    failed: usize,
    alerts: u64,
}

#[cfg(feature = "kafka")]
async fn serve(args: ProcessArgs, config: &AppConfig) -> anyhow::Result<()> {
    use apflow_apdb::AnyApdb;
    use apflow_core::bus::{Bus, EventConsumer, EventPublisher, Topics};
    use apflow_core::events::{NextVisit, RawImageReady};
    use apflow_core::telemetry::http;
    use apflow_prompt_proc::service::ProcessContext;
    use tokio::sync::Semaphore;

    use super::detector::{SnapGroups, Stage, VisitContexts, alert_producer, spawn_detector};

    let bus = Bus::from_config(&config.bus)?;
    if config.bus.kafka_brokers().is_none() {
        anyhow::bail!(
            "apflow process needs a shared bus: set [bus] url = \"kafka://host:port\" \
             (on the in-process bus nothing else would see its input or its alerts; \
             apflow run runs every stage in one process)"
        );
    }
    let server = super::serve_http(args.metrics_listen.as_deref(), config, http::router()).await?;
    if let Some(s) = &server {
        println!("metrics: http://{}/metrics", s.addr);
    }
    let topics = Topics::new(config.bus.topic_prefix.clone());
    bus.ensure_topics(&topics.stage_topics(config.bus.partitions))
        .await?;
    let publisher = EventPublisher::new(bus, topics);

    let dir = args.night.clone();
    let science = config.science.clone();
    let (night, ctx) = tokio::task::spawn_blocking(move || {
        anyhow::Ok((
            super::camera::open_night_dir(&dir)?,
            ProcessContext::open(&dir, science)?,
        ))
    })
    .await??;
    let snaps = usize::from(night.spec().snaps);
    let apdb_url = args.apdb.clone().unwrap_or_else(|| config.apdb.url.clone());
    let apdb = AnyApdb::open_or_create(&apdb_url, &config.apdb.config).await?;
    let producer = alert_producer(config, &args.ledger).await?;
    let alert_topic = producer.as_ref().map(|p| p.topic().to_owned());
    let contexts = Arc::new(VisitContexts::default());
    let stage = Arc::new(Stage {
        ctx: Arc::new(ctx),
        apdb,
        night: Arc::new(night),
        association: config.association.clone(),
        publisher: publisher.clone(),
        contexts: contexts.clone(),
        assemble: apflow_alert_dist::packet::AssembleConfig {
            history_days: config.association.history_days,
            ..config.alerts.clone()
        },
        archive: None,
        producer,
        alert_feed: None,
    });

    // The scheduler's announcements, from the start of the topic; never committed, so
    // a restarted worker reads them again.
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
    let visits_group = format!("{}-visits-{host}-{}", args.group, std::process::id());
    let mut next_visits =
        EventConsumer::<NextVisit>::subscribe(&publisher, &visits_group, "process").await?;
    let learn = {
        let contexts = contexts.clone();
        tokio::spawn(async move {
            loop {
                match next_visits.next().await {
                    // Never acknowledged: this group never commits.
                    Ok((nv, _unacknowledged)) => contexts.insert(&nv),
                    Err(e) => {
                        tracing::warn!(error = %e, "Reading next-visit failed; retrying.");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
            }
        })
    };

    let mut raw =
        EventConsumer::<RawImageReady>::subscribe(&publisher, &args.group, "process").await?;
    println!(
        "process: {} on {} (group {}), {} detector(s) at once, {} snap(s) per detector, APDB {}, alerts to {}",
        args.night.display(),
        config.bus.url,
        publisher.topics().group(&args.group),
        args.workers.max(1),
        snaps,
        apdb_url,
        alert_topic.as_deref().unwrap_or("-")
    );
    let mut groups = SnapGroups::new(snaps);
    let limit = Arc::new(Semaphore::new(args.workers.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut totals = Totals::default();
    let stop = super::stop_signal();
    tokio::pin!(stop);
    let mut last_activity = tokio::time::Instant::now();
    let mut fatal = None;
    loop {
        // Resolves once the worker has been idle for --idle-exit (never without it).
        let idle_exit = async {
            match args.idle_exit {
                Some(idle) => tokio::time::sleep_until(last_activity + idle).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut stop => {
                println!("process: stopping (signal); {} detector(s) in progress finish first", tasks.len());
                break;
            }
            _ = idle_exit, if tasks.is_empty() && groups.incomplete() == 0 => {
                println!("process: idle; exiting");
                break;
            }
            r = raw.next() => {
                last_activity = tokio::time::Instant::now();
                let (e, d) = r?;
                if let Some(group) = groups.add(e, d) {
                    spawn_detector(&mut tasks, &limit, &stage, group).await?;
                }
            }
            Some(r) = tasks.join_next() => {
                last_activity = tokio::time::Instant::now();
                if let Err(e) = totals.add(r) {
                    println!("process: stopping: {e:#}");
                    fatal = Some(e);
                    break;
                }
            }
        }
    }
    while let Some(r) = tasks.join_next().await {
        if let Err(e) = totals.add(r) {
            fatal.get_or_insert(e);
        }
    }
    learn.abort();
    raw.close(Duration::from_secs(10)).await;
    println!(
        "process: {} detector(s) processed, {} refused (dead letters), {} alerts sent; {} snap group(s) incomplete, left to the group",
        totals.done,
        totals.failed,
        totals.alerts,
        groups.incomplete()
    );
    if let Some(s) = server {
        s.task.abort();
    }
    match fatal {
        // Its snaps were not acknowledged: the group hands them to the next member
        // (this worker restarted, or another).
        Some(e) => {
            Err(e.context("a detector could not be finished; its snaps are left to the group"))
        }
        None => Ok(()),
    }
}

#[cfg(feature = "kafka")]
type TaskResult = Result<super::detector::DetectorTask, tokio::task::JoinError>;

#[cfg(feature = "kafka")]
impl Totals {
    /// Counts one finished detector task. A detector refused by a stage is a dead
    /// letter and counts as failed; an error of the task itself (the bus or a panic)
    /// is returned: the worker stops taking work and exits with it.
    fn add(&mut self, r: TaskResult) -> anyhow::Result<()> {
        match r {
            Ok(Ok(Ok(o))) => {
                self.done += 1;
                self.alerts += u64::from(o.delivered.sent);
                Ok(())
            }
            Ok(Ok(Err(_letter))) => {
                self.failed += 1;
                Ok(())
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(anyhow::anyhow!("detector task panicked: {e}")),
        }
    }
}
