//! The store's unit tests: seqs, the delivery ledger, renumbering, the
//! disk budget, migrations from every earlier schema.

use super::*;

pub(crate) fn reading(i: i64) -> Reading {
    Reading {
        sensor: format!("s{}", i % 3),
        ts_ms: 1_700_000_000_000 + i,
        lat: 52.0,
        lon: 13.0,
        flags: 0,
        values: vec![Value {
            quantity: "pm25".into(),
            value: i as f64,
        }],
    }
}

/// Publishes and acknowledges `first..=last`, as the uplink does.
fn sent_and_acked(s: &mut Store, first: u64, last: u64, now_ms: i64) -> Result<usize, BufferError> {
    s.mark_sent(first, last)?;
    s.ack_range(first, last, now_ms)
}

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

fn open(path: &Path) -> Store {
    Store::open(
        path,
        Options {
            acked_grace_ms: 0,
            ..Options::default()
        },
    )
    .unwrap()
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

fn delivery(pkid: u16, dup: bool, payload: &str) -> Delivery {
    Delivery::new(pkid, dup, "sensors/s1", payload.as_bytes())
}

fn msg(delivery: Delivery, readings: &[Reading]) -> Message<'_> {
    Message {
        delivery: Some(delivery),
        readings,
    }
}

#[test]
fn distinct_readings_of_one_sensor_and_second_are_all_stored() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("b.db"));
    // Three quantities on three topics at one `ts`, and a sensor
    // without a clock: same sensor, same millisecond.
    let mut rs = vec![reading(0), reading(0), reading(0)];
    for (i, r) in rs.iter_mut().enumerate() {
        r.values[0].quantity = ["pm25", "no2", "rh"][i].into();
    }
    let a = s.append(&rs).unwrap();
    assert_eq!((a.first, a.stored, a.redelivered), (1, 3, false));
    let (rows, _) = s.read_from(0, 10).unwrap();
    assert_eq!(rows.into_iter().map(|r| r.1).collect::<Vec<_>>(), rs);
}

#[test]
fn only_a_dup_delivery_of_a_committed_message_is_recognised() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = open(&dir.path().join("b.db"));
    let (r1, r2) = ([reading(1)], [reading(2)]);
    let first = delivery(7, false, "a");
    let done = s.append_groups(&[msg(first, &r1)]).unwrap();
    assert_eq!(done[0].first, 1);
    // The same payload again without DUP: the sensor sent it twice.
    let again = s
        .append_groups(&[msg(delivery(8, false, "a"), &r1)])
        .unwrap();
    assert_eq!((again[0].first, again[0].redelivered), (2, false));
    // DUP with the packet id and bytes of the first: a redelivery.
    let dup = s
        .append_groups(&[msg(delivery(7, true, "a"), &r1)])
        .unwrap();
    assert_eq!(
        dup[0],
        Appended {
            first: 1,
            stored: 1,
            redelivered: true
        }
    );
    // DUP whose first delivery never committed (the agent died first).
    let fresh = s
        .append_groups(&[msg(delivery(9, true, "b"), &r2)])
        .unwrap();
    assert_eq!((fresh[0].first, fresh[0].redelivered), (3, false));
    // DUP under a reused packet id with other bytes: a new message.
    let reused = s
        .append_groups(&[msg(delivery(7, true, "c"), &r2)])
        .unwrap();
    assert_eq!((reused[0].first, reused[0].redelivered), (4, false));
    // The ledger now names "c" under packet id 7, so "a" is new again.
    let old = s
        .append_groups(&[msg(delivery(7, true, "a"), &r1)])
        .unwrap();
    assert!(!old[0].redelivered);
    // A redelivery of a message committed in the same group commit.
    let both = s
        .append_groups(&[
            msg(delivery(10, false, "d"), &r1),
            msg(delivery(10, true, "d"), &r1),
        ])
        .unwrap();
    assert_eq!((both[0].stored, both[1].redelivered), (1, true));
    assert_eq!(s.depth().unwrap().readings, 6);
    assert_eq!(s.count("redelivered").unwrap(), 2);
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
fn published_rows_are_not_downsampled() {
    let dir = tempfile::tempdir().unwrap();
    let (mut s, _) = over_budget(dir.path(), 0, 60_000, "a", 1000);
    // The oldest batch went out; its fate is unknown.
    assert_eq!(s.mark_sent(1, 2000).unwrap(), 2000);
    let e = s.enforce_budget().unwrap();
    assert!(e.downsampled > 0 && e.dropped == 0, "{e:?}");
    let (rows, _) = s.read_from(1, 2000).unwrap();
    let raw_sent = rows.iter().filter(|(q, _)| *q <= 2000).count();
    assert_eq!(
        raw_sent, 2000,
        "published rows stay raw and keep their seqs"
    );
    assert!(rows[..2000]
        .iter()
        .all(|(_, r)| r.flags & FLAG_AGGREGATE == 0));
}

