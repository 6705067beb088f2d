//! What to publish after a group of batches committed: the acks of each
//! batch and the `Renumber` commands for seq collisions. Plain data, no I/O.
//!
//! Invariants: a colliding seq (its `(device_id, seq)` holds another reading
//! in the database) is never acked; every other seq of a batch is, as the
//! fewest ranges that leave the colliding seqs out. Each contiguous run of
//! a device's colliding seqs in the group gets one `Renumber`; the runs get
//! disjoint new ranges, the first starting after the device's highest
//! stored seq, so two commands of one group never hand out a seq twice.

use std::collections::BTreeMap;

use aeris_sink::WriteOutcome;
use aeris_wire::{Ack, Batch};

/// One `Renumber` to send: seqs `first..=last` of `device` get new seqs
/// from `next` on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Renumber {
    pub device: String,
    pub first: u64,
    pub last: u64,
    pub next: u64,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Plan {
    /// Per batch of the group, in order: its acks (none when every reading
    /// collided).
    pub acks: Vec<Vec<Ack>>,
    pub renumbers: Vec<Renumber>,
}

/// Contiguous runs of ascending seqs: `[1, 2, 3, 7, 8]` gives
/// `[(1, 3), (7, 8)]`.
pub(crate) fn runs(seqs: impl IntoIterator<Item = u64>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for s in seqs {
        match out.last_mut() {
            Some((_, last)) if last.checked_add(1) == Some(s) => *last = s,
            Some((_, last)) if *last == s => {}
            _ => out.push((s, s)),
        }
    }
    out
}

/// `first..=last` without the (ascending) `colliding` seqs, as ranges.
pub(crate) fn ack_ranges(first: u64, last: u64, colliding: &[u64]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    let mut from = Some(first);
    for &c in colliding.iter().filter(|&&c| (first..=last).contains(&c)) {
        match from {
            Some(f) if c > f => out.push((f, c - 1)),
            _ => {}
        }
        from = c.checked_add(1);
    }
    match from {
        Some(f) if f <= last => out.push((f, last)),
        _ => {}
    }
    out
}

/// The plan for `batches` after the write that returned `outcome`.
pub(crate) fn plan(batches: &[Batch], outcome: &WriteOutcome) -> Plan {
    let mut per_batch: Vec<Vec<u64>> = vec![Vec::new(); batches.len()];
    let mut per_device: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for &(i, seq) in &outcome.collisions {
        let Some(b) = batches.get(i) else { continue };
        per_batch[i].push(seq);
        per_device.entry(&b.device).or_default().push(seq);
    }
    let acks = batches
        .iter()
        .zip(&mut per_batch)
        .map(|(b, colliding)| {
            let Some(last) = b.last_seq() else {
                return Vec::new();
            };
            colliding.sort_unstable();
            ack_ranges(b.first_seq, last, colliding)
                .into_iter()
                .map(|(first_seq, last_seq)| Ack {
                    device: b.device.clone(),
                    first_seq,
                    last_seq,
                })
                .collect()
        })
        .collect();
    let mut renumbers = Vec::new();
    for (device, mut seqs) in per_device {
        seqs.sort_unstable();
        let stored = outcome.max_seq.get(device).copied().unwrap_or(0);
        let mut next = stored
            .max(seqs.last().copied().unwrap_or(0))
            .saturating_add(1);
        for (first, last) in runs(seqs) {
            renumbers.push(Renumber {
                device: device.to_owned(),
                first,
                last,
                next,
            });
            next = next.saturating_add(last - first + 1);
        }
    }
    Plan { acks, renumbers }
}

/// Adds `one`, the outcome of writing batch `batch` of a group on its own
/// (its collisions name batch 0), to the group's outcome `into`.
pub(crate) fn merge(into: &mut WriteOutcome, batch: usize, one: WriteOutcome) {
    into.inserted += one.inserted;
    into.duplicates += one.duplicates;
    into.collisions
        .extend(one.collisions.into_iter().map(|(_, seq)| (batch, seq)));
    for (device, max) in one.max_seq {
        let m = into.max_seq.entry(device).or_default();
        *m = (*m).max(max);
    }
}

