//! A certificate authority made in the test (rcgen), issuing leaf certificates that name
//! `localhost` and `127.0.0.1`, the host of every address in the tests. Shared by
//! tests/peer_tls.rs and tests/api_tls.rs.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};

pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca { cert, key }
    }

    /// Issues a leaf certificate for loopback; writes `NAME.pem` and `NAME.key` into `dir`.
    pub fn issue(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        self.issue_for(dir, name, &["localhost", "127.0.0.1"])
    }

    /// Issues a leaf certificate naming `hosts` (DNS names or IP addresses).
    pub fn issue_for(&self, dir: &Path, name: &str, hosts: &[&str]) -> (PathBuf, PathBuf) {
        let params =
            CertificateParams::new(hosts.iter().map(|h| h.to_string()).collect::<Vec<_>>())
                .unwrap();
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let (c, k) = (
            dir.join(format!("{name}.pem")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// The CA certificate, PEM.
    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    /// Writes the CA certificate to `dir/NAME.pem`.
    #[allow(dead_code)] // not every test that includes this module writes it
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.pem"));
        std::fs::write(&path, self.pem()).unwrap();
        path
    }
}
