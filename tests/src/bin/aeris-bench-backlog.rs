//! Benchmark (not a test): an agent that was offline for a day reconnects.
//!
//! The buffer holds `sensors` × `hours` × 3,600 unsent readings (default
//! 100 sensors at 1 Hz for 24 h: 8.64 million), the readings a day without
//! the cloud leaves behind; it is written with the agent's own buffer code
//! (`aeris_edge::buffer::Store`, the same schema and row encoding the agent
//! writes) because feeding 8.64 million sensor messages through MQTT would
//! take longer than the drain being measured. Then the real agent starts on
//! it, beside a real Mosquitto for the sensors and one for the cloud and a
//! gateway writing PostGIS, while the same sensors go on reporting once a
//! second. Printed:
//!
//! - the agent idle (empty buffer, no sensors) and with live sensors and no
//!   backlog: peak RSS, the baseline, with the resident memory split into
//!   anonymous (heap, stacks) and file-backed (code) pages;
//! - time from start to ready (`/readyz` 200) with the full buffer;
//! - time until the backlog is drained (every backlog seq reached the cloud
//!   broker and the agent holds no more unsent readings than the live
//!   sensors make in two seconds), with readings/s;
//! - how far live readings lag during the drain: age at the cloud broker
//!   (arrival − sensor timestamp), p50/p99/max;
//! - the agent's CPU seconds and peak RSS over the drain, and the highest
//!   anonymous and file-backed resident memory sampled (every 100 ms).
//!
//! `cargo build --release --workspace --bins && target/release/aeris-bench-backlog [sensors] [hours] [--agent PATH]`
//! (defaults 100 and 24). Uses the test PostgreSQL server
//! (`AERIS_TEST_PG_URL`, as scripts/test.sh sets up) and about 2 GB of disk
//! in the temporary folder.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aeris_edge::buffer::{Options, Store};
use aeris_tests::bench::{client, proc_usage, Usage};
use aeris_tests::cloud::Gateway;
use aeris_tests::http::{get, metric};
use aeris_tests::mosquitto::Mosquitto;
use aeris_tests::postgres::TestDb;
use aeris_tests::process::Proc;
use aeris_wire::{Channel, Reading, Topics, Value};
use rumqttc::{AsyncClient, QoS};

const DEVICE: &str = "bench-backlog";
/// Readings per buffer transaction while filling.
const FILL_CHUNK: usize = 20_000;

/// The reading sensor `s` makes at `ts_ms` (a slow walk, the same seven
/// values the agent stores for a flat JSON message with its AQI added).
fn reading(s: usize, ts_ms: i64) -> Reading {
    let phase = (ts_ms / 1000) as f64 / 3600.0 + s as f64;
    let pm25 = (12.0 + 8.0 * phase.sin()).max(0.0);
    let v = |q: &str, x: f64| Value {
        quantity: q.to_owned(),
        value: (x * 10.0).round() / 10.0,
    };
    Reading {
        sensor: format!("s{s:03}"),
        ts_ms,
        lat: 52.4 + s as f64 * 0.003,
        lon: 13.3 + s as f64 * 0.005,
        flags: 0,
        values: vec![
            v("pm25", pm25),
            v("pm10", pm25 * 1.6),
            v("temp", 12.0 + 5.0 * (phase / 3.0).sin()),
            v("rh", 55.0 + 20.0 * (phase / 5.0).cos()),
            v("aqi_pm25", (pm25 * 4.0).round()),
            v("aqi_pm10", (pm25 * 1.2).round()),
            v("aqi", (pm25 * 4.0).round()),
        ],
    }
}

