//! The alert archive: every published alert kept, retrievable by id.
//!
//! Written after publication: `apflow run` archives each detector's batch once it is
//! published ([`Archive::put_batch`]); [`archive_from_bus`] is the consumer of the full
//! stream on the event bus (in-process or Kafka; no `apflow` command runs it on its own
//! yet). The layout is a directory laid out like an object store:
//!
//! ```text
//! <root>/alerts/<diaSourceId>.avro.gz        the exact wire bytes (Confluent-framed), gzip
//! <root>/nights/<day_obs>/alerts-<id>.avro   one Avro object container file per night
//!                                            (per schema id, normally one)
//! <root>/schemas/<id>.json                   the writer schemas by id
//! ```
//!
//! The night of an alert is the `day_obs` of its visit, read from the `diaSourceId`
//! itself (`apflow_core::ids`). The nightly file follows the Avro 1.11 object container
//! specification (header `Obj\x01`, metadata `avro.schema` and `avro.codec = null`,
//! 16-byte sync marker, blocks of pre-encoded datums), written by hand because the
//! datums are already encoded: a library would decode and re-encode them. Each batch
//! is one block; a reopened archive appends to an existing night with that file's
//! sync marker.
//!
//! Duplicates (at-least-once delivery) are dropped: an alert whose object exists is
//! not written again. The nightly block is written before the objects, so a crash in
//! between can at worst repeat alerts in the nightly file, never lose them.
//!
//! An S3-compatible backend (`object_store`) is not built yet: the archive is a local
//! directory (which may be a mounted bucket).
//!
//! HTTP: [`Archive::router`] serves `GET /v1/alerts/<diaSourceId>` (the wire bytes,
//! `application/octet-stream`) and `GET /v1/schemas/<id>` (the schema JSON).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use apflow_core::ids::DiaSourceId;
use axum::Router;
use axum::extract::{Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use flate2::Compression as Gz;
use flate2::read::GzDecoder;
use flate2::write::GzEncoder;
use thiserror::Error;

use crate::metrics;
use crate::producer::FramedAlert;
use crate::registry::SchemaRegistry;
use crate::wire::{self, WireError, get_bytes, get_long, put_bytes, put_long};

mod consumer;
pub use consumer::{ArchiveConsumerOptions, archive_from_bus};

/// Why the archive could not store or find something.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ArchiveError {
    /// A file operation failed (check the archive directory and the disk).
    #[error("archive {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The message is not in the Confluent wire format (bad input: dead-letter it).
    #[error("alert {id}: {source}")]
    Wire {
        /// The alert's id.
        id: i64,
        /// What is wrong.
        source: WireError,
    },
    /// The alert's id does not decode to a visit (bad input).
    #[error("alert id {0} does not encode a visit: {1}")]
    BadId(i64, String),
    /// The alert's schema id is not in the archive (store the schemas first).
    #[error("alert {id} has schema id {schema_id}, which the archive does not hold")]
    UnknownSchema {
        /// The alert's id.
        id: i64,
        /// The schema id in its header.
        schema_id: u32,
    },
    /// Not in the archive.
    #[error("{0} is not in the archive")]
    NotFound(String),
    /// Reading the alert topic failed (check the broker; retryable).
    #[error("archive consumer: {0}")]
    Consume(String),
    /// A nightly file exists but is not an Avro container apflow can append to.
    #[error("nightly file {path} is not an Avro object container: {reason}")]
    BadContainer {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> ArchiveError + '_ {
    move |source| ArchiveError::Io {
        path: path.to_owned(),
        source,
    }
}

/// What a batch did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BatchReport {
    /// Alerts written.
    pub written: usize,
    /// Alerts already archived (or repeated in the batch), skipped.
    pub duplicates: usize,
}

struct NightFile {
    file: BufWriter<File>,
    sync: [u8; 16],
}

