//! TLS material: the downstream listener settings and the upstream trust/identity, loaded and
//! checked at configuration time so that a bad file is a start-up error, never a runtime surprise.

use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::ext::{ssl_add_chain_cert, ssl_use_certificate, ssl_use_private_key};
use pingora::tls::pkey::{PKey, Private};
use pingora::tls::ssl::NameType;
use pingora::tls::ssl::{SslOptions, SslVersion};
use pingora::tls::x509::{X509Ref, X509};
use pingora::utils::tls::CertKey;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// TLS 1.2 suites: forward-secret AEAD only (TLS 1.3 suites are all AEAD).
const TLS12_CIPHERS: &str = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256:\
ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-RSA-AES256-GCM-SHA384:\
ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-CHACHA20-POLY1305";

/// A listener's certificates: one, or several chosen by the name the client asks for (SNI).
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// In the configuration's order; the first is the default.
    pub certificates: Vec<ListenerCert>,
    /// Which certificate answers which name.
    sni: SniIndex,
}

/// One certificate chain and its key, checked to belong together.
#[derive(Clone)]
pub struct ListenerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// The leaf certificate's subject and expiry, for `/status` and start-up logs.
    pub summary: String,
    /// The leaf certificate, for `/status`, the status page and the expiry metric.
    pub leaf: CertFacts,
    /// The DNS names of the leaf's subjectAltName, as written (`*.example.com` included).
    pub names: Vec<String>,
    chain: Arc<Vec<X509>>,
    pkey: Arc<PKey<Private>>,
}

impl std::fmt::Debug for ListenerCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerCert")
            .field("cert", &self.cert)
            .field("key", &self.key)
            .field("names", &self.names)
            .finish()
    }
}

impl ListenerCert {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsFileError> {
        let chain = read_certs(cert)?;
        let pkey = read_key(key)?;
        check_pair(&chain[0], &pkey, key)?;
        let names = dns_names(&chain[0]);
        Ok(ListenerCert {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            summary: describe(&chain[0]),
            leaf: CertFacts::of(&chain[0]),
            names,
            chain: Arc::new(chain),
            pkey: Arc::new(pkey),
        })
    }
}

/// Names to certificates: exact names, then `*.` wildcards (one label), lower case; where two
/// certificates name the same, the first listed answers.
#[derive(Debug, Clone, Default)]
struct SniIndex {
    exact: std::collections::HashMap<String, usize>,
    /// By the part after `*.`.
    wildcard: std::collections::HashMap<String, usize>,
}

impl SniIndex {
    /// `names`: each certificate's subjectAltName DNS names.
    fn new<'a>(names: impl Iterator<Item = &'a [String]>) -> Self {
        let mut index = SniIndex::default();
        for (i, names) in names.enumerate() {
            for name in names {
                let name = name.trim_end_matches('.').to_ascii_lowercase();
                match name.strip_prefix("*.") {
                    Some(parent) if !parent.contains('*') => {
                        index.wildcard.entry(parent.to_string()).or_insert(i);
                    }
                    Some(_) => {}
                    None if !name.contains('*') => {
                        index.exact.entry(name).or_insert(i);
                    }
                    None => {}
                }
            }
        }
        index
    }

    /// The certificate for `name` (as the client sent it); `None`: none names it.
    fn find(&self, name: &str) -> Option<usize> {
        let name = name.trim_end_matches('.');
        if name.bytes().any(|b| b.is_ascii_uppercase()) {
            return self.find(&name.to_ascii_lowercase());
        }
        if let Some(i) = self.exact.get(name) {
            return Some(*i);
        }
        let (_, parent) = name.split_once('.')?;
        self.wildcard.get(parent).copied()
    }
}

impl ServerTls {
    pub fn new(certificates: Vec<ListenerCert>) -> Self {
        let sni = SniIndex::new(certificates.iter().map(|c| c.names.as_slice()));
        ServerTls { certificates, sni }
    }

    /// The certificate a client asking for `name` gets: the one naming it exactly, else the one
    /// whose wildcard covers it, else the first (as a client without SNI).
    pub fn for_name(&self, name: Option<&str>) -> &ListenerCert {
        let i = name.and_then(|n| self.sni.find(n)).unwrap_or(0);
        &self.certificates[i]
    }

    /// Whether a certificate names `name` (exactly or by its wildcard).
    pub fn names(&self, name: &str) -> bool {
        self.sni.find(name).is_some()
    }

    /// The certificates' subjects and expiry, for `/status` and start-up logs.
    pub fn summary(&self) -> String {
        let all: Vec<&str> = self
            .certificates
            .iter()
            .map(|c| c.summary.as_str())
            .collect();
        all.join("; ")
    }

