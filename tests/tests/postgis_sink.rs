//! The PostGIS sink against a fresh database: migrations, duplicates,
//! geometry.

use aeris_sink::postgis::{applied_version, MIGRATIONS};
use aeris_sink::{PostgisSink, Sink, WriteOutcome};
use aeris_tests::postgres::TestDb;
use aeris_wire::{Batch, Reading, Value};

fn batch(device: &str, first_seq: u64, n: usize) -> Batch {
    Batch {
        device: device.into(),
        first_seq,
        readings: (0..n)
            .map(|i| Reading {
                sensor: format!("s{i}"),
                ts_ms: 1_600_000_000_000 + i as i64 * 1000,
                lat: -33.5 + i as f64 / 8.0,
                lon: 151.25 - i as f64 / 16.0,
                flags: 0,
                values: vec![
                    Value {
                        quantity: "pm25".into(),
                        value: 3.5 + i as f64,
                    },
                    Value {
                        quantity: "rh".into(),
                        value: 50.0,
                    },
                ],
            })
            .collect(),
    }
}

#[tokio::test]
async fn migrations_apply_once_even_when_gateways_start_together() {
    let db = TestDb::create().await;
    // Three gateways starting at the same moment.
    let (a, b, c) = tokio::join!(
        PostgisSink::connect(&db.url),
        PostgisSink::connect(&db.url),
        PostgisSink::connect(&db.url)
    );
    for s in [a, b, c] {
        s.expect("connect and migrate");
    }
    let client = db.client().await;
    let latest = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    assert_eq!(applied_version(&client).await.unwrap(), latest);
    let rows: i64 = client
        .query_one("SELECT count(*) FROM aeris_schema_migrations", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, MIGRATIONS.len() as i64);
    // A restart applies nothing new.
    PostgisSink::connect(&db.url).await.unwrap();
    assert_eq!(applied_version(&client).await.unwrap(), latest);
}

#[tokio::test]
async fn duplicates_are_ignored_and_geometry_matches() {
    let db = TestDb::create().await;
    let sink = PostgisSink::connect(&db.url).await.unwrap();
    let out = sink
        .write(&[batch("d1", 1, 10), batch("d2", 1, 3)])
        .await
        .unwrap();
    assert_eq!(
        out,
        WriteOutcome {
            inserted: 13,
            duplicates: 0
        }
    );
    // The same range again, overlapping a new one: only 11..=15 are new.
    let out = sink.write(&[batch("d1", 6, 10)]).await.unwrap();
    assert_eq!(
        out,
        WriteOutcome {
            inserted: 5,
            duplicates: 5
        }
    );

    let client = db.client().await;
    let rows = client
        .query(
            "SELECT seq, ST_X(geom), ST_Y(geom), (measurements->>'pm25')::float8, sensor_id
             FROM readings WHERE device_id = 'd1' ORDER BY seq",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 15);
    let expected = batch("d1", 1, 10);
    for (row, r) in rows.iter().zip(&expected.readings) {
        assert_eq!(row.get::<_, f64>(1), r.lon);
        assert_eq!(row.get::<_, f64>(2), r.lat);
        assert_eq!(row.get::<_, f64>(3), r.values[0].value);
        assert_eq!(row.get::<_, String>(4), r.sensor);
    }
    // A spatial query uses the geometry: readings within 20 km of s0's spot.
    let near: i64 = client
        .query_one(
            "SELECT count(*) FROM readings WHERE device_id = 'd1' AND
             ST_DWithin(geom::geography, ST_SetSRID(ST_MakePoint(151.25, -33.5), 4326)::geography, 20000)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // s0 (at the point) and s1 (~15 km away); s2 is ~28 km away, and the
    // resend added s5..s9, further still.
    assert_eq!(near, 2);
}

#[tokio::test]
async fn an_unreachable_database_is_a_clear_error() {
    let port = aeris_tests::free_port();
    let url = format!("postgres://nobody@127.0.0.1:{port}/none");
    let err = PostgisSink::connect(&url).await.err().expect("must fail");
    assert!(err.to_string().contains("unavailable"), "{err}");
}
