//! A group's configuration change staged over HTTP (issue 18.2), against
//! the real gateway, agent, brokers and PostGIS: `PUT
//! /api/groups/{name}/config?canary=1` answers with a rollout id, the
//! change's progress is `GET /api/rollouts/{id}`, a canary that refuses
//! halts it before the rest of the group hears of it, and a good one
//! reaches every member. The group: the real agent (first by name: the
//! canary) and `zz-other`, a device the test plays.

use std::time::Duration;

use aeris_tests::device::FakeDevice;
use aeris_tests::stack::{Stack, DEVICE};
use aeris_wire::{CommandKind, ConfigReport, Topics};
use serde_json::Value;
use sha2::Digest;

const TOKEN: &str = "config-operator-token";
const EDGE: &str = "groups = [\"north\"]\n[sensors.s1]\nlat = 47.0\nlon = 6.0\n";
const OTHER: &str = "zz-other";

async fn start() -> (Stack, tempfile::TempDir, FakeDevice) {
    start_with_member(OTHER).await
}

/// The stack, and `member` (played by the test) in group north beside the
/// real agent.
async fn start_with_member(member: &str) -> (Stack, tempfile::TempDir, FakeDevice) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "[[api.auth.tokens]]\nname = \"fleet-operator\"\nsha256 = \"{}\"\nscopes = [\"operate\"]\n",
            hex::encode(sha2::Sha256::digest(TOKEN.as_bytes()))
        ),
    )
    .unwrap();
    let env = [("AERIS_GATEWAY_CONFIG", config.display().to_string())];
    let stack = Stack::start_with_gateway_env(EDGE, &env).await;
    let other = FakeDevice::connect(stack.cloud.port, member).await;
    report_as(&other, member, 0).await;
    aeris_tests::wait_for("both reports stored", Duration::from_secs(20), || async {
        let client = stack.db.client().await;
        let row = client
            .query_one("SELECT count(*) FROM config_reported", &[])
            .await
            .ok()?;
        (row.get::<_, i64>(0) == 2).then_some(())
    })
    .await;
    (stack, dir, other)
}

/// `zz-other` reports that it runs version `applied`.
async fn report(other: &FakeDevice, applied: u64) {
    report_as(other, OTHER, applied).await;
}

async fn report_as(other: &FakeDevice, name: &str, applied: u64) {
    let r = ConfigReport {
        device: name.into(),
        ts_ms: aeris_tests::now_ms(),
        groups: vec!["north".into()],
        applied,
        refused: None,
    };
    other
        .publish(Topics::default().config(name), aeris_wire::encode(&r))
        .await;
}

async fn call(stack: &Stack, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) =
        aeris_tests::http_request_as(stack.api_port, method, path, body, Some(TOKEN))
            .await
            .unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

/// Starts a staged change of group north; its rollout id.
async fn stage(stack: &Stack, fragment: &str) -> u64 {
    stage_with(stack, fragment, "30s").await
}

async fn stage_with(stack: &Stack, fragment: &str, device_timeout: &str) -> u64 {
    let path = format!("/api/groups/north/config?canary=1&device_timeout={device_timeout}");
    let (status, body) = call(stack, "PUT", &path, fragment).await;
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_u64().unwrap_or_else(|| panic!("{body}"));
    assert_eq!(body["url"], format!("/api/rollouts/{id}"));
    id
}

/// `GET /api/rollouts/{id}` once `done`.
async fn finished(stack: &Stack, id: u64) -> Value {
    aeris_tests::wait_for(
        "the staged change done",
        Duration::from_secs(60),
        || async {
            let (status, r) = call(stack, "GET", &format!("/api/rollouts/{id}"), "").await;
            (status == 200 && r["done"] == true).then_some(r)
        },
    )
    .await
}

