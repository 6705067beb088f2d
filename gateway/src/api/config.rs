//! Desired configuration over HTTP (issue 18), scope `operate`, every
//! change in the audit log (`config_set`):
//!
//! - `GET /api/devices/{id}/config`: the device's own desired fragment, its
//!   effective configuration (its groups' merged under it), its last
//!   report and whether it converged.
//! - `PUT /api/devices/{id}/config`: body a JSON object of the agent's
//!   config keys (`{"sensors": {"s1": {"lat": 47.5, "lon": 6.1}}}`);
//!   stored under a new version and sent to the device. 200 with the
//!   stored row and the devices sent to; 400 when it is not an object.
//!   The device itself refuses keys it may not take and bad values, and
//!   reports it (see GET).
//! - `GET`/`PUT /api/groups/{name}/config`: the same for a group, sent to
//!   every device whose last report names the group.
//! - `PUT /api/groups/{name}/config?canary=N[&max_failures=M][&device_timeout=10m]`:
//!   a staged change, as `aeris-gateway config set --canary` (the same
//!   code, `fleet_config::staged`): stored for the first `N` devices of the
//!   group (in name order) and sent to them; the rest get it once they all
//!   applied it; a refusal or silence past `device_timeout` fails a
//!   device, more than `max_failures` failures halt the change with the
//!   devices that got it. 202 with `{"id", "url"}`: the change is a stored
//!   rollout (`GET /api/rollouts/{id}`, its id the fragment's version),
//!   driven by this gateway and resumed after a restart.

use std::time::Duration;

use aeris_sink::fleet_config::{Scope, ScopeKind};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};

use super::auth::Caller;
use super::{error, sink_error, ApiState};
use crate::fleet_config::service::{self, SetError};
use crate::fleet_config::staged::{self, Stage};
use serde::Deserialize;

pub fn routes() -> Router<ApiState> {
    Router::new()
        .route("/api/devices/{id}/config", get(get_device).put(put_device))
        .route("/api/groups/{name}/config", get(get_group).put(put_group))
}

fn scope(kind: ScopeKind, name: String) -> Scope {
    Scope { kind, name }
}

async fn get_device(State(s): State<ApiState>, Path(id): Path<String>) -> Response {
    show(s, scope(ScopeKind::Device, id)).await
}

async fn get_group(State(s): State<ApiState>, Path(name): Path<String>) -> Response {
    show(s, scope(ScopeKind::Group, name)).await
}

async fn put_device(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    put(s, caller, scope(ScopeKind::Device, id), &body).await
}

/// The query of a staged group change; all absent = applied at once.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StageQuery {
    canary: Option<usize>,
    max_failures: Option<usize>,
    #[serde(default, with = "humantime_serde")]
    device_timeout: Option<Duration>,
}

async fn put_group(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    query: Result<Query<StageQuery>, QueryRejection>,
    body: axum::body::Bytes,
) -> Response {
    let scope = scope(ScopeKind::Group, name);
    match query {
        Ok(Query(StageQuery {
            canary: Some(canary),
            max_failures,
            device_timeout,
        })) => {
            let stage = Stage {
                canary,
                max_failures: max_failures.unwrap_or(0),
                device_timeout: device_timeout.unwrap_or(Duration::from_secs(600)),
            };
            staged(s, caller, scope, stage, &body).await
        }
        Ok(Query(StageQuery {
            canary: None,
            max_failures: None,
            device_timeout: None,
        })) => put(s, caller, scope, &body).await,
        Ok(_) => error(
            StatusCode::BAD_REQUEST,
            "max_failures and device_timeout stage a change: they need canary",
        ),
        Err(e) => error(StatusCode::BAD_REQUEST, format!("bad query: {e}")),
    }
}

/// Begins a staged change and hands it to the rollout driver; audited as
/// `config_set` with the rollout id, or the refusal.
async fn staged(s: ApiState, caller: Caller, scope: Scope, stage: Stage, body: &[u8]) -> Response {
    let target = crate::fleet_config::command::target(&scope);
    let result = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(fragment) => {
            let request = (scope.name.clone(), fragment, caller.name.as_str());
            match staged::begin(s.sink.as_ref(), request, &stage).await {
                Ok(begun) => {
                    let (id, meta) = (begun.version, staged::meta(&begun, &caller.name, &stage));
                    s.rollouts
                        .start(meta, begun.plan)
                        .await
                        .map(|()| serde_json::json!({ "id": id, "url": format!("/api/rollouts/{id}") }))
                        .map_err(SetError::Sink)
                }
                Err(e) => Err(e),
            }
        }
        Err(e) => Err(SetError::Invalid(format!("body is not JSON: {e}"))),
    };
    let audited = result
        .as_ref()
        .map(|v| serde_json::json!({ "staged": v }))
        .map_err(|e| e.to_string());
    let answer = result.map(|v| (StatusCode::ACCEPTED, Json(v)).into_response());
    audited_answer(&s, &caller, &target, audited, answer).await
}

async fn show(s: ApiState, scope: Scope) -> Response {
    if let Err(e) = service::check_scope(&scope) {
        return error(StatusCode::BAD_REQUEST, e);
    }
    match service::view(s.sink.as_ref(), scope).await {
        Ok(v) => Json(v).into_response(),
        Err(e) => sink_error(e),
    }
}

async fn put(s: ApiState, caller: Caller, scope: Scope, body: &[u8]) -> Response {
    let target = crate::fleet_config::command::target(&scope);
    let result = match serde_json::from_slice::<serde_json::Value>(body) {
        Ok(fragment) => {
            service::set(
                s.sink.as_ref(),
                &s.config.broker,
                scope,
                fragment,
                &caller.name,
            )
            .await
        }
        Err(e) => Err(SetError::Invalid(format!("body is not JSON: {e}"))),
    };
    let audited = match &result {
        Ok(o) => serde_json::to_value(o).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let answer = result.map(|outcome| Json(outcome).into_response());
    audited_answer(&s, &caller, &target, audited, answer).await
}

/// Records the `config_set` as `audited` and answers: the response on
/// success, 400 for a refused fragment, the sink's error otherwise.
async fn audited_answer(
    s: &ApiState,
    caller: &Caller,
    target: &str,
    audited: Result<serde_json::Value, String>,
    answer: Result<Response, SetError>,
) -> Response {
    crate::audit::record(
        s.sink.as_ref(),
        &s.stats,
        &caller.name,
        "config_set",
        target,
        &audited,
    )
    .await;
    match answer {
        Ok(response) => response,
        Err(SetError::Invalid(e)) => error(StatusCode::BAD_REQUEST, e),
        Err(SetError::Sink(e)) => sink_error(e),
    }
}
