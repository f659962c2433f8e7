//! Ready-made setups: a digital channel and a Finesse site with TLS in front and real upstreams
//! behind, so that each test states only what it is about.

use super::{free_port, server_block, Ca, Ccedge, TestDir, Upstream};

/// The public name clients use for the digital channel in tests.
pub const DC_HOST: &str = "dc.example.com";

pub struct Digital {
    pub dir: TestDir,
    pub publisher: Upstream,
    pub subscriber: Upstream,
    pub port: u16,
    pub admin: u16,
    pub ccedge: Ccedge,
}

impl Digital {
    /// A TLS digital channel on a fresh port (public `dc.example.com:443`) with plain upstreams;
    /// `extra` is appended to the service block (indented four spaces).
    pub async fn start(name: &str, extra: &str) -> Digital {
        let dir = TestDir::new(name);
        let ca = Ca::new(name);
        ca.write(&dir.join("ca.crt"));
        let proxy_cert = ca.server(&dir.path, "proxy", &[DC_HOST, "localhost", "127.0.0.1"]);
        let publisher = Upstream::plain("publisher").await;
        let subscriber = Upstream::plain("subscriber").await;
        let port = free_port();
        let admin = free_port();
        let yaml = format!(
            "{server}digital_channels:\n  - name: cc\n    listen: 127.0.0.1:{port}\n    public: {DC_HOST}:443\n    \
             tls:\n      cert: {cert}\n      key: {key}\n    publisher: {pubr}\n    subscriber: {sub}\n{extra}",
            server = server_block(&dir.path, Some(admin)),
            cert = proxy_cert.cert.display(),
            key = proxy_cert.key.display(),
            pubr = publisher.authority(),
            sub = subscriber.authority(),
        );
        let ccedge = Ccedge::start(&dir, &yaml, &[port, admin]).await;
        Digital {
            dir,
            publisher,
            subscriber,
            port,
            admin,
            ccedge,
        }
    }

    /// curl arguments for `https://dc.example.com:PORT/path` resolved to loopback and trusting
    /// the test CA.
    pub fn url(&self, path: &str) -> Vec<String> {
        https(&self.dir, DC_HOST, self.port, path)
    }
}

/// A configuration of `server` (a `server:` block) and one plain-HTTP digital channel `cc` on
/// 127.0.0.1:`port` (public `dc.example.com:443`) with `publisher` and a subscriber nobody
/// answers on.
pub fn plain_channel(server: &str, port: u16, publisher: &Upstream) -> String {
    format!(
        "{server}digital_channels:\n  - name: cc\n    listen: 127.0.0.1:{port}\n    public: {DC_HOST}:443\n    \
         publisher: {p}\n    subscriber: 127.0.0.1:{spare}\n",
        p = publisher.authority(),
        spare = free_port(),
    )
}

/// curl arguments for `https://host:port/path` on loopback, trusting the folder's `ca.crt`.
pub fn https(dir: &TestDir, host: &str, port: u16, path: &str) -> Vec<String> {
    vec![
        "--cacert".into(),
        dir.join("ca.crt").display().to_string(),
        "--resolve".into(),
        format!("{host}:{port}:127.0.0.1"),
        format!("https://{host}:{port}{path}"),
    ]
}

/// `args` as the `&[&str]` curl takes, with `more` in front.
pub fn args<'a>(more: &[&'a str], args: &'a [String]) -> Vec<&'a str> {
    more.iter()
        .copied()
        .chain(args.iter().map(String::as_str))
        .collect()
}

/// The repository's own file `path` (relative to its top folder).
pub fn repo_file(path: &str) -> String {
    let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
    std::fs::read_to_string(&full).unwrap_or_else(|e| panic!("{}: {e}", full.display()))
}

/// Copies `conf/NAME` into `dir`, pointing its `/etc/ccedge/tls/` files at certificates made
/// there: `*-ca.pem` become a CA, `*.crt` (with their `.key`) certificates it signed.
pub fn conf_example(dir: &TestDir, name: &str) -> std::path::PathBuf {
    example_config(dir, name, &repo_file(&format!("conf/{name}")))
}

/// `text`, a configuration that names files under `/etc/ccedge/tls/` and `/etc/ccedge/state/`,
/// written as `name` in `dir` with those files made there: certificates of one CA (`*-ca.pem`
/// the CA itself), a 32-byte key and a Redis password.
pub fn example_config(dir: &TestDir, name: &str, text: &str) -> std::path::PathBuf {
    let tls = dir.join("tls");
    std::fs::create_dir_all(&tls).unwrap();
    let ca = Ca::new(name);
    for word in text.split_whitespace() {
        let Some(file) = word.strip_prefix("/etc/ccedge/tls/") else {
            continue;
        };
        let file = file.trim_end_matches(['}', ',']);
        if file.ends_with("-ca.pem") {
            ca.write(&tls.join(file));
        } else if let Some(stem) = file.strip_suffix(".crt") {
            ca.server(&tls, stem, &["example.com"]);
        }
    }
    // The shared state's key (32 bytes) and Redis password.
    let state = dir.join("state");
    std::fs::create_dir_all(&state).unwrap();
    std::fs::write(state.join("state.key"), [7u8; 32]).unwrap();
    std::fs::write(state.join("redis.password"), "example\n").unwrap();
    dir.write(
        name,
        &text
            .replace("/etc/ccedge/tls/", &format!("{}/", tls.display()))
            .replace("/etc/ccedge/state/", &format!("{}/", state.display())),
    )
}
