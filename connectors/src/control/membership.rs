//! Node membership: a node joins a runtime with the runtime's authentication key, and the
//! runtime answers with its credential key sealed to the node's own key, through the channel
//! (outbound only on both sides, end to end encrypted).
//!
//! ```text
//! node                                   channel                      runtime (its keys' holder)
//! node.key (age X25519, made here) --> registrations/<node>.json --> checks the HMAC proof
//!   name, public key, auth key id,                                    against the current
//!   HMAC-SHA256(auth key, all of it)                                  auth key
//! opens credential.key in memory   <-- grants/<node>.json        <-- credential.key sealed to
//!   after checking the signature        (signed, Ed25519)              the node's public key
//! ```
//!
//! `ferry runtime sync` answers registrations where the runtime's keys are. A registration
//! made with another (rotated) authentication key is refused, and the grants of such nodes
//! are withdrawn; `ferry node remove` withdraws one node's. A node without a valid grant
//! takes no work and holds no credential key. Nothing here is home-made cryptography: HMAC
//! and Ed25519 from `ring`, X25519 sealing from `age`.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use ferry_engine::config::local::{read_private_file, write_private_file};
use ferry_engine::{Error, Result};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::trust::{CredentialKey, RuntimeIdentity, Signer, Verifier, b64, read_identity};
use super::{ControlChannel, RecordKind, now_ms};

/// What every authentication key's text starts with.
const AUTH_PREFIX: &str = "ferry-auth1";

fn b64url() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// The runtime's authentication key: a secret that lets a node register. Its text,
/// `ferry-auth1:<runtime>:<secret>`, names the runtime it belongs to.
pub struct AuthKey {
    runtime: String,
    secret: Zeroizing<Vec<u8>>,
}

impl std::fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "AuthKey({}, id {}, redacted)", self.runtime, self.id())
    }
}

impl AuthKey {
    /// A new random key (256 bits) for `runtime`.
    pub fn generate(runtime: &str) -> Result<Self> {
        let mut secret = Zeroizing::new(vec![0u8; 32]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret)
            .map_err(|_| Error::internal("no randomness for the authentication key"))?;
        Ok(AuthKey {
            runtime: runtime.to_string(),
            secret,
        })
    }

    /// Reads a key from its text; the error never quotes it.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = || {
            Error::config(
                "not a ferry authentication key: it is one line `ferry-auth1:<runtime>:<secret>`, as `ferry runtime init` or `ferry runtime rotate-auth-key` printed it (the value given is not shown)",
            )
        };
        let mut parts = text.trim().split(':');
        let (Some(AUTH_PREFIX), Some(runtime), Some(secret), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        let secret = Zeroizing::new(b64url().decode(secret).map_err(|_| bad())?);
        if secret.len() != 32 || runtime.is_empty() {
            return Err(bad());
        }
        Ok(AuthKey {
            runtime: runtime.to_string(),
            secret,
        })
    }

    /// Reads a key file (mode 0600).
    pub fn load(path: &Path) -> Result<Self> {
        Self::parse(&read_private_file(path, "authentication key")?)
            .map_err(|e| e.context(path.display()))
    }

    /// The key's text, to hand to the nodes.
    pub fn to_text(&self) -> Zeroizing<String> {
        Zeroizing::new(format!(
            "{AUTH_PREFIX}:{}:{}",
            self.runtime,
            b64url().encode(&*self.secret)
        ))
    }

    /// The runtime it belongs to.
    pub fn runtime(&self) -> &str {
        &self.runtime
    }

    /// A public name of the key (the first 8 bytes of its SHA-256, hex): registrations and
    /// grants say which key they were made with without revealing it.
    pub fn id(&self) -> String {
        ring::digest::digest(&ring::digest::SHA256, &self.secret).as_ref()[..8]
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }

    fn hmac_key(&self) -> ring::hmac::Key {
        ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &self.secret)
    }

    fn prove(&self, bytes: &[u8]) -> String {
        b64().encode(ring::hmac::sign(&self.hmac_key(), bytes).as_ref())
    }

    /// Whether `proof` is this key's HMAC of `bytes` (compared in constant time).
    fn proves(&self, bytes: &[u8], proof: &str) -> bool {
        b64()
            .decode(proof)
            .is_ok_and(|tag| ring::hmac::verify(&self.hmac_key(), bytes, &tag).is_ok())
    }
}

