//! Payload types. Every field list below is the postcard layout, in order,
//! after the version byte (see [`crate::codec`]). Integers are varints,
//! `f64` is 8 bytes little-endian, strings and vectors are varint-length
//! prefixed, `Option` is a 0/1 tag byte then the value, enums are a varint
//! variant index then the variant's fields.

use serde::{Deserialize, Serialize};

use crate::codec::{WireError, WireMessage};
use crate::topic::validate_device_id;

/// Most readings one batch may carry; bounds the memory a decoder commits to.
pub const MAX_BATCH_READINGS: usize = 10_000;
/// Most values one reading may carry.
pub const MAX_VALUES_PER_READING: usize = 64;
/// Longest sensor id, quantity name or free-text field, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Latest timestamp a message may carry: 9999-12-31T23:59:59.999Z in Unix
/// ms. Timestamps are `0..=MAX_TS_MS` (years 1970 to 9999): every store
/// takes them (PostgreSQL's `timestamptz` ends in 294276, RFC 3339 in 9999),
/// and nothing older than 1970 comes from a sensor.
pub const MAX_TS_MS: i64 = 253_402_300_799_999;
/// Highest seq a reading may carry: the cloud stores seqs as signed 64-bit
/// integers (PostgreSQL `bigint`, SQLite `INTEGER`).
pub const MAX_SEQ: u64 = i64::MAX as u64;

/// The prefix of a model output's quantity name: `model:<name>@<version>`
/// (see [`model_quantity`]).
pub const MODEL_PREFIX: &str = "model:";

/// The quantity a model's output travels under:
/// `model:<name>@<version>`. With an empty `version`, the prefix every
/// version of `name` shares (`model:<name>@`).
pub fn model_quantity(name: &str, version: &str) -> String {
    format!("{MODEL_PREFIX}{name}@{version}")
}

/// One measured quantity. Layout: `quantity: String, value: f64`.
///
/// `quantity` is the normalised name (`pm25`, `pm10`, `no2`, `temp`, `rh`, ...);
/// model outputs use `model:<name>@<version>` ([`model_quantity`]) so they
/// travel like any value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Value {
    pub quantity: String,
    pub value: f64,
}

/// What one sensor measured at one instant and place.
///
/// Layout: `sensor: String, ts_ms: i64, lat: f64, lon: f64, flags: u32,
/// values: Vec<Value>`. `ts_ms` is Unix time in milliseconds (UTC); `lat`/`lon`
/// are WGS84 degrees; `flags` is a bit set of quality flags (0 = no flag;
/// the bits are [`crate::flags`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub sensor: String,
    pub ts_ms: i64,
    pub lat: f64,
    pub lon: f64,
    pub flags: u32,
    pub values: Vec<Value>,
}

/// Readings of one device with a contiguous seq range: reading `i` has seq
/// `first_seq + i`. Topic `{p}/{device}/up/batch`.
///
/// Layout: `device: String, first_seq: u64, readings: Vec<Reading>`.
/// Invariants: 1..=[`MAX_BATCH_READINGS`] readings, the last seq is at most
/// [`MAX_SEQ`], every reading is valid (see [`Reading::check`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub device: String,
    pub first_seq: u64,
    pub readings: Vec<Reading>,
}

/// The cloud's acknowledgement: seqs `first_seq..=last_seq` of `device` are
/// durably committed. Topic `{p}/{device}/down/ack`.
///
/// Layout: `device: String, first_seq: u64, last_seq: u64`. A range rather
/// than a single high-water mark because gateways scale out and may commit a
/// device's batches out of order; the edge deletes exactly what is acked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    pub device: String,
    pub first_seq: u64,
    pub last_seq: u64,
}

/// Whether the device is up; the last will carries `Offline`.
/// Layout: variant index (0 = Online, 1 = Offline).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceState {
    Online,
    Offline,
}

/// Readings lost for one reason. Layout: `reason: String, count: u64`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Loss {
    pub reason: String,
    pub count: u64,
}

