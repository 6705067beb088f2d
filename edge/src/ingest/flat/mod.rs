//! The flat JSON sensor format: one object per message,
//! `{"ts": 1700000000.5, "pm25": 12.5, "rh": 40, "lat": 52.5, "lon": 13.4}`.
//!
//! - `ts`: Unix seconds (number, fractions allowed) or an RFC 3339 string in
//!   UTC; absent (or `null`) means "now" (sensors without a clock): the
//!   reading is stamped with its arrival time and flagged
//!   [`super::FLAG_ARRIVAL_TIME`].
//! - `lat`/`lon`: WGS84 degrees; absent means the position configured for the
//!   sensor.
//! - every other key is a quantity whose value must be a finite number; names
//!   are lower-cased and `pm2.5`/`pm2_5` become `pm25`. A gas named with a
//!   `_ppb` or `_ppm` suffix (`no2_ppb`, `co_ppm`) is converted to µg/m³
//!   (see [`crate::preprocess::units`]); every known quantity must lie in
//!   its physical range in its canonical unit.
//!
//! The checks shared with [`super::senml`] live here too: quantity names,
//! numbers, physical ranges and the accepted time span.

use std::collections::BTreeMap;

use aeris_wire::{Reading, Value};
use serde_json::Value as Json;

pub use fields::{Fields, Payload, Scalar};

use super::config::SensorConfig;
use crate::preprocess::units::{self, Reference};

mod fields;

/// Why a sensor message was rejected. [`Reject::reason`] is the metric label.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Reject {
    #[error("payload too large ({0} bytes, records or values)")]
    Oversize(usize),
    #[error("payload is not JSON: {0}")]
    NotJson(String),
    #[error("payload is not a JSON object")]
    NotObject,
    #[error("field {0:?} has the wrong type")]
    WrongType(String),
    #[error("field {0:?} is not a finite number")]
    NonFinite(String),
    #[error("{quantity} = {value} is outside its physical range")]
    OutOfRange { quantity: String, value: f64 },
    #[error("timestamp is more than the allowed margin in the future")]
    FutureTimestamp,
    #[error("timestamp is older than the retention window")]
    TooOld,
    #[error("sensor is not on the allow-list")]
    UnknownSensor,
    #[error("not a valid SenML pack: {0}")]
    BadSenml(String),
    #[error("{0}")]
    BadUnit(String),
    #[error("timestamp is not valid: {0}")]
    BadTimestamp(String),
    #[error("no position in the payload or the config")]
    NoPosition,
    #[error("no measured value")]
    NoValues,
    #[error("bad quantity name {0:?}")]
    BadQuantity(String),
    #[error("bad sensor id in topic {0:?}")]
    BadSensorId(String),
    #[error("reading would not be stored as accepted: {0}")]
    Invalid(String),
}

impl Reject {
    pub fn reason(&self) -> &'static str {
        match self {
            Reject::Oversize(_) => "oversize",
            Reject::NotJson(_) => "not_json",
            Reject::NotObject => "not_object",
            Reject::WrongType(_) => "wrong_type",
            Reject::NonFinite(_) => "non_finite",
            Reject::OutOfRange { .. } => "out_of_range",
            Reject::FutureTimestamp => "future_timestamp",
            Reject::TooOld => "too_old",
            Reject::UnknownSensor => "unknown_sensor",
            Reject::BadSenml(_) => "bad_senml",
            Reject::BadUnit(_) => "bad_unit",
            Reject::BadTimestamp(_) => "bad_timestamp",
            Reject::NoPosition => "no_position",
            Reject::NoValues => "no_values",
            Reject::BadQuantity(_) => "bad_quantity",
            Reject::BadSensorId(_) => "bad_sensor_id",
            Reject::Invalid(_) => "invalid",
        }
    }
}

