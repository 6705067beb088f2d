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
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aeris_sink::fleet_config::{Scope, ScopeKind};
use aeris_sink::Sink;
use aeris_wire::{decode, encode, Channel, ConfigReport, Topics};
use rumqttc::{AsyncClient, Event, Packet, QoS};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::service::{check_scope, SetError};
use super::{command, effective, scopes};
use crate::config::BrokerConfig;
use crate::rollout::store::Meta;
use crate::rollout::{ConfigRunner, DeviceOutcome, Plan, Save, Summary};

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

/// A staged change stored for its canaries, ready to [`drive`].
#[derive(Debug)]
pub struct Begun {
    pub group: String,
    /// The fragment's version: the change's id (the CLI's `command_id`,
    /// the rollout id over HTTP).
    pub version: u64,
    pub plan: Plan,
}

/// Checks the request, stores `fragment` as `group`'s desired
/// configuration restricted to the canaries (the first in name order of
/// the devices whose last report names the group), and returns the plan.
pub async fn begin(
    sink: &dyn Sink,
    (group, fragment, actor): (String, Value, &str),
    stage: &Stage,
) -> Result<Begun, SetError> {
    let scope = Scope {
        kind: ScopeKind::Group,
        name: group.clone(),
    };
    check_scope(&scope).map_err(SetError::Invalid)?;
    super::check_fragment(&fragment).map_err(SetError::Invalid)?;
    let targets: Vec<String> = members(sink, &group).await?.into_keys().collect();
    if targets.is_empty() {
        return Err(SetError::Invalid(format!(
            "no device reports group {group}"
        )));
    }
    let canary = targets[..stage.canary.min(targets.len())].to_vec();
    let row = sink
        .set_config(&scope, &fragment, actor, Some(&canary))
        .await?;
    let plan = Plan::new(
        row.version,
        targets,
        stage.canary,
        stage.max_failures,
        stage.device_timeout,
    );
    Ok(Begun {
        group,
        version: row.version,
        plan,
    })
}

/// The devices whose last report names `group`, with their groups.
async fn members(sink: &dyn Sink, group: &str) -> Result<BTreeMap<String, Vec<String>>, SetError> {
    Ok(sink
        .config_reports()
        .await?
        .into_iter()
        .filter(|r| r.groups.iter().any(|g| g == group))
        .map(|r| (r.device, r.groups))
        .collect())
}

/// Runs a staged change to its end (or `give_up`, or `stop`): sends each
/// wave its effective configuration, reads the outcomes from `up/config`,
/// widens the fragment as waves go out. `on_change` gets each new summary
/// (the first at once) and must have stored it when its future returns;
/// an `Err` stops the run. Also resumes a change from a stored plan: the
/// devices already sent wait for their (retained) reports.
pub async fn drive<F, Fut>(
    sink: &dyn Sink,
    broker: &BrokerConfig,
    (group, version, mut plan): (&str, u64, Plan),
    give_up: Duration,
    stop: CancellationToken,
    mut on_change: F,
) -> anyhow::Result<Summary>
where
    F: FnMut(Summary) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let groups = members(sink, group).await?;
    let topics = Topics::new(&broker.prefix)?;
    let client_id = format!("aeris-config-stage-{:08x}", crate::mqtt::random_suffix());
    let opts = crate::mqtt::options(broker, &client_id)?;
    let (client, mut events) = AsyncClient::new(opts, 1024);
    let end = tokio::time::Instant::now() + give_up;
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut subscribed = false;
    let mut last = plan.summary();
    let total = last.devices.len();
    let mut reached: BTreeSet<String> = last
        .devices
        .iter()
        .filter(|(_, o)| **o != DeviceOutcome::Pending)
        .map(|(d, _)| d.clone())
        .collect();
    let mut expected: BTreeMap<String, u64> = BTreeMap::new();
    for device in &reached {
        expected.insert(
            device.clone(),
            effective_of(sink, &groups, device).await?.version,
        );
    }
    on_change(last.clone()).await?;
    loop {
        tokio::select! {
            _ = stop.cancelled() => {
                anyhow::bail!("staged change {version} stopped before it finished");
            }
            _ = tokio::time::sleep_until(end) => {
                anyhow::bail!("staged change {version} did not finish within {give_up:?}");
            }
            _ = tick.tick() => {}
            ev = events.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    let filter = topics.all_devices(Channel::UpConfig);
                    client.subscribe(filter, QoS::AtLeastOnce).await?;
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
        let now = plan.summary();
        if now != last {
            // Stored before the wave goes out: a resumed change does not
            // send it again, its devices wait for their reports.
            on_change(now.clone()).await?;
            last = now;
        }
        if !wave.is_empty() {
            reached.extend(wave.iter().cloned());
            let all = reached.len() >= total;
            let reach: Vec<String> = reached.iter().cloned().collect();
            sink.widen_config(version, (!all).then_some(&reach[..]))
                .await?;
            for device in wave {
                let eff = effective_of(sink, &groups, &device).await?;
                let cmd = command(&eff).map_err(anyhow::Error::msg)?;
                info!(%device, version = eff.version, "staged configuration sent");
                expected.insert(device.clone(), eff.version);
                client
                    .publish(topics.cmd(&device), QoS::AtLeastOnce, false, encode(&cmd))
                    .await?;
            }
        }
        if last.done {
            let _ = client.disconnect().await;
            return Ok(last);
        }
    }
}

