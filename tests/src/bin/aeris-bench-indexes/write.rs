//! `write`: rows/s into `readings` per index set and write path, each
//! variant into a fresh database, the variants interleaved run by run so
//! a change of load hits all of them alike.

use std::time::Instant;

use aeris_sink::{PostgisSink, Sink};
use aeris_tests::bench_rows::{batches, csv, psql_copy};
use aeris_tests::postgres::TestDb;

use crate::sets::{IndexSet, DROP_ALL, WRITE_SETS};

/// How a variant writes.
#[derive(Clone, Copy)]
pub enum Method {
    /// `psql \copy` of the rows as CSV straight into `readings`: no keys,
    /// no exactly-once, the table's own limit.
    Copy,
    /// The gateway's sink (`PostgisSink::write`), `group` batches of 500
    /// per transaction, over `conns` connections at once (each its own
    /// sink, taking every `conns`-th group), with the server's `work_mem`
    /// or `work_mem_mb` set on the writer's connection.
    Sink {
        group: usize,
        conns: usize,
        work_mem_mb: u32,
    },
    /// The sink writing every batch a second time, `group` batches per
    /// transaction, after an untimed first pass: all duplicates, the path
    /// of a fleet resending what it holds after a broker or gateway restart.
    Resend { group: usize },
}

pub struct Variant {
    pub set: &'static IndexSet,
    pub method: Method,
    /// `readings` as one plain table instead of day partitions.
    pub unpartitioned: bool,
}

impl Variant {
    pub fn name(&self) -> String {
        let how = match self.method {
            Method::Copy => "\\copy CSV".to_owned(),
            Method::Resend { group } => format!("sink {group}x500 resend (all duplicates)"),
            Method::Sink {
                group,
                conns,
                work_mem_mb,
            } => {
                let mut name = format!("sink {group}x500");
                if conns > 1 {
                    name += &format!(" x{conns} connections");
                }
                if work_mem_mb > 0 {
                    name += &format!(" work_mem {work_mem_mb}MB");
                }
                name
            }
        };
        let table = if self.unpartitioned {
            ", unpartitioned"
        } else {
            ""
        };
        format!("{how}, {}{table}", self.set.name)
    }
}

/// Every variant; the first is the reference (`\copy` into today's table).
pub fn variants() -> Vec<Variant> {
    let set = |i: usize| &WRITE_SETS[i];
    let v = |set, method, unpartitioned| Variant {
        set,
        method,
        unpartitioned,
    };
    let sink = |group, conns, work_mem_mb| Method::Sink {
        group,
        conns,
        work_mem_mb,
    };
    let mut all = vec![
        v(set(0), Method::Copy, false),
        v(set(0), sink(64, 1, 0), false),
        v(set(0), sink(16, 1, 0), false),
        v(set(0), sink(256, 1, 0), false),
        v(set(0), Method::Copy, true),
        v(set(0), sink(64, 1, 0), true),
    ];
    all.extend((1..WRITE_SETS.len()).map(|i| v(set(i), sink(64, 1, 0), false)));
    let chosen = WRITE_SETS.iter().position(|s| s.name.starts_with("0011"));
    let chosen = set(chosen.unwrap_or(0));
    all.push(v(chosen, Method::Copy, false));
    all.push(v(chosen, sink(16, 1, 0), false));
    all.push(v(chosen, sink(256, 1, 0), false));
    all.push(v(chosen, sink(64, 2, 0), false));
    all.push(v(set(0), sink(64, 2, 0), false));
    all.push(v(chosen, sink(64, 1, 64), false));
    all.push(v(chosen, sink(256, 1, 64), false));
    all.push(v(set(WRITE_SETS.len() - 1), Method::Copy, false));
    all.push(v(chosen, Method::Resend { group: 64 }, false));
    all
}

/// Replaces the partitioned `readings` by a plain table with the same
/// columns (the partitioned one stays, renamed, unused).
const UNPARTITION: &str = "
ALTER TABLE readings RENAME TO readings_partitioned;
CREATE TABLE readings (LIKE readings_partitioned INCLUDING DEFAULTS)";

/// Creates the day partitions of `[$1, $2]` (Unix ms).
const ADD_DAYS: &str = "
SELECT aeris_readings_add_day(d::date)
FROM generate_series((('epoch'::timestamptz + $1::int8 * interval '1 ms') AT TIME ZONE 'UTC')::date,
                     (('epoch'::timestamptz + $2::int8 * interval '1 ms') AT TIME ZONE 'UTC')::date,
                     interval '1 day') d";

const SIZES: &str = "
SELECT coalesce((SELECT sum(pg_total_relation_size(relid)) FROM pg_partition_tree('readings'))::int8,
                pg_total_relation_size('readings')),
       pg_total_relation_size('reading_runs'),
       (SELECT count(*) FROM readings)";

/// One measured write.
pub struct Sample {
    pub rows_per_s: f64,
    pub readings_bytes: f64,
    pub keys_bytes: f64,
}

