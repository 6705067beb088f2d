//! The HTTP API's bearer tokens, scopes, rate limit and audit log, against a
//! real broker, PostGIS database and gateway process.

use std::time::Duration;

use aeris_tests::cloud::Cloud;
use aeris_tests::device::{batch, status, FakeDevice};
use aeris_tests::http::{get, metric, request};
use aeris_tests::{now_ms, wait_for};
use aeris_wire::CommandKind;
use sha2::{Digest, Sha256};

const DEV: &str = "dev-sec";
const VIEWER: &str = "viewer-secret-token";
const OPS: &str = "ops-secret-token";
const BULK: &str = "bulk-secret-token";

fn sha(t: &str) -> String {
    hex::encode(Sha256::digest(t.as_bytes()))
}

/// A gateway config with three clients and a tight rate limit.
fn auth_toml() -> String {
    format!(
        r#"
[api.rate_limit]
per_second = 0.5
burst = 8

[[api.auth.tokens]]
name = "viewer"
sha256 = "{}"
scopes = ["read"]

[[api.auth.tokens]]
name = "alice"
sha256 = "{}"
scopes = ["operate"]

[[api.auth.tokens]]
name = "bulk"
sha256 = "{}"
scopes = ["read"]
"#,
        sha(VIEWER),
        sha(OPS),
        sha(BULK)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_endpoints_need_an_operate_token_and_every_action_is_audited() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    std::fs::write(&config, auth_toml()).unwrap();
    let cloud = Cloud::start_with(
        false,
        &[("AERIS_GATEWAY_CONFIG", config.display().to_string())],
    )
    .await;
    let port = cloud.gateway.api_port;

    // The database holds seqs 1..=3 and 6..=7 of the device: 4 and 5 are a
    // hole, so a re-send must start at 4, not after the highest seq.
    let dev = FakeDevice::connect(cloud.broker.port, DEV).await;
    let t0 = now_ms() - 60_000;
    dev.send(&batch(DEV, 1, 3, t0)).await;
    dev.send(&batch(DEV, 6, 2, t0)).await;
    dev.send_status(&status(DEV, 7, 0)).await;
    assert!(
        dev.wait_acked(7, Duration::from_secs(20)).await,
        "{}",
        cloud.logs()
    );
    assert!(
        dev.wait_acked(3, Duration::from_secs(20)).await,
        "{}",
        cloud.logs()
    );

    // Probes and metrics stay open; reads need a token once tokens exist.
    assert_eq!(get(port, "/healthz").unwrap().0, 200);
    assert_eq!(get(port, "/readyz").unwrap().0, 200);
    assert_eq!(get(port, "/api/devices").unwrap().0, 401);
    let (code, body) = request(port, "GET", "/api/devices", Some(VIEWER)).unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        request(port, "GET", "/api/devices", Some(OPS)).unwrap().0,
        200
    );
    // Issue 16 (6): the OpenAQ-style reads, the hours and the AQCSV
    // export are reads like the others.
    for path in [
        "/v3/locations",
        "/v3/sensors/1/hours",
        "/api/hours?device=d&sensor=s",
        "/api/export/aqcsv",
    ] {
        assert_eq!(get(port, path).unwrap().0, 401, "{path}");
        let (code, body) = request(port, "GET", path, Some(VIEWER)).unwrap();
        assert!(matches!(code, 200 | 404), "{path}: {code} {body}");
    }

    // The operator endpoint: no token, a wrong token, a read-only token.
    let resend = "/api/ops/resend";
    let (code, body) = request(port, "POST", resend, None).unwrap();
    assert_eq!(code, 401, "no token: {body}");
    let (code, body) = request(port, "POST", resend, Some("not-a-token")).unwrap();
    assert_eq!(code, 401, "wrong token: {body}");
    let (code, body) = request(port, "POST", resend, Some(VIEWER)).unwrap();
    assert_eq!(code, 403, "read-only token: {body}");
    assert!(body.contains("operate"), "{body}");
    assert!(dev.commands().is_empty(), "a refused request did nothing");
    assert_eq!(
        request(port, "GET", "/api/audit", Some(VIEWER)).unwrap().0,
        403
    );

    // With the operate token the action runs and reaches the device.
    let (code, body) = request(port, "POST", resend, Some(OPS)).unwrap();
    assert_eq!(code, 200, "{body}\n{}", cloud.logs());
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let target = report["targets"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["device"] == DEV)
        .unwrap_or_else(|| panic!("{DEV} not targeted: {body}"))
        .clone();
    assert_eq!(target["from_seq"], 4, "{body}");
    assert_eq!(target["stored"], 5, "{body}");
    let cmd = wait_for("the re-send command", Duration::from_secs(10), || async {
        dev.commands().into_iter().next()
    })
    .await;
    assert_eq!(cmd.kind, CommandKind::Resend { from_seq: 4 });
    assert_eq!(cmd.id, report["command_id"].as_u64().unwrap());

    // The audit row: who, when, what, outcome; listed by the endpoint and in
    // the table. Refused requests are not actions.
    let (code, body) = request(port, "GET", "/api/audit", Some(OPS)).unwrap();
    assert_eq!(code, 200, "{body}");
    let rows: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(rows.len(), 1, "{body}");
    assert_eq!(rows[0]["actor"], "alice");
    assert_eq!(rows[0]["action"], "resend");
    assert_eq!(rows[0]["outcome"], "ok");
    let at = rows[0]["at_ms"].as_i64().unwrap();
    assert!((now_ms() - at).abs() < 60_000, "audit time {at}");
    assert_eq!(rows[0]["detail"]["targets"][0]["from_seq"], 4);
    let db = cloud.db.client().await;
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM audit_log WHERE actor = 'alice' AND action = 'resend' AND outcome = 'ok'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    assert_eq!(
        metric(
            port,
            "aeris_gateway_operator_actions_total{action=\"resend\",outcome=\"ok\"}"
        ),
        1.0
    );
    assert!(metric(port, "aeris_gateway_api_refused_total{reason=\"no_token\"}") >= 1.0);
    assert!(
        metric(
            port,
            "aeris_gateway_api_refused_total{reason=\"bad_token\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            port,
            "aeris_gateway_api_refused_total{reason=\"forbidden\"}"
        ) >= 2.0
    );

    // The rate limit is per client: one token's flood gets 429 with
    // Retry-After, another token is still served.
    let mut limited = 0;
    for _ in 0..20 {
        let (code, _) = request(port, "GET", "/api/devices", Some(BULK)).unwrap();
        assert!(code == 200 || code == 429, "{code}");
        limited += usize::from(code == 429);
    }
    assert!(limited >= 10, "only {limited} of 20 requests were limited");
    assert_eq!(
        request(port, "GET", "/api/devices", Some(VIEWER))
            .unwrap()
            .0,
        200
    );
    assert!(
        metric(
            port,
            "aeris_gateway_api_refused_total{reason=\"rate_limited\"}"
        ) >= 10.0
    );
}
