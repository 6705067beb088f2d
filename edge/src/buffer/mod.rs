//! The crash-safe reading buffer and the thread that owns it.
//!
//! Every reading the agent accepts is in the SQLite file before its sensor
//! message is acknowledged to the local broker, and leaves it only when the
//! cloud has acknowledged its seq. One thread owns the connection; appends
//! that queue up while a transaction commits are committed together (group
//! commit), so throughput does not cost durability.

mod store;

use std::path::Path;
use std::sync::Arc;
use std::thread;

use aeris_wire::Reading;
use tokio::sync::{mpsc, oneshot, Notify};

pub use store::{BufferError, CorruptRow, Depth, Store};

/// Called once the appended readings are committed (or could not be).
pub type OnCommit = Box<dyn FnOnce(Result<(u64, u64), &BufferError>) + Send>;

/// Readings read back for sending.
pub type Held = (Vec<(u64, Reading)>, Vec<CorruptRow>);

enum Request {
    Append {
        readings: Vec<Reading>,
        on_commit: OnCommit,
    },
    ReadFrom {
        from: u64,
        max: usize,
        reply: oneshot::Sender<Result<Held, BufferError>>,
    },
    Delete {
        first: u64,
        last: u64,
        reply: oneshot::Sender<Result<usize, BufferError>>,
    },
    Depth {
        reply: oneshot::Sender<Result<(Depth, u64), BufferError>>,
    },
}

/// Most readings one group commit takes.
const MAX_GROUP: usize = 4096;

/// A cheap, cloneable handle to the buffer thread.
#[derive(Clone)]
pub struct Buffer {
    tx: mpsc::Sender<Request>,
    /// Signalled after every commit that added readings.
    pub appended: Arc<Notify>,
}

impl Buffer {
    /// Opens (or creates) the buffer file and starts its thread. The thread
    /// ends when the last handle is dropped, after finishing queued work.
    pub fn open(path: &Path) -> Result<(Buffer, thread::JoinHandle<()>), BufferError> {
        let store = Store::open(path)?;
        let (tx, rx) = mpsc::channel(8192);
        let appended = Arc::new(Notify::new());
        let notify = appended.clone();
        let join = thread::Builder::new()
            .name("aeris-buffer".into())
            .spawn(move || serve(store, rx, notify))
            .map_err(|e| BufferError::Corrupt(format!("cannot start buffer thread: {e}")))?;
        Ok((Buffer { tx, appended }, join))
    }

    /// Queues `readings` for the next group commit; `on_commit` runs on the
    /// buffer thread once they are durable. Waits only if the queue is full.
    pub async fn append(
        &self,
        readings: Vec<Reading>,
        on_commit: OnCommit,
    ) -> Result<(), BufferError> {
        self.tx
            .send(Request::Append {
                readings,
                on_commit,
            })
            .await
            .map_err(|_| BufferError::Closed)
    }

    pub async fn read_from(&self, from: u64, max: usize) -> Result<Held, BufferError> {
        self.call(|reply| Request::ReadFrom { from, max, reply })
            .await
    }

    /// Deletes acknowledged readings `first..=last`.
    pub async fn delete(&self, first: u64, last: u64) -> Result<usize, BufferError> {
        self.call(|reply| Request::Delete { first, last, reply })
            .await
    }

    /// What the buffer holds, and the next seq it will assign.
    pub async fn depth(&self) -> Result<(Depth, u64), BufferError> {
        self.call(|reply| Request::Depth { reply }).await
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

fn serve(mut store: Store, mut rx: mpsc::Receiver<Request>, appended: Arc<Notify>) {
    let mut others = Vec::new();
    while let Some(first) = rx.blocking_recv() {
        let mut group: Vec<(Vec<Reading>, OnCommit)> = Vec::new();
        let mut count = 0;
        let mut next = Some(first);
        // Take everything already queued: appends join this commit, other
        // requests run right after it, in arrival order.
        while let Some(req) = next.take() {
            match req {
                Request::Append {
                    readings,
                    on_commit,
                } => {
                    count += readings.len();
                    group.push((readings, on_commit));
                }
                other => others.push(other),
            }
            if count < MAX_GROUP {
                next = rx.try_recv().ok();
            }
        }
        if !group.is_empty() {
            commit_group(&mut store, group);
            appended.notify_one();
        }
        for req in others.drain(..) {
            handle(&mut store, req);
        }
    }
}

fn commit_group(store: &mut Store, group: Vec<(Vec<Reading>, OnCommit)>) {
    let all: Vec<Reading> = group.iter().flat_map(|(r, _)| r.iter().cloned()).collect();
    match store.append(&all) {
        Ok(Some((mut seq, _))) => {
            for (readings, on_commit) in group {
                let n = readings.len() as u64;
                if n == 0 {
                    on_commit(Ok((seq, seq.saturating_sub(1))));
                    continue;
                }
                on_commit(Ok((seq, seq + n - 1)));
                seq += n;
            }
        }
        Ok(None) => {
            for (_, on_commit) in group {
                on_commit(Ok((store.next_seq(), store.next_seq().saturating_sub(1))));
            }
        }
        Err(e) => {
            tracing::error!(error = %e, readings = all.len(), "buffer commit failed");
            for (_, on_commit) in group {
                on_commit(Err(&e));
            }
        }
    }
}

fn handle(store: &mut Store, req: Request) {
    // A dropped receiver only means the asker gave up; nothing to do then.
    match req {
        Request::Append { .. } => unreachable!("appends are grouped before this"),
        Request::ReadFrom { from, max, reply } => {
            let _ = reply.send(store.read_from(from, max));
        }
        Request::Delete { first, last, reply } => {
            let _ = reply.send(store.delete_range(first, last));
        }
        Request::Depth { reply } => {
            let _ = reply.send(store.depth().map(|d| (d, store.next_seq())));
        }
    }
}
