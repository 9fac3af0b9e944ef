//! The Kafka sink against the test broker (`source scripts/broker.sh; start_broker`,
//! which exports `APFLOW_TEST_KAFKA_BROKERS`). Skipped only when that variable is
//! unset.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use apflow_alert_dist::packet::decode_framed;
use apflow_alert_dist::producer::ProducerConfig;
use apflow_core::bus::KafkaConfig;
use apflow_core::ids::DiaSourceId;
use apflow_replay::clock::VirtualClock;
use apflow_replay::fresh::FreshIds;
use apflow_replay::night::load_night;
use apflow_replay::player::replay;
use apflow_replay::schedule::{Pacing, Schedule, ScheduleOptions};
use apflow_replay::sink::{AnySink, KafkaSink};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};

use crate::fixture::{self, DAY_OBS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_with_fresh_ids_reaches_the_topic_keyed_by_fresh_ids() {
    let Ok(brokers) = std::env::var("APFLOW_TEST_KAFKA_BROKERS") else {
        eprintln!(
            "APFLOW_TEST_KAFKA_BROKERS unset: skipping (source scripts/broker.sh; start_broker)"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    fixture::write_archive(
        dir.path(),
        &fixture::alerts(&[0.0, 37.0, 74.0], 3, 4, 21),
        12,
    );
    let night = load_night(dir.path(), DAY_OBS).unwrap();
    let original: HashSet<i64> = night
        .visits
        .iter()
        .flat_map(|v| &v.detectors)
        .flat_map(|d| &d.alerts)
        .map(|a| a.dia_source_id)
        .collect();
    let topic = format!(
        "replay-test-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    );
    let kafka = KafkaConfig::default();
    KafkaSink::ensure_topic(&brokers, &kafka, &topic, 2)
        .await
        .unwrap();
    let mut sink = AnySink::Kafka(
        KafkaSink::new(&brokers, &kafka, &ProducerConfig::default(), &topic, 1).unwrap(),
    );
    let s = Schedule::new(
        &night.visits,
        &ScheduleOptions {
            pacing: Pacing::Max,
            ..Default::default()
        },
    )
    .unwrap();
    let fresh = FreshIds::new(1).unwrap();
    let summary = replay(
        &night,
        &s,
        &mut sink,
        &VirtualClock::new(),
        Some(&fresh),
        |_| {},
    )
    .await
    .unwrap();
    assert_eq!(summary.alerts, 36);

    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{topic}-check"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    consumer.subscribe(&[&topic]).unwrap();
    let mut got: HashMap<i64, (u32, String)> = HashMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while got.len() < 36 && Instant::now() < deadline {
        let Some(m) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.unwrap();
        let key: i64 = std::str::from_utf8(m.key().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        let decoded = decode_framed(m.payload().unwrap()).unwrap();
        let generation = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "apflow_replay_generation"))
            .and_then(|h| h.value)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .unwrap_or_default();
        let apache_avro::types::Value::Record(f) = &decoded.value else {
            panic!()
        };
        let apache_avro::types::Value::Long(id) = f[0].1 else {
            panic!()
        };
        assert_eq!(id, key, "key = diaSourceId of the payload");
        got.insert(key, (decoded.schema_id, generation));
    }
    drop(consumer);
    assert_eq!(got.len(), 36, "every replayed alert arrived");
    for (key, (schema, generation)) in &got {
        assert!(!original.contains(key), "{key} is an original id");
        assert_eq!(DiaSourceId(*key).generation(), 1);
        assert_eq!(*schema, 1100);
        assert_eq!(generation, "1");
    }
    let expected: HashSet<i64> = original
        .iter()
        .map(|&i| DiaSourceId(i).fresh(1).unwrap().0)
        .collect();
    assert_eq!(got.keys().copied().collect::<HashSet<_>>(), expected);
}
