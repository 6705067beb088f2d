//! A staged change of a group's desired configuration, through the
//! rollout machinery ([`crate::rollout::Plan`]): the fragment is stored
//! restricted to the canary devices (so no report of another device brings
//! it to them), sent to them, and each one's outcome read from its
//! `up/config` report: the version applied confirms it, a refusal of it
//! fails it, silence past `device_timeout` fails it. Once every canary
//! confirmed, the fragment reaches the whole group and the rest are sent
//! it; past `max_failures` failures the change halts and stays with the
//! devices that got it (a fixed fragment, set again, replaces it).

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use aeris_sink::fleet_config::{Scope, ScopeKind};
use aeris_sink::Sink;
use aeris_wire::{decode, encode, Channel, ConfigReport, Topics};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::Value;
use tracing::{info, warn};

use super::service::{check_scope, SetError};
use super::{command, effective, scopes};
use crate::config::BrokerConfig;
use crate::rollout::{Plan, Summary};

/// How a staged change proceeds.
#[derive(Debug, Clone)]
pub struct Stage {
    /// Devices changed first, alone (the first in name order).
    pub canary: usize,
    /// Failures tolerated before the change halts.
    pub max_failures: usize,
    /// A device that has not reported the version after this long failed.
    pub device_timeout: Duration,
}

fn failed(e: impl std::fmt::Display) -> SetError {
    SetError::Invalid(e.to_string())
}

/// Runs a staged change of `group`'s fragment to its end (or `give_up`);
/// `on_change` sees each new summary (its `command_id` is the version).
pub async fn run(
    sink: &dyn Sink,
    broker: &BrokerConfig,
    (group, fragment, actor): (String, Value, &str),
    stage: Stage,
    give_up: Duration,
    mut on_change: impl FnMut(&Summary),
) -> Result<Summary, SetError> {
    let scope = Scope {
        kind: ScopeKind::Group,
        name: group.clone(),
    };
    check_scope(&scope).map_err(SetError::Invalid)?;
    super::check_fragment(&fragment).map_err(SetError::Invalid)?;
    let groups: BTreeMap<String, Vec<String>> = sink
        .config_reports()
        .await?
        .into_iter()
        .filter(|r| r.groups.contains(&group))
        .map(|r| (r.device, r.groups))
        .collect();
    if groups.is_empty() {
        return Err(SetError::Invalid(format!(
            "no device reports group {group}"
        )));
    }
    let targets: Vec<String> = groups.keys().cloned().collect();
    let canary = targets[..stage.canary.min(targets.len())].to_vec();
    let row = sink
        .set_config(&scope, &fragment, actor, Some(&canary))
        .await?;
    let mut plan = Plan::new(
        row.version,
        targets.clone(),
        stage.canary,
        stage.max_failures,
        stage.device_timeout,
    );
    let topics = Topics::new(&broker.prefix).map_err(failed)?;
    let client_id = format!("aeris-config-stage-{:08x}", crate::mqtt::random_suffix());
    let opts = crate::mqtt::options(broker, &client_id).map_err(failed)?;
    let (client, mut events) = AsyncClient::new(opts, 1024);
    let end = tokio::time::Instant::now() + give_up;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let (mut subscribed, mut reached) = (false, BTreeSet::new());
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    let mut last = plan.summary();
    on_change(&last);
    loop {
        tokio::select! {
            _ = tokio::time::sleep_until(end) => {
                return Err(failed(format!("staged change {} did not finish within {give_up:?}", row.version)));
            }
            _ = tick.tick() => {}
            ev = events.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let filter = topics.all_devices(Channel::UpConfig);
                    client.subscribe(filter, QoS::AtLeastOnce).await.map_err(failed)?;
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => subscribed = true,
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if let (Ok((device, Channel::UpConfig)), Ok(r)) =
                        (topics.parse(&p.topic), decode::<ConfigReport>(&p.payload))
                    {
                        if let Some(&want) = expected.get(device) {
                            on_report(&mut plan, device, &r, want);
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    subscribed = false;
                    warn!(error = %e, "broker connection lost; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            },
        }
        if !subscribed {
            continue;
        }
        plan.expire(Instant::now());
        let wave = plan.to_send(Instant::now());
        if !wave.is_empty() {
            reached.extend(wave.iter().cloned());
            let all = reached.len() == targets.len();
            let reach: Vec<String> = reached.iter().cloned().collect();
            sink.widen_config(row.version, (!all).then_some(&reach[..]))
                .await?;
            for device in wave {
                let device_groups = groups.get(&device).cloned().unwrap_or_default();
                let rows = sink.config_rows(&scopes(&device, &device_groups)).await?;
                let eff = effective(&device, &device_groups, &rows, None);
                let cmd = command(&eff).map_err(SetError::Invalid)?;
                info!(%device, version = eff.version, "staged configuration sent");
                expected.insert(device.clone(), eff.version);
                client
                    .publish(topics.cmd(&device), QoS::AtLeastOnce, false, encode(&cmd))
                    .await
                    .map_err(failed)?;
            }
        }
        let now = plan.summary();
        if now != last {
            on_change(&now);
            last = now;
        }
        if last.done {
            let _ = client.disconnect().await;
            return Ok(last);
        }
    }
}

/// A report of a device sent version `want`: applied confirms, refused fails.
fn on_report(plan: &mut Plan, device: &str, r: &ConfigReport, want: u64) {
    if r.applied == want {
        plan.record(device, Ok(()));
    } else if let Some(refusal) = r.refused.as_ref().filter(|f| f.version == want) {
        plan.record(device, Err(format!("refused: {}", refusal.reason)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aeris_wire::Refusal;

    fn report(applied: u64, refused: Option<u64>) -> ConfigReport {
        ConfigReport {
            device: "d".into(),
            ts_ms: 0,
            groups: vec![],
            applied,
            refused: refused.map(|version| Refusal {
                version,
                reason: "bad".into(),
            }),
        }
    }

    #[test]
    fn reports_confirm_or_fail_the_sent_devices_and_a_refusal_halts() {
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        let t0 = Instant::now();
        let mut plan = Plan::new(7, names.clone(), 1, 0, Duration::from_secs(60));
        assert_eq!(plan.to_send(t0), ["a"]);
        on_report(&mut plan, "a", &report(3, None), 7);
        on_report(&mut plan, "a", &report(3, Some(6)), 7);
        assert!(plan.to_send(t0).is_empty(), "an old report decides nothing");
        on_report(&mut plan, "a", &report(7, None), 7);
        assert_eq!(plan.to_send(t0), ["b", "c"]);
        on_report(&mut plan, "b", &report(3, Some(7)), 7);
        plan.expire(t0);
        let s = plan.summary();
        assert!(s.halted.is_some() && !s.done, "c still running");
        assert_eq!(
            s.devices["b"],
            crate::rollout::DeviceOutcome::Failed("refused: bad".into())
        );

        let mut plan = Plan::new(8, names, 1, 0, Duration::from_secs(60));
        plan.to_send(t0);
        on_report(&mut plan, "a", &report(0, Some(8)), 8);
        plan.expire(t0);
        let s = plan.summary();
        assert!(s.done && s.halted.is_some());
        assert!(plan.to_send(t0).is_empty(), "the rest never get it");
    }
}
