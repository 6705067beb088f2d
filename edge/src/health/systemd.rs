//! systemd service notifications (sd_notify(3)) for `Type=notify` units.
//!
//! - `READY=1` once, after the buffer is open (the agent starts this task
//!   only then) and the sensor subscription is acknowledged by the local
//!   broker: from then on a reading published by a sensor is taken.
//! - `WATCHDOG=1` every half `WatchdogSec`, but only while every loop of
//!   the agent proves alive: the ingest and uplink loops each promise, on
//!   every turn, to turn again before a deadline ([`Beat`]), and the buffer
//!   thread answers a round trip within the period. A stuck loop stops the
//!   pings and systemd restarts the agent.
//! - `STATUS=` a one-line summary (held, accepted, acked), on each check.
//! - `STOPPING=1` when shutdown starts.
//! - While an update is on trial, the supervising old agent pings
//!   ([`watchdog_ping`]) until the new version confirms; after that only
//!   the new version's pings, relayed by the old agent (`ota::notify`),
//!   reach systemd, so a hang during its probation starves the watchdog.
//!
//! Without `NOTIFY_SOCKET` every send is a no-op; without `WATCHDOG_USEC`
//! no watchdog pings are sent.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::Probes;

/// The totals of the `STATUS=` line.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub accepted: u64,
    pub acked: u64,
    pub rejected: u64,
}

/// How often a loop beats while idle.
pub const BEAT_EVERY: Duration = Duration::from_secs(1);
/// How long after its last turn a loop still counts as alive.
pub const BEAT_GRACE: Duration = Duration::from_secs(5);
/// How often the status line is refreshed without a watchdog.
const STATUS_EVERY: Duration = Duration::from_secs(10);

/// One loop's promise: "I turn again before this deadline".
/// Stored as milliseconds after [`Liveness`]'s base instant; 0 = never beat.
#[derive(Debug, Default)]
pub struct Beat(AtomicU64);

/// The liveness of the agent's long-running loops.
#[derive(Debug)]
pub struct Liveness {
    base: Instant,
    pub ingest: Beat,
    pub uplink: Beat,
}

impl Default for Liveness {
    fn default() -> Self {
        Liveness {
            base: Instant::now(),
            ingest: Beat::default(),
            uplink: Beat::default(),
        }
    }
}

impl Liveness {
    fn ms(&self, t: Instant) -> u64 {
        t.saturating_duration_since(self.base).as_millis() as u64 + 1
    }

    /// `beat` is alive for `d` from now (a loop about to wait `d` passes
    /// `d + BEAT_GRACE`).
    pub fn alive_for(&self, beat: &Beat, d: Duration) {
        beat.0.store(self.ms(Instant::now() + d), Relaxed);
    }

    /// A regular turn of a loop.
    pub fn beat(&self, beat: &Beat) {
        self.alive_for(beat, BEAT_GRACE);
    }

    /// The names of the loops whose deadline has passed at `now`.
    pub fn stale(&self, now: Instant) -> Vec<&'static str> {
        let now = self.ms(now);
        [("ingest", &self.ingest), ("uplink", &self.uplink)]
            .into_iter()
            .filter(|(_, b)| b.0.load(Relaxed) < now)
            .map(|(n, _)| n)
            .collect()
    }
}

fn send(states: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        debug!(error = %e, "cannot notify the service manager");
    }
}

/// One `WATCHDOG=1` when the service manager asked for a watchdog. Sent by
/// the old agent while it supervises an update trial (`ota::trial`): the
/// trial has its own deadline, and the pings bridge the hand-over from the
/// old pipeline's notifier to the new one's. From the confirmation on only
/// the new version pings.
pub fn watchdog_ping() {
    if sd_notify::watchdog_enabled().is_some() {
        send(&[NotifyState::Watchdog]);
    }
}

/// Tells the service manager that shutdown started.
pub fn stopping() {
    send(&[NotifyState::Stopping]);
}

/// Runs until `stop`: READY=1 once the sensor subscription is up, then
/// WATCHDOG=1 while the loops and the buffer are alive, and STATUS= lines.
/// `held` asks the buffer thread for the readings it holds (a round trip:
/// `None` when it cannot answer) and `counts` gives the status line's
/// totals; health sits below the stages, so the agent passes both in.
pub async fn run<F, Fut>(
    probes: Arc<Probes>,
    held: F,
    counts: impl Fn() -> Counts,
    stop: CancellationToken,
) where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Option<u64>>,
{
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return;
    }
    let watchdog = sd_notify::watchdog_enabled();
    let period = watchdog.map(|w| w / 2).unwrap_or(STATUS_EVERY);
    let mut ready = false;
    send(&[NotifyState::Status(
        "starting: buffer open, waiting for the sensor subscription",
    )]);
    loop {
        // READY=1 is checked often so it follows the subscription closely.
        let now = Instant::now();
        let next_check = now + period;
        while !ready && Instant::now() < next_check {
            if probes.ready() {
                ready = true;
                send(&[NotifyState::Ready]);
                info!("notified systemd: ready");
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
        if ready {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep_until(next_check) => {}
            }
        }
        let held = tokio::time::timeout(period, held()).await;
        let stale = probes.live.stale(Instant::now());
        let c = counts();
        let line = match &held {
            Ok(Some(readings)) => format!(
                "{}: {} readings held, {} accepted, {} acked, {} rejected",
                if ready { "running" } else { "starting" },
                readings,
                c.accepted,
                c.acked,
                c.rejected,
            ),
            _ => "buffer not answering".to_owned(),
        };
        let buffer_ok = matches!(held, Ok(Some(_)));
        if watchdog.is_some() && buffer_ok && stale.is_empty() {
            send(&[NotifyState::Watchdog, NotifyState::Status(&line)]);
        } else {
            if watchdog.is_some() {
                warn!(stale_loops = ?stale, buffer_ok, "agent not alive; watchdog ping withheld");
            }
            send(&[NotifyState::Status(&line)]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_loop_is_stale_once_its_promise_has_passed() {
        let live = Liveness::default();
        assert_eq!(live.stale(Instant::now()), ["ingest", "uplink"]);
        live.beat(&live.ingest);
        live.alive_for(&live.uplink, Duration::from_secs(30) + BEAT_GRACE);
        assert!(live.stale(Instant::now()).is_empty());
        tokio::time::advance(BEAT_GRACE + Duration::from_millis(10)).await;
        assert_eq!(live.stale(Instant::now()), ["ingest"]);
        live.beat(&live.ingest);
        assert!(live.stale(Instant::now()).is_empty());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(live.stale(Instant::now()), ["ingest", "uplink"]);
    }
}
