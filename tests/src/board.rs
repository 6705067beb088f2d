//! A board for the OTA scenarios and the rollback benchmark: the real agent
//! binary in slot a under its own OTA supervisor, a real Mosquitto for its
//! sensors with a reading every 100 ms, a real cloud (Mosquitto, gateway,
//! PostGIS, so batches are really acked), and an HTTP server holding the
//! packages. "New versions" are the host build of the agent in a package
//! whose signed manifest says another version, or scripts that fail.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aeris_wire::{encode, Command as WireCommand, CommandKind, Topics};

use crate::cloud::Cloud;
use crate::device::FakeDevice;
use crate::files::FileServer;
use crate::mosquitto::Mosquitto;
use crate::process::{binary, Proc};
use crate::sensors::{readings, Publisher};
use crate::stack::watch_events;

/// The board's device id.
pub const DEVICE: &str = "ota-1";

/// The host agent, stripped once (the debug build is hundreds of MB).
pub fn agent_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap().keep();
        let out = dir.join("aeris-edge");
        let st = Command::new("strip")
            .arg("-o")
            .arg(&out)
            .arg(binary("aeris-edge"))
            .status()
            .unwrap();
        assert!(st.success());
        out
    })
}

/// Runs `cmd`, which must succeed; its stdout, trimmed.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Makes a signed package folder `dir` holding `agent` (copied) as the
/// binary, at `version`.
pub fn package(dir: &Path, agent: &Path, version: &str, key: &Path, extra: &[&str]) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(agent, dir.join("aeris-edge")).unwrap();
    run(Command::new(binary("aeris-package"))
        .arg("sign")
        .arg("--dir")
        .arg(dir)
        .arg("--key")
        .arg(key)
        .args(["--version", version, "--target", "x86_64-test"])
        .args(extra));
}

/// The wire payload of `CommandKind::Ota` for the package at `dir`, served
/// at `url`.
pub fn update_payload(dir: &Path, url: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "format": 1,
        "url": url,
        "manifest": std::fs::read_to_string(dir.join("manifest.json")).unwrap(),
        "signature": std::fs::read_to_string(dir.join("manifest.json.sig")).unwrap(),
    }))
    .unwrap()
}

/// A board: the agent under its OTA supervisor, its sensor broker with
/// readings flowing, the cloud (broker, gateway, PostGIS), an operator
/// client and a package server.
pub struct Board {
    pub cloud: Cloud,
    pub local: Mosquitto,
    pub dir: tempfile::TempDir,
    /// `ota.root`: the slots and `current`.
    pub root: PathBuf,
    /// The signing key the board trusts.
    pub key: PathBuf,
    pub edge: Proc,
    /// Port of `/healthz` and `/metrics`.
    pub health: u16,
    pub operator: FakeDevice,
    /// The text of every `up/event` the cloud broker saw from the board.
    pub events: Arc<Mutex<Vec<String>>>,
    pub server: FileServer,
    _sensors: tokio::task::JoinHandle<()>,
}

/// How a test board differs from the default one.
pub struct Setup {
    /// The version in slot a.
    pub version: &'static str,
    /// `[ota]` keys added to the config.
    pub ota: &'static str,
    /// Environment added to the agent's (after the board's own, so it
    /// overrides them).
    pub env: Vec<(&'static str, String)>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            version: "0.1.0",
            // Short, so a failing update is rolled back and a good one
            // becomes current soon after its confirmation.
            ota: "trial_deadline = \"20s\"\nprobation = \"2s\"\n",
            env: Vec::new(),
        }
    }
}

impl Board {
    /// A board with version 0.1.0 in slot a (`current`), sensors publishing
    /// a reading every 100 ms, and a package server over `<dir>/www`.
    pub async fn start() -> Board {
        Board::start_with(Setup::default()).await
    }

