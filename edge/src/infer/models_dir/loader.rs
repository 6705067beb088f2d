//! The loader: turns settled drop folders and `down/cmd` model updates into
//! checked, loaded candidates for the engine, off the ingest task.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use ed25519_dalek::VerifyingKey;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::ModelsDir;
use crate::infer::manifest::Manifest;
use crate::infer::model::{check_name, sha256_hex, verify_signature, Model, ModelError};
use crate::infer::signing;

/// A model ready for the engine.
pub struct Candidate {
    pub model: Model,
    pub force: bool,
}

/// A model update asked for by the cloud (`down/cmd`).
#[derive(Debug, Clone)]
pub struct ModelCommand {
    pub id: u64,
    pub name: String,
    pub version: String,
    pub url: String,
    pub sha256: [u8; 32],
    pub signature: Vec<u8>,
    pub force: bool,
}

/// What the loader reports, as `up/event` text and a counter.
#[derive(Debug, Clone)]
pub enum LoaderNews {
    Loaded {
        name: String,
        version: String,
        source: String,
    },
    Rejected {
        source: String,
        reason: &'static str,
        error: String,
    },
}

/// A drop folder is taken once its newest file is this old.
const SETTLE: Duration = Duration::from_secs(1);

fn settled(dir: &Path) -> bool {
    let newest = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok()?.modified().ok())
                .max()
                .unwrap_or(SystemTime::UNIX_EPOCH)
        })
        .unwrap_or(SystemTime::now());
    newest.elapsed().map(|age| age >= SETTLE).unwrap_or(false)
}

pub struct Loader {
    pub dir: ModelsDir,
    pub trusted: Vec<VerifyingKey>,
    pub poll_interval: Duration,
    pub max_model_bytes: u64,
    pub candidates: mpsc::Sender<Candidate>,
    pub news: mpsc::Sender<LoaderNews>,
}

