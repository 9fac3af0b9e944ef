//! The event bus: topics of keyed messages, published and consumed in groups, with
//! two backends behind one contract.
//!
//! * [`memory`] — in-process, partitioned logs with consumer groups and committed
//!   offsets (the embedded default, `memory://`).
//! * `kafka` — Apache Kafka through `rdkafka` (feature `kafka`, `kafka://host:port,…`):
//!   idempotent producer with `acks=all`, consumer groups, offsets stored only after
//!   the application acknowledges a message.
//!
//! [`Bus`] is the enum in front of the backends: it delegates, and records latency and
//! error metrics in this one place. On top of it, [`EventPublisher`] and
//! [`EventConsumer`] speak typed [`Event`]s; a consumer sends undecodable messages to
//! the dead-letter topic with the reason and goes on.
//!
//! Delivery is at-least-once: a [`Delivery`] must be [`Delivery::ack`]ed after the
//! downstream write or send succeeded; only then can its offset be committed. Topics
//! are never created implicitly: call [`Bus::ensure_topics`] first.
//!
//! [`Bus::consumer_lag`] reads, for every consumer group of some topics, how far its
//! committed offsets are behind the partitions' ends — including groups apflow never
//! joins (community brokers reading the alert topic); [`lag::spawn_lag_monitor`]
//! exports it as a Prometheus gauge.

mod ack;
pub mod config;
#[cfg(feature = "kafka")]
pub mod kafka;
pub mod lag;
pub mod memory;

use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

pub use self::config::{BusConfig, KafkaConfig, KafkaSecurity, MemoryBusConfig};
pub use self::lag::{GroupLag, spawn_lag_monitor};
use crate::events::{DeadLetter, ErrorClass, Event, Original, decode, encode};
use crate::telemetry::metrics;

/// A message to publish.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// Full topic name (prefix included).
    pub topic: String,
    /// Partition key; messages with the same key keep their order.
    pub key: Option<String>,
    /// The bytes.
    pub payload: Vec<u8>,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// A consumed message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Topic name.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset within the partition.
    pub offset: i64,
    /// Key, if any.
    pub key: Option<Vec<u8>>,
    /// The bytes.
    pub payload: Vec<u8>,
    /// Headers, in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Producer timestamp, milliseconds since the Unix epoch, if known.
    pub timestamp_ms: Option<i64>,
}

impl Message {
    /// The first header with this name.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// Where a published message was written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ack {
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
}

/// A topic to create.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSpec {
    /// Full topic name.
    pub name: String,
    /// Number of partitions.
    pub partitions: i32,
}

/// Bus errors.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// The URL names a backend that this build does not include.
    #[error(
        "bus backend `{scheme}://` is not compiled into this build; rebuild with `--features {feature}`"
    )]
    NotCompiled {
        /// URL scheme.
        scheme: String,
        /// Cargo feature that enables it.
        feature: &'static str,
    },
    /// The URL cannot be used.
    #[error(
        "invalid bus URL `{url}`: {reason} (expected memory:// or kafka://host:port[,host:port…])"
    )]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        reason: String,
    },
    /// Publishing to a topic that was never created.
    #[error("topic `{0}` does not exist; create it with ensure_topics first")]
    UnknownTopic(String),
    /// The broker refused or did not acknowledge a message.
    #[error("publishing to `{topic}` failed: {reason}")]
    Publish {
        /// Topic.
        topic: String,
        /// Why.
        reason: String,
    },
    /// Consuming failed.
    #[error("consuming failed: {0}")]
    Consume(String),
    /// Creating topics failed.
    #[error("creating topics failed: {0}")]
    Admin(String),
    /// Committing offsets failed.
    #[error("committing offsets failed: {0}")]
    Commit(String),
    /// Client configuration was refused.
    #[error("Kafka client configuration refused: {0}")]
    Config(String),
    /// Reading consumer groups, committed offsets or watermarks failed.
    #[error("reading consumer lag failed: {0}")]
    Lag(String),
    /// The subscription or bus was closed.
    #[error("the bus or subscription is closed")]
    Closed,
}

impl BusError {
    /// What to do with it.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Publish { .. }
            | Self::Consume(_)
            | Self::Commit(_)
            | Self::Admin(_)
            | Self::Lag(_) => ErrorClass::Retryable,
            Self::NotCompiled { .. } | Self::BadUrl { .. } | Self::Config(_) => {
                ErrorClass::BadInput
            }
            Self::UnknownTopic(_) | Self::Closed => ErrorClass::Internal,
        }
    }
}

