//! Hourly rollups (`readings_hourly`, migration 0009), kept current from
//! the marks writes leave in `readings_hourly_dirty`.
//!
//! Invariants:
//! - A write marks, in its own transaction, each (device, sensor, hour) it
//!   stored a pollutant reading for (`MARK_DIRTY`); a mark is never lost
//!   with a committed reading and never left by a rolled-back one.
//! - A round (`recompute`) runs in one transaction under an advisory lock
//!   (one recompute at a time per database, whatever the gateways): it reads
//!   marks, then the raw readings of the marked hours (so it sees every
//!   reading whose mark it read), recomputes those hours' statistics and
//!   the NowCast and AQI of every stored hour within their windows after
//!   them, with [`aeris_wire::aqi::rollup`]: no SQL arithmetic beyond the
//!   raw rows. Hours outside the marks enter the windows as stored.
//! - A mark is cleared only if no write marked it again since the round
//!   read it (`gen` unchanged), and only if no write holds it (`SKIP
//!   LOCKED`): the round never waits for a writer, so a writer and a round
//!   never deadlock; a skipped mark is handled next round.
//! - Rows are only inserted or updated, never deleted: an hour whose raw
//!   readings retention dropped keeps its rollup.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use aeris_wire::aqi::averaging::{highest, Averaging, Pollutant, PollutantAqi};
use aeris_wire::aqi::channels::{ChannelCheck, ChannelRule, CHANNELLED};
use aeris_wire::aqi::hourly::{hourly_means, Completeness, HourlyMean, Sample, HOUR_MS};
use aeris_wire::aqi::rollup::{self, HourRollup, MAX_WINDOW_HOURS, POLLUTANTS};
use aeris_wire::aqi::table::category;
use aeris_wire::units::Reference;
use futures_util::{stream, StreamExt, TryStreamExt};
use tokio_postgres::{Client, Transaction};

use super::channels::{self, Channels};
use crate::query::{ChannelHealth, CurrentAqi};
use crate::SinkError;

/// Marks `($1, $2, $3)` (device, sensor, hour's first Unix ms; distinct),
/// the hours of the readings a write stored, in the write's transaction.
/// Hours without any pollutant value (weather only) are not marked.
pub(super) const MARK_DIRTY: &str = "
INSERT INTO readings_hourly_dirty AS d (device_id, sensor_id, hour)
SELECT u.device_id, u.sensor_id, 'epoch'::timestamptz + u.hour_ms * interval '1 millisecond'
FROM unnest($1::text[], $2::text[], $3::int8[]) AS u(device_id, sensor_id, hour_ms)
ORDER BY 1, 2, 3
ON CONFLICT (device_id, sensor_id, hour) DO UPDATE SET gen = d.gen + 1";

/// Sensors recomputed at once within a round (pipelined queries).
const IN_FLIGHT: usize = 16;

/// Arbitrary constant naming the recompute lock (not the migrations' or
/// the partitions').
const LOCK_KEY: i64 = 0x0AE1_5003;

const DIRTY: &str = "
SELECT device_id, sensor_id, (extract(epoch FROM hour) * 1000)::int8, gen
FROM readings_hourly_dirty
ORDER BY hour, device_id, sensor_id
LIMIT $1";

/// A sensor's raw readings of `[$3, $4)` (Unix ms), what a recompute reads
/// (public for `aeris-bench-indexes query`).
pub const RAW: &str = "
SELECT (extract(epoch FROM ts) * 1000)::int8, pm1, pm25, pm10, no2, o3, co, so2,
       (measurements->>'pm1_a')::float8, (measurements->>'pm1_b')::float8,
       (measurements->>'pm25_a')::float8, (measurements->>'pm25_b')::float8,
       (measurements->>'pm10_a')::float8, (measurements->>'pm10_b')::float8
FROM readings
WHERE device_id = $1 AND sensor_id = $2
  AND ts >= 'epoch'::timestamptz + $3::int8 * interval '1 millisecond'
  AND ts <  'epoch'::timestamptz + $4::int8 * interval '1 millisecond'";

