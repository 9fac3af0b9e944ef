//! The Alert Production Database (APDB) of apflow.
//!
//! It holds everything the pipeline has seen: DiaObjects (versioned, plus the slim
//! latest version association reads), 12 months of their DiaSources and forced
//! photometry, and solar-system objects. Each detector reads its region's history
//! before association ([`Apdb::dia_objects`], [`Apdb::dia_sources`],
//! [`Apdb::dia_forced_sources`]) and writes its results in one idempotent
//! [`Apdb::store`].
//!
//! * [`schema`] — the one schema definition (tables, columns, units, descriptions, the
//!   `lsst.v11_0` Avro correspondence) and the record structs.
//! * [`partition`] — spatial (HEALPix) × 30-day time partitions.
//! * [`sqlite`] — the embedded backend (default); `scylla` (feature `scylla`) — the
//!   ScyllaDB/Cassandra backend.
//! * [`AnyApdb`] — picks the backend by URL and records per-method metrics.
//! * [`create`], [`info`], [`stats`] — operator functions behind `apflow apdb …`.
//! * [`bench`] — the `apflow bench apdb` measurement.
//!
//! References: Salnikov, DMTN-113 (relational APDB scaling), DMTN-184 (Cassandra APDB);
//! Rubin `sdm_schemas` `apdb.yaml` and `lsst.v11_0` alert schema (column names).

pub mod any;
pub mod api;
pub mod bench;
pub mod error;
pub mod partition;
pub mod retry;
pub mod schema;
#[cfg(feature = "scylla")]
pub mod scylla;
pub mod sqlite;

use serde::{Deserialize, Serialize};

pub use any::AnyApdb;
pub use api::{Apdb, ApdbInfo, Counts, StoreBatch, StoreReport};
pub use error::{ApdbError, ErrorKind};
pub use partition::{Region, TimeWindow};
pub use schema::{
    BandStats, Bands, DiaForcedSource, DiaObject, DiaObjectLast, DiaSource, SsObject,
};

/// Configuration written into a new APDB's metadata table.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApdbConfig {
    /// Scylla/Cassandra keyspace replication factor (`NetworkTopologyStrategy`).
    pub replication_factor: u32,
    /// Scylla/Cassandra consistency level for reads and writes (`QUORUM`, `ONE`,
    /// `LOCAL_QUORUM`, …).
    pub consistency: String,
}

impl Default for ApdbConfig {
    fn default() -> Self {
        Self {
            replication_factor: 3,
            consistency: "QUORUM".into(),
        }
    }
}

pub(crate) fn metadata_entries(config: &ApdbConfig) -> Vec<(String, String)> {
    vec![
        ("schema_version".into(), schema::SCHEMA_VERSION.to_string()),
        ("apflow_version".into(), env!("CARGO_PKG_VERSION").into()),
        ("pixel_depth".into(), partition::PIXEL_DEPTH.to_string()),
        (
            "time_partition_days".into(),
            partition::TIME_PARTITION_DAYS.to_string(),
        ),
        (
            "config".into(),
            serde_json::to_string(config).expect("config serializes"),
        ),
    ]
}

/// `apflow apdb create URL`: creates the tables (keyspace for Scylla) and metadata.
pub async fn create(url: &str, config: &ApdbConfig) -> Result<ApdbInfo, ApdbError> {
    AnyApdb::create(url, config).await?.info().await
}

/// `apflow apdb info URL`: schema version and configuration.
pub async fn info(url: &str) -> Result<ApdbInfo, ApdbError> {
    AnyApdb::open(url).await?.info().await
}

/// What `apflow apdb stats` prints.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Identity and configuration.
    pub info: ApdbInfo,
    /// Row counts.
    pub counts: Counts,
}

impl std::fmt::Display for Stats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}", self.info)?;
        write!(f, "{}", self.counts)
    }
}

/// `apflow apdb stats URL`: configuration and row counts (a full scan on Scylla).
pub async fn stats(url: &str) -> Result<Stats, ApdbError> {
    let apdb = AnyApdb::open(url).await?;
    Ok(Stats {
        info: apdb.info().await?,
        counts: apdb.counts().await?,
    })
}
