//! One archived night: every framed alert of the night, grouped by visit and detector.
//!
//! The source is the alert archive's nightly Avro object container files
//! (`apflow_alert_dist::archive`): `<archive>/nights/<day_obs>/alerts-<schema id>.avro`,
//! one file per writer schema (normally one, schema id 1100), each block a run of
//! Avro binary datums without the Confluent header. Each datum is decoded once with
//! the file's own `avro.schema` to find where it ends and to read its
//! `diaSource.visit`, `diaSource.detector` and `diaSource.midpointMjdTai`; the datum's
//! bytes are kept as they are (a slice of the block, no copy) and framed again with
//! the file's schema id when sent, so a replay without fresh ids sends the archived
//! bytes unchanged.
//!
//! The visit and detector come from the DiaSource record, not from the id's bits
//! (`apflow_core::ids` packs both into the `diaSourceId` too): the record is what a
//! broker reads, and it stays right for ids minted outside apflow's layout.
//!
//! Limitation: [`apflow_alert_dist::archive::read_container`] reads a whole file into
//! memory, so a night is held in memory (about the size of its file). That suits
//! rehearsal and test nights; a survey night of tens of GB would need a streaming
//! block reader.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use apache_avro::types::Value;
use apflow_alert_dist::archive::{ArchiveError, read_container};
use apflow_alert_dist::producer::FramedAlert;
use apflow_alert_dist::wire;
use apflow_core::ids::{DetectorId, VisitId};
use bytes::Bytes;
use thiserror::Error;

/// Why a night could not be read.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum NightError {
    /// A directory of the archive could not be listed (check `--archive`).
    #[error("archive {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The archive holds no nightly files at all.
    #[error("{0} holds no nightly alert files (nights/<day_obs>/alerts-<id>.avro)")]
    Empty(PathBuf),
    /// The night asked for is not in the archive.
    #[error("night {night} is not in the archive; it holds {available:?}")]
    NoSuchNight {
        /// The night asked for.
        night: u32,
        /// The nights the archive holds.
        available: Vec<u32>,
    },
    /// No night was named and the archive holds several.
    #[error("the archive holds several nights {0:?}: name one (--night YYYYMMDD)")]
    Ambiguous(Vec<u32>),
    /// A container file is unreadable.
    #[error(transparent)]
    Container(#[from] ArchiveError),
    /// A container file's schema does not parse (the file is damaged or not apflow's).
    #[error("{path}: writer schema does not parse: {reason}")]
    Schema {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        reason: String,
    },
    /// A datum does not decode with its file's schema, or lacks a field a replay
    /// needs (bad input).
    #[error("{path}: datum {index}: {reason}")]
    Datum {
        /// The file.
        path: PathBuf,
        /// The datum's index in the file.
        index: u64,
        /// What is wrong.
        reason: String,
    },
}

/// One archived alert.
#[derive(Clone, Debug, PartialEq)]
pub struct ArchivedAlert {
    /// The alert's `diaSourceId`.
    pub dia_source_id: i64,
    /// `diaSource.visit`.
    pub visit: VisitId,
    /// `diaSource.detector`.
    pub detector: DetectorId,
    /// `diaSource.midpointMjdTai`, MJD TAI (days).
    pub midpoint_mjd_tai: f64,
    /// The schema id of its file (the Confluent header's id).
    pub schema_id: u32,
    /// The Avro binary datum (no header).
    pub datum: Bytes,
}

impl ArchivedAlert {
    /// The Confluent-framed message: header with [`Self::schema_id`], then the datum.
    pub fn framed(&self) -> FramedAlert {
        let mut out = Vec::new();
        wire::frame_into(self.schema_id, &self.datum, &mut out);
        FramedAlert {
            dia_source_id: self.dia_source_id,
            framed: Bytes::from(out),
        }
    }
}

/// The alerts of one detector in one visit, in archive order.
#[derive(Clone, Debug, PartialEq)]
pub struct DetectorBurst {
    /// The detector.
    pub detector: DetectorId,
    /// Its alerts.
    pub alerts: Vec<ArchivedAlert>,
}

/// The alerts of one visit, by detector (ascending).
#[derive(Clone, Debug, PartialEq)]
pub struct VisitAlerts {
    /// The visit.
    pub visit: VisitId,
    /// The earliest `midpointMjdTai` of its alerts, MJD TAI.
    pub midpoint_mjd_tai: f64,
    /// Bursts, one per detector with alerts.
    pub detectors: Vec<DetectorBurst>,
}

