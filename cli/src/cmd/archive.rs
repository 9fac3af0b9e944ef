//! `apflow archive …`: the archive service (`run`: every alert of the stream kept,
//! served over HTTP) and reading the archive (`get`, `schema`). The archive is a
//! directory or, in a build with the `s3` feature, an S3-compatible object store:
//! `--dir` takes a path, a `file://` URL or `s3://bucket/prefix?options`
//! ([`ArchiveLocation`]).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use apflow_alert_dist::archive::{Archive, ArchiveLocation};
use apflow_alert_dist::producer::FramedAlert;
use apflow_alert_dist::registry::SchemaRegistry;
use apflow_core::bus::{Bus, Delivery, EventPublisher, Subscription, Topics};
use apflow_core::events::DeadLetter;
use apflow_core::telemetry::http;
use clap::{Args, Subcommand};

use crate::config::AppConfig;

/// Alert archive commands.
#[derive(Debug, Subcommand)]
pub enum ArchiveCommand {
    /// The archive service: consume the full alert topic in a consumer group, keep
    /// every alert (one gzip object per alert, one Avro container file per night, the
    /// schemas by id), acknowledge only what is written, and serve
    /// `GET /v1/alerts/<id>`, `GET /v1/schemas/<id>` and the schema registry API with
    /// /metrics.
    Run(ArchiveRunArgs),
    /// Write an archived alert — its exact wire bytes (Confluent-framed Avro) — to
    /// standard output or a file.
    Get {
        /// The alert's diaSourceId.
        id: i64,
        #[command(flatten)]
        at: ArchiveAt,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Print a writer schema stored in the archive, by schema id.
    Schema {
        /// The schema id (e.g. 1100).
        id: u32,
        #[command(flatten)]
        at: ArchiveAt,
    },
}

/// The archive `get` and `schema` read.
#[derive(Debug, Args)]
pub struct ArchiveAt {
    /// The archive: a directory, or `s3://bucket/prefix` (feature `s3`).
    #[arg(
        long,
        visible_alias = "url",
        env = "APFLOW_ARCHIVE_DIR",
        value_name = "DIR|URL"
    )]
    dir: ArchiveLocation,
}

/// `apflow archive run` options.
#[derive(Debug, Args)]
pub struct ArchiveRunArgs {
    /// The archive: a directory (created if missing), or (feature `s3`) an
    /// S3-compatible object store, `s3://bucket/prefix`, with optional query keys
    /// `endpoint`, `region`, `allow_http`, `spool`, `upload_interval`
    /// (e.g. `s3://alerts/lsst?endpoint=http://minio:9000&allow_http=true`); endpoint,
    /// region and credentials default to the `AWS_*` environment variables.
    #[arg(
        long,
        visible_alias = "url",
        env = "APFLOW_ARCHIVE_DIR",
        value_name = "DIR|URL"
    )]
    pub dir: ArchiveLocation,
    /// S3: the local directory of the nights being written (overrides the URL's
    /// `spool=`; default `<temp dir>/apflow-archive-spool/<bucket>/<prefix>`). Put it
    /// on a persistent volume when `upload_interval` is set.
    #[arg(long, value_name = "DIR", env = "APFLOW_ARCHIVE_SPOOL")]
    pub spool: Option<PathBuf>,
    /// The full alert topic (default: the alert producer's, `[producer] topic_template`
    /// for the current schema's major version).
    #[arg(long)]
    pub topic: Option<String>,
    /// Consumer group on the alert topic; a new group starts at the earliest retained
    /// alert.
    #[arg(long, default_value = "apflow-archive")]
    pub group: String,
    /// Alerts written per batch at most (one container-file block per night).
    #[arg(long, default_value_t = 500)]
    pub batch: usize,
    /// Exit after this long without a message (batch mode), e.g. `10s`.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub idle_exit: Option<Duration>,
    /// Address for the HTTP API and /metrics (port 0 picks one; empty disables;
    /// default `[telemetry] metrics_listen`).
    #[arg(long)]
    pub listen: Option<String>,
}

/// Runs an archive command.
pub fn run(cmd: ArchiveCommand, config: &AppConfig) -> anyhow::Result<()> {
    match cmd {
        ArchiveCommand::Run(args) => {
            return tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?
                .block_on(serve(args, config));
        }
        ArchiveCommand::Get { id, at, out } => {
            let bytes = open(&at.dir)?.get_alert(id)?;
            match out {
                Some(path) => std::fs::write(&path, &bytes)
                    .with_context(|| format!("writing {}", path.display()))?,
                None => std::io::stdout().lock().write_all(&bytes)?,
            }
        }
        ArchiveCommand::Schema { id, at } => println!("{}", open(&at.dir)?.get_schema(id)?),
    }
    Ok(())
}

/// Opens an existing archive (a directory must hold `alerts/`).
pub(crate) fn open(location: &ArchiveLocation) -> anyhow::Result<Archive> {
    if let ArchiveLocation::Dir(dir) = location {
        anyhow::ensure!(
            dir.join("alerts").is_dir(),
            "{} is not an alert archive (no alerts/ directory)",
            dir.display()
        );
    }
    Ok(location.open()?)
}

/// What the archive service did.
#[derive(Debug, Default)]
struct ArchiveTotals {
    written: usize,
    duplicates: usize,
    refused: usize,
}

