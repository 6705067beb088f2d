//! Opening buffers of every earlier schema, and files that are not buffers.

use super::*;

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
