//! The archive on a real S3 server (feature `s3`): `APFLOW_TEST_S3_ENDPOINT`
//! (`http://127.0.0.1:PORT`) with `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`/
//! `AWS_DEFAULT_REGION` set; `scripts/test` starts moto's server on loopback and sets
//! them (`scripts/s3.sh`). Each test works in a bucket of its own.

use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

/// The test server's endpoint, or `None` (the test is skipped, saying so).
fn endpoint() -> Option<String> {
    let e = std::env::var("APFLOW_TEST_S3_ENDPOINT").ok();
    if e.is_none() {
        eprintln!("APFLOW_TEST_S3_ENDPOINT not set: S3 archive test skipped");
    }
    e
}

/// A test's setting: the server, a fresh bucket named after the test, and two
/// batches of alerts over two nights from the test's seed.
struct Fixture {
    ep: String,
    bucket: String,
    first: Vec<FramedAlert>,
    second: Vec<FramedAlert>,
    /// The seeded generator, after the two batches.
    rng: ChaCha8Rng,
}

/// The [`Fixture`] of test `test`, or `None` (skipped) without a server.
fn fixture(test: &str, seed: u64) -> Option<Fixture> {
    let ep = endpoint()?;
    let bucket = bucket(&ep, test);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (first, second) = two_nights(&mut rng);
    Some(Fixture {
        ep,
        bucket,
        first,
        second,
        rng,
    })
}

/// A new bucket on the server (`PUT /<bucket>`, which moto accepts unsigned), named
/// after the test, this process and a counter.
fn bucket(endpoint: &str, test: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "apflow-{test}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    let authority = endpoint
        .strip_prefix("http://")
        .expect("APFLOW_TEST_S3_ENDPOINT is http://host:port")
        .trim_end_matches('/')
        .to_owned();
    let path = format!("/{name}");
    let status = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(http_request("PUT", &authority, &path))
        .0;
    assert_eq!(status, 200, "creating bucket {name}");
    name
}

/// The options of an archive under `prefix` in `bucket` of the test server, spooled in
/// `spool`.
fn options(endpoint: &str, bucket: &str, spool: &Path) -> S3Options {
    let mut o = S3Options::new(bucket, "survey/alerts");
    o.endpoint = Some(endpoint.to_owned());
    o.allow_http = true;
    o.spool = Some(spool.to_owned());
    o
}

fn open(o: &S3Options) -> Archive {
    let a = Archive::open_s3(o).unwrap();
    a.put_schema(SCHEMA_ID, SMALL_SCHEMA).unwrap();
    a
}

/// The ids in the night's object on the store, decoded (every block's sync marker
/// checked).
fn night_ids(a: &Archive, night: u32) -> Vec<i64> {
    let bytes = a.get_night(night, SCHEMA_ID).unwrap();
    let c = decode_container(&bytes, Path::new(&Archive::night_key(night, SCHEMA_ID))).unwrap();
    assert_eq!(
        (c.schema.as_str(), c.codec.as_str()),
        (SMALL_SCHEMA, "null")
    );
    let ids = container_ids(&c);
    assert_eq!(ids.len() as u64, c.count());
    ids
}

fn ids_of(night: u32, alerts: &[&FramedAlert]) -> BTreeSet<i64> {
    alerts
        .iter()
        .map(|x| x.dia_source_id)
        .filter(|&i| night_of(i).unwrap() == night)
        .collect()
}

#[test]
fn s3_every_alert_is_retrievable_and_each_nightly_object_holds_exactly_its_night() {
    let Some(Fixture {
        ep,
        bucket,
        first,
        second,
        ..
    }) = fixture("nights", 16)
    else {
        return;
    };
    let spool = tempfile::tempdir().unwrap();
    let o = options(&ep, &bucket, spool.path());
    {
        let a = open(&o);
        assert_eq!(
            a.put_batch(&first).unwrap(),
            BatchReport {
                written: first.len(),
                duplicates: 0
            }
        );
        assert_eq!(a.location(), format!("s3://{bucket}/survey/alerts"));
    }
    // Reopened with the same spool: the schemas come from the store.
    let a = Archive::open_s3(&o).unwrap();
    assert_eq!(a.get_schema(SCHEMA_ID).unwrap(), SMALL_SCHEMA);
    assert_eq!(a.put_batch(&second).unwrap().written, second.len());

    let all: Vec<&FramedAlert> = first.iter().chain(&second).collect();
    for x in &all {
        assert_eq!(a.get_alert(x.dia_source_id).unwrap(), x.framed);
    }
    assert!(matches!(
        a.get_alert(id(20261122, 9, 1, 0)).unwrap_err(),
        ArchiveError::NotFound(_)
    ));
    for night in [20261121, 20261122] {
        let ids = night_ids(&a, night);
        let expected = ids_of(night, &all);
        assert_eq!(ids.len(), expected.len(), "night {night}: no repeats");
        assert_eq!(ids.into_iter().collect::<BTreeSet<_>>(), expected);
        // The object is the spool's file, uploaded whole after the batch.
        assert_eq!(
            a.get_night(night, SCHEMA_ID).unwrap(),
            fs::read(a.night_path(night, SCHEMA_ID)).unwrap()
        );
    }
}

