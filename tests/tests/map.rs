//! The live map in headless Chromium (1280×800): country outlines from the
//! gateway's own Natural Earth copy (no tiles, no network), markers
//! coloured by the NowCast AQI of the hourly rollups (grey without one),
//! close markers clustered, a popup with the NowCast, its category and
//! pollutant and a chart of the hourly means; live readings recolour the
//! markers once the rollups follow them. The screenshot's pixels are
//! checked, and it is left in the target folder.

use std::time::Duration;

use aeris_tests::browser::Browser;
use aeris_tests::cloud::Cloud;
use aeris_tests::device::{reading, status, FakeDevice};
use aeris_tests::now_ms;
use aeris_wire::aqi::hourly::{hourly_means, Completeness, Sample, HOUR_MS};
use aeris_wire::aqi::nowcast::PM25_NOWCAST;
use aeris_wire::aqi::PM25;
use aeris_wire::Batch;
use serde_json::Value;

const DEV: &str = "dev-map";
/// Three sensors a few kilometres apart in Berlin (one cluster at the
/// zoom that shows Germany), and three cities.
const BERLIN: [(&str, f64, f64); 3] = [
    ("north", 52.55, 13.40),
    ("centre", 52.52, 13.38),
    ("east", 52.51, 13.46),
];
const HAMBURG: (&str, f64, f64) = ("hamburg", 53.55, 9.99);
const MUNICH: (&str, f64, f64) = ("munich", 48.14, 11.58);
/// Only the current hour: its NowCast is withheld (2 of 3 hours needed).
const COLOGNE: (&str, f64, f64) = ("cologne", 50.94, 6.96);

/// EPA's AQI colours (TAD, EPA-454/B-24-002), and the map's "no NowCast".
fn aqi_colour(aqi: Option<u32>) -> &'static str {
    match aqi {
        None => "#9e9e9e",
        Some(0..=50) => "#00e400",
        Some(51..=100) => "#ffff00",
        Some(101..=150) => "#ff7e00",
        Some(151..=200) => "#ff0000",
        Some(201..=300) => "#8f3f97",
        Some(_) => "#7e0023",
    }
}

fn rgb(hex: &str) -> [u8; 3] {
    let c = |i: usize| u8::from_str_radix(&hex[i..i + 2], 16).unwrap_or(0);
    [c(1), c(3), c(5)]
}

/// The NowCast AQI of the hour `hour` from one reading per hour (the
/// gateway runs with `rollups.sample_interval = 1h`), computed here with
/// the wire crate's functions from the test's own samples.
fn expected_aqi(samples: &[(i64, f64)], hour: i64) -> Option<u32> {
    let samples: Vec<Sample> = samples
        .iter()
        .map(|&(ts_ms, value)| Sample { ts_ms, value })
        .collect();
    let means = hourly_means(&samples, HOUR_MS, &Completeness::default());
    PM25_NOWCAST
        .nowcast_at(&means, hour)
        .and_then(|c| PM25.index(c))
}

/// `{sensor id: fill}` of the single markers drawn in the page's SVG.
const FILLS: &str = "Object.fromEntries(Array.from(document.querySelectorAll('path.aeris-sensor'))
    .map(p => [p.getAttribute('data-sensor'), p.getAttribute('fill')]))";
/// The clusters drawn: `[{members, colour, text}]`.
const CLUSTERS: &str = "Array.from(document.querySelectorAll('.aeris-cluster')).map(c => ({
    members: c.getAttribute('data-members'), text: c.textContent,
    colour: getComputedStyle(c.firstElementChild).backgroundColor }))";
/// The panel's device list: `[device, queued, oldest unsent, config]` per row.
const DEVICE_ROWS: &str = "Array.from(document.querySelectorAll('#devices tr[data-device]'))
    .map(r => Array.from(r.cells).map(c => c.textContent))";
