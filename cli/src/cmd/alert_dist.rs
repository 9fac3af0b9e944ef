//! `apflow alert-dist`: alert distribution's service in a deployment, beside the
//! workers (`apflow process`), the filtering service (`apflow distribute`) and the
//! archive (`apflow archive run`).
//!
//! * **Visits.** It reads the scheduler's `NextVisit` (how many detectors a visit has)
//!   and the workers' `DetectorProcessed` (each detector's alerts and their latencies
//!   from end of readout), and publishes one `VisitComplete` per visit once every
//!   detector is done or failed — Rubin's "Alert Production Complete" with the number
//!   of alerts and the visit's latency summary against the 60 s budget. A visit still
//!   missing detectors `--visit-timeout` after its announcement (a raw file ingest
//!   refused, a detector never read out) is completed with those detectors failed. Its
//!   input events are acknowledged only once its `VisitComplete` is published, so a
//!   restart recounts an open visit from the start, never twice.
//! * **Schema registry.** The read-only Confluent-compatible API brokers' registry
//!   clients use (`GET /schemas/ids/<id>`, `/subjects`, …), with /metrics; the schemas
//!   are also registered in an external registry when `[producer] registry_url` is set.
//! * **Consumer lag.** Every consumer group's lag on the alert topic and the stage
//!   topics — community brokers' groups included, which apflow never joins — as
//!   `apflow_bus_consumer_lag_messages{topic,group}`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use apflow_alert_dist::producer::VisitTally;
use apflow_alert_dist::registry::SchemaRegistry;
use apflow_alert_dist::schema::SCHEMA_ID;
use apflow_core::bus::{Bus, Delivery, EventConsumer, EventPublisher, Topics};
use apflow_core::events::{
    DetectorProcessed, DetectorStatus, NextVisit, RawImageReady, VisitComplete,
};
use apflow_core::ids::{DetectorId, VisitId};
use apflow_core::telemetry::http;
use chrono::Utc;
use clap::Args;
use tokio::time::Instant;

use crate::config::AppConfig;

/// `apflow alert-dist` options.
#[derive(Debug, Args)]
pub struct AlertDistArgs {
    /// Consumer group (prefixed like topics) on detector-processed; next-visit is read
    /// in `<group>-visits`.
    #[arg(long, default_value = "alert-dist")]
    pub group: String,
    /// Complete a visit this long after its NextVisit even if detectors are missing
    /// (they count as failed).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub visit_timeout: Duration,
    /// How often every group's consumer lag is read.
    #[arg(long, default_value = "15s", value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub lag_interval: Duration,
    /// More topics whose consumer lag to export (e.g. the filters' topics), repeatable.
    #[arg(long = "lag-topic", value_name = "TOPIC")]
    pub lag_topics: Vec<String>,
    /// Exit after this long without a message and no visit open (batch mode), e.g. `30s`.
    #[arg(long, value_parser = humantime::parse_duration, value_name = "DURATION")]
    pub idle_exit: Option<Duration>,
    /// Address for the schema registry API and /metrics (port 0 picks one; empty
    /// disables; default `[telemetry] metrics_listen`).
    #[arg(long)]
    pub listen: Option<String>,
}

/// What feeding an event to [`Visits`] did with it.
#[derive(Debug, PartialEq)]
enum Fed<T> {
    /// Held with its visit, which is still open.
    Held,
    /// Held, and its visit is now complete.
    Complete(VisitId),
    /// Its visit was completed before (a rerun's report): given back to acknowledge.
    Stale(T),
}

/// A visit being accounted for; `T` is what is held per input event until the visit's
/// `VisitComplete` is out (the bus deliveries, in the service).
#[derive(Debug)]
struct OpenVisit<T> {
    tally: VisitTally,
    /// Its announcement (`None`: detectors reported before it arrived).
    announced: Option<Instant>,
    /// Its detectors, from the announcement.
    detectors: Vec<DetectorId>,
    /// First event of the visit seen.
    first_seen: Instant,
    /// Its input events, acknowledged once its `VisitComplete` is published.
    held: Vec<T>,
    /// Detectors reported before the announcement said how many there are.
    early: Vec<DetectorProcessed>,
}

/// Visits open and recently completed.
#[derive(Debug)]
struct Visits<T> {
    open: HashMap<VisitId, OpenVisit<T>>,
    /// Completed visits (most recent last, bounded): later reports of them are reruns.
    done: HashSet<VisitId>,
    done_order: VecDeque<VisitId>,
    timeout: Duration,
}

