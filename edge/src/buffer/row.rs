//! The buffer's own row format, independent of the wire's.
//!
//! Invariant: what [`check`] accepts, [`encode`] writes and [`decode`]
//! reads back equal, bit for bit (property-tested in
//! `edge/tests/buffer_model.rs`). Ingest runs the same [`check`] before a
//! message is acknowledged, so a reading the agent accepted can never fail
//! on read-back.
//!
//! The format of each row is in its `fmt` column, so an agent reads every
//! format an earlier agent wrote, whatever the wire's version:
//!
//! - format 2 (current): postcard of `sensor: String, ts_ms: i64, lat: f64,
//!   lon: f64, flags: u32, values: Vec<(String, f64)>`, no framing byte;
//! - format 1 (buffer schema 1 and 2): byte `0x01`, then the same postcard
//!   layout. It was `aeris_wire::encode(&Reading)` at wire format version
//!   1; the layout is frozen here so a wire upgrade never turns a backlog
//!   into losses.

use aeris_wire::columnar::Builder;
use aeris_wire::{Reading, Value};
use serde::{Deserialize, Serialize};

/// The format this agent writes.
pub const ROW_FORMAT: i64 = 2;
/// The framing byte format 1 rows start with.
const FORMAT_1_PREFIX: u8 = 1;

/// Why a row or reading is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RowError {
    #[error("row format {0} is unknown to this agent")]
    UnknownFormat(i64),
    #[error("malformed row: {0}")]
    Malformed(String),
    #[error("{0} bytes left over after the row")]
    Trailing(usize),
    #[error("invalid reading: {0}")]
    Invalid(String),
}

#[derive(Serialize)]
struct RowRef<'a> {
    sensor: &'a str,
    ts_ms: i64,
    lat: f64,
    lon: f64,
    flags: u32,
    values: Values<'a>,
}

/// Serialises as `Vec<(String, f64)>` straight from the reading's values.
struct Values<'a>(&'a [Value]);

impl Serialize for Values<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(self.0.iter().map(|v| (v.quantity.as_str(), v.value)))
    }
}

/// A row read in place, its strings borrowed from the row's bytes.
#[derive(Deserialize)]
struct RowBorrowed<'a> {
    sensor: &'a str,
    ts_ms: i64,
    lat: f64,
    lon: f64,
    flags: u32,
    #[serde(borrow)]
    values: Vec<(&'a str, f64)>,
}

#[derive(Deserialize)]
struct RowOwned {
    sensor: String,
    ts_ms: i64,
    lat: f64,
    lon: f64,
    flags: u32,
    values: Vec<(String, f64)>,
}

/// The checks every stored reading passes: the cloud's own
/// ([`Reading::check`]: names, position, finite values, time range), so a
/// reading the agent accepts is one the cloud will take.
pub fn check(r: &Reading) -> Result<(), RowError> {
    r.check().map_err(|e| RowError::Invalid(e.to_string()))
}

/// `r` in the current row format.
pub fn encode(r: &Reading) -> Vec<u8> {
    let row = RowRef {
        sensor: &r.sensor,
        ts_ms: r.ts_ms,
        lat: r.lat,
        lon: r.lon,
        flags: r.flags,
        values: Values(&r.values),
    };
    // Room for the usual row at once: a name and a value are at most
    // about 16 bytes.
    let room = 32 + r.sensor.len() + 16 * r.values.len();
    match postcard::to_extend(&row, Vec::with_capacity(room)) {
        Ok(v) => v,
        // Strings, integers, floats and sequences always serialise.
        Err(e) => unreachable!("postcard cannot fail on a row: {e}"),
    }
}

/// Reads a row of format `fmt` and checks it.
pub fn decode(fmt: i64, body: &[u8]) -> Result<Reading, RowError> {
    let (row, rest) = postcard::take_from_bytes::<RowOwned>(payload(fmt, body)?)
        .map_err(|e| RowError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(RowError::Trailing(rest.len()));
    }
    let reading = Reading {
        sensor: row.sensor,
        ts_ms: row.ts_ms,
        lat: row.lat,
        lon: row.lon,
        flags: row.flags,
        values: row
            .values
            .into_iter()
            .map(|(quantity, value)| Value { quantity, value })
            .collect(),
    };
    check(&reading)?;
    Ok(reading)
}

/// Reads a row of format `fmt` into `into` after the same checks as
/// [`decode`], without building a [`Reading`]; a row that fails adds
/// nothing.
pub fn decode_into(fmt: i64, body: &[u8], into: &mut Builder) -> Result<(), RowError> {
    let (row, rest) = postcard::take_from_bytes::<RowBorrowed>(payload(fmt, body)?)
        .map_err(|e| RowError::Malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(RowError::Trailing(rest.len()));
    }
    let values = row.values.iter().copied();
    into.push(row.sensor, row.ts_ms, (row.lat, row.lon), row.flags, values)
        .map_err(|e| RowError::Invalid(e.to_string()))
}

/// The postcard bytes of a row of format `fmt`.
fn payload(fmt: i64, body: &[u8]) -> Result<&[u8], RowError> {
    Ok(match fmt {
        ROW_FORMAT => body,
        1 => match body.split_first() {
            Some((&FORMAT_1_PREFIX, rest)) => rest,
            Some((v, _)) => {
                return Err(RowError::Malformed(format!(
                    "format 1 row framed with version {v}"
                )))
            }
            None => return Err(RowError::Malformed("empty row".into())),
        },
        other => return Err(RowError::UnknownFormat(other)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading() -> Reading {
        Reading {
            sensor: "s1".into(),
            ts_ms: 1_700_000_000_123,
            lat: 52.5,
            lon: -0.0,
            flags: 5,
            values: vec![
                Value {
                    quantity: "pm25".into(),
                    value: 12.5,
                },
                Value {
                    quantity: "model:x@1".into(),
                    value: f64::MIN_POSITIVE / 4.0,
                },
            ],
        }
    }

    #[test]
    fn format_1_rows_written_with_the_wire_framing_read_back_equal() {
        let r = reading();
        // What buffer schema 2 stored: the wire's version-1 framing.
        let old = aeris_wire::encode(&r);
        assert_eq!(old[0], 1);
        assert_eq!(decode(1, &old).unwrap(), r);
        assert_eq!(decode(ROW_FORMAT, &encode(&r)).unwrap(), r);
    }

    #[test]
    fn bad_rows_are_errors_not_panics() {
        let good = encode(&reading());
        assert!(matches!(decode(3, &good), Err(RowError::UnknownFormat(3))));
        assert!(matches!(
            decode(ROW_FORMAT, &good[..good.len() - 1]),
            Err(RowError::Malformed(_))
        ));
        let mut long = good.clone();
        long.push(0);
        assert!(matches!(
            decode(ROW_FORMAT, &long),
            Err(RowError::Trailing(1))
        ));
        assert!(matches!(decode(1, &[]), Err(RowError::Malformed(_))));
        assert!(matches!(decode(1, &good), Err(RowError::Malformed(_))));
        let mut inf = reading();
        inf.values[0].value = f64::INFINITY;
        assert!(matches!(
            decode(ROW_FORMAT, &encode(&inf)),
            Err(RowError::Invalid(_))
        ));
    }
}
