//! `aeris-gateway config set|get|diff|history`: the CLI side of
//! [`super::service`]; `set` is written to the audit log as
//! `config_set`.

use std::path::PathBuf;

use aeris_sink::fleet_config::{Scope, ScopeKind};
use anyhow::Context;

use super::service;
use crate::config::Config;

#[derive(clap::Subcommand, Debug)]
pub enum ConfigCmd {
    /// Stores a TOML fragment (the agent's config keys an operator may
    /// change remotely) as the desired configuration of a device or a
    /// group, under a new version, and sends every device concerned its
    /// new effective configuration. Devices offline get it when they
    /// report again.
    Set {
        #[command(flatten)]
        scope: ScopeArgs,
        /// The fragment, a TOML file.
        #[arg(long)]
        file: PathBuf,
    },
    /// Prints the desired configuration (JSON); for a device also its
    /// effective configuration, its report and whether it converged.
    Get {
        #[command(flatten)]
        scope: ScopeArgs,
    },
    /// The keys where a device's desired configuration differs from the
    /// one it runs (by the version it reports).
    Diff {
        /// The device.
        #[arg(long)]
        device: String,
    },
    /// Every fragment set for a device or a group, newest first.
    History {
        #[command(flatten)]
        scope: ScopeArgs,
    },
}

#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
pub struct ScopeArgs {
    /// A device id.
    #[arg(long)]
    device: Option<String>,
    /// A group name (devices name their groups in their `groups` key).
    #[arg(long)]
    group: Option<String>,
}

impl ScopeArgs {
    fn scope(&self) -> Scope {
        match (&self.device, &self.group) {
            (Some(d), _) => Scope {
                kind: ScopeKind::Device,
                name: d.clone(),
            },
            (None, g) => Scope {
                kind: ScopeKind::Group,
                name: g.clone().unwrap_or_default(),
            },
        }
    }
}

/// The audit log's target of a scope: `device:<id>` or `group:<name>`.
pub fn target(scope: &Scope) -> String {
    format!("{}:{}", scope.kind.as_str(), scope.name)
}

/// Runs one `config` subcommand; `false` when it failed.
pub async fn run(config: &Config, cmd: ConfigCmd) -> anyhow::Result<bool> {
    let sink = crate::open_sink(config).await?;
    let print = |v: &dyn erased::Json| println!("{}", v.json());
    match cmd {
        ConfigCmd::Set { scope, file } => {
            let scope = scope.scope();
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let table: toml::Table =
                toml::from_str(&text).with_context(|| format!("{} is not TOML", file.display()))?;
            let fragment = serde_json::to_value(table)?;
            let actor = crate::audit::cli_actor();
            let result = service::set(
                sink.as_ref(),
                &config.broker,
                scope.clone(),
                fragment,
                &actor,
            )
            .await;
            let audited = match &result {
                Ok(o) => serde_json::to_value(o).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let stats = crate::Stats::default();
            crate::audit::record(
                sink.as_ref(),
                &stats,
                &actor,
                "config_set",
                &target(&scope),
                &audited,
            )
            .await;
            match result {
                Ok(outcome) => {
                    print(&outcome);
                    Ok(outcome.publish_error.is_none())
                }
                Err(e) => {
                    eprintln!("aeris-gateway config set: {e}");
                    Ok(false)
                }
            }
        }
        ConfigCmd::Get { scope } => {
            print(&service::view(sink.as_ref(), scope.scope()).await?);
            Ok(true)
        }
        ConfigCmd::History { scope } => {
            for row in service::history(sink.as_ref(), &scope.scope()).await? {
                println!(
                    "{:>6}  {}  {}  {}",
                    row.version,
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH
                            + std::time::Duration::from_millis(
                                u64::try_from(row.set_at_ms).unwrap_or(0)
                            )
                    ),
                    row.set_by,
                    row.fragment
                );
            }
            Ok(true)
        }
        ConfigCmd::Diff { device } => {
            let d = service::diff(sink.as_ref(), &device).await?;
            let applied = d
                .applied
                .map(|v| v.to_string())
                .unwrap_or_else(|| "-".into());
            println!(
                "device {}: desired version {}, running {applied}",
                d.device, d.desired
            );
            if let Some((v, why)) = &d.refused {
                println!("refused version {v}: {why}");
            }
            for (key, running, desired) in &d.changes {
                println!("{key}: {running} -> {desired}");
            }
            Ok(d.changes.is_empty() && d.applied == Some(d.desired))
        }
    }
}

/// Printing any serializable outcome as one line of JSON.
mod erased {
    pub trait Json {
        fn json(&self) -> String;
    }
    impl<T: serde::Serialize> Json for T {
        fn json(&self) -> String {
            serde_json::to_string(self).unwrap_or_default()
        }
    }
}
