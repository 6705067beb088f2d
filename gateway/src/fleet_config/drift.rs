//! Desired against reported: which devices have not converged.

use std::collections::BTreeMap;

use aeris_sink::fleet_config::{DesiredRow, ReportedRow, Scope};
use serde::Serialize;

use super::{effective, scopes};

/// Where a device stands: desired against reported.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeviceConfig {
    /// Desired version; 0 = nothing desired.
    pub desired: u64,
    /// Version the device reports it runs; `None` before its first report.
    pub applied: Option<u64>,
    pub refused: Option<(u64, String)>,
    /// `converged`, `pending` (not yet applied) or `refused`.
    pub state: &'static str,
}

impl DeviceConfig {
    pub fn drift(&self) -> bool {
        self.state != "converged"
    }
}

/// Desired against reported for each device in `devices` and each device
/// that reported: those with nothing desired are left out.
pub fn drift(
    devices: &[String],
    reports: &[ReportedRow],
    rows: &[DesiredRow],
) -> BTreeMap<String, DeviceConfig> {
    let mut names: Vec<&str> = devices.iter().map(String::as_str).collect();
    names.extend(reports.iter().map(|r| r.device.as_str()));
    names.sort_unstable();
    names.dedup();
    let mut out = BTreeMap::new();
    for device in names {
        let report = reports.iter().find(|r| r.device == device);
        let groups = report.map(|r| r.groups.as_slice()).unwrap_or(&[]);
        let eff = effective(device, groups, rows, None);
        if eff.version == 0 {
            continue;
        }
        let applied = report.map(|r| r.applied);
        let refused = report.and_then(|r| Some((r.refused_version?, r.refused_reason.clone()?)));
        let state = match (applied, &refused) {
            (Some(a), _) if a == eff.version => "converged",
            (_, Some((v, _))) if *v == eff.version => "refused",
            _ => "pending",
        };
        out.insert(
            device.to_owned(),
            DeviceConfig {
                desired: eff.version,
                applied,
                refused,
                state,
            },
        );
    }
    out
}

/// Every scope the drift of `devices` and `reports` needs the rows of.
pub fn drift_scopes(devices: &[String], reports: &[ReportedRow]) -> Vec<Scope> {
    let mut all: Vec<Scope> = devices
        .iter()
        .chain(reports.iter().map(|r| &r.device))
        .flat_map(|d| {
            let groups = reports
                .iter()
                .find(|r| &r.device == d)
                .map(|r| r.groups.clone())
                .unwrap_or_default();
            scopes(d, &groups)
        })
        .collect();
    all.sort();
    all.dedup();
    all
}
