//! The per-visit quota of each filter, as a pure state machine (no clock, no I/O).
//!
//! # Rule
//!
//! For each (visit, filter), the first `quota` matches **in arrival order** pass;
//! later matches of that visit are dropped (and counted). This is the streaming rule:
//! an alert is forwarded the moment it matches, with no buffering, so a filtered
//! stream keeps the 60 s latency of the full stream. A ranking rule ("the 20 most
//! reliable of the visit") would have to hold every alert until the visit's last
//! detector is done, adding the whole visit's processing time to every alert's
//! latency, and the visit's end is not reliably known (detectors fail). Arrival order
//! is the order the filtering service consumes the full stream in, which is
//! reproducible for a given partition assignment.
//!
//! State is kept for the most recent [`DEFAULT_OPEN_VISITS`] visit ids (visit ids
//! grow with time: `dayObs × 100000 + sequence`). When a new visit would exceed that,
//! the lowest visit id is closed; a late match for a closed visit (or any visit id at
//! or below the highest closed one) is dropped, so the quota holds even for alerts
//! that arrive long after their visit.

use std::collections::BTreeMap;

/// Visits whose counts are kept open.
pub const DEFAULT_OPEN_VISITS: usize = 16;

/// What to do with a match.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum QuotaDecision {
    /// Forward the alert to the filter's topic.
    Pass,
    /// Over the quota (or its visit is closed): drop it.
    Drop,
}

/// Counts of one visit, per filter (indexed like the quotas).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VisitCounts {
    /// Matches seen.
    pub matched: Vec<u64>,
    /// Matches forwarded (at most the quota).
    pub passed: Vec<u64>,
}

impl VisitCounts {
    /// Zero counts for `n` filters.
    pub fn new(n: usize) -> Self {
        Self {
            matched: vec![0; n],
            passed: vec![0; n],
        }
    }

    /// Matches dropped for filter `i` (over quota).
    pub fn dropped(&self, i: usize) -> u64 {
        self.matched[i] - self.passed[i]
    }
}

/// Per-visit, per-filter quota state.
#[derive(Clone, Debug)]
pub struct QuotaEngine {
    quotas: Vec<u32>,
    open: BTreeMap<u64, VisitCounts>,
    max_open: usize,
    closed_up_to: Option<u64>,
    late_drops: u64,
    since_taken: VisitCounts,
    /// Visits closed by the open-visit window, not yet taken ([`Self::take_closed`]).
    closed: Vec<(u64, VisitCounts)>,
}

impl QuotaEngine {
    /// An engine for filters with these quotas (filter `i` has `quotas[i]`).
    pub fn new(quotas: Vec<u32>) -> Self {
        Self::with_open_visits(quotas, DEFAULT_OPEN_VISITS)
    }

    /// An engine keeping `max_open` (at least 1) visits open.
    pub fn with_open_visits(quotas: Vec<u32>, max_open: usize) -> Self {
        Self {
            open: BTreeMap::new(),
            max_open: max_open.max(1),
            closed_up_to: None,
            late_drops: 0,
            since_taken: VisitCounts::new(quotas.len()),
            closed: Vec::new(),
            quotas,
        }
    }

    /// Number of filters.
    pub fn len(&self) -> usize {
        self.quotas.len()
    }

    /// Whether there are no filters.
    pub fn is_empty(&self) -> bool {
        self.quotas.is_empty()
    }

