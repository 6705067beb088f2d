//! The PostGIS sink.
//!
//! Invariants: a write is one transaction (under a lock per device, the
//! stored runs of seqs it overlaps are read, and only readings whose
//! `(device_id, seq)` no run holds are copied into the partitioned
//! `readings`, their runs into `reading_runs`: see `runs`); a batch sent
//! twice is stored once, also after its day's partition was dropped, and
//! readings whose key holds another reading are reported as collisions
//! (`collide`); the same transaction marks the hours it stored readings
//! for, whose rollups [`rollup`] recomputes off the write path. `readings`
//! is partitioned by day; [`partition`] creates
//! the partitions ahead and drops expired ones (retention). A lost
//! connection is re-opened on the next call and the
//! failed call reports `Unavailable` (the writer retries, holding acks).
//! Writes and API reads use separate connections, so a slow query never
//! delays a commit (and its acks).

mod catalog;
mod channels;
mod collide;
mod copy;
mod fleet_config;
mod hours;
mod migrate;
mod ops;
pub mod partition;
mod queries;
mod rollouts;
pub mod rollup;
mod runs;

use std::collections::BTreeMap;
use std::time::Duration;

use aeris_wire::{Batch, ConfigReport, Status};
use tokio::sync::Mutex;
use tokio_postgres::{Client, NoTls};
use tracing::{info, warn};

pub use migrate::{applied_version, run_to as migrate_to, MIGRATIONS};
pub use ops::{device_rows, remove_device, schema_version};
/// The SQL behind `/api/readings`, for `aeris-bench-indexes query`, which
/// times it on large tables ($1 device, $2 sensor, $3..$4 Unix ms, $5 limit).
pub use queries::READINGS as READINGS_SQL;

use crate::fleet_config::{DesiredRow, ReportedRow, Scope};
use crate::ops::{AuditEntry, AuditRecord, ResendPoint};
use crate::query::{
    CatalogSensor, ChannelHealth, CurrentAqi, DeviceReport, HourRow, HoursQuery, LocationRow,
    LocationUpdate, ReadingsQuery, StoredReading,
};
use crate::rollouts::{Lease, RolloutState, StoredRollout};
use crate::{reading_count, DeadLetter, Sink, SinkError, WriteOutcome};

/// `application_name` of the gateway's connections (visible in
/// `pg_stat_activity`) unless the URL sets one.
pub const APPLICATION_NAME: &str = "aeris-gateway";

pub struct PostgisSink {
    url: String,
    writer: Mutex<Option<Client>>,
    reader: Mutex<Option<Client>>,
}

fn unavailable(e: tokio_postgres::Error) -> SinkError {
    SinkError::Unavailable(e.to_string())
}

/// A lost connection or a network error is `Unavailable`; a refused value
/// (SQLSTATE class 22, data exception, or 23, integrity constraint) is
/// `Data`, which fails again however often it is retried; any other error
/// the server reported (a missing table, a full disk, a deadlock) is
/// `Rejected`.
fn classify(client: &Client, e: tokio_postgres::Error) -> SinkError {
    let Some(db) = e.as_db_error().filter(|_| !client.is_closed()) else {
        return SinkError::Unavailable(e.to_string());
    };
    let detail = format!("{} (SQLSTATE {})", db.message(), db.code().code());
    match db.code().code().get(..2) {
        Some("22" | "23") => SinkError::Data(detail),
        _ => SinkError::Rejected(detail),
    }
}

async fn connect(url: &str) -> Result<Client, SinkError> {
    let mut config: tokio_postgres::Config = url
        .parse()
        .map_err(|e: tokio_postgres::Error| SinkError::Unavailable(e.to_string()))?;
    if config.get_application_name().is_none() {
        config.application_name(APPLICATION_NAME);
    }
    let (client, connection) = tokio::time::timeout(Duration::from_secs(10), config.connect(NoTls))
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

async fn connect_writer(url: &str) -> Result<Client, SinkError> {
    let client = connect(url).await?;
    client
        .batch_execute(copy::CREATE_STAGING)
        .await
        .map_err(unavailable)?;
    Ok(client)
}

/// The open connection in `slot`, opening one if there is none.
async fn ensure<'a>(
    slot: &'a mut Option<Client>,
    url: &str,
    writer: bool,
) -> Result<&'a mut Client, SinkError> {
    if slot.as_ref().is_none_or(|c| c.is_closed()) {
        *slot = None;
        *slot = Some(if writer {
            connect_writer(url).await?
        } else {
            connect(url).await?
        });
    }
    slot.as_mut()
        .ok_or_else(|| SinkError::Unavailable("no connection".into()))
}

