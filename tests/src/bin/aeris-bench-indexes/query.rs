//! `query`: the latency of the API's reads on a large `readings`, under
//! migration 0006's index set and under 0011's.
//!
//! The table is filled once, server-side (`fill.sql`, one statement per
//! day of minutes, resumable), into `aeris_bench_q<rows>`, which is kept
//! between runs (`--drop` removes it at the end). Its day partitions are
//! UNLOGGED: the fill writes no WAL for them, and reads are planned and
//! executed the same as on logged ones. Both index sets are built once;
//! each set is timed in a transaction that drops the other set's indexes
//! and is rolled back, so the planner sees exactly one set at a time.

use std::time::Instant;

use aeris_sink::postgis::{migrate_to, rollup, READINGS_SQL};
use aeris_tests::postgres::{admin, admin_url};
use tokio_postgres::{Client, NoTls};

use crate::sets::{DROP_ALL, NAMES_0006, NAMES_0011, SET_0006};

/// Devices and sensors per device of the filled table (about the sensors
/// of a regional network), one reading per sensor and minute.
const DEVICES: i32 = 1000;
const SENSORS: i32 = 2;
const MINUTE_MS: i64 = 60_000;
const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

const FILL: &str = include_str!("fill.sql");

const MARKER: &str = "
CREATE TABLE IF NOT EXISTS aeris_bench_fill (
    t0_ms int8 NOT NULL, minutes int4 NOT NULL, filled int4 NOT NULL DEFAULT 0,
    indexed boolean NOT NULL DEFAULT false)";

/// UNLOGGED day partitions over `[$1, $2)` (Unix ms), named as the
/// gateway names them.
const PARTITIONS: &str = "
SELECT format('CREATE UNLOGGED TABLE IF NOT EXISTS %I PARTITION OF readings FOR VALUES FROM (%L) TO (%L)',
              'readings_p' || to_char(d, 'YYYYMMDD'), d::timestamp AT TIME ZONE 'UTC',
              (d + 1)::timestamp AT TIME ZONE 'UTC')
FROM generate_series((('epoch'::timestamptz + $1::int8 * interval '1 ms') AT TIME ZONE 'UTC')::date,
                     (('epoch'::timestamptz + $2::int8 * interval '1 ms') AT TIME ZONE 'UTC')::date,
                     interval '1 day') g, LATERAL (SELECT g::date AS d) x";

/// Hourly rollups of every sensor over the filled hours (values made up:
/// the reads only depend on the rows' number and keys).
const ROLLUPS: &str = "
INSERT INTO readings_hourly (device_id, sensor_id, pollutant, hour, mean, min, max, count,
                             expected, completeness, valid, nowcast, aqi, aqi_averaging)
SELECT 'q' || lpad(d::text, 5, '0'), 's' || (s + 1), p,
       'epoch'::timestamptz + ($1::int8 + h::int8 * 3600000) * interval '1 ms',
       10, 5, 20, 60, 60, 1, true, 10, 40 + (h + d) % 100, 'nowcast'
FROM generate_series(0, $2::int - 1) h, generate_series(0, $3::int - 1) d,
     generate_series(0, $4::int - 1) s, unnest(ARRAY['pm25', 'pm10']) p";

/// Latest reading per sensor in a box, from `readings` alone: what GiST
/// on `geom` would serve. Not what the gateway runs (its `/api/sensors`
/// finds the sensors in Redis' geo index and reads only the rollups).
const BBOX_FROM_READINGS: &str = "
SELECT DISTINCT ON (device_id, sensor_id) device_id, sensor_id, ts, pm25
FROM readings
WHERE geom && ST_MakeEnvelope($1, $2, $3, $4, 4326)
  AND ts >= 'epoch'::timestamptz + $5::int8 * interval '1 millisecond'
  AND ts <  'epoch'::timestamptz + $6::int8 * interval '1 millisecond'
ORDER BY device_id, sensor_id, ts DESC";

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(client)
}

fn url_of(db: &str) -> anyhow::Result<String> {
    let base = admin_url();
    let (base, _) = base
        .rsplit_once('/')
        .ok_or_else(|| anyhow::anyhow!("AERIS_TEST_PG_URL has no database part"))?;
    Ok(format!("{base}/{db}"))
}