const STORED: &str = "
SELECT pollutant, (extract(epoch FROM hour) * 1000)::int8, mean, min, max, count, expected, valid,
       channel_a, channel_b, channel_qc
FROM readings_hourly
WHERE device_id = $1 AND sensor_id = $2
  AND hour >= 'epoch'::timestamptz + $3::int8 * interval '1 millisecond'
  AND hour <= 'epoch'::timestamptz + $4::int8 * interval '1 millisecond'";

/// Writes rows that differ from what is stored; returns those it wrote.
const UPSERT: &str = "
INSERT INTO readings_hourly AS r (device_id, sensor_id, pollutant, hour, mean, min, max, count,
                                  expected, completeness, valid, nowcast, aqi, aqi_averaging,
                                  channel_a, channel_b, channel_qc)
SELECT $1, $2, u.p, 'epoch'::timestamptz + u.h * interval '1 millisecond', u.mean, u.min, u.max,
       u.n, u.e, u.c, u.v, u.nc, u.aqi, u.av, u.ca, u.cb, u.cq
FROM unnest($3::text[], $4::int8[], $5::float8[], $6::float8[], $7::float8[], $8::int4[],
            $9::int4[], $10::float8[], $11::bool[], $12::float8[], $13::int4[], $14::text[],
            $15::float8[], $16::float8[], $17::text[])
     AS u(p, h, mean, min, max, n, e, c, v, nc, aqi, av, ca, cb, cq)
ON CONFLICT (device_id, sensor_id, pollutant, hour) DO UPDATE SET
    mean = excluded.mean, min = excluded.min, max = excluded.max, count = excluded.count,
    expected = excluded.expected, completeness = excluded.completeness, valid = excluded.valid,
    nowcast = excluded.nowcast, aqi = excluded.aqi, aqi_averaging = excluded.aqi_averaging,
    channel_a = excluded.channel_a, channel_b = excluded.channel_b,
    channel_qc = excluded.channel_qc, computed_at = now()
WHERE (r.mean, r.min, r.max, r.count, r.expected, r.valid, r.nowcast, r.aqi, r.aqi_averaging,
       r.channel_a, r.channel_b, r.channel_qc)
      IS DISTINCT FROM
      (excluded.mean, excluded.min, excluded.max, excluded.count, excluded.expected,
       excluded.valid, excluded.nowcast, excluded.aqi, excluded.aqi_averaging,
       excluded.channel_a, excluded.channel_b, excluded.channel_qc)";

const CLEAR: &str = "
WITH handled AS (
    SELECT d.device_id, d.sensor_id, d.hour
    FROM readings_hourly_dirty d
    JOIN unnest($1::text[], $2::text[], $3::int8[], $4::int8[]) AS u(dev, sen, h, gen)
      ON d.device_id = u.dev AND d.sensor_id = u.sen
     AND d.hour = 'epoch'::timestamptz + u.h * interval '1 millisecond' AND d.gen = u.gen
    FOR UPDATE OF d SKIP LOCKED
)
DELETE FROM readings_hourly_dirty d USING handled h
WHERE d.device_id = h.device_id AND d.sensor_id = h.sensor_id AND d.hour = h.hour";

const PENDING: &str = "
SELECT count(*), (extract(epoch FROM min(marked_at)) * 1000)::int8 FROM readings_hourly_dirty";

/// Marks the hours of `[from_ms, to_ms)` that hold pollutant readings (of
/// `device` only, if given) for a recompute.
const MARK_RANGE: &str = "
INSERT INTO readings_hourly_dirty AS d (device_id, sensor_id, hour)
SELECT DISTINCT device_id, sensor_id, date_trunc('hour', ts, 'UTC')
FROM readings
WHERE ts >= 'epoch'::timestamptz + $1::int8 * interval '1 millisecond'
  AND ts <  'epoch'::timestamptz + $2::int8 * interval '1 millisecond'
  AND ($3::text IS NULL OR device_id = $3)
  AND coalesce(pm1, pm25, pm10, no2, o3, co, so2) IS NOT NULL
