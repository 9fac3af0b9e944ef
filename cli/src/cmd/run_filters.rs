//! The filtering service inside `apflow run` (`--filters DIR` or `[filters] dir`).
//!
//! The service ([`apflow_alert_dist::filter::service`]) consumes the run's alert topic
//! on the run's bus in its own consumer group and forwards each filter's matches to the
//! filter's topic on the same bus, and writes `<out>/filter-matches.jsonl` (one line
//! per forwarded alert: filter, topic, visit, detector, diaSourceId), so something
//! durable exists in the default build.
//!
//! * **Kafka bus**: the alert producer publishes to the alert topic; the service
//!   consumes it there.
//! * **In-process bus**: there is no alert stream otherwise (the archive is the
//!   embedded run's stream), so the run also publishes each detector's framed alerts
//!   to the alert topic on the in-process bus ([`AlertFeed`]). The service joins its
//!   group before the first alert, so the topic keeps only what the service has not
//!   committed yet (the in-process bus drops what every group committed; a publisher
//!   waits when a topic holds `[bus.memory] max_retained_bytes`): a night does not
//!   keep its alerts in memory. The filter topics have no consumer in the run: each
//!   keeps at most `max_retained_bytes`, oldest dropped first.
//!
//! At the end the run waits for the service to drain the topic
//! ([`FilterService::drain`]) and prints its summary.

use std::path::{Path, PathBuf};
use std::time::Duration;

use apflow_alert_dist::filter::FilterSet;
use apflow_alert_dist::filter::service::{
    FilterService, FilterServiceError, FilterServiceOptions, FilterSummary,
};
use apflow_alert_dist::producer::FramedAlert;
use apflow_alert_dist::schema::SCHEMA_ID;
use apflow_core::bus::{Bus, BusError, EventPublisher, Record, TopicSpec};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::AppConfig;

/// Publishes a detector's alerts to the alert topic of the in-process bus.
#[derive(Clone, Debug)]
pub(crate) struct AlertFeed {
    bus: Bus,
    topic: String,
}

impl AlertFeed {
    /// Publishes `alerts` (key = diaSourceId), concurrently; the first error.
    pub(crate) async fn publish(&self, alerts: &[FramedAlert]) -> Result<(), BusError> {
        let records = alerts
            .iter()
            .map(|a| Record {
                topic: self.topic.clone(),
                key: Some(a.dia_source_id.to_string()),
                payload: a.framed.to_vec(),
                headers: Vec::new(),
            })
            .collect();
        self.bus.publish_all(records).await
    }
}

/// The running service.
#[derive(Debug)]
pub(crate) struct RunFilters {
    feed: Option<AlertFeed>,
    finished: oneshot::Sender<()>,
    task: JoinHandle<Result<FilterSummary, FilterServiceError>>,
    /// Filters at start.
    pub(crate) n_filters: usize,
    /// `<out>/filter-matches.jsonl`.
    pub(crate) log: PathBuf,
}

/// The filter directory of the run: `--filters`, else `[filters] dir`, else none.
pub(crate) fn dir(arg: Option<&Path>, config: &AppConfig) -> Option<PathBuf> {
    arg.map(Path::to_path_buf).or_else(|| {
        (!config.filters.dir.as_os_str().is_empty()).then(|| config.filters.dir.clone())
    })
}

/// Loads the filters of `dir` and starts the service on the alert topic of the
/// publisher's bus, before any alert is published.
pub(crate) async fn start(
    dir: &Path,
    config: &AppConfig,
    publisher: &EventPublisher,
    out: &Path,
) -> anyhow::Result<RunFilters> {
    let set = FilterSet::load_dir(dir)?;
    let n_filters = set.len();
    let bus = publisher.bus().clone();
    let topic = config.producer.topic(SCHEMA_ID / 100);
    bus.ensure_topics(&[TopicSpec {
        name: topic.clone(),
        partitions: config.producer.partitions,
    }])
    .await?;
    let kafka = bus.backend() == "kafka";
    let log = out.join("filter-matches.jsonl");
    std::fs::create_dir_all(out)?;
    if log.exists() {
        std::fs::remove_file(&log)?;
    }
    let mut options = FilterServiceOptions::new(&topic, &config.filters);
    options.dir = Some(dir.to_path_buf());
    options.matches_log = Some(log.clone());
    options.dead_letters = Some(publisher.clone());
    let quiet = if kafka {
        Duration::from_secs(5).max(config.bus.kafka.fetch_wait_max * 20)
    } else {
        Duration::from_millis(300).max(config.filters.batch_wait * 2)
    };
    let service = FilterService::start(&bus, set, bus.clone(), options).await?;
    let (finished, rx) = oneshot::channel();
    let task = tokio::spawn(service.drain(
        async {
            let _ = rx.await;
        },
        quiet,
    ));
    println!(
        "  filters: {n_filters} from {} on {} topic {topic} → {}",
        dir.display(),
        bus.backend(),
        log.display()
    );
    Ok(RunFilters {
        feed: (!kafka).then_some(AlertFeed { bus, topic }),
        finished,
        task,
        n_filters,
        log,
    })
}

impl RunFilters {
    /// What the process stage publishes alerts with (the in-process bus only).
    pub(crate) fn feed(&self) -> Option<AlertFeed> {
        self.feed.clone()
    }

    /// Every alert is published: waits for the service to drain the topic.
    pub(crate) async fn finish(self) -> anyhow::Result<FilterSummary> {
        let _ = self.finished.send(());
        Ok(self.task.await??)
    }
}