/// A model the device runs. Layout: `name: String, version: String`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelVersion {
    pub name: String,
    pub version: String,
}

/// The device's heartbeat and data debt. Topic `{p}/{device}/up/status`,
/// retained.
///
/// Layout: `device: String, boot_id: u64, ts_ms: i64, state: DeviceState,
/// agent_version: String, last_seq: u64, queued_readings: u64,
/// queued_bytes: u64, oldest_unsent_ms: Option<i64>, losses: Vec<Loss>,
/// models: Vec<ModelVersion>, drain_eta_s: Option<u64>`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub device: String,
    /// Random per agent start, so the cloud can tell restarts apart.
    pub boot_id: u64,
    pub ts_ms: i64,
    pub state: DeviceState,
    pub agent_version: String,
    /// Highest seq the device has assigned so far (0 = none yet).
    pub last_seq: u64,
    pub queued_readings: u64,
    pub queued_bytes: u64,
    pub oldest_unsent_ms: Option<i64>,
    /// Readings lost on the device since its buffer was created, by reason
    /// (`downsampled`: replaced by window aggregates; `dropped`: deleted
    /// unsent past the disk budget; `corrupt`: unreadable rows).
    pub losses: Vec<Loss>,
    /// The active models.
    pub models: Vec<ModelVersion>,
    /// Seconds until the queue is empty at the current net drain rate;
    /// `None` while it is not shrinking.
    pub drain_eta_s: Option<u64>,
}

/// What an event is about. Layout: variant index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum EventKind {
    Alert,
    SensorFault,
    Ota,
    Model,
    Agent,
}

/// Something worth telling the cloud about. Topic `{p}/{device}/up/event`.
/// Layout: `device: String, ts_ms: i64, kind: EventKind, message: String`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub device: String,
    pub ts_ms: i64,
    pub kind: EventKind,
    pub message: String,
}

/// What the cloud asks of a device. Layout: variant index then fields, in the
/// order written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandKind {
    /// 0: send again every reading still held with seq >= `from_seq`.
    Resend { from_seq: u64 },
    /// 1: set one config key (dotted path) to a TOML value.
    SetConfig { key: String, value: String },
    /// 2: an OTA update manifest, signed; opaque to the wire layer.
    Ota { manifest: Vec<u8> },
    /// 3: a model update to fetch, check and shadow-evaluate. `url` names a
    /// folder holding `manifest.json` and `model.onnx`; `sha256` is that of
    /// `model.onnx`; `signature` is ed25519 over a digest of `manifest.json`
    /// and `model.onnx` together (layout: `aeris_edge::infer::signing`;
    /// empty when the fleet has no signing key); `force` promotes without
    /// shadow evaluation.
    Model {
        name: String,
        version: String,
        url: String,
        sha256: [u8; 32],
        signature: Vec<u8>,
        force: bool,
    },
    /// 4: seqs `first_seq..=last_seq` of this device are held in the cloud
    /// by other readings (the device's buffer was deleted, replaced, or
    /// restored from an older image, so it numbered new readings again from
    /// an old point). The device gives each unacknowledged reading it holds
    /// in that range a new seq, in order, from `next_seq` on (the cloud's
    /// highest seq for the device + 1), and never hands out a seq below
    /// `next_seq` again. Idempotent: a repeated command finds nothing left
    /// in the range. Added after version 1 was released, at the end of the
    /// enum, so every earlier command decodes as before; an agent older
    /// than this variant rejects it as malformed (counted) and keeps
    /// running.
    Renumber {
        first_seq: u64,
        last_seq: u64,
        next_seq: u64,
    },
    /// 5: the device's desired configuration (issue 18): `fragment` is a
    /// TOML document holding only the keys an operator may change remotely
    /// (the agent refuses any other), `version` its fleet-wide version
    /// (never 0), which the device reports back on `up/config`
    /// ([`crate::ConfigReport`]) once applied, or with the reason it
    /// refused it. The whole desired state, not a change: applying it twice
    /// is applying it once. Added at the end of the enum like `Renumber`:
    /// earlier commands decode as before, an older agent rejects it as
    /// malformed (counted) and keeps running, and its report never names
    /// the version, so the cloud sees it as not converged.
    /// `SetConfig` (1) stays reserved and unused: one key at a time could
    /// not be validated or versioned as a whole.
    Configure { version: u64, fragment: String },
}

