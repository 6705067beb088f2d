//! Seqs, reading back, acks and their grace period, renumbering, corrupt rows.

use super::*;

#[test]
fn only_published_readings_can_be_acknowledged() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("b.db"));
    s.append(&[reading(1), reading(2)]).unwrap();
    // A stale ack (for seqs of a deleted buffer) finds nothing sent.
    assert_eq!(s.ack_range(1, 2, 0).unwrap(), 0);
    assert_eq!(s.depth().unwrap().readings, 2);
    s.mark_sent(1, 1).unwrap();
    assert_eq!(s.ack_range(1, 2, 0).unwrap(), 1);
    assert_eq!(s.depth().unwrap().readings, 1);
}

#[test]
fn seqs_are_consecutive_and_survive_reopen_without_reuse() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let mut s = open(&path);
    let a = s.append(&[reading(1), reading(2)]).unwrap();
    assert_eq!((a.first, a.stored), (1, 2));
    assert_eq!(s.append(&[reading(3)]).unwrap().first, 3);
    // Everything acked: the table is empty, yet seqs must not restart.
    assert_eq!(sent_and_acked(&mut s, 1, 3, 0).unwrap(), 3);
    assert_eq!(s.depth().unwrap().readings, 0);
    drop(s);
    let mut s = open(&path);
    assert_eq!(s.next_seq(), 4);
    assert_eq!(s.append(&[reading(4)]).unwrap().first, 4);
}

#[test]
fn two_stores_on_one_file_never_reuse_a_seq() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let mut a = open(&path);
    let mut b = open(&path);
    for i in 0..20 {
        let s = if i % 2 == 0 { &mut a } else { &mut b };
        assert_eq!(s.append(&[reading(i)]).unwrap().first, i as u64 + 1);
    }
    let (rows, _) = a.read_from(0, 100).unwrap();
    assert_eq!(rows.len(), 20);
}

#[test]
fn renumbering_moves_the_rows_above_the_floor_once() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(&dir.path().join("b.db"), Options::default()).unwrap();
    let rs: Vec<_> = (0..10).map(reading).collect();
    s.append(&rs).unwrap();
    // Acked by a stale ack for the same seqs of a deleted buffer.
    sent_and_acked(&mut s, 1, 2, 0).unwrap();
    // The cloud holds other readings under 1..=5 and up to seq 500.
    let r = s.renumber(1, 5, 501).unwrap();
    assert_eq!(
        r,
        Renumbered {
            moved: 5,
            first_new: 501,
            next_seq: 506
        }
    );
    let seqs: Vec<(u64, i64)> = s
        .read_from(0, 100)
        .unwrap()
        .0
        .iter()
        .map(|(q, r)| (*q, r.ts_ms - 1_700_000_000_000))
        .collect();
    assert_eq!(
        seqs,
        vec![
            (6, 5),
            (7, 6),
            (8, 7),
            (9, 8),
            (10, 9),
            (501, 0),
            (502, 1),
            (503, 2),
            (504, 3),
            (505, 4)
        ]
    );
    // Again: nothing left in the range; the floor holds.
    assert_eq!(s.renumber(1, 5, 501).unwrap().moved, 0);
    assert_eq!(s.append(&[reading(11)]).unwrap().first, 506);
    // A floor below next_seq moves rows above next_seq.
    let r = s.renumber(6, 6, 10).unwrap();
    assert_eq!((r.moved, r.first_new, r.next_seq), (1, 507, 508));
    assert_eq!(s.count("renumbered").unwrap(), 6);
}

#[test]
fn read_from_returns_unsent_readings_in_order_and_depth_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("b.db"));
    let rs: Vec<_> = (0..10).map(reading).collect();
    s.append(&rs).unwrap();
    sent_and_acked(&mut s, 3, 5, 0).unwrap();
    let (got, bad) = s.read_from(2, 4).unwrap();
    assert!(bad.is_empty());
    let seqs: Vec<u64> = got.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, vec![2, 6, 7, 8]);
    assert_eq!(got[1].1, rs[5]);
    let d = s.depth().unwrap();
    assert_eq!(d.readings, 7);
    assert_eq!(d.oldest_ts_ms, Some(1_700_000_000_000));
    assert!(d.bytes > 7 * 20);
}

