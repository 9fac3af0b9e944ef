//! A read-only, Confluent-compatible schema registry for apflow's alert schemas, and
//! registration of those schemas in an external Confluent-compatible registry.
//!
//! Community brokers decode alerts by reading the 5-byte Confluent header
//! ([`crate::wire`]) and fetching the writer schema by id from a registry. Rubin serves
//! a public read-only registry for that; apflow serves the same API for its own schemas
//! ([`SchemaRegistry::router`]), so the registry clients of `confluent-kafka`, Fink,
//! Lasair, … work unchanged:
//!
//! | request | answer |
//! |---|---|
//! | `GET /schemas/ids/<id>` | `{"schema": "<schema JSON as a string>"}` |
//! | `GET /subjects` | `["alerts-v11-value", …]` |
//! | `GET /subjects/<s>/versions` | `[1, 2, …]` |
//! | `GET /subjects/<s>/versions/<v>` (`<v>` a version, `latest` or `-1`) | `{"subject", "id", "version", "schema"}` |
//!
//! Errors carry Confluent's body `{"error_code": …, "message": …}`: 40401 subject not
//! found, 40402 version not found, 40403 schema not found (HTTP 404), 42202 invalid
//! version (HTTP 422). Every answer has content type
//! `application/vnd.schemaregistry.v1+json` (Confluent Schema Registry API reference,
//! <https://docs.confluent.io/platform/current/schema-registry/develop/api.html>).
//!
//! # Subject naming
//!
//! Subjects follow Confluent's `TopicNameStrategy`, as Rubin's registry does: the
//! value schema of topic `T` is registered under subject `T-value`
//! ([`subject_for_topic`]). apflow writes one topic per schema major version, so each
//! subject holds the minor versions of one major version.
//!
//! # Registration in an external registry
//!
//! [`register_all`] posts each schema to `POST /subjects/<s>/versions` of a configured
//! registry. Alerts carry apflow's ids (major × 100 + minor), so the external registry
//! must answer with the same id: with [`RegisterOptions::with_ids`] the request carries
//! the id, which Confluent accepts when the subject is in `IMPORT` mode; a registry that
//! assigns another id is reported as [`RegistrationError::IdMismatch`], never ignored.
//! The client speaks plain HTTP/1.1 (`http://` URLs); put a TLS-terminating proxy in
//! front of an `https://` registry.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The content type of every registry answer.
pub const CONTENT_TYPE: &str = "application/vnd.schemaregistry.v1+json";

/// One schema as the registry knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SchemaEntry {
    /// Schema id (major × 100 + minor, see [`crate::wire::schema_id`]).
    pub id: u32,
    /// Subject, `<topic>-value` ([`subject_for_topic`]).
    pub subject: String,
    /// Version within the subject, from 1.
    pub version: u32,
    /// The Avro schema, as JSON text.
    pub schema: String,
}

/// The subject of a topic's value schema (Confluent's `TopicNameStrategy`).
pub fn subject_for_topic(topic: &str) -> String {
    format!("{topic}-value")
}

/// Why a set of schemas cannot be served.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryError {
    /// Two entries share an id.
    #[error("schema id {0} appears twice; every schema needs its own id")]
    DuplicateId(u32),
    /// Two entries share (subject, version).
    #[error("subject {subject} has version {version} twice")]
    DuplicateVersion {
        /// The subject.
        subject: String,
        /// The version.
        version: u32,
    },
    /// A version below 1.
    #[error("subject {0}: versions start at 1")]
    ZeroVersion(String),
    /// The schema text is not JSON.
    #[error("schema id {id} is not valid JSON: {reason}")]
    NotJson {
        /// The id.
        id: u32,
        /// The parser's message.
        reason: String,
    },
}

/// Which version of a subject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VersionSel {
    /// The highest version.
    Latest,
    /// A given version.
    Number(u32),
}

