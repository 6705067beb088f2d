//! The live map page. Leaflet 1.9.4 (BSD-2-Clause, from the npm registry,
//! `gateway/assets/leaflet/`) and the page's own script are compiled into
//! the binary: the map works offline and never loads code from a CDN.
//! So are the country outlines it draws under any tile layer: Natural
//! Earth 1:50m (public domain) from the npm package `world-atlas` 2.0.2
//! (`gateway/assets/natural-earth/README.md`).

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use super::ApiState;

const INDEX: &str = include_str!("../../assets/map/index.html");
const MAP_JS: &str = include_str!("../../assets/map/map.js");
const LAYERS_JS: &str = include_str!("../../assets/map/layers.js");
const LEAFLET_JS: &str = include_str!("../../assets/leaflet/leaflet.js");
const LEAFLET_CSS: &str = include_str!("../../assets/leaflet/leaflet.css");
const COUNTRIES: &str = include_str!("../../assets/natural-earth/countries-50m.json");

pub(super) fn routes() -> Router<ApiState> {
    Router::new()
        .route("/", get(index))
        .route("/map", get(index))
        .route("/assets/map.js", get(|| asset("text/javascript", MAP_JS)))
        .route(
            "/assets/layers.js",
            get(|| asset("text/javascript", LAYERS_JS)),
        )
        .route(
            "/assets/leaflet.js",
            get(|| asset("text/javascript", LEAFLET_JS)),
        )
        .route(
            "/assets/countries-50m.json",
            get(|| asset("application/json", COUNTRIES)),
        )
        .route(
            "/assets/leaflet.css",
            get(|| asset("text/css", LEAFLET_CSS)),
        )
}

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// The page with its config inlined as JSON (`</` escaped so the JSON
/// cannot close the script element).
///
/// `Referrer-Policy: no-referrer`: the page may be opened with `?token=`
/// (it moves the token to sessionStorage at once), and no request it makes,
/// to a tile server say, should carry that address.
async fn index(State(s): State<ApiState>) -> Response {
    let config = serde_json::json!({ "tile_url": s.tile_url })
        .to_string()
        .replace("</", "<\\/");
    (
        [(header::REFERRER_POLICY, "no-referrer")],
        Html(INDEX.replace("__AERIS_CONFIG__", &config)),
    )
        .into_response()
}
