use std::collections::BTreeSet;

use apflow_core::ids::{DetectorId, DiaSourceId, VisitId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::registry::tests::SMALL_SCHEMA;
use crate::wire::{frame_into, put_bytes, put_long};

#[cfg(feature = "s3")]
mod s3;

const SCHEMA_ID: u32 = 1100;

fn id(day_obs: u32, seq: u32, detector: u16, counter: u32) -> i64 {
    DiaSourceId::new(
        VisitId::new(day_obs, seq).unwrap(),
        DetectorId(detector),
        counter,
    )
    .unwrap()
    .0
}

/// A framed datum of `SMALL_SCHEMA`: {diaSourceId: long, note: string}, the note
/// random bytes-as-text of a random length.
fn alert(rng: &mut ChaCha8Rng, dia_source_id: i64) -> FramedAlert {
    let n = rng.random_range(0..2000);
    let note: String = (0..n)
        .map(|_| rng.random_range(b'a'..=b'z') as char)
        .collect();
    let mut body = Vec::new();
    put_long(&mut body, dia_source_id);
    put_bytes(&mut body, note.as_bytes());
    let mut framed = Vec::new();
    frame_into(SCHEMA_ID, &body, &mut framed);
    FramedAlert {
        dia_source_id,
        framed: framed.into(),
    }
}

/// Decodes the ids of every datum of the container (each datum is
/// {long, string}).
fn container_ids(c: &Container) -> Vec<i64> {
    let mut ids = Vec::new();
    for (count, data) in &c.blocks {
        let mut pos = 0;
        for _ in 0..*count {
            ids.push(get_long(data, &mut pos).unwrap());
            get_bytes(data, &mut pos).unwrap();
        }
        assert_eq!(pos, data.len(), "block holds exactly `count` datums");
    }
    ids
}

fn archive(dir: &Path) -> Archive {
    let a = Archive::open(dir).unwrap();
    a.put_schema(SCHEMA_ID, SMALL_SCHEMA).unwrap();
    a
}

/// Two nights, several visits and detectors, in two batches.
fn two_nights(rng: &mut ChaCha8Rng) -> (Vec<FramedAlert>, Vec<FramedAlert>) {
    let mut first = Vec::new();
    let mut second = Vec::new();
    for (day, seq) in [(20261121, 5), (20261122, 1), (20261122, 2)] {
        for det in [0u16, 17, 188] {
            for c in 0..rng.random_range(1..15) {
                let a = alert(rng, id(day, seq, det, c));
                if rng.random_bool(0.5) {
                    first.push(a);
                } else {
                    second.push(a);
                }
            }
        }
    }
    (first, second)
}

#[test]
fn every_archived_alert_is_retrievable_and_each_night_holds_exactly_its_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let (first, second) = two_nights(&mut rng);
    {
        let a = archive(dir.path());
        assert_eq!(a.put_batch(&first).unwrap().written, first.len());
    }
    // A reopened archive appends to the same nightly files.
    let a = archive(dir.path());
    let r = a.put_batch(&second).unwrap();
    assert_eq!(
        r,
        BatchReport {
            written: second.len(),
            duplicates: 0
        }
    );

    for x in first.iter().chain(&second) {
        assert_eq!(a.get_alert(x.dia_source_id).unwrap(), x.framed);
    }
    for night in [20261121, 20261122] {
        let c = read_container(&a.night_path(night, SCHEMA_ID)).unwrap();
        assert_eq!(c.schema, SMALL_SCHEMA);
        assert_eq!(c.codec, "null");
        let ids = container_ids(&c);
        let expected: BTreeSet<i64> = first
            .iter()
            .chain(&second)
            .map(|x| x.dia_source_id)
            .filter(|&i| night_of(i).unwrap() == night)
            .collect();
        assert_eq!(ids.len(), expected.len(), "night {night}: no repeats");
        assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), expected);
        assert_eq!(c.count() as usize, expected.len());
    }
    // Datums in the nightly file are the wire bytes without the header.
    let c = read_container(&a.night_path(20261121, SCHEMA_ID)).unwrap();
    let all: Vec<u8> = c.blocks.iter().flat_map(|b| b.1.clone()).collect();
    let x = first
        .iter()
        .find(|x| night_of(x.dia_source_id).unwrap() == 20261121)
        .unwrap();
    assert!(all.windows(x.framed.len() - 5).any(|w| w == &x.framed[5..]));
    assert_eq!(a.get_schema(SCHEMA_ID).unwrap(), SMALL_SCHEMA);
}