#[test]
fn a_version_2_buffer_is_read_and_keeps_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let rs: Vec<_> = (0..5).map(reading).collect();
    {
        // What the previous agent wrote: schema 2, wire-framed bodies.
        let conn = Connection::open(&path).unwrap();
        for sql in [SCHEMA, MIGRATE_2, INDEXES_2, IDENTITY_2] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 2).unwrap();
        for (i, r) in rs.iter().enumerate() {
            conn.execute(
                "INSERT INTO readings (seq, ts_ms, sensor, body) VALUES (?1, ?2, ?3, ?4)",
                params![i as i64 + 1, r.ts_ms, r.sensor, aeris_wire::encode(r)],
            )
            .unwrap();
        }
        conn.execute("UPDATE meta SET value = 6 WHERE key = 'next_seq'", [])
            .unwrap();
    }
    let mut s = open(&path);
    let (rows, bad) = s.read_from(0, 10).unwrap();
    assert!(bad.is_empty(), "{bad:?}");
    assert_eq!(rows.into_iter().map(|r| r.1).collect::<Vec<_>>(), rs);
    // The old identity index is gone: the same sensor and time again is
    // a new reading.
    assert_eq!(s.append(&[reading(1)]).unwrap().first, 6);
}

#[test]
fn a_version_3_buffer_keeps_its_sent_marks_and_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let rs: Vec<_> = (0..6).map(reading).collect();
    let d = delivery(42, false, "m");
    {
        // What the previous agent wrote: schema 3, a mark per published
        // row, a ledger row per packet id.
        let conn = Connection::open(&path).unwrap();
        for sql in [SCHEMA, MIGRATE_2, INDEXES_2, MIGRATE_3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        for (i, r) in rs.iter().enumerate() {
            // Seqs 1, 2 and 4, 5 were published; 3 and 6 were not.
            let sent = [0, 1, 3, 4].contains(&i).then_some(7i64);
            conn.execute(
                "INSERT INTO readings (seq, ts_ms, sensor, kind, fmt, sent_ms, body)
                 VALUES (?1, ?2, ?3, 0, ?4, ?5, ?6)",
                params![
                    i as i64 + 1,
                    r.ts_ms,
                    r.sensor,
                    ROW_FORMAT,
                    sent,
                    row::encode(r)
                ],
            )
            .unwrap();
        }
        conn.execute(
            "INSERT INTO deliveries (pkid, digest, first_seq, n) VALUES (42, ?1, 6, 1)",
            [&d.digest[..]],
        )
        .unwrap();
        conn.execute("UPDATE meta SET value = 7 WHERE key = 'next_seq'", [])
            .unwrap();
    }
    let mut s = open(&path);
    let ranges: Vec<(i64, i64)> = {
        let mut stmt = s
            .conn
            .prepare("SELECT first, last FROM sent ORDER BY first")
            .unwrap();
        let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        rows.collect::<Result<_, _>>().unwrap()
    };
    assert_eq!(ranges, vec![(1, 2), (4, 5)]);
    // Only the published rows take the ack.
    assert_eq!(s.ack_range(1, 6, 0).unwrap(), 4);
    let left: Vec<u64> = s.read_from(0, 10).unwrap().0.iter().map(|r| r.0).collect();
    assert_eq!(left, vec![3, 6]);
    // The broker redelivers the message the old agent committed last.
    let again = s
        .append_groups(&[msg(delivery(42, true, "m"), &rs[5..])])
        .unwrap();
    assert_eq!((again[0].first, again[0].redelivered), (6, true));
    assert_eq!(s.next_seq(), 7);
}

