//! The filtering service: the full alert stream in, per-filter streams out (issue 7;
//! Rubin's mini-broker, DMS-REQ-0342/0343/0348: 100 users × 20 full alerts per visit).
//!
//! # What it does
//!
//! One consumer of the full alert topic on the event bus ([`apflow_core::bus::Bus`]:
//! in-process or Kafka), in one consumer group (default [`DEFAULT_GROUP`]), however
//! many filters are active — not one consumer per filter. Messages are taken in
//! batches ([`FilterServiceOptions::batch_max`], [`FilterServiceOptions::batch_wait`]);
//! each alert is decoded once ([`AlertView::decode_framed`]), every filter of the
//! active [`FilterSet`] is evaluated on it, each match is offered to the
//! [`QuotaEngine`] under the alert's `diaSource.visit`, and each alert that passes is
//! forwarded to the filter's topic with its exact bytes, key (the `diaSourceId`) and
//! headers (on the sink bus, [`Bus::publish_all`]). Topics of the filters are created when missing
//! ([`Bus::ensure_topics`]). Evaluation runs off the async workers
//! (`spawn_blocking`); the forwards of a batch are published concurrently.
//!
//! # Delivery
//!
//! At-least-once ([`apflow_core::bus`]): a batch's input messages are acknowledged,
//! and their offsets committed, only after every forward of the batch was
//! acknowledged by the bus (and, with [`FilterServiceOptions::matches_log`], its lines
//! written). A failed forward stops the service with [`FilterServiceError::Forward`]
//! and nothing of that batch is committed, so a restart evaluates the batch again.
//!
//! **Quotas after a restart.** The quota state is held in memory. A restarted service
//! starts every visit at zero: alerts of the uncommitted batch that were forwarded
//! before the failure are forwarded again (duplicates on the filter topic, which a
//! consumer detects by `diaSourceId`), and a visit that was in progress can receive
//! up to its quota again from the alerts consumed after the restart. The quota holds
//! per service lifetime and per visit, not across restarts.
//!
//! # Quota rule and closing visits
//!
//! The rule is [`crate::filter::quota`]'s: per (visit, filter) the first `quota`
//! matches in the order this service consumes them pass. Visits are closed only by
//! the engine's open-visit window ([`crate::filter::quota::DEFAULT_OPEN_VISITS`] most
//! recent visit ids); a later match of a closed visit is dropped and counted as a
//! quota drop. `VisitComplete` events do **not** close visits: they travel on another
//! topic than the alerts, so a visit's `VisitComplete` can be consumed before the last
//! alerts of that visit are (several partitions, a consumer that lags), and closing
//! on it would drop alerts that are within the quota. The window (16 visits, about 10
//! minutes of a 37 s cadence) is the documented bound on lateness instead.
//!
//! # Bad messages
//!
//! A message that is not an alert of the alert schema (not Confluent-framed, another
//! schema id, a malformed body, no `diaSource.visit`) is logged, counted
//! ([`crate::metrics::FILTER_BAD_MESSAGES_TOTAL`], [`FilterSummary::bad`]), published
//! as a dead letter (stage `filter`, reason `not_an_alert`) when
//! [`FilterServiceOptions::dead_letters`] is set, acknowledged and skipped.
//!
//! # Hot reload
//!
//! With [`FilterServiceOptions::dir`] and [`FilterServiceOptions::reload_interval`],
//! the service checks the directory's `*.toml` files (names, sizes and modification
//! times) at most once per interval, **after a batch is collected and before it is
//! evaluated**: a file written before an alert was published is in effect for that
//! alert. Any change (a file changed, added or removed) reloads the whole set with
//! [`FilterSet::load_dir`]. A set that fails to load is refused: every error is
//! logged with its file:line:column, [`crate::metrics::FILTER_RELOADS_TOTAL`]
//! `{outcome="refused"}` counts it, and the old set keeps running (the same broken
//! state is not reported again until the files change). A set that loads takes
//! effect for the next batch; the subscription, and so the stream position, is kept;
//! the quota state carries over by filter name ([`QuotaEngine::remap`]): a filter
//! whose expression changed keeps the alerts it already passed in the open visits.
//!
//! # Metrics and summary
//!
//! Per batch: alerts consumed ([`crate::metrics::FILTER_CONSUMED_TOTAL`]), bad
//! messages, and per filter matches, passes and quota drops
//! ([`crate::metrics::record_filter_counts`]). [`FilterService::run`] returns a
//! [`FilterSummary`]: alerts consumed, per filter matched / passed / dropped, and per
//! (visit, filter) counts of every visit closed during the run or open at its end.

