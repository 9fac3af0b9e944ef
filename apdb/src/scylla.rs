//! The ScyllaDB / Apache Cassandra backend (feature `scylla`), after DMTN-184.
//!
//! * One keyspace per APDB, `NetworkTopologyStrategy` with the configured replication
//!   factor.
//! * `DiaSource`, `DiaForcedSource` and `DiaObject` are partitioned by
//!   `((apdb_part, apdb_time_part), …)`: spatial pixel × 30-day partition; `DiaObjectLast`
//!   by `((apdb_part), diaObjectId)`. Lookup tables `DiaSourceToPartition` and
//!   `DiaObjectLastToPartition` find a row's partition from its id.
//! * Reads query every (pixel, time partition) of the region and window concurrently
//!   and filter the rows client-side; writes are concurrent upserts through prepared
//!   statements at the configured consistency (QUORUM by default); every statement is
//!   retried with exponential backoff ([`Backoff`]) on timeouts and unavailable nodes.
//! * Idempotency: every row's key derives from deterministic ids, so a rerun overwrites
//!   the same rows. The `ApdbVisitDetector` row, written last, lists the keys written
//!   (and the `DiaObjectLast` rows replaced), so a rerun deletes the rows only the
//!   earlier run wrote and restores the `DiaObjectLast` versions it had replaced.
//!   Cassandra has no multi-partition transactions: a crash mid-store leaves rows but
//!   no marker, and the rerun replaces them.
//! * Unlike SQLite, `validityEndMjdTai` of older DiaObject versions is not updated
//!   (that would be a read before every write); the current version is `DiaObjectLast`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use apflow_core::ids::{DetectorId, DiaObjectId, DiaSourceId, VisitId};
use futures::{StreamExt, TryStreamExt, stream};
use scylla::client::session::Session;
use scylla::client::session_builder::SessionBuilder;
use scylla::statement::Consistency;
use scylla::statement::prepared::PreparedStatement;
use scylla::value::{CqlValue, Row};
use serde::{Deserialize, Serialize};

use crate::api::{Apdb, ApdbInfo, Counts, StoreBatch, StoreReport};
use crate::error::{ApdbError, BoxError};
use crate::partition::{Region, TimeWindow, pixel_of, time_partition};
use crate::retry::Backoff;
use crate::schema::{
    DiaForcedSource, DiaObject, DiaObjectLast, DiaSource, METADATA_TABLE, PART_COLUMN, Record,
    SCHEMA_VERSION, SsObject, TIME_PART_COLUMN, TableDef, VISIT_DETECTOR_TABLE, Value,
    column_names, quoted, schema, sort_history,
};
use crate::sqlite::check_version;
use crate::{ApdbConfig, metadata_entries};

/// Concurrent statements in flight per call.
const CONCURRENCY: usize = 64;

fn to_cql(v: &Value) -> Option<CqlValue> {
    Some(match v {
        Value::Null => return None,
        Value::Long(x) => CqlValue::BigInt(*x),
        Value::Int(x) => CqlValue::Int(*x),
        Value::Double(x) => CqlValue::Double(*x),
        Value::Float(x) => CqlValue::Float(*x),
        Value::Boolean(x) => CqlValue::Boolean(*x),
        Value::String(s) => CqlValue::Text(s.clone()),
    })
}

fn from_cql(v: Option<CqlValue>) -> Value {
    match v {
        None | Some(CqlValue::Empty) => Value::Null,
        Some(CqlValue::BigInt(x)) => Value::Long(x),
        Some(CqlValue::Int(x)) => Value::Int(x),
        Some(CqlValue::Double(x)) => Value::Double(x),
        Some(CqlValue::Float(x)) => Value::Float(x),
        Some(CqlValue::Boolean(x)) => Value::Boolean(x),
        Some(CqlValue::Text(s) | CqlValue::Ascii(s)) => Value::String(s),
        Some(other) => Value::String(format!("{other:?}")),
    }
}

fn unavailable(op: &'static str) -> impl Fn(scylla::errors::ExecutionError) -> ApdbError {
    move |e| {
        use scylla::errors::ExecutionError as E;
        let source: BoxError = Box::new(e);
        match source.downcast_ref::<E>() {
            Some(E::BadQuery(_) | E::PrepareError(_)) => ApdbError::Internal { op, source },
            _ => ApdbError::Unavailable { op, source },
        }
    }
}

