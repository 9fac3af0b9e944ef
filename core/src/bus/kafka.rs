//! Apache Kafka through `rdkafka` (librdkafka).
//!
//! Producer: idempotent (`enable.idempotence=true`, which implies `acks=all` and
//! ordered retries), batched by `linger.ms`, compressed; each publish awaits its
//! delivery report — batching happens across concurrent publishes, never a flush per
//! message.
//!
//! Consumer: a consumer group with `enable.auto.offset.store=false`: an offset is
//! stored only when the application acknowledges the message (and every earlier one
//! of its partition), and librdkafka commits stored offsets every `commit_interval`;
//! [`SubscriptionBackend::commit`] commits synchronously. `close` bounds every wait:
//! a consumer that stopped mid-stream can take seconds to leave its group.

use std::sync::Arc;
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::ack::AckTracker;
use super::{
    Ack, BusBackend, BusError, Delivery, KafkaConfig, Message, Record, SubscriptionBackend,
    TopicSpec,
};

/// The Kafka bus: one producer shared by every publisher of the process.
#[derive(Clone)]
pub struct KafkaBus {
    brokers: String,
    config: KafkaConfig,
    producer: FutureProducer,
}

impl std::fmt::Debug for KafkaBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBus")
            .field("brokers", &self.brokers)
            .finish_non_exhaustive()
    }
}

/// A duration as librdkafka milliseconds (at least 1: 0 means "forever" to some keys).
pub fn ms(d: Duration) -> String {
    d.as_millis().max(1).to_string()
}

impl KafkaBus {
    /// Connects a producer to `brokers` (`host:port[,host:port…]`).
    pub fn new(brokers: &str, config: &KafkaConfig) -> Result<Self, BusError> {
        let producer: FutureProducer = base_config(brokers, config)?
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &config.compression)
            .set("linger.ms", ms(config.linger))
            .set("message.timeout.ms", ms(config.message_timeout))
            .create()
            .map_err(|e| BusError::Config(e.to_string()))?;
        Ok(Self {
            brokers: brokers.to_owned(),
            config: config.clone(),
            producer,
        })
    }

    /// Waits until every queued message is delivered, at most `timeout`.
    pub fn flush(&self, timeout: Duration) -> Result<(), BusError> {
        self.producer.flush(timeout).map_err(|e| BusError::Publish {
            topic: "*".into(),
            reason: e.to_string(),
        })
    }
}

/// Client settings every client shares: brokers, client id, TLS and SASL.
pub fn base_config(brokers: &str, config: &KafkaConfig) -> Result<ClientConfig, BusError> {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", brokers)
        .set("client.id", &config.client_id);
    let s = &config.security;
    c.set("security.protocol", &s.protocol);
    if let Some(m) = &s.sasl_mechanism {
        c.set("sasl.mechanism", m);
    }
    if let Some(u) = &s.username {
        c.set("sasl.username", u);
    }
    if let Some(p) = &s.password {
        let secret = p.reveal().map_err(|e| BusError::Config(e.to_string()))?;
        c.set("sasl.password", secret);
    }
    for (key, value) in [
        ("ssl.ca.location", &s.ca_location),
        ("ssl.certificate.location", &s.certificate_location),
        ("ssl.key.location", &s.key_location),
    ] {
        if let Some(v) = value {
            c.set(key, v);
        }
    }
    Ok(c)
}

/// Creates `topics` on `brokers` (replication factor from `config`); topics that exist
/// already are left as they are.
pub async fn create_topics(
    brokers: &str,
    config: &KafkaConfig,
    topics: &[TopicSpec],
) -> Result<(), BusError> {
    let admin: AdminClient<DefaultClientContext> = base_config(brokers, config)?
        .create()
        .map_err(|e| BusError::Config(e.to_string()))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| {
            NewTopic::new(
                &t.name,
                t.partitions,
                TopicReplication::Fixed(config.replication_factor),
            )
        })
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .map_err(|e| BusError::Admin(e.to_string()))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(BusError::Admin(format!("{name}: {code}"))),
        }
    }
    Ok(())
}

