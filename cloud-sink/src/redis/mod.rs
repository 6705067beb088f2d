//! The Redis live view, shared by every gateway.
//!
//! Keys (prefix `aeris:` by default):
//! - `latest` (hash): `<device>/<sensor>` -> JSON [`LiveReading`]
//! - `latest_ts` (hash): `<device>/<sensor>` -> its `ts_ms`
//! - `geo` (geo set): sensor positions, for `GEOSEARCH`
//! - `live` (stream, capped at `stream_len`): each reading that became its
//!   sensor's latest, field `r` = JSON
//! - `alerts` (pub/sub channel): device alerts, JSON
//!
//! Invariant: `latest` moves only forward in time. The compare and the
//! writes run in one Lua script ([`LATEST_SCRIPT`]), so two gateways racing
//! with an old and a new reading cannot interleave.
//! Redis is not on the ack path: when it is down the caller keeps what it
//! could not write and tries again ([`Live::update`] is idempotent).

pub mod ops;

use std::time::Duration;

use aeris_runtime::Backoff;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamReadOptions, StreamReadReply};
use redis::AsyncCommands;
use tokio::sync::{broadcast, Mutex};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::live::{Area, Live, LiveReading};
use crate::SinkError;

pub const LATEST_SCRIPT: &str = include_str!("latest.lua");

/// Longest wait for Redis on one command; past it the call fails and is
/// retried later rather than stalling the gateway.
const TIMEOUT: Duration = Duration::from_secs(3);

pub struct RedisLive {
    client: redis::Client,
    conn: Mutex<Option<MultiplexedConnection>>,
    script: redis::Script,
    keys: Keys,
    stream_len: u64,
    feed: broadcast::Sender<LiveReading>,
}

#[derive(Clone)]
struct Keys {
    latest: String,
    latest_ts: String,
    geo: String,
    live: String,
    alerts: String,
}

fn down(e: impl std::fmt::Display) -> SinkError {
    SinkError::Unavailable(format!("redis: {e}"))
}

async fn timed<T>(
    f: impl std::future::Future<Output = redis::RedisResult<T>>,
) -> Result<T, SinkError> {
    tokio::time::timeout(TIMEOUT, f)
        .await
        .map_err(|_| down("timed out"))?
        .map_err(down)
}

impl RedisLive {
    /// Prepares the client; connects lazily, so a Redis that is down at
    /// start does not stop the gateway. `shutdown` ends the stream follower.
    pub fn new(
        url: &str,
        prefix: &str,
        stream_len: u64,
        shutdown: CancellationToken,
    ) -> Result<std::sync::Arc<RedisLive>, SinkError> {
        let client = redis::Client::open(url).map_err(down)?;
        let k = |s: &str| format!("{prefix}{s}");
        let live = std::sync::Arc::new(RedisLive {
            client,
            conn: Mutex::new(None),
            script: redis::Script::new(LATEST_SCRIPT),
            keys: Keys {
                latest: k("latest"),
                latest_ts: k("latest_ts"),
                geo: k("geo"),
                live: k("live"),
                alerts: k("alerts"),
            },
            stream_len,
            feed: broadcast::channel(4096).0,
        });
        tokio::spawn(follow_stream(live.clone(), shutdown));
        Ok(live)
    }

    async fn conn(&self) -> Result<MultiplexedConnection, SinkError> {
        let mut guard = self.conn.lock().await;
        if let Some(c) = guard.as_ref() {
            return Ok(c.clone());
        }
        let c = timed(self.client.get_multiplexed_async_connection()).await?;
        *guard = Some(c.clone());
        Ok(c)
    }

    /// Forgets the connection after an error, so the next call reconnects.
    async fn reset(&self) {
        *self.conn.lock().await = None;
    }

    async fn with_reset<T>(&self, r: Result<T, SinkError>) -> Result<T, SinkError> {
        if r.is_err() {
            self.reset().await;
        }
        r
    }
}

#[async_trait::async_trait]
impl Live for RedisLive {
    async fn update(&self, readings: &[LiveReading]) -> Result<u64, SinkError> {
        if readings.is_empty() {
            return Ok(0);
        }
        let mut conn = self.conn().await?;
        let mut inv = self.script.prepare_invoke();
        inv.key(&self.keys.latest)
            .key(&self.keys.latest_ts)
            .key(&self.keys.geo)
            .key(&self.keys.live)
            .arg(self.stream_len);
        for r in readings {
            let json = serde_json::to_string(r).map_err(|e| SinkError::Rejected(e.to_string()))?;
            inv.arg(&r.id).arg(r.ts_ms).arg(r.lon).arg(r.lat).arg(json);
        }
        let r = timed(inv.invoke_async::<u64>(&mut conn)).await;
        self.with_reset(r).await
    }

