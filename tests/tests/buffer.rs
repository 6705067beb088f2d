//! The edge buffer's guarantees against the real agent: the disk budget's
//! downsample-then-drop policy with every loss counted, a full or read-only
//! buffer file that the agent rides out with live data held in memory, and
//! crash safety under 50 SIGKILLs at random moments.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use aeris_tests::sensors::{readings, Publisher, SensorReading};
use aeris_tests::stack::{watch_status, Stack, DEVICE};
use aeris_tests::{http_get, metric, wait_for};

const LAND: Duration = Duration::from_secs(90);

async fn edge_metrics(stack: &Stack) -> String {
    http_get(stack.edge_health, "/metrics")
        .await
        .map(|(_, body)| body)
        .unwrap_or_default()
}

async fn edge_metric(stack: &Stack, sample: &str) -> f64 {
    metric(&edge_metrics(stack).await, sample).unwrap_or(f64::NAN)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_its_disk_budget_the_buffer_downsamples_and_every_reading_is_accounted_for() {
    let toml = "[buffer]\nmax_bytes = 1048576\n[preprocess]\nwindow = \"1m\"\naqi = false\n";
    let mut stack = Stack::start_with(toml).await;
    // The cloud is unreachable: everything stays in the buffer.
    stack.cloud.kill();
    let published = readings(12_000, 2);
    let sensors = Publisher::connect(stack.local.port).await;
    for r in &published {
        sensors.publish(r).await;
    }
    wait_for("every reading accepted", LAND, || async {
        (edge_metric(&stack, "aeris_edge_ingest_accepted_total").await >= 12_000.0).then_some(())
    })
    .await;
    let text = edge_metrics(&stack).await;
    let downsampled = metric(
        &text,
        "aeris_edge_buffer_evicted_total{how=\"downsampled\"}",
    )
    .expect("downsampled metric");
    let dropped =
        metric(&text, "aeris_edge_buffer_evicted_total{how=\"dropped\"}").expect("dropped metric");
    let aggregates = metric(&text, "aeris_edge_buffer_aggregates_written_total").unwrap_or(0.0);
    assert!(
        downsampled > 1000.0 && aggregates > 0.0,
        "12,000 readings (~1.6 MB) in a 1 MiB budget must be downsampled: {downsampled}\n{}",
        stack.logs()
    );
    assert_eq!(dropped, 0.0, "downsampling alone fits this budget");
    // The budget is a promise about the file, checked after the next
    // heartbeat refreshed the gauge.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let used = edge_metric(&stack, "aeris_edge_buffer_used_bytes").await;
    assert!(used <= 1_048_576.0, "buffer uses {used} bytes");
    assert_eq!(
        edge_metric(
            &stack,
            "aeris_edge_buffer_lost_readings_total{reason=\"downsampled\"}"
        )
        .await,
        downsampled
    );

    // The cloud comes back: the status reports the loss, and what is left
    // syncs: raw readings plus aggregates that count exactly the rest.
    stack.cloud.restart(Duration::ZERO);
    let mut status = watch_status(stack.cloud.port, DEVICE).await;
    let reported = wait_for("status with losses", LAND, || {
        let s = status.borrow_and_update().clone();
        async move {
            s.and_then(|s| {
                s.losses
                    .iter()
                    .find(|l| l.reason == "downsampled")
                    .map(|l| l.count)
            })
        }
    })
    .await;
    assert_eq!(reported as f64, downsampled);
    wait_for("buffer drained", LAND, || async {
        (edge_metric(&stack, "aeris_edge_buffer_readings").await == 0.0).then_some(())
    })
    .await;
    let db = stack.db.client().await;
    let raw = db
        .query(
            "SELECT sensor_id, round(extract(epoch FROM ts) * 1000)::int8, pm25
             FROM readings WHERE flags & 8 = 0",
            &[],
        )
        .await
        .expect("raw rows");
    let by_key: HashMap<(String, i64), f64> = published
        .iter()
        .map(|r| ((r.sensor.clone(), r.ts_ms), r.pm25))
        .collect();
    for row in &raw {
        let key: (String, i64) = (row.get(0), row.get(1));
        assert_eq!(
            by_key.get(&key),
            Some(&row.get::<_, f64>(2)),
            "raw row {key:?}"
        );
    }
    let agg = db
        .query_one(
            "SELECT count(*), coalesce(sum((measurements->>'pm25.n')::float8), 0),
                    count(*) FILTER (WHERE pm25 < (measurements->>'pm25.min')::float8
                                        OR pm25 > (measurements->>'pm25.max')::float8)
             FROM readings WHERE flags & 8 <> 0",
            &[],
        )
        .await
        .expect("aggregate rows");
    let (agg_rows, in_aggregates, mean_outside): (i64, f64, i64) =
        (agg.get(0), agg.get(1), agg.get(2));
    assert_eq!(
        agg_rows as f64, aggregates,
        "aggregates stored in the cloud"
    );
    assert_eq!(mean_outside, 0, "an aggregate's mean lies within min..max");
    assert_eq!(
        in_aggregates, downsampled,
        "aggregates count what they replaced"
    );
    assert_eq!(
        raw.len() as f64 + in_aggregates,
        12_000.0,
        "raw {} + aggregated {in_aggregates} = published",
        raw.len()
    );
}

/// A small tmpfs mounted for the test; unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(path: &Path, size: &str) -> Tmpfs {
        std::fs::create_dir_all(path).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs and needs root (CI runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs(path.to_owned())
    }

    fn remount(&self, mode: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,{mode}")])
            .arg(&self.0)
            .status()
            .expect("run mount");
        assert!(ok.success(), "remount {mode}");
    }

    /// Writes a file until the file system is full.
    fn fill(&self) -> PathBuf {
        use std::io::Write;
        let path = self.0.join("filler");
        let mut f = std::fs::File::create(&path).expect("filler");
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
        let _ = f.flush();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

fn shifted(base: &[SensorReading], by_ms: i64) -> Vec<SensorReading> {
    base.iter()
        .cloned()
        .map(|mut r| {
            r.ts_ms += by_ms;
            r
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_or_read_only_buffer_holds_live_data_in_memory_and_recovers_on_its_own() {
    let mnt = tempfile::tempdir().expect("tempdir");
    let fs = Tmpfs::mount(&mnt.path().join("data"), "8m");
    let mut stack = Stack::start_with_env(
        "[buffer]\nretry_interval = \"200ms\"\n",
        &[("AERIS_DATA_DIR", fs.0.display().to_string())],
    )
    .await;
    let sensors = Publisher::connect(stack.local.port).await;
    let base = readings(200, 4);
    for r in &base {
        sensors.publish(r).await;
    }
    stack.wait_rows(200, LAND).await;

    // Full disk.
    let filler = fs.fill();
    let during_full = shifted(&base, -1_000_000);
    for r in &during_full {
        sensors.publish(r).await;
    }
    wait_for("degraded on a full disk", LAND, || async {
        let t = edge_metrics(&stack).await;
        (metric(&t, "aeris_edge_buffer_degraded") == Some(1.0)
            && metric(&t, "aeris_edge_buffer_write_errors_total{kind=\"full\"}").unwrap_or(0.0)
                > 0.0)
            .then_some(())
    })
    .await;
    // Held in memory, bounded by the local broker's in-flight window: no
    // reading is acknowledged to the sensors' broker before it is on disk,
    // so nothing reached the cloud either.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let held = edge_metric(&stack, "aeris_edge_buffer_memory_readings").await;
    assert!(held > 0.0 && held <= 10_000.0, "held in memory: {held}");
    assert_eq!(stack.row_count().await, 200);
    std::fs::remove_file(&filler).expect("free space");
    stack.wait_rows(400, LAND).await;
    wait_for("recovered", LAND, || async {
        (edge_metric(&stack, "aeris_edge_buffer_degraded").await == 0.0).then_some(())
    })
    .await;

    // Read-only file system: the agent (re)starts on a buffer it cannot
    // write, as after the kernel remounted a failing card read-only.
    assert!(stack.edge.terminate().is_some_and(|s| s.success()));
    fs.remount("ro");
    stack.edge.restart();
    stack.wait_edge_subscribed(2).await;
    let during_ro = shifted(&base, -2_000_000);
    for r in &during_ro {
        sensors.publish(r).await;
    }
    wait_for("degraded on a read-only file", LAND, || async {
        (edge_metric(&stack, "aeris_edge_buffer_degraded").await == 1.0).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(stack.row_count().await, 400);
    fs.remount("rw");
    stack.wait_rows(600, LAND).await;
    let all: Vec<_> = base
        .iter()
        .chain(&during_full)
        .chain(&during_ro)
        .cloned()
        .collect();
    stack.assert_exactly_once(&all).await;
    let text = edge_metrics(&stack).await;
    assert_eq!(metric(&text, "aeris_edge_buffer_degraded"), Some(0.0));
    assert!(
        text.lines().any(
            |l| l.starts_with("aeris_edge_buffer_write_errors_total{kind=\"")
                && !l.contains("kind=\"full\"")
        ),
        "the read-only phase is counted too:\n{text}"
    );
    assert!(
        stack.edge.log().contains("buffer writable again"),
        "{}",
        stack.logs()
    );
}

/// What the sloppy sensors of the SIGKILL test publish: (topic, payload,
/// the row it must become: sensor and its one value).
fn sloppy_messages(n: usize) -> Vec<(String, String, (String, String, f64))> {
    let second = aeris_tests::now_ms() / 1000 - 120;
    let mut out = Vec::new();
    for i in 0..n {
        let v = i as f64 / 4.0;
        let (topic, payload, sensor, quantity) = match i % 5 {
            // 5 Hz with whole-second stamps.
            0 | 1 => (
                "sensors/fast/air".to_owned(),
                format!(
                    r#"{{"ts":{},"lat":1,"lon":2,"pm25":{v}}}"#,
                    second + (i / 10) as i64
                ),
                "fast",
                "pm25",
            ),
            // No clock at all.
            2 => (
                "sensors/clockless/air".to_owned(),
                format!(r#"{{"lat":1,"lon":2,"pm25":{v}}}"#),
                "clockless",
                "pm25",
            ),
            // One topic per quantity, the three at one `ts`.
            k => {
                let q = ["no2", "rh"][k - 3];
                (
                    format!("sensors/multi/{q}"),
                    format!(
                        r#"{{"ts":{},"lat":1,"lon":2,"{q}":{v}}}"#,
                        second + (i / 10) as i64
                    ),
                    "multi",
                    q,
                )
            }
        };
        out.push((topic, payload, (sensor.to_owned(), quantity.to_owned(), v)));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sigkills_under_load_lose_nothing_duplicate_nothing_and_reuse_no_seq() {
    let mut stack =
        Stack::start_with("[preprocess]\naqi = false\nspike_ratio = 0\nstuck_count = 0\n").await;
    let published = readings(6_000, 6);
    // Sensors a fleet has: several readings a second, no clock, one topic
    // per quantity. Values are unique per sensor and quantity, so the
    // ledger can name each; rh stays in its physical range.
    let sloppy: Vec<_> = sloppy_messages(2_000)
        .into_iter()
        .filter(|(_, _, (_, q, v))| q != "rh" || *v < 100.0)
        .collect();
    let sensors = Publisher::connect(stack.local.port).await;
    let feed = {
        let published = published.clone();
        let sloppy = sloppy.clone();
        tokio::spawn(async move {
            // ~330 messages/s while the agent is killed and restarted.
            let mut extra = sloppy.iter();
            for chunk in published.chunks(25) {
                for r in chunk {
                    sensors.publish(r).await;
                }
                for (topic, payload, _) in extra.by_ref().take(8) {
                    sensors
                        .publish_raw(topic, payload.clone().into_bytes())
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            for (topic, payload, _) in extra {
                sensors
                    .publish_raw(topic, payload.clone().into_bytes())
                    .await;
            }
            sensors
        })
    };
    let mut rng = fastrand::Rng::with_seed(0x005e_ed0f_c4a5);
    for kill in 0..50 {
        tokio::time::sleep(Duration::from_millis(rng.u64(50..600))).await;
        let subscribed = stack
            .edge
            .log()
            .matches("subscribed to sensor topic")
            .count();
        stack.edge.restart();
        if kill % 10 == 9 {
            // Now and then let it get fully up before the next kill.
            stack.wait_edge_subscribed(subscribed + 1).await;
        }
    }
    let _sensors = feed.await.expect("publisher");
    let total = (published.len() + sloppy.len()) as i64;
    stack.wait_rows(total, LAND).await;
    // Let anything stored twice show up.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The ledger. Every message the agent accepted is in PostGIS exactly
    // once with its value, or still buffered, or counted as a loss.
    let db = stack.db.client().await;
    let rows = db
        .query(
            "SELECT seq, sensor_id, round(extract(epoch FROM ts) * 1000)::int8,
                    ST_X(geom), ST_Y(geom), pm25, no2, (measurements->>'rh')::float8
             FROM readings",
            &[],
        )
        .await
        .expect("cloud rows");
    let by_key: HashMap<(String, i64), &SensorReading> = published
        .iter()
        .map(|r| ((r.sensor.clone(), r.ts_ms), r))
        .collect();
    let mut flat_seen: HashSet<(String, i64)> = HashSet::new();
    let mut sloppy_seen: HashMap<(String, String, u64), usize> = HashMap::new();
    for row in &rows {
        let sensor: String = row.get(1);
        let ts: i64 = row.get(2);
        if let Some(r) = by_key.get(&(sensor.clone(), ts)) {
            assert!(
                flat_seen.insert((sensor.clone(), ts)),
                "{sensor}@{ts} stored twice"
            );
            assert_eq!(
                (
                    row.get::<_, f64>(3),
                    row.get::<_, f64>(4),
                    row.get::<_, Option<f64>>(5)
                ),
                (r.lon, r.lat, Some(r.pm25)),
                "{r:?}"
            );
            continue;
        }
        let (q, v) = match (
            row.get::<_, Option<f64>>(5),
            row.get::<_, Option<f64>>(6),
            row.get::<_, Option<f64>>(7),
        ) {
            (Some(v), None, None) => ("pm25", v),
            (None, Some(v), None) => ("no2", v),
            (None, None, Some(v)) => ("rh", v),
            other => panic!("row of {sensor} with values {other:?}"),
        };
        *sloppy_seen
            .entry((sensor, q.to_owned(), v.to_bits()))
            .or_default() += 1;
    }
    let mut lost = Vec::new();
    for (_, _, (sensor, q, v)) in &sloppy {
        match sloppy_seen.remove(&(sensor.clone(), q.clone(), v.to_bits())) {
            Some(1) => {}
            Some(n) => panic!("{sensor} {q}={v} stored {n} times"),
            None => lost.push(format!("{sensor} {q}={v}")),
        }
    }
    assert!(lost.is_empty(), "lost: {:?}", &lost[..lost.len().min(10)]);
    assert!(
        sloppy_seen.is_empty(),
        "rows no sensor sent: {sloppy_seen:?}"
    );
    assert_eq!(flat_seen.len(), published.len());
    assert_eq!(rows.len() as i64, total);
    let cloud: HashMap<i64, (String, i64)> = rows
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get(2))))
        .collect();
    assert_eq!(cloud.len(), rows.len(), "a seq stored twice");

    // The buffer agrees with the cloud about every seq it still holds
    // (acknowledged rows stay for the grace period): a seq is never given
    // to two readings; nothing is left unsent and nothing was lost.
    let status = stack.edge.terminate().expect("edge was running");
    assert!(status.success(), "{}", stack.logs());
    let buffer = rusqlite::Connection::open(stack.dir.path().join("edge").join("buffer.db"))
        .expect("open buffer");
    let mut stmt = buffer
        .prepare("SELECT seq, sensor, ts_ms, acked_ms IS NULL FROM readings")
        .expect("query buffer");
    let held: Vec<(i64, String, i64, bool)> = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .expect("rows")
        .collect::<Result<_, _>>()
        .expect("rows");
    let meta = |key: &str| -> i64 {
        buffer
            .query_row(
                "SELECT coalesce(sum(value), 0) FROM meta WHERE key LIKE ?1",
                [key],
                |r| r.get(0),
            )
            .expect("meta")
    };
    let next_seq = meta("next_seq");
    assert!(held.len() > 1000, "acked rows kept: {}", held.len());
    for (seq, sensor, ts, unsent) in &held {
        assert!(!unsent, "seq {seq} never acked");
        assert!(*seq < next_seq);
        assert_eq!(
            cloud.get(seq),
            Some(&(sensor.clone(), *ts)),
            "seq {seq}: buffer and cloud disagree"
        );
    }
    // Seqs are given only to readings stored: each one used is in the cloud.
    assert_eq!(
        next_seq - 1,
        cloud.len() as i64,
        "seqs used = readings stored"
    );
    assert_eq!(meta("lost%"), 0, "losses counted");
    eprintln!(
        "50 SIGKILLs: {} messages published ({} flat, {} from sloppy sensors); {} in PostGIS once each, 0 buffered, 0 lost; {} redeliveries recognised",
        total,
        published.len(),
        sloppy.len(),
        rows.len(),
        meta("redelivered"),
    );
}