/// A local-directory alert archive.
pub struct Archive {
    root: PathBuf,
    schemas: RwLock<BTreeMap<u32, String>>,
    nights: Mutex<HashMap<(u32, u32), NightFile>>,
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// The `day_obs` (YYYYMMDD) of the visit an alert id belongs to.
pub fn night_of(dia_source_id: i64) -> Result<u32, ArchiveError> {
    DiaSourceId(dia_source_id)
        .parts()
        .map(|p| p.visit.day_obs())
        .map_err(|e| ArchiveError::BadId(dia_source_id, e.to_string()))
}

impl Archive {
    /// Opens (or creates) the archive in `root` and loads its schemas.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, ArchiveError> {
        let root = root.into();
        for d in ["alerts", "nights", "schemas"] {
            let p = root.join(d);
            fs::create_dir_all(&p).map_err(io_err(&p))?;
        }
        let mut schemas = BTreeMap::new();
        let dir = root.join("schemas");
        for entry in fs::read_dir(&dir).map_err(io_err(&dir))? {
            let path = entry.map_err(io_err(&dir))?.path();
            let Some(id) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".json"))
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            schemas.insert(id, fs::read_to_string(&path).map_err(io_err(&path))?);
        }
        Ok(Self {
            root,
            schemas: RwLock::new(schemas),
            nights: Mutex::new(HashMap::new()),
        })
    }

    /// The archive's directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stores a writer schema under its id (`schemas/<id>.json`).
    pub fn put_schema(&self, id: u32, schema: &str) -> Result<(), ArchiveError> {
        let path = self.root.join("schemas").join(format!("{id}.json"));
        write_atomic(&path, schema.as_bytes())?;
        self.schemas
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, schema.to_owned());
        Ok(())
    }

    /// Stores every schema of a registry.
    pub fn put_schemas(&self, registry: &SchemaRegistry) -> Result<(), ArchiveError> {
        registry
            .entries()
            .try_for_each(|e| self.put_schema(e.id, &e.schema))
    }

    /// The schema with id `id`.
    pub fn get_schema(&self, id: u32) -> Result<String, ArchiveError> {
        self.schemas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
            .ok_or_else(|| ArchiveError::NotFound(format!("schema {id}")))
    }

    /// Where an alert's object lives.
    pub fn alert_path(&self, dia_source_id: i64) -> PathBuf {
        self.root
            .join("alerts")
            .join(format!("{dia_source_id}.avro.gz"))
    }

    /// Where a night's container file for schema `schema_id` lives.
    pub fn night_path(&self, day_obs: u32, schema_id: u32) -> PathBuf {
        self.root
            .join("nights")
            .join(day_obs.to_string())
            .join(format!("alerts-{schema_id}.avro"))
    }

    /// The exact wire bytes of an archived alert.
    pub fn get_alert(&self, dia_source_id: i64) -> Result<Vec<u8>, ArchiveError> {
        let path = self.alert_path(dia_source_id);
        let f = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(ArchiveError::NotFound(format!("alert {dia_source_id}")));
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let mut out = Vec::new();
        GzDecoder::new(f)
            .read_to_end(&mut out)
            .map_err(io_err(&path))?;
        Ok(out)
    }

    /// Checks that an alert can be archived: Confluent-framed, a schema id the
    /// archive holds, an id that encodes a visit. Returns (night, schema id).
    pub fn check(&self, alert: &FramedAlert) -> Result<(u32, u32), ArchiveError> {
        let (schema_id, _) = wire::unframe(&alert.framed).map_err(|source| ArchiveError::Wire {
            id: alert.dia_source_id,
            source,
        })?;
        if !self
            .schemas
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .contains_key(&schema_id)
        {
            return Err(ArchiveError::UnknownSchema {
                id: alert.dia_source_id,
                schema_id,
            });
        }
        Ok((night_of(alert.dia_source_id)?, schema_id))
    }

    /// Archives a batch: checks every alert first (nothing is written when one is
    /// bad), appends the new ones to their nights' container files (one block per
    /// night and schema), then writes one object per alert.
    pub fn put_batch(&self, alerts: &[FramedAlert]) -> Result<BatchReport, ArchiveError> {
        let mut report = BatchReport::default();
        let mut seen = HashSet::new();
        // (night, schema id) -> alerts, in arrival order.
        let mut groups: BTreeMap<(u32, u32), Vec<&FramedAlert>> = BTreeMap::new();
        {
            for a in alerts {
                let (night, schema_id) = self.check(a)?;
                if !seen.insert(a.dia_source_id) || self.alert_path(a.dia_source_id).exists() {
                    report.duplicates += 1;
                    continue;
                }
                groups.entry((night, schema_id)).or_default().push(a);
            }
        }
        for (&(night, schema_id), group) in &groups {
            self.append_block(night, schema_id, group)?;
        }
        for group in groups.values() {
            for a in group {
                let path = self.alert_path(a.dia_source_id);
                let mut gz = GzEncoder::new(Vec::with_capacity(a.framed.len()), Gz::fast());
                gz.write_all(&a.framed).map_err(io_err(&path))?;
                write_atomic(&path, &gz.finish().map_err(io_err(&path))?)?;
                report.written += 1;
            }
        }
        metrics::ARCHIVED_TOTAL.inc_by(report.written as u64);
        Ok(report)
    }

    fn append_block(
        &self,
        night: u32,
        schema_id: u32,
        alerts: &[&FramedAlert],
    ) -> Result<(), ArchiveError> {
        let mut nights = self.nights.lock().unwrap_or_else(|p| p.into_inner());
        let path = self.night_path(night, schema_id);
        let nf = match nights.entry((night, schema_id)) {
            std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
            std::collections::hash_map::Entry::Vacant(v) => {
                let schema = self.get_schema(schema_id)?;
                v.insert(open_night(&path, &schema, night, schema_id)?)
            }
        };
        // One block: count, byte length, the datums (the wire bytes after the header),
        // the sync marker — written straight from the alerts, no intermediate copy.
        let len: usize = alerts
            .iter()
            .map(|a| a.framed.len() - wire::HEADER_LEN)
            .sum();
        let mut head = Vec::with_capacity(20);
        put_long(&mut head, alerts.len() as i64);
        put_long(&mut head, len as i64);
        let w = &mut nf.file;
        w.write_all(&head).map_err(io_err(&path))?;
        for a in alerts {
            w.write_all(&a.framed[wire::HEADER_LEN..])
                .map_err(io_err(&path))?;
        }
        w.write_all(&nf.sync).map_err(io_err(&path))?;
        w.flush().map_err(io_err(&path))?;
        nf.file.get_ref().sync_data().map_err(io_err(&path))?;
        Ok(())
    }

    /// The HTTP API: `GET /v1/alerts/<diaSourceId>` and `GET /v1/schemas/<id>`.
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/v1/alerts/{id}", get(http_alert))
            .route("/v1/schemas/{id}", get(http_schema))
            .with_state(self)
    }
}