/// The open popup's chart bars: `[[hour_ms, mean, fill]]`.
const BARS: &str = "Array.from(document.querySelectorAll('.leaflet-popup-content svg.aeris-chart rect.aeris-bar'))
    .map(b => [Number(b.getAttribute('data-hour')), Number(b.getAttribute('data-mean')), b.getAttribute('fill')])";

fn id(sensor: &str) -> String {
    format!("{DEV}/{sensor}")
}

fn css_rgb(hex: &str) -> String {
    let [r, g, b] = rgb(hex);
    format!("rgb({r}, {g}, {b})")
}

/// The screen rectangle of the first element matching `selector`.
fn rect(browser: &mut Browser, selector: &str) -> [f64; 4] {
    let v = browser.eval(&format!(
        "(() => {{ const r = document.querySelector({selector:?}).getBoundingClientRect();
                   return [r.x, r.y, r.width, r.height]; }})()"
    ));
    let n = |i: usize| v[i].as_f64().unwrap_or(0.0);
    [n(0), n(1), n(2), n(3)]
}

/// The gateway with rollups every second, one expected reading an hour.
async fn cloud(extra: &[(&str, String)]) -> Cloud {
    let mut env = vec![
        ("AERIS_ROLLUPS__EVERY", "1s".to_owned()),
        ("AERIS_ROLLUPS__SAMPLE_INTERVAL", "1h".to_owned()),
    ];
    env.extend(extra.iter().cloned());
    Cloud::start_with(true, &env).await
}

struct Sent {
    /// The current hour's beginning.
    hour: i64,
    /// `(ts, pm25)` per sensor, as sent.
    samples: std::collections::BTreeMap<&'static str, Vec<(i64, f64)>>,
    next_seq: u64,
}

