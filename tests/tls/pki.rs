//! Certificates made in the test with rcgen: a CA the clients trust and
//! leaves it signs for `localhost` and `127.0.0.1`, written where
//! `[server.tls]` reads them.

#![allow(dead_code, reason = "shared by tests/tls and tests/slow_clients.rs")]

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

pub struct Ca {
    pub pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A leaf certificate: its chain and key as PEM, and its DER (what a client
/// sees as the peer certificate).
pub struct Leaf {
    pub chain: String,
    pub key: String,
    pub der: Vec<u8>,
}

impl Ca {
    pub fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "tokun test CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::CrlSign,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    pub fn leaf(&self, name: &str) -> Leaf {
        let names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain: format!("{}{}", cert.pem(), self.pem),
            key: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

/// Where a server's certificate and key live.
pub struct Files {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Files {
    pub fn new(dir: &Path) -> Files {
        Files {
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }

    /// Replaces both files, each by a rename (as certbot and friends do),
    /// so the server never reads one half-written.
    pub fn write(&self, leaf: &Leaf) {
        for (path, text) in [(&self.cert, &leaf.chain), (&self.key, &leaf.key)] {
            let fresh = path.with_extension("new");
            std::fs::write(&fresh, text).unwrap();
            std::fs::rename(&fresh, path).unwrap();
        }
    }

    /// Replaces both files in place with the same lengths (padded to 8 KiB
    /// with blank lines, which PEM ignores) and the same modification times
    /// as before: a change only a reload on demand (SIGHUP) can notice.
    pub fn write_unnoticeably(&self, leaf: &Leaf) {
        for (path, text) in [(&self.cert, &leaf.chain), (&self.key, &leaf.key)] {
            let modified = std::fs::metadata(path).ok().map(|m| m.modified().unwrap());
            let mut padded = text.clone().into_bytes();
            assert!(padded.len() <= 8192);
            padded.resize(8192, b'\n');
            std::fs::write(path, padded).unwrap();
            if let Some(modified) = modified {
                let file = std::fs::File::options().write(true).open(path).unwrap();
                file.set_modified(modified).unwrap();
            }
        }
    }

    /// The `[server.tls]` section for these files.
    pub fn toml(&self) -> String {
        format!(
            "[server.tls]\ncert_file = {}\nkey_file = {}\n",
            toml_string(&self.cert),
            toml_string(&self.key)
        )
    }
}

fn toml_string(path: &Path) -> String {
    format!("{:?}", path.display().to_string())
}
