//! The audit log: every operator action, from the HTTP API or the CLI, is
//! written to the sink's `audit_log` (who, when, what, on what, outcome)
//! after it ran. A failed audit write does not undo the action: it is
//! logged at ERROR and counted (`aeris_gateway_audit_errors_total`).

use aeris_sink::ops::AuditEntry;
use aeris_sink::Sink;
use tracing::{error, info};

use crate::stats::Stats;

/// Records `action` on `target` by `actor` with its result; `detail` is
/// what the action did (JSON), or the error text.
pub async fn record(
    sink: &dyn Sink,
    stats: &Stats,
    actor: &str,
    action: &str,
    target: &str,
    result: &Result<serde_json::Value, String>,
) {
    let (outcome, detail) = match result {
        Ok(v) => ("ok".to_owned(), v.clone()),
        Err(e) => (format!("error: {e}"), serde_json::json!({ "error": e })),
    };
    stats.ops.action(action, result.is_ok());
    info!(actor, action, target, outcome = %outcome, "operator action");
    let entry = AuditEntry {
        actor: actor.to_owned(),
        action: action.to_owned(),
        target: target.to_owned(),
        outcome,
        detail,
    };
    if let Err(e) = sink.record_audit(&entry).await {
        stats.ops.audit_errors.inc();
        error!(actor, action, error = %e, "audit row not written");
    }
}

/// The actor name of a command-line action: `cli:<login>`.
pub fn cli_actor() -> String {
    let user = std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .unwrap_or_else(|_| "unknown".into());
    format!("cli:{user}")
}
