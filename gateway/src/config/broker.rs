//! `broker`: the cloud broker's address, login and TLS, used by the source
//! and every operator tool (`mqtt` builds the client options from it).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    pub host: String,
    pub port: u16,
    pub prefix: String,
    /// MQTT client id; empty means `aeris-gateway-<random>`.
    pub client_id: String,
    /// Broker user name and password; empty means anonymous. The password
    /// is never logged or printed.
    pub username: String,
    pub password: String,
    /// Shared-subscription group all gateways of a deployment join.
    pub share_group: String,
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// TLS to the broker; off while `ca_file` is empty.
    pub tls: BrokerTlsConfig,
}

/// `broker.tls`: the same rustls (ring) client the devices use
/// ([`aeris_runtime::tls`]). The broker's certificate must chain to
/// `ca_file` and name `broker.host`; with `cert_file`/`key_file` the
/// gateway presents a client certificate (mutual TLS; with
/// `use_identity_as_username` its CN must be the ACL's gateway user,
/// `aeris-gateway`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerTlsConfig {
    /// PEM bundle of the CAs that sign the broker's certificate.
    pub ca_file: PathBuf,
    /// PEM certificate chain of the gateway; empty = no client certificate.
    pub cert_file: PathBuf,
    /// PEM private key of `cert_file` (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

impl BrokerTlsConfig {
    pub fn enabled(&self) -> bool {
        !self.ca_file.as_os_str().is_empty()
    }

    /// The rustls client configuration, `None` when TLS is off; reads the
    /// files, and an error names the key and the file.
    pub fn client_config(
        &self,
    ) -> Result<Option<std::sync::Arc<rustls::ClientConfig>>, aeris_runtime::tls::TlsError> {
        if !self.enabled() {
            return Ok(None);
        }
        aeris_runtime::tls::client_config(&aeris_runtime::tls::TlsFiles {
            section: "broker.tls",
            ca_file: &self.ca_file,
            cert_file: &self.cert_file,
            key_file: &self.key_file,
        })
        .map(Some)
    }
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            host: "127.0.0.1".into(),
            port: 1883,
            prefix: "aeris/v1".into(),
            client_id: String::new(),
            username: String::new(),
            password: String::new(),
            share_group: "aeris".into(),
            keep_alive: Duration::from_secs(30),
            tls: BrokerTlsConfig::default(),
        }
    }
}
