//! The OpenAQ-style API's catalogue: every (device, sensor, pollutant)
//! with hourly rollups, with the stable ids of migration 0013, its first
//! and last hour and its latest position. Fixed SQL.

use tokio_postgres::Client;

use crate::query::{CatalogSensor, LocationRow, LocationUpdate};

/// The distinct (device, sensor, pollutant)s of `readings_hourly`, by a
/// loose index scan of its primary key (one probe per key, not a scan of
/// every hour).
const KEYS: &str = "
WITH RECURSIVE k AS (
    (SELECT device_id, sensor_id, pollutant FROM readings_hourly
     ORDER BY device_id, sensor_id, pollutant LIMIT 1)
    UNION ALL
    SELECT n.device_id, n.sensor_id, n.pollutant
    FROM k, LATERAL (
        SELECT r.device_id, r.sensor_id, r.pollutant FROM readings_hourly r
        WHERE (r.device_id, r.sensor_id, r.pollutant) > (k.device_id, k.sensor_id, k.pollutant)
        ORDER BY r.device_id, r.sensor_id, r.pollutant LIMIT 1) n
)";

/// Registers ids for keys without one (never burns ids of existing rows:
/// `NOT EXISTS` rather than `ON CONFLICT`, which would draw from the
/// identity sequence every time).
const REGISTER: &str = "
, new_locations AS (
    INSERT INTO api_locations (device_id, sensor_id)
    SELECT DISTINCT k.device_id, k.sensor_id FROM k
    WHERE NOT EXISTS (SELECT 1 FROM api_locations l
                      WHERE l.device_id = k.device_id AND l.sensor_id = k.sensor_id)
    ORDER BY 1, 2
    ON CONFLICT DO NOTHING
    RETURNING id, device_id, sensor_id
)
SELECT count(*) FROM new_locations";

const REGISTER_SENSORS: &str = "
INSERT INTO api_sensors (location_id, pollutant)
SELECT l.id, k.pollutant FROM k JOIN api_locations l USING (device_id, sensor_id)
WHERE NOT EXISTS (SELECT 1 FROM api_sensors s WHERE s.location_id = l.id AND s.pollutant = k.pollutant)
ORDER BY 1, 2
ON CONFLICT DO NOTHING";

const LIST: &str = "
SELECT s.id, l.id, l.device_id, l.sensor_id, s.pollutant,
       (SELECT (extract(epoch FROM h.hour) * 1000)::int8 FROM readings_hourly h
        WHERE h.device_id = l.device_id AND h.sensor_id = l.sensor_id AND h.pollutant = s.pollutant
        ORDER BY h.hour LIMIT 1),
       (SELECT (extract(epoch FROM h.hour) * 1000)::int8 FROM readings_hourly h
        WHERE h.device_id = l.device_id AND h.sensor_id = l.sensor_id AND h.pollutant = s.pollutant
        ORDER BY h.hour DESC LIMIT 1),
       p.lat, p.lon, l.aqs_site, l.utc_offset_min
FROM api_sensors s
JOIN api_locations l ON l.id = s.location_id
LEFT JOIN LATERAL (
    SELECT ST_Y(r.geom) AS lat, ST_X(r.geom) AS lon FROM readings r
    WHERE r.sensor_id = l.sensor_id AND r.device_id = l.device_id
    ORDER BY r.ts DESC LIMIT 1
) p ON true
WHERE $1::int8 IS NULL OR s.id = $1 OR l.id = $2
ORDER BY l.id, s.id";

/// Lists the catalogue: everything, after registering new keys, or (with
/// `sensor` / `location`) one sensor or one location's sensors. A lookup
/// by id registers nothing: an id exists only once a listing gave it.
pub(super) async fn catalog(
    client: &Client,
    sensor: Option<i64>,
    location: Option<i64>,
) -> Result<Vec<CatalogSensor>, tokio_postgres::Error> {
    if sensor.is_none() && location.is_none() {
        client.query_one(&format!("{KEYS}{REGISTER}"), &[]).await?;
        client
            .execute(&format!("{KEYS}{REGISTER_SENSORS}"), &[])
            .await?;
    }
    // `$1 IS NULL` lists everything; a location alone passes -1 as $1.
    let (one, loc) = match (sensor, location) {
        (Some(s), _) => (Some(s), -1),
        (None, Some(l)) => (Some(-1), l),
        (None, None) => (None, -1),
    };
    let rows = client.query(LIST, &[&one, &loc]).await?;
    Ok(rows
        .iter()
        .filter_map(|r| {
            Some(CatalogSensor {
                id: r.get(0),
                location_id: r.get(1),
                device: r.get(2),
                sensor: r.get(3),
                pollutant: r.get(4),
                first_hour_ms: r.get::<_, Option<i64>>(5)?,
                last_hour_ms: r.get::<_, Option<i64>>(6)?,
                lat: r.get(7),
                lon: r.get(8),
                site: r.get(9),
                utc_offset_min: r.get(10),
            })
        })
        .collect())
}

/// Sets what `u` says of its location, registering the location if the
/// catalogue has not listed it yet (an operator may name it ahead of its
/// first rollup); `$3`/`$5` false leave the site / the offset as stored.
const SET: &str = "
INSERT INTO api_locations AS l (device_id, sensor_id, aqs_site, utc_offset_min)
VALUES ($1, $2, $4, $6)
ON CONFLICT (device_id, sensor_id) DO UPDATE SET
    aqs_site = CASE WHEN $3 THEN EXCLUDED.aqs_site ELSE l.aqs_site END,
    utc_offset_min = CASE WHEN $5 THEN EXCLUDED.utc_offset_min ELSE l.utc_offset_min END
RETURNING id, device_id, sensor_id, aqs_site, utc_offset_min";

const LOCATIONS: &str = "
SELECT id, device_id, sensor_id, aqs_site, utc_offset_min FROM api_locations ORDER BY id";

fn location_row(r: &tokio_postgres::Row) -> LocationRow {
    LocationRow {
        id: r.get(0),
        device: r.get(1),
        sensor: r.get(2),
        site: r.get(3),
        utc_offset_min: r.get(4),
    }
}

pub(super) async fn set_location(
    client: &Client,
    u: &LocationUpdate,
) -> Result<LocationRow, tokio_postgres::Error> {
    let site = u.site.clone().flatten();
    let offset = u.utc_offset_min.flatten();
    let row = client
        .query_one(
            SET,
            &[
                &u.device,
                &u.sensor,
                &u.site.is_some(),
                &site,
                &u.utc_offset_min.is_some(),
                &offset,
            ],
        )
        .await?;
    Ok(location_row(&row))
}

pub(super) async fn locations(client: &Client) -> Result<Vec<LocationRow>, tokio_postgres::Error> {
    Ok(client
        .query(LOCATIONS, &[])
        .await?
        .iter()
        .map(location_row)
        .collect())
}
