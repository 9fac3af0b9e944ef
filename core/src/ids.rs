//! Identifiers: visits, exposures, detectors, and the 64-bit ids of DiaSources,
//! DiaObjects and alerts.
//!
//! # Bit layout of a [`DiaSourceId`]
//!
//! Ids are Avro `long`s, so they must be positive `i64` values: 63 usable bits.
//!
//! ```text
//!  62      60 59            45 44            28 27       20 19                 0
//! +----------+----------------+----------------+-----------+--------------------+
//! |generation|  night (days)  | visit seq/night|  detector |  source counter    |
//! |  3 bits  |    15 bits     |    17 bits     |   8 bits  |     20 bits        |
//! +----------+----------------+----------------+-----------+--------------------+
//! ```
//!
//! * `generation` — 0 for ids minted by the live pipeline; 1–7 for replays with
//!   fresh ids ([`DiaSourceId::fresh`]). Because the field differs, a replayed id can
//!   never equal an id of the original night, whatever the night or detector.
//! * `night` — days since [`ID_EPOCH_DAY_OBS`] (2020-01-01); 15 bits last until 2109.
//! * `visit seq` — the visit's sequence number within its night (up to 99,999, the
//!   five digits of a Rubin-style visit id; 17 bits hold it).
//! * `detector` — 0–255 (LSSTCam has 189 science detectors, 205 in all).
//! * `source counter` — the n-th DiaSource found on that detector in that visit
//!   (up to 1,048,575; a detector yields a few hundred at Rubin's peak).
//!
//! Two ids minted for different (visit, detector) pairs therefore never collide, and
//! the same (visit, detector, counter) always gives the same id, which makes a rerun
//! of a detector idempotent downstream.
//!
//! A DiaObject takes the id of the DiaSource that created it (as Rubin does), so
//! DiaObject ids share the layout and are unique for the same reason. An alert is
//! identified by the `diaSourceId` of its triggering DiaSource.

use std::fmt;

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

/// The observing night that starts the id epoch (`day_obs` 2020-01-01).
pub const ID_EPOCH_DAY_OBS: u32 = 20200101;

const COUNTER_BITS: u32 = 20;
const DETECTOR_BITS: u32 = 8;
const SEQ_BITS: u32 = 17;
const NIGHT_BITS: u32 = 15;
const GENERATION_BITS: u32 = 3;

const DETECTOR_SHIFT: u32 = COUNTER_BITS;
const SEQ_SHIFT: u32 = DETECTOR_SHIFT + DETECTOR_BITS;
const NIGHT_SHIFT: u32 = SEQ_SHIFT + SEQ_BITS;
const GENERATION_SHIFT: u32 = NIGHT_SHIFT + NIGHT_BITS;

/// The largest source counter a detector may use in one visit.
pub const MAX_SOURCE_COUNTER: u32 = (1 << COUNTER_BITS) - 1;
/// The largest visit sequence number within a night.
pub const MAX_VISIT_SEQ: u32 = 99_999;
/// The largest replay generation.
pub const MAX_GENERATION: u8 = (1 << GENERATION_BITS) - 1;

/// Errors building identifiers.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum IdError {
    /// `day_obs` is not a valid YYYYMMDD date within the id epoch.
    #[error("day_obs {0} is not a YYYYMMDD date between 2020-01-01 and 2109-09-06")]
    DayObs(u32),
    /// A field does not fit its bits.
    #[error("{field} = {value} does not fit (max {max})")]
    Overflow {
        /// The field that overflowed.
        field: &'static str,
        /// Its value.
        value: u64,
        /// Its maximum.
        max: u64,
    },
    /// A raw id is negative or otherwise outside the layout.
    #[error("{0} is not a valid apflow id (must be positive and < 2^63)")]
    Invalid(i64),
}

/// A visit: one pointing of the telescope (one 30 s exposure or two 15 s snaps).
///
/// Formatted Rubin-style as `day_obs * 100_000 + seq_num`, e.g. `2026112200042`
/// for the 42nd visit of the night of 2026-11-22.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct VisitId(pub u64);

impl VisitId {
    /// Builds a visit id from the night (`YYYYMMDD`) and the sequence number within it.
    pub fn new(day_obs: u32, seq: u32) -> Result<Self, IdError> {
        night_index(day_obs)?;
        if seq > MAX_VISIT_SEQ {
            return Err(IdError::Overflow {
                field: "visit seq",
                value: seq.into(),
                max: MAX_VISIT_SEQ.into(),
            });
        }
        Ok(Self(u64::from(day_obs) * 100_000 + u64::from(seq)))
    }
    /// The night, `YYYYMMDD`.
    pub fn day_obs(self) -> u32 {
        (self.0 / 100_000) as u32
    }
    /// The sequence number within the night.
    pub fn seq(self) -> u32 {
        (self.0 % 100_000) as u32
    }
}

