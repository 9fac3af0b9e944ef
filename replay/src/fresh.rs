//! Fresh ids: a deterministic remap of every apflow-minted id in an alert, so that a
//! replayed alert can never be mistaken for an alert of the original night.
//!
//! # The map
//! `apflow_core::ids` packs a 3-bit *replay generation* into the top of every
//! `diaSourceId` (0 for ids the live pipeline mints, 1–7 for replays). The map is
//! [`apflow_core::ids::DiaSourceId::fresh`]: the same id with the generation field set
//! to `g`. Hence:
//! * **No collision with the original night**: every live id has generation 0 and
//!   every remapped id generation `g ≥ 1`; two ids that differ in a bit field differ.
//!   An input id that already carries generation `g` (a replay of a replay with the
//!   same generation) is refused ([`FreshIdError::SameGeneration`]) rather than
//!   mapped onto itself.
//! * **Deterministic**: the map depends only on the id and `g`; the same night replayed
//!   twice with the same generation gives byte-identical alerts.
//! * **Consistent inside the replay**: the map is one function applied to every id
//!   field, and it is injective (it only rewrites a field all inputs share), so an
//!   object's history keeps pointing at the remapped object and distinct ids stay
//!   distinct. The visit, detector and counter stay readable from a fresh id.
//!
//! # The fields remapped
//! `diaSourceId` of the alert; in `diaSource` and each of `prvDiaSources`:
//! `diaSourceId`, `diaObjectId`, `parentDiaSourceId`; in each of
//! `prvDiaForcedSources`: `diaForcedSourceId` (apflow mints forced-source ids in the
//! same layout) and `diaObjectId`; `diaObject.diaObjectId`; `ssSource.diaSourceId`;
//! and the `DIASRCID` card of each cutout's FITS header (rewritten in place, same
//! width), which names the alert. `ssObjectId` is not apflow's (solar-system objects
//! are the MPC's) and is left as it is; so are visit and detector numbers: the visit
//! really was observed, and a broker needs it to match images. A consumer tells a
//! replayed alert by the generation bits of its ids (`DiaSourceId::generation`) and,
//! on Kafka, by the `apflow_replay_generation` header.
//!
//! # Re-encoding
//! The packet is unframed ([`apflow_alert_dist::wire::unframe`]) and decoded with the
//! writer schema ([`apflow_alert_dist::schema::cached_writer_schema`]) into an
//! apache-avro `Value`, as [`apflow_alert_dist::packet::decode_framed`] does but with a
//! reader and a writer built once per [`FreshIds`]. The ids are rewritten, the value
//! encoded again with the same schema and framed under the same schema id (1100).

use apache_avro::reader::datum::GenericDatumReader;
use apache_avro::types::Value;
use apache_avro::writer::datum::GenericDatumWriter;
use apflow_alert_dist::producer::FramedAlert;
use apflow_alert_dist::schema::{SCHEMA_ID, cached_writer_schema};
use apflow_alert_dist::wire;
use apflow_core::ids::{DiaSourceId, MAX_GENERATION};
use bytes::Bytes;
use thiserror::Error;

/// Why an alert could not get fresh ids.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum FreshIdError {
    /// The generation is not 1–7.
    #[error("replay generation {0} is not 1-{MAX_GENERATION}")]
    Generation(u8),
    /// An id is not in apflow's layout (bad input: such an alert cannot be given a
    /// fresh id that is guaranteed not to collide).
    #[error("{field} = {id} is not an apflow id: {reason}")]
    NotAnApflowId {
        /// The field.
        field: String,
        /// The id.
        id: i64,
        /// Why.
        reason: String,
    },
    /// An id already carries the target generation (replaying a replay with the same
    /// generation would reuse its ids: pick another `--generation`).
    #[error("{field} = {id} already has replay generation {generation}: choose another")]
    SameGeneration {
        /// The field.
        field: String,
        /// The id.
        id: i64,
        /// The generation.
        generation: u8,
    },
    /// The packet does not decode (bad input).
    #[error("decoding the alert: {0}")]
    Decode(String),
    /// The remapped value does not encode (a bug: the schema did not change).
    #[error("encoding the remapped alert: {0}")]
    Encode(String),
}

/// The fresh-id map of one replay generation, with a reader and a writer of apflow's
/// writer schema.
pub struct FreshIds {
    generation: u8,
    reader: GenericDatumReader<'static>,
    writer: GenericDatumWriter<'static>,
}

impl std::fmt::Debug for FreshIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FreshIds")
            .field("generation", &self.generation)
            .finish_non_exhaustive()
    }
}

