//! The monitoring in `deploy/monitoring`: alert rules with promtool unit
//! tests, rules and dashboard naming only metrics the binaries export, and
//! a real Prometheus firing an alert against a running gateway and edge.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use aeris_tests::device::{reading, status, FakeDevice};
use aeris_tests::http::get;
use aeris_tests::prometheus::Prometheus;
use aeris_tests::stack::{Stack, DEVICE};
use aeris_tests::wait_for;
use aeris_wire::{encode, Batch, Topics};

fn monitoring(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/monitoring")
        .join(file)
}

fn read(file: &str) -> String {
    std::fs::read_to_string(monitoring(file)).unwrap_or_else(|e| panic!("{file}: {e}"))
}

/// Names of the alerts in the rules file.
fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(|n| n.trim().to_owned())
        .collect()
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(monitoring(""))
        .output()
        .expect("promtool: install the Debian package `prometheus` (scripts/test.sh does)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{text}");
    text
}

#[test]
fn every_alert_rule_has_passing_promtool_unit_tests() {
    promtool(&["check", "config", "prometheus.yml"]);
    let out = promtool(&["test", "rules", "aeris-alerts.test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let rules = read("aeris-alerts.yml");
    let tests = read("aeris-alerts.test.yml");
    let names = alert_names(&rules);
    assert!(names.len() >= 11, "{names:?}");
    for name in names {
        // Each rule is evaluated by name and expected to fire at least once
        // (an `exp_labels` follows its alertname somewhere).
        let fires = tests.split("alertname: ").skip(1).any(|case| {
            case.starts_with(&format!("{name}\n")) && {
                let body = case.split("- eval_time").next().unwrap_or("");
                body.contains("exp_labels")
            }
        });
        assert!(fires, "no promtool case where {name} fires");
    }
}

/// Every `aeris_*` metric name in `text`.
fn aeris_names(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("aeris_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(tail.len());
        // Not the tail of a longer identifier (e.g. a label value).
        let before = rest[..i].chars().last();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            out.insert(tail[..end].to_owned());
        }
        rest = &tail[end..];
    }
    out
}

/// Sample and family names in a Prometheus exposition, with the suffixes
/// a family's type implies (`_total` of counters, `_bucket`/`_sum`/`_count`
/// of histograms).
fn exported(exposition: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in exposition.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let mut w = t.split_whitespace();
            let (Some(name), Some(kind)) = (w.next(), w.next()) else {
                continue;
            };
            out.insert(name.to_owned());
            let suffixes: &[&str] = match kind {
                "counter" => &["_total"],
                "histogram" => &["_bucket", "_sum", "_count"],
                _ => &[],
            };
            for s in suffixes {
                out.insert(format!("{name}{s}"));
            }
        } else if !line.starts_with('#') {
            if let Some(name) = line.split(['{', ' ']).next() {
                out.insert(name.to_owned());
            }
        }
    }
    out
}