#[test]
fn replayed_alerts_are_not_archived_twice() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (first, _) = two_nights(&mut rng);
    let a = archive(dir.path());
    a.put_batch(&first).unwrap();
    let mut again = first.clone();
    again.push(first[0].clone());
    let r = a.put_batch(&again).unwrap();
    assert_eq!(
        r,
        BatchReport {
            written: 0,
            duplicates: again.len()
        }
    );
    let total: u64 = [20261121, 20261122]
        .iter()
        .filter_map(|&n| read_container(&a.night_path(n, SCHEMA_ID)).ok())
        .map(|c| c.count())
        .sum();
    assert_eq!(total as usize, first.len());
}

#[test]
fn bad_alerts_are_refused_and_nothing_of_their_batch_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let a = archive(dir.path());
    let good = alert(&mut rng, id(20261122, 1, 3, 0));

    let mut unframed = alert(&mut rng, id(20261122, 1, 3, 1));
    let mut b = unframed.framed.to_vec();
    b[0] = 7;
    unframed.framed = b.into();
    let mut unknown = alert(&mut rng, id(20261122, 1, 3, 2));
    let mut b = unknown.framed.to_vec();
    b[1..5].copy_from_slice(&999u32.to_be_bytes());
    unknown.framed = b.into();
    let mut bad_id = alert(&mut rng, -5);
    bad_id.dia_source_id = -5;

    let e = a.put_batch(&[good.clone(), unframed]).unwrap_err();
    assert!(
        matches!(
            e,
            ArchiveError::Wire {
                source: WireError::Magic(7),
                ..
            }
        ),
        "{e}"
    );
    let e = a.put_batch(&[good.clone(), unknown]).unwrap_err();
    assert!(
        matches!(e, ArchiveError::UnknownSchema { schema_id: 999, .. }),
        "{e}"
    );
    let e = a.put_batch(&[good.clone(), bad_id]).unwrap_err();
    assert!(matches!(e, ArchiveError::BadId(-5, _)), "{e}");
    assert!(matches!(
        a.get_alert(good.dia_source_id).unwrap_err(),
        ArchiveError::NotFound(_)
    ));
    assert!(!a.night_path(20261122, SCHEMA_ID).exists());
}

