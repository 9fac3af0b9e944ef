//! The embedded backend: one SQLite file (bundled SQLite), WAL journal, one writer and
//! a pool of concurrent readers, prepared (cached) statements, one transaction per
//! [`Apdb::store`].
//!
//! Every record table carries the storage columns `apdb_part` (spatial pixel) and, for
//! DiaSource and DiaForcedSource, `apdb_time_part` (30-day partition). The tables a
//! region read scans (DiaObjectLast, DiaSource, DiaForcedSource) are `WITHOUT ROWID`
//! tables clustered by those columns (then the id; the schema's primary key is a
//! `UNIQUE` index), so a region read is one range scan per pixel over contiguous rows,
//! whose cost depends on the rows inside the region and window, not on the size of the
//! database or the history outside the window. The history of a few DiaObjects (what
//! the pipeline reads: the ones its sources matched) is instead looked up through
//! `(diaObjectId, midpointMjdTai)` indexes ([`LOOKUP_MAX_OBJECTS`]). Rows are decoded
//! straight into their records ([`ValueSource`]); margin rows outside the region are
//! dropped before decoding.
//!
//! A database created before this layout keeps its own (rowid tables with
//! `(apdb_part, apdb_time_part)` indexes, no DiaObject indexes): the same queries run
//! on it, slower, and its history reads always scan the region's pixels.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use apflow_core::ids::{DetectorId, DiaObjectId, DiaSourceId, VisitId};
use rusqlite::types::{ToSqlOutput, ValueRef};
use rusqlite::{Connection, ErrorCode, OptionalExtension, ToSql, TransactionBehavior, params};

use crate::api::{Apdb, ApdbInfo, Counts, StoreBatch, StoreReport};
use crate::error::{ApdbError, BoxError};
use crate::partition::{Region, TimeWindow, pixel_of, time_partition};
use crate::schema::{
    DiaForcedSource, DiaObject, DiaObjectLast, DiaSource, METADATA_TABLE, PART_COLUMN, Record,
    SCHEMA_VERSION, SchemaVersion, SsObject, TIME_PART_COLUMN, TableDef, VISIT_DETECTOR_TABLE,
    Value, ValueError, ValueSource, column_names, quoted, schema, sort_history,
};
use crate::{ApdbConfig, metadata_entries};

impl ToSql for Value {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            Value::Null => ToSqlOutput::Borrowed(ValueRef::Null),
            Value::Long(x) => ToSqlOutput::Borrowed(ValueRef::Integer(*x)),
            Value::Int(x) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*x))),
            Value::Double(x) => ToSqlOutput::Borrowed(ValueRef::Real(*x)),
            Value::Float(x) => ToSqlOutput::Borrowed(ValueRef::Real(f64::from(*x))),
            Value::Boolean(x) => ToSqlOutput::Borrowed(ValueRef::Integer(i64::from(*x))),
            Value::String(s) => ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes())),
        })
    }
}

fn classify(op: &'static str) -> impl Fn(rusqlite::Error) -> ApdbError {
    move |e| {
        let code = match &e {
            rusqlite::Error::SqliteFailure(f, _) => Some(f.code),
            _ => None,
        };
        let source: BoxError = Box::new(e);
        match code {
            Some(
                ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::SystemIoFailure
                | ErrorCode::CannotOpen
                | ErrorCode::DiskFull
                | ErrorCode::OutOfMemory,
            ) => ApdbError::Unavailable { op, source },
            Some(ErrorCode::ConstraintViolation) => ApdbError::BadInput {
                op,
                reason: format!("{source} (an id already stored by another visit or detector?)"),
            },
            _ => ApdbError::Internal { op, source },
        }
    }
}

/// The storage columns a table carries besides its record columns.
fn storage_columns(table: &str) -> &'static [&'static str] {
    match table {
        "DiaObject" => &[PART_COLUMN, "apdb_visit", "apdb_detector"],
        "DiaObjectLast" => &[PART_COLUMN],
        "DiaSource" | "DiaForcedSource" => &[PART_COLUMN, TIME_PART_COLUMN],
        _ => &[],
    }
}