/// A command with an id the device echoes in its events.
/// Topic `{p}/{device}/down/cmd`. Layout: `id: u64, kind: CommandKind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    pub id: u64,
    pub kind: CommandKind,
}

pub(crate) fn invalid(msg: impl Into<String>) -> WireError {
    WireError::Invalid(msg.into())
}

/// 1..=[`MAX_NAME_LEN`] bytes without control characters: NUL is refused
/// by PostgreSQL in `text` and JSONB, the others are never part of a name
/// and would garble logs and the map.
pub(crate) fn check_name(what: &str, s: &str) -> Result<(), WireError> {
    if s.is_empty() || s.len() > MAX_NAME_LEN {
        return Err(invalid(format!("{what} must be 1..={MAX_NAME_LEN} bytes")));
    }
    // ASCII names (nearly all) need no char decoding: their control
    // characters are the bytes below 0x20 and 0x7f.
    if s.bytes().all(|b| (0x20..0x7f).contains(&b)) {
        return Ok(());
    }
    match s.chars().find(|c| c.is_control()) {
        Some(c) => Err(WireError::Text(format!(
            "{what} contains control character U+{:04X}",
            u32::from(c)
        ))),
        None => Ok(()),
    }
}

pub(crate) fn check_ts(ts_ms: i64) -> Result<(), WireError> {
    if (0..=MAX_TS_MS).contains(&ts_ms) {
        Ok(())
    } else {
        Err(WireError::Timestamp(ts_ms))
    }
}

pub(crate) fn check_device(device: &str) -> Result<(), WireError> {
    validate_device_id(device).map_err(|e| invalid(e.to_string()))
}

impl Reading {
    /// Structural checks the cloud relies on: a timestamp in 1970..=9999,
    /// coordinates on the globe, finite values, bounded names without
    /// control characters. Whatever passes, PostgreSQL and Redis store.
    pub fn check(&self) -> Result<(), WireError> {
        let values = self.values.iter().map(|v| (v.quantity.as_str(), v.value));
        Self::check_fields(&self.sensor, self.ts_ms, (self.lat, self.lon), values)
    }

    /// [`Reading::check`] of a reading given by its fields.
    pub fn check_fields<'v>(
        sensor: &str,
        ts_ms: i64,
        (lat, lon): (f64, f64),
        values: impl ExactSizeIterator<Item = (&'v str, f64)>,
    ) -> Result<(), WireError> {
        check_name("sensor id", sensor)?;
        check_ts(ts_ms)?;
        if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
            return Err(invalid("position outside WGS84 range"));
        }
        if values.len() == 0 || values.len() > MAX_VALUES_PER_READING {
            return Err(invalid(format!(
                "a reading carries 1..={MAX_VALUES_PER_READING} values"
            )));
        }
        for (quantity, value) in values {
            check_name("quantity", quantity)?;
            if !value.is_finite() {
                return Err(invalid("non-finite value"));
            }
        }
        Ok(())
    }
}

impl Batch {
    /// Seq of the last reading; `None` for an empty batch.
    pub fn last_seq(&self) -> Option<u64> {
        let n = u64::try_from(self.readings.len()).ok()?;
        self.first_seq.checked_add(n.checked_sub(1)?)
    }

    /// Readings paired with their seq.
    pub fn with_seqs(&self) -> impl Iterator<Item = (u64, &Reading)> {
        (self.first_seq..).zip(self.readings.iter())
    }

