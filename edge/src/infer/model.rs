//! A model checked and loaded: name and version plain tokens, sha256 (and,
//! when keys are configured, the ed25519 signature over manifest and model,
//! see [`super::signing`]) verified against the bytes, graph loaded with
//! tract, input shape fixed to `[batch, width]`, optimised once.

use std::path::Path;
use std::sync::Arc;

use ed25519_dalek::VerifyingKey;
use sha2::{Digest, Sha256};
use tract_onnx::prelude::*;

use super::features::FeatureSpec;
use super::manifest::Manifest;
use super::signing;

/// Why a model could not be used. [`ModelError::reason`] is the metric label.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("cannot read {path}: {error}")]
    Io { path: String, error: String },
    #[error("manifest is not valid: {0}")]
    Manifest(String),
    #[error("sha256 {actual} does not match the expected {expected}")]
    Checksum { expected: String, actual: String },
    #[error("signature missing or not made by a trusted key over this manifest and model")]
    Signature,
    #[error("{what} {value:?} is not a plain name ([A-Za-z0-9._-], 1 to 64, not . or ..)")]
    Name { what: &'static str, value: String },
    #[error("{0}: plain http is refused while no infer.trusted_keys are set (nothing would prove the manifest)")]
    Insecure(String),
    #[error("model cannot be loaded: {0}")]
    Load(String),
    #[error("model does not fit its manifest: {0}")]
    Incompatible(String),
    #[error("inference failed: {0}")]
    Run(String),
}

impl ModelError {
    pub fn reason(&self) -> &'static str {
        match self {
            ModelError::Io { .. } => "io",
            ModelError::Manifest(_) => "manifest",
            ModelError::Checksum { .. } => "checksum",
            ModelError::Signature => "signature",
            ModelError::Name { .. } => "name",
            ModelError::Insecure(_) => "insecure_url",
            ModelError::Load(_) => "load",
            ModelError::Incompatible(_) => "incompatible",
            ModelError::Run(_) => "run",
        }
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// A model ready to run on batches of exactly `batch` rows.
pub struct Model {
    pub manifest: Manifest,
    /// The folder it was loaded from, if any (moved on promotion).
    pub dir: Option<std::path::PathBuf>,
    pub features: FeatureSpec,
    plan: Arc<TypedRunnableModel>,
    batch: usize,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Model({}@{})", self.manifest.name, self.manifest.version)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ModelError> {
    std::fs::read(path).map_err(|e| ModelError::Io {
        path: path.display().to_string(),
        error: e.to_string(),
    })
}

/// Checks `signature` over `manifest` and `model` (see [`signing`])
/// against any of `trusted`.
pub fn verify_signature(
    manifest: &[u8],
    model: &[u8],
    signature: &[u8],
    trusted: &[VerifyingKey],
) -> Result<(), ModelError> {
    if signing::verify(manifest, model, signature, trusted) {
        Ok(())
    } else {
        Err(ModelError::Signature)
    }
}

/// Refuses a name or version that could not safely be one path component.
pub fn check_name(what: &'static str, value: &str) -> Result<(), ModelError> {
    if signing::is_plain_name(value) {
        Ok(())
    } else {
        Err(ModelError::Name {
            what,
            value: value.to_owned(),
        })
    }
}

impl Model {
    /// Loads `dir/model.onnx` described by `dir/manifest.json`. With trusted
    /// keys, `dir/model.sig` (raw 64 bytes or hex) must verify over both
    /// files before either is parsed.
    pub fn load_dir(
        dir: &Path,
        trusted: &[VerifyingKey],
        batch: usize,
    ) -> Result<Model, ModelError> {
        let manifest_bytes = read(&dir.join("manifest.json"))?;
        let bytes = read(&dir.join("model.onnx"))?;
        if !trusted.is_empty() {
            let raw =
                read(&dir.join(signing::SIGNATURE_FILE)).map_err(|_| ModelError::Signature)?;
            let sig = signing::parse_signature_file(raw);
            verify_signature(&manifest_bytes, &bytes, &sig, trusted)?;
        }
        let manifest: Manifest = serde_json::from_slice(&manifest_bytes)
            .map_err(|e| ModelError::Manifest(e.to_string()))?;
        let mut model = Model::from_bytes(manifest, &bytes, batch)?;
        model.dir = Some(dir.to_owned());
        Ok(model)
    }

    /// Checks the manifest's name and version and the bytes against its
    /// sha256, then loads them.
    pub fn from_bytes(manifest: Manifest, bytes: &[u8], batch: usize) -> Result<Model, ModelError> {
        check_name("model name", &manifest.name)?;
        check_name("model version", &manifest.version)?;
        let actual = sha256_hex(bytes);
        if !actual.eq_ignore_ascii_case(&manifest.sha256) {
            return Err(ModelError::Checksum {
                expected: manifest.sha256.clone(),
                actual,
            });
        }
        let features =
            FeatureSpec::parse(&manifest.feature_names()).map_err(ModelError::Incompatible)?;
        let width = features.width();
        let load = |e: TractError| ModelError::Load(format!("{e:#}"));
        let plan = tract_onnx::onnx()
            .model_for_read(&mut &bytes[..])
            .map_err(load)?
            .with_input_fact(0, f32::fact([batch, width]).into())
            .map_err(|e| ModelError::Incompatible(format!("input [{batch}, {width}]: {e:#}")))?
            .into_optimized()
            .map_err(|e| ModelError::Incompatible(format!("{e:#}")))?
            .into_runnable()
            .map_err(load)?;
        let model = Model {
            manifest,
            dir: None,
            features,
            plan,
            batch,
        };
        // A model must answer a neutral input with one finite value per row;
        // this catches a graph whose shapes do not match its manifest.
        let probe = model.run(&vec![0.0; batch * width])?;
        if probe.len() != batch {
            return Err(ModelError::Incompatible(format!(
                "{} outputs for {batch} rows",
                probe.len()
            )));
        }
        Ok(model)
    }

    pub fn width(&self) -> usize {
        self.features.width()
    }

    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Runs one batch (`batch * width` values, row-major); one output per row.
    pub fn run(&self, rows: &[f32]) -> Result<Vec<f32>, ModelError> {
        let width = self.width();
        if rows.len() != self.batch * width {
            return Err(ModelError::Incompatible(format!(
                "{} values for a [{}, {width}] input",
                rows.len(),
                self.batch
            )));
        }
        let input = tract_ndarray::Array2::from_shape_vec((self.batch, width), rows.to_vec())
            .map_err(|e| ModelError::Run(e.to_string()))?;
        let out = self
            .plan
            .run(tvec!(Tensor::from(input).into()))
            .map_err(|e| ModelError::Run(format!("{e:#}")))?;
        let first = out
            .first()
            .ok_or_else(|| ModelError::Run("no output".into()))?;
        let view = first
            .to_plain_array_view::<f32>()
            .map_err(|e| ModelError::Run(format!("{e:#}")))?;
        Ok(view.iter().copied().collect())
    }
}
