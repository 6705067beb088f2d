//! Drives the rollouts started over HTTP and stored in the database:
//! starts new ones, resumes those this gateway owns after a restart, takes
//! over those whose owner's lease expired, and keeps its own leases.
//!
//! Invariants: a rollout runs here only while this gateway owns its row
//! (`owner` = `rollout.instance`, lease renewed every `rollout.lease / 3`
//! and by each save); every change is stored before it is acted on
//! ([`super::run`]), and a save that finds another owner stops the run.
//! A round that finds a rollout running here no longer ours stops it.
//! A rollout whose run failed (broker or database away) is started again
//! from its stored state on the next round.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use aeris_sink::rollouts::{Lease, RolloutState, StoredRollout};
use aeris_sink::{Sink, SinkError};
use futures_util::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Mutex, Notify};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

use super::plan::{Plan, Summary};
use super::store::{self, Meta};
use crate::config::{BrokerConfig, RolloutConfig};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StateLabel {
    pub state: &'static str,
}

/// The component's metrics; names are stable (dashboards, alerts).
#[derive(Debug)]
pub struct Metrics {
    /// Rollouts in the database by state (every gateway exports the same
    /// figures; take `max`).
    by_state: Family<StateLabel, Gauge>,
    /// Rollouts this gateway is driving now.
    driving: Gauge,
    /// Rollouts this gateway picked up from the database (its own after a
    /// restart, or another's whose lease expired).
    resumed: Counter,
}

impl Metrics {
    pub fn register(registry: &mut Registry) -> Metrics {
        let m = Metrics {
            by_state: Family::default(),
            driving: Gauge::default(),
            resumed: Counter::default(),
        };
        registry.register(
            "aeris_gateway_rollouts",
            "Rollouts started over HTTP, by state (running, halted, completed, cancelled), as stored in the database.",
            m.by_state.clone(),
        );
        registry.register(
            "aeris_gateway_rollouts_driving",
            "Rollouts this gateway is driving now.",
            m.driving.clone(),
        );
        registry.register(
            "aeris_gateway_rollouts_resumed",
            "Stored rollouts this gateway resumed: its own after a restart, or another gateway's whose lease expired.",
            m.resumed.clone(),
        );
        for state in RolloutState::ALL {
            let _ = m.by_state.get_or_create(&StateLabel {
                state: state.as_str(),
            });
        }
        m
    }
}

/// Stores a running rollout's new summary; an `Err` stops the run.
pub type Save = Box<dyn FnMut(Summary) -> BoxFuture<'static, anyhow::Result<()>> + Send>;

/// Runs a stored staged configuration change ([`Meta::config_change`]) to
/// its end, from its plan, until the token is cancelled, saving each
/// summary. Handed in by the gateway's start (it is
/// `fleet_config::staged::drive`), so that this module does not depend on
/// the fleet configuration.
pub type ConfigRunner = Arc<
    dyn Fn(Meta, Plan, CancellationToken, Save) -> BoxFuture<'static, anyhow::Result<Summary>>
        + Send
        + Sync,
>;

pub struct Driver {
    sink: Arc<dyn Sink>,
    /// Runs the staged configuration changes; `None`: they stay stored.
    config_runner: Option<ConfigRunner>,
    broker: BrokerConfig,
    lease: Lease,
    every: Duration,
    metrics: Arc<Metrics>,
    /// Rollouts running here, to stop one that is no longer ours.
    running: Mutex<HashMap<u64, CancellationToken>>,
    /// Wakes the round early (a run ended).
    wake: Notify,
    stop: CancellationToken,
    tasks: TaskTracker,
}

/// The host name, as the lease owner when `rollout.instance` is empty: a
/// gateway restarted on the same host (or pod) takes its rollouts back at
/// once, another one after the lease expired.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("gateway-{:08x}", crate::mqtt::random_suffix()))
}

/// Each run may take the device timeout per stage, plus time to connect.
pub fn give_up(timeout: Duration) -> Duration {
    timeout * 2 + Duration::from_secs(60)
}

impl Driver {
    /// A driver that stops its rollouts when `stop` is cancelled (they stay
    /// stored as running, to be resumed).
    pub fn new(
        sink: Arc<dyn Sink>,
        broker: BrokerConfig,
        config: &RolloutConfig,
        metrics: Arc<Metrics>,
        (stop, config_runner): (CancellationToken, Option<ConfigRunner>),
    ) -> Arc<Driver> {
        let owner = match config.instance.as_str() {
            "" => host_name(),
            name => name.to_owned(),
        };
        let millis = i64::try_from(config.lease.as_millis()).unwrap_or(i64::MAX);
        Arc::new(Driver {
            sink,
            config_runner,
            broker,
            lease: Lease { owner, millis },
            every: (config.lease / 3).max(Duration::from_millis(100)),
            metrics,
            running: Mutex::default(),
            wake: Notify::new(),
            stop,
            tasks: TaskTracker::new(),
        })
    }

    /// Stores a new rollout and starts it here.
    pub async fn start(self: &Arc<Self>, meta: Meta, plan: Plan) -> Result<(), SinkError> {
        let mut running = self.running.lock().await;
        let first = store::to_stored(
            &meta,
            &plan.summary(),
            None,
            aeris_wire::now_ms(),
            Instant::now(),
        );
        if !self.sink.save_rollout(&first, &self.lease).await? {
            return Err(SinkError::Data(format!("rollout {} exists", meta.id)));
        }
        self.spawn(&mut running, meta, plan);
        drop(running);
        self.wake.notify_one();
        Ok(())
    }

