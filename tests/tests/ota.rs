//! Over-the-air updates of the agent, with real agent processes in A/B
//! slots, a real Mosquitto on each side, a gateway committing to PostGIS
//! (so batches are really acked), and an HTTP server holding the packages.
//! "New versions" are the host build of the agent in a package whose signed
//! manifest says 0.2.0; failing versions are a script that exits.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use aeris_tests::cloud::Cloud;
use aeris_tests::device::FakeDevice;
use aeris_tests::files::FileServer;
use aeris_tests::mosquitto::Mosquitto;
use aeris_tests::process::{binary, Proc};
use aeris_tests::sensors::{readings, Publisher};
use aeris_tests::stack::watch_events;
use aeris_wire::{encode, Command as WireCommand, CommandKind, Topics};

const DEVICE: &str = "ota-1";

/// The host agent, stripped once (the debug build is hundreds of MB).
fn agent_binary() -> &'static Path {
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

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// Makes a signed package folder `dir` holding `agent` (copied) as the
/// binary, at `version`.
fn package(dir: &Path, agent: &Path, version: &str, key: &Path, extra: &[&str]) {
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
fn update_payload(dir: &Path, url: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "format": 1,
        "url": url,
        "manifest": std::fs::read_to_string(dir.join("manifest.json")).unwrap(),
        "signature": std::fs::read_to_string(dir.join("manifest.json.sig")).unwrap(),
    }))
    .unwrap()
}

struct Board {
    cloud: Cloud,
    _local: Mosquitto,
    dir: tempfile::TempDir,
    root: PathBuf,
    key: PathBuf,
    edge: Proc,
    health: u16,
    operator: FakeDevice,
    events: Arc<Mutex<Vec<String>>>,
    server: FileServer,
    _sensors: tokio::task::JoinHandle<()>,
}

/// How a test board differs from the default one.
struct Setup {
    /// The version in slot a.
    version: &'static str,
    /// `[ota]` keys added to the config.
    ota: &'static str,
    /// Environment added to the agent's.
    env: Vec<(&'static str, String)>,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            version: "0.1.0",
            // Short, so a good update becomes current soon after its
            // confirmation.
            ota: "probation = \"2s\"\n",
            env: Vec::new(),
        }
    }
}

impl Board {
    /// A board with version 0.1.0 in slot a (`current`), sensors publishing
    /// a reading every 100 ms, and a package server over `<dir>/www`.
    async fn start() -> Board {
        Board::start_with(Setup::default()).await
    }

