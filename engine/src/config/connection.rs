//! Named connections, kept apart from jobs.
//!
//! A connection holds a store's endpoint and credentials. Jobs name a connection; the file of
//! connections lives on the node. Secrets are never printed: [`Secret`]'s `Debug` and
//! `Display` redact, and a secret is given either as a reference to an environment variable or
//! in encrypted form.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A file of named connections: `{ "name": { "type": "...", ... } }`.
///
/// Each entry is kept as JSON here; the connector named by its `type` parses and validates it.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(transparent)]
pub struct Connections(BTreeMap<String, serde_json::Value>);

impl Connections {
    /// Parses a connections file.
    pub fn from_json(text: &str) -> Result<Self> {
        let connections: Self = serde_json::from_str(text)
            .map_err(|e| Error::config(format!("invalid connections file: {e}")))?;
        for (name, value) in &connections.0 {
            if value.get("type").and_then(|t| t.as_str()).is_none() {
                return Err(Error::config(format!(
                    "invalid connections file: connection `{name}` has no `type`"
                )));
            }
        }
        Ok(connections)
    }

    /// The raw entry of connection `name`, with its `type`.
    pub fn get(&self, name: &str) -> Result<(&str, &serde_json::Value)> {
        let value = self.0.get(name).ok_or_else(|| {
            let known: Vec<&str> = self.0.keys().map(String::as_str).collect();
            if known.is_empty() {
                Error::config(format!(
                    "unknown connection `{name}`: no connections are defined; give a connections file (`--connections FILE` or FERRY_CONNECTIONS; `connections` in a node's ferry.toml)"
                ))
            } else {
                Error::config(format!(
                    "unknown connection `{name}`; the connections file defines: {}",
                    known.join(", ")
                ))
            }
        })?;
        let kind = value
            .get("type")
            .and_then(|t| t.as_str())
            .unwrap_or_default();
        Ok((kind, value))
    }

    /// Names of all connections.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.0.keys().map(String::as_str)
    }
}

/// A secret value (password, key, token) that is never printed.
///
/// In configuration a secret is an object: `{"env": "VAR"}` reads an environment variable when
/// the connection is built, so the secret is not stored in the file.
#[derive(Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Secret {
    /// Read from this environment variable.
    Env(String),
}

/// What every refusal of a secret says; it never quotes what was given, since a literal in
/// that place is most likely the secret itself.
const SECRET_FORM: &str = "a secret must be a reference such as {\"env\": \"PGPASSWORD_ERP\"} (an environment variable holding it); a literal secret is refused, and the value given is not shown";

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Secret;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a secret reference {\"env\": \"VAR\"}")
            }

            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<Secret, A::Error> {
                use serde::de::Error as _;
                let mut secret = None;
                while let Some(key) = map.next_key::<String>()? {
                    let value: serde_json::Value = map.next_value()?;
                    match (key.as_str(), value, &secret) {
                        ("env", serde_json::Value::String(var), None) if !var.is_empty() => {
                            secret = Some(Secret::Env(var));
                        }
                        _ => return Err(A::Error::custom(SECRET_FORM)),
                    }
                }
                secret.ok_or_else(|| A::Error::custom(SECRET_FORM))
            }

            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<Secret, E> {
                Err(E::custom(SECRET_FORM))
            }

            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Secret, E> {
                Err(E::custom(SECRET_FORM))
            }

            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<Secret, E> {
                Err(E::custom(SECRET_FORM))
            }

            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Secret, E> {
                Err(E::custom(SECRET_FORM))
            }

            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Secret, E> {
                Err(E::custom(SECRET_FORM))
            }

            fn visit_bytes<E: serde::de::Error>(self, _: &[u8]) -> Result<Secret, E> {
                Err(E::custom(SECRET_FORM))
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, _: A) -> Result<Secret, A::Error> {
                use serde::de::Error as _;
                Err(A::Error::custom(SECRET_FORM))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

impl Secret {
    /// The secret's value.
    pub fn expose(&self) -> Result<String> {
        match self {
            Secret::Env(var) => std::env::var(var).map_err(|_| {
                Error::config(format!(
                    "environment variable `{var}` that holds a secret is not set"
                ))
            }),
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Env(var) => write!(f, "Secret(env {var}, redacted)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_connection_lists_the_known_ones() {
        let c = Connections::from_json(r#"{"a":{"type":"file","root":"/x"}}"#).unwrap();
        assert_eq!(c.get("a").unwrap().0, "file");
        let err = c.get("b").unwrap_err();
        assert!(err.to_string().contains("defines: a"), "{err}");
        let err = Connections::default().get("b").unwrap_err();
        assert!(err.to_string().contains("--connections FILE"), "{err}");
    }

    #[test]
    fn connection_without_type_is_rejected() {
        let err = Connections::from_json(r#"{"a":{"root":"/x"}}"#).unwrap_err();
        assert!(err.to_string().contains("has no `type`"));
    }

    #[test]
    fn a_literal_secret_is_refused_without_quoting_it() {
        for text in [
            r#""LiteralPw-hunter2""#,
            r#"{"env": 12345678}"#,
            r#"{"value": "LiteralPw-hunter2"}"#,
            r#"{"env": "A", "value": "LiteralPw-hunter2"}"#,
            r#"["LiteralPw-hunter2"]"#,
            "12345678",
        ] {
            let err = serde_json::from_str::<Secret>(text)
                .unwrap_err()
                .to_string();
            assert!(err.contains("a literal secret is refused"), "{text}: {err}");
            assert!(
                !err.contains("hunter2") && !err.contains("12345678"),
                "{text}: {err}"
            );
        }
        assert_eq!(
            serde_json::from_str::<Secret>(r#"{"env": "PGPASS"}"#).unwrap(),
            Secret::Env("PGPASS".into())
        );
    }

    #[test]
    fn secrets_do_not_print() {
        // HOME is set wherever tests run; its value stands for a secret held in the
        // environment (tests never set variables: other threads read the environment).
        let value = std::env::var("HOME").unwrap();
        let s: Secret = serde_json::from_str(r#"{"env":"HOME"}"#).unwrap();
        assert_eq!(s.expose().unwrap(), value, "the secret is readable");
        let shown = format!("{s:?}");
        assert!(!shown.contains(&value), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
        let unset: Secret = serde_json::from_str(r#"{"env":"FERRY_TEST_SECRET_UNSET"}"#).unwrap();
        assert!(
            unset
                .expose()
                .unwrap_err()
                .to_string()
                .contains("is not set")
        );
    }
}
