//! Corrections of low-cost optical PM2.5 sensors (PurpleAir class) to
//! regulatory-grade estimates: the one implementation the edge applies to
//! readings and the cloud can re-apply to stored raw values.
//!
//! Invariants:
//! - The raw value is never lost. On a corrected reading `pm25` holds the
//!   corrected value and `raw:pm25:<formula>@<version>` ([`raw_quantity`])
//!   the value the sensor sent, so every consumer of `pm25` (the agent's
//!   AQI, the live map, the hourly rollups) reads the corrected value and
//!   the formula's name and version travel beside it. The wire layout is
//!   unchanged (a reading is a list of named values): batches of older
//!   agents decode as before, and an older gateway keeps the raw value and
//!   the formula name in `measurements`.
//! - A reading that should be corrected but cannot be (no relative
//!   humidity, or one outside 0..=100 %, or a negative or non-finite raw
//!   value) is withheld, not passed off as corrected: `pm25` is removed,
//!   the raw value kept under its `raw:` name, and
//!   [`crate::flags::FLAG_CORRECTION_WITHHELD`] set. Its AQI and rollups
//!   then have no PM2.5 rather than an uncorrected one.
//! - The functions are pure: same input, same output, on both sides.
//!
//! Formulas, sources and what could be read from them verbatim are in
//! `docs/air-quality.md` ("Low-cost sensor correction").

mod formula;
mod reading;

pub use formula::{Formula, Withheld};
pub use reading::{correct, parse_raw_quantity, raw_quantity, Outcome, RAW_PREFIX};
