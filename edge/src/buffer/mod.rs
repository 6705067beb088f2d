//! The crash-safe reading buffer and the thread that owns it.
//!
//! Every reading the agent accepts is in the SQLite file before its sensor
//! message is acknowledged to the local broker, and stays there until the
//! cloud has acknowledged its seq and the grace period has passed. One
//! thread owns the connection; appends that queue up while a transaction
//! commits are committed together (group commit), so throughput does not
//! cost durability.
//!
//! When the file cannot be written (full disk, read-only file system, I/O
//! error) the thread keeps the readings of at most `memory_readings` in
//! memory, unacknowledged to the local broker, retries every
//! `retry_interval`, and commits them as soon as a write succeeds. Messages
//! beyond that bound are not acknowledged either, so the local broker keeps
//! them (they come again on the next connection). Nothing is acked to a
//! sensor before it is on disk.

pub mod config;
pub mod metrics;
pub mod row;
mod store;

use std::collections::VecDeque;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use aeris_wire::{now_ms, Reading};
use tokio::sync::{mpsc, oneshot, Notify};
use tracing::{debug, error, info, warn};

use crate::preprocess::PreprocessConfig;
pub use config::BufferConfig;
pub use metrics::Metrics;

/// Requests the buffer thread holds before senders wait. Appends are one
/// sensor message each, and the sensor broker may deliver faster than its
/// in-flight window suggests, so this is what bounds readings received and
/// not yet committed in memory (a group commit takes what is queued: at
/// most twice this many messages; 256 keeps that under a megabyte and still
/// lets a commit take hundreds of messages).
const QUEUE: usize = 256;
pub use store::{
    Appended, BufferError, CorruptRow, Delivery, Depth, Evicted, Message, Options, Renumbered,
    Store, FLAG_AGGREGATE,
};

/// Called once the appended readings are committed (or could not be).
pub type OnCommit = Box<dyn FnOnce(Result<Appended, &BufferError>) + Send>;

/// Readings read back for sending.
pub type Held = (Vec<(u64, Reading)>, Vec<CorruptRow>);

/// The buffer's state for the status heartbeat.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub depth: Depth,
    /// The seq the next reading will get.
    pub next_seq: u64,
    /// Readings lost since the buffer was created, by reason.
    pub losses: Vec<(String, u64)>,
}

enum Request {
    Append {
        delivery: Option<Delivery>,
        readings: Vec<Reading>,
        on_commit: OnCommit,
    },
    /// Applied before any later disk-budget work, without waiting for
    /// the commits queued before it.
    MarkSent {
        first: u64,
        last: u64,
        reply: Option<oneshot::Sender<Result<usize, BufferError>>>,
    },
    Renumber {
        first: u64,
        last: u64,
        floor: u64,
        reply: oneshot::Sender<Result<Renumbered, BufferError>>,
    },
    ReadFrom {
        from: u64,
        max: usize,
        reply: oneshot::Sender<Result<Held, BufferError>>,
    },
    Ack {
        first: u64,
        last: u64,
        reply: oneshot::Sender<Result<usize, BufferError>>,
    },
    UnackFrom {
        from: u64,
        reply: oneshot::Sender<Result<usize, BufferError>>,
    },
    Snapshot {
        reply: oneshot::Sender<Result<Snapshot, BufferError>>,
    },
}

/// Most readings one group commit takes.
const MAX_GROUP: usize = 4096;
/// How often gauges are refreshed and expired acked readings purged.
const HOUSEKEEPING: Duration = Duration::from_secs(1);

/// The buffer's behaviour beyond the store's limits.
#[derive(Debug, Clone)]
pub struct Settings {
    pub store: Options,
    /// Readings held in memory while the file cannot be written.
    pub memory_readings: usize,
    pub retry_interval: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            store: Options::default(),
            memory_readings: 10_000,
            retry_interval: Duration::from_secs(1),
        }
    }
}

impl Settings {
    /// From `[buffer]`, and the aggregation windows of `[preprocess]`
    /// (the budget replaces raw readings by aggregates of those windows).
    pub fn from_config(c: &BufferConfig, preprocess: &PreprocessConfig) -> Settings {
        let ms = |d: Duration| d.as_millis().min(i64::MAX as u128) as i64;
        let default_window = if preprocess.window.is_zero() {
            300_000
        } else {
            ms(preprocess.window)
        };
        Settings {
            store: Options {
                max_bytes: c.max_bytes,
                acked_grace_ms: ms(c.acked_grace),
                window_ms: preprocess
                    .windows
                    .iter()
                    .filter(|(_, d)| !d.is_zero())
                    .map(|(k, d)| (k.clone(), ms(**d)))
                    .collect(),
                default_window_ms: default_window,
            },
            memory_readings: c.memory_readings,
            retry_interval: c.retry_interval,
        }
    }
}

/// A cheap, cloneable handle to the buffer thread.
#[derive(Clone)]
pub struct Buffer {
    tx: mpsc::Sender<Request>,
    /// Signalled after every commit that added readings.
    pub appended: Arc<Notify>,
    /// The state as of the last refresh (every second), for when the
    /// thread is too busy to answer.
    last: Arc<Mutex<Snapshot>>,
}