fn http_error(e: &ArchiveError) -> Response {
    let status = match e {
        ArchiveError::NotFound(_) => StatusCode::NOT_FOUND,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let body = serde_json::json!({ "error": e.to_string() }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

async fn http_alert(State(a): State<Arc<Archive>>, UrlPath(id): UrlPath<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return http_error(&ArchiveError::NotFound(format!("alert {id}")));
    };
    let a_root = a.root.clone();
    match tokio::task::spawn_blocking(move || a.get_alert(id)).await {
        Ok(Ok(bytes)) => {
            ([(header::CONTENT_TYPE, "application/octet-stream")], bytes).into_response()
        }
        Ok(Err(e)) => http_error(&e),
        // The blocking read panicked or was cancelled: a server error, not a 404.
        Err(e) => http_error(&ArchiveError::Io {
            path: a_root,
            source: io::Error::other(e.to_string()),
        }),
    }
}

async fn http_schema(State(a): State<Arc<Archive>>, UrlPath(id): UrlPath<String>) -> Response {
    match id
        .parse::<u32>()
        .map_err(|_| ArchiveError::NotFound(format!("schema {id}")))
        .and_then(|id| a.get_schema(id))
    {
        Ok(s) => ([(header::CONTENT_TYPE, "application/json")], s).into_response(),
        Err(e) => http_error(&e),
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ArchiveError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, bytes).map_err(io_err(&tmp))?;
    fs::rename(&tmp, path).map_err(io_err(path))
}

// ---------------------------------------------------------------------------------
// Avro object container files (Avro 1.11 specification, "Object Container Files").

const OCF_MAGIC: &[u8; 4] = b"Obj\x01";

/// A container file's metadata map.
type Metadata = BTreeMap<String, Vec<u8>>;

/// The header of a container file: metadata and sync marker, and its length.
fn parse_header(buf: &[u8]) -> Option<(Metadata, [u8; 16], usize)> {
    if buf.get(..4)? != OCF_MAGIC {
        return None;
    }
    let mut pos = 4;
    let mut meta = BTreeMap::new();
    loop {
        let mut n = get_long(buf, &mut pos)?;
        if n == 0 {
            break;
        }
        if n < 0 {
            n = -n;
            get_long(buf, &mut pos)?; // block size in bytes
        }
        for _ in 0..n {
            let k = String::from_utf8(get_bytes(buf, &mut pos)?.to_vec()).ok()?;
            let v = get_bytes(buf, &mut pos)?.to_vec();
            meta.insert(k, v);
        }
    }
    let sync: [u8; 16] = buf.get(pos..pos + 16)?.try_into().ok()?;
    Some((meta, sync, pos + 16))
}

fn header_bytes(schema: &str, sync: &[u8; 16]) -> Vec<u8> {
    let mut h = OCF_MAGIC.to_vec();
    put_long(&mut h, 2);
    put_bytes(&mut h, b"avro.schema");
    put_bytes(&mut h, schema.as_bytes());
    put_bytes(&mut h, b"avro.codec");
    put_bytes(&mut h, b"null");
    put_long(&mut h, 0);
    h.extend_from_slice(sync);
    h
}

/// A sync marker that differs between files: any 16 bytes will do, but a marker
/// that occurs in the data by chance would only confuse readers that resynchronise.
fn new_sync(night: u32, schema_id: u32) -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(night);
        h.write_u32(schema_id);
        h.write_usize(i);
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

fn open_night(
    path: &Path,
    schema: &str,
    night: u32,
    schema_id: u32,
) -> Result<NightFile, ArchiveError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
    }
    let bad = |reason: &str| ArchiveError::BadContainer {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let existing = match File::open(path) {
        Ok(f) => {
            let len = f.metadata().map_err(io_err(path))?.len();
            (len > 0).then_some((f, len))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_err(path)(e)),
    };
    let sync = match existing {
        Some((mut f, len)) => {
            // Only the header and the last 16 bytes are read: a night's file holds GBs.
            let header_len = header_bytes(schema, &[0; 16]).len() as u64;
            let mut head = Vec::new();
            (&mut f)
                .take(header_len.max(4096))
                .read_to_end(&mut head)
                .map_err(io_err(path))?;
            let (meta, sync, _) = parse_header(&head).ok_or_else(|| bad("unreadable header"))?;
            if meta.get("avro.schema").map(Vec::as_slice) != Some(schema.as_bytes()) {
                return Err(bad("written with another schema"));
            }
            let mut tail = [0u8; 16];
            f.seek(SeekFrom::Start(len.saturating_sub(16)))
                .and_then(|_| f.read_exact(&mut tail))
                .map_err(io_err(path))?;
            if tail != sync && len != header_len {
                return Err(bad("does not end with a complete block (truncated write?)"));
            }
            sync
        }
        None => {
            let sync = new_sync(night, schema_id);
            write_atomic(path, &header_bytes(schema, &sync))?;
            sync
        }
    };
    let file = OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    Ok(NightFile {
        file: BufWriter::new(file),
        sync,
    })
}

/// A container file read back: the writer schema and its blocks of encoded datums.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Container {
    /// `avro.schema`.
    pub schema: String,
    /// `avro.codec` (apflow writes `null`).
    pub codec: String,
    /// Blocks: (number of datums, their concatenated Avro binary encodings).
    pub blocks: Vec<(u64, Vec<u8>)>,
}

