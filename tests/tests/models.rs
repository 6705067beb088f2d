//! Models on the running agent: outputs reach PostGIS with the model
//! version; a dropped candidate is shadowed and promoted; a commanded one is
//! checked (sha256) and, disagreeing, discarded; the promotion survives a
//! restart.

use std::path::{Path, PathBuf};
use std::time::Duration;

use aeris_tests::sensors::Publisher;
use aeris_tests::stack::{watch_events, watch_status, Stack, DEVICE};
use aeris_tests::wait_for;
use aeris_wire::{encode, Command, CommandKind, Topics};
use rumqttc::{AsyncClient, MqttOptions, QoS};
use sha2::{Digest, Sha256};

fn models() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models")
}

/// An hourly Beijing-like reading, `hour` hours after a start ten days ago.
fn hourly(hour: i64) -> String {
    let start = (aeris_tests::now_ms() / 3_600_000 - 240) * 3600;
    serde_json::json!({
        "ts": start + hour * 3600,
        "pm25": 40 + hour % 7, "dewp": -5, "temp": 10, "pres": 1020, "iws": 12,
        "lat": 39.954, "lon": 116.468,
    })
    .to_string()
}

async fn publish_hours(sensors: &Publisher, hours: std::ops::Range<i64>) {
    for h in hours {
        sensors
            .publish_raw("sensors/bj-embassy/air", hourly(h).into_bytes())
            .await;
    }
}

