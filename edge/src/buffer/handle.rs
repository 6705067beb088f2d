//! The [`Buffer`] handle: the buffer's async API. Every call is a
//! [`Request`] queued to the buffer thread (`worker.rs`); the answer comes
//! back on a oneshot channel.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::thread;

use aeris_wire::Reading;
use tokio::sync::{mpsc, oneshot, Notify};

use super::store::{BufferError, Delivery, Renumbered};
use super::worker::Worker;
use super::{Columns, Held, Metrics, OnCommit, Settings, Snapshot};

/// Requests the buffer thread holds before senders wait. Appends are one
/// sensor message each, and the sensor broker may deliver faster than its
/// in-flight window suggests, so this is what bounds readings received and
/// not yet committed in memory (a group commit takes what is queued: at
/// most twice this many messages; 256 keeps that under a megabyte and still
/// lets a commit take hundreds of messages).
const QUEUE: usize = 256;

/// What a handle asks of the buffer thread.
pub(super) enum Request {
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
        into: Columns,
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
    /// New aggregation windows for the disk budget (a live configuration
    /// change); the next budget pass uses them.
    Windows(Windows),
}

/// The disk budget's aggregation windows: by sensor id, and for the others.
#[derive(Debug, Clone, PartialEq)]
pub struct Windows {
    pub by_sensor: std::collections::HashMap<String, i64>,
    pub default_ms: i64,
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
        let appended = Arc::new(Notify::new());
        let last = metrics.last_snapshot();
        let worker = Worker::open(path, settings, metrics, appended.clone(), last.clone())?;
        let (tx, rx) = mpsc::channel(QUEUE);
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

    /// Up to `max` unsent readings with seq >= `from`, in seq order,
    /// appended to `into`.
    pub async fn read_from(
        &self,
        from: u64,
        max: usize,
        into: Columns,
    ) -> Result<Held, BufferError> {
        self.call(|reply| Request::ReadFrom {
            from,
            max,
            into,
            reply,
        })
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

    /// Replaces the disk budget's aggregation windows; readings already
    /// aggregated keep the window they were aggregated into.
    pub async fn set_windows(&self, windows: Windows) -> Result<(), BufferError> {
        self.tx
            .send(Request::Windows(windows))
            .await
            .map_err(|_| BufferError::Closed)
    }

    /// What the buffer holds, the next seq, and the losses so far.
    pub async fn snapshot(&self) -> Result<Snapshot, BufferError> {
        self.call(|reply| Request::Snapshot { reply }).await
    }

    /// The buffer's state as of its last refresh, without asking the thread.
    pub fn last_snapshot(&self) -> Snapshot {
        self.last.lock().map(|s| s.clone()).unwrap_or_default()
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