ORDER BY 1, 2, 3
ON CONFLICT (device_id, sensor_id, hour) DO UPDATE SET gen = d.gen + 1";

/// The latest hour with an index of each pollutant of the given sensors
/// since `$3`: the rollups' part of `/api/sensors` (public for
/// `aeris-bench-indexes query`).
pub const CURRENT: &str = "
SELECT DISTINCT ON (h.device_id, h.sensor_id, h.pollutant)
       h.device_id, h.sensor_id, h.pollutant, (extract(epoch FROM h.hour) * 1000)::int8,
       h.aqi, h.aqi_averaging
FROM readings_hourly h
JOIN unnest($1::text[], $2::text[]) AS u(dev, sen) ON h.device_id = u.dev AND h.sensor_id = u.sen
WHERE h.hour >= 'epoch'::timestamptz + $3::int8 * interval '1 millisecond' AND h.aqi IS NOT NULL
ORDER BY h.device_id, h.sensor_id, h.pollutant, h.hour DESC";

/// How hours are summarised.
#[derive(Debug, Clone, PartialEq)]
pub struct Params {
    /// The sample interval sensors promise (expected count per hour).
    pub sample_interval_ms: i64,
    /// Per sensor id, where it differs.
    pub sensor_intervals_ms: HashMap<String, i64>,
    /// Conditions the stored µg/m³ of gases are read back to ppb/ppm at.
    pub reference: Reference,
    pub rules: Completeness,
    /// When a two-channel sensor's hour is invalid.
    pub channels: ChannelRule,
    /// Marks handled per round, at most.
    pub max_marks: i64,
}

impl Params {
    fn interval_ms(&self, sensor: &str) -> i64 {
        self.sensor_intervals_ms
            .get(sensor)
            .copied()
            .unwrap_or(self.sample_interval_ms)
    }
}

/// What a round did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    /// Another round held the lock: nothing was done.
    pub busy: bool,
    /// Marks read (dirty hours recomputed).
    pub marks: u64,
    /// Marks cleared (the rest were marked again meanwhile).
    pub cleared: u64,
    /// Rollup rows inserted or changed.
    pub rows_written: u64,
}

/// Marks still waiting and when the oldest was made (Unix ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pending {
    pub hours: i64,
    pub oldest_ms: Option<i64>,
}

fn err(e: tokio_postgres::Error) -> SinkError {
    match e.as_db_error() {
        Some(db) => {
            SinkError::Rejected(format!("{} (SQLSTATE {})", db.message(), db.code().code()))
        }
        None => SinkError::Unavailable(e.to_string()),
    }
}

/// A connection of its own for rollups (never the writer's).
pub struct RollupDb {
    client: Client,
}

impl RollupDb {
    pub async fn connect(url: &str) -> Result<RollupDb, SinkError> {
        Ok(RollupDb {
            client: super::connect(url).await?,
        })
    }

    /// The connection was lost: open a new one.
    pub fn is_closed(&self) -> bool {
        self.client.is_closed()
    }

    /// Marks still waiting for a recompute.
    pub async fn pending(&self) -> Result<Pending, SinkError> {
        let row = self.client.query_one(PENDING, &[]).await.map_err(err)?;
        Ok(Pending {
            hours: row.get(0),
            oldest_ms: row.get(1),
        })
    }

    /// Each two-channel sensor's checks over the hours from `since_ms` on.
    pub async fn channel_health(&self, since_ms: i64) -> Result<Vec<ChannelHealth>, SinkError> {
        super::channels::health(&self.client, since_ms)
            .await
            .map_err(err)
    }

    /// Marks every hour of `[from_ms, to_ms)` holding pollutant readings
    /// (of `device` only, if given); returns how many.
    pub async fn mark_range(
        &self,
        from_ms: i64,
        to_ms: i64,
        device: Option<&str>,
    ) -> Result<u64, SinkError> {
        self.client
            .execute(MARK_RANGE, &[&from_ms, &to_ms, &device])
            .await
            .map_err(err)
    }