/// Completed visits remembered, to recognise a rerun's reports.
const REMEMBERED: usize = 100_000;

impl<T> Visits<T> {
    fn new(timeout: Duration) -> Self {
        Self {
            open: HashMap::new(),
            done: HashSet::new(),
            done_order: VecDeque::new(),
            timeout,
        }
    }

    fn entry(&mut self, visit: VisitId) -> &mut OpenVisit<T> {
        self.open.entry(visit).or_insert_with(|| OpenVisit {
            tally: VisitTally::new(visit, u32::MAX),
            announced: None,
            detectors: Vec::new(),
            first_seen: Instant::now(),
            held: Vec::new(),
            early: Vec::new(),
        })
    }

    /// A visit's announcement: its number of detectors.
    fn announce(&mut self, nv: &NextVisit, d: T) -> Fed<T> {
        if self.done.contains(&nv.visit) {
            return Fed::Stale(d);
        }
        let v = self.entry(nv.visit);
        if v.announced.is_none() {
            v.announced = Some(Instant::now());
            v.detectors = nv.footprint.iter().map(|f| f.detector).collect();
            let early = std::mem::take(&mut v.early);
            v.tally = VisitTally::new(nv.visit, nv.footprint.len() as u32);
            for e in &early {
                count(&mut v.tally, e);
            }
        }
        v.held.push(d);
        if v.tally.is_complete() {
            Fed::Complete(nv.visit)
        } else {
            Fed::Held
        }
    }

    /// A detector's outcome.
    fn processed(&mut self, e: DetectorProcessed, d: T) -> Fed<T> {
        if self.done.contains(&e.visit) {
            tracing::info!(
                visit = e.visit.0,
                detector = e.detector.0,
                "A detector of a completed visit reported again (a rerun); not counted."
            );
            return Fed::Stale(d);
        }
        let visit = e.visit;
        let v = self.entry(visit);
        v.held.push(d);
        if v.announced.is_none() {
            v.early.push(e);
            return Fed::Held;
        }
        count(&mut v.tally, &e);
        if v.tally.is_complete() {
            Fed::Complete(visit)
        } else {
            Fed::Held
        }
    }

    /// Visits open longer than the timeout, completed with their missing detectors failed.
    fn expire(&mut self) -> Vec<VisitId> {
        let timeout = self.timeout;
        let mut expired = Vec::new();
        for (visit, v) in &mut self.open {
            let since = v.announced.unwrap_or(v.first_seen);
            if since.elapsed() < timeout {
                continue;
            }
            if v.announced.is_none() {
                // Never announced: the detectors that reported are all it is known to have.
                v.tally = VisitTally::new(*visit, v.early.len() as u32);
                for e in std::mem::take(&mut v.early) {
                    count(&mut v.tally, &e);
                }
            }
            for &d in &v.detectors {
                // A detector already done stays done.
                v.tally.failed(d);
            }
            expired.push(*visit);
        }
        expired
    }

    /// Takes a complete visit out: its event and its held inputs.
    fn complete(&mut self, visit: VisitId) -> Option<(VisitComplete, Vec<T>)> {
        let v = self.open.remove(&visit)?;
        self.done.insert(visit);
        self.done_order.push_back(visit);
        while self.done_order.len() > REMEMBERED {
            if let Some(old) = self.done_order.pop_front() {
                self.done.remove(&old);
            }
        }
        Some((v.tally.event(Utc::now()), v.held))
    }
}

/// Counts one detector's outcome in its visit's tally.
fn count(tally: &mut VisitTally, e: &DetectorProcessed) {
    match &e.status {
        DetectorStatus::Ok => tally.delivered(
            e.detector,
            e.delivered.sent,
            e.delivered.already_sent,
            &e.delivered.latencies_s,
        ),
        DetectorStatus::Failed { .. } => tally.failed(e.detector),
    }
}

/// The visit an event completed, if any; a stale event is acknowledged now.
fn settle(fed: Fed<Delivery>) -> Vec<VisitId> {
    match fed {
        Fed::Held => Vec::new(),
        Fed::Complete(v) => vec![v],
        Fed::Stale(d) => {
            d.ack();
            Vec::new()
        }
    }
}

/// What the service did, for its summary.
#[derive(Debug, Default)]
struct DistTotals {
    visits: usize,
    alerts: u64,
    within_budget: usize,
}

