//! Applying the cloud's desired configuration (issue 18).
//!
//! A `Configure` command's fragment is checked like the file: its keys
//! against `fragment::ALLOWED`, then the whole configuration (defaults →
//! file → fragment → environment) through the loader and
//! `Config::validate`. A fragment that fails changes nothing: the agent
//! keeps running as it was and reports the refusal with its reason. One
//! that passes is stored (atomically, in `data_dir`), then handed to the
//! pipeline: what can change live goes to the running stages (`live`),
//! and only a key that cannot restarts the pipeline in its usual order
//! (head, tail, buffer), the path the drain proves loses nothing. The
//! applied version is reported on `up/config` at once when it applied
//! live, when the uplink connects again after a restart.

use std::path::PathBuf;

use aeris_wire::Refusal;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::config::{Config, Fragment, Layers, Stored};
use crate::uplink::ConfigState;

/// A checked and stored configuration the pipeline restarts with.
pub(super) struct Reconfigure {
    pub(super) version: u64,
    pub(super) config: Config,
}

/// What the command router needs to act on `Configure`.
#[derive(Clone)]
pub(super) struct Configurer {
    /// `None` when the agent was started without a loader (the demo): it
    /// refuses every fragment.
    pub(super) layers: Option<Layers>,
    pub(super) data_dir: PathBuf,
    pub(super) state: watch::Sender<ConfigState>,
    pub(super) apply: mpsc::Sender<Reconfigure>,
}

impl Configurer {
    /// Checks, stores and hands on the fragment of version `version`, or
    /// refuses it.
    pub(super) fn configure(&self, id: u64, version: u64, fragment: &str) {
        if self.state.borrow().applied == version {
            info!(id, version, "configuration version already applied");
            // Publish the report again: the cloud asked, so it has not seen it.
            self.state.send_modify(|_| {});
            return;
        }
        match self.check(version, fragment) {
            Ok(config) => {
                info!(id, version, "remote configuration stored; applying it");
                if self
                    .apply
                    .try_send(Reconfigure { version, config })
                    .is_err()
                {
                    warn!(
                        id,
                        version, "a restart is already pending; this version applies at the next"
                    );
                }
            }
            Err(reason) => {
                warn!(id, version, %reason, "remote configuration refused; running on as before");
                self.state
                    .send_modify(|s| s.refused = Some(Refusal { version, reason }));
            }
        }
    }

    fn check(&self, version: u64, text: &str) -> Result<Config, String> {
        let layers = self
            .layers
            .as_ref()
            .ok_or("this agent runs without a config loader; remote configuration is off")?;
        let fragment = Fragment::parse(text)?;
        let config = layers.check(&fragment).map_err(|e| e.to_string())?;
        Stored { version, fragment }
            .write(&self.data_dir)
            .map_err(|e| format!("cannot store it in {}: {e}", self.data_dir.display()))?;
        Ok(config)
    }
}

/// Records that `version` runs now: a refusal of it or of an older one is
/// over.
pub(super) fn applied(state: &watch::Sender<ConfigState>, version: u64) {
    state.send_modify(|s| {
        s.applied = version;
        if s.refused.as_ref().is_some_and(|r| r.version <= version) {
            s.refused = None;
        }
    });
}
