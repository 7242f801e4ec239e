//! Signed jobs: only the runtime's submitters can start work on its nodes.
//!
//! `ferry runtime init` makes a runtime's identity: its id and an Ed25519 key pair (`ring`).
//! `runtime.json` (the id and the public key) goes to every node; `signing.key` (the private
//! key, PKCS#8) stays with those who may submit jobs. A submitter signs each envelope: the
//! runtime id, the job id, an expiry and the job's JSON. A node with `[trust]` verifies all
//! of it before it runs a job: an unsigned, tampered, foreign or expired job never runs, and
//! one whose id already has a record (a replay) is rejected without touching that record.

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use ferry_engine::config::local::{create_private_dir, read_private_file, write_private_file};
use ferry_engine::{Error, Result};
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

use super::{Envelope, now_ms};

/// How long a signed job may wait in the channel by default.
pub const DEFAULT_VALID_FOR: Duration = Duration::from_secs(24 * 3600);

/// A job's signature, carried in its envelope.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobSignature {
    /// The runtime whose key signed it.
    pub runtime: String,
    /// Not valid after this (ms since the epoch).
    pub expires_ms: u64,
    /// Ed25519 signature, base64.
    pub signature: String,
}

/// A runtime's public identity (`runtime.json`): what nodes need to verify jobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeIdentity {
    /// The runtime's id.
    pub runtime: String,
    /// Its job-signing public key (Ed25519, base64).
    pub signing_public_key: String,
    /// Its credential recipient (`age1...`, X25519): what `ferry credential encrypt` seals
    /// secrets to.
    #[serde(default)]
    pub credential_recipient: Option<String>,
}

pub(crate) fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// The bytes a signature covers.
fn signed_bytes(runtime: &str, envelope: &Envelope, expires_ms: u64) -> Vec<u8> {
    // serde_json writes a `Value` the same way every time; the node verifies the JSON it
    // parsed from the same text.
    let job = serde_json::to_string(&envelope.job).unwrap_or_default();
    format!(
        "ferry-job-v1\n{runtime}\n{}\n{expires_ms}\n{job}",
        envelope.id
    )
    .into_bytes()
}

/// Creates a runtime's identity in `dir` (0700): `runtime.json`, and `signing.key`,
/// `credential.key` and `auth.key` (0600). Refuses to overwrite an existing key.
pub fn init(dir: &Path) -> Result<RuntimeIdentity> {
    create_private_dir(dir)?;
    let key_path = dir.join("signing.key");
    if key_path.exists() {
        return Err(Error::invalid_input(format!(
            "{} exists: this directory already holds a runtime; remove it first to make a new one (every node and submitter must then be given the new files)",
            key_path.display()
        )));
    }
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng)
        .map_err(|_| Error::internal("cannot generate a signing key"))?;
    let pair = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref())
        .map_err(|_| Error::internal("cannot read the new signing key"))?;
    let mut id = [0u8; 8];
    ring::rand::SecureRandom::fill(&rng, &mut id)
        .map_err(|_| Error::internal("no randomness for the runtime id"))?;
    let credential = age::x25519::Identity::generate();
    let identity = RuntimeIdentity {
        runtime: format!(
            "rt-{}",
            id.iter().map(|b| format!("{b:02x}")).collect::<String>()
        ),
        signing_public_key: b64().encode(pair.public_key().as_ref()),
        credential_recipient: Some(credential.to_public().to_string()),
    };
    write_private_file(
        &dir.join("credential.key"),
        &format!(
            "{}\n",
            age::secrecy::ExposeSecret::expose_secret(&credential.to_string())
        ),
    )?;
    write_private_file(&key_path, &format!("{}\n", b64().encode(pkcs8.as_ref())))?;
    let auth = super::membership::AuthKey::generate(&identity.runtime)?;
    write_private_file(
        &dir.join("auth.key"),
        &format!("{}\n", auth.to_text().as_str()),
    )?;
    let public =
        serde_json::to_string_pretty(&identity).map_err(|e| Error::internal(e.to_string()))?;
    std::fs::write(dir.join("runtime.json"), format!("{public}\n")).map_err(|e| {
        Error::io(
            format!("cannot write {}", dir.join("runtime.json").display()),
            e,
        )
    })?;
    Ok(identity)
}

