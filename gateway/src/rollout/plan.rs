//! The rollout's bookkeeping, without I/O: which devices get the update in
//! which wave, what each reported, and when to stop.
//!
//! Waves: the canary devices first; the rest only after every canary
//! confirmed. A device's outcome comes from its `up/event` messages of kind
//! Ota for this command id: `confirmed` is a success; `rolled back` and
//! `refused` are failures; no outcome within the timeout is a failure too.
//! Once failures exceed `max_failures` the rollout halts: no more devices
//! are sent the update (those already sent finish on their own).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aeris_sink::rollouts::RolloutState;
use serde::Serialize;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "state", content = "detail")]
pub enum DeviceOutcome {
    Pending,
    Sent,
    Confirmed,
    Failed(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub command_id: u64,
    pub devices: BTreeMap<String, DeviceOutcome>,
    pub confirmed: usize,
    pub failed: usize,
    /// Why the rollout stopped early, if it did.
    pub halted: Option<String>,
    pub done: bool,
    /// The stage in progress, 0 = canary (the last one once done).
    pub stage: usize,
    pub stages: usize,
    /// Running until done or halted; halted as soon as failures pass
    /// the threshold (devices in flight still report).
    pub state: RolloutState,
    /// When each device was sent the update (for storing, not shown).
    #[serde(skip)]
    pub sent: BTreeMap<String, Instant>,
}

#[derive(Debug)]
pub struct Plan {
    command_id: u64,
    waves: Vec<Vec<String>>,
    wave: usize,
    devices: BTreeMap<String, (DeviceOutcome, Option<Instant>)>,
    max_failures: usize,
    timeout: Duration,
    halted: Option<String>,
}

/// `percent` of `fleet`, chosen by a stable hash of the device id so the
/// same devices are picked each time (and a 20 % rollout contains the 10 %
/// one); at least one device when `percent > 0`. The chosen devices keep
/// their order in `fleet`, so the canary is the first one listed.
pub fn select(fleet: &[String], percent: u8) -> Vec<String> {
    let mut ranked: Vec<&String> = fleet.iter().collect();
    ranked.sort_by_key(|d| (fnv1a(d), (*d).clone()));
    ranked.dedup();
    let n = (ranked.len() * percent.min(100) as usize).div_ceil(100);
    let chosen: std::collections::BTreeSet<&String> = ranked.into_iter().take(n).collect();
    let mut out: Vec<String> = Vec::new();
    for d in fleet {
        if chosen.contains(d) && !out.contains(d) {
            out.push(d.clone());
        }
    }
    out
}

fn fnv1a(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Plan {
    pub fn new(
        command_id: u64,
        targets: Vec<String>,
        canary: usize,
        max_failures: usize,
        timeout: Duration,
    ) -> Plan {
        let canary = canary.min(targets.len());
        let mut waves = vec![targets[..canary].to_vec(), targets[canary..].to_vec()];
        waves.retain(|w| !w.is_empty());
        let devices = targets
            .iter()
            .map(|d| (d.clone(), (DeviceOutcome::Pending, None)))
            .collect();
        Plan {
            command_id,
            waves,
            wave: 0,
            devices,
            max_failures,
            timeout,
            halted: None,
        }
    }

    /// A plan as it stood: `devices` holds every target's outcome and when
    /// it was sent (`Sent` without a time is sent at `now`'s timeout
    /// start). The stage in progress follows from the outcomes.
    pub fn restore(
        command_id: u64,
        waves: Vec<Vec<String>>,
        devices: BTreeMap<String, (DeviceOutcome, Option<Instant>)>,
        max_failures: usize,
        timeout: Duration,
        halted: Option<String>,
    ) -> Plan {
        let mut waves = waves;
        waves.retain(|w| !w.is_empty());
        let mut plan = Plan {
            command_id,
            waves,
            wave: 0,
            devices,
            max_failures,
            timeout,
            halted,
        };
        plan.advance();
        plan
    }

    /// Device ids per stage, canary first.
    pub fn waves(&self) -> &[Vec<String>] {
        &self.waves
    }

    /// When `device` was sent the update.
    pub fn sent_at(&self, device: &str) -> Option<Instant> {
        self.devices.get(device).and_then(|e| e.1)
    }

    pub fn max_failures(&self) -> usize {
        self.max_failures
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The devices to send the update to now; they are marked sent.
    pub fn to_send(&mut self, now: Instant) -> Vec<String> {
        self.advance();
        if self.halted.is_some() {
            return Vec::new();
        }
        let Some(wave) = self.waves.get(self.wave) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for d in wave {
            if let Some(e) = self.devices.get_mut(d) {
                if e.0 == DeviceOutcome::Pending {
                    *e = (DeviceOutcome::Sent, Some(now));
                    out.push(d.clone());
                }
            }
        }
        out
    }

    /// An `up/event` message of kind Ota from `device`.
    pub fn on_event(&mut self, device: &str, message: &str) {
        let Some(rest) = message.strip_prefix(&format!("ota {}: ", self.command_id)) else {
            return;
        };
        let Some(entry) = self.devices.get_mut(device) else {
            return;
        };
        if !matches!(entry.0, DeviceOutcome::Sent | DeviceOutcome::Pending) {
            return;
        }
        if rest.starts_with("confirmed") {
            entry.0 = DeviceOutcome::Confirmed;
        } else if rest.starts_with("rolled back") || rest.starts_with("refused") {
            entry.0 = DeviceOutcome::Failed(rest.to_owned());
        }
    }

    /// An outcome of a sent device learnt otherwise than from an OTA event
    /// (a staged configuration change reads the device's config report):
    /// `Ok` confirms, `Err` fails with its reason.
    pub fn record(&mut self, device: &str, outcome: Result<(), String>) {
        if let Some(entry) = self.devices.get_mut(device) {
            if entry.0 == DeviceOutcome::Sent {
                entry.0 = match outcome {
                    Ok(()) => DeviceOutcome::Confirmed,
                    Err(why) => DeviceOutcome::Failed(why),
                };
            }
        }
    }

    /// Marks devices that have not reported within the timeout as failed.
    pub fn expire(&mut self, now: Instant) {
        for (outcome, sent) in self.devices.values_mut() {
            if *outcome == DeviceOutcome::Sent
                && sent.is_some_and(|t| now.duration_since(t) >= self.timeout)
            {
                *outcome = DeviceOutcome::Failed("no outcome within the timeout".into());
            }
        }
        self.advance();
    }

    /// When the earliest sent device times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.devices
            .values()
            .filter(|(o, _)| *o == DeviceOutcome::Sent)
            .filter_map(|(_, t)| t.map(|t| t + self.timeout))
            .min()
    }

    fn failed(&self) -> usize {
        self.devices
            .values()
            .filter(|(o, _)| matches!(o, DeviceOutcome::Failed(_)))
            .count()
    }

    fn advance(&mut self) {
        let failed = self.failed();
        if self.halted.is_none() && failed > self.max_failures {
            self.halted = Some(format!(
                "{failed} devices failed, more than the {} allowed",
                self.max_failures
            ));
        }
        while let Some(wave) = self.waves.get(self.wave) {
            let finished = wave.iter().all(|d| {
                matches!(
                    self.devices.get(d).map(|e| &e.0),
                    Some(DeviceOutcome::Confirmed | DeviceOutcome::Failed(_))
                )
            });
            if !finished {
                break;
            }
            self.wave += 1;
        }
    }

    pub fn summary(&self) -> Summary {
        let in_flight = self
            .devices
            .values()
            .any(|(o, _)| *o == DeviceOutcome::Sent);
        let done = !in_flight && (self.halted.is_some() || self.wave >= self.waves.len());
        let state = match (&self.halted, done) {
            (Some(_), _) => RolloutState::Halted,
            (None, true) => RolloutState::Completed,
            (None, false) => RolloutState::Running,
        };
        Summary {
            command_id: self.command_id,
            devices: self
                .devices
                .iter()
                .map(|(d, (o, _))| (d.clone(), o.clone()))
                .collect(),
            confirmed: self
                .devices
                .values()
                .filter(|(o, _)| *o == DeviceOutcome::Confirmed)
                .count(),
            failed: self.failed(),
            halted: self.halted.clone(),
            done,
            stage: self.wave.min(self.waves.len().saturating_sub(1)),
            stages: self.waves.len(),
            state,
            sent: self
                .devices
                .iter()
                .filter_map(|(d, (_, t))| Some((d.clone(), (*t)?)))
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("d{i}")).collect()
    }

    #[test]
    fn canary_goes_first_and_a_failure_over_the_threshold_halts() {
        let t0 = Instant::now();
        let mut p = Plan::new(5, names(4), 1, 0, Duration::from_secs(60));
        assert_eq!(p.to_send(t0), ["d0"]);
        assert!(p.to_send(t0).is_empty(), "rest waits for the canary");
        p.on_event("d0", "ota 4: confirmed: other command");
        assert!(p.to_send(t0).is_empty());
        p.on_event("d0", "ota 5: confirmed: version 0.2.0");
        assert_eq!(p.to_send(t0), ["d1", "d2", "d3"]);
        p.on_event("d2", "ota 5: rolled back: version 0.2.0 not kept");
        assert!(p.to_send(t0).is_empty());
        let s = p.summary();
        assert!(s.halted.is_some());
        assert!(!s.done, "d1 and d3 still running");
        p.expire(t0 + Duration::from_secs(61));
        let s = p.summary();
        assert!(s.done);
        assert_eq!((s.confirmed, s.failed), (1, 3));
    }

    #[test]
    fn a_failed_canary_stops_the_rollout_before_the_fleet() {
        let t0 = Instant::now();
        let mut p = Plan::new(1, names(3), 1, 0, Duration::from_secs(60));
        p.to_send(t0);
        p.on_event("d0", "ota 1: refused (signature): bad");
        assert!(p.to_send(t0).is_empty());
        let s = p.summary();
        assert!(s.done && s.halted.is_some());
        assert_eq!(s.devices["d1"], DeviceOutcome::Pending);
    }

    #[test]
    fn a_restored_plan_sends_only_what_was_not_sent_and_keeps_timeouts() {
        let t0 = Instant::now();
        let mut p = Plan::new(9, names(4), 1, 0, Duration::from_secs(60));
        p.to_send(t0);
        p.on_event("d0", "ota 9: confirmed: version 0.2.0");
        assert_eq!(p.to_send(t0), ["d1", "d2", "d3"]);
        p.on_event("d1", "ota 9: confirmed: version 0.2.0");
        // As the store gives it back: d2 sent 50 s ago, d3 never sent.
        let mut devices: BTreeMap<_, _> = p
            .summary()
            .devices
            .into_iter()
            .map(|(d, o)| (d, (o, None)))
            .collect();
        devices.insert("d2".into(), (DeviceOutcome::Sent, Some(t0)));
        devices.insert("d3".into(), (DeviceOutcome::Pending, None));
        let waves = p.waves().to_vec();
        let mut r = Plan::restore(9, waves, devices, 0, Duration::from_secs(60), None);
        let s = r.summary();
        assert_eq!((s.stage, s.stages, s.state), (1, 2, RolloutState::Running));
        assert_eq!(r.to_send(t0 + Duration::from_secs(50)), ["d3"]);
        assert!(r.to_send(t0 + Duration::from_secs(50)).is_empty());
        assert_eq!(r.next_deadline(), Some(t0 + Duration::from_secs(60)));
        r.on_event("d3", "ota 9: confirmed: version 0.2.0");
        r.expire(t0 + Duration::from_secs(60));
        let s = r.summary();
        assert!(s.done);
        assert_eq!(
            (s.confirmed, s.failed, s.state),
            (3, 1, RolloutState::Halted)
        );
    }

    #[test]
    fn percent_selection_is_stable_and_nested() {
        let fleet = names(20);
        let ten = select(&fleet, 10);
        let twenty = select(&fleet, 20);
        assert_eq!(ten.len(), 2);
        assert_eq!(twenty.len(), 4);
        assert!(ten.iter().all(|d| twenty.contains(d)));
        assert_eq!(select(&fleet, 10), ten);
        assert_eq!(select(&fleet, 1).len(), 1);
        assert_eq!(select(&fleet, 0).len(), 0);
        assert_eq!(select(&fleet, 100), fleet, "all, in the order given");
    }
}
