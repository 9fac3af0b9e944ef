//! Bus configuration (serde only; [`super::Bus::from_config`] builds the clients).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::Secret;

/// `[bus]`: which backend, topic naming, and per-backend settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// `memory://` (in-process, the default) or `kafka://host:port[,host:port…]`.
    pub url: String,
    /// Prefix of every topic and consumer-group name.
    pub topic_prefix: String,
    /// Partitions of the stage-event topics when apflow creates them.
    pub partitions: i32,
    /// In-process bus settings.
    pub memory: MemoryBusConfig,
    /// Kafka settings.
    pub kafka: KafkaConfig,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            url: "memory://".into(),
            topic_prefix: "apflow.".into(),
            partitions: 4,
            memory: MemoryBusConfig::default(),
            kafka: KafkaConfig::default(),
        }
    }
}

impl BusConfig {
    /// The brokers of a `kafka://host:port[,…]` URL; `None` for another backend (or no
    /// brokers). [`super::Bus::from_config`] gives the errors.
    pub fn kafka_brokers(&self) -> Option<&str> {
        self.url
            .trim()
            .strip_prefix("kafka://")
            .filter(|b| !b.is_empty())
    }
}

/// `[bus.memory]`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryBusConfig {
    /// Bytes a topic retains before publishers wait (or, with no consumer group, the
    /// oldest messages are dropped).
    pub max_retained_bytes: usize,
}

impl Default for MemoryBusConfig {
    fn default() -> Self {
        Self {
            max_retained_bytes: 1 << 30,
        }
    }
}

/// `[bus.kafka]`: producer and consumer settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// `client.id` of every client.
    pub client_id: String,
    /// Replication factor of topics apflow creates.
    pub replication_factor: i32,
    /// `compression.type`: none, gzip, snappy, lz4 or zstd.
    pub compression: String,
    /// `linger.ms`: how long the producer waits to fill a batch.
    #[serde(with = "humantime_serde")]
    pub linger: Duration,
    /// `message.timeout.ms`: how long a message may wait for acknowledgement.
    #[serde(with = "humantime_serde")]
    pub message_timeout: Duration,
    /// `fetch.wait.max.ms`: how long the broker may hold a fetch.
    #[serde(with = "humantime_serde")]
    pub fetch_wait_max: Duration,
    /// `session.timeout.ms` of consumer-group members.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// `auto.commit.interval.ms`: how often acknowledged offsets are committed.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// Bound of each broker request made to read consumer lag (listing groups, a
    /// group's committed offsets, a partition's watermarks, topic metadata); the whole
    /// reading is bounded by four times this (`kafka::LAG_BUDGET`).
    #[serde(with = "humantime_serde")]
    pub lag_timeout: Duration,
    /// Consumer groups whose lag is always read, in addition to the groups the brokers
    /// list. Needed only where listing groups fails (the `tansu` test broker answers
    /// ListGroups by dropping the connection): those groups are then still reported.
    pub lag_groups: Vec<String>,
    /// TLS and SASL.
    pub security: KafkaSecurity,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            client_id: "apflow".into(),
            replication_factor: 1,
            compression: "lz4".into(),
            linger: Duration::from_millis(5),
            message_timeout: Duration::from_secs(30),
            fetch_wait_max: Duration::from_millis(100),
            session_timeout: Duration::from_secs(10),
            commit_interval: Duration::from_secs(1),
            lag_timeout: Duration::from_secs(5),
            lag_groups: Vec::new(),
            security: KafkaSecurity::default(),
        }
    }
}

/// `[bus.kafka.security]`: TLS and SASL/SCRAM for every Kafka client.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSecurity {
    /// `security.protocol`: plaintext, ssl, sasl_plaintext or sasl_ssl.
    pub protocol: String,
    /// `sasl.mechanism`, e.g. SCRAM-SHA-512.
    pub sasl_mechanism: Option<String>,
    /// SASL user name.
    pub username: Option<String>,
    /// SASL password (from the file, inline, or an environment variable; never logged).
    pub password: Option<Secret>,
    /// CA bundle for TLS (`ssl.ca.location`).
    pub ca_location: Option<String>,
    /// Client certificate (`ssl.certificate.location`).
    pub certificate_location: Option<String>,
    /// Client key (`ssl.key.location`).
    pub key_location: Option<String>,
}

impl Default for KafkaSecurity {
    fn default() -> Self {
        Self {
            protocol: "plaintext".into(),
            sasl_mechanism: None,
            username: None,
            password: None,
            ca_location: None,
            certificate_location: None,
            key_location: None,
        }
    }
}
