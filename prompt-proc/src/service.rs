//! The file side of prompt processing: what the `process` stage of `apflow run` (and a
//! future standalone `process` service) needs around [`crate::pipeline`] — master
//! calibrations per detector, the template tile index and tiles, the reference
//! catalogue — loaded once and cached, and a call that processes one detector's raw
//! files.
//!
//! A night directory has the simulator's layout (`docs/CAMERA.md`): `calib/`,
//! `templates/tiles.json` and tiles, `refcat.csv`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::apdb_stage::DetectorVisit;
use crate::calibrate::{RefStar, read_refcat_csv};
use crate::error::ScienceError;
use crate::io::{
    MasterCalibs, RawSnap, TemplateTile, TemplateTileInfo, read_master_calibs, read_raw,
    read_template_index, read_template_tile,
};
use crate::pipeline::{DetectorResult, PipelineConfig, StageFailure, process_detector};
use crate::warp::select_tiles;

/// Template tiles kept in memory at most (each is tens of MB).
const TILE_CACHE: usize = 32;

/// Inputs shared by every detector of a night, loaded once.
#[derive(Debug)]
pub struct ProcessContext {
    calib_dir: PathBuf,
    index: Vec<TemplateTileInfo>,
    refcat: Vec<RefStar>,
    calibs: Mutex<HashMap<u16, Arc<MasterCalibs>>>,
    tiles: Mutex<Vec<(String, Arc<TemplateTile>)>>,
    /// Every stage's settings.
    pub config: PipelineConfig,
}

fn load(stage: &'static str) -> impl Fn(ScienceError) -> StageFailure {
    move |error| StageFailure { stage, error }
}

impl ProcessContext {
    /// Opens a night directory: reads the template index and the reference catalogue
    /// (calibrations and tiles are read on first use).
    pub fn open(night_dir: &Path, config: PipelineConfig) -> Result<Self, ScienceError> {
        Ok(Self {
            calib_dir: night_dir.join("calib"),
            index: read_template_index(&night_dir.join("templates"))?,
            refcat: read_refcat_csv(&night_dir.join("refcat.csv"))?,
            calibs: Mutex::new(HashMap::new()),
            tiles: Mutex::new(Vec::new()),
            config,
        })
    }

    /// Reference stars loaded.
    pub fn refcat_len(&self) -> usize {
        self.refcat.len()
    }

    fn calibs(&self, detector: u16) -> Result<Arc<MasterCalibs>, ScienceError> {
        if let Some(c) = self.calibs.lock().expect("calib cache").get(&detector) {
            return Ok(c.clone());
        }
        let c = Arc::new(read_master_calibs(&self.calib_dir, detector)?);
        self.calibs
            .lock()
            .expect("calib cache")
            .insert(detector, c.clone());
        Ok(c)
    }

    fn tile(&self, info: &TemplateTileInfo) -> Result<Arc<TemplateTile>, ScienceError> {
        {
            let mut cache = self.tiles.lock().expect("tile cache");
            if let Some(i) = cache.iter().position(|(id, _)| *id == info.id) {
                // Most recently used last.
                let entry = cache.remove(i);
                let tile = entry.1.clone();
                cache.push(entry);
                return Ok(tile);
            }
        }
        let tile = Arc::new(read_template_tile(&info.path)?);
        let mut cache = self.tiles.lock().expect("tile cache");
        if cache.len() >= TILE_CACHE {
            cache.remove(0);
        }
        cache.push((info.id.clone(), tile.clone()));
        Ok(tile)
    }

    /// Processes one detector of one visit from its raw files (one per snap): which
    /// detector and visit they are, and the result. Unreadable files, or snaps of
    /// different detectors or visits, fail at stage `load`.
    pub fn process_files(
        &self,
        raws: &[PathBuf],
    ) -> Result<(DetectorVisit, DetectorResult), StageFailure> {
        let snaps: Vec<RawSnap> = raws
            .iter()
            .map(|p| read_raw(p))
            .collect::<Result<_, _>>()
            .map_err(load("load"))?;
        let visit = DetectorVisit::from_snaps(&snaps).map_err(load("load"))?;
        let meta = &snaps[0].meta;
        let calibs = self.calibs(meta.detector).map_err(load("load"))?;
        let (w, h) = meta.detector_size;
        let wanted = select_tiles(&self.index, &meta.band, &meta.wcs, w, h);
        let tiles: Vec<Arc<TemplateTile>> = wanted
            .iter()
            .map(|info| self.tile(info))
            .collect::<Result<_, _>>()
            .map_err(load("load"))?;
        let refs: Vec<&TemplateTile> = tiles.iter().map(|t| t.as_ref()).collect();
        let result = process_detector(&snaps, &calibs, &refs, &self.refcat, &self.config)?;
        Ok((visit, result))
    }
}
