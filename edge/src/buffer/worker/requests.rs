//! Serving the handles' requests other than appends. A dropped receiver
//! only means the asker gave up; nothing to do then.

use aeris_wire::now_ms;
use tokio::sync::oneshot;
use tracing::warn;

use super::Worker;
use crate::buffer::handle::Request;
use crate::buffer::store::{BufferError, Renumbered};
use crate::buffer::{Columns, Held};

impl Worker {
    pub(super) fn handle(&mut self, req: Request) {
        match req {
            Request::Append { .. } => unreachable!("appends are grouped before this"),
            Request::ReadFrom {
                from,
                max,
                into,
                reply,
            } => self.read_from(from, max, into, reply),
            Request::Ack { first, last, reply } => self.ack(first, last, reply),
            Request::MarkSent { first, last, reply } => self.mark_sent(first, last, reply),
            Request::Renumber {
                first,
                last,
                floor,
                reply,
            } => self.renumber(first, last, floor, reply),
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
            Request::Windows(w) => {
                // Kept in the settings too: a store reopened after a
                // failure is opened with them.
                self.settings.store.window_ms = w.by_sensor.clone();
                self.settings.store.default_window_ms = w.default_ms;
                if let Some(store) = self.store.as_mut() {
                    store.set_windows(w.by_sensor, w.default_ms);
                }
            }
        }
    }

    fn read_from(&mut self, from: u64, max: usize, mut into: Columns, reply: Reply<Held>) {
        let r = match self.store.as_mut() {
            Some(s) => s.read_columns(from, max, &mut into).map(|bad| (into, bad)),
            None => Ok((into, Vec::new())),
        };
        let _ = reply.send(r);
    }

    fn ack(&mut self, first: u64, last: u64, reply: Reply<usize>) {
        let r = self
            .store()
            .and_then(|s| s.ack_range(first, last, now_ms()));
        if let Err(e) = &r {
            self.metrics.write_error(e.kind());
        }
        let _ = reply.send(r);
    }

    fn mark_sent(&mut self, first: u64, last: u64, reply: Option<Reply<usize>>) {
        let r = self.store().and_then(|s| s.mark_sent(first, last));
        if let Err(e) = &r {
            self.metrics.write_error(e.kind());
            warn!(error = %e, first_seq = first, last_seq = last, "cannot mark a batch as sent");
        }
        if let Some(reply) = reply {
            let _ = reply.send(r);
        }
    }

    fn renumber(&mut self, first: u64, last: u64, floor: u64, reply: Reply<Renumbered>) {
        let r = self.store().and_then(|s| s.renumber(first, last, floor));
        match &r {
            Ok(done) => {
                self.metrics.renumbered.inc_by(done.moved);
            }
            Err(e) => self.metrics.write_error(e.kind()),
        }
        let _ = reply.send(r);
    }
}

/// Where a request's answer goes.
type Reply<T> = oneshot::Sender<Result<T, BufferError>>;
