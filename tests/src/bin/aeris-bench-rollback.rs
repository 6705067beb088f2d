//! Benchmark (not a test): how long a failing update keeps a board from
//! reporting, with the default `[ota]` settings.
//!
//! Each run starts a fresh board ([`aeris_tests::board`], as tests/ota.rs
//! does): the real agent from slot a under its own OTA supervisor, a real
//! Mosquitto for its sensors with a reading every 100 ms, a real cloud
//! (Mosquitto, gateway, PostGIS). It sends a signed update whose new
//! version fails one way and measures
//!
//! - from the update's start: the moment the supervisor starts the new
//!   version, i.e. the new slot's `aeris-edge` begins to run (its first
//!   line writes the wall clock, in ns, to a file);
//! - also from the command's send on the cloud broker (download, install
//!   and the old pipeline's drain included);
//!
//! to the old version running and reporting again: the cloud has seen its
//! `ota <id>: rolled back` event, an online `up/status` naming the old
//! version, and new rows in PostGIS, all after the update's start; the
//! figure is the last of the three.
//!
//! Kinds: `crash` exits at once (status 3); `hang` stays alive and does
//! nothing (never `READY=1`, never a watchdog ping); `unhealthy` is the
//! real agent, ready and pinging, but with a wrong `cloud.prefix`, so no
//! batch is ever acked and its health check (the trial's confirmation)
//! never passes.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aeris_edge::ota::OtaConfig;
use aeris_tests::board::{package_script, update_payload, Board, Setup, DEVICE};
use aeris_wire::DeviceState;

const HELP: &str = "\
aeris-bench-rollback: time from a failing update's start to the old version
running and reporting again, with the default [ota] settings.

USAGE: aeris-bench-rollback [--runs N] [--kind crash|hang|unhealthy|all]

  --runs N     runs per kind, each on a fresh board [10]
  --kind K     crash: the new version exits at once;
               hang: it stays alive doing nothing (no READY=1, no watchdog ping);
               unhealthy: the real agent, ready and pinging, whose batches are
               never acked (wrong cloud.prefix), so its health check never passes;
               all: the three in turn [all]
  -h, --help   this text

Start = the new slot's aeris-edge begins to run (started by the supervisor).
End = the cloud has the 'rolled back' event, an online status naming the old
version and new PostGIS rows, all after the start (the last of the three).
Also printed from the update command's send. Needs the binaries built
(cargo build --workspace --bins) and AERIS_TEST_PG_URL's PostgreSQL/PostGIS.
";

const OLD: &str = "0.1.0";

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Crash,
    Hang,
    Unhealthy,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Crash => "crash",
            Kind::Hang => "hang",
            Kind::Unhealthy => "unhealthy",
        }
    }
}

struct Args {
    runs: usize,
    kinds: Vec<Kind>,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        runs: 10,
        kinds: vec![Kind::Crash, Kind::Hang, Kind::Unhealthy],
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "-h" | "--help" => {
                print!("{HELP}");
                std::process::exit(0);
            }
            "--runs" => {
                let v = it.next().ok_or("--runs needs a number")?;
                args.runs = v
                    .parse()
                    .ok()
                    .filter(|n| *n > 0)
                    .ok_or(format!("--runs {v}: not a positive number"))?;
            }
            "--kind" => {
                let v = it.next().ok_or("--kind needs crash|hang|unhealthy|all")?;
                args.kinds = match v.as_str() {
                    "crash" => vec![Kind::Crash],
                    "hang" => vec![Kind::Hang],
                    "unhealthy" => vec![Kind::Unhealthy],
                    "all" => args.kinds,
                    _ => return Err(format!("--kind {v}: not crash|hang|unhealthy|all")),
                };
            }
            other => return Err(format!("unknown argument {other:?}; see --help")),
        }
    }
    Ok(args)
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

fn secs(from_ns: u128, to_ns: u128) -> f64 {
    to_ns.saturating_sub(from_ns) as f64 / 1e9
}

/// Publishes the failing package for `kind` as `www/v2`; its first line
/// writes the start time to `stamp`.
fn failing_package(board: &Board, kind: Kind, stamp: &Path) -> std::path::PathBuf {
    let first = format!("date +%s%N > {stamp:?}\n");
    let dir = board.dir.path().join("www/v2");
    match kind {
        Kind::Crash | Kind::Hang => {
            let rest = if kind == Kind::Crash {
                "echo 'broken build' >&2\nexit 3\n"
            } else {
                "exec sleep 600\n"
            };
            let script = board.dir.path().join("failing-agent");
            std::fs::write(&script, format!("#!/bin/sh\n{first}{rest}")).expect("write script");
            board.publish_package("v2", &script, "0.2.0", &[]);
        }
        Kind::Unhealthy => package_script(
            &dir,
            &board.key,
            "0.2.0",
            &format!("{first}exec env AERIS_CLOUD__PREFIX=aeris/broken \"$here/agent\" \"$@\"\n"),
        ),
    }
    dir
}

struct Run {
    from_start: f64,
    from_send: f64,
    event: f64,
    status: f64,
    rows: f64,
    reason: String,
}