/// Writes the backlog: one reading per sensor per second over the `hours`
/// before `end_ms`, in time order. Returns how many.
fn fill(path: &Path, sensors: usize, hours: u64, end_ms: i64) -> anyhow::Result<u64> {
    let options = Options {
        max_bytes: u64::MAX / 2,
        ..Options::default()
    };
    let mut store = Store::open(path, options)?;
    let seconds = hours as i64 * 3600;
    let total = seconds as u64 * sensors as u64;
    let start = Instant::now();
    let mut last_print = Instant::now();
    let mut chunk = Vec::with_capacity(FILL_CHUNK);
    let mut written = 0u64;
    for sec in 0..seconds {
        let t = end_ms - (seconds - sec) * 1000;
        for s in 0..sensors {
            chunk.push(reading(s, t + s as i64 * 7));
        }
        if chunk.len() >= FILL_CHUNK || sec + 1 == seconds {
            store.append(&chunk)?;
            written += chunk.len() as u64;
            chunk.clear();
            if last_print.elapsed() >= Duration::from_secs(5) {
                last_print = Instant::now();
                eprintln!(
                    "filling the buffer: {written} of {total} readings ({:.0} s)",
                    start.elapsed().as_secs_f64()
                );
            }
        }
    }
    Ok(written)
}

fn agent_env(
    device: &str,
    dir: &Path,
    local: u16,
    cloud: u16,
    health: u16,
) -> Vec<(&'static str, String)> {
    vec![
        ("AERIS_DEVICE_ID", device.to_owned()),
        ("AERIS_DATA_DIR", dir.display().to_string()),
        ("AERIS_HEALTH_LISTEN", format!("127.0.0.1:{health}")),
        ("AERIS_LOCAL__PORT", local.to_string()),
        ("AERIS_CLOUD__PORT", cloud.to_string()),
        ("AERIS_INFER__ENABLED", "false".to_owned()),
        // The backlog is larger than the default 1 GiB budget allows once
        // the acked rows kept for the grace period are counted; the bench
        // measures the drain, not the budget.
        ("AERIS_BUFFER__MAX_BYTES", (8u64 << 30).to_string()),
    ]
}

/// Starts the agent and waits for `/readyz`; returns it and the time that took.
async fn start_agent(
    agent: &Path,
    env: &[(&str, String)],
    health: u16,
    log: PathBuf,
) -> anyhow::Result<(Proc, Duration)> {
    let start = Instant::now();
    let proc = Proc::start_program("aeris-edge", agent.to_owned(), Vec::new(), env, log);
    loop {
        if matches!(get(health, "/readyz"), Ok((200, _))) {
            return Ok((proc, start.elapsed()));
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(120),
            "agent not ready after 120 s:\n{}",
            proc.log()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Publishes one message per sensor per second, spread over the second,
/// stamped with the time it is sent, until the task is aborted.
fn live_sensors(publisher: AsyncClient, sensors: usize) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let gap = Duration::from_secs(1) / sensors as u32;
        let mut tick = tokio::time::interval(gap);
        let mut s = 0usize;
        loop {
            tick.tick().await;
            let ts = aeris_wire::now_ms();
            let r = reading(s, ts);
            let json = format!(
                r#"{{"ts":{}.{:03},"pm25":{},"pm10":{},"temp":{},"rh":{},"lat":{:.5},"lon":{:.5}}}"#,
                ts / 1000,
                ts % 1000,
                r.values[0].value,
                r.values[1].value,
                r.values[2].value,
                r.values[3].value.round(),
                r.lat,
                r.lon
            );
            let topic = format!("sensors/s{s:03}/air");
            if publisher
                .publish(topic, QoS::AtLeastOnce, false, json.into_bytes())
                .await
                .is_err()
            {
                return;
            }
            s = (s + 1) % sensors;
        }
    })
}

/// What the observer on the cloud broker saw.
#[derive(Default)]
struct Seen {
    /// One bit per backlog seq that arrived.
    backlog: Vec<u64>,
    backlog_count: u64,
    /// Age at arrival of each live reading, in ms.
    live_ages: Vec<i64>,
    /// Readings newer than this are live, older ones the backlog.
    live_from_ms: i64,
}

impl Seen {
    fn record(&mut self, payload: &[u8]) {
        let Ok(batch) = aeris_wire::decode::<aeris_wire::Batch>(payload) else {
            return;
        };
        if batch.device != DEVICE {
            return;
        }
        let now = aeris_wire::now_ms();
        for (i, r) in batch.readings.iter().enumerate() {
            let seq = batch.first_seq + i as u64;
            if r.ts_ms < self.live_from_ms {
                let (w, b) = ((seq / 64) as usize, seq % 64);
                if let Some(word) = self.backlog.get_mut(w) {
                    if *word & (1 << b) == 0 {
                        *word |= 1 << b;
                        self.backlog_count += 1;
                    }
                }
            } else {
                self.live_ages.push(now - r.ts_ms);
            }
        }
    }
}

