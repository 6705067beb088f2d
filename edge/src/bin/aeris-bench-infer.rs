//! Benchmark (not a test): the same model files in tract (this agent's
//! runtime) and in onnxruntime (its Python package), batch 1 and batch 64,
//! latency p50/p99 and throughput, side by side in one run.
//!
//! `cargo run --release -p aeris-edge --bin aeris-bench-infer -- --python /tmp/aeris-models-venv/bin/python`

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use aeris_edge::infer::Model;
use anyhow::{bail, Context};
use clap::Parser;

/// Times each model in tract, then runs models/bench_onnxruntime.py on the
/// same file with the same batch and iteration count, and prints both.
#[derive(Parser, Debug)]
#[command(name = "aeris-bench-infer")]
struct Cli {
    /// Folder holding the model folders.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../models"))]
    models: PathBuf,
    /// Model folders to run, by name.
    #[arg(long, value_delimiter = ',', default_value = "pm25_nowcast,pm_anomaly")]
    names: Vec<String>,
    /// Timed runs per model and batch size.
    #[arg(long, default_value_t = 5000)]
    iters: usize,
    /// Python with onnxruntime installed (see models/README.md); "none" skips it.
    #[arg(long, default_value = "python3")]
    python: String,
}

struct Figures {
    p50_us: f64,
    p99_us: f64,
    rows_per_s: f64,
}

fn tract(model: &Model, iters: usize) -> anyhow::Result<Figures> {
    let n = model.batch() * model.width();
    // Deterministic inputs in a plausible µg/m³ range.
    let mut state = 0x2545_F491_4F6C_DD1Du64;
    let rows: Vec<f32> = (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % 20_000) as f32 / 100.0
        })
        .collect();
    for _ in 0..100 {
        model.run(&rows)?;
    }
    let mut times = Vec::with_capacity(iters);
    let all = Instant::now();
    for _ in 0..iters {
        let t = Instant::now();
        model.run(&rows)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let total = all.elapsed().as_secs_f64();
    times.sort_by(f64::total_cmp);
    let pct = |p: f64| times[((times.len() - 1) as f64 * p).round() as usize];
    Ok(Figures {
        p50_us: pct(0.5),
        p99_us: pct(0.99),
        rows_per_s: (iters * model.batch()) as f64 / total,
    })
}

fn onnxruntime(cli: &Cli, model: &std::path::Path, batch: usize) -> anyhow::Result<Figures> {
    let script = cli.models.join("bench_onnxruntime.py");
    let out = Command::new(&cli.python)
        .arg(&script)
        .arg(model)
        .args([
            "--batch",
            &batch.to_string(),
            "--iters",
            &cli.iters.to_string(),
        ])
        .output()
        .with_context(|| format!("cannot run {}", cli.python))?;
    if !out.status.success() {
        bail!(
            "{} failed: {}",
            script.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("onnxruntime output is not JSON")?;
    let f = |k: &str| {
        v[k].as_f64()
            .with_context(|| format!("no {k} in onnxruntime output"))
    };
    Ok(Figures {
        p50_us: f("p50_us")?,
        p99_us: f("p99_us")?,
        rows_per_s: f("throughput_rows_per_s")?,
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    println!(
        "{:<14} {:>5} | {:>10} {:>10} {:>12} | {:>10} {:>10} {:>12} | {:>9}",
        "model",
        "batch",
        "tract p50",
        "p99 µs",
        "rows/s",
        "ort p50",
        "p99 µs",
        "rows/s",
        "p50 ratio"
    );
    for name in &cli.names {
        let dir = cli.models.join(name);
        for batch in [1, 64] {
            eprintln!(
                "timing {name} at batch {batch} ({} runs each)...",
                cli.iters
            );
            let model = Model::load_dir(&dir, &[], batch)
                .with_context(|| format!("loading {}", dir.display()))?;
            let t = tract(&model, cli.iters)?;
            let o = if cli.python == "none" {
                None
            } else {
                Some(onnxruntime(&cli, &dir.join("model.onnx"), batch)?)
            };
            let (op50, op99, orps, ratio) = match &o {
                Some(o) => (
                    format!("{:.1}", o.p50_us),
                    format!("{:.1}", o.p99_us),
                    format!("{:.0}", o.rows_per_s),
                    format!("{:.2}x", t.p50_us / o.p50_us),
                ),
                None => ("-".into(), "-".into(), "-".into(), "-".into()),
            };
            println!(
                "{name:<14} {batch:>5} | {:>10.1} {:>10.1} {:>12.0} | {op50:>10} {op99:>10} {orps:>12} | {ratio:>9}",
                t.p50_us, t.p99_us, t.rows_per_s
            );
        }
    }
    println!("(p50 ratio = tract p50 / onnxruntime p50; both single-threaded, same inputs shape, same machine, same run)");
    Ok(())
}
