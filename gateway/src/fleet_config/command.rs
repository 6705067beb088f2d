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
        /// Stage a group's change: this many of its devices (the first by
        /// name) first, the rest once every one of them applied it. Prints
        /// one JSON summary per change; exits 0 only if every device
        /// applied it.
        #[arg(long, requires = "group")]
        canary: Option<usize>,
        /// Staged: devices that may refuse or stay silent before the
        /// change halts.
        #[arg(long, default_value_t = 0, requires = "canary")]
        max_failures: usize,
        /// Staged: a device that has not reported the version after this
        /// long counts as failed.
        #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
        device_timeout: std::time::Duration,
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
        ConfigCmd::Set {
            scope,
            file,
            canary,
            max_failures,
            device_timeout,
        } => {
            let scope = scope.scope();
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let table: toml::Table =
                toml::from_str(&text).with_context(|| format!("{} is not TOML", file.display()))?;
            let fragment = serde_json::to_value(table)?;
            let actor = crate::audit::cli_actor();
            if let Some(canary) = canary {
                let stage = super::staged::Stage {
                    canary,
                    max_failures,
                    device_timeout,
                };
                return staged(config, sink.as_ref(), scope, fragment, &actor, stage).await;
            }
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

/// `config set --canary`: the staged change, a JSON summary per change,
/// audited as `config_set` with the final summary.
async fn staged(
    config: &Config,
    sink: &dyn aeris_sink::Sink,
    scope: Scope,
    fragment: serde_json::Value,
    actor: &str,
    stage: super::staged::Stage,
) -> anyhow::Result<bool> {
    // Every wave may take the device timeout, plus time to connect.
    let give_up = stage.device_timeout * 2 + std::time::Duration::from_secs(60);
    let request = (scope.name.clone(), fragment, actor);
    let result = super::staged::run(sink, &config.broker, request, stage, give_up, |s| {
        println!("{}", serde_json::to_string(s).unwrap_or_default())
    })
    .await;
    let audited = match &result {
        Ok(s) => Ok(serde_json::json!({ "staged": s })),
        Err(e) => Err(e.to_string()),
    };
    let stats = crate::Stats::default();
    crate::audit::record(sink, &stats, actor, "config_set", &target(&scope), &audited).await;
    match result {
        Ok(s) => {
            if let Some(why) = &s.halted {
                eprintln!(
                    "aeris-gateway config set: staged change {} halted: {why}",
                    s.command_id
                );
            }
            Ok(s.halted.is_none() && s.failed == 0)
        }
        Err(e) => {
            eprintln!("aeris-gateway config set: {e}");
            Ok(false)
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
