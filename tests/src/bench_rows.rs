//! The readings the PostGIS write benchmarks send (`aeris-bench-postgis`,
//! `aeris-bench-indexes write`), and the same rows as CSV for `psql \copy`.
//!
//! 100 devices take turns batch by batch; each device's readings are one
//! second apart from `t0_ms` on, numbered from seq 1 without gaps, spread
//! over 8 sensors, each with pm25, pm10 (columns) and rh, temp (the
//! `measurements` JSON).

use std::io::Write;

use aeris_wire::{Batch, Reading, Value};

/// Columns the CSV of [`csv`] fills, in its order.
pub const CSV_COLUMNS: &str =
    "device_id, seq, sensor_id, ts, geom, flags, pm25, pm10, measurements, model_outputs";

/// Devices the rows are spread over.
pub const DEVICES: usize = 100;

/// `rows` readings in batches of `per_batch`.
pub fn batches(rows: usize, per_batch: usize, t0_ms: i64) -> Vec<Batch> {
    let mut next_seq = vec![1u64; DEVICES];
    (0..rows.div_ceil(per_batch))
        .map(|b| {
            let d = b % DEVICES;
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
                        let value = |quantity: &str, value| Value {
                            quantity: quantity.into(),
                            value,
                        };
                        Reading {
                            sensor: format!("s{s}"),
                            ts_ms: t0_ms + (first_seq as i64 + i as i64) * 1000,
                            lat: 47.0 + d as f64 * 0.01 + s as f64 * 0.001,
                            lon: 8.0 + d as f64 * 0.01,
                            flags: 0,
                            values: vec![
                                value("pm25", k % 300.0 / 2.0),
                                value("pm10", k % 500.0 / 2.0),
                                value("rh", 40.0 + k % 50.0),
                                value("temp", k % 35.0),
                            ],
                        }
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The readings of `batches` as CSV rows of [`CSV_COLUMNS`].
pub fn csv(batches: &[Batch], path: &std::path::Path) -> std::io::Result<()> {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for b in batches {
        for (seq, r) in b.with_seqs() {
            let v = |q: &str| r.values.iter().find(|v| v.quantity == q).map(|v| v.value);
            writeln!(
                f,
                "{},{},{},{},SRID=4326;POINT({} {}),{},{},{},\"{{\"\"rh\"\": {}, \"\"temp\"\": {}}}\",{{}}",
                b.device,
                seq,
                r.sensor,
                rfc3339(r.ts_ms),
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
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ts_ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// `psql \copy` of the CSV at `path` into `table` of the database at
/// `url`; returns the seconds it took.
pub fn psql_copy(url: &str, table: &str, path: &std::path::Path) -> anyhow::Result<f64> {
    let start = std::time::Instant::now();
    let status = std::process::Command::new("psql")
        .arg(url)
        .args(["-q", "-v", "ON_ERROR_STOP=1", "-c"])
        .arg(format!(
            "\\copy {table} ({CSV_COLUMNS}) FROM '{}' WITH (FORMAT csv)",
            path.display()
        ))
        .status()?;
    anyhow::ensure!(status.success(), "psql \\copy into {table} failed");
    Ok(start.elapsed().as_secs_f64())
}
