//! The filtering service against a real Kafka-protocol broker (feature `kafka`,
//! `APFLOW_TEST_KAFKA_BROKERS=host:port`; `source scripts/broker.sh; start_broker`
//! starts one). Without the variable the test says so and passes.
#![cfg(feature = "kafka")]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use apflow_alert_dist::filter::bench::realistic_visit;
use apflow_alert_dist::filter::service::{
    FilterService, FilterServiceConfig, FilterServiceOptions,
};
use apflow_alert_dist::filter::{AlertView, CostModel, Filter, FilterSet};
use apflow_alert_dist::packet::{AlertEncoder, AssembleConfig, decode_framed, inputs};
use apflow_core::bus::{Bus, BusConfig, KafkaConfig, Record, TopicSpec};
use apflow_core::ids::VisitId;

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t{}-{name}-{}", std::process::id(), nanos % 1_000_000_000)
}

fn filters(prefix: &str) -> FilterSet {
    let m = CostModel::default();
    let f = |name: &str, expr: &str, quota: u32| {
        Filter::new("t", name, expr, quota, Some(format!("{prefix}.{name}")), &m).unwrap()
    };
    FilterSet::new(vec![
        f("reliable", "diaSource.reliability >= 0.9", 4),
        f("bright", "diaSource.snr >= 20 AND diaSource.psfFlux > 0", 2),
        f("solar", "ssSource.ssObjectId IS NOT NULL", 50),
    ])
    .unwrap()
}

/// The reference verdict: apache-avro's decoder and the tree-walking interpreter.
fn reference(f: &Filter, framed: &[u8]) -> bool {
    let d = decode_framed(framed).unwrap();
    let view = AlertView::from_avro(&d.value).unwrap();
    f.condition.interpret(&view, &mut 0) == Some(true)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filtered_topics_on_kafka_hold_quotas_and_only_matching_alerts() {
    let Ok(brokers) = std::env::var("APFLOW_TEST_KAFKA_BROKERS") else {
        eprintln!("APFLOW_TEST_KAFKA_BROKERS not set: Kafka scenario skipped");
        return;
    };
    let config = BusConfig {
        url: format!("kafka://{brokers}"),
        kafka: KafkaConfig {
            fetch_wait_max: Duration::from_millis(10),
            ..KafkaConfig::default()
        },
        ..BusConfig::default()
    };
    let bus = Bus::from_config(&config).unwrap();
    let input = unique("alerts");
    let prefix = unique("filter");
    bus.ensure_topics(&[TopicSpec {
        name: input.clone(),
        partitions: 2,
    }])
    .await
    .unwrap();

    // 120 alerts over 3 visits, plus one message that is not an alert.
    let v = realistic_visit(31, 120, 8);
    let (mut ins, _) = inputs(&v.sources(), &v.context, &AssembleConfig::default());
    let mut enc = AlertEncoder::new();
    let visit0 = 2_026_112_200_100u64;
    let xs: Vec<(i64, u64, Vec<u8>)> = ins
        .iter_mut()
        .enumerate()
        .map(|(k, a)| {
            let visit = visit0 + k as u64 % 3;
            a.dia_source.visit = VisitId(visit);
            (
                a.dia_source.dia_source_id.0,
                visit,
                enc.to_framed(a).unwrap(),
            )
        })
        .collect();
    let mut records: Vec<Record> = xs
        .iter()
        .map(|(id, _, framed)| Record {
            topic: input.clone(),
            key: Some(id.to_string()),
            payload: framed.clone(),
            headers: Vec::new(),
        })
        .collect();
    records.insert(
        60,
        Record {
            topic: input.clone(),
            key: Some("junk".into()),
            payload: b"junk".to_vec(),
            headers: Vec::new(),
        },
    );
    bus.publish_all(records).await.unwrap();

    let group = unique("group");
    let mut opts = FilterServiceOptions::new(&input, &FilterServiceConfig::default());
    opts.group.clone_from(&group);
    opts.idle_exit = Some(Duration::from_secs(10));
    let service = FilterService::start(&bus, filters(&prefix), bus.clone(), opts.clone())
        .await
        .unwrap();
    let summary = service.run(std::future::pending()).await.unwrap();
    assert_eq!(summary.consumed, xs.len() as u64 + 1);
    assert_eq!(summary.bad, 1);

    let set = filters(&prefix);
    let by_id: HashMap<i64, &(i64, u64, Vec<u8>)> = xs.iter().map(|x| (x.0, x)).collect();
    for f in set.filters() {
        let mut matches: BTreeMap<u64, u64> = BTreeMap::new();
        for (_, visit, framed) in &xs {
            if reference(f, framed) {
                *matches.entry(*visit).or_default() += 1;
            }
        }
        let expected: BTreeMap<u64, u64> = matches
            .iter()
            .map(|(v, m)| (*v, (*m).min(u64::from(f.quota))))
            .collect();
        let n: u64 = expected.values().sum();
        assert!(n > 0, "{} forwards something", f.name);
        // Read the filter topic from the start until n arrived, then 3 s more.
        let mut sub = bus
            .subscribe(std::slice::from_ref(&f.topic), &unique("check"))
            .await
            .unwrap();
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while tokio::time::Instant::now() < deadline {
            let wait = if got.len() as u64 >= n { 3 } else { 10 };
            match sub.next_timeout(Duration::from_secs(wait)).await.unwrap() {
                Some(d) => {
                    got.push(d.message.clone());
                    d.ack();
                }
                None if got.len() as u64 >= n => break,
                None => {}
            }
        }
        sub.close(Duration::from_secs(5)).await;
        let mut seen = BTreeSet::new();
        let mut per_visit: BTreeMap<u64, u64> = BTreeMap::new();
        for m in &got {
            let id: i64 = std::str::from_utf8(m.key.as_deref().unwrap())
                .unwrap()
                .parse()
                .unwrap();
            assert!(seen.insert(id), "{}: {id} forwarded twice", f.name);
            let x = by_id[&id];
            assert_eq!(m.payload, x.2, "exact bytes");
            assert!(reference(f, &m.payload), "{}: {id} does not match", f.name);
            *per_visit.entry(x.1).or_default() += 1;
        }
        assert_eq!(per_visit, expected, "{}: forwarded per visit", f.name);
        let t = summary.filters.iter().find(|t| t.name == f.name).unwrap();
        assert_eq!((t.matched, t.passed), (matches.values().sum(), n));
    }
    assert!(summary.filters.iter().any(|t| t.dropped() > 0));

    // Offsets were committed: the group resumes after the last alert.
    let again = FilterService::start(&bus, filters(&prefix), bus.clone(), opts)
        .await
        .unwrap();
    let s = again.run(std::future::pending()).await.unwrap();
    assert_eq!(s.consumed, 0);
}
