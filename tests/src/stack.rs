//! The whole pipeline for one scenario: a local (sensor) broker, a cloud
//! broker, a fresh PostGIS database, one gateway and one edge agent, all real
//! processes.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use aeris_wire::{decode, Status, Topics};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;

use crate::cloud::Gateway;
use crate::mosquitto::Mosquitto;
use crate::postgres::TestDb;
use crate::process::Proc;
use crate::sensors::SensorReading;

pub const DEVICE: &str = "edge-test-1";

/// (sensor id, ts_ms): what identifies a sensor's reading.
type ReadingKey = (String, i64);
/// (ST_X, ST_Y, pm25) of a stored row.
type StoredPoint = (f64, f64, f64);

pub struct Stack {
    pub local: Mosquitto,
    pub cloud: Mosquitto,
    pub db: TestDb,
    pub gateway: Proc,
    /// Port of the first gateway's HTTP API.
    pub api_port: u16,
    /// Gateways after the first, sharing its subscription.
    pub more_gateways: Vec<Gateway>,
    pub edge: Proc,
    /// Port of the agent's /healthz, /readyz and /metrics.
    pub edge_health: u16,
    /// Between the agent and the cloud broker, in stacks started with
    /// [`Stack::start_gated`]: cuts the agent's link alone.
    pub gate: Option<crate::gate::Gate>,
    pub dir: tempfile::TempDir,
}

impl Stack {
    pub async fn start() -> Stack {
        Self::start_full("", &[], 1, false).await
    }

    /// Like [`Stack::start`], with `edge_toml` as the agent's config file.
    pub async fn start_with(edge_toml: &str) -> Stack {
        Self::start_full(edge_toml, &[], 1, false).await
    }

    /// Like [`Stack::start_with`], with environment variables for the agent
    /// that override the stack's own (`AERIS_DATA_DIR`, ...).
    pub async fn start_with_env(edge_toml: &str, edge_env: &[(&str, String)]) -> Stack {
        Self::start_full(edge_toml, edge_env, 1, false).await
    }

    /// Like [`Stack::start_with`], with more environment for the gateway
    /// (`AERIS_GATEWAY_CONFIG` for a file with API tokens, ...).
    pub async fn start_with_gateway_env(edge_toml: &str, gateway_env: &[(&str, String)]) -> Stack {
        Self::start_edge_with(edge_toml, &[], gateway_env, 1, false, |env, log| {
            Proc::start("aeris-edge", env, log)
        })
        .await
    }

    /// Like [`Stack::start_with`], with the agent reaching the cloud broker
    /// through [`Stack::gate`].
    pub async fn start_gated(edge_toml: &str) -> Stack {
        Self::start_full(edge_toml, &[], 1, true).await
    }

    /// The pipeline with `n` gateways on one shared subscription.
    pub async fn start_with_gateways(n: usize) -> Stack {
        Self::start_full("", &[], n, false).await
    }

    /// The pipeline with the board (aarch64) agent at `binary` run under
    /// qemu-user instead of the host build.
    pub async fn start_with_board_binary(binary: &Path, edge_toml: &str) -> Stack {
        Self::start_edge(edge_toml, &[], 1, false, |env, log| {
            Proc::start_under_qemu(binary, env, log)
        })
        .await
    }

    async fn start_full(
        edge_toml: &str,
        edge_env: &[(&str, String)],
        n: usize,
        gated: bool,
    ) -> Stack {
        Self::start_edge(edge_toml, edge_env, n, gated, |env, log| {
            Proc::start("aeris-edge", env, log)
        })
        .await
    }

    async fn start_edge(
        edge_toml: &str,
        edge_env: &[(&str, String)],
        n: usize,
        gated: bool,
        launch: impl FnOnce(&[(&str, String)], PathBuf) -> Proc,
    ) -> Stack {
        Self::start_edge_with(edge_toml, edge_env, &[], n, gated, launch).await
    }