fn internal(op: &'static str) -> impl Fn(BoxError) -> ApdbError {
    move |source| ApdbError::Internal { op, source }
}

fn parse_consistency(s: &str) -> Result<Consistency, ApdbError> {
    Ok(match s.to_ascii_uppercase().as_str() {
        "ONE" => Consistency::One,
        "TWO" => Consistency::Two,
        "THREE" => Consistency::Three,
        "QUORUM" => Consistency::Quorum,
        "ALL" => Consistency::All,
        "LOCAL_QUORUM" => Consistency::LocalQuorum,
        "EACH_QUORUM" => Consistency::EachQuorum,
        "LOCAL_ONE" => Consistency::LocalOne,
        other => {
            return Err(ApdbError::bad_input(
                "open",
                format!(
                    "unknown consistency level {other:?}; use ONE, QUORUM, LOCAL_QUORUM, ALL, …"
                ),
            ));
        }
    })
}

/// Storage columns, CQL type, and the primary key of each table.
fn layout(table: &str) -> (Vec<(&'static str, &'static str)>, String) {
    let part = (PART_COLUMN, "bigint");
    let tpart = (TIME_PART_COLUMN, "int");
    match table {
        "DiaObject" => (
            vec![
                part,
                tpart,
                ("apdb_visit", "bigint"),
                ("apdb_detector", "int"),
            ],
            "((apdb_part, apdb_time_part), \"diaObjectId\", \"validityStartMjdTai\")".into(),
        ),
        "DiaObjectLast" => (vec![part], "((apdb_part), \"diaObjectId\")".into()),
        "DiaSource" => (
            vec![part, tpart],
            "((apdb_part, apdb_time_part), \"diaSourceId\")".into(),
        ),
        "DiaForcedSource" => (
            vec![part, tpart],
            "((apdb_part, apdb_time_part), \"diaForcedSourceId\")".into(),
        ),
        "ApdbVisitDetector" => (vec![], "((visit, detector))".into()),
        _ => (vec![], String::new()),
    }
}

fn create_table(ks: &str, t: &TableDef) -> String {
    let (extra, pk) = layout(t.name);
    let mut cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| format!("\"{}\" {}", c.name, c.ty.cql_name()))
        .collect();
    cols.extend(extra.iter().map(|(n, ty)| format!("{n} {ty}")));
    let pk = if pk.is_empty() {
        format!(
            "(({}))",
            quoted(
                &t.primary_key
                    .iter()
                    .map(|s| s.to_string())
                    .collect::<Vec<_>>()
            )
        )
    } else {
        pk
    };
    format!(
        "CREATE TABLE IF NOT EXISTS {ks}.\"{}\" ({}, PRIMARY KEY {pk})",
        t.name,
        cols.join(", ")
    )
}

/// Every CQL statement creating the keyspace's tables.
pub fn ddl(ks: &str) -> Vec<String> {
    let mut out: Vec<String> = schema()
        .tables
        .iter()
        .map(|t| create_table(ks, t))
        .collect();
    out.push(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.\"DiaSourceToPartition\" (\"diaSourceId\" bigint PRIMARY KEY, apdb_part bigint, apdb_time_part int)"
    ));
    out.push(format!(
        "CREATE TABLE IF NOT EXISTS {ks}.\"DiaObjectLastToPartition\" (\"diaObjectId\" bigint PRIMARY KEY, apdb_part bigint)"
    ));
    out
}

#[derive(Debug)]
struct Stmts {
    sel_objects: PreparedStatement,
    sel_sources: PreparedStatement,
    sel_forced: PreparedStatement,
    ins_object: PreparedStatement,
    ins_last: PreparedStatement,
    sel_last: PreparedStatement,
    del_last: PreparedStatement,
    ins_last_part: PreparedStatement,
    sel_last_part: PreparedStatement,
    del_last_part: PreparedStatement,
    ins_source: PreparedStatement,
    ins_source_part: PreparedStatement,
    sel_source_part: PreparedStatement,
    del_source: PreparedStatement,
    del_object: PreparedStatement,
    ins_forced: PreparedStatement,
    del_forced: PreparedStatement,
    upd_source_ss: PreparedStatement,
    sel_vd: PreparedStatement,
    ins_vd: PreparedStatement,
    ins_ss: PreparedStatement,
}

