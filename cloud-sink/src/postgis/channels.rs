//! How often each two-channel sensor's channels disagreed lately, from
//! the checks the rollups stored (`readings_hourly.channel_qc`, migration
//! 0012): what the gateway's `aeris_gateway_sensor_channel_disagreement_ratio`
//! and `/api/devices` report.

use aeris_wire::aqi::channels::{disagreement_ratio, ChannelCheck};
use tokio_postgres::Client;

use crate::query::ChannelHealth;

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
