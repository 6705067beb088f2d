//! `aeris-gateway verify`: checks a running deployment end to end and
//! prints a pass/fail table.
//!
//! Checks, in order (a later check that depends on a failed one is
//! skipped, and counts as failed):
//! 1. `migrations`: the database's schema is at this binary's version.
//! 2. `redis`: `PING` answers (skipped without `redis_url`).
//! 3. `broker`: the configured login is accepted.
//! 4. `canary-ack`: a one-reading batch published as the canary device is
//!    acked by a running gateway (so it is committed).
//! 5. `canary-postgis`: the reading is in the database.
//! 6. `canary-api`: the reading is served by the HTTP API.
//! 7. `canary-removed`: the canary's rows (database, live view) are gone.
//!
//! The canary logs in as its own broker user when a canary password is
//! given: the broker's ACL lets a device publish only under its own id, so
//! production brokers get an `aeris-verify` login, which the ACL's device
//! pattern (`deploy/mosquitto/aeris.acl`) confines to the canary's topics.

use std::time::Duration;

use aeris_sink::postgis::{self, MIGRATIONS};
use aeris_wire::{decode, encode, now_ms, Ack, Batch, Reading, Topics, Value};
use rumqttc::{Event, Packet, QoS};

use crate::config::{BrokerConfig, Config};

/// Options of the `verify` subcommand.
#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Base URL of the gateway's HTTP API; default: http://<api.listen>.
    #[arg(long, value_name = "URL")]
    pub api_url: Option<String>,
    /// Bearer token with the `read` scope for the API check.
    #[arg(long, env = "AERIS_VERIFY_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Device id of the canary (its rows are removed afterwards).
    #[arg(long, default_value = "aeris-verify")]
    pub canary_device: String,
    /// Broker user name of the canary; default: the canary device id when
    /// a canary password is given, else the gateway's broker login.
    #[arg(long)]
    pub canary_username: Option<String>,
    /// Broker password of the canary.
    #[arg(long, env = "AERIS_VERIFY_CANARY_PASSWORD", hide_env_values = true)]
    pub canary_password: Option<String>,
    /// How long to wait for the canary's ack.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
}

/// One row of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

fn check(name: &'static str, r: Result<String, String>) -> Check {
    match r {
        Ok(detail) => Check {
            name,
            passed: true,
            detail,
        },
        Err(detail) => Check {
            name,
            passed: false,
            detail,
        },
    }
}

/// Runs every check; never panics on what it finds.
pub async fn run(config: &Config, args: &VerifyArgs) -> Vec<Check> {
    let mut out = Vec::new();
    let db = config.database_url.clone();
    let expected = MIGRATIONS.last().map(|m| m.0).unwrap_or(0);
    out.push(check(
        "migrations",
        match &db {
            None => Err("database_url is not set (verify needs the PostGIS deployment)".into()),
            Some(url) => match postgis::schema_version(url).await {
                Ok(v) if v == expected => Ok(format!("version {v}")),
                Ok(v) => Err(format!("version {v}, this gateway expects {expected}")),
                Err(e) => Err(e.to_string()),
            },
        },
    ));
    out.push(check(
        "redis",
        match &config.redis_url {
            None => Ok("not configured (live view in memory)".into()),
            Some(url) => aeris_sink::redis::ops::ping(url)
                .await
                .map(|_| "PING answered".into())
                .map_err(|e| e.to_string()),
        },
    ));
    let broker = crate::mqtt::connect(
        &config.broker,
        &format!("aeris-verify-{:08x}", crate::mqtt::random_suffix()),
        Duration::from_secs(10),
    )
    .await;
    let broker_ok = broker.is_ok();
    out.push(check(
        "broker",
        broker.map(|(c, _)| {
            let _ = c.try_disconnect();
            let who = if config.broker.username.is_empty() {
                "anonymous".to_owned()
            } else {
                format!("as {}", config.broker.username)
            };
            format!("{}:{} {who}", config.broker.host, config.broker.port)
        }),
    ));
    let skipped = |name| Check {
        name,
        passed: false,
        detail: "skipped: an earlier check failed".into(),
    };
    let Some(url) = db.filter(|_| broker_ok) else {
        for name in [
            "canary-ack",
            "canary-postgis",
            "canary-api",
            "canary-removed",
        ] {
            out.push(skipped(name));
        }
        return out;
    };
    let device = args.canary_device.clone();
    let ts_ms = now_ms();
    out.push(check("canary-ack", canary(config, args, ts_ms).await));
    out.push(check(
        "canary-postgis",
        match postgis::device_rows(&url, &device).await {
            Ok(n) if n >= 1 => Ok(format!("{n} row(s) for {device}")),
            Ok(_) => Err(format!("no row for {device}")),
            Err(e) => Err(e.to_string()),
        },
    ));
    out.push(check("canary-api", api_check(config, args, ts_ms).await));
    out.push(check("canary-removed", remove(config, &url, &device).await));
    out
}

