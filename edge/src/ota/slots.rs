//! A/B slots on disk. Layout under `ota.root`:
//!
//! ```text
//! slots/a/, slots/b/     package folders (package.rs)
//! slots/<x>.partial/     a download in progress into the inactive slot
//! current -> slots/a     the slot systemd starts (ExecStart=<root>/current/aeris-edge)
//! trial.json             a trial in progress or just ended (Trial, JSON)
//! ```
//!
//! Invariants: `current` only ever names a complete, verified slot that has
//! passed its trial (or the first installed one), and it is switched with
//! one `rename(2)` of a new link over the old one, so at every instant it
//! names one slot or the other. The running slot is never written to.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::package::PackageError;

pub const SLOTS: [&str; 2] = ["a", "b"];

/// trial.json. `state`: `running`, `confirmed`, or `failed: <why>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trial {
    pub slot: String,
    pub version: String,
    pub from_version: String,
    pub command_id: u64,
    pub deadline_ms: i64,
    pub state: String,
}

#[derive(Debug, Clone)]
pub struct Slots {
    pub root: PathBuf,
}

fn io(path: &Path, e: std::io::Error) -> PackageError {
    PackageError::Io {
        path: path.display().to_string(),
        error: e.to_string(),
    }
}

impl Slots {
    pub fn new(root: &Path) -> Slots {
        Slots { root: root.into() }
    }

    pub fn dir(&self, slot: &str) -> PathBuf {
        self.root.join("slots").join(slot)
    }

    pub fn partial(&self, slot: &str) -> PathBuf {
        self.root.join("slots").join(format!("{slot}.partial"))
    }

    /// The slot `current` names, if any.
    pub fn current(&self) -> Option<String> {
        let target = std::fs::read_link(self.root.join("current")).ok()?;
        let name = target.file_name()?.to_str()?.to_owned();
        SLOTS.contains(&name.as_str()).then_some(name)
    }

    /// The slot an update goes into: the one `current` does not name.
    pub fn inactive(&self) -> &'static str {
        match self.current().as_deref() {
            Some("a") => "b",
            _ => "a",
        }
    }

    /// The `.partial` folder of `slot`, created if missing; anything there
    /// that is not a real folder (a symlink planted to redirect the
    /// download) is removed first.
    pub fn prepare_partial(&self, slot: &str) -> Result<PathBuf, PackageError> {
        let partial = self.partial(slot);
        if let Ok(meta) = std::fs::symlink_metadata(&partial) {
            if !meta.is_dir() {
                std::fs::remove_file(&partial).map_err(|e| io(&partial, e))?;
            }
        }
        std::fs::create_dir_all(&partial).map_err(|e| io(&partial, e))?;
        Ok(partial)
    }

    /// Replaces `slot` with its finished `.partial` folder.
    pub fn commit(&self, slot: &str) -> Result<(), PackageError> {
        let (dir, partial) = (self.dir(slot), self.partial(slot));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| io(&dir, e))?;
        }
        std::fs::rename(&partial, &dir).map_err(|e| io(&dir, e))?;
        sync_dir(&self.root.join("slots"));
        Ok(())
    }

    /// Points `current` at `slot` atomically.
    pub fn switch(&self, slot: &str) -> Result<(), PackageError> {
        let tmp = self.root.join("current.new");
        let _ = std::fs::remove_file(&tmp);
        std::os::unix::fs::symlink(Path::new("slots").join(slot), &tmp).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, self.root.join("current")).map_err(|e| io(&tmp, e))?;
        sync_dir(&self.root);
        Ok(())
    }

    fn trial_path(&self) -> PathBuf {
        self.root.join("trial.json")
    }

    pub fn read_trial(&self) -> Option<Trial> {
        let bytes = std::fs::read(self.trial_path()).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Writes trial.json via a temporary file and rename.
    pub fn write_trial(&self, t: &Trial) -> Result<(), PackageError> {
        let path = self.trial_path();
        let tmp = self.root.join("trial.json.new");
        let bytes = serde_json::to_vec_pretty(t).unwrap_or_default();
        write_synced(&tmp, &bytes).map_err(|e| io(&tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io(&path, e))?;
        sync_dir(&self.root);
        Ok(())
    }

    pub fn clear_trial(&self) {
        let _ = std::fs::remove_file(self.trial_path());
        sync_dir(&self.root);
    }
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// fsync of a folder, so a rename in it survives power loss.
pub fn sync_dir(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn switch_moves_current_between_slots_and_inactive_follows() {
        let dir = tempfile::tempdir().unwrap();
        let s = Slots::new(dir.path());
        assert_eq!(s.current(), None);
        assert_eq!(s.inactive(), "a");
        std::fs::create_dir_all(s.partial("a")).unwrap();
        std::fs::write(s.partial("a").join("f"), b"1").unwrap();
        s.commit("a").unwrap();
        s.switch("a").unwrap();
        assert_eq!(s.current().as_deref(), Some("a"));
        assert_eq!(s.inactive(), "b");
        assert_eq!(std::fs::read(dir.path().join("current/f")).unwrap(), b"1");
        s.switch("b").unwrap();
        assert_eq!(s.current().as_deref(), Some("b"));
        assert_eq!(s.inactive(), "a");
    }
}
