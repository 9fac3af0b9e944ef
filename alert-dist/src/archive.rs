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
//! # Where: a directory or an S3-compatible object store
//!
//! [`ArchiveLocation`] names the archive: a plain path or a `file://` URL is a local
//! directory ([`Archive::open`]); `s3://bucket/prefix` (feature `s3`) is a bucket of
//! an S3-compatible object store, reached with the `object_store` crate, with the
//! endpoint, region and credentials of the standard `AWS_*` environment variables
//! (`AWS_ENDPOINT`, `AWS_REGION`/`AWS_DEFAULT_REGION`, `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_ALLOW_HTTP`, …) and URL query keys that override them
//! ([`S3Options`]). The same keys (`alerts/…`, `nights/…`, `schemas/…`) are used under
//! the prefix, and the same [`Archive`] API (synchronous: the S3 backend runs its
//! requests on a runtime of its own and waits for them) serves both.
//!
//! On S3:
//! * per-alert objects go straight to the store. The duplicate check is a HEAD of
//!   each new alert's key (it must be known before the nightly block is written), and
//!   the object is then written with a conditional put (`If-None-Match: *`,
//!   `PutMode::Create`), so an object is never overwritten even by a racing writer;
//!   a server that does not honour conditional puts falls back to plain puts after
//!   the HEAD check. Both survive restarts: they ask the store, not the process.
//! * objects cannot be appended to, so the night's container file is kept in a local
//!   *spool* directory exactly as a directory archive keeps it, and uploaded whole
//!   (a multipart upload: the object changes atomically) to
//!   `nights/<day_obs>/alerts-<id>.avro`. By default after every batch that changed
//!   it, before that batch's alert objects are written: the object is always a valid
//!   container holding a prefix of the night, and the crash ordering above holds even
//!   if the spool is lost. With [`S3Options::upload_interval`] set, at most that
//!   often, plus on [`Archive::flush`] (which the consumers call when the stream is
//!   idle and on shutdown) and when the archive is dropped: each upload then costs less
//!   per alert (it rewrites the whole night), but the alerts since the last upload
//!   exist only in the spool, which must then be on a persistent volume to keep the
//!   crash guarantee.
//! * a night is continued from the store: when it is first written to, the night's
//!   object is downloaded into the spool if the spool has no copy or a shorter one,
//!   so a restarted archive with an empty spool neither loses nor repeats the night's
//!   alerts. One archive process writes to a location at a time (as for a directory).
//!
//! HTTP: [`Archive::router`] serves `GET /v1/alerts/<diaSourceId>` (the wire bytes,
//! `application/octet-stream`) and `GET /v1/schemas/<id>` (the schema JSON).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

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
#[cfg(feature = "s3")]
mod s3;
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
    /// The object store refused or failed a request (check the endpoint, the bucket
    /// and the credentials; retryable when the store is back).
    #[error("archive object {key}: {source}")]
    ObjectStore {
        /// The object's key relative to the archive (or the archive's URL).
        key: String,
        /// The store's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The archive location is not a path, a `file://` URL or an `s3://` URL this
    /// build can open.
    #[error("archive location {location}: {reason}")]
    Location {
        /// The location as given.
        location: String,
        /// What is wrong.
        reason: String,
    },
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
    /// The spool file holds blocks the store's object does not (S3 only).
    dirty: bool,
    /// When the night's object was last uploaded (S3 only).
    #[cfg_attr(not(feature = "s3"), allow(dead_code))]
    uploaded: Option<Instant>,
}

/// An alert archive: a local directory, or an S3-compatible object store with a
/// local spool directory for the nights being written.
pub struct Archive {
    /// The directory (S3: the spool).
    root: PathBuf,
    backend: Backend,
    schemas: RwLock<BTreeMap<u32, String>>,
    nights: Mutex<HashMap<(u32, u32), NightFile>>,
}