    async fn start_with(setup: Setup) -> Board {
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
                "[infer]\nenabled = false\n[ota]\nroot = {root:?}\ntrusted_keys = [\"{public}\"]\ntrial_deadline = \"20s\"\n{}",
                setup.ota
            ),
        )
        .unwrap();
        let health = aeris_tests::free_port();
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
            _local: local,
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
    fn publish_package(&self, name: &str, agent: &Path, version: &str, extra: &[&str]) -> PathBuf {
        let dir = self.dir.path().join("www").join(name);
        package(&dir, agent, version, &self.key, extra);
        dir
    }

    async fn send_update(&self, id: u64, payload: Vec<u8>) {
        let cmd = WireCommand {
            id,
            kind: CommandKind::Ota { manifest: payload },
        };
        self.operator
            .publish(Topics::default().cmd(DEVICE), encode(&cmd))
            .await;
    }

    fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }

    async fn wait_event(&self, needle: &str, timeout: Duration) -> String {
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

    fn current(&self) -> String {
        std::fs::read_link(self.root.join("current"))
            .unwrap()
            .display()
            .to_string()
    }

    /// Waits until more rows reach PostGIS than now: the running agent
    /// takes readings and gets them acked.
    async fn wait_rows_grow(&self) {
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
fn failing_agent(dir: &Path) -> PathBuf {
    let p = dir.join("broken-agent");
    std::fs::write(&p, "#!/bin/sh\necho 'broken build' >&2\nexit 3\n").unwrap();
    p
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn good_update_is_tried_confirmed_and_becomes_current() {
    let board = Board::start().await;
    let pkg = board.publish_package("v2", agent_binary(), "0.2.0", &[]);
    board
        .send_update(
            7,
            update_payload(&pkg, &format!("{}v2/", board.server.url())),
        )
        .await;
    board
        .wait_event("ota 7: accepted", Duration::from_secs(30))
        .await;
    board
        .wait_event("ota 7: installed", Duration::from_secs(60))
        .await;
    board
        .wait_event("ota 7: confirmed", Duration::from_secs(60))
        .await;
    // After its probation (2 s here) the new version is current.
    board
        .wait_event("ota 7: kept", Duration::from_secs(30))
        .await;
    let start = std::time::Instant::now();
    while board.current() != "slots/b" {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "current not switched"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(board.events().iter().all(|e| !e.contains("rolled back")));
    // The new version does the work now and says so.
    board.wait_rows_grow().await;
    let (_, body) = aeris_tests::http_get(board.health, "/metrics")
        .await
        .unwrap();
    assert!(aeris_tests::metric(&body, "aeris_edge_ingest_accepted_total").unwrap_or(0.0) > 0.0);
    let status = aeris_tests::stack::watch_status(board.cloud.broker.port, DEVICE).await;
    let mut status = status;
    let start = std::time::Instant::now();
    loop {
        if status
            .borrow()
            .as_ref()
            .is_some_and(|s| s.agent_version == "0.2.0")
        {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "status never showed 0.2.0"
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), status.changed()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_with_a_bad_signature_is_refused_before_any_download() {
    let board = Board::start().await;
    let pkg = board.publish_package("v2", agent_binary(), "0.2.0", &[]);
    // Signed by a key the board does not trust.
    let other = board.dir.path().join("other.key");
    run(Command::new(binary("aeris-package"))
        .arg("keygen")
        .arg(&other));
    run(Command::new(binary("aeris-package"))
        .arg("sign")
        .arg("--dir")
        .arg(&pkg)
        .arg("--key")
        .arg(&other)
        .args(["--version", "0.2.0"]));
    board
        .send_update(
            8,
            update_payload(&pkg, &format!("{}v2/", board.server.url())),
        )
        .await;
    board
        .wait_event("ota 8: refused (signature)", Duration::from_secs(30))
        .await;
    assert!(
        board.server.requests().is_empty(),
        "{:?}",
        board.server.requests()
    );
    assert_eq!(board.current(), "slots/a");
    assert!(!board.root.join("slots/b").exists());
    board.wait_rows_grow().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupted_download_is_refused_and_the_agent_keeps_running() {
    let board = Board::start().await;
    let pkg = board.publish_package("v2", agent_binary(), "0.2.0", &[]);
    // The served binary differs from the signed one in one byte.
    let bin = pkg.join("aeris-edge");
    let mut bytes = std::fs::read(&bin).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0x01;
    std::fs::write(&bin, bytes).unwrap();
    board
        .send_update(
            9,
            update_payload(&pkg, &format!("{}v2/", board.server.url())),
        )
        .await;
    let e = board
        .wait_event("ota 9: refused (checksum)", Duration::from_secs(60))
        .await;
    assert!(e.contains("aeris-edge"), "{e}");
    assert_eq!(board.current(), "slots/a");
    assert!(!board.root.join("trial.json").exists());
    board.wait_rows_grow().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_version_failing_its_trial_is_rolled_back_by_the_old_one() {
    let board = Board::start().await;
    let broken = failing_agent(board.dir.path());
    let pkg = board.publish_package("v2", &broken, "0.2.0", &[]);
    board
        .send_update(
            10,
            update_payload(&pkg, &format!("{}v2/", board.server.url())),
        )
        .await;
    board
        .wait_event("ota 10: installed", Duration::from_secs(30))
        .await;
    let e = board
        .wait_event("ota 10: rolled back", Duration::from_secs(60))
        .await;
    assert!(e.contains("exited"), "{e}");
    assert_eq!(board.current(), "slots/a");
    assert!(!board.root.join("trial.json").exists());
    // The old version runs its pipeline again.
    board.wait_rows_grow().await;
    let (_, body) = aeris_tests::http_get(board.health, "/metrics")
        .await
        .unwrap();
    assert_eq!(
        aeris_tests::metric(&body, "aeris_edge_ota_rollbacks_total"),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_version_that_never_proves_itself_is_rolled_back_at_the_deadline() {
    let board = Board::start().await;
    // Starts and stays up, but never takes data: no confirmation comes.
    let hangs = board.dir.path().join("hanging-agent");
    std::fs::write(&hangs, "#!/bin/sh\nexec sleep 600\n").unwrap();
    let pkg = board.publish_package("v2", &hangs, "0.2.0", &[]);
    board
        .send_update(
            15,
            update_payload(&pkg, &format!("{}v2/", board.server.url())),
        )
        .await;
    board
        .wait_event("ota 15: installed", Duration::from_secs(30))
        .await;
    let e = board
        .wait_event("ota 15: rolled back", Duration::from_secs(60))
        .await;
    assert!(e.contains("not confirmed within 20s"), "{e}");
    assert_eq!(board.current(), "slots/a");
    board.wait_rows_grow().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_the_install_leaves_a_bootable_slot_and_the_download_resumes() {
    let mut board = Board::start().await;
    let pkg = board.publish_package("v2", agent_binary(), "0.2.0", &[]);
    let url = format!("{}v2/", board.server.url());
    let size = std::fs::metadata(pkg.join("aeris-edge")).unwrap().len();
    board
        .server
        .rate
        .store(size / 20, std::sync::atomic::Ordering::Relaxed);
    board.send_update(11, update_payload(&pkg, &url)).await;
    board
        .wait_event("ota 11: accepted", Duration::from_secs(30))
        .await;
    let partial = board.root.join("slots/b.partial/aeris-edge");
    let start = std::time::Instant::now();
    while std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0) < size / 5 {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "download never started"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    board.edge.kill();
    assert_eq!(board.current(), "slots/a");
    // Power back: the old slot boots and works.
    board.edge.restart();
    board.wait_rows_grow().await;
    // The same command again continues where the download stopped.
    board
        .server
        .rate
        .store(0, std::sync::atomic::Ordering::Relaxed);
    board.send_update(12, update_payload(&pkg, &url)).await;
    board
        .wait_event("ota 12: confirmed", Duration::from_secs(90))
        .await;
    assert!(
        board
            .server
            .requests()
            .iter()
            .any(|r| r.starts_with("/v2/aeris-edge bytes=")),
        "no ranged request: {:?}",
        board.server.requests()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn downgrade_is_refused_unless_the_manifest_allows_it() {
    let board = Board::start().await;
    let old = board.publish_package("v0", agent_binary(), "0.0.9", &[]);
    board
        .send_update(
            13,
            update_payload(&old, &format!("{}v0/", board.server.url())),
        )
        .await;
    board
        .wait_event("ota 13: refused (downgrade)", Duration::from_secs(30))
        .await;
    assert!(board.server.requests().is_empty());
    // A downgrade signed for devices on 0.0.5 (say, to undo a bad 0.0.5),
    // replayed to this board on 0.1.0: refused, nothing fetched.
    let replay = board.publish_package(
        "v0r",
        agent_binary(),
        "0.0.9",
        &["--allow-downgrade-from", "0.0.5"],
    );
    board
        .send_update(
            16,
            update_payload(&replay, &format!("{}v0r/", board.server.url())),
        )
        .await;
    let e = board
        .wait_event("ota 16: refused (downgrade)", Duration::from_secs(30))
        .await;
    assert!(e.contains("only from 0.0.5"), "{e}");
    assert!(board.server.requests().is_empty());
    // Signed for the version this board runs: taken.
    let allowed = board.publish_package(
        "v0b",
        agent_binary(),
        "0.0.9",
        &["--allow-downgrade-from", "0.1.0"],
    );
    board
        .send_update(
            14,
            update_payload(&allowed, &format!("{}v0b/", board.server.url())),
        )
        .await;
    board
        .wait_event("ota 14: accepted", Duration::from_secs(30))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_candidate_takes_its_release_and_refuses_its_predecessor() {
    let board = Board::start_with(Setup {
        version: "1.2.0-rc2",
        ..Setup::default()
    })
    .await;
    let url = |name: &str| format!("{}{name}/", board.server.url());
    let rc1 = board.publish_package("rc1", agent_binary(), "1.2.0-rc1", &[]);
    board
        .send_update(20, update_payload(&rc1, &url("rc1")))
        .await;
    board
        .wait_event("ota 20: refused (downgrade)", Duration::from_secs(30))
        .await;
    // A version that is not semver is not signed (a device would refuse
    // it: edge/src/ota/update.rs tests that).
    let bad = board.dir.path().join("www/bad");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::copy(agent_binary(), bad.join("aeris-edge")).unwrap();
    let out = Command::new(binary("aeris-package"))
        .arg("sign")
        .arg("--dir")
        .arg(&bad)
        .arg("--key")
        .arg(&board.key)
        .args(["--version", "1.2"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("version \"1.2\" is not a semver version"),
        "{err}"
    );
    // 1.2.0 is newer than 1.2.0-rc2 (it was refused as the same version).
    let release = board.publish_package("rel", agent_binary(), "1.2.0+build.7", &[]);
    board
        .send_update(22, update_payload(&release, &url("rel")))
        .await;
    board
        .wait_event(
            "ota 22: accepted: version 1.2.0+build.7 (running 1.2.0-rc2)",
            Duration::from_secs(30),
        )
        .await;
    assert!(board
        .server
        .requests()
        .iter()
        .all(|r| r.starts_with("/rel/")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_the_manifest_does_not_list_never_enter_the_slot() {
    let board = Board::start().await;
    let pkg = board.publish_package("v2", agent_binary(), "0.2.0", &[]);
    // Left in the download folder before the update: a file, a folder, a
    // symlink at the binary's path pointing outside.
    let partial = board.root.join("slots/b.partial");
    std::fs::create_dir_all(partial.join("hooks")).unwrap();
    std::fs::write(partial.join("extra"), b"#!/bin/sh\n").unwrap();
    std::fs::write(partial.join("hooks/pre-start.sh"), b"#!/bin/sh\n").unwrap();
    let outside = board.dir.path().join("outside");
    std::fs::write(&outside, b"not part of any slot").unwrap();
    std::os::unix::fs::symlink(&outside, partial.join("aeris-edge")).unwrap();
    board
        .send_update(
            17,
            update_payload(&pkg, &format!("{}v2/", board.server.url())),
        )
        .await;
    board
        .wait_event("ota 17: installed", Duration::from_secs(60))
        .await;
    let mut listed: Vec<String> = std::fs::read_dir(board.root.join("slots/b"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    listed.sort();
    assert_eq!(listed, ["aeris-edge", "manifest.json", "manifest.json.sig"]);
    assert!(!board.root.join("slots/b/aeris-edge").is_symlink());
    assert_eq!(std::fs::read(&outside).unwrap(), b"not part of any slot");
    board
        .wait_event("ota 17: confirmed", Duration::from_secs(60))
        .await;
}

/// What systemd does for the unit's `WatchdogSec=` (and `Restart=`), for a
/// board in a test: binds the notify socket the agent and its trial child
/// send to, and records each `WATCHDOG=1`.
struct Watchdog {
    socket: PathBuf,
    pings: Arc<Mutex<Vec<std::time::Instant>>>,
}

impl Watchdog {
    fn bind(dir: &Path) -> Watchdog {
        let socket = dir.join("notify.sock");
        let sock = std::os::unix::net::UnixDatagram::bind(&socket).unwrap();
        let pings = Arc::new(Mutex::new(Vec::new()));
        let seen = pings.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = sock.recv(&mut buf) {
                let msg = String::from_utf8_lossy(&buf[..n]);
                if msg.lines().any(|l| l == "WATCHDOG=1") {
                    seen.lock().unwrap().push(std::time::Instant::now());
                }
            }
        });
        Watchdog { socket, pings }
    }

    /// True once pings came after `since` and the last is older than
    /// `period`: systemd would kill the service now.
    fn starved(&self, since: std::time::Instant, period: Duration) -> bool {
        let pings = self.pings.lock().unwrap();
        pings
            .iter()
            .rev()
            .find(|t| **t >= since)
            .is_some_and(|last| last.elapsed() > period)
    }
}

/// `pid` and every process below it (what the unit's cgroup holds).
fn process_tree(pid: u32) -> Vec<u32> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        // /proc/<pid>/stat: "pid (comm) state ppid ..."; comm may hold spaces.
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
        if let Some(ppid) = after.split_whitespace().nth(1).and_then(|s| s.parse().ok()) {
            children.entry(ppid).or_default().push(p);
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        out.extend(children.get(&out[i]).cloned().unwrap_or_default());
        i += 1;
    }
    out
}

/// A package at `dir` whose `aeris-edge` runs the real agent (as `agent`)
/// and freezes it (SIGSTOP: alive, answering nothing) a second after its
/// trial was confirmed.
fn package_hanging_after_confirmation(dir: &Path, root: &Path, key: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(agent_binary(), dir.join("agent")).unwrap();
    std::fs::write(
        dir.join("aeris-edge"),
        format!(
            "#!/bin/sh\n\
             here=$(dirname \"$0\")\n\
             chmod +x \"$here/agent\"\n\
             \"$here/agent\" \"$@\" &\n\
             agent=$!\n\
             trap 'kill -TERM $agent; kill -CONT $agent; wait $agent; exit 0' TERM\n\
             until grep -q '\"confirmed\"' {trial:?} 2>/dev/null; do sleep 0.2; done\n\
             sleep 1\n\
             echo 'test: freezing the new version after its confirmation' >&2\n\
             kill -STOP $agent\n\
             wait $agent\n",
            trial = root.join("trial.json"),
        ),
    )
    .unwrap();
    run(Command::new(binary("aeris-package"))
        .arg("sign")
        .arg("--dir")
        .arg(dir)
        .arg("--key")
        .arg(key)
        .args(["--version", "0.2.0", "--target", "x86_64-test"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_version_hanging_during_its_probation_is_killed_by_the_watchdog_and_the_old_slot_boots()
{
    // Longer than the hand-over from the old pipeline to the trial (the
    // old agent drains its uplink in between).
    const PERIOD: Duration = Duration::from_secs(10);
    let sockets = tempfile::tempdir().unwrap();
    let watchdog = Watchdog::bind(sockets.path());
    let mut board = Board::start_with(Setup {
        ota: "probation = \"2m\"\n",
        env: vec![
            ("NOTIFY_SOCKET", watchdog.socket.display().to_string()),
            ("WATCHDOG_USEC", PERIOD.as_micros().to_string()),
        ],
        ..Setup::default()
    })
    .await;
    let pkg = board.dir.path().join("www/v2");
    package_hanging_after_confirmation(&pkg, &board.root, &board.key);
    board
        .send_update(
            18,
            update_payload(&pkg, &format!("{}v2/", board.server.url())),
        )
        .await;

    // The trial passes: the new version does real work and confirms.
    let armed = std::time::Instant::now();
    board
        .wait_event("ota 18: confirmed", Duration::from_secs(90))
        .await;
    // Then it hangs; the watchdog starves and "systemd" kills the unit's
    // processes (parent and child), then restarts it from `current`.
    let start = std::time::Instant::now();
    while !watchdog.starved(armed, PERIOD) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the watchdog was fed after the hang\n{}",
            board.edge.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        board.edge.log().contains("test: freezing the new version"),
        "the watchdog starved before the hang\n{}",
        board.edge.log()
    );
    let pid = board.edge.pid().unwrap();
    let tree = process_tree(pid);
    assert!(tree.len() >= 3, "parent, wrapper and new agent: {tree:?}");
    // The parent first, so it cannot react to its child's death.
    for p in &tree {
        let _ = Command::new("kill")
            .args(["-KILL", &p.to_string()])
            .status();
    }
    board.edge.restart();

    // The probation had not ended: `current` still names the old slot, so
    // the old version boots, reports the rollback and takes data again.
    let e = board
        .wait_event("ota 18: rolled back", Duration::from_secs(60))
        .await;
    assert!(
        e.contains("probation") && e.contains("running 0.1.0"),
        "{e}"
    );
    assert_eq!(board.current(), "slots/a");
    assert!(!board.root.join("trial.json").exists());
    board.wait_rows_grow().await;
    let (_, body) = aeris_tests::http_get(board.health, "/metrics")
        .await
        .unwrap();
    assert_eq!(
        aeris_tests::metric(&body, "aeris_edge_ota_rollbacks_total"),
        Some(1.0)
    );
    for p in tree {
        assert!(
            !Path::new(&format!("/proc/{p}/exe")).exists()
                || std::fs::read_to_string(format!("/proc/{p}/stat"))
                    .is_ok_and(|s| s.contains(") Z ")),
            "process {p} of the hung version survived"
        );
    }
}