#[test]
fn s3_duplicates_are_not_rewritten_nor_added_to_the_night_even_after_a_restart() {
    let Some(Fixture {
        ep,
        bucket,
        first,
        second,
        ..
    }) = fixture("dups", 17)
    else {
        return;
    };
    let spool = tempfile::tempdir().unwrap();
    let a = open(&options(&ep, &bucket, spool.path()));
    a.put_batch(&first).unwrap();
    // The same batch again, with an alert repeated inside it.
    let mut again = first.clone();
    again.push(first[0].clone());
    assert_eq!(
        a.put_batch(&again).unwrap(),
        BatchReport {
            written: 0,
            duplicates: again.len()
        }
    );
    drop(a);

    // A restart with an empty spool: the check asks the store. A replayed alert whose
    // payload differs (it must not replace the archived one) and the new alerts.
    let spool2 = tempfile::tempdir().unwrap();
    let a = open(&options(&ep, &bucket, spool2.path()));
    let mut replayed = first[1].clone();
    let mut b = replayed.framed.to_vec();
    b.push(0);
    replayed.framed = b.into();
    let mut batch = vec![replayed];
    batch.extend(second.iter().cloned());
    batch.extend(first.iter().take(3).cloned());
    assert_eq!(
        a.put_batch(&batch).unwrap(),
        BatchReport {
            written: second.len(),
            duplicates: 4
        }
    );
    assert_eq!(
        a.get_alert(first[1].dia_source_id).unwrap(),
        first[1].framed
    );
    let all: Vec<&FramedAlert> = first.iter().chain(&second).collect();
    for night in [20261121, 20261122] {
        let ids = night_ids(&a, night);
        assert_eq!(ids.len(), ids_of(night, &all).len(), "night {night}");
        assert_eq!(
            ids.into_iter().collect::<BTreeSet<_>>(),
            ids_of(night, &all)
        );
    }

    // The conditional put itself: an existing object is reported, not overwritten.
    let Backend::S3 { store, .. } = &a.backend else {
        panic!("an S3 archive")
    };
    let key = Archive::alert_key(first[2].dia_source_id);
    let fresh = Archive::alert_key(id(20261123, 1, 1, 1));
    let created = store
        .create(vec![
            (key.clone(), bytes::Bytes::from_static(b"other")),
            (fresh.clone(), bytes::Bytes::from_static(b"new")),
        ])
        .unwrap();
    assert_eq!(created, vec![false, true]);
    assert_eq!(
        a.get_alert(first[2].dia_source_id).unwrap(),
        first[2].framed
    );
    assert_eq!(store.get(&fresh).unwrap().unwrap().as_ref(), b"new");
}

