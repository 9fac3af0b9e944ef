//! `apflow archive get` and `archive schema` on an S3 archive (feature `s3`), filled by
//! the test through the library, on the S3 server of `scripts/test`
//! (`APFLOW_TEST_S3_ENDPOINT` and the `AWS_*` credentials `scripts/s3.sh` exports;
//! skipped when unset).
#![cfg(feature = "s3")]

mod common;
use common::apflow;

use std::io::{Read, Write};

use apflow_alert_dist::archive::{ArchiveLocation, night_of};
use apflow_alert_dist::producer::FramedAlert;
use apflow_alert_dist::wire::frame_into;
use apflow_core::ids::{DetectorId, DiaSourceId, VisitId};

const SCHEMA: &str = r#"{"type":"record","name":"A","fields":[{"name":"id","type":"long"}]}"#;

/// Creates a bucket with a plain `PUT /<bucket>` (moto accepts it unsigned).
fn create_bucket(endpoint: &str, bucket: &str) {
    let authority = endpoint.trim_start_matches("http://").trim_end_matches('/');
    let mut s = std::net::TcpStream::connect(authority).unwrap();
    write!(
        s,
        "PUT /{bucket} HTTP/1.1\r\nHost: {authority}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
}

#[test]
fn archive_get_and_schema_read_an_s3_archive() {
    let Ok(endpoint) = std::env::var("APFLOW_TEST_S3_ENDPOINT") else {
        eprintln!("APFLOW_TEST_S3_ENDPOINT not set: S3 archive CLI test skipped");
        return;
    };
    let bucket = format!("apflow-cli-{}", std::process::id());
    create_bucket(&endpoint, &bucket);
    let spool = tempfile::tempdir().unwrap();
    let url = format!(
        "s3://{bucket}/archive?endpoint={endpoint}&allow_http=true&spool={}",
        spool.path().display()
    );
    let alerts: Vec<FramedAlert> = (0..4u32)
        .map(|c| {
            let id = DiaSourceId::new(VisitId::new(20261122, 3).unwrap(), DetectorId(42), c)
                .unwrap()
                .0;
            // {id: long}: zig-zag varint of the id.
            let mut body = Vec::new();
            let mut z = ((id << 1) ^ (id >> 63)) as u64;
            while z >= 0x80 {
                body.push((z as u8) | 0x80);
                z >>= 7;
            }
            body.push(z as u8);
            let mut framed = Vec::new();
            frame_into(1100, &body, &mut framed);
            FramedAlert {
                dia_source_id: id,
                framed: framed.into(),
            }
        })
        .collect();
    {
        let a = ArchiveLocation::parse(&url).unwrap().open().unwrap();
        a.put_schema(1100, SCHEMA).unwrap();
        assert_eq!(a.put_batch(&alerts).unwrap().written, 4);
        assert_eq!(night_of(alerts[0].dia_source_id).unwrap(), 20261122);
    }

    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("alert.bin");
    let x = &alerts[2];
    let r = apflow()
        .args([
            "archive",
            "get",
            &x.dia_source_id.to_string(),
            "--dir",
            &url,
            "-o",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(std::fs::read(&out).unwrap(), x.framed);

    // To standard output, and through the `--url` alias.
    let r = apflow()
        .args([
            "archive",
            "get",
            &alerts[0].dia_source_id.to_string(),
            "--url",
            &url,
        ])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(r.stdout, alerts[0].framed);

    let r = apflow()
        .args(["archive", "schema", "1100", "--dir", &url])
        .output()
        .unwrap();
    assert!(r.status.success(), "{}", String::from_utf8_lossy(&r.stderr));
    assert_eq!(String::from_utf8(r.stdout).unwrap().trim_end(), SCHEMA);

    let missing = DiaSourceId::new(VisitId::new(20261122, 3).unwrap(), DetectorId(42), 99)
        .unwrap()
        .0;
    let r = apflow()
        .args(["archive", "get", &missing.to_string(), "--dir", &url])
        .output()
        .unwrap();
    assert!(!r.status.success());
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(err.contains("not in the archive"), "{err}");
}