    /// Listener settings: TLS 1.2 minimum, ALPN h2 then http/1.1, AEAD-only TLS 1.2 suites, no
    /// compression, no renegotiation. Resumption from the listener's own session cache (TLS 1.2
    /// session IDs, TLS 1.3 tickets naming a cached session), never from stateless tickets (no
    /// ticket key outlives a key rotation). With several certificates, each handshake gets the
    /// one its SNI name asks for.
    pub fn settings(&self) -> pingora::Result<TlsSettings> {
        let mut tls = match self.certificates.as_slice() {
            [one] => {
                let cert = one.cert.to_string_lossy();
                let key = one.key.to_string_lossy();
                TlsSettings::intermediate(&cert, &key)?
            }
            _ => TlsSettings::with_callbacks(Box::new(BySni(self.clone())))?,
        };
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

/// Gives each handshake the certificate its SNI name asks for.
struct BySni(ServerTls);

#[async_trait::async_trait]
impl TlsAccept for BySni {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let chosen = self.0.for_name(ssl.servername(NameType::HOST_NAME));
        let mut set = || -> Result<(), pingora::tls::error::ErrorStack> {
            ssl_use_certificate(ssl, &chosen.chain[0])?;
            ssl_use_private_key(ssl, &chosen.pkey)?;
            for intermediate in &chosen.chain[1..] {
                ssl_add_chain_cert(ssl, intermediate)?;
            }
            Ok(())
        };
        if let Err(e) = set() {
            // The handshake then fails for want of a certificate; the cause is worth a line.
            log::error!("TLS: cannot present {}: {e}", chosen.cert.display());
        }
    }
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

fn tls_error(what: &str, e: pingora::tls::error::ErrorStack) -> Box<pingora::Error> {
    pingora::Error::because(pingora::ErrorType::TLSHandshakeFailure, what.to_string(), e)
}

/// A certificate a service presents, by role (`listener`, `upstream client`).
#[derive(Debug, Clone)]
pub struct Presented {
    pub role: &'static str,
    pub facts: CertFacts,
    pub file: Option<PathBuf>,
    /// For a listener certificate: the service's public hosts it answers for (by SNI).
    pub covers: Vec<String>,
}

impl Presented {
    /// For `/status`, with the days left as of now.
    pub fn to_json(&self) -> serde_json::Value {
        let mut json = self.facts.to_json(self.role, self.file.as_deref());
        json["covers"] = serde_json::json!(self.covers);
        json
    }
}

/// The certificates a service presents: its listener's (with which of the service's public
/// `hosts` each answers for), and the client certificates it shows upstreams (each once).
pub fn presented<'a>(
    listener: Option<&'a ServerTls>,
    hosts: &[&str],
    upstreams: impl Iterator<Item = &'a UpstreamTls>,
) -> Vec<Presented> {
    let mut certs: Vec<Presented> = listener
        .into_iter()
        .flat_map(|t| t.certificates.iter().enumerate().map(move |c| (t, c)))
        .map(|(tls, (i, c))| Presented {
            role: "listener",
            facts: c.leaf.clone(),
            file: Some(c.cert.clone()),
            covers: hosts
                .iter()
                .filter(|h| tls.sni.find(h) == Some(i))
                .map(|h| h.to_string())
                .collect(),
        })
        .collect();
    let mut seen: Vec<&Arc<CertKey>> = Vec::new();
    for client in upstreams.filter_map(|u| u.client.as_ref()) {
        if !seen.iter().any(|s| Arc::ptr_eq(s, client)) {
            seen.push(client);
            certs.push(Presented {
                role: "upstream client",
                facts: CertFacts::of(client.leaf()),
                file: None,
                covers: Vec::new(),
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

/// The DNS names of the certificate's subjectAltName, as written (`*.example.com` included).
pub fn dns_names(cert: &X509Ref) -> Vec<String> {
    cert.subject_alt_names()
        .map(|names| {
            names
                .iter()
                .filter_map(|n| n.dnsname().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// The certificate's end of validity in Unix seconds (OpenSSL keeps it as an ASN.1 time).
pub fn not_after(cert: &X509Ref) -> i64 {
    let epoch = openssl::asn1::Asn1Time::from_unix(0).expect("the epoch is a valid time");
    epoch
        .diff(cert.not_after())
        .map(|d| i64::from(d.days) * 86_400 + i64::from(d.secs))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(certificates: &[&[&str]]) -> SniIndex {
        let owned: Vec<Vec<String>> = certificates
            .iter()
            .map(|names| names.iter().map(|n| n.to_string()).collect())
            .collect();
        SniIndex::new(owned.iter().map(Vec::as_slice))
    }

    #[test]
    fn sni_names_pick_exact_names_then_wildcards_of_one_label() {
        let sni = index(&[
            &["finesse1.example.com"],
            &["*.example.com", "cuic.example.com"],
            &["finesse1.example.com", "*.corp.example.com"],
        ]);
        assert_eq!(sni.find("finesse1.example.com"), Some(0));
        assert_eq!(
            sni.find("FINESSE1.Example.COM."),
            Some(0),
            "case and a trailing dot"
        );
        assert_eq!(sni.find("cuic.example.com"), Some(1));
        assert_eq!(sni.find("ids.example.com"), Some(1), "by the wildcard");
        assert_eq!(sni.find("a.corp.example.com"), Some(2));
        assert_eq!(
            sni.find("a.b.example.com"),
            None,
            "a wildcard covers one label"
        );
        assert_eq!(sni.find("example.com"), None, "nor the parent itself");
        assert_eq!(sni.find("other.example.net"), None);
        assert_eq!(sni.find(""), None);
    }

    #[test]
    fn an_exact_name_wins_over_an_earlier_wildcard_and_the_first_of_equals_wins() {
        let sni = index(&[
            &["*.example.com"],
            &["finesse1.example.com"],
            &["finesse1.example.com"],
        ]);
        assert_eq!(sni.find("finesse1.example.com"), Some(1));
        assert_eq!(sni.find("finesse2.example.com"), Some(0));
        // Patterns a browser would not accept name nothing.
        let odd = index(&[&["f*.example.com", "*.*.example.com", "*"]]);
        assert_eq!(odd.find("finesse1.example.com"), None);
        assert_eq!(odd.find("a.b.example.com"), None);
        assert_eq!(odd.find("localhost"), None);
    }
}