/// Keys a store wrote, kept in `ApdbVisitDetector.writtenKeys` for reruns.
#[derive(Debug, Default, Serialize, Deserialize)]
struct Written {
    sources: Vec<(i64, i32, i64)>,
    forced: Vec<(i64, i32, i64)>,
    objects: Vec<(i64, i32, i64, f64)>,
    /// The DiaObjectLast rows this store replaced (`None`: the object was new).
    replaced_last: BTreeMap<i64, Option<DiaObjectLast>>,
}

/// The ScyllaDB / Cassandra APDB.
#[derive(Clone)]
pub struct ScyllaApdb {
    inner: Arc<Inner>,
}

struct Inner {
    session: Session,
    url: String,
    keyspace: String,
    stmts: Stmts,
    backoff: Backoff,
}

impl std::fmt::Debug for ScyllaApdb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScyllaApdb")
            .field("url", &self.inner.url)
            .field("keyspace", &self.inner.keyspace)
            .finish_non_exhaustive()
    }
}

async fn connect(nodes: &[String]) -> Result<Session, ApdbError> {
    SessionBuilder::new()
        .known_nodes(nodes)
        .build()
        .await
        .map_err(|e| ApdbError::Unavailable {
            op: "connect",
            source: Box::new(e),
        })
}

fn url_of(nodes: &[String], ks: &str) -> String {
    format!("scylla://{}/{ks}", nodes.join(","))
}

impl ScyllaApdb {
    /// Creates the keyspace, tables and metadata, then opens it.
    pub async fn create(
        nodes: &[String],
        keyspace: &str,
        config: &ApdbConfig,
    ) -> Result<Self, ApdbError> {
        let op = "create";
        let url = url_of(nodes, keyspace);
        let session = connect(nodes).await?;
        parse_consistency(&config.consistency)?;
        session
            .query_unpaged(
                format!(
                    "CREATE KEYSPACE IF NOT EXISTS {keyspace} WITH replication = \
                     {{'class': 'NetworkTopologyStrategy', 'replication_factor': {}}}",
                    config.replication_factor
                ),
                (),
            )
            .await
            .map_err(unavailable(op))?;
        let exists = session
            .query_unpaged(
                format!(
                    "SELECT value FROM {keyspace}.{METADATA_TABLE} WHERE name = 'schema_version'"
                ),
                (),
            )
            .await
            .ok()
            .and_then(|r| r.into_rows_result().ok())
            .is_some_and(|r| r.rows_num() > 0);
        if exists {
            return Err(ApdbError::AlreadyExists { url });
        }
        for stmt in ddl(keyspace) {
            session
                .query_unpaged(stmt, ())
                .await
                .map_err(unavailable(op))?;
        }
        session
            .await_schema_agreement()
            .await
            .map_err(|e| ApdbError::Unavailable {
                op,
                source: Box::new(e),
            })?;
        for (k, v) in metadata_entries(config) {
            session
                .query_unpaged(
                    format!("INSERT INTO {keyspace}.{METADATA_TABLE} (name, value) VALUES (?, ?)"),
                    (k, v),
                )
                .await
                .map_err(unavailable(op))?;
        }
        drop(session);
        Self::open(nodes, keyspace).await
    }

    /// Opens an existing keyspace, checking its schema version. The consistency level
    /// comes from the configuration stored at creation.
    pub async fn open(nodes: &[String], keyspace: &str) -> Result<Self, ApdbError> {
        let op = "open";
        let url = url_of(nodes, keyspace);
        let session = connect(nodes).await?;
        let meta =
            read_metadata(&session, keyspace)
                .await
                .map_err(|e| ApdbError::NotInitialized {
                    url: url.clone(),
                    reason: e.to_string(),
                })?;
        let version = meta
            .get("schema_version")
            .ok_or_else(|| ApdbError::NotInitialized {
                url: url.clone(),
                reason: "no schema_version in the metadata table".into(),
            })?;
        check_version(&url, version)?;
        let config: ApdbConfig = meta
            .get("config")
            .and_then(|c| serde_json::from_str(c).ok())
            .unwrap_or_default();
        let consistency = parse_consistency(&config.consistency)?;
        let stmts = prepare(&session, keyspace, consistency)
            .await
            .map_err(unavailable(op))?;
        Ok(Self {
            inner: Arc::new(Inner {
                session,
                url,
                keyspace: keyspace.to_owned(),
                stmts,
                backoff: Backoff::default(),
            }),
        })
    }

