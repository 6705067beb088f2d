//! What a model signature covers, and the names a model may carry.
//!
//! Invariant: with `infer.trusted_keys` set, a model folder is used only if
//! its signature verifies over *both* files that decide what runs and where
//! it is installed: `manifest.json` (name, version, inputs, thresholds,
//! tolerance) and `model.onnx`. A byte changed in either after signing makes
//! the folder a `signature` rejection.
//!
//! Signed bytes, format 1 (79 bytes):
//!
//! ```text
//! "aeris-model/v1\n"        15 ASCII bytes: domain and format, so a model
//!                            signature is never valid as an update signature
//!                            (those cover a package manifest's JSON text)
//! sha256(manifest.json)     32 bytes, over the file exactly as stored/served
//! sha256(model.onnx)        32 bytes
//! ```
//!
//! The signature is ed25519 (64 bytes) over those bytes. On disk it is
//! `model.sig` beside the two files, hex (raw 64 bytes are read too); on the
//! wire it is the `signature` field of `CommandKind::Model` (raw bytes).
//! `aeris-package sign-model` writes it. The earlier `model.onnx.sig`
//! (over `model.onnx` alone) is no longer read: such a folder is refused
//! with reason `signature` until it is signed again.
//!
//! Names: a manifest's `name` becomes a folder under `models/active/`, so it
//! and the version must be a plain token, `[A-Za-z0-9._-]{1,64}` and neither
//! `.` nor `..`; anything else is refused with reason `name` before any file
//! is moved.

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use sha2::{Digest, Sha256};

/// The signature file in a model folder.
pub const SIGNATURE_FILE: &str = "model.sig";
/// Domain and format prefix of the signed bytes.
pub const SIGNED_PREFIX: &[u8; 15] = b"aeris-model/v1\n";
/// Longest model name or version.
pub const MAX_NAME_LEN: usize = 64;

/// The bytes a model signature covers (format 1, see the module doc).
pub fn signed_bytes(manifest: &[u8], model: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SIGNED_PREFIX.len() + 64);
    out.extend_from_slice(SIGNED_PREFIX);
    out.extend_from_slice(&Sha256::digest(manifest));
    out.extend_from_slice(&Sha256::digest(model));
    out
}

/// Signs a model: the 64-byte ed25519 signature of [`signed_bytes`].
pub fn sign(manifest: &[u8], model: &[u8], key: &SigningKey) -> [u8; 64] {
    key.sign(&signed_bytes(manifest, model)).to_bytes()
}

/// True if `signature` over [`signed_bytes`] verifies with any of `trusted`.
pub fn verify(manifest: &[u8], model: &[u8], signature: &[u8], trusted: &[VerifyingKey]) -> bool {
    let Ok(sig) = Signature::from_slice(signature) else {
        return false;
    };
    let bytes = signed_bytes(manifest, model);
    trusted.iter().any(|k| k.verify(&bytes, &sig).is_ok())
}

/// A signature file's content: hex (surrounding space ignored) or raw bytes.
pub fn parse_signature_file(raw: Vec<u8>) -> Vec<u8> {
    match hex::decode(String::from_utf8_lossy(&raw).trim()) {
        Ok(decoded) => decoded,
        Err(_) => raw,
    }
}

/// A model name or version that may become one path component:
/// `[A-Za-z0-9._-]{1,64}`, not `.` or `..`.
pub fn is_plain_name(s: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&s.len())
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_tokens_are_names() {
        for ok in [
            "pm25_nowcast",
            "pm_anomaly",
            "1.0.1",
            "a",
            "A-b.c_9",
            &"x".repeat(64),
        ] {
            assert!(is_plain_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../../x",
            "a/b",
            "/abs",
            "a\\b",
            "a b",
            "1.0.0+build",
            "é",
            "a\0",
            &"x".repeat(65),
        ] {
            assert!(!is_plain_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn the_signature_covers_manifest_and_model() {
        let key = SigningKey::from_bytes(&[3; 32]);
        let trusted = [key.verifying_key()];
        let sig = sign(b"{\"name\":\"m\"}", b"onnx", &key);
        assert!(verify(b"{\"name\":\"m\"}", b"onnx", &sig, &trusted));
        assert!(!verify(b"{\"name\":\"n\"}", b"onnx", &sig, &trusted));
        assert!(!verify(b"{\"name\":\"m\"}", b"onnz", &sig, &trusted));
        // Swapping the two files is a different message.
        assert!(!verify(b"onnx", b"{\"name\":\"m\"}", &sig, &trusted));
        let other = [SigningKey::from_bytes(&[4; 32]).verifying_key()];
        assert!(!verify(b"{\"name\":\"m\"}", b"onnx", &sig, &other));
        assert!(!verify(b"{\"name\":\"m\"}", b"onnx", &sig[..63], &trusted));
        assert_eq!(signed_bytes(b"", b"").len(), 79);
    }
}
