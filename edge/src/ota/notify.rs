//! What the trial's supervisor hears from the new version before it
//! confirms: the systemd notify protocol (sd_notify(3)), which every agent
//! version speaks, relayed through the supervisor.
//!
//! Invariants: a version that has not said `READY=1` (buffer open, models
//! loaded, sensor subscription up) within `ota.ready_deadline` of its start,
//! or that said it and then went `ota.trial_watchdog` without a
//! `WATCHDOG=1` (it pings every half of that while its loops and buffer
//! answer, the same check the unit's `WatchdogSec` makes), has failed its
//! trial; it need not wait for `ota.trial_deadline`. After the confirmation
//! the supervisor forwards the new version's `WATCHDOG=1` and `STATUS=` to
//! systemd, so a hang during probation still starves the unit's watchdog.
//!
//! Format: the supervisor binds a datagram socket `<ota.root>/trial-notify.sock`
//! and starts the new version with `NOTIFY_SOCKET` naming it and
//! `WATCHDOG_USEC` = `ota.trial_watchdog` (or the unit's own period when
//! shorter). Each datagram is newline-separated `KEY=VALUE` lines.
//! Without the socket (it cannot be bound) the trial falls back to the
//! deadline alone and the new version notifies systemd directly.

use std::path::{Path, PathBuf};
use std::time::Duration;

use sd_notify::NotifyState;
use tokio::net::UnixDatagram;
use tokio::time::Instant;

/// The socket the new version on trial notifies.
pub struct Relay {
    sock: UnixDatagram,
    path: PathBuf,
}

impl Relay {
    /// Binds `<root>/trial-notify.sock`, replacing one an earlier run left.
    pub fn bind(root: &Path) -> std::io::Result<Relay> {
        let path = root.join("trial-notify.sock");
        let _ = std::fs::remove_file(&path);
        let sock = UnixDatagram::bind(&path)?;
        Ok(Relay { sock, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The next datagram's text.
    pub async fn recv(&self) -> std::io::Result<String> {
        let mut buf = [0u8; 4096];
        let n = self.sock.recv(&mut buf).await?;
        Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
    }

    /// After the confirmation, until dropped: the new version's watchdog
    /// pings and status lines go on to systemd.
    pub async fn forward(self) {
        while let Ok(msg) = self.recv().await {
            for line in msg.lines() {
                if line == "WATCHDOG=1" {
                    crate::health::systemd::watchdog_ping();
                } else if line.starts_with("STATUS=") {
                    let _ = sd_notify::notify(&[NotifyState::Custom(line)]);
                }
            }
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The `WATCHDOG_USEC` the new version is started with: `trial_watchdog`,
/// or the service's own watchdog period when that is shorter (after the
/// confirmation its pings feed the service's watchdog).
pub fn child_watchdog(trial_watchdog: Duration) -> Duration {
    let service = std::env::var("WATCHDOG_USEC")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .map(Duration::from_micros);
    match service {
        Some(s) if s < trial_watchdog => s,
        _ => trial_watchdog,
    }
}

/// What the supervisor heard from the new version so far, and whether that
/// already fails it. No I/O: the trial feeds it datagrams and asks.
#[derive(Debug)]
pub struct Signs {
    start: Instant,
    ready: Option<Instant>,
    last_ping: Option<Instant>,
    ready_deadline: Duration,
    watchdog: Duration,
}

impl Signs {
    pub fn new(start: Instant, ready_deadline: Duration, watchdog: Duration) -> Signs {
        Signs {
            start,
            ready: None,
            last_ping: None,
            ready_deadline,
            watchdog,
        }
    }

    /// A datagram from the new version, received at `now`.
    pub fn heard(&mut self, msg: &str, now: Instant) {
        for line in msg.lines() {
            match line {
                "READY=1" => {
                    self.ready.get_or_insert(now);
                }
                "WATCHDOG=1" => self.last_ping = Some(now),
                _ => {}
            }
        }
    }

    /// Why the new version has failed at `now`, if it has.
    pub fn failed(&self, now: Instant) -> Option<String> {
        let fmt = |d: Duration| humantime::format_duration(d).to_string();
        let Some(ready) = self.ready else {
            return (now >= self.start + self.ready_deadline).then(|| {
                format!(
                    "not ready within {} (no READY=1: buffer, models or sensor subscription never came up)",
                    fmt(self.ready_deadline)
                )
            });
        };
        let last = self.last_ping.map_or(ready, |p| p.max(ready));
        (now >= last + self.watchdog).then(|| {
            format!(
                "hung: no watchdog ping for {} after it was ready (a loop or the buffer stopped answering)",
                fmt(self.watchdog)
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const READY: Duration = Duration::from_secs(30);
    const WATCHDOG: Duration = Duration::from_secs(20);

    #[tokio::test(start_paused = true)]
    async fn a_version_never_ready_fails_at_the_ready_deadline() {
        let t0 = Instant::now();
        let mut signs = Signs::new(t0, READY, WATCHDOG);
        // Pings alone (loops alive before the subscription) are not ready.
        signs.heard("WATCHDOG=1\nSTATUS=starting", t0 + Duration::from_secs(10));
        assert!(signs
            .failed(t0 + READY - Duration::from_millis(1))
            .is_none());
        let why = signs.failed(t0 + READY).unwrap();
        assert!(why.starts_with("not ready within 30s"), "{why}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_ready_version_fails_once_its_pings_stop_for_the_watchdog_period() {
        let t0 = Instant::now();
        let mut signs = Signs::new(t0, READY, WATCHDOG);
        // Slow to start (25 s), then pings every half period: never failed.
        let ready = t0 + Duration::from_secs(25);
        signs.heard("READY=1", ready);
        let mut now = ready;
        for _ in 0..10 {
            now += WATCHDOG / 2;
            assert!(signs.failed(now).is_none());
            signs.heard("WATCHDOG=1\nSTATUS=running", now);
        }
        // Well past the ready deadline: only the pings count now.
        assert!(signs
            .failed(now + WATCHDOG - Duration::from_millis(1))
            .is_none());
        let why = signs.failed(now + WATCHDOG).unwrap();
        assert!(why.starts_with("hung: no watchdog ping for 20s"), "{why}");
    }

    #[tokio::test(start_paused = true)]
    async fn ready_without_any_ping_counts_from_the_ready() {
        let t0 = Instant::now();
        let mut signs = Signs::new(t0, READY, WATCHDOG);
        // An old ping from before the ready does not shorten the grace.
        signs.heard("WATCHDOG=1", t0 + Duration::from_secs(1));
        signs.heard("READY=1", t0 + Duration::from_secs(5));
        assert!(signs.failed(t0 + Duration::from_secs(24)).is_none());
        assert!(signs.failed(t0 + Duration::from_secs(25)).is_some());
    }
}
