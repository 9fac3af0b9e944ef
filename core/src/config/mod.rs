//! Layered configuration: embedded defaults, then a TOML file, then
//! `APFLOW__SECTION__KEY` environment variables.
//!
//! Every error is reported at once, with its path: the merged document is deserialized
//! into the target type; each failure (an unknown key, a wrong type, a bad value) is
//! recorded and its key removed so the default applies, and deserialization is retried
//! until it succeeds. Only then are all errors returned together. Config types use
//! `#[serde(deny_unknown_fields, default)]`.

mod secret;

use std::fmt;
use std::path::Path;

use serde::Serialize;
use serde::de::DeserializeOwned;
use toml::{Table, Value};

pub use self::secret::{Secret, SecretError};

/// The prefix of configuration environment variables.
pub const ENV_PREFIX: &str = "APFLOW__";

/// One configuration problem.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigIssue {
    /// Where it came from: `defaults`, the file name, or `environment`.
    pub source: String,
    /// Dotted path of the key (`bus.kafka.linger`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}: {}", self.source, self.message)
        } else {
            write!(f, "{}: `{}`: {}", self.source, self.path, self.message)
        }
    }
}

/// Every problem found while loading the configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigIssue>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} configuration error(s):", self.0.len())?;
        for issue in &self.0 {
            writeln!(f, "  - {issue}")?;
        }
        Ok(())
    }
}

/// Where each key of the merged document came from, for messages.
#[derive(Debug, Default)]
struct Origins(Vec<(String, String)>);

impl Origins {
    fn record(&mut self, table: &Table, prefix: &str, source: &str) {
        for (k, v) in table {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            self.0.retain(|(p, _)| p != &path);
            self.0.push((path.clone(), source.to_owned()));
            if let Value::Table(t) = v {
                self.record(t, &path, source);
            }
        }
    }
    fn of(&self, path: &str) -> String {
        let mut best: Option<&(String, String)> = None;
        for entry in &self.0 {
            if (path == entry.0 || path.starts_with(&format!("{}.", entry.0)))
                && best.is_none_or(|b| entry.0.len() > b.0.len())
            {
                best = Some(entry);
            }
        }
        best.map_or_else(|| "defaults".to_owned(), |b| b.1.clone())
    }
}

fn merge(into: &mut Table, from: Table) {
    for (k, v) in from {
        match (into.get_mut(&k), v) {
            (Some(Value::Table(a)), Value::Table(b)) => merge(a, b),
            (_, v) => {
                into.insert(k, v);
            }
        }
    }
}

