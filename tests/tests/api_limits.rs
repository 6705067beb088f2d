//! Issue 14 (5): the HTTP API's defaults and limits against a real broker,
//! PostGIS database and gateway process: `/api/readings` without a time
//! range, the caps on `/api/live` event streams, and the event stream's
//! query-string token.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use aeris_tests::cloud::Cloud;
use aeris_tests::device::{reading, FakeDevice};
use aeris_tests::http::{get, get_json, metric, request};
use aeris_tests::{now_ms, wait_for};
use aeris_wire::Batch;
use sha2::{Digest, Sha256};

const DEV: &str = "dev-limits";
const ALICE: &str = "alice-read-token";
const BOB: &str = "bob-read-token";
const CAROL: &str = "carol-read-token";

fn sha(t: &str) -> String {
    hex::encode(Sha256::digest(t.as_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readings_without_a_time_range_answer_the_last_day_on_postgis() {
    let cloud = Cloud::start(false).await;
    let port = cloud.gateway.api_port;
    let dev = FakeDevice::connect(cloud.broker.port, DEV).await;
    let now = now_ms();
    let batch = Batch {
        device: DEV.into(),
        first_seq: 1,
        readings: vec![
            reading("s-1", now - 3 * 86_400_000, 48.0, 11.0, 1.0),
            reading("s-1", now - 2 * 3_600_000, 48.0, 11.0, 2.0),
            reading("s-1", now - 60_000, 48.0, 11.0, 3.0),
        ],
    };
    dev.send(&batch).await;
    assert!(
        dev.wait_acked(3, Duration::from_secs(20)).await,
        "{}",
        cloud.logs()
    );

    // No from/to: the last 24 hours, oldest first.
    let path = format!("/api/readings?device={DEV}&sensor=s-1");
    let (code, body) = get(port, &path).unwrap();
    assert_eq!(code, 200, "{body}\n{}", cloud.logs());
    let rows: serde_json::Value = serde_json::from_str(&body).unwrap();
    let seqs: Vec<u64> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, vec![2, 3], "{body}");
    // Only `from`: up to now. Only `to`: the day before it.
    let from = now - 4 * 86_400_000;
    let all = get_json(port, &format!("{path}&from={from}"));
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");
    let to = now - 2 * 86_400_000;
    let old = get_json(port, &format!("{path}&to={to}"));
    assert_eq!(old.as_array().unwrap().len(), 1, "{old}");
    // The widest range both sinks represent works; beyond it is a 400,
    // not a database error.
    let (code, body) = get(
        port,
        &format!("{path}&from=-62135596800000&to=9999-12-31T23:59:59Z"),
    )
    .unwrap();
    assert_eq!(code, 200, "{body}");
    for bad in [
        "from=-9223372036854775808",
        "to=9223372036854775807",
        "from=2000&to=1000",
    ] {
        let (code, body) = get(port, &format!("{path}&{bad}")).unwrap();
        assert_eq!(code, 400, "{bad}: {body}");
    }
}

/// An open `/api/live` stream: the status code, and the socket while it
/// stays open (dropping it is the client going away).
struct Stream {
    code: u16,
    sock: BufReader<TcpStream>,
}

fn open_stream(port: u16, token: Option<&str>, query_token: bool) -> Stream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let (path, auth) = match (token, query_token) {
        (Some(t), true) => (format!("/api/live?access_token={t}"), String::new()),
        (Some(t), false) => ("/api/live".into(), format!("Authorization: Bearer {t}\r\n")),
        (None, _) => ("/api/live".into(), String::new()),
    };
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n{auth}\r\n"
    )
    .unwrap();
    let mut sock = BufReader::new(s);
    let mut status = String::new();
    sock.read_line(&mut status).unwrap();
    let code = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    // The headers, so the response has started.
    loop {
        let mut line = String::new();
        if sock.read_line(&mut line).unwrap_or(0) == 0 || line.trim().is_empty() {
            break;
        }
    }
    Stream { code, sock }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_streams_are_capped_per_client_and_in_total_and_freed_on_disconnect() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    let tokens: String = [("alice", ALICE), ("bob", BOB), ("carol", CAROL)]
        .iter()
        .map(|(name, t)| {
            format!(
                "[[api.auth.tokens]]\nname = \"{name}\"\nsha256 = \"{}\"\nscopes = [\"read\"]\n",
                sha(t)
            )
        })
        .collect();
    std::fs::write(
        &config,
        format!("[api.live]\nmax_streams = 3\nmax_streams_per_client = 2\nidle_timeout = \"5m\"\n\n{tokens}"),
    )
    .unwrap();
    let cloud = Cloud::start_with(
        false,
        &[("AERIS_GATEWAY_CONFIG", config.display().to_string())],
    )
    .await;
    let port = cloud.gateway.api_port;
    let open = || metric(port, "aeris_gateway_live_streams");
    let refused = |reason: &str| {
        metric(
            port,
            &format!("aeris_gateway_live_streams_refused_total{{reason=\"{reason}\"}}"),
        )
    };

    tokio::task::block_in_place(|| {
        // No token, or the token in the query string of another route: 401.
        assert_eq!(open_stream(port, None, false).code, 401);
        assert_eq!(
            get(port, &format!("/api/sensors?access_token={ALICE}"))
                .unwrap()
                .0,
            401,
            "the query token is for the event stream only"
        );
        // Alice: two streams, the header or the query string; a third is refused.
        let a1 = open_stream(port, Some(ALICE), false);
        let a2 = open_stream(port, Some(ALICE), true);
        assert_eq!((a1.code, a2.code), (200, 200));
        let a3 = open_stream(port, Some(ALICE), false);
        assert_eq!(a3.code, 503, "per-client cap");
        assert_eq!(refused("per_client"), 1.0);
        // Bob takes the last slot; Carol finds none.
        let b1 = open_stream(port, Some(BOB), false);
        assert_eq!(b1.code, 200);
        assert_eq!(open(), 3.0);
        assert_eq!(open_stream(port, Some(CAROL), true).code, 503, "total cap");
        assert_eq!(refused("total"), 1.0);

        // Alice closes a stream: its slot is free again, for anyone.
        drop(a1);
        let start = std::time::Instant::now();
        while open() != 2.0 {
            assert!(start.elapsed() < Duration::from_secs(10), "slot not freed");
            std::thread::sleep(Duration::from_millis(100));
        }
        let c1 = open_stream(port, Some(CAROL), false);
        assert_eq!(c1.code, 200, "a freed slot is taken");
        assert_eq!(open(), 3.0);
        drop((a2, b1, c1));
        let start = std::time::Instant::now();
        while open() != 0.0 {
            assert!(start.elapsed() < Duration::from_secs(10), "slots not freed");
            std::thread::sleep(Duration::from_millis(100));
        }
    });

    // A stream opened with the query token receives readings.
    let mut s = tokio::task::block_in_place(|| open_stream(port, Some(BOB), true));
    assert_eq!(s.code, 200);
    let dev = FakeDevice::connect(cloud.broker.port, DEV).await;
    dev.send(&Batch {
        device: DEV.into(),
        first_seq: 1,
        readings: vec![reading("s-live", now_ms() - 1_000, 48.0, 11.0, 7.0)],
    })
    .await;
    assert!(dev.wait_acked(1, Duration::from_secs(20)).await);
    let event = tokio::task::block_in_place(|| {
        let mut line = String::new();
        loop {
            line.clear();
            if s.sock.read_line(&mut line).unwrap_or(0) == 0 || line.contains("s-live") {
                return line;
            }
        }
    });
    assert!(event.contains("\"dev-limits/s-live\""), "{event}");
    wait_for("metrics", Duration::from_secs(5), || async {
        (open() == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        request(port, "GET", "/api/sensors", Some(BOB)).unwrap().0,
        200
    );
}