use std::collections::HashMap;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use apflow_core::bus::{Bus, BusError, EventPublisher, Record, Subscription, TopicSpec};
use apflow_core::events::{DeadLetter, ErrorClass};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::file::{FilterSet, FilterSetError};
use super::quota::{QuotaDecision, QuotaEngine, VisitCounts};
use super::view::{AlertView, Val, field_table};
use crate::metrics;

/// Default consumer group of the filtering service.
pub const DEFAULT_GROUP: &str = "apflow-filter";
/// Stage name of the service's dead letters.
pub const DEAD_LETTER_STAGE: &str = "filter";

/// `[filters]`: the filtering service inside `apflow run` and the defaults of
/// `apflow distribute` (serde only).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilterServiceConfig {
    /// Directory of filter files (`*.toml`); empty: no filtering service in `apflow
    /// run` (`deploy/filters` holds the shipped filters).
    pub dir: PathBuf,
    /// Consumer group on the alert topic.
    pub group: String,
    /// Partitions of a filter topic the service creates.
    pub partitions: i32,
    /// How often the filter directory is checked for changes; 0 disables hot reload.
    #[serde(with = "humantime_serde")]
    pub reload_interval: Duration,
    /// Most alerts per batch.
    pub batch_max: usize,
    /// How long to wait to fill a batch.
    #[serde(with = "humantime_serde")]
    pub batch_wait: Duration,
}

impl Default for FilterServiceConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::new(),
            group: DEFAULT_GROUP.to_owned(),
            partitions: 1,
            reload_interval: Duration::from_secs(5),
            batch_max: 500,
            batch_wait: Duration::from_millis(100),
        }
    }
}

/// What to consume, how to batch, what to watch (built from [`FilterServiceConfig`]
/// and the command line).
#[derive(Clone, Debug)]
pub struct FilterServiceOptions {
    /// The full alert topic.
    pub topic: String,
    /// Consumer group.
    pub group: String,
    /// Most alerts per batch (at least 1).
    pub batch_max: usize,
    /// How long to wait to fill a batch.
    pub batch_wait: Duration,
    /// Stop after this long without a message (batch mode); `None`: until shutdown.
    pub idle_exit: Option<Duration>,
    /// The filter directory, watched for changes when `reload_interval` is set.
    pub dir: Option<PathBuf>,
    /// How often to check `dir`; `None`: no hot reload. Zero checks before every batch.
    pub reload_interval: Option<Duration>,
    /// Partitions of the filter topics the service creates.
    pub partitions: i32,
    /// Append one JSON line per forwarded alert ([`FilterMatch`]) to this file.
    pub matches_log: Option<PathBuf>,
    /// Publish a dead letter for each bad message.
    pub dead_letters: Option<EventPublisher>,
}

