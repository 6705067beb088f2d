//! The files of a package folder: listing them into a manifest, checking
//! them against it, and deleting what it does not list.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{io_err, safe_path, FileEntry, Manifest, PackageError, FORMAT, MANIFEST, SIGNATURE};

pub fn sha256_file(path: &Path) -> Result<(u64, String), PackageError> {
    let mut f = std::fs::File::open(path).map_err(|e| io_err(path, e))?;
    let mut h = Sha256::new();
    let n = std::io::copy(&mut f, &mut h).map_err(|e| io_err(path, e))?;
    Ok((n, hex::encode(h.finalize())))
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
