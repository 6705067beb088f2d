//! Rollouts started over HTTP, as stored (PostGIS migration 0008, the
//! SQLite tables of the same names): one row per rollout and one per
//! targeted device, so a gateway that restarts resumes them.
//!
//! Invariants: a rollout is driven by one gateway at a time, its `owner`,
//! while that gateway's lease (`lease_until`) runs; every save renews the
//! lease and applies only while the saver still owns the rollout (a
//! gateway that lost it cannot overwrite its successor's progress). A
//! rollout whose lease expired, or owned by the gateway asking, is taken
//! by [`crate::Sink::claim_rollouts`]. `finished` is set once, when no
//! device is in flight and nothing more will be sent.

use serde::Serialize;

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RolloutState {
    /// Sending stages and following outcomes.
    Running,
    /// Failures passed the threshold: nothing more is sent; devices already
    /// sent the update still report.
    Halted,
    /// Every stage was sent and every device reported or timed out.
    Completed,
    /// Stopped by an operator (no route sets it yet; the schema allows it).
    Cancelled,
}

impl RolloutState {
    pub const ALL: [RolloutState; 4] = [
        RolloutState::Running,
        RolloutState::Halted,
        RolloutState::Completed,
        RolloutState::Cancelled,
    ];

    /// The stored (and metric label) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            RolloutState::Running => "running",
            RolloutState::Halted => "halted",
            RolloutState::Completed => "completed",
            RolloutState::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<RolloutState> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }
}

/// One targeted device of a rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOutcome {
    pub device: String,
    /// Index of the stage the device belongs to (0 = canary).
    pub stage: u32,
    /// `pending`, `sent` (offered, no outcome yet), `confirmed` (installed
    /// and kept) or `failed` (`detail` says: rolled back, refused, no
    /// outcome within the timeout).
    pub outcome: String,
    pub detail: Option<String>,
    /// When the update was sent to the device (Unix ms): its timeout runs
    /// from here, across restarts.
    pub sent_ms: Option<i64>,
    pub updated_ms: i64,
}

/// A rollout row with its devices.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredRollout {
    /// The command id the devices see.
    pub id: u64,
    /// The update's version, from its manifest ("" when it names none).
    pub version: String,
    /// The update exactly as devices get it (`CommandKind::Ota`'s payload).
    pub update: serde_json::Value,
    /// Device ids per stage, canary first.
    pub stages: Vec<Vec<String>>,
    /// The stage in progress (the last one once finished).
    pub stage: u32,
    pub state: RolloutState,
    /// Why it halted, if it did.
    pub halted: Option<String>,
    /// The token's name that started it.
    pub started_by: String,
    pub max_failures: u32,
    pub device_timeout_ms: i64,
    pub confirmed: u32,
    pub failed: u32,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub finished_ms: Option<i64>,
    /// On a save: the devices whose row changed (all of them on the first
    /// save); when read: every device, in id order.
    pub devices: Vec<StoredOutcome>,
}

/// Who drives a rollout, and for how long without renewing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    /// The gateway's instance name (its host name).
    pub owner: String,
    pub millis: i64,
}
