//! aeris-wire: the one definition of every message the edge agent and the
//! cloud gateway exchange, and of the conventions both sides read them by.
//! No I/O lives here.
//!
//! - [`message`]: the payload types of the topic table in `DESIGN.md`
//!   (`Batch`, `Ack`, `Status`, `Event`, `Command`), each documenting its layout.
//! - [`codec`]: `[format version byte][postcard body]`; decoding never panics and
//!   returns only messages that pass their own validation.
//! - `batch`: which layout a batch's version byte selects (postcard or
//!   columnar); above both, so neither knows the other.
//! - [`columnar`]: the compact batch layout (format version 2): dictionaries,
//!   delta-of-delta timestamps, run-length flags, exact scaled-decimal value
//!   columns, then zstd; lossless, and what the edge sends by default.
//! - [`aqi`]: the US EPA AQI, the one implementation edge and cloud share:
//!   breakpoint tables, hourly means with completeness, daily and 8-hour
//!   means, the NowCast, the AQI per pollutant on its averaging time and
//!   overall (`docs/air-quality.md`).
//! - [`correction`]: the US EPA corrections of PurpleAir-class PM2.5
//!   sensors (Barkjohn et al. 2021 and 2022), applied by the edge with
//!   the raw value kept beside the corrected one.
//! - [`config_report`]: what a device reports of the desired
//!   configuration the cloud sent it (`CommandKind::Configure`), retained
//!   on `up/config`.
//! - [`flags`]: the bits of `Reading::flags`; [`time`]: Unix milliseconds;
//!   [`message::MODEL_PREFIX`]: how a model output's quantity is named.
//! - [`topic`]: topic builders and parsers under a configurable prefix.
//! - [`units`]: gas mixing ratios (ppb, ppm) to mass concentrations and
//!   back, at a reference temperature and pressure.
#![forbid(unsafe_code)]

pub mod aqi;
mod batch;
pub mod codec;
pub mod columnar;
pub mod config_report;
pub mod correction;
pub mod flags;
pub mod message;
pub mod time;
pub mod topic;
pub mod units;

pub use codec::{decode, encode, WireError, WireMessage, FORMAT_VERSION};
pub use columnar::COLUMNAR_VERSION;
pub use config_report::{ConfigReport, Refusal};
pub use message::{
    Ack, Batch, Command, CommandKind, DeviceState, Event, EventKind, Loss, ModelVersion, Reading,
    Status, Value, MAX_SEQ, MAX_TS_MS,
};
pub use time::now_ms;
pub use topic::{validate_device_id, Channel, TopicError, Topics};
