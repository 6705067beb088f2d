//! The bulk write path: binary `COPY` of every reading of a group into a
//! session-local staging table, then one `INSERT ... SELECT ... ON CONFLICT
//! DO NOTHING` into `readings`, all in one transaction.
//!
//! The staging table is `TEMP ... ON COMMIT DELETE ROWS`: private to the
//! connection, never WAL-logged, and empty again after each commit or
//! rollback, so a failed write leaves nothing behind. Its `batch` column is
//! the reading's batch index in the write, for [`super::collide`].

use aeris_wire::correction::{parse_raw_quantity, Formula};
use aeris_wire::message::MODEL_PREFIX;
use aeris_wire::{Batch, Reading};
use futures_util::pin_mut;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::Transaction;

use crate::query::POLLUTANT_COLUMNS;

/// Created once per connection.
pub(super) const CREATE_STAGING: &str = "
CREATE TEMP TABLE IF NOT EXISTS aeris_staging (
    device_id text, seq int8, sensor_id text, ts_ms int8, lon float8, lat float8, flags int4,
    pm1 float8, pm25 float8, pm10 float8, no2 float8, o3 float8, co float8, so2 float8,
    measurements jsonb, model_outputs jsonb, batch int4, pm25_raw float8, pm25_correction text
) ON COMMIT DELETE ROWS";

const COPY_IN: &str = "COPY aeris_staging FROM STDIN (FORMAT binary)";

/// Column types of `aeris_staging`, in order.
const TYPES: [Type; 19] = [
    Type::TEXT,
    Type::INT8,
    Type::TEXT,
    Type::INT8,
    Type::FLOAT8,
    Type::FLOAT8,
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
    Type::INT4,
    Type::FLOAT8,
    Type::TEXT,
];

/// Staging to `readings`, through `reading_keys` (migration 0006): the
/// keys are inserted first, and only readings whose key was new go into
/// the partitioned table, so a `(device_id, seq)` is stored once whatever
/// its timestamp and whether its partition still exists. `DISTINCT ON`
/// keeps the first of a key staged twice in one write (the lowest batch
/// index, as the copy order did before); the rest are conflicts that
/// [`super::collide`] sorts into duplicates and collisions. The timestamp
/// is built from integer milliseconds (exact, unlike a float division).
const MERGE: &str = "
WITH fresh AS (
    INSERT INTO reading_keys (device_id, seq, ts)
    SELECT DISTINCT ON (device_id, seq)
           device_id, seq, 'epoch'::timestamptz + ts_ms * interval '1 millisecond'
    FROM aeris_staging
    ORDER BY device_id, seq, batch
    ON CONFLICT (device_id, seq) DO NOTHING
    RETURNING device_id, seq
)
INSERT INTO readings (device_id, seq, sensor_id, ts, geom, flags,
                      pm1, pm25, pm10, no2, o3, co, so2, measurements, model_outputs,
                      pm25_raw, pm25_correction)
SELECT DISTINCT ON (s.device_id, s.seq)
       s.device_id, s.seq, s.sensor_id, 'epoch'::timestamptz + s.ts_ms * interval '1 millisecond',
       ST_SetSRID(ST_MakePoint(s.lon, s.lat), 4326), s.flags,
       s.pm1, s.pm25, s.pm10, s.no2, s.o3, s.co, s.so2, s.measurements, s.model_outputs,
       s.pm25_raw, s.pm25_correction
FROM aeris_staging s
JOIN fresh f ON f.device_id = s.device_id AND f.seq = s.seq
ORDER BY s.device_id, s.seq, s.batch";

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

/// Copies `batches` into staging and merges them; returns the rows inserted.
pub(super) async fn write(
    tx: &Transaction<'_>,
    batches: &[Batch],
) -> Result<u64, tokio_postgres::Error> {
    let sink = tx.copy_in(COPY_IN).await?;
    let writer = BinaryCopyInWriter::new(sink, &TYPES);
    pin_mut!(writer);
    for (i, b) in batches.iter().enumerate() {
        let batch = i32::try_from(i).unwrap_or(i32::MAX);
        for (seq, r) in b.with_seqs() {
            let row = split(r);
            let seq = i64::try_from(seq).unwrap_or(i64::MAX);
            let flags = row.reading.flags as i32;
            let [pm1, pm25, pm10, no2, o3, co, so2] = &row.pollutants;
            let raw = row.pm25_raw.as_ref().map(|r| r.0);
            let formula = row.pm25_raw.as_ref().map(|r| r.1.as_str());
            let values: [&(dyn ToSql + Sync); 19] = [
                &b.device,
                &seq,
                &r.sensor,
                &r.ts_ms,
                &r.lon,
                &r.lat,
                &flags,
                pm1,
                pm25,
                pm10,
                no2,
                o3,
                co,
                so2,
                &row.rest,
                &row.models,
                &batch,
                &raw,
                &formula,
            ];
            writer.as_mut().write(&values).await?;
        }
    }
    writer.finish().await?;
    tx.execute(MERGE, &[]).await
}
