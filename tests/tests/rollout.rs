//! `aeris-gateway rollout` against a real Mosquitto and simulated devices
//! that answer an update command on `down/cmd` with the `up/event` outcomes
//! the agent reports (the agent's own side is tested in ota.rs). One device
//! rolls the update back.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aeris_tests::mosquitto::Mosquitto;
use aeris_tests::process::binary;
use aeris_wire::{decode, encode, Command as WireCommand, CommandKind, Event, EventKind, Topics};
use rumqttc::{AsyncClient, Event as MqttEvent, MqttOptions, Packet, QoS};
use sha2::Digest;

/// A device that answers each update with `confirmed` (or `rolled back`
/// when `fails`), and counts the updates it got.
async fn simulated_device(port: u16, id: &str, fails: bool) -> Arc<Mutex<Vec<u64>>> {
    simulated_device_gated(port, id, fails, None).await
}

/// [`simulated_device`] that, given a `gate`, holds its outcome until the
/// gate turns true (an update that takes a while to install).
async fn simulated_device_gated(
    port: u16,
    id: &str,
    fails: bool,
    gate: Option<tokio::sync::watch::Receiver<bool>>,
) -> Arc<Mutex<Vec<u64>>> {
    let mut opts = MqttOptions::new(format!("sim-{id}"), "127.0.0.1", port);
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20);
    let (client, mut events) = AsyncClient::new(opts, 64);
    let got = Arc::new(Mutex::new(Vec::new()));
    let (seen, id, topics) = (got.clone(), id.to_owned(), Topics::default());
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let mut ready_tx = Some(ready_tx);
    tokio::spawn(async move {
        loop {
            match events.poll().await {
                Ok(MqttEvent::Incoming(Packet::ConnAck(_))) => {
                    let _ = client.subscribe(topics.cmd(&id), QoS::AtLeastOnce).await;
                }
                Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                    if let Some(tx) = ready_tx.take() {
                        let _ = tx.send(());
                    }
                }
                Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                    let Ok(WireCommand {
                        id: cmd,
                        kind: CommandKind::Ota { manifest },
                    }) = decode::<WireCommand>(&p.payload)
                    else {
                        continue;
                    };
                    let update: serde_json::Value = serde_json::from_slice(&manifest).unwrap();
                    assert!(update["signature"].as_str().is_some_and(|s| s.len() == 128));
                    seen.lock().unwrap().push(cmd);
                    let outcome = if fails {
                        "rolled back: version 0.2.0 not kept (new version exited)"
                    } else {
                        "confirmed: version 0.2.0 is healthy"
                    };
                    let (client, topics, id, mut gate) =
                        (client.clone(), topics.clone(), id.clone(), gate.clone());
                    tokio::spawn(async move {
                        if let Some(gate) = gate.as_mut() {
                            let _ = gate.wait_for(|open| *open).await;
                        }
                        for msg in [
                            format!("ota {cmd}: accepted"),
                            format!("ota {cmd}: {outcome}"),
                        ] {
                            let ev = Event {
                                device: id.clone(),
                                ts_ms: aeris_tests::now_ms(),
                                kind: EventKind::Ota,
                                message: msg,
                            };
                            let _ = client
                                .publish(topics.event(&id), QoS::AtLeastOnce, false, encode(&ev))
                                .await;
                        }
                    });
                }
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(5), ready_rx).await;
    got
}

