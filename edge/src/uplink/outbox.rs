//! Send-side bookkeeping of the uplink, without I/O.
//!
//! Invariants: a reading leaves the buffer only on an `Ack` (the outbox never
//! deletes); every held reading is sent again after a reconnect or when its
//! batch was not acked within `ack_timeout`, so delivery is at-least-once and
//! the cloud's `(device_id, seq)` key makes it exactly-once in storage.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aeris_wire::Reading;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Inflight {
    last: u64,
    sent_at: Instant,
}

#[derive(Debug)]
pub struct Outbox {
    /// Lowest seq not yet sent on this connection.
    next_send: u64,
    /// Batches sent and not acked, by first seq.
    inflight: BTreeMap<u64, Inflight>,
    max_inflight: usize,
    ack_timeout: Duration,
}

impl Outbox {
    pub fn new(max_inflight: usize, ack_timeout: Duration) -> Self {
        Outbox {
            next_send: 0,
            inflight: BTreeMap::new(),
            max_inflight,
            ack_timeout,
        }
    }

    /// After a (re)connect: every held reading is sent again.
    pub fn reset(&mut self) {
        self.rewind_to(0);
    }

    /// Send again everything held from `seq` on (a cloud `Resend` command, or
    /// an ack timeout).
    pub fn rewind_to(&mut self, seq: u64) {
        self.next_send = self.next_send.min(seq);
        self.inflight
            .retain(|&first, f| first < seq && f.last < seq);
    }

    pub fn next_send(&self) -> u64 {
        self.next_send
    }

    pub fn has_room(&self) -> bool {
        self.inflight.len() < self.max_inflight
    }

    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    pub fn sent(&mut self, first: u64, last: u64, now: Instant) {
        self.inflight.insert(first, Inflight { last, sent_at: now });
        self.next_send = self.next_send.max(last + 1);
    }

    /// Forgets the in-flight batches `first..=last` covers.
    pub fn acked(&mut self, first: u64, last: u64) {
        self.inflight
            .retain(|&f, inflight| !(f >= first && inflight.last <= last));
    }

    /// Rewinds to the oldest batch that waited longer than `ack_timeout`.
    /// Returns whether it did.
    pub fn expire(&mut self, now: Instant) -> bool {
        let timed_out = self
            .inflight
            .iter()
            .find(|(_, f)| now.duration_since(f.sent_at) >= self.ack_timeout)
            .map(|(&first, _)| first);
        match timed_out {
            Some(first) => {
                self.rewind_to(first);
                true
            }
            None => false,
        }
    }

    /// When the next in-flight batch times out.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.inflight
            .values()
            .map(|f| f.sent_at + self.ack_timeout)
            .min()
    }
}

/// Splits off the leading run of consecutive seqs (a batch must be
/// contiguous). Returns the run and whether it ended at a gap (in which case
/// nothing can join it later).
pub fn leading_run(rows: Vec<(u64, Reading)>) -> Option<(u64, Vec<Reading>, bool)> {
    let first = rows.first()?.0;
    let total = rows.len();
    let run: Vec<Reading> = rows
        .into_iter()
        .enumerate()
        .take_while(|(i, (seq, _))| *seq == first + *i as u64)
        .map(|(_, (_, r))| r)
        .collect();
    let ended_at_gap = run.len() < total;
    Some((first, run, ended_at_gap))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> Instant {
        Instant::now()
    }

    #[test]
    fn acks_free_room_and_timeouts_rewind() {
        let now = t0();
        let mut o = Outbox::new(2, Duration::from_secs(10));
        o.sent(1, 10, now);
        o.sent(11, 20, now + Duration::from_secs(1));
        assert!(!o.has_room());
        assert_eq!(o.next_send(), 21);
        o.acked(11, 20);
        assert!(o.has_room());
        assert_eq!(o.next_deadline(), Some(now + Duration::from_secs(10)));
        assert!(!o.expire(now + Duration::from_secs(9)));
        assert!(o.expire(now + Duration::from_secs(10)));
        assert_eq!(o.next_send(), 1);
        assert_eq!(o.inflight(), 0);
    }

    #[test]
    fn reset_sends_everything_again() {
        let mut o = Outbox::new(4, Duration::from_secs(10));
        o.sent(5, 9, t0());
        o.reset();
        assert_eq!((o.next_send(), o.inflight()), (0, 0));
    }

    #[test]
    fn leading_run_stops_at_gaps() {
        let r = |s: u64| {
            (
                s,
                Reading {
                    sensor: "s".into(),
                    ts_ms: s as i64,
                    lat: 0.0,
                    lon: 0.0,
                    flags: 0,
                    values: vec![],
                },
            )
        };
        let (first, run, gap) = leading_run(vec![r(4), r(5), r(7)]).unwrap();
        assert_eq!((first, run.len(), gap), (4, 2, true));
        let (_, run, gap) = leading_run(vec![r(4), r(5)]).unwrap();
        assert_eq!((run.len(), gap), (2, false));
        assert!(leading_run(vec![]).is_none());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Send(usize),
        AckOldest,
        Reconnect,
        Tick(u64),
    }

    proptest! {
        /// Model check: whatever the order of sends, acks, reconnects and
        /// timeouts, every reading is eventually acked (none is skipped),
        /// and the outbox never sends past what exists.
        #[test]
        fn every_reading_is_eventually_acked(ops in prop::collection::vec(prop_oneof![
            (1..20usize).prop_map(Op::Send),
            Just(Op::AckOldest),
            Just(Op::Reconnect),
            (0..30u64).prop_map(Op::Tick),
        ], 1..80)) {
            let start = t0();
            let mut now = start;
            let total = 200u64;
            let mut held: std::collections::BTreeSet<u64> = (1..=total).collect();
            let mut o = Outbox::new(3, Duration::from_secs(10));
            let mut wire: Vec<(u64, u64)> = vec![];
            let step = |o: &mut Outbox, held: &std::collections::BTreeSet<u64>, wire: &mut Vec<(u64,u64)>, n: usize, now: Instant| -> Result<(), TestCaseError> {
                if !o.has_room() { return Ok(()); }
                let run: Vec<u64> = held.range(o.next_send()..).copied().take(n).collect();
                let Some(&first) = run.first() else { return Ok(()) };
                let len = run.iter().enumerate().take_while(|(i, s)| **s == first + *i as u64).count();
                let last = first + len as u64 - 1;
                prop_assert!(last <= total);
                o.sent(first, last, now);
                wire.push((first, last));
                Ok(())
            };
            for op in ops {
                match op {
                    Op::Send(n) => step(&mut o, &held, &mut wire, n, now)?,
                    Op::AckOldest => if !wire.is_empty() {
                        let (f, l) = wire.remove(0);
                        for s in f..=l { held.remove(&s); }
                        o.acked(f, l);
                    },
                    Op::Reconnect => { o.reset(); wire.clear(); }
                    Op::Tick(s) => { now += Duration::from_secs(s); o.expire(now); }
                }
            }
            // Drain: a healthy link from here on acks everything sent.
            for _ in 0..1000 {
                if held.is_empty() { break; }
                now += Duration::from_secs(11);
                o.expire(now);
                wire.clear();
                step(&mut o, &held, &mut wire, 50, now)?;
                for (f, l) in wire.drain(..) {
                    for s in f..=l { held.remove(&s); }
                    o.acked(f, l);
                }
            }
            prop_assert!(held.is_empty(), "never acked: {:?}", held.iter().take(5).collect::<Vec<_>>());
        }
    }
}
