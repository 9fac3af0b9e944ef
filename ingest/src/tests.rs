use std::path::Path;

use fitsio::images::{ImageDescription, ImageType};

use super::*;

/// Writes a small raw-like file: primary header with the contract keys (minus `skip`),
/// one 2-amplifier image.
fn write_raw(path: &Path, skip: &str, overrides: &[(&str, &str)]) {
    let mut f = FitsFile::create(path).open().unwrap();
    let hdu = f.primary_hdu().unwrap();
    let visit = 2026112200007i64;
    let ints: [(&str, i64); 4] = [
        ("VISIT", visit),
        ("EXPOSURE", visit * 10 + 1),
        ("SNAP", 1),
        ("DETECTOR", 42),
    ];
    for (k, v) in ints {
        if k != skip {
            match overrides.iter().find(|(o, _)| *o == k) {
                Some((_, s)) => hdu.write_key(&mut f, k, s.to_string()).unwrap(),
                None => hdu.write_key(&mut f, k, v).unwrap(),
            }
        }
    }
    let floats: [(&str, f64); 3] = [
        ("MJD-OBS", 61_000.1),
        ("MJD-END", 61_000.1 + 15.0 / 86_400.0),
        ("EXPTIME", 15.0),
    ];
    for (k, v) in floats {
        if k != skip {
            hdu.write_key(&mut f, k, v).unwrap();
        }
    }
    if skip != "BAND" {
        let band = overrides
            .iter()
            .find(|(o, _)| *o == "BAND")
            .map_or("r", |(_, s)| s);
        hdu.write_key(&mut f, "BAND", band).unwrap();
    }
    for amp in 0..2 {
        let desc = ImageDescription {
            data_type: ImageType::Long,
            dimensions: &[64, 80],
        };
        let img = f.create_image(format!("AMP{amp:02}"), &desc).unwrap();
        let data: Vec<i32> = (0..64 * 80).map(|i| 1000 + (i % 97)).collect();
        img.write_image(&mut f, &data).unwrap();
    }
}

#[test]
fn a_good_file_is_announced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw.fits");
    write_raw(&path, "", &[]);
    let e = ingest_file(&path, None).unwrap();
    assert_eq!(e.visit, VisitId(2026112200007));
    assert_eq!(e.exposure.snap(), 1);
    assert_eq!(e.detector, DetectorId(42));
    assert!(e.checksum.starts_with("sha256:") && e.checksum.len() == 7 + 64);
    assert_eq!(e.size_bytes, std::fs::metadata(&path).unwrap().len());
    assert!(e.image_uri.starts_with("file:///"));
    // Shutter close from MJD-END (TAI) in UTC: 37 s earlier than the TAI label. FITS
    // writes 15 significant digits: ~1 µs on an MJD.
    let close = MjdTai(61_000.1 + 15.0 / 86_400.0).to_utc().unwrap();
    assert!(
        (e.shutter_close - close).num_microseconds().unwrap().abs() <= 5,
        "{} vs {close}",
        e.shutter_close
    );
}

#[test]
fn every_missing_key_is_named() {
    for key in [
        "VISIT", "EXPOSURE", "SNAP", "DETECTOR", "BAND", "MJD-OBS", "MJD-END", "EXPTIME",
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raw.fits");
        write_raw(&path, key, &[]);
        let err = ingest_file(&path, None).unwrap_err();
        assert!(
            matches!(err, IngestError::MissingKey { key: k, .. } if k == key),
            "{key}: {err}"
        );
        assert_eq!(err.reason(), "missing_header_key");
        assert_eq!(dead_letter(&path, &err).reason, "missing_header_key");
    }
}

#[test]
fn bad_values_are_refused_with_the_key() {
    for (key, value) in [
        ("BAND", "q"),
        ("VISIT", "many"),
        ("EXPOSURE", "20261122000090"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("raw.fits");
        write_raw(&path, "", &[(key, value)]);
        let err = ingest_file(&path, None).unwrap_err();
        assert!(
            matches!(err, IngestError::BadKey { key: k, .. } if k == key),
            "{key}: {err}"
        );
        assert_eq!(err.class(), ErrorClass::BadInput);
    }
}

#[test]
fn truncated_and_garbage_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("raw.fits");
    write_raw(&path, "", &[]);
    let bytes = std::fs::read(&path).unwrap();
    let cut = dir.path().join("cut.fits");
    std::fs::write(&cut, &bytes[..bytes.len() - 2880 * 2]).unwrap();
    let err = ingest_file(&cut, None).unwrap_err();
    assert!(
        matches!(
            err,
            IngestError::Truncated { .. } | IngestError::Unreadable { .. }
        ),
        "{err}"
    );

    let junk = dir.path().join("junk.fits");
    std::fs::write(&junk, b"SIMPLE? no, this is not FITS at all").unwrap();
    assert_eq!(
        ingest_file(&junk, None).unwrap_err().reason(),
        "unreadable_fits"
    );

    let err = ingest_file(&dir.path().join("absent.fits"), None).unwrap_err();
    assert!(matches!(
        err,
        IngestError::Unreadable { .. } | IngestError::Io { .. }
    ));
    let letter = dead_letter(&junk, &ingest_file(&junk, None).unwrap_err());
    assert!(
        matches!(letter.original, Original::Reference { ref uri } if uri.ends_with("junk.fits"))
    );
}

#[tokio::test]
async fn the_watcher_announces_good_files_and_dead_letters_bad_ones() {
    use apflow_core::bus::{Bus, EventConsumer, EventPublisher, Topics};
    use apflow_core::events::{DeadLetter, RawImageReady};

    let dir = tempfile::tempdir().unwrap();
    write_raw(&dir.path().join("a.fits"), "", &[]);
    std::fs::write(dir.path().join("b.fits"), b"garbage").unwrap();
    std::fs::write(dir.path().join("notes.txt"), b"ignored").unwrap();

    let bus = Bus::memory();
    let topics = Topics::new("t.");
    bus.ensure_topics(&topics.stage_topics(1)).await.unwrap();
    let publisher = EventPublisher::new(bus, topics);
    let mut raw = EventConsumer::<RawImageReady>::subscribe(&publisher, "p", "test")
        .await
        .unwrap();
    let mut dlq = EventConsumer::<DeadLetter>::subscribe(&publisher, "d", "test")
        .await
        .unwrap();

    let mut w = watch::DirectoryWatcher::new(dir.path());
    assert_eq!(
        w.poll(&publisher).await.unwrap(),
        watch::PollOutcome::default(),
        "first poll only sizes files"
    );
    assert_eq!(
        w.poll(&publisher).await.unwrap(),
        watch::PollOutcome {
            ingested: 1,
            rejected: 1
        }
    );
    assert_eq!(
        w.poll(&publisher).await.unwrap(),
        watch::PollOutcome::default(),
        "files are taken once"
    );

    let (e, _) = raw.next().await.unwrap();
    assert_eq!(e.detector, DetectorId(42));
    let (l, _) = dlq.next().await.unwrap();
    assert_eq!(l.reason, "unreadable_fits");
    assert!(l.detail.contains("b.fits"));
}
