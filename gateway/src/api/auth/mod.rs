//! Who may call the HTTP API: bearer tokens with scopes, and a per-client
//! rate limit.
//!
//! Rules, in order, for every guarded route:
//! 1. The client is the token's name when a valid token is presented, else
//!    the peer address; each client has its own token bucket
//!    (`api.rate_limit`), and a request over it gets 429 with `Retry-After`.
//! 2. A presented token that matches no configured token: 401.
//! 3. No token: 401, unless the route needs only `read` and reads are open
//!    (see [`AuthConfig::open_reads`]).
//! 4. A valid token without the route's scope: 403. `operate` includes
//!    `read`.
//!
//! The token comes in `Authorization: Bearer`; on `/api/live` only, also
//! as `?access_token=` (browsers' `EventSource` cannot set headers).
//!
//! `/healthz`, `/readyz`, `/metrics` and the map's static files are not
//! guarded: probes and Prometheus must reach them without credentials (the
//! NetworkPolicy in `deploy/k8s` keeps them in the cluster).
//!
//! A new operator route is protected by building it into a router and
//! passing that through [`protect`] with [`Scope::Operate`]; its handler
//! finds the [`Caller`] in the request extensions, for the audit log.

mod limit;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use sha2::{Digest, Sha256};

pub use crate::config::{AuthConfig, RateLimitConfig, Scope, TokenConfig};
use limit::RateLimiter;

use crate::stats::Stats;

/// Who made a request; put in the request's extensions by the guard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The token's name, or `anonymous@<address>` on an open read.
    pub name: String,
    pub scopes: Vec<Scope>,
}

/// The API's credentials and rate limiter, built once from the config.
pub struct Access {
    /// Hex SHA-256 of a token -> its name and scopes.
    tokens: HashMap<String, (String, Vec<Scope>)>,
    open_reads: bool,
    limiter: Mutex<RateLimiter>,
    stats: Arc<Stats>,
}

impl Access {
    /// `listen` is `api.listen`: without tokens, reads are open by default
    /// only on a loopback address.
    pub fn new(
        auth: &AuthConfig,
        limit: &RateLimitConfig,
        listen: &str,
        stats: Arc<Stats>,
    ) -> Access {
        let loopback = listen
            .parse::<SocketAddr>()
            .map(|a| a.ip().is_loopback())
            .unwrap_or(listen.starts_with("localhost:"));
        let open_reads = auth
            .open_reads
            .unwrap_or(auth.tokens.is_empty() && loopback);
        Access {
            tokens: auth
                .tokens
                .iter()
                .map(|t| {
                    (
                        t.sha256.to_ascii_lowercase(),
                        (t.name.clone(), t.scopes.clone()),
                    )
                })
                .collect(),
            open_reads,
            limiter: Mutex::new(RateLimiter::new(limit.per_second, limit.burst)),
            stats,
        }
    }

    pub fn open_reads(&self) -> bool {
        self.open_reads
    }

    /// The caller a token stands for, if it is a configured one.
    fn lookup(&self, token: &str) -> Option<Caller> {
        let digest = hex::encode(Sha256::digest(token.as_bytes()));
        self.tokens.get(&digest).map(|(name, scopes)| Caller {
            name: name.clone(),
            scopes: scopes.clone(),
        })
    }

    /// Applies the rules of the module doc to one request.
    fn admit(
        &self,
        bearer: Option<&str>,
        peer: Option<SocketAddr>,
        need: Scope,
    ) -> Result<Caller, Refusal> {
        let caller = bearer.and_then(|t| self.lookup(t));
        let peer = peer.map(|a| a.ip().to_string()).unwrap_or_default();
        let client = match &caller {
            Some(c) => format!("token:{}", c.name),
            None => format!("addr:{peer}"),
        };
        let limited = match self.limiter.lock() {
            Ok(mut l) => l.check(&client, Instant::now()),
            Err(_) => Ok(()),
        };
        if let Err(wait) = limited {
            return Err(Refusal::RateLimited(wait));
        }
        match (bearer, caller) {
            (Some(_), None) => Err(Refusal::BadToken),
            (None, None) if need == Scope::Read && self.open_reads => Ok(Caller {
                name: format!("anonymous@{peer}"),
                scopes: vec![Scope::Read],
            }),
            (None, _) => Err(Refusal::NoToken),
            (Some(_), Some(c)) if !c.scopes.iter().any(|s| *s >= need) => {
                Err(Refusal::Forbidden(c.name))
            }
            (Some(_), Some(c)) => Ok(c),
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Refusal {
    NoToken,
    BadToken,
    Forbidden(String),
    RateLimited(f64),
}

impl Refusal {
    fn reason(&self) -> &'static str {
        match self {
            Refusal::NoToken => "no_token",
            Refusal::BadToken => "bad_token",
            Refusal::Forbidden(_) => "forbidden",
            Refusal::RateLimited(_) => "rate_limited",
        }
    }

    fn into_response(self, need: Scope) -> Response {
        let body = |msg: String| Json(serde_json::json!({ "error": msg }));
        match self {
            Refusal::NoToken => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer realm=\"aeris\"")],
                body("a bearer token is required".into()),
            )
                .into_response(),
            Refusal::BadToken => (
                StatusCode::UNAUTHORIZED,
                [(
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"aeris\", error=\"invalid_token\"",
                )],
                body("the bearer token is not valid".into()),
            )
                .into_response(),
            Refusal::Forbidden(name) => (
                StatusCode::FORBIDDEN,
                [(
                    header::WWW_AUTHENTICATE,
                    "Bearer realm=\"aeris\", error=\"insufficient_scope\"",
                )],
                body(format!("token {name:?} lacks the {} scope", need.as_str())),
            )
                .into_response(),
            Refusal::RateLimited(wait) => {
                let secs = wait.ceil().max(1.0) as u64;
                let mut r = (
                    StatusCode::TOO_MANY_REQUESTS,
                    body(format!("rate limit exceeded; retry in {secs} s")),
                )
                    .into_response();
                if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                    r.headers_mut().insert(header::RETRY_AFTER, v);
                }
                r
            }
        }
    }
}