    async fn exec(
        &self,
        op: &'static str,
        st: &PreparedStatement,
        values: Vec<Option<CqlValue>>,
    ) -> Result<Vec<Row>, ApdbError> {
        self.inner
            .backoff
            .run(|| async {
                let r = self
                    .inner
                    .session
                    .execute_unpaged(st, &values)
                    .await
                    .map_err(unavailable(op))?;
                match r.into_rows_result() {
                    Ok(rows) => rows
                        .rows::<Row>()
                        .map_err(|e| internal(op)(Box::new(e)))?
                        .collect::<Result<Vec<_>, _>>()
                        .map_err(|e| internal(op)(Box::new(e))),
                    Err(_) => Ok(Vec::new()),
                }
            })
            .await
    }

    /// Runs many statements concurrently.
    async fn exec_all(
        &self,
        op: &'static str,
        jobs: Vec<(&PreparedStatement, Vec<Option<CqlValue>>)>,
    ) -> Result<Vec<Vec<Row>>, ApdbError> {
        // Futures built in a loop, not a closure, so the returned future stays `Send`
        // (a closure over `&PreparedStatement` trips higher-ranked lifetime inference).
        let mut futs = Vec::with_capacity(jobs.len());
        for (st, v) in jobs {
            futs.push(self.exec(op, st, v));
        }
        stream::iter(futs)
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await
    }

    async fn read_history<R: Record>(
        &self,
        op: &'static str,
        st: &PreparedStatement,
        region: &Region,
        objects: &[DiaObjectId],
        window: TimeWindow,
    ) -> Result<Vec<R>, ApdbError> {
        let set: HashSet<i64> = objects.iter().map(|o| o.0).collect();
        let cols = column_names::<R>();
        let oi = cols
            .iter()
            .position(|c| c == "diaObjectId")
            .expect("column");
        let ti = cols
            .iter()
            .position(|c| c == "midpointMjdTai")
            .expect("column");
        let mut jobs = Vec::new();
        for p in region.pixels() {
            for t in window.partitions() {
                jobs.push((st, vec![Some(CqlValue::BigInt(p)), Some(CqlValue::Int(t))]));
            }
        }
        let mut out = Vec::new();
        for rows in self.exec_all(op, jobs).await? {
            for row in rows {
                let obj = match row.columns.get(oi) {
                    Some(Some(CqlValue::BigInt(o))) => *o,
                    _ => continue,
                };
                let t = match row.columns.get(ti) {
                    Some(Some(CqlValue::Double(t))) => *t,
                    _ => continue,
                };
                if set.contains(&obj) && window.contains(t) {
                    let v: Vec<Value> = row.columns.into_iter().map(from_cql).collect();
                    out.push(R::from_values(v).map_err(|source| ApdbError::Corrupt {
                        table: R::TABLE,
                        source,
                    })?);
                }
            }
        }
        Ok(out)
    }
}

async fn read_metadata(session: &Session, ks: &str) -> Result<BTreeMap<String, String>, BoxError> {
    let r = session
        .query_unpaged(format!("SELECT name, value FROM {ks}.{METADATA_TABLE}"), ())
        .await?
        .into_rows_result()?;
    let mut out = BTreeMap::new();
    for row in r.rows::<(String, String)>()? {
        let (k, v) = row?;
        out.insert(k, v);
    }
    Ok(out)
}