impl Buffer {
    /// Opens (or creates) the buffer file and starts its thread. The thread
    /// ends when the last handle is dropped, after finishing queued work.
    pub fn open(
        path: &Path,
        settings: Settings,
        metrics: Arc<Metrics>,
    ) -> Result<(Buffer, thread::JoinHandle<()>), BufferError> {
        // A file that is not an Aeris buffer stops the agent with a clear
        // error; one that cannot be opened for writing (read-only file
        // system, full disk) is retried while live data waits in memory.
        let (store, open_error) = match Store::open(path, settings.store.clone()) {
            Ok(s) => (Some(s), None),
            Err(e @ BufferError::Corrupt(_)) => return Err(e),
            Err(e) => (None, Some(e)),
        };
        let (tx, rx) = mpsc::channel(QUEUE);
        let appended = Arc::new(Notify::new());
        let last = Arc::new(Mutex::new(Snapshot::default()));
        let mut worker = Worker {
            last: last.clone(),
            store,
            path: path.to_owned(),
            settings,
            metrics,
            appended: appended.clone(),
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
        let join = thread::Builder::new()
            .name("aeris-buffer".into())
            .spawn(move || worker.serve(rx))
            .map_err(BufferError::Thread)?;
        Ok((Buffer { tx, appended, last }, join))
    }

    /// Queues one sensor message's `readings` for the next group commit;
    /// `on_commit` runs on the buffer thread once they are durable, or once
    /// the message was recognised as a redelivery of `delivery`. Waits only
    /// if the queue is full.
    pub async fn append(
        &self,
        delivery: Option<Delivery>,
        readings: Vec<Reading>,
        on_commit: OnCommit,
    ) -> Result<(), BufferError> {
        self.tx
            .send(Request::Append {
                delivery,
                readings,
                on_commit,
            })
            .await
            .map_err(|_| BufferError::Closed)
    }

    /// Up to `max` unsent readings with seq >= `from`, in seq order.
    pub async fn read_from(&self, from: u64, max: usize) -> Result<Held, BufferError> {
        self.call(|reply| Request::ReadFrom { from, max, reply })
            .await
    }

    /// Marks readings `first..=last` acknowledged by the cloud; returns how
    /// many were unsent.
    pub async fn ack(&self, first: u64, last: u64) -> Result<usize, BufferError> {
        self.call(|reply| Request::Ack { first, last, reply }).await
    }

    /// Marks readings `first..=last` as published and waits for it.
    pub async fn mark_sent(&self, first: u64, last: u64) -> Result<usize, BufferError> {
        self.call(|reply| Request::MarkSent {
            first,
            last,
            reply: Some(reply),
        })
        .await
    }

    /// Queues the mark for readings `first..=last` before they go out,
    /// without waiting for it: the buffer thread applies every queued mark
    /// before it next enforces the disk budget, so a published row is
    /// never downsampled, and the uplink does not wait behind the group
    /// commits queued ahead of it (one round trip per batch less).
    pub async fn mark_sent_queued(&self, first: u64, last: u64) -> Result<(), BufferError> {
        self.tx
            .send(Request::MarkSent {
                first,
                last,
                reply: None,
            })
            .await
            .map_err(|_| BufferError::Closed)
    }

    /// Moves unacknowledged readings `first..=last` to new seqs from
    /// `floor` on (the cloud holds other readings under those seqs).
    pub async fn renumber(
        &self,
        first: u64,
        last: u64,
        floor: u64,
    ) -> Result<Renumbered, BufferError> {
        self.call(|reply| Request::Renumber {
            first,
            last,
            floor,
            reply,
        })
        .await
    }

    /// Makes every held reading with seq >= `from` unsent again (the cloud
    /// asked for a re-send); returns how many were acked.
    pub async fn unack_from(&self, from: u64) -> Result<usize, BufferError> {
        self.call(|reply| Request::UnackFrom { from, reply }).await
    }

    /// What the buffer holds, the next seq, and the losses so far.
    pub async fn snapshot(&self) -> Result<Snapshot, BufferError> {
        self.call(|reply| Request::Snapshot { reply }).await
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, BufferError>>) -> Request,
    ) -> Result<T, BufferError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| BufferError::Closed)?;
        rx.await.map_err(|_| BufferError::Closed)?
    }
}

impl Buffer {
    /// The buffer's state as of its last refresh, without asking the thread.
    pub fn last_snapshot(&self) -> Snapshot {
        self.last.lock().map(|s| s.clone()).unwrap_or_default()
    }
}

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

