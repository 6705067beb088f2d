//! The trial of a new version, and the rollback that does not depend on it.
//!
//! The running agent (old version) stops its pipeline, then starts the new
//! binary from the inactive slot as its child with `AERIS_OTA_TRIAL=1`.
//! The child runs the whole pipeline and, once it has done real work (sensor
//! subscription up, a batch acked by the cloud, a model run when models are
//! configured), marks `trial.json` confirmed. If the child exits, or the
//! deadline passes first, the parent kills it, marks the trial failed and
//! starts its own pipeline again: the rollback lives in the old, proven
//! binary.
//!
//! Probation: a confirmed version can still hang or crash a minute later.
//! So after the confirmation the child keeps running under the old parent
//! for `ota.probation` with `current` still naming the old slot; only then
//! does the parent switch `current`. Until the confirmation the parent
//! feeds the systemd watchdog (the trial deadline guards the child then,
//! and the pings bridge the hand-over between the two pipelines); from
//! the confirmation on only the child does (`NotifyAccess=all`): if it
//! hangs, the watchdog kills the service (parent and child) and the
//! restart boots `current`,
//! the old slot, which finds `trial.json` confirmed for a slot that is not
//! current and reports the rollback. If the child exits during probation
//! the parent rolls back at once. After the switch the new version is an
//! ordinary one: a hang is a watchdog restart of the new version, with no
//! rollback.
//!
//! Stop (SIGTERM) during the trial or probation: the new version gets
//! SIGTERM, and SIGKILL after `ota.stop_grace`, then the old agent exits;
//! the trial is recorded failed ("stopped by a shutdown"), so the next
//! start runs the old slot (still `current`) and reports the rollback.
//!
//! Power loss at any moment: before the switch `current` names the old slot
//! and `trial.json` is left behind, so the old agent boots and reports the
//! trial as rolled back; after it, the confirmed new slot boots.

use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::notify::{self, Relay, Signs};
use super::slots::{Slots, Trial};
use super::{OtaConfig, Reporter};

/// Set for the child on trial.
pub const TRIAL_ENV: &str = "AERIS_OTA_TRIAL";

pub enum Supervised {
    /// The new version is current; its exit status once it ended.
    Confirmed(std::process::ExitStatus),
    /// The new version failed; the old one carries on.
    RolledBack,
    /// Shutdown was asked for during the trial.
    Shutdown,
}

pub fn in_trial() -> bool {
    std::env::var_os(TRIAL_ENV).is_some()
}