    async fn start_edge_with(
        edge_toml: &str,
        edge_env: &[(&str, String)],
        gateway_env: &[(&str, String)],
        n: usize,
        gated: bool,
        launch: impl FnOnce(&[(&str, String)], PathBuf) -> Proc,
    ) -> Stack {
        let local = Mosquitto::start();
        let cloud = Mosquitto::start();
        let db = TestDb::create().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let mut extra = vec![("AERIS_WRITER__MAX_RETRY_DELAY", "1s".to_owned())];
        extra.extend(gateway_env.iter().cloned());
        let first = Gateway::start(cloud.port, &db.url, &extra, dir.path().join("gateway.log"));
        let more_gateways: Vec<Gateway> = (1..n.max(1))
            .map(|i| {
                Gateway::start(
                    cloud.port,
                    &db.url,
                    &extra,
                    dir.path().join(format!("gateway-{i}.log")),
                )
            })
            .collect();
        for g in std::iter::once(&first).chain(&more_gateways) {
            g.wait_ready(Duration::from_secs(30)).await;
        }
        let (gateway, api_port) = (first.proc, first.api_port);
        let gate = match gated {
            true => Some(crate::gate::Gate::start(cloud.port).await),
            false => None,
        };
        let cloud_port = gate.as_ref().map(|g| g.port).unwrap_or(cloud.port);
        let edge_health = crate::free_port();
        let edge_config = dir.path().join("edge.toml");
        std::fs::write(&edge_config, edge_toml).expect("write edge.toml");
        let mut env = vec![
            ("AERIS_CONFIG", edge_config.display().to_string()),
            ("AERIS_HEALTH_LISTEN", format!("127.0.0.1:{edge_health}")),
            ("AERIS_DEVICE_ID", DEVICE.to_owned()),
            (
                "AERIS_DATA_DIR",
                dir.path().join("edge").display().to_string(),
            ),
            ("AERIS_LOCAL__PORT", local.port.to_string()),
            ("AERIS_CLOUD__PORT", cloud_port.to_string()),
            ("AERIS_CLOUD__STATUS_INTERVAL", "300ms".to_owned()),
            ("AERIS_UPLINK__BATCH_MAX_AGE", "100ms".to_owned()),
            ("AERIS_UPLINK__ACK_TIMEOUT", "3s".to_owned()),
        ];
        env.extend(edge_env.iter().cloned());
        let edge = launch(&env, dir.path().join("edge.log"));
        let stack = Stack {
            local,
            cloud,
            db,
            gateway,
            api_port,
            more_gateways,
            edge,
            edge_health,
            gate,
            dir,
        };
        stack.wait_edge_subscribed(1).await;
        stack
    }

