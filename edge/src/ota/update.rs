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

use super::package::{parse_version, version_cmp, Manifest, PackageError};

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
    #[error("version {offered} is older than the running {running} and {why}")]
    Downgrade {
        offered: String,
        running: String,
        why: String,
    },
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
    let run_v = parse_version("running version", running)?;
    // `verify` checked that every version field parses.
    let v = |what, s: &str| parse_version(what, s);
    if let Some(min) = &m.min_version {
        if version_cmp(&run_v, &v("min_version", min)?).is_lt() {
            return Err(OtaError::TooOld {
                running: running.into(),
                min: min.clone(),
            });
        }
    }
    match version_cmp(&v("version", &m.version)?, &run_v) {
        std::cmp::Ordering::Equal => return Err(OtaError::SameVersion(m.version)),
        std::cmp::Ordering::Less => {
            let mut bound = Vec::new();
            for from in &m.allow_downgrade_from {
                bound.push(v("allow_downgrade_from", from)?);
            }
            if !bound.iter().any(|b| version_cmp(b, &run_v).is_eq()) {
                return Err(OtaError::Downgrade {
                    offered: m.version.clone(),
                    running: running.into(),
                    why: downgrade_refusal(&m),
                });
            }
        }
        std::cmp::Ordering::Greater => {}
    }
    let total: u64 = m.files.iter().map(|f| f.size).sum();
    if total > max_bytes {
        return Err(OtaError::TooLarge(total));
    }
    Ok((update, m))
}

/// Why a downgrade is not allowed to this device, for the refusal.
fn downgrade_refusal(m: &Manifest) -> String {
    if !m.allow_downgrade_from.is_empty() {
        format!(
            "the manifest allows a downgrade only from {}",
            m.allow_downgrade_from.join(", ")
        )
    } else if m.allow_downgrade {
        "the manifest's allow_downgrade is not bound to a running version and no longer \
         permits one (sign it with allow_downgrade_from)"
            .into()
    } else {
        "the manifest does not allow a downgrade".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ota::package::{sign, FileEntry};
    use ed25519_dalek::SigningKey;

    fn offer(version: &str, min: Option<&str>, downgrade_from: &[&str], key: u8) -> Vec<u8> {
        let m = Manifest {
            format: 1,
            name: "aeris-edge".into(),
            version: version.into(),
            target: "t".into(),
            min_version: min.map(Into::into),
            allow_downgrade: false,
            allow_downgrade_from: downgrade_from.iter().map(|s| s.to_string()).collect(),
            files: vec![FileEntry {
                path: "aeris-edge".into(),
                size: 10,
                sha256: "00".into(),
            }],
        };
        signed(&m.to_bytes(), key)
    }

    fn signed(bytes: &[u8], key: u8) -> Vec<u8> {
        Update {
            format: 1,
            url: "http://x/".into(),
            signature: sign(bytes, &SigningKey::from_bytes(&[key; 32])),
            manifest: String::from_utf8(bytes.to_vec()).unwrap(),
        }
        .to_bytes()
    }

    #[test]
    fn signature_and_version_policy_decide_before_any_download() {
        let keys = [SigningKey::from_bytes(&[1; 32]).verifying_key()];
        let ok = |p: &[u8]| accept(p, &keys, "0.2.0", 1000).map(|(_, m)| m.version);
        assert_eq!(ok(&offer("0.3.0", None, &[], 1)).unwrap(), "0.3.0");
        let reason = |p: &[u8]| ok(p).unwrap_err().reason();
        assert_eq!(reason(&offer("0.3.0", None, &[], 2)), "signature");
        assert_eq!(reason(&offer("0.1.0", None, &[], 1)), "downgrade");
        assert_eq!(ok(&offer("0.1.0", None, &["0.2.0"], 1)).unwrap(), "0.1.0");
        assert_eq!(reason(&offer("0.2.0", None, &[], 1)), "same_version");
        assert_eq!(reason(&offer("0.3.0", Some("0.2.5"), &[], 1)), "too_old");
        assert_eq!(reason(b"{}"), "malformed");
        let none = accept(&offer("0.3.0", None, &[], 1), &[], "0.2.0", 1000);
        assert_eq!(none.unwrap_err().reason(), "no_keys");
        let big = accept(&offer("0.3.0", None, &[], 1), &keys, "0.2.0", 5);
        assert_eq!(big.unwrap_err().reason(), "too_large");
    }

    #[test]
    fn pre_releases_order_below_their_release_and_build_metadata_is_ignored() {
        let keys = [SigningKey::from_bytes(&[1; 32]).verifying_key()];
        let try_on = |running: &str, offered: &str| {
            accept(&offer(offered, None, &[], 1), &keys, running, 1000).map(|(_, m)| m.version)
        };
        // From a release candidate to its release: an upgrade (was refused
        // as the same version).
        assert_eq!(try_on("1.2.0-rc1", "1.2.0").unwrap(), "1.2.0");
        assert_eq!(try_on("1.2.0-rc1", "1.2.0-rc2").unwrap(), "1.2.0-rc2");
        let e = try_on("1.2.0", "1.2.0-rc1").unwrap_err();
        assert_eq!(e.reason(), "downgrade", "{e}");
        let e = try_on("1.2.0", "1.2.0+build.9").unwrap_err();
        assert_eq!(e.reason(), "same_version", "{e}");
        // A version that is not semver is refused with a reason naming it.
        let e = try_on("1.2.0", "1.3").unwrap_err();
        assert_eq!(e.reason(), "bad_version");
        assert!(
            e.to_string()
                .contains("version \"1.3\" is not a semver version"),
            "{e}"
        );
        let e = accept(&offer("1.3.0", Some("one"), &[], 1), &keys, "1.2.0", 1000).unwrap_err();
        assert_eq!(e.reason(), "bad_version");
        assert!(e.to_string().contains("min_version"), "{e}");
        let e = try_on("garbage", "1.3.0").unwrap_err();
        assert!(e.to_string().contains("running version"), "{e}");
    }

    #[test]
    fn a_downgrade_is_allowed_only_from_the_versions_it_was_signed_for() {
        let keys = [SigningKey::from_bytes(&[1; 32]).verifying_key()];
        let package = offer("0.1.0", None, &["0.2.0", "0.2.1"], 1);
        let on = |running: &str| accept(&package, &keys, running, 1000).map(|(_, m)| m.version);
        assert_eq!(on("0.2.0").unwrap(), "0.1.0");
        assert_eq!(on("0.2.1").unwrap(), "0.1.0");
        assert_eq!(on("0.2.0+other-build").unwrap(), "0.1.0");
        // Replayed to a device that has moved on: refused.
        let e = on("0.3.0").unwrap_err();
        assert_eq!(e.reason(), "downgrade");
        assert!(e.to_string().contains("only from 0.2.0, 0.2.1"), "{e}");
        // An old manifest's unbound flag still parses but allows nothing.
        let old = br#"{"format":1,"name":"aeris-edge","version":"0.1.0","target":"t","allow_downgrade":true,"files":[]}"#;
        let e = accept(&signed(old, 1), &keys, "0.2.0", 1000).unwrap_err();
        assert_eq!(e.reason(), "downgrade");
        assert!(e.to_string().contains("not bound"), "{e}");
        // ...and does not stand in the way of an upgrade.
        let old_up = br#"{"format":1,"name":"aeris-edge","version":"0.3.0","target":"t","allow_downgrade":true,"files":[]}"#;
        assert!(accept(&signed(old_up, 1), &keys, "0.2.0", 1000).is_ok());
    }
}
