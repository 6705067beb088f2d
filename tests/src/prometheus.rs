//! A real Prometheus server (Debian package `prometheus`) on a free port,
//! with its own config, rules and storage in a temporary folder, killed on
//! drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Prometheus {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Option<Child>,
}

impl Prometheus {
    /// Starts Prometheus with `config` (YAML) next to `rules` written as
    /// `rules.yml`, and waits until it answers.
    pub fn start(config: &str, rules: &str) -> Prometheus {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("prometheus.yml"), config).expect("write config");
        std::fs::write(dir.path().join("rules.yml"), rules).expect("write rules");
        let port = crate::free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log");
        let child = Command::new("prometheus")
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("cannot start prometheus: install the Debian package `prometheus` (scripts/test.sh does)");
        let p = Prometheus {
            port,
            dir,
            child: Some(child),
        };
        let start = Instant::now();
        while !matches!(crate::http::get(port, "/-/ready"), Ok((200, _))) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "prometheus not ready\n{}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        p
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The alerts Prometheus holds (`/api/v1/alerts`), as JSON.
    pub fn alerts(&self) -> Vec<serde_json::Value> {
        let v = crate::http::get_json(self.port, "/api/v1/alerts");
        v["data"]["alerts"].as_array().cloned().unwrap_or_default()
    }

    /// Result vector of an instant query.
    pub fn query(&self, q: &str) -> Vec<serde_json::Value> {
        let enc: String = q
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'-' | b'.' => {
                    (b as char).to_string()
                }
                _ => format!("%{b:02X}"),
            })
            .collect();
        let v = crate::http::get_json(self.port, &format!("/api/v1/query?query={enc}"));
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
