//! [`AnyApdb`]: the backend picked by URL, with per-method latency and error metrics
//! recorded in this one place.

use std::future::Future;
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::Instant;

use apflow_core::ids::{DetectorId, DiaObjectId, DiaSourceId, VisitId};
use prometheus::{HistogramVec, IntCounterVec};

use crate::ApdbConfig;
use crate::api::{Apdb, ApdbInfo, Counts, StoreBatch, StoreReport};
use crate::error::ApdbError;
use crate::partition::{Region, TimeWindow};
use crate::schema::{DiaForcedSource, DiaObjectLast, DiaSource, SsObject};
use crate::sqlite::SqliteApdb;

/// Where an APDB lives, parsed from its URL.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApdbUrl {
    /// `sqlite://PATH` (relative) or `sqlite:///abs/path`.
    Sqlite(PathBuf),
    /// `scylla://host[:port][,host2[:port]]/keyspace`.
    Scylla {
        /// Contact points, `host:port` (port 9042 by default).
        nodes: Vec<String>,
        /// Keyspace.
        keyspace: String,
    },
}

impl ApdbUrl {
    /// Parses an APDB URL.
    pub fn parse(url: &str) -> Result<Self, ApdbError> {
        let bad = |reason: &str| ApdbError::BadUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        if let Some(path) = url.strip_prefix("sqlite://") {
            if path.is_empty() {
                return Err(bad("no file path after sqlite://"));
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if let Some(rest) = url.strip_prefix("scylla://") {
            let (hosts, keyspace) = rest
                .split_once('/')
                .ok_or_else(|| bad("no /keyspace after the hosts"))?;
            let ok_ks = !keyspace.is_empty()
                && keyspace.len() <= 48
                && keyspace
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_')
                && !keyspace.starts_with(|c: char| c.is_ascii_digit());
            if !ok_ks {
                return Err(bad(
                    "the keyspace must be 1-48 letters, digits or _, not starting with a digit",
                ));
            }
            let nodes: Vec<String> = hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| {
                    if h.contains(':') {
                        h.to_owned()
                    } else {
                        format!("{h}:9042")
                    }
                })
                .collect();
            if nodes.is_empty() {
                return Err(bad("no host before /keyspace"));
            }
            return Ok(Self::Scylla {
                nodes,
                keyspace: keyspace.to_owned(),
            });
        }
        Err(bad("unknown scheme"))
    }
}

/// Any APDB backend, chosen by URL.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub enum AnyApdb {
    /// The embedded SQLite backend.
    Sqlite(SqliteApdb),
    /// The ScyllaDB / Cassandra backend.
    #[cfg(feature = "scylla")]
    Scylla(crate::scylla::ScyllaApdb),
}

#[cfg(not(feature = "scylla"))]
fn scylla_missing() -> ApdbError {
    ApdbError::BackendNotCompiled {
        backend: "scylla",
        feature: "scylla",
    }
}

impl AnyApdb {
    /// Opens an existing APDB, checking its schema version.
    pub async fn open(url: &str) -> Result<Self, ApdbError> {
        match ApdbUrl::parse(url)? {
            ApdbUrl::Sqlite(p) => Ok(Self::Sqlite(SqliteApdb::open(p)?)),
            #[cfg(feature = "scylla")]
            ApdbUrl::Scylla { nodes, keyspace } => Ok(Self::Scylla(
                crate::scylla::ScyllaApdb::open(&nodes, &keyspace).await?,
            )),
            #[cfg(not(feature = "scylla"))]
            ApdbUrl::Scylla { .. } => Err(scylla_missing()),
        }
    }

    /// Creates a new APDB (tables, keyspace, metadata).
    pub async fn create(url: &str, config: &ApdbConfig) -> Result<Self, ApdbError> {
        match ApdbUrl::parse(url)? {
            ApdbUrl::Sqlite(p) => Ok(Self::Sqlite(SqliteApdb::create(p, config)?)),
            #[cfg(feature = "scylla")]
            ApdbUrl::Scylla { nodes, keyspace } => Ok(Self::Scylla(
                crate::scylla::ScyllaApdb::create(&nodes, &keyspace, config).await?,
            )),
            #[cfg(not(feature = "scylla"))]
            ApdbUrl::Scylla { .. } => {
                let _ = config;
                Err(scylla_missing())
            }
        }
    }

