//! Desired and reported configuration on PostGIS (migration 0010). Fixed SQL.

use aeris_wire::ConfigReport;
use tokio_postgres::{Client, Row};

use crate::fleet_config::{DesiredRow, ReportedRow, Scope, ScopeKind};

const INSERT_DESIRED: &str = "INSERT INTO config_desired (scope, name, fragment, set_by, devices)
    VALUES ($1, $2, $3, $4, $5)
    RETURNING scope, name, version, fragment, set_by, (extract(epoch FROM set_at) * 1000)::int8,
        devices";

/// A staged change reaches more devices (NULL: all of its scope).
const WIDEN: &str = "UPDATE config_desired SET devices = $2 WHERE version = $1";

/// Every row of the scopes given as parallel arrays (kind, name), newest first.
const DESIRED_ROWS: &str = "SELECT d.scope, d.name, d.version, d.fragment, d.set_by,
        (extract(epoch FROM d.set_at) * 1000)::int8, d.devices
    FROM config_desired d
    JOIN unnest($1::text[], $2::text[]) AS s(scope, name)
      ON d.scope = s.scope AND d.name = s.name
    ORDER BY d.version DESC";

/// A newer report replaces an older one; ties (the same report twice) keep the row.
const UPSERT_REPORT: &str = "INSERT INTO config_reported
        (device_id, groups, applied, refused_version, refused_reason, reported_at)
    VALUES ($1, $2, $3, $4, $5, to_timestamp($6::float8 / 1000))
    ON CONFLICT (device_id) DO UPDATE SET
        groups = EXCLUDED.groups, applied = EXCLUDED.applied,
        refused_version = EXCLUDED.refused_version, refused_reason = EXCLUDED.refused_reason,
        reported_at = EXCLUDED.reported_at
    WHERE config_reported.reported_at <= EXCLUDED.reported_at";

const REPORTS: &str = "SELECT device_id, groups, applied, refused_version, refused_reason,
        (extract(epoch FROM reported_at) * 1000)::int8
    FROM config_reported ORDER BY device_id";

fn version(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn desired(r: &Row) -> DesiredRow {
    let kind: String = r.get(0);
    DesiredRow {
        scope: Scope {
            kind: ScopeKind::parse(&kind).unwrap_or(ScopeKind::Device),
            name: r.get(1),
        },
        version: version(r.get(2)),
        fragment: r.get(3),
        set_by: r.get(4),
        set_at_ms: r.get(5),
        devices: r.get(6),
    }
}

pub(super) async fn set(
    c: &Client,
    scope: &Scope,
    fragment: &serde_json::Value,
    set_by: &str,
    devices: Option<&[String]>,
) -> Result<DesiredRow, tokio_postgres::Error> {
    let row = c
        .query_one(
            INSERT_DESIRED,
            &[
                &scope.kind.as_str(),
                &scope.name,
                fragment,
                &set_by,
                &devices,
            ],
        )
        .await?;
    Ok(desired(&row))
}

pub(super) async fn widen(
    c: &Client,
    version: u64,
    devices: Option<&[String]>,
) -> Result<u64, tokio_postgres::Error> {
    let v = i64::try_from(version).unwrap_or(i64::MAX);
    c.execute(WIDEN, &[&v, &devices]).await
}

pub(super) async fn rows(
    c: &Client,
    scopes: &[Scope],
) -> Result<Vec<DesiredRow>, tokio_postgres::Error> {
    let kinds: Vec<&str> = scopes.iter().map(|s| s.kind.as_str()).collect();
    let names: Vec<&str> = scopes.iter().map(|s| s.name.as_str()).collect();
    let rows = c.query(DESIRED_ROWS, &[&kinds, &names]).await?;
    Ok(rows.iter().map(desired).collect())
}

pub(super) async fn record_report(
    c: &Client,
    r: &ConfigReport,
) -> Result<u64, tokio_postgres::Error> {
    let v = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let refused_version = r.refused.as_ref().map(|f| v(f.version));
    let refused_reason = r.refused.as_ref().map(|f| f.reason.as_str());
    c.execute(
        UPSERT_REPORT,
        &[
            &r.device,
            &r.groups,
            &v(r.applied),
            &refused_version,
            &refused_reason,
            &(r.ts_ms as f64),
        ],
    )
    .await
}

pub(super) async fn reports(c: &Client) -> Result<Vec<ReportedRow>, tokio_postgres::Error> {
    let rows = c.query(REPORTS, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| ReportedRow {
            device: r.get(0),
            groups: r.get(1),
            applied: version(r.get(2)),
            refused_version: r.get::<_, Option<i64>>(3).map(version),
            refused_reason: r.get(4),
            reported_at_ms: r.get(5),
        })
        .collect())
}