fn terminate(child: &mut tokio::process::Child) {
    let sent = child.id().is_some_and(|pid| {
        std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !sent {
        let _ = child.start_kill();
    }
}

/// Stops the child for a shutdown: SIGTERM, then SIGKILL once `grace`
/// has passed (a frozen or stuck version never answers the first, and the
/// old agent must exit within systemd's stop timeout).
async fn stop(child: &mut tokio::process::Child, grace: Duration) {
    terminate(child);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        warn!(grace = %humantime::format_duration(grace), "the new version did not stop after SIGTERM; killing it");
        let _ = child.start_kill();
        let _ = child.wait().await;
    }
}

/// A shutdown stopped the trial before `current` switched: recorded as
/// failed, so that it is never taken for confirmed (the child may have
/// confirmed just before it was stopped) and the next start, which runs
/// the old slot, reports the rollback.
fn interrupted(slots: &Slots, mut trial: Trial, phase: &str) -> Supervised {
    warn!(slot = %trial.slot, version = %trial.version, phase, "shutdown during the update's trial; the old version runs at the next start");
    trial.state = format!("failed: stopped by a shutdown during its {phase}");
    if let Err(e) = slots.write_trial(&trial) {
        error!(error = %e, "cannot record the interrupted trial");
    }
    Supervised::Shutdown
}

fn fail(slots: &Slots, mut trial: Trial, why: String) -> Supervised {
    warn!(slot = %trial.slot, version = %trial.version, reason = %why, "update trial failed; rolling back");
    trial.state = format!("failed: {why}");
    if let Err(e) = slots.write_trial(&trial) {
        error!(error = %e, "cannot record the failed trial");
    }
    Supervised::RolledBack
}

/// Runs the trial of `trial.slot` as a child process until it is confirmed
/// and has passed its `probation`, fails, or shutdown is asked for; after
/// the switch, until the child ends. Before the confirmation the child's
/// sd_notify messages come to this process ([`super::notify`]), which fails
/// it early when it is not ready or stops pinging.
pub async fn supervise(
    slots: &Slots,
    trial: Trial,
    config: &OtaConfig,
    shutdown: &CancellationToken,
) -> Supervised {
    let (mut child, relay) = match start(slots, &trial, config) {
        Ok(started) => started,
        Err(why) => return fail(slots, trial, why),
    };
    info!(slot = %trial.slot, version = %trial.version, pid = child.id(), "update trial started");
    let signs = Signs::new(
        Instant::now(),
        config.ready_deadline,
        notify::child_watchdog(config.trial_watchdog),
    );
    let watch = relay.as_ref().map(|r| (r, signs));
    let stopping = (shutdown, config.stop_grace);
    let confirmed =
        until_confirmed(slots, &mut child, config.trial_deadline, watch, stopping).await;
    // From the confirmation on the child's pings feed the service's watchdog.
    let forward = relay
        .filter(|_| confirmed.is_ok())
        .map(|r| tokio::spawn(r.forward()));
    let passed = match confirmed {
        Ok(()) => {
            info!(slot = %trial.slot, version = %trial.version, probation = %humantime::format_duration(config.probation), "update confirmed; on probation before current switches");
            through_probation(&mut child, config.probation, stopping).await
        }
        Err(stop) => Err(stop),
    };
    let outcome = match passed {
        Ok(()) => switch_and_run(slots, &trial, &mut child, stopping).await,
        Err(Stop::Shutdown(phase)) => interrupted(slots, trial, phase),
        Err(Stop::Failed(why)) => fail(slots, trial, why),
    };
    if let Some(f) = forward {
        f.abort();
    }
    outcome
}

/// Starts the new version from `trial.slot`, with its notify socket when
/// one can be bound.
fn start(
    slots: &Slots,
    trial: &Trial,
    config: &OtaConfig,
) -> Result<(tokio::process::Child, Option<Relay>), String> {
    let exe = slots.dir(&trial.slot).join("aeris-edge");
    let mut cmd = tokio::process::Command::new(&exe);
    cmd.args(std::env::args_os().skip(1))
        .env(TRIAL_ENV, "1")
        // The child's watchdog pings are its own (relayed, or straight to
        // systemd: the unit has NotifyAccess=all).
        .env_remove("WATCHDOG_PID")
        .kill_on_drop(true);
    let relay = match Relay::bind(&slots.root) {
        Ok(r) => {
            let period = notify::child_watchdog(config.trial_watchdog);
            cmd.env("NOTIFY_SOCKET", r.path())
                .env("WATCHDOG_USEC", period.as_micros().to_string());
            Some(r)
        }
        Err(e) => {
            warn!(error = %e, "cannot bind the trial's notify socket; the trial deadline alone guards the new version");
            None
        }
    };
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", exe.display()))?;
    Ok((child, relay))
}

/// Why a phase of the trial ended early.
enum Stop {
    /// Shutdown was asked for in this phase (`trial`, `probation`); the
    /// child was stopped. Before the switch, the next start runs the old
    /// slot and reports the rollback (a restart during probation is not a
    /// pass).
    Shutdown(&'static str),
    /// The new version failed: why.
    Failed(String),
}

/// Waits for the child to write `confirmed` within `deadline`, failing it
/// earlier when `watch` (the relay and what it heard) says so. Until then
/// the old agent keeps the watchdog fed (the new one may still be starting).
async fn until_confirmed(
    slots: &Slots,
    child: &mut tokio::process::Child,
    deadline: Duration,
    watch: Option<(&Relay, Signs)>,
    (shutdown, grace): (&CancellationToken, Duration),
) -> Result<(), Stop> {
    let (relay, mut signs) = watch.unzip();
    let end = Instant::now() + deadline;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut next_ping = Instant::now();
    loop {
        if Instant::now() >= next_ping {
            crate::health::systemd::watchdog_ping();
            next_ping = Instant::now() + Duration::from_secs(1);
        }
        // Without a relay (or should the socket fail) only the deadline
        // and the child's exit are watched.
        let heard = async {
            match relay.map(|r| r.recv()) {
                Some(recv) => match recv.await {
                    Ok(msg) => Some(msg),
                    Err(_) => std::future::pending().await,
                },
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => {
                stop(child, grace).await;
                return Err(Stop::Shutdown("trial"));
            }
            st = child.wait() => {
                return Err(Stop::Failed(match st {
                    Ok(s) => format!("new version exited ({s}) before confirming"),
                    Err(e) => format!("new version lost: {e}"),
                }));
            }
            msg = heard => {
                if let (Some(msg), Some(signs)) = (msg, signs.as_mut()) {
                    signs.heard(&msg, Instant::now());
                }
            }
            _ = tick.tick() => {}
        }
        if slots.read_trial().is_some_and(|t| t.state == "confirmed") {
            return Ok(());
        }
        let early = signs.as_ref().and_then(|s| s.failed(Instant::now()));
        if early.is_some() || Instant::now() >= end {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(Stop::Failed(early.unwrap_or_else(|| {
                format!(
                    "not confirmed within {}",
                    humantime::format_duration(deadline)
                )
            })));
        }
    }
}

/// The confirmed child must keep running for `probation`.
async fn through_probation(
    child: &mut tokio::process::Child,
    probation: Duration,
    (shutdown, grace): (&CancellationToken, Duration),
) -> Result<(), Stop> {
    let end = Instant::now() + probation;
    tokio::select! {
        _ = shutdown.cancelled() => {
            stop(child, grace).await;
            Err(Stop::Shutdown("probation"))
        }
        st = child.wait() => Err(Stop::Failed(match st {
            Ok(s) => format!("new version exited ({s}) during its probation after confirmation"),
            Err(e) => format!("new version lost during its probation: {e}"),
        })),
        _ = tokio::time::sleep_until(end) => Ok(()),
    }
}

/// Makes the trial's slot current and waits for the child to end.
async fn switch_and_run(
    slots: &Slots,
    trial: &Trial,
    child: &mut tokio::process::Child,
    (shutdown, grace): (&CancellationToken, Duration),
) -> Supervised {
    if let Err(e) = slots.switch(&trial.slot) {
        // The new version stays on trial until the next start, where the
        // old one (still current) reports the rollback.
        error!(error = %e, "cannot switch current to the confirmed slot");
    } else {
        info!(slot = %trial.slot, version = %trial.version, "update passed its probation; current switched");
    }
    let status = tokio::select! {
        st = child.wait() => st,
        _ = shutdown.cancelled() => {
            stop(child, grace).await;
            return Supervised::Shutdown;
        }
    };
    match status {
        Ok(s) => Supervised::Confirmed(s),
        Err(_) => Supervised::Shutdown,
    }
}

/// What the trial check asks of the running pipeline.
#[derive(Debug, Clone, Copy, Default)]
pub struct Work {
    /// The sensor subscription is up.
    pub subscribed: bool,
    /// The cloud acknowledged at least one batch.
    pub acked: bool,
    /// A model ran at least once.
    pub model_ran: bool,
}

/// In the child on trial: marks the trial confirmed once this version did
/// real work, and reports it; then reports when the parent made it current
/// (probation passed).
pub async fn confirm_when_working(
    slots: Slots,
    work: impl Fn() -> Work,
    needs_model_run: bool,
    events: Reporter,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let w = work();
        let model = !needs_model_run || w.model_ran;
        if !(w.subscribed && w.acked && model) {
            continue;
        }
        let Some(mut trial) = slots.read_trial() else {
            warn!("on trial but trial.json is gone; nothing to confirm");
            return;
        };
        if trial.state != "running" {
            return;
        }
        trial.state = "confirmed".into();
        match slots.write_trial(&trial) {
            Ok(()) => {
                info!(version = %trial.version, "update trial: real work done, confirmed");
                events.send(format!(
                    "ota {}: confirmed: version {} is healthy, had a batch acked{}",
                    trial.command_id,
                    trial.version,
                    if needs_model_run {
                        " and ran a model"
                    } else {
                        ""
                    }
                ));
            }
            Err(e) => {
                error!(error = %e, "cannot confirm the update trial");
                return;
            }
        }
        break;
    }
    wait_until_kept(&slots, &events, stop).await;
}

/// Reports once `current` names this trial's slot.
async fn wait_until_kept(slots: &Slots, events: &Reporter, stop: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Some(trial) = slots.read_trial() else {
            return;
        };
        if slots.current().as_deref() == Some(trial.slot.as_str()) {
            info!(version = %trial.version, "update passed its probation; it is current");
            events.send(format!(
                "ota {}: kept: version {} passed its probation; slot {} is current",
                trial.command_id, trial.version, trial.slot
            ));
            return;
        }
    }
}
