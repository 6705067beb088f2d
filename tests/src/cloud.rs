//! The cloud side alone: a broker, a fresh PostGIS database, optionally a
//! Redis, and one or more gateway processes with their HTTP API on free
//! ports. Devices are played by [`crate::device::FakeDevice`].

use std::time::Duration;

use crate::mosquitto::Mosquitto;
use crate::postgres::TestDb;
use crate::process::Proc;
use crate::redis::Redis;

pub struct Gateway {
    pub proc: Proc,
    pub api_port: u16,
}

impl Gateway {
    /// Starts `aeris-gateway` on `broker_port` and `db_url`, its API on a
    /// free port, with `extra` environment.
    pub fn start(
        broker_port: u16,
        db_url: &str,
        extra: &[(&str, String)],
        log: std::path::PathBuf,
    ) -> Gateway {
        let api_port = crate::free_port();
        let mut env = vec![
            ("AERIS_BROKER__PORT", broker_port.to_string()),
            ("AERIS_DATABASE_URL", db_url.to_owned()),
            ("AERIS_API__LISTEN", format!("127.0.0.1:{api_port}")),
        ];
        env.extend(extra.iter().cloned());
        Gateway {
            proc: Proc::start("aeris-gateway", &env, log),
            api_port,
        }
    }

    /// Starts a gateway that logs in to an access-controlled broker as
    /// `aeris-gateway` / `gw-secret` (the tests' ACL user), and waits until
    /// it is ready.
    pub async fn start_authenticated(
        broker_port: u16,
        db_url: &str,
        log: std::path::PathBuf,
    ) -> Gateway {
        let gw = Gateway::start(
            broker_port,
            db_url,
            &[
                ("AERIS_BROKER__USERNAME", "aeris-gateway".to_owned()),
                ("AERIS_BROKER__PASSWORD", "gw-secret".to_owned()),
            ],
            log,
        );
        gw.wait_ready(Duration::from_secs(30)).await;
        gw
    }

    /// Waits until `/readyz` says ready (subscribed, database reachable).
    pub async fn wait_ready(&self, timeout: Duration) {
        let start = std::time::Instant::now();
        loop {
            if matches!(crate::http::get(self.api_port, "/readyz"), Ok((200, _))) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "gateway not ready after {timeout:?}\n{}",
                self.proc.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub fn metric(&self, sample: &str) -> f64 {
        crate::http::metric(self.api_port, sample)
    }
}

pub struct Cloud {
    pub broker: Mosquitto,
    pub db: TestDb,
    pub redis: Option<Redis>,
    pub gateway: Gateway,
    pub dir: tempfile::TempDir,
}

impl Cloud {
    /// Broker, database and one ready gateway; with Redis if `redis`.
    pub async fn start(redis: bool) -> Cloud {
        Self::start_with(redis, &[]).await
    }

    /// Like [`Cloud::start`], with `env` added to the gateway's environment.
    pub async fn start_with(redis: bool, env: &[(&str, String)]) -> Cloud {
        let broker = Mosquitto::start();
        let db = TestDb::create().await;
        let redis = redis.then(Redis::start);
        let dir = tempfile::tempdir().expect("tempdir");
        let mut extra = vec![("AERIS_WRITER__MAX_RETRY_DELAY", "1s".to_owned())];
        if let Some(r) = &redis {
            extra.push(("AERIS_REDIS_URL", r.url()));
        }
        extra.extend(env.iter().cloned());
        let gateway = Gateway::start(broker.port, &db.url, &extra, dir.path().join("gateway.log"));
        gateway.wait_ready(Duration::from_secs(30)).await;
        Cloud {
            broker,
            db,
            redis,
            gateway,
            dir,
        }
    }

    /// Rows in `readings` (0 before the first migration).
    pub async fn rows(&self, device: &str) -> i64 {
        match self
            .db
            .client()
            .await
            .query_one(
                "SELECT count(*) FROM readings WHERE device_id = $1",
                &[&device],
            )
            .await
        {
            Ok(r) => r.get(0),
            Err(_) => 0,
        }
    }

    pub fn logs(&self) -> String {
        format!(
            "--- gateway ---\n{}\n--- broker ---\n{}",
            self.gateway.proc.log(),
            self.broker.log()
        )
    }
}
