//! The live map in headless Chromium: markers for the test's sensors appear,
//! coloured by AQI, and change colour when new readings arrive through the
//! server-sent events; the panel lists each device's data debt. Leaves a
//! screenshot in the target folder.

use std::time::Duration;

use aeris_tests::browser::Browser;
use aeris_tests::cloud::Cloud;
use aeris_tests::device::{reading, status, FakeDevice};
use aeris_tests::now_ms;
use aeris_wire::Batch;

const DEV: &str = "dev-map";
const GOOD: &str = "#00e400";
const VERY_UNHEALTHY: &str = "#8f3f97";
const SENSORS: [(&str, f64, f64); 3] = [
    ("north", 52.55, 13.40),
    ("centre", 52.52, 13.38),
    ("east", 52.51, 13.46),
];

fn batch(first_seq: u64, ts: i64, pm25: f64) -> Batch {
    Batch {
        device: DEV.into(),
        first_seq,
        readings: SENSORS
            .iter()
            .map(|(s, lat, lon)| reading(s, ts, *lat, *lon, pm25))
            .collect(),
    }
}

/// `{sensor id: fill colour}` of the markers drawn in the page's SVG.
const FILLS: &str = "Object.fromEntries(Array.from(document.querySelectorAll('path.aeris-sensor'))
    .map(p => [p.getAttribute('data-sensor'), p.getAttribute('fill')]))";

fn all_filled(v: &serde_json::Value, colour: &str) -> bool {
    v.as_object()
        .is_some_and(|m| m.len() == SENSORS.len() && m.values().all(|c| c == colour))
}

/// The panel's device list: `[device, queued, oldest unsent, config]` per row.
const DEVICE_ROWS: &str = "Array.from(document.querySelectorAll('#devices tr[data-device]'))
    .map(r => Array.from(r.cells).map(c => c.textContent))";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_shows_sensors_by_aqi_and_recolours_them_live() {
    let cloud = Cloud::start(true).await;
    let dev = FakeDevice::connect(cloud.broker.port, DEV).await;
    let t = now_ms() - 60_000;
    dev.send(&batch(1, t, 4.0)).await;
    // 42 readings in debt, the oldest unsent for a minute (`status`).
    dev.send_status(&status(DEV, 45, 42)).await;
    assert!(
        dev.wait_acked(3, Duration::from_secs(20)).await,
        "{}",
        cloud.logs()
    );
    // The live view is written just after the commit.
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Issue 18: a desired configuration the device never applied.
    cloud
        .db
        .client()
        .await
        .execute(
            "INSERT INTO config_desired (scope, name, fragment, set_by)
             VALUES ('device', $1, '{}', 'map test')",
            &[&DEV],
        )
        .await
        .unwrap();

    let url = format!("http://127.0.0.1:{}/", cloud.gateway.api_port);
    tokio::task::block_in_place(|| {
        let mut browser = Browser::open(&url);
        let fills = browser.wait_for("three green markers", FILLS, Duration::from_secs(20), |v| {
            all_filled(v, GOOD)
        });
        assert!(fills.get("dev-map/centre").is_some(), "{fills}");
        // Issue 17 (5): the device's data debt in the panel and the popups.
        let rows = browser.wait_for(
            "the device's debt in the panel",
            DEVICE_ROWS,
            Duration::from_secs(20),
            |v| v.as_array().is_some_and(|a| a.len() == 1),
        );
        assert_eq!(rows[0][0], DEV, "{rows}");
        assert_eq!(rows[0][1], "42", "{rows}");
        assert_eq!(rows[0][3], "pending –/1", "not converged: {rows}");
        assert!(
            rows[0][2].as_str().is_some_and(|a| a.ends_with(" s")),
            "{rows}"
        );
        let popup = browser.eval("window.aerisMarkers['dev-map/centre'].getPopup().getContent()");
        assert!(
            popup.as_str().is_some_and(|p| p.contains("queued 42")),
            "{popup}"
        );
        // The page subscribed to the live feed before the new readings.
        browser.wait_for(
            "the event stream to open",
            "window.aerisLive === true",
            Duration::from_secs(10),
            |v| v == true,
        );
        let rt = tokio::runtime::Handle::current();
        rt.block_on(async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            dev.send(&batch(4, t + 30_000, 180.0)).await;
            assert!(dev.wait_acked(6, Duration::from_secs(20)).await);
        });
        browser.wait_for(
            "markers turning purple",
            FILLS,
            Duration::from_secs(20),
            |v| all_filled(v, VERY_UNHEALTHY),
        );
        let updates = browser.eval("window.aerisUpdates");
        assert!(
            updates.as_u64().unwrap_or(0) >= 3,
            "live updates: {updates}"
        );
        let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("aeris-map.png");
        browser.screenshot(&shot);
        let size = std::fs::metadata(&shot).map(|m| m.len()).unwrap_or(0);
        assert!(
            size > 2_000,
            "screenshot {} is {size} bytes",
            shot.display()
        );
        eprintln!("map screenshot: {}", shot.display());

        // A sensor name is the device's text: the marker's label shows it
        // as text, never as markup.
        let hostile = "<img src=x id=aeris-injected>";
        rt.block_on(async {
            let batch = Batch {
                device: DEV.into(),
                first_seq: 7,
                readings: vec![reading(hostile, t + 60_000, 52.52, 13.41, 8.0)],
            };
            dev.send(&batch).await;
            assert!(dev.wait_acked(7, Duration::from_secs(20)).await);
        });
        let label = browser.wait_for(
            "the hostile sensor's label",
            &format!(
                "(window.aerisMarkers['{DEV}/{hostile}'] || null) && \
                 window.aerisMarkers['{DEV}/{hostile}'].getTooltip().getElement().textContent"
            ),
            Duration::from_secs(20),
            |v| v.is_string(),
        );
        assert!(
            label.as_str().is_some_and(|l| l.contains(hostile)),
            "label: {label}"
        );
        assert_eq!(
            browser.eval("document.getElementById('aeris-injected') === null"),
            true,
            "the sensor name was inserted as HTML"
        );
    });
}

