//! TLS to an MQTT broker, one implementation for both binaries: rustls
//! with its ring provider (no aws-lc-rs, no OpenSSL), the broker's
//! certificate checked against a CA file, and optionally a client
//! certificate (mutual TLS: the certificate's CN is the client's identity
//! at the broker).
//!
//! The files are read when the client configuration is built, at start: a
//! missing or bad file stops the program with an error naming the key
//! (`cloud.tls.ca_file`, `broker.tls.key_file`, ...) and the path, instead
//! of a program that runs and never connects.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// The PEM files of a TLS client, and the config section that names them
/// (for error messages).
#[derive(Debug, Clone, Copy)]
pub struct TlsFiles<'a> {
    /// Dotted config section, e.g. `cloud.tls`.
    pub section: &'a str,
    /// CAs the broker's certificate must chain to.
    pub ca_file: &'a Path,
    /// This client's certificate chain; empty = no client certificate.
    pub cert_file: &'a Path,
    /// The private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: &'a Path,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("`{key}`: cannot read {path}: {error}")]
    File {
        key: String,
        path: String,
        error: String,
    },
    #[error("`{key}`: {path} holds no {what}")]
    Empty {
        key: String,
        path: String,
        what: &'static str,
    },
    #[error("`{section}`: {error}")]
    Rustls {
        section: String,
        error: rustls::Error,
    },
}

/// The rustls client configuration for `files`.
pub fn client_config(files: &TlsFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let rustls = |error| TlsError::Rustls {
        section: files.section.to_owned(),
        error,
    };
    let mut roots = RootCertStore::empty();
    for cert in certs(files, "ca_file", files.ca_file)? {
        roots.add(cert).map_err(rustls)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(rustls)?
        .with_root_certificates(roots);
    let config = if files.cert_file.as_os_str().is_empty() {
        builder.with_no_client_auth()
    } else {
        let chain = certs(files, "cert_file", files.cert_file)?;
        let key = PrivateKeyDer::from_pem_file(files.key_file).map_err(|e| TlsError::File {
            key: format!("{}.key_file", files.section),
            path: files.key_file.display().to_string(),
            error: e.to_string(),
        })?;
        builder.with_client_auth_cert(chain, key).map_err(rustls)?
    };
    Ok(Arc::new(config))
}

fn certs(
    files: &TlsFiles,
    name: &str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let key = format!("{}.{name}", files.section);
    let file_error = |e: rustls::pki_types::pem::Error| TlsError::File {
        key: key.clone(),
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

/// A stable label for why an MQTT connection attempt failed, for the
/// binaries' connect-failure counters: `tls` (handshake or certificate
/// refused, either side), `refused` (nothing listening), `rejected` (the
/// broker's CONNACK said no), `timeout`, `io` (anything else on the socket).
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
    fn missing_files_name_the_key_and_path() {
        let files = TlsFiles {
            section: "broker.tls",
            ca_file: Path::new("/nonexistent/ca.pem"),
            cert_file: Path::new(""),
            key_file: Path::new(""),
        };
        let e = client_config(&files).unwrap_err().to_string();
        assert!(
            e.contains("broker.tls.ca_file") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
    }
}