/// Replaces the authentication key in a runtime's directory with a new one; returns it.
/// Nodes registered with the old key are cut off at the next `ferry runtime sync`.
pub fn rotate_auth_key(dir: &Path) -> Result<AuthKey> {
    let identity = read_identity(&dir.join("runtime.json"))?;
    let key = AuthKey::generate(&identity.runtime)?;
    let path = dir.join("auth.key");
    let fresh = dir.join(format!("auth.key.new-{}", std::process::id()));
    write_private_file(&fresh, &format!("{}\n", key.to_text().as_str()))?;
    std::fs::rename(&fresh, &path)
        .map_err(|e| Error::io(format!("cannot replace {}", path.display()), e))?;
    Ok(key)
}

/// A node's own key pair (age X25519): the runtime seals its credential key to it.
pub struct NodeKey(age::x25519::Identity);

impl std::fmt::Debug for NodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "NodeKey({}, redacted)", self.recipient())
    }
}

impl NodeKey {
    /// Reads the node's key file (0600), making it on first use.
    pub fn load_or_create(path: &Path) -> Result<Self> {
        if !path.exists() {
            if let Some(dir) = path.parent() {
                ferry_engine::config::local::create_private_dir(dir)?;
            }
            let key = age::x25519::Identity::generate();
            let text = key.to_string();
            match write_private_file(
                path,
                &format!("{}\n", age::secrecy::ExposeSecret::expose_secret(&text)),
            ) {
                Ok(()) => return Ok(NodeKey(key)),
                // Another process of this node made it first: read theirs.
                Err(_) if path.exists() => {}
                Err(e) => return Err(e),
            }
        }
        let text = read_private_file(path, "node key")?;
        text.trim()
            .parse::<age::x25519::Identity>()
            .map(NodeKey)
            .map_err(|_| Error::config(format!("{} is not a ferry node key", path.display())))
    }

    /// The node's public key (`age1...`).
    pub fn recipient(&self) -> String {
        self.0.to_public().to_string()
    }

    fn open(&self, sealed: &str) -> Option<CredentialKey> {
        let bytes = b64().decode(sealed).ok()?;
        let plain = Zeroizing::new(age::decrypt(&self.0, &bytes).ok()?);
        CredentialKey::from_text(std::str::from_utf8(&plain).ok()?)
    }
}

/// A node's request to join a runtime (`registrations/<node>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The runtime it asks to join.
    pub runtime: String,
    /// The node's name.
    pub node: String,
    /// The node's public key (`age1...`).
    pub recipient: String,
    /// Which authentication key the node holds ([`AuthKey::id`]).
    pub auth_key_id: String,
    /// When it registered (ms since the epoch).
    pub registered_ms: u64,
    /// HMAC-SHA256 of all of the above under the authentication key, base64.
    pub proof: String,
    /// Set by the runtime when it refuses the registration, with why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

impl Registration {
    /// `node`'s registration with `auth`, proving it holds the key.
    pub fn new(node: &str, key: &NodeKey, auth: &AuthKey) -> Self {
        let mut registration = Registration {
            runtime: auth.runtime.clone(),
            node: node.to_string(),
            recipient: key.recipient(),
            auth_key_id: auth.id(),
            registered_ms: now_ms(),
            proof: String::new(),
            refused: None,
        };
        registration.proof = auth.prove(&registration.proved_bytes());
        registration
    }

    fn proved_bytes(&self) -> Vec<u8> {
        format!(
            "ferry-registration-v1\n{}\n{}\n{}\n{}\n{}",
            self.runtime, self.node, self.recipient, self.auth_key_id, self.registered_ms
        )
        .into_bytes()
    }
}