impl FilterServiceOptions {
    /// Options for `topic` from `config` (no idle exit, no matches log, no dead
    /// letters; `dir` from `config.dir` when set). The directory — `config.dir` or one
    /// set afterwards — is watched every `config.reload_interval` unless that is zero.
    pub fn new(topic: &str, config: &FilterServiceConfig) -> Self {
        let dir = (!config.dir.as_os_str().is_empty()).then(|| config.dir.clone());
        Self {
            topic: topic.to_owned(),
            group: config.group.clone(),
            batch_max: config.batch_max.max(1),
            batch_wait: config.batch_wait,
            idle_exit: None,
            reload_interval: (!config.reload_interval.is_zero()).then_some(config.reload_interval),
            dir,
            partitions: config.partitions.max(1),
            matches_log: None,
            dead_letters: None,
        }
    }
}

/// Why the service stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FilterServiceError {
    /// Subscribing, consuming or committing failed (retryable: restart the service;
    /// it resumes at the last commit).
    #[error("consuming the alert topic failed: {0}")]
    Consume(#[source] BusError),
    /// Creating a filter topic or forwarding failed; the batch was not committed
    /// (retryable).
    #[error("forwarding to a filter topic failed: {0}")]
    Forward(#[source] BusError),
    /// Publishing a dead letter failed; the bad message was not acknowledged.
    #[error("publishing a dead letter failed: {0}")]
    DeadLetter(#[source] BusError),
    /// The filter set could not be loaded at start.
    #[error("{0}")]
    Filters(#[from] FilterSetError),
    /// The matches log could not be written.
    #[error("writing the matches log {path}: {source}")]
    MatchesLog {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The evaluation task panicked or was cancelled (a bug).
    #[error("filter evaluation task failed: {0}")]
    Task(String),
}

impl FilterServiceError {
    /// What to do with it.
    pub fn class(&self) -> ErrorClass {
        match self {
            Self::Consume(_) | Self::Forward(_) | Self::DeadLetter(_) | Self::MatchesLog { .. } => {
                ErrorClass::Retryable
            }
            Self::Filters(_) => ErrorClass::BadInput,
            Self::Task(_) => ErrorClass::Internal,
        }
    }
}

/// One forwarded alert, a line of the matches log (JSON Lines).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FilterMatch {
    /// Filter name.
    pub filter: String,
    /// The topic it was forwarded to.
    pub topic: String,
    /// `diaSource.visit`.
    pub visit: u64,
    /// `diaSource.detector` (`None` if the alert has none).
    pub detector: Option<i64>,
    /// `diaSourceId`.
    #[serde(rename = "diaSourceId")]
    pub dia_source_id: i64,
}

/// One filter's lines of a matches log ([`read_matches_log`]): what the night report
/// shows under "filter matches".
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MatchLogTotals {
    /// Filter name.
    pub filter: String,
    /// Its topic (the last one logged).
    pub topic: String,
    /// Alerts forwarded.
    pub forwarded: u64,
    /// Visits with at least one forwarded alert.
    pub visits: u64,
    /// The most alerts forwarded in one visit (at most the quota, unless a restart
    /// forwarded some again).
    pub max_per_visit: u64,
}

/// Per-filter totals of a matches log (JSON Lines of [`FilterMatch`], as written with
/// [`FilterServiceOptions::matches_log`]), sorted by filter name.
///
/// # Errors
/// The file cannot be read, or a line is not a [`FilterMatch`] (the message names the
/// line).
pub fn read_matches_log(path: &Path) -> Result<Vec<MatchLogTotals>, std::io::Error> {
    use std::collections::BTreeMap;
    let text = std::fs::read_to_string(path)?;
    let mut per: BTreeMap<String, (String, BTreeMap<u64, u64>)> = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let m: FilterMatch = serde_json::from_str(line).map_err(|e| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{}:{}: {e}", path.display(), i + 1),
            )
        })?;
        let e = per.entry(m.filter).or_default();
        e.0 = m.topic;
        *e.1.entry(m.visit).or_default() += 1;
    }
    Ok(per
        .into_iter()
        .map(|(filter, (topic, visits))| MatchLogTotals {
            filter,
            topic,
            forwarded: visits.values().sum(),
            visits: visits.len() as u64,
            max_per_visit: visits.values().copied().max().unwrap_or(0),
        })
        .collect())
}

