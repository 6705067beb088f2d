//! Benchmark (not a test): sustained readings/s from simulated sensors
//! through a real Mosquitto, the agent (a child process, buffer durable:
//! WAL, `synchronous=FULL`, ack to the sensor broker after commit) and up
//! to a gateway writing PostGIS, printed next to Mosquitto's own pub→sub
//! rate for the same messages in the same run (the ceiling). Also: the
//! agent's peak RSS (VmHWM) and CPU seconds, and bytes per reading on the
//! wire next to the same readings as JSON and as format-1 postcard.
//!
//! A reading is one sensor message: `ts`, `lat`, `lon`, PM2.5 and PM10 to
//! 0.1 µg/m³, temperature to 0.1 °C, RH to 1 %; the agent adds the US EPA
//! AQI values (`aqi_pm25`, `aqi_pm10`, `aqi`), so 7 values travel per
//! reading.
//!
//! `cargo build --release --workspace --bins && target/release/aeris-bench-edge [readings] [sensors] [--models] [--agent PATH]`
//! (defaults 100000 readings from 50 sensors; `--models` runs the agent
//! with the two ONNX models in `models/`; `--agent` runs another agent
//! binary than the one beside the bench, e.g. the `board` profile build
//! that ships: `cargo build --profile board -p aeris-edge`, then
//! `--agent target/board/aeris-edge`). Uses the test PostgreSQL server
//! (`AERIS_TEST_PG_URL`, as scripts/test.sh sets up).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aeris_tests::bench::proc_usage;
use aeris_tests::cloud::Gateway;
use aeris_tests::http::metric;
use aeris_tests::mosquitto::Mosquitto;
use aeris_tests::postgres::TestDb;
use aeris_tests::process::Proc;
use aeris_wire::{decode, encode, Batch, Channel, Topics};
use rumqttc::{AsyncClient, QoS};

const DEVICE: &str = "bench-edge";

/// (topic, JSON payload) of each sensor message, sensors interleaved, one
/// message per sensor per second, ending 10 minutes ago.
fn messages(n: usize, sensors: usize) -> Vec<(String, String)> {
    let per_sensor = n.div_ceil(sensors) as i64;
    let t0 = aeris_tests::now_ms() - 600_000 - per_sensor * 1000;
    let mut rng = 0x9E37_79B9_7F4A_7C15u64;
    let mut walk: Vec<[f64; 4]> = (0..sensors)
        .map(|s| [8.0 + s as f64 % 7.0, 15.0 + s as f64 % 11.0, 12.0, 55.0])
        .collect();
    (0..n)
        .map(|i| {
            let s = i % sensors;
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let step = |k: u32| ((rng >> k) % 5) as f64 - 2.0;
            let w = &mut walk[s];
            w[0] = (w[0] + step(0) / 10.0).clamp(0.0, 300.0);
            w[1] = (w[1] + step(8) / 10.0).clamp(w[0], 500.0);
            w[2] = (w[2] + step(16) / 20.0).clamp(-20.0, 45.0);
            w[3] = (w[3] + step(24) / 4.0).clamp(5.0, 100.0);
            let ts = t0 + (i / sensors) as i64 * 1000 + s as i64 * 7;
            let json = format!(
                r#"{{"ts":{}.{:03},"pm25":{:.1},"pm10":{:.1},"temp":{:.1},"rh":{:.0},"lat":{:.5},"lon":{:.5}}}"#,
                ts / 1000,
                ts % 1000,
                w[0],
                w[1],
                w[2],
                w[3].round(),
                52.4 + s as f64 * 0.003,
                13.3 + s as f64 * 0.005
            );
            (format!("sensors/s{s:03}/air"), json)
        })
        .collect()
}

/// A client, how many publishes it received, and the batch payloads among them.
type Client = (AsyncClient, Arc<AtomicU64>, Arc<Mutex<Vec<Vec<u8>>>>);

