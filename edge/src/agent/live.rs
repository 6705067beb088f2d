//! Applying a checked configuration to the running pipeline (issue 18).
//!
//! Which keys changed is found by comparing the configuration in effect
//! with the new one (so a key a newer fragment drops, going back to the
//! file's value, counts as changed too); each changed key is looked up in
//! the one table, [`fragment::ALLOWED`](crate::fragment::ALLOWED). When
//! every change is live, each stage gets its new settings on its `watch`
//! (ingest reads them before its next message, the uplink before its next
//! tick, the buffer before its next budget pass): no connection is closed
//! and no reading waits. Otherwise the pipeline restarts in its usual
//! order with the whole new configuration, the path the drain proves
//! loses nothing.

use std::sync::Arc;

use tokio::sync::watch;
use tracing::warn;

use crate::buffer::{Buffer, Windows};
use crate::config::Config;
use crate::fragment::{apply_of, Apply};
use crate::{ingest, uplink};

/// What a new configuration needs, with the keys that changed.
#[derive(Debug, PartialEq)]
pub(super) enum Plan {
    Live(Vec<String>),
    /// The keys that need the restart.
    Restart(Vec<String>),
}

/// How `new` can replace `old` in a running agent.
pub(super) fn plan(old: &Config, new: &Config) -> Plan {
    let mut changed = Vec::new();
    match (toml::Value::try_from(old), toml::Value::try_from(new)) {
        (Ok(a), Ok(b)) => diff("", &a, &b, &mut changed),
        // Not expected (the config serialises for --print-config): restart.
        _ => return Plan::Restart(vec!["<config>".into()]),
    }
    let restart: Vec<String> = changed
        .iter()
        .filter(|k| matches!(apply_of(k), Apply::Restart(_)))
        .cloned()
        .collect();
    if restart.is_empty() {
        Plan::Live(changed)
    } else {
        Plan::Restart(restart)
    }
}

/// The dotted paths whose values differ between `a` and `b`.
fn diff(prefix: &str, a: &toml::Value, b: &toml::Value, out: &mut Vec<String>) {
    match (a.as_table(), b.as_table()) {
        (Some(ta), Some(tb)) => {
            let keys: std::collections::BTreeSet<&String> = ta.keys().chain(tb.keys()).collect();
            for k in keys {
                let path = format!("{prefix}{k}");
                match (ta.get(k), tb.get(k)) {
                    (Some(va), Some(vb)) => diff(&format!("{path}."), va, vb, out),
                    _ => out.push(path),
                }
            }
        }
        _ if a != b => out.push(prefix.trim_end_matches('.').to_owned()),
        _ => {}
    }
}

/// The live settings of one pipeline run, one `watch` per stage.
pub(super) struct Live {
    pub(super) ingest: watch::Sender<Arc<ingest::Settings>>,
    pub(super) uplink: watch::Sender<Arc<uplink::Settings>>,
    pub(super) buffer: Buffer,
}

impl Live {
    /// Hands each stage its settings from `config`; a stage whose
    /// settings are unchanged is not woken.
    pub(super) async fn apply(&self, config: &Config) {
        send_changed(&self.ingest, super::stages::ingest_settings(config));
        send_changed(&self.uplink, super::stages::uplink_settings(config));
        if let Err(e) = self
            .buffer
            .set_windows(Windows::from_config(&config.preprocess))
            .await
        {
            warn!(error = %e, "buffer closed; new aggregation windows not applied");
        }
    }
}

fn send_changed<T: PartialEq>(tx: &watch::Sender<Arc<T>>, next: T) {
    tx.send_if_modified(|cur| {
        let changed = **cur != next;
        if changed {
            *cur = Arc::new(next);
        }
        changed
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(f: impl FnOnce(&mut Config)) -> Config {
        let mut c = Config::default();
        f(&mut c);
        c
    }

    #[test]
    fn live_keys_apply_live_and_one_restart_key_restarts_them_all() {
        let old = with(|c| {
            c.sensors.insert(
                "s1".into(),
                crate::config::SensorConfig { lat: 1.0, lon: 2.0 },
            );
        });
        assert_eq!(plan(&old, &old), Plan::Live(vec![]));
        let moved = with(|c| {
            c.sensors.insert(
                "s1".into(),
                crate::config::SensorConfig { lat: 1.5, lon: 2.0 },
            );
            c.preprocess.spike_ratio = 0.0;
            c.cloud.status_interval = std::time::Duration::from_secs(3);
        });
        assert_eq!(
            plan(&old, &moved),
            Plan::Live(vec![
                "cloud.status_interval".into(),
                "preprocess.spike_ratio".into(),
                "sensors.s1.lat".into(),
            ])
        );
        // A sensor the new one drops changed too.
        assert_eq!(
            plan(&old, &Config::default()),
            Plan::Live(vec!["sensors.s1".into()])
        );
        let mut both = moved.clone();
        both.cloud.keep_alive = std::time::Duration::from_secs(20);
        assert_eq!(
            plan(&old, &both),
            Plan::Restart(vec!["cloud.keep_alive".into()])
        );
        // Keys no fragment may set restart (the environment changed).
        let moved_broker = with(|c| c.cloud.port = 8883);
        assert_eq!(
            plan(&Config::default(), &moved_broker),
            Plan::Restart(vec!["cloud.port".into()])
        );
    }
}