#[test]
fn the_delivery_log_is_trimmed_and_still_knows_the_newest_messages() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let mut s = open(&path);
    let r = [reading(1)];
    // Three times round every packet id, 512 messages per commit.
    let payloads: Vec<String> = (0..3 * 65_536).map(|i| format!("p{i}")).collect();
    for chunk in payloads.chunks(512).enumerate().map(|(c, ps)| {
        ps.iter()
            .enumerate()
            .map(|(i, p)| (((c * 512 + i) % 65_535 + 1) as u16, p))
            .collect::<Vec<_>>()
    }) {
        let ds: Vec<Delivery> = chunk
            .iter()
            .map(|(id, p)| delivery(*id, false, p))
            .collect();
        let msgs: Vec<Message> = ds.iter().map(|d| msg(*d, &r)).collect();
        s.append_groups(&msgs).unwrap();
    }
    let entries: i64 = s
        .conn
        .query_row("SELECT sum(n) FROM delivery_log", [], |r| r.get(0))
        .unwrap();
    assert!(
        (LOG_KEEP as i64..=2 * LOG_KEEP as i64).contains(&entries),
        "{entries} entries kept"
    );
    // After a reopen: the last message under a packet id is recognised,
    // an older one under the same id is new.
    drop(s);
    let mut s = open(&path);
    let last = 3 * 65_536 - 1;
    let id = (last % 65_535 + 1) as u16;
    let known = s
        .append_groups(&[msg(delivery(id, true, &payloads[last]), &r)])
        .unwrap();
    assert!(known[0].redelivered);
    assert_eq!(known[0].first, last as u64 + 1);
    let older = s
        .append_groups(&[msg(delivery(id, true, &payloads[last - 65_535]), &r)])
        .unwrap();
    assert!(!older[0].redelivered);
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

fn series(sensor: &str, n: i64, step_ms: i64) -> Vec<Reading> {
    (0..n)
        .map(|i| Reading {
            sensor: sensor.into(),
            ts_ms: 1_700_000_000_000 + i * step_ms,
            lat: 1.0,
            lon: 2.0,
            flags: if i == 300 { 1 << 1 } else { 0 },
            values: vec![
                Value {
                    quantity: "pm25".into(),
                    value: i as f64,
                },
                Value {
                    quantity: "pm10".into(),
                    value: 2.0 * i as f64,
                },
            ],
        })
        .collect()
}

/// A store with a 1 MiB budget holding 20,000 readings of `sensor`,
/// `step_ms` apart (about three times the budget), appended 1,000 at a
/// time; and the readings.
fn over_budget(
    dir: &Path,
    acked_grace_ms: i64,
    default_window_ms: i64,
    sensor: &str,
    step_ms: i64,
) -> (Store, Vec<Reading>) {
    let mut s = Store::open(
        &dir.join("b.db"),
        Options {
            max_bytes: 1 << 20,
            acked_grace_ms,
            window_ms: HashMap::new(),
            default_window_ms,
        },
    )
    .unwrap();
    let all = series(sensor, 20_000, step_ms);
    for chunk in all.chunks(1000) {
        s.append(chunk).unwrap();
    }
    (s, all)
}