/// The expressions of every dashboard panel.
fn dashboard_exprs() -> Vec<String> {
    let dash: serde_json::Value = serde_json::from_str(&read("grafana/aeris-fleet.json")).unwrap();
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10);
    panels
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_and_dashboard_name_only_metrics_the_gateway_or_edge_exports() {
    let stack = Stack::start().await;
    // Families labelled by device or reason have samples only once their
    // event happened: a device reports evictions and a failed update, and
    // sends a batch naming another device (rejected).
    let dev = FakeDevice::connect(stack.cloud.port, "dev-mon").await;
    dev.send_status(&status("dev-mon", 10, 2)).await;
    let event = aeris_wire::Event {
        device: "dev-mon".into(),
        ts_ms: aeris_tests::now_ms(),
        kind: aeris_wire::EventKind::Ota,
        message: "update 2.0.0 failed its health check, rolled back".into(),
    };
    dev.publish(Topics::default().event("dev-mon"), encode(&event))
        .await;
    let other = Batch {
        device: "someone-else".into(),
        first_seq: 1,
        readings: vec![reading("s", aeris_tests::now_ms(), 1.0, 1.0, 1.0)],
    };
    dev.publish(Topics::default().batch("dev-mon"), encode(&other))
        .await;
    // A desired configuration dev-mon never applies: its drift gauge, read
    // from the database every 15 s.
    stack
        .db
        .client()
        .await
        .execute(
            "INSERT INTO config_desired (scope, name, fragment, set_by)
             VALUES ('device', 'dev-mon', '{}', 'monitoring test')",
            &[],
        )
        .await
        .unwrap();
    let gateway = wait_for("the devices' gauges", Duration::from_secs(40), || async {
        let (_, body) = get(stack.api_port, "/metrics").ok()?;
        let want = [
            format!("aeris_gateway_device_online{{device=\"{DEVICE}\"}} 1"),
            "aeris_gateway_device_readings_lost{device=\"dev-mon\",reason=\"evicted\"} 3".into(),
            "aeris_gateway_device_ota_failures_total{device=\"dev-mon\"} 1".into(),
            "aeris_gateway_messages_rejected_total{reason=\"device_mismatch\"} 1".into(),
            "aeris_gateway_device_config_drift{device=\"dev-mon\"} 1".into(),
        ];
        want.iter()
            .all(|w| body.contains(w.as_str()))
            .then_some(body)
    })
    .await;
    let (code, edge) = get(stack.edge_health, "/metrics").unwrap();
    assert_eq!(code, 200);
    let mut have = exported(&gateway);
    have.extend(exported(&edge));

    let exprs = dashboard_exprs();
    let mut named = aeris_names(&read("aeris-alerts.yml"));
    for e in &exprs {
        named.extend(aeris_names(e));
    }
    assert!(named.len() >= 20, "{named:?}");
    let missing: Vec<_> = named.iter().filter(|n| !have.contains(*n)).collect();
    assert!(
        missing.is_empty(),
        "named in deploy/monitoring but exported by neither binary: {missing:?}"
    );
    // The check itself can fail: a made-up name is caught.
    assert!(!have.contains("aeris_gateway_made_up_total"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_fires_device_offline_when_the_edge_stops() {
    let mut stack = Stack::start().await;
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         rule_files: [rules.yml]\n\
         scrape_configs:\n\
         \x20 - job_name: aeris-gateway\n    static_configs: [{{targets: ['127.0.0.1:{}']}}]\n\
         \x20 - job_name: aeris-edge\n    static_configs: [{{targets: ['127.0.0.1:{}']}}]\n",
        stack.api_port, stack.edge_health
    );
    // The shipped rules, with their `for:` hold times shortened so the test
    // does not wait five minutes.
    let rules: String = read("aeris-alerts.yml")
        .lines()
        .map(|l| {
            if l.trim_start().starts_with("for: ") {
                format!("{}for: 2s", &l[..l.len() - l.trim_start().len()])
            } else {
                l.to_owned()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let prom = Prometheus::start(&config, &rules);

    let online = format!("max by (device) (aeris_gateway_device_online{{device=\"{DEVICE}\"}})");
    wait_for(
        "prometheus to scrape the device online",
        Duration::from_secs(30),
        || async {
            let r = prom.query(&online);
            (r.first().and_then(|s| s["value"][1].as_str()) == Some("1")).then_some(())
        },
    )
    .await;
    let offline_alert = |alerts: &[serde_json::Value], state: &str| {
        alerts.iter().any(|a| {
            a["labels"]["alertname"] == "AerisDeviceOffline"
                && a["labels"]["device"] == DEVICE
                && a["state"] == state
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    let before = prom.alerts();
    assert!(
        !offline_alert(&before, "firing") && !offline_alert(&before, "pending"),
        "{before:?}"
    );

    // The edge stops: its offline status reaches the gateway, Prometheus
    // scrapes it, and the alert fires.
    stack.edge.terminate();
    wait_for(
        "AerisDeviceOffline firing",
        Duration::from_secs(40),
        || async { offline_alert(&prom.alerts(), "firing").then_some(()) },
    )
    .await;
}