pub async fn run_one(
    v: &Variant,
    data: &[aeris_wire::Batch],
    csv_path: &std::path::Path,
    span_ms: (i64, i64),
) -> anyhow::Result<Sample> {
    let rows: u64 = data.iter().map(|b| b.readings.len() as u64).sum();
    let db = TestDb::create().await;
    drop(PostgisSink::connect(&db.url).await?);
    let client = db.client().await;
    client.batch_execute(DROP_ALL).await?;
    if v.unpartitioned {
        client.batch_execute(UNPARTITION).await?;
    }
    client.batch_execute(v.set.sql).await?;
    if !v.unpartitioned {
        client.execute(ADD_DAYS, &[&span_ms.0, &span_ms.1]).await?;
    }
    client.batch_execute("CHECKPOINT").await?;
    let secs = match v.method {
        Method::Copy => psql_copy(&db.url, "readings", csv_path)?,
        Method::Resend { group } => {
            let sink = PostgisSink::connect(&db.url).await?;
            for chunk in data.chunks(group) {
                sink.write(chunk).await?;
            }
            let start = Instant::now();
            let mut duplicates = 0;
            for chunk in data.chunks(group) {
                duplicates += sink.write(chunk).await?.duplicates;
            }
            anyhow::ensure!(
                duplicates == rows,
                "{duplicates} of {rows} resends were duplicates"
            );
            start.elapsed().as_secs_f64()
        }
        Method::Sink {
            group,
            conns,
            work_mem_mb,
        } => {
            let url = match work_mem_mb {
                0 => db.url.clone(),
                mb => format!("{}?options=-c%20work_mem%3D{mb}MB", db.url),
            };
            let mut sinks = Vec::new();
            for _ in 0..conns {
                sinks.push(PostgisSink::connect(&url).await?);
            }
            let start = Instant::now();
            let chunks: Vec<&[aeris_wire::Batch]> = data.chunks(group).collect();
            let writes = sinks.iter().enumerate().map(|(k, sink)| {
                let mine: Vec<&[aeris_wire::Batch]> =
                    chunks.iter().skip(k).step_by(conns).copied().collect();
                async move {
                    let mut inserted = 0;
                    for chunk in mine {
                        inserted += sink.write(chunk).await?.inserted;
                    }
                    Ok::<u64, aeris_sink::SinkError>(inserted)
                }
            });
            let mut inserted = 0;
            for n in futures_util::future::join_all(writes).await {
                inserted += n?;
            }
            anyhow::ensure!(inserted == rows, "sink stored {inserted} of {rows}");
            start.elapsed().as_secs_f64()
        }
    };
    let row = client.query_one(SIZES, &[]).await?;
    let (readings, keys, stored): (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
    anyhow::ensure!(stored as u64 == rows, "{stored} of {rows} rows stored");
    Ok(Sample {
        rows_per_s: rows as f64 / secs,
        readings_bytes: readings as f64 / rows as f64,
        keys_bytes: keys as f64 / rows as f64,
    })
}

/// Median and range of `xs`.
fn stats(xs: &[f64]) -> (f64, f64, f64) {
    let mut s = xs.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    let median = if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    };
    (median, s[0], s[n - 1])
}

pub async fn run(rows: usize, runs: usize, only: Option<Vec<usize>>) -> anyhow::Result<()> {
    let all = variants();
    let chosen: Vec<usize> = match only {
        Some(list) => list.into_iter().filter(|i| *i < all.len()).collect(),
        None => (0..all.len()).collect(),
    };
    // Today, from 01:00 UTC: the rows go into today's partition.
    let now = aeris_wire::now_ms();
    let t0 = now - now.rem_euclid(86_400_000) + 3_600_000;
    let data = batches(rows, 500, t0);
    let span = (
        t0,
        t0 + (rows / aeris_tests::bench_rows::DEVICES) as i64 * 1000 + 1000,
    );
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("readings.csv");
    csv(&data, &path)?;
    eprintln!(
        "{rows} readings per run, {runs} runs, {} variants",
        chosen.len()
    );
    let mut samples: Vec<Vec<Sample>> = all.iter().map(|_| Vec::new()).collect();
    for run in 1..=runs {
        for &i in &chosen {
            let s = run_one(&all[i], &data, &path, span).await?;
            eprintln!(
                "run {run} [{i}] {}: {:.0} rows/s",
                all[i].name(),
                s.rows_per_s
            );
            samples[i].push(s);
        }
    }
    let reference = samples[0].iter().map(|s| s.rows_per_s).collect::<Vec<_>>();
    let reference = (!reference.is_empty()).then(|| stats(&reference).0);
    println!(
        "\n{rows} rows per run, {runs} runs; rows/s median (min-max); bytes per row incl. indexes"
    );
    println!("| # | variant | rows/s | min-max | readings B/row | keys B/row | vs \\copy 0006 |");
    println!("|---|---|---|---|---|---|---|");
    for &i in &chosen {
        let rates: Vec<f64> = samples[i].iter().map(|s| s.rows_per_s).collect();
        let (median, lo, hi) = stats(&rates);
        let rb = stats(
            &samples[i]
                .iter()
                .map(|s| s.readings_bytes)
                .collect::<Vec<_>>(),
        )
        .0;
        let kb = stats(&samples[i].iter().map(|s| s.keys_bytes).collect::<Vec<_>>()).0;
        let rel = reference.map_or("-".to_owned(), |r| format!("{:.2}", median / r));
        println!(
            "| {i} | {} | {median:.0} | {lo:.0}-{hi:.0} | {rb:.0} | {kb:.0} | {rel} |",
            all[i].name()
        );
    }
    Ok(())
}