#[test]
fn over_budget_the_oldest_raw_readings_become_aggregates_then_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    // 20,000 readings one second apart: ~3 MB, three times the budget.
    let (mut s, _) = over_budget(dir.path(), 3_600_000, 60_000, "a", 1000);
    // Acked readings go first.
    sent_and_acked(&mut s, 1, 100, 0).unwrap();
    let e = s.enforce_budget().unwrap();
    assert_eq!(e.acked, 100);
    assert!(e.downsampled > 0 && e.aggregates > 0, "{e:?}");
    assert!(s.used_bytes().unwrap() <= 1 << 20);
    let losses = s.losses().unwrap();
    assert_eq!(losses.get("downsampled"), Some(&e.downsampled));
    // Every raw reading is accounted for: still raw, inside an
    // aggregate's `.n`, or counted as dropped.
    let (rows, _) = s.read_from(0, 100_000).unwrap();
    let mut raw = 0u64;
    let mut in_aggregates = 0f64;
    for (_, r) in &rows {
        if r.flags & FLAG_AGGREGATE != 0 {
            let n = r.values.iter().find(|v| v.quantity == "pm25.n").unwrap();
            in_aggregates += n.value;
            assert_eq!(r.ts_ms % 60_000, 0, "aggregates start at their window");
            let mean = r.values.iter().find(|v| v.quantity == "pm25").unwrap();
            let min = r.values.iter().find(|v| v.quantity == "pm25.min").unwrap();
            let max = r.values.iter().find(|v| v.quantity == "pm25.max").unwrap();
            assert_eq!(mean.value, (min.value + max.value) / 2.0);
        } else {
            raw += 1;
        }
    }
    let dropped = losses.get("dropped").copied().unwrap_or(0);
    assert_eq!(dropped, e.dropped);
    assert_eq!(
        raw + in_aggregates as u64 + 100,
        20_000,
        "raw {raw} + aggregated {in_aggregates} + acked 100"
    );
    assert_eq!(dropped, 0, "downsampling alone fits this budget");
    // The flag of reading 300 survives in its aggregate.
    assert!(rows.iter().any(|(_, r)| r.flags == FLAG_AGGREGATE | 1 << 1));
    // Seqs of aggregates are new, never reused.
    let max_seq = rows.iter().map(|r| r.0).max().unwrap();
    assert_eq!(max_seq + 1, s.next_seq());
    assert!(s.next_seq() > 20_001);
}

#[test]
fn readings_that_share_no_window_are_dropped_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    // One reading per window: nothing to aggregate.
    let (mut s, all) = over_budget(dir.path(), 0, 1000, "b", 5000);
    let e = s.enforce_budget().unwrap();
    assert_eq!(e.downsampled, 0);
    assert!(e.dropped > 0);
    assert!(s.used_bytes().unwrap() <= 1 << 20);
    let held = s.depth().unwrap().readings;
    assert_eq!(held + e.dropped, 20_000);
    assert_eq!(s.losses().unwrap().get("dropped"), Some(&e.dropped));
    // The newest survive.
    let (rows, _) = s.read_from(0, 1_000_000).unwrap();
    assert_eq!(rows.last().unwrap().1.ts_ms, all[19_999].ts_ms);
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

#[test]
fn a_version_1_buffer_is_migrated_with_every_row() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    {
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch(SCHEMA).unwrap();
        conn.pragma_update(None, "user_version", 1).unwrap();
        for (seq, r) in [(1, reading(1)), (2, reading(2)), (3, reading(1))] {
            conn.execute(
                "INSERT INTO readings (seq, ts_ms, body) VALUES (?1, ?2, ?3)",
                params![seq, r.ts_ms, aeris_wire::encode(&r)],
            )
            .unwrap();
        }
        conn.execute("UPDATE meta SET value = 4 WHERE key = 'next_seq'", [])
            .unwrap();
    }
    let mut s = open(&path);
    let seqs: Vec<u64> = s.read_from(0, 10).unwrap().0.iter().map(|r| r.0).collect();
    assert_eq!(seqs, vec![1, 2, 3]);
    assert_eq!(s.next_seq(), 4);
    assert_eq!(s.append(&[reading(2)]).unwrap().stored, 1);
}

