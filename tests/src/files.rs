//! A minimal HTTP/1.1 file server over a folder, for update and model
//! downloads: GET with optional `Range: bytes=N-`, an optional rate limit
//! (to catch a download in the middle), and a log of the requests it got.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct FileServer {
    pub port: u16,
    /// Each request as `<path> <range header or "-">`.
    pub requests: Arc<Mutex<Vec<String>>>,
    /// Bytes per second per response; 0 = unlimited.
    pub rate: Arc<std::sync::atomic::AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl FileServer {
    /// Serves `root` on a free port of 127.0.0.1.
    pub async fn start(root: PathBuf) -> FileServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let rate = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (log, r) = (requests.clone(), rate.clone());
        let task = tokio::spawn(async move {
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, root.clone(), log.clone(), r.clone()));
            }
        });
        FileServer {
            port,
            requests,
            rate,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(
    mut sock: TcpStream,
    root: PathBuf,
    log: Arc<Mutex<Vec<String>>>,
    rate: Arc<std::sync::atomic::AtomicU64>,
) {
    let mut buf = vec![0u8; 8192];
    let mut n = 0;
    while n < buf.len() {
        match sock.read(&mut buf[n..]).await {
            Ok(0) | Err(_) => return,
            Ok(k) => n += k,
        }
        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf[..n]).into_owned();
    let path = head.split_whitespace().nth(1).unwrap_or("/").to_owned();
    let range = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("range").then(|| v.trim().to_owned())
    });
    if let Ok(mut l) = log.lock() {
        l.push(format!("{path} {}", range.as_deref().unwrap_or("-")));
    }
    let rel = path.trim_start_matches('/');
    let Ok(body) = std::fs::read(root.join(rel)) else {
        let _ = sock
            .write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
            .await;
        return;
    };
    let from = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse::<usize>().ok())
        .filter(|&f| f < body.len());
    let (status, part) = match from {
        Some(f) => ("206 Partial Content", &body[f..]),
        None => ("200 OK", &body[..]),
    };
    let mut head = format!(
        "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n",
        part.len()
    );
    if let Some(f) = from {
        head += &format!(
            "content-range: bytes {f}-{}/{}\r\n",
            body.len() - 1,
            body.len()
        );
    }
    head += "\r\n";
    if sock.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    for chunk in part.chunks(16 * 1024) {
        if sock.write_all(chunk).await.is_err() {
            return;
        }
        let r = rate.load(std::sync::atomic::Ordering::Relaxed);
        if r > 0 {
            let wait = chunk.len() as f64 / r as f64;
            tokio::time::sleep(std::time::Duration::from_secs_f64(wait)).await;
        }
    }
}
