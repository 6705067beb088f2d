//! What operators read and write besides readings: the audit log of their
//! actions, and per device the first seq a restored database lacks (where
//! a fleet re-send starts).

use serde::Serialize;

/// One operator action to record. `actor` is the token's name (HTTP) or
/// `cli:<user>`; `outcome` is `ok` or `error: ...`.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: serde_json::Value,
}

/// A stored audit row, newest first when listed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditRecord {
    pub id: i64,
    pub at_ms: i64,
    pub actor: String,
    pub action: String,
    pub target: String,
    pub outcome: String,
    pub detail: serde_json::Value,
}

/// Where a device's re-send should start: the lowest seq the database does
/// not hold, that is the first hole below the highest stored seq, else the
/// seq after it (1 for a device with nothing stored). Starting at the first
/// hole, not after the highest seq, is what brings back readings acked
/// before a restore point that the restored database misses in the middle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResendPoint {
    pub device: String,
    pub from_seq: u64,
    /// Readings stored for the device.
    pub stored: u64,
}
