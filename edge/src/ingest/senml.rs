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
//! - what comes before the quantity (usually the base name, such as
//!   `urn:dev:mac:aa01:`) names the device that measured it (RFC 8428
//!   §4.5.1): the sensor is `<topic sensor>/<that name>` without its
//!   trailing `:` or `/`, e.g. `bridge/urn:dev:mac:aa01`, so a pack with
//!   several base names gives several sensors and a bridge can never speak
//!   for another topic's sensor. No prefix, or the topic's own sensor id,
//!   is the topic's sensor;
//! - records named `lat`/`lon` (or with unit `lat`/`lon`, the SenML units
//!   registry's) give the position: per sensor and timestamp when present
//!   there, else that sensor's last one in the pack, else the topic
//!   sensor's, else the configured position of the sensor, else of the
//!   topic's sensor;
//! - one reading per sensor and distinct time, so one pack may yield
//!   several;
//! - a resolved time below 2^28 s is relative to the agent's clock: the
//!   reading is flagged [`super::FLAG_ARRIVAL_TIME`].
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

/// The sensor a resolved record name belongs to (see the module docs).
fn sensor_of(topic_sensor: &str, name: &str, quantity_len: usize) -> Result<String, Reject> {
    let prefix = name[..name.len() - quantity_len].trim_end_matches([':', '/']);
    if prefix.is_empty() || prefix == topic_sensor {
        return Ok(topic_sensor.to_owned());
    }
    let id = format!("{topic_sensor}/{prefix}");
    if id.len() > aeris_wire::message::MAX_NAME_LEN || id.chars().any(char::is_control) {
        return Err(bad(format!(
            "sensor name {id:?} is too long or not printable"
        )));
    }
    Ok(id)
}

/// Readings and positions of one pack, by sensor and resolved time (ms).
#[derive(Default)]
struct Collected {
    values: BTreeMap<(String, i64), Vec<Value>>,
    lat: BTreeMap<(String, i64), f64>,
    lon: BTreeMap<(String, i64), f64>,
    /// Times that were relative to the agent's clock.
    relative: std::collections::BTreeSet<i64>,
}

impl Collected {
    /// The position of `sensor` at `ts_ms` (see the module docs).
    fn position(
        &self,
        sensor: &str,
        topic: &str,
        ts_ms: i64,
        cx: &Context<'_>,
    ) -> Option<(f64, f64)> {
        let at = |m: &BTreeMap<(String, i64), f64>, s: &str| {
            m.get(&(s.to_owned(), ts_ms)).copied().or_else(|| {
                m.range((s.to_owned(), i64::MIN)..=(s.to_owned(), i64::MAX))
                    .next_back()
                    .map(|(_, v)| *v)
            })
        };
        for s in [sensor, topic] {
            match (at(&self.lat, s), at(&self.lon, s)) {
                (Some(lat), Some(lon)) => return Some((lat, lon)),
                (None, None) => {}
                _ => return None,
            }
        }
        [sensor, topic]
            .iter()
            .find_map(|s| cx.sensors.get(*s))
            .map(|p| (p.lat, p.lon))
    }
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
    let mut got = Collected::default();
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
        // bv + v of two finite numbers can overflow to infinity.
        let value = bv + flat::number(&name, v)?;
        if !value.is_finite() {
            return Err(Reject::NonFinite(name));
        }
        let unit = match rec.get("u") {
            Some(u) => string("u", u)?,
            None => bu.as_str(),
        };
        let t = match rec.get("t") {
            Some(t) => flat::number("t", t)?,
            None => 0.0,
        };
        let (ts_ms, relative) = resolve_time(bt + t, cx.now_ms)?;
        if relative {
            got.relative.insert(ts_ms);
        }
        let short = name.rsplit([':', '/']).next().unwrap_or("");
        if short.is_empty() {
            return Err(bad("a record has no name"));
        }
        let key = (sensor_of(sensor, &name, short.len())?, ts_ms);
        let quantity = flat::normalise_quantity(short)?;
        match (quantity.as_str(), unit) {
            ("lat", _) | (_, "lat") => {
                got.lat.insert(key, value);
            }
            ("lon", _) | (_, "lon") => {
                got.lon.insert(key, value);
            }
            _ => {
                let m = flat::measurement(quantity, unit, value, cx)?;
                got.values.entry(key).or_default().push(m);
            }
        }
    }
    if got.values.is_empty() {
        return Err(Reject::NoValues);
    }
    let mut readings = Vec::with_capacity(got.values.len());
    for ((id, ts_ms), values) in &got.values {
        flat::check_time(*ts_ms, cx)?;
        let (lat, lon) = got
            .position(id, sensor, *ts_ms, cx)
            .ok_or(Reject::NoPosition)?;
        flat::check_position(lat, lon)?;
        if values.len() > flat::MAX_MEASURED_VALUES {
            return Err(Reject::Oversize(values.len()));
        }
        let arrival = got.relative.contains(ts_ms);
        readings.push(Reading {
            sensor: id.clone(),
            ts_ms: *ts_ms,
            lat,
            lon,
            flags: if arrival { super::FLAG_ARRIVAL_TIME } else { 0 },
            values: values.clone(),
        });
    }
    // Time order, as packs are written.
    readings.sort_by_key(|r| r.ts_ms);
    Ok(readings)
}