impl VersionSel {
    /// Parses Confluent's version path segment: a positive number, `latest` or `-1`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "latest" | "-1" => Some(Self::Latest),
            _ => s.parse().ok().filter(|v| *v >= 1).map(Self::Number),
        }
    }
}

/// A failed lookup, with Confluent's error code.
#[derive(Debug, Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum LookupError {
    /// 40401.
    #[error("Subject '{0}' not found.")]
    SubjectNotFound(String),
    /// 40402.
    #[error("Version {0} not found.")]
    VersionNotFound(String),
    /// 40403.
    #[error("Schema {0} not found")]
    SchemaNotFound(String),
    /// 42202.
    #[error(
        "The specified version '{0}' is not a valid version id. Allowed values are between [1, 2^31-1] and the string \"latest\""
    )]
    InvalidVersion(String),
}

impl LookupError {
    /// Confluent's `error_code`.
    pub fn error_code(&self) -> u32 {
        match self {
            Self::SubjectNotFound(_) => 40401,
            Self::VersionNotFound(_) => 40402,
            Self::SchemaNotFound(_) => 40403,
            Self::InvalidVersion(_) => 42202,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::InvalidVersion(_) => StatusCode::UNPROCESSABLE_ENTITY,
            _ => StatusCode::NOT_FOUND,
        }
    }
}

/// The schemas apflow serves, indexed by id and by subject.
#[derive(Clone, Debug, Default)]
pub struct SchemaRegistry {
    by_id: BTreeMap<u32, Arc<SchemaEntry>>,
    subjects: BTreeMap<String, BTreeMap<u32, Arc<SchemaEntry>>>,
}

impl SchemaRegistry {
    /// Indexes `entries`; refuses duplicate ids, duplicate (subject, version) pairs,
    /// version 0 and schema text that is not JSON.
    pub fn new(entries: impl IntoIterator<Item = SchemaEntry>) -> Result<Self, RegistryError> {
        let mut r = Self::default();
        for e in entries {
            if let Err(err) = serde_json::from_str::<serde::de::IgnoredAny>(&e.schema) {
                return Err(RegistryError::NotJson {
                    id: e.id,
                    reason: err.to_string(),
                });
            }
            if e.version == 0 {
                return Err(RegistryError::ZeroVersion(e.subject));
            }
            if r.by_id.contains_key(&e.id) {
                return Err(RegistryError::DuplicateId(e.id));
            }
            let versions = r.subjects.entry(e.subject.clone()).or_default();
            if versions.contains_key(&e.version) {
                return Err(RegistryError::DuplicateVersion {
                    subject: e.subject,
                    version: e.version,
                });
            }
            let e = Arc::new(e);
            versions.insert(e.version, e.clone());
            r.by_id.insert(e.id, e);
        }
        Ok(r)
    }

    /// The schema apflow writes today ([`crate::schema::SCHEMA_ID`]), under the subject
    /// of the topic `producer` sends it to, version 1.
    pub fn current(producer: &crate::producer::ProducerConfig) -> Result<Self, RegistryError> {
        let id = crate::schema::SCHEMA_ID;
        Self::new([SchemaEntry {
            id,
            subject: subject_for_topic(&producer.topic(id / 100)),
            version: 1,
            schema: crate::schema::alert_schema().json.clone(),
        }])
    }

    /// Every entry, by id.
    pub fn entries(&self) -> impl Iterator<Item = &SchemaEntry> {
        self.by_id.values().map(|e| e.as_ref())
    }

    /// The schema with id `id`.
    pub fn by_id(&self, id: u32) -> Option<&SchemaEntry> {
        self.by_id.get(&id).map(|e| e.as_ref())
    }

    /// Subject names, sorted.
    pub fn subjects(&self) -> Vec<&str> {
        self.subjects.keys().map(String::as_str).collect()
    }

    /// The versions of `subject`, ascending.
    pub fn versions(&self, subject: &str) -> Result<Vec<u32>, LookupError> {
        self.subjects
            .get(subject)
            .map(|v| v.keys().copied().collect())
            .ok_or_else(|| LookupError::SubjectNotFound(subject.to_owned()))
    }