/// How a table is laid out on disk when it is not by its primary key: the record
/// tables a region read scans are `WITHOUT ROWID` tables clustered by these columns,
/// so the rows of one spatial pixel (and time partition) are contiguous and a region
/// read is a few sequential range scans instead of one table look-up per row. The
/// schema's primary key is then a `UNIQUE` index.
fn clustering_key(table: &str) -> Option<&'static [&'static str]> {
    match table {
        "DiaObjectLast" => Some(&[PART_COLUMN, "diaObjectId"]),
        "DiaSource" => Some(&[PART_COLUMN, TIME_PART_COLUMN, "diaSourceId"]),
        "DiaForcedSource" => Some(&[PART_COLUMN, TIME_PART_COLUMN, "diaForcedSourceId"]),
        _ => None,
    }
}

/// `CREATE TABLE` and `CREATE INDEX` statements of the whole schema.
pub fn ddl() -> Vec<String> {
    let mut out = Vec::new();
    for t in &schema().tables {
        out.push(create_table(t));
        if clustering_key(t.name).is_some() {
            let pk: Vec<String> = t.primary_key.iter().map(|s| s.to_string()).collect();
            out.push(format!(
                "CREATE UNIQUE INDEX \"{0}_pk\" ON \"{0}\" ({1})",
                t.name,
                quoted(&pk)
            ));
        }
    }
    out.extend(
        [
            "CREATE INDEX DiaObject_visit ON DiaObject (apdb_visit, apdb_detector)",
            "CREATE INDEX DiaSource_visit ON DiaSource (visit, detector)",
            "CREATE INDEX DiaSource_object ON DiaSource (diaObjectId, midpointMjdTai)",
            "CREATE INDEX DiaForcedSource_visit ON DiaForcedSource (visit, detector)",
            "CREATE INDEX DiaForcedSource_object ON DiaForcedSource (diaObjectId, midpointMjdTai)",
        ]
        .map(String::from),
    );
    out
}

fn create_table(t: &TableDef) -> String {
    let mut cols: Vec<String> = t
        .columns
        .iter()
        .map(|c| {
            format!(
                "\"{}\" {}{}",
                c.name,
                c.ty.sqlite_name(),
                if c.nullable { "" } else { " NOT NULL" }
            )
        })
        .collect();
    for s in storage_columns(t.name) {
        cols.push(format!("\"{s}\" INTEGER NOT NULL"));
    }
    let (key, without_rowid) = match clustering_key(t.name) {
        Some(k) => (k, " WITHOUT ROWID"),
        None => (t.primary_key, ""),
    };
    let key: Vec<String> = key.iter().map(|s| s.to_string()).collect();
    format!(
        "CREATE TABLE \"{}\" ({}, PRIMARY KEY ({})){without_rowid}",
        t.name,
        cols.join(", "),
        quoted(&key)
    )
}

#[derive(Debug)]
struct Sql {
    select_objects: String,
    sources: HistorySql,
    forced: HistorySql,
    object_ra_idx: usize,
    object_dec_idx: usize,
    insert_object: String,
    upsert_last: String,
    insert_source: String,
    insert_forced: String,
    upsert_ss: String,
    restore_last: String,
}

/// The two ways of reading a history table (see [`LOOKUP_MAX_OBJECTS`]). Both select
/// the record's columns, `diaObjectId` among them at `object_idx`; `by_object` adds
/// the spatial partition after them, at `part_idx`.
#[derive(Debug)]
struct HistorySql {
    /// One DiaObject's rows in the window (`?1` object, `?2`..`?3` window), through the
    /// `(diaObjectId, midpointMjdTai)` index: only that object's rows in the window are
    /// visited, however many other rows the region holds or how much history lies
    /// outside the window.
    by_object: String,
    /// One pixel's rows in the window (`?1` pixel, `?2`..`?3` time partitions, `?4`..`?5`
    /// window): an equality on the first clustering column lets the time partitions
    /// bound the range scan too.
    by_pixel: String,
    object_idx: usize,
    part_idx: usize,
}

