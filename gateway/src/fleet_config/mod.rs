//! Fleet configuration as desired and reported state (issue 18).
//!
//! Operators set a fragment (a JSON object of the agent's config keys) per
//! device or per group ([`service::set`], from `PUT /api/devices/{id}/config`,
//! `PUT /api/groups/{name}/config` or `aeris-gateway config set`); the
//! database keeps every one with a fleet-wide version, who and when
//! (migration 0010). A device's *effective* desired configuration is its
//! groups' fragments in the order its config lists them, then its own,
//! merged key by key (a later one wins), with the highest version among
//! them ([`effective`]). The gateway sends it as `Configure { version,
//! fragment (TOML) }` on the device's `down/cmd`:
//!
//! - when it changes (for a group: to every device whose last report names
//!   the group), and
//! - whenever a device's `up/config` report (at each of its connects, and
//!   retained, so also when a gateway starts) shows another version that it
//!   has not refused ([`needs_send`]): an offline device converges when it
//!   comes back.
//!
//! A group's change may be staged ([`staged`]): canary devices first, then
//! the rest, halting when devices refuse it or stop reporting.
//!
//! The device checks the fragment (the gateway only checks that it is an
//! object without nulls) and reports the version it runs or its refusal.
//! Drift ([`drift`]): a device with a desired configuration whose report
//! names another version, listed in `/api/devices` and exported as
//! `aeris_gateway_device_config_drift` for the alert rule.

pub mod command;
mod drift;
pub mod send;
pub mod service;
pub mod staged;

use aeris_sink::fleet_config::{DesiredRow, Scope, ScopeKind};
use aeris_wire::{Command, CommandKind, ConfigReport};
use serde::Serialize;
use serde_json::Value;

pub use drift::{drift, drift_scopes, DeviceConfig};

/// A device's desired configuration: its groups' and its own fragments merged.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Effective {
    /// The highest version among the fragments merged; 0 = nothing desired.
    pub version: u64,
    pub fragment: Value,
    /// The fragments merged, in order, with their versions.
    pub sources: Vec<(Scope, u64)>,
}

/// The scopes whose fragments make up `device`'s configuration, in merge
/// order: its groups as listed, then the device.
pub fn scopes(device: &str, groups: &[String]) -> Vec<Scope> {
    let mut out: Vec<Scope> = groups
        .iter()
        .map(|g| Scope {
            kind: ScopeKind::Group,
            name: g.clone(),
        })
        .collect();
    out.push(Scope {
        kind: ScopeKind::Device,
        name: device.to_owned(),
    });
    out
}

/// The effective configuration from `rows` (any order; rows of other
/// scopes are ignored), as it stood at version `at` (`None`: now).
pub fn effective(
    device: &str,
    groups: &[String],
    rows: &[DesiredRow],
    at: Option<u64>,
) -> Effective {
    let mut fragment = Value::Object(Default::default());
    let mut sources = Vec::new();
    for scope in scopes(device, groups) {
        let newest = rows
            .iter()
            .filter(|r| r.scope == scope && r.reaches(device) && at.is_none_or(|v| r.version <= v))
            .max_by_key(|r| r.version);
        if let Some(row) = newest {
            merge(&mut fragment, &row.fragment);
            sources.push((scope, row.version));
        }
    }
    let version = sources.iter().map(|s| s.1).max().unwrap_or(0);
    Effective {
        version,
        fragment,
        sources,
    }
}

