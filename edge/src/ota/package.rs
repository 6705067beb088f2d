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

use std::collections::HashSet;
use std::path::{Component, Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

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

pub fn sha256_file(path: &Path) -> Result<(u64, String), PackageError> {
    let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).map_err(|e| io_err(path, e))?;
    Ok((n, hex::encode(h.finalize())))
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
    /// Lists every file under `dir` (except the manifest and signature).
    pub fn of_dir(dir: &Path, version: &str, target: &str) -> Result<Manifest, PackageError> {
        let mut files = Vec::new();
        collect(dir, dir, &mut files)?;
        files.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(Manifest {
            format: FORMAT,
            name: "aeris-edge".into(),
            version: version.into(),
            target: target.into(),
            min_version: None,
            allow_downgrade: false,
            allow_downgrade_from: Vec::new(),
            files,
        })
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // A derived Serialize of plain fields cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

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

    /// Deletes from `dir` everything that is not a listed file (a regular
    /// file at a listed path), a folder on the way to one, or the manifest
    /// and its signature at the top; symlinks are deleted, never followed.
    /// Returns the paths deleted, relative to `dir`.
    pub fn prune_unlisted(&self, dir: &Path) -> Result<Vec<String>, PackageError> {
        let mut files: HashSet<PathBuf> = [MANIFEST, SIGNATURE].map(PathBuf::from).into();
        let mut dirs = HashSet::new();
        for f in &self.files {
            let p = safe_path(&f.path)?;
            dirs.extend(p.ancestors().skip(1).map(Path::to_path_buf));
            files.insert(p);
        }
        let mut removed = Vec::new();
        prune(dir, Path::new(""), &files, &dirs, &mut removed)?;
        Ok(removed)
    }

    /// Checks that every listed file under `dir` has its size and sha256.
    pub fn check_files(&self, dir: &Path) -> Result<(), PackageError> {
        for f in &self.files {
            let (size, sha) = sha256_file(&dir.join(safe_path(&f.path)?))?;
            if size != f.size || sha != f.sha256 {
                return Err(PackageError::Mismatch {
                    path: f.path.clone(),
                    expected: format!("{} bytes, sha256 {}", f.size, f.sha256),
                    actual: format!("{size} bytes, sha256 {sha}"),
                });
            }
        }
        Ok(())
    }
}

fn prune(
    dir: &Path,
    rel: &Path,
    files: &HashSet<PathBuf>,
    dirs: &HashSet<PathBuf>,
    removed: &mut Vec<String>,
) -> Result<(), PackageError> {
    let at = dir.join(rel);
    for entry in std::fs::read_dir(&at).map_err(|e| io_err(&at, e))? {
        let entry = entry.map_err(|e| io_err(&at, e))?;
        let rel = rel.join(entry.file_name());
        // file_type() does not follow symlinks.
        let kind = entry.file_type().map_err(|e| io_err(&entry.path(), e))?;
        if kind.is_dir() && dirs.contains(&rel) {
            prune(dir, &rel, files, dirs, removed)?;
            continue;
        }
        if kind.is_file() && files.contains(&rel) {
            continue;
        }
        let path = entry.path();
        if kind.is_dir() {
            std::fs::remove_dir_all(&path)
        } else {
            std::fs::remove_file(&path)
        }
        .map_err(|e| io_err(&path, e))?;
        removed.push(rel.to_string_lossy().into_owned());
    }
    Ok(())
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<FileEntry>) -> Result<(), PackageError> {
    for entry in std::fs::read_dir(dir).map_err(|e| io_err(dir, e))? {
        let path = entry.map_err(|e| io_err(dir, e))?.path();
        if path.is_dir() {
            collect(root, &path, out)?;
            continue;
        }
        let rel = path
            .strip_prefix(root)
            .map_err(|e| PackageError::Manifest(e.to_string()))?
            .to_string_lossy()
            .replace('\\', "/");
        if rel == MANIFEST || rel == SIGNATURE {
            continue;
        }
        let (size, sha256) = sha256_file(&path)?;
        out.push(FileEntry {
            path: rel,
            size,
            sha256,
        });
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    #[test]
    fn manifest_verifies_only_with_a_trusted_key_and_untouched_bytes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("models/m")).unwrap();
        std::fs::write(dir.path().join("aeris-edge"), b"binary").unwrap();
        std::fs::write(dir.path().join("models/m/model.onnx"), b"onnx").unwrap();
        let m = Manifest::of_dir(dir.path(), "1.2.3", "t").unwrap();
        assert_eq!(m.files.len(), 2);
        assert_eq!(m.files[1].path, "models/m/model.onnx");
        let bytes = m.to_bytes();
        let sig = sign(&bytes, &key(1));
        let trusted = [key(1).verifying_key()];
        assert_eq!(Manifest::verify(&bytes, &sig, &trusted).unwrap(), m);
        let other = [key(2).verifying_key()];
        assert!(matches!(
            Manifest::verify(&bytes, &sig, &other),
            Err(PackageError::Signature)
        ));
        let mut changed = bytes.clone();
        changed[10] ^= 1;
        assert!(Manifest::verify(&changed, &sig, &trusted).is_err());
        m.check_files(dir.path()).unwrap();
        std::fs::write(dir.path().join("aeris-edge"), b"binarz").unwrap();
        let e = m.check_files(dir.path()).unwrap_err();
        assert_eq!(e.reason(), "checksum");
    }

    #[test]
    fn paths_leaving_the_package_are_refused() {
        for p in ["../x", "/etc/passwd", "a/../../b", ""] {
            assert!(safe_path(p).is_err(), "{p}");
        }
        assert!(safe_path("models/m/model.onnx").is_ok());
    }

    #[test]
    fn versions_compare_by_semver_precedence() {
        use std::cmp::Ordering::*;
        let cmp = |a: &str, b: &str| {
            version_cmp(
                &parse_version("a", a).unwrap(),
                &parse_version("b", b).unwrap(),
            )
        };
        assert_eq!(cmp("0.10.0", "0.9.9"), Greater);
        assert_eq!(cmp("1.0.0", "1.0.0"), Equal);
        assert_eq!(cmp("0.1.0", "0.2.0"), Less);
        // A release candidate is older than its release (was Equal).
        assert_eq!(cmp("1.2.0-rc1", "1.2.0"), Less);
        assert_eq!(cmp("1.2.0", "1.2.0-rc1"), Greater);
        assert_eq!(cmp("1.2.0-rc1", "1.2.0-rc2"), Less);
        assert_eq!(cmp("1.2.0-rc.2", "1.2.0-rc.10"), Less);
        assert_eq!(cmp("1.2.0-alpha", "1.2.0-rc1"), Less);
        assert_eq!(cmp("1.1.9", "1.2.0-rc1"), Less);
        // Build metadata is not part of the order.
        assert_eq!(cmp("1.2.0+build.7", "1.2.0"), Equal);
        assert_eq!(cmp("1.2.0+a", "1.2.0+b"), Equal);
        for bad in ["", "1.2", "v1.2.0", "1.2.0.1", "1.2.x", "01.2.0", "latest"] {
            let e = parse_version("version", bad).unwrap_err();
            assert_eq!(e.reason(), "bad_version", "{bad}");
            assert!(e.to_string().contains("not a semver version"), "{e}");
        }
    }

    #[test]
    fn only_listed_regular_files_survive_pruning() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir_all(d.join("models/m")).unwrap();
        std::fs::write(d.join("aeris-edge"), b"binary").unwrap();
        std::fs::write(d.join("models/m/model.onnx"), b"onnx").unwrap();
        let m = Manifest::of_dir(d, "1.0.0", "t").unwrap();
        std::fs::write(d.join(MANIFEST), m.to_bytes()).unwrap();
        std::fs::write(d.join(SIGNATURE), b"sig").unwrap();
        // Planted: a file, a file beside a listed one, a folder, a symlink
        // pointing outside, and a symlink where a listed folder would be.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("keep"), b"x").unwrap();
        std::fs::write(d.join("extra"), b"x").unwrap();
        std::fs::write(d.join("models/m/extra.onnx"), b"x").unwrap();
        std::fs::create_dir_all(d.join("hooks/deep")).unwrap();
        std::fs::write(d.join("hooks/deep/run.sh"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), d.join("link")).unwrap();
        std::os::unix::fs::symlink(outside.path(), d.join("models/n")).unwrap();
        let mut removed = m.prune_unlisted(d).unwrap();
        removed.sort();
        assert_eq!(
            removed,
            ["extra", "hooks", "link", "models/m/extra.onnx", "models/n"]
        );
        m.check_files(d).unwrap();
        assert!(d.join(MANIFEST).exists() && d.join(SIGNATURE).exists());
        assert!(
            outside.path().join("keep").exists(),
            "a symlink was followed"
        );
        // A symlink at a listed path is removed too: the check then fails.
        std::fs::remove_file(d.join("aeris-edge")).unwrap();
        std::os::unix::fs::symlink(outside.path().join("keep"), d.join("aeris-edge")).unwrap();
        assert_eq!(m.prune_unlisted(d).unwrap(), ["aeris-edge"]);
        assert!(outside.path().join("keep").exists());
        assert_eq!(m.check_files(d).unwrap_err().reason(), "io");
    }
}