    /// A board set up as `setup` says.
    pub async fn start_with(setup: Setup) -> Board {
        let cloud = Cloud::start(false).await;
        let local = Mosquitto::start();
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("ota");
        let key = dir.path().join("signing.key");
        let public = run(Command::new(binary("aeris-package"))
            .arg("keygen")
            .arg(&key));
        package(
            &root.join("slots/a"),
            agent_binary(),
            setup.version,
            &key,
            &[],
        );
        std::os::unix::fs::symlink("slots/a", root.join("current")).unwrap();
        let config = dir.path().join("edge.toml");
        std::fs::write(
            &config,
            format!(
                "[infer]\nenabled = false\n[ota]\nroot = {root:?}\ntrusted_keys = [\"{public}\"]\n{}",
                setup.ota
            ),
        )
        .unwrap();
        let health = crate::free_port();
        let mut env = vec![
            ("AERIS_DEVICE_ID", DEVICE.to_owned()),
            ("AERIS_HEALTH_LISTEN", format!("127.0.0.1:{health}")),
            (
                "AERIS_DATA_DIR",
                dir.path().join("data").display().to_string(),
            ),
            ("AERIS_LOCAL__PORT", local.port.to_string()),
            ("AERIS_CLOUD__PORT", cloud.broker.port.to_string()),
            ("AERIS_CLOUD__STATUS_INTERVAL", "300ms".to_owned()),
            ("AERIS_UPLINK__BATCH_MAX_AGE", "100ms".to_owned()),
        ];
        env.extend(setup.env);
        let edge = Proc::start_program(
            "aeris-edge",
            root.join("current/aeris-edge"),
            vec!["--config".into(), config.display().to_string()],
            &env,
            dir.path().join("edge.log"),
        );
        let events = watch_events(cloud.broker.port, DEVICE).await;
        let operator = FakeDevice::connect(cloud.broker.port, "operator").await;
        let sensors = Publisher::connect(local.port).await;
        let sensors = tokio::spawn(async move {
            for r in readings(100_000, 4) {
                sensors.publish(&r).await;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        std::fs::create_dir_all(dir.path().join("www")).unwrap();
        let server = FileServer::start(dir.path().join("www")).await;
        let board = Board {
            cloud,
            local,
            dir,
            root,
            key,
            edge,
            health,
            operator,
            events,
            server,
            _sensors: sensors,
        };
        board.wait_rows_grow().await;
        board
    }

    /// A package named `name` under the server's folder.
    pub fn publish_package(
        &self,
        name: &str,
        agent: &Path,
        version: &str,
        extra: &[&str],
    ) -> PathBuf {
        let dir = self.dir.path().join("www").join(name);
        package(&dir, agent, version, &self.key, extra);
        dir
    }

    /// Sends update command `id` with `payload` on `down/cmd`.
    pub async fn send_update(&self, id: u64, payload: Vec<u8>) {
        let cmd = WireCommand {
            id,
            kind: CommandKind::Ota { manifest: payload },
        };
        self.operator
            .publish(Topics::default().cmd(DEVICE), encode(&cmd))
            .await;
    }

    pub fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    pub async fn wait_event(&self, needle: &str, timeout: Duration) -> String {
        let start = std::time::Instant::now();
        loop {
            if let Some(e) = self.events().into_iter().find(|e| e.contains(needle)) {
                return e;
            }
            assert!(
                start.elapsed() < timeout,
                "no event with {needle:?} after {timeout:?}; events: {:#?}\n--- edge ---\n{}",
                self.events(),
                self.edge.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Where `current` points (`slots/a` or `slots/b`).
    pub fn current(&self) -> String {
        std::fs::read_link(self.root.join("current"))
            .unwrap()
            .display()
            .to_string()
    }

    /// Waits until more rows reach PostGIS than now: the running agent
    /// takes readings and gets them acked.
    pub async fn wait_rows_grow(&self) {
        let before = self.cloud.rows(DEVICE).await;
        let start = std::time::Instant::now();
        while self.cloud.rows(DEVICE).await <= before + 2 {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no new rows\n--- edge ---\n{}\n{}",
                self.edge.log(),
                self.cloud.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Board {
    /// SIGTERM, so an agent supervising a new version stops it too.
    fn drop(&mut self) {
        self.edge.terminate();
    }
}

/// Shell script standing in for a broken new version.
pub fn failing_agent(dir: &Path) -> PathBuf {
    let p = dir.join("broken-agent");
    std::fs::write(&p, "#!/bin/sh\necho 'broken build' >&2\nexit 3\n").unwrap();
    p
}

/// Makes a signed package at `dir` (at `version`) whose `aeris-edge` is a
/// shell script: `body` after a preamble that sets `$here`, with the host agent beside it as
/// `$here/agent` (made executable by the preamble; a slot keeps only the
/// binary's mode).
pub fn package_script(dir: &Path, key: &Path, version: &str, body: &str) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(agent_binary(), dir.join("agent")).unwrap();
    std::fs::write(
        dir.join("aeris-edge"),
        format!("#!/bin/sh\nhere=$(dirname \"$0\")\nchmod +x \"$here/agent\"\n{body}"),
    )
    .unwrap();
    run(Command::new(binary("aeris-package"))
        .arg("sign")
        .arg("--dir")
        .arg(dir)
        .arg("--key")
        .arg(key)
        .args(["--version", version, "--target", "x86_64-test"]));
}