/// The canary's broker login.
fn canary_broker(config: &Config, args: &VerifyArgs) -> BrokerConfig {
    let mut b = config.broker.clone();
    if let Some(pw) = &args.canary_password {
        b.username = args
            .canary_username
            .clone()
            .unwrap_or_else(|| args.canary_device.clone());
        b.password = pw.clone();
    } else if let Some(user) = &args.canary_username {
        b.username = user.clone();
        b.password.clear();
    }
    b
}

/// Publishes one reading as the canary and waits for its ack.
async fn canary(config: &Config, args: &VerifyArgs, ts_ms: i64) -> Result<String, String> {
    let topics = Topics::new(&config.broker.prefix).map_err(|e| e.to_string())?;
    let device = &args.canary_device;
    aeris_wire::validate_device_id(device).map_err(|e| e.to_string())?;
    let broker = canary_broker(config, args);
    let id = format!("{device}-{:08x}", crate::mqtt::random_suffix());
    let (client, mut events) = crate::mqtt::connect(&broker, &id, Duration::from_secs(10)).await?;
    client
        .subscribe(topics.ack(device), QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    // A fresh seq per run, so a leftover ack of an earlier run is not
    // mistaken for this one.
    let seq = u64::try_from(ts_ms).unwrap_or(1);
    let batch = Batch {
        device: device.clone(),
        first_seq: seq,
        readings: vec![Reading {
            sensor: "canary".into(),
            ts_ms,
            lat: 0.0,
            lon: 0.0,
            flags: 0,
            values: vec![Value {
                quantity: "canary".into(),
                value: 1.0,
            }],
        }],
    };
    let started = std::time::Instant::now();
    let wait = async {
        let mut published = false;
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::SubAck(_))) if !published => {
                    published = true;
                    client
                        .publish(
                            topics.batch(device),
                            QoS::AtLeastOnce,
                            false,
                            encode(&batch),
                        )
                        .await
                        .map_err(|e| e.to_string())?;
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let Ok(ack) = decode::<Ack>(&p.payload) {
                        if ack.first_seq <= seq && seq <= ack.last_seq {
                            return Ok(());
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => return Err(format!("broker connection lost: {e}")),
            }
        }
    };
    let result = match tokio::time::timeout(args.timeout, wait).await {
        Ok(r) => r.map(|_| format!("acked in {} ms", started.elapsed().as_millis())),
        Err(_) => Err(format!(
            "no ack within {:?}: is a gateway running and subscribed, and may {} publish?",
            args.timeout, broker.username
        )),
    };
    let _ = client.disconnect().await;
    result
}

/// The canary's reading through `GET /api/readings`.
async fn api_check(config: &Config, args: &VerifyArgs, ts_ms: i64) -> Result<String, String> {
    let base = args.api_url.clone().unwrap_or_else(|| {
        let listen = config.api.listen.replace("0.0.0.0", "127.0.0.1");
        format!("http://{listen}")
    });
    let url = format!(
        "{}/api/readings?device={}&sensor=canary&from={}&to={}",
        base.trim_end_matches('/'),
        args.canary_device,
        ts_ms,
        ts_ms + 1
    );
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .map_err(|e| e.to_string())?;
    let mut req = client.get(&url);
    if let Some(t) = &args.token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| format!("GET {url}: {e}"))?;
    let status = resp.status();
    let body = resp.text().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!("GET {url}: {status}: {}", body.trim()));
    }
    let rows: Vec<serde_json::Value> =
        serde_json::from_str(&body).map_err(|e| format!("GET {url}: {e}"))?;
    if rows.iter().any(|r| r["ts_ms"].as_i64() == Some(ts_ms)) {
        Ok(format!("served by {base}"))
    } else {
        Err(format!("GET {url}: the canary reading is missing"))
    }
}

/// Deletes the canary from the database and the live view, then checks.
async fn remove(config: &Config, url: &str, device: &str) -> Result<String, String> {
    let removed = postgis::remove_device(url, device)
        .await
        .map_err(|e| e.to_string())?;
    if let Some(redis) = &config.redis_url {
        // The live view is written after the commit, off the ack path: give
        // the canary a moment to arrive there before removing it.
        for _ in 0..10 {
            let n = aeris_sink::redis::ops::remove_device(redis, &config.redis.prefix, device)
                .await
                .map_err(|e| format!("database cleaned, live view not: {e}"))?;
            if n > 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    match postgis::device_rows(url, device).await {
        Ok(0) => Ok(format!("{removed} row(s) deleted")),
        Ok(n) => Err(format!("{n} row(s) of {device} remain")),
        Err(e) => Err(e.to_string()),
    }
}

/// The table, one line per check.
pub fn table(checks: &[Check]) -> String {
    let mut out = format!("{:<16} {:<6} {}\n", "CHECK", "RESULT", "DETAIL");
    for c in checks {
        let result = if c.passed { "PASS" } else { "FAIL" };
        out += &format!("{:<16} {:<6} {}\n", c.name, result, c.detail);
    }
    out
}