async fn prepare(
    s: &Session,
    ks: &str,
    c: Consistency,
) -> Result<Stmts, scylla::errors::ExecutionError> {
    let p = |cql: String| async move {
        let mut st = s.prepare(cql).await?;
        st.set_consistency(c);
        Ok::<_, scylla::errors::ExecutionError>(st)
    };
    let ins = |table: &str, cols: Vec<String>| {
        let (extra, _) = layout(table);
        let mut all = cols;
        all.extend(extra.iter().map(|(n, _)| n.to_string()));
        let marks = vec!["?"; all.len()].join(", ");
        format!(
            "INSERT INTO {ks}.\"{table}\" ({}) VALUES ({marks})",
            quoted(&all)
        )
    };
    let src = column_names::<DiaSource>();
    let fs = column_names::<DiaForcedSource>();
    let last = column_names::<DiaObjectLast>();
    Ok(Stmts {
        sel_objects: p(format!("SELECT {} FROM {ks}.\"DiaObjectLast\" WHERE apdb_part = ?", quoted(&last))).await?,
        sel_sources: p(format!("SELECT {} FROM {ks}.\"DiaSource\" WHERE apdb_part = ? AND apdb_time_part = ?", quoted(&src))).await?,
        sel_forced: p(format!("SELECT {} FROM {ks}.\"DiaForcedSource\" WHERE apdb_part = ? AND apdb_time_part = ?", quoted(&fs))).await?,
        ins_object: p(ins("DiaObject", column_names::<DiaObject>())).await?,
        ins_last: p(ins("DiaObjectLast", last.clone())).await?,
        sel_last: p(format!("SELECT {} FROM {ks}.\"DiaObjectLast\" WHERE apdb_part = ? AND \"diaObjectId\" = ?", quoted(&last))).await?,
        del_last: p(format!("DELETE FROM {ks}.\"DiaObjectLast\" WHERE apdb_part = ? AND \"diaObjectId\" = ?")).await?,
        ins_last_part: p(format!("INSERT INTO {ks}.\"DiaObjectLastToPartition\" (\"diaObjectId\", apdb_part) VALUES (?, ?)")).await?,
        sel_last_part: p(format!("SELECT apdb_part FROM {ks}.\"DiaObjectLastToPartition\" WHERE \"diaObjectId\" = ?")).await?,
        del_last_part: p(format!("DELETE FROM {ks}.\"DiaObjectLastToPartition\" WHERE \"diaObjectId\" = ?")).await?,
        ins_source: p(ins("DiaSource", src)).await?,
        ins_source_part: p(format!("INSERT INTO {ks}.\"DiaSourceToPartition\" (\"diaSourceId\", apdb_part, apdb_time_part) VALUES (?, ?, ?)")).await?,
        sel_source_part: p(format!("SELECT apdb_part, apdb_time_part FROM {ks}.\"DiaSourceToPartition\" WHERE \"diaSourceId\" = ?")).await?,
        del_source: p(format!("DELETE FROM {ks}.\"DiaSource\" WHERE apdb_part = ? AND apdb_time_part = ? AND \"diaSourceId\" = ?")).await?,
        del_object: p(format!("DELETE FROM {ks}.\"DiaObject\" WHERE apdb_part = ? AND apdb_time_part = ? AND \"diaObjectId\" = ? AND \"validityStartMjdTai\" = ?")).await?,
        ins_forced: p(ins("DiaForcedSource", fs)).await?,
        del_forced: p(format!("DELETE FROM {ks}.\"DiaForcedSource\" WHERE apdb_part = ? AND apdb_time_part = ? AND \"diaForcedSourceId\" = ?")).await?,
        upd_source_ss: p(format!("UPDATE {ks}.\"DiaSource\" SET \"ssObjectId\" = ?, \"diaObjectId\" = null WHERE apdb_part = ? AND apdb_time_part = ? AND \"diaSourceId\" = ?")).await?,
        sel_vd: p(format!("SELECT \"writtenKeys\" FROM {ks}.\"{VISIT_DETECTOR_TABLE}\" WHERE visit = ? AND detector = ?")).await?,
        ins_vd: p(format!("INSERT INTO {ks}.\"{VISIT_DETECTOR_TABLE}\" (visit, detector, \"storedMjdTai\", \"nDiaObjects\", \"nDiaSources\", \"nDiaForcedSources\", \"writtenKeys\") VALUES (?, ?, ?, ?, ?, ?, ?)")).await?,
        ins_ss: p(ins("SSObject", column_names::<SsObject>())).await?,
    })
}

fn vals(v: &[Value]) -> Vec<Option<CqlValue>> {
    v.iter().map(to_cql).collect()
}

fn big(x: i64) -> Option<CqlValue> {
    Some(CqlValue::BigInt(x))
}

