//! The archive's consumer of the full alert stream, on the event bus (in-process or
//! Kafka): reads the alert topic in a consumer group, archives each batch and only
//! then acknowledges and commits its messages (at-least-once; the archive drops the
//! duplicates a replay brings). Offsets, commits and leaving the group are the bus's
//! ([`apflow_core::bus::Subscription`]).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use apflow_core::bus::Bus;
use tokio::time::Instant;

use super::{Archive, ArchiveError};
use crate::producer::FramedAlert;

/// What to consume and how to batch.
#[derive(Clone, Debug)]
pub struct ArchiveConsumerOptions {
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

impl ArchiveConsumerOptions {
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

/// Archives the alert topic of `bus` until `shutdown` completes (or the topic has
/// been idle for `idle_exit`); returns the number of alerts written. Messages that are
/// not alerts (no numeric key, not Confluent-framed, unknown schema) are logged,
/// acknowledged and skipped.
pub async fn archive_from_bus(
    bus: &Bus,
    options: &ArchiveConsumerOptions,
    archive: Arc<Archive>,
    shutdown: impl Future<Output = ()>,
) -> Result<u64, ArchiveError> {
    let mut sub = bus
        .subscribe(std::slice::from_ref(&options.topic), &options.group)
        .await
        .map_err(consume_err)?;
    tokio::pin!(shutdown);
    let mut written = 0u64;
    let mut last_message = Instant::now();
    let mut stop = false;
    while !stop {
        let mut batch = Vec::new();
        let mut deliveries = Vec::new();
        let deadline = Instant::now() + options.batch_wait;
        while batch.len() < options.batch_max {
            let wait = deadline.saturating_duration_since(Instant::now());
            tokio::select! {
                () = &mut shutdown => { stop = true; break; }
                r = sub.next_timeout(wait) => match r.map_err(consume_err)? {
                    None => break,
                    Some(mut d) => {
                        let m = &mut d.message;
                        let id = m
                            .key
                            .as_deref()
                            .and_then(|k| std::str::from_utf8(k).ok())
                            .and_then(|k| k.parse::<i64>().ok());
                        let alert = id.map(|id| FramedAlert {
                            dia_source_id: id,
                            framed: std::mem::take(&mut m.payload).into(),
                        });
                        match alert.map(|a| archive.check(&a).map(|_| a)) {
                            Some(Ok(a)) => batch.push(a),
                            Some(Err(e)) => tracing::warn!(
                                partition = m.partition, offset = m.offset, error = %e,
                                "Not an archivable alert; skipped."),
                            None => tracing::warn!(
                                partition = m.partition, offset = m.offset,
                                "Message without a numeric diaSourceId key; skipped."),
                        }
                        deliveries.push(d);
                    }
                }
            }
        }
        if deliveries.is_empty() {
            // Idle: upload the nights written since their last upload (S3).
            let a = archive.clone();
            tokio::task::spawn_blocking(move || a.flush())
                .await
                .map_err(consume_err)??;
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
        // Written: now the messages may be forgotten.
        for d in deliveries {
            d.ack();
        }
        sub.commit().await.map_err(consume_err)?;
    }
    let a = archive.clone();
    tokio::task::spawn_blocking(move || a.flush())
        .await
        .map_err(consume_err)??;
    sub.close(Duration::from_secs(10)).await;
    Ok(written)
}