impl Loader {
    pub async fn run(
        self,
        mut commands: mpsc::Receiver<ModelCommand>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.poll_interval);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.scan_incoming().await,
                Some(cmd) = commands.recv() => self.fetch(cmd).await,
            }
        }
    }

    async fn scan_incoming(&self) {
        let Ok(rd) = std::fs::read_dir(self.dir.incoming()) else {
            return;
        };
        let mut ready: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_dir() && settled(p))
            .collect();
        ready.sort();
        for dir in ready {
            let label = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            let staged = self.dir.stage(&label);
            if let Err(e) = std::fs::rename(&dir, &staged) {
                warn!(dir = %dir.display(), error = %e, "cannot stage dropped model");
                continue;
            }
            self.load(staged, format!("drop folder {label}"), false)
                .await;
        }
    }

    async fn load(&self, staged: PathBuf, source: String, force: bool) {
        let trusted = self.trusted.clone();
        let dir = staged.clone();
        let loaded = tokio::task::spawn_blocking(move || Model::load_dir(&dir, &trusted, 1))
            .await
            .unwrap_or_else(|e| Err(ModelError::Load(format!("loader task failed: {e}"))));
        match loaded {
            Ok(model) => {
                info!(model = %model.manifest.name, version = %model.manifest.version, %source, "candidate model loaded");
                let news = LoaderNews::Loaded {
                    name: model.manifest.name.clone(),
                    version: model.manifest.version.clone(),
                    source,
                };
                let _ = self.news.send(news).await;
                let _ = self.candidates.send(Candidate { model, force }).await;
            }
            Err(e) => self.rejected(Some(&staged), source, e),
        }
    }

    fn rejected(&self, staged: Option<&Path>, source: String, e: ModelError) {
        warn!(%source, reason = e.reason(), error = %e, "model rejected; keeping the active one");
        if let Some(dir) = staged {
            self.dir.reject(dir);
        }
        let news = LoaderNews::Rejected {
            source,
            reason: e.reason(),
            error: e.to_string(),
        };
        // The log line above stands if the ingest task is too busy to take it.
        if self.news.try_send(news).is_err() {
            warn!("model news dropped: the ingest task is not keeping up");
        }
    }

    async fn fetch(&self, cmd: ModelCommand) {
        let source = format!(
            "command {} ({}@{} from {})",
            cmd.id, cmd.name, cmd.version, cmd.url
        );
        let staged = self.dir.stage(&format!("command-{}", cmd.id));
        match self.download(&cmd, &staged).await {
            Ok(()) => self.load(staged, source, cmd.force).await,
            Err(e) => {
                let dir = staged.exists().then_some(staged.as_path());
                self.rejected(dir, source, e)
            }
        }
    }

    /// Fetches `manifest.json` and `model.onnx` from `cmd.url` (https, file,
    /// or http when keys are set) into `staged`, checking size, sha256, the
    /// signature over both, and that the manifest is the model the command
    /// names. Nothing is written before the checks that need no file pass.
    async fn download(&self, cmd: &ModelCommand, staged: &Path) -> Result<(), ModelError> {
        check_name("model name", &cmd.name)?;
        check_name("model version", &cmd.version)?;
        if self.trusted.is_empty() && has_scheme(&cmd.url, "http://") {
            return Err(ModelError::Insecure(cmd.url.clone()));
        }
        let io = |e: std::io::Error| ModelError::Io {
            path: staged.display().to_string(),
            error: e.to_string(),
        };
        let base = cmd.url.trim_end_matches('/');
        let model = self.get(&format!("{base}/model.onnx")).await?;
        let manifest = self.get(&format!("{base}/manifest.json")).await?;
        let actual = sha256_hex(&model);
        let expected = hex::encode(cmd.sha256);
        if actual != expected {
            return Err(ModelError::Checksum { expected, actual });
        }
        if !self.trusted.is_empty() {
            verify_signature(&manifest, &model, &cmd.signature, &self.trusted)?;
        }
        let m: Manifest =
            serde_json::from_slice(&manifest).map_err(|e| ModelError::Manifest(e.to_string()))?;
        check_name("model name", &m.name)?;
        if (m.name.as_str(), m.version.as_str()) != (cmd.name.as_str(), cmd.version.as_str()) {
            return Err(ModelError::Manifest(format!(
                "it describes {}@{}, the command asked for {}@{}",
                m.name, m.version, cmd.name, cmd.version
            )));
        }
        std::fs::create_dir_all(staged).map_err(io)?;
        if !self.trusted.is_empty() {
            std::fs::write(
                staged.join(signing::SIGNATURE_FILE),
                hex::encode(&cmd.signature),
            )
            .map_err(io)?;
        }
        std::fs::write(staged.join("model.onnx"), &model).map_err(io)?;
        std::fs::write(staged.join("manifest.json"), &manifest).map_err(io)?;
        Ok(())
    }

    /// The bytes at `url` (`file://`, `https://` or `http://`), at most
    /// `max_model_bytes` of them.
    async fn get(&self, url: &str) -> Result<Vec<u8>, ModelError> {
        if !(has_scheme(url, "file://")
            || has_scheme(url, "https://")
            || has_scheme(url, "http://"))
        {
            return Err(ModelError::Io {
                path: url.to_owned(),
                error: "only file://, https:// and http:// URLs are fetched".into(),
            });
        }
        match url.strip_prefix("file://") {
            Some(path) => self.read_file(url, path),
            None => self.fetch_http(url).await,
        }
    }

    /// The file at `path` (from `url`), unless it is over the limit.
    fn read_file(&self, url: &str, path: &str) -> Result<Vec<u8>, ModelError> {
        let fail = |e: String| fetch_error(url, e);
        let len = std::fs::metadata(path)
            .map_err(|e| fail(e.to_string()))?
            .len();
        if len > self.max_model_bytes {
            return Err(fail(format!(
                "{len} bytes exceeds the {} byte limit",
                self.max_model_bytes
            )));
        }
        std::fs::read(path).map_err(|e| fail(e.to_string()))
    }

    /// The body at the HTTP(S) `url`, given up on as soon as it is over the
    /// limit.
    async fn fetch_http(&self, url: &str) -> Result<Vec<u8>, ModelError> {
        let fail = |e: String| fetch_error(url, e);
        let mut resp = reqwest::Client::builder()
            .timeout(Duration::from_secs(120))
            .build()
            .map_err(|e| fail(e.to_string()))?
            .get(url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|e| fail(e.to_string()))?;
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(e.to_string()))? {
            body.extend_from_slice(&chunk);
            if body.len() as u64 > self.max_model_bytes {
                return Err(fail(format!(
                    "more than the {} byte limit",
                    self.max_model_bytes
                )));
            }
        }
        Ok(body)
    }
}

/// A fetch of `url` that failed with `error`.
fn fetch_error(url: &str, error: String) -> ModelError {
    ModelError::Io {
        path: url.to_owned(),
        error,
    }
}

/// `url` starts with `scheme` (ASCII case-insensitive, as URL schemes are).
fn has_scheme(url: &str, scheme: &str) -> bool {
    url.get(..scheme.len())
        .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
}