#[test]
fn acked_readings_are_kept_for_the_grace_period_and_can_be_unacked() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = Store::open(
        &dir.path().join("b.db"),
        Options {
            acked_grace_ms: 1000,
            ..Options::default()
        },
    )
    .unwrap();
    s.append(&(0..6).map(reading).collect::<Vec<_>>()).unwrap();
    assert_eq!(sent_and_acked(&mut s, 1, 4, 10_000).unwrap(), 4);
    // Acking twice does not count twice.
    assert_eq!(sent_and_acked(&mut s, 1, 4, 10_500).unwrap(), 0);
    let d = s.depth().unwrap();
    assert_eq!((d.readings, d.acked_held), (2, 4));
    assert_eq!(s.read_from(0, 10).unwrap().0.len(), 2);
    // The cloud lost what it acked from seq 3 on.
    assert_eq!(s.unack_from(3).unwrap(), 2);
    let seqs: Vec<u64> = s.read_from(0, 10).unwrap().0.iter().map(|r| r.0).collect();
    assert_eq!(seqs, vec![3, 4, 5, 6]);
    // Grace over for seqs 1-2 (acked at 10_000) only after 11_000.
    assert_eq!(s.purge_acked(10_999).unwrap(), 0);
    assert_eq!(s.purge_acked(11_001).unwrap(), 2);
    assert_eq!(s.depth().unwrap().acked_held, 0);
    assert_eq!(s.next_seq(), 7);
}

#[test]
fn a_corrupt_row_is_reported_and_removed_not_fatal() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("b.db"));
    s.append(&[reading(1), reading(2), reading(3)]).unwrap();
    s.conn
        .execute("UPDATE readings SET body = x'01ff' WHERE seq = 2", [])
        .unwrap();
    let (good, bad) = s.read_from(0, 10).unwrap();
    assert_eq!(good.len(), 2);
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].seq, 2);
    assert_eq!(s.depth().unwrap().readings, 2);
    assert_eq!(s.losses().unwrap().get("corrupt"), Some(&1));
}

/// What the uplink reads (rows straight into columns) is what
/// `read_from` reads, row for row: the same seqs, the same readings bit
/// for bit, the same corrupt and invalid rows taken out and counted.
#[test]
fn rows_read_into_columns_are_the_rows_read_as_readings() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("b.db"));
    let mut rows: Vec<Reading> = (1..=40).map(reading).collect();
    rows[7].values.push(Value {
        quantity: "rh".into(),
        value: -0.0,
    });
    rows[9].lat = -33.25;
    rows[11].flags = 5;
    s.append(&rows).unwrap();
    // A row that does not decode, and one that decodes but is invalid
    // (a value the cloud refuses).
    s.conn
        .execute("UPDATE readings SET body = x'01ff' WHERE seq = 3", [])
        .unwrap();
    let mut bad_value = reading(6);
    bad_value.values[0].value = f64::INFINITY;
    let body = crate::buffer::row::encode(&bad_value);
    s.conn
        .execute("UPDATE readings SET body = ?1 WHERE seq = 6", [body])
        .unwrap();

    let mut columns = Columns::default();
    let bad = s.read_columns(0, 15, &mut columns).unwrap();
    assert_eq!(bad.iter().map(|b| b.seq).collect::<Vec<_>>(), vec![3, 6]);
    assert!(bad[1].error.contains("invalid"), "{}", bad[1].error);
    // Read on into the same columns, as a live batch fills.
    let next = columns.seqs.last().unwrap() + 1;
    assert!(s.read_columns(next, 100, &mut columns).unwrap().is_empty());
    assert_eq!(s.losses().unwrap().get("corrupt"), Some(&2));

    let (readings, bad) = s.read_from(0, 100).unwrap();
    assert!(bad.is_empty());
    assert_eq!(readings.len(), 38);
    let seqs: Vec<u64> = readings.iter().map(|r| r.0).collect();
    assert_eq!(columns.seqs, seqs);
    let batch = columns.readings.to_batch("d", 0, columns.len());
    for ((_, want), got) in readings.iter().zip(&batch.readings) {
        assert_eq!(row::encode(got), row::encode(want));
    }
    columns.truncate(5);
    assert_eq!((columns.seqs.len(), columns.readings.len()), (5, 5));
}
