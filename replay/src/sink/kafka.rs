//! The Kafka sink (feature `kafka`): see the parent module.

use std::time::Duration;

use apflow_alert_dist::producer::{
    Framed, FramedAlert, FramedSender, ProduceError, ProducerConfig, client_config, ensure_topic,
};
use apflow_core::bus::KafkaConfig;
use apflow_core::ids::{DetectorId, VisitId};
use rdkafka::producer::Producer;

use super::{Sink, SinkError};

/// Produces replayed alerts to one topic.
pub struct KafkaSink {
    sender: FramedSender,
    topic: String,
    generation: String,
    timeout: Duration,
    /// Retries of a failed delivery report (`[producer] retries`).
    retries: u32,
}

impl std::fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSink")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaSink {
    /// A producer to `brokers` for `topic`, with the bus's connection settings `kafka`
    /// and the alert producer's settings `config`; `generation` is the replay
    /// generation of the ids sent (0: original ids), written as a header.
    pub fn new(
        brokers: &str,
        kafka: &KafkaConfig,
        config: &ProducerConfig,
        topic: &str,
        generation: u8,
    ) -> Result<Self, SinkError> {
        // The alert producer's settings: idempotent, acks=all, batching, compression.
        let c =
            client_config(brokers, kafka, config).map_err(|e| SinkError::Config(e.to_string()))?;
        let sender = FramedSender::new(&c).map_err(|e| SinkError::Config(e.to_string()))?;
        Ok(Self {
            sender,
            topic: topic.to_string(),
            generation: generation.to_string(),
            timeout: config.message_timeout,
            retries: config.retries,
        })
    }

    /// Creates the topic with `partitions` partitions when it does not exist.
    pub async fn ensure_topic(
        brokers: &str,
        kafka: &KafkaConfig,
        topic: &str,
        partitions: i32,
    ) -> Result<(), SinkError> {
        ensure_topic(brokers, kafka, topic, partitions)
            .await
            .map_err(|e| SinkError::Topic {
                topic: topic.to_string(),
                reason: match e {
                    ProduceError::Admin { reason, .. } => reason,
                    other => other.to_string(),
                },
            })
    }

    /// Connects before the replay starts (the client connects lazily, and the first
    /// burst would otherwise wait for it): fetches the topic's metadata, waiting at
    /// most `timeout`. Blocking: call it from a blocking context.
    pub fn connect(&self, timeout: Duration) -> Result<(), SinkError> {
        self.sender
            .producer()
            .client()
            .fetch_metadata(Some(&self.topic), timeout)
            .map(|_| ())
            .map_err(|e| SinkError::Topic {
                topic: self.topic.clone(),
                reason: e.to_string(),
            })
    }
}

impl Sink for KafkaSink {
    async fn send_burst(
        &mut self,
        visit: VisitId,
        detector: DetectorId,
        alerts: &[FramedAlert],
    ) -> Result<(), SinkError> {
        // The alert producer's send loop: enqueue the whole burst (waiting while
        // there is no room in librdkafka's queue), await the delivery reports, retry failures.
        let sent = self
            .sender
            .send(
                &self.topic,
                (visit, detector),
                &mut Framed(alerts),
                (0..alerts.len()).collect(),
                &[("apflow_replay_generation", self.generation.as_bytes())],
                self.retries,
            )
            .await;
        match sent.failed.first() {
            None => Ok(()),
            Some(reason) => Err(SinkError::Undelivered {
                visit,
                detector,
                failed: sent.failed.len(),
                total: alerts.len(),
                reason: reason.clone(),
            }),
        }
    }

    async fn finish(&mut self) -> Result<(), SinkError> {
        self.sender
            .producer()
            .flush(self.timeout)
            .map_err(|e| SinkError::Config(format!("flush: {e}")))
    }
}