/// The runtime's answer to a registration (`grants/<node>.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The runtime that grants.
    pub runtime: String,
    /// The node it grants to.
    pub node: String,
    /// The node's public key it sealed to.
    pub recipient: String,
    /// The authentication key the registration was made with.
    pub auth_key_id: String,
    /// When (ms since the epoch).
    pub issued_ms: u64,
    /// The public recipient of the credential key it carries (a grant made before the
    /// key was rotated is made again).
    pub credential_recipient: String,
    /// The runtime's credential key sealed to `recipient` (age, base64).
    pub credential_key: String,
    /// The runtime's Ed25519 signature of all of the above, base64.
    pub signature: String,
}

impl Grant {
    fn signed_bytes(&self) -> Vec<u8> {
        format!(
            "ferry-grant-v1\n{}\n{}\n{}\n{}\n{}\n{}\n{}",
            self.runtime,
            self.node,
            self.recipient,
            self.auth_key_id,
            self.issued_ms,
            self.credential_recipient,
            self.credential_key
        )
        .into_bytes()
    }
}

fn to_json<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(value).map_err(|e| Error::internal(e.to_string()))
}

async fn read_record<T: serde::de::DeserializeOwned>(
    channel: &dyn ControlChannel,
    kind: RecordKind,
    name: &str,
) -> Result<Option<T>> {
    match channel.get_record(kind, name).await? {
        None => Ok(None),
        Some(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::invalid_input(format!(
                "{}/{name}.json in the channel is not a {} record: {e}",
                kind.dir(),
                match kind {
                    RecordKind::Registration => "registration",
                    RecordKind::Grant => "grant",
                }
            ))
        }),
    }
}

/// What the runtime holds to answer registrations: its signing key, credential key and
/// current authentication key (a runtime directory made by `ferry runtime init`).
pub struct RuntimeKeys {
    identity: RuntimeIdentity,
    signer: Signer,
    credential: CredentialKey,
    auth: AuthKey,
}

impl std::fmt::Debug for RuntimeKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RuntimeKeys({}, redacted)", self.identity.runtime)
    }
}

impl RuntimeKeys {
    /// Reads `runtime.json`, `signing.key`, `credential.key` and `auth.key` from `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        let identity = read_identity(&dir.join("runtime.json"))?;
        let signer = Signer::load(&dir.join("runtime.json"), &dir.join("signing.key"))?;
        let credential = CredentialKey::load(&dir.join("credential.key"))?;
        let auth = AuthKey::load(&dir.join("auth.key"))?;
        if auth.runtime != identity.runtime {
            return Err(Error::config(format!(
                "{} belongs to runtime {}, not to {}",
                dir.join("auth.key").display(),
                auth.runtime,
                identity.runtime
            )));
        }
        Ok(RuntimeKeys {
            identity,
            signer,
            credential,
            auth,
        })
    }

    /// The runtime's id.
    pub fn runtime(&self) -> &str {
        &self.identity.runtime
    }

    fn grant(&self, registration: &Registration) -> Result<Grant> {
        let mut grant = Grant {
            runtime: self.identity.runtime.clone(),
            node: registration.node.clone(),
            recipient: registration.recipient.clone(),
            auth_key_id: registration.auth_key_id.clone(),
            issued_ms: now_ms(),
            credential_recipient: self.credential.recipient(),
            credential_key: self.credential.seal_to(&registration.recipient)?,
            signature: String::new(),
        };
        grant.signature = self.signer.sign_bytes(&grant.signed_bytes());
        Ok(grant)
    }

    /// Why `registration` (stored under `name`) is refused, if it is.
    fn refusal(&self, name: &str, registration: &Registration) -> Option<String> {
        if registration.node != name {
            Some(format!(
                "it names node `{}` but is stored as `{name}`",
                registration.node.escape_default()
            ))
        } else if registration.runtime != self.identity.runtime {
            Some(format!(
                "it asks to join runtime `{}`, not {}",
                registration.runtime.escape_default(),
                self.identity.runtime
            ))
        } else if registration.auth_key_id != self.auth.id()
            || !self
                .auth
                .proves(&registration.proved_bytes(), &registration.proof)
        {
            Some(
                "it was not made with the runtime's current authentication key (the key was rotated, or the registration was changed); register again with the current key".into(),
            )
        } else if registration
            .recipient
            .parse::<age::x25519::Recipient>()
            .is_err()
        {
            Some("its `recipient` is not an age public key".into())
        } else {
            None
        }
    }
}

