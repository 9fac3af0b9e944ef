//! Secrets in configuration (SASL passwords): inline, from a file, or from an
//! environment variable; never printed.

use std::fmt;

use serde::{Deserialize, Serialize, Serializer};

/// A secret value. In TOML: `password = "…"`, `password = { file = "/run/secrets/x" }`
/// or `password = { env = "KAFKA_PASSWORD" }`. `Debug` and `Serialize` show `"****"`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum Secret {
    /// The value itself.
    Inline(String),
    /// Read from a file (trailing newline trimmed).
    File {
        /// Path of the file.
        file: String,
    },
    /// Read from an environment variable.
    Env {
        /// Name of the variable.
        env: String,
    },
}

/// A secret that cannot be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The file cannot be read.
    #[error("cannot read secret file {path}: {source}")]
    File {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The variable is not set.
    #[error("secret environment variable {0} is not set")]
    Env(String),
}

impl Secret {
    /// The secret's value.
    pub fn reveal(&self) -> Result<String, SecretError> {
        match self {
            Self::Inline(s) => Ok(s.clone()),
            Self::File { file } => std::fs::read_to_string(file)
                .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
                .map_err(|source| SecretError::File {
                    path: file.clone(),
                    source,
                }),
            Self::Env { env } => std::env::var(env).map_err(|_| SecretError::Env(env.clone())),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Inline(_) => f.write_str("Secret(****)"),
            Self::File { file } => write!(f, "Secret(file {file})"),
            Self::Env { env } => write!(f, "Secret(env {env})"),
        }
    }
}

impl Serialize for Secret {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Self::Inline(_) => s.serialize_str("****"),
            Self::File { file } => s.serialize_str(&format!("**** (from file {file})")),
            Self::Env { env } => s.serialize_str(&format!("**** (from ${env})")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Serialize)]
    struct C {
        password: Secret,
    }

    #[test]
    fn secrets_are_masked_and_resolved() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "hunter2\n").unwrap();
        let c: C =
            toml::from_str(&format!("password = {{ file = \"{}\" }}", path.display())).unwrap();
        assert_eq!(c.password.reveal().unwrap(), "hunter2");
        let shown = toml::to_string(&c).unwrap();
        assert!(!shown.contains("hunter2"), "{shown}");
        let c: C = toml::from_str("password = \"s3cret\"").unwrap();
        assert!(!format!("{:?}", c.password).contains("s3cret"));
        assert!(!toml::to_string(&c).unwrap().contains("s3cret"));
        let c: C = toml::from_str("password = { env = \"APFLOW_TEST_UNSET_SECRET_VAR\" }").unwrap();
        assert!(c.password.reveal().is_err());
    }
}