impl HistorySql {
    fn new(table: &str, columns: &[String]) -> Self {
        let cols = quoted(columns);
        let window = "midpointMjdTai >= ?2 AND midpointMjdTai < ?3";
        Self {
            by_object: format!(
                "SELECT {cols}, {PART_COLUMN} FROM \"{table}\" WHERE diaObjectId = ?1 AND {window}"
            ),
            by_pixel: format!(
                "SELECT {cols} FROM \"{table}\" WHERE {PART_COLUMN} = ?1 \
                 AND {TIME_PART_COLUMN} >= ?2 AND {TIME_PART_COLUMN} <= ?3 \
                 AND midpointMjdTai >= ?4 AND midpointMjdTai < ?5"
            ),
            object_idx: columns
                .iter()
                .position(|c| c == "diaObjectId")
                .expect("a history table has diaObjectId"),
            part_idx: columns.len(),
        }
    }
}

impl Sql {
    fn new() -> Self {
        let insert = |verb: &str, table: &str, cols: Vec<String>| {
            let mut all = cols;
            all.extend(storage_columns(table).iter().map(|s| s.to_string()));
            let marks = vec!["?"; all.len()].join(", ");
            format!(
                "{verb} INTO \"{table}\" ({}) VALUES ({marks})",
                quoted(&all)
            )
        };
        let src = column_names::<DiaSource>();
        let fs = column_names::<DiaForcedSource>();
        let last = column_names::<DiaObjectLast>();
        let mut last_p = last.clone();
        last_p.push(PART_COLUMN.into());
        Self {
            select_objects: format!(
                "SELECT {} FROM DiaObjectLast WHERE apdb_part >= ?1 AND apdb_part < ?2",
                quoted(&last)
            ),
            sources: HistorySql::new("DiaSource", &src),
            forced: HistorySql::new("DiaForcedSource", &fs),
            object_ra_idx: last.iter().position(|c| c == "ra").expect("column"),
            object_dec_idx: last.iter().position(|c| c == "dec").expect("column"),
            insert_object: insert(
                "INSERT OR REPLACE",
                "DiaObject",
                column_names::<DiaObject>(),
            ),
            upsert_last: insert("INSERT OR REPLACE", "DiaObjectLast", last),
            insert_source: insert("INSERT", "DiaSource", src),
            insert_forced: insert("INSERT", "DiaForcedSource", fs),
            upsert_ss: insert("INSERT OR REPLACE", "SSObject", column_names::<SsObject>()),
            restore_last: format!(
                "INSERT OR REPLACE INTO DiaObjectLast ({cols}) SELECT {cols} FROM DiaObject \
                 WHERE diaObjectId = ?1 AND validityStartMjdTai = ?2",
                cols = quoted(&last_p)
            ),
        }
    }
}

/// The embedded SQLite APDB.
#[derive(Clone, Debug)]
pub struct SqliteApdb {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    url: String,
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    sql: Sql,
    /// Whether the history tables have their `(diaObjectId, midpointMjdTai)` indexes
    /// (not in databases created before them).
    object_index: bool,
}

fn connect(path: &Path) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    let _mode: String = conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.pragma_update(None, "cache_size", -65_536)?; // 64 MiB
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    let _mmap: i64 = conn.pragma_update_and_check(None, "mmap_size", 1_i64 << 30, |r| r.get(0))?;
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// One row of a result as a [`ValueSource`]: each column converted to a [`Value`] as the
/// record asks for it, in column order.
struct RowValues<'a, 'r> {
    row: &'a rusqlite::Row<'r>,
    next: usize,
    failed: Option<rusqlite::Error>,
}