    /// A stored rollout.
    pub async fn get(&self, id: u64) -> Result<Option<StoredRollout>, SinkError> {
        self.sink.rollout(id).await
    }

    /// Rounds until `stop`: resume or take over, renew, refresh the gauges.
    /// Waits for the runs to stop before it returns.
    pub async fn run(self: Arc<Self>) {
        info!(owner = %self.lease.owner, lease = ?Duration::from_millis(self.lease.millis as u64), "rollouts: resuming stored ones");
        loop {
            if let Err(e) = self.round().await {
                warn!(error = %e, "rollouts: lease round failed; retrying");
            }
            tokio::select! {
                _ = self.stop.cancelled() => break,
                _ = tokio::time::sleep(self.every) => {}
                _ = self.wake.notified() => {}
            }
        }
        self.tasks.close();
        self.tasks.wait().await;
    }

    async fn round(self: &Arc<Self>) -> Result<(), SinkError> {
        let mut running = self.running.lock().await;
        running.retain(|_, t| !t.is_cancelled());
        let ours = self.sink.claim_rollouts(&self.lease).await?;
        running.retain(|id, token| {
            let kept = ours.iter().any(|r| r.id == *id);
            if !kept {
                warn!(
                    id,
                    "rollout taken over by another gateway; stopping it here"
                );
                token.cancel();
            }
            kept
        });
        for r in ours {
            if running.contains_key(&r.id) {
                continue;
            }
            let plan = store::plan_of(&r, aeris_wire::now_ms(), Instant::now());
            let s = plan.summary();
            info!(
                id = r.id,
                stage = s.stage,
                confirmed = s.confirmed,
                failed = s.failed,
                "rollout resumed"
            );
            self.metrics.resumed.inc();
            self.spawn(&mut running, Meta::of(&r), plan);
        }
        self.metrics.driving.set(running.len() as i64);
        drop(running);
        let counts = self.sink.rollout_counts().await?;
        for state in RolloutState::ALL {
            let n = counts.iter().find(|c| c.0 == state).map_or(0, |c| c.1);
            self.metrics
                .by_state
                .get_or_create(&StateLabel {
                    state: state.as_str(),
                })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        Ok(())
    }

    fn spawn(
        self: &Arc<Self>,
        running: &mut HashMap<u64, CancellationToken>,
        meta: Meta,
        plan: Plan,
    ) {
        let token = self.stop.child_token();
        running.insert(meta.id, token.clone());
        let driver = self.clone();
        self.tasks.spawn(async move {
            let id = meta.id;
            let result = driver.drive(meta, plan, token.clone()).await;
            // Removed on the next round; a failed run is resumed by it.
            token.cancel();
            match result {
                Ok(s) => info!(id, confirmed = s.confirmed, failed = s.failed, halted = ?s.halted, "rollout ended"),
                Err(e) if driver.stop.is_cancelled() => info!(id, error = %e, "rollout paused for shutdown; resumed at the next start"),
                Err(e) => error!(id, error = %e, "rollout stopped; retried from its stored state"),
            }
            driver.wake.notify_one();
        });
    }

    async fn drive(
        &self,
        meta: Meta,
        plan: Plan,
        token: CancellationToken,
    ) -> anyhow::Result<Summary> {
        // Stored already (by `start`, or it was loaded): the first save
        // writes the rollout row only, later ones the devices that changed.
        let mut prev = Some(plan.summary());
        let (sink, lease) = (self.sink.clone(), self.lease.clone());
        if meta.config_change().is_some() {
            let Some(runner) = &self.config_runner else {
                anyhow::bail!("this gateway does not run staged configuration changes");
            };
            let saved = meta.clone();
            let save: Save = Box::new(move |s: Summary| {
                let stored = store::to_stored(
                    &saved,
                    &s,
                    prev.as_ref(),
                    aeris_wire::now_ms(),
                    Instant::now(),
                );
                prev = Some(s);
                let (sink, lease) = (sink.clone(), lease.clone());
                Box::pin(async move { saved_or_taken(sink.as_ref(), &stored, &lease).await })
            });
            return runner(meta, plan, token, save).await;
        }
        let timeout = meta.timeout;
        let payload = meta.payload();
        super::run(
            &self.broker,
            payload,
            plan,
            give_up(timeout),
            super::Session::Persistent,
            token,
            |s| {
                let stored = store::to_stored(
                    &meta,
                    &s,
                    prev.as_ref(),
                    aeris_wire::now_ms(),
                    Instant::now(),
                );
                prev = Some(s);
                let (sink, lease) = (sink.clone(), lease.clone());
                async move { saved_or_taken(sink.as_ref(), &stored, &lease).await }
            },
        )
        .await
    }
}

/// Saves `stored` under `lease`; an error when another gateway owns it now.
async fn saved_or_taken(
    sink: &dyn Sink,
    stored: &StoredRollout,
    lease: &Lease,
) -> anyhow::Result<()> {
    match sink.save_rollout(stored, lease).await? {
        true => Ok(()),
        false => anyhow::bail!("rollout {} belongs to another gateway now", stored.id),
    }
}