impl Apdb for ScyllaApdb {
    async fn dia_objects(&self, region: &Region) -> Result<Vec<DiaObjectLast>, ApdbError> {
        let st = &self.inner.stmts.sel_objects;
        let jobs = region.pixels().map(|p| (st, vec![big(p)])).collect();
        let mut out = Vec::new();
        for rows in self.exec_all("dia_objects", jobs).await? {
            for row in rows {
                let v: Vec<Value> = row.columns.into_iter().map(from_cql).collect();
                let o = DiaObjectLast::from_values(v).map_err(|source| ApdbError::Corrupt {
                    table: "DiaObjectLast",
                    source,
                })?;
                if region.contains_deg(o.ra, o.dec) {
                    out.push(o);
                }
            }
        }
        out.sort_by_key(|o| o.dia_object_id);
        Ok(out)
    }

    async fn dia_sources(
        &self,
        region: &Region,
        objects: &[DiaObjectId],
        window: TimeWindow,
    ) -> Result<Vec<DiaSource>, ApdbError> {
        let mut v: Vec<DiaSource> = self
            .read_history(
                "dia_sources",
                &self.inner.stmts.sel_sources,
                region,
                objects,
                window,
            )
            .await?;
        sort_history(&mut v);
        Ok(v)
    }

    async fn dia_forced_sources(
        &self,
        region: &Region,
        objects: &[DiaObjectId],
        window: TimeWindow,
    ) -> Result<Vec<DiaForcedSource>, ApdbError> {
        let mut v: Vec<DiaForcedSource> = self
            .read_history(
                "dia_forced_sources",
                &self.inner.stmts.sel_forced,
                region,
                objects,
                window,
            )
            .await?;
        sort_history(&mut v);
        Ok(v)
    }

