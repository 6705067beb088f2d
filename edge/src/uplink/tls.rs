//! TLS on the cloud link with rustls and its ring provider: the broker's
//! certificate must chain to `cloud.tls.ca_file`; the device presents
//! `cert_file`/`key_file`, which is its identity at the broker (mutual TLS).
//!
//! The loader is [`aeris_runtime::tls`], shared with the gateway. The files
//! are read once at start: a bad file stops the agent with an error naming
//! the key, instead of an agent that silently never syncs.

use std::sync::Arc;

use aeris_runtime::tls::TlsFiles;
pub use aeris_runtime::tls::{failure_reason, TlsError};
use rustls::ClientConfig;

use super::config::TlsConfig;

/// The client configuration, or `None` when TLS is off.
pub fn client_config(tls: &TlsConfig) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    if !tls.enabled() {
        return Ok(None);
    }
    aeris_runtime::tls::client_config(&TlsFiles {
        section: "cloud.tls",
        ca_file: &tls.ca_file,
        cert_file: &tls.cert_file,
        key_file: &tls.key_file,
    })
    .map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_files_name_the_key() {
        let tls = TlsConfig {
            ca_file: "/nonexistent/ca.pem".into(),
            ..TlsConfig::default()
        };
        let e = client_config(&tls).unwrap_err().to_string();
        assert!(
            e.contains("cloud.tls.ca_file") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        assert!(client_config(&TlsConfig::default()).unwrap().is_none());
    }
}