#[test]
fn s3_a_restarted_archive_with_an_empty_spool_continues_the_night() {
    let Some(Fixture {
        ep,
        bucket,
        first,
        second,
        ..
    }) = fixture("restart", 18)
    else {
        return;
    };
    let (spool1, spool2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let sync_of = |a: &Archive, night| {
        parse_header(&a.get_night(night, SCHEMA_ID).unwrap())
            .unwrap()
            .1
    };
    let before;
    {
        let a = open(&options(&ep, &bucket, spool1.path()));
        a.put_batch(&first).unwrap();
        before = sync_of(&a, 20261122);
    }
    let a = open(&options(&ep, &bucket, spool2.path()));
    a.put_batch(&second).unwrap();
    // The spool was filled from the store: same file, same sync marker, blocks of
    // both runs, each alert once.
    assert_eq!(sync_of(&a, 20261122), before);
    let all: Vec<&FramedAlert> = first.iter().chain(&second).collect();
    for night in [20261121, 20261122] {
        let ids = night_ids(&a, night);
        assert_eq!(ids.len(), ids_of(night, &all).len(), "night {night}");
        assert_eq!(
            ids.into_iter().collect::<BTreeSet<_>>(),
            ids_of(night, &all)
        );
    }
    let c = read_container(&a.night_path(20261122, SCHEMA_ID)).unwrap();
    assert!(c.blocks.len() >= 2, "a block per run");
}

#[test]
fn s3_with_an_upload_interval_the_night_object_is_a_prefix_until_flushed() {
    let Some(Fixture {
        ep,
        bucket,
        first,
        second,
        mut rng,
    }) = fixture("interval", 19)
    else {
        return;
    };
    let spool = tempfile::tempdir().unwrap();
    let mut o = options(&ep, &bucket, spool.path());
    o.upload_interval = Duration::from_secs(3600);
    let a = open(&o);
    // The first batch to a night uploads it; the next waits for the interval.
    a.put_batch(&first).unwrap();
    a.put_batch(&second).unwrap();
    let f: Vec<&FramedAlert> = first.iter().collect();
    let all: Vec<&FramedAlert> = first.iter().chain(&second).collect();
    for night in [20261121, 20261122] {
        let ids: BTreeSet<i64> = night_ids(&a, night).into_iter().collect();
        assert_eq!(ids, ids_of(night, &f), "night {night} before the flush");
    }
    // Every alert object is there already.
    for x in &all {
        assert_eq!(a.get_alert(x.dia_source_id).unwrap(), x.framed);
    }
    let uploads = || {
        metrics::ARCHIVE_STORE_SECONDS
            .with_label_values(&["upload"])
            .get_sample_count()
    };
    let before = uploads();
    a.flush().unwrap();
    // One upload per night at least (other tests may upload meanwhile).
    assert!(uploads() >= before + 2);
    for night in [20261121, 20261122] {
        let ids: BTreeSet<i64> = night_ids(&a, night).into_iter().collect();
        assert_eq!(ids, ids_of(night, &all), "night {night} after the flush");
    }
    // Dropping the archive uploads what is left too.
    let third: Vec<FramedAlert> = (0..5)
        .map(|c| alert(&mut rng, id(20261122, 7, 3, c)))
        .collect();
    a.put_batch(&third).unwrap();
    drop(a);
    let a = Archive::open_s3(&o).unwrap();
    assert_eq!(
        night_ids(&a, 20261122).len(),
        ids_of(20261122, &all).len() + 5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_the_http_api_serves_alerts_and_schemas_from_the_store() {
    let Some(ep) = endpoint() else { return };
    let (bucket, ep2) = {
        let ep = ep.clone();
        tokio::task::spawn_blocking(move || (bucket(&ep, "http"), ep))
            .await
            .unwrap()
    };
    let spool = tempfile::tempdir().unwrap();
    let o = options(&ep2, &bucket, spool.path());
    let mut rng = ChaCha8Rng::seed_from_u64(20);
    let (first, _) = two_nights(&mut rng);
    let batch = first.clone();
    let a = tokio::task::spawn_blocking(move || {
        let a = open(&o);
        a.put_batch(&batch).unwrap();
        Arc::new(a)
    })
    .await
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authority = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, a.router()).await.unwrap() });
    let x = &first[first.len() / 2];
    let (s, ct, body) = http_get(&authority, &format!("/v1/alerts/{}", x.dia_source_id)).await;
    assert_eq!((s, ct.as_str()), (200, "application/octet-stream"));
    assert_eq!(body, x.framed);
    let (s, _, body) = http_get(&authority, &format!("/v1/schemas/{SCHEMA_ID}")).await;
    assert_eq!((s, body.as_slice()), (200, SMALL_SCHEMA.as_bytes()));
    let missing = format!("/v1/alerts/{}", id(20261122, 9, 9, 9));
    assert_eq!(http_get(&authority, &missing).await.0, 404);
}

/// A request without a body: (status, body).
async fn http_request(method: &str, authority: &str, path: &str) -> (u16, Vec<u8>) {
    use http_body_util::{BodyExt, Empty};
    use hyper_util::rt::TokioIo;
    let stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, authority)
        .body(Empty::<hyper::body::Bytes>::new())
        .unwrap();
    let res = sender.send_request(req).await.unwrap();
    let status = res.status().as_u16();
    let body = res.into_body().collect().await.unwrap().to_bytes().to_vec();
    (status, body)
}
