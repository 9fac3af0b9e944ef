//! The archive's Kafka consumer: reads the full alert topic in a consumer group,
//! archives each batch and only then commits its offsets (at-least-once; the archive
//! drops the duplicates a replay brings).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use apflow_core::bus::KafkaConfig;
use apflow_core::bus::kafka::base_config;
use rdkafka::Message as _;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use tokio::time::Instant;

use super::{Archive, ArchiveError};
use crate::producer::FramedAlert;

/// What to consume and how to batch.
#[derive(Clone, Debug)]
pub struct KafkaArchiveOptions {
    /// The alert topic.
    pub topic: String,
    /// Consumer group of the archive.
    pub group: String,
    /// Most alerts per archived batch.
    pub batch_max: usize,
    /// How long to wait to fill a batch.
    pub batch_wait: Duration,
    /// Stop after this long without a message (batch mode); `None` runs until
    /// `shutdown`.
    pub idle_exit: Option<Duration>,
}

impl KafkaArchiveOptions {
    /// Defaults for `topic`: group `apflow-archive`, batches of 500 or 200 ms.
    pub fn new(topic: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            group: "apflow-archive".to_owned(),
            batch_max: 500,
            batch_wait: Duration::from_millis(200),
            idle_exit: None,
        }
    }
}

fn consume_err(e: impl std::fmt::Display) -> ArchiveError {
    ArchiveError::Consume(e.to_string())
}

/// Archives the alert topic until `shutdown` completes (or the topic has been idle
/// for `idle_exit`); returns the number of alerts written. Messages that are not
/// alerts (no numeric key, not Confluent-framed, unknown schema) are logged and
/// skipped.
pub async fn archive_from_kafka(
    brokers: &str,
    kafka: &KafkaConfig,
    options: &KafkaArchiveOptions,
    archive: Arc<Archive>,
    shutdown: impl Future<Output = ()>,
) -> Result<u64, ArchiveError> {
    let consumer: StreamConsumer = base_config(brokers, kafka)
        .map_err(consume_err)?
        .set("group.id", &options.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set(
            "fetch.wait.max.ms",
            kafka.fetch_wait_max.as_millis().max(1).to_string(),
        )
        .set(
            "session.timeout.ms",
            kafka.session_timeout.as_millis().to_string(),
        )
        .create()
        .map_err(consume_err)?;
    consumer.subscribe(&[&options.topic]).map_err(consume_err)?;
    tokio::pin!(shutdown);
    let mut written = 0u64;
    let mut last_message = Instant::now();
    let mut stop = false;
    while !stop {
        let mut batch = Vec::new();
        let deadline = Instant::now() + options.batch_wait;
        while batch.len() < options.batch_max {
            tokio::select! {
                () = &mut shutdown => { stop = true; break; }
                r = tokio::time::timeout_at(deadline, consumer.recv()) => match r {
                    Err(_) => break,
                    Ok(Err(e)) => return Err(consume_err(e)),
                    Ok(Ok(m)) => {
                        let id = m
                            .key()
                            .and_then(|k| std::str::from_utf8(k).ok())
                            .and_then(|k| k.parse::<i64>().ok());
                        let alert = id.map(|id| FramedAlert {
                            dia_source_id: id,
                            framed: bytes::Bytes::copy_from_slice(m.payload().unwrap_or_default()),
                        });
                        match alert.map(|a| archive.check(&a).map(|_| a)) {
                            Some(Ok(a)) => batch.push(a),
                            Some(Err(e)) => tracing::warn!(
                                partition = m.partition(), offset = m.offset(), error = %e,
                                "Not an archivable alert; skipped."),
                            None => tracing::warn!(
                                partition = m.partition(), offset = m.offset(),
                                "Message without a numeric diaSourceId key; skipped."),
                        }
                    }
                }
            }
        }
        if batch.is_empty() {
            if options
                .idle_exit
                .is_some_and(|d| last_message.elapsed() >= d)
            {
                break;
            }
            continue;
        }
        last_message = Instant::now();
        let a = archive.clone();
        let r = tokio::task::spawn_blocking(move || a.put_batch(&batch))
            .await
            .map_err(consume_err)??;
        written += r.written as u64;
        consumer
            .commit_consumer_state(CommitMode::Sync)
            .map_err(consume_err)?;
    }
    consumer.unsubscribe();
    Ok(written)
}