/// A resolved SenML time (seconds) as Unix milliseconds, and whether it was
/// relative to the agent's clock.
fn resolve_time(secs: f64, now_ms: i64) -> Result<(i64, bool), Reject> {
    if !secs.is_finite() {
        return Err(Reject::NonFinite("t".into()));
    }
    let relative = secs < RELATIVE_LIMIT_S;
    let ms = if relative {
        now_ms as f64 + secs * 1000.0
    } else {
        secs * 1000.0
    };
    if !(0.0..1e14).contains(&ms) {
        return Err(Reject::BadTimestamp(format!("{secs} s")));
    }
    Ok((ms.round() as i64, relative))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::config::SensorConfig;
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
        assert_eq!(
            r[0].sensor, "s1/urn:dev:ow:10e2073a",
            "the base name is the device"
        );
        assert_eq!(r[0].flags, 0, "absolute times are the sensor's own");
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
        assert!(r
            .iter()
            .all(|r| r.flags == crate::ingest::FLAG_ARRIVAL_TIME));
        assert_eq!((r[1].ts_ms, r[1].values[0].value), (NOW, 10.0));
        assert_eq!((r[0].lat, r[0].lon), (1.0, 2.0), "configured position");
    }

    #[test]
    fn several_base_names_give_several_sensors() {
        let pack = r#"[
            {"bn":"urn:dev:mac:aa01:","bt":1699999990,"n":"pm25","v":10},
            {"bn":"urn:dev:mac:bb02:","n":"pm25","v":20},
            {"bn":"","n":"lat","v":50},{"n":"lon","v":8},
            {"bn":"urn:dev:mac:bb02:","n":"lat","v":51},{"n":"lon","v":9},
            {"bn":"s1:","n":"pm10","v":30}
        ]"#;
        let r = parse(pack, &BTreeMap::new()).unwrap();
        let got: Vec<(&str, f64, f64)> = r
            .iter()
            .map(|r| (r.sensor.as_str(), r.values[0].value, r.lat))
            .collect();
        assert_eq!(
            got,
            [
                ("s1", 30.0, 50.0),
                ("s1/urn:dev:mac:aa01", 10.0, 50.0),
                ("s1/urn:dev:mac:bb02", 20.0, 51.0),
            ]
        );
        let long = format!(r#"[{{"bn":"{}:","n":"pm25","v":1}}]"#, "x".repeat(130));
        assert_eq!(
            parse(&long, &BTreeMap::new()).unwrap_err().reason(),
            "bad_senml"
        );
    }

    #[test]
    fn a_base_value_that_overflows_is_rejected_for_any_quantity() {
        for name in ["pm25", "foo", "lat"] {
            let pack = format!(
                r#"[{{"bv":1.7e308,"n":"{name}","v":1.7e308}},{{"n":"lat","v":1}},{{"n":"lon","v":1}}]"#
            );
            let e = parse(&pack, &BTreeMap::new()).unwrap_err();
            assert_eq!(e.reason(), "non_finite", "{name}");
        }
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
