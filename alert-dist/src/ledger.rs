//! The producer's ledger: which alerts of each (visit, detector) the broker has
//! acknowledged, so a rerun of a detector (a retried job, a restarted service) sends
//! only what was not delivered before.
//!
//! One SQLite file (WAL, one transaction per detector batch), table
//! `sent(visit, detector, dia_source_id)`. An alert is recorded only after its
//! delivery report says the broker has it, so the ledger never claims more than was
//! sent; a crash between acknowledgement and the ledger write makes the rerun resend
//! those alerts (at-least-once, and the broker's consumers key on `diaSourceId`).

use std::collections::HashSet;
use std::path::Path;
use std::sync::Mutex;

use apflow_core::ids::{DetectorId, VisitId};
use rusqlite::{Connection, params};
use thiserror::Error;

/// A failed ledger operation (the file is unreadable, locked or full: check the path
/// and the disk).
#[derive(Debug, Error)]
#[error("alert ledger: {0}")]
pub struct LedgerError(#[from] rusqlite::Error);

/// What the broker acknowledged, per (visit, detector).
#[derive(Debug)]
pub struct Ledger {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS sent (
    visit INTEGER NOT NULL,
    detector INTEGER NOT NULL,
    dia_source_id INTEGER NOT NULL,
    PRIMARY KEY (visit, detector, dia_source_id)
) WITHOUT ROWID";

impl Ledger {
    /// Opens (or creates) the ledger file at `path`.
    pub fn open(path: &Path) -> Result<Self, LedgerError> {
        let conn = Connection::open(path)?;
        let _mode: String =
            conn.pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        Self::init(conn)
    }

    /// A ledger that lives as long as the process (tests, benchmarks).
    pub fn in_memory() -> Result<Self, LedgerError> {
        Self::init(Connection::open_in_memory()?)
    }

    fn init(conn: Connection) -> Result<Self, LedgerError> {
        conn.execute_batch(SCHEMA)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave a half-applied transaction
        // (rusqlite rolls back on drop), so a poisoned lock is still usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The `diaSourceId`s already acknowledged for (visit, detector).
    pub fn sent_ids(
        &self,
        visit: VisitId,
        detector: DetectorId,
    ) -> Result<HashSet<i64>, LedgerError> {
        let conn = self.lock();
        let mut stmt = conn
            .prepare_cached("SELECT dia_source_id FROM sent WHERE visit = ?1 AND detector = ?2")?;
        let rows = stmt.query_map(params![visit.0 as i64, detector.0], |r| r.get(0))?;
        rows.collect::<Result<_, _>>().map_err(Into::into)
    }

    /// Records `ids` as acknowledged for (visit, detector), in one transaction.
    /// Recording an id twice is harmless.
    pub fn record_sent(
        &self,
        visit: VisitId,
        detector: DetectorId,
        ids: &[i64],
    ) -> Result<(), LedgerError> {
        let mut conn = self.lock();
        let tx = conn.transaction()?;
        {
            let mut stmt = tx.prepare_cached(
                "INSERT OR IGNORE INTO sent (visit, detector, dia_source_id) VALUES (?1, ?2, ?3)",
            )?;
            for id in ids {
                stmt.execute(params![visit.0 as i64, detector.0, id])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    /// How many alerts were acknowledged for (visit, detector).
    pub fn count(&self, visit: VisitId, detector: DetectorId) -> Result<u64, LedgerError> {
        let conn = self.lock();
        let n: i64 = conn.query_row(
            "SELECT COUNT(*) FROM sent WHERE visit = ?1 AND detector = ?2",
            params![visit.0 as i64, detector.0],
            |r| r.get(0),
        )?;
        Ok(n as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reopened_ledger_remembers_what_was_sent_per_detector() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ledger.sqlite");
        let (v, d1, d2) = (VisitId(2026112200001), DetectorId(1), DetectorId(2));
        {
            let l = Ledger::open(&path).unwrap();
            l.record_sent(v, d1, &[10, 11, 12]).unwrap();
            l.record_sent(v, d1, &[12, 13]).unwrap();
            l.record_sent(v, d2, &[20]).unwrap();
        }
        let l = Ledger::open(&path).unwrap();
        assert_eq!(l.sent_ids(v, d1).unwrap(), HashSet::from([10, 11, 12, 13]));
        assert_eq!(l.count(v, d1).unwrap(), 4);
        assert_eq!(l.sent_ids(v, d2).unwrap(), HashSet::from([20]));
        assert!(l.sent_ids(VisitId(2026112200002), d1).unwrap().is_empty());
    }
}
