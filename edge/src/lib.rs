//! aeris-edge: the device agent.
//!
//! Pipeline, one folder each:
//! - [`ingest`]: subscribes to the board's sensor broker, parses and validates
//!   each message (rejections counted by reason), hands readings to the buffer
//!   and acknowledges a message only once its reading is committed.
//! - [`preprocess`]: unit normalisation, spike/stuck flags, aggregation
//!   windows and the US EPA AQI, applied to each reading before inference.
//! - [`buffer`]: the SQLite (WAL) buffer; assigns each reading its
//!   never-reused seq in the same transaction that stores it.
//! - [`uplink`]: sends contiguous seq ranges as batches to the cloud broker
//!   and deletes what the cloud acknowledges.
//! - [`health`]: readiness and liveness probes, `/healthz`, `/readyz`,
//!   `/metrics` (each stage registers its own metrics), systemd notify.
//! - [`ota`]: the signed agent package and over-the-air updates.
//! - [`config`]: layered configuration (defaults, TOML, the cloud's
//!   remote fragment, `AERIS_*`); [`fragment`]: that fragment, the keys it
//!   may set and where the agent keeps it.
//! - [`agent`]: the start-up and shutdown sequence tying them together.
//! - [`lock`]: one agent per data directory.
//! - [`keys`], [`version`]: key parsing and the built-in version (leaves).
#![forbid(unsafe_code)]

pub mod agent;
pub mod buffer;
pub mod config;
pub mod fragment;
pub mod health;
pub mod infer;
pub mod ingest;
pub mod keys;
pub mod lock;
pub mod ota;
pub mod preprocess;
pub mod uplink;
pub mod version;

pub use agent::{run, run_layered, Telemetry};
pub use config::Config;
