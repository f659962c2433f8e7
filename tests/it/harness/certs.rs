//! Test certificates made at run time: a CA, server leaves for ccedge and upstreams, client leaves
//! for mTLS.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType,
};
use std::path::{Path, PathBuf};

pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    pub pem: String,
}

/// A certificate and key written to disk.
#[derive(Clone, Debug)]
pub struct Pair {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub cert_pem: String,
    pub key_pem: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let pem = cert.pem();
        Ca { cert, key, pem }
    }

    pub fn write(&self, path: &Path) -> PathBuf {
        std::fs::write(path, &self.pem).unwrap();
        path.to_path_buf()
    }

    /// A server certificate for `names` (DNS names and IP addresses), written as `dir/stem.{crt,key}`.
    pub fn server(&self, dir: &Path, stem: &str, names: &[&str]) -> Pair {
        self.leaf(dir, stem, names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A server certificate for `names` that expired yesterday.
    pub fn expired_server(&self, dir: &Path, stem: &str, names: &[&str]) -> Pair {
        let yesterday = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        self.leaf_with(dir, stem, names, ExtendedKeyUsagePurpose::ServerAuth, |p| {
            p.not_before = yesterday - time::Duration::days(30);
            p.not_after = yesterday;
        })
    }

    /// A server certificate for `names` that expires in `days` days.
    pub fn server_expiring(&self, dir: &Path, stem: &str, names: &[&str], days: i64) -> Pair {
        let now = time::OffsetDateTime::now_utc();
        self.leaf_with(dir, stem, names, ExtendedKeyUsagePurpose::ServerAuth, |p| {
            p.not_before = now - time::Duration::days(1);
            p.not_after = now + time::Duration::days(days) + time::Duration::hours(1);
        })
    }

    pub fn client(&self, dir: &Path, stem: &str) -> Pair {
        self.leaf(dir, stem, &[stem], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(&self, dir: &Path, stem: &str, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Pair {
        self.leaf_with(dir, stem, names, usage, |_| {})
    }

    fn leaf_with(
        &self,
        dir: &Path,
        stem: &str,
        names: &[&str],
        usage: ExtendedKeyUsagePurpose,
        adjust: impl FnOnce(&mut CertificateParams),
    ) -> Pair {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        for name in names {
            params.subject_alt_names.push(match name.parse() {
                Ok(ip) => SanType::IpAddress(ip),
                Err(_) => SanType::DnsName((*name).try_into().unwrap()),
            });
        }
        params.extended_key_usages = vec![usage];
        adjust(&mut params);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let pair = Pair {
            cert: dir.join(format!("{stem}.crt")),
            key: dir.join(format!("{stem}.key")),
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        };
        std::fs::write(&pair.cert, &pair.cert_pem).unwrap();
        std::fs::write(&pair.key, &pair.key_pem).unwrap();
        pair
    }
}