/// What `ferry runtime sync` did with one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A grant was written.
    Granted(String),
    /// The node's grant is current.
    Kept(String),
    /// The registration was refused, with why (any grant of the node withdrawn).
    Refused(String, String),
    /// A grant without a current registration was withdrawn.
    Withdrawn(String),
}

impl std::fmt::Display for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Answer::Granted(node) => write!(f, "{node}: granted the credential key"),
            Answer::Kept(node) => write!(f, "{node}: registered"),
            Answer::Refused(node, why) => write!(f, "{node}: refused: {why}"),
            Answer::Withdrawn(node) => write!(f, "{node}: grant withdrawn (no registration)"),
        }
    }
}

/// Answers every registration in `channel`: grants the credential key to nodes registered
/// with the current authentication key, refuses the others and withdraws their grants, and
/// withdraws grants whose registration is gone.
pub async fn answer_registrations(
    channel: &dyn ControlChannel,
    keys: &RuntimeKeys,
) -> Result<Vec<Answer>> {
    let mut answers = Vec::new();
    let names = channel.list_records(RecordKind::Registration).await?;
    for name in &names {
        let registration: Registration =
            match read_record(channel, RecordKind::Registration, name).await {
                Ok(Some(r)) => r,
                Ok(None) => continue,
                Err(e) => {
                    channel.delete_record(RecordKind::Grant, name).await?;
                    answers.push(Answer::Refused(name.clone(), e.to_string()));
                    continue;
                }
            };
        if let Some(why) = &registration.refused {
            channel.delete_record(RecordKind::Grant, name).await?;
            answers.push(Answer::Refused(name.clone(), why.clone()));
            continue;
        }
        if let Some(why) = keys.refusal(name, &registration) {
            channel.delete_record(RecordKind::Grant, name).await?;
            let refused = Registration {
                refused: Some(why.clone()),
                ..registration
            };
            channel
                .put_record(RecordKind::Registration, name, &to_json(&refused)?)
                .await?;
            answers.push(Answer::Refused(name.clone(), why));
            continue;
        }
        let current: Option<Grant> = read_record(channel, RecordKind::Grant, name)
            .await
            .unwrap_or(None);
        let keeps = current.is_some_and(|g| {
            g.recipient == registration.recipient
                && g.auth_key_id == registration.auth_key_id
                && g.runtime == keys.identity.runtime
                && g.credential_recipient == keys.credential.recipient()
        });
        if keeps {
            answers.push(Answer::Kept(name.clone()));
        } else {
            let grant = keys.grant(&registration)?;
            channel
                .put_record(RecordKind::Grant, name, &to_json(&grant)?)
                .await?;
            answers.push(Answer::Granted(name.clone()));
        }
    }
    for name in channel.list_records(RecordKind::Grant).await? {
        if !names.contains(&name) {
            channel.delete_record(RecordKind::Grant, &name).await?;
            answers.push(Answer::Withdrawn(name));
        }
    }
    Ok(answers)
}

/// Revokes node `name`: withdraws its grant and marks its registration refused, so the
/// runtime does not grant it again until it registers with a new authentication key.
/// Returns whether the node was known.
pub async fn remove_node(channel: &dyn ControlChannel, name: &str) -> Result<bool> {
    let registration: Option<Registration> = read_record(channel, RecordKind::Registration, name)
        .await
        .unwrap_or(None);
    let granted = channel.get_record(RecordKind::Grant, name).await?.is_some();
    channel.delete_record(RecordKind::Grant, name).await?;
    if let Some(registration) = &registration {
        let refused = Registration {
            refused: Some(format!(
                "removed from the runtime by an operator (`ferry node remove`, {})",
                utc_now()
            )),
            ..registration.clone()
        };
        channel
            .put_record(RecordKind::Registration, name, &to_json(&refused)?)
            .await?;
    }
    Ok(registration.is_some() || granted)
}

