//! SenML (RFC 8428) packs in JSON: an array of records such as
//! `[{"bn":"urn:dev:ow:10e2073a:","bt":1.7e9,"bu":"ug/m3","n":"pm25","v":12.5},
//!   {"n":"temp","u":"Cel","v":21.4},{"n":"lat","v":52.5},{"n":"lon","v":13.4}]`.
//!
//! Resolution (RFC 8428 §4.6): base name + name, base time + time, base
//! value + value, unit or base unit. Times are seconds; a resolved time
//! below 2^28 is relative to now (RFC 8428 §4.5.3), so `"t":-60` is a
//! minute ago and a pack without times is "now".
//!
//! Mapping to readings:
//! - the quantity is the resolved name after its last `:` or `/`, named as
//!   in the flat format (`PM2.5` → `pm25`), its value converted from its
//!   unit to the canonical one ([`crate::preprocess::units`]);
//! - records named `lat`/`lon` (or with unit `lat`/`lon`, the SenML units
//!   registry's) give the position: per timestamp when present there, else
//!   the pack's last one, else the sensor's configured position;
//! - one reading per distinct time, so one pack may yield several.
//!
//! Records with a string, boolean or data value (`vs`, `vb`, `vd`) or only a
//! sum (`s`) carry nothing the agent measures and are skipped. A pack with
//! an unknown field ending in `_` (must-understand) is rejected, as the RFC
//! requires; any bad record rejects the whole pack.

use std::collections::BTreeMap;

use aeris_wire::{Reading, Value};
use serde_json::Value as Json;

use super::flat::{self, Context, Reject};

/// Resolved times below this are relative to now (RFC 8428 §4.5.3).
const RELATIVE_LIMIT_S: f64 = 268_435_456.0; // 2^28

/// Most records a pack may hold.
pub const MAX_RECORDS: usize = 256;

fn bad(why: impl Into<String>) -> Reject {
    Reject::BadSenml(why.into())
}

fn string<'j>(key: &str, v: &'j Json) -> Result<&'j str, Reject> {
    v.as_str().ok_or_else(|| Reject::WrongType(key.to_owned()))
}

