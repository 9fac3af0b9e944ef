//! One contract, every bus: the same scenarios run on the in-process bus and, with
//! feature `kafka` and `APFLOW_TEST_KAFKA_BROKERS=host:port` set, on a real
//! Kafka-protocol broker (`scripts/test` starts one on 127.0.0.1).

use std::time::Duration;

use apflow_core::bus::{Bus, BusConfig, EventConsumer, EventPublisher, Record, Topics};
use apflow_core::events::*;
use apflow_core::geom::{SkyPolygon, TangentPlane};
use apflow_core::ids::{DetectorId, ExposureId, VisitId};
use apflow_core::time::MjdTai;
use chrono::{TimeZone, Utc};

const WAIT: Duration = Duration::from_secs(30);
const CLOSE: Duration = Duration::from_secs(5);

/// The buses available to this test run.
fn buses() -> Vec<(&'static str, BusConfig)> {
    let mut out = vec![(
        "memory",
        BusConfig {
            url: "memory://".into(),
            ..BusConfig::default()
        },
    )];
    match std::env::var("APFLOW_TEST_KAFKA_BROKERS") {
        Ok(brokers) if cfg!(feature = "kafka") => {
            let mut c = BusConfig {
                url: format!("kafka://{brokers}"),
                ..BusConfig::default()
            };
            c.kafka.fetch_wait_max = Duration::from_millis(10);
            c.kafka.linger = Duration::from_millis(1);
            c.kafka.compression = "none".into();
            out.push(("kafka", c));
        }
        Ok(_) => eprintln!(
            "APFLOW_TEST_KAFKA_BROKERS is set but the `kafka` feature is off: Kafka scenarios skipped"
        ),
        Err(_) => eprintln!("APFLOW_TEST_KAFKA_BROKERS not set: Kafka scenarios skipped"),
    }
    out
}

/// A fresh topic prefix per test and backend: the test broker cannot delete topics.
fn unique_prefix(test: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t{}-{test}-{}.", std::process::id(), nanos % 1_000_000_000)
}

async fn setup(config: &BusConfig, test: &str) -> EventPublisher {
    let bus = Bus::from_config(config).expect("bus opens");
    let topics = Topics::new(unique_prefix(test));
    bus.ensure_topics(&topics.stage_topics(2))
        .await
        .expect("topics created");
    EventPublisher::new(bus, topics)
}

fn t0() -> chrono::DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 23, 3, 0, 0).unwrap()
}

fn visit(seq: u32) -> VisitId {
    VisitId::new(20261122, seq).unwrap()
}

fn next_visit(seq: u32) -> NextVisit {
    let tp = TangentPlane::new(1.0, -0.5);
    NextVisit {
        visit: visit(seq),
        group: format!("g{seq}"),
        pointing: Pointing {
            ra_deg: 57.3,
            dec_deg: -28.6,
            rotation_deg: 12.0,
        },
        band: "r".into(),
        exposure_time_s: 30.0,
        n_snaps: 1,
        predicted_start: MjdTai(61_000.1),
        footprint: vec![DetectorFootprint {
            detector: DetectorId(0),
            polygon: SkyPolygon::from_tangent_rect(&tp, -0.001, 0.001, -0.001, 0.001),
        }],
        scheduler_reason: Some("survey".into()),
        target_name: None,
    }
}

fn raw_image(seq: u32, det: u16) -> RawImageReady {
    RawImageReady {
        visit: visit(seq),
        exposure: ExposureId::new(visit(seq), 0),
        detector: DetectorId(det),
        image_uri: format!("file:///images/{seq}/{det}.fits"),
        shutter_close: t0(),
        readout_end: t0() + chrono::Duration::seconds(2),
        checksum: "sha256:ab".into(),
        size_bytes: 1234,
    }
}

fn detector_processed(seq: u32) -> DetectorProcessed {
    DetectorProcessed {
        visit: visit(seq),
        detector: DetectorId(3),
        status: DetectorStatus::Failed {
            stage: "psf".into(),
            class: ErrorClass::BadInput,
            reason: "too few stars".into(),
        },
        counts: DetectorCounts {
            dia_sources: 4,
            ..Default::default()
        },
        timings: vec![StageTiming {
            stage: "isr".into(),
            seconds: 0.1,
        }],
        readout_end: t0(),
        finished_at: t0() + chrono::Duration::seconds(5),
        delivered: Default::default(),
    }
}

fn visit_complete(seq: u32) -> VisitComplete {
    VisitComplete {
        visit: visit(seq),
        n_alerts: 17,
        detectors_expected: 4,
        detectors_done: 3,
        detectors_failed: vec![DetectorId(3)],
        completed_at: t0() + chrono::Duration::seconds(30),
        latency: apflow_core::latency::LatencySummary::of(&[1.5, 2.0, 61.0]),
    }
}

fn dead_letter(seq: u32) -> DeadLetter {
    DeadLetter {
        original: Original::bytes(&[0, 1, 2, seq as u8]),
        source_topic: Some("x".into()),
        stage: "ingest".into(),
        reason: "missing_header_key".into(),
        detail: "VISIT missing".into(),
        class: ErrorClass::BadInput,
        visit: Some(visit(seq)),
        detector: Some(DetectorId(1)),
        at: t0(),
    }
}