/// Totals of one filter over a run (a filter that was reloaded keeps its totals by
/// name; one removed by a reload is still listed).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct FilterTotals {
    /// Filter name.
    pub name: String,
    /// Its topic (the latest, if a reload changed it).
    pub topic: String,
    /// Its quota (the latest).
    pub quota: u32,
    /// Matches before the quota.
    pub matched: u64,
    /// Matches forwarded.
    pub passed: u64,
}

impl FilterTotals {
    /// Matches dropped (over quota, or of a closed visit).
    pub fn dropped(&self) -> u64 {
        self.matched - self.passed
    }
}

/// Counts of one (visit, filter).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VisitFilterCounts {
    /// The visit id.
    pub visit: u64,
    /// Filter name.
    pub filter: String,
    /// Matches in the visit (before the quota; late matches after the visit closed are
    /// not included).
    pub matched: u64,
    /// Matches forwarded (at most the quota).
    pub passed: u64,
}

/// What a run of the service did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FilterSummary {
    /// Messages consumed (alerts and bad messages).
    pub consumed: u64,
    /// Messages that were not alerts (skipped).
    pub bad: u64,
    /// Records forwarded to filter topics.
    pub forwarded: u64,
    /// Per filter, in the order of the final set, then removed filters.
    pub filters: Vec<FilterTotals>,
    /// Per (visit, filter) with at least one match, by visit then filter name.
    pub visits: Vec<VisitFilterCounts>,
    /// Reloads applied.
    pub reloads: u64,
    /// Reloads refused (a set that did not load).
    pub reloads_refused: u64,
}

impl FilterSummary {
    /// Sums over filters: (matched, passed, dropped).
    pub fn totals(&self) -> (u64, u64, u64) {
        self.filters.iter().fold((0, 0, 0), |(m, p, d), f| {
            (m + f.matched, p + f.passed, d + f.dropped())
        })
    }
}

/// The state of the filter directory's `*.toml` files.
type DirState = Vec<(PathBuf, Option<SystemTime>, u64)>;

fn dir_state(dir: &Path) -> DirState {
    // The same files the set is loaded from; metadata follows the links.
    super::file::filter_files(dir)
        .unwrap_or_default()
        .into_iter()
        .map(|p| {
            let m = std::fs::metadata(&p).ok();
            let mtime = m.as_ref().and_then(|m| m.modified().ok());
            let len = m.map_or(0, |m| m.len());
            (p, mtime, len)
        })
        .collect()
}

/// Watches a directory by polling.
#[derive(Debug)]
struct Watch {
    dir: PathBuf,
    interval: Duration,
    state: DirState,
    last: Instant,
}

impl Watch {
    /// Whether the directory changed since the last check (checked at most once per
    /// interval).
    fn changed(&mut self) -> bool {
        if self.last.elapsed() < self.interval {
            return false;
        }
        self.last = Instant::now();
        let s = dir_state(&self.dir);
        if s == self.state {
            return false;
        }
        self.state = s;
        true
    }
}

/// One consumed message, moved into the evaluation task.
struct Item {
    key: Option<Vec<u8>>,
    payload: Vec<u8>,
    headers: Vec<(String, Vec<u8>)>,
}

/// What the evaluation of one item came to.
enum Outcome {
    Alert {
        visit: u64,
        detector: Option<i64>,
        id: i64,
        /// Filters whose quota let it through.
        passed: Vec<usize>,
    },
    Bad(String),
}