/// Where the objects are.
enum Backend {
    /// Under `root`.
    Dir,
    /// In an object store; `root` is the spool of the nightly files.
    #[cfg(feature = "s3")]
    S3 {
        store: s3::S3Store,
        upload_interval: Duration,
    },
}

impl std::fmt::Debug for Archive {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Archive")
            .field("location", &self.location())
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

impl Drop for Archive {
    fn drop(&mut self) {
        // Nights written since their last upload (S3 with an upload interval).
        if let Err(e) = self.flush() {
            tracing::error!(archive = %self.location(), error = %e,
                "Uploading the nightly files on close failed; they are in the spool.");
        }
    }
}

/// Where an archive is: a directory or (feature `s3`) an S3 bucket and prefix.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ArchiveLocation {
    /// A local directory (a plain path or a `file://` URL).
    Dir(PathBuf),
    /// An S3-compatible object store (`s3://bucket/prefix?key=value&…`).
    S3(S3Options),
}

/// An archive on an S3-compatible object store: `s3://bucket/prefix`, with optional
/// query keys `endpoint`, `region`, `allow_http`, `spool` and `upload_interval`
/// (e.g. `s3://alerts/lsst?endpoint=http://127.0.0.1:9000&allow_http=true`; values are
/// taken literally, no percent-decoding). Anything not given comes from the `AWS_*`
/// environment variables, as `object_store`'s `AmazonS3Builder::from_env` reads them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct S3Options {
    /// The bucket.
    pub bucket: String,
    /// The key prefix of the archive in the bucket (no leading or trailing `/`; may be
    /// empty).
    pub prefix: String,
    /// The S3 endpoint (`endpoint=`; default `AWS_ENDPOINT`, else AWS).
    pub endpoint: Option<String>,
    /// The region (`region=`; default `AWS_REGION`/`AWS_DEFAULT_REGION`).
    pub region: Option<String>,
    /// Allow plain `http://` endpoints (`allow_http=true`; default `AWS_ALLOW_HTTP`).
    pub allow_http: bool,
    /// The local directory of the nights being written (`spool=`; default
    /// `<temp dir>/apflow-archive-spool/<bucket>/<prefix>`).
    pub spool: Option<PathBuf>,
    /// Upload a changed nightly file at most this often (`upload_interval=30s`); zero
    /// (the default) uploads after every batch that changed it.
    pub upload_interval: Duration,
}

impl S3Options {
    /// `bucket` and `prefix` with every other option at its default.
    pub fn new(bucket: &str, prefix: &str) -> Self {
        Self {
            bucket: bucket.to_owned(),
            prefix: prefix.trim_matches('/').to_owned(),
            endpoint: None,
            region: None,
            allow_http: false,
            spool: None,
            upload_interval: Duration::ZERO,
        }
    }

    /// `s3://bucket/prefix` (without the options).
    pub fn url(&self) -> String {
        if self.prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{}", self.bucket, self.prefix)
        }
    }

    /// The spool directory: [`Self::spool`] or its default.
    pub fn spool_dir(&self) -> PathBuf {
        self.spool.clone().unwrap_or_else(|| {
            let mut p = std::env::temp_dir()
                .join("apflow-archive-spool")
                .join(&self.bucket);
            for part in self.prefix.split('/').filter(|p| !p.is_empty()) {
                p.push(part);
            }
            p
        })
    }
}

