//! `apflow ingest`: the ingest service.

use std::path::PathBuf;
use std::time::Duration;

use apflow_core::bus::{Bus, EventPublisher, Topics};
use apflow_core::telemetry::http;
use apflow_ingest::watch::DirectoryWatcher;
use clap::Args;

use crate::config::AppConfig;

/// `apflow ingest` options.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Landing directory to watch for raw FITS files (searched recursively).
    #[arg(long)]
    pub watch: PathBuf,
    /// How often to look.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub interval: Duration,
}

/// Runs the ingest service until SIGINT or SIGTERM.
pub async fn run(args: IngestArgs, config: &AppConfig) -> anyhow::Result<()> {
    let listen = &config.telemetry.metrics_listen;
    let _server = if listen.is_empty() {
        None
    } else {
        Some(http::serve(listen, http::router()).await?)
    };
    let bus = Bus::from_config(&config.bus)?;
    let topics = Topics::new(config.bus.topic_prefix.clone());
    bus.ensure_topics(&topics.stage_topics(config.bus.partitions))
        .await?;
    let publisher = EventPublisher::new(bus, topics);
    tracing::info!(dir = %args.watch.display(), bus = %config.bus.url, "Ingest watching.");
    // SIGTERM too: that is how Kubernetes stops a pod.
    DirectoryWatcher::new(args.watch)
        .run(publisher, args.interval, super::stop_signal())
        .await?;
    Ok(())
}
