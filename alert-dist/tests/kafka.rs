//! The alert producer and the archive's consumer against a real Kafka-protocol broker
//! (feature `kafka`, `APFLOW_TEST_KAFKA_BROKERS=host:port`; `scripts/test` starts
//! one on 127.0.0.1). Without the variable the test says so and passes.
#![cfg(feature = "kafka")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use apflow_alert_dist::archive::{
    Archive, ArchiveConsumerOptions, archive_from_bus, read_container,
};
use apflow_alert_dist::ledger::Ledger;
use apflow_alert_dist::metrics;
use apflow_alert_dist::packet::AlertEncoder;
use apflow_alert_dist::producer::{
    AlertProducer, Compression, DetectorAlerts, Encoding, FramedAlert, Payloads, ProduceError,
    ProducerConfig, VisitTally,
};
use apflow_alert_dist::wire::{frame_into, get_bytes, get_long, put_bytes, put_long};
use apflow_core::bus::kafka::base_config;
use apflow_core::bus::{Bus, BusConfig, KafkaConfig};
use apflow_core::ids::{DetectorId, DiaSourceId, VisitId};
use chrono::Utc;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::Headers;

const SCHEMA: &str = r#"{"type":"record","name":"alert","namespace":"apflow.test","fields":[{"name":"diaSourceId","type":"long"},{"name":"cutout","type":"bytes"}]}"#;
const SCHEMA_ID: u32 = 1100;

fn broker() -> Option<String> {
    let b = std::env::var("APFLOW_TEST_KAFKA_BROKERS").ok();
    if b.is_none() {
        eprintln!("APFLOW_TEST_KAFKA_BROKERS not set: Kafka scenario skipped");
    }
    b
}

/// `n` framed alerts of `SCHEMA` for (visit, detector), 1–4 KB of random cutout each.
fn alerts(rng: &mut ChaCha8Rng, visit: VisitId, detector: u16, n: u32) -> Vec<FramedAlert> {
    (0..n)
        .map(|c| {
            let id = DiaSourceId::new(visit, DetectorId(detector), c).unwrap().0;
            let len = rng.random_range(1000..4000);
            let cutout: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let mut body = Vec::new();
            put_long(&mut body, id);
            put_bytes(&mut body, &cutout);
            let mut framed = Vec::new();
            frame_into(SCHEMA_ID, &body, &mut framed);
            FramedAlert {
                dia_source_id: id,
                framed: framed.into(),
            }
        })
        .collect()
}

fn kafka_config() -> KafkaConfig {
    KafkaConfig {
        fetch_wait_max: Duration::from_millis(10),
        ..KafkaConfig::default()
    }
}

fn unique(name: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t{}-{name}-{}", std::process::id(), nanos % 1_000_000_000)
}