impl ArchiveLocation {
    /// Parses a path, a `file://` URL or an `s3://bucket/prefix?options` URL (see
    /// [`S3Options`]). An `s3://` URL parses in every build; opening it needs the
    /// `s3` feature.
    pub fn parse(location: &str) -> Result<Self, ArchiveError> {
        let bad = |reason: String| ArchiveError::Location {
            location: location.to_owned(),
            reason,
        };
        if let Some(path) = location.strip_prefix("file://") {
            if path.is_empty() {
                return Err(bad("no path after file://".into()));
            }
            return Ok(Self::Dir(PathBuf::from(path)));
        }
        let Some(rest) = location.strip_prefix("s3://") else {
            if let Some((scheme, _)) = location.split_once("://") {
                return Err(bad(format!(
                    "unknown scheme {scheme}:// (a path, file:// or s3://)"
                )));
            }
            if location.is_empty() {
                return Err(bad("empty".into()));
            }
            return Ok(Self::Dir(PathBuf::from(location)));
        };
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (bucket, prefix) = path.split_once('/').unwrap_or((path, ""));
        if bucket.is_empty() {
            return Err(bad("no bucket after s3://".into()));
        }
        let mut o = S3Options::new(bucket, prefix);
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| bad(format!("query item {kv:?} is not key=value")))?;
            match k {
                "endpoint" => o.endpoint = Some(v.to_owned()),
                "region" => o.region = Some(v.to_owned()),
                "allow_http" => {
                    o.allow_http = v
                        .parse()
                        .map_err(|_| bad(format!("allow_http={v}: true or false")))?;
                }
                "spool" => o.spool = Some(PathBuf::from(v)),
                "upload_interval" => {
                    o.upload_interval = humantime_serde::re::humantime::parse_duration(v)
                        .map_err(|e| bad(format!("upload_interval={v}: {e}")))?;
                }
                _ => {
                    return Err(bad(format!(
                        "unknown key {k} (endpoint, region, allow_http, spool, upload_interval)"
                    )));
                }
            }
        }
        Ok(Self::S3(o))
    }

    /// Opens (or creates) the archive there: [`Archive::open`] for a directory,
    /// [`Archive::open_s3`] for S3 (an error naming the `s3` feature in a build
    /// without it).
    pub fn open(&self) -> Result<Archive, ArchiveError> {
        match self {
            Self::Dir(p) => Archive::open(p),
            Self::S3(o) => Archive::open_s3(o),
        }
    }
}

impl std::fmt::Display for ArchiveLocation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Dir(p) => write!(f, "{}", p.display()),
            Self::S3(o) => f.write_str(&o.url()),
        }
    }
}