/// A signed package folder (only its manifest matters to the rollout).
fn package(dir: &std::path::Path) -> std::path::PathBuf {
    let pkg = dir.join("pkg");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("aeris-edge"), b"agent").unwrap();
    let key = dir.join("k");
    let tool = binary("aeris-package");
    assert!(Command::new(&tool)
        .arg("keygen")
        .arg(&key)
        .output()
        .unwrap()
        .status
        .success());
    let out = Command::new(&tool)
        .arg("sign")
        .arg("--dir")
        .arg(&pkg)
        .arg("--key")
        .arg(&key)
        .args(["--version", "0.2.0"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    pkg
}

/// Runs the rollout command; returns its exit success and stdout lines
/// (one JSON summary per change).
async fn rollout(
    port: u16,
    pkg: &std::path::Path,
    devices: &[&str],
    extra: &[&str],
) -> (bool, Vec<serde_json::Value>, String) {
    let out = tokio::process::Command::new(binary("aeris-gateway"))
        .env("AERIS_BROKER__PORT", port.to_string())
        .arg("rollout")
        .arg("--package")
        .arg(pkg)
        .args(["--url", "http://updates.invalid/pkg/", "--id", "77"])
        .arg("--devices")
        .arg(devices.join(","))
        .args(extra)
        .output()
        .await
        .unwrap();
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (
        out.status.success(),
        lines,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_first_then_the_fleet_and_a_failure_halts_the_rollout() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let pkg = package(dir.path());
    let names = ["canary", "dev-1", "dev-2", "bad", "dev-4", "dev-5"];
    let mut got = Vec::new();
    for n in names {
        got.push(simulated_device(broker.port, n, n == "bad").await);
    }
    let (ok, lines, err) = rollout(broker.port, &pkg, &names, &["--canary", "1"]).await;
    assert!(!ok, "a failed device must fail the rollout\n{err}");
    let last = lines.last().unwrap();
    assert_eq!(last["done"], true, "{last}");
    assert!(
        last["halted"]
            .as_str()
            .unwrap()
            .contains("1 devices failed"),
        "{last}"
    );
    assert_eq!(last["devices"]["bad"]["state"], "failed");
    assert_eq!(last["devices"]["canary"]["state"], "confirmed");
    // The canary went out alone: a summary shows it sent while all others waited.
    assert!(lines
        .iter()
        .any(|s| s["devices"]["canary"]["state"] == "sent"
            && names[1..]
                .iter()
                .all(|n| s["devices"][n]["state"] == "pending")));
    assert_eq!(got[0].lock().unwrap().as_slice(), [77]);
    for (n, g) in names.iter().zip(&got) {
        assert!(g.lock().unwrap().len() <= 1, "{n} got the update twice");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_keeps_the_update_from_the_rest_of_the_fleet() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let pkg = package(dir.path());
    let names = ["bad", "dev-1", "dev-2", "dev-3"];
    let mut got = Vec::new();
    for n in names {
        got.push(simulated_device(broker.port, n, n == "bad").await);
    }
    let (ok, lines, _) = rollout(broker.port, &pkg, &names, &["--canary", "1"]).await;
    assert!(!ok);
    let last = lines.last().unwrap();
    assert!(last["halted"].is_string(), "{last}");
    assert_eq!(got[0].lock().unwrap().len(), 1);
    for g in &got[1..] {
        assert!(
            g.lock().unwrap().is_empty(),
            "the fleet got an update the canary failed"
        );
    }
    for n in &names[1..] {
        assert_eq!(last["devices"][n]["state"], "pending");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_fleet_confirms_and_a_percentage_reaches_only_its_share() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let pkg = package(dir.path());
    let names: Vec<String> = (0..10).map(|i| format!("dev-{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let mut got = Vec::new();
    for n in &refs {
        got.push(simulated_device(broker.port, n, false).await);
    }
    let (ok, lines, err) = rollout(
        broker.port,
        &pkg,
        &refs,
        &["--percent", "30", "--canary", "1"],
    )
    .await;
    assert!(ok, "{err}");
    let last = lines.last().unwrap();
    assert_eq!(last["confirmed"], 3, "{last}");
    let reached = got.iter().filter(|g| !g.lock().unwrap().is_empty()).count();
    assert_eq!(reached, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_over_the_http_api_halts_on_the_failing_device() {
    let broker = Mosquitto::start();
    let dir = tempfile::tempdir().unwrap();
    let pkg = package(dir.path());
    let api = aeris_tests::free_port();
    // Rollouts are an operator action: they need a token with `operate`.
    let token = "rollout-operator-token";
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[api.auth.tokens]]\nname = \"release-manager\"\nsha256 = \"{}\"\nscopes = [\"operate\"]\n",
            hex::encode(sha2::Sha256::digest(token.as_bytes()))
        ),
    )
    .unwrap();
    let gateway = aeris_tests::process::Proc::start(
        "aeris-gateway",
        &[
            ("AERIS_GATEWAY_CONFIG", config.display().to_string()),
            ("AERIS_BROKER__PORT", broker.port.to_string()),
            ("AERIS_API__LISTEN", format!("127.0.0.1:{api}")),
            (
                "AERIS_SQLITE_PATH",
                dir.path().join("gw.db").display().to_string(),
            ),
        ],
        dir.path().join("gateway.log"),
    );
    let names = ["canary", "dev-1", "bad", "dev-3"];
    let mut got = Vec::new();
    for n in names {
        got.push(simulated_device(broker.port, n, n == "bad").await);
    }
    let update = serde_json::json!({
        "format": 1,
        "url": "http://updates.invalid/pkg/",
        "manifest": std::fs::read_to_string(pkg.join("manifest.json")).unwrap(),
        "signature": std::fs::read_to_string(pkg.join("manifest.json.sig")).unwrap(),
    });
    let body = serde_json::json!({ "update": update, "devices": names, "canary": 1 }).to_string();
    let (status, reply) = aeris_tests::wait_for("gateway API", Duration::from_secs(20), || async {
        aeris_tests::http_request(api, "POST", "/api/rollouts", &body)
            .await
            .ok()
    })
    .await;
    assert_eq!(status, 401, "no token: {reply}");
    let (status, reply) =
        aeris_tests::http_request_as(api, "POST", "/api/rollouts", &body, Some(token))
            .await
            .unwrap();
    assert_eq!(status, 202, "{reply}\n{}", gateway.log());
    let url = serde_json::from_str::<serde_json::Value>(&reply).unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned();
    let last = aeris_tests::wait_for("rollout done", Duration::from_secs(30), || async {
        let (_, b) = aeris_tests::http_request_as(api, "GET", &url, "", Some(token))
            .await
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&b).ok()?;
        (v["done"] == true).then_some(v)
    })
    .await;
    assert!(last["halted"].is_string(), "{last}");
    assert_eq!(last["devices"]["canary"]["state"], "confirmed");
    assert_eq!(last["devices"]["bad"]["state"], "failed");
    assert_eq!(got[0].lock().unwrap().len(), 1);
    // A malformed request is refused with a reason.
    let (status, reply) = aeris_tests::http_request_as(
        api,
        "POST",
        "/api/rollouts",
        r#"{"devices":[]}"#,
        Some(token),
    )
    .await
    .unwrap();
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains("update"), "{reply}");
    // Both attempts are in the audit log under the token's name.
    let (_, audit) = aeris_tests::http_request_as(api, "GET", "/api/audit", "", Some(token))
        .await
        .unwrap();
    let rows: Vec<serde_json::Value> = serde_json::from_str(&audit).unwrap();
    let rollouts: Vec<_> = rows.iter().filter(|r| r["action"] == "rollout").collect();
    assert_eq!(rollouts.len(), 2, "{audit}");
    assert!(
        rollouts.iter().all(|r| r["actor"] == "release-manager"),
        "{audit}"
    );
    assert!(rollouts.iter().any(|r| r["outcome"] == "ok"), "{audit}");
    assert!(
        rollouts.iter().any(|r| r["outcome"]
            .as_str()
            .is_some_and(|o| o.starts_with("error"))),
        "{audit}"
    );
}

/// A gateway config whose only token, `token`, has the `operate` scope.
fn operator_config(dir: &std::path::Path, token: &str) -> std::path::PathBuf {
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[api.auth.tokens]]\nname = \"release-manager\"\nsha256 = \"{}\"\nscopes = [\"operate\"]\n",
            hex::encode(sha2::Sha256::digest(token.as_bytes()))
        ),
    )
    .unwrap();
    config
}