/// `batches` without what was not stored (colliding readings, batches set
/// aside as dead letters), for the live view; `None` when all was stored.
pub(crate) fn stored_only(
    batches: &[Batch],
    outcome: &WriteOutcome,
    dead: &[usize],
) -> Option<Vec<Batch>> {
    if outcome.collisions.is_empty() && dead.is_empty() {
        return None;
    }
    let mut out = batches.to_vec();
    for (i, b) in out.iter_mut().enumerate() {
        if dead.contains(&i) {
            b.readings.clear();
            continue;
        }
        let first = b.first_seq;
        let mut k = 0u64;
        b.readings.retain(|_| {
            let seq = first + k;
            k += 1;
            !outcome.collisions.contains(&(i, seq))
        });
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use aeris_wire::{Reading, Value};

    fn batch(device: &str, first_seq: u64, n: usize) -> Batch {
        let r = Reading {
            sensor: "s".into(),
            ts_ms: 1,
            lat: 0.0,
            lon: 0.0,
            flags: 0,
            values: vec![Value {
                quantity: "pm25".into(),
                value: 1.0,
            }],
        };
        Batch {
            device: device.into(),
            first_seq,
            readings: vec![r; n],
        }
    }

    fn ranges(acks: &[Ack]) -> Vec<(u64, u64)> {
        acks.iter().map(|a| (a.first_seq, a.last_seq)).collect()
    }

    #[test]
    fn runs_join_neighbours() {
        assert_eq!(runs([1, 2, 3, 7, 8, 10]), vec![(1, 3), (7, 8), (10, 10)]);
        assert_eq!(runs([]), vec![]);
        assert_eq!(
            runs([u64::MAX - 1, u64::MAX]),
            vec![(u64::MAX - 1, u64::MAX)]
        );
    }

    #[test]
    fn ack_ranges_leave_out_exactly_the_colliding_seqs() {
        assert_eq!(ack_ranges(1, 10, &[]), vec![(1, 10)]);
        assert_eq!(ack_ranges(1, 10, &[1, 2, 3]), vec![(4, 10)]);
        assert_eq!(ack_ranges(1, 10, &[10]), vec![(1, 9)]);
        assert_eq!(ack_ranges(1, 10, &[3, 4, 8]), vec![(1, 2), (5, 7), (9, 10)]);
        assert_eq!(ack_ranges(1, 3, &[1, 2, 3]), vec![]);
        assert_eq!(ack_ranges(5, 5, &[5]), vec![]);
        // Every seq is in exactly one of the acks or the colliding list.
        for mask in 0u32..(1 << 9) {
            let colliding: Vec<u64> = (0..9)
                .filter(|b| mask & (1 << b) != 0)
                .map(|b| b + 3)
                .collect();
            let acked: Vec<u64> = ack_ranges(3, 11, &colliding)
                .into_iter()
                .flat_map(|(a, b)| a..=b)
                .collect();
            let mut all: Vec<u64> = acked.iter().chain(&colliding).copied().collect();
            all.sort_unstable();
            assert_eq!(all, (3..=11).collect::<Vec<_>>(), "mask {mask:b}");
            assert_eq!(
                runs(acked.iter().copied()).len(),
                ack_ranges(3, 11, &colliding).len()
            );
        }
    }

    #[test]
    fn a_group_without_collisions_acks_each_batch_whole() {
        let g = [batch("a", 1, 5), batch("b", 9, 1)];
        let p = plan(&g, &WriteOutcome::default());
        assert_eq!(ranges(&p.acks[0]), vec![(1, 5)]);
        assert_eq!(ranges(&p.acks[1]), vec![(9, 9)]);
        assert!(p.renumbers.is_empty());
    }

    #[test]
    fn colliding_runs_are_renumbered_past_the_highest_stored_seq_without_overlap() {
        // a: 1..=10 and 11..=20 in two batches; 3..=4, 10..=12 collide;
        // b: all of 1..=3 collide.
        let g = [batch("a", 1, 10), batch("a", 11, 10), batch("b", 1, 3)];
        let outcome = WriteOutcome {
            inserted: 22,
            duplicates: 0,
            collisions: vec![
                (0, 3),
                (0, 4),
                (0, 10),
                (1, 11),
                (1, 12),
                (2, 1),
                (2, 2),
                (2, 3),
            ],
            max_seq: [("a".to_owned(), 50), ("b".to_owned(), 2)].into(),
        };
        let p = plan(&g, &outcome);
        assert_eq!(ranges(&p.acks[0]), vec![(1, 2), (5, 9)]);
        assert_eq!(ranges(&p.acks[1]), vec![(13, 20)]);
        assert!(p.acks[2].is_empty());
        let r = |d: &str, first, last, next| Renumber {
            device: d.into(),
            first,
            last,
            next,
        };
        assert_eq!(
            p.renumbers,
            vec![r("a", 3, 4, 51), r("a", 10, 12, 53), r("b", 1, 3, 4)]
        );
        let live = stored_only(&g, &outcome, &[1]).unwrap();
        assert_eq!(live[0].readings.len(), 7);
        assert_eq!(live[1].readings.len(), 0, "dead letter");
        assert_eq!(live[2].readings.len(), 0);
        assert!(stored_only(&g, &WriteOutcome::default(), &[]).is_none());
    }
}

#[cfg(test)]
mod merge_tests {
    use super::*;

    #[test]
    fn single_batch_outcomes_merge_under_their_group_index() {
        let mut group = WriteOutcome::default();
        let one = |inserted, collisions: Vec<(usize, u64)>, max: u64| WriteOutcome {
            inserted,
            duplicates: 1,
            collisions,
            max_seq: [("a".to_owned(), max)].into(),
        };
        merge(&mut group, 0, one(3, vec![], 9));
        merge(&mut group, 2, one(1, vec![(0, 4), (0, 5)], 12));
        merge(&mut group, 3, one(2, vec![], 10));
        assert_eq!(
            group,
            WriteOutcome {
                inserted: 6,
                duplicates: 3,
                collisions: vec![(2, 4), (2, 5)],
                max_seq: [("a".to_owned(), 12)].into(),
            }
        );
    }
}