/// Issue 14 (5): with tokens configured the map page needs a read token.
/// Opened with `?token=`, it moves the token out of the address bar into
/// sessionStorage, sends it as a bearer token and on the event stream's
/// query string, and works as on an open gateway; without one it asks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_works_with_a_read_token() {
    const VIEWER: &str = "map-viewer-token";
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("gateway.toml");
    let sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(VIEWER.as_bytes()))
    };
    std::fs::write(
        &config,
        format!(
            "[[api.auth.tokens]]\nname = \"viewer\"\nsha256 = \"{sha}\"\nscopes = [\"read\"]\n"
        ),
    )
    .unwrap();
    let cloud = Cloud::start_with(
        false,
        &[("AERIS_GATEWAY_CONFIG", config.display().to_string())],
    )
    .await;
    let dev = FakeDevice::connect(cloud.broker.port, DEV).await;
    let t = now_ms() - 60_000;
    dev.send(&batch(1, t, 4.0)).await;
    assert!(
        dev.wait_acked(3, Duration::from_secs(20)).await,
        "{}",
        cloud.logs()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let base = format!("http://127.0.0.1:{}/", cloud.gateway.api_port);

    tokio::task::block_in_place(|| {
        // Without a token the page says so and shows the token field.
        let mut browser = Browser::open(&base);
        browser.wait_for(
            "the token request",
            "document.getElementById('status').textContent",
            Duration::from_secs(20),
            |v| v.as_str().is_some_and(|s| s.contains("needs a read token")),
        );
        assert_eq!(
            browser.eval("document.getElementById('token-form').hidden"),
            false
        );
        drop(browser);

        let mut browser = Browser::open(&format!("{base}?token={VIEWER}"));
        browser.wait_for("three green markers", FILLS, Duration::from_secs(20), |v| {
            all_filled(v, GOOD)
        });
        assert_eq!(browser.eval("location.search"), "", "token left in the URL");
        assert_eq!(
            browser.eval("sessionStorage.getItem('aeris-read-token')"),
            VIEWER
        );
        browser.wait_for(
            "the event stream to open",
            "window.aerisLive === true",
            Duration::from_secs(10),
            |v| v == true,
        );
        let rt = tokio::runtime::Handle::current();
        rt.block_on(async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            dev.send(&batch(4, t + 30_000, 180.0)).await;
            assert!(dev.wait_acked(6, Duration::from_secs(20)).await);
        });
        browser.wait_for(
            "markers turning purple",
            FILLS,
            Duration::from_secs(20),
            |v| all_filled(v, VERY_UNHEALTHY),
        );
    });
}