/// A backend of the bus.
pub trait BusBackend: Send + Sync {
    /// Its subscription type.
    type Subscription: SubscriptionBackend;
    /// Creates topics that do not exist yet (existing ones are left as they are).
    fn ensure_topics(
        &self,
        topics: &[TopicSpec],
    ) -> impl Future<Output = Result<(), BusError>> + Send;
    /// Publishes one record and waits for the broker's acknowledgement.
    fn publish(&self, record: Record) -> impl Future<Output = Result<Ack, BusError>> + Send;
    /// Joins consumer group `group` on `topics`, resuming at the group's committed offsets
    /// (the earliest retained message for a new group).
    fn subscribe(
        &self,
        topics: &[String],
        group: &str,
    ) -> impl Future<Output = Result<Self::Subscription, BusError>> + Send;
    /// The lag of every consumer group with a committed offset on any of `topics`
    /// (members or not), one [`GroupLag`] per (topic, group), sorted by (topic, group).
    /// Topics that do not exist are skipped.
    fn consumer_lag(
        &self,
        topics: &[String],
    ) -> impl Future<Output = Result<Vec<GroupLag>, BusError>> + Send;
}

/// A backend's consumer-group membership.
pub trait SubscriptionBackend: Send {
    /// The next message; waits for one.
    fn next(&mut self) -> impl Future<Output = Result<Delivery, BusError>> + Send;
    /// Commits every acknowledged offset now and waits for the broker.
    fn commit(&mut self) -> impl Future<Output = Result<(), BusError>> + Send;
    /// Commits and leaves the group, waiting at most `timeout`.
    fn close(self, timeout: Duration) -> impl Future<Output = ()> + Send;
}

/// A consumed message and the means to acknowledge it.
#[derive(Debug)]
pub struct Delivery {
    /// The message.
    pub message: Message,
    tracker: Arc<ack::AckTracker>,
}

impl Delivery {
    pub(crate) fn new(message: Message, tracker: Arc<ack::AckTracker>) -> Self {
        tracker.delivered(&message.topic, message.partition, message.offset);
        Self { message, tracker }
    }

    /// Acknowledges the message: the downstream step is done, its offset may be committed.
    pub fn ack(self) {
        self.tracker.ack(
            &self.message.topic,
            self.message.partition,
            self.message.offset,
        );
    }
}

/// The bus: an enum in front of the backends.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum Bus {
    /// In-process.
    Memory(memory::MemoryBus),
    /// Apache Kafka (boxed: the client is much larger than the in-process handle).
    #[cfg(feature = "kafka")]
    Kafka(Box<kafka::KafkaBus>),
}

/// A subscription of any backend.
#[derive(Debug)]
#[non_exhaustive]
pub enum Subscription {
    /// In-process.
    Memory(memory::MemorySubscription),
    /// Apache Kafka.
    #[cfg(feature = "kafka")]
    Kafka(kafka::KafkaSubscription),
}

impl Bus {
    /// Opens the backend named by `config.url`.
    pub fn from_config(config: &BusConfig) -> Result<Self, BusError> {
        let url = config.url.trim();
        let (scheme, rest) = url.split_once("://").ok_or_else(|| BusError::BadUrl {
            url: url.to_owned(),
            reason: "no scheme".into(),
        })?;
        match scheme {
            "memory" => Ok(Self::Memory(memory::MemoryBus::new(config.memory.clone()))),
            #[cfg(feature = "kafka")]
            "kafka" => {
                if rest.is_empty() {
                    return Err(BusError::BadUrl {
                        url: url.to_owned(),
                        reason: "no brokers".into(),
                    });
                }
                Ok(Self::Kafka(Box::new(kafka::KafkaBus::new(
                    rest,
                    &config.kafka,
                )?)))
            }
            #[cfg(not(feature = "kafka"))]
            "kafka" => {
                let _ = rest;
                Err(BusError::NotCompiled {
                    scheme: "kafka".into(),
                    feature: "kafka",
                })
            }
            other => Err(BusError::BadUrl {
                url: url.to_owned(),
                reason: format!("unknown scheme `{other}`"),
            }),
        }
    }

    /// The in-process bus with default settings.
    pub fn memory() -> Self {
        Self::Memory(memory::MemoryBus::new(MemoryBusConfig::default()))
    }

