//! Exports of the hourly rollups in the field's exchange formats.
//!
//! - [`aqcsv`]: EPA's AQCSV (the AirNow-International exchange format),
//!   served as `GET /api/export/aqcsv` and written by `aeris-gateway
//!   export aqcsv`.

pub mod aqcsv;
pub mod command;