#[test]
fn a_night_file_of_another_schema_is_not_appended_to() {
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let x = alert(&mut rng, id(20261122, 1, 3, 0));
    {
        let a = archive(dir.path());
        a.put_batch(std::slice::from_ref(&x)).unwrap();
    }
    let a = Archive::open(dir.path()).unwrap();
    a.put_schema(SCHEMA_ID, r#"{"type":"string"}"#).unwrap();
    let y = alert(&mut rng, id(20261122, 1, 3, 1));
    let e = a.put_batch(&[y]).unwrap_err();
    assert!(matches!(e, ArchiveError::BadContainer { .. }), "{e}");
}

#[tokio::test]
async fn the_bus_consumer_and_the_http_api_serve_archived_alerts() {
    use apflow_core::bus::{Bus, Record, TopicSpec};
    let dir = tempfile::tempdir().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let (first, second) = two_nights(&mut rng);
    let a = Arc::new(archive(dir.path()));
    // The full stream on the in-process bus, with a message that is not an alert.
    let bus = Bus::memory();
    let topic = "alerts-v11".to_string();
    bus.ensure_topics(&[TopicSpec {
        name: topic.clone(),
        partitions: 2,
    }])
    .await
    .unwrap();
    let record = |key: String, payload: Vec<u8>| Record {
        topic: topic.clone(),
        key: Some(key),
        payload,
        headers: Vec::new(),
    };
    bus.publish(record("not-an-id".into(), b"x".to_vec()))
        .await
        .unwrap();
    for x in first.iter().chain(&second) {
        bus.publish(record(x.dia_source_id.to_string(), x.framed.to_vec()))
            .await
            .unwrap();
    }
    let mut opts = ArchiveConsumerOptions::new(&topic);
    opts.idle_exit = Some(std::time::Duration::from_millis(500));
    let written = archive_from_bus(&bus, &opts, a.clone(), std::future::pending())
        .await
        .unwrap();
    assert_eq!(written as usize, first.len() + second.len());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, a.router()).await.unwrap() });
    let authority = addr.to_string();
    let x = &second[0];
    let (s, ct, body) = http_get(&authority, &format!("/v1/alerts/{}", x.dia_source_id)).await;
    assert_eq!((s, ct.as_str()), (200, "application/octet-stream"));
    assert_eq!(body, x.framed);
    let (s, _, body) = http_get(&authority, &format!("/v1/schemas/{SCHEMA_ID}")).await;
    assert_eq!((s, body.as_slice()), (200, SMALL_SCHEMA.as_bytes()));
    for path in ["/v1/alerts/12345", "/v1/alerts/x", "/v1/schemas/1"] {
        assert_eq!(http_get(&authority, path).await.0, 404, "{path}");
    }
}

async fn http_get(authority: &str, path: &str) -> (u16, String, Vec<u8>) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    let stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get(path)
        .header(header::HOST, authority)
        .body(Empty::<hyper::body::Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let ct = res.headers()[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .to_owned();
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, ct, body)
}

#[test]
fn archive_locations_parse_from_paths_and_urls() {
    let p = |s: &str| ArchiveLocation::parse(s).unwrap();
    assert_eq!(
        p("/data/archive"),
        ArchiveLocation::Dir("/data/archive".into())
    );
    assert_eq!(p("out/archive"), ArchiveLocation::Dir("out/archive".into()));
    assert_eq!(p("file:///data/a"), ArchiveLocation::Dir("/data/a".into()));
    let ArchiveLocation::S3(o) = p("s3://alerts") else {
        panic!("s3")
    };
    assert_eq!(o, S3Options::new("alerts", ""));
    assert_eq!(o.url(), "s3://alerts");
    let ArchiveLocation::S3(o) = p(
        "s3://alerts/lsst/v11/?endpoint=http://127.0.0.1:9000&allow_http=true&region=us-east-1\
         &spool=/var/spool/a&upload_interval=30s",
    ) else {
        panic!("s3")
    };
    assert_eq!(
        (o.bucket.as_str(), o.prefix.as_str(), o.url().as_str()),
        ("alerts", "lsst/v11", "s3://alerts/lsst/v11")
    );
    assert_eq!(o.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
    assert_eq!(o.region.as_deref(), Some("us-east-1"));
    assert!(o.allow_http);
    assert_eq!(o.spool_dir(), PathBuf::from("/var/spool/a"));
    assert_eq!(o.upload_interval, std::time::Duration::from_secs(30));
    assert!(
        S3Options::new("b", "x/y")
            .spool_dir()
            .ends_with("apflow-archive-spool/b/x/y")
    );
    for bad in [
        "",
        "s3://",
        "s3:///prefix",
        "gs://bucket",
        "file://",
        "s3://b?nokey",
        "s3://b?colour=red",
        "s3://b?allow_http=maybe",
        "s3://b?upload_interval=soon",
    ] {
        let e = ArchiveLocation::parse(bad).unwrap_err();
        assert!(matches!(e, ArchiveError::Location { .. }), "{bad}: {e}");
    }
}

#[cfg(not(feature = "s3"))]
#[test]
fn an_s3_location_without_the_s3_feature_is_an_error_naming_it() {
    let e = ArchiveLocation::parse("s3://alerts/x")
        .unwrap()
        .open()
        .unwrap_err();
    assert!(e.to_string().contains("`s3` feature"), "{e}");
}