fn value_of(v: ValueRef<'_>, i: usize) -> rusqlite::Result<Value> {
    Ok(match v {
        ValueRef::Null => Value::Null,
        ValueRef::Integer(x) => Value::Long(x),
        ValueRef::Real(x) => Value::Double(x),
        ValueRef::Text(t) => Value::String(String::from_utf8_lossy(t).into_owned()),
        ValueRef::Blob(_) => {
            return Err(rusqlite::Error::InvalidColumnType(
                i,
                "blob".into(),
                rusqlite::types::Type::Blob,
            ));
        }
    })
}

impl ValueSource for RowValues<'_, '_> {
    fn next_value(&mut self) -> Value {
        let i = self.next;
        self.next += 1;
        match self.row.get_ref(i).and_then(|v| value_of(v, i)) {
            Ok(v) => v,
            Err(e) => {
                self.failed.get_or_insert(e);
                Value::Null
            }
        }
    }
}

/// The record in the first columns of `row` (in [`Record::columns`] order), decoded
/// straight into its struct.
fn decode_row<R: Record>(row: &rusqlite::Row<'_>, op: &'static str) -> Result<R, ApdbError> {
    let mut src = RowValues {
        row,
        next: 0,
        failed: None,
    };
    let rec = R::read_values(&mut src);
    if let Some(e) = src.failed {
        return Err(classify(op)(e));
    }
    rec.ok_or_else(|| {
        // The column that did not fit: the last one read.
        let i = src.next - 1;
        let col = &R::columns()[i];
        let found = row
            .get_ref(i)
            .ok()
            .and_then(|v| value_of(v, i).ok())
            .unwrap_or(Value::Null);
        ApdbError::Corrupt {
            table: R::TABLE,
            source: ValueError {
                column: col.name.clone(),
                expected: col.ty,
                found,
            },
        }
    })
}

impl SqliteApdb {
    /// Creates a new APDB file at `path` with `config`; fails if one exists there.
    pub fn create(path: impl AsRef<Path>, config: &ApdbConfig) -> Result<Self, ApdbError> {
        let path = path.as_ref();
        let url = format!("sqlite://{}", path.display());
        let op = "create";
        let mut conn = connect(path).map_err(classify(op))?;
        // The write lock first, then the check: of processes creating one file at once,
        // one creates it and the others see it exists.
        let tx = conn
            .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
            .map_err(classify(op))?;
        let exists: bool = tx
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE name = ?1",
                [METADATA_TABLE],
                |r| r.get::<_, i64>(0),
            )
            .map_err(classify(op))?
            > 0;
        if exists {
            return Err(ApdbError::AlreadyExists { url });
        }
        for stmt in ddl() {
            tx.execute(&stmt, []).map_err(classify(op))?;
        }
        for (k, v) in metadata_entries(config) {
            tx.execute(
                "INSERT INTO metadata (name, value) VALUES (?1, ?2)",
                params![k, v],
            )
            .map_err(classify(op))?;
        }
        tx.commit().map_err(classify(op))?;
        drop(conn);
        Self::open(path)
    }

    /// Opens an existing APDB file, checking its schema version.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, ApdbError> {
        let path = path.as_ref();
        let url = format!("sqlite://{}", path.display());
        if !path.exists() {
            return Err(ApdbError::NotInitialized {
                url,
                reason: "the file does not exist".into(),
            });
        }
        let conn = connect(path).map_err(classify("open"))?;
        let version: Option<String> = conn
            .query_row(
                "SELECT value FROM metadata WHERE name = 'schema_version'",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| ApdbError::NotInitialized {
                url: url.clone(),
                reason: format!("no metadata table: {e}"),
            })?;
        let version = version.ok_or_else(|| ApdbError::NotInitialized {
            url: url.clone(),
            reason: "no schema_version in the metadata table".into(),
        })?;
        check_version(&url, &version)?;
        let object_index = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'index' \
                 AND name IN ('DiaSource_object', 'DiaForcedSource_object')",
                [],
                |r| r.get::<_, i64>(0),
            )
            .map_err(classify("open"))?
            == 2;
        Ok(Self {
            inner: Arc::new(Inner {
                url,
                path: path.to_owned(),
                writer: Mutex::new(conn),
                readers: Mutex::new(Vec::new()),
                sql: Sql::new(),
                object_index,
            }),
        })
    }

    /// The URL (`sqlite://path`).
    pub fn url(&self) -> &str {
        &self.inner.url
    }

    async fn read<T, F>(&self, op: &'static str, f: F) -> Result<T, ApdbError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection, &Sql) -> Result<T, ApdbError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().expect("reader pool").pop();
            let conn = match pooled {
                Some(c) => c,
                None => {
                    let c = connect(&inner.path).map_err(classify(op))?;
                    c.pragma_update(None, "query_only", true)
                        .map_err(classify(op))?;
                    c
                }
            };
            let out = f(&conn, &inner.sql);
            inner.readers.lock().expect("reader pool").push(conn);
            out
        })
        .await
        .map_err(|e| ApdbError::Internal {
            op,
            source: Box::new(e),
        })?
    }

    async fn write<T, F>(&self, op: &'static str, f: F) -> Result<T, ApdbError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection, &Sql) -> Result<T, ApdbError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn, &inner.sql)
        })
        .await
        .map_err(|e| ApdbError::Internal {
            op,
            source: Box::new(e),
        })?
    }
}