    /// Opens the APDB at `url`, creating it first if there is none.
    ///
    /// Several processes may start on one new APDB at once (workers of a deployment):
    /// when another one creates it first, this one opens what it created, retrying for up
    /// to ~5 s while the other holds the database.
    pub async fn open_or_create(url: &str, config: &ApdbConfig) -> Result<Self, ApdbError> {
        let mut attempt = 0;
        loop {
            let r = match Self::open(url).await {
                Err(ApdbError::NotInitialized { .. }) => Self::create(url, config).await,
                other => other,
            };
            match r {
                // Another process created it meanwhile (open it), or holds the database
                // while it does (wait for it).
                Err(ApdbError::AlreadyExists { .. } | ApdbError::Unavailable { .. })
                    if attempt < 25 => {}
                other => return other,
            }
            attempt += 1;
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    }

    /// Backend name.
    pub fn backend(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
            #[cfg(feature = "scylla")]
            Self::Scylla(_) => "scylla",
        }
    }
}

/// Prometheus series of the APDB, in the default registry.
#[derive(Debug)]
struct Metrics {
    read_seconds: HistogramVec,
    write_seconds: HistogramVec,
    errors_total: IntCounterVec,
    rows_written_total: IntCounterVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let buckets = vec![
        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
    ];
    Metrics {
        read_seconds: prometheus::register_histogram_vec!(
            "apflow_apdb_read_seconds",
            "Time of APDB read calls, seconds, by operation and backend.",
            &["op", "backend"],
            buckets.clone()
        )
        .expect("metric registers once"),
        write_seconds: prometheus::register_histogram_vec!(
            "apflow_apdb_write_seconds",
            "Time of APDB write calls, seconds, by operation and backend.",
            &["op", "backend"],
            buckets
        )
        .expect("metric registers once"),
        errors_total: prometheus::register_int_counter_vec!(
            "apflow_apdb_errors_total",
            "Failed APDB calls, by operation and error kind.",
            &["op", "kind"]
        )
        .expect("metric registers once"),
        rows_written_total: prometheus::register_int_counter_vec!(
            "apflow_apdb_rows_written_total",
            "Rows written to the APDB, by table.",
            &["table"]
        )
        .expect("metric registers once"),
    }
});

/// The one place APDB calls are timed and counted.
async fn observed<T>(
    backend: &'static str,
    op: &'static str,
    write: bool,
    fut: impl Future<Output = Result<T, ApdbError>>,
) -> Result<T, ApdbError> {
    let t0 = Instant::now();
    let out = fut.await;
    let m = &*METRICS;
    let h = if write {
        &m.write_seconds
    } else {
        &m.read_seconds
    };
    h.with_label_values(&[op, backend])
        .observe(t0.elapsed().as_secs_f64());
    if let Err(e) = &out {
        let kind = match e.kind() {
            crate::ErrorKind::Retryable => "retryable",
            crate::ErrorKind::BadInput => "bad_input",
            crate::ErrorKind::Internal => "internal",
        };
        m.errors_total.with_label_values(&[op, kind]).inc();
        tracing::warn!(op, backend, error = %e, "APDB call failed.");
    }
    out
}

macro_rules! delegate {
    ($self:ident, $op:literal, $write:literal, |$b:ident| $call:expr) => {
        match $self {
            AnyApdb::Sqlite($b) => observed("sqlite", $op, $write, $call).await,
            #[cfg(feature = "scylla")]
            AnyApdb::Scylla($b) => observed("scylla", $op, $write, $call).await,
        }
    };
}

