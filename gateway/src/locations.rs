//! `aeris-gateway locations set|list`: what a location (one sensor of one
//! device, migration 0013) is to the outside world: its AQCSV site code
//! and its local standard time's offset from UTC, which bounds its days in
//! `/v3/sensors/{id}/days` (migration 0015). `set` is written to the
//! audit log.

use aeris_sink::query::{LocationRow, LocationUpdate};

use crate::config::Config;

#[derive(clap::Subcommand, Debug)]
pub enum LocationsCmd {
    /// Sets a location's AQCSV site code and/or UTC offset (registering
    /// the location if no rollup named it yet); prints the location.
    Set(SetArgs),
    /// Lists every location: id, device, sensor, site code, UTC offset.
    List,
}

#[derive(clap::Args, Debug)]
pub struct SetArgs {
    /// The device.
    #[arg(long)]
    pub device: String,
    /// The device's sensor (a location is one sensor of one device).
    #[arg(long)]
    pub sensor: String,
    /// AQCSV site code: the 3-digit ISO 3166 numeric country code and the
    /// 9-digit monitor location code (a US site: 840 + its AQS id, e.g.
    /// 840060371103); `none` clears it (the export then writes `000` and
    /// the location id).
    #[arg(long, value_parser = parse_site)]
    pub site: Option<Site>,
    /// Local standard time's offset from UTC, `+08:00` or `-05:00` (a
    /// multiple of 15 minutes, -12:00 to +14:00; no daylight saving: EPA's
    /// daily values are by standard time); `none` clears it (UTC days).
    #[arg(long, value_parser = parse_offset, allow_hyphen_values = true)]
    pub utc_offset: Option<Offset>,
}

/// A site code or its clearing.
#[derive(Debug, Clone, PartialEq)]
pub struct Site(pub Option<String>);

/// A UTC offset in minutes or its clearing.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Offset(pub Option<i32>);

pub fn parse_site(s: &str) -> Result<Site, String> {
    if s == "none" {
        return Ok(Site(None));
    }
    if s.len() == 12 && s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Site(Some(s.to_owned())));
    }
    Err(format!(
        "`{s}` is not a site code: 12 digits, the ISO 3166 numeric country code and the 9-digit \
         monitor location code (840060371103 for US AQS site 06-037-1103), or `none`"
    ))
}

pub fn parse_offset(s: &str) -> Result<Offset, String> {
    if s == "none" {
        return Ok(Offset(None));
    }
    let bad = || format!("`{s}` is not a UTC offset: `+08:00`, `-05:00`, `+05:45`, or `none`");
    let (sign, rest) = match s.as_bytes().first() {
        Some(b'+') => (1, &s[1..]),
        Some(b'-') => (-1, &s[1..]),
        _ => return Err(bad()),
    };
    let (h, m) = rest.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: i32 = h.parse().map_err(|_| bad())?;
    let m: i32 = m.parse().map_err(|_| bad())?;
    let minutes = sign * (h * 60 + m);
    if m >= 60 || m % 15 != 0 || !(-720..=840).contains(&minutes) {
        return Err(format!(
            "`{s}`: an offset is a multiple of 15 minutes from -12:00 to +14:00"
        ));
    }
    Ok(Offset(Some(minutes)))
}

/// `+08:00` of an offset in minutes.
pub fn format_offset(minutes: i32) -> String {
    let sign = if minutes < 0 { '-' } else { '+' };
    let m = minutes.unsigned_abs();
    format!("{sign}{:02}:{:02}", m / 60, m % 60)
}

fn line(l: &LocationRow) -> String {
    format!(
        "{:>6}  {:<24} {:<12} {:<12} {}",
        l.id,
        l.device,
        l.sensor,
        l.site.as_deref().unwrap_or("-"),
        l.utc_offset_min
            .map(format_offset)
            .unwrap_or_else(|| "UTC".into())
    )
}

/// Runs the command; `Ok(false)` when the database refused it.
pub async fn run(config: &Config, cmd: LocationsCmd) -> anyhow::Result<bool> {
    if config.database_url.is_none() {
        anyhow::bail!("database_url is not set: locations are kept in PostGIS");
    }
    let sink = crate::open_sink(config).await?;
    println!(
        "{:>6}  {:<24} {:<12} {:<12} utc offset",
        "id", "device", "sensor", "site"
    );
    match cmd {
        LocationsCmd::List => {
            for l in sink.locations().await? {
                println!("{}", line(&l));
            }
            Ok(true)
        }
        LocationsCmd::Set(args) => {
            let update = LocationUpdate {
                device: args.device.clone(),
                sensor: args.sensor.clone(),
                site: args.site.map(|s| s.0),
                utc_offset_min: args.utc_offset.map(|o| o.0),
            };
            let result = sink.set_location(&update).await;
            let audited = match &result {
                Ok(l) => serde_json::to_value(l).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            crate::audit::record(
                sink.as_ref(),
                &crate::Stats::default(),
                &crate::audit::cli_actor(),
                "locations set",
                &format!("{}/{}", args.device, args.sensor),
                &audited,
            )
            .await;
            match result {
                Ok(l) => {
                    println!("{}", line(&l));
                    Ok(true)
                }
                Err(e) => {
                    eprintln!("aeris-gateway locations set: {e}");
                    Ok(false)
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_and_sites_parse_or_say_why_not() {
        assert_eq!(parse_offset("+08:00"), Ok(Offset(Some(480))));
        assert_eq!(parse_offset("-05:00"), Ok(Offset(Some(-300))));
        assert_eq!(parse_offset("+05:45"), Ok(Offset(Some(345))));
        assert_eq!(parse_offset("none"), Ok(Offset(None)));
        for bad in ["8", "+8:00", "+08:10", "+15:00", "-12:15", "+08:60", "UTC"] {
            assert!(parse_offset(bad).is_err(), "{bad}");
        }
        assert_eq!(format_offset(480), "+08:00");
        assert_eq!(format_offset(-345), "-05:45");
        assert_eq!(format_offset(0), "+00:00");
        assert_eq!(
            parse_site("840060371103"),
            Ok(Site(Some("840060371103".into())))
        );
        assert_eq!(parse_site("none"), Ok(Site(None)));
        assert!(parse_site("060371103").unwrap_err().contains("12 digits"));
        assert!(parse_site("84006037110x").is_err());
    }
}