fn percentile(sorted: &[i64], p: f64) -> i64 {
    if sorted.is_empty() {
        return 0;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("aeris-bench-backlog [sensors=100] [hours=24] [--agent PATH]\n\nA day's backlog drained while live sensors report; see the source's header.");
        return Ok(());
    }
    let agent = aeris_tests::bench::agent_arg(&mut args)?;
    let nums: Vec<u64> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let sensors = nums.first().copied().unwrap_or(100).max(1) as usize;
    let hours = nums.get(1).copied().unwrap_or(24).max(1);

    let local = Mosquitto::start();
    let cloud = Mosquitto::start();
    let db = TestDb::create().await;
    let dir = tempfile::tempdir()?;
    let gw = Gateway::start(cloud.port, &db.url, &[], dir.path().join("gateway.log"));
    gw.wait_ready(Duration::from_secs(30)).await;
    let (publisher, _) = client(local.port, None, |_, _| {}).await;

    // The baseline: the same agent with an empty buffer, idle, then with
    // the live sensors and nothing to catch up on.
    let health = aeris_tests::free_port();
    let idle_dir = dir.path().join("idle");
    // Another device id: its seqs must not meet the backlog's at the cloud.
    let idle_device = format!("{DEVICE}-idle");
    let env = agent_env(&idle_device, &idle_dir, local.port, cloud.port, health);
    let (mut idle, idle_ready) =
        start_agent(&agent, &env, health, dir.path().join("idle.log")).await?;
    let pid = aeris_tests::bench::pid_of(&idle)?;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let idle_usage = proc_usage(pid);
    let live = live_sensors(publisher.clone(), sensors);
    tokio::time::sleep(Duration::from_secs(30)).await;
    live.abort();
    let steady_usage = proc_usage(pid);
    let steady_acked = metric(health, "aeris_edge_uplink_readings_acked_total");
    idle.terminate();
    eprintln!(
        "baseline: ready in {:.2} s; idle peak RSS {:.1} MB; with {sensors} live sensors for 30 s {:.1} MB ({steady_acked} acked)",
        idle_ready.as_secs_f64(),
        mb(idle_usage.peak),
        mb(steady_usage.peak)
    );

    // The day offline.
    let data = dir.path().join("edge");
    std::fs::create_dir_all(&data)?;
    let fill_start = Instant::now();
    let fill_end = aeris_wire::now_ms();
    let backlog = fill(&data.join("buffer.db"), sensors, hours, fill_end)?;
    let file_bytes = std::fs::metadata(data.join("buffer.db"))?.len();
    let fill_s = fill_start.elapsed().as_secs_f64();
    eprintln!(
        "buffer: {backlog} readings, {:.0} MB, written in {fill_s:.0} s",
        mb(file_bytes)
    );

    let seen = Arc::new(Mutex::new(Seen {
        backlog: vec![0; (backlog / 64 + 1) as usize],
        live_from_ms: fill_end,
        ..Seen::default()
    }));
    let batches = Arc::new(AtomicU64::new(0));
    let (_observer, _) = {
        let (seen, batches) = (seen.clone(), batches.clone());
        client(
            cloud.port,
            Some(&Topics::default().all_devices(Channel::UpBatch)),
            move |_, payload| {
                batches.fetch_add(1, Relaxed);
                if let Ok(mut s) = seen.lock() {
                    s.record(payload);
                }
            },
        )
        .await
    };

    let health = aeris_tests::free_port();
    let env = agent_env(DEVICE, &data, local.port, cloud.port, health);
    let (edge, ready) = start_agent(&agent, &env, health, dir.path().join("edge.log")).await?;
    let pid = aeris_tests::bench::pid_of(&edge)?;
    let at_ready = proc_usage(pid);
    eprintln!(
        "ready in {:.2} s with {backlog} readings buffered",
        ready.as_secs_f64()
    );
    let live = live_sensors(publisher.clone(), sensors);
    let start = Instant::now();
    let mut last_print = Instant::now();
    let mut peak = Usage::default();
    let drained = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let usage = proc_usage(pid);
        peak.peak = peak.peak.max(usage.peak);
        peak.anon = peak.anon.max(usage.anon);
        peak.file = peak.file.max(usage.file);
        let arrived = seen.lock().map(|s| s.backlog_count).unwrap_or(0);
        let unsent = metric(health, "aeris_edge_buffer_readings") as u64;
        if arrived >= backlog && unsent <= 2 * sensors as u64 {
            break start.elapsed();
        }
        if last_print.elapsed() >= Duration::from_secs(5) {
            last_print = Instant::now();
            eprintln!(
                "{:6.1} s  backlog at the cloud {arrived:>9} of {backlog}  unsent {unsent:>9}  stored {:>9}  agent CPU {:.1} s  RSS {:.1} MB",
                start.elapsed().as_secs_f64(),
                gw.metric("aeris_gateway_readings_inserted_total"),
                usage.cpu_s - at_ready.cpu_s,
                mb(usage.peak)
            );
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(3600),
            "backlog not drained after an hour:\n{}",
            edge.log()
        );
    };
    // Live readings keep flowing a little longer, so the lag after the
    // drain is in the figures too.
    tokio::time::sleep(Duration::from_secs(5)).await;
    live.abort();
    let end = proc_usage(pid);
    let cpu = end.cpu_s - at_ready.cpu_s;
    let (mut ages, backlog_seen) = {
        let s = seen
            .lock()
            .map_err(|_| anyhow::anyhow!("observer panicked"))?;
        (s.live_ages.clone(), s.backlog_count)
    };
    ages.sort_unstable();
    let stored = gw.metric("aeris_gateway_readings_inserted_total");
    let d = drained.as_secs_f64();

    println!(
        "aeris-bench-backlog: {sensors} sensors × {hours} h at 1 Hz = {backlog} readings buffered ({:.0} MB file), live sensors reporting during the drain",
        mb(file_bytes)
    );
    let split = |u: &Usage| {
        format!(
            "anonymous {:.1} / file-backed {:.1} MB",
            mb(u.anon),
            mb(u.file)
        )
    };
    println!(
        "  idle agent (empty buffer)        ready {:>6.2} s   peak RSS {:>6.1} MB  (at 10 s: {})",
        idle_ready.as_secs_f64(),
        mb(idle_usage.peak),
        split(&idle_usage)
    );
    println!(
        "  live sensors, no backlog (30 s)                 peak RSS {:>6.1} MB  (at the end: {})",
        mb(steady_usage.peak),
        split(&steady_usage)
    );
    println!(
        "  with the backlog                 ready {:>6.2} s   peak RSS {:>6.1} MB  ({:+.1} MB vs idle, {:+.1} MB vs live without backlog; highest while draining: {})",
        ready.as_secs_f64(),
        mb(end.peak.max(peak.peak)),
        (end.peak.max(peak.peak) as f64 - idle_usage.peak as f64) / 1e6,
        (end.peak.max(peak.peak) as f64 - steady_usage.peak as f64) / 1e6,
        split(&peak),
    );
    println!(
        "  drained in                       {d:>6.1} s   ({:.0} readings/s; {backlog_seen} backlog readings seen at the cloud broker, {stored} stored in all, {} batches)",
        backlog as f64 / d,
        batches.load(Relaxed)
    );
    println!(
        "  live readings' age at the cloud  p50 {} ms  p99 {} ms  max {} ms  ({} live readings)",
        percentile(&ages, 0.5),
        percentile(&ages, 0.99),
        ages.last().copied().unwrap_or(0),
        ages.len()
    );
    println!(
        "  agent CPU over the drain         {cpu:>6.1} s   ({:.1} µs per backlog reading)",
        cpu * 1e6 / backlog as f64
    );
    println!("  buffer filled in                 {fill_s:>6.1} s   (by the bench, not measured against a target)");
    Ok(())
}