/// Parses and validates one SenML pack from sensor `sensor`.
pub fn from_pack(sensor: &str, records: &[Json], cx: &Context<'_>) -> Result<Vec<Reading>, Reject> {
    if records.is_empty() {
        return Err(Reject::NoValues);
    }
    if records.len() > MAX_RECORDS {
        return Err(Reject::Oversize(records.len()));
    }
    let (mut bn, mut bt, mut bu, mut bv) = (String::new(), 0.0, String::new(), 0.0);
    // Values and positions by resolved time in ms.
    let mut values: BTreeMap<i64, Vec<Value>> = BTreeMap::new();
    let mut lat_at: BTreeMap<i64, f64> = BTreeMap::new();
    let mut lon_at: BTreeMap<i64, f64> = BTreeMap::new();
    for record in records {
        let Json::Object(rec) = record else {
            return Err(bad("a record is not an object"));
        };
        if let Some(k) = rec.keys().find(|k| k.ends_with('_')) {
            return Err(bad(format!("must-understand field {k:?}")));
        }
        // Base fields apply to this record and the ones after it.
        if let Some(v) = rec.get("bn") {
            bn = string("bn", v)?.to_owned();
        }
        if let Some(v) = rec.get("bt") {
            bt = flat::number("bt", v)?;
        }
        if let Some(v) = rec.get("bu") {
            bu = string("bu", v)?.to_owned();
        }
        if let Some(v) = rec.get("bv") {
            bv = flat::number("bv", v)?;
        }
        if let Some(v) = rec.get("bver") {
            flat::number("bver", v)?;
        }
        let name = match rec.get("n") {
            Some(v) => format!("{bn}{}", string("n", v)?),
            None => bn.clone(),
        };
        let Some(v) = rec.get("v") else {
            if ["vs", "vb", "vd", "s"].iter().any(|k| rec.contains_key(*k)) {
                continue; // nothing the agent measures
            }
            if rec.keys().any(|k| k.starts_with('b')) && !rec.contains_key("n") {
                continue; // a record carrying base fields only
            }
            return Err(bad(format!("record {name:?} has no value")));
        };
        let value = bv + flat::number(&name, v)?;
        let unit = match rec.get("u") {
            Some(u) => string("u", u)?,
            None => bu.as_str(),
        };
        let t = match rec.get("t") {
            Some(t) => flat::number("t", t)?,
            None => 0.0,
        };
        let ts_ms = resolve_time(bt + t, cx.now_ms)?;
        let short = name.rsplit([':', '/']).next().unwrap_or("");
        if short.is_empty() {
            return Err(bad("a record has no name"));
        }
        let quantity = flat::normalise_quantity(short)?;
        match (quantity.as_str(), unit) {
            ("lat", _) | (_, "lat") => {
                lat_at.insert(ts_ms, value);
            }
            ("lon", _) | (_, "lon") => {
                lon_at.insert(ts_ms, value);
            }
            _ => {
                let m = flat::measurement(quantity, unit, value, cx)?;
                values.entry(ts_ms).or_default().push(m);
            }
        }
    }
    if values.is_empty() {
        return Err(Reject::NoValues);
    }
    let pack_lat = lat_at.values().last().copied();
    let pack_lon = lon_at.values().last().copied();
    let configured = cx.sensors.get(sensor);
    let mut readings = Vec::with_capacity(values.len());
    for (ts_ms, values) in values {
        flat::check_time(ts_ms, cx)?;
        let lat = lat_at.get(&ts_ms).copied().or(pack_lat);
        let lon = lon_at.get(&ts_ms).copied().or(pack_lon);
        let (lat, lon) = match (lat, lon, configured) {
            (Some(lat), Some(lon), _) => (lat, lon),
            (None, None, Some(p)) => (p.lat, p.lon),
            _ => return Err(Reject::NoPosition),
        };
        flat::check_position(lat, lon)?;
        if values.len() > flat::MAX_MEASURED_VALUES {
            return Err(Reject::Oversize(values.len()));
        }
        readings.push(Reading {
            sensor: sensor.to_owned(),
            ts_ms,
            lat,
            lon,
            flags: 0,
            values,
        });
    }
    Ok(readings)
}

