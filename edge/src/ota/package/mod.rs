//! The agent package: a folder, and the signed manifest that lists it.
//!
//! Layout of a package folder (what `cross/build.sh` writes and what an
//! OTA update unpacks into a slot):
//!
//! ```text
//! aeris-edge              the stripped agent binary
//! aeris-edge.service      the systemd unit
//! edge.toml               the default config
//! models/<name>/...       ONNX models with their manifests
//! manifest.json           this module's Manifest (format 1), JSON
//! manifest.json.sig       ed25519 signature over manifest.json's exact bytes, hex
//! ```
//!
//! Invariant: a package is trusted only if `manifest.json.sig` verifies
//! against a trusted key over the manifest's bytes as stored, and every file
//! listed has the listed size and sha256. Files not listed never enter a
//! slot: [`Manifest::prune_unlisted`] deletes them from the `.partial`
//! folder (and any symlink or special file) before it becomes the slot.
//! Paths are relative, `/`-separated, without `..`, so a manifest cannot
//! name a file outside its folder.
//!
//! Versions are semver 2.0 (`1.2.0`, `1.2.0-rc1`, `1.2.0+build.5`) and are
//! ordered by semver precedence: a pre-release is older than its release
//! (`1.2.0-rc1 < 1.2.0`), pre-release identifiers compare field by field
//! (`rc1 < rc2`, but `rc10 < rc2`: write `rc.10`), and build metadata is
//! ignored (`1.2.0+a` is the same version as `1.2.0`). A manifest whose
//! version fields do not parse is refused (reason `bad_version`).
//!
//! Downgrades: `allow_downgrade_from` lists the exact running versions the
//! package may replace although it is older. It binds the permission to the
//! devices it was issued for, so the signed package cannot be replayed to
//! downgrade a device that has since moved on. The earlier unbound
//! `allow_downgrade: true` is still read (old manifests parse) but no
//! longer permits anything; such a downgrade is refused and says so. Both
//! fields are left out of the JSON when unused, so a manifest without a
//! downgrade reads the same to agents from before them (which refuse, as
//! malformed, a manifest that carries the new field: a safe outcome), and
//! the format stays 1.

//!
//! - `verify`: the signature over the manifest, and semver versions.
//! - `files`: listing a folder into a manifest, checking the listed files,
//!   and pruning what is not listed.

mod files;
#[cfg(test)]
mod tests;
mod verify;

use std::path::{Component, Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use files::sha256_file;
pub use verify::{parse_version, read_signing_key, sign, version_cmp};

pub const MANIFEST: &str = "manifest.json";
pub const SIGNATURE: &str = "manifest.json.sig";
/// The format this agent writes and reads; a change of layout bumps it.
pub const FORMAT: u32 = 1;

/// `manifest.json`, format 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: u32,
    /// Always `aeris-edge`.
    pub name: String,
    /// The agent version the package holds (semver `x.y.z`).
    pub version: String,
    /// Rust target and glibc floor, e.g. `aarch64-unknown-linux-gnu.2.31`.
    pub target: String,
    /// An agent older than this must not install the package (e.g. its
    /// state format cannot be read by the older one after a rollback).
    #[serde(default)]
    pub min_version: Option<String>,
    /// Old, unbound downgrade permission: read so old manifests parse, but
    /// it permits nothing (see the module doc).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_downgrade: bool,
    /// Running versions (exact, by semver precedence) this package may
    /// replace although it is older.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_downgrade_from: Vec<String>,
    pub files: Vec<FileEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    pub path: String,
    pub size: u64,
    /// Lower-case hex.
    pub sha256: String,
}

#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    #[error("signature does not verify against any trusted key")]
    Signature,
    #[error("manifest is not valid: {0}")]
    Manifest(String),
    #[error("{path}: expected {expected}, found {actual}")]
    Mismatch {
        path: String,
        expected: String,
        actual: String,
    },
    #[error("{path}: {error}")]
    Io { path: String, error: String },
    #[error("{what} {value:?} is not a semver version: {error}")]
    BadVersion {
        what: &'static str,
        value: String,
        error: String,
    },
}

impl PackageError {
    /// Stable label for metrics and events.
    pub fn reason(&self) -> &'static str {
        match self {
            PackageError::Signature => "signature",
            PackageError::Manifest(_) => "manifest",
            PackageError::Mismatch { .. } => "checksum",
            PackageError::Io { .. } => "io",
            PackageError::BadVersion { .. } => "bad_version",
        }
    }
}

fn io_err(path: &Path, e: std::io::Error) -> PackageError {
    PackageError::Io {
        path: path.display().to_string(),
        error: e.to_string(),
    }
}

/// A manifest path as a relative path inside the package, or an error for
/// absolute paths and `..`.
pub fn safe_path(p: &str) -> Result<PathBuf, PackageError> {
    let path = Path::new(p);
    let ok = !p.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
    ok.then(|| path.to_path_buf())
        .ok_or_else(|| PackageError::Manifest(format!("file path {p:?} leaves the package")))
}

impl Manifest {
    pub fn to_bytes(&self) -> Vec<u8> {
        // A derived Serialize of plain fields cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}
