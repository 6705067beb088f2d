//! Benchmark (not a test): rows/s into PostGIS through the gateway's sink
//! (decoded batches -> binary COPY -> INSERT ... ON CONFLICT), next to
//! `psql \copy` of the same rows from CSV into an identical table, on the
//! same fresh database in the same run: the practical limit.
//!
//! `cargo run --release -p aeris-tests --bin aeris-bench-postgis -- [rows] [batch] [group]`
//! (defaults 300000 readings, 500 per batch, 64 batches per commit).
//! Uses the test server (`AERIS_TEST_PG_URL`, as scripts/test.sh sets up).

use std::time::Instant;

use aeris_sink::{PostgisSink, Sink};
use aeris_tests::bench_rows::{batches, csv, psql_copy};
use aeris_tests::postgres::TestDb;

/// 2023-11-14T22:13:20Z: the rows land in the default partition, as before
/// partitions existed (`aeris-bench-indexes write` compares with a day
/// partition).
const T0_MS: i64 = 1_700_000_000_000;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rows = args.first().copied().unwrap_or(300_000);
    let per_batch = args.get(1).copied().unwrap_or(500).clamp(1, 10_000);
    let group = args.get(2).copied().unwrap_or(64).max(1);
    let data = batches(rows, per_batch, T0_MS);
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
    let copy_s = psql_copy(&db.url, "readings_raw", &file)?;
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