impl fmt::Display for VisitId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One exposure (snap) of a visit: `visit * 10 + snap` (snap 0 or 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ExposureId(pub u64);

impl ExposureId {
    /// The exposure id of snap `snap` (0 or 1) of `visit`.
    pub fn new(visit: VisitId, snap: u8) -> Self {
        Self(visit.0 * 10 + u64::from(snap))
    }
    /// The visit this exposure belongs to.
    pub fn visit(self) -> VisitId {
        VisitId(self.0 / 10)
    }
    /// The snap number within the visit.
    pub fn snap(self) -> u8 {
        (self.0 % 10) as u8
    }
}

impl fmt::Display for ExposureId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A detector (CCD) of the camera, 0–255.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct DetectorId(pub u16);

impl DetectorId {
    /// The largest detector number ids can carry.
    pub const MAX: u16 = (1 << DETECTOR_BITS) - 1;
}

impl fmt::Display for DetectorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

fn night_index(day_obs: u32) -> Result<u32, IdError> {
    let date = NaiveDate::from_ymd_opt(
        (day_obs / 10_000) as i32,
        (day_obs / 100) % 100,
        day_obs % 100,
    )
    .ok_or(IdError::DayObs(day_obs))?;
    let epoch = NaiveDate::from_ymd_opt(2020, 1, 1).expect("valid epoch");
    let days = (date - epoch).num_days();
    if !(0..(1 << NIGHT_BITS)).contains(&days) {
        return Err(IdError::DayObs(day_obs));
    }
    Ok(days as u32)
}

fn day_obs_of(night: u32) -> u32 {
    let epoch = NaiveDate::from_ymd_opt(2020, 1, 1).expect("valid epoch");
    let date = epoch + chrono::Days::new(u64::from(night));
    use chrono::Datelike;
    date.year() as u32 * 10_000 + date.month() * 100 + date.day()
}

/// The id of a DiaSource (and of the alert it triggers). See the module docs for the layout.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct DiaSourceId(pub i64);

/// The fields packed into a [`DiaSourceId`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdParts {
    /// Replay generation, 0 for live ids.
    pub generation: u8,
    /// The visit.
    pub visit: VisitId,
    /// The detector.
    pub detector: DetectorId,
    /// The n-th source of that detector in that visit.
    pub counter: u32,
}

impl DiaSourceId {
    /// Mints the id of the `counter`-th DiaSource found on `detector` in `visit`.
    pub fn new(visit: VisitId, detector: DetectorId, counter: u32) -> Result<Self, IdError> {
        Self::from_parts(IdParts {
            generation: 0,
            visit,
            detector,
            counter,
        })
    }

    /// Packs the parts; fails when a part does not fit its bits.
    pub fn from_parts(p: IdParts) -> Result<Self, IdError> {
        let night = night_index(p.visit.day_obs())?;
        let seq = p.visit.seq();
        if seq > MAX_VISIT_SEQ {
            return Err(IdError::Overflow {
                field: "visit seq",
                value: seq.into(),
                max: MAX_VISIT_SEQ.into(),
            });
        }
        if p.detector.0 > DetectorId::MAX {
            return Err(IdError::Overflow {
                field: "detector",
                value: p.detector.0.into(),
                max: DetectorId::MAX.into(),
            });
        }
        if p.counter > MAX_SOURCE_COUNTER {
            return Err(IdError::Overflow {
                field: "source counter",
                value: p.counter.into(),
                max: MAX_SOURCE_COUNTER.into(),
            });
        }
        if p.generation > MAX_GENERATION {
            return Err(IdError::Overflow {
                field: "generation",
                value: p.generation.into(),
                max: MAX_GENERATION.into(),
            });
        }
        let v = (u64::from(p.generation) << GENERATION_SHIFT)
            | (u64::from(night) << NIGHT_SHIFT)
            | (u64::from(seq) << SEQ_SHIFT)
            | (u64::from(p.detector.0) << DETECTOR_SHIFT)
            | u64::from(p.counter);
        Ok(Self(v as i64))
    }

    /// Unpacks the id.
    pub fn parts(self) -> Result<IdParts, IdError> {
        if self.0 < 0 {
            return Err(IdError::Invalid(self.0));
        }
        let v = self.0 as u64;
        let field = |shift: u32, bits: u32| (v >> shift) & ((1u64 << bits) - 1);
        let night = field(NIGHT_SHIFT, NIGHT_BITS) as u32;
        let seq = field(SEQ_SHIFT, SEQ_BITS) as u32;
        Ok(IdParts {
            generation: field(GENERATION_SHIFT, GENERATION_BITS) as u8,
            visit: VisitId(u64::from(day_obs_of(night)) * 100_000 + u64::from(seq)),
            detector: DetectorId(field(DETECTOR_SHIFT, DETECTOR_BITS) as u16),
            counter: field(0, COUNTER_BITS) as u32,
        })
    }