impl VisitAlerts {
    /// Alerts of the visit.
    pub fn alert_count(&self) -> usize {
        self.detectors.iter().map(|d| d.alerts.len()).sum()
    }
}

/// One night of the archive.
#[derive(Clone, Debug, PartialEq)]
pub struct Night {
    /// The night, `YYYYMMDD`.
    pub day_obs: u32,
    /// The writer schemas of its files, by schema id.
    pub schemas: BTreeMap<u32, String>,
    /// Visits in time order (`midpointMjdTai`, then visit id).
    pub visits: Vec<VisitAlerts>,
}

impl Night {
    /// Groups alerts by visit and detector: visits in time order, detectors ascending,
    /// alerts of a detector in the order given.
    pub fn from_alerts(
        day_obs: u32,
        schemas: BTreeMap<u32, String>,
        alerts: Vec<ArchivedAlert>,
    ) -> Self {
        let mut by_visit: BTreeMap<VisitId, BTreeMap<DetectorId, Vec<ArchivedAlert>>> =
            BTreeMap::new();
        for a in alerts {
            by_visit
                .entry(a.visit)
                .or_default()
                .entry(a.detector)
                .or_default()
                .push(a);
        }
        let mut visits: Vec<VisitAlerts> = by_visit
            .into_iter()
            .map(|(visit, dets)| {
                let midpoint_mjd_tai = dets
                    .values()
                    .flatten()
                    .map(|a| a.midpoint_mjd_tai)
                    .fold(f64::INFINITY, f64::min);
                VisitAlerts {
                    visit,
                    midpoint_mjd_tai,
                    detectors: dets
                        .into_iter()
                        .map(|(detector, alerts)| DetectorBurst { detector, alerts })
                        .collect(),
                }
            })
            .collect();
        visits.sort_by(|a, b| {
            a.midpoint_mjd_tai
                .total_cmp(&b.midpoint_mjd_tai)
                .then(a.visit.cmp(&b.visit))
        });
        Self {
            day_obs,
            schemas,
            visits,
        }
    }

    /// Alerts of the night.
    pub fn alert_count(&self) -> usize {
        self.visits.iter().map(VisitAlerts::alert_count).sum()
    }
}

/// The nights (`YYYYMMDD`) the archive in `archive` holds nightly files for, ascending.
pub fn nights(archive: &Path) -> Result<Vec<u32>, NightError> {
    let dir = archive.join("nights");
    let io = |source| NightError::Io {
        path: dir.clone(),
        source,
    };
    let entries = match fs::read_dir(&dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(e)),
    };
    let mut out = Vec::new();
    for e in entries {
        let e = e.map_err(io)?;
        let Some(night) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if !night_files(&e.path())?.is_empty() {
            out.push(night);
        }
    }
    out.sort_unstable();
    Ok(out)
}

/// The container files of one night directory: (schema id, path), by schema id.
fn night_files(dir: &Path) -> Result<Vec<(u32, PathBuf)>, NightError> {
    let io = |source| NightError::Io {
        path: dir.to_owned(),
        source,
    };
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io)? {
        let path = e.map_err(io)?.path();
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix("alerts-"))
            .and_then(|n| n.strip_suffix(".avro"))
            .and_then(|n| n.parse::<u32>().ok());
        if let Some(id) = id {
            out.push((id, path));
        }
    }
    out.sort();
    Ok(out)
}

/// Picks the night to replay: `night` when given (it must exist), else the archive's
/// only night.
pub fn pick_night(archive: &Path, night: Option<u32>) -> Result<u32, NightError> {
    let available = nights(archive)?;
    match night {
        Some(n) if available.contains(&n) => Ok(n),
        Some(n) => Err(NightError::NoSuchNight {
            night: n,
            available,
        }),
        None => match available.as_slice() {
            [] => Err(NightError::Empty(archive.to_owned())),
            [n] => Ok(*n),
            _ => Err(NightError::Ambiguous(available)),
        },
    }
}

