//! The rdkafka client of the alert producer (see the parent module for the design).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use apflow_core::bus::kafka::{base_config, create_topics, ms};
use apflow_core::bus::{KafkaConfig, TopicSpec};
use apflow_core::ids::{DetectorId, VisitId};
use chrono::{DateTime, Utc};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};
use thiserror::Error;

use super::{DetectorAlerts, DetectorReport, FramedAlert, ProducerConfig};
use crate::ledger::{Ledger, LedgerError};
use crate::metrics;

/// Why alerts were not (all) delivered.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ProduceError {
    /// The client could not be configured (check the settings named).
    #[error("alert producer configuration: {0}")]
    Config(String),
    /// Topic creation failed (check the broker and its permissions).
    #[error("creating topic {topic}: {reason}")]
    Admin {
        /// The topic.
        topic: String,
        /// The broker's answer.
        reason: String,
    },
    /// The ledger could not be read or written.
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    /// Some alerts were not acknowledged after every retry; the acknowledged ones are
    /// in the ledger, so rerunning the detector sends only these (retryable).
    #[error(
        "visit {visit} detector {detector}: {failed} of {total} alerts undelivered, first error: {reason}"
    )]
    Undelivered {
        /// The visit.
        visit: VisitId,
        /// The detector.
        detector: DetectorId,
        /// Alerts not delivered.
        failed: usize,
        /// Alerts attempted.
        total: usize,
        /// The first delivery error.
        reason: String,
    },
    /// A blocking ledger task panicked or was cancelled (a bug).
    #[error("alert producer ledger task: {0}")]
    Task(String),
    /// Waiting for outstanding messages failed.
    #[error("flushing the alert producer: {0}")]
    Flush(String),
}

/// The Kafka producer of one alert topic (one schema major version).
pub struct AlertProducer {
    producer: FutureProducer,
    brokers: String,
    kafka: KafkaConfig,
    topic: String,
    config: ProducerConfig,
    ledger: Arc<Ledger>,
}

impl std::fmt::Debug for AlertProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlertProducer")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// The librdkafka settings of an alert producer: the bus's connection and security,
/// then idempotence, acknowledgements, compression, batching and timeouts, then the
/// configured overrides (shared with the benchmark's bare producer and replay's sink).
pub fn client_config(
    brokers: &str,
    kafka: &KafkaConfig,
    config: &ProducerConfig,
) -> Result<ClientConfig, ProduceError> {
    let mut c = base_config(brokers, kafka).map_err(|e| ProduceError::Config(e.to_string()))?;
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", config.compression.as_str())
        .set("linger.ms", ms(config.linger))
        .set("batch.num.messages", config.batch_num_messages.to_string())
        .set("batch.size", config.batch_size.to_string())
        .set("message.max.bytes", config.message_max_bytes.to_string())
        .set("message.timeout.ms", ms(config.message_timeout));
    for (k, v) in &config.librdkafka {
        c.set(k, v);
    }
    Ok(c)
}

impl AlertProducer {
    /// A producer to `brokers` for the topic of schema major version `major`, with the
    /// bus's connection and security settings `kafka` and the ledger `ledger`.
    pub fn new(
        brokers: &str,
        kafka: &KafkaConfig,
        config: &ProducerConfig,
        major: u32,
        ledger: Arc<Ledger>,
    ) -> Result<Self, ProduceError> {
        let producer: FutureProducer = client_config(brokers, kafka, config)?
            .create()
            .map_err(|e| ProduceError::Config(e.to_string()))?;
        Ok(Self {
            producer,
            brokers: brokers.to_string(),
            kafka: kafka.clone(),
            topic: config.topic(major),
            config: config.clone(),
            ledger,
        })
    }

