//! Fetching a package's files into the inactive slot's `.partial` folder.
//!
//! Resumable: a file already partly there is continued with an HTTP `Range`
//! request (a server answering 200 instead restarts it). Size-capped: a
//! file longer than its signed size is cut off and refused. A finished file
//! whose sha256 differs is deleted so the next attempt fetches it again.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use std::io::Write;

use super::package::{safe_path, sha256_file, Manifest, PackageError};
use super::update::OtaError;

/// Fetches every file of `m` from `url` into `dir`, counting bytes in
/// `progress`.
pub async fn fetch_all(
    url: &str,
    m: &Manifest,
    dir: &Path,
    progress: &AtomicU64,
) -> Result<(), OtaError> {
    let client = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(20))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(|e| OtaError::Download {
            url: url.into(),
            error: e.to_string(),
        })?;
    let base = url.trim_end_matches('/');
    for f in &m.files {
        let dest = dir.join(safe_path(&f.path)?);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io(parent, e))?;
        }
        let file_url = format!("{base}/{}", f.path);
        fetch_one(&client, &file_url, &dest, f.size, progress).await?;
        let (size, sha) = sha256_file(&dest)?;
        if size != f.size || sha != f.sha256 {
            let _ = std::fs::remove_file(&dest);
            return Err(PackageError::Mismatch {
                path: f.path.clone(),
                expected: format!("{} bytes, sha256 {}", f.size, f.sha256),
                actual: format!("{size} bytes, sha256 {sha}"),
            }
            .into());
        }
    }
    Ok(())
}

fn io(path: &Path, e: std::io::Error) -> OtaError {
    PackageError::Io {
        path: path.display().to_string(),
        error: e.to_string(),
    }
    .into()
}

async fn fetch_one(
    client: &reqwest::Client,
    url: &str,
    dest: &Path,
    size: u64,
    progress: &AtomicU64,
) -> Result<(), OtaError> {
    let fail = |e: String| OtaError::Download {
        url: url.into(),
        error: e,
    };
    let have = std::fs::metadata(dest).map(|m| m.len()).unwrap_or(0);
    if have == size {
        return Ok(());
    }
    let have = if have > size { 0 } else { have };
    let mut req = client.get(url);
    if have > 0 {
        req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut resp = req
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .map_err(|e| fail(e.to_string()))?;
    let resumed = have > 0 && resp.status() == reqwest::StatusCode::PARTIAL_CONTENT;
    // Plain file writes of network-sized chunks: short enough not to hold
    // up the runtime's other tasks on a local disk.
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(dest)
        .map_err(|e| io(dest, e))?;
    let mut written = if resumed { have } else { 0 };
    while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
        written += chunk.len() as u64;
        if written > size {
            drop(file);
            let _ = std::fs::remove_file(dest);
            return Err(fail(format!("longer than the signed {size} bytes")));
        }
        file.write_all(&chunk).map_err(|e| io(dest, e))?;
        progress.fetch_add(chunk.len() as u64, Relaxed);
    }
    file.sync_all().map_err(|e| io(dest, e))?;
    Ok(())
}