    async fn search(&self, area: Area) -> Result<Vec<LiveReading>, SinkError> {
        let r = async {
            let mut conn = self.conn().await?;
            let json: Vec<Option<String>> = match area {
                Area::All => {
                    let all: Vec<String> = timed(conn.hvals(&self.keys.latest)).await?;
                    all.into_iter().map(Some).collect()
                }
                _ => {
                    let mut cmd = redis::cmd("GEOSEARCH");
                    cmd.arg(&self.keys.geo);
                    match area {
                        Area::Radius { lon, lat, meters } => {
                            cmd.arg("FROMLONLAT").arg(lon).arg(lat);
                            cmd.arg("BYRADIUS").arg(meters).arg("m");
                        }
                        Area::BBox {
                            min_lon,
                            min_lat,
                            max_lon,
                            max_lat,
                        } => {
                            // A box centred on the bbox, wide enough to hold
                            // it at its widest latitude; exact filter below.
                            let (clon, clat) =
                                ((min_lon + max_lon) / 2.0, (min_lat + max_lat) / 2.0);
                            let widest = if min_lat.abs() < max_lat.abs() {
                                min_lat
                            } else {
                                max_lat
                            };
                            let w =
                                2.0 * crate::live::haversine_m(clon, widest, max_lon, widest) + 1.0;
                            let h = crate::live::haversine_m(clon, min_lat, clon, max_lat) + 1.0;
                            cmd.arg("FROMLONLAT").arg(clon).arg(clat);
                            cmd.arg("BYBOX").arg(w).arg(h).arg("m");
                        }
                        Area::All => {}
                    }
                    let members: Vec<String> = timed(cmd.query_async(&mut conn)).await?;
                    if members.is_empty() {
                        return Ok(Vec::new());
                    }
                    timed(
                        redis::cmd("HMGET")
                            .arg(&self.keys.latest)
                            .arg(&members)
                            .query_async(&mut conn),
                    )
                    .await?
                }
            };
            let mut found: Vec<LiveReading> = json
                .into_iter()
                .flatten()
                .filter_map(|j| serde_json::from_str(&j).ok())
                .filter(|r: &LiveReading| area.contains(r.lon, r.lat))
                .collect();
            found.sort_by(|a, b| a.id.cmp(&b.id));
            Ok(found)
        }
        .await;
        self.with_reset(r).await
    }

    async fn alert(&self, json: &str) -> Result<(), SinkError> {
        let r = async {
            let mut conn = self.conn().await?;
            timed(conn.publish::<_, _, ()>(&self.keys.alerts, json)).await
        }
        .await;
        self.with_reset(r).await
    }

    fn subscribe(&self) -> broadcast::Receiver<LiveReading> {
        self.feed.subscribe()
    }

    fn kind(&self) -> &'static str {
        "redis"
    }
}

/// Follows the `live` stream with `XREAD BLOCK` on a connection of its own
/// and feeds [`Live::subscribe`]rs. After a lost connection it resumes from
/// the last entry it saw, so nothing written meanwhile is skipped (within
/// the stream's cap).
async fn follow_stream(live: std::sync::Arc<RedisLive>, shutdown: CancellationToken) {
    let mut last_id = "$".to_owned();
    let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(5));
    let opts = StreamReadOptions::default().block(1000).count(1000);
    'outer: while !shutdown.is_cancelled() {
        let mut conn = match timed(live.client.get_multiplexed_async_connection()).await {
            Ok(c) => c,
            Err(e) => {
                debug!(error = %e, "redis stream follower cannot connect");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(backoff.next_delay()) => {}
                }
                continue;
            }
        };
        info!(stream = %live.keys.live, "following the redis live stream");
        backoff.reset();
        loop {
            let keys = [live.keys.live.as_str()];
            let ids = [last_id.as_str()];
            let read = tokio::select! {
                _ = shutdown.cancelled() => break 'outer,
                r = tokio::time::timeout(
                    TIMEOUT + Duration::from_secs(1),
                    conn.xread_options::<_, _, StreamReadReply>(&keys, &ids, &opts),
                ) => r,
            };
            let reply = match read {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => {
                    warn!(error = %e, "redis stream read failed");
                    continue 'outer;
                }
                Err(_) => continue 'outer,
            };
            for key in reply.keys {
                for entry in key.ids {
                    last_id = entry.id.clone();
                    let json: Option<String> = entry.get("r");
                    if let Some(r) = json.and_then(|j| serde_json::from_str(&j).ok()) {
                        let _ = live.feed.send(r);
                    }
                }
            }
        }
    }
}
