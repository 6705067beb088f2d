//! The desired-configuration exchange (issue 18): the cloud sends a
//! device its whole desired fragment with a version
//! (`CommandKind::Configure`); the device reports, retained on
//! `{p}/{device}/up/config`, the version it runs and the last one it
//! refused with the reason. A device that never applied one reports
//! version 0.
//!
//! Layout of [`ConfigReport`], format version 1: `device: String, ts_ms:
//! i64, groups: Vec<String>, applied: u64, refused: Option<Refusal>`;
//! [`Refusal`]: `version: u64, reason: String`.

use serde::{Deserialize, Serialize};

use crate::codec::{WireError, WireMessage};
use crate::message::{check_device, check_name, check_ts, invalid};

pub use crate::message::MAX_FRAGMENT_BYTES;
/// Longest refusal reason, in bytes.
pub const MAX_REASON_BYTES: usize = 1024;
/// Most groups a device may be in.
pub const MAX_GROUPS: usize = 32;

/// A desired version the device did not apply, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refusal {
    pub version: u64,
    pub reason: String,
}

/// What a device runs of its desired configuration. Topic
/// `{p}/{device}/up/config`, retained.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigReport {
    pub device: String,
    pub ts_ms: i64,
    /// The groups the device is in (its `groups` config key): the cloud
    /// merges their desired fragments under the device's own.
    pub groups: Vec<String>,
    /// The version of the fragment the device runs; 0 = none.
    pub applied: u64,
    /// The last version refused since the agent started, if newer than
    /// `applied`.
    pub refused: Option<Refusal>,
}

impl WireMessage for ConfigReport {
    fn validate(&self) -> Result<(), WireError> {
        check_device(&self.device)?;
        check_ts(self.ts_ms)?;
        if self.groups.len() > MAX_GROUPS {
            return Err(invalid(format!("at most {MAX_GROUPS} groups")));
        }
        self.groups
            .iter()
            .try_for_each(|g| check_name("group", g))?;
        if let Some(r) = &self.refused {
            if r.reason.len() > MAX_REASON_BYTES || r.reason.contains('\0') {
                return Err(invalid(format!(
                    "refusal reason must be at most {MAX_REASON_BYTES} bytes without NUL"
                )));
            }
        }
        Ok(())
    }
}