#[test]
fn a_file_that_is_not_a_database_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    std::fs::write(&path, vec![0x42u8; 8192]).unwrap();
    match Store::open(&path, Options::default()) {
        Err(BufferError::Corrupt(_)) => {}
        Err(e) => panic!("expected Corrupt, got {e}"),
        Ok(_) => panic!("opened garbage as a buffer"),
    }
}

/// The running totals that `depth` reads equal a count of the rows after
/// every kind of change, across reopening and across a migration.
#[test]
fn the_running_totals_match_the_rows_after_every_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let options = Options {
        max_bytes: 96 << 10,
        acked_grace_ms: 1000,
        window_ms: HashMap::new(),
        default_window_ms: 60_000,
    };
    let mut s = Store::open(&path, options.clone()).unwrap();
    let mut rng = fastrand::Rng::with_seed(13);
    let mut i = 0i64;
    for step in 0..600 {
        let next = s.next_seq();
        let any = |rng: &mut fastrand::Rng| rng.u64(1..next.max(2) + 5);
        let what = rng.u32(0..100);
        match what {
            0..=39 => {
                let n = rng.usize(1..40);
                let rs: Vec<Reading> = (0..n)
                    .map(|_| {
                        i += 1;
                        let mut r = reading(i * 700);
                        r.values.truncate(rng.usize(1..2));
                        r
                    })
                    .collect();
                s.append(&rs).unwrap();
            }
            40..=54 => {
                let (a, b) = (any(&mut rng), any(&mut rng));
                s.mark_sent(a.min(b), a.max(b)).unwrap();
            }
            55..=69 => {
                let (a, b) = (any(&mut rng), any(&mut rng));
                s.ack_range(a.min(b), a.max(b), step * 100).unwrap();
            }
            70..=74 => {
                s.purge_acked(step * 100).unwrap();
            }
            75..=79 => {
                s.unack_from(any(&mut rng)).unwrap();
            }
            80..=83 => {
                let a = any(&mut rng);
                s.renumber(a, a + rng.u64(0..30), next + rng.u64(0..3))
                    .unwrap();
            }
            84..=89 => {
                s.enforce_budget().unwrap();
            }
            90..=94 => {
                s.read_from(any(&mut rng), rng.usize(1..100)).unwrap();
            }
            95..=97 => {
                // A row that no longer decodes (same length).
                s.conn
                    .execute(
                        "UPDATE readings SET fmt = 99 WHERE seq = ?1",
                        [any(&mut rng) as i64],
                    )
                    .unwrap();
            }
            _ => {
                drop(s);
                s = Store::open(&path, options.clone()).unwrap();
            }
        }
        assert_eq!(
            s.depth().unwrap(),
            s.depth_scanned().unwrap(),
            "after step {step} ({what})"
        );
    }
    let losses = s.losses().unwrap();
    assert!(losses.contains_key("corrupt"), "{losses:?}");
    assert!(
        losses.contains_key("downsampled") || losses.contains_key("dropped"),
        "{losses:?}"
    );
    // A file of the previous schema gets its totals counted on open.
    s.conn
        .execute_batch(
            "DELETE FROM meta WHERE key IN ('unsent_rows', 'unsent_bytes', 'acked_rows')",
        )
        .unwrap();
    s.conn.pragma_update(None, "user_version", 4).unwrap();
    let want = s.depth_scanned().unwrap();
    drop(s);
    let s = Store::open(&path, options).unwrap();
    assert_eq!(s.depth().unwrap(), want);
    assert!(want.readings > 0 && want.acked_held > 0, "{want:?}");
}