impl BusBackend for KafkaBus {
    type Subscription = KafkaSubscription;

    async fn ensure_topics(&self, topics: &[TopicSpec]) -> Result<(), BusError> {
        create_topics(&self.brokers, &self.config, topics).await
    }

    async fn publish(&self, record: Record) -> Result<Ack, BusError> {
        let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
        for (k, v) in &record.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            });
        }
        let mut fr = FutureRecord::<String, Vec<u8>>::to(&record.topic)
            .payload(&record.payload)
            .headers(headers);
        if let Some(k) = &record.key {
            fr = fr.key(k);
        }
        match self.producer.send(fr, self.config.message_timeout).await {
            Ok(d) => Ok(Ack {
                partition: d.partition,
                offset: d.offset,
            }),
            Err((e, _)) => Err(BusError::Publish {
                topic: record.topic,
                reason: e.to_string(),
            }),
        }
    }

    async fn subscribe(
        &self,
        topics: &[String],
        group: &str,
    ) -> Result<KafkaSubscription, BusError> {
        let consumer: StreamConsumer = base_config(&self.brokers, &self.config)?
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", ms(self.config.commit_interval))
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", ms(self.config.fetch_wait_max))
            .set("session.timeout.ms", ms(self.config.session_timeout))
            .create()
            .map_err(|e| BusError::Config(e.to_string()))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer
            .subscribe(&names)
            .map_err(|e| BusError::Consume(e.to_string()))?;
        let consumer = Arc::new(consumer);
        let store = consumer.clone();
        let tracker = AckTracker::new(Box::new(move |topic, partition, next| {
            let mut tpl = TopicPartitionList::new();
            if tpl
                .add_partition_offset(topic, partition, Offset::Offset(next))
                .is_ok()
                && let Err(e) = store.store_offsets(&tpl)
            {
                // The partition was revoked: its next owner resumes at the last commit.
                tracing::debug!(topic, partition, error = %e, "Offset not stored.");
            }
        }));
        Ok(KafkaSubscription {
            consumer,
            tracker: Arc::new(tracker),
        })
    }
}

/// A member of a Kafka consumer group.
pub struct KafkaSubscription {
    consumer: Arc<StreamConsumer>,
    tracker: Arc<AckTracker>,
}

impl std::fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscription")
            .field("in_flight", &self.tracker.in_flight())
            .finish()
    }
}

impl KafkaSubscription {
    pub(crate) fn in_flight(&self) -> usize {
        self.tracker.in_flight()
    }
}

fn commit_now(consumer: &StreamConsumer) -> Result<(), BusError> {
    match consumer.commit_consumer_state(CommitMode::Sync) {
        Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => Ok(()),
        Err(e) => Err(BusError::Commit(e.to_string())),
    }
}

impl SubscriptionBackend for KafkaSubscription {
    async fn next(&mut self) -> Result<Delivery, BusError> {
        let m = self
            .consumer
            .recv()
            .await
            .map_err(|e| BusError::Consume(e.to_string()))?;
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        let message = Message {
            topic: m.topic().to_owned(),
            partition: m.partition(),
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        };
        Ok(Delivery::new(message, self.tracker.clone()))
    }

    async fn commit(&mut self) -> Result<(), BusError> {
        let c = self.consumer.clone();
        tokio::task::spawn_blocking(move || commit_now(&c))
            .await
            .map_err(|e| BusError::Commit(e.to_string()))?
    }

    async fn close(self, timeout: Duration) {
        let c = self.consumer;
        // Commit, leave the group and drop the client off the async runtime; give up
        // waiting after `timeout` (the thread finishes on its own).
        let task = tokio::task::spawn_blocking(move || {
            if let Err(e) = commit_now(&c) {
                tracing::warn!(error = %e, "Final commit failed; the group resumes at the previous commit.");
            }
            c.unsubscribe();
            drop(c);
        });
        if tokio::time::timeout(timeout, task).await.is_err() {
            tracing::warn!(
                ?timeout,
                "Kafka consumer did not close in time; leaving it to finish in the background."
            );
        }
    }
}
