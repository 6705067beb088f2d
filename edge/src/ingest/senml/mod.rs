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
    let mut base = Base::default();
    let mut got = Collected::default();
    for record in records {
        let Json::Object(rec) = record else {
            return Err(bad("a record is not an object"));
        };
        if let Some(k) = rec.keys().find(|k| k.ends_with('_')) {
            return Err(bad(format!("must-understand field {k:?}")));
        }
        base.update(rec)?;
        collect(sensor, &base, rec, cx, &mut got)?;
    }
    if got.values.is_empty() {
        return Err(Reject::NoValues);
    }
    readings(sensor, &got, cx)
}

/// The base fields so far: they apply to the record that sets them and
/// the ones after it.
#[derive(Default)]
struct Base {
    name: String,
    time: f64,
    unit: String,
    value: f64,
}

impl Base {
    fn update(&mut self, rec: &serde_json::Map<String, Json>) -> Result<(), Reject> {
        if let Some(v) = rec.get("bn") {
            self.name = string("bn", v)?.to_owned();
        }
        if let Some(v) = rec.get("bt") {
            self.time = flat::number("bt", v)?;
        }
        if let Some(v) = rec.get("bu") {
            self.unit = string("bu", v)?.to_owned();
        }
        if let Some(v) = rec.get("bv") {
            self.value = flat::number("bv", v)?;
        }
        if let Some(v) = rec.get("bver") {
            flat::number("bver", v)?;
        }
        Ok(())
    }
}

/// Adds one record's value (or position) to `got`; records without a
/// numeric value the agent measures are skipped.
fn collect(
    sensor: &str,
    base: &Base,
    rec: &serde_json::Map<String, Json>,
    cx: &Context<'_>,
    got: &mut Collected,
) -> Result<(), Reject> {
    let name = match rec.get("n") {
        Some(v) => format!("{}{}", base.name, string("n", v)?),
        None => base.name.clone(),
    };
    let Some(v) = rec.get("v") else {
        if ["vs", "vb", "vd", "s"].iter().any(|k| rec.contains_key(*k)) {
            return Ok(()); // nothing the agent measures
        }
        if rec.keys().any(|k| k.starts_with('b')) && !rec.contains_key("n") {
            return Ok(()); // a record carrying base fields only
        }
        return Err(bad(format!("record {name:?} has no value")));
    };
    // bv + v of two finite numbers can overflow to infinity.
    let value = base.value + flat::number(&name, v)?;
    if !value.is_finite() {
        return Err(Reject::NonFinite(name));
    }
    let unit = match rec.get("u") {
        Some(u) => string("u", u)?,
        None => base.unit.as_str(),
    };
    let t = match rec.get("t") {
        Some(t) => flat::number("t", t)?,
        None => 0.0,
    };
    let (ts_ms, relative) = resolve_time(base.time + t, cx.now_ms)?;
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
    Ok(())
}

/// One reading per (sensor, time) of what was collected, in time order.
fn readings(sensor: &str, got: &Collected, cx: &Context<'_>) -> Result<Vec<Reading>, Reject> {
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
mod tests;
