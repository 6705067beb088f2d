//! The agent's built-in version. A leaf: imports nothing from the crate.

/// The version this agent was built as (`ota::running_version` prefers the
/// one of the package it was started from).
pub const AGENT_VERSION: &str = env!("CARGO_PKG_VERSION");