/// Publishes `events`, consumes them in a group, and checks they come back equal.
async fn round_trip<E: Event + PartialEq + Clone>(publisher: &EventPublisher, events: Vec<E>) {
    for e in &events {
        publisher.publish(e).await.expect("published");
    }
    let mut consumer =
        EventConsumer::<E>::subscribe(publisher, &format!("rt-{}", E::TOPIC), "test")
            .await
            .unwrap();
    let mut got = Vec::new();
    while got.len() < events.len() {
        let (e, d) = consumer
            .next_timeout(WAIT)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("{} timed out", E::TYPE));
        d.ack();
        got.push(e);
    }
    consumer.close(CLOSE).await;
    // Order is per partition; compare as sets by their encoding.
    let mut want: Vec<String> = events
        .iter()
        .map(|e| String::from_utf8(encode(e)).unwrap())
        .collect();
    let mut have: Vec<String> = got
        .iter()
        .map(|e| String::from_utf8(encode(e)).unwrap())
        .collect();
    want.sort();
    have.sort();
    assert_eq!(have, want, "{} round trip", E::TYPE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_type_round_trips_through_a_consumer_group() {
    for (name, config) in buses() {
        eprintln!("bus: {name}");
        let p = setup(&config, "types").await;
        round_trip(&p, (1..=3).map(next_visit).collect()).await;
        round_trip(&p, (1..=5).map(|s| raw_image(s, s as u16)).collect()).await;
        round_trip(&p, (1..=3).map(detector_processed).collect()).await;
        round_trip(&p, (1..=3).map(visit_complete).collect()).await;
        round_trip(&p, (1..=3).map(dead_letter).collect()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_member_resumes_at_the_committed_offset_without_loss_or_duplicates() {
    for (name, config) in buses() {
        eprintln!("bus: {name}");
        let p = setup(&config, "resume").await;
        let sent: Vec<RawImageReady> = (0..20)
            .map(|i| raw_image(100 + i, (i % 4) as u16))
            .collect();
        for e in &sent[..10] {
            p.publish(e).await.unwrap();
        }
        // First member: consume and acknowledge 6, then commit and leave.
        let mut first = EventConsumer::<RawImageReady>::subscribe(&p, "resume", "test")
            .await
            .unwrap();
        let mut seen = Vec::new();
        for _ in 0..6 {
            let (e, d) = first.next_timeout(WAIT).await.unwrap().expect("message");
            seen.push(e.visit);
            d.ack();
        }
        first.commit().await.unwrap();
        first.close(CLOSE).await;
        for e in &sent[10..] {
            p.publish(e).await.unwrap();
        }
        // Second member of the same group: gets exactly the rest.
        let mut second = EventConsumer::<RawImageReady>::subscribe(&p, "resume", "test")
            .await
            .unwrap();
        while seen.len() < sent.len() {
            let (e, d) = second
                .next_timeout(WAIT)
                .await
                .unwrap()
                .unwrap_or_else(|| panic!("{name}: lost messages"));
            seen.push(e.visit);
            d.ack();
        }
        // Nothing more arrives: no duplicates.
        let extra = second.next_timeout(Duration::from_secs(2)).await.unwrap();
        assert!(
            extra.is_none(),
            "{name}: duplicate {:?}",
            extra.map(|x| x.0.visit)
        );
        second.close(CLOSE).await;
        let mut want: Vec<VisitId> = sent.iter().map(|e| e.visit).collect();
        want.sort();
        seen.sort();
        assert_eq!(seen, want, "{name}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_are_dead_lettered_and_consumption_goes_on() {
    for (name, config) in buses() {
        eprintln!("bus: {name}");
        let p = setup(&config, "dlq").await;
        let topic = p.topics().of::<RawImageReady>();
        p.publish(&raw_image(1, 0)).await.unwrap();
        let garbage: [&[u8]; 3] = [
            b"\xff\xfenot json",
            br#"{"type":"RawImageReady","version":99,"payload":{}}"#,
            br#"{"type":"NextVisit","version":1,"payload":{}}"#,
        ];
        for g in garbage {
            p.bus()
                .publish(Record {
                    topic: topic.clone(),
                    key: Some("0".into()),
                    payload: g.to_vec(),
                    headers: vec![],
                })
                .await
                .unwrap();
        }
        p.publish(&raw_image(2, 0)).await.unwrap();

        let mut consumer = EventConsumer::<RawImageReady>::subscribe(&p, "dlq", "process")
            .await
            .unwrap();
        let mut good = Vec::new();
        for _ in 0..2 {
            let (e, d) = consumer
                .next_timeout(WAIT)
                .await
                .unwrap()
                .expect("good message after garbage");
            good.push(e.visit.seq());
            d.ack();
        }
        assert_eq!(good, vec![1, 2], "{name}");
        consumer.close(CLOSE).await;

        let mut letters = EventConsumer::<DeadLetter>::subscribe(&p, "dlq-reader", "test")
            .await
            .unwrap();
        let mut reasons = Vec::new();
        for _ in 0..3 {
            let (l, d) = letters
                .next_timeout(WAIT)
                .await
                .unwrap()
                .expect("dead letter");
            assert_eq!(l.stage, "process");
            assert_eq!(l.source_topic.as_deref(), Some(topic.as_str()));
            assert!(
                l.original
                    .to_bytes()
                    .is_some_and(|b| garbage.contains(&b.as_slice()))
            );
            reasons.push(l.reason);
            d.ack();
        }
        letters.close(CLOSE).await;
        reasons.sort();
        assert_eq!(
            reasons,
            vec!["not_an_envelope", "unsupported_version", "wrong_event_type"],
            "{name}"
        );
    }
}

#[tokio::test]
async fn a_compiled_out_or_unknown_backend_says_what_to_do() {
    let err = Bus::from_config(&BusConfig {
        url: "carrier-pigeon://x".into(),
        ..BusConfig::default()
    })
    .unwrap_err();
    assert!(err.to_string().contains("unknown scheme"), "{err}");
    if !cfg!(feature = "kafka") {
        let err = Bus::from_config(&BusConfig {
            url: "kafka://127.0.0.1:9092".into(),
            ..BusConfig::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("--features kafka"), "{err}");
    }
}