impl Sent {
    /// Sends `(sensor, ts, pm25)` readings as one batch and waits for its ack.
    async fn send(&mut self, dev: &FakeDevice, rs: &[((&'static str, f64, f64), i64, f64)]) {
        let batch = Batch {
            device: DEV.into(),
            first_seq: self.next_seq,
            readings: rs
                .iter()
                .map(|((s, lat, lon), ts, v)| {
                    self.samples.entry(*s).or_default().push((*ts, *v));
                    reading(s, *ts, *lat, *lon, *v)
                })
                .collect(),
        };
        self.next_seq += rs.len() as u64;
        dev.send(&batch).await;
        assert!(
            dev.wait_acked(self.next_seq - 1, Duration::from_secs(20))
                .await
        );
    }

    fn aqi(&self, sensor: &str) -> Option<u32> {
        expected_aqi(&self.samples[sensor], self.hour)
    }
}

/// The last three hours and the current one: 4 µg/m³ in Berlin and
/// Munich, 40 in Hamburg; Cologne only now.
async fn history(dev: &FakeDevice) -> Sent {
    let hour = now_ms().div_euclid(HOUR_MS) * HOUR_MS;
    let mut sent = Sent {
        hour,
        samples: Default::default(),
        next_seq: 1,
    };
    for h in [3, 2, 1, 0] {
        let ts = hour - h * HOUR_MS;
        let mut rs: Vec<_> = BERLIN.iter().map(|s| (*s, ts, 4.0)).collect();
        rs.push((MUNICH, ts, 4.0));
        rs.push((HAMBURG, ts, 40.0));
        if h == 0 {
            rs.push((COLOGNE, ts, 4.0));
        }
        sent.send(dev, &rs).await;
    }
    sent
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn map_draws_outlines_clusters_and_nowcast_colours_and_follows_live_readings() {
    let cloud = cloud(&[]).await;
    let dev = FakeDevice::connect(cloud.broker.port, DEV).await;
    let mut sent = history(&dev).await;
    // 42 readings in debt, the oldest unsent for a minute (`status`).
    dev.send_status(&status(DEV, 45, 42)).await;
    // Issue 18: a desired configuration the device never applied.
    let db = cloud.db.client().await;
    db.execute(
        "INSERT INTO config_desired (scope, name, fragment, set_by)
         VALUES ('device', $1, '{}', 'map test')",
        &[&DEV],
    )
    .await
    .unwrap();
    let (green, orange) = (sent.aqi("munich"), sent.aqi("hamburg"));
    assert_eq!(aqi_colour(green), "#00e400", "{green:?}");
    assert_eq!(aqi_colour(orange), "#ff7e00", "{orange:?}");
    assert_eq!(sent.aqi("cologne"), None);

    let url = format!("http://127.0.0.1:{}/", cloud.gateway.api_port);
    let rt = tokio::runtime::Handle::current();
    tokio::task::block_in_place(|| {
        let mut browser = Browser::open(&url);
        let countries = browser.wait_for(
            "the country outlines",
            "window.aerisOutlines",
            Duration::from_secs(20),
            |v| v.as_u64().unwrap_or(0) > 200,
        );
        eprintln!("countries drawn: {countries}");
        // Under the tile pane: configured tiles cover the outlines.
        let z = browser.eval(
            "[aerisMap.getPane('aeris-outlines'), aerisMap.getPane('tilePane')]
               .map(p => Number(getComputedStyle(p).zIndex))",
        );
        let (outlines, tiles) = (
            z[0].as_f64().unwrap_or(f64::MAX),
            z[1].as_f64().unwrap_or(0.0),
        );
        assert!(outlines < tiles, "z-index outlines, tiles: {z}");
        let want = serde_json::json!({
            id("hamburg"): aqi_colour(orange),
            id("munich"): aqi_colour(green),
            id("cologne"): aqi_colour(None),
        });
        browser.wait_for(
            "single markers coloured by NowCast",
            FILLS,
            Duration::from_secs(30),
            |v| *v == want,
        );
        let berlin: Vec<String> = BERLIN.iter().map(|s| id(s.0)).collect();
        let clusters = browser.wait_for(
            "the Berlin cluster",
            CLUSTERS,
            Duration::from_secs(10),
            |v| v.as_array().is_some_and(|a| a.len() == 1),
        );
        let mut members: Vec<&str> = clusters[0]["members"]
            .as_str()
            .unwrap_or_default()
            .split(' ')
            .collect();
        members.sort_unstable();
        let mut want_members: Vec<&str> = berlin.iter().map(String::as_str).collect();
        want_members.sort_unstable();
        assert_eq!(members, want_members, "{clusters}");
        assert_eq!(clusters[0]["text"], "3", "{clusters}");
        assert_eq!(
            clusters[0]["colour"],
            css_rgb(aqi_colour(green)),
            "{clusters}"
        );
        // Issue 17 (5): the device's data debt in the panel.
        let rows = browser.wait_for(
            "the device's debt in the panel",
            DEVICE_ROWS,
            Duration::from_secs(20),
            |v| v.as_array().is_some_and(|a| a.len() == 1),
        );
        assert_eq!(rows[0][0], DEV, "{rows}");
        assert_eq!(rows[0][1], "42", "{rows}");
        assert_eq!(rows[0][3], "pending –/1", "not converged: {rows}");

        // Hamburg's popup: NowCast, category, pollutant, and the four
        // hourly means the rollups hold, as bars coloured by their AQI.
        assert_eq!(
            browser.eval(&format!("aerisOpen({:?})", id("hamburg"))),
            true
        );
        let bars = browser.wait_for("the popup chart", BARS, Duration::from_secs(10), |v| {
            v.as_array().is_some_and(|a| a.len() == 4)
        });
        let stored = rt.block_on(db.query(
            "SELECT (extract(epoch FROM hour) * 1000)::int8, mean, aqi FROM readings_hourly
             WHERE device_id = $1 AND sensor_id = 'hamburg' AND pollutant = 'pm25' ORDER BY hour",
            &[&DEV],
        ));
        let stored = stored.unwrap();
        assert_eq!(stored.len(), 4);
        for (bar, row) in bars.as_array().into_iter().flatten().zip(&stored) {
            assert_eq!(bar[0], row.get::<_, i64>(0), "{bars}");
            assert_eq!(bar[1], row.get::<_, f64>(1), "{bars}");
            let aqi = row.get::<_, Option<i32>>(2).map(|a| a as u32);
            assert_eq!(bar[2], aqi_colour(aqi), "{bars}");
        }
        let text = browser.eval("document.querySelector('.leaflet-popup-content').textContent");
        let text = text.as_str().unwrap_or_default();
        let aqi = orange.unwrap_or_default();
        for part in [
            "hamburg",
            &format!("NowCast AQI {aqi}"),
            "Unhealthy for Sensitive Groups",
            "PM2.5",
            "queued 42",
        ] {
            assert!(text.contains(part), "{part:?} not in the popup: {text}");
        }

        // Leaflet pans the map to show the whole popup (animated).
        browser.wait_for(
            "the popup inside the window",
            "(() => { const r = document.querySelector('.leaflet-popup').getBoundingClientRect();
                      return [r.top, r.bottom]; })()",
            Duration::from_secs(15),
            |v| {
                v[0].as_f64().is_some_and(|t| t >= 0.0) && v[1].as_f64().is_some_and(|b| b <= 800.0)
            },
        );
        std::thread::sleep(Duration::from_millis(500));
        let shot = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("aeris-map.png");
        let png = browser.screenshot(&shot);
        eprintln!("map screenshot: {}", shot.display());
        check_pixels(&mut browser, &png, &bars);

        // Live: Berlin and Munich jump to 300 µg/m³ in the current hour.
        browser.wait_for(
            "the event stream to open",
            "window.aerisLive === true",
            Duration::from_secs(10),
            |v| v == true,
        );
        rt.block_on(async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let ts = sent.hour + 1;
            let mut rs: Vec<_> = BERLIN.iter().map(|s| (*s, ts, 300.0)).collect();
            rs.push((MUNICH, ts, 300.0));
            sent.send(&dev, &rs).await;
        });
        let high = sent.aqi("munich");
        assert_ne!(aqi_colour(high), aqi_colour(green), "{high:?}");
        browser.wait_for(
            "Munich recoloured by its new NowCast",
            FILLS,
            Duration::from_secs(30),
            |v| v[id("munich")] == aqi_colour(high),
        );
        browser.wait_for(
            "the Berlin cluster recoloured",
            CLUSTERS,
            Duration::from_secs(30),
            |v| v[0]["colour"] == css_rgb(aqi_colour(high)),
        );
        let updates = browser.eval("window.aerisUpdates");
        assert!(
            updates.as_u64().unwrap_or(0) >= 4,
            "live updates: {updates}"
        );
        // A click on the cluster zooms in: it splits into its markers.
        browser.eval("(aerisMap.closePopup(), true)");
        browser.click_on(".aeris-cluster");
        browser.wait_for("Berlin's markers", FILLS, Duration::from_secs(10), |v| {
            berlin.iter().all(|b| v[b] == aqi_colour(high))
        });
        assert_eq!(browser.eval(CLUSTERS), serde_json::json!([]));

        // A sensor name is the device's text: shown as text, never markup.
        let hostile = "<img src=x id=aeris-injected>";
        rt.block_on(async {
            let batch = Batch {
                device: DEV.into(),
                first_seq: sent.next_seq,
                readings: vec![reading(hostile, sent.hour + 2, 52.52, 13.41, 8.0)],
            };
            dev.send(&batch).await;
            assert!(dev.wait_acked(sent.next_seq, Duration::from_secs(20)).await);
        });
        browser.wait_for(
            "the hostile sensor",
            &format!("aerisOpen({:?})", id(hostile)),
            Duration::from_secs(20),
            |v| v == true,
        );
        // (The popup it replaced fades out for 200 ms: the last one is new.)
        browser.wait_for(
            "the hostile sensor's popup",
            "Array.from(document.querySelectorAll('.leaflet-popup-content')).pop().textContent",
            Duration::from_secs(5),
            |v| v.as_str().is_some_and(|l| l.contains(hostile)),
        );
        assert_eq!(
            browser.eval("document.getElementById('aeris-injected') === null"),
            true,
            "the sensor name was inserted as HTML"
        );
    });
}

/// The screenshot shows land and sea (the outlines), the borders, the
/// green cluster, and the popup chart's bar of the current hour in its
/// AQI colour (Hamburg's: orange).
fn check_pixels(browser: &mut Browser, png: &[u8], bars: &Value) {
    const LAND: &str = "#f2efe6";
    const SEA: &str = "#b7d3ea";
    const BORDER: &str = "#6b7785";
    let whole = [0.0, 0.0, 1280.0, 800.0];
    let counts = browser.pixel_counts(png, whole, &[rgb(LAND), rgb(SEA), rgb(BORDER)], 6);
    eprintln!(
        "pixels: land {}, sea {}, border {}",
        counts[0], counts[1], counts[2]
    );
    let area = 1280 * 800;
    assert!(counts[0] > area / 5, "land pixels: {counts:?}");
    assert!(counts[1] > area / 50, "sea pixels: {counts:?}");
    assert!(counts[2] > 500, "border pixels: {counts:?}");
    let cluster = rect(browser, ".aeris-cluster");
    let green = browser.pixel_counts(png, cluster, &[rgb("#00e400")], 10)[0];
    assert!(
        green > 300,
        "green pixels in the cluster {cluster:?}: {green}"
    );
    let chart = rect(browser, ".leaflet-popup-content svg.aeris-chart");
    let last = bars
        .as_array()
        .and_then(|b| b.last())
        .cloned()
        .unwrap_or_default();
    let fill = last[2].as_str().unwrap_or("#000000");
    let in_bars = browser.pixel_counts(png, chart, &[rgb(fill)], 10)[0];
    assert!(
        in_bars > 1_000,
        "{fill} pixels in the chart {chart:?}: {in_bars}"
    );
}

/// Issue 14 (5): with tokens configured the map page needs a read token.
/// Opened with `?token=`, it moves the token out of the address bar into
/// sessionStorage, sends it as a bearer token (the sensors, the popup's
/// hours) and on the event stream's query string; without one it asks.
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
    let cloud = cloud(&[("AERIS_GATEWAY_CONFIG", config.display().to_string())]).await;
    let dev = FakeDevice::connect(cloud.broker.port, DEV).await;
    let mut sent = history(&dev).await;
    let base = format!("http://127.0.0.1:{}/", cloud.gateway.api_port);
    let green = aqi_colour(sent.aqi("munich"));

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
        browser.wait_for("Munich in green", FILLS, Duration::from_secs(30), |v| {
            v[id("munich")] == green
        });
        assert_eq!(browser.eval("location.search"), "", "token left in the URL");
        assert_eq!(
            browser.eval("sessionStorage.getItem('aeris-read-token')"),
            VIEWER
        );
        // A click on the marker opens its popup, whose chart is read
        // with the token.
        browser.click_on(&format!(
            "path.aeris-sensor[data-sensor={:?}]",
            id("munich")
        ));
        browser.wait_for("the popup chart", BARS, Duration::from_secs(10), |v| {
            v.as_array().is_some_and(|a| a.len() == 4)
        });
        browser.wait_for(
            "the event stream to open",
            "window.aerisLive === true",
            Duration::from_secs(10),
            |v| v == true,
        );
        let rt = tokio::runtime::Handle::current();
        rt.block_on(async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            sent.send(&dev, &[(MUNICH, sent.hour + 1, 300.0)]).await;
        });
        let high = aqi_colour(sent.aqi("munich"));
        browser.wait_for("Munich recoloured", FILLS, Duration::from_secs(30), |v| {
            v[id("munich")] == high
        });
    });
}
