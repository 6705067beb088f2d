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

use super::config::SensorConfig;
use crate::preprocess::units::{self, Reference};

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

pub(crate) fn number(key: &str, v: &Json) -> Result<f64, Reject> {
    match v {
        Json::Number(n) => n
            .as_f64()
            .filter(|f| f.is_finite())
            .ok_or_else(|| Reject::NonFinite(key.to_owned())),
        // Some firmwares print NaN or Infinity as strings.
        Json::String(s) if s.parse::<f64>().is_ok_and(|f| !f.is_finite()) => {
            Err(Reject::NonFinite(key.to_owned()))
        }
        _ => Err(Reject::WrongType(key.to_owned())),
    }
}

fn timestamp_ms(v: &Json, now_ms: i64) -> Result<i64, Reject> {
    let ms = match v {
        Json::Null => return Ok(now_ms),
        Json::Number(_) => {
            let secs = number("ts", v)?;
            if !(0.0..1e11).contains(&secs) {
                return Err(Reject::BadTimestamp(format!("{secs} s")));
            }
            (secs * 1000.0).round() as i64
        }
        Json::String(s) => {
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
    let json: Json = serde_json::from_slice(payload).map_err(|e| Reject::NotJson(e.to_string()))?;
    let Json::Object(map) = json else {
        return Err(Reject::NotObject);
    };
    from_object(sensor, &map, cx)
}

/// Validates a flat message already parsed as a JSON object.
pub fn from_object(
    sensor: &str,
    map: &serde_json::Map<String, Json>,
    cx: &Context<'_>,
) -> Result<Reading, Reject> {
    let ts = map.get("ts").unwrap_or(&Json::Null);
    let arrival = ts.is_null();
    let ts_ms = timestamp_ms(ts, cx.now_ms)?;
    check_time(ts_ms, cx)?;
    let (lat, lon) = match (map.get("lat"), map.get("lon")) {
        (Some(lat), Some(lon)) => (number("lat", lat)?, number("lon", lon)?),
        (None, None) => match cx.sensors.get(sensor) {
            Some(p) => (p.lat, p.lon),
            None => return Err(Reject::NoPosition),
        },
        _ => return Err(Reject::NoPosition),
    };
    check_position(lat, lon)?;
    let mut values = Vec::new();
    for (key, v) in map {
        if matches!(key.as_str(), "ts" | "lat" | "lon") {
            continue;
        }
        let name = normalise_quantity(key)?;
        let value = number(key, v)?;
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
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn cx(sensors: &BTreeMap<String, SensorConfig>) -> Context<'_> {
        Context {
            now_ms: NOW,
            max_future_ms: 300_000,
            retention_ms: 7 * 86_400_000,
            max_payload_bytes: 512,
            sensors,
            reference: Reference::default(),
        }
    }

    #[test]
    fn parses_a_flat_reading() {
        let s = BTreeMap::new();
        let r = parse(
            "s1",
            br#"{"ts":1699999999.5,"PM2.5":12.5,"rh":40,"lat":52.5,"lon":13.4}"#,
            &cx(&s),
        )
        .unwrap();
        assert_eq!(r.ts_ms, 1_699_999_999_500);
        assert_eq!((r.lat, r.lon), (52.5, 13.4));
        let names: Vec<_> = r.values.iter().map(|v| v.quantity.as_str()).collect();
        assert_eq!(names, vec!["pm25", "rh"]);
    }

    #[test]
    fn gases_in_ppb_or_ppm_are_stored_in_micrograms_per_cubic_metre() {
        let s = BTreeMap::new();
        let r = parse(
            "s1",
            br#"{"no2_ppb":100,"co_ppm":1,"o3":50,"lat":1,"lon":1}"#,
            &cx(&s),
        )
        .unwrap();
        let v: Vec<(&str, i64)> = r
            .values
            .iter()
            .map(|v| (v.quantity.as_str(), v.value.round() as i64))
            .collect();
        assert_eq!(v, vec![("co", 1145), ("no2", 188), ("o3", 50)]);
    }

    #[test]
    fn position_and_time_fall_back_to_config_and_now() {
        let mut s = BTreeMap::new();
        s.insert("fixed".to_owned(), SensorConfig { lat: 1.0, lon: 2.0 });
        let r = parse("fixed", br#"{"pm10":3}"#, &cx(&s)).unwrap();
        assert_eq!((r.lat, r.lon, r.ts_ms), (1.0, 2.0, NOW));
        let r = parse(
            "fixed",
            br#"{"ts":"2023-11-14T22:13:20Z","pm10":3}"#,
            &cx(&s),
        )
        .unwrap();
        assert_eq!(r.ts_ms, NOW);
    }

    #[test]
    fn each_bad_message_gets_its_reason() {
        let s = BTreeMap::new();
        let big = format!(r#"{{"pm25":1,"pad":"{}"}}"#, "x".repeat(600));
        let cases: &[(&[u8], &str)] = &[
            (big.as_bytes(), "oversize"),
            (b"not json", "not_json"),
            (b"{\"pm25\": NaN, \"lat\":1,\"lon\":1}", "not_json"),
            (b"[1,2]", "not_object"),
            (br#"{"pm25":"high","lat":1,"lon":1}"#, "wrong_type"),
            (br#"{"pm25":"NaN","lat":1,"lon":1}"#, "non_finite"),
            (br#"{"pm25":-3,"lat":1,"lon":1}"#, "out_of_range"),
            (br#"{"rh":140,"lat":1,"lon":1}"#, "out_of_range"),
            (br#"{"pm25":1,"lat":91,"lon":1}"#, "out_of_range"),
            (
                br#"{"ts":1800000000,"pm25":1,"lat":1,"lon":1}"#,
                "future_timestamp",
            ),
            (br#"{"ts":-5,"pm25":1,"lat":1,"lon":1}"#, "bad_timestamp"),
            (br#"{"ts":1690000000,"pm25":1,"lat":1,"lon":1}"#, "too_old"),
            (br#"{"pm25":1e400,"lat":1,"lon":1}"#, "not_json"),
            (br#"{"pm25":"Infinity","lat":1,"lon":1}"#, "non_finite"),
            (br#"{"no2_ppb":60000,"lat":1,"lon":1}"#, "out_of_range"),
            (
                br#"{"ts":"yesterday","pm25":1,"lat":1,"lon":1}"#,
                "bad_timestamp",
            ),
            (br#"{"ts":true,"pm25":1,"lat":1,"lon":1}"#, "wrong_type"),
            (br#"{"pm25":1}"#, "no_position"),
            (br#"{"pm25":1,"lat":1}"#, "no_position"),
            (br#"{"lat":1,"lon":1}"#, "no_values"),
            (br#"{"pm 25":1,"lat":1,"lon":1}"#, "bad_quantity"),
        ];
        for (payload, reason) in cases {
            let got = parse("s", payload, &cx(&s)).map(|_| ()).unwrap_err();
            assert_eq!(
                got.reason(),
                *reason,
                "{}: {got}",
                String::from_utf8_lossy(payload)
            );
        }
    }
}