fn bearer(req: &Request) -> Option<&str> {
    let v = req.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then_some(token.trim())
}

/// The `access_token` query parameter (RFC 6750, 2.3), taken only on
/// [`crate::api::LIVE_PATH`]: a browser's `EventSource` cannot send an
/// `Authorization` header. Everywhere else a token in the URL is ignored,
/// since URLs end up in logs and histories.
fn query_token(req: &Request) -> Option<String> {
    if req.uri().path() != crate::api::LIVE_PATH {
        return None;
    }
    let Query(mut q) = Query::<HashMap<String, String>>::try_from_uri(req.uri()).ok()?;
    q.remove("access_token")
}

async fn guard(
    State((access, need)): State<(Arc<Access>, Scope)>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    // A malformed Authorization header counts as a wrong token.
    let presented = req.headers().contains_key(header::AUTHORIZATION);
    let token = bearer(&req)
        .map(str::to_owned)
        .or_else(|| query_token(&req));
    let presented = presented || token.is_some();
    let token = match (presented, token) {
        (true, None) => Some(String::new()),
        (_, t) => t,
    };
    match access.admit(token.as_deref(), peer, need) {
        Ok(caller) => {
            req.extensions_mut().insert(caller);
            next.run(req).await
        }
        Err(refusal) => {
            access.stats.ops.api_refused(refusal.reason());
            tracing::warn!(path = %req.uri().path(), reason = refusal.reason(), peer = ?peer, "API request refused");
            refusal.into_response(need)
        }
    }
}

/// Puts every route of `routes` behind `need`: the rules of the module doc.
pub fn protect<S>(routes: Router<S>, access: Arc<Access>, need: Scope) -> Router<S>
where
    S: Clone + Send + Sync + 'static,
{
    routes.route_layer(middleware::from_fn_with_state((access, need), guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(open: Option<bool>, listen: &str) -> Access {
        let token = |name: &str, t: &str, scopes: Vec<Scope>| TokenConfig {
            name: name.into(),
            sha256: hex::encode(Sha256::digest(t.as_bytes())),
            scopes,
        };
        let auth = AuthConfig {
            tokens: vec![
                token("viewer", "r-secret", vec![Scope::Read]),
                token("ops", "o-secret", vec![Scope::Operate]),
            ],
            open_reads: open,
        };
        let limit = RateLimitConfig {
            per_second: 0.0,
            burst: 1,
        };
        Access::new(&auth, &limit, listen, Arc::new(Stats::default()))
    }

    #[test]
    fn scopes_decide_and_operate_includes_read() {
        let a = access(None, "127.0.0.1:8080");
        assert!(!a.open_reads(), "tokens configured: reads need one");
        use Scope::*;
        assert_eq!(a.admit(None, None, Read), Err(Refusal::NoToken));
        assert_eq!(a.admit(Some("nope"), None, Read), Err(Refusal::BadToken));
        assert_eq!(
            a.admit(Some("r-secret"), None, Read).unwrap().name,
            "viewer"
        );
        assert_eq!(
            a.admit(Some("r-secret"), None, Operate),
            Err(Refusal::Forbidden("viewer".into()))
        );
        assert_eq!(a.admit(Some("o-secret"), None, Read).unwrap().name, "ops");
        assert_eq!(
            a.admit(Some("o-secret"), None, Operate).unwrap().name,
            "ops"
        );
    }

    #[test]
    fn reads_are_open_only_on_loopback_without_tokens_unless_configured() {
        let none = |listen: &str, open| {
            Access::new(
                &AuthConfig {
                    tokens: vec![],
                    open_reads: open,
                },
                &RateLimitConfig::default(),
                listen,
                Arc::new(Stats::default()),
            )
            .open_reads()
        };
        assert!(none("127.0.0.1:8080", None));
        assert!(none("[::1]:8080", None));
        assert!(!none("0.0.0.0:8080", None));
        assert!(none("0.0.0.0:8080", Some(true)));
        assert!(!none("127.0.0.1:0", Some(false)));
        let a = access(Some(true), "0.0.0.0:8080");
        let anon = a.admit(None, None, Scope::Read).unwrap();
        assert!(anon.name.starts_with("anonymous@"));
        assert_eq!(a.admit(None, None, Scope::Operate), Err(Refusal::NoToken));
        assert_eq!(
            a.admit(Some("wrong"), None, Scope::Read),
            Err(Refusal::BadToken),
            "a presented token must be valid even where reads are open"
        );
    }
}
