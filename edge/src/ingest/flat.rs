//! The flat JSON sensor format: one object per message,
//! `{"ts": 1700000000.5, "pm25": 12.5, "rh": 40, "lat": 52.5, "lon": 13.4}`.
//!
//! - `ts`: Unix seconds (number, fractions allowed) or an RFC 3339 string in
//!   UTC; absent means "now" (sensors without a clock).
//! - `lat`/`lon`: WGS84 degrees; absent means the position configured for the
//!   sensor.
//! - every other key is a quantity whose value must be a finite number; names
//!   are lower-cased and `pm2.5`/`pm2_5` become `pm25`.

use std::collections::BTreeMap;

use aeris_wire::{Reading, Value};
use serde_json::Value as Json;

use crate::config::SensorConfig;

/// Why a sensor message was rejected. [`Reject::reason`] is the metric label.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Reject {
    #[error("payload of {0} bytes exceeds the limit")]
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
            Reject::BadTimestamp(_) => "bad_timestamp",
            Reject::NoPosition => "no_position",
            Reject::NoValues => "no_values",
            Reject::BadQuantity(_) => "bad_quantity",
            Reject::BadSensorId(_) => "bad_sensor_id",
        }
    }
}

/// Physical range of the quantities the agent knows; others need only be finite.
fn physical_range(quantity: &str) -> Option<(f64, f64)> {
    Some(match quantity {
        "pm1" | "pm25" | "pm10" => (0.0, 2000.0), // µg/m³, beyond optical sensors' saturation
        "temp" | "dewp" => (-80.0, 70.0),         // °C
        "rh" => (0.0, 100.0),                     // %
        "pres" => (300.0, 1100.0),                // hPa
        "no2" | "o3" | "so2" | "co" => (0.0, 100_000.0),
        _ => return None,
    })
}

fn normalise_quantity(key: &str) -> Result<String, Reject> {
    let lower = key.to_ascii_lowercase();
    let name = match lower.as_str() {
        "pm2.5" | "pm2_5" => "pm25".to_owned(),
        "pm1.0" | "pm1_0" => "pm1".to_owned(),
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

fn number(key: &str, v: &Json) -> Result<f64, Reject> {
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
            let d = t
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(|_| Reject::BadTimestamp("before 1970".into()))?;
            i64::try_from(d.as_millis()).map_err(|_| Reject::BadTimestamp(s.clone()))?
        }
        _ => return Err(Reject::WrongType("ts".into())),
    };
    Ok(ms)
}

/// What the parser needs besides the payload.
pub struct Context<'a> {
    pub now_ms: i64,
    pub max_future_ms: i64,
    pub max_payload_bytes: usize,
    pub sensors: &'a BTreeMap<String, SensorConfig>,
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
    let ts_ms = timestamp_ms(map.get("ts").unwrap_or(&Json::Null), cx.now_ms)?;
    if ts_ms > cx.now_ms.saturating_add(cx.max_future_ms) {
        return Err(Reject::FutureTimestamp);
    }
    let (lat, lon) = match (map.get("lat"), map.get("lon")) {
        (Some(lat), Some(lon)) => (number("lat", lat)?, number("lon", lon)?),
        (None, None) => match cx.sensors.get(sensor) {
            Some(p) => (p.lat, p.lon),
            None => return Err(Reject::NoPosition),
        },
        _ => return Err(Reject::NoPosition),
    };
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        let (quantity, value) = if (-90.0..=90.0).contains(&lat) {
            ("lon", lon)
        } else {
            ("lat", lat)
        };
        return Err(Reject::OutOfRange {
            quantity: quantity.into(),
            value,
        });
    }
    let mut values = Vec::new();
    for (key, v) in &map {
        if matches!(key.as_str(), "ts" | "lat" | "lon") {
            continue;
        }
        let quantity = normalise_quantity(key)?;
        let value = number(key, v)?;
        if let Some((lo, hi)) = physical_range(&quantity) {
            if !(lo..=hi).contains(&value) {
                return Err(Reject::OutOfRange { quantity, value });
            }
        }
        values.push(Value { quantity, value });
    }
    if values.is_empty() {
        return Err(Reject::NoValues);
    }
    if values.len() > aeris_wire::message::MAX_VALUES_PER_READING {
        return Err(Reject::Oversize(payload.len()));
    }
    Ok(Reading {
        sensor: sensor.to_owned(),
        ts_ms,
        lat,
        lon,
        flags: 0,
        values,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_700_000_000_000;

    fn cx(sensors: &BTreeMap<String, SensorConfig>) -> Context<'_> {
        Context {
            now_ms: NOW,
            max_future_ms: 300_000,
            max_payload_bytes: 512,
            sensors,
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
