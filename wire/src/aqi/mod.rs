//! The US EPA Air Quality Index: the one implementation the edge (attached
//! to readings, `aeris-edge`'s `preprocess::aqi`; its local events and
//! status) and the cloud (the live map, `aeris-sink`'s `live`; the source of
//! truth for hourly means and NowCast) both call, so they cannot disagree at
//! a breakpoint or an hour boundary. Pure functions, no clock, no I/O:
//! late data is handled by calling them again on the completed samples.
//!
//! - [`table`]: the breakpoint tables and Equation 1 of EPA's Technical
//!   Assistance Document (EPA-454/B-24-002, May 2024) for one concentration
//!   (`aqi_instant` when applied to one reading).
//! - [`hourly`]: hourly means per sensor and pollutant with completeness
//!   (hour-beginning UTC labels; 75 % of the expected samples), daily means
//!   from valid hours (18 of 24), 8-hour running means.
//! - [`nowcast`]: EPA's NowCast for PM2.5, PM10 (12 hours, weight factor
//!   floored at 0.5) and AirNow's 8-hour ozone form, over hourly means.
//! - [`averaging`]: the AQI of each pollutant on the averaging time the
//!   standard defines, and the overall AQI with its responsible pollutant.
//! - [`channels`]: dual-channel QC (PurpleAir A/B): an hour whose
//!   channels disagree by more than 5 µg/m³ and 70 % is invalid.
//! - [`rollup`]: one sensor's hourly rollup of one pollutant: the hour's
//!   statistics, its NowCast and its AQI (what the cloud stores per hour).
//! - [`daily`]: a pollutant's daily value (24-hour mean, maximum 8-hour
//!   average, maximum hour) and its index, as EPA's daily AQI reports it.
//!
//! Formulas, sources and choices are written down in `docs/air-quality.md`.

pub mod averaging;
pub mod channels;
pub mod daily;
pub mod hourly;
pub mod nowcast;
pub mod rollup;
pub mod table;

pub use table::{Table, CO, NO2, O3, PM10, PM25, SO2, TABLES};
