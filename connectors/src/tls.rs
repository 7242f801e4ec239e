//! The process's TLS set-up, shared by every store that speaks TLS.

/// Makes ring the process's TLS crypto provider. Both ring (ours) and aws-lc-rs (pulled in
/// by object_store's Azure backend) are compiled in, and rustls then cannot pick one by
/// itself. Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