/// One write, in `tx` (see [`runs`] for the steps): the rows stored, and
/// the collisions with each colliding device's highest seq.
async fn write(
    tx: &tokio_postgres::Transaction<'_>,
    batches: &[Batch],
) -> Result<(u64, collide::Found), tokio_postgres::Error> {
    let mut devices: Vec<&str> = batches.iter().map(|b| b.device.as_str()).collect();
    devices.sort_unstable();
    devices.dedup();
    runs::lock(tx, &devices).await?;
    let known = runs::known(tx, batches).await?;
    let plan = runs::classify(batches, &known, copy::same);
    if !plan.fresh.is_empty() {
        let marks = copy::store(tx, batches, &plan.fresh).await?;
        runs::insert(tx, &runs::runs_of(batches, &plan.fresh)).await?;
        if !marks.is_empty() {
            let devices: Vec<&str> = marks.iter().map(|m| m.0).collect();
            let sensors: Vec<&str> = marks.iter().map(|m| m.1).collect();
            let hours: Vec<i64> = marks.iter().map(|m| m.2).collect();
            tx.execute(rollup::MARK_DIRTY, &[&devices, &sensors, &hours])
                .await?;
        }
    }
    if !plan.recheck.is_empty() {
        copy::stage(tx, batches, &plan.recheck).await?;
    }
    let found = match plan.collisions.is_empty() && plan.recheck.is_empty() {
        true => Default::default(),
        false => collide::find(tx, batches, plan.collisions, !plan.recheck.is_empty()).await?,
    };
    Ok((plan.fresh.len() as u64, found))
}

impl PostgisSink {
    /// Connects and brings the schema to the latest migration.
    pub async fn connect(url: &str) -> Result<PostgisSink, SinkError> {
        let mut client = connect(url).await?;
        let version = migrate::run(&mut client).await?;
        info!(version, "PostGIS schema ready");
        client
            .batch_execute(copy::CREATE_STAGING)
            .await
            .map_err(unavailable)?;
        Ok(PostgisSink {
            url: url.to_owned(),
            writer: Mutex::new(Some(client)),
            reader: Mutex::new(None),
        })
    }

    /// Runs `f` on the read connection; a failure drops a broken connection.
    async fn read<T, F>(&self, f: F) -> Result<T, SinkError>
    where
        F: for<'c> FnOnce(
            &'c Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, tokio_postgres::Error>> + Send + 'c>,
        >,
    {
        let mut guard = self.reader.lock().await;
        let client = ensure(&mut guard, &self.url, false).await?;
        match f(client).await {
            Ok(v) => Ok(v),
            Err(e) => {
                let err = classify(client, e);
                if matches!(err, SinkError::Unavailable(_)) {
                    *guard = None;
                }
                Err(err)
            }
        }
    }
}

#[async_trait::async_trait]
impl Sink for PostgisSink {
    async fn write(&self, batches: &[Batch]) -> Result<WriteOutcome, SinkError> {
        let n = reading_count(batches);
        let mut guard = self.writer.lock().await;
        let client = ensure(&mut guard, &self.url, true).await?;
        let result = async {
            let tx = client.transaction().await?;
            let written = write(&tx, batches).await?;
            tx.commit().await?;
            Ok::<_, tokio_postgres::Error>(written)
        }
        .await;
        match result {
            Ok((inserted, (collisions, max_seq))) => Ok(WriteOutcome {
                inserted,
                duplicates: n.saturating_sub(inserted + collisions.len() as u64),
                collisions,
                max_seq,
            }),
            Err(e) => {
                let err = classify(client, e);
                if matches!(err, SinkError::Unavailable(_)) {
                    *guard = None;
                }
                Err(err)
            }
        }
    }

    async fn dead_letter(&self, letter: &DeadLetter) -> Result<(), SinkError> {
        let letter = letter.clone();
        self.read(move |c| Box::pin(async move { ops::dead_letter(c, &letter).await }))
            .await
            .map(|_| ())
    }

    async fn record_status(&self, status: &Status) -> Result<(), SinkError> {
        let status = status.clone();
        self.read(move |c| Box::pin(async move { queries::record_status(c, &status).await }))
            .await
            .map(|_| ())
    }

    async fn readings(&self, q: &ReadingsQuery) -> Result<Vec<StoredReading>, SinkError> {
        let q = q.clone();
        self.read(move |c| Box::pin(async move { queries::readings(c, &q).await }))
            .await
    }

    async fn current_aqi(
        &self,
        sensors: &[(String, String)],
        since_ms: i64,
    ) -> Result<BTreeMap<(String, String), CurrentAqi>, SinkError> {
        if sensors.is_empty() {
            return Ok(BTreeMap::new());
        }
        let sensors = sensors.to_vec();
        self.read(move |c| Box::pin(async move { rollup::current(c, &sensors, since_ms).await }))
            .await
    }

