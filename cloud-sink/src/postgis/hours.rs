//! Reads of the hourly rollups (`readings_hourly`, migration 0009) for the
//! API: the map's charts, the OpenAQ-style hours and days, the AQCSV
//! export. Fixed SQL; data travels only as parameters.

use tokio_postgres::{Client, Row};

use crate::query::{HourRow, HoursQuery};

const HOURS: &str = "
SELECT device_id, sensor_id, pollutant, (extract(epoch FROM hour) * 1000)::int8, mean, min, max,
       count, expected, completeness, valid, nowcast, aqi, aqi_averaging
FROM readings_hourly
WHERE ($1::text IS NULL OR device_id = $1) AND ($2::text IS NULL OR sensor_id = $2)
  AND ($3::text IS NULL OR pollutant = $3)
  AND hour >= 'epoch'::timestamptz + $4::int8 * interval '1 millisecond'
  AND hour <  'epoch'::timestamptz + $5::int8 * interval '1 millisecond'
ORDER BY device_id, sensor_id, pollutant, hour
LIMIT $6 OFFSET $7";

const COUNT: &str = "
SELECT count(*)
FROM readings_hourly
WHERE ($1::text IS NULL OR device_id = $1) AND ($2::text IS NULL OR sensor_id = $2)
  AND ($3::text IS NULL OR pollutant = $3)
  AND hour >= 'epoch'::timestamptz + $4::int8 * interval '1 millisecond'
  AND hour <  'epoch'::timestamptz + $5::int8 * interval '1 millisecond'";

/// The rows of `q`, and how many match it without `limit` and `offset`.
pub(super) async fn hours(
    client: &Client,
    q: &HoursQuery,
) -> Result<(Vec<HourRow>, u64), tokio_postgres::Error> {
    let rows = client
        .query(
            HOURS,
            &[
                &q.device,
                &q.sensor,
                &q.pollutant,
                &q.from_ms,
                &q.to_ms,
                &q.limit,
                &q.offset,
            ],
        )
        .await?;
    let found: i64 = client
        .query_one(
            COUNT,
            &[&q.device, &q.sensor, &q.pollutant, &q.from_ms, &q.to_ms],
        )
        .await?
        .get(0);
    Ok((
        rows.iter().map(hour_row).collect(),
        u64::try_from(found).unwrap_or(0),
    ))
}

fn hour_row(r: &Row) -> HourRow {
    let count: i32 = r.get(7);
    let expected: i32 = r.get(8);
    HourRow {
        device: r.get(0),
        sensor: r.get(1),
        pollutant: r.get(2),
        hour_ms: r.get(3),
        mean: r.get(4),
        min: r.get(5),
        max: r.get(6),
        count: u32::try_from(count).unwrap_or(0),
        expected: u32::try_from(expected).unwrap_or(0),
        completeness: r.get(9),
        valid: r.get(10),
        nowcast: r.get(11),
        aqi: r
            .get::<_, Option<i32>>(12)
            .and_then(|a| u32::try_from(a).ok()),
        aqi_averaging: r.get(13),
    }
}
