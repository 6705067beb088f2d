//! A phase: tasks that stop together, in the order the agent drains them.

use std::future::Future;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::warn;

/// Tasks that stop together: their token is cancelled, then the tracker
/// waits for them, at most until a deadline.
pub(super) struct Phase {
    name: &'static str,
    stop: CancellationToken,
    tasks: TaskTracker,
}

impl Phase {
    pub(super) fn new(name: &'static str) -> Phase {
        Phase {
            name,
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
        }
    }

    /// Spawns `task`, built from this phase's stop token.
    pub(super) fn spawn<F>(
        &self,
        task: impl FnOnce(CancellationToken) -> F,
    ) -> JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tasks.spawn(task(self.stop.clone()))
    }

    /// Stops the phase's tasks and waits for them until `deadline`; a task
    /// still running then is left behind (logged), the sequence goes on.
    pub(super) async fn drain(&self, deadline: Instant) {
        self.stop.cancel();
        self.tasks.close();
        if tokio::time::timeout_at(deadline, self.tasks.wait())
            .await
            .is_err()
        {
            warn!(
                phase = self.name,
                tasks = self.tasks.len(),
                "tasks still running at the end of the shutdown grace; not waiting for them"
            );
        }
    }
}

/// The pipeline's tasks by the order they stop in: the head first (no new
/// readings, no new work), then the uplink drains what the head committed,
/// then the buffer closes; `/healthz` and `/metrics` answer until the end.
pub(super) struct Phases {
    /// Ingest, the model loader, OTA, the trial check, systemd notify.
    pub(super) head: Phase,
    /// The uplink and the command router it feeds.
    pub(super) tail: Phase,
    /// The health and metrics endpoint.
    pub(super) serving: Phase,
}

impl Phases {
    pub(super) fn new() -> Phases {
        Phases {
            head: Phase::new("head"),
            tail: Phase::new("tail"),
            serving: Phase::new("serving"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn a_phase_waits_for_its_tasks_and_leaves_a_stuck_one_at_the_deadline() {
        let phase = Phase::new("test");
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let s = stopped.clone();
        phase.spawn(|stop| async move {
            stop.cancelled().await;
            tokio::time::sleep(Duration::from_secs(1)).await;
            s.store(true, std::sync::atomic::Ordering::SeqCst);
        });
        // Ignores its token.
        phase.spawn(|_| std::future::pending::<()>());
        let start = Instant::now();
        phase.drain(start + Duration::from_secs(5)).await;
        assert!(stopped.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(phase.tasks.len(), 1, "the stuck task is left running");

        let quick = Phase::new("quick");
        quick.spawn(|stop| async move { stop.cancelled().await });
        let start = Instant::now();
        quick.drain(start + Duration::from_secs(5)).await;
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "no wait once every task ended"
        );
        assert!(quick.tasks.is_empty());
    }
}
