//! The APDB contract: what every backend provides.

use std::collections::BTreeMap;
use std::future::Future;

use apflow_core::ids::{DetectorId, DiaObjectId, DiaSourceId, VisitId};
use apflow_core::time::MjdTai;
use serde::{Deserialize, Serialize};

use crate::error::ApdbError;
use crate::partition::{Region, TimeWindow};
use crate::schema::{
    DiaForcedSource, DiaObject, DiaObjectLast, DiaSource, SchemaVersion, SsObject,
};

/// Everything one detector of one visit writes, in one [`Apdb::store`] call.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StoreBatch {
    /// The visit.
    pub visit: VisitId,
    /// The detector.
    pub detector: DetectorId,
    /// The visit's midpoint, MJD TAI (validity start of the DiaObject versions written).
    pub visit_time: MjdTai,
    /// New versions of the DiaObjects this detector created or updated.
    pub objects: Vec<DiaObject>,
    /// The DiaSources found on this detector (every one with `visit`/`detector` equal to the batch's).
    pub sources: Vec<DiaSource>,
    /// The forced photometry measured on this detector.
    pub forced: Vec<DiaForcedSource>,
}

impl StoreBatch {
    /// Checks the batch is consistent: every source and forced source belongs to this
    /// (visit, detector), every DiaObject version starts at the visit time, no id repeats.
    pub fn validate(&self) -> Result<(), ApdbError> {
        let bad = |r: String| Err(ApdbError::bad_input("store", r));
        for s in &self.sources {
            if s.visit != self.visit || s.detector != self.detector {
                return bad(format!(
                    "DiaSource {} is from visit {} detector {}, not the batch's visit {} detector {}",
                    s.dia_source_id, s.visit, s.detector, self.visit, self.detector
                ));
            }
            if s.dia_object_id.is_none() && s.ss_object_id.is_none() {
                return bad(format!(
                    "DiaSource {} has neither diaObjectId nor ssObjectId; associate it before storing",
                    s.dia_source_id
                ));
            }
        }
        for f in &self.forced {
            if f.visit != self.visit || f.detector != self.detector {
                return bad(format!(
                    "DiaForcedSource {} is from visit {} detector {}, not the batch's",
                    f.dia_forced_source_id, f.visit, f.detector
                ));
            }
        }
        for o in &self.objects {
            if o.validity_start_mjd_tai != self.visit_time.0 {
                return bad(format!(
                    "DiaObject {} validityStartMjdTai {} is not the visit time {}",
                    o.dia_object_id, o.validity_start_mjd_tai, self.visit_time.0
                ));
            }
        }
        let mut ids: Vec<i64> = self.sources.iter().map(|s| s.dia_source_id.0).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return bad(format!("DiaSource {} appears twice", w[0]));
        }
        let mut ids: Vec<i64> = self.objects.iter().map(|o| o.dia_object_id.0).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return bad(format!("DiaObject {} appears twice", w[0]));
        }
        let mut ids: Vec<i64> = self.forced.iter().map(|f| f.dia_forced_source_id).collect();
        ids.sort_unstable();
        if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
            return bad(format!("DiaForcedSource {} appears twice", w[0]));
        }
        Ok(())
    }
}

/// What a [`Apdb::store`] wrote.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreReport {
    /// Whether rows of an earlier store of the same (visit, detector) were replaced.
    pub replaced_previous: bool,
    /// DiaObject versions written.
    pub objects: usize,
    /// DiaSources written.
    pub sources: usize,
    /// Forced sources written.
    pub forced: usize,
}

/// Row counts, for operators.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// DiaObject versions (all rows of `DiaObject`).
    pub dia_object_versions: u64,
    /// Distinct DiaObjects (rows of `DiaObjectLast`).
    pub dia_objects: u64,
    /// DiaSources.
    pub dia_sources: u64,
    /// Forced sources.
    pub dia_forced_sources: u64,
    /// Solar-system objects.
    pub ss_objects: u64,
    /// Stored (visit, detector) pairs.
    pub visit_detectors: u64,
}