    /// One round: up to `max_marks` marks, oldest hour first. With `wait`
    /// it waits for another round to finish, else it returns `busy`.
    pub async fn recompute(&mut self, p: &Params, wait: bool) -> Result<Round, SinkError> {
        recompute(&mut self.client, p, wait).await
    }
}

async fn recompute(client: &mut Client, p: &Params, wait: bool) -> Result<Round, SinkError> {
    let tx = client.transaction().await.map_err(err)?;
    let locked: bool = if wait {
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(err)?;
        true
    } else {
        tx.query_one("SELECT pg_try_advisory_xact_lock($1)", &[&LOCK_KEY])
            .await
            .map_err(err)?
            .get(0)
    };
    if !locked {
        return Ok(Round {
            busy: true,
            ..Round::default()
        });
    }
    let marks = tx.query(DIRTY, &[&p.max_marks]).await.map_err(err)?;
    let mut by_sensor: BTreeMap<(String, String), BTreeSet<i64>> = BTreeMap::new();
    let mut handled = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for m in &marks {
        let (device, sensor, hour, gen): (String, String, i64, i64) =
            (m.get(0), m.get(1), m.get(2), m.get(3));
        by_sensor
            .entry((device.clone(), sensor.clone()))
            .or_default()
            .insert(hour);
        handled.0.push(device);
        handled.1.push(sensor);
        handled.2.push(hour);
        handled.3.push(gen);
    }
    let mut round = Round {
        marks: marks.len() as u64,
        ..Round::default()
    };
    // Sensors are independent: their queries are pipelined on the one
    // connection (tokio-postgres sends a request while earlier ones are in
    // flight), so a round costs server time, not round trips.
    let jobs: Vec<(String, String, Vec<i64>)> = by_sensor
        .into_iter()
        .flat_map(|((d, s), hours)| {
            clusters(&hours)
                .into_iter()
                .map(move |c| (d.clone(), s.clone(), c))
        })
        .collect();
    let tx_ref = &tx;
    round.rows_written = stream::iter(jobs)
        .map(|(device, sensor, cluster)| async move {
            recompute_cluster(tx_ref, p, &device, &sensor, &cluster).await
        })
        .buffer_unordered(IN_FLIGHT)
        .try_fold(0, |sum, n| async move { Ok(sum + n) })
        .await?;
    round.cleared = tx
        .execute(CLEAR, &[&handled.0, &handled.1, &handled.2, &handled.3])
        .await
        .map_err(err)?;
    tx.commit().await.map_err(err)?;
    Ok(round)
}

/// Each sensor's current AQI: of its pollutants' latest indices since
/// `since_ms`, the highest ([`aeris_wire::aqi::averaging::highest`]).
pub(super) async fn current(
    client: &Client,
    sensors: &[(String, String)],
    since_ms: i64,
) -> Result<BTreeMap<(String, String), CurrentAqi>, tokio_postgres::Error> {
    let devices: Vec<&str> = sensors.iter().map(|s| s.0.as_str()).collect();
    let ids: Vec<&str> = sensors.iter().map(|s| s.1.as_str()).collect();
    let rows = client.query(CURRENT, &[&devices, &ids, &since_ms]).await?;
    let mut latest: BTreeMap<(String, String), Vec<(PollutantAqi, i64)>> = BTreeMap::new();
    for row in &rows {
        let pollutant = Pollutant::from_quantity(row.get(2));
        let averaging = row
            .get::<_, Option<&str>>(5)
            .and_then(Averaging::from_label);
        let aqi = u32::try_from(row.get::<_, i32>(4)).ok();
        let (Some(pollutant), Some(averaging), Some(aqi)) = (pollutant, averaging, aqi) else {
            continue;
        };
        let index = PollutantAqi {
            pollutant,
            aqi,
            averaging,
        };
        latest
            .entry((row.get(0), row.get(1)))
            .or_default()
            .push((index, row.get(3)));
    }
    Ok(latest
        .into_iter()
        .filter_map(|(key, found)| {
            let top = highest(found.iter().map(|f| f.0))?;
            let hour_ms = found.iter().find(|f| f.0 == top).map_or(0, |f| f.1);
            Some((
                key,
                CurrentAqi {
                    aqi: top.aqi,
                    category: category(top.aqi),
                    pollutant: top.pollutant.quantity(),
                    averaging: top.averaging.label(),
                    hour_ms,
                },
            ))
        })
        .collect())
}

