//! `POST /api/rollouts` starts a staged rollout of a signed agent update
//! (see [`crate::rollout`]); `GET /api/rollouts/{id}` shows its progress.
//!
//! Body of the POST, JSON:
//! `{"update": {"format":1,"url":...,"manifest":...,"signature":...},
//!   "devices": ["a","b"], "percent": 100, "canary": 1, "max_failures": 0,
//!   "device_timeout": "10m"}`; `update` is the payload of the devices'
//! `CommandKind::Ota` (what cross/build.sh's package gives). The answer is
//! 202 with the rollout id once the rollout is stored; a gateway drives it
//! until done ([`crate::rollout::driver`]), also across restarts. The GET
//! reads the database, so any gateway answers it, also after a restart
//! and after the rollout finished.

use std::sync::Arc;
use std::time::Duration;

use aeris_sink::Sink;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::Deserialize;
use tracing::info;

use super::auth::Caller;
use crate::rollout::store::Meta;
use crate::rollout::{self, Driver, Plan};
use crate::stats::Stats;

#[derive(Clone)]
struct RolloutState {
    driver: Arc<Driver>,
    /// Where starting a rollout is written to the audit log.
    audit: Option<(Arc<dyn Sink>, Arc<Stats>)>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Request {
    update: serde_json::Value,
    devices: Vec<String>,
    #[serde(default = "hundred")]
    percent: u8,
    #[serde(default = "one")]
    canary: usize,
    #[serde(default)]
    max_failures: usize,
    #[serde(default = "ten_minutes", with = "humantime_serde")]
    device_timeout: Duration,
}

fn hundred() -> u8 {
    100
}
fn one() -> usize {
    1
}
fn ten_minutes() -> Duration {
    Duration::from_secs(600)
}

/// The rollout routes, with their own state (the driver that stores and
/// runs rollouts, and the sink of the audit log). They belong behind the
/// `operate` scope.
pub fn routes(driver: Arc<Driver>, audit: Option<(Arc<dyn Sink>, Arc<Stats>)>) -> Router {
    Router::new()
        .route("/api/rollouts", post(start))
        .route("/api/rollouts/{id}", get(show))
        .with_state(RolloutState { driver, audit })
}

async fn start(
    State(s): State<RolloutState>,
    caller: Option<Extension<Caller>>,
    body: axum::body::Bytes,
) -> Response {
    let actor = caller
        .map(|c| c.0.name)
        .unwrap_or_else(|| "anonymous".into());
    let result = begin(&s, &body, &actor).await;
    if let Some((sink, stats)) = &s.audit {
        let target = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .map(|v| v["devices"].to_string())
            .unwrap_or_else(|| "(bad request)".into());
        let audited = result.clone().map_err(|(_, e)| e);
        crate::audit::record(sink.as_ref(), stats, &actor, "rollout", &target, &audited).await;
    }
    match result {
        Ok(body) => (StatusCode::ACCEPTED, Json(body)).into_response(),
        Err((status, message)) => error(status, message),
    }
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(serde_json::json!({ "error": message }))).into_response()
}

/// Checks the request and starts the rollout; the answer's body, or the
/// refusal.
async fn begin(
    s: &RolloutState,
    body: &[u8],
    actor: &str,
) -> Result<serde_json::Value, (StatusCode, String)> {
    let req: Request = serde_json::from_slice(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("bad rollout request: {e}")))?;
    let fields = ["url", "manifest", "signature"];
    if req.update["format"] != 1 || fields.iter().any(|f| !req.update[f].is_string()) {
        return Err((
            StatusCode::BAD_REQUEST,
            "update must be {\"format\":1,\"url\",\"manifest\",\"signature\"}".into(),
        ));
    }
    if req.percent > 100 || req.devices.is_empty() {
        return Err((
            StatusCode::BAD_REQUEST,
            "devices must not be empty and percent at most 100".into(),
        ));
    }
    if let Some(bad) = req
        .devices
        .iter()
        .find(|d| aeris_wire::validate_device_id(d).is_err())
    {
        return Err((
            StatusCode::BAD_REQUEST,
            format!("{bad:?} is not a device id"),
        ));
    }
    let id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0);
    let targets = rollout::select(&req.devices, req.percent);
    let plan = Plan::new(
        id,
        targets,
        req.canary,
        req.max_failures,
        req.device_timeout,
    );
    let meta = Meta {
        id,
        update: req.update,
        started_by: actor.to_owned(),
        created_ms: aeris_wire::now_ms(),
        stages: plan.waves().to_vec(),
        max_failures: req.max_failures,
        timeout: req.device_timeout,
    };
    s.driver.start(meta, plan).await.map_err(|e| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("rollout not stored: {e}"),
        )
    })?;
    info!(
        id,
        devices = req.devices.len(),
        percent = req.percent,
        "rollout started"
    );
    Ok(serde_json::json!({ "id": id, "url": format!("/api/rollouts/{id}") }))
}

async fn show(State(s): State<RolloutState>, Path(id): Path<u64>) -> Response {
    match s.driver.get(id).await {
        Ok(Some(r)) => Json(rollout::store::view(&r)).into_response(),
        Ok(None) => error(StatusCode::NOT_FOUND, format!("no rollout {id}")),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
