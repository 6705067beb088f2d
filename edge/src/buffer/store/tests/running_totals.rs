//! The running totals `depth` reads, against a count of the rows.

use super::*;

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
