//! The trust in a package: the ed25519 signature over the manifest's
//! bytes, and the semver versions it names.

use std::path::Path;

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use super::{io_err, safe_path, Manifest, PackageError, FORMAT};

impl Manifest {
    /// Parses manifest bytes after checking their signature (hex).
    pub fn verify(
        bytes: &[u8],
        signature_hex: &str,
        trusted: &[VerifyingKey],
    ) -> Result<Manifest, PackageError> {
        let sig = hex::decode(signature_hex.trim())
            .ok()
            .and_then(|s| Signature::from_slice(&s).ok())
            .ok_or(PackageError::Signature)?;
        if !trusted.iter().any(|k| k.verify_strict(bytes, &sig).is_ok()) {
            return Err(PackageError::Signature);
        }
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| PackageError::Manifest(e.to_string()))?;
        if m.format != FORMAT {
            return Err(PackageError::Manifest(format!(
                "format {} (this agent reads {FORMAT})",
                m.format
            )));
        }
        for f in &m.files {
            safe_path(&f.path)?;
        }
        m.check_versions()?;
        Ok(m)
    }

    /// Every version field parses as semver.
    pub fn check_versions(&self) -> Result<(), PackageError> {
        parse_version("version", &self.version)?;
        if let Some(min) = &self.min_version {
            parse_version("min_version", min)?;
        }
        for v in &self.allow_downgrade_from {
            parse_version("allow_downgrade_from", v)?;
        }
        Ok(())
    }
}

/// Hex ed25519 signature of `bytes`.
pub fn sign(bytes: &[u8], key: &SigningKey) -> String {
    hex::encode(key.sign(bytes).to_bytes())
}

/// A signing key from a file holding its 32-byte secret as hex.
pub fn read_signing_key(path: &Path) -> Result<SigningKey, PackageError> {
    let text = std::fs::read_to_string(path).map_err(|e| io_err(path, e))?;
    let bytes: [u8; 32] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| PackageError::Manifest(format!("{}: not 64 hex digits", path.display())))?;
    Ok(SigningKey::from_bytes(&bytes))
}

/// `value` as a semver version; `what` names the field in the error.
pub fn parse_version(what: &'static str, value: &str) -> Result<semver::Version, PackageError> {
    semver::Version::parse(value.trim()).map_err(|e| PackageError::BadVersion {
        what,
        value: value.to_owned(),
        error: e.to_string(),
    })
}

/// Orders two parsed versions by semver precedence (build metadata
/// ignored; see the module doc).
pub fn version_cmp(a: &semver::Version, b: &semver::Version) -> std::cmp::Ordering {
    a.cmp_precedence(b)
}