    /// The topic alerts go to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Creates the topic when it does not exist.
    pub async fn ensure_topic(&self) -> Result<(), ProduceError> {
        let spec = TopicSpec {
            name: self.topic.clone(),
            partitions: self.config.partitions,
        };
        create_topics(&self.brokers, &self.kafka, &[spec])
            .await
            .map_err(|e| ProduceError::Admin {
                topic: self.topic.clone(),
                reason: e.to_string(),
            })
    }

    /// Sends the alerts of one detector that the ledger does not record as sent, waits
    /// for every delivery report (retrying failed ones), records the acknowledged
    /// alerts in the ledger and updates the metrics.
    pub async fn send_detector(
        &self,
        batch: DetectorAlerts<'_>,
    ) -> Result<DetectorReport, ProduceError> {
        // The ledger is SQLite: off the async workers.
        let (ledger, visit, detector) = (self.ledger.clone(), batch.visit, batch.detector);
        let already = tokio::task::spawn_blocking(move || ledger.sent_ids(visit, detector))
            .await
            .map_err(|e| ProduceError::Task(e.to_string()))??;
        let todo: Vec<usize> = (0..batch.alerts.len())
            .filter(|&i| !already.contains(&batch.alerts[i].dia_source_id))
            .collect();
        let mut report = DetectorReport {
            skipped: (batch.alerts.len() - todo.len()) as u32,
            ..Default::default()
        };
        metrics::SKIPPED_TOTAL.inc_by(u64::from(report.skipped));

        let total = todo.len();
        let shutter_close = batch.shutter_close.timestamp_millis().to_string();
        let readout_end = batch.readout_end.timestamp_millis().to_string();
        let sent = send_framed(
            &self.producer,
            &self.topic,
            (batch.visit, batch.detector),
            batch.alerts,
            todo,
            &[
                ("shutter_close_timestamp", shutter_close.as_bytes()),
                ("readout_end_timestamp", readout_end.as_bytes()),
            ],
            self.config.retries,
        )
        .await;
        // One pass over the acknowledgements: ids for the ledger, bytes, latencies.
        let seconds = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(i64::MAX) as f64 * 1e-6;
        let mut delivered = Vec::with_capacity(sent.delivered.len());
        for &(i, at) in &sent.delivered {
            delivered.push(batch.alerts[i].dia_source_id);
            report.bytes += batch.alerts[i].framed.len() as u64;
            metrics::LATENCY_SINCE_SHUTTER_CLOSE_SECONDS.observe(seconds(at - batch.shutter_close));
            let since_readout = seconds(at - batch.readout_end);
            metrics::LATENCY_SINCE_READOUT_END_SECONDS.observe(since_readout);
            report.latencies_s.push(since_readout);
        }
        report.sent = delivered.len() as u32;
        let ledger = self.ledger.clone();
        tokio::task::spawn_blocking(move || ledger.record_sent(visit, detector, &delivered))
            .await
            .map_err(|e| ProduceError::Task(e.to_string()))??;
        metrics::SENT_TOTAL.inc_by(u64::from(report.sent));
        metrics::SENT_BYTES_TOTAL.inc_by(report.bytes);
        if let Some(first) = sent.failed.first() {
            return Err(ProduceError::Undelivered {
                visit: batch.visit,
                detector: batch.detector,
                failed: sent.failed.len(),
                total,
                reason: first.clone(),
            });
        }
        tracing::debug!(
            visit = batch.visit.0,
            detector = batch.detector.0,
            sent = report.sent,
            skipped = report.skipped,
            "Alerts delivered."
        );
        Ok(report)
    }

    /// Waits until every queued message is delivered, at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), ProduceError> {
        self.producer
            .flush(timeout)
            .map_err(|e| ProduceError::Flush(e.to_string()))
    }
}

/// What [`send_framed`] did.
#[derive(Debug, Default)]
pub struct Sent {
    /// Alerts acknowledged: their index and when the acknowledgement arrived.
    pub delivered: Vec<(usize, DateTime<Utc>)>,
    /// One reason per alert given up (refused before queueing, or failed after every
    /// retry).
    pub failed: Vec<String>,
}