struct Worker {
    /// `None` while the file cannot be opened for writing.
    store: Option<Store>,
    path: std::path::PathBuf,
    settings: Settings,
    metrics: Arc<Metrics>,
    /// Shared with the handles ([`Buffer::last_snapshot`]).
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
    fn serve(mut self, mut rx: mpsc::Receiver<Request>) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                error!(error = %e, "buffer thread cannot start its timer");
                return;
            }
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
            let mut group: Vec<Pending> = Vec::new();
            let mut count = 0;
            let mut next = first;
            // Take everything already queued: appends join this commit, other
            // requests run right after it, in arrival order.
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
            if !group.is_empty() {
                self.accept(group);
            }
            if self.degraded_since.is_some()
                && self.last_retry.elapsed() >= self.settings.retry_interval
            {
                self.retry();
            }
            if std::mem::take(&mut self.budget_due) {
                // Marks queued while the commit ran come first: a batch
                // published meanwhile may already be in the cloud.
                while let Ok(req) = rx.try_recv() {
                    match req {
                        mark @ Request::MarkSent { .. } => self.handle(mark),
                        other => self.deferred.push_back(other),
                    }
                }
                self.enforce_budget();
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

    fn write_failed(&mut self, e: &BufferError) {
        self.metrics.write_error(e.kind());
        if self.degraded_since.is_none() {
            error!(
                error = %e,
                kind = e.kind(),
                memory_readings = self.settings.memory_readings,
                "buffer cannot be written; holding new readings in memory (unacknowledged to sensors) and retrying"
            );
            self.degraded_since = Some(Instant::now());
            self.metrics.degraded.set(1);
        }
        self.last_retry = Instant::now();
    }

    /// Keeps appends in memory up to the bound; beyond it they are refused
    /// (left unacknowledged with the sensor broker).
    fn hold(&mut self, group: Vec<Pending>) {
        for p in group {
            if self.pending_readings + p.readings.len() > self.settings.memory_readings {
                self.metrics.refused.inc_by(p.readings.len() as u64);
                (p.on_commit)(Err(&BufferError::Backlogged));
                continue;
            }
            self.pending_readings += p.readings.len();
            self.pending.push_back(p);
        }
        self.metrics
            .memory_readings
            .set(self.pending_readings as i64);
    }

    /// Tries to commit what is held in memory.
    fn retry(&mut self) {
        self.last_retry = Instant::now();
        if self.store.is_none() {
            match Store::open(&self.path, self.settings.store.clone()) {
                Ok(s) => self.store = Some(s),
                Err(e) => {
                    self.metrics.write_error(e.kind());
                    return;
                }
            }
        }
        let messages: Vec<Message<'_>> = self.pending.iter().map(Pending::message).collect();
        let result = match self.store.as_mut() {
            None => Err(BufferError::NotOpen(self.path.display().to_string())),
            Some(s) if messages.is_empty() => s.probe_write().map(|()| Vec::new()),
            Some(s) => s.append_groups(&messages),
        };
        match result {
            Ok(done) => {
                let held = self.pending_readings;
                let group: Vec<_> = self.pending.drain(..).collect();
                self.pending_readings = 0;
                self.metrics.memory_readings.set(0);
                self.committed(group, done);
                let after = self.degraded_since.take().map(|t| t.elapsed());
                self.metrics.degraded.set(0);
                info!(
                    readings = held,
                    after = ?after,
                    "buffer writable again; readings held in memory committed"
                );
                self.budget_due = true;
            }
            Err(e) => {
                self.metrics.write_error(e.kind());
            }
        }
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
        self.metrics.set_depth(s);
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

    fn handle(&mut self, req: Request) {
        // A dropped receiver only means the asker gave up; nothing to do then.
        match req {
            Request::Append { .. } => unreachable!("appends are grouped before this"),
            Request::ReadFrom { from, max, reply } => {
                let r = match self.store.as_mut() {
                    Some(s) => s.read_from(from, max),
                    None => Ok((Vec::new(), Vec::new())),
                };
                let _ = reply.send(r);
            }
            Request::Ack { first, last, reply } => {
                let r = self
                    .store()
                    .and_then(|s| s.ack_range(first, last, now_ms()));
                if let Err(e) = &r {
                    self.metrics.write_error(e.kind());
                }
                let _ = reply.send(r);
            }
            Request::MarkSent { first, last, reply } => {
                let r = self.store().and_then(|s| s.mark_sent(first, last));
                if let Err(e) = &r {
                    self.metrics.write_error(e.kind());
                    warn!(error = %e, first_seq = first, last_seq = last, "cannot mark a batch as sent");
                }
                if let Some(reply) = reply {
                    let _ = reply.send(r);
                }
            }
            Request::Renumber {
                first,
                last,
                floor,
                reply,
            } => {
                let r = self.store().and_then(|s| s.renumber(first, last, floor));
                match &r {
                    Ok(done) => {
                        self.metrics.renumbered.inc_by(done.moved);
                    }
                    Err(e) => self.metrics.write_error(e.kind()),
                }
                let _ = reply.send(r);
            }
            Request::UnackFrom { from, reply } => {
                let _ = reply.send(self.store().and_then(|s| s.unack_from(from)));
            }
            Request::Snapshot { reply } => {
                let s = self.snapshot();
                if let Ok(s) = &s {
                    self.publish(s);
                }
                let _ = reply.send(s);
            }
        }
    }
}
