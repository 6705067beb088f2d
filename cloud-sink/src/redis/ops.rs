//! One-off Redis calls for `aeris-gateway verify`: reachability, and
//! removing the canary sensor from the live view.

use super::{down, timed};
use crate::SinkError;

/// Connects to `url` and sends `PING`.
pub async fn ping(url: &str) -> Result<(), SinkError> {
    let client = redis::Client::open(url).map_err(down)?;
    let mut conn = timed(client.get_multiplexed_async_connection()).await?;
    let pong: String = timed(redis::cmd("PING").query_async(&mut conn)).await?;
    if pong == "PONG" {
        Ok(())
    } else {
        Err(down(format!("unexpected PING answer {pong:?}")))
    }
}

/// Removes `<device>/<sensor>` members of `device` from the latest hashes
/// and the geo index (the stream keeps its entries; it is capped).
pub async fn remove_device(url: &str, prefix: &str, device: &str) -> Result<u64, SinkError> {
    let client = redis::Client::open(url).map_err(down)?;
    let mut conn = timed(client.get_multiplexed_async_connection()).await?;
    let latest = format!("{prefix}latest");
    let all: Vec<String> = timed(
        redis::cmd("HKEYS")
            .arg(&latest)
            .query_async::<Vec<String>>(&mut conn),
    )
    .await?;
    let members: Vec<String> = all
        .into_iter()
        .filter(|m| m.split_once('/').is_some_and(|(d, _)| d == device))
        .collect();
    if members.is_empty() {
        return Ok(0);
    }
    let mut pipe = redis::pipe();
    pipe.cmd("HDEL").arg(&latest).arg(&members).ignore();
    pipe.cmd("HDEL")
        .arg(format!("{prefix}latest_ts"))
        .arg(&members)
        .ignore();
    pipe.cmd("ZREM")
        .arg(format!("{prefix}geo"))
        .arg(&members)
        .ignore();
    timed(pipe.query_async::<()>(&mut conn)).await?;
    Ok(members.len() as u64)
}
