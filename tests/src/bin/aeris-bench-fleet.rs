//! Benchmark (not a test): what one Mosquitto and one gateway replica
//! carry, with real processes on this machine.
//!
//! ```text
//! aeris-bench-fleet [DEVICES] [ROWS] [--per-process N] [--no-rows]
//! ```
//!
//! (defaults 2000 devices, 200000 rows, 5000 devices per process; build
//! the release binaries first: `cargo build --release -p aeris-gateway -p
//! aeris-tests`).
//!
//! 1. Devices per broker: `DEVICES` MQTT connections, each subscribed to
//!    its `down/ack` and `down/cmd` and holding a retained status, as the
//!    edge agent does, played by several processes of this binary (at most
//!    `--per-process` devices each: a process here may hold 20,000 open
//!    files). Reports the connect rate and the broker's resident memory per
//!    device; then every device sends one batch at once and waits for its
//!    ack, sending it again after a 10 s ack timeout like the edge's
//!    uplink; reports the time from the last send to the last ack, the
//!    devices' send-to-ack latency (p50/p99/max) and the gateway's own ack
//!    latency histogram.
//! 2. Rows/s per gateway replica (skipped with `--no-rows`): 50 devices
//!    send `ROWS` readings in batches of 500, at most 4 unacked batches
//!    each (like the uplink's window), into one gateway writing to a fresh
//!    PostGIS database; reports acked rows/s.
//!
//! The broker is the tests' Mosquitto (plain listener, no TLS, no
//! persistence, `max_queued_messages 1000000`, `max_inflight_messages
//! 100`), started with this process's open-file limit.

use std::io::{BufRead, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use aeris_tests::cloud::Gateway;
use aeris_tests::device::{batch, status, FakeDevice};
use aeris_tests::mosquitto::Mosquitto;
use aeris_tests::postgres::TestDb;
use aeris_wire::{decode, encode, Ack, Topics};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeFilter};
use tokio::sync::mpsc;

/// How long a device waits for its ack before sending the batch again.
const ACK_TIMEOUT: Duration = Duration::from_secs(10);
/// Readings in each device's batch.
const BATCH: usize = 10;

const USAGE: &str = "\
aeris-bench-fleet [DEVICES] [ROWS] [--per-process N] [--no-rows]

  DEVICES          devices played against one Mosquitto and one gateway [2000]
  ROWS             readings for the rows/s part [200000]
  --per-process N  devices per bench process (each may hold 20,000 files) [5000]
  --no-rows        skip the rows/s part
";

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return;
    }
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if args.first().map(String::as_str) == Some("--device-group") {
        // A child: --device-group PORT FIRST COUNT T0
        let n: Vec<i64> = args[1..]
            .iter()
            .map(|a| a.parse().expect("--device-group PORT FIRST COUNT T0"))
            .collect();
        runtime.block_on(device_group(
            n[0] as u16,
            n[1] as usize,
            n[2] as usize,
            n[3],
        ));
        return;
    }
    let mut positional = Vec::new();
    let (mut per_process, mut rows_part) = (5000usize, true);
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--per-process" => {
                per_process = it
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|n| *n > 0)
                    .unwrap_or_else(|| panic!("--per-process needs a number\n{USAGE}"))
            }
            "--no-rows" => rows_part = false,
            other => positional.push(
                other
                    .parse::<usize>()
                    .unwrap_or_else(|_| panic!("unknown argument {other}\n{USAGE}")),
            ),
        }
    }
    let devices = positional.first().copied().unwrap_or(2000);
    let rows = positional.get(1).copied().unwrap_or(200_000);
    runtime.block_on(bench(devices, rows, per_process, rows_part));
}

