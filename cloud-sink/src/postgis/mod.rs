//! The PostGIS sink.
//!
//! Invariants: a write is one transaction; rows conflicting on
//! `(device_id, seq)` are skipped (`ON CONFLICT DO NOTHING`), so a batch sent
//! twice is stored once; a lost connection is re-opened on the next write and
//! the failed write reports `Unavailable` (the caller retries, holding acks).

mod migrate;

use std::time::Duration;

use aeris_wire::Batch;
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};
use tracing::{info, warn};

pub use migrate::{applied_version, MIGRATIONS};

use crate::{reading_count, values_json, Sink, SinkError, WriteOutcome};

/// All readings of a write go in as arrays in one statement: one round trip
/// whatever the batch size. SQL is fixed; data only travels as parameters.
const INSERT: &str = "
INSERT INTO readings (device_id, seq, sensor_id, ts, geom, flags, measurements)
SELECT d, s, sensor, to_timestamp(t / 1000.0), ST_SetSRID(ST_MakePoint(lon, lat), 4326), f, v
FROM UNNEST($1::text[], $2::int8[], $3::text[], $4::int8[], $5::float8[], $6::float8[], $7::int4[], $8::jsonb[])
     AS u(d, s, sensor, t, lon, lat, f, v)
ON CONFLICT (device_id, seq) DO NOTHING";

pub struct PostgisSink {
    url: String,
    client: Mutex<Option<Client>>,
}

fn unavailable(e: tokio_postgres::Error) -> SinkError {
    SinkError::Unavailable(e.to_string())
}

async fn connect(url: &str) -> Result<Client, SinkError> {
    let (client, connection) =
        tokio::time::timeout(Duration::from_secs(10), tokio_postgres::connect(url, NoTls))
            .await
            .map_err(|_| SinkError::Unavailable("connect timed out".into()))?
            .map_err(unavailable)?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            warn!(error = %e, "PostgreSQL connection closed");
        }
    });
    Ok(client)
}

impl PostgisSink {
    /// Connects and brings the schema to the latest migration.
    pub async fn connect(url: &str) -> Result<PostgisSink, SinkError> {
        let mut client = connect(url).await?;
        let version = migrate::run(&mut client).await?;
        info!(version, "PostGIS schema ready");
        Ok(PostgisSink {
            url: url.to_owned(),
            client: Mutex::new(Some(client)),
        })
    }
}

#[async_trait::async_trait]
impl Sink for PostgisSink {
    async fn write(&self, batches: &[Batch]) -> Result<WriteOutcome, SinkError> {
        let n = reading_count(batches) as usize;
        let mut devices = Vec::with_capacity(n);
        let mut seqs = Vec::with_capacity(n);
        let mut sensors = Vec::with_capacity(n);
        let mut ts = Vec::with_capacity(n);
        let mut lons = Vec::with_capacity(n);
        let mut lats = Vec::with_capacity(n);
        let mut flags = Vec::with_capacity(n);
        let mut values = Vec::with_capacity(n);
        for b in batches {
            for (seq, r) in b.with_seqs() {
                devices.push(b.device.as_str());
                seqs.push(seq as i64);
                sensors.push(r.sensor.as_str());
                ts.push(r.ts_ms);
                lons.push(r.lon);
                lats.push(r.lat);
                flags.push(r.flags as i32);
                values.push(values_json(r));
            }
        }
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(connect(&self.url).await?);
        }
        let Some(client) = guard.as_mut() else {
            return Err(SinkError::Unavailable("no connection".into()));
        };
        let result = async {
            let tx = client.transaction().await?;
            let inserted = tx
                .execute(
                    INSERT,
                    &[
                        &devices, &seqs, &sensors, &ts, &lons, &lats, &flags, &values,
                    ],
                )
                .await?;
            tx.commit().await?;
            Ok::<u64, tokio_postgres::Error>(inserted)
        }
        .await;
        match result {
            Ok(inserted) => Ok(WriteOutcome {
                inserted,
                duplicates: n as u64 - inserted,
            }),
            Err(e) => {
                // A closed connection is re-opened on the next write; a
                // database-side error (constraint, type) is not retryable as is.
                if client.is_closed() || e.as_db_error().is_none() {
                    *guard = None;
                    Err(SinkError::Unavailable(e.to_string()))
                } else {
                    Err(SinkError::Rejected(e.to_string()))
                }
            }
        }
    }

    fn kind(&self) -> &'static str {
        "postgis"
    }
}