/// Replaces the runtime's credential key in `dir` with a new one, and its recipient in
/// `runtime.json`; returns the new recipient. Secrets sealed to the old key no longer open
/// once nodes hold the new one: seal them again with the new `runtime.json`.
pub fn rotate_credential_key(dir: &Path) -> Result<String> {
    let path = dir.join("runtime.json");
    let mut identity = read_identity(&path)?;
    CredentialKey::load(&dir.join("credential.key"))?;
    let key = age::x25519::Identity::generate();
    let fresh = dir.join(format!("credential.key.new-{}", std::process::id()));
    write_private_file(
        &fresh,
        &format!(
            "{}\n",
            age::secrecy::ExposeSecret::expose_secret(&key.to_string())
        ),
    )?;
    let recipient = key.to_public().to_string();
    identity.credential_recipient = Some(recipient.clone());
    let public =
        serde_json::to_string_pretty(&identity).map_err(|e| Error::internal(e.to_string()))?;
    let public_fresh = dir.join(format!("runtime.json.new-{}", std::process::id()));
    std::fs::write(&public_fresh, format!("{public}\n"))
        .map_err(|e| Error::io(format!("cannot write {}", public_fresh.display()), e))?;
    std::fs::rename(&fresh, dir.join("credential.key"))
        .and_then(|()| std::fs::rename(&public_fresh, &path))
        .map_err(|e| Error::io(format!("cannot replace the keys in {}", dir.display()), e))?;
    Ok(recipient)
}

/// Seals `secret` to the runtime of `identity`: the value of an `{"encrypted": ...}` secret.
pub fn seal(identity: &RuntimeIdentity, secret: &str) -> Result<String> {
    let recipient = identity.credential_recipient.as_deref().ok_or_else(|| {
        Error::config(format!(
            "runtime {} has no credential recipient (its runtime.json predates encrypted credentials); make a new runtime with `ferry runtime init`",
            identity.runtime
        ))
    })?;
    let recipient: age::x25519::Recipient = recipient.parse().map_err(|e| {
        Error::config(format!(
            "runtime {}: `credential_recipient` is not an age recipient: {e}",
            identity.runtime
        ))
    })?;
    let sealed = age::encrypt(&recipient, secret.as_bytes())
        .map_err(|e| Error::internal(format!("cannot encrypt: {e}")))?;
    Ok(b64().encode(sealed))
}

/// The runtime's credential key, which opens `{"encrypted": ...}` secrets.
pub struct CredentialKey(age::x25519::Identity);

impl std::fmt::Debug for CredentialKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CredentialKey(redacted)")
    }
}

impl CredentialKey {
    /// Reads `credential.key` (mode 0600).
    pub fn load(path: &Path) -> Result<Self> {
        let text = read_private_file(path, "credential key")?;
        text.trim()
            .parse::<age::x25519::Identity>()
            .map(CredentialKey)
            .map_err(|_| Error::config(format!("{} is not a credential key", path.display())))
    }

    /// Opens a sealed secret; the error never shows the secret or the ciphertext.
    pub fn open(&self, sealed: &str) -> Result<zeroize::Zeroizing<String>> {
        let damaged = || {
            Error::config(
                "an encrypted secret cannot be opened: it was sealed to another runtime's key, or changed after it was sealed; encrypt it again with this runtime's runtime.json",
            )
        };
        let bytes = b64().decode(sealed.trim()).map_err(|_| damaged())?;
        let plain = zeroize::Zeroizing::new(age::decrypt(&self.0, &bytes).map_err(|_| damaged())?);
        String::from_utf8(plain.to_vec())
            .map(zeroize::Zeroizing::new)
            .map_err(|_| damaged())
    }

    /// Reads a credential key from its text (`AGE-SECRET-KEY-1...`), as a grant carries it.
    pub(crate) fn from_text(text: &str) -> Option<Self> {
        text.trim()
            .parse::<age::x25519::Identity>()
            .ok()
            .map(CredentialKey)
    }

    /// The key's public recipient (`age1...`).
    pub fn recipient(&self) -> String {
        self.0.to_public().to_string()
    }

    /// This key sealed to `recipient` (a node's `age1...` key): what a grant carries.
    pub(crate) fn seal_to(&self, recipient: &str) -> Result<String> {
        let recipient: age::x25519::Recipient = recipient
            .parse()
            .map_err(|e| Error::invalid_input(format!("not an age recipient: {e}")))?;
        let text = self.0.to_string();
        let sealed = age::encrypt(
            &recipient,
            age::secrecy::ExposeSecret::expose_secret(&text).as_bytes(),
        )
        .map_err(|e| Error::internal(format!("cannot encrypt: {e}")))?;
        Ok(b64().encode(sealed))
    }