    /// The batch invariants: a valid device id, 1..=[`MAX_BATCH_READINGS`]
    /// readings, a seq range that ends at most at [`MAX_SEQ`], every
    /// reading valid. [`WireMessage::validate`] for a batch (in
    /// `wire/src/batch.rs`, which also picks its layout) calls this.
    pub fn check(&self) -> Result<(), WireError> {
        check_device(&self.device)?;
        if self.readings.is_empty() || self.readings.len() > MAX_BATCH_READINGS {
            return Err(invalid(format!(
                "a batch carries 1..={MAX_BATCH_READINGS} readings"
            )));
        }
        if self.last_seq().is_none_or(|last| last > MAX_SEQ) {
            return Err(invalid(format!("seq range goes past {MAX_SEQ}")));
        }
        self.readings.iter().try_for_each(Reading::check)
    }
}

impl WireMessage for Ack {
    fn validate(&self) -> Result<(), WireError> {
        check_device(&self.device)?;
        if self.first_seq > self.last_seq {
            return Err(invalid("ack range is reversed"));
        }
        Ok(())
    }
}

impl WireMessage for Status {
    fn validate(&self) -> Result<(), WireError> {
        check_device(&self.device)?;
        check_ts(self.ts_ms)?;
        self.oldest_unsent_ms.map(check_ts).transpose()?;
        check_name("agent version", &self.agent_version)?;
        self.losses
            .iter()
            .try_for_each(|l| check_name("loss reason", &l.reason))?;
        self.models.iter().try_for_each(|m| {
            check_name("model name", &m.name)?;
            check_name("model version", &m.version)
        })
    }
}

impl WireMessage for Event {
    fn validate(&self) -> Result<(), WireError> {
        check_device(&self.device)
    }
}

impl WireMessage for Command {
    fn validate(&self) -> Result<(), WireError> {
        match &self.kind {
            CommandKind::Resend { .. } | CommandKind::Ota { .. } => Ok(()),
            CommandKind::Renumber {
                first_seq,
                last_seq,
                next_seq,
            } => {
                if first_seq > last_seq || last_seq >= next_seq {
                    return Err(invalid("renumber needs first_seq <= last_seq < next_seq"));
                }
                Ok(())
            }
            CommandKind::SetConfig { key, .. } => check_name("config key", key),
            CommandKind::Configure { version, fragment } => check_fragment(*version, fragment),
            CommandKind::Model { name, version, .. } => {
                check_name("model name", name)?;
                check_name("model version", version)
            }
        }
    }
}

/// Readings are stored one by one in the edge buffer with the same framing.
impl WireMessage for Reading {
    fn validate(&self) -> Result<(), WireError> {
        self.check()
    }
}

/// Largest fragment a `Configure` command may carry, in bytes.
pub const MAX_FRAGMENT_BYTES: usize = 64 * 1024;

/// A fragment's bounds: a version above 0, at most
/// [`MAX_FRAGMENT_BYTES`], no NUL (TOML never has one).
pub(crate) fn check_fragment(version: u64, fragment: &str) -> Result<(), WireError> {
    if version == 0 {
        return Err(invalid("config version 0 is reserved for 'none'"));
    }
    if fragment.len() > MAX_FRAGMENT_BYTES || fragment.contains('\0') {
        return Err(invalid(format!(
            "config fragment must be at most {MAX_FRAGMENT_BYTES} bytes without NUL"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::check_name;

    /// The ASCII shortcut refuses exactly what the full scan refuses:
    /// every single character from U+0000 to U+00FF and a few beyond, alone
    /// and inside a name.
    #[test]
    fn names_are_refused_exactly_for_control_characters() {
        let chars = (0u32..=0x100).chain([0x2028, 0xfeff, 0x1f600]);
        for c in chars.filter_map(char::from_u32) {
            for name in [c.to_string(), format!("pm{c}25")] {
                let control = name.chars().any(char::is_control);
                assert_eq!(
                    check_name("quantity", &name).is_err(),
                    control,
                    "U+{:04X} in {name:?}",
                    u32::from(c)
                );
            }
        }
    }
}
