//! Which offsets may be committed: the low-water mark of acknowledged deliveries.
//!
//! Messages of one partition can be processed concurrently and acknowledged out of
//! order. An offset is committed only when it and every earlier delivered offset of the
//! partition have been acknowledged, so a crash never skips an unacknowledged message
//! (at-least-once; idempotent downstream writes make the redelivery harmless).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;

/// Called with `(topic, partition, next_offset_to_consume)` when the commit point advances.
pub(crate) type CommitFn = Box<dyn Fn(&str, i32, i64) + Send + Sync>;

#[derive(Debug, Default)]
struct PartitionAcks {
    pending: BTreeSet<i64>,
    next: i64,
    committed: Option<i64>,
}

/// Tracks delivered and acknowledged offsets per partition.
pub(crate) struct AckTracker {
    partitions: Mutex<HashMap<(String, i32), PartitionAcks>>,
    on_commit: CommitFn,
}

impl std::fmt::Debug for AckTracker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AckTracker").finish_non_exhaustive()
    }
}

impl AckTracker {
    pub(crate) fn new(on_commit: CommitFn) -> Self {
        Self {
            partitions: Mutex::new(HashMap::new()),
            on_commit,
        }
    }

    /// Records that `offset` was handed to the application.
    pub(crate) fn delivered(&self, topic: &str, partition: i32, offset: i64) {
        let mut map = self.partitions.lock().expect("ack tracker lock");
        let p = map.entry((topic.to_owned(), partition)).or_default();
        if p.committed.is_none() {
            // Nothing before the first delivery is ours to commit.
            p.committed = Some(offset);
        }
        p.pending.insert(offset);
        p.next = p.next.max(offset + 1);
    }

    /// Records that `offset` was fully processed; commits the new low-water mark if it moved.
    pub(crate) fn ack(&self, topic: &str, partition: i32, offset: i64) {
        let commit = {
            let mut map = self.partitions.lock().expect("ack tracker lock");
            let Some(p) = map.get_mut(&(topic.to_owned(), partition)) else {
                return;
            };
            if !p.pending.remove(&offset) {
                return;
            }
            let mark = p.pending.first().copied().unwrap_or(p.next);
            if p.committed.is_none_or(|c| mark > c) {
                p.committed = Some(mark);
                Some(mark)
            } else {
                None
            }
        };
        if let Some(mark) = commit {
            (self.on_commit)(topic, partition, mark);
        }
    }

    /// Number of delivered, unacknowledged messages.
    pub(crate) fn in_flight(&self) -> usize {
        self.partitions
            .lock()
            .expect("ack tracker lock")
            .values()
            .map(|p| p.pending.len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn tracker() -> (AckTracker, Arc<Mutex<Vec<i64>>>) {
        let commits = Arc::new(Mutex::new(Vec::new()));
        let c = commits.clone();
        (
            AckTracker::new(Box::new(move |_, _, o| c.lock().unwrap().push(o))),
            commits,
        )
    }

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let (t, commits) = tracker();
        for o in 10..15 {
            t.delivered("a", 0, o);
        }
        t.ack("a", 0, 12);
        t.ack("a", 0, 11);
        assert!(commits.lock().unwrap().is_empty(), "10 is still in flight");
        t.ack("a", 0, 10);
        assert_eq!(*commits.lock().unwrap(), vec![13]);
        t.ack("a", 0, 14);
        t.ack("a", 0, 13);
        assert_eq!(*commits.lock().unwrap(), vec![13, 15]);
        assert_eq!(t.in_flight(), 0);
    }

    #[test]
    fn double_and_unknown_acks_are_ignored() {
        let (t, commits) = tracker();
        t.delivered("a", 0, 0);
        t.ack("a", 0, 0);
        t.ack("a", 0, 0);
        t.ack("b", 3, 7);
        assert_eq!(*commits.lock().unwrap(), vec![1]);
    }
}