    /// The backend's name, for metrics.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Memory(_) => "memory",
            #[cfg(feature = "kafka")]
            Self::Kafka(_) => "kafka",
        }
    }

    /// Creates topics that do not exist yet.
    pub async fn ensure_topics(&self, topics: &[TopicSpec]) -> Result<(), BusError> {
        let r = match self {
            Self::Memory(b) => b.ensure_topics(topics).await,
            #[cfg(feature = "kafka")]
            Self::Kafka(b) => b.ensure_topics(topics).await,
        };
        self.record_error("ensure_topics", &r);
        r
    }

    /// Publishes a record and waits for the acknowledgement.
    pub async fn publish(&self, record: Record) -> Result<Ack, BusError> {
        let started = Instant::now();
        let topic = record.topic.clone();
        let r = match self {
            Self::Memory(b) => b.publish(record).await,
            #[cfg(feature = "kafka")]
            Self::Kafka(b) => b.publish(record).await,
        };
        metrics::BUS_PUBLISH_SECONDS
            .with_label_values(&[self.backend()])
            .observe(started.elapsed().as_secs_f64());
        if r.is_ok() {
            metrics::BUS_PUBLISHED_TOTAL
                .with_label_values(&[&topic])
                .inc();
        }
        self.record_error("publish", &r);
        r
    }

    /// Publishes every record concurrently (so the Kafka client batches them) and
    /// waits for all acknowledgements; the first error.
    pub async fn publish_all(&self, records: Vec<Record>) -> Result<(), BusError> {
        futures::future::join_all(records.into_iter().map(|r| self.publish(r)))
            .await
            .into_iter()
            .find_map(Result::err)
            .map_or(Ok(()), Err)
    }

    /// Joins consumer group `group` on `topics`.
    pub async fn subscribe(
        &self,
        topics: &[String],
        group: &str,
    ) -> Result<Subscription, BusError> {
        let r = match self {
            Self::Memory(b) => b.subscribe(topics, group).await.map(Subscription::Memory),
            #[cfg(feature = "kafka")]
            Self::Kafka(b) => b.subscribe(topics, group).await.map(Subscription::Kafka),
        };
        self.record_error("subscribe", &r);
        r
    }

    /// The lag of every consumer group with a committed offset on any of `topics`,
    /// sorted by (topic, group); see [`GroupLag`] for how it is counted. On Kafka this
    /// lists the cluster's groups and reads their committed offsets without joining
    /// them, so groups of other applications (community brokers) are included.
    /// Failures count in `apflow_bus_errors_total{op="consumer_lag"}`.
    pub async fn consumer_lag(&self, topics: &[String]) -> Result<Vec<GroupLag>, BusError> {
        let r = match self {
            Self::Memory(b) => b.consumer_lag(topics).await,
            #[cfg(feature = "kafka")]
            Self::Kafka(b) => b.consumer_lag(topics).await,
        };
        self.record_error("consumer_lag", &r);
        r
    }

    fn record_error<T>(&self, op: &str, r: &Result<T, BusError>) {
        if let Err(e) = r {
            metrics::BUS_ERRORS_TOTAL
                .with_label_values(&[self.backend(), op])
                .inc();
            tracing::warn!(backend = self.backend(), op, error = %e, "Bus operation failed.");
        }
    }
}

impl Subscription {
    /// The next message.
    pub async fn next(&mut self) -> Result<Delivery, BusError> {
        let d = match self {
            Self::Memory(s) => s.next().await,
            #[cfg(feature = "kafka")]
            Self::Kafka(s) => s.next().await,
        }?;
        metrics::BUS_CONSUMED_TOTAL
            .with_label_values(&[&d.message.topic])
            .inc();
        Ok(d)
    }

    /// The next message, or `None` if none arrives within `timeout`.
    pub async fn next_timeout(&mut self, timeout: Duration) -> Result<Option<Delivery>, BusError> {
        match tokio::time::timeout(timeout, self.next()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Delivered messages not yet acknowledged.
    pub fn in_flight(&self) -> usize {
        match self {
            Self::Memory(s) => s.tracker.in_flight(),
            #[cfg(feature = "kafka")]
            Self::Kafka(s) => s.in_flight(),
        }
    }

    /// Commits acknowledged offsets now.
    pub async fn commit(&mut self) -> Result<(), BusError> {
        match self {
            Self::Memory(s) => s.commit().await,
            #[cfg(feature = "kafka")]
            Self::Kafka(s) => s.commit().await,
        }
    }

    /// Commits and leaves the group, waiting at most `timeout`.
    pub async fn close(self, timeout: Duration) {
        match self {
            Self::Memory(s) => s.close(timeout).await,
            #[cfg(feature = "kafka")]
            Self::Kafka(s) => s.close(timeout).await,
        }
    }
}

/// Full topic names: the configured prefix plus each event's base name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Topics {
    prefix: String,
}

impl Topics {
    /// Topics with this prefix (e.g. `"apflow."`).
    pub fn new(prefix: impl Into<String>) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }
    /// The topic of event type `E`.
    pub fn of<E: Event>(&self) -> String {
        self.named(E::TOPIC)
    }
    /// The topic with base name `base`.
    pub fn named(&self, base: &str) -> String {
        format!("{}{}", self.prefix, base)
    }
    /// The consumer-group name for `group` (prefixed like topics).
    pub fn group(&self, group: &str) -> String {
        format!("{}{}", self.prefix, group)
    }
    /// Every stage-event topic, with `partitions` partitions each.
    pub fn stage_topics(&self, partitions: i32) -> Vec<TopicSpec> {
        use crate::events::*;
        [
            NextVisit::TOPIC,
            RawImageReady::TOPIC,
            DetectorProcessed::TOPIC,
            VisitComplete::TOPIC,
            DeadLetter::TOPIC,
        ]
        .iter()
        .map(|t| TopicSpec {
            name: self.named(t),
            partitions,
        })
        .collect()
    }
}

