//! The filtering service on the in-process bus: quotas per (visit, filter), every
//! forwarded alert checked independently, nothing forwarded twice, offsets committed,
//! a bad message skipped and dead-lettered, hot reload mid-stream.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::time::Duration;

use apflow_core::bus::{Bus, Record, TopicSpec, Topics};
use apflow_core::events::{DeadLetter, Event};
use apflow_core::ids::VisitId;

use super::*;
use crate::filter::bench::realistic_visit;
use crate::filter::check::CostModel;
use crate::filter::file::Filter;
use crate::packet::{AlertEncoder, AssembleConfig, inputs};

const TOPIC: &str = "alerts-v11";
const VISIT0: u64 = 2_026_112_200_010;

/// One framed alert with what the test knows about it.
struct Synth {
    id: i64,
    visit: u64,
    framed: Vec<u8>,
}

/// `n` realistic alerts (small cutouts); alert `k` is of visit `VISIT0 + visit_of(k)`.
fn alerts(seed: u64, n: usize, visit_of: impl Fn(usize) -> u64) -> Vec<Synth> {
    let v = realistic_visit(seed, n, 8);
    let (mut ins, dead) = inputs(&v.sources(), &v.context, &AssembleConfig::default());
    assert!(dead.is_empty());
    let mut enc = AlertEncoder::new();
    ins.iter_mut()
        .enumerate()
        .map(|(k, a)| {
            let visit = VISIT0 + visit_of(k);
            a.dia_source.visit = VisitId(visit);
            Synth {
                id: a.dia_source.dia_source_id.0,
                visit,
                framed: enc.to_framed(a).expect("encodes"),
            }
        })
        .collect()
}

async fn input_topic(bus: &Bus) {
    bus.ensure_topics(&[TopicSpec {
        name: TOPIC.into(),
        partitions: 2,
    }])
    .await
    .unwrap();
}

async fn publish(bus: &Bus, xs: &[Synth]) {
    for x in xs {
        bus.publish(Record {
            topic: TOPIC.into(),
            key: Some(x.id.to_string()),
            payload: x.framed.clone(),
            headers: vec![("producer_timestamp".into(), b"1".to_vec())],
        })
        .await
        .unwrap();
    }
}

/// Everything on `topic` (a fresh group), as (key, payload, headers).
async fn drain(bus: &Bus, topic: &str) -> Vec<(String, Vec<u8>, Vec<(String, Vec<u8>)>)> {
    let mut sub = bus.subscribe(&[topic.to_owned()], "check").await.unwrap();
    let mut out = Vec::new();
    while let Some(d) = sub.next_timeout(Duration::from_millis(100)).await.unwrap() {
        let m = d.message.clone();
        out.push((
            String::from_utf8(m.key.unwrap()).unwrap(),
            m.payload,
            m.headers,
        ));
        d.ack();
    }
    out
}

/// The filter's verdict on an alert by the reference path: apache-avro's decoder and
/// the tree-walking interpreter (not the service's direct decoder and compiled form).
fn reference(f: &Filter, framed: &[u8]) -> bool {
    let d = crate::packet::decode_framed(framed).expect("apache-avro decodes it");
    let view = AlertView::from_avro(&d.value).expect("an alert");
    let mut steps = 0;
    f.condition.interpret(&view, &mut steps) == Some(true)
}

fn filter(name: &str, expr: &str, quota: u32) -> Filter {
    Filter::new(
        "test@apflow",
        name,
        expr,
        quota,
        None,
        &CostModel::default(),
    )
    .unwrap()
}

fn options(idle: Duration) -> FilterServiceOptions {
    let mut o = FilterServiceOptions::new(TOPIC, &FilterServiceConfig::default());
    o.batch_wait = Duration::from_millis(20);
    o.batch_max = 37;
    o.idle_exit = Some(idle);
    o
}