impl Container {
    /// Datums in the file.
    pub fn count(&self) -> u64 {
        self.blocks.iter().map(|b| b.0).sum()
    }
}

/// Reads an uncompressed container file (as the archive writes them), checking every
/// block's sync marker.
pub fn read_container(path: &Path) -> Result<Container, ArchiveError> {
    let buf = fs::read(path).map_err(io_err(path))?;
    let bad = |reason: &str| ArchiveError::BadContainer {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let (meta, sync, mut pos) = parse_header(&buf).ok_or_else(|| bad("unreadable header"))?;
    let text = |k: &str| {
        meta.get(k)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let mut blocks = Vec::new();
    while pos < buf.len() {
        let count = get_long(&buf, &mut pos)
            .and_then(|c| u64::try_from(c).ok())
            .ok_or_else(|| bad("bad block count"))?;
        let data = get_bytes(&buf, &mut pos).ok_or_else(|| bad("bad block size"))?;
        if buf.get(pos..pos + 16) != Some(&sync[..]) {
            return Err(bad("block does not end with the sync marker"));
        }
        pos += 16;
        blocks.push((count, data.to_vec()));
    }
    Ok(Container {
        schema: text("avro.schema"),
        codec: text("avro.codec"),
        blocks,
    })
}

#[cfg(test)]
mod tests;