async fn wait_event(events: &std::sync::Mutex<Vec<String>>, needle: &str, stack: &Stack) -> String {
    let start = std::time::Instant::now();
    loop {
        if let Some(e) = events.lock().unwrap().iter().find(|e| e.contains(needle)) {
            return e.clone();
        }
        if start.elapsed() > Duration::from_secs(30) {
            panic!(
                "no event containing {needle:?}; got {:?}\n{}",
                events.lock().unwrap(),
                stack.logs()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The model quantity stored with the reading of `hour`, if any.
async fn output_version(stack: &Stack, hour: i64) -> Option<String> {
    let ts = serde_json::from_str::<serde_json::Value>(&hourly(hour)).unwrap()["ts"]
        .as_i64()
        .unwrap();
    let row = stack
        .db
        .client()
        .await
        .query_opt(
            "SELECT 'model:' || k FROM readings, jsonb_object_keys(model_outputs) AS k
             WHERE extract(epoch FROM ts)::int8 = $1",
            &[&ts],
        )
        .await
        .unwrap();
    row.map(|r| r.get(0))
}

async fn send_command(port: u16, cmd: Command) {
    let (client, mut events) =
        AsyncClient::new(MqttOptions::new("test-operator", "127.0.0.1", port), 16);
    client
        .publish(
            Topics::default().cmd(DEVICE),
            QoS::AtLeastOnce,
            false,
            encode(&cmd),
        )
        .await
        .unwrap();
    // Drive the connection until the publish is acknowledged.
    for _ in 0..10 {
        if let Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) = events.poll().await {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_shadowed_promoted_discarded_and_persisted_on_the_running_agent() {
    // The history starts ten days ago, beyond the default 7-day retention.
    let config = format!(
        "[ingest]\nretention = \"30d\"\n[infer]\nmodels = [\"{}\"]\nshadow_windows = 3\npoll_interval = \"200ms\"\nutc_offset_hours = 8.0\n",
        models().join("pm25_nowcast").display()
    );
    let mut stack = Stack::start_with(&config).await;
    let events = watch_events(stack.cloud.port, DEVICE).await;
    let sensors = Publisher::connect(stack.local.port).await;

    // Six hours of history, then every hour gets a nowcast from 1.0.0.
    publish_hours(&sensors, 0..10).await;
    stack.wait_rows(10, Duration::from_secs(60)).await;
    assert_eq!(
        output_version(&stack, 5).await,
        None,
        "hour 5 has only 5 lags"
    );
    assert_eq!(
        output_version(&stack, 9).await.as_deref(),
        Some("model:pm25_nowcast@1.0.0")
    );

    // A candidate dropped into the incoming folder runs in shadow, agrees
    // (it differs by 0.5 µg/m³, tolerance 5) and is promoted after 3 windows.
    let incoming = stack.dir.path().join("edge/models/incoming/agree");
    std::fs::create_dir_all(&incoming).unwrap();
    for f in ["model.onnx", "manifest.json"] {
        std::fs::copy(
            models().join("testdata/pm25_nowcast_agree").join(f),
            incoming.join(f),
        )
        .unwrap();
    }
    wait_event(&events, "pm25_nowcast@1.0.1 in shadow", &stack).await;
    publish_hours(&sensors, 10..14).await;
    let promoted = wait_event(&events, "promoted 1.0.0 -> 1.0.1", &stack).await;
    assert!(promoted.contains("agreed on 3 windows"), "{promoted}");
    stack.wait_rows(14, Duration::from_secs(60)).await;
    assert_eq!(
        output_version(&stack, 13).await.as_deref(),
        Some("model:pm25_nowcast@1.0.1")
    );
    // The heartbeat names the version now active.
    let mut status = watch_status(stack.cloud.port, DEVICE).await;
    wait_for(
        "status naming pm25_nowcast 1.0.1",
        Duration::from_secs(30),
        || {
            let s = status.borrow_and_update().clone();
            async move {
                s.filter(|s| {
                    s.models
                        == [aeris_wire::ModelVersion {
                            name: "pm25_nowcast".into(),
                            version: "1.0.1".into(),
                        }]
                })
            }
        },
    )
    .await;
    // ...and so does the gateway's device list (issue 17, 5).
    let api = stack.api_port;
    wait_for(
        "/api/devices naming 1.0.1",
        Duration::from_secs(10),
        || async {
            let v = aeris_tests::http::get_json(api, "/api/devices");
            (v[0]["models"] == serde_json::json!({"pm25_nowcast": "1.0.1"})).then_some(())
        },
    )
    .await;

    // A commanded model with the wrong checksum is rejected outright...
    let dir = models().join("testdata/pm25_nowcast_disagree");
    let sha: [u8; 32] = Sha256::digest(std::fs::read(dir.join("model.onnx")).unwrap()).into();
    let command = |id: u64, sha256: [u8; 32]| Command {
        id,
        kind: CommandKind::Model {
            name: "pm25_nowcast".into(),
            version: "1.1.0".into(),
            url: format!("file://{}", dir.display()),
            sha256,
            signature: vec![],
            force: false,
        },
    };
    send_command(stack.cloud.port, command(1, [0; 32])).await;
    wait_event(&events, "rejected (checksum)", &stack).await;
    // ...and with the right one it is shadowed, disagrees (+20 µg/m³) and is
    // discarded; 1.0.1 stays active.
    send_command(stack.cloud.port, command(2, sha)).await;
    wait_event(&events, "pm25_nowcast@1.1.0 in shadow", &stack).await;
    publish_hours(&sensors, 14..16).await;
    let discarded = wait_event(&events, "pm25_nowcast@1.1.0 discarded", &stack).await;
    assert!(discarded.contains("disagreed on 1 of 1"), "{discarded}");
    stack.wait_rows(16, Duration::from_secs(60)).await;
    assert_eq!(
        output_version(&stack, 15).await.as_deref(),
        Some("model:pm25_nowcast@1.0.1")
    );

    // Every outcome is a metric on the agent's endpoint.
    let (status, ready) = aeris_tests::http_get(stack.edge_health, "/readyz")
        .await
        .unwrap();
    assert_eq!((status, ready.trim()), (200, "ready"));
    let (status, text) = aeris_tests::http_get(stack.edge_health, "/metrics")
        .await
        .unwrap();
    assert_eq!(status, 200);
    let m =
        |s: &str| aeris_tests::metric(&text, s).unwrap_or_else(|| panic!("{s} missing:\n{text}"));
    assert_eq!(m("aeris_edge_model_promotions_total"), 1.0);
    assert_eq!(m("aeris_edge_model_discards_total"), 1.0);
    assert_eq!(m("aeris_edge_model_rejections_total"), 1.0);
    assert_eq!(
        m("aeris_edge_model_shadow_windows_total{outcome=\"agreed\"}"),
        3.0
    );
    assert_eq!(
        m("aeris_edge_model_shadow_windows_total{outcome=\"disagreed\"}"),
        1.0
    );
    // Hours 6..=15 each got one nowcast.
    assert_eq!(m("aeris_edge_infer_runs_total"), 10.0);
    assert!(m("aeris_edge_infer_run_microseconds_total") > 0.0);
    assert_eq!(m("aeris_edge_ingest_accepted_total"), 16.0);

    // The promotion is on disk: after a hard kill the agent starts with
    // 1.0.1. Input windows live in memory, so the first nowcast after a
    // restart comes once six new hours have arrived.
    stack.edge.kill();
    stack.edge.restart();
    stack.wait_edge_subscribed(2).await;
    publish_hours(&sensors, 16..23).await;
    stack.wait_rows(23, Duration::from_secs(60)).await;
    assert_eq!(output_version(&stack, 21).await, None);
    assert_eq!(
        output_version(&stack, 22).await.as_deref(),
        Some("model:pm25_nowcast@1.0.1")
    );
}

/// Every file and folder under `root` (relative paths), except what lies
/// under `skip`.
fn tree(root: &Path, skip: &Path) -> std::collections::BTreeSet<String> {
    let mut out = std::collections::BTreeSet::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let path = e.unwrap().path();
            if path.starts_with(skip) {
                continue;
            }
            out.insert(path.strip_prefix(root).unwrap().display().to_string());
            if path.is_dir() && !path.is_symlink() {
                todo.push(path);
            }
        }
    }
    out
}

/// A copy of the model folder `from` in `to`, its manifest edited by `edit`.
fn model_copy(from: &Path, to: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    std::fs::create_dir_all(to).unwrap();
    std::fs::copy(from.join("model.onnx"), to.join("model.onnx")).unwrap();
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(from.join("manifest.json")).unwrap()).unwrap();
    edit(&mut m);
    std::fs::write(to.join("manifest.json"), m.to_string()).unwrap();
}

async fn metrics(stack: &Stack) -> String {
    let (status, text) = aeris_tests::http_get(stack.edge_health, "/metrics")
        .await
        .unwrap();
    assert_eq!(status, 200);
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_manifest_naming_a_path_is_refused_and_nothing_outside_the_models_folder_changes() {
    let config = format!(
        "[ingest]\nretention = \"30d\"\n[infer]\nmodels = [\"{}\"]\npoll_interval = \"200ms\"\n",
        models().join("pm25_nowcast").display()
    );
    let stack = Stack::start_with(&config).await;
    let events = watch_events(stack.cloud.port, DEVICE).await;
    let models_dir = stack.dir.path().join("edge/models");
    // The whole test folder (gateway, agent data, configs, logs) but the
    // models folder; `models/active/../../x` would be the agent's
    // `<data_dir>/x`.
    let before = tree(stack.dir.path(), &models_dir);
    assert!(
        before.contains("edge.toml") && before.contains("edge"),
        "{before:?}"
    );

    // A dropped folder whose manifest names `../../x` (models/active/../../x
    // is the data folder's `x`): refused by name before anything moves.
    let evil = |m: &mut serde_json::Value| m["name"] = "../../x".into();
    model_copy(
        &models().join("pm25_nowcast"),
        &models_dir.join("incoming/evil"),
        evil,
    );
    let e = wait_event(&events, "rejected (name)", &stack).await;
    assert!(
        e.contains("\"../../x\"") && e.contains("drop folder evil"),
        "{e}"
    );

    // The same by command: a command naming a path, and a command whose
    // (unsigned, fleet without keys) manifest names one.
    let outside = tempfile::tempdir().unwrap();
    model_copy(&models().join("pm25_nowcast"), outside.path(), evil);
    let sha: [u8; 32] =
        Sha256::digest(std::fs::read(outside.path().join("model.onnx")).unwrap()).into();
    let command = |id: u64, name: &str| Command {
        id,
        kind: CommandKind::Model {
            name: name.into(),
            version: "1.0.0".into(),
            url: format!("file://{}", outside.path().display()),
            sha256: sha,
            signature: vec![],
            force: true,
        },
    };
    send_command(stack.cloud.port, command(3, "../../x")).await;
    wait_event(&events, "command 3 (../../x@1.0.0", &stack).await;
    send_command(stack.cloud.port, command(4, "pm25_nowcast")).await;
    let e = wait_event(&events, "command 4 (", &stack).await;
    assert!(e.contains("rejected (name)"), "{e}");
    let rejected: Vec<String> = events
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.contains("rejected (name)"))
        .cloned()
        .collect();
    assert_eq!(rejected.len(), 3, "{rejected:?}");
    let text = metrics(&stack).await;
    assert_eq!(
        aeris_tests::metric(&text, "aeris_edge_model_rejections_total"),
        Some(3.0)
    );

    // Nothing outside the models folder changed; the dropped folder is kept
    // in rejected/ for the operator, and the nowcast still runs.
    assert_eq!(tree(stack.dir.path(), &models_dir), before);
    assert!(!stack.dir.path().join("edge/x").exists());
    let kept = std::fs::read_dir(models_dir.join("rejected"))
        .unwrap()
        .count();
    assert_eq!(kept, 1, "the dropped folder, once");
    assert!(models_dir.join("active/pm25_nowcast/model.onnx").exists());
    assert!(events
        .lock()
        .unwrap()
        .iter()
        .all(|e| !e.contains("../../x@1.0.0 active")));
}

/// Runs `aeris-package` with `args`; its stdout, trimmed.
fn aeris_package(args: &[&std::ffi::OsStr]) -> String {
    let out = std::process::Command::new(aeris_tests::process::binary("aeris-package"))
        .args(args)
        .output()
        .unwrap();
    assert!(out.status.success(), "aeris-package {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_trusted_keys_a_model_manifest_changed_after_signing_is_refused() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("fleet.key");
    let public = aeris_package(&["keygen".as_ref(), key.as_os_str()]);
    let sign = |dir: &Path| {
        aeris_package(&[
            "sign-model".as_ref(),
            "--dir".as_ref(),
            dir.as_os_str(),
            "--key".as_ref(),
            key.as_os_str(),
        ])
    };
    // The seed, signed like every model a keyed board takes.
    let seed = keys.path().join("pm25_nowcast");
    model_copy(&models().join("pm25_nowcast"), &seed, |_| {});
    let seed_signature = sign(&seed);
    let check = aeris_package(&[
        "verify-model".as_ref(),
        "--dir".as_ref(),
        seed.as_os_str(),
        "--public".as_ref(),
        public.as_ref(),
    ]);
    assert_eq!(check, "ok: model pm25_nowcast@1.0.0");
    let config = format!(
        "[ingest]\nretention = \"30d\"\n[infer]\nmodels = [\"{}\"]\npoll_interval = \"200ms\"\ntrusted_keys = [\"{public}\"]\n",
        seed.display()
    );
    let stack = Stack::start_with(&config).await;
    let events = watch_events(stack.cloud.port, DEVICE).await;
    let incoming = stack.dir.path().join("edge/models/incoming");

    // Signed, then its manifest loosened (shadow tolerance): refused.
    let agree = models().join("testdata/pm25_nowcast_agree");
    let staging = keys.path().join("tampered");
    model_copy(&agree, &staging, |_| {});
    sign(&staging);
    model_copy(&agree, &staging, |m| {
        m["tolerance"]["shadow_vs_active"]["abs"] = 1e9.into()
    });
    std::fs::rename(&staging, incoming.join("tampered")).unwrap();
    let e = wait_event(&events, "drop folder tampered", &stack).await;
    assert!(e.contains("rejected (signature)"), "{e}");

    // The same model as signed is taken into shadow.
    let good = keys.path().join("good");
    model_copy(&agree, &good, |_| {});
    sign(&good);
    std::fs::rename(&good, incoming.join("good")).unwrap();
    wait_event(&events, "pm25_nowcast@1.0.1 in shadow", &stack).await;

    // Over plain http with keys set: the command's signature (printed by
    // sign-model) covers the manifest it fetches.
    let www = tempfile::tempdir().unwrap();
    let served = www.path().join("disagree");
    model_copy(
        &models().join("testdata/pm25_nowcast_disagree"),
        &served,
        |_| {},
    );
    let signature = hex::decode(sign(&served)).unwrap();
    let server = aeris_tests::files::FileServer::start(www.path().to_path_buf()).await;
    let sha: [u8; 32] = Sha256::digest(std::fs::read(served.join("model.onnx")).unwrap()).into();
    let command = |id: u64, signature: Vec<u8>| Command {
        id,
        kind: CommandKind::Model {
            name: "pm25_nowcast".into(),
            version: "1.1.0".into(),
            url: format!("{}disagree", server.url()),
            sha256: sha,
            signature,
            force: false,
        },
    };
    // A signature the fleet key made for another model is refused...
    let other = hex::decode(&seed_signature).unwrap();
    send_command(stack.cloud.port, command(5, other)).await;
    let e = wait_event(&events, "command 5 (", &stack).await;
    assert!(e.contains("rejected (signature)"), "{e}");
    // ...the new one is taken.
    send_command(stack.cloud.port, command(6, signature)).await;
    wait_event(&events, "pm25_nowcast@1.1.0 in shadow", &stack).await;
    let text = metrics(&stack).await;
    assert_eq!(
        aeris_tests::metric(&text, "aeris_edge_model_rejections_total"),
        Some(2.0)
    );
}
