//! Over-the-air updates of the agent, with real agent processes in A/B
//! slots, a real Mosquitto on each side, a gateway committing to PostGIS
//! (so batches are really acked), and an HTTP server holding the packages
//! ([`aeris_tests::board`], shared with `aeris-bench-rollback`).
//! "New versions" are the host build of the agent in a package whose signed
//! manifest says 0.2.0; failing versions are scripts that exit or hang.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aeris_tests::board::{
    agent_binary, failing_agent, package_script, run, update_payload, Board, Setup, DEVICE,
};
use aeris_tests::process::binary;

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

/// The board with the default trial settings (`trial_deadline`,
/// `ready_deadline`, `trial_watchdog`); a short probation only.
fn default_trial() -> Setup {
    Setup {
        ota: "probation = \"2s\"\n",
        ..Setup::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_new_version_is_rolled_back_within_the_ready_deadline_by_default() {
    // With the old defaults (trial deadline 5 min, nothing else watched)
    // this waited five minutes.
    let board = Board::start_with(default_trial()).await;
    let hangs = board.dir.path().join("hanging-agent");
    std::fs::write(&hangs, "#!/bin/sh\nexec sleep 600\n").unwrap();
    let pkg = board.publish_package("v2", &hangs, "0.2.0", &[]);
    board
        .send_update(
            30,
            update_payload(&pkg, &format!("{}v2/", board.server.url())),
        )
        .await;
    board
        .wait_event("ota 30: installed", Duration::from_secs(30))
        .await;
    let installed = std::time::Instant::now();
    let e = board
        .wait_event("ota 30: rolled back", Duration::from_secs(60))
        .await;
    assert!(e.contains("not ready within 30s"), "{e}");
    // 30 s ready deadline, the old pipeline back up and reporting.
    assert!(
        installed.elapsed() < Duration::from_secs(40),
        "{:?}",
        installed.elapsed()
    );
    assert_eq!(board.current(), "slots/a");
    board.wait_rows_grow().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_version_that_stops_pinging_after_it_is_ready_is_rolled_back_before_the_deadline() {
    let board = Board::start_with(default_trial()).await;
    // The real agent, cut off from the cloud (so it cannot confirm), ready
    // and pinging, then frozen 5 s after its start: alive, answering nothing.
    let pkg = board.dir.path().join("www/v2");
    package_script(
        &pkg,
        &board.key,
        "0.2.0",
        // The agent is the supervisor's child itself (exec), so the kill
        // that ends the trial ends it.
        "(sleep 5; echo 'test: freezing the new version' >&2; kill -STOP $$) &\n\
         exec env AERIS_CLOUD__PORT=1 \"$here/agent\" \"$@\"\n",
    );
    board
        .send_update(
            31,
            update_payload(&pkg, &format!("{}v2/", board.server.url())),
        )
        .await;
    board
        .wait_event("ota 31: installed", Duration::from_secs(30))
        .await;
    let installed = std::time::Instant::now();
    let e = board
        .wait_event("ota 31: rolled back", Duration::from_secs(60))
        .await;
    assert!(e.contains("hung: no watchdog ping for 20s"), "{e}");
    // Frozen at 5 s, 20 s without a ping: well before the 45 s deadline.
    assert!(
        installed.elapsed() < Duration::from_secs(35),
        "{:?}",
        installed.elapsed()
    );
    assert!(board.edge.log().contains("test: freezing the new version"));
    board.wait_rows_grow().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_starting_new_version_is_confirmed_with_the_default_settings() {
    let board = Board::start_with(default_trial()).await;
    // 15 s before the real agent even starts (a cold SD card, a loaded
    // board), then the usual start: not a hang.
    let pkg = board.dir.path().join("www/v2");
    package_script(
        &pkg,
        &board.key,
        "0.2.0",
        "sleep 15\nexec \"$here/agent\" \"$@\"\n",
    );
    board
        .send_update(
            32,
            update_payload(&pkg, &format!("{}v2/", board.server.url())),
        )
        .await;
    board
        .wait_event("ota 32: confirmed", Duration::from_secs(90))
        .await;
    board
        .wait_event("ota 32: kept", Duration::from_secs(30))
        .await;
    assert!(board.events().iter().all(|e| !e.contains("rolled back")));
    assert_eq!(board.current(), "slots/b");
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
    let body = format!(
        "\"$here/agent\" \"$@\" &\n\
         agent=$!\n\
         trap 'kill -TERM $agent; kill -CONT $agent; wait $agent; exit 0' TERM\n\
         until grep -q '\"confirmed\"' {trial:?} 2>/dev/null; do sleep 0.2; done\n\
         sleep 1\n\
         echo 'test: freezing the new version after its confirmation' >&2\n\
         kill -STOP $agent\n\
         wait $agent\n",
        trial = root.join("trial.json"),
    );
    package_script(dir, key, "0.2.0", &body);
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