    /// Waits until the agent's log shows its `n`th acknowledged sensor
    /// subscription: sensors publishing before that are not heard (as with
    /// any MQTT subscriber), so scenarios publish only after it.
    pub async fn wait_edge_subscribed(&self, n: usize) {
        let start = std::time::Instant::now();
        while self
            .edge
            .log()
            .matches("subscribed to sensor topic")
            .count()
            < n
        {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "edge never subscribed\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Logs of every process, for a failing assertion's message.
    pub fn logs(&self) -> String {
        let mut more = String::new();
        for (i, g) in self.more_gateways.iter().enumerate() {
            more += &format!("--- gateway {} ---\n{}\n", i + 1, tail(&g.proc.log()));
        }
        format!(
            "--- edge ---\n{}\n--- gateway ---\n{}\n{more}--- cloud broker ---\n{}\n--- local broker (port {}) ---\n{}",
            tail(&self.edge.log()),
            tail(&self.gateway.log()),
            tail(&self.cloud.log()),
            self.local.port,
            tail(&self.local.log())
        )
    }

    /// Rows in PostGIS.
    pub async fn row_count(&self) -> i64 {
        match self
            .db
            .client()
            .await
            .query_one("SELECT count(*) FROM readings", &[])
            .await
        {
            Ok(row) => row.get(0),
            // The gateway may not have migrated yet.
            Err(_) => 0,
        }
    }

    /// Waits until PostGIS holds `n` rows (or panics with the logs).
    pub async fn wait_rows(&self, n: i64, timeout: Duration) {
        let start = std::time::Instant::now();
        loop {
            let got = self.row_count().await;
            if got >= n {
                return;
            }
            if start.elapsed() > timeout {
                panic!("only {got} of {n} rows after {timeout:?}\n{}", self.logs());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Checks that every published reading is stored exactly once, with its
    /// values, and its geometry's ST_X/ST_Y equal to lon/lat.
    pub async fn assert_exactly_once(&self, published: &[SensorReading]) {
        let rows = self
            .db
            .client()
            .await
            .query(
                "SELECT device_id, seq, sensor_id, round(extract(epoch FROM ts) * 1000)::int8,
                        ST_X(geom), ST_Y(geom), ST_SRID(geom), pm25
                 FROM readings",
                &[],
            )
            .await
            .expect("query readings");
        let mut stored: HashMap<ReadingKey, Vec<StoredPoint>> = HashMap::new();
        let mut seqs = std::collections::HashSet::new();
        for row in &rows {
            let device: String = row.get(0);
            assert_eq!(device, DEVICE);
            assert!(seqs.insert(row.get::<_, i64>(1)), "seq stored twice");
            assert_eq!(row.get::<_, i32>(6), 4326, "SRID");
            stored.entry((row.get(2), row.get(3))).or_default().push((
                row.get(4),
                row.get(5),
                row.get(7),
            ));
        }
        let dup: Vec<_> = stored.iter().filter(|(_, v)| v.len() > 1).take(3).collect();
        assert!(dup.is_empty(), "readings stored more than once: {dup:?}");
        for r in published {
            let got = stored.get(&(r.sensor.clone(), r.ts_ms)).unwrap_or_else(|| {
                panic!(
                    "reading {} @ {} lost ({} rows stored)\n{}",
                    r.sensor,
                    r.ts_ms,
                    rows.len(),
                    self.logs()
                )
            });
            assert_eq!(
                got[0],
                (r.lon, r.lat, r.pm25),
                "geometry (ST_X, ST_Y) or value of {r:?}"
            );
        }
        assert_eq!(rows.len(), published.len(), "rows that no sensor published");
    }
}

fn tail(s: &str) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// Follows a device's retained `up/status` on the cloud broker.
pub async fn watch_status(port: u16, device: &str) -> watch::Receiver<Option<Status>> {
    let mut opts = MqttOptions::new(
        format!("status-{:08x}", fastrand::u32(..)),
        "127.0.0.1",
        port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 64);
    let topic = Topics::default().status(device);
    let (tx, rx) = watch::channel(None);
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe(topic.clone(), QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(s) = decode::<Status>(&p.payload) {
                        if tx.send(Some(s)).is_err() {
                            return;
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    rx
}

/// Collects the text of a device's `up/event` messages from the cloud broker.
pub async fn watch_events(
    port: u16,
    device: &str,
) -> std::sync::Arc<std::sync::Mutex<Vec<String>>> {
    let mut opts = MqttOptions::new(
        format!("events-{:08x}", fastrand::u32(..)),
        "127.0.0.1",
        port,
    );
    opts.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = AsyncClient::new(opts, 64);
    let topic = Topics::default().event(device);
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let out = seen.clone();
    let subscribed = std::sync::Arc::new(tokio::sync::Notify::new());
    let ready = subscribed.clone();
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe(topic.clone(), QoS::AtLeastOnce).await;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => ready.notify_one(),
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(e) = decode::<aeris_wire::Event>(&p.payload) {
                        if let Ok(mut v) = out.lock() {
                            v.push(e.message);
                        }
                    }
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    subscribed.notified().await;
    seen
}
