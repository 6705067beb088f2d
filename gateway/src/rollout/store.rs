//! A rollout's plan in its stored form ([`aeris_sink::rollouts`]) and
//! back. Devices' send times cross as Unix ms (the plan keeps `Instant`s):
//! a device's timeout keeps running from when it was sent, across a
//! restart, so a device sent the update 8 minutes before the gateway went
//! away has the 2 minutes of a 10-minute timeout left when it resumes.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aeris_sink::rollouts::{StoredOutcome, StoredRollout};

use super::plan::{DeviceOutcome, Plan, Summary};

/// What a rollout was started with; it does not change while it runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub id: u64,
    pub update: serde_json::Value,
    pub started_by: String,
    pub created_ms: i64,
    pub stages: Vec<Vec<String>>,
    pub max_failures: usize,
    pub timeout: Duration,
}

impl Meta {
    /// A staged configuration change (`fleet_config::staged`) stores
    /// `{"config": {"group": .., "version": ..}}` where an update stores
    /// its payload: the group and the fragment's version.
    pub fn config_change(&self) -> Option<(String, u64)> {
        let c = &self.update["config"];
        Some((c["group"].as_str()?.to_owned(), c["version"].as_u64()?))
    }

    /// The update's version, from the manifest it carries ("" if none);
    /// `config <version>` for a staged configuration change.
    pub fn version(&self) -> String {
        if let Some((_, v)) = self.config_change() {
            return format!("config {v}");
        }
        self.update["manifest"]
            .as_str()
            .and_then(|m| serde_json::from_str::<serde_json::Value>(m).ok())
            .and_then(|m| m["version"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }

    /// The bytes devices get in `CommandKind::Ota`.
    pub fn payload(&self) -> Vec<u8> {
        self.update.to_string().into_bytes()
    }

    pub fn of(r: &StoredRollout) -> Meta {
        Meta {
            id: r.id,
            update: r.update.clone(),
            started_by: r.started_by.clone(),
            created_ms: r.created_ms,
            stages: r.stages.clone(),
            max_failures: r.max_failures as usize,
            timeout: Duration::from_millis(u64::try_from(r.device_timeout_ms).unwrap_or(0)),
        }
    }
}

fn outcome_text(o: &DeviceOutcome) -> (&'static str, Option<String>) {
    match o {
        DeviceOutcome::Pending => ("pending", None),
        DeviceOutcome::Sent => ("sent", None),
        DeviceOutcome::Confirmed => ("confirmed", None),
        DeviceOutcome::Failed(why) => ("failed", Some(why.clone())),
    }
}

fn outcome_of(d: &StoredOutcome) -> DeviceOutcome {
    match d.outcome.as_str() {
        "pending" => DeviceOutcome::Pending,
        "sent" => DeviceOutcome::Sent,
        "confirmed" => DeviceOutcome::Confirmed,
        _ => DeviceOutcome::Failed(d.detail.clone().unwrap_or_default()),
    }
}

/// `s` to store: the rollout row, and the devices whose outcome changed
/// since `prev` (every device without `prev`). `now_ms` and `now` are the
/// same moment on the two clocks.
pub fn to_stored(
    meta: &Meta,
    s: &Summary,
    prev: Option<&Summary>,
    now_ms: i64,
    now: Instant,
) -> StoredRollout {
    let stage_of = |device: &str| {
        meta.stages
            .iter()
            .position(|w| w.iter().any(|d| d == device))
            .unwrap_or(0) as u32
    };
    let devices = s
        .devices
        .iter()
        .filter(|(d, o)| prev.is_none_or(|p| p.devices.get(*d) != Some(o)))
        .map(|(d, o)| {
            let (outcome, detail) = outcome_text(o);
            let sent_ms = s.sent.get(d).map(|t| {
                now_ms
                    .saturating_sub(i64::try_from(now.duration_since(*t).as_millis()).unwrap_or(0))
            });
            StoredOutcome {
                device: d.clone(),
                stage: stage_of(d),
                outcome: outcome.to_owned(),
                detail,
                sent_ms,
                updated_ms: now_ms,
            }
        })
        .collect();
    StoredRollout {
        id: meta.id,
        version: meta.version(),
        update: meta.update.clone(),
        stages: meta.stages.clone(),
        stage: s.stage as u32,
        state: s.state,
        halted: s.halted.clone(),
        started_by: meta.started_by.clone(),
        max_failures: u32::try_from(meta.max_failures).unwrap_or(u32::MAX),
        device_timeout_ms: i64::try_from(meta.timeout.as_millis()).unwrap_or(i64::MAX),
        confirmed: s.confirmed as u32,
        failed: s.failed as u32,
        created_ms: meta.created_ms,
        updated_ms: now_ms,
        finished_ms: s.done.then_some(now_ms),
        devices,
    }
}

/// The plan that carries on where `r` stood: devices sent, confirmed or
/// failed are not sent again; a sent device's timeout runs from its stored
/// send time. `now_ms` and `now` are the same moment on the two clocks.
pub fn plan_of(r: &StoredRollout, now_ms: i64, now: Instant) -> Plan {
    let devices: BTreeMap<String, (DeviceOutcome, Option<Instant>)> = r
        .devices
        .iter()
        .map(|d| {
            let sent = d.sent_ms.map(|t| {
                let ago = Duration::from_millis(u64::try_from(now_ms - t).unwrap_or(0));
                now.checked_sub(ago).unwrap_or(now)
            });
            (d.device.clone(), (outcome_of(d), sent))
        })
        .collect();
    let meta = Meta::of(r);
    Plan::restore(
        r.id,
        r.stages.clone(),
        devices,
        meta.max_failures,
        meta.timeout,
        r.halted.clone(),
    )
}

/// What `GET /api/rollouts/{id}` shows of a stored rollout: the summary
/// the rollout reported (same fields as the CLI prints), its update's
/// version, who started it and when, its last change and its end.
pub fn view(r: &StoredRollout) -> serde_json::Value {
    let summary = Summary {
        command_id: r.id,
        devices: r
            .devices
            .iter()
            .map(|d| (d.device.clone(), outcome_of(d)))
            .collect(),
        confirmed: r.confirmed as usize,
        failed: r.failed as usize,
        halted: r.halted.clone(),
        done: r.finished_ms.is_some(),
        stage: r.stage as usize,
        stages: r.stages.len(),
        state: r.state,
        sent: BTreeMap::new(),
    };
    let mut v = serde_json::json!(summary);
    if let Some(o) = v.as_object_mut() {
        o.insert("version".into(), r.version.clone().into());
        o.insert("started_by".into(), r.started_by.clone().into());
        o.insert("created_ms".into(), r.created_ms.into());
        o.insert("updated_ms".into(), r.updated_ms.into());
        o.insert("finished_ms".into(), serde_json::json!(r.finished_ms));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_plan_comes_back_as_it_stood() {
        let t0 = Instant::now();
        let names: Vec<String> = (0..4).map(|i| format!("d{i}")).collect();
        let mut p = Plan::new(3, names, 1, 1, Duration::from_secs(600));
        p.to_send(t0);
        p.on_event("d0", "ota 3: confirmed: version 0.2.0");
        p.to_send(t0 + Duration::from_secs(5));
        p.on_event("d1", "ota 3: rolled back: version 0.2.0 not kept");
        let meta = Meta {
            id: 3,
            update: serde_json::json!({"manifest": "{\"version\":\"0.2.0\"}"}),
            started_by: "ops".into(),
            created_ms: 1_000,
            stages: p.waves().to_vec(),
            max_failures: 1,
            timeout: Duration::from_secs(600),
        };
        let now = t0 + Duration::from_secs(65);
        let s = p.summary();
        let stored = to_stored(&meta, &s, None, 100_000, now);
        assert_eq!(stored.version, "0.2.0");
        assert_eq!(stored.devices.len(), 4);
        let d2 = stored.devices.iter().find(|d| d.device == "d2").unwrap();
        assert_eq!(
            (d2.stage, d2.outcome.as_str(), d2.sent_ms),
            (1, "sent", Some(40_000))
        );
        // Only what changed is written again.
        p.on_event("d2", "ota 3: confirmed: version 0.2.0");
        let again = to_stored(&meta, &p.summary(), Some(&s), 101_000, now);
        assert_eq!(again.devices.len(), 1);

        // Resumed 65 s later on another clock: d3 has 540 s of 600 left.
        let later = Instant::now() + Duration::from_secs(1000);
        let restored = plan_of(&stored, 100_000, later);
        let r = restored.summary();
        assert_eq!((r.stage, r.confirmed, r.failed), (1, 1, 1));
        assert_eq!(r.devices, s.devices);
        assert_eq!(
            restored.next_deadline(),
            Some(later - Duration::from_secs(60) + Duration::from_secs(600))
        );
        assert_eq!(view(&stored)["devices"]["d1"]["state"], "failed");
    }
}
