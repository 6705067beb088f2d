//! The delivery ledger: redeliveries recognised, the log trimmed.

use super::*;

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
