//! On-device inference with tract.
//!
//! - [`model`]: a model checked (plain name, sha256, ed25519 when keys are
//!   configured), loaded with a fixed input shape and optimised once;
//! - [`signing`]: what a model signature covers (manifest and model) and
//!   the names a model may carry;
//! - [`features`]: input rows from each sensor's recent readings;
//! - [`engine`]: the active model per slot, its outputs attached to readings,
//!   and shadow evaluation of candidates;
//! - [`models_dir`]: the models folder (active, staging, incoming, rejected)
//!   and the loader that turns dropped folders and `down/cmd` model updates
//!   into candidates without stalling ingest;
//! - [`scorer`]: the engine as the ingest task runs it: each reading scored
//!   by the active models, candidates offered, every slot change persisted
//!   and reported.

pub mod config;
pub mod engine;
pub mod features;
pub mod manifest;
pub mod metrics;
pub mod model;
pub mod models_dir;
pub mod scorer;
pub mod signing;

pub use config::InferConfig;
pub use engine::{Change, Engine, EngineConfig, InferStats, FLAG_MODEL_ANOMALY};
pub use metrics::Metrics;
pub use model::{Model, ModelError};
