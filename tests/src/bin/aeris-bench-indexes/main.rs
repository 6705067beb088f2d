//! Benchmark (not a test): what `readings`' index set and the sink's write
//! path cost per row, and what the API's reads cost on a large table under
//! each index set (issue 17, point 2). Uses the test server
//! (`AERIS_TEST_PG_URL`, as scripts/test.sh sets up).

mod query;
mod sets;
mod write;

const HELP: &str = "\
aeris-bench-indexes: write rate and query latency of `readings` per index set

USAGE:
    aeris-bench-indexes write [--rows N] [--runs R] [--variants I,J,...]
    aeris-bench-indexes query [--rows N] [--queries Q] [--drop]
    aeris-bench-indexes --help

write   Each variant (an index set of `readings` and a write path: `psql \\copy`
        of CSV, or the gateway's sink with G batches of 500 per transaction)
        writes the same N readings (default 300000, into today's day
        partition) into a fresh database; R runs (default 3), the variants
        interleaved. Prints rows/s (median, min-max), bytes per row of
        `readings` and of `reading_runs` (pg_total_relation_size / rows), and
        the median relative to variant 0 (`\\copy` into 0006's table, today's).
        --variants runs only the listed variant numbers (0 is always useful).

query   Fills `aeris_bench_q<N>` (default N 50000000: 1,000 devices x 2 sensors,
        one reading a minute) server-side once, builds 0006's and 0011's
        indexes, and times Q (default 50) of each API read under each set, in
        two passes alternating the sets (the second is printed: both warm):
        p50, p99, max in ms. The database is kept for the next run (the fill
        takes tens of minutes on 2 cores); --drop removes it afterwards.
        Needs about 12 GB of disk at 50 million rows.
";

fn flag<T: std::str::FromStr>(args: &[String], name: &str) -> anyhow::Result<Option<T>> {
    match args.iter().position(|a| a == name) {
        None => Ok(None),
        Some(i) => {
            let v = args
                .get(i + 1)
                .ok_or_else(|| anyhow::anyhow!("{name} needs a value"))?;
            v.parse()
                .map(Some)
                .map_err(|_| anyhow::anyhow!("{name}: cannot read {v:?}"))
        }
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{HELP}");
        return Ok(());
    }
    match args[0].as_str() {
        "write" => {
            let rows = flag(&args, "--rows")?.unwrap_or(300_000usize).max(1000);
            let runs = flag(&args, "--runs")?.unwrap_or(3usize).max(1);
            let only = flag::<String>(&args, "--variants")?
                .map(|l| l.split(',').filter_map(|i| i.trim().parse().ok()).collect());
            write::run(rows, runs, only).await
        }
        "query" => {
            let rows = flag(&args, "--rows")?.unwrap_or(50_000_000u64).max(2000);
            let queries = flag(&args, "--queries")?.unwrap_or(50usize).max(1);
            query::run(rows, queries, args.iter().any(|a| a == "--drop")).await
        }
        other => anyhow::bail!("unknown command {other:?}; see --help"),
    }
}
