//! The README's first command: the demo on embedded defaults.

use std::process::Command;

use aeris_tests::process::binary;

#[test]
fn demo_runs_the_whole_pipeline_and_reports_its_database() {
    let out = tempfile::tempdir().unwrap();
    let data = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/data");
    let run = Command::new(binary("aeris-demo"))
        .args([
            "--duration",
            "4s",
            "--speedup",
            "max",
            "--data",
            data,
            "--listen",
            "127.0.0.1:0",
            "--out",
        ])
        .arg(out.path())
        .output()
        .expect("run aeris-demo");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "demo failed: {stdout}\n{stderr}");

    // A progress line per second with the pipeline's counters.
    let progress = stdout
        .lines()
        .filter(|l| l.contains("| in ") && l.contains("acked"))
        .count();
    assert!(progress >= 3, "expected progress lines: {stdout}");
    assert!(stdout.contains("live map: http://127.0.0.1:"), "{stdout}");

    // It names the database and a query to look at it...
    let db = out.path().canonicalize().unwrap().join("cloud.db");
    assert!(
        stdout.contains(&format!("cloud database: {}", db.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("sqlite3 -header -column {} <<'SQL'", db.display())),
        "{stdout}"
    );

    // ...and the database holds exactly what the agent accepted, all acked.
    let summary = stdout
        .lines()
        .find(|l| l.contains("accepted by the agent"))
        .expect("summary line");
    let number_before = |word: &str| -> i64 {
        let words: Vec<&str> = summary.split_whitespace().collect();
        let i = words
            .iter()
            .position(|w| *w == word)
            .unwrap_or_else(|| panic!("{word} in {summary}"));
        words[i - 1].parse().unwrap()
    };
    let accepted = number_before("accepted");
    let stored = number_before("stored");
    assert_eq!(accepted, stored, "{summary}");
    assert!(accepted > 1000, "{summary}");
    let conn = rusqlite::Connection::open(&db).unwrap();
    let (rows, sensors, dups): (i64, i64, i64) = conn
        .query_row(
            "SELECT count(*), count(DISTINCT sensor_id),
                    count(*) - (SELECT count(*) FROM (SELECT DISTINCT sensor_id, ts_ms FROM readings))
             FROM readings",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!(rows, accepted);
    assert_eq!(dups, 0, "a reading stored twice");
    assert!(sensors >= 2, "both data sets replayed: {sensors} sensors");
    // The board's models ran: nowcasts are stored with their model version.
    let nowcasts: i64 = conn
        .query_row(
            "SELECT count(*) FROM readings WHERE json_extract(measurements, '$.\"model:pm25_nowcast@1.0.0\"') IS NOT NULL",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(nowcasts > 100, "{nowcasts} nowcasts stored");
    // Beijing readings carry their real position.
    let (lat, lon): (f64, f64) = conn
        .query_row(
            "SELECT lat, lon FROM readings WHERE sensor_id = 'CN-beijing-us-embassy' LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!((lat, lon), (39.954, 116.468));
}