/// Runs alert distribution until SIGINT, SIGTERM or `--idle-exit`.
pub async fn run(args: AlertDistArgs, config: &AppConfig) -> anyhow::Result<()> {
    super::register_visit_metrics();
    let registry = Arc::new(SchemaRegistry::current(&config.producer)?);
    if !config.producer.registry_url.is_empty() {
        apflow_alert_dist::registry::register_all(
            &config.producer.registry_url,
            &registry,
            &config.producer.registry,
        )
        .await?;
        println!(
            "alert-dist: schemas registered in {}",
            config.producer.registry_url
        );
    }
    let router = http::router().merge(registry.clone().router());
    let server = super::serve_http(args.listen.as_deref(), config, router).await?;
    if let Some(s) = &server {
        println!(
            "alert-dist: schema registry http://{}/subjects, metrics http://{}/metrics",
            s.addr, s.addr
        );
    }
    let bus = Bus::from_config(&config.bus)?;
    let topics = Topics::new(config.bus.topic_prefix.clone());
    bus.ensure_topics(&topics.stage_topics(config.bus.partitions))
        .await?;
    let alert_topic = config.producer.topic(SCHEMA_ID / 100);
    let mut lag_topics = vec![
        alert_topic.clone(),
        topics.of::<RawImageReady>(),
        topics.of::<DetectorProcessed>(),
        topics.of::<VisitComplete>(),
    ];
    lag_topics.extend(args.lag_topics.iter().cloned());
    let lag = apflow_core::bus::spawn_lag_monitor(bus.clone(), lag_topics, args.lag_interval);
    let publisher = EventPublisher::new(bus, topics);
    let mut announcements = EventConsumer::<NextVisit>::subscribe(
        &publisher,
        &format!("{}-visits", args.group),
        "alert-dist",
    )
    .await?;
    let mut outcomes =
        EventConsumer::<DetectorProcessed>::subscribe(&publisher, &args.group, "alert-dist")
            .await?;
    println!(
        "alert-dist: VisitComplete from {} and {} on {} (group {}), visit timeout {}; consumer lag every {}",
        publisher.topics().of::<NextVisit>(),
        publisher.topics().of::<DetectorProcessed>(),
        config.bus.url,
        publisher.topics().group(&args.group),
        humantime::format_duration(args.visit_timeout),
        humantime::format_duration(args.lag_interval),
    );

    let mut visits: Visits<Delivery> = Visits::new(args.visit_timeout);
    let mut totals = DistTotals::default();
    let stop = super::stop_signal();
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let idle = args.idle_exit.unwrap_or(Duration::MAX);
    let mut last_activity = Instant::now();
    loop {
        let complete: Vec<VisitId> = tokio::select! {
            _ = &mut stop => break,
            r = announcements.next() => {
                last_activity = Instant::now();
                let (nv, d) = r?;
                settle(visits.announce(&nv, d))
            }
            r = outcomes.next() => {
                last_activity = Instant::now();
                let (e, d) = r?;
                settle(visits.processed(e, d))
            }
            _ = tick.tick() => {
                if visits.open.is_empty() && last_activity.elapsed() >= idle {
                    println!("alert-dist: idle for {}; exiting", humantime::format_duration(idle));
                    break;
                }
                visits.expire()
            }
        };
        for visit in complete {
            let Some((event, held)) = visits.complete(visit) else {
                continue;
            };
            publisher.publish(&event).await?;
            for d in held {
                d.ack();
            }
            super::VISITS_COMPLETE_TOTAL
                .with_label_values(&[super::visit_result(&event)])
                .inc();
            match &event.latency {
                Some(l) if l.meets_budget() => totals.within_budget += 1,
                Some(_) => super::VISITS_OVER_BUDGET_TOTAL.inc(),
                None => {}
            }
            totals.visits += 1;
            totals.alerts += event.n_alerts;
            tracing::info!(
                visit = event.visit.0,
                alerts = event.n_alerts,
                detectors_done = event.detectors_done,
                detectors_failed = event.detectors_failed.len(),
                "Visit complete."
            );
        }
    }
    lag.abort();
    announcements.close(Duration::from_secs(10)).await;
    outcomes.close(Duration::from_secs(10)).await;
    println!(
        "alert-dist: {} visits complete ({} alerts), {} with p98 alert latency within 60 s; {} still open",
        totals.visits,
        totals.alerts,
        totals.within_budget,
        visits.open.len()
    );
    if let Some(s) = server {
        s.task.abort();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use apflow_core::events::{AlertsDelivered, DetectorCounts, DetectorFootprint, ErrorClass};
    use apflow_core::geom::{SkyPolygon, UnitVector};
    use apflow_core::time::MjdTai;

    fn next_visit(visit: u64, detectors: &[u16]) -> NextVisit {
        NextVisit {
            visit: VisitId(visit),
            group: "g".into(),
            pointing: apflow_core::events::Pointing {
                ra_deg: 10.0,
                dec_deg: -5.0,
                rotation_deg: 0.0,
            },
            band: "r".into(),
            exposure_time_s: 30.0,
            n_snaps: 1,
            predicted_start: MjdTai(61000.0),
            footprint: detectors
                .iter()
                .map(|&d| DetectorFootprint {
                    detector: DetectorId(d),
                    polygon: square(),
                })
                .collect(),
            scheduler_reason: None,
            target_name: None,
        }
    }

    fn square() -> SkyPolygon {
        SkyPolygon::new(
            [(10.0, -5.0), (10.1, -5.0), (10.1, -4.9), (10.0, -4.9)]
                .iter()
                .map(|&(ra, dec)| UnitVector::from_radec_deg(ra, dec))
                .collect(),
        )
        .unwrap()
    }

    fn outcome(visit: u64, detector: u16, latencies: &[f64]) -> DetectorProcessed {
        DetectorProcessed {
            visit: VisitId(visit),
            detector: DetectorId(detector),
            status: DetectorStatus::Ok,
            counts: DetectorCounts::default(),
            timings: Vec::new(),
            readout_end: Utc::now(),
            finished_at: Utc::now(),
            delivered: AlertsDelivered {
                sent: latencies.len() as u32,
                already_sent: 1,
                latencies_s: latencies.to_vec(),
            },
        }
    }

    fn failed(visit: u64, detector: u16) -> DetectorProcessed {
        DetectorProcessed {
            status: DetectorStatus::Failed {
                stage: "psf".into(),
                class: ErrorClass::BadInput,
                reason: "too_few_psf_stars".into(),
            },
            ..outcome(visit, detector, &[])
        }
    }

    #[test]
    fn a_visit_completes_once_every_announced_detector_reported_even_before_its_announcement() {
        let mut v: Visits<u32> = Visits::new(Duration::from_secs(600));
        // Detector 1 reports before the announcement arrives (another topic).
        assert_eq!(v.processed(outcome(7, 1, &[5.0, 6.0]), 10), Fed::Held);
        assert_eq!(v.announce(&next_visit(7, &[1, 2, 3]), 11), Fed::Held);
        assert_eq!(v.processed(failed(7, 2), 12), Fed::Held);
        assert_eq!(
            v.processed(outcome(7, 3, &[70.0]), 13),
            Fed::Complete(VisitId(7))
        );
        let (e, held) = v.complete(VisitId(7)).unwrap();
        assert_eq!(held, vec![10, 11, 12, 13]);
        assert_eq!((e.detectors_expected, e.detectors_done), (3, 2));
        assert_eq!(e.detectors_failed, vec![DetectorId(2)]);
        // 3 sent now and 1 already sent per successful detector.
        assert_eq!(e.n_alerts, 5);
        let l = e.latency.unwrap();
        assert_eq!(l.count, 3);
        assert!(!l.meets_budget(), "1 of 3 alerts over 60 s: {l:?}");
        // A rerun's report of the completed visit is given back, not counted.
        assert_eq!(v.processed(outcome(7, 3, &[1.0]), 14), Fed::Stale(14));
        assert!(v.open.is_empty());
    }

    #[test]
    fn a_visit_missing_detectors_is_completed_at_the_timeout_with_them_failed() {
        let mut v: Visits<u32> = Visits::new(Duration::ZERO);
        assert_eq!(v.announce(&next_visit(8, &[1, 2]), 1), Fed::Held);
        assert_eq!(v.processed(outcome(8, 2, &[3.0]), 2), Fed::Held);
        // Reported, never announced: all it is known to have is what reported.
        assert_eq!(v.processed(outcome(9, 4, &[3.0]), 3), Fed::Held);
        let mut expired = v.expire();
        expired.sort();
        assert_eq!(expired, vec![VisitId(8), VisitId(9)]);
        let (e, _) = v.complete(VisitId(8)).unwrap();
        assert_eq!(
            (e.detectors_done, e.detectors_failed.clone()),
            (1, vec![DetectorId(1)])
        );
        let (e, held) = v.complete(VisitId(9)).unwrap();
        assert_eq!(
            (e.detectors_expected, e.detectors_done, held),
            (1, 1, vec![3])
        );
    }
}
