//! Over-the-air updates of the agent itself.
//!
//! Invariants: nothing is fetched before the update's signature verified
//! against `ota.trusted_keys` and its version passed the policy (semver
//! precedence; no downgrade unless the manifest allows one from exactly the
//! running version, no update below the package's minimum version); only
//! files the manifest lists enter a slot; nothing is written outside the
//! inactive slot until the new version has done real work and passed its
//! probation; `current` always names a bootable slot.
//! Every step is reported on `up/event` (kind `Ota`) as `ota <command id>:
//! <step>: ...`. Formats: [`package`] (the signed package), [`update`] (the
//! command payload), [`slots`] (the A/B layout and trial.json); the trial
//! and rollback are in [`trial`]; docs/decisions.md says why.
//!
//! - [`config`]: the `[ota]` keys.
//! - [`download`]: resumable, size-capped fetching with a progress counter.
//! - [`metrics`]: the `aeris_edge_ota_*` metrics.
//! - [`notify`]: the new version's readiness and watchdog pings, relayed
//!   through its supervisor, which fail a hung trial before its deadline.

pub mod config;
pub mod download;
pub mod metrics;
pub mod notify;
pub mod package;
pub mod slots;
pub mod trial;
pub mod update;

use std::path::Path;
use std::sync::Arc;

use aeris_wire::{Event, EventKind};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use config::OtaConfig;
pub use metrics::Metrics;
use slots::{Slots, Trial};
use update::OtaError;

/// An update command from `down/cmd`.
#[derive(Debug)]
pub struct OtaCommand {
    pub id: u64,
    pub payload: Vec<u8>,
}

/// Sends `up/event` messages of kind `Ota`.
#[derive(Debug, Clone)]
pub struct Reporter {
    pub device: String,
    pub tx: mpsc::UnboundedSender<Event>,
}

impl Reporter {
    pub fn send(&self, message: String) {
        let _ = self.tx.send(Event {
            device: self.device.clone(),
            ts_ms: aeris_wire::now_ms(),
            kind: EventKind::Ota,
            message,
        });
    }
}

/// The version of the running agent: that of the package it was started
/// from (`manifest.json` next to the binary), else the built-in one.
pub fn running_version() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| std::fs::read(exe.parent()?.join(package::MANIFEST)).ok())
        .and_then(|b| serde_json::from_slice::<package::Manifest>(&b).ok())
        .map(|m| m.version)
        .unwrap_or_else(|| crate::version::AGENT_VERSION.to_owned())
}

/// At start (not on trial): reports and clears a trial left by the last
/// run: rolled back unless it was confirmed and its slot is current.
pub fn report_leftover(slots: &Slots, report: &Reporter, stats: &Metrics) {
    let Some(t) = slots.read_trial() else { return };
    if t.state == "confirmed" && slots.current().as_deref() == Some(t.slot.as_str()) {
        info!(version = %t.version, "running the confirmed update");
    } else {
        let why = match t.state.as_str() {
            "running" => "interrupted by a restart before it was confirmed".to_owned(),
            "confirmed" => "stopped during its probation after confirmation (watchdog kill, \
                            crash, power loss or restart); the previous slot booted"
                .to_owned(),
            other => other.to_owned(),
        };
        warn!(version = %t.version, reason = %why, "update rolled back");
        stats.rollbacks.inc();
        report.send(format!(
            "ota {}: rolled back: version {} not kept ({why}); running {}",
            t.command_id,
            t.version,
            running_version()
        ));
    }
    slots.clear_trial();
}

/// Takes update commands until one is installed into the inactive slot;
/// returns its trial (already written to trial.json). Refusals and failures
/// are reported and counted, and the next command is awaited.
pub async fn serve(
    config: Arc<OtaConfig>,
    stats: Arc<Metrics>,
    report: Reporter,
    mut commands: mpsc::Receiver<OtaCommand>,
    stop: CancellationToken,
) -> Option<Trial> {
    let slots = Slots::new(&config.root);
    loop {
        let cmd = tokio::select! {
            _ = stop.cancelled() => return None,
            c = commands.recv() => c?,
        };
        let id = cmd.id;
        match install(&config, &slots, &stats, &report, cmd).await {
            Ok(trial) => return Some(trial),
            Err(e) => {
                stats.failed(e.reason());
                warn!(id, reason = e.reason(), error = %e, "update not installed");
                report.send(format!("ota {id}: refused ({}): {e}", e.reason()));
            }
        }
    }
}

async fn install(
    config: &OtaConfig,
    slots: &Slots,
    stats: &Metrics,
    report: &Reporter,
    cmd: OtaCommand,
) -> Result<Trial, OtaError> {
    let trusted = crate::keys::parse_keys(&config.trusted_keys).map_err(OtaError::Malformed)?;
    let running = running_version();
    let (update, m) = update::accept(&cmd.payload, &trusted, &running, config.max_package_bytes)?;
    let slot = slots.inactive();
    info!(id = cmd.id, version = %m.version, %slot, url = %update.url, "update accepted; downloading");
    report.send(format!(
        "ota {}: accepted: version {} (running {running}), downloading into slot {slot}",
        cmd.id, m.version
    ));
    let partial = slots.prepare_partial(slot)?;
    // Whatever an earlier attempt (or anyone else) left that the manifest
    // does not list goes before the download; a symlink at a listed path
    // would otherwise be written through.
    discard_unlisted(&m, &partial, cmd.id)?;
    download::fetch_all(&update.url, &m, &partial, stats.bytes_downloaded.inner()).await?;
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(partial.join(name), bytes).map_err(|e| package::PackageError::Io {
            path: name.into(),
            error: e.to_string(),
        })
    };
    write(package::MANIFEST, update.manifest.as_bytes())?;
    write(package::SIGNATURE, update.signature.as_bytes())?;
    // Only listed files enter the slot; they are checked again as stored,
    // then the binary is made executable.
    discard_unlisted(&m, &partial, cmd.id)?;
    m.check_files(&partial)?;
    set_executable(&partial.join("aeris-edge"))?;
    slots.commit(slot)?;
    let trial = Trial {
        slot: slot.into(),
        version: m.version.clone(),
        from_version: running,
        command_id: cmd.id,
        deadline_ms: aeris_wire::now_ms() + config.trial_deadline.as_millis() as i64,
        state: "running".into(),
    };
    slots.write_trial(&trial)?;
    stats.installed.inc();
    report.send(format!(
        "ota {}: installed: version {} in slot {slot}; starting its trial ({} to prove itself)",
        cmd.id,
        m.version,
        humantime::format_duration(config.trial_deadline)
    ));
    Ok(trial)
}

fn discard_unlisted(m: &package::Manifest, partial: &Path, id: u64) -> Result<(), OtaError> {
    let removed = m.prune_unlisted(partial)?;
    if !removed.is_empty() {
        warn!(
            id,
            ?removed,
            "files the manifest does not list deleted from the update folder"
        );
    }
    Ok(())
}

fn set_executable(path: &std::path::Path) -> Result<(), package::PackageError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).map_err(|e| {
        package::PackageError::Io {
            path: path.display().to_string(),
            error: e.to_string(),
        }
    })
}