impl std::fmt::Display for Counts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "DiaObject (distinct)   {:>12}", self.dia_objects)?;
        writeln!(f, "DiaObject (versions)   {:>12}", self.dia_object_versions)?;
        writeln!(f, "DiaSource              {:>12}", self.dia_sources)?;
        writeln!(f, "DiaForcedSource        {:>12}", self.dia_forced_sources)?;
        writeln!(f, "SSObject               {:>12}", self.ss_objects)?;
        write!(f, "visit × detector       {:>12}", self.visit_detectors)
    }
}

/// Identity and configuration of an APDB.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApdbInfo {
    /// Backend name (`sqlite`, `scylla`).
    pub backend: String,
    /// The URL it was opened with.
    pub url: String,
    /// Schema version stored in the database.
    pub schema_version: SchemaVersion,
    /// Every metadata entry (configuration), by key.
    pub metadata: BTreeMap<String, String>,
}

impl std::fmt::Display for ApdbInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "backend         {}", self.backend)?;
        writeln!(f, "url             {}", self.url)?;
        write!(f, "schema version  {}", self.schema_version)?;
        for (k, v) in &self.metadata {
            write!(f, "\n{k:<15} {v}")?;
        }
        Ok(())
    }
}

/// The Alert Production Database contract.
///
/// Every method is one round of I/O on the latency-critical path; implementations are
/// cheap to share between tasks (`&self`, `Send + Sync`).
pub trait Apdb: Send + Sync {
    /// The latest version of every DiaObject whose position lies inside `region`
    /// (polygon plus margin), exactly: no object outside is returned.
    fn dia_objects(
        &self,
        region: &Region,
    ) -> impl Future<Output = Result<Vec<DiaObjectLast>, ApdbError>> + Send;

    /// The DiaSources of `objects` with `midpointMjdTai` inside `window`, read from the
    /// partitions of `region` (which must hold the objects).
    fn dia_sources(
        &self,
        region: &Region,
        objects: &[DiaObjectId],
        window: TimeWindow,
    ) -> impl Future<Output = Result<Vec<DiaSource>, ApdbError>> + Send;

    /// The forced sources of `objects` with `midpointMjdTai` inside `window`.
    fn dia_forced_sources(
        &self,
        region: &Region,
        objects: &[DiaObjectId],
        window: TimeWindow,
    ) -> impl Future<Output = Result<Vec<DiaForcedSource>, ApdbError>> + Send;

    /// Stores one detector's results. Idempotent: storing the same (visit, detector)
    /// again replaces the rows the earlier store wrote, never duplicates them.
    fn store(
        &self,
        batch: &StoreBatch,
    ) -> impl Future<Output = Result<StoreReport, ApdbError>> + Send;

    /// Whether (visit, detector) has been stored.
    fn is_stored(
        &self,
        visit: VisitId,
        detector: DetectorId,
    ) -> impl Future<Output = Result<bool, ApdbError>> + Send;

    /// Inserts or replaces solar-system objects.
    fn store_ss_objects(
        &self,
        objects: &[SsObject],
    ) -> impl Future<Output = Result<(), ApdbError>> + Send;

    /// Reassigns DiaSources to solar-system objects (sets `ssObjectId`, clears
    /// `diaObjectId`); returns how many sources were found and changed.
    fn reassign_to_ss_objects(
        &self,
        assignments: &[(DiaSourceId, i64)],
    ) -> impl Future<Output = Result<usize, ApdbError>> + Send;

    /// Row counts.
    fn counts(&self) -> impl Future<Output = Result<Counts, ApdbError>> + Send;

    /// Schema version and configuration.
    fn info(&self) -> impl Future<Output = Result<ApdbInfo, ApdbError>> + Send;
}