/// The Configure commands `zz-other` received, as (version, fragment).
fn configures(other: &FakeDevice) -> Vec<(u64, String)> {
    other
        .commands()
        .into_iter()
        .filter_map(|c| match c.kind {
            CommandKind::Configure { version, fragment } => Some((version, fragment)),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_staged_change_halts_when_the_canary_refuses_and_the_rest_never_get_it() {
    let (stack, _dir, other) = start().await;
    // Bad requests are refused before anything is stored.
    let (status, _) = aeris_tests::http_request(
        stack.api_port,
        "PUT",
        "/api/groups/north/config?canary=1",
        "{}",
    )
    .await
    .unwrap();
    assert_eq!(status, 401, "operate scope");
    for (query, body) in [
        ("?max_failures=1", "{}"),
        ("?canary=one", "{}"),
        ("?canary=1&surprise=1", "{}"),
        ("?canary=1", "[1]"),
    ] {
        let (status, r) = call(
            &stack,
            "PUT",
            &format!("/api/groups/north/config{query}"),
            body,
        )
        .await;
        assert_eq!(status, 400, "{query} {body}: {r}");
    }
    let (status, r) = call(&stack, "PUT", "/api/groups/south/config?canary=1", "{}").await;
    assert_eq!(status, 400, "no device reports group south: {r}");

    // Out of WGS84: the agent's own checks refuse it.
    let id = stage(&stack, r#"{"sensors": {"s1": {"lat": 95.0, "lon": 1.0}}}"#).await;
    let r = finished(&stack, id).await;
    assert_eq!(r["state"], "halted", "{r}");
    assert!(r["halted"].is_string(), "{r}");
    assert_eq!(r["devices"][DEVICE]["state"], "failed", "{r}");
    assert!(
        r["devices"][DEVICE]["detail"]
            .as_str()
            .unwrap_or("")
            .contains("sensors.s1"),
        "the canary's reason: {r}"
    );
    assert_eq!(r["devices"][OTHER]["state"], "pending", "{r}");
    assert_eq!(r["version"], format!("config {id}"), "{r}");
    assert_eq!(r["started_by"], "fleet-operator", "{r}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        configures(&other).is_empty(),
        "the rest of the group got nothing: {:?}",
        other.commands()
    );
    // Its next report does not bring it either: the fragment stays with
    // the canary.
    report(&other, 0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(configures(&other).is_empty(), "{:?}", other.commands());
    let (_, view) = call(&stack, "GET", &format!("/api/devices/{OTHER}/config"), "").await;
    assert_eq!(view["effective"]["version"], 0, "{view}");

    let (_, audit) = call(&stack, "GET", "/api/audit?limit=20", "").await;
    let staged: Vec<&Value> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "config_set" && r["target"] == "group:north")
        .collect();
    assert!(
        staged
            .iter()
            .any(|r| r.to_string().contains(&format!("/api/rollouts/{id}"))),
        "the staged change is audited with its id: {audit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_staged_change_that_the_canary_applies_reaches_the_whole_group() {
    let (stack, _dir, other) = start().await;
    let id = stage(&stack, r#"{"sensors": {"s1": {"lat": 48.5, "lon": 7.25}}}"#).await;
    // The canary (the real agent) applies it; then zz-other is sent it.
    let got = aeris_tests::wait_for(
        "zz-other sent the change",
        Duration::from_secs(30),
        || async { configures(&other).into_iter().next() },
    )
    .await;
    assert_eq!(got.0, id, "the fragment's version");
    assert!(got.1.contains("48.5"), "{}", got.1);
    let (_, mid) = call(&stack, "GET", &format!("/api/rollouts/{id}"), "").await;
    assert_eq!(mid["devices"][DEVICE]["state"], "confirmed", "{mid}");
    assert_eq!(mid["devices"][OTHER]["state"], "sent", "{mid}");
    assert_eq!(mid["done"], false, "{mid}");
    report(&other, id).await;
    let r = finished(&stack, id).await;
    assert_eq!(r["state"], "completed", "{r}");
    assert_eq!(
        (r["confirmed"].as_u64(), r["failed"].as_u64()),
        (Some(2), Some(0)),
        "{r}"
    );
    let (_, view) = call(&stack, "GET", &format!("/api/devices/{DEVICE}/config"), "").await;
    assert_eq!(view["status"]["state"], "converged", "{view}");
}

const MOVED: &str = r#"{"sensors": {"s1": {"lat": 48.5, "lon": 7.25}}}"#;
/// First by name: the canary, ahead of the real agent.
const CANARY: &str = "aa-canary";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_staged_change_halts_when_the_canary_stops_reporting() {
    let (stack, _dir, canary) = start_with_member(CANARY).await;
    let id = stage_with(&stack, MOVED, "3s").await;
    // The canary is sent it and never answers.
    let got = aeris_tests::wait_for("the canary sent it", Duration::from_secs(20), || async {
        configures(&canary).into_iter().next()
    })
    .await;
    assert_eq!(got.0, id);
    let r = finished(&stack, id).await;
    assert_eq!(r["state"], "halted", "{r}");
    assert_eq!(r["devices"][CANARY]["state"], "failed", "{r}");
    assert_eq!(r["devices"][DEVICE]["state"], "pending", "{r}");
    let (_, view) = call(&stack, "GET", &format!("/api/devices/{DEVICE}/config"), "").await;
    assert_eq!(
        view["effective"]["version"], 0,
        "the agent never got it: {view}"
    );
    assert_eq!(view["reported"]["applied"], 0, "{view}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_staged_change_resumes_after_the_gateway_is_killed() {
    let (mut stack, _dir, canary) = start_with_member(CANARY).await;
    let id = stage_with(&stack, MOVED, "60s").await;
    aeris_tests::wait_for("the canary sent it", Duration::from_secs(20), || async {
        configures(&canary).into_iter().next()
    })
    .await;
    stack.gateway.restart();
    // Same host: the restarted gateway takes its rollout back at once.
    aeris_tests::wait_for("the rollout resumed", Duration::from_secs(30), || async {
        stack
            .gateway
            .log()
            .contains("rollout resumed")
            .then_some(())
    })
    .await;
    report_as(&canary, CANARY, id).await;
    let r = finished(&stack, id).await;
    assert_eq!(r["state"], "completed", "{r}");
    assert_eq!(r["confirmed"], 2, "{r}");
    assert_eq!(
        configures(&canary).len(),
        1,
        "the canary was not sent it again: {:?}",
        canary.commands()
    );
    // The stored report follows (the run reads it from the broker first).
    aeris_tests::wait_for(
        "the agent's report stored",
        Duration::from_secs(10),
        || async {
            let path = format!("/api/devices/{DEVICE}/config");
            let (_, view) = call(&stack, "GET", &path, "").await;
            (view["reported"]["applied"] == id).then_some(())
        },
    )
    .await;
}