impl std::str::FromStr for ArchiveLocation {
    type Err = ArchiveError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
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
    /// Opens (or creates) the archive in the directory `root` and loads its schemas.
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
                .and_then(schema_id)
            else {
                continue;
            };
            schemas.insert(id, fs::read_to_string(&path).map_err(io_err(&path))?);
        }
        Ok(Self {
            root,
            backend: Backend::Dir,
            schemas: RwLock::new(schemas),
            nights: Mutex::new(HashMap::new()),
        })
    }

    /// Opens (or creates: the bucket must exist) the archive on an S3-compatible
    /// object store and loads its schemas; the nights being written are spooled in
    /// [`S3Options::spool_dir`]. In a build without the `s3` feature, an error that
    /// names it.
    #[cfg(feature = "s3")]
    pub fn open_s3(options: &S3Options) -> Result<Self, ArchiveError> {
        let root = options.spool_dir();
        let p = root.join("nights");
        fs::create_dir_all(&p).map_err(io_err(&p))?;
        let store = s3::S3Store::open(options)?;
        let mut schemas = BTreeMap::new();
        for name in store.list("schemas")? {
            let Some(id) = schema_id(&name) else {
                continue;
            };
            let rel = format!("schemas/{name}");
            let bytes = store
                .get(&rel)?
                .ok_or_else(|| ArchiveError::NotFound(rel.clone()))?;
            let text =
                String::from_utf8(bytes.to_vec()).map_err(|e| ArchiveError::ObjectStore {
                    key: rel,
                    source: Box::new(e),
                })?;
            schemas.insert(id, text);
        }
        Ok(Self {
            root,
            backend: Backend::S3 {
                store,
                upload_interval: options.upload_interval,
            },
            schemas: RwLock::new(schemas),
            nights: Mutex::new(HashMap::new()),
        })
    }

    /// Opens (or creates: the bucket must exist) the archive on an S3-compatible
    /// object store and loads its schemas; the nights being written are spooled in
    /// [`S3Options::spool_dir`]. In a build without the `s3` feature, an error that
    /// names it.
    #[cfg(not(feature = "s3"))]
    pub fn open_s3(options: &S3Options) -> Result<Self, ArchiveError> {
        Err(ArchiveError::Location {
            location: options.url(),
            reason: "an S3 archive needs apflow built with the `s3` feature \
                     (cargo build --features s3)"
                .to_owned(),
        })
    }

    /// Where the archive is: its directory, or `s3://bucket/prefix`.
    pub fn location(&self) -> String {
        match &self.backend {
            Backend::Dir => self.root.display().to_string(),
            #[cfg(feature = "s3")]
            Backend::S3 { store, .. } => store.url().to_owned(),
        }
    }

    /// The archive's directory (on S3: the spool directory of the nightly files).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Stores a writer schema under its id (`schemas/<id>.json`).
    pub fn put_schema(&self, id: u32, schema: &str) -> Result<(), ArchiveError> {
        let rel = format!("schemas/{id}.json");
        match &self.backend {
            Backend::Dir => write_atomic(&self.root.join(&rel), schema.as_bytes())?,
            #[cfg(feature = "s3")]
            Backend::S3 { store, .. } => {
                store.put(&rel, bytes::Bytes::copy_from_slice(schema.as_bytes()))?;
            }
        }
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

    /// Where an alert's object lives in a directory archive (an S3 archive keeps no
    /// local copy: see [`Self::alert_key`]).
    pub fn alert_path(&self, dia_source_id: i64) -> PathBuf {
        self.root.join(Self::alert_key(dia_source_id))
    }

    /// An alert's key relative to the archive: `alerts/<diaSourceId>.avro.gz`.
    pub fn alert_key(dia_source_id: i64) -> String {
        format!("alerts/{dia_source_id}.avro.gz")
    }

    /// Where a night's container file for schema `schema_id` lives (on S3: its copy
    /// in the spool, which exists once the night has been written to by this
    /// process or a previous one with the same spool).
    pub fn night_path(&self, day_obs: u32, schema_id: u32) -> PathBuf {
        self.root.join(Self::night_key(day_obs, schema_id))
    }

    /// A night's key relative to the archive: `nights/<day_obs>/alerts-<id>.avro`.
    pub fn night_key(day_obs: u32, schema_id: u32) -> String {
        format!("nights/{day_obs}/alerts-{schema_id}.avro")
    }

    /// The exact wire bytes of an archived alert.
    pub fn get_alert(&self, dia_source_id: i64) -> Result<Vec<u8>, ArchiveError> {
        let not_found = || ArchiveError::NotFound(format!("alert {dia_source_id}"));
        let path = self.alert_path(dia_source_id);
        let mut out = Vec::new();
        match &self.backend {
            Backend::Dir => {
                let f = match File::open(&path) {
                    Ok(f) => f,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(not_found()),
                    Err(e) => return Err(io_err(&path)(e)),
                };
                GzDecoder::new(f)
                    .read_to_end(&mut out)
                    .map_err(io_err(&path))?;
            }
            #[cfg(feature = "s3")]
            Backend::S3 { store, .. } => {
                let gz = store
                    .get(&Self::alert_key(dia_source_id))?
                    .ok_or_else(not_found)?;
                GzDecoder::new(&gz[..])
                    .read_to_end(&mut out)
                    .map_err(io_err(&path))?;
            }
        }
        Ok(out)
    }

    /// A night's container file as the archive holds it (on S3: the uploaded object,
    /// which lags the spool by at most [`S3Options::upload_interval`]).
    pub fn get_night(&self, day_obs: u32, schema_id: u32) -> Result<Vec<u8>, ArchiveError> {
        let not_found = || ArchiveError::NotFound(format!("night {day_obs} (schema {schema_id})"));
        match &self.backend {
            Backend::Dir => {
                let path = self.night_path(day_obs, schema_id);
                match fs::read(&path) {
                    Ok(b) => Ok(b),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Err(not_found()),
                    Err(e) => Err(io_err(&path)(e)),
                }
            }
            #[cfg(feature = "s3")]
            Backend::S3 { store, .. } => Ok(store
                .get(&Self::night_key(day_obs, schema_id))?
                .ok_or_else(not_found)?
                .to_vec()),
        }
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
        // The alerts new to the batch, with their (night, schema id).
        let mut fresh = Vec::with_capacity(alerts.len());
        for a in alerts {
            let key = self.check(a)?;
            if seen.insert(a.dia_source_id) {
                fresh.push((key, a));
            } else {
                report.duplicates += 1;
            }
        }
        let archived = self.exist(fresh.iter().map(|(_, a)| a.dia_source_id))?;
        // (night, schema id) -> alerts, in arrival order.
        let mut groups: BTreeMap<(u32, u32), Vec<&FramedAlert>> = BTreeMap::new();
        for ((key, a), archived) in fresh.into_iter().zip(archived) {
            if archived {
                report.duplicates += 1;
            } else {
                groups.entry(key).or_default().push(a);
            }
        }
        for (&(night, schema_id), group) in &groups {
            self.append_block(night, schema_id, group)?;
        }
        let mut objects = Vec::with_capacity(groups.values().map(Vec::len).sum());
        for a in groups.values().flatten() {
            let path = self.alert_path(a.dia_source_id);
            let mut gz = GzEncoder::new(Vec::with_capacity(a.framed.len()), Gz::fast());
            gz.write_all(&a.framed).map_err(io_err(&path))?;
            objects.push((a.dia_source_id, gz.finish().map_err(io_err(&path))?));
        }
        let written = self.create_alerts(objects)?;
        report.written += written.0;
        report.duplicates += written.1;
        metrics::ARCHIVED_TOTAL.inc_by(report.written as u64);
        Ok(report)
    }

    /// Whether each alert is archived already.
    fn exist(&self, ids: impl Iterator<Item = i64>) -> Result<Vec<bool>, ArchiveError> {
        match &self.backend {
            Backend::Dir => Ok(ids.map(|id| self.alert_path(id).exists()).collect()),
            #[cfg(feature = "s3")]
            Backend::S3 { store, .. } => store.exist(ids.map(Self::alert_key).collect()),
        }
    }

    /// Writes the alerts' objects (gzip-compressed wire bytes), never overwriting
    /// one: (written, found already there).
    fn create_alerts(&self, objects: Vec<(i64, Vec<u8>)>) -> Result<(usize, usize), ArchiveError> {
        match &self.backend {
            Backend::Dir => {
                for (id, gz) in &objects {
                    write_atomic(&self.alert_path(*id), gz)?;
                }
                Ok((objects.len(), 0))
            }
            #[cfg(feature = "s3")]
            Backend::S3 { store, .. } => {
                let created = store.create(
                    objects
                        .into_iter()
                        .map(|(id, gz)| (Self::alert_key(id), gz.into()))
                        .collect(),
                )?;
                let written = created.iter().filter(|&&c| c).count();
                if written < created.len() {
                    // Another writer got there between the HEAD and the put.
                    tracing::warn!(
                        archive = %self.location(),
                        alerts = created.len() - written,
                        "Alerts written concurrently by another archive; kept theirs."
                    );
                }
                Ok((written, created.len() - written))
            }
        }
    }

    /// Uploads the nightly files changed since their last upload (S3; a directory
    /// archive has nothing to do). The archive consumers call it when the stream is
    /// idle and on shutdown; dropping the archive calls it too.
    pub fn flush(&self) -> Result<(), ArchiveError> {
        let mut nights = self.nights.lock().unwrap_or_else(|p| p.into_inner());
        for (&(night, schema_id), nf) in nights.iter_mut() {
            if nf.dirty {
                self.upload_night(night, schema_id, nf)?;
            }
        }
        Ok(())
    }

    /// Uploads a night's spool file whole (S3), under the nights lock so that it holds
    /// whole blocks only.
    #[cfg_attr(not(feature = "s3"), allow(unused_variables))]
    fn upload_night(
        &self,
        night: u32,
        schema_id: u32,
        nf: &mut NightFile,
    ) -> Result<(), ArchiveError> {
        match &self.backend {
            Backend::Dir => {}
            #[cfg(feature = "s3")]
            Backend::S3 { store, .. } => {
                store.upload(
                    &Self::night_key(night, schema_id),
                    &self.night_path(night, schema_id),
                )?;
            }
        }
        nf.dirty = false;
        nf.uploaded = Some(Instant::now());
        Ok(())
    }

    /// Before a night is first written to (S3): brings the spool up to the store's
    /// object, downloading it if the spool has no copy or a shorter one. Returns
    /// whether the spool holds more than the object (to be uploaded).
    #[cfg_attr(not(feature = "s3"), allow(unused_variables))]
    fn fetch_night(&self, night: u32, schema_id: u32) -> Result<bool, ArchiveError> {
        match &self.backend {
            Backend::Dir => Ok(false),
            #[cfg(feature = "s3")]
            Backend::S3 { store, .. } => {
                let key = Self::night_key(night, schema_id);
                let path = self.night_path(night, schema_id);
                let spooled = match fs::metadata(&path) {
                    Ok(m) => m.len(),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => 0,
                    Err(e) => return Err(io_err(&path)(e)),
                };
                let stored = store.size(&key)?;
                if stored.is_some_and(|s| s > spooled) {
                    if let Some(dir) = path.parent() {
                        fs::create_dir_all(dir).map_err(io_err(dir))?;
                    }
                    tracing::info!(night, object = %key, "Continuing the night from the store.");
                    store.download(&key, &path)?;
                    return Ok(false);
                }
                Ok(stored.is_none_or(|s| s < spooled))
            }
        }
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
                let ahead = self.fetch_night(night, schema_id)?;
                let mut nf = open_night(&path, &schema, night, schema_id)?;
                nf.dirty = ahead;
                v.insert(nf)
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
        match &self.backend {
            Backend::Dir => {}
            #[cfg(feature = "s3")]
            Backend::S3 {
                upload_interval, ..
            } => {
                nf.dirty = true;
                if nf.uploaded.is_none_or(|t| t.elapsed() >= *upload_interval) {
                    self.upload_night(night, schema_id, nf)?;
                }
            }
        }
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
    // Blocking: a file read, or (S3) a request the archive's runtime runs.
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

/// The schema id of a `schemas/<id>.json` file name.
fn schema_id(file_name: &str) -> Option<u32> {
    file_name.strip_suffix(".json")?.parse().ok()
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
        dirty: false,
        uploaded: None,
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
    decode_container(&buf, path)
}

/// Decodes an uncompressed container file held in memory (e.g. a nightly object read
/// with [`Archive::get_night`]); `path` names it in errors.
pub fn decode_container(buf: &[u8], path: &Path) -> Result<Container, ArchiveError> {
    let bad = |reason: &str| ArchiveError::BadContainer {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let (meta, sync, mut pos) = parse_header(buf).ok_or_else(|| bad("unreadable header"))?;
    let text = |k: &str| {
        meta.get(k)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default()
    };
    let mut blocks = Vec::new();
    while pos < buf.len() {
        let count = get_long(buf, &mut pos)
            .and_then(|c| u64::try_from(c).ok())
            .ok_or_else(|| bad("bad block count"))?;
        let data = get_bytes(buf, &mut pos).ok_or_else(|| bad("bad block size"))?;
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