/// Online statuses naming the old version, with their arrival (ns).
fn collect_statuses(
    mut rx: tokio::sync::watch::Receiver<Option<aeris_wire::Status>>,
) -> Arc<Mutex<Vec<u128>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let out = seen.clone();
    tokio::spawn(async move {
        while rx.changed().await.is_ok() {
            let at = now_ns();
            let old_online = rx
                .borrow()
                .as_ref()
                .is_some_and(|s| s.agent_version == OLD && matches!(s.state, DeviceState::Online));
            if old_online {
                if let Ok(mut v) = out.lock() {
                    v.push(at);
                }
            }
        }
    });
    seen
}

async fn one_run(kind: Kind, id: u64) -> Result<Run, String> {
    let board = Board::start_with(Setup {
        version: OLD,
        // Every [ota] key at its default.
        ota: "",
        // The agent's own defaults, not the tests' fast reporting.
        env: vec![
            ("AERIS_CLOUD__STATUS_INTERVAL", "10s".to_owned()),
            ("AERIS_UPLINK__BATCH_MAX_AGE", "1s".to_owned()),
        ],
    })
    .await;
    let statuses =
        collect_statuses(aeris_tests::stack::watch_status(board.cloud.broker.port, DEVICE).await);
    let stamp = board.dir.path().join("started.ns");
    let pkg = failing_package(&board, kind, &stamp);
    let sent = now_ns();
    board
        .send_update(
            id,
            update_payload(&pkg, &format!("{}v2/", board.server.url())),
        )
        .await;
    let timeout = Duration::from_secs(180);
    let begun = std::time::Instant::now();
    let late = |what: &str| {
        format!(
            "{what} after {timeout:?}; events: {:#?}\n--- edge ---\n{}",
            board.events(),
            board.edge.log()
        )
    };
    // The update's start.
    let start = loop {
        if let Some(ns) = std::fs::read_to_string(&stamp)
            .ok()
            .and_then(|s| s.trim().parse::<u128>().ok())
        {
            break ns;
        }
        if begun.elapsed() > timeout {
            return Err(late("the new version never started"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let rows_at_start = board.cloud.rows(DEVICE).await;
    let needle = format!("ota {id}: rolled back");
    let (mut event, mut rows, mut reason) = (None, None, String::new());
    loop {
        let now = now_ns();
        if event.is_none() {
            if let Some(e) = board.events().into_iter().find(|e| e.contains(&needle)) {
                event = Some(now);
                reason = e;
            }
        }
        if rows.is_none() && board.cloud.rows(DEVICE).await > rows_at_start {
            rows = Some(now);
        }
        let status = statuses
            .lock()
            .ok()
            .and_then(|v| v.iter().copied().find(|t| *t > start));
        if let (Some(e), Some(r), Some(s)) = (event, rows, status) {
            let end = e.max(r).max(s);
            return Ok(Run {
                from_start: secs(start, end),
                from_send: secs(sent, end),
                event: secs(start, e),
                status: secs(start, s),
                rows: secs(start, r),
                reason,
            });
        }
        if begun.elapsed() > timeout {
            return Err(late("the old version was not reporting again"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Nearest-rank p50 and the max of `v` (sorted here).
fn p50_max(v: &mut [f64]) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    (v[(v.len() - 1) / 2], v[v.len() - 1])
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cpu}, {cores} cores")
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("aeris-bench-rollback: {e}");
            std::process::exit(2);
        }
    };
    let d = OtaConfig::default();
    let f = |d: Duration| humantime::format_duration(d).to_string();
    println!(
        "settings: ota.trial_deadline {}, ota.ready_deadline {}, ota.trial_watchdog {} (defaults)",
        f(d.trial_deadline),
        f(d.ready_deadline),
        f(d.trial_watchdog)
    );
    println!(
        "machine: {}; load average at start {}",
        machine(),
        loadavg()
    );
    let mut summary = Vec::new();
    let mut id = 100;
    for kind in &args.kinds {
        let (mut starts, mut sends) = (Vec::new(), Vec::new());
        for n in 1..=args.runs {
            id += 1;
            match one_run(*kind, id).await {
                Ok(r) => {
                    println!(
                        "{} run {n}/{}: start -> reporting {:.2} s (event {:.2}, status {:.2}, rows {:.2}); send -> reporting {:.2} s; {}",
                        kind.name(),
                        args.runs,
                        r.from_start,
                        r.event,
                        r.status,
                        r.rows,
                        r.from_send,
                        r.reason
                    );
                    starts.push(r.from_start);
                    sends.push(r.from_send);
                }
                Err(e) => {
                    eprintln!("{} run {n}/{}: FAILED: {e}", kind.name(), args.runs);
                    std::process::exit(1);
                }
            }
        }
        let (p50, max) = p50_max(&mut starts);
        let (sp50, smax) = p50_max(&mut sends);
        summary.push(format!(
            "{:<10} runs {:>3}  start->reporting p50 {p50:6.2} s  max {max:6.2} s   send->reporting p50 {sp50:6.2} s  max {smax:6.2} s",
            kind.name(),
            starts.len()
        ));
    }
    println!("load average at end {}", loadavg());
    for line in summary {
        println!("{line}");
    }
}
