//! Test certificates made with rcgen: a CA, a broker certificate for
//! 127.0.0.1 and device certificates whose CN is the device id (the broker
//! takes it as the user name with `use_identity_as_username`).

use std::path::Path;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().expect("CA key");
        let cert = params.self_signed(&key).expect("self-sign CA");
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `cn` signed by this CA: (certificate PEM, key PEM).
    /// With `server`, it names 127.0.0.1 and is for server authentication;
    /// else it is a client certificate.
    pub fn issue(&self, cn: &str, server: bool) -> (String, String) {
        let sans = if server {
            vec!["127.0.0.1".to_owned()]
        } else {
            vec![]
        };
        let mut params = CertificateParams::new(sans).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        let key = KeyPair::generate().expect("key");
        let cert = params.signed_by(&key, &self.issuer).expect("sign");
        (cert.pem(), key.serialize_pem())
    }

    /// Writes `ca.pem`, and `{name}.pem` + `{name}.key` for each
    /// `(name, cn, server)`, into `dir`.
    pub fn write(&self, dir: &Path, certs: &[(&str, &str, bool)]) {
        std::fs::write(dir.join("ca.pem"), &self.pem).expect("write ca.pem");
        for (name, cn, server) in certs {
            let (cert, key) = self.issue(cn, *server);
            std::fs::write(dir.join(format!("{name}.pem")), cert).expect("write cert");
            std::fs::write(dir.join(format!("{name}.key")), key).expect("write key");
        }
    }
}
