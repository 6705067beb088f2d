//! Parsing of the hex ed25519 public keys in `infer.trusted_keys` and
//! `ota.trusted_keys`. A leaf: imports nothing from the crate.

/// Hex ed25519 public keys, parsed.
pub fn parse_keys(keys: &[String]) -> Result<Vec<ed25519_dalek::VerifyingKey>, String> {
    keys.iter()
        .map(|k| {
            let bytes: [u8; 32] = hex::decode(k.trim())
                .map_err(|e| e.to_string())?
                .try_into()
                .map_err(|_| "an ed25519 public key is 32 bytes (64 hex digits)".to_owned())?;
            ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| e.to_string())
        })
        .collect()
}
