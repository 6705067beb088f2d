//! `GET /api/live`: server-sent events, one `reading` event per reading
//! that became its sensor's latest.
//!
//! Invariants: at most `api.live.max_streams` streams are open in all and
//! `max_streams_per_client` per client (the token's name, else the peer
//! address); one more gets 503 with `Retry-After` and is counted. A slot is
//! held by the response body, so it is freed when the stream ends for any
//! reason: the client disconnects, the stream sent no reading for
//! `idle_timeout` (the browser's `EventSource` reconnects, through the caps
//! again), or the gateway shuts down (so a graceful stop does not wait for
//! open browsers).

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aeris_sink::live::LiveReading;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use futures_util::{Stream, StreamExt};
use tokio::sync::broadcast;

use super::auth::Caller;
use super::ApiState;
pub use crate::config::LiveConfig;
use crate::stats::Stats;

/// Why a stream was refused; the label of
/// `aeris_gateway_live_streams_refused_total{reason}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Full {
    Total,
    PerClient,
}

impl Full {
    pub fn reason(self) -> &'static str {
        match self {
            Full::Total => "total",
            Full::PerClient => "per_client",
        }
    }
}

/// The open streams, per client. No I/O: [`Slot`] gives a slot back when
/// dropped.
pub struct Streams {
    config: LiveConfig,
    open: Mutex<HashMap<String, usize>>,
    stats: Arc<Stats>,
}

impl Streams {
    pub fn new(config: LiveConfig, stats: Arc<Stats>) -> Arc<Streams> {
        Arc::new(Streams {
            config,
            open: Mutex::new(HashMap::new()),
            stats,
        })
    }

    /// A slot for one more stream of `client`, or why not.
    pub fn admit(self: &Arc<Self>, client: &str) -> Result<Slot, Full> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = open.values().sum();
        let mine = open.get(client).copied().unwrap_or(0);
        let refused = if total >= self.config.max_streams {
            Some(Full::Total)
        } else if mine >= self.config.max_streams_per_client {
            Some(Full::PerClient)
        } else {
            None
        };
        if let Some(full) = refused {
            self.stats.live_stream_refused(full.reason());
            return Err(full);
        }
        *open.entry(client.to_owned()).or_insert(0) += 1;
        self.stats.live_streams.set((total + 1) as i64);
        Ok(Slot {
            streams: self.clone(),
            client: client.to_owned(),
        })
    }

    /// Open streams in all.
    pub fn open(&self) -> usize {
        self.open
            .lock()
            .map(|o| o.values().sum())
            .unwrap_or_default()
    }
}

/// One open stream; dropping it frees the slot.
pub struct Slot {
    streams: Arc<Streams>,
    client: String,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.streams.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.client) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.client);
            }
        }
        let total: usize = open.values().sum();
        self.streams.stats.live_streams.set(total as i64);
    }
}

pub(super) async fn handler(
    State(s): State<ApiState>,
    caller: Option<Extension<Caller>>,
) -> Response {
    // The guard always puts the caller there; a missing one (a route
    // mounted without the guard) shares one anonymous budget.
    let client = caller.map(|c| c.0.name).unwrap_or_default();
    let slot = match s.streams.admit(&client) {
        Ok(slot) => slot,
        Err(full) => {
            tracing::warn!(client = %client, reason = full.reason(), "live stream refused");
            let message = match full {
                Full::Total => "too many open event streams; retry later",
                Full::PerClient => "too many open event streams for this client; close one",
            };
            let mut r = super::error(StatusCode::SERVICE_UNAVAILABLE, message);
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("10"));
            return r;
        }
    };
    let idle = s.streams.config.idle_timeout;
    let stream = events(s.live.subscribe(), idle, slot).take_until(s.shutdown.cancelled_owned());
    Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The readings of `rx` as events, ending after `idle` without one; holds
/// `slot` for as long as it lives.
fn events(
    rx: broadcast::Receiver<LiveReading>,
    idle: Duration,
    slot: Slot,
) -> impl Stream<Item = Result<Event, Infallible>> {
    futures_util::stream::unfold((rx, slot), move |(mut rx, slot)| async move {
        loop {
            match tokio::time::timeout(idle, rx.recv()).await {
                Err(_) | Ok(Err(broadcast::error::RecvError::Closed)) => return None,
                // A slow client misses readings, not the stream: the next
                // one brings its sensor up to date.
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Ok(r)) => {
                    let Ok(json) = serde_json::to_string(&r) else {
                        continue;
                    };
                    let event = Event::default().event("reading").data(json);
                    return Some((Ok(event), (rx, slot)));
                }
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn streams(total: usize, per_client: usize) -> Arc<Streams> {
        let config = LiveConfig {
            max_streams: total,
            max_streams_per_client: per_client,
            ..LiveConfig::default()
        };
        Streams::new(config, Arc::new(Stats::default()))
    }

    #[test]
    fn caps_refuse_per_client_and_in_total_and_free_on_drop() {
        let s = streams(3, 2);
        let a1 = s.admit("a").unwrap();
        let _a2 = s.admit("a").unwrap();
        assert_eq!(s.admit("a").err(), Some(Full::PerClient));
        let b1 = s.admit("b").unwrap();
        assert_eq!(s.admit("c").err(), Some(Full::Total));
        assert_eq!(s.open(), 3);
        drop(a1);
        assert_eq!(s.open(), 2);
        let _c = s.admit("c").unwrap();
        drop(b1);
        let _a3 = s.admit("a").unwrap();
        let stats = &s.stats;
        assert_eq!(stats.live_streams.get(), 3);
        let text = stats.encode();
        assert!(
            text.contains("aeris_gateway_live_streams_refused_total{reason=\"total\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("aeris_gateway_live_streams_refused_total{reason=\"per_client\"} 1"),
            "{text}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_stream_without_readings_ends_after_the_idle_timeout() {
        let s = streams(1, 1);
        let (tx, rx) = broadcast::channel(4);
        let slot = s.admit("a").unwrap();
        let mut stream = Box::pin(events(rx, Duration::from_secs(60), slot));
        let reading = LiveReading {
            id: "d/s".into(),
            device: "d".into(),
            sensor: "s".into(),
            ts_ms: 1,
            lat: 0.0,
            lon: 0.0,
            aqi_instant: None,
            values: Default::default(),
        };
        tx.send(reading).unwrap();
        assert!(stream.next().await.is_some());
        assert_eq!(s.open(), 1);
        // 60 s of silence (paused time advances on its own).
        assert!(stream.next().await.is_none());
        drop(stream);
        assert_eq!(s.open(), 0, "the slot is free once the stream ends");
        drop(tx);
    }
}