pub(crate) fn check_version(url: &str, found: &str) -> Result<(), ApdbError> {
    let found: SchemaVersion = found.parse().map_err(|reason| ApdbError::NotInitialized {
        url: url.to_owned(),
        reason,
    })?;
    if !SCHEMA_VERSION.can_open(found) {
        return Err(ApdbError::SchemaMismatch {
            url: url.to_owned(),
            found,
            expected: SCHEMA_VERSION,
        });
    }
    Ok(())
}

/// Up to this many DiaObjects, a history read looks each one up through its
/// `(diaObjectId, midpointMjdTai)` index; beyond, it scans the region's pixels in the
/// window. SQLite evaluates every selected column of each row a scan steps on, so a
/// scan costs the ~100 columns of every DiaSource of the region whatever the object
/// filter keeps. Measured on the `apflow bench apdb` database (~7,000 DiaSources in a
/// detector's region and 12-month window): the DiaSources of 20 DiaObjects, 7 ms looked
/// up vs 17 ms scanned; of all ~11,000 DiaObjects of the region, 38 ms looked up vs
/// 28 ms scanned.
const LOOKUP_MAX_OBJECTS: usize = 1000;

/// The history rows (`R`: DiaSource or DiaForcedSource) of `objects` inside `window`,
/// stored in the partitions of `region`, unsorted: each object looked up through its
/// index when the database has those indexes (`object_index`) and there are at most
/// [`LOOKUP_MAX_OBJECTS`] objects, else the region's pixels scanned.
fn read_history<R: Record>(
    conn: &Connection,
    sql: &HistorySql,
    region: &Region,
    objects: &HashSet<i64>,
    window: TimeWindow,
    object_index: bool,
    op: &'static str,
) -> Result<Vec<R>, ApdbError> {
    let lookup = object_index && objects.len() <= LOOKUP_MAX_OBJECTS;
    // One read transaction: the whole read sees one snapshot.
    let tx = conn.unchecked_transaction().map_err(classify(op))?;
    let mut out = Vec::new();
    if lookup {
        let mut stmt = tx.prepare_cached(&sql.by_object).map_err(classify(op))?;
        for &object in objects {
            let mut rows = stmt
                .query(params![object, window.start.0, window.end.0])
                .map_err(classify(op))?;
            while let Some(row) = rows.next().map_err(classify(op))? {
                // Only rows stored in the region's partitions, as the contract reads.
                let part: i64 = row.get(sql.part_idx).map_err(classify(op))?;
                if region.covers_pixel(part) {
                    out.push(decode_row::<R>(row, op)?);
                }
            }
        }
    } else {
        let parts = window.partitions();
        let mut stmt = tx.prepare_cached(&sql.by_pixel).map_err(classify(op))?;
        for pixel in region.pixels() {
            let mut rows = stmt
                .query(params![
                    pixel,
                    parts.start(),
                    parts.end(),
                    window.start.0,
                    window.end.0
                ])
                .map_err(classify(op))?;
            while let Some(row) = rows.next().map_err(classify(op))? {
                let obj: Option<i64> = row.get(sql.object_idx).map_err(classify(op))?;
                if obj.is_some_and(|o| objects.contains(&o)) {
                    out.push(decode_row::<R>(row, op)?);
                }
            }
        }
    }
    tx.finish().map_err(classify(op))?;
    Ok(out)
}