/// A resolved SenML time (seconds) as Unix milliseconds.
fn resolve_time(secs: f64, now_ms: i64) -> Result<i64, Reject> {
    if !secs.is_finite() {
        return Err(Reject::NonFinite("t".into()));
    }
    let ms = if secs < RELATIVE_LIMIT_S {
        now_ms as f64 + secs * 1000.0
    } else {
        secs * 1000.0
    };
    if !(0.0..1e14).contains(&ms) {
        return Err(Reject::BadTimestamp(format!("{secs} s")));
    }
    Ok(ms.round() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SensorConfig;
    use crate::preprocess::units::Reference;

    const NOW: i64 = 1_700_000_000_000;

    fn parse(
        payload: &str,
        sensors: &BTreeMap<String, SensorConfig>,
    ) -> Result<Vec<Reading>, Reject> {
        let cx = Context {
            now_ms: NOW,
            max_future_ms: 300_000,
            retention_ms: 7 * 86_400_000,
            max_payload_bytes: 4096,
            sensors,
            reference: Reference::default(),
        };
        let json: Json = serde_json::from_str(payload).unwrap();
        from_pack("s1", json.as_array().unwrap(), &cx)
    }

    fn values(r: &Reading) -> Vec<(&str, f64)> {
        r.values
            .iter()
            .map(|v| (v.quantity.as_str(), v.value))
            .collect()
    }

    #[test]
    fn base_fields_resolve_names_times_units_and_values() {
        let pack = r#"[
            {"bn":"urn:dev:ow:10e2073a:","bt":1699999990,"bu":"ug/m3","bver":10,
             "n":"PM2.5","v":12.5},
            {"n":"pm10","v":20,"t":0},
            {"n":"temp","u":"Cel","v":21.5},
            {"n":"lat","u":"lat","v":52.5},{"n":"lon","u":"lon","v":13.4},
            {"n":"pm25","v":13,"t":5},
            {"n":"label","vs":"kitchen"}
        ]"#;
        let r = parse(pack, &BTreeMap::new()).unwrap();
        assert_eq!(r.len(), 2, "one reading per distinct time");
        assert_eq!(r[0].ts_ms, 1_699_999_990_000);
        assert_eq!(
            values(&r[0]),
            [("pm25", 12.5), ("pm10", 20.0), ("temp", 21.5)]
        );
        assert_eq!(r[1].ts_ms, 1_699_999_995_000);
        assert_eq!(values(&r[1]), [("pm25", 13.0)]);
        // The pack's position applies to its readings at other times.
        assert_eq!((r[1].lat, r[1].lon), (52.5, 13.4));
    }

    #[test]
    fn small_times_are_relative_to_now_and_base_value_adds() {
        let pack = r#"[{"bv":10,"n":"pm25","u":"ug/m3","v":2.5,"t":-60},{"n":"pm25","v":0}]"#;
        let mut s = BTreeMap::new();
        s.insert("s1".to_owned(), SensorConfig { lat: 1.0, lon: 2.0 });
        let r = parse(pack, &s).unwrap();
        assert_eq!((r[0].ts_ms, r[0].values[0].value), (NOW - 60_000, 12.5));
        assert_eq!((r[1].ts_ms, r[1].values[0].value), (NOW, 10.0));
        assert_eq!((r[0].lat, r[0].lon), (1.0, 2.0), "configured position");
    }

    #[test]
    fn gas_units_are_converted_to_micrograms_per_cubic_metre() {
        let pack = r#"[{"n":"no2","u":"ppb","v":100},{"n":"lat","v":1},{"n":"lon","v":1}]"#;
        let r = parse(pack, &BTreeMap::new()).unwrap();
        assert_eq!(r[0].values[0].value.round(), 188.0);
    }

    #[test]
    fn each_bad_pack_gets_its_reason() {
        let cases = [
            (r#"[]"#, "no_values"),
            (r#"[1,2]"#, "bad_senml"),
            (r#"[{"n":"pm25"}]"#, "bad_senml"),
            (r#"[{"n":"pm25","v":1,"x_":1}]"#, "bad_senml"),
            (r#"[{"n":"pm25","v":"1","lat":1}]"#, "wrong_type"),
            (r#"[{"n":5,"v":1}]"#, "wrong_type"),
            (r#"[{"n":"pm25","v":"NaN"}]"#, "non_finite"),
            (
                r#"[{"n":"pm25","v":-1},{"n":"lat","v":1},{"n":"lon","v":1}]"#,
                "out_of_range",
            ),
            (
                r#"[{"n":"pm25","u":"ppb","v":1},{"n":"lat","v":1},{"n":"lon","v":1}]"#,
                "bad_unit",
            ),
            (
                r#"[{"n":"pm25","v":1,"t":1800000000},{"n":"lat","v":1},{"n":"lon","v":1}]"#,
                "future_timestamp",
            ),
            (
                r#"[{"n":"pm25","v":1,"t":1600000000},{"n":"lat","v":1},{"n":"lon","v":1}]"#,
                "too_old",
            ),
            (r#"[{"n":"pm25","v":1}]"#, "no_position"),
            (
                r#"[{"n":"pm25","v":1},{"n":"lat","v":95},{"n":"lon","v":1}]"#,
                "out_of_range",
            ),
            (r#"[{"n":"lat","v":1},{"n":"lon","v":1}]"#, "no_values"),
        ];
        for (pack, reason) in cases {
            let got = parse(pack, &BTreeMap::new()).map(|_| ()).unwrap_err();
            assert_eq!(got.reason(), reason, "{pack}: {got}");
        }
    }
}
