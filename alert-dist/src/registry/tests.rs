use std::sync::{Arc, Mutex};

use axum::routing::post;

use super::*;

pub(crate) const SMALL_SCHEMA: &str = r#"{"type":"record","name":"alert","namespace":"apflow.test","fields":[{"name":"diaSourceId","type":"long"},{"name":"note","type":"string"}]}"#;

fn entry(id: u32, subject: &str, version: u32) -> SchemaEntry {
    SchemaEntry {
        id,
        subject: subject.to_owned(),
        version,
        schema: SMALL_SCHEMA.replace("alert", &format!("alert{id}")),
    }
}

fn registry() -> SchemaRegistry {
    SchemaRegistry::new([
        entry(1100, "alerts-v11-value", 1),
        entry(1101, "alerts-v11-value", 2),
        entry(1200, "alerts-v12-value", 1),
    ])
    .unwrap()
}

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("127.0.0.1:{}", addr.port())
}

/// A plain GET: (status, content type, body).
async fn get(authority: &str, path: &str) -> (u16, String, serde_json::Value) {
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
    let body = res.into_body().collect().await.unwrap().to_bytes();
    (status, ct, serde_json::from_slice(&body).unwrap())
}

#[test]
fn subjects_follow_the_topic_name_strategy() {
    assert_eq!(subject_for_topic("alerts-v11"), "alerts-v11-value");
}

#[test]
fn bad_schema_sets_are_refused() {
    assert_eq!(
        SchemaRegistry::new([entry(1, "a", 1), entry(1, "b", 1)]).unwrap_err(),
        RegistryError::DuplicateId(1)
    );
    assert!(matches!(
        SchemaRegistry::new([entry(1, "a", 1), entry(2, "a", 1)]).unwrap_err(),
        RegistryError::DuplicateVersion { version: 1, .. }
    ));
    assert_eq!(
        SchemaRegistry::new([entry(1, "a", 0)]).unwrap_err(),
        RegistryError::ZeroVersion("a".into())
    );
    let mut e = entry(1, "a", 1);
    e.schema = "{not json".into();
    assert!(matches!(
        SchemaRegistry::new([e]).unwrap_err(),
        RegistryError::NotJson { id: 1, .. }
    ));
}

#[test]
fn versions_parse_as_confluent_does() {
    assert_eq!(VersionSel::parse("latest"), Some(VersionSel::Latest));
    assert_eq!(VersionSel::parse("-1"), Some(VersionSel::Latest));
    assert_eq!(VersionSel::parse("3"), Some(VersionSel::Number(3)));
    assert_eq!(VersionSel::parse("0"), None);
    assert_eq!(VersionSel::parse("x"), None);
}

#[tokio::test]
async fn the_http_api_answers_like_a_confluent_registry() {
    let reg = Arc::new(registry());
    let addr = serve(reg.clone().router()).await;

    let (s, ct, body) = get(&addr, "/schemas/ids/1101").await;
    assert_eq!((s, ct.as_str()), (200, CONTENT_TYPE));
    assert_eq!(
        body["schema"].as_str().unwrap(),
        reg.by_id(1101).unwrap().schema
    );
    // The schema string is the schema itself, parseable as JSON.
    let parsed: serde_json::Value = serde_json::from_str(body["schema"].as_str().unwrap()).unwrap();
    assert_eq!(parsed["name"], "alert1101");

    let (s, _, body) = get(&addr, "/subjects").await;
    assert_eq!(s, 200);
    assert_eq!(
        body,
        serde_json::json!(["alerts-v11-value", "alerts-v12-value"])
    );

    let (s, _, body) = get(&addr, "/subjects/alerts-v11-value/versions").await;
    assert_eq!((s, body), (200, serde_json::json!([1, 2])));

    for (v, id) in [("1", 1100), ("2", 1101), ("latest", 1101), ("-1", 1101)] {
        let (s, _, body) = get(&addr, &format!("/subjects/alerts-v11-value/versions/{v}")).await;
        assert_eq!(s, 200, "{v}");
        assert_eq!(body["id"], id, "{v}");
        assert_eq!(body["subject"], "alerts-v11-value");
        assert_eq!(
            body["schema"].as_str().unwrap(),
            reg.by_id(id).unwrap().schema
        );
    }

    for (path, status, code) in [
        ("/schemas/ids/999", 404, 40403),
        ("/schemas/ids/abc", 404, 40403),
        ("/subjects/nope-value/versions", 404, 40401),
        ("/subjects/nope-value/versions/1", 404, 40401),
        ("/subjects/alerts-v11-value/versions/7", 404, 40402),
        ("/subjects/alerts-v11-value/versions/zero", 422, 42202),
    ] {
        let (s, ct, body) = get(&addr, path).await;
        assert_eq!((s, ct.as_str()), (status, CONTENT_TYPE), "{path}");
        assert_eq!(body["error_code"], code, "{path}");
        assert!(body["message"].as_str().unwrap().len() > 5, "{path}");
    }
}

