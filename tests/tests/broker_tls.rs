//! Issue 14 (6): the gateway reaches the broker over mutual TLS, with the
//! same rustls (ring) loader as the devices: against a Mosquitto that
//! requires a client certificate it connects, stores a batch and acks it;
//! with the wrong CA, or a certificate the broker does not trust, it is
//! refused, says why in its log and counts it; a missing file stops it at
//! start with the key named.

use std::path::Path;
use std::time::Duration;

use aeris_tests::cloud::Gateway;
use aeris_tests::device::{batch, FakeDevice};
use aeris_tests::http::metric;
use aeris_tests::mosquitto::Mosquitto;
use aeris_tests::pki::Ca;
use aeris_tests::postgres::TestDb;
use aeris_tests::{now_ms, wait_for};

const DEV: &str = "dev-tls";

/// A broker with the deployment ACL, a plain listener for the (password)
/// devices and a TLS listener that requires a client certificate and takes
/// its CN as the user name. Returns the broker and the TLS port.
fn tls_broker(ca: &Ca) -> (Mosquitto, u16) {
    let acl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto/aeris.acl");
    let tls = std::cell::Cell::new(0u16);
    let broker = Mosquitto::start_with_auth_and(&[(DEV, "dev-secret")], &acl, |dir| {
        ca.write(dir, &[("broker", "127.0.0.1", true)]);
        let port = aeris_tests::free_port();
        tls.set(port);
        format!(
            "listener {port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/broker.pem\nkeyfile {d}/broker.key\n\
             require_certificate true\nuse_identity_as_username true\n",
            d = dir.display()
        )
    });
    (broker, tls.get())
}

/// A gateway on the TLS port trusting `ca_pem` and presenting `cert`.
fn tls_gateway(
    dir: &Path,
    name: &str,
    tls_port: u16,
    db_url: &str,
    ca_pem: &str,
    cert: (String, String),
) -> Gateway {
    let file = |suffix: &str, text: &str| {
        let p = dir.join(format!("{name}-{suffix}"));
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    Gateway::start(
        tls_port,
        db_url,
        &[
            ("AERIS_BROKER__TLS__CA_FILE", file("ca.pem", ca_pem)),
            ("AERIS_BROKER__TLS__CERT_FILE", file("cert.pem", &cert.0)),
            ("AERIS_BROKER__TLS__KEY_FILE", file("key.pem", &cert.1)),
            ("AERIS_BROKER__CLIENT_ID", format!("aeris-gateway-{name}")),
        ],
        dir.join(format!("{name}.log")),
    )
}

async fn tls_failures(gw: &Gateway, what: &str) {
    wait_for(what, Duration::from_secs(30), || async {
        (gw.metric("aeris_gateway_broker_connect_failures_total{reason=\"tls\"}") >= 1.0)
            .then_some(())
    })
    .await;
    assert_eq!(
        aeris_tests::http::get(gw.api_port, "/readyz").unwrap().0,
        503,
        "not ready without the broker"
    );
    assert!(
        gw.proc.log().contains("TLS with the broker failed"),
        "{}",
        gw.proc.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_reaches_the_broker_over_mutual_tls_and_refuses_a_wrong_ca() {
    let ca = Ca::new("aeris-test-ca");
    let (broker, tls_port) = tls_broker(&ca);
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();

    // The wrong CA: the broker's certificate does not chain to it.
    let rogue = Ca::new("rogue-ca");
    let wrong_ca = tls_gateway(
        dir.path(),
        "wrong-ca",
        tls_port,
        &db.url,
        &rogue.pem,
        ca.issue("aeris-gateway", false),
    );
    tls_failures(&wrong_ca, "the wrong CA to be refused").await;
    assert!(
        wrong_ca.proc.log().contains("UnknownIssuer"),
        "{}",
        wrong_ca.proc.log()
    );
    // A client certificate the broker does not trust.
    let foreign = tls_gateway(
        dir.path(),
        "foreign-cert",
        tls_port,
        &db.url,
        &ca.pem,
        rogue.issue("aeris-gateway", false),
    );
    tls_failures(&foreign, "the foreign certificate to be refused").await;
    drop((wrong_ca, foreign));

    // The right pair: connected, subscribed, stores and acks.
    let gw = tls_gateway(
        dir.path(),
        "good",
        tls_port,
        &db.url,
        &ca.pem,
        ca.issue("aeris-gateway", false),
    );
    gw.wait_ready(Duration::from_secs(30)).await;
    let dev = FakeDevice::connect_as(broker.port, DEV, Some((DEV, "dev-secret"))).await;
    dev.send(&batch(DEV, 1, 20, now_ms() - 60_000)).await;
    assert!(
        dev.wait_acked(20, Duration::from_secs(20)).await,
        "{}\n{}",
        gw.proc.log(),
        broker.log()
    );
    let rows: i64 = db
        .client()
        .await
        .query_one(
            "SELECT count(*) FROM readings WHERE device_id = $1",
            &[&DEV],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 20);
    assert_eq!(
        metric(
            gw.api_port,
            "aeris_gateway_broker_connect_failures_total{reason=\"tls\"}"
        ),
        0.0
    );
}

#[test]
fn a_missing_tls_file_stops_the_gateway_at_start_naming_the_key() {
    let out = std::process::Command::new(aeris_tests::process::binary("aeris-gateway"))
        .arg("--print-config")
        .env("AERIS_BROKER__TLS__CA_FILE", "/nonexistent/ca.pem")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("broker.tls.ca_file") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
}