impl FreshIds {
    /// The map into replay generation `generation` (1–7).
    pub fn new(generation: u8) -> Result<Self, FreshIdError> {
        if generation == 0 || generation > MAX_GENERATION {
            return Err(FreshIdError::Generation(generation));
        }
        let schema = cached_writer_schema().map_err(FreshIdError::Encode)?;
        let reader = GenericDatumReader::builder(schema)
            .build()
            .map_err(|e| FreshIdError::Decode(e.to_string()))?;
        let writer = GenericDatumWriter::builder(schema)
            .build()
            .map_err(|e| FreshIdError::Encode(e.to_string()))?;
        Ok(Self {
            generation,
            reader,
            writer,
        })
    }

    /// The generation.
    pub fn generation(&self) -> u8 {
        self.generation
    }

    /// The fresh id of `id` (see the module docs); `field` names it in errors.
    pub fn id(&self, field: &str, id: i64) -> Result<i64, FreshIdError> {
        let src = DiaSourceId(id);
        let bad = |reason: String| FreshIdError::NotAnApflowId {
            field: field.to_string(),
            id,
            reason,
        };
        let parts = src.parts().map_err(|e| bad(e.to_string()))?;
        if parts.generation == self.generation {
            return Err(FreshIdError::SameGeneration {
                field: field.to_string(),
                id,
                generation: self.generation,
            });
        }
        src.fresh(self.generation)
            .map(|f| f.0)
            .map_err(|e| bad(e.to_string()))
    }

    /// Rewrites the ids of a decoded alert in place (module docs list the fields);
    /// returns the alert's new diaSourceId.
    pub fn remap_value(&self, alert: &mut Value) -> Result<i64, FreshIdError> {
        let Value::Record(fields) = alert else {
            return Err(FreshIdError::Decode("the alert is not a record".into()));
        };
        let old = long_field(fields, "diaSourceId")
            .ok_or_else(|| FreshIdError::Decode("no diaSourceId".into()))?;
        let new = self.id("diaSourceId", old)?;
        for (name, v) in fields.iter_mut() {
            match name.as_str() {
                "diaSourceId" => set_long(v, "diaSourceId", |id| self.id("diaSourceId", id))?,
                "diaSource" => self.source(v, "diaSource")?,
                "prvDiaSources" => {
                    for s in array_items(v) {
                        self.source(s, "prvDiaSources")?;
                    }
                }
                "prvDiaForcedSources" => {
                    for f in array_items(v) {
                        if let Value::Record(ff) = f {
                            for (n, x) in ff.iter_mut() {
                                if n == "diaForcedSourceId" || n == "diaObjectId" {
                                    let label = format!("prvDiaForcedSources.{n}");
                                    set_long(x, &label, |id| self.id(&label, id))?;
                                }
                            }
                        }
                    }
                }
                "diaObject" => {
                    if let Value::Record(o) = unwrap_union_mut(v) {
                        for (n, x) in o.iter_mut() {
                            if n == "diaObjectId" {
                                set_long(x, "diaObject.diaObjectId", |id| {
                                    self.id("diaObject.diaObjectId", id)
                                })?;
                            }
                        }
                    }
                }
                "ssSource" => {
                    if let Value::Record(o) = unwrap_union_mut(v) {
                        for (n, x) in o.iter_mut() {
                            if n == "diaSourceId" {
                                set_long(x, "ssSource.diaSourceId", |id| {
                                    self.id("ssSource.diaSourceId", id)
                                })?;
                            }
                        }
                    }
                }
                n if n.starts_with("cutout") => {
                    if let Value::Bytes(b) = unwrap_union_mut(v) {
                        rewrite_fits_id(b, old, new);
                    }
                }
                _ => {}
            }
        }
        Ok(new)
    }

    fn source(&self, v: &mut Value, what: &str) -> Result<(), FreshIdError> {
        if let Value::Record(fields) = unwrap_union_mut(v) {
            for (n, x) in fields.iter_mut() {
                if matches!(
                    n.as_str(),
                    "diaSourceId" | "diaObjectId" | "parentDiaSourceId"
                ) {
                    let label = format!("{what}.{n}");
                    set_long(x, &label, |id| self.id(&label, id))?;
                }
            }
        }
        Ok(())
    }

    /// The alert with fresh ids, re-encoded and framed (schema id 1100 only: the
    /// writer schema apflow knows).
    pub fn remap_framed(&self, framed: &[u8]) -> Result<FramedAlert, FreshIdError> {
        let (schema_id, body) =
            wire::unframe(framed).map_err(|e| FreshIdError::Decode(e.to_string()))?;
        self.remap_datum(schema_id, body)
    }

