//! TLS on the cloud link with rustls and its ring provider: the broker's
//! certificate must chain to `cloud.tls.ca_file`; the device presents
//! `cert_file`/`key_file`, which is its identity at the broker (mutual TLS).
//!
//! The files are read once at start: a bad file stops the agent with an
//! error naming the key, instead of an agent that silently never syncs.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("`cloud.tls.{key}`: cannot read {path}: {error}")]
    File {
        key: &'static str,
        path: String,
        error: String,
    },
    #[error("`cloud.tls.{key}`: {path} holds no {what}")]
    Empty {
        key: &'static str,
        path: String,
        what: &'static str,
    },
    #[error("`cloud.tls`: {0}")]
    Rustls(#[from] rustls::Error),
}

/// The client configuration, or `None` when TLS is off.
pub fn client_config(tls: &TlsConfig) -> Result<Option<Arc<ClientConfig>>, TlsError> {
    if !tls.enabled() {
        return Ok(None);
    }
    let mut roots = RootCertStore::empty();
    for cert in certs("ca_file", &tls.ca_file)? {
        roots.add(cert)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots);
    let config = if tls.cert_file.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let chain = certs("cert_file", &tls.cert_file)?;
        let key = PrivateKeyDer::from_pem_file(&tls.key_file).map_err(|e| TlsError::File {
            key: "key_file",
            path: tls.key_file.display().to_string(),
            error: e.to_string(),
        })?;
        builder.with_client_auth_cert(chain, key)?
    };
    Ok(Some(Arc::new(config)))
}

fn certs(key: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let file_error = |e: rustls::pki_types::pem::Error| TlsError::File {
        key,
        path: path.display().to_string(),
        error: e.to_string(),
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(file_error)?
        .collect::<Result<Vec<_>, _>>()
        .map_err(file_error)?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            key,
            path: path.display().to_string(),
            what: "PEM certificate",
        });
    }
    Ok(certs)
}

/// A stable label for why a connection attempt failed, for
/// `aeris_edge_uplink_connect_failures_total{reason}`: `tls` (handshake or
/// certificate refused, either side), `refused` (nothing listening),
/// `rejected` (the broker's CONNACK said no), `timeout`, `io` (anything
/// else on the socket).
pub fn failure_reason(e: &rumqttc::ConnectionError) -> &'static str {
    use rumqttc::ConnectionError as C;
    match e {
        C::Tls(_) => "tls",
        C::ConnectionRefused(_) => "rejected",
        C::NetworkTimeout | C::FlushTimeout => "timeout",
        _ if caused_by_tls(e) => "tls",
        C::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => "refused",
        _ => "io",
    }
}

/// Whether a rustls error is anywhere in the chain. `io::Error::source`
/// skips the error it wraps, so that one is looked at explicitly.
fn caused_by_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if err.is::<rustls::Error>() {
            return true;
        }
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            if caused_by_tls(inner) {
                return true;
            }
        }
        next = err.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_errors_are_told_apart_from_other_io() {
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
        );
        assert_eq!(failure_reason(&rumqttc::ConnectionError::Io(alert)), "tls");
        let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        assert_eq!(
            failure_reason(&rumqttc::ConnectionError::Io(refused)),
            "refused"
        );
        assert_eq!(
            failure_reason(&rumqttc::ConnectionError::NetworkTimeout),
            "timeout"
        );
    }

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
