//! `apflow alert show`: a packet file (plain and gzip) rendered as JSON, cutouts as PNG
//! thumbnails; a missing file or an id without an archive is a clear error.

mod common;
use common::apflow;

use std::io::Write;

use apflow_alert_dist::packet::{AlertEncoder, AssembleConfig, assemble};
use apflow_alert_dist::synth;

/// (width, height) from a PNG's IHDR.
fn png_size(path: &std::path::Path) -> (u32, u32) {
    let b = std::fs::read(path).unwrap();
    assert_eq!(&b[1..4], b"PNG");
    let be = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    (be(16), be(20))
}

#[test]
fn alert_show_renders_json_and_png_thumbnails() {
    let dir = tempfile::tempdir().unwrap();
    let v = synth::visit(5, 2, 2, 2, 32);
    let out = assemble(
        &v.sources(),
        &v.context,
        &AssembleConfig::default(),
        &mut AlertEncoder::new(),
    );
    let p = &out.packets[0];
    let file = dir.path().join("a.avro");
    std::fs::write(&file, &p.bytes).unwrap();
    let gz = dir.path().join("a.avro.gz");
    let mut enc = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    enc.write_all(&p.bytes).unwrap();
    enc.finish().unwrap();

    let png = dir.path().join("png");
    for f in [&file, &gz] {
        let o = apflow()
            .args(["alert", "show"])
            .arg(f)
            .arg("--png")
            .arg(&png)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(j["diaSourceId"], p.dia_source_id.0);
        assert_eq!(j["diaSource"]["diaSourceId"], p.dia_source_id.0);
        assert_eq!(j["_schema_id"], 1100);
        assert_eq!(j["cutoutDifference"]["width"], 32);
        assert_eq!(j["mpc_orbits"], serde_json::Value::Null);
    }
    for name in ["difference", "science", "template"] {
        let f = png.join(format!("{}_{name}.png", p.dia_source_id.0));
        // 32 px scaled by ceil(256 / 32) = 8.
        assert_eq!(png_size(&f), (256, 256), "{}", f.display());
    }

    let o = apflow()
        .args(["alert", "show"])
        .arg(dir.path().join("missing.avro"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.avro"));
    let o = apflow().args(["alert", "show", "123456"]).output().unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("archive"));
    std::fs::write(dir.path().join("junk.avro"), b"\0\0\0\x04\x4cjunk").unwrap();
    let o = apflow()
        .args(["alert", "show"])
        .arg(dir.path().join("junk.avro"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("decoding"));
}