/// Physical range of the quantities the agent knows; others need only be finite.
pub(crate) fn physical_range(quantity: &str) -> Option<(f64, f64)> {
    Some(match quantity {
        "pm1" | "pm25" | "pm10" => (0.0, 2000.0), // µg/m³, beyond optical sensors' saturation
        "temp" | "dewp" => (-80.0, 70.0),         // °C
        "rh" => (0.0, 100.0),                     // %
        "pres" => (300.0, 1100.0),                // hPa
        "no2" | "o3" | "so2" | "co" => (0.0, 100_000.0), // µg/m³
        _ => return None,
    })
}

pub(crate) fn normalise_quantity(key: &str) -> Result<String, Reject> {
    let lower = key.to_ascii_lowercase();
    let name = match lower.as_str() {
        "pm2.5" | "pm2_5" => "pm25".to_owned(),
        "pm1.0" | "pm1_0" => "pm1".to_owned(),
        "temperature" => "temp".to_owned(),
        "humidity" | "relative_humidity" => "rh".to_owned(),
        "pressure" => "pres".to_owned(),
        _ => lower,
    };
    let ok = !name.is_empty()
        && name.len() <= 32
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(name)
    } else {
        Err(Reject::BadQuantity(key.to_owned()))
    }
}

/// The finite number a JSON value holds (SenML records).
pub(crate) fn number(key: &str, v: &Json) -> Result<f64, Reject> {
    scalar_number(key, &Scalar::of_json(v))
}

/// The finite number a flat message's field holds.
fn scalar_number(key: &str, v: &Scalar<'_>) -> Result<f64, Reject> {
    match v {
        Scalar::Number(n) if n.is_finite() => Ok(*n),
        Scalar::Number(_) => Err(Reject::NonFinite(key.to_owned())),
        // Some firmwares print NaN or Infinity as strings.
        Scalar::Str(s) if s.parse::<f64>().is_ok_and(|f| !f.is_finite()) => {
            Err(Reject::NonFinite(key.to_owned()))
        }
        _ => Err(Reject::WrongType(key.to_owned())),
    }
}

fn timestamp_ms(v: &Scalar<'_>, now_ms: i64) -> Result<i64, Reject> {
    let ms = match v {
        Scalar::Null => return Ok(now_ms),
        Scalar::Number(_) => {
            let secs = scalar_number("ts", v)?;
            if !(0.0..1e11).contains(&secs) {
                return Err(Reject::BadTimestamp(format!("{secs} s")));
            }
            (secs * 1000.0).round() as i64
        }
        Scalar::Str(s) => {
            let t = humantime::parse_rfc3339_weak(s)
                .map_err(|e| Reject::BadTimestamp(e.to_string()))?;
            aeris_wire::time::unix_ms(t)
                .ok_or_else(|| Reject::BadTimestamp("before 1970".into()))?
        }
        _ => return Err(Reject::WrongType("ts".into())),
    };
    Ok(ms)
}

/// What the parser needs besides the payload.
pub struct Context<'a> {
    pub now_ms: i64,
    pub max_future_ms: i64,
    /// Readings older than `now_ms - retention_ms` are rejected.
    pub retention_ms: i64,
    pub max_payload_bytes: usize,
    pub sensors: &'a BTreeMap<String, SensorConfig>,
    /// Conditions for ppb/ppm → µg/m³.
    pub reference: Reference,
}

/// Rejects a timestamp outside `[now - retention, now + max_future]`.
pub(crate) fn check_time(ts_ms: i64, cx: &Context<'_>) -> Result<(), Reject> {
    if ts_ms > cx.now_ms.saturating_add(cx.max_future_ms) {
        return Err(Reject::FutureTimestamp);
    }
    if ts_ms < cx.now_ms.saturating_sub(cx.retention_ms) {
        return Err(Reject::TooOld);
    }
    Ok(())
}

