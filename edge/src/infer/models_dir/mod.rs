//! The models folder and the loader that feeds candidates to the engine.
//!
//! Layout under `<data_dir>/models/`:
//! - `active/<name>/`: the model each slot runs (`model.onnx`,
//!   `manifest.json`, `model.sig` when signed); loaded at start;
//! - `incoming/<any>/`: the drop folder; a folder is taken once nothing in it
//!   changed for a second;
//! - `staging/`: candidates being loaded or in shadow;
//! - `rejected/`: candidates that failed a check or their shadow run, kept
//!   for the operator to inspect.
//!
//! Invariants: a candidate reaches the engine only after its sha256 (and, with
//! trusted keys, its signature over manifest and model) matched and tract
//! loaded it; the loading runs off the ingest task, so ingest never waits
//! for it. Every path below `<data_dir>/models/` is built from fixed names,
//! a folder name the drop folder listed, a command id, or a manifest name
//! that passed [`super::signing::is_plain_name`]: nothing a sender writes
//! can name a place outside the models folder. Without trusted keys a
//! command's `http://` URL is refused (the manifest is not covered by the
//! command's sha256, so plain http would let anyone on the path rewrite it).
//!
//! [`Loader`] (in `loader.rs`) watches `incoming/` and takes `down/cmd`
//! model updates; this file owns the folder layout.

mod loader;

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use ed25519_dalek::VerifyingKey;
use tracing::warn;

use super::model::{Model, ModelError};
use super::signing;

pub use loader::{Candidate, Loader, LoaderNews, ModelCommand};

/// The models folder, laid out as the module doc says.
#[derive(Debug, Clone)]
pub struct ModelsDir {
    root: PathBuf,
}

fn now_tag() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

impl ModelsDir {
    pub fn create(root: &Path) -> std::io::Result<ModelsDir> {
        let d = ModelsDir {
            root: root.to_owned(),
        };
        for sub in ["active", "incoming", "staging", "rejected"] {
            std::fs::create_dir_all(d.root.join(sub))?;
        }
        Ok(d)
    }

    pub fn incoming(&self) -> PathBuf {
        self.root.join("incoming")
    }

    fn active(&self, name: &str) -> PathBuf {
        self.root.join("active").join(name)
    }

    /// Loads every active model; seeds (config `infer.models`) fill slots that
    /// have none yet. Failures are returned, not fatal: the agent runs without
    /// that model.
    pub fn load_active(
        &self,
        seeds: &[PathBuf],
        trusted: &[VerifyingKey],
    ) -> (Vec<Model>, Vec<(PathBuf, ModelError)>) {
        let mut models = Vec::new();
        let mut failures = Vec::new();
        let mut dirs: Vec<PathBuf> = std::fs::read_dir(self.root.join("active"))
            .map(|rd| {
                rd.filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_dir())
                    .collect()
            })
            .unwrap_or_default();
        dirs.sort();
        for dir in dirs {
            match Model::load_dir(&dir, trusted, 1) {
                Ok(m) => models.push(m),
                Err(e) => failures.push((dir, e)),
            }
        }
        for seed in seeds {
            match Model::load_dir(seed, trusted, 1) {
                Ok(m)
                    if models
                        .iter()
                        .any(|a: &Model| a.manifest.name == m.manifest.name) => {}
                Ok(mut m) => {
                    let target = self.active(&m.manifest.name);
                    if let Err(e) = copy_model_dir(seed, &target) {
                        warn!(seed = %seed.display(), error = %e, "cannot copy seed model into the models folder; running it from its seed folder");
                    } else {
                        m.dir = Some(target);
                    }
                    models.push(m);
                }
                Err(e) => failures.push((seed.clone(), e)),
            }
        }
        (models, failures)
    }

    /// Makes the model folder `dir` the active one of slot `name`.
    pub fn install(&self, name: &str, dir: &Path) -> std::io::Result<()> {
        // Loading refused such a name already; this keeps the folder safe
        // whoever calls.
        if !signing::is_plain_name(name) {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("model name {name:?} is not a plain name"),
            ));
        }
        let target = self.active(name);
        if dir == target {
            return Ok(());
        }
        let old = self
            .root
            .join("staging")
            .join(format!("replaced-{name}-{}", now_tag()));
        if target.exists() {
            std::fs::rename(&target, &old)?;
        }
        std::fs::rename(dir, &target)?;
        let _ = std::fs::remove_dir_all(&old);
        Ok(())
    }

    /// Moves a candidate folder to `rejected/`.
    pub fn reject(&self, dir: &Path) {
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let to = self
            .root
            .join("rejected")
            .join(format!("{name}-{}", now_tag()));
        if let Err(e) = std::fs::rename(dir, &to) {
            warn!(dir = %dir.display(), error = %e, "cannot move rejected model");
        }
    }

    fn stage(&self, label: &str) -> PathBuf {
        self.root
            .join("staging")
            .join(format!("{label}-{}", now_tag()))
    }
}

fn copy_model_dir(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for f in ["model.onnx", "manifest.json", signing::SIGNATURE_FILE] {
        if from.join(f).exists() {
            std::fs::copy(from.join(f), to.join(f))?;
        }
    }
    Ok(())
}
