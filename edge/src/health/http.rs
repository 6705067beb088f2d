//! `/healthz`, `/readyz` and `/metrics` on a local port. A minimal HTTP/1.1
//! responder: one GET per connection, bounded request size and time; anything
//! else gets 404 or 400. A failure here never touches the data path.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info};

use prometheus_client::registry::Registry;

use super::Probes;

fn response(status: &str, content_type: &str, body: &str) -> Vec<u8> {
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

fn route(path: &str, probes: &Probes, registry: &Registry) -> Vec<u8> {
    match path {
        "/healthz" => response("200 OK", "text/plain", "ok\n"),
        "/readyz" if probes.ready() => response("200 OK", "text/plain", "ready\n"),
        "/readyz" => response(
            "503 Service Unavailable",
            "text/plain",
            "not subscribed to the sensor broker yet\n",
        ),
        "/metrics" => response(
            "200 OK",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            &super::metrics::render(registry),
        ),
        _ => response("404 Not Found", "text/plain", "not found\n"),
    }
}

async fn serve_one(mut sock: TcpStream, probes: Arc<Probes>, registry: Arc<Registry>) {
    let mut buf = vec![0u8; 2048];
    let mut n = 0;
    let read = tokio::time::timeout(Duration::from_secs(5), async {
        while n < buf.len() {
            match sock.read(&mut buf[n..]).await {
                Ok(0) | Err(_) => break,
                Ok(k) => n += k,
            }
            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    let head = String::from_utf8_lossy(&buf[..n]);
    let mut parts = head.split_whitespace();
    let reply = match (read, parts.next(), parts.next()) {
        (Ok(()), Some("GET"), Some(path)) => {
            route(path.split('?').next().unwrap_or(path), &probes, &registry)
        }
        _ => response("400 Bad Request", "text/plain", "bad request\n"),
    };
    let _ = sock.write_all(&reply).await;
    let _ = sock.shutdown().await;
}

/// Binds the endpoint's port (an error names why it cannot be had).
pub async fn bind(listen: &str) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(listen).await?;
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "health and metrics endpoint listening");
    }
    Ok(listener)
}

/// Serves `/healthz`, `/readyz` and `/metrics` (encoding `registry`) on
/// `listener` until `shutdown`, then closes it.
pub async fn serve(
    listener: TcpListener,
    probes: Arc<Probes>,
    registry: Arc<Registry>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok((sock, _)) => { tokio::spawn(serve_one(sock, probes.clone(), registry.clone())); }
                Err(e) => debug!(error = %e, "accept failed"),
            },
        }
    }
}
