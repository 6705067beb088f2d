//! Benchmark (not a test): rows/s into PostGIS through the gateway's sink
//! (decoded batches -> binary COPY -> INSERT ... ON CONFLICT), next to
//! `psql \copy` of the same rows from CSV into an identical table, on the
//! same fresh database in the same run: the practical limit.
//!
//! `cargo run --release -p aeris-tests --bin aeris-bench-postgis -- [rows] [batch] [group]`
//! (defaults 300000 readings, 500 per batch, 64 batches per commit).
//! Uses the test server (`AERIS_TEST_PG_URL`, as scripts/test.sh sets up).

use std::io::Write;
use std::time::Instant;

use aeris_sink::{PostgisSink, Sink};
use aeris_tests::postgres::TestDb;
use aeris_wire::{Batch, Reading, Value};

const COLUMNS: &str =
    "device_id, seq, sensor_id, ts, geom, flags, pm25, pm10, measurements, model_outputs";

fn batches(rows: usize, per_batch: usize) -> Vec<Batch> {
    let devices = 100;
    let t0 = 1_700_000_000_000i64;
    let mut next_seq = vec![1u64; devices];
    (0..rows.div_ceil(per_batch))
        .map(|b| {
            let d = b % devices;
            let n = per_batch.min(rows - b * per_batch);
            let first_seq = next_seq[d];
            next_seq[d] += n as u64;
            Batch {
                device: format!("bench-{d:03}"),
                first_seq,
                readings: (0..n)
                    .map(|i| {
                        let s = i % 8;
                        let k = (b * per_batch + i) as f64;
                        Reading {
                            sensor: format!("s{s}"),
                            ts_ms: t0 + (first_seq as i64 + i as i64) * 1000,
                            lat: 47.0 + d as f64 * 0.01 + s as f64 * 0.001,
                            lon: 8.0 + d as f64 * 0.01,
                            flags: 0,
                            values: vec![
                                Value {
                                    quantity: "pm25".into(),
                                    value: k % 300.0 / 2.0,
                                },
                                Value {
                                    quantity: "pm10".into(),
                                    value: k % 500.0 / 2.0,
                                },
                                Value {
                                    quantity: "rh".into(),
                                    value: 40.0 + k % 50.0,
                                },
                                Value {
                                    quantity: "temp".into(),
                                    value: k % 35.0,
                                },
                            ],
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

fn csv(batches: &[Batch], path: &std::path::Path) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for b in batches {
        for (seq, r) in b.with_seqs() {
            let v = |q: &str| r.values.iter().find(|v| v.quantity == q).map(|v| v.value);
            let ts = rfc3339(r.ts_ms);
            writeln!(
                f,
                "{},{},{},{},SRID=4326;POINT({} {}),{},{},{},\"{{\"\"rh\"\": {}, \"\"temp\"\": {}}}\",{{}}",
                b.device,
                seq,
                r.sensor,
                ts,
                r.lon,
                r.lat,
                r.flags,
                v("pm25").unwrap_or_default(),
                v("pm10").unwrap_or_default(),
                v("rh").unwrap_or_default(),
                v("temp").unwrap_or_default(),
            )?;
        }
    }
    f.flush()
}

/// `ts_ms` as an RFC 3339 UTC literal, which `timestamptz` input reads.
fn rfc3339(ts_ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ts_ms as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rows = args.first().copied().unwrap_or(300_000);
    let per_batch = args.get(1).copied().unwrap_or(500).clamp(1, 10_000);
    let group = args.get(2).copied().unwrap_or(64).max(1);
    let data = batches(rows, per_batch);
    let db = TestDb::create().await;
    let sink = PostgisSink::connect(&db.url).await?;
    let client = db.client().await;
    client
        .batch_execute("CREATE TABLE readings_raw (LIKE readings INCLUDING ALL)")
        .await?;

    eprintln!("{rows} readings, {per_batch} per batch, {group} batches per commit");
    let start = Instant::now();
    let mut inserted = 0;
    for chunk in data.chunks(group) {
        inserted += sink.write(chunk).await?.inserted;
    }
    let sink_s = start.elapsed().as_secs_f64();
    anyhow::ensure!(
        inserted as usize == rows,
        "sink stored {inserted} of {rows}"
    );

    let dir = tempfile::tempdir()?;
    let file = dir.path().join("readings.csv");
    csv(&data, &file)?;
    let start = Instant::now();
    let status = std::process::Command::new("psql")
        .arg(&db.url)
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!(
            "\\copy readings_raw ({COLUMNS}) FROM '{}' WITH (FORMAT csv)",
            file.display()
        ))
        .status()?;
    let copy_s = start.elapsed().as_secs_f64();
    anyhow::ensure!(status.success(), "psql \\copy failed");
    let raw: i64 = client
        .query_one("SELECT count(*) FROM readings_raw", &[])
        .await?
        .get(0);
    anyhow::ensure!(raw as usize == rows, "psql stored {raw} of {rows}");

    let sink_rate = rows as f64 / sink_s;
    let copy_rate = rows as f64 / copy_s;
    println!("sink (decoded batches -> COPY binary -> INSERT ON CONFLICT): {rows} rows in {sink_s:.2} s = {sink_rate:.0} rows/s");
    println!("psql \\copy from CSV (same rows, same indexes):             {rows} rows in {copy_s:.2} s = {copy_rate:.0} rows/s");
    println!("sink / raw COPY: {:.2}", sink_rate / copy_rate);
    Ok(())
}