/// The time now, UTC, to the second (RFC 3339).
fn utc_now() -> String {
    let now = time::OffsetDateTime::now_utc();
    now.replace_nanosecond(0)
        .unwrap_or(now)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Where a node stands with its runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Granted: it holds the runtime's credential key and takes work.
    Granted,
    /// Registered, waiting for the runtime's answer.
    Waiting,
    /// Refused or removed, with why.
    Refused(String),
}

/// A node's side of membership: it registers, checks its grant, and takes work only while
/// the grant holds.
pub struct Member {
    node: String,
    verifier: Arc<Verifier>,
    key: NodeKey,
    auth: Option<AuthKey>,
    granted: AtomicBool,
    /// The grant in force (its signature), and the last standing logged.
    state: Mutex<(Option<String>, Option<Standing>)>,
}

impl std::fmt::Debug for Member {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Member({}, {:?})", self.node, self.key)
    }
}

impl Member {
    /// Node `node` of the runtime `verifier` checks for, with its key and (to register)
    /// the runtime's authentication key.
    pub fn new(node: &str, verifier: Arc<Verifier>, key: NodeKey, auth: Option<AuthKey>) -> Self {
        Member {
            node: node.to_string(),
            verifier,
            key,
            auth,
            granted: AtomicBool::new(false),
            state: Mutex::new((None, None)),
        }
    }

    /// The node's name.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Whether the node holds a valid grant (and so takes work).
    pub fn granted(&self) -> bool {
        self.granted.load(Ordering::Acquire)
    }

    /// Registers the node with its authentication key, unless the channel holds the same
    /// registration already (or one the runtime refused for this same key: the node does not
    /// overwrite an operator's decision).
    pub async fn register(&self, channel: &dyn ControlChannel) -> Result<Registration> {
        let Some(auth) = &self.auth else {
            return Err(Error::config(
                "this node has no authentication key to register with: give `[trust] auth_key_file` or `auth_key_env`, or run `ferry node register --auth-key-file FILE`",
            ));
        };
        if auth.runtime != self.verifier.runtime() {
            return Err(Error::config(format!(
                "the authentication key belongs to runtime {}, and this node's `[trust] runtime` is {}",
                auth.runtime,
                self.verifier.runtime()
            )));
        }
        let existing: Option<Registration> =
            read_record(channel, RecordKind::Registration, &self.node)
                .await
                .unwrap_or(None);
        if let Some(existing) = existing
            && existing.recipient == self.key.recipient()
            && existing.auth_key_id == auth.id()
            && existing.runtime == auth.runtime
            && (existing.refused.is_some()
                || auth.proves(&existing.proved_bytes(), &existing.proof))
        {
            return Ok(existing);
        }
        let registration = Registration::new(&self.node, &self.key, auth);
        channel
            .put_record(
                RecordKind::Registration,
                &self.node,
                &to_json(&registration)?,
            )
            .await?;
        Ok(registration)
    }

