//! TLS material: the downstream listener settings and the upstream trust/identity, loaded and
//! checked at configuration time so that a bad file is a start-up error, never a runtime surprise.

use pingora::listeners::tls::TlsSettings;
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::{SslOptions, SslVersion};
use pingora::tls::x509::{X509Ref, X509};
use pingora::utils::tls::CertKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// TLS 1.2 suites: forward-secret AEAD only (TLS 1.3 suites are all AEAD).
const TLS12_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

/// A listener's certificate chain and key, checked to belong together.
#[derive(Debug, Clone)]
pub struct ServerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The leaf certificate's subject and expiry, for `/status` and start-up logs.
    pub summary: String,
    /// The leaf certificate, for `/status`, the status page and the expiry metric.
    pub leaf: CertFacts,
}

/// What operators watch of a certificate: whose it is and when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFacts {
    pub subject: String,
    /// The end of validity, seconds since the Unix epoch.
    pub not_after: i64,
}

impl CertFacts {
    pub fn of(cert: &X509Ref) -> CertFacts {
        CertFacts {
            subject: subject(cert),
            not_after: not_after(cert),
        }
    }

    /// For `/status`: the subject, the end of validity (RFC 3339 and Unix seconds) and the days
    /// left (negative once expired).
    pub fn to_json(&self, role: &str, file: Option<&Path>) -> serde_json::Value {
        let end = chrono::DateTime::from_timestamp(self.not_after, 0)
            .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
        let days_left = (self.not_after - chrono::Utc::now().timestamp()).div_euclid(86_400);
        serde_json::json!({
            "role": role,
            "file": file.map(|f| f.display().to_string()),
            "subject": self.subject,
            "not_after": end,
            "not_after_unix": self.not_after,
            "days_left": days_left,
        })
    }
}

impl ServerTls {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsFileError> {
        let chain = read_certs(cert)?;
        let pkey = read_key(key)?;
        check_pair(&chain[0], &pkey, key)?;
        Ok(ServerTls {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            summary: describe(&chain[0]),
            leaf: CertFacts::of(&chain[0]),
        })
    }

    /// Listener settings: TLS 1.2 minimum, ALPN h2 then http/1.1, AEAD-only TLS 1.2 suites, no
    /// compression, no renegotiation, no session tickets (nothing that outlives a key rotation).
    pub fn settings(&self) -> pingora::Result<TlsSettings> {
        let cert = self.cert.to_string_lossy();
        let key = self.key.to_string_lossy();
        let mut tls = TlsSettings::intermediate(&cert, &key)?;
        tls.enable_h2();
        tls.set_min_proto_version(Some(SslVersion::TLS1_2))
            .map_err(|e| tls_error("minimum TLS version", e))?;
        tls.set_cipher_list(TLS12_CIPHERS)
            .map_err(|e| tls_error("TLS 1.2 cipher list", e))?;
        tls.set_options(
            SslOptions::NO_COMPRESSION | SslOptions::NO_TICKET | SslOptions::NO_RENEGOTIATION,
        );
        Ok(tls)
    }
}

fn tls_error(what: &str, e: pingora::tls::error::ErrorStack) -> Box<pingora::Error> {
    pingora::Error::because(pingora::ErrorType::TLSHandshakeFailure, what.to_string(), e)
}

/// A certificate a service presents, by role (`listener`, `upstream client`).
#[derive(Debug, Clone)]
pub struct Presented {
    pub role: &'static str,
    pub facts: CertFacts,
    pub file: Option<PathBuf>,
}

impl Presented {
    /// For `/status`, with the days left as of now.
    pub fn to_json(&self) -> serde_json::Value {
        self.facts.to_json(self.role, self.file.as_deref())
    }
}

/// The certificates a service presents: its listener's, and the client certificates it shows
/// upstreams (each once).
pub fn presented<'a>(
    listener: Option<&'a ServerTls>,
    upstreams: impl Iterator<Item = &'a UpstreamTls>,
) -> Vec<Presented> {
    let mut certs: Vec<Presented> = listener
        .map(|t| Presented {
            role: "listener",
            facts: t.leaf.clone(),
            file: Some(t.cert.clone()),
        })
        .into_iter()
        .collect();
    let mut seen: Vec<&Arc<CertKey>> = Vec::new();
    for client in upstreams.filter_map(|u| u.client.as_ref()) {
        if !seen.iter().any(|s| Arc::ptr_eq(s, client)) {
            seen.push(client);
            certs.push(Presented {
                role: "upstream client",
                facts: CertFacts::of(client.leaf()),
                file: None,
            });
        }
    }
    certs
}