/// Parses an environment value as a TOML value (`5`, `true`, `"x"`, `[1, 2]`), or
/// takes it as a plain string.
fn env_value(raw: &str) -> Value {
    toml::from_str::<Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

/// Builds the environment layer from `APFLOW__SECTION__KEY=value` pairs.
fn env_layer(vars: impl IntoIterator<Item = (String, String)>) -> Table {
    let mut root = Table::new();
    for (name, raw) in vars {
        let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
            continue;
        };
        let parts: Vec<String> = rest.split("__").map(str::to_lowercase).collect();
        if parts.iter().any(String::is_empty) {
            continue;
        }
        let mut table = &mut root;
        for p in &parts[..parts.len() - 1] {
            let entry = table
                .entry(p.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            if !entry.is_table() {
                *entry = Value::Table(Table::new());
            }
            table = entry.as_table_mut().expect("just made a table");
        }
        table.insert(parts[parts.len() - 1].clone(), env_value(&raw));
    }
    root
}

/// Removes the value at a dotted path (with `[i]` array indices); returns whether it existed.
fn remove_path(root: &mut Table, path: &[String]) -> bool {
    let Some((last, parents)) = path.split_last() else {
        return false;
    };
    let mut cur: &mut Table = root;
    for p in parents {
        let Some(Value::Table(t)) = cur.get_mut(p) else {
            return false;
        };
        cur = t;
    }
    cur.remove(last).is_some()
}

/// Splits serde_path_to_error's path (`a.b[0].c`) into keys, dropping array indices
/// (the whole array is removed when an element is bad).
fn path_keys(path: &str) -> Vec<String> {
    path.split('.')
        .filter(|s| !s.is_empty() && *s != "?")
        .map(|s| s.split('[').next().unwrap_or(s).to_owned())
        .collect()
}

/// Loads configuration of type `T` from layered sources, reporting every error.
///
/// * `defaults` — the embedded `default.toml` (errors there are bugs, but are reported too);
/// * `file` — an optional TOML file;
/// * `env` — environment variables; only `APFLOW__…` ones are used.
pub fn load<T>(
    defaults: &str,
    file: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
) -> Result<T, ConfigErrors>
where
    T: DeserializeOwned,
{
    let mut issues = Vec::new();
    let mut origins = Origins::default();
    let mut merged = match toml::from_str::<Table>(defaults) {
        Ok(t) => t,
        Err(e) => {
            issues.push(ConfigIssue {
                source: "defaults".into(),
                path: String::new(),
                message: e.to_string(),
            });
            Table::new()
        }
    };
    origins.record(&merged, "", "defaults");
    if let Some(path) = file {
        let source = path.display().to_string();
        match std::fs::read_to_string(path) {
            Err(e) => issues.push(ConfigIssue {
                source,
                path: String::new(),
                message: format!("cannot read: {e}"),
            }),
            Ok(text) => match toml::from_str::<Table>(&text) {
                Err(e) => issues.push(ConfigIssue {
                    source,
                    path: String::new(),
                    message: e.to_string(),
                }),
                Ok(t) => {
                    origins.record(&t, "", &source);
                    merge(&mut merged, t);
                }
            },
        }
    }
    let env = env_layer(env);
    origins.record(&env, "", "environment");
    merge(&mut merged, env);

    // Deserialize; on each error record it, drop the offending key, and retry.
    for _ in 0..256 {
        let de = Value::Table(merged.clone());
        match serde_path_to_error::deserialize::<_, T>(de) {
            Ok(v) => {
                return if issues.is_empty() {
                    Ok(v)
                } else {
                    Err(ConfigErrors(issues))
                };
            }
            Err(e) => {
                let path = e.path().to_string();
                let message = e.inner().to_string();
                let mut keys = path_keys(&path);
                // serde reports an unknown field at its parent's path; the message names it.
                if let Some(field) = unknown_field(&message)
                    && keys.last() != Some(&field)
                {
                    keys.push(field);
                }
                let shown = keys.join(".");
                issues.push(ConfigIssue {
                    source: origins.of(&shown),
                    path: shown,
                    message,
                });
                if keys.is_empty() || !remove_path(&mut merged, &keys) {
                    return Err(ConfigErrors(issues));
                }
            }
        }
    }
    Err(ConfigErrors(issues))
}

fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// Renders a configuration as TOML (secrets masked by [`Secret`]'s `Serialize`).
pub fn to_toml<T: Serialize>(config: &T) -> String {
    toml::to_string_pretty(config)
        .unwrap_or_else(|e| format!("# cannot render configuration: {e}\n"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use std::time::Duration;

    #[derive(Debug, Deserialize, Serialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Inner {
        port: u16,
        #[serde(with = "humantime_serde")]
        linger: Duration,
        name: String,
    }

    #[derive(Debug, Deserialize, Serialize, PartialEq, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Top {
        level: String,
        inner: Inner,
    }

    const DEFAULTS: &str = "level = \"info\"\n[inner]\nport = 80\nlinger = \"5ms\"\nname = \"x\"\n";

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn layers_apply_in_order() {
        let f = file("[inner]\nport = 81\nlinger = \"2s\"\n");
        let env = vec![
            ("APFLOW__INNER__PORT".to_owned(), "82".to_owned()),
            ("OTHER".into(), "1".into()),
        ];
        let c: Top = load(DEFAULTS, Some(f.path()), env).unwrap();
        assert_eq!(c.inner.port, 82);
        assert_eq!(c.inner.linger, Duration::from_secs(2));
        assert_eq!(c.inner.name, "x");
        assert_eq!(c.level, "info");
    }

    #[test]
    fn every_error_is_reported_with_its_path() {
        let f =
            file("bogus = 1\n[inner]\nport = \"eighty\"\nlinger = \"soon\"\ncolour = \"red\"\n");
        let env = vec![("APFLOW__LEVEL".to_owned(), "[1]".to_owned())];
        let err = load::<Top>(DEFAULTS, Some(f.path()), env).unwrap_err();
        let paths: Vec<&str> = err.0.iter().map(|i| i.path.as_str()).collect();
        for expected in [
            "bogus",
            "inner.port",
            "inner.linger",
            "inner.colour",
            "level",
        ] {
            assert!(paths.contains(&expected), "{expected} missing from {err}");
        }
        let level = err.0.iter().find(|i| i.path == "level").unwrap();
        assert_eq!(level.source, "environment");
        let port = err.0.iter().find(|i| i.path == "inner.port").unwrap();
        assert!(
            port.source
                .ends_with(f.path().file_name().unwrap().to_str().unwrap())
        );
        assert!(port.message.contains("invalid type"), "{}", port.message);
    }

    #[test]
    fn unreadable_or_invalid_toml_is_reported() {
        let err = load::<Top>(
            DEFAULTS,
            Some(Path::new("/nonexistent/apflow.toml")),
            vec![],
        )
        .unwrap_err();
        assert!(err.to_string().contains("cannot read"));
        let f = file("[inner\n");
        assert_eq!(
            load::<Top>(DEFAULTS, Some(f.path()), vec![])
                .unwrap_err()
                .0
                .len(),
            1
        );
    }

    #[test]
    fn env_values_parse_as_toml_or_strings() {
        assert_eq!(env_value("5"), Value::Integer(5));
        assert_eq!(env_value("true"), Value::Boolean(true));
        assert_eq!(
            env_value("kafka://127.0.0.1:9092"),
            Value::String("kafka://127.0.0.1:9092".into())
        );
    }
}