/// Creates, fills and indexes the table as far as not done yet.
async fn prepare(db: &str, rows: u64) -> anyhow::Result<(Client, i64, i32)> {
    let admin = admin().await;
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&db])
        .await?
        .is_some();
    if !exists {
        admin
            .batch_execute(&format!("CREATE DATABASE {db}"))
            .await?;
    }
    let mut client = connect(&url_of(db)?).await?;
    if !exists {
        client
            .batch_execute("CREATE EXTENSION IF NOT EXISTS postgis")
            .await?;
        // The schema before 0011; the indexes are the benchmark's.
        migrate_to(&mut client, 10).await?;
        client.batch_execute(DROP_ALL).await?;
    }
    client.batch_execute(MARKER).await?;
    let minutes = i32::try_from(rows / (DEVICES * SENSORS) as u64)?;
    if client
        .query_opt("SELECT 1 FROM aeris_bench_fill", &[])
        .await?
        .is_none()
    {
        let now = aeris_wire::now_ms();
        let end = now - now.rem_euclid(HOUR_MS);
        let t0 = end - minutes as i64 * MINUTE_MS;
        client
            .execute(
                "INSERT INTO aeris_bench_fill (t0_ms, minutes) VALUES ($1, $2)",
                &[&t0, &minutes],
            )
            .await?;
    }
    let row = client
        .query_one(
            "SELECT t0_ms, minutes, filled, indexed FROM aeris_bench_fill",
            &[],
        )
        .await?;
    let (t0, minutes, mut filled, indexed): (i64, i32, i32, bool) =
        (row.get(0), row.get(1), row.get(2), row.get(3));
    let end = t0 + minutes as i64 * MINUTE_MS;
    for r in client.query(PARTITIONS, &[&t0, &end]).await? {
        client.batch_execute(r.get::<_, &str>(0)).await?;
    }
    while filled < minutes {
        let next = (filled + 1440).min(minutes);
        let start = Instant::now();
        client
            .execute(FILL, &[&DEVICES, &SENSORS, &t0, &filled, &next])
            .await?;
        client
            .execute("UPDATE aeris_bench_fill SET filled = $1", &[&next])
            .await?;
        eprintln!(
            "filled minutes {filled}..{next} of {minutes} in {:.0} s",
            start.elapsed().as_secs_f64()
        );
        filled = next;
    }
    if !indexed {
        let start = Instant::now();
        client
            .batch_execute("SET maintenance_work_mem = '1GB'")
            .await?;
        client.batch_execute(SET_0006).await?;
        eprintln!(
            "0006's indexes built in {:.0} s",
            start.elapsed().as_secs_f64()
        );
        let start = Instant::now();
        client
            .batch_execute("CREATE INDEX readings_device_ts ON readings (device_id, ts, sensor_id)")
            .await?;
        eprintln!(
            "0011's index built in {:.0} s",
            start.elapsed().as_secs_f64()
        );
        client.batch_execute("TRUNCATE readings_hourly").await?;
        let hours = minutes / 60;
        let first_hour = t0 + minutes as i64 * MINUTE_MS - hours as i64 * HOUR_MS;
        client
            .execute(ROLLUPS, &[&first_hour, &hours, &DEVICES, &SENSORS])
            .await?;
        client.batch_execute("VACUUM ANALYZE").await?;
        client
            .execute("UPDATE aeris_bench_fill SET indexed = true", &[])
            .await?;
    }
    Ok((client, t0, minutes))
}

/// Nearest-rank percentile of sorted `xs`.
fn pct(xs: &[f64], p: f64) -> f64 {
    let i = ((p / 100.0 * xs.len() as f64).ceil() as usize).clamp(1, xs.len());
    xs[i - 1]
}

/// The devices of a 5 x 5 cell window of the grid `fill.sql` lays out,
/// from column `x`, row `y`; and its box (w, s, e, n).
fn window(x: i32, y: i32) -> (Vec<String>, Vec<String>, [f64; 4]) {
    let (mut devs, mut sens) = (Vec::new(), Vec::new());
    for d in 0..DEVICES {
        if (x..x + 5).contains(&(d % 40)) && (y..y + 5).contains(&(d / 40)) {
            for s in 1..=SENSORS {
                devs.push(format!("q{d:05}"));
                sens.push(format!("s{s}"));
            }
        }
    }
    let w = 6.0 + x as f64 * 0.1 - 0.05;
    let s = 46.0 + y as f64 * 0.08 - 0.04;
    (devs, sens, [w, s, w + 0.5, s + 0.4])
}