/// The marked hours split where two are further apart than two windows,
/// so a sensor's current hour and a late hour of last month are read as
/// two short ranges, not one long one.
fn clusters(hours: &BTreeSet<i64>) -> Vec<Vec<i64>> {
    let mut out: Vec<Vec<i64>> = Vec::new();
    for &h in hours {
        match out.last_mut() {
            Some(c)
                if c.last()
                    .is_some_and(|&l| h - l <= 2 * MAX_WINDOW_HOURS * HOUR_MS) =>
            {
                c.push(h)
            }
            _ => out.push(vec![h]),
        }
    }
    out
}

/// Recomputes the marked `hours` (sorted, close together) of one sensor
/// and the windows after them; returns the rows written.
async fn recompute_cluster(
    tx: &Transaction<'_>,
    p: &Params,
    device: &str,
    sensor: &str,
    hours: &[i64],
) -> Result<u64, SinkError> {
    let (Some(&first), Some(&last)) = (hours.first(), hours.last()) else {
        return Ok(0);
    };
    let (fresh, fresh_channels) = fresh_means(tx, p, device, sensor, hours).await?;
    let window = (MAX_WINDOW_HOURS - 1) * HOUR_MS;
    let stored = tx
        .query(
            STORED,
            &[&device, &sensor, &(first - window), &(last + window)],
        )
        .await
        .map_err(err)?;
    let mut series: BTreeMap<&str, BTreeMap<i64, HourlyMean>> = BTreeMap::new();
    let mut channels: Channels = BTreeMap::new();
    for row in &stored {
        let pollutant: String = row.get(0);
        let Some(q) = POLLUTANTS.iter().find(|q| **q == pollutant) else {
            continue;
        };
        let h = HourlyMean {
            hour_start_ms: row.get(1),
            mean: row.get(2),
            min: row.get(3),
            max: row.get(4),
            count: u32::try_from(row.get::<_, i32>(5)).unwrap_or(0),
            expected: u32::try_from(row.get::<_, i32>(6)).unwrap_or(1),
            valid: row.get(7),
        };
        let qc = row
            .get::<_, Option<&str>>(10)
            .and_then(ChannelCheck::from_label);
        if let Some(qc) = qc {
            channels.insert((q, h.hour_start_ms), (row.get(8), row.get(9), qc));
        }
        series.entry(q).or_default().insert(h.hour_start_ms, h);
    }
    for (q, means) in fresh {
        let s = series.entry(q).or_default();
        for mut h in means {
            // A recomputed hour's check replaces the stored one (or its
            // absence); a disagreeing hour is invalid, like an incomplete one.
            channels.remove(&(q, h.hour_start_ms));
            if let Some(&(a, b, qc)) = fresh_channels.get(&(q, h.hour_start_ms)) {
                h.valid &= qc != ChannelCheck::Disagree;
                channels.insert((q, h.hour_start_ms), (a, b, qc));
            }
            s.insert(h.hour_start_ms, h);
        }
    }
    let mut rows = Rows::default();
    for (q, s) in &series {
        let means: Vec<HourlyMean> = s.values().copied().collect();
        let until = rollup::affected_until(q, last);
        for r in rollup::rollups(q, &means, first, until, &p.reference, &p.rules) {
            let c = channels.get(&(*q, r.hour.hour_start_ms)).copied();
            rows.push(q, &r, c);
        }
    }
    tx.execute(
        UPSERT,
        &[
            &device,
            &sensor,
            &rows.pollutant,
            &rows.hour,
            &rows.mean,
            &rows.min,
            &rows.max,
            &rows.count,
            &rows.expected,
            &rows.completeness,
            &rows.valid,
            &rows.nowcast,
            &rows.aqi,
            &rows.averaging,
            &rows.channel_a,
            &rows.channel_b,
            &rows.channel_qc,
        ],
    )
    .await
    .map_err(err)
}