/// The archive service: until SIGINT, SIGTERM or `--idle-exit`.
async fn serve(args: ArchiveRunArgs, config: &AppConfig) -> anyhow::Result<()> {
    let registry = Arc::new(SchemaRegistry::current(&config.producer)?);
    let mut location = args.dir.clone();
    if let (ArchiveLocation::S3(o), Some(spool)) = (&mut location, &args.spool) {
        o.spool = Some(spool.clone());
    }
    let archive = Arc::new(tokio::task::spawn_blocking(move || location.open()).await??);
    let (a, r) = (archive.clone(), registry.clone());
    tokio::task::spawn_blocking(move || a.put_schemas(&r)).await??;
    let router = http::router()
        .merge(registry.clone().router())
        .merge(archive.clone().router());
    let server = super::serve_http(args.listen.as_deref(), config, router).await?;
    if let Some(s) = &server {
        println!("archive: http://{}/v1/alerts/<id>, /metrics", s.addr);
    }
    let bus = Bus::from_config(&config.bus)?;
    let topic = super::ensure_alert_input(&bus, config, args.topic.as_deref()).await?;
    let publisher = EventPublisher::new(bus.clone(), Topics::new(config.bus.topic_prefix.clone()));
    let mut sub = bus
        .subscribe(std::slice::from_ref(&topic), &args.group)
        .await?;
    println!(
        "archive: {} from topic {} on {} (group {})",
        args.dir,
        topic,
        bus.backend(),
        args.group
    );
    let mut totals = ArchiveTotals::default();
    let stop = super::stop_signal();
    tokio::pin!(stop);
    let idle = args.idle_exit.unwrap_or(Duration::MAX);
    let poll = idle.min(Duration::from_secs(1));
    let mut idle_for = Duration::ZERO;
    loop {
        let first = tokio::select! {
            _ = &mut stop => break,
            r = sub.next_timeout(poll) => r?,
        };
        let Some(first) = first else {
            // Idle: upload the nights written since their last upload (S3).
            flush(&archive).await;
            idle_for += poll;
            if idle_for >= idle {
                println!(
                    "archive: idle for {}; exiting",
                    humantime::format_duration(idle)
                );
                break;
            }
            continue;
        };
        idle_for = Duration::ZERO;
        let batch = gather(&mut sub, first, args.batch.max(1)).await?;
        archive_batch(&archive, &publisher, &topic, batch, &mut totals).await?;
    }
    flush(&archive).await;
    sub.close(Duration::from_secs(10)).await;
    println!(
        "archive: {} alerts written, {} already archived, {} messages refused (dead letters)",
        totals.written, totals.duplicates, totals.refused
    );
    if let Some(s) = server {
        s.task.abort();
    }
    Ok(())
}

/// Uploads the nights changed since their last upload (an S3 archive with an upload
/// interval; nothing to do otherwise). A failure is logged: the spool keeps the nights
/// and the next flush, batch or shutdown uploads them.
async fn flush(archive: &Arc<Archive>) {
    let a = archive.clone();
    match tokio::task::spawn_blocking(move || a.flush()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "Uploading the nightly files failed."),
        Err(e) => tracing::error!(error = %e, "Uploading the nightly files failed."),
    }
}

/// `first` and whatever else is already waiting, up to `max` messages.
async fn gather(
    sub: &mut Subscription,
    first: Delivery,
    max: usize,
) -> anyhow::Result<Vec<Delivery>> {
    let mut batch = vec![first];
    while batch.len() < max {
        match sub.next_timeout(Duration::from_millis(20)).await? {
            Some(d) => batch.push(d),
            None => break,
        }
    }
    Ok(batch)
}

/// Archives one batch: a message that is not an archivable alert (no diaSourceId key,
/// not Confluent-framed, an unknown schema id, an id that encodes no visit) is
/// dead-lettered with the reason; the rest are written, then every message is
/// acknowledged. A write that fails (disk full, permissions) is retried every few
/// seconds, its messages unacknowledged meanwhile: nothing is skipped.
async fn archive_batch(
    archive: &Arc<Archive>,
    publisher: &EventPublisher,
    topic: &str,
    mut batch: Vec<Delivery>,
    totals: &mut ArchiveTotals,
) -> anyhow::Result<()> {
    let mut good = Vec::with_capacity(batch.len());
    for d in &mut batch {
        let m = &mut d.message;
        // The bytes move out of the message (only its position is needed to acknowledge it).
        let framed = bytes::Bytes::from(std::mem::take(&mut m.payload));
        let id = std::str::from_utf8(m.key.as_deref().unwrap_or_default())
            .ok()
            .and_then(|k| k.parse::<i64>().ok());
        let why = match id {
            None => "the message key is not a diaSourceId".to_owned(),
            Some(id) => {
                let alert = FramedAlert {
                    dia_source_id: id,
                    framed: framed.clone(),
                };
                match archive.check(&alert) {
                    Ok(_) => {
                        good.push(alert);
                        continue;
                    }
                    Err(e) => e.to_string(),
                }
            }
        };
        tracing::warn!(topic, partition = m.partition, offset = m.offset, error = %why,
            "Not an archivable alert; dead-lettered.");
        publisher
            .dead_letter(&DeadLetter::not_an_alert(
                &framed,
                topic,
                m.partition,
                m.offset,
                "archive",
                &why,
            ))
            .await?;
        totals.refused += 1;
    }
    let good = Arc::new(good);
    loop {
        let (a, g) = (archive.clone(), good.clone());
        match tokio::task::spawn_blocking(move || a.put_batch(&g)).await? {
            Ok(r) => {
                totals.written += r.written;
                totals.duplicates += r.duplicates;
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, alerts = good.len(), "Archiving failed; retrying in 5 s.");
                tokio::time::sleep(Duration::from_secs(5)).await;
            }
        }
    }
    for d in batch {
        d.ack();
    }
    Ok(())
}