/// Merges `over` into `base`: objects key by key, anything else replaced.
fn merge(base: &mut Value, over: &Value) {
    match (base, over) {
        (Value::Object(b), Value::Object(o)) => {
            for (k, v) in o {
                merge(b.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (b, o) => *b = o.clone(),
    }
}

/// A fragment the gateway stores: a JSON object, without nulls (TOML has
/// none), at most the wire's size once written as TOML.
pub fn check_fragment(fragment: &Value) -> Result<String, String> {
    if !fragment.is_object() {
        return Err("a configuration fragment is a JSON object of config keys".into());
    }
    let text = to_toml(fragment)?;
    if text.len() > aeris_wire::config_report::MAX_FRAGMENT_BYTES {
        return Err(format!(
            "fragment is {} bytes as TOML, at most {} allowed",
            text.len(),
            aeris_wire::config_report::MAX_FRAGMENT_BYTES
        ));
    }
    Ok(text)
}

/// The fragment as the TOML document the agent reads.
pub fn to_toml(fragment: &Value) -> Result<String, String> {
    toml::to_string(fragment).map_err(|e| format!("cannot be written as TOML: {e}"))
}

/// The command that brings a device to `eff`.
pub fn command(eff: &Effective) -> Result<Command, String> {
    Ok(Command {
        id: eff.version,
        kind: CommandKind::Configure {
            version: eff.version,
            fragment: to_toml(&eff.fragment)?,
        },
    })
}

/// Whether a device that reported `report` should be sent `eff`: something
/// is desired, the device runs another version, and it has not refused
/// this one (sending it again would be refused again).
pub fn needs_send(report: &ConfigReport, eff: &Effective) -> bool {
    eff.version > 0
        && report.applied != eff.version
        && report.refused.as_ref().map(|r| r.version) != Some(eff.version)
}

/// A device's report: stored, and when it runs another version than its
/// desired one (and has not refused that), `send` gets the command.
pub async fn on_report(
    sink: &dyn aeris_sink::Sink,
    stats: &crate::stats::Stats,
    report: &ConfigReport,
    send: impl FnOnce(&Command) -> Result<(), String>,
) {
    use aeris_sink::SinkError;
    let device = &report.device;
    match sink.record_config_report(report).await {
        Ok(()) => {}
        // The SQLite sink keeps no fleet configuration.
        Err(SinkError::Unsupported(_)) => return,
        Err(e) => {
            stats.reject("config_report_not_stored");
            tracing::warn!(%device, error = %e, "config report not stored");
        }
    }
    let rows = match sink.config_rows(&scopes(device, &report.groups)).await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(%device, error = %e, "desired configuration not read");
            return;
        }
    };
    let eff = effective(device, &report.groups, &rows, None);
    if !needs_send(report, &eff) {
        return;
    }
    let sent = command(&eff).and_then(|cmd| send(&cmd));
    match sent {
        Ok(()) => tracing::info!(
            %device,
            running = report.applied,
            desired = eff.version,
            "device runs another configuration version; desired one sent"
        ),
        Err(e) => tracing::warn!(%device, error = %e, "desired configuration not sent"),
    }
}

/// Key-by-key differences between two fragments, as dotted keys with the
/// old and new value (`null`: absent).
pub fn diff(old: &Value, new: &Value) -> Vec<(String, Value, Value)> {
    let mut out = Vec::new();
    diff_into("", old, new, &mut out);
    out
}

fn diff_into(prefix: &str, old: &Value, new: &Value, out: &mut Vec<(String, Value, Value)>) {
    let empty = serde_json::Map::new();
    let object = |v: &'_ Value| -> Option<serde_json::Map<String, Value>> {
        match v {
            Value::Object(m) => Some(m.clone()),
            Value::Null => Some(empty.clone()),
            _ => None,
        }
    };
    // A table on one side only is compared key by key with nothing.
    let tables = matches!((old, new), (Value::Object(_), _) | (_, Value::Object(_)));
    match (
        tables.then(|| object(old)).flatten(),
        tables.then(|| object(new)).flatten(),
    ) {
        (Some(a), Some(b)) => {
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            for k in keys {
                let (x, y) = (
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                );
                diff_into(&format!("{prefix}{k}."), x, y, out);
            }
        }
        _ if old != new => out.push((
            prefix.trim_end_matches('.').to_owned(),
            old.clone(),
            new.clone(),
        )),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(kind: ScopeKind, name: &str, version: u64, fragment: Value) -> DesiredRow {
        DesiredRow {
            scope: Scope {
                kind,
                name: name.into(),
            },
            version,
            fragment,
            set_by: "t".into(),
            set_at_ms: 0,
            devices: None,
        }
    }

    #[test]
    fn groups_merge_under_the_device_and_the_newest_version_counts() {
        let rows = vec![
            row(
                ScopeKind::Group,
                "north",
                2,
                json!({"preprocess": {"spike_ratio": 3.0, "aqi": false}}),
            ),
            row(
                ScopeKind::Device,
                "d1",
                3,
                json!({"preprocess": {"spike_ratio": 5.0}}),
            ),
            row(
                ScopeKind::Group,
                "north",
                7,
                json!({"preprocess": {"spike_ratio": 2.0, "aqi": true}}),
            ),
            row(ScopeKind::Device, "d2", 9, json!({"sensors": {}})),
        ];
        let groups = vec!["north".to_owned()];
        let now = effective("d1", &groups, &rows, None);
        assert_eq!(now.version, 7);
        assert_eq!(
            now.fragment,
            json!({"preprocess": {"spike_ratio": 5.0, "aqi": true}})
        );
        let then = effective("d1", &groups, &rows, Some(3));
        assert_eq!(then.version, 3);
        assert_eq!(
            then.fragment,
            json!({"preprocess": {"spike_ratio": 5.0, "aqi": false}})
        );
        assert_eq!(effective("d1", &[], &rows, None).version, 3);
        assert_eq!(effective("d3", &[], &rows, None).version, 0);
        let changes = diff(&then.fragment, &now.fragment);
        assert_eq!(
            changes,
            vec![("preprocess.aqi".into(), json!(false), json!(true))]
        );
        let added = diff(&json!({}), &json!({"sensors": {"s1": {"lat": 1.0}}}));
        assert_eq!(
            added,
            vec![("sensors.s1.lat".into(), Value::Null, json!(1.0))]
        );
    }

    #[test]
    fn a_refused_version_is_not_sent_again() {
        let eff = Effective {
            version: 5,
            fragment: json!({}),
            sources: vec![],
        };
        let mut report = ConfigReport {
            device: "d1".into(),
            ts_ms: 0,
            groups: vec![],
            applied: 4,
            refused: None,
        };
        assert!(needs_send(&report, &eff));
        report.refused = Some(aeris_wire::Refusal {
            version: 5,
            reason: "no".into(),
        });
        assert!(!needs_send(&report, &eff));
        report.refused = None;
        report.applied = 5;
        assert!(!needs_send(&report, &eff));
        assert!(check_fragment(&json!([1])).is_err());
        assert!(check_fragment(&json!({"a": null})).is_err());
        let toml = check_fragment(&json!({"sensors": {"s1": {"lat": 1.5, "lon": 2.0}}})).unwrap();
        assert!(toml.contains("lat = 1.5"), "{toml}");
    }
}