    async fn store(&self, b: &StoreBatch) -> Result<StoreReport, ApdbError> {
        let op = "store";
        b.validate()?;
        let s = &self.inner.stmts;
        let visit = b.visit.0 as i64;
        let det = i32::from(b.detector.0);
        let prev_rows = self
            .exec(op, &s.sel_vd, vec![big(visit), Some(CqlValue::Int(det))])
            .await?;
        let previous: Option<Written> = match prev_rows.into_iter().next() {
            None => None,
            Some(row) => match row.columns.into_iter().next().flatten() {
                Some(CqlValue::Text(j)) => {
                    Some(serde_json::from_str(&j).map_err(|e| internal(op)(Box::new(e)))?)
                }
                _ => Some(Written::default()),
            },
        };
        let mut w = Written::default();

        // DiaObjectLast rows about to be replaced (kept from the first run on a rerun).
        let mut jobs = Vec::new();
        for o in &b.objects {
            jobs.push((&s.sel_last_part, vec![big(o.dia_object_id.0)]));
        }
        let parts = self.exec_all(op, jobs).await?;
        let old_part: HashMap<i64, i64> = b
            .objects
            .iter()
            .zip(parts)
            .filter_map(
                |(o, rows)| match rows.into_iter().next()?.columns.into_iter().next()? {
                    Some(CqlValue::BigInt(p)) => Some((o.dia_object_id.0, p)),
                    _ => None,
                },
            )
            .collect();
        let mut moved = Vec::new();
        for o in &b.objects {
            let id = o.dia_object_id.0;
            let new_part = pixel_of(o.ra, o.dec);
            if let Some(prev) = previous.as_ref().and_then(|p| p.replaced_last.get(&id)) {
                w.replaced_last.insert(id, prev.clone());
            } else if let Some(&p) = old_part.get(&id) {
                let rows = self.exec(op, &s.sel_last, vec![big(p), big(id)]).await?;
                let last = match rows.into_iter().next() {
                    Some(row) => Some(
                        DiaObjectLast::from_values(row.columns.into_iter().map(from_cql).collect())
                            .map_err(|source| ApdbError::Corrupt {
                                table: "DiaObjectLast",
                                source,
                            })?,
                    ),
                    None => None,
                };
                w.replaced_last.insert(id, last);
            } else {
                w.replaced_last.insert(id, None);
            }
            if let Some(&p) = old_part.get(&id)
                && p != new_part
            {
                moved.push((&s.del_last, vec![big(p), big(id)]));
            }
        }
        self.exec_all(op, moved).await?;

        let mut jobs: Vec<(&PreparedStatement, Vec<Option<CqlValue>>)> = Vec::new();
        for o in &b.objects {
            let part = pixel_of(o.ra, o.dec);
            let tpart = time_partition(o.validity_start_mjd_tai);
            let mut v = vals(&o.to_values());
            v.extend([
                big(part),
                Some(CqlValue::Int(tpart)),
                big(visit),
                Some(CqlValue::Int(det)),
            ]);
            jobs.push((&s.ins_object, v));
            let mut v = vals(&o.to_last().to_values());
            v.push(big(part));
            jobs.push((&s.ins_last, v));
            jobs.push((&s.ins_last_part, vec![big(o.dia_object_id.0), big(part)]));
            w.objects
                .push((part, tpart, o.dia_object_id.0, o.validity_start_mjd_tai));
        }
        for src in &b.sources {
            let part = pixel_of(src.ra, src.dec);
            let tpart = time_partition(src.midpoint_mjd_tai.0);
            let mut v = vals(&src.to_values());
            v.extend([big(part), Some(CqlValue::Int(tpart))]);
            jobs.push((&s.ins_source, v));
            jobs.push((
                &s.ins_source_part,
                vec![
                    big(src.dia_source_id.0),
                    big(part),
                    Some(CqlValue::Int(tpart)),
                ],
            ));
            w.sources.push((part, tpart, src.dia_source_id.0));
        }
        for f in &b.forced {
            let part = pixel_of(f.ra, f.dec);
            let tpart = time_partition(f.midpoint_mjd_tai.0);
            let mut v = vals(&f.to_values());
            v.extend([big(part), Some(CqlValue::Int(tpart))]);
            jobs.push((&s.ins_forced, v));
            w.forced.push((part, tpart, f.dia_forced_source_id));
        }
        self.exec_all(op, jobs).await?;

        // Rows only the earlier run wrote.
        if let Some(prev) = &previous {
            let mut jobs: Vec<(&PreparedStatement, Vec<Option<CqlValue>>)> = Vec::new();
            let new_s: HashSet<_> = w.sources.iter().copied().collect();
            for k in prev.sources.iter().filter(|k| !new_s.contains(k)) {
                jobs.push((
                    &s.del_source,
                    vec![big(k.0), Some(CqlValue::Int(k.1)), big(k.2)],
                ));
            }
            let new_f: HashSet<_> = w.forced.iter().copied().collect();
            for k in prev.forced.iter().filter(|k| !new_f.contains(k)) {
                jobs.push((
                    &s.del_forced,
                    vec![big(k.0), Some(CqlValue::Int(k.1)), big(k.2)],
                ));
            }
            let new_o: HashSet<i64> = w.objects.iter().map(|k| k.2).collect();
            for k in prev.objects.iter().filter(|k| !new_o.contains(&k.2)) {
                jobs.push((
                    &s.del_object,
                    vec![
                        big(k.0),
                        Some(CqlValue::Int(k.1)),
                        big(k.2),
                        Some(CqlValue::Double(k.3)),
                    ],
                ));
                jobs.push((&s.del_last, vec![big(k.0), big(k.2)]));
                match prev.replaced_last.get(&k.2).cloned().flatten() {
                    Some(last) => {
                        let part = pixel_of(last.ra, last.dec);
                        let mut v = vals(&last.to_values());
                        v.push(big(part));
                        jobs.push((&s.ins_last, v));
                        jobs.push((&s.ins_last_part, vec![big(k.2), big(part)]));
                    }
                    None => jobs.push((&s.del_last_part, vec![big(k.2)])),
                }
            }
            self.exec_all(op, jobs).await?;
        }
        let json = serde_json::to_string(&w).map_err(|e| internal(op)(Box::new(e)))?;
        self.exec(
            op,
            &s.ins_vd,
            vec![
                big(visit),
                Some(CqlValue::Int(det)),
                Some(CqlValue::Double(b.visit_time.0)),
                Some(CqlValue::Int(b.objects.len() as i32)),
                Some(CqlValue::Int(b.sources.len() as i32)),
                Some(CqlValue::Int(b.forced.len() as i32)),
                Some(CqlValue::Text(json)),
            ],
        )
        .await?;
        Ok(StoreReport {
            replaced_previous: previous.is_some(),
            objects: b.objects.len(),
            sources: b.sources.len(),
            forced: b.forced.len(),
        })
    }