/// Sends `alerts[i]` for every `i` in `todo` to `topic` (key = diaSourceId, header
/// `producer_timestamp`, then `extra_headers`): enqueues as many as librdkafka's queue
/// takes (backing off while it is full), then awaits the delivery reports oldest first,
/// re-queueing a failed one up to `retries` times — never a flush per message. Counts
/// retried and given-up deliveries in the metrics. `(visit, detector)` name the batch
/// in logs. Shared by [`AlertProducer::send_detector`] and replay's Kafka sink.
pub async fn send_framed(
    producer: &FutureProducer,
    topic: &str,
    (visit, detector): (VisitId, DetectorId),
    alerts: &[FramedAlert],
    todo: Vec<usize>,
    extra_headers: &[(&str, &[u8])],
    retries: u32,
) -> Sent {
    let mut queue: VecDeque<(usize, u32)> = todo.iter().map(|&i| (i, 0)).collect();
    let mut pending: VecDeque<(usize, u32, DeliveryFuture)> = VecDeque::new();
    let mut sent = Sent {
        delivered: Vec::with_capacity(todo.len()),
        failed: Vec::new(),
    };
    let mut keybuf = String::new();
    loop {
        // Enqueue as much as librdkafka's queue takes; one timestamp per pass.
        let stamp = Utc::now().timestamp_millis().to_string();
        let mut queue_full = false;
        while let Some(&(i, attempt)) = queue.front() {
            let alert = &alerts[i];
            keybuf.clear();
            use std::fmt::Write;
            let _ = write!(keybuf, "{}", alert.dia_source_id);
            let mut headers =
                OwnedHeaders::new_with_capacity(1 + extra_headers.len()).insert(Header {
                    key: "producer_timestamp",
                    value: Some(stamp.as_bytes()),
                });
            for &(key, value) in extra_headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let record = FutureRecord::<[u8], [u8]>::to(topic)
                .key(keybuf.as_bytes())
                .payload(&alert.framed[..])
                .headers(headers);
            match producer.send_result(record) {
                Ok(fut) => {
                    queue.pop_front();
                    pending.push_back((i, attempt, fut));
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                    queue_full = true;
                    break;
                }
                Err((e, _)) => {
                    // Refused before queueing (too large, bad topic): not retryable.
                    queue.pop_front();
                    metrics::DELIVERY_FAILURES_TOTAL
                        .with_label_values(&["given_up"])
                        .inc();
                    sent.failed
                        .push(format!("diaSourceId {}: {e}", alert.dia_source_id));
                }
            }
        }
        // Take one delivery report (the oldest), freeing room in the queue.
        let Some((i, attempt, fut)) = pending.pop_front() else {
            if queue_full {
                // Queue full with nothing of ours pending: other senders fill it.
                tokio::time::sleep(Duration::from_millis(1)).await;
                continue;
            }
            break;
        };
        let alert = &alerts[i];
        let outcome = match fut.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((e, _))) => Err(e.to_string()),
            Err(_) => Err("the producer was dropped before delivery".to_owned()),
        };
        match outcome {
            Ok(()) => sent.delivered.push((i, Utc::now())),
            Err(reason) if attempt < retries => {
                tracing::warn!(
                    visit = visit.0,
                    detector = detector.0,
                    dia_source_id = alert.dia_source_id,
                    attempt,
                    %reason,
                    "Alert delivery failed; retrying."
                );
                metrics::DELIVERY_FAILURES_TOTAL
                    .with_label_values(&["retried"])
                    .inc();
                queue.push_back((i, attempt + 1));
            }
            Err(reason) => {
                metrics::DELIVERY_FAILURES_TOTAL
                    .with_label_values(&["given_up"])
                    .inc();
                sent.failed
                    .push(format!("diaSourceId {}: {reason}", alert.dia_source_id));
            }
        }
    }
    sent
}