#[test]
fn a_directory_given_after_the_config_is_watched_at_the_configured_interval() {
    // `apflow run --filters DIR` and `apflow distribute` set the directory on options
    // made from a config whose `dir` is empty: the interval must still apply.
    let config = FilterServiceConfig::default();
    assert!(config.dir.as_os_str().is_empty());
    let o = FilterServiceOptions::new(TOPIC, &config);
    assert_eq!(o.reload_interval, Some(config.reload_interval));
    let off = FilterServiceConfig {
        reload_interval: Duration::ZERO,
        ..FilterServiceConfig::default()
    };
    assert_eq!(FilterServiceOptions::new(TOPIC, &off).reload_interval, None);
}

#[tokio::test]
async fn quotas_hold_per_visit_and_every_forward_satisfies_its_filter() {
    let bus = Bus::memory();
    input_topic(&bus).await;
    let topics = Topics::new("apflow.");
    bus.ensure_topics(&topics.stage_topics(1)).await.unwrap();
    let xs = alerts(21, 240, |k| k as u64 % 4);
    // A message that is not an alert, amid the alerts.
    publish(&bus, &xs[..100]).await;
    bus.publish(Record {
        topic: TOPIC.into(),
        key: Some("junk".into()),
        payload: b"not an alert".to_vec(),
        headers: Vec::new(),
    })
    .await
    .unwrap();
    publish(&bus, &xs[100..]).await;

    let set = FilterSet::new(vec![
        filter("reliable", "diaSource.reliability >= 0.9", 3),
        filter("bright", "diaSource.snr >= 20 AND diaSource.psfFlux > 0", 2),
        filter("solar", "ssSource.ssObjectId IS NOT NULL", 4),
        filter(
            "young",
            "n_previous() = 0 OR days_since_first() < 200",
            1000,
        ),
        filter("none", "diaSource.snr < 0 AND diaSource.snr > 0", 5),
    ])
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("filter-matches.jsonl");
    let mut opts = options(Duration::from_millis(300));
    opts.matches_log = Some(log.clone());
    opts.dead_letters = Some(EventPublisher::new(bus.clone(), topics.clone()));
    let service = FilterService::start(&bus, set, bus.clone(), opts)
        .await
        .unwrap();
    let summary = service.run(std::future::pending()).await.unwrap();

    // The reference: which alerts match which filter, per visit.
    let set = FilterSet::new(vec![
        filter("reliable", "diaSource.reliability >= 0.9", 3),
        filter("bright", "diaSource.snr >= 20 AND diaSource.psfFlux > 0", 2),
        filter("solar", "ssSource.ssObjectId IS NOT NULL", 4),
        filter(
            "young",
            "n_previous() = 0 OR days_since_first() < 200",
            1000,
        ),
        filter("none", "diaSource.snr < 0 AND diaSource.snr > 0", 5),
    ])
    .unwrap();
    let by_id: HashMap<i64, &Synth> = xs.iter().map(|x| (x.id, x)).collect();
    let mut forwarded_total = 0;
    let mut log_expected = BTreeSet::new();
    for f in set.filters() {
        let mut matches: BTreeMap<u64, u64> = BTreeMap::new();
        for x in &xs {
            if reference(f, &x.framed) {
                *matches.entry(x.visit).or_default() += 1;
            }
        }
        let got = drain(&bus, &f.topic).await;
        let mut per_visit: BTreeMap<u64, u64> = BTreeMap::new();
        let mut seen = BTreeSet::new();
        for (key, payload, headers) in &got {
            let id: i64 = key.parse().unwrap();
            assert!(seen.insert(id), "{}: {id} forwarded twice", f.name);
            let x = by_id[&id];
            assert_eq!(payload, &x.framed, "exact bytes");
            assert_eq!(headers[0].0, "producer_timestamp");
            assert!(
                reference(f, payload),
                "{}: {id} does not satisfy it",
                f.name
            );
            *per_visit.entry(x.visit).or_default() += 1;
            log_expected.insert((f.name.clone(), x.visit, id));
        }
        let expected: BTreeMap<u64, u64> = matches
            .iter()
            .map(|(v, m)| (*v, (*m).min(u64::from(f.quota))))
            .filter(|(_, n)| *n > 0)
            .collect();
        assert_eq!(per_visit, expected, "{}: forwarded per visit", f.name);
        let t = summary.filters.iter().find(|t| t.name == f.name).unwrap();
        assert_eq!(t.matched, matches.values().sum::<u64>(), "{}", f.name);
        assert_eq!(t.passed, got.len() as u64, "{}", f.name);
        for (v, m) in &matches {
            let c = summary
                .visits
                .iter()
                .find(|c| c.visit == *v && c.filter == f.name)
                .unwrap();
            assert_eq!((c.matched, c.passed), (*m, expected[v]));
        }
        forwarded_total += got.len() as u64;
    }
    // The filters cut: some over quota, one never matches, one never over quota.
    let t = |n: &str| summary.filters.iter().find(|t| t.name == n).unwrap();
    assert!(t("reliable").dropped() > 0 && t("bright").dropped() > 0);
    assert_eq!((t("none").matched, t("young").dropped()), (0, 0));
    assert!(t("young").passed > 20, "{:?}", t("young"));
    assert_eq!(summary.consumed, xs.len() as u64 + 1);
    assert_eq!(summary.bad, 1);
    assert_eq!(summary.forwarded, forwarded_total);

    // The matches log holds exactly the forwards.
    let text = std::fs::read_to_string(&log).unwrap();
    let logged: BTreeSet<(String, u64, i64)> = text
        .lines()
        .map(|l| serde_json::from_str::<FilterMatch>(l).unwrap())
        .map(|m| (m.filter, m.visit, m.dia_source_id))
        .collect();
    assert_eq!(text.lines().count() as u64, forwarded_total);
    assert_eq!(logged, log_expected);
    // Its per-filter totals, as the night report reads them.
    let totals = read_matches_log(&log).unwrap();
    for t in &totals {
        let f = set.filters().iter().find(|f| f.name == t.filter).unwrap();
        let s = summary.filters.iter().find(|s| s.name == t.filter).unwrap();
        assert_eq!(
            (t.forwarded, t.topic.as_str()),
            (s.passed, f.topic.as_str())
        );
        assert!(t.max_per_visit <= u64::from(f.quota) && t.visits <= 4);
    }
    assert_eq!(
        totals
            .iter()
            .find(|t| t.filter == "reliable")
            .unwrap()
            .max_per_visit,
        3
    );
    assert!(!totals.iter().any(|t| t.filter == "none"));

    // Offsets committed: the input is trimmed, and the group resumes past it.
    let Bus::Memory(m) = &bus else { unreachable!() };
    assert_eq!(m.retained(TOPIC), 0);
    let mut again = bus
        .subscribe(&[TOPIC.to_owned()], DEFAULT_GROUP)
        .await
        .unwrap();
    assert!(
        again
            .next_timeout(Duration::from_millis(100))
            .await
            .unwrap()
            .is_none()
    );
    // The bad message is a dead letter with its reason.
    let letters = drain(&bus, &topics.of::<DeadLetter>()).await;
    assert_eq!(letters.len(), 1);
    let letter: DeadLetter = apflow_core::events::decode(&letters[0].1).unwrap();
    assert_eq!(
        (letter.stage.as_str(), letter.reason.as_str()),
        (DEAD_LETTER_STAGE, "not_an_alert")
    );
    assert_eq!(letter.source_topic.as_deref(), Some(TOPIC));
    assert_eq!(DeadLetter::TOPIC, "dead-letter");
}