/// `value` in `unit` as a [`Value`] in canonical units, inside its
/// physical range.
pub(crate) fn measurement(
    quantity: String,
    unit: &str,
    value: f64,
    cx: &Context<'_>,
) -> Result<Value, Reject> {
    let value = units::to_canonical(&quantity, unit, value, &cx.reference)
        .map_err(|e| Reject::BadUnit(e.to_string()))?;
    if let Some((lo, hi)) = physical_range(&quantity) {
        if !(lo..=hi).contains(&value) {
            return Err(Reject::OutOfRange { quantity, value });
        }
    }
    Ok(Value { quantity, value })
}

/// Rejects a position off the globe.
pub(crate) fn check_position(lat: f64, lon: f64) -> Result<(), Reject> {
    if !(-90.0..=90.0).contains(&lat) {
        return Err(Reject::OutOfRange {
            quantity: "lat".into(),
            value: lat,
        });
    }
    if !(-180.0..=180.0).contains(&lon) {
        return Err(Reject::OutOfRange {
            quantity: "lon".into(),
            value: lon,
        });
    }
    Ok(())
}

/// Parses and validates one flat JSON message from sensor `sensor`.
pub fn parse(sensor: &str, payload: &[u8], cx: &Context<'_>) -> Result<Reading, Reject> {
    if payload.len() > cx.max_payload_bytes {
        return Err(Reject::Oversize(payload.len()));
    }
    match Payload::parse(payload).map_err(|e| Reject::NotJson(e.to_string()))? {
        Payload::Object(fields) => from_fields(sensor, &fields, cx),
        _ => Err(Reject::NotObject),
    }
}

/// Validates a flat message already read as an object's fields.
pub fn from_fields(sensor: &str, map: &Fields<'_>, cx: &Context<'_>) -> Result<Reading, Reject> {
    let ts = map.get("ts").unwrap_or(&Scalar::Null);
    let arrival = *ts == Scalar::Null;
    let ts_ms = timestamp_ms(ts, cx.now_ms)?;
    check_time(ts_ms, cx)?;
    let (lat, lon) = match (map.get("lat"), map.get("lon")) {
        (Some(lat), Some(lon)) => (scalar_number("lat", lat)?, scalar_number("lon", lon)?),
        (None, None) => match cx.sensors.get(sensor) {
            Some(p) => (p.lat, p.lon),
            None => return Err(Reject::NoPosition),
        },
        _ => return Err(Reject::NoPosition),
    };
    check_position(lat, lon)?;
    // Room for every field, so the AQI values preprocessing adds (up to
    // one per pollutant and the overall one) fit without growing.
    let mut values = Vec::with_capacity(map.len() + 1);
    for (key, v) in map.iter() {
        if matches!(key, "ts" | "lat" | "lon") {
            continue;
        }
        let name = normalise_quantity(key)?;
        let value = scalar_number(key, v)?;
        let (quantity, unit) = split_unit(name);
        values.push(measurement(quantity, unit, value, cx)?);
    }
    if values.is_empty() {
        return Err(Reject::NoValues);
    }
    // Room is left for the AQI values preprocessing attaches.
    if values.len() > MAX_MEASURED_VALUES {
        return Err(Reject::Oversize(values.len()));
    }
    Ok(Reading {
        sensor: sensor.to_owned(),
        ts_ms,
        lat,
        lon,
        flags: if arrival { super::FLAG_ARRIVAL_TIME } else { 0 },
        values,
    })
}

/// Most measured values one reading may carry; the rest of the wire's
/// limit is for AQI and model outputs added later.
pub const MAX_MEASURED_VALUES: usize = 48;

/// `no2_ppb` → (`no2`, `ppb`) for gases; other names have no unit.
fn split_unit(name: String) -> (String, &'static str) {
    for unit in ["ppb", "ppm"] {
        if let Some(base) = name.strip_suffix(unit).and_then(|b| b.strip_suffix('_')) {
            if units::molar_mass(base).is_some() {
                return (base.to_owned(), unit);
            }
        }
    }
    (name, "")
}

#[cfg(test)]
mod tests;