/// Decodes and evaluates a batch (blocking; runs off the async workers).
fn evaluate(set: &FilterSet, quota: &mut QuotaEngine, items: &[Item]) -> Vec<Outcome> {
    let t = field_table();
    let (visit_slot, detector_slot) = (
        t.slot("diaSource.visit")
            .expect("the schema has diaSource.visit"),
        t.slot("diaSource.detector")
            .expect("the schema has diaSource.detector"),
    );
    let mut matching = Vec::new();
    items
        .iter()
        .map(|it| {
            let view = match AlertView::decode_framed(&it.payload) {
                Ok(v) => v,
                Err(e) => return Outcome::Bad(e.to_string()),
            };
            let visit = match view.get(visit_slot) {
                Val::Int(v) if *v >= 0 => *v as u64,
                _ => return Outcome::Bad("the alert has no diaSource.visit".into()),
            };
            let detector = match view.get(detector_slot) {
                Val::Int(d) => Some(*d),
                _ => None,
            };
            let id = match view.get(0) {
                Val::Int(i) => *i,
                _ => return Outcome::Bad("the alert has no diaSourceId".into()),
            };
            matching.clear();
            set.matching(&view, &mut matching);
            let passed = matching
                .iter()
                .copied()
                .filter(|&f| quota.offer(visit, f) == QuotaDecision::Pass)
                .collect();
            Outcome::Alert {
                visit,
                detector,
                id,
                passed,
            }
        })
        .collect()
}

/// Running totals, by filter name.
#[derive(Debug, Default)]
struct Tally {
    consumed: u64,
    bad: u64,
    forwarded: u64,
    /// Per filter ever active, in first-seen order; `index` finds one by name.
    filters: Vec<FilterTotals>,
    index: HashMap<String, usize>,
    visits: Vec<VisitFilterCounts>,
    reloads: u64,
    reloads_refused: u64,
}

impl Tally {
    fn add_counts(&mut self, set: &FilterSet, c: &VisitCounts) {
        for (i, f) in set.filters().iter().enumerate() {
            // Looked up without allocating: a name is only copied the first time.
            let k = match self.index.get(&f.name) {
                Some(&k) => k,
                None => {
                    self.index.insert(f.name.clone(), self.filters.len());
                    self.filters.push(FilterTotals {
                        name: f.name.clone(),
                        topic: f.topic.clone(),
                        quota: f.quota,
                        matched: 0,
                        passed: 0,
                    });
                    self.filters.len() - 1
                }
            };
            let t = &mut self.filters[k];
            if t.topic != f.topic {
                t.topic.clone_from(&f.topic);
            }
            t.quota = f.quota;
            t.matched += c.matched.get(i).copied().unwrap_or(0);
            t.passed += c.passed.get(i).copied().unwrap_or(0);
        }
    }

    fn add_visits(&mut self, set: &FilterSet, closed: Vec<(u64, VisitCounts)>) {
        for (visit, c) in closed {
            for (i, f) in set.filters().iter().enumerate() {
                let (m, p) = (c.matched[i], c.passed[i]);
                if m > 0 {
                    self.visits.push(VisitFilterCounts {
                        visit,
                        filter: f.name.clone(),
                        matched: m,
                        passed: p,
                    });
                }
            }
        }
    }

    fn summary(mut self, set: &FilterSet) -> FilterSummary {
        // The active set's filters in its order, then those a reload removed, in the
        // order first seen.
        let rank = |t: &FilterTotals| {
            set.filters()
                .iter()
                .position(|f| f.name == t.name)
                .unwrap_or(usize::MAX)
        };
        let mut filters = self.filters;
        filters.sort_by_key(|t| rank(t));
        self.visits
            .sort_by(|a, b| (a.visit, &a.filter).cmp(&(b.visit, &b.filter)));
        FilterSummary {
            consumed: self.consumed,
            bad: self.bad,
            forwarded: self.forwarded,
            filters,
            visits: self.visits,
            reloads: self.reloads,
            reloads_refused: self.reloads_refused,
        }
    }
}

/// The filtering service, subscribed and ready to run.
#[derive(Debug)]
pub struct FilterService {
    sub: Subscription,
    set: Arc<FilterSet>,
    quota: QuotaEngine,
    sink: Bus,
    options: FilterServiceOptions,
    watch: Option<Watch>,
    log: Option<std::io::BufWriter<std::fs::File>>,
}

