//! Login signatures: HMAC-SHA256 keyed with SHA-256(secret).
//!
//! The engine stores only `SHA-256(secret)` (`Command::AddApiKey.secret_hash`), so that
//! hash is the HMAC key both sides hold. It is key-equivalent: whoever reads it (from a
//! snapshot, a journal or the replication stream) can log in as the key. Ed25519 keys
//! would remove that, since the server would hold only a public key.

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};

/// Bytes covered by the signature: `api_key_id || timestamp_ns || nonce`, little-endian,
/// which are also frame bytes 8..32 of the Login frame.
pub const LOGIN_SIGNED_SIZE: usize = 24;

/// `SHA-256(secret)`: the value `AddApiKey` registers and the HMAC key of the login.
pub fn secret_hash(secret: &[u8]) -> [u8; 32] {
    Sha256::digest(secret).into()
}

fn login_mac(
    secret_hash: &[u8; 32],
    api_key_id: u64,
    timestamp_ns: u64,
    nonce: u64,
) -> Hmac<Sha256> {
    let mut signed = [0u8; LOGIN_SIGNED_SIZE];
    signed[0..8].copy_from_slice(&api_key_id.to_le_bytes());
    signed[8..16].copy_from_slice(&timestamp_ns.to_le_bytes());
    signed[16..24].copy_from_slice(&nonce.to_le_bytes());
    // HMAC takes keys of any length; 32 bytes is below the block size, so it is used as is.
    let mut mac = Hmac::<Sha256>::new_from_slice(secret_hash).expect("HMAC accepts any key length");
    mac.update(&signed);
    mac
}

/// The Login signature for these fields.
pub fn sign_login(
    secret_hash: &[u8; 32],
    api_key_id: u64,
    timestamp_ns: u64,
    nonce: u64,
) -> [u8; 32] {
    login_mac(secret_hash, api_key_id, timestamp_ns, nonce)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether `signature` signs these fields under `secret_hash`. The comparison takes the
/// same time wherever the first differing byte is, so it leaks nothing to a prober.
pub fn verify_login(
    secret_hash: &[u8; 32],
    api_key_id: u64,
    timestamp_ns: u64,
    nonce: u64,
    signature: &[u8; 32],
) -> bool {
    login_mac(secret_hash, api_key_id, timestamp_ns, nonce)
        .verify_slice(signature)
        .is_ok()
}
