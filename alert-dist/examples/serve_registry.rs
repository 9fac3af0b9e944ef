//! Serves apflow's schema registry API and an alert archive on 127.0.0.1 for the
//! Python checks (`scripts/python-checks`, `alert-dist/tests/python`): registry
//! clients of confluent-kafka fetch schemas by id and by subject, decode archived
//! alerts fetched over HTTP, and fastavro reads the nightly container files.
//!
//! Usage: `serve_registry DIR`. Writes an archive of fixed-seed alerts of a small
//! schema into DIR, prints one JSON line `{"url": …, "alerts": {id: note}, …}` and
//! serves until standard input closes.

use std::collections::BTreeMap;
use std::sync::Arc;

use apflow_alert_dist::archive::Archive;
use apflow_alert_dist::producer::FramedAlert;
use apflow_alert_dist::registry::{SchemaEntry, SchemaRegistry, subject_for_topic};
use apflow_alert_dist::wire::{frame_into, put_bytes, put_long};
use apflow_core::ids::{DetectorId, DiaSourceId, VisitId};

const V1: &str = r#"{"type":"record","name":"alert","namespace":"apflow.example","fields":[{"name":"diaSourceId","type":"long"},{"name":"note","type":"string"}]}"#;
const V2: &str = r#"{"type":"record","name":"alert","namespace":"apflow.example","fields":[{"name":"diaSourceId","type":"long"},{"name":"note","type":"string"},{"name":"score","type":["null","double"],"default":null}]}"#;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).ok_or("usage: serve_registry DIR")?;
    let subject = subject_for_topic("alerts-v11");
    let registry = Arc::new(SchemaRegistry::new([
        SchemaEntry {
            id: 1100,
            subject: subject.clone(),
            version: 1,
            schema: V1.into(),
        },
        SchemaEntry {
            id: 1101,
            subject: subject.clone(),
            version: 2,
            schema: V2.into(),
        },
    ])?);
    let archive = Arc::new(Archive::open(&dir)?);
    archive.put_schemas(&registry)?;

    // 30 alerts of schema 1100 over two nights.
    let mut alerts = Vec::new();
    let mut notes = BTreeMap::new();
    for (day, seq) in [(20261121u32, 3u32), (20261122, 8)] {
        for c in 0..15u32 {
            let id = DiaSourceId::new(VisitId::new(day, seq)?, DetectorId((c % 4) as u16), c)?.0;
            let note = format!("night {day} source {c}");
            let mut body = Vec::new();
            put_long(&mut body, id);
            put_bytes(&mut body, note.as_bytes());
            let mut framed = Vec::new();
            frame_into(1100, &body, &mut framed);
            alerts.push(FramedAlert {
                dia_source_id: id,
                framed: framed.into(),
            });
            notes.insert(
                id.to_string(),
                serde_json::json!({"note": note, "night": day}),
            );
        }
    }
    archive.put_batch(&alerts)?;

    let router = registry.router().merge(archive.clone().router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    println!(
        "{}",
        serde_json::json!({
            "url": format!("http://{addr}"),
            "subject": subject,
            "schemas": {"1100": V1, "1101": V2},
            "alerts": notes,
            "nights": {
                "20261121": archive.night_path(20261121, 1100),
                "20261122": archive.night_path(20261122, 1100),
            },
        })
    );
    tokio::spawn(async move { axum::serve(listener, router).await });
    tokio::task::spawn_blocking(|| {
        use std::io::Read;
        let mut sink = Vec::new();
        std::io::stdin().read_to_end(&mut sink)
    })
    .await??;
    Ok(())
}