    async fn is_stored(&self, visit: VisitId, detector: DetectorId) -> Result<bool, ApdbError> {
        let rows = self
            .exec(
                "is_stored",
                &self.inner.stmts.sel_vd,
                vec![
                    big(visit.0 as i64),
                    Some(CqlValue::Int(i32::from(detector.0))),
                ],
            )
            .await?;
        Ok(!rows.is_empty())
    }

    async fn store_ss_objects(&self, objects: &[SsObject]) -> Result<(), ApdbError> {
        let st = &self.inner.stmts.ins_ss;
        let jobs = objects.iter().map(|o| (st, vals(&o.to_values()))).collect();
        self.exec_all("store_ss_objects", jobs).await.map(drop)
    }

    async fn reassign_to_ss_objects(
        &self,
        assignments: &[(DiaSourceId, i64)],
    ) -> Result<usize, ApdbError> {
        let op = "reassign";
        let s = &self.inner.stmts;
        let jobs = assignments
            .iter()
            .map(|(src, _)| (&s.sel_source_part, vec![big(src.0)]))
            .collect();
        let parts = self.exec_all(op, jobs).await?;
        let mut updates = Vec::new();
        for ((src, ss), rows) in assignments.iter().zip(parts) {
            if let Some(row) = rows.into_iter().next() {
                let mut c = row.columns.into_iter();
                if let (Some(Some(p)), Some(Some(t))) = (c.next(), c.next()) {
                    updates.push((
                        &s.upd_source_ss,
                        vec![big(*ss), Some(p), Some(t), big(src.0)],
                    ));
                }
            }
        }
        let n = updates.len();
        self.exec_all(op, updates).await?;
        Ok(n)
    }

    async fn counts(&self) -> Result<Counts, ApdbError> {
        let ks = &self.inner.keyspace;
        let c = |t: &'static str| async move {
            let r = self
                .inner
                .session
                .query_unpaged(format!("SELECT count(*) FROM {ks}.\"{t}\""), ())
                .await
                .map_err(unavailable("counts"))?
                .into_rows_result()
                .map_err(|e| internal("counts")(Box::new(e)))?;
            let (n,): (i64,) = r
                .single_row()
                .map_err(|e| internal("counts")(Box::new(e)))?;
            Ok::<u64, ApdbError>(n as u64)
        };
        Ok(Counts {
            dia_object_versions: c("DiaObject").await?,
            dia_objects: c("DiaObjectLast").await?,
            dia_sources: c("DiaSource").await?,
            dia_forced_sources: c("DiaForcedSource").await?,
            ss_objects: c("SSObject").await?,
            visit_detectors: c(VISIT_DETECTOR_TABLE).await?,
        })
    }

    async fn info(&self) -> Result<ApdbInfo, ApdbError> {
        let metadata = read_metadata(&self.inner.session, &self.inner.keyspace)
            .await
            .map_err(internal("info"))?;
        let schema_version = metadata
            .get("schema_version")
            .and_then(|v| v.parse().ok())
            .unwrap_or(SCHEMA_VERSION);
        Ok(ApdbInfo {
            backend: "scylla".into(),
            url: self.inner.url.clone(),
            schema_version,
            metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ddl_partitions_by_pixel_and_time() {
        let d = ddl("ks");
        let src = d.iter().find(|s| s.contains("\"DiaSource\" (")).unwrap();
        assert!(
            src.contains("PRIMARY KEY ((apdb_part, apdb_time_part), \"diaSourceId\")"),
            "{src}"
        );
        assert!(src.contains("\"psfFlux\" float"));
        let last = d
            .iter()
            .find(|s| s.contains("\"DiaObjectLast\" ("))
            .unwrap();
        assert!(
            last.contains("PRIMARY KEY ((apdb_part), \"diaObjectId\")"),
            "{last}"
        );
        let meta = d.iter().find(|s| s.contains("metadata")).unwrap();
        assert!(meta.contains("PRIMARY KEY ((\"name\"))"), "{meta}");
    }

    #[test]
    fn consistency_levels_parse() {
        assert_eq!(parse_consistency("quorum").unwrap(), Consistency::Quorum);
        assert!(parse_consistency("MOST").is_err());
    }
}
