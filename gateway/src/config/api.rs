//! `api`: the HTTP API's address, who may call it (`api.auth`,
//! `api.rate_limit`, enforced by `api::auth`) and the caps of its
//! event streams (`api.live`, `api::live`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ApiConfig {
    /// Address of the HTTP API and map; port 0 picks a free one; empty
    /// turns the API off.
    pub listen: String,
    /// Optional map tile URL template (`https://.../{z}/{x}/{y}.png`); the
    /// default map has no base layer, so nothing is fetched from outside.
    pub tile_url: String,
    /// Bearer tokens and whether reads are open (`api::auth`).
    pub auth: AuthConfig,
    pub rate_limit: RateLimitConfig,
    /// Caps of the `/api/live` event streams (`api::live`).
    pub live: LiveConfig,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            listen: "127.0.0.1:8080".into(),
            tile_url: String::new(),
            auth: Default::default(),
            rate_limit: Default::default(),
            live: Default::default(),
        }
    }
}

/// What a token allows. `operate` includes `read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The read endpoints: sensors, readings, devices, the live stream.
    Read,
    /// Operator actions (re-send, rollouts, config, model promotion) and the
    /// audit log.
    Operate,
}

impl Scope {
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Operate => "operate",
        }
    }
}

/// One API client. The token itself is never stored: `sha256` is the hex
/// SHA-256 of it (`printf %s "$TOKEN" | sha256sum`), so the config holds
/// nothing a reader could use to call the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// Who holds the token; recorded as the actor in the audit log.
    pub name: String,
    pub sha256: String,
    pub scopes: Vec<Scope>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Bearer tokens the API accepts.
    pub tokens: Vec<TokenConfig>,
    /// Serve the read endpoints without a token. Unset: open only while no
    /// token is configured and `api.listen` is a loopback address (the
    /// zero-setup default); anything reachable from outside needs tokens.
    pub open_reads: Option<bool>,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Sustained requests per second per client (token, else address);
    /// 0 turns the limit off.
    pub per_second: f64,
    /// Requests a client may make at once above the sustained rate.
    pub burst: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            per_second: 20.0,
            burst: 60,
        }
    }
}

impl AuthConfig {
    /// Checks every token entry; the message names the bad entry.
    pub fn validate(&self) -> Result<(), String> {
        for (i, t) in self.tokens.iter().enumerate() {
            let ok = t.sha256.len() == 64 && t.sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !ok {
                return Err(format!(
                    "invalid `api.auth.tokens[{i}].sha256` ({}): must be 64 hex digits, the SHA-256 of the token",
                    t.name
                ));
            }
            if t.name.is_empty() || t.scopes.is_empty() {
                return Err(format!(
                    "invalid `api.auth.tokens[{i}]`: needs a name and at least one scope (read, operate)"
                ));
            }
        }
        Ok(())
    }
}

/// `api.live`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LiveConfig {
    /// Open event streams in all.
    pub max_streams: usize,
    /// Open event streams per client (token name, else peer address).
    pub max_streams_per_client: usize,
    /// A stream that sent no reading for this long is closed.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
}

impl Default for LiveConfig {
    fn default() -> Self {
        LiveConfig {
            max_streams: 512,
            max_streams_per_client: 16,
            idle_timeout: Duration::from_secs(300),
        }
    }
}

impl LiveConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.max_streams == 0 || self.max_streams_per_client == 0 {
            return Err(
                "invalid `api.live.max_streams` / `api.live.max_streams_per_client`: must be at least 1"
                    .into(),
            );
        }
        if self.idle_timeout.is_zero() {
            return Err("invalid `api.live.idle_timeout`: must be longer than 0s".into());
        }
        Ok(())
    }
}
