//! `[ota]`: over-the-air updates. Imports nothing from the crate but the
//! key parser ([`crate::keys`], a leaf).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[ota]`: over-the-air updates of the agent itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtaConfig {
    /// Folder holding `slots/a`, `slots/b` and the `current` link.
    pub root: PathBuf,
    /// Hex ed25519 public keys an update must be signed by; with none,
    /// every update is refused.
    pub trusted_keys: Vec<String>,
    /// The new version must have done real work (sensor subscription up,
    /// a batch acked by the cloud, a model run when models are configured)
    /// within this time. docs/operations.md, "Time to roll back", says why
    /// 45 s.
    #[serde(with = "humantime_serde")]
    pub trial_deadline: Duration,
    /// The new version must say `READY=1` (buffer open, models loaded,
    /// sensor subscription up) within this time (see `ota::notify`).
    #[serde(with = "humantime_serde")]
    pub ready_deadline: Duration,
    /// Once ready, a gap this long in the new version's watchdog pings
    /// (sent every half of it while its loops answer) fails its trial.
    #[serde(with = "humantime_serde")]
    pub trial_watchdog: Duration,
    /// After its confirmation the new version runs this long under the old
    /// one before `current` switches to it; a watchdog kill, crash or
    /// restart in this time boots the previous slot (see `ota::trial`).
    #[serde(with = "humantime_serde")]
    pub probation: Duration,
    /// A stop (SIGTERM) during a trial or probation gives the new version
    /// this long to end after its own SIGTERM, then kills it (SIGKILL): a
    /// frozen new version cannot hold the old agent past systemd's
    /// `TimeoutStopSec` (30 s). The trial is then failed: the next start
    /// runs the old slot and reports the rollback.
    #[serde(with = "humantime_serde")]
    pub stop_grace: Duration,
    /// Largest package (all files together) accepted.
    pub max_package_bytes: u64,
}

impl Default for OtaConfig {
    fn default() -> Self {
        OtaConfig {
            root: PathBuf::from("/var/lib/aeris-edge"),
            trusted_keys: Vec::new(),
            trial_deadline: Duration::from_secs(45),
            ready_deadline: Duration::from_secs(30),
            trial_watchdog: Duration::from_secs(20),
            probation: Duration::from_secs(600),
            stop_grace: Duration::from_secs(5),
            max_package_bytes: 128 << 20,
        }
    }
}

impl OtaConfig {
    /// Checks serde cannot express; the error names the key within `[ota]`.
    pub fn validate(&self) -> Result<(), (&'static str, String)> {
        if let Err(e) = crate::keys::parse_keys(&self.trusted_keys) {
            return Err(("trusted_keys", e));
        }
        if self.stop_grace > Duration::from_secs(20) {
            return Err((
                "stop_grace",
                "at most 20s (systemd's TimeoutStopSec is 30s)".into(),
            ));
        }
        Ok(())
    }
}
