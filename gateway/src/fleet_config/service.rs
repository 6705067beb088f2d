//! The operations behind `aeris-gateway config set|get|diff|history` and
//! the `/api/devices/{id}/config`, `/api/groups/{name}/config` routes; the
//! callers write the audit row.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use aeris_sink::fleet_config::{DesiredRow, ReportedRow, Scope, ScopeKind};
use aeris_sink::{Sink, SinkError};
use serde::Serialize;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::{command, drift, drift_scopes, effective, scopes, DeviceConfig, Effective};
use crate::config::BrokerConfig;
use crate::opstats::DeviceLabel;
use crate::stats::Stats;

/// Why a set failed.
#[derive(Debug, thiserror::Error)]
pub enum SetError {
    /// The request itself is wrong (400).
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Sink(#[from] SinkError),
}

/// What a set did.
#[derive(Debug, Clone, Serialize)]
pub struct SetOutcome {
    pub desired: DesiredRow,
    /// Devices sent their new effective configuration, with its version.
    pub sent: BTreeMap<String, u64>,
    /// Why the commands could not be published (the desired state is
    /// stored: each device gets it at its next report).
    pub publish_error: Option<String>,
}

/// Checks a scope's name: a device id, or a group named like one.
pub fn check_scope(scope: &Scope) -> Result<(), String> {
    aeris_wire::validate_device_id(&scope.name)
        .map_err(|e| format!("{} name: {e}", scope.kind.as_str()))
}

/// Stores `fragment` as `scope`'s desired configuration and sends every
/// device it concerns its new effective configuration.
pub async fn set(
    sink: &dyn Sink,
    broker: &BrokerConfig,
    scope: Scope,
    fragment: Value,
    actor: &str,
) -> Result<SetOutcome, SetError> {
    check_scope(&scope).map_err(SetError::Invalid)?;
    super::check_fragment(&fragment).map_err(SetError::Invalid)?;
    let desired = sink.set_config(&scope, &fragment, actor, None).await?;
    let reports = sink.config_reports().await?;
    let devices: Vec<(String, Vec<String>)> = match scope.kind {
        ScopeKind::Device => {
            let groups = reports
                .iter()
                .find(|r| r.device == scope.name)
                .map(|r| r.groups.clone())
                .unwrap_or_default();
            vec![(scope.name.clone(), groups)]
        }
        ScopeKind::Group => reports
            .iter()
            .filter(|r| r.groups.contains(&scope.name))
            .map(|r| (r.device.clone(), r.groups.clone()))
            .collect(),
    };
    let mut commands = Vec::new();
    for (device, groups) in devices {
        let rows = sink.config_rows(&scopes(&device, &groups)).await?;
        let eff = effective(&device, &groups, &rows, None);
        let cmd = command(&eff).map_err(SetError::Invalid)?;
        commands.push((device, cmd));
    }
    let sent = commands.iter().map(|(d, c)| (d.clone(), c.id)).collect();
    let publish_error = super::send::publish(broker, &commands).await.err();
    Ok(SetOutcome {
        desired,
        sent,
        publish_error,
    })
}

/// A scope's desired configuration, and for a device its effective one
/// and what it reports.
#[derive(Debug, Clone, Serialize)]
pub struct View {
    pub scope: Scope,
    /// The scope's own newest fragment.
    pub desired: Option<DesiredRow>,
    /// Devices only: its groups' and its own fragments merged.
    pub effective: Option<Effective>,
    pub reported: Option<ReportedRow>,
    pub status: Option<DeviceConfig>,
}

pub async fn view(sink: &dyn Sink, scope: Scope) -> Result<View, SinkError> {
    let own = sink.config_rows(std::slice::from_ref(&scope)).await?;
    let desired = own.into_iter().max_by_key(|r| r.version);
    if scope.kind == ScopeKind::Group {
        return Ok(View {
            scope,
            desired,
            effective: None,
            reported: None,
            status: None,
        });
    }
    let reports = sink.config_reports().await?;
    let reported = reports.iter().find(|r| r.device == scope.name).cloned();
    let groups = reported
        .as_ref()
        .map(|r| r.groups.clone())
        .unwrap_or_default();
    let rows = sink.config_rows(&scopes(&scope.name, &groups)).await?;
    let eff = effective(&scope.name, &groups, &rows, None);
    let status = drift(std::slice::from_ref(&scope.name), &reports, &rows).remove(&scope.name);
    Ok(View {
        scope,
        desired,
        effective: Some(eff),
        reported,
        status,
    })
}

/// Every fragment set for `scope`, newest first.
pub async fn history(sink: &dyn Sink, scope: &Scope) -> Result<Vec<DesiredRow>, SinkError> {
    sink.config_rows(std::slice::from_ref(scope)).await
}

/// A device's desired configuration against the one it runs.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub device: String,
    pub desired: u64,
    pub applied: Option<u64>,
    pub refused: Option<(u64, String)>,
    /// `(key, running, desired)`; `null` = not set by the cloud.
    pub changes: Vec<(String, Value, Value)>,
}

pub async fn diff(sink: &dyn Sink, device: &str) -> Result<Diff, SinkError> {
    let reports = sink.config_reports().await?;
    let reported = reports.iter().find(|r| r.device == device);
    let groups = reported.map(|r| r.groups.clone()).unwrap_or_default();
    let rows = sink.config_rows(&scopes(device, &groups)).await?;
    let desired = effective(device, &groups, &rows, None);
    let applied = reported.map(|r| r.applied);
    let running = effective(device, &groups, &rows, Some(applied.unwrap_or(0)));
    Ok(Diff {
        device: device.to_owned(),
        desired: desired.version,
        applied,
        refused: reported.and_then(|r| Some((r.refused_version?, r.refused_reason.clone()?))),
        changes: super::diff(&running.fragment, &desired.fragment),
    })
}

/// Desired against reported for `devices` and every device that reported.
pub async fn drift_of(
    sink: &dyn Sink,
    devices: &[String],
) -> Result<BTreeMap<String, DeviceConfig>, SinkError> {
    let reports = sink.config_reports().await?;
    let rows = sink.config_rows(&drift_scopes(devices, &reports)).await?;
    Ok(drift(devices, &reports, &rows))
}

/// How often the drift gauges are read from the database.
pub const DRIFT_EVERY: Duration = Duration::from_secs(15);

/// Keeps `aeris_gateway_device_config_drift` up to date until `stop`.
pub async fn drift_gauges(sink: Arc<dyn Sink>, stats: Arc<Stats>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(DRIFT_EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        // Devices with a status and devices that reported a configuration.
        let devices = match sink.devices().await {
            Ok(d) => d.into_iter().map(|d| d.device).collect(),
            Err(_) => Vec::new(),
        };
        match drift_of(sink.as_ref(), &devices).await {
            Ok(all) => {
                for (device, c) in all {
                    stats
                        .ops
                        .device_config_drift
                        .get_or_create(&DeviceLabel { device })
                        .set(i64::from(c.drift()));
                }
            }
            Err(SinkError::Unsupported(_)) => return,
            Err(e) => warn!(error = %e, "configuration drift not read"),
        }
        debug!("configuration drift gauges updated");
    }
}