    /// [`Self::remap_framed`] of an unframed datum written with schema `schema_id`.
    pub fn remap_datum(
        &self,
        schema_id: u32,
        mut body: &[u8],
    ) -> Result<FramedAlert, FreshIdError> {
        if schema_id != SCHEMA_ID {
            return Err(FreshIdError::Decode(format!(
                "schema id {schema_id}: only {SCHEMA_ID} can be re-encoded"
            )));
        }
        let size = body.len();
        let mut value = self
            .reader
            .read_value(&mut body)
            .map_err(|e| FreshIdError::Decode(e.to_string()))?;
        if !body.is_empty() {
            return Err(FreshIdError::Decode(format!(
                "{} trailing bytes",
                body.len()
            )));
        }
        let id = self.remap_value(&mut value)?;
        let mut out = Vec::with_capacity(size + 21);
        wire::put_header(SCHEMA_ID, &mut out);
        self.writer
            .write_value_ref(&mut out, &value)
            .map_err(|e| FreshIdError::Encode(e.to_string()))?;
        Ok(FramedAlert {
            dia_source_id: id,
            framed: Bytes::from(out),
        })
    }
}

fn unwrap_union_mut(v: &mut Value) -> &mut Value {
    match v {
        Value::Union(_, b) => b.as_mut(),
        v => v,
    }
}

fn array_items(v: &mut Value) -> &mut [Value] {
    match unwrap_union_mut(v) {
        Value::Array(items) => items.as_mut_slice(),
        _ => &mut [],
    }
}

fn long_field(fields: &[(String, Value)], name: &str) -> Option<i64> {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .and_then(|(_, v)| match v {
            Value::Union(_, b) => match b.as_ref() {
                Value::Long(x) => Some(*x),
                _ => None,
            },
            Value::Long(x) => Some(*x),
            _ => None,
        })
}

/// Applies `f` to a `long` or a non-null `["null", "long"]`; null stays null.
fn set_long(
    v: &mut Value,
    field: &str,
    f: impl Fn(i64) -> Result<i64, FreshIdError>,
) -> Result<(), FreshIdError> {
    match unwrap_union_mut(v) {
        Value::Long(x) => {
            *x = f(*x)?;
            Ok(())
        }
        Value::Null => Ok(()),
        other => Err(FreshIdError::Decode(format!(
            "{field} is {other:?}, not a long"
        ))),
    }
}

/// Rewrites the value of every `DIASRCID` card equal to `old` in a FITS file (cards
/// are 80-byte records aligned to the file's start), keeping the card's width.
fn rewrite_fits_id(fits: &mut [u8], old: i64, new: i64) {
    const KEY: &[u8] = b"DIASRCID= ";
    let new_text = format!("{new:>20}");
    if new_text.len() != 20 {
        return;
    }
    for card in fits.chunks_exact_mut(80) {
        if !card.starts_with(KEY) {
            continue;
        }
        let value = std::str::from_utf8(&card[10..30])
            .ok()
            .and_then(|t| t.trim().parse::<i64>().ok());
        if value == Some(old) {
            card[10..30].copy_from_slice(new_text.as_bytes());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generation_must_be_1_to_7_and_ids_must_be_apflow_ids() {
        assert!(matches!(FreshIds::new(0), Err(FreshIdError::Generation(0))));
        assert!(matches!(FreshIds::new(8), Err(FreshIdError::Generation(8))));
        let f = FreshIds::new(1).unwrap();
        assert!(matches!(
            f.id("x", -3),
            Err(FreshIdError::NotAnApflowId { .. })
        ));
        let live = apflow_core::ids::DiaSourceId::new(
            apflow_core::ids::VisitId::new(20261122, 5).unwrap(),
            apflow_core::ids::DetectorId(7),
            3,
        )
        .unwrap()
        .0;
        let fresh = f.id("x", live).unwrap();
        assert_ne!(fresh, live);
        assert!(matches!(
            f.id("x", fresh),
            Err(FreshIdError::SameGeneration { generation: 1, .. })
        ));
        // A replay of a replay in another generation is a fresh id again.
        let g2 = FreshIds::new(2).unwrap().id("x", fresh).unwrap();
        assert!(g2 != fresh && g2 != live);
    }

    #[test]
    fn fits_id_card_is_rewritten_in_place() {
        let mut fits = Vec::new();
        for card in [
            format!("{:<8}= {:>20}{:50}", "SIMPLE", "T", ""),
            format!("{:<8}= {:>20}{:50}", "DIASRCID", 12345, ""),
            format!("{:<80}", "END"),
        ] {
            fits.extend_from_slice(card.as_bytes());
        }
        let before = fits.clone();
        rewrite_fits_id(&mut fits, 999, 1);
        assert_eq!(fits, before, "another id is left alone");
        rewrite_fits_id(&mut fits, 12345, 1_152_921_504_606_846_976);
        assert_eq!(fits.len(), before.len());
        assert_eq!(&fits[80..110], b"DIASRCID=  1152921504606846976");
        assert_eq!(&fits[110..], &before[110..]);
    }
}