    /// The replay generation of this id (0 for live ids).
    pub fn generation(self) -> u8 {
        ((self.0 as u64 >> GENERATION_SHIFT) & u64::from(MAX_GENERATION)) as u8
    }

    /// The deterministic "fresh id" of this id in replay generation `generation` (1–7).
    ///
    /// Every other field is kept, so a fresh id still tells its visit, detector and
    /// counter, and the map is a bijection between generation 0 and generation g. Since
    /// the generation field differs, no fresh id equals any id of the original night.
    pub fn fresh(self, generation: u8) -> Result<Self, IdError> {
        if generation == 0 || generation > MAX_GENERATION {
            return Err(IdError::Overflow {
                field: "replay generation (1-7)",
                value: generation.into(),
                max: MAX_GENERATION.into(),
            });
        }
        let parts = self.parts()?;
        Self::from_parts(IdParts {
            generation,
            ..parts
        })
    }
}

impl fmt::Display for DiaSourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The id of a DiaObject: the [`DiaSourceId`] of the DiaSource that created it.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct DiaObjectId(pub i64);

impl DiaObjectId {
    /// The DiaObject created by `source`.
    pub fn created_by(source: DiaSourceId) -> Self {
        Self(source.0)
    }
    /// The fresh id in replay generation `generation`; see [`DiaSourceId::fresh`].
    pub fn fresh(self, generation: u8) -> Result<Self, IdError> {
        DiaSourceId(self.0).fresh(generation).map(|s| Self(s.0))
    }
}

impl fmt::Display for DiaObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn visit_id_is_rubin_style() {
        let v = VisitId::new(20261122, 42).unwrap();
        assert_eq!(v.0, 2026112200042);
        assert_eq!(v.day_obs(), 20261122);
        assert_eq!(v.seq(), 42);
        assert!(VisitId::new(20261332, 1).is_err());
        assert!(VisitId::new(20191231, 1).is_err());
    }

    #[test]
    fn exposure_round_trip() {
        let v = VisitId::new(20261122, 7).unwrap();
        let e = ExposureId::new(v, 1);
        assert_eq!(e.visit(), v);
        assert_eq!(e.snap(), 1);
    }

    #[test]
    fn overflow_is_an_error() {
        let v = VisitId::new(20261122, 1).unwrap();
        assert!(DiaSourceId::new(v, DetectorId(256), 0).is_err());
        assert!(DiaSourceId::new(v, DetectorId(1), MAX_SOURCE_COUNTER + 1).is_err());
        assert!(DiaSourceId(-5).parts().is_err());
    }

    #[test]
    fn fresh_generation_must_be_1_to_7() {
        let id = DiaSourceId::new(VisitId::new(20261122, 1).unwrap(), DetectorId(3), 9).unwrap();
        assert!(id.fresh(0).is_err());
        assert!(id.fresh(8).is_err());
        assert_eq!(id.fresh(2).unwrap().generation(), 2);
    }

    fn arb_parts() -> impl Strategy<Value = IdParts> {
        (
            0u32..30_000,
            0u32..=MAX_VISIT_SEQ,
            0u16..=DetectorId::MAX,
            0u32..=MAX_SOURCE_COUNTER,
        )
            .prop_map(|(night, seq, det, counter)| IdParts {
                generation: 0,
                visit: VisitId(u64::from(day_obs_of(night)) * 100_000 + u64::from(seq)),
                detector: DetectorId(det),
                counter,
            })
    }

    proptest! {
        #[test]
        fn pack_unpack_round_trip(p in arb_parts()) {
            let id = DiaSourceId::from_parts(p).unwrap();
            prop_assert!(id.0 >= 0);
            prop_assert_eq!(id.parts().unwrap(), p);
        }

        #[test]
        fn distinct_parts_give_distinct_ids(a in arb_parts(), b in arb_parts()) {
            prop_assume!(a != b);
            prop_assert_ne!(DiaSourceId::from_parts(a).unwrap(), DiaSourceId::from_parts(b).unwrap());
        }

        #[test]
        fn fresh_ids_never_collide_with_live_ids(a in arb_parts(), b in arb_parts(), g in 1u8..=7) {
            let fresh = DiaSourceId::from_parts(a).unwrap().fresh(g).unwrap();
            prop_assert_ne!(fresh, DiaSourceId::from_parts(b).unwrap());
            // deterministic and invertible
            prop_assert_eq!(fresh, DiaSourceId::from_parts(a).unwrap().fresh(g).unwrap());
            let back = fresh.parts().unwrap();
            prop_assert_eq!(IdParts { generation: 0, ..back }, a);
        }
    }
}