    /// Reads the node's grant and registration: with a valid grant, installs the credential
    /// key it carries as the process's opener of encrypted secrets; without one, removes it.
    /// Logs each change of standing.
    pub async fn refresh(&self, channel: &dyn ControlChannel) -> Standing {
        let standing = match self.current_grant(channel).await {
            Ok(Some((signature, key))) => {
                let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
                if state.0.as_deref() != Some(signature.as_str()) {
                    key.install();
                    state.0 = Some(signature);
                }
                Standing::Granted
            }
            Ok(None) => {
                let registration: Option<Registration> =
                    read_record(channel, RecordKind::Registration, &self.node)
                        .await
                        .unwrap_or(None);
                match registration {
                    Some(r) if r.recipient == self.key.recipient() => match r.refused {
                        Some(why) => Standing::Refused(why),
                        None => Standing::Waiting,
                    },
                    Some(_) => Standing::Refused(
                        "the channel's registration of this node carries another node key; register again".into(),
                    ),
                    None => Standing::Refused(
                        "this node is not registered: register it with the runtime's authentication key (`ferry node register`, or `[trust] auth_key_file`)".into(),
                    ),
                }
            }
            Err(e) => Standing::Refused(e.to_string()),
        };
        let granted = standing == Standing::Granted;
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if !granted && state.0.take().is_some() {
            ferry_engine::config::connection::remove_opener();
        }
        self.granted.store(granted, Ordering::Release);
        if state.1.as_ref() != Some(&standing) {
            match &standing {
                Standing::Granted => {
                    tracing::info!(node = %self.node, "the runtime granted this node its credential key; taking work")
                }
                Standing::Waiting => {
                    tracing::warn!(node = %self.node, "registered, waiting for the runtime's grant (`ferry runtime sync` where the runtime's keys are); taking no work until then")
                }
                Standing::Refused(why) => {
                    tracing::warn!(node = %self.node, reason = %why, "this node holds no grant of the runtime; taking no work")
                }
            }
            state.1 = Some(standing.clone());
        }
        standing
    }

