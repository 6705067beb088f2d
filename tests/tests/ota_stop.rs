//! A stop during an update's trial (issue 18): the old agent, which
//! supervises the new version, must exit within `ota.stop_grace` even when
//! the new version is frozen, and the next start must run the old version
//! and report the update as rolled back, never as confirmed. Real agents
//! in A/B slots on a [`Board`] (as in ota.rs).

use std::time::{Duration, Instant};

use aeris_tests::board::{package_script, update_payload, Board, Setup};

/// `ota.stop_grace` by default.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// The state letter of `pid` in /proc ('Z' once it exited and waits to
/// be reaped), `None` once it is gone.
fn state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    after.split_whitespace().next()?.chars().next()
}

/// The children of `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(p) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
        if after.split_whitespace().nth(1) == Some(pid.to_string().as_str()) {
            out.push(p);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_the_trial_of_a_frozen_version_exits_within_the_grace_and_the_old_version_runs_next(
) {
    // Default trial settings but a short probation; a frozen version is
    // failed only 20 s after its freeze (ota.trial_watchdog), so the stop
    // comes well inside the trial.
    let mut board = Board::start_with(Setup {
        ota: "probation = \"2s\"\n",
        ..Setup::default()
    })
    .await;
    // The real agent, cut off from the cloud (so it cannot confirm), frozen
    // 2 s after its start (SIGSTOP: it never answers SIGTERM).
    let pkg = board.dir.path().join("www/v2");
    package_script(
        &pkg,
        &board.key,
        "0.2.0",
        "(sleep 2; echo 'test: freezing the new version' >&2; kill -STOP $$) &\n\
         exec env AERIS_CLOUD__PORT=1 \"$here/agent\" \"$@\"\n",
    );
    board
        .send_update(
            33,
            update_payload(&pkg, &format!("{}v2/", board.server.url())),
        )
        .await;
    board
        .wait_event("ota 33: installed", Duration::from_secs(30))
        .await;
    aeris_tests::wait_for(
        "the new version frozen",
        Duration::from_secs(30),
        || async {
            board
                .edge
                .log()
                .contains("test: freezing the new version")
                .then_some(())
        },
    )
    .await;
    let pid = board.edge.pid().expect("the old agent runs");
    let trial = children(pid);
    assert_eq!(trial.len(), 1, "the new version on trial: {trial:?}");
    assert_eq!(state(trial[0]), Some('T'), "frozen");

    let stopped = Instant::now();
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
    let limit = STOP_GRACE + Duration::from_secs(3);
    while !matches!(state(pid), Some('Z') | None) {
        if stopped.elapsed() > limit + Duration::from_secs(10) {
            // Not left behind frozen (it would outlive the test's teardown).
            for p in [trial[0], pid] {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &p.to_string()])
                    .status();
            }
            panic!(
                "the old agent still ran {:?} after SIGTERM\n{}",
                stopped.elapsed(),
                board.edge.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = stopped.elapsed();
    eprintln!("the old agent exited {took:?} after SIGTERM");
    assert!(
        took < limit,
        "exited {took:?} after SIGTERM (grace {STOP_GRACE:?})"
    );
    assert!(
        took >= STOP_GRACE - Duration::from_millis(500),
        "a frozen version cannot end before the grace: {took:?}"
    );
    assert!(
        board
            .edge
            .log()
            .contains("did not stop after SIGTERM; killing it"),
        "{}",
        board.edge.log()
    );
    assert_eq!(state(trial[0]), None, "the frozen version is gone");
    assert_eq!(board.current(), "slots/a", "never switched");

    // The next start: `current` is the old slot; it reports the rollback.
    board.edge.restart();
    let e = board
        .wait_event("ota 33: rolled back", Duration::from_secs(60))
        .await;
    assert!(
        e.contains("stopped by a shutdown during its trial") && e.contains("running 0.1.0"),
        "{e}"
    );
    assert!(!board.root.join("trial.json").exists());
    assert_eq!(board.current(), "slots/a");
    board.wait_rows_grow().await;
}
