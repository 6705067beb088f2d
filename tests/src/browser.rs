//! Headless Chromium (Debian `chromium`) driven over the DevTools protocol:
//! open a page, evaluate JavaScript, take a screenshot. Nothing is
//! downloaded; the browser runs with a fresh profile and no network
//! services of its own.

use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use tungstenite::stream::MaybeTlsStream;
use tungstenite::{Message, WebSocket};

pub struct Browser {
    child: Child,
    _profile: tempfile::TempDir,
    ws: WebSocket<MaybeTlsStream<TcpStream>>,
    next_id: u64,
}

fn binary() -> &'static str {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .unwrap_or("chromium")
}

impl Browser {
    /// Starts Chromium on `url` and attaches to its page.
    pub fn open(url: &str) -> Browser {
        let profile = tempfile::tempdir().expect("tempdir");
        let port = crate::free_port();
        let mut child = Command::new(binary())
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--window-size=1280,800",
            ])
            .arg(format!("--remote-debugging-port={port}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg(url)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot start chromium: install the Debian package `chromium` (scripts/test.sh does)");
        let start = Instant::now();
        let ws_url = loop {
            let found = crate::http::get(port, "/json/list")
                .ok()
                .and_then(|(_, body)| {
                    let targets: serde_json::Value = serde_json::from_str(&body).ok()?;
                    targets.as_array()?.iter().find_map(|t| {
                        (t["type"] == "page")
                            .then(|| t["webSocketDebuggerUrl"].as_str().map(String::from))?
                    })
                });
            if let Some(u) = found {
                break u;
            }
            if start.elapsed() > Duration::from_secs(30)
                || child.try_wait().ok().flatten().is_some()
            {
                let _ = child.kill();
                panic!("chromium's DevTools endpoint did not come up on port {port}");
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let (ws, _) = tungstenite::connect(ws_url.as_str()).expect("DevTools websocket");
        let mut browser = Browser {
            child,
            _profile: profile,
            ws,
            next_id: 1,
        };
        // The window size includes the headless browser's frame: fix the
        // page's viewport itself, so screenshots are 1280×800.
        browser.call(
            "Emulation.setDeviceMetricsOverride",
            serde_json::json!({ "width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": false }),
        );
        browser
    }

    /// Sends one DevTools command and returns its `result`.
    pub fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        let id = self.next_id;
        self.next_id += 1;
        let msg = serde_json::json!({ "id": id, "method": method, "params": params });
        self.ws
            .send(Message::text(msg.to_string()))
            .expect("DevTools send");
        loop {
            let m = self.ws.read().expect("DevTools read");
            let Ok(text) = m.to_text() else { continue };
            let Ok(v) = serde_json::from_str::<serde_json::Value>(text) else {
                continue;
            };
            if v["id"] == id {
                assert!(v.get("error").is_none(), "{method}: {v}");
                return v["result"].clone();
            }
        }
    }

    /// Evaluates a JavaScript expression in the page; its JSON value.
    pub fn eval(&mut self, expression: &str) -> serde_json::Value {
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": expression, "returnByValue": true }),
        );
        r["result"]["value"].clone()
    }

    /// Polls `expression` until `ok` accepts its value, or panics.
    pub fn wait_for(
        &mut self,
        what: &str,
        expression: &str,
        timeout: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let start = Instant::now();
        loop {
            let v = self.eval(expression);
            if ok(&v) {
                return v;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out waiting for {what}; last value {v}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// A left click at viewport position `(x, y)`, as a user's mouse.
    pub fn click(&mut self, x: f64, y: f64) {
        for kind in ["mouseMoved", "mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                serde_json::json!({ "type": kind, "x": x, "y": y, "button": "left", "clickCount": 1 }),
            );
        }
    }

    /// Clicks the centre of the first element matching the CSS `selector`.
    pub fn click_on(&mut self, selector: &str) {
        let r = self.eval(&format!(
            "(() => {{ const e = document.querySelector({selector:?}); if (!e) return null;
                       const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
        ));
        let (Some(x), Some(y)) = (r[0].as_f64(), r[1].as_f64()) else {
            panic!("nothing to click matches {selector}");
        };
        self.click(x, y);
    }

    /// Saves a PNG of the viewport and returns its bytes.
    pub fn screenshot(&mut self, path: &Path) -> Vec<u8> {
        let r = self.call(
            "Page.captureScreenshot",
            serde_json::json!({ "format": "png" }),
        );
        let png = base64::engine::general_purpose::STANDARD
            .decode(r["data"].as_str().unwrap_or_default())
            .expect("screenshot base64");
        std::fs::write(path, &png).expect("write screenshot");
        png
    }

    /// Counts the pixels of a PNG (a [`Browser::screenshot`]) within
    /// `[x, y, width, height]` whose colour is within `tolerance` per
    /// channel of each of `colours`. The browser decodes the image (a
    /// canvas in the page), so the test needs no image library.
    pub fn pixel_counts(
        &mut self,
        png: &[u8],
        rect: [f64; 4],
        colours: &[[u8; 3]],
        tolerance: u8,
    ) -> Vec<u64> {
        let data = base64::engine::general_purpose::STANDARD.encode(png);
        let script = format!(
            "new Promise((ok, fail) => {{
               const img = new Image();
               img.onerror = () => fail('png not decoded');
               img.onload = () => {{
                 const c = document.createElement('canvas');
                 c.width = img.width; c.height = img.height;
                 const g = c.getContext('2d');
                 g.drawImage(img, 0, 0);
                 const [x, y, w, h] = {rect:?}.map(Math.round);
                 const d = g.getImageData(x, y, Math.max(1, w), Math.max(1, h)).data;
                 const want = {colours:?};
                 const n = want.map(() => 0);
                 for (let i = 0; i < d.length; i += 4) {{
                   want.forEach((c, k) => {{
                     if (Math.abs(d[i] - c[0]) <= {tolerance} && Math.abs(d[i + 1] - c[1]) <= {tolerance}
                         && Math.abs(d[i + 2] - c[2]) <= {tolerance}) {{ n[k]++; }}
                   }});
                 }}
                 ok(n);
               }};
               img.src = 'data:image/png;base64,{data}';
             }})"
        );
        let r = self.call(
            "Runtime.evaluate",
            serde_json::json!({ "expression": script, "returnByValue": true, "awaitPromise": true }),
        );
        r["result"]["value"]
            .as_array()
            .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(0)).collect())
            .unwrap_or_else(|| panic!("pixel counts: {r}"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