async fn bench(devices: usize, rows: usize, per_process: usize, rows_part: bool) {
    let t0 = aeris_tests::now_ms() - 7_200_000;
    let broker = Mosquitto::start();
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let gateway = Gateway::start(broker.port, &db.url, &[], dir.path().join("gateway.log"));
    gateway.wait_ready(Duration::from_secs(60)).await;
    let pid = broker.pid().expect("broker pid");
    let rss0 = rss_kib(pid);

    // 1. Devices per broker, played by child processes.
    let exe = std::env::current_exe().expect("current_exe");
    let start = Instant::now();
    let mut groups = Vec::new();
    for first in (0..devices).step_by(per_process) {
        let count = per_process.min(devices - first);
        let child = Command::new(&exe)
            .args(["--device-group", &broker.port.to_string()])
            .args([first.to_string(), count.to_string(), t0.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start a device group");
        groups.push(child);
    }
    let mut outs: Vec<_> = groups
        .iter_mut()
        .map(|c| std::io::BufReader::new(c.stdout.take().expect("stdout")))
        .collect();
    let read_line = |r: &mut std::io::BufReader<std::process::ChildStdout>| {
        let mut line = String::new();
        r.read_line(&mut line).expect("read a device group");
        line
    };
    let mut not_ready = 0u64;
    for out in &mut outs {
        let line = read_line(out);
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("device group said {line:?}"));
        not_ready += v["not_ready"].as_u64().unwrap_or(0);
    }
    let connect_s = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss1 = rss_kib(pid);
    println!(
        "devices per broker: {devices} connections + subscriptions + retained statuses from {} \
         processes in {connect_s:.1} s ({:.0}/s, {not_ready} not subscribed within 60 s); broker RSS \
         {rss0} KiB -> {rss1} KiB ({:.2} KiB per device)",
        groups.len(),
        devices as f64 / connect_s,
        rss1.saturating_sub(rss0) as f64 / devices as f64,
    );

    for child in &mut groups {
        let stdin = child.stdin.as_mut().expect("stdin");
        stdin.write_all(b"go\n").expect("start a device group");
        stdin.flush().expect("flush");
    }
    let (mut last_send, mut last_ack, mut resent, mut unacked) = (0i64, 0i64, 0u64, 0u64);
    let mut latencies: Vec<f64> = Vec::with_capacity(devices);
    for out in &mut outs {
        let line = read_line(out);
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|_| panic!("device group said {line:?}"));
        last_send = last_send.max(v["last_send_ms"].as_i64().unwrap_or(0));
        last_ack = last_ack.max(v["last_ack_ms"].as_i64().unwrap_or(0));
        resent += v["resent"].as_u64().unwrap_or(0);
        unacked += v["unacked"].as_u64().unwrap_or(0);
        latencies.extend(
            v["latency_ms"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_f64()),
        );
    }
    for mut child in groups {
        let _ = child.wait();
    }
    latencies.sort_by(f64::total_cmp);
    let q = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let metrics = aeris_tests::http::get(gateway.api_port, "/metrics")
        .map(|(_, body)| body)
        .unwrap_or_default();
    let (gw50, gw99) = (
        histogram_quantile(&metrics, "aeris_gateway_ack_latency_seconds", 0.5),
        histogram_quantile(&metrics, "aeris_gateway_ack_latency_seconds", 0.99),
    );
    println!(
        "one {BATCH}-reading batch from every device: last ack {:.2} s after the last send; \
         device send-to-ack latency p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms; {resent} sent again \
         after a {} s ack timeout, {unacked} never acked; gateway ack latency (receipt to ack, \
         histogram bucket bound) p50 <= {gw50} s, p99 <= {gw99} s",
        (last_ack - last_send) as f64 / 1000.0,
        q(0.5),
        q(0.99),
        q(1.0),
        ACK_TIMEOUT.as_secs(),
    );

    if !rows_part {
        return;
    }
    // 2. Rows/s per gateway replica.
    let senders = 50usize;
    let per_batch = 500usize;
    let per_device = rows / senders / per_batch;
    let mut devs = Vec::new();
    for i in 0..senders {
        devs.push(FakeDevice::connect(broker.port, &format!("load-{i:03}")).await);
    }
    let start = Instant::now();
    let tasks = devs.into_iter().map(|d| async move {
        let window = 4usize;
        for b in 0..per_device {
            if b >= window {
                let must = ((b - window + 1) * per_batch) as u64;
                assert!(d.wait_acked(must, Duration::from_secs(120)).await);
            }
            d.send(&batch(&d.id, (b * per_batch + 1) as u64, per_batch, t0))
                .await;
        }
        assert!(
            d.wait_acked((per_device * per_batch) as u64, Duration::from_secs(120))
                .await
        );
    });
    futures_util::future::join_all(tasks).await;
    let secs = start.elapsed().as_secs_f64();
    let total = senders * per_device * per_batch;
    println!(
        "rows/s per gateway replica: {total} readings from {senders} devices in batches of {per_batch}, \
         acked in {secs:.1} s: {:.0} rows/s",
        total as f64 / secs
    );
}

/// The upper bound of the bucket holding quantile `q` of Prometheus
/// histogram `name` in a text exposition ("?" when absent).
fn histogram_quantile(metrics: &str, name: &str, q: f64) -> String {
    let buckets: Vec<(String, f64)> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
        .filter_map(|l| {
            let (le, rest) = l.split_once("\"}")?;
            Some((le.to_owned(), rest.trim().parse().ok()?))
        })
        .collect();
    let total = buckets.last().map(|b| b.1).unwrap_or(0.0);
    buckets
        .iter()
        .find(|(_, n)| total > 0.0 && *n >= q * total)
        .map(|(le, _)| le.clone())
        .unwrap_or_else(|| "?".into())
}

