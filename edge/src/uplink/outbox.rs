//! Send-side bookkeeping of the uplink, without I/O.
//!
//! Invariants: a reading leaves the buffer only on an `Ack` (the outbox never
//! deletes); every held reading is sent again after a reconnect or when its
//! batch was not acked within `ack_timeout`, so delivery is at-least-once and
//! the cloud's `(device_id, seq)` key makes it exactly-once in storage.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Which part of the held readings a batch comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Seqs from the live mark on: the newest readings, sent first.
    Live,
    /// Seqs below the live mark: what piled up while offline, drained in
    /// seq order within its share of the in-flight window.
    Backlog,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Inflight {
    last: u64,
    sent_at: Instant,
}

#[derive(Debug)]
pub struct Outbox {
    /// Seqs below this are the backlog; set at every (re)connect.
    live_from: u64,
    /// Lowest seq of each lane not yet sent on this connection.
    next_live: u64,
    next_backlog: u64,
    /// Batches sent and not acked, by first seq.
    inflight: BTreeMap<u64, Inflight>,
    max_inflight: usize,
    /// In-flight batches the backlog may hold at once.
    backlog_slots: usize,
    ack_timeout: Duration,
}

impl Outbox {
    /// `backlog_share` of `max_inflight` (at least one batch) is what the
    /// backlog may hold in flight.
    pub fn new(max_inflight: usize, backlog_share: f64, ack_timeout: Duration) -> Self {
        let backlog_slots = ((max_inflight as f64 * backlog_share).floor() as usize).max(1);
        Outbox {
            live_from: 0,
            next_live: 0,
            next_backlog: 0,
            inflight: BTreeMap::new(),
            max_inflight,
            backlog_slots: backlog_slots.min(max_inflight),
            ack_timeout,
        }
    }

    /// After a (re)connect: every held reading is sent again, the ones from
    /// `live_from` on first.
    pub fn reset(&mut self, live_from: u64) {
        self.live_from = live_from;
        self.next_live = live_from;
        self.next_backlog = 0;
        self.inflight.clear();
    }

    /// Send again everything held from `seq` on (a cloud `Resend` command, or
    /// an ack timeout).
    pub fn rewind_to(&mut self, seq: u64) {
        if seq < self.live_from {
            self.next_backlog = self.next_backlog.min(seq);
        }
        self.next_live = self.next_live.min(seq.max(self.live_from));
        self.inflight
            .retain(|&first, f| first < seq && f.last < seq);
    }

    /// Where `lane` goes on, and the first seq it may not send (the backlog
    /// stops at the live mark).
    pub fn next_send(&self, lane: Lane) -> (u64, u64) {
        match lane {
            Lane::Live => (self.next_live, u64::MAX),
            Lane::Backlog => (self.next_backlog, self.live_from),
        }
    }

    /// The backlog has nothing left to send below the live mark.
    pub fn backlog_sent(&mut self) {
        self.next_backlog = self.live_from;
    }

    pub fn has_room(&self, lane: Lane) -> bool {
        let total = self.inflight.len() < self.max_inflight;
        match lane {
            Lane::Live => total,
            Lane::Backlog => {
                total
                    && self.next_backlog < self.live_from
                    && self.inflight.range(..self.live_from).count() < self.backlog_slots
            }
        }
    }

    pub fn inflight(&self) -> usize {
        self.inflight.len()
    }

    pub fn sent(&mut self, first: u64, last: u64, now: Instant) {
        self.inflight.insert(first, Inflight { last, sent_at: now });
        if first < self.live_from {
            self.next_backlog = self.next_backlog.max(last + 1);
        } else {
            self.next_live = self.next_live.max(last + 1);
        }
    }