    /// The node's grant, checked: the signature and key of the grant in force.
    async fn current_grant(
        &self,
        channel: &dyn ControlChannel,
    ) -> Result<Option<(String, CredentialKey)>> {
        let Some(grant): Option<Grant> =
            read_record(channel, RecordKind::Grant, &self.node).await?
        else {
            return Ok(None);
        };
        let refuse = |why: &str| Err(Error::forbidden(format!("the node's grant is {why}")));
        if grant.node != self.node || grant.recipient != self.key.recipient() {
            return refuse("for another node or node key");
        }
        if grant.runtime != self.verifier.runtime()
            || !self
                .verifier
                .verify_bytes(&grant.signed_bytes(), &grant.signature)
        {
            return refuse("not signed by this node's runtime");
        }
        match self.key.open(&grant.credential_key) {
            Some(key) => Ok(Some((grant.signature, key))),
            None => refuse("sealed to another key, or damaged"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::trust::init;
    use ferry_engine::config::connection::Secret;

    #[test]
    fn an_auth_key_round_trips_through_its_text_and_never_shows_in_debug() {
        let key = AuthKey::generate("rt-01").unwrap();
        let text = key.to_text();
        assert!(text.starts_with("ferry-auth1:rt-01:"));
        let back = AuthKey::parse(&text).unwrap();
        assert_eq!(back.id(), key.id());
        assert!(!format!("{key:?}").contains(&text[18..]));
        for bad in [
            "",
            "ferry-auth1:rt-01",
            "ferry-auth2:rt-01:AAAA",
            "ferry-auth1:rt-01:AAAA",
            &format!("{}:x", text.as_str()),
        ] {
            let err = AuthKey::parse(bad).unwrap_err().to_string();
            assert!(err.contains("not a ferry authentication key"), "{err}");
        }
        let other = AuthKey::generate("rt-01").unwrap();
        assert_ne!(other.id(), key.id());
        let registration =
            Registration::new("n1", &NodeKey(age::x25519::Identity::generate()), &key);
        assert!(key.proves(&registration.proved_bytes(), &registration.proof));
        assert!(!other.proves(&registration.proved_bytes(), &registration.proof));
        let mut renamed = registration.clone();
        renamed.node = "n2".into();
        assert!(!key.proves(&renamed.proved_bytes(), &renamed.proof));
    }

    #[test]
    fn a_grant_checks_out_only_for_its_node_and_runtime() {
        let dir = tempfile::tempdir().unwrap();
        let ours = init(&dir.path().join("ours")).unwrap();
        let keys = RuntimeKeys::load(&dir.path().join("ours")).unwrap();
        let node_key = NodeKey(age::x25519::Identity::generate());
        let auth = AuthKey::load(&dir.path().join("ours/auth.key")).unwrap();
        let registration = Registration::new("n1", &node_key, &auth);
        assert_eq!(keys.refusal("n1", &registration), None);
        assert!(keys.refusal("n2", &registration).is_some());
        let grant = keys.grant(&registration).unwrap();
        let verifier = Verifier::new(ours).unwrap();
        assert!(verifier.verify_bytes(&grant.signed_bytes(), &grant.signature));
        let opened = node_key.open(&grant.credential_key).unwrap();
        let sealed = super::super::trust::seal(&keys.identity, "pw-7").unwrap();
        assert_eq!(opened.open(&sealed).unwrap().as_str(), "pw-7");
        // Another node's key cannot open it; a changed grant does not verify.
        assert!(
            NodeKey(age::x25519::Identity::generate())
                .open(&grant.credential_key)
                .is_none()
        );
        let mut moved = grant.clone();
        moved.node = "n2".into();
        assert!(!verifier.verify_bytes(&moved.signed_bytes(), &moved.signature));
    }

    #[tokio::test]
    async fn a_rotated_credential_key_reaches_registered_nodes_and_old_secrets_stop_opening() {
        let dir = tempfile::tempdir().unwrap();
        let runtime = dir.path().join("rt");
        init(&runtime).unwrap();
        let channel = crate::control::LocalChannel::open(
            dir.path().join("spool"),
            std::time::Duration::from_secs(30),
            3,
        )
        .unwrap();
        let verifier =
            Arc::new(Verifier::new(read_identity(&runtime.join("runtime.json")).unwrap()).unwrap());
        let member = Member::new(
            "n1",
            verifier,
            NodeKey::load_or_create(&dir.path().join("node/node.key")).unwrap(),
            Some(AuthKey::load(&runtime.join("auth.key")).unwrap()),
        );
        member.register(&channel).await.unwrap();
        assert_eq!(member.refresh(&channel).await, Standing::Waiting);
        let keys = RuntimeKeys::load(&runtime).unwrap();
        let answers = answer_registrations(&channel, &keys).await.unwrap();
        assert_eq!(answers, vec![Answer::Granted("n1".into())]);
        assert_eq!(member.refresh(&channel).await, Standing::Granted);
        let old_secret = Secret::Encrypted(
            super::super::trust::seal(
                &read_identity(&runtime.join("runtime.json")).unwrap(),
                "old-pw",
            )
            .unwrap(),
        );
        assert_eq!(old_secret.expose().unwrap().as_str(), "old-pw");
        // Nothing changed: the grant is kept as it is.
        let answers = answer_registrations(&channel, &keys).await.unwrap();
        assert_eq!(answers, vec![Answer::Kept("n1".into())]);

        super::super::trust::rotate_credential_key(&runtime).unwrap();
        let keys = RuntimeKeys::load(&runtime).unwrap();
        let answers = answer_registrations(&channel, &keys).await.unwrap();
        assert_eq!(
            answers,
            vec![Answer::Granted("n1".into())],
            "a new key, a new grant"
        );
        assert_eq!(member.refresh(&channel).await, Standing::Granted);
        let new_secret = Secret::Encrypted(
            super::super::trust::seal(
                &read_identity(&runtime.join("runtime.json")).unwrap(),
                "new-pw",
            )
            .unwrap(),
        );
        assert_eq!(new_secret.expose().unwrap().as_str(), "new-pw");
        let err = old_secret.expose().unwrap_err().to_string();
        assert!(err.contains("another runtime's key"), "{err}");

        // A grant changed in the channel (here: moved to another node key) is refused.
        let mut grant: Grant = serde_json::from_slice(
            &channel
                .get_record(RecordKind::Grant, "n1")
                .await
                .unwrap()
                .unwrap(),
        )
        .unwrap();
        grant.recipient = NodeKey(age::x25519::Identity::generate()).recipient();
        channel
            .put_record(RecordKind::Grant, "n1", &to_json(&grant).unwrap())
            .await
            .unwrap();
        assert!(matches!(
            member.refresh(&channel).await,
            Standing::Refused(_)
        ));
        assert!(
            new_secret.expose().is_err(),
            "the key is gone with the grant"
        );
    }
}
