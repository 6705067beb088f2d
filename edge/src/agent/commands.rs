//! Routing the cloud's `down/cmd` commands to the stage that acts on them.

use aeris_wire::{Command, CommandKind};
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::remote::Configurer;
use crate::infer::models_dir::ModelCommand;
use crate::ota;

/// Hands the `down/cmd` commands the uplink passed on to the stage that
/// acts on them: model updates to the loader (when inference runs), agent
/// updates to the OTA installer, desired configurations to the
/// [`Configurer`]. A stage still busy with the previous one drops the new
/// command (the cloud may send it again).
pub(super) async fn route_commands(
    mut commands: mpsc::UnboundedReceiver<Command>,
    models: Option<mpsc::Sender<ModelCommand>>,
    ota: mpsc::Sender<ota::OtaCommand>,
    configurer: Configurer,
) {
    while let Some(Command { id, kind }) = commands.recv().await {
        match kind {
            CommandKind::Model {
                name,
                version,
                url,
                sha256,
                signature,
                force,
            } => match &models {
                Some(tx) => {
                    info!(id, model = %name, %version, "model update requested");
                    let cmd = ModelCommand {
                        id,
                        name,
                        version,
                        url,
                        sha256,
                        signature,
                        force,
                    };
                    if tx.try_send(cmd).is_err() {
                        warn!(
                            id,
                            "model loader busy; update dropped, the cloud may send it again"
                        );
                    }
                }
                None => warn!(id, "model update ignored: inference is disabled"),
            },
            CommandKind::Ota { manifest } => {
                info!(id, "agent update offered");
                let cmd = ota::OtaCommand {
                    id,
                    payload: manifest,
                };
                if ota.try_send(cmd).is_err() {
                    warn!(id, "an update is in progress; this one is dropped");
                }
            }
            CommandKind::Configure { version, fragment } => {
                configurer.configure(id, version, &fragment)
            }
            _ => warn!(id, "command not supported by this agent version"),
        }
    }
}