#[derive(Debug, Clone, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Posted {
    schema: String,
    schema_type: String,
    id: Option<u32>,
}

/// A registry that records what it is sent and answers with `offset` + apflow's id
/// (or a fixed id when `fixed` is set).
async fn fake_external(fixed: Option<u32>) -> (String, Arc<Mutex<Vec<(String, String, Posted)>>>) {
    let seen: Arc<Mutex<Vec<(String, String, Posted)>>> = Arc::default();
    let s2 = seen.clone();
    let router = Router::new().route(
        "/prefix/subjects/{subject}/versions",
        post(
            move |Path(subject): Path<String>,
                  headers: axum::http::HeaderMap,
                  body: axum::body::Bytes| {
                let seen = s2.clone();
                async move {
                    let p: Posted = serde_json::from_slice(&body).unwrap();
                    let ct = headers[header::CONTENT_TYPE].to_str().unwrap().to_owned();
                    let id = fixed.or(p.id).unwrap_or(1);
                    seen.lock().unwrap().push((subject, ct, p));
                    serde_json::json!({ "id": id }).to_string()
                }
            },
        ),
    );
    (serve(router).await, seen)
}

#[tokio::test]
async fn registration_posts_each_schema_to_its_subject() {
    let reg = registry();
    let (addr, seen) = fake_external(None).await;
    register_all(
        &format!("http://{addr}/prefix/"),
        &reg,
        &RegisterOptions { with_ids: true },
    )
    .await
    .unwrap();
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3);
    for ((subject, ct, p), e) in seen.iter().zip(reg.entries()) {
        assert_eq!(subject, &e.subject);
        assert_eq!(ct, CONTENT_TYPE);
        assert_eq!(p.schema, e.schema);
        assert_eq!(p.schema_type, "AVRO");
        assert_eq!(p.id, Some(e.id));
    }
}

#[tokio::test]
async fn registration_fails_when_the_registry_assigns_other_ids() {
    let (addr, _) = fake_external(Some(7)).await;
    let err = register_all(
        &format!("http://{addr}/prefix"),
        &registry(),
        &RegisterOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            RegistrationError::IdMismatch {
                expected: 1100,
                got: 7,
                ..
            }
        ),
        "{err}"
    );
}

#[tokio::test]
async fn registration_reports_refusals_and_bad_urls() {
    // No route for this prefix: the fake answers 404.
    let (addr, _) = fake_external(None).await;
    let err = register_all(
        &format!("http://{addr}/other"),
        &registry(),
        &RegisterOptions::default(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(err, RegistrationError::Refused { status: 404, .. }),
        "{err}"
    );
    for url in ["https://example.invalid", "ftp://x", "not a url"] {
        let err = register_all(url, &registry(), &RegisterOptions::default())
            .await
            .unwrap_err();
        assert!(
            matches!(err, RegistrationError::BadUrl { .. }),
            "{url}: {err}"
        );
    }
}