    /// One version of `subject`.
    pub fn version(&self, subject: &str, sel: VersionSel) -> Result<&SchemaEntry, LookupError> {
        let versions = self
            .subjects
            .get(subject)
            .ok_or_else(|| LookupError::SubjectNotFound(subject.to_owned()))?;
        let found = match sel {
            VersionSel::Latest => versions.values().next_back(),
            VersionSel::Number(v) => versions.get(&v),
        };
        found.map(|e| e.as_ref()).ok_or_else(|| {
            LookupError::VersionNotFound(match sel {
                VersionSel::Latest => "latest".to_owned(),
                VersionSel::Number(v) => v.to_string(),
            })
        })
    }

    /// The HTTP API (see the module docs); merge it into the service's router
    /// (`apflow_core::telemetry::http`).
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/schemas/ids/{id}", get(get_by_id))
            .route("/subjects", get(get_subjects))
            .route("/subjects/{subject}/versions", get(get_versions))
            .route("/subjects/{subject}/versions/{version}", get(get_version))
            .with_state(self)
    }
}

fn json_response(status: StatusCode, body: &impl Serialize) -> Response {
    let bytes = serde_json::to_vec(body).expect("registry answers serialise");
    let mut r = (status, bytes).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    r
}

#[derive(Serialize)]
struct ErrorBody {
    error_code: u32,
    message: String,
}

fn error_response(e: &LookupError) -> Response {
    json_response(
        e.status(),
        &ErrorBody {
            error_code: e.error_code(),
            message: e.to_string(),
        },
    )
}

#[derive(Serialize)]
struct SchemaBody<'a> {
    schema: &'a str,
}

async fn get_by_id(State(r): State<Arc<SchemaRegistry>>, Path(id): Path<String>) -> Response {
    match id.parse::<u32>().ok().and_then(|i| r.by_id(i)) {
        Some(e) => json_response(StatusCode::OK, &SchemaBody { schema: &e.schema }),
        None => error_response(&LookupError::SchemaNotFound(id)),
    }
}

async fn get_subjects(State(r): State<Arc<SchemaRegistry>>) -> Response {
    json_response(StatusCode::OK, &r.subjects())
}

async fn get_versions(
    State(r): State<Arc<SchemaRegistry>>,
    Path(subject): Path<String>,
) -> Response {
    match r.versions(&subject) {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => error_response(&e),
    }
}

async fn get_version(
    State(r): State<Arc<SchemaRegistry>>,
    Path((subject, version)): Path<(String, String)>,
) -> Response {
    let Some(sel) = VersionSel::parse(&version) else {
        return error_response(&LookupError::InvalidVersion(version));
    };
    match r.version(&subject, sel) {
        Ok(e) => json_response(StatusCode::OK, e),
        Err(e) => error_response(&e),
    }
}

// ---------------------------------------------------------------------------------
// Registration in an external registry.

/// How to register in an external registry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegisterOptions {
    /// Send apflow's id with each schema (the subject must be in `IMPORT` mode on a
    /// Confluent registry). Without it the registry picks ids, and registration fails
    /// unless they equal apflow's.
    pub with_ids: bool,
}

/// Why registration in an external registry failed.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum RegistrationError {
    /// The URL is not `http://host[:port][/prefix]`.
    #[error("registry URL {url} is not usable: {reason} (expected http://host[:port][/path])")]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// Connecting or talking to the registry failed (retry later).
    #[error("registry at {url} unreachable: {reason}")]
    Unreachable {
        /// The URL.
        url: String,
        /// The I/O or protocol error.
        reason: String,
    },
    /// The registry refused the schema.
    #[error("registry refused schema {id} for subject {subject}: HTTP {status}: {body}")]
    Refused {
        /// The subject.
        subject: String,
        /// apflow's id.
        id: u32,
        /// HTTP status.
        status: u16,
        /// The answer's body (Confluent's error JSON).
        body: String,
    },
    /// The registry assigned a different id: alerts framed with apflow's id would not
    /// decode with it.
    #[error(
        "registry gave schema of subject {subject} id {got}, apflow frames it with {expected}: put the subject in IMPORT mode and set with_ids"
    )]
    IdMismatch {
        /// The subject.
        subject: String,
        /// apflow's id.
        expected: u32,
        /// The registry's id.
        got: u32,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RegisterBody<'a> {
    schema: &'a str,
    schema_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<u32>,
}

