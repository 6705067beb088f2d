//! The buffer thread: it owns the [`Store`] and serves the handles'
//! [`Request`]s in arrival order, except that appends queued together are
//! committed together (group commit) and `MarkSent` is applied before any
//! later disk-budget work. While the file cannot be written it holds
//! appends in memory and retries (`worker/degraded.rs`); every second it
//! purges expired acked readings and refreshes the gauges (housekeeping).

mod degraded;
mod requests;

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aeris_wire::{now_ms, Reading};
use tokio::runtime::Runtime;
use tokio::sync::{mpsc, Notify};
use tracing::{debug, error, warn};

use super::handle::Request;
use super::store::{Appended, BufferError, Delivery, Message, Store};
use super::{Metrics, OnCommit, Settings, Snapshot};

/// Most readings one group commit takes.
const MAX_GROUP: usize = 4096;
/// How often gauges are refreshed and expired acked readings purged.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// One sensor message waiting for its commit.
struct Pending {
    delivery: Option<Delivery>,
    readings: Vec<Reading>,
    on_commit: OnCommit,
}

impl Pending {
    fn message(&self) -> Message<'_> {
        Message {
            delivery: self.delivery,
            readings: &self.readings,
        }
    }
}

pub(super) struct Worker {
    /// `None` while the file cannot be opened for writing.
    store: Option<Store>,
    path: PathBuf,
    settings: Settings,
    metrics: Arc<Metrics>,
    /// Shared with the handles ([`Buffer::last_snapshot`](super::Buffer::last_snapshot)).
    last: Arc<Mutex<Snapshot>>,
    appended: Arc<Notify>,
    /// Appends that could not be written yet, oldest first.
    pending: VecDeque<Pending>,
    pending_readings: usize,
    degraded_since: Option<Instant>,
    last_retry: Instant,
    last_housekeeping: Option<Instant>,
    /// A commit went over the disk budget: enforce it once the queued
    /// marks are applied.
    budget_due: bool,
    /// Requests taken off the queue while looking for marks, served next.
    deferred: VecDeque<Request>,
}

impl Worker {
    /// Opens the store at `path` for the thread. A file that is not an
    /// Aeris buffer is an error; one that cannot be opened for writing
    /// starts the worker degraded.
    pub(super) fn open(
        path: &Path,
        settings: Settings,
        metrics: Arc<Metrics>,
        appended: Arc<Notify>,
        last: Arc<Mutex<Snapshot>>,
    ) -> Result<Worker, BufferError> {
        // A file that is not an Aeris buffer stops the agent with a clear
        // error; one that cannot be opened for writing (read-only file
        // system, full disk) is retried while live data waits in memory.
        let (store, open_error) = match Store::open(path, settings.store.clone()) {
            Ok(s) => (Some(s), None),
            Err(e @ BufferError::Corrupt(_)) => return Err(e),
            Err(e) => (None, Some(e)),
        };
        let mut worker = Worker {
            last,
            store,
            path: path.to_owned(),
            settings,
            metrics,
            appended,
            pending: VecDeque::new(),
            pending_readings: 0,
            degraded_since: None,
            last_retry: Instant::now(),
            last_housekeeping: None,
            budget_due: false,
            deferred: VecDeque::new(),
        };
        if let Some(e) = open_error {
            worker.write_failed(&e);
        }
        Ok(worker)
    }

    /// The thread's loop, until the last handle is dropped.
    pub(super) fn serve(mut self, mut rx: mpsc::Receiver<Request>) {
        let Some(rt) = timer_runtime() else {
            return;
        };
        self.housekeeping();
        let mut others = Vec::new();
        loop {
            let wait = self.next_wakeup();
            let first = match self.deferred.pop_front() {
                Some(req) => Some(req),
                None => match rt.block_on(async { tokio::time::timeout(wait, rx.recv()).await }) {
                    Ok(Some(req)) => Some(req),
                    Ok(None) => break,
                    Err(_) => None,
                },
            };
            let group = self.take_queued(first, &mut rx, &mut others);
            if !group.is_empty() {
                self.accept(group);
            }
            if self.degraded_since.is_some()
                && self.last_retry.elapsed() >= self.settings.retry_interval
            {
                self.retry();
            }
            if std::mem::take(&mut self.budget_due) {
                self.apply_marks_then_enforce_budget(&mut rx);
            }
            for req in others.drain(..) {
                self.handle(req);
            }
            if self
                .last_housekeeping
                .is_none_or(|t| t.elapsed() >= HOUSEKEEPING)
            {
                self.housekeeping();
            }
        }
        self.close();
    }

    /// Takes `first` and everything already queued: appends join this
    /// commit (up to [`MAX_GROUP`] readings), marks are applied at once,
    /// other requests go to `others` to run right after the commit, in
    /// arrival order.
    fn take_queued(
        &mut self,
        first: Option<Request>,
        rx: &mut mpsc::Receiver<Request>,
        others: &mut Vec<Request>,
    ) -> Vec<Pending> {
        let mut group: Vec<Pending> = Vec::new();
        let mut count = 0;
        let mut next = first;
        while let Some(req) = next.take() {
            match req {
                Request::Append {
                    delivery,
                    readings,
                    on_commit,
                } => {
                    count += readings.len();
                    group.push(Pending {
                        delivery,
                        readings,
                        on_commit,
                    });
                }
                mark @ Request::MarkSent { .. } => self.handle(mark),
                other => others.push(other),
            }
            if count < MAX_GROUP {
                next = self.deferred.pop_front().or_else(|| rx.try_recv().ok());
            }
        }
        group
    }

