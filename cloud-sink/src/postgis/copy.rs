//! The bulk write path's rows: binary `COPY` of a write's new readings
//! straight into `readings` (which routes each to its day's partition),
//! and of the readings to compare with a stored row into a session-local
//! staging table, for [`super::collide`].
//!
//! The staging table is `TEMP ... ON COMMIT DELETE ROWS`: private to the
//! connection, never WAL-logged, and empty again after each commit or
//! rollback, so a failed write leaves nothing behind. Its `batch` column is
//! the reading's batch index in the write.

use aeris_wire::correction::{parse_raw_quantity, Formula};
use aeris_wire::message::MODEL_PREFIX;
use aeris_wire::{Batch, Reading};
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;

use super::runs::Entry;

use crate::query::POLLUTANT_COLUMNS;

/// Created once per connection.
pub(super) const CREATE_STAGING: &str = "
CREATE TEMP TABLE IF NOT EXISTS aeris_staging (
    device_id text, seq int8, sensor_id text, ts_ms int8, lon float8, lat float8, batch int4,
    flags int4, pm1 float8, pm25 float8, pm10 float8, no2 float8, o3 float8, co float8, so2 float8,
    measurements jsonb, model_outputs jsonb, pm25_raw float8, pm25_correction text
) ON COMMIT DELETE ROWS";

const COPY_IN: &str = "COPY aeris_staging FROM STDIN (FORMAT binary)";

/// Field types of the columns both copies end with (see [`put`]).
const TAIL_TYPES: [Type; 12] = [
    Type::INT4,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::JSONB,
    Type::JSONB,
    Type::FLOAT8,
    Type::TEXT,
];

/// `head`'s field types followed by [`TAIL_TYPES`].
fn types(head: &[Type]) -> Vec<Type> {
    head.iter().chain(&TAIL_TYPES).cloned().collect()
}

/// Column types of `aeris_staging` before the common tail, in order.
const STAGING_HEAD: [Type; 7] = [
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::INT8,
    Type::FLOAT8,
    Type::FLOAT8,
    Type::INT4,
];

/// A reading split into the staging table's columns.
struct Row<'a> {
    pollutants: [Option<f64>; 7],
    /// PM2.5's raw value and its formula label, when the edge corrected
    /// it or withheld it (`raw:pm25:<formula>@<version>`).
    pm25_raw: Option<(f64, String)>,
    rest: serde_json::Value,
    models: serde_json::Value,
    reading: &'a Reading,
}

fn split(reading: &Reading) -> Row<'_> {
    let mut pollutants = [None; 7];
    let mut rest = serde_json::Map::new();
    let mut models = serde_json::Map::new();
    let mut pm25_raw = None;
    for v in &reading.values {
        let raw = parse_raw_quantity(&v.quantity)
            .filter(|(q, f)| *q == "pm25" && Formula::parse(f).is_some() && pm25_raw.is_none());
        if let Some((_, formula)) = raw {
            pm25_raw = Some((v.value, formula.to_owned()));
        } else if let Some(i) = POLLUTANT_COLUMNS.iter().position(|c| *c == v.quantity) {
            pollutants[i] = Some(v.value);
        } else if let Some(model) = v.quantity.strip_prefix(MODEL_PREFIX) {
            models.insert(model.to_owned(), serde_json::json!(v.value));
        } else {
            rest.insert(v.quantity.clone(), serde_json::json!(v.value));
        }
    }
    Row {
        pollutants,
        pm25_raw,
        rest: serde_json::Value::Object(rest),
        models: serde_json::Value::Object(models),
        reading,
    }
}

/// Whether two readings under one key are the same reading: the sensor,
/// timestamp, flags and every value as stored (the comparison
/// [`super::collide`] makes against a stored row).
pub(super) fn same(a: &Reading, b: &Reading) -> bool {
    let (x, y) = (split(a), split(b));
    a.sensor == b.sensor
        && a.ts_ms == b.ts_ms
        && a.flags == b.flags
        && x.pollutants == y.pollutants
        && x.rest == y.rest
        && x.models == y.models
}

/// Writes one row: `head`, then the columns both copies end with (flags,
/// the seven pollutants, measurements, model outputs, PM2.5's raw value
/// and its formula).
async fn put(
    writer: std::pin::Pin<&mut BinaryCopyInWriter>,
    head: &[&(dyn ToSql + Sync)],
    row: &Row<'_>,
) -> Result<(), tokio_postgres::Error> {
    let flags = row.reading.flags as i32;
    let raw = row.pm25_raw.as_ref().map(|r| r.0);
    let formula = row.pm25_raw.as_ref().map(|r| r.1.as_str());
    let mut values: Vec<&(dyn ToSql + Sync)> = Vec::with_capacity(head.len() + 12);
    values.extend_from_slice(head);
    values.push(&flags);
    values.extend(row.pollutants.iter().map(|p| p as &(dyn ToSql + Sync)));
    values.extend([
        &row.rest as &(dyn ToSql + Sync),
        &row.models,
        &raw,
        &formula,
    ]);
    writer.write(&values).await
}

