//! Issue 14 (2): a few hundred bytes of columnar batch must not take the
//! gateway's memory. A real gateway process gets the old bomb (refused,
//! counted as `too_large`) and then the worst batches the format still
//! allows (stored and acked); its peak RSS stays under a stated bound.

use std::time::Duration;

use aeris_tests::cloud::Cloud;
use aeris_tests::device::FakeDevice;
use aeris_tests::process::peak_rss;
use aeris_tests::wait_for;
use aeris_wire::{columnar, Batch, Reading, Topics, Value};

const DEV: &str = "dev-bomb";
/// Peak RSS the gateway (debug build) may reach after refusing the five
/// bombs: what it took at start, plus little. Before the cap the five
/// bombs (2,045 bytes) took it from 24 MB to 1,071 MB.
const BOMBS_RSS_BOUND: u64 = 64 << 20;
/// Peak RSS after the worst batch the cap allows, sent five times one
/// after the other (measured: 80 MB): held decoded (at most 16 MiB),
/// cloned by the writer for the sink, and encoded for COPY. Batches that
/// arrive together are held together: the writer's queue counts batches,
/// not bytes (five at once measured 190 to 409 MB).
const PEAK_RSS_BOUND: u64 = 128 << 20;

/// `readings` readings of one sensor, each with `values` values named by
/// 128-byte quantity names, all alike: the dictionaries and zstd make it
/// a few hundred bytes on the wire.
fn heavy(first_seq: u64, readings: usize, values: usize) -> Batch {
    let names: Vec<String> = (0..values).map(|i| format!("{i:0>128}")).collect();
    Batch {
        device: DEV.into(),
        first_seq,
        readings: (0..readings)
            .map(|i| Reading {
                sensor: "s".repeat(128),
                ts_ms: 1_700_000_000_000 + i as i64,
                lat: 48.0,
                lon: 11.0,
                flags: 0,
                values: names
                    .iter()
                    .map(|q| Value {
                        quantity: q.clone(),
                        value: 1.0,
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The most values per reading of 10,000-reading batches with 128-byte
/// names that the cap lets through.
fn worst_allowed(first_seq: u64) -> Batch {
    let mut values = 1;
    while columnar::decoded_bytes(&heavy(1, 10_000, values + 1)) <= columnar::MAX_DECODED_BYTES {
        values += 1;
    }
    heavy(first_seq, 10_000, values)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_decode_bomb_cannot_blow_up_the_gateways_memory() {
    let cloud = Cloud::start(false).await;
    let pid = cloud.gateway.proc.pid().expect("gateway runs");
    let port = cloud.gateway.api_port;
    let dev = FakeDevice::connect(cloud.broker.port, DEV).await;
    let topic = Topics::default().batch(DEV);
    let before = peak_rss(pid).unwrap_or(0);

    // The bomb of the issue: 10,000 readings x 64 values, 128-byte names.
    let bomb = columnar::encode(&heavy(1, 10_000, 64));
    assert!(bomb.len() < 1_000, "bomb is {} bytes", bomb.len());
    for _ in 0..5 {
        dev.publish(topic.clone(), bomb.clone()).await;
    }
    wait_for("five refused bombs", Duration::from_secs(60), || async {
        let n = aeris_tests::http::metric(
            port,
            "aeris_gateway_messages_rejected_total{reason=\"too_large\"}",
        );
        (n >= 5.0).then_some(())
    })
    .await;
    let after_bombs = peak_rss(pid).expect("VmHWM");
    assert!(
        after_bombs < BOMBS_RSS_BOUND,
        "gateway peak RSS {after_bombs} B after refusing the bombs is over {BOMBS_RSS_BOUND} B"
    );
    assert_eq!(cloud.rows(DEV).await, 0);

    // The worst the format still allows, five times, one after the other:
    // stored and acked.
    let mut wire_bytes = 0;
    for k in 0..5u64 {
        let b = worst_allowed(1 + k * 10_000);
        let last_seq = b.last_seq().expect("non-empty");
        let payload = columnar::encode(&b);
        wire_bytes += payload.len();
        dev.publish(topic.clone(), payload).await;
        assert!(
            dev.wait_acked(last_seq, Duration::from_secs(120)).await,
            "{}",
            cloud.logs()
        );
    }
    assert_eq!(cloud.rows(DEV).await, 50_000);
    let peak = peak_rss(pid).expect("VmHWM");
    eprintln!(
        "gateway peak RSS: {:.1} MB at start, {:.1} MB after 5 refused bombs ({} B each), {:.1} MB after 5 worst allowed batches ({wire_bytes} B in all)",
        before as f64 / 1e6,
        after_bombs as f64 / 1e6,
        bomb.len(),
        peak as f64 / 1e6,
    );
    assert!(
        peak < PEAK_RSS_BOUND,
        "gateway peak RSS {peak} B is over {PEAK_RSS_BOUND} B"
    );
}