    /// Forgets the in-flight batches `first..=last` covers; returns when
    /// each was sent (for the ack latency).
    pub fn acked(&mut self, first: u64, last: u64) -> Vec<Instant> {
        let mut sent = Vec::new();
        self.inflight.retain(|&f, inflight| {
            let covered = f >= first && inflight.last <= last;
            if covered {
                sent.push(inflight.sent_at);
            }
            !covered
        });
        sent
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

/// Length of the leading run of consecutive seqs (a batch must be
/// contiguous); a shorter run than `seqs` ended at a gap, and nothing can
/// join it later.
pub fn run_len(seqs: &[u64]) -> usize {
    let Some(&first) = seqs.first() else {
        return 0;
    };
    seqs.iter()
        .zip(first..)
        .take_while(|(seq, want)| *seq == want)
        .count()
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
        let mut o = Outbox::new(2, 0.5, Duration::from_secs(10));
        o.sent(1, 10, now);
        o.sent(11, 20, now + Duration::from_secs(1));
        assert!(!o.has_room(Lane::Live));
        assert_eq!(o.next_send(Lane::Live), (21, u64::MAX));
        assert_eq!(o.acked(11, 20), vec![now + Duration::from_secs(1)]);
        assert!(o.has_room(Lane::Live));
        assert_eq!(o.next_deadline(), Some(now + Duration::from_secs(10)));
        assert!(!o.expire(now + Duration::from_secs(9)));
        assert!(o.expire(now + Duration::from_secs(10)));
        assert_eq!(o.next_send(Lane::Live).0, 1);
        assert_eq!(o.inflight(), 0);
    }

    #[test]
    fn reset_sends_everything_again() {
        let mut o = Outbox::new(4, 0.5, Duration::from_secs(10));
        o.sent(5, 9, t0());
        o.reset(0);
        assert_eq!((o.next_send(Lane::Live).0, o.inflight()), (0, 0));
    }

    #[test]
    fn after_a_reconnect_the_newest_go_first_and_the_backlog_keeps_to_its_share() {
        let now = t0();
        let mut o = Outbox::new(4, 0.5, Duration::from_secs(10));
        o.reset(1000);
        assert_eq!(o.next_send(Lane::Live), (1000, u64::MAX));
        assert_eq!(o.next_send(Lane::Backlog), (0, 1000));
        o.sent(1000, 1099, now);
        o.sent(1, 100, now);
        o.sent(101, 200, now);
        // Two backlog batches fill its half of the window; live has room.
        assert!(!o.has_room(Lane::Backlog));
        assert!(o.has_room(Lane::Live));
        o.acked(1, 100);
        assert!(o.has_room(Lane::Backlog));
        assert_eq!(o.next_send(Lane::Backlog), (201, 1000));
        // A rewind below the mark rewinds both lanes.
        o.rewind_to(150);
        assert_eq!(o.next_send(Lane::Backlog).0, 150);
        assert_eq!(o.next_send(Lane::Live).0, 1000);
        o.backlog_sent();
        assert!(!o.has_room(Lane::Backlog));
    }

    #[test]
    fn runs_stop_at_gaps() {
        assert_eq!(run_len(&[4, 5, 7]), 2);
        assert_eq!(run_len(&[4, 5]), 2);
        assert_eq!(run_len(&[]), 0);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Send(usize),
        AckOldest,
        Reconnect(u64),
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
            (0..=220u64).prop_map(Op::Reconnect),
            (0..30u64).prop_map(Op::Tick),
        ], 1..80)) {
            let start = t0();
            let mut now = start;
            let total = 200u64;
            let mut held: std::collections::BTreeSet<u64> = (1..=total).collect();
            let mut o = Outbox::new(3, 0.34, Duration::from_secs(10));
            let mut wire: Vec<(u64, u64)> = vec![];
            // What the uplink does: live lane first, then the backlog.
            let step = |o: &mut Outbox, held: &std::collections::BTreeSet<u64>, wire: &mut Vec<(u64,u64)>, n: usize, now: Instant| -> Result<(), TestCaseError> {
                for lane in [Lane::Live, Lane::Backlog] {
                    if !o.has_room(lane) { continue; }
                    let (from, end) = o.next_send(lane);
                    let run: Vec<u64> = held.range(from..end).copied().take(n).collect();
                    let Some(&first) = run.first() else {
                        if lane == Lane::Backlog { o.backlog_sent(); }
                        continue;
                    };
                    let len = run.iter().enumerate().take_while(|(i, s)| **s == first + *i as u64).count();
                    let last = first + len as u64 - 1;
                    prop_assert!(last <= total && last < end);
                    o.sent(first, last, now);
                    wire.push((first, last));
                    return Ok(());
                }
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
                    Op::Reconnect(mark) => { o.reset(mark); wire.clear(); }
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
