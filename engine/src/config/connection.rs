//! Secrets of connections: the connectors define the connections themselves.
//!
//! Secrets are never printed: [`Secret`]'s `Debug` redacts, and a secret is given as a
//! reference to an environment variable, never as a literal.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A secret value (password, key, token) that is never printed.
///
/// In configuration a secret is an object: `{"env": "VAR"}` reads an environment variable when
/// the connection is built, so the secret is not stored in the file; `{"encrypted": "..."}`
/// holds it sealed to the runtime's credential key (`ferry credential encrypt`), opened in
/// memory only when a job uses it.
#[derive(Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Secret {
    /// Read from this environment variable.
    Env(String),
    /// Sealed to the runtime's credential key (base64 of an `age` file).
    Encrypted(String),
}

/// What every refusal of a secret says; it never quotes what was given, since a literal in
/// that place is most likely the secret itself.
const SECRET_FORM: &str = "a secret must be a reference such as {\"env\": \"PGPASSWORD_ERP\"} (an environment variable holding it) or {\"encrypted\": \"...\"} (from `ferry credential encrypt`); a literal secret is refused, and the value given is not shown";

/// Opens an encrypted secret: installed by whoever holds the runtime's credential key (a
/// node with `[trust] credential_key`, or one the runtime granted its key to). The engine
/// names no cipher.
pub type Opener = Box<dyn Fn(&str) -> Result<zeroize::Zeroizing<String>> + Send + Sync>;

static OPENER: std::sync::RwLock<Option<std::sync::Arc<Opener>>> = std::sync::RwLock::new(None);

/// Installs the process's [`Opener`], replacing any earlier one.
pub fn install_opener(opener: Opener) {
    *OPENER.write().unwrap_or_else(|e| e.into_inner()) = Some(std::sync::Arc::new(opener));
}

/// Forgets the process's [`Opener`] (a node whose grant was withdrawn): encrypted secrets no
/// longer open.
pub fn remove_opener() {
    *OPENER.write().unwrap_or_else(|e| e.into_inner()) = None;
}

fn opener() -> Option<std::sync::Arc<Opener>> {
    OPENER.read().unwrap_or_else(|e| e.into_inner()).clone()
}

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
                        ("encrypted", serde_json::Value::String(sealed), None)
                            if !sealed.is_empty() =>
                        {
                            secret = Some(Secret::Encrypted(sealed));
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
    /// The secret's value, wiped from memory when dropped.
    pub fn expose(&self) -> Result<zeroize::Zeroizing<String>> {
        match self {
            Secret::Env(var) => std::env::var(var)
                .map(zeroize::Zeroizing::new)
                .map_err(|_| {
                    Error::config(format!(
                        "environment variable `{var}` that holds a secret is not set"
                    ))
                }),
            Secret::Encrypted(sealed) => match opener() {
                Some(open) => open(sealed),
                None => Err(Error::config(
                    "a secret is encrypted for the runtime, and this process holds no credential key: register the node with the runtime's authentication key (`ferry node register`), or give it `[trust] credential_key` (or `ferry copy --credential-key FILE`)",
                )),
            },
        }
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Secret::Env(var) => write!(f, "Secret(env {var}, redacted)"),
            Secret::Encrypted(_) => write!(f, "Secret(encrypted, redacted)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert_eq!(
            s.expose().unwrap().as_str(),
            value,
            "the secret is readable"
        );
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