    /// Enforces the disk budget after a commit. Marks queued while the
    /// commit ran come first: a batch published meanwhile may already be
    /// in the cloud. Other requests taken off the queue are served next.
    fn apply_marks_then_enforce_budget(&mut self, rx: &mut mpsc::Receiver<Request>) {
        while let Ok(req) = rx.try_recv() {
            match req {
                mark @ Request::MarkSent { .. } => self.handle(mark),
                other => self.deferred.push_back(other),
            }
        }
        self.enforce_budget();
    }

    /// The last handle is gone: one more try to commit what is held in
    /// memory; what still cannot be written is refused.
    fn close(&mut self) {
        if !self.pending.is_empty() {
            self.retry();
        }
        for Pending { on_commit, .. } in self.pending.drain(..) {
            // Not acked to the sensor broker: it delivers them on next start.
            on_commit(Err(&BufferError::Closed));
        }
    }

    fn next_wakeup(&self) -> Duration {
        let due = |since: Instant, every: Duration| every.saturating_sub(since.elapsed());
        let house = self
            .last_housekeeping
            .map_or(Duration::ZERO, |t| due(t, HOUSEKEEPING));
        if self.degraded_since.is_some() {
            house.min(due(self.last_retry, self.settings.retry_interval))
        } else {
            house
        }
        .max(Duration::from_millis(1))
    }

    /// Commits a group, or holds it in memory while the file cannot be
    /// written.
    fn accept(&mut self, group: Vec<Pending>) {
        if self.degraded_since.is_some() {
            self.hold(group);
            return;
        }
        let messages: Vec<Message<'_>> = group.iter().map(Pending::message).collect();
        match self.store().and_then(|s| s.append_groups(&messages)) {
            Ok(done) => {
                self.committed(group, done);
                self.budget_due = true;
            }
            Err(e) => {
                self.write_failed(&e);
                self.hold(group);
            }
        }
    }

    fn committed(&mut self, group: Vec<Pending>, done: Vec<Appended>) {
        let mut redelivered = 0;
        for (p, a) in group.into_iter().zip(done) {
            if a.redelivered {
                redelivered += 1;
                debug!(
                    first_seq = a.first,
                    readings = a.stored,
                    "broker redelivery of a committed message recognised; not stored again"
                );
            }
            (p.on_commit)(Ok(a));
        }
        if redelivered > 0 {
            self.metrics.duplicates.inc_by(redelivered);
        }
        self.appended.notify_one();
    }

    fn enforce_budget(&mut self) {
        match self.store().and_then(|s| s.enforce_budget()) {
            Ok(e) if e.any() => {
                let m = &self.metrics;
                m.evicted("acked_early", e.acked);
                m.evicted("downsampled", e.downsampled);
                m.evicted("dropped", e.dropped);
                m.aggregates.inc_by(e.aggregates);
                warn!(
                    budget_bytes = self.settings.store.max_bytes,
                    acked_deleted_early = e.acked,
                    downsampled = e.downsampled,
                    aggregates = e.aggregates,
                    dropped = e.dropped,
                    "buffer over its disk budget"
                );
            }
            Ok(_) => {}
            Err(e) => {
                self.metrics.write_error(e.kind());
                warn!(error = %e, "cannot enforce the buffer's disk budget");
            }
        }
    }

    /// Purges acked readings past their grace and refreshes the gauges.
    fn housekeeping(&mut self) {
        self.last_housekeeping = Some(Instant::now());
        if self.degraded_since.is_none() {
            if let Err(e) = self.store().and_then(|s| s.purge_acked(now_ms())) {
                self.metrics.write_error(e.kind());
            }
        }
        match self.snapshot() {
            Ok(s) => self.publish(&s),
            Err(e) => warn!(error = %e, "cannot read the buffer's depth"),
        }
    }

    fn store(&mut self) -> Result<&mut Store, BufferError> {
        self.store
            .as_mut()
            .ok_or_else(|| BufferError::NotOpen(self.path.display().to_string()))
    }

    /// Makes `s` the last known state, for the handles and `/metrics`.
    fn publish(&self, s: &Snapshot) {
        if let Ok(mut last) = self.last.lock() {
            *last = s.clone();
        }
    }

    fn snapshot(&self) -> Result<Snapshot, BufferError> {
        let Some(store) = &self.store else {
            return Ok(Snapshot::default());
        };
        Ok(Snapshot {
            depth: store.depth()?,
            next_seq: store.next_seq(),
            losses: store.losses()?.into_iter().collect(),
        })
    }
}

/// The buffer thread's own runtime, for its timers only.
fn timer_runtime() -> Option<Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            error!(error = %e, "buffer thread cannot start its timer");
            None
        }
    }
}