impl Apdb for SqliteApdb {
    async fn dia_objects(&self, region: &Region) -> Result<Vec<DiaObjectLast>, ApdbError> {
        let region = region.clone();
        self.read("dia_objects", move |conn, sql| {
            let op = "dia_objects";
            let tx = conn.unchecked_transaction().map_err(classify(op))?;
            let mut stmt = tx
                .prepare_cached(&sql.select_objects)
                .map_err(classify(op))?;
            let mut out = Vec::new();
            for r in region.pixel_ranges() {
                let mut rows = stmt
                    .query(params![r.start as i64, r.end as i64])
                    .map_err(classify(op))?;
                while let Some(row) = rows.next().map_err(classify(op))? {
                    // Rows of the margin pixels outside the region are dropped before
                    // they are decoded.
                    let ra: f64 = row.get(sql.object_ra_idx).map_err(classify(op))?;
                    let dec: f64 = row.get(sql.object_dec_idx).map_err(classify(op))?;
                    if region.contains_deg(ra, dec) {
                        out.push(decode_row::<DiaObjectLast>(row, op)?);
                    }
                }
            }
            drop(stmt);
            tx.finish().map_err(classify(op))?;
            out.sort_by_key(|o| o.dia_object_id);
            Ok(out)
        })
        .await
    }

    async fn dia_sources(
        &self,
        region: &Region,
        objects: &[DiaObjectId],
        window: TimeWindow,
    ) -> Result<Vec<DiaSource>, ApdbError> {
        let region = region.clone();
        let set: HashSet<i64> = objects.iter().map(|o| o.0).collect();
        let object_index = self.inner.object_index;
        self.read("dia_sources", move |conn, sql| {
            let mut v: Vec<DiaSource> = read_history(
                conn,
                &sql.sources,
                &region,
                &set,
                window,
                object_index,
                "dia_sources",
            )?;
            sort_history(&mut v);
            Ok(v)
        })
        .await
    }

    async fn dia_forced_sources(
        &self,
        region: &Region,
        objects: &[DiaObjectId],
        window: TimeWindow,
    ) -> Result<Vec<DiaForcedSource>, ApdbError> {
        let region = region.clone();
        let set: HashSet<i64> = objects.iter().map(|o| o.0).collect();
        let object_index = self.inner.object_index;
        self.read("dia_forced_sources", move |conn, sql| {
            let mut v: Vec<DiaForcedSource> = read_history(
                conn,
                &sql.forced,
                &region,
                &set,
                window,
                object_index,
                "dia_forced_sources",
            )?;
            sort_history(&mut v);
            Ok(v)
        })
        .await
    }

    async fn store(&self, batch: &StoreBatch) -> Result<StoreReport, ApdbError> {
        batch.validate()?;
        let batch = batch.clone();
        self.write("store", move |conn, sql| store_tx(conn, sql, &batch))
            .await
    }

    async fn is_stored(&self, visit: VisitId, detector: DetectorId) -> Result<bool, ApdbError> {
        self.read("is_stored", move |conn, _| {
            conn.query_row(
                "SELECT count(*) FROM ApdbVisitDetector WHERE visit = ?1 AND detector = ?2",
                params![visit.0 as i64, detector.0],
                |r| r.get::<_, i64>(0),
            )
            .map(|n| n > 0)
            .map_err(classify("is_stored"))
        })
        .await
    }

