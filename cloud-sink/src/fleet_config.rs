//! Desired and reported configuration of devices (issue 18): what
//! operators set per device or per group (versioned, with who and when;
//! every row kept as history), and what each device reports it runs.

use serde::{Deserialize, Serialize};

/// What a desired fragment applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ScopeKind {
    Device,
    Group,
}

impl ScopeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ScopeKind::Device => "device",
            ScopeKind::Group => "group",
        }
    }

    pub fn parse(s: &str) -> Option<ScopeKind> {
        match s {
            "device" => Some(ScopeKind::Device),
            "group" => Some(ScopeKind::Group),
            _ => None,
        }
    }
}

/// A device or a group, by name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Scope {
    pub kind: ScopeKind,
    pub name: String,
}

/// One fragment an operator set.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DesiredRow {
    pub scope: Scope,
    /// Fleet-wide, increasing with every fragment set anywhere.
    pub version: u64,
    /// The fragment as a JSON object (the agent's TOML keys).
    pub fragment: serde_json::Value,
    pub set_by: String,
    pub set_at_ms: i64,
    /// While a staged change is under way: the devices of the scope it
    /// applies to so far; `None` = all of them.
    pub devices: Option<Vec<String>>,
}

impl DesiredRow {
    /// Whether this row is part of `device`'s configuration (given that
    /// the device is in its scope).
    pub fn reaches(&self, device: &str) -> bool {
        self.devices
            .as_ref()
            .is_none_or(|d| d.iter().any(|x| x == device))
    }
}

/// What a device last reported (`aeris_wire::ConfigReport`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReportedRow {
    pub device: String,
    pub groups: Vec<String>,
    pub applied: u64,
    pub refused_version: Option<u64>,
    pub refused_reason: Option<String>,
    pub reported_at_ms: i64,
}