/// Header naming the event type of a message.
pub const EVENT_TYPE_HEADER: &str = "apflow-event-type";

/// Publishes typed events to their topics.
#[derive(Clone, Debug)]
pub struct EventPublisher {
    bus: Bus,
    topics: Topics,
}

impl EventPublisher {
    /// A publisher on `bus` with topic names from `topics`.
    pub fn new(bus: Bus, topics: Topics) -> Self {
        Self { bus, topics }
    }

    /// The bus.
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// The topic names.
    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Publishes `event` to its topic, keyed by [`Event::key`].
    pub async fn publish<E: Event>(&self, event: &E) -> Result<Ack, BusError> {
        self.bus
            .publish(Record {
                topic: self.topics.of::<E>(),
                key: Some(event.key()),
                payload: encode(event),
                headers: vec![(EVENT_TYPE_HEADER.into(), E::TYPE.as_bytes().to_vec())],
            })
            .await
    }

    /// Publishes a dead-letter record and counts it.
    pub async fn dead_letter(&self, letter: &DeadLetter) -> Result<Ack, BusError> {
        let ack = self.publish(letter).await?;
        crate::telemetry::events::DeadLettered { letter }.emit();
        Ok(ack)
    }
}

/// Consumes typed events of one type, dead-lettering what does not decode.
#[derive(Debug)]
pub struct EventConsumer<E: Event> {
    subscription: Subscription,
    publisher: EventPublisher,
    stage: &'static str,
    _event: PhantomData<fn() -> E>,
}

impl<E: Event> EventConsumer<E> {
    /// Joins group `group` (prefixed) on `E`'s topic; `stage` names the consumer in dead letters.
    pub async fn subscribe(
        publisher: &EventPublisher,
        group: &str,
        stage: &'static str,
    ) -> Result<Self, BusError> {
        let topics = publisher.topics();
        let subscription = publisher
            .bus()
            .subscribe(&[topics.of::<E>()], &topics.group(group))
            .await?;
        Ok(Self {
            subscription,
            publisher: publisher.clone(),
            stage,
            _event: PhantomData,
        })
    }

    /// The next event that decodes. Messages that do not decode are published to the
    /// dead-letter topic with the reason, then acknowledged; consumption goes on.
    pub async fn next(&mut self) -> Result<(E, Delivery), BusError> {
        loop {
            let delivery = self.subscription.next().await?;
            match decode::<E>(&delivery.message.payload) {
                Ok(event) => return Ok((event, delivery)),
                Err(err) => {
                    let letter = DeadLetter {
                        original: Original::bytes(&delivery.message.payload),
                        source_topic: Some(delivery.message.topic.clone()),
                        stage: self.stage.to_owned(),
                        reason: err.reason().to_owned(),
                        detail: format!(
                            "{err} (partition {}, offset {})",
                            delivery.message.partition, delivery.message.offset
                        ),
                        class: ErrorClass::BadInput,
                        visit: None,
                        detector: None,
                        at: Utc::now(),
                    };
                    // The bad message is acknowledged only once its dead letter is safe.
                    self.publisher.dead_letter(&letter).await?;
                    delivery.ack();
                }
            }
        }
    }

    /// The next event, or `None` if none arrives within `timeout`.
    pub async fn next_timeout(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<(E, Delivery)>, BusError> {
        match tokio::time::timeout(timeout, self.next()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Commits acknowledged offsets now.
    pub async fn commit(&mut self) -> Result<(), BusError> {
        self.subscription.commit().await
    }

    /// Commits and leaves the group, waiting at most `timeout`.
    pub async fn close(self, timeout: Duration) {
        self.subscription.close(timeout).await
    }
}
