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
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{
    DetectorAlerts, DetectorReport, Framed, PRODUCER_TIMESTAMP_HEADER, Payloads, ProducerConfig,
    READOUT_END_HEADER, SHUTTER_CLOSE_HEADER,
};
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
    sender: FramedSender,
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

/// Creates `topic` with `partitions` partitions on `brokers` when it does not exist
/// (the alert producer's topics, and the benchmark's baseline topic).
pub async fn ensure_topic(
    brokers: &str,
    kafka: &KafkaConfig,
    topic: &str,
    partitions: i32,
) -> Result<(), ProduceError> {
    let spec = TopicSpec {
        name: topic.to_owned(),
        partitions,
    };
    create_topics(brokers, kafka, &[spec])
        .await
        .map_err(|e| ProduceError::Admin {
            topic: topic.to_owned(),
            reason: e.to_string(),
        })
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
        let sender = FramedSender::new(&client_config(brokers, kafka, config)?)
            .map_err(|e| ProduceError::Config(e.to_string()))?;
        Ok(Self {
            sender,
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
        ensure_topic(
            &self.brokers,
            &self.kafka,
            &self.topic,
            self.config.partitions,
        )
        .await
    }

    /// Sends the alerts of one detector that the ledger does not record as sent, waits
    /// for every delivery report (retrying failed ones), records the acknowledged
    /// alerts in the ledger and updates the metrics.
    pub async fn send_detector(
        &self,
        batch: DetectorAlerts<'_>,
    ) -> Result<DetectorReport, ProduceError> {
        self.send_payloads(batch, &mut Framed(batch.alerts)).await
    }

    /// [`Self::send_detector`] with the alerts taken from `payloads` (for instance
    /// [`super::Encoding`], which encodes each alert as it is handed to the client);
    /// `batch.alerts` is not read.
    pub async fn send_payloads<P: Payloads + Send>(
        &self,
        batch: DetectorAlerts<'_>,
        payloads: &mut P,
    ) -> Result<DetectorReport, ProduceError> {
        // The ledger is SQLite: off the async workers.
        let (ledger, visit, detector) = (self.ledger.clone(), batch.visit, batch.detector);
        let already = tokio::task::spawn_blocking(move || ledger.sent_ids(visit, detector))
            .await
            .map_err(|e| ProduceError::Task(e.to_string()))??;
        let todo: Vec<usize> = (0..payloads.len())
            .filter(|&i| !already.contains(&payloads.dia_source_id(i)))
            .collect();
        let mut report = DetectorReport {
            skipped: (payloads.len() - todo.len()) as u32,
            ..Default::default()
        };
        metrics::SKIPPED_TOTAL.inc_by(u64::from(report.skipped));

        let total = todo.len();
        let shutter_close = batch.shutter_close.timestamp_millis().to_string();
        let readout_end = batch.readout_end.timestamp_millis().to_string();
        let sent = self
            .sender
            .send(
                &self.topic,
                (batch.visit, batch.detector),
                payloads,
                todo,
                &[
                    (SHUTTER_CLOSE_HEADER, shutter_close.as_bytes()),
                    (READOUT_END_HEADER, readout_end.as_bytes()),
                ],
                self.config.retries,
            )
            .await;
        // One pass over the acknowledgements: ids for the ledger, bytes, latencies.
        let seconds = |d: chrono::TimeDelta| d.num_microseconds().unwrap_or(i64::MAX) as f64 * 1e-6;
        let mut delivered = Vec::with_capacity(sent.delivered.len());
        for d in &sent.delivered {
            delivered.push(payloads.dia_source_id(d.index));
            report.bytes += d.bytes as u64;
            metrics::LATENCY_SINCE_SHUTTER_CLOSE_SECONDS
                .observe(seconds(d.at - batch.shutter_close));
            let since_readout = seconds(d.at - batch.readout_end);
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
        self.sender
            .producer()
            .flush(timeout)
            .map_err(|e| ProduceError::Flush(e.to_string()))
    }
}

/// One alert the broker acknowledged.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Delivered {
    /// Its index in the batch.
    pub index: usize,
    /// Its wire size (before compression).
    pub bytes: usize,
    /// When the acknowledgement arrived.
    pub at: DateTime<Utc>,
}

/// What [`FramedSender::send`] did.
#[derive(Debug, Default)]
pub struct Sent {
    /// Alerts acknowledged.
    pub delivered: Vec<Delivered>,
    /// One reason per alert given up (refused before queueing, or failed after every
    /// retry).
    pub failed: Vec<String>,
}

impl Sent {
    /// Gives alert `id` up for `reason`, counted in the metrics.
    fn give_up(&mut self, id: i64, reason: &dyn std::fmt::Display) {
        metrics::DELIVERY_FAILURES_TOTAL
            .with_label_values(&["given_up"])
            .inc();
        self.failed.push(format!("diaSourceId {id}: {reason}"));
    }
}

/// The headers of an alert message: `producer_timestamp` = `producer_stamp`, then
/// `extra` (the same records from the producer and the benchmark's bare loop).
pub(crate) fn alert_headers(producer_stamp: &[u8], extra: &[(&str, &[u8])]) -> OwnedHeaders {
    extra.iter().fold(
        OwnedHeaders::new_with_capacity(1 + extra.len()).insert(Header {
            key: PRODUCER_TIMESTAMP_HEADER,
            value: Some(producer_stamp),
        }),
        |h, &(key, value)| {
            h.insert(Header {
                key,
                value: Some(value),
            })
        },
    )
}

/// A message handed to librdkafka whose delivery report is awaited.
struct Pending {
    index: usize,
    attempt: u32,
    bytes: usize,
    delivery: DeliveryFuture,
    /// Its room in the queue, held until the report is taken.
    permit: OwnedSemaphorePermit,
}

/// librdkafka's defaults of `queue.buffering.max.kbytes` and
/// `queue.buffering.max.messages`, used when the configuration leaves them unset.
const DEFAULT_QUEUE_KBYTES: u64 = 1_048_576;
const DEFAULT_QUEUE_MESSAGES: u64 = 100_000;

/// An rdkafka producer shared by many concurrent senders (one per detector), with
/// room in its queue handed out fairly.
///
/// librdkafka refuses a message when its queue is full (`queue.buffering.max.kbytes`
/// or `.messages`). A sender that meets a full queue while it has deliveries of its
/// own pending awaits the oldest of them, which frees room; but a sender with nothing
/// pending could only poll until someone else's delivery freed room — with the 189
/// detectors of a visit finishing together that is thousands of futile wake-ups a
/// second, each building a record, on the cores the broker needs. So the room is a
/// semaphore, counted in KiB, sized a little under librdkafka's own limit: a message
/// holds its permit until its delivery report is taken, a sender that finds no room
/// waits in the semaphore's queue (FIFO, so no detector starves), and librdkafka's
/// `QueueFull` is only a fallback.
pub struct FramedSender {
    producer: FutureProducer,
    room: Arc<Semaphore>,
    /// Permits in all (KiB).
    capacity: u32,
    /// Permits a message takes at least, so at most `queue.buffering.max.messages`
    /// fit in the room however small they are.
    min_cost: u32,
}

impl std::fmt::Debug for FramedSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FramedSender")
            .field("room_kib", &self.room.available_permits())
            .field("capacity_kib", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl FramedSender {
    /// A producer created from `config`, its queue limits read from the same settings.
    pub fn new(config: &ClientConfig) -> Result<Self, KafkaError> {
        let limit = |key: &str, default: u64| {
            config
                .get(key)
                .and_then(|v| v.trim().parse::<u64>().ok())
                .filter(|&v| v > 0)
                .unwrap_or(default)
        };
        let kbytes = limit("queue.buffering.max.kbytes", DEFAULT_QUEUE_KBYTES);
        let messages = limit("queue.buffering.max.messages", DEFAULT_QUEUE_MESSAGES);
        // A tenth of slack: librdkafka counts a little more than the payload.
        let capacity = (kbytes - kbytes / 10).clamp(1, u64::from(u32::MAX >> 4)) as u32;
        let min_cost = kbytes.div_ceil(messages).clamp(1, u64::from(capacity)) as u32;
        Ok(Self {
            producer: config.create()?,
            room: Arc::new(Semaphore::new(capacity as usize)),
            capacity,
            min_cost,
        })
    }

    /// The rdkafka producer (to flush it or fetch metadata).
    pub fn producer(&self) -> &FutureProducer {
        &self.producer
    }

    /// The permits a message of `bytes` takes.
    fn cost(&self, bytes: usize) -> u32 {
        (bytes.div_ceil(1024) as u64).clamp(u64::from(self.min_cost), u64::from(self.capacity))
            as u32
    }

    /// Sends alert `i` of `alerts` for every `i` in `todo` to `topic` (key = diaSourceId, header
    /// `producer_timestamp`, then `extra_headers`): enqueues as many as there is room
    /// for (waiting for room when none of its own is pending), then awaits the
    /// delivery reports oldest first, re-queueing a failed one up to `retries` times —
    /// never a flush per message. An alert without a payload (it could not be
    /// encoded) is given up at once. Counts retried and given-up deliveries in the
    /// metrics. `(visit, detector)` name the batch in logs. Shared by
    /// [`AlertProducer::send_detector`] and replay's Kafka sink.
    pub async fn send<P: Payloads + Send>(
        &self,
        topic: &str,
        (visit, detector): (VisitId, DetectorId),
        alerts: &mut P,
        todo: Vec<usize>,
        extra_headers: &[(&str, &[u8])],
        retries: u32,
    ) -> Sent {
        let mut queue: VecDeque<(usize, u32)> = todo.iter().map(|&i| (i, 0)).collect();
        let mut pending: VecDeque<Pending> = VecDeque::new();
        let mut sent = Sent {
            delivered: Vec::with_capacity(todo.len()),
            failed: Vec::new(),
        };
        let mut keybuf = String::new();
        loop {
            // Enqueue as much as there is room for; one timestamp per pass.
            let stamp = Utc::now().timestamp_millis().to_string();
            let mut queue_full = false;
            while let Some(&(i, attempt)) = queue.front() {
                let id = alerts.dia_source_id(i);
                let payload = match alerts.payload(i) {
                    Ok(p) => p,
                    Err(reason) => {
                        queue.pop_front();
                        sent.give_up(id, &reason);
                        continue;
                    }
                };
                let bytes = payload.len();
                let cost = self.cost(bytes);
                let permit = match self.room.clone().try_acquire_many_owned(cost) {
                    Ok(permit) => permit,
                    // Our own oldest delivery frees room: take it first.
                    Err(_) if !pending.is_empty() => break,
                    // Nothing of ours to wait for: queue for room.
                    Err(_) => match self.room.clone().acquire_many_owned(cost).await {
                        Ok(permit) => permit,
                        Err(_) => unreachable!("the room semaphore is never closed"),
                    },
                };
                keybuf.clear();
                use std::fmt::Write;
                let _ = write!(keybuf, "{id}");
                // librdkafka copies the payload here: `alerts` may reuse its buffer.
                let record = FutureRecord::<[u8], [u8]>::to(topic)
                    .key(keybuf.as_bytes())
                    .payload(payload)
                    .headers(alert_headers(stamp.as_bytes(), extra_headers));
                match self.producer.send_result(record) {
                    Ok(delivery) => {
                        queue.pop_front();
                        pending.push_back(Pending {
                            index: i,
                            attempt,
                            bytes,
                            delivery,
                            permit,
                        });
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), _)) => {
                        // librdkafka counted more than the room allowed for.
                        queue_full = true;
                        break;
                    }
                    Err((e, _)) => {
                        // Refused before queueing (too large, bad topic): not retryable.
                        queue.pop_front();
                        sent.give_up(id, &e);
                    }
                }
            }
            // Take one delivery report (the oldest), freeing room in the queue.
            let Some(p) = pending.pop_front() else {
                if queue_full {
                    // Full with nothing of ours pending (the fallback): back off.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
                break;
            };
            let outcome = match p.delivery.await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err((e, _))) => Err(e.to_string()),
                Err(_) => Err("the producer was dropped before delivery".to_owned()),
            };
            // Its room in the queue is free again.
            drop(p.permit);
            let (i, attempt) = (p.index, p.attempt);
            match outcome {
                Ok(()) => sent.delivered.push(Delivered {
                    index: i,
                    bytes: p.bytes,
                    at: Utc::now(),
                }),
                Err(reason) if attempt < retries => {
                    tracing::warn!(
                        visit = visit.0,
                        detector = detector.0,
                        dia_source_id = alerts.dia_source_id(i),
                        attempt,
                        %reason,
                        "Alert delivery failed; retrying."
                    );
                    metrics::DELIVERY_FAILURES_TOTAL
                        .with_label_values(&["retried"])
                        .inc();
                    queue.push_back((i, attempt + 1));
                }
                Err(reason) => sent.give_up(alerts.dia_source_id(i), &reason),
            }
        }
        sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sender(settings: &[(&str, &str)]) -> FramedSender {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", "127.0.0.1:9");
        for (k, v) in settings {
            c.set(*k, *v);
        }
        FramedSender::new(&c).unwrap()
    }

    #[test]
    fn the_room_follows_librdkafkas_queue_limits() {
        // librdkafka's defaults: 1 GiB and 100,000 messages, less a tenth.
        let s = sender(&[]);
        assert_eq!(s.capacity, 943_719);
        assert_eq!(s.min_cost, 11);
        assert_eq!(s.room.available_permits(), 943_719);
        // An ~80 KB alert takes 80 KiB; a tiny one at least the per-message share.
        assert_eq!(s.cost(81_920), 80);
        assert_eq!(s.cost(81_921), 81);
        assert_eq!(s.cost(100), 11);
        let s = sender(&[
            ("queue.buffering.max.kbytes", "1000"),
            ("queue.buffering.max.messages", "100"),
        ]);
        assert_eq!((s.capacity, s.min_cost), (900, 10));
        // A message larger than the room still gets in, alone.
        assert_eq!(s.cost(5_000_000), 900);
    }
}