    /// Makes this key the process's opener of encrypted secrets.
    pub fn install(self) {
        ferry_engine::config::connection::install_opener(Box::new(move |sealed| self.open(sealed)));
    }
}

/// Reads a runtime's public identity.
pub fn read_identity(path: &Path) -> Result<RuntimeIdentity> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::io(
            format!("cannot read the runtime identity {}", path.display()),
            e,
        )
    })?;
    serde_json::from_str(&text)
        .map_err(|e| Error::config(format!("{}: not a runtime identity: {e}", path.display())))
}

/// Signs jobs for a runtime.
pub struct Signer {
    runtime: String,
    key: Ed25519KeyPair,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signer({}, key redacted)", self.runtime)
    }
}

impl Signer {
    /// Reads the runtime's identity and its private signing key (which must be private to
    /// its owner: mode 0600).
    pub fn load(identity: &Path, key: &Path) -> Result<Self> {
        let identity = read_identity(identity)?;
        let text = read_private_file(key, "signing key")?;
        let pkcs8 = b64()
            .decode(text.trim())
            .map_err(|_| Error::config(format!("{} is not a ferry signing key", key.display())))?;
        let key_pair = Ed25519KeyPair::from_pkcs8(&pkcs8)
            .map_err(|_| Error::config(format!("{} is not a ferry signing key", key.display())))?;
        if b64().encode(key_pair.public_key().as_ref()) != identity.signing_public_key {
            return Err(Error::config(format!(
                "{} is not the signing key of runtime {}",
                key.display(),
                identity.runtime
            )));
        }
        Ok(Signer {
            runtime: identity.runtime,
            key: key_pair,
        })
    }

    /// The runtime's id.
    pub fn runtime(&self) -> &str {
        &self.runtime
    }

    /// Signs `bytes` (a record of the runtime's, such as a node's grant): base64.
    pub(crate) fn sign_bytes(&self, bytes: &[u8]) -> String {
        b64().encode(self.key.sign(bytes).as_ref())
    }

    /// Signs `envelope`, valid for `valid_for` from now.
    pub fn sign(&self, envelope: &mut Envelope, valid_for: Duration) {
        let expires_ms = now_ms() + valid_for.as_millis() as u64;
        let signature = self
            .key
            .sign(&signed_bytes(&self.runtime, envelope, expires_ms));
        envelope.signature = Some(JobSignature {
            runtime: self.runtime.clone(),
            expires_ms,
            signature: b64().encode(signature.as_ref()),
        });
    }
}

/// Checks jobs against a runtime's identity.
#[derive(Debug, Clone)]
pub struct Verifier {
    identity: RuntimeIdentity,
    key: Vec<u8>,
}

impl Verifier {
    /// A verifier for the runtime of `identity`.
    pub fn new(identity: RuntimeIdentity) -> Result<Self> {
        let key = b64().decode(&identity.signing_public_key).map_err(|_| {
            Error::config(format!(
                "runtime {}: `signing_public_key` is not base64",
                identity.runtime
            ))
        })?;
        Ok(Verifier { identity, key })
    }

    /// The runtime's id.
    pub fn runtime(&self) -> &str {
        &self.identity.runtime
    }

    /// Whether `signature` (base64) is the runtime's signature of `bytes`.
    pub(crate) fn verify_bytes(&self, bytes: &[u8], signature: &str) -> bool {
        b64().decode(signature).is_ok_and(|signature| {
            UnparsedPublicKey::new(&ED25519, &self.key)
                .verify(bytes, &signature)
                .is_ok()
        })
    }

