//! Errors of APDB operations.

use crate::schema::{SchemaVersion, ValueError};

/// What a caller should do with an [`ApdbError`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorKind {
    /// External and transient (database busy, node down, timeout): back off and retry.
    Retryable,
    /// The input or configuration is wrong: do not retry; dead-letter or fix the config.
    BadInput,
    /// A bug or corrupted database: fail loudly.
    Internal,
}

/// A boxed backend error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// An APDB operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApdbError {
    /// The URL does not name a backend.
    #[error(
        "APDB URL {url:?} is not understood ({reason}); use sqlite:///path/to/apdb.db or scylla://host:port/keyspace"
    )]
    BadUrl {
        /// The URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The backend exists but was compiled out.
    #[error(
        "the {backend} APDB backend is not compiled into this apflow; rebuild with `--features {feature}`"
    )]
    BackendNotCompiled {
        /// Backend name.
        backend: &'static str,
        /// The cargo feature that enables it.
        feature: &'static str,
    },
    /// The database has a schema this code cannot use.
    #[error(
        "APDB at {url} has schema version {found}, but this apflow reads and writes version {expected}; use an apflow built for {found}, or create a new APDB with `apflow apdb create`"
    )]
    SchemaMismatch {
        /// Where.
        url: String,
        /// Version in the database.
        found: SchemaVersion,
        /// Version of this code.
        expected: SchemaVersion,
    },
    /// No APDB there yet.
    #[error("no APDB at {url} ({reason}); create one with `apflow apdb create {url}`")]
    NotInitialized {
        /// Where.
        url: String,
        /// What was missing.
        reason: String,
    },
    /// `create` on an existing APDB.
    #[error("an APDB already exists at {url}; remove it first or open it instead")]
    AlreadyExists {
        /// Where.
        url: String,
    },
    /// The caller passed inconsistent data.
    #[error("bad input to APDB {op}: {reason}")]
    BadInput {
        /// Operation.
        op: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// The database could not be reached or was busy; retrying later may succeed.
    #[error(
        "APDB {op} failed, the database is busy or unreachable (retry with backoff; check the database is up): {source}"
    )]
    Unavailable {
        /// Operation.
        op: &'static str,
        /// Cause.
        source: BoxError,
    },
    /// A row does not decode into its record.
    #[error("APDB table {table} holds a row this apflow cannot read: {source}")]
    Corrupt {
        /// Table.
        table: &'static str,
        /// Cause.
        source: ValueError,
    },
    /// Anything else: a bug or an unexpected database error.
    #[error("APDB {op} failed: {source}")]
    Internal {
        /// Operation.
        op: &'static str,
        /// Cause.
        source: BoxError,
    },
}

impl ApdbError {
    /// Whether to retry, reject the input, or fail.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Unavailable { .. } => ErrorKind::Retryable,
            Self::BadUrl { .. }
            | Self::BackendNotCompiled { .. }
            | Self::SchemaMismatch { .. }
            | Self::NotInitialized { .. }
            | Self::AlreadyExists { .. }
            | Self::BadInput { .. } => ErrorKind::BadInput,
            Self::Corrupt { .. } | Self::Internal { .. } => ErrorKind::Internal,
        }
    }
    /// The dead-letter class of this error (what a stage does with its input).
    pub fn class(&self) -> apflow_core::events::ErrorClass {
        use apflow_core::events::ErrorClass;
        match self.kind() {
            ErrorKind::Retryable => ErrorClass::Retryable,
            ErrorKind::BadInput => ErrorClass::BadInput,
            ErrorKind::Internal => ErrorClass::Internal,
        }
    }
    /// Whether retrying may succeed.
    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Retryable
    }
    pub(crate) fn bad_input(op: &'static str, reason: impl Into<String>) -> Self {
        Self::BadInput {
            op,
            reason: reason.into(),
        }
    }
}