impl Apdb for AnyApdb {
    async fn dia_objects(&self, region: &Region) -> Result<Vec<DiaObjectLast>, ApdbError> {
        delegate!(self, "dia_objects", false, |b| b.dia_objects(region))
    }
    async fn dia_sources(
        &self,
        region: &Region,
        objects: &[DiaObjectId],
        window: TimeWindow,
    ) -> Result<Vec<DiaSource>, ApdbError> {
        delegate!(self, "dia_sources", false, |b| b
            .dia_sources(region, objects, window))
    }
    async fn dia_forced_sources(
        &self,
        region: &Region,
        objects: &[DiaObjectId],
        window: TimeWindow,
    ) -> Result<Vec<DiaForcedSource>, ApdbError> {
        delegate!(self, "dia_forced_sources", false, |b| b
            .dia_forced_sources(region, objects, window))
    }
    async fn store(&self, batch: &StoreBatch) -> Result<StoreReport, ApdbError> {
        let r = delegate!(self, "store", true, |b| b.store(batch))?;
        let m = &METRICS.rows_written_total;
        m.with_label_values(&["DiaObject"]).inc_by(r.objects as u64);
        m.with_label_values(&["DiaSource"]).inc_by(r.sources as u64);
        m.with_label_values(&["DiaForcedSource"])
            .inc_by(r.forced as u64);
        Ok(r)
    }
    async fn is_stored(&self, visit: VisitId, detector: DetectorId) -> Result<bool, ApdbError> {
        delegate!(self, "is_stored", false, |b| b.is_stored(visit, detector))
    }
    async fn store_ss_objects(&self, objects: &[SsObject]) -> Result<(), ApdbError> {
        delegate!(self, "store_ss_objects", true, |b| b
            .store_ss_objects(objects))
    }
    async fn reassign_to_ss_objects(
        &self,
        assignments: &[(DiaSourceId, i64)],
    ) -> Result<usize, ApdbError> {
        delegate!(self, "reassign_to_ss_objects", true, |b| b
            .reassign_to_ss_objects(assignments))
    }
    async fn counts(&self) -> Result<Counts, ApdbError> {
        delegate!(self, "counts", false, |b| b.counts())
    }
    async fn info(&self) -> Result<ApdbInfo, ApdbError> {
        delegate!(self, "info", false, |b| b.info())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        assert_eq!(
            ApdbUrl::parse("sqlite:///tmp/a.db").unwrap(),
            ApdbUrl::Sqlite("/tmp/a.db".into())
        );
        assert_eq!(
            ApdbUrl::parse("scylla://h1,h2:9043/apdb_1").unwrap(),
            ApdbUrl::Scylla {
                nodes: vec!["h1:9042".into(), "h2:9043".into()],
                keyspace: "apdb_1".into()
            }
        );
        for bad in [
            "postgres://x/y",
            "sqlite://",
            "scylla://h",
            "scylla:///ks",
            "scylla://h/1ks",
        ] {
            let e = ApdbUrl::parse(bad).unwrap_err();
            assert!(e.to_string().contains("sqlite:///path"), "{e}");
        }
    }

    #[test]
    fn processes_starting_on_one_new_apdb_all_open_it() {
        // Threads with runtimes of their own, released together, as separate processes
        // would be; repeated, since the race is narrow.
        for _ in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let url = format!("sqlite://{}", dir.path().join("apdb.sqlite").display());
            let start = std::sync::Barrier::new(4);
            std::thread::scope(|s| {
                let handles: Vec<_> = (0..4)
                    .map(|_| {
                        s.spawn(|| {
                            let rt = tokio::runtime::Builder::new_current_thread()
                                .enable_all()
                                .build()
                                .unwrap();
                            start.wait();
                            rt.block_on(AnyApdb::open_or_create(&url, &ApdbConfig::default()))
                                .map(|a| a.backend())
                        })
                    })
                    .collect();
                for h in handles {
                    assert_eq!(h.join().unwrap().unwrap(), "sqlite");
                }
            });
        }
    }

    #[cfg(not(feature = "scylla"))]
    #[tokio::test]
    async fn compiled_out_backend_names_its_feature() {
        let e = AnyApdb::open("scylla://localhost/apdb").await.unwrap_err();
        assert!(e.to_string().contains("--features scylla"), "{e}");
    }
}