    async fn store_ss_objects(&self, objects: &[SsObject]) -> Result<(), ApdbError> {
        let objects = objects.to_vec();
        self.write("store_ss_objects", move |conn, sql| {
            let op = "store_ss_objects";
            let tx = conn.transaction().map_err(classify(op))?;
            {
                let mut stmt = tx.prepare_cached(&sql.upsert_ss).map_err(classify(op))?;
                for o in &objects {
                    stmt.execute(rusqlite::params_from_iter(o.to_values()))
                        .map_err(classify(op))?;
                }
            }
            tx.commit().map_err(classify(op))
        })
        .await
    }

    async fn reassign_to_ss_objects(
        &self,
        assignments: &[(DiaSourceId, i64)],
    ) -> Result<usize, ApdbError> {
        let a = assignments.to_vec();
        self.write("reassign", move |conn, _| {
            let op = "reassign";
            let tx = conn.transaction().map_err(classify(op))?;
            let mut n = 0;
            {
                let mut stmt = tx
                    .prepare_cached(
                        "UPDATE DiaSource SET ssObjectId = ?1, diaObjectId = NULL \
                         WHERE diaSourceId = ?2",
                    )
                    .map_err(classify(op))?;
                for (src, ss) in &a {
                    n += stmt.execute(params![ss, src.0]).map_err(classify(op))?;
                }
            }
            tx.commit().map_err(classify(op))?;
            Ok(n)
        })
        .await
    }

    async fn counts(&self) -> Result<Counts, ApdbError> {
        self.read("counts", |conn, _| {
            let c = |t: &str| -> Result<u64, ApdbError> {
                conn.query_row(&format!("SELECT count(*) FROM \"{t}\""), [], |r| {
                    r.get::<_, i64>(0)
                })
                .map(|n| n as u64)
                .map_err(classify("counts"))
            };
            Ok(Counts {
                dia_object_versions: c("DiaObject")?,
                dia_objects: c("DiaObjectLast")?,
                dia_sources: c("DiaSource")?,
                dia_forced_sources: c("DiaForcedSource")?,
                ss_objects: c("SSObject")?,
                visit_detectors: c(VISIT_DETECTOR_TABLE)?,
            })
        })
        .await
    }

    async fn info(&self) -> Result<ApdbInfo, ApdbError> {
        let url = self.inner.url.clone();
        self.read("info", move |conn, _| {
            let op = "info";
            let mut stmt = conn
                .prepare("SELECT name, value FROM metadata")
                .map_err(classify(op))?;
            let metadata: BTreeMap<String, String> = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(classify(op))?
                .collect::<rusqlite::Result<_>>()
                .map_err(classify(op))?;
            let schema_version = metadata
                .get("schema_version")
                .and_then(|v| v.parse().ok())
                .unwrap_or(SCHEMA_VERSION);
            Ok(ApdbInfo {
                backend: "sqlite".into(),
                url,
                schema_version,
                metadata,
            })
        })
        .await
    }
}

