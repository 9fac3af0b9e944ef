//! The ingest service: watches a landing directory for raw FITS files and announces
//! each complete one, or dead-letters it with the reason.
//!
//! A file is taken once its size has not changed between two polls (the camera has
//! finished writing it). A file is marked done only after its event or dead letter is
//! acknowledged by the bus, so a crash re-announces it (at-least-once; processing is
//! idempotent per visit and detector).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use apflow_core::bus::{BusError, EventPublisher};

use crate::{dead_letter, ingest_file};

/// What one poll did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PollOutcome {
    /// Files announced.
    pub ingested: usize,
    /// Files dead-lettered.
    pub rejected: usize,
}

/// Watches one directory.
#[derive(Debug)]
pub struct DirectoryWatcher {
    dir: PathBuf,
    sizes: HashMap<PathBuf, u64>,
    done: HashSet<PathBuf>,
}

impl DirectoryWatcher {
    /// A watcher of `dir` (searched recursively for `*.fits`).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            sizes: HashMap::new(),
            done: HashSet::new(),
        }
    }

    fn scan(dir: &Path, out: &mut Vec<(PathBuf, u64)>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let meta = entry.metadata()?;
            if meta.is_dir() {
                Self::scan(&path, out)?;
            } else if path.extension().is_some_and(|e| e == "fits") {
                out.push((path, meta.len()));
            }
        }
        Ok(())
    }

    /// Looks once for new, complete files and announces them.
    pub async fn poll(&mut self, publisher: &EventPublisher) -> Result<PollOutcome, BusError> {
        let mut found = Vec::new();
        if let Err(e) = Self::scan(&self.dir, &mut found) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "Cannot scan the landing directory.");
            return Ok(PollOutcome::default());
        }
        found.sort();
        let mut outcome = PollOutcome::default();
        for (path, size) in found {
            if self.done.contains(&path) {
                continue;
            }
            // Stable size across two polls: the writer has finished.
            if self.sizes.insert(path.clone(), size) != Some(size) {
                continue;
            }
            let p = path.clone();
            let result = tokio::task::spawn_blocking(move || ingest_file(&p, None))
                .await
                .map_err(|e| BusError::Consume(format!("ingest task failed: {e}")))?;
            match result {
                Ok(event) => {
                    publisher.publish(&event).await?;
                    tracing::info!(visit = event.visit.0, detector = event.detector.0, file = %path.display(), "Raw image ingested.");
                    outcome.ingested += 1;
                }
                Err(e) if e.class() == apflow_core::events::ErrorClass::Retryable => {
                    tracing::warn!(file = %path.display(), error = %e, "Will retry.");
                    continue;
                }
                Err(e) => {
                    publisher.dead_letter(&dead_letter(&path, &e)).await?;
                    outcome.rejected += 1;
                }
            }
            self.sizes.remove(&path);
            self.done.insert(path);
        }
        Ok(outcome)
    }

    /// Polls every `interval` until `shutdown` completes.
    pub async fn run(
        mut self,
        publisher: EventPublisher,
        interval: Duration,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), BusError> {
        tokio::pin!(shutdown);
        loop {
            self.poll(&publisher).await?;
            tokio::select! {
                () = &mut shutdown => return Ok(()),
                () = tokio::time::sleep(interval) => {}
            }
        }
    }
}