/// A gateway on PostGIS at `db_url` serving its API on `api`; `extra`
/// adds environment (the rollout instance and lease).
fn stored_gateway(
    dir: &std::path::Path,
    broker: u16,
    api: u16,
    db_url: &str,
    extra: &[(&str, String)],
    log: &str,
) -> aeris_tests::process::Proc {
    let mut env = vec![
        (
            "AERIS_GATEWAY_CONFIG",
            dir.join("gateway.toml").display().to_string(),
        ),
        ("AERIS_BROKER__PORT", broker.to_string()),
        ("AERIS_API__LISTEN", format!("127.0.0.1:{api}")),
        ("AERIS_DATABASE_URL", db_url.to_owned()),
    ];
    env.extend(extra.iter().cloned());
    aeris_tests::process::Proc::start("aeris-gateway", &env, dir.join(log))
}

/// Starts a rollout of the package in `pkg` to `devices` (canary 1) over
/// the API on `api`; returns its URL.
async fn start_rollout(api: u16, token: &str, pkg: &std::path::Path, devices: &[&str]) -> String {
    let update = serde_json::json!({
        "format": 1,
        "url": "http://updates.invalid/pkg/",
        "manifest": std::fs::read_to_string(pkg.join("manifest.json")).unwrap(),
        "signature": std::fs::read_to_string(pkg.join("manifest.json.sig")).unwrap(),
    });
    let body = serde_json::json!({ "update": update, "devices": devices, "canary": 1 }).to_string();
    let (status, reply) = aeris_tests::wait_for("gateway API", Duration::from_secs(30), || async {
        let r = aeris_tests::http_request_as(api, "POST", "/api/rollouts", &body, Some(token))
            .await
            .ok()?;
        (r.0 != 503).then_some(r)
    })
    .await;
    assert_eq!(status, 202, "{reply}");
    serde_json::from_str::<serde_json::Value>(&reply).unwrap()["url"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The rollout at `url` when the API answers 200.
async fn get_rollout(api: u16, url: &str, token: &str) -> Option<serde_json::Value> {
    let (status, body) = aeris_tests::http_request_as(api, "GET", url, "", Some(token))
        .await
        .ok()?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

/// A rollout started over HTTP is stored in PostGIS: a gateway killed
/// (SIGKILL) after the canary stage, while the fleet stage is installing,
/// resumes it at start from the stored stage and outcomes. No device is
/// offered the update twice; outcomes reported while the gateway was down
/// still count (the broker keeps them for the rollout's session); the API
/// shows the same stage and counts across the restart and the finished
/// rollout after one more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_resumes_after_the_gateway_is_killed_mid_stage() {
    let broker = Mosquitto::start();
    let db = aeris_tests::postgres::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let pkg = package(dir.path());
    let api = aeris_tests::free_port();
    let token = "rollout-operator-token";
    operator_config(dir.path(), token);
    let mut gateway = stored_gateway(dir.path(), broker.port, api, &db.url, &[], "gateway.log");
    // dev-2 and dev-3 finish installing while the gateway is down, dev-4
    // only after it is back and the API was read.
    let (open_a, gate_a) = tokio::sync::watch::channel(false);
    let (open_b, gate_b) = tokio::sync::watch::channel(false);
    let names = ["canary", "dev-1", "dev-2", "dev-3", "dev-4"];
    let mut got = Vec::new();
    for n in names {
        let gate = match n {
            "dev-2" | "dev-3" => Some(gate_a.clone()),
            "dev-4" => Some(gate_b.clone()),
            _ => None,
        };
        got.push(simulated_device_gated(broker.port, n, false, gate).await);
    }
    let url = start_rollout(api, token, &pkg, &names).await;
    let state = |v: &serde_json::Value, n: &str| v["devices"][n]["state"].clone();
    // Past the canary: the fleet stage was sent, dev-1 confirmed.
    let before =
        aeris_tests::wait_for("fleet stage under way", Duration::from_secs(30), || async {
            let v = get_rollout(api, &url, token).await?;
            (state(&v, "dev-1") == "confirmed" && state(&v, "dev-4") == "sent").then_some(v)
        })
        .await;
    assert_eq!(before["stage"], 1, "{before}");
    assert_eq!(before["state"], "running", "{before}");
    assert_eq!(state(&before, "canary"), "confirmed", "{before}");
    assert_eq!(before["confirmed"], 2, "{before}");

    gateway.kill();
    open_a.send(true).unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    gateway.restart();

    // Back from the database; the outcomes sent meanwhile arrive.
    let during = aeris_tests::wait_for(
        "rollout after the restart",
        Duration::from_secs(30),
        || async {
            let v = get_rollout(api, &url, token).await?;
            (v["confirmed"] == 4).then_some(v)
        },
    )
    .await;
    assert_eq!(during["stage"], 1, "{during}\n{}", gateway.log());
    assert_eq!(during["state"], "running", "{during}");
    assert_eq!(during["done"], false, "{during}");
    assert_eq!(state(&during, "dev-4"), "sent", "{during}");
    assert_eq!(during["failed"], 0, "{during}");

    open_b.send(true).unwrap();
    let last = aeris_tests::wait_for("rollout done", Duration::from_secs(30), || async {
        let v = get_rollout(api, &url, token).await?;
        (v["done"] == true).then_some(v)
    })
    .await;
    assert_eq!(last["state"], "completed", "{last}\n{}", gateway.log());
    assert_eq!(
        (last["confirmed"].clone(), last["failed"].clone()),
        (5.into(), 0.into()),
        "{last}"
    );
    for (n, g) in names.iter().zip(&got) {
        assert_eq!(
            g.lock().unwrap().len(),
            1,
            "{n} got the update {:?}",
            g.lock().unwrap()
        );
    }

    // Finished rollouts stay visible: one more restart, the same answer.
    gateway.restart();
    let after = aeris_tests::wait_for(
        "finished rollout after a restart",
        Duration::from_secs(30),
        || async { get_rollout(api, &url, token).await },
    )
    .await;
    assert_eq!(after, last);
    let metrics = aeris_tests::wait_for("rollout gauge", Duration::from_secs(20), || async {
        let (_, m) = aeris_tests::http_get(api, "/metrics").await.ok()?;
        aeris_tests::metric(&m, "aeris_gateway_rollouts{state=\"completed\"}")
    })
    .await;
    assert_eq!(metrics, 1.0);
    for g in &got {
        assert_eq!(g.lock().unwrap().len(), 1);
    }
}

/// Two gateways share the database; the one that started a rollout dies
/// for good during the fleet stage. The other takes the rollout over once
/// the dead one's lease expired and finishes it, with the outcome the
/// device sent while nobody drove the rollout, and no device sent the
/// update twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_gateway_finishes_a_rollout_whose_gateway_died() {
    let broker = Mosquitto::start();
    let db = aeris_tests::postgres::TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let pkg = package(dir.path());
    let token = "rollout-operator-token";
    operator_config(dir.path(), token);
    let (api_a, api_b) = (aeris_tests::free_port(), aeris_tests::free_port());
    let lease = |name: &str| {
        [
            ("AERIS_ROLLOUT__INSTANCE", name.to_owned()),
            ("AERIS_ROLLOUT__LEASE", "1s".to_owned()),
        ]
    };
    let mut a = stored_gateway(
        dir.path(),
        broker.port,
        api_a,
        &db.url,
        &lease("gw-a"),
        "a.log",
    );
    let b = stored_gateway(
        dir.path(),
        broker.port,
        api_b,
        &db.url,
        &lease("gw-b"),
        "b.log",
    );
    let (open, gate) = tokio::sync::watch::channel(false);
    let names = ["canary", "dev-1", "dev-2"];
    let mut got = Vec::new();
    for n in names {
        let held = (n == "dev-2").then(|| gate.clone());
        got.push(simulated_device_gated(broker.port, n, false, held).await);
    }
    let url = start_rollout(api_a, token, &pkg, &names).await;
    aeris_tests::wait_for("fleet stage sent", Duration::from_secs(30), || async {
        let v = get_rollout(api_a, &url, token).await?;
        (v["devices"]["dev-2"]["state"] == "sent").then_some(())
    })
    .await;
    a.kill();
    open.send(true).unwrap();
    let last = aeris_tests::wait_for("rollout done on b", Duration::from_secs(30), || async {
        let v = get_rollout(api_b, &url, token).await?;
        (v["done"] == true).then_some(v)
    })
    .await;
    assert_eq!(last["state"], "completed", "{last}\n{}", b.log());
    assert_eq!(last["confirmed"], 3, "{last}");
    for (n, g) in names.iter().zip(&got) {
        assert_eq!(g.lock().unwrap().len(), 1, "{n}: {:?}", g.lock().unwrap());
    }
    let (_, metrics) = aeris_tests::http_get(api_b, "/metrics").await.unwrap();
    assert_eq!(
        aeris_tests::metric(&metrics, "aeris_gateway_rollouts_resumed_total"),
        Some(1.0),
        "{metrics}"
    );
}
