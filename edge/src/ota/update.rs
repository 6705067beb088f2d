//! The update command: what arrives as `CommandKind::Ota { manifest }`.
//!
//! Payload, JSON, format 1:
//! `{"format":1,"url":"http://host/pkg/","manifest":"<manifest.json text>","signature":"<hex>"}`.
//! `manifest` is the package's `manifest.json` byte for byte (version,
//! target, minimum version, downgrade flag, each file's size and sha256) and
//! `signature` its `manifest.json.sig`; `url` is the folder the files are
//! fetched from (`<url>/<path>`). The URL is not signed: it only says where
//! to look, and every byte fetched must match the signed sha256.

use ed25519_dalek::VerifyingKey;
use serde::{Deserialize, Serialize};

use super::package::{version_cmp, Manifest, PackageError};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Update {
    pub format: u32,
    pub url: String,
    pub manifest: String,
    pub signature: String,
}

impl Update {
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Why an update was not installed; `reason()` labels metrics and events.
#[derive(Debug, thiserror::Error)]
pub enum OtaError {
    #[error("not an update command: {0}")]
    Malformed(String),
    #[error(transparent)]
    Package(#[from] PackageError),
    #[error("no trusted keys configured (ota.trusted_keys): updates are refused")]
    NoKeys,
    #[error("version {offered} is older than the running {running} and the manifest does not allow a downgrade")]
    Downgrade { offered: String, running: String },
    #[error("version {0} is already running")]
    SameVersion(String),
    #[error("the running version {running} is older than the package's minimum {min}")]
    TooOld { running: String, min: String },
    #[error("package of {0} bytes exceeds ota.max_package_bytes")]
    TooLarge(u64),
    #[error("download of {url}: {error}")]
    Download { url: String, error: String },
    #[error("an update is already in progress")]
    Busy,
}

impl OtaError {
    pub fn reason(&self) -> &'static str {
        match self {
            OtaError::Malformed(_) => "malformed",
            OtaError::Package(p) => p.reason(),
            OtaError::NoKeys => "no_keys",
            OtaError::Downgrade { .. } => "downgrade",
            OtaError::SameVersion(_) => "same_version",
            OtaError::TooOld { .. } => "too_old",
            OtaError::TooLarge(_) => "too_large",
            OtaError::Download { .. } => "download",
            OtaError::Busy => "busy",
        }
    }
}

/// Parses the command payload, checks the signature and the version policy
/// against the `running` version. Nothing is fetched before this passes.
pub fn accept(
    payload: &[u8],
    trusted: &[VerifyingKey],
    running: &str,
    max_bytes: u64,
) -> Result<(Update, Manifest), OtaError> {
    let update: Update =
        serde_json::from_slice(payload).map_err(|e| OtaError::Malformed(e.to_string()))?;
    if update.format != 1 {
        return Err(OtaError::Malformed(format!("format {}", update.format)));
    }
    if trusted.is_empty() {
        return Err(OtaError::NoKeys);
    }
    let m = Manifest::verify(update.manifest.as_bytes(), &update.signature, trusted)?;
    if let Some(min) = &m.min_version {
        if version_cmp(running, min).is_lt() {
            return Err(OtaError::TooOld {
                running: running.into(),
                min: min.clone(),
            });
        }
    }
    match version_cmp(&m.version, running) {
        std::cmp::Ordering::Equal => return Err(OtaError::SameVersion(m.version)),
        std::cmp::Ordering::Less if !m.allow_downgrade => {
            return Err(OtaError::Downgrade {
                offered: m.version,
                running: running.into(),
            })
        }
        _ => {}
    }
    let total: u64 = m.files.iter().map(|f| f.size).sum();
    if total > max_bytes {
        return Err(OtaError::TooLarge(total));
    }
    Ok((update, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ota::package::{sign, FileEntry};
    use ed25519_dalek::SigningKey;

    fn offer(version: &str, min: Option<&str>, downgrade: bool, key: u8) -> Vec<u8> {
        let m = Manifest {
            format: 1,
            name: "aeris-edge".into(),
            version: version.into(),
            target: "t".into(),
            min_version: min.map(Into::into),
            allow_downgrade: downgrade,
            files: vec![FileEntry {
                path: "aeris-edge".into(),
                size: 10,
                sha256: "00".into(),
            }],
        };
        let bytes = m.to_bytes();
        Update {
            format: 1,
            url: "http://x/".into(),
            signature: sign(&bytes, &SigningKey::from_bytes(&[key; 32])),
            manifest: String::from_utf8(bytes).unwrap(),
        }
        .to_bytes()
    }

    #[test]
    fn signature_and_version_policy_decide_before_any_download() {
        let keys = [SigningKey::from_bytes(&[1; 32]).verifying_key()];
        let ok = |p: &[u8]| accept(p, &keys, "0.2.0", 1000).map(|(_, m)| m.version);
        assert_eq!(ok(&offer("0.3.0", None, false, 1)).unwrap(), "0.3.0");
        let reason = |p: &[u8]| ok(p).unwrap_err().reason();
        assert_eq!(reason(&offer("0.3.0", None, false, 2)), "signature");
        assert_eq!(reason(&offer("0.1.0", None, false, 1)), "downgrade");
        assert_eq!(ok(&offer("0.1.0", None, true, 1)).unwrap(), "0.1.0");
        assert_eq!(reason(&offer("0.2.0", None, false, 1)), "same_version");
        assert_eq!(reason(&offer("0.3.0", Some("0.2.5"), false, 1)), "too_old");
        assert_eq!(reason(b"{}"), "malformed");
        let none = accept(&offer("0.3.0", None, false, 1), &[], "0.2.0", 1000);
        assert_eq!(none.unwrap_err().reason(), "no_keys");
        let big = accept(&offer("0.3.0", None, false, 1), &keys, "0.2.0", 5);
        assert_eq!(big.unwrap_err().reason(), "too_large");
    }
}
