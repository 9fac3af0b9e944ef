//! Packet assembly: one packet per DiaSource, the 12-month history window, solar-system
//! sources, and the size policy (shrink cutouts, else dead-letter with the reason).

use std::collections::HashSet;

use apache_avro::types::Value as A;
use apflow_alert_dist::packet::{
    AlertEncoder, AssembleConfig, DeadLetterReason, assemble, decode_framed,
};
use apflow_alert_dist::synth;
use apflow_apdb::partition::HISTORY_DAYS;
use apflow_core::ids::DiaObjectId;

fn field<'a>(v: &'a A, name: &str) -> &'a A {
    let A::Record(fs) = v else {
        panic!("not a record")
    };
    match &fs.iter().find(|(k, _)| k == name).unwrap().1 {
        A::Union(_, b) => b,
        v => v,
    }
}

#[test]
fn one_packet_per_dia_source_with_a_years_history() {
    let v = synth::visit(21, 20, 4, 6, 30);
    let mut enc = AlertEncoder::new();
    let out = assemble(
        &v.sources(),
        &v.context,
        &AssembleConfig::default(),
        &mut enc,
    );
    assert!(out.dead_letters.is_empty(), "{:?}", out.dead_letters);
    assert_eq!(out.packets.len(), 20);
    let ids: HashSet<_> = out.packets.iter().map(|p| p.dia_source_id).collect();
    assert_eq!(ids.len(), 20);
    for (p, ds) in out.packets.iter().zip(&v.dia_sources) {
        assert_eq!(p.dia_source_id, ds.dia_source_id);
        assert_eq!(p.cutout_size, Some(30));
        assert!(!p.shrunk);
        let d = decode_framed(&p.bytes).unwrap();
        assert_eq!(field(&d.value, "diaSourceId"), &A::Long(ds.dia_source_id.0));
        assert_eq!(
            field(&d.value, "observation_reason"),
            &A::String("wfd".into())
        );
        match ds.ss_object_id {
            Some(_) => {
                assert_eq!(field(&d.value, "prvDiaSources"), &A::Null);
                let ss = field(&d.value, "ssSource");
                assert!(
                    matches!(field(ss, "designation"), A::String(s) if s.starts_with("2026 A"))
                );
            }
            None => {
                // synth puts 2 sources and 1 forced source older than a year per
                // object: the window keeps exactly the 4 and 6 recent ones, oldest first.
                let A::Array(prv) = field(&d.value, "prvDiaSources") else {
                    panic!()
                };
                assert_eq!(prv.len(), 4);
                let times: Vec<f64> = prv
                    .iter()
                    .map(|s| match field(s, "midpointMjdTai") {
                        A::Double(t) => *t,
                        _ => panic!(),
                    })
                    .collect();
                assert!(times.windows(2).all(|w| w[0] <= w[1]));
                assert!(times.iter().all(|t| *t >= v.t - HISTORY_DAYS && *t < v.t));
                let A::Array(f) = field(&d.value, "prvDiaForcedSources") else {
                    panic!()
                };
                assert_eq!(f.len(), 6);
                let o = field(&d.value, "diaObject");
                assert_eq!(
                    field(o, "diaObjectId"),
                    &A::Long(ds.dia_object_id.unwrap().0)
                );
            }
        }
    }
}

#[test]
fn oversized_packets_get_smaller_cutouts_then_a_dead_letter() {
    let v = synth::visit(22, 3, 2, 2, 64);
    let mut enc = AlertEncoder::new();
    let full = assemble(
        &v.sources(),
        &v.context,
        &AssembleConfig::default(),
        &mut enc,
    );
    let biggest = full.packets.iter().map(|p| p.bytes.len()).max().unwrap();
    let smallest = full.packets.iter().map(|p| p.bytes.len()).min().unwrap();
    assert!(
        full.packets
            .iter()
            .all(|p| p.cutout_size == Some(64) && !p.shrunk)
    );

    // A limit a bit under the full size: every packet is rebuilt with smaller cutouts
    // (64 → 48) and fits.
    let cfg = AssembleConfig {
        max_packet_bytes: smallest - 1,
        ..Default::default()
    };
    let out = assemble(&v.sources(), &v.context, &cfg, &mut enc);
    assert!(out.dead_letters.is_empty());
    for p in &out.packets {
        assert!(p.shrunk && p.bytes.len() <= cfg.max_packet_bytes, "{p:?}");
        assert_eq!(p.cutout_size, Some(48));
        let d = decode_framed(&p.bytes).unwrap();
        let A::Bytes(fits) = field(&d.value, "cutoutDifference") else {
            panic!()
        };
        let img = apflow_alert_dist::fits::read_image(fits, None).unwrap();
        assert_eq!((img.width, img.height), (48, 48));
    }
    assert!(biggest > cfg.max_packet_bytes);

    // A limit no cutout size meets: dead-lettered with the size, limit and the
    // smallest cutout side tried (the minimum), never dropped silently.
    let cfg = AssembleConfig {
        max_packet_bytes: 50_000,
        ..Default::default()
    };
    let out = assemble(&v.sources(), &v.context, &cfg, &mut enc);
    assert!(out.packets.is_empty());
    assert_eq!(out.dead_letters.len(), 3);
    for d in &out.dead_letters {
        match &d.reason {
            DeadLetterReason::TooLarge {
                bytes,
                limit,
                cutout_size,
            } => {
                assert_eq!((*limit, *cutout_size), (50_000, 30));
                assert!(*bytes > 50_000);
            }
            other => panic!("{other}"),
        }
    }
}

#[test]
fn a_source_whose_dia_object_is_missing_is_dead_lettered() {
    let mut v = synth::visit(23, 2, 1, 1, 30);
    v.dia_sources[0].dia_object_id = Some(DiaObjectId(-5));
    let mut enc = AlertEncoder::new();
    let out = assemble(
        &v.sources(),
        &v.context,
        &AssembleConfig::default(),
        &mut enc,
    );
    assert_eq!(out.packets.len(), 1);
    assert_eq!(out.dead_letters.len(), 1);
    assert!(matches!(
        out.dead_letters[0].reason,
        DeadLetterReason::MissingDiaObject(-5)
    ));
}