/// Copies `entries` (readings of `batches`) into the staging table.
pub(super) async fn stage(
    tx: &Transaction<'_>,
    batches: &[Batch],
    entries: &[Entry<'_>],
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in(COPY_IN).await?;
    let writer = BinaryCopyInWriter::new(sink, &types(&STAGING_HEAD));
    pin_mut!(writer);
    for (i, seq, r) in entries {
        let Some(b) = batches.get(*i) else { continue };
        let batch = i32::try_from(*i).unwrap_or(i32::MAX);
        let seq = i64::try_from(*seq).unwrap_or(i64::MAX);
        let head: [&(dyn ToSql + Sync); 7] =
            [&b.device, &seq, &r.sensor, &r.ts_ms, &r.lon, &r.lat, &batch];
        put(writer.as_mut(), &head, &split(r)).await?;
    }
    writer.finish().await.map(|_| ())
}

/// Straight into `readings`. Binary `COPY` carries no type per field: the
/// server reads each with its column's receive function, so `ts` is sent
/// as `timestamptz`'s binary form (int8 microseconds since 2000-01-01 UTC)
/// and `geom` as the EWKB that `geometry`'s receive function reads.
const COPY_READINGS: &str = "
COPY readings (device_id, seq, sensor_id, ts, geom, flags, pm1, pm25, pm10, no2, o3, co, so2,
               measurements, model_outputs, pm25_raw, pm25_correction)
FROM STDIN (FORMAT binary)";

/// Field types as sent before the common tail (see [`COPY_READINGS`]).
const READING_HEAD: [Type; 5] = [Type::TEXT, Type::INT8, Type::TEXT, Type::INT8, Type::BYTEA];

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 UTC).
const PG_EPOCH_US: i64 = 946_684_800_000_000;

/// `timestamptz`'s binary form of a Unix-ms time (saturating; readings'
/// times are validated far inside the range).
fn pg_timestamp(ts_ms: i64) -> i64 {
    ts_ms.saturating_mul(1000).saturating_sub(PG_EPOCH_US)
}

/// A WGS 84 point as little-endian EWKB: byte order, type (point with
/// the SRID flag), SRID 4326, x, y.
fn ewkb_point(lon: f64, lat: f64) -> [u8; 25] {
    let mut out = [0u8; 25];
    out[0] = 1;
    out[1..5].copy_from_slice(&0x2000_0001u32.to_le_bytes());
    out[5..9].copy_from_slice(&4326u32.to_le_bytes());
    out[9..17].copy_from_slice(&lon.to_le_bytes());
    out[17..25].copy_from_slice(&lat.to_le_bytes());
    out
}

/// The hour (Unix ms, its beginning) a rollup must recompute for a new
/// reading: `(device, sensor, hour)` of each one carrying a pollutant.
pub(super) type Mark<'a> = (&'a str, &'a str, i64);

/// Copies the new readings `fresh` into `readings`; returns the rollup
/// marks they need, sorted and distinct.
pub(super) async fn store<'a>(
    tx: &Transaction<'_>,
    batches: &'a [Batch],
    fresh: &[Entry<'a>],
) -> Result<Vec<Mark<'a>>, tokio_postgres::Error> {
    let mut marks = std::collections::BTreeSet::new();
    let sink = tx.copy_in(COPY_READINGS).await?;
    let writer = BinaryCopyInWriter::new(sink, &types(&READING_HEAD));
    pin_mut!(writer);
    for (i, seq, r) in fresh {
        let Some(b) = batches.get(*i) else { continue };
        let row = split(r);
        if row.pollutants.iter().any(Option::is_some) {
            let hour = r.ts_ms - r.ts_ms.rem_euclid(3_600_000);
            marks.insert((b.device.as_str(), r.sensor.as_str(), hour));
        }
        let seq = i64::try_from(*seq).unwrap_or(i64::MAX);
        let ts = pg_timestamp(r.ts_ms);
        let geom = ewkb_point(r.lon, r.lat);
        let geom = &geom[..];
        let head: [&(dyn ToSql + Sync); 5] = [&b.device, &seq, &r.sensor, &ts, &geom];
        put(writer.as_mut(), &head, &row).await?;
    }
    writer.finish().await?;
    Ok(marks.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_points_have_postgres_binary_forms() {
        // 2000-01-01T00:00:00.001Z is 1,000 µs after PostgreSQL's epoch.
        assert_eq!(pg_timestamp(946_684_800_001), 1000);
        assert_eq!(pg_timestamp(0), -PG_EPOCH_US);
        let p = ewkb_point(13.4, 52.5);
        assert_eq!(&p[..9], &[1, 1, 0, 0, 0x20, 0xE6, 0x10, 0, 0]);
        assert_eq!(f64::from_le_bytes(p[9..17].try_into().unwrap()), 13.4);
        assert_eq!(f64::from_le_bytes(p[17..25].try_into().unwrap()), 52.5);
    }
}
