//! Dual-channel QC in the rollups (migration 0012): each hour's check of
//! a two-channel sensor ([`checks`], called by a rollup round), and how
//! often each sensor's channels disagreed lately ([`health`]), from the
//! checks stored in `readings_hourly.channel_qc`: what the gateway's
//! `aeris_gateway_sensor_channel_disagreement_ratio` and `/api/devices`
//! report.

use std::collections::{BTreeMap, BTreeSet};

use aeris_wire::aqi::channels::{disagreement_ratio, ChannelCheck, ChannelRule, CHANNELLED};
use aeris_wire::aqi::hourly::{hourly_means, Completeness, Sample};
use tokio_postgres::Client;

use crate::query::ChannelHealth;

/// Per (pollutant, hour): the channels' hourly means and the hour's check.
pub(super) type Channels = BTreeMap<(&'static str, i64), (Option<f64>, Option<f64>, ChannelCheck)>;

/// Each hour's check of each channelled pollutant, from the samples of
/// its channels (A then B for each of [`CHANNELLED`], in order): every
/// value of a channel in the hour counts, whichever reading carried it.
pub(super) fn checks(
    samples: &[Vec<Sample>],
    interval: i64,
    rules: &Completeness,
    rule: &ChannelRule,
) -> Channels {
    let mut out = Channels::new();
    for (q, pair) in CHANNELLED.iter().zip(samples.chunks(2)) {
        let mean_of = |i: usize| -> BTreeMap<i64, f64> {
            pair.get(i)
                .map(|s| hourly_means(s, interval, rules))
                .unwrap_or_default()
                .into_iter()
                .map(|h| (h.hour_start_ms, h.mean))
                .collect()
        };
        let (a, b) = (mean_of(0), mean_of(1));
        let hours: BTreeSet<i64> = a.keys().chain(b.keys()).copied().collect();
        for h in hours {
            let (ma, mb) = (a.get(&h).copied(), b.get(&h).copied());
            if let Some(qc) = rule.check(ma, mb) {
                out.insert((*q, h), (ma, mb, qc));
            }
        }
    }
    out
}

/// Per device, sensor and channelled pollutant, the hours since `$1` by
/// check.
const HEALTH: &str = "
SELECT device_id, sensor_id, pollutant,
       count(*) FILTER (WHERE channel_qc = 'ok')::int8,
       count(*) FILTER (WHERE channel_qc = 'disagree')::int8,
       count(*) FILTER (WHERE channel_qc = 'one_channel')::int8
FROM readings_hourly
WHERE channel_qc IS NOT NULL
  AND hour >= 'epoch'::timestamptz + $1::int8 * interval '1 millisecond'
GROUP BY device_id, sensor_id, pollutant
ORDER BY device_id, sensor_id, pollutant";

pub(super) async fn health(
    client: &Client,
    since_ms: i64,
) -> Result<Vec<ChannelHealth>, tokio_postgres::Error> {
    let rows = client.query(HEALTH, &[&since_ms]).await?;
    Ok(rows
        .iter()
        .map(|r| {
            let count = |i: usize| u32::try_from(r.get::<_, i64>(i)).unwrap_or(u32::MAX);
            let (ok, apart, one) = (count(3), count(4), count(5));
            let checks = std::iter::repeat_n(ChannelCheck::Agree, ok as usize)
                .chain(std::iter::repeat_n(ChannelCheck::Disagree, apart as usize));
            ChannelHealth {
                device: r.get(0),
                sensor: r.get(1),
                pollutant: r.get(2),
                judged_hours: ok.saturating_add(apart),
                disagree_hours: apart,
                one_channel_hours: one,
                disagreement_ratio: disagreement_ratio(checks),
            }
        })
        .collect())
}