/// Times `n` of each query under the index set in place; the same
/// parameters for every set (seeded).
async fn time_queries(
    c: &tokio_postgres::Transaction<'_>,
    t0: i64,
    minutes: i32,
    n: usize,
) -> anyhow::Result<Vec<(&'static str, Vec<f64>, usize)>> {
    let end = t0 + minutes as i64 * MINUTE_MS;
    let first_day = (t0 + DAY_MS - 1).div_euclid(DAY_MS);
    let days = (end.div_euclid(DAY_MS) - first_day).max(1);
    let mut rng = fastrand::Rng::with_seed(17);
    let mut out = Vec::new();
    let timed = |ms: &mut Vec<f64>, start: Instant| ms.push(start.elapsed().as_secs_f64() * 1000.0);
    let (mut a, mut b, mut cur, mut all, mut bbox) = (vec![], vec![], vec![], vec![], vec![]);
    let (mut rows_a, mut rows_b, mut rows_c, mut rows_d, mut rows_e) = (0, 0, 0, 0, 0);
    let every: (Vec<String>, Vec<String>) = (0..DEVICES)
        .flat_map(|d| (1..=SENSORS).map(move |s| (format!("q{d:05}"), format!("s{s}"))))
        .unzip();
    for _ in 0..n {
        let device = format!("q{:05}", rng.i32(0..DEVICES));
        let sensor = format!("s{}", rng.i32(1..=SENSORS));
        let day = (first_day + rng.i64(0..days)) * DAY_MS;
        let start = Instant::now();
        let r = c
            .query(
                READINGS_SQL,
                &[&device, &sensor, &day, &(day + DAY_MS), &10_000i64],
            )
            .await?;
        timed(&mut a, start);
        rows_a += r.len();
        let hour = t0 + rng.i64(0..(minutes as i64 / 60)) * HOUR_MS;
        let start = Instant::now();
        let r = c
            .query(rollup::RAW, &[&device, &sensor, &hour, &(hour + HOUR_MS)])
            .await?;
        timed(&mut b, start);
        rows_b += r.len();
        let (devs, sens, [w, s, e, nn]) = window(rng.i32(0..36), rng.i32(0..21));
        let since = end - 3 * HOUR_MS;
        let start = Instant::now();
        let r = c.query(rollup::CURRENT, &[&devs, &sens, &since]).await?;
        timed(&mut cur, start);
        rows_c += r.len();
        let start = Instant::now();
        let r = c
            .query(rollup::CURRENT, &[&every.0, &every.1, &since])
            .await?;
        timed(&mut all, start);
        rows_d += r.len();
        let start = Instant::now();
        let r = c
            .query(
                BBOX_FROM_READINGS,
                &[&w, &s, &e, &nn, &(end - HOUR_MS), &end],
            )
            .await?;
        timed(&mut bbox, start);
        rows_e += r.len();
    }
    out.push((
        "/api/readings: one sensor, one day (limit 10000)",
        a,
        rows_a / n,
    ));
    out.push(("rollup recompute read: one sensor, one hour", b, rows_b / n));
    out.push((
        "/api/sensors?bbox= rollups read, 5x5 devices (50 sensors)",
        cur,
        rows_c / n,
    ));
    out.push((
        "/api/sensors (no bbox) rollups read, 2,000 sensors",
        all,
        rows_d / n,
    ));
    out.push((
        "latest per sensor in a bbox from readings, last hour (not the gateway's path)",
        bbox,
        rows_e / n,
    ));
    Ok(out)
}

pub async fn run(rows: u64, queries: usize, drop_after: bool) -> anyhow::Result<()> {
    let db = format!("aeris_bench_q{rows}");
    let (mut client, t0, minutes) = prepare(&db, rows).await?;
    let stored = minutes as i64 * (DEVICES * SENSORS) as i64;
    println!(
        "{db}: {stored} readings, {DEVICES} devices x {SENSORS} sensors, one a minute for {minutes} minutes; {queries} queries each"
    );
    println!("| query | index set | p50 ms | p99 ms | max ms | rows returned (mean) |");
    println!("|---|---|---|---|---|---|");
    let union: Vec<&str> = NAMES_0006
        .iter()
        .chain(NAMES_0011.iter())
        .copied()
        .collect();
    // Two passes, the sets alternating, the same queries each time; the
    // second pass is printed: every set then reads pages the first pass
    // brought into the caches, rather than the second set reading what
    // the first one loaded.
    let sets = [("0006", &NAMES_0006[..]), ("0011", &NAMES_0011[..])];
    for (pass, (set, names)) in sets.iter().chain(sets.iter()).enumerate() {
        let tx = client.transaction().await?;
        for hide in union.iter().filter(|n| !names.contains(n)) {
            let sql = match *hide {
                "readings_pkey" => "ALTER TABLE readings DROP CONSTRAINT readings_pkey".to_owned(),
                name => format!("DROP INDEX {name}"),
            };
            tx.batch_execute(&sql).await?;
        }
        let timed = time_queries(&tx, t0, minutes, queries).await?;
        tx.rollback().await?;
        if pass < sets.len() {
            continue;
        }
        for (name, mut ms, mean_rows) in timed {
            ms.sort_by(f64::total_cmp);
            println!(
                "| {name} | {set} | {:.1} | {:.1} | {:.1} | {mean_rows} |",
                pct(&ms, 50.0),
                pct(&ms, 99.0),
                pct(&ms, 100.0)
            );
        }
    }
    drop(client);
    if drop_after {
        admin()
            .await
            .batch_execute(&format!("DROP DATABASE {db} WITH (FORCE)"))
            .await?;
        eprintln!("dropped {db}");
    }
    Ok(())
}
