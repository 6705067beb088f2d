//! The agent under systemd: the shipped unit passes `systemd-analyze verify`,
//! and the agent speaks the sd_notify protocol to a socket the test binds
//! (what systemd does for a `Type=notify` unit with `WatchdogSec`).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use aeris_tests::mosquitto::Mosquitto;
use aeris_tests::process::{binary, Proc};

const UNIT: &str = "aeris-edge.service";

fn unit_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/systemd")
        .join(UNIT)
}

/// `systemd-analyze verify` on `text` saved as the unit, with its ExecStart
/// binary replaced by the agent from the target dir (the board's path does
/// not exist here, and verify checks that the binary is executable).
fn verify(text: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let text = text.replace(
        "/var/lib/aeris-edge/current/aeris-edge",
        &binary("aeris-edge").display().to_string(),
    );
    let path = dir.path().join(UNIT);
    std::fs::write(&path, text).unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .current_dir(dir.path())
        .output()
        .expect("systemd-analyze (Debian package systemd; scripts/test.sh installs it)");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.success() && err.trim().is_empty(), err)
}

#[test]
fn shipped_unit_passes_systemd_analyze_verify_with_no_warning() {
    let text = std::fs::read_to_string(unit_path()).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "Restart=on-failure",
        "DynamicUser=yes",
        "StateDirectory=aeris-edge",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "SystemCallFilter=@system-service",
        "ExecStart=/var/lib/aeris-edge/current/aeris-edge ",
    ] {
        assert!(text.contains(line), "{UNIT} lacks {line:?}");
    }
    let (ok, err) = verify(&text);
    assert!(ok, "systemd-analyze verify {UNIT}:\n{err}");
    // The check can fail: a misspelt key is reported.
    let (ok, err) = verify(&text.replace("WatchdogSec=", "WatchdogSecs="));
    assert!(!ok && err.contains("WatchdogSecs"), "{err}");
}

/// What the agent sent to the notify socket, in order, with arrival times.
struct Notifications {
    sock: UnixDatagram,
    seen: Vec<(Instant, String)>,
}

impl Notifications {
    fn bind(path: &Path) -> Notifications {
        let sock = UnixDatagram::bind(path).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        Notifications {
            sock,
            seen: Vec::new(),
        }
    }

    /// Reads datagrams for `d`.
    fn collect_for(&mut self, d: Duration) {
        let end = Instant::now() + d;
        let mut buf = [0u8; 4096];
        while Instant::now() < end {
            if let Ok(n) = self.sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
                self.seen.push((Instant::now(), msg));
            }
        }
    }

    fn count(&self, line: &str) -> usize {
        self.seen
            .iter()
            .filter(|(_, m)| m.lines().any(|l| l == line))
            .count()
    }
}

#[test]
fn agent_notifies_ready_only_once_subscribed_and_feeds_the_watchdog() {
    let dir = tempfile::tempdir().unwrap();
    let sock_path = dir.path().join("notify.sock");
    let mut notes = Notifications::bind(&sock_path);
    // The sensor broker's port is known but nothing listens yet.
    let mut local = Mosquitto::start();
    local.kill();
    let cloud = Mosquitto::start();
    let mut edge = Proc::start(
        "aeris-edge",
        &[
            ("NOTIFY_SOCKET", sock_path.display().to_string()),
            ("WATCHDOG_USEC", "1000000".to_owned()),
            ("AERIS_DEVICE_ID", "notify-1".to_owned()),
            ("AERIS_HEALTH_LISTEN", String::new()),
            (
                "AERIS_DATA_DIR",
                dir.path().join("edge").display().to_string(),
            ),
            ("AERIS_LOCAL__PORT", local.port.to_string()),
            ("AERIS_CLOUD__PORT", cloud.port.to_string()),
        ],
        dir.path().join("edge.log"),
    );
    notes.collect_for(Duration::from_secs(4));
    assert_eq!(
        notes.count("READY=1"),
        0,
        "READY=1 before the sensor subscription\n{}",
        edge.log()
    );
    assert!(
        notes
            .seen
            .iter()
            .any(|(_, m)| m.contains("STATUS=starting")),
        "no STATUS line while starting: {:?}",
        notes.seen
    );
    // Alive while waiting for its broker: the watchdog is fed (every 0.5 s).
    assert!(
        notes.count("WATCHDOG=1") >= 4,
        "watchdog not fed while waiting: {:?}",
        notes.seen
    );

    local.restart(Duration::ZERO);
    let start = Instant::now();
    while notes.count("READY=1") == 0 && start.elapsed() < Duration::from_secs(30) {
        notes.collect_for(Duration::from_millis(200));
    }
    assert_eq!(
        notes.count("READY=1"),
        1,
        "no READY=1 after the broker came\n{}",
        edge.log()
    );
    assert!(edge.log().contains("subscribed to sensor topic"));
    let ready_at = notes
        .seen
        .iter()
        .find(|(_, m)| m.contains("READY=1"))
        .map(|(t, _)| *t)
        .unwrap();

    notes.collect_for(Duration::from_secs(3));
    let pings_after = notes
        .seen
        .iter()
        .filter(|(t, m)| *t > ready_at && m.contains("WATCHDOG=1"))
        .count();
    assert!(
        pings_after >= 4,
        "watchdog pings stopped after READY=1: {:?}",
        notes.seen
    );
    assert!(notes
        .seen
        .iter()
        .any(|(t, m)| *t > ready_at && m.contains("STATUS=running: 0 readings held")));
    assert_eq!(notes.count("READY=1"), 1, "READY=1 sent twice");

    edge.terminate();
    notes.collect_for(Duration::from_millis(300));
    assert!(notes.count("STOPPING=1") >= 1, "{:?}", notes.seen);
}