/// `device`'s effective configuration now.
async fn effective_of(
    sink: &dyn Sink,
    groups: &BTreeMap<String, Vec<String>>,
    device: &str,
) -> Result<super::Effective, SetError> {
    let device_groups = groups.get(device).cloned().unwrap_or_default();
    let rows = sink.config_rows(&scopes(device, &device_groups)).await?;
    Ok(effective(device, &device_groups, &rows, None))
}

/// [`begin`] and [`drive`] at once, for the CLI: `on_change` sees each
/// summary.
pub async fn run(
    sink: &dyn Sink,
    broker: &BrokerConfig,
    request: (String, Value, &str),
    stage: Stage,
    give_up: Duration,
    mut on_change: impl FnMut(&Summary),
) -> anyhow::Result<Summary> {
    let begun = begin(sink, request, &stage).await?;
    let run = (begun.group.as_str(), begun.version, begun.plan);
    drive(sink, broker, run, give_up, CancellationToken::new(), |s| {
        on_change(&s);
        std::future::ready(Ok(()))
    })
    .await
}

/// How a stored rollout row describes a staged change begun by `actor`
/// ([`Meta::config_change`]); its id is the fragment's version.
pub fn meta(begun: &Begun, actor: &str, stage: &Stage) -> Meta {
    Meta {
        id: begun.version,
        update: serde_json::json!({
            "config": { "group": begun.group, "version": begun.version }
        }),
        started_by: actor.to_owned(),
        created_ms: aeris_wire::now_ms(),
        stages: begun.plan.waves().to_vec(),
        max_failures: stage.max_failures,
        timeout: stage.device_timeout,
    }
}

/// The rollout driver's runner of staged changes: [`drive`], with each
/// summary stored.
pub fn runner(sink: Arc<dyn Sink>, broker: BrokerConfig) -> ConfigRunner {
    Arc::new(
        move |meta: Meta, plan: Plan, stop: CancellationToken, mut save: Save| {
            let (sink, broker) = (sink.clone(), broker.clone());
            Box::pin(async move {
                let Some((group, version)) = meta.config_change() else {
                    anyhow::bail!("rollout {} is not a configuration change", meta.id);
                };
                let give_up = crate::rollout::driver::give_up(meta.timeout);
                let run = (group.as_str(), version, plan);
                drive(sink.as_ref(), &broker, run, give_up, stop, &mut save).await
            })
        },
    )
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
