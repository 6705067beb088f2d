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

use aeris_sink::fleet_config::{Scope, ScopeKind};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};

use super::auth::Caller;
use super::{error, sink_error, ApiState};
use crate::fleet_config::service::{self, SetError};

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

async fn put_group(
    State(s): State<ApiState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    body: axum::body::Bytes,
) -> Response {
    put(s, caller, scope(ScopeKind::Group, name), &body).await
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
    crate::audit::record(
        s.sink.as_ref(),
        &s.stats,
        &caller.name,
        "config_set",
        &target,
        &audited,
    )
    .await;
    match result {
        Ok(outcome) => Json(outcome).into_response(),
        Err(SetError::Invalid(e)) => error(StatusCode::BAD_REQUEST, e),
        Err(SetError::Sink(e)) => sink_error(e),
    }
}
