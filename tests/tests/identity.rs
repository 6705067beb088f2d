//! Device identity: the broker's ACL (deploy/mosquitto/aeris.acl) keeps a
//! device to its own topics, and the gateway refuses and counts a payload
//! that names another device than its topic.

use std::path::Path;
use std::time::Duration;

use aeris_tests::cloud::Gateway;
use aeris_tests::device::{reading, FakeDevice};
use aeris_tests::mosquitto::Mosquitto;
use aeris_tests::now_ms;
use aeris_tests::postgres::TestDb;
use aeris_wire::{encode, Batch, Topics};

fn batch(device: &str, first_seq: u64) -> Batch {
    Batch {
        device: device.into(),
        first_seq,
        readings: vec![reading("s", now_ms() - 1000, 50.0, 8.0, 3.0)],
    }
}

async fn rows(db: &TestDb, device: &str) -> i64 {
    db.client()
        .await
        .query_one(
            "SELECT count(*) FROM readings WHERE device_id = $1",
            &[&device],
        )
        .await
        .map(|r| r.get(0))
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_write_under_another_devices_identity() {
    let acl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto/aeris.acl");
    let broker = Mosquitto::start_with_auth(
        &[
            ("aeris-gateway", "gw-secret"),
            ("dev-a", "a-secret"),
            ("dev-b", "b-secret"),
        ],
        &acl,
    );
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let gw =
        Gateway::start_authenticated(broker.port, &db.url, dir.path().join("gateway.log")).await;
    let a = FakeDevice::connect_as(broker.port, "dev-a", Some(("dev-a", "a-secret"))).await;
    let topics = Topics::default();

    // 1. On another device's topic, even with a matching payload: the
    //    broker's ACL drops it (MQTT 3.1.1 still PUBACKs; nothing is delivered).
    a.publish(topics.batch("dev-b"), encode(&batch("dev-b", 1)))
        .await;
    // 2. On its own topic, naming another device: the gateway refuses it.
    a.publish(topics.batch("dev-a"), encode(&batch("dev-b", 2)))
        .await;
    // 3. Its own data: stored and acked. Sent last, so once it is acked the
    //    two before it have been dealt with.
    a.send(&batch("dev-a", 1)).await;
    assert!(
        a.wait_acked(1, Duration::from_secs(20)).await,
        "{}\n{}",
        gw.proc.log(),
        broker.log()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rows(&db, "dev-a").await, 1);
    assert_eq!(rows(&db, "dev-b").await, 0, "a device wrote as another");
    assert_eq!(
        gw.metric("aeris_gateway_messages_rejected_total{reason=\"device_mismatch\"}"),
        1.0
    );
    assert!(
        broker.log().contains("Denied PUBLISH from dev-a"),
        "the broker's ACL refused the foreign topic\n{}",
        broker.log()
    );
    // An unknown client or a wrong password does not get in at all.
    let intruder = FakeDevice::connect_as(broker.port, "dev-b", Some(("dev-b", "wrong"))).await;
    intruder.send(&batch("dev-b", 5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(rows(&db, "dev-b").await, 0);
}

/// Runs `openssl` with `args` in `dir`.
fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a broker certificate, and a client certificate with CN `dev-a`.
fn certificates(dir: &Path) {
    let days = ["-days", "2"];
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-subj",
            "/CN=aeris-test-ca",
            days[0],
            days[1],
        ],
    );
    for (name, cn) in [("broker", "127.0.0.1"), ("dev-a", "dev-a")] {
        let (key, csr, pem) = (
            format!("{name}.key"),
            format!("{name}.csr"),
            format!("{name}.pem"),
        );
        openssl(
            dir,
            &[
                "req",
                "-new",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                &key,
                "-out",
                &csr,
                "-subj",
                &format!("/CN={cn}"),
            ],
        );
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &pem,
                days[0],
                days[1],
            ],
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_client_certificate_names_the_device_and_the_acl_holds_it_to_its_topic() {
    let acl = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/mosquitto/aeris.acl");
    // A new TLS port on each start attempt (a port picked free can be taken
    // before the broker binds it).
    let tls = std::cell::Cell::new(0u16);
    let broker = Mosquitto::start_with_auth_and(&[("aeris-gateway", "gw-secret")], &acl, |dir| {
        certificates(dir);
        let tls_port = aeris_tests::free_port();
        tls.set(tls_port);
        format!(
            "listener {tls_port} 127.0.0.1\ncafile {d}/ca.pem\ncertfile {d}/broker.pem\nkeyfile {d}/broker.key\n\
             require_certificate true\nuse_identity_as_username true\n",
            d = dir.display()
        )
    });
    let tls_port = tls.get();
    let db = TestDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let _gw =
        Gateway::start_authenticated(broker.port, &db.url, dir.path().join("gateway.log")).await;
    let certs = broker.dir().to_owned();
    let publish = |topic: String, batch: Batch| {
        let file = dir.path().join("batch.bin");
        std::fs::write(&file, encode(&batch)).unwrap();
        let out = std::process::Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &tls_port.to_string(),
                "-q",
                "1",
                "--insecure",
            ])
            .arg("--cafile")
            .arg(certs.join("ca.pem"))
            .arg("--cert")
            .arg(certs.join("dev-a.pem"))
            .arg("--key")
            .arg(certs.join("dev-a.key"))
            .args(["-i", "dev-a-pub", "-t", &topic, "-f"])
            .arg(&file)
            .output()
            .expect("mosquitto_pub (Debian package mosquitto-clients)");
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stderr),
            broker.log()
        );
    };
    let topics = Topics::default();
    publish(topics.batch("dev-b"), batch("dev-b", 1));
    publish(topics.batch("dev-a"), batch("dev-a", 1));
    aeris_tests::wait_for("dev-a's reading", Duration::from_secs(20), || async {
        (rows(&db, "dev-a").await == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        rows(&db, "dev-b").await,
        0,
        "the certificate of dev-a wrote as dev-b"
    );
    assert!(
        broker.log().contains("Denied PUBLISH from dev-a-pub"),
        "{}",
        broker.log()
    );
}