/// Reads night `day_obs` of the archive in `archive` (every schema's file).
pub fn load_night(archive: &Path, day_obs: u32) -> Result<Night, NightError> {
    let dir = archive.join("nights").join(day_obs.to_string());
    let files = if dir.is_dir() {
        night_files(&dir)?
    } else {
        Vec::new()
    };
    if files.is_empty() {
        return Err(NightError::NoSuchNight {
            night: day_obs,
            available: nights(archive)?,
        });
    }
    let mut schemas = BTreeMap::new();
    let mut alerts = Vec::new();
    for (schema_id, path) in files {
        let schema = read_file(&path, schema_id, &mut alerts)?;
        schemas.insert(schema_id, schema);
    }
    Ok(Night::from_alerts(day_obs, schemas, alerts))
}

/// Appends the alerts of one container file; returns its schema text.
fn read_file(
    path: &Path,
    schema_id: u32,
    out: &mut Vec<ArchivedAlert>,
) -> Result<String, NightError> {
    let container = read_container(path)?;
    if container.codec != "null" && !container.codec.is_empty() {
        return Err(NightError::Datum {
            path: path.to_owned(),
            index: 0,
            reason: format!("codec {:?} (apflow writes null)", container.codec),
        });
    }
    let schema =
        apache_avro::Schema::parse_str(&container.schema).map_err(|e| NightError::Schema {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    let reader = apache_avro::reader::datum::GenericDatumReader::builder(&schema)
        .build()
        .map_err(|e| NightError::Schema {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    let mut index = 0u64;
    for (count, data) in container.blocks {
        let block = Bytes::from(data);
        let mut rest: &[u8] = &block;
        for _ in 0..count {
            let bad = |reason: String| NightError::Datum {
                path: path.to_owned(),
                index,
                reason,
            };
            let start = block.len() - rest.len();
            let value = reader
                .read_value(&mut rest)
                .map_err(|e| bad(e.to_string()))?;
            let end = block.len() - rest.len();
            let fields = AlertFields::of(&value).map_err(bad)?;
            out.push(ArchivedAlert {
                dia_source_id: fields.dia_source_id,
                visit: fields.visit,
                detector: fields.detector,
                midpoint_mjd_tai: fields.midpoint_mjd_tai,
                schema_id,
                datum: block.slice(start..end),
            });
            index += 1;
        }
        if !rest.is_empty() {
            return Err(NightError::Datum {
                path: path.to_owned(),
                index,
                reason: format!("{} bytes after the block's last datum", rest.len()),
            });
        }
    }
    Ok(container.schema)
}

/// The fields of a decoded alert a replay needs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AlertFields {
    /// `diaSourceId`.
    pub dia_source_id: i64,
    /// `diaSource.visit`.
    pub visit: VisitId,
    /// `diaSource.detector`.
    pub detector: DetectorId,
    /// `diaSource.midpointMjdTai`.
    pub midpoint_mjd_tai: f64,
}

impl AlertFields {
    /// Reads the fields from a decoded alert record; the message says which is missing.
    pub fn of(alert: &Value) -> Result<Self, String> {
        let dia_source_id = field(alert, "diaSourceId")
            .and_then(as_long)
            .ok_or("no diaSourceId")?;
        let src = field(alert, "diaSource").ok_or("no diaSource record")?;
        let visit = field(src, "visit")
            .and_then(as_long)
            .and_then(|v| u64::try_from(v).ok())
            .ok_or("no diaSource.visit")?;
        let detector = field(src, "detector")
            .and_then(as_long)
            .and_then(|v| u16::try_from(v).ok())
            .ok_or("no diaSource.detector (or not 0-65535)")?;
        let midpoint = match field(src, "midpointMjdTai") {
            Some(Value::Double(x)) if x.is_finite() => *x,
            _ => return Err("no finite diaSource.midpointMjdTai".into()),
        };
        Ok(Self {
            dia_source_id,
            visit: VisitId(visit),
            detector: DetectorId(detector),
            midpoint_mjd_tai: midpoint,
        })
    }
}

/// The value of field `name` of a record (through a non-null union branch).
pub(crate) fn field<'a>(v: &'a Value, name: &str) -> Option<&'a Value> {
    match unwrap_union(v) {
        Value::Record(fields) => fields
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| unwrap_union(v)),
        _ => None,
    }
}

fn unwrap_union(v: &Value) -> &Value {
    match v {
        Value::Union(_, b) => b,
        v => v,
    }
}

fn as_long(v: &Value) -> Option<i64> {
    match v {
        Value::Long(x) => Some(*x),
        Value::Int(x) => Some(i64::from(*x)),
        _ => None,
    }
}