/// The hourly means of the marked `hours`, per pollutant, from the raw
/// readings ([`aeris_wire::aqi::hourly::hourly_means`]), and the
/// dual-channel check of each hour that has channel values.
async fn fresh_means(
    tx: &Transaction<'_>,
    p: &Params,
    device: &str,
    sensor: &str,
    hours: &[i64],
) -> Result<(Vec<(&'static str, Vec<HourlyMean>)>, Channels), SinkError> {
    let mut samples: Vec<Vec<Sample>> = vec![Vec::new(); POLLUTANTS.len() + 2 * CHANNELLED.len()];
    for (from, to) in runs(hours) {
        let raw = tx
            .query(RAW, &[&device, &sensor, &from, &to])
            .await
            .map_err(err)?;
        for row in &raw {
            let ts_ms: i64 = row.get(0);
            for (i, s) in samples.iter_mut().enumerate() {
                if let Some(value) = row.get::<_, Option<f64>>(i + 1) {
                    s.push(Sample { ts_ms, value });
                }
            }
        }
    }
    let interval = p.interval_ms(sensor);
    let channel_samples = samples.split_off(POLLUTANTS.len());
    let channels = channels::checks(&channel_samples, interval, &p.rules, &p.channels);
    let means = POLLUTANTS
        .iter()
        .zip(samples)
        .map(|(q, s)| (*q, hourly_means(&s, interval, &p.rules)))
        .collect();
    Ok((means, channels))
}

/// Consecutive marked hours as `[from, to)` ranges.
fn runs(hours: &[i64]) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for &h in hours {
        match out.last_mut() {
            Some((_, to)) if *to == h => *to = h + HOUR_MS,
            _ => out.push((h, h + HOUR_MS)),
        }
    }
    out
}

/// The UPSERT's columns.
#[derive(Default)]
struct Rows {
    pollutant: Vec<&'static str>,
    hour: Vec<i64>,
    mean: Vec<f64>,
    min: Vec<f64>,
    max: Vec<f64>,
    count: Vec<i32>,
    expected: Vec<i32>,
    completeness: Vec<f64>,
    valid: Vec<bool>,
    nowcast: Vec<Option<f64>>,
    aqi: Vec<Option<i32>>,
    averaging: Vec<Option<&'static str>>,
    channel_a: Vec<Option<f64>>,
    channel_b: Vec<Option<f64>>,
    channel_qc: Vec<Option<&'static str>>,
}

impl Rows {
    fn push(
        &mut self,
        q: &'static str,
        r: &HourRollup,
        channels: Option<(Option<f64>, Option<f64>, ChannelCheck)>,
    ) {
        let h = &r.hour;
        self.pollutant.push(q);
        self.hour.push(h.hour_start_ms);
        self.mean.push(h.mean);
        self.min.push(h.min);
        self.max.push(h.max);
        self.count.push(i32::try_from(h.count).unwrap_or(i32::MAX));
        self.expected
            .push(i32::try_from(h.expected).unwrap_or(i32::MAX));
        self.completeness.push(h.completeness());
        self.valid.push(h.valid);
        self.nowcast.push(r.nowcast);
        self.aqi
            .push(r.aqi.map(|a| i32::try_from(a.aqi).unwrap_or(i32::MAX)));
        self.averaging.push(r.aqi.map(|a| a.averaging.label()));
        self.channel_a.push(channels.and_then(|c| c.0));
        self.channel_b.push(channels.and_then(|c| c.1));
        self.channel_qc.push(channels.map(|c| c.2.label()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marks_split_into_clusters_and_runs() {
        let h = |i: i64| i * HOUR_MS;
        let set: BTreeSet<i64> = [h(0), h(1), h(3), h(1000)].into_iter().collect();
        assert_eq!(clusters(&set), vec![vec![h(0), h(1), h(3)], vec![h(1000)]]);
        assert_eq!(runs(&[h(0), h(1), h(3)]), vec![(h(0), h(2)), (h(3), h(4))]);
    }
}
