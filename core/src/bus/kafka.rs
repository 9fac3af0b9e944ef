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
//!
//! Consumer lag ([`BusBackend::consumer_lag`], see [`consumer_lag`]): the partitions
//! of the topics from the metadata, their watermarks, the cluster's consumer groups
//! (ListGroups), and for each group its committed offsets (OffsetFetch) read by a
//! consumer that carries the group's id but never subscribes, so it never joins the
//! group, triggers no rebalance and commits nothing.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

use super::ack::AckTracker;
use super::{
    Ack, BusBackend, BusError, Delivery, GroupLag, KafkaConfig, Message, Record,
    SubscriptionBackend, TopicSpec,
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

/// A partition's offsets: the earliest retained (`low`) and the next to be written (`high`).
#[derive(Clone, Copy, Debug)]
struct Watermarks {
    partition: i32,
    low: i64,
    high: i64,
}

/// Reading consumer lag takes at most this many times `[bus.kafka] lag_timeout`.
pub const LAG_BUDGET: u32 = 4;

/// Whether listing consumer groups has failed before in this process (warned once).
static LISTING_FAILED: AtomicBool = AtomicBool::new(false);
/// Whether a group was skipped before in this process (warned once).
static SKIP_WARNED: AtomicBool = AtomicBool::new(false);

/// The consumer lag of every consumer group with a committed offset on any of `topics`
/// on `brokers`, sorted by (topic, group) (see [`GroupLag`] for how it is counted).
///
/// Blocking: each broker request waits at most `config.lag_timeout`, and all of them
/// together at most [`LAG_BUDGET`] times that (then [`BusError::Lag`]); run it off the
/// async workers ([`KafkaBus`] does, and stops waiting at the same bound). Topics that
/// do not exist are skipped.
/// The reading clients use [`base_config`] (TLS, SASL) and commit nothing.
///
/// The groups read are those the brokers list (ListGroups) plus `config.lag_groups`; if
/// listing fails, the configured groups alone (warned once per process), or an error
/// when none are configured. A group whose committed offsets cannot be read (the client
/// is not authorised to describe it, or it was deleted after the listing) is left out;
/// the call fails only if no group's could be read. On a secured cluster the client
/// therefore needs `Describe` on the cluster (to list every group) and on every group
/// whose lag it should report (community brokers' included), and on the topics.
pub fn consumer_lag(
    brokers: &str,
    config: &KafkaConfig,
    topics: &[String],
) -> Result<Vec<GroupLag>, BusError> {
    let deadline = Instant::now() + config.lag_timeout * LAG_BUDGET;
    // Each request's bound: the per-request timeout, or what is left of the budget.
    let timeout = || -> Result<Duration, BusError> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BusError::Lag(format!(
                "not done within {LAG_BUDGET} × lag_timeout ({:?})",
                config.lag_timeout * LAG_BUDGET
            )));
        }
        Ok(left.min(config.lag_timeout))
    };
    let lag_err = |what: &str, e: KafkaError| BusError::Lag(format!("{what}: {e}"));
    let admin: BaseConsumer = base_config(brokers, config)?
        .create()
        .map_err(|e| BusError::Config(e.to_string()))?;

    // Partitions and their (low, high) watermarks, per topic.
    let mut names: Vec<&String> = topics.iter().collect();
    names.sort();
    names.dedup();
    let mut partitions: Vec<(&str, Vec<Watermarks>)> = Vec::new();
    for topic in names {
        let metadata = admin
            .fetch_metadata(Some(topic), timeout()?)
            .map_err(|e| lag_err(&format!("metadata of `{topic}`"), e))?;
        let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
            continue;
        };
        if let Some(code) = t.error() {
            let code = RDKafkaErrorCode::from(code);
            if code == RDKafkaErrorCode::UnknownTopicOrPartition {
                tracing::debug!(topic, "No such topic: no consumer lag to read.");
                continue;
            }
            return Err(BusError::Lag(format!("metadata of `{topic}`: {code}")));
        }
        let mut marks = Vec::with_capacity(t.partitions().len());
        for p in t.partitions() {
            let (low, high) = admin
                .fetch_watermarks(topic, p.id(), timeout()?)
                .map_err(|e| lag_err(&format!("watermarks of `{topic}` [{}]", p.id()), e))?;
            marks.push(Watermarks {
                partition: p.id(),
                low,
                high,
            });
        }
        marks.sort_unstable_by_key(|m| m.partition);
        partitions.push((topic.as_str(), marks));
    }
    if partitions.is_empty() {
        return Ok(Vec::new());
    }

    // The listed groups plus the configured ones; when listing fails, the configured
    // ones alone (an error if there are none).
    let mut group_names: Vec<String> = config.lag_groups.clone();
    match admin.fetch_group_list(None, timeout()?) {
        Ok(list) => group_names.extend(list.groups().iter().map(|g| g.name().to_owned())),
        Err(e) if group_names.is_empty() => return Err(lag_err("listing consumer groups", e)),
        Err(e) => {
            if LISTING_FAILED.swap(true, Ordering::Relaxed) {
                tracing::debug!(error = %e, "Listing consumer groups failed again; reading the configured ones.");
            } else {
                tracing::warn!(
                    error = %e,
                    groups = ?config.lag_groups,
                    "Listing consumer groups failed; reading the lag of the configured \
                     [bus.kafka] lag_groups only (logged once)."
                );
            }
        }
    }
    group_names.sort_unstable();
    group_names.dedup();

    let mut wanted = TopicPartitionList::new();
    for (topic, marks) in &partitions {
        for m in marks {
            wanted.add_partition(topic, m.partition);
        }
    }
    let mut out = Vec::new();
    let mut failed = Vec::new();
    for group in &group_names {
        let group = group.as_str();
        // Carries the group's id to read its offsets; never subscribes, so it does not
        // join the group, and with auto-commit off it can commit nothing.
        let reader: BaseConsumer = base_config(brokers, config)?
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(|e| BusError::Config(e.to_string()))?;
        let committed = match reader.committed_offsets(wanted.clone(), timeout()?) {
            Ok(c) => c,
            Err(e) => {
                // One group's offsets unreadable (not authorised to describe it, deleted
                // since it was listed): the others are still reported. Every group
                // failing is the round failing.
                if SKIP_WARNED.swap(true, Ordering::Relaxed) {
                    tracing::debug!(group, error = %e, "Committed offsets not readable; group skipped.");
                } else {
                    tracing::warn!(
                        group,
                        error = %e,
                        "Committed offsets not readable; group skipped (further skips are \
                         logged at debug level)."
                    );
                }
                failed.push(lag_err(&format!("committed offsets of group `{group}`"), e));
                continue;
            }
        };
        for (topic, marks) in &partitions {
            let mut lag = 0;
            let mut with_offset = 0u32;
            for &Watermarks {
                partition,
                low,
                high,
            } in marks
            {
                let at = match committed
                    .find_partition(topic, partition)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(o)) => {
                        with_offset += 1;
                        o.max(low)
                    }
                    _ => low,
                };
                lag += (high - at).max(0);
            }
            if with_offset > 0 {
                out.push(GroupLag {
                    topic: (*topic).to_owned(),
                    group: group.to_owned(),
                    lag,
                    partitions: with_offset,
                });
            }
        }
    }
    if failed.len() == group_names.len()
        && let Some(first) = failed.into_iter().next()
    {
        return Err(first);
    }
    out.sort_by(|a, b| (&a.topic, &a.group).cmp(&(&b.topic, &b.group)));
    Ok(out)
}

impl BusBackend for KafkaBus {
    type Subscription = KafkaSubscription;

    async fn consumer_lag(&self, topics: &[String]) -> Result<Vec<GroupLag>, BusError> {
        let budget = self.config.lag_timeout * LAG_BUDGET;
        let (brokers, config, topics) =
            (self.brokers.clone(), self.config.clone(), topics.to_vec());
        let task = tokio::task::spawn_blocking(move || consumer_lag(&brokers, &config, &topics));
        // Dropping a client can block past its requests' timeouts: stop waiting at the
        // budget (plus a second), leaving the thread to finish on its own.
        match tokio::time::timeout(budget + Duration::from_secs(1), task).await {
            Ok(joined) => {
                joined.map_err(|e| BusError::Lag(format!("the lag reading task failed: {e}")))?
            }
            Err(_) => Err(BusError::Lag(format!(
                "not done within {LAG_BUDGET} × lag_timeout ({budget:?})"
            ))),
        }
    }

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