    /// Records a match of filter `filter` (an index below [`Self::len`]) on an alert of
    /// `visit` and says whether it passes. An out-of-range filter index is dropped.
    pub fn offer(&mut self, visit: u64, filter: usize) -> QuotaDecision {
        if filter >= self.quotas.len() {
            self.late_drops += 1;
            return QuotaDecision::Drop;
        }
        self.since_taken.matched[filter] += 1;
        if self.closed_up_to.is_some_and(|c| visit <= c) {
            self.late_drops += 1;
            return QuotaDecision::Drop;
        }
        if !self.open.contains_key(&visit) {
            while self.open.len() >= self.max_open {
                if let Some(c) = self.close_oldest() {
                    self.closed.push(c);
                }
            }
            let n = self.quotas.len();
            self.open.insert(visit, VisitCounts::new(n));
        }
        let c = self.open.get_mut(&visit).expect("inserted above");
        c.matched[filter] += 1;
        if c.passed[filter] < u64::from(self.quotas[filter]) {
            c.passed[filter] += 1;
            self.since_taken.passed[filter] += 1;
            QuotaDecision::Pass
        } else {
            QuotaDecision::Drop
        }
    }

    fn close_oldest(&mut self) -> Option<(u64, VisitCounts)> {
        let (v, c) = self.open.pop_first()?;
        self.closed_up_to = Some(self.closed_up_to.map_or(v, |x| x.max(v)));
        Some((v, c))
    }

    /// The counts of an open visit.
    pub fn counts(&self, visit: u64) -> Option<&VisitCounts> {
        self.open.get(&visit)
    }

    /// Closes `visit` and every older one (for example on its `VisitComplete`),
    /// returning the counts of those that were open, oldest first. Later matches for
    /// them are dropped.
    pub fn close_through(&mut self, visit: u64) -> Vec<(u64, VisitCounts)> {
        let mut out = Vec::new();
        while self
            .open
            .first_key_value()
            .is_some_and(|(v, _)| *v <= visit)
        {
            out.extend(self.close_oldest());
        }
        self.closed_up_to = Some(self.closed_up_to.map_or(visit, |x| x.max(visit)));
        out
    }

    /// Matches and passes per filter since the last call, over all visits (for the
    /// per-batch metrics, [`crate::metrics::record_filter_counts`]); the tally restarts.
    pub fn take_counts(&mut self) -> VisitCounts {
        let n = self.quotas.len();
        std::mem::replace(&mut self.since_taken, VisitCounts::new(n))
    }

    /// The visits the open-visit window closed since the last call, oldest first, with
    /// their final counts (what [`Self::close_through`] closes, it returns itself).
    pub fn take_closed(&mut self) -> Vec<(u64, VisitCounts)> {
        std::mem::take(&mut self.closed)
    }

    /// The same state for another set of filters: filter `i` of the new set has quota
    /// `quotas[i]` and takes over the counts of old filter `from[i]` (`None`: a new
    /// filter, counts start at zero). Open visits, the closed-visit boundary, late
    /// drops and the closed visits not yet taken carry over; counts of old filters
    /// that are not taken over are forgotten, and so is the tally since the last
    /// [`Self::take_counts`] (take it first). Used when a filter set is reloaded: a
    /// filter keeps its place in the visit's quota under its name. An index in `from`
    /// out of range counts as `None`.
    pub fn remap(&self, quotas: Vec<u32>, from: &[Option<usize>]) -> Self {
        let n = quotas.len();
        let map = |c: &VisitCounts| {
            let pick = |v: &[u64], i: usize| {
                from.get(i)
                    .copied()
                    .flatten()
                    .and_then(|j| v.get(j).copied())
                    .unwrap_or(0)
            };
            VisitCounts {
                matched: (0..n).map(|i| pick(&c.matched, i)).collect(),
                passed: (0..n).map(|i| pick(&c.passed, i)).collect(),
            }
        };
        Self {
            open: self.open.iter().map(|(v, c)| (*v, map(c))).collect(),
            max_open: self.max_open,
            closed_up_to: self.closed_up_to,
            late_drops: self.late_drops,
            since_taken: VisitCounts::new(n),
            closed: self.closed.iter().map(|(v, c)| (*v, map(c))).collect(),
            quotas,
        }
    }

    /// Matches dropped because their visit was closed or their filter unknown.
    pub fn late_drops(&self) -> u64 {
        self.late_drops
    }
}