    /// `Ok` when `envelope` was signed by this runtime, unchanged since, and has not expired
    /// at `now_ms`; otherwise why not (an error of kind `forbidden`).
    pub fn verify(&self, envelope: &Envelope, now_ms: u64) -> Result<()> {
        let refuse = |why: String| Error::forbidden(format!("job refused: {why}; it does not run"));
        let Some(signed) = &envelope.signature else {
            return Err(refuse(format!(
                "it is not signed, and this node runs only jobs signed for runtime {} (submit it with the runtime's signing key)",
                self.identity.runtime
            )));
        };
        if signed.runtime != self.identity.runtime {
            return Err(refuse(format!(
                "it is signed for runtime `{}`, not for this node's runtime {}",
                signed.runtime.escape_default(),
                self.identity.runtime
            )));
        }
        let signature = b64()
            .decode(&signed.signature)
            .map_err(|_| refuse("its signature is not base64".into()))?;
        UnparsedPublicKey::new(&ED25519, &self.key)
            .verify(
                &signed_bytes(&signed.runtime, envelope, signed.expires_ms),
                &signature,
            )
            .map_err(|_| {
                refuse("its signature does not match its content (it was changed after it was signed, or signed with another key)".into())
            })?;
        if now_ms > signed.expires_ms {
            return Err(refuse(format!(
                "its signature expired {} s ago; submit it again",
                (now_ms - signed.expires_ms) / 1000
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_job_verifies_and_any_change_breaks_it() {
        let dir = tempfile::tempdir().unwrap();
        let keys = dir.path().join("runtime");
        let identity = init(&keys).unwrap();
        assert!(
            init(&keys).is_err(),
            "an existing runtime is never overwritten"
        );
        let signer = Signer::load(&keys.join("runtime.json"), &keys.join("signing.key")).unwrap();
        assert!(!format!("{signer:?}").contains(&identity.signing_public_key));
        let verifier = Verifier::new(identity.clone()).unwrap();
        let job =
            serde_json::json!({"name": "j", "source": {"type": "tpch"}, "parallel_copies": 2});
        let mut envelope = Envelope::new("0001-j".into(), job);
        assert!(
            verifier
                .verify(&envelope, now_ms())
                .unwrap_err()
                .to_string()
                .contains("not signed")
        );
        signer.sign(&mut envelope, Duration::from_secs(60));
        verifier.verify(&envelope, now_ms()).unwrap();
        // Through JSON text and back, as the channel carries it.
        let carried: Envelope =
            serde_json::from_str(&serde_json::to_string(&envelope).unwrap()).unwrap();
        verifier.verify(&carried, now_ms()).unwrap();

        let mut tampered = carried.clone();
        tampered.job["parallel_copies"] = serde_json::json!(64);
        let err = verifier.verify(&tampered, now_ms()).unwrap_err();
        assert_eq!(err.kind(), ferry_engine::ErrorKind::Forbidden);
        assert!(err.to_string().contains("does not match"), "{err}");
        let mut renamed = carried.clone();
        renamed.id = "0002-j".into();
        assert!(
            verifier.verify(&renamed, now_ms()).is_err(),
            "the id is signed"
        );
        let mut extended = carried.clone();
        extended.signature.as_mut().unwrap().expires_ms += 1000;
        assert!(
            verifier.verify(&extended, now_ms()).is_err(),
            "the expiry is signed"
        );
        let late = carried.signature.as_ref().unwrap().expires_ms + 5000;
        assert!(
            verifier
                .verify(&carried, late)
                .unwrap_err()
                .to_string()
                .contains("expired")
        );

        // Another runtime's key, or its identity.
        let other = init(&dir.path().join("other")).unwrap();
        let foreign = Verifier::new(other).unwrap();
        assert!(
            foreign
                .verify(&carried, now_ms())
                .unwrap_err()
                .to_string()
                .contains("signed for runtime")
        );
        let mut forged = carried.clone();
        forged.signature.as_mut().unwrap().runtime = foreign.runtime().to_string();
        assert!(
            foreign
                .verify(&forged, now_ms())
                .unwrap_err()
                .to_string()
                .contains("does not match")
        );
    }

    #[test]
    fn a_signing_key_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        init(dir.path()).unwrap();
        let key = dir.path().join("signing.key");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
        let err = Signer::load(&dir.path().join("runtime.json"), &key).unwrap_err();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_sealed_secret_opens_only_with_its_runtime_s_key_and_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let ours = init(&dir.path().join("ours")).unwrap();
        init(&dir.path().join("theirs")).unwrap();
        let key = CredentialKey::load(&dir.path().join("ours/credential.key")).unwrap();
        assert!(!format!("{key:?}").contains("AGE-SECRET"));
        let sealed = seal(&ours, "hunter2-Pw").unwrap();
        assert!(!sealed.contains("hunter2"));
        assert_eq!(key.open(&sealed).unwrap().as_str(), "hunter2-Pw");
        // Sealing twice gives two ciphertexts (a fresh key each time).
        assert_ne!(seal(&ours, "hunter2-Pw").unwrap(), sealed);

        let theirs = CredentialKey::load(&dir.path().join("theirs/credential.key")).unwrap();
        let err = theirs.open(&sealed).unwrap_err().to_string();
        assert!(
            err.contains("another runtime") && !err.contains("hunter2"),
            "{err}"
        );
        let mut bytes = b64().decode(&sealed).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        let err = key.open(&b64().encode(bytes)).unwrap_err().to_string();
        assert!(err.contains("changed after it was sealed"), "{err}");
        assert!(key.open("not base64 !").is_err());
    }
}
