//! The file side of prompt processing: what the `process` stage of `apflow run` (and a
//! future standalone `process` service) needs around [`crate::pipeline`] — master
//! calibrations per detector, the template tile index and tiles, the reference
//! catalogue — loaded once and cached, and a call that processes one detector's raw
//! files.
//!
//! A night directory has the simulator's layout (`docs/CAMERA.md`): `calib/`,
//! `templates/tiles.json` and tiles, `refcat.csv`.

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

type Slot<V> = Arc<Mutex<Option<Arc<V>>>>;

/// Values loaded once per key: concurrent requests for one key wait for a single load,
/// other keys load in parallel; beyond `cap` entries the least recently used goes.
#[derive(Debug)]
struct Cache<K, V> {
    cap: usize,
    /// Most recently used last.
    entries: Mutex<Vec<(K, Slot<V>)>>,
}

impl<K: Clone + PartialEq, V> Cache<K, V> {
    fn new(cap: usize) -> Self {
        Self {
            cap,
            entries: Mutex::new(Vec::new()),
        }
    }

    fn get_or_load<E>(&self, key: &K, load: impl FnOnce() -> Result<V, E>) -> Result<Arc<V>, E> {
        let slot = {
            let mut entries = self.entries.lock().expect("cache");
            let entry = match entries.iter().position(|(k, _)| k == key) {
                Some(i) => entries.remove(i),
                None => (key.clone(), Slot::default()),
            };
            let slot = entry.1.clone();
            entries.push(entry);
            slot
        };
        // Held while loading, so a second request for this key waits for this load.
        let mut value = slot.lock().expect("cache slot");
        if let Some(v) = value.as_ref() {
            return Ok(v.clone());
        }
        match load() {
            Ok(v) => {
                let v = Arc::new(v);
                *value = Some(v.clone());
                drop(value);
                // Only a loaded entry pushes the least recently used one out.
                let mut entries = self.entries.lock().expect("cache");
                while entries.len() > self.cap {
                    entries.remove(0);
                }
                Ok(v)
            }
            Err(e) => {
                // A failed load takes no place in the cache (nor pushes a good entry out).
                drop(value);
                let mut entries = self.entries.lock().expect("cache");
                entries.retain(|(k, s)| !(k == key && Arc::ptr_eq(s, &slot)));
                Err(e)
            }
        }
    }
}

/// Inputs shared by every detector of a night, loaded once.
#[derive(Debug)]
pub struct ProcessContext {
    calib_dir: PathBuf,
    index: Vec<TemplateTileInfo>,
    refcat: Vec<RefStar>,
    calibs: Cache<u16, MasterCalibs>,
    /// Keyed by file: a tile id names the same sky area in every band.
    tiles: Cache<PathBuf, TemplateTile>,
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
            calibs: Cache::new(usize::MAX),
            tiles: Cache::new(TILE_CACHE),
            config,
        })
    }

    /// Reference stars loaded.
    pub fn refcat_len(&self) -> usize {
        self.refcat.len()
    }

    fn calibs(&self, detector: u16) -> Result<Arc<MasterCalibs>, ScienceError> {
        self.calibs
            .get_or_load(&detector, || read_master_calibs(&self.calib_dir, detector))
    }

    fn tile(&self, info: &TemplateTileInfo) -> Result<Arc<TemplateTile>, ScienceError> {
        self.tiles
            .get_or_load(&info.path, || read_template_tile(&info.path))
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A tile id names one sky area in every band: the cache must hand out the tile of
    /// the band asked for, whichever band was loaded first (keyed by id, a later visit
    /// in another band was subtracted against the wrong band's template).
    #[test]
    fn tiles_of_one_sky_area_in_different_bands_are_different_tiles() {
        let dir = tempfile::tempdir().unwrap();
        let spec = apflow_sim::NightSpec {
            visits: 3,
            visits_per_band: 1,
            detectors: 1,
            detector_size: 256,
            ..apflow_sim::NightSpec::default()
        };
        let night = apflow_sim::Night::new(&spec).unwrap();
        night.write_inputs(dir.path(), |_| {}).unwrap();
        let ctx = ProcessContext::open(dir.path(), PipelineConfig::default()).unwrap();
        let shared: Vec<&TemplateTileInfo> = ctx
            .index
            .iter()
            .filter(|i| ctx.index.iter().any(|j| j.id == i.id && j.band != i.band))
            .collect();
        assert!(
            shared.len() >= 2,
            "no tile id in two bands: {:?}",
            ctx.index
        );
        for info in shared {
            let tile = ctx.tile(info).unwrap();
            assert_eq!((&tile.id, &tile.band), (&info.id, &info.band));
        }
    }

    #[test]
    fn cache_loads_each_key_once_even_when_asked_concurrently_and_evicts_the_oldest() {
        let cache: Cache<u32, u32> = Cache::new(2);
        let loads = AtomicUsize::new(0);
        let load = |k: u32| {
            loads.fetch_add(1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(20));
            Ok::<_, ()>(k * 10)
        };
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| assert_eq!(*cache.get_or_load(&1, || load(1)).unwrap(), 10));
            }
        });
        assert_eq!(loads.load(Ordering::SeqCst), 1);
        cache.get_or_load(&2, || load(2)).unwrap();
        cache.get_or_load(&3, || load(3)).unwrap();
        // 1 was least recently used and is gone; 3 is kept.
        cache.get_or_load(&3, || load(3)).unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 3);
        cache.get_or_load(&1, || load(1)).unwrap();
        assert_eq!(loads.load(Ordering::SeqCst), 4);
        // A failed load leaves nothing behind.
        assert!(cache.get_or_load(&9, || Err(())).is_err());
        assert!(cache.entries.lock().unwrap().iter().all(|(k, _)| *k != 9));
        assert_eq!(*cache.get_or_load(&9, || load(9)).unwrap(), 90);
    }
}