    async fn hours(&self, q: &HoursQuery) -> Result<(Vec<HourRow>, u64), SinkError> {
        let q = q.clone();
        self.read(move |c| Box::pin(async move { hours::hours(c, &q).await }))
            .await
    }

    async fn catalog(
        &self,
        sensor: Option<i64>,
        location: Option<i64>,
    ) -> Result<Vec<CatalogSensor>, SinkError> {
        self.read(move |c| Box::pin(async move { catalog::catalog(c, sensor, location).await }))
            .await
    }

    async fn set_location(&self, update: &LocationUpdate) -> Result<LocationRow, SinkError> {
        let update = update.clone();
        self.read(move |c| Box::pin(async move { catalog::set_location(c, &update).await }))
            .await
    }

    async fn locations(&self) -> Result<Vec<LocationRow>, SinkError> {
        self.read(|c| Box::pin(catalog::locations(c))).await
    }

    async fn channel_health(&self, since_ms: i64) -> Result<Vec<ChannelHealth>, SinkError> {
        self.read(move |c| Box::pin(async move { channels::health(c, since_ms).await }))
            .await
    }

    async fn devices(&self) -> Result<Vec<DeviceReport>, SinkError> {
        self.read(|c| Box::pin(queries::devices(c))).await
    }

    async fn ping(&self) -> Result<(), SinkError> {
        self.read(|c| Box::pin(async move { c.simple_query("SELECT 1").await.map(|_| ()) }))
            .await
    }

    fn kind(&self) -> &'static str {
        "postgis"
    }

    async fn record_audit(&self, entry: &AuditEntry) -> Result<(), SinkError> {
        let entry = entry.clone();
        self.read(move |c| Box::pin(async move { ops::record_audit(c, &entry).await }))
            .await
            .map(|_| ())
    }

    async fn audit(&self, limit: i64) -> Result<Vec<AuditRecord>, SinkError> {
        self.read(move |c| Box::pin(ops::audit(c, limit))).await
    }

    async fn resend_points(&self) -> Result<Vec<ResendPoint>, SinkError> {
        self.read(|c| Box::pin(ops::resend_points(c))).await
    }

    async fn save_rollout(&self, r: &StoredRollout, lease: &Lease) -> Result<bool, SinkError> {
        let (r, lease) = (r.clone(), lease.clone());
        self.read(move |c| Box::pin(async move { rollouts::save(c, &r, &lease).await }))
            .await
    }

    async fn rollout(&self, id: u64) -> Result<Option<StoredRollout>, SinkError> {
        let ids = [i64::try_from(id).unwrap_or(-1)];
        let found = self
            .read(move |c| Box::pin(async move { rollouts::load(c, &ids).await }))
            .await?;
        Ok(found.into_iter().next())
    }

    async fn claim_rollouts(&self, lease: &Lease) -> Result<Vec<StoredRollout>, SinkError> {
        let lease = lease.clone();
        self.read(move |c| Box::pin(async move { rollouts::claim(c, &lease).await }))
            .await
    }

    async fn rollout_counts(&self) -> Result<Vec<(RolloutState, u64)>, SinkError> {
        self.read(|c| Box::pin(rollouts::counts(c))).await
    }

    async fn set_config(
        &self,
        scope: &Scope,
        fragment: &serde_json::Value,
        set_by: &str,
        devices: Option<&[String]>,
    ) -> Result<DesiredRow, SinkError> {
        let (scope, fragment, set_by) = (scope.clone(), fragment.clone(), set_by.to_owned());
        let devices = devices.map(<[String]>::to_vec);
        self.read(move |c| {
            Box::pin(async move {
                fleet_config::set(c, &scope, &fragment, &set_by, devices.as_deref()).await
            })
        })
        .await
    }

    async fn widen_config(
        &self,
        version: u64,
        devices: Option<&[String]>,
    ) -> Result<(), SinkError> {
        let devices = devices.map(<[String]>::to_vec);
        self.read(move |c| {
            Box::pin(async move { fleet_config::widen(c, version, devices.as_deref()).await })
        })
        .await
        .map(|_| ())
    }

    async fn config_rows(&self, scopes: &[Scope]) -> Result<Vec<DesiredRow>, SinkError> {
        let scopes = scopes.to_vec();
        self.read(move |c| Box::pin(async move { fleet_config::rows(c, &scopes).await }))
            .await
    }

    async fn record_config_report(&self, report: &ConfigReport) -> Result<(), SinkError> {
        let report = report.clone();
        self.read(move |c| Box::pin(async move { fleet_config::record_report(c, &report).await }))
            .await
            .map(|_| ())
    }

    async fn config_reports(&self) -> Result<Vec<ReportedRow>, SinkError> {
        self.read(|c| Box::pin(fleet_config::reports(c))).await
    }
}