#[derive(Deserialize)]
struct RegisterAnswer {
    id: u32,
}

/// Registers every schema of `registry` at the Confluent-compatible registry `url`
/// (`POST <url>/subjects/<subject>/versions`), in id order. Registering a schema the
/// registry already holds is harmless (it answers with the existing id).
pub async fn register_all(
    url: &str,
    registry: &SchemaRegistry,
    options: &RegisterOptions,
) -> Result<(), RegistrationError> {
    let base = parse_base(url)?;
    for e in registry.entries() {
        let body = serde_json::to_vec(&RegisterBody {
            schema: &e.schema,
            schema_type: "AVRO",
            id: options.with_ids.then_some(e.id),
        })
        .expect("request serialises");
        let path = format!(
            "{}/subjects/{}/versions",
            base.prefix,
            percent_encode(&e.subject)
        );
        let (status, answer) = post_json(&base, &path, body).await.map_err(|reason| {
            RegistrationError::Unreachable {
                url: url.to_owned(),
                reason,
            }
        })?;
        if !(200..300).contains(&status) {
            return Err(RegistrationError::Refused {
                subject: e.subject.clone(),
                id: e.id,
                status,
                body: String::from_utf8_lossy(&answer).into_owned(),
            });
        }
        let got: RegisterAnswer =
            serde_json::from_slice(&answer).map_err(|err| RegistrationError::Refused {
                subject: e.subject.clone(),
                id: e.id,
                status,
                body: format!(
                    "answer is not {{\"id\": …}} ({err}): {}",
                    String::from_utf8_lossy(&answer)
                ),
            })?;
        if got.id != e.id {
            return Err(RegistrationError::IdMismatch {
                subject: e.subject.clone(),
                expected: e.id,
                got: got.id,
            });
        }
        tracing::info!(subject = %e.subject, id = e.id, "Schema registered.");
    }
    Ok(())
}

struct Base {
    authority: String,
    prefix: String,
}

fn parse_base(url: &str) -> Result<Base, RegistrationError> {
    let bad = |reason: &str| RegistrationError::BadUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: hyper::Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => return Err(bad("https is not supported; use a TLS proxy")),
        _ => return Err(bad("the scheme must be http")),
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    let authority = if authority.port().is_some() {
        authority.to_string()
    } else {
        format!("{}:80", authority.host())
    };
    Ok(Base {
        authority,
        prefix: uri.path().trim_end_matches('/').to_owned(),
    })
}

/// Percent-encodes a subject for a path segment (RFC 3986 unreserved kept).
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

async fn post_json(base: &Base, path: &str, body: Vec<u8>) -> Result<(u16, Vec<u8>), String> {
    use http_body_util::{BodyExt, Full};
    use hyper_util::rt::TokioIo;

    let stream = tokio::net::TcpStream::connect(&base.authority)
        .await
        .map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    let driver = tokio::spawn(conn);
    let req = hyper::Request::post(path)
        .header(header::HOST, &base.authority)
        .header(header::CONTENT_TYPE, CONTENT_TYPE)
        .header(header::ACCEPT, CONTENT_TYPE)
        .body(Full::new(hyper::body::Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let res = sender.send_request(req).await.map_err(|e| e.to_string())?;
    let status = res.status().as_u16();
    let bytes = res
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes()
        .to_vec();
    drop(sender);
    driver.abort();
    Ok((status, bytes))
}

#[cfg(test)]
pub(crate) mod tests;