fn write(dir: &Path, file: &str, name: &str, expr: &str, quota: u32) {
    std::fs::write(
        dir.join(file),
        format!(
            "owner = \"t\"\nname = \"{name}\"\nquota = {quota}\nexpression = '''\n{expr}\n'''\n"
        ),
    )
    .unwrap();
}

/// Waits until the service has committed everything published (the in-process bus
/// trims what every group committed).
async fn consumed(bus: &Bus) {
    let Bus::Memory(m) = bus else { unreachable!() };
    for _ in 0..2000 {
        if m.retained(TOPIC) == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the service did not consume the topic");
}

#[tokio::test]
async fn a_changed_filter_applies_to_the_alerts_after_it_and_a_broken_one_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (
        "diaSource.reliability >= 0.5",
        "diaSource.reliability < 0.5",
    );
    write(dir.path(), "f.toml", "f", a, 1000);
    write(dir.path(), "g.toml", "g", "TRUE", 3);
    let bus = Bus::memory();
    input_topic(&bus).await;
    // Phases: visit 0 | visits 0 and 1 | visit 1 (a visit spans the reload).
    let xs = alerts(22, 180, |k| u64::from(k >= 90));
    let phases = [&xs[..60], &xs[60..120], &xs[120..]];

    let set = FilterSet::load_dir(dir.path()).unwrap();
    let mut opts = options(Duration::from_secs(3600));
    opts.dir = Some(dir.path().to_owned());
    opts.reload_interval = Some(Duration::ZERO);
    let service = FilterService::start(&bus, set, bus.clone(), opts)
        .await
        .unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(service.run(async {
        let _ = stopped.await;
    }));

    publish(&bus, phases[0]).await;
    consumed(&bus).await;
    write(dir.path(), "f.toml", "f", b, 1000);
    publish(&bus, phases[1]).await;
    consumed(&bus).await;
    // A broken file: refused, the set of the second phase keeps running.
    std::fs::write(
        dir.path().join("h.toml"),
        "owner = \"t\"\nname = \"h\"\nexpression = 'diaSource.nope > 1'\n",
    )
    .unwrap();
    publish(&bus, phases[2]).await;
    consumed(&bus).await;
    stop.send(()).unwrap();
    let summary = task.await.unwrap().unwrap();
    assert_eq!((summary.reloads, summary.reloads_refused), (1, 1));
    assert_eq!(summary.consumed, xs.len() as u64);

    let (fa, fb) = (filter("f", a, 1000), filter("f", b, 1000));
    let expected: BTreeSet<i64> = phases[0]
        .iter()
        .filter(|x| reference(&fa, &x.framed))
        .chain(xs[60..].iter().filter(|x| reference(&fb, &x.framed)))
        .map(|x| x.id)
        .collect();
    let got = drain(&bus, "alerts.filter.f").await;
    let ids: Vec<i64> = got.iter().map(|(k, _, _)| k.parse().unwrap()).collect();
    assert_eq!(ids.len(), expected.len(), "nothing lost or repeated");
    assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), expected);
    assert!(
        phases[0].iter().any(|x| reference(&fb, &x.framed))
            && xs[60..].iter().any(|x| reference(&fa, &x.framed)),
        "the two expressions disagree on both sides of the change"
    );
    // g's quota of 3 per visit held across the reload (its counts carried over).
    let g = drain(&bus, "alerts.filter.g").await;
    let mut per_visit: BTreeMap<u64, u64> = BTreeMap::new();
    let by_id: HashMap<i64, u64> = xs.iter().map(|x| (x.id, x.visit)).collect();
    for (k, _, _) in &g {
        *per_visit
            .entry(by_id[&k.parse::<i64>().unwrap()])
            .or_default() += 1;
    }
    assert_eq!(per_visit, BTreeMap::from([(VISIT0, 3), (VISIT0 + 1, 3)]));
    assert!(
        g.iter()
            .all(|(k, _, _)| phases[0].iter().any(|x| x.id.to_string() == *k)
                || by_id[&k.parse::<i64>().unwrap()] == VISIT0 + 1)
    );
}