/// A QoS 1 client that keeps the batch payloads it receives.
async fn client(port: u16, subscribe: Option<&str>) -> Client {
    let kept: Arc<Mutex<Vec<Vec<u8>>>> = Arc::default();
    let keep = kept.clone();
    let (client, received) = aeris_tests::bench::client(port, subscribe, move |topic, payload| {
        if topic.ends_with("/up/batch") {
            if let Ok(mut k) = keep.lock() {
                k.push(payload.to_vec());
            }
        }
    })
    .await;
    (client, received, kept)
}

/// Publishes every message at QoS 1 as fast as the broker takes them.
async fn publish(client: &AsyncClient, msgs: &[(String, String)]) {
    for (topic, json) in msgs {
        client
            .publish(
                topic.as_str(),
                QoS::AtLeastOnce,
                false,
                json.as_bytes().to_vec(),
            )
            .await
            .expect("queue publish");
    }
}

/// Mosquitto alone: the same messages from a publisher to a subscriber.
async fn ceiling(msgs: &[(String, String)]) -> f64 {
    let broker = Mosquitto::start();
    let (_sub, received, _) = client(broker.port, Some("sensors/#")).await;
    let (publisher, _, _) = client(broker.port, None).await;
    let n = msgs.len() as u64;
    let start = Instant::now();
    publish(&publisher, msgs).await;
    while received.load(Relaxed) < n {
        tokio::time::sleep(Duration::from_millis(2)).await;
        if start.elapsed() > Duration::from_secs(300) {
            panic!("mosquitto delivered {} of {n}", received.load(Relaxed));
        }
    }
    n as f64 / start.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let agent = aeris_tests::bench::agent_arg(&mut args)?;
    let agent_bytes = std::fs::metadata(&agent).map(|m| m.len()).unwrap_or(0);
    let nums: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
    let n = nums.first().copied().unwrap_or(100_000);
    let sensors = nums.get(1).copied().unwrap_or(50).max(1);
    let models = args.iter().any(|a| a == "--models");
    let msgs = messages(n, sensors);
    let json_in: usize = msgs.iter().map(|(_, j)| j.len()).sum();
    eprintln!(
        "{n} readings from {sensors} sensors ({:.0} B of sensor JSON each); agent {} models",
        json_in as f64 / n as f64,
        if models { "with" } else { "without" }
    );

    let ceiling = ceiling(&msgs).await;
    eprintln!("ceiling: Mosquitto pub→sub {ceiling:.0} msg/s");

    let local = Mosquitto::start();
    let cloud = Mosquitto::start();
    let db = TestDb::create().await;
    let dir = tempfile::tempdir()?;
    let gw = Gateway::start(cloud.port, &db.url, &[], dir.path().join("gateway.log"));
    gw.wait_ready(Duration::from_secs(30)).await;
    let (_observer, _, wire) = client(
        cloud.port,
        Some(&Topics::default().all_devices(Channel::UpBatch)),
    )
    .await;
    let health = aeris_tests::free_port();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut env = vec![
        ("AERIS_DEVICE_ID", DEVICE.to_owned()),
        (
            "AERIS_DATA_DIR",
            dir.path().join("edge").display().to_string(),
        ),
        ("AERIS_HEALTH_LISTEN", format!("127.0.0.1:{health}")),
        ("AERIS_LOCAL__PORT", local.port.to_string()),
        ("AERIS_CLOUD__PORT", cloud.port.to_string()),
        ("AERIS_INFER__ENABLED", models.to_string()),
    ];
    if models {
        let list = ["pm25_nowcast", "pm_anomaly"]
            .map(|m| format!("{:?}", root.join("models").join(m).display().to_string()))
            .join(", ");
        let file = dir.path().join("edge.toml");
        std::fs::write(&file, format!("[infer]\nmodels = [{list}]\n"))?;
        env.push(("AERIS_CONFIG", file.display().to_string()));
    }
    let edge = Proc::start_program(
        "aeris-edge",
        agent.clone(),
        Vec::new(),
        &env,
        dir.path().join("edge.log"),
    );
    let pid = aeris_tests::bench::pid_of(&edge)?;
    let start = Instant::now();
    while !edge.log().contains("subscribed to sensor topic") {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(30),
            "agent did not subscribe:\n{}",
            edge.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let (publisher, _, _) = client(local.port, None).await;
    let start = Instant::now();
    let feed = {
        let msgs = msgs.clone();
        tokio::spawn(async move {
            publish(&publisher, &msgs).await;
            publisher
        })
    };
    let mut last_print = Instant::now();
    let acked = loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let acked = metric(health, "aeris_edge_uplink_readings_acked_total") as usize;
        if acked >= n {
            break acked;
        }
        if last_print.elapsed() >= Duration::from_secs(1) {
            last_print = Instant::now();
            eprintln!(
                "{:5.1} s  accepted {:>8}  sent {:>8}  acked {:>8}  stored {:>8}",
                start.elapsed().as_secs_f64(),
                metric(health, "aeris_edge_ingest_accepted_total"),
                metric(health, "aeris_edge_uplink_readings_sent_total"),
                acked,
                gw.metric("aeris_gateway_readings_inserted_total"),
            );
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(900),
            "pipeline did not finish:\n{}",
            edge.log()
        );
    };
    let secs = start.elapsed().as_secs_f64();
    let _publisher = feed.await?;
    let usage = proc_usage(pid);
    let cpu = usage.cpu_s;
    let stored = gw.metric("aeris_gateway_readings_inserted_total") as usize;
    let rate = n as f64 / secs;

    // Bytes on the wire, from the batches the observer saw.
    let payloads = wire.lock().map(|w| w.clone()).unwrap_or_default();
    let (mut readings, mut wire_bytes, mut json_bytes, mut v1_bytes) =
        (0usize, 0usize, 0usize, 0usize);
    for p in &payloads {
        let b: Batch = decode(p)?;
        readings += b.readings.len();
        wire_bytes += p.len();
        json_bytes += b
            .readings
            .iter()
            .map(|r| serde_json::to_vec(r).map(|j| j.len()).unwrap_or(0))
            .sum::<usize>();
        v1_bytes += encode(&b).len();
    }
    let per = |b: usize| b as f64 / readings.max(1) as f64;
    println!(
        "aeris-bench-edge: {n} readings from {sensors} sensors, agent {} models, bench {} build",
        if models { "with" } else { "without" },
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        }
    );
    println!("  Mosquitto pub→sub (ceiling)   {ceiling:>10.0} readings/s");
    println!("  end to end (sensor → PostGIS, acked)  {rate:>10.0} readings/s  ({:.0}% of the ceiling; {secs:.1} s; {acked} acked, {stored} stored)", 100.0 * rate / ceiling);
    println!(
        "  agent binary                  {:>10.1} MB  {}",
        agent_bytes as f64 / 1e6,
        agent.display()
    );
    println!(
        "  agent peak RSS (VmHWM)        {:>10.1} MB  (at the end: {:.1} MB anonymous, {:.1} MB file-backed)",
        usage.peak as f64 / 1e6,
        usage.anon as f64 / 1e6,
        usage.file as f64 / 1e6
    );
    let per_reading = |s: f64| s * 1e6 / n as f64;
    println!(
        "  agent CPU                     {cpu:>10.2} s  ({:.1} µs per reading: user {:.1}, system {:.1})",
        per_reading(cpu),
        per_reading(cpu - usage.system_s),
        per_reading(usage.system_s)
    );
    println!(
        "  on the wire, per reading      {:>10.1} B columnar (v2; {} batches, {} readings)",
        per(wire_bytes),
        payloads.len(),
        readings
    );
    println!(
        "                                {:>10.1} B postcard (v1)",
        per(v1_bytes)
    );
    println!(
        "                                {:>10.1} B JSON of the same readings",
        per(json_bytes)
    );
    Ok(())
}