/// The filter topics of `set`, to be created with `partitions` partitions.
fn topic_specs(set: &FilterSet, partitions: i32) -> Vec<TopicSpec> {
    set.filters()
        .iter()
        .map(|f| TopicSpec {
            name: f.topic.clone(),
            partitions,
        })
        .collect()
}

impl FilterService {
    /// Joins the consumer group on the alert topic of `bus` and creates the filter
    /// topics of `set` on the sink. Messages published after this returns are
    /// consumed by the service (on the in-process bus, a topic with a group is not
    /// trimmed before the group committed).
    ///
    /// # Errors
    /// [`FilterServiceError::Consume`] (subscription), [`FilterServiceError::Forward`]
    /// (topic creation), [`FilterServiceError::MatchesLog`] (the log cannot be opened).
    pub async fn start(
        bus: &Bus,
        set: FilterSet,
        sink: Bus,
        options: FilterServiceOptions,
    ) -> Result<Self, FilterServiceError> {
        sink.ensure_topics(&topic_specs(&set, options.partitions))
            .await
            .map_err(FilterServiceError::Forward)?;
        let log = match &options.matches_log {
            Some(p) => Some(std::io::BufWriter::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|source| FilterServiceError::MatchesLog {
                        path: p.clone(),
                        source,
                    })?,
            )),
            None => None,
        };
        let sub = bus
            .subscribe(std::slice::from_ref(&options.topic), &options.group)
            .await
            .map_err(FilterServiceError::Consume)?;
        let watch = match (&options.dir, options.reload_interval) {
            (Some(dir), Some(interval)) => Some(Watch {
                state: dir_state(dir),
                dir: dir.clone(),
                interval,
                last: Instant::now(),
            }),
            _ => None,
        };
        // Every filter's series exist from the start, at zero (not only once it matched).
        metrics::record_filter_counts(&set, &VisitCounts::new(set.len()));
        Ok(Self {
            quota: set.quota_engine(),
            set: Arc::new(set),
            sub,
            sink,
            options,
            watch,
            log,
        })
    }

    /// Reloads the filter directory if it changed; keeps the old set if the new one
    /// does not load.
    async fn maybe_reload(&mut self, tally: &mut Tally) -> Result<(), FilterServiceError> {
        let Some(w) = &mut self.watch else {
            return Ok(());
        };
        if !w.changed() {
            return Ok(());
        }
        let dir = w.dir.clone();
        // Reading and compiling up to a hundred files: off the async workers.
        let d = dir.clone();
        let loaded = tokio::task::spawn_blocking(move || FilterSet::load_dir(&d))
            .await
            .map_err(|e| FilterServiceError::Task(e.to_string()))?;
        let new = match loaded {
            Ok(s) => s,
            Err(e) => {
                tally.reloads_refused += 1;
                metrics::FILTER_RELOADS_TOTAL
                    .with_label_values(&["refused"])
                    .inc();
                tracing::error!(
                    dir = %dir.display(),
                    errors = e.errors.len(),
                    "The changed filter set does not load; the previous set keeps running.\n{e}"
                );
                return Ok(());
            }
        };
        self.sink
            .ensure_topics(&topic_specs(&new, self.options.partitions))
            .await
            .map_err(FilterServiceError::Forward)?;
        // Counts so far belong to the old set's names.
        let counts = self.quota.take_counts();
        metrics::record_filter_counts(&self.set, &counts);
        tally.add_counts(&self.set, &counts);
        tally.add_visits(&self.set, self.quota.take_closed());
        let old: HashMap<&str, usize> = self
            .set
            .filters()
            .iter()
            .enumerate()
            .map(|(i, f)| (f.name.as_str(), i))
            .collect();
        let from: Vec<Option<usize>> = new
            .filters()
            .iter()
            .map(|f| old.get(f.name.as_str()).copied())
            .collect();
        self.quota = self
            .quota
            .remap(new.filters().iter().map(|f| f.quota).collect(), &from);
        tally.reloads += 1;
        metrics::FILTER_RELOADS_TOTAL
            .with_label_values(&["ok"])
            .inc();
        tracing::info!(
            dir = %dir.display(),
            filters = new.len(),
            kept = from.iter().flatten().count(),
            "Filter set reloaded."
        );
        metrics::record_filter_counts(&new, &VisitCounts::new(new.len()));
        self.set = Arc::new(new);
        Ok(())
    }

    /// Consumes, filters and forwards until `shutdown` completes (or the topic has
    /// been idle for [`FilterServiceOptions::idle_exit`]); then commits, leaves the
    /// group (waiting at most 10 s) and returns the summary. On `shutdown` the batch
    /// collected so far is still forwarded and committed; nothing more is taken.
    ///
    /// # Errors
    /// See [`FilterServiceError`]; on an error nothing of the current batch is
    /// committed.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()>,
    ) -> Result<FilterSummary, FilterServiceError> {
        self.run_with(shutdown, std::future::pending(), Duration::ZERO)
            .await
    }

    /// Like [`Self::run`], but ends by draining: once `finished` completes (every alert
    /// was published upstream), the service goes on until no message arrived for
    /// `quiet`, then stops. On the in-process bus everything published is available
    /// at once, so a short `quiet` drains the topic exactly; on Kafka `quiet` must
    /// cover the fetch latency (seconds).
    ///
    /// # Errors
    /// As [`Self::run`].
    pub async fn drain(
        self,
        finished: impl Future<Output = ()>,
        quiet: Duration,
    ) -> Result<FilterSummary, FilterServiceError> {
        self.run_with(std::future::pending(), finished, quiet).await
    }

    async fn run_with(
        mut self,
        shutdown: impl Future<Output = ()>,
        finished: impl Future<Output = ()>,
        quiet: Duration,
    ) -> Result<FilterSummary, FilterServiceError> {
        let mut tally = Tally::default();
        let r = self.run_loop(shutdown, finished, quiet, &mut tally).await;
        // Counts of the last batch, and every visit still open.
        let counts = self.quota.take_counts();
        metrics::record_filter_counts(&self.set, &counts);
        tally.add_counts(&self.set, &counts);
        tally.add_visits(&self.set, self.quota.take_closed());
        tally.add_visits(&self.set, self.quota.close_through(u64::MAX));
        self.sub.close(Duration::from_secs(10)).await;
        r?;
        Ok(tally.summary(&self.set))
    }

    async fn run_loop(
        &mut self,
        shutdown: impl Future<Output = ()>,
        finished: impl Future<Output = ()>,
        quiet: Duration,
        tally: &mut Tally,
    ) -> Result<(), FilterServiceError> {
        tokio::pin!(finished);
        let mut draining = false;
        tokio::pin!(shutdown);
        let mut last_message = Instant::now();
        let mut stop = false;
        let topic = self.options.topic.clone();
        while !stop {
            let mut items = Vec::new();
            let mut deliveries = Vec::new();
            let deadline = Instant::now() + self.options.batch_wait;
            while items.len() < self.options.batch_max.max(1) {
                let wait = deadline.saturating_duration_since(Instant::now());
                tokio::select! {
                    () = &mut shutdown => { stop = true; break; }
                    () = &mut finished, if !draining => {
                        draining = true;
                        last_message = Instant::now();
                    }
                    r = self.sub.next_timeout(wait) => match r.map_err(FilterServiceError::Consume)? {
                        None => break,
                        Some(mut d) => {
                            let m = &mut d.message;
                            items.push(Item {
                                key: m.key.take(),
                                payload: std::mem::take(&mut m.payload),
                                headers: std::mem::take(&mut m.headers),
                            });
                            deliveries.push(d);
                        }
                    }
                }
            }
            // A filter file written before an alert was published applies to it.
            self.maybe_reload(tally).await?;
            if deliveries.is_empty() {
                let idle = last_message.elapsed();
                if self.options.idle_exit.is_some_and(|d| idle >= d) || (draining && idle >= quiet)
                {
                    break;
                }
                continue;
            }
            last_message = Instant::now();
            let set = self.set.clone();
            let mut quota = std::mem::replace(&mut self.quota, QuotaEngine::new(Vec::new()));
            let (quota, items, outcomes) = tokio::task::spawn_blocking(move || {
                let outcomes = evaluate(&set, &mut quota, &items);
                (quota, items, outcomes)
            })
            .await
            .map_err(|e| FilterServiceError::Task(e.to_string()))?;
            self.quota = quota;

            let mut records = Vec::new();
            let mut matches = Vec::new();
            let mut bad = 0u64;
            for (k, (item, outcome)) in items.iter().zip(&outcomes).enumerate() {
                match outcome {
                    Outcome::Alert {
                        visit,
                        detector,
                        id,
                        passed,
                    } => {
                        if passed.is_empty() {
                            continue;
                        }
                        let key = item
                            .key
                            .as_deref()
                            .and_then(|k| std::str::from_utf8(k).ok())
                            .map_or_else(|| id.to_string(), str::to_owned);
                        for &f in passed {
                            let filter = &self.set.filters()[f];
                            records.push(Record {
                                topic: filter.topic.clone(),
                                key: Some(key.clone()),
                                payload: item.payload.clone(),
                                headers: item.headers.clone(),
                            });
                            matches.push(FilterMatch {
                                filter: filter.name.clone(),
                                topic: filter.topic.clone(),
                                visit: *visit,
                                detector: *detector,
                                dia_source_id: *id,
                            });
                        }
                    }
                    Outcome::Bad(reason) => {
                        bad += 1;
                        let m = &deliveries[k].message;
                        tracing::warn!(
                            topic = %topic, partition = m.partition, offset = m.offset,
                            error = %reason, "Not an alert; skipped.");
                        if let Some(p) = &self.options.dead_letters {
                            let letter = DeadLetter::not_an_alert(
                                &item.payload,
                                &topic,
                                m.partition,
                                m.offset,
                                DEAD_LETTER_STAGE,
                                &reason,
                            );
                            p.dead_letter(&letter)
                                .await
                                .map_err(FilterServiceError::DeadLetter)?;
                        }
                    }
                }
            }
            let n = records.len() as u64;
            self.sink
                .publish_all(records)
                .await
                .map_err(FilterServiceError::Forward)?;
            if let Some(w) = &mut self.log {
                let path = self.options.matches_log.clone().unwrap_or_default();
                let io = |source| FilterServiceError::MatchesLog {
                    path: path.clone(),
                    source,
                };
                for m in &matches {
                    serde_json::to_writer(&mut *w, m).map_err(|e| io(e.into()))?;
                    w.write_all(b"\n").map_err(io)?;
                }
                w.flush().map_err(io)?;
            }
            // Forwarded (and logged): the input may be forgotten.
            for d in deliveries {
                d.ack();
            }
            self.sub
                .commit()
                .await
                .map_err(FilterServiceError::Consume)?;
            let counts = self.quota.take_counts();
            metrics::record_filter_counts(&self.set, &counts);
            metrics::FILTER_CONSUMED_TOTAL.inc_by(items.len() as u64);
            metrics::FILTER_BAD_MESSAGES_TOTAL.inc_by(bad);
            tally.add_counts(&self.set, &counts);
            tally.add_visits(&self.set, self.quota.take_closed());
            tally.consumed += items.len() as u64;
            tally.bad += bad;
            tally.forwarded += n;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