fn store_tx(conn: &mut Connection, sql: &Sql, b: &StoreBatch) -> Result<StoreReport, ApdbError> {
    let op = "store";
    let e = classify(op);
    let visit = b.visit.0 as i64;
    let det = i64::from(b.detector.0);
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(&e)?;
    let previous = tx
        .query_row(
            "SELECT 1 FROM ApdbVisitDetector WHERE visit = ?1 AND detector = ?2",
            params![visit, det],
            |_| Ok(()),
        )
        .optional()
        .map_err(&e)?
        .is_some();
    if previous {
        // Replace what the earlier store of this (visit, detector) wrote.
        tx.execute(
            "DELETE FROM DiaSource WHERE visit = ?1 AND detector = ?2",
            params![visit, det],
        )
        .map_err(&e)?;
        tx.execute(
            "DELETE FROM DiaForcedSource WHERE visit = ?1 AND detector = ?2",
            params![visit, det],
        )
        .map_err(&e)?;
        let ids: Vec<i64> = {
            let mut stmt = tx
                .prepare_cached(
                    "SELECT diaObjectId FROM DiaObject WHERE apdb_visit = ?1 AND apdb_detector = ?2",
                )
                .map_err(&e)?;
            stmt.query_map(params![visit, det], |r| r.get(0))
                .map_err(&e)?
                .collect::<rusqlite::Result<_>>()
                .map_err(&e)?
        };
        tx.execute(
            "DELETE FROM DiaObject WHERE apdb_visit = ?1 AND apdb_detector = ?2",
            params![visit, det],
        )
        .map_err(&e)?;
        for id in ids {
            tx.execute("DELETE FROM DiaObjectLast WHERE diaObjectId = ?1", [id])
                .map_err(&e)?;
            let latest: Option<f64> = tx
                .query_row(
                    "SELECT max(validityStartMjdTai) FROM DiaObject WHERE diaObjectId = ?1",
                    [id],
                    |r| r.get(0),
                )
                .map_err(&e)?;
            if let Some(t) = latest {
                tx.execute(
                    "UPDATE DiaObject SET validityEndMjdTai = NULL \
                     WHERE diaObjectId = ?1 AND validityStartMjdTai = ?2",
                    params![id, t],
                )
                .map_err(&e)?;
                tx.execute(&sql.restore_last, params![id, t]).map_err(&e)?;
            }
        }
    }
    {
        let mut close = tx
            .prepare_cached(
                "UPDATE DiaObject SET validityEndMjdTai = ?1 \
                 WHERE diaObjectId = ?2 AND validityEndMjdTai IS NULL AND validityStartMjdTai < ?1",
            )
            .map_err(&e)?;
        let mut ins = tx.prepare_cached(&sql.insert_object).map_err(&e)?;
        let mut last = tx.prepare_cached(&sql.upsert_last).map_err(&e)?;
        for o in &b.objects {
            close
                .execute(params![o.validity_start_mjd_tai, o.dia_object_id.0])
                .map_err(&e)?;
            let part = Value::Long(pixel_of(o.ra, o.dec));
            let mut v = o.to_values();
            v.extend([part.clone(), Value::Long(visit), Value::Long(det)]);
            ins.execute(rusqlite::params_from_iter(&v)).map_err(&e)?;
            let mut v = o.to_last().to_values();
            v.push(part);
            last.execute(rusqlite::params_from_iter(&v)).map_err(&e)?;
        }
        let mut ins = tx.prepare_cached(&sql.insert_source).map_err(&e)?;
        for s in &b.sources {
            let mut v = s.to_values();
            v.push(Value::Long(pixel_of(s.ra, s.dec)));
            v.push(Value::Int(time_partition(s.midpoint_mjd_tai.0)));
            ins.execute(rusqlite::params_from_iter(&v)).map_err(&e)?;
        }
        let mut ins = tx.prepare_cached(&sql.insert_forced).map_err(&e)?;
        for f in &b.forced {
            let mut v = f.to_values();
            v.push(Value::Long(pixel_of(f.ra, f.dec)));
            v.push(Value::Int(time_partition(f.midpoint_mjd_tai.0)));
            ins.execute(rusqlite::params_from_iter(&v)).map_err(&e)?;
        }
    }
    tx.execute(
        "INSERT OR REPLACE INTO ApdbVisitDetector \
         (visit, detector, storedMjdTai, nDiaObjects, nDiaSources, nDiaForcedSources, writtenKeys) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, NULL)",
        params![
            visit,
            det,
            b.visit_time.0,
            b.objects.len() as i64,
            b.sources.len() as i64,
            b.forced.len() as i64
        ],
    )
    .map_err(&e)?;
    tx.commit().map_err(&e)?;
    Ok(StoreReport {
        replaced_previous: previous,
        objects: b.objects.len(),
        sources: b.sources.len(),
        forced: b.forced.len(),
    })
}