/// How ccedge checks an upstream and who it says it is.
#[derive(Clone)]
pub struct UpstreamTls {
    pub verify: bool,
    /// Trust anchors; `None` = the system's roots.
    pub ca: Option<Arc<Box<[X509]>>>,
    /// Client identity for mTLS.
    pub client: Option<Arc<CertKey>>,
    /// Name expected in the upstream certificate and sent as SNI; `None` = the upstream's host.
    pub server_name: Option<String>,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("verify", &self.verify)
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .field("client", &self.client.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

impl serde::Serialize for UpstreamTls {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(4))?;
        map.serialize_entry("verify", &self.verify)?;
        map.serialize_entry("ca_certificates", &self.ca.as_ref().map(|c| c.len()))?;
        map.serialize_entry("client_certificate", &self.client.is_some())?;
        map.serialize_entry("server_name", &self.server_name)?;
        map.end()
    }
}

impl UpstreamTls {
    pub fn load_ca(path: &Path) -> Result<Arc<Box<[X509]>>, TlsFileError> {
        Ok(Arc::new(read_certs(path)?.into_boxed_slice()))
    }

    pub fn load_client(cert: &Path, key: &Path) -> Result<Arc<CertKey>, TlsFileError> {
        let chain = read_certs(cert)?;
        let pkey = read_key(key)?;
        check_pair(&chain[0], &pkey, key)?;
        Ok(Arc::new(CertKey::new(chain, pkey)))
    }
}

/// A TLS file that cannot be used, and which file it is.
#[derive(Debug)]
pub struct TlsFileError {
    pub file: PathBuf,
    pub message: String,
}

impl std::fmt::Display for TlsFileError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.file.display(), self.message)
    }
}

fn read(path: &Path) -> Result<Vec<u8>, TlsFileError> {
    std::fs::read(path).map_err(|e| TlsFileError {
        file: path.to_path_buf(),
        message: format!("cannot read: {e}"),
    })
}

fn read_certs(path: &Path) -> Result<Vec<X509>, TlsFileError> {
    let pem = read(path)?;
    match X509::stack_from_pem(&pem) {
        Ok(certs) if !certs.is_empty() => Ok(certs),
        Ok(_) => Err(TlsFileError {
            file: path.to_path_buf(),
            message: "is not a valid PEM certificate file (no certificate in it)".into(),
        }),
        Err(e) => Err(TlsFileError {
            file: path.to_path_buf(),
            message: format!("is not a valid PEM certificate file ({e})"),
        }),
    }
}

fn read_key(path: &Path) -> Result<PKey<Private>, TlsFileError> {
    let pem = read(path)?;
    PKey::private_key_from_pem(&pem).map_err(|e| TlsFileError {
        file: path.to_path_buf(),
        message: format!("is not a valid PEM private key ({e})"),
    })
}

fn check_pair(leaf: &X509, key: &PKey<Private>, key_path: &Path) -> Result<(), TlsFileError> {
    let matches = leaf
        .public_key()
        .map(|public| public.public_eq(key))
        .unwrap_or(false);
    if matches {
        Ok(())
    } else {
        Err(TlsFileError {
            file: key_path.to_path_buf(),
            message: "does not match the certificate's public key".into(),
        })
    }
}

fn describe(cert: &X509) -> String {
    format!("subject={} not_after={}", subject(cert), cert.not_after())
}

fn subject(cert: &X509Ref) -> String {
    cert.subject_name()
        .entries()
        .filter_map(|e| e.data().to_string().ok())
        .collect::<Vec<_>>()
        .join(",")
}

/// The certificate's end of validity in Unix seconds (OpenSSL keeps it as an ASN.1 time).
pub fn not_after(cert: &X509Ref) -> i64 {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).expect("the epoch is a valid time");
    epoch
        .diff(cert.not_after())
        .map(|d| i64::from(d.days) * 86_400 + i64::from(d.secs))
        .unwrap_or(0)
}