/// Reads `topic` from the start until `expected` messages arrived or 60 s passed.
async fn consume_all(brokers: &str, topic: &str, expected: usize) -> Vec<(String, Vec<u8>, i64)> {
    let consumer: StreamConsumer = base_config(brokers, &kafka_config())
        .unwrap()
        .set("group.id", unique("check"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "10")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while out.len() < expected {
        let Ok(m) = tokio::time::timeout_at(deadline, consumer.recv()).await else {
            break;
        };
        let m = m.unwrap();
        let stamp = m
            .headers()
            .and_then(|h| h.iter().find(|h| h.key == "producer_timestamp"))
            .and_then(|h| std::str::from_utf8(h.value.unwrap()).ok()?.parse().ok())
            .expect("producer_timestamp header");
        out.push((
            String::from_utf8(m.key().unwrap().to_vec()).unwrap(),
            m.payload().unwrap().to_vec(),
            stamp,
        ));
    }
    consumer.unsubscribe();
    out
}

/// Sum of the high watermarks of `topic`'s partitions.
fn messages_in(brokers: &str, topic: &str, partitions: i32) -> i64 {
    let consumer: rdkafka::consumer::BaseConsumer = base_config(brokers, &kafka_config())
        .unwrap()
        .set("group.id", unique("wm"))
        .create()
        .unwrap();
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap()
                .1
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_reach_the_broker_once_and_the_archive_keeps_them() {
    let Some(brokers) = broker() else { return };
    metrics::register();
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite")).unwrap());
    let config = ProducerConfig {
        topic_template: format!("{}-v{{major}}", unique("alerts")),
        partitions: 3,
        compression: Compression::Lz4,
        linger: Duration::from_millis(2),
        ..ProducerConfig::default()
    };
    let producer =
        AlertProducer::new(&brokers, &kafka_config(), &config, 11, ledger.clone()).unwrap();
    producer.ensure_topic().await.unwrap();
    producer.ensure_topic().await.unwrap(); // already there: fine
    let topic = producer.topic().to_owned();
    assert!(topic.ends_with("-v11"));

    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let visit = VisitId::new(20261122, 42).unwrap();
    let batches = [
        (5u16, alerts(&mut rng, visit, 5, 70)),
        (9, alerts(&mut rng, visit, 9, 50)),
    ];
    let total: usize = batches.iter().map(|b| b.1.len()).sum();
    let sent_before = metrics::SENT_TOTAL.get();
    let mut tally = VisitTally::new(visit, 3);
    // Both in the past, 90 s apart: a latency counted from the shutter would be
    // 100 s or more, one from the end of readout 10 s up to delivery's few seconds more.
    let shutter_close = Utc::now() - chrono::TimeDelta::seconds(100);
    let readout_end = shutter_close + chrono::TimeDelta::seconds(90);
    for (det, a) in &batches {
        let r = producer
            .send_detector(DetectorAlerts {
                visit,
                detector: DetectorId(*det),
                shutter_close,
                readout_end,
                alerts: a,
            })
            .await
            .unwrap();
        assert_eq!((r.sent as usize, r.skipped), (a.len(), 0));
        assert_eq!(
            r.bytes,
            a.iter().map(|x| x.framed.len() as u64).sum::<u64>()
        );
        assert_eq!(
            ledger.count(visit, DetectorId(*det)).unwrap() as usize,
            a.len()
        );
        // One latency per acknowledged alert, from the end of readout (not the shutter)
        // to its acknowledgement.
        assert_eq!(r.latencies_s.len(), a.len());
        assert!(
            r.latencies_s.iter().all(|l| (10.0..100.0).contains(l)),
            "{:?}",
            r.latencies_s
        );
        tally.done(DetectorId(*det), &r);
    }
    tally.failed(DetectorId(12));
    let event = tally.event(Utc::now());
    assert_eq!((event.n_alerts as usize, event.detectors_done), (total, 2));
    assert_eq!(
        event.latency.expect("alerts were sent").count as usize,
        total
    );
    assert_eq!(metrics::SENT_TOTAL.get() - sent_before, total as u64);

    // Everything arrives once, keyed by diaSourceId, with the exact bytes.
    let got = consume_all(&brokers, &topic, total).await;
    assert_eq!(got.len(), total);
    let by_key: BTreeMap<String, Vec<u8>> =
        got.iter().map(|(k, v, _)| (k.clone(), v.clone())).collect();
    assert_eq!(by_key.len(), total, "keys are unique");
    for a in batches.iter().flat_map(|b| &b.1) {
        assert_eq!(by_key[&a.dia_source_id.to_string()], a.framed);
    }
    let produced_ms = shutter_close.timestamp_millis();
    assert!(got.iter().all(|(_, _, t)| *t >= produced_ms));

    // A rerun of the same detectors (new producer, same ledger) sends nothing.
    let before = messages_in(&brokers, &topic, 3);
    assert_eq!(before as usize, total);
    let again = AlertProducer::new(&brokers, &kafka_config(), &config, 11, ledger.clone()).unwrap();
    for (det, a) in &batches {
        let r = again
            .send_detector(DetectorAlerts {
                visit,
                detector: DetectorId(*det),
                shutter_close,
                readout_end,
                alerts: a,
            })
            .await
            .unwrap();
        assert_eq!((r.sent, r.skipped as usize), (0, a.len()));
    }
    again.flush(Duration::from_secs(10)).unwrap();
    assert_eq!(messages_in(&brokers, &topic, 3), before);

    // The archive, fed by a consumer of the full stream, keeps every alert.
    let archive = Arc::new(Archive::open(dir.path().join("archive")).unwrap());
    archive.put_schema(SCHEMA_ID, SCHEMA).unwrap();
    let mut opts = ArchiveConsumerOptions::new(&topic);
    opts.group = unique("archive");
    opts.idle_exit = Some(Duration::from_secs(3));
    let bus = Bus::from_config(&BusConfig {
        url: format!("kafka://{brokers}"),
        kafka: kafka_config(),
        ..BusConfig::default()
    })
    .unwrap();
    let written = tokio::time::timeout(
        Duration::from_secs(120),
        archive_from_bus(&bus, &opts, archive.clone(), std::future::pending()),
    )
    .await
    .expect("the archive consumer finishes")
    .unwrap();
    assert_eq!(written as usize, total);
    for a in batches.iter().flat_map(|b| &b.1) {
        assert_eq!(archive.get_alert(a.dia_source_id).unwrap(), a.framed);
    }
    let night = read_container(&archive.night_path(20261122, SCHEMA_ID)).unwrap();
    assert_eq!(night.count() as usize, total);
    let datums: Vec<u8> = night.blocks.iter().flat_map(|b| b.1.clone()).collect();
    assert_eq!(
        datums.len(),
        batches
            .iter()
            .flat_map(|b| &b.1)
            .map(|a| a.framed.len() - 5)
            .sum::<usize>()
    );
    let ids: BTreeSet<i64> = batches
        .iter()
        .flat_map(|b| &b.1)
        .map(|a| a.dia_source_id)
        .collect();
    assert_eq!(ids.len(), total);
    // The nightly file holds exactly those alerts, once each.
    let mut archived = Vec::new();
    for (count, data) in &night.blocks {
        let mut pos = 0;
        for _ in 0..*count {
            archived.push(get_long(data, &mut pos).unwrap());
            get_bytes(data, &mut pos).unwrap();
        }
        assert_eq!(pos, data.len());
    }
    assert_eq!(archived.len(), total);
    assert_eq!(archived.into_iter().collect::<BTreeSet<_>>(), ids);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undeliverable_alerts_are_retried_then_reported_and_not_recorded() {
    let Some(brokers) = broker() else { return };
    metrics::register();
    let ledger = Arc::new(Ledger::in_memory().unwrap());
    // A topic that does not exist (the test broker does not create topics on
    // produce): every delivery report fails.
    let mut config = ProducerConfig {
        topic_template: format!("{}-missing-v{{major}}", unique("alerts")),
        message_timeout: Duration::from_millis(500),
        retries: 1,
        ..ProducerConfig::default()
    };
    config
        .librdkafka
        .insert("topic.metadata.propagation.max.ms".into(), "100".into());
    let producer =
        AlertProducer::new(&brokers, &kafka_config(), &config, 11, ledger.clone()).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let visit = VisitId::new(20261122, 43).unwrap();
    let a = alerts(&mut rng, visit, 1, 4);
    let failures = |o: &str| {
        metrics::DELIVERY_FAILURES_TOTAL
            .with_label_values(&[o])
            .get()
    };
    let (retried, given_up) = (failures("retried"), failures("given_up"));
    let err = producer
        .send_detector(DetectorAlerts {
            visit,
            detector: DetectorId(1),
            shutter_close: Utc::now(),
            readout_end: Utc::now(),
            alerts: &a,
        })
        .await
        .unwrap_err();
    match err {
        apflow_alert_dist::producer::ProduceError::Undelivered { failed, total, .. } => {
            assert_eq!((failed, total), (4, 4))
        }
        e => panic!("expected Undelivered, got {e}"),
    }
    assert_eq!(failures("retried") - retried, 4);
    assert_eq!(failures("given_up") - given_up, 4);
    assert_eq!(ledger.count(visit, DetectorId(1)).unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_compression_setting_delivers_the_exact_bytes() {
    let Some(brokers) = broker() else { return };
    let dir = tempfile::tempdir().unwrap();
    let ledger = Arc::new(Ledger::open(&dir.path().join("ledger.sqlite")).unwrap());
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    for (i, compression) in Compression::ALL.into_iter().enumerate() {
        let config = ProducerConfig {
            topic_template: format!("{}-v{{major}}", unique(compression.as_str())),
            partitions: 1,
            compression,
            ..ProducerConfig::default()
        };
        let producer =
            AlertProducer::new(&brokers, &kafka_config(), &config, 11, ledger.clone()).unwrap();
        producer.ensure_topic().await.unwrap();
        let visit = VisitId::new(20261122, 100 + i as u32).unwrap();
        let batch = alerts(&mut rng, visit, 1, 8);
        let r = producer
            .send_detector(DetectorAlerts {
                visit,
                detector: DetectorId(1),
                shutter_close: Utc::now(),
                readout_end: Utc::now(),
                alerts: &batch,
            })
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", compression.as_str()));
        assert_eq!(r.sent as usize, batch.len());
        if compression == Compression::Snappy {
            // The test broker (tansu 0.6.0) acknowledges snappy batches but fails to
            // serve them to consumers (`UnexpectedType("Snappy")` in its log): the
            // acknowledgement is all that can be checked here.
            continue;
        }
        let got = consume_all(&brokers, producer.topic(), batch.len()).await;
        assert_eq!(got.len(), batch.len(), "{}", compression.as_str());
        let mut got: Vec<Vec<u8>> = got.into_iter().map(|(_, v, _)| v).collect();
        let mut want: Vec<Vec<u8>> = batch.iter().map(|a| a.framed.to_vec()).collect();
        got.sort();
        want.sort();
        assert_eq!(got, want, "{}", compression.as_str());
    }
}

/// A producer (in-memory ledger) to a fresh two-partition topic named after `name`,
/// whose librdkafka queue holds `kbytes` KiB.
async fn small_queue_producer(brokers: &str, name: &str, kbytes: u32) -> AlertProducer {
    let mut config = ProducerConfig {
        topic_template: format!("{}-v{{major}}", unique(name)),
        partitions: 2,
        ..ProducerConfig::default()
    };
    config
        .librdkafka
        .insert("queue.buffering.max.kbytes".into(), kbytes.to_string());
    let ledger = Arc::new(Ledger::in_memory().unwrap());
    let producer = AlertProducer::new(brokers, &kafka_config(), &config, 11, ledger).unwrap();
    producer.ensure_topic().await.unwrap();
    producer
}

/// Many detectors at once through a client whose queue holds only a few alerts: the
/// detectors with nothing in flight wait for room (no deadlock, no polling loop), and
/// every alert reaches the broker exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_detectors_share_a_small_queue_and_deliver_each_alert_once() {
    let Some(brokers) = broker() else { return };
    // Room for 14 KiB: two to ten of these 1–4 KB alerts at a time.
    let producer = small_queue_producer(&brokers, "room", 16).await;
    let visit = VisitId::new(20261123, 7).unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(23);
    let batches: Vec<Vec<FramedAlert>> = (1..=24).map(|d| alerts(&mut rng, visit, d, 15)).collect();
    let sends = futures::future::join_all(batches.iter().enumerate().map(|(d, batch)| {
        producer.send_detector(DetectorAlerts {
            visit,
            detector: DetectorId(d as u16 + 1),
            shutter_close: Utc::now(),
            readout_end: Utc::now(),
            alerts: batch,
        })
    }));
    let reports = tokio::time::timeout(Duration::from_secs(120), sends)
        .await
        .expect("every detector finishes (no sender waits forever for room)");
    for r in reports {
        assert_eq!(r.unwrap().sent, 15);
    }
    let want: BTreeSet<String> = batches
        .iter()
        .flatten()
        .map(|a| a.dia_source_id.to_string())
        .collect();
    let got = consume_all(&brokers, producer.topic(), want.len()).await;
    assert_eq!(got.len(), want.len());
    let keys: BTreeSet<String> = got.into_iter().map(|(k, _, _)| k).collect();
    assert_eq!(keys, want, "each alert exactly once");
}

/// [`Encoding`] that cannot encode alert `bad`.
struct FailingAt<'a> {
    inner: Encoding<'a>,
    bad: usize,
}

impl Payloads for FailingAt<'_> {
    fn len(&self) -> usize {
        self.inner.len()
    }
    fn dia_source_id(&self, i: usize) -> i64 {
        self.inner.dia_source_id(i)
    }
    fn payload(&mut self, i: usize) -> Result<&[u8], String> {
        if i == self.bad {
            return Err("encoding the alert: injected failure".into());
        }
        self.inner.payload(i)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_encoded_as_they_are_sent_arrive_intact_and_an_unencodable_one_is_reported() {
    let Some(brokers) = broker() else { return };
    // Room for about two ~92 KB packets: the encoder's one buffer is overwritten
    // while earlier packets are still in librdkafka's queue.
    let producer = small_queue_producer(&brokers, "encoding", 256).await;
    let inputs = apflow_alert_dist::synth::alert_inputs(2026, 12);
    let mut enc = AlertEncoder::new();
    let want: BTreeMap<String, Vec<u8>> = inputs
        .iter()
        .map(|a| {
            let framed = enc.to_framed(a).unwrap();
            (a.dia_source.dia_source_id.0.to_string(), framed)
        })
        .collect();
    assert_eq!(want.len(), inputs.len(), "the inputs' ids are unique");
    let batch = |detector| DetectorAlerts {
        visit: VisitId::new(20261123, 8).unwrap(),
        detector: DetectorId(detector),
        shutter_close: Utc::now(),
        readout_end: Utc::now(),
        alerts: &[],
    };

    // Detector 1: every packet encoded on the way out arrives as the encoder makes it.
    let r = producer
        .send_payloads(batch(1), &mut Encoding::of(&inputs))
        .await
        .unwrap();
    assert_eq!((r.sent, r.skipped), (12, 0));
    assert_eq!(
        r.bytes,
        want.values().map(|v| v.len() as u64).sum::<u64>(),
        "the report counts the encoded bytes"
    );
    let got: BTreeMap<String, Vec<u8>> = consume_all(&brokers, producer.topic(), 12)
        .await
        .into_iter()
        .map(|(k, v, _)| (k, v))
        .collect();
    assert_eq!(got, want);

    // Detector 2: alert 5 cannot be encoded. The others are delivered and recorded;
    // the detector fails naming it; a rerun sends only it.
    let bad_id = inputs[5].dia_source.dia_source_id.0;
    let failing = &mut FailingAt {
        inner: Encoding::of(&inputs),
        bad: 5,
    };
    match producer.send_payloads(batch(2), failing).await {
        Err(ProduceError::Undelivered {
            failed,
            total,
            reason,
            ..
        }) => {
            assert_eq!((failed, total), (1, 12));
            assert!(
                reason.contains(&format!("diaSourceId {bad_id}")) && reason.contains("injected"),
                "{reason}"
            );
        }
        other => panic!("expected an undelivered alert, got {other:?}"),
    }
    let r = producer
        .send_payloads(batch(2), &mut Encoding::of(&inputs))
        .await
        .unwrap();
    assert_eq!((r.sent, r.skipped), (1, 11));
    assert_eq!(r.bytes, want[&bad_id.to_string()].len() as u64);
    assert_eq!(messages_in(&brokers, producer.topic(), 2), 24);
}