/// One process's share of the fleet: devices `first..first + count`.
/// Prints one JSON line when every device is connected and subscribed,
/// waits for `go` on stdin, sends one batch from every device, and prints
/// one JSON line when every ack came (or after 3 minutes).
async fn device_group(port: u16, first: usize, count: usize, t0: i64) {
    let topics = Topics::default();
    let (ack_tx, mut acks) = mpsc::unbounded_channel::<(usize, Instant)>();
    let mut clients = Vec::with_capacity(count);
    let mut not_ready = 0;
    for chunk in (first..first + count).collect::<Vec<_>>().chunks(200) {
        let conns = chunk.iter().map(|&i| connect(port, i, ack_tx.clone()));
        for (client, ready) in futures_util::future::join_all(conns).await {
            not_ready += usize::from(!ready);
            clients.push(client);
        }
    }
    println!("{}", serde_json::json!({ "not_ready": not_ready }));
    let mut go = String::new();
    let _ = std::io::stdin().read_line(&mut go);

    let payloads: Vec<Vec<u8>> = (first..first + count)
        .map(|i| encode(&batch(&device_id(i), 1, BATCH, t0)))
        .collect();
    let mut sent_at = Vec::with_capacity(count);
    for (k, client) in clients.iter().enumerate() {
        let topic = topics.batch(&device_id(first + k));
        let _ = client
            .publish(topic, QoS::AtLeastOnce, false, payloads[k].clone())
            .await;
        sent_at.push(Instant::now());
    }
    let last_send_ms = aeris_tests::now_ms();
    let mut last_try = sent_at.clone();
    let mut acked: Vec<Option<Duration>> = vec![None; count];
    let (mut remaining, mut resent, mut last_ack_ms) = (count, 0u64, last_send_ms);
    let deadline = Instant::now() + Duration::from_secs(180);
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    while remaining > 0 && Instant::now() < deadline {
        tokio::select! {
            Some((i, at)) = acks.recv() => {
                let k = i - first;
                if acked[k].is_none() {
                    acked[k] = Some(at.duration_since(sent_at[k]));
                    remaining -= 1;
                    last_ack_ms = aeris_tests::now_ms();
                }
            }
            _ = tick.tick() => {
                for k in 0..count {
                    if acked[k].is_none() && last_try[k].elapsed() >= ACK_TIMEOUT {
                        let topic = topics.batch(&device_id(first + k));
                        let _ = clients[k]
                            .publish(topic, QoS::AtLeastOnce, false, payloads[k].clone())
                            .await;
                        last_try[k] = Instant::now();
                        resent += 1;
                    }
                }
            }
        }
    }
    let latency_ms: Vec<f64> = acked
        .iter()
        .flatten()
        .map(|d| (d.as_secs_f64() * 1000.0 * 10.0).round() / 10.0)
        .collect();
    println!(
        "{}",
        serde_json::json!({
            "last_send_ms": last_send_ms,
            "last_ack_ms": last_ack_ms,
            "resent": resent,
            "unacked": remaining,
            "latency_ms": latency_ms,
        })
    );
}

fn device_id(i: usize) -> String {
    format!("bench-{i:05}")
}

/// Connects device `i` as the edge's uplink does (clean session, its
/// `down/ack` and `down/cmd` subscribed, a retained status), and reports
/// its acks on `acks`. `true` when subscribed within 60 s.
async fn connect(
    port: u16,
    i: usize,
    acks: mpsc::UnboundedSender<(usize, Instant)>,
) -> (AsyncClient, bool) {
    let id = device_id(i);
    let topics = Topics::default();
    let mut opts = MqttOptions::new(id.clone(), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(60))
        .set_clean_session(true)
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 16);
    let filters: Vec<SubscribeFilter> = [topics.ack(&id), topics.cmd(&id)]
        .into_iter()
        .map(|t| SubscribeFilter::new(t, QoS::AtLeastOnce))
        .collect();
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    let (c, status_topic) = (client.clone(), topics.status(&id));
    let status = encode(&status(&id, 0, 0));
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = c.subscribe_many(filters.clone()).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = c
                            .publish(status_topic.clone(), QoS::AtLeastOnce, true, status.clone())
                            .await;
                        let _ = tx.send(());
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) if p.topic.ends_with("/down/ack") => {
                    if decode::<Ack>(&p.payload).is_ok_and(|a| a.last_seq == BATCH as u64) {
                        let _ = acks.send((i, Instant::now()));
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
    });
    let ready = tokio::time::timeout(Duration::from_secs(60), ready_rx)
        .await
        .is_ok();
    (client, ready)
}
